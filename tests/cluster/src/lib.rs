//! A simulated skiff cluster on one machine, for `cargo xtask up` and the whole-cluster
//! tests.
//!
//! ```text
//!  root namespace: only a TCP forwarder on 127.0.0.1 (the admin kubeconfig's server)
//!        │ (upstream sockets opened inside skc-<name>-net)
//!  skc-<name>-net   bridge "phys" 172.31.0.1/24 = skiff-controlplane :6443 (+ etcd on lo)
//!        ├── n1 ── eth0 172.31.0.11  skc-<name>-n1   skiff-agent node-1 (pods 10.42.x.0/24)
//!        ├── n2 ── eth0 172.31.0.12  skc-<name>-n2   skiff-agent node-2
//!        ├── ...
//!        └── ext ─ eth0 172.31.0.200 skc-<name>-ext  an "external client"; the LB pool
//!                                                   172.31.1.0/24 is routed to the nodes
//!                                                   (ECMP), as a router speaking BGP would
//! ```
//!
//! Network safety: every link, address and route lives in a namespace this harness
//! created, so the root namespace cannot send to the pod, service, LB or node ranges at
//! all (it has no route there and gets none). Per node the root namespace holds a cgroup
//! subtree (`<cgroup2>/skc-<name>-n<i>`, pods' cgroups go below it) and a bpffs pin
//! directory (`/sys/fs/bpf/skc-<name>-n<i>`); state, CNI config and IPAM, and logs live in
//! `<tmp>/skc-<name>/`. Everything is named with the `skc-<name>-` prefix, so [`cleanup`]
//! finds the leftovers of a crashed run, and [`Cluster::start`] calls it first.

mod forward;
pub mod sys;

use std::{
    io::{Read as _, Write as _},
    net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Output},
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _};

/// Prefix of everything a cluster creates: `skc-<name>-...`.
pub const PREFIX: &str = "skc-";
/// The simulated physical network.
pub const NETWORK: &str = "172.31.0.0/24";
/// The API server's address on it (the bridge's own address in the network namespace).
pub const API_IP: Ipv4Addr = Ipv4Addr::new(172, 31, 0, 1);
pub const API_PORT: u16 = 6443;
/// The external client's address.
pub const EXTERNAL_IP: Ipv4Addr = Ipv4Addr::new(172, 31, 0, 200);
/// LoadBalancer addresses: routed to the nodes from the external client.
pub const LB_POOL: &str = "172.31.1.0/24";
pub const SERVICE_CIDR: &str = "10.43.0.0/16";
pub const CLUSTER_CIDR: &str = "10.42.0.0/16";
/// Most nodes a cluster may have (their addresses are 172.31.0.11 upwards).
pub const MAX_NODES: usize = 100;

/// The address of node `i` (1-based).
pub fn node_ip(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(172, 31, 0, 10 + i as u8)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Store {
    /// The embedded redb store (the default).
    Redb,
    /// A local `etcd` process (Debian's etcd-server) with a throwaway data directory.
    Etcd,
}

pub struct Options {
    /// Short name (`[a-z0-9]`, at most 10 characters): namespaces are `skc-<name>-...`.
    pub name: String,
    pub nodes: usize,
    pub store: Store,
    /// Where `skiff-controlplane`, `skiff-agent` and `skiff-cni` are (target/debug).
    pub bin_dir: PathBuf,
    /// The host's address for the API server (port 0: any free port).
    pub api_listen: SocketAddr,
    /// Extra `skiff-controlplane server` flags (e.g. a short `--pod-eviction-timeout`).
    pub controlplane_args: Vec<String>,
    /// Extra `skiff-agent run` flags for every node.
    pub agent_args: Vec<String>,
    /// Called with each progress line.
    pub progress: fn(&str),
    /// How long nodes may take to become Ready.
    pub ready_timeout: Duration,
}

impl Options {
    pub fn new(name: &str, nodes: usize, bin_dir: &Path) -> Options {
        Options {
            name: name.to_owned(),
            nodes,
            store: Store::Redb,
            bin_dir: bin_dir.to_path_buf(),
            api_listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            controlplane_args: Vec::new(),
            agent_args: Vec::new(),
            progress: |_| {},
            ready_timeout: Duration::from_secs(60),
        }
    }
}

impl Node {
    /// Its `skiff-agent` process, while it runs.
    pub fn agent_pid(&self) -> Option<u32> {
        self.agent.as_ref().map(Child::id)
    }
}

/// One simulated node.
pub struct Node {
    /// The Node's name (`node-<i>`).
    pub name: String,
    /// Its network namespace (`skc-<cluster>-n<i>`).
    pub netns: String,
    /// Its address on the simulated network (InternalIP).
    pub ip: Ipv4Addr,
    /// Its cgroup subtree (the agent's `--cgroup`; pods' cgroups go below).
    pub cgroup: PathBuf,
    /// Its bpffs pin directory.
    pub pin_dir: PathBuf,
    /// Its state directory (kubeconfig, CNI config, IPAM, pod state, pod logs).
    pub dir: PathBuf,
    /// Where the agent's output goes.
    pub log: PathBuf,
    /// The agent's `--pod-log-dir`.
    pub pod_log_dir: PathBuf,
    agent: Option<Child>,
    dead: bool,
}

pub struct Cluster {
    name: String,
    dir: PathBuf,
    bin_dir: PathBuf,
    nodes: Vec<Node>,
    agent_args: Vec<String>,
    controlplane: Option<Child>,
    etcd: Option<Child>,
    forwarder: Option<forward::Forwarder>,
    kubeconfig: PathBuf,
    progress: fn(&str),
    ready_after: Duration,
}

fn state_root() -> PathBuf {
    std::env::temp_dir()
}

fn net_ns(name: &str) -> String {
    format!("{PREFIX}{name}-net")
}

fn ext_ns(name: &str) -> String {
    format!("{PREFIX}{name}-ext")
}

fn tail(path: &Path, lines: usize) -> String {
    let s = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = s.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

impl Cluster {
    /// Creates the network, starts the control plane and one agent per node, and returns
    /// once every Node is Ready. On error everything created so far is removed.
    pub fn start(opts: Options) -> anyhow::Result<Cluster> {
        let t0 = Instant::now();
        let Options {
            name,
            nodes,
            store,
            bin_dir,
            api_listen,
            controlplane_args,
            agent_args,
            progress,
            ready_timeout,
        } = opts;
        if name.is_empty()
            || name.len() > 10
            || !name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        {
            bail!("cluster name {name:?}: use 1 to 10 characters a-z, 0-9");
        }
        if !(1..=MAX_NODES).contains(&nodes) {
            bail!("--nodes {nodes}: a simulated cluster has 1 to {MAX_NODES} nodes");
        }
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            bail!("a simulated cluster needs root: it creates network namespaces, cgroups and eBPF pins");
        }
        for bin in ["skiff-controlplane", "skiff-agent", "skiff-cni"] {
            if !bin_dir.join(bin).exists() {
                bail!(
                    "{} is missing: build it first (cargo build -p skiff-controlplane -p skiff-agent -p skiff-cni)",
                    bin_dir.join(bin).display()
                );
            }
        }
        clean_stale();
        cleanup(&name).context("removing the leftovers of an earlier run")?;
        let dir = state_root().join(format!("{PREFIX}{name}"));
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        std::fs::write(dir.join("owner.pid"), std::process::id().to_string())?;
        let nodes = (1..=nodes)
            .map(|i| {
                let name_i = format!("{PREFIX}{name}-n{i}");
                let ndir = dir.join(format!("node-{i}"));
                Node {
                    name: format!("node-{i}"),
                    netns: name_i.clone(),
                    ip: node_ip(i),
                    cgroup: sys::cgroup2_root().join(&name_i),
                    pin_dir: PathBuf::from("/sys/fs/bpf").join(&name_i),
                    log: dir.join(format!("node-{i}.log")),
                    pod_log_dir: ndir.join("pod-logs"),
                    dir: ndir,
                    agent: None,
                    dead: false,
                }
            })
            .collect();
        let mut c = Cluster {
            kubeconfig: dir.join("admin.kubeconfig"),
            name,
            dir,
            bin_dir,
            nodes,
            agent_args,
            controlplane: None,
            etcd: None,
            forwarder: None,
            progress,
            ready_after: Duration::ZERO,
        };
        // From here on, Drop removes whatever an error leaves half-built.
        c.network()?;
        c.say(&format!(
            "network: {} node namespace(s) on bridge phys ({NETWORK}) in {} [{:.1?}]",
            c.nodes.len(),
            net_ns(&c.name),
            t0.elapsed()
        ));
        c.start_controlplane(store, &controlplane_args)?;
        c.forwarder = Some(forward::Forwarder::start(
            api_listen,
            &net_ns(&c.name),
            SocketAddr::from((API_IP, API_PORT)),
        )?);
        c.write_host_kubeconfig()?;
        c.say(&format!(
            "API server https://{API_IP}:{API_PORT} ({}), on this host at https://{} [{:.1?}]",
            match store {
                Store::Redb => "embedded redb store",
                Store::Etcd => "etcd",
            },
            c.api_addr(),
            t0.elapsed()
        ));
        c.join_nodes()?;
        c.say(&format!(
            "nodes joined (node credentials issued) [{:.1?}]",
            t0.elapsed()
        ));
        for i in 0..c.nodes.len() {
            c.start_agent(i)?;
        }
        c.wait_ready(ready_timeout, t0)?;
        c.ready_after = t0.elapsed();
        c.say(&format!(
            "{} node(s) Ready [{:.1?}]",
            c.nodes.len(),
            c.ready_after
        ));
        Ok(c)
    }

    fn say(&self, line: &str) {
        (self.progress)(line)
    }

    /// The admin kubeconfig for this host (plain kubectl works with it).
    pub fn kubeconfig(&self) -> &Path {
        &self.kubeconfig
    }

    /// The API server as the host reaches it.
    pub fn api_addr(&self) -> SocketAddr {
        self.forwarder
            .as_ref()
            .map(|f| f.local_addr())
            .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 0)))
    }

    /// Time from [`Cluster::start`] to every Node Ready.
    pub fn ready_after(&self) -> Duration {
        self.ready_after
    }

    pub fn nodes(&self) -> &[Node] {
        &self.nodes
    }

    /// The `skiff-controlplane` process (e.g. to read its memory use).
    pub fn controlplane_pid(&self) -> Option<u32> {
        self.controlplane.as_ref().map(Child::id)
    }

    /// The cluster's state directory (logs, data).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The network namespace of the control plane and the bridge.
    pub fn network_netns(&self) -> String {
        net_ns(&self.name)
    }

    /// The external client's network namespace.
    pub fn external_netns(&self) -> String {
        ext_ns(&self.name)
    }

    /// `kubectl` with this cluster's admin kubeconfig.
    pub fn kubectl(&self) -> Command {
        let mut c = Command::new("kubectl");
        c.env("KUBECONFIG", &self.kubeconfig);
        c
    }

    /// `kubectl <args>` with this cluster's kubeconfig: its standard output, or an error
    /// naming the command and quoting kubectl's standard error.
    pub fn kubectl_run(&self, args: &[&str]) -> Result<String, String> {
        let out = self
            .kubectl()
            .args(args)
            .output()
            .map_err(|e| format!("running kubectl: {e}"))?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(format!(
                "kubectl {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            ))
        }
    }

    /// `kubectl <args> -o json`, parsed.
    pub fn kubectl_json(&self, args: &[&str]) -> Result<serde_json::Value, String> {
        let mut a = args.to_vec();
        a.extend(["-o", "json"]);
        serde_json::from_str(&self.kubectl_run(&a)?).map_err(|e| e.to_string())
    }

    /// Polls `f` every 100 ms until it returns `Ok`, panicking with the last error and the
    /// cluster's logs after `timeout`.
    pub fn eventually<R>(
        &self,
        what: &str,
        timeout: Duration,
        mut f: impl FnMut() -> Result<R, String>,
    ) -> R {
        let deadline = Instant::now() + timeout;
        loop {
            match f() {
                Ok(v) => return v,
                Err(e) if Instant::now() > deadline => panic!(
                    "timed out after {timeout:?} waiting for {what}; last: {e}\n{}",
                    self.logs_tail(25)
                ),
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        }
    }

    fn network(&mut self) -> anyhow::Result<()> {
        let net = net_ns(&self.name);
        sys::ip(&["netns", "add", &net])?;
        sys::ip_in(&net, &["link", "set", "lo", "up"])?;
        sys::ip_in(&net, &["link", "add", "phys", "type", "bridge"])?;
        sys::ip_in(
            &net,
            &["addr", "add", &format!("{API_IP}/24"), "dev", "phys"],
        )?;
        sys::ip_in(&net, &["link", "set", "phys", "up"])?;
        let mut legs: Vec<(String, String, Ipv4Addr)> = self
            .nodes
            .iter()
            .enumerate()
            .map(|(i, n)| (n.netns.clone(), format!("n{}", i + 1), n.ip))
            .collect();
        legs.push((ext_ns(&self.name), "ext".into(), EXTERNAL_IP));
        for (ns, port, addr) in &legs {
            sys::ip(&["netns", "add", ns])?;
            sys::ip_in(ns, &["link", "set", "lo", "up"])?;
            sys::ip(&[
                "link", "add", port, "netns", &net, "type", "veth", "peer", "name", "eth0",
                "netns", ns,
            ])?;
            sys::ip_in(&net, &["link", "set", port, "master", "phys"])?;
            sys::ip_in(&net, &["link", "set", port, "up"])?;
            sys::ip_in(ns, &["addr", "add", &format!("{addr}/24"), "dev", "eth0"])?;
            sys::ip_in(ns, &["link", "set", "eth0", "up"])?;
        }
        for n in &self.nodes {
            // The agent attaches tc to skiff0 at start, before its pod network code
            // gives the bridge the podCIDR's gateway address: the node's boot creates it.
            sys::ip_in(&n.netns, &["link", "add", "skiff0", "type", "bridge"])?;
            sys::ip_in(&n.netns, &["link", "set", "skiff0", "up"])?;
            std::fs::create_dir(&n.cgroup)
                .with_context(|| format!("creating cgroup {}", n.cgroup.display()))?;
            // The node's own ("host") processes: below the socket-LB attach point, as on a
            // real node where --cgroup is the root, beside the pods' cgroups.
            std::fs::create_dir(n.cgroup.join("host"))?;
            std::fs::create_dir_all(&n.dir)?;
        }
        let all: Vec<Ipv4Addr> = self.nodes.iter().map(|n| n.ip).collect();
        self.route_lb_pool(&all)
    }

    /// The external client reaches LoadBalancer IPs through `nodes`, spread by flow hash
    /// (ECMP), as a router learning the pool from the nodes (BGP) would.
    fn route_lb_pool(&self, nodes: &[Ipv4Addr]) -> anyhow::Result<()> {
        let ext = ext_ns(&self.name);
        let hops: Vec<String> = nodes.iter().map(|n| n.to_string()).collect();
        let mut route = vec!["route", "replace"];
        match hops.len() {
            // `unreachable` is a route type: it goes before the prefix.
            0 => route.extend(["unreachable", LB_POOL]),
            1 => route.extend([LB_POOL, "via", hops[0].as_str()]),
            _ => {
                route.push(LB_POOL);
                for h in &hops {
                    route.extend(["nexthop", "via", h.as_str()]);
                }
            }
        }
        sys::ip_in(&ext, &route)
    }

    fn start_controlplane(&mut self, store: Store, extra: &[String]) -> anyhow::Result<()> {
        let net = net_ns(&self.name);
        let data = self.dir.join("controlplane");
        let mut cmd = Command::new(self.bin_dir.join("skiff-controlplane"));
        cmd.args(["server", "--data-dir"]).arg(&data).args([
            "--listen",
            &format!("{API_IP}:{API_PORT}"),
            "--advertise-address",
            &API_IP.to_string(),
            "--cluster-cidr",
            CLUSTER_CIDR,
            "--service-cidr",
            SERVICE_CIDR,
            "--lb-pool",
            LB_POOL,
        ]);
        if store == Store::Etcd {
            let etcd_dir = self.dir.join("etcd");
            let mut e = Command::new("etcd");
            e.arg("--data-dir").arg(&etcd_dir).args([
                "--listen-client-urls",
                "http://127.0.0.1:2379",
                "--advertise-client-urls",
                "http://127.0.0.1:2379",
                "--listen-peer-urls",
                "http://127.0.0.1:2380",
                "--initial-advertise-peer-urls",
                "http://127.0.0.1:2380",
                "--initial-cluster",
                "default=http://127.0.0.1:2380",
            ]);
            self.etcd = Some(
                sys::spawn_in(&net, &mut e, &self.dir.join("etcd.log"))
                    .context("starting etcd (Debian package etcd-server)")?,
            );
            wait_tcp(
                self.etcd.as_mut().expect("just started"),
                &net,
                SocketAddr::from(([127, 0, 0, 1], 2379)),
                "etcd",
                &self.dir.join("etcd.log"),
            )?;
            cmd.args([
                "--store",
                "etcd",
                "--etcd-endpoints",
                "http://127.0.0.1:2379",
            ]);
        }
        cmd.args(extra);
        let log = self.dir.join("controlplane.log");
        self.controlplane = Some(sys::spawn_in(&net, &mut cmd, &log)?);
        wait_tcp(
            self.controlplane.as_mut().expect("just started"),
            &net,
            SocketAddr::from((API_IP, API_PORT)),
            "skiff-controlplane",
            &log,
        )?;
        // The listener may be up a moment before the files are written (seen with two
        // clusters starting at once on a loaded machine): poll for them.
        for f in ["admin.kubeconfig", "pki/join.token"] {
            let path = data.join(f);
            let written = sys::poll(Duration::from_secs(10), Duration::from_millis(20), || {
                path.exists().then_some(())
            });
            if written.is_none() {
                bail!(
                    "skiff-controlplane serves but wrote no {} within 10 s:\n{}",
                    path.display(),
                    tail(&log, 20)
                );
            }
        }
        Ok(())
    }

    fn write_host_kubeconfig(&self) -> anyhow::Result<()> {
        let src = self.dir.join("controlplane/admin.kubeconfig");
        let kc =
            std::fs::read_to_string(&src).with_context(|| format!("reading {}", src.display()))?;
        let from = format!("server: https://{API_IP}:{API_PORT}");
        if !kc.contains(&from) {
            bail!("{} does not name {from}", src.display());
        }
        let kc = kc.replace(&from, &format!("server: https://{}", self.api_addr()));
        use std::os::unix::fs::OpenOptionsExt as _;
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(true)
            .mode(0o600)
            .open(&self.kubeconfig)?;
        f.write_all(kc.as_bytes())?;
        Ok(())
    }

    fn join_nodes(&mut self) -> anyhow::Result<()> {
        let token = self.dir.join("controlplane/pki/join.token");
        let mut joins = Vec::new();
        for n in &self.nodes {
            let mut cmd = Command::new(self.bin_dir.join("skiff-agent"));
            cmd.args(["join", "--server", &format!("https://{API_IP}:{API_PORT}")])
                .arg("--token-file")
                .arg(&token)
                .args(["--node-name", &n.name])
                .arg("--kubeconfig-out")
                .arg(n.dir.join("node.kubeconfig"));
            joins.push(sys::spawn_in(&n.netns, &mut cmd, &n.log)?);
        }
        for (mut j, n) in joins.into_iter().zip(&self.nodes) {
            let status = j.wait()?;
            if !status.success() {
                bail!(
                    "skiff-agent join for {} failed ({status}):\n{}",
                    n.name,
                    tail(&n.log, 10)
                );
            }
        }
        Ok(())
    }

    /// The `skiff-agent run` command line of node `i` (0-based).
    pub fn agent_command(&self, i: usize) -> Command {
        let n = &self.nodes[i];
        let ip = n.ip.to_string();
        let mut cmd = Command::new(self.bin_dir.join("skiff-agent"));
        cmd.arg("run")
            .arg("--kubeconfig")
            .arg(n.dir.join("node.kubeconfig"))
            .args([
                "--node-name",
                &n.name,
                "--node-address",
                &ip,
                "--snat-addr",
                &ip,
            ])
            .args(["-i", "eth0", "-i", "skiff0", "--egress-interface", "eth0"])
            .arg("--cgroup")
            .arg(&n.cgroup)
            .arg("--pin-dir")
            .arg(&n.pin_dir)
            .arg("--cni-conf-dir")
            .arg(n.dir.join("cni/net.d"))
            .arg("--cni-bin-dir")
            .arg(n.dir.join("cni/bin"))
            .arg("--cni-ipam-dir")
            .arg(n.dir.join("cni/ipam"))
            .arg("--root-dir")
            .arg(n.dir.join("agent"))
            .arg("--pod-log-dir")
            .arg(&n.pod_log_dir)
            .args(["--service-cidr", SERVICE_CIDR, "--lb-pool", LB_POOL])
            // Each node has its own namespace: the default ports do not collide.
            .args(["--healthz-bind-address", "0.0.0.0:10256"])
            .args(["--metrics-bind-address", "127.0.0.1:10249"])
            // Cluster DNS on the node address (the kube-dns Service's endpoints are node
            // InternalIPs). Names outside the cluster go nowhere: the simulated network has
            // no way out, so the upstream list is empty (SERVFAIL) rather than the host's.
            .args(["--dns-bind-address", &format!("{ip}:53")])
            .arg("--dns-resolv-conf")
            .arg(n.dir.join("upstream-resolv.conf"))
            .args(&self.agent_args);
        cmd
    }

    fn start_agent(&mut self, i: usize) -> anyhow::Result<()> {
        let mut cmd = self.agent_command(i);
        let n = &self.nodes[i];
        std::fs::write(
            n.dir.join("upstream-resolv.conf"),
            "# skiff simulated node: no upstream nameservers (the simulated network has no way out)\n",
        )?;
        let child = sys::spawn_in(&n.netns, &mut cmd, &n.log)?;
        self.nodes[i].agent = Some(child);
        Ok(())
    }

    fn wait_ready(&mut self, timeout: Duration, t0: Instant) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        let mut said = vec![false; self.nodes.len()];
        loop {
            let mut all = true;
            for (i, n) in self.nodes.iter_mut().enumerate() {
                if let Some(Ok(Some(status))) = n.agent.as_mut().map(|a| a.try_wait()) {
                    bail!(
                        "skiff-agent on {} exited with {status}:\n{}",
                        n.name,
                        tail(&n.log, 30)
                    );
                }
                let log = std::fs::read_to_string(&n.log).unwrap_or_default();
                let registered = log.contains(&format!("Node {} registered", n.name));
                let pods = log.contains(&format!("running the pods of Node {}", n.name));
                if registered && pods && !said[i] {
                    said[i] = true;
                    (self.progress)(&format!(
                        "{} ({}) registered, pod network up, running pods [{:.1?}]",
                        n.name,
                        n.ip,
                        t0.elapsed()
                    ));
                }
                all &= said[i];
            }
            if all {
                break;
            }
            if Instant::now() > deadline {
                bail!(
                    "nodes not Ready within {timeout:?}:\n{}",
                    self.logs_tail(15)
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        // What the API says, through the host's kubeconfig (so that works too).
        let out = self
            .kubectl()
            .args(["get", "nodes", "-o", "json"])
            .output()
            .context("running kubectl (Debian package kubectl)")?;
        if !out.status.success() {
            bail!(
                "kubectl get nodes: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        let list: serde_json::Value = serde_json::from_slice(&out.stdout)?;
        for n in &self.nodes {
            let node = list["items"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|o| o["metadata"]["name"] == n.name.as_str());
            let ready = node
                .and_then(|o| o["status"]["conditions"].as_array())
                .into_iter()
                .flatten()
                .any(|c| c["type"] == "Ready" && c["status"] == "True");
            if !ready {
                bail!("Node {} is not Ready in the API: {node:?}", n.name);
            }
        }
        Ok(())
    }

    /// The last `lines` lines of every log (for failure messages).
    pub fn logs_tail(&self, lines: usize) -> String {
        let mut s = String::new();
        let mut logs = vec![self.dir.join("controlplane.log")];
        logs.extend(self.nodes.iter().map(|n| n.log.clone()));
        for l in logs {
            s.push_str(&format!("--- {} ---\n{}\n", l.display(), tail(&l, lines)));
        }
        s
    }

    /// Runs `cmd` inside network namespace `ns` (no cgroup) and returns its output.
    pub fn run_in(&self, ns: &str, cmd: &mut Command) -> anyhow::Result<Output> {
        let _keep = sys::place(
            cmd,
            &sys::Placement {
                netns: Some(ns),
                netns_path: None,
                cgroup: None,
            },
        )?;
        cmd.output()
            .with_context(|| format!("running {:?} in {ns}", cmd.get_program()))
    }

    /// Runs `cmd` as a process of node `i` (0-based): in its namespace and its host cgroup
    /// (socket load balancing applies, as to a real node's processes).
    pub fn run_on_node(&self, i: usize, cmd: &mut Command) -> anyhow::Result<Output> {
        let n = &self.nodes[i];
        let cg = n.cgroup.join("host");
        let _keep = sys::place(
            cmd,
            &sys::Placement {
                netns: Some(&n.netns),
                netns_path: None,
                cgroup: Some(&cg),
            },
        )?;
        cmd.output()
            .with_context(|| format!("running {:?} on {}", cmd.get_program(), n.name))
    }

    /// Runs `cmd` as a process of pod `uid`'s container `container`: in the pod's network
    /// namespace and its cgroup (so socket load balancing applies, as to the pod's own
    /// processes).
    /// The main process of a running container, e.g. to enter its mount namespace.
    pub fn pod_pid(&self, uid: &str, container: &str) -> anyhow::Result<u32> {
        Ok(self.pod_process(uid, container)?.1)
    }

    fn pod_process(&self, uid: &str, container: &str) -> anyhow::Result<(PathBuf, u32)> {
        let cg = self
            .nodes
            .iter()
            .map(|n| n.cgroup.join(format!("skiff-pod-{uid}")).join(container))
            .find(|p| p.exists())
            .with_context(|| format!("no cgroup of pod {uid} container {container} on any node"))?;
        let procs = std::fs::read_to_string(cg.join("cgroup.procs"))?;
        let pid: u32 = procs
            .lines()
            .next()
            .and_then(|l| l.trim().parse().ok())
            .with_context(|| format!("no process in {}", cg.display()))?;
        Ok((cg, pid))
    }

    pub fn run_in_pod(
        &self,
        uid: &str,
        container: &str,
        cmd: &mut Command,
    ) -> anyhow::Result<Output> {
        let (cg, pid) = self.pod_process(uid, container)?;
        let netns = PathBuf::from(format!("/proc/{pid}/ns/net"));
        let _keep = sys::place(
            cmd,
            &sys::Placement {
                netns: None,
                netns_path: Some(&netns),
                cgroup: Some(&cg),
            },
        )?;
        cmd.output()
            .with_context(|| format!("running {:?} in pod {uid}", cmd.get_program()))
    }

    /// One HTTP/1.0 GET from inside network namespace `ns`; the response body.
    pub fn http_get_in(
        &self,
        ns: &str,
        addr: SocketAddrV4,
        timeout: Duration,
    ) -> anyhow::Result<String> {
        sys::in_netns(ns, || http_get(addr, timeout))?
    }

    /// The value of metric `series` (a whole series name with labels, as `/metrics`
    /// prints it) on node `i`'s agent (0-based).
    pub fn agent_metric(&self, i: usize, series: &str) -> anyhow::Result<f64> {
        let addr = SocketAddrV4::new(std::net::Ipv4Addr::LOCALHOST, 10249);
        let text = sys::in_netns(&self.nodes[i].netns, || {
            http_get_path(addr, "/metrics", Duration::from_secs(5))
        })??;
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
            .with_context(|| format!("{}: no metric {series}", self.nodes[i].name))?
            .trim()
            .parse()
            .with_context(|| format!("{}: metric {series} is not a number", self.nodes[i].name))
    }

    /// `kill -9` of node `i`'s agent (0-based) and nothing else: its pods, pinned maps,
    /// routes and links stay, as after an agent crash.
    pub fn kill_agent(&mut self, i: usize) -> anyhow::Result<()> {
        let n = &mut self.nodes[i];
        let mut a = n
            .agent
            .take()
            .with_context(|| format!("{}: no agent running", n.name))?;
        a.kill()?;
        a.wait()?;
        Ok(())
    }

    /// Starts node `i`'s agent again (after [`Cluster::kill_agent`]) and waits until it
    /// has registered and runs the node's pods again.
    pub fn restart_agent(&mut self, i: usize, timeout: Duration) -> anyhow::Result<()> {
        let marker = format!("running the pods of Node {}", self.nodes[i].name);
        let count = |log: &Path| {
            std::fs::read_to_string(log)
                .unwrap_or_default()
                .matches(&marker)
                .count()
        };
        let before = count(&self.nodes[i].log);
        self.start_agent(i)?;
        let deadline = Instant::now() + timeout;
        while count(&self.nodes[i].log) <= before {
            let n = &mut self.nodes[i];
            if let Some(Ok(Some(status))) = n.agent.as_mut().map(|a| a.try_wait()) {
                bail!(
                    "restarted skiff-agent on {} exited with {status}:\n{}",
                    n.name,
                    tail(&n.log, 30)
                );
            }
            if Instant::now() > deadline {
                bail!(
                    "restarted agent of {} not running pods within {timeout:?}:\n{}",
                    n.name,
                    tail(&n.log, 30)
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }

    /// Takes node `i` (0-based) away as a power cut would: its agent and pods are killed,
    /// its link to the network goes down, and the external client's router stops sending
    /// LoadBalancer traffic to it (its BGP session would drop).
    pub fn kill_node(&mut self, i: usize) -> anyhow::Result<()> {
        let n = &mut self.nodes[i];
        if let Some(mut a) = n.agent.take() {
            let _ = a.kill();
            let _ = a.wait();
        }
        if let Ok(rd) = std::fs::read_dir(&n.cgroup) {
            for e in rd.flatten() {
                if e.path().is_dir() && e.file_name() != "host" {
                    sys::destroy_cgroup(&e.path())?;
                }
            }
        }
        n.dead = true;
        sys::ip_in(
            &net_ns(&self.name),
            &["link", "set", &format!("n{}", i + 1), "down"],
        )?;
        let alive: Vec<Ipv4Addr> = self
            .nodes
            .iter()
            .filter(|n| !n.dead)
            .map(|n| n.ip)
            .collect();
        self.route_lb_pool(&alive)
    }

    fn teardown(&mut self) {
        // Agents first: SIGTERM stops their pods and releases the pods' networks.
        for n in &mut self.nodes {
            if let Some(a) = &n.agent {
                // SAFETY: kill(2) on our own, unreaped child.
                unsafe { libc::kill(a.id() as i32, libc::SIGTERM) };
            }
        }
        for n in &mut self.nodes {
            if let Some(mut a) = n.agent.take() {
                sys::stop(&mut a, libc::SIGTERM, Duration::from_secs(10));
            }
        }
        if let Some(mut c) = self.controlplane.take() {
            sys::stop(&mut c, libc::SIGINT, Duration::from_secs(5));
        }
        if let Some(mut e) = self.etcd.take() {
            sys::stop(&mut e, libc::SIGTERM, Duration::from_secs(5));
        }
        self.forwarder = None;
        if std::thread::panicking() {
            // A failing test: keep the logs for the post-mortem (not named skc-*, so no
            // later cleanup takes them).
            let keep = state_root().join(format!("skiff-cluster-logs-{}", self.name));
            let _ = std::fs::remove_dir_all(&keep);
            if std::fs::create_dir_all(&keep).is_ok() {
                let mut logs = vec![self.dir.join("controlplane.log")];
                logs.extend(self.nodes.iter().map(|n| n.log.clone()));
                for l in logs {
                    if let Some(f) = l.file_name() {
                        let _ = std::fs::copy(&l, keep.join(f));
                    }
                }
                eprintln!("cluster {}: logs kept in {}", self.name, keep.display());
            }
        }
        if let Err(e) = cleanup(&self.name) {
            eprintln!("warning: removing cluster {}: {e:#}", self.name);
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.teardown();
    }
}

/// Waits until `addr` accepts connections in namespace `ns`, or `child` exits.
fn wait_tcp(
    child: &mut Child,
    ns: &str,
    addr: SocketAddr,
    what: &str,
    log: &Path,
) -> anyhow::Result<()> {
    let ok = sys::poll(Duration::from_secs(30), Duration::from_millis(20), || {
        if let Ok(Some(status)) = child.try_wait() {
            return Some(Err(anyhow::anyhow!(
                "{what} exited with {status}:\n{}",
                tail(log, 20)
            )));
        }
        let up = sys::in_netns(ns, || {
            TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
        })
        .unwrap_or(false);
        up.then_some(Ok(()))
    });
    match ok {
        Some(r) => r,
        None => bail!(
            "{what} did not listen on {addr} within 30 s:\n{}",
            tail(log, 20)
        ),
    }
}

/// HTTP/1.0 GET of `/` at `addr`; the body, or an error if no complete 200 answer came.
pub fn http_get(addr: SocketAddrV4, timeout: Duration) -> anyhow::Result<String> {
    http_get_path(addr, "/", timeout)
}

/// One HTTP/1.0 GET of `path`; the response body (a 200 answer only).
pub fn http_get_path(addr: SocketAddrV4, path: &str, timeout: Duration) -> anyhow::Result<String> {
    let mut s = TcpStream::connect_timeout(&addr.into(), timeout)
        .with_context(|| format!("connecting to {addr}"))?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    s.write_all(format!("GET {path} HTTP/1.0\r\nConnection: close\r\n\r\n").as_bytes())?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf)
        .with_context(|| format!("reading the answer of {addr}"))?;
    let text = String::from_utf8_lossy(&buf);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .with_context(|| format!("{addr}: no complete HTTP answer: {text:?}"))?;
    if !head.starts_with("HTTP/1.0 200") && !head.starts_with("HTTP/1.1 200") {
        bail!("{addr} answered {:?}", head.lines().next().unwrap_or(""));
    }
    Ok(body.to_owned())
}

/// Removes every leftover of cluster `name`: processes in its namespaces, its cgroups
/// (with their pods), namespaces (with their links, bridges and routes), bpffs pins and
/// state directory (CNI config, IPAM, logs).
pub fn cleanup(name: &str) -> anyhow::Result<()> {
    let prefix = format!("{PREFIX}{name}-");
    let namespaces: Vec<String> = std::fs::read_dir("/run/netns")
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with(&prefix))
                .collect()
        })
        .unwrap_or_default();
    let ids: Vec<(u64, u64)> = namespaces
        .iter()
        .filter_map(|n| sys::ns_id(&sys::netns_path(n)))
        .collect();
    let me = std::process::id();
    if !ids.is_empty() {
        if let Ok(rd) = std::fs::read_dir("/proc") {
            for e in rd.flatten() {
                let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
                    continue;
                };
                if pid == me {
                    continue;
                }
                if sys::ns_id(&e.path().join("ns/net")).is_some_and(|id| ids.contains(&id)) {
                    // SAFETY: kill(2); the pid was just seen in one of our namespaces.
                    unsafe { libc::kill(pid as i32, libc::SIGKILL) };
                }
            }
        }
    }
    let mut errors = Vec::new();
    let cg_root = sys::cgroup2_root();
    if let Ok(rd) = std::fs::read_dir(&cg_root) {
        for e in rd.flatten() {
            if e.file_name().to_string_lossy().starts_with(&prefix) {
                if let Err(err) = sys::destroy_cgroup(&e.path()) {
                    errors.push(format!("{err:#}"));
                }
            }
        }
    }
    for ns in &namespaces {
        if let Err(e) = sys::ip(&["netns", "del", ns]) {
            errors.push(format!("{e:#}"));
        }
    }
    if let Ok(rd) = std::fs::read_dir("/sys/fs/bpf") {
        for e in rd.flatten() {
            if e.file_name().to_string_lossy().starts_with(&prefix) {
                if let Err(err) = std::fs::remove_dir_all(e.path()) {
                    errors.push(format!("removing {}: {err}", e.path().display()));
                }
            }
        }
    }
    let dir = state_root().join(format!("{PREFIX}{name}"));
    if dir.exists() {
        if let Err(e) = std::fs::remove_dir_all(&dir) {
            errors.push(format!("removing {}: {e}", dir.display()));
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        bail!("{}", errors.join("; "))
    }
}

/// Removes the leftovers of clusters whose owning process is gone (killed before its
/// drop ran).
pub fn clean_stale() {
    let Ok(rd) = std::fs::read_dir(state_root()) else {
        return;
    };
    for e in rd.flatten() {
        let file = e.file_name().to_string_lossy().into_owned();
        let Some(name) = file.strip_prefix(PREFIX) else {
            continue;
        };
        let Ok(pid) = std::fs::read_to_string(e.path().join("owner.pid")) else {
            continue;
        };
        let alive = pid
            .trim()
            .parse::<u32>()
            .is_ok_and(|p| Path::new(&format!("/proc/{p}")).exists());
        if !alive {
            if let Err(err) = cleanup(name) {
                eprintln!("warning: removing stale cluster {name}: {err:#}");
            }
        }
    }
}
