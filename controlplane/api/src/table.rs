//! Server-side printing: the `meta.k8s.io/v1` `Table` kubectl asks for with
//! `Accept: application/json;as=Table;v=v1;g=meta.k8s.io` (without it, kubectl prints
//! only NAME and AGE). Columns and cells follow upstream's
//! `pkg/printers/internalversion/printers.go` for Pod, Service, Deployment, ReplicaSet,
//! DaemonSet, Job, Namespace, Node, ConfigMap, Secret, ServiceAccount, Endpoints,
//! EndpointSlice and Lease; other kinds get upstream's default convertor (Name, Created At).
//! The server always generates the wide (priority 1) columns, as upstream does; kubectl
//! shows them with `-o wide`.

use crate::selector::from_label_selector;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use serde_json::{json, Value};

/// The `includeObject` query parameter: what each row carries besides its cells.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IncludeObject {
    None,
    /// The default: a `PartialObjectMetadata` with the object's metadata.
    Metadata,
    Object,
}

impl IncludeObject {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "" | "Metadata" => Some(IncludeObject::Metadata),
            "None" => Some(IncludeObject::None),
            "Object" => Some(IncludeObject::Object),
            _ => None,
        }
    }
}

const NAME_DOC: &str = "Name must be unique within a namespace. Is required when creating resources, although some resources may allow a client to request the generation of an appropriate name automatically. Name is primarily intended for creation idempotence and configuration definition. Cannot be updated. More info: https://kubernetes.io/docs/concepts/overview/working-with-objects/names#names";
const AGE_DOC: &str = "CreationTimestamp is a timestamp representing the server time when this object was created. It is not guaranteed to be set in happens-before order across separate operations. Clients may not set this value. It is represented in RFC3339 form and is in UTC.\n\nPopulated by the system. Read-only. Null for lists. More info: https://git.k8s.io/community/contributors/devel/sig-architecture/api-conventions.md#metadata";

/// (name, type, format, description, priority)
type Col = (&'static str, &'static str, &'static str, &'static str, u8);

const NAME: Col = ("Name", "string", "name", NAME_DOC, 0);
const AGE: Col = ("Age", "string", "", AGE_DOC, 0);
const CONTAINERS: Col = (
    "Containers",
    "string",
    "",
    "Names of each container in the template.",
    1,
);
const IMAGES: Col = (
    "Images",
    "string",
    "",
    "Images referenced by each container in the template.",
    1,
);
const SELECTOR: Col = ("Selector", "string", "", "Label selector for pods. Existing ReplicaSets whose pods are selected by this will be the ones affected by this deployment.", 1);

/// The column definitions for `kind`.
fn columns(kind: &str) -> Vec<Col> {
    match kind {
        "Pod" => vec![
            NAME,
            ("Ready", "string", "", "The aggregate readiness state of this pod for accepting traffic.", 0),
            ("Status", "string", "", "The aggregate status of the containers in this pod.", 0),
            ("Restarts", "string", "", "The number of times the containers in this pod have been restarted and when the last container in this pod has restarted.", 0),
            AGE,
            ("IP", "string", "", "IP address allocated to the pod. Routable at least within the cluster. Empty if not yet allocated.", 1),
            ("Node", "string", "", "NodeName is a request to schedule this pod onto a specific node. If it is non-empty, the scheduler simply schedules this pod onto that node, assuming that it fits resource requirements.", 1),
            ("Nominated Node", "string", "", "nominatedNodeName is set only when this pod preempts other pods on the node, but it cannot be scheduled right away as preemption victims receive their graceful termination periods.", 1),
            ("Readiness Gates", "string", "", "If specified, all readiness gates will be evaluated for pod readiness.", 1),
        ],
        "Service" => vec![
            NAME,
            ("Type", "string", "", "type determines how the Service is exposed.", 0),
            ("Cluster-IP", "string", "", "clusterIP is the IP address of the service and is usually assigned randomly.", 0),
            ("External-IP", "string", "", "externalIPs is a list of IP addresses for which nodes in the cluster will also accept traffic for this service.", 0),
            ("Port(s)", "string", "", "The list of ports that are exposed by this service.", 0),
            AGE,
            ("Selector", "string", "", "Route service traffic to pods with label keys and values matching this selector.", 1),
        ],
        "Deployment" => vec![
            NAME,
            ("Ready", "string", "", "Number of the pod with ready state", 0),
            ("Up-to-date", "integer", "", "Total number of non-terminated pods targeted by this deployment that have the desired template spec.", 0),
            ("Available", "integer", "", "Total number of available pods (ready for at least minReadySeconds) targeted by this deployment.", 0),
            AGE,
            CONTAINERS,
            IMAGES,
            SELECTOR,
        ],
        "ReplicaSet" => vec![
            NAME,
            ("Desired", "integer", "", "Replicas is the number of desired replicas.", 0),
            ("Current", "integer", "", "Replicas is the most recently observed number of replicas.", 0),
            ("Ready", "integer", "", "The number of ready replicas for this replica set.", 0),
            AGE,
            CONTAINERS,
            IMAGES,
            SELECTOR,
        ],
        "DaemonSet" => vec![
            NAME,
            ("Desired", "integer", "", "The total number of nodes that should be running the daemon pod.", 0),
            ("Current", "integer", "", "The number of nodes that are running at least 1 daemon pod and are supposed to run the daemon pod.", 0),
            ("Ready", "integer", "", "The number of nodes that should be running the daemon pod and have one or more of the daemon pod running and ready.", 0),
            ("Up-to-date", "integer", "", "The total number of nodes that are running updated daemon pod", 0),
            ("Available", "integer", "", "The number of nodes that should be running the daemon pod and have one or more of the daemon pod running and available (ready for at least spec.minReadySeconds)", 0),
            ("Node Selector", "string", "", "NodeSelector is a selector which must be true for the pod to fit on a node.", 0),
            AGE,
            CONTAINERS,
            IMAGES,
            SELECTOR,
        ],
        "Job" => vec![
            NAME,
            ("Status", "string", "", "Status of the job.", 0),
            ("Completions", "string", "", "The completion status of the job.", 0),
            ("Duration", "string", "", "Time required to complete the job.", 0),
            AGE,
            CONTAINERS,
            IMAGES,
            SELECTOR,
        ],
        "Namespace" => vec![NAME, ("Status", "string", "", "The status of the namespace", 0), AGE],
        "Node" => vec![
            NAME,
            ("Status", "string", "", "The status of the node", 0),
            ("Roles", "string", "", "The roles of the node", 0),
            AGE,
            ("Version", "string", "", "Kubelet Version reported by the node.", 0),
            ("Internal-IP", "string", "", "List of addresses reachable to the node. Queried from cloud provider, if available.", 1),
            ("External-IP", "string", "", "List of addresses reachable to the node. Queried from cloud provider, if available.", 1),
            ("OS-Image", "string", "", "OS Image reported by the node from /etc/os-release (e.g. Debian GNU/Linux 7 (wheezy)).", 1),
            ("Kernel-Version", "string", "", "Kernel Version reported by the node from 'uname -r' (e.g. 3.16.0-0.bpo.4-amd64).", 1),
            ("Container-Runtime", "string", "", "ContainerRuntime Version reported by the node through runtime remote API (e.g. containerd://1.4.2).", 1),
        ],
        "ConfigMap" => vec![NAME, ("Data", "integer", "", "Data contains the configuration data.", 0), AGE],
        "Secret" => vec![
            NAME,
            ("Type", "string", "", "Used to facilitate programmatic handling of secret data.", 0),
            ("Data", "integer", "", "Data contains the secret data.", 0),
            AGE,
        ],
        "ServiceAccount" => vec![NAME, ("Secrets", "integer", "", "Secrets is a list of the secrets in the same namespace that pods running using this ServiceAccount are allowed to use.", 0), AGE],
        "Endpoints" => vec![NAME, ("Endpoints", "string", "", "Endpoints is the list of endpoints.", 0), AGE],
        "EndpointSlice" => vec![
            NAME,
            ("AddressType", "string", "", "addressType specifies the type of address carried by this EndpointSlice.", 0),
            ("Ports", "string", "", "ports specifies the list of network ports exposed by each endpoint in this slice.", 0),
            ("Endpoints", "string", "", "endpoints is a list of unique endpoints in this slice.", 0),
            AGE,
        ],
        "Lease" => vec![NAME, ("Holder", "string", "", "holderIdentity contains the identity of the holder of a current lease.", 0), AGE],
        // Upstream's controllerRevisionColumnDefinition.
        "ControllerRevision" => vec![
            NAME,
            ("Controller", "string", "", "Controller of the object", 0),
            ("Revision", "string", "", "Revision indicates the revision of the state represented by Data.", 0),
            AGE,
        ],
        // Upstream's eventColumnDefinitions (pkg/printers/internalversion).
        "Event" => vec![
            ("Last Seen", "string", "", "The time at which the most recent occurrence of this event was recorded.", 0),
            ("Type", "string", "", "Type of this event (Normal, Warning), new types could be added in the future", 0),
            ("Reason", "string", "", "This should be a short, machine understandable string that gives the reason for the transition into the object's current status.", 0),
            ("Object", "string", "", "The object that this event is about.", 0),
            ("Subobject", "string", "", "If referring to a piece of an object instead of an entire object, this string should contain a valid JSON/Go field access statement.", 1),
            ("Source", "string", "", "The component reporting this event. Should be a short machine understandable string.", 1),
            ("Message", "string", "", "A human-readable description of the status of this operation.", 0),
            ("First Seen", "string", "", "The time at which the event was first recorded. (Time of server receipt is in TypeMeta.)", 1),
            ("Count", "string", "", "The number of times this event has occurred.", 1),
            ("Name", "string", "name", NAME_DOC, 1),
        ],
        // Upstream's roleBindingsColumnDefinitions (Role and ClusterRole print the default
        // Name + Created At).
        "RoleBinding" | "ClusterRoleBinding" => vec![
            NAME,
            ("Role", "string", "", "Role is the role being referenced", 0),
            AGE,
            ("Users", "string", "", "Users in the roleBinding", 1),
            ("Groups", "string", "", "Groups in the roleBinding", 1),
            ("ServiceAccounts", "string", "", "ServiceAccounts in the roleBinding", 1),
        ],
        _ => vec![NAME, ("Created At", "date", "", AGE_DOC, 0)],
    }
}

/// The `columnDefinitions` of the Table for `kind`.
pub fn column_definitions(kind: &str) -> Vec<Value> {
    columns(kind)
        .into_iter()
        .map(|(name, ty, format, description, priority)| {
            json!({"name": name, "type": ty, "format": format, "description": description, "priority": priority})
        })
        .collect()
}

/// Upstream's `duration.HumanDuration`, used for AGE and other relative times.
pub fn human_duration(seconds: i64) -> String {
    if seconds < -1 {
        return "<invalid>".into();
    }
    if seconds < 0 {
        return "0s".into();
    }
    if seconds < 120 {
        return format!("{seconds}s");
    }
    let minutes = seconds / 60;
    if minutes < 10 {
        let s = seconds % 60;
        return if s == 0 {
            format!("{minutes}m")
        } else {
            format!("{minutes}m{s}s")
        };
    }
    if minutes < 180 {
        return format!("{minutes}m");
    }
    let hours = seconds / 3600;
    if hours < 8 {
        let m = minutes % 60;
        return if m == 0 {
            format!("{hours}h")
        } else {
            format!("{hours}h{m}m")
        };
    }
    if hours < 48 {
        return format!("{hours}h");
    }
    if hours < 24 * 8 {
        let h = hours % 24;
        return if h == 0 {
            format!("{}d", hours / 24)
        } else {
            format!("{}d{h}h", hours / 24)
        };
    }
    if hours < 24 * 365 * 2 {
        return format!("{}d", hours / 24);
    }
    if hours < 24 * 365 * 8 {
        let dy = (hours / 24) % 365;
        return if dy == 0 {
            format!("{}y", hours / 24 / 365)
        } else {
            format!("{}y{dy}d", hours / 24 / 365)
        };
    }
    format!("{}y", hours / 24 / 365)
}

fn parse_time(v: &Value) -> Option<i64> {
    let t: k8s_openapi::jiff::Timestamp = v.as_str()?.parse().ok()?;
    Some(t.as_second())
}

/// Upstream's `translateTimestampSince`: `<unknown>` for a missing timestamp.
fn since(v: Option<&Value>, now: i64) -> String {
    match v.and_then(parse_time) {
        Some(t) => human_duration(now - t),
        None => "<unknown>".into(),
    }
}

fn s<'a>(obj: &'a Value, ptr: &str) -> &'a str {
    obj.pointer(ptr).and_then(Value::as_str).unwrap_or("")
}

fn n(obj: &Value, ptr: &str) -> i64 {
    obj.pointer(ptr).and_then(Value::as_i64).unwrap_or(0)
}

fn arr<'a>(obj: &'a Value, ptr: &str) -> &'a [Value] {
    obj.pointer(ptr)
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or(&[])
}

fn or_none(v: String) -> String {
    if v.is_empty() {
        "<none>".into()
    } else {
        v
    }
}

/// Upstream's `labels.FormatLabels`: sorted `k=v` pairs, `<none>` when empty.
fn format_labels(v: Option<&Value>) -> String {
    let pairs: Vec<String> = v
        .and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or("")))
                .collect()
        })
        .unwrap_or_default();
    or_none(pairs.join(","))
}

fn container_cells(obj: &Value, ptr: &str) -> (String, String) {
    let cs = arr(obj, ptr);
    let names: Vec<&str> = cs.iter().map(|c| s(c, "/name")).collect();
    let images: Vec<&str> = cs.iter().map(|c| s(c, "/image")).collect();
    (names.join(","), images.join(","))
}

fn selector_string(obj: &Value) -> String {
    let sel: Option<LabelSelector> = obj
        .pointer("/spec/selector")
        .and_then(|v| serde_json::from_value(v.clone()).ok());
    match from_label_selector(sel.as_ref()) {
        Ok(m) if !m.is_everything() => m.to_string(),
        Ok(_) => "<none>".into(),
        Err(_) => "<error>".into(),
    }
}

/// The cells of one object's row.
pub fn row_cells(kind: &str, obj: &Value, now: i64) -> Vec<Value> {
    let name = s(obj, "/metadata/name").to_string();
    let age = since(obj.pointer("/metadata/creationTimestamp"), now);
    match kind {
        "Pod" => pod_cells(obj, name, age, now),
        "Service" => {
            let ports: Vec<String> = arr(obj, "/spec/ports")
                .iter()
                .map(|p| {
                    let proto = s(p, "/protocol");
                    match n(p, "/nodePort") {
                        0 => format!("{}/{proto}", n(p, "/port")),
                        np => format!("{}:{np}/{proto}", n(p, "/port")),
                    }
                })
                .collect();
            let cluster_ip = arr(obj, "/spec/clusterIPs")
                .first()
                .and_then(Value::as_str)
                .unwrap_or("");
            vec![
                json!(name),
                json!(s(obj, "/spec/type")),
                json!(or_none(cluster_ip.to_string())),
                json!(service_external_ip(obj)),
                json!(or_none(ports.join(","))),
                json!(age),
                json!(format_labels(obj.pointer("/spec/selector"))),
            ]
        }
        "Deployment" => {
            let (c, i) = container_cells(obj, "/spec/template/spec/containers");
            let desired = obj
                .pointer("/spec/replicas")
                .and_then(Value::as_i64)
                .unwrap_or(1);
            vec![
                json!(name),
                json!(format!("{}/{desired}", n(obj, "/status/readyReplicas"))),
                json!(n(obj, "/status/updatedReplicas")),
                json!(n(obj, "/status/availableReplicas")),
                json!(age),
                json!(c),
                json!(i),
                json!(selector_string(obj)),
            ]
        }
        "ReplicaSet" => {
            let (c, i) = container_cells(obj, "/spec/template/spec/containers");
            vec![
                json!(name),
                json!(obj
                    .pointer("/spec/replicas")
                    .and_then(Value::as_i64)
                    .unwrap_or(1)),
                json!(n(obj, "/status/replicas")),
                json!(n(obj, "/status/readyReplicas")),
                json!(age),
                json!(c),
                json!(i),
                json!(selector_string(obj)),
            ]
        }
        "DaemonSet" => {
            let (c, i) = container_cells(obj, "/spec/template/spec/containers");
            vec![
                json!(name),
                json!(n(obj, "/status/desiredNumberScheduled")),
                json!(n(obj, "/status/currentNumberScheduled")),
                json!(n(obj, "/status/numberReady")),
                json!(n(obj, "/status/updatedNumberScheduled")),
                json!(n(obj, "/status/numberAvailable")),
                json!(format_labels(
                    obj.pointer("/spec/template/spec/nodeSelector")
                )),
                json!(age),
                json!(c),
                json!(i),
                json!(selector_string(obj)),
            ]
        }
        "Job" => job_cells(obj, name, age, now),
        "Namespace" => vec![json!(name), json!(s(obj, "/status/phase")), json!(age)],
        "Node" => node_cells(obj, name, age),
        "ConfigMap" => {
            let count = |p: &str| {
                obj.pointer(p)
                    .and_then(Value::as_object)
                    .map_or(0, |m| m.len())
            };
            vec![
                json!(name),
                json!(count("/data") + count("/binaryData")),
                json!(age),
            ]
        }
        "Secret" => vec![
            json!(name),
            json!(s(obj, "/type")),
            json!(obj
                .pointer("/data")
                .and_then(Value::as_object)
                .map_or(0, |m| m.len())),
            json!(age),
        ],
        "ServiceAccount" => vec![json!(name), json!(arr(obj, "/secrets").len()), json!(age)],
        "Endpoints" => vec![json!(name), json!(format_endpoints(obj)), json!(age)],
        "EndpointSlice" => {
            let ports: Vec<String> = arr(obj, "/ports")
                .iter()
                .map(|p| {
                    p.get("port")
                        .and_then(Value::as_i64)
                        .map_or("<unset>".into(), |v| v.to_string())
                })
                .collect();
            let addrs: Vec<String> = arr(obj, "/endpoints")
                .iter()
                .flat_map(|e| {
                    arr(e, "/addresses")
                        .iter()
                        .filter_map(|a| a.as_str().map(String::from))
                })
                .collect();
            vec![
                json!(name),
                json!(s(obj, "/addressType")),
                json!(if ports.is_empty() {
                    "<unset>".to_string()
                } else {
                    ports.join(",")
                }),
                json!(if addrs.is_empty() {
                    "<unset>".to_string()
                } else {
                    first_three(&addrs)
                }),
                json!(age),
            ]
        }
        "Lease" => vec![
            json!(name),
            json!(s(obj, "/spec/holderIdentity")),
            json!(age),
        ],
        "ControllerRevision" => vec![
            json!(name),
            json!(controller_of(obj)),
            json!(obj.get("revision").and_then(Value::as_i64).unwrap_or(0)),
            json!(age),
        ],
        "Event" => {
            // printEvent: firstTimestamp, else eventTime; lastTimestamp, else first.
            let first = match obj.pointer("/firstTimestamp").filter(|v| !v.is_null()) {
                Some(t) => since(Some(t), now),
                None => since(obj.pointer("/eventTime"), now),
            };
            let last = match obj.pointer("/lastTimestamp").filter(|v| !v.is_null()) {
                Some(t) => since(Some(t), now),
                None => first.clone(),
            };
            let kind = s(obj, "/involvedObject/kind").to_lowercase();
            let target = match s(obj, "/involvedObject/name") {
                "" => kind,
                n => format!("{kind}/{n}"),
            };
            let first_non_empty = |a: &str, b: &str| {
                if a.is_empty() {
                    b.to_string()
                } else {
                    a.to_string()
                }
            };
            let component =
                first_non_empty(s(obj, "/source/component"), s(obj, "/reportingComponent"));
            let instance = first_non_empty(s(obj, "/source/host"), s(obj, "/reportingInstance"));
            let source = match (component.is_empty(), instance.is_empty()) {
                (true, _) => String::new(),
                (false, true) => component,
                (false, false) => format!("{component}, {instance}"),
            };
            let count = obj
                .pointer("/series/count")
                .or_else(|| obj.pointer("/count"))
                .and_then(Value::as_i64)
                .unwrap_or(0);
            vec![
                json!(last),
                json!(s(obj, "/type")),
                json!(s(obj, "/reason")),
                json!(target),
                json!(s(obj, "/involvedObject/fieldPath")),
                json!(source),
                json!(s(obj, "/message").trim()),
                json!(first),
                json!(count),
                json!(name),
            ]
        }
        "RoleBinding" | "ClusterRoleBinding" => {
            // printRoleBinding: "<kind>/<name>", then subjects by kind (SAs as ns:name).
            let subjects = obj
                .pointer("/subjects")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            let of_kind = |k: &str| {
                subjects
                    .iter()
                    .filter(|x| x.get("kind").and_then(Value::as_str) == Some(k))
                    .map(|x| match k {
                        "ServiceAccount" => {
                            format!("{}/{}", s(x, "/namespace"), s(x, "/name"))
                        }
                        _ => s(x, "/name").to_string(),
                    })
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            vec![
                json!(name),
                json!(format!(
                    "{}/{}",
                    s(obj, "/roleRef/kind"),
                    s(obj, "/roleRef/name")
                )),
                json!(age),
                json!(of_kind("User")),
                json!(of_kind("Group")),
                json!(of_kind("ServiceAccount")),
            ]
        }
        _ => vec![
            json!(name),
            obj.pointer("/metadata/creationTimestamp")
                .cloned()
                .unwrap_or(Value::Null),
        ],
    }
}

/// Upstream shows at most three endpoints, then `+ N more...`.
/// printControllerRevision's Controller cell: the controller owner reference as
/// `<kind>.<group>/<name>` in lower case (`daemonset.apps/fluentd`), `<none>` without one.
fn controller_of(obj: &Value) -> String {
    let owners = obj
        .pointer("/metadata/ownerReferences")
        .and_then(Value::as_array);
    let Some(r) = owners.and_then(|o| {
        o.iter()
            .find(|r| r.get("controller").and_then(Value::as_bool) == Some(true))
    }) else {
        return "<none>".into();
    };
    let field = |f: &str| r.get(f).and_then(Value::as_str).unwrap_or("");
    let group = field("apiVersion")
        .rsplit_once('/')
        .map(|(g, _)| g)
        .unwrap_or("");
    let kind = if group.is_empty() {
        field("kind").to_string()
    } else {
        format!("{}.{group}", field("kind"))
    };
    format!("{}/{}", kind.to_lowercase(), field("name"))
}

fn first_three(items: &[String]) -> String {
    let mut out = items.iter().take(3).cloned().collect::<Vec<_>>().join(",");
    if items.len() > 3 {
        out.push_str(&format!(" + {} more...", items.len() - 3));
    }
    out
}

/// Upstream's `formatEndpoints`: `ip:port` for every address and port of every subset.
fn format_endpoints(obj: &Value) -> String {
    let mut list = Vec::new();
    for ss in arr(obj, "/subsets") {
        let ports = arr(ss, "/ports");
        for a in arr(ss, "/addresses") {
            let ip = s(a, "/ip");
            if ports.is_empty() {
                list.push(ip.to_string());
            }
            for p in ports {
                list.push(format!("{ip}:{}", n(p, "/port")));
            }
        }
    }
    if list.is_empty() {
        "<none>".into()
    } else {
        first_three(&list)
    }
}

/// Upstream's `getServiceExternalIP` (wide: load-balancer addresses are not cut).
fn service_external_ip(obj: &Value) -> String {
    let external: Vec<&str> = arr(obj, "/spec/externalIPs")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    match s(obj, "/spec/type") {
        "ClusterIP" | "NodePort" => or_none(external.join(",")),
        "LoadBalancer" => {
            let mut ips: Vec<&str> = arr(obj, "/status/loadBalancer/ingress")
                .iter()
                .map(|i| {
                    if s(i, "/ip").is_empty() {
                        s(i, "/hostname")
                    } else {
                        s(i, "/ip")
                    }
                })
                .filter(|v| !v.is_empty())
                .collect();
            ips.extend(external);
            if ips.is_empty() {
                "<pending>".into()
            } else {
                ips.join(",")
            }
        }
        "ExternalName" => s(obj, "/spec/externalName").to_string(),
        _ => "<unknown>".into(),
    }
}

fn node_cells(obj: &Value, name: String, age: String) -> Vec<Value> {
    let mut status: Vec<String> = arr(obj, "/status/conditions")
        .iter()
        .filter(|c| s(c, "/type") == "Ready")
        .take(1)
        .map(|c| {
            if s(c, "/status") == "True" {
                "Ready".into()
            } else {
                "NotReady".into()
            }
        })
        .collect();
    if status.is_empty() {
        status.push("Unknown".into());
    }
    if obj.pointer("/spec/unschedulable").and_then(Value::as_bool) == Some(true) {
        status.push("SchedulingDisabled".into());
    }
    // findNodeRoles: `node-role.kubernetes.io/<role>` keys and the `kubernetes.io/role` value.
    let mut roles: Vec<String> = Vec::new();
    for (k, v) in obj
        .pointer("/metadata/labels")
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
    {
        let role = if let Some(r) = k.strip_prefix("node-role.kubernetes.io/") {
            r.to_string()
        } else if k == "kubernetes.io/role" {
            v.as_str().unwrap_or("").to_string()
        } else {
            continue;
        };
        if !role.is_empty() && !roles.contains(&role) {
            roles.push(role);
        }
    }
    roles.sort();
    let address = |ty: &str| {
        arr(obj, "/status/addresses")
            .iter()
            .find(|a| s(a, "/type") == ty)
            .map(|a| s(a, "/address").to_string())
            .unwrap_or_else(|| "<none>".into())
    };
    let info = |f: &str| {
        let v = s(obj, &format!("/status/nodeInfo/{f}"));
        if v.is_empty() {
            "<unknown>".to_string()
        } else {
            v.to_string()
        }
    };
    vec![
        json!(name),
        json!(status.join(",")),
        json!(or_none(roles.join(","))),
        json!(age),
        json!(s(obj, "/status/nodeInfo/kubeletVersion")),
        json!(address("InternalIP")),
        json!(address("ExternalIP")),
        json!(info("osImage")),
        json!(info("kernelVersion")),
        json!(info("containerRuntimeVersion")),
    ]
}

/// A container status's state reason for the STATUS column: a waiting reason, a
/// terminated reason, or the signal/exit code of an unexplained termination.
fn state_reason(cs: &Value, prefix: &str) -> Option<String> {
    let waiting = s(cs, "/state/waiting/reason");
    if !waiting.is_empty() {
        return Some(format!("{prefix}{waiting}"));
    }
    let term = cs.pointer("/state/terminated")?;
    let reason = s(term, "/reason");
    if !reason.is_empty() {
        return Some(format!("{prefix}{reason}"));
    }
    Some(match n(term, "/signal") {
        0 => format!("{prefix}ExitCode:{}", n(term, "/exitCode")),
        sig => format!("{prefix}Signal:{sig}"),
    })
}

/// Upstream's `printPod`, without sidecar (restartable init container) accounting.
fn pod_cells(obj: &Value, name: String, age: String, now: i64) -> Vec<Value> {
    let phase = s(obj, "/status/phase");
    let mut reason = match s(obj, "/status/reason") {
        "" => phase.to_string(),
        r => r.to_string(),
    };
    if arr(obj, "/status/conditions")
        .iter()
        .any(|c| s(c, "/type") == "PodScheduled" && s(c, "/reason") == "SchedulingGated")
    {
        reason = "SchedulingGated".into();
    }
    let mut restarts = 0;
    let mut last_restart: Option<i64> = None;
    let mut note_restart = |cs: &Value, restarts: &mut i64| {
        *restarts += n(cs, "/restartCount");
        if let Some(t) = cs
            .pointer("/lastState/terminated/finishedAt")
            .and_then(parse_time)
        {
            last_restart = Some(last_restart.map_or(t, |l: i64| l.max(t)));
        }
    };
    let init_total = arr(obj, "/spec/initContainers").len();
    let mut initializing = false;
    for (i, cs) in arr(obj, "/status/initContainerStatuses").iter().enumerate() {
        note_restart(cs, &mut restarts);
        if cs.pointer("/state/terminated").is_some() && n(cs, "/state/terminated/exitCode") == 0 {
            continue;
        }
        initializing = true;
        let waiting = s(cs, "/state/waiting/reason");
        reason = if cs.pointer("/state/terminated").is_some()
            || (!waiting.is_empty() && waiting != "PodInitializing")
        {
            state_reason(cs, "Init:").unwrap_or_default()
        } else {
            format!("Init:{i}/{init_total}")
        };
        break;
    }
    let mut ready = 0;
    let initialized = arr(obj, "/status/conditions")
        .iter()
        .any(|c| s(c, "/type") == "Initialized" && s(c, "/status") == "True");
    if !initializing || initialized {
        let mut has_running = false;
        for cs in arr(obj, "/status/containerStatuses").iter().rev() {
            note_restart(cs, &mut restarts);
            if let Some(r) = state_reason(cs, "") {
                reason = r;
            } else if cs.get("ready") == Some(&json!(true))
                && cs.pointer("/state/running").is_some()
            {
                has_running = true;
                ready += 1;
            }
        }
        if reason == "Completed" && has_running {
            let pod_ready = arr(obj, "/status/conditions")
                .iter()
                .any(|c| s(c, "/type") == "Ready" && s(c, "/status") == "True");
            reason = if pod_ready {
                "Running".into()
            } else {
                "NotReady".into()
            };
        }
    }
    if obj.pointer("/metadata/deletionTimestamp").is_some() {
        if s(obj, "/status/reason") == "NodeLost" {
            reason = "Unknown".into();
        } else if phase != "Succeeded" && phase != "Failed" {
            reason = "Terminating".into();
        }
    }
    let restarts_cell = match last_restart {
        Some(t) if restarts != 0 => format!("{restarts} ({} ago)", human_duration(now - t)),
        _ => restarts.to_string(),
    };
    let ip = arr(obj, "/status/podIPs")
        .first()
        .map(|p| s(p, "/ip").to_string())
        .unwrap_or_default();
    let gates = arr(obj, "/spec/readinessGates");
    let gates_cell = if gates.is_empty() {
        "<none>".to_string()
    } else {
        let true_count = gates
            .iter()
            .filter(|g| {
                arr(obj, "/status/conditions")
                    .iter()
                    .any(|c| s(c, "/type") == s(g, "/conditionType") && s(c, "/status") == "True")
            })
            .count();
        format!("{true_count}/{}", gates.len())
    };
    vec![
        json!(name),
        json!(format!("{ready}/{}", arr(obj, "/spec/containers").len())),
        json!(reason),
        json!(restarts_cell),
        json!(age),
        json!(or_none(ip)),
        json!(or_none(s(obj, "/spec/nodeName").to_string())),
        json!(or_none(s(obj, "/status/nominatedNodeName").to_string())),
        json!(gates_cell),
    ]
}

/// Upstream's `printJob`: status from the conditions, `succeeded/completions`, and the
/// run time.
fn job_cells(obj: &Value, name: String, age: String, now: i64) -> Vec<Value> {
    let cond = |t: &str| {
        arr(obj, "/status/conditions")
            .iter()
            .any(|c| s(c, "/type") == t && s(c, "/status") == "True")
    };
    let status = if cond("Complete") {
        "Complete"
    } else if cond("Failed") {
        "Failed"
    } else if obj.pointer("/metadata/deletionTimestamp").is_some() {
        "Terminating"
    } else if cond("SuccessCriteriaMet") {
        "SuccessCriteriaMet"
    } else if cond("FailureTarget") {
        "FailureTarget"
    } else if cond("Suspended") {
        "Suspended"
    } else {
        "Running"
    };
    let succeeded = n(obj, "/status/succeeded");
    let completions = match obj.pointer("/spec/completions").and_then(Value::as_i64) {
        Some(c) => format!("{succeeded}/{c}"),
        None => {
            let parallelism = obj
                .pointer("/spec/parallelism")
                .and_then(Value::as_i64)
                .unwrap_or(0);
            if parallelism > 1 {
                format!("{succeeded}/1 of {parallelism}")
            } else {
                format!("{succeeded}/1")
            }
        }
    };
    let start = obj.pointer("/status/startTime").and_then(parse_time);
    let end = obj.pointer("/status/completionTime").and_then(parse_time);
    let duration = match (start, end) {
        (None, _) => String::new(),
        (Some(a), None) => human_duration(now - a),
        (Some(a), Some(b)) => human_duration(b - a),
    };
    let (c, i) = container_cells(obj, "/spec/template/spec/containers");
    vec![
        json!(name),
        json!(status),
        json!(completions),
        json!(duration),
        json!(age),
        json!(c),
        json!(i),
        json!(selector_string(obj)),
    ]
}

/// A `Table` for a list of objects of `kind` at `now` (Unix seconds), answering a list
/// whose resourceVersion is `resource_version`.
pub fn table(
    kind: &str,
    objects: &[Value],
    resource_version: &str,
    include: IncludeObject,
    now: i64,
) -> Value {
    let rows: Vec<Value> = objects.iter().map(|o| row(kind, o, include, now)).collect();
    json!({
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": {"resourceVersion": resource_version},
        "columnDefinitions": column_definitions(kind),
        "rows": rows,
    })
}

/// One row: its cells and, per `includeObject`, the object or its metadata.
pub fn row(kind: &str, obj: &Value, include: IncludeObject, now: i64) -> Value {
    let mut r = json!({"cells": row_cells(kind, obj, now)});
    match include {
        IncludeObject::None => {}
        IncludeObject::Object => r["object"] = obj.clone(),
        IncludeObject::Metadata => {
            r["object"] = json!({
                "kind": "PartialObjectMetadata",
                "apiVersion": "meta.k8s.io/v1",
                "metadata": obj.get("metadata").cloned().unwrap_or_else(|| json!({})),
            })
        }
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 2026-01-01T01:00:00Z
    const NOW: i64 = 1_767_229_200;

    #[test]
    fn human_durations() {
        let cases = [
            (-5, "<invalid>"),
            (-1, "0s"),
            (0, "0s"),
            (119, "119s"),
            (120, "2m"),
            (150, "2m30s"),
            (600, "10m"),
            (179 * 60, "179m"),
            (3 * 3600, "3h"),
            (3 * 3600 + 60 * 5, "3h5m"),
            (8 * 3600, "8h"),
            (47 * 3600, "47h"),
            (48 * 3600, "2d"),
            (50 * 3600, "2d2h"),
            (8 * 86400, "8d"),
            (729 * 86400, "729d"),
            (730 * 86400, "2y"),
            (740 * 86400, "2y10d"),
            (9 * 365 * 86400, "9y"),
        ];
        for (secs, want) in cases {
            assert_eq!(human_duration(secs), want, "{secs}s");
        }
    }

    fn cells(kind: &str, obj: Value) -> Vec<Value> {
        let c = row_cells(kind, &obj, NOW);
        assert_eq!(
            c.len(),
            column_definitions(kind).len(),
            "{kind}: one cell per column"
        );
        c
    }

    #[test]
    fn service_rows() {
        let meta = json!({"name": "web", "creationTimestamp": "2026-01-01T00:58:00Z"});
        let cases = vec![
            (
                json!({"metadata": meta, "spec": {"type": "ClusterIP", "clusterIPs": ["10.96.0.10"],
                       "ports": [{"port": 53, "protocol": "UDP"}, {"port": 53, "protocol": "TCP"}], "selector": {"k8s-app": "kube-dns"}}}),
                json!([
                    "web",
                    "ClusterIP",
                    "10.96.0.10",
                    "<none>",
                    "53/UDP,53/TCP",
                    "2m",
                    "k8s-app=kube-dns"
                ]),
            ),
            (
                json!({"metadata": meta, "spec": {"type": "LoadBalancer", "clusterIPs": ["10.96.0.11"],
                       "ports": [{"port": 80, "nodePort": 31000, "protocol": "TCP"}]}}),
                json!([
                    "web",
                    "LoadBalancer",
                    "10.96.0.11",
                    "<pending>",
                    "80:31000/TCP",
                    "2m",
                    "<none>"
                ]),
            ),
            (
                json!({"metadata": meta, "spec": {"type": "LoadBalancer", "clusterIPs": ["10.96.0.11"], "externalIPs": ["198.51.100.1"]},
                       "status": {"loadBalancer": {"ingress": [{"ip": "192.0.2.10"}, {"hostname": "lb.example.com"}]}}}),
                json!([
                    "web",
                    "LoadBalancer",
                    "10.96.0.11",
                    "192.0.2.10,lb.example.com,198.51.100.1",
                    "<none>",
                    "2m",
                    "<none>"
                ]),
            ),
            (
                json!({"metadata": {"name": "db"}, "spec": {"type": "ExternalName", "externalName": "db.example.com"}}),
                json!([
                    "db",
                    "ExternalName",
                    "<none>",
                    "db.example.com",
                    "<none>",
                    "<unknown>",
                    "<none>"
                ]),
            ),
        ];
        for (obj, want) in cases {
            assert_eq!(Value::Array(cells("Service", obj.clone())), want, "{obj}");
        }
    }

    #[test]
    fn pod_rows() {
        let meta = json!({"name": "p", "creationTimestamp": "2026-01-01T00:00:00Z"});
        let spec = json!({"containers": [{"name": "a"}, {"name": "b"}], "nodeName": "n1"});
        let running = |name: &str, ready: bool, restarts: i64| {
            json!({"name": name, "ready": ready, "restartCount": restarts, "state": {"running": {}},
                   "lastState": if restarts > 0 { json!({"terminated": {"finishedAt": "2026-01-01T00:55:00Z", "exitCode": 1}}) } else { json!({}) }})
        };
        let cases = vec![
            (
                json!({"metadata": meta, "spec": spec,
                       "status": {"phase": "Running", "podIPs": [{"ip": "10.244.1.5"}],
                                  "containerStatuses": [running("a", true, 0), running("b", true, 2)]}}),
                json!([
                    "p",
                    "2/2",
                    "Running",
                    "2 (5m ago)",
                    "60m",
                    "10.244.1.5",
                    "n1",
                    "<none>",
                    "<none>"
                ]),
            ),
            (
                json!({"metadata": meta, "spec": spec,
                       "status": {"phase": "Pending", "containerStatuses": [
                           {"name": "a", "ready": false, "restartCount": 0, "state": {"waiting": {"reason": "ImagePullBackOff"}}},
                           running("b", false, 0)]}}),
                json!([
                    "p",
                    "0/2",
                    "ImagePullBackOff",
                    "0",
                    "60m",
                    "<none>",
                    "n1",
                    "<none>",
                    "<none>"
                ]),
            ),
            (
                json!({"metadata": meta, "spec": {"containers": [{"name": "a"}], "initContainers": [{"name": "i1"}, {"name": "i2"}]},
                       "status": {"phase": "Pending", "initContainerStatuses": [
                           {"name": "i1", "restartCount": 0, "state": {"terminated": {"exitCode": 0}}},
                           {"name": "i2", "restartCount": 0, "state": {"running": {}}}]}}),
                json!(["p", "0/1", "Init:1/2", "0", "60m", "<none>", "<none>", "<none>", "<none>"]),
            ),
            (
                json!({"metadata": meta, "spec": {"containers": [{"name": "a"}], "initContainers": [{"name": "i1"}]},
                       "status": {"phase": "Pending", "initContainerStatuses": [
                           {"name": "i1", "restartCount": 3, "state": {"waiting": {"reason": "CrashLoopBackOff"}}}]}}),
                json!([
                    "p",
                    "0/1",
                    "Init:CrashLoopBackOff",
                    "3",
                    "60m",
                    "<none>",
                    "<none>",
                    "<none>",
                    "<none>"
                ]),
            ),
            (
                json!({"metadata": meta, "spec": {"containers": [{"name": "a"}]},
                       "status": {"phase": "Failed", "containerStatuses": [
                           {"name": "a", "restartCount": 0, "state": {"terminated": {"exitCode": 137, "signal": 9}}}]}}),
                json!(["p", "0/1", "Signal:9", "0", "60m", "<none>", "<none>", "<none>", "<none>"]),
            ),
            (
                json!({"metadata": {"name": "p", "creationTimestamp": "2026-01-01T00:00:00Z", "deletionTimestamp": "2026-01-01T00:59:00Z"},
                       "spec": {"containers": [{"name": "a"}], "readinessGates": [{"conditionType": "x/ready"}]},
                       "status": {"phase": "Running", "conditions": [{"type": "x/ready", "status": "True"}],
                                  "containerStatuses": [running("a", true, 0)]}}),
                json!([
                    "p",
                    "1/1",
                    "Terminating",
                    "0",
                    "60m",
                    "<none>",
                    "<none>",
                    "<none>",
                    "1/1"
                ]),
            ),
        ];
        for (obj, want) in cases {
            assert_eq!(Value::Array(cells("Pod", obj.clone())), want, "{obj}");
        }
    }

    #[test]
    fn workload_and_other_rows() {
        let meta = json!({"name": "x", "creationTimestamp": "2026-01-01T00:30:00Z"});
        let template = json!({"spec": {"containers": [{"name": "c1", "image": "i1"}, {"name": "c2", "image": "i2"}]}});
        let cases = vec![
            (
                "Deployment",
                json!({"metadata": meta, "spec": {"replicas": 3, "selector": {"matchLabels": {"app": "x"}}, "template": template},
                       "status": {"readyReplicas": 2, "updatedReplicas": 3, "availableReplicas": 2}}),
                json!(["x", "2/3", 3, 2, "30m", "c1,c2", "i1,i2", "app=x"]),
            ),
            (
                "ReplicaSet",
                json!({"metadata": meta, "spec": {"replicas": 2, "selector": {"matchExpressions": [{"key": "app", "operator": "In", "values": ["x", "y"]}]}, "template": template},
                       "status": {"replicas": 2, "readyReplicas": 1}}),
                json!(["x", 2, 2, 1, "30m", "c1,c2", "i1,i2", "app in (x,y)"]),
            ),
            (
                "DaemonSet",
                json!({"metadata": meta, "spec": {"selector": {"matchLabels": {"app": "x"}},
                       "template": {"spec": {"nodeSelector": {"kubernetes.io/os": "linux"}, "containers": [{"name": "c", "image": "i"}]}}},
                       "status": {"desiredNumberScheduled": 3, "currentNumberScheduled": 3, "numberReady": 2, "updatedNumberScheduled": 3, "numberAvailable": 2}}),
                json!([
                    "x",
                    3,
                    3,
                    2,
                    3,
                    2,
                    "kubernetes.io/os=linux",
                    "30m",
                    "c",
                    "i",
                    "app=x"
                ]),
            ),
            (
                "Job",
                json!({"metadata": meta, "spec": {"completions": 1, "selector": {"matchLabels": {"job": "x"}}, "template": template},
                       "status": {"succeeded": 1, "startTime": "2026-01-01T00:30:00Z", "completionTime": "2026-01-01T00:30:42Z",
                                  "conditions": [{"type": "Complete", "status": "True"}]}}),
                json!(["x", "Complete", "1/1", "42s", "30m", "c1,c2", "i1,i2", "job=x"]),
            ),
            (
                "Namespace",
                json!({"metadata": meta, "status": {"phase": "Active"}}),
                json!(["x", "Active", "30m"]),
            ),
            (
                "Node",
                json!({"metadata": {"name": "n1", "creationTimestamp": "2025-12-30T01:00:00Z", "labels": {"node-role.kubernetes.io/control-plane": "", "kubernetes.io/role": "worker"}},
                       "spec": {"unschedulable": true},
                       "status": {"conditions": [{"type": "Ready", "status": "True"}], "addresses": [{"type": "InternalIP", "address": "192.0.2.1"}],
                                  "nodeInfo": {"kubeletVersion": "v1.33.1", "osImage": "Debian GNU/Linux 12 (bookworm)"}}}),
                json!([
                    "n1",
                    "Ready,SchedulingDisabled",
                    "control-plane,worker",
                    "2d",
                    "v1.33.1",
                    "192.0.2.1",
                    "<none>",
                    "Debian GNU/Linux 12 (bookworm)",
                    "<unknown>",
                    "<unknown>"
                ]),
            ),
            (
                "Node",
                json!({"metadata": {"name": "n2"}}),
                json!([
                    "n2",
                    "Unknown",
                    "<none>",
                    "<unknown>",
                    "",
                    "<none>",
                    "<none>",
                    "<unknown>",
                    "<unknown>",
                    "<unknown>"
                ]),
            ),
            (
                "ConfigMap",
                json!({"metadata": meta, "data": {"a": "1", "b": "2"}, "binaryData": {"c": "AA=="}}),
                json!(["x", 3, "30m"]),
            ),
            (
                "RoleBinding",
                json!({"metadata": meta, "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "view"},
                       "subjects": [{"kind": "User", "name": "alice", "apiGroup": "rbac.authorization.k8s.io"},
                                    {"kind": "ServiceAccount", "name": "agent", "namespace": "kube-system"},
                                    {"kind": "User", "name": "bob", "apiGroup": "rbac.authorization.k8s.io"}]}),
                json!([
                    "x",
                    "ClusterRole/view",
                    "30m",
                    "alice, bob",
                    "",
                    "kube-system/agent"
                ]),
            ),
            (
                "Secret",
                json!({"metadata": meta, "type": "Opaque", "data": {"a": "MQ=="}}),
                json!(["x", "Opaque", 1, "30m"]),
            ),
            (
                "ServiceAccount",
                json!({"metadata": meta}),
                json!(["x", 0, "30m"]),
            ),
            (
                "Endpoints",
                json!({"metadata": meta, "subsets": [{"addresses": [{"ip": "10.0.0.1"}, {"ip": "10.0.0.2"}], "ports": [{"port": 80}, {"port": 443}]}]}),
                json!([
                    "x",
                    "10.0.0.1:80,10.0.0.1:443,10.0.0.2:80 + 1 more...",
                    "30m"
                ]),
            ),
            (
                "Endpoints",
                json!({"metadata": meta}),
                json!(["x", "<none>", "30m"]),
            ),
            (
                "EndpointSlice",
                json!({"metadata": meta, "addressType": "IPv4", "ports": [{"port": 80}, {"name": "x"}],
                       "endpoints": [{"addresses": ["10.0.0.1"]}, {"addresses": ["10.0.0.2"]}]}),
                json!(["x", "IPv4", "80,<unset>", "10.0.0.1,10.0.0.2", "30m"]),
            ),
            (
                "Lease",
                json!({"metadata": meta, "spec": {"holderIdentity": "node-a"}}),
                json!(["x", "node-a", "30m"]),
            ),
            (
                "ControllerRevision",
                json!({"metadata": {"name": "x", "creationTimestamp": "2026-01-01T00:30:00Z",
                       "ownerReferences": [
                           {"apiVersion": "v1", "kind": "Pod", "name": "p", "uid": "1"},
                           {"apiVersion": "apps/v1", "kind": "DaemonSet", "name": "fluentd", "uid": "2", "controller": true}]},
                       "data": {}, "revision": 3}),
                json!(["x", "daemonset.apps/fluentd", 3, "30m"]),
            ),
            (
                "ControllerRevision",
                json!({"metadata": meta, "data": {}, "revision": 1}),
                json!(["x", "<none>", 1, "30m"]),
            ),
            (
                "Event",
                json!({"metadata": meta, "type": "Warning", "reason": "FailedScheduling",
                       "involvedObject": {"kind": "Pod", "name": "web-1", "namespace": "default"},
                       "source": {"component": "default-scheduler"}, "count": 3,
                       "message": "0/3 nodes are available: 3 Insufficient cpu.\n",
                       "firstTimestamp": "2026-01-01T00:30:00Z", "lastTimestamp": "2026-01-01T00:59:00Z"}),
                json!([
                    "60s",
                    "Warning",
                    "FailedScheduling",
                    "pod/web-1",
                    "",
                    "default-scheduler",
                    "0/3 nodes are available: 3 Insufficient cpu.",
                    "30m",
                    3,
                    "x"
                ]),
            ),
        ];
        for (kind, obj, want) in cases {
            assert_eq!(Value::Array(cells(kind, obj.clone())), want, "{kind} {obj}");
        }
    }

    #[test]
    fn table_shape() {
        let svc = json!({"metadata": {"name": "web", "namespace": "default", "resourceVersion": "7"},
                         "spec": {"type": "ClusterIP", "clusterIPs": ["10.96.0.10"], "ports": [{"port": 80, "protocol": "TCP"}]}});
        let t = table(
            "Service",
            std::slice::from_ref(&svc),
            "12",
            IncludeObject::Metadata,
            NOW,
        );
        assert_eq!(t["kind"], "Table");
        assert_eq!(t["apiVersion"], "meta.k8s.io/v1");
        assert_eq!(t["metadata"], json!({"resourceVersion": "12"}));
        let names: Vec<&str> = t["columnDefinitions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["name"].as_str().unwrap())
            .collect();
        assert_eq!(
            names,
            [
                "Name",
                "Type",
                "Cluster-IP",
                "External-IP",
                "Port(s)",
                "Age",
                "Selector"
            ]
        );
        assert_eq!(t["columnDefinitions"][0]["format"], "name");
        assert_eq!(t["columnDefinitions"][6]["priority"], 1);
        assert_eq!(
            t["rows"][0]["object"],
            json!({"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1",
                   "metadata": {"name": "web", "namespace": "default", "resourceVersion": "7"}})
        );
        let cases = [
            (IncludeObject::None, Value::Null),
            (IncludeObject::Object, svc.clone()),
        ];
        for (inc, want) in cases {
            assert_eq!(
                row("Service", &svc, inc, NOW)
                    .get("object")
                    .cloned()
                    .unwrap_or(Value::Null),
                want,
                "{inc:?}"
            );
        }
        let parse = [
            ("", Some(IncludeObject::Metadata)),
            ("None", Some(IncludeObject::None)),
            ("Object", Some(IncludeObject::Object)),
            ("all", None),
        ];
        for (input, want) in parse {
            assert_eq!(IncludeObject::parse(input), want, "{input:?}");
        }
    }
}
