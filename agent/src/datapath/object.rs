//! The eBPF object, built from ebpf/programs by build.rs on every build and embedded here.

/// The ELF object as built by `agent/build.rs` (aya-build) into OUT_DIR.
pub fn bytes() -> &'static [u8] {
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/skiff-datapath"))
}
