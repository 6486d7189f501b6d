//! Deployment controller (upstream `pkg/controller/deployment`): a Deployment owns
//! ReplicaSets, one per distinct pod template, told apart by the `pod-template-hash`
//! label (added to the RS's selector, labels and template labels).
//!
//! One reconcile plans one step of upstream's `syncDeployment` ([`plan`], pure) and the
//! runtime applies it; the next step runs when the ReplicaSets' status moves:
//! - paused, or a scaling event (`desired-replicas` annotation differs from
//!   `spec.replicas`): scale only (proportionally across active RSs), no new RS;
//! - `RollingUpdate`: scale the new RS up within `maxSurge`, then old ones down keeping
//!   `replicas - maxUnavailable` available (upstream's `reconcileNewReplicaSet` /
//!   `reconcileOldReplicaSets` with `cleanupUnhealthyReplicas`);
//! - `Recreate`: old RSs to 0, wait until no old pod runs, then the new RS to `replicas`;
//! - complete: delete old zero-replica RSs beyond `revisionHistoryLimit`.
//!
//! Revisions: the new RS gets `deployment.kubernetes.io/revision` = max(old) + 1, also
//! when an old RS is reused (rollback: `kubectl rollout undo` patches the Deployment's
//! template from the old RS; the controller then finds that RS as the new one and moves
//! it to the next revision). The Deployment carries its new RS's revision.
//!
//! The template hash: upstream's `ComputeHash` is fnv32a over Go's `DeepHashObject`
//! (a spew dump of the struct, not reproducible outside Go), then the collisionCount as
//! 4 little-endian bytes, rendered with `rand.SafeEncodeString` of the decimal number.
//! skiff hashes the template's canonical JSON (k8s-openapi's serialisation: fixed field
//! order, sorted maps) the same way: fnv32a, collisionCount as LE u32 when set,
//! SafeEncodeString of the decimal. Values differ from upstream's, the shape is the same
//! (`web-7c5b9f6d8` style, alphabet `bcdfghjklmnpqrstvwxz2456789`), and it is stable
//! across restarts and versions as long as the template JSON is.

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use k8s_openapi::{
    api::{
        apps::v1::{Deployment, DeploymentCondition, DeploymentStatus, ReplicaSet, ReplicaSetSpec},
        core::v1::{Pod, PodTemplateSpec},
    },
    apimachinery::pkg::{
        apis::meta::v1::{LabelSelector, ObjectMeta, Time},
        util::intstr::IntOrString,
    },
    jiff::Timestamp,
};
use kube::{
    api::{DeleteParams, ListParams, Patch, PatchParams, PostParams, Preconditions},
    runtime::{controller::Action, reflector::Store, watcher, Controller},
    Api, ResourceExt as _,
};

use crate::{
    backoff::Backoff,
    events::EventType,
    ownership::{self, Claim},
    runtime, Ctx,
};

pub const HASH_LABEL: &str = "pod-template-hash";
pub const REVISION: &str = "deployment.kubernetes.io/revision";
pub const DESIRED_REPLICAS: &str = "deployment.kubernetes.io/desired-replicas";
pub const MAX_REPLICAS: &str = "deployment.kubernetes.io/max-replicas";
/// Annotations of the Deployment never copied to its ReplicaSets (upstream's
/// `skipCopyAnnotation`).
const SKIP_COPY: &[&str] = &[
    "kubectl.kubernetes.io/last-applied-configuration",
    REVISION,
    "deployment.kubernetes.io/revision-history",
    DESIRED_REPLICAS,
    MAX_REPLICAS,
    "deprecated.deployment.rollback.to",
];

// ------------------------------------------------------------------------------------
// Hashing

/// FNV-1a, 32 bit.
pub fn fnv32a(data: &[u8]) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    for b in data {
        h ^= u32::from(*b);
        h = h.wrapping_mul(0x0100_0193);
    }
    h
}

/// Upstream's `rand.SafeEncodeString`: each byte mapped into an alphabet without vowels
/// (no words) and without 0/1/3 (confusable), so hashes are valid label values.
pub fn safe_encode(s: &str) -> String {
    const ALPHANUMS: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    s.bytes()
        .map(|b| ALPHANUMS[usize::from(b) % ALPHANUMS.len()] as char)
        .collect()
}

/// The template as JSON with null, `{}` and `[]` values dropped (recursively). Go's
/// apimachinery compares templates with `Semantic.DeepEqual`, where empty and nil
/// slices/maps are equal and struct-valued fields (`resources`) have no "unset": so
/// `resources: {}` sent by one client (kubectl's `rollout undo` patch does) and no
/// `resources` from another are the same template. Normalising this way gives that.
pub fn normalized(template: &PodTemplateSpec) -> serde_json::Value {
    fn prune(v: serde_json::Value) -> Option<serde_json::Value> {
        use serde_json::Value;
        match v {
            Value::Null => None,
            Value::Object(m) => {
                let m: serde_json::Map<String, Value> = m
                    .into_iter()
                    .filter_map(|(k, v)| prune(v).map(|v| (k, v)))
                    .collect();
                (!m.is_empty()).then_some(Value::Object(m))
            }
            Value::Array(a) => {
                let a: Vec<Value> = a
                    .into_iter()
                    .map(|v| prune(v).unwrap_or(Value::Null))
                    .collect();
                (!a.is_empty()).then_some(Value::Array(a))
            }
            other => Some(other),
        }
    }
    prune(serde_json::to_value(template).unwrap_or_default()).unwrap_or_default()
}

/// The `pod-template-hash` of a template (see the module docs for what is hashed).
pub fn template_hash(template: &PodTemplateSpec, collision_count: Option<i32>) -> String {
    let mut data = serde_json::to_vec(&normalized(template)).unwrap_or_default();
    if let Some(c) = collision_count {
        data.extend_from_slice(&(c as u32).to_le_bytes());
    }
    safe_encode(&fnv32a(&data).to_string())
}

/// Upstream's `EqualIgnoreHash`: templates equal once the hash label is dropped.
pub fn equal_ignore_hash(a: &PodTemplateSpec, b: &PodTemplateSpec) -> bool {
    let strip = |t: &PodTemplateSpec| {
        let mut t = t.clone();
        if let Some(l) = t.metadata.as_mut().and_then(|m| m.labels.as_mut()) {
            l.remove(HASH_LABEL);
        }
        if let Some(m) = t.metadata.as_mut() {
            if m.labels.as_ref().is_some_and(|l| l.is_empty()) {
                m.labels = None;
            }
        }
        normalized(&t)
    };
    strip(a) == strip(b)
}

// ------------------------------------------------------------------------------------
// maxSurge / maxUnavailable

/// Upstream's `GetScaledValueFromIntOrPercent`: an int, or `N%` of `total` rounded up or
/// down. A malformed value is an error naming it.
pub fn scaled_value(v: &IntOrString, total: i32, round_up: bool) -> Result<i32, String> {
    match v {
        IntOrString::Int(i) => Ok(*i),
        IntOrString::String(s) => {
            let pct: i64 = s
                .strip_suffix('%')
                .and_then(|n| n.parse().ok())
                .ok_or_else(|| {
                    format!("invalid value {s:?}: must be an integer or a percentage like \"25%\"")
                })?;
            let x = pct * i64::from(total);
            let v = if round_up {
                (x + 99).div_euclid(100)
            } else {
                x.div_euclid(100)
            };
            Ok(v as i32)
        }
    }
}

fn replicas(d: &Deployment) -> i32 {
    d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1)
}

fn is_recreate(d: &Deployment) -> bool {
    d.spec
        .as_ref()
        .and_then(|s| s.strategy.as_ref())
        .and_then(|s| s.type_.as_deref())
        == Some("Recreate")
}

/// Upstream's `ResolveFenceposts` for the Deployment: (maxSurge, maxUnavailable), surge
/// rounded up and unavailable rounded down; both 0 means unavailable 1 (a rollout must
/// be able to make progress). Recreate has neither.
pub fn fenceposts(d: &Deployment) -> Result<(i32, i32), String> {
    if is_recreate(d) {
        return Ok((0, 0));
    }
    let ru = d
        .spec
        .as_ref()
        .and_then(|s| s.strategy.as_ref())
        .and_then(|s| s.rolling_update.as_ref());
    let dflt = IntOrString::String("25%".into());
    let surge_v = ru.and_then(|r| r.max_surge.as_ref()).unwrap_or(&dflt);
    let unavail_v = ru.and_then(|r| r.max_unavailable.as_ref()).unwrap_or(&dflt);
    let n = replicas(d);
    let surge = scaled_value(surge_v, n, true)
        .map_err(|e| format!("spec.strategy.rollingUpdate.maxSurge: {e}"))?;
    let mut unavail = scaled_value(unavail_v, n, false)
        .map_err(|e| format!("spec.strategy.rollingUpdate.maxUnavailable: {e}"))?;
    if surge == 0 && unavail == 0 {
        unavail = 1;
    }
    Ok((surge, unavail))
}

/// Upstream's `MaxUnavailable`: capped at `replicas`, 0 for Recreate or no replicas.
fn max_unavailable(d: &Deployment, unavail: i32) -> i32 {
    if is_recreate(d) || replicas(d) == 0 {
        0
    } else {
        unavail.min(replicas(d))
    }
}

// ------------------------------------------------------------------------------------
// The plan

/// The planner's working copy of one ReplicaSet.
#[derive(Debug, Clone)]
struct View {
    name: String,
    uid: String,
    created: Option<Timestamp>,
    replicas: i32,
    status_replicas: i32,
    ready: i32,
    available: i32,
    annotations: BTreeMap<String, String>,
    resource_version: Option<String>,
    /// Not in the API yet: created by this plan.
    new_object: Option<ReplicaSet>,
    deleting: bool,
}

impl View {
    fn of(rs: &ReplicaSet) -> View {
        let st = rs.status.as_ref();
        View {
            name: rs.name_any(),
            uid: rs.uid().unwrap_or_default(),
            created: rs.metadata.creation_timestamp.as_ref().map(|t| t.0),
            replicas: rs.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1),
            status_replicas: st.map(|s| s.replicas).unwrap_or(0),
            ready: st.and_then(|s| s.ready_replicas).unwrap_or(0),
            available: st.and_then(|s| s.available_replicas).unwrap_or(0),
            annotations: rs.annotations().clone(),
            resource_version: rs.resource_version(),
            new_object: None,
            deleting: rs.metadata.deletion_timestamp.is_some(),
        }
    }

    fn revision(&self) -> i64 {
        revision_of(&self.annotations)
    }
}

fn revision_of(a: &BTreeMap<String, String>) -> i64 {
    a.get(REVISION).and_then(|r| r.parse().ok()).unwrap_or(0)
}

/// A write to the API the plan asks for, in order.
#[derive(Debug, Clone, PartialEq)]
pub enum Write {
    /// Create the new ReplicaSet.
    Create(Box<ReplicaSet>),
    /// Set `spec.replicas` (when `to` differs from `from`) and annotations of a ReplicaSet.
    Update {
        name: String,
        from: i32,
        to: i32,
        annotations: BTreeMap<String, String>,
        /// The version planned from: a stale cache makes the write conflict.
        resource_version: Option<String>,
    },
    /// Delete an old ReplicaSet (history cleanup).
    Delete { name: String, uid: String },
}

#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    pub writes: Vec<Write>,
    /// The Deployment's `deployment.kubernetes.io/revision`, when it must change.
    pub deployment_revision: Option<String>,
    pub status: DeploymentStatus,
    /// Check again after this long (minReadySeconds, progress deadline, Recreate waits).
    pub requeue: Option<Duration>,
}

/// Inputs of [`plan`].
pub struct Observed<'a> {
    pub deployment: &'a Deployment,
    /// The ReplicaSets this Deployment controls (claimed).
    pub replica_sets: Vec<&'a ReplicaSet>,
    /// Recreate: do pods of old ReplicaSets still run (any phase but Succeeded/Failed,
    /// terminating included)?
    pub old_pods_running: bool,
    pub now: Timestamp,
}

/// Upstream's `FindNewReplicaSet`: the oldest RS whose template equals the Deployment's.
fn find_new<'a>(d: &Deployment, rss: &[&'a ReplicaSet]) -> Option<&'a ReplicaSet> {
    let template = &d.spec.as_ref()?.template;
    let mut matching: Vec<&ReplicaSet> = rss
        .iter()
        .copied()
        .filter(|rs| {
            rs.spec
                .as_ref()
                .and_then(|s| s.template.as_ref())
                .is_some_and(|t| equal_ignore_hash(t, template))
        })
        .collect();
    matching.sort_by_key(|rs| {
        (
            rs.metadata.creation_timestamp.as_ref().map(|t| t.0),
            rs.name_any(),
        )
    });
    matching.first().copied()
}

/// The new ReplicaSet for the Deployment's current template (upstream's
/// `getNewReplicaSet` create branch).
pub fn new_replica_set(d: &Deployment, replicas: i32, revision: i64, max: i32) -> ReplicaSet {
    let spec = d.spec.clone().unwrap_or_default();
    let collision = d.status.as_ref().and_then(|s| s.collision_count);
    let hash = template_hash(&spec.template, collision);
    let mut template = spec.template.clone();
    let tm = template.metadata.get_or_insert_with(Default::default);
    tm.labels
        .get_or_insert_with(Default::default)
        .insert(HASH_LABEL.into(), hash.clone());
    let labels = tm.labels.clone();
    let mut selector: LabelSelector = spec.selector.clone();
    selector
        .match_labels
        .get_or_insert_with(Default::default)
        .insert(HASH_LABEL.into(), hash.clone());
    let mut annotations: BTreeMap<String, String> = d
        .annotations()
        .iter()
        .filter(|(k, _)| !SKIP_COPY.contains(&k.as_str()))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    annotations.insert(REVISION.into(), revision.to_string());
    annotations.insert(DESIRED_REPLICAS.into(), replicas_of(d).to_string());
    annotations.insert(MAX_REPLICAS.into(), max.to_string());
    ReplicaSet {
        metadata: ObjectMeta {
            name: Some(format!("{}-{hash}", d.name_any())),
            namespace: d.namespace(),
            labels,
            annotations: Some(annotations),
            owner_references: Some(vec![ownership::controller_reference(d)]),
            ..Default::default()
        },
        spec: Some(ReplicaSetSpec {
            replicas: Some(replicas),
            min_ready_seconds: spec.min_ready_seconds,
            selector,
            template: Some(template),
        }),
        status: None,
    }
}

fn replicas_of(d: &Deployment) -> i32 {
    replicas(d)
}

/// Plans one step of upstream's `syncDeployment` (see the module docs).
pub fn plan(o: &Observed) -> Result<Plan, String> {
    let d = o.deployment;
    let spec = d.spec.clone().unwrap_or_default();
    let want = replicas(d);
    let (surge, unavail) = fenceposts(d)?;
    let max_total = want + surge;
    let paused = spec.paused == Some(true);
    let new_rs = find_new(d, &o.replica_sets);
    let new_uid = new_rs.and_then(|r| r.uid());
    let mut new_view = new_rs.map(View::of);
    let mut olds: Vec<View> = o
        .replica_sets
        .iter()
        .filter(|rs| rs.uid() != new_uid || new_uid.is_none())
        .map(|rs| View::of(rs))
        .collect();
    olds.sort_by_key(|v| (v.created, v.name.clone()));
    let original: Vec<View> = olds.iter().cloned().chain(new_view.clone()).collect();

    let mut conditions: Vec<DeploymentCondition> = d
        .status
        .as_ref()
        .and_then(|s| s.conditions.clone())
        .unwrap_or_default();
    let now = o.now;
    let mut requeue: Option<Duration> = None;
    let mut progress = true; // run syncRolloutStatus (not when paused/scaling)
    let mut scaling_pass = false;

    // Revision of the new RS: one more than any old one.
    let new_revision = olds.iter().map(View::revision).max().unwrap_or(0) + 1;
    if let Some(v) = new_view.as_mut() {
        if v.revision() < new_revision {
            v.annotations
                .insert(REVISION.into(), new_revision.to_string());
        }
        if conditions.iter().all(|c| c.type_ != "Progressing") && !paused {
            set_condition(
                &mut conditions,
                condition(
                    "True",
                    "FoundNewReplicaSet",
                    &format!("Found new replica set \"{}\"", v.name),
                    now,
                ),
            );
        }
    }

    let active_count = |olds: &[View], new: &Option<View>| {
        olds.iter()
            .chain(new.iter())
            .filter(|v| v.replicas > 0)
            .count()
    };
    let scaling_event = olds
        .iter()
        .chain(new_view.iter())
        .filter(|v| v.replicas > 0)
        .any(|v| {
            v.annotations
                .get(DESIRED_REPLICAS)
                .and_then(|s| s.parse::<i32>().ok())
                .is_some_and(|n| n != want)
        });

    if d.metadata.deletion_timestamp.is_some() {
        progress = false;
    } else if paused || scaling_event {
        progress = false;
        scaling_pass = true;
        scale(d, want, surge, &mut olds, &mut new_view);
        let _ = active_count;
    } else if is_recreate(d) {
        if olds.iter().any(|v| v.replicas > 0) {
            for v in olds.iter_mut() {
                v.replicas = 0;
            }
        } else if o.old_pods_running || olds.iter().any(|v| v.status_replicas > 0) {
            requeue = Some(Duration::from_secs(1));
        } else {
            if new_view.is_none() {
                let rs = new_replica_set(d, want, new_revision, max_total);
                let name = rs.name_any();
                set_condition(
                    &mut conditions,
                    condition(
                        "True",
                        "NewReplicaSetCreated",
                        &format!("Created new replica set \"{name}\""),
                        now,
                    ),
                );
                let mut v = View::of(&rs);
                v.new_object = Some(rs);
                new_view = Some(v);
            }
            if let Some(v) = new_view.as_mut() {
                v.replicas = want;
            }
        }
    } else {
        // RollingUpdate.
        if new_view.is_none() {
            let current: i32 = olds.iter().map(|v| v.replicas).sum();
            let count = (max_total - current).max(0).min(want);
            let rs = new_replica_set(d, count, new_revision, max_total);
            set_condition(
                &mut conditions,
                condition(
                    "True",
                    "NewReplicaSetCreated",
                    &format!("Created new replica set \"{}\"", rs.name_any()),
                    now,
                ),
            );
            let mut v = View::of(&rs);
            v.replicas = 0;
            v.new_object = Some(rs);
            v.replicas = count;
            new_view = Some(v);
        } else if let Some(v) = new_view.as_mut() {
            // reconcileNewReplicaSet
            let current: i32 = olds.iter().map(|o| o.replicas).sum::<i32>() + v.replicas;
            if v.replicas > want {
                v.replicas = want;
            } else if v.replicas < want && current < max_total {
                v.replicas += (max_total - current).min(want - v.replicas);
            }
        }
        let scaled_up = new_view.as_ref().is_some_and(|v| {
            v.new_object.is_none()
                && original
                    .iter()
                    .find(|o| o.uid == v.uid)
                    .is_some_and(|o| o.replicas != v.replicas)
        });
        if !scaled_up {
            reconcile_old(
                want,
                max_unavailable(d, unavail),
                &mut olds,
                new_view.as_ref(),
            );
        }
    }

    // Desired/max annotations on everything this plan scales, and the new RS's.
    let annotate = |v: &mut View| {
        v.annotations
            .insert(DESIRED_REPLICAS.into(), want.to_string());
        v.annotations
            .insert(MAX_REPLICAS.into(), max_total.to_string());
    };
    if let Some(v) = new_view.as_mut() {
        annotate(v);
    }
    for v in olds.iter_mut() {
        let changed = original
            .iter()
            .any(|o| o.uid == v.uid && o.replicas != v.replicas);
        // A scaling pass (re)annotates every active RS, or the stale desired-replicas
        // annotation would keep signalling a scaling event.
        if changed || (scaling_pass && v.replicas > 0) {
            annotate(v);
        }
    }

    // Status (upstream's calculateStatus): from the RSs' observed status.
    let all: Vec<&View> = olds.iter().chain(new_view.iter()).collect();
    let sum = |f: &dyn Fn(&View) -> i32| all.iter().map(|v| f(v)).sum::<i32>();
    let available = sum(&|v| v.available);
    let mut status = DeploymentStatus {
        replicas: Some(sum(&|v| v.status_replicas)),
        updated_replicas: Some(new_view.as_ref().map(|v| v.status_replicas).unwrap_or(0)),
        ready_replicas: Some(sum(&|v| v.ready)),
        available_replicas: Some(available),
        unavailable_replicas: Some((want - available).max(0)),
        observed_generation: d.metadata.generation,
        collision_count: d.status.as_ref().and_then(|s| s.collision_count),
        conditions: None,
        terminating_replicas: None,
    };
    if available >= want - max_unavailable(d, unavail) {
        set_condition(
            &mut conditions,
            typed(
                "Available",
                "True",
                "MinimumReplicasAvailable",
                "Deployment has minimum availability.",
                now,
            ),
        );
    } else {
        set_condition(
            &mut conditions,
            typed(
                "Available",
                "False",
                "MinimumReplicasUnavailable",
                "Deployment does not have minimum availability.",
                now,
            ),
        );
    }

    // Paused / resumed markers (upstream's checkPausedConditions).
    let cur_reason = conditions
        .iter()
        .find(|c| c.type_ == "Progressing")
        .and_then(|c| c.reason.clone());
    if paused && cur_reason.as_deref() != Some("DeploymentPaused") {
        set_condition(
            &mut conditions,
            condition("Unknown", "DeploymentPaused", "Deployment is paused", now),
        );
    } else if !paused && cur_reason.as_deref() == Some("DeploymentPaused") {
        set_condition(
            &mut conditions,
            condition("Unknown", "DeploymentResumed", "Deployment is resumed", now),
        );
    }

    let deadline = spec.progress_deadline_seconds.filter(|s| *s != i32::MAX);
    let rs_name = new_view.as_ref().map(|v| v.name.clone());
    let subject = match &rs_name {
        Some(n) => format!("ReplicaSet \"{n}\""),
        None => format!("Deployment \"{}\"", d.name_any()),
    };
    if progress {
        match deadline {
            None => conditions.retain(|c| c.type_ != "Progressing"),
            Some(secs) => {
                let current = conditions
                    .iter()
                    .find(|c| c.type_ == "Progressing")
                    .cloned();
                let already_complete = status.replicas == status.updated_replicas
                    && current.as_ref().and_then(|c| c.reason.as_deref())
                        == Some("NewReplicaSetAvailable");
                if !already_complete {
                    let old = d.status.clone().unwrap_or_default();
                    if complete(d, &status) {
                        set_condition(
                            &mut conditions,
                            condition(
                                "True",
                                "NewReplicaSetAvailable",
                                &format!("{subject} has successfully progressed."),
                                now,
                            ),
                        );
                    } else if progressing(&old, &status) {
                        let mut c = condition(
                            "True",
                            "ReplicaSetUpdated",
                            &format!("{subject} is progressing."),
                            now,
                        );
                        if let Some(cur) = &current {
                            if cur.status == "True" {
                                c.last_transition_time = cur.last_transition_time.clone();
                            }
                        }
                        conditions.retain(|c| c.type_ != "Progressing");
                        conditions.push(c);
                    } else if let Some(cur) = &current {
                        let from = cur
                            .last_update_time
                            .as_ref()
                            .map(|t| t.0.as_second())
                            .unwrap_or(0);
                        let timed_out = cur.reason.as_deref() == Some("ProgressDeadlineExceeded")
                            || (cur.reason.as_deref() != Some("NewReplicaSetAvailable")
                                && from + i64::from(secs) < now.as_second());
                        if timed_out {
                            set_condition(
                                &mut conditions,
                                condition(
                                    "False",
                                    "ProgressDeadlineExceeded",
                                    &format!("{subject} has timed out progressing."),
                                    now,
                                ),
                            );
                        } else {
                            // upstream's requeueStuckDeployment
                            let left = from + i64::from(secs) - now.as_second() + 1;
                            requeue = Some(
                                requeue.map_or(Duration::from_secs(left.max(1) as u64), |r| {
                                    r.min(Duration::from_secs(left.max(1) as u64))
                                }),
                            );
                        }
                    }
                }
            }
        }
    }
    status.conditions = (!conditions.is_empty()).then_some(conditions);

    // History cleanup once the rollout is complete (or while paused, as upstream).
    let mut deletes = Vec::new();
    if (progress && complete(d, &status)) || paused {
        let limit = spec.revision_history_limit.unwrap_or(10).max(0) as usize;
        let mut cleanable: Vec<&View> = olds
            .iter()
            .filter(|v| v.replicas == 0 && v.status_replicas == 0 && !v.deleting)
            .filter(|v| original.iter().any(|o| o.uid == v.uid && o.replicas == 0))
            .collect();
        if cleanable.len() > limit {
            cleanable.sort_by_key(|v| (v.revision(), v.created));
            for v in cleanable.iter().take(cleanable.len() - limit) {
                deletes.push(Write::Delete {
                    name: v.name.clone(),
                    uid: v.uid.clone(),
                });
            }
        }
    }

    // Writes: create, then updates (scale-ups before scale-downs), then deletes.
    let mut writes = Vec::new();
    let mut updates = Vec::new();
    for v in olds.iter().chain(new_view.iter()) {
        if let Some(mut rs) = v.new_object.clone() {
            if let Some(s) = rs.spec.as_mut() {
                s.replicas = Some(v.replicas);
            }
            rs.metadata.annotations = Some(v.annotations.clone());
            writes.push(Write::Create(Box::new(rs)));
            continue;
        }
        let Some(o) = original.iter().find(|o| o.uid == v.uid) else {
            continue;
        };
        if o.replicas != v.replicas || o.annotations != v.annotations {
            updates.push(Write::Update {
                name: v.name.clone(),
                from: o.replicas,
                to: v.replicas,
                annotations: v.annotations.clone(),
                resource_version: v.resource_version.clone(),
            });
        }
    }
    updates.sort_by_key(|w| match w {
        Write::Update { from, to, .. } => i32::from(to <= from),
        _ => 0,
    });
    writes.extend(updates);
    writes.extend(deletes);

    let deployment_revision = new_view
        .as_ref()
        .and_then(|v| v.annotations.get(REVISION).cloned())
        .filter(|r| d.annotations().get(REVISION) != Some(r));

    // minReadySeconds: pods turn available without an RS event of ours; the RS controller
    // requeues itself and its status change triggers us.
    Ok(Plan {
        writes,
        deployment_revision,
        status,
        requeue,
    })
}

/// Upstream's `DeploymentComplete`.
fn complete(d: &Deployment, s: &DeploymentStatus) -> bool {
    let want = replicas(d);
    s.updated_replicas == Some(want)
        && s.replicas == Some(want)
        && s.available_replicas == Some(want)
        && s.observed_generation >= d.metadata.generation
}

/// Upstream's `DeploymentProgressing`.
fn progressing(old: &DeploymentStatus, new: &DeploymentStatus) -> bool {
    let g = |v: Option<i32>| v.unwrap_or(0);
    let old_old = g(old.replicas) - g(old.updated_replicas);
    let new_old = g(new.replicas) - g(new.updated_replicas);
    g(new.updated_replicas) > g(old.updated_replicas)
        || new_old < old_old
        || g(new.ready_replicas) > g(old.ready_replicas)
        || g(new.available_replicas) > g(old.available_replicas)
}

fn condition(status: &str, reason: &str, message: &str, now: Timestamp) -> DeploymentCondition {
    typed("Progressing", status, reason, message, now)
}

fn typed(
    ty: &str,
    status: &str,
    reason: &str,
    message: &str,
    now: Timestamp,
) -> DeploymentCondition {
    DeploymentCondition {
        type_: ty.into(),
        status: status.into(),
        reason: Some(reason.into()),
        message: Some(message.into()),
        last_update_time: Some(Time(now)),
        last_transition_time: Some(Time(now)),
    }
}

/// Upstream's `SetDeploymentCondition`: same status and reason changes nothing; same
/// status keeps the transition time.
fn set_condition(conds: &mut Vec<DeploymentCondition>, mut c: DeploymentCondition) {
    if let Some(cur) = conds.iter().find(|x| x.type_ == c.type_) {
        if cur.status == c.status && cur.reason == c.reason {
            return;
        }
        if cur.status == c.status {
            c.last_transition_time = cur.last_transition_time.clone();
        }
    }
    conds.retain(|x| x.type_ != c.type_);
    conds.push(c);
}

/// Upstream's `reconcileOldReplicaSets`: first drop unhealthy old replicas, then scale
/// old RSs down (oldest first) as far as availability allows.
fn reconcile_old(want: i32, max_unavailable: i32, olds: &mut [View], new: Option<&View>) {
    let old_count: i32 = olds.iter().map(|v| v.replicas).sum();
    if old_count == 0 {
        return;
    }
    let all_count = old_count + new.map(|v| v.replicas).unwrap_or(0);
    let min_available = want - max_unavailable;
    let new_unavailable = new.map(|v| v.replicas - v.available).unwrap_or(0);
    let max_scaled_down = all_count - min_available - new_unavailable;
    if max_scaled_down <= 0 {
        return;
    }
    // cleanupUnhealthyReplicas
    let mut cleaned = 0;
    for v in olds.iter_mut() {
        if cleaned >= max_scaled_down {
            break;
        }
        if v.replicas == 0 || v.replicas == v.available {
            continue;
        }
        let down = (max_scaled_down - cleaned).min(v.replicas - v.available);
        v.replicas -= down;
        cleaned += down;
    }
    // scaleDownOldReplicaSetsForRollingUpdate
    let available: i32 =
        olds.iter().map(|v| v.available).sum::<i32>() + new.map(|v| v.available).unwrap_or(0);
    if available <= min_available {
        return;
    }
    let total = (available - min_available).min(max_scaled_down - cleaned);
    let mut done = 0;
    for v in olds.iter_mut() {
        if done >= total {
            break;
        }
        if v.replicas == 0 {
            continue;
        }
        let down = v.replicas.min(total - done);
        v.replicas -= down;
        done += down;
    }
}

/// Upstream's `scale` (paused or scaling event): a lone active RS takes the new size; a
/// saturated new RS means old ones go to 0; otherwise the difference to
/// `replicas + maxSurge` is spread over the active RSs in proportion to their size
/// (upstream's `getProportion` with the max-replicas annotation), the rounding leftover
/// to the largest.
fn scale(d: &Deployment, want: i32, surge: i32, olds: &mut [View], new: &mut Option<View>) {
    let is_new_last = new.is_some();
    let mut all: Vec<&mut View> = olds.iter_mut().chain(new.iter_mut()).collect();
    let active: Vec<usize> = (0..all.len()).filter(|i| all[*i].replicas > 0).collect();
    if active.len() <= 1 {
        // FindActiveOrLatest: the active one, else the new one, else the newest old.
        let idx = active.first().copied().or_else(|| {
            if all.is_empty() {
                None
            } else {
                Some(all.len() - 1)
            }
        });
        if let Some(i) = idx {
            // The last of `all` is the new RS when there is one (chain order), else the
            // newest old one (olds are sorted oldest first).
            all[i].replicas = want;
        }
        return;
    }
    let n = all.len();
    if is_new_last {
        let nv = &all[n - 1];
        let saturated = nv.replicas == want
            && nv
                .annotations
                .get(DESIRED_REPLICAS)
                .and_then(|s| s.parse::<i32>().ok())
                == Some(want)
            && nv.available == want;
        if saturated {
            for v in all.iter_mut().take(n - 1) {
                v.replicas = 0;
            }
            return;
        }
    }
    if is_recreate(d) {
        return;
    }
    let allowed = if want > 0 { want + surge } else { 0 };
    let total: i32 = all.iter().map(|v| v.replicas).sum();
    let to_add = allowed - total;
    if to_add == 0 {
        return;
    }
    // Largest first (newer first on ties) to receive the leftover.
    let mut order: Vec<usize> = active;
    order.sort_by(|a, b| {
        all[*b]
            .replicas
            .cmp(&all[*a].replicas)
            .then_with(|| all[*b].created.cmp(&all[*a].created))
    });
    let mut added = 0;
    let mut next: Vec<i32> = all.iter().map(|v| v.replicas).collect();
    for &i in &order {
        let v = &all[i];
        let annotated_max = v
            .annotations
            .get(MAX_REPLICAS)
            .and_then(|s| s.parse::<i32>().ok())
            .filter(|m| *m > 0)
            .unwrap_or(total.max(1));
        let fraction = if want == 0 {
            -v.replicas
        } else {
            let target = (f64::from(v.replicas) * f64::from(allowed) / f64::from(annotated_max))
                .round() as i32;
            target - v.replicas
        };
        let left = to_add - added;
        let p = if to_add > 0 {
            fraction.min(left).max(0)
        } else {
            fraction.max(left).min(0)
        };
        next[i] += p;
        added += p;
    }
    if added != to_add {
        if let Some(&first) = order.first() {
            next[first] += to_add - added;
        }
    }
    for (i, v) in all.iter_mut().enumerate() {
        v.replicas = next[i].max(0);
    }
}

// ------------------------------------------------------------------------------------
// Runtime

struct State {
    ctx: Ctx,
    sets: Store<ReplicaSet>,
    backoff: Backoff,
}

pub async fn run(ctx: Ctx) -> anyhow::Result<()> {
    let client = ctx.client.clone();
    let (rs_store, rs_stream) = runtime::reflect::<ReplicaSet>(&client);
    let controller = Controller::new(
        Api::<Deployment>::all(client.clone()),
        watcher::Config::default(),
    );
    let deployments = controller.store();
    let state = Arc::new(State {
        ctx,
        sets: rs_store,
        backoff: Backoff::default(),
    });
    let results = controller
        .watches_stream(rs_stream, move |rs: ReplicaSet| {
            if let Some(r) = runtime::controller_owner::<Deployment>(&rs, "Deployment") {
                return vec![r];
            }
            deployments
                .state()
                .iter()
                .filter(|d| {
                    d.namespace() == rs.namespace()
                        && ownership::selects(
                            d.spec.as_ref().map(|s| &s.selector),
                            rs.metadata.labels.as_ref(),
                        )
                })
                .map(|d| kube::runtime::reflector::ObjectRef::from_obj(d.as_ref()))
                .collect()
        })
        .run(
            reconcile,
            |d, _e, st: Arc<State>| runtime::requeue_after_failure(d.as_ref(), &st.backoff),
            state,
        );
    runtime::drain("deployment", results).await;
    Ok(())
}

async fn reconcile(d: Arc<Deployment>, st: Arc<State>) -> Result<Action, kube::Error> {
    let key = runtime::key(d.as_ref());
    let ns = d.namespace().unwrap_or_default();
    let uid = d.uid().unwrap_or_default();
    let _ = st.sets.wait_until_ready().await;
    let client = st.ctx.client.clone();
    let rs_api: Api<ReplicaSet> = Api::namespaced(client.clone(), &ns);
    let d_api: Api<Deployment> = Api::namespaced(client.clone(), &ns);
    let deleting = d.metadata.deletion_timestamp.is_some();
    let selector = d.spec.as_ref().map(|s| &s.selector);
    if selector.is_some_and(|s| {
        s.match_labels.as_ref().is_none_or(|m| m.is_empty())
            && s.match_expressions.as_ref().is_none_or(|m| m.is_empty())
    }) {
        // Upstream: an empty selector would select everything; refuse and say so.
        st.ctx
            .events
            .publish(
                d.as_ref(),
                EventType::Warning,
                "SelectingAll",
                "This deployment is selecting all pods. A non-empty selector is required.",
            )
            .await;
        return Ok(Action::await_change());
    }

    let mut owned: Vec<ReplicaSet> = Vec::new();
    for rs in st
        .sets
        .state()
        .into_iter()
        .filter(|r| r.namespace().as_deref() == Some(&ns))
    {
        match ownership::claim(&uid, deleting, selector, &rs.metadata) {
            Claim::Owned => owned.push(rs.as_ref().clone()),
            Claim::Adopt => match ownership::adopt(
                &rs_api,
                &rs.metadata,
                ownership::controller_reference(d.as_ref()),
            )
            .await
            {
                Ok(a) => {
                    tracing::info!("deployment {key}: adopted replica set {}", rs.name_any());
                    owned.push(a)
                }
                Err(kube::Error::Api(e)) if e.code == 404 => {}
                Err(e) => return Err(e),
            },
            Claim::Release => match ownership::release(&rs_api, &rs.metadata, &uid).await {
                Ok(_) => tracing::info!("deployment {key}: released replica set {}", rs.name_any()),
                Err(kube::Error::Api(e)) if e.code == 404 => {}
                Err(e) => return Err(e),
            },
            Claim::Ignore => {}
        }
    }

    // Recreate needs to know whether old pods still run (upstream's oldPodsRunning).
    let mut old_pods_running = false;
    if is_recreate(&d) {
        let new_uid = find_new(&d, &owned.iter().collect::<Vec<_>>()).and_then(|r| r.uid());
        let old_uids: Vec<String> = owned
            .iter()
            .filter_map(|r| r.uid())
            .filter(|u| Some(u) != new_uid.as_ref())
            .collect();
        if !old_uids.is_empty() {
            let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
            let sel = d
                .spec
                .as_ref()
                .and_then(|s| s.selector.match_labels.clone())
                .unwrap_or_default();
            let lp = ListParams::default().labels(
                &sel.iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect::<Vec<_>>()
                    .join(","),
            );
            old_pods_running = pods.list(&lp).await?.items.iter().any(|p| {
                ownership::controller_ref(&p.metadata).is_some_and(|r| old_uids.contains(&r.uid))
                    && !matches!(crate::pods::phase(p), "Succeeded" | "Failed")
            });
        }
    }

    let observed = Observed {
        deployment: &d,
        replica_sets: owned.iter().collect(),
        old_pods_running,
        now: Timestamp::now(),
    };
    let plan = match plan(&observed) {
        Ok(p) => p,
        Err(msg) => {
            tracing::warn!("deployment {key}: {msg}");
            st.ctx
                .events
                .publish(d.as_ref(), EventType::Warning, "InvalidSpec", &msg)
                .await;
            return Ok(Action::await_change());
        }
    };

    for w in &plan.writes {
        match w {
            Write::Create(rs) => {
                let name = rs.name_any();
                match rs_api.create(&PostParams::default(), rs).await {
                    Ok(_) => {}
                    Err(kube::Error::Api(e)) if e.code == 409 => {
                        // Upstream: an RS with our name and our template is ours (the
                        // cache was behind); anything else is a hash collision.
                        let existing = rs_api.get(&name).await?;
                        let ours = ownership::controller_ref(&existing.metadata)
                            .is_some_and(|r| r.uid == uid);
                        let same = existing
                            .spec
                            .as_ref()
                            .and_then(|s| s.template.as_ref())
                            .zip(d.spec.as_ref())
                            .is_some_and(|(t, s)| equal_ignore_hash(t, &s.template));
                        if ours && same {
                            return Ok(Action::requeue(Duration::from_millis(200)));
                        }
                        let count = d
                            .status
                            .as_ref()
                            .and_then(|s| s.collision_count)
                            .unwrap_or(0)
                            + 1;
                        tracing::info!(
                            "deployment {key}: hash collision on {name}; collisionCount {count}"
                        );
                        d_api
                            .patch_status(
                                &d.name_any(),
                                &PatchParams::default(),
                                &Patch::Merge(
                                    serde_json::json!({"status": {"collisionCount": count}}),
                                ),
                            )
                            .await?;
                        return Ok(Action::requeue(Duration::from_millis(10)));
                    }
                    Err(e) => {
                        st.ctx
                            .events
                            .publish(
                                d.as_ref(),
                                EventType::Warning,
                                "FailedCreate",
                                &format!("Failed to create new replica set \"{name}\": {e}"),
                            )
                            .await;
                        return Err(e);
                    }
                }
                let to = rs.spec.as_ref().and_then(|s| s.replicas).unwrap_or(0);
                tracing::info!("deployment {key}: created replica set {name} with {to} replicas");
                if to > 0 {
                    scaled_event(&st, &d, &name, 0, to).await;
                }
            }
            Write::Update {
                name,
                from,
                to,
                annotations,
                resource_version,
            } => {
                let mut patch = serde_json::json!({"metadata": {
                    "annotations": annotations,
                    "resourceVersion": resource_version,
                }});
                if from != to {
                    patch["spec"] = serde_json::json!({"replicas": to});
                }
                rs_api
                    .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
                    .await?;
                if from != to {
                    tracing::info!(
                        "deployment {key}: scaled replica set {name} from {from} to {to}"
                    );
                    scaled_event(&st, &d, name, *from, *to).await;
                } else {
                    tracing::info!("deployment {key}: annotated replica set {name}");
                }
            }
            Write::Delete { name, uid } => {
                let dp = DeleteParams {
                    preconditions: Some(Preconditions {
                        uid: Some(uid.clone()),
                        resource_version: None,
                    }),
                    ..Default::default()
                };
                match rs_api.delete(name, &dp).await {
                    Ok(_) => tracing::info!(
                        "deployment {key}: deleted old replica set {name} (revisionHistoryLimit)"
                    ),
                    Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => {}
                    Err(e) => return Err(e),
                }
            }
        }
    }
    if let Some(rev) = &plan.deployment_revision {
        d_api
            .patch(
                &d.name_any(),
                &PatchParams::default(),
                &Patch::Merge(serde_json::json!({"metadata": {"annotations": {REVISION: rev}}})),
            )
            .await?;
        tracing::info!("deployment {key}: revision {rev}");
    }
    if d.status.as_ref() != Some(&plan.status) {
        let s = &plan.status;
        let body = serde_json::json!({"status": {
            "replicas": s.replicas.unwrap_or(0),
            "updatedReplicas": s.updated_replicas.unwrap_or(0),
            "readyReplicas": s.ready_replicas.unwrap_or(0),
            "availableReplicas": s.available_replicas.unwrap_or(0),
            "unavailableReplicas": s.unavailable_replicas.unwrap_or(0),
            "observedGeneration": s.observed_generation,
            "conditions": s.conditions,
        }});
        match d_api
            .patch_status(&d.name_any(), &PatchParams::default(), &Patch::Merge(&body))
            .await
        {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 404 => return Ok(Action::await_change()),
            Err(e) => return Err(e),
        }
    }
    st.backoff.succeeded(&key);
    Ok(Action::requeue(
        plan.requeue.unwrap_or(Duration::from_secs(300)),
    ))
}

async fn scaled_event(st: &State, d: &Deployment, rs: &str, from: i32, to: i32) {
    let op = if to > from { "up" } else { "down" };
    st.ctx
        .events
        .publish(
            d,
            EventType::Normal,
            "ScalingReplicaSet",
            &format!("Scaled {op} replica set {rs} from {from} to {to}"),
        )
        .await;
}

#[cfg(test)]
mod tests {
    use k8s_openapi::{
        api::{
            apps::v1::{
                DeploymentSpec, DeploymentStrategy, ReplicaSetStatus, RollingUpdateDeployment,
            },
            core::v1::{Container, PodSpec},
        },
        apimachinery::pkg::apis::meta::v1::Time,
    };

    use super::*;

    fn template(image: &str) -> PodTemplateSpec {
        PodTemplateSpec {
            metadata: Some(ObjectMeta {
                labels: Some([("app".to_string(), "web".to_string())].into()),
                ..Default::default()
            }),
            spec: Some(PodSpec {
                containers: vec![Container {
                    name: "c".into(),
                    image: Some(image.into()),
                    ..Default::default()
                }],
                ..Default::default()
            }),
        }
    }

    fn deployment(
        replicas: i32,
        surge: IntOrString,
        unavail: IntOrString,
        image: &str,
    ) -> Deployment {
        Deployment {
            metadata: ObjectMeta {
                name: Some("web".into()),
                namespace: Some("default".into()),
                uid: Some("d-uid".into()),
                generation: Some(2),
                ..Default::default()
            },
            spec: Some(DeploymentSpec {
                replicas: Some(replicas),
                selector: LabelSelector {
                    match_labels: Some([("app".to_string(), "web".to_string())].into()),
                    ..Default::default()
                },
                template: template(image),
                strategy: Some(DeploymentStrategy {
                    type_: Some("RollingUpdate".into()),
                    rolling_update: Some(RollingUpdateDeployment {
                        max_surge: Some(surge),
                        max_unavailable: Some(unavail),
                    }),
                }),
                progress_deadline_seconds: Some(600),
                revision_history_limit: Some(10),
                ..Default::default()
            }),
            status: None,
        }
    }

    fn rs_for(
        d: &Deployment,
        image: &str,
        replicas: i32,
        available: i32,
        revision: i64,
        created: i64,
    ) -> ReplicaSet {
        let mut dd = d.clone();
        dd.spec.as_mut().unwrap().template = template(image);
        let mut rs = new_replica_set(&dd, replicas, revision, replicas);
        rs.metadata.uid = Some(format!("rs-{image}"));
        rs.metadata.resource_version = Some("1".into());
        rs.metadata.creation_timestamp = Some(Time(Timestamp::from_second(created).unwrap()));
        rs.metadata
            .annotations
            .as_mut()
            .unwrap()
            .insert(DESIRED_REPLICAS.into(), replicas_of(d).to_string());
        rs.status = Some(ReplicaSetStatus {
            replicas: available,
            ready_replicas: Some(available),
            available_replicas: Some(available),
            ..Default::default()
        });
        rs
    }

    fn now() -> Timestamp {
        Timestamp::from_second(1_000_000).unwrap()
    }

    fn run(d: &Deployment, rss: &[ReplicaSet]) -> Plan {
        plan(&Observed {
            deployment: d,
            replica_sets: rss.iter().collect(),
            old_pods_running: false,
            now: now(),
        })
        .unwrap()
    }

    fn scales(p: &Plan) -> Vec<(String, i32, i32)> {
        p.writes
            .iter()
            .filter_map(|w| match w {
                Write::Update { name, from, to, .. } if from != to => {
                    Some((name.clone(), *from, *to))
                }
                Write::Create(rs) => Some((
                    rs.name_any(),
                    0,
                    rs.spec.as_ref().unwrap().replicas.unwrap(),
                )),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn hash_is_stable_safe_and_depends_on_template_and_collisions() {
        let a = template_hash(&template("nginx:1"), None);
        assert_eq!(a, template_hash(&template("nginx:1"), None));
        assert_ne!(a, template_hash(&template("nginx:2"), None));
        assert_ne!(a, template_hash(&template("nginx:1"), Some(1)));
        assert!(
            a.bytes()
                .all(|b| b"bcdfghjklmnpqrstvwxz2456789".contains(&b)),
            "{a}"
        );
        assert_eq!(fnv32a(b""), 0x811c_9dc5);
        assert_eq!(fnv32a(b"a"), 0xe40c_292c, "FNV-1a test vector");
        // '0' is byte 48, 48 % 27 = 21: the 22nd character of the alphabet.
        assert_eq!(safe_encode("0"), "4");
    }

    #[test]
    fn templates_compare_semantically() {
        let a = template("nginx:1");
        let mut b = a.clone();
        b.spec.as_mut().unwrap().containers[0].resources = Some(Default::default());
        b.metadata.as_mut().unwrap().annotations = Some(Default::default());
        assert!(equal_ignore_hash(&a, &b), "resources: {{}} is no resources");
        assert_eq!(template_hash(&a, None), template_hash(&b, None));
        let mut c = a.clone();
        c.metadata
            .as_mut()
            .unwrap()
            .labels
            .as_mut()
            .unwrap()
            .insert(HASH_LABEL.into(), "x".into());
        assert!(equal_ignore_hash(&a, &c));
        assert!(!equal_ignore_hash(&a, &template("nginx:2")));
    }

    #[test]
    fn fenceposts_round_as_upstream() {
        let pct = |s: &str| IntOrString::String(s.into());
        let d = deployment(10, pct("25%"), pct("25%"), "a");
        assert_eq!(
            fenceposts(&d).unwrap(),
            (3, 2),
            "surge rounds up, unavailable down"
        );
        let d = deployment(3, IntOrString::Int(0), IntOrString::Int(0), "a");
        assert_eq!(
            fenceposts(&d).unwrap(),
            (0, 1),
            "both zero: one unavailable"
        );
        let d = deployment(3, pct("x%"), pct("25%"), "a");
        assert!(fenceposts(&d).unwrap_err().contains("maxSurge"));
    }

    #[test]
    fn first_sync_creates_the_new_rs_at_full_size() {
        let d = deployment(3, IntOrString::Int(1), IntOrString::Int(0), "a");
        let p = run(&d, &[]);
        let Write::Create(rs) = &p.writes[0] else {
            panic!("{:?}", p.writes)
        };
        let hash = template_hash(&template("a"), None);
        assert_eq!(rs.name_any(), format!("web-{hash}"));
        assert_eq!(rs.spec.as_ref().unwrap().replicas, Some(3));
        assert_eq!(rs.labels().get(HASH_LABEL), Some(&hash));
        assert_eq!(
            rs.spec
                .as_ref()
                .unwrap()
                .selector
                .match_labels
                .as_ref()
                .unwrap()
                .get(HASH_LABEL),
            Some(&hash)
        );
        assert_eq!(
            rs.annotations().get(REVISION).map(String::as_str),
            Some("1")
        );
        assert_eq!(
            rs.annotations().get(DESIRED_REPLICAS).map(String::as_str),
            Some("3")
        );
        assert_eq!(
            rs.annotations().get(MAX_REPLICAS).map(String::as_str),
            Some("4")
        );
        let owner = &rs.owner_references()[0];
        assert_eq!(
            (
                owner.uid.as_str(),
                owner.controller,
                owner.block_owner_deletion
            ),
            ("d-uid", Some(true), Some(true))
        );
        assert_eq!(p.deployment_revision.as_deref(), Some("1"));
        let prog = p
            .status
            .conditions
            .as_ref()
            .unwrap()
            .iter()
            .find(|c| c.type_ == "Progressing")
            .unwrap();
        assert_eq!(prog.reason.as_deref(), Some("NewReplicaSetCreated"));
    }

    #[test]
    fn rolling_update_respects_surge_and_unavailable() {
        // 3 replicas, maxSurge 1, maxUnavailable 0: old=3 available.
        let d = deployment(3, IntOrString::Int(1), IntOrString::Int(0), "b");
        let old = rs_for(&d, "a", 3, 3, 1, 10);
        let p = run(&d, std::slice::from_ref(&old));
        let hash = template_hash(&template("b"), None);
        assert_eq!(
            scales(&p),
            vec![(format!("web-{hash}"), 0, 1)],
            "surge 1 only"
        );
        // New RS at 1, not yet available: old must stay at 3.
        let new = rs_for(&d, "b", 1, 0, 2, 20);
        let p = run(&d, &[old.clone(), new.clone()]);
        assert!(scales(&p).is_empty(), "{:?}", p.writes);
        // New available: old goes to 2; then the new one up to 2.
        let new = rs_for(&d, "b", 1, 1, 2, 20);
        let p = run(&d, &[old.clone(), new.clone()]);
        assert_eq!(scales(&p), vec![(old.name_any(), 3, 2)]);
        let mut old2 = rs_for(&d, "a", 2, 2, 1, 10);
        old2.metadata.name = old.metadata.name.clone();
        let p = run(&d, &[old2, new]);
        assert_eq!(scales(&p), vec![(format!("web-{hash}"), 1, 2)]);
    }

    #[test]
    fn unhealthy_old_replicas_go_first() {
        let d = deployment(3, IntOrString::Int(0), IntOrString::Int(1), "b");
        let old = rs_for(&d, "a", 3, 1, 1, 10); // 2 of 3 unavailable
        let new = rs_for(&d, "b", 0, 0, 2, 20);
        let p = run(&d, &[old.clone(), new]);
        // max scaled down = 3 - 2 - 0 = 1, taken from the unhealthy ones.
        let s = scales(&p);
        assert!(s.contains(&(old.name_any(), 3, 2)), "{s:?}");
    }

    #[test]
    fn complete_status_and_history_cleanup() {
        let mut d = deployment(2, IntOrString::Int(1), IntOrString::Int(0), "c");
        d.spec.as_mut().unwrap().revision_history_limit = Some(1);
        let r1 = rs_for(&d, "a", 0, 0, 1, 1);
        let r2 = rs_for(&d, "b", 0, 0, 2, 2);
        let new = rs_for(&d, "c", 2, 2, 3, 3);
        let p = run(&d, &[r1.clone(), r2, new]);
        assert_eq!(p.status.updated_replicas, Some(2));
        assert_eq!(p.status.available_replicas, Some(2));
        assert_eq!(p.status.unavailable_replicas, Some(0));
        assert_eq!(p.status.observed_generation, Some(2));
        let conds = p.status.conditions.clone().unwrap();
        let get = |t: &str| {
            conds
                .iter()
                .find(|c| c.type_ == t)
                .unwrap()
                .reason
                .clone()
                .unwrap()
        };
        assert_eq!(get("Available"), "MinimumReplicasAvailable");
        assert_eq!(get("Progressing"), "NewReplicaSetAvailable");
        let deletes: Vec<_> = p
            .writes
            .iter()
            .filter(|w| matches!(w, Write::Delete { .. }))
            .collect();
        assert_eq!(
            deletes,
            vec![&Write::Delete {
                name: r1.name_any(),
                uid: r1.uid().unwrap()
            }],
            "oldest revision goes"
        );
    }

    #[test]
    fn rollback_moves_the_old_rs_to_a_new_revision() {
        let d = deployment(2, IntOrString::Int(1), IntOrString::Int(0), "a");
        let r1 = rs_for(&d, "a", 0, 0, 1, 1);
        let r2 = rs_for(&d, "b", 2, 2, 2, 2);
        let p = run(&d, &[r1.clone(), r2]);
        let ann = p.writes.iter().find_map(|w| match w {
            Write::Update {
                name, annotations, ..
            } if *name == r1.name_any() => Some(annotations.clone()),
            _ => None,
        });
        assert_eq!(ann.unwrap().get(REVISION).map(String::as_str), Some("3"));
        assert_eq!(p.deployment_revision.as_deref(), Some("3"));
        assert_eq!(scales(&p), vec![(r1.name_any(), 0, 1)]);
    }

    #[test]
    fn paused_scales_but_does_not_roll_out() {
        let mut d = deployment(5, IntOrString::Int(1), IntOrString::Int(0), "b");
        d.spec.as_mut().unwrap().paused = Some(true);
        let old = rs_for(&d, "a", 3, 3, 1, 10);
        let mut old = old;
        old.metadata
            .annotations
            .as_mut()
            .unwrap()
            .insert(DESIRED_REPLICAS.into(), "3".into());
        let p = run(&d, std::slice::from_ref(&old));
        assert!(
            !p.writes.iter().any(|w| matches!(w, Write::Create(_))),
            "no new RS while paused"
        );
        assert_eq!(scales(&p), vec![(old.name_any(), 3, 5)]);
        let prog = p
            .status
            .conditions
            .as_ref()
            .unwrap()
            .iter()
            .find(|c| c.type_ == "Progressing")
            .unwrap();
        assert_eq!(prog.reason.as_deref(), Some("DeploymentPaused"));
    }

    #[test]
    fn scaling_event_is_proportional() {
        let d = deployment(20, IntOrString::Int(0), IntOrString::Int(1), "b");
        let mut old = rs_for(&d, "a", 6, 6, 1, 10);
        let mut new = rs_for(&d, "b", 4, 4, 2, 20);
        for rs in [&mut old, &mut new] {
            let a = rs.metadata.annotations.as_mut().unwrap();
            a.insert(DESIRED_REPLICAS.into(), "10".into());
            a.insert(MAX_REPLICAS.into(), "10".into());
        }
        let p = run(&d, &[old.clone(), new.clone()]);
        let s = scales(&p);
        assert!(
            s.contains(&(old.name_any(), 6, 12)) && s.contains(&(new.name_any(), 4, 8)),
            "{s:?}"
        );
    }

    #[test]
    fn recreate_scales_old_down_waits_then_creates() {
        let mut d = deployment(2, IntOrString::Int(0), IntOrString::Int(0), "b");
        d.spec.as_mut().unwrap().strategy = Some(DeploymentStrategy {
            type_: Some("Recreate".into()),
            rolling_update: None,
        });
        let old = rs_for(&d, "a", 2, 2, 1, 10);
        let p = run(&d, std::slice::from_ref(&old));
        assert_eq!(scales(&p), vec![(old.name_any(), 2, 0)]);
        let mut gone = rs_for(&d, "a", 0, 0, 1, 10);
        gone.metadata.name = old.metadata.name.clone();
        let waiting = plan(&Observed {
            deployment: &d,
            replica_sets: vec![&gone],
            old_pods_running: true,
            now: now(),
        })
        .unwrap();
        assert!(scales(&waiting).is_empty() && waiting.requeue.is_some());
        let p = run(&d, &[gone]);
        let hash = template_hash(&template("b"), None);
        assert_eq!(scales(&p), vec![(format!("web-{hash}"), 0, 2)]);
    }

    #[test]
    fn progress_deadline_exceeded() {
        let mut d = deployment(2, IntOrString::Int(1), IntOrString::Int(0), "a");
        let new = rs_for(&d, "a", 2, 0, 1, 1);
        let long_ago = Time(Timestamp::from_second(1_000_000 - 601).unwrap());
        d.status = Some(DeploymentStatus {
            replicas: Some(0),
            updated_replicas: Some(0),
            conditions: Some(vec![DeploymentCondition {
                type_: "Progressing".into(),
                status: "True".into(),
                reason: Some("NewReplicaSetCreated".into()),
                last_update_time: Some(long_ago.clone()),
                last_transition_time: Some(long_ago),
                message: None,
            }]),
            ..Default::default()
        });
        let p = run(&d, &[new]);
        let prog = p
            .status
            .conditions
            .as_ref()
            .unwrap()
            .iter()
            .find(|c| c.type_ == "Progressing")
            .unwrap();
        assert_eq!(
            (prog.status.as_str(), prog.reason.as_deref()),
            ("False", Some("ProgressDeadlineExceeded"))
        );
    }
}
