//! Every BPF map of the object, in one place. Names are the versioned names of
//! `skiff_datapath_abi::map_names` (the `#[map]` macro takes the static's identifier as the
//! map name, and the agent's tests check that every ABI name is present in the object).

use aya_ebpf::{macros::map, maps::PerCpuArray};
use skiff_datapath_abi::{DropReason, PacketClass, TrafficCounter};

/// Packets and bytes per [`PacketClass`], per CPU (no atomics on the fast path).
#[map]
pub static SKIFF_STATS_V1: PerCpuArray<TrafficCounter> =
    PerCpuArray::with_max_entries(PacketClass::COUNT, 0);

/// Dropped packets per [`DropReason`], per CPU.
#[map]
pub static SKIFF_DROPS_V1: PerCpuArray<u64> = PerCpuArray::with_max_entries(DropReason::COUNT, 0);
