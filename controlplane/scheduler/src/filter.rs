//! Filter plugins, in upstream's default order (NodeUnschedulable, NodeName, TaintToleration,
//! NodeAffinity, NodePorts, NodeResourcesFit, PodTopologySpread); a node stops at the first
//! plugin that rejects it, as upstream's `RunFilterPlugins`. Each rejection carries
//! upstream's reason strings, which [`crate::schedule::FitError`] aggregates.

use std::fmt;

use crate::info::{NodeInfo, PodInfo};
use crate::matching::{pod_matches_node_affinity, pod_tolerations, tolerated_by};
use crate::topology::SpreadFilterState;
use k8s_openapi::api::core::v1::Taint;

/// Why a node cannot take a pod; `Display` is upstream's reason string.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Reason {
    NodeName,
    Unschedulable,
    UntoleratedTaint { key: String, value: String },
    NodeAffinity,
    NodePorts,
    TooManyPods,
    Insufficient(String),
    TopologySpread,
    TopologySpreadMissingLabel,
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reason::NodeName => f.write_str("node(s) didn't match the requested node name"),
            Reason::Unschedulable => f.write_str("node(s) were unschedulable"),
            Reason::UntoleratedTaint { key, value } => {
                write!(f, "node(s) had untolerated taint {{{key}: {value}}}")
            }
            Reason::NodeAffinity => {
                f.write_str("node(s) didn't match Pod's node affinity/selector")
            }
            Reason::NodePorts => {
                f.write_str("node(s) didn't have free ports for the requested pod ports")
            }
            Reason::TooManyPods => f.write_str("Too many pods"),
            Reason::Insufficient(r) => write!(f, "Insufficient {r}"),
            Reason::TopologySpread => {
                f.write_str("node(s) didn't match pod topology spread constraints")
            }
            Reason::TopologySpreadMissingLabel => f.write_str(
                "node(s) didn't match pod topology spread constraints (missing required label)",
            ),
        }
    }
}

/// NodeUnschedulable: a cordoned node takes only pods tolerating
/// `node.kubernetes.io/unschedulable:NoSchedule`.
pub fn node_unschedulable(pod: &PodInfo, node: &NodeInfo) -> Result<(), Reason> {
    if !node.unschedulable() {
        return Ok(());
    }
    let taint = Taint {
        key: "node.kubernetes.io/unschedulable".into(),
        effect: "NoSchedule".into(),
        value: None,
        time_added: None,
    };
    if tolerated_by(pod_tolerations(&pod.pod), &taint) {
        Ok(())
    } else {
        Err(Reason::Unschedulable)
    }
}

/// NodeName: a pod naming a node fits only that node.
pub fn node_name(pod: &PodInfo, node: &NodeInfo) -> Result<(), Reason> {
    match pod.node_name() {
        Some(n) if n != node.name => Err(Reason::NodeName),
        _ => Ok(()),
    }
}

/// TaintToleration: the first NoSchedule/NoExecute taint no toleration matches.
pub fn taint_toleration(pod: &PodInfo, node: &NodeInfo) -> Result<(), Reason> {
    let tols = pod_tolerations(&pod.pod);
    for t in node.taints() {
        if (t.effect == "NoSchedule" || t.effect == "NoExecute") && !tolerated_by(tols, t) {
            return Err(Reason::UntoleratedTaint {
                key: t.key.clone(),
                value: t.value.clone().unwrap_or_default(),
            });
        }
    }
    Ok(())
}

/// NodeAffinity: nodeSelector and requiredDuringSchedulingIgnoredDuringExecution.
pub fn node_affinity(pod: &PodInfo, node: &NodeInfo) -> Result<(), Reason> {
    if pod_matches_node_affinity(&pod.pod, &node.name, node.labels()) {
        Ok(())
    } else {
        Err(Reason::NodeAffinity)
    }
}

/// NodePorts: a wanted (ip, protocol, hostPort) already taken on the node.
pub fn node_ports(pod: &PodInfo, node: &NodeInfo) -> Result<(), Reason> {
    let clash = pod
        .host_ports
        .iter()
        .any(|want| node.used_ports.iter().any(|used| want.conflicts(used)));
    if clash {
        Err(Reason::NodePorts)
    } else {
        Ok(())
    }
}

/// NodeResourcesFit: the pod count, then each requested resource against what the pods
/// already on the node leave of allocatable. Every shortage is its own reason, as
/// upstream's `fitsRequest`.
pub fn node_resources_fit(pod: &PodInfo, node: &NodeInfo) -> Vec<Reason> {
    let mut out = Vec::new();
    if node.pods.len() as i64 + 1 > node.allowed_pods {
        out.push(Reason::TooManyPods);
    }
    let r = &pod.requests;
    if r.is_zero() {
        return out;
    }
    let (a, u) = (&node.allocatable, &node.requested);
    if r.milli_cpu > 0 && r.milli_cpu > a.milli_cpu - u.milli_cpu {
        out.push(Reason::Insufficient("cpu".into()));
    }
    if r.memory > 0 && r.memory > a.memory - u.memory {
        out.push(Reason::Insufficient("memory".into()));
    }
    if r.ephemeral_storage > 0 && r.ephemeral_storage > a.ephemeral_storage - u.ephemeral_storage {
        out.push(Reason::Insufficient("ephemeral-storage".into()));
    }
    for (name, want) in &r.scalar {
        if *want == 0 {
            continue;
        }
        let have =
            a.scalar.get(name).copied().unwrap_or(0) - u.scalar.get(name).copied().unwrap_or(0);
        if *want > have {
            out.push(Reason::Insufficient(name.clone()));
        }
    }
    out
}

/// All filters for one node, stopping at the first plugin that rejects it.
pub fn run_filters(
    pod: &PodInfo,
    node: &NodeInfo,
    spread: Option<&SpreadFilterState>,
) -> Result<(), Vec<Reason>> {
    let one = |r: Result<(), Reason>| r.map_err(|e| vec![e]);
    one(node_unschedulable(pod, node))?;
    one(node_name(pod, node))?;
    one(taint_toleration(pod, node))?;
    one(node_affinity(pod, node))?;
    one(node_ports(pod, node))?;
    let fit = node_resources_fit(pod, node);
    if !fit.is_empty() {
        return Err(fit);
    }
    if let Some(s) = spread {
        one(s.filter(pod, node))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::info::testutil::*;
    use k8s_openapi::api::core::v1::{
        Affinity, NodeAffinity, NodeSelector, NodeSelectorRequirement, NodeSelectorTerm, Pod,
        Toleration,
    };
    use std::collections::BTreeMap;

    fn pi(p: Pod) -> PodInfo {
        PodInfo::new(p)
    }

    fn tolerate(mut p: Pod, key: &str, op: &str, effect: &str) -> Pod {
        p.spec
            .as_mut()
            .unwrap()
            .tolerations
            .get_or_insert_with(Vec::new)
            .push(Toleration {
                key: (!key.is_empty()).then(|| key.to_string()),
                operator: Some(op.into()),
                effect: (!effect.is_empty()).then(|| effect.to_string()),
                ..Default::default()
            });
        p
    }

    #[test]
    fn reason_strings_are_upstreams() {
        let cases = [
            (
                Reason::NodeName,
                "node(s) didn't match the requested node name",
            ),
            (Reason::Unschedulable, "node(s) were unschedulable"),
            (
                Reason::UntoleratedTaint {
                    key: "node.kubernetes.io/unreachable".into(),
                    value: String::new(),
                },
                "node(s) had untolerated taint {node.kubernetes.io/unreachable: }",
            ),
            (
                Reason::NodeAffinity,
                "node(s) didn't match Pod's node affinity/selector",
            ),
            (
                Reason::NodePorts,
                "node(s) didn't have free ports for the requested pod ports",
            ),
            (Reason::TooManyPods, "Too many pods"),
            (Reason::Insufficient("cpu".into()), "Insufficient cpu"),
            (
                Reason::TopologySpread,
                "node(s) didn't match pod topology spread constraints",
            ),
        ];
        for (r, s) in cases {
            assert_eq!(r.to_string(), s);
        }
    }

    #[test]
    fn unschedulable_with_toleration_exception() {
        let mut n = node("n", "4", "8Gi", "110");
        n.spec.as_mut().unwrap().unschedulable = Some(true);
        let ni = node_info(n, vec![]);
        let p = pod("p", None, None);
        assert_eq!(
            node_unschedulable(&pi(p.clone()), &ni),
            Err(Reason::Unschedulable)
        );
        let t = tolerate(
            p.clone(),
            "node.kubernetes.io/unschedulable",
            "Exists",
            "NoSchedule",
        );
        assert_eq!(node_unschedulable(&pi(t), &ni), Ok(()));
        let all = tolerate(p, "", "Exists", "");
        assert_eq!(node_unschedulable(&pi(all), &ni), Ok(()));
        let ok = node_info(node("m", "4", "8Gi", "110"), vec![]);
        assert_eq!(node_unschedulable(&pi(pod("p", None, None)), &ok), Ok(()));
    }

    #[test]
    fn node_name_filter() {
        let ni = node_info(node("n1", "4", "8Gi", "110"), vec![]);
        let mut p = pod("p", None, None);
        assert_eq!(node_name(&pi(p.clone()), &ni), Ok(()));
        p.spec.as_mut().unwrap().node_name = Some("n2".into());
        assert_eq!(node_name(&pi(p.clone()), &ni), Err(Reason::NodeName));
        p.spec.as_mut().unwrap().node_name = Some("n1".into());
        assert_eq!(node_name(&pi(p), &ni), Ok(()));
    }

    #[test]
    fn taint_toleration_table() {
        let base = node("n", "4", "8Gi", "110");
        let cases: Vec<(Node, Pod, Result<(), Reason>)> = vec![
            (base.clone(), pod("p", None, None), Ok(())),
            (
                with_taint(base.clone(), "k", "v", "NoSchedule"),
                pod("p", None, None),
                Err(Reason::UntoleratedTaint {
                    key: "k".into(),
                    value: "v".into(),
                }),
            ),
            (
                with_taint(base.clone(), "k", "", "NoExecute"),
                pod("p", None, None),
                Err(Reason::UntoleratedTaint {
                    key: "k".into(),
                    value: String::new(),
                }),
            ),
            (
                with_taint(base.clone(), "k", "v", "PreferNoSchedule"),
                pod("p", None, None),
                Ok(()),
            ),
            (
                with_taint(base.clone(), "k", "v", "NoSchedule"),
                tolerate(pod("p", None, None), "k", "Exists", "NoSchedule"),
                Ok(()),
            ),
            (
                with_taint(base.clone(), "k", "v", "NoSchedule"),
                tolerate(pod("p", None, None), "k", "Exists", "NoExecute"),
                Err(Reason::UntoleratedTaint {
                    key: "k".into(),
                    value: "v".into(),
                }),
            ),
            (
                with_taint(
                    with_taint(base.clone(), "a", "", "NoSchedule"),
                    "b",
                    "",
                    "NoExecute",
                ),
                tolerate(pod("p", None, None), "", "Exists", ""),
                Ok(()),
            ),
            (
                with_taint(
                    with_taint(base.clone(), "a", "", "NoSchedule"),
                    "b",
                    "",
                    "NoExecute",
                ),
                tolerate(pod("p", None, None), "a", "Exists", ""),
                Err(Reason::UntoleratedTaint {
                    key: "b".into(),
                    value: String::new(),
                }),
            ),
        ];
        for (i, (n, p, want)) in cases.into_iter().enumerate() {
            assert_eq!(
                taint_toleration(&pi(p), &node_info(n, vec![])),
                want,
                "case {i}"
            );
        }
    }

    fn affinity(terms: Vec<NodeSelectorTerm>) -> Affinity {
        Affinity {
            node_affinity: Some(NodeAffinity {
                required_during_scheduling_ignored_during_execution: Some(NodeSelector {
                    node_selector_terms: terms,
                }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn expr(key: &str, op: &str, values: &[&str]) -> NodeSelectorRequirement {
        NodeSelectorRequirement {
            key: key.into(),
            operator: op.into(),
            values: Some(values.iter().map(|s| s.to_string()).collect()),
        }
    }

    #[test]
    fn node_affinity_and_selector_table() {
        let n = with_labels(
            node("n1", "4", "8Gi", "110"),
            &[("disk", "ssd"), ("gen", "5")],
        );
        let ni = node_info(n, vec![]);
        let with = |sel: Option<&[(&str, &str)]>, aff: Option<Affinity>| {
            let mut p = pod("p", None, None);
            let s = p.spec.as_mut().unwrap();
            s.node_selector = sel.map(|kv| {
                kv.iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect::<BTreeMap<_, _>>()
            });
            s.affinity = aff;
            pi(p)
        };
        let term = |e: Vec<NodeSelectorRequirement>| NodeSelectorTerm {
            match_expressions: Some(e),
            ..Default::default()
        };
        let ok = Ok(());
        let no = Err(Reason::NodeAffinity);
        let cases = vec![
            (with(None, None), ok.clone()),
            (with(Some(&[("disk", "ssd")]), None), ok.clone()),
            (with(Some(&[("disk", "hdd")]), None), no.clone()),
            (with(Some(&[("missing", "x")]), None), no.clone()),
            (
                with(
                    None,
                    Some(affinity(vec![term(vec![expr(
                        "disk",
                        "In",
                        &["ssd", "nvme"],
                    )])])),
                ),
                ok.clone(),
            ),
            (
                with(
                    None,
                    Some(affinity(vec![term(vec![expr("disk", "NotIn", &["ssd"])])])),
                ),
                no.clone(),
            ),
            (
                with(
                    None,
                    Some(affinity(vec![term(vec![expr("gen", "Gt", &["4"])])])),
                ),
                ok.clone(),
            ),
            (
                with(
                    None,
                    Some(affinity(vec![term(vec![expr("gen", "Lt", &["4"])])])),
                ),
                no.clone(),
            ),
            (
                with(
                    None,
                    Some(affinity(vec![term(vec![expr("gpu", "DoesNotExist", &[])])])),
                ),
                ok.clone(),
            ),
            (
                with(
                    None,
                    Some(affinity(vec![term(vec![expr("gpu", "Exists", &[])])])),
                ),
                no.clone(),
            ),
            // ORed terms, ANDed expressions.
            (
                with(
                    None,
                    Some(affinity(vec![
                        term(vec![expr("gpu", "Exists", &[])]),
                        term(vec![
                            expr("disk", "In", &["ssd"]),
                            expr("gen", "In", &["5"]),
                        ]),
                    ])),
                ),
                ok.clone(),
            ),
            (
                with(
                    None,
                    Some(affinity(vec![term(vec![
                        expr("disk", "In", &["ssd"]),
                        expr("gen", "In", &["4"]),
                    ])])),
                ),
                no.clone(),
            ),
            (
                with(
                    None,
                    Some(affinity(vec![NodeSelectorTerm {
                        match_fields: Some(vec![expr("metadata.name", "In", &["n1"])]),
                        ..Default::default()
                    }])),
                ),
                ok.clone(),
            ),
            (
                with(
                    None,
                    Some(affinity(vec![NodeSelectorTerm {
                        match_fields: Some(vec![expr("metadata.name", "In", &["n2"])]),
                        ..Default::default()
                    }])),
                ),
                no.clone(),
            ),
            // Both the selector and the affinity must hold.
            (
                with(
                    Some(&[("disk", "hdd")]),
                    Some(affinity(vec![term(vec![expr("disk", "Exists", &[])])])),
                ),
                no.clone(),
            ),
        ];
        for (i, (p, want)) in cases.into_iter().enumerate() {
            assert_eq!(node_affinity(&p, &ni), want, "case {i}");
        }
    }

    #[test]
    fn node_ports_table() {
        let used = |ip: &str, proto: &str, port: i32| {
            node_info(
                node("n", "4", "8Gi", "110"),
                vec![with_host_port(pod("u", None, None), ip, proto, port)],
            )
        };
        let want = |ip: &str, proto: &str, port: i32| {
            pi(with_host_port(pod("p", None, None), ip, proto, port))
        };
        let cases = [
            (used("", "", 80), want("", "", 80), false),
            (used("", "", 80), want("", "UDP", 80), true),
            (used("", "", 80), want("", "TCP", 81), true),
            (
                used("10.0.0.1", "TCP", 80),
                want("10.0.0.2", "TCP", 80),
                true,
            ),
            (
                used("10.0.0.1", "TCP", 80),
                want("10.0.0.1", "TCP", 80),
                false,
            ),
            (
                used("10.0.0.1", "TCP", 80),
                want("0.0.0.0", "TCP", 80),
                false,
            ),
            (
                used("0.0.0.0", "TCP", 80),
                want("10.0.0.2", "TCP", 80),
                false,
            ),
            (used("", "SCTP", 80), want("", "SCTP", 80), false),
        ];
        for (i, (n, p, fits)) in cases.into_iter().enumerate() {
            assert_eq!(node_ports(&p, &n).is_ok(), fits, "case {i}");
        }
        let no_ports = node_info(node("n", "4", "8Gi", "110"), vec![pod("u", None, None)]);
        assert_eq!(node_ports(&pi(pod("p", None, None)), &no_ports), Ok(()));
    }

    #[test]
    fn resources_fit_table() {
        let full = node_info(
            node("n", "2", "4Gi", "2"),
            vec![pod("a", Some("1500m"), Some("3Gi"))],
        );
        let cases: Vec<(Pod, Vec<Reason>)> = vec![
            (pod("p", Some("500m"), Some("1Gi")), vec![]),
            (
                pod("p", Some("501m"), None),
                vec![Reason::Insufficient("cpu".into())],
            ),
            (
                pod("p", None, Some("2Gi")),
                vec![Reason::Insufficient("memory".into())],
            ),
            (
                pod("p", Some("1"), Some("2Gi")),
                vec![
                    Reason::Insufficient("cpu".into()),
                    Reason::Insufficient("memory".into()),
                ],
            ),
            (pod("p", None, None), vec![]),
        ];
        for (i, (p, want)) in cases.into_iter().enumerate() {
            assert_eq!(node_resources_fit(&pi(p), &full), want, "case {i}");
        }
        // The pod count: 2 allowed, 2 there.
        let crowded = node_info(
            node("n", "8", "8Gi", "2"),
            vec![pod("a", None, None), pod("b", None, None)],
        );
        assert_eq!(
            node_resources_fit(&pi(pod("p", None, None)), &crowded),
            vec![Reason::TooManyPods]
        );
        assert_eq!(
            node_resources_fit(&pi(pod("p", Some("9"), None)), &crowded),
            vec![Reason::TooManyPods, Reason::Insufficient("cpu".into())]
        );
        // Extended resources.
        let mut gpu_pod = pod("p", None, None);
        gpu_pod.spec.as_mut().unwrap().containers[0]
            .resources
            .as_mut()
            .unwrap()
            .requests
            .as_mut()
            .unwrap()
            .insert("example.com/gpu".into(), q("1"));
        assert_eq!(
            node_resources_fit(
                &pi(gpu_pod),
                &node_info(node("n", "8", "8Gi", "10"), vec![])
            ),
            vec![Reason::Insufficient("example.com/gpu".into())]
        );
    }

    #[test]
    fn first_rejecting_plugin_wins() {
        let n = with_taint(node("n", "1", "1Gi", "110"), "k", "", "NoSchedule");
        let ni = node_info(n, vec![]);
        let r = run_filters(&pi(pod("p", Some("2"), None)), &ni, None);
        assert_eq!(
            r,
            Err(vec![Reason::UntoleratedTaint {
                key: "k".into(),
                value: String::new()
            }]),
            "the taint is reported, not the CPU shortage"
        );
    }

    use k8s_openapi::api::core::v1::Node;
}
