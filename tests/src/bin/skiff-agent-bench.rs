//! `cargo xtask bench agent`: the node agent at scale, against a real
//! `skiff-controlplane`, everything inside a throwaway network namespace (the API server
//! and the agent listen on that namespace's loopback; no packet is sent anywhere).
//!
//! - Network programming latency: with N services × E endpoints preloaded and synced,
//!   one EndpointSlice at a time gets a new endpoint address (and a fresh
//!   `last-change-trigger-time`); the latency is from just before the API write to the
//!   moment the agent's pinned maps show the new backend for that frontend (polled by
//!   point lookups). The agent's own `skiff_network_programming_duration_seconds`
//!   histogram is reported next to it.
//! - Agent memory: VmRSS and VmHWM of the agent process after the initial sync and after
//!   the changes.
//! - CNI ADD and DEL latency of skiff-cni and of Debian's reference `bridge` +
//!   `host-local`, same config, each invocation in a fresh container namespace inside a
//!   throwaway host namespace.
//!
//! Prints markdown rows and writes JSON (`--out`).

use std::{
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::{Ipv4Addr, TcpStream},
    os::unix::process::CommandExt as _,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant, SystemTime},
};

use anyhow::{bail, Context as _};
use k8s_openapi::api::{
    core::v1::{Namespace, Service},
    discovery::v1::EndpointSlice,
};
use kube::api::{Api, PostParams};
use serde_json::json;
use skiff_agent::datapath::Inspector;
use skiff_datapath_abi::{proto, ServiceKey};
use skiff_tests::{
    apiserver::{client, free_port},
    netns::{BpffsDir, NetNs},
};

struct Args {
    services: usize,
    endpoints: usize,
    changes: usize,
    cni_iterations: usize,
    skip_cni: bool,
    skip_agent: bool,
    /// Run the agent's node-local DNS server (its zone is rebuilt from the caches).
    dns: bool,
    /// A command to run the agent under (a profiler: `heaptrack -o FILE`, `perf record
    /// -g -o FILE --`); the memory numbers then describe the wrapper's process.
    agent_wrapper: Vec<String>,
    /// The agent's consistency check (and full resync) period.
    full_resync_secs: u64,
    /// After the changes, how long the agent is left idle while its memory is sampled
    /// once a second (the steady state a user sees: periodic full resyncs and
    /// consistency checks included when `--full-resync-secs` is shorter).
    settle_secs: u64,
    out: PathBuf,
}

fn parse_args() -> anyhow::Result<Args> {
    let mut a = Args {
        services: 10_000,
        endpoints: 10,
        changes: 200,
        cni_iterations: 100,
        skip_cni: false,
        skip_agent: false,
        dns: false,
        agent_wrapper: Vec::new(),
        full_resync_secs: 3600,
        settle_secs: 10,
        out: PathBuf::from("bench-results/agent.json"),
    };
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let mut i = 0;
    while i < argv.len() {
        let flag = argv[i].as_str();
        let value = |i: usize| {
            argv.get(i + 1)
                .with_context(|| format!("{flag} needs a value"))
        };
        match flag {
            "--services" => a.services = value(i)?.parse()?,
            "--endpoints" => a.endpoints = value(i)?.parse()?,
            "--changes" => a.changes = value(i)?.parse()?,
            "--cni-iterations" => a.cni_iterations = value(i)?.parse()?,
            "--full-resync-secs" => a.full_resync_secs = value(i)?.parse()?,
            "--settle-secs" => a.settle_secs = value(i)?.parse()?,
            "--out" => a.out = PathBuf::from(value(i)?),
            // Words joined with commas (SKIFF_AGENT_BENCH_ARGS splits on whitespace).
            "--agent-wrapper" => {
                a.agent_wrapper = value(i)?.split(',').map(str::to_owned).collect()
            }
            "--skip-cni" => {
                a.skip_cni = true;
                i += 1;
                continue;
            }
            "--skip-agent" => {
                a.skip_agent = true;
                i += 1;
                continue;
            }
            "--dns" => {
                a.dns = true;
                i += 1;
                continue;
            }
            other => bail!(
                "unknown flag {other}: skiff-agent-bench [--services N] [--endpoints E] \
                 [--changes K] [--cni-iterations C] [--full-resync-secs S] [--settle-secs S] [--skip-cni] \
                 [--skip-agent] [--dns] [--agent-wrapper CMD,ARG,..] [--out FILE]"
            ),
        }
        i += 2;
    }
    if a.endpoints == 0 || a.endpoints > 100 {
        bail!("--endpoints must be 1..=100 (one EndpointSlice per service)");
    }
    Ok(a)
}

/// `p`-quantile (0..=1) of sorted samples, nearest rank.
fn quantile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// A child process killed on drop.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A child process in its own process group (the agent, possibly under a wrapper that
/// forks it): on drop the whole group gets SIGTERM (a profiler flushes its data), then
/// SIGKILL if it has not exited within 10 s.
struct ProcGroup(Child);

impl Drop for ProcGroup {
    fn drop(&mut self) {
        let group = -(self.0.id() as i32);
        // SAFETY: kill(2) with a negative pid signals that process group only.
        unsafe { libc::kill(group, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.0.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        // SAFETY: as above; whatever is left of the group.
        unsafe { libc::kill(group, libc::SIGKILL) };
        let _ = self.0.wait();
    }
}

fn sibling(name: &str) -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let p = exe.with_file_name(name);
    if !p.exists() {
        bail!(
            "{} is missing: `cargo xtask bench agent` builds it (cargo build --release -p {name})",
            p.display()
        );
    }
    Ok(p)
}

fn endpoint_addr(service: usize, e: usize) -> String {
    // 100.64.0.0/10: only map contents, never a packet's destination.
    Ipv4Addr::from(u32::from(Ipv4Addr::new(100, 64, 0, 0)) + (service * 100 + e) as u32).to_string()
}

fn slice(i: usize, addrs: &[String], trigger: Option<String>) -> EndpointSlice {
    let mut meta = json!({
        "name": format!("svc{i}-0"),
        "namespace": "bench",
        "labels": {
            "kubernetes.io/service-name": format!("svc{i}"),
            "endpointslice.kubernetes.io/managed-by": "skiff-agent-bench",
        },
    });
    if let Some(t) = trigger {
        meta["annotations"] = json!({ "endpoints.kubernetes.io/last-change-trigger-time": t });
    }
    serde_json::from_value(json!({
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": meta,
        "addressType": "IPv4",
        "endpoints": addrs.iter().map(|a| json!({
            "addresses": [a],
            "conditions": {"ready": true, "serving": true, "terminating": false},
        })).collect::<Vec<_>>(),
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
    }))
    .expect("a valid EndpointSlice")
}

fn service(i: usize) -> Service {
    serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": format!("svc{i}"), "namespace": "bench"},
        // No selector: the endpointslice controller leaves the slices to the bench.
        "spec": {"ports": [{"name": "http", "port": 80, "targetPort": 8080, "protocol": "TCP"}]},
    }))
    .expect("a valid Service")
}

fn rfc3339_now() -> String {
    k8s_openapi::jiff::Timestamp::now().to_string()
}

/// Creates services and slices with up to `parallel` requests in flight; returns the
/// ClusterIPs.
async fn preload(
    client: &kube::Client,
    n: usize,
    endpoints: usize,
    parallel: usize,
) -> anyhow::Result<Vec<Ipv4Addr>> {
    let svcs: Api<Service> = Api::namespaced(client.clone(), "bench");
    let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), "bench");
    let mut ips = vec![Ipv4Addr::UNSPECIFIED; n];
    let mut set = tokio::task::JoinSet::new();
    let mut next = 0;
    let mut done = 0;
    let started = Instant::now();
    while done < n {
        while next < n && set.len() < parallel {
            let (svcs, slices) = (svcs.clone(), slices.clone());
            let i = next;
            set.spawn(async move {
                let s = svcs.create(&PostParams::default(), &service(i)).await?;
                let addrs: Vec<String> = (0..endpoints).map(|e| endpoint_addr(i, e)).collect();
                slices
                    .create(&PostParams::default(), &slice(i, &addrs, None))
                    .await?;
                let ip: Ipv4Addr = s
                    .spec
                    .and_then(|s| s.cluster_ip)
                    .context("no clusterIP allocated")?
                    .parse()?;
                anyhow::Ok((i, ip))
            });
            next += 1;
        }
        let (i, ip) = set.join_next().await.context("task set empty")???;
        ips[i] = ip;
        done += 1;
        if done % 1000 == 0 {
            eprintln!(
                "  preloaded {done}/{n} services in {:.1} s",
                started.elapsed().as_secs_f64()
            );
        }
    }
    Ok(ips)
}

fn status_kb(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix(field))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

/// Resident memory of a process (`/proc/<pid>/status`), kB.
#[derive(serde::Serialize, Default, Clone, Copy, Debug)]
struct Resident {
    rss_kb: u64,
    /// Heap, stacks and other anonymous mappings.
    anon_kb: u64,
    /// File-backed pages: the binary's and the libraries' code and data.
    file_kb: u64,
    threads: u64,
}

fn resident(pid: u32) -> Resident {
    Resident {
        rss_kb: status_kb(pid, "VmRSS:"),
        anon_kb: status_kb(pid, "RssAnon:"),
        file_kb: status_kb(pid, "RssFile:"),
        threads: status_kb(pid, "Threads:"),
    }
}

/// One line of the resident-memory breakdown: a kind of mapping (or one large anonymous
/// mapping), its resident and its mapped size.
#[derive(serde::Serialize, Debug)]
struct MappingRss {
    what: String,
    rss_kb: u64,
    size_kb: u64,
}

/// Where a process's resident memory is, from `/proc/<pid>/smaps`: the binary's
/// segments by permissions, `[heap]` (glibc's main arena), `[stack]`, shared libraries,
/// BPF and other special mappings by name, and each anonymous mapping holding at least
/// 256 kB on its own line (glibc's per-thread arenas are 64 MiB-aligned reservations,
/// thread stacks 8 MiB ones); smaller anonymous mappings are summed.
fn smaps_breakdown(pid: u32) -> Vec<MappingRss> {
    let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/smaps")) else {
        return Vec::new();
    };
    let exe = std::fs::read_link(format!("/proc/{pid}/exe")).unwrap_or_default();
    let mut out: Vec<MappingRss> = Vec::new();
    let mut small_anon = (0u64, 0u64);
    let mut flush = |head: &str, size_kb: u64, rss_kb: u64, out: &mut Vec<MappingRss>| {
        let mut f = head.split_whitespace();
        let (range, perms) = (f.next().unwrap_or(""), f.next().unwrap_or(""));
        let path = f.nth(3).unwrap_or("");
        let what = if path.is_empty() {
            if rss_kb < 256 {
                small_anon.0 += rss_kb;
                small_anon.1 += size_kb;
                return;
            }
            format!("anonymous {range} {perms}")
        } else if Path::new(path) == exe {
            format!("binary {perms}")
        } else if path.contains(".so") {
            "shared libraries".to_owned()
        } else {
            path.to_owned()
        };
        match out.iter_mut().find(|m| m.what == what) {
            Some(m) => {
                m.rss_kb += rss_kb;
                m.size_kb += size_kb;
            }
            None => out.push(MappingRss {
                what,
                rss_kb,
                size_kb,
            }),
        }
    };
    let (mut head, mut size, mut rss) = (String::new(), 0, 0);
    for line in text.lines() {
        let first = line.split_whitespace().next().unwrap_or("");
        if first.contains('-') && !first.ends_with(':') {
            if !head.is_empty() {
                flush(&head, size, rss, &mut out);
            }
            (head, size, rss) = (line.to_owned(), 0, 0);
        } else if let Some(v) = line.strip_prefix("Size:") {
            size = v.trim().trim_end_matches("kB").trim().parse().unwrap_or(0);
        } else if let Some(v) = line.strip_prefix("Rss:") {
            rss = v.trim().trim_end_matches("kB").trim().parse().unwrap_or(0);
        }
    }
    if !head.is_empty() {
        flush(&head, size, rss, &mut out);
    }
    out.push(MappingRss {
        what: "anonymous mappings under 256 kB each".to_owned(),
        rss_kb: small_anon.0,
        size_kb: small_anon.1,
    });
    out.sort_by_key(|m| std::cmp::Reverse(m.rss_kb));
    out
}

fn http_get(port: u16, path: &str) -> Option<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").ok()?;
    let mut body = String::new();
    s.read_to_string(&mut body).ok()?;
    body.split_once("\r\n\r\n").map(|(_, b)| b.to_owned())
}

/// The duration of a sync the agent reports as `synced N services, M slices in <Debug
/// Duration> (full|K changed): ...`, and whether it was a full one.
fn sync_duration(line: &str) -> Option<(Duration, bool)> {
    let rest = line.strip_prefix("synced ")?;
    let (_, rest) = rest.split_once(" in ")?;
    let (d, rest) = rest.split_once(' ')?;
    let full = rest.starts_with("(full)");
    let (num, unit) = d.split_at(d.find(|c: char| !(c.is_ascii_digit() || c == '.'))?);
    let v: f64 = num.parse().ok()?;
    let secs = match unit {
        "s" => v,
        "ms" => v / 1e3,
        "µs" | "us" => v / 1e6,
        "ns" => v / 1e9,
        _ => return None,
    };
    Some((Duration::from_secs_f64(secs), full))
}

/// (le, cumulative count) of one histogram in Prometheus text.
fn histogram(text: &str, name: &str) -> Vec<(f64, u64)> {
    let prefix = format!("{name}_bucket{{le=\"");
    text.lines()
        .filter_map(|l| {
            let rest = l.strip_prefix(&prefix)?;
            let (le, count) = rest.split_once("\"} ")?;
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().ok()?
            };
            Some((le, count.trim().parse::<f64>().ok()? as u64))
        })
        .collect()
}

/// The bucket upper bound holding quantile `p` (what a histogram can say).
fn histogram_quantile(buckets: &[(f64, u64)], p: f64) -> Option<f64> {
    let total = buckets.last()?.1;
    if total == 0 {
        return None;
    }
    let rank = (p * total as f64).ceil() as u64;
    buckets.iter().find(|(_, c)| *c >= rank).map(|(le, _)| *le)
}

#[derive(serde::Serialize, Default)]
struct AgentReport {
    services: usize,
    endpoints: usize,
    preload_s: f64,
    initial_sync_s: f64,
    changes: usize,
    latency_p50_ms: f64,
    latency_p99_ms: f64,
    latency_max_ms: f64,
    /// The agent's own sync time (translate + reconcile) for the changes' syncs.
    syncs: usize,
    sync_p50_ms: f64,
    sync_p99_ms: f64,
    sync_max_ms: f64,
    /// Periodic full rebuilds + reconciles during the changes (`--full-resync-secs`).
    full_resyncs: usize,
    full_resync_p50_ms: f64,
    full_resync_max_ms: f64,
    agent_histogram_p50_le_s: Option<f64>,
    agent_histogram_p99_le_s: Option<f64>,
    rss_after_sync_kb: u64,
    rss_after_changes_kb: u64,
    hwm_kb: u64,
    /// VmRSS after the changes split by kind: anonymous (heap, stacks) and file-backed
    /// (the binary's and libraries' pages).
    rss_anon_kb: u64,
    rss_file_kb: u64,
    /// After `--settle-secs` idle (sampled once a second): the last sample and the
    /// largest VmRSS seen meanwhile.
    settle_secs: u64,
    settled: Resident,
    settle_max_rss_kb: u64,
    /// Where `settled` is, per mapping (`/proc/<pid>/smaps`).
    settled_mappings: Vec<MappingRss>,
    dns: bool,
}

fn agent_bench(a: &Args) -> anyhow::Result<AgentReport> {
    let ns = NetNs::new("agbench");
    // The interface the agent's tc programs attach to: a veth pair nothing sends on.
    ns.ip(&[
        "link", "add", "agb0", "type", "veth", "peer", "name", "agb1",
    ]);
    ns.ip(&["link", "set", "agb0", "up"]);
    ns.ip(&["link", "set", "agb1", "up"]);
    let pins = BpffsDir::new("agbench");
    let dir = tempfile::tempdir()?;
    let controlplane = sibling("skiff-controlplane")?;
    let agent = sibling("skiff-agent")?;
    ns.run(|| -> anyhow::Result<AgentReport> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let api_port = free_port();
        let metrics_port = free_port();
        let _server = Proc(
            Command::new(&controlplane)
                .args(["server", "--data-dir"])
                .arg(dir.path())
                .args(["--listen", &format!("127.0.0.1:{api_port}")])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .context("starting skiff-controlplane")?,
        );
        let kubeconfig = dir.path().join("admin.kubeconfig");
        let kc = rt.block_on(client(&kubeconfig));
        rt.block_on(async {
            let nss: Api<Namespace> = Api::all(kc.clone());
            let ns: Namespace =
                serde_json::from_value(json!({"metadata": {"name": "bench"}})).unwrap();
            nss.create(&PostParams::default(), &ns).await
        })?;
        eprintln!(
            "preloading {} services x {} endpoints",
            a.services, a.endpoints
        );
        let t = Instant::now();
        let ips = rt.block_on(preload(&kc, a.services, a.endpoints, 32))?;
        let preload_s = t.elapsed().as_secs_f64();
        eprintln!("preload took {preload_s:.1} s; starting the agent");

        let backends = (a.services * a.endpoints * 5 / 4)
            .max(65536)
            .next_power_of_two();
        let t = Instant::now();
        // The node-local DNS server on the namespace's loopback, forwarding nowhere (an
        // empty resolv.conf): it only serves the zone; the bench sends it no query.
        let resolv = dir.path().join("resolv.conf");
        std::fs::write(&resolv, "")?;
        let dns_args: Vec<String> = if a.dns {
            vec![
                "--dns-bind-address".into(),
                format!("127.0.0.1:{}", free_port()),
                "--dns-resolv-conf".into(),
                resolv.display().to_string(),
            ]
        } else {
            Vec::new()
        };
        let mut command = match a.agent_wrapper.split_first() {
            Some((wrapper, args)) => {
                let mut c = Command::new(wrapper);
                c.args(args).arg(&agent);
                c
            }
            None => Command::new(&agent),
        };
        let mut child = command
            .args(["run", "-i", "agb0", "--kubeconfig"])
            .arg(&kubeconfig)
            .args([
                "--node-name",
                "bench-node",
                "--no-register-node",
                "--pod-network",
                "none",
                "--masquerade",
                "off",
                "--healthz-bind-address",
                "",
                "--metrics-bind-address",
                &format!("127.0.0.1:{metrics_port}"),
                "--interval-secs",
                "1",
                "--consistency-check-secs",
                &a.full_resync_secs.to_string(),
                "--map-size-backends",
                &backends.to_string(),
                "--map-size-slots",
                &(backends * 2).to_string(),
                "--map-size-services",
                &(a.services * 2).max(65536).to_string(),
                "--pin-dir",
            ])
            .arg(pins.path())
            .args(&dns_args)
            .process_group(0)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("starting skiff-agent")?;
        let stdout = child.stdout.take().unwrap();
        let agent_pid = child.id();
        let agent_proc = ProcGroup(child);
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        // "synced N services, ..." with every preloaded service (plus default/kubernetes).
        let deadline = Instant::now() + Duration::from_secs(600);
        loop {
            let line = rx
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
                .context("the agent did not report its initial sync in 10 minutes")?;
            let synced = line
                .strip_prefix("synced ")
                .and_then(|r| r.split_once(' '))
                .and_then(|(n, _)| n.parse::<usize>().ok());
            if synced.is_some_and(|n| n >= a.services) {
                eprintln!("agent: {line}");
                break;
            }
        }
        let initial_sync_s = t.elapsed().as_secs_f64();
        // Drain the agent's output from here on so it never blocks on a full pipe, and
        // keep the duration of each sync it reports (the agent's translate + reconcile
        // time per change, exact rather than a histogram bucket).
        let (sync_tx, sync_rx) = mpsc::channel();
        std::thread::spawn(move || {
            while let Ok(line) = rx.recv() {
                if let Some(d) = sync_duration(&line) {
                    let _ = sync_tx.send(d);
                }
            }
        });
        let rss_after_sync_kb = status_kb(agent_pid, "VmRSS:");
        eprintln!("initial sync {initial_sync_s:.1} s, VmRSS {rss_after_sync_kb} kB");

        let inspector = Inspector::new(pins.path());
        let slices: Api<EndpointSlice> = Api::namespaced(kc.clone(), "bench");
        let mut lat = Vec::with_capacity(a.changes);
        for k in 0..a.changes {
            let i = (k * 7919) % a.services;
            let fresh = Ipv4Addr::from(u32::from(Ipv4Addr::new(100, 120, 0, 0)) + k as u32);
            let mut addrs: Vec<String> = (1..a.endpoints).map(|e| endpoint_addr(i, e)).collect();
            addrs.insert(0, fresh.to_string());
            let key = ServiceKey {
                addr: u32::from(ips[i]).to_be(),
                port: 80u16.to_be(),
                proto: proto::TCP,
                scope: 0,
            };
            let want = u32::from(fresh).to_be();
            // The current version first: the clock starts at the write, not the read.
            let cur = rt.block_on(slices.get(&format!("svc{i}-0")))?;
            let t = Instant::now();
            let mut s = slice(i, &addrs, Some(rfc3339_now()));
            s.metadata.resource_version = cur.metadata.resource_version;
            rt.block_on(slices.replace(&format!("svc{i}-0"), &PostParams::default(), &s))?;
            let deadline = t + Duration::from_secs(30);
            loop {
                let seen = inspector
                    .frontend_backends(&key)?
                    .is_some_and(|bs| bs.iter().any(|b| b.addr == want));
                if seen {
                    lat.push(t.elapsed());
                    break;
                }
                if Instant::now() > deadline {
                    bail!("change {k} (svc{i}) not programmed within 30 s");
                }
                std::thread::sleep(Duration::from_micros(200));
            }
        }
        lat.sort();
        // Syncs of the change phase (the agent may coalesce two changes into one).
        let deadline = Instant::now() + Duration::from_secs(5);
        let (mut syncs, mut full_syncs) = (Vec::new(), Vec::new());
        while syncs.len() < a.changes {
            match sync_rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok((d, true)) => full_syncs.push(d),
                Ok((d, false)) => syncs.push(d),
                Err(_) => break,
            }
        }
        syncs.sort();
        full_syncs.sort();
        let rss_after_changes_kb = status_kb(agent_pid, "VmRSS:");
        let hwm_kb = status_kb(agent_pid, "VmHWM:");
        let rss_anon_kb = status_kb(agent_pid, "RssAnon:");
        let rss_file_kb = status_kb(agent_pid, "RssFile:");
        // The agent's histogram: its sync loop observes after applying, so wait for the
        // last change to be counted.
        let mut buckets = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Some(text) = http_get(metrics_port, "/metrics") {
                buckets = histogram(&text, "skiff_network_programming_duration_seconds");
                if buckets
                    .last()
                    .is_some_and(|(_, c)| *c as usize >= a.changes)
                {
                    break;
                }
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        // Steady state: the agent idle after the changes (its ticks, and periodic full
        // resyncs and consistency checks if --full-resync-secs is short enough).
        let mut settled = resident(agent_pid);
        let mut settle_max_rss_kb = settled.rss_kb;
        for _ in 0..a.settle_secs {
            std::thread::sleep(Duration::from_secs(1));
            settled = resident(agent_pid);
            settle_max_rss_kb = settle_max_rss_kb.max(settled.rss_kb);
        }
        let settled_mappings = smaps_breakdown(agent_pid);
        eprintln!(
            "after {} s idle: {settled:?} (max VmRSS {settle_max_rss_kb} kB); by mapping:",
            a.settle_secs
        );
        for m in settled_mappings.iter().take(16) {
            eprintln!("  {:>8} kB of {:>8} kB  {}", m.rss_kb, m.size_kb, m.what);
        }
        drop(agent_proc);
        Ok(AgentReport {
            services: a.services,
            endpoints: a.services * a.endpoints,
            preload_s,
            initial_sync_s,
            changes: lat.len(),
            latency_p50_ms: ms(quantile(&lat, 0.50)),
            latency_p99_ms: ms(quantile(&lat, 0.99)),
            latency_max_ms: ms(lat.last().copied().unwrap_or_default()),
            syncs: syncs.len(),
            full_resyncs: full_syncs.len(),
            full_resync_p50_ms: ms(quantile(&full_syncs, 0.50)),
            full_resync_max_ms: ms(full_syncs.last().copied().unwrap_or_default()),
            sync_p50_ms: ms(quantile(&syncs, 0.50)),
            sync_p99_ms: ms(quantile(&syncs, 0.99)),
            sync_max_ms: ms(syncs.last().copied().unwrap_or_default()),
            agent_histogram_p50_le_s: histogram_quantile(&buckets, 0.50),
            agent_histogram_p99_le_s: histogram_quantile(&buckets, 0.99),
            rss_after_sync_kb,
            rss_after_changes_kb,
            hwm_kb,
            rss_anon_kb,
            rss_file_kb,
            settle_secs: a.settle_secs,
            settled,
            settle_max_rss_kb,
            settled_mappings,
            dns: a.dns,
        })
    })
}

#[derive(serde::Serialize)]
struct CniReport {
    plugin: String,
    iterations: usize,
    add_p50_ms: f64,
    add_p99_ms: f64,
    del_p50_ms: f64,
    del_p99_ms: f64,
}

fn invoke(plugin: &Path, command: &str, config: &str, netns: &str, id: &str) -> anyhow::Result<()> {
    let mut c = Command::new(plugin)
        .env("CNI_COMMAND", command)
        .env("CNI_CONTAINERID", id)
        .env("CNI_NETNS", netns)
        .env("CNI_IFNAME", "eth0")
        .env("CNI_PATH", "/usr/lib/cni")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("running {}", plugin.display()))?;
    c.stdin.take().unwrap().write_all(config.as_bytes())?;
    let out = c.wait_with_output()?;
    if !out.status.success() {
        bail!(
            "{} {command} failed: {}{}",
            plugin.display(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

fn cni_bench(name: &str, plugin: &Path, ty: &str, iterations: usize) -> anyhow::Result<CniReport> {
    // Namespace names and container ids take [A-Za-z0-9] safely.
    let tag: String = name
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .take(8)
        .collect();
    let host = NetNs::new(&format!("cnib{tag}"));
    let data = tempfile::tempdir()?;
    let config = json!({
        "cniVersion": "1.0.0",
        "name": "bench",
        "type": ty,
        "bridge": "skbench0",
        "isGateway": true,
        "isDefaultGateway": true,
        "mtu": 1500,
        "hairpinMode": true,
        "ipam": {
            "type": "host-local",
            "ranges": [[{"subnet": "10.251.0.0/16"}]],
            "dataDir": data.path(),
        },
    })
    .to_string();
    let (mut add, mut del) = (Vec::new(), Vec::new());
    host.run(|| -> anyhow::Result<()> {
        for i in 0..iterations {
            let c = NetNs::new(&format!("cnic{tag}"));
            let path = format!("/run/netns/{}", c.name());
            let id = format!("bench-{tag}-{i}");
            let t = Instant::now();
            invoke(plugin, "ADD", &config, &path, &id)?;
            add.push(t.elapsed());
            let t = Instant::now();
            invoke(plugin, "DEL", &config, &path, &id)?;
            del.push(t.elapsed());
        }
        Ok(())
    })?;
    add.sort();
    del.sort();
    Ok(CniReport {
        plugin: name.to_owned(),
        iterations,
        add_p50_ms: ms(quantile(&add, 0.5)),
        add_p99_ms: ms(quantile(&add, 0.99)),
        del_p50_ms: ms(quantile(&del, 0.5)),
        del_p99_ms: ms(quantile(&del, 0.99)),
    })
}

fn main() -> anyhow::Result<()> {
    let a = parse_args()?;
    skiff_tests::privilege::require_privileges();
    let mut report = json!({"started": format!("{:?}", SystemTime::now())});
    if !a.skip_agent {
        let r = agent_bench(&a)?;
        println!(
            "| {} services / {} endpoints | {} changes | programming p50 {:.1} ms | p99 {:.1} ms | max {:.1} ms | agent sync ({} syncs) p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms | {} full resyncs p50 {:.1} ms, max {:.1} ms | agent histogram p50 ≤ {:?} s, p99 ≤ {:?} s | initial sync {:.1} s | VmRSS {:.1} MB after sync, {:.1} MB after changes (anon {:.1}, file {:.1}), VmHWM {:.1} MB | after {} s idle {:.1} MB (anon {:.1}, file {:.1}; max {:.1}), {} threads | DNS {} | preload {:.0} s |",
            r.services,
            r.endpoints,
            r.changes,
            r.latency_p50_ms,
            r.latency_p99_ms,
            r.latency_max_ms,
            r.syncs,
            r.sync_p50_ms,
            r.sync_p99_ms,
            r.sync_max_ms,
            r.full_resyncs,
            r.full_resync_p50_ms,
            r.full_resync_max_ms,
            r.agent_histogram_p50_le_s,
            r.agent_histogram_p99_le_s,
            r.initial_sync_s,
            r.rss_after_sync_kb as f64 / 1024.0,
            r.rss_after_changes_kb as f64 / 1024.0,
            r.rss_anon_kb as f64 / 1024.0,
            r.rss_file_kb as f64 / 1024.0,
            r.hwm_kb as f64 / 1024.0,
            r.settle_secs,
            r.settled.rss_kb as f64 / 1024.0,
            r.settled.anon_kb as f64 / 1024.0,
            r.settled.file_kb as f64 / 1024.0,
            r.settle_max_rss_kb as f64 / 1024.0,
            r.settled.threads,
            if r.dns { "on" } else { "off" },
            r.preload_s,
        );
        report["agent"] = serde_json::to_value(&r)?;
    }
    if !a.skip_cni {
        let skiff = sibling("skiff-cni")?;
        let reference = PathBuf::from("/usr/lib/cni/bridge");
        if !reference.exists() {
            bail!("Debian's reference plugins are missing: apt-get install containernetworking-plugins");
        }
        let mut rows = Vec::new();
        for (name, plugin, ty) in [
            ("skiff-cni", skiff.as_path(), "skiff-cni"),
            ("bridge+host-local", reference.as_path(), "bridge"),
        ] {
            eprintln!("CNI: {name}, {} ADD+DEL", a.cni_iterations);
            let r = cni_bench(name, plugin, ty, a.cni_iterations)?;
            println!(
                "| {} | {} | ADD p50 {:.2} ms | ADD p99 {:.2} ms | DEL p50 {:.2} ms | DEL p99 {:.2} ms |",
                r.plugin, r.iterations, r.add_p50_ms, r.add_p99_ms, r.del_p50_ms, r.del_p99_ms
            );
            rows.push(serde_json::to_value(&r)?);
        }
        report["cni"] = json!(rows);
    }
    if let Some(dir) = a.out.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&a.out, serde_json::to_string_pretty(&report)?)?;
    eprintln!("wrote {}", a.out.display());
    Ok(())
}
