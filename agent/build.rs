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
    )?;

    let out_dir = std::env::var("OUT_DIR").context("OUT_DIR")?;
    strip_dwarf(&std::path::Path::new(&out_dir).join("skiff-datapath"))?;

    // Agent memory (issue 7): pack the binary's relative relocations (DT_RELR, glibc >=
    // 2.36, which the agent's Debian bookworm baseline has). The dynamic loader reads
    // every entry of `.rela.dyn` at start, so its pages stay resident for the process's
    // life: 930 kB of 24-byte entries at 38k relocations, a few kB packed. Only the agent's
    // own binaries: no dependency is rebuilt for it.
    println!("cargo:rustc-link-arg-bins=-Wl,-z,pack-relative-relocs");
    Ok(())
}

/// Drops the DWARF sections (and their relocation sections) from the eBPF object.
///
/// Why: aya-build compiles with `-C debuginfo=2` because bpf-linker derives the object's
/// BTF from DWARF; once linked, nothing reads the DWARF (the loader uses `.BTF` and
/// `.BTF.ext`, which hold the func and line info the verifier's log shows). The object is
/// embedded in the agent's binary, and the loader walks every section's relocations, so
/// about 600 kB of DWARF (of 735 kB) were faulted into every agent's resident memory and
/// stayed there (agent memory, issue 7).
fn strip_dwarf(path: &std::path::Path) -> anyhow::Result<()> {
    let data = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let mut elf = object::build::elf::Builder::read(&*data)
        .with_context(|| format!("parsing the eBPF object {}", path.display()))?;
    for section in elf.sections.iter_mut() {
        let name = section.name.as_slice();
        if [&b".debug"[..], b".rel.debug", b".rela.debug"]
            .iter()
            .any(|p| name.starts_with(p))
        {
            section.delete = true;
        }
    }
    elf.delete_orphans();
    // LLVM names the sections from the symbol string table (`.strtab` serves both), which
    // the writer cannot emit; section names get their own table.
    if !elf
        .sections
        .iter()
        .any(|s| matches!(s.data, object::build::elf::SectionData::SectionString))
    {
        let names = elf.sections.add();
        names.name = (&b".shstrtab"[..]).into();
        names.sh_type = object::elf::SHT_STRTAB;
        names.sh_addralign = 1;
        names.data = object::build::elf::SectionData::SectionString;
    }
    let mut out = Vec::new();
    elf.write(&mut out)
        .with_context(|| format!("writing the stripped eBPF object {}", path.display()))?;
    std::fs::write(path, out).with_context(|| format!("writing {}", path.display()))
}
