//! `cargo xtask bench <what>`: builds the benchmark binary in release mode and runs it.
//! Benchmarks need root (namespaces, BPF) and install their own comparison tools.

use std::process::Command;

use anyhow::bail;

use crate::{
    cmd::{self, cargo, is_root, workspace_root},
    setup,
};

pub fn run(what: &str, quick: bool) -> anyhow::Result<()> {
    // scheduler helper
    if what == "controlplane" {
        return controlplane(quick);
    }
    // end scheduler helper
    // cp helper: API server benchmark
    if what == "apiserver" {
        return apiserver(quick);
    }
    // end cp helper
    // agent bench (issue 7)
    if what == "agent" {
        return agent(quick);
    }
    // end agent bench
    // cluster bench (issue 8)
    if what == "cluster" {
        return cluster(quick);
    }
    // end cluster bench
    if what != "datapath" {
        bail!("unknown benchmark `{what}`: available: datapath, controlplane, apiserver, agent, cluster");
    }
    if !is_root() {
        bail!("benchmarks need root: they create network namespaces and load eBPF programs");
    }
    setup::ensure()?;
    // The comparison point: kube-proxy's iptables mode needs iptables-restore.
    setup::ensure_apt_packages(&["iptables"])?;
    cmd::run(cargo().args([
        "build",
        "--release",
        "-p",
        "skiff-tests",
        "--bin",
        "skiff-bench",
    ]))?;
    let out = workspace_root().join("bench-results/datapath.json");
    let mut c = Command::new(workspace_root().join("target/release/skiff-bench"));
    c.arg("datapath").arg("--out").arg(&out);
    if quick {
        c.arg("--quick");
    }
    cmd::run(&mut c)
}

// scheduler helper
/// The control plane (issue 6), each part against its own real skiff-controlplane process
/// on 127.0.0.1 with fake nodes; needs no root:
/// - scheduler throughput (upstream scheduler_perf's SchedulingBasic shape: 5000 nodes,
///   10 000 pods; --quick: 1000 / 2000), in memory, then end to end;
/// - Pod Ready → EndpointSlice latency at 10 000 pods / 1000 Services (--quick: 2000 / 200);
/// - a 1000-replica Deployment on 100 fake nodes, create → all Running (--quick: 200).
fn controlplane(quick: bool) -> anyhow::Result<()> {
    cmd::run(cargo().args([
        "build",
        "--release",
        "-p",
        "skiff-controlplane",
        "-p",
        "skiff-fake-nodes",
        "--bin",
        "skiff-controlplane",
        "--bin",
        "skiff-scheduler-bench",
        "--bin",
        "skiff-controllers-bench",
    ]))?;
    let release = workspace_root().join("target/release");
    let mut c = Command::new(release.join("skiff-scheduler-bench"));
    c.arg("--server").arg(release.join("skiff-controlplane"));
    if quick {
        c.args(["--nodes", "1000", "--pods", "2000"]);
    }
    cmd::run(&mut c)?;
    let mut c = Command::new(release.join("skiff-controllers-bench"));
    c.arg("--server").arg(release.join("skiff-controlplane"));
    if quick {
        c.args([
            "--pods",
            "2000",
            "--services",
            "200",
            "--probes",
            "200",
            "--replicas",
            "200",
        ]);
    }
    cmd::run(&mut c)
}
// end scheduler helper

// cp helper: API server benchmark
/// The API server alone and with its controllers: idle memory, cold start, LIST from the
/// watch cache vs the store at 1k/10k pods, memory with 10k pods + 1k Services + 1k
/// EndpointSlices, watch fan-out to 1000 watchers and create throughput, over redb and a
/// local etcd (`/usr/bin/etcd`, Debian's etcd-server).
/// --quick: 200/2000 pods, 100 Services and slices, 100 watchers. Needs no root; everything on 127.0.0.1.
fn apiserver(quick: bool) -> anyhow::Result<()> {
    setup::ensure_apt_packages(&["etcd-server"])?;
    cmd::run(cargo().args([
        "build",
        "--release",
        "-p",
        "skiff-controlplane",
        "-p",
        "skiff-apiserver-bench",
        "--bin",
        "skiff-controlplane",
        "--bin",
        "skiff-apiserver-bench",
    ]))?;
    let release = workspace_root().join("target/release");
    let mut c = Command::new(release.join("skiff-apiserver-bench"));
    c.arg("--server")
        .arg(release.join("skiff-controlplane"))
        .arg("--out")
        .arg(workspace_root().join("bench-results/apiserver.json"));
    if quick {
        c.args([
            "--pods",
            "200,2000",
            "--watchers",
            "100",
            "--services",
            "100",
            "--slices",
            "100",
        ]);
    }
    cmd::run(&mut c)
}
// end cp helper

// agent bench (issue 7)
/// The node agent at scale (network programming latency, resident memory) against a real
/// skiff-controlplane, and CNI ADD/DEL latency of skiff-cni vs Debian's reference
/// bridge + host-local; all inside throwaway namespaces. Needs root. Default scale: 10k
/// services / 100k endpoints (--quick: 1000 / 10 000).
fn agent(quick: bool) -> anyhow::Result<()> {
    if !is_root() {
        bail!("the agent benchmark needs root: it loads eBPF programs and creates namespaces");
    }
    setup::ensure()?;
    setup::ensure_apt_packages(&["containernetworking-plugins"])?;
    cmd::run(cargo().args([
        "build",
        "--release",
        "-p",
        "skiff-controlplane",
        "-p",
        "skiff-agent",
        "-p",
        "skiff-cni",
        "-p",
        "skiff-tests",
        "--bin",
        "skiff-controlplane",
        "--bin",
        "skiff-agent",
        "--bin",
        "skiff-cni",
        "--bin",
        "skiff-agent-bench",
    ]))?;
    let out = workspace_root().join("bench-results/agent.json");
    let mut c = Command::new(workspace_root().join("target/release/skiff-agent-bench"));
    c.arg("--out").arg(&out);
    if quick {
        c.args([
            "--services",
            "1000",
            "--changes",
            "50",
            "--cni-iterations",
            "20",
        ]);
    }
    // Extra flags for the benchmark binary (e.g. SKIFF_AGENT_BENCH_ARGS="--services 5000").
    if let Ok(extra) = std::env::var("SKIFF_AGENT_BENCH_ARGS") {
        c.args(extra.split_whitespace());
    }
    cmd::run(&mut c)
}
// end agent bench

// cluster bench (issue 8)
/// The whole cluster (skiff-cluster, release binaries): `up` cold start of a 1-node
/// cluster to node Ready, idle memory of skiff-controlplane + skiff-agent, and pod startup
/// latency of a 100-pod Deployment (--quick: 20 pods, 1 cold start). Needs root.
fn cluster(quick: bool) -> anyhow::Result<()> {
    if !is_root() {
        bail!("the cluster benchmark needs root: it creates network namespaces, cgroups and eBPF programs");
    }
    setup::ensure()?;
    cmd::run(cargo().args([
        "build",
        "--release",
        "-p",
        "skiff-controlplane",
        "-p",
        "skiff-agent",
        "-p",
        "skiff-cni",
        "-p",
        "skiff-cluster",
        "--bin",
        "skiff-controlplane",
        "--bin",
        "skiff-agent",
        "--bin",
        "skiff-cni",
        "--bin",
        "skiff-cluster-bench",
    ]))?;
    let release = workspace_root().join("target/release");
    let mut c = Command::new(release.join("skiff-cluster-bench"));
    c.arg("--bin-dir")
        .arg(&release)
        .arg("--out")
        .arg(workspace_root().join("bench-results/cluster.json"));
    if quick {
        c.args(["--pods", "20", "--starts", "1"]);
    }
    cmd::run(&mut c)
}
// end cluster bench
