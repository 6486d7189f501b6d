//! Service sync from the API: list-watch Services and EndpointSlices with kube-rs (so the
//! agent runs against skiff's control plane and against any conformant API server), keep
//! complete caches of their *projections* (what the model needs, not the objects), and
//! reprogram the datapath from them.
//!
//! The rule that matters: nothing is reprogrammed — so nothing is deleted — until every
//! watcher has completed its initial list, and again after every relist (API server
//! restart, 410 Gone) until that relist is complete. A cache switches to a relisted set
//! atomically at `InitDone` (kube-rs' watcher state machine), never object by object, so
//! a half-listed cache never black-holes a service.
//!
//! Cost per change: a watch event for one Service or EndpointSlice marks its Service
//! dirty; the next sync recomputes only the dirty Services' model entries and reconciles
//! only their service groups ([`Reconciler::sync_services`]), so a change costs the same
//! at 10 Services or 10 000 (kube-proxy's serviceChanges/endpointsChanges trackers). The
//! full rebuild + reconcile runs for the first complete list, after every relist, and
//! every `full_resync` as a check that the incremental path left nothing behind.

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt::Debug,
    net::Ipv4Addr,
    sync::Arc,
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
    model::{HealthCheck, Model, ServicePortName},
    policy,
    reconcile::{MapUsage, Reconciler, SyncReport},
    translate::{
        parse_slice, service_ports, slice_service_key, translate_service, Diagnostic, NodeContext,
        ParsedSlice, TranslatedService,
    },
};

/// The EndpointSlice annotation the endpoints controller sets to when the change that
/// produced this version of the slice happened (a Pod or Service update).
pub const TRIGGER_TIME_ANNOTATION: &str = "endpoints.kubernetes.io/last-change-trigger-time";

/// `(namespace, name)` of an object. Shared strings: the sync interns them
/// ([`Interner`]), so the caches' keys, the slice → Service index, the dirty set and the
/// model's names of one Service all point at one copy of its namespace and name.
pub type Key = (Arc<str>, Arc<str>);

/// One shared copy of each namespace and Service name the sync holds (agent memory,
/// issue 7: at 10k Services the per-cache copies were ~10 separate small allocations per
/// Service). Entries nothing else holds any more are dropped by [`Interner::prune`].
#[derive(Debug, Default)]
pub struct Interner(std::collections::HashSet<Arc<str>>);

impl Interner {
    /// The shared copy of `s`.
    pub fn get(&mut self, s: &str) -> Arc<str> {
        if let Some(a) = self.0.get(s) {
            return a.clone();
        }
        let a: Arc<str> = s.into();
        self.0.insert(a.clone());
        a
    }

    /// Forgets the strings only the interner still holds.
    pub fn prune(&mut self) {
        self.0.retain(|a| Arc::strong_count(a) > 1);
        self.0.shrink_to_fit();
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// A complete view of one kind, as projections `V` of its objects, switched atomically
/// on relists.
#[derive(Debug)]
pub struct Cache<V> {
    objects: BTreeMap<Key, V>,
    /// Objects of a list in progress; `Some` between `Init` and `InitDone`.
    relist: Option<BTreeMap<Key, V>>,
    /// A complete list has been seen and no relist is in progress.
    ready: bool,
}

impl<V> Default for Cache<V> {
    fn default() -> Self {
        Cache {
            objects: BTreeMap::new(),
            relist: None,
            ready: false,
        }
    }
}

/// What one watcher event did to a [`Cache`]'s visible contents.
#[derive(Debug)]
pub enum Applied<V> {
    /// Nothing visible changed (a list in progress, a delete of an unknown object).
    Nothing,
    /// A list completed: the whole view was replaced.
    Relisted,
    /// One object was added or changed; the projection it replaced, if any.
    Upserted(Key, Option<V>),
    /// One object was deleted; its projection.
    Deleted(Key, V),
}

impl<V> Applied<V> {
    pub fn changed(&self) -> bool {
        !matches!(self, Applied::Nothing)
    }
}

fn key<K: kube::Resource>(o: &K) -> Key {
    (
        o.namespace().unwrap_or_default().into(),
        o.name_any().into(),
    )
}

impl<V> Cache<V> {
    /// Applies a watcher event, keeping `project(object)` instead of the object.
    pub fn apply<K: kube::Resource>(
        &mut self,
        event: watcher::Event<K>,
        project: impl FnMut(K) -> V,
    ) -> Applied<V> {
        self.apply_keyed(event, key, project)
    }

    /// [`Cache::apply`] with the objects' keys made by `key` (an interning one).
    pub fn apply_keyed<K: kube::Resource>(
        &mut self,
        event: watcher::Event<K>,
        mut key: impl FnMut(&K) -> Key,
        mut project: impl FnMut(K) -> V,
    ) -> Applied<V> {
        match event {
            watcher::Event::Init => {
                self.relist = Some(BTreeMap::new());
                self.ready = false;
                Applied::Nothing
            }
            watcher::Event::InitApply(o) => {
                if let Some(r) = self.relist.as_mut() {
                    r.insert(key(&o), project(o));
                }
                Applied::Nothing
            }
            watcher::Event::InitDone => {
                if let Some(r) = self.relist.take() {
                    // Rebuilt from the sorted entries, so every node is full: a list
                    // arrives in key order, and B-tree inserts in ascending order leave
                    // every node half empty (agent memory, issue 7).
                    self.objects = r.into_iter().collect();
                }
                self.ready = true;
                Applied::Relisted
            }
            watcher::Event::Apply(o) => {
                let k = key(&o);
                let old = self.objects.insert(k.clone(), project(o));
                Applied::Upserted(k, old)
            }
            watcher::Event::Delete(o) => {
                let k = key(&o);
                match self.objects.remove(&k) {
                    Some(old) => Applied::Deleted(k, old),
                    None => Applied::Nothing,
                }
            }
        }
    }

    pub fn ready(&self) -> bool {
        self.ready
    }

    /// The visible projection of one object (the last complete view while relisting).
    pub fn get(&self, key: &Key) -> Option<&V> {
        self.objects.get(key)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&Key, &V)> {
        self.objects.iter()
    }

    pub fn len(&self) -> usize {
        self.objects.len()
    }

    pub fn is_empty(&self) -> bool {
        self.objects.is_empty()
    }

    pub fn objects(&self) -> Vec<V>
    where
        V: Clone,
    {
        self.objects.values().cloned().collect()
    }
}

/// The result of one reprogramming.
#[derive(Debug)]
pub struct Synced {
    pub report: SyncReport,
    /// Diagnostics of what this sync translated: every object for a full sync, the changed
    /// Services (with their slices) for an incremental one.
    pub diagnostics: Vec<Diagnostic>,
    /// Services and EndpointSlices in the caches.
    pub services: usize,
    pub slices: usize,
    /// Every Service was rebuilt and reconciled (first list, relist, periodic resync);
    /// otherwise only `changed` ones.
    pub full: bool,
    /// Services this sync recomputed.
    pub changed: usize,
    /// Translate + reconcile time.
    pub duration: Duration,
    /// Network programming latency of each EndpointSlice change this sync applied: now −
    /// its trigger-time annotation (kube-proxy's rule: changes without the annotation, and
    /// changes older than the watch, are not measured).
    pub programming_latencies: Vec<Duration>,
    /// The healthCheckNodePorts this node serves, with their local endpoint counts.
    pub health_checks: Vec<HealthCheck>,
    /// Programmed service ports (reconciler groups, `<port>#local` for Local policies) and
    /// their service ids, as the per-service counters are keyed; `None` when the set did
    /// not change since the previous sync (an endpoint change, the common case).
    pub service_ids: Option<Vec<(ServicePortName, u32)>>,
    /// Entries the reconciler holds in each map.
    pub usage: MapUsage,
    // dns: cluster DNS (issue 8)
    /// The complete caches this sync programmed, for consumers that answer from the same
    /// view (the node-local DNS server) without a watch of their own. Reduced to the
    /// fields the zone reads, and empty unless [`SyncConfig::keep_dns_objects`] and
    /// `dns_changed`.
    pub service_objects: Vec<Service>,
    pub slice_objects: Vec<EndpointSlice>,
    // agent sync scale (issue 7)
    /// Something the DNS zone reads changed since the previous sync (always on the first):
    /// only then are the objects above filled, so an endpoint change of a ClusterIP
    /// Service does not rebuild a zone of every Service.
    pub dns_changed: bool,
    // end agent sync scale
    // end dns
}

/// The trigger-time annotation of a slice, parsed (`None`: absent or malformed).
pub fn trigger_time(slice: &EndpointSlice) -> Option<SystemTime> {
    let value = slice.annotations().get(TRIGGER_TIME_ANNOTATION)?;
    let t = value.parse::<k8s_openapi::jiff::Timestamp>().ok()?;
    Some(SystemTime::from(t))
}

/// Pending EndpointSlice trigger times between syncs (kube-proxy's
/// EndpointsChangeTracker.lastChangeTriggerTimes). The last trigger time seen per slice
/// lives in the slice cache, so a relist that re-delivers a version is not a new change.
#[derive(Debug)]
pub struct TriggerTimes {
    start: SystemTime,
    pending: Vec<SystemTime>,
}

impl TriggerTimes {
    pub fn new(start: SystemTime) -> TriggerTimes {
        TriggerTimes {
            start,
            pending: Vec::new(),
        }
    }

    /// A slice version with trigger time `new` replaces one with `seen`: a trigger time
    /// not seen before for this slice, and later than the watch's start, is pending until
    /// the next sync.
    pub fn note(&mut self, seen: Option<SystemTime>, new: Option<SystemTime>) {
        let Some(t) = new else {
            return;
        };
        if seen != Some(t) && t > self.start {
            self.pending.push(t);
        }
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
#[derive(Debug, Clone, Default)]
pub struct SyncConfig {
    pub node: NodeContext,
    /// ExternalIPs inside these ranges are programmed, others reported (CVE-2020-8554).
    pub external_ip_cidrs: Vec<(Ipv4Addr, u8)>,
    // agent sync scale (issue 7)
    /// Keep reduced Service/EndpointSlice objects for [`Synced::service_objects`] (the
    /// node-local DNS server). Off: only the model's projections are held.
    pub keep_dns_objects: bool,
    /// How often every Service is rebuilt and reconciled although nothing relisted (a
    /// check of the incremental path; a correct one makes it write nothing). Zero: never.
    pub full_resync: Duration,
    // end agent sync scale
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

/// What the sync keeps per Service.
#[derive(Debug)]
struct ServiceEntry {
    /// `None`: not programmed (headless, ExternalName, another proxy's, invalid).
    translated: Option<TranslatedService>,
    diagnostics: Vec<Diagnostic>,
    dns: Option<Box<Service>>,
}

/// What the sync keeps per EndpointSlice.
#[derive(Debug)]
struct SliceEntry {
    /// The Service it belongs to (`None`: unlabelled, headless, another proxy's).
    service: Option<Key>,
    /// `None`: not an IPv4 slice.
    parsed: Option<ParsedSlice>,
    diagnostics: Vec<Diagnostic>,
    trigger: Option<SystemTime>,
    dns: Option<Box<EndpointSlice>>,
}

/// A Service with only the fields the DNS zone reads (`skiff_dns::Zone::build`).
fn dns_service(svc: &Service) -> Service {
    use k8s_openapi::api::core::v1::{ServicePort, ServiceSpec};
    let spec = svc.spec.as_ref().map(|s| ServiceSpec {
        type_: s.type_.clone(),
        external_name: s.external_name.clone(),
        cluster_ip: s.cluster_ip.clone(),
        cluster_ips: s.cluster_ips.clone(),
        ports: s.ports.as_ref().map(|ps| {
            ps.iter()
                .map(|p| ServicePort {
                    name: p.name.clone(),
                    port: p.port,
                    protocol: p.protocol.clone(),
                    ..Default::default()
                })
                .collect()
        }),
        ..Default::default()
    });
    Service {
        metadata: kube::api::ObjectMeta {
            namespace: svc.metadata.namespace.clone(),
            name: svc.metadata.name.clone(),
            ..Default::default()
        },
        spec,
        status: None,
    }
}

/// An EndpointSlice with only the fields the DNS zone reads.
fn dns_slice(slice: &EndpointSlice) -> EndpointSlice {
    use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions};
    EndpointSlice {
        metadata: kube::api::ObjectMeta {
            namespace: slice.metadata.namespace.clone(),
            name: slice.metadata.name.clone(),
            labels: slice.metadata.labels.as_ref().map(|l| {
                l.iter()
                    .filter(|(k, _)| *k == crate::translate::LABEL_SERVICE_NAME)
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect()
            }),
            ..Default::default()
        },
        address_type: slice.address_type.clone(),
        endpoints: slice
            .endpoints
            .iter()
            .map(|e| Endpoint {
                addresses: e.addresses.clone(),
                hostname: e.hostname.clone(),
                conditions: e.conditions.as_ref().map(|c| EndpointConditions {
                    ready: c.ready,
                    ..Default::default()
                }),
                ..Default::default()
            })
            .collect(),
        ports: slice.ports.clone(),
    }
}

// agent sync scale (issue 7)
/// Whether the DNS zone reads a Service's EndpointSlices: headless Services publish their
/// ready endpoints; ClusterIP Services their ClusterIP and ports only, ExternalName a CNAME
/// (`skiff_dns::Zone::build`).
fn dns_uses_slices(svc: &Service) -> bool {
    svc.spec.as_ref().is_some_and(|s| {
        s.type_.as_deref() != Some("ExternalName") && s.cluster_ip.as_deref() == Some("None")
    })
}

/// `(namespace, name)` of an object, through `names`.
fn interned_key<K: kube::Resource>(names: &mut Interner, o: &K) -> Key {
    (
        names.get(&o.namespace().unwrap_or_default()),
        names.get(&o.name_any()),
    )
}

/// The Service a DNS slice projection belongs to (its service-name label).
fn dns_slice_service(slice: &EndpointSlice) -> Option<Key> {
    let ns = slice.metadata.namespace.clone()?;
    let name = slice
        .metadata
        .labels
        .as_ref()?
        .get(crate::translate::LABEL_SERVICE_NAME)?
        .clone();
    Some((ns.into(), name.into()))
}
// end agent sync scale

/// A sorted set of names without spare capacity: a Service has one slice or a few, and
/// a `BTreeSet` allocates an 11-entry node for one (agent memory, issue 7).
#[derive(Debug, Default)]
struct NameSet(Vec<Arc<str>>);

impl NameSet {
    fn insert(&mut self, name: Arc<str>) {
        if let Err(i) = self.0.binary_search(&name) {
            self.0.reserve_exact(1);
            self.0.insert(i, name);
        }
    }

    fn remove(&mut self, name: &Arc<str>) {
        if let Ok(i) = self.0.binary_search(name) {
            self.0.remove(i);
        }
    }

    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl<'a> IntoIterator for &'a NameSet {
    type Item = &'a Arc<str>;
    type IntoIter = std::slice::Iter<'a, Arc<str>>;

    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}

/// The caches and the model derived from them.
struct State {
    config: SyncConfig,
    services: Cache<ServiceEntry>,
    slices: Cache<SliceEntry>,
    /// Slice names per Service, over the visible slice cache.
    slices_of: BTreeMap<Key, NameSet>,
    /// Namespaces and Service names (agent memory, issue 7).
    names: Interner,
    model: Model,
    /// Services changed since the last sync.
    dirty: BTreeSet<Key>,
    /// A list completed since the last sync: rebuild everything.
    full: bool,
    triggers: TriggerTimes,
    /// Something the DNS zone reads changed since the last sync (agent sync scale, #7).
    dns_changed: bool,
}

impl State {
    fn new(config: SyncConfig) -> State {
        State {
            config,
            services: Cache::default(),
            slices: Cache::default(),
            slices_of: BTreeMap::new(),
            names: Interner::default(),
            model: Model::default(),
            dirty: BTreeSet::new(),
            full: false,
            triggers: TriggerTimes::new(SystemTime::now()),
            dns_changed: false,
        }
    }

    fn ready(&self) -> bool {
        self.services.ready() && self.slices.ready()
    }

    /// Applies one watch event; returns whether anything visible changed.
    fn apply_service(&mut self, event: watcher::Event<Service>) -> bool {
        let node = &self.config.node;
        let dns = self.config.keep_dns_objects;
        let names = std::cell::RefCell::new(&mut self.names);
        let key = |o: &Service| interned_key(&mut names.borrow_mut(), o);
        let applied = self.services.apply_keyed(event, key, |svc| {
            let mut diagnostics = Vec::new();
            let mut translated = translate_service(&svc, node, &mut diagnostics);
            // The model's names of this Service share the cache key's strings.
            if let Some(t) = translated.as_mut() {
                let mut names = names.borrow_mut();
                t.namespace = names.get(&t.namespace);
                t.name = names.get(&t.name);
            }
            ServiceEntry {
                translated,
                diagnostics,
                dns: dns.then(|| Box::new(dns_service(&svc))),
            }
        });
        match &applied {
            Applied::Nothing => {}
            Applied::Relisted => self.full = true,
            Applied::Upserted(k, _) | Applied::Deleted(k, _) => {
                self.dirty.insert(k.clone());
            }
        }
        // agent sync scale (issue 7): only a change of what the zone reads rebuilds it.
        self.dns_changed |= match &applied {
            Applied::Nothing => false,
            Applied::Relisted => true,
            Applied::Upserted(k, old) => {
                old.as_ref().and_then(|o| o.dns.as_deref())
                    != self.services.get(k).and_then(|e| e.dns.as_deref())
            }
            Applied::Deleted(_, old) => old.dns.is_some(),
        };
        // end agent sync scale
        applied.changed()
    }

    // agent sync scale (issue 7)
    /// Whether the zone reads the slices of the Service a slice projection names.
    fn dns_reads_slice(&self, slice: Option<&EndpointSlice>) -> bool {
        slice
            .and_then(dns_slice_service)
            .and_then(|svc| self.services.get(&svc))
            .and_then(|e| e.dns.as_deref())
            .is_some_and(dns_uses_slices)
    }
    // end agent sync scale

    fn apply_slice(&mut self, event: watcher::Event<EndpointSlice>) -> bool {
        // Trigger times: a version not seen before (against the visible view, which a
        // relist re-delivers) is a change to measure.
        if let watcher::Event::Apply(s) | watcher::Event::InitApply(s) = &event {
            let seen = self.slices.get(&key(s)).and_then(|e| e.trigger);
            self.triggers.note(seen, trigger_time(s));
        }
        let node = &self.config.node;
        let dns = self.config.keep_dns_objects;
        let names = std::cell::RefCell::new(&mut self.names);
        let applied = self.slices.apply_keyed(
            event,
            |o: &EndpointSlice| {
                let mut names = names.borrow_mut();
                // Slice names are unique: only the namespace is shared.
                (
                    names.get(&o.namespace().unwrap_or_default()),
                    o.name_any().into(),
                )
            },
            |slice| {
                let mut diagnostics = Vec::new();
                let service = slice_service_key(&slice).map(|(ns, name)| {
                    let mut names = names.borrow_mut();
                    (names.get(&ns), names.get(&name))
                });
                // Slices of no Service are never parsed (nor diagnosed), as in `translate`.
                let parsed = service
                    .as_ref()
                    .and_then(|_| parse_slice(&slice, node, &mut diagnostics));
                SliceEntry {
                    service,
                    parsed,
                    diagnostics,
                    trigger: trigger_time(&slice),
                    dns: dns.then(|| Box::new(dns_slice(&slice))),
                }
            },
        );
        match &applied {
            Applied::Nothing => {}
            Applied::Relisted => {
                self.full = true;
                // Built from sorted pairs in one go: inserted one by one (in slice order,
                // which is close to Service order) the B-tree's nodes end up half empty,
                // 1.1 MB instead of 0.6 at 10k Services (agent memory, issue 7).
                let mut pairs: Vec<(Key, Arc<str>)> = self
                    .slices
                    .iter()
                    .filter_map(|((_, name), e)| Some((e.service.clone()?, name.clone())))
                    .collect();
                pairs.sort_unstable();
                let mut index: Vec<(Key, NameSet)> = Vec::new();
                for (svc, name) in pairs {
                    match index.last_mut() {
                        Some((last, set)) if *last == svc => set.0.push(name),
                        _ => index.push((svc, NameSet(vec![name]))),
                    }
                }
                for (_, set) in &mut index {
                    set.0.shrink_to_fit();
                }
                self.slices_of = index.into_iter().collect();
            }
            Applied::Upserted((_, name), old) => {
                if let Some(svc) = old.as_ref().and_then(|o| o.service.clone()) {
                    self.unindex(&svc, name);
                    self.dirty.insert(svc);
                }
            }
            Applied::Deleted((_, name), old) => {
                if let Some(svc) = old.service.clone() {
                    self.unindex(&svc, name);
                    self.dirty.insert(svc);
                }
            }
        }
        if let Applied::Upserted(k, _) = &applied {
            if let Some(svc) = self.slices.get(k).and_then(|e| e.service.clone()) {
                self.slices_of
                    .entry(svc.clone())
                    .or_default()
                    .insert(k.1.clone());
                self.dirty.insert(svc);
            }
        }
        // agent sync scale (issue 7): a slice matters to the zone only for a headless
        // Service (old or new owner: a slice can move between Services).
        self.dns_changed |= match &applied {
            Applied::Nothing => false,
            Applied::Relisted => true,
            Applied::Upserted(k, old) => {
                let old = old.as_ref().and_then(|o| o.dns.as_deref());
                let new = self.slices.get(k).and_then(|e| e.dns.as_deref());
                old != new && (self.dns_reads_slice(old) || self.dns_reads_slice(new))
            }
            Applied::Deleted(_, old) => self.dns_reads_slice(old.dns.as_deref()),
        };
        // end agent sync scale
        applied.changed()
    }

    fn unindex(&mut self, svc: &Key, slice: &Arc<str>) {
        if let Some(set) = self.slices_of.get_mut(svc) {
            set.remove(slice);
            if set.is_empty() {
                self.slices_of.remove(svc);
            }
        }
    }

    /// The model entries of one Service from the caches, with the diagnostics of the
    /// Service, of its slices and of the node's policies.
    fn service_model(&self, svc: &Key, diagnostics: &mut Vec<Diagnostic>) -> Model {
        let mut model = Model::default();
        let Some(entry) = self.services.get(svc) else {
            return model;
        };
        diagnostics.extend(entry.diagnostics.iter().cloned());
        let Some(translated) = &entry.translated else {
            return model;
        };
        let mut parsed: Vec<&ParsedSlice> = Vec::new();
        for name in self.slices_of.get(svc).into_iter().flatten() {
            let Some(e) = self.slices.get(&(svc.0.clone(), name.clone())) else {
                continue;
            };
            diagnostics.extend(e.diagnostics.iter().cloned());
            parsed.extend(e.parsed.as_ref());
        }
        model.services.extend(service_ports(translated, &parsed));
        diagnostics.extend(policy::restrict_external_ips(
            &mut model,
            &self.config.external_ip_cidrs,
        ));
        model
    }

    /// Rebuilds the whole model from the caches.
    fn rebuild_all(&mut self) -> Vec<Diagnostic> {
        let mut diagnostics = Vec::new();
        // One bulk build from all entries (sorted, so every B-tree node is full), not an
        // `append` per Service: `BTreeMap::append` merges both maps into a new tree, so
        // appending 10k Services one by one moved O(n²) entries (agent sync, issue 7).
        let mut entries = Vec::new();
        for k in self.services.iter().map(|(k, _)| k) {
            entries.extend(self.service_model(k, &mut diagnostics).services);
        }
        self.model = Model {
            services: entries.into_iter().collect(),
        };
        diagnostics
    }

    /// Replaces the model entries of `svc` with what the caches say now.
    fn rebuild(&mut self, svc: &Key, diagnostics: &mut Vec<Diagnostic>) {
        let stale: Vec<ServicePortName> = ports_of(&self.model, svc).cloned().collect();
        for n in stale {
            self.model.services.remove(&n);
        }
        // Inserted one by one: `append` would rebuild the whole model's tree, an O(n)
        // move and a fresh allocation of every node on each change (agent sync, issue 7).
        let fresh = self.service_model(svc, diagnostics);
        self.model.services.extend(fresh.services);
    }

    /// The DNS view of the caches (empty unless `keep_dns_objects`).
    fn dns_objects(&self) -> (Vec<Service>, Vec<EndpointSlice>) {
        if !self.config.keep_dns_objects {
            return (Vec::new(), Vec::new());
        }
        (
            self.services
                .iter()
                .filter_map(|(_, e)| e.dns.as_deref().cloned())
                .collect(),
            self.slices
                .iter()
                .filter_map(|(_, e)| e.dns.as_deref().cloned())
                .collect(),
        )
    }
}

/// The model's service ports of one Service (`namespace/name:*`).
fn ports_of<'a>(model: &'a Model, svc: &'a Key) -> impl Iterator<Item = &'a ServicePortName> {
    model
        .services
        .range(ServicePortName::new(&svc.0, &svc.1, "")..)
        .map(|(n, _)| n)
        .take_while(move |n| *n.namespace == *svc.0 && *n.name == *svc.1)
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
    // Initial lists come in pages of 500 (kube-rs' default, as client-go's reflector):
    // only one page of full objects is decoded at a time, each projected as it arrives.
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
    let full_resync = config.full_resync;
    let mut state = State::new(config);
    let mut last_full = Instant::now();
    let mut ticker = tokio::time::interval(tick);
    let mut scavenger = crate::malloc::Scavenger::new(Instant::now());
    loop {
        let mut changed = false;
        let mut resync = false;
        let first = tokio::select! {
            u = updates.next() => match u {
                Some(u) => Some(u),
                None => return,
            },
            _ = ticker.tick() => {
                on_tick(maps);
                scavenger.tick(Instant::now());
                resync = !full_resync.is_zero()
                    && last_full.elapsed() >= full_resync
                    && state.ready();
                None
            }
        };
        let mut handle = |u: Update, state: &mut State, changed: &mut bool| match u {
            Update::Services(e) => *changed |= state.apply_service(*e),
            Update::Slices(e) => *changed |= state.apply_slice(*e),
            Update::Error(e) => on_error(&e),
        };
        if let Some(u) = first {
            handle(u, &mut state, &mut changed);
        }
        // Coalesce what is already queued (a relist, a burst of edits) into one sync.
        while let Some(Some(u)) = futures::FutureExt::now_or_never(updates.next()) {
            handle(u, &mut state, &mut changed);
        }
        if !changed && !resync {
            continue;
        }
        if !state.ready() {
            on_pending();
            continue;
        }
        let started = Instant::now();
        let full = state.full || resync || adopt.is_some();
        // agent sync scale (issue 7): the model (translate) and the map writes (reconcile)
        // are timed apart for the per-sync log.
        let (report, mut diagnostics, changed_services, translated) = if full {
            state.full = false;
            state.dirty.clear();
            last_full = Instant::now();
            let diagnostics = state.rebuild_all();
            state.names.prune();
            let translated = started.elapsed();
            // A restarted agent takes over the pinned maps against the first complete
            // desired state, so unchanged services are not rewritten (and keep their ids).
            if let Some(snapshot) = adopt.take() {
                reconciler.adopt(&snapshot, &state.model);
            }
            let n = state.services.len();
            (
                reconciler.sync(&state.model, maps),
                diagnostics,
                n,
                translated,
            )
        } else {
            let dirty = std::mem::take(&mut state.dirty);
            let mut diagnostics = Vec::new();
            for svc in &dirty {
                state.rebuild(svc, &mut diagnostics);
            }
            let translated = started.elapsed();
            let report = reconciler.sync_services(&state.model, &dirty, maps);
            (report, diagnostics, dirty.len(), translated)
        };
        diagnostics.sort();
        diagnostics.dedup();
        let duration = started.elapsed();
        // agent sync scale (issue 7): one structured record per sync
        // (`RUST_LOG=skiff_agent::sync=debug`); stdout keeps the one-line summary.
        tracing::debug!(
            target: "skiff_agent::sync",
            full,
            services_changed = changed_services,
            map_writes = report.writes,
            errors = report.errors.len(),
            services = state.services.len(),
            slices = state.slices.len(),
            translate_us = translated.as_micros() as u64,
            reconcile_us = (duration - translated).as_micros() as u64,
            duration_us = duration.as_micros() as u64,
            "synced"
        );
        // end agent sync scale
        // agent sync scale (issue 7): the zone's objects only when the zone changes.
        let dns_changed = std::mem::take(&mut state.dns_changed);
        let (service_objects, slice_objects) = if dns_changed {
            state.dns_objects()
        } else {
            (Vec::new(), Vec::new())
        };
        // end agent sync scale
        on_sync(&Synced {
            report,
            diagnostics,
            services: state.services.len(),
            slices: state.slices.len(),
            full,
            changed: changed_services,
            duration,
            programming_latencies: state.triggers.take(SystemTime::now()),
            health_checks: state.model.health_checks(),
            service_ids: reconciler
                .take_ids_changed()
                .then(|| reconciler.service_ids()),
            usage: reconciler.usage(),
            // dns: cluster DNS (issue 8)
            service_objects,
            slice_objects,
            dns_changed: dns_changed && state.config.keep_dns_objects,
            // end dns
        });
        // agent memory (issue 7): what a full sync freed goes back to the kernel at
        // once; an incremental sync's, once the agent is quiet.
        if full {
            crate::malloc::release_free_memory();
        }
        scavenger.active(Instant::now());
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

    fn at(s: &str) -> SystemTime {
        s.parse::<k8s_openapi::jiff::Timestamp>().unwrap().into()
    }

    #[test]
    fn trigger_times_count_each_change_once_and_skip_old_ones() {
        let start = at("2026-01-01T00:00:00Z");
        let mut state = State::new(SyncConfig::default());
        state.triggers = TriggerTimes::new(start);
        let apply = |state: &mut State, e| {
            state.apply_slice(e);
        };
        apply(&mut state, watcher::Event::Init);
        apply(
            &mut state,
            watcher::Event::InitApply(annotated("old", "2025-12-31T23:59:00Z")),
        );
        apply(&mut state, watcher::Event::InitDone);
        apply(
            &mut state,
            watcher::Event::Apply(annotated("a", "2026-01-01T00:00:01Z")),
        );
        // A relist re-delivers the same version: not a new change.
        apply(&mut state, watcher::Event::Init);
        apply(
            &mut state,
            watcher::Event::InitApply(annotated("a", "2026-01-01T00:00:01Z")),
        );
        apply(
            &mut state,
            watcher::Event::InitApply(annotated("b", "2026-01-01T00:00:01.5Z")),
        );
        apply(&mut state, watcher::Event::InitDone);
        let now = start + Duration::from_secs(2);
        let mut got = state.triggers.take(now);
        got.sort();
        assert_eq!(got, [Duration::from_millis(500), Duration::from_secs(1)]);
        assert!(state.triggers.take(now).is_empty());
        apply(
            &mut state,
            watcher::Event::Apply(annotated("a", "2026-01-01T00:00:01.9Z")),
        );
        assert_eq!(state.triggers.take(now), [Duration::from_millis(100)]);
        // Malformed or absent: not measured.
        apply(
            &mut state,
            watcher::Event::Apply(annotated("a", "yesterday")),
        );
        assert!(state.triggers.take(now).is_empty());
    }

    fn svc(name: &str) -> Service {
        serde_json::from_value(
            serde_json::json!({"metadata": {"namespace": "default", "name": name}}),
        )
        .unwrap()
    }

    fn names(c: &Cache<String>) -> Vec<String> {
        c.objects()
    }

    fn apply(c: &mut Cache<String>, e: watcher::Event<Service>) -> bool {
        c.apply(e, |s| s.name_any()).changed()
    }

    #[test]
    fn a_cache_is_ready_only_after_a_complete_list_and_relists_switch_atomically() {
        let mut c: Cache<String> = Cache::default();
        assert!(!c.ready());
        apply(&mut c, watcher::Event::Init);
        apply(&mut c, watcher::Event::InitApply(svc("a")));
        apply(&mut c, watcher::Event::InitApply(svc("b")));
        assert!(
            !c.ready() && names(&c).is_empty(),
            "nothing visible mid-list"
        );
        assert!(apply(&mut c, watcher::Event::InitDone));
        assert!(c.ready());
        assert_eq!(names(&c), ["a", "b"]);
        assert!(apply(&mut c, watcher::Event::Apply(svc("c"))));
        assert!(apply(&mut c, watcher::Event::Delete(svc("a"))));
        assert!(
            !apply(&mut c, watcher::Event::Delete(svc("a"))),
            "deleting an unknown object changes nothing"
        );
        // A relist (API server restart, 410): the old view stays until the new one is
        // complete, and the cache is not ready meanwhile.
        apply(&mut c, watcher::Event::Init);
        apply(&mut c, watcher::Event::InitApply(svc("c")));
        assert!(!c.ready());
        assert_eq!(names(&c), ["b", "c"], "old view kept while relisting");
        apply(&mut c, watcher::Event::InitDone);
        assert_eq!(names(&c), ["c"], "b was deleted while the watch was down");
    }

    /// xorshift64*: a deterministic sequence for the differential test.
    struct Rng(u64);

    impl Rng {
        fn below(&mut self, n: u64) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) % n
        }
    }

    fn random_service(rng: &mut Rng, i: u64) -> Service {
        let mut ports = vec![serde_json::json!({"name": "http", "port": 80, "protocol": "TCP"})];
        if rng.below(3) == 0 {
            ports.push(serde_json::json!({"name": "dns", "port": 53, "protocol": "UDP"}));
        }
        let mut spec = serde_json::json!({
            // Six addresses for eight Services: some frontends are claimed twice.
            "clusterIP": format!("10.43.0.{}", rng.below(6) + 1),
            "ports": ports,
        });
        if rng.below(4) == 0 {
            spec["type"] = "NodePort".into();
            spec["ports"][0]["nodePort"] = (30000 + i).into();
            if rng.below(2) == 0 {
                spec["externalTrafficPolicy"] = "Local".into();
            }
        }
        if rng.below(8) == 0 {
            // Not programmed at all.
            spec["clusterIP"] = "None".into();
        }
        serde_json::from_value(serde_json::json!({
            "metadata": {"namespace": "default", "name": format!("svc{i}")},
            "spec": spec,
        }))
        .unwrap()
    }

    fn random_slice(rng: &mut Rng, j: u64) -> EndpointSlice {
        let endpoints: Vec<serde_json::Value> = (0..rng.below(4))
            .map(|_| {
                // Flags follow from the address, so Services sharing a backend agree on them.
                let host = rng.below(12);
                serde_json::json!({
                    "addresses": [format!("10.42.0.{host}")],
                    "conditions": {"ready": !host.is_multiple_of(5), "serving": true,
                        "terminating": host.is_multiple_of(5)},
                    "nodeName": if host.is_multiple_of(2) { "node-a" } else { "node-b" },
                })
            })
            .collect();
        let mut ports = vec![serde_json::json!({"name": "http", "port": 8080, "protocol": "TCP"})];
        if rng.below(2) == 0 {
            ports.push(serde_json::json!({"name": "dns", "port": 5353, "protocol": "UDP"}));
        }
        serde_json::from_value(serde_json::json!({
            "metadata": {"namespace": "default", "name": format!("slice{j}"),
                "labels": {"kubernetes.io/service-name": format!("svc{}", rng.below(8))}},
            "addressType": "IPv4",
            "endpoints": endpoints,
            "ports": ports,
        }))
        .unwrap()
    }

    #[test]
    fn incremental_syncs_equal_a_full_translation_and_reconcile() {
        use crate::lbmap::{FakeServiceMaps, MapSizes};
        let node = NodeContext {
            node_name: "node-a".into(),
            node_addresses: vec![Ipv4Addr::new(192, 168, 1, 10)],
            ..Default::default()
        };
        let mut state = State::new(SyncConfig {
            node: node.clone(),
            ..Default::default()
        });
        for e in [watcher::Event::Init, watcher::Event::InitDone] {
            state.apply_service(e);
        }
        for e in [watcher::Event::Init, watcher::Event::InitDone] {
            state.apply_slice(e);
        }
        assert!(state.ready());
        let mut services: BTreeMap<u64, Service> = BTreeMap::new();
        let mut slices: BTreeMap<u64, EndpointSlice> = BTreeMap::new();
        let (mut inc, mut inc_maps) =
            (Reconciler::new(), FakeServiceMaps::new(MapSizes::default()));
        let (mut full, mut full_maps) =
            (Reconciler::new(), FakeServiceMaps::new(MapSizes::default()));
        let mut rng = Rng(0x0123_4567_89ab_cdef);
        for step in 0..600 {
            match rng.below(6) {
                0 | 1 => {
                    let i = rng.below(8);
                    let svc = random_service(&mut rng, i);
                    services.insert(i, svc.clone());
                    state.apply_service(watcher::Event::Apply(svc));
                }
                2 => {
                    if let Some(svc) = services.remove(&rng.below(8)) {
                        state.apply_service(watcher::Event::Delete(svc));
                    }
                }
                3 | 4 => {
                    // New, changed, or moved to another Service.
                    let j = rng.below(10);
                    let slice = random_slice(&mut rng, j);
                    slices.insert(j, slice.clone());
                    state.apply_slice(watcher::Event::Apply(slice));
                }
                _ => {
                    if let Some(slice) = slices.remove(&rng.below(10)) {
                        state.apply_slice(watcher::Event::Delete(slice));
                    }
                }
            }
            let dirty = std::mem::take(&mut state.dirty);
            let mut diagnostics = Vec::new();
            for svc in &dirty {
                state.rebuild(svc, &mut diagnostics);
            }
            let all_services: Vec<Service> = services.values().cloned().collect();
            let all_slices: Vec<EndpointSlice> = slices.values().cloned().collect();
            let (want, _) = crate::translate::translate(&all_services, &all_slices, &node);
            assert_eq!(state.model, want, "step {step}");

            let ri = inc.sync_services(&state.model, &dirty, &mut inc_maps);
            let rf = full.sync(&want, &mut full_maps);
            assert!(ri.errors.is_empty() && rf.errors.is_empty(), "step {step}");
            assert!(inc_maps.violations.is_empty(), "{:?}", inc_maps.violations);
            assert_eq!(
                inc_maps.contents.render(),
                full_maps.contents.render(),
                "step {step}: dirty {dirty:?}"
            );
        }
        // A relist of the same objects rebuilds to the same model, and a full reconcile
        // of it writes nothing.
        let before = state.model.clone();
        state.apply_slice(watcher::Event::Init);
        for s in slices.values() {
            state.apply_slice(watcher::Event::InitApply(s.clone()));
        }
        state.apply_slice(watcher::Event::InitDone);
        assert!(state.full);
        state.rebuild_all();
        assert_eq!(state.model, before);
        inc_maps.log.clear();
        let report = inc.sync(&state.model, &mut inc_maps);
        assert_eq!(report.writes, 0, "{:?}", inc_maps.log);
    }

    // agent sync scale (issue 7)
    fn dns_service_json(rng: &mut Rng, i: u64) -> Service {
        let spec = match rng.below(4) {
            0 => serde_json::json!({"clusterIP": "None"}),
            1 => {
                serde_json::json!({"type": "ExternalName", "externalName": format!("x{i}.example")})
            }
            _ => serde_json::json!({"clusterIP": format!("10.43.1.{}", rng.below(3) + 1),
                "ports": [{"name": format!("p{}", rng.below(2)), "port": 80}]}),
        };
        serde_json::from_value(serde_json::json!({
            "metadata": {"namespace": "default", "name": format!("svc{i}")},
            "spec": spec,
        }))
        .unwrap()
    }

    #[test]
    fn the_dns_zone_is_rebuilt_exactly_when_what_it_reads_changes() {
        let mut state = State::new(SyncConfig {
            keep_dns_objects: true,
            ..Default::default()
        });
        for e in [watcher::Event::Init, watcher::Event::InitDone] {
            state.apply_service(e);
        }
        for e in [watcher::Event::Init, watcher::Event::InitDone] {
            state.apply_slice(e);
        }
        assert!(state.dns_changed, "the first complete list builds the zone");
        let zone = |state: &State| {
            let (svcs, slices) = state.dns_objects();
            format!(
                "{:?}",
                skiff_dns::Zone::build("cluster.local", &svcs, &slices, 1)
            )
        };
        state.dns_changed = false;

        // A ClusterIP Service's endpoints are not in the zone: no rebuild.
        let web: Service = serde_json::from_value(serde_json::json!({
            "metadata": {"namespace": "default", "name": "web"},
            "spec": {"clusterIP": "10.43.0.5", "ports": [{"name": "http", "port": 80}]},
        }))
        .unwrap();
        state.apply_service(watcher::Event::Apply(web));
        assert!(std::mem::take(&mut state.dns_changed), "a new Service");
        let mut published = zone(&state);
        let web_slice = |addr: &str| -> EndpointSlice {
            serde_json::from_value(serde_json::json!({
                "metadata": {"namespace": "default", "name": "web-1",
                    "labels": {"kubernetes.io/service-name": "web"}},
                "addressType": "IPv4",
                "endpoints": [{"addresses": [addr], "conditions": {"ready": true}}],
            }))
            .unwrap()
        };
        state.apply_slice(watcher::Event::Apply(web_slice("10.42.0.7")));
        state.apply_slice(watcher::Event::Apply(web_slice("10.42.0.8")));
        assert!(
            !state.dns_changed,
            "endpoint changes of a ClusterIP Service"
        );
        assert_eq!(published, zone(&state));

        // Random Services (ClusterIP, headless, ExternalName) and slices: whenever the
        // flag stays down, the published zone is still the zone of the whole view.
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        let mut services: BTreeMap<u64, Service> = BTreeMap::new();
        let mut slices: BTreeMap<u64, EndpointSlice> = BTreeMap::new();
        let (mut rebuilt, mut skipped) = (0, 0);
        for step in 0..800 {
            match rng.below(8) {
                0 => {
                    let i = rng.below(5);
                    let svc = dns_service_json(&mut rng, i);
                    services.insert(i, svc.clone());
                    state.apply_service(watcher::Event::Apply(svc));
                }
                1 => {
                    if let Some(svc) = services.remove(&rng.below(5)) {
                        state.apply_service(watcher::Event::Delete(svc));
                    }
                }
                2..=5 => {
                    let j = rng.below(8);
                    let slice = random_slice(&mut rng, j);
                    // random_slice labels svc0..svc7; only svc0..svc4 exist here.
                    slices.insert(j, slice.clone());
                    state.apply_slice(watcher::Event::Apply(slice));
                }
                6 => {
                    // The same version again (a resync or a relist's re-delivery).
                    if let Some(slice) = slices.get(&rng.below(8)) {
                        state.apply_slice(watcher::Event::Apply(slice.clone()));
                        assert!(!state.dns_changed, "step {step}: an unchanged slice");
                    }
                }
                _ => {
                    if let Some(slice) = slices.remove(&rng.below(8)) {
                        state.apply_slice(watcher::Event::Delete(slice));
                    }
                }
            }
            if std::mem::take(&mut state.dns_changed) {
                published = zone(&state);
                rebuilt += 1;
            } else {
                skipped += 1;
            }
            assert_eq!(published, zone(&state), "step {step}");
        }
        assert!(
            rebuilt > 50 && skipped > 200,
            "both paths exercised: {rebuilt} rebuilt, {skipped} skipped"
        );
    }
    // end agent sync scale
}
