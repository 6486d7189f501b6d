//! (Binary-only module of `skiff-agent run --kubeconfig`.) Wires the library's pieces
//! into one process on one current-thread runtime: the service sync, the Node heartbeat,
//! the pod network, /healthz, the healthCheckNodePort servers and /metrics, until SIGTERM
//! or Ctrl-C. Everything runs on the main thread, so netlink and /proc/sys act on the
//! agent's own network namespace.
//!
//! On exit nothing is torn down: pinned maps and links keep translating, routes and the
//! bridge keep pods connected, and the Node stays registered (its Lease expires; the node
//! lifecycle controller takes it from there), so a restart is invisible to traffic.

use std::{
    cell::{Cell, RefCell},
    net::SocketAddr,
    path::PathBuf,
    time::Duration,
};

use anyhow::{bail, Context as _};
use skiff_agent::{
    datapath::{BpfServiceMaps, Datapath},
    health::{self, HealthCheckServers, ProxyHealth},
    metrics::{self, Metrics},
    netsetup::{self, NetConfig, NetSetup},
    node::{self, HostInfo, NodeConfig},
    reconcile::{MapUsage, Reconciler},
    watch::{self, SyncConfig, Synced},
};

use super::NodeArgs;

/// Gathers and renders `skiff-agent status`.
pub fn status(
    kubeconfig: Option<PathBuf>,
    node_name: &str,
    healthz: SocketAddr,
    metrics_addr: SocketAddr,
) -> String {
    use skiff_agent::status::{self as st, ApiView, NodeView};
    let healthz = st::http_get(healthz, "/healthz");
    let metrics = st::http_get(metrics_addr, "/metrics").and_then(|(code, body)| {
        if code == 200 {
            metrics::parse(&body)
        } else {
            Err(format!("{metrics_addr}/metrics answered HTTP {code}"))
        }
    });
    let routes = skiff_cni::nl::Netlink::open()
        .and_then(|mut nl| nl.main_routes())
        .map(|rs| {
            rs.into_iter()
                .filter(|r| r.protocol == netsetup::RTPROT_SKIFF)
                .map(|r| netsetup::show_route(r.dst, r.prefix, r.action))
                .collect()
        })
        .map_err(|e| e.to_string());
    let api = kubeconfig.map(|path| {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| e.to_string())?;
        rt.block_on(async {
            let kc = kube::config::Kubeconfig::read_from(&path)
                .map_err(|e| format!("reading {}: {e}", path.display()))?;
            let conf = kube::Config::from_custom_kubeconfig(kc, &Default::default())
                .await
                .map_err(|e| format!("using {}: {e}", path.display()))?;
            let server = conf.cluster_url.to_string();
            let client = kube::Client::try_from(conf).map_err(|e| e.to_string())?;
            let version = tokio::time::timeout(Duration::from_secs(5), client.apiserver_version())
                .await
                .map_err(|_| format!("{server}: no answer in 5 s"))?
                .map_err(|e| format!("{server}: {e}"))?;
            let node = if node_name.is_empty() {
                None
            } else {
                Some(
                    async {
                        let n = kube::Api::<k8s_openapi::api::core::v1::Node>::all(client.clone())
                            .get(node_name)
                            .await
                            .map_err(|e| format!("Node {node_name}: {e}"))?;
                        let lease =
                            kube::Api::<k8s_openapi::api::coordination::v1::Lease>::namespaced(
                                client.clone(),
                                node::LEASE_NAMESPACE,
                            )
                            .get_opt(node_name)
                            .await
                            .ok()
                            .flatten();
                        let now = std::time::SystemTime::now();
                        Ok(NodeView {
                            name: node_name.to_owned(),
                            ready: n
                                .status
                                .as_ref()
                                .and_then(|s| s.conditions.as_ref())
                                .and_then(|cs| cs.iter().find(|c| c.type_ == "Ready"))
                                .map(|c| (c.status.clone(), c.reason.clone().unwrap_or_default())),
                            pod_cidr: n.spec.as_ref().and_then(|s| s.pod_cidr.clone()),
                            lease_age: lease.and_then(|l| l.spec?.renew_time).and_then(|t| {
                                now.duration_since(std::time::SystemTime::from(t.0)).ok()
                            }),
                        })
                    }
                    .await,
                )
            };
            Ok(ApiView {
                server,
                version: version.git_version,
                node,
            })
        })
    });
    st::render(&st::Inputs {
        healthz,
        metrics,
        api,
        routes,
        now: std::time::SystemTime::now(),
    })
}

pub struct Agent {
    pub kubeconfig: PathBuf,
    pub sync: SyncConfig,
    pub dp: Datapath,
    pub maps: BpfServiceMaps,
    pub node: NodeArgs,
    pub plan: Plan,
    pub interval: Duration,
    // cluster: pod runtime wiring (issue 8)
    /// `--cgroup`: pods' cgroups go under the socket-LB attach point.
    pub pod_cgroup_parent: Option<PathBuf>,
    // end cluster
}

fn cidrs(flag: &str, values: &[String]) -> anyhow::Result<Vec<netsetup::Cidr>> {
    values
        .iter()
        .filter(|v| !v.is_empty())
        .map(|v| match skiff_agent::translate::parse_cidr(v) {
            Some(Some(c)) => Ok(c),
            _ => bail!("--{flag} {v:?} is not an IPv4 CIDR like 10.43.0.0/16"),
        })
        .collect()
}

fn bind_flag(flag: &str, value: &str) -> anyhow::Result<Option<SocketAddr>> {
    if value.is_empty() {
        return Ok(None);
    }
    value
        .parse()
        .map(Some)
        .with_context(|| format!("--{flag} {value:?} is not an address like 0.0.0.0:10256"))
}

/// The node-side flags, validated (before anything on the system is touched).
pub struct Plan {
    pod_network: bool,
    tunnel: Option<netsetup::VxlanConfig>,
    unreachable: Vec<netsetup::Cidr>,
    healthz_addr: Option<SocketAddr>,
    metrics_addr: Option<SocketAddr>,
    // dns: cluster DNS (issue 8)
    dns_addr: Option<SocketAddr>,
    // end dns
    // cluster: pod runtime wiring (issue 8)
    run_pods: bool,
    // end cluster
}

impl Plan {
    // cluster: pod runtime wiring (issue 8)
    /// Whether this agent runs the node's pods.
    pub fn runs_pods(&self) -> bool {
        self.run_pods
    }
    // end cluster

    pub fn new(args: &NodeArgs, node_name: &str) -> anyhow::Result<Plan> {
        let pod_network = match args.pod_network.as_str() {
            "direct" => true,
            "none" => false,
            other => bail!("--pod-network {other:?}: use direct or none"),
        };
        let tunnel = match args.tunnel.as_str() {
            "none" => None,
            "vxlan" if (1..=0xff_ffff).contains(&args.vxlan_vni) => Some(netsetup::VxlanConfig {
                vni: args.vxlan_vni,
                port: args.vxlan_port,
            }),
            "vxlan" => bail!(
                "--vxlan-vni {}: a VNI is 24 bits, 1..=16777215",
                args.vxlan_vni
            ),
            other => bail!("--tunnel {other:?}: use none (direct routing) or vxlan"),
        };
        let mut unreachable = cidrs("service-cidr", &args.service_cidrs)?;
        unreachable.extend(cidrs("lb-pool", &args.lb_pools)?);
        if (!args.no_register_node || pod_network) && node_name.is_empty() {
            bail!("--node-name is required to register the Node and set up the pod network (or pass --no-register-node --pod-network none)");
        }
        // cluster: pod runtime wiring (issue 8): pods need the pod network this agent
        // sets up (its conflist); with `--pod-network none` another CNI and a kubelet
        // own them.
        let run_pods = pod_network && !args.no_run_pods;
        // end cluster
        Ok(Plan {
            pod_network,
            tunnel,
            unreachable,
            healthz_addr: bind_flag("healthz-bind-address", &args.healthz_bind_address)?,
            metrics_addr: bind_flag("metrics-bind-address", &args.metrics_bind_address)?,
            // dns: cluster DNS (issue 8)
            dns_addr: dns_plan(args)?,
            // end dns
            // cluster: pod runtime wiring (issue 8)
            run_pods,
            // end cluster
        })
    }
}

// dns: cluster DNS (issue 8)
fn dns_plan(args: &NodeArgs) -> anyhow::Result<Option<SocketAddr>> {
    let addr = bind_flag("dns-bind-address", &args.dns_bind_address)?;
    let d = args.cluster_domain.trim_end_matches('.');
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    if d.is_empty() || !d.split('.').all(label_ok) {
        bail!(
            "--cluster-domain {:?} is not a DNS domain like cluster.local",
            args.cluster_domain
        );
    }
    Ok(addr)
}

/// Starts the node-local DNS server on `addr`, forwarding to the nameservers of
/// `--dns-resolv-conf` (less the cluster DNS address itself, which would loop).
async fn start_dns(
    addr: SocketAddr,
    args: &NodeArgs,
    zone: skiff_dns::ZoneHandle,
) -> anyhow::Result<skiff_dns::DnsServer> {
    let upstreams: Vec<SocketAddr> = match std::fs::read_to_string(&args.dns_resolv_conf) {
        Ok(text) => skiff_dns::forward::parse_resolv_conf(&text)
            .into_iter()
            .filter(|ip| *ip != std::net::IpAddr::V4(args.cluster_dns) && *ip != addr.ip())
            .map(|ip| SocketAddr::new(ip, 53))
            .collect(),
        Err(e) => {
            println!(
                "cluster DNS: reading {}: {e}; names outside {} get SERVFAIL",
                args.dns_resolv_conf.display(),
                args.cluster_domain
            );
            Vec::new()
        }
    };
    let server = skiff_dns::DnsServer::bind(
        addr,
        zone,
        skiff_dns::Config {
            domain: args.cluster_domain.clone(),
            forwarder: skiff_dns::Forwarder::new(upstreams.clone()),
        },
    )
    .await
    .with_context(|| format!("binding the cluster DNS server to {addr} (--dns-bind-address)"))?;
    println!(
        "serving cluster DNS for {} on {addr} (UDP and TCP), forwarding other names to {upstreams:?}",
        args.cluster_domain
    );
    Ok(server)
}
// end dns

pub async fn run(a: Agent) -> anyhow::Result<()> {
    let Agent {
        kubeconfig,
        sync,
        dp,
        mut maps,
        node: args,
        plan,
        interval,
        // cluster: pod runtime wiring (issue 8)
        pod_cgroup_parent,
        // end cluster
    } = a;
    let Plan {
        pod_network,
        tunnel,
        unreachable,
        healthz_addr,
        metrics_addr,
        // dns: cluster DNS (issue 8)
        dns_addr,
        // end dns
        // cluster: pod runtime wiring (issue 8)
        run_pods,
        // end cluster
    } = plan;
    let node_name = sync.node.node_name.clone();

    let kc = kube::config::Kubeconfig::read_from(&kubeconfig)
        .with_context(|| format!("reading kubeconfig {}", kubeconfig.display()))?;
    let kconf = kube::Config::from_custom_kubeconfig(kc, &Default::default())
        .await
        .with_context(|| format!("using kubeconfig {}", kubeconfig.display()))?;
    // kubelet API: client certificates must chain to the cluster CA of the kubeconfig.
    let cluster_ca = kconf.root_cert.clone().unwrap_or_default();
    let client = skiff_agent::apiclient::client(kconf)?;

    // --- kubelet API (kubectl logs) ---
    // Not fatal: without it everything else works, `kubectl logs` answers with the
    // reason, and the Node does not advertise a port nobody serves.
    let mut kubelet_port =
        (args.kubelet_port != 0 && !node_name.is_empty()).then_some(args.kubelet_port);
    let mut _kubelet_api = None;
    if let Some(port) = kubelet_port {
        let api = skiff_agent::kubelet_api::KubeletApi {
            client: client.clone(),
            node_name: node_name.clone(),
            log_dir: args.pod_log_dir.clone(),
            client_ca: cluster_ca,
            addresses: sync
                .node
                .node_addresses
                .iter()
                .map(|a| std::net::IpAddr::V4(*a))
                .collect(),
        };
        match skiff_agent::kubelet_api::serve(SocketAddr::new(args.kubelet_address, port), api)
            .await
        {
            Ok((addr, task)) => {
                println!("serving the kubelet API (container logs) on https://{addr}");
                _kubelet_api = Some(AbortOnDrop(task));
            }
            Err(e) => {
                println!("kubelet API not started (kubectl logs will not reach this node): {e}");
                kubelet_port = None;
            }
        }
    }
    // --- end kubelet API ---

    let proxy_health = ProxyHealth::new(Duration::from_secs(args.health_timeout_secs));
    let metrics = Metrics::new();
    if let Some(addr) = healthz_addr {
        let l = health::bind(addr).context("starting /healthz")?;
        tokio::spawn(health::serve(
            l,
            health::healthz_router(proxy_health.clone()),
        ));
        println!("serving /healthz on {addr}");
    }
    if let Some(addr) = metrics_addr {
        let l = health::bind(addr).context("starting /metrics")?;
        tokio::spawn(health::serve(l, metrics::router(metrics.clone())));
        println!("serving /metrics on {addr}");
    }

    // dns: cluster DNS (issue 8). Answers SERVFAIL inside the zone until the first
    // complete sync publishes it.
    let dns_zone = skiff_dns::ZoneHandle::new();
    if let Some(addr) = dns_addr {
        let server = start_dns(addr, &args, dns_zone.clone()).await?;
        tokio::spawn(async move {
            if let Err(e) = server.run().await {
                println!("cluster DNS stopped: {e}");
            }
        });
    }
    let dns_serial = Cell::new(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_secs() as u32),
    );
    // end dns

    let mut setup = if pod_network {
        let mut cfg = NetConfig::new(&node_name);
        cfg.bridge = args.bridge.clone();
        cfg.mtu = args.mtu;
        cfg.cni_conf_dir = args.cni_conf_dir.clone();
        cfg.cni_bin_dir = args.cni_bin_dir.clone();
        cfg.cni_source = Some(match &args.cni_plugin {
            Some(p) => p.clone(),
            None => std::env::current_exe()
                .context("finding the skiff-agent binary")?
                .with_file_name(netsetup::CNI_BINARY),
        });
        cfg.unreachable = unreachable;
        cfg.tunnel = tunnel;
        // cluster: pod runtime wiring (issue 8)
        cfg.ipam_data_dir = args.cni_ipam_dir.clone();
        // end cluster
        let mut s = NetSetup::new(cfg).context("setting up the pod network")?;
        s.prepare().context("installing skiff-cni")?;
        Some(s)
    } else {
        None
    };

    let info = if args.no_register_node {
        None
    } else {
        Some(HostInfo::gather(std::path::Path::new("/")).context("reading the host")?)
    };
    let health_ref = &proxy_health;
    let node_addresses = sync.node.node_addresses.clone();
    let node_task = async {
        let Some(info) = info else {
            return std::future::pending::<()>().await;
        };
        let mut cfg = NodeConfig::new(&node_name, node_addresses);
        cfg.lease_renew_period = Duration::from_secs(args.node_lease_renew_secs.max(1));
        cfg.status_report_period = Duration::from_secs(args.node_status_report_secs.max(1));
        // dns: cluster DNS (issue 8)
        cfg.annotations.insert(
            skiff_dns::NODE_ANNOTATION.to_owned(),
            dns_addr.map(|a| a.port().to_string()),
        );
        // end dns
        cfg.kubelet_port = kubelet_port; // kubelet API
        let mut registered = false;
        node::run(client.clone(), cfg, info, |hb| {
            metrics.observe_heartbeat(hb.errors.is_empty());
            if let Some(eligible) = hb.eligible {
                health_ref.set_node_eligible(eligible);
            }
            if hb.errors.is_empty() && !registered {
                registered = true;
                println!(
                    "Node {node_name} registered, podCIDR {}",
                    hb.pod_cidr.as_deref().unwrap_or("(not assigned yet)")
                );
            }
            for e in &hb.errors {
                println!("node heartbeat: {e}");
            }
        })
        .await;
    };

    // cluster: pod runtime wiring (issue 8)
    // The runtime starts once the conflist names this node's pod range (the Node has its
    // podCIDR and the pod network applied it); until then a pod could not get an address.
    let conflist_path = args.cni_conf_dir.join(netsetup::CONFLIST_NAME);
    let (conflist_tx, conflist_rx) = tokio::sync::watch::channel::<Option<serde_json::Value>>(None);
    let publish_conflist = || {
        if run_pods {
            if let Some(net) = pods::ready_conflist(&conflist_path) {
                conflist_tx.send_if_modified(|have| {
                    let changed = have.as_ref() != Some(&net);
                    *have = Some(net);
                    changed
                });
            }
        }
    };
    let (pods_stop_tx, pods_stop_rx) = tokio::sync::watch::channel(false);
    let pods_task = pods::run(
        run_pods.then(|| pods::PodsConfig {
            client: client.clone(),
            node_name: node_name.clone(),
            cni_bin_dir: args.cni_bin_dir.clone(),
            cgroup_parent: pod_cgroup_parent.clone(),
            root_dir: args.root_dir.clone(),
            log_dir: args.pod_log_dir.clone(),
            host_ip: sync.node.node_addresses.first().copied().map(Into::into),
            pod_manifest_path: (!args.pod_manifest_path.is_empty())
                .then(|| PathBuf::from(&args.pod_manifest_path)),
            // Pods' resolv.conf: the cluster DNS Service and domain (dns flags).
            dns: skiff_runtime::dns::DnsConfig {
                cluster_dns: vec![args.cluster_dns.into()],
                cluster_domain: args.cluster_domain.clone(),
                resolv_conf: args.dns_resolv_conf.clone(),
            },
        }),
        conflist_rx,
        pods_stop_rx,
    );
    tokio::pin!(pods_task);
    let mut pods_done = !run_pods;
    // end cluster

    let net_task = async {
        let Some(setup) = setup.as_mut() else {
            return std::future::pending::<()>().await;
        };
        netsetup::run(
            client.clone(),
            setup,
            netsetup::NetHooks {
                on_apply: |a: &netsetup::Applied, eligible: bool| {
                    health_ref.set_node_eligible(eligible);
                    for r in &a.routes_added {
                        println!("route {r}");
                    }
                    for r in &a.routes_deleted {
                        println!("route deleted: {r}");
                    }
                    for e in a.errors.iter().chain(&a.diagnostics) {
                        println!("pod network: {e}");
                    }
                    // cluster: pod runtime wiring (issue 8)
                    publish_conflist();
                    // end cluster
                },
                on_error: |e: &str| {
                    metrics.observe_watch_error();
                    println!("pod network: {e} (retrying)")
                },
            },
        )
        .await;
    };

    // The sync's hooks share the datapath (bind exemptions on sync, counters on tick).
    let dp = RefCell::new(dp);
    let usage = Cell::new(MapUsage::default());
    // No check before the first sync: until then the maps hold what an earlier agent
    // wrote and the reconciler has not taken it over yet.
    let synced = Cell::new(false);
    let check_every = Duration::from_secs(args.consistency_check_secs.max(1));
    let last_check = Cell::new(std::time::Instant::now());
    let hc_servers = RefCell::new(HealthCheckServers::new(
        args.health_check_addresses.clone(),
        proxy_health.clone(),
    ));
    let checks = RefCell::new(Vec::new());
    let hc_failed = Cell::new(false);
    let mut reconciler = Reconciler::new();
    // Take over what an earlier agent programmed (pinned maps): the first complete sync
    // then only changes what changed meanwhile.
    let snapshot = skiff_agent::lbmap::ServiceMaps::snapshot(&maps)?;
    println!(
        "watching Services and EndpointSlices through {}",
        kubeconfig.display()
    );
    // agent sync scale (issue 7): the DNS zone needs the objects' DNS fields; every
    // Service is rebuilt at the consistency check's cadence (the incremental path's check).
    let sync = SyncConfig {
        keep_dns_objects: dns_addr.is_some(),
        full_resync: check_every,
        ..sync
    };
    // end agent sync scale
    let sync_task = watch::run(
        client.clone(),
        sync,
        &mut maps,
        &mut reconciler,
        Some(snapshot),
        watch::Hooks {
            on_sync: |s: &Synced| {
                let hooks_started = std::time::Instant::now(); // agent sync scale (issue 7)
                println!(
                    "synced {} services, {} slices in {:?} ({}): {} map writes, {} errors, {} diagnostics",
                    s.services,
                    s.slices,
                    s.duration,
                    // agent sync scale (issue 7)
                    if s.full {
                        "full".to_owned()
                    } else {
                        format!("{} changed", s.changed)
                    },
                    // end agent sync scale
                    s.report.writes,
                    s.report.errors.len(),
                    s.diagnostics.len()
                );
                for (name, e) in &s.report.errors {
                    println!("  error {name}: {e}");
                }
                for d in &s.diagnostics {
                    println!("  {d}");
                }
                usage.set(s.usage);
                synced.set(true);
                // dns: cluster DNS (issue 8)
                // agent sync scale (issue 7): only when something the zone reads changed.
                if dns_addr.is_some() && s.dns_changed {
                    dns_serial.set(dns_serial.get().wrapping_add(1));
                    dns_zone.set(skiff_dns::Zone::build(
                        &args.cluster_domain,
                        &s.service_objects,
                        &s.slice_objects,
                        dns_serial.get(),
                    ));
                }
                // end dns
                metrics.observe_sync(
                    s.duration,
                    s.report.errors.len(),
                    &s.programming_latencies,
                    s.service_ids.as_deref(),
                );
                // agent sync scale (issue 7)
                metrics.observe_last_sync(skiff_agent::metrics::LastSync {
                    duration: s.duration,
                    services_changed: s.changed,
                    map_writes: s.report.writes,
                    full: s.full,
                });
                // end agent sync scale
                // A failed write leaves the change pending: /healthz turns 503 if it
                // stays that way past the timeout.
                if s.report.errors.is_empty() {
                    proxy_health.updated();
                } else {
                    proxy_health.queued();
                }
                let ports: Vec<u16> = s.health_checks.iter().map(|c| c.port).collect();
                if let Err(e) = dp.borrow_mut().set_bind_exemptions(&ports) {
                    println!("  health check ports: {e}");
                }
                *checks.borrow_mut() = s.health_checks.clone();
                let errors = hc_servers.borrow_mut().update(&s.health_checks);
                for e in &errors {
                    println!("  {e}");
                }
                hc_failed.set(!errors.is_empty());
                // agent sync scale (issue 7): what the sync's consumers cost after the
                // maps were programmed (the next change waits for it).
                tracing::debug!(
                    target: "skiff_agent::sync",
                    dns_rebuilt = dns_addr.is_some() && s.dns_changed,
                    hooks_us = hooks_started.elapsed().as_micros() as u64,
                    "sync consumers done"
                );
                // end agent sync scale
            },
            on_error: |e: &str| {
                metrics.observe_watch_error();
                println!("watch error (retrying): {e}")
            },
            tick: interval,
            on_tick: |m: &mut BpfServiceMaps| {
                let tick_started = std::time::Instant::now(); // agent sync scale (issue 7)
                                                              // A health check port that could not be bound (still held by a process
                                                              // that is going away) is retried every tick, not only at the next change.
                if hc_failed.get() {
                    let errors = hc_servers.borrow_mut().update(&checks.borrow());
                    if errors.is_empty() {
                        println!("health check node ports all bound now");
                    }
                    hc_failed.set(!errors.is_empty());
                }
                let ids = metrics.service_ids();
                match metrics::sample_datapath(
                    &dp.borrow(),
                    m,
                    usage.get(),
                    &ids,
                    super::monotonic_ns(),
                ) {
                    Ok((sample, collected)) => {
                        metrics.set_datapath(sample);
                        if collected > 0 {
                            println!("conntrack_gc_deleted {collected}");
                        }
                    }
                    Err(e) => println!("sampling the datapath: {e}"),
                }
                if synced.get() && last_check.get().elapsed() >= check_every {
                    last_check.set(std::time::Instant::now());
                    match skiff_agent::lbmap::ServiceMaps::snapshot(m) {
                        Ok(snap) => {
                            let problems = metrics::consistency(&snap, usage.get());
                            for (check, n) in &problems {
                                if *n > 0 {
                                    println!("consistency check {check}: {n} problems");
                                }
                            }
                            metrics.set_consistency(problems);
                        }
                        Err(e) => println!("consistency check: reading the maps: {e}"),
                    }
                }
                // agent sync scale (issue 7): a change arriving meanwhile waits for this.
                tracing::debug!(
                    target: "skiff_agent::sync",
                    tick_us = tick_started.elapsed().as_micros() as u64,
                    "tick done"
                );
                // end agent sync scale
            },
            on_pending: || proxy_health.queued(),
        },
    );

    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing the SIGTERM handler")?;
    tokio::select! {
        _ = sync_task => {}
        _ = node_task => {}
        _ = net_task => {}
        // cluster: pod runtime wiring (issue 8)
        r = &mut pods_task, if !pods_done => {
            pods_done = true;
            r.context("the pod runtime stopped")?;
        }
        // end cluster
        _ = term.recv() => println!("SIGTERM: exiting; maps, routes and the Node stay"),
        _ = tokio::signal::ctrl_c() => println!("interrupted: exiting; maps, routes and the Node stay"),
    }
    // cluster: pod runtime wiring (issue 8)
    // SIGTERM drains: the runtime stops this node's pods and releases their networks; the
    // Pod objects stay. An agent that dies without it (kill -9, a crash) leaves the pods
    // running, and the next agent adopts them (skiff-runtime's adopt).
    if !pods_done {
        println!("stopping this node's pods");
        let _ = pods_stop_tx.send(true);
        if let Err(e) = pods_task.await {
            println!("stopping pods: {e:#}");
        }
    }
    // end cluster
    Ok(())
}

// cluster: pod runtime wiring (issue 8)
/// Running the node's pods with skiff-runtime on the pod network this agent set up.
mod pods {
    use std::{
        net::IpAddr,
        path::{Path, PathBuf},
    };

    use anyhow::Context as _;
    use skiff_runtime::{backoff::BackoffConfig, cni::Cni, logs::LogLimits, Config, Runtime};
    use tokio::sync::watch;

    pub struct PodsConfig {
        pub client: kube::Client,
        pub node_name: String,
        pub cni_bin_dir: PathBuf,
        pub cgroup_parent: Option<PathBuf>,
        pub root_dir: PathBuf,
        pub log_dir: PathBuf,
        pub host_ip: Option<IpAddr>,
        pub dns: skiff_runtime::dns::DnsConfig,
        pub pod_manifest_path: Option<PathBuf>,
    }

    /// The conflist at `path` if it names a pod range (the agent writes one without
    /// ranges until the Node has a podCIDR; skiff-cni's STATUS calls that not ready).
    pub fn ready_conflist(path: &Path) -> Option<serde_json::Value> {
        let net: serde_json::Value = serde_json::from_slice(&std::fs::read(path).ok()?).ok()?;
        let has_range = net["plugins"].as_array()?.iter().any(|p| {
            p["ipam"]["ranges"]
                .as_array()
                .is_some_and(|r| !r.is_empty())
        });
        has_range.then_some(net)
    }

    /// Waits for the conflist, then runs the pods until `stop` turns true. `None`: pods
    /// are not this agent's job (`--no-run-pods`, `--pod-network none`).
    pub async fn run(
        cfg: Option<PodsConfig>,
        mut conflist: watch::Receiver<Option<serde_json::Value>>,
        mut stop: watch::Receiver<bool>,
    ) -> anyhow::Result<()> {
        let Some(cfg) = cfg else {
            return std::future::pending().await;
        };
        let cgroup_parent = cfg.cgroup_parent.context(
            "running pods needs --cgroup (the socket load-balancing attach point pods' cgroups go under), or pass --no-run-pods",
        )?;
        let network = tokio::select! {
            n = conflist.wait_for(Option::is_some) => match n {
                Ok(n) => n.clone().expect("waited for Some"),
                Err(_) => return Ok(()),
            },
            _ = stop.wait_for(|s| *s) => return Ok(()),
        };
        println!(
            "running the pods of Node {} (state {}, logs {}, cgroups under {})",
            cfg.node_name,
            cfg.root_dir.display(),
            cfg.log_dir.display(),
            cgroup_parent.display()
        );
        let config = Config {
            cni: Cni {
                plugin_dirs: vec![cfg.cni_bin_dir],
                network,
                ifname: "eth0".into(),
                // Plugins run in the agent's own namespace, where skiff0 is.
                host_netns: None,
            },
            cgroup_parent,
            state_dir: cfg.root_dir,
            log_dir: cfg.log_dir,
            log_limits: LogLimits::default(),
            backoff: BackoffConfig::default(),
            host_ip: cfg.host_ip,
            dns: cfg.dns,
        };
        let options = skiff_runtime::worker::RunOptions {
            pod_manifest_path: cfg.pod_manifest_path,
            ..Default::default()
        };
        Runtime::run_with(cfg.client, &cfg.node_name, config, options, async move {
            let _ = stop.wait_for(|s| *s).await;
        })
        .await
        .context("running pods")
    }
}
// end cluster
/// Stops a spawned server when the agent returns (kubelet API).
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
