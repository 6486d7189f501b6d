//! Routing a rewritten packet from the tc hook itself: bpf_fib_lookup finds the egress
//! interface for the new destination and bpf_redirect_neigh resolves the next hop's MAC.
//! Needed whenever the rewritten source is a local address (NodePort replies, SNAT):
//! the stack's input path would drop such a packet as a martian (fib_validate_source).

use aya_ebpf::{
    bindings::{
        bpf_fib_lookup as FibLookup, BPF_FIB_LKUP_RET_NO_NEIGH, BPF_FIB_LKUP_RET_SUCCESS,
        TC_ACT_REDIRECT,
    },
    helpers::{bpf_fib_lookup, bpf_redirect_neigh},
    programs::TcContext,
    EbpfContext as _,
};
use skiff_datapath_abi::DropReason;

use crate::{nat, parse::Packet};

const AF_INET: u8 = 2;

/// Routes the packet (already rewritten to `tuple`) and returns the tc action.
#[inline(always)]
pub fn fib_redirect(ctx: &TcContext, p: &Packet, tuple: &nat::Tuple) -> Result<i32, DropReason> {
    // SAFETY: zeroed bytes are a valid bpf_fib_lookup (plain integers and unions of them).
    let mut params: FibLookup = unsafe { core::mem::zeroed() };
    params.family = AF_INET;
    params.l4_protocol = p.proto;
    params.sport = tuple.sport;
    params.dport = tuple.dport;
    // Host byte order: the kernel compares it with the route's MTU (FRAG_NEEDED above it).
    params.__bindgen_anon_1.tot_len = (p.ip_end - crate::parse::ETH_HLEN) as u16;
    // SAFETY: reading the ifindex the kernel filled in the context.
    params.ifindex = unsafe { (*ctx.skb.skb).ifindex };
    params.__bindgen_anon_3.ipv4_src = tuple.saddr;
    params.__bindgen_anon_4.ipv4_dst = tuple.daddr;
    // SAFETY: params is a valid, correctly sized bpf_fib_lookup on the stack.
    let rc = unsafe {
        bpf_fib_lookup(
            ctx.as_ptr(),
            &mut params,
            core::mem::size_of::<FibLookup>() as i32,
            0,
        )
    };
    if rc != BPF_FIB_LKUP_RET_SUCCESS as i64 && rc != BPF_FIB_LKUP_RET_NO_NEIGH as i64 {
        return Err(DropReason::NoRoute);
    }
    if !nat::decrement_ttl(ctx)? {
        // Let the stack answer with ICMP time exceeded.
        return Ok(aya_ebpf::bindings::TC_ACT_OK);
    }
    // SAFETY: helper call with a valid ifindex from the FIB and no explicit next hop.
    let r = unsafe { bpf_redirect_neigh(params.ifindex, core::ptr::null_mut(), 0, 0) };
    if r == TC_ACT_REDIRECT as i64 {
        Ok(TC_ACT_REDIRECT)
    } else {
        Err(DropReason::NoRoute)
    }
}
