//! Pod and Node caches shared by the controllers that read all of them (client-go's
//! shared informers): one LIST + WATCH per kind for the whole process, started by the
//! first controller that asks, instead of a cache (or a periodic LIST) per controller.
//! The node lifecycle controller and the pod GC read them.

use std::sync::{Arc, OnceLock};

use futures::StreamExt as _;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::runtime::{reflector, watcher, WatchStreamExt as _};
use kube::{Api, Client};

#[derive(Clone)]
pub struct Informers {
    client: Client,
    pods: Arc<OnceLock<reflector::Store<Pod>>>,
    nodes: Arc<OnceLock<reflector::Store<Node>>>,
}

impl Informers {
    pub fn new(client: Client) -> Informers {
        Informers {
            client,
            pods: Arc::default(),
            nodes: Arc::default(),
        }
    }

    /// Every pod of the cluster; starts the watch on first use (call inside the runtime).
    /// Await `wait_until_ready` before trusting it.
    pub fn pods(&self) -> reflector::Store<Pod> {
        self.pods
            .get_or_init(|| start(Api::all(self.client.clone())))
            .clone()
    }

    /// Every node of the cluster, like [`Informers::pods`].
    pub fn nodes(&self) -> reflector::Store<Node> {
        self.nodes
            .get_or_init(|| start(Api::all(self.client.clone())))
            .clone()
    }
}

/// A reflector over `api`, driven by a task for the life of the process (it retries with
/// backoff after API errors, as every controller watch does).
fn start<K>(api: Api<K>) -> reflector::Store<K>
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
    store
}
