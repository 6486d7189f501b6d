//! The selector and toleration semantics the plugins share, as upstream's
//! `component-helpers/scheduling/corev1` and `apimachinery/pkg/labels` define them.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    NodeSelector, NodeSelectorRequirement, NodeSelectorTerm, Pod, Taint, Toleration,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

/// One `matchExpressions`/`matchFields` requirement against a label (or field) value.
/// Unknown operators and unparsable Gt/Lt operands match nothing.
pub fn requirement_matches(r: &NodeSelectorRequirement, value: Option<&str>) -> bool {
    let values = r.values.as_deref().unwrap_or(&[]);
    match r.operator.as_str() {
        "In" => value.is_some_and(|v| values.iter().any(|x| x == v)),
        "NotIn" => value.is_none_or(|v| !values.iter().any(|x| x == v)),
        "Exists" => value.is_some(),
        "DoesNotExist" => value.is_none(),
        op @ ("Gt" | "Lt") => {
            let (Some(v), [bound]) = (value, values) else {
                return false;
            };
            let (Ok(v), Ok(bound)) = (v.parse::<i64>(), bound.parse::<i64>()) else {
                return false;
            };
            if op == "Gt" {
                v > bound
            } else {
                v < bound
            }
        }
        _ => false,
    }
}

/// A node selector term: every expression and every field requirement must hold; a term
/// with neither matches nothing (upstream's `nodeSelectorTermMatches`). The only field is
/// `metadata.name`; a term naming another field matches nothing.
pub fn term_matches(
    t: &NodeSelectorTerm,
    node_name: &str,
    labels: &BTreeMap<String, String>,
) -> bool {
    let exprs = t.match_expressions.as_deref().unwrap_or(&[]);
    let fields = t.match_fields.as_deref().unwrap_or(&[]);
    if exprs.is_empty() && fields.is_empty() {
        return false;
    }
    exprs
        .iter()
        .all(|r| requirement_matches(r, labels.get(&r.key).map(String::as_str)))
        && fields
            .iter()
            .all(|r| r.key == "metadata.name" && requirement_matches(r, Some(node_name)))
}

/// The terms are ORed.
pub fn node_selector_matches(
    s: &NodeSelector,
    node_name: &str,
    labels: &BTreeMap<String, String>,
) -> bool {
    s.node_selector_terms
        .iter()
        .any(|t| term_matches(t, node_name, labels))
}

/// The pod's `nodeSelector` and required node affinity against a node (upstream's
/// `RequiredNodeAffinity.Match`, also used by PodTopologySpread's nodeAffinityPolicy).
pub fn pod_matches_node_affinity(
    pod: &Pod,
    node_name: &str,
    labels: &BTreeMap<String, String>,
) -> bool {
    let Some(spec) = pod.spec.as_ref() else {
        return true;
    };
    if let Some(sel) = spec.node_selector.as_ref() {
        if !sel.iter().all(|(k, v)| labels.get(k) == Some(v)) {
            return false;
        }
    }
    match spec
        .affinity
        .as_ref()
        .and_then(|a| a.node_affinity.as_ref())
        .and_then(|na| {
            na.required_during_scheduling_ignored_during_execution
                .as_ref()
        }) {
        Some(req) => node_selector_matches(req, node_name, labels),
        None => true,
    }
}

/// Upstream's `Toleration.ToleratesTaint`: effect (empty tolerates every effect), key
/// (empty with Exists tolerates every key), then the operator.
pub fn tolerates(t: &Toleration, taint: &Taint) -> bool {
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

pub fn tolerated_by(tolerations: &[Toleration], taint: &Taint) -> bool {
    tolerations.iter().any(|t| tolerates(t, taint))
}

pub fn pod_tolerations(pod: &Pod) -> &[Toleration] {
    pod.spec
        .as_ref()
        .and_then(|s| s.tolerations.as_deref())
        .unwrap_or(&[])
}

/// A metav1 LabelSelector: matchLabels and matchExpressions ANDed; an empty selector
/// matches everything. (A nil selector matches nothing; callers handle that.)
pub fn label_selector_matches(s: &LabelSelector, labels: &BTreeMap<String, String>) -> bool {
    if let Some(ml) = s.match_labels.as_ref() {
        if !ml.iter().all(|(k, v)| labels.get(k) == Some(v)) {
            return false;
        }
    }
    s.match_expressions.iter().flatten().all(|e| {
        let v = labels.get(&e.key);
        let values = e.values.as_deref().unwrap_or(&[]);
        match e.operator.as_str() {
            "In" => v.is_some_and(|v| values.contains(v)),
            "NotIn" => v.is_none_or(|v| !values.contains(v)),
            "Exists" => v.is_some(),
            "DoesNotExist" => v.is_none(),
            _ => false,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(key: &str, op: &str, values: &[&str]) -> NodeSelectorRequirement {
        NodeSelectorRequirement {
            key: key.into(),
            operator: op.into(),
            values: (!values.is_empty()).then(|| values.iter().map(|s| s.to_string()).collect()),
        }
    }

    #[test]
    fn requirement_operators() {
        let cases: &[(&str, &[&str], Option<&str>, bool)] = &[
            ("In", &["a", "b"], Some("b"), true),
            ("In", &["a"], Some("c"), false),
            ("In", &["a"], None, false),
            ("NotIn", &["a"], Some("c"), true),
            ("NotIn", &["a"], Some("a"), false),
            ("NotIn", &["a"], None, true),
            ("Exists", &[], Some(""), true),
            ("Exists", &[], None, false),
            ("DoesNotExist", &[], None, true),
            ("DoesNotExist", &[], Some("x"), false),
            ("Gt", &["5"], Some("6"), true),
            ("Gt", &["5"], Some("5"), false),
            ("Gt", &["5"], Some("x"), false),
            ("Gt", &["5", "6"], Some("9"), false),
            ("Lt", &["5"], Some("-1"), true),
            ("Lt", &["5"], None, false),
            ("Bogus", &["5"], Some("5"), false),
        ];
        for (op, values, v, want) in cases {
            assert_eq!(
                requirement_matches(&req("k", op, values), *v),
                *want,
                "{op} {values:?} against {v:?}"
            );
        }
    }

    #[test]
    fn terms_and_fields() {
        let labels = BTreeMap::from([("zone".to_string(), "a".to_string())]);
        let by_name = NodeSelectorTerm {
            match_fields: Some(vec![req("metadata.name", "In", &["n1"])]),
            ..Default::default()
        };
        assert!(term_matches(&by_name, "n1", &labels));
        assert!(!term_matches(&by_name, "n2", &labels));
        let bad_field = NodeSelectorTerm {
            match_fields: Some(vec![req("metadata.uid", "In", &["n1"])]),
            ..Default::default()
        };
        assert!(!term_matches(&bad_field, "n1", &labels));
        assert!(
            !term_matches(&NodeSelectorTerm::default(), "n1", &labels),
            "empty term"
        );
        let sel = NodeSelector {
            node_selector_terms: vec![
                NodeSelectorTerm {
                    match_expressions: Some(vec![req("zone", "In", &["b"])]),
                    ..Default::default()
                },
                by_name,
            ],
        };
        assert!(node_selector_matches(&sel, "n1", &labels), "terms are ORed");
        assert!(!node_selector_matches(&sel, "n3", &labels));
    }

    #[test]
    fn toleration_semantics() {
        let taint = Taint {
            key: "k".into(),
            value: Some("v".into()),
            effect: "NoSchedule".into(),
            time_added: None,
        };
        let tol = |k: &str, op: &str, v: &str, e: &str| Toleration {
            key: (!k.is_empty()).then(|| k.to_string()),
            operator: (!op.is_empty()).then(|| op.to_string()),
            value: (!v.is_empty()).then(|| v.to_string()),
            effect: (!e.is_empty()).then(|| e.to_string()),
            toleration_seconds: None,
        };
        assert!(tolerates(&tol("k", "Equal", "v", "NoSchedule"), &taint));
        assert!(
            tolerates(&tol("k", "", "v", ""), &taint),
            "default operator Equal, any effect"
        );
        assert!(!tolerates(&tol("k", "Equal", "w", ""), &taint));
        assert!(tolerates(&tol("k", "Exists", "", ""), &taint));
        assert!(
            tolerates(&tol("", "Exists", "", ""), &taint),
            "empty key + Exists: all"
        );
        assert!(
            !tolerates(&tol("k", "Exists", "", "NoExecute"), &taint),
            "effect differs"
        );
        assert!(!tolerates(&tol("j", "Exists", "", ""), &taint));
    }
}
