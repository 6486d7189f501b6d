//! Controller benchmarks (`cargo xtask bench controlplane`, after the scheduler's), each
//! against its own real `skiff-controlplane server` process on 127.0.0.1 with its
//! controllers and scheduler in-process (the default), fake nodes standing in for
//! kubelets:
//!
//! 1. **endpoints** — Pod Ready → EndpointSlice updated, at N pods behind S Services
//!    (default 10 000 / 1000, so 10 endpoints per Service). Each sample runs from the
//!    instant a fake node sends the pod's `Ready=True` status write (the kubelet's write,
//!    [`skiff_fake_nodes::Config::on_ready`]) to the instant this process's watch of the
//!    EndpointSlices first shows the pod as a ready endpoint: API write, the controller's
//!    watch, its sync and slice write, and the slice watch back, end to end. Two phases:
//!    the *burst* (all N pods created at once, so readiness arrives as fast as the fake
//!    nodes can write it: a throughput test whose latencies include queueing), then
//!    *steady* probes at a fixed rate into the full cluster (the SLI-like number), started
//!    only once the burst's backlog has drained ([`DRAIN_QUIET`]).
//! 2. **deployment** — a Deployment of R replicas (default 1000) on M fake nodes
//!    (default 100): create → every pod created, bound, Running, and the Deployment's
//!    `availableReplicas`, timed from the create request.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use clap::Parser;
use futures::StreamExt as _;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Endpoints, Node, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{ListParams, PostParams};
use kube::runtime::{watcher, WatchStreamExt as _};
use kube::{Api, Client};
use skiff_fake_nodes::server::{load_average, BenchServer};
use skiff_fake_nodes::trace::{self, queue_state, QueueState};
use skiff_fake_nodes::{FakeNodes, ReadyWrite};
use tokio::sync::mpsc;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum Part {
    Endpoints,
    Deployment,
}

#[derive(Parser)]
#[command(name = "skiff-controllers-bench")]
struct Args {
    /// The skiff-controlplane binary.
    #[arg(long)]
    server: PathBuf,
    /// Which benchmarks to run (comma-separated).
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "endpoints,deployment"
    )]
    only: Vec<Part>,
    /// endpoints: pods (spread evenly over the Services and the nodes).
    #[arg(long, default_value_t = 10_000)]
    pods: usize,
    /// endpoints: Services.
    #[arg(long, default_value_t = 1000)]
    services: usize,
    /// Fake nodes (both benchmarks).
    #[arg(long, default_value_t = 100)]
    nodes: usize,
    /// endpoints: steady-phase probe pods, created at `--probe-rate` per second.
    #[arg(long, default_value_t = 1000)]
    probes: usize,
    #[arg(long, default_value_t = 50.0)]
    probe_rate: f64,
    /// deployment: replicas.
    #[arg(long, default_value_t = 1000)]
    replicas: i32,
    /// Concurrent API calls for the setup (pod creates) and of the fake nodes.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// endpoints: copy the server's log here at the end (run with e.g.
    /// `RUST_LOG=info,skiff_controllers::endpointslice=debug` to get the controller's
    /// per-sync timings into it).
    #[arg(long)]
    keep_server_log: Option<PathBuf>,
    /// endpoints: an extra `skiff-controlplane server` flag (repeatable), e.g.
    /// `--server-arg=--concurrent-service-endpoint-syncs=20`.
    #[arg(long, allow_hyphen_values = true)]
    server_arg: Vec<String>,
    /// endpoints: write each steady probe's timeline here (CSV, wall-clock µs since the
    /// epoch; the controller columns need the debug log, see --keep-server-log).
    #[arg(long)]
    samples_csv: Option<PathBuf>,
}

/// After the burst, the steady phase starts only once the controller's backlog is gone:
/// every burst pod ready in a slice and in its Endpoints, the EndpointSlice controller's
/// work queue empty with no sync running (its gauges on the server's `/metrics`), and
/// then this long without a new add to that queue and without any slice or Endpoints
/// write. (Writes alone are not enough: queued syncs with nothing to write keep the first
/// probes waiting behind them, as the session-6 runs showed.)
const DRAIN_QUIET: Duration = Duration::from_secs(1);

/// How long any phase may take before the benchmark gives up with what it saw.
const PHASE_DEADLINE: Duration = Duration::from_secs(900);

fn json<T: serde::de::DeserializeOwned>(v: serde_json::Value) -> T {
    serde_json::from_value(v).expect("benchmark object literal")
}

/// A pod bound directly to `node` (no scheduler involved, as a DaemonSet or static pod),
/// serving on 8080.
fn endpoint_pod(name: &str, app: &str, node: &str) -> Pod {
    json(serde_json::json!({
        "metadata": {"name": name, "namespace": "default", "labels": {"app": app}},
        "spec": {
            "nodeName": node,
            "containers": [{
                "name": "web",
                "image": "registry.k8s.io/pause:3.10",
                "ports": [{"name": "http", "containerPort": 8080}],
            }],
        },
    }))
}

fn service(name: &str) -> Service {
    json(serde_json::json!({
        "metadata": {"name": name, "namespace": "default"},
        "spec": {
            "selector": {"app": name},
            "ports": [{"name": "http", "port": 80, "targetPort": 8080}],
        },
    }))
}

/// Latency percentiles of a sample set, in milliseconds.
struct Stats {
    n: usize,
    p50: f64,
    p90: f64,
    p99: f64,
    max: f64,
    mean: f64,
}

impl Stats {
    fn of(v: Vec<Duration>) -> Option<Stats> {
        Stats::of_ms(v.into_iter().map(|d| d.as_secs_f64() * 1000.0).collect())
    }

    /// Of values in milliseconds (which may be negative: one clock's view against
    /// another's).
    fn of_ms(mut v: Vec<f64>) -> Option<Stats> {
        if v.is_empty() {
            return None;
        }
        v.sort_by(f64::total_cmp);
        // Nearest-rank percentile.
        let pct = |p: f64| v[((p / 100.0 * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1];
        Some(Stats {
            n: v.len(),
            p50: pct(50.0),
            p90: pct(90.0),
            p99: pct(99.0),
            max: *v.last().expect("non-empty"),
            mean: v.iter().sum::<f64>() / v.len() as f64,
        })
    }
}

impl std::fmt::Display for Stats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "n={} p50={:.1} ms p90={:.1} ms p99={:.1} ms max={:.1} ms mean={:.1} ms",
            self.n, self.p50, self.p90, self.p99, self.max, self.mean
        )
    }
}

/// Per pod name: when its Ready write was sent and answered, when this process's own pod
/// watch first showed it Ready (what any pod watcher, the controller's included, sees at
/// about the same time), and when a slice first showed it ready.
#[derive(Default)]
struct Timeline {
    ready_write: HashMap<String, Instant>,
    acked: HashMap<String, Instant>,
    pod_seen: HashMap<String, Instant>,
    in_slice: HashMap<String, Instant>,
    /// Pods a watch of the Endpoints objects showed as ready addresses.
    in_endpoints: std::collections::HashSet<String>,
    /// The last slice or Endpoints event this process saw.
    last_write: Option<Instant>,
}

impl Timeline {
    fn latencies<'a>(&self, names: impl Iterator<Item = &'a String>) -> (Vec<Duration>, usize) {
        let mut v = Vec::new();
        let mut missing = 0;
        for n in names {
            match (self.ready_write.get(n), self.in_slice.get(n)) {
                (Some(w), Some(s)) => v.push(s.saturating_duration_since(*w)),
                _ => missing += 1,
            }
        }
        (v, missing)
    }

    /// A phase's end-to-end latencies (with how many pods have no recorded Ready write)
    /// and its [`Self::breakdown`].
    fn summary(&self, names: &[String]) -> (String, String) {
        let (lat, missing) = self.latencies(names.iter());
        let mut latency = Stats::of(lat).map_or("no samples".into(), |s| s.to_string());
        if missing > 0 {
            latency.push_str(&format!(" ({missing} without a recorded Ready write)"));
        }
        (latency, self.breakdown(names.iter()))
    }

    /// Where the time goes, per stage: the write's round trip, write → a pod watch shows
    /// it (commit and watch fan-out), and pod watch → slice watch (the controller's queue,
    /// sync and slice write, and the slice's fan-out back).
    fn breakdown<'a>(&self, names: impl Iterator<Item = &'a String> + Clone) -> String {
        let stage = |from: &HashMap<String, Instant>, to: &HashMap<String, Instant>| {
            let v: Vec<Duration> = names
                .clone()
                .filter_map(|n| Some(to.get(n)?.saturating_duration_since(*from.get(n)?)))
                .collect();
            Stats::of(v).map_or("no samples".into(), |s| s.to_string())
        };
        format!(
            "  write sent -> API answer:     {}\n  write sent -> pod watch:      {}\n  pod watch -> slice watch:     {}",
            stage(&self.ready_write, &self.acked),
            stage(&self.ready_write, &self.pod_seen),
            stage(&self.pod_seen, &self.in_slice),
        )
    }
}

/// Wall-clock µs since the epoch of an `Instant` of this process (to set its timelines
/// beside the server log's, which the same machine's clock stamps).
fn wall_us(i: Instant) -> i64 {
    static ANCHOR: std::sync::OnceLock<(Instant, i64)> = std::sync::OnceLock::new();
    let (at, wall) = *ANCHOR.get_or_init(|| {
        let wall = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_micros();
        (Instant::now(), i64::try_from(wall).unwrap_or(i64::MAX))
    });
    if i >= at {
        wall + i.duration_since(at).as_micros() as i64
    } else {
        wall - at.duration_since(i).as_micros() as i64
    }
}

/// [`Timeline::controller_split`]'s result.
struct Split {
    text: String,
    csv: String,
}

impl Timeline {
    /// Each probe's path through the controller, from the per-sync trace lines of the
    /// server log (`RUST_LOG=…,skiff_controllers::endpointslice=debug`): when the
    /// controller queued its Service (its own pod watch, against this process's), how
    /// long until the sync that wrote it was taken (queue, plus any sync that deferred
    /// waiting for an echo of an earlier write), the write's round trip, and the slice's
    /// way back to this process's watch. Also every probe's timeline as CSV.
    fn controller_split(
        &self,
        probes: &[String],
        service_of: &HashMap<String, String>,
        log: &str,
    ) -> Split {
        let syncs = trace::syncs(log);
        let mut by_service: HashMap<&str, Vec<&trace::Sync>> = HashMap::new();
        for s in &syncs {
            by_service.entry(s.service.as_str()).or_default().push(s);
        }
        let ms = |us: i64| us as f64 / 1000.0;
        let mut stages: [Vec<f64>; 5] = Default::default();
        let (mut deferred, mut idle, mut unmatched) = (0, 0, 0);
        let mut csv = String::from(
            "probe,service,ready_write_sent,ready_write_answered,pod_watch,ctl_enqueued,ctl_dequeued,ctl_write_sent,ctl_write_answered,slice_watch,deferrals,idle_syncs\n",
        );
        for p in probes {
            let at = |m: &HashMap<String, Instant>| m.get(p).map(|i| wall_us(*i));
            let svc = service_of.get(p).map_or("", String::as_str);
            let (sent, acked, seen, in_slice) = (
                at(&self.ready_write),
                at(&self.acked),
                at(&self.pod_seen),
                at(&self.in_slice),
            );
            let path = sent.and_then(|w| trace::path(by_service.get(svc)?, w));
            let cell = |v: Option<i64>| v.map_or(String::new(), |v| v.to_string());
            csv.push_str(&format!(
                "{p},{svc},{},{},{},{},{},{},{},{},{},{}\n",
                cell(sent),
                cell(acked),
                cell(seen),
                cell(path.as_ref().map(|x| x.enqueued)),
                cell(path.as_ref().map(|x| x.dequeued)),
                cell(path.as_ref().map(|x| x.sent)),
                cell(path.as_ref().map(|x| x.answered)),
                cell(in_slice),
                cell(path.as_ref().map(|x| x.deferrals as i64)),
                cell(path.as_ref().map(|x| x.idle_syncs as i64)),
            ));
            let (Some(x), Some(seen), Some(in_slice)) = (path, seen, in_slice) else {
                unmatched += 1;
                continue;
            };
            deferred += usize::from(x.deferrals > 0);
            idle += usize::from(x.idle_syncs > 0);
            for (v, d) in stages.iter_mut().zip([
                x.enqueued - seen,
                x.dequeued - x.enqueued,
                x.sent - x.dequeued,
                x.answered - x.sent,
                in_slice - x.answered,
            ]) {
                v.push(ms(d));
            }
        }
        let text = if syncs.is_empty() {
            "  (no per-sync trace lines in the server log: run with RUST_LOG=info,skiff_controllers::endpointslice=debug for the controller's split)".to_string()
        } else {
            let names = [
                "pod watch -> ctl queued:      ",
                "ctl queued -> writing sync:   ",
                "writing sync -> writes sent:  ",
                "slice write sent -> answered: ",
                "answered -> slice watch:      ",
            ];
            let mut t = format!(
                "  controller split ({} probes matched to a writing sync, {unmatched} not; {deferred} had a deferred sync before it, {idle} a sync that wrote nothing):",
                probes.len() - unmatched
            );
            for (name, v) in names.iter().zip(stages) {
                let st = Stats::of_ms(v).map_or("no samples".into(), |s| s.to_string());
                t.push_str(&format!("\n  {name}{st}"));
            }
            t
        };
        Split { text, csv }
    }
}

/// Runs a watch of `api` in the background, handing each applied object to `f`.
fn spawn_watch<K>(
    api: Api<K>,
    config: watcher::Config,
    mut f: impl FnMut(K) + Send + 'static,
) -> tokio::task::JoinHandle<()>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + 'static,
{
    tokio::spawn(async move {
        let mut s = watcher(api, config)
            .default_backoff()
            .applied_objects()
            .boxed();
        while let Some(ev) = s.next().await {
            if let Ok(o) = ev {
                f(o);
            }
        }
    })
}

async fn wait_for(
    what: &str,
    deadline: Duration,
    mut done: impl FnMut() -> Option<String>,
) -> anyhow::Result<()> {
    let until = Instant::now() + deadline;
    loop {
        let Some(progress) = done() else {
            return Ok(());
        };
        if Instant::now() > until {
            bail!("{what}: not done within {deadline:?} ({progress})");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until node IPAM gave every node its podCIDR, so pod IPs come from it.
async fn wait_pod_cidrs(client: &Client, nodes: usize) -> anyhow::Result<()> {
    let api: Api<Node> = Api::all(client.clone());
    let until = Instant::now() + Duration::from_secs(120);
    loop {
        let with = api
            .list(&ListParams::default())
            .await?
            .items
            .iter()
            .filter(|n| n.spec.as_ref().and_then(|s| s.pod_cidr.as_ref()).is_some())
            .count();
        if with >= nodes {
            return Ok(());
        }
        if Instant::now() > until {
            bail!("only {with}/{nodes} nodes got a podCIDR within 120 s");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The EndpointSlice controller's queue from the server's admin `/metrics`.
async fn endpointslice_queue(client: &Client) -> anyhow::Result<QueueState> {
    let req = http::Request::get("/metrics")
        .body(Vec::new())
        .expect("request");
    let text = client
        .request_text(req)
        .await
        .context("reading the server's /metrics")?;
    queue_state(&text, "endpointslice").context(
        "the server's /metrics has no workqueue_depth{name=\"endpointslice\"}: is it a skiff-controlplane with the controllers in-process (no --disable-controllers)?",
    )
}

/// Waits until the EndpointSlice controller's queue is empty with no sync running and
/// stays so — no add, no slice or Endpoints write — for [`DRAIN_QUIET`].
async fn wait_queue_idle(client: &Client, tl: &Mutex<Timeline>) -> anyhow::Result<QueueState> {
    let until = Instant::now() + PHASE_DEADLINE;
    // Since when the queue has been idle with this many adds.
    let mut idle_since: Option<(Instant, u64)> = None;
    loop {
        let q = endpointslice_queue(client).await?;
        let now = Instant::now();
        idle_since = match idle_since {
            Some((t, adds)) if q.idle() && q.adds == adds => Some((t, adds)),
            _ if q.idle() => Some((now, q.adds)),
            _ => None,
        };
        let written = tl
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .last_write
            .map_or(Duration::MAX, |w| w.elapsed());
        if let Some((t, _)) = idle_since {
            if now.duration_since(t) >= DRAIN_QUIET && written >= DRAIN_QUIET {
                return Ok(q);
            }
        }
        if now > until {
            bail!("burst backlog: the endpointslice queue not idle within {PHASE_DEADLINE:?} (last: {q:?}, last slice/Endpoints write {written:?} ago)");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn endpoints(a: &Args) -> anyhow::Result<()> {
    println!(
        "== endpoints: {} pods, {} services, {} fake nodes; machine load before: {}",
        a.pods,
        a.services,
        a.nodes,
        load_average()
    );
    let extra: Vec<&str> = a.server_arg.iter().map(String::as_str).collect();
    if !extra.is_empty() {
        println!("server flags: {}", extra.join(" "));
    }
    let server = BenchServer::start(&a.server, "endpoints-bench", &extra).await?;
    let client = server.client.clone();
    let timeline = Arc::new(Mutex::new(Timeline::default()));

    let (ready_tx, mut ready_rx) = mpsc::unbounded_channel::<ReadyWrite>();
    let t = timeline.clone();
    let recorder = tokio::spawn(async move {
        while let Some(w) = ready_rx.recv().await {
            // The first write counts: a repeat (the pod's update raced the fake node's
            // own write) would only make the latency look shorter.
            let mut t = t.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(acked) = w.acked {
                t.acked.entry(w.name.clone()).or_insert(acked);
            }
            t.ready_write.entry(w.name).or_insert(w.at);
        }
    });
    let t = timeline.clone();
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let pod_watch = spawn_watch(pods, watcher::Config::default(), move |p| {
        let ready = p
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
        if ready {
            let now = Instant::now();
            let mut t = t.lock().unwrap_or_else(|e| e.into_inner());
            t.pod_seen
                .entry(p.metadata.name.unwrap_or_default())
                .or_insert(now);
        }
    });
    let t = timeline.clone();
    let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), "default");
    let slice_watch = spawn_watch(slices, watcher::Config::default(), move |sl| {
        let now = Instant::now();
        let mut t = t.lock().unwrap_or_else(|e| e.into_inner());
        t.last_write = Some(now);
        for ep in &sl.endpoints {
            let ready = ep.conditions.as_ref().and_then(|c| c.ready) == Some(true);
            if let (true, Some(name)) = (ready, ep.target_ref.as_ref().and_then(|r| r.name.clone()))
            {
                t.in_slice.entry(name).or_insert(now);
            }
        }
    });
    let t = timeline.clone();
    let eps: Api<Endpoints> = Api::namespaced(client.clone(), "default");
    let endpoints_watch = spawn_watch(eps, watcher::Config::default(), move |ep| {
        let mut t = t.lock().unwrap_or_else(|e| e.into_inner());
        t.last_write = Some(Instant::now());
        let ready = ep
            .subsets
            .iter()
            .flatten()
            .flat_map(|s| s.addresses.iter().flatten());
        for addr in ready {
            if let Some(name) = addr.target_ref.as_ref().and_then(|r| r.name.clone()) {
                t.in_endpoints.insert(name);
            }
        }
    });

    let t0 = Instant::now();
    let fake = FakeNodes::start(
        client.clone(),
        skiff_fake_nodes::Config {
            count: a.nodes,
            manage_pods: true,
            concurrency: a.concurrency,
            on_ready: Some(ready_tx),
            ..Default::default()
        },
    )
    .await?;
    wait_pod_cidrs(&client, a.nodes).await?;
    println!(
        "setup: {} fake nodes registered with podCIDRs in {:.1} s",
        a.nodes,
        t0.elapsed().as_secs_f64()
    );
    let svc_api: Api<Service> = Api::namespaced(client.clone(), "default");
    let t0 = Instant::now();
    let r: Vec<Result<Service, kube::Error>> = futures::stream::iter(0..a.services)
        .map(|i| {
            let api = svc_api.clone();
            async move {
                api.create(&PostParams::default(), &service(&format!("svc-{i}")))
                    .await
            }
        })
        .buffer_unordered(a.concurrency)
        .collect()
        .await;
    if let Some(Err(e)) = r.into_iter().find(Result::is_err) {
        bail!("creating the Services: {e}");
    }
    println!(
        "setup: {} services created in {:.1} s",
        a.services,
        t0.elapsed().as_secs_f64()
    );

    // Burst: every pod at once.
    let pod_api: Api<Pod> = Api::namespaced(client.clone(), "default");
    let names: Vec<String> = (0..a.pods).map(|i| format!("pod-{i}")).collect();
    let t0 = Instant::now();
    let r: Vec<Result<Pod, kube::Error>> = futures::stream::iter(0..a.pods)
        .map(|i| {
            let api = pod_api.clone();
            let pod = endpoint_pod(
                &format!("pod-{i}"),
                &format!("svc-{}", i % a.services),
                &format!("fake-node-{}", i % a.nodes),
            );
            async move { api.create(&PostParams::default(), &pod).await }
        })
        .buffer_unordered(a.concurrency)
        .collect()
        .await;
    if let Some(Err(e)) = r.into_iter().find(Result::is_err) {
        bail!("creating the pods: {e}");
    }
    let created = t0.elapsed().as_secs_f64();
    let tl = timeline.clone();
    let pending = |names: &[String]| {
        let t = tl.lock().unwrap_or_else(|e| e.into_inner());
        let left = names
            .iter()
            .filter(|n| !t.in_slice.contains_key(*n))
            .count();
        (left > 0).then(|| format!("{left} pods not yet ready in a slice"))
    };
    wait_for("burst", PHASE_DEADLINE, || pending(&names)).await?;
    let all = t0.elapsed().as_secs_f64();
    let (latency, breakdown) = timeline
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .summary(&names);
    println!(
        "burst: {} pods created in {created:.1} s; all ready in slices after {all:.1} s ({:.0} pods/s); Ready write -> slice: {latency}\n{breakdown}",
        a.pods,
        a.pods as f64 / all,
    );
    println!("machine load after the burst: {}", load_average());
    // The burst's backlog drains before the steady phase (see DRAIN_QUIET).
    let drain0 = Instant::now();
    let all_in_endpoints = || {
        let t = tl.lock().unwrap_or_else(|e| e.into_inner());
        let left = names
            .iter()
            .filter(|n| !t.in_endpoints.contains(*n))
            .count();
        (left > 0).then(|| format!("{left} pods not yet ready in Endpoints"))
    };
    wait_for("burst backlog", PHASE_DEADLINE, all_in_endpoints).await?;
    let idle = wait_queue_idle(&client, &tl).await?;
    println!(
        "burst backlog drained {:.1} s after the last pod reached a slice (all in Endpoints; then the endpointslice queue empty and idle with no add and no slice or Endpoints write for {DRAIN_QUIET:?}: {} adds in all); steady phase starts now",
        drain0.elapsed().as_secs_f64(),
        idle.adds
    );

    // Steady: probes at a fixed rate into the full cluster.
    let probes: Vec<String> = (0..a.probes).map(|k| format!("probe-{k}")).collect();
    let interval = Duration::from_secs_f64(1.0 / a.probe_rate.max(0.01));
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut creates = tokio::task::JoinSet::new();
    let mut probe_service: HashMap<String, String> = HashMap::new();
    let t0 = Instant::now();
    for (k, probe) in probes.iter().enumerate() {
        tick.tick().await;
        let api = pod_api.clone();
        // Spread over the Services (and nodes) so no Service gets them all.
        let svc = format!("svc-{}", (k * 7919) % a.services);
        probe_service.insert(probe.clone(), format!("default/{svc}"));
        let pod = endpoint_pod(probe, &svc, &format!("fake-node-{}", k % a.nodes));
        creates.spawn(async move { api.create(&PostParams::default(), &pod).await });
        while let Some(r) = creates.try_join_next() {
            r.context("a probe create task")?
                .context("creating a probe pod")?;
        }
    }
    while let Some(r) = creates.join_next().await {
        r.context("a probe create task")?
            .context("creating a probe pod")?;
    }
    let sent = t0.elapsed().as_secs_f64();
    wait_for("steady probes", PHASE_DEADLINE, || pending(&probes)).await?;
    let (latency, breakdown) = timeline
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .summary(&probes);
    println!(
        "steady: {} probe pods at {:.0}/s ({sent:.1} s) into {} pods / {} services; Ready write -> slice: {latency}\n{breakdown}",
        a.probes, a.probe_rate, a.pods, a.services,
    );
    println!("machine load after: {}", load_average());
    let log = server.log();
    let report = timeline
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .controller_split(&probes, &probe_service, &log);
    println!("{}", report.text);
    if let Some(path) = &a.samples_csv {
        std::fs::write(path, report.csv)
            .with_context(|| format!("writing the samples to {}", path.display()))?;
    }
    if let Some(path) = &a.keep_server_log {
        std::fs::write(path, &log)
            .with_context(|| format!("writing the server log to {}", path.display()))?;
    }
    pod_watch.abort();
    slice_watch.abort();
    endpoints_watch.abort();
    recorder.abort();
    drop(fake);
    drop(server);
    Ok(())
}

fn deployment_object(name: &str, replicas: i32) -> Deployment {
    json(serde_json::json!({
        "metadata": {"name": name, "namespace": "default"},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {"containers": [{
                    "name": "web",
                    "image": "registry.k8s.io/pause:3.10",
                    // scheduler_perf's pod-default requests.
                    "resources": {"requests": {"cpu": "100m", "memory": "500Mi"}},
                }]},
            },
        },
    }))
}

/// When the count of pods in each state first reached the target.
#[derive(Default)]
struct Milestones {
    created: Option<Instant>,
    bound: Option<Instant>,
    running: Option<Instant>,
    available: Option<Instant>,
}

async fn deployment(a: &Args) -> anyhow::Result<()> {
    println!(
        "== deployment: {} replicas on {} fake nodes; machine load before: {}",
        a.replicas,
        a.nodes,
        load_average()
    );
    let server = BenchServer::start(&a.server, "deployment-bench", &[]).await?;
    let client = server.client.clone();
    let t0 = Instant::now();
    let fake = FakeNodes::start(
        client.clone(),
        skiff_fake_nodes::Config {
            count: a.nodes,
            manage_pods: true,
            concurrency: a.concurrency,
            ..Default::default()
        },
    )
    .await?;
    wait_pod_cidrs(&client, a.nodes).await?;
    println!(
        "setup: {} fake nodes registered with podCIDRs in {:.1} s",
        a.nodes,
        t0.elapsed().as_secs_f64()
    );

    let target = a.replicas.max(0) as usize;
    let marks = Arc::new(Mutex::new(Milestones::default()));
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let m = marks.clone();
    // name → (bound, running)
    let mut seen: HashMap<String, (bool, bool)> = HashMap::new();
    let pod_watch = spawn_watch(
        pods,
        watcher::Config::default().labels("app=web"),
        move |p: Pod| {
            let now = Instant::now();
            let bound = p.spec.as_ref().and_then(|s| s.node_name.as_ref()).is_some();
            let running = p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running");
            let e = seen
                .entry(p.metadata.name.clone().unwrap_or_default())
                .or_default();
            e.0 |= bound;
            e.1 |= running;
            let mut m = m.lock().unwrap_or_else(|e| e.into_inner());
            if m.created.is_none() && seen.len() >= target {
                m.created = Some(now);
            }
            if m.bound.is_none() && seen.values().filter(|v| v.0).count() >= target {
                m.bound = Some(now);
            }
            if m.running.is_none() && seen.values().filter(|v| v.1).count() >= target {
                m.running = Some(now);
            }
        },
    );
    let deploys: Api<Deployment> = Api::namespaced(client.clone(), "default");
    let m = marks.clone();
    let replicas = a.replicas;
    let d = deploys.clone();
    let deploy_watch = spawn_watch(d, watcher::Config::default(), move |dep| {
        let available = dep
            .status
            .as_ref()
            .and_then(|s| s.available_replicas)
            .unwrap_or(0);
        if available >= replicas {
            let mut m = m.lock().unwrap_or_else(|e| e.into_inner());
            m.available.get_or_insert_with(Instant::now);
        }
    });
    let t0 = Instant::now();
    deploys
        .create(
            &PostParams::default(),
            &deployment_object("web", a.replicas),
        )
        .await
        .context("creating the Deployment")?;
    let mk = marks.clone();
    wait_for("deployment", PHASE_DEADLINE, || {
        let m = mk.lock().unwrap_or_else(|e| e.into_inner());
        (m.running.is_none() || m.available.is_none()).then(|| {
            format!(
                "created: {}, bound: {}, running: {}, available: {}",
                m.created.is_some(),
                m.bound.is_some(),
                m.running.is_some(),
                m.available.is_some()
            )
        })
    })
    .await?;
    let m = marks.lock().unwrap_or_else(|e| e.into_inner());
    let at = |i: Option<Instant>| i.map_or(f64::NAN, |i| i.duration_since(t0).as_secs_f64());
    let running = at(m.running);
    println!(
        "deployment: {} replicas on {} fake nodes: all pods created after {:.2} s, all bound after {:.2} s, all Running after {running:.2} s ({:.0} pods/s), Deployment availableReplicas={} after {:.2} s (from the create request)",
        a.replicas,
        a.nodes,
        at(m.created),
        at(m.bound),
        a.replicas as f64 / running,
        a.replicas,
        at(m.available)
    );
    drop(m);
    println!("machine load after: {}", load_average());
    pod_watch.abort();
    deploy_watch.abort();
    drop(fake);
    drop(server);
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let a = Args::parse();
    if a.services == 0 || a.nodes == 0 {
        bail!("--services and --nodes must be at least 1");
    }
    if a.only.contains(&Part::Endpoints) {
        endpoints(&a).await?;
    }
    if a.only.contains(&Part::Deployment) {
        deployment(&a).await?;
    }
    Ok(())
}
