//! Formatting and clippy, warnings as errors, on host crates and on the eBPF crate.

use crate::cmd::{self, cargo, nightly, workspace_root};

pub fn run() -> anyhow::Result<()> {
    cmd::run(cargo().args(["fmt", "--all", "--", "--check"]))?;
    cmd::run(cargo().args([
        "clippy",
        "--workspace",
        "--exclude",
        "skiff-datapath",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]))?;
    // The eBPF crate only builds for bpfel-unknown-none on nightly with build-std; its
    // folder's .cargo/config.toml sets both, so clippy runs from there.
    let root = workspace_root();
    cmd::run(
        nightly("cargo")
            .current_dir(root.join("ebpf/programs"))
            .args(["clippy", "--release", "--target-dir"])
            .arg(root.join("target/ebpf-clippy"))
            .args(["--", "-D", "warnings"]),
    )?;
    eprintln!("lint: rustfmt and clippy clean on host and eBPF crates");
    Ok(())
}
