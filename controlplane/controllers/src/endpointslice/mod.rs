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
//! run [`sync`], which reads the caches, lists the Service's current slices from the API
//! (never a stale cache: a slice created a moment ago must not be created twice), runs the
//! pure planners in [`slices`] and [`endpoints`], and writes only what differs. A pod
//! event queues the Services whose selector matches it now or matched it before (a
//! relabelled pod leaves its old Service's slices).

pub mod endpoints;
pub mod pods;
pub mod slices;
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
    api::{DeleteParams, ListParams, PostParams},
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
    /// Pod (namespace, name) → the Services it was last seen to match.
    memberships: Mutex<HashMap<Key, BTreeSet<String>>>,
    /// Node name → its zone as last seen.
    zones: Mutex<HashMap<String, Option<String>>>,
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
    let shared = Arc::new(Shared {
        ctx: ctx.clone(),
        services,
        pods,
        nodes,
        queue: WorkQueue::new(),
        tracker: Default::default(),
        backoff: Backoff::default(),
        memberships: Mutex::new(HashMap::new()),
        zones: Mutex::new(HashMap::new()),
    });

    let mut tasks = tokio::task::JoinSet::new();
    let svc_events = reflector::reflector(
        svc_writer,
        watcher(Api::<Service>::all(client.clone()), Default::default()),
    )
    .default_backoff();
    let s = shared.clone();
    // A relist (after a lost watch) reports no deletions: Services known before and
    // missing from it are queued so their slices and Endpoints are cleaned up.
    let mut known: BTreeSet<Key> = BTreeSet::new();
    let mut relisted: BTreeSet<Key> = BTreeSet::new();
    tasks.spawn(consume("services", svc_events, move |ev| match ev {
        watcher::Event::Apply(o) => {
            known.insert(key_of(&o));
            s.queue.add(key_of(&o))
        }
        watcher::Event::Delete(o) => {
            known.remove(&key_of(&o));
            s.queue.add(key_of(&o))
        }
        watcher::Event::Init => relisted.clear(),
        watcher::Event::InitApply(o) => {
            relisted.insert(key_of(&o));
            s.queue.add(key_of(&o))
        }
        watcher::Event::InitDone => {
            for gone in known.difference(&relisted) {
                s.queue.add(gone.clone());
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
    tasks.spawn(consume("pods", pod_events, move |ev| match ev {
        watcher::Event::Apply(p) | watcher::Event::InitApply(p) => s.pod_changed(&p, false),
        watcher::Event::Delete(p) => s.pod_changed(&p, true),
        watcher::Event::InitDone => s.pods_relisted(),
        watcher::Event::Init => {}
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
            s.zones
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&n.name_any());
            s.queue_all();
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
    let s = shared.clone();
    tasks.spawn(consume(
        "endpointslices",
        slice_events,
        move |ev| match ev {
            watcher::Event::Apply(sl)
            | watcher::Event::InitApply(sl)
            | watcher::Event::Delete(sl) => {
                if let Some(svc) = sl.labels().get(slices::LABEL_SERVICE_NAME) {
                    s.queue
                        .add((sl.namespace().unwrap_or_default(), svc.clone()));
                }
            }
            _ => {}
        },
    ));

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
                let key = s.queue.get().await;
                match sync(&s, &key).await {
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

impl Shared {
    fn selecting_services(&self, pod: &Pod) -> BTreeSet<String> {
        let ns = pod.namespace().unwrap_or_default();
        self.services
            .state()
            .iter()
            .filter(|s| s.namespace().as_deref() == Some(ns.as_str()))
            .filter(|s| {
                s.spec
                    .as_ref()
                    .and_then(|sp| sp.selector.as_ref())
                    .is_some_and(|sel| pods::selector_matches(sel, pod.metadata.labels.as_ref()))
            })
            .map(|s| s.name_any())
            .collect()
    }

    /// Queues the Services `pod` matches now and those it matched before.
    fn pod_changed(&self, pod: &Pod, deleted: bool) {
        let key = key_of(pod);
        let now = if deleted {
            BTreeSet::new()
        } else {
            self.selecting_services(pod)
        };
        let before = {
            let mut m = self.memberships.lock().unwrap_or_else(|e| e.into_inner());
            if now.is_empty() {
                m.remove(&key)
            } else {
                m.insert(key.clone(), now.clone())
            }
        };
        for svc in now.iter().chain(before.iter().flatten()) {
            self.queue.add((key.0.clone(), svc.clone()));
        }
    }

    /// After a relist (which reports no deletions): pods that vanished leave their
    /// Services.
    fn pods_relisted(&self) {
        let present: BTreeSet<Key> = self
            .pods
            .state()
            .iter()
            .map(|p| key_of(p.as_ref()))
            .collect();
        let gone: Vec<(Key, BTreeSet<String>)> = {
            let mut m = self.memberships.lock().unwrap_or_else(|e| e.into_inner());
            let keys: Vec<Key> = m
                .keys()
                .filter(|k| !present.contains(*k))
                .cloned()
                .collect();
            keys.into_iter()
                .filter_map(|k| m.remove(&k).map(|v| (k, v)))
                .collect()
        };
        for ((ns, _), services) in gone {
            for svc in services {
                self.queue.add((ns.clone(), svc));
            }
        }
    }

    /// A node's zone changed: the endpoints of its pods carry the zone.
    fn node_changed(&self, node: &Node, initial: bool) {
        let zone = node.labels().get(ZONE_LABEL).cloned();
        let prev = self
            .zones
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(node.name_any(), zone.clone());
        if !initial && prev != Some(zone) {
            self.queue_all();
        }
    }

    fn queue_all(&self) {
        for s in self.services.state() {
            self.queue.add(key_of(s.as_ref()));
        }
    }

    fn node_zones(&self) -> HashMap<String, String> {
        self.nodes
            .state()
            .iter()
            .filter_map(|n| Some((n.name_any(), n.labels().get(ZONE_LABEL)?.clone())))
            .collect()
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

/// Whether the controller maintains endpoints for `svc`.
fn managed(svc: &Service) -> bool {
    let Some(spec) = svc.spec.as_ref() else {
        return false;
    };
    spec.selector.is_some() && spec.type_.as_deref() != Some("ExternalName")
}

/// Makes one Service's slices and Endpoints match its pods.
async fn sync(s: &Shared, key: &Key) -> anyhow::Result<()> {
    let (ns, name) = key;
    if ns == "default" && name == "kubernetes" {
        return Ok(()); // the API server's own (bootstrap endpoint reconciler)
    }
    let client = s.ctx.client.clone();
    let slice_api: Api<EndpointSlice> = Api::namespaced(client.clone(), ns);
    let ep_api: Api<Endpoints> = Api::namespaced(client, ns);
    let lp = ListParams::default().labels(&format!(
        "{}={name},{}",
        slices::LABEL_SERVICE_NAME,
        managed_selector()
    ));
    let existing = slice_api
        .list(&lp)
        .await
        .context("listing the Service's EndpointSlices")?
        .items;
    let svc = s.services.get(&ObjectRef::new(name).within(ns));
    let Some(svc) = svc.filter(|svc| managed(svc)) else {
        s.tracker.delete_service(ns, name);
        for sl in &existing {
            delete_slice(&slice_api, sl, key).await?;
        }
        if s.services.get(&ObjectRef::new(name).within(ns)).is_none() {
            // The Service is gone: so is its Endpoints (upstream's endpoints controller).
            // A Service that only lost its selector keeps it, now user-managed.
            match ep_api.delete(name, &DeleteParams::default()).await {
                Ok(_) => tracing::info!("endpoints: deleted {} with its Service", key_str(key)),
                Err(kube::Error::Api(e)) if e.code == 404 => {}
                Err(e) => return Err(e).context("deleting the Endpoints"),
            }
        }
        return Ok(());
    };

    let all_pods = s.pods.state();
    let selector = svc
        .spec
        .as_ref()
        .and_then(|sp| sp.selector.clone())
        .unwrap_or_default();
    let selected: Vec<&Pod> = all_pods
        .iter()
        .map(|p| p.as_ref())
        .filter(|p| p.namespace().as_deref() == Some(ns.as_str()))
        .filter(|p| pods::selector_matches(&selector, p.metadata.labels.as_ref()))
        .collect();
    let trigger = s.tracker.compute(&svc, &selected);
    let zones = s.node_zones();
    let plan = slices::plan(&slices::Inputs {
        service: &svc,
        pods: &selected,
        node_zones: &zones,
        existing: &existing,
        max_endpoints_per_slice: s.ctx.config.max_endpoints_per_slice,
        trigger_time: trigger.as_ref(),
    });
    // Creates, then updates, then deletes: an endpoint moving between slices is never
    // missing from all of them.
    for sl in &plan.create {
        let created = slice_api
            .create(&PostParams::default(), sl)
            .await
            .context("creating an EndpointSlice")?;
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
        slice_api
            .replace(&n, &PostParams::default(), sl)
            .await
            .with_context(|| format!("updating the EndpointSlice {n}"))?;
        tracing::info!(
            "endpointslice: updated {ns}/{n} for Service {} ({} endpoints)",
            key_str(key),
            sl.endpoints.len()
        );
    }
    for sl in &plan.delete {
        delete_slice(&slice_api, sl, key).await?;
    }

    let current = ep_api
        .get_opt(name)
        .await
        .context("reading the Endpoints")?;
    if let Some(ep) = endpoints::plan(&svc, &selected, current.as_ref(), trigger.as_ref()) {
        let n_addr: usize = ep
            .subsets
            .iter()
            .flatten()
            .map(|s| {
                s.addresses.as_ref().map_or(0, Vec::len)
                    + s.not_ready_addresses.as_ref().map_or(0, Vec::len)
            })
            .sum();
        if current.is_some() {
            ep_api
                .replace(name, &PostParams::default(), &ep)
                .await
                .context("updating the Endpoints")?;
            tracing::info!("endpoints: updated {} ({n_addr} addresses)", key_str(key));
        } else {
            ep_api
                .create(&PostParams::default(), &ep)
                .await
                .context("creating the Endpoints")?;
            tracing::info!("endpoints: created {} ({n_addr} addresses)", key_str(key));
        }
    }
    Ok(())
}

async fn delete_slice(
    api: &Api<EndpointSlice>,
    sl: &EndpointSlice,
    key: &Key,
) -> anyhow::Result<()> {
    let n = sl.name_any();
    match api.delete(&n, &DeleteParams::default()).await {
        Ok(_) => {
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
