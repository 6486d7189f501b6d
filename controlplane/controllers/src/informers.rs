//! Pod and Node caches shared by the controllers that read all of them (client-go's
//! shared informers): one LIST + WATCH per kind for the whole process, started by the
//! first controller that asks, instead of a cache (or a periodic LIST) per controller.
//! The node lifecycle controller and the pod GC read them.
//!
//! Readiness goes through a `tokio::sync::watch` channel, not through each caller's
//! `Store::wait_until_ready`: kube-runtime 5's `DelayedInit` behind that call polls one
//! `futures` oneshot receiver, which keeps only the last poller's waker, so of two tasks
//! waiting on clones of one store at the same time, one can sleep forever (seen: the node
//! lifecycle controller never started in a CI run while the pod GC waited on the same
//! caches). Here a single task per cache waits on the store and publishes readiness.

use std::sync::{Arc, OnceLock};

use futures::StreamExt as _;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::runtime::{reflector, watcher, WatchStreamExt as _};
use kube::{Api, Client};
use tokio::sync::watch;

/// A started cache and whether its first list has completed.
struct Started<K: kube::Resource<DynamicType = ()> + 'static> {
    store: reflector::Store<K>,
    ready: watch::Receiver<bool>,
}

#[derive(Clone)]
pub struct Informers {
    client: Client,
    pods: Arc<OnceLock<Started<Pod>>>,
    nodes: Arc<OnceLock<Started<Node>>>,
}

impl Informers {
    pub fn new(client: Client) -> Informers {
        Informers {
            client,
            pods: Arc::default(),
            nodes: Arc::default(),
        }
    }

    /// Every pod of the cluster, once the first list is in; starts the watch on first use.
    pub async fn pods(&self) -> anyhow::Result<reflector::Store<Pod>> {
        let s = self
            .pods
            .get_or_init(|| start(Api::all(self.client.clone())));
        ready(s).await
    }

    /// Every node of the cluster, like [`Informers::pods`].
    pub async fn nodes(&self) -> anyhow::Result<reflector::Store<Node>> {
        let s = self
            .nodes
            .get_or_init(|| start(Api::all(self.client.clone())));
        ready(s).await
    }
}

async fn ready<K>(s: &Started<K>) -> anyhow::Result<reflector::Store<K>>
where
    K: kube::Resource<DynamicType = ()> + Clone + 'static,
{
    let mut rx = s.ready.clone();
    rx.wait_for(|r| *r)
        .await
        .map_err(|_| anyhow::anyhow!("the shared cache's watch ended before its first list"))?;
    Ok(s.store.clone())
}

/// A reflector over `api`, driven by a task for the life of the process (it retries with
/// backoff after API errors, as every controller watch does), and the one task that waits
/// for its first list.
fn start<K>(api: Api<K>) -> Started<K>
where
    K: kube::Resource<DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
{
    let (store, writer) = reflector::store::<K>();
    let stream = reflector(writer, watcher(api, watcher::Config::default()))
        .default_backoff()
        .for_each(|_| async {});
    tokio::spawn(stream);
    let (tx, rx) = watch::channel(false);
    let waiter = store.clone();
    tokio::spawn(async move {
        if waiter.wait_until_ready().await.is_ok() {
            let _ = tx.send(true);
        }
    });
    Started { store, ready: rx }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    /// The kube-runtime behaviour this module works around: two tasks waiting on clones
    /// of one store, and the store becoming ready. If this starts passing with both
    /// woken, the workaround can go (the test then fails and says so).
    #[tokio::test]
    async fn two_waiters_on_one_kube_store() {
        use k8s_openapi::api::core::v1::ConfigMap;
        use kube::runtime::{reflector, watcher};
        let (store, mut writer) = reflector::store::<ConfigMap>();
        let (a, b) = (store.clone(), store.clone());
        let ta = tokio::spawn(async move { a.wait_until_ready().await.is_ok() });
        let tb = tokio::spawn(async move { b.wait_until_ready().await.is_ok() });
        // Let both tasks poll (and register their wakers) before the store is ready.
        tokio::time::sleep(Duration::from_millis(50)).await;
        writer.apply_watcher_event(&watcher::Event::Init);
        writer.apply_watcher_event(&watcher::Event::InitDone);
        let woke = |t: tokio::task::JoinHandle<bool>| async move {
            tokio::time::timeout(Duration::from_secs(2), t)
                .await
                .is_ok()
        };
        let (wa, wb) = (woke(ta).await, woke(tb).await);
        assert!(
            !(wa && wb),
            "kube-runtime now wakes every waiter of a store: the watch channel in \
             informers.rs is no longer needed"
        );
        assert!(wa || wb, "neither waiter woke");
    }
}
