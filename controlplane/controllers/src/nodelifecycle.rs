//! Node lifecycle (upstream's NodeLifecycleController + TaintEvictionController):
//! - a node heartbeats through its Lease in `kube-node-lease` (`spec.renewTime`) and/or
//!   its Ready condition's `lastHeartbeatTime`; the controller notes *on its own clock*
//!   when it last saw either change (upstream's `probeTimestamp`, immune to node clock
//!   skew);
//! - no change within `node_monitor_grace_period` → Ready, MemoryPressure, DiskPressure,
//!   PIDPressure become `Unknown` (reason `NodeStatusUnknown`, "Kubelet stopped posting
//!   node status."), and the node's pods get `Ready=False`;
//! - taints follow Ready, mutually exclusive as upstream: Unknown →
//!   `node.kubernetes.io/unreachable` NoSchedule + NoExecute, False →
//!   `node.kubernetes.io/not-ready` NoSchedule + NoExecute, True → neither;
//! - pods on a node with NoExecute taints are deleted once their toleration runs out:
//!   no matching toleration for not-ready/unreachable → `pod_eviction_timeout` (what
//!   upstream's DefaultTolerationSeconds admission plugin gives every pod; our API server
//!   has no such plugin), `tolerationSeconds` → that, a toleration without seconds →
//!   never, any other untolerated NoExecute taint → at once. Counted from the taint's
//!   `timeAdded`.
//!
//! The decisions ([`observe`], [`plan`], [`eviction_deadline`]) are pure functions of the
//! objects and `now`; [`run`] feeds them from reflectors on a timer and writes the result.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt as _;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, NodeCondition, Pod, Taint, Toleration};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{DeleteParams, Patch, PatchParams, Preconditions};
use kube::runtime::{reflector, watcher, WatchStreamExt as _};
use kube::{Api, ResourceExt as _};

use crate::events::EventType;
use crate::Ctx;

pub const TAINT_UNREACHABLE: &str = "node.kubernetes.io/unreachable";
pub const TAINT_NOT_READY: &str = "node.kubernetes.io/not-ready";
pub const LEASE_NAMESPACE: &str = "kube-node-lease";
/// Upstream's `--node-startup-grace-period`: how long a node that never posted a Ready
/// condition gets before it is marked Unknown.
pub const NODE_STARTUP_GRACE_PERIOD: Duration = Duration::from_secs(60);
/// The conditions upstream sets to Unknown along with Ready.
const CONDITION_TYPES: [&str; 4] = ["Ready", "MemoryPressure", "DiskPressure", "PIDPressure"];

/// Parses a Go-style duration as kube-controller-manager's flags take them: `40s`,
/// `500ms`, `5m`, `1h30m`, or a bare number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let bad = || format!("{s:?} is not a duration (expected e.g. 40s, 500ms, 5m, 1h30m)");
    let t = s.trim();
    if t.is_empty() {
        return Err(bad());
    }
    if let Ok(secs) = t.parse::<u64>() {
        return Ok(Duration::from_secs(secs));
    }
    let mut total = Duration::ZERO;
    let mut rest = t;
    while !rest.is_empty() {
        let end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(bad)?;
        let (num, tail) = rest.split_at(end);
        let v: f64 = num.parse().map_err(|_| bad())?;
        let unit_end = tail
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(tail.len());
        let (unit, next) = tail.split_at(unit_end);
        let scale = match unit {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return Err(bad()),
        };
        total += Duration::from_secs_f64(v * scale);
        rest = next;
    }
    Ok(total)
}

fn plus(t: Timestamp, d: Duration) -> Timestamp {
    Timestamp::from_millisecond(t.as_millisecond().saturating_add(d.as_millis() as i64))
        .unwrap_or(Timestamp::MAX)
}

/// What the controller remembers of a node between passes (upstream's `nodeHealthData`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Health {
    /// Controller clock: when a heartbeat last changed (or the node was first seen).
    pub probe: Timestamp,
    pub ready_heartbeat: Option<Timestamp>,
    pub lease_renew: Option<Timestamp>,
}

fn condition<'a>(node: &'a Node, ty: &str) -> Option<&'a NodeCondition> {
    node.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == ty)
}

/// Updates what is known of `node`'s heartbeats at `now`.
pub fn observe(
    prev: Option<&Health>,
    node: &Node,
    lease: Option<&Lease>,
    now: Timestamp,
) -> Health {
    let ready_heartbeat = condition(node, "Ready")
        .and_then(|c| c.last_heartbeat_time.as_ref())
        .map(|t| t.0);
    let lease_renew = lease
        .and_then(|l| l.spec.as_ref())
        .and_then(|s| s.renew_time.as_ref())
        .map(|t| t.0);
    match prev {
        None => Health {
            probe: now,
            ready_heartbeat,
            lease_renew,
        },
        Some(h) => {
            let fresh = ready_heartbeat != h.ready_heartbeat
                || (lease_renew.is_some() && lease_renew > h.lease_renew);
            Health {
                probe: if fresh { now } else { h.probe },
                ready_heartbeat,
                lease_renew: lease_renew.or(h.lease_renew),
            }
        }
    }
}

/// The writes that bring one node in line.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct NodePlan {
    /// Conditions to patch into `status.conditions` (merged by type).
    pub conditions: Vec<NodeCondition>,
    /// The node's whole new taint list, when it changes.
    pub taints: Option<Vec<Taint>>,
    /// Ready as the controller now sees it ("True", "False", "Unknown"; None: not posted
    /// yet and still in the startup grace).
    pub ready: Option<String>,
}

pub fn plan(node: &Node, health: &Health, now: Timestamp, grace: Duration) -> NodePlan {
    let mut out = NodePlan::default();
    let ready_cond = condition(node, "Ready");
    let grace = if ready_cond.is_none() {
        grace.max(NODE_STARTUP_GRACE_PERIOD)
    } else {
        grace
    };
    let mut ready = ready_cond.map(|c| c.status.clone());
    if now > plus(health.probe, grace) {
        for ty in CONDITION_TYPES {
            match condition(node, ty) {
                Some(c) if c.status == "Unknown" => {}
                Some(c) => out.conditions.push(NodeCondition {
                    status: "Unknown".into(),
                    reason: Some("NodeStatusUnknown".into()),
                    message: Some("Kubelet stopped posting node status.".into()),
                    last_transition_time: Some(Time(now)),
                    ..c.clone()
                }),
                None => out.conditions.push(NodeCondition {
                    type_: ty.into(),
                    status: "Unknown".into(),
                    reason: Some("NodeStatusNeverUpdated".into()),
                    message: Some("Kubelet never posted node status.".into()),
                    last_heartbeat_time: node.metadata.creation_timestamp.clone(),
                    last_transition_time: Some(Time(now)),
                }),
            }
        }
        ready = Some("Unknown".into());
    }
    let current: Vec<Taint> = node
        .spec
        .as_ref()
        .and_then(|s| s.taints.clone())
        .unwrap_or_default();
    let (want, unwanted): (Option<&str>, &[&str]) = match ready.as_deref() {
        Some("True") => (None, &[TAINT_UNREACHABLE, TAINT_NOT_READY]),
        Some("False") => (Some(TAINT_NOT_READY), &[TAINT_UNREACHABLE]),
        Some(_) => (Some(TAINT_UNREACHABLE), &[TAINT_NOT_READY]),
        None => (None, &[]),
    };
    let mut taints: Vec<Taint> = current
        .iter()
        .filter(|t| !unwanted.contains(&t.key.as_str()))
        .cloned()
        .collect();
    if let Some(key) = want {
        for effect in ["NoSchedule", "NoExecute"] {
            if !taints.iter().any(|t| t.key == key && t.effect == effect) {
                taints.push(Taint {
                    key: key.into(),
                    value: None,
                    effect: effect.into(),
                    time_added: (effect == "NoExecute").then_some(Time(now)),
                });
            }
        }
    }
    if taints != current {
        out.taints = Some(taints);
    }
    out.ready = ready;
    out
}

fn tolerates(t: &Toleration, taint: &Taint) -> bool {
    if let Some(e) = t.effect.as_deref().filter(|e| !e.is_empty()) {
        if e != taint.effect {
            return false;
        }
    }
    if let Some(k) = t.key.as_deref().filter(|k| !k.is_empty()) {
        if k != taint.key {
            return false;
        }
    }
    match t.operator.as_deref().unwrap_or("Equal") {
        "Exists" => true,
        "Equal" | "" => t.value.as_deref().unwrap_or("") == taint.value.as_deref().unwrap_or(""),
        _ => false,
    }
}

/// When `pod` must be evicted from a node with `taints` (None: never). `now` stands in
/// for a NoExecute taint without `timeAdded`.
pub fn eviction_deadline(
    pod: &Pod,
    taints: &[Taint],
    default_timeout: Duration,
    now: Timestamp,
) -> Option<Timestamp> {
    let tolerations: &[Toleration] = pod
        .spec
        .as_ref()
        .and_then(|s| s.tolerations.as_deref())
        .unwrap_or(&[]);
    let mut deadline: Option<Timestamp> = None;
    for taint in taints.iter().filter(|t| t.effect == "NoExecute") {
        let since = taint.time_added.as_ref().map(|t| t.0).unwrap_or(now);
        let matching: Vec<&Toleration> =
            tolerations.iter().filter(|t| tolerates(t, taint)).collect();
        let at = if matching.is_empty() {
            if taint.key == TAINT_UNREACHABLE || taint.key == TAINT_NOT_READY {
                Some(plus(since, default_timeout))
            } else {
                Some(since)
            }
        } else if matching.iter().any(|t| t.toleration_seconds.is_none()) {
            None
        } else {
            let secs = matching
                .iter()
                .filter_map(|t| t.toleration_seconds)
                .min()
                .unwrap_or(0)
                .max(0);
            Some(plus(since, Duration::from_secs(secs as u64)))
        };
        if let Some(at) = at {
            deadline = Some(deadline.map_or(at, |d: Timestamp| d.min(at)));
        }
    }
    deadline
}

fn pod_ready(p: &Pod) -> bool {
    p.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|c| c.iter().find(|c| c.type_ == "Ready"))
        .is_some_and(|c| c.status == "True")
}

/// How often the controller looks (upstream's `--node-monitor-period`, 5 s), shorter for
/// short grace periods so tests do not wait a whole period.
pub fn monitor_period(grace: Duration) -> Duration {
    (grace / 4).clamp(Duration::from_millis(100), Duration::from_secs(5))
}

pub async fn run(ctx: Ctx) -> anyhow::Result<()> {
    let grace = ctx.config.node_monitor_grace_period;
    let eviction = ctx.config.pod_eviction_timeout;
    let (leases, w) = reflector::store::<Lease>();
    let lease_stream = reflector(
        w,
        watcher(
            Api::<Lease>::namespaced(ctx.client.clone(), LEASE_NAMESPACE),
            Default::default(),
        ),
    )
    .default_backoff()
    .for_each(|_| async {});
    tokio::spawn(lease_stream);
    let nodes = ctx.informers.nodes().await?;
    let pods = ctx.informers.pods().await?;
    leases.wait_until_ready().await?;
    tracing::info!(
        "nodelifecycle: grace period {grace:?}, pod eviction timeout {eviction:?}, checking every {:?}",
        monitor_period(grace)
    );
    let mut health: HashMap<String, Health> = HashMap::new();
    let mut tick = tokio::time::interval(monitor_period(grace));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let now = Timestamp::now();
        let lease_by_node: HashMap<String, Arc<Lease>> = leases
            .state()
            .into_iter()
            .map(|l| (l.name_any(), l))
            .collect();
        let mut by_node: HashMap<String, Vec<Arc<Pod>>> = HashMap::new();
        for p in pods.state() {
            if let Some(n) = p.spec.as_ref().and_then(|s| s.node_name.clone()) {
                by_node.entry(n).or_default().push(p);
            }
        }
        let all = nodes.state();
        health.retain(|name, _| all.iter().any(|n| n.name_any() == *name));
        for node in all {
            let name = node.name_any();
            let h = observe(
                health.get(&name),
                &node,
                lease_by_node.get(&name).map(|l| &**l),
                now,
            );
            let p = plan(&node, &h, now, grace);
            health.insert(name.clone(), h);
            let taints = apply(&ctx, &node, &p).await;
            let on_node = by_node.remove(&name).unwrap_or_default();
            if p.ready.as_deref().is_some_and(|r| r != "True") {
                mark_not_ready(&ctx, &on_node).await;
            }
            evict(&ctx, &taints, &on_node, eviction, now).await;
        }
    }
}

/// Writes the plan; returns the taints now on the node (as written, or as they were).
async fn apply(ctx: &Ctx, node: &Node, p: &NodePlan) -> Vec<Taint> {
    let name = node.name_any();
    let api: Api<Node> = Api::all(ctx.client.clone());
    if !p.conditions.is_empty() {
        let patch = serde_json::json!({"status": {"conditions": p.conditions}});
        match api
            .patch_status(&name, &PatchParams::default(), &Patch::Strategic(&patch))
            .await
        {
            Ok(_) => {
                tracing::info!("nodelifecycle: node {name}: no heartbeat within the grace period; conditions set to Unknown");
                ctx.events
                    .publish(
                        node,
                        EventType::Normal,
                        "NodeNotReady",
                        &format!("Node {name} status is now: NodeNotReady"),
                    )
                    .await;
            }
            Err(e) => tracing::warn!("nodelifecycle: node {name}: updating conditions: {e}"),
        }
    }
    let current = node
        .spec
        .as_ref()
        .and_then(|s| s.taints.clone())
        .unwrap_or_default();
    let Some(taints) = p.taints.as_ref() else {
        return current;
    };
    // Optimistic concurrency: the taint list is atomic, so never clobber a newer one.
    let patch = serde_json::json!({
        "metadata": {"resourceVersion": node.resource_version()},
        "spec": {"taints": taints},
    });
    match api
        .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
    {
        Ok(_) => {
            let keys: Vec<String> = taints
                .iter()
                .map(|t| format!("{}:{}", t.key, t.effect))
                .collect();
            tracing::info!("nodelifecycle: node {name}: taints now {keys:?}");
            taints.clone()
        }
        Err(e) => {
            tracing::info!("nodelifecycle: node {name}: updating taints: {e} (retried next pass)");
            current
        }
    }
}

async fn mark_not_ready(ctx: &Ctx, pods: &[Arc<Pod>]) {
    for p in pods.iter().filter(|p| pod_ready(p)) {
        let api: Api<Pod> = Api::namespaced(ctx.client.clone(), &p.namespace().unwrap_or_default());
        let patch = serde_json::json!({"status": {"conditions": [{
            "type": "Ready", "status": "False", "lastTransitionTime": Time(Timestamp::now()),
        }]}});
        if let Err(e) = api
            .patch_status(
                &p.name_any(),
                &PatchParams::default(),
                &Patch::Strategic(&patch),
            )
            .await
        {
            tracing::debug!("nodelifecycle: marking {} not ready: {e}", p.name_any());
        }
    }
}

async fn evict(ctx: &Ctx, taints: &[Taint], pods: &[Arc<Pod>], timeout: Duration, now: Timestamp) {
    if !taints.iter().any(|t| t.effect == "NoExecute") {
        return;
    }
    for p in pods {
        if p.metadata.deletion_timestamp.is_some() {
            continue;
        }
        let Some(at) = eviction_deadline(p, taints, timeout, now) else {
            continue;
        };
        if at > now {
            continue;
        }
        let ns = p.namespace().unwrap_or_default();
        let name = p.name_any();
        let api: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
        let cond = serde_json::json!({"status": {"conditions": [{
            "type": "DisruptionTarget", "status": "True", "reason": "DeletionByTaintManager",
            "message": "Taint manager: deleting due to NoExecute taint",
            "lastTransitionTime": Time(now),
        }]}});
        let _ = api
            .patch_status(&name, &PatchParams::default(), &Patch::Strategic(&cond))
            .await;
        ctx.events
            .publish(
                &**p,
                EventType::Normal,
                "TaintManagerEviction",
                &format!("Marking for deletion Pod {ns}/{name}"),
            )
            .await;
        let dp = DeleteParams {
            preconditions: Some(Preconditions {
                uid: p.uid(),
                resource_version: None,
            }),
            ..Default::default()
        };
        match api.delete(&name, &dp).await {
            Ok(_) => tracing::info!("nodelifecycle: evicted pod {ns}/{name} (NoExecute taint)"),
            Err(e) => tracing::warn!("nodelifecycle: evicting pod {ns}/{name}: {e}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::coordination::v1::LeaseSpec;
    use k8s_openapi::api::core::v1::{NodeSpec, NodeStatus, PodSpec};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};

    fn at(s: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + s).unwrap()
    }

    fn node(ready: Option<(&str, i64)>, taints: Vec<Taint>) -> Node {
        Node {
            metadata: ObjectMeta {
                name: Some("n".into()),
                ..Default::default()
            },
            spec: Some(NodeSpec {
                taints: Some(taints),
                ..Default::default()
            }),
            status: Some(NodeStatus {
                conditions: ready.map(|(s, hb)| {
                    vec![
                        NodeCondition {
                            type_: "Ready".into(),
                            status: s.into(),
                            last_heartbeat_time: Some(Time(at(hb))),
                            ..Default::default()
                        },
                        NodeCondition {
                            type_: "MemoryPressure".into(),
                            status: "False".into(),
                            ..Default::default()
                        },
                    ]
                }),
                ..Default::default()
            }),
        }
    }

    fn lease(renew: i64) -> Lease {
        Lease {
            spec: Some(LeaseSpec {
                renew_time: Some(MicroTime(at(renew))),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn taint(key: &str, effect: &str, added: Option<i64>) -> Taint {
        Taint {
            key: key.into(),
            value: None,
            effect: effect.into(),
            time_added: added.map(|s| Time(at(s))),
        }
    }

    const GRACE: Duration = Duration::from_secs(40);

    #[test]
    fn durations() {
        assert_eq!(parse_duration("40s"), Ok(Duration::from_secs(40)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("7"), Ok(Duration::from_secs(7)));
        for bad in ["", "s", "5x", "abc", "5 s"] {
            assert!(parse_duration(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn lease_renewals_keep_a_node_healthy() {
        let n = node(Some(("True", 0)), vec![]);
        let h = observe(None, &n, Some(&lease(0)), at(0));
        assert_eq!(h.probe, at(0));
        // The lease is renewed at 30 s; at 60 s the last change was seen 30 s ago.
        let h = observe(Some(&h), &n, Some(&lease(30)), at(30));
        let h = observe(Some(&h), &n, Some(&lease(30)), at(60));
        assert_eq!(h.probe, at(30));
        assert_eq!(
            plan(&n, &h, at(60), GRACE),
            NodePlan {
                ready: Some("True".into()),
                ..Default::default()
            }
        );
        // Nothing since: at 71 s the grace (40 s) is over.
        let h = observe(Some(&h), &n, Some(&lease(30)), at(71));
        let p = plan(&n, &h, at(71), GRACE);
        assert_eq!(p.ready.as_deref(), Some("Unknown"));
        let types: Vec<_> = p
            .conditions
            .iter()
            .map(|c| (c.type_.as_str(), c.status.as_str(), c.reason.as_deref()))
            .collect();
        assert_eq!(
            types,
            vec![
                ("Ready", "Unknown", Some("NodeStatusUnknown")),
                ("MemoryPressure", "Unknown", Some("NodeStatusUnknown")),
                ("DiskPressure", "Unknown", Some("NodeStatusNeverUpdated")),
                ("PIDPressure", "Unknown", Some("NodeStatusNeverUpdated")),
            ]
        );
        assert_eq!(
            p.conditions[0].message.as_deref(),
            Some("Kubelet stopped posting node status.")
        );
        assert_eq!(
            p.conditions[0].last_heartbeat_time,
            Some(Time(at(0))),
            "heartbeat kept"
        );
        assert_eq!(
            p.taints,
            Some(vec![
                taint(TAINT_UNREACHABLE, "NoSchedule", None),
                taint(TAINT_UNREACHABLE, "NoExecute", Some(71)),
            ])
        );
    }

    #[test]
    fn ready_heartbeats_count_too_and_old_leases_do_not() {
        let h = observe(None, &node(Some(("True", 0)), vec![]), None, at(0));
        let h = observe(Some(&h), &node(Some(("True", 20)), vec![]), None, at(20));
        assert_eq!(h.probe, at(20));
        // An older lease renewTime than the last seen is no heartbeat.
        let h2 = observe(
            Some(&Health {
                lease_renew: Some(at(50)),
                ..h.clone()
            }),
            &node(Some(("True", 20)), vec![]),
            Some(&lease(40)),
            at(55),
        );
        assert_eq!(h2.probe, at(20));
    }

    #[test]
    fn taints_follow_ready_and_recovery_clears_them() {
        let h = Health {
            probe: at(100),
            ready_heartbeat: None,
            lease_renew: None,
        };
        // Ready=False (the kubelet says so): not-ready taints, unreachable ones removed.
        let n = node(
            Some(("False", 100)),
            vec![
                taint(TAINT_UNREACHABLE, "NoExecute", Some(1)),
                taint("user", "NoSchedule", None),
            ],
        );
        let p = plan(&n, &h, at(101), GRACE);
        assert!(p.conditions.is_empty());
        assert_eq!(
            p.taints,
            Some(vec![
                taint("user", "NoSchedule", None),
                taint(TAINT_NOT_READY, "NoSchedule", None),
                taint(TAINT_NOT_READY, "NoExecute", Some(101)),
            ])
        );
        // Recovered: Ready=True with a fresh heartbeat removes ours, keeps the user's.
        let n = node(
            Some(("True", 100)),
            vec![
                taint(TAINT_UNREACHABLE, "NoExecute", Some(1)),
                taint(TAINT_UNREACHABLE, "NoSchedule", None),
                taint("user", "NoSchedule", None),
            ],
        );
        assert_eq!(
            plan(&n, &h, at(101), GRACE).taints,
            Some(vec![taint("user", "NoSchedule", None)])
        );
        // Already right: nothing to write (existing timeAdded kept).
        let n = node(
            Some(("Unknown", 0)),
            vec![
                taint(TAINT_UNREACHABLE, "NoSchedule", None),
                taint(TAINT_UNREACHABLE, "NoExecute", Some(5)),
            ],
        );
        let p = plan(&n, &h, at(101), GRACE);
        assert_eq!(p.taints, None);
        assert!(p.conditions.is_empty());
    }

    #[test]
    fn a_node_that_never_posted_status_gets_the_startup_grace() {
        let n = node(None, vec![]);
        let h = observe(None, &n, None, at(0));
        let p = plan(&n, &h, at(45), GRACE);
        assert_eq!(p, NodePlan::default(), "inside the 60 s startup grace");
        let p = plan(&n, &h, at(61), GRACE);
        assert_eq!(p.conditions.len(), 4);
        assert_eq!(
            p.conditions[0].reason.as_deref(),
            Some("NodeStatusNeverUpdated")
        );
        assert_eq!(p.ready.as_deref(), Some("Unknown"));
    }

    fn pod(tolerations: Vec<Toleration>) -> Pod {
        Pod {
            spec: Some(PodSpec {
                tolerations: Some(tolerations),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn tol(key: &str, effect: &str, secs: Option<i64>) -> Toleration {
        Toleration {
            key: Some(key.into()),
            operator: Some("Exists".into()),
            effect: (!effect.is_empty()).then(|| effect.to_string()),
            toleration_seconds: secs,
            value: None,
        }
    }

    #[test]
    fn eviction_deadlines() {
        let unreachable = [
            taint(TAINT_UNREACHABLE, "NoSchedule", None),
            taint(TAINT_UNREACHABLE, "NoExecute", Some(10)),
        ];
        let d = Duration::from_secs(300);
        // No toleration: the default (DefaultTolerationSeconds) timeout from timeAdded.
        assert_eq!(
            eviction_deadline(&pod(vec![]), &unreachable, d, at(12)),
            Some(at(310))
        );
        // tolerationSeconds honoured; negative means at once.
        assert_eq!(
            eviction_deadline(
                &pod(vec![tol(TAINT_UNREACHABLE, "NoExecute", Some(30))]),
                &unreachable,
                d,
                at(12)
            ),
            Some(at(40))
        );
        assert_eq!(
            eviction_deadline(
                &pod(vec![tol(TAINT_UNREACHABLE, "", Some(-5))]),
                &unreachable,
                d,
                at(12)
            ),
            Some(at(10))
        );
        // Tolerated forever.
        assert_eq!(
            eviction_deadline(
                &pod(vec![tol(TAINT_UNREACHABLE, "NoExecute", None)]),
                &unreachable,
                d,
                at(12)
            ),
            None
        );
        assert_eq!(
            eviction_deadline(&pod(vec![tol("", "", None)]), &unreachable, d, at(12)),
            None
        );
        // A NoSchedule toleration does not help against NoExecute.
        assert_eq!(
            eviction_deadline(
                &pod(vec![tol(TAINT_UNREACHABLE, "NoSchedule", None)]),
                &unreachable,
                d,
                at(12)
            ),
            Some(at(310))
        );
        // Other untolerated NoExecute taints evict at once; the earliest deadline wins.
        let mixed = [
            taint(TAINT_UNREACHABLE, "NoExecute", Some(10)),
            taint("dedicated", "NoExecute", Some(20)),
        ];
        assert_eq!(
            eviction_deadline(
                &pod(vec![tol(TAINT_UNREACHABLE, "", None)]),
                &mixed,
                d,
                at(25)
            ),
            Some(at(20))
        );
        // No NoExecute taint: never.
        assert_eq!(
            eviction_deadline(&pod(vec![]), &unreachable[..1], d, at(12)),
            None
        );
        // A taint without timeAdded counts from now.
        assert_eq!(
            eviction_deadline(
                &pod(vec![]),
                &[taint(TAINT_NOT_READY, "NoExecute", None)],
                d,
                at(7)
            ),
            Some(at(307))
        );
    }
}
