//! The PATCH body types an apiserver accepts, applied to `serde_json::Value` objects:
//!
//! * `application/json-patch+json`: RFC 6902 JSON patch (the `json-patch` crate);
//! * `application/merge-patch+json`: RFC 7386 JSON merge patch (the `json-patch` crate);
//! * `application/strategic-merge-patch+json`: Kubernetes strategic merge patch, written
//!   here after upstream's `k8s.io/apimachinery/pkg/util/strategicpatch` (server side:
//!   `StrategicMergePatch(original, patch, schema)`), driven by the per-field patch
//!   metadata of [`schema`];
//! * `application/apply-patch+yaml` (server-side apply) lives in [`crate::apply`].
//!
//! Strategic merge semantics implemented:
//! * maps merge recursively; `null` deletes a key;
//! * lists follow the field's strategy: atomic (replace, the upstream default for a list
//!   without a `patchStrategy` tag; directive keys inside are dropped), merge by key (items
//!   with the same merge key value are merged, others added), or merge of primitives (set
//!   union); merged lists are ordered like upstream's `normalizeElementOrder`;
//! * directives: `$patch: replace|delete` in maps and `replace|delete` in list items
//!   (`merge` is accepted as a no-op in maps and rejected in lists, as upstream),
//!   `$retainKeys`, `$setElementOrder/<field>`, `$deleteFromPrimitiveList/<field>`.

use serde_json::{Map, Value};
use std::fmt;

/// Which of the four patch formats a request body is, from its Content-Type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PatchType {
    Json,
    Merge,
    StrategicMerge,
    Apply,
}

impl PatchType {
    /// Parses a Content-Type header value (parameters such as `; charset=utf-8` ignored).
    pub fn from_content_type(ct: &str) -> Option<Self> {
        match ct.split(';').next().unwrap_or("").trim() {
            "application/json-patch+json" => Some(PatchType::Json),
            "application/merge-patch+json" => Some(PatchType::Merge),
            "application/strategic-merge-patch+json" => Some(PatchType::StrategicMerge),
            "application/apply-patch+yaml" | "application/apply-patch+cbor" => {
                Some(PatchType::Apply)
            }
            _ => None,
        }
    }
}

/// A patch that could not be applied. The server answers these with 400 BadRequest
/// (or 422 for JSON patch `test` failures, as upstream does for a failed test op).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PatchError {
    pub message: String,
}

impl fmt::Display for PatchError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for PatchError {}

fn perr<T>(message: impl Into<String>) -> Result<T, PatchError> {
    Err(PatchError {
        message: message.into(),
    })
}

/// RFC 7386 JSON merge patch: maps merge, `null` deletes, every other value (lists
/// included) replaces.
pub fn json_merge_patch(original: &Value, patch: &Value) -> Value {
    let mut doc = original.clone();
    json_patch::merge(&mut doc, patch);
    doc
}

/// RFC 6902 JSON patch. `patch` must be a JSON array of operations.
pub fn json_patch(original: &Value, patch: &Value) -> Result<Value, PatchError> {
    let ops: json_patch::Patch = serde_json::from_value(patch.clone()).map_err(|e| PatchError {
        message: format!("invalid JSON patch: {e}"),
    })?;
    let mut doc = original.clone();
    json_patch::patch(&mut doc, &ops).map_err(|e| PatchError {
        message: format!("the JSON patch could not be applied: {e}"),
    })?;
    Ok(doc)
}

/// Applies a PATCH body of the given type to `original` (an object of `kind`).
/// `Apply` bodies are not handled here: see [`crate::apply::apply`], which also needs the
/// field manager.
pub fn apply_patch(
    kind: &str,
    patch_type: PatchType,
    original: &Value,
    patch: &Value,
) -> Result<Value, PatchError> {
    match patch_type {
        PatchType::Json => json_patch(original, patch),
        PatchType::Merge => Ok(json_merge_patch(original, patch)),
        PatchType::StrategicMerge => strategic_merge_patch(kind, original, patch),
        PatchType::Apply => perr(
            "server-side apply patches are applied with apply::apply, which needs a field manager",
        ),
    }
}

/// Patch metadata of the served kinds: for every list field, its strategy and merge key,
/// transcribed from the `patchStrategy`/`patchMergeKey` struct tags of upstream's
/// `k8s.io/api` (core/v1, apps/v1, batch/v1, discovery/v1, coordination/v1) and
/// `k8s.io/apimachinery` (ObjectMeta) `types.go`.
///
/// Covered (everything else is a list without a tag, hence atomic upstream):
/// * ObjectMeta: `finalizers` (merge, primitive set), `ownerReferences` (merge, key `uid`);
/// * PodSpec (Pod `spec`, and `spec.template.spec` of Deployment, ReplicaSet, DaemonSet,
///   Job): `containers`, `initContainers`, `ephemeralContainers` (key `name`), `volumes`
///   (key `name`, retainKeys), `imagePullSecrets` (key `name`), `hostAliases` (key `ip`),
///   `topologySpreadConstraints` (key `topologyKey`), `resourceClaims` (key `name`,
///   retainKeys), `schedulingGates` (key `name`); `tolerations`, `readinessGates` atomic;
/// * Container: `ports` (key `containerPort`), `env` (key `name`), `volumeMounts` (key
///   `mountPath`), `volumeDevices` (key `devicePath`); `envFrom`, `command`, `args` atomic;
/// * PodStatus: `conditions` (key `type`), `podIPs`, `hostIPs` (key `ip`);
/// * ServiceSpec `ports` (key `port`); Service, Namespace, Node, Deployment, ReplicaSet,
///   DaemonSet, Job status `conditions` (key `type`); NodeStatus `addresses` (key `type`);
///   NodeSpec `podCIDRs` (merge, primitive set); `taints` atomic;
/// * Endpoints `subsets` and EndpointSlice `endpoints`/`ports` are atomic upstream.
pub mod schema {
    /// How a list field is patched.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum ListStrategy {
        /// No `patchStrategy` tag: the patch's list replaces the original.
        Atomic,
        /// `patchStrategy:"merge" patchMergeKey:"<key>"` on a list of objects.
        MergeByKey(&'static str),
        /// `patchStrategy:"merge"` on a list of scalars: set union.
        MergePrimitives,
    }

    /// The struct type at a position in an object, as far as patch metadata matters.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum Ty {
        Root(&'static str),
        ObjectMeta,
        PodTemplateSpec,
        PodSpec,
        Container,
        PodStatus,
        ServiceSpec,
        NodeSpec,
        NodeStatus,
        /// A workload spec (`Deployment`, `ReplicaSet`, `DaemonSet`, `Job`) with a
        /// `template` pod template.
        WorkloadSpec,
        /// A status whose only tagged field is `conditions` (key `type`).
        ConditionsStatus,
        /// Anything else: every list is atomic.
        Other,
    }

    /// The root type for a kind.
    pub fn root(kind: &str) -> Ty {
        match kind {
            "Pod" => Ty::Root("Pod"),
            "Service" => Ty::Root("Service"),
            "Node" => Ty::Root("Node"),
            "Deployment" | "ReplicaSet" | "DaemonSet" | "Job" | "StatefulSet" => {
                Ty::Root("Workload")
            }
            "Namespace" => Ty::Root("Namespace"),
            _ => Ty::Root("Other"),
        }
    }

    /// The type of `field` inside a `parent` (list item types for list fields).
    pub fn child(parent: Ty, field: &str) -> Ty {
        match (parent, field) {
            (Ty::Root(_), "metadata") => Ty::ObjectMeta,
            (Ty::Root("Pod"), "spec") => Ty::PodSpec,
            (Ty::Root("Pod"), "status") => Ty::PodStatus,
            (Ty::Root("Service"), "spec") => Ty::ServiceSpec,
            (Ty::Root("Node"), "spec") => Ty::NodeSpec,
            (Ty::Root("Node"), "status") => Ty::NodeStatus,
            (Ty::Root("Workload"), "spec") => Ty::WorkloadSpec,
            (Ty::Root("Workload" | "Service" | "Namespace"), "status") => Ty::ConditionsStatus,
            (Ty::WorkloadSpec, "template") => Ty::PodTemplateSpec,
            (Ty::PodTemplateSpec, "metadata") => Ty::ObjectMeta,
            (Ty::PodTemplateSpec, "spec") => Ty::PodSpec,
            (Ty::PodSpec, "containers" | "initContainers" | "ephemeralContainers") => Ty::Container,
            _ => Ty::Other,
        }
    }

    /// The patch strategy of list field `field` inside `parent`.
    pub fn list_strategy(parent: Ty, field: &str) -> ListStrategy {
        use ListStrategy::*;
        match (parent, field) {
            (Ty::ObjectMeta, "finalizers") => MergePrimitives,
            (Ty::ObjectMeta, "ownerReferences") => MergeByKey("uid"),
            (Ty::PodSpec, "containers" | "initContainers" | "ephemeralContainers") => {
                MergeByKey("name")
            }
            (
                Ty::PodSpec,
                "volumes" | "imagePullSecrets" | "resourceClaims" | "schedulingGates",
            ) => MergeByKey("name"),
            (Ty::PodSpec, "hostAliases") => MergeByKey("ip"),
            (Ty::PodSpec, "topologySpreadConstraints") => MergeByKey("topologyKey"),
            (Ty::Container, "ports") => MergeByKey("containerPort"),
            (Ty::Container, "env") => MergeByKey("name"),
            (Ty::Container, "volumeMounts") => MergeByKey("mountPath"),
            (Ty::Container, "volumeDevices") => MergeByKey("devicePath"),
            (Ty::PodStatus, "conditions") => MergeByKey("type"),
            (Ty::PodStatus, "podIPs" | "hostIPs") => MergeByKey("ip"),
            (Ty::ServiceSpec, "ports") => MergeByKey("port"),
            (Ty::NodeSpec, "podCIDRs") => MergePrimitives,
            (Ty::NodeStatus, "conditions" | "addresses") => MergeByKey("type"),
            (Ty::ConditionsStatus, "conditions") => MergeByKey("type"),
            _ => Atomic,
        }
    }

    /// Strategy of the list at a dotted path of map keys (`spec.template.spec.containers`),
    /// list positions left out.
    pub fn strategy_at(kind: &str, path: &[&str]) -> ListStrategy {
        let Some((last, parents)) = path.split_last() else {
            return ListStrategy::Atomic;
        };
        let ty = parents.iter().fold(root(kind), |t, f| child(t, f));
        list_strategy(ty, last)
    }
}

use schema::{child, list_strategy, root, ListStrategy, Ty};

const DIRECTIVE: &str = "$patch";
const RETAIN_KEYS: &str = "$retainKeys";
const SET_ORDER_PREFIX: &str = "$setElementOrder/";
const DELETE_PRIMITIVE_PREFIX: &str = "$deleteFromPrimitiveList/";

/// Kubernetes strategic merge patch of `patch` onto `original`, an object of `kind`.
///
/// Follows upstream's `StrategicMergeMapPatch` (merge options `MergeParallelList` and
/// `IgnoreUnmatchedNulls`), including its list ordering: after a merge, the items named
/// by the patch come in the patch's order, the server-only items keep their relative
/// order, and the two are interleaved by their positions in the original list
/// (`normalizeElementOrder`); `$setElementOrder` then reorders the same way.
///
/// Deliberate differences: a value for a field the original lacks has its directives
/// resolved (merged into an empty value) instead of being stored verbatim with `$patch`
/// items in it; and `$patch: merge` in a map is accepted as a no-op (upstream rejects
/// it as an unknown patch type).
pub fn strategic_merge_patch(
    kind: &str,
    original: &Value,
    patch: &Value,
) -> Result<Value, PatchError> {
    let (Value::Object(o), Value::Object(p)) = (original, patch) else {
        return perr("a strategic merge patch and the object it patches must both be JSON objects");
    };
    let merged = merge_map(o.clone(), p, root(kind), "")?;
    Ok(Value::Object(merged.unwrap_or_default()))
}

fn join(path: &str, k: &str) -> String {
    if path.is_empty() {
        k.to_string()
    } else {
        format!("{path}.{k}")
    }
}

/// Merges a patch map into an original map. `Ok(None)` means the map was deleted with
/// `$patch: delete` (upstream then leaves an empty map).
fn merge_map(
    mut original: Map<String, Value>,
    patch: &Map<String, Value>,
    ty: Ty,
    path: &str,
) -> Result<Option<Map<String, Value>>, PatchError> {
    match patch.get(DIRECTIVE) {
        None => {}
        Some(Value::String(d)) if d == "replace" => {
            // Replace this map wholesale with the patch (minus the directive), resolving
            // directives nested inside it against an empty original.
            let mut p = patch.clone();
            p.remove(DIRECTIVE);
            return merge_map(Map::new(), &p, ty, path);
        }
        Some(Value::String(d)) if d == "delete" => return Ok(None),
        Some(Value::String(d)) if d == "merge" => {}
        Some(other) => {
            return perr(format!(
                "unknown patch type: {other} in map at {:?}: expected one of \"replace\", \"merge\", \"delete\"",
                if path.is_empty() { "<root>" } else { path }
            ))
        }
    }

    if let Some(retain) = patch.get(RETAIN_KEYS) {
        let Some(keys) = retain.as_array() else {
            return perr(format!(
                "{RETAIN_KEYS} at {path:?} must be a list of field names, got {retain}"
            ));
        };
        let keys: Vec<&str> = keys.iter().filter_map(Value::as_str).collect();
        // Upstream: every non-directive, non-null key of the patch must be listed.
        for (k, v) in patch {
            if k.starts_with('$') || v.is_null() {
                continue;
            }
            if !keys.contains(&k.as_str()) {
                return perr(format!(
                    "{RETAIN_KEYS} at {path:?} does not list {k:?}, which the patch sets: add it to {RETAIN_KEYS}"
                ));
            }
        }
        original.retain(|k, _| keys.contains(&k.as_str()));
    }

    // `$setElementOrder/<field>` first, as upstream's mergePatchIntoOriginal: merge the
    // field's patch list (if any), then impose the order; the field is then done.
    let mut done: Vec<&str> = Vec::new();
    for (k, order) in patch {
        let Some(field) = k.strip_prefix(SET_ORDER_PREFIX) else {
            continue;
        };
        let Some(order) = order.as_array() else {
            return perr(format!("{k} at {path:?} must be a list, got {order}"));
        };
        let here = join(path, field);
        let orig_list = match original.get(field) {
            Some(Value::Array(a)) => Some(a.clone()),
            Some(other) if !other.is_null() => {
                return perr(format!(
                    "{here}: expected a list in the object, got {other}"
                ))
            }
            _ => None,
        };
        let merged = match (orig_list.clone(), patch.get(field)) {
            (Some(o), None) => o,
            (o, Some(Value::Array(p))) => merge_list(o.unwrap_or_default(), p, ty, field, &here)?,
            (None, None) => continue,
            (_, Some(other)) => {
                return perr(format!("{here}: expected a list in the patch, got {other}"))
            }
        };
        let key = match list_strategy(ty, field) {
            ListStrategy::MergeByKey(key) => Some(key),
            _ => None,
        };
        let ordered = normalize_element_order(merged, order, &orig_list.unwrap_or_default(), key);
        original.insert(field.to_string(), Value::Array(ordered));
        done.push(field);
    }

    for (k, pv) in patch {
        if k == DIRECTIVE
            || k == RETAIN_KEYS
            || k.starts_with(SET_ORDER_PREFIX)
            || done.contains(&k.as_str())
        {
            continue;
        }
        if let Some(field) = k.strip_prefix(DELETE_PRIMITIVE_PREFIX) {
            let Some(remove) = pv.as_array() else {
                return perr(format!("{k} at {path:?} must be a list, got {pv}"));
            };
            if let Some(Value::Array(list)) = original.get_mut(field) {
                list.retain(|item| !remove.contains(item));
            }
            continue;
        }
        let here = join(path, k);
        if pv.is_null() {
            original.remove(k);
            continue;
        }
        let cur = original.remove(k);
        let merged = match (cur, pv) {
            (Some(Value::Object(o)), Value::Object(p)) => {
                merge_map(o, p, child(ty, k), &here)?.map(Value::Object)
            }
            (None | Some(Value::Null), Value::Object(p)) => {
                merge_map(Map::new(), p, child(ty, k), &here)?.map(Value::Object)
            }
            (Some(Value::Array(o)), Value::Array(p)) => {
                Some(Value::Array(merge_list(o, p, ty, k, &here)?))
            }
            (None | Some(Value::Null), Value::Array(p)) => {
                Some(Value::Array(merge_list(Vec::new(), p, ty, k, &here)?))
            }
            // A scalar, or a change of type: the patch value replaces.
            (_, p) => Some(strip_directives(p)),
        };
        // A map deleted with `$patch: delete` is left empty, like upstream.
        original.insert(
            k.clone(),
            merged.unwrap_or_else(|| Value::Object(Map::new())),
        );
    }
    Ok(Some(original))
}

/// Removes directive keys from a value that is copied in as-is.
fn strip_directives(v: &Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.iter()
                .filter(|(k, _)| !k.starts_with('$'))
                .map(|(k, v)| (k.clone(), strip_directives(v)))
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.iter().map(strip_directives).collect()),
        other => other.clone(),
    }
}

/// Upstream's `mergeSliceHandler`/`mergeSlice`.
fn merge_list(
    original: Vec<Value>,
    patch: &[Value],
    parent: Ty,
    field: &str,
    path: &str,
) -> Result<Vec<Value>, PatchError> {
    match list_strategy(parent, field) {
        // No merge strategy: the patch list replaces the original.
        ListStrategy::Atomic => Ok(patch.iter().map(strip_directives).collect()),
        ListStrategy::MergePrimitives => {
            if patch.iter().any(|v| v.is_object() || v.is_array()) {
                return perr(format!(
                    "{path}: a list of values with merge strategy must hold scalars, got {}",
                    Value::Array(patch.to_vec())
                ));
            }
            let mut merged = original.clone();
            for v in patch {
                if !merged.contains(v) {
                    merged.push(v.clone());
                }
            }
            Ok(normalize_element_order(merged, patch, &original, None))
        }
        ListStrategy::MergeByKey(key) => {
            // Special elements first (mergeSliceWithSpecialElements).
            let mut original = original;
            let mut items: Vec<&Map<String, Value>> = Vec::new();
            let mut replace = false;
            for item in patch {
                let Some(m) = item.as_object() else {
                    return perr(format!(
                        "{path}: list items must be objects with merge key {key:?}, got {item}"
                    ));
                };
                match m.get(DIRECTIVE) {
                    None => items.push(m),
                    Some(Value::String(d)) if d == "delete" => {
                        let Some(kv) = m.get(key) else {
                            return perr(format!(
                                "{path}: map: {item} does not contain declared merge key: {key}"
                            ));
                        };
                        original.retain(|o| o.get(key) != Some(kv));
                    }
                    Some(Value::String(d)) if d == "replace" => replace = true,
                    Some(Value::String(d)) if d == "merge" => {
                        return perr(format!(
                            "{path}: merging lists cannot yet be specified in the patch"
                        ))
                    }
                    Some(other) => {
                        return perr(format!(
                            "{path}: unknown patch type: {other} in list item {item}"
                        ))
                    }
                }
            }
            let item_ty = child(parent, field);
            if replace {
                // The list becomes the patch's ordinary items.
                return items
                    .into_iter()
                    .map(|m| {
                        Ok(Value::Object(
                            merge_map(Map::new(), m, item_ty, path)?.unwrap_or_default(),
                        ))
                    })
                    .collect();
            }
            // mergeSliceWithoutSpecialElements: merge by key or append.
            let base = original.clone();
            let mut merged = original;
            for m in &items {
                let Some(kv) = m.get(key) else {
                    return perr(format!(
                        "{path}: map: {} does not contain declared merge key: {key}",
                        Value::Object((*m).clone())
                    ));
                };
                match merged.iter().position(|o| o.get(key) == Some(kv)) {
                    Some(i) => {
                        let o = match std::mem::take(&mut merged[i]) {
                            Value::Object(o) => o,
                            _ => Map::new(),
                        };
                        merged[i] =
                            Value::Object(merge_map(o, m, item_ty, path)?.unwrap_or_default());
                    }
                    None => merged.push(Value::Object(
                        merge_map(Map::new(), m, item_ty, path)?.unwrap_or_default(),
                    )),
                }
            }
            let order: Vec<Value> = items.iter().map(|m| Value::Object((*m).clone())).collect();
            Ok(normalize_element_order(merged, &order, &base, Some(key)))
        }
    }
}

/// The identity of a list item: its merge key value, or the value itself for scalars.
fn identity(v: &Value, key: Option<&str>) -> Option<Value> {
    match key {
        Some(k) => v.get(k).cloned(),
        None => Some(v.clone()),
    }
}

fn index_in(list: &[Value], v: &Value, key: Option<&str>) -> Option<usize> {
    let id = identity(v, key)?;
    list.iter()
        .position(|o| identity(o, key).as_ref() == Some(&id))
}

/// Upstream's `normalizeElementOrder`: splits `merged` into the items `order` names
/// (sorted by `order`) and the server-only items (sorted by `server_order`), then
/// interleaves them with `mergeSortedSlice`: a server-only item goes first only when both
/// it and the next patch item are in `server_order` and it comes earlier there.
fn normalize_element_order(
    merged: Vec<Value>,
    order: &[Value],
    server_order: &[Value],
    key: Option<&str>,
) -> Vec<Value> {
    let (mut named, mut server_only): (Vec<Value>, Vec<Value>) = merged
        .into_iter()
        .partition(|v| index_in(order, v, key).is_some());
    sort_by_order(&mut named, order, key);
    sort_by_order(&mut server_only, server_order, key);
    let mut out = Vec::with_capacity(named.len() + server_only.len());
    let (mut left, mut right) = (
        server_only.into_iter().peekable(),
        named.into_iter().peekable(),
    );
    loop {
        let take_left = match (left.peek(), right.peek()) {
            (None, None) => break,
            (Some(_), None) => true,
            (None, Some(_)) => false,
            (Some(l), Some(r)) => match (
                index_in(server_order, l, key),
                index_in(server_order, r, key),
            ) {
                (Some(li), Some(ri)) => li < ri,
                _ => false,
            },
        };
        let next = if take_left { left.next() } else { right.next() };
        out.extend(next);
    }
    out
}

/// Upstream's `normalizeSliceOrder`: items found in `order` are sorted by it; the others
/// keep their slots.
fn sort_by_order(list: &mut [Value], order: &[Value], key: Option<&str>) {
    let slots: Vec<usize> = (0..list.len())
        .filter(|&i| index_in(order, &list[i], key).is_some())
        .collect();
    let mut ordered: Vec<Value> = slots.iter().map(|&i| list[i].clone()).collect();
    ordered.sort_by_key(|v| index_in(order, v, key));
    for (slot, v) in slots.into_iter().zip(ordered) {
        list[slot] = v;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn content_types() {
        let cases = [
            ("application/json-patch+json", Some(PatchType::Json)),
            ("application/merge-patch+json", Some(PatchType::Merge)),
            (
                "application/strategic-merge-patch+json",
                Some(PatchType::StrategicMerge),
            ),
            (
                "application/strategic-merge-patch+json; charset=utf-8",
                Some(PatchType::StrategicMerge),
            ),
            ("application/apply-patch+yaml", Some(PatchType::Apply)),
            ("application/json", None),
        ];
        for (ct, want) in cases {
            assert_eq!(PatchType::from_content_type(ct), want, "{ct}");
        }
    }

    #[test]
    fn merge_patch_rfc7386() {
        // Examples from RFC 7386 appendix A.
        let cases = [
            (json!({"a": "b"}), json!({"a": "c"}), json!({"a": "c"})),
            (
                json!({"a": "b"}),
                json!({"b": "c"}),
                json!({"a": "b", "b": "c"}),
            ),
            (json!({"a": "b"}), json!({"a": null}), json!({})),
            (
                json!({"a": [{"b": "c"}]}),
                json!({"a": [1]}),
                json!({"a": [1]}),
            ),
            (
                json!({"a": {"b": "c"}}),
                json!({"a": {"b": "d", "c": null}}),
                json!({"a": {"b": "d"}}),
            ),
            (
                json!({"e": null}),
                json!({"a": 1}),
                json!({"e": null, "a": 1}),
            ),
        ];
        for (orig, patch, want) in cases {
            assert_eq!(json_merge_patch(&orig, &patch), want, "{patch}");
            assert_eq!(
                apply_patch("Service", PatchType::Merge, &orig, &patch).unwrap(),
                want
            );
        }
    }

    #[test]
    fn json_patch_rfc6902() {
        let orig = json!({"metadata": {"labels": {"a": "1"}}, "spec": {"ports": [{"port": 80}]}});
        let cases: Vec<(Value, Result<Value, &str>)> = vec![
            (
                json!([{"op": "add", "path": "/metadata/labels/b", "value": "2"}]),
                Ok(
                    json!({"metadata": {"labels": {"a": "1", "b": "2"}}, "spec": {"ports": [{"port": 80}]}}),
                ),
            ),
            (
                json!([{"op": "replace", "path": "/spec/ports/0/port", "value": 81}]),
                Ok(json!({"metadata": {"labels": {"a": "1"}}, "spec": {"ports": [{"port": 81}]}})),
            ),
            (
                json!([{"op": "remove", "path": "/metadata/labels"}]),
                Ok(json!({"metadata": {}, "spec": {"ports": [{"port": 80}]}})),
            ),
            (
                json!([{"op": "test", "path": "/metadata/labels/a", "value": "2"}]),
                Err("the JSON patch could not be applied"),
            ),
            (
                json!([{"op": "remove", "path": "/nope"}]),
                Err("the JSON patch could not be applied"),
            ),
            (json!({"op": "add"}), Err("invalid JSON patch")),
        ];
        for (patch, want) in cases {
            match (json_patch(&orig, &patch), want) {
                (Ok(got), Ok(w)) => assert_eq!(got, w, "{patch}"),
                (Err(e), Err(prefix)) => assert!(e.message.starts_with(prefix), "{patch}: {e}"),
                (got, want) => panic!("{patch}: got {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn schema_table() {
        use schema::strategy_at;
        let cases: &[(&str, &str, ListStrategy)] = &[
            ("Service", "spec.ports", ListStrategy::MergeByKey("port")),
            ("Service", "spec.externalIPs", ListStrategy::Atomic),
            (
                "Service",
                "metadata.finalizers",
                ListStrategy::MergePrimitives,
            ),
            (
                "Service",
                "metadata.ownerReferences",
                ListStrategy::MergeByKey("uid"),
            ),
            (
                "Service",
                "status.conditions",
                ListStrategy::MergeByKey("type"),
            ),
            ("Pod", "spec.containers", ListStrategy::MergeByKey("name")),
            (
                "Pod",
                "spec.containers.env",
                ListStrategy::MergeByKey("name"),
            ),
            (
                "Pod",
                "spec.containers.ports",
                ListStrategy::MergeByKey("containerPort"),
            ),
            (
                "Pod",
                "spec.initContainers.volumeMounts",
                ListStrategy::MergeByKey("mountPath"),
            ),
            ("Pod", "spec.volumes", ListStrategy::MergeByKey("name")),
            ("Pod", "spec.tolerations", ListStrategy::Atomic),
            ("Pod", "spec.containers.command", ListStrategy::Atomic),
            (
                "Pod",
                "spec.imagePullSecrets",
                ListStrategy::MergeByKey("name"),
            ),
            ("Pod", "status.conditions", ListStrategy::MergeByKey("type")),
            (
                "Deployment",
                "spec.template.spec.containers",
                ListStrategy::MergeByKey("name"),
            ),
            (
                "Deployment",
                "spec.template.spec.containers.env",
                ListStrategy::MergeByKey("name"),
            ),
            (
                "Deployment",
                "spec.template.metadata.finalizers",
                ListStrategy::MergePrimitives,
            ),
            (
                "DaemonSet",
                "spec.template.spec.tolerations",
                ListStrategy::Atomic,
            ),
            (
                "Job",
                "spec.template.spec.initContainers",
                ListStrategy::MergeByKey("name"),
            ),
            (
                "Deployment",
                "status.conditions",
                ListStrategy::MergeByKey("type"),
            ),
            ("Deployment", "spec.containers", ListStrategy::Atomic),
            ("Node", "spec.podCIDRs", ListStrategy::MergePrimitives),
            ("Node", "spec.taints", ListStrategy::Atomic),
            ("Node", "status.addresses", ListStrategy::MergeByKey("type")),
            ("Endpoints", "subsets", ListStrategy::Atomic),
            ("EndpointSlice", "endpoints", ListStrategy::Atomic),
            (
                "ConfigMap",
                "metadata.finalizers",
                ListStrategy::MergePrimitives,
            ),
        ];
        for (kind, path, want) in cases {
            let p: Vec<&str> = path.split('.').collect();
            assert_eq!(strategy_at(kind, &p), *want, "{kind} {path}");
        }
    }

    #[test]
    fn strategic_merge_table() {
        // (kind, original, patch, expected)
        let cases: Vec<(&str, Value, Value, Value)> = vec![
            // Maps merge, null deletes.
            (
                "ConfigMap",
                json!({"metadata": {"labels": {"a": "1", "b": "2"}}, "data": {"x": "1"}}),
                json!({"metadata": {"labels": {"b": null, "c": "3"}}, "data": {"y": "2"}}),
                json!({"metadata": {"labels": {"a": "1", "c": "3"}}, "data": {"x": "1", "y": "2"}}),
            ),
            // Merge by key: matching items merge, new items append.
            (
                "Service",
                json!({"spec": {"ports": [{"port": 80, "name": "http", "protocol": "TCP"}]}}),
                json!({"spec": {"ports": [{"port": 80, "name": "web"}, {"port": 443, "name": "https"}]}}),
                json!({"spec": {"ports": [{"port": 80, "name": "web", "protocol": "TCP"}, {"port": 443, "name": "https"}]}}),
            ),
            // $patch: delete in a list item removes the matching item.
            (
                "Service",
                json!({"spec": {"ports": [{"port": 80}, {"port": 81}]}}),
                json!({"spec": {"ports": [{"$patch": "delete", "port": 80}]}}),
                json!({"spec": {"ports": [{"port": 81}]}}),
            ),
            // $patch: replace as a list item replaces the whole list.
            (
                "Pod",
                json!({"spec": {"containers": [{"name": "a", "image": "x"}, {"name": "b", "image": "y"}]}}),
                json!({"spec": {"containers": [{"$patch": "replace"}, {"name": "c", "image": "z"}]}}),
                json!({"spec": {"containers": [{"name": "c", "image": "z"}]}}),
            ),
            // $patch: replace in a map replaces the map.
            (
                "Deployment",
                json!({"spec": {"selector": {"matchLabels": {"a": "1"}, "matchExpressions": []}}}),
                json!({"spec": {"selector": {"$patch": "replace", "matchLabels": {"b": "2"}}}}),
                json!({"spec": {"selector": {"matchLabels": {"b": "2"}}}}),
            ),
            // $patch: delete in a map empties it.
            (
                "Deployment",
                json!({"spec": {"strategy": {"type": "Recreate"}, "replicas": 2}}),
                json!({"spec": {"strategy": {"$patch": "delete"}}}),
                json!({"spec": {"strategy": {}, "replicas": 2}}),
            ),
            // $retainKeys drops keys not listed (switching a Deployment strategy).
            (
                "Deployment",
                json!({"spec": {"strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": "25%"}}}}),
                json!({"spec": {"strategy": {"$retainKeys": ["type"], "type": "Recreate"}}}),
                json!({"spec": {"strategy": {"type": "Recreate"}}}),
            ),
            // Volumes: retainKeys switches the volume source.
            (
                "Pod",
                json!({"spec": {"volumes": [{"name": "v", "emptyDir": {}}]}}),
                json!({"spec": {"volumes": [{"name": "v", "$retainKeys": ["name", "configMap"], "configMap": {"name": "cm"}}]}}),
                json!({"spec": {"volumes": [{"name": "v", "configMap": {"name": "cm"}}]}}),
            ),
            // Atomic lists replace (tolerations have no patchStrategy upstream).
            (
                "Pod",
                json!({"spec": {"tolerations": [{"key": "a", "operator": "Exists"}]}}),
                json!({"spec": {"tolerations": [{"key": "b", "operator": "Exists"}]}}),
                json!({"spec": {"tolerations": [{"key": "b", "operator": "Exists"}]}}),
            ),
            // Finalizers: primitive merge is a union, $deleteFromPrimitiveList removes.
            (
                "Service",
                json!({"metadata": {"finalizers": ["a", "b"]}}),
                json!({"metadata": {"finalizers": ["c", "a"], "$deleteFromPrimitiveList/finalizers": ["b"]}}),
                // The patch's items come in the patch's order.
                json!({"metadata": {"finalizers": ["c", "a"]}}),
            ),
            // $setElementOrder on a primitive list.
            (
                "Service",
                json!({"metadata": {"finalizers": ["a", "b"]}}),
                json!({"metadata": {"$setElementOrder/finalizers": ["c", "b", "a"], "finalizers": ["c"]}}),
                json!({"metadata": {"finalizers": ["c", "b", "a"]}}),
            ),
            // Nested: env merged by name inside a container of a Deployment template.
            (
                "Deployment",
                json!({"spec": {"template": {"spec": {"containers": [
                    {"name": "app", "image": "a:1", "env": [{"name": "A", "value": "1"}, {"name": "B", "value": "2"}]},
                    {"name": "side", "image": "s:1"}]}}}}),
                json!({"spec": {"template": {"spec": {"containers": [
                    {"name": "app", "image": "a:2", "env": [{"name": "B", "value": "3"}, {"name": "A", "$patch": "delete"}]}]}}}}),
                json!({"spec": {"template": {"spec": {"containers": [
                    {"name": "app", "image": "a:2", "env": [{"name": "B", "value": "3"}]},
                    {"name": "side", "image": "s:1"}]}}}}),
            ),
            // $setElementOrder with a server-only item: upstream's mergeSortedSlice puts it
            // before b, which follows it in the original.
            (
                "Pod",
                json!({"spec": {"containers": [{"name": "a"}, {"name": "server"}, {"name": "b"}]}}),
                json!({"spec": {"$setElementOrder/containers": [{"name": "b"}, {"name": "a"}], "containers": [{"name": "b", "image": "x"}]}}),
                json!({"spec": {"containers": [{"name": "server"}, {"name": "b", "image": "x"}, {"name": "a"}]}}),
            ),
            // Directives in a field the original lacks are resolved, not stored.
            (
                "Service",
                json!({"spec": {}}),
                json!({"spec": {"ports": [{"port": 80}, {"$patch": "delete", "port": 81}]}}),
                json!({"spec": {"ports": [{"port": 80}]}}),
            ),
            // Owner references merge by uid.
            (
                "ReplicaSet",
                json!({"metadata": {"ownerReferences": [{"uid": "1", "name": "a"}]}}),
                json!({"metadata": {"ownerReferences": [{"uid": "1", "controller": true}, {"uid": "2", "name": "b"}]}}),
                json!({"metadata": {"ownerReferences": [{"uid": "1", "name": "a", "controller": true}, {"uid": "2", "name": "b"}]}}),
            ),
            // Conditions merge by type on status.
            (
                "Deployment",
                json!({"status": {"conditions": [{"type": "Available", "status": "False"}, {"type": "Progressing", "status": "True"}]}}),
                json!({"status": {"conditions": [{"type": "Available", "status": "True"}]}}),
                json!({"status": {"conditions": [{"type": "Available", "status": "True"}, {"type": "Progressing", "status": "True"}]}}),
            ),
            // A new item comes first: it is not in the original, so mergeSortedSlice does
            // not place the server-only items before it.
            (
                "Pod",
                json!({"spec": {"containers": [{"name": "a"}, {"name": "b"}]}}),
                json!({"spec": {"containers": [{"name": "c"}]}}),
                json!({"spec": {"containers": [{"name": "c"}, {"name": "a"}, {"name": "b"}]}}),
            ),
            // Patch items keep the patch's order; server-only items interleave by their
            // original positions.
            (
                "Pod",
                json!({"spec": {"containers": [{"name": "a"}, {"name": "b"}, {"name": "c"}]}}),
                json!({"spec": {"containers": [{"name": "c", "image": "1"}, {"name": "a", "image": "2"}]}}),
                // b (original index 1) precedes c (index 2), so it goes first.
                json!({"spec": {"containers": [{"name": "b"}, {"name": "c", "image": "1"}, {"name": "a", "image": "2"}]}}),
            ),
            // A scalar replacing a map and vice versa.
            (
                "ConfigMap",
                json!({"data": {"a": "1"}, "x": 1}),
                json!({"data": "s", "x": {"y": 2}}),
                json!({"data": "s", "x": {"y": 2}}),
            ),
        ];
        for (kind, orig, patch, want) in cases {
            let got = strategic_merge_patch(kind, &orig, &patch)
                .unwrap_or_else(|e| panic!("{patch}: {e}"));
            assert_eq!(got, want, "{kind} patch {patch}");
        }
    }

    #[test]
    fn strategic_merge_errors() {
        let cases: Vec<(Value, Value, &str)> = vec![
            (
                json!({"spec": {"ports": [{"port": 80}]}}),
                json!({"spec": {"ports": [{"name": "x"}]}}),
                "spec.ports: map: {\"name\":\"x\"} does not contain declared merge key: port",
            ),
            (json!({"spec": {}}), json!({"spec": {"$patch": "nope"}}), "unknown patch type: \"nope\" in map at \"spec\": expected one of \"replace\", \"merge\", \"delete\""),
            (
                json!({"spec": {}}),
                json!({"spec": {"$retainKeys": ["a"], "b": 1}}),
                "$retainKeys at \"spec\" does not list \"b\", which the patch sets: add it to $retainKeys",
            ),
            (json!([]), json!({}), "a strategic merge patch and the object it patches must both be JSON objects"),
            (
                json!({"spec": {"ports": [{"port": 80}]}}),
                json!({"spec": {"ports": [{"$patch": "merge"}]}}),
                "spec.ports: merging lists cannot yet be specified in the patch",
            ),
            (
                json!({"spec": {"ports": [{"port": 80}]}}),
                json!({"spec": {"ports": [{"$patch": "delete", "name": "x"}]}}),
                "spec.ports: map: {\"$patch\":\"delete\",\"name\":\"x\"} does not contain declared merge key: port",
            ),
            (
                json!({"metadata": {"finalizers": ["a"]}}),
                json!({"metadata": {"finalizers": [{"x": 1}]}}),
                "metadata.finalizers: a list of values with merge strategy must hold scalars, got [{\"x\":1}]",
            ),
        ];
        for (orig, patch, msg) in cases {
            let e = strategic_merge_patch("Service", &orig, &patch).expect_err(&patch.to_string());
            assert_eq!(e.message, msg);
        }
    }

    /// Replays the recorded `kubectl apply` of svc2.yaml over svc.yaml (kubectl 1.29–1.33
    /// send the same body): the port changes from 80 to 8080 and the old one is deleted.
    #[test]
    fn kubectl_apply_trace() {
        let created = json!({"apiVersion":"v1","kind":"Service","metadata":{"annotations":{"kubectl.kubernetes.io/last-applied-configuration":"old"},"labels":{"app":"web"},"name":"web","namespace":"default"},
            "spec":{"ports":[{"name":"http","port":80,"protocol":"TCP","targetPort":"http"}],"selector":{"app":"web"},"type":"ClusterIP","sessionAffinity":"None"}});
        let patch: Value = serde_json::from_str(r#"{"metadata":{"annotations":{"kubectl.kubernetes.io/last-applied-configuration":"new"}},"spec":{"$setElementOrder/ports":[{"port":8080}],"ports":[{"name":"http","port":8080,"targetPort":"http"},{"$patch":"delete","port":80}]}}"#).unwrap();
        let got = strategic_merge_patch("Service", &created, &patch).unwrap();
        assert_eq!(
            got,
            json!({"apiVersion":"v1","kind":"Service","metadata":{"annotations":{"kubectl.kubernetes.io/last-applied-configuration":"new"},"labels":{"app":"web"},"name":"web","namespace":"default"},
                "spec":{"ports":[{"name":"http","port":8080,"targetPort":"http"}],"selector":{"app":"web"},"type":"ClusterIP","sessionAffinity":"None"}})
        );
    }
}
