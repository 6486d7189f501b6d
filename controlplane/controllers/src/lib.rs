//! skiff's controllers. Each one is a list-watch client of the Kubernetes API (kube-rs),
//! never of the store, so any of them can run inside `skiff-controlplane` (the default,
//! k3s style) or as its own process against any API server.
//!
//! Shape of every controller (the rule the modules follow):
//! - a pure `desired(...)` / `plan(...)` function from observed objects to the writes that
//!   make the world match, unit-tested without any API;
//! - a thin `run(ctx)` that feeds it from kube-rs watchers/reflectors and applies the
//!   writes; level-triggered and idempotent (a re-run with nothing changed writes nothing);
//! - work is queued per object key through [`kube::runtime::Controller`] (deduplicated,
//!   never busy-looping); failures requeue with [`backoff::Backoff`] (exponential, capped);
//! - one `tracing::info!` line per action taken, and an [`events`] Event where a user
//!   would look for one in `kubectl describe`.
//!
//! | module | what |
//! |---|---|
//! | [`backoff`] | per-key exponential backoff for failed reconciles |
//! | [`events`] | core/v1 Event recorder (deduplicated with `count`, like client-go's) |
// --- endpoints helper: service-facing controllers ---
//! | [`endpointslice`] | EndpointSlices and legacy Endpoints of selector Services |
//! | [`lb`] | LoadBalancer IPs from `--lb-pool` (or node addresses) into Service status |
//! | [`nodeipam`] | `spec.podCIDR(s)` for Nodes from `--cluster-cidr` |
//! | [`workqueue`] | client-go style deduplicating work queue |
// cpbench: work-queue metrics
//! | [`metrics`] | client-go's work-queue metrics, for the API server's admin `/metrics` |
// end cpbench
//! | [`cidr`] | IPv4 CIDR / range parsing for the flags |
// --- end endpoints helper ---
//! | [`replicaset`] | ReplicaSet: pods from the template, adoption, ActivePods scale-down |
//! | [`deployment`] | Deployment: ReplicaSets per template hash, rolling/recreate, revisions |
//! | [`daemonset`] | DaemonSet: a pod per eligible node (selector, affinity, taints) |
//! | [`job`] | Job: completions, parallelism, backoffLimit, activeDeadlineSeconds |
//! | [`gc`] | garbage collector: Background, Foreground and Orphan over ownerReferences |
//! | [`pods`], [`ownership`], [`expectations`], [`runtime`] | what the workload controllers share |
// dns: cluster DNS (issue 8)
//! | [`clusterdns`] | the `kube-system/kube-dns` Service and slices of the Nodes serving DNS |
// end dns
//! | [`nodelifecycle`] | node heartbeats → Unknown conditions, unreachable/not-ready taints, NoExecute eviction |
//! | [`namespace`] | deletes a terminating Namespace's content, then its `kubernetes` finalizer |
//! | [`podgc`] | pod GC: terminated pods over the threshold, orphans, out-of-service nodes |
//! | [`leader`] | Lease-based leader election for the controllers and the scheduler |

pub mod backoff;
pub mod events;
// --- endpoints helper: service-facing controllers ---
pub mod cidr;
pub mod endpointslice;
pub mod lb;
pub mod nodeipam;
pub mod workqueue;
// --- end endpoints helper ---
// cpbench: work-queue metrics
pub mod metrics;
// end cpbench

// workloads: ReplicaSet, Deployment, DaemonSet, Job controllers and the garbage collector.
pub mod daemonset;
pub mod deployment;
pub mod expectations;
pub mod gc;
pub mod history;
pub mod informers;
pub mod job;
pub mod ownership;
pub mod podcontrol;
pub mod pods;
pub mod replicaset;
pub mod runtime;
// dns: cluster DNS (issue 8)
pub mod clusterdns;
// end dns
// scheduler helper
pub mod nodelifecycle;
// end scheduler helper
// cp helper: namespace controller, leader election
pub mod leader;
pub mod namespace;
pub mod podgc;
// end cp helper

use std::sync::Arc;

use kube::Client;

/// Settings of all controllers (flags of `skiff-controlplane`).
#[derive(Debug, Clone)]
pub struct Config {
    /// Name used as Event `source.component` / `reportingComponent`.
    pub component: String,
    // --- endpoints helper: service-facing controllers ---
    /// Endpoints per EndpointSlice (`--max-endpoints-per-slice`, upstream 100, at most 1000).
    pub max_endpoints_per_slice: usize,
    /// Services synced in parallel (`--concurrent-service-endpoint-syncs`, upstream 5).
    pub concurrent_service_endpoint_syncs: usize,
    /// LoadBalancer IP pool (`--lb-pool`); empty: publish node addresses.
    pub lb_pool: lb::Pool,
    /// Pod network the Nodes' podCIDRs come from (`--cluster-cidr`, k3s 10.42.0.0/16).
    pub cluster_cidr: cidr::Ipv4Cidr,
    /// Prefix length of each Node's podCIDR (`--node-cidr-mask-size`, upstream 24).
    pub node_cidr_mask_size: u8,
    // --- end endpoints helper ---
    // workloads
    /// Base of the Job controller's pod-failure backoff (upstream 10 s, doubling per
    /// failure to 10 min).
    pub job_pod_failure_backoff: std::time::Duration,
    // scheduler helper
    /// No heartbeat (Lease renewal or Ready heartbeat) for this long → node Unknown
    /// (kube-controller-manager's `--node-monitor-grace-period`, 40 s).
    pub node_monitor_grace_period: std::time::Duration,
    /// How long pods without a toleration for the not-ready/unreachable NoExecute taints
    /// stay on such a node (the DefaultTolerationSeconds admission default, 300 s).
    pub pod_eviction_timeout: std::time::Duration,
    // end scheduler helper
    // dns: cluster DNS (issue 8)
    /// ClusterIP of the `kube-system/kube-dns` Service (`--cluster-dns`; the 10th address
    /// of the service range, 10.43.0.10 by default); `None`: no cluster DNS objects.
    pub cluster_dns: Option<std::net::Ipv4Addr>,
    // end dns
    // cp helper: PodGC
    /// Pod garbage collector settings (`--terminated-pod-gc-threshold`, ...).
    pub pod_gc: podgc::Config,
    // end cp helper
}

impl Default for Config {
    fn default() -> Self {
        Config {
            component: "skiff-controller-manager".into(),
            // --- endpoints helper: service-facing controllers ---
            max_endpoints_per_slice: 100,
            concurrent_service_endpoint_syncs: 5,
            lb_pool: lb::Pool::default(),
            cluster_cidr: cidr::Ipv4Cidr::new(std::net::Ipv4Addr::new(10, 42, 0, 0), 16)
                .expect("a valid CIDR"),
            node_cidr_mask_size: 24,
            // --- end endpoints helper ---
            job_pod_failure_backoff: std::time::Duration::from_secs(10),
            // scheduler helper
            node_monitor_grace_period: std::time::Duration::from_secs(40),
            pod_eviction_timeout: std::time::Duration::from_secs(300),
            // end scheduler helper
            // dns: cluster DNS (issue 8)
            cluster_dns: Some(std::net::Ipv4Addr::new(10, 43, 0, 10)),
            // end dns
            // cp helper: PodGC
            pod_gc: podgc::Config::default(),
            // end cp helper
        }
    }
}

// --- endpoints helper: service-facing controllers ---
/// The largest `--max-endpoints-per-slice` upstream accepts.
pub const MAX_ENDPOINTS_PER_SLICE_LIMIT: usize = 1000;

impl Config {
    /// Rejects settings the controllers cannot run with, saying which flag and why.
    pub fn validate(&self) -> Result<(), String> {
        if !(1..=MAX_ENDPOINTS_PER_SLICE_LIMIT).contains(&self.max_endpoints_per_slice) {
            return Err(format!(
                "--max-endpoints-per-slice {}: must be between 1 and {MAX_ENDPOINTS_PER_SLICE_LIMIT} (upstream's limit)",
                self.max_endpoints_per_slice
            ));
        }
        if self.concurrent_service_endpoint_syncs == 0 {
            return Err("--concurrent-service-endpoint-syncs must be at least 1".into());
        }
        nodeipam::validate(&self.cluster_cidr, self.node_cidr_mask_size)
    }
}
// --- end endpoints helper ---

/// What every controller gets: the API client, the settings, the Event recorder and the
/// shared caches.
#[derive(Clone)]
pub struct Ctx {
    pub client: Client,
    pub config: Arc<Config>,
    pub events: events::Recorder,
    pub informers: informers::Informers,
}

impl Ctx {
    pub fn new(client: Client, config: Config) -> Ctx {
        let events = events::Recorder::new(client.clone(), config.component.clone());
        Ctx {
            informers: informers::Informers::new(client.clone()),
            client,
            config: Arc::new(config),
            events,
        }
    }
}

/// Runs every controller until one of them fails for good (they retry API errors
/// themselves; a returned error means a bug or a lost API server that did not come back).
pub async fn run(client: Client, config: Config) -> anyhow::Result<()> {
    // --- endpoints helper: service-facing controllers ---
    config.validate().map_err(anyhow::Error::msg)?;
    // --- end endpoints helper ---
    let ctx = Ctx::new(client, config);
    let mut set: tokio::task::JoinSet<(&'static str, anyhow::Result<()>)> =
        tokio::task::JoinSet::new();
    // Each controller registers here: `set.spawn(named("name", module::run(ctx.clone())));`
    // scheduler helper
    set.spawn(named("nodelifecycle", nodelifecycle::run(ctx.clone())));
    // end scheduler helper
    let _ = &ctx;
    // --- endpoints helper: service-facing controllers ---
    set.spawn(named("endpointslice", endpointslice::run(ctx.clone())));
    set.spawn(named("loadbalancer", lb::run(ctx.clone())));
    set.spawn(named("nodeipam", nodeipam::run(ctx.clone())));
    // --- end endpoints helper ---
    // workloads
    set.spawn(named("replicaset", replicaset::run(ctx.clone())));
    set.spawn(named("deployment", deployment::run(ctx.clone())));
    set.spawn(named("job", job::run(ctx.clone())));
    set.spawn(named("daemonset", daemonset::run(ctx.clone())));
    set.spawn(named("garbage-collector", gc::run(ctx.clone())));
    // dns: cluster DNS (issue 8)
    set.spawn(named("clusterdns", clusterdns::run(ctx.clone())));
    // end dns
    // cp helper: namespace controller
    set.spawn(named("namespace", namespace::run(ctx.clone())));
    set.spawn(named("podgc", podgc::run(ctx.clone())));
    // end cp helper
    while let Some(done) = set.join_next().await {
        match done {
            Ok((name, Ok(()))) => tracing::info!("controller {name} stopped"),
            Ok((name, Err(e))) => anyhow::bail!("controller {name} failed: {e:#}"),
            Err(e) => anyhow::bail!("a controller task panicked: {e}"),
        }
    }
    Ok(())
}

/// Tags a controller's future with its name for [`run`]'s error messages.
pub async fn named<F>(name: &'static str, f: F) -> (&'static str, anyhow::Result<()>)
where
    F: std::future::Future<Output = anyhow::Result<()>>,
{
    (name, f.await)
}
