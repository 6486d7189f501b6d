//! The API side: a kube-rs watch of the node's Pods (`spec.nodeName=<node>`), one worker
//! task per pod, status written through `/status` only when it changed, and the
//! kubelet's final delete (`gracePeriodSeconds=0`) once a deleted pod's containers are
//! gone and its network is released.

use std::{
    collections::{BTreeMap, HashMap},
    future::Future,
    path::PathBuf,
    process::Stdio,
    sync::{Arc, Mutex},
    time::{Duration, SystemTime},
};

use futures::StreamExt as _;
use k8s_openapi::api::core::v1::{ConfigMap, Container, Pod, Secret};
use kube::{
    api::{DeleteParams, Patch, PatchParams, Preconditions},
    runtime::{watcher, WatchStreamExt as _},
    Api, Client,
};
use serde_json::{json, Value};
use tokio::{
    sync::{mpsc, watch},
    task::JoinHandle,
};

use crate::{
    adopt,
    env::{self, PodFacts, Refs},
    hooks::{self, Hook},
    image,
    lifecycle::{Action, Lifecycle, StartFailure, StatusInputs},
    limits::{Controllers, PodLimits},
    logs::{self, RotatingLog},
    probe::{self, ProbeKind},
    prober, process,
    sandbox::{self, Sandbox},
    static_pods, volumes, Config,
};

/// Runs the Pods bound to a node.
pub struct Runtime;

/// The runtime stopped.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Not returned any more: what an earlier run left is adopted or released per pod,
    /// and a failed release is logged (kept so that callers' matches stay valid).
    #[error("cleaning up after an earlier run: {0}")]
    Garbage(String),
}

/// Options of [`Runtime::run_with`].
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Static pod manifests (`--pod-manifest-path`), see [`static_pods`].
    pub pod_manifest_path: Option<PathBuf>,
    /// How often the manifests are read and the mirror pods checked (the kubelet's file
    /// source: 20 s).
    pub manifest_poll: Duration,
}

impl Default for RunOptions {
    fn default() -> Self {
        RunOptions {
            pod_manifest_path: None,
            manifest_poll: Duration::from_secs(20),
        }
    }
}

/// What a worker learns about its pod.
#[derive(Debug, Clone)]
enum Update {
    Pod(Box<Pod>),
    /// Removed from the API (force-deleted, or gone from a relist).
    Gone,
    /// The runtime stops: stop the pod's processes and release its network, but leave
    /// the API object alone.
    Shutdown,
}

struct Handle {
    tx: watch::Sender<Update>,
    task: JoinHandle<()>,
    /// Set when the worker ended by stopping the pod for its deletion in the API: the
    /// pod's status updates and events that still arrive until the object is gone must
    /// not start a second worker (it would publish a fresh, empty status for a pod that
    /// was already stopped and confirm the deletion again).
    deleted: Arc<std::sync::atomic::AtomicBool>,
}

impl Runtime {
    /// Runs until the watch fails fatally (it retries transient errors with backoff).
    pub async fn run(client: Client, node_name: &str, config: Config) -> Result<(), Error> {
        Self::run_until(client, node_name, config, std::future::pending()).await
    }

    /// Like [`Runtime::run`], until `shutdown` completes; then every pod's processes are
    /// stopped and their networks released (the API objects stay).
    pub async fn run_until(
        client: Client,
        node_name: &str,
        config: Config,
        shutdown: impl Future<Output = ()>,
    ) -> Result<(), Error> {
        Self::run_with(client, node_name, config, RunOptions::default(), shutdown).await
    }

    /// [`Runtime::run_until`] with [`RunOptions`] (static pods).
    pub async fn run_with(
        client: Client,
        node_name: &str,
        config: Config,
        options: RunOptions,
        shutdown: impl Future<Output = ()>,
    ) -> Result<(), Error> {
        // Pods an earlier run left: adopted by their workers when the API still has them
        // with the same spec (see `adopt`), released after the first complete list
        // otherwise.
        let mut leftovers = sandbox::leftovers(&config);
        // Resource limits: which controllers this host offers, found once.
        let controllers = Arc::new(Controllers::discover(&config.cgroup_parent));
        {
            let keep = leftovers.clone();
            controllers.collect_garbage(&|name| {
                name.strip_prefix("skiff-pod-")
                    .is_some_and(|u| keep.contains(u))
            });
        }
        let cfg = Arc::new(config);
        let shared = Shared {
            client: client.clone(),
            cfg: cfg.clone(),
            controllers: controllers.clone(),
            node: node_name.to_string(),
        };
        let pods: Api<Pod> = Api::all(client.clone());
        let wc = watcher::Config::default().fields(&format!("spec.nodeName={node_name}"));
        // default_backoff: a failing watch is retried with exponential backoff.
        let mut stream = watcher(pods, wc).default_backoff().boxed();
        let mut workers: HashMap<String, Handle> = HashMap::new();
        let mut listing: Option<Vec<String>> = None;
        let (done_tx, mut done_rx) = mpsc::unbounded_channel::<String>();
        // Static pods: by UID, with the last manifest errors (logged when they change).
        let mut statics: HashMap<String, Pod> = HashMap::new();
        let mut manifest_errors: Vec<String> = Vec::new();
        let mut manifest_tick =
            tokio::time::interval(options.manifest_poll.max(Duration::from_millis(10)));
        let (mirror_tx, mut mirror_rx) = mpsc::unbounded_channel::<String>();
        let mut mirror_task: Option<JoinHandle<()>> = None;
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                _ = &mut shutdown => break,
                _ = manifest_tick.tick(), if options.pod_manifest_path.is_some() => {
                    let dir = options.pod_manifest_path.as_deref().expect("checked");
                    let mut desired: HashMap<String, Pod> = HashMap::new();
                    let mut errors = Vec::new();
                    for (_, m) in static_pods::read_dir(dir, node_name) {
                        match m {
                            static_pods::Manifest::Pod(p) => {
                                let uid = p.metadata.uid.clone().unwrap_or_default();
                                // Unchanged manifests keep the object first seen (config.seen).
                                let p = statics.get(&uid).cloned().unwrap_or(*p);
                                desired.insert(uid, p);
                            }
                            static_pods::Manifest::Invalid(e) => errors.push(e),
                        }
                    }
                    if errors != manifest_errors {
                        for e in &errors {
                            tracing::warn!("static pod manifest ignored: {e}");
                        }
                        manifest_errors = errors;
                    }
                    for (uid, p) in &statics {
                        if !desired.contains_key(uid) {
                            tracing::info!(pod = ?p.metadata.name, "static pod manifest removed or changed");
                            if let Some(h) = workers.get(uid) {
                                let _ = h.tx.send(Update::Gone);
                            }
                        }
                    }
                    for (uid, p) in &desired {
                        if !statics.contains_key(uid) {
                            apply(&shared, &mut workers, &done_tx, &mut leftovers, p.clone());
                        }
                    }
                    statics = desired;
                    if mirror_task.as_ref().is_none_or(|t| t.is_finished()) {
                        mirror_task = Some(tokio::spawn(static_pods::sync_mirrors(
                            client.clone(),
                            node_name.to_string(),
                            statics.values().cloned().collect(),
                            mirror_tx.clone(),
                        )));
                    }
                }
                Some(uid) = mirror_rx.recv() => {
                    // A mirror pod was (re)created: its worker writes the status again.
                    if let (Some(h), Some(p)) = (workers.get(&uid), statics.get(&uid)) {
                        let _ = h.tx.send(Update::Pod(Box::new(p.clone())));
                    }
                }
                Some(uid) = done_rx.recv() => {
                    if let Some(h) = workers.get(&uid) {
                        if h.task.is_finished() {
                            workers.remove(&uid);
                        }
                    }
                }
                ev = stream.next() => {
                    let Some(ev) = ev else { break };
                    let ev = match ev {
                        Ok(ev) => ev,
                        Err(e) => {
                            // The stream backs off and relists by itself.
                            tracing::warn!("watching pods of node {node_name}: {e}");
                            continue;
                        }
                    };
                    match ev {
                        watcher::Event::Init => listing = Some(Vec::new()),
                        // Mirror pods reflect static pods; they never run themselves.
                        watcher::Event::InitApply(p) | watcher::Event::Apply(p) if static_pods::is_mirror(&p) => {}
                        watcher::Event::InitApply(p) => {
                            if let (Some(l), Some(uid)) = (listing.as_mut(), p.metadata.uid.clone()) {
                                l.push(uid);
                            }
                            apply(&shared, &mut workers, &done_tx, &mut leftovers, p);
                        }
                        watcher::Event::InitDone => {
                            if let Some(seen) = listing.take() {
                                for (uid, h) in &workers {
                                    if !seen.contains(uid) && !statics.contains_key(uid) {
                                        let _ = h.tx.send(Update::Gone);
                                    }
                                }
                                // Left by an earlier run and not in the API: released.
                                for uid in std::mem::take(&mut leftovers) {
                                    tracing::info!(uid, "releasing a pod an earlier runtime left");
                                    if let Err(e) = sandbox::release_leftover(&cfg, &uid).await {
                                        tracing::warn!(uid, "{e}");
                                    }
                                }
                                let active: std::collections::HashSet<String> = workers.keys().cloned().collect();
                                controllers.collect_garbage(&|name| {
                                    name.strip_prefix("skiff-pod-").is_some_and(|u| active.contains(u))
                                });
                            }
                        }
                        watcher::Event::Apply(p) => {
                            apply(&shared, &mut workers, &done_tx, &mut leftovers, p)
                        }
                        watcher::Event::Delete(p) => {
                            if let Some(h) = p.metadata.uid.as_ref().and_then(|u| workers.get(u)) {
                                let _ = h.tx.send(Update::Gone);
                            }
                        }
                    }
                }
            }
        }
        if let Some(t) = mirror_task {
            t.abort();
        }
        for h in workers.values() {
            let _ = h.tx.send(Update::Shutdown);
        }
        for (_, h) in workers {
            let _ = h.task.await;
        }
        Ok(())
    }
}

/// What every worker gets.
struct Shared {
    client: Client,
    cfg: Arc<Config>,
    controllers: Arc<Controllers>,
    node: String,
}

fn apply(
    shared: &Shared,
    workers: &mut HashMap<String, Handle>,
    done: &mpsc::UnboundedSender<String>,
    leftovers: &mut std::collections::HashSet<String>,
    pod: Pod,
) {
    let Some(uid) = pod.metadata.uid.clone() else {
        return;
    };
    if let Some(h) = workers.get(&uid) {
        if !h.task.is_finished() {
            let _ = h.tx.send(Update::Pod(Box::new(pod)));
            return;
        }
    }
    let deleting = pod.metadata.deletion_timestamp.is_some();
    let terminal = matches!(
        pod.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Succeeded" | "Failed")
    );
    if let Some(h) = workers.get(&uid) {
        if !deleting || h.deleted.load(std::sync::atomic::Ordering::SeqCst) {
            // Its worker finished: a terminal pod runs nothing until it is deleted, and a
            // pod whose deletion was carried out is done for good.
            return;
        }
    }
    if terminal && !deleting {
        // Finished before this runtime started: a terminal pod never runs again.
        return;
    }
    let (tx, rx) = watch::channel(Update::Pod(Box::new(pod.clone())));
    let mut w = Worker::new(
        shared.client.clone(),
        shared.cfg.clone(),
        shared.controllers.clone(),
        shared.node.clone(),
        pod,
    );
    w.adopt_pending = leftovers.remove(&uid);
    let done = done.clone();
    let key = uid.clone();
    let deleted = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = deleted.clone();
    let task = tokio::spawn(async move {
        if w.run(rx).await {
            flag.store(true, std::sync::atomic::Ordering::SeqCst);
        }
        let _ = done.send(uid);
    });
    workers.insert(key, Handle { tx, task, deleted });
}

/// An event from a container's helper tasks.
#[derive(Debug)]
enum Event {
    Exited {
        container: String,
        instance: u64,
        code: i32,
        signal: Option<i32>,
        /// The memory limit killed it.
        oom: bool,
    },
    Probe {
        container: String,
        instance: u64,
        kind: ProbeKind,
        ok: bool,
        message: Option<String>,
    },
}

/// A running container instance.
struct Proc {
    instance: u64,
    pidfd: Arc<std::os::fd::OwnedFd>,
    spec: process::Spec,
    cgroup: PathBuf,
    exited: watch::Receiver<bool>,
}

struct Worker {
    client: Client,
    cfg: Arc<Config>,
    node: String,
    pod: Pod,
    uid: String,
    namespace: String,
    name: String,
    life: Lifecycle,
    sandbox: Option<Sandbox>,
    sandbox_retry: Option<tokio::time::Instant>,
    sandbox_failures: u32,
    refs: Option<Refs>,
    volumes: Option<BTreeMap<String, PathBuf>>,
    procs: HashMap<String, Proc>,
    tx: mpsc::UnboundedSender<Event>,
    rx: mpsc::UnboundedReceiver<Event>,
    published: Option<Value>,
    publish_retry: bool,
    log_dir: PathBuf,
    controllers: Arc<Controllers>,
    /// The pod's limits, applied with its sandbox.
    limits: Option<PodLimits>,
    /// What a container's limits could not enforce (for the pod status), by container.
    unenforced: BTreeMap<String, Vec<String>>,
    /// Termination messages of instances killed because their postStart hook failed.
    hook_failures: HashMap<(String, u64), String>,
    /// An earlier run left this pod's sandbox: try to adopt it before creating one.
    adopt_pending: bool,
    /// Container processes of an earlier run to take over at their next start.
    adopted: HashMap<String, adopt::Record>,
    /// Adopted instances: their exit status is unknown.
    unknown_exits: std::collections::HashSet<(String, u64)>,
}

impl Worker {
    fn new(
        client: Client,
        cfg: Arc<Config>,
        controllers: Arc<Controllers>,
        node: String,
        pod: Pod,
    ) -> Worker {
        let (tx, rx) = mpsc::unbounded_channel();
        let life = Lifecycle::new(&pod, cfg.backoff, SystemTime::now());
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        let namespace = pod
            .metadata
            .namespace
            .clone()
            .unwrap_or_else(|| "default".into());
        let name = pod.metadata.name.clone().unwrap_or_default();
        let log_dir = logs::pod_dir(&cfg.log_dir, &namespace, &name, &uid);
        Worker {
            client,
            cfg,
            node,
            pod,
            uid,
            namespace,
            name,
            life,
            sandbox: None,
            sandbox_retry: None,
            sandbox_failures: 0,
            refs: None,
            volumes: None,
            procs: HashMap::new(),
            tx,
            rx,
            published: None,
            publish_retry: false,
            log_dir,
            controllers,
            limits: None,
            unenforced: BTreeMap::new(),
            hook_failures: HashMap::new(),
            adopt_pending: false,
            adopted: HashMap::new(),
            unknown_exits: Default::default(),
        }
    }

    fn api(&self) -> Api<Pod> {
        Api::namespaced(self.client.clone(), &self.namespace)
    }

    /// Runs the pod until it is deleted, gone or the runtime shuts down; true when it was
    /// stopped for its deletion in the API.
    async fn run(mut self, mut updates: watch::Receiver<Update>) -> bool {
        tracing::info!(pod = %format!("{}/{}", self.namespace, self.name), "starting pod");
        let mut end = None;
        loop {
            let update = updates.borrow_and_update().clone();
            match update {
                Update::Pod(p) => {
                    if static_pods::is_static(&p) {
                        // Sent when its mirror pod was (re)created: publish again.
                        self.published = None;
                    }
                    self.life.set_foreign_conditions(&p, SystemTime::now());
                    let deleting = p.metadata.deletion_timestamp.is_some();
                    self.pod = *p;
                    if deleting {
                        end = Some(Update::Pod(Box::new(self.pod.clone())));
                    }
                }
                other => end = Some(other),
            }
            if end.is_some() {
                break;
            }
            if self.adopt_pending {
                self.adopt_pending = false;
                self.try_adopt().await;
            }
            if self.sandbox.is_none()
                && !self.life.phase().is_terminal()
                && self
                    .sandbox_retry
                    .is_none_or(|t| t <= tokio::time::Instant::now())
            {
                match Sandbox::create(&self.cfg, &self.pod).await {
                    Ok(s) => {
                        tracing::info!(pod = %self.name, ips = ?s.ips, "sandbox ready");
                        if let Err(e) = std::fs::write(
                            s.dir.join(adopt::SPEC_HASH_FILE),
                            adopt::spec_hash(&self.pod),
                        ) {
                            tracing::warn!(pod = %self.name, "writing the spec hash: {e}");
                        }
                        let spec = self.pod.spec.clone().unwrap_or_default();
                        let l = PodLimits::apply(&self.controllers, &s.cgroup, &spec);
                        for e in &l.unenforced {
                            tracing::warn!(pod = %self.name, "resource limits: {e}");
                        }
                        self.limits = Some(l);
                        self.sandbox = Some(s);
                        self.sandbox_retry = None;
                    }
                    Err(e) => {
                        // The kubelet's FailedCreatePodSandBox: retried with backoff.
                        tracing::warn!(pod = %self.name, "creating the pod sandbox: {e}");
                        let delay = self
                            .cfg
                            .backoff
                            .initial
                            .saturating_mul(1 << self.sandbox_failures.min(16))
                            .min(self.cfg.backoff.max);
                        self.sandbox_failures += 1;
                        self.sandbox_retry = Some(tokio::time::Instant::now() + delay);
                    }
                }
            }
            if self.sandbox.is_some() {
                let actions = self.life.plan(SystemTime::now());
                for a in actions {
                    self.execute(a).await;
                }
            }
            self.publish().await;
            // Wait for something to happen.
            let mut wake = self.life.next_wakeup().map(to_instant);
            if self.sandbox.is_none() {
                wake = min_opt(wake, self.sandbox_retry);
            }
            if self.publish_retry {
                wake = min_opt(
                    wake,
                    Some(tokio::time::Instant::now() + Duration::from_secs(1)),
                );
            }
            let sleep = tokio::time::sleep_until(
                wake.unwrap_or_else(|| tokio::time::Instant::now() + Duration::from_secs(3600)),
            );
            tokio::select! {
                ev = self.rx.recv() => if let Some(ev) = ev { self.on_event(ev) },
                r = updates.changed() => if r.is_err() { end = Some(Update::Shutdown); break },
                _ = sleep => {}
            }
            // Drain whatever else arrived, so one status write covers it.
            while let Ok(ev) = self.rx.try_recv() {
                self.on_event(ev);
            }
        }
        self.terminate(end.unwrap_or(Update::Shutdown)).await
    }

    fn on_event(&mut self, ev: Event) {
        let now = SystemTime::now();
        match ev {
            Event::Exited {
                container,
                instance,
                code,
                signal,
                oom,
            } => {
                tracing::info!(pod = %self.name, container, instance, code, oom, "container exited");
                if self
                    .procs
                    .get(&container)
                    .is_some_and(|p| p.instance == instance)
                {
                    self.procs.remove(&container);
                }
                self.life.exited(&container, instance, code, signal, now);
                if oom {
                    self.life.oom_killed(&container, instance);
                }
                if self.unknown_exits.remove(&(container.clone(), instance)) {
                    self.life
                        .set_termination_reason(&container, instance, adopt::UNKNOWN_REASON);
                }
                if let Some(m) = self.hook_failures.remove(&(container.clone(), instance)) {
                    self.life.set_termination_message(&container, instance, m);
                }
            }
            Event::Probe {
                container,
                instance,
                kind,
                ok,
                message,
            } => {
                if !ok {
                    tracing::debug!(pod = %self.name, container, ?kind, ?message, "probe failed");
                }
                self.life
                    .probe_result(&container, instance, kind, ok, message, now)
            }
        }
    }

    fn container(&self, name: &str) -> Option<Container> {
        let spec = self.pod.spec.as_ref()?;
        spec.init_containers
            .iter()
            .flatten()
            .chain(spec.containers.iter())
            .find(|c| c.name == name)
            .cloned()
    }

    /// Where a hook (or probe) of `container` runs.
    fn hook_target(&self, container: &Container, spec: Option<process::Spec>) -> prober::Target {
        prober::Target {
            host_netns: self.cfg.cni.host_netns.clone(),
            pod_ip: self.sandbox.as_ref().and_then(|s| s.ips.first().copied()),
            ports: container.ports.clone().unwrap_or_default(),
            exec: spec,
        }
    }

    /// The preStop hook of a running container, with where it runs.
    fn pre_stop(&self, name: &str, p: &Proc) -> Option<(Hook, prober::Target)> {
        let c = self.container(name)?;
        let hook = hooks::pre_stop(&c)?;
        Some((hook, self.hook_target(&c, Some(p.spec.clone()))))
    }

    fn grace(&self) -> Duration {
        let s = self
            .pod
            .metadata
            .deletion_grace_period_seconds
            .or_else(|| {
                self.pod
                    .spec
                    .as_ref()
                    .and_then(|s| s.termination_grace_period_seconds)
            })
            .unwrap_or(30);
        Duration::from_secs(s.max(0) as u64)
    }

    async fn execute(&mut self, action: Action) {
        match action {
            Action::Start {
                container,
                instance,
            } => {
                let adopted = self
                    .adopted
                    .remove(&container)
                    .filter(|r| r.instance == instance);
                let started_at = adopted
                    .as_ref()
                    .map(|r| SystemTime::UNIX_EPOCH + Duration::from_millis(r.started_at_ms));
                let r = self.start(&container, instance, adopted).await;
                let now = SystemTime::now();
                match r {
                    Ok(()) => {
                        self.life.started(&container, instance, now);
                        if let Some(t) = started_at {
                            self.life.set_started_at(&container, instance, t);
                            // Adopted: what the API says of this same process stands until
                            // its probes say otherwise.
                            // (Its restart count tells that the status is of this instance.)
                            let restarts = self.life.restart_count(&container);
                            let published = self
                                .pod
                                .status
                                .as_ref()
                                .and_then(|s| s.container_statuses.as_ref())
                                .and_then(|cs| cs.iter().find(|c| c.name == container))
                                .filter(|c| c.restart_count == restarts);
                            if let Some(cs) = published {
                                let running =
                                    cs.state.as_ref().is_some_and(|s| s.running.is_some());
                                self.life.carry_over_probes(
                                    &container,
                                    instance,
                                    (running && cs.ready, running && cs.started == Some(true)),
                                    now,
                                );
                                self.life.adopt_condition_times(&self.pod);
                            }
                        }
                    }
                    Err(f) => {
                        tracing::warn!(pod = %self.name, container, "start failed: {f:?}");
                        self.life.start_failed(&container, instance, f, now)
                    }
                }
            }
            Action::Kill {
                container,
                instance,
                probe,
                message,
            } => {
                tracing::info!(pod = %self.name, "{message}");
                // The failing probe's own terminationGracePeriodSeconds wins (upstream
                // ProbeTerminationGracePeriod), else the pod's.
                let grace = self
                    .container(&container)
                    .and_then(|c| match probe {
                        ProbeKind::Startup => c.startup_probe,
                        _ => c.liveness_probe,
                    })
                    .and_then(|p| p.termination_grace_period_seconds)
                    .map(|s| Duration::from_secs(s.max(0) as u64))
                    .unwrap_or_else(|| self.grace());
                if let Some(p) = self
                    .procs
                    .get(&container)
                    .filter(|p| p.instance == instance)
                {
                    tokio::spawn(stop(
                        p.pidfd.clone(),
                        p.cgroup.clone(),
                        p.exited.clone(),
                        grace,
                        self.pre_stop(&container, p),
                    ));
                }
            }
            Action::Probe {
                container,
                instance,
                kind,
            } => {
                let Some(c) = self.container(&container) else {
                    return;
                };
                let probe = match kind {
                    ProbeKind::Startup => c.startup_probe.clone(),
                    ProbeKind::Liveness => c.liveness_probe.clone(),
                    ProbeKind::Readiness => c.readiness_probe.clone(),
                };
                let Some(probe) = probe else { return };
                let spec = probe::ProbeSpec::from_api(&probe, kind);
                let target = prober::Target {
                    host_netns: self.cfg.cni.host_netns.clone(),
                    pod_ip: self.sandbox.as_ref().and_then(|s| s.ips.first().copied()),
                    ports: c.ports.clone().unwrap_or_default(),
                    exec: self
                        .procs
                        .get(&container)
                        .filter(|p| p.instance == instance)
                        .map(|p| p.spec.clone()),
                };
                let tx = self.tx.clone();
                tokio::spawn(async move {
                    let (ok, message) = prober::run(&spec.action, spec.timeout, &target).await;
                    let _ = tx.send(Event::Probe {
                        container,
                        instance,
                        kind,
                        ok,
                        message,
                    });
                });
            }
        }
    }

    async fn fetch_refs(&self) -> Result<Refs, String> {
        let (cms, secrets) = Refs::wanted(&self.pod);
        let mut refs = Refs::default();
        let cm_api: Api<ConfigMap> = Api::namespaced(self.client.clone(), &self.namespace);
        for n in cms {
            let v = cm_api
                .get_opt(&n)
                .await
                .map_err(|e| format!("reading configmap {}/{n}: {e}", self.namespace))?;
            refs.config_maps.insert(n, v);
        }
        let s_api: Api<Secret> = Api::namespaced(self.client.clone(), &self.namespace);
        for n in secrets {
            let v = s_api
                .get_opt(&n)
                .await
                .map_err(|e| format!("reading secret {}/{n}: {e}", self.namespace))?;
            refs.secrets.insert(n, v);
        }
        Ok(refs)
    }

    /// Takes over the sandbox and running containers an earlier run left, when the spec
    /// is unchanged, the init containers had completed and a container still runs;
    /// otherwise releases what is left so that the pod starts afresh.
    async fn try_adopt(&mut self) {
        let dir = self.cfg.state_dir.join("pods").join(&self.uid);
        let same_spec = std::fs::read_to_string(dir.join(adopt::SPEC_HASH_FILE))
            .is_ok_and(|h| h.trim() == adopt::spec_hash(&self.pod));
        let spec = self.pod.spec.clone().unwrap_or_default();
        let init_done = spec.init_containers.iter().flatten().all(|ic| {
            self.pod
                .status
                .as_ref()
                .and_then(|s| s.init_container_statuses.as_ref())
                .and_then(|l| l.iter().find(|s| s.name == ic.name))
                .and_then(|s| s.state.as_ref()?.terminated.as_ref())
                .is_some_and(|t| t.exit_code == 0)
        });
        let records = adopt::read_records(&dir);
        let alive: HashMap<String, adopt::Record> = records
            .iter()
            .filter(|(n, r)| spec.containers.iter().any(|c| &c.name == *n) && adopt::alive(r))
            .map(|(n, r)| (n.clone(), r.clone()))
            .collect();
        let r = if !same_spec {
            Err("its spec changed or was not recorded".to_string())
        } else if !init_done {
            Err("its init containers had not completed".to_string())
        } else {
            match alive.values().next() {
                None => Err("none of its containers runs".to_string()),
                Some(r) => Sandbox::adopt(&self.cfg, &self.pod, r.pid),
            }
        };
        match r {
            Ok(sb) => {
                let now = SystemTime::now();
                tracing::info!(pod = %self.name, containers = ?alive.keys().collect::<Vec<_>>(), "adopting the pod an earlier runtime left");
                if let Some(t) = self.pod.status.as_ref().and_then(|s| s.start_time.as_ref()) {
                    self.life.set_start_time(SystemTime::from(t.0));
                }
                for ic in spec.init_containers.iter().flatten() {
                    self.life.restore_completed(&ic.name, now);
                }
                for (n, r) in &records {
                    if alive.contains_key(n) {
                        self.life.restore(n, r.restart_count, r.instance);
                    } else {
                        // It exited meanwhile: its next start is a restart.
                        self.life.restore(n, r.restart_count + 1, r.instance + 1);
                    }
                }
                let l = PodLimits::apply(&self.controllers, &sb.cgroup, &spec);
                for e in &l.unenforced {
                    tracing::warn!(pod = %self.name, "resource limits: {e}");
                }
                self.limits = Some(l);
                self.sandbox = Some(sb);
                self.adopted = alive;
            }
            Err(why) => {
                tracing::info!(pod = %self.name, "not adopting the pod an earlier runtime left ({why}): it starts again");
                if let Err(e) = sandbox::release_leftover(&self.cfg, &self.uid).await {
                    tracing::warn!(pod = %self.name, "{e}");
                }
            }
        }
    }

    /// Starts instance `instance` of container `name`, or takes over the process an
    /// earlier run started (`adopted`).
    async fn start(
        &mut self,
        name: &str,
        instance: u64,
        adopted: Option<adopt::Record>,
    ) -> Result<(), StartFailure> {
        let c = self
            .container(name)
            .ok_or_else(|| StartFailure::Config(format!("no container {name:?} in the spec")))?;
        let img = image::resolve(c.image.as_deref().unwrap_or("")).map_err(StartFailure::Image)?;
        // ConfigMaps and Secrets are read when first needed and again after a failure
        // (the object may have been created since).
        if self.refs.is_none() || self.volumes.is_none() {
            let refs = self.fetch_refs().await.map_err(StartFailure::Config)?;
            let sb = self.sandbox.as_ref().expect("started only with a sandbox");
            let vols = volumes::materialise(&self.pod, &sb.dir.join("volumes"), &refs)
                .map_err(StartFailure::Config)?;
            self.refs = Some(refs);
            self.volumes = Some(vols);
        }
        let sb = self.sandbox.as_ref().expect("started only with a sandbox");
        let refs = self.refs.as_ref().expect("set above");
        let facts = PodFacts {
            pod_ips: sb.ips.iter().map(|i| i.to_string()).collect(),
            host_ip: self.cfg.host_ip.map(|i| i.to_string()),
            node_name: self.node.clone(),
        };
        let mut envs = env::build(&self.pod, &c, &facts, refs).map_err(StartFailure::Config)?;
        if !envs.iter().any(|(k, _)| k == "HOSTNAME") {
            envs.push(("HOSTNAME".into(), self.name.clone()));
        }
        let argv: Vec<String> = c
            .command
            .iter()
            .flatten()
            .chain(c.args.iter().flatten())
            .map(|a| env::expand(a, &envs))
            .collect();
        if argv.is_empty() {
            return Err(StartFailure::Config(format!(
                "container {name:?} has no command: skiff.local images have no entrypoint, set command (and args)"
            )));
        }
        let mut mounts = volumes::mounts(&c, self.volumes.as_ref().expect("set above"))
            .map_err(StartFailure::Config)?;
        // dns: the pod's resolv.conf (issue 8)
        mounts.extend(
            crate::dns::mount(&self.cfg.dns, &self.pod, &c, &sb.dir)
                .map_err(StartFailure::Config)?,
        );
        let cgroup = match adopted {
            None => sb
                .container_cgroup(name)
                .await
                .map_err(StartFailure::Config)?,
            // Its process is in it.
            Some(_) => sb.cgroup.join(name),
        };
        let sb_dir = sb.dir.clone();
        let (extra_cgroups, unenforced) = match &self.limits {
            Some(l) => l.container(&cgroup, &c),
            None => (Vec::new(), Vec::new()),
        };
        if self.unenforced.get(name) != Some(&unenforced) {
            for e in &unenforced {
                tracing::warn!(pod = %self.name, container = name, "resource limits: {e}");
            }
            self.unenforced.insert(name.to_string(), unenforced);
        }
        let limits = self.limits.clone();
        let oom_before = limits.as_ref().map_or(0, |l| l.oom_kills(&cgroup, name));
        let spec = process::Spec {
            argv,
            env: envs,
            working_dir: c.working_dir.clone().filter(|w| !w.is_empty()),
            image: img,
            mounts,
            netns: sb.netns.clone(),
            cgroup: cgroup.clone(),
            extra_cgroups,
        };
        process::prepare_mounts(&spec).map_err(StartFailure::Config)?;
        let log_path = logs::container_log(&self.log_dir, name, self.life.restart_count(name));
        let log = RotatingLog::open(&log_path, self.cfg.log_limits).map_err(|e| {
            StartFailure::Config(format!("opening the log {}: {e}", log_path.display()))
        })?;
        let log = Arc::new(Mutex::new(log));
        // stdout/stderr through FIFOs the container holds read-write, so it survives a
        // runtime restart (see `adopt`).
        let io_err = |e: std::io::Error| {
            StartFailure::Config(format!("the output FIFOs of container {name:?}: {e}"))
        };
        let (out_path, err_path) = adopt::fifos(&sb_dir, name).map_err(io_err)?;
        let (out_rx, err_rx) = adopt::readers(&out_path, &err_path).map_err(io_err)?;
        let (pid, pidfd, child) = match &adopted {
            Some(rec) => {
                let fd = adopt::pidfd(rec.pid).map_err(|e| {
                    StartFailure::Exec(format!("adopting process {}: {e}", rec.pid))
                })?;
                (rec.pid, fd, None)
            }
            None => {
                let (out_w, err_w) = adopt::writers(&out_path, &err_path).map_err(io_err)?;
                let started = process::spawn(&spec, Stdio::from(out_w), Stdio::from(err_w))
                    .map_err(|e| StartFailure::Exec(format!("exec {:?}: {e}", spec.argv[0])))?;
                (started.pid, started.pidfd, Some(started.child))
            }
        };
        tokio::spawn(logs::pump(out_rx, "stdout", log.clone()));
        tokio::spawn(logs::pump(err_rx, "stderr", log));
        if adopted.is_none() {
            let rec = adopt::Record {
                instance,
                restart_count: self.life.restart_count(name),
                pid,
                start_ticks: adopt::start_ticks(pid).unwrap_or(0),
                started_at_ms: SystemTime::now()
                    .duration_since(SystemTime::UNIX_EPOCH)
                    .map_or(0, |d| d.as_millis() as u64),
            };
            if let Err(e) = adopt::write_record(&sb_dir, name, &rec) {
                tracing::warn!(pod = %self.name, container = name, "recording the container: {e}");
            }
        } else {
            self.unknown_exits.insert((name.to_string(), instance));
        }
        let pidfd = Arc::new(pidfd);
        let waited = pidfd.clone();
        let (exited_tx, exited_rx) = watch::channel(false);
        let tx = self.tx.clone();
        let container = name.to_string();
        let cg = cgroup.clone();
        tokio::spawn(async move {
            let (code, signal) = match child {
                Some(mut child) => match child.wait().await {
                    Ok(s) => process::exit_code(s),
                    Err(_) => (-1, None),
                },
                None => {
                    adopt::wait_exit(waited).await;
                    (adopt::UNKNOWN_EXIT_CODE, None)
                }
            };
            let oom = limits
                .as_ref()
                .is_some_and(|l| l.oom_kills(&cg, &container) > oom_before);
            // Like a pid namespace losing its init: nothing of the container outlives
            // its main process.
            if let Err(e) = process::kill_cgroup(&cg, Duration::from_secs(10)).await {
                tracing::warn!("{e}");
            }
            let _ = exited_tx.send(true);
            let _ = tx.send(Event::Exited {
                container,
                instance,
                code,
                signal,
                oom,
            });
        });
        let adopted = adopted.is_some();
        tracing::info!(pod = %self.name, container = name, instance, pid, adopted, "container started");
        let hook = hooks::post_start(&c)
            .filter(|_| !adopted)
            .map(|h| (h, self.hook_target(&c, Some(spec.clone()))));
        self.procs.insert(
            name.to_string(),
            Proc {
                instance,
                pidfd,
                spec,
                cgroup: cgroup.clone(),
                exited: exited_rx,
            },
        );
        // The kubelet runs postStart before it reports the container Running; a failure
        // kills the container (restarted by its policy) with the hook's error as message.
        if let Some((hook, target)) = hook {
            if let Err(e) = hook.run(hooks::POST_START_TIMEOUT, &target).await {
                tracing::warn!(pod = %self.name, container = name, "postStart hook failed: {e}");
                self.hook_failures.insert(
                    (name.to_string(), instance),
                    format!("PostStartHookError: {e}"),
                );
                if let Err(e) = process::kill_cgroup(&cgroup, Duration::from_secs(10)).await {
                    tracing::warn!("{e}");
                }
            }
        }
        Ok(())
    }

    fn status_value(&self) -> Value {
        let inputs = StatusInputs {
            pod_ips: self
                .sandbox
                .as_ref()
                .map(|s| s.ips.iter().map(|i| i.to_string()).collect())
                .unwrap_or_default(),
            host_ip: self.cfg.host_ip.map(|i| i.to_string()),
            container_id_prefix: format!("skiff://{}", self.uid),
        };
        let mut st = self.life.status(&inputs, SystemTime::now());
        if let Some(l) = &self.limits {
            if l.wanted {
                crate::limits::set_condition(&mut st, &l.unenforced, &self.unenforced);
            }
        }
        serde_json::to_value(&st).unwrap_or(Value::Null)
    }

    async fn publish(&mut self) {
        let v = self.status_value();
        if self.published.as_ref() == Some(&v) {
            self.publish_retry = false;
            return;
        }
        let patch = json!({"status": v});
        // Bounded: a hung API call must not stall the pod's probes and restarts.
        let api = self.api();
        let (pp, merge) = (PatchParams::default(), Patch::Merge(&patch));
        let call = api.patch_status(&self.name, &pp, &merge);
        let r = match tokio::time::timeout(Duration::from_secs(15), call).await {
            Ok(r) => r,
            Err(_) => {
                tracing::warn!(pod = %self.name, "writing the pod status: no answer within 15 s");
                self.publish_retry = true;
                return;
            }
        };
        match r {
            Ok(_) => {
                self.published = Some(v);
                self.publish_retry = false;
            }
            Err(kube::Error::Api(e)) if e.code == 404 => {
                self.publish_retry = false;
            }
            Err(e) => {
                tracing::warn!(pod = %self.name, "writing the pod status: {e}");
                self.publish_retry = true;
            }
        }
    }

    /// Stops the pod; true when it was stopped for its deletion in the API.
    async fn terminate(mut self, why: Update) -> bool {
        if self.adopt_pending {
            // Deleted (or gone) while no runtime ran: what the earlier run left goes.
            self.adopt_pending = false;
            if let Err(e) = sandbox::release_leftover(&self.cfg, &self.uid).await {
                tracing::warn!(pod = %self.name, "{e}");
            }
        }
        let now = SystemTime::now();
        self.life.set_terminating(now);
        let grace = self.grace();
        tracing::info!(pod = %self.name, ?grace, "stopping pod");
        for (name, p) in &self.procs {
            tokio::spawn(stop(
                p.pidfd.clone(),
                p.cgroup.clone(),
                p.exited.clone(),
                grace,
                self.pre_stop(name, p),
            ));
        }
        // Wait for every container to be reported gone (stop() ends with cgroup.kill,
        // so this terminates).
        let deadline = tokio::time::Instant::now() + grace + Duration::from_secs(30);
        while self.life.any_running() || !self.procs.is_empty() {
            match tokio::time::timeout_at(deadline, self.rx.recv()).await {
                Ok(Some(ev)) => self.on_event(ev),
                _ => break,
            }
        }
        let api_visible = matches!(why, Update::Pod(_));
        if let Some(mut sb) = self.sandbox.take() {
            // Retry a failed teardown: a leaked veth or address is worse than a slow
            // delete (the pod object stays until the network is released).
            let mut delay = Duration::from_millis(200);
            loop {
                match sb.destroy(&self.cfg).await {
                    Ok(()) => break,
                    Err(e) => {
                        tracing::warn!(pod = %self.name, "tearing down the sandbox: {e}");
                        if matches!(why, Update::Shutdown) && delay > Duration::from_secs(5) {
                            break;
                        }
                        tokio::time::sleep(delay).await;
                        delay = (delay * 2).min(Duration::from_secs(30));
                    }
                }
            }
        }
        if let Some(l) = self.limits.take() {
            if let Err(e) = l.remove() {
                tracing::warn!(pod = %self.name, "{e}");
            }
        }
        let _ = std::fs::remove_dir_all(&self.log_dir);
        if api_visible {
            // The final status (containers terminated) only now: the API server may
            // remove a pod being deleted on any write, and nothing may outlive it.
            self.publish().await;
            // The kubelet's final delete: the containers are gone, the API may drop it.
            let dp = DeleteParams {
                grace_period_seconds: Some(0),
                preconditions: Some(Preconditions {
                    uid: Some(self.uid.clone()),
                    resource_version: None,
                }),
                ..Default::default()
            };
            match self.api().delete(&self.name, &dp).await {
                Ok(_) => {}
                Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => {}
                Err(e) => tracing::warn!(pod = %self.name, "deleting the pod: {e}"),
            }
        }
        tracing::info!(pod = %self.name, "pod stopped");
        api_visible
    }
}

/// Graceful stop of one container instance: its preStop hook (within `grace`), SIGTERM,
/// what is left of `grace` (at least 2 s after a hook) for it to exit, then SIGKILL to
/// the whole cgroup.
async fn stop(
    pidfd: Arc<std::os::fd::OwnedFd>,
    cgroup: PathBuf,
    mut exited: watch::Receiver<bool>,
    mut grace: Duration,
    pre_stop: Option<(Hook, prober::Target)>,
) {
    if *exited.borrow() {
        return;
    }
    if let Some((hook, target)) = pre_stop {
        let t0 = tokio::time::Instant::now();
        tokio::select! {
            r = hook.run(grace, &target) => if let Err(e) = r {
                tracing::warn!("preStop hook failed: {e}");
            },
            _ = exited.wait_for(|e| *e) => return,
        }
        grace = hooks::grace_after_hook(grace, t0.elapsed());
    }
    if let Err(e) = process::signal(&pidfd, libc::SIGTERM) {
        tracing::warn!("SIGTERM: {e}");
    }
    let gone = tokio::time::timeout(grace, exited.wait_for(|e| *e))
        .await
        .is_ok_and(|r| r.is_ok());
    if !gone && !*exited.borrow() {
        if let Err(e) = process::kill_cgroup(&cgroup, Duration::from_secs(10)).await {
            tracing::warn!("{e}");
        }
    }
}

fn to_instant(t: SystemTime) -> tokio::time::Instant {
    let now = SystemTime::now();
    let d = t.duration_since(now).unwrap_or(Duration::ZERO);
    tokio::time::Instant::now() + d
}

fn min_opt(
    a: Option<tokio::time::Instant>,
    b: Option<tokio::time::Instant>,
) -> Option<tokio::time::Instant> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}
