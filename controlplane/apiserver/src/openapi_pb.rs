//! `/openapi/v2` as protobuf: the Swagger 2.0 document encoded as gnostic's
//! `openapi.v2.Document` (`github.com/google/gnostic/openapiv2/OpenAPIv2.proto`), the form
//! kube-apiserver serves for `Accept: application/com.github.proto-openapi.spec.v2@v1.0+protobuf`.
//! kubectl 1.27 and 1.28 ask only for that (their `apply` validation loads it).
//!
//! The encoder covers what [`crate::openapi`]'s Swagger document holds: definitions with
//! `$ref`, `type`, `format`, `title`, `description`, `required`, `items`, `properties`,
//! `additionalProperties`, `allOf` (a lone `allOf` reference becomes `$ref`) and `x-`
//! extensions; paths with operations, query and
//! body parameters, responses and `x-kubernetes-*` extensions. Any other keyword is
//! dropped (none occurs). gnostic carries extension values as YAML text (`Any.yaml`), and
//! JSON is YAML.

use serde_json::{Map, Value};

/// The media type kube-apiserver answers with (clients ask with `@v1.0`, the response
/// says `.v1.0`).
pub const MEDIA_TYPE: &str = "application/com.github.proto-openapi.spec.v2.v1.0+protobuf";

/// Whether an Accept header asks for the protobuf document.
pub fn wants_protobuf(accept: &str) -> bool {
    accept.split(',').any(|a| {
        let a = a.split(';').next().unwrap_or("").trim();
        a == "application/com.github.proto-openapi.spec.v2@v1.0+protobuf" || a == MEDIA_TYPE
    })
}

/// A protobuf message being written.
#[derive(Default)]
struct W(Vec<u8>);

impl W {
    fn varint(&mut self, mut v: u64) {
        loop {
            let b = (v & 0x7f) as u8;
            v >>= 7;
            if v == 0 {
                self.0.push(b);
                return;
            }
            self.0.push(b | 0x80);
        }
    }

    fn bytes(&mut self, tag: u64, b: &[u8]) {
        self.varint(tag << 3 | 2);
        self.varint(b.len() as u64);
        self.0.extend_from_slice(b);
    }

    /// A proto3 string: the empty string is not written.
    fn string(&mut self, tag: u64, s: &str) {
        if !s.is_empty() {
            self.bytes(tag, s.as_bytes());
        }
    }

    fn message(&mut self, tag: u64, m: W) {
        self.bytes(tag, &m.0);
    }

    fn boolean(&mut self, tag: u64, b: bool) {
        if b {
            self.varint(tag << 3);
            self.varint(1);
        }
    }
}

fn s<'a>(v: &'a Value, k: &str) -> &'a str {
    v.get(k).and_then(Value::as_str).unwrap_or("")
}

fn strings<'a>(v: &'a Value, k: &str) -> impl Iterator<Item = &'a str> {
    v.get(k)
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
}

/// `Any { yaml = 2 }`.
fn any(v: &Value) -> W {
    let mut w = W::default();
    w.string(2, &v.to_string());
    w
}

/// `repeated NamedAny vendor_extension = tag` for the object's `x-` keys.
fn extensions(w: &mut W, tag: u64, obj: &Map<String, Value>) {
    for (k, v) in obj.iter().filter(|(k, _)| k.starts_with("x-")) {
        let mut named = W::default();
        named.string(1, k);
        named.message(2, any(v));
        w.message(tag, named);
    }
}

/// `openapi.v2.Schema`.
fn schema(v: &Value) -> W {
    let mut w = W::default();
    let Some(obj) = v.as_object() else {
        return w;
    };
    // `allOf: [{$ref}]` (how the v3 schemas attach a description to a reference) is a
    // plain `$ref` in upstream's Swagger document: kube-openapi's proto models do not
    // follow allOf, and kubectl's strategic-merge patcher dereferences nil without it.
    let all_of: &[Value] = obj
        .get("allOf")
        .and_then(Value::as_array)
        .map_or(&[], Vec::as_slice);
    let single_ref = match all_of {
        [only] if obj.get("$ref").is_none() => only.get("$ref").and_then(Value::as_str),
        _ => None,
    };
    w.string(1, single_ref.unwrap_or(s(v, "$ref")));
    w.string(2, s(v, "format"));
    w.string(3, s(v, "title"));
    w.string(4, s(v, "description"));
    for r in strings(v, "required") {
        w.string(19, r);
    }
    match obj.get("additionalProperties") {
        Some(Value::Bool(b)) => {
            // AdditionalPropertiesItem { bool boolean = 2 } (a oneof: written even if false).
            let mut item = W::default();
            item.varint(2 << 3);
            item.varint(u64::from(*b));
            w.message(21, item);
        }
        Some(ap @ Value::Object(_)) => {
            let mut item = W::default();
            item.message(1, schema(ap));
            w.message(21, item);
        }
        _ => {}
    }
    if let Some(t) = obj.get("type").and_then(Value::as_str) {
        let mut ti = W::default();
        ti.string(1, t);
        w.message(22, ti);
    }
    if let Some(items) = obj.get("items").filter(|i| i.is_object()) {
        let mut ii = W::default();
        ii.message(1, schema(items));
        w.message(23, ii);
    }
    if single_ref.is_none() {
        for a in all_of {
            w.message(24, schema(a));
        }
    }
    if let Some(props) = obj.get("properties").and_then(Value::as_object) {
        let mut p = W::default();
        for (name, ps) in props {
            let mut named = W::default();
            named.string(1, name);
            named.message(2, schema(ps));
            p.message(1, named);
        }
        w.message(25, p);
    }
    extensions(&mut w, 31, obj);
    w
}

/// `openapi.v2.ParametersItem` for a query or body parameter.
fn parameter(p: &Value) -> W {
    let mut param = W::default();
    if s(p, "in") == "body" {
        let mut b = W::default();
        b.string(1, s(p, "description"));
        b.string(2, s(p, "name"));
        b.string(3, "body");
        b.boolean(4, p["required"].as_bool().unwrap_or(false));
        if let Some(sc) = p.get("schema") {
            b.message(5, schema(sc));
        }
        param.message(1, b);
    } else {
        let mut q = W::default();
        q.boolean(1, p["required"].as_bool().unwrap_or(false));
        q.string(2, s(p, "in"));
        q.string(3, s(p, "description"));
        q.string(4, s(p, "name"));
        q.string(6, s(p, "type"));
        q.boolean(20, p["uniqueItems"].as_bool().unwrap_or(false));
        // NonBodyParameter { QueryParameterSubSchema query_parameter_sub_schema = 3 }.
        let mut nb = W::default();
        nb.message(3, q);
        param.message(2, nb);
    }
    let mut item = W::default();
    item.message(1, param);
    item
}

/// `openapi.v2.Operation`.
fn operation(op: &Value) -> W {
    let mut w = W::default();
    w.string(3, s(op, "description"));
    w.string(5, s(op, "operationId"));
    for c in strings(op, "produces") {
        w.string(6, c);
    }
    for c in strings(op, "consumes") {
        w.string(7, c);
    }
    for p in op["parameters"].as_array().into_iter().flatten() {
        w.message(8, parameter(p));
    }
    if let Some(responses) = op["responses"].as_object() {
        let mut rs = W::default();
        for (code, r) in responses {
            let mut resp = W::default();
            resp.string(1, s(r, "description"));
            if let Some(sc) = r.get("schema") {
                let mut item = W::default();
                item.message(1, schema(sc));
                resp.message(2, item);
            }
            let mut value = W::default();
            value.message(1, resp);
            let mut named = W::default();
            named.string(1, code);
            named.message(2, value);
            rs.message(1, named);
        }
        w.message(9, rs);
    }
    if let Some(obj) = op.as_object() {
        extensions(&mut w, 13, obj);
    }
    w
}

/// The Swagger document as `openapi.v2.Document` bytes.
pub fn encode(doc: &Value) -> Vec<u8> {
    let mut w = W::default();
    w.string(1, s(doc, "swagger"));
    let mut info = W::default();
    info.string(1, s(&doc["info"], "title"));
    info.string(2, s(&doc["info"], "version"));
    w.message(2, info);
    let mut paths = W::default();
    for (path, item) in doc["paths"].as_object().into_iter().flatten() {
        let mut pi = W::default();
        for (tag, method) in [
            (2, "get"),
            (3, "put"),
            (4, "post"),
            (5, "delete"),
            (6, "options"),
            (7, "head"),
            (8, "patch"),
        ] {
            if let Some(op) = item.get(method) {
                pi.message(tag, operation(op));
            }
        }
        let mut named = W::default();
        named.string(1, path);
        named.message(2, pi);
        paths.message(2, named);
    }
    w.message(8, paths);
    let mut defs = W::default();
    for (name, sc) in doc["definitions"].as_object().into_iter().flatten() {
        let mut named = W::default();
        named.string(1, name);
        named.message(2, schema(sc));
        defs.message(1, named);
    }
    w.message(9, defs);
    w.0
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn accept_header_forms() {
        assert!(wants_protobuf(
            "application/com.github.proto-openapi.spec.v2@v1.0+protobuf"
        ));
        assert!(wants_protobuf(
            "application/json;q=0.9, application/com.github.proto-openapi.spec.v2.v1.0+protobuf"
        ));
        assert!(!wants_protobuf("application/json"));
    }

    /// `key` bytes, then `body`'s length as a varint, then `body` (independent of `W`).
    fn field(key: &[u8], body: &[u8]) -> Vec<u8> {
        let mut out = key.to_vec();
        let mut n = body.len();
        while n >= 0x80 {
            out.push((n as u8 & 0x7f) | 0x80);
            n >>= 7;
        }
        out.push(n as u8);
        out.extend_from_slice(body);
        out
    }

    #[test]
    fn encodes_a_small_document_byte_for_byte() {
        let doc = json!({
            "swagger": "2.0",
            "info": {"title": "K", "version": "v1"},
            "paths": {},
            "definitions": {
                "a.B": {
                    "type": "object",
                    "required": ["x"],
                    "properties": {"x": {"$ref": "#/definitions/c"}},
                    "x-kubernetes-group-version-kind": [{"group": "", "kind": "B", "version": "v1"}],
                }
            },
        });
        // Keys: (tag << 3 | 2) as a varint: 19 → 9a 01, 22 → b2 01, 25 → ca 01, 31 → fa 01.
        let prop = [
            field(&[0x0a], b"x"),
            field(&[0x12], &field(&[0x0a], b"#/definitions/c")),
        ]
        .concat();
        let ext = [
            field(&[0x0a], b"x-kubernetes-group-version-kind"),
            field(
                &[0x12],
                &field(&[0x12], br#"[{"group":"","kind":"B","version":"v1"}]"#),
            ),
        ]
        .concat();
        let schema = [
            field(&[0x9a, 0x01], b"x"),
            field(&[0xb2, 0x01], &field(&[0x0a], b"object")),
            field(&[0xca, 0x01], &field(&[0x0a], &prop)),
            field(&[0xfa, 0x01], &ext),
        ]
        .concat();
        let named = [field(&[0x0a], b"a.B"), field(&[0x12], &schema)].concat();
        let want = [
            field(&[0x0a], b"2.0"),
            field(
                &[0x12],
                &[field(&[0x0a], b"K"), field(&[0x12], b"v1")].concat(),
            ),
            field(&[0x42], &[]),
            field(&[0x4a], &field(&[0x0a], &named)),
        ]
        .concat();
        assert_eq!(encode(&doc), want);
    }
}
