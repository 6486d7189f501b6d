//! Pod garbage collector (upstream's `pkg/controller/podgc`), every [`CHECK_PERIOD`]:
//! - **terminated pods** (phase Succeeded or Failed) beyond `--terminated-pod-gc-threshold`
//!   (12500; 0 disables) are deleted, oldest first (by creationTimestamp);
//! - **orphaned pods**, bound to a Node that no longer exists, are marked Failed with a
//!   `DisruptionTarget` condition (reason `DeletionByPodGC`) and force-deleted — once the
//!   node has been missing for [`Config::quarantine`] (upstream 40 s) and a live GET still
//!   does not find it (a node re-registering meanwhile keeps its pods);
//! - **unscheduled terminating pods** (deletionTimestamp, no node) are force-deleted: no
//!   kubelet will ever finish them;
//! - **terminating pods on out-of-service nodes** (the node is not Ready and carries the
//!   `node.kubernetes.io/out-of-service` taint, KEP-2268's non-graceful node shutdown) are
//!   marked Failed and force-deleted.
//!
//! The decisions ([`plan`]) are a pure function of the pods, the nodes and how long each
//! missing node has been missing; [`run`] reads the shared pod and node caches
//! ([`crate::informers`]), plans and writes.

use std::borrow::Borrow;
use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{DeleteParams, Patch, PatchParams, Preconditions};
use kube::{Api, ResourceExt as _};
use serde_json::json;

use crate::Ctx;

/// Upstream's `gcCheckPeriod`.
pub const CHECK_PERIOD: Duration = Duration::from_secs(20);
/// Upstream's taint for KEP-2268.
pub const TAINT_OUT_OF_SERVICE: &str = "node.kubernetes.io/out-of-service";

/// PodGC settings (`Ctx::config` holds the flag values).
#[derive(Debug, Clone)]
pub struct Config {
    /// Terminated pods kept (`--terminated-pod-gc-threshold`); 0 disables that part.
    pub threshold: usize,
    /// How long a node must be missing before its pods count as orphaned.
    pub quarantine: Duration,
    /// How often to look.
    pub period: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            threshold: 12500,
            quarantine: Duration::from_secs(40),
            period: CHECK_PERIOD,
        }
    }
}

/// Why a pod goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    Terminated,
    Orphaned,
    UnscheduledTerminating,
    OutOfService,
}

impl Reason {
    /// The DisruptionTarget message upstream writes (terminated pods get none: they are
    /// finished already).
    fn message(self) -> Option<&'static str> {
        match self {
            Reason::Terminated | Reason::UnscheduledTerminating => None,
            Reason::Orphaned => Some("PodGC: node no longer exists"),
            Reason::OutOfService => Some("PodGC: node is out-of-service"),
        }
    }
}

/// A pod to delete: namespace, name, uid (the delete's precondition), why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Deletion {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    pub reason: Reason,
}

fn phase(p: &Pod) -> &str {
    p.status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .unwrap_or("")
}

fn node_of(p: &Pod) -> &str {
    p.spec
        .as_ref()
        .and_then(|s| s.node_name.as_deref())
        .unwrap_or("")
}

fn is_terminated(p: &Pod) -> bool {
    matches!(phase(p), "Succeeded" | "Failed")
}

fn ready(n: &Node) -> bool {
    n.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|cs| cs.iter().find(|c| c.type_ == "Ready"))
        .is_some_and(|c| c.status == "True")
}

fn out_of_service(n: &Node) -> bool {
    n.spec
        .as_ref()
        .and_then(|s| s.taints.as_ref())
        .is_some_and(|ts| ts.iter().any(|t| t.key == TAINT_OUT_OF_SERVICE))
}

/// What to delete. `missing_for` says how long each node that pods name but the node list
/// lacks has been missing (the caller's own clock); nodes missing shorter than the
/// quarantine keep their pods.
pub fn plan<P: Borrow<Pod>, N: Borrow<Node>>(
    pods: &[P],
    nodes: &[N],
    missing_for: &HashMap<String, Duration>,
    cfg: &Config,
) -> Vec<Deletion> {
    let pods: Vec<&Pod> = pods.iter().map(Borrow::borrow).collect();
    let mut out = Vec::new();
    let mut taken: HashSet<(String, String)> = HashSet::new();
    let mut push = |p: &Pod, reason: Reason, out: &mut Vec<Deletion>| {
        let key = (p.namespace().unwrap_or_default(), p.name_any());
        if taken.insert(key.clone()) {
            out.push(Deletion {
                namespace: key.0,
                name: key.1,
                uid: p.uid().unwrap_or_default(),
                reason,
            });
        }
    };
    // Terminated beyond the threshold, oldest first (upstream's byEvictionAndCreationTimestamp:
    // evicted pods first, then by creation time).
    if cfg.threshold > 0 {
        let mut terminated: Vec<&Pod> = pods.iter().copied().filter(|p| is_terminated(p)).collect();
        if terminated.len() > cfg.threshold {
            let evicted = |p: &Pod| {
                p.status
                    .as_ref()
                    .and_then(|s| s.reason.as_deref())
                    .is_some_and(|r| r == "Evicted")
            };
            terminated.sort_by(|a, b| {
                evicted(b)
                    .cmp(&evicted(a))
                    .then_with(|| {
                        a.metadata
                            .creation_timestamp
                            .as_ref()
                            .map(|t| t.0)
                            .cmp(&b.metadata.creation_timestamp.as_ref().map(|t| t.0))
                    })
                    .then_with(|| a.name_any().cmp(&b.name_any()))
            });
            let n = terminated.len() - cfg.threshold;
            for p in terminated.into_iter().take(n) {
                push(p, Reason::Terminated, &mut out);
            }
        }
    }
    let by_name: HashMap<String, &Node> = nodes
        .iter()
        .map(|n| (n.borrow().name_any(), n.borrow()))
        .collect();
    for p in pods {
        let node = node_of(p);
        let terminating = p.metadata.deletion_timestamp.is_some();
        if node.is_empty() {
            if terminating {
                push(p, Reason::UnscheduledTerminating, &mut out);
            }
            continue;
        }
        match by_name.get(node) {
            None => {
                if missing_for.get(node).is_some_and(|d| *d >= cfg.quarantine) {
                    push(p, Reason::Orphaned, &mut out);
                }
            }
            Some(n) => {
                if terminating && !ready(n) && out_of_service(n) {
                    push(p, Reason::OutOfService, &mut out);
                }
            }
        }
    }
    out
}

pub async fn run(ctx: Ctx) -> anyhow::Result<()> {
    let cfg = ctx.config.pod_gc.clone();
    tracing::info!(
        "pod GC started: terminated-pod threshold {} ({}), orphan quarantine {:?}, every {:?}",
        cfg.threshold,
        if cfg.threshold == 0 {
            "disabled"
        } else {
            "enabled"
        },
        cfg.quarantine,
        cfg.period
    );
    let nodes: Api<Node> = Api::all(ctx.client.clone());
    let pod_cache = ctx.informers.pods().await?;
    let node_cache = ctx.informers.nodes().await?;
    // When this controller first saw each missing node missing (its own clock).
    let mut first_missing: HashMap<String, Instant> = HashMap::new();
    // A zero period would spin (and tokio refuses it).
    let mut tick = tokio::time::interval(cfg.period.max(Duration::from_millis(100)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        // From the shared caches, as upstream's podgc reads its informers' listers: a
        // LIST of every pod each period (10k pods: a ~15 MB body encoded by the server and
        // decoded here) stalled the other in-process controllers' API calls by up to
        // ~300 ms every 20 s (BENCHMARKS.md, control plane, session 8).
        let pod_list = pod_cache.state();
        let node_list = node_cache.state();
        let known: HashSet<String> = node_list.iter().map(|n| n.name_any()).collect();
        let named: HashSet<String> = pod_list
            .iter()
            .map(|p| node_of(p).to_string())
            .filter(|n| !n.is_empty() && !known.contains(n))
            .collect();
        first_missing.retain(|n, _| named.contains(n));
        let now = Instant::now();
        let mut missing_for = HashMap::new();
        for n in &named {
            let since = *first_missing.entry(n.clone()).or_insert(now);
            let d = now.duration_since(since);
            if d >= cfg.quarantine {
                // Confirm with a live GET, as upstream does after its quarantine.
                match nodes.get_opt(n).await {
                    Ok(None) => {
                        missing_for.insert(n.clone(), d);
                    }
                    Ok(Some(_)) => {
                        first_missing.remove(n);
                    }
                    Err(e) => tracing::warn!("pod GC: checking node {n}: {e}"),
                }
            }
        }
        for d in plan(&pod_list, &node_list, &missing_for, &cfg) {
            if let Err(e) = delete(&ctx, &d).await {
                tracing::warn!("pod GC: deleting pod {}/{}: {e}", d.namespace, d.name);
            }
        }
    }
}

/// Marks the pod Failed with upstream's DisruptionTarget condition where the reason has
/// one, then force-deletes it (grace 0, uid precondition).
async fn delete(ctx: &Ctx, d: &Deletion) -> Result<(), kube::Error> {
    let api: Api<Pod> = Api::namespaced(ctx.client.clone(), &d.namespace);
    if let Some(message) = d.reason.message() {
        let now = serde_json::to_value(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
            k8s_openapi::jiff::Timestamp::now(),
        ))
        .unwrap_or_default();
        let patch = json!({"status": {
            "phase": "Failed",
            "conditions": [{
                "type": "DisruptionTarget", "status": "True", "reason": "DeletionByPodGC",
                "message": message, "lastTransitionTime": now,
            }],
        }});
        // Strategic merge: conditions merge by type, the others stay.
        let pp = PatchParams::default();
        match api
            .patch_status(&d.name, &pp, &Patch::Strategic(&patch))
            .await
        {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 404 => return Ok(()),
            Err(e) => return Err(e),
        }
    }
    let dp = DeleteParams {
        grace_period_seconds: Some(0),
        preconditions: Some(Preconditions {
            uid: Some(d.uid.clone()),
            resource_version: None,
        }),
        ..Default::default()
    };
    match api.delete(&d.name, &dp).await {
        Ok(_) => {
            tracing::info!(
                "pod GC: deleted pod {}/{} ({:?})",
                d.namespace,
                d.name,
                d.reason
            );
            Ok(())
        }
        Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => Ok(()),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(name: &str, node: &str, phase: &str, created: &str, terminating: bool) -> Pod {
        let mut v = json!({
            "metadata": {"name": name, "namespace": "ns", "uid": format!("uid-{name}"),
                         "creationTimestamp": created},
            "spec": {"nodeName": node, "containers": []},
            "status": {"phase": phase},
        });
        if terminating {
            v["metadata"]["deletionTimestamp"] = json!("2026-01-01T00:10:00Z");
        }
        serde_json::from_value(v).unwrap()
    }

    fn node(name: &str, ready: bool, oos: bool) -> Node {
        let mut v = json!({
            "metadata": {"name": name},
            "spec": {},
            "status": {"conditions": [{"type": "Ready", "status": if ready {"True"} else {"False"}}]},
        });
        if oos {
            v["spec"]["taints"] = json!([{"key": TAINT_OUT_OF_SERVICE, "value": "nodeshutdown", "effect": "NoExecute"}]);
        }
        serde_json::from_value(v).unwrap()
    }

    fn names(d: &[Deletion]) -> Vec<(&str, Reason)> {
        d.iter().map(|d| (d.name.as_str(), d.reason)).collect()
    }

    #[test]
    fn terminated_pods_above_the_threshold_go_oldest_first() {
        let pods = vec![
            pod("new", "n1", "Succeeded", "2026-01-01T00:03:00Z", false),
            pod("old", "n1", "Failed", "2026-01-01T00:01:00Z", false),
            pod("mid", "n1", "Succeeded", "2026-01-01T00:02:00Z", false),
            pod("running", "n1", "Running", "2026-01-01T00:00:00Z", false),
        ];
        let nodes = vec![node("n1", true, false)];
        let cfg = Config {
            threshold: 1,
            ..Default::default()
        };
        assert_eq!(
            names(&plan(&pods, &nodes, &HashMap::new(), &cfg)),
            [("old", Reason::Terminated), ("mid", Reason::Terminated)]
        );
        let cfg = Config {
            threshold: 3,
            ..Default::default()
        };
        assert!(plan(&pods, &nodes, &HashMap::new(), &cfg).is_empty());
        let cfg = Config {
            threshold: 0,
            ..Default::default()
        };
        assert!(
            plan(&pods, &nodes, &HashMap::new(), &cfg).is_empty(),
            "0 disables"
        );
    }

    #[test]
    fn orphans_go_after_the_quarantine_only() {
        let pods = vec![
            pod("orphan", "gone", "Running", "2026-01-01T00:00:00Z", false),
            pod("kept", "n1", "Running", "2026-01-01T00:00:00Z", false),
        ];
        let nodes = vec![node("n1", true, false)];
        let cfg = Config::default();
        let short: HashMap<String, Duration> =
            [("gone".to_string(), Duration::from_secs(5))].into();
        assert!(plan(&pods, &nodes, &short, &cfg).is_empty());
        let long: HashMap<String, Duration> =
            [("gone".to_string(), Duration::from_secs(41))].into();
        let d = plan(&pods, &nodes, &long, &cfg);
        assert_eq!(names(&d), [("orphan", Reason::Orphaned)]);
        assert_eq!(d[0].uid, "uid-orphan");
    }

    #[test]
    fn terminating_pods_unscheduled_or_on_out_of_service_nodes() {
        let pods = vec![
            pod("unscheduled", "", "Pending", "2026-01-01T00:00:00Z", true),
            pod("pending", "", "Pending", "2026-01-01T00:00:00Z", false),
            pod("oos", "down", "Running", "2026-01-01T00:00:00Z", true),
            pod(
                "oos-alive",
                "down",
                "Running",
                "2026-01-01T00:00:00Z",
                false,
            ),
            pod(
                "ready-node",
                "up-tainted",
                "Running",
                "2026-01-01T00:00:00Z",
                true,
            ),
            pod(
                "notready-untainted",
                "down-plain",
                "Running",
                "2026-01-01T00:00:00Z",
                true,
            ),
        ];
        let nodes = vec![
            node("down", false, true),
            node("up-tainted", true, true),
            node("down-plain", false, false),
        ];
        assert_eq!(
            names(&plan(&pods, &nodes, &HashMap::new(), &Config::default())),
            [
                ("unscheduled", Reason::UnscheduledTerminating),
                ("oos", Reason::OutOfService)
            ]
        );
    }
}
