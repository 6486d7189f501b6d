//! The plumbing the workload controllers share on top of `kube::runtime`: one pod
//! reflector per controller whose stream both fills the cache and triggers the owners
//! (the cache is updated before the trigger fires, so a reconcile never sees a trigger
//! for a pod its cache does not have yet), draining a controller's result stream with
//! logs, and per-key error backoff.

use std::fmt::Debug;

use futures::{Stream, StreamExt as _};
use k8s_openapi::api::core::v1::Pod;
use kube::{
    runtime::{
        controller::{self, Action},
        reflector::{self, ObjectRef, Store},
        watcher, WatchStreamExt as _,
    },
    Api, Client, Resource, ResourceExt as _,
};
use serde::de::DeserializeOwned;

use crate::{backoff::Backoff, expectations::Seen};

/// A reflector over `Api<K>::all`: the cache, and the stream of touched objects that
/// drives it (poll it, e.g. by handing it to `Controller::watches_stream`).
pub fn reflect<K>(
    client: &Client,
) -> (
    Store<K>,
    impl Stream<Item = Result<K, watcher::Error>> + Send + 'static,
)
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
{
    let (store, writer) = reflector::store();
    let api: Api<K> = Api::all(client.clone());
    let stream = reflector::reflector(writer, watcher(api, watcher::Config::default()))
        .default_backoff()
        .touched_objects();
    (store, stream)
}

/// `namespace/name`, the key for logs, backoff and expectations.
pub fn key<K: Resource>(obj: &K) -> String {
    format!(
        "{}/{}",
        obj.meta().namespace.as_deref().unwrap_or(""),
        obj.meta().name.as_deref().unwrap_or("")
    )
}

/// Looks a pod up in the cache for [`crate::expectations::Expectations::satisfied`].
pub fn seen<'a>(pods: &'a Store<Pod>, namespace: &str) -> impl Fn(&str) -> Seen + 'a {
    let ns = namespace.to_string();
    move |name| match pods.get(&ObjectRef::new(name).within(&ns)) {
        Some(p) => Seen::Present {
            uid: p.uid().unwrap_or_default(),
            terminating: p.metadata.deletion_timestamp.is_some(),
        },
        None => Seen::Absent,
    }
}

/// The owner references of kind `kind` with `controller: true` on `obj`, as ObjectRefs.
pub fn controller_owner<K>(obj: &impl Resource, kind: &str) -> Option<ObjectRef<K>>
where
    K: Resource<DynamicType = ()>,
{
    let r = crate::ownership::controller_ref(obj.meta())?;
    let ns = obj.meta().namespace.as_deref()?;
    (r.kind == kind).then(|| ObjectRef::new(&r.name).within(ns))
}

/// Runs a controller's result stream to its end, logging failed reconciles (the
/// controller requeues them itself).
pub async fn drain<K, E, Q>(
    name: &str,
    results: impl Stream<Item = Result<(ObjectRef<K>, Action), controller::Error<E, Q>>>,
) where
    K: Resource,
    E: std::error::Error + 'static,
    Q: std::error::Error + 'static,
{
    results
        .for_each(|r| async move {
            match r {
                Ok(_) => {}
                Err(controller::Error::ObjectNotFound(o)) => {
                    tracing::debug!("{name}: {o} is gone")
                }
                Err(controller::Error::ReconcilerFailed(e, o)) if is_conflict(&e) => {
                    // Optimistic concurrency: planned from a cache that was behind; the
                    // retry (milliseconds later) plans from the newer one.
                    tracing::debug!("{name}: reconciling {o}: conflict, retrying: {e}")
                }
                Err(controller::Error::ReconcilerFailed(e, o)) => {
                    tracing::warn!("{name}: reconciling {o} failed: {e}")
                }
                Err(e) => tracing::warn!("{name}: {e}"),
            }
        })
        .await
}

/// A 409 Conflict from the API (a write planned from a stale object).
pub fn is_conflict(e: &(dyn std::error::Error + 'static)) -> bool {
    matches!(e.downcast_ref::<kube::Error>(), Some(kube::Error::Api(s)) if s.code == 409)
}

/// The error policy every controller uses: exponential per-key backoff.
pub fn requeue_after_failure<K: Resource>(obj: &K, backoff: &Backoff) -> Action {
    Action::requeue(backoff.failed(&key(obj)))
}
