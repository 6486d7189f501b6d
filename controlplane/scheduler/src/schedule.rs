//! One scheduling decision over the cache: filter from a rotating start node until
//! enough feasible nodes are found (`percentageOfNodesToScore`), score those, pick the
//! best (ties broken at random, as upstream's `selectHost`). A pod that fits nowhere gets
//! a [`FitError`] whose message is upstream's, reason by reason.

use std::collections::HashMap;
use std::fmt;

use crate::cache::Cache;
use crate::filter::{run_filters, Reason};
use crate::info::{NodeInfo, PodInfo};
use crate::score::{self, normalize};
use crate::topology::{spread_scores, SpreadFilterState};

/// Upstream's `minFeasibleNodesToFind`.
pub const MIN_FEASIBLE_NODES_TO_FIND: usize = 100;
/// Upstream's `minFeasibleNodesPercentageToFind`.
pub const MIN_FEASIBLE_NODES_PERCENTAGE_TO_FIND: usize = 5;

/// Upstream's `numFeasibleNodesToFind`: all nodes below 100; otherwise `percentage` of
/// them (adaptive default 50% − nodes/125, at least 5%), never fewer than 100.
pub fn num_feasible_nodes_to_find(percentage: Option<u32>, all: usize) -> usize {
    if all < MIN_FEASIBLE_NODES_TO_FIND {
        return all;
    }
    let pct = match percentage {
        Some(p) if p > 0 => (p as usize).min(100),
        _ => 50usize
            .saturating_sub(all / 125)
            .max(MIN_FEASIBLE_NODES_PERCENTAGE_TO_FIND),
    };
    (all * pct / 100).max(MIN_FEASIBLE_NODES_TO_FIND)
}

/// No node fits: upstream's `FitError`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FitError {
    pub num_all_nodes: usize,
    /// Reason → number of nodes that reported it.
    pub reasons: HashMap<Reason, usize>,
}

impl fmt::Display for FitError {
    /// `0/3 nodes are available: 1 node(s) had untolerated taint {k: v}, 2 Insufficient cpu.`
    /// — "<count> <reason>" strings sorted, as upstream's `FitError.Error`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "0/{} nodes are available:", self.num_all_nodes)?;
        let mut parts: Vec<String> = self
            .reasons
            .iter()
            .map(|(r, n)| format!("{n} {r}"))
            .collect();
        parts.sort();
        if !parts.is_empty() {
            write!(f, " {}.", parts.join(", "))?;
        }
        Ok(())
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ScheduleError {
    /// Upstream's `ErrNoNodesAvailable`.
    NoNodes,
    Unfit(FitError),
}

impl fmt::Display for ScheduleError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ScheduleError::NoNodes => f.write_str("no nodes available to schedule pods"),
            ScheduleError::Unfit(e) => e.fmt(f),
        }
    }
}

impl std::error::Error for ScheduleError {}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub node: String,
    /// Nodes the filters ran on, and how many of them passed.
    pub evaluated: usize,
    pub feasible: usize,
}

/// The decision maker (upstream's `schedulePod`), holding the rotating start index and
/// the tie-break random state.
#[derive(Debug)]
pub struct Algorithm {
    pub percentage_of_nodes_to_score: Option<u32>,
    next_start: usize,
    rng: u64,
}

impl Algorithm {
    pub fn new(percentage_of_nodes_to_score: Option<u32>, seed: u64) -> Algorithm {
        Algorithm {
            percentage_of_nodes_to_score,
            next_start: 0,
            rng: seed | 1,
        }
    }

    fn random(&mut self) -> u64 {
        // xorshift64*: plenty for tie-breaking.
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        self.rng.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    pub fn schedule(&mut self, pod: &PodInfo, cache: &Cache) -> Result<Decision, ScheduleError> {
        let nodes = cache.nodes();
        let live = cache.live_nodes();
        if live == 0 {
            return Err(ScheduleError::NoNodes);
        }
        let to_find = num_feasible_nodes_to_find(self.percentage_of_nodes_to_score, live);
        let spread = SpreadFilterState::new(pod, nodes.iter());
        let n = nodes.len();
        let start = self.next_start % n;
        let mut feasible: Vec<usize> = Vec::with_capacity(to_find.min(n));
        let mut reasons: HashMap<Reason, usize> = HashMap::new();
        let mut visited = 0;
        let mut evaluated = 0;
        for off in 0..n {
            visited = off + 1;
            let i = (start + off) % n;
            let ni = &nodes[i];
            if ni.node.is_none() {
                continue;
            }
            evaluated += 1;
            match run_filters(pod, ni, spread.as_ref()) {
                Ok(()) => {
                    feasible.push(i);
                    if feasible.len() >= to_find {
                        break;
                    }
                }
                Err(rs) => {
                    for r in rs {
                        *reasons.entry(r).or_insert(0) += 1;
                    }
                }
            }
        }
        self.next_start = (start + visited) % n;
        if feasible.is_empty() {
            return Err(ScheduleError::Unfit(FitError {
                num_all_nodes: live,
                reasons,
            }));
        }
        if feasible.len() == 1 {
            return Ok(Decision {
                node: nodes[feasible[0]].name.clone(),
                evaluated,
                feasible: 1,
            });
        }
        let fnodes: Vec<&NodeInfo> = feasible.iter().map(|&i| &nodes[i]).collect();
        let totals = score_nodes(pod, &fnodes, nodes);
        // selectHost: the highest total; among equals, each is kept with probability
        // 1/(number seen so far) (reservoir sampling), so ties spread evenly.
        let mut best = 0;
        let mut seen = 1u64;
        for k in 1..totals.len() {
            if totals[k] > totals[best] {
                best = k;
                seen = 1;
            } else if totals[k] == totals[best] {
                seen += 1;
                if self.random().is_multiple_of(seen) {
                    best = k;
                }
            }
        }
        Ok(Decision {
            node: fnodes[best].name.clone(),
            evaluated,
            feasible: feasible.len(),
        })
    }
}

/// Weighted sum of every score plugin for the feasible nodes.
pub fn score_nodes(pod: &PodInfo, feasible: &[&NodeInfo], all: &[NodeInfo]) -> Vec<i64> {
    let mut totals: Vec<i64> = feasible
        .iter()
        .map(|n| {
            score::least_allocated(pod, n) * score::WEIGHT_LEAST_ALLOCATED
                + score::balanced_allocation(pod, n) * score::WEIGHT_BALANCED_ALLOCATION
        })
        .collect();
    let mut add = |s: &[i64], w: i64| {
        for (t, v) in totals.iter_mut().zip(s) {
            *t += v * w;
        }
    };
    if let Some(mut s) = score::node_affinity_raw(pod, feasible) {
        normalize(&mut s, false);
        add(&s, score::WEIGHT_NODE_AFFINITY);
    }
    let mut t = score::taint_toleration_raw(pod, feasible);
    normalize(&mut t, true);
    add(&t, score::WEIGHT_TAINT_TOLERATION);
    if let Some(s) = spread_scores(pod, feasible, all) {
        add(&s, score::WEIGHT_POD_TOPOLOGY_SPREAD);
    }
    totals
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::info::testutil::*;
    use std::sync::Arc;

    #[test]
    fn feasible_nodes_to_find_is_upstreams() {
        assert_eq!(num_feasible_nodes_to_find(None, 50), 50);
        assert_eq!(
            num_feasible_nodes_to_find(None, 100),
            100,
            "50% of 100, floored at 100"
        );
        assert_eq!(num_feasible_nodes_to_find(None, 1000), 420);
        assert_eq!(num_feasible_nodes_to_find(None, 5000), 500);
        assert_eq!(num_feasible_nodes_to_find(None, 6000), 300, "floor at 5%");
        assert_eq!(num_feasible_nodes_to_find(None, 1500), 570);
        assert_eq!(num_feasible_nodes_to_find(Some(100), 5000), 5000);
        assert_eq!(
            num_feasible_nodes_to_find(Some(1), 5000),
            100,
            "never below 100"
        );
    }

    #[test]
    fn fit_error_message_is_upstreams() {
        let e = FitError {
            num_all_nodes: 3,
            reasons: HashMap::from([
                (Reason::Insufficient("cpu".into()), 2),
                (
                    Reason::UntoleratedTaint {
                        key: "node.kubernetes.io/unreachable".into(),
                        value: String::new(),
                    },
                    1,
                ),
            ]),
        };
        assert_eq!(
            e.to_string(),
            "0/3 nodes are available: 1 node(s) had untolerated taint {node.kubernetes.io/unreachable: }, 2 Insufficient cpu."
        );
        assert_eq!(
            ScheduleError::NoNodes.to_string(),
            "no nodes available to schedule pods"
        );
    }

    fn cache(nodes: Vec<k8s_openapi::api::core::v1::Node>) -> Cache {
        let mut c = Cache::new();
        for n in nodes {
            c.upsert_node(n);
        }
        c
    }

    #[test]
    fn aggregates_reasons_over_all_nodes() {
        let c = cache(vec![
            node("a", "1", "1Gi", "110"),
            node("b", "1", "1Gi", "110"),
            with_taint(
                node("c", "8", "8Gi", "110"),
                "node.kubernetes.io/unreachable",
                "",
                "NoExecute",
            ),
        ]);
        let mut alg = Algorithm::new(None, 7);
        let err = alg
            .schedule(&PodInfo::new(pod("p", Some("2"), None)), &c)
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "0/3 nodes are available: 1 node(s) had untolerated taint {node.kubernetes.io/unreachable: }, 2 Insufficient cpu."
        );
        let err = alg
            .schedule(
                &PodInfo::new(pod("p", Some("2"), Some("2Gi"))),
                &cache(vec![node("a", "1", "1Gi", "110")]),
            )
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "0/1 nodes are available: 1 Insufficient cpu, 1 Insufficient memory."
        );
        assert_eq!(
            alg.schedule(&PodInfo::new(pod("p", None, None)), &Cache::new()),
            Err(ScheduleError::NoNodes)
        );
    }

    #[test]
    fn assumed_pods_steer_the_next_decision_and_spread() {
        let mut c = cache(vec![
            node("a", "4", "8Gi", "110"),
            node("b", "4", "8Gi", "110"),
            node("c", "4", "8Gi", "110"),
        ]);
        let mut alg = Algorithm::new(None, 42);
        let mut per_node: HashMap<String, usize> = HashMap::new();
        for i in 0..9 {
            let p = Arc::new(PodInfo::new(pod(
                &format!("p{i}"),
                Some("100m"),
                Some("100Mi"),
            )));
            let d = alg.schedule(&p, &c).unwrap();
            c.assume(p, &d.node);
            *per_node.entry(d.node).or_insert(0) += 1;
        }
        assert_eq!(per_node.len(), 3, "{per_node:?}");
        assert!(
            per_node.values().all(|n| *n == 3),
            "least-allocated spreads evenly: {per_node:?}"
        );
        // A 4-CPU pod now fits nowhere: each node has 300m assumed.
        let err = alg
            .schedule(&PodInfo::new(pod("big", Some("4"), None)), &c)
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "0/3 nodes are available: 3 Insufficient cpu."
        );
    }

    #[test]
    fn prefers_tolerated_and_preferred_nodes() {
        let c = cache(vec![
            with_taint(
                node("tainted", "64", "64Gi", "110"),
                "x",
                "",
                "PreferNoSchedule",
            ),
            node("plain", "4", "8Gi", "110"),
        ]);
        let mut alg = Algorithm::new(None, 1);
        for _ in 0..10 {
            let d = alg
                .schedule(&PodInfo::new(pod("p", Some("1"), None)), &c)
                .unwrap();
            assert_eq!(
                d.node, "plain",
                "TaintToleration (weight 3) outweighs free capacity"
            );
        }
    }

    #[test]
    fn partial_scan_rotates_the_start() {
        let c = cache(
            (0..1000)
                .map(|i| node(&format!("n{i}"), "4", "8Gi", "110"))
                .collect(),
        );
        let mut alg = Algorithm::new(None, 3);
        let d = alg
            .schedule(&PodInfo::new(pod("p", None, None)), &c)
            .unwrap();
        assert_eq!(d.feasible, 420);
        assert_eq!(d.evaluated, 420);
        assert_eq!(alg.next_start, 420);
        alg.schedule(&PodInfo::new(pod("p", None, None)), &c)
            .unwrap();
        assert_eq!(alg.next_start, 840);
    }
}
