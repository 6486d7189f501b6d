//! Per-CPU counters. Per-CPU array slots are private to the CPU running the program, so
//! plain read-modify-write is race free (the kernel disables preemption/migration while a
//! BPF program runs).

use skiff_datapath_abi::{DropReason, PacketClass, SockLbCounter};

use crate::maps::{SKIFF_DROPS_V1, SKIFF_SKSTAT_V1, SKIFF_STATS_V1};

#[inline(always)]
pub fn count_packet(class: PacketClass, len: u32) {
    if let Some(counter) = SKIFF_STATS_V1.get_ptr_mut(class as u32) {
        // SAFETY: the pointer comes from a successful map lookup and is valid for the
        // duration of this program run; only this CPU writes this slot.
        unsafe {
            (*counter).packets += 1;
            (*counter).bytes += u64::from(len);
        }
    }
}

#[inline(always)]
pub fn count_drop(reason: DropReason) {
    if let Some(counter) = SKIFF_DROPS_V1.get_ptr_mut(reason as u32) {
        // SAFETY: as in `count_packet`.
        unsafe { *counter += 1 };
    }
}

#[inline(always)]
pub fn count_sock(event: SockLbCounter) {
    if let Some(counter) = SKIFF_SKSTAT_V1.get_ptr_mut(event as u32) {
        // SAFETY: as in `count_packet`.
        unsafe { *counter += 1 };
    }
}
