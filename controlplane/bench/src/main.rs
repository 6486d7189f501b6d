//! `skiff-apiserver-bench`: measures a real `skiff-controlplane server` process on
//! 127.0.0.1, over the redb store and over a local etcd (a throwaway `etcd` process with a
//! temporary data directory), and prints BENCHMARKS.md rows:
//!
//! - cold start: spawn → first `/readyz` 200 (fresh data directory: CA and certificates are
//!   generated, the store is created, the default objects are written);
//! - idle resident memory (VmRSS) with the controllers and the scheduler, and without them;
//!   and with the pods loaded;
//! - create throughput and per-create latency (pods, `--concurrency` in flight), overall
//!   and per 1000 pods, so that a slowdown as the store grows shows (the first thousand
//!   against the last);
//! - the scale shape: after the pods, `--services` Services (ClusterIP, each
//!   allocating an address) and `--slices` EndpointSlices, with their create rates per
//!   tenth, and the resident memory with all of it loaded;
//! - LIST of all pods of a namespace at 1k and 10k pods: from the watch cache
//!   (`resourceVersion` unset, a consistent read) vs from the store
//!   (`resourceVersionMatch=Exact`), full body read by the client;
//! - watch fan-out: N watchers on one namespace's ConfigMaps, one update → the time until
//!   each watcher has the event.
//!
//! Every request goes to 127.0.0.1; the loops are bounded in count.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Parser;
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use kube::api::{Api, Patch, PatchParams, PostParams, WatchEvent, WatchParams};
use serde_json::json;

#[derive(Parser)]
#[command(about = "API server benchmark against a real skiff-controlplane process")]
struct Args {
    /// The skiff-controlplane binary.
    #[arg(long)]
    server: PathBuf,
    /// The etcd binary (for the etcd rows).
    #[arg(long, default_value = "/usr/bin/etcd")]
    etcd: PathBuf,
    /// Backends to measure.
    #[arg(long, value_delimiter = ',', default_value = "redb,etcd")]
    stores: Vec<String>,
    /// Pods for the small and the large LIST.
    #[arg(long, value_delimiter = ',', default_value = "1000,10000")]
    pods: Vec<usize>,
    /// Watchers for the fan-out.
    #[arg(long, default_value_t = 1000)]
    watchers: usize,
    /// Creates in flight.
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
    /// Services created after the pods (each allocates a ClusterIP).
    #[arg(long, default_value_t = 1000)]
    services: usize,
    /// EndpointSlices created after the Services (10 endpoints each, one per pod).
    #[arg(long, default_value_t = 1000)]
    slices: usize,
    /// LIST requests per measured cell.
    #[arg(long, default_value_t = 30)]
    list_iterations: usize,
    /// Seconds to wait after the loaded-memory row (diagnostics: attach a profiler or read
    /// `/proc/<pid>/smaps` of the server while it holds everything). The server's pid is
    /// printed to stderr when the wait starts.
    #[arg(long, default_value_t = 0)]
    hold_loaded: u64,
    /// An extra flag for every server started (repeat for several), e.g.
    /// `--server-arg=--redb-cache-size=8`.
    #[arg(long, allow_hyphen_values = true)]
    server_arg: Vec<String>,
    /// Where to write the results as JSON.
    #[arg(long)]
    out: Option<PathBuf>,
}

/// A child process killed on drop, with its temporary directory removed.
struct Proc {
    child: Child,
    dir: PathBuf,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn temp_dir(what: &str) -> Result<PathBuf> {
    static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let d = std::env::temp_dir().join(format!(
        "skiff-apiserver-bench-{}-{what}-{n}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d)?;
    Ok(d)
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// A single-member etcd on 127.0.0.1; its client URL.
fn start_etcd(bin: &Path) -> Result<(Proc, String)> {
    let dir = temp_dir("etcd")?;
    let (client, peer) = (free_port()?, free_port()?);
    let url = format!("http://127.0.0.1:{client}");
    let peer_url = format!("http://127.0.0.1:{peer}");
    let child = Command::new(bin)
        .arg("--name=bench")
        .arg(format!("--data-dir={}", dir.join("data").display()))
        .arg(format!("--listen-client-urls={url}"))
        .arg(format!("--advertise-client-urls={url}"))
        .arg(format!("--listen-peer-urls={peer_url}"))
        .arg(format!("--initial-advertise-peer-urls={peer_url}"))
        .arg(format!("--initial-cluster=bench={peer_url}"))
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("etcd.log"))?)
        .spawn()
        .with_context(|| format!("starting {}", bin.display()))?;
    let p = Proc { child, dir };
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", client)).is_err() {
        if Instant::now() > deadline {
            bail!("etcd did not listen on {url} within 30 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok((p, url))
}

struct Server {
    proc: Proc,
    client: kube::Client,
    /// Spawn → first `/readyz` 200.
    cold_start: Duration,
}

impl Server {
    /// Stops the server as an operator does (SIGINT: it shuts down cleanly) and starts it
    /// again on the same data directory (and store): the cold start with the store loaded.
    async fn restart(mut self, bin: &Path, store: &[String], extra: &[&str]) -> Result<Server> {
        let pid = self.proc.child.id().to_string();
        let status = Command::new("kill").args(["-INT", &pid]).status()?;
        if !status.success() {
            bail!("kill -INT {pid} failed");
        }
        let deadline = Instant::now() + Duration::from_secs(60);
        while self.proc.child.try_wait()?.is_none() {
            if Instant::now() > deadline {
                bail!("the server did not exit within 60 s of SIGINT");
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // The new process owns the directory now; the old handle must not remove it.
        let dir = std::mem::take(&mut self.proc.dir);
        drop(self);
        start_server_in(dir, bin, store, extra).await
    }

    fn rss_mib(&self) -> f64 {
        self.status_mib("VmRSS")
    }

    /// A `kB` field of the server's `/proc/<pid>/status`, in MiB.
    fn status_mib(&self, field: &str) -> f64 {
        self.status_field(field)
            .and_then(|v| v.trim_end_matches("kB").trim().parse::<f64>().ok())
            .map_or(f64::NAN, |kb| kb / 1024.0)
    }

    fn status_field(&self, field: &str) -> Option<String> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.proc.child.id()))
            .unwrap_or_default();
        status.lines().find_map(|l| {
            l.strip_prefix(field)
                .and_then(|v| v.strip_prefix(':'))
                .map(|v| v.trim().to_string())
        })
    }

    /// Where the resident memory is: anonymous (heap, stacks) vs file-backed (the binary;
    /// redb reads its file with `pread`, so its pages are not mapped), and the thread count
    /// (each thread that allocates can get its own glibc malloc arena).
    fn rss_breakdown(&self) -> String {
        format!(
            "anonymous {:.1} MiB, file {:.1} MiB, {} threads",
            self.status_mib("RssAnon"),
            self.status_mib("RssFile"),
            self.status_field("Threads").unwrap_or_default()
        )
    }
}

async fn start_server(bin: &Path, store: &[String], extra: &[&str]) -> Result<Server> {
    start_server_in(temp_dir("server")?, bin, store, extra).await
}

/// Starts the server on `dir/data` (a fresh or an existing data directory), logging to
/// `dir/server.log` (appended: a restart keeps the earlier run's log).
async fn start_server_in(
    dir: PathBuf,
    bin: &Path,
    store: &[String],
    extra: &[&str],
) -> Result<Server> {
    let data = dir.join("data");
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("server.log"))?;
    let kubeconfig = data.join("admin.kubeconfig");
    // A restart must not read the previous run's kubeconfig as a sign of life.
    let _ = std::fs::remove_file(&kubeconfig);
    let t0 = Instant::now();
    let child = Command::new(bin)
        .args(["server", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(&data)
        .args(store)
        .args(extra)
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .with_context(|| format!("starting {}", bin.display()))?;
    let mut proc = Proc { child, dir };
    let deadline = t0 + Duration::from_secs(60);
    let fail = |proc: &Proc, why: &str| {
        anyhow::anyhow!(
            "{why}; server log:\n{}",
            std::fs::read_to_string(proc.dir.join("server.log")).unwrap_or_default()
        )
    };
    while !std::fs::read_to_string(&kubeconfig).is_ok_and(|t| t.contains("server: ")) {
        if Instant::now() > deadline || proc.child.try_wait()?.is_some() {
            return Err(fail(&proc, "no kubeconfig from the server"));
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let kc = kube::config::Kubeconfig::read_from(&kubeconfig)?;
    let client = kube::Client::try_from(
        kube::Config::from_custom_kubeconfig(kc, &Default::default()).await?,
    )?;
    loop {
        let req = http::Request::get("/readyz").body(Vec::new())?;
        if client.request_text(req).await.is_ok_and(|t| t == "ok") {
            break;
        }
        if Instant::now() > deadline || proc.child.try_wait()?.is_some() {
            return Err(fail(&proc, "the server never answered /readyz"));
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    Ok(Server {
        cold_start: t0.elapsed(),
        proc,
        client,
    })
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1e3)
}

/// The namespace every benchmark object lives in.
const BENCH_NS: &str = "bench";

fn bench_pod(i: usize) -> Pod {
    serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": format!("bench-{i:05}"), "labels": {"app": format!("app-{}", i % 100), "bench": "true"}},
        "spec": {
            "nodeName": format!("bench-node-{}", i % 100),
            "containers": [{"name": "c", "image": "skiff.local/host", "command": ["sleep", "infinity"],
                            "resources": {"requests": {"cpu": "10m", "memory": "16Mi"}}}],
        },
    }))
    .expect("a valid pod")
}

fn bench_service(i: usize) -> serde_json::Value {
    json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": format!("svc-{i:05}"), "labels": {"bench": "true"}},
        "spec": {"selector": {"app": format!("app-{}", i % 100)},
                 "ports": [{"name": "http", "port": 80, "targetPort": 8080, "protocol": "TCP"}]},
    })
}

/// A slice of `svc`'s endpoints: 10 pods' addresses, as the endpointslice controller
/// writes them.
fn bench_slice(i: usize) -> serde_json::Value {
    let endpoints: Vec<serde_json::Value> = (0..10)
        .map(|e| {
            let pod = i * 10 + e;
            json!({
                "addresses": [format!("10.42.{}.{}", pod / 250, pod % 250 + 2)],
                "conditions": {"ready": true, "serving": true, "terminating": false},
                "nodeName": format!("bench-node-{}", pod % 100),
                "targetRef": {"kind": "Pod", "namespace": "bench", "name": format!("bench-{pod:05}")},
            })
        })
        .collect();
    json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": format!("svc-{i:05}-abcde"),
                     "labels": {"kubernetes.io/service-name": format!("svc-{i:05}"),
                                "endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io"}},
        "addressType": "IPv4",
        "endpoints": endpoints,
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
    })
}

/// Sends `request(i)` for every `i` in `range`, `concurrency` in flight, each answer read
/// in full; sorted per-request latencies (from the send to the whole answer) and the wall
/// time.
async fn timed_requests(
    client: &kube::Client,
    range: std::ops::Range<usize>,
    concurrency: usize,
    request: impl Fn(usize) -> Result<http::Request<Vec<u8>>>,
) -> Result<(Vec<Duration>, Duration)> {
    let t = Instant::now();
    let request = &request;
    let mut lat: Vec<Duration> = futures::stream::iter(range)
        .map(|i| {
            let client = client.clone();
            async move {
                let req = request(i)?;
                let what = format!("{} {} #{i}", req.method(), req.uri());
                let t = Instant::now();
                client.request_text(req).await.context(what)?;
                Ok::<_, anyhow::Error>(t.elapsed())
            }
        })
        .buffer_unordered(concurrency)
        .try_collect()
        .await?;
    lat.sort();
    Ok((lat, t.elapsed()))
}

/// POSTs `body(i)` for every `i` in `range` to `path`, `concurrency` in flight; sorted
/// per-create latencies and the wall time.
async fn create_all(
    client: &kube::Client,
    path: &str,
    range: std::ops::Range<usize>,
    concurrency: usize,
    body: fn(usize) -> serde_json::Value,
) -> Result<(Vec<Duration>, Duration)> {
    timed_requests(client, range, concurrency, |i| {
        Ok(http::Request::post(path)
            .header("content-type", "application/json")
            .body(serde_json::to_vec(&body(i))?)?)
    })
    .await
}

/// Updates every object `path(i)` for `i` in `range` with a JSON merge patch of one label
/// (an update through the API: read, patch, compare-and-swap write), `concurrency` in
/// flight; sorted per-update latencies and the wall time.
async fn update_all(
    client: &kube::Client,
    range: std::ops::Range<usize>,
    concurrency: usize,
    path: fn(usize) -> String,
) -> Result<(Vec<Duration>, Duration)> {
    let patch = serde_json::to_vec(&json!({"metadata": {"labels": {"bench-updated": "true"}}}))?;
    timed_requests(client, range, concurrency, |i| {
        Ok(http::Request::patch(path(i))
            .header("content-type", "application/merge-patch+json")
            .body(patch.clone())?)
    })
    .await
}

/// Creates pods `range` with `concurrency` in flight; per-create latencies and the wall time.
async fn create_pods(
    api: &Api<Pod>,
    range: std::ops::Range<usize>,
    concurrency: usize,
) -> Result<(Vec<Duration>, Duration)> {
    let t = Instant::now();
    let mut lat: Vec<Duration> = futures::stream::iter(range)
        .map(|i| {
            let api = api.clone();
            async move {
                let t = Instant::now();
                api.create(&PostParams::default(), &bench_pod(i)).await?;
                Ok::<_, kube::Error>(t.elapsed())
            }
        })
        .buffer_unordered(concurrency)
        .try_collect()
        .await?;
    lat.sort();
    Ok((lat, t.elapsed()))
}

/// Creates `n` objects in tenths (at least 100 each); each tenth's rate and p99, and all
/// latencies sorted with the total wall time.
async fn create_in_tenths(
    client: &kube::Client,
    path: &str,
    n: usize,
    concurrency: usize,
    body: fn(usize) -> serde_json::Value,
) -> Result<(Vec<String>, Vec<Duration>, Duration)> {
    let step = (n / 10).max(100);
    let (mut tenths, mut all, mut wall) = (Vec::new(), Vec::new(), Duration::ZERO);
    let mut at = 0;
    while at < n {
        let end = (at + step).min(n);
        let (lat, w) = create_all(client, path, at..end, concurrency, body).await?;
        tenths.push(format!(
            "{at}–{end}: {:.0}/s, p99 {}",
            (end - at) as f64 / w.as_secs_f64(),
            ms(pct(&lat, 0.99))
        ));
        all.extend(lat);
        wall += w;
        at = end;
    }
    all.sort();
    Ok((tenths, all, wall))
}

/// LIST of the namespace's pods, `n` times, body fully read; sorted latencies. `exact`:
/// at the current revision with resourceVersionMatch=Exact (the store answers).
async fn list_latency(
    client: &kube::Client,
    ns: &str,
    expect: usize,
    exact: bool,
    n: usize,
) -> Result<Vec<Duration>> {
    let mut lat = Vec::with_capacity(n);
    for _ in 0..n {
        let mut path = format!("/api/v1/namespaces/{ns}/pods");
        if exact {
            let rv = current_rv(client, ns).await?;
            path.push_str(&format!("?resourceVersion={rv}&resourceVersionMatch=Exact"));
        }
        let t = Instant::now();
        let body = client
            .request_text(http::Request::get(&path).body(Vec::new())?)
            .await?;
        lat.push(t.elapsed());
        let v: serde_json::Value = serde_json::from_str(&body)?;
        let got = v["items"].as_array().map_or(0, Vec::len);
        if got != expect {
            bail!("LIST {path}: {got} pods, expected {expect}");
        }
    }
    lat.sort();
    Ok(lat)
}

async fn current_rv(client: &kube::Client, ns: &str) -> Result<String> {
    let body = client
        .request_text(
            http::Request::get(format!("/api/v1/namespaces/{ns}/configmaps?limit=1"))
                .body(Vec::new())?,
        )
        .await?;
    let v: serde_json::Value = serde_json::from_str(&body)?;
    Ok(v["metadata"]["resourceVersion"]
        .as_str()
        .context("no resourceVersion")?
        .to_string())
}

/// `watchers` watches on one ConfigMap's namespace, `rounds` updates; for every watcher and
/// round, update sent → event received. Sorted.
async fn fan_out(
    client: &kube::Client,
    ns: &str,
    watchers: usize,
    rounds: usize,
) -> Result<Vec<Duration>> {
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
    let cm: ConfigMap = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "fan"}, "data": {"round": "-1"},
    }))?;
    let created = api.create(&PostParams::default(), &cm).await?;
    let rv = created
        .metadata
        .resource_version
        .clone()
        .unwrap_or_default();
    // Start the watches (the server has registered each once its response has started).
    let streams: Vec<_> = futures::stream::iter(0..watchers)
        .map(|_| {
            let api = api.clone();
            let rv = rv.clone();
            async move {
                api.watch(&WatchParams::default().timeout(290), &rv)
                    .await
                    .map(|s| s.boxed())
            }
        })
        .buffer_unordered(64)
        .try_collect()
        .await?;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(usize, Instant)>();
    let mut tasks = Vec::new();
    for mut s in streams {
        let tx = tx.clone();
        tasks.push(tokio::spawn(async move {
            while let Some(Ok(ev)) = s.next().await {
                if let WatchEvent::Modified(cm) = ev {
                    let round = cm
                        .data
                        .as_ref()
                        .and_then(|d| d.get("round"))
                        .and_then(|r| r.parse::<usize>().ok());
                    if let Some(r) = round {
                        if tx.send((r, Instant::now())).is_err() {
                            return;
                        }
                    }
                }
            }
        }));
    }
    drop(tx);
    let mut lat = Vec::new();
    for round in 0..rounds {
        let t0 = Instant::now();
        api.patch(
            "fan",
            &PatchParams::default(),
            &Patch::Merge(json!({"data": {"round": round.to_string()}})),
        )
        .await?;
        let mut seen = 0;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        while seen < watchers {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some((r, at))) if r == round => {
                    lat.push(at.duration_since(t0));
                    seen += 1;
                }
                Ok(Some(_)) => {}
                Ok(None) => bail!("watchers ended during round {round}"),
                Err(_) => bail!(
                    "round {round}: only {seen}/{watchers} watchers got the update within 60 s"
                ),
            }
        }
    }
    for t in tasks {
        t.abort();
    }
    lat.sort();
    Ok(lat)
}

/// `n` creates straight to etcd, `concurrency` at a time, each the transaction the store
/// sends for a create (a `create_revision == 0` compare, then the put), under a prefix of
/// their own; the sorted latencies and the wall time.
async fn etcd_creates(
    url: &str,
    n: usize,
    concurrency: usize,
) -> Result<(Vec<Duration>, Duration)> {
    use etcd_client::{Compare, CompareOp, Txn, TxnOp};
    let client = etcd_client::Client::connect([url], None).await?;
    let value = vec![b'x'; 1500];
    let t0 = Instant::now();
    let mut lat: Vec<Duration> = futures::stream::iter(0..n)
        .map(|i| {
            let mut kv = client.kv_client();
            let value = value.clone();
            async move {
                let key = format!("/bench-floor/{}/{i}", concurrency);
                let txn = Txn::new()
                    .when(vec![Compare::create_revision(
                        key.clone(),
                        CompareOp::Equal,
                        0,
                    )])
                    .and_then(vec![TxnOp::put(key, value, None)]);
                let t = Instant::now();
                kv.txn(txn).await?;
                Ok::<_, anyhow::Error>(t.elapsed())
            }
        })
        .buffer_unordered(concurrency)
        .try_collect()
        .await?;
    let wall = t0.elapsed();
    lat.sort();
    Ok((lat, wall))
}

/// CPU time (user + system) process `pid` has used so far, from `/proc/<pid>/stat`
/// (in clock ticks of 10 ms: Linux's USER_HZ is 100 on every architecture).
fn cpu_time(pid: u32) -> Result<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // The fields after the command name (which may contain spaces) in parentheses.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .context("malformed /proc/<pid>/stat")?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of stat(5); `rest` starts at field 3.
    let ticks: u64 = fields[11].parse::<u64>()? + fields[12].parse::<u64>()?;
    Ok(Duration::from_millis(ticks * 10))
}

/// etcd helper, session 8: what a watch's `prev_kv` costs etcd. `n` keys are created under
/// a prefix of their own, a watch of that prefix (with `prev_kv` or not) is drained by a
/// task of its own, then every key is updated once, `concurrency` at a time, with the
/// transaction the store sends for an update (live and `mod_revision` compares, then the
/// put). Returns the sorted update latencies, the wall time and the CPU time etcd (`pid`)
/// used during the updates.
async fn etcd_updates(
    url: &str,
    pid: u32,
    n: usize,
    concurrency: usize,
    prev_kv: bool,
) -> Result<(Vec<Duration>, Duration, Duration)> {
    use etcd_client::{Compare, CompareOp, Txn, TxnOp, WatchOptions};
    let client = etcd_client::Client::connect([url], None).await?;
    let value = vec![b'x'; 1500];
    let prefix = format!("/bench-update/{}/", if prev_kv { "prev" } else { "plain" });
    let mut revs = Vec::with_capacity(n);
    for i in 0..n {
        let r = client
            .kv_client()
            .put(format!("{prefix}{i}"), value.clone(), None)
            .await?;
        revs.push(r.header().map_or(0, |h| h.revision()));
    }
    let mut options = WatchOptions::new().with_prefix();
    if prev_kv {
        options = options.with_prev_key();
    }
    let mut stream = client
        .watch_client()
        .watch(prefix.clone(), Some(options))
        .await?;
    let drained = tokio::spawn(async move {
        let mut events = 0;
        while events < n {
            match stream.message().await {
                Ok(Some(resp)) => events += resp.events().len(),
                _ => break,
            }
        }
        events
    });
    let cpu0 = cpu_time(pid)?;
    let t0 = Instant::now();
    let mut lat: Vec<Duration> = futures::stream::iter(revs.into_iter().enumerate())
        .map(|(i, rev)| {
            let mut kv = client.kv_client();
            let value = value.clone();
            let key = format!("{prefix}{i}");
            async move {
                let txn = Txn::new()
                    .when(vec![
                        Compare::version(key.clone(), CompareOp::Greater, 0),
                        Compare::mod_revision(key.clone(), CompareOp::Equal, rev),
                    ])
                    .and_then(vec![TxnOp::put(key.clone(), value, None)])
                    .or_else(vec![TxnOp::get(key, None)]);
                let t = Instant::now();
                let resp = kv.txn(txn).await?;
                anyhow::ensure!(resp.succeeded(), "update of {i} lost its compare");
                Ok::<_, anyhow::Error>(t.elapsed())
            }
        })
        .buffer_unordered(concurrency)
        .try_collect()
        .await?;
    let wall = t0.elapsed();
    // Until the watch has sent every update (etcd's work for them includes the sending).
    let events = tokio::time::timeout(Duration::from_secs(30), drained).await??;
    anyhow::ensure!(events >= n, "the watch delivered {events} of {n} events");
    let cpu = cpu_time(pid)? - cpu0;
    lat.sort();
    Ok((lat, wall, cpu))
}

async fn ensure_ns(client: &kube::Client, name: &str) -> Result<()> {
    let req = http::Request::post("/api/v1/namespaces")
        .header("content-type", "application/json")
        .body(serde_json::to_vec(
            &json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}),
        )?)?;
    client.request_text(req).await?;
    Ok(())
}

async fn bench_store(args: &Args, store: &str, results: &mut Vec<serde_json::Value>) -> Result<()> {
    // Each server gets a fresh store (a fresh etcd for the etcd rows).
    let backend = |what: &str| -> Result<(Option<Proc>, Vec<String>)> {
        match what {
            "redb" => Ok((
                None,
                ["--store".to_string(), "redb".into()]
                    .into_iter()
                    .chain(args.server_arg.iter().cloned())
                    .collect(),
            )),
            "etcd" => {
                let (p, url) = start_etcd(&args.etcd)?;
                Ok((
                    Some(p),
                    [
                        "--store".to_string(),
                        "etcd".into(),
                        "--etcd-endpoints".into(),
                        url,
                    ]
                    .into_iter()
                    .chain(args.server_arg.iter().cloned())
                    .collect(),
                ))
            }
            other => bail!("unknown store {other:?}: redb or etcd"),
        }
    };
    let row = |metric: &str, value: String| {
        println!("| {store} | {metric} | {value} |");
        json!({"store": store, "metric": metric, "value": value})
    };

    // Cold start and idle memory, everything in-process (controllers + scheduler).
    let mut starts = Vec::new();
    let mut full_rss = f64::NAN;
    for i in 0..3 {
        let (_etcd, flags) = backend(store)?;
        let s = start_server(&args.server, &flags, &[]).await?;
        starts.push(s.cold_start);
        if i == 2 {
            tokio::time::sleep(Duration::from_secs(10)).await;
            full_rss = s.rss_mib();
        }
    }
    starts.sort();
    results.push(row(
        "cold start → first /readyz 200 (median of 3, with controllers + scheduler)",
        format!(
            "{} (min {}, max {})",
            ms(starts[1]),
            ms(starts[0]),
            ms(starts[2])
        ),
    ));
    results.push(row(
        "idle RSS, controllers + scheduler, empty cluster (10 s after ready)",
        format!("{full_rss:.1} MiB"),
    ));

    // The API server alone.
    let (_etcd, flags) = backend(store)?;
    let s = start_server(
        &args.server,
        &flags,
        &["--disable-controllers", "--disable-scheduler"],
    )
    .await?;
    tokio::time::sleep(Duration::from_secs(10)).await;
    results.push(row(
        "idle RSS, API server only (--disable-controllers --disable-scheduler), empty",
        format!("{:.1} MiB", s.rss_mib()),
    ));
    // cp helper: etcd's own create latency, the floor under the API server's.
    if store == "etcd" {
        let url = &flags[3];
        for (n, conc) in [(200, 1), (1000, args.concurrency)] {
            let (lat, wall) = etcd_creates(url, n, conc).await?;
            results.push(row(
                &format!(
                    "etcd alone (no API server in the path): create Txn (create_revision == 0 compare, 1.5 KB put), {n} at concurrency {conc}: throughput; p50 / p99"
                ),
                format!(
                    "{:.0} creates/s; {} / {}",
                    n as f64 / wall.as_secs_f64(),
                    ms(pct(&lat, 0.5)),
                    ms(pct(&lat, 0.99))
                ),
            ));
        }
    }
    // end cp helper
    // etcd helper, session 8: etcd's cost of a watch with previous values (what the watch
    // cache's own watch asked for until session 8), alternated to even out drift.
    if let (Some(etcd), "etcd") = (&_etcd, store) {
        let url = &flags[3];
        let pid = etcd.child.id();
        let mut by_mode: [Vec<(Vec<Duration>, Duration, Duration)>; 2] = Default::default();
        for round in 0..4 {
            let prev_kv = round % 2 == 0;
            by_mode[usize::from(prev_kv)]
                .push(etcd_updates(url, pid, 1000, args.concurrency, prev_kv).await?);
        }
        for (prev_kv, runs) in [(true, &by_mode[1]), (false, &by_mode[0])] {
            let cells: Vec<String> = runs
                .iter()
                .map(|(lat, wall, cpu)| {
                    format!(
                        "{:.0} updates/s; {} / {}; etcd CPU {:.0} µs per update",
                        lat.len() as f64 / wall.as_secs_f64(),
                        ms(pct(lat, 0.5)),
                        ms(pct(lat, 0.99)),
                        cpu.as_secs_f64() * 1e6 / lat.len() as f64
                    )
                })
                .collect();
            results.push(row(
                &format!(
                    "etcd alone: update Txn (mod_revision compare, 1.5 KB put), 1000 at concurrency {}, with a prefix watch {} prev_kv open: throughput; p50 / p99; etcd CPU (2 runs)",
                    args.concurrency,
                    if prev_kv { "with" } else { "without" }
                ),
                cells.join("; then "),
            ));
        }
    }
    // end etcd helper
    let ns = BENCH_NS;
    ensure_ns(&s.client, ns).await?;
    let pods: Api<Pod> = Api::namespaced(s.client.clone(), ns);
    let mut created = 0;
    let mut all_lat = Vec::new();
    let mut all_wall = Duration::ZERO;
    // Per 1000 pods: (first pod, sorted latencies, wall time).
    let mut thousands: Vec<(usize, Vec<Duration>, Duration)> = Vec::new();
    for &n in &args.pods {
        while created < n {
            let end = (created + 1000).min(n);
            let (lat, wall) = create_pods(&pods, created..end, args.concurrency).await?;
            all_lat.extend(lat.iter().copied());
            all_wall += wall;
            thousands.push((created, lat, wall));
            created = end;
        }
        let cache = list_latency(&s.client, ns, n, false, args.list_iterations).await?;
        let exact = list_latency(&s.client, ns, n, true, args.list_iterations).await?;
        results.push(row(
            &format!("LIST {n} pods, watch cache (RV unset), p50 / p99"),
            format!("{} / {}", ms(pct(&cache, 0.5)), ms(pct(&cache, 0.99))),
        ));
        results.push(row(
            &format!("LIST {n} pods, store (resourceVersionMatch=Exact), p50 / p99"),
            format!("{} / {}", ms(pct(&exact, 0.5)), ms(pct(&exact, 0.99))),
        ));
        results.push(row(
            &format!("RSS with {n} pods loaded (API server only)"),
            format!("{:.1} MiB", s.rss_mib()),
        ));
    }
    all_lat.sort();
    results.push(row(
        &format!(
            "pod create, {created} pods at concurrency {}: throughput; p50 / p99",
            args.concurrency
        ),
        format!(
            "{:.0} creates/s; {} / {}",
            created as f64 / all_wall.as_secs_f64(),
            ms(pct(&all_lat, 0.5)),
            ms(pct(&all_lat, 0.99))
        ),
    ));
    if thousands.len() > 1 {
        for (start, lat, wall) in [&thousands[0], &thousands[thousands.len() - 1]] {
            results.push(row(
                &format!(
                    "pod create with {start} pods already stored, next {} at concurrency {}: throughput; p50 / p99",
                    lat.len(),
                    args.concurrency
                ),
                format!(
                    "{:.0} creates/s; {} / {}",
                    lat.len() as f64 / wall.as_secs_f64(),
                    ms(pct(lat, 0.5)),
                    ms(pct(lat, 0.99))
                ),
            ));
        }
    }

    // The shape: Services (each allocating a ClusterIP) and EndpointSlices on top.
    if args.services > 0 {
        let path = format!("/api/v1/namespaces/{ns}/services");
        let (tenths, lat, wall) = create_in_tenths(
            &s.client,
            &path,
            args.services,
            args.concurrency,
            bench_service,
        )
        .await?;
        results.push(row(
            &format!(
                "Service create (ClusterIP allocation), {} at concurrency {}: throughput; p50 / p99",
                args.services, args.concurrency
            ),
            format!(
                "{:.0} creates/s; {} / {}",
                args.services as f64 / wall.as_secs_f64(),
                ms(pct(&lat, 0.5)),
                ms(pct(&lat, 0.99))
            ),
        ));
        results.push(row("Service create rate by tenth", tenths.join("; ")));
    }
    if args.slices > 0 {
        let path = format!("/apis/discovery.k8s.io/v1/namespaces/{ns}/endpointslices");
        let (tenths, lat, wall) =
            create_in_tenths(&s.client, &path, args.slices, args.concurrency, bench_slice).await?;
        results.push(row(
            &format!(
                "EndpointSlice create (10 endpoints), {} at concurrency {}: throughput; p50 / p99",
                args.slices, args.concurrency
            ),
            format!(
                "{:.0} creates/s; {} / {}",
                args.slices as f64 / wall.as_secs_f64(),
                ms(pct(&lat, 0.5)),
                ms(pct(&lat, 0.99))
            ),
        ));
        results.push(row("EndpointSlice create rate by tenth", tenths.join("; ")));
    }
    if args.services > 0 || args.slices > 0 {
        // The caches settle: the measurement is of what stays, not of a request's peak.
        tokio::time::sleep(Duration::from_secs(5)).await;
        results.push(row(
            &format!(
                "RSS with {created} pods, {} Services, {} EndpointSlices loaded (API server only)",
                args.services, args.slices
            ),
            format!("{:.1} MiB ({})", s.rss_mib(), s.rss_breakdown()),
        ));
        if args.hold_loaded > 0 {
            eprintln!(
                "holding {} s with everything loaded; server pid {}",
                args.hold_loaded,
                s.proc.child.id()
            );
            tokio::time::sleep(Duration::from_secs(args.hold_loaded)).await;
        }
    }

    // Updates (the issue asks for create/update p50/p99): a label on existing objects,
    // after the loaded-memory row so that row stays comparable with earlier runs.
    let updates = |what: &str, n: usize, lat: &[Duration], wall: Duration| {
        row(
            &format!(
                "{what} update (merge patch of a label), {n} at concurrency {}: throughput; p50 / p99",
                args.concurrency
            ),
            format!(
                "{:.0} updates/s; {} / {}",
                n as f64 / wall.as_secs_f64(),
                ms(pct(lat, 0.5)),
                ms(pct(lat, 0.99))
            ),
        )
    };
    let n = created.min(1000);
    if n > 0 {
        let (lat, wall) = update_all(&s.client, 0..n, args.concurrency, |i| {
            format!("/api/v1/namespaces/{BENCH_NS}/pods/bench-{i:05}")
        })
        .await?;
        results.push(updates("pod", n, &lat, wall));
    }
    let n = args.services.min(1000);
    if n > 0 {
        let (lat, wall) = update_all(&s.client, 0..n, args.concurrency, |i| {
            format!("/api/v1/namespaces/{BENCH_NS}/services/svc-{i:05}")
        })
        .await?;
        results.push(updates("Service", n, &lat, wall));
    }

    let fan = fan_out(&s.client, ns, args.watchers, 5).await?;
    results.push(row(
        &format!("watch fan-out, {} watchers, 5 updates: update sent → event at each watcher, p50 / p99 / max", args.watchers),
        format!("{} / {} / {}", ms(pct(&fan, 0.5)), ms(pct(&fan, 0.99)), ms(pct(&fan, 1.0))),
    ));

    // Cold start with everything loaded: a clean restart on the same store, until /readyz
    // answers and until a LIST of every pod (a consistent read: from the watch cache once
    // it is filled) has been answered in full.
    let extra = ["--disable-controllers", "--disable-scheduler"];
    let s = s.restart(&args.server, &flags, &extra).await?;
    let at_ready = Instant::now();
    let ready = s.cold_start;
    let listed = list_latency(&s.client, ns, created, false, 1).await?;
    // From the spawn, like `ready`.
    let first_list = ready + at_ready.elapsed();
    results.push(row(
        &format!(
            "cold start with {created} pods, {} Services, {} EndpointSlices stored (API server only): restart → first /readyz 200; → first LIST of all pods answered",
            args.services, args.slices
        ),
        format!(
            "{}; {} (that LIST: {})",
            ms(ready),
            ms(first_list),
            ms(listed[0])
        ),
    ));
    Ok(())
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    if !args.server.is_file() {
        bail!(
            "--server {}: no such binary (cargo build --release -p skiff-controlplane)",
            args.server.display()
        );
    }
    if args.stores.iter().any(|s| s == "etcd") && !args.etcd.is_file() {
        bail!(
            "--etcd {}: no such binary (apt-get install etcd-server, or --stores redb)",
            args.etcd.display()
        );
    }
    println!("| store | measurement | result |\n|---|---|---|");
    let mut results = Vec::new();
    for store in &args.stores {
        bench_store(&args, store, &mut results).await?;
    }
    if let Some(out) = &args.out {
        if let Some(d) = out.parent() {
            std::fs::create_dir_all(d)?;
        }
        std::fs::write(out, serde_json::to_vec_pretty(&results)?)?;
        println!("results written to {}", out.display());
    }
    Ok(())
}
