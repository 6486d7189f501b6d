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
//!   tracked, like upstream;
//! * conflicts: a field the configuration sets to a value different from the current one,
//!   owned by another manager (Apply or Update), is a conflict (409, upstream's message
//!   and `FieldManagerConflict` causes) unless `force` is set, in which case the other
//!   manager loses the field;
//! * [`record_update`] keeps `Update` entries for non-apply writes: the writer owns what
//!   it added or changed, others lose those fields, and fields that disappear are dropped
//!   from every entry.
//!
//! Not implemented: `status` subresource ownership (status is never tracked), and
//! upstream's `.` entries for maps created by an Update (see [`record_update`]).

use crate::patch::schema::{child, list_strategy, root, ListStrategy, Ty};
use crate::status::StatusError;
use serde_json::{json, Map, Value};
use std::fmt;

/// An applied configuration that cannot be applied: a bad request (400), or conflicts
/// with other managers' fields (409, retry with `force=true` to take them over).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApplyError {
    pub message: String,
    /// Non-empty for a field-manager conflict.
    pub conflicts: Vec<Conflict>,
}

/// One field another manager owns with a different value than the one applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conflict {
    /// upstream's `printManager`: `"kubectl"`, or `"m" using v1` for Update managers.
    pub manager: String,
    /// Upstream's field path syntax: `.spec.ports[port=80,protocol="TCP"].targetPort`.
    pub path: String,
}

impl ApplyError {
    /// The Status to answer with: 409 Conflict with `FieldManagerConflict` causes, or
    /// 400 BadRequest.
    pub fn status(&self) -> StatusError {
        if self.conflicts.is_empty() {
            return crate::status::bad_request(self.message.clone());
        }
        let causes: Vec<Value> = self
            .conflicts
            .iter()
            .map(|c| json!({"reason": "FieldManagerConflict", "message": format!("conflict with {}", c.manager), "field": c.path}))
            .collect();
        StatusError {
            code: 409,
            body: json!({
                "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                "message": self.message, "reason": "Conflict", "details": {"causes": causes}, "code": 409,
            }),
        }
    }
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
        conflicts: Vec::new(),
    })
}

/// Upstream's `getConflictMessage`.
fn conflict_message(conflicts: &[Conflict]) -> String {
    if let [c] = conflicts {
        return format!(
            "Apply failed with 1 conflict: conflict with {}: {}",
            c.manager, c.path
        );
    }
    let mut managers: Vec<&str> = conflicts.iter().map(|c| c.manager.as_str()).collect();
    managers.sort();
    managers.dedup();
    let mut lines = Vec::new();
    for m in managers {
        lines.push(format!("conflicts with {m}:"));
        for c in conflicts.iter().filter(|c| c.manager == m) {
            lines.push(format!("- {}", c.path));
        }
    }
    format!(
        "Apply failed with {} conflicts: {}",
        conflicts.len(),
        lines.join("\n")
    )
}

/// Upstream's `printManager`: Apply managers by name, Update managers with their
/// apiVersion and time.
fn print_manager(entry: &Value) -> String {
    let name = format!("{:?}", entry["manager"].as_str().unwrap_or(""));
    if entry["operation"] != "Update" {
        return name;
    }
    let av = entry["apiVersion"].as_str().unwrap_or("");
    match entry["time"].as_str() {
        Some(t) => format!("{name} using {av} at {t}"),
        None => format!("{name} using {av}"),
    }
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
        let sub = value_set(v, ty, k);
        // A map whose every field is untracked (metadata with only name and namespace)
        // owns nothing; an empty entry would wrongly mean "owns the whole map".
        let untracked_only = sub.as_object().is_some_and(Map::is_empty)
            && v.as_object().is_some_and(|m| !m.is_empty())
            && !atomic_map(ty, k);
        if !untracked_only {
            out.insert(format!("f:{k}"), sub);
        }
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
/// managedFields entry) over `existing` (None: create). With `force`, fields another
/// manager owns with a different value are taken over instead of reported as conflicts.
pub fn apply(
    kind: &str,
    existing: Option<&Value>,
    config: &Value,
    manager: &str,
    time: &str,
    force: bool,
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
    let set_map = set.as_object().cloned().unwrap_or_default();
    let is_mine = |e: &Value| e["manager"] == manager && e["operation"] == "Apply";

    let (mut obj, mut entries) = match existing {
        None => {
            let mut o = cfg.clone();
            o.remove("status");
            (Value::Object(o), Vec::new())
        }
        Some(existing) => {
            let Some(_) = existing.as_object() else {
                return aerr("the existing object is not a JSON object");
            };
            let mut obj = existing.clone();
            let entries = managed_fields(&obj);
            let others: Vec<Map<String, Value>> = entries
                .iter()
                .filter(|e| !is_mine(e))
                .filter_map(|e| e["fieldsV1"].as_object().cloned())
                .collect();
            let others_ref: Vec<&Map<String, Value>> = others.iter().collect();
            if let Some(prev) = entries
                .iter()
                .find(|e| is_mine(e))
                .and_then(|e| e["fieldsV1"].as_object())
            {
                remove_unapplied(&mut obj, prev, Some(&set_map), &others_ref);
            }
            let mut c = cfg.clone();
            c.remove("status");
            merge_into(&mut obj, &Value::Object(c), root(kind), "");

            // A field conflicts when another manager owns it and applying changes its value.
            let mut conflicts = Vec::new();
            let mut entries = entries;
            for path in leaves(&set_map) {
                if path.last().map(String::as_str) == Some(".") {
                    continue;
                }
                let before = value_at(existing, &path);
                if before.is_none() || before == value_at(&obj, &path) {
                    continue;
                }
                for e in entries.iter_mut().filter(|e| !is_mine(e)) {
                    let Some(fs) = e.get_mut("fieldsV1").and_then(Value::as_object_mut) else {
                        continue;
                    };
                    if set_contains(fs, &path) {
                        if force {
                            set_remove(fs, &path);
                        } else {
                            conflicts.push(Conflict {
                                manager: print_manager(e),
                                path: path_string(&path),
                            });
                        }
                    }
                }
            }
            if !conflicts.is_empty() {
                return Err(ApplyError {
                    message: conflict_message(&conflicts),
                    conflicts,
                });
            }
            (obj, entries)
        }
    };

    // Replace this manager's Apply entry; keep the others (minus forced-away fields, and
    // minus entries left with nothing).
    entries.retain(|e| !is_mine(e) && e["fieldsV1"].as_object().is_none_or(|m| !m.is_empty()));
    entries.push(json!({
        "manager": manager,
        "operation": "Apply",
        "apiVersion": api_version,
        "time": time,
        "fieldsType": "FieldsV1",
        "fieldsV1": set,
    }));
    set_managed_fields(&mut obj, entries);
    Ok(obj)
}

/// Records a non-apply write (create, update, patch) by `manager` in managedFields, as
/// upstream's field manager does with an `Update` entry: the manager takes ownership of
/// every field it added or changed (taking it away from other managers, without
/// conflict), and fields that no longer exist leave every entry. `old` is None on create.
///
/// The entries are taken from `old` (on create, from `new`): managedFields a client sends
/// in an update body are ignored.
///
/// Difference from upstream: maps owned as a whole on creation are listed by their
/// fields (`f:labels: {f:app: {}}`), without upstream's extra `.` entry for the map.
pub fn record_update(
    kind: &str,
    old: Option<&Value>,
    new: &Value,
    manager: &str,
    api_version: &str,
    time: &str,
) -> Value {
    let mut obj = new.clone();
    let new_set = field_set(kind, new)
        .as_object()
        .cloned()
        .unwrap_or_default();
    let changed: Vec<Vec<String>> = leaves(&new_set)
        .into_iter()
        .filter(|p| {
            let Some(old) = old else { return true };
            if p.last().map(String::as_str) == Some(".") {
                // A list item is "changed" only when it is new.
                return value_at(old, &p[..p.len() - 1]).is_none();
            }
            value_at(old, p) != value_at(new, p)
        })
        .collect();
    let is_mine = |e: &Value| e["manager"] == manager && e["operation"] == "Update";
    let mut entries = old
        .map(managed_fields)
        .unwrap_or_else(|| managed_fields(new));
    if !entries.iter().any(is_mine) && !changed.is_empty() {
        entries.push(json!({"manager": manager, "operation": "Update", "apiVersion": api_version, "time": time,
                            "fieldsType": "FieldsV1", "fieldsV1": {}}));
    }
    for e in entries.iter_mut() {
        let mine = is_mine(e);
        let Some(fs) = e.get_mut("fieldsV1").and_then(Value::as_object_mut) else {
            continue;
        };
        for p in &changed {
            if mine {
                set_insert(fs, p);
            } else {
                set_remove(fs, p);
            }
        }
        // Ownership of fields that are gone goes too.
        for p in leaves(&fs.clone()) {
            let target = if p.last().map(String::as_str) == Some(".") {
                &p[..p.len() - 1]
            } else {
                &p[..]
            };
            if value_at(new, target).is_none() {
                set_remove(fs, &p);
            }
        }
        if mine {
            e["time"] = json!(time);
            e["apiVersion"] = json!(api_version);
        }
    }
    entries.retain(|e| e["fieldsV1"].as_object().is_none_or(|m| !m.is_empty()));
    set_managed_fields(&mut obj, entries);
    obj
}

fn set_managed_fields(obj: &mut Value, entries: Vec<Value>) {
    let meta = obj
        .as_object_mut()
        .map(|o| o.entry("metadata").or_insert_with(|| json!({})));
    if let Some(Value::Object(meta)) = meta {
        if entries.is_empty() {
            meta.remove("managedFields");
        } else {
            meta.insert("managedFields".into(), Value::Array(entries));
        }
    }
}

/// Paths (label sequences) of the owned elements of a field set: entries that are empty
/// (a leaf) end the path at the entry; an entry holding `.` yields a path ending in `.`
/// (the element itself, e.g. a list item) besides its children.
fn leaves(set: &Map<String, Value>) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    fn walk(m: &Map<String, Value>, prefix: &mut Vec<String>, out: &mut Vec<Vec<String>>) {
        for (label, sub) in m {
            if label == "." {
                let mut p = prefix.clone();
                p.push(".".into());
                out.push(p);
                continue;
            }
            prefix.push(label.clone());
            match sub.as_object() {
                Some(s) if !s.is_empty() => walk(s, prefix, out),
                _ => out.push(prefix.clone()),
            }
            prefix.pop();
        }
    }
    walk(set, &mut Vec::new(), &mut out);
    out
}

fn set_contains(set: &Map<String, Value>, path: &[String]) -> bool {
    let Some((last, parents)) = path.split_last() else {
        return false;
    };
    let mut cur = set;
    for l in parents {
        match cur.get(l).and_then(Value::as_object) {
            Some(m) => cur = m,
            None => return false,
        }
    }
    match cur.get(last) {
        Some(Value::Object(m)) => last == "." || m.is_empty(),
        _ => false,
    }
}

fn set_insert(set: &mut Map<String, Value>, path: &[String]) {
    let Some((last, parents)) = path.split_last() else {
        return;
    };
    let mut cur = set;
    for l in parents {
        let entry = cur.entry(l.clone()).or_insert_with(|| json!({}));
        let Value::Object(m) = entry else { return };
        cur = m;
    }
    match cur.get_mut(last) {
        // Owned already, or a parent that keeps its children: add the element itself.
        Some(Value::Object(m)) if !m.is_empty() && last != "." => {
            m.insert(".".into(), json!({}));
        }
        Some(_) => {}
        None => {
            cur.insert(last.clone(), json!({}));
        }
    }
}

fn set_remove(set: &mut Map<String, Value>, path: &[String]) {
    let Some((first, rest)) = path.split_first() else {
        return;
    };
    if rest.is_empty() {
        match set.get_mut(first) {
            Some(Value::Object(m)) if m.keys().any(|k| k != ".") && first != "." => {
                m.remove(".");
            }
            _ => {
                set.remove(first);
            }
        }
        return;
    }
    if let Some(Value::Object(m)) = set.get_mut(first) {
        set_remove(m, rest);
        if m.is_empty() {
            set.remove(first);
        }
    }
}

/// The value a field-set path designates in an object (`.` designates the element the
/// path ends at).
fn value_at<'a>(obj: &'a Value, path: &[String]) -> Option<&'a Value> {
    let mut cur = obj;
    for label in path {
        if label == "." {
            continue;
        }
        cur = if let Some(f) = label.strip_prefix("f:") {
            cur.as_object()?.get(f)?
        } else if let Some(k) = label.strip_prefix("k:") {
            let Ok(Value::Object(key)) = serde_json::from_str::<Value>(k) else {
                return None;
            };
            let keys: Vec<&str> = key.keys().map(String::as_str).collect();
            cur.as_array()?.iter().find(|i| same_key(i, &key, &keys))?
        } else if let Some(v) = label.strip_prefix("v:") {
            let v: Value = serde_json::from_str(v).ok()?;
            cur.as_array()?.iter().find(|i| **i == v)?
        } else {
            return None;
        };
    }
    Some(cur)
}

/// Upstream's `fieldpath.Path.String()`: `.spec.ports[port=80,protocol="TCP"].name`,
/// `.metadata.finalizers[="a"]`.
fn path_string(path: &[String]) -> String {
    let mut s = String::new();
    for label in path {
        if let Some(f) = label.strip_prefix("f:") {
            s.push('.');
            s.push_str(f);
        } else if let Some(k) = label.strip_prefix("k:") {
            if let Ok(Value::Object(key)) = serde_json::from_str::<Value>(k) {
                let parts: Vec<String> = key.iter().map(|(k, v)| format!("{k}={v}")).collect();
                s.push_str(&format!("[{}]", parts.join(",")));
            }
        } else if let Some(v) = label.strip_prefix("v:") {
            s.push_str(&format!("[={v}]"));
        }
    }
    s
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
        let created = apply("Service", None, &cfg1, "mgr", T1, false).unwrap();
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
        let got = apply("Service", Some(&existing), &cfg2, "mgr", T2, false).unwrap();
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
        let mut obj = apply("ConfigMap", None, &cfg1, "one", T1, false).unwrap();
        // Manager "two" applies b as well: shared ownership.
        let cfg_two = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}, "data": {"b": "2"}});
        obj = apply("ConfigMap", Some(&obj), &cfg_two, "two", T1, false).unwrap();
        let cfg2 =
            json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}, "data": {}});
        let got = apply("ConfigMap", Some(&obj), &cfg2, "one", T2, false).unwrap();
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
                apply("Service", None, &cfg, mgr, T1, false)
                    .unwrap_err()
                    .message,
                msg
            );
        }
    }

    fn svc(spec: Value) -> Value {
        json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web", "namespace": "default"}, "spec": spec})
    }

    #[test]
    fn conflicts_and_force() {
        // "kubectl-client-side-apply" created the Service (an Update entry owns everything).
        let created = record_update(
            "Service",
            None,
            &svc(
                json!({"ports": [{"port": 80, "protocol": "TCP", "targetPort": 8080}], "type": "ClusterIP"}),
            ),
            "kubectl-client-side-apply",
            "v1",
            T1,
        );
        let cases: Vec<(Value, bool, Result<Value, &str>)> = vec![
            // Same value: shared ownership, no conflict.
            (svc(json!({"ports": [{"port": 80, "targetPort": 8080}]})), false, Ok(json!(8080))),
            // Different value owned by the Update manager: conflict.
            (
                svc(json!({"ports": [{"port": 80, "targetPort": 9090}]})),
                false,
                Err("Apply failed with 1 conflict: conflict with \"kubectl-client-side-apply\" using v1 at 2026-01-01T00:00:00Z: .spec.ports[port=80,protocol=\"TCP\"].targetPort"),
            ),
            // force takes the field over.
            (svc(json!({"ports": [{"port": 80, "targetPort": 9090}]})), true, Ok(json!(9090))),
            // A new field nobody owns: no conflict.
            (svc(json!({"ports": [{"port": 80, "targetPort": 8080}], "sessionAffinity": "ClientIP"})), false, Ok(json!(8080))),
        ];
        for (cfg, force, want) in cases {
            let got = apply("Service", Some(&created), &cfg, "mgr", T2, force);
            match (got, want) {
                (Ok(obj), Ok(tp)) => {
                    assert_eq!(obj["spec"]["ports"][0]["targetPort"], tp, "{cfg}");
                    let csa = &obj["metadata"]["managedFields"][0];
                    let owned = csa["fieldsV1"]["f:spec"]["f:ports"]
                        ["k:{\"port\":80,\"protocol\":\"TCP\"}"]
                        .get("f:targetPort")
                        .is_some();
                    // After force, the old owner no longer owns the field.
                    assert_eq!(owned, !force, "{cfg}");
                }
                (Err(e), Err(msg)) => {
                    assert_eq!(e.message, msg);
                    let st = e.status();
                    assert_eq!(st.code, 409);
                    assert_eq!(st.reason(), "Conflict");
                    assert_eq!(
                        st.body["details"]["causes"],
                        json!([{"reason": "FieldManagerConflict",
                                "message": "conflict with \"kubectl-client-side-apply\" using v1 at 2026-01-01T00:00:00Z",
                                "field": ".spec.ports[port=80,protocol=\"TCP\"].targetPort"}])
                    );
                }
                (got, want) => panic!("{cfg}: got {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn several_conflicts_message() {
        let base = apply("ConfigMap", None, &json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}, "data": {"a": "1", "b": "1"}}), "one", T1, false).unwrap();
        let base = apply("ConfigMap", Some(&base), &json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}, "data": {"b": "1"}}), "two", T1, false).unwrap();
        let err = apply("ConfigMap", Some(&base), &json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}, "data": {"a": "2", "b": "2"}}), "three", T2, false).unwrap_err();
        assert_eq!(
            err.message,
            "Apply failed with 3 conflicts: conflicts with \"one\":\n- .data.a\n- .data.b\nconflicts with \"two\":\n- .data.b"
        );
        assert_eq!(err.conflicts.len(), 3);
        assert_eq!(
            apply("ConfigMap", None, &json!([]), "m", T1, false)
                .unwrap_err()
                .status()
                .code,
            400
        );
    }

    #[test]
    fn update_ownership() {
        let v1 = svc(json!({"ports": [{"port": 80, "name": "http"}], "selector": {"app": "web"}}));
        let created = record_update("Service", None, &v1, "creator", "v1", T1);
        assert_eq!(
            created["metadata"]["managedFields"],
            json!([{"manager": "creator", "operation": "Update", "apiVersion": "v1", "time": T1, "fieldsType": "FieldsV1",
                    "fieldsV1": {"f:spec": {"f:ports": {"k:{\"port\":80,\"protocol\":\"TCP\"}": {".": {}, "f:name": {}, "f:port": {}}}, "f:selector": {}}}}])
        );
        // An editor changes the port name and adds a label: it takes those two fields.
        let mut v2 = created.clone();
        v2["spec"]["ports"][0]["name"] = json!("web");
        v2["metadata"]["labels"] = json!({"team": "a"});
        let edited = record_update("Service", Some(&created), &v2, "editor", "v1", T2);
        let mf = edited["metadata"]["managedFields"].as_array().unwrap();
        assert_eq!(mf.len(), 2);
        assert_eq!(
            mf[0]["fieldsV1"],
            json!({"f:spec": {"f:ports": {"k:{\"port\":80,\"protocol\":\"TCP\"}": {".": {}, "f:port": {}}}, "f:selector": {}}})
        );
        assert_eq!(
            mf[1]["fieldsV1"],
            json!({"f:metadata": {"f:labels": {"f:team": {}}}, "f:spec": {"f:ports": {"k:{\"port\":80,\"protocol\":\"TCP\"}": {"f:name": {}}}}})
        );
        // Emptying the port list drops everyone's ownership of the old port; the pruner
        // owns the (now empty) list it set, the editor keeps its label, the creator keeps
        // the selector.
        let mut v3 = edited.clone();
        v3["spec"]["ports"] = json!([]);
        let pruned = record_update("Service", Some(&edited), &v3, "pruner", "v1", T2);
        let mf = pruned["metadata"]["managedFields"].as_array().unwrap();
        let sets: Vec<(&str, &Value)> = mf
            .iter()
            .map(|e| (e["manager"].as_str().unwrap(), &e["fieldsV1"]))
            .collect();
        assert_eq!(
            sets,
            [
                ("creator", &json!({"f:spec": {"f:selector": {}}})),
                (
                    "editor",
                    &json!({"f:metadata": {"f:labels": {"f:team": {}}}})
                ),
                ("pruner", &json!({"f:spec": {"f:ports": {}}})),
            ]
        );
        // Writing the same object again changes nothing and adds no entry.
        let again = record_update("Service", Some(&pruned), &pruned, "noop", "v1", T2);
        assert_eq!(
            again["metadata"]["managedFields"],
            pruned["metadata"]["managedFields"]
        );
    }

    #[test]
    fn field_path_strings() {
        let cases: &[(&[&str], &str)] = &[
            (
                &[
                    "f:spec",
                    "f:ports",
                    "k:{\"port\":80,\"protocol\":\"TCP\"}",
                    "f:name",
                ],
                ".spec.ports[port=80,protocol=\"TCP\"].name",
            ),
            (
                &["f:metadata", "f:finalizers", "v:\"a\""],
                ".metadata.finalizers[=\"a\"]",
            ),
            (
                &["f:metadata", "f:labels", "f:app.kubernetes.io/name"],
                ".metadata.labels.app.kubernetes.io/name",
            ),
        ];
        for (labels, want) in cases {
            let p: Vec<String> = labels.iter().map(|s| s.to_string()).collect();
            assert_eq!(path_string(&p), *want);
        }
    }
}
