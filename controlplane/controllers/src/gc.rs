//! Garbage collector over ownerReferences (upstream `pkg/controller/garbagecollector`,
//! simplified to one in-memory graph rebuilt from watches and re-planned after every
//! batch of events).
//!
//! - Background: a dependent whose owners are all gone is deleted (with
//!   `propagationPolicy: Background`). "Gone" is confirmed by a live GET of the owner by
//!   kind and name with a uid comparison, never from the cache alone (the cache may not
//!   have seen a just-created owner yet), as upstream's `attemptToDeleteItem` does.
//!   Dangling references next to a live owner are removed from the dependent.
//! - Foreground: an owner with `deletionTimestamp` and the `foregroundDeletion`
//!   finalizer gets its dependents deleted; the finalizer goes once no dependent with
//!   `blockOwnerDeletion: true` exists any more (terminating ones still block).
//! - Orphan: an owner with `deletionTimestamp` and the `orphan` finalizer: its references
//!   are removed from every dependent, then the finalizer.
//!
//! Dependents are matched by owner uid. Watched kinds (owners and dependents): Pods,
//! ReplicaSets, Deployments, DaemonSets, Jobs, EndpointSlices, Endpoints, Services
//! (owners of EndpointSlices) and ControllerRevisions (DaemonSet history). An owner reference to a kind outside that table is left
//! alone (treated as live): deleting on an unknown kind would be a guess.

use std::{
    collections::{HashMap, HashSet},
    time::{Duration, Instant},
};

use futures::{stream::select_all, StreamExt as _};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::{
    api::{
        ApiResource, DeleteParams, DynamicObject, GroupVersionKind, Patch, PatchParams,
        Preconditions, PropagationPolicy,
    },
    runtime::{watcher, WatchStreamExt as _},
    Api, ResourceExt as _,
};

use crate::Ctx;

pub const FOREGROUND: &str = "foregroundDeletion";
pub const ORPHAN: &str = "orphan";

/// (group, version, kind, plural, namespaced)
pub const KINDS: &[(&str, &str, &str, &str, bool)] = &[
    ("", "v1", "Pod", "pods", true),
    ("apps", "v1", "ReplicaSet", "replicasets", true),
    ("apps", "v1", "Deployment", "deployments", true),
    ("apps", "v1", "DaemonSet", "daemonsets", true),
    ("batch", "v1", "Job", "jobs", true),
    (
        "discovery.k8s.io",
        "v1",
        "EndpointSlice",
        "endpointslices",
        true,
    ),
    ("", "v1", "Endpoints", "endpoints", true),
    ("", "v1", "Service", "services", true),
    (
        "apps",
        "v1",
        "ControllerRevision",
        "controllerrevisions",
        true,
    ),
];

/// The table index of an owner reference's kind (by apiVersion's group and kind; the
/// version is not compared, as upstream resolves any served version).
pub fn kind_index(api_version: &str, kind: &str) -> Option<usize> {
    let group = api_version.rsplit_once('/').map(|(g, _)| g).unwrap_or("");
    KINDS
        .iter()
        .position(|(g, _, k, _, _)| *g == group && *k == kind)
}

fn api_resource(i: usize) -> ApiResource {
    let (g, v, k, plural, _) = KINDS[i];
    ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(g, v, k), plural)
}

/// One object of the graph.
#[derive(Debug, Clone, PartialEq)]
pub struct Item {
    pub kind: usize,
    pub uid: String,
    pub namespace: Option<String>,
    pub name: String,
    pub owners: Vec<OwnerReference>,
    pub deleting: bool,
    pub finalizers: Vec<String>,
    pub resource_version: Option<String>,
}

impl Item {
    fn of(kind: usize, o: &DynamicObject) -> Option<Item> {
        Some(Item {
            kind,
            uid: o.uid()?,
            namespace: o.namespace(),
            name: o.name_any(),
            owners: o.owner_references().to_vec(),
            deleting: o.metadata.deletion_timestamp.is_some(),
            finalizers: o.finalizers().to_vec(),
            resource_version: o.resource_version(),
        })
    }

    fn label(&self) -> String {
        format!(
            "{} {}/{}",
            KINDS[self.kind].2,
            self.namespace.as_deref().unwrap_or(""),
            self.name
        )
    }
}

/// What the collector does to an object.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Action {
    /// Delete the dependent; `foreground` when an owner waits for its dependents.
    Delete { uid: String, foreground: bool },
    /// Remove the references to these owner uids from the dependent.
    RemoveRefs { uid: String, owners: Vec<String> },
    /// Remove a finalizer (`orphan` / `foregroundDeletion`) from an owner.
    RemoveFinalizer { uid: String, finalizer: String },
}

/// A dependent whose references point at owners the cache does not have: the runtime
/// confirms each such owner with a live GET before acting.
#[derive(Debug, Clone, PartialEq)]
pub struct Suspect {
    pub uid: String,
    /// Owner references not found in the cache (by uid).
    pub missing: Vec<OwnerReference>,
    /// Owners present and not being deleted in foreground.
    pub live: usize,
    /// Owners present and deleting with `foregroundDeletion`.
    pub waiting: usize,
}

/// Plans over the graph: definite actions (finalizer-driven ones) and suspects.
pub fn plan(items: &HashMap<String, Item>) -> (Vec<Action>, Vec<Suspect>) {
    let mut actions = Vec::new();
    let mut suspects = Vec::new();
    let mut dependents: HashMap<&str, Vec<&Item>> = HashMap::new();
    for it in items.values() {
        for r in &it.owners {
            dependents.entry(r.uid.as_str()).or_default().push(it);
        }
    }
    let mut sorted: Vec<&Item> = items.values().collect();
    sorted.sort_by(|a, b| (a.kind, &a.namespace, &a.name).cmp(&(b.kind, &b.namespace, &b.name)));
    for owner in &sorted {
        if !owner.deleting {
            continue;
        }
        let deps = dependents
            .get(owner.uid.as_str())
            .cloned()
            .unwrap_or_default();
        if owner.finalizers.iter().any(|f| f == ORPHAN) {
            for d in &deps {
                actions.push(Action::RemoveRefs {
                    uid: d.uid.clone(),
                    owners: vec![owner.uid.clone()],
                });
            }
            if deps.is_empty() {
                actions.push(Action::RemoveFinalizer {
                    uid: owner.uid.clone(),
                    finalizer: ORPHAN.into(),
                });
            }
        } else if owner.finalizers.iter().any(|f| f == FOREGROUND) {
            let mut blocking = 0;
            for d in &deps {
                let blocks = d
                    .owners
                    .iter()
                    .any(|r| r.uid == owner.uid && r.block_owner_deletion == Some(true));
                if blocks {
                    blocking += 1;
                }
                if !d.deleting {
                    let has_own = dependents
                        .get(d.uid.as_str())
                        .is_some_and(|v| !v.is_empty());
                    actions.push(Action::Delete {
                        uid: d.uid.clone(),
                        foreground: has_own,
                    });
                }
            }
            if blocking == 0 {
                actions.push(Action::RemoveFinalizer {
                    uid: owner.uid.clone(),
                    finalizer: FOREGROUND.into(),
                });
            }
        }
    }
    for d in &sorted {
        if d.owners.is_empty() || d.deleting {
            continue;
        }
        let mut s = Suspect {
            uid: d.uid.clone(),
            missing: Vec::new(),
            live: 0,
            waiting: 0,
        };
        for r in &d.owners {
            match items.get(&r.uid) {
                Some(o) if o.deleting && o.finalizers.iter().any(|f| f == FOREGROUND) => {
                    s.waiting += 1
                }
                // Being deleted without a finalizer we handle: still there, not gone.
                Some(_) => s.live += 1,
                None if kind_index(&r.api_version, &r.kind).is_none() => s.live += 1,
                None => s.missing.push(r.clone()),
            }
        }
        if !s.missing.is_empty() {
            suspects.push(s);
        }
    }
    (actions, suspects)
}

/// What to do with a suspect once its missing owners were looked up (`gone` = the
/// references confirmed absent).
pub fn judge(s: &Suspect, gone: &[String]) -> Option<Action> {
    if gone.is_empty() {
        return None;
    }
    let still_there = s.missing.len() - gone.len();
    if s.live + still_there == 0 {
        Some(Action::Delete {
            uid: s.uid.clone(),
            foreground: false,
        })
    } else {
        Some(Action::RemoveRefs {
            uid: s.uid.clone(),
            owners: gone.to_vec(),
        })
    }
}

// ------------------------------------------------------------------------------------
// Runtime

/// The graph built from the watches.
#[derive(Default)]
struct Graph {
    items: HashMap<String, Item>,
    /// A relist in progress per kind: the uids seen since its `Init`.
    relisting: HashMap<usize, HashSet<String>>,
    synced: HashSet<usize>,
}

impl Graph {
    /// Applies a watch event; true when it changed something the plan looks at (owners,
    /// deletion, finalizers, presence) rather than only a resourceVersion (status churn).
    fn apply(&mut self, kind: usize, ev: watcher::Event<DynamicObject>) -> bool {
        let upsert = |items: &mut HashMap<String, Item>, it: Item| {
            let same = items.get(&it.uid).is_some_and(|old| {
                old.owners == it.owners
                    && old.deleting == it.deleting
                    && old.finalizers == it.finalizers
            });
            items.insert(it.uid.clone(), it);
            !same
        };
        match ev {
            watcher::Event::Init => {
                self.relisting.insert(kind, HashSet::new());
                false
            }
            watcher::Event::InitApply(o) => {
                let Some(it) = Item::of(kind, &o) else {
                    return false;
                };
                self.relisting
                    .entry(kind)
                    .or_default()
                    .insert(it.uid.clone());
                upsert(&mut self.items, it)
            }
            watcher::Event::InitDone => {
                let seen = self.relisting.remove(&kind).unwrap_or_default();
                self.items
                    .retain(|uid, it| it.kind != kind || seen.contains(uid));
                self.synced.insert(kind);
                true
            }
            watcher::Event::Apply(o) => match Item::of(kind, &o) {
                Some(it) => upsert(&mut self.items, it),
                None => false,
            },
            watcher::Event::Delete(o) => match o.uid() {
                Some(uid) => self.items.remove(&uid).is_some(),
                None => false,
            },
        }
    }
}

pub async fn run(ctx: Ctx) -> anyhow::Result<()> {
    let client = ctx.client.clone();
    let streams = (0..KINDS.len()).map(|i| {
        let api: Api<DynamicObject> = Api::all_with(client.clone(), &api_resource(i));
        watcher(api, watcher::Config::default())
            .default_backoff()
            .map(move |e| (i, e))
            .boxed()
    });
    let mut events = select_all(streams).ready_chunks(512);
    let mut graph = Graph::default();
    // Actions issued recently (not repeated until the cache shows their effect or this
    // expires; a failed one is retried after it).
    let mut issued: HashMap<Action, Instant> = HashMap::new();
    // A pass runs after a relevant change, while an action waits for a retry, and every
    // 30 s regardless (a missed change cannot wedge anything for long).
    let mut tick = tokio::time::interval(Duration::from_secs(2));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut dirty = false;
    let mut retry = false;
    let mut last_pass = Instant::now();
    loop {
        let ticked = tokio::select! {
            batch = events.next() => {
                let Some(batch) = batch else { anyhow::bail!("the watch streams ended") };
                for (kind, ev) in batch {
                    match ev {
                        Ok(ev) => dirty |= graph.apply(kind, ev),
                        Err(e) => tracing::warn!("garbage collector: watching {}: {e}", KINDS[kind].3),
                    }
                }
                false
            }
            _ = tick.tick() => true,
        };
        if graph.synced.len() < KINDS.len() {
            continue;
        }
        let periodic = last_pass.elapsed() > Duration::from_secs(30);
        if !(dirty || (ticked && retry) || periodic) {
            continue;
        }
        dirty = false;
        last_pass = Instant::now();
        issued.retain(|_, at| at.elapsed() < Duration::from_secs(10));
        retry = pass(&ctx, &graph, &mut issued).await;
    }
}

/// One planning pass; true when something is left to retry (a failed action, or an
/// issued one whose effect the cache does not show yet).
async fn pass(ctx: &Ctx, graph: &Graph, issued: &mut HashMap<Action, Instant>) -> bool {
    let (mut actions, suspects) = plan(&graph.items);
    // Confirm missing owners with a live GET (cached for this pass).
    let mut lookups: HashMap<(usize, Option<String>, String, String), bool> = HashMap::new();
    for s in &suspects {
        let Some(dep) = graph.items.get(&s.uid) else {
            continue;
        };
        let mut gone = Vec::new();
        for r in &s.missing {
            let Some(k) = kind_index(&r.api_version, &r.kind) else {
                continue;
            };
            let ns = KINDS[k].4.then(|| dep.namespace.clone()).flatten();
            let key = (k, ns.clone(), r.name.clone(), r.uid.clone());
            let absent = match lookups.get(&key) {
                Some(a) => *a,
                None => {
                    let api: Api<DynamicObject> = match &ns {
                        Some(ns) => Api::namespaced_with(ctx.client.clone(), ns, &api_resource(k)),
                        None => Api::all_with(ctx.client.clone(), &api_resource(k)),
                    };
                    let a = match api.get_opt(&r.name).await {
                        Ok(Some(o)) => o.uid().as_deref() != Some(r.uid.as_str()),
                        Ok(None) => true,
                        Err(e) => {
                            tracing::debug!("garbage collector: looking up owner {}: {e}", r.name);
                            continue;
                        }
                    };
                    lookups.insert(key, a);
                    a
                }
            };
            if absent {
                gone.push(r.uid.clone());
            }
        }
        if let Some(a) = judge(s, &gone) {
            actions.push(a);
        }
    }
    let pending = !actions.is_empty() || !suspects.is_empty();
    for a in actions {
        if issued.contains_key(&a) {
            continue;
        }
        if execute(ctx, graph, &a).await {
            issued.insert(a, Instant::now());
        }
    }
    pending
}

/// Does an owner of `it` wait for its dependents (foreground deletion)?
fn owner_waits(graph: &Graph, it: &Item) -> bool {
    it.owners.iter().any(|r| {
        graph
            .items
            .get(&r.uid)
            .is_some_and(|o| o.deleting && o.finalizers.iter().any(|f| f == FOREGROUND))
    })
}

/// Applies one action; false when it failed (retried on a later pass).
async fn execute(ctx: &Ctx, graph: &Graph, a: &Action) -> bool {
    let uid = match a {
        Action::Delete { uid, .. }
        | Action::RemoveRefs { uid, .. }
        | Action::RemoveFinalizer { uid, .. } => uid,
    };
    let Some(it) = graph.items.get(uid) else {
        return true;
    };
    let ar = api_resource(it.kind);
    let api: Api<DynamicObject> = match &it.namespace {
        Some(ns) => Api::namespaced_with(ctx.client.clone(), ns, &ar),
        None => Api::all_with(ctx.client.clone(), &ar),
    };
    let result = match a {
        Action::Delete { foreground, .. } => {
            let dp = DeleteParams {
                propagation_policy: Some(if *foreground {
                    PropagationPolicy::Foreground
                } else {
                    PropagationPolicy::Background
                }),
                preconditions: Some(Preconditions {
                    uid: Some(it.uid.clone()),
                    resource_version: None,
                }),
                ..Default::default()
            };
            api.delete(&it.name, &dp).await.map(|_| {
                let why = if owner_waits(graph, it) {
                    "an owner is being deleted in foreground"
                } else {
                    "all owners are gone"
                };
                let how = if *foreground {
                    "foreground"
                } else {
                    "background"
                };
                tracing::info!("garbage collector: deleted {} ({how}): {why}", it.label());
            })
        }
        Action::RemoveRefs { owners, .. } => {
            let refs: Vec<&OwnerReference> = it
                .owners
                .iter()
                .filter(|r| !owners.contains(&r.uid))
                .collect();
            let patch = serde_json::json!({"metadata": {
                "ownerReferences": refs,
                "resourceVersion": it.resource_version,
            }});
            api.patch(&it.name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
                .map(|_| {
                    tracing::info!(
                        "garbage collector: removed owner references {owners:?} from {}",
                        it.label()
                    )
                })
        }
        Action::RemoveFinalizer { finalizer, .. } => {
            let rest: Vec<&String> = it.finalizers.iter().filter(|f| *f != finalizer).collect();
            let patch = serde_json::json!({"metadata": {
                "finalizers": rest,
                "resourceVersion": it.resource_version,
            }});
            api.patch(&it.name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
                .map(|_| {
                    tracing::info!(
                        "garbage collector: removed finalizer {finalizer} from {}",
                        it.label()
                    )
                })
        }
    };
    match result {
        Ok(()) => true,
        Err(kube::Error::Api(e)) if e.code == 404 => true,
        Err(e) if crate::runtime::is_conflict(&e) => {
            tracing::debug!(
                "garbage collector: {a:?} on {}: conflict, retrying: {e}",
                it.label()
            );
            false
        }
        Err(e) => {
            tracing::warn!("garbage collector: {a:?} on {}: {e}", it.label());
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(kind: &str, name: &str, owners: &[(&str, &str, bool)]) -> Item {
        let k = KINDS.iter().position(|(_, _, n, _, _)| *n == kind).unwrap();
        Item {
            kind: k,
            uid: format!("u-{name}"),
            namespace: Some("default".into()),
            name: name.into(),
            owners: owners
                .iter()
                .map(|(okind, oname, block)| OwnerReference {
                    api_version: if *okind == "Pod" {
                        "v1".into()
                    } else {
                        "apps/v1".into()
                    },
                    kind: okind.to_string(),
                    name: oname.to_string(),
                    uid: format!("u-{oname}"),
                    controller: Some(true),
                    block_owner_deletion: Some(*block),
                })
                .collect(),
            deleting: false,
            finalizers: vec![],
            resource_version: Some("1".into()),
        }
    }

    fn graph(items: Vec<Item>) -> HashMap<String, Item> {
        items.into_iter().map(|i| (i.uid.clone(), i)).collect()
    }

    #[test]
    fn background_owner_gone_makes_a_suspect_then_a_delete() {
        let g = graph(vec![
            item("ReplicaSet", "rs", &[("Deployment", "gone", true)]),
            item("Pod", "p", &[("ReplicaSet", "rs", true)]),
        ]);
        let (actions, suspects) = plan(&g);
        assert!(actions.is_empty());
        assert_eq!(suspects.len(), 1);
        assert_eq!(suspects[0].uid, "u-rs");
        assert_eq!(
            judge(&suspects[0], &["u-gone".into()]),
            Some(Action::Delete {
                uid: "u-rs".into(),
                foreground: false
            })
        );
        assert_eq!(
            judge(&suspects[0], &[]),
            None,
            "owner exists after all (cache lag)"
        );
    }

    #[test]
    fn dangling_ref_next_to_a_live_owner_is_removed() {
        let mut p = item(
            "Pod",
            "p",
            &[("ReplicaSet", "rs", true), ("ReplicaSet", "gone", false)],
        );
        p.owners[1].controller = None;
        let g = graph(vec![item("ReplicaSet", "rs", &[]), p]);
        let (_, suspects) = plan(&g);
        assert_eq!(
            judge(&suspects[0], &["u-gone".into()]),
            Some(Action::RemoveRefs {
                uid: "u-p".into(),
                owners: vec!["u-gone".into()]
            })
        );
    }

    #[test]
    fn foreground_deletes_dependents_and_waits_for_blocking_ones() {
        let mut d = item("Deployment", "d", &[]);
        d.deleting = true;
        d.finalizers = vec![FOREGROUND.into()];
        let rs = item("ReplicaSet", "rs", &[("Deployment", "d", true)]);
        let pod = item("Pod", "p", &[("ReplicaSet", "rs", true)]);
        let (actions, suspects) = plan(&graph(vec![d.clone(), rs.clone(), pod]));
        assert_eq!(
            actions,
            vec![Action::Delete {
                uid: "u-rs".into(),
                foreground: true
            }]
        );
        assert!(suspects.is_empty(), "a waiting owner is not missing");
        // rs terminating: still blocks, not deleted again.
        let mut rs2 = rs.clone();
        rs2.deleting = true;
        let (actions, _) = plan(&graph(vec![d.clone(), rs2]));
        assert!(actions.is_empty(), "{actions:?}");
        // Non-blocking dependent: deleted but not waited for.
        let free = item("ReplicaSet", "free", &[("Deployment", "d", false)]);
        let (actions, _) = plan(&graph(vec![d.clone(), free]));
        assert_eq!(
            actions,
            vec![
                Action::Delete {
                    uid: "u-free".into(),
                    foreground: false
                },
                Action::RemoveFinalizer {
                    uid: "u-d".into(),
                    finalizer: FOREGROUND.into()
                }
            ]
        );
    }

    #[test]
    fn orphan_removes_references_then_the_finalizer() {
        let mut d = item("Deployment", "d", &[]);
        d.deleting = true;
        d.finalizers = vec![ORPHAN.into()];
        let rs = item("ReplicaSet", "rs", &[("Deployment", "d", true)]);
        let (actions, suspects) = plan(&graph(vec![d.clone(), rs]));
        assert_eq!(
            actions,
            vec![Action::RemoveRefs {
                uid: "u-rs".into(),
                owners: vec!["u-d".into()]
            }]
        );
        assert!(suspects.is_empty());
        let (actions, _) = plan(&graph(vec![d]));
        assert_eq!(
            actions,
            vec![Action::RemoveFinalizer {
                uid: "u-d".into(),
                finalizer: ORPHAN.into()
            }]
        );
    }

    #[test]
    fn unknown_owner_kinds_are_left_alone() {
        let mut p = item("Pod", "p", &[]);
        p.owners = vec![OwnerReference {
            api_version: "example.com/v1".into(),
            kind: "Widget".into(),
            name: "w".into(),
            uid: "u-w".into(),
            ..Default::default()
        }];
        let (actions, suspects) = plan(&graph(vec![p]));
        assert!(actions.is_empty() && suspects.is_empty());
        assert_eq!(kind_index("apps/v1", "ReplicaSet"), Some(1));
        assert_eq!(kind_index("v1", "Pod"), Some(0));
        assert_eq!(kind_index("v1", "ReplicaSet"), None, "group matters");
    }
}
