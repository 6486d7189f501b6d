//! Reading a range of a per-CPU array in one `BPF_MAP_LOOKUP_BATCH` call instead of one
//! `BPF_MAP_LOOKUP_ELEM` per index (aya has no batch API). The per-service counters are
//! sampled every tick on the thread that also programs the maps: at 10 000 services the
//! per-index reads were 10 000 syscalls (and as many allocations) per tick, time a
//! concurrent EndpointSlice change waited for.
//!
//! Kernel side (`generic_map_lookup_batch`, Linux 5.6+ for array maps): `in_batch` is the
//! key *before* the first one returned (NULL: from the start), `out_batch` receives the last
//! key returned, each value is `round_up(value_size, 8) * possible CPUs` bytes (what
//! `BPF_MAP_LOOKUP_ELEM` returns for a per-CPU map), and `ENOENT` means the walk reached
//! the end (with `count` set to the entries filled).

use std::{
    io,
    os::fd::{AsFd as _, AsRawFd as _},
};

use aya::{maps::MapData, Pod};

/// `BPF_MAP_LOOKUP_BATCH` (include/uapi/linux/bpf.h, `enum bpf_cmd`).
const BPF_MAP_LOOKUP_BATCH: libc::c_int = 24;

/// The `batch` member of `union bpf_attr`. The kernel zero-fills the union past the size
/// passed, so passing only this member is valid.
#[repr(C)]
#[derive(Default)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

/// Whether a batch failure means "this kernel cannot" (read index by index instead)
/// rather than a real error: `EINVAL` (unknown command before 5.6), `ENOTSUPP` (524, the
/// map type has no batch op), `EOPNOTSUPP`.
pub(super) fn unsupported(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EINVAL) | Some(524) | Some(libc::EOPNOTSUPP)
    )
}

/// Indices `0..count` of the per-CPU array `map` (value type `V`), each summed over the
/// CPUs with `add`; `count` is clamped to the array's size.
pub(super) fn per_cpu_sums<V: Pod + Default>(
    map: &MapData,
    max_entries: u32,
    count: u32,
    add: impl Fn(V, V) -> V,
) -> io::Result<Vec<V>> {
    // Values are laid out at an 8-byte stride per CPU; the counter types are u64s.
    const { assert!(std::mem::size_of::<V>().is_multiple_of(8) && std::mem::align_of::<V>() <= 8) };
    let count = count.min(max_entries);
    let mut sums = vec![V::default(); count as usize];
    if count == 0 {
        return Ok(sums);
    }
    let cpus = aya::util::nr_cpus().map_err(|(_, e)| e)?;
    let mut keys = vec![0u32; count as usize];
    let mut values = vec![V::default(); count as usize * cpus];
    let mut filled = 0usize;
    let mut last_key = 0u32;
    while filled < count as usize {
        let mut attr = BatchAttr {
            // NULL: from index 0; then after the last key returned.
            in_batch: if filled == 0 {
                0
            } else {
                &last_key as *const u32 as u64
            },
            out_batch: &mut last_key as *mut u32 as u64,
            keys: keys[filled..].as_mut_ptr() as u64,
            values: values[filled * cpus..].as_mut_ptr() as u64,
            count: count - filled as u32,
            map_fd: map.fd().as_fd().as_raw_fd() as u32,
            ..Default::default()
        };
        // SAFETY: `attr` is a valid `bpf_attr.batch` of the size passed; `keys` and
        // `values` have room for `attr.count` keys and per-CPU values (checked above: a
        // per-CPU value is `cpus` values of `V` at an 8-byte stride); `in_batch` and
        // `out_batch` point at a u32, the array's key size.
        let ret = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_MAP_LOOKUP_BATCH,
                &mut attr as *mut BatchAttr,
                std::mem::size_of::<BatchAttr>(),
            )
        };
        let err = (ret < 0).then(io::Error::last_os_error);
        // On success and on ENOENT the kernel wrote back how many it filled.
        filled += attr.count as usize;
        match err {
            None if attr.count > 0 => {}
            None => break,
            Some(e) if e.raw_os_error() == Some(libc::ENOENT) => break,
            Some(e) => return Err(e),
        }
    }
    for i in 0..filled {
        let Some(sum) = sums.get_mut(keys[i] as usize) else {
            continue;
        };
        *sum = values[i * cpus..(i + 1) * cpus]
            .iter()
            .fold(V::default(), |a, v| add(a, *v));
    }
    Ok(sums)
}
