//! `application/vnd.kubernetes.protobuf` request bodies, decoded to the JSON form of the
//! object so that they take the same path as JSON bodies (defaulting, validation,
//! `fieldValidation`).
//!
//! client-go's typed clients (`kubectl create deployment|configmap|secret|namespace|
//! service`, controllers built on client-go) send protobuf. The wire format is upstream's
//! `k8s.io/apimachinery/pkg/runtime/serializer/protobuf`: the 4-byte magic `k8s\0`, then a
//! `runtime.Unknown` message
//!
//! ```text
//! message Unknown { TypeMeta typeMeta = 1; bytes raw = 2; string contentEncoding = 3; string contentType = 4; }
//! message TypeMeta { string apiVersion = 1; string kind = 2; }
//! ```
//!
//! whose `raw` is the typed object (`k8s.io.api.apps.v1.Deployment`, ...) without its
//! TypeMeta. The field tables in [`schema`] are generated from the k8s-pb crate (the
//! upstream `.proto` definitions) and k8s-openapi (the JSON names) by
//! `tools/gen_protobuf_schema.py`.
//!
//! The JSON produced is what Go's encoder writes for the struct that gogo-protobuf decodes:
//! value scalars at their zero value are omitted (`omitempty`), pointer scalars present on
//! the wire are kept even when zero (`replicas: 0`), nested messages are always written
//! (`"status": {}`), and the messages with a JSON form of their own ([`Special`]) get it.
//! Responses stay JSON: client-go lists `application/json` after protobuf in Accept.

mod schema;

use base64::Engine;
use serde_json::{Map, Value};

/// The media type client-go sends.
pub const MEDIA_TYPE: &str = "application/vnd.kubernetes.protobuf";

/// `protobuf.serializer`'s prefix, so that a protobuf body is never mistaken for another
/// format.
const MAGIC: &[u8; 4] = b"k8s\0";

/// How deep messages may nest (the served kinds' schemas are acyclic and need about 12).
/// Bounds the recursion should a recursive message ever be added.
const MAX_DEPTH: usize = 64;

pub(crate) struct Message {
    /// The protobuf full name (for messages and tests).
    pub name: &'static str,
    pub special: Option<Special>,
    /// Sorted by tag.
    pub fields: &'static [Field],
}

pub(crate) struct Field {
    pub tag: u32,
    /// The JSON name (empty for [`Label::Inline`]).
    pub json: &'static str,
    pub ty: Ty,
    pub label: Label,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Ty {
    Str,
    Bytes,
    I32,
    I64,
    Bool,
    /// An index into [`schema::MESSAGES`].
    Message(usize),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Label {
    /// A Go value field: omitted from JSON at its zero value.
    Optional,
    /// A Go pointer scalar: present on the wire means set, zero included.
    Pointer,
    Repeated,
    /// `map<string, ty>` (entries are messages {1: key, 2: value}).
    Map,
    /// An embedded Go struct (`json:",inline"`): its fields belong to the parent object.
    Inline,
}

/// Messages whose Go types marshal to JSON in a form of their own.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Special {
    /// {type, intVal, strVal} → a number or a string.
    IntOrString,
    /// {string} → the string.
    Quantity,
    /// {seconds, nanos} → RFC 3339 in seconds; an empty message is the zero time (null).
    Time,
    /// {seconds, nanos} → RFC 3339 with microseconds.
    MicroTime,
    /// {raw} → the JSON object `raw` holds.
    FieldsV1,
}
// The served kinds reach no `double`, metav1.Duration or runtime.RawExtension field; the
// generator names them `Ty::F64`, `Special::Duration` and `Special::RawExtension`, so a
// kind added to its ROOTS that needs them fails to compile here rather than decoding
// them wrongly.

/// Why a protobuf body could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DecodeError {
    /// The bytes are not a well-formed encoding (400). `path` is the JSON path of the field
    /// being decoded (empty: the envelope).
    Malformed { path: String, message: String },
    /// The envelope names a kind skiff has no protobuf definition of (415).
    UnknownKind { api_version: String, kind: String },
    /// The envelope is well-formed but uses a feature skiff does not decode (415).
    Unsupported(String),
}

impl std::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DecodeError::Malformed { path, message } if path.is_empty() => {
                write!(f, "the protobuf request body is malformed: {message}")
            }
            DecodeError::Malformed { path, message } => {
                write!(f, "the protobuf request body is malformed at {path}: {message}")
            }
            DecodeError::UnknownKind { api_version, kind } => write!(
                f,
                "the protobuf request body holds {kind} in version {api_version:?}, which this server cannot decode from protobuf; send it as application/json"
            ),
            DecodeError::Unsupported(m) => f.write_str(m),
        }
    }
}

impl std::error::Error for DecodeError {}

/// Decodes a `application/vnd.kubernetes.protobuf` body to the object's JSON form, with
/// `apiVersion` and `kind` from the envelope.
pub fn decode(body: &[u8]) -> Result<Value, DecodeError> {
    decode_envelope(body)
}

fn malformed(path: &str, message: impl Into<String>) -> DecodeError {
    DecodeError::Malformed {
        path: path.to_string(),
        message: message.into(),
    }
}

fn decode_envelope(body: &[u8]) -> Result<Value, DecodeError> {
    let Some(rest) = body.strip_prefix(MAGIC) else {
        return Err(malformed(
            "",
            "it does not start with the Kubernetes protobuf prefix \"k8s\\x00\"",
        ));
    };
    let (mut api_version, mut kind, mut raw, mut encoding) =
        (String::new(), String::new(), None, String::new());
    let mut r = Reader::new(rest, "");
    while let Some((tag, wire)) = r.key()? {
        match (tag, wire) {
            (1, WIRE_LEN) => {
                let mut tm = Reader::new(r.bytes()?, "typeMeta");
                while let Some((tag, wire)) = tm.key()? {
                    match (tag, wire) {
                        (1, WIRE_LEN) => api_version = tm.string()?,
                        (2, WIRE_LEN) => kind = tm.string()?,
                        _ => tm.skip(wire)?,
                    }
                }
            }
            (2, WIRE_LEN) => raw = Some(r.bytes()?),
            (3, WIRE_LEN) => encoding = r.string()?,
            // contentType: empty, or the protobuf media type itself.
            (4, WIRE_LEN) => drop(r.bytes()?),
            (1..=4, _) => {
                return Err(malformed(
                    "",
                    format!("runtime.Unknown field {tag} has wire type {wire}, expected 2 (length-delimited)"),
                ))
            }
            _ => r.skip(wire)?,
        }
    }
    if !encoding.is_empty() {
        return Err(DecodeError::Unsupported(format!(
            "the protobuf request body has contentEncoding {encoding:?}; only unencoded bodies are supported"
        )));
    }
    if kind.is_empty() {
        return Err(malformed(
            "",
            "the envelope has no kind (runtime.Unknown.typeMeta.kind)",
        ));
    }
    let Some(&(_, _, root)) = schema::ROOTS
        .iter()
        .find(|(av, k, _)| *k == kind && (*av == api_version || *av == "*"))
    else {
        return Err(DecodeError::UnknownKind { api_version, kind });
    };
    let mut obj = Map::new();
    obj.insert("apiVersion".into(), Value::String(api_version));
    obj.insert("kind".into(), Value::String(kind));
    decode_fields(root, raw.unwrap_or(&[]), "", 1, &mut obj)?;
    Ok(Value::Object(obj))
}

const WIRE_VARINT: u8 = 0;
const WIRE_FIXED64: u8 = 1;
const WIRE_LEN: u8 = 2;
const WIRE_FIXED32: u8 = 5;

/// A cursor over one message's bytes.
struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
    /// The JSON path of the message, for errors.
    path: &'a str,
}

impl<'a> Reader<'a> {
    fn new(buf: &'a [u8], path: &'a str) -> Self {
        Reader { buf, pos: 0, path }
    }

    fn err(&self, m: impl std::fmt::Display) -> DecodeError {
        malformed(
            self.path,
            format!("{m} (byte {} of {})", self.pos, self.buf.len()),
        )
    }

    fn varint(&mut self) -> Result<u64, DecodeError> {
        let mut v = 0u64;
        for i in 0..10 {
            let Some(&b) = self.buf.get(self.pos) else {
                return Err(self.err("truncated varint"));
            };
            self.pos += 1;
            v |= u64::from(b & 0x7f) << (7 * i);
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(self.err("varint longer than 10 bytes"))
    }

    /// The next field key, or None at the end of the message.
    fn key(&mut self) -> Result<Option<(u32, u8)>, DecodeError> {
        if self.pos == self.buf.len() {
            return Ok(None);
        }
        let k = self.varint()?;
        let tag = k >> 3;
        if tag == 0 || tag > u64::from(u32::MAX >> 3) {
            return Err(self.err(format!("invalid field number {tag}")));
        }
        Ok(Some((tag as u32, (k & 7) as u8)))
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if n > self.buf.len() - self.pos {
            return Err(self.err(format!(
                "a field of {n} bytes runs past the end of the message"
            )));
        }
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    fn bytes(&mut self) -> Result<&'a [u8], DecodeError> {
        let n = self.varint()?;
        let n = usize::try_from(n).map_err(|_| self.err("length overflows"))?;
        self.take(n)
    }

    fn string(&mut self) -> Result<String, DecodeError> {
        let b = self.bytes()?;
        String::from_utf8(b.to_vec()).map_err(|_| self.err("a string field is not valid UTF-8"))
    }

    fn skip(&mut self, wire: u8) -> Result<(), DecodeError> {
        match wire {
            WIRE_VARINT => self.varint().map(drop),
            WIRE_FIXED64 => self.take(8).map(drop),
            WIRE_LEN => self.bytes().map(drop),
            WIRE_FIXED32 => self.take(4).map(drop),
            other => Err(self.err(format!("unsupported wire type {other}"))),
        }
    }
}

fn child_path(parent: &str, name: &str) -> String {
    if parent.is_empty() {
        name.to_string()
    } else {
        format!("{parent}.{name}")
    }
}

fn wire_of(ty: Ty) -> u8 {
    match ty {
        Ty::Str | Ty::Bytes | Ty::Message(_) => WIRE_LEN,
        Ty::I32 | Ty::I64 | Ty::Bool => WIRE_VARINT,
    }
}

/// Decodes the fields of message `idx` from `buf` into `out` (the JSON object of the
/// message, or of the message embedding it for [`Label::Inline`]).
fn decode_fields(
    idx: usize,
    buf: &[u8],
    path: &str,
    depth: usize,
    out: &mut Map<String, Value>,
) -> Result<(), DecodeError> {
    if depth > MAX_DEPTH {
        return Err(malformed(
            path,
            format!("messages nest deeper than {MAX_DEPTH}"),
        ));
    }
    let msg = &schema::MESSAGES[idx];
    let mut r = Reader::new(buf, path);
    while let Some((tag, wire)) = r.key()? {
        let Ok(i) = msg.fields.binary_search_by_key(&tag, |f| f.tag) else {
            // Upstream's generated Unmarshal skips unknown fields too.
            r.skip(wire)?;
            continue;
        };
        let f = &msg.fields[i];
        let fpath = child_path(path, f.json);
        let want = wire_of(f.ty);
        let packed = f.label == Label::Repeated && wire == WIRE_LEN && want != WIRE_LEN;
        if wire != want && !packed && !(f.label == Label::Map && wire == WIRE_LEN) {
            return Err(malformed(
                &fpath,
                format!(
                    "field {tag} of {} has wire type {wire}, expected {want}",
                    msg.name
                ),
            ));
        }
        match f.label {
            Label::Inline => {
                let Ty::Message(m) = f.ty else {
                    unreachable!("the generator emits Inline only for messages")
                };
                let b = r.bytes()?;
                decode_fields(m, b, path, depth + 1, out)?;
            }
            Label::Optional | Label::Pointer => {
                let v = read_value(&mut r, f.ty, &fpath, depth)?;
                if f.label == Label::Optional && is_zero_scalar(f.ty, &v) {
                    out.remove(f.json);
                } else {
                    out.insert(f.json.to_string(), v);
                }
            }
            Label::Repeated => {
                let items = match out
                    .entry(f.json.to_string())
                    .or_insert_with(|| Value::Array(Vec::new()))
                {
                    Value::Array(a) => a,
                    other => {
                        *other = Value::Array(Vec::new());
                        other.as_array_mut().expect("just set")
                    }
                };
                // Errors inside an element name it: `spec.containers[1].ports[0]`.
                if packed {
                    let b = r.bytes()?;
                    let mut p = Reader::new(b, &fpath);
                    while p.pos < b.len() {
                        let epath = format!("{fpath}[{}]", items.len());
                        items.push(read_value(&mut p, f.ty, &epath, depth)?);
                    }
                } else {
                    let epath = format!("{fpath}[{}]", items.len());
                    items.push(read_value(&mut r, f.ty, &epath, depth)?);
                }
            }
            Label::Map => {
                let b = r.bytes()?;
                let mut e = Reader::new(b, &fpath);
                let (mut key, mut value) = (String::new(), None);
                while let Some((tag, wire)) = e.key()? {
                    match tag {
                        1 if wire == WIRE_LEN => key = e.string()?,
                        2 if wire == want => {
                            value = Some(read_value(
                                &mut e,
                                f.ty,
                                &child_path(&fpath, "value"),
                                depth,
                            )?)
                        }
                        1 | 2 => {
                            return Err(e.err(format!("map entry field {tag} has wire type {wire}")))
                        }
                        _ => e.skip(wire)?,
                    }
                }
                let value = match value {
                    Some(v) => v,
                    // An absent value is the type's zero value.
                    None => zero_value(f.ty, &fpath, depth)?,
                };
                match out
                    .entry(f.json.to_string())
                    .or_insert_with(|| Value::Object(Map::new()))
                {
                    Value::Object(m) => {
                        m.insert(key, value);
                    }
                    other => *other = Value::Object(Map::from_iter([(key, value)])),
                }
            }
        }
    }
    Ok(())
}

fn is_zero_scalar(ty: Ty, v: &Value) -> bool {
    match ty {
        Ty::Str => v.as_str() == Some(""),
        Ty::I32 | Ty::I64 => v.as_i64() == Some(0),
        Ty::Bool => v.as_bool() == Some(false),
        // Go's []byte: present on the wire means non-nil. Messages are always written.
        Ty::Bytes | Ty::Message(_) => false,
    }
}

fn zero_value(ty: Ty, path: &str, depth: usize) -> Result<Value, DecodeError> {
    Ok(match ty {
        Ty::Str | Ty::Bytes => Value::String(String::new()),
        Ty::I32 | Ty::I64 => Value::from(0),
        Ty::Bool => Value::Bool(false),
        Ty::Message(m) => message_value(m, &[], path, depth)?,
    })
}

fn read_value(r: &mut Reader, ty: Ty, path: &str, depth: usize) -> Result<Value, DecodeError> {
    Ok(match ty {
        Ty::Str => {
            let b = r.bytes()?;
            Value::String(
                String::from_utf8(b.to_vec())
                    .map_err(|_| malformed(path, "the string is not valid UTF-8"))?,
            )
        }
        Ty::Bytes => Value::String(base64::engine::general_purpose::STANDARD.encode(r.bytes()?)),
        // int32 is sign-extended to 64 bits on the wire.
        Ty::I32 => Value::from(r.varint()? as i64 as i32),
        Ty::I64 => Value::from(r.varint()? as i64),
        Ty::Bool => Value::Bool(r.varint()? != 0),
        Ty::Message(m) => {
            let b = r.bytes()?;
            message_value(m, b, path, depth)?
        }
    })
}

/// The JSON value of one message.
fn message_value(idx: usize, buf: &[u8], path: &str, depth: usize) -> Result<Value, DecodeError> {
    let msg = &schema::MESSAGES[idx];
    let Some(special) = msg.special else {
        let mut obj = Map::new();
        decode_fields(idx, buf, path, depth + 1, &mut obj)?;
        return Ok(Value::Object(obj));
    };
    // The special messages' own fields, by tag: (varints, length-delimited).
    let mut ints: [Option<u64>; 4] = [None; 4];
    let mut lens: [Option<&[u8]>; 4] = [None; 4];
    let mut r = Reader::new(buf, path);
    while let Some((tag, wire)) = r.key()? {
        match (tag, wire) {
            (1..=3, WIRE_VARINT) => ints[tag as usize] = Some(r.varint()?),
            (1..=3, WIRE_LEN) => lens[tag as usize] = Some(r.bytes()?),
            _ => r.skip(wire)?,
        }
    }
    let text = |b: Option<&[u8]>| -> Result<String, DecodeError> {
        String::from_utf8(b.unwrap_or_default().to_vec())
            .map_err(|_| malformed(path, format!("{} is not valid UTF-8", msg.name)))
    };
    Ok(match special {
        Special::IntOrString => match ints[1].unwrap_or(0) {
            0 => Value::from(ints[2].unwrap_or(0) as i64 as i32),
            1 => Value::String(text(lens[3])?),
            t => {
                return Err(malformed(
                    path,
                    format!("IntOrString has type {t}, expected 0 (int) or 1 (string)"),
                ))
            }
        },
        Special::Quantity => Value::String(text(lens[1])?),
        Special::Time | Special::MicroTime => {
            // metav1.Time's Unmarshal: no bytes is the zero time, whose JSON is null.
            if buf.is_empty() {
                return Ok(Value::Null);
            }
            let secs = ints[1].unwrap_or(0) as i64;
            let nanos = ints[2].unwrap_or(0) as i64;
            if !(0..1_000_000_000).contains(&nanos) {
                return Err(malformed(
                    path,
                    format!("timestamp nanos {nanos} out of range"),
                ));
            }
            let s = crate::util::rfc3339(secs);
            if special == Special::Time {
                Value::String(s)
            } else {
                // RFC3339Micro, UTC: "2006-01-02T15:04:05.000000Z".
                let micros = nanos / 1000;
                Value::String(format!("{}.{micros:06}Z", s.trim_end_matches('Z')))
            }
        }
        Special::FieldsV1 => {
            let raw = lens[1].unwrap_or_default();
            serde_json::from_slice(raw)
                .map_err(|e| malformed(path, format!("FieldsV1 is not JSON: {e}")))?
        }
    })
}

#[cfg(test)]
mod tests;
