//! `cargo xtask bench cluster`: the whole cluster on this machine (skiff-cluster).
//!
//! 1. Cold start: `Cluster::start` of a 1-node cluster (namespaces, control plane, join,
//!    agent) until the Node is Ready, what `cargo xtask up` prints; `--starts` runs.
//! 2. Idle memory: VmRSS of `skiff-controlplane` + `skiff-agent` of the last 1-node
//!    cluster, `--idle-secs` after Ready (no workload; controllers and watches settled).
//! 3. Pod startup latency: a Deployment of `--pods` pods (`skiff.local/host`, `sleep`, no
//!    probes: upstream's SLO excludes image pulls and probes) on that node. Per pod, from
//!    its creation to its Ready condition, both as a watch (`kubectl get -w`) observes
//!    them on this process's clock: the API's timestamps have whole-second resolution,
//!    too coarse for a 1 s goal. Also: Deployment created → all Ready, and the memory
//!    with the pods running.
//!
//! Needs root (namespaces, eBPF); everything stays in the cluster's namespaces.

use std::{
    collections::HashMap,
    io::{BufReader, Write as _},
    path::PathBuf,
    process::Stdio,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _};
use clap::Parser;
use serde_json::{json, Value};
use skiff_cluster::{Cluster, Options};

#[derive(Parser)]
struct Args {
    /// Where skiff-controlplane, skiff-agent and skiff-cni are (target/release).
    #[arg(long)]
    bin_dir: PathBuf,
    /// Pods in the startup-latency Deployment.
    #[arg(long, default_value_t = 100)]
    pods: usize,
    /// Cold starts to time.
    #[arg(long, default_value_t = 3)]
    starts: usize,
    /// Seconds the cluster idles before its memory is read.
    #[arg(long, default_value_t = 10)]
    idle_secs: u64,
    /// JSON results.
    #[arg(long)]
    out: Option<PathBuf>,
}

/// VmRSS of `pid` in KiB.
fn rss_kib(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .with_context(|| format!("no VmRSS in /proc/{pid}/status"))
}

fn memory(c: &Cluster) -> anyhow::Result<(u64, u64)> {
    let cp = rss_kib(c.controlplane_pid().context("no control plane")?)?;
    let agent = rss_kib(c.nodes()[0].agent_pid().context("no agent")?)?;
    Ok((cp, agent))
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    // Nearest rank.
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn kubectl(c: &Cluster, args: &[&str], stdin: Option<&str>) -> anyhow::Result<String> {
    let mut cmd = c.kubectl();
    cmd.args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().context("running kubectl")?;
    if let Some(s) = stdin {
        child.stdin.take().unwrap().write_all(s.as_bytes())?;
    }
    drop(child.stdin.take());
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!(
            "kubectl {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn pod_yaml(name: &str, label: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  labels:\n    bench: {label}\nspec:\n  terminationGracePeriodSeconds: 1\n  containers:\n    - name: c\n      image: skiff.local/host\n      command: [sleep, \"3600\"]\n"
    )
}

fn deployment_yaml(pods: usize) -> String {
    format!(
        "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: startup\nspec:\n  replicas: {pods}\n  selector:\n    matchLabels:\n      bench: pods\n  template:\n    metadata:\n      labels:\n        bench: pods\n    spec:\n      terminationGracePeriodSeconds: 1\n      containers:\n        - name: c\n          image: skiff.local/host\n          command: [sleep, \"3600\"]\n"
    )
}

#[derive(Default)]
struct Seen {
    /// Pod name → when the watch first saw it, and first saw it Ready.
    added: HashMap<String, Instant>,
    /// First seen with `spec.nodeName` (bound by the scheduler).
    bound: HashMap<String, Instant>,
    ready: HashMap<String, Instant>,
}

fn is_ready(p: &Value) -> bool {
    p["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|c| c["type"] == "Ready" && c["status"] == "True")
}

struct Startup {
    /// Created → Ready, and its two parts: created → bound, bound → Ready (sorted each).
    per_pod: Vec<Duration>,
    to_bound: Vec<Duration>,
    bound_to_ready: Vec<Duration>,
    all_ready: Duration,
}

fn pod_startup(c: &Cluster, pods: usize) -> anyhow::Result<Startup> {
    let mut watch = c.kubectl();
    watch
        .args([
            "get",
            "pods",
            "-l",
            "bench in (pods,marker)",
            "-w",
            "--output-watch-events",
            "-o",
            "json",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    let mut child = watch.spawn().context("running kubectl get -w")?;
    let stdout = child.stdout.take().unwrap();
    let seen = Arc::new(Mutex::new(Seen::default()));
    let reader = {
        let seen = seen.clone();
        std::thread::spawn(move || {
            let events =
                serde_json::Deserializer::from_reader(BufReader::new(stdout)).into_iter::<Value>();
            for ev in events.flatten() {
                let now = Instant::now();
                let pod = &ev["object"];
                let Some(name) = pod["metadata"]["name"].as_str() else {
                    continue;
                };
                let mut s = seen.lock().unwrap();
                s.added.entry(name.to_owned()).or_insert(now);
                if pod["spec"]["nodeName"].is_string() {
                    s.bound.entry(name.to_owned()).or_insert(now);
                }
                if is_ready(pod) {
                    s.ready.entry(name.to_owned()).or_insert(now);
                }
            }
        })
    };
    let result = (|| {
        // The watch is live once it reports the marker pod.
        kubectl(
            c,
            &["apply", "-f", "-"],
            Some(&pod_yaml("marker", "marker")),
        )?;
        let deadline = Instant::now() + Duration::from_secs(30);
        while !seen.lock().unwrap().added.contains_key("marker") {
            if Instant::now() > deadline {
                bail!("the watch did not report the marker pod within 30 s");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let t0 = Instant::now();
        kubectl(c, &["apply", "-f", "-"], Some(&deployment_yaml(pods)))?;
        let deadline = Instant::now() + Duration::from_secs(300);
        loop {
            let ready = {
                let s = seen.lock().unwrap();
                s.ready.keys().filter(|k| k.starts_with("startup-")).count()
            };
            if ready >= pods {
                break;
            }
            if Instant::now() > deadline {
                bail!(
                    "{ready} of {pods} pods Ready after 300 s:\n{}",
                    c.logs_tail(20)
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let all_ready = t0.elapsed();
        let s = seen.lock().unwrap();
        let pods: Vec<&String> = s
            .ready
            .keys()
            .filter(|k| k.starts_with("startup-"))
            .collect();
        let span = |from: &HashMap<String, Instant>, to: &HashMap<String, Instant>| {
            let mut v: Vec<Duration> = pods
                .iter()
                .map(|k| {
                    let end = to.get(*k).or(s.ready.get(*k)).copied().unwrap();
                    end.saturating_duration_since(
                        from.get(*k).or(s.added.get(*k)).copied().unwrap(),
                    )
                })
                .collect();
            v.sort();
            v
        };
        Ok(Startup {
            per_pod: span(&s.added, &s.ready),
            to_bound: span(&s.added, &s.bound),
            bound_to_ready: span(&s.bound, &s.ready),
            all_ready,
        })
    })();
    let _ = child.kill();
    let _ = child.wait();
    let _ = reader.join();
    result
}

fn cluster(args: &Args, name: &str) -> anyhow::Result<Cluster> {
    let mut o = Options::new(name, 1, &args.bin_dir);
    o.ready_timeout = Duration::from_secs(60);
    Cluster::start(o)
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!("machine load before: {}", load.trim());
    let mut starts = Vec::new();
    for i in 1..args.starts {
        let c = cluster(&args, &format!("bench{i}"))?;
        starts.push(c.ready_after());
        println!("cold start {i}: 1 node Ready after {:.2?}", c.ready_after());
    }
    let c = cluster(&args, "bench")?;
    starts.push(c.ready_after());
    println!(
        "cold start {}: 1 node Ready after {:.2?}",
        args.starts,
        c.ready_after()
    );
    std::thread::sleep(Duration::from_secs(args.idle_secs));
    let (cp_idle, agent_idle) = memory(&c)?;
    println!(
        "idle memory after {} s: skiff-controlplane {:.1} MiB + skiff-agent {:.1} MiB = {:.1} MiB (VmRSS)",
        args.idle_secs,
        cp_idle as f64 / 1024.0,
        agent_idle as f64 / 1024.0,
        (cp_idle + agent_idle) as f64 / 1024.0
    );
    let s = pod_startup(&c, args.pods)?;
    let (p50, p99, max) = (
        percentile(&s.per_pod, 50.0),
        percentile(&s.per_pod, 99.0),
        *s.per_pod.last().unwrap(),
    );
    println!(
        "pod startup, {} pods on 1 node: per pod p50 {:.0?} p99 {:.0?} max {:.0?}; Deployment created → all Ready {:.2?}",
        args.pods, p50, p99, max, s.all_ready
    );
    let pct = |v: &[Duration]| (percentile(v, 50.0), percentile(v, 99.0));
    let (b50, b99) = pct(&s.to_bound);
    let (r50, r99) = pct(&s.bound_to_ready);
    println!(
        "  of which created → bound (scheduler) p50 {b50:.0?} p99 {b99:.0?}; bound → Ready (agent) p50 {r50:.0?} p99 {r99:.0?}"
    );
    let (cp_busy, agent_busy) = memory(&c)?;
    println!(
        "memory with {} pods running: skiff-controlplane {:.1} MiB + skiff-agent {:.1} MiB = {:.1} MiB (VmRSS)",
        args.pods,
        cp_busy as f64 / 1024.0,
        agent_busy as f64 / 1024.0,
        (cp_busy + agent_busy) as f64 / 1024.0
    );
    let load_after = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!("machine load after: {}", load_after.trim());
    drop(c);
    if let Some(out) = &args.out {
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        let v = json!({
            "cold_start_ms": starts.iter().map(|d| ms(*d)).collect::<Vec<_>>(),
            "idle_rss_kib": {"controlplane": cp_idle, "agent": agent_idle, "idle_secs": args.idle_secs},
            "pod_startup": {
                "pods": args.pods,
                "p50_ms": ms(p50), "p99_ms": ms(p99), "max_ms": ms(max),
                "all_ready_ms": ms(s.all_ready),
                "created_to_bound_p50_ms": ms(b50), "created_to_bound_p99_ms": ms(b99),
                "bound_to_ready_p50_ms": ms(r50), "bound_to_ready_p99_ms": ms(r99),
            },
            "rss_kib_with_pods": {"controlplane": cp_busy, "agent": agent_busy},
            "loadavg_before": load.trim(),
            "loadavg_after": load_after.trim(),
        });
        if let Some(dir) = out.parent() {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::write(out, serde_json::to_string_pretty(&v)?)?;
        println!("results: {}", out.display());
    }
    Ok(())
}
