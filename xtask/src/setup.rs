//! Installs what building and testing skiff need, idempotently: each step checks first and
//! only acts (and speaks) when something is missing. The recipe is the verified one for
//! these machines: nightly rust-src, and bpf-linker built against the nightly toolchain's
//! own LLVM (there is no system LLVM of the right version).

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context as _};

use crate::cmd::{self, is_root, nightly, output};

/// Debian packages: `protobuf-compiler` + `libprotobuf-dev` (etcd-client's build script
/// needs protoc and the well-known types, `google/protobuf/descriptor.proto`, which only
/// the -dev package ships),
/// `iproute2` (the netns test harness), `etcd-server` (the store's etcd backend tests),
/// `containernetworking-plugins` (the reference CNI plugins skiff-cni is tested against),
/// `ethtool` (the XDP test turns off checksum offload on a veth that plays a wire),
/// `podman` + `runc` + `busybox-static` (a real container runtime invokes skiff-cni, with
/// a busybox image built locally: no registry is reachable; runc because crun refuses
/// hybrid cgroup mounts).
const APT_PACKAGES: &[&str] = &[
    "iproute2",
    "ethtool",
    "protobuf-compiler",
    "libprotobuf-dev",
    "etcd-server",
    "containernetworking-plugins",
    "podman",
    "runc",
    "busybox-static",
    // cluster: the examples' HTTP server and Job (python3, run as skiff.local/host
    // images) and the whole-cluster test's in-pod client (curl). kubectl is expected at
    // /usr/bin/kubectl (the `kubectl` package).
    "python3",
    "curl",
    // end cluster
];
const BPF_LINKER_VERSION: &str = "0.13.0";
/// Opt-in: a rust-src tarball matching the nightly, for machines that cannot download it.
const RUST_SRC_TARBALL_ENV: &str = "SKIFF_RUST_SRC_TARBALL";

pub fn ensure() -> anyhow::Result<()> {
    ensure_apt_packages(APT_PACKAGES)?;
    ensure_nightly()?;
    let sysroot = nightly_sysroot()?;
    ensure_rust_src(&sysroot)?;
    ensure_bpf_linker(&sysroot)?;
    Ok(())
}

pub fn ensure_apt_packages(packages: &[&str]) -> anyhow::Result<()> {
    let missing: Vec<&str> = packages
        .iter()
        .copied()
        .filter(|p| {
            // "install ok installed" only: a package dpkg knows but removed reads
            // "unknown ok not-installed", which also ends in "installed".
            output(Command::new("dpkg-query").args(["-W", "-f=${Status}", p]))
                .is_none_or(|s| s.trim() != "install ok installed")
        })
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    if !is_root() {
        bail!(
            "missing Debian packages: {}. Install them as root: apt-get install -y {}",
            missing.join(", "),
            missing.join(" ")
        );
    }
    eprintln!("setup: installing Debian packages {}", missing.join(", "));
    cmd::run(
        Command::new("apt-get")
            .args(["update", "-qq"])
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )?;
    cmd::run(
        Command::new("apt-get")
            .args(["install", "-y", "-qq", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
}

fn ensure_nightly() -> anyhow::Result<()> {
    let list = output(Command::new("rustup").args(["toolchain", "list"])).unwrap_or_default();
    if list.lines().any(|l| l.starts_with("nightly")) {
        return Ok(());
    }
    eprintln!("setup: installing the nightly toolchain (eBPF needs build-std)");
    cmd::run(Command::new("rustup").args([
        "toolchain",
        "install",
        "nightly",
        "--profile",
        "minimal",
    ]))
}

fn nightly_sysroot() -> anyhow::Result<PathBuf> {
    output(nightly("rustc").args(["--print", "sysroot"]))
        .map(PathBuf::from)
        .context("`rustup run nightly rustc --print sysroot` failed: is the nightly toolchain installed?")
}

fn ensure_rust_src(sysroot: &Path) -> anyhow::Result<()> {
    let rustlib = sysroot.join("lib/rustlib");
    if rustlib.join("src/rust/library/core/Cargo.toml").exists() {
        return Ok(());
    }
    if let Some(tarball) = std::env::var_os(RUST_SRC_TARBALL_ENV) {
        let tarball = PathBuf::from(tarball);
        let verbose = output(nightly("rustc").arg("-vV")).unwrap_or_default();
        let commit = verbose
            .lines()
            .find_map(|l| l.strip_prefix("commit-hash: "))
            .unwrap_or_default();
        let name = tarball
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned();
        if commit.len() < 9 || !name.contains(&commit[..9]) {
            bail!(
                "{RUST_SRC_TARBALL_ENV}={} does not name the nightly's commit {commit}: a rust-src \
                 from another commit would build a broken `core`. Unset it to download rust-src.",
                tarball.display()
            );
        }
        eprintln!(
            "setup: unpacking rust-src from {} into {}",
            tarball.display(),
            rustlib.display()
        );
        return cmd::run(
            Command::new("tar")
                .arg("-xzf")
                .arg(&tarball)
                .arg("-C")
                .arg(&rustlib),
        );
    }
    eprintln!("setup: adding the rust-src component to nightly (eBPF builds `core` from source)");
    cmd::run(Command::new("rustup").args([
        "component",
        "add",
        "rust-src",
        "--toolchain",
        "nightly",
    ]))
    .with_context(|| {
        format!(
            "could not download rust-src; on a machine without access, point \
                 {RUST_SRC_TARBALL_ENV} at a rust-src tarball for this exact nightly"
        )
    })
}

fn ensure_bpf_linker(sysroot: &Path) -> anyhow::Result<()> {
    let version = output(Command::new("bpf-linker").arg("--version")).unwrap_or_default();
    if version.contains(BPF_LINKER_VERSION) {
        return Ok(());
    }
    // bpf-linker must use the same LLVM as rustc's BPF backend: link it against the
    // nightly's own libLLVM (found by name, so a newer nightly keeps working).
    let libdir = sysroot.join("lib");
    let (lib, major) = std::fs::read_dir(&libdir)
        .with_context(|| format!("reading {}", libdir.display()))?
        .flatten()
        .find_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let lib = name.strip_prefix("lib")?.strip_suffix(".so")?.to_owned();
            let major = lib
                .strip_prefix("LLVM-")?
                .split('-')
                .next()?
                .parse::<u32>()
                .ok()?;
            Some((lib, major))
        })
        .with_context(|| format!("no libLLVM-<major>-*.so in {}", libdir.display()))?;
    eprintln!(
        "setup: building bpf-linker {BPF_LINKER_VERSION} against the nightly's {lib} (about a minute)"
    );
    let rustflags = format!(
        "-L {dir} -l dylib={lib} -C link-arg=-Wl,-rpath,{dir}",
        dir = libdir.display()
    );
    cmd::run(
        nightly("cargo")
            .args([
                "install",
                "bpf-linker",
                "--version",
                BPF_LINKER_VERSION,
                "--locked",
                "--force",
            ])
            .args(["--no-default-features", "--features"])
            .arg(format!("llvm-{major},no-llvm-linking"))
            .env("RUSTFLAGS", rustflags),
    )
}
