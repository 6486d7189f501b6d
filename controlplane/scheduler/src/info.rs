//! What the plugins read, computed once per object instead of once per (pod, node) pair:
//! a pod's effective requests and host ports ([`PodInfo`]), a node's allocatable resources
//! and the running sum of the requests of the pods on it ([`NodeInfo`]).

use std::{collections::BTreeMap, sync::Arc};

use k8s_openapi::api::core::v1::{Container, Node, Pod, Taint};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

use crate::quantity;

/// Upstream's `DefaultMilliCPURequest`: what scoring assumes for a container without a CPU
/// request, so that best-effort pods still spread (`schedutil.GetNonzeroRequests`).
pub const DEFAULT_MILLI_CPU_REQUEST: i64 = 100;
/// Upstream's `DefaultMemoryRequest` (200 MiB).
pub const DEFAULT_MEMORY_REQUEST: i64 = 200 * 1024 * 1024;

/// The resources NodeResourcesFit compares. Extended resources (`example.com/gpu`,
/// `hugepages-2Mi`) are kept by name in `scalar`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Resources {
    pub milli_cpu: i64,
    pub memory: i64,
    pub ephemeral_storage: i64,
    pub scalar: BTreeMap<String, i64>,
}

impl Resources {
    fn from_list(list: Option<&BTreeMap<String, Quantity>>) -> Resources {
        let mut r = Resources::default();
        for (name, q) in list.into_iter().flatten() {
            r.set(name, &q.0);
        }
        r
    }

    fn set(&mut self, name: &str, q: &str) {
        // The API server validated quantities; a foreign value we cannot read counts as 0
        // (logged), which is what a missing entry means too.
        let parsed = match name {
            "cpu" => quantity::milli_value(q),
            _ => quantity::value(q),
        };
        let v = match parsed {
            Ok(v) => v,
            Err(e) => {
                tracing::warn!("resource {name}: {e}; counting it as 0");
                0
            }
        };
        match name {
            "cpu" => self.milli_cpu = v,
            "memory" => self.memory = v,
            "ephemeral-storage" => self.ephemeral_storage = v,
            // `pods` is a node-only quantity, handled by NodeInfo.
            "pods" => {}
            n if is_scalar(n) => {
                self.scalar.insert(n.to_string(), v);
            }
            _ => {}
        }
    }

    pub fn add(&mut self, o: &Resources) {
        self.milli_cpu = self.milli_cpu.saturating_add(o.milli_cpu);
        self.memory = self.memory.saturating_add(o.memory);
        self.ephemeral_storage = self.ephemeral_storage.saturating_add(o.ephemeral_storage);
        for (k, v) in &o.scalar {
            let e = self.scalar.entry(k.clone()).or_insert(0);
            *e = e.saturating_add(*v);
        }
    }

    pub fn sub(&mut self, o: &Resources) {
        self.milli_cpu -= o.milli_cpu;
        self.memory -= o.memory;
        self.ephemeral_storage -= o.ephemeral_storage;
        for (k, v) in &o.scalar {
            *self.scalar.entry(k.clone()).or_insert(0) -= v;
        }
        self.scalar.retain(|_, v| *v != 0);
    }

    /// Component-wise maximum (init containers run one at a time).
    pub fn max_with(&mut self, o: &Resources) {
        self.milli_cpu = self.milli_cpu.max(o.milli_cpu);
        self.memory = self.memory.max(o.memory);
        self.ephemeral_storage = self.ephemeral_storage.max(o.ephemeral_storage);
        for (k, v) in &o.scalar {
            let e = self.scalar.entry(k.clone()).or_insert(0);
            *e = (*e).max(*v);
        }
    }

    pub fn is_zero(&self) -> bool {
        self.milli_cpu == 0
            && self.memory == 0
            && self.ephemeral_storage == 0
            && self.scalar.values().all(|v| *v == 0)
    }
}

/// Extended resources and hugepages: what upstream's `IsScalarResourceName` accepts.
fn is_scalar(name: &str) -> bool {
    name.starts_with("hugepages-")
        || name.starts_with("attachable-volumes-")
        || (name.contains('/') && !name.starts_with("kubernetes.io/"))
}

/// A container's requests, with limits standing in for missing requests (the API
/// server's defaulting does exactly that for pods it admits).
fn container_requests(c: &Container) -> Resources {
    let res = c.resources.as_ref();
    let mut r = Resources::from_list(res.and_then(|r| r.limits.as_ref()));
    let req = Resources::from_list(res.and_then(|r| r.requests.as_ref()));
    if let Some(reqs) = res.and_then(|r| r.requests.as_ref()) {
        if reqs.contains_key("cpu") {
            r.milli_cpu = req.milli_cpu;
        }
        if reqs.contains_key("memory") {
            r.memory = req.memory;
        }
        if reqs.contains_key("ephemeral-storage") {
            r.ephemeral_storage = req.ephemeral_storage;
        }
        for (k, v) in req.scalar {
            r.scalar.insert(k, v);
        }
    }
    r
}

/// Upstream's `resourcehelper.PodRequests`: the sum of the app containers and of the
/// restartable (sidecar) init containers, or the largest regular init container plus the
/// sidecars started before it, whichever is larger, plus the pod overhead.
pub fn pod_requests(pod: &Pod) -> Resources {
    let Some(spec) = pod.spec.as_ref() else {
        return Resources::default();
    };
    let mut reqs = Resources::default();
    for c in &spec.containers {
        reqs.add(&container_requests(c));
    }
    let mut sidecars = Resources::default();
    let mut init_max = Resources::default();
    for c in spec.init_containers.iter().flatten() {
        let mut r = container_requests(c);
        if c.restart_policy.as_deref() == Some("Always") {
            reqs.add(&r);
            sidecars.add(&r);
            r = sidecars.clone();
        } else {
            r.add(&sidecars);
        }
        init_max.max_with(&r);
    }
    reqs.max_with(&init_max);
    if let Some(o) = spec.overhead.as_ref() {
        reqs.add(&Resources::from_list(Some(o)));
    }
    reqs
}

/// Upstream's non-zero CPU/memory requests for scoring: every container without a request
/// counts as 100m / 200Mi (`schedutil.GetNonzeroRequests`), with the same init-container
/// and overhead rules as [`pod_requests`].
pub fn non_zero_requests(pod: &Pod) -> (i64, i64) {
    let Some(spec) = pod.spec.as_ref() else {
        return (0, 0);
    };
    let nz = |c: &Container| {
        let r = container_requests(c);
        let has = |k: &str| {
            c.resources.as_ref().is_some_and(|res| {
                res.requests.as_ref().is_some_and(|m| m.contains_key(k))
                    || res.limits.as_ref().is_some_and(|m| m.contains_key(k))
            })
        };
        (
            if has("cpu") {
                r.milli_cpu
            } else {
                DEFAULT_MILLI_CPU_REQUEST
            },
            if has("memory") {
                r.memory
            } else {
                DEFAULT_MEMORY_REQUEST
            },
        )
    };
    let (mut cpu, mut mem) = (0i64, 0i64);
    for c in &spec.containers {
        let (a, b) = nz(c);
        cpu += a;
        mem += b;
    }
    let (mut sc, mut sm, mut ic, mut im) = (0i64, 0i64, 0i64, 0i64);
    for c in spec.init_containers.iter().flatten() {
        let (mut a, mut b) = nz(c);
        if c.restart_policy.as_deref() == Some("Always") {
            cpu += a;
            mem += b;
            sc += a;
            sm += b;
            a = sc;
            b = sm;
        } else {
            a += sc;
            b += sm;
        }
        ic = ic.max(a);
        im = im.max(b);
    }
    cpu = cpu.max(ic);
    mem = mem.max(im);
    if let Some(o) = spec.overhead.as_ref() {
        let o = Resources::from_list(Some(o));
        cpu += o.milli_cpu;
        mem += o.memory;
    }
    (cpu, mem)
}

/// A `hostPort` a pod claims: ("" → 0.0.0.0, "" protocol → TCP, as upstream's sanitize).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct HostPort {
    pub ip: String,
    pub protocol: String,
    pub port: i32,
}

pub const BIND_ALL: &str = "0.0.0.0";

impl HostPort {
    /// Upstream's `HostPortInfo.CheckConflict` for one pair: 0.0.0.0 collides with every
    /// address, any other address with itself and 0.0.0.0.
    pub fn conflicts(&self, o: &HostPort) -> bool {
        self.port == o.port
            && self.protocol == o.protocol
            && (self.ip == o.ip || self.ip == BIND_ALL || o.ip == BIND_ALL)
    }
}

fn host_ports(pod: &Pod) -> Vec<HostPort> {
    let mut out = Vec::new();
    for c in pod.spec.iter().flat_map(|s| &s.containers) {
        for p in c.ports.iter().flatten() {
            let Some(port) = p.host_port.filter(|p| *p > 0) else {
                continue;
            };
            out.push(HostPort {
                ip: p
                    .host_ip
                    .clone()
                    .filter(|s| !s.is_empty())
                    .unwrap_or_else(|| BIND_ALL.into()),
                protocol: p
                    .protocol
                    .clone()
                    .filter(|s| !s.is_empty())
                    .unwrap_or_else(|| "TCP".into()),
                port,
            });
        }
    }
    out
}

/// `namespace/name`, the key of pods everywhere in this crate.
pub fn pod_key(pod: &Pod) -> String {
    format!(
        "{}/{}",
        pod.metadata.namespace.as_deref().unwrap_or("default"),
        pod.metadata.name.as_deref().unwrap_or("")
    )
}

/// A pod with what the plugins need precomputed.
#[derive(Debug)]
pub struct PodInfo {
    pub key: String,
    pub namespace: String,
    pub pod: Pod,
    pub requests: Resources,
    pub non_zero: (i64, i64),
    pub host_ports: Vec<HostPort>,
    pub priority: i32,
}

impl PodInfo {
    pub fn new(pod: Pod) -> PodInfo {
        PodInfo {
            key: pod_key(&pod),
            namespace: pod
                .metadata
                .namespace
                .clone()
                .unwrap_or_else(|| "default".into()),
            requests: pod_requests(&pod),
            non_zero: non_zero_requests(&pod),
            host_ports: host_ports(&pod),
            priority: pod.spec.as_ref().and_then(|s| s.priority).unwrap_or(0),
            pod,
        }
    }

    pub fn labels(&self) -> &BTreeMap<String, String> {
        static EMPTY: BTreeMap<String, String> = BTreeMap::new();
        self.pod.metadata.labels.as_ref().unwrap_or(&EMPTY)
    }

    pub fn terminating(&self) -> bool {
        self.pod.metadata.deletion_timestamp.is_some()
    }

    pub fn node_name(&self) -> Option<&str> {
        self.pod
            .spec
            .as_ref()
            .and_then(|s| s.node_name.as_deref())
            .filter(|n| !n.is_empty())
    }
}

/// A node plus the running totals of the pods assigned (or assumed) to it.
#[derive(Debug, Clone)]
pub struct NodeInfo {
    pub name: String,
    /// None while only pods name this node (bound before the Node was seen or after it was
    /// deleted); such entries are never candidates.
    pub node: Option<Arc<Node>>,
    pub allocatable: Resources,
    pub allowed_pods: i64,
    pub requested: Resources,
    pub non_zero_requested: (i64, i64),
    pub pods: Vec<Arc<PodInfo>>,
    pub used_ports: Vec<HostPort>,
}

impl NodeInfo {
    pub fn new(name: &str) -> NodeInfo {
        NodeInfo {
            name: name.to_string(),
            node: None,
            allocatable: Resources::default(),
            allowed_pods: 0,
            requested: Resources::default(),
            non_zero_requested: (0, 0),
            pods: Vec::new(),
            used_ports: Vec::new(),
        }
    }

    pub fn set_node(&mut self, node: Arc<Node>) {
        let alloc = node.status.as_ref().and_then(|s| s.allocatable.as_ref());
        self.allocatable = Resources::from_list(alloc);
        self.allowed_pods = alloc
            .and_then(|a| a.get("pods"))
            .and_then(|q| quantity::value(&q.0).ok())
            .unwrap_or(0);
        self.node = Some(node);
    }

    pub fn labels(&self) -> &BTreeMap<String, String> {
        static EMPTY: BTreeMap<String, String> = BTreeMap::new();
        self.node
            .as_ref()
            .and_then(|n| n.metadata.labels.as_ref())
            .unwrap_or(&EMPTY)
    }

    pub fn taints(&self) -> &[Taint] {
        self.node
            .as_ref()
            .and_then(|n| n.spec.as_ref())
            .and_then(|s| s.taints.as_deref())
            .unwrap_or(&[])
    }

    pub fn unschedulable(&self) -> bool {
        self.node
            .as_ref()
            .and_then(|n| n.spec.as_ref())
            .and_then(|s| s.unschedulable)
            .unwrap_or(false)
    }

    pub fn add_pod(&mut self, p: Arc<PodInfo>) {
        self.requested.add(&p.requests);
        self.non_zero_requested.0 += p.non_zero.0;
        self.non_zero_requested.1 += p.non_zero.1;
        self.used_ports.extend(p.host_ports.iter().cloned());
        self.pods.push(p);
    }

    /// Removes the pod with `key`; false if it was not here.
    pub fn remove_pod(&mut self, key: &str) -> bool {
        let Some(i) = self.pods.iter().position(|p| p.key == key) else {
            return false;
        };
        let p = self.pods.swap_remove(i);
        self.requested.sub(&p.requests);
        self.non_zero_requested.0 -= p.non_zero.0;
        self.non_zero_requested.1 -= p.non_zero.1;
        for hp in &p.host_ports {
            if let Some(j) = self.used_ports.iter().position(|u| u == hp) {
                self.used_ports.swap_remove(j);
            }
        }
        true
    }
}

#[cfg(test)]
pub(crate) mod testutil {
    //! Builders for plugin tables.
    use super::*;
    use k8s_openapi::api::core::v1::{
        ContainerPort, NodeSpec, NodeStatus, PodSpec, ResourceRequirements,
    };
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    pub fn q(s: &str) -> Quantity {
        Quantity(s.to_string())
    }

    pub fn node(name: &str, cpu: &str, mem: &str, pods: &str) -> Node {
        Node {
            metadata: ObjectMeta {
                name: Some(name.into()),
                labels: Some(BTreeMap::from([(
                    "kubernetes.io/hostname".to_string(),
                    name.to_string(),
                )])),
                ..Default::default()
            },
            spec: Some(NodeSpec::default()),
            status: Some(NodeStatus {
                allocatable: Some(BTreeMap::from([
                    ("cpu".into(), q(cpu)),
                    ("memory".into(), q(mem)),
                    ("pods".into(), q(pods)),
                    ("ephemeral-storage".into(), q("100Gi")),
                ])),
                ..Default::default()
            }),
        }
    }

    pub fn container(cpu: Option<&str>, mem: Option<&str>) -> Container {
        let mut req = BTreeMap::new();
        if let Some(c) = cpu {
            req.insert("cpu".to_string(), q(c));
        }
        if let Some(m) = mem {
            req.insert("memory".to_string(), q(m));
        }
        Container {
            name: "c".into(),
            resources: Some(ResourceRequirements {
                requests: Some(req),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    pub fn pod(name: &str, cpu: Option<&str>, mem: Option<&str>) -> Pod {
        Pod {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some("default".into()),
                ..Default::default()
            },
            spec: Some(PodSpec {
                containers: vec![container(cpu, mem)],
                ..Default::default()
            }),
            status: None,
        }
    }

    pub fn with_host_port(mut p: Pod, ip: &str, proto: &str, port: i32) -> Pod {
        p.spec.as_mut().unwrap().containers[0]
            .ports
            .get_or_insert_with(Vec::new)
            .push(ContainerPort {
                container_port: port,
                host_port: Some(port),
                host_ip: (!ip.is_empty()).then(|| ip.to_string()),
                protocol: (!proto.is_empty()).then(|| proto.to_string()),
                ..Default::default()
            });
        p
    }

    pub fn node_info(n: Node, pods: Vec<Pod>) -> NodeInfo {
        let mut ni = NodeInfo::new(n.metadata.name.as_deref().unwrap());
        ni.set_node(Arc::new(n));
        for p in pods {
            ni.add_pod(Arc::new(PodInfo::new(p)));
        }
        ni
    }

    pub fn with_labels(mut n: Node, labels: &[(&str, &str)]) -> Node {
        let l = n.metadata.labels.get_or_insert_with(BTreeMap::new);
        for (k, v) in labels {
            l.insert(k.to_string(), v.to_string());
        }
        n
    }

    pub fn with_taint(mut n: Node, key: &str, value: &str, effect: &str) -> Node {
        n.spec
            .get_or_insert_with(NodeSpec::default)
            .taints
            .get_or_insert_with(Vec::new)
            .push(Taint {
                key: key.into(),
                value: (!value.is_empty()).then(|| value.to_string()),
                effect: effect.into(),
                time_added: None,
            });
        n
    }
}

#[cfg(test)]
mod tests {
    use super::testutil::*;
    use super::*;
    use k8s_openapi::api::core::v1::ResourceRequirements;

    #[test]
    fn requests_follow_upstream_pod_requests() {
        // Two app containers sum; a regular init container bigger than the sum wins.
        let mut p = pod("p", Some("100m"), Some("100Mi"));
        let spec = p.spec.as_mut().unwrap();
        spec.containers.push(container(Some("200m"), None));
        spec.init_containers = Some(vec![container(Some("500m"), Some("50Mi"))]);
        let r = pod_requests(&p);
        assert_eq!((r.milli_cpu, r.memory), (500, 100 << 20));

        // A sidecar (restartPolicy Always) adds to the sum and to later init containers.
        let mut sidecar = container(Some("300m"), None);
        sidecar.restart_policy = Some("Always".into());
        let spec = p.spec.as_mut().unwrap();
        spec.init_containers = Some(vec![sidecar, container(Some("400m"), None)]);
        // sum = 100 + 200 + 300 = 600; init max = max(300, 400 + 300) = 700.
        assert_eq!(pod_requests(&p).milli_cpu, 700);

        // Overhead is added on top.
        p.spec.as_mut().unwrap().overhead = Some(BTreeMap::from([("cpu".into(), q("50m"))]));
        assert_eq!(pod_requests(&p).milli_cpu, 750);
    }

    #[test]
    fn limits_stand_in_for_requests_and_non_zero_defaults() {
        let mut p = pod("p", None, None);
        p.spec.as_mut().unwrap().containers[0].resources = Some(ResourceRequirements {
            limits: Some(BTreeMap::from([("cpu".into(), q("2"))])),
            ..Default::default()
        });
        assert_eq!(pod_requests(&p).milli_cpu, 2000);
        assert_eq!(pod_requests(&p).memory, 0);
        assert_eq!(non_zero_requests(&p), (2000, DEFAULT_MEMORY_REQUEST));
        let be = pod("be", None, None);
        assert!(pod_requests(&be).is_zero());
        assert_eq!(
            non_zero_requests(&be),
            (DEFAULT_MILLI_CPU_REQUEST, DEFAULT_MEMORY_REQUEST)
        );
    }

    #[test]
    fn node_info_keeps_running_totals() {
        let a = with_host_port(pod("a", Some("1"), Some("1Gi")), "", "", 80);
        let b = pod("b", Some("500m"), None);
        let mut ni = node_info(node("n", "4", "8Gi", "110"), vec![a, b]);
        assert_eq!(ni.requested.milli_cpu, 1500);
        assert_eq!(ni.allowed_pods, 110);
        assert_eq!(ni.used_ports.len(), 1);
        assert!(ni.remove_pod("default/a"));
        assert!(!ni.remove_pod("default/a"));
        assert_eq!(ni.requested.milli_cpu, 500);
        assert_eq!(ni.non_zero_requested, (500, DEFAULT_MEMORY_REQUEST));
        assert!(ni.used_ports.is_empty());
    }
}
