//! Service sync from the API: list-watch Services and EndpointSlices with kube-rs (so the
//! agent runs against skiff's control plane and against any conformant API server), keep
//! complete caches, and reprogram the datapath from them.
//!
//! The rule that matters: nothing is reprogrammed — so nothing is deleted — until every
//! watcher has completed its initial list, and again after every relist (API server
//! restart, 410 Gone) until that relist is complete. A cache switches to a relisted set
//! atomically at `InitDone` (kube-rs' watcher state machine), never object by object, so
//! a half-listed cache never black-holes a service.

use std::{
    collections::BTreeMap,
    fmt::Debug,
    net::Ipv4Addr,
    time::{Duration, Instant, SystemTime},
};

use futures::{stream, StreamExt as _};
use k8s_openapi::api::{core::v1::Service, discovery::v1::EndpointSlice};
use kube::{
    runtime::{watcher, WatchStreamExt as _},
    Api, Client, ResourceExt as _,
};

use crate::{
    lbmap::ServiceMaps,
    model::{HealthCheck, ServicePortName},
    policy,
    reconcile::{MapUsage, Reconciler, SyncReport},
    translate::{translate, Diagnostic, NodeContext},
};

/// The EndpointSlice annotation the endpoints controller sets to when the change that
/// produced this version of the slice happened (a Pod or Service update).
pub const TRIGGER_TIME_ANNOTATION: &str = "endpoints.kubernetes.io/last-change-trigger-time";

/// A complete view of one kind, switched atomically on relists.
#[derive(Debug)]
pub struct Cache<K> {
    objects: BTreeMap<(String, String), K>,
    /// Objects of a list in progress; `Some` between `Init` and `InitDone`.
    relist: Option<BTreeMap<(String, String), K>>,
    /// A complete list has been seen and no relist is in progress.
    ready: bool,
}

impl<K> Default for Cache<K> {
    fn default() -> Self {
        Cache {
            objects: BTreeMap::new(),
            relist: None,
            ready: false,
        }
    }
}

fn key<K: kube::Resource>(o: &K) -> (String, String) {
    (o.namespace().unwrap_or_default(), o.name_any())
}

impl<K: kube::Resource + Clone> Cache<K> {
    /// Applies a watcher event; returns whether the visible contents changed.
    pub fn apply(&mut self, event: watcher::Event<K>) -> bool {
        match event {
            watcher::Event::Init => {
                self.relist = Some(BTreeMap::new());
                self.ready = false;
                false
            }
            watcher::Event::InitApply(o) => {
                if let Some(r) = self.relist.as_mut() {
                    r.insert(key(&o), o);
                }
                false
            }
            watcher::Event::InitDone => {
                if let Some(r) = self.relist.take() {
                    self.objects = r;
                }
                self.ready = true;
                true
            }
            watcher::Event::Apply(o) => {
                self.objects.insert(key(&o), o);
                true
            }
            watcher::Event::Delete(o) => self.objects.remove(&key(&o)).is_some(),
        }
    }

    pub fn ready(&self) -> bool {
        self.ready
    }

    pub fn objects(&self) -> Vec<K> {
        self.objects.values().cloned().collect()
    }
}

/// The result of one reprogramming.
#[derive(Debug)]
pub struct Synced {
    pub report: SyncReport,
    pub diagnostics: Vec<Diagnostic>,
    pub services: usize,
    pub slices: usize,
    /// Translate + reconcile time.
    pub duration: Duration,
    /// Network programming latency of each EndpointSlice change this sync applied: now −
    /// its trigger-time annotation (kube-proxy's rule: changes without the annotation, and
    /// changes older than the watch, are not measured).
    pub programming_latencies: Vec<Duration>,
    /// The healthCheckNodePorts this node serves, with their local endpoint counts.
    pub health_checks: Vec<HealthCheck>,
    /// Programmed service ports (reconciler groups, `<port>#local` for Local policies) and
    /// their service ids, as the per-service counters are keyed.
    pub service_ids: Vec<(ServicePortName, u32)>,
    /// Entries the reconciler holds in each map.
    pub usage: MapUsage,
    // dns: cluster DNS (issue 8)
    /// The complete caches this sync programmed, for consumers that answer from the same
    /// view (the node-local DNS server) without a watch of their own.
    pub service_objects: Vec<Service>,
    pub slice_objects: Vec<EndpointSlice>,
    // end dns
}

/// Tracks EndpointSlice trigger times between syncs (kube-proxy's
/// EndpointsChangeTracker.lastChangeTriggerTimes).
#[derive(Debug)]
pub struct TriggerTimes {
    start: SystemTime,
    seen: BTreeMap<(String, String), String>,
    pending: Vec<SystemTime>,
}

impl TriggerTimes {
    pub fn new(start: SystemTime) -> TriggerTimes {
        TriggerTimes {
            start,
            seen: BTreeMap::new(),
            pending: Vec::new(),
        }
    }

    /// Notes a slice as listed or changed: a trigger time not seen before for this slice,
    /// and later than the watch's start, is pending until the next sync.
    pub fn note(&mut self, slice: &EndpointSlice) {
        let Some(value) = slice.annotations().get(TRIGGER_TIME_ANNOTATION) else {
            return;
        };
        let k = key(slice);
        if self.seen.get(&k) == Some(value) {
            return;
        }
        self.seen.insert(k, value.clone());
        let Ok(t) = value.parse::<k8s_openapi::jiff::Timestamp>() else {
            return;
        };
        let t = SystemTime::from(t);
        if t > self.start {
            self.pending.push(t);
        }
    }

    pub fn forget(&mut self, slice: &EndpointSlice) {
        self.seen.remove(&key(slice));
    }

    /// Latencies of the pending changes at `now`, clearing them.
    pub fn take(&mut self, now: SystemTime) -> Vec<Duration> {
        self.pending
            .drain(..)
            .map(|t| now.duration_since(t).unwrap_or_default())
            .collect()
    }
}

/// Settings of the service sync.
#[derive(Debug, Clone)]
pub struct SyncConfig {
    pub node: NodeContext,
    /// ExternalIPs inside these ranges are programmed, others reported (CVE-2020-8554).
    pub external_ip_cidrs: Vec<(Ipv4Addr, u8)>,
}

/// What the caller wants to hear from [`run`].
pub struct Hooks<S, E, T, P> {
    /// After each reprogramming.
    pub on_sync: S,
    /// After each watch error (kube-rs retries with backoff).
    pub on_error: E,
    /// How often `on_tick` runs.
    pub tick: std::time::Duration,
    /// Periodic work on the maps (conntrack GC).
    pub on_tick: T,
    /// A change arrived that cannot be programmed yet (a cache is still listing): the
    /// proxy health's "queued update". The next `on_sync` means it is programmed.
    pub on_pending: P,
}

enum Update {
    // Boxed: a Service is large next to an error string.
    Services(Box<watcher::Event<Service>>),
    Slices(Box<watcher::Event<EndpointSlice>>),
    /// A watch failed; kube-rs retries with backoff. Nothing is reprogrammed.
    Error(String),
}

/// Watches Services and EndpointSlices until the streams end (they do not, in practice:
/// errors are retried with backoff) and reprograms `maps` after every change, once both
/// caches are complete. `on_sync` sees each outcome; `on_error` each watch error;
/// `on_tick` runs every `tick` with the maps (conntrack GC, reports). `adopt`: the maps'
/// contents left by an earlier agent, taken over at the first complete sync.
pub async fn run<M, S, E, T, P>(
    client: Client,
    config: SyncConfig,
    maps: &mut M,
    reconciler: &mut Reconciler,
    mut adopt: Option<crate::lbmap::Snapshot>,
    hooks: Hooks<S, E, T, P>,
) where
    M: ServiceMaps,
    S: FnMut(&Synced),
    E: FnMut(&str),
    T: FnMut(&mut M),
    P: FnMut(),
{
    let Hooks {
        mut on_sync,
        mut on_error,
        tick,
        mut on_tick,
        mut on_pending,
    } = hooks;
    let mut triggers = TriggerTimes::new(SystemTime::now());
    let services = watcher(
        Api::<Service>::all(client.clone()),
        watcher::Config::default(),
    )
    .default_backoff()
    .map(|e| match e {
        Ok(e) => Update::Services(Box::new(e)),
        Err(e) => Update::Error(format!("watching Services: {e}")),
    });
    let slices = watcher(
        Api::<EndpointSlice>::all(client),
        watcher::Config::default(),
    )
    .default_backoff()
    .map(|e| match e {
        Ok(e) => Update::Slices(Box::new(e)),
        Err(e) => Update::Error(format!("watching EndpointSlices: {e}")),
    });
    let mut updates = Box::pin(stream::select(services, slices));
    let mut svc_cache: Cache<Service> = Cache::default();
    let mut slice_cache: Cache<EndpointSlice> = Cache::default();
    let mut ticker = tokio::time::interval(tick);
    loop {
        let first = tokio::select! {
            u = updates.next() => match u {
                Some(u) => u,
                None => return,
            },
            _ = ticker.tick() => {
                on_tick(maps);
                continue;
            }
        };
        let mut changed = false;
        let mut handle = |u: Update, changed: &mut bool| match u {
            Update::Services(e) => *changed |= svc_cache.apply(*e),
            Update::Slices(e) => {
                match e.as_ref() {
                    watcher::Event::Apply(s) | watcher::Event::InitApply(s) => triggers.note(s),
                    watcher::Event::Delete(s) => triggers.forget(s),
                    _ => {}
                }
                *changed |= slice_cache.apply(*e)
            }
            Update::Error(e) => on_error(&e),
        };
        handle(first, &mut changed);
        // Coalesce what is already queued (a relist, a burst of edits) into one sync.
        while let Some(Some(u)) = futures::FutureExt::now_or_never(updates.next()) {
            handle(u, &mut changed);
        }
        if !changed {
            continue;
        }
        if !svc_cache.ready() || !slice_cache.ready() {
            on_pending();
            continue;
        }
        let started = Instant::now();
        let services = svc_cache.objects();
        let slices = slice_cache.objects();
        let (mut model, mut diagnostics) = translate(&services, &slices, &config.node);
        diagnostics.extend(policy::restrict_external_ips(
            &mut model,
            &config.external_ip_cidrs,
        ));
        // A restarted agent takes over the pinned maps against the first complete desired
        // state, so unchanged services are not rewritten (and keep their ids).
        if let Some(snapshot) = adopt.take() {
            reconciler.adopt(&snapshot, &model);
        }
        let report = reconciler.sync(&model, maps);
        let duration = started.elapsed();
        on_sync(&Synced {
            report,
            diagnostics,
            services: services.len(),
            slices: slices.len(),
            duration,
            programming_latencies: triggers.take(SystemTime::now()),
            health_checks: model.health_checks(),
            service_ids: reconciler.service_ids(),
            usage: reconciler.usage(),
            // dns: cluster DNS (issue 8)
            service_objects: services,
            slice_objects: slices,
            // end dns
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn annotated(name: &str, trigger: &str) -> EndpointSlice {
        serde_json::from_value(serde_json::json!({
            "metadata": {"namespace": "default", "name": name,
                "annotations": {TRIGGER_TIME_ANNOTATION: trigger}},
            "addressType": "IPv4", "endpoints": []
        }))
        .unwrap()
    }

    #[test]
    fn trigger_times_count_each_change_once_and_skip_old_ones() {
        let start: SystemTime = "2026-01-01T00:00:00Z"
            .parse::<k8s_openapi::jiff::Timestamp>()
            .unwrap()
            .into();
        let mut t = TriggerTimes::new(start);
        t.note(&annotated("old", "2025-12-31T23:59:00Z"));
        t.note(&annotated("a", "2026-01-01T00:00:01Z"));
        // A relist re-delivers the same version: not a new change.
        t.note(&annotated("a", "2026-01-01T00:00:01Z"));
        t.note(&annotated("b", "2026-01-01T00:00:01.5Z"));
        let now = start + Duration::from_secs(2);
        let mut got = t.take(now);
        got.sort();
        assert_eq!(got, [Duration::from_millis(500), Duration::from_secs(1)]);
        assert!(t.take(now).is_empty());
        t.note(&annotated("a", "2026-01-01T00:00:01.9Z"));
        assert_eq!(t.take(now), [Duration::from_millis(100)]);
    }

    fn svc(name: &str) -> Service {
        serde_json::from_value(
            serde_json::json!({"metadata": {"namespace": "default", "name": name}}),
        )
        .unwrap()
    }

    fn names(c: &Cache<Service>) -> Vec<String> {
        c.objects().iter().map(|s| s.name_any()).collect()
    }

    #[test]
    fn a_cache_is_ready_only_after_a_complete_list_and_relists_switch_atomically() {
        let mut c: Cache<Service> = Cache::default();
        assert!(!c.ready());
        c.apply(watcher::Event::Init);
        c.apply(watcher::Event::InitApply(svc("a")));
        c.apply(watcher::Event::InitApply(svc("b")));
        assert!(
            !c.ready() && names(&c).is_empty(),
            "nothing visible mid-list"
        );
        assert!(c.apply(watcher::Event::InitDone));
        assert!(c.ready());
        assert_eq!(names(&c), ["a", "b"]);
        assert!(c.apply(watcher::Event::Apply(svc("c"))));
        assert!(c.apply(watcher::Event::Delete(svc("a"))));
        // A relist (API server restart, 410): the old view stays until the new one is
        // complete, and the cache is not ready meanwhile.
        c.apply(watcher::Event::Init);
        c.apply(watcher::Event::InitApply(svc("c")));
        assert!(!c.ready());
        assert_eq!(names(&c), ["b", "c"], "old view kept while relisting");
        c.apply(watcher::Event::InitDone);
        assert_eq!(names(&c), ["c"], "b was deleted while the watch was down");
    }
}
