//! Pod predicates the workload controllers share (upstream's `pkg/api/v1/pod` and
//! `controller_utils.go`): active, ready, available after `minReadySeconds`, and the
//! `ActivePods` order that decides which pods a scale-down deletes first.

use std::cmp::Ordering;

use k8s_openapi::{
    api::core::v1::{Pod, PodCondition, PodTemplateSpec},
    apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference},
    jiff::Timestamp,
};

/// Upstream's `GetPodFromTemplate`: labels, annotations and finalizers of the template,
/// `generateName: <owner>-` (the API server appends 5 characters of
/// `bcdfghjklmnpqrstvwxz2456789`), the owner's controller reference, the template's spec.
pub fn from_template(
    template: &PodTemplateSpec,
    namespace: &str,
    owner_name: &str,
    owner: OwnerReference,
) -> Pod {
    let tm = template.metadata.clone().unwrap_or_default();
    // Upstream's getPodsPrefix: a prefix that would not validate is cut (names are at
    // most 63 characters for the generated part to fit).
    let mut prefix = format!("{owner_name}-");
    if prefix.len() > 58 {
        prefix.truncate(58);
    }
    Pod {
        metadata: ObjectMeta {
            generate_name: Some(prefix),
            namespace: Some(namespace.to_string()),
            labels: tm.labels,
            annotations: tm.annotations,
            finalizers: tm.finalizers,
            owner_references: Some(vec![owner]),
            ..Default::default()
        },
        spec: template.spec.clone(),
        status: None,
    }
}

/// `metadata.deletionTimestamp` is set: the pod is going away and no longer counts.
pub fn is_terminating(p: &Pod) -> bool {
    p.metadata.deletion_timestamp.is_some()
}

pub fn phase(p: &Pod) -> &str {
    p.status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .unwrap_or("")
}

/// Upstream's `IsPodActive`: not finished and not being deleted.
pub fn is_active(p: &Pod) -> bool {
    !matches!(phase(p), "Succeeded" | "Failed") && !is_terminating(p)
}

fn ready_condition(p: &Pod) -> Option<&PodCondition> {
    p.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == "Ready")
}

/// The `Ready` condition is `True`.
pub fn is_ready(p: &Pod) -> bool {
    ready_condition(p).is_some_and(|c| c.status == "True")
}

/// Upstream's `IsPodAvailable`: ready, and ready for at least `min_ready_seconds`
/// (measured from the Ready condition's `lastTransitionTime`).
pub fn is_available(p: &Pod, min_ready_seconds: i32, now: Timestamp) -> bool {
    let Some(c) = ready_condition(p).filter(|c| c.status == "True") else {
        return false;
    };
    if min_ready_seconds <= 0 {
        return true;
    }
    match &c.last_transition_time {
        Some(t) => t.0.as_second() + i64::from(min_ready_seconds) <= now.as_second(),
        None => false,
    }
}

/// Seconds until a ready pod becomes available (for a requeue), if it is not yet.
pub fn seconds_until_available(p: &Pod, min_ready_seconds: i32, now: Timestamp) -> Option<i64> {
    let c = ready_condition(p).filter(|c| c.status == "True")?;
    let t = c.last_transition_time.as_ref()?;
    let left = t.0.as_second() + i64::from(min_ready_seconds) - now.as_second();
    (left > 0).then_some(left)
}

fn phase_rank(p: &Pod) -> u8 {
    // Upstream's podPhaseToOrdinal: Pending < Unknown < Running.
    match phase(p) {
        "Pending" | "" => 0,
        "Unknown" => 1,
        "Running" => 2,
        _ => 3,
    }
}

fn restarts(p: &Pod) -> i32 {
    p.status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .map(|cs| cs.iter().map(|c| c.restart_count).sum())
        .unwrap_or(0)
}

/// Upstream's `ActivePods.Less`: `Ordering::Less` means `a` is deleted before `b`.
/// Unassigned before assigned; Pending before Unknown before Running; not ready before
/// ready; ready for a shorter time before longer; more restarts before fewer; newer
/// before older.
pub fn deletion_order(a: &Pod, b: &Pod) -> Ordering {
    let assigned = |p: &Pod| {
        p.spec
            .as_ref()
            .and_then(|s| s.node_name.as_deref())
            .is_some_and(|n| !n.is_empty())
    };
    let ready_since = |p: &Pod| {
        ready_condition(p)
            .filter(|c| c.status == "True")
            .and_then(|c| c.last_transition_time.as_ref())
            .map(|t| t.0)
    };
    let created = |p: &Pod| p.metadata.creation_timestamp.as_ref().map(|t| t.0);
    assigned(a)
        .cmp(&assigned(b))
        .then_with(|| phase_rank(a).cmp(&phase_rank(b)))
        .then_with(|| is_ready(a).cmp(&is_ready(b)))
        // Both ready: the more recently ready goes first (later time sorts first).
        .then_with(|| match (ready_since(a), ready_since(b)) {
            (Some(x), Some(y)) => y.cmp(&x),
            _ => Ordering::Equal,
        })
        .then_with(|| restarts(b).cmp(&restarts(a)))
        // Newer first; a missing timestamp counts as newest.
        .then_with(|| match (created(a), created(b)) {
            (Some(x), Some(y)) => y.cmp(&x),
            (None, Some(_)) => Ordering::Less,
            (Some(_), None) => Ordering::Greater,
            (None, None) => Ordering::Equal,
        })
}

#[cfg(test)]
pub(crate) mod test_pods {
    //! Pod builders for the unit tests of every controller.
    use k8s_openapi::{
        api::core::v1::{PodCondition, PodSpec, PodStatus},
        apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time},
    };

    use super::*;

    pub fn ts(s: i64) -> Timestamp {
        Timestamp::from_second(s).unwrap()
    }

    pub fn pod(name: &str, created: i64) -> Pod {
        Pod {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some("default".into()),
                uid: Some(format!("uid-{name}")),
                creation_timestamp: Some(Time(ts(created))),
                ..Default::default()
            },
            spec: Some(PodSpec::default()),
            status: Some(PodStatus {
                phase: Some("Pending".into()),
                ..Default::default()
            }),
        }
    }

    pub fn bound(mut p: Pod, node: &str) -> Pod {
        p.spec.get_or_insert_with(Default::default).node_name = Some(node.into());
        p
    }

    pub fn running(mut p: Pod, ready_since: Option<i64>) -> Pod {
        let st = p.status.get_or_insert_with(Default::default);
        st.phase = Some("Running".into());
        st.conditions = Some(vec![PodCondition {
            type_: "Ready".into(),
            status: if ready_since.is_some() {
                "True"
            } else {
                "False"
            }
            .into(),
            last_transition_time: ready_since.map(|s| Time(ts(s))),
            ..Default::default()
        }]);
        p
    }

    pub fn with_phase(mut p: Pod, phase: &str) -> Pod {
        p.status.get_or_insert_with(Default::default).phase = Some(phase.into());
        p
    }

    pub fn terminating(mut p: Pod) -> Pod {
        p.metadata.deletion_timestamp = Some(Time(ts(1)));
        p
    }
}

#[cfg(test)]
mod tests {
    use super::test_pods::*;
    use super::*;

    #[test]
    fn predicates() {
        let p = pod("a", 0);
        assert!(is_active(&p) && !is_ready(&p));
        assert!(!is_active(&terminating(pod("a", 0))));
        assert!(!is_active(&with_phase(pod("a", 0), "Succeeded")));
        let r = running(bound(pod("a", 0), "n"), Some(100));
        assert!(is_ready(&r));
        assert!(is_available(&r, 0, ts(100)));
        assert!(!is_available(&r, 10, ts(105)));
        assert_eq!(seconds_until_available(&r, 10, ts(105)), Some(5));
        assert!(is_available(&r, 10, ts(110)));
        assert!(!is_available(&running(pod("b", 0), None), 0, ts(100)));
    }

    #[test]
    fn active_pods_order_deletes_the_least_useful_first() {
        let mut pods = [
            running(bound(pod("old-ready", 1), "n"), Some(10)),
            running(bound(pod("new-ready", 5), "n"), Some(20)),
            bound(pod("pending", 3), "n"),
            running(bound(pod("not-ready", 2), "n"), None),
            pod("unscheduled", 0),
        ];
        pods.sort_by(deletion_order);
        let names: Vec<_> = pods
            .iter()
            .map(|p| p.metadata.name.clone().unwrap())
            .collect();
        assert_eq!(
            names,
            [
                "unscheduled",
                "pending",
                "not-ready",
                "new-ready",
                "old-ready"
            ]
        );
        // Same state: newer first.
        let mut pods = [pod("older", 1), pod("newer", 2)];
        pods.sort_by(deletion_order);
        assert_eq!(pods[0].metadata.name.as_deref(), Some("newer"));
    }
}
