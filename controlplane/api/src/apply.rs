//! Server-side apply (`PATCH` with `application/apply-patch+yaml`), create-or-merge, with
//! `metadata.managedFields` bookkeeping.
//!
//! What is implemented, after upstream's `structured-merge-diff` semantics:
//! * no existing object: the applied configuration becomes the object;
//! * existing object: fields in the configuration win; maps merge; lists merge by their
//!   list-map keys (the SMP merge keys of [`crate::patch::schema`], except Service ports
//!   and container ports, which upstream keys by `port`/`containerPort` *and* `protocol`,
//!   protocol defaulting to TCP); primitive `merge` lists (finalizers) are sets; other
//!   lists and atomic maps (Service `spec.selector`, workload `spec.selector`) replace;
//! * fields this manager applied before (its previous `Apply` entry) but no longer
//!   applies are removed, unless another manager's entry also lists them;
//! * the manager's `Apply` entry is replaced by one listing, in `fieldsV1` form, exactly
//!   the fields the configuration sets (`f:<field>`, `k:{<keys>}` with `.` for list items,
//!   `v:<value>` for set items); identity fields (`apiVersion`, `kind`, `metadata.name`,
//!   `metadata.namespace`...) and `status` (served by the status subresource) are not
//!   tracked, like upstream.
//!
//! Not implemented: conflict detection (a field owned by another manager with a different
//! value is overwritten as with `force=true`, and ownership is not taken from the other
//! manager); `Update` entries for non-apply writes.

use crate::patch::schema::{child, list_strategy, root, ListStrategy, Ty};
use serde_json::{json, Map, Value};
use std::fmt;

/// An applied configuration that cannot be applied (the server answers 400, or 422 for
/// identity mismatches, as upstream does).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApplyError {
    pub message: String,
}

impl fmt::Display for ApplyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for ApplyError {}

fn aerr<T>(message: impl Into<String>) -> Result<T, ApplyError> {
    Err(ApplyError {
        message: message.into(),
    })
}

/// Keys of a list upstream declares `+listType=map` for SSA (its list-map keys).
fn list_keys(parent: Ty, field: &str) -> Option<&'static [&'static str]> {
    match (parent, field) {
        (Ty::ServiceSpec, "ports") => Some(&["port", "protocol"]),
        (Ty::Container, "ports") => Some(&["containerPort", "protocol"]),
        _ => match list_strategy(parent, field) {
            ListStrategy::MergeByKey("name") => Some(&["name"]),
            ListStrategy::MergeByKey("uid") => Some(&["uid"]),
            ListStrategy::MergeByKey("type") => Some(&["type"]),
            ListStrategy::MergeByKey("ip") => Some(&["ip"]),
            ListStrategy::MergeByKey("mountPath") => Some(&["mountPath"]),
            ListStrategy::MergeByKey("devicePath") => Some(&["devicePath"]),
            ListStrategy::MergeByKey("topologyKey") => Some(&["topologyKey"]),
            ListStrategy::MergeByKey(_) | ListStrategy::Atomic | ListStrategy::MergePrimitives => {
                None
            }
        },
    }
}

/// Maps that upstream marks atomic (`+mapType=atomic`, `+structType=atomic`): the applier
/// owns them whole and they are replaced, not merged.
fn atomic_map(parent: Ty, field: &str) -> bool {
    matches!(
        (parent, field),
        (Ty::ServiceSpec, "selector") | (Ty::WorkloadSpec, "selector")
    )
}

/// The identity of a keyed list item: its key fields, `protocol` defaulting to TCP as
/// the apiserver defaults it before computing ownership.
fn item_key(item: &Value, keys: &[&str]) -> Map<String, Value> {
    keys.iter()
        .filter_map(|k| {
            let v = item
                .get(*k)
                .cloned()
                .or_else(|| (*k == "protocol").then(|| json!("TCP")))?;
            Some((k.to_string(), v))
        })
        .collect()
}

/// `k:{"port":80,"protocol":"TCP"}`: keys sorted, compact JSON, as upstream.
fn key_label(key: &Map<String, Value>) -> String {
    let sorted: std::collections::BTreeMap<&String, &Value> = key.iter().collect();
    format!("k:{}", serde_json::to_string(&sorted).unwrap_or_default())
}

fn same_key(item: &Value, key: &Map<String, Value>, keys: &[&str]) -> bool {
    item_key(item, keys) == *key
}

/// Top-level and metadata fields upstream never records in managedFields.
fn untracked(ty: Ty, field: &str) -> bool {
    match ty {
        Ty::Root(_) => matches!(field, "apiVersion" | "kind" | "status"),
        Ty::ObjectMeta => matches!(
            field,
            "name"
                | "namespace"
                | "uid"
                | "resourceVersion"
                | "generation"
                | "creationTimestamp"
                | "deletionTimestamp"
                | "deletionGracePeriodSeconds"
                | "managedFields"
                | "selfLink"
        ),
        _ => false,
    }
}

/// The `fieldsV1` set of the fields a configuration sets.
pub fn field_set(kind: &str, config: &Value) -> Value {
    Value::Object(map_set(
        config.as_object().cloned().unwrap_or_default().iter(),
        root(kind),
        true,
    ))
}

fn map_set<'a>(
    fields: impl Iterator<Item = (&'a String, &'a Value)>,
    ty: Ty,
    top: bool,
) -> Map<String, Value> {
    let mut out = Map::new();
    for (k, v) in fields {
        if untracked(ty, k) && (top || ty == Ty::ObjectMeta) {
            continue;
        }
        out.insert(format!("f:{k}"), value_set(v, ty, k));
    }
    out
}

fn value_set(v: &Value, parent: Ty, field: &str) -> Value {
    match v {
        Value::Object(m) if !atomic_map(parent, field) => {
            let t = child(parent, field);
            Value::Object(map_set(m.iter(), t, t == Ty::ObjectMeta))
        }
        Value::Array(items) => {
            let mut out = Map::new();
            if let Some(keys) = list_keys(parent, field) {
                let t = child(parent, field);
                for item in items {
                    let mut entry = Map::new();
                    entry.insert(".".into(), json!({}));
                    if let Some(m) = item.as_object() {
                        entry.extend(map_set(m.iter(), t, false));
                    }
                    out.insert(key_label(&item_key(item, keys)), Value::Object(entry));
                }
            } else if list_strategy(parent, field) == ListStrategy::MergePrimitives {
                for item in items {
                    out.insert(format!("v:{item}"), json!({}));
                }
            }
            Value::Object(out)
        }
        _ => json!({}),
    }
}

/// Server-side apply of `config` by `manager` at `time` (RFC 3339, stored in the
/// managedFields entry) over `existing` (None: create).
pub fn apply(
    kind: &str,
    existing: Option<&Value>,
    config: &Value,
    manager: &str,
    time: &str,
) -> Result<Value, ApplyError> {
    let Some(cfg) = config.as_object() else {
        return aerr("the applied configuration must be a JSON or YAML object");
    };
    if manager.is_empty() {
        return aerr("fieldManager is required for apply requests: pass ?fieldManager=<name>");
    }
    for f in ["apiVersion", "kind"] {
        if cfg.get(f).and_then(Value::as_str).unwrap_or("").is_empty() {
            return aerr(format!("{f} must be set in an applied configuration"));
        }
    }
    if cfg.get("kind").and_then(Value::as_str) != Some(kind) {
        return aerr(format!(
            "the applied configuration has kind {}, but the request is for {kind}",
            cfg["kind"]
        ));
    }
    let mut cfg = cfg.clone();
    if let Some(Value::Object(meta)) = cfg.get_mut("metadata") {
        meta.remove("managedFields");
    }
    let api_version = cfg["apiVersion"].clone();
    let set = field_set(kind, &Value::Object(cfg.clone()));

    let mut obj = match existing {
        None => {
            let mut o = cfg.clone();
            o.remove("status");
            Value::Object(o)
        }
        Some(existing) => {
            let Some(_) = existing.as_object() else {
                return aerr("the existing object is not a JSON object");
            };
            let mut obj = existing.clone();
            let entries = managed_fields(&obj);
            let prev = entries
                .iter()
                .find(|e| e["manager"] == manager && e["operation"] == "Apply")
                .and_then(|e| e["fieldsV1"].as_object().cloned());
            if let Some(prev) = prev {
                let others: Vec<Map<String, Value>> = entries
                    .iter()
                    .filter(|e| !(e["manager"] == manager && e["operation"] == "Apply"))
                    .filter_map(|e| e["fieldsV1"].as_object().cloned())
                    .collect();
                let others: Vec<&Map<String, Value>> = others.iter().collect();
                remove_unapplied(&mut obj, &prev, set.as_object(), &others);
            }
            let mut c = cfg.clone();
            c.remove("status");
            merge_into(&mut obj, &Value::Object(c), root(kind), "");
            obj
        }
    };

    // Replace this manager's Apply entry; keep every other entry as it was.
    let mut entries: Vec<Value> = managed_fields(&obj)
        .into_iter()
        .filter(|e| !(e["manager"] == manager && e["operation"] == "Apply"))
        .collect();
    entries.push(json!({
        "manager": manager,
        "operation": "Apply",
        "apiVersion": api_version,
        "time": time,
        "fieldsType": "FieldsV1",
        "fieldsV1": set,
    }));
    let meta = obj
        .as_object_mut()
        .map(|o| o.entry("metadata").or_insert_with(|| json!({})));
    if let Some(Value::Object(meta)) = meta {
        meta.insert("managedFields".into(), Value::Array(entries));
    }
    Ok(obj)
}

fn managed_fields(obj: &Value) -> Vec<Value> {
    obj.pointer("/metadata/managedFields")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default()
}

/// Applies a config value over an existing one: config wins.
fn merge_into(target: &mut Value, cfg: &Value, parent: Ty, field: &str) {
    let ty = if field.is_empty() {
        parent
    } else {
        child(parent, field)
    };
    match (target, cfg) {
        (Value::Object(t), Value::Object(c)) if field.is_empty() || !atomic_map(parent, field) => {
            for (k, cv) in c {
                if cv.is_null() {
                    t.remove(k);
                    continue;
                }
                match t.get_mut(k) {
                    Some(tv) => merge_into(tv, cv, ty, k),
                    None => {
                        t.insert(k.clone(), cv.clone());
                    }
                }
            }
        }
        (Value::Array(t), Value::Array(c)) => {
            if let Some(keys) = list_keys(parent, field) {
                for item in c {
                    let key = item_key(item, keys);
                    match t.iter_mut().find(|x| same_key(x, &key, keys)) {
                        Some(existing) => merge_into(existing, item, ty, ""),
                        None => t.push(item.clone()),
                    }
                }
            } else if list_strategy(parent, field) == ListStrategy::MergePrimitives {
                for item in c {
                    if !t.contains(item) {
                        t.push(item.clone());
                    }
                }
            } else {
                *t = c.clone();
            }
        }
        (t, c) => *t = c.clone(),
    }
}

/// Removes the fields listed in `prev` but not in `new` from `obj`, unless another
/// manager's set lists them.
fn remove_unapplied(
    obj: &mut Value,
    prev: &Map<String, Value>,
    new: Option<&Map<String, Value>>,
    others: &[&Map<String, Value>],
) {
    for (label, sub) in prev {
        if label == "." {
            continue;
        }
        let new_sub = new.and_then(|n| n.get(label)).and_then(Value::as_object);
        let other_subs: Vec<&Map<String, Value>> = others
            .iter()
            .filter_map(|o| o.get(label).and_then(Value::as_object))
            .collect();
        let sub = sub.as_object().cloned().unwrap_or_default();
        let owns_element = sub.is_empty() || sub.contains_key(".");
        if owns_element && new_sub.is_none() && other_subs.is_empty() {
            remove_element(obj, label);
            continue;
        }
        if sub.keys().any(|k| k != ".") {
            if let Some(child) = element_mut(obj, label) {
                remove_unapplied(child, &sub, new_sub, &other_subs);
            }
        }
    }
}

fn remove_element(obj: &mut Value, label: &str) {
    if let Some(f) = label.strip_prefix("f:") {
        if let Value::Object(m) = obj {
            m.remove(f);
        }
    } else if let Some(k) = label.strip_prefix("k:") {
        let Ok(Value::Object(key)) = serde_json::from_str::<Value>(k) else {
            return;
        };
        let keys: Vec<&str> = key.keys().map(String::as_str).collect();
        if let Value::Array(items) = obj {
            items.retain(|i| !same_key(i, &key, &keys));
        }
    } else if let Some(v) = label.strip_prefix("v:") {
        let Ok(v) = serde_json::from_str::<Value>(v) else {
            return;
        };
        if let Value::Array(items) = obj {
            items.retain(|i| *i != v);
        }
    }
}

fn element_mut<'a>(obj: &'a mut Value, label: &str) -> Option<&'a mut Value> {
    if let Some(f) = label.strip_prefix("f:") {
        obj.as_object_mut()?.get_mut(f)
    } else if let Some(k) = label.strip_prefix("k:") {
        let Ok(Value::Object(key)) = serde_json::from_str::<Value>(k) else {
            return None;
        };
        let keys: Vec<&str> = key.keys().map(String::as_str).collect();
        obj.as_array_mut()?
            .iter_mut()
            .find(|i| same_key(i, &key, &keys))
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T1: &str = "2026-01-01T00:00:00Z";
    const T2: &str = "2026-01-01T00:01:00Z";

    fn strip_mf(mut v: Value) -> Value {
        if let Some(m) = v.pointer_mut("/metadata").and_then(Value::as_object_mut) {
            m.remove("managedFields");
        }
        v
    }

    #[test]
    fn field_sets() {
        let cases = vec![
            (
                "Service",
                json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web", "namespace": "default", "labels": {"app": "web"}},
                       "spec": {"selector": {"app": "web"}, "ports": [{"name": "http", "port": 80, "targetPort": "http"}]}}),
                json!({"f:metadata": {"f:labels": {"f:app": {}}},
                       "f:spec": {"f:selector": {}, "f:ports": {"k:{\"port\":80,\"protocol\":\"TCP\"}": {".": {}, "f:name": {}, "f:port": {}, "f:targetPort": {}}}}}),
            ),
            (
                "Deployment",
                json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d", "finalizers": ["a"]},
                       "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "d"}},
                                "template": {"metadata": {"labels": {"app": "d"}}, "spec": {"containers": [{"name": "c", "image": "i", "ports": [{"containerPort": 53, "protocol": "UDP"}], "args": ["x"]}]}}},
                       "status": {"replicas": 1}}),
                json!({"f:metadata": {"f:finalizers": {"v:\"a\"": {}}},
                       "f:spec": {"f:replicas": {}, "f:selector": {},
                                  "f:template": {"f:metadata": {"f:labels": {"f:app": {}}},
                                                 "f:spec": {"f:containers": {"k:{\"name\":\"c\"}": {".": {}, "f:name": {}, "f:image": {}, "f:args": {},
                                                     "f:ports": {"k:{\"containerPort\":53,\"protocol\":\"UDP\"}": {".": {}, "f:containerPort": {}, "f:protocol": {}}}}}}}}}),
            ),
        ];
        for (kind, cfg, want) in cases {
            assert_eq!(field_set(kind, &cfg), want, "{kind}");
        }
    }

    #[test]
    fn create_and_merge() {
        let cfg1 = json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web", "labels": {"app": "web"}},
                          "spec": {"ports": [{"port": 53, "protocol": "UDP"}, {"port": 53, "protocol": "TCP"}], "selector": {"app": "web"}}});
        let created = apply("Service", None, &cfg1, "mgr", T1).unwrap();
        assert_eq!(strip_mf(created.clone()), cfg1);
        assert_eq!(
            created["metadata"]["managedFields"],
            json!([{"manager": "mgr", "operation": "Apply", "apiVersion": "v1", "time": T1, "fieldsType": "FieldsV1",
                    "fieldsV1": field_set("Service", &cfg1)}])
        );

        // A server-set field (clusterIP) and another manager's label survive; the UDP port is
        // no longer applied and goes; the selector is atomic and replaced. The TCP port's
        // `protocol` was applied before and is not now, so it goes too: the server's
        // defaulting, which runs after apply as upstream, sets it back to TCP.
        let mut existing = created.clone();
        existing["spec"]["clusterIP"] = json!("10.96.0.10");
        existing["metadata"]["labels"]["team"] = json!("x");
        existing["metadata"]["managedFields"]
            .as_array_mut()
            .unwrap()
            .push(
                json!({"manager": "other", "operation": "Update", "fieldsType": "FieldsV1",
                         "fieldsV1": {"f:metadata": {"f:labels": {"f:team": {}}}}}),
            );
        let cfg2 = json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web", "labels": {"app": "web2"}},
                          "spec": {"ports": [{"port": 53, "name": "dns"}], "selector": {"k": "v"}}});
        let got = apply("Service", Some(&existing), &cfg2, "mgr", T2).unwrap();
        assert_eq!(
            strip_mf(got.clone()),
            json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web", "labels": {"app": "web2", "team": "x"}},
                   "spec": {"ports": [{"port": 53, "name": "dns"}], "selector": {"k": "v"}, "clusterIP": "10.96.0.10"}})
        );
        let mf = got["metadata"]["managedFields"].as_array().unwrap();
        assert_eq!(mf.len(), 2);
        assert_eq!(mf[0]["manager"], "other");
        assert_eq!(mf[1]["time"], T2);
        assert_eq!(mf[1]["fieldsV1"], field_set("Service", &cfg2));
    }

    #[test]
    fn removal_respects_other_owners() {
        let cfg1 = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}, "data": {"a": "1", "b": "2"}});
        let mut obj = apply("ConfigMap", None, &cfg1, "one", T1).unwrap();
        // Manager "two" applies b as well: shared ownership.
        let cfg_two = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}, "data": {"b": "2"}});
        obj = apply("ConfigMap", Some(&obj), &cfg_two, "two", T1).unwrap();
        let cfg2 =
            json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}, "data": {}});
        let got = apply("ConfigMap", Some(&obj), &cfg2, "one", T2).unwrap();
        assert_eq!(
            got["data"],
            json!({"b": "2"}),
            "a removed, b kept for its other owner"
        );
    }

    #[test]
    fn errors() {
        let cases = vec![
            (
                json!([1]),
                "mgr",
                "the applied configuration must be a JSON or YAML object",
            ),
            (
                json!({"kind": "Service"}),
                "mgr",
                "apiVersion must be set in an applied configuration",
            ),
            (
                json!({"apiVersion": "v1", "kind": "Service"}),
                "",
                "fieldManager is required for apply requests: pass ?fieldManager=<name>",
            ),
            (
                json!({"apiVersion": "v1", "kind": "Pod"}),
                "mgr",
                "the applied configuration has kind \"Pod\", but the request is for Service",
            ),
        ];
        for (cfg, mgr, msg) in cases {
            assert_eq!(
                apply("Service", None, &cfg, mgr, T1).unwrap_err().message,
                msg
            );
        }
    }
}
