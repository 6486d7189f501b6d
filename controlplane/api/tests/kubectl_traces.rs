//! Replays the kubectl requests recorded against a logging fake apiserver
//! (`testdata/kubectl-traces`, copied from the design fixtures; `svc.yaml` then
//! `svc2.yaml` applied with kubectl 1.27–1.33) through this crate, the way skiff's server
//! will: path → resource, fieldValidation, defaulting, validation, patching, apply.

use serde_json::{json, Value};
use skiff_api::apply::{apply, record_update};
use skiff_api::defaults::apply_defaults;
use skiff_api::patch::{apply_patch, PatchType};
use skiff_api::resources::{parse_path, ApiPath};
use skiff_api::unknown_fields::{find_unknown_fields, FieldValidation};
use skiff_api::validation::validate;

struct Request {
    method: String,
    path: String,
    content_type: Option<String>,
    body: String,
}

fn load(name: &str) -> Vec<Request> {
    let text = match name {
        "log4" => include_str!("../testdata/kubectl-traces/log4.jsonl"),
        "log_1.28" => include_str!("../testdata/kubectl-traces/log_1.28.jsonl"),
        "log_1.29" => include_str!("../testdata/kubectl-traces/log_1.29.jsonl"),
        "log_1.33" => include_str!("../testdata/kubectl-traces/log_1.33.jsonl"),
        "log_del" => include_str!("../testdata/kubectl-traces/log_del.jsonl"),
        other => panic!("no trace {other}"),
    };
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let v: Value = serde_json::from_str(l).expect("trace line is JSON");
            Request {
                method: v["m"].as_str().unwrap().to_string(),
                path: v["p"].as_str().unwrap().to_string(),
                content_type: v["ctype"].as_str().map(String::from),
                body: v["body"].as_str().unwrap_or("").to_string(),
            }
        })
        .collect()
}

fn query<'a>(path: &'a str, key: &str) -> Option<&'a str> {
    path.split_once('?')?
        .1
        .split('&')
        .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
}

/// The server's write path for a create: unknown fields, defaults, validation.
fn create(kind: &str, body: &Value, field_validation: FieldValidation) -> Value {
    let unknown = find_unknown_fields(kind, body);
    assert!(
        unknown.is_empty() || field_validation != FieldValidation::Strict,
        "{unknown:?}"
    );
    let obj = apply_defaults(kind, body).expect("decodes");
    let errs = validate(kind, &obj).expect("decodes");
    assert!(errs.is_empty(), "{errs:?}");
    obj
}

/// The Service as svc2.yaml describes it, after defaulting.
fn expected_spec(port: i64) -> Value {
    json!({
        "ports": [{"name": "http", "port": port, "protocol": "TCP", "targetPort": "http"}],
        "selector": {"app": "web"},
        "type": "ClusterIP",
        "sessionAffinity": "None",
        "internalTrafficPolicy": "Cluster",
        "ipFamilyPolicy": "SingleStack",
        "ipFamilies": ["IPv4"],
    })
}

#[test]
fn every_resource_request_maps_to_services() {
    for trace in ["log4", "log_1.28", "log_1.29", "log_1.33", "log_del"] {
        for r in load(trace) {
            let p = r.path.split('?').next().unwrap();
            if !p.contains("/services") {
                continue;
            }
            match parse_path(&r.path) {
                Ok(ApiPath::Resource {
                    resource,
                    namespace,
                    ..
                }) => {
                    assert_eq!(resource.plural, "services", "{trace} {}", r.path);
                    assert_eq!(namespace.as_deref(), Some("default"));
                }
                other => panic!("{trace} {} {}: {other:?}", r.method, r.path),
            }
        }
    }
}

#[test]
fn client_side_apply_create_then_patch() {
    for trace in ["log_1.29", "log_1.33", "log4"] {
        let reqs = load(trace);
        let post = reqs.iter().find(|r| r.method == "POST").expect("a create");
        let fv =
            FieldValidation::parse(query(&post.path, "fieldValidation").unwrap_or("")).unwrap();
        assert_eq!(fv, FieldValidation::Strict, "{trace}");
        let body: Value = serde_json::from_str(&post.body).unwrap();
        let stored = create("Service", &body, fv);
        assert_eq!(stored["spec"], expected_spec(80), "{trace}");

        let patch = reqs
            .iter()
            .find(|r| {
                r.method == "PATCH"
                    && r.content_type.as_deref() == Some("application/strategic-merge-patch+json")
            })
            .expect("an apply patch");
        let pt = PatchType::from_content_type(patch.content_type.as_deref().unwrap()).unwrap();
        let body: Value = serde_json::from_str(&patch.body).unwrap();
        let patched = apply_patch("Service", pt, &stored, &body).unwrap();
        let patched = create("Service", &patched, FieldValidation::Strict);
        assert_eq!(patched["spec"], expected_spec(8080), "{trace}");
        let last_applied: Value = serde_json::from_str(
            patched["metadata"]["annotations"]["kubectl.kubernetes.io/last-applied-configuration"]
                .as_str()
                .unwrap(),
        )
        .unwrap();
        assert_eq!(last_applied["spec"]["ports"][0]["port"], 8080, "{trace}");
        assert_eq!(patched["metadata"]["labels"], json!({"app": "web"}));
    }
}

fn ssa_requests(reqs: &[Request]) -> Vec<(&str, Value)> {
    reqs.iter()
        .filter(|r| {
            r.method == "PATCH" && r.content_type.as_deref() == Some("application/apply-patch+yaml")
        })
        .map(|r| {
            (
                query(&r.path, "fieldManager").unwrap(),
                serde_json::from_str(&r.body).unwrap(),
            )
        })
        .collect()
}

const T: &str = "2026-01-01T00:00:00Z";

/// The whole log4 session in order, with ownership tracking: client-side apply creates
/// the Service (an Update entry for `kubectl-client-side-apply`), patches port 80 to 8080,
/// then `kubectl apply --server-side` applies the same content (shared ownership, no
/// conflict) and migrates the last-applied annotation with a second manager.
#[test]
fn full_session_with_managed_fields() {
    let reqs = load("log4");
    let mut obj: Option<Value> = None;
    let mut seen = Vec::new();
    for r in &reqs {
        let manager = query(&r.path, "fieldManager").unwrap_or("");
        let next = match (r.method.as_str(), r.content_type.as_deref()) {
            ("POST", _) => {
                let created = create(
                    "Service",
                    &serde_json::from_str(&r.body).unwrap(),
                    FieldValidation::Strict,
                );
                record_update("Service", None, &created, manager, "v1", T)
            }
            ("PATCH", Some(ct)) => {
                let mut body: Value = serde_json::from_str(&r.body).unwrap();
                let current = obj.as_ref().expect("patch after create");
                if manager == "kubectl-last-applied" {
                    // kubectl copies the live object's last-applied annotation into this
                    // apply to take ownership of it. The fake server that recorded the trace
                    // kept returning the object as first created (port 80), so use the
                    // annotation a real server would have returned (port 8080) instead.
                    let ann = "kubectl.kubernetes.io/last-applied-configuration";
                    body["metadata"]["annotations"][ann] =
                        current["metadata"]["annotations"][ann].clone();
                }
                match PatchType::from_content_type(ct).unwrap() {
                    PatchType::Apply => {
                        let force = query(&r.path, "force") == Some("true");
                        let applied =
                            apply("Service", Some(current), &body, manager, T, force).unwrap();
                        create("Service", &applied, FieldValidation::Strict)
                    }
                    pt => {
                        let patched = create(
                            "Service",
                            &apply_patch("Service", pt, current, &body).unwrap(),
                            FieldValidation::Strict,
                        );
                        record_update("Service", Some(current), &patched, manager, "v1", T)
                    }
                }
            }
            _ => continue,
        };
        seen.push(format!("{} {}", r.method, manager));
        obj = Some(next);
    }
    assert_eq!(
        seen,
        [
            "POST kubectl-client-side-apply",
            "PATCH kubectl-client-side-apply",
            "PATCH kubectl",
            "PATCH kubectl-last-applied"
        ]
    );
    let obj = obj.unwrap();
    assert_eq!(obj["spec"], expected_spec(8080));
    let managers: Vec<(&str, &str)> = obj["metadata"]["managedFields"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["manager"].as_str().unwrap(),
                e["operation"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        managers,
        [
            ("kubectl-client-side-apply", "Update"),
            ("kubectl", "Apply"),
            ("kubectl-last-applied", "Apply")
        ]
    );
}

/// A server-side apply that changes a value the client-side apply manager owns (the
/// targetPort of port 80, created by the recorded POST) is a 409 conflict naming that
/// manager and the field; with `force=true` it goes through.
#[test]
fn server_side_apply_conflict_with_client_side_owner() {
    let reqs = load("log4");
    let post = reqs.iter().find(|r| r.method == "POST").unwrap();
    let created = create(
        "Service",
        &serde_json::from_str(&post.body).unwrap(),
        FieldValidation::Strict,
    );
    let obj = record_update(
        "Service",
        None,
        &created,
        "kubectl-client-side-apply",
        "v1",
        T,
    );
    let cfg = json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web", "namespace": "default"},
                     "spec": {"ports": [{"name": "http", "port": 80, "targetPort": 8080}], "selector": {"app": "web"}}});
    let err = apply("Service", Some(&obj), &cfg, "kubectl", T, false).unwrap_err();
    assert_eq!(
        err.message,
        format!("Apply failed with 1 conflict: conflict with \"kubectl-client-side-apply\" using v1 at {T}: .spec.ports[port=80,protocol=\"TCP\"].targetPort")
    );
    assert_eq!(err.status().code, 409);
    let forced = apply("Service", Some(&obj), &cfg, "kubectl", T, true).unwrap();
    assert_eq!(forced["spec"]["ports"][0]["targetPort"], 8080);
}

/// With the ownership kubectl's migration leaves behind (the last-applied configuration's
/// fields owned by manager `kubectl` with operation Apply), the recorded server-side
/// apply replaces port 80 with 8080, and the second request (`kubectl-last-applied`)
/// only adds its own entry.
#[test]
fn server_side_apply_after_migration_replaces_port() {
    let reqs = load("log4");
    let post = reqs.iter().find(|r| r.method == "POST").unwrap();
    let body: Value = serde_json::from_str(&post.body).unwrap();
    let last_applied: Value = serde_json::from_str(
        body["metadata"]["annotations"]["kubectl.kubernetes.io/last-applied-configuration"]
            .as_str()
            .unwrap(),
    )
    .unwrap();
    let mut obj = create("Service", &body, FieldValidation::Strict);
    obj["metadata"]["managedFields"] = json!([{
        "manager": "kubectl", "operation": "Apply", "apiVersion": "v1", "time": T,
        "fieldsType": "FieldsV1", "fieldsV1": skiff_api::apply::field_set("Service", &last_applied),
    }]);
    for (i, (manager, cfg)) in ssa_requests(&reqs).into_iter().enumerate() {
        obj = apply("Service", Some(&obj), &cfg, manager, T, false).unwrap();
        obj = create("Service", &obj, FieldValidation::Strict);
        let entry = &obj["metadata"]["managedFields"].as_array().unwrap()[i];
        assert_eq!(entry["manager"], manager);
        assert_eq!(entry["operation"], "Apply");
    }
    assert_eq!(obj["spec"], expected_spec(8080));
    assert_eq!(
        obj["metadata"]["managedFields"][0]["fieldsV1"],
        json!({"f:metadata": {"f:labels": {"f:app": {}}},
               "f:spec": {"f:ports": {"k:{\"port\":8080,\"protocol\":\"TCP\"}": {".": {}, "f:name": {}, "f:port": {}, "f:targetPort": {}}},
                          "f:selector": {}}})
    );
    assert_eq!(
        obj["metadata"]["managedFields"][1]["fieldsV1"],
        json!({"f:metadata": {"f:annotations": {"f:kubectl.kubernetes.io/last-applied-configuration": {}}}})
    );
}

#[test]
fn delete_body_is_delete_options() {
    let reqs = load("log_del");
    let del = reqs.iter().find(|r| r.method == "DELETE").unwrap();
    let body: Value = serde_json::from_str(&del.body).unwrap();
    let opts: k8s_openapi::apimachinery::pkg::apis::meta::v1::DeleteOptions =
        serde_json::from_value(body).unwrap();
    assert_eq!(opts.propagation_policy.as_deref(), Some("Background"));
}
