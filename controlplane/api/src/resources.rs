//! Static registry of the resources skiff serves, and the discovery documents built from it.
//!
//! The table mirrors what an upstream kube-apiserver (v1.33) reports in its discovery
//! documents (`kubectl api-resources -o wide`, `GET /api/v1`, `GET /apis/apps/v1`): name
//! (plural), singularName, namespaced, kind, verbs, shortNames and categories. Only the
//! subresources skiff serves are listed (`status`, `scale`, `binding`, `pods/log`);
//! upstream also lists e.g. `pods/exec`, which skiff does not implement, and a client
//! must not be told that they exist.

use serde_json::{json, Value};

/// The eight verbs of a fully-featured top-level resource, in upstream's (sorted) order.
const ALL_VERBS: &[&str] = &[
    "create",
    "delete",
    "deletecollection",
    "get",
    "list",
    "patch",
    "update",
    "watch",
];

/// Namespaces are the one served resource without `deletecollection` upstream
/// (deleting every namespace at once is not offered).
const NAMESPACE_VERBS: &[&str] = &[
    "create", "delete", "get", "list", "patch", "update", "watch",
];

/// Verbs of `*/status` and `*/scale` subresources upstream.
const GET_PATCH_UPDATE: &[&str] = &["get", "patch", "update"];

/// Verbs of `pods/binding` upstream (the scheduler POSTs a Binding).
const CREATE_ONLY: &[&str] = &["create"];

/// A subresource served under `<resource>/<name>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Subresource {
    /// `status`, `scale` or `binding`.
    pub name: &'static str,
    /// Group of the kind exchanged on this subresource (`autoscaling` for Scale).
    pub group: &'static str,
    /// Version of the kind exchanged on this subresource.
    pub version: &'static str,
    /// Kind exchanged (`Pod` for `pods/status`, `Scale` for `deployments/scale`).
    pub kind: &'static str,
    pub verbs: &'static [&'static str],
}

/// One served resource: everything discovery reports about it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResourceInfo {
    /// API group; `""` is the legacy core group served under `/api`.
    pub group: &'static str,
    pub version: &'static str,
    pub kind: &'static str,
    /// Plural resource name used in URLs (`services`).
    pub plural: &'static str,
    pub singular: &'static str,
    pub namespaced: bool,
    pub short_names: &'static [&'static str],
    pub verbs: &'static [&'static str],
    pub categories: &'static [&'static str],
    pub subresources: &'static [Subresource],
}

impl ResourceInfo {
    /// `v1` for the core group, `apps/v1` otherwise (the `apiVersion` field of objects).
    pub fn api_version(&self) -> String {
        group_version(self.group, self.version)
    }

    /// Upstream's `schema.GroupResource.String()`: `services`, `deployments.apps`. This is
    /// the spelling used in Status messages (`deployments.apps "web" not found`).
    pub fn group_resource(&self) -> String {
        qualify(self.plural, self.group)
    }

    /// Upstream's `schema.GroupKind.String()`: `Service`, `Deployment.apps`. Used in
    /// Invalid messages (`Deployment.apps "web" is invalid: ...`).
    pub fn group_kind(&self) -> String {
        qualify(self.kind, self.group)
    }

    pub fn subresource(&self, name: &str) -> Option<&'static Subresource> {
        self.subresources.iter().find(|s| s.name == name)
    }
}

fn qualify(name: &str, group: &str) -> String {
    if group.is_empty() {
        name.to_string()
    } else {
        format!("{name}.{group}")
    }
}

fn group_version(group: &str, version: &str) -> String {
    if group.is_empty() {
        version.to_string()
    } else {
        format!("{group}/{version}")
    }
}

const STATUS: Subresource = Subresource {
    name: "status",
    group: "",
    version: "",
    kind: "",
    verbs: GET_PATCH_UPDATE,
};

/// `*/scale` exchanges `autoscaling/v1` Scale objects.
const SCALE: Subresource = Subresource {
    name: "scale",
    group: "autoscaling",
    version: "v1",
    kind: "Scale",
    verbs: GET_PATCH_UPDATE,
};

/// `namespaces/finalize` (PUT a Namespace): changes only `spec.finalizers`; the namespace
/// controller removes the `kubernetes` finalizer through it.
const FINALIZE: Subresource = Subresource {
    name: "finalize",
    group: "",
    version: "",
    kind: "",
    verbs: UPDATE_ONLY,
};

/// Verbs of `namespaces/finalize` upstream.
const UPDATE_ONLY: &[&str] = &["update"];

/// `pods/binding` exchanges core/v1 Binding objects.
const BINDING: Subresource = Subresource {
    name: "binding",
    group: "",
    version: "v1",
    kind: "Binding",
    verbs: CREATE_ONLY,
};

/// `pods/log` (`kubectl logs`): a text stream, read with `get`.
const LOG: Subresource = Subresource {
    name: "log",
    group: "",
    version: "",
    kind: "",
    verbs: &["get"],
};

/// Upstream's `all` category: what `kubectl get all` lists.
const ALL: &[&str] = &["all"];

macro_rules! res {
    ($group:expr, $version:expr, $kind:expr, $plural:expr, $singular:expr, $namespaced:expr,
     short: [$($short:expr),*], verbs: $verbs:expr, categories: $cats:expr, sub: [$($sub:expr),*]) => {
        ResourceInfo {
            group: $group,
            version: $version,
            kind: $kind,
            plural: $plural,
            singular: $singular,
            namespaced: $namespaced,
            short_names: &[$($short),*],
            verbs: $verbs,
            categories: $cats,
            subresources: &[$($sub),*],
        }
    };
}

/// Every resource skiff serves, grouped by group/version in discovery order.
pub static RESOURCES: &[ResourceInfo] = &[
    // core/v1
    res!("", "v1", "ConfigMap", "configmaps", "configmap", true, short: ["cm"], verbs: ALL_VERBS, categories: &[], sub: []),
    res!("", "v1", "Endpoints", "endpoints", "endpoints", true, short: ["ep"], verbs: ALL_VERBS, categories: &[], sub: []),
    res!("", "v1", "Event", "events", "event", true, short: ["ev"], verbs: ALL_VERBS, categories: &[], sub: []),
    res!("", "v1", "Namespace", "namespaces", "namespace", false, short: ["ns"], verbs: NAMESPACE_VERBS, categories: &[], sub: [FINALIZE, STATUS]),
    res!("", "v1", "Node", "nodes", "node", false, short: ["no"], verbs: ALL_VERBS, categories: &[], sub: [STATUS]),
    res!("", "v1", "Pod", "pods", "pod", true, short: ["po"], verbs: ALL_VERBS, categories: ALL, sub: [BINDING, LOG, STATUS]),
    res!("", "v1", "Secret", "secrets", "secret", true, short: [], verbs: ALL_VERBS, categories: &[], sub: []),
    res!("", "v1", "ServiceAccount", "serviceaccounts", "serviceaccount", true, short: ["sa"], verbs: ALL_VERBS, categories: &[], sub: []),
    res!("", "v1", "Service", "services", "service", true, short: ["svc"], verbs: ALL_VERBS, categories: ALL, sub: [STATUS]),
    // apps/v1
    res!("apps", "v1", "ControllerRevision", "controllerrevisions", "controllerrevision", true, short: [], verbs: ALL_VERBS, categories: &[], sub: []),
    res!("apps", "v1", "DaemonSet", "daemonsets", "daemonset", true, short: ["ds"], verbs: ALL_VERBS, categories: ALL, sub: [STATUS]),
    res!("apps", "v1", "Deployment", "deployments", "deployment", true, short: ["deploy"], verbs: ALL_VERBS, categories: ALL, sub: [SCALE, STATUS]),
    res!("apps", "v1", "ReplicaSet", "replicasets", "replicaset", true, short: ["rs"], verbs: ALL_VERBS, categories: ALL, sub: [SCALE, STATUS]),
    // batch/v1
    res!("batch", "v1", "Job", "jobs", "job", true, short: [], verbs: ALL_VERBS, categories: ALL, sub: [STATUS]),
    // rbac.authorization.k8s.io/v1: stored and served so manifests carrying RBAC apply;
    // skiff authorizes with its own rules (admin, nodes), not with these objects yet.
    res!("rbac.authorization.k8s.io", "v1", "ClusterRoleBinding", "clusterrolebindings", "clusterrolebinding", false, short: [], verbs: ALL_VERBS, categories: &[], sub: []),
    res!("rbac.authorization.k8s.io", "v1", "ClusterRole", "clusterroles", "clusterrole", false, short: [], verbs: ALL_VERBS, categories: &[], sub: []),
    res!("rbac.authorization.k8s.io", "v1", "RoleBinding", "rolebindings", "rolebinding", true, short: [], verbs: ALL_VERBS, categories: &[], sub: []),
    res!("rbac.authorization.k8s.io", "v1", "Role", "roles", "role", true, short: [], verbs: ALL_VERBS, categories: &[], sub: []),
    // coordination.k8s.io/v1
    res!("coordination.k8s.io", "v1", "Lease", "leases", "lease", true, short: [], verbs: ALL_VERBS, categories: &[], sub: []),
    // discovery.k8s.io/v1
    res!("discovery.k8s.io", "v1", "EndpointSlice", "endpointslices", "endpointslice", true, short: [], verbs: ALL_VERBS, categories: &[], sub: []),
];

/// Groups other than core, in the order `/apis` lists them (upstream lists by priority:
/// apps, batch, rbac, coordination, discovery come in this relative order).
const GROUP_ORDER: &[&str] = &[
    "apps",
    "batch",
    "rbac.authorization.k8s.io",
    "coordination.k8s.io",
    "discovery.k8s.io",
];

/// Finds a resource by group, version and plural (the URL form).
pub fn by_plural(group: &str, version: &str, plural: &str) -> Option<&'static ResourceInfo> {
    RESOURCES
        .iter()
        .find(|r| r.group == group && r.version == version && r.plural == plural)
}

/// Finds a resource by group, version and kind (the object form: `apiVersion` + `kind`).
pub fn by_kind(group: &str, version: &str, kind: &str) -> Option<&'static ResourceInfo> {
    RESOURCES
        .iter()
        .find(|r| r.group == group && r.version == version && r.kind == kind)
}

/// Finds a resource from an object's `apiVersion` (`v1`, `apps/v1`) and `kind`.
pub fn by_api_version_kind(api_version: &str, kind: &str) -> Option<&'static ResourceInfo> {
    let (group, version) = api_version.split_once('/').unwrap_or(("", api_version));
    by_kind(group, version, kind)
}

/// Resolves what a user typed on a command line (`svc`, `service`, `services`,
/// `deploy.apps`, `Deployment`) the way kubectl's RESTMapper does: plural, singular,
/// short name or kind (case-insensitive), optionally qualified with `.group`.
pub fn resolve(name: &str) -> Option<&'static ResourceInfo> {
    let lower = name.to_ascii_lowercase();
    let matches = |r: &ResourceInfo, n: &str| {
        r.plural == n
            || r.singular == n
            || r.kind.eq_ignore_ascii_case(n)
            || r.short_names.contains(&n)
    };
    RESOURCES.iter().find(|r| matches(r, &lower)).or_else(|| {
        let (n, group) = lower.split_once('.')?;
        RESOURCES.iter().find(|r| r.group == group && matches(r, n))
    })
}

/// Resources of one group/version, in table order.
pub fn resources_in<'a>(
    group: &'a str,
    version: &'a str,
) -> impl Iterator<Item = &'static ResourceInfo> + 'a {
    RESOURCES
        .iter()
        .filter(move |r| r.group == group && r.version == version)
}

/// `GET /api/v1` or `GET /apis/{group}/{version}`: the `APIResourceList`, or `None` when
/// the group/version is not served (the server answers 404).
///
/// Entries are sorted by name like upstream, so that `pods/binding` and `pods/status`
/// follow `pods`. Subresource entries carry an empty `singularName`, no short names and
/// the kind they exchange (with `group`/`version` when it differs, as for Scale).
pub fn api_resource_list(group: &str, version: &str) -> Option<Value> {
    let mut entries: Vec<(String, Value)> = Vec::new();
    for r in resources_in(group, version) {
        let mut top = json!({
            "name": r.plural,
            "singularName": r.singular,
            "namespaced": r.namespaced,
            "kind": r.kind,
            "verbs": r.verbs,
        });
        if !r.short_names.is_empty() {
            top["shortNames"] = json!(r.short_names);
        }
        if !r.categories.is_empty() {
            top["categories"] = json!(r.categories);
        }
        entries.push((r.plural.to_string(), top));
        for s in r.subresources {
            let name = format!("{}/{}", r.plural, s.name);
            let mut sub = json!({
                "name": name,
                "singularName": "",
                "namespaced": r.namespaced,
                "kind": if s.kind.is_empty() { r.kind } else { s.kind },
                "verbs": s.verbs,
            });
            if !s.group.is_empty() {
                sub["group"] = json!(s.group);
                sub["version"] = json!(s.version);
            }
            entries.push((name, sub));
        }
    }
    if entries.is_empty() {
        return None;
    }
    entries.sort_by(|a, b| a.0.cmp(&b.0));
    let mut list = json!({
        "kind": "APIResourceList",
        "groupVersion": group_version(group, version),
        "resources": entries.into_iter().map(|(_, v)| v).collect::<Vec<_>>(),
    });
    // Upstream's legacy `/api/v1` document has no apiVersion; group documents carry `v1`.
    if !group.is_empty() {
        list["apiVersion"] = json!("v1");
    }
    Some(list)
}

/// One group's entry as `/apis` lists it and `/apis/{group}` returns it (there with
/// `kind`/`apiVersion`); None for a group skiff does not serve.
pub fn api_group(group: &str) -> Option<Value> {
    if group.is_empty() || !GROUP_ORDER.contains(&group) {
        return None;
    }
    let mut versions: Vec<&str> = Vec::new();
    for r in RESOURCES.iter().filter(|r| r.group == group) {
        if !versions.contains(&r.version) {
            versions.push(r.version);
        }
    }
    let gv = |v: &str| json!({"groupVersion": group_version(group, v), "version": v});
    let preferred = gv(versions.first()?);
    Some(json!({
        "kind": "APIGroup",
        "apiVersion": "v1",
        "name": group,
        "versions": versions.iter().map(|v| gv(v)).collect::<Vec<_>>(),
        "preferredVersion": preferred,
    }))
}

/// `GET /apis`: the `APIGroupList` of every non-core group (the core group is not listed
/// here upstream; it is discovered through `/api`).
pub fn api_group_list() -> Value {
    let groups: Vec<Value> = GROUP_ORDER
        .iter()
        .filter_map(|g| {
            // Inside the list, groups carry no kind/apiVersion of their own.
            let mut v = api_group(g)?;
            let m = v.as_object_mut()?;
            m.remove("kind");
            m.remove("apiVersion");
            Some(v)
        })
        .collect();
    json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
}

/// `GET /api`: the `APIVersions` of the core group. `server_address` is the `host:port`
/// clients should use; upstream reports it for the catch-all CIDR `0.0.0.0/0`.
pub fn api_versions(server_address: &str) -> Value {
    json!({
        "kind": "APIVersions",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": server_address}],
    })
}

/// What a request path addresses (upstream's `RequestInfo`, minus the verb).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApiPath {
    /// `/api`: the core group's APIVersions.
    CoreVersions,
    /// `/apis`: the APIGroupList.
    Groups,
    /// `/apis/{group}`: one APIGroup.
    Group(String),
    /// `/api/v1`, `/apis/{group}/{version}`: an APIResourceList.
    GroupVersion { group: String, version: String },
    /// A resource collection, object or subresource.
    Resource {
        resource: &'static ResourceInfo,
        namespace: Option<String>,
        name: Option<String>,
        subresource: Option<&'static Subresource>,
    },
}

/// Why a path does not address anything served (the server answers 404).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathError {
    pub message: String,
}

impl std::fmt::Display for PathError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for PathError {}

/// Parses an API path (query string ignored) the way upstream's `RequestInfoFactory`
/// does: `namespaces/{ns}/{resource}...` scopes a namespaced resource, except that
/// `namespaces/{name}/status` and `/finalize` are subresources of the namespace itself.
pub fn parse_path(path: &str) -> Result<ApiPath, PathError> {
    let path = path.split('?').next().unwrap_or("");
    let parts: Vec<&str> = path
        .trim_matches('/')
        .split('/')
        .filter(|p| !p.is_empty())
        .collect();
    let not_found = || PathError {
        message: format!("the server could not find the requested resource ({path})"),
    };
    let (group, version, rest) = match parts.as_slice() {
        ["api"] => return Ok(ApiPath::CoreVersions),
        ["apis"] => return Ok(ApiPath::Groups),
        ["apis", g] if GROUP_ORDER.contains(g) => return Ok(ApiPath::Group(g.to_string())),
        ["api", v, rest @ ..] => ("", *v, rest),
        ["apis", g, v, rest @ ..] => (*g, *v, rest),
        _ => return Err(not_found()),
    };
    if resources_in(group, version).next().is_none() {
        return Err(not_found());
    }
    let (namespace, rest): (Option<String>, &[&str]) = match rest {
        ["namespaces", ns, r, ..] if !matches!(*r, "status" | "finalize") => {
            (Some(ns.to_string()), &rest[2..])
        }
        _ => (None, rest),
    };
    let (plural, name, sub) = match rest {
        [] => {
            return Ok(ApiPath::GroupVersion {
                group: group.to_string(),
                version: version.to_string(),
            })
        }
        [p] => (*p, None, None),
        [p, n] => (*p, Some(n.to_string()), None),
        [p, n, s] => (*p, Some(n.to_string()), Some(*s)),
        _ => return Err(not_found()),
    };
    let resource = by_plural(group, version, plural).ok_or_else(not_found)?;
    if namespace.is_some() && !resource.namespaced {
        return Err(not_found());
    }
    let subresource = match sub {
        None => None,
        Some(s) => Some(resource.subresource(s).ok_or_else(not_found)?),
    };
    Ok(ApiPath::Resource {
        resource,
        namespace,
        name,
        subresource,
    })
}

/// Upstream's `EnsureObjectNamespaceMatchesRequestNamespace`: a body without a namespace
/// takes the request's, a cluster-scoped request clears it, and a different namespace is a
/// 400. Call it on create and update bodies before validation.
pub fn ensure_namespace(
    obj: &mut Value,
    request_namespace: Option<&str>,
) -> Result<(), crate::status::StatusError> {
    let request_ns = request_namespace.unwrap_or("");
    let obj_ns = obj
        .pointer("/metadata/namespace")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    if obj_ns == request_ns {
        return Ok(());
    }
    if !obj_ns.is_empty() && !request_ns.is_empty() {
        return Err(crate::status::bad_request(
            "the namespace of the provided object does not match the namespace sent on the request",
        ));
    }
    let Some(obj) = obj.as_object_mut() else {
        return Err(crate::status::bad_request(
            "the request body must be a JSON object",
        ));
    };
    let meta = obj.entry("metadata").or_insert_with(|| json!({}));
    if let Some(meta) = meta.as_object_mut() {
        if request_ns.is_empty() {
            meta.remove("namespace");
        } else {
            meta.insert("namespace".into(), json!(request_ns));
        }
    }
    Ok(())
}

/// Upstream's check on update (PUT): the body's name must be the URL's.
pub fn ensure_name(obj: &Value, url_name: &str) -> Result<(), crate::status::StatusError> {
    let name = obj
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or("");
    if name == url_name {
        Ok(())
    } else {
        Err(crate::status::bad_request(format!(
            "the name of the object ({name}) does not match the name on the URL ({url_name})"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Expected rows, as `kubectl api-resources -o wide` prints them against upstream
    /// v1.33 (NAME SHORTNAMES APIVERSION NAMESPACED KIND VERBS CATEGORIES).
    const UPSTREAM: &[(&str, &str, &str, bool, &str, &str, &str)] = &[
        (
            "configmaps",
            "cm",
            "v1",
            true,
            "ConfigMap",
            "create,delete,deletecollection,get,list,patch,update,watch",
            "",
        ),
        (
            "endpoints",
            "ep",
            "v1",
            true,
            "Endpoints",
            "create,delete,deletecollection,get,list,patch,update,watch",
            "",
        ),
        (
            "events",
            "ev",
            "v1",
            true,
            "Event",
            "create,delete,deletecollection,get,list,patch,update,watch",
            "",
        ),
        (
            "namespaces",
            "ns",
            "v1",
            false,
            "Namespace",
            "create,delete,get,list,patch,update,watch",
            "",
        ),
        (
            "nodes",
            "no",
            "v1",
            false,
            "Node",
            "create,delete,deletecollection,get,list,patch,update,watch",
            "",
        ),
        (
            "pods",
            "po",
            "v1",
            true,
            "Pod",
            "create,delete,deletecollection,get,list,patch,update,watch",
            "all",
        ),
        (
            "secrets",
            "",
            "v1",
            true,
            "Secret",
            "create,delete,deletecollection,get,list,patch,update,watch",
            "",
        ),
        (
            "serviceaccounts",
            "sa",
            "v1",
            true,
            "ServiceAccount",
            "create,delete,deletecollection,get,list,patch,update,watch",
            "",
        ),
        (
            "services",
            "svc",
            "v1",
            true,
            "Service",
            "create,delete,deletecollection,get,list,patch,update,watch",
            "all",
        ),
        (
            "controllerrevisions",
            "",
            "apps/v1",
            true,
            "ControllerRevision",
            "create,delete,deletecollection,get,list,patch,update,watch",
            "",
        ),
        (
            "daemonsets",
            "ds",
            "apps/v1",
            true,
            "DaemonSet",
            "create,delete,deletecollection,get,list,patch,update,watch",
            "all",
        ),
        (
            "deployments",
            "deploy",
            "apps/v1",
            true,
            "Deployment",
            "create,delete,deletecollection,get,list,patch,update,watch",
            "all",
        ),
        (
            "replicasets",
            "rs",
            "apps/v1",
            true,
            "ReplicaSet",
            "create,delete,deletecollection,get,list,patch,update,watch",
            "all",
        ),
        (
            "jobs",
            "",
            "batch/v1",
            true,
            "Job",
            "create,delete,deletecollection,get,list,patch,update,watch",
            "all",
        ),
        (
            "clusterrolebindings",
            "",
            "rbac.authorization.k8s.io/v1",
            false,
            "ClusterRoleBinding",
            "create,delete,deletecollection,get,list,patch,update,watch",
            "",
        ),
        (
            "clusterroles",
            "",
            "rbac.authorization.k8s.io/v1",
            false,
            "ClusterRole",
            "create,delete,deletecollection,get,list,patch,update,watch",
            "",
        ),
        (
            "rolebindings",
            "",
            "rbac.authorization.k8s.io/v1",
            true,
            "RoleBinding",
            "create,delete,deletecollection,get,list,patch,update,watch",
            "",
        ),
        (
            "roles",
            "",
            "rbac.authorization.k8s.io/v1",
            true,
            "Role",
            "create,delete,deletecollection,get,list,patch,update,watch",
            "",
        ),
        (
            "leases",
            "",
            "coordination.k8s.io/v1",
            true,
            "Lease",
            "create,delete,deletecollection,get,list,patch,update,watch",
            "",
        ),
        (
            "endpointslices",
            "",
            "discovery.k8s.io/v1",
            true,
            "EndpointSlice",
            "create,delete,deletecollection,get,list,patch,update,watch",
            "",
        ),
    ];

    #[test]
    fn table_matches_upstream_api_resources() {
        assert_eq!(
            RESOURCES.len(),
            UPSTREAM.len(),
            "one row per served resource"
        );
        for (plural, short, api_version, namespaced, kind, verbs, cats) in UPSTREAM {
            let (g, v) = api_version.split_once('/').unwrap_or(("", api_version));
            let r = by_plural(g, v, plural).unwrap_or_else(|| panic!("{plural} not served"));
            assert_eq!(r.short_names.join(","), *short, "{plural} short names");
            assert_eq!(r.api_version(), *api_version, "{plural}");
            assert_eq!(r.namespaced, *namespaced, "{plural} namespaced");
            assert_eq!(r.kind, *kind, "{plural}");
            assert_eq!(r.verbs.join(","), *verbs, "{plural} verbs");
            assert_eq!(r.categories.join(","), *cats, "{plural} categories");
            assert_eq!(by_kind(g, v, kind), Some(r), "{kind} by kind");
            assert_eq!(by_api_version_kind(api_version, kind), Some(r));
        }
    }

    #[test]
    fn parse_paths() {
        let res = |plural: &str, ns: Option<&str>, name: Option<&str>, sub: Option<&str>| {
            let r = RESOURCES.iter().find(|r| r.plural == plural).unwrap();
            ApiPath::Resource {
                resource: r,
                namespace: ns.map(String::from),
                name: name.map(String::from),
                subresource: sub.map(|s| r.subresource(s).unwrap()),
            }
        };
        let gv = |g: &str, v: &str| ApiPath::GroupVersion {
            group: g.into(),
            version: v.into(),
        };
        let cases: Vec<(&str, Option<ApiPath>)> = vec![
            ("/api", Some(ApiPath::CoreVersions)),
            ("/api?timeout=32s", Some(ApiPath::CoreVersions)),
            ("/apis", Some(ApiPath::Groups)),
            ("/apis/apps", Some(ApiPath::Group("apps".into()))),
            ("/api/v1", Some(gv("", "v1"))),
            (
                "/apis/discovery.k8s.io/v1",
                Some(gv("discovery.k8s.io", "v1")),
            ),
            (
                "/api/v1/namespaces/default/services",
                Some(res("services", Some("default"), None, None)),
            ),
            (
                "/api/v1/namespaces/default/services/web",
                Some(res("services", Some("default"), Some("web"), None)),
            ),
            (
                "/api/v1/namespaces/default/services/web/status",
                Some(res(
                    "services",
                    Some("default"),
                    Some("web"),
                    Some("status"),
                )),
            ),
            ("/api/v1/services", Some(res("services", None, None, None))),
            (
                "/api/v1/namespaces",
                Some(res("namespaces", None, None, None)),
            ),
            (
                "/api/v1/namespaces/default",
                Some(res("namespaces", None, Some("default"), None)),
            ),
            (
                "/api/v1/namespaces/default/status",
                Some(res("namespaces", None, Some("default"), Some("status"))),
            ),
            (
                "/api/v1/nodes/n1/status",
                Some(res("nodes", None, Some("n1"), Some("status"))),
            ),
            (
                "/api/v1/namespaces/d/pods/p/binding",
                Some(res("pods", Some("d"), Some("p"), Some("binding"))),
            ),
            (
                "/apis/apps/v1/namespaces/d/deployments/x/scale",
                Some(res("deployments", Some("d"), Some("x"), Some("scale"))),
            ),
            ("/api/v1/namespaces/d/pods/p/exec", None),
            ("/api/v1/namespaces/d/nodes/n1", None),
            (
                "/apis/apiextensions.k8s.io/v1/customresourcedefinitions",
                None,
            ),
            ("/apis/apps/v2/deployments", None),
            ("/openapi/v3", None),
            ("/api/v1/namespaces/d/widgets", None),
        ];
        for (path, want) in cases {
            assert_eq!(parse_path(path).ok(), want, "{path}");
        }
        assert_eq!(
            parse_path("/openapi/v2").unwrap_err().to_string(),
            "the server could not find the requested resource (/openapi/v2)"
        );
    }

    #[test]
    fn request_namespace_and_name() {
        /// (body namespace, request namespace, resulting namespace or error message)
        type Case<'a> = (
            Option<&'a str>,
            Option<&'a str>,
            Result<Option<&'a str>, &'a str>,
        );
        let cases: Vec<Case> = vec![
            (None, Some("default"), Ok(Some("default"))),
            (Some("default"), Some("default"), Ok(Some("default"))),
            (Some("team-a"), None, Ok(None)),
            (None, None, Ok(None)),
            (
                Some("team-a"),
                Some("default"),
                Err("the namespace of the provided object does not match the namespace sent on the request"),
            ),
        ];
        for (body_ns, req_ns, want) in cases {
            let mut obj = json!({"metadata": {"name": "x"}});
            if let Some(ns) = body_ns {
                obj["metadata"]["namespace"] = json!(ns);
            }
            let got = ensure_namespace(&mut obj, req_ns)
                .map(|_| {
                    obj.pointer("/metadata/namespace")
                        .and_then(Value::as_str)
                        .map(String::from)
                })
                .map_err(|e| e.message().to_string());
            assert_eq!(
                got,
                want.map(|o| o.map(String::from)).map_err(String::from),
                "{body_ns:?} {req_ns:?}"
            );
        }
        let obj = json!({"metadata": {"name": "web"}});
        assert!(ensure_name(&obj, "web").is_ok());
        let e = ensure_name(&obj, "api").unwrap_err();
        assert_eq!(
            (e.code, e.message()),
            (
                400,
                "the name of the object (web) does not match the name on the URL (api)"
            )
        );
    }

    #[test]
    fn resolve_like_kubectl() {
        let cases: &[(&str, Option<&str>)] = &[
            ("svc", Some("services")),
            ("service", Some("services")),
            ("Services", Some("services")),
            ("Service", Some("services")),
            ("deploy", Some("deployments")),
            ("deployments.apps", Some("deployments")),
            ("deploy.apps", Some("deployments")),
            ("ep", Some("endpoints")),
            ("endpointslices.discovery.k8s.io", Some("endpointslices")),
            ("no", Some("nodes")),
            ("lease", Some("leases")),
            ("deployments.batch", None),
            ("statefulsets", None),
            ("", None),
        ];
        for (input, want) in cases {
            assert_eq!(
                resolve(input).map(|r| r.plural),
                *want,
                "resolve({input:?})"
            );
        }
    }

    #[test]
    fn qualified_names_for_messages() {
        let cases = [
            ("", "services", "services", "Service"),
            ("apps", "deployments", "deployments.apps", "Deployment.apps"),
            (
                "discovery.k8s.io",
                "endpointslices",
                "endpointslices.discovery.k8s.io",
                "EndpointSlice.discovery.k8s.io",
            ),
        ];
        for (g, plural, gr, gk) in cases {
            let r = by_plural(g, "v1", plural).expect(plural);
            assert_eq!(r.group_resource(), gr);
            assert_eq!(r.group_kind(), gk);
        }
    }

    #[test]
    fn resource_list_core_v1() {
        let list = api_resource_list("", "v1").expect("core/v1 is served");
        assert_eq!(list["kind"], "APIResourceList");
        assert_eq!(list["groupVersion"], "v1");
        assert_eq!(
            list.get("apiVersion"),
            None,
            "legacy /api/v1 has no apiVersion"
        );
        let names: Vec<&str> = list["resources"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["name"].as_str().unwrap())
            .collect();
        assert_eq!(
            names,
            [
                "configmaps",
                "endpoints",
                "events",
                "namespaces",
                "namespaces/finalize",
                "namespaces/status",
                "nodes",
                "nodes/status",
                "pods",
                "pods/binding",
                "pods/log",
                "pods/status",
                "secrets",
                "serviceaccounts",
                "services",
                "services/status"
            ]
        );
        let find = |n: &str| {
            list["resources"]
                .as_array()
                .unwrap()
                .iter()
                .find(|r| r["name"] == n)
                .cloned()
                .unwrap()
        };
        assert_eq!(
            find("services"),
            json!({"name": "services", "singularName": "service", "namespaced": true, "kind": "Service",
                   "verbs": ALL_VERBS, "shortNames": ["svc"], "categories": ["all"]})
        );
        assert_eq!(
            find("pods/binding"),
            json!({"name": "pods/binding", "singularName": "", "namespaced": true, "kind": "Binding", "verbs": ["create"]})
        );
        assert_eq!(
            find("secrets"),
            json!({"name": "secrets", "singularName": "secret", "namespaced": true, "kind": "Secret", "verbs": ALL_VERBS})
        );
    }

    #[test]
    fn resource_list_apps_scale_is_autoscaling() {
        let list = api_resource_list("apps", "v1").unwrap();
        assert_eq!(list["groupVersion"], "apps/v1");
        assert_eq!(list["apiVersion"], "v1");
        let scale = list["resources"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["name"] == "deployments/scale")
            .cloned()
            .unwrap();
        assert_eq!(
            scale,
            json!({"name": "deployments/scale", "singularName": "", "namespaced": true, "group": "autoscaling",
                   "version": "v1", "kind": "Scale", "verbs": ["get", "patch", "update"]})
        );
    }

    #[test]
    fn resource_list_unknown_group_version() {
        for (g, v) in [("apps", "v1beta1"), ("networking.k8s.io", "v1"), ("", "v2")] {
            assert_eq!(api_resource_list(g, v), None, "{g}/{v}");
        }
    }

    #[test]
    fn group_list_and_versions() {
        let groups = api_group_list();
        assert_eq!(groups["kind"], "APIGroupList");
        let names: Vec<&str> = groups["groups"]
            .as_array()
            .unwrap()
            .iter()
            .map(|g| g["name"].as_str().unwrap())
            .collect();
        assert_eq!(names, GROUP_ORDER);
        assert_eq!(
            groups["groups"][0],
            json!({"name": "apps", "versions": [{"groupVersion": "apps/v1", "version": "v1"}],
                   "preferredVersion": {"groupVersion": "apps/v1", "version": "v1"}})
        );
        assert_eq!(
            api_group("discovery.k8s.io"),
            Some(
                json!({"kind": "APIGroup", "apiVersion": "v1", "name": "discovery.k8s.io",
                        "versions": [{"groupVersion": "discovery.k8s.io/v1", "version": "v1"}],
                        "preferredVersion": {"groupVersion": "discovery.k8s.io/v1", "version": "v1"}})
            )
        );
        assert_eq!(api_group(""), None, "the core group is served under /api");
        assert_eq!(api_group("networking.k8s.io"), None);
        // Every group in the table must be discoverable, or clients never find it.
        for r in RESOURCES.iter().filter(|r| !r.group.is_empty()) {
            assert!(
                GROUP_ORDER.contains(&r.group),
                "{} missing from /apis",
                r.group
            );
        }
        assert_eq!(
            api_versions("10.0.0.1:6443"),
            json!({"kind": "APIVersions", "versions": ["v1"],
                   "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": "10.0.0.1:6443"}]})
        );
    }
}
