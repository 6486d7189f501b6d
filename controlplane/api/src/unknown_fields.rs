//! Unknown-field detection for the `fieldValidation` query parameter (Strict: 400, Warn:
//! a `Warning` header per field, Ignore: nothing), with upstream's wording:
//! `unknown field "spec.foo"`, paths written like upstream's strict decoder
//! (`spec.ports[0].foo`; keys of maps such as labels are never unknown).
//!
//! The schema of each served kind comes from k8s-openapi's `schemars` implementation
//! (the OpenAPI schema of k8s-openapi's `v1_33` types); the object is walked alongside it:
//! `properties` name the known fields, `additionalProperties` describes map values,
//! `items` list items, and an object schema with neither (FieldsV1, RawExtension) accepts
//! anything. Duplicate fields (`duplicate field "x"` upstream) cannot be seen here because
//! the body has already been parsed into a `serde_json::Value`.

use crate::status::{bad_request, StatusError};
use serde_json::{Map, Value};
use std::collections::HashMap;
use std::fmt;
use std::sync::OnceLock;

/// The `fieldValidation` query parameter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FieldValidation {
    Ignore,
    Warn,
    Strict,
}

impl FieldValidation {
    /// Parses the query value; empty means upstream's default, `Warn`.
    pub fn parse(s: &str) -> Result<Self, StatusError> {
        match s {
            "" | "Warn" => Ok(FieldValidation::Warn),
            "Ignore" => Ok(FieldValidation::Ignore),
            "Strict" => Ok(FieldValidation::Strict),
            other => Err(bad_request(format!(
                "fieldValidation: Unsupported value: {other:?}: supported values: \"Ignore\", \"Strict\", \"Warn\""
            ))),
        }
    }
}

/// One field of the body that the kind's schema does not have.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownField {
    /// `spec.ports[0].foo`.
    pub path: String,
}

impl fmt::Display for UnknownField {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "unknown field {:?}", self.path)
    }
}

fn schema_json<T: k8s_openapi::schemars::JsonSchema>() -> Value {
    serde_json::to_value(k8s_openapi::schemars::schema_for!(T)).unwrap_or(Value::Null)
}

/// The JSON schema (with `$defs`) of a served kind, or None for kinds skiff does not know.
pub fn schema_for_kind(kind: &str) -> Option<&'static Value> {
    use k8s_openapi::api::{
        apps::v1 as apps, batch::v1 as batch, coordination::v1 as coord, core::v1 as core,
        discovery::v1 as disc, rbac::v1 as rbac,
    };
    static SCHEMAS: OnceLock<HashMap<&'static str, Value>> = OnceLock::new();
    SCHEMAS
        .get_or_init(|| {
            HashMap::from([
                ("Namespace", schema_json::<core::Namespace>()),
                ("Node", schema_json::<core::Node>()),
                ("Pod", schema_json::<core::Pod>()),
                ("Service", schema_json::<core::Service>()),
                ("Endpoints", schema_json::<core::Endpoints>()),
                ("ConfigMap", schema_json::<core::ConfigMap>()),
                ("Secret", schema_json::<core::Secret>()),
                ("ServiceAccount", schema_json::<core::ServiceAccount>()),
                ("Event", schema_json::<core::Event>()),
                ("Deployment", schema_json::<apps::Deployment>()),
                ("ReplicaSet", schema_json::<apps::ReplicaSet>()),
                ("DaemonSet", schema_json::<apps::DaemonSet>()),
                ("EndpointSlice", schema_json::<disc::EndpointSlice>()),
                ("Lease", schema_json::<coord::Lease>()),
                (
                    "ControllerRevision",
                    schema_json::<apps::ControllerRevision>(),
                ),
                ("Job", schema_json::<batch::Job>()),
                ("ClusterRole", schema_json::<rbac::ClusterRole>()),
                (
                    "ClusterRoleBinding",
                    schema_json::<rbac::ClusterRoleBinding>(),
                ),
                ("Role", schema_json::<rbac::Role>()),
                ("RoleBinding", schema_json::<rbac::RoleBinding>()),
            ])
        })
        .get(kind)
}

/// Every field of `obj` that `kind`'s schema does not define, in document order.
/// Returns an empty list for kinds without a schema (nothing can be said about them).
pub fn find_unknown_fields(kind: &str, obj: &Value) -> Vec<UnknownField> {
    let Some(schema) = schema_for_kind(kind) else {
        return Vec::new();
    };
    let defs = schema.get("$defs").and_then(Value::as_object);
    let mut out = Vec::new();
    walk(obj, schema, defs, "", &mut out);
    out
}

fn resolve<'a>(mut s: &'a Value, defs: Option<&'a Map<String, Value>>) -> &'a Value {
    // `#/$defs/<name>`; a ref chain is short (a ref never points at a ref here) but loop anyway.
    for _ in 0..8 {
        let Some(r) = s.get("$ref").and_then(Value::as_str) else {
            break;
        };
        let name = r.rsplit('/').next().unwrap_or("");
        match defs.and_then(|d| d.get(name)) {
            Some(t) => s = t,
            None => break,
        }
    }
    s
}

fn walk(
    v: &Value,
    schema: &Value,
    defs: Option<&Map<String, Value>>,
    path: &str,
    out: &mut Vec<UnknownField>,
) {
    let schema = resolve(schema, defs);
    match v {
        Value::Object(m) => {
            if let Some(props) = schema.get("properties").and_then(Value::as_object) {
                for (k, child) in m {
                    let p = if path.is_empty() {
                        k.clone()
                    } else {
                        format!("{path}.{k}")
                    };
                    match props.get(k) {
                        Some(s) => walk(child, s, defs, &p, out),
                        None => out.push(UnknownField { path: p }),
                    }
                }
            } else if let Some(ap) = schema.get("additionalProperties").filter(|a| a.is_object()) {
                for (k, child) in m {
                    let p = if path.is_empty() {
                        k.clone()
                    } else {
                        format!("{path}.{k}")
                    };
                    walk(child, ap, defs, &p, out);
                }
            }
            // Neither: a free-form object (FieldsV1, RawExtension); anything goes.
        }
        Value::Array(items) => {
            if let Some(item_schema) = schema.get("items") {
                for (i, item) in items.iter().enumerate() {
                    walk(item, item_schema, defs, &format!("{path}[{i}]"), out);
                }
            }
        }
        _ => {}
    }
}

/// The 400 upstream returns with `fieldValidation=Strict`:
/// `Service in version "v1" cannot be handled as a Service: strict decoding error: unknown field "spec.foo", unknown field "spec.bar"`.
pub fn strict_error(kind: &str, api_version: &str, fields: &[UnknownField]) -> StatusError {
    let list: Vec<String> = fields.iter().map(ToString::to_string).collect();
    bad_request(format!(
        "{kind} in version {api_version:?} cannot be handled as a {kind}: strict decoding error: {}",
        list.join(", ")
    ))
}

/// The `Warning` header values upstream sends with `fieldValidation=Warn`.
pub fn warnings(fields: &[UnknownField]) -> Vec<String> {
    fields.iter().map(ToString::to_string).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn finds_unknown_fields() {
        let cases: Vec<(&str, Value, Vec<&str>)> = vec![
            (
                "Service",
                json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web", "labels": {"any-key": "x"}},
                       "spec": {"ports": [{"port": 80, "targetPort": "http"}], "selector": {"app": "web"}}}),
                vec![],
            ),
            (
                "Service",
                json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web", "nmae": "x"},
                       "spec": {"foo": 1, "ports": [{"port": 80}, {"port": 81, "tragetPort": 1}]}, "extra": true}),
                vec![
                    "metadata.nmae",
                    "spec.foo",
                    "spec.ports[1].tragetPort",
                    "extra",
                ],
            ),
            (
                "Deployment",
                json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d"},
                       "spec": {"replicas": 1, "template": {"metadata": {"labels": {"a": "b"}},
                                "spec": {"containers": [{"name": "c", "image": "i", "env": [{"name": "A", "vaule": "x"}],
                                                         "resources": {"limits": {"cpu": "1"}}}]}}}}),
                vec!["spec.template.spec.containers[0].env[0].vaule"],
            ),
            (
                "Pod",
                json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p",
                       "managedFields": [{"manager": "m", "fieldsType": "FieldsV1", "fieldsV1": {"f:spec": {"f:anything": {}}}}]},
                       "spec": {"containers": [{"name": "c", "image": "i"}], "nodeSelector": {"k": "v"}}}),
                vec![],
            ),
            (
                "ConfigMap",
                json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}, "data": {"k": "v"}, "spec": {}}),
                vec!["spec"],
            ),
            (
                "EndpointSlice",
                json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice", "metadata": {"name": "s"}, "addressType": "IPv4",
                       "endpoints": [{"addresses": ["10.0.0.1"], "conditions": {"ready": true, "healthy": true}}]}),
                vec!["endpoints[0].conditions.healthy"],
            ),
            (
                "Lease",
                json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": {"name": "l"}, "spec": {"holderIdentity": "a"}}),
                vec![],
            ),
            ("Widget", json!({"anything": 1}), vec![]),
        ];
        for (kind, obj, want) in cases {
            let got: Vec<String> = find_unknown_fields(kind, &obj)
                .into_iter()
                .map(|f| f.path)
                .collect();
            let mut got_sorted = got.clone();
            got_sorted.sort();
            let mut want_sorted: Vec<String> = want.iter().map(|s| s.to_string()).collect();
            want_sorted.sort();
            assert_eq!(got_sorted, want_sorted, "{kind}: {obj}");
        }
    }

    #[test]
    fn every_served_kind_has_a_schema() {
        for r in crate::resources::RESOURCES {
            let s = schema_for_kind(r.kind).unwrap_or_else(|| panic!("{} has no schema", r.kind));
            assert!(
                s["properties"].get("metadata").is_some(),
                "{} schema lacks metadata",
                r.kind
            );
        }
    }

    #[test]
    fn messages() {
        let fields = vec![
            UnknownField {
                path: "spec.foo".into(),
            },
            UnknownField {
                path: "spec.bar".into(),
            },
        ];
        let e = strict_error("Service", "v1", &fields);
        assert_eq!(e.code, 400);
        assert_eq!(
            e.message(),
            "Service in version \"v1\" cannot be handled as a Service: strict decoding error: unknown field \"spec.foo\", unknown field \"spec.bar\""
        );
        assert_eq!(
            warnings(&fields),
            ["unknown field \"spec.foo\"", "unknown field \"spec.bar\""]
        );
    }

    #[test]
    fn field_validation_param() {
        let cases = [
            ("", Ok(FieldValidation::Warn)),
            ("Warn", Ok(FieldValidation::Warn)),
            ("Strict", Ok(FieldValidation::Strict)),
            ("Ignore", Ok(FieldValidation::Ignore)),
            ("strict", Err(400)),
        ];
        for (input, want) in cases {
            assert_eq!(
                FieldValidation::parse(input).map_err(|e| e.code),
                want,
                "{input:?}"
            );
        }
    }
}
