//! XDP acceleration for traffic from outside whose backend is on another node: the flow is
//! planned exactly as on tc (`service::plan_new_flow`, same maps), translated in place
//! with incremental checksums (XDP has no checksum helpers), and sent out of the egress
//! interface the FIB names, with its Ethernet addresses, before any skb exists. Anything
//! else — local backends, refusals, a next hop without a resolved neighbour, non-TCP/UDP —
//! passes to the stack, where the tc program finds the same conntrack state.
//!
//! Frames must carry complete L4 checksums, as frames from a NIC do. A veth peer with TX
//! checksum offload hands over CHECKSUM_PARTIAL frames (pseudo-header sum only); XDP cannot
//! see that state, so such a link needs `ethtool -K <peer> tx off` before XDP is enabled.

use aya_ebpf::{
    bindings::{bpf_fib_lookup as FibLookup, xdp_action, BPF_FIB_LKUP_RET_SUCCESS},
    helpers::{bpf_fib_lookup, bpf_redirect},
    programs::XdpContext,
    EbpfContext as _,
};
use skiff_datapath_abi::{ct_dir, ct_flags, proto, DropReason, PacketClass};

use crate::{
    counters, ct, lb,
    nat::Tuple,
    parse::{Packet, ETH_HLEN},
    service::{self, Plan},
};

const AF_INET: u8 = 2;

/// A mutable pointer to `N` bytes at `offset` of the frame, bounds-checked for the
/// verifier.
#[inline(always)]
fn bytes_mut<const N: usize>(ctx: &XdpContext, offset: usize) -> Option<*mut [u8; N]> {
    // Headers sit within the first 128 bytes (14 + 60 + 20 at most); the bound lets the
    // verifier accept the pointer arithmetic with a variable offset.
    if offset > 128 {
        return None;
    }
    let start = ctx.data();
    if start + offset + N > ctx.data_end() {
        return None;
    }
    Some((start + offset) as *mut [u8; N])
}

/// RFC 1624 eqn. 3: HC' = ~(~HC + ~m + m'), over 16-bit big-endian words.
#[inline(always)]
fn csum_update(csum: u16, old: u32, new: u32) -> u16 {
    let mut sum = u32::from(!csum);
    sum += u32::from(!(old >> 16) as u16) + (new >> 16);
    sum += u32::from(!(old as u16)) + (new & 0xffff);
    // At most five 16-bit terms: two folds always suffice (and the verifier sees no loop).
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    !(sum as u16)
}

/// Rewrites addresses and ports of `p` to `t` and decrements the TTL, fixing the IPv4
/// and TCP/UDP checksums. Returns false if the packet cannot be rewritten here.
#[inline(always)]
fn rewrite(ctx: &XdpContext, p: &Packet, t: &Tuple) -> bool {
    let Some(ip) = bytes_mut::<20>(ctx, ETH_HLEN) else {
        return false;
    };
    let l4_csum_off = if p.proto == proto::TCP { 16 } else { 6 };
    // Only the ports and the checksum are touched: a UDP datagram may be shorter than a
    // TCP header.
    let Some(ports) = bytes_mut::<4>(ctx, p.l4_offset) else {
        return false;
    };
    let Some(csum) = bytes_mut::<2>(ctx, p.l4_offset + l4_csum_off) else {
        return false;
    };
    // Values as big-endian numbers for the checksum arithmetic.
    let be32 = |raw: u32| u32::from_be(raw);
    let be16 = |raw: u16| u32::from(u16::from_be(raw));
    // SAFETY: all pointers were bounds-checked above; XDP owns the frame.
    unsafe {
        let ip = &mut *ip;
        let ports = &mut *ports;
        let csum = &mut *csum;
        let mut ip_csum = u16::from_be_bytes([ip[10], ip[11]]);
        let mut l4_csum = u16::from_be_bytes(*csum);
        let udp_no_csum = p.proto == proto::UDP && l4_csum == 0;
        // Addresses: IPv4 header and the pseudo-header of the L4 checksum.
        ip_csum = csum_update(ip_csum, be32(p.saddr), be32(t.saddr));
        ip_csum = csum_update(ip_csum, be32(p.daddr), be32(t.daddr));
        l4_csum = csum_update(l4_csum, be32(p.saddr), be32(t.saddr));
        l4_csum = csum_update(l4_csum, be32(p.daddr), be32(t.daddr));
        l4_csum = csum_update(
            l4_csum,
            be16(p.sport) << 16 | be16(p.dport),
            be16(t.sport) << 16 | be16(t.dport),
        );
        // TTL: the high byte of the TTL/protocol word.
        let ttl = ip[8];
        if ttl <= 1 {
            return false;
        }
        let old_word = u32::from(ttl) << 8 | u32::from(ip[9]);
        ip_csum = csum_update(ip_csum, old_word, old_word - 0x100);
        ip[8] = ttl - 1;
        ip[12..16].copy_from_slice(&t.saddr.to_ne_bytes());
        ip[16..20].copy_from_slice(&t.daddr.to_ne_bytes());
        ip[10..12].copy_from_slice(&ip_csum.to_be_bytes());
        ports[0..2].copy_from_slice(&t.sport.to_ne_bytes());
        ports[2..4].copy_from_slice(&t.dport.to_ne_bytes());
        if !udp_no_csum {
            // UDP: a computed 0 is sent as 0xffff (RFC 768).
            if p.proto == proto::UDP && l4_csum == 0 {
                l4_csum = 0xffff;
            }
            *csum = l4_csum.to_be_bytes();
        }
    }
    true
}

/// Routes the (not yet rewritten) packet to `t`: FIB lookup first, so a packet that
/// cannot leave from here is passed to tc untouched.
#[inline(always)]
fn forward(ctx: &XdpContext, p: &Packet, t: &Tuple) -> u32 {
    // SAFETY: zeroed bytes are a valid bpf_fib_lookup.
    let mut params: FibLookup = unsafe { core::mem::zeroed() };
    params.family = AF_INET;
    params.l4_protocol = p.proto;
    params.sport = t.sport;
    params.dport = t.dport;
    // Host byte order: the kernel compares it with the route's MTU.
    params.__bindgen_anon_1.tot_len = (p.ip_end - ETH_HLEN) as u16;
    params.ifindex = ctx.ingress_ifindex() as u32;
    params.__bindgen_anon_3.ipv4_src = t.saddr;
    params.__bindgen_anon_4.ipv4_dst = t.daddr;
    // SAFETY: params is a valid, correctly sized struct on the stack.
    let rc = unsafe {
        bpf_fib_lookup(
            ctx.as_ptr(),
            &mut params,
            core::mem::size_of::<FibLookup>() as i32,
            0,
        )
    };
    // Without a resolved neighbour (or any other answer) tc takes over: it can ask the
    // neighbour subsystem (bpf_redirect_neigh); XDP cannot.
    if rc != BPF_FIB_LKUP_RET_SUCCESS as i64 || !rewrite(ctx, p, t) {
        return xdp_action::XDP_PASS;
    }
    let Some(eth) = bytes_mut::<12>(ctx, 0) else {
        return xdp_action::XDP_PASS;
    };
    // SAFETY: bounds-checked above.
    unsafe {
        let eth = &mut *eth;
        eth[0..6].copy_from_slice(&params.dmac);
        eth[6..12].copy_from_slice(&params.smac);
    }
    // SAFETY: helper call with the FIB's egress interface.
    unsafe { bpf_redirect(params.ifindex, 0) as u32 }
}

pub fn try_xdp(ctx: &XdpContext) -> Result<u32, DropReason> {
    let p = crate::parse::parse(ctx)?;
    if p.class != PacketClass::Ipv4Tcp && p.class != PacketClass::Ipv4Udp {
        return Ok(xdp_action::XDP_PASS);
    }
    let len = (ctx.data_end() - ctx.data()) as u32;
    // Replies and later packets of source-NATed flows (the only ones routed here).
    for dir in [ct_dir::REPLY, ct_dir::FORWARD] {
        if let Some(v) = ct::lookup(&ct::key(&p, dir), p.tcp_flags, dir == ct_dir::REPLY) {
            if dir == ct_dir::FORWARD && service::reopens(&p, &v) {
                // A new connection on a reused tuple: balanced afresh below.
                break;
            }
            if v.flags & ct_flags::SNAT == 0 {
                return Ok(xdp_action::XDP_PASS);
            }
            let action = forward(ctx, &p, &service::tuple(&v));
            if action == xdp_action::XDP_REDIRECT && dir == ct_dir::FORWARD {
                counters::count_lb(v.service_id, v.backend_id, false, len);
            }
            return Ok(action);
        }
    }
    if !lb::is_external(ctx.ingress_ifindex() as u32) {
        return Ok(xdp_action::XDP_PASS);
    }
    match service::plan_new_flow(&p, true)? {
        Plan::Translate { fwd, snat: true } => {
            let action = forward(ctx, &p, &service::tuple(&fwd));
            if action == xdp_action::XDP_REDIRECT {
                counters::count_lb(fwd.service_id, fwd.backend_id, false, len);
            }
            Ok(action)
        }
        // Local backends and refusals: the stack and tc (the flow is already tracked).
        _ => Ok(xdp_action::XDP_PASS),
    }
}
