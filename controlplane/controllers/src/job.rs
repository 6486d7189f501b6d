//! Job controller (upstream `pkg/controller/job`, NonIndexed completion mode): runs pods
//! until `completions` succeeded (or, with no `completions`, until one succeeded and none
//! is active), at most `parallelism` at a time.
//!
//! - Failures: with `restartPolicy: Never` every Failed pod counts; with `OnFailure`
//!   container restarts count too (upstream's `pastBackoffLimitOnFailure`). More than
//!   `backoffLimit` → `FailureTarget` then `Failed` with reason `BackoffLimitExceeded`.
//!   Replacement pods wait upstream's pod-failure backoff (base × 2^(failures-1), capped
//!   at 10 min; base 10 s, `--job-pod-failure-backoff`).
//! - `activeDeadlineSeconds` from `status.startTime` → `DeadlineExceeded`.
//! - Success → `SuccessCriteriaMet` then `Complete` (reason `CompletionsReached`) and
//!   `completionTime`. The terminal condition (`Complete`/`Failed`) is added once no pod
//!   of the Job is active or terminating, as upstream 1.31+ does.
//! - Pods carry `batch.kubernetes.io/controller-uid`, `batch.kubernetes.io/job-name`,
//!   `controller-uid` and `job-name` labels and a controller reference; the Job's pods
//!   are those it controls.
//!
//! - `suspend: true` deletes the active pods and creates none (`Suspended` condition,
//!   reason `JobSuspended`); resuming resets `startTime` (upstream).
//!
//! Not done: the `batch.kubernetes.io/job-tracking` finalizer. Counts are the larger of
//! what the existing pods show and the previous status, so finished pods deleted by hand
//! before more pods finish are under-counted (upstream's finalizer prevents that).
//! Indexed mode, podFailurePolicy and successPolicy are not implemented.

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use k8s_openapi::{
    api::{
        batch::v1::{Job, JobCondition, JobStatus},
        core::v1::{Pod, PodTemplateSpec},
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
    backoff::Backoff, events::EventType, expectations::Expectations, ownership,
    podcontrol::PodControl, pods, runtime, Ctx,
};

/// Upstream's `MaxJobPodFailureBackOff`.
pub const MAX_POD_FAILURE_BACKOFF: Duration = Duration::from_secs(600);

pub const CONTROLLER_UID: &str = "batch.kubernetes.io/controller-uid";
pub const JOB_NAME: &str = "batch.kubernetes.io/job-name";

/// What one reconcile does.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    pub create: usize,
    /// (name, uid) of pods to delete.
    pub delete: Vec<(String, String)>,
    pub status: JobStatus,
    /// Events to record: (type, reason, message).
    pub events: Vec<(EventType, &'static str, String)>,
    /// Check again after this long (failure backoff, active deadline).
    pub requeue: Option<Duration>,
}

fn has_condition(s: Option<&JobStatus>, ty: &str) -> bool {
    s.and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == ty && c.status == "True"))
}

fn new_condition(ty: &str, reason: &str, message: &str, now: Timestamp) -> JobCondition {
    JobCondition {
        type_: ty.into(),
        status: "True".into(),
        reason: Some(reason.into()),
        message: Some(message.into()),
        last_probe_time: Some(Time(now)),
        last_transition_time: Some(Time(now)),
    }
}

fn ensure_condition(conds: &mut Vec<JobCondition>, c: JobCondition) {
    if !conds
        .iter()
        .any(|x| x.type_ == c.type_ && x.status == "True")
    {
        conds.retain(|x| x.type_ != c.type_);
        conds.push(c);
    }
}

/// When a pod finished: the latest container `finishedAt`, else its latest condition
/// transition, else its creation.
fn finished_at(p: &Pod) -> Option<Timestamp> {
    let st = p.status.as_ref();
    let containers = st
        .and_then(|s| s.container_statuses.as_ref())
        .into_iter()
        .flatten()
        .filter_map(|c| c.state.as_ref()?.terminated.as_ref()?.finished_at.as_ref())
        .map(|t| t.0)
        .max();
    containers
        .or_else(|| {
            st.and_then(|s| s.conditions.as_ref())
                .into_iter()
                .flatten()
                .filter_map(|c| c.last_transition_time.as_ref().map(|t| t.0))
                .max()
        })
        .or_else(|| p.metadata.creation_timestamp.as_ref().map(|t| t.0))
}

/// Plans one reconcile of `job` over the pods it controls; `pod_backoff` is the base of
/// the pod-failure backoff.
pub fn plan(job: &Job, owned: &[&Pod], pod_backoff: Duration, now: Timestamp) -> Plan {
    let spec = job.spec.clone().unwrap_or_default();
    let old = job.status.clone().unwrap_or_default();
    let mut status = old.clone();
    let mut conds = old.conditions.clone().unwrap_or_default();
    let mut events = Vec::new();
    let active: Vec<&Pod> = owned
        .iter()
        .copied()
        .filter(|p| pods::is_active(p))
        .collect();
    let terminating = owned.iter().filter(|p| pods::is_terminating(p)).count();
    let succeeded = owned
        .iter()
        .filter(|p| pods::phase(p) == "Succeeded")
        .count() as i32;
    let failed_pods: Vec<&Pod> = owned
        .iter()
        .copied()
        .filter(|p| pods::phase(p) == "Failed")
        .collect();
    let failed = failed_pods.len() as i32;
    let finished = has_condition(Some(&old), "Complete") || has_condition(Some(&old), "Failed");
    let delete_all = |active: &[&Pod]| -> Vec<(String, String)> {
        active
            .iter()
            .map(|p| (p.name_any(), p.uid().unwrap_or_default()))
            .collect()
    };
    let mut plan = Plan {
        create: 0,
        delete: Vec::new(),
        status: JobStatus::default(),
        events: Vec::new(),
        requeue: None,
    };
    if spec.suspend != Some(true) {
        if let Some(c) = conds
            .iter_mut()
            .find(|c| c.type_ == "Suspended" && c.status == "True")
        {
            // Resumed: the active deadline counts from now (upstream resets startTime).
            c.status = "False".into();
            c.reason = Some("JobResumed".into());
            c.message = Some("Job resumed".into());
            c.last_transition_time = Some(Time(now));
            status.start_time = None;
            events.push((EventType::Normal, "Resumed", "Job resumed".to_string()));
        }
    }
    if status.start_time.is_none() && !finished && spec.suspend != Some(true) {
        status.start_time = Some(Time(now));
    }
    let start = status.start_time.as_ref().map(|t| t.0).unwrap_or(now);

    // Upstream counts terminal pods it has seen; these can only grow (pods may go away).
    status.succeeded = Some(succeeded.max(old.succeeded.unwrap_or(0)));
    status.failed = Some(failed.max(old.failed.unwrap_or(0)));
    let failed = status.failed.unwrap_or(0);
    let succeeded = status.succeeded.unwrap_or(0);
    status.active = Some(active.len() as i32);
    status.ready = Some(active.iter().filter(|p| pods::is_ready(p)).count() as i32);

    let failure_target = conds
        .iter()
        .find(|c| c.type_ == "FailureTarget" && c.status == "True")
        .cloned();
    let success_met = has_condition(Some(&old), "SuccessCriteriaMet");

    let suspended = spec.suspend == Some(true);
    let was_suspended = conds
        .iter()
        .any(|c| c.type_ == "Suspended" && c.status == "True");
    if finished {
        plan.delete = delete_all(&active);
    } else if suspended {
        plan.delete = delete_all(&active);
        if !was_suspended {
            let mut c = new_condition("Suspended", "JobSuspended", "Job suspended", now);
            c.status = "True".into();
            conds.retain(|c| c.type_ != "Suspended");
            conds.push(c);
            events.push((EventType::Normal, "Suspended", "Job suspended".to_string()));
        }
    } else if let Some(ft) = failure_target {
        // Failing: remove what runs, then the terminal condition.
        plan.delete = delete_all(&active);
        if active.is_empty() && terminating == 0 {
            let reason = ft.reason.clone().unwrap_or_default();
            let message = ft.message.clone().unwrap_or_default();
            ensure_condition(&mut conds, new_condition("Failed", &reason, &message, now));
        }
    } else if success_met {
        plan.delete = delete_all(&active);
        if active.is_empty() && terminating == 0 {
            ensure_condition(
                &mut conds,
                new_condition(
                    "Complete",
                    "CompletionsReached",
                    "Reached expected number of succeeded pods",
                    now,
                ),
            );
            status.completion_time = Some(Time(now));
            events.push((EventType::Normal, "Completed", "Job completed".to_string()));
        }
    } else {
        let backoff_limit = spec.backoff_limit.unwrap_or(6);
        let on_failure = spec
            .template
            .spec
            .as_ref()
            .and_then(|s| s.restart_policy.as_deref())
            == Some("OnFailure");
        let exceeded = if on_failure {
            // pastBackoffLimitOnFailure: restarts of active pods plus failures.
            let restarts: i32 = active
                .iter()
                .flat_map(|p| {
                    let st = p.status.as_ref();
                    st.and_then(|s| s.init_container_statuses.clone())
                        .into_iter()
                        .flatten()
                        .chain(
                            st.and_then(|s| s.container_statuses.clone())
                                .into_iter()
                                .flatten(),
                        )
                })
                .map(|c| c.restart_count)
                .sum();
            let n = failed + restarts;
            if backoff_limit == 0 {
                n > 0
            } else {
                n >= backoff_limit
            }
        } else {
            failed > backoff_limit
        };
        let deadline = spec.active_deadline_seconds.map(|s| start.as_second() + s);
        let complete = match spec.completions {
            Some(c) => succeeded >= c,
            None => succeeded > 0 && active.is_empty(),
        };
        let fail_with = if exceeded {
            Some((
                "BackoffLimitExceeded",
                "Job has reached the specified backoff limit",
            ))
        } else if deadline.is_some_and(|d| now.as_second() >= d) {
            Some((
                "DeadlineExceeded",
                "Job was active longer than specified deadline",
            ))
        } else {
            None
        };
        if let Some((reason, message)) = fail_with {
            ensure_condition(
                &mut conds,
                new_condition("FailureTarget", reason, message, now),
            );
            events.push((EventType::Warning, reason, message.to_string()));
            plan.delete = delete_all(&active);
            if active.is_empty() && terminating == 0 {
                ensure_condition(&mut conds, new_condition("Failed", reason, message, now));
            }
        } else if complete {
            ensure_condition(
                &mut conds,
                new_condition(
                    "SuccessCriteriaMet",
                    "CompletionsReached",
                    "Reached expected number of succeeded pods",
                    now,
                ),
            );
            plan.delete = delete_all(&active);
            if active.is_empty() && terminating == 0 {
                ensure_condition(
                    &mut conds,
                    new_condition(
                        "Complete",
                        "CompletionsReached",
                        "Reached expected number of succeeded pods",
                        now,
                    ),
                );
                status.completion_time = Some(Time(now));
                events.push((EventType::Normal, "Completed", "Job completed".to_string()));
            }
        } else {
            let parallelism = spec.parallelism.unwrap_or(1).max(0);
            let want = match spec.completions {
                Some(c) => parallelism.min((c - succeeded).max(0)),
                // Upstream: after a success, leave whatever runs running.
                None if succeeded > 0 => active.len() as i32,
                None => parallelism,
            } as usize;
            if active.len() > want {
                let mut extra = active.clone();
                extra.sort_by(|a, b| pods::deletion_order(a, b));
                plan.delete = extra
                    .into_iter()
                    .take(active.len() - want)
                    .map(|p| (p.name_any(), p.uid().unwrap_or_default()))
                    .collect();
            } else if active.len() < want {
                // Pod-failure backoff after the latest failure.
                let last_failure = failed_pods.iter().filter_map(|p| finished_at(p)).max();
                let wait = if failed > 0 {
                    let exp = u32::try_from(failed - 1).unwrap_or(0).min(16);
                    pod_backoff
                        .saturating_mul(1 << exp)
                        .min(MAX_POD_FAILURE_BACKOFF)
                } else {
                    Duration::ZERO
                };
                let ready_at = last_failure.map(|t| t.as_second() + wait.as_secs() as i64);
                match ready_at {
                    Some(at) if at > now.as_second() => {
                        plan.requeue = Some(Duration::from_secs((at - now.as_second()) as u64));
                    }
                    _ => plan.create = want - active.len(),
                }
            }
            if let Some(d) = deadline {
                let left = Duration::from_secs((d - now.as_second()).max(1) as u64);
                plan.requeue = Some(plan.requeue.map_or(left, |r| r.min(left)));
            }
        }
    }
    status.conditions = (!conds.is_empty()).then_some(conds);
    plan.status = status;
    plan.events = events;
    plan
}

/// The Job's pod template with the labels upstream's Job strategy adds.
pub fn pod_template(job: &Job) -> PodTemplateSpec {
    let mut t = job
        .spec
        .as_ref()
        .map(|s| s.template.clone())
        .unwrap_or_default();
    let uid = job.uid().unwrap_or_default();
    let name = job.name_any();
    let labels: &mut BTreeMap<String, String> = t
        .metadata
        .get_or_insert_with(Default::default)
        .labels
        .get_or_insert_with(Default::default);
    labels.insert(CONTROLLER_UID.into(), uid.clone());
    labels.insert(JOB_NAME.into(), name.clone());
    labels.insert("controller-uid".into(), uid);
    labels.insert("job-name".into(), name);
    t
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
    let controller = Controller::new(Api::<Job>::all(client.clone()), watcher::Config::default());
    let state = Arc::new(State {
        ctx,
        pods: pod_store,
        expectations: Expectations::default(),
        backoff: Backoff::default(),
    });
    let results = controller
        .watches_stream(pod_stream, |pod: Pod| {
            runtime::controller_owner::<Job>(&pod, "Job")
        })
        .run(
            reconcile,
            |j, _e, st: Arc<State>| runtime::requeue_after_failure(j.as_ref(), &st.backoff),
            state,
        );
    runtime::drain("job", results).await;
    Ok(())
}

async fn reconcile(job: Arc<Job>, st: Arc<State>) -> Result<Action, kube::Error> {
    let key = runtime::key(job.as_ref());
    let ns = job.namespace().unwrap_or_default();
    let uid = job.uid().unwrap_or_default();
    let _ = st.pods.wait_until_ready().await;
    if job.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let owned: Vec<Arc<Pod>> = st
        .pods
        .state()
        .into_iter()
        .filter(|p| {
            p.namespace().as_deref() == Some(&ns)
                && ownership::controller_ref(&p.metadata).is_some_and(|r| r.uid == uid)
        })
        .collect();
    let refs: Vec<&Pod> = owned.iter().map(|p| p.as_ref()).collect();
    let now = Timestamp::now();
    let mut plan = plan(&job, &refs, st.ctx.config.job_pod_failure_backoff, now);
    let satisfied = st
        .expectations
        .satisfied(&key, runtime::seen(&st.pods, &ns));
    if !satisfied {
        plan.create = 0;
        plan.delete.clear();
    }
    let pod_api: Api<Pod> = Api::namespaced(st.ctx.client.clone(), &ns);
    let control = PodControl {
        ctx: &st.ctx,
        expectations: &st.expectations,
        key: &key,
        kind: "job",
        owner: job.as_ref(),
        api: &pod_api,
    };
    if plan.create > 0 {
        let pod = pods::from_template(
            &pod_template(&job),
            &ns,
            &job.name_any(),
            ownership::controller_reference(job.as_ref()),
        );
        let (_, err) = control
            .create(plan.create, |_| pod.clone(), |_| String::new())
            .await;
        if let Some(e) = err {
            return Err(e);
        }
    }
    control.delete(&plan.delete).await?;
    if job.status.as_ref() != Some(&plan.status) {
        let api: Api<Job> = Api::namespaced(st.ctx.client.clone(), &ns);
        let s = &plan.status;
        let body = serde_json::json!({"status": {
            "active": s.active.unwrap_or(0),
            "ready": s.ready.unwrap_or(0),
            "succeeded": s.succeeded.unwrap_or(0),
            "failed": s.failed.unwrap_or(0),
            "startTime": s.start_time,
            "completionTime": s.completion_time,
            "conditions": s.conditions,
        }});
        match api
            .patch_status(
                &job.name_any(),
                &PatchParams::default(),
                &Patch::Merge(&body),
            )
            .await
        {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 404 => return Ok(Action::await_change()),
            Err(e) => return Err(e),
        }
        for (ty, reason, msg) in &plan.events {
            tracing::info!("job {key}: {reason}: {msg}");
            st.ctx.events.publish(job.as_ref(), *ty, reason, msg).await;
        }
    }
    st.backoff.succeeded(&key);
    if !satisfied {
        return Ok(Action::requeue(Duration::from_secs(1)));
    }
    Ok(Action::requeue(
        plan.requeue.unwrap_or(Duration::from_secs(300)),
    ))
}

#[cfg(test)]
mod tests {
    use k8s_openapi::{
        api::{batch::v1::JobSpec, core::v1::PodSpec},
        apimachinery::pkg::apis::meta::v1::ObjectMeta,
    };

    use super::*;
    use crate::pods::test_pods::*;

    fn job(completions: Option<i32>, parallelism: i32, backoff_limit: i32) -> Job {
        Job {
            metadata: ObjectMeta {
                name: Some("pi".into()),
                namespace: Some("default".into()),
                uid: Some("job-uid".into()),
                ..Default::default()
            },
            spec: Some(JobSpec {
                completions,
                parallelism: Some(parallelism),
                backoff_limit: Some(backoff_limit),
                template: PodTemplateSpec {
                    metadata: None,
                    spec: Some(PodSpec {
                        restart_policy: Some("Never".into()),
                        ..Default::default()
                    }),
                },
                ..Default::default()
            }),
            status: None,
        }
    }

    const B: Duration = Duration::from_secs(10);

    fn reasons(s: &JobStatus) -> Vec<(String, String)> {
        s.conditions
            .iter()
            .flatten()
            .map(|c| (c.type_.clone(), c.reason.clone().unwrap_or_default()))
            .collect()
    }

    #[test]
    fn runs_parallelism_pods_until_completions() {
        let j = job(Some(3), 2, 6);
        let p = plan(&j, &[], B, ts(100));
        assert_eq!(p.create, 2);
        assert_eq!(p.status.start_time.as_ref().map(|t| t.0), Some(ts(100)));
        let done = with_phase(pod("a", 1), "Succeeded");
        let running_pod = running(bound(pod("b", 2), "n"), Some(3));
        let p = plan(&j, &[&done, &running_pod], B, ts(100));
        assert_eq!(p.create, 1, "2 left to complete, parallelism 2, 1 running");
        let done_b = with_phase(pod("x", 1), "Succeeded");
        let p = plan(&j, &[&done, &done_b, &running_pod], B, ts(100));
        assert_eq!(p.create, 0, "1 left to complete, 1 running");
        let done2 = with_phase(pod("b", 2), "Succeeded");
        let done3 = with_phase(pod("c", 3), "Succeeded");
        let p = plan(&j, &[&done, &done2, &done3], B, ts(100));
        assert_eq!(p.status.succeeded, Some(3));
        assert_eq!(
            reasons(&p.status),
            [
                ("SuccessCriteriaMet".into(), "CompletionsReached".into()),
                ("Complete".into(), "CompletionsReached".into())
            ]
        );
        assert!(p.status.completion_time.is_some());
        assert_eq!(p.events[0].1, "Completed");
    }

    #[test]
    fn failures_back_off_and_exceed_the_limit() {
        let j = job(Some(1), 1, 1);
        let f1 = with_phase(pod("a", 100), "Failed");
        // Failed at 100 (creation time fallback): the replacement waits 10 s.
        let p = plan(&j, &[&f1], B, ts(105));
        assert_eq!((p.create, p.requeue), (0, Some(Duration::from_secs(5))));
        assert_eq!(p.status.failed, Some(1));
        let p = plan(&j, &[&f1], B, ts(110));
        assert_eq!(p.create, 1);
        // Second failure: 2 > backoffLimit 1, with a pod still running.
        let f2 = with_phase(pod("b", 120), "Failed");
        let r = running(bound(pod("c", 121), "n"), Some(122));
        let p = plan(&j, &[&f1, &f2, &r], B, ts(130));
        assert_eq!(p.delete, vec![("c".to_string(), "uid-c".to_string())]);
        assert_eq!(
            reasons(&p.status),
            [("FailureTarget".into(), "BackoffLimitExceeded".into())]
        );
        assert_eq!(p.events[0].1, "BackoffLimitExceeded");
        // Once nothing runs: Failed.
        let mut j2 = j.clone();
        j2.status = Some(p.status.clone());
        let p = plan(&j2, &[&f1, &f2], B, ts(131));
        assert_eq!(
            reasons(&p.status),
            [
                ("FailureTarget".into(), "BackoffLimitExceeded".into()),
                ("Failed".into(), "BackoffLimitExceeded".into())
            ]
        );
    }

    #[test]
    fn active_deadline() {
        let mut j = job(Some(1), 1, 6);
        j.spec.as_mut().unwrap().active_deadline_seconds = Some(30);
        j.status = Some(JobStatus {
            start_time: Some(Time(ts(100))),
            ..Default::default()
        });
        let r = running(bound(pod("a", 100), "n"), Some(101));
        let p = plan(&j, &[&r], B, ts(120));
        assert_eq!(p.requeue, Some(Duration::from_secs(10)));
        let p = plan(&j, &[&r], B, ts(130));
        assert_eq!(
            reasons(&p.status),
            [("FailureTarget".into(), "DeadlineExceeded".into())]
        );
        assert_eq!(p.delete.len(), 1);
    }

    #[test]
    fn suspend_and_resume() {
        let mut j = job(Some(1), 1, 6);
        j.spec.as_mut().unwrap().suspend = Some(true);
        let r = running(bound(pod("a", 1), "n"), Some(2));
        let p = plan(&j, &[&r], B, ts(10));
        assert_eq!((p.create, p.delete.len()), (0, 1));
        assert_eq!(
            reasons(&p.status),
            [("Suspended".into(), "JobSuspended".into())]
        );
        assert!(p.status.start_time.is_none());
        j.status = Some(p.status);
        j.spec.as_mut().unwrap().suspend = Some(false);
        let p = plan(&j, &[], B, ts(20));
        assert_eq!(p.create, 1);
        assert_eq!(
            reasons(&p.status),
            [("Suspended".into(), "JobResumed".into())]
        );
        assert_eq!(p.status.start_time.as_ref().map(|t| t.0), Some(ts(20)));
    }

    #[test]
    fn work_queue_mode_and_labels() {
        let j = job(None, 3, 6);
        assert_eq!(plan(&j, &[], B, ts(1)).create, 3);
        let done = with_phase(pod("a", 1), "Succeeded");
        let r = running(bound(pod("b", 1), "n"), Some(2));
        let p = plan(&j, &[&done, &r], B, ts(5));
        assert_eq!(
            (p.create, p.delete.len()),
            (0, 0),
            "no new pods after a success; running ones finish"
        );
        let t = pod_template(&j);
        let l = t.metadata.unwrap().labels.unwrap();
        assert_eq!(l.get(CONTROLLER_UID).map(String::as_str), Some("job-uid"));
        assert_eq!(l.get("job-name").map(String::as_str), Some("pi"));
        assert_eq!(l.get(JOB_NAME).map(String::as_str), Some("pi"));
    }
}
