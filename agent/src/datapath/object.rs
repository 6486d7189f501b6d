//! The eBPF object, built from ebpf/programs by build.rs on every build and embedded here.

/// The ELF object as built by `agent/build.rs` (aya-build) into OUT_DIR.
pub fn bytes() -> &'static [u8] {
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/skiff-datapath"))
}

#[cfg(test)]
mod tests {
    use object::{Object, ObjectSection};

    /// build.rs strips the DWARF (agent memory, issue 7) and must keep what the loader
    /// reads: the programs, the maps, BTF and its func/line info.
    #[test]
    fn embedded_object_has_btf_and_no_dwarf() {
        let elf = object::File::parse(super::bytes()).expect("the embedded eBPF object parses");
        let names: Vec<&str> = elf.sections().filter_map(|s| s.name().ok()).collect();
        let dwarf: Vec<&&str> = names.iter().filter(|n| n.contains(".debug")).collect();
        assert!(dwarf.is_empty(), "DWARF left in the object: {dwarf:?}");
        for needed in [".BTF", ".BTF.ext", "maps", "classifier", "xdp", "license"] {
            assert!(names.contains(&needed), "{needed} missing from {names:?}");
        }
        assert!(
            super::bytes().len() < 400 * 1024,
            "the object is {} bytes: was DWARF kept?",
            super::bytes().len()
        );
    }
}
