//! Node registration and heartbeat, the kubelet's way (pkg/kubelet/kubelet_node_status.go
//! and pkg/kubelet/nodelease): the agent registers its Node once at start (create, or take
//! over an existing one and reconcile its labels), then
//! - renews the Lease `kube-node-lease/<node>` every [`NodeConfig::lease_renew_period`]
//!   (10 s, duration 40 s): the cheap heartbeat the node lifecycle controller watches;
//! - posts the Node's status through `/status` when it changed (ignoring heartbeat times) or
//!   every [`NodeConfig::status_report_period`] (1 min; upstream's
//!   nodeStatusReportFrequency is 5 min, skiff reports more often since it has no other
//!   status producer), with kubelet-style conditions: `Ready=True` reason `KubeletReady`,
//!   `MemoryPressure`/`DiskPressure`/`PIDPressure=False`.
//!
//! Conditions other agents own (e.g. `NetworkUnavailable`) are kept: the status is written
//! as a read-modify-write with the object's resourceVersion (a conflict retries), never as
//! a blind replacement of the condition list. On shutdown the Node is left as it is: the
//! node lifecycle controller marks it `Unknown` once the Lease expires, as for a kubelet.

use std::{
    collections::BTreeMap,
    net::Ipv4Addr,
    path::Path,
    time::{Duration, Instant},
};

use k8s_openapi::{
    api::{
        coordination::v1::{Lease, LeaseSpec},
        core::v1::{
            DaemonEndpoint, Node, NodeAddress, NodeCondition, NodeDaemonEndpoints, NodeStatus,
            NodeSystemInfo,
        },
    },
    apimachinery::pkg::{
        api::resource::Quantity,
        apis::meta::v1::{MicroTime, ObjectMeta, OwnerReference, Time},
    },
    jiff::Timestamp,
};
use kube::{
    api::{Patch, PatchParams, PostParams},
    Api, Client,
};

/// Namespace of node heartbeat Leases (created by the API server at start).
pub const LEASE_NAMESPACE: &str = "kube-node-lease";
/// Pods a node accepts (the kubelet's `--max-pods` default).
pub const MAX_PODS: u32 = 110;
/// Memory held back from allocatable: the kubelet's default hard eviction threshold
/// `memory.available<100Mi`.
pub const EVICTION_MEMORY_BYTES: u64 = 100 * 1024 * 1024;
/// Share of the node filesystem held back from allocatable ephemeral storage: the
/// kubelet's default `nodefs.available<10%`.
pub const EVICTION_NODEFS_PERCENT: u64 = 10;

/// How the Node is registered and refreshed.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// The Node's name (also its `kubernetes.io/hostname` label and Hostname address, as
    /// for a kubelet run with `--hostname-override=<name>`).
    pub name: String,
    /// InternalIP addresses, in order.
    pub addresses: Vec<Ipv4Addr>,
    pub lease_renew_period: Duration,
    pub lease_duration_seconds: i32,
    pub status_report_period: Duration,
    // dns: cluster DNS (issue 8)
    /// Annotations the agent owns on its Node: `Some` is set, `None` removed (e.g.
    /// `skiff.io/cluster-dns` when this agent serves or stops serving cluster DNS).
    pub annotations: BTreeMap<String, Option<String>>,
    // end dns
    /// The kubelet API port reported in `status.daemonEndpoints` (the API server proxies
    /// `kubectl logs` there); None: not served.
    pub kubelet_port: Option<u16>,
}

impl NodeConfig {
    pub fn new(name: &str, addresses: Vec<Ipv4Addr>) -> NodeConfig {
        NodeConfig {
            name: name.to_owned(),
            addresses,
            lease_renew_period: Duration::from_secs(10),
            lease_duration_seconds: 40,
            status_report_period: Duration::from_secs(60),
            // dns: cluster DNS (issue 8)
            annotations: BTreeMap::new(),
            // end dns
            kubelet_port: None,
        }
    }
}

/// What the Node reports about the machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostInfo {
    pub cpus: u32,
    pub memory_bytes: u64,
    pub ephemeral_storage_bytes: u64,
    pub kernel_version: String,
    pub os_image: String,
    /// GOARCH spelling (amd64, arm64…), as the `kubernetes.io/arch` label wants it.
    pub architecture: String,
    pub machine_id: String,
    pub boot_id: String,
    pub system_uuid: String,
}

/// `MemTotal` of /proc/meminfo, in bytes.
pub fn parse_meminfo(text: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with("MemTotal:"))?;
    let mut parts = line.split_whitespace().skip(1);
    let value: u64 = parts.next()?.parse().ok()?;
    match parts.next() {
        Some("kB") => Some(value * 1024),
        None => Some(value),
        Some(_) => None,
    }
}

/// `PRETTY_NAME` of os-release(5), unquoted.
pub fn parse_os_release(text: &str) -> Option<String> {
    let v = text
        .lines()
        .find_map(|l| l.strip_prefix("PRETTY_NAME="))?
        .trim();
    Some(v.trim_matches('"').trim_matches('\'').to_owned())
}

/// Go's GOARCH name for a Rust target architecture.
pub fn go_arch(rust_arch: &str) -> &str {
    match rust_arch {
        "x86_64" => "amd64",
        "x86" => "386",
        "aarch64" => "arm64",
        "arm" => "arm",
        "powerpc64" => "ppc64le",
        "s390x" => "s390x",
        "riscv64" => "riscv64",
        "loongarch64" => "loong64",
        other => other,
    }
}

fn read_trimmed(path: &str) -> String {
    std::fs::read_to_string(path)
        .map(|s| s.trim().to_owned())
        .unwrap_or_default()
}

impl HostInfo {
    /// Reads the machine: CPUs online (sysconf), MemTotal (/proc/meminfo), the size of the
    /// filesystem holding `storage` (statvfs; the kubelet uses its root dir), uname's
    /// release, os-release, machine-id, boot_id and the DMI product UUID (empty where
    /// unreadable, as the kubelet leaves them).
    pub fn gather(storage: &Path) -> std::io::Result<HostInfo> {
        // SAFETY: sysconf has no preconditions.
        let cpus = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) }.max(1) as u32;
        let meminfo = std::fs::read_to_string("/proc/meminfo")?;
        let memory_bytes = parse_meminfo(&meminfo)
            .ok_or_else(|| std::io::Error::other("/proc/meminfo has no readable MemTotal line"))?;
        let ephemeral_storage_bytes = filesystem_size(storage)?;
        let kernel_version = kernel_release()?;
        let os_image = std::fs::read_to_string("/etc/os-release")
            .ok()
            .and_then(|t| parse_os_release(&t))
            .unwrap_or_else(|| "Linux".to_owned());
        Ok(HostInfo {
            cpus,
            memory_bytes,
            ephemeral_storage_bytes,
            kernel_version,
            os_image,
            architecture: go_arch(std::env::consts::ARCH).to_owned(),
            machine_id: read_trimmed("/etc/machine-id"),
            boot_id: read_trimmed("/proc/sys/kernel/random/boot_id"),
            system_uuid: read_trimmed("/sys/class/dmi/id/product_uuid").to_lowercase(),
        })
    }
}

/// Size in bytes of the filesystem holding `path` (statvfs(3): blocks × fragment size).
fn filesystem_size(path: &Path) -> std::io::Result<u64> {
    use std::os::unix::ffi::OsStrExt as _;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::other(format!("{} contains a NUL byte", path.display())))?;
    // SAFETY: `c` is a valid C string and `st` a properly sized out-parameter.
    let st = unsafe {
        let mut st: libc::statvfs = std::mem::zeroed();
        if libc::statvfs(c.as_ptr(), &mut st) != 0 {
            let e = std::io::Error::last_os_error();
            return Err(std::io::Error::new(
                e.kind(),
                format!("statvfs {}: {e}", path.display()),
            ));
        }
        st
    };
    Ok(st.f_blocks as u64 * st.f_frsize as u64)
}

/// uname(2)'s release, e.g. `6.1.0-18-amd64`.
fn kernel_release() -> std::io::Result<String> {
    // SAFETY: uname fills the struct we own; `release` is NUL-terminated by the kernel.
    unsafe {
        let mut u: libc::utsname = std::mem::zeroed();
        if libc::uname(&mut u) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(std::ffi::CStr::from_ptr(u.release.as_ptr())
            .to_string_lossy()
            .into_owned())
    }
}

/// The version string the Node reports as kubelet and kube-proxy version.
pub fn agent_version() -> String {
    format!("skiff-{}", env!("CARGO_PKG_VERSION"))
}

/// The labels the agent owns on its Node. `node.kubernetes.io/instance-type` is left to a
/// cloud provider (absent here).
pub fn node_labels(cfg: &NodeConfig, info: &HostInfo) -> BTreeMap<String, String> {
    [
        ("kubernetes.io/hostname", cfg.name.as_str()),
        ("kubernetes.io/os", "linux"),
        ("kubernetes.io/arch", info.architecture.as_str()),
        // The kubelet still sets the deprecated beta labels; old node selectors use them.
        ("beta.kubernetes.io/os", "linux"),
        ("beta.kubernetes.io/arch", info.architecture.as_str()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect()
}

fn kib(bytes: u64) -> Quantity {
    Quantity(format!("{}Ki", bytes / 1024))
}

/// Capacity and allocatable, as the kubelet reports them with no system/kube reservations:
/// allocatable is capacity minus the default hard eviction thresholds.
pub fn resources(info: &HostInfo) -> (BTreeMap<String, Quantity>, BTreeMap<String, Quantity>) {
    let mut capacity = BTreeMap::new();
    capacity.insert("cpu".to_owned(), Quantity(info.cpus.to_string()));
    capacity.insert("memory".to_owned(), kib(info.memory_bytes));
    capacity.insert("pods".to_owned(), Quantity(MAX_PODS.to_string()));
    capacity.insert(
        "ephemeral-storage".to_owned(),
        kib(info.ephemeral_storage_bytes),
    );
    let mut allocatable = capacity.clone();
    allocatable.insert(
        "memory".to_owned(),
        kib(info.memory_bytes.saturating_sub(EVICTION_MEMORY_BYTES)),
    );
    allocatable.insert(
        "ephemeral-storage".to_owned(),
        Quantity(
            (info.ephemeral_storage_bytes / 100 * (100 - EVICTION_NODEFS_PERCENT)).to_string(),
        ),
    );
    (capacity, allocatable)
}

/// The condition types this agent owns.
pub const OWNED_CONDITIONS: [&str; 4] = ["MemoryPressure", "DiskPressure", "PIDPressure", "Ready"];

fn owned_condition(type_: &str, now: Timestamp) -> NodeCondition {
    let (status, reason, message) = match type_ {
        "MemoryPressure" => (
            "False",
            "KubeletHasSufficientMemory",
            "skiff-agent has sufficient memory available",
        ),
        "DiskPressure" => (
            "False",
            "KubeletHasNoDiskPressure",
            "skiff-agent has no disk pressure",
        ),
        "PIDPressure" => (
            "False",
            "KubeletHasSufficientPID",
            "skiff-agent has sufficient PID available",
        ),
        _ => (
            "True",
            "KubeletReady",
            "skiff-agent is posting ready status",
        ),
    };
    NodeCondition {
        type_: type_.to_owned(),
        status: status.to_owned(),
        reason: Some(reason.to_owned()),
        message: Some(message.to_owned()),
        last_heartbeat_time: Some(Time(now)),
        last_transition_time: Some(Time(now)),
    }
}

/// The status to post, given what the API server has (`previous`): the agent's own fields
/// and conditions replace theirs, a condition keeps its lastTransitionTime while its status
/// does not change (the kubelet's rule), and conditions of other owners stay.
pub fn desired_status(
    cfg: &NodeConfig,
    info: &HostInfo,
    previous: Option<&NodeStatus>,
    now: Timestamp,
) -> NodeStatus {
    let mut status = previous.cloned().unwrap_or_default();
    let mut addresses: Vec<NodeAddress> = cfg
        .addresses
        .iter()
        .map(|a| NodeAddress {
            type_: "InternalIP".into(),
            address: a.to_string(),
        })
        .collect();
    addresses.push(NodeAddress {
        type_: "Hostname".into(),
        address: cfg.name.clone(),
    });
    status.addresses = Some(addresses);
    if let Some(port) = cfg.kubelet_port {
        status.daemon_endpoints = Some(NodeDaemonEndpoints {
            kubelet_endpoint: Some(DaemonEndpoint { port: port.into() }),
        });
    }
    let (capacity, allocatable) = resources(info);
    status.capacity = Some(capacity);
    status.allocatable = Some(allocatable);
    status.node_info = Some(NodeSystemInfo {
        architecture: info.architecture.clone(),
        boot_id: info.boot_id.clone(),
        container_runtime_version: String::new(),
        kernel_version: info.kernel_version.clone(),
        kube_proxy_version: agent_version(),
        kubelet_version: agent_version(),
        machine_id: info.machine_id.clone(),
        operating_system: "linux".into(),
        os_image: info.os_image.clone(),
        swap: None,
        system_uuid: info.system_uuid.clone(),
    });
    let old = status.conditions.take().unwrap_or_default();
    let mut conditions: Vec<NodeCondition> = old
        .iter()
        .filter(|c| !OWNED_CONDITIONS.contains(&c.type_.as_str()))
        .cloned()
        .collect();
    for type_ in OWNED_CONDITIONS {
        let mut c = owned_condition(type_, now);
        if let Some(prev) = old.iter().find(|p| p.type_ == type_) {
            if prev.status == c.status && prev.last_transition_time.is_some() {
                c.last_transition_time = prev.last_transition_time.clone();
            }
        }
        conditions.push(c);
    }
    status.conditions = Some(conditions);
    status
}

/// Whether posting `want` over `have` changes anything but heartbeat times (the kubelet
/// posts on change, and otherwise only every report period).
pub fn status_changed(have: Option<&NodeStatus>, want: &NodeStatus) -> bool {
    fn strip(s: &NodeStatus) -> NodeStatus {
        let mut s = s.clone();
        if let Some(cs) = s.conditions.as_mut() {
            for c in cs.iter_mut() {
                c.last_heartbeat_time = None;
            }
            cs.sort_by(|a, b| a.type_.cmp(&b.type_));
        }
        s
    }
    match have {
        None => true,
        Some(h) => strip(h) != strip(want),
    }
}

/// The heartbeat Lease of `node` (owned by the Node, so it goes with it).
pub fn lease(cfg: &NodeConfig, node: &Node, now: Timestamp) -> Lease {
    Lease {
        metadata: ObjectMeta {
            name: Some(cfg.name.clone()),
            namespace: Some(LEASE_NAMESPACE.into()),
            owner_references: node.metadata.uid.as_ref().map(|uid| {
                vec![OwnerReference {
                    api_version: "v1".into(),
                    kind: "Node".into(),
                    name: cfg.name.clone(),
                    uid: uid.clone(),
                    ..Default::default()
                }]
            }),
            ..Default::default()
        },
        spec: Some(LeaseSpec {
            holder_identity: Some(cfg.name.clone()),
            lease_duration_seconds: Some(cfg.lease_duration_seconds),
            renew_time: Some(MicroTime(now)),
            ..Default::default()
        }),
    }
}

fn is_status(e: &kube::Error, code: u16) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == code)
}

/// Registers the Node (kubelet's registerWithAPIServer): creates it with labels and
/// status, or, when it exists, adds any missing agent-owned labels. Returns the Node.
pub async fn register(
    client: &Client,
    cfg: &NodeConfig,
    info: &HostInfo,
) -> Result<Node, kube::Error> {
    let nodes: Api<Node> = Api::all(client.clone());
    let labels = node_labels(cfg, info);
    // dns: cluster DNS (issue 8)
    let annotations: BTreeMap<String, String> = cfg
        .annotations
        .iter()
        .filter_map(|(k, v)| Some((k.clone(), v.clone()?)))
        .collect();
    // end dns
    let fresh = Node {
        metadata: ObjectMeta {
            name: Some(cfg.name.clone()),
            labels: Some(labels.clone()),
            annotations: (!annotations.is_empty()).then_some(annotations),
            ..Default::default()
        },
        spec: None,
        status: Some(desired_status(cfg, info, None, Timestamp::now())),
    };
    match nodes.create(&PostParams::default(), &fresh).await {
        Ok(n) => return Ok(n),
        Err(e) if is_status(&e, 409) => {}
        Err(e) => return Err(e),
    }
    let existing = nodes.get(&cfg.name).await?;
    let have = existing.metadata.labels.clone().unwrap_or_default();
    let missing: BTreeMap<_, _> = labels
        .into_iter()
        .filter(|(k, v)| have.get(k) != Some(v))
        .collect();
    // dns: cluster DNS (issue 8)
    let have_ann = existing.metadata.annotations.clone().unwrap_or_default();
    let ann_changes: BTreeMap<_, _> = cfg
        .annotations
        .iter()
        .filter(|(k, v)| have_ann.get(*k) != v.as_ref())
        .collect();
    if missing.is_empty() && ann_changes.is_empty() {
        return Ok(existing);
    }
    // A merge patch: `null` removes an annotation.
    let patch = serde_json::json!({"metadata": {"labels": missing, "annotations": ann_changes}});
    // end dns
    nodes
        .patch(&cfg.name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
}

/// kube-proxy's node eligibility (pkg/proxy/healthcheck: SyncNode).
pub fn eligible(node: &Node) -> bool {
    node.metadata.deletion_timestamp.is_none()
        && !node
            .spec
            .as_ref()
            .and_then(|s| s.taints.as_ref())
            .is_some_and(|ts| ts.iter().any(|t| t.key == "ToBeDeletedByClusterAutoscaler"))
}

/// What one heartbeat round did (for the caller's log and `status`).
#[derive(Debug, Clone, Default)]
pub struct Heartbeat {
    pub lease_renewed: bool,
    pub status_posted: bool,
    pub pod_cidr: Option<String>,
    /// kube-proxy's node eligibility, from the Node just read (`None`: not read).
    pub eligible: Option<bool>,
    pub errors: Vec<String>,
}

/// The running heartbeat: one Lease renewal and one status check per [`Heartbeat::tick`].
pub struct NodeAgent {
    client: Client,
    cfg: NodeConfig,
    info: HostInfo,
    node: Option<Node>,
    /// The Lease as last written (its resourceVersion makes the next renewal one update).
    lease: Option<Lease>,
    last_report: Option<Instant>,
}

impl NodeAgent {
    pub fn new(client: Client, cfg: NodeConfig, info: HostInfo) -> NodeAgent {
        NodeAgent {
            client,
            cfg,
            info,
            node: None,
            lease: None,
            last_report: None,
        }
    }

    /// Registers (once, until it succeeds), renews the Lease and posts the status when due.
    pub async fn tick(&mut self) -> Heartbeat {
        let mut hb = Heartbeat::default();
        if self.node.is_none() {
            match register(&self.client, &self.cfg, &self.info).await {
                Ok(n) => self.node = Some(n),
                Err(e) => {
                    hb.errors
                        .push(format!("registering Node {}: {e}", self.cfg.name));
                    return hb;
                }
            }
        }
        match self.post_status().await {
            Ok((posted, node)) => {
                hb.status_posted = posted;
                hb.pod_cidr = node.spec.as_ref().and_then(|s| s.pod_cidr.clone());
                hb.eligible = Some(eligible(&node));
                self.node = Some(node);
            }
            Err(e) => hb
                .errors
                .push(format!("updating Node {} status: {e}", self.cfg.name)),
        }
        if let Some(node) = self.node.clone() {
            match self.renew_lease(&node).await {
                Ok(()) => hb.lease_renewed = true,
                Err(e) => hb.errors.push(format!(
                    "renewing Lease {LEASE_NAMESPACE}/{}: {e}",
                    self.cfg.name
                )),
            }
        }
        hb
    }

    /// Reads the Node and writes its status if it changed or the report period passed.
    /// Retries a write conflict (someone else updated the Node meanwhile) a few times, as
    /// the kubelet does (nodeStatusUpdateRetry = 5).
    async fn post_status(&mut self) -> Result<(bool, Node), kube::Error> {
        let nodes: Api<Node> = Api::all(self.client.clone());
        let mut attempt = 0;
        loop {
            let mut node = nodes.get(&self.cfg.name).await?;
            let want = desired_status(
                &self.cfg,
                &self.info,
                node.status.as_ref(),
                Timestamp::now(),
            );
            let due = self
                .last_report
                .is_none_or(|t| t.elapsed() >= self.cfg.status_report_period);
            if !due && !status_changed(node.status.as_ref(), &want) {
                return Ok((false, node));
            }
            node.status = Some(want);
            match nodes
                .replace_status(&self.cfg.name, &PostParams::default(), &node)
                .await
            {
                Ok(n) => {
                    self.last_report = Some(Instant::now());
                    return Ok((true, n));
                }
                Err(e) if is_status(&e, 409) && attempt < 4 => attempt += 1,
                Err(e) => return Err(e),
            }
        }
    }

    /// Renews the Lease like the kubelet's lease controller: an update of the last Lease
    /// it wrote (one request per renewal); after a conflict or when it has none, a fresh
    /// read, or a create when the Lease does not exist.
    async fn renew_lease(&mut self, node: &Node) -> Result<(), kube::Error> {
        let leases: Api<Lease> = Api::namespaced(self.client.clone(), LEASE_NAMESPACE);
        let want = lease(&self.cfg, node, Timestamp::now());
        if let Some(mut cached) = self.lease.take() {
            cached.spec = want.spec.clone();
            match leases
                .replace(&self.cfg.name, &PostParams::default(), &cached)
                .await
            {
                Ok(l) => {
                    self.lease = Some(l);
                    return Ok(());
                }
                // Changed or deleted meanwhile: read it again below.
                Err(e) if is_status(&e, 409) || is_status(&e, 404) => {}
                Err(e) => return Err(e),
            }
        }
        match leases.get_opt(&self.cfg.name).await? {
            None => match leases.create(&PostParams::default(), &want).await {
                Ok(l) => {
                    self.lease = Some(l);
                    Ok(())
                }
                // Created concurrently (a restarted agent racing its predecessor): the
                // next round updates it.
                Err(e) if is_status(&e, 409) => Ok(()),
                Err(e) => Err(e),
            },
            Some(mut have) => {
                have.spec = want.spec;
                if have.metadata.owner_references.is_none() {
                    have.metadata.owner_references = want.metadata.owner_references;
                }
                self.lease = Some(
                    leases
                        .replace(&self.cfg.name, &PostParams::default(), &have)
                        .await?,
                );
                Ok(())
            }
        }
    }
}

/// Runs the heartbeat forever: a round at once, then every lease renewal period.
/// `on_beat` sees each round.
pub async fn run(
    client: Client,
    cfg: NodeConfig,
    info: HostInfo,
    mut on_beat: impl FnMut(&Heartbeat),
) {
    let period = cfg.lease_renew_period;
    let mut agent = NodeAgent::new(client, cfg, info);
    let mut ticker = tokio::time::interval(period);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let hb = agent.tick().await;
        on_beat(&hb);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info() -> HostInfo {
        HostInfo {
            cpus: 4,
            memory_bytes: 8 * 1024 * 1024 * 1024,
            ephemeral_storage_bytes: 100 * 1024 * 1024 * 1024,
            kernel_version: "6.1.0".into(),
            os_image: "Debian GNU/Linux 12 (bookworm)".into(),
            architecture: "amd64".into(),
            machine_id: "m".into(),
            boot_id: "b".into(),
            system_uuid: String::new(),
        }
    }

    fn cfg() -> NodeConfig {
        NodeConfig::new("node-a", vec![Ipv4Addr::new(192, 0, 2, 10)])
    }

    #[test]
    fn meminfo_and_os_release() {
        let m = "MemTotal:       16318412 kB\nMemFree:         1 kB\n";
        assert_eq!(parse_meminfo(m), Some(16318412 * 1024));
        assert_eq!(parse_meminfo("MemFree: 1 kB\n"), None);
        assert_eq!(parse_meminfo("MemTotal: 12 MB\n"), None);
        let os = "NAME=\"Debian\"\nPRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\n";
        assert_eq!(
            parse_os_release(os).as_deref(),
            Some("Debian GNU/Linux 12 (bookworm)")
        );
        assert_eq!(go_arch("x86_64"), "amd64");
        assert_eq!(go_arch("aarch64"), "arm64");
    }

    #[test]
    fn resources_hold_back_the_eviction_thresholds() {
        let (cap, alloc) = resources(&info());
        assert_eq!(cap["cpu"].0, "4");
        assert_eq!(cap["pods"].0, "110");
        assert_eq!(cap["memory"].0, format!("{}Ki", 8 * 1024 * 1024));
        assert_eq!(
            alloc["memory"].0,
            format!("{}Ki", 8 * 1024 * 1024 - 100 * 1024)
        );
        assert_eq!(
            alloc["ephemeral-storage"].0,
            (100u64 * 1024 * 1024 * 1024 / 100 * 90).to_string()
        );
    }

    #[test]
    fn status_keeps_foreign_conditions_and_transition_times() {
        let t0: Timestamp = "2026-01-01T00:00:00Z".parse().unwrap();
        let t1: Timestamp = "2026-01-01T00:01:00Z".parse().unwrap();
        let mut prev = desired_status(&cfg(), &info(), None, t0);
        prev.conditions.as_mut().unwrap().push(NodeCondition {
            type_: "NetworkUnavailable".into(),
            status: "False".into(),
            ..Default::default()
        });
        // The lifecycle controller marked Ready Unknown meanwhile.
        for c in prev.conditions.as_mut().unwrap() {
            if c.type_ == "Ready" {
                c.status = "Unknown".into();
            }
        }
        let next = desired_status(&cfg(), &info(), Some(&prev), t1);
        let cs = next.conditions.as_ref().unwrap();
        let get = |t: &str| cs.iter().find(|c| c.type_ == t).unwrap();
        assert_eq!(get("NetworkUnavailable").status, "False", "foreign kept");
        assert_eq!(get("Ready").status, "True");
        assert_eq!(get("Ready").reason.as_deref(), Some("KubeletReady"));
        assert_eq!(
            get("Ready").last_transition_time,
            Some(Time(t1)),
            "Unknown -> True is a transition"
        );
        assert_eq!(
            get("MemoryPressure").last_transition_time,
            Some(Time(t0)),
            "unchanged status keeps its transition time"
        );
        assert_eq!(get("MemoryPressure").last_heartbeat_time, Some(Time(t1)));
        assert!(status_changed(Some(&prev), &next));
        // Only heartbeats differ: no change.
        let again = desired_status(
            &cfg(),
            &info(),
            Some(&next),
            t1 + std::time::Duration::from_secs(10),
        );
        assert!(!status_changed(Some(&next), &again));
        let addrs = next.addresses.unwrap();
        assert_eq!(addrs[0].type_, "InternalIP");
        assert_eq!(addrs[0].address, "192.0.2.10");
        assert_eq!(addrs[1].type_, "Hostname");
        let ni = next.node_info.unwrap();
        assert_eq!(ni.kubelet_version, agent_version());
        assert!(ni.kubelet_version.starts_with("skiff-"));
    }

    #[test]
    fn labels_have_no_instance_type() {
        let l = node_labels(&cfg(), &info());
        assert_eq!(l["kubernetes.io/hostname"], "node-a");
        assert_eq!(l["kubernetes.io/arch"], "amd64");
        assert!(!l.contains_key("node.kubernetes.io/instance-type"));
    }

    #[test]
    fn eligibility_follows_kube_proxy() {
        let mut n: Node =
            serde_json::from_value(serde_json::json!({"metadata": {"name": "a"}, "spec": {}}))
                .unwrap();
        assert!(eligible(&n));
        n.spec.as_mut().unwrap().taints = Some(vec![k8s_openapi::api::core::v1::Taint {
            key: "ToBeDeletedByClusterAutoscaler".into(),
            effect: "NoSchedule".into(),
            ..Default::default()
        }]);
        assert!(!eligible(&n));
        n.spec.as_mut().unwrap().taints = None;
        assert!(eligible(&n));
        n.metadata.deletion_timestamp = Some(Time(Timestamp::now()));
        assert!(!eligible(&n), "a Node being deleted is not eligible");
    }
}
