//! Builds the eBPF object from source (ebpf/programs) on every build of the agent and puts
//! it in OUT_DIR, where `datapath::object` embeds it. No prebuilt object is ever committed.
//!
//! Needs nightly with rust-src and bpf-linker: `cargo xtask setup` installs both, and every
//! xtask command runs it first. A plain `cargo build` on a machine without them fails here
//! with a message saying so.

use std::process::Command;

use anyhow::{bail, Context as _};

fn main() -> anyhow::Result<()> {
    let manifest_dir = std::env::var("CARGO_MANIFEST_DIR").context("CARGO_MANIFEST_DIR")?;
    let workspace = std::path::Path::new(&manifest_dir)
        .parent()
        .context("agent has no parent directory")?;
    let programs = workspace.join("ebpf/programs");
    let abi = workspace.join("ebpf/abi");
    println!("cargo:rerun-if-changed={}", abi.display());

    if Command::new("bpf-linker")
        .arg("--version")
        .output()
        .is_err()
    {
        bail!(
            "bpf-linker is not installed, so the eBPF object cannot be built.\n\
             Run `cargo xtask setup` (it builds bpf-linker against the nightly toolchain's LLVM)."
        );
    }

    // aya-build forwards the inner cargo's progress lines as `cargo:warning`s; keep only
    // real diagnostics (errors and rustc warnings still come through).
    std::env::set_var("CARGO_TERM_QUIET", "true");

    let root_dir = programs
        .to_str()
        .context("non-UTF-8 path to ebpf/programs")?;
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "skiff-datapath",
            root_dir,
            ..Default::default()
        }],
        aya_build::Toolchain::Nightly,
    )
}
