//! Label selectors and field selectors, as accepted in `?labelSelector=` and
//! `?fieldSelector=` and as stored in `metav1.LabelSelector` objects.
//!
//! The label grammar and its checks follow upstream's
//! `k8s.io/apimachinery/pkg/labels/selector.go` parser: `key`, `!key`, `key=value`,
//! `key==value`, `key!=value`, `key in (a,b)`, `key notin (a)`, `key>1`, `key<1`, joined
//! by commas, whitespace between tokens ignored. Keys must be qualified names and values
//! valid label values (at most 63 characters), like upstream's `NewRequirement`. Errors
//! carry upstream's wording plus the byte position where the parser stopped.

use crate::names::{is_qualified_name, is_valid_label_value};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use serde_json::Value;
use std::collections::BTreeMap;
use std::fmt;

/// A selector that could not be parsed or failed validation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SelectorError {
    /// Byte offset in the selector string where the problem was found (0 for problems
    /// that are not about one position, such as a `metav1.LabelSelector` field).
    pub position: usize,
    /// Upstream's message (`unable to parse requirement: found ')', expected: identifier`).
    pub message: String,
}

impl fmt::Display for SelectorError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (at position {})", self.message, self.position)
    }
}

impl std::error::Error for SelectorError {}

fn err<T>(position: usize, message: impl Into<String>) -> Result<T, SelectorError> {
    Err(SelectorError {
        position,
        message: message.into(),
    })
}

/// Operators of one requirement (upstream's `selection.Operator`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operator {
    Equals,
    DoubleEquals,
    NotEquals,
    In,
    NotIn,
    Exists,
    DoesNotExist,
    GreaterThan,
    LessThan,
}

/// One `key op values` term. All terms of a selector must match (logical AND).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Requirement {
    pub key: String,
    pub operator: Operator,
    /// Sorted and de-duplicated, like upstream's `sets.String`.
    pub values: Vec<String>,
}

impl Requirement {
    /// Upstream's `NewRequirement`: validates the key, the number of values for the
    /// operator, and each value.
    pub fn new(key: &str, operator: Operator, values: Vec<String>) -> Result<Self, String> {
        let errs = is_qualified_name(key);
        if !errs.is_empty() {
            return Err(format!("invalid label key {key:?}: {}", errs.join("; ")));
        }
        match operator {
            Operator::In | Operator::NotIn if values.is_empty() => {
                return Err("for 'in', 'notin' operators, values set can't be empty".into());
            }
            Operator::Equals | Operator::DoubleEquals | Operator::NotEquals
                if values.len() != 1 =>
            {
                return Err("exact-match compatibility requires one single value".into());
            }
            Operator::Exists | Operator::DoesNotExist if !values.is_empty() => {
                return Err("values set must be empty for exists and does not exist".into());
            }
            Operator::GreaterThan | Operator::LessThan => {
                if values.len() != 1 {
                    return Err("for 'Gt', 'Lt' operators, exactly one value is required".into());
                }
                if values[0].parse::<i64>().is_err() {
                    return Err("for 'Gt', 'Lt' operators, the value must be an integer".into());
                }
            }
            _ => {}
        }
        for v in &values {
            let errs = is_valid_label_value(v);
            if !errs.is_empty() {
                return Err(format!(
                    "invalid label value: {v:?}: at key: {key:?}: {}",
                    errs.join("; ")
                ));
            }
        }
        let mut values = values;
        values.sort();
        values.dedup();
        Ok(Requirement {
            key: key.to_string(),
            operator,
            values,
        })
    }

    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.matches_value(labels.get(&self.key).map(String::as_str))
    }

    /// Whether a label set in which this requirement's key has value `got` (`None`:
    /// absent) matches.
    fn matches_value(&self, got: Option<&str>) -> bool {
        match self.operator {
            Operator::Equals | Operator::DoubleEquals | Operator::In => {
                got.is_some_and(|v| self.values.iter().any(|x| x == v))
            }
            Operator::NotEquals | Operator::NotIn => {
                got.is_none_or(|v| !self.values.iter().any(|x| x == v))
            }
            Operator::Exists => got.is_some(),
            Operator::DoesNotExist => got.is_none(),
            // Upstream: the label must exist and parse as an integer, else no match.
            Operator::GreaterThan | Operator::LessThan => {
                let (Some(v), Some(Ok(limit))) =
                    (got, self.values.first().map(|l| l.parse::<i64>()))
                else {
                    return false;
                };
                let Ok(v) = v.parse::<i64>() else {
                    return false;
                };
                if self.operator == Operator::GreaterThan {
                    v > limit
                } else {
                    v < limit
                }
            }
        }
    }
}

/// A parsed label selector. `Everything` (empty string, or `{}` as a LabelSelector)
/// matches all objects; `Nothing` (a null LabelSelector) matches none.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LabelMatcher {
    Requirements(Vec<Requirement>),
    Nothing,
}

impl LabelMatcher {
    pub fn everything() -> Self {
        LabelMatcher::Requirements(Vec::new())
    }

    pub fn is_everything(&self) -> bool {
        matches!(self, LabelMatcher::Requirements(r) if r.is_empty())
    }

    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        match self {
            LabelMatcher::Requirements(reqs) => reqs.iter().all(|r| r.matches(labels)),
            LabelMatcher::Nothing => false,
        }
    }

    /// Matches an object's `metadata.labels` (absent labels are an empty set).
    pub fn matches_object(&self, obj: &Value) -> bool {
        self.matches(&labels_of(obj))
    }

    /// Matches the labels kept in `attrs`; the same answer as [`Self::matches_object`] on
    /// the object they were taken from.
    pub fn matches_attrs(&self, attrs: &SelectionAttrs) -> bool {
        match self {
            LabelMatcher::Requirements(reqs) => {
                reqs.iter().all(|r| r.matches_value(attrs.label(&r.key)))
            }
            LabelMatcher::Nothing => false,
        }
    }
}

impl std::fmt::Display for Requirement {
    /// Upstream's `Requirement.String()`: `a=b`, `a!=b`, `a in (x,y)`, `a notin (x)`,
    /// `a`, `!a`, `a>1`, `a<1`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let k = &self.key;
        let vals = self.values.join(",");
        match self.operator {
            Operator::Equals => write!(f, "{k}={vals}"),
            Operator::DoubleEquals => write!(f, "{k}=={vals}"),
            Operator::NotEquals => write!(f, "{k}!={vals}"),
            Operator::In => write!(f, "{k} in ({vals})"),
            Operator::NotIn => write!(f, "{k} notin ({vals})"),
            Operator::Exists => write!(f, "{k}"),
            Operator::DoesNotExist => write!(f, "!{k}"),
            Operator::GreaterThan => write!(f, "{k}>{vals}"),
            Operator::LessThan => write!(f, "{k}<{vals}"),
        }
    }
}

impl std::fmt::Display for LabelMatcher {
    /// Upstream's `Selector.String()`: requirements sorted by key, comma-joined; both the
    /// everything and the nothing selector print as the empty string, as upstream.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LabelMatcher::Requirements(reqs) => {
                let parts: Vec<String> = reqs.iter().map(ToString::to_string).collect();
                f.write_str(&parts.join(","))
            }
            LabelMatcher::Nothing => Ok(()),
        }
    }
}

/// `metadata.labels` of a JSON object as a map; non-string values are ignored.
pub fn labels_of(obj: &Value) -> BTreeMap<String, String> {
    obj.pointer("/metadata/labels")
        .and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
                .collect()
        })
        .unwrap_or_default()
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Tok {
    Ident(String),
    Bang,
    NotEquals,
    Equals,
    DoubleEquals,
    Gt,
    Lt,
    Open,
    Close,
    Comma,
    End,
}

impl Tok {
    /// The literal upstream prints in `found '...'` messages.
    fn literal(&self) -> &str {
        match self {
            Tok::Ident(s) => s,
            Tok::Bang => "!",
            Tok::NotEquals => "!=",
            Tok::Equals => "=",
            Tok::DoubleEquals => "==",
            Tok::Gt => ">",
            Tok::Lt => "<",
            Tok::Open => "(",
            Tok::Close => ")",
            Tok::Comma => ",",
            Tok::End => "",
        }
    }
}

/// Upstream's lexer: special characters are `! = ( ) , < >`, whitespace separates, every
/// other run of characters is an identifier.
fn lex(input: &str) -> Vec<(usize, Tok)> {
    let mut out = Vec::new();
    let b = input.as_bytes();
    let mut i = 0;
    let special = |c: u8| matches!(c, b'!' | b'=' | b'(' | b')' | b',' | b'<' | b'>');
    while i < b.len() {
        let c = b[i];
        if c.is_ascii_whitespace() {
            i += 1;
            continue;
        }
        let start = i;
        let next = b.get(i + 1).copied();
        let tok = match (c, next) {
            (b'!', Some(b'=')) => {
                i += 2;
                Tok::NotEquals
            }
            (b'=', Some(b'=')) => {
                i += 2;
                Tok::DoubleEquals
            }
            (b'!', _) | (b'=', _) | (b'(', _) | (b')', _) | (b',', _) | (b'<', _) | (b'>', _) => {
                i += 1;
                match c {
                    b'!' => Tok::Bang,
                    b'=' => Tok::Equals,
                    b'(' => Tok::Open,
                    b')' => Tok::Close,
                    b',' => Tok::Comma,
                    b'<' => Tok::Lt,
                    _ => Tok::Gt,
                }
            }
            _ => {
                while i < b.len() && !b[i].is_ascii_whitespace() && !special(b[i]) {
                    i += 1;
                }
                Tok::Ident(input[start..i].to_string())
            }
        };
        out.push((start, tok));
    }
    out.push((input.len(), Tok::End));
    out
}

struct Parser {
    toks: Vec<(usize, Tok)>,
    at: usize,
}

impl Parser {
    fn peek(&self) -> &(usize, Tok) {
        &self.toks[self.at.min(self.toks.len() - 1)]
    }
    fn next(&mut self) -> (usize, Tok) {
        let t = self.peek().clone();
        if self.at < self.toks.len() - 1 {
            self.at += 1;
        }
        t
    }

    fn requirement(&mut self) -> Result<Requirement, SelectorError> {
        let wrap = |pos: usize, m: String| SelectorError {
            position: pos,
            message: format!("unable to parse requirement: {m}"),
        };
        let (mut pos, mut tok) = self.next();
        let negated = tok == Tok::Bang;
        if negated {
            (pos, tok) = self.next();
        }
        let Tok::Ident(key) = tok else {
            return Err(wrap(
                pos,
                format!("found '{}', expected: identifier", tok.literal()),
            ));
        };
        let key_pos = pos;
        let (after_pos, after) = self.peek().clone();
        if negated || matches!(after, Tok::End | Tok::Comma) {
            let op = if negated {
                Operator::DoesNotExist
            } else {
                Operator::Exists
            };
            return Requirement::new(&key, op, Vec::new()).map_err(|m| wrap(key_pos, m));
        }
        self.next();
        let op = match &after {
            Tok::Ident(s) if s == "in" => Operator::In,
            Tok::Ident(s) if s == "notin" => Operator::NotIn,
            Tok::Equals => Operator::Equals,
            Tok::DoubleEquals => Operator::DoubleEquals,
            Tok::NotEquals => Operator::NotEquals,
            Tok::Gt => Operator::GreaterThan,
            Tok::Lt => Operator::LessThan,
            other => {
                return Err(wrap(
                    after_pos,
                    format!(
                        "found '{}', expected: in, notin, =, ==, !=, gt, lt",
                        other.literal()
                    ),
                ))
            }
        };
        let values = match op {
            Operator::In | Operator::NotIn => self.value_set().map_err(|(p, m)| wrap(p, m))?,
            _ => {
                // `key=` (nothing before `,` or the end) means the empty value, as upstream.
                let (p, t) = self.peek().clone();
                match t {
                    Tok::End | Tok::Comma => vec![String::new()],
                    Tok::Ident(v) => {
                        self.next();
                        vec![v]
                    }
                    other => {
                        return Err(wrap(
                            p,
                            format!("found '{}', expected: identifier", other.literal()),
                        ))
                    }
                }
            }
        };
        Requirement::new(&key, op, values).map_err(|m| wrap(key_pos, m))
    }

    /// `( v1, v2 )`; `()` is the set holding the empty string, as upstream.
    fn value_set(&mut self) -> Result<Vec<String>, (usize, String)> {
        let (p, t) = self.next();
        if t != Tok::Open {
            return Err((p, format!("found '{}' expected: '('", t.literal())));
        }
        let mut values = Vec::new();
        let (p, t) = self.peek().clone();
        match t {
            Tok::Close => {
                self.next();
                return Ok(vec![String::new()]);
            }
            Tok::Ident(_) | Tok::Comma => {}
            other => {
                return Err((
                    p,
                    format!(
                        "found '{}', expected: ',', ')' or identifier",
                        other.literal()
                    ),
                ))
            }
        }
        // Identifiers separated by commas; an empty slot (`a,,b` or `a,)`) is "".
        let mut want_value = true;
        loop {
            let (p, t) = self.peek().clone();
            match t {
                Tok::Ident(v) if want_value => {
                    self.next();
                    values.push(v);
                    want_value = false;
                }
                Tok::Comma => {
                    self.next();
                    if want_value {
                        values.push(String::new());
                    }
                    want_value = true;
                }
                Tok::Close => {
                    self.next();
                    if want_value {
                        values.push(String::new());
                    }
                    return Ok(values);
                }
                other => return Err((p, format!("found '{}', expected: ')'", other.literal()))),
            }
        }
    }
}

/// Parses the string form of a label selector (`?labelSelector=`).
pub fn parse_label_selector(input: &str) -> Result<LabelMatcher, SelectorError> {
    let mut p = Parser {
        toks: lex(input),
        at: 0,
    };
    let mut reqs = Vec::new();
    loop {
        let (pos, tok) = p.peek().clone();
        match tok {
            Tok::End => break,
            Tok::Ident(_) | Tok::Bang => {
                reqs.push(p.requirement()?);
                let (pos, tok) = p.next();
                match tok {
                    Tok::End => break,
                    Tok::Comma => {
                        let (p2, t2) = p.peek().clone();
                        if !matches!(t2, Tok::Ident(_) | Tok::Bang) {
                            return err(
                                p2,
                                format!("found '{}', expected: identifier after ','", t2.literal()),
                            );
                        }
                    }
                    other => {
                        return err(
                            pos,
                            format!(
                                "found '{}', expected: ',' or 'end of string'",
                                other.literal()
                            ),
                        )
                    }
                }
            }
            other => {
                return err(
                    pos,
                    format!(
                        "found '{}', expected: !, identifier, or 'end of string'",
                        other.literal()
                    ),
                )
            }
        }
    }
    // Upstream sorts requirements by key so that String() is canonical.
    reqs.sort_by(|a, b| a.key.cmp(&b.key));
    Ok(LabelMatcher::Requirements(reqs))
}

/// Upstream's `metav1.LabelSelectorAsSelector`: `None` selects nothing, an empty
/// selector selects everything; matchLabels become `=` terms, matchExpressions map
/// In/NotIn/Exists/DoesNotExist (case-sensitive, as upstream).
pub fn from_label_selector(sel: Option<&LabelSelector>) -> Result<LabelMatcher, SelectorError> {
    let Some(sel) = sel else {
        return Ok(LabelMatcher::Nothing);
    };
    let mut reqs = Vec::new();
    for (k, v) in sel.match_labels.iter().flatten() {
        let r =
            Requirement::new(k, Operator::Equals, vec![v.clone()]).map_err(|m| SelectorError {
                position: 0,
                message: m,
            })?;
        reqs.push(r);
    }
    for expr in sel.match_expressions.iter().flatten() {
        let op = match expr.operator.as_str() {
            "In" => Operator::In,
            "NotIn" => Operator::NotIn,
            "Exists" => Operator::Exists,
            "DoesNotExist" => Operator::DoesNotExist,
            other => {
                return err(
                    0,
                    format!("{other:?} is not a valid label selector operator"),
                )
            }
        };
        let r = Requirement::new(&expr.key, op, expr.values.clone().unwrap_or_default()).map_err(
            |m| SelectorError {
                position: 0,
                message: m,
            },
        )?;
        reqs.push(r);
    }
    reqs.sort_by(|a, b| a.key.cmp(&b.key));
    Ok(LabelMatcher::Requirements(reqs))
}

/// One `field op value` term of a field selector.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldRequirement {
    pub field: String,
    /// `true` for `!=`.
    pub negated: bool,
    pub value: String,
}

/// A parsed field selector; all terms must match.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct FieldMatcher {
    pub requirements: Vec<FieldRequirement>,
}

/// Fields every kind supports (upstream's `DefaultMetaV1FieldSelectorConversion`).
const META_FIELDS: &[&str] = &["metadata.name", "metadata.namespace"];

/// Extra selectable fields per kind, from upstream's `AddFieldLabelConversionFuncs`
/// (`pkg/apis/core/v1/conversion.go`, apps, batch).
fn kind_fields(kind: &str) -> &'static [&'static str] {
    match kind {
        "Pod" => &[
            "spec.nodeName",
            "spec.restartPolicy",
            "spec.schedulerName",
            "spec.serviceAccountName",
            "spec.hostNetwork",
            "status.phase",
            "status.podIP",
            "status.nominatedNodeName",
        ],
        "Event" => &[
            "involvedObject.kind",
            "involvedObject.namespace",
            "involvedObject.name",
            "involvedObject.uid",
            "involvedObject.apiVersion",
            "involvedObject.resourceVersion",
            "involvedObject.fieldPath",
            "reason",
            "reportingComponent",
            "source",
            "type",
        ],
        // Added in v1.31 (kubernetes/kubernetes#122541, #123905).
        "Service" => &["spec.clusterIP", "spec.type"],
        "Secret" => &["type"],
        "Namespace" => &["status.phase"],
        "Node" => &["spec.unschedulable"],
        "ReplicaSet" => &["status.replicas"],
        "Job" => &["status.successful"],
        _ => &[],
    }
}

/// Upstream has two wordings: kinds with their own field-label conversion function
/// (those with extra selectable fields) say `field label not supported: <f>`; the others
/// go through `DefaultMetaV1FieldSelectorConversion`, which names the two it accepts.
fn unsupported_field_message(kind: &str, field: &str) -> String {
    if kind_fields(kind).is_empty() {
        format!("{field:?} is not a known field selector: only \"metadata.name\", \"metadata.namespace\"")
    } else {
        format!("field label not supported: {field}")
    }
}

/// Splits at commas not escaped with a backslash (upstream's `splitTerms`).
fn split_terms(s: &str) -> Vec<(usize, &str)> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut escaped = false;
    for (i, c) in s.char_indices() {
        if escaped {
            escaped = false;
        } else if c == '\\' {
            escaped = true;
        } else if c == ',' {
            out.push((start, &s[start..i]));
            start = i + 1;
        }
    }
    out.push((start, &s[start..]));
    out
}

/// Upstream's `UnescapeValue`: only `\\`, `\,` and `\=` are valid escapes.
fn unescape(s: &str) -> Result<String, String> {
    let mut out = String::new();
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            match chars.next() {
                Some(e @ ('\\' | ',' | '=')) => out.push(e),
                Some(e) => return Err(format!("invalid escape sequence: \\{e}")),
                None => return Err("unterminated escape sequence".to_string()),
            }
        } else if c == ',' || c == '=' {
            return Err(format!("unescaped {c:?} in value {s:?}"));
        } else {
            out.push(c);
        }
    }
    Ok(out)
}

/// Parses `?fieldSelector=` for objects of `kind` (`Pod`, `Event`...). Fields the kind
/// cannot select on are refused with upstream's `field label not supported: <field>`.
pub fn parse_field_selector(input: &str, kind: &str) -> Result<FieldMatcher, SelectorError> {
    let mut requirements = Vec::new();
    for (pos, term) in split_terms(input) {
        if term.is_empty() {
            continue;
        }
        // The first operator occurrence wins, trying `!=`, `==`, `=` at each offset.
        let split = term.char_indices().find_map(|(i, _)| {
            let rest = &term[i..];
            ["!=", "==", "="]
                .iter()
                .find(|op| rest.starts_with(**op))
                .map(|op| (i, *op))
        });
        let Some((i, op)) = split else {
            return err(
                pos,
                format!("invalid selector: '{input}'; can't understand '{term}'"),
            );
        };
        let field = &term[..i];
        let value = unescape(&term[i + op.len()..]).map_err(|m| SelectorError {
            position: pos + i + op.len(),
            message: format!("invalid field selector: {m}"),
        })?;
        if !META_FIELDS.contains(&field) && !kind_fields(kind).contains(&field) {
            return err(pos, unsupported_field_message(kind, field));
        }
        requirements.push(FieldRequirement {
            field: field.to_string(),
            negated: op == "!=",
            value,
        });
    }
    Ok(FieldMatcher { requirements })
}

impl FieldMatcher {
    pub fn is_everything(&self) -> bool {
        self.requirements.is_empty()
    }

    /// Evaluates against a JSON object. Absent fields compare as `""` (upstream builds
    /// the field set from the typed object, where an unset string is empty), and
    /// booleans that default to false (`spec.hostNetwork`, `spec.unschedulable`)
    /// compare as `"false"`.
    pub fn matches(&self, obj: &Value) -> bool {
        self.requirements.iter().all(|r| {
            let got = field_value(obj, &r.field);
            (got == r.value) != r.negated
        })
    }

    /// Evaluates against the fields kept in `attrs` (taken from an object of the kind this
    /// selector was parsed for); the same answer as [`Self::matches`] on that object.
    pub fn matches_attrs(&self, attrs: &SelectionAttrs) -> bool {
        self.requirements
            .iter()
            .all(|r| (attrs.field(&r.field) == r.value) != r.negated)
    }
}

/// JSON pointer of a selectable field in an object (`source` is Event's
/// `source.component`).
fn field_pointer(field: &str) -> String {
    match field {
        "source" => "/source/component".to_string(),
        f => format!("/{}", f.replace('.', "/")),
    }
}

/// What label and field selectors of one kind read from an object (upstream's `GetAttrs`,
/// which the watch cache keeps per object so that a filtered LIST or watch decodes only
/// the objects it returns): the string labels, and every selectable field of the kind
/// with its value as [`field_value`] gives it. For every selector `l`, `f` valid for the
/// kind, `l.matches_attrs(&a) == l.matches_object(obj)` and `f.matches_attrs(&a) ==
/// f.matches(obj)` with `a = SelectionAttrs::of(kind, obj)`.
///
/// Flat boxed slices, not a JSON tree: the watch cache holds one per object version, and
/// a `serde_json::Value` of the same content is five or six `BTreeMap`s (a map allocates a
/// whole 11-slot node, about 640 bytes, for its first entry), about 4 KB per pod against
/// about 0.5 KB here.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SelectionAttrs {
    /// `metadata.labels` with string values, sorted by key.
    labels: Box<[(Box<str>, Box<str>)]>,
    /// `(field, value)` for [`META_FIELDS`] and the kind's fields, in that order.
    fields: Box<[(&'static str, Box<str>)]>,
}

impl SelectionAttrs {
    /// The attributes of `obj`, an object of `kind`.
    pub fn of(kind: &str, obj: &Value) -> SelectionAttrs {
        let mut labels: Vec<(Box<str>, Box<str>)> = obj
            .pointer("/metadata/labels")
            .and_then(Value::as_object)
            .map(|m| {
                m.iter()
                    .filter_map(|(k, v)| Some((k.as_str().into(), v.as_str()?.into())))
                    .collect()
            })
            .unwrap_or_default();
        labels.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        let fields = META_FIELDS
            .iter()
            .chain(kind_fields(kind))
            .map(|f| (*f, field_value(obj, f).into_boxed_str()))
            .collect();
        SelectionAttrs {
            labels: labels.into_boxed_slice(),
            fields,
        }
    }

    /// The value of label `key`, if the object has it.
    pub fn label(&self, key: &str) -> Option<&str> {
        self.labels
            .binary_search_by(|(k, _)| (**k).cmp(key))
            .ok()
            .map(|i| &*self.labels[i].1)
    }

    /// The value of selectable field `field` (`""` for a field the kind does not have,
    /// which a parsed selector never asks for).
    pub fn field(&self, field: &str) -> &str {
        self.fields
            .iter()
            .find(|(f, _)| *f == field)
            .map_or("", |(_, v)| v)
    }

    /// The heap bytes these attributes take, about (string lengths and the slices; no
    /// allocator overhead).
    pub fn heap_size(&self) -> usize {
        self.labels.len() * std::mem::size_of::<(Box<str>, Box<str>)>()
            + self
                .labels
                .iter()
                .map(|(k, v)| k.len() + v.len())
                .sum::<usize>()
            + self.fields.len() * std::mem::size_of::<(&str, Box<str>)>()
            + self.fields.iter().map(|(_, v)| v.len()).sum::<usize>()
    }
}

/// The string value of a selectable field, as upstream's `*ToSelectableFields`.
pub fn field_value(obj: &Value, field: &str) -> String {
    // Event `source` means the reporting component of `source`.
    match obj.pointer(&field_pointer(field)) {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Bool(b)) => b.to_string(),
        Some(Value::Number(n)) => n.to_string(),
        Some(_) => String::new(),
        None => match field {
            "spec.hostNetwork" | "spec.unschedulable" => "false".to_string(),
            "status.replicas" | "status.successful" => "0".to_string(),
            _ => String::new(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement;
    use serde_json::json;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn label_selector_matching() {
        let web = labels(&[("app", "web"), ("tier", "front"), ("rev", "3")]);
        let db = labels(&[("app", "db")]);
        let none = labels(&[]);
        // (selector, matches web, matches db, matches no labels)
        let cases = [
            ("", true, true, true),
            ("app=web", true, false, false),
            ("app==web", true, false, false),
            ("app = web", true, false, false),
            ("app!=web", false, true, true),
            ("app in (web,db)", true, true, false),
            ("app in ( web , db )", true, true, false),
            ("app notin (web)", false, true, true),
            ("tier", true, false, false),
            ("!tier", false, true, true),
            ("! tier", false, true, true),
            ("app=web,tier=front", true, false, false),
            ("app=web, tier=back", false, false, false),
            ("app in (web),!missing", true, false, false),
            ("app=", false, false, false),
            ("app!=", true, true, true),
            ("app in ()", false, false, false),
            ("rev>2", true, false, false),
            ("rev<3", false, false, false),
            ("in=x", false, false, false),
            ("app.kubernetes.io/name", false, false, false),
        ];
        for (sel, w, d, n) in cases {
            let m = parse_label_selector(sel).unwrap_or_else(|e| panic!("{sel:?}: {e}"));
            assert_eq!(
                (m.matches(&web), m.matches(&db), m.matches(&none)),
                (w, d, n),
                "{sel:?}"
            );
        }
    }

    #[test]
    fn selector_strings() {
        let cases = [
            ("app=web", "app=web"),
            ("tier,app==web", "app==web,tier"),
            ("app in (b, a), !x", "app in (a,b),!x"),
            ("a notin (x),b!=y,c>3", "a notin (x),b!=y,c>3"),
            ("", ""),
        ];
        for (input, want) in cases {
            assert_eq!(
                parse_label_selector(input).unwrap().to_string(),
                want,
                "{input:?}"
            );
        }
    }

    #[test]
    fn label_selector_errors() {
        let key_msg = "unable to parse requirement: invalid label key \"-app\": name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex used for validation is '([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]')";
        let long = format!("app={}", "v".repeat(64));
        let cases: Vec<(&str, usize, String)> = vec![
            ("app=web,", 8, "found '', expected: identifier after ','".into()),
            (",app", 0, "found ',', expected: !, identifier, or 'end of string'".into()),
            ("app web", 4, "unable to parse requirement: found 'web', expected: in, notin, =, ==, !=, gt, lt".into()),
            ("app in web", 7, "unable to parse requirement: found 'web' expected: '('".into()),
            ("app in (web", 11, "unable to parse requirement: found '', expected: ')'".into()),
            ("app in (=)", 8, "unable to parse requirement: found '=', expected: ',', ')' or identifier".into()),
            ("app=(x)", 4, "unable to parse requirement: found '(', expected: identifier".into()),
            ("app=a b", 6, "found 'b', expected: ',' or 'end of string'".into()),
            ("!=x", 0, "found '!=', expected: !, identifier, or 'end of string'".into()),
            ("!(x", 1, "unable to parse requirement: found '(', expected: identifier".into()),
            ("-app=x", 0, key_msg.into()),
            (&long, 0, "unable to parse requirement: invalid label value: \"vvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvv\": at key: \"app\": must be no more than 63 characters".into()),
            ("rev>x", 0, "unable to parse requirement: for 'Gt', 'Lt' operators, the value must be an integer".into()),
        ];
        for (sel, pos, msg) in cases {
            let e = parse_label_selector(sel).expect_err(sel);
            assert_eq!(
                (e.position, e.message.as_str()),
                (pos, msg.as_str()),
                "{sel:?}"
            );
        }
        let e = parse_label_selector("app web").unwrap_err();
        assert_eq!(
            e.to_string(),
            "unable to parse requirement: found 'web', expected: in, notin, =, ==, !=, gt, lt (at position 4)"
        );
    }

    #[test]
    fn metav1_label_selector() {
        let expr = |k: &str, op: &str, vals: &[&str]| LabelSelectorRequirement {
            key: k.into(),
            operator: op.into(),
            values: if vals.is_empty() {
                None
            } else {
                Some(vals.iter().map(|s| s.to_string()).collect())
            },
        };
        let web = labels(&[("app", "web"), ("tier", "front")]);
        let cases: Vec<(Option<LabelSelector>, Result<bool, &str>)> = vec![
            (None, Ok(false)),
            (Some(LabelSelector::default()), Ok(true)),
            (
                Some(LabelSelector {
                    match_labels: Some(web.clone()),
                    ..Default::default()
                }),
                Ok(true),
            ),
            (
                Some(LabelSelector {
                    match_labels: Some(labels(&[("app", "db")])),
                    ..Default::default()
                }),
                Ok(false),
            ),
            (
                Some(LabelSelector {
                    match_expressions: Some(vec![expr("app", "In", &["web", "x"])]),
                    ..Default::default()
                }),
                Ok(true),
            ),
            (
                Some(LabelSelector {
                    match_expressions: Some(vec![expr("app", "NotIn", &["web"])]),
                    ..Default::default()
                }),
                Ok(false),
            ),
            (
                Some(LabelSelector {
                    match_expressions: Some(vec![expr("tier", "Exists", &[])]),
                    ..Default::default()
                }),
                Ok(true),
            ),
            (
                Some(LabelSelector {
                    match_expressions: Some(vec![expr("tier", "DoesNotExist", &[])]),
                    ..Default::default()
                }),
                Ok(false),
            ),
            (
                Some(LabelSelector {
                    match_expressions: Some(vec![expr("tier", "in", &["x"])]),
                    ..Default::default()
                }),
                Err("\"in\" is not a valid label selector operator"),
            ),
            (
                Some(LabelSelector {
                    match_expressions: Some(vec![expr("tier", "In", &[])]),
                    ..Default::default()
                }),
                Err("for 'in', 'notin' operators, values set can't be empty"),
            ),
            (
                Some(LabelSelector {
                    match_expressions: Some(vec![expr("tier", "Exists", &["x"])]),
                    ..Default::default()
                }),
                Err("values set must be empty for exists and does not exist"),
            ),
        ];
        for (sel, want) in cases {
            let got = from_label_selector(sel.as_ref())
                .map(|m| m.matches(&web))
                .map_err(|e| e.message);
            assert_eq!(got, want.map_err(String::from), "{sel:?}");
        }
    }

    #[test]
    fn field_selectors() {
        let pod = json!({
            "metadata": {"name": "p1", "namespace": "default"},
            "spec": {"nodeName": "n1", "schedulerName": "default-scheduler"},
            "status": {"phase": "Running"}
        });
        let pending = json!({"metadata": {"name": "p2", "namespace": "kube-system"}, "status": {"phase": "Pending"}});
        let cases = [
            ("", true, true),
            ("metadata.name=p1", true, false),
            ("metadata.name==p1", true, false),
            ("metadata.name!=p1", false, true),
            (
                "metadata.namespace=default,status.phase=Running",
                true,
                false,
            ),
            ("spec.nodeName=n1", true, false),
            ("spec.nodeName=", false, true),
            ("spec.nodeName!=", true, false),
            ("status.phase!=Succeeded,status.phase!=Failed", true, true),
            ("spec.schedulerName=default-scheduler", true, false),
            ("spec.hostNetwork=false", true, true),
        ];
        for (sel, a, b) in cases {
            let m = parse_field_selector(sel, "Pod").unwrap_or_else(|e| panic!("{sel:?}: {e}"));
            assert_eq!((m.matches(&pod), m.matches(&pending)), (a, b), "{sel:?}");
        }
    }

    #[test]
    fn field_selector_events_and_escapes() {
        let ev = json!({
            "metadata": {"name": "e", "namespace": "default"},
            "involvedObject": {"kind": "Pod", "name": "a,b", "namespace": "default"},
            "source": {"component": "kubelet"},
            "type": "Warning"
        });
        let cases = [
            ("involvedObject.kind=Pod,involvedObject.name=a\\,b", true),
            ("source=kubelet", true),
            ("type=Normal", false),
            ("involvedObject.namespace=default", true),
        ];
        for (sel, want) in cases {
            let m = parse_field_selector(sel, "Event").unwrap();
            assert_eq!(m.matches(&ev), want, "{sel:?}");
        }
    }

    #[test]
    fn field_selector_errors() {
        let cases = [
            ("spec.foo=bar", "Pod", "field label not supported: spec.foo"),
            (
                "spec.type=LoadBalancer",
                "ConfigMap",
                "\"spec.type\" is not a known field selector: only \"metadata.name\", \"metadata.namespace\"",
            ),
            (
                "spec.replicas=1",
                "Deployment",
                "\"spec.replicas\" is not a known field selector: only \"metadata.name\", \"metadata.namespace\"",
            ),
            (
                "spec.nodeName=x",
                "Service",
                "field label not supported: spec.nodeName",
            ),
            (
                "status.phase=Active",
                "Service",
                "field label not supported: status.phase",
            ),
            (
                "metadata.name",
                "Pod",
                "invalid selector: 'metadata.name'; can't understand 'metadata.name'",
            ),
            (
                "metadata.name=a\\x",
                "Pod",
                "invalid field selector: invalid escape sequence: \\x",
            ),
        ];
        for (sel, kind, msg) in cases {
            let e = parse_field_selector(sel, kind).expect_err(sel);
            assert_eq!(e.message, msg, "{sel:?}");
        }
        assert!(parse_field_selector("status.phase=Active", "Namespace").is_ok());
        let svc = json!({"metadata": {"name": "web"}, "spec": {"type": "LoadBalancer", "clusterIP": "10.96.0.10"}});
        for (sel, want) in [
            ("spec.type=LoadBalancer", true),
            ("spec.type!=LoadBalancer", false),
            ("spec.clusterIP=10.96.0.10", true),
        ] {
            assert_eq!(
                parse_field_selector(sel, "Service").unwrap().matches(&svc),
                want,
                "{sel}"
            );
        }
    }

    #[test]
    fn selection_attrs_select_like_the_object() {
        let pod = json!({
            "metadata": {"name": "p1", "namespace": "default", "labels": {"app": "web", "tier": "fe"},
                         "annotations": {"big": "x"}},
            "spec": {"nodeName": "n1", "schedulerName": "default-scheduler", "containers": [{"name": "c"}]},
            "status": {"phase": "Running", "podIP": "10.42.0.5"},
        });
        let bare = json!({"metadata": {"name": "p2", "labels": {"app": "db", "n": 3}}});
        let attrs = SelectionAttrs::of("Pod", &pod);
        assert_eq!(attrs.label("tier"), Some("fe"));
        assert_eq!(attrs.label("big"), None);
        assert_eq!(attrs.field("spec.nodeName"), "n1");
        assert_eq!(attrs.field("spec.hostNetwork"), "false");
        for (labels, fields) in [
            ("app=web", ""),
            ("app in (web,db),!missing", "spec.nodeName=n1"),
            ("tier notin (fe)", ""),
            ("", "status.phase!=Succeeded,status.phase!=Failed"),
            ("", "spec.hostNetwork=false,metadata.namespace=default"),
            (
                "",
                "status.podIP=10.42.0.5,spec.schedulerName=default-scheduler",
            ),
            ("app", "spec.nodeName="),
            ("n", ""),
            ("!n,app=db", "metadata.name=p2"),
            ("app notin (web)", "metadata.name!=p1"),
        ] {
            let l = parse_label_selector(labels).unwrap();
            let f = parse_field_selector(fields, "Pod").unwrap();
            for obj in [&pod, &bare] {
                let a = SelectionAttrs::of("Pod", obj);
                assert_eq!(
                    l.matches_attrs(&a),
                    l.matches_object(obj),
                    "{labels:?} on {obj}"
                );
                assert_eq!(f.matches_attrs(&a), f.matches(obj), "{fields:?} on {obj}");
            }
        }
        let ev = json!({"metadata": {"name": "e"}, "source": {"component": "kubelet"}, "type": "Normal"});
        let f = parse_field_selector("source=kubelet,type=Normal", "Event").unwrap();
        assert!(f.matches_attrs(&SelectionAttrs::of("Event", &ev)));
    }
}
