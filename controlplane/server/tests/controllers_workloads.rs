//! The workload controllers (Deployment, ReplicaSet, DaemonSet, Job) and the garbage
//! collector inside a real `skiff-controlplane` process, driven with the real kubectl and
//! kube-rs. There is no scheduler or kubelet here: a fake kubelet task binds pending pods
//! (POST pods/binding; DaemonSet pods to the node their `matchFields` affinity names),
//! marks bound pods Running+Ready with a pod IP (or Succeeded/Failed for Job pods, as a
//! test asks), and deletes terminating pods with gracePeriodSeconds=0.

mod support;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, ReplicaSet};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Event, Node, Pod};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Client, ResourceExt};
use serde_json::json;

use support::ServerProcess;

const DEADLINE: Duration = Duration::from_secs(90);

// ---------------------------------------------------------------------------------------
// Fake kubelet

/// How the fake kubelet runs a Job's pods.
#[derive(Clone, Copy)]
enum JobPods {
    /// The first `n` pods fail, the rest succeed.
    FailFirst(usize),
    /// Pods run (Ready) forever.
    RunForever,
}

#[derive(Default)]
struct KubeletState {
    jobs: HashMap<String, JobPods>,
    failed: HashMap<String, usize>,
    started: HashSet<String>,
}

struct FakeKubelet {
    task: tokio::task::JoinHandle<()>,
    state: Arc<Mutex<KubeletState>>,
}

impl Drop for FakeKubelet {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FakeKubelet {
    fn job(&self, name: &str, how: JobPods) {
        self.state.lock().unwrap().jobs.insert(name.into(), how);
    }
}

fn now() -> String {
    k8s_openapi::jiff::Timestamp::now().to_string()
}

/// The node a pod's `matchFields metadata.name In [x]` affinity names.
fn affinity_node(p: &Pod) -> Option<String> {
    p.spec
        .as_ref()?
        .affinity
        .as_ref()?
        .node_affinity
        .as_ref()?
        .required_during_scheduling_ignored_during_execution
        .as_ref()?
        .node_selector_terms
        .iter()
        .flat_map(|t| t.match_fields.iter().flatten())
        .find(|r| r.key == "metadata.name" && r.operator == "In")
        .and_then(|r| r.values.as_ref()?.first().cloned())
}

fn spawn_kubelet(client: Client, default_node: &str) -> FakeKubelet {
    let state = Arc::new(Mutex::new(KubeletState::default()));
    let st = state.clone();
    let default_node = default_node.to_string();
    let ips = Arc::new(AtomicU32::new(1));
    let task = tokio::spawn(async move {
        let all: Api<Pod> = Api::all(client.clone());
        let mut events = watcher(all, watcher::Config::default())
            .default_backoff()
            .applied_objects()
            .boxed();
        while let Some(ev) = events.next().await {
            let Ok(pod) = ev else { continue };
            let (client, st, node, ips) = (
                client.clone(),
                st.clone(),
                default_node.clone(),
                ips.clone(),
            );
            tokio::spawn(async move { kubelet_handle(client, st, &node, &ips, pod).await });
        }
    });
    FakeKubelet { task, state }
}

async fn kubelet_handle(
    client: Client,
    st: Arc<Mutex<KubeletState>>,
    default_node: &str,
    ips: &AtomicU32,
    pod: Pod,
) {
    let ns = pod.namespace().unwrap_or_default();
    let name = pod.name_any();
    let uid = pod.uid().unwrap_or_default();
    let api: Api<Pod> = Api::namespaced(client, &ns);
    if pod.metadata.deletion_timestamp.is_some() {
        // What a kubelet does once the containers stopped.
        let _ = api
            .delete(&name, &DeleteParams::default().grace_period(0))
            .await;
        return;
    }
    let node = pod.spec.as_ref().and_then(|s| s.node_name.clone());
    let Some(node) = node.filter(|n| !n.is_empty()) else {
        if pod.spec.as_ref().and_then(|s| s.scheduler_name.as_deref()) == Some("held") {
            return; // a test wants this pod unscheduled
        }
        let target = affinity_node(&pod).unwrap_or_else(|| default_node.to_string());
        let binding = json!({
            "apiVersion": "v1", "kind": "Binding",
            "metadata": {"name": name, "namespace": ns},
            "target": {"apiVersion": "v1", "kind": "Node", "name": target},
        });
        let _ = api
            .create_subresource::<_, serde_json::Value>(
                "binding",
                &name,
                &PostParams::default(),
                &binding,
            )
            .await;
        return;
    };
    let phase = pod
        .status
        .as_ref()
        .and_then(|s| s.phase.clone())
        .unwrap_or_default();
    if phase != "Pending" && !phase.is_empty() {
        return;
    }
    let job = pod.labels().get("job-name").cloned();
    let outcome = {
        let mut s = st.lock().unwrap();
        if !s.started.insert(uid) {
            return;
        }
        match job.as_ref().and_then(|j| s.jobs.get(j).copied()) {
            Some(JobPods::RunForever) | None => "Running",
            Some(JobPods::FailFirst(n)) => {
                let j = job.clone().unwrap();
                let f = s.failed.entry(j).or_insert(0);
                if *f < n {
                    *f += 1;
                    "Failed"
                } else {
                    "Succeeded"
                }
            }
        }
    };
    // Containers take a moment to start: rollouts happen in visible steps.
    tokio::time::sleep(Duration::from_millis(150)).await;
    let n = ips.fetch_add(1, Ordering::Relaxed);
    let ip = format!("10.244.{}.{}", n / 250, n % 250 + 1);
    let t = now();
    let containers: Vec<_> = pod
        .spec
        .as_ref()
        .map(|s| s.containers.clone())
        .unwrap_or_default();
    let (ready, state) = match outcome {
        "Running" => ("True", json!({"running": {"startedAt": t}})),
        "Succeeded" => (
            "False",
            json!({"terminated": {"exitCode": 0, "reason": "Completed", "startedAt": t, "finishedAt": t}}),
        ),
        _ => (
            "False",
            json!({"terminated": {"exitCode": 1, "reason": "Error", "startedAt": t, "finishedAt": t}}),
        ),
    };
    let statuses: Vec<_> = containers
        .iter()
        .map(|c| {
            json!({"name": c.name, "image": c.image, "imageID": "", "ready": ready == "True",
                   "started": outcome == "Running", "restartCount": 0, "state": state})
        })
        .collect();
    let status = json!({"status": {
        "phase": outcome,
        "hostIP": "192.0.2.10",
        "podIP": ip,
        "podIPs": [{"ip": ip}],
        "startTime": t,
        "conditions": [
            {"type": "PodScheduled", "status": "True", "lastTransitionTime": t},
            {"type": "Initialized", "status": "True", "lastTransitionTime": t},
            {"type": "ContainersReady", "status": ready, "lastTransitionTime": t},
            {"type": "Ready", "status": ready, "lastTransitionTime": t},
        ],
        "containerStatuses": statuses,
    }});
    let _ = node;
    let _ = api
        .patch_status(&name, &PatchParams::default(), &Patch::Merge(&status))
        .await;
}

// ---------------------------------------------------------------------------------------
// Cluster: server + client + fake kubelet + kubectl

struct Cluster {
    server: ServerProcess,
    client: Client,
    kubelet: FakeKubelet,
    kubectl: PathBuf,
    home: tempfile::TempDir,
}

impl Drop for Cluster {
    /// `SKIFF_TEST_KEEP_LOGS=<dir>` keeps each test's server log there.
    fn drop(&mut self) {
        if let Some(dir) = std::env::var_os("SKIFF_TEST_KEEP_LOGS") {
            let name = std::thread::current()
                .name()
                .unwrap_or("test")
                .replace("::", "-");
            let _ = std::fs::create_dir_all(&dir);
            let _ = std::fs::write(
                PathBuf::from(dir).join(format!("{name}.log")),
                self.server.log(),
            );
        }
    }
}

impl Cluster {
    /// A server with `args`, nodes `nodes` (Ready) and the fake kubelet; None (after
    /// SKIPPED, a failure under CI) without kubectl.
    async fn start(nodes: &[&str], args: &[&str]) -> Option<Cluster> {
        let Some(kubectl) = support::kubectl("1.33") else {
            support::skip_or_fail("kubectl.1.33 not found next to the kubectl on PATH");
            return None;
        };
        let server = ServerProcess::start_with(args);
        let client = support::kube_client(&server.kubeconfig).await;
        support::wait_ready(&client).await;
        for n in nodes {
            add_node(&client, n, &[]).await;
        }
        let kubelet = spawn_kubelet(client.clone(), nodes.first().copied().unwrap_or("node-a"));
        Some(Cluster {
            server,
            client,
            kubelet,
            kubectl,
            home: tempfile::tempdir().unwrap(),
        })
    }

    async fn kubectl(&self, args: &[&str]) -> std::process::Output {
        tokio::process::Command::new(&self.kubectl)
            .env("HOME", self.home.path())
            .env_remove("KUBECONFIG")
            .arg("--kubeconfig")
            .arg(&self.server.kubeconfig)
            .args(args)
            .output()
            .await
            .expect("running kubectl")
    }

    async fn kubectl_ok(&self, args: &[&str]) -> String {
        let out = self.kubectl(args).await;
        assert!(
            out.status.success(),
            "kubectl {args:?} failed: {}\n{}\nserver log tail:\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            self.log_tail()
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn log_tail(&self) -> String {
        let log = self.server.log();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(60)..].join("\n")
    }

    async fn rollout_status(&self, deployment: &str) -> String {
        self.kubectl_ok(&[
            "rollout",
            "status",
            &format!("deployment/{deployment}"),
            "--timeout=90s",
        ])
        .await
    }

    fn api<K>(&self) -> Api<K>
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>,
        K::DynamicType: Default,
    {
        Api::namespaced(self.client.clone(), "default")
    }
}

async fn add_node(client: &Client, name: &str, taints: &[(&str, &str, &str)]) {
    let nodes: Api<Node> = Api::all(client.clone());
    let taints: Vec<_> = taints
        .iter()
        .map(|(k, v, e)| json!({"key": k, "value": v, "effect": e}))
        .collect();
    let node: Node = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name}},
        "spec": {"taints": taints},
    }))
    .unwrap();
    nodes.create(&PostParams::default(), &node).await.unwrap();
    let t = now();
    nodes
        .patch_status(
            name,
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {
                "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady",
                                "lastHeartbeatTime": t, "lastTransitionTime": t}],
                "addresses": [{"type": "InternalIP", "address": "192.0.2.10"}],
                "capacity": {"cpu": "4", "memory": "8Gi", "pods": "110"},
            }})),
        )
        .await
        .unwrap();
}

/// Polls `f` until it returns Some or the deadline passes.
async fn wait_for<T, F, Fut>(what: &str, c: &Cluster, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + DEADLINE;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}\nserver log tail:\n{}",
            c.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Live (not terminating) pods matching `selector` in `default`.
async fn live_pods(c: &Cluster, selector: &str) -> Vec<Pod> {
    c.api::<Pod>()
        .list(&ListParams::default().labels(selector))
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .collect()
}

fn is_ready(p: &Pod) -> bool {
    p.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

fn image_of(p: &Pod) -> String {
    p.spec
        .as_ref()
        .and_then(|s| s.containers.first())
        .and_then(|c| c.image.clone())
        .unwrap_or_default()
}

fn deployment(name: &str, replicas: i32, image: &str, strategy: serde_json::Value) -> Deployment {
    serde_json::from_value(json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "strategy": strategy,
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {"containers": [{"name": "web", "image": image}]},
            },
        },
    }))
    .unwrap()
}

async fn owned_replica_sets(c: &Cluster, d: &Deployment) -> Vec<ReplicaSet> {
    let uid = d.uid().unwrap();
    c.api::<ReplicaSet>()
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|rs| rs.owner_references().iter().any(|r| r.uid == uid))
        .collect()
}

fn rs_image(rs: &ReplicaSet) -> String {
    rs.spec
        .as_ref()
        .and_then(|s| s.template.as_ref())
        .and_then(|t| t.spec.as_ref())
        .and_then(|s| s.containers.first())
        .and_then(|c| c.image.clone())
        .unwrap_or_default()
}

/// Polls the Events about `kind/name` until `pred` holds (Events are written just after
/// the state change a test waits for, so they may trail it a little).
async fn events_until(
    c: &Cluster,
    kind: &str,
    name: &str,
    pred: impl Fn(&Vec<(String, String)>) -> bool,
) -> Vec<(String, String)> {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let events = event_messages(c, kind, name).await;
        if pred(&events) {
            return events;
        }
        assert!(
            Instant::now() < deadline,
            "events of {kind} {name}: {events:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn event_messages(c: &Cluster, kind: &str, name: &str) -> Vec<(String, String)> {
    let events: Api<Event> = c.api();
    events
        .list(&ListParams::default().fields(&format!(
            "involvedObject.kind={kind},involvedObject.name={name}"
        )))
        .await
        .unwrap()
        .items
        .into_iter()
        .map(|e| (e.reason.unwrap_or_default(), e.message.unwrap_or_default()))
        .collect()
}

/// Watches the live pods of `selector` and records the fewest Ready ones seen (after the
/// initial list) until stopped.
struct ReadyMonitor {
    min: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl ReadyMonitor {
    fn start(c: &Cluster, selector: &str) -> ReadyMonitor {
        let min = Arc::new(AtomicUsize::new(usize::MAX));
        let stop = Arc::new(AtomicBool::new(false));
        let api: Api<Pod> = c.api();
        let cfg = watcher::Config::default().labels(selector);
        let (m, s) = (min.clone(), stop.clone());
        let task = tokio::spawn(async move {
            let mut ready: BTreeMap<String, bool> = BTreeMap::new();
            let mut listed = false;
            let mut w = watcher(api, cfg).boxed();
            while let Some(Ok(ev)) = w.next().await {
                match ev {
                    watcher::Event::Init => ready.clear(),
                    watcher::Event::InitApply(p) | watcher::Event::Apply(p) => {
                        let ok = is_ready(&p) && p.metadata.deletion_timestamp.is_none();
                        ready.insert(p.uid().unwrap(), ok);
                    }
                    watcher::Event::InitDone => listed = true,
                    watcher::Event::Delete(p) => {
                        ready.remove(&p.uid().unwrap());
                    }
                }
                if listed && !s.load(Ordering::SeqCst) {
                    let n = ready.values().filter(|r| **r).count();
                    m.fetch_min(n, Ordering::SeqCst);
                }
            }
        });
        ReadyMonitor { min, stop, task }
    }

    async fn finish(self) -> usize {
        self.stop.store(true, Ordering::SeqCst);
        self.task.abort();
        self.min.load(Ordering::SeqCst)
    }
}

// ---------------------------------------------------------------------------------------
// Deployments

/// Create → 3 ready and `kubectl rollout status` exits 0; scale 3→10→2; a rolling update
/// that never has fewer than replicas - maxUnavailable ready pods; `rollout undo`;
/// pause/resume.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deployment_rollout_scale_update_undo_pause() {
    let Some(c) = Cluster::start(&["node-a", "node-b"], &[]).await else {
        return;
    };
    let strategy =
        json!({"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 1}});
    let d = c
        .api::<Deployment>()
        .create(
            &PostParams::default(),
            &deployment("web", 3, "nginx:1.25", strategy),
        )
        .await
        .unwrap();
    let out = c.rollout_status("web").await;
    assert!(out.contains("successfully rolled out"), "{out}");
    let pods = live_pods(&c, "app=web").await;
    assert_eq!(pods.len(), 3);
    assert!(pods.iter().all(is_ready));
    let rss = owned_replica_sets(&c, &d).await;
    assert_eq!(rss.len(), 1);
    let rs = &rss[0];
    let hash = rs
        .labels()
        .get("pod-template-hash")
        .cloned()
        .expect("pod-template-hash label");
    assert_eq!(rs.name_any(), format!("web-{hash}"));
    assert_eq!(
        rs.annotations()
            .get("deployment.kubernetes.io/revision")
            .map(String::as_str),
        Some("1")
    );
    assert_eq!(
        rs.annotations()
            .get("deployment.kubernetes.io/desired-replicas")
            .map(String::as_str),
        Some("3")
    );
    assert_eq!(
        rs.annotations()
            .get("deployment.kubernetes.io/max-replicas")
            .map(String::as_str),
        Some("4")
    );
    let owner = &rs.owner_references()[0];
    assert_eq!(
        (
            owner.kind.as_str(),
            owner.controller,
            owner.block_owner_deletion
        ),
        ("Deployment", Some(true), Some(true))
    );
    for p in &pods {
        let r = &p.owner_references()[0];
        assert_eq!(
            (r.kind.as_str(), r.name.as_str(), r.controller),
            ("ReplicaSet", rs.name_any().as_str(), Some(true))
        );
        assert_eq!(p.labels().get("pod-template-hash"), Some(&hash));
        let suffix = p
            .name_any()
            .strip_prefix(&format!("{}-", rs.name_any()))
            .unwrap()
            .to_string();
        assert!(
            suffix.len() == 5
                && suffix
                    .bytes()
                    .all(|b| b"bcdfghjklmnpqrstvwxz2456789".contains(&b)),
            "{suffix}"
        );
    }
    let scaled = format!("Scaled up replica set {} from 0 to 3", rs.name_any());
    events_until(&c, "Deployment", "web", |e| {
        e.iter()
            .any(|(r, m)| r == "ScalingReplicaSet" && *m == scaled)
    })
    .await;
    let described = c.kubectl_ok(&["describe", "deployment", "web"]).await;
    assert!(
        described.contains("ScalingReplicaSet") && described.contains(&scaled),
        "{described}"
    );
    events_until(&c, "ReplicaSet", &rs.name_any(), |e| {
        e.iter().filter(|(r, _)| r == "SuccessfulCreate").count() == 3
    })
    .await;
    let d = c.api::<Deployment>().get("web").await.unwrap();
    let st = d.status.clone().unwrap();
    assert_eq!(
        (
            st.replicas,
            st.updated_replicas,
            st.ready_replicas,
            st.available_replicas
        ),
        (Some(3), Some(3), Some(3), Some(3))
    );
    assert_eq!(st.observed_generation, d.metadata.generation);
    let conds = st.conditions.unwrap();
    let reason = |t: &str| {
        conds
            .iter()
            .find(|c| c.type_ == t)
            .and_then(|c| c.reason.clone())
    };
    assert_eq!(
        reason("Available").as_deref(),
        Some("MinimumReplicasAvailable")
    );
    assert_eq!(
        reason("Progressing").as_deref(),
        Some("NewReplicaSetAvailable")
    );

    // Scale 3 → 10 → 2 with kubectl scale (the scale subresource).
    for n in [10usize, 2] {
        c.kubectl_ok(&["scale", "deployment/web", &format!("--replicas={n}")])
            .await;
        wait_for(&format!("{n} ready pods"), &c, || async {
            let pods = live_pods(&c, "app=web").await;
            (pods.len() == n && pods.iter().all(is_ready)).then_some(())
        })
        .await;
        c.rollout_status("web").await;
        // The Deployment's counts follow its ReplicaSets' status (which follows the pods).
        wait_for(&format!("status with {n} replicas"), &c, || async {
            let st = c.api::<Deployment>().get("web").await.unwrap().status?;
            let n = Some(n as i32);
            (st.replicas == n && st.available_replicas == n && st.updated_replicas == n)
                .then_some(())
        })
        .await;
    }

    // Rolling update at 4 replicas (maxUnavailable 1): never fewer than 3 ready.
    c.kubectl_ok(&["scale", "deployment/web", "--replicas=4"])
        .await;
    c.rollout_status("web").await;
    wait_for("4 ready pods", &c, || async {
        let pods = live_pods(&c, "app=web").await;
        (pods.len() == 4 && pods.iter().all(is_ready)).then_some(())
    })
    .await;
    let monitor = ReadyMonitor::start(&c, "app=web");
    c.kubectl_ok(&["set", "image", "deployment/web", "web=nginx:1.26"])
        .await;
    c.rollout_status("web").await;
    wait_for("4 updated pods", &c, || async {
        let pods = live_pods(&c, "app=web").await;
        (pods.len() == 4
            && pods
                .iter()
                .all(|p| is_ready(p) && image_of(p) == "nginx:1.26"))
        .then_some(())
    })
    .await;
    let min = monitor.finish().await;
    assert!(
        min >= 3,
        "ready pods dropped to {min} (< replicas 4 - maxUnavailable 1)"
    );
    let d = c.api::<Deployment>().get("web").await.unwrap();
    assert_eq!(
        d.annotations()
            .get("deployment.kubernetes.io/revision")
            .map(String::as_str),
        Some("2")
    );
    let rss = owned_replica_sets(&c, &d).await;
    assert_eq!(rss.len(), 2);
    for rs in &rss {
        let want = if rs_image(rs) == "nginx:1.26" { 4 } else { 0 };
        assert_eq!(
            rs.spec.as_ref().unwrap().replicas,
            Some(want),
            "{}",
            rs.name_any()
        );
    }

    // kubectl rollout undo: the old template back, as revision 3.
    c.kubectl_ok(&["rollout", "undo", "deployment/web"]).await;
    c.rollout_status("web").await;
    let d = wait_for("revision 3", &c, || async {
        let d = c.api::<Deployment>().get("web").await.unwrap();
        (d.annotations()
            .get("deployment.kubernetes.io/revision")
            .map(String::as_str)
            == Some("3"))
        .then_some(d)
    })
    .await;
    let tmpl_image = d
        .spec
        .as_ref()
        .unwrap()
        .template
        .spec
        .as_ref()
        .unwrap()
        .containers[0]
        .image
        .clone();
    assert_eq!(tmpl_image.as_deref(), Some("nginx:1.25"));
    let rss = owned_replica_sets(&c, &d).await;
    assert_eq!(
        rss.len(),
        2,
        "the old RS is reused, not a third one: deployment template {}\nreplica sets {}",
        serde_json::to_string(&d.spec.as_ref().unwrap().template).unwrap(),
        rss.iter()
            .map(|r| serde_json::to_string(&r.spec.as_ref().unwrap().template).unwrap())
            .collect::<Vec<_>>()
            .join("\n")
    );
    let old = rss.iter().find(|rs| rs_image(rs) == "nginx:1.25").unwrap();
    assert_eq!(
        old.annotations()
            .get("deployment.kubernetes.io/revision")
            .map(String::as_str),
        Some("3")
    );
    let history = c
        .kubectl_ok(&["rollout", "history", "deployment/web"])
        .await;
    assert!(history.contains('2') && history.contains('3'), "{history}");
    wait_for("4 pods of nginx:1.25", &c, || async {
        let pods = live_pods(&c, "app=web").await;
        (pods.len() == 4
            && pods
                .iter()
                .all(|p| is_ready(p) && image_of(p) == "nginx:1.25"))
        .then_some(())
    })
    .await;

    // Paused: a template change is observed but not rolled out; resume rolls it out.
    c.kubectl_ok(&["rollout", "pause", "deployment/web"]).await;
    c.kubectl_ok(&["set", "image", "deployment/web", "web=nginx:1.27"])
        .await;
    wait_for("the paused change observed", &c, || async {
        let d = c.api::<Deployment>().get("web").await.unwrap();
        let st = d.status.clone()?;
        let paused = st
            .conditions?
            .iter()
            .any(|c| c.type_ == "Progressing" && c.reason.as_deref() == Some("DeploymentPaused"));
        (paused && st.observed_generation == d.metadata.generation).then_some(())
    })
    .await;
    let rss = owned_replica_sets(&c, &d).await;
    assert!(
        rss.iter().all(|rs| rs_image(rs) != "nginx:1.27"),
        "no rollout while paused"
    );
    assert!(live_pods(&c, "app=web")
        .await
        .iter()
        .all(|p| image_of(p) == "nginx:1.25"));
    c.kubectl_ok(&["rollout", "resume", "deployment/web"]).await;
    c.rollout_status("web").await;
    wait_for("4 pods of nginx:1.27", &c, || async {
        let pods = live_pods(&c, "app=web").await;
        (pods.len() == 4
            && pods
                .iter()
                .all(|p| is_ready(p) && image_of(p) == "nginx:1.27"))
        .then_some(())
    })
    .await;
}

/// Recreate: every old pod is gone before the first new one exists.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deployment_recreate_never_overlaps() {
    let Some(c) = Cluster::start(&["node-a"], &[]).await else {
        return;
    };
    c.api::<Deployment>()
        .create(
            &PostParams::default(),
            &deployment("rc", 3, "busybox:1", json!({"type": "Recreate"})),
        )
        .await
        .unwrap();
    c.rollout_status("rc").await;
    // Watch every pod (terminating included) of both templates.
    let overlap = Arc::new(AtomicBool::new(false));
    let api: Api<Pod> = c.api();
    let o = overlap.clone();
    let task = tokio::spawn(async move {
        let mut images: BTreeMap<String, String> = BTreeMap::new();
        let mut w = watcher(api, watcher::Config::default().labels("app=rc")).boxed();
        while let Some(Ok(ev)) = w.next().await {
            match ev {
                watcher::Event::InitApply(p) | watcher::Event::Apply(p) => {
                    images.insert(p.uid().unwrap(), image_of(&p));
                }
                watcher::Event::Delete(p) => {
                    images.remove(&p.uid().unwrap());
                }
                _ => {}
            }
            let kinds: HashSet<&String> = images.values().collect();
            if kinds.len() > 1 {
                o.store(true, Ordering::SeqCst);
            }
        }
    });
    c.kubectl_ok(&["set", "image", "deployment/rc", "web=busybox:2"])
        .await;
    c.rollout_status("rc").await;
    wait_for("3 new pods", &c, || async {
        let pods = live_pods(&c, "app=rc").await;
        (pods.len() == 3
            && pods
                .iter()
                .all(|p| is_ready(p) && image_of(p) == "busybox:2"))
        .then_some(())
    })
    .await;
    task.abort();
    assert!(
        !overlap.load(Ordering::SeqCst),
        "old and new pods existed at the same time"
    );
    events_until(&c, "Deployment", "rc", |events| {
        events.iter().any(|(_, m)| {
            m.starts_with("Scaled down replica set rc-") && m.ends_with("from 3 to 0")
        })
    })
    .await;
}

/// A ReplicaSet on its own: adopts matching orphans, deletes an unscheduled pod first on
/// scale-down (even an older one), and replaces a pod that is terminating.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicaset_adopts_orphans_and_scales_down_unscheduled_first() {
    let Some(c) = Cluster::start(&["node-a"], &[]).await else {
        return;
    };
    let pods: Api<Pod> = c.api();
    // Two orphans matching the selector, before the RS exists: one bound and ready, one
    // the fake kubelet leaves unscheduled (schedulerName "held").
    for (name, scheduler) in [("orphan", "default-scheduler"), ("held", "held")] {
        let p: Pod = serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": "default", "labels": {"app": "rs"}},
            "spec": {"schedulerName": scheduler, "containers": [{"name": "c", "image": "busybox"}]},
        }))
        .unwrap();
        pods.create(&PostParams::default(), &p).await.unwrap();
    }
    wait_for("the orphan ready", &c, || async {
        is_ready(&pods.get("orphan").await.ok()?).then_some(())
    })
    .await;
    let rs: ReplicaSet = serde_json::from_value(json!({
        "apiVersion": "apps/v1", "kind": "ReplicaSet",
        "metadata": {"name": "rs", "namespace": "default"},
        "spec": {"replicas": 3, "selector": {"matchLabels": {"app": "rs"}},
                 "template": {"metadata": {"labels": {"app": "rs"}},
                              "spec": {"containers": [{"name": "c", "image": "busybox"}]}}},
    }))
    .unwrap();
    let rs = c
        .api::<ReplicaSet>()
        .create(&PostParams::default(), &rs)
        .await
        .unwrap();
    let st = wait_for("RS status: 3 replicas, 2 ready", &c, || async {
        let r = c.api::<ReplicaSet>().get("rs").await.ok()?;
        let st = r.status?;
        (st.replicas == 3
            && st.ready_replicas == Some(2)
            && st.observed_generation == r.metadata.generation)
            .then_some(st)
    })
    .await;
    assert_eq!(
        (st.fully_labeled_replicas, st.available_replicas),
        (Some(3), Some(2))
    );
    for name in ["orphan", "held"] {
        let p = pods.get(name).await.unwrap();
        let r = &p.owner_references()[0];
        assert_eq!(
            (r.uid.as_str(), r.controller),
            (rs.uid().unwrap().as_str(), Some(true)),
            "{name} adopted"
        );
    }
    let live = live_pods(&c, "app=rs").await;
    assert_eq!(live.len(), 3, "adopted pods count: only one created");
    let created = live
        .iter()
        .find(|p| !["orphan", "held"].contains(&p.name_any().as_str()))
        .unwrap()
        .name_any();

    // Scale to 2: the unscheduled pod goes although it is older than the created one.
    c.kubectl_ok(&["scale", "rs/rs", "--replicas=2"]).await;
    wait_for("held deleted", &c, || async {
        pods.get_opt("held").await.unwrap().is_none().then_some(())
    })
    .await;
    let mut names: Vec<String> = live_pods(&c, "app=rs")
        .await
        .iter()
        .map(|p| p.name_any())
        .collect();
    names.sort();
    let mut want = vec!["orphan".to_string(), created];
    want.sort();
    assert_eq!(names, want);
    events_until(&c, "ReplicaSet", "rs", |events| {
        events
            .iter()
            .any(|(r, m)| r == "SuccessfulDelete" && m == "Deleted pod: held")
    })
    .await;

    // A terminating pod (held back by a finalizer) no longer counts: it is replaced.
    pods.patch(
        "orphan",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"finalizers": ["example.com/hold"]}})),
    )
    .await
    .unwrap();
    pods.delete("orphan", &DeleteParams::default())
        .await
        .unwrap();
    wait_for("a replacement for the terminating pod", &c, || async {
        let live = live_pods(&c, "app=rs").await;
        let r = c.api::<ReplicaSet>().get("rs").await.ok()?;
        (live.len() == 2
            && live.iter().all(|p| p.name_any() != "orphan")
            && r.status?.replicas == 2)
            .then_some(())
    })
    .await;
    assert!(
        pods.get("orphan")
            .await
            .unwrap()
            .metadata
            .deletion_timestamp
            .is_some(),
        "still terminating"
    );
    pods.patch(
        "orphan",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"finalizers": null}})),
    )
    .await
    .unwrap();
}

// ---------------------------------------------------------------------------------------
// DaemonSets

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn daemonset_follows_nodes_and_taints() {
    let Some(c) = Cluster::start(&["node-a", "node-b"], &[]).await else {
        return;
    };
    let ds: DaemonSet = serde_json::from_value(json!({
        "apiVersion": "apps/v1", "kind": "DaemonSet",
        "metadata": {"name": "agent", "namespace": "default"},
        "spec": {"selector": {"matchLabels": {"app": "agent"}},
                 "updateStrategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 1}},
                 "template": {"metadata": {"labels": {"app": "agent"}},
                              "spec": {"containers": [{"name": "agent", "image": "agent:1"}]}}},
    }))
    .unwrap();
    c.api::<DaemonSet>()
        .create(&PostParams::default(), &ds)
        .await
        .unwrap();
    let on_nodes = |want: Vec<&'static str>| {
        let c = &c;
        async move {
            wait_for(&format!("agent pods on {want:?}"), c, || async {
                let pods = live_pods(c, "app=agent").await;
                let mut nodes: Vec<String> = pods
                    .iter()
                    .filter(|p| is_ready(p))
                    .filter_map(|p| p.spec.as_ref()?.node_name.clone())
                    .collect();
                nodes.sort();
                let ds = c.api::<DaemonSet>().get("agent").await.ok()?;
                let st = ds.status?;
                (nodes == want
                    && pods.len() == want.len()
                    && st.desired_number_scheduled == want.len() as i32
                    && st.number_ready == want.len() as i32
                    && st.number_available == Some(want.len() as i32))
                .then_some(pods)
            })
            .await
        }
    };
    let pods = on_nodes(vec!["node-a", "node-b"]).await;
    let spec = pods[0].spec.clone().unwrap();
    let tols = spec.tolerations.unwrap();
    for (key, effect) in [
        ("node.kubernetes.io/not-ready", "NoExecute"),
        ("node.kubernetes.io/unreachable", "NoExecute"),
        ("node.kubernetes.io/disk-pressure", "NoSchedule"),
        ("node.kubernetes.io/memory-pressure", "NoSchedule"),
        ("node.kubernetes.io/pid-pressure", "NoSchedule"),
        ("node.kubernetes.io/unschedulable", "NoSchedule"),
    ] {
        assert!(
            tols.iter().any(|t| t.key.as_deref() == Some(key)
                && t.effect.as_deref() == Some(effect)
                && t.operator.as_deref() == Some("Exists")),
            "missing toleration {key}:{effect}"
        );
    }
    assert_eq!(
        affinity_node(&pods[0]),
        spec.node_name,
        "pinned with matchFields metadata.name"
    );

    // A node with an untolerated NoSchedule taint gets nothing; a not-ready one does
    // (default toleration). node-t is created before node-c, so once node-c has its pod
    // the controller has seen node-t too.
    add_node(&c.client, "node-t", &[("dedicated", "infra", "NoSchedule")]).await;
    add_node(
        &c.client,
        "node-n",
        &[("node.kubernetes.io/not-ready", "", "NoExecute")],
    )
    .await;
    add_node(&c.client, "node-c", &[]).await;
    on_nodes(vec!["node-a", "node-b", "node-c", "node-n"]).await;

    // Node removed → its pod deleted.
    let nodes: Api<Node> = Api::all(c.client.clone());
    nodes
        .delete("node-b", &DeleteParams::default())
        .await
        .unwrap();
    on_nodes(vec!["node-a", "node-c", "node-n"]).await;
    events_until(&c, "DaemonSet", "agent", |events| {
        events.iter().any(|(r, _)| r == "SuccessfulDelete")
    })
    .await;

    // Rolling update, maxUnavailable 1: at least 2 of 3 ready throughout.
    let monitor = ReadyMonitor::start(&c, "app=agent");
    c.kubectl_ok(&["set", "image", "daemonset/agent", "agent=agent:2"])
        .await;
    c.kubectl_ok(&["rollout", "status", "daemonset/agent", "--timeout=90s"])
        .await;
    wait_for("3 updated agent pods", &c, || async {
        let pods = live_pods(&c, "app=agent").await;
        (pods.len() == 3 && pods.iter().all(|p| is_ready(p) && image_of(p) == "agent:2"))
            .then_some(())
    })
    .await;
    let min = monitor.finish().await;
    assert!(min >= 2, "ready agent pods dropped to {min}");
    let st = c
        .api::<DaemonSet>()
        .get("agent")
        .await
        .unwrap()
        .status
        .unwrap();
    assert_eq!(st.updated_number_scheduled, Some(3));

    // Revision history (ControllerRevisions) and `kubectl rollout undo`: back to agent:1,
    // whose revision is renumbered 3 instead of copied.
    let history = c
        .kubectl_ok(&["rollout", "history", "daemonset/agent"])
        .await;
    let revisions = |out: &str| -> Vec<String> {
        out.lines()
            .skip_while(|l| !l.starts_with("REVISION"))
            .skip(1)
            .filter_map(|l| l.split_whitespace().next().map(String::from))
            .collect()
    };
    assert_eq!(revisions(&history), ["1", "2"], "{history}");
    let listed = c
        .kubectl_ok(&["get", "controllerrevisions", "-l", "app=agent"])
        .await;
    assert!(
        listed.starts_with("NAME") && listed.contains("daemonset.apps/agent"),
        "{listed}"
    );
    c.kubectl_ok(&["rollout", "undo", "daemonset/agent"]).await;
    c.kubectl_ok(&["rollout", "status", "daemonset/agent", "--timeout=90s"])
        .await;
    wait_for("3 agent pods back at agent:1", &c, || async {
        let pods = live_pods(&c, "app=agent").await;
        (pods.len() == 3 && pods.iter().all(|p| is_ready(p) && image_of(p) == "agent:1"))
            .then_some(())
    })
    .await;
    let history = c
        .kubectl_ok(&["rollout", "history", "daemonset/agent"])
        .await;
    assert_eq!(revisions(&history), ["2", "3"], "{history}");
    let shown = c
        .kubectl_ok(&["rollout", "history", "daemonset/agent", "--revision=2"])
        .await;
    assert!(shown.contains("agent:2"), "{shown}");
    // The garbage collector deletes the history with its DaemonSet.
    c.kubectl_ok(&["delete", "daemonset", "agent"]).await;
    wait_for("no agent ControllerRevisions", &c, || async {
        let revs: Api<k8s_openapi::api::apps::v1::ControllerRevision> = c.api();
        let left = revs
            .list(&ListParams::default().labels("app=agent"))
            .await
            .ok()?;
        left.items.is_empty().then_some(())
    })
    .await;
}

/// RollingUpdate with maxSurge 1 / maxUnavailable 0 (upstream's surge update): the new
/// pod starts next to the old one, which goes only once the new one is available, so
/// three nodes keep three ready pods throughout and briefly run four.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn daemonset_surge_update_keeps_every_node_served() {
    let Some(c) = Cluster::start(&["node-a", "node-b", "node-c"], &[]).await else {
        return;
    };
    let ds: DaemonSet = serde_json::from_value(json!({
        "apiVersion": "apps/v1", "kind": "DaemonSet",
        "metadata": {"name": "surge", "namespace": "default"},
        "spec": {"selector": {"matchLabels": {"app": "surge"}},
                 "updateStrategy": {"type": "RollingUpdate",
                                    "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}},
                 "template": {"metadata": {"labels": {"app": "surge"}},
                              "spec": {"containers": [{"name": "s", "image": "surge:1"}]}}},
    }))
    .unwrap();
    c.api::<DaemonSet>()
        .create(&PostParams::default(), &ds)
        .await
        .unwrap();
    wait_for("3 ready surge pods", &c, || async {
        let pods = live_pods(&c, "app=surge").await;
        let st = c.api::<DaemonSet>().get("surge").await.ok()?.status?;
        (pods.len() == 3 && pods.iter().all(is_ready) && st.number_available == Some(3))
            .then_some(())
    })
    .await;
    let monitor = ReadyMonitor::start(&c, "app=surge");
    // Most pods at once (not terminating), from a watch so no state is missed: 4 shows
    // the surge happened, more would break maxSurge.
    let most = Arc::new(AtomicUsize::new(0));
    let (m, api) = (most.clone(), c.api::<Pod>());
    let peak = tokio::spawn(async move {
        let mut live: HashSet<String> = HashSet::new();
        let cfg = watcher::Config::default().labels("app=surge");
        let mut w = watcher(api, cfg).boxed();
        while let Some(Ok(ev)) = w.next().await {
            match ev {
                watcher::Event::Init => live.clear(),
                watcher::Event::InitApply(p) | watcher::Event::Apply(p) => {
                    if p.metadata.deletion_timestamp.is_none() {
                        live.insert(p.uid().unwrap());
                    } else {
                        live.remove(&p.uid().unwrap());
                    }
                }
                watcher::Event::Delete(p) => {
                    live.remove(&p.uid().unwrap());
                }
                watcher::Event::InitDone => {}
            }
            m.fetch_max(live.len(), Ordering::SeqCst);
        }
    });
    c.kubectl_ok(&["set", "image", "daemonset/surge", "s=surge:2"])
        .await;
    c.kubectl_ok(&["rollout", "status", "daemonset/surge", "--timeout=90s"])
        .await;
    wait_for("3 updated surge pods", &c, || async {
        let pods = live_pods(&c, "app=surge").await;
        (pods.len() == 3 && pods.iter().all(|p| is_ready(p) && image_of(p) == "surge:2"))
            .then_some(())
    })
    .await;
    peak.abort();
    let min = monitor.finish().await;
    assert!(min >= 3, "ready pods dropped to {min} (maxUnavailable 0)");
    let most = most.load(Ordering::SeqCst);
    assert_eq!(most, 4, "live pods at most: maxSurge 1 on 3 nodes means 4");
}

// ---------------------------------------------------------------------------------------
// Jobs

fn job(name: &str, spec: serde_json::Value) -> Job {
    let mut s = spec;
    s["template"] = json!({"spec": {"restartPolicy": "Never",
                                    "containers": [{"name": "work", "image": "busybox"}]}});
    serde_json::from_value(json!({
        "apiVersion": "batch/v1", "kind": "Job",
        "metadata": {"name": name, "namespace": "default"},
        "spec": s,
    }))
    .unwrap()
}

fn condition(j: &Job, ty: &str) -> Option<String> {
    j.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == ty && c.status == "True")
        .and_then(|c| c.reason.clone())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_complete_fail_and_time_out() {
    let Some(c) = Cluster::start(&["node-a"], &["--job-pod-failure-backoff", "0.1"]).await else {
        return;
    };
    c.kubelet.job("flaky", JobPods::FailFirst(2));
    c.kubelet.job("doomed", JobPods::FailFirst(100));
    c.kubelet.job("sleepy", JobPods::RunForever);
    let jobs: Api<Job> = c.api();
    let flaky = jobs
        .create(
            &PostParams::default(),
            &job(
                "flaky",
                json!({"completions": 3, "parallelism": 2, "backoffLimit": 6}),
            ),
        )
        .await
        .unwrap();
    jobs.create(
        &PostParams::default(),
        &job("doomed", json!({"backoffLimit": 1})),
    )
    .await
    .unwrap();
    jobs.create(
        &PostParams::default(),
        &job("sleepy", json!({"activeDeadlineSeconds": 2})),
    )
    .await
    .unwrap();

    c.kubectl_ok(&[
        "wait",
        "--for=condition=complete",
        "job/flaky",
        "--timeout=90s",
    ])
    .await;
    let j = jobs.get("flaky").await.unwrap();
    let st = j.status.clone().unwrap();
    assert_eq!(
        (st.succeeded, st.failed, st.active),
        (Some(3), Some(2), Some(0))
    );
    assert!(st.start_time.is_some() && st.completion_time.is_some());
    assert_eq!(
        condition(&j, "SuccessCriteriaMet").as_deref(),
        Some("CompletionsReached")
    );
    let pods = c
        .api::<Pod>()
        .list(&ListParams::default().labels("job-name=flaky"))
        .await
        .unwrap()
        .items;
    assert_eq!(pods.len(), 5);
    for p in &pods {
        let l = p.labels();
        assert_eq!(
            l.get("batch.kubernetes.io/controller-uid"),
            flaky.uid().as_ref()
        );
        assert_eq!(
            l.get("batch.kubernetes.io/job-name").map(String::as_str),
            Some("flaky")
        );
        assert_eq!(l.get("controller-uid"), flaky.uid().as_ref());
        assert_eq!(
            p.spec.as_ref().unwrap().restart_policy.as_deref(),
            Some("Never")
        );
    }
    events_until(&c, "Job", "flaky", |e| {
        e.iter().any(|(r, _)| r == "Completed")
            && e.iter().filter(|(r, _)| r == "SuccessfulCreate").count() == 5
    })
    .await;

    let j = wait_for("doomed failed", &c, || async {
        let j = jobs.get("doomed").await.ok()?;
        condition(&j, "Failed").is_some().then_some(j)
    })
    .await;
    assert_eq!(
        condition(&j, "Failed").as_deref(),
        Some("BackoffLimitExceeded")
    );
    assert_eq!(
        condition(&j, "FailureTarget").as_deref(),
        Some("BackoffLimitExceeded")
    );
    let st = j.status.clone().unwrap();
    assert_eq!(
        (st.failed, st.active),
        (Some(2), Some(0)),
        "backoffLimit 1: the second failure ends it"
    );
    events_until(&c, "Job", "doomed", |events| {
        events.iter().any(|(r, _)| r == "BackoffLimitExceeded")
    })
    .await;

    let j = wait_for("sleepy past its deadline", &c, || async {
        let j = jobs.get("sleepy").await.ok()?;
        condition(&j, "Failed").is_some().then_some(j)
    })
    .await;
    assert_eq!(condition(&j, "Failed").as_deref(), Some("DeadlineExceeded"));
    wait_for("sleepy's pod deleted", &c, || async {
        live_pods(&c, "job-name=sleepy")
            .await
            .is_empty()
            .then_some(())
    })
    .await;
}

// ---------------------------------------------------------------------------------------
// Garbage collection

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_collector_background_orphan_foreground() {
    let Some(c) = Cluster::start(&["node-a"], &[]).await else {
        return;
    };
    let ru = json!({"type": "RollingUpdate"});
    let deployments: Api<Deployment> = c.api();
    deployments
        .create(
            &PostParams::default(),
            &deployment("bg", 2, "busybox", ru.clone()),
        )
        .await
        .unwrap();
    let mut keep = deployment("keep", 2, "busybox", ru.clone());
    keep.metadata.finalizers = Some(vec!["orphan".into()]);
    deployments
        .create(&PostParams::default(), &keep)
        .await
        .unwrap();
    let mut fg = deployment("fg", 2, "busybox", ru);
    fg.metadata.finalizers = Some(vec!["foregroundDeletion".into()]);
    deployments
        .create(&PostParams::default(), &fg)
        .await
        .unwrap();
    for d in ["bg", "keep", "fg"] {
        c.rollout_status(d).await;
    }

    // Background (what `kubectl delete deployment` sends): RS and pods follow.
    c.kubectl_ok(&["delete", "deployment", "bg"]).await;
    wait_for("bg's replica sets and pods gone", &c, || async {
        let rss = c
            .api::<ReplicaSet>()
            .list(&ListParams::default().labels("app=bg"))
            .await
            .unwrap()
            .items;
        let pods = c
            .api::<Pod>()
            .list(&ListParams::default().labels("app=bg"))
            .await
            .unwrap()
            .items;
        (rss.is_empty() && pods.is_empty()).then_some(())
    })
    .await;

    // Orphan (the finalizer `--cascade=orphan` asks the API server for): the RS stays,
    // without the reference; its pods stay with theirs.
    let keep = deployments.get("keep").await.unwrap();
    deployments
        .delete("keep", &DeleteParams::default())
        .await
        .unwrap();
    wait_for("keep gone", &c, || async {
        deployments
            .get_opt("keep")
            .await
            .unwrap()
            .is_none()
            .then_some(())
    })
    .await;
    let rss = c
        .api::<ReplicaSet>()
        .list(&ListParams::default().labels("app=keep"))
        .await
        .unwrap()
        .items;
    assert_eq!(rss.len(), 1);
    assert!(
        rss[0]
            .owner_references()
            .iter()
            .all(|r| Some(&r.uid) != keep.uid().as_ref()),
        "{:?}",
        rss[0].owner_references()
    );
    let pods = live_pods(&c, "app=keep").await;
    assert_eq!(pods.len(), 2);
    assert!(pods
        .iter()
        .all(|p| p.owner_references()[0].uid == rss[0].uid().unwrap()));

    // Foreground: dependents first, then the owner.
    deployments
        .delete("fg", &DeleteParams::default())
        .await
        .unwrap();
    let d = deployments.get("fg").await.unwrap();
    assert!(d.metadata.deletion_timestamp.is_some());
    wait_for("fg gone after its dependents", &c, || async {
        let gone = deployments.get_opt("fg").await.unwrap().is_none();
        let rss = c
            .api::<ReplicaSet>()
            .list(&ListParams::default().labels("app=fg"))
            .await
            .unwrap()
            .items;
        if gone {
            assert!(rss.is_empty(), "the owner went before its replica set");
        }
        gone.then_some(())
    })
    .await;
    wait_for("fg's pods gone", &c, || async {
        let pods = c
            .api::<Pod>()
            .list(&ListParams::default().labels("app=fg"))
            .await
            .unwrap()
            .items;
        pods.is_empty().then_some(())
    })
    .await;
    // The orphaned RS still runs its pods.
    assert_eq!(live_pods(&c, "app=keep").await.len(), 2);
}
