//! `cargo xtask bench <what>`: builds the benchmark binary in release mode and runs it.
//! Benchmarks need root (namespaces, BPF) and install their own comparison tools.

use std::process::Command;

use anyhow::bail;

use crate::{
    cmd::{self, cargo, is_root, workspace_root},
    setup,
};

pub fn run(what: &str, quick: bool) -> anyhow::Result<()> {
    if what != "datapath" {
        bail!("unknown benchmark `{what}`: available: datapath");
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
