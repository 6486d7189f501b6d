//! The EndpointSlice controller, which also maintains the legacy `Endpoints` object
//! (upstream runs two controllers over the same inputs; one sync writing both halves the
//! pod scans).
//!
//! For every Service with a selector (any type but ExternalName; headless included) it
//! keeps the slices labelled `kubernetes.io/service-name=<svc>` and
//! `endpointslice.kubernetes.io/managed-by=endpointslice-controller.k8s.io`, and the
//! Endpoints named like the Service, in line with the selected pods. Slices without that
//! `managed-by` label (written by other controllers, agents or tests for selector-less
//! Services) are never touched, nor is `default/kubernetes` (the API server keeps its
//! endpoints itself).
//!
//! Runtime: reflectors over Services, Pods, Nodes and the managed slices feed a
//! deduplicating [`WorkQueue`] of Service keys; workers (`--concurrent-service-endpoint-syncs`)
//! run [`sync`], which reads the caches (the Service's slices and Endpoints too, checked
//! against the controller's own last writes by the [`tracker`], as upstream's
//! `EndpointSliceTracker`: a slice created a moment ago must not be created twice), runs
//! the pure planners in [`slices`] and [`endpoints`], and writes only what differs. A pod
//! event queues the Services whose selector matches it now or matched it before (a
//! relabelled pod leaves its old Service's slices).
//!
//! Cost per event at scale: the [`index`] keeps which pods each Service selects, so a
//! sync touches only its Service's pods, and a pod event matches only the Services of its
//! namespace (never a scan of every pod or every Service).

pub mod endpoints;
pub mod index;
pub mod pods;
pub mod slices;
pub mod tracker;
pub mod trigger;

use std::{
    collections::{BTreeSet, HashMap},
    sync::{Arc, Mutex},
};

use anyhow::Context as _;
use futures::StreamExt as _;
use k8s_openapi::api::{
    core::v1::{Endpoints, Node, Pod, Service},
    discovery::v1::EndpointSlice,
};
use kube::{
    api::{DeleteParams, PostParams},
    runtime::{
        reflector::{self, ObjectRef, Store},
        watcher, WatchStreamExt as _,
    },
    Api, ResourceExt as _,
};

use crate::{backoff::Backoff, events::EventType, workqueue::WorkQueue, Ctx};

/// The zone label copied into endpoints.
pub const ZONE_LABEL: &str = "topology.kubernetes.io/zone";

/// A Service's namespace and name.
type Key = (String, String);

struct Shared {
    ctx: Ctx,
    services: Store<Service>,
    pods: Store<Pod>,
    nodes: Store<Node>,
    queue: Arc<WorkQueue<Key>>,
    tracker: trigger::TriggerTimeTracker,
    backoff: Backoff,
    /// Which pods each Service selects (and back), from the events themselves.
    index: Mutex<index::Membership>,
    /// Node name → its zone label, for the nodes that have one.
    zones: Mutex<HashMap<String, String>>,
    /// The managed slices by Service, from their watch.
    slices: Mutex<tracker::SliceCache>,
    endpoints: Store<Endpoints>,
    /// Our own slice and Endpoints writes: the caches must show them before a sync plans
    /// from them, and their watch echoes queue nothing. Locked after `slices` when both
    /// are held.
    writes: Mutex<tracker::OwnWrites>,
    /// Syncs that found the caches behind our own writes (`skiff_endpointslice_deferred_syncs_total`).
    deferrals: Arc<std::sync::atomic::AtomicU64>,
}

fn key_of<K: kube::Resource>(o: &K) -> Key {
    (
        o.meta().namespace.clone().unwrap_or_default(),
        o.meta().name.clone().unwrap_or_default(),
    )
}

fn managed_selector() -> String {
    format!("{}={}", slices::LABEL_MANAGED_BY, slices::CONTROLLER_NAME)
}

pub async fn run(ctx: Ctx) -> anyhow::Result<()> {
    let client = ctx.client.clone();
    let (services, svc_writer) = reflector::store::<Service>();
    let (pods, pod_writer) = reflector::store::<Pod>();
    let (nodes, node_writer) = reflector::store::<Node>();
    let (endpoints, ep_writer) = reflector::store::<Endpoints>();
    let shared = Arc::new(Shared {
        ctx: ctx.clone(),
        services,
        pods,
        nodes,
        queue: WorkQueue::named("endpointslice"),
        tracker: Default::default(),
        backoff: Backoff::default(),
        index: Mutex::new(index::Membership::default()),
        zones: Mutex::new(HashMap::new()),
        slices: Mutex::new(tracker::SliceCache::default()),
        endpoints,
        writes: Mutex::new(tracker::OwnWrites::default()),
        deferrals: crate::metrics::counter(
            "skiff_endpointslice_deferred_syncs_total",
            "EndpointSlice syncs that found the caches behind the controller's own writes and waited for their watch events.",
        ),
    });

    let mut tasks = tokio::task::JoinSet::new();
    let svc_events = reflector::reflector(
        svc_writer,
        watcher(Api::<Service>::all(client.clone()), Default::default()),
    )
    .default_backoff();
    let s = shared.clone();
    // A relist (after a lost watch) reports no deletions: Services known before and
    // missing from it are queued so their slices and Endpoints are cleaned up. Services
    // it shows unchanged (same resourceVersion as the cache, which kube-rs replaces only
    // at the relist's end) are not synced again, as upstream's handlers skip resync
    // updates: a lost watch must not put every Service in front of the next pod change.
    let mut known: BTreeSet<Key> = BTreeSet::new();
    let mut relisted: BTreeSet<Key> = BTreeSet::new();
    let mut changed: BTreeSet<Key> = BTreeSet::new();
    tasks.spawn(consume("services", svc_events, move |ev| match ev {
        watcher::Event::Apply(o) => {
            known.insert(key_of(&o));
            s.service_changed(&o);
            s.queue.add(key_of(&o))
        }
        watcher::Event::Delete(o) => {
            known.remove(&key_of(&o));
            s.lock_index().service_deleted(&key_of(&o));
            s.queue.add(key_of(&o))
        }
        watcher::Event::Init => {
            relisted.clear();
            changed.clear();
        }
        watcher::Event::InitApply(o) => {
            relisted.insert(key_of(&o));
            if !unchanged(&s.services, &o) {
                s.service_changed(&o);
                changed.insert(key_of(&o));
            }
        }
        watcher::Event::InitDone => {
            for gone in known.difference(&relisted) {
                s.lock_index().service_deleted(gone);
                s.queue.add(gone.clone());
            }
            // Queued only now, when the cache shows the relisted objects.
            for k in std::mem::take(&mut changed) {
                s.queue.add(k);
            }
            known = std::mem::take(&mut relisted);
        }
    }));
    // Pod memberships are computed against the Services: list those first.
    shared
        .services
        .wait_until_ready()
        .await
        .context("the Service cache")?;

    let pod_events = reflector::reflector(
        pod_writer,
        watcher(Api::<Pod>::all(client.clone()), Default::default()),
    )
    .default_backoff();
    let s = shared.clone();
    // The Services of the pods a relist shows changed, queued at its end (see above).
    let mut touched: BTreeSet<Key> = BTreeSet::new();
    tasks.spawn(consume("pods", pod_events, move |ev| match ev {
        watcher::Event::Apply(p) => s.pod_changed(&p, false),
        watcher::Event::Delete(p) => s.pod_changed(&p, true),
        watcher::Event::Init => touched.clear(),
        watcher::Event::InitApply(p) => {
            if !unchanged(&s.pods, &p) {
                let ns = p.metadata.namespace.clone().unwrap_or_default();
                touched.extend(s.pod_memberships(&p).into_iter().map(|n| (ns.clone(), n)));
            }
        }
        watcher::Event::InitDone => s.pods_relisted(std::mem::take(&mut touched)),
    }));
    let node_events = reflector::reflector(
        node_writer,
        watcher(Api::<Node>::all(client.clone()), Default::default()),
    )
    .default_backoff();
    let s = shared.clone();
    tasks.spawn(consume("nodes", node_events, move |ev| match ev {
        watcher::Event::Apply(n) => s.node_changed(&n, false),
        watcher::Event::InitApply(n) => s.node_changed(&n, true),
        watcher::Event::Delete(n) => {
            let had_zone = s
                .zones
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&n.name_any())
                .is_some();
            if had_zone {
                s.queue_all();
            }
        }
        _ => {}
    }));
    // Managed slices: a slice deleted or edited by someone is put back; a slice left
    // behind by a Service deleted while this controller was down is cleaned up.
    let slice_events = watcher(
        Api::<EndpointSlice>::all(client.clone()),
        watcher::Config::default().labels(&managed_selector()),
    )
    .default_backoff();
    let (slices_synced_tx, mut slices_synced) = tokio::sync::watch::channel(false);
    let s = shared.clone();
    tasks.spawn(consume("endpointslices", slice_events, move |ev| {
        // Our own writes come back through this watch: their echo queues nothing
        // (see `tracker::OwnWrites`).
        let touched = {
            let mut c = s.slices.lock().unwrap_or_else(|e| e.into_inner());
            match ev {
                watcher::Event::Apply(sl) => s.lock_writes().slice_applied(&mut c, sl),
                watcher::Event::Delete(sl) => s.lock_writes().slice_deleted(&mut c, &sl),
                watcher::Event::Init => {
                    c.relist_started();
                    Vec::new()
                }
                watcher::Event::InitApply(sl) => {
                    c.relist_item(sl);
                    Vec::new()
                }
                watcher::Event::InitDone => {
                    let _ = slices_synced_tx.send(true);
                    let mut touched = c.relist_done();
                    let mut w = s.lock_writes();
                    w.slices.retain_present(&c.uids());
                    touched.extend(w.take_deferred());
                    touched
                }
            }
        };
        for svc in touched {
            s.queue.add(svc);
        }
    }));
    // Endpoints: the cache a sync plans the legacy object from; an event for a Service
    // this controller manages gets it another look when someone else changed it, or when
    // a sync found the cache behind our own write and waits for it; the plain echo of our
    // write queues nothing (the same rule as for slices).
    let ep_events = reflector::reflector(
        ep_writer,
        watcher(Api::<Endpoints>::all(client.clone()), Default::default()),
    )
    .default_backoff();
    let s = shared.clone();
    tasks.spawn(consume("endpoints", ep_events, move |ev| match ev {
        watcher::Event::Apply(ep) => s.endpoints_changed(&ep, false),
        watcher::Event::Delete(ep) => s.endpoints_changed(&ep, true),
        watcher::Event::InitDone => {
            let present = s
                .endpoints
                .state()
                .iter()
                .filter_map(|ep| ep.metadata.uid.clone())
                .collect();
            let deferred = {
                let mut w = s.lock_writes();
                w.endpoints.retain_present(&present);
                w.take_deferred()
            };
            // A deferred sync's echo may have come in the relist (see `take_deferred`).
            for k in deferred {
                s.queue.add(k);
            }
        }
        _ => {}
    }));

    slices_synced
        .wait_for(|synced| *synced)
        .await
        .context("the EndpointSlice cache")?;
    shared
        .endpoints
        .wait_until_ready()
        .await
        .context("the Endpoints cache")?;
    shared
        .pods
        .wait_until_ready()
        .await
        .context("the Pod cache")?;
    shared
        .nodes
        .wait_until_ready()
        .await
        .context("the Node cache")?;
    tracing::info!(
        "endpointslice controller started ({} workers, {} endpoints per slice)",
        ctx.config.concurrent_service_endpoint_syncs,
        ctx.config.max_endpoints_per_slice
    );
    for _ in 0..ctx.config.concurrent_service_endpoint_syncs.max(1) {
        let s = shared.clone();
        tasks.spawn(async move {
            loop {
                let (key, queued) = s.queue.get_timed().await;
                let started = std::time::Instant::now();
                let wall = std::time::SystemTime::now();
                let mut trace = SyncTrace::default();
                let r = sync(&s, &key, &mut trace).await;
                // The per-sync timings `skiff-controllers-bench --keep-server-log` reads:
                // time in the queue (backlog) apart from the sync itself (API writes),
                // and, for a per-sample breakdown, the wall-clock instants (µs since the
                // epoch, comparable with the benchmark's own) of the key's first add,
                // the worker taking it, the writes sent and answered, and the end.
                tracing::debug!(
                    "endpointslice: synced {} in {:?} after {queued:?} queued ({} queued now) trace: {}",
                    key_str(&key),
                    started.elapsed(),
                    s.queue.len(),
                    trace.render(started, wall, queued)
                );
                match r {
                    Ok(()) => s.backoff.succeeded(&key_str(&key)),
                    Err(e) => {
                        let delay = s.backoff.failed(&key_str(&key));
                        tracing::warn!(
                            "endpointslice: syncing {}: {e:#} (retrying in {delay:?})",
                            key_str(&key)
                        );
                        s.report_failure(&key, &e).await;
                        s.queue.add_after(key.clone(), delay);
                    }
                }
                s.queue.done(&key);
            }
        });
    }
    match tasks.join_next().await {
        Some(Ok(())) | None => anyhow::bail!("an endpointslice task ended"),
        Some(Err(e)) => anyhow::bail!("an endpointslice task panicked: {e}"),
    }
}

/// What one sync did, for its debug line: whether it deferred (caches behind our own
/// writes) and when its writes went out and were answered.
#[derive(Debug, Default)]
struct SyncTrace {
    deferred: bool,
    writes: Option<(std::time::Instant, std::time::Instant)>,
}

impl SyncTrace {
    /// `enq=<µs> deq=<µs> sent=<µs|-> answered=<µs|-> end=<µs> deferred=<bool>`, wall
    /// clock in µs since the Unix epoch, from the worker's start instant and wall time.
    fn render(
        &self,
        started: std::time::Instant,
        wall: std::time::SystemTime,
        queued: std::time::Duration,
    ) -> String {
        let base = wall
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_micros() as i128;
        let at = |i: std::time::Instant| -> i128 {
            base + if i >= started {
                i.duration_since(started).as_micros() as i128
            } else {
                -(started.duration_since(i).as_micros() as i128)
            }
        };
        let (sent, answered) = match self.writes {
            Some((a, b)) => (at(a).to_string(), at(b).to_string()),
            None => ("-".into(), "-".into()),
        };
        format!(
            "enq={} deq={base} sent={sent} answered={answered} end={} deferred={}",
            base - queued.as_micros() as i128,
            at(std::time::Instant::now()),
            self.deferred
        )
    }
}

fn key_str(k: &Key) -> String {
    format!("{}/{}", k.0, k.1)
}

/// Drives a watch stream, handing each event to `f`; watch errors are retried by the
/// stream's backoff and logged here.
async fn consume<K, S, F>(what: &'static str, stream: S, mut f: F)
where
    S: futures::Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Send,
    F: FnMut(watcher::Event<K>) + Send,
{
    let mut stream = std::pin::pin!(stream);
    while let Some(ev) = stream.next().await {
        match ev {
            Ok(ev) => f(ev),
            Err(e) => tracing::warn!("endpointslice: watching {what}: {e}"),
        }
    }
}

fn selects(svc: &Service, pod: &Pod) -> bool {
    svc.spec
        .as_ref()
        .and_then(|sp| sp.selector.as_ref())
        .is_some_and(|sel| pods::selector_matches(sel, pod.metadata.labels.as_ref()))
}

impl Shared {
    fn lock_index(&self) -> std::sync::MutexGuard<'_, index::Membership> {
        self.index.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn lock_writes(&self) -> std::sync::MutexGuard<'_, tracker::OwnWrites> {
        self.writes.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn endpoints_changed(&self, ep: &Endpoints, deleted: bool) {
        let key = key_of(ep);
        if self
            .lock_writes()
            .endpoints_event(&key, &ep.metadata, deleted)
            && self
                .services
                .get(&ObjectRef::new(&key.1).within(&key.0))
                .is_some_and(|svc| managed(&svc))
        {
            self.queue.add(key);
        }
    }

    /// The Service's cached slices and Endpoints, and whether they miss one of our own
    /// writes (then nothing may be planned from them).
    fn snapshot(&self, key: &Key) -> (Vec<Arc<EndpointSlice>>, Option<Arc<Endpoints>>, bool) {
        let cached: Vec<Arc<EndpointSlice>> = self
            .slices
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .slices_of(key);
        let current = self.endpoints.get(&ObjectRef::new(&key.1).within(&key.0));
        let seen: Vec<tracker::Seen<'_>> = cached
            .iter()
            .map(|sl| tracker::Seen::of(&sl.metadata))
            .collect();
        let ep_seen: Vec<tracker::Seen<'_>> = current
            .iter()
            .map(|ep| tracker::Seen::of(&ep.metadata))
            .collect();
        let behind = self.lock_writes().stale(key, &seen, &ep_seen);
        (cached, current, behind)
    }

    /// Queues the Services `pod` matches now and those it matched before: only those,
    /// from the index, never a scan of every Service.
    fn pod_changed(&self, pod: &Pod, deleted: bool) {
        let ns = pod.metadata.namespace.clone().unwrap_or_default();
        let services = if deleted {
            self.lock_index().pod_deleted(&key_of(pod))
        } else {
            self.pod_memberships(pod)
        };
        for svc in services {
            self.queue.add((ns.clone(), svc));
        }
    }

    /// Updates the index for a changed pod; returns the names of the Services (of its
    /// namespace) that select it now or did before.
    fn pod_memberships(&self, pod: &Pod) -> BTreeSet<String> {
        let labels = pod.metadata.labels.clone().unwrap_or_default();
        let (now, before) = self.lock_index().pod_changed(&key_of(pod), labels);
        now.union(&before).cloned().collect()
    }

    /// A Service appeared or changed (maybe its selector): rematch its namespace's pods.
    fn service_changed(&self, svc: &Service) {
        let selector = svc.spec.as_ref().and_then(|sp| sp.selector.clone());
        self.lock_index().service_changed(&key_of(svc), selector);
    }

    /// After a relist (which reports no deletions): pods that vanished leave their
    /// Services; the Services of pods that changed (`touched`) are synced now that the
    /// cache shows the relisted pods.
    fn pods_relisted(&self, touched: BTreeSet<Key>) {
        let present: BTreeSet<Key> = self
            .pods
            .state()
            .iter()
            .map(|p| key_of(p.as_ref()))
            .collect();
        let gone: Vec<(Key, BTreeSet<String>)> = {
            let mut idx = self.lock_index();
            idx.pod_keys()
                .into_iter()
                .filter(|k| !present.contains(k))
                .map(|k| {
                    let services = idx.pod_deleted(&k);
                    (k, services)
                })
                .collect()
        };
        let vanished = gone.len();
        let mut keys = touched;
        for ((ns, _), services) in gone {
            keys.extend(services.into_iter().map(|svc| (ns.clone(), svc)));
        }
        tracing::info!(
            "endpointslice: pods listed ({} present, {vanished} gone since the last list); syncing the {} Services they changed",
            present.len(),
            keys.len()
        );
        for k in keys {
            self.queue.add(k);
        }
    }

    /// A node's zone changed: the endpoints of its pods carry the zone.
    fn node_changed(&self, node: &Node, initial: bool) {
        let zone = node.labels().get(ZONE_LABEL).cloned();
        let name = node.name_any();
        let prev = {
            let mut zones = self.zones.lock().unwrap_or_else(|e| e.into_inner());
            match &zone {
                Some(z) => zones.insert(name, z.clone()),
                None => zones.remove(&name),
            }
        };
        if !initial && prev != zone {
            self.queue_all();
        }
    }

    fn queue_all(&self) {
        for s in self.services.state() {
            self.queue.add(key_of(s.as_ref()));
        }
    }

    /// A Warning Event on the Service for a failed sync (not for write conflicts, the
    /// ordinary race with another writer that the retry resolves).
    async fn report_failure(&self, key: &Key, e: &anyhow::Error) {
        let conflict = e.chain().any(|c| {
            matches!(c.downcast_ref::<kube::Error>(), Some(kube::Error::Api(s)) if s.code == 409)
        });
        if conflict {
            return;
        }
        if let Some(svc) = self.services.get(&ObjectRef::new(&key.1).within(&key.0)) {
            self.ctx
                .events
                .publish(
                    svc.as_ref(),
                    EventType::Warning,
                    "FailedToUpdateEndpointSlices",
                    &format!(
                        "Error updating Endpoint Slices for Service {}: {e:#}",
                        key_str(key)
                    ),
                )
                .await;
        }
    }
}

/// Whether a relisted object is the one the cache holds (same resourceVersion): kube-rs
/// swaps a relist into the cache only at its end, so during it the cache is the old state.
fn unchanged<K>(cache: &Store<K>, o: &K) -> bool
where
    K: kube::Resource<DynamicType = ()> + Clone + 'static,
{
    o.meta().resource_version.is_some()
        && cache
            .get(&ObjectRef::from_obj(o))
            .is_some_and(|c| c.meta().resource_version == o.meta().resource_version)
}

/// Whether the controller maintains endpoints for `svc`.
fn managed(svc: &Service) -> bool {
    let Some(spec) = svc.spec.as_ref() else {
        return false;
    };
    spec.selector.is_some() && spec.type_.as_deref() != Some("ExternalName")
}

/// Makes one Service's slices and Endpoints match its pods.
async fn sync(s: &Shared, key: &Key, trace: &mut SyncTrace) -> anyhow::Result<()> {
    let (ns, name) = key;
    if ns == "default" && name == "kubernetes" {
        return Ok(()); // the API server's own (bootstrap endpoint reconciler)
    }
    let client = s.ctx.client.clone();
    let slice_api: Api<EndpointSlice> = Api::namespaced(client.clone(), ns);
    let ep_api: Api<Endpoints> = Api::namespaced(client, ns);
    let (cached, current, behind) = s.snapshot(key);
    if behind {
        // Our last write is not in the cache yet. Its watch event queues this Service
        // again (upstream returns a "stale informer cache" error and retries instead):
        // marked deferred so that echo is not skipped. An event that arrived between the
        // snapshot and the mark found no mark, but its cache update is visible now, so a
        // second look decides.
        s.lock_writes().defer(key);
        trace.deferred = true;
        s.deferrals
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if !s.snapshot(key).2 {
            s.lock_writes().undefer(key);
            s.queue.add(key.clone());
        }
        tracing::debug!(
            "endpointslice: {}: cache behind our last write, waiting for it",
            key_str(key)
        );
        return Ok(());
    }
    let existing: Vec<EndpointSlice> = cached.iter().map(|sl| sl.as_ref().clone()).collect();
    let svc = s.services.get(&ObjectRef::new(name).within(ns));
    let Some(svc) = svc.filter(|svc| managed(svc)) else {
        s.tracker.delete_service(ns, name);
        for sl in &existing {
            delete_slice(s, &slice_api, sl, key).await?;
        }
        if s.services.get(&ObjectRef::new(name).within(ns)).is_none() {
            // The Service is gone: so is its Endpoints (upstream's endpoints controller).
            // A Service that only lost its selector keeps it, now user-managed.
            match ep_api.delete(name, &DeleteParams::default()).await {
                Ok(_) => {
                    if let Some(uid) = current.as_ref().and_then(|ep| ep.metadata.uid.as_deref()) {
                        s.lock_writes().endpoints.deleted(key, uid);
                    }
                    tracing::info!("endpoints: deleted {} with its Service", key_str(key))
                }
                Err(kube::Error::Api(e)) if e.code == 404 => {}
                Err(e) => return Err(e).context("deleting the Endpoints"),
            }
        }
        return Ok(());
    };

    // The index's members, re-checked against the cached pods (the index may name a pod
    // deleted a moment ago; its event queues this Service again anyway).
    let member_pods: Vec<Arc<Pod>> = s
        .lock_index()
        .members(key)
        .iter()
        .filter_map(|n| s.pods.get(&ObjectRef::new(n).within(ns)))
        .filter(|p| selects(&svc, p))
        .collect();
    let selected: Vec<&Pod> = member_pods.iter().map(|p| p.as_ref()).collect();
    let trigger = s.tracker.compute(&svc, &selected);
    let plan = {
        let zones = s.zones.lock().unwrap_or_else(|e| e.into_inner());
        slices::plan(&slices::Inputs {
            service: &svc,
            pods: &selected,
            node_zones: &zones,
            existing: &existing,
            max_endpoints_per_slice: s.ctx.config.max_endpoints_per_slice,
            trigger_time: trigger.as_ref(),
        })
    };
    // The slices and the legacy Endpoints are independent objects (upstream writes them
    // from two controllers): both go out at once, so a sync costs one write round trip,
    // not two.
    let endpoints = endpoints::plan(&svc, &selected, current.as_deref(), trigger.as_ref());
    let writes = !(plan.create.is_empty()
        && plan.update.is_empty()
        && plan.delete.is_empty()
        && endpoints.is_none());
    let sent = std::time::Instant::now();
    let (slices_written, endpoints_written) = tokio::join!(
        write_slices(s, &slice_api, key, &plan),
        write_endpoints(s, &ep_api, key, endpoints, current.is_some()),
    );
    if writes {
        trace.writes = Some((sent, std::time::Instant::now()));
    }
    slices_written.and(endpoints_written)
}

/// Writes a slice plan: creates, then updates, then deletes, so an endpoint moving
/// between slices is never missing from all of them.
async fn write_slices(
    s: &Shared,
    slice_api: &Api<EndpointSlice>,
    key: &Key,
    plan: &slices::Plan,
) -> anyhow::Result<()> {
    let ns = &key.0;
    for sl in &plan.create {
        let created = slice_api
            .create(&PostParams::default(), sl)
            .await
            .context("creating an EndpointSlice")?;
        s.lock_writes().slices.written(key, &created.metadata);
        tracing::info!(
            "endpointslice: created {}/{} for Service {} ({} endpoints)",
            ns,
            created.name_any(),
            key_str(key),
            created.endpoints.len()
        );
    }
    for sl in &plan.update {
        let n = sl.name_any();
        let updated = slice_api
            .replace(&n, &PostParams::default(), sl)
            .await
            .with_context(|| format!("updating the EndpointSlice {n}"))?;
        s.lock_writes().slices.written(key, &updated.metadata);
        tracing::info!(
            "endpointslice: updated {ns}/{n} for Service {} ({} endpoints)",
            key_str(key),
            sl.endpoints.len()
        );
    }
    for sl in &plan.delete {
        delete_slice(s, slice_api, sl, key).await?;
    }
    Ok(())
}

/// Writes the legacy Endpoints `ep` planned (None: already right).
async fn write_endpoints(
    s: &Shared,
    ep_api: &Api<Endpoints>,
    key: &Key,
    ep: Option<Endpoints>,
    exists: bool,
) -> anyhow::Result<()> {
    let Some(ep) = ep else { return Ok(()) };
    let name = &key.1;
    let n_addr: usize = ep
        .subsets
        .iter()
        .flatten()
        .map(|s| {
            s.addresses.as_ref().map_or(0, Vec::len)
                + s.not_ready_addresses.as_ref().map_or(0, Vec::len)
        })
        .sum();
    let written = if exists {
        ep_api
            .replace(name, &PostParams::default(), &ep)
            .await
            .context("updating the Endpoints")?
    } else {
        ep_api
            .create(&PostParams::default(), &ep)
            .await
            .context("creating the Endpoints")?
    };
    s.lock_writes().endpoints.written(key, &written.metadata);
    tracing::info!(
        "endpoints: {} {} ({n_addr} addresses)",
        if exists { "updated" } else { "created" },
        key_str(key)
    );
    Ok(())
}

async fn delete_slice(
    s: &Shared,
    api: &Api<EndpointSlice>,
    sl: &EndpointSlice,
    key: &Key,
) -> anyhow::Result<()> {
    let n = sl.name_any();
    match api.delete(&n, &DeleteParams::default()).await {
        Ok(_) => {
            if let Some(uid) = sl.metadata.uid.as_deref() {
                s.lock_writes().slices.deleted(key, uid);
            }
            tracing::info!(
                "endpointslice: deleted {}/{n} of Service {}",
                key.0,
                key_str(key)
            );
            Ok(())
        }
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
        Err(e) => Err(e).with_context(|| format!("deleting the EndpointSlice {n}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relisted_objects_at_the_cached_resource_version_are_unchanged() {
        let (store, mut writer) = reflector::store::<Pod>();
        let mut p = Pod::default();
        p.metadata.name = Some("a".into());
        p.metadata.namespace = Some("ns".into());
        p.metadata.resource_version = Some("5".into());
        assert!(!unchanged(&store, &p), "not cached yet: a change");
        writer.apply_watcher_event(&watcher::Event::Apply(p.clone()));
        assert!(unchanged(&store, &p));
        let mut newer = p.clone();
        newer.metadata.resource_version = Some("6".into());
        assert!(!unchanged(&store, &newer));
        p.metadata.resource_version = None;
        assert!(
            !unchanged(&store, &p),
            "no resourceVersion: never assumed equal"
        );
    }
}
