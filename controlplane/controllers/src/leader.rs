//! Leader election over a coordination.k8s.io/v1 Lease, as client-go's `leaderelection`
//! with a `LeaseLock`: several `skiff-controlplane` processes on one etcd run one active set
//! of controllers (Lease `kube-system/kube-controller-manager`) and one scheduler
//! (`kube-system/kube-scheduler`).
//!
//! Upstream's rules and timings (kube-controller-manager and kube-scheduler defaults):
//! - a candidate tries to acquire or renew every `retry_period` (2 s);
//! - a Lease held by another is taken over only once its holder has not renewed it for
//!   `lease_duration` (15 s) — measured on *this* candidate's clock from when it last saw
//!   the record change, never by comparing the holder's timestamps with the local clock
//!   (client-go's `observedTime`, which makes the rule immune to clock skew);
//! - the leader that has not renewed within `renew_deadline` (10 s) stops leading: its
//!   work is cancelled before anyone else can have taken the Lease (10 s < 15 s);
//! - every write is a compare-and-swap on the Lease's resourceVersion, so two candidates
//!   can never both succeed in taking it;
//! - on shutdown the leader stops its work and then releases the Lease (client-go's
//!   `ReleaseOnCancel`, which kube-controller-manager and kube-scheduler set): it writes
//!   an empty `holderIdentity` with `leaseDurationSeconds: 1`, so a standby takes over at
//!   its next retry instead of waiting out the lease duration.

use std::future::Future;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, PostParams};
use tokio::time::Instant;

/// Election settings.
#[derive(Debug, Clone)]
pub struct Config {
    pub namespace: String,
    pub name: String,
    /// This candidate's `holderIdentity`.
    pub identity: String,
    pub lease_duration: Duration,
    pub renew_deadline: Duration,
    pub retry_period: Duration,
}

impl Config {
    /// Upstream's defaults for the Lease `kube-system/<name>`.
    pub fn new(name: &str, identity: String) -> Config {
        Config {
            namespace: "kube-system".into(),
            name: name.into(),
            identity,
            lease_duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry_period: Duration::from_secs(2),
        }
    }
}

/// `<hostname>_<suffix>`, as client-go's `id := hostname + "_" + uuid`.
pub fn identity(suffix: &str) -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "localhost".into());
    format!("{host}_{suffix}")
}

/// What the candidate last observed of the Lease (client-go's `observedRecord` +
/// `observedTime`).
struct Observed {
    holder: Option<String>,
    resource_version: Option<String>,
    /// When this candidate saw the record change last (its own clock).
    at: Instant,
}

enum Attempt {
    /// We hold the Lease (acquired or renewed) as of now.
    Held,
    /// Someone else holds a live Lease.
    Other(String),
}

fn now_micro() -> MicroTime {
    MicroTime(Timestamp::now())
}

/// One try to acquire or renew (client-go's `tryAcquireOrRenew`).
async fn try_acquire_or_renew(
    api: &Api<Lease>,
    cfg: &Config,
    observed: &mut Option<Observed>,
) -> Result<Attempt, kube::Error> {
    let secs = i32::try_from(cfg.lease_duration.as_secs()).unwrap_or(i32::MAX);
    let current = api.get_opt(&cfg.name).await?;
    let Some(mut lease) = current else {
        let lease = Lease {
            metadata: ObjectMeta {
                name: Some(cfg.name.clone()),
                namespace: Some(cfg.namespace.clone()),
                ..Default::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: Some(cfg.identity.clone()),
                lease_duration_seconds: Some(secs),
                acquire_time: Some(now_micro()),
                renew_time: Some(now_micro()),
                lease_transitions: Some(0),
                ..Default::default()
            }),
        };
        let created = api.create(&PostParams::default(), &lease).await?;
        *observed = Some(Observed {
            holder: Some(cfg.identity.clone()),
            resource_version: created.metadata.resource_version,
            at: Instant::now(),
        });
        return Ok(Attempt::Held);
    };
    let spec = lease.spec.clone().unwrap_or_default();
    let holder = spec.holder_identity.clone().filter(|h| !h.is_empty());
    let rv = lease.metadata.resource_version.clone();
    // The record changed since we last looked: restart the expiry clock.
    if observed
        .as_ref()
        .is_none_or(|o| o.resource_version != rv || o.holder != holder)
    {
        *observed = Some(Observed {
            holder: holder.clone(),
            resource_version: rv.clone(),
            at: Instant::now(),
        });
    }
    let ours = holder.as_deref() == Some(cfg.identity.as_str());
    let expired = observed
        .as_ref()
        .is_some_and(|o| o.at.elapsed() >= cfg.lease_duration);
    if let Some(h) = &holder {
        if !ours && !expired {
            return Ok(Attempt::Other(h.clone()));
        }
    }
    let mut new_spec = spec.clone();
    new_spec.holder_identity = Some(cfg.identity.clone());
    new_spec.lease_duration_seconds = Some(secs);
    new_spec.renew_time = Some(now_micro());
    if !ours {
        new_spec.acquire_time = Some(now_micro());
        new_spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
    }
    lease.spec = Some(new_spec);
    // PUT with the resourceVersion we read: a concurrent taker makes this a 409.
    let written = api
        .replace(&cfg.name, &PostParams::default(), &lease)
        .await?;
    *observed = Some(Observed {
        holder: Some(cfg.identity.clone()),
        resource_version: written.metadata.resource_version,
        at: Instant::now(),
    });
    Ok(Attempt::Held)
}

/// Releases the Lease if we still hold it (client-go's `release`): an empty holder, the
/// shortest duration, and the renew time now, written with the resourceVersion we read so
/// a Lease someone else took meanwhile is left alone. Returns whether it released it.
pub async fn release(api: &Api<Lease>, cfg: &Config) -> Result<bool, kube::Error> {
    let Some(mut lease) = api.get_opt(&cfg.name).await? else {
        return Ok(false);
    };
    let mut spec = lease.spec.clone().unwrap_or_default();
    if spec.holder_identity.as_deref() != Some(cfg.identity.as_str()) {
        return Ok(false);
    }
    spec.holder_identity = Some(String::new());
    spec.lease_duration_seconds = Some(1);
    spec.renew_time = Some(now_micro());
    spec.acquire_time = Some(now_micro());
    lease.spec = Some(spec);
    api.replace(&cfg.name, &PostParams::default(), &lease)
        .await?;
    Ok(true)
}

/// How long a shutting-down leader tries to release its Lease before it gives up (the
/// Lease then expires as if the process had died).
const RELEASE_TIMEOUT: Duration = Duration::from_secs(5);

/// Runs `work` while this candidate leads, forever: waits to acquire the Lease, runs
/// `work()` while renewing, and when a renewal misses `renew_deadline` cancels the work and
/// campaigns again. Returns when `work` ends by itself while leading.
pub async fn run_elected<F, Fut>(client: kube::Client, cfg: Config, work: F) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    run_elected_until(client, cfg, work, std::future::pending()).await
}

/// [`run_elected`] until `shutdown` completes: then the work is cancelled (dropped) and,
/// if this candidate leads, the Lease released (upstream's `ReleaseOnCancel`), and this
/// returns `Ok`.
pub async fn run_elected_until<F, Fut, S>(
    client: kube::Client,
    cfg: Config,
    work: F,
    shutdown: S,
) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
    S: Future<Output = ()>,
{
    let api: Api<Lease> = Api::namespaced(client, &cfg.namespace);
    tokio::select! {
        r = campaign_and_lead(&api, &cfg, work) => r,
        () = shutdown => {
            // The campaign (and with it the work) is dropped by now: nothing of ours runs
            // any more when the standby takes over. Released whether or not we knew we
            // led: an acquire whose answer was cut off by the shutdown may have won, and
            // `release` leaves a Lease held by someone else alone.
            match tokio::time::timeout(RELEASE_TIMEOUT, release(&api, &cfg)).await {
                Ok(Ok(true)) => tracing::info!(
                    "leader election {}/{}: {} released the lease",
                    cfg.namespace,
                    cfg.name,
                    cfg.identity
                ),
                Ok(Ok(false)) => {}
                Ok(Err(e)) => tracing::warn!(
                    "leader election {}/{}: releasing the lease: {e}",
                    cfg.namespace,
                    cfg.name
                ),
                Err(_) => tracing::warn!(
                    "leader election {}/{}: releasing the lease: no answer within {RELEASE_TIMEOUT:?}",
                    cfg.namespace,
                    cfg.name
                ),
            }
            Ok(())
        }
    }
}

async fn campaign_and_lead<F, Fut>(
    api: &Api<Lease>,
    cfg: &Config,
    mut work: F,
) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    let mut observed: Option<Observed> = None;
    let mut last_other: Option<String> = None;
    loop {
        // Campaign.
        loop {
            match try_acquire_or_renew(api, cfg, &mut observed).await {
                Ok(Attempt::Held) => break,
                Ok(Attempt::Other(h)) => {
                    if last_other.as_deref() != Some(h.as_str()) {
                        tracing::info!(
                            "leader election {}/{}: {h} leads; {} waits",
                            cfg.namespace,
                            cfg.name,
                            cfg.identity
                        );
                        last_other = Some(h);
                    }
                }
                Err(e) => tracing::debug!("leader election {}/{}: {e}", cfg.namespace, cfg.name),
            }
            tokio::time::sleep(cfg.retry_period).await;
        }
        last_other = None;
        tracing::info!(
            "leader election {}/{}: {} became leader",
            cfg.namespace,
            cfg.name,
            cfg.identity
        );
        // Lead: renew every retry period; stop when a renewal misses the deadline.
        let renew = async {
            let mut last_renew = Instant::now();
            loop {
                tokio::time::sleep(cfg.retry_period).await;
                match tokio::time::timeout(
                    cfg.renew_deadline.saturating_sub(last_renew.elapsed()),
                    try_acquire_or_renew(api, cfg, &mut observed),
                )
                .await
                {
                    Ok(Ok(Attempt::Held)) => last_renew = Instant::now(),
                    Ok(Ok(Attempt::Other(h))) => return format!("{h} holds the lease now"),
                    Ok(Err(e)) => tracing::debug!(
                        "leader election {}/{}: renew: {e}",
                        cfg.namespace,
                        cfg.name
                    ),
                    Err(_) => {}
                }
                if last_renew.elapsed() >= cfg.renew_deadline {
                    return format!("no renewal within {:?}", cfg.renew_deadline);
                }
            }
        };
        let why = tokio::select! {
            why = renew => why,
            r = work() => {
                // The work ended (or failed) by itself: nothing left to lead for.
                return r;
            }
        };
        tracing::warn!(
            "leader election {}/{}: {} lost the lease ({why}); stopping its work",
            cfg.namespace,
            cfg.name,
            cfg.identity
        );
        observed = None;
    }
}
