//! The scheduler process: watchers of Nodes and Pods feed one scheduling loop that owns
//! the [`Cache`] and the [`SchedulingQueue`] (no locks on the hot path). A decision
//! assumes the pod onto its node at once, then a bounded set of tasks binds it
//! (`POST pods/{name}/binding`) and records the Event; a failed binding forgets the pod
//! and retries it with backoff. A pod that fits nowhere gets a `FailedScheduling` Warning
//! Event and `PodScheduled=False` (reason Unschedulable), as upstream.
//!
//! Events leave through the controllers' [`Recorder`], off the binding path: publishing
//! only queues the Event (dropped when the queue is full, as client-go's broadcaster
//! does) and a few background writers send them, so a binding slot is free again as soon
//! as its POST returns and Event writes take only what the bindings leave of the API
//! server.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Instant;

use anyhow::bail;
use futures::StreamExt as _;
use k8s_openapi::api::core::v1::{Binding, Node, ObjectReference, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Patch, PatchParams, PostParams};
use kube::runtime::watcher;
use kube::runtime::WatchStreamExt as _;
use kube::{Api, Client};
use skiff_controllers::events::{EventType, Recorder};
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};

use crate::info::{pod_key, PodInfo};
use crate::queue::Popped;
use crate::schedule::Algorithm;
use crate::state::State;

/// Settings of the scheduler (flags of `skiff-controlplane`).
#[derive(Debug, Clone)]
pub struct Config {
    /// Pods with this `spec.schedulerName` (or none) are ours.
    pub scheduler_name: String,
    /// None: upstream's adaptive default.
    pub percentage_of_nodes_to_score: Option<u32>,
    /// Bindings (and failure reports) in flight at once.
    pub bind_concurrency: usize,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            scheduler_name: "default-scheduler".into(),
            percentage_of_nodes_to_score: None,
            bind_concurrency: 64,
        }
    }
}

enum Msg {
    // Boxed: a Pod is ~2 KiB, and the channel holds thousands of messages.
    Node(Box<watcher::Event<Node>>),
    Pod(Box<watcher::Event<Pod>>),
    Bound {
        pod: Arc<PodInfo>,
        attempts: u32,
        outcome: BindOutcome,
    },
}

enum BindOutcome {
    Ok,
    /// The pod is gone or already bound elsewhere: the watch tells the rest.
    Gone,
    Retry,
}

/// Runs until the API watches end for good.
pub async fn run(client: Client, config: Config) -> anyhow::Result<()> {
    let (tx, rx) = mpsc::channel::<Msg>(8192);
    tokio::spawn(pump(Api::<Node>::all(client.clone()), tx.clone(), |e| {
        Msg::Node(Box::new(e))
    }));
    tokio::spawn(pump(Api::<Pod>::all(client.clone()), tx.clone(), |e| {
        Msg::Pod(Box::new(e))
    }));
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(1);
    let mut s = Scheduler {
        alg: Algorithm::new(config.percentage_of_nodes_to_score, seed),
        sem: Arc::new(Semaphore::new(config.bind_concurrency.max(1))),
        events: Recorder::new(client.clone(), config.scheduler_name.clone()),
        client,
        st: State::new(config.scheduler_name.clone()),
        tx,
        nodes_synced: false,
        pods_synced: false,
        node_init: None,
        pod_init: None,
        scheduled: 0,
    };
    s.main_loop(rx).await
}

async fn pump<K>(api: Api<K>, tx: mpsc::Sender<Msg>, wrap: fn(watcher::Event<K>) -> Msg)
where
    K: kube::Resource<DynamicType = ()>
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned
        + Send
        + 'static,
{
    let mut stream = watcher(api, watcher::Config::default())
        .default_backoff()
        .boxed();
    while let Some(ev) = stream.next().await {
        match ev {
            Ok(e) => {
                if tx.send(wrap(e)).await.is_err() {
                    return;
                }
            }
            // default_backoff retries; the error is worth a line.
            Err(e) => tracing::warn!("scheduler watch of {}: {e}", K::kind(&())),
        }
    }
}

struct Scheduler {
    client: Client,
    st: State,
    alg: Algorithm,
    events: Recorder,
    sem: Arc<Semaphore>,
    tx: mpsc::Sender<Msg>,
    nodes_synced: bool,
    pods_synced: bool,
    node_init: Option<HashSet<String>>,
    pod_init: Option<HashSet<String>>,
    scheduled: u64,
}

impl Scheduler {
    async fn main_loop(&mut self, mut rx: mpsc::Receiver<Msg>) -> anyhow::Result<()> {
        let mut since_yield = 0u32;
        loop {
            loop {
                match rx.try_recv() {
                    Ok(m) => self.handle(m),
                    Err(mpsc::error::TryRecvError::Empty) => break,
                    Err(mpsc::error::TryRecvError::Disconnected) => {
                        bail!("scheduler inputs closed")
                    }
                }
            }
            let synced = self.nodes_synced && self.pods_synced;
            let now = Instant::now();
            if synced {
                self.st.queue.flush(now);
                if let Ok(permit) = self.sem.clone().try_acquire_owned() {
                    if let Some(p) = self.st.queue.pop(now) {
                        self.schedule_one(p, permit, now);
                        since_yield += 1;
                        if since_yield >= 32 {
                            since_yield = 0;
                            tokio::task::yield_now().await;
                        }
                        continue;
                    }
                }
            }
            let wake = if synced {
                self.st.queue.next_wakeup()
            } else {
                None
            };
            let sleep = async move {
                match wake {
                    Some(t) => tokio::time::sleep_until(t.into()).await,
                    None => std::future::pending::<()>().await,
                }
            };
            let want_permit = synced && self.st.queue.has_active();
            let sem = self.sem.clone();
            tokio::select! {
                m = rx.recv() => match m {
                    Some(m) => self.handle(m),
                    None => bail!("scheduler inputs closed"),
                },
                _ = sleep => {}
                p = sem.acquire_owned(), if want_permit => drop(p),
            }
        }
    }

    fn handle(&mut self, m: Msg) {
        let now = Instant::now();
        match m {
            Msg::Node(ev) => match *ev {
                watcher::Event::Init => self.node_init = Some(HashSet::new()),
                watcher::Event::InitApply(n) => {
                    if let Some(seen) = self.node_init.as_mut() {
                        seen.insert(n.metadata.name.clone().unwrap_or_default());
                    }
                    self.st.on_node(n, now);
                }
                watcher::Event::InitDone => {
                    if let Some(seen) = self.node_init.take() {
                        for n in self.st.cache.node_names() {
                            if !seen.contains(&n) {
                                self.st.cache.remove_node(&n);
                            }
                        }
                    }
                    if !self.nodes_synced {
                        tracing::info!("scheduler: {} nodes synced", self.st.cache.live_nodes());
                    }
                    self.nodes_synced = true;
                }
                watcher::Event::Apply(n) => self.st.on_node(n, now),
                watcher::Event::Delete(n) => {
                    self.st
                        .cache
                        .remove_node(n.metadata.name.as_deref().unwrap_or_default());
                }
            },
            Msg::Pod(ev) => match *ev {
                watcher::Event::Init => self.pod_init = Some(HashSet::new()),
                watcher::Event::InitApply(p) => {
                    if let Some(seen) = self.pod_init.as_mut() {
                        seen.insert(pod_key(&p));
                    }
                    self.st.on_pod(p, now);
                }
                watcher::Event::InitDone => {
                    if let Some(seen) = self.pod_init.take() {
                        let mut keys = self.st.cache.pod_keys();
                        keys.extend(self.st.queue.keys());
                        for k in keys {
                            if !seen.contains(&k) {
                                self.st.on_pod_gone(&k, now);
                            }
                        }
                    }
                    self.pods_synced = true;
                }
                watcher::Event::Apply(p) => self.st.on_pod(p, now),
                watcher::Event::Delete(p) => self.st.on_pod_gone(&pod_key(&p), now),
            },
            Msg::Bound {
                pod,
                attempts,
                outcome,
            } => match outcome {
                BindOutcome::Ok => {
                    self.scheduled += 1;
                    if self.scheduled.is_multiple_of(1000) {
                        tracing::info!("scheduler: {} pods bound", self.scheduled);
                    }
                }
                BindOutcome::Gone => self.st.cache.forget(&pod.key),
                BindOutcome::Retry => {
                    self.st.cache.forget(&pod.key);
                    self.st.queue.retry(pod, attempts, now);
                }
            },
        }
    }

    fn schedule_one(&mut self, p: Popped, permit: OwnedSemaphorePermit, now: Instant) {
        match self.alg.schedule(&p.pod, &self.st.cache) {
            Ok(d) => {
                tracing::debug!(
                    "scheduler: {} -> {} ({} evaluated, {} feasible)",
                    p.pod.key,
                    d.node,
                    d.evaluated,
                    d.feasible
                );
                self.st.queue.done(&p.pod.key);
                self.st.cache.assume(p.pod.clone(), &d.node);
                tokio::spawn(bind(
                    self.client.clone(),
                    self.events.clone(),
                    self.tx.clone(),
                    p,
                    d.node,
                    permit,
                ));
            }
            Err(e) => {
                let msg = e.to_string();
                tracing::info!("scheduler: {} unschedulable: {msg}", p.pod.key);
                self.st.queue.unschedulable(&p.pod.key, p.cycle, now);
                tokio::spawn(report_unschedulable(
                    self.client.clone(),
                    self.events.clone(),
                    p.pod,
                    msg,
                    permit,
                ));
            }
        }
    }
}

fn pods_api(client: Client, pod: &PodInfo) -> Api<Pod> {
    Api::namespaced(client, &pod.namespace)
}

async fn bind(
    client: Client,
    events: Recorder,
    tx: mpsc::Sender<Msg>,
    p: Popped,
    node: String,
    permit: OwnedSemaphorePermit,
) {
    let name = p.pod.pod.metadata.name.clone().unwrap_or_default();
    let binding = Binding {
        metadata: ObjectMeta {
            name: Some(name.clone()),
            namespace: Some(p.pod.namespace.clone()),
            uid: p.pod.pod.metadata.uid.clone(),
            ..Default::default()
        },
        target: ObjectReference {
            api_version: Some("v1".into()),
            kind: Some("Node".into()),
            name: Some(node.clone()),
            ..Default::default()
        },
    };
    let api = pods_api(client, &p.pod);
    let r: Result<serde_json::Value, kube::Error> = api
        .create_subresource("binding", &name, &PostParams::default(), &binding)
        .await;
    let outcome = match &r {
        Ok(_) => BindOutcome::Ok,
        Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => BindOutcome::Gone,
        Err(_) => BindOutcome::Retry,
    };
    // The slot is free once the API answered: the Event does not hold it.
    drop(permit);
    match r {
        Ok(_) => {
            events
                .publish(
                    &p.pod.pod,
                    EventType::Normal,
                    "Scheduled",
                    &format!("Successfully assigned {} to {node}", p.pod.key),
                )
                .await
        }
        Err(e) => {
            tracing::warn!("scheduler: binding {} to {node}: {e}", p.pod.key);
            events
                .publish(
                    &p.pod.pod,
                    EventType::Warning,
                    "FailedScheduling",
                    &format!("Binding rejected: {e}"),
                )
                .await;
        }
    }
    let _ = tx
        .send(Msg::Bound {
            pod: p.pod.clone(),
            attempts: p.attempts,
            outcome,
        })
        .await;
}

/// The Warning Event and `PodScheduled=False` for a pod no node fits (skipped when the
/// pod already carries exactly that condition, as upstream's `updatePod`).
async fn report_unschedulable(
    client: Client,
    events: Recorder,
    pod: Arc<PodInfo>,
    msg: String,
    permit: OwnedSemaphorePermit,
) {
    events
        .publish(&pod.pod, EventType::Warning, "FailedScheduling", &msg)
        .await;
    let same = pod
        .pod
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|c| c.iter().find(|c| c.type_ == "PodScheduled"))
        .is_some_and(|c| {
            c.status == "False"
                && c.reason.as_deref() == Some("Unschedulable")
                && c.message.as_deref() == Some(msg.as_str())
        });
    if !same {
        let patch = serde_json::json!({
            "status": {"conditions": [{
                "type": "PodScheduled",
                "status": "False",
                "reason": "Unschedulable",
                "message": msg,
                "lastProbeTime": null,
                "lastTransitionTime": Time(Timestamp::now()),
            }]}
        });
        let name = pod.pod.metadata.name.clone().unwrap_or_default();
        if let Err(e) = pods_api(client, &pod)
            .patch_status(&name, &PatchParams::default(), &Patch::Strategic(&patch))
            .await
        {
            tracing::debug!("scheduler: PodScheduled condition of {}: {e}", pod.key);
        }
    }
    drop(permit);
}
