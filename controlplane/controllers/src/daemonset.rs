//! DaemonSet controller (upstream `pkg/controller/daemon`): one pod on every eligible
//! node.
//!
//! - Eligible (upstream's `NodeShouldRunDaemonPod`): the template's `nodeSelector` and
//!   required node affinity (`nodeSelectorTerms`: terms ORed, `matchExpressions` and
//!   `matchFields` ANDed; In/NotIn/Exists/DoesNotExist/Gt/Lt) match, and every
//!   NoSchedule/NoExecute taint is tolerated. A node whose untolerated taints are only
//!   NoSchedule keeps a pod it already has (`shouldContinueRunning`).
//! - Pods get upstream's default DaemonSet tolerations (not-ready and unreachable
//!   NoExecute; disk/memory/pid-pressure and unschedulable NoSchedule; network-unavailable
//!   for hostNetwork pods) and, like upstream since 1.12, are *not* bound here: the
//!   required node affinity is replaced by a `matchFields` term `metadata.name In
//!   [<node>]` and the scheduler binds them.
//! - Pods are claimed like the ReplicaSet's (matching orphans adopted, non-matching
//!   owned pods released).
//! - Revisions: pods carry `controller-revision-hash` = the template hash (with
//!   `status.collisionCount`), and every template has a ControllerRevision (`history`), so
//!   `kubectl rollout history|undo daemonset` work; RollingUpdate replaces old pods at most
//!   `maxUnavailable` (rounded up, as upstream) unavailable at a time, or, with
//!   `maxSurge`, starts the new pod next to the old one and deletes the old one once the
//!   new one is available (at most `maxSurge` new pods not yet available at a time);
//!   OnDelete waits for the user.
//! - Status: desiredNumberScheduled, currentNumberScheduled, numberMisscheduled,
//!   numberReady, updatedNumberScheduled, numberAvailable, numberUnavailable,
//!   observedGeneration.

use std::{
    collections::{BTreeMap, HashMap},
    sync::Arc,
    time::Duration,
};

use futures::StreamExt as _;
use k8s_openapi::{
    api::{
        apps::v1::{ControllerRevision, DaemonSet, DaemonSetStatus},
        core::v1::{
            Affinity, Node, NodeAffinity, NodeSelector, NodeSelectorRequirement, NodeSelectorTerm,
            Pod, PodSpec, Taint, Toleration,
        },
    },
    jiff::Timestamp,
};
use kube::{
    api::{Patch, PatchParams},
    runtime::{
        controller::Action,
        reflector::{ObjectRef, Store},
        watcher, Controller, WatchStreamExt as _,
    },
    Api, ResourceExt as _,
};

use crate::{
    backoff::Backoff,
    deployment::template_hash,
    expectations::Expectations,
    history::{self, Synced},
    ownership::{self, Claim},
    podcontrol::PodControl,
    pods, runtime, Ctx,
};

pub const REVISION_HASH: &str = "controller-revision-hash";

// ------------------------------------------------------------------------------------
// Node eligibility

fn requirement_matches(r: &NodeSelectorRequirement, value: Option<&str>) -> bool {
    let values = r.values.as_deref().unwrap_or_default();
    match r.operator.as_str() {
        "In" => value.is_some_and(|v| values.iter().any(|x| x == v)),
        "NotIn" => value.is_none_or(|v| !values.iter().any(|x| x == v)),
        "Exists" => value.is_some(),
        "DoesNotExist" => value.is_none(),
        // Gt/Lt: a single integer value; labels that are not integers do not match.
        "Gt" | "Lt" => {
            let (Some(v), [bound]) = (value.and_then(|v| v.parse::<i64>().ok()), values) else {
                return false;
            };
            let Ok(bound) = bound.parse::<i64>() else {
                return false;
            };
            if r.operator == "Gt" {
                v > bound
            } else {
                v < bound
            }
        }
        _ => false,
    }
}

/// A `nodeSelectorTerm`: all expressions (labels) and fields (`metadata.name`) match. An
/// empty term matches nothing (upstream).
pub fn term_matches(t: &NodeSelectorTerm, node: &Node) -> bool {
    let exprs = t.match_expressions.as_deref().unwrap_or_default();
    let fields = t.match_fields.as_deref().unwrap_or_default();
    if exprs.is_empty() && fields.is_empty() {
        return false;
    }
    let labels = node.labels();
    exprs
        .iter()
        .all(|r| requirement_matches(r, labels.get(&r.key).map(String::as_str)))
        && fields.iter().all(|r| {
            let v = (r.key == "metadata.name")
                .then_some(node.metadata.name.as_deref())
                .flatten();
            requirement_matches(r, v)
        })
}

/// Upstream's `ToleratesTaint`.
pub fn tolerates(t: &Toleration, taint: &Taint) -> bool {
    if let Some(e) = t.effect.as_deref().filter(|e| !e.is_empty()) {
        if e != taint.effect {
            return false;
        }
    }
    let key = t.key.as_deref().unwrap_or("");
    match t.operator.as_deref().unwrap_or("Equal") {
        "Exists" => key.is_empty() || key == taint.key,
        // Equal (the default)
        _ => {
            key == taint.key
                && t.value.as_deref().unwrap_or("") == taint.value.as_deref().unwrap_or("")
        }
    }
}

/// (should run, should continue running) of a pod with `spec` on `node`.
pub fn node_should_run(spec: &PodSpec, node: &Node) -> (bool, bool) {
    let labels = node.labels();
    let selector_ok = spec
        .node_selector
        .iter()
        .flatten()
        .all(|(k, v)| labels.get(k) == Some(v));
    let affinity_ok = match spec
        .affinity
        .as_ref()
        .and_then(|a| a.node_affinity.as_ref())
        .and_then(|na| {
            na.required_during_scheduling_ignored_during_execution
                .as_ref()
        }) {
        Some(sel) => sel
            .node_selector_terms
            .iter()
            .any(|t| term_matches(t, node)),
        None => true,
    };
    if !(selector_ok && affinity_ok) {
        return (false, false);
    }
    let tolerations = spec.tolerations.as_deref().unwrap_or_default();
    let untolerated = |effect: &str| {
        node.spec
            .as_ref()
            .and_then(|s| s.taints.as_ref())
            .into_iter()
            .flatten()
            .filter(|t| t.effect == effect)
            .any(|taint| !tolerations.iter().any(|t| tolerates(t, taint)))
    };
    let no_execute = untolerated("NoExecute");
    let no_schedule = untolerated("NoSchedule");
    (!no_execute && !no_schedule, !no_execute)
}

/// Upstream's `AddOrUpdateDaemonPodTolerations`.
pub fn add_default_tolerations(spec: &mut PodSpec) {
    let mut defaults = vec![
        ("node.kubernetes.io/not-ready", "NoExecute"),
        ("node.kubernetes.io/unreachable", "NoExecute"),
        ("node.kubernetes.io/disk-pressure", "NoSchedule"),
        ("node.kubernetes.io/memory-pressure", "NoSchedule"),
        ("node.kubernetes.io/pid-pressure", "NoSchedule"),
        ("node.kubernetes.io/unschedulable", "NoSchedule"),
    ];
    if spec.host_network == Some(true) {
        defaults.push(("node.kubernetes.io/network-unavailable", "NoSchedule"));
    }
    let tols = spec.tolerations.get_or_insert_with(Vec::new);
    for (key, effect) in defaults {
        let t = Toleration {
            key: Some(key.into()),
            operator: Some("Exists".into()),
            effect: Some(effect.into()),
            ..Default::default()
        };
        if !tols.iter().any(|x| x.key == t.key && x.effect == t.effect) {
            tols.push(t);
        }
    }
}

/// Upstream's `ReplaceDaemonSetPodNodeNameNodeAffinity`: the only required term is
/// `metadata.name In [node]` (preferred terms are kept).
pub fn pin_to_node(spec: &mut PodSpec, node: &str) {
    let affinity = spec.affinity.get_or_insert_with(Affinity::default);
    let na = affinity
        .node_affinity
        .get_or_insert_with(NodeAffinity::default);
    na.required_during_scheduling_ignored_during_execution = Some(NodeSelector {
        node_selector_terms: vec![NodeSelectorTerm {
            match_fields: Some(vec![NodeSelectorRequirement {
                key: "metadata.name".into(),
                operator: "In".into(),
                values: Some(vec![node.into()]),
            }]),
            match_expressions: None,
        }],
    });
}

/// The node a DaemonSet pod runs on or is meant for (`spec.nodeName`, else the
/// `metadata.name In [x]` affinity term; upstream's `GetTargetNodeName`).
pub fn target_node(p: &Pod) -> Option<String> {
    let spec = p.spec.as_ref()?;
    if let Some(n) = spec.node_name.as_ref().filter(|n| !n.is_empty()) {
        return Some(n.clone());
    }
    spec.affinity
        .as_ref()?
        .node_affinity
        .as_ref()?
        .required_during_scheduling_ignored_during_execution
        .as_ref()?
        .node_selector_terms
        .iter()
        .flat_map(|t| t.match_fields.iter().flatten())
        .find(|r| r.key == "metadata.name" && r.operator == "In")
        .and_then(|r| r.values.as_ref()?.first().cloned())
}

// ------------------------------------------------------------------------------------
// The plan

#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    /// Nodes to create a pod for.
    pub create: Vec<String>,
    /// (name, uid) of pods to delete.
    pub delete: Vec<(String, String)>,
    pub status: DaemonSetStatus,
    /// Requeue for minReadySeconds.
    pub requeue: Option<Duration>,
}

/// What of a node decides DaemonSet placement: labels, taints, `unschedulable` and the
/// conditions' types and statuses (not their heartbeat times).
pub fn node_fingerprint(n: &Node) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    n.labels().hash(&mut h);
    let spec = n.spec.clone().unwrap_or_default();
    serde_json::to_string(&spec.taints)
        .unwrap_or_default()
        .hash(&mut h);
    spec.unschedulable.hash(&mut h);
    for c in n
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .into_iter()
        .flatten()
    {
        (&c.type_, &c.status).hash(&mut h);
    }
    h.finish()
}

/// The template hash the DaemonSet's current pods (and its current ControllerRevision)
/// carry; `status.collisionCount` is part of it, as upstream's `ComputeHash`.
pub fn current_hash(ds: &DaemonSet) -> String {
    template_hash(
        &ds.spec
            .as_ref()
            .map(|s| s.template.clone())
            .unwrap_or_default(),
        ds.status.as_ref().and_then(|s| s.collision_count),
    )
}

fn hash_of(p: &Pod) -> Option<&str> {
    p.labels().get(REVISION_HASH).map(String::as_str)
}

/// The RollingUpdate strategy's `maxSurge` as a pod count (upstream's `SurgeCount`: a
/// percentage of the nodes that should run the pod, rounded up); 0 without RollingUpdate,
/// unset, or unparsable (then the plain maxUnavailable update runs).
fn max_surge(spec: &k8s_openapi::api::apps::v1::DaemonSetSpec, desired: i32) -> i32 {
    let Some(strategy) = spec.update_strategy.as_ref() else {
        return 0;
    };
    if strategy.type_.as_deref().unwrap_or("RollingUpdate") != "RollingUpdate" {
        return 0;
    }
    strategy
        .rolling_update
        .as_ref()
        .and_then(|r| r.max_surge.as_ref())
        .and_then(|ms| crate::deployment::scaled_value(ms, desired, true).ok())
        .unwrap_or(0)
        .max(0)
}

/// What stays on one node after the per-node cleanup.
struct Kept<'a> {
    node: String,
    /// The oldest pod at the current revision.
    new: Option<&'a Pod>,
    /// The oldest pod at another revision (only next to `new` while surging).
    old: Option<&'a Pod>,
    should_run: bool,
}

/// Plans one reconcile of `ds` over `nodes` and the pods it controls.
pub fn plan(ds: &DaemonSet, nodes: &[&Node], owned: &[&Pod], now: Timestamp) -> Plan {
    let spec = ds.spec.clone().unwrap_or_default();
    let template_spec = spec.template.spec.clone().unwrap_or_default();
    let mut pod_spec = template_spec;
    add_default_tolerations(&mut pod_spec);
    let hash = current_hash(ds);
    let min_ready = spec.min_ready_seconds.unwrap_or(0);
    let mut create = Vec::new();
    let mut delete: Vec<&Pod> = Vec::new();
    let mut by_node: BTreeMap<String, Vec<&Pod>> = BTreeMap::new();
    for p in owned.iter().copied().filter(|p| !pods::is_terminating(p)) {
        match target_node(p) {
            Some(n) => by_node.entry(n).or_default().push(p),
            None => delete.push(p), // nowhere to run: not ours to keep
        }
    }
    let node_names: Vec<String> = nodes.iter().map(|n| n.name_any()).collect();
    // Pods on nodes that are gone.
    for (n, ps) in &by_node {
        if !node_names.contains(n) {
            delete.extend(ps.iter().copied());
        }
    }
    let eligibility: Vec<(bool, bool)> = nodes
        .iter()
        .map(|n| node_should_run(&pod_spec, n))
        .collect();
    let desired = eligibility.iter().filter(|(run, _)| *run).count() as i32;
    // Upstream computes the surge against desiredNumberScheduled before the node pass.
    let surge = max_surge(&spec, desired);
    let mut status = DaemonSetStatus {
        observed_generation: ds.metadata.generation,
        desired_number_scheduled: desired,
        collision_count: ds.status.as_ref().and_then(|s| s.collision_count),
        ..Default::default()
    };
    let mut ready_at: Option<i64> = None;
    let mut kept: Vec<Kept<'_>> = Vec::new();
    for (node, (should_run, should_continue)) in nodes.iter().zip(eligibility) {
        let name = node.name_any();
        let mut here: Vec<&Pod> = by_node.get(&name).cloned().unwrap_or_default();
        // Failed pods are deleted (and replaced below on the next pass).
        let (failed, live): (Vec<&Pod>, Vec<&Pod>) =
            here.drain(..).partition(|p| pods::phase(p) == "Failed");
        delete.extend(failed.iter().copied());
        let mut live = live;
        live.sort_by_key(|p| p.metadata.creation_timestamp.as_ref().map(|t| t.0));
        if should_run || (should_continue && !live.is_empty()) {
            if live.is_empty() {
                if should_run && failed.is_empty() {
                    create.push(name.clone());
                }
                kept.push(Kept {
                    node: name,
                    new: None,
                    old: None,
                    should_run,
                });
                continue;
            }
            let (new, old) = if surge == 0 {
                // Keep the oldest; more than one is a mistake to fix.
                delete.extend(live.iter().skip(1).copied());
                let p = live[0];
                if hash_of(p) == Some(&hash) {
                    (Some(p), None)
                } else {
                    (None, Some(p))
                }
            } else {
                // Surging (upstream's podsShouldBeOnNode): at most the oldest pod at the
                // current revision and the oldest at another; the old one goes once the
                // new one is available, or at once when it is not even ready.
                let new = live.iter().copied().find(|p| hash_of(p) == Some(&hash));
                let old = live.iter().copied().find(|p| hash_of(p) != Some(&hash));
                delete.extend(
                    live.iter()
                        .copied()
                        .filter(|p| Some(p.uid()) != new.map(|n| n.uid()))
                        .filter(|p| Some(p.uid()) != old.map(|o| o.uid())),
                );
                match (new, old) {
                    (Some(n), Some(o))
                        if !pods::is_ready(o) || pods::is_available(n, min_ready, now) =>
                    {
                        delete.push(o);
                        (Some(n), None)
                    }
                    other => other,
                }
            };
            // Status from the oldest pod kept (upstream reads the node's oldest pod).
            let p = old.or(new).expect("a live pod is kept");
            if should_run {
                status.current_number_scheduled += 1;
                if pods::is_ready(p) {
                    status.number_ready += 1;
                }
                if pods::is_available(p, min_ready, now) {
                    *status.number_available.get_or_insert(0) += 1;
                } else if let Some(s) = pods::seconds_until_available(p, min_ready, now) {
                    ready_at = Some(ready_at.map_or(s, |r: i64| r.min(s)));
                }
                if hash_of(p) == Some(&hash) {
                    *status.updated_number_scheduled.get_or_insert(0) += 1;
                }
            } else {
                status.number_misscheduled += 1;
            }
            // A surge pod waiting for availability also needs a look when it gets there.
            if let Some(s) = new
                .filter(|n| old.is_some() && !pods::is_available(n, min_ready, now))
                .and_then(|n| pods::seconds_until_available(n, min_ready, now))
            {
                ready_at = Some(ready_at.map_or(s, |r: i64| r.min(s)));
            }
            kept.push(Kept {
                node: name,
                new,
                old,
                should_run,
            });
        } else {
            if !live.is_empty() {
                status.number_misscheduled += 1;
            }
            delete.extend(live.iter().copied());
        }
    }
    status.number_unavailable =
        Some(status.desired_number_scheduled - status.number_available.unwrap_or(0));

    let strategy = spec.update_strategy.clone().unwrap_or_default();
    if surge > 0 {
        create.extend(surge_update(&kept, surge, min_ready, now));
    } else if strategy.type_.as_deref().unwrap_or("RollingUpdate") == "RollingUpdate" {
        // RollingUpdate without surge: upstream's rollingUpdate, maxUnavailable at a time.
        let mu = strategy
            .rolling_update
            .and_then(|r| r.max_unavailable)
            .unwrap_or(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(1));
        let max_unavailable =
            crate::deployment::scaled_value(&mu, status.desired_number_scheduled, true)
                .unwrap_or(1)
                // Upstream: both 0 would never progress; one at a time then.
                .max(1);
        let mut unavailable = 0;
        let mut replace_now: Vec<&Pod> = Vec::new();
        let mut candidates: Vec<&Pod> = Vec::new();
        for k in kept.iter().filter(|k| k.should_run) {
            match (k.new, k.old) {
                (None, None) => unavailable += 1,
                (Some(p), _) => {
                    if !pods::is_available(p, min_ready, now) {
                        unavailable += 1;
                    }
                }
                (None, Some(p)) => {
                    if !pods::is_available(p, min_ready, now) {
                        replace_now.push(p);
                    } else if unavailable < max_unavailable {
                        candidates.push(p);
                    }
                }
            }
        }
        let room = (max_unavailable - unavailable).max(0) as usize;
        delete.extend(replace_now);
        delete.extend(candidates.into_iter().take(room));
    }

    let mut seen = std::collections::BTreeSet::new();
    let delete = delete
        .into_iter()
        .filter(|p| seen.insert(p.uid()))
        .map(|p| (p.name_any(), p.uid().unwrap_or_default()))
        .collect();
    Plan {
        create,
        delete,
        status,
        requeue: ready_at.map(|s| Duration::from_secs(s.unsigned_abs())),
    }
}

/// RollingUpdate with `maxSurge` (upstream's surge path of `rollingUpdate`): the nodes to
/// get a pod at the current revision *next to* their old one, which the per-node pass
/// deletes only once the new pod is available, so the DaemonSet never has fewer available
/// pods than nodes that run it (upstream requires maxUnavailable 0 with maxSurge, and its
/// surge path does not consult it). A node whose old pod is not available gets its
/// replacement at once, outside the surge budget; otherwise at most `max_surge` nodes
/// have a new pod that is not yet available at any time. Only nodes that should run the
/// pod get one (upstream also surges onto nodes that merely may keep their old pod).
fn surge_update(kept: &[Kept<'_>], max_surge: i32, min_ready: i32, now: Timestamp) -> Vec<String> {
    let mut surging = 0;
    let mut replace_now = Vec::new();
    let mut candidates = Vec::new();
    for k in kept.iter().filter(|k| k.should_run) {
        match (k.new, k.old) {
            // Nothing here (the node pass creates one) or already updated.
            (None, None) | (Some(_), None) => {}
            (None, Some(old)) if !pods::is_available(old, min_ready, now) => {
                replace_now.push(k.node.clone())
            }
            (None, Some(_)) => candidates.push(k.node.clone()),
            (Some(new), Some(_)) => {
                if !pods::is_available(new, min_ready, now) {
                    surging += 1;
                }
            }
        }
    }
    let room = (max_surge - surging).max(0) as usize;
    replace_now.extend(candidates.into_iter().take(room));
    replace_now
}

/// The pod for `node`: the template, default tolerations, the node affinity pin and the
/// revision hash label.
pub fn pod_for(ds: &DaemonSet, node: &str) -> Pod {
    let mut template = ds
        .spec
        .as_ref()
        .map(|s| s.template.clone())
        .unwrap_or_default();
    template
        .metadata
        .get_or_insert_with(Default::default)
        .labels
        .get_or_insert_with(Default::default)
        .insert(REVISION_HASH.into(), current_hash(ds));
    let spec = template.spec.get_or_insert_with(Default::default);
    add_default_tolerations(spec);
    pin_to_node(spec, node);
    pods::from_template(
        &template,
        ds.namespace().as_deref().unwrap_or("default"),
        &ds.name_any(),
        ownership::controller_reference(ds),
    )
}

// ------------------------------------------------------------------------------------
// Runtime

struct State {
    ctx: Ctx,
    pods: Store<Pod>,
    nodes: Store<Node>,
    revisions: Store<ControllerRevision>,
    expectations: Expectations,
    backoff: Backoff,
}

pub async fn run(ctx: Ctx) -> anyhow::Result<()> {
    let client = ctx.client.clone();
    let (pod_store, pod_stream) = runtime::reflect::<Pod>(&client);
    let (revision_store, revision_stream) = runtime::reflect::<ControllerRevision>(&client);
    let (node_store, node_writer) = kube::runtime::reflector::store::<Node>();
    // Upstream's shouldIgnoreNodeUpdate: heartbeats (condition timestamps, resource
    // versions) do not re-reconcile every DaemonSet; label, taint, schedulability and
    // condition-status changes, additions and deletions do.
    let seen: Arc<std::sync::Mutex<HashMap<String, u64>>> = Arc::default();
    let node_stream = kube::runtime::reflector::reflector(
        node_writer,
        watcher(Api::<Node>::all(client.clone()), watcher::Config::default()),
    )
    .default_backoff()
    .filter_map(move |ev| {
        let mut seen = seen.lock().unwrap_or_else(|e| e.into_inner());
        let out = match ev {
            Ok(watcher::Event::Apply(n) | watcher::Event::InitApply(n)) => {
                let fp = node_fingerprint(&n);
                (seen.insert(n.name_any(), fp) != Some(fp)).then_some(Ok(n))
            }
            Ok(watcher::Event::Delete(n)) => {
                seen.remove(&n.name_any());
                Some(Ok(n))
            }
            Ok(watcher::Event::Init | watcher::Event::InitDone) => None,
            Err(e) => Some(Err(e)),
        };
        std::future::ready(out)
    });
    let controller = Controller::new(
        Api::<DaemonSet>::all(client.clone()),
        watcher::Config::default(),
    );
    let sets = controller.store();
    let pod_sets = sets.clone();
    let state = Arc::new(State {
        ctx,
        pods: pod_store,
        nodes: node_store,
        revisions: revision_store,
        expectations: Expectations::default(),
        backoff: Backoff::default(),
    });
    let results = controller
        .watches_stream(pod_stream, move |pod: Pod| {
            // The controlling DaemonSet, or (orphans) every DaemonSet that selects it.
            if let Some(r) = runtime::controller_owner::<DaemonSet>(&pod, "DaemonSet") {
                return vec![r];
            }
            pod_sets
                .state()
                .iter()
                .filter(|d| {
                    d.namespace() == pod.namespace()
                        && ownership::selects(
                            d.spec.as_ref().map(|s| &s.selector),
                            pod.metadata.labels.as_ref(),
                        )
                })
                .map(|d| ObjectRef::from_obj(d.as_ref()))
                .collect()
        })
        // A revision changed or deleted by someone else: its DaemonSet restores its history.
        .watches_stream(revision_stream, |r: ControllerRevision| {
            runtime::controller_owner::<DaemonSet>(&r, "DaemonSet")
        })
        // Any node change may change every DaemonSet's eligible set.
        .watches_stream(node_stream, move |_node: Node| {
            sets.state()
                .iter()
                .map(|d| ObjectRef::from_obj(d.as_ref()))
                .collect::<Vec<_>>()
        })
        .run(
            reconcile,
            |d, _e, st: Arc<State>| runtime::requeue_after_failure(d.as_ref(), &st.backoff),
            state,
        );
    runtime::drain("daemonset", results).await;
    Ok(())
}

async fn reconcile(ds: Arc<DaemonSet>, st: Arc<State>) -> Result<Action, kube::Error> {
    let key = runtime::key(ds.as_ref());
    let ns = ds.namespace().unwrap_or_default();
    let uid = ds.uid().unwrap_or_default();
    let _ = st.pods.wait_until_ready().await;
    let _ = st.nodes.wait_until_ready().await;
    let _ = st.revisions.wait_until_ready().await;
    if ds.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    // The current template's ControllerRevision first (upstream's constructHistory), so
    // the hash the new pods carry names a revision `kubectl rollout undo` can return to.
    let ds_api: Api<DaemonSet> = Api::namespaced(st.ctx.client.clone(), &ns);
    let revision_api: Api<ControllerRevision> = Api::namespaced(st.ctx.client.clone(), &ns);
    let hash = current_hash(&ds);
    let revisions = st.revisions.state();
    let owned_revisions: Vec<&ControllerRevision> = revisions
        .iter()
        .filter(|r| {
            r.namespace().as_deref() == Some(&ns)
                && ownership::controller_ref(&r.metadata).is_some_and(|o| o.uid == uid)
        })
        .map(|r| r.as_ref())
        .collect();
    if let Synced::Collision =
        history::sync(&revision_api, &ds_api, &ds, &hash, &owned_revisions).await?
    {
        // The status write brings the DaemonSet back with the new collisionCount.
        return Ok(Action::await_change());
    }
    // Claim the namespace's pods (upstream's ControllerRefManager): matching orphans
    // are adopted, owned pods that stopped matching released.
    let pod_api: Api<Pod> = Api::namespaced(st.ctx.client.clone(), &ns);
    let selector = ds.spec.as_ref().map(|s| &s.selector);
    let mut owned: Vec<Arc<Pod>> = Vec::new();
    for p in st
        .pods
        .state()
        .into_iter()
        .filter(|p| p.namespace().as_deref() == Some(&ns))
    {
        match ownership::claim(&uid, false, selector, &p.metadata) {
            Claim::Owned => owned.push(p),
            Claim::Adopt => {
                let owner = ownership::controller_reference(ds.as_ref());
                match ownership::adopt(&pod_api, &p.metadata, owner).await {
                    Ok(a) => {
                        tracing::info!("daemonset {key}: adopted pod {}", p.name_any());
                        owned.push(Arc::new(a));
                    }
                    Err(kube::Error::Api(e)) if e.code == 404 => {}
                    Err(e) => return Err(e),
                }
            }
            Claim::Release => match ownership::release(&pod_api, &p.metadata, &uid).await {
                Ok(_) => tracing::info!("daemonset {key}: released pod {}", p.name_any()),
                Err(kube::Error::Api(e)) if e.code == 404 => {}
                Err(e) => return Err(e),
            },
            Claim::Ignore => {}
        }
    }
    let owned_refs: Vec<&Pod> = owned.iter().map(|p| p.as_ref()).collect();
    let nodes = st.nodes.state();
    let mut node_refs: Vec<&Node> = nodes.iter().map(|n| n.as_ref()).collect();
    node_refs.sort_by_key(|n| n.name_any());
    let now = Timestamp::now();
    let plan = plan(&ds, &node_refs, &owned_refs, now);
    let satisfied = st
        .expectations
        .satisfied(&key, runtime::seen(&st.pods, &ns));
    if satisfied {
        let control = PodControl {
            ctx: &st.ctx,
            expectations: &st.expectations,
            key: &key,
            kind: "daemonset",
            owner: ds.as_ref(),
            api: &pod_api,
        };
        // Deletes first: an old pod whose replacement is available goes before the
        // next node's surge pod is created, so the DaemonSet never runs more than
        // desired + maxSurge pods, not even for the length of one reconcile.
        control.delete(&plan.delete).await?;
        let (_, err) = control
            .create(
                plan.create.len(),
                |i| pod_for(&ds, &plan.create[i]),
                |p| format!(" for node {}", target_node(p).unwrap_or_default()),
            )
            .await;
        if let Some(e) = err {
            return Err(e);
        }
        // Upstream's cleanupHistory: old revisions beyond revisionHistoryLimit, except
        // those a pod still runs.
        let live: std::collections::HashSet<&str> = owned_refs
            .iter()
            .filter_map(|p| p.labels().get(REVISION_HASH).map(String::as_str))
            .collect();
        let limit = ds
            .spec
            .as_ref()
            .and_then(|s| s.revision_history_limit)
            .unwrap_or(history::DEFAULT_HISTORY_LIMIT);
        let old = history::to_delete(&owned_revisions, &hash, &live, limit);
        history::cleanup(&revision_api, &ds, &old).await?;
    }
    if ds.status.as_ref() != Some(&plan.status) {
        let api = ds_api;
        let s = &plan.status;
        let body = serde_json::json!({"status": {
            "desiredNumberScheduled": s.desired_number_scheduled,
            "currentNumberScheduled": s.current_number_scheduled,
            "numberMisscheduled": s.number_misscheduled,
            "numberReady": s.number_ready,
            "updatedNumberScheduled": s.updated_number_scheduled.unwrap_or(0),
            "numberAvailable": s.number_available.unwrap_or(0),
            "numberUnavailable": s.number_unavailable.unwrap_or(0),
            "observedGeneration": s.observed_generation,
        }});
        match api
            .patch_status(
                &ds.name_any(),
                &PatchParams::default(),
                &Patch::Merge(&body),
            )
            .await
        {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 404 => return Ok(Action::await_change()),
            Err(e) => return Err(e),
        }
    }
    st.backoff.succeeded(&key);
    if !satisfied {
        return Ok(Action::requeue(Duration::from_secs(1)));
    }
    Ok(Action::requeue(
        plan.requeue.unwrap_or(Duration::from_secs(300)),
    ))
}

#[cfg(test)]
mod tests {
    use k8s_openapi::{
        api::{
            apps::v1::{DaemonSetSpec, DaemonSetUpdateStrategy, RollingUpdateDaemonSet},
            core::v1::{NodeSpec, PodTemplateSpec},
        },
        apimachinery::pkg::{
            apis::meta::v1::{LabelSelector, ObjectMeta},
            util::intstr::IntOrString,
        },
    };

    use super::*;
    use crate::pods::test_pods::*;

    fn node(name: &str, labels: &[(&str, &str)], taints: &[(&str, &str)]) -> Node {
        Node {
            metadata: ObjectMeta {
                name: Some(name.into()),
                labels: Some(
                    labels
                        .iter()
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .collect(),
                ),
                ..Default::default()
            },
            spec: Some(NodeSpec {
                taints: Some(
                    taints
                        .iter()
                        .map(|(k, e)| Taint {
                            key: k.to_string(),
                            effect: e.to_string(),
                            ..Default::default()
                        })
                        .collect(),
                ),
                ..Default::default()
            }),
            status: None,
        }
    }

    fn ds(spec: PodSpec) -> DaemonSet {
        DaemonSet {
            metadata: ObjectMeta {
                name: Some("agent".into()),
                namespace: Some("kube-system".into()),
                uid: Some("ds-uid".into()),
                generation: Some(1),
                ..Default::default()
            },
            spec: Some(DaemonSetSpec {
                selector: LabelSelector::default(),
                template: PodTemplateSpec {
                    metadata: None,
                    spec: Some(spec),
                },
                ..Default::default()
            }),
            status: None,
        }
    }

    fn req(key: &str, op: &str, values: &[&str]) -> NodeSelectorRequirement {
        NodeSelectorRequirement {
            key: key.into(),
            operator: op.into(),
            values: (!values.is_empty()).then(|| values.iter().map(|v| v.to_string()).collect()),
        }
    }

    #[test]
    fn eligibility() {
        let linux = node("a", &[("os", "linux"), ("cores", "8")], &[]);
        let tainted = node("b", &[("os", "linux")], &[("dedicated", "NoSchedule")]);
        let evicting = node("c", &[("os", "linux")], &[("dedicated", "NoExecute")]);
        let not_ready = node("d", &[], &[("node.kubernetes.io/not-ready", "NoExecute")]);
        let mut spec = PodSpec::default();
        add_default_tolerations(&mut spec);
        assert_eq!(node_should_run(&spec, &linux), (true, true));
        assert_eq!(node_should_run(&spec, &tainted), (false, true));
        assert_eq!(node_should_run(&spec, &evicting), (false, false));
        assert_eq!(
            node_should_run(&spec, &not_ready),
            (true, true),
            "default tolerations"
        );
        spec.tolerations.as_mut().unwrap().push(Toleration {
            key: Some("dedicated".into()),
            operator: Some("Exists".into()),
            ..Default::default()
        });
        assert_eq!(node_should_run(&spec, &evicting), (true, true));
        spec.node_selector = Some([("os".to_string(), "windows".to_string())].into());
        assert_eq!(node_should_run(&spec, &linux), (false, false));
        spec.node_selector = None;
        let term = |reqs: Vec<NodeSelectorRequirement>| NodeSelectorTerm {
            match_expressions: Some(reqs),
            match_fields: None,
        };
        let with_terms = |terms: Vec<NodeSelectorTerm>| {
            let mut s = spec.clone();
            s.affinity = Some(Affinity {
                node_affinity: Some(NodeAffinity {
                    required_during_scheduling_ignored_during_execution: Some(NodeSelector {
                        node_selector_terms: terms,
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            });
            s
        };
        let cases = [
            (vec![term(vec![req("os", "In", &["linux", "bsd"])])], true),
            (vec![term(vec![req("os", "NotIn", &["linux"])])], false),
            (vec![term(vec![req("gpu", "Exists", &[])])], false),
            (vec![term(vec![req("gpu", "DoesNotExist", &[])])], true),
            (vec![term(vec![req("cores", "Gt", &["4"])])], true),
            (vec![term(vec![req("cores", "Lt", &["4"])])], false),
            (
                vec![
                    term(vec![req("gpu", "Exists", &[])]),
                    term(vec![req("os", "In", &["linux"])]),
                ],
                true,
            ),
            (
                vec![term(vec![
                    req("os", "In", &["linux"]),
                    req("gpu", "Exists", &[]),
                ])],
                false,
            ),
            (
                vec![NodeSelectorTerm {
                    match_expressions: None,
                    match_fields: Some(vec![req("metadata.name", "In", &["a"])]),
                }],
                true,
            ),
            (vec![NodeSelectorTerm::default()], false),
        ];
        for (terms, want) in cases {
            assert_eq!(
                node_should_run(&with_terms(terms.clone()), &linux).0,
                want,
                "{terms:?}"
            );
        }
    }

    #[test]
    fn tolerations_match_as_upstream() {
        let taint = Taint {
            key: "k".into(),
            value: Some("v".into()),
            effect: "NoSchedule".into(),
            ..Default::default()
        };
        let t = |key: Option<&str>, op: Option<&str>, value: Option<&str>, effect: Option<&str>| {
            Toleration {
                key: key.map(Into::into),
                operator: op.map(Into::into),
                value: value.map(Into::into),
                effect: effect.map(Into::into),
                toleration_seconds: None,
            }
        };
        assert!(tolerates(&t(Some("k"), None, Some("v"), None), &taint));
        assert!(!tolerates(&t(Some("k"), None, Some("w"), None), &taint));
        assert!(
            tolerates(&t(None, Some("Exists"), None, None), &taint),
            "empty key Exists tolerates all"
        );
        assert!(!tolerates(
            &t(Some("k"), Some("Exists"), None, Some("NoExecute")),
            &taint
        ));
    }

    #[test]
    fn heartbeats_do_not_change_the_fingerprint() {
        use k8s_openapi::{
            api::core::v1::{NodeCondition, NodeStatus},
            apimachinery::pkg::apis::meta::v1::Time,
        };
        let mut n = node("a", &[("os", "linux")], &[]);
        let beat = |n: &mut Node, at: i64, status: &str| {
            n.status = Some(NodeStatus {
                conditions: Some(vec![NodeCondition {
                    type_: "Ready".into(),
                    status: status.into(),
                    last_heartbeat_time: Some(Time(ts(at))),
                    ..Default::default()
                }]),
                ..Default::default()
            });
        };
        beat(&mut n, 1, "True");
        let fp = node_fingerprint(&n);
        beat(&mut n, 2, "True");
        n.metadata.resource_version = Some("99".into());
        assert_eq!(node_fingerprint(&n), fp);
        beat(&mut n, 3, "False");
        assert_ne!(node_fingerprint(&n), fp);
        let t = node("a", &[("os", "linux")], &[("x", "NoSchedule")]);
        assert_ne!(
            node_fingerprint(&t),
            node_fingerprint(&node("a", &[("os", "linux")], &[]))
        );
    }

    #[test]
    fn one_pod_per_node_and_cleanup() {
        let d = ds(PodSpec::default());
        let a = node("a", &[], &[]);
        let b = node("b", &[], &[]);
        let c = node("c", &[], &[("x", "NoExecute")]);
        let mut on_a = running(bound(pod("pa", 1), "a"), Some(2));
        on_a.metadata.labels = Some([(REVISION_HASH.to_string(), current_hash(&d))].into());
        let on_c = running(bound(pod("pc", 1), "c"), Some(2));
        let on_gone = running(bound(pod("pg", 1), "gone"), Some(2));
        let p = plan(&d, &[&a, &b, &c], &[&on_a, &on_c, &on_gone], ts(10));
        assert_eq!(p.create, vec!["b".to_string()]);
        let mut del: Vec<_> = p.delete.iter().map(|(n, _)| n.as_str()).collect();
        del.sort();
        assert_eq!(del, ["pc", "pg"]);
        assert_eq!(p.status.desired_number_scheduled, 2);
        assert_eq!(p.status.current_number_scheduled, 1);
        assert_eq!(p.status.number_ready, 1);
        assert_eq!(p.status.updated_number_scheduled, Some(1));
        assert_eq!(p.status.number_unavailable, Some(1));
        assert_eq!(p.status.number_misscheduled, 1);
        let pod = pod_for(&d, "b");
        assert_eq!(target_node(&pod).as_deref(), Some("b"));
        assert_eq!(pod.metadata.generate_name.as_deref(), Some("agent-"));
        assert!(pod.spec.unwrap().tolerations.unwrap().len() >= 6);
    }

    #[test]
    fn rolling_update_keeps_max_unavailable() {
        let d = ds(PodSpec::default()); // maxUnavailable defaults to 1
        let nodes: Vec<Node> = ["a", "b", "c"].iter().map(|n| node(n, &[], &[])).collect();
        let refs: Vec<&Node> = nodes.iter().collect();
        let old: Vec<Pod> = ["a", "b", "c"]
            .iter()
            .map(|n| {
                let mut p = running(bound(pod(&format!("p{n}"), 1), n), Some(2));
                p.metadata.labels = Some([(REVISION_HASH.to_string(), "old".to_string())].into());
                p
            })
            .collect();
        let old_refs: Vec<&Pod> = old.iter().collect();
        let p = plan(&d, &refs, &old_refs, ts(10));
        assert_eq!(p.delete.len(), 1, "one at a time: {:?}", p.delete);
        assert!(p.create.is_empty());
        // Node a replaced by a new pod that is not yet ready: nothing more goes.
        let mut new_a = bound(pod("na", 5), "a");
        new_a.metadata.labels = Some([(REVISION_HASH.to_string(), current_hash(&d))].into());
        let refs2: Vec<&Pod> = vec![&new_a, &old[1], &old[2]];
        let p = plan(&d, &refs, &refs2, ts(10));
        assert!(p.delete.is_empty(), "{:?}", p.delete);
    }

    fn surging(max_surge: IntOrString) -> DaemonSet {
        let mut d = ds(PodSpec::default());
        d.spec.as_mut().unwrap().update_strategy = Some(DaemonSetUpdateStrategy {
            type_: Some("RollingUpdate".into()),
            rolling_update: Some(RollingUpdateDaemonSet {
                max_surge: Some(max_surge),
                max_unavailable: Some(IntOrString::Int(0)),
            }),
        });
        d
    }

    fn at(name: &str, node: &str, hash: &str, created: i64, ready_since: Option<i64>) -> Pod {
        let mut p = running(bound(pod(name, created), node), ready_since);
        p.metadata.labels = Some([(REVISION_HASH.to_string(), hash.to_string())].into());
        p
    }

    fn names(v: &[(String, String)]) -> Vec<&str> {
        let mut n: Vec<&str> = v.iter().map(|(n, _)| n.as_str()).collect();
        n.sort();
        n
    }

    #[test]
    fn max_surge_starts_the_new_pod_before_the_old_one_goes() {
        let d = surging(IntOrString::Int(1));
        let new = current_hash(&d);
        let nodes: Vec<Node> = ["a", "b", "c"].iter().map(|n| node(n, &[], &[])).collect();
        let refs: Vec<&Node> = nodes.iter().collect();
        let old: Vec<Pod> = ["a", "b", "c"]
            .iter()
            .map(|n| at(&format!("old-{n}"), n, "old", 1, Some(2)))
            .collect();
        // All old and available: one surge pod, nothing deleted.
        let p = plan(&d, &refs, &old.iter().collect::<Vec<_>>(), ts(10));
        assert_eq!(p.create, vec!["a".to_string()]);
        assert!(p.delete.is_empty(), "{:?}", p.delete);
        // The surge pod is not available yet: both stay, no second surge pod.
        let new_a = at("new-a", "a", &new, 5, None);
        let pods = [&new_a, &old[0], &old[1], &old[2]];
        let p = plan(&d, &refs, &pods, ts(10));
        assert!(p.create.is_empty(), "{:?}", p.create);
        assert!(p.delete.is_empty(), "{:?}", p.delete);
        assert_eq!(p.status.number_available, Some(3), "the old pods serve");
        // Available: its old pod goes and the next node surges in the same pass.
        let new_a = at("new-a", "a", &new, 5, Some(6));
        let pods = [&new_a, &old[0], &old[1], &old[2]];
        let p = plan(&d, &refs, &pods, ts(10));
        assert_eq!(names(&p.delete), ["old-a"]);
        assert_eq!(p.create, vec!["b".to_string()]);
        // A surge pod with minReadySeconds left asks for a requeue then.
        let mut slow = d.clone();
        slow.spec.as_mut().unwrap().min_ready_seconds = Some(30);
        let new_a = at("new-a", "a", &new, 5, Some(20));
        let pods = [&new_a, &old[0], &old[1], &old[2]];
        let p = plan(&slow, &refs, &pods, ts(40));
        assert!(p.delete.is_empty(), "available only at 50: {:?}", p.delete);
        assert!(
            p.create.is_empty(),
            "the surge budget is used: {:?}",
            p.create
        );
        assert_eq!(p.requeue, Some(Duration::from_secs(10)));
    }

    #[test]
    fn max_surge_budget_percentages_and_unavailable_old_pods() {
        let nodes: Vec<Node> = ["a", "b", "c", "d"]
            .iter()
            .map(|n| node(n, &[], &[]))
            .collect();
        let refs: Vec<&Node> = nodes.iter().collect();
        // 30% of 4 nodes, rounded up as upstream: 2 at a time.
        let d = surging(IntOrString::String("30%".into()));
        let new = current_hash(&d);
        let mut old: Vec<Pod> = ["a", "b", "c", "d"]
            .iter()
            .map(|n| at(&format!("old-{n}"), n, "old", 1, Some(2)))
            .collect();
        let p = plan(&d, &refs, &old.iter().collect::<Vec<_>>(), ts(10));
        assert_eq!(p.create, vec!["a".to_string(), "b".to_string()]);
        // An old pod that is not available is replaced at once, outside the budget; one
        // that is not even ready goes as soon as its replacement exists.
        old[3] = at("old-d", "d", "old", 1, None);
        let p = plan(&d, &refs, &old.iter().collect::<Vec<_>>(), ts(10));
        assert_eq!(
            p.create,
            vec!["d".to_string(), "a".to_string(), "b".to_string()]
        );
        let new_d = at("new-d", "d", &new, 5, None);
        let mut pods: Vec<&Pod> = old.iter().collect();
        pods.push(&new_d);
        let p = plan(&d, &refs, &pods, ts(10));
        assert_eq!(names(&p.delete), ["old-d"]);
        // Extra pods beyond one new and one old per node are cleaned up.
        let dup = at("old-a2", "a", "old", 3, Some(4));
        let p = plan(
            &d,
            &refs,
            &[&old[0], &dup, &old[1], &old[2], &new_d],
            ts(10),
        );
        assert_eq!(names(&p.delete), ["old-a2"]);
    }

    #[test]
    fn a_surge_rollout_never_drops_below_full_availability() {
        // Simulates the controller and kubelets: each pass applies the plan, then every
        // new pod becomes ready. Availability (a node with an available pod) must stay
        // at 5 of 5 throughout, and the rollout must finish.
        let d = surging(IntOrString::Int(2));
        let new = current_hash(&d);
        let nodes: Vec<Node> = (0..5).map(|i| node(&format!("n{i}"), &[], &[])).collect();
        let refs: Vec<&Node> = nodes.iter().collect();
        let mut pods: Vec<Pod> = (0..5)
            .map(|i| at(&format!("old-{i}"), &format!("n{i}"), "old", 1, Some(2)))
            .collect();
        let mut created = 0;
        for pass in 0..20 {
            let now = ts(100 + pass);
            let p = plan(&d, &refs, &pods.iter().collect::<Vec<_>>(), now);
            pods.retain(|x| {
                !p.delete
                    .iter()
                    .any(|(n, _)| Some(n) == x.metadata.name.as_ref())
            });
            let available_nodes = nodes
                .iter()
                .filter(|n| {
                    pods.iter().any(|x| {
                        target_node(x) == Some(n.name_any()) && pods::is_available(x, 0, now)
                    })
                })
                .count();
            assert_eq!(available_nodes, 5, "pass {pass}: deleted {:?}", p.delete);
            for n in &p.create {
                created += 1;
                pods.push(at(&format!("new-{created}"), n, &new, 100 + pass, None));
            }
            let waiting = pods
                .iter()
                .filter(|x| hash_of(x) == Some(&new) && !pods::is_available(x, 0, now))
                .count();
            assert!(waiting <= 2, "pass {pass}: {waiting} new pods unavailable");
            if p.create.is_empty() && p.delete.is_empty() {
                assert!(pods.iter().all(|x| hash_of(x) == Some(&new)), "{pass}");
                assert_eq!(pods.len(), 5);
                assert_eq!(created, 5, "one new pod per node");
                return;
            }
            // The kubelets: new pods become ready.
            for x in pods.iter_mut().filter(|x| hash_of(x) == Some(&new)) {
                if !pods::is_ready(x) {
                    *x = running(x.clone(), Some(100 + pass));
                }
            }
        }
        panic!("the rollout did not finish in 20 passes");
    }
}
