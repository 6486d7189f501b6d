//! `skiff-agent`: the node agent binary.
//!
//! `run` loads and attaches the datapath; with `--kubeconfig` it is the node agent: service
//! sync from the API (kube-proxy replacement), Node registration + Lease heartbeat, the pod
//! network (bridge, CNI config + plugin, routes to other nodes, unreachable service
//! ranges), `/healthz`, healthCheckNodePort servers and `/metrics`. `check` verifies the
//! object; `lb list`, `ct list`, `lb explain`, `drops` read the live pinned maps.

use std::{
    collections::BTreeMap,
    net::{Ipv4Addr, SocketAddrV4},
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _};
use clap::{Args, Parser, Subcommand};
use skiff_agent::{
    datapath::{Datapath, DatapathConfig, Inspector},
    debug,
    lbmap::MapSizes,
};
use skiff_datapath_abi::{proto, NodeConfig};

#[derive(Parser)]
#[command(
    name = "skiff-agent",
    version,
    about = "skiff's node agent (eBPF service datapath)"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Args, Clone)]
struct PinArgs {
    /// bpffs directory holding the agent's pinned maps and links.
    #[arg(long, default_value = "/sys/fs/bpf/skiff")]
    pin_dir: PathBuf,
}

#[derive(Args)]
struct Sizes {
    /// Capacity of the service frontend map (entries; one per frontend).
    #[arg(long, default_value_t = MapSizes::default().services)]
    map_size_services: u32,
    /// Capacity of the backend slot map (entries; one per service backend).
    #[arg(long, default_value_t = MapSizes::default().slots)]
    map_size_slots: u32,
    /// Capacity of the backend map (entries; one per distinct backend).
    #[arg(long, default_value_t = MapSizes::default().backends)]
    map_size_backends: u32,
    /// Capacity of the socket reverse-translation map (LRU).
    #[arg(long, default_value_t = MapSizes::default().sock_rev)]
    map_size_sock_rev: u32,
    /// Capacity of the conntrack map (LRU; two entries per per-packet flow).
    #[arg(long, default_value_t = MapSizes::default().conntrack)]
    map_size_conntrack: u32,
    /// Number of Maglev tables (services using Maglev); each costs 64 KiB.
    #[arg(long, default_value_t = MapSizes::default().maglev_tables)]
    maglev_tables: u32,
}

#[derive(Args)]
struct RunArgs {
    /// Interfaces (in this network namespace) to attach tc ingress to (repeatable).
    /// Default: the interfaces holding the --node-address addresses.
    #[arg(long = "interface", short = 'i')]
    interfaces: Vec<String>,
    /// Interfaces to attach tc egress (reply reverse translation) to.
    #[arg(long = "egress-interface")]
    egress_interfaces: Vec<String>,
    /// cgroup v2 directory for socket load balancing (e.g. /sys/fs/cgroup/unified).
    #[arg(long)]
    cgroup: Option<PathBuf>,
    /// Source address for SNAT towards remote backends and hairpin flows.
    #[arg(long)]
    snat_addr: Option<Ipv4Addr>,
    #[command(flatten)]
    pins: PinArgs,
    /// Do not pin anything: everything detaches when the process exits.
    #[arg(long)]
    no_pin: bool,
    #[command(flatten)]
    sizes: Sizes,
    /// Seconds between counter reports.
    #[arg(long, default_value_t = 5)]
    interval_secs: u64,
    /// Stop after this many seconds (default: run until killed).
    #[arg(long)]
    duration_secs: Option<u64>,
    /// Watch Services and EndpointSlices through this kubeconfig and program them
    /// (skiff's admin.kubeconfig, or any cluster's). Without it, only the datapath runs.
    #[arg(long)]
    kubeconfig: Option<PathBuf>,
    /// This node's name (EndpointSlice nodeName decides which endpoints are local).
    #[arg(long, default_value = "")]
    node_name: String,
    /// This node's addresses (NodePorts listen on each).
    #[arg(long = "node-address")]
    node_addresses: Vec<Ipv4Addr>,
    /// ExternalIPs inside this CIDR are programmed (repeatable); others are reported
    /// and ignored (CVE-2020-8554). Default: none.
    #[arg(long = "external-ip-cidr")]
    external_ip_cidrs: Vec<String>,
    /// Cluster-wide backend choice for traffic from outside: random or maglev (a
    /// Service's `skiff.io/lb-algorithm` annotation overrides it).
    #[arg(long, default_value = "random")]
    lb_algorithm: String,
    /// Accelerate NodePort/LoadBalancer/ExternalIP flows to remote backends with XDP on
    /// these node-facing interfaces (repeatable; frames must carry full checksums).
    #[arg(long = "xdp-interface")]
    xdp_interfaces: Vec<String>,
    /// Use generic (skb) XDP instead of native (driver) mode.
    #[arg(long)]
    xdp_generic: bool,
    /// NodePort range (bind protection and health-check ports), `MIN-MAX`.
    #[arg(long, default_value = "30000-32767")]
    node_port_range: String,
    /// Turn off NodePort bind protection (processes in --cgroup may then bind
    /// NodePort-range ports on node addresses).
    #[arg(long)]
    no_bind_protection: bool,
    #[command(flatten)]
    node: NodeArgs,
    #[command(flatten)]
    masquerade: MasqArgs,
}

// --- masquerade of pod traffic to the outside (issue 7) ---
/// Masquerade flags (ip-masq-agent's semantics, done in eBPF on the uplinks' tc egress).
#[derive(Args)]
struct MasqArgs {
    /// Masquerade pod traffic to the outside: `auto` (on when the agent runs the pod
    /// network: --kubeconfig with --pod-network direct), `on` or `off`.
    #[arg(long, default_value = "auto")]
    masquerade: String,
    /// Uplinks to masquerade on, with their own IPv4 address (repeatable; default: every
    /// -i interface except the pod bridge and the VXLAN device). tc ingress and egress
    /// are attached to each.
    #[arg(long = "masquerade-interface")]
    masquerade_interfaces: Vec<String>,
    /// The pods' addresses (every node's podCIDR): the sources that are masqueraded.
    #[arg(long, default_value = "10.42.0.0/16")]
    cluster_cidr: String,
    /// Destinations pods reach with their own address (repeatable), besides the cluster
    /// CIDR and --service-cidr; link-local (169.254.0.0/16) is never masqueraded.
    #[arg(long = "non-masquerade-cidr")]
    non_masquerade_cidrs: Vec<String>,
    /// Ports (and ICMP echo ids) of masqueraded flows, MIN-MAX. The default lies above
    /// Linux's ephemeral range (32768-60999), so the node's own sockets never pick one.
    #[arg(long, default_value = "61000-65535")]
    masquerade_port_range: String,
}
// --- end masquerade ---

/// The node side (used with --kubeconfig).
#[derive(Args)]
struct NodeArgs {
    /// Do not register/refresh the Node and its Lease (a kubelet owns them, e.g. when
    /// skiff replaces kube-proxy on an existing cluster).
    #[arg(long)]
    no_register_node: bool,
    /// Seconds between Lease renewals (the Lease lasts 40 s).
    #[arg(long, default_value_t = 10)]
    node_lease_renew_secs: u64,
    /// Seconds between Node status posts when nothing changed.
    #[arg(long, default_value_t = 60)]
    node_status_report_secs: u64,
    /// Pod network on this node: `direct` (bridge, CNI config and plugin, routes to the
    /// other nodes' podCIDRs via their InternalIPs) or `none` (another CNI owns it).
    #[arg(long, default_value = "direct")]
    pod_network: String,
    /// How pod traffic reaches other nodes: `none` (direct routing via their InternalIPs,
    /// which must be on a connected network) or `vxlan` (an overlay, for nodes that do not
    /// share an L2 segment).
    #[arg(long, default_value = "none")]
    tunnel: String,
    /// VXLAN network identifier (with --tunnel vxlan).
    #[arg(long, default_value_t = 1)]
    vxlan_vni: u32,
    /// VXLAN UDP port (with --tunnel vxlan): 4789 (IANA); flannel's default is 8472.
    #[arg(long, default_value_t = 4789)]
    vxlan_port: u16,
    /// Bridge holding the pod range's gateway.
    #[arg(long, default_value = "skiff0")]
    bridge: String,
    /// MTU of the bridge and pod interfaces (default: the kernel's; 1450 with VXLAN).
    #[arg(long)]
    mtu: Option<u32>,
    /// Where the CNI network config (10-skiff.conflist) is written.
    #[arg(long, default_value = "/etc/cni/net.d")]
    cni_conf_dir: PathBuf,
    /// Where skiff-cni is installed: /opt/cni/bin for most runtimes, /usr/lib/cni for
    /// Debian's containerd and podman packages.
    #[arg(long, default_value = "/opt/cni/bin")]
    cni_bin_dir: PathBuf,
    /// The skiff-cni binary to install (default: next to skiff-agent).
    #[arg(long)]
    cni_plugin: Option<PathBuf>,
    /// Service CIDR: gets an unreachable route, so untranslated packets to a ClusterIP
    /// fail at once (repeatable).
    #[arg(long = "service-cidr", default_value = "10.43.0.0/16")]
    service_cidrs: Vec<String>,
    /// LoadBalancer address pool: gets an unreachable route too (repeatable).
    #[arg(long = "lb-pool")]
    lb_pools: Vec<String>,
    /// /healthz and /livez in kube-proxy's format; empty to turn off.
    #[arg(long, default_value = "0.0.0.0:10256")]
    healthz_bind_address: String,
    /// Prometheus /metrics; empty to turn off.
    #[arg(long, default_value = "127.0.0.1:10249")]
    metrics_bind_address: String,
    /// Addresses the healthCheckNodePort servers listen on (repeatable; default all).
    #[arg(long = "health-check-address", default_value = "0.0.0.0")]
    health_check_addresses: Vec<std::net::IpAddr>,
    /// Seconds between consistency checks (the maps read back and compared with what the
    /// agent wrote; a full map walk, so not too often at scale).
    #[arg(long, default_value_t = 60)]
    consistency_check_secs: u64,
    /// Seconds a received change may wait for programming before /healthz says 503
    /// (kube-proxy: twice its 30 s sync period).
    #[arg(long, default_value_t = 60)]
    health_timeout_secs: u64,
    // dns: cluster DNS (issue 8)
    /// Serve cluster DNS (UDP and TCP) on this address, e.g. `<node address>:53`, and
    /// announce it on the Node (`skiff.io/cluster-dns`), which puts this node behind the
    /// kube-dns Service. The Service's endpoints are node InternalIPs, so bind the node
    /// address or 0.0.0.0 (a host resolver on 127.0.0.53:53 rules out 0.0.0.0:53). Empty: off.
    #[arg(long, default_value = "")]
    dns_bind_address: String,
    /// The cluster domain the DNS server answers for (the kubelet's --cluster-domain).
    #[arg(long, default_value = "cluster.local")]
    cluster_domain: String,
    /// The cluster DNS Service's ClusterIP (the kubelet's --cluster-dns): pods' nameserver,
    /// and never used as an upstream (a node resolv.conf pointing at it would loop).
    #[arg(long, default_value = "10.43.0.10")]
    cluster_dns: std::net::Ipv4Addr,
    /// The resolv.conf whose nameservers get the names outside the cluster domain.
    #[arg(long, default_value = "/etc/resolv.conf")]
    dns_resolv_conf: PathBuf,
    // end dns
    // cluster: pod runtime wiring (issue 8)
    /// Do not run the Pods bound to this node (a kubelet does, e.g. when skiff replaces
    /// kube-proxy on an existing cluster). Pods run only with `--pod-network direct`.
    #[arg(long)]
    no_run_pods: bool,
    /// The pod runtime's state: per-pod volumes and cached CNI results in
    /// `<root-dir>/pods/<uid>`.
    #[arg(long, default_value = "/var/lib/skiff-agent")]
    root_dir: PathBuf,
    /// Container logs: `<pod-log-dir>/<namespace>_<pod>_<uid>/<container>/<n>.log`
    /// (not the kubelet's /var/log/pods, so both can share a host).
    #[arg(long, default_value = "/var/log/skiff-pods")]
    pod_log_dir: PathBuf,
    /// host-local IPAM's data directory, named in the conflist (simulated nodes sharing a
    /// filesystem each need their own).
    #[arg(long, default_value = skiff_cni::config::DEFAULT_DATA_DIR)]
    cni_ipam_dir: PathBuf,
    /// Static pods: a directory of Pod manifests (YAML or JSON, one Pod per file) this
    /// node runs on its own, each mirrored in the API as `<name>-<node>` (the kubelet's
    /// --pod-manifest-path). Empty: none.
    #[arg(long, default_value = "")]
    pod_manifest_path: String,
    // end cluster
    // --- kubelet API (kubectl logs) ---
    /// Port of the kubelet API (`/containerLogs`, HTTPS, for the API server's
    /// `kubectl logs`), reported in the Node's status; 0 turns it off.
    #[arg(long, default_value_t = skiff_agent::kubelet_api::DEFAULT_PORT)]
    kubelet_port: u16,
    /// Address the kubelet API listens on.
    #[arg(long, default_value = "0.0.0.0")]
    kubelet_address: std::net::IpAddr,
    // (--pod-log-dir, which the kubelet API reads, is the cluster block's.)
    // --- end kubelet API ---
}

#[derive(Subcommand)]
enum Command {
    /// Load the datapath, attach it, and print packet and drop counters every interval.
    /// With --pin-dir (default) the programs stay attached after exit; `cleanup` removes
    /// them.
    Run(Box<RunArgs>),
    /// Load the datapath (running the kernel verifier), print what it contains, and exit.
    Check,
    /// Service load-balancing tables.
    Lb {
        #[command(subcommand)]
        command: LbCommand,
    },
    /// Connection tracking.
    Ct {
        #[command(subcommand)]
        command: CtCommand,
    },
    /// Packet counters by class and drops by reason, from the live maps.
    Drops {
        #[command(flatten)]
        pins: PinArgs,
    },
    /// One screen about the agent on this node: health, API connection, Node and podCIDR,
    /// last sync, programming latency, map usage against capacity, routes.
    Status {
        /// Also ask the API about the Node (Ready, podCIDR, Lease).
        #[arg(long)]
        kubeconfig: Option<PathBuf>,
        /// The Node to show (with --kubeconfig).
        #[arg(long, default_value = "")]
        node_name: String,
        /// Where the agent serves /healthz.
        #[arg(long, default_value = "127.0.0.1:10256")]
        healthz_address: std::net::SocketAddr,
        /// Where the agent serves /metrics.
        #[arg(long, default_value = "127.0.0.1:10249")]
        metrics_address: std::net::SocketAddr,
    },
    /// Join a cluster: trade its join token for this node's credential (a kubeconfig for
    /// system:node:<name>, written with mode 0600) to use as `run --kubeconfig`.
    Join {
        /// The API server, e.g. https://10.0.0.1:6443.
        #[arg(long)]
        server: String,
        /// The join token (the server's <data-dir>/pki/join.token)...
        #[arg(
            long,
            conflicts_with = "token_file",
            required_unless_present = "token_file"
        )]
        token: Option<String>,
        /// ...or a file holding it.
        #[arg(long)]
        token_file: Option<PathBuf>,
        #[arg(long)]
        node_name: String,
        /// Where to write the node's kubeconfig.
        #[arg(long, default_value = "/etc/skiff/node.kubeconfig")]
        kubeconfig_out: PathBuf,
    },
    /// Remove the pinned maps and links: detaches every skiff program they hold.
    Cleanup {
        #[command(flatten)]
        pins: PinArgs,
    },
}

#[derive(Subcommand)]
enum LbCommand {
    /// Every frontend with its backends and counters, from the live maps.
    List {
        #[command(flatten)]
        pins: PinArgs,
    },
    /// Which backend a flow would hit, or why it would be refused.
    Explain {
        /// tcp or udp.
        proto: String,
        /// Client address, IP:PORT.
        src: SocketAddrV4,
        /// Destination (frontend) address, IP:PORT.
        dst: SocketAddrV4,
        #[command(flatten)]
        pins: PinArgs,
    },
}

#[derive(Subcommand)]
enum CtCommand {
    /// Conntrack entries, optionally filtered.
    List {
        /// Only this protocol (tcp or udp).
        #[arg(long)]
        proto: Option<String>,
        /// Only flows with this address at either end, before or after translation.
        #[arg(long)]
        addr: Option<Ipv4Addr>,
        /// Only flows of this service id (see `lb list`).
        #[arg(long)]
        service: Option<u32>,
        #[command(flatten)]
        pins: PinArgs,
    },
}

fn parse_proto(p: &str) -> anyhow::Result<u8> {
    match p.to_ascii_lowercase().as_str() {
        "tcp" => Ok(proto::TCP),
        "udp" => Ok(proto::UDP),
        other => bail!("unknown protocol `{other}`: use tcp or udp"),
    }
}

mod agent;

fn monotonic_ns() -> u64 {
    // SAFETY: clock_gettime writes into the timespec we own. CLOCK_MONOTONIC is the clock
    // of bpf_ktime_get_ns, which stamps conntrack entries.
    unsafe {
        let mut ts: libc::timespec = std::mem::zeroed();
        libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts);
        ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
    }
}

fn main() -> anyhow::Result<()> {
    // agent memory (issue 7): fixed malloc thresholds before anything allocates much.
    skiff_agent::malloc::configure();
    let cli = Cli::parse();
    match cli.command {
        Command::Check => {
            let dp = Datapath::load().context("checking the datapath")?;
            let (maps, programs) = dp.inventory();
            println!(
                "eBPF object: {} bytes, verifier accepted all programs",
                skiff_agent::datapath::object_size()
            );
            println!("programs: {}", programs.join(", "));
            println!("maps: {}", maps.join(", "));
            Ok(())
        }
        Command::Run(run) => {
            let RunArgs {
                interfaces,
                egress_interfaces,
                cgroup,
                snat_addr,
                pins,
                no_pin,
                sizes,
                interval_secs,
                duration_secs,
                kubeconfig,
                node_name,
                node_addresses,
                external_ip_cidrs,
                lb_algorithm,
                xdp_interfaces,
                xdp_generic,
                node_port_range,
                no_bind_protection,
                node,
                masquerade,
            } = *run;
            let default_maglev = match lb_algorithm.as_str() {
                "random" => false,
                "maglev" => true,
                other => bail!("--lb-algorithm {other:?}: use random or maglev"),
            };
            let (np_min, np_max) = node_port_range
                .split_once('-')
                .and_then(|(a, b)| Some((a.parse::<u16>().ok()?, b.parse::<u16>().ok()?)))
                .filter(|(a, b)| a <= b)
                .with_context(|| {
                    format!("--node-port-range {node_port_range:?} is not MIN-MAX like 30000-32767")
                })?;
            let mut external = Vec::new();
            for c in &external_ip_cidrs {
                match skiff_agent::translate::parse_cidr(c) {
                    Some(Some(r)) => external.push(r),
                    _ => bail!("--external-ip-cidr {c:?} is not an IPv4 CIDR like 203.0.113.0/24"),
                }
            }
            // The node side's flags are checked before the datapath is touched.
            let plan = match &kubeconfig {
                Some(_) => Some(agent::Plan::new(&node, &node_name)?),
                None => None,
            };
            // cluster: pod runtime wiring (issue 8)
            if plan.as_ref().is_some_and(agent::Plan::runs_pods) && cgroup.is_none() {
                bail!("running pods needs --cgroup (pods' cgroups go under the socket load-balancing attach point, e.g. /sys/fs/cgroup/unified); pass --no-run-pods if a kubelet runs them");
            }
            // end cluster
            let interfaces = if interfaces.is_empty() {
                let found = skiff_agent::uplink::interfaces_for(&node_addresses)
                    .map_err(anyhow::Error::msg)?;
                println!(
                    "node-facing interfaces (holding --node-address): {}",
                    found.join(", ")
                );
                found
            } else {
                interfaces
            };
            // --- masquerade (issue 7): checked before the datapath is touched ---
            let masq_plan = skiff_agent::masquerade::plan(
                &skiff_agent::masquerade::MasqueradeFlags {
                    mode: masquerade.masquerade.clone(),
                    interfaces: masquerade.masquerade_interfaces.clone(),
                    cluster_cidr: masquerade.cluster_cidr.clone(),
                    non_masquerade: masquerade.non_masquerade_cidrs.clone(),
                    service_cidrs: node.service_cidrs.clone(),
                    port_range: masquerade.masquerade_port_range.clone(),
                },
                kubeconfig.is_some() && node.pod_network == "direct",
                &interfaces,
                &node.bridge,
            )
            .map_err(anyhow::Error::msg)?;
            // --- end masquerade ---
            let config = DatapathConfig {
                map_sizes: MapSizes {
                    services: sizes.map_size_services,
                    slots: sizes.map_size_slots,
                    backends: sizes.map_size_backends,
                    sock_rev: sizes.map_size_sock_rev,
                    conntrack: sizes.map_size_conntrack,
                    maglev_tables: sizes.maglev_tables,
                },
                pin_dir: (!no_pin).then_some(pins.pin_dir),
            };
            let mut dp = Datapath::load_with(&config).context("loading the datapath")?;
            if let Some(addr) = snat_addr {
                dp.set_node_config(NodeConfig {
                    snat_addr: u32::from(addr).to_be(),
                    ..Default::default()
                })?;
            }
            for interface in &interfaces {
                dp.attach_tc_ingress(interface)?;
                println!("attached tc ingress to {interface}");
            }
            // cluster: externalTrafficPolicy=Local on tc (issue 8)
            // Traffic arriving on a node-facing tc interface (not the pod bridge, not the
            // VXLAN overlay) comes from outside this node, so externalTrafficPolicy=Local
            // applies to it, as on --xdp-interface: without this, a node with only tc
            // forwarded eTP=Local traffic to other nodes' endpoints (masqueraded) instead of
            // dropping it (kube-proxy's rule), and lost the client's address.
            for interface in interfaces
                .iter()
                .filter(|i| **i != node.bridge && i.as_str() != skiff_agent::netsetup::VXLAN_DEVICE)
            {
                dp.set_external_interface(interface)?;
                println!("{interface} is node-facing: externalTrafficPolicy=Local applies to traffic arriving on it");
            }
            // end cluster
            for interface in &egress_interfaces {
                dp.attach_tc_egress(interface)?;
                println!("attached tc egress to {interface}");
            }
            // --- masquerade (issue 7) ---
            let mut uplinks = Vec::new();
            for interface in masq_plan.iter().flat_map(|m| &m.interfaces) {
                let Some(address) = skiff_agent::datapath::interface_address(interface) else {
                    if masquerade.masquerade_interfaces.is_empty() {
                        // Chosen by default from -i: an interface without an address
                        // is no uplink (nothing could answer a masqueraded packet).
                        println!("masquerade: {interface} has no IPv4 address, skipped");
                        continue;
                    }
                    bail!(
                        "--masquerade-interface {interface} has no IPv4 address to masquerade \
                         as: give it one, name another uplink, or pass --masquerade off"
                    );
                };
                // Replies come back through the uplink's ingress; the rewrite is on egress.
                if !interfaces.contains(interface) {
                    dp.attach_tc_ingress(interface)?;
                    println!("attached tc ingress to {interface} (masquerade replies)");
                }
                if !egress_interfaces.contains(interface) {
                    dp.attach_tc_egress(interface)?;
                    println!("attached tc egress to {interface} (masquerade)");
                }
                uplinks.push((interface.as_str(), address));
            }
            if let Some(m) = &masq_plan {
                dp.set_non_masquerade(&m.non_masquerade)?;
                let settings: Vec<_> = uplinks
                    .iter()
                    .map(|(i, address)| {
                        (
                            *i,
                            skiff_agent::datapath::Masquerade {
                                address: *address,
                                sources: m.cluster_cidr,
                                ports: m.ports,
                            },
                        )
                    })
                    .collect();
                dp.set_masquerade(&settings)?;
                for (i, address) in &uplinks {
                    println!(
                        "masquerading {}/{} on {i} as {address}, ports {}-{}",
                        m.cluster_cidr.0, m.cluster_cidr.1, m.ports.0, m.ports.1
                    );
                }
            } else {
                // Off: uplinks an earlier agent configured in the pinned maps stop too.
                dp.set_masquerade(&[])?;
            }
            // --- end masquerade ---
            for interface in &xdp_interfaces {
                dp.set_external_interface(interface)?;
                dp.attach_xdp(interface, !xdp_generic)?;
                println!(
                    "attached XDP ({}) to {interface}",
                    if xdp_generic { "generic" } else { "native" }
                );
            }
            if let Some(cgroup) = &cgroup {
                dp.attach_sock_lb(cgroup)?;
                println!("attached socket load balancing to {}", cgroup.display());
                dp.attach_bind_protection(cgroup)?;
                dp.set_bind_protection(np_min, np_max, &node_addresses, !no_bind_protection)?;
                if !no_bind_protection {
                    println!("NodePort bind protection on for ports {np_min}-{np_max}");
                }
            }
            let mut maps = dp.service_maps()?;
            if let (Some(path), Some(plan)) = (kubeconfig, plan) {
                let config = skiff_agent::watch::SyncConfig {
                    node: skiff_agent::translate::NodeContext {
                        node_name,
                        node_addresses: node_addresses.clone(),
                        default_maglev,
                    },
                    external_ip_cidrs: external,
                    // agent sync scale (issue 7): set by agent::run from the other flags.
                    ..Default::default()
                };
                // cluster: pod runtime wiring (issue 8): the runtime reports through
                // tracing (RUST_LOG overrides the level).
                let _ = tracing_subscriber::fmt()
                    .with_env_filter(
                        tracing_subscriber::EnvFilter::try_from_default_env()
                            .unwrap_or_else(|_| "info".into()),
                    )
                    .with_writer(std::io::stderr)
                    .try_init();
                // end cluster
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()?;
                return rt.block_on(agent::run(agent::Agent {
                    kubeconfig: path,
                    sync: config,
                    dp,
                    maps,
                    node,
                    plan,
                    interval: Duration::from_secs(interval_secs.max(1)),
                    // cluster: pod runtime wiring (issue 8)
                    pod_cgroup_parent: cgroup.clone(),
                    // end cluster
                }));
            }
            let start = Instant::now();
            let interval = Duration::from_secs(interval_secs.max(1));
            loop {
                std::thread::sleep(interval);
                // Conntrack garbage collection is the agent's job (the datapath only
                // stamps entries): expired pairs go every interval.
                let collected = maps.gc_conntrack(monotonic_ns())?;
                print!("{}", dp.counters()?.render());
                println!("conntrack_gc_deleted {collected}");
                println!("--");
                if duration_secs.is_some_and(|d| start.elapsed() >= Duration::from_secs(d)) {
                    return Ok(());
                }
            }
        }
        Command::Lb {
            command: LbCommand::List { pins },
        } => {
            let inspector = Inspector::new(&pins.pin_dir);
            let snapshot = inspector.snapshot()?;
            let service_ids: Vec<u32> = snapshot.services.values().map(|v| v.service_id).collect();
            let backend_ids: Vec<u32> = snapshot.backends.keys().copied().collect();
            let sc: BTreeMap<_, _> = inspector
                .lb_counters(false, &service_ids)?
                .into_iter()
                .collect();
            let bc: BTreeMap<_, _> = inspector
                .lb_counters(true, &backend_ids)?
                .into_iter()
                .collect();
            // Not-ready backends are attributed to services by their live flows.
            let conntrack = inspector.conntrack()?;
            print!(
                "{}",
                debug::lb_list_with_flows(&snapshot, &sc, &bc, &conntrack)
            );
            Ok(())
        }
        Command::Lb {
            command:
                LbCommand::Explain {
                    proto,
                    src,
                    dst,
                    pins,
                },
        } => {
            let proto = parse_proto(&proto)?;
            let inspector = Inspector::new(&pins.pin_dir);
            let snapshot = inspector.snapshot()?;
            let key = skiff_datapath_abi::CtKey {
                saddr: u32::from(*src.ip()).to_be(),
                daddr: u32::from(*dst.ip()).to_be(),
                sport: src.port().to_be(),
                dport: dst.port().to_be(),
                proto,
                dir: 0,
                _pad: 0,
            };
            let existing = inspector.flow(&key)?;
            print!("{}", debug::explain(&snapshot, existing, proto, src, dst));
            Ok(())
        }
        Command::Ct {
            command:
                CtCommand::List {
                    proto,
                    addr,
                    service,
                    pins,
                },
        } => {
            let filter = debug::CtFilter {
                proto: proto.as_deref().map(parse_proto).transpose()?,
                addr,
                service_id: service,
            };
            let entries = Inspector::new(&pins.pin_dir).conntrack()?;
            print!("{}", debug::ct_list(&entries, &filter, monotonic_ns()));
            Ok(())
        }
        Command::Drops { pins } => {
            print!("{}", Inspector::new(&pins.pin_dir).counters()?.render());
            Ok(())
        }
        Command::Status {
            kubeconfig,
            node_name,
            healthz_address,
            metrics_address,
        } => {
            print!(
                "{}",
                agent::status(kubeconfig, &node_name, healthz_address, metrics_address)
            );
            Ok(())
        }
        Command::Join {
            server,
            token,
            token_file,
            node_name,
            kubeconfig_out,
        } => {
            let token = match (token, token_file) {
                (Some(t), _) => t,
                (None, Some(f)) => std::fs::read_to_string(&f)
                    .with_context(|| format!("reading the join token {}", f.display()))?,
                (None, None) => anyhow::bail!("--token or --token-file is required"),
            };
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let kubeconfig = rt.block_on(skiff_agent::join::join(&server, &token, &node_name))?;
            skiff_agent::join::write_kubeconfig(&kubeconfig_out, &kubeconfig)?;
            println!(
                "joined {server} as system:node:{node_name}; credential in {} (use: skiff-agent run --kubeconfig {} --node-name {node_name} ...)",
                kubeconfig_out.display(),
                kubeconfig_out.display()
            );
            Ok(())
        }
        Command::Cleanup { pins } => {
            if pins.pin_dir.exists() {
                std::fs::remove_dir_all(&pins.pin_dir)
                    .with_context(|| format!("removing {}", pins.pin_dir.display()))?;
                println!(
                    "removed {}: skiff's programs are detached",
                    pins.pin_dir.display()
                );
            } else {
                println!("nothing pinned at {}", pins.pin_dir.display());
            }
            Ok(())
        }
    }
}
