//! Score plugins and upstream's default weights. Every plugin yields 0..100 per node
//! (normalised as upstream's NormalizeScore does); the node's total is the weighted sum.

use crate::info::{NodeInfo, PodInfo};
use crate::matching::{pod_tolerations, term_matches, tolerates};

/// Upstream's default score weights.
pub const WEIGHT_TAINT_TOLERATION: i64 = 3;
pub const WEIGHT_NODE_AFFINITY: i64 = 2;
pub const WEIGHT_POD_TOPOLOGY_SPREAD: i64 = 2;
pub const WEIGHT_LEAST_ALLOCATED: i64 = 1;
pub const WEIGHT_BALANCED_ALLOCATION: i64 = 1;

pub const MAX_NODE_SCORE: i64 = 100;

/// NodeResourcesFit's LeastAllocated strategy over cpu and memory (weight 1 each), with
/// non-zero requests: `(allocatable - requested) * 100 / allocatable`, averaged.
pub fn least_allocated(pod: &PodInfo, node: &NodeInfo) -> i64 {
    let pairs = [
        (
            node.non_zero_requested.0 + pod.non_zero.0,
            node.allocatable.milli_cpu,
        ),
        (
            node.non_zero_requested.1 + pod.non_zero.1,
            node.allocatable.memory,
        ),
    ];
    let (mut sum, mut weights) = (0i64, 0i64);
    for (requested, alloc) in pairs {
        if alloc == 0 {
            continue;
        }
        sum += if requested > alloc {
            0
        } else {
            (alloc - requested) * MAX_NODE_SCORE / alloc
        };
        weights += 1;
    }
    if weights == 0 {
        0
    } else {
        sum / weights
    }
}

/// NodeResourcesBalancedAllocation over cpu and memory with actual requests: `(1 - std) *
/// 100` of the utilisation fractions (capped at 1); for two resources std = |f1 - f2| / 2.
pub fn balanced_allocation(pod: &PodInfo, node: &NodeInfo) -> i64 {
    let pairs = [
        (
            node.requested.milli_cpu + pod.requests.milli_cpu,
            node.allocatable.milli_cpu,
        ),
        (
            node.requested.memory + pod.requests.memory,
            node.allocatable.memory,
        ),
    ];
    let fractions: Vec<f64> = pairs
        .iter()
        .filter(|(_, a)| *a > 0)
        .map(|(r, a)| (*r as f64 / *a as f64).min(1.0))
        .collect();
    let std = match fractions.as_slice() {
        [a, b] => ((a - b) / 2.0).abs(),
        _ => 0.0,
    };
    ((1.0 - std) * MAX_NODE_SCORE as f64) as i64
}

/// NodeAffinity: the summed weights of the preferred terms the node matches (raw; see
/// [`normalize`]). None when the pod has no preferred terms (plugin skipped).
pub fn node_affinity_raw(pod: &PodInfo, nodes: &[&NodeInfo]) -> Option<Vec<i64>> {
    let terms = pod
        .pod
        .spec
        .as_ref()?
        .affinity
        .as_ref()?
        .node_affinity
        .as_ref()?
        .preferred_during_scheduling_ignored_during_execution
        .as_deref()
        .filter(|t| !t.is_empty())?;
    Some(
        nodes
            .iter()
            .map(|n| {
                terms
                    .iter()
                    .filter(|t| t.weight != 0 && term_matches(&t.preference, &n.name, n.labels()))
                    .map(|t| i64::from(t.weight))
                    .sum()
            })
            .collect(),
    )
}

/// TaintToleration: the number of PreferNoSchedule taints the pod does not tolerate (only
/// tolerations with effect PreferNoSchedule or empty count), raw; normalised reversed.
pub fn taint_toleration_raw(pod: &PodInfo, nodes: &[&NodeInfo]) -> Vec<i64> {
    let tols: Vec<_> = pod_tolerations(&pod.pod)
        .iter()
        .filter(|t| {
            matches!(
                t.effect.as_deref(),
                None | Some("") | Some("PreferNoSchedule")
            )
        })
        .collect();
    nodes
        .iter()
        .map(|n| {
            n.taints()
                .iter()
                .filter(|t| {
                    t.effect == "PreferNoSchedule" && !tols.iter().any(|tol| tolerates(tol, t))
                })
                .count() as i64
        })
        .collect()
}

/// Upstream's `helper.DefaultNormalizeScore`: scale to 0..100 by the maximum; reversed,
/// the best (lowest) raw score gets 100. All zero: 0, or 100 when reversed.
pub fn normalize(scores: &mut [i64], reverse: bool) {
    let max = scores.iter().copied().max().unwrap_or(0);
    if max == 0 {
        if reverse {
            scores.iter_mut().for_each(|s| *s = MAX_NODE_SCORE);
        }
        return;
    }
    for s in scores {
        let v = MAX_NODE_SCORE * *s / max;
        *s = if reverse { MAX_NODE_SCORE - v } else { v };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::info::testutil::*;
    use k8s_openapi::api::core::v1::{
        Affinity, NodeAffinity, NodeSelectorRequirement, NodeSelectorTerm, PreferredSchedulingTerm,
        Toleration,
    };

    #[test]
    fn least_allocated_table() {
        // 4 cpu / 8Gi node with 1 cpu / 2Gi used; pod 1 cpu / 2Gi: cpu (4-2)/4 = 50,
        // mem (8-4)/8 = 50.
        let n = node_info(
            node("n", "4", "8Gi", "110"),
            vec![pod("a", Some("1"), Some("2Gi"))],
        );
        assert_eq!(
            least_allocated(&PodInfo::new(pod("p", Some("1"), Some("2Gi"))), &n),
            50
        );
        // Empty node, best-effort pod: non-zero 100m/200Mi: cpu 3900*100/4000 = 97,
        // mem (8192-200)*100/8192 = 97.
        let e = node_info(node("n", "4", "8Gi", "110"), vec![]);
        assert_eq!(least_allocated(&PodInfo::new(pod("p", None, None)), &e), 97);
        // Over-committed resource scores 0.
        assert_eq!(
            least_allocated(&PodInfo::new(pod("p", Some("8"), Some("8Gi"))), &e),
            0
        );
    }

    #[test]
    fn balanced_allocation_table() {
        let e = node_info(node("n", "4", "8Gi", "110"), vec![]);
        // cpu 2/4 = .5, mem 4/8 = .5: perfectly balanced.
        assert_eq!(
            balanced_allocation(&PodInfo::new(pod("p", Some("2"), Some("4Gi"))), &e),
            100
        );
        // cpu 3/4 = .75, mem 2/8 = .25: std .25 -> 75.
        assert_eq!(
            balanced_allocation(&PodInfo::new(pod("p", Some("3"), Some("2Gi"))), &e),
            75
        );
        // Fractions cap at 1: cpu 8/4 -> 1, mem 0: std .5 -> 50.
        assert_eq!(
            balanced_allocation(&PodInfo::new(pod("p", Some("8"), None)), &e),
            50
        );
    }

    #[test]
    fn node_affinity_preferred_weights() {
        let mut p = pod("p", None, None);
        let pref = |w: i32, key: &str, v: &str| PreferredSchedulingTerm {
            weight: w,
            preference: NodeSelectorTerm {
                match_expressions: Some(vec![NodeSelectorRequirement {
                    key: key.into(),
                    operator: "In".into(),
                    values: Some(vec![v.into()]),
                }]),
                ..Default::default()
            },
        };
        p.spec.as_mut().unwrap().affinity = Some(Affinity {
            node_affinity: Some(NodeAffinity {
                preferred_during_scheduling_ignored_during_execution: Some(vec![
                    pref(10, "disk", "ssd"),
                    pref(30, "zone", "a"),
                ]),
                ..Default::default()
            }),
            ..Default::default()
        });
        let a = node_info(
            with_labels(
                node("a", "1", "1Gi", "1"),
                &[("disk", "ssd"), ("zone", "a")],
            ),
            vec![],
        );
        let b = node_info(
            with_labels(node("b", "1", "1Gi", "1"), &[("disk", "ssd")]),
            vec![],
        );
        let c = node_info(node("c", "1", "1Gi", "1"), vec![]);
        let mut s = node_affinity_raw(&PodInfo::new(p), &[&a, &b, &c]).unwrap();
        assert_eq!(s, vec![40, 10, 0]);
        normalize(&mut s, false);
        assert_eq!(s, vec![100, 25, 0]);
        assert!(node_affinity_raw(&PodInfo::new(pod("p", None, None)), &[&a]).is_none());
    }

    #[test]
    fn taint_toleration_prefers_fewer_intolerable_taints() {
        let t = |n, taints: &[&str]| {
            let mut node = node(n, "1", "1Gi", "1");
            for k in taints {
                node = with_taint(node, k, "", "PreferNoSchedule");
            }
            node_info(node, vec![])
        };
        let (a, b, c) = (t("a", &[]), t("b", &["x"]), t("c", &["x", "y"]));
        let mut p = pod("p", None, None);
        let pi = PodInfo::new(p.clone());
        let mut s = taint_toleration_raw(&pi, &[&a, &b, &c]);
        assert_eq!(s, vec![0, 1, 2]);
        normalize(&mut s, true);
        assert_eq!(s, vec![100, 50, 0]);
        // A toleration for x with effect NoSchedule does not count for PreferNoSchedule.
        p.spec.as_mut().unwrap().tolerations = Some(vec![Toleration {
            key: Some("x".into()),
            operator: Some("Exists".into()),
            effect: Some("NoSchedule".into()),
            ..Default::default()
        }]);
        assert_eq!(
            taint_toleration_raw(&PodInfo::new(p.clone()), &[&b]),
            vec![1]
        );
        p.spec.as_mut().unwrap().tolerations.as_mut().unwrap()[0].effect = None;
        assert_eq!(
            taint_toleration_raw(&PodInfo::new(p), &[&b, &c]),
            vec![0, 1]
        );
    }

    #[test]
    fn normalize_edge_cases() {
        let mut z = vec![0, 0];
        normalize(&mut z, false);
        assert_eq!(z, vec![0, 0]);
        normalize(&mut z, true);
        assert_eq!(z, vec![100, 100]);
    }
}
