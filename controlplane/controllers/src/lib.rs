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
//! | [`nodelifecycle`] | node heartbeats → Unknown conditions, unreachable/not-ready taints, NoExecute eviction |

pub mod backoff;
pub mod events;
// scheduler helper
pub mod nodelifecycle;
// end scheduler helper

use std::sync::Arc;

use kube::Client;

/// Settings of all controllers (flags of `skiff-controlplane`).
#[derive(Debug, Clone)]
pub struct Config {
    /// Name used as Event `source.component` / `reportingComponent`.
    pub component: String,
    // scheduler helper
    /// No heartbeat (Lease renewal or Ready heartbeat) for this long → node Unknown
    /// (kube-controller-manager's `--node-monitor-grace-period`, 40 s).
    pub node_monitor_grace_period: std::time::Duration,
    /// How long pods without a toleration for the not-ready/unreachable NoExecute taints
    /// stay on such a node (the DefaultTolerationSeconds admission default, 300 s).
    pub pod_eviction_timeout: std::time::Duration,
    // end scheduler helper
}

impl Default for Config {
    fn default() -> Self {
        Config {
            component: "skiff-controller-manager".into(),
            // scheduler helper
            node_monitor_grace_period: std::time::Duration::from_secs(40),
            pod_eviction_timeout: std::time::Duration::from_secs(300),
            // end scheduler helper
        }
    }
}

/// What every controller gets: the API client, the settings and the Event recorder.
#[derive(Clone)]
pub struct Ctx {
    pub client: Client,
    pub config: Arc<Config>,
    pub events: events::Recorder,
}

impl Ctx {
    pub fn new(client: Client, config: Config) -> Ctx {
        let events = events::Recorder::new(client.clone(), config.component.clone());
        Ctx {
            client,
            config: Arc::new(config),
            events,
        }
    }
}

/// Runs every controller until one of them fails for good (they retry API errors
/// themselves; a returned error means a bug or a lost API server that did not come back).
pub async fn run(client: Client, config: Config) -> anyhow::Result<()> {
    let ctx = Ctx::new(client, config);
    let mut set = tokio::task::JoinSet::new();
    // Each controller registers here: `set.spawn(named("name", module::run(ctx.clone())));`
    // scheduler helper
    set.spawn(named("nodelifecycle", nodelifecycle::run(ctx.clone())));
    // end scheduler helper
    let _ = &ctx;
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
