//! PodTopologySpread: the `DoNotSchedule` filter (maxSkew against the least-loaded
//! eligible domain, minDomains) and the `ScheduleAnyway` score, following upstream's
//! `plugins/podtopologyspread` (filtering.go, scoring.go). Pods counted: same namespace as
//! the incoming pod, matching the constraint's selector (plus matchLabelKeys), not
//! terminating. Nodes counted: carrying every constraint's topology key and passing the
//! constraint's nodeAffinityPolicy (default Honor) and nodeTaintsPolicy (default Ignore).

use std::collections::HashMap;

use k8s_openapi::api::core::v1::TopologySpreadConstraint;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, LabelSelectorRequirement};

use crate::filter::Reason;
use crate::info::{NodeInfo, PodInfo};
use crate::matching::{
    label_selector_matches, pod_matches_node_affinity, pod_tolerations, tolerated_by,
};

const HOSTNAME: &str = "kubernetes.io/hostname";

#[derive(Debug, Clone)]
struct Constraint {
    max_skew: i64,
    key: String,
    /// None: a nil selector, which matches no pod.
    selector: Option<LabelSelector>,
    min_domains: i64,
    honor_affinity: bool,
    honor_taints: bool,
}

fn constraints(pod: &PodInfo, when: &str) -> Vec<Constraint> {
    let list: &[TopologySpreadConstraint] = pod
        .pod
        .spec
        .as_ref()
        .and_then(|s| s.topology_spread_constraints.as_deref())
        .unwrap_or(&[]);
    list.iter()
        .filter(|c| c.when_unsatisfiable == when)
        .map(|c| {
            // matchLabelKeys: `key In (the incoming pod's value)` ANDed into the selector.
            let mut selector = c.label_selector.clone();
            if let Some(sel) = selector.as_mut() {
                for k in c.match_label_keys.iter().flatten() {
                    if let Some(v) = pod.labels().get(k) {
                        sel.match_expressions.get_or_insert_with(Vec::new).push(
                            LabelSelectorRequirement {
                                key: k.clone(),
                                operator: "In".into(),
                                values: Some(vec![v.clone()]),
                            },
                        );
                    }
                }
            }
            Constraint {
                max_skew: i64::from(c.max_skew),
                key: c.topology_key.clone(),
                selector,
                min_domains: i64::from(c.min_domains.unwrap_or(1)),
                honor_affinity: c.node_affinity_policy.as_deref() != Some("Ignore"),
                honor_taints: c.node_taints_policy.as_deref() == Some("Honor"),
            }
        })
        .collect()
}

impl Constraint {
    fn includes(&self, pod: &PodInfo, node: &NodeInfo) -> bool {
        if self.honor_affinity && !pod_matches_node_affinity(&pod.pod, &node.name, node.labels()) {
            return false;
        }
        if self.honor_taints {
            let tols = pod_tolerations(&pod.pod);
            if node.taints().iter().any(|t| {
                (t.effect == "NoSchedule" || t.effect == "NoExecute") && !tolerated_by(tols, t)
            }) {
                return false;
            }
        }
        true
    }

    fn count(&self, node: &NodeInfo, ns: &str) -> i64 {
        let Some(sel) = self.selector.as_ref() else {
            return 0;
        };
        node.pods
            .iter()
            .filter(|p| {
                p.namespace == ns && !p.terminating() && label_selector_matches(sel, p.labels())
            })
            .count() as i64
    }
}

fn has_all_keys(node: &NodeInfo, cs: &[Constraint]) -> bool {
    let l = node.labels();
    cs.iter().all(|c| l.contains_key(&c.key))
}

/// PreFilter state of the `DoNotSchedule` constraints: matching pods per domain.
#[derive(Debug)]
pub struct SpreadFilterState {
    constraints: Vec<Constraint>,
    counts: Vec<HashMap<String, i64>>,
    min: Vec<i64>,
    self_match: Vec<i64>,
}

impl SpreadFilterState {
    /// None when the pod has no `DoNotSchedule` constraint (the plugin is skipped).
    pub fn new<'a>(
        pod: &PodInfo,
        nodes: impl Iterator<Item = &'a NodeInfo>,
    ) -> Option<SpreadFilterState> {
        let cs = constraints(pod, "DoNotSchedule");
        if cs.is_empty() {
            return None;
        }
        let mut counts = vec![HashMap::<String, i64>::new(); cs.len()];
        for n in nodes {
            if n.node.is_none() || !has_all_keys(n, &cs) {
                continue;
            }
            for (i, c) in cs.iter().enumerate() {
                if !c.includes(pod, n) {
                    continue;
                }
                let v = &n.labels()[&c.key];
                *counts[i].entry(v.clone()).or_insert(0) += c.count(n, &pod.namespace);
            }
        }
        let min = cs
            .iter()
            .zip(&counts)
            .map(|(c, m)| {
                if (m.len() as i64) < c.min_domains {
                    // Fewer eligible domains than minDomains: the global minimum is 0.
                    0
                } else {
                    m.values().copied().min().unwrap_or(i64::from(i32::MAX))
                }
            })
            .collect();
        let self_match = cs
            .iter()
            .map(|c| {
                i64::from(
                    c.selector
                        .as_ref()
                        .is_some_and(|s| label_selector_matches(s, pod.labels())),
                )
            })
            .collect();
        Some(SpreadFilterState {
            constraints: cs,
            counts,
            min,
            self_match,
        })
    }

    pub fn filter(&self, _pod: &PodInfo, node: &NodeInfo) -> Result<(), Reason> {
        if !has_all_keys(node, &self.constraints) {
            return Err(Reason::TopologySpreadMissingLabel);
        }
        for (i, c) in self.constraints.iter().enumerate() {
            let v = &node.labels()[&c.key];
            let matched = self.counts[i].get(v).copied().unwrap_or(0);
            let skew = matched + self.self_match[i] - self.min[i];
            if skew > c.max_skew {
                return Err(Reason::TopologySpread);
            }
        }
        Ok(())
    }
}

/// `ScheduleAnyway` scores of `feasible` (already normalised to 0..100), or None when the
/// pod has no such constraint.
pub fn spread_scores(pod: &PodInfo, feasible: &[&NodeInfo], all: &[NodeInfo]) -> Option<Vec<i64>> {
    let cs = constraints(pod, "ScheduleAnyway");
    if cs.is_empty() {
        return None;
    }
    let ignored: Vec<bool> = feasible.iter().map(|n| !has_all_keys(n, &cs)).collect();
    // Per constraint: the domains among the scored nodes and the count of matching pods
    // in each over all eligible nodes.
    let mut pairs: Vec<HashMap<String, i64>> = vec![HashMap::new(); cs.len()];
    for (n, ign) in feasible.iter().zip(&ignored) {
        if *ign {
            continue;
        }
        for (i, c) in cs.iter().enumerate() {
            pairs[i].entry(n.labels()[&c.key].clone()).or_insert(0);
        }
    }
    let weights: Vec<f64> = pairs.iter().map(|m| ((m.len() + 2) as f64).ln()).collect();
    for n in all {
        if n.node.is_none() || !has_all_keys(n, &cs) {
            continue;
        }
        for (i, c) in cs.iter().enumerate() {
            if c.key == HOSTNAME || !c.includes(pod, n) {
                continue;
            }
            if let Some(e) = pairs[i].get_mut(&n.labels()[&c.key]) {
                *e += c.count(n, &pod.namespace);
            }
        }
    }
    let raw: Vec<i64> = feasible
        .iter()
        .zip(&ignored)
        .map(|(n, ign)| {
            if *ign {
                return 0;
            }
            let mut s = 0f64;
            for (i, c) in cs.iter().enumerate() {
                let cnt = if c.key == HOSTNAME {
                    c.count(n, &pod.namespace)
                } else {
                    pairs[i][&n.labels()[&c.key]]
                };
                s += cnt as f64 * weights[i] + (c.max_skew - 1) as f64;
            }
            s.round() as i64
        })
        .collect();
    // NormalizeScore: fewer matching pods is better; ignored nodes get 0.
    let (mut min, mut max) = (i64::MAX, 0i64);
    for (s, ign) in raw.iter().zip(&ignored) {
        if !*ign {
            min = min.min(*s);
            max = max.max(*s);
        }
    }
    Some(
        raw.iter()
            .zip(&ignored)
            .map(|(s, ign)| {
                if *ign {
                    0
                } else if max == 0 {
                    100
                } else {
                    100 * (max + min - s) / max
                }
            })
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::info::testutil::*;
    use k8s_openapi::api::core::v1::Pod;
    use std::collections::BTreeMap;

    fn labelled(name: &str, app: &str) -> Pod {
        let mut p = pod(name, None, None);
        p.metadata.labels = Some(BTreeMap::from([("app".to_string(), app.to_string())]));
        p
    }

    fn spread(
        mut p: Pod,
        key: &str,
        max_skew: i32,
        when: &str,
        min_domains: Option<i32>,
    ) -> PodInfo {
        p.spec
            .as_mut()
            .unwrap()
            .topology_spread_constraints
            .get_or_insert_with(Vec::new)
            .push(TopologySpreadConstraint {
                max_skew,
                topology_key: key.into(),
                when_unsatisfiable: when.into(),
                label_selector: Some(LabelSelector {
                    match_labels: Some(BTreeMap::from([("app".into(), "web".into())])),
                    ..Default::default()
                }),
                min_domains,
                ..Default::default()
            });
        PodInfo::new(p)
    }

    /// Zones a (2 web pods on n1), b (1 on n2), c (0 on n3); n4 has no zone label.
    fn cluster() -> Vec<NodeInfo> {
        let z = |n: &str, zone: &str| with_labels(node(n, "8", "8Gi", "110"), &[("zone", zone)]);
        vec![
            node_info(
                z("n1", "a"),
                vec![
                    labelled("w1", "web"),
                    labelled("w2", "web"),
                    labelled("o", "other"),
                ],
            ),
            node_info(z("n2", "b"), vec![labelled("w3", "web")]),
            node_info(z("n3", "c"), vec![]),
            node_info(node("n4", "8", "8Gi", "110"), vec![labelled("w4", "web")]),
        ]
    }

    #[test]
    fn do_not_schedule_filter_max_skew() {
        let nodes = cluster();
        let p = spread(labelled("new", "web"), "zone", 1, "DoNotSchedule", None);
        let st = SpreadFilterState::new(&p, nodes.iter()).unwrap();
        // min is 0 (zone c); a: 2+1-0 = 3 > 1; b: 1+1-0 = 2 > 1; c: 0+1-0 = 1 ok.
        let got: Vec<_> = nodes.iter().map(|n| st.filter(&p, n)).collect();
        assert_eq!(
            got,
            vec![
                Err(Reason::TopologySpread),
                Err(Reason::TopologySpread),
                Ok(()),
                Err(Reason::TopologySpreadMissingLabel)
            ]
        );
        let p2 = spread(labelled("new", "web"), "zone", 2, "DoNotSchedule", None);
        let st = SpreadFilterState::new(&p2, nodes.iter()).unwrap();
        assert_eq!(
            st.filter(&p2, &nodes[1]),
            Ok(()),
            "skew 2 allowed in zone b"
        );
        assert_eq!(st.filter(&p2, &nodes[0]), Err(Reason::TopologySpread));
    }

    #[test]
    fn a_pod_outside_the_selector_does_not_add_itself() {
        let nodes = cluster();
        // The incoming pod is not "web": matchNum + 0 - min; zone b has 1 <= 1.
        let p = spread(labelled("new", "batch"), "zone", 1, "DoNotSchedule", None);
        let st = SpreadFilterState::new(&p, nodes.iter()).unwrap();
        assert_eq!(st.filter(&p, &nodes[1]), Ok(()));
        assert_eq!(st.filter(&p, &nodes[0]), Err(Reason::TopologySpread));
    }

    #[test]
    fn min_domains_forces_a_zero_minimum() {
        // Only zones a and b exist: their min is 1 (b), so b would be skew 1 ok; with
        // minDomains 3 the global minimum is 0 and b (1+1) exceeds maxSkew 1.
        let nodes: Vec<NodeInfo> = cluster().into_iter().take(2).collect();
        let p = spread(labelled("new", "web"), "zone", 1, "DoNotSchedule", None);
        let st = SpreadFilterState::new(&p, nodes.iter()).unwrap();
        assert_eq!(st.filter(&p, &nodes[1]), Ok(()));
        let p = spread(labelled("new", "web"), "zone", 1, "DoNotSchedule", Some(3));
        let st = SpreadFilterState::new(&p, nodes.iter()).unwrap();
        assert_eq!(st.filter(&p, &nodes[1]), Err(Reason::TopologySpread));
    }

    #[test]
    fn no_constraint_skips_the_plugin() {
        let nodes = cluster();
        let p = PodInfo::new(labelled("new", "web"));
        assert!(SpreadFilterState::new(&p, nodes.iter()).is_none());
        assert!(spread_scores(&p, &[&nodes[0]], &nodes).is_none());
    }

    #[test]
    fn schedule_anyway_prefers_emptier_domains() {
        let nodes = cluster();
        let p = spread(labelled("new", "web"), "zone", 1, "ScheduleAnyway", None);
        let feasible: Vec<&NodeInfo> = nodes.iter().collect();
        let s = spread_scores(&p, &feasible, &nodes).unwrap();
        // weight ln(3 + 2); raw a = round(2*1.609) = 3, b = 2, c = 0; max 3, min 0:
        // a = 100*(3+0-3)/3 = 0, b = 100*(3-2)/3 = 33, c = 100; n4 (no zone) ignored = 0.
        assert_eq!(s, vec![0, 33, 100, 0]);
    }
}
