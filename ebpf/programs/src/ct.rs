//! Connection tracking for per-packet translation. Each translated flow has two entries:
//! FORWARD, keyed by the packet as the client sends it, and REPLY, keyed by the reply as
//! it comes back from the backend. Each says how to rewrite matching packets. The agent
//! ages entries out (timeouts in `skiff_datapath_abi::ct_timeouts`) and purges a
//! backend's entries when it leaves its service.

use aya_ebpf::helpers::bpf_ktime_get_ns;
use skiff_datapath_abi::{ct_flags, ct_partner_dir, CtKey, CtValue};

use crate::{maps::SKIFF_CT_V1, parse::Packet};

/// Refresh `last_seen_ns` at most this often: a write per packet would cost more than
/// the lookup itself, and GC timeouts are in seconds.
const REFRESH_NS: u64 = 1_000_000_000;

pub fn key(p: &Packet, dir: u8) -> CtKey {
    CtKey {
        saddr: p.saddr,
        daddr: p.daddr,
        sport: p.sport,
        dport: p.dport,
        proto: p.proto,
        dir,
        _pad: 0,
    }
}

pub fn now() -> u64 {
    // SAFETY: helper without preconditions.
    unsafe { bpf_ktime_get_ns() }
}

/// The key of the other direction of an entry: a packet rewritten by `v` and answered
/// comes back with source and destination swapped.
#[inline(always)]
fn partner(key: &CtKey, v: &CtValue) -> CtKey {
    CtKey {
        saddr: v.daddr,
        daddr: v.saddr,
        sport: v.dport,
        dport: v.sport,
        proto: key.proto,
        dir: ct_partner_dir(key.dir, v.flags),
        _pad: 0,
    }
}

/// Looks up `key`; on a hit refreshes its timestamp and TCP state and returns a copy.
/// The first reply of a flow also marks its forward entry, so both directions age on the
/// established timeout from then on.
#[inline(always)]
pub fn lookup(key: &CtKey, tcp_flags: u8, is_reply: bool) -> Option<CtValue> {
    let entry = SKIFF_CT_V1.get_ptr_mut(key)?;
    // SAFETY: as below.
    if is_reply && unsafe { (*entry).flags } & ct_flags::SEEN_REPLY == 0 {
        // SAFETY: as below.
        let fwd_key = partner(key, unsafe { &*entry });
        if let Some(fwd) = SKIFF_CT_V1.get_ptr_mut(fwd_key) {
            // SAFETY: pointer from a successful lookup, valid for this run.
            unsafe { (*fwd).flags |= ct_flags::SEEN_REPLY };
        }
    }
    // SAFETY: the pointer comes from a successful lookup and stays valid (RCU) for this
    // run; concurrent updates of these plain fields race benignly (last writer wins).
    unsafe {
        let mut flags = (*entry).flags;
        if is_reply {
            flags |= ct_flags::SEEN_REPLY;
        }
        // FIN 0x01, RST 0x04.
        if tcp_flags & 0x05 != 0 {
            flags |= ct_flags::CLOSING;
        }
        let now = now();
        if flags != (*entry).flags || now.wrapping_sub((*entry).last_seen_ns) > REFRESH_NS {
            (*entry).flags = flags;
            (*entry).last_seen_ns = now;
        }
        Some(*entry)
    }
}
