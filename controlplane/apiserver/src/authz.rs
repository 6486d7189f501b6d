//! What a node identity (`system:node:<name>`) may do: upstream's Node authorizer and
//! NodeRestriction admission plugin, reduced to what skiff's agent needs.
//!
//! - read (get, list, watch): Nodes, Pods, Services, Endpoints, EndpointSlices,
//!   Namespaces; its own Lease; a ConfigMap or Secret only by name (`get`) and only when a
//!   Pod bound to the node references it (volumes, env, envFrom, imagePullSecrets) — never
//!   list or watch them, as upstream;
//! - write: its own Node (create, update, patch, status), its own Lease in
//!   `kube-node-lease`, the status of Pods bound to it, the deletion of Pods bound to it
//!   (the kubelet finalises graceful deletion), Events; the creation of mirror pods of its
//!   static pods (annotation `kubernetes.io/config.mirror`, bound to it, owned by its Node
//!   if owned at all, referencing no Secret, ConfigMap, ServiceAccount or claim), as
//!   NodeRestriction allows;
//! - nothing else: 403 with upstream's wording and the rule that refused.

use serde_json::Value;
use skiff_api::status::{self as st, StatusError};
use skiff_store::ListOptions;

use crate::api::{AppState, Ctx, Target};
use axum::http::Method;

fn verb(t: &Target, ctx: &Ctx) -> &'static str {
    match (&ctx.method, t.name.is_some()) {
        (&Method::GET, true) => "get",
        (&Method::GET, false) if matches!(ctx.q("watch"), "true" | "1") => "watch",
        (&Method::GET, false) => "list",
        (&Method::POST, _) => "create",
        (&Method::PUT, _) => "update",
        (&Method::PATCH, _) => "patch",
        (&Method::DELETE, true) => "delete",
        (&Method::DELETE, false) => "deletecollection",
        _ => "access",
    }
}

fn deny(t: &Target, node: &str, verb: &str, sub: Option<&str>, why: &str) -> StatusError {
    let resource = match sub {
        Some(s) => format!("{}/{s}", t.r.plural),
        None => t.r.plural.to_string(),
    };
    let scope = match &t.ns {
        Some(ns) if t.r.namespaced => format!("in the namespace {ns:?}"),
        _ => "at the cluster scope".to_string(),
    };
    st::forbidden(
        t.gr(),
        t.name.as_deref().unwrap_or(""),
        &format!(
            "User \"system:node:{node}\" cannot {verb} resource {resource:?} in API group {:?} {scope}: {why}",
            t.r.group
        ),
    )
}

async fn stored(state: &AppState, key: &str) -> Result<Option<Value>, StatusError> {
    let kv = state
        .store
        .get(key)
        .await
        .map_err(|e| st::internal_error(&e.to_string()))?;
    Ok(kv.and_then(|kv| serde_json::from_slice(&kv.value).ok()))
}

fn bound_to(pod: &Value, node: &str) -> bool {
    pod.pointer("/spec/nodeName").and_then(Value::as_str) == Some(node)
}

/// Does `pod` reference the ConfigMap (`kind` "configMap") or Secret ("secret") `name`?
fn references(pod: &Value, kind: &str, name: &str) -> bool {
    let spec = &pod["spec"];
    let is = |v: Option<&Value>| v.and_then(Value::as_str) == Some(name);
    let by_volume = spec["volumes"].as_array().into_iter().flatten().any(|v| {
        let direct = if kind == "secret" {
            is(v.pointer("/secret/secretName"))
        } else {
            is(v.pointer("/configMap/name"))
        };
        let projected = v
            .pointer("/projected/sources")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .any(|s| is(s.pointer(&format!("/{kind}/name"))));
        direct || projected
    });
    let containers = ["containers", "initContainers", "ephemeralContainers"]
        .iter()
        .flat_map(|f| spec[*f].as_array().cloned().unwrap_or_default());
    let (env_ref, from_ref) = if kind == "secret" {
        ("/valueFrom/secretKeyRef/name", "/secretRef/name")
    } else {
        ("/valueFrom/configMapKeyRef/name", "/configMapRef/name")
    };
    let by_env = containers.into_iter().any(|c| {
        c["env"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|e| is(e.pointer(env_ref)))
            || c["envFrom"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|e| is(e.pointer(from_ref)))
    });
    let by_pull = kind == "secret"
        && spec["imagePullSecrets"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|s| is(s.get("name")));
    by_volume || by_env || by_pull
}

/// NodeRestriction's rule for a node creating a pod: only a mirror pod of its own.
fn mirror_pod_allowed(pod: &Value, node: &str) -> Result<(), String> {
    let is_mirror = pod
        .pointer("/metadata/annotations")
        .and_then(Value::as_object)
        .is_some_and(|a| a.contains_key("kubernetes.io/config.mirror"));
    if !is_mirror {
        return Err(format!(
            "node {node:?} can only create mirror pods (annotation kubernetes.io/config.mirror)"
        ));
    }
    if !bound_to(pod, node) {
        return Err(format!(
            "node {node:?} can only create pods with spec.nodeName set to itself"
        ));
    }
    let owners = pod
        .pointer("/metadata/ownerReferences")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    if owners
        .iter()
        .any(|o| o["kind"] != "Node" || o["name"] != node)
    {
        return Err(format!(
            "node {node:?} can only create pods with an owner reference set to itself"
        ));
    }
    let spec = &pod["spec"];
    if spec["serviceAccountName"]
        .as_str()
        .is_some_and(|s| !s.is_empty())
    {
        return Err(format!(
            "node {node:?} can not create pods that reference a service account"
        ));
    }
    let uses_objects = spec["volumes"].as_array().into_iter().flatten().any(|v| {
        [
            "secret",
            "configMap",
            "persistentVolumeClaim",
            "projected",
            "ephemeral",
        ]
        .iter()
        .any(|k| v.get(*k).is_some())
    }) || ["containers", "initContainers", "ephemeralContainers"]
        .iter()
        .flat_map(|f| spec[*f].as_array().cloned().unwrap_or_default())
        .any(|c| {
            c["envFrom"].as_array().is_some_and(|a| !a.is_empty())
                || c["env"].as_array().into_iter().flatten().any(|e| {
                    e.pointer("/valueFrom/secretKeyRef").is_some()
                        || e.pointer("/valueFrom/configMapKeyRef").is_some()
                })
        });
    if uses_objects {
        return Err(format!(
            "node {node:?} can not create pods that reference secrets, configmaps or persistentvolumeclaims"
        ));
    }
    Ok(())
}

/// Checks a request of node `node`; Ok means allowed.
pub(crate) async fn authorize_node(
    state: &AppState,
    node: &str,
    t: &Target,
    sub: Option<&str>,
    ctx: &Ctx,
) -> Result<(), StatusError> {
    let v = verb(t, ctx);
    let read = matches!(v, "get" | "list" | "watch");
    let body_name = || -> String {
        serde_json::from_slice::<Value>(&ctx.body)
            .ok()
            .and_then(|b| {
                b.pointer("/metadata/name")
                    .and_then(Value::as_str)
                    .map(str::to_string)
            })
            .unwrap_or_default()
    };
    match (t.r.group, t.r.plural) {
        ("", "nodes") => {
            if read {
                return Ok(());
            }
            let target = if v == "create" {
                body_name()
            } else {
                t.name.clone().unwrap_or_default()
            };
            if matches!(v, "create" | "update" | "patch") && target == node {
                return Ok(());
            }
            Err(deny(
                t,
                node,
                v,
                sub,
                &format!("node {node:?} can only create, update and patch its own Node object"),
            ))
        }
        ("coordination.k8s.io", "leases") => {
            let ns_ok = t.ns.as_deref() == Some("kube-node-lease");
            let target = if v == "create" {
                body_name()
            } else {
                t.name.clone().unwrap_or_default()
            };
            if ns_ok && target == node && matches!(v, "get" | "create" | "update" | "patch") {
                return Ok(());
            }
            Err(deny(
                t,
                node,
                v,
                sub,
                &format!("node {node:?} can only access its own Lease in kube-node-lease"),
            ))
        }
        ("", "pods") => {
            if read && sub.is_none() {
                return Ok(());
            }
            if v == "create" && sub.is_none() {
                return match serde_json::from_slice::<Value>(&ctx.body) {
                    Ok(pod) => {
                        mirror_pod_allowed(&pod, node).map_err(|why| deny(t, node, v, sub, &why))
                    }
                    Err(_) => Err(deny(t, node, v, sub, "the request body is not a JSON Pod")),
                };
            }
            let allowed_write = matches!(
                (v, sub),
                ("update" | "patch", Some("status")) | ("delete", None)
            );
            if allowed_write {
                let key = format!(
                    "/registry/pods/{}/{}",
                    t.ns.as_deref().unwrap_or(""),
                    t.name.as_deref().unwrap_or("")
                );
                match stored(state, &key).await? {
                    Some(pod) if bound_to(&pod, node) => return Ok(()),
                    // Let the request go on to its own 404.
                    None => return Ok(()),
                    Some(_) => {}
                }
            }
            Err(deny(
                t,
                node,
                v,
                sub,
                &format!("node {node:?} can only update the status of and delete pods bound to it"),
            ))
        }
        ("", "configmaps") | ("", "secrets") => {
            let kind = if t.r.plural == "secrets" {
                "secret"
            } else {
                "configMap"
            };
            if v == "get" && sub.is_none() {
                let ns = t.ns.as_deref().unwrap_or("");
                let name = t.name.as_deref().unwrap_or("");
                let pods = state
                    .store
                    .list(&format!("/registry/pods/{ns}/"), ListOptions::default())
                    .await
                    .map_err(|e| st::internal_error(&e.to_string()))?;
                let referenced = pods.items.iter().any(|kv| {
                    serde_json::from_slice::<Value>(&kv.value)
                        .is_ok_and(|p| bound_to(&p, node) && references(&p, kind, name))
                });
                if referenced {
                    return Ok(());
                }
            }
            Err(deny(
                t,
                node,
                v,
                sub,
                &format!("no relationship found between node {node:?} and this object"),
            ))
        }
        ("", "services")
        | ("", "endpoints")
        | ("discovery.k8s.io", "endpointslices")
        | ("", "namespaces")
            if read =>
        {
            Ok(())
        }
        ("", "events") | ("events.k8s.io", "events")
            if matches!(v, "create" | "update" | "patch") =>
        {
            Ok(())
        }
        _ => Err(deny(t, node, v, sub, "nodes may not access this resource")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn nodes_create_only_their_own_mirror_pods() {
        let mirror = json!({"metadata": {"name": "web-n1", "annotations": {"kubernetes.io/config.mirror": "h"},
                                         "ownerReferences": [{"apiVersion": "v1", "kind": "Node", "name": "n1", "uid": "u"}]},
                            "spec": {"nodeName": "n1", "containers": [{"name": "c"}]}});
        assert_eq!(mirror_pod_allowed(&mirror, "n1"), Ok(()));
        assert!(mirror_pod_allowed(&mirror, "n2")
            .unwrap_err()
            .contains("nodeName set to itself"));
        let mut plain = mirror.clone();
        plain["metadata"]["annotations"] = json!({});
        assert!(mirror_pod_allowed(&plain, "n1")
            .unwrap_err()
            .contains("only create mirror pods"));
        let mut owned = mirror.clone();
        owned["metadata"]["ownerReferences"][0]["name"] = json!("n2");
        assert!(mirror_pod_allowed(&owned, "n1")
            .unwrap_err()
            .contains("owner reference"));
        let mut secret = mirror.clone();
        secret["spec"]["volumes"] = json!([{"name": "s", "secret": {"secretName": "x"}}]);
        assert!(mirror_pod_allowed(&secret, "n1")
            .unwrap_err()
            .contains("secrets"));
    }

    #[test]
    fn references_cover_volumes_env_env_from_and_pull_secrets() {
        let pod = json!({"spec": {
            "volumes": [{"name": "v", "secret": {"secretName": "tls"}}, {"name": "c", "configMap": {"name": "cfg"}},
                        {"name": "p", "projected": {"sources": [{"secret": {"name": "proj"}}]}}],
            "imagePullSecrets": [{"name": "pull"}],
            "containers": [{"name": "a",
                "env": [{"name": "X", "valueFrom": {"secretKeyRef": {"name": "envsec", "key": "k"}}},
                        {"name": "Y", "valueFrom": {"configMapKeyRef": {"name": "envcm", "key": "k"}}}],
                "envFrom": [{"configMapRef": {"name": "fromcm"}}, {"secretRef": {"name": "fromsec"}}]}],
            "initContainers": [{"name": "i", "envFrom": [{"secretRef": {"name": "initsec"}}]}],
        }});
        for s in ["tls", "proj", "pull", "envsec", "fromsec", "initsec"] {
            assert!(references(&pod, "secret", s), "{s}");
        }
        for c in ["cfg", "envcm", "fromcm"] {
            assert!(references(&pod, "configMap", c), "{c}");
        }
        assert!(!references(&pod, "secret", "cfg"));
        assert!(!references(&pod, "configMap", "tls"));
        assert!(!references(&pod, "secret", "other"));
    }
}
