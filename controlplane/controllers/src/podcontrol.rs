//! Creating and deleting a controller's pods: upstream's `PodControl`
//! (`pkg/controller/controller_utils.go`) with what every pod-owning controller
//! (ReplicaSet, DaemonSet, Job) does around it: slow-start batches, controller
//! expectations, a log line per action and the Events upstream records
//! (`SuccessfulCreate`, `FailedCreate`, `SuccessfulDelete`, `FailedDelete`), so the three
//! say and count the same.

use futures::future::join_all;
use k8s_openapi::api::core::v1::Pod;
use kube::{
    api::{DeleteParams, PostParams, Preconditions},
    Api, Resource, ResourceExt as _,
};

use crate::{events::EventType, expectations::Expectations, ownership, Ctx};

/// One controller object's pods.
pub struct PodControl<'a, K> {
    pub ctx: &'a Ctx,
    pub expectations: &'a Expectations,
    /// The owner's work-queue key (`namespace/name`), for expectations and logs.
    pub key: &'a str,
    /// The controller's name in log lines: "replicaset", "daemonset", "job".
    pub kind: &'a str,
    pub owner: &'a K,
    pub api: &'a Api<Pod>,
}

impl<K: Resource<DynamicType = ()>> PodControl<'_, K> {
    /// Creates `count` pods, `pod(i)` for the i-th, in slow-start batches (1, 2, 4 …, as
    /// upstream's `slowStartBatch`: a failing create stops the rest). Every created pod is
    /// expected and announced (`describe` adds to its log line, e.g. its node); the first
    /// error gets a `FailedCreate` Event and is returned beside what was created.
    pub async fn create(
        &self,
        count: usize,
        pod: impl Fn(usize) -> Pod,
        describe: impl Fn(&Pod) -> String,
    ) -> (Vec<Pod>, Option<kube::Error>) {
        let (created, err) = ownership::slow_start_batch(count, |i| {
            let (api, pod) = (self.api.clone(), pod(i));
            async move { api.create(&PostParams::default(), &pod).await }
        })
        .await;
        self.expectations.expect_creations(
            self.key,
            created
                .iter()
                .map(|p| (p.name_any(), p.uid().unwrap_or_default())),
        );
        for p in &created {
            tracing::info!(
                "{} {}: created pod {}{}",
                self.kind,
                self.key,
                p.name_any(),
                describe(p)
            );
            self.ctx
                .events
                .publish(
                    self.owner,
                    EventType::Normal,
                    "SuccessfulCreate",
                    &format!("Created pod: {}", p.name_any()),
                )
                .await;
        }
        if let Some(e) = &err {
            let msg = format!("Error creating: {e}");
            tracing::warn!("{} {}: {msg}", self.kind, self.key);
            self.ctx
                .events
                .publish(self.owner, EventType::Warning, "FailedCreate", &msg)
                .await;
        }
        (created, err)
    }

    /// Deletes `victims` (name, uid) in parallel, each with a uid precondition (a pod of the
    /// same name created since is not this one). Every deletion is expected before it is
    /// sent; a pod already gone (404) is fine. A failed delete gets a `FailedDelete` Event
    /// and the expectations are dropped (the deletion will not be observed); the first
    /// error is returned once every result is handled.
    pub async fn delete(&self, victims: &[(String, String)]) -> Result<(), kube::Error> {
        if victims.is_empty() {
            return Ok(());
        }
        self.expectations
            .expect_deletions(self.key, victims.iter().cloned());
        let results = join_all(victims.iter().map(|(name, uid)| {
            let api = self.api.clone();
            async move {
                let dp = DeleteParams {
                    preconditions: Some(Preconditions {
                        uid: Some(uid.clone()),
                        resource_version: None,
                    }),
                    ..Default::default()
                };
                (name, api.delete(name, &dp).await)
            }
        }))
        .await;
        let mut first = None;
        for (name, r) in results {
            match r {
                Ok(_) => {
                    tracing::info!("{} {}: deleted pod {name}", self.kind, self.key);
                    self.ctx
                        .events
                        .publish(
                            self.owner,
                            EventType::Normal,
                            "SuccessfulDelete",
                            &format!("Deleted pod: {name}"),
                        )
                        .await;
                }
                Err(kube::Error::Api(e)) if e.code == 404 => {}
                Err(e) => {
                    tracing::warn!("{} {}: deleting pod {name}: {e}", self.kind, self.key);
                    self.ctx
                        .events
                        .publish(
                            self.owner,
                            EventType::Warning,
                            "FailedDelete",
                            &format!("Error deleting: {e}"),
                        )
                        .await;
                    self.expectations.forget(self.key);
                    first.get_or_insert(e);
                }
            }
        }
        first.map_or(Ok(()), Err)
    }
}
