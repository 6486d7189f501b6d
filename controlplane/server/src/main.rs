//! `skiff-controlplane`: the control plane binary. `server` runs the Kubernetes API server
//! and, unless `--disable-controllers`, the controllers in the same process (k3s style),
//! and unless `--disable-scheduler` the scheduler (`scheduler --kubeconfig` runs it alone);
//! they reach the API through a loopback kube-rs client with the admin credential, never
//! the store, so `controllers --kubeconfig` runs exactly the same code as its own process.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand, ValueEnum};
use skiff_store::Store;

#[derive(Parser)]
#[command(
    name = "skiff-controlplane",
    version,
    about = "skiff's lean Kubernetes control plane"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq)]
enum StoreKind {
    Redb,
    Etcd,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the Kubernetes API over HTTPS.
    Server {
        /// Where the store (redb), certificates and admin.kubeconfig live.
        #[arg(long)]
        data_dir: PathBuf,
        #[arg(long, default_value = "127.0.0.1:6443")]
        listen: SocketAddr,
        /// Extra IP addresses for the serving certificate (repeat or comma-separate).
        #[arg(long, value_delimiter = ',')]
        advertise_address: Vec<IpAddr>,
        #[arg(long, value_enum, default_value = "redb")]
        store: StoreKind,
        /// etcd endpoints for `--store etcd` (comma-separated URLs).
        #[arg(long, value_delimiter = ',')]
        etcd_endpoints: Vec<String>,
        // cp helper: redb cache bound
        /// MiB of store file pages `--store redb` keeps in memory (reads beyond it come from
        /// the kernel's page cache; LIST and WATCH are served by the watch cache anyway).
        #[arg(long, default_value_t = (skiff_store::REDB_DEFAULT_CACHE_SIZE / (1024 * 1024)) as u64,
              value_parser = clap::value_parser!(u64).range(1..=65536))]
        redb_cache_size: u64,
        // end cp helper
        // cp helper: watch history by age
        /// Seconds of changes the watch cache keeps (watches resuming within them are served
        /// from memory); upstream's eventFreshDuration is 75 s.
        #[arg(long, default_value_t = 75, value_parser = clap::value_parser!(u64).range(1..=3600))]
        watch_cache_fresh_seconds: u64,
        /// MiB all watch cache histories may take together (object versions only the
        /// history holds); over it the oldest changes are forgotten early, with a warning.
        #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u64).range(1..=65536))]
        watch_cache_budget: u64,
        /// Seconds of history the redb store keeps through automatic compaction (at least;
        /// upstream compacts etcd every 5 minutes). The watch cache relies on it.
        #[arg(long, default_value_t = 300)]
        redb_retention_seconds: u64,
        /// MiB of replaced versions the redb store's history may hold before automatic
        /// compaction drops them even when younger than --redb-retention-seconds (0: no
        /// size bound; the last 10 000 revisions are kept regardless).
        #[arg(long, default_value_t = 64)]
        redb_max_retained_mib: u64,
        // end cp helper
        /// The Service ClusterIP range (IPv4).
        #[arg(long, default_value = "10.43.0.0/16")]
        service_cidr: skiff_apiserver::alloc::ServiceCidr,
        /// The NodePort range, also used for healthCheckNodePort (upstream's flag).
        #[arg(long, default_value = "30000-32767")]
        service_node_port_range: skiff_apiserver::alloc::NodePortRange,
        /// Seconds a watch without timeoutSeconds lasts (randomised up to twice this), as
        /// kube-apiserver's flag of the same name.
        #[arg(long, default_value_t = 1800)]
        min_request_timeout: u64,
        /// Serve the API only; run no controllers in this process.
        #[arg(long)]
        disable_controllers: bool,
        #[command(flatten)]
        controllers: ControllerArgs,
        // scheduler helper
        /// Run no scheduler in this process.
        #[arg(long)]
        disable_scheduler: bool,
        #[command(flatten)]
        scheduler: SchedulerArgs,
        // end scheduler helper
        // cp helper: leader election
        /// Run the controllers/scheduler only while holding their Lease in kube-system
        /// (`kube-controller-manager` / `kube-scheduler`), as upstream's --leader-elect.
        #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
        leader_elect: bool,
        // end cp helper
    },
    /// Run the controllers alone against an API server (any conformant one).
    Controllers {
        #[arg(long)]
        kubeconfig: PathBuf,
        #[command(flatten)]
        controllers: ControllerArgs,
        // cp helper: leader election
        /// Run the controllers/scheduler only while holding their Lease in kube-system
        /// (`kube-controller-manager` / `kube-scheduler`), as upstream's --leader-elect.
        #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
        leader_elect: bool,
        // end cp helper
    },
    // scheduler helper
    /// Run the scheduler alone against an API server (any conformant one).
    Scheduler {
        #[arg(long)]
        kubeconfig: PathBuf,
        #[command(flatten)]
        scheduler: SchedulerArgs,
        // cp helper: leader election
        /// Run the controllers/scheduler only while holding their Lease in kube-system
        /// (`kube-controller-manager` / `kube-scheduler`), as upstream's --leader-elect.
        #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
        leader_elect: bool,
        // end cp helper
    },
    // end scheduler helper
}

// scheduler helper
/// Scheduler settings, shared by `server` and `scheduler`.
#[derive(clap::Args, Clone)]
struct SchedulerArgs {
    /// Percentage of nodes to find feasible before scoring (1-100); unset: upstream's
    /// adaptive default (50% - nodes/125, at least 5% and 100 nodes).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=100))]
    percentage_of_nodes_to_score: Option<u32>,
}

impl SchedulerArgs {
    fn config(&self) -> skiff_scheduler::Config {
        skiff_scheduler::Config {
            percentage_of_nodes_to_score: self.percentage_of_nodes_to_score,
            ..Default::default()
        }
    }
}
// end scheduler helper

/// Controller settings, shared by `server` and `controllers`.
#[derive(clap::Args, Clone)]
struct ControllerArgs {
    // --- endpoints helper: service-facing controllers ---
    /// Endpoints per EndpointSlice (1..1000), as kube-controller-manager's flag.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=1000))]
    max_endpoints_per_slice: u32,
    /// Services whose endpoints are synced in parallel.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..))]
    concurrent_service_endpoint_syncs: u32,
    /// LoadBalancer IPs: CIDRs (network and broadcast addresses left out) or
    /// `a.b.c.d-a.b.c.e` ranges; repeat or comma-separate. None: LoadBalancer Services
    /// get the nodes' addresses (k3s ServiceLB style).
    #[arg(long, value_delimiter = ',', value_parser = parse_lb_range)]
    lb_pool: Vec<skiff_controllers::cidr::Ipv4Range>,
    /// The pod network Nodes' podCIDRs are cut from.
    #[arg(long, default_value = "10.42.0.0/16")]
    cluster_cidr: skiff_controllers::cidr::Ipv4Cidr,
    /// Prefix length of each Node's podCIDR.
    #[arg(long, default_value_t = 24)]
    node_cidr_mask_size: u8,
    // --- end endpoints helper ---
    // workloads
    /// Base delay before a Job replaces a failed pod, in seconds; doubles per failure up
    /// to 600 (upstream's pod-failure backoff, 10 s).
    #[arg(long, default_value = "10", value_name = "SECONDS", value_parser = parse_seconds)]
    job_pod_failure_backoff: std::time::Duration,
    // scheduler helper
    /// No node heartbeat for this long marks the node Unknown and taints it unreachable
    /// (Go duration: 40s, 500ms, 5m).
    #[arg(long, default_value = "40s", value_parser = skiff_controllers::nodelifecycle::parse_duration)]
    node_monitor_grace_period: std::time::Duration,
    /// How long pods without a toleration stay on an unreachable/not-ready node.
    #[arg(long, default_value = "5m", value_parser = skiff_controllers::nodelifecycle::parse_duration)]
    pod_eviction_timeout: std::time::Duration,
    // end scheduler helper
    // dns: cluster DNS (issue 8)
    /// ClusterIP of the kube-system/kube-dns Service (pods' nameserver), or `none` for no
    /// cluster DNS objects. Default: the 10th address of --service-cidr (10.43.0.10), as
    /// kubeadm and k3s choose; `controllers` (no --service-cidr) defaults to 10.43.0.10.
    #[arg(long, value_parser = parse_cluster_dns)]
    cluster_dns: Option<ClusterDns>,
    // end dns
    // cp helper: PodGC
    /// Terminated pods (Succeeded/Failed) kept before the oldest are deleted; 0 disables
    /// (kube-controller-manager's flag).
    #[arg(long, default_value_t = 12500)]
    terminated_pod_gc_threshold: usize,
    /// How long a Node must be gone before its pods are deleted as orphans (upstream's
    /// fixed 40 s quarantine; a knob for tests).
    #[arg(long, default_value = "40s", value_parser = skiff_controllers::nodelifecycle::parse_duration)]
    pod_gc_orphan_quarantine: std::time::Duration,
    /// How often the pod GC looks (upstream 20 s).
    #[arg(long, default_value = "20s", value_parser = skiff_controllers::nodelifecycle::parse_duration)]
    pod_gc_period: std::time::Duration,
    // end cp helper
}

// dns: cluster DNS (issue 8)
/// `--cluster-dns`: an IPv4 address or `none`.
#[derive(Clone, Copy, Debug)]
struct ClusterDns(Option<std::net::Ipv4Addr>);

fn parse_cluster_dns(s: &str) -> Result<ClusterDns, String> {
    if s.eq_ignore_ascii_case("none") {
        return Ok(ClusterDns(None));
    }
    s.parse()
        .map(|ip| ClusterDns(Some(ip)))
        .map_err(|_| format!("{s:?} is not an IPv4 address like 10.43.0.10 (or `none`)"))
}

/// The 10th address of the service range (kubeadm's and k3s' cluster DNS address).
fn tenth_address(cidr: &skiff_apiserver::alloc::ServiceCidr) -> std::net::Ipv4Addr {
    std::net::Ipv4Addr::from(u32::from(cidr.base) + 10)
}
// end dns

// --- endpoints helper: service-facing controllers ---
fn parse_lb_range(s: &str) -> Result<skiff_controllers::cidr::Ipv4Range, String> {
    s.parse()
}
// --- end endpoints helper ---

// workloads
fn parse_seconds(s: &str) -> Result<std::time::Duration, String> {
    let v: f64 = s
        .parse()
        .map_err(|_| format!("{s:?} is not a number of seconds (e.g. 10 or 0.5)"))?;
    std::time::Duration::try_from_secs_f64(v)
        .map_err(|_| format!("{s:?}: seconds must be a finite number >= 0"))
}

impl ControllerArgs {
    // Each controller's block sets its own fields (merge-friendly).
    #[allow(clippy::field_reassign_with_default)]
    fn config(&self) -> skiff_controllers::Config {
        let mut c = skiff_controllers::Config {
            // --- endpoints helper: service-facing controllers ---
            max_endpoints_per_slice: self.max_endpoints_per_slice as usize,
            concurrent_service_endpoint_syncs: self.concurrent_service_endpoint_syncs as usize,
            lb_pool: skiff_controllers::lb::Pool::new(self.lb_pool.clone()),
            cluster_cidr: self.cluster_cidr,
            node_cidr_mask_size: self.node_cidr_mask_size,
            // --- end endpoints helper ---
            // scheduler helper
            node_monitor_grace_period: self.node_monitor_grace_period,
            pod_eviction_timeout: self.pod_eviction_timeout,
            // end scheduler helper
            ..skiff_controllers::Config::default()
        };
        // workloads
        c.job_pod_failure_backoff = self.job_pod_failure_backoff;
        // dns: cluster DNS (issue 8)
        if let Some(ClusterDns(ip)) = self.cluster_dns {
            c.cluster_dns = ip;
        }
        // end dns
        // cp helper: PodGC
        c.pod_gc = skiff_controllers::podgc::Config {
            threshold: self.terminated_pod_gc_threshold,
            quarantine: self.pod_gc_orphan_quarantine,
            period: self.pod_gc_period,
        };
        // end cp helper
        c
    }
}

// cp helper: leader election
/// Runs `work` under leader election for the Lease `kube-system/<lease>` when `elect`.
/// Until `stop` turns true (cpbench helper: then a leader releases its Lease).
async fn elected<F, Fut>(
    client: kube::Client,
    elect: bool,
    lease: &str,
    identity: &str,
    work: F,
    stop: Stop,
) -> Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<()>>,
{
    let mut work = work;
    if !elect {
        return tokio::select! {
            r = work() => r,
            () = stopped(stop) => Ok(()),
        };
    }
    let cfg = skiff_controllers::leader::Config::new(
        lease,
        skiff_controllers::leader::identity(identity),
    );
    skiff_controllers::leader::run_elected_until(client, cfg, work, stopped(stop)).await
}

// cpbench helper: leader Lease release on shutdown (upstream ReleaseOnCancel)
/// Set to true when the process is asked to stop.
type Stop = tokio::sync::watch::Receiver<bool>;

/// Completes once `stop` is true (or its sender is gone).
async fn stopped(mut stop: Stop) {
    let _ = stop.wait_for(|s| *s).await;
}

/// Completes on SIGINT or SIGTERM (what systemd, kubelet and `kill` send).
async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::warn!("cannot listen for SIGTERM ({e}); only SIGINT stops cleanly");
                std::future::pending::<()>().await
            }
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        () = term => {}
    }
}

/// How long a stopping process waits for its leaders to release their Leases.
const RELEASE_WAIT: std::time::Duration = std::time::Duration::from_secs(10);
// end cpbench helper

/// A candidate identity suffix: stable for a server's data directory (a restarted server
/// takes its own Lease back at once instead of waiting for it to expire), unique per
/// process for the standalone commands.
fn identity_suffix(data_dir: Option<&std::path::Path>) -> String {
    match data_dir {
        Some(d) => {
            let path = std::fs::canonicalize(d).unwrap_or_else(|_| d.to_path_buf());
            // FNV-1a of the path: short and stable.
            let mut h: u64 = 0xcbf2_9ce4_8422_2325;
            for b in path.to_string_lossy().bytes() {
                h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
            }
            format!("{h:016x}")
        }
        None => {
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.subsec_nanos())
                .unwrap_or(0);
            format!("{}-{nanos:08x}", std::process::id())
        }
    }
}
// end cp helper

/// A kube-rs client from a kubeconfig file.
async fn client_from(kubeconfig: &std::path::Path) -> Result<kube::Client> {
    let kc = kube::config::Kubeconfig::read_from(kubeconfig)
        .with_context(|| format!("reading the kubeconfig {}", kubeconfig.display()))?;
    let cfg = kube::Config::from_custom_kubeconfig(kc, &Default::default())
        .await
        .with_context(|| format!("using the kubeconfig {}", kubeconfig.display()))?;
    kube::Client::try_from(cfg).context("building the API client")
}

// cp helper: malloc settings (issue 5, redb memory)
mod malloc;

fn main() -> Result<()> {
    // Before the runtime starts its threads: see `malloc`.
    malloc::configure();
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")?
        .block_on(run())
}
// end cp helper

async fn run() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    // --- endpoints helper: service-facing controllers ---
    // Bad controller flags fail before anything starts (not after the API is serving).
    if let Command::Server { controllers, .. } | Command::Controllers { controllers, .. } =
        &cli.command
    {
        controllers
            .config()
            .validate()
            .map_err(anyhow::Error::msg)?;
    }
    // --- end endpoints helper ---
    match cli.command {
        Command::Server {
            data_dir,
            listen,
            advertise_address,
            store,
            etcd_endpoints,
            redb_cache_size,
            watch_cache_fresh_seconds,
            watch_cache_budget,
            redb_retention_seconds,
            redb_max_retained_mib,
            service_cidr,
            service_node_port_range,
            min_request_timeout,
            disable_controllers,
            mut controllers,
            // scheduler helper
            disable_scheduler,
            scheduler,
            // end scheduler helper
            leader_elect,
        } => {
            // dns: cluster DNS (issue 8)
            if controllers.cluster_dns.is_none() {
                controllers.cluster_dns = Some(ClusterDns(Some(tenth_address(&service_cidr))));
            }
            // end dns
            std::fs::create_dir_all(&data_dir)
                .with_context(|| format!("creating the data directory {}", data_dir.display()))?;
            let store: Arc<dyn Store> = match store {
                StoreKind::Redb => {
                    let path = data_dir.join("store.redb");
                    Arc::new(
                        skiff_store::RedbStore::open(
                            &path,
                            skiff_store::RedbConfig {
                                cache_size: usize::try_from(redb_cache_size * 1024 * 1024)
                                    .context("--redb-cache-size is too large for this machine")?,
                                retention_age: std::time::Duration::from_secs(
                                    redb_retention_seconds,
                                ),
                                max_retained_bytes: redb_max_retained_mib
                                    .checked_mul(1024 * 1024)
                                    .context("--redb-max-retained-mib is too large")?,
                                ..Default::default()
                            },
                        )
                        .with_context(|| format!("opening the redb store {}", path.display()))?,
                    )
                }
                StoreKind::Etcd => {
                    if etcd_endpoints.is_empty() {
                        bail!("--store etcd needs --etcd-endpoints URL[,URL...]");
                    }
                    let cfg = skiff_store::EtcdConfig::new(etcd_endpoints.clone());
                    Arc::new(
                        skiff_store::EtcdStore::connect(cfg)
                            .await
                            .with_context(|| {
                                format!("connecting to etcd at {}", etcd_endpoints.join(","))
                            })?,
                    )
                }
            };
            let server = skiff_apiserver::start(
                skiff_apiserver::Config {
                    data_dir: data_dir.clone(),
                    listen,
                    advertise: advertise_address,
                    service_cidr,
                    node_port_range: service_node_port_range,
                    min_request_timeout: std::time::Duration::from_secs(min_request_timeout),
                    watch_cache: skiff_apiserver::WatchCacheLimits {
                        fresh: std::time::Duration::from_secs(watch_cache_fresh_seconds),
                        budget_bytes: usize::try_from(watch_cache_budget * 1024 * 1024)
                            .context("--watch-cache-budget is too large for this machine")?,
                        ..Default::default()
                    },
                },
                store,
            )
            .await
            .context("starting the API server")?;
            tracing::info!(
                "API server ready on https://{}; admin kubeconfig: {} (export KUBECONFIG={})",
                server.addr,
                server.credentials.kubeconfig_path.display(),
                server.credentials.kubeconfig_path.display()
            );
            let kubeconfig = server.credentials.kubeconfig_path.clone();
            // cpbench helper: leader Lease release on shutdown
            let (stop_tx, stop) = tokio::sync::watch::channel(false);
            // end cpbench helper
            // cpbench: the controllers' work-queue metrics on the admin /metrics
            if !disable_controllers {
                skiff_apiserver::add_metrics_source(skiff_controllers::metrics::render);
            }
            // end cpbench
            let controllers = async {
                if disable_controllers {
                    tracing::info!("controllers disabled (--disable-controllers)");
                } else {
                    let client = client_from(&kubeconfig).await?;
                    let id = identity_suffix(Some(&data_dir));
                    elected(
                        client.clone(),
                        leader_elect,
                        "kube-controller-manager",
                        &id,
                        || skiff_controllers::run(client.clone(), controllers.config()),
                        stop.clone(),
                    )
                    .await?;
                }
                // Only an error (or a shutdown) ends the server; stopped controllers leave
                // the API serving.
                stopped(stop.clone()).await;
                Ok::<(), anyhow::Error>(())
            };
            // scheduler helper
            let scheduler = async {
                if disable_scheduler {
                    tracing::info!("scheduler disabled (--disable-scheduler)");
                } else {
                    let client = client_from(&kubeconfig).await?;
                    let id = identity_suffix(Some(&data_dir));
                    elected(
                        client.clone(),
                        leader_elect,
                        "kube-scheduler",
                        &id,
                        || skiff_scheduler::run(client.clone(), scheduler.config()),
                        stop.clone(),
                    )
                    .await?;
                }
                stopped(stop.clone()).await;
                Ok::<(), anyhow::Error>(())
            };
            // end scheduler helper
            tokio::pin!(controllers, scheduler);
            tokio::select! {
                () = shutdown_signal() => {
                    tracing::info!("interrupted, shutting down");
                    // cpbench helper: the leaders stop their work and release their Leases
                    // while the API still serves (a standby takes over at once).
                    let _ = stop_tx.send(true);
                    let _ = tokio::time::timeout(RELEASE_WAIT, async {
                        tokio::join!(&mut controllers, &mut scheduler)
                    })
                    .await;
                    // end cpbench helper
                    server.shutdown().await;
                    Ok(())
                }
                r = &mut controllers => {
                    server.shutdown().await;
                    r.context("the in-process controllers stopped")
                }
                // scheduler helper
                r = &mut scheduler => {
                    server.shutdown().await;
                    r.context("the in-process scheduler stopped")
                }
                // end scheduler helper
            }
        }
        Command::Controllers {
            kubeconfig,
            controllers,
            leader_elect,
        } => {
            let client = client_from(&kubeconfig).await?;
            let id = identity_suffix(None);
            // cpbench helper: a signal stops the work and releases the Lease.
            let (stop_tx, stop) = tokio::sync::watch::channel(false);
            let run = elected(
                client.clone(),
                leader_elect,
                "kube-controller-manager",
                &id,
                || skiff_controllers::run(client.clone(), controllers.config()),
                stop,
            );
            tokio::pin!(run);
            tokio::select! {
                () = shutdown_signal() => {
                    let _ = stop_tx.send(true);
                    let _ = tokio::time::timeout(RELEASE_WAIT, &mut run).await;
                    Ok(())
                }
                r = &mut run => r,
            }
        }
        // scheduler helper
        Command::Scheduler {
            kubeconfig,
            scheduler,
            leader_elect,
        } => {
            let client = client_from(&kubeconfig).await?;
            let id = identity_suffix(None);
            // cpbench helper: a signal stops the work and releases the Lease.
            let (stop_tx, stop) = tokio::sync::watch::channel(false);
            let run = elected(
                client.clone(),
                leader_elect,
                "kube-scheduler",
                &id,
                || skiff_scheduler::run(client.clone(), scheduler.config()),
                stop,
            );
            tokio::pin!(run);
            tokio::select! {
                () = shutdown_signal() => {
                    let _ = stop_tx.send(true);
                    let _ = tokio::time::timeout(RELEASE_WAIT, &mut run).await;
                    Ok(())
                }
                r = &mut run => r,
            }
        } // end scheduler helper
    }
}
