//! ReplicaSet controller (upstream `pkg/controller/replicaset`): keeps `spec.replicas`
//! active pods from the template, owned through a controller reference.
//!
//! - Pods are claimed per upstream's `ControllerRefManager` (matching orphans adopted,
//!   owned pods that stopped matching released); only active pods (not finished, not
//!   terminating) count.
//! - Creates run in slow-start batches (1, 2, 4, ...), at most [`BURST_REPLICAS`] per
//!   reconcile; deletes pick pods in upstream's `ActivePods` order.
//! - [`crate::expectations`] holds off the next create/delete decision until the cache
//!   has seen this controller's own writes.
//! - Status: replicas, fullyLabeledReplicas, readyReplicas, availableReplicas
//!   (`minReadySeconds`), observedGeneration, and a `ReplicaFailure` condition while
//!   creates fail.

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use k8s_openapi::{
    api::{
        apps::v1::{ReplicaSet, ReplicaSetCondition, ReplicaSetStatus},
        core::v1::Pod,
    },
    apimachinery::pkg::apis::meta::v1::Time,
    jiff::Timestamp,
};
use kube::{
    api::{Patch, PatchParams},
    runtime::{controller::Action, reflector::Store, watcher, Controller},
    Api, ResourceExt as _,
};

use crate::{
    backoff::Backoff,
    expectations::Expectations,
    ownership::{self, Claim},
    podcontrol::PodControl,
    pods, runtime, Ctx,
};

/// Upstream's `BurstReplicas`: at most this many creates or deletes per reconcile.
pub const BURST_REPLICAS: usize = 500;

/// What one reconcile should do about pod count.
#[derive(Debug, PartialEq, Eq)]
pub enum Scale {
    Create(usize),
    /// (name, uid) of the pods to delete, in deletion order.
    Delete(Vec<(String, String)>),
    None,
}

/// Pods to create or delete so `active` (the owned active pods) becomes `replicas`.
pub fn plan(replicas: i32, active: &[&Pod]) -> Scale {
    let want = usize::try_from(replicas.max(0)).unwrap_or(0);
    let have = active.len();
    if have < want {
        return Scale::Create((want - have).min(BURST_REPLICAS));
    }
    if have > want {
        let mut sorted: Vec<&Pod> = active.to_vec();
        sorted.sort_by(|a, b| pods::deletion_order(a, b));
        let n = (have - want).min(BURST_REPLICAS);
        return Scale::Delete(
            sorted
                .into_iter()
                .take(n)
                .map(|p| (p.name_any(), p.uid().unwrap_or_default()))
                .collect(),
        );
    }
    Scale::None
}

/// Upstream's `calculateStatus` from the owned active pods.
pub fn status(
    rs: &ReplicaSet,
    active: &[&Pod],
    create_failure: Option<&str>,
    now: Timestamp,
) -> ReplicaSetStatus {
    let spec = rs.spec.as_ref();
    let min_ready = spec.and_then(|s| s.min_ready_seconds).unwrap_or(0);
    let template_labels: BTreeMap<String, String> = spec
        .and_then(|s| s.template.as_ref())
        .and_then(|t| t.metadata.as_ref())
        .and_then(|m| m.labels.clone())
        .unwrap_or_default();
    let count = |f: &dyn Fn(&Pod) -> bool| active.iter().filter(|p| f(p)).count() as i32;
    let fully_labeled = count(&|p| {
        let labels = p.metadata.labels.as_ref();
        template_labels
            .iter()
            .all(|(k, v)| labels.and_then(|l| l.get(k)) == Some(v))
    });
    let mut conditions: Vec<ReplicaSetCondition> = rs
        .status
        .as_ref()
        .and_then(|s| s.conditions.clone())
        .unwrap_or_default();
    conditions.retain(|c| c.type_ != "ReplicaFailure");
    if let Some(msg) = create_failure {
        let previous = rs
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .and_then(|cs| cs.iter().find(|c| c.type_ == "ReplicaFailure"))
            .filter(|c| c.message.as_deref() == Some(msg));
        conditions.push(previous.cloned().unwrap_or(ReplicaSetCondition {
            type_: "ReplicaFailure".into(),
            status: "True".into(),
            reason: Some("FailedCreate".into()),
            message: Some(msg.to_string()),
            last_transition_time: Some(Time(now)),
        }));
    }
    ReplicaSetStatus {
        replicas: active.len() as i32,
        fully_labeled_replicas: Some(fully_labeled),
        ready_replicas: Some(count(&pods::is_ready)),
        available_replicas: Some(count(&|p| pods::is_available(p, min_ready, now))),
        observed_generation: rs.metadata.generation,
        conditions: (!conditions.is_empty()).then_some(conditions),
        terminating_replicas: None,
    }
}

struct State {
    ctx: Ctx,
    pods: Store<Pod>,
    expectations: Expectations,
    backoff: Backoff,
}

pub async fn run(ctx: Ctx) -> anyhow::Result<()> {
    let client = ctx.client.clone();
    let (pod_store, pod_stream) = runtime::reflect::<Pod>(&client);
    let controller = Controller::new(
        Api::<ReplicaSet>::all(client.clone()),
        watcher::Config::default(),
    );
    let sets = controller.store();
    let state = Arc::new(State {
        ctx,
        pods: pod_store,
        expectations: Expectations::default(),
        backoff: Backoff::default(),
    });
    let results = controller
        .watches_stream(pod_stream, move |pod: Pod| {
            // The controlling ReplicaSet, or (orphans) every ReplicaSet that selects it.
            if let Some(r) = runtime::controller_owner::<ReplicaSet>(&pod, "ReplicaSet") {
                return vec![r];
            }
            sets.state()
                .iter()
                .filter(|rs| {
                    rs.namespace() == pod.namespace()
                        && ownership::selects(
                            rs.spec.as_ref().map(|s| &s.selector),
                            pod.metadata.labels.as_ref(),
                        )
                })
                .map(|rs| kube::runtime::reflector::ObjectRef::from_obj(rs.as_ref()))
                .collect()
        })
        .run(
            reconcile,
            |rs, _e, st: Arc<State>| runtime::requeue_after_failure(rs.as_ref(), &st.backoff),
            state,
        );
    runtime::drain("replicaset", results).await;
    Ok(())
}

async fn reconcile(rs: Arc<ReplicaSet>, st: Arc<State>) -> Result<Action, kube::Error> {
    let key = runtime::key(rs.as_ref());
    let ns = rs.namespace().unwrap_or_default();
    let uid = rs.uid().unwrap_or_default();
    let _ = st.pods.wait_until_ready().await;
    let pod_api: Api<Pod> = Api::namespaced(st.ctx.client.clone(), &ns);
    let deleting = rs.metadata.deletion_timestamp.is_some();
    let selector = rs.spec.as_ref().map(|s| &s.selector);
    let owner = ownership::controller_reference(rs.as_ref());

    // Claim (adopt / release) the active pods of the namespace.
    let mut owned: Vec<Arc<Pod>> = Vec::new();
    for p in st
        .pods
        .state()
        .into_iter()
        .filter(|p| p.namespace().as_deref() == Some(&ns) && pods::is_active(p))
    {
        match ownership::claim(&uid, deleting, selector, &p.metadata) {
            Claim::Owned => owned.push(p),
            Claim::Adopt => match ownership::adopt(&pod_api, &p.metadata, owner.clone()).await {
                Ok(adopted) => {
                    tracing::info!("replicaset {key}: adopted pod {}", p.name_any());
                    owned.push(Arc::new(adopted));
                }
                Err(kube::Error::Api(e)) if e.code == 404 => {}
                Err(e) => return Err(e),
            },
            Claim::Release => match ownership::release(&pod_api, &p.metadata, &uid).await {
                Ok(_) => tracing::info!("replicaset {key}: released pod {}", p.name_any()),
                Err(kube::Error::Api(e)) if e.code == 404 => {}
                Err(e) => return Err(e),
            },
            Claim::Ignore => {}
        }
    }
    let active: Vec<&Pod> = owned.iter().map(|p| p.as_ref()).collect();
    let replicas = rs.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);

    let satisfied = st
        .expectations
        .satisfied(&key, runtime::seen(&st.pods, &ns));
    let mut failure: Option<String> = None;
    if satisfied && !deleting {
        let control = PodControl {
            ctx: &st.ctx,
            expectations: &st.expectations,
            key: &key,
            kind: "replicaset",
            owner: rs.as_ref(),
            api: &pod_api,
        };
        match plan(replicas, &active) {
            Scale::Create(n) => {
                let template = rs
                    .spec
                    .as_ref()
                    .and_then(|s| s.template.clone())
                    .unwrap_or_default();
                let pod = pods::from_template(&template, &ns, &rs.name_any(), owner.clone());
                let (_, err) = control.create(n, |_| pod.clone(), |_| String::new()).await;
                if let Some(e) = err {
                    failure = Some(format!("Error creating: {e}"));
                }
            }
            Scale::Delete(victims) => {
                // Logged and announced by PodControl; the next sync retries.
                let _ = control.delete(&victims).await;
            }
            Scale::None => {}
        }
    }

    let now = Timestamp::now();
    let new_status = status(&rs, &active, failure.as_deref(), now);
    if rs.status.as_ref() != Some(&new_status) {
        let rs_api: Api<ReplicaSet> = Api::namespaced(st.ctx.client.clone(), &ns);
        let patch = serde_json::json!({ "status": status_json(&new_status) });
        match rs_api
            .patch_status(
                &rs.name_any(),
                &PatchParams::default(),
                &Patch::Merge(&patch),
            )
            .await
        {
            Ok(_) => tracing::debug!("replicaset {key}: status {:?}", new_status),
            Err(kube::Error::Api(e)) if e.code == 404 => return Ok(Action::await_change()),
            Err(e) => return Err(e),
        }
    }
    st.backoff.succeeded(&key);
    if failure.is_some() {
        return Ok(Action::requeue(st.backoff.failed(&key)));
    }
    if !satisfied {
        // The watch normally triggers us as soon as the writes show; this is the net.
        return Ok(Action::requeue(Duration::from_secs(1)));
    }
    // A ready pod becomes available after minReadySeconds without any event.
    let min_ready = rs
        .spec
        .as_ref()
        .and_then(|s| s.min_ready_seconds)
        .unwrap_or(0);
    let wait = active
        .iter()
        .filter_map(|p| pods::seconds_until_available(p, min_ready, now))
        .min();
    Ok(match wait {
        Some(s) => Action::requeue(Duration::from_secs(s.unsigned_abs())),
        None => Action::requeue(Duration::from_secs(300)),
    })
}

/// The status as a merge patch body: every counter explicit (so a drop to 0 is written)
/// and `conditions: null` to clear them.
pub fn status_json(s: &ReplicaSetStatus) -> serde_json::Value {
    serde_json::json!({
        "replicas": s.replicas,
        "fullyLabeledReplicas": s.fully_labeled_replicas.unwrap_or(0),
        "readyReplicas": s.ready_replicas.unwrap_or(0),
        "availableReplicas": s.available_replicas.unwrap_or(0),
        "observedGeneration": s.observed_generation,
        "conditions": s.conditions,
    })
}

#[cfg(test)]
mod tests {
    use k8s_openapi::{
        api::{apps::v1::ReplicaSetSpec, core::v1::PodTemplateSpec},
        apimachinery::pkg::apis::meta::v1::ObjectMeta,
    };

    use super::*;
    use crate::pods::test_pods::*;

    fn rs(replicas: i32, min_ready: i32) -> ReplicaSet {
        ReplicaSet {
            metadata: ObjectMeta {
                name: Some("web".into()),
                generation: Some(4),
                ..Default::default()
            },
            spec: Some(ReplicaSetSpec {
                replicas: Some(replicas),
                min_ready_seconds: Some(min_ready),
                template: Some(PodTemplateSpec {
                    metadata: Some(ObjectMeta {
                        labels: Some([("app".to_string(), "web".to_string())].into()),
                        ..Default::default()
                    }),
                    spec: None,
                }),
                ..Default::default()
            }),
            status: None,
        }
    }

    #[test]
    fn scale_up_and_down() {
        let a = running(bound(pod("a", 1), "n"), Some(10));
        let b = bound(pod("b", 2), "n");
        let c = pod("c", 3);
        assert_eq!(plan(3, &[&a]), Scale::Create(2));
        assert_eq!(plan(10_000, &[]), Scale::Create(BURST_REPLICAS));
        assert_eq!(plan(1, &[&a]), Scale::None);
        let Scale::Delete(v) = plan(1, &[&a, &b, &c]) else {
            panic!()
        };
        let names: Vec<_> = v.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["c", "b"], "unscheduled, then pending");
        assert_eq!(v[0].1, "uid-c");
        let Scale::Delete(v) = plan(0, &[&a]) else {
            panic!()
        };
        assert_eq!(v.len(), 1);
    }

    #[test]
    fn status_counts() {
        let mut labelled = running(bound(pod("a", 1), "n"), Some(100));
        labelled.metadata.labels = Some([("app".to_string(), "web".to_string())].into());
        let ready_recent = running(bound(pod("b", 2), "n"), Some(108));
        let pending = pod("c", 3);
        let r = rs(3, 5);
        let s = status(&r, &[&labelled, &ready_recent, &pending], None, ts(110));
        assert_eq!(s.replicas, 3);
        assert_eq!(s.fully_labeled_replicas, Some(1));
        assert_eq!(s.ready_replicas, Some(2));
        assert_eq!(
            s.available_replicas,
            Some(1),
            "b is ready for 2 s < minReadySeconds 5"
        );
        assert_eq!(s.observed_generation, Some(4));
        assert!(s.conditions.is_none());
        let s = status(&r, &[], Some("Error creating: quota"), ts(110));
        let c = &s.conditions.unwrap()[0];
        assert_eq!(
            (c.type_.as_str(), c.reason.as_deref()),
            ("ReplicaFailure", Some("FailedCreate"))
        );
    }
}
