//! Per-CPU counters. Per-CPU array slots are private to the CPU running the program, so
//! plain read-modify-write is race free (the kernel disables preemption/migration while a
//! BPF program runs).

use skiff_datapath_abi::{
    DropReason, FlowCounter, LbCounter, MasqCounter, PacketClass, SockLbCounter,
};

use crate::maps::{
    SKIFF_BEST_V1, SKIFF_DROPS_V2, SKIFF_FLOWST_V1, SKIFF_MASQST_V1, SKIFF_SKSTAT_V1,
    SKIFF_STATS_V1, SKIFF_SVCST_V1,
};

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
    if let Some(counter) = SKIFF_DROPS_V2.get_ptr_mut(reason as u32) {
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

#[inline(always)]
fn bump(counter: Option<*mut LbCounter>, new_flow: bool, len: u32) {
    if let Some(c) = counter {
        // SAFETY: as in `count_packet`.
        unsafe {
            if new_flow {
                (*c).new_flows += 1;
            }
            if len > 0 {
                (*c).packets += 1;
                (*c).bytes += u64::from(len);
            }
        }
    }
}

/// Counts a translated packet (`len` > 0) and/or a new flow for a service and a backend.
#[inline(always)]
pub fn count_lb(service_id: u32, backend_id: u32, new_flow: bool, len: u32) {
    bump(SKIFF_SVCST_V1.get_ptr_mut(service_id), new_flow, len);
    bump(SKIFF_BEST_V1.get_ptr_mut(backend_id), new_flow, len);
}

#[inline(always)]
pub fn count_masq(event: MasqCounter) {
    if let Some(counter) = SKIFF_MASQST_V1.get_ptr_mut(event as u32) {
        // SAFETY: as in `count_packet`.
        unsafe { *counter += 1 };
    }
}

#[inline(always)]
pub fn count_flow(event: FlowCounter) {
    if let Some(counter) = SKIFF_FLOWST_V1.get_ptr_mut(event as u32) {
        // SAFETY: as in `count_packet`.
        unsafe { *counter += 1 };
    }
}
