//! `/openapi/v3` (index and one document per group/version), built from k8s-openapi's
//! schemars schemas (the same ones skiff-api's fieldValidation walks).
//!
//! What clients need from these documents:
//! * kubectl ≥ 1.27 decides whether the server validates fields itself (`--validate=strict`
//!   then sends `fieldValidation=Strict` instead of validating client-side) by finding a
//!   PATCH operation carrying the kind's `x-kubernetes-group-version-kind` with a
//!   `fieldValidation` query parameter;
//! * `kubectl explain` finds the schema whose `x-kubernetes-group-version-kind` is the kind
//!   and renders its properties, following `$ref`s into `components/schemas`.
//!
//! `/openapi/v2` is the same schemas as Swagger 2.0, in JSON or (for kubectl ≤ 1.28, which
//! asks for nothing else) gnostic's protobuf ([`crate::openapi_pb`]).

use std::collections::BTreeMap;
use std::sync::OnceLock;

use axum::response::Response;
use serde_json::{json, Map, Value};
use skiff_api::patch::schema::{child, list_strategy, root, ListStrategy, Ty};
use skiff_api::resources::{self, ResourceInfo};
use skiff_api::status::{self as st, StatusError};
use skiff_api::unknown_fields::schema_for_kind;

use crate::api::{json_response, Ctx};

fn gv_path(group: &str, version: &str) -> String {
    if group.is_empty() {
        format!("api/{version}")
    } else {
        format!("apis/{group}/{version}")
    }
}

fn group_versions() -> Vec<(&'static str, &'static str)> {
    let mut out: Vec<(&str, &str)> = Vec::new();
    for r in resources::RESOURCES {
        if !out.contains(&(r.group, r.version)) {
            out.push((r.group, r.version));
        }
    }
    out
}

/// The schema-name prefix upstream uses for a group's types.
fn schema_prefix(r: &ResourceInfo) -> String {
    let g = match r.group {
        "" => "core",
        "coordination.k8s.io" => "coordination",
        "discovery.k8s.io" => "discovery",
        "rbac.authorization.k8s.io" => "rbac",
        g => g,
    };
    format!("io.k8s.api.{g}.{}", r.version)
}

/// Rewrites a schemars (JSON Schema 2020-12) schema into the OpenAPI 3.0 subset kube-openapi
/// reads: `$defs` refs point into `components/schemas`, nullable unions collapse to their
/// non-null member, `type` arrays to their non-null type.
fn normalize(v: &Value) -> Value {
    match v {
        Value::Object(m) => {
            let mut out = Map::new();
            for (k, val) in m {
                match k.as_str() {
                    "$schema" | "$defs" => {}
                    "$ref" => {
                        let r = val.as_str().unwrap_or("");
                        let name = r.strip_prefix("#/$defs/").unwrap_or(r);
                        out.insert(k.clone(), json!(format!("#/components/schemas/{name}")));
                    }
                    "type" => {
                        if let Some(arr) = val.as_array() {
                            if let Some(t) = arr.iter().find(|t| t.as_str() != Some("null")) {
                                out.insert(k.clone(), t.clone());
                            }
                        } else {
                            out.insert(k.clone(), val.clone());
                        }
                    }
                    "anyOf" | "oneOf" => {
                        let members: Vec<&Value> = val
                            .as_array()
                            .map(|a| {
                                a.iter()
                                    .filter(|s| {
                                        s.get("type").and_then(Value::as_str) != Some("null")
                                    })
                                    .collect()
                            })
                            .unwrap_or_default();
                        if members.len() == 1 {
                            if let Value::Object(inner) = normalize(members[0]) {
                                for (ik, iv) in inner {
                                    out.entry(ik).or_insert(iv);
                                }
                            }
                        } else {
                            out.insert(
                                k.clone(),
                                Value::Array(members.into_iter().map(normalize).collect()),
                            );
                        }
                    }
                    _ => {
                        out.insert(k.clone(), normalize(val));
                    }
                }
            }
            // OpenAPI 3.0 has no sibling keywords next to $ref; wrap in allOf like upstream.
            if out.contains_key("$ref") && out.len() > 1 {
                let r = out.remove("$ref").unwrap_or(Value::Null);
                out.insert("allOf".into(), json!([{"$ref": r}]));
            }
            Value::Object(out)
        }
        Value::Array(a) => Value::Array(a.iter().map(normalize).collect()),
        other => other.clone(),
    }
}

fn ref_name(v: &Value) -> Option<String> {
    let r = v
        .get("$ref")
        .or_else(|| v.pointer("/allOf/0/$ref"))
        .and_then(Value::as_str)?;
    r.strip_prefix("#/components/schemas/").map(str::to_string)
}

/// Adds upstream's `x-kubernetes-patch-strategy` / `x-kubernetes-patch-merge-key` to list
/// properties, from skiff-api's patch metadata. kubectl computes `kubectl apply`'s
/// strategic merge patch from these: without them it treats every list as atomic and
/// sends whole lists, which the server (knowing e.g. that Service ports merge by `port`)
/// would merge instead of replace.
fn annotate(
    schemas: &mut BTreeMap<String, Value>,
    name: &str,
    ty: Ty,
    seen: &mut Vec<(String, Ty)>,
) {
    if seen.iter().any(|(n, t)| n == name && *t == ty) {
        return;
    }
    seen.push((name.to_string(), ty));
    let Some(props) = schemas
        .get(name)
        .and_then(|s| s.get("properties"))
        .and_then(Value::as_object)
        .cloned()
    else {
        return;
    };
    for (prop, ps) in props {
        let is_array = ps.get("type").and_then(Value::as_str) == Some("array");
        let target = if is_array {
            ps.get("items").and_then(ref_name)
        } else {
            ref_name(&ps)
        };
        if is_array {
            let ext = match list_strategy(ty, &prop) {
                ListStrategy::Atomic => None,
                ListStrategy::MergeByKey(k) => Some(
                    json!({"x-kubernetes-patch-strategy": "merge", "x-kubernetes-patch-merge-key": k}),
                ),
                ListStrategy::MergePrimitives => {
                    Some(json!({"x-kubernetes-patch-strategy": "merge"}))
                }
            };
            if let (Some(Value::Object(ext)), Some(node)) = (
                ext,
                schemas
                    .get_mut(name)
                    .and_then(|s| s.pointer_mut(&format!("/properties/{prop}")))
                    .and_then(Value::as_object_mut),
            ) {
                node.extend(ext);
            }
        }
        if let Some(t) = target {
            annotate(schemas, &t, child(ty, &prop), seen);
        }
    }
}

fn query_param(name: &str, description: &str) -> Value {
    json!({"name": name, "in": "query", "description": description, "schema": {"type": "string", "uniqueItems": true}})
}

fn operation(r: &ResourceInfo, action: &str, verb_id: &str, schema_ref: &str, body: bool) -> Value {
    let mut op = json!({
        "operationId": format!("{verb_id}{}", r.kind),
        "x-kubernetes-action": action,
        "x-kubernetes-group-version-kind": {"group": r.group, "version": r.version, "kind": r.kind},
        "responses": {"200": {"description": "OK", "content": {"application/json": {"schema": {"$ref": schema_ref}}}}},
    });
    let mut params = vec![query_param(
        "dryRun",
        "When present, indicates that modifications should not be persisted.",
    )];
    if matches!(action, "post" | "put" | "patch") {
        params.push(query_param("fieldManager", "fieldManager is a name associated with the actor or entity that is making these changes."));
        params.push(query_param("fieldValidation", "fieldValidation instructs the server on how to handle objects in the request containing unknown or duplicate fields: Ignore, Warn or Strict."));
    }
    if action == "patch" {
        params.push(query_param(
            "force",
            "Force is going to \"force\" Apply requests.",
        ));
    }
    op["parameters"] = Value::Array(params);
    if body {
        let content = if action == "patch" {
            json!({
                "application/json-patch+json": {"schema": {"type": "object"}},
                "application/merge-patch+json": {"schema": {"type": "object"}},
                "application/strategic-merge-patch+json": {"schema": {"type": "object"}},
                "application/apply-patch+yaml": {"schema": {"type": "object"}},
            })
        } else {
            json!({"application/json": {"schema": {"$ref": schema_ref}}})
        };
        op["requestBody"] = json!({"content": content, "required": true});
    }
    op
}

fn gv_document(group: &str, version: &str) -> Value {
    let mut schemas = BTreeMap::new();
    let mut paths = Map::new();
    for r in resources::resources_in(group, version) {
        let Some(schema) = schema_for_kind(r.kind) else {
            continue;
        };
        let name = format!("{}.{}", schema_prefix(r), r.kind);
        if let Some(defs) = schema.get("$defs").and_then(Value::as_object) {
            for (k, v) in defs {
                schemas.entry(k.clone()).or_insert_with(|| normalize(v));
            }
        }
        let mut top = normalize(schema);
        top["x-kubernetes-group-version-kind"] =
            json!([{"group": r.group, "version": r.version, "kind": r.kind}]);
        schemas.insert(name.clone(), top);
        annotate(&mut schemas, &name, root(r.kind), &mut Vec::new());
        let schema_ref = format!("#/components/schemas/{name}");
        let base = if r.group.is_empty() {
            format!("/api/{version}")
        } else {
            format!("/apis/{group}/{version}")
        };
        let coll = if r.namespaced {
            format!("{base}/namespaces/{{namespace}}/{}", r.plural)
        } else {
            format!("{base}/{}", r.plural)
        };
        paths.insert(
            coll.clone(),
            json!({
                "get": operation(r, "list", "list", &schema_ref, false),
                "post": operation(r, "post", "create", &schema_ref, true),
            }),
        );
        paths.insert(
            format!("{coll}/{{name}}"),
            json!({
                "get": operation(r, "get", "read", &schema_ref, false),
                "put": operation(r, "put", "replace", &schema_ref, true),
                "patch": operation(r, "patch", "patch", &schema_ref, true),
                "delete": operation(r, "delete", "delete", &schema_ref, false),
            }),
        );
    }
    json!({
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes", "version": format!("v1.{}.0", crate::api::KUBE_MINOR)},
        "paths": paths,
        "components": {"schemas": schemas},
    })
}

/// Per group/version: the document and its hash (for `?hash=` cache busting).
fn documents() -> &'static BTreeMap<String, (Value, String)> {
    static DOCS: OnceLock<BTreeMap<String, (Value, String)>> = OnceLock::new();
    DOCS.get_or_init(|| {
        group_versions()
            .into_iter()
            .map(|(g, v)| {
                let doc = gv_document(g, v);
                let bytes = serde_json::to_vec(&doc).unwrap_or_default();
                // FNV-1a: a stable content hash; only used to bust client caches.
                let mut h: u64 = 0xcbf29ce484222325;
                for b in &bytes {
                    h ^= *b as u64;
                    h = h.wrapping_mul(0x100000001b3);
                }
                (gv_path(g, v), (doc, format!("{h:016X}")))
            })
            .collect()
    })
}

/// Swagger 2.0 (`/openapi/v2`, JSON) from the same schemas and operations.
fn swagger_v2() -> &'static Value {
    static DOC: OnceLock<Value> = OnceLock::new();
    DOC.get_or_init(|| {
        let mut definitions = Map::new();
        let mut paths = Map::new();
        for (doc, _) in documents().values() {
            let text = serde_json::to_string(doc)
                .unwrap_or_default()
                .replace("#/components/schemas/", "#/definitions/");
            let doc: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
            if let Some(schemas) = doc.pointer("/components/schemas").and_then(Value::as_object) {
                for (k, v) in schemas {
                    definitions.entry(k.clone()).or_insert_with(|| v.clone());
                }
            }
            for (path, ops) in doc["paths"].as_object().into_iter().flatten() {
                let mut out = Map::new();
                for (method, op) in ops.as_object().into_iter().flatten() {
                    let mut op = op.clone();
                    let schema_ref = op
                        .pointer("/responses/200/content/application~1json/schema")
                        .cloned()
                        .unwrap_or(json!({}));
                    let mut params: Vec<Value> = op["parameters"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .map(|p| json!({"name": p["name"], "in": "query", "type": "string", "uniqueItems": true, "description": p["description"]}))
                        .collect();
                    if let Some(m) = op.as_object_mut() {
                        if m.remove("requestBody").is_some() {
                            let schema = if method == "patch" { json!({"type": "object"}) } else { schema_ref.clone() };
                            params.push(json!({"name": "body", "in": "body", "required": true, "schema": schema}));
                        }
                        m.insert("parameters".into(), Value::Array(params));
                        m.insert("responses".into(), json!({"200": {"description": "OK", "schema": schema_ref}}));
                        if method == "patch" {
                            m.insert("consumes".into(), json!(["application/json-patch+json", "application/merge-patch+json", "application/strategic-merge-patch+json", "application/apply-patch+yaml"]));
                        }
                    }
                    out.insert(method.clone(), op);
                }
                paths.insert(path.clone(), Value::Object(out));
            }
        }
        json!({
            "swagger": "2.0",
            "info": {"title": "Kubernetes", "version": format!("v1.{}.0", crate::api::KUBE_MINOR)},
            "paths": paths,
            "definitions": definitions,
        })
    })
}

pub(crate) fn serve(path: &str, ctx: &Ctx) -> Result<Response, StatusError> {
    if path == "/openapi/v2" {
        let accept = ctx.accept.as_str();
        if crate::openapi_pb::wants_protobuf(accept) {
            // kubectl <= 1.28 asks for protobuf alone.
            static PB: OnceLock<bytes::Bytes> = OnceLock::new();
            let pb = PB.get_or_init(|| crate::openapi_pb::encode(swagger_v2()).into());
            let mut r = Response::new(axum::body::Body::from(pb.clone()));
            r.headers_mut().insert(
                axum::http::header::CONTENT_TYPE,
                axum::http::HeaderValue::from_static(crate::openapi_pb::MEDIA_TYPE),
            );
            return Ok(r);
        }
        if accept.is_empty() || accept.contains("application/json") || accept.contains("*/*") {
            return Ok(json_response(200, swagger_v2()));
        }
        return Err(st::not_acceptable(&[
            "application/json",
            crate::openapi_pb::MEDIA_TYPE,
        ]));
    }
    let not_found = || {
        let mut e = st::bad_request(format!(
            "the server could not find the requested resource ({path})"
        ));
        e.code = 404;
        e.body["code"] = json!(404);
        e.body["reason"] = json!("NotFound");
        e
    };
    if path == "/openapi/v3" || path == "/openapi/v3/" {
        let paths: Map<String, Value> = documents()
            .iter()
            .map(|(p, (_, h))| {
                (
                    p.clone(),
                    json!({"serverRelativeURL": format!("/openapi/v3/{p}?hash={h}")}),
                )
            })
            .collect();
        return Ok(json_response(200, &json!({"paths": paths})));
    }
    let rest = path.strip_prefix("/openapi/v3/").ok_or_else(not_found)?;
    let (doc, _) = documents().get(rest).ok_or_else(not_found)?;
    Ok(json_response(200, doc))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn find_refs(v: &Value, out: &mut Vec<String>) {
        match v {
            Value::Object(m) => {
                if let Some(r) = m.get("$ref").and_then(Value::as_str) {
                    out.push(r.to_string());
                }
                m.values().for_each(|x| find_refs(x, out));
            }
            Value::Array(a) => a.iter().for_each(|x| find_refs(x, out)),
            _ => {}
        }
    }

    #[test]
    fn swagger_v2_refs_resolve() {
        let doc = swagger_v2();
        let defs = doc["definitions"].as_object().unwrap();
        let mut refs = Vec::new();
        find_refs(doc, &mut refs);
        assert!(refs.len() > 100);
        for r in refs {
            let name = r
                .strip_prefix("#/definitions/")
                .unwrap_or_else(|| panic!("{r}"));
            assert!(defs.contains_key(name), "dangling {r}");
        }
        let patch =
            &doc["paths"]["/apis/apps/v1/namespaces/{namespace}/deployments/{name}"]["patch"];
        assert_eq!(
            patch["x-kubernetes-group-version-kind"]["kind"],
            "Deployment"
        );
        assert!(patch["parameters"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["in"] == "body"));
    }

    #[test]
    fn every_ref_resolves_and_patch_declares_field_validation() {
        for (p, (doc, _)) in documents() {
            let schemas = doc["components"]["schemas"].as_object().unwrap();
            let mut refs = Vec::new();
            find_refs(doc, &mut refs);
            assert!(!refs.is_empty(), "{p}");
            for r in refs {
                let name = r
                    .strip_prefix("#/components/schemas/")
                    .unwrap_or_else(|| panic!("{p}: {r}"));
                assert!(schemas.contains_key(name), "{p}: dangling {r}");
            }
            let text = serde_json::to_string(doc).unwrap();
            assert!(!text.contains("\"null\""), "{p} still has null types");
        }
        let (core, _) = &documents()["api/v1"];
        let patch = &core["paths"]["/api/v1/namespaces/{namespace}/services/{name}"]["patch"];
        assert_eq!(patch["x-kubernetes-group-version-kind"]["kind"], "Service");
        assert!(patch["parameters"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["name"] == "fieldValidation"));
        let svc = &core["components"]["schemas"]["io.k8s.api.core.v1.Service"];
        assert_eq!(svc["x-kubernetes-group-version-kind"][0]["kind"], "Service");
        assert!(svc["properties"]["spec"].is_object());
        let spec = ref_name(&svc["properties"]["spec"]).unwrap();
        let ports = &core["components"]["schemas"][&spec]["properties"]["ports"];
        assert_eq!(ports["x-kubernetes-patch-merge-key"], "port", "{ports}");
        let (apps, _) = &documents()["apis/apps/v1"];
        let text = serde_json::to_string(apps).unwrap();
        assert!(text.contains(r#""x-kubernetes-patch-merge-key":"containerPort""#));
    }
}
