//! `cargo xtask bench <what>`: builds the benchmark binary in release mode and runs it.
//! Benchmarks that need root (namespaces, BPF) say so; each installs its own comparison
//! tools.

use std::{path::PathBuf, process::Command};

use anyhow::bail;

use crate::{
    cmd::{self, cargo, is_root, workspace_root},
    setup,
};

const AVAILABLE: &str = "datapath, controlplane, apiserver, agent, cluster";

pub fn run(what: &str, quick: bool) -> anyhow::Result<()> {
    match what {
        "datapath" => datapath(quick),
        "controlplane" => controlplane(quick),
        "apiserver" => apiserver(quick),
        "agent" => agent(quick),
        "cluster" => cluster(quick),
        _ => bail!("unknown benchmark `{what}`: available: {AVAILABLE}"),
    }
}

/// Fails with what the benchmark needs root for, unless we are root.
fn require_root(what: &str, why: &str) -> anyhow::Result<()> {
    if !is_root() {
        bail!("the {what} benchmark needs root: {why}");
    }
    Ok(())
}

/// `cargo build --release -p <packages> --bin <bins>` (one invocation, so shared
/// dependencies are built once with one feature set), and the release directory.
fn build_release(packages: &[&str], bins: &[&str]) -> anyhow::Result<PathBuf> {
    let mut c = cargo();
    c.args(["build", "--release"]);
    for p in packages {
        c.args(["-p", p]);
    }
    for b in bins {
        c.args(["--bin", b]);
    }
    cmd::run(&mut c)?;
    Ok(workspace_root().join("target/release"))
}

fn results(name: &str) -> PathBuf {
    workspace_root().join("bench-results").join(name)
}

/// Per-packet cost and real traffic through a node namespace, against kube-proxy's
/// iptables mode (needs iptables-restore).
fn datapath(quick: bool) -> anyhow::Result<()> {
    require_root(
        "datapath",
        "it creates network namespaces and loads eBPF programs",
    )?;
    setup::ensure()?;
    setup::ensure_apt_packages(&["iptables"])?;
    let release = build_release(&["skiff-tests"], &["skiff-bench"])?;
    let mut c = Command::new(release.join("skiff-bench"));
    c.arg("datapath").arg("--out").arg(results("datapath.json"));
    if quick {
        c.arg("--quick");
    }
    cmd::run(&mut c)
}

/// The control plane (issue 6), each part against its own real skiff-controlplane process
/// on 127.0.0.1 with fake nodes; needs no root:
/// - scheduler throughput (upstream scheduler_perf's SchedulingBasic shape: 5000 nodes,
///   10 000 pods; --quick: 1000 / 2000), in memory, then end to end;
/// - Pod Ready → EndpointSlice latency at 10 000 pods / 1000 Services (--quick: 2000 / 200);
/// - a 1000-replica Deployment on 100 fake nodes, create → all Running (--quick: 200).
fn controlplane(quick: bool) -> anyhow::Result<()> {
    let release = build_release(
        &["skiff-controlplane", "skiff-fake-nodes"],
        &[
            "skiff-controlplane",
            "skiff-scheduler-bench",
            "skiff-controllers-bench",
        ],
    )?;
    let server = release.join("skiff-controlplane");
    let mut c = Command::new(release.join("skiff-scheduler-bench"));
    c.arg("--server").arg(&server);
    if quick {
        c.args(["--nodes", "1000", "--pods", "2000"]);
    }
    cmd::run(&mut c)?;
    let mut c = Command::new(release.join("skiff-controllers-bench"));
    c.arg("--server").arg(&server);
    if quick {
        c.args(["--pods", "2000", "--services", "200", "--probes", "200"])
            .args(["--replicas", "200"]);
    }
    cmd::run(&mut c)
}

/// The API server alone and with its controllers: idle memory, cold start, LIST from the
/// watch cache vs the store at 1k/10k pods, memory with 10k pods + 1k Services + 1k
/// EndpointSlices, watch fan-out to 1000 watchers and create throughput, over redb and a
/// local etcd (`/usr/bin/etcd`, Debian's etcd-server).
/// --quick: 200/2000 pods, 100 Services and slices, 100 watchers. Needs no root; everything
/// on 127.0.0.1.
fn apiserver(quick: bool) -> anyhow::Result<()> {
    setup::ensure_apt_packages(&["etcd-server"])?;
    let release = build_release(
        &["skiff-controlplane", "skiff-apiserver-bench"],
        &["skiff-controlplane", "skiff-apiserver-bench"],
    )?;
    let mut c = Command::new(release.join("skiff-apiserver-bench"));
    c.arg("--server")
        .arg(release.join("skiff-controlplane"))
        .arg("--out")
        .arg(results("apiserver.json"));
    if quick {
        c.args(["--pods", "200,2000", "--watchers", "100"]).args([
            "--services",
            "100",
            "--slices",
            "100",
        ]);
    }
    cmd::run(&mut c)
}

/// The node agent at scale (network programming latency, resident memory) against a real
/// skiff-controlplane, and CNI ADD/DEL latency of skiff-cni vs Debian's reference
/// bridge + host-local; all inside throwaway namespaces. Needs root. Default scale: 10k
/// services / 100k endpoints (--quick: 1000 / 10 000).
fn agent(quick: bool) -> anyhow::Result<()> {
    require_root("agent", "it loads eBPF programs and creates namespaces")?;
    setup::ensure()?;
    setup::ensure_apt_packages(&["containernetworking-plugins"])?;
    let release = build_release(
        &[
            "skiff-controlplane",
            "skiff-agent",
            "skiff-cni",
            "skiff-tests",
        ],
        &[
            "skiff-controlplane",
            "skiff-agent",
            "skiff-cni",
            "skiff-agent-bench",
        ],
    )?;
    let mut c = Command::new(release.join("skiff-agent-bench"));
    c.arg("--out").arg(results("agent.json"));
    if quick {
        c.args(["--services", "1000", "--changes", "50"])
            .args(["--cni-iterations", "20"]);
    }
    // Extra flags for the benchmark binary (e.g. SKIFF_AGENT_BENCH_ARGS="--services 5000").
    if let Ok(extra) = std::env::var("SKIFF_AGENT_BENCH_ARGS") {
        c.args(extra.split_whitespace());
    }
    cmd::run(&mut c)
}

/// The whole cluster (skiff-cluster, release binaries): `up` cold start of a 1-node
/// cluster to node Ready, idle memory of skiff-controlplane + skiff-agent, and pod startup
/// latency of a 100-pod Deployment (--quick: 20 pods, 1 cold start). Needs root.
fn cluster(quick: bool) -> anyhow::Result<()> {
    require_root(
        "cluster",
        "it creates network namespaces, cgroups and eBPF programs",
    )?;
    setup::ensure()?;
    let release = build_release(
        &[
            "skiff-controlplane",
            "skiff-agent",
            "skiff-cni",
            "skiff-cluster",
        ],
        &[
            "skiff-controlplane",
            "skiff-agent",
            "skiff-cni",
            "skiff-cluster-bench",
        ],
    )?;
    let mut c = Command::new(release.join("skiff-cluster-bench"));
    c.arg("--bin-dir")
        .arg(&release)
        .arg("--out")
        .arg(results("cluster.json"));
    if quick {
        c.args(["--pods", "20", "--starts", "1"]);
    }
    cmd::run(&mut c)
}
