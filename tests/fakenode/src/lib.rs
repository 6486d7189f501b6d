//! Fake nodes (kwok's idea) for tests and benchmarks: everything a kubelet would write,
//! written through the API, with nothing behind it.
//!
//! - registers Nodes with capacity/allocatable (cpu, memory, pods), `Ready=True`, labels
//!   `kubernetes.io/hostname` and `topology.kubernetes.io/zone` (round-robin over the
//!   zones), and an InternalIP in 198.18.0.0/15 (RFC 2544 benchmarking space: only ever
//!   written into objects, never contacted);
//! - renews each node's Lease in `kube-node-lease` every `lease_interval`, and puts
//!   `Ready=True` back when someone else (the node lifecycle controller) changed it;
//! - marks pods bound to its nodes Running and Ready, with a pod IP from the node's
//!   `spec.podCIDR` (or a /24 of 10.128.0.0/9 derived from the node's index when unset);
//! - finalises pod deletion as a kubelet does: a pod with `deletionTimestamp` is deleted
//!   again with `gracePeriodSeconds=0`;
//! - [`FakeNodes::silence`] stops all of that for one node (a dead kubelet), and
//!   [`FakeNodes::resume`] brings it back.

pub mod server;
pub mod trace;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use futures::StreamExt as _;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::api::core::v1::{Node, NodeSpec, Pod, Taint};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams, Preconditions};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{watcher, WatchStreamExt as _};
use kube::{Api, Client, ResourceExt as _};
use tokio::sync::{Notify, Semaphore};
use tokio::task::JoinHandle;

/// The label every fake node carries (and the watchers select on).
pub const FAKE_NODE_LABEL: &str = "skiff.dev/fake-node";
pub const LEASE_NAMESPACE: &str = "kube-node-lease";

/// The shape of one node.
#[derive(Debug, Clone)]
pub struct NodeShape {
    pub cpu: String,
    pub memory: String,
    pub pods: u32,
    pub labels: BTreeMap<String, String>,
    pub taints: Vec<Taint>,
}

impl Default for NodeShape {
    fn default() -> Self {
        NodeShape {
            cpu: "32".into(),
            memory: "256Gi".into(),
            pods: 110,
            labels: BTreeMap::new(),
            taints: Vec::new(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Config {
    /// Nodes `<prefix>0` .. `<prefix><count-1>`.
    pub count: usize,
    pub prefix: String,
    pub shape: NodeShape,
    pub zones: usize,
    pub lease_interval: Duration,
    /// Run and finalise the pods bound to the nodes (off for scheduler benchmarks, which,
    /// like upstream's scheduler_perf, measure scheduling without a kubelet).
    pub manage_pods: bool,
    /// API calls in flight at once (registration, lease renewals, pod updates).
    pub concurrency: usize,
    /// Told of every pod's `Ready=True` status write once it was answered, with the
    /// instant it was sent (benchmarks time "pod Ready → EndpointSlice" from that instant,
    /// the kubelet's write) and the instant of the answer.
    pub on_ready: Option<tokio::sync::mpsc::UnboundedSender<ReadyWrite>>,
}

/// A fake kubelet's `Ready=True` write of one pod, as [`Config::on_ready`] reports it.
#[derive(Debug, Clone)]
pub struct ReadyWrite {
    pub namespace: String,
    pub name: String,
    /// Taken just before the status PATCH is sent.
    pub at: std::time::Instant,
    /// When the API server answered it (None: it failed). Reported after the answer, so
    /// a listener may hear of the write after a watch already showed its effect.
    pub acked: Option<std::time::Instant>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            count: 3,
            prefix: "fake-node-".into(),
            shape: NodeShape::default(),
            zones: 3,
            lease_interval: Duration::from_secs(10),
            manage_pods: true,
            concurrency: 32,
            on_ready: None,
        }
    }
}

/// The InternalIP of the node with `index`: 198.18.0.0/15 counted from .0.1.
pub fn node_ip(index: u32) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(Ipv4Addr::new(198, 18, 0, 1)).wrapping_add(index))
}

/// The pod range used when a node has no `spec.podCIDR`: 10.128.0.0/9 cut into /24s.
pub fn derived_pod_cidr(index: u32) -> (Ipv4Addr, u8) {
    let base = u32::from(Ipv4Addr::new(10, 128, 0, 0)) + ((index % 32768) << 8);
    (Ipv4Addr::from(base), 24)
}

fn parse_cidr(s: &str) -> Option<(Ipv4Addr, u8)> {
    let (a, p) = s.split_once('/')?;
    let a: Ipv4Addr = a.parse().ok()?;
    let p: u8 = p.parse().ok()?;
    (p <= 30).then_some((a, p))
}

/// Per-node pod IP allocation: lowest free host address from .2 (the .1 is the
/// gateway a real CNI would use), keyed by pod uid so a repeat update keeps its IP.
#[derive(Debug, Default)]
struct Ipam {
    by_uid: HashMap<String, Ipv4Addr>,
    used: HashSet<Ipv4Addr>,
}

impl Ipam {
    fn allocate(&mut self, uid: &str, cidr: (Ipv4Addr, u8)) -> Option<Ipv4Addr> {
        if let Some(ip) = self.by_uid.get(uid) {
            return Some(*ip);
        }
        let base = u32::from(cidr.0) & (u32::MAX << (32 - cidr.1));
        let size = 1u32 << (32 - cidr.1);
        let ip = (2..size - 1)
            .map(|o| Ipv4Addr::from(base + o))
            .find(|ip| !self.used.contains(ip))?;
        self.used.insert(ip);
        self.by_uid.insert(uid.to_string(), ip);
        Some(ip)
    }

    fn release(&mut self, uid: &str) {
        if let Some(ip) = self.by_uid.remove(uid) {
            self.used.remove(&ip);
        }
    }
}

struct FakeNode {
    index: u32,
    ipam: Ipam,
}

struct Inner {
    client: Client,
    cfg: Config,
    nodes: Mutex<HashMap<String, FakeNode>>,
    silenced: Mutex<HashSet<String>>,
    node_store: Store<Node>,
    pod_store: Store<Pod>,
    sem: Semaphore,
    wake: Notify,
}

/// Running fake nodes; their tasks stop when this is dropped (the Node objects stay).
pub struct FakeNodes {
    inner: Arc<Inner>,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for FakeNodes {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

fn now() -> Timestamp {
    Timestamp::now()
}

fn ready_status(index: u32, shape: &NodeShape) -> serde_json::Value {
    let t = Time(now());
    let resources = serde_json::json!({
        "cpu": shape.cpu, "memory": shape.memory, "pods": shape.pods.to_string(),
        "ephemeral-storage": "100Gi",
    });
    let cond = |ty: &str, status: &str, reason: &str, msg: &str| {
        serde_json::json!({"type": ty, "status": status, "reason": reason, "message": msg,
            "lastHeartbeatTime": t, "lastTransitionTime": t})
    };
    serde_json::json!({"status": {
        "capacity": resources,
        "allocatable": resources,
        "conditions": [
            cond("Ready", "True", "KubeletReady", "kubelet is posting ready status"),
            cond("MemoryPressure", "False", "KubeletHasSufficientMemory", "kubelet has sufficient memory available"),
            cond("DiskPressure", "False", "KubeletHasNoDiskPressure", "kubelet has no disk pressure"),
            cond("PIDPressure", "False", "KubeletHasSufficientPID", "kubelet has sufficient PID available"),
        ],
        "addresses": [
            {"type": "InternalIP", "address": node_ip(index).to_string()},
        ],
        "nodeInfo": {
            "machineID": "", "systemUUID": "", "bootID": "", "kernelVersion": "fake",
            "osImage": "skiff fake node", "containerRuntimeVersion": "fake://0",
            "kubeletVersion": "v1.33.0-fake", "kubeProxyVersion": "", "operatingSystem": "linux",
            "architecture": "amd64",
        },
        "phase": "Running",
    }})
}

impl FakeNodes {
    /// Registers `cfg.count` nodes (reusing existing ones of the same names), then starts
    /// the lease and pod loops. Returns once every node exists with `Ready=True`.
    pub async fn start(client: Client, cfg: Config) -> anyhow::Result<FakeNodes> {
        let (node_store, w) = reflector::store::<Node>();
        let nodes_api: Api<Node> = Api::all(client.clone());
        let node_watch = reflector::reflector(
            w,
            watcher(
                nodes_api,
                watcher::Config::default().labels(&format!("{FAKE_NODE_LABEL}=true")),
            ),
        )
        .default_backoff()
        .for_each(|_| async {});
        let (pod_store, pod_writer) = reflector::store::<Pod>();
        let inner = Arc::new(Inner {
            client,
            sem: Semaphore::new(cfg.concurrency.max(1)),
            cfg,
            nodes: Mutex::new(HashMap::new()),
            silenced: Mutex::new(HashSet::new()),
            node_store,
            pod_store,
            wake: Notify::new(),
        });
        let mut tasks = vec![tokio::spawn(node_watch)];
        let shape = inner.cfg.shape.clone();
        let names: Vec<(String, u32)> = (0..inner.cfg.count)
            .map(|i| (format!("{}{i}", inner.cfg.prefix), i as u32))
            .collect();
        let results: Vec<anyhow::Result<()>> = futures::stream::iter(names)
            .map(|(name, i)| {
                let inner = inner.clone();
                let shape = shape.clone();
                async move { inner.register(&name, i, &shape).await }
            })
            .buffer_unordered(inner.cfg.concurrency.max(1))
            .collect()
            .await;
        for r in results {
            r?;
        }
        tasks.push(tokio::spawn(lease_loop(inner.clone())));
        if inner.cfg.manage_pods {
            tasks.push(tokio::spawn(pod_loop(inner.clone(), pod_writer)));
        }
        Ok(FakeNodes { inner, tasks })
    }

    /// Registers one more node (e.g. a bigger one) run like the others.
    pub async fn add_node(&self, name: &str, shape: &NodeShape) -> anyhow::Result<()> {
        let index = {
            let nodes = self.inner.nodes.lock().unwrap_or_else(|e| e.into_inner());
            nodes
                .values()
                .map(|n| n.index + 1)
                .max()
                .unwrap_or(0)
                .max(self.inner.cfg.count as u32)
        };
        self.inner.register(name, index, shape).await
    }

    pub fn names(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .inner
            .nodes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .keys()
            .cloned()
            .collect();
        v.sort();
        v
    }

    /// Stops heartbeating, running and finalising pods for `name` (a dead kubelet).
    pub fn silence(&self, name: &str) {
        self.inner
            .silenced
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(name.to_string());
    }

    /// Undoes [`Self::silence`]: the next pass renews the lease at once, posts
    /// `Ready=True` and catches up with the node's pods.
    pub fn resume(&self, name: &str) {
        self.inner
            .silenced
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(name);
        self.inner.wake.notify_one();
    }
}

impl Inner {
    fn silenced(&self, name: &str) -> bool {
        self.silenced
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(name)
    }

    async fn register(&self, name: &str, index: u32, shape: &NodeShape) -> anyhow::Result<()> {
        let _permit = self.sem.acquire().await?;
        let api: Api<Node> = Api::all(self.client.clone());
        let zone = format!("fake-zone-{}", index as usize % self.cfg.zones.max(1));
        let mut labels = BTreeMap::from([
            ("kubernetes.io/hostname".to_string(), name.to_string()),
            ("kubernetes.io/os".to_string(), "linux".to_string()),
            ("topology.kubernetes.io/zone".to_string(), zone),
            (FAKE_NODE_LABEL.to_string(), "true".to_string()),
        ]);
        labels.extend(shape.labels.clone());
        let node = Node {
            metadata: ObjectMeta {
                name: Some(name.into()),
                labels: Some(labels),
                ..Default::default()
            },
            spec: Some(NodeSpec {
                taints: (!shape.taints.is_empty()).then(|| shape.taints.clone()),
                ..Default::default()
            }),
            status: None,
        };
        match api.create(&PostParams::default(), &node).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 409 => {}
            Err(e) => return Err(e).with_context(|| format!("registering fake node {name}")),
        }
        api.patch_status(
            name,
            &PatchParams::default(),
            &Patch::Merge(&ready_status(index, shape)),
        )
        .await
        .with_context(|| format!("posting the status of fake node {name}"))?;
        self.nodes.lock().unwrap_or_else(|e| e.into_inner()).insert(
            name.to_string(),
            FakeNode {
                index,
                ipam: Ipam::default(),
            },
        );
        drop(_permit);
        self.renew(name).await
    }

    async fn renew(&self, name: &str) -> anyhow::Result<()> {
        let _permit = self.sem.acquire().await?;
        let api: Api<Lease> = Api::namespaced(self.client.clone(), LEASE_NAMESPACE);
        let renew = MicroTime(now());
        let patch = serde_json::json!({"spec": {"renewTime": renew, "holderIdentity": name}});
        match api
            .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(s)) if s.code == 404 => {
                let lease = Lease {
                    metadata: ObjectMeta {
                        name: Some(name.into()),
                        namespace: Some(LEASE_NAMESPACE.into()),
                        ..Default::default()
                    },
                    spec: Some(LeaseSpec {
                        holder_identity: Some(name.into()),
                        lease_duration_seconds: Some(40),
                        renew_time: Some(renew),
                        ..Default::default()
                    }),
                };
                match api.create(&PostParams::default(), &lease).await {
                    Ok(_) => Ok(()),
                    Err(kube::Error::Api(s)) if s.code == 409 => Ok(()),
                    Err(e) => Err(e).with_context(|| format!("creating the lease of {name}")),
                }
            }
            Err(e) => Err(e).with_context(|| format!("renewing the lease of {name}")),
        }
    }

    /// Re-posts Ready=True when the node's Ready condition is not True (someone marked
    /// it Unknown while we were silent), as a kubelet's next status update would.
    async fn fix_ready(&self, name: &str) {
        let Some(node) = self.node_store.get(&reflector::ObjectRef::new(name)) else {
            return;
        };
        let ready = node
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .and_then(|c| c.iter().find(|c| c.type_ == "Ready"))
            .is_some_and(|c| c.status == "True");
        if ready {
            return;
        }
        let index = match self
            .nodes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(name)
        {
            Some(n) => n.index,
            None => return,
        };
        let _permit = self.sem.acquire().await;
        let mut shape = self.cfg.shape.clone();
        // Keep the node's own capacity (add_node may have given it another shape).
        if let Some(a) = node.status.as_ref().and_then(|s| s.allocatable.as_ref()) {
            if let Some(c) = a.get("cpu") {
                shape.cpu = c.0.clone();
            }
            if let Some(m) = a.get("memory") {
                shape.memory = m.0.clone();
            }
            if let Some(p) = a.get("pods").and_then(|p| p.0.parse().ok()) {
                shape.pods = p;
            }
        }
        let api: Api<Node> = Api::all(self.client.clone());
        match api
            .patch_status(
                name,
                &PatchParams::default(),
                &Patch::Merge(&ready_status(index, &shape)),
            )
            .await
        {
            Ok(_) => tracing::info!("fake node {name}: posted Ready=True"),
            Err(e) => tracing::warn!("fake node {name}: posting Ready: {e}"),
        }
    }

    fn pod_cidr(&self, node: &str, index: u32) -> (Ipv4Addr, u8) {
        self.node_store
            .get(&reflector::ObjectRef::new(node))
            .and_then(|n| n.spec.as_ref().and_then(|s| s.pod_cidr.clone()))
            .and_then(|c| parse_cidr(&c))
            .unwrap_or_else(|| derived_pod_cidr(index))
    }

    /// What a kubelet does about `pod`: finalise its deletion or report it running.
    async fn sync_pod(&self, pod: &Pod) {
        let Some(node) = pod.spec.as_ref().and_then(|s| s.node_name.clone()) else {
            return;
        };
        let index = match self
            .nodes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&node)
        {
            Some(n) => n.index,
            None => return,
        };
        if self.silenced(&node) {
            return;
        }
        let ns = pod.namespace().unwrap_or_default();
        let name = pod.name_any();
        let uid = pod.uid().unwrap_or_default();
        let api: Api<Pod> = Api::namespaced(self.client.clone(), &ns);
        let Ok(_permit) = self.sem.acquire().await else {
            return;
        };
        if pod.metadata.deletion_timestamp.is_some() {
            let dp = DeleteParams {
                grace_period_seconds: Some(0),
                preconditions: Some(Preconditions {
                    uid: Some(uid.clone()),
                    resource_version: None,
                }),
                ..Default::default()
            };
            match api.delete(&name, &dp).await {
                Ok(_) => {}
                Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => {}
                Err(e) => tracing::warn!("fake node {node}: finalising {ns}/{name}: {e}"),
            }
            self.release(&node, &uid);
            return;
        }
        let status = pod.status.as_ref();
        let running = status.and_then(|s| s.phase.as_deref()) == Some("Running");
        let ready = status
            .and_then(|s| s.conditions.as_ref())
            .and_then(|c| c.iter().find(|c| c.type_ == "Ready"))
            .is_some_and(|c| c.status == "True");
        if matches!(
            status.and_then(|s| s.phase.as_deref()),
            Some("Succeeded" | "Failed")
        ) || (running && ready)
        {
            return;
        }
        let host_network = pod
            .spec
            .as_ref()
            .and_then(|s| s.host_network)
            .unwrap_or(false);
        let host_ip = node_ip(index);
        let ip = if host_network {
            Some(host_ip)
        } else {
            let cidr = self.pod_cidr(&node, index);
            self.nodes
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get_mut(&node)
                .and_then(|n| n.ipam.allocate(&uid, cidr))
        };
        let Some(ip) = ip else {
            tracing::warn!("fake node {node}: pod range exhausted, {ns}/{name} stays pending");
            return;
        };
        let t = Time(now());
        let started = status
            .and_then(|s| s.start_time.clone())
            .unwrap_or_else(|| t.clone());
        let cond = |ty: &str| serde_json::json!({"type": ty, "status": "True", "lastTransitionTime": t, "lastProbeTime": null});
        let containers: Vec<serde_json::Value> = pod
            .spec
            .iter()
            .flat_map(|s| &s.containers)
            .map(|c| {
                serde_json::json!({
                    "name": c.name, "image": c.image.clone().unwrap_or_default(), "imageID": "",
                    "containerID": format!("fake://{uid}/{}", c.name), "ready": true, "started": true,
                    "restartCount": 0, "state": {"running": {"startedAt": started}},
                })
            })
            .collect();
        let patch = serde_json::json!({"status": {
            "phase": "Running",
            "conditions": [cond("PodReadyToStartContainers"), cond("Initialized"), cond("Ready"), cond("ContainersReady"), cond("PodScheduled")],
            "hostIP": host_ip.to_string(), "hostIPs": [{"ip": host_ip.to_string()}],
            "podIP": ip.to_string(), "podIPs": [{"ip": ip.to_string()}],
            "startTime": started,
            "containerStatuses": containers,
        }});
        let at = std::time::Instant::now();
        let r = api
            .patch_status(&name, &PatchParams::default(), &Patch::Strategic(&patch))
            .await;
        if let Some(tx) = self.cfg.on_ready.as_ref() {
            let _ = tx.send(ReadyWrite {
                namespace: ns.clone(),
                name: name.clone(),
                at,
                acked: r.is_ok().then(std::time::Instant::now),
            });
        }
        if let Err(e) = r {
            tracing::debug!("fake node {node}: status of {ns}/{name}: {e}");
        }
    }

    fn release(&self, node: &str, uid: &str) {
        if let Some(n) = self
            .nodes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get_mut(node)
        {
            n.ipam.release(uid);
        }
    }
}

async fn lease_loop(inner: Arc<Inner>) {
    let mut tick = tokio::time::interval(inner.cfg.lease_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut was_silenced: HashSet<String> = HashSet::new();
    // The first pass renews every lease at once (the kubelets just registered); later
    // timer passes spread the nodes over the interval, each at its own phase, as real
    // kubelets renew on their own timers (started at their own boot, with upstream's
    // lease controller jittering each period). Renewing all N leases in the same
    // millisecond is a burst no cluster sends: with 100 nodes every 10 s it put one
    // 100-write spike into the API server's write path per period and set the controllers
    // benchmark's p99 (BENCHMARKS.md, control plane, session 8). A wake-up (a resumed
    // node) renews at once.
    let mut first = true;
    loop {
        let woken = tokio::select! {
            _ = tick.tick() => false,
            _ = inner.wake.notified() => true,
        };
        let spread = !first && !woken;
        first = false;
        let names: Vec<String> = inner
            .nodes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .keys()
            .filter(|n| !inner.silenced(n))
            .cloned()
            .collect();
        let resumed: Vec<String> = was_silenced
            .iter()
            .filter(|n| !inner.silenced(n))
            .cloned()
            .collect();
        was_silenced = inner
            .silenced
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        // Phases over 90% of the interval, so a pass ends before the next tick.
        let step = if spread && !names.is_empty() {
            inner.cfg.lease_interval.mul_f64(0.9) / names.len() as u32
        } else {
            Duration::ZERO
        };
        let pass_start = tokio::time::Instant::now();
        futures::stream::iter(names.into_iter().enumerate())
            .for_each_concurrent(inner.cfg.concurrency.max(1), |(k, name)| {
                let inner = inner.clone();
                async move {
                    tokio::time::sleep_until(pass_start + step * k as u32).await;
                    if let Err(e) = inner.renew(&name).await {
                        tracing::warn!("fake node {name}: {e:#}");
                    }
                    inner.fix_ready(&name).await;
                }
            })
            .await;
        // A resumed kubelet catches up with what happened to its pods meanwhile.
        for name in resumed {
            let pods: Vec<Arc<Pod>> = inner
                .pod_store
                .state()
                .into_iter()
                .filter(|p| p.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some(&name))
                .collect();
            for p in pods {
                inner.sync_pod(&p).await;
            }
        }
    }
}

async fn pod_loop(inner: Arc<Inner>, writer: reflector::store::Writer<Pod>) {
    let api: Api<Pod> = Api::all(inner.client.clone());
    let mut events = reflector::reflector(writer, watcher(api, watcher::Config::default()))
        .default_backoff()
        .boxed();
    let mut tasks = tokio::task::JoinSet::new();
    while let Some(ev) = events.next().await {
        match ev {
            Ok(watcher::Event::Apply(p) | watcher::Event::InitApply(p)) => {
                let inner = inner.clone();
                tasks.spawn(async move { inner.sync_pod(&p).await });
            }
            Ok(watcher::Event::Delete(p)) => {
                if let Some(node) = p.spec.as_ref().and_then(|s| s.node_name.as_deref()) {
                    inner.release(node, &p.uid().unwrap_or_default());
                }
            }
            Ok(_) => {}
            Err(e) => tracing::warn!("fake nodes: pod watch: {e}"),
        }
        while tasks.try_join_next().is_some() {}
    }
}

/// Deletes the fake nodes named `<prefix>*` and their leases (test and benchmark cleanup).
pub async fn delete_all(client: Client, prefix: &str) -> anyhow::Result<usize> {
    let api: Api<Node> = Api::all(client.clone());
    let leases: Api<Lease> = Api::namespaced(client, LEASE_NAMESPACE);
    let list = api
        .list(&ListParams::default().labels(&format!("{FAKE_NODE_LABEL}=true")))
        .await?;
    let mut n = 0;
    for node in list
        .items
        .iter()
        .filter(|n| n.name_any().starts_with(prefix))
    {
        let name = node.name_any();
        let _ = api.delete(&name, &DeleteParams::default()).await;
        let _ = leases.delete(&name, &DeleteParams::default()).await;
        n += 1;
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_stay_in_their_ranges() {
        assert_eq!(node_ip(0), Ipv4Addr::new(198, 18, 0, 1));
        assert_eq!(node_ip(255), Ipv4Addr::new(198, 18, 1, 0));
        assert_eq!(node_ip(4999), Ipv4Addr::new(198, 18, 19, 136));
        assert_eq!(derived_pod_cidr(0), (Ipv4Addr::new(10, 128, 0, 0), 24));
        assert_eq!(derived_pod_cidr(257), (Ipv4Addr::new(10, 129, 1, 0), 24));
    }

    #[test]
    fn ipam_allocates_reuses_and_releases() {
        let mut ipam = Ipam::default();
        let cidr = parse_cidr("10.42.3.0/24").unwrap();
        assert_eq!(ipam.allocate("a", cidr), Some(Ipv4Addr::new(10, 42, 3, 2)));
        assert_eq!(ipam.allocate("b", cidr), Some(Ipv4Addr::new(10, 42, 3, 3)));
        assert_eq!(
            ipam.allocate("a", cidr),
            Some(Ipv4Addr::new(10, 42, 3, 2)),
            "same pod, same IP"
        );
        ipam.release("a");
        assert_eq!(
            ipam.allocate("c", cidr),
            Some(Ipv4Addr::new(10, 42, 3, 2)),
            "freed IP reused"
        );
        // A /30 has two usable host addresses after the gateway: .2 only (.3 is broadcast).
        let mut small = Ipam::default();
        let c30 = parse_cidr("10.0.0.4/30").unwrap();
        assert_eq!(small.allocate("x", c30), Some(Ipv4Addr::new(10, 0, 0, 6)));
        assert_eq!(small.allocate("y", c30), None, "exhausted");
        assert_eq!(parse_cidr("10.0.0.0/31"), None);
        assert_eq!(parse_cidr("nonsense"), None);
    }
}
