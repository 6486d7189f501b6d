//! Field errors shaped like upstream's `k8s.io/apimachinery/pkg/util/validation/field`:
//! a path, a type, the bad value and a detail, rendered exactly like `field.Error.Error()`
//! and aggregated like `ErrorList.ToAggregate()`, because kubectl prints these strings
//! to users verbatim.

use serde_json::Value;
use std::fmt;

/// Upstream's `field.ErrorType`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    NotFound,
    Required,
    Duplicate,
    Invalid,
    NotSupported,
    Forbidden,
    TooLong,
    TooMany,
    Internal,
}

impl ErrorKind {
    /// `ErrorType.String()`: the human text inside the message.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::NotFound => "Not found",
            ErrorKind::Required => "Required value",
            ErrorKind::Duplicate => "Duplicate value",
            ErrorKind::Invalid => "Invalid value",
            ErrorKind::NotSupported => "Unsupported value",
            ErrorKind::Forbidden => "Forbidden",
            ErrorKind::TooLong => "Too long",
            ErrorKind::TooMany => "Too many",
            ErrorKind::Internal => "Internal error",
        }
    }

    /// The `metav1.CauseType` value used in `Status.details.causes[].reason`.
    pub fn cause_type(self) -> &'static str {
        match self {
            ErrorKind::NotFound => "FieldValueNotFound",
            ErrorKind::Required => "FieldValueRequired",
            ErrorKind::Duplicate => "FieldValueDuplicate",
            ErrorKind::Invalid => "FieldValueInvalid",
            ErrorKind::NotSupported => "FieldValueNotSupported",
            ErrorKind::Forbidden => "FieldValueForbidden",
            ErrorKind::TooLong => "FieldValueTooLong",
            ErrorKind::TooMany => "FieldValueTooMany",
            ErrorKind::Internal => "InternalError",
        }
    }
}

/// One validation problem at one field path (`spec.ports[0].port`).
#[derive(Debug, Clone, PartialEq)]
pub struct FieldError {
    pub path: String,
    pub kind: ErrorKind,
    /// The offending value; `None` when upstream omits it from the message.
    pub value: Option<Value>,
    pub detail: String,
}

impl FieldError {
    pub fn new(
        kind: ErrorKind,
        path: impl Into<String>,
        value: Option<Value>,
        detail: impl Into<String>,
    ) -> Self {
        FieldError {
            path: path.into(),
            kind,
            value,
            detail: detail.into(),
        }
    }
    pub fn invalid(
        path: impl Into<String>,
        value: impl Into<Value>,
        detail: impl Into<String>,
    ) -> Self {
        Self::new(ErrorKind::Invalid, path, Some(value.into()), detail)
    }
    pub fn required(path: impl Into<String>, detail: impl Into<String>) -> Self {
        Self::new(ErrorKind::Required, path, None, detail)
    }
    pub fn duplicate(path: impl Into<String>, value: impl Into<Value>) -> Self {
        Self::new(ErrorKind::Duplicate, path, Some(value.into()), "")
    }
    pub fn forbidden(path: impl Into<String>, detail: impl Into<String>) -> Self {
        Self::new(ErrorKind::Forbidden, path, None, detail)
    }
    /// Upstream's `field.NotSupported`: the detail lists the accepted values, quoted.
    pub fn not_supported(
        path: impl Into<String>,
        value: impl Into<Value>,
        supported: &[&str],
    ) -> Self {
        let quoted: Vec<String> = supported.iter().map(|s| format!("{s:?}")).collect();
        Self::new(
            ErrorKind::NotSupported,
            path,
            Some(value.into()),
            format!("supported values: {}", quoted.join(", ")),
        )
    }
    /// Upstream's `field.TooLong` (value omitted from the message, limit in bytes).
    pub fn too_long(path: impl Into<String>, max_bytes: usize) -> Self {
        let unit = if max_bytes == 1 { "byte" } else { "bytes" };
        Self::new(
            ErrorKind::TooLong,
            path,
            None,
            format!("may not be more than {max_bytes} {unit}"),
        )
    }

    /// Upstream's `ErrorBody()`: everything after `path: `.
    pub fn body(&self) -> String {
        let mut s = match (self.kind, &self.value) {
            (
                ErrorKind::Required
                | ErrorKind::Forbidden
                | ErrorKind::TooLong
                | ErrorKind::Internal,
                _,
            )
            | (_, None) => self.kind.as_str().to_string(),
            (_, Some(v)) => format!("{}: {}", self.kind.as_str(), render_value(v)),
        };
        if !self.detail.is_empty() {
            s.push_str(": ");
            s.push_str(&self.detail);
        }
        s
    }
}

/// Go's `%v`/`%q` rendering of the bad value: strings quoted, numbers and booleans bare,
/// null as `null`, anything structured as JSON.
fn render_value(v: &Value) -> String {
    match v {
        Value::String(s) => format!("{s:?}"),
        Value::Null => "null".to_string(),
        other => other.to_string(),
    }
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.body())
    }
}

impl std::error::Error for FieldError {}

/// Upstream's `utilerrors.NewAggregate(list).Error()`: one message alone, several as
/// `[a, b]`, duplicates removed.
pub fn aggregate(errs: &[FieldError]) -> String {
    let mut msgs: Vec<String> = Vec::new();
    for e in errs {
        let m = e.to_string();
        if !msgs.contains(&m) {
            msgs.push(m);
        }
    }
    match msgs.len() {
        0 => String::new(),
        1 => msgs.remove(0),
        _ => format!("[{}]", msgs.join(", ")),
    }
}

/// Builds `a.b[0].c` style paths (upstream's `field.Path`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Path(String);

impl Path {
    pub fn root(name: &str) -> Self {
        Path(name.to_string())
    }
    pub fn child(&self, name: &str) -> Self {
        if self.0.is_empty() {
            Path(name.to_string())
        } else {
            Path(format!("{}.{name}", self.0))
        }
    }
    pub fn index(&self, i: usize) -> Self {
        Path(format!("{}[{i}]", self.0))
    }
    /// Map keys are rendered `[key]` unquoted, like upstream's `Path.Key`.
    pub fn key(&self, k: &str) -> Self {
        Path(format!("{}[{k}]", self.0))
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Path {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<&Path> for String {
    fn from(p: &Path) -> String {
        p.0.clone()
    }
}

impl From<Path> for String {
    fn from(p: Path) -> String {
        p.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn renders_like_upstream() {
        let cases = vec![
            (
                FieldError::invalid("spec.ports[0].port", 70000, "must be between 1 and 65535, inclusive"),
                "spec.ports[0].port: Invalid value: 70000: must be between 1 and 65535, inclusive",
            ),
            (FieldError::required("spec.ports", ""), "spec.ports: Required value"),
            (
                FieldError::required("spec.selector", "selector is required"),
                "spec.selector: Required value: selector is required",
            ),
            (
                FieldError::not_supported("spec.ports[0].protocol", "HTTP", &["SCTP", "TCP", "UDP"]),
                "spec.ports[0].protocol: Unsupported value: \"HTTP\": supported values: \"SCTP\", \"TCP\", \"UDP\"",
            ),
            (FieldError::duplicate("spec.ports[1].name", "http"), "spec.ports[1].name: Duplicate value: \"http\""),
            (
                FieldError::too_long("metadata.annotations", 262144),
                "metadata.annotations: Too long: may not be more than 262144 bytes",
            ),
            (
                FieldError::forbidden("spec.clusterIP", "may not change once set"),
                "spec.clusterIP: Forbidden: may not change once set",
            ),
            (FieldError::invalid("spec.x", Value::Null, "bad"), "spec.x: Invalid value: null: bad"),
            (FieldError::invalid("spec.x", true, ""), "spec.x: Invalid value: true"),
            (
                FieldError::invalid("spec.selector", json!({"app": "x"}), "bad"),
                "spec.selector: Invalid value: {\"app\":\"x\"}: bad",
            ),
        ];
        for (err, want) in cases {
            assert_eq!(err.to_string(), want);
        }
    }

    #[test]
    fn aggregates_like_upstream() {
        let a = FieldError::required("a", "");
        let b = FieldError::required("b", "");
        let cases: Vec<(Vec<FieldError>, &str)> = vec![
            (vec![], ""),
            (vec![a.clone()], "a: Required value"),
            (
                vec![a.clone(), b.clone()],
                "[a: Required value, b: Required value]",
            ),
            (
                vec![a.clone(), a.clone(), b],
                "[a: Required value, b: Required value]",
            ),
        ];
        for (errs, want) in cases {
            assert_eq!(aggregate(&errs), want);
        }
    }

    #[test]
    fn paths() {
        let p = Path::root("spec").child("ports").index(2).child("port");
        assert_eq!(p.as_str(), "spec.ports[2].port");
        assert_eq!(
            Path::root("metadata").child("labels").key("app").as_str(),
            "metadata.labels[app]"
        );
        assert_eq!(Path::root("").child("spec").as_str(), "spec");
    }
}
