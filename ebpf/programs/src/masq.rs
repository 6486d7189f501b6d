//! Masquerade of pod traffic to the outside (what ip-masq-agent asks of iptables'
//! MASQUERADE, done on tc without netfilter): a packet leaving through a masquerading
//! uplink (`SKIFF_MASQ_V1`) whose source is in the cluster CIDR and whose destination is
//! neither link-local nor in `SKIFF_NOMASQ_V1` gets the uplink's address as its source
//! and a port claimed collision-free in the REPLY key space it shares with service SNAT.
//! Replies arriving on the uplink's tc ingress match that REPLY entry and go back to the
//! pod (service::ingress; ICMP echo replies here). TCP, UDP and ICMP echo (the echo id
//! serves as the port) are translated; other protocols and ICMP other than echo requests
//! leave as they are. A TCP flow starts only with a SYN (see `egress`); UDP has no such
//! marker, so a pod's UDP answer to a client outside that reached it directly (no
//! service) is masqueraded like a new flow.
//!
//! Entries: MASQ (egress only, keyed by the pod's packet) and REPLY (keyed by the
//! outside's answer). A MASQ entry is never looked up on ingress: the pod's packet must
//! reach the stack untranslated on the pod's interface.
//!
//! Verifier: everything here is `#[inline(always)]` into the tc programs and straight
//! line except the port claim, whose loop is bounded by a constant (8 map inserts) so
//! the verifier walks it unrolled. On Linux 6.18 the kernel reports 8,444 verified
//! instructions for tc egress with masquerade (16,971 for tc ingress), against the
//! 1,000,000 limit (BPF_COMPLEXITY_LIMIT_INSNS); no bpf-to-bpf calls, so the 512-byte
//! stack is shared by one frame (the largest locals are the two 16-byte conntrack keys
//! and 32-byte values). The non-masquerade check is one LPM lookup, not a loop over
//! ranges, for the same reason.

use aya_ebpf::{bindings::BPF_ANY, bindings::TC_ACT_OK, maps::lpm_trie::Key, programs::TcContext};
use skiff_datapath_abi::{ct_dir, ct_flags, CtKey, CtValue, DropReason, MasqCounter, MasqIface};

use crate::{
    counters, ct,
    maps::{SKIFF_CT_V1, SKIFF_MASQ_V1, SKIFF_NOMASQ_V1},
    nat::{self, Tuple},
    parse::{Packet, IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP},
    redirect,
    service::{claim_port, tuple},
};

const ICMP_ECHO_REQUEST: u8 = 8;
const TCP_SYN: u8 = 0x02;
const TCP_ACK: u8 = 0x10;
const ICMP_HLEN: usize = 8;
/// 169.254.0.0/16 (host byte order of the top 16 bits): link-local destinations (cloud
/// metadata services among them) are never masqueraded, whatever the configuration.
const LINK_LOCAL_TOP16: u32 = 0xa9fe;

/// The masquerade settings of the interface the packet passes, if it is a masquerading
/// uplink.
#[inline(always)]
pub fn uplink(ctx: &TcContext) -> Option<MasqIface> {
    // SAFETY: reading the ifindex the kernel filled in the context.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    // SAFETY: the value is copied out while the lookup's RCU protection holds.
    unsafe { SKIFF_MASQ_V1.get(ifindex) }.copied()
}

/// The flow's ports as conntrack keys them: TCP/UDP ports, or (echo id, 0) for an ICMP
/// echo request. `None`: not something masquerade translates.
#[inline(always)]
fn ports(ctx: &TcContext, p: &Packet) -> Result<Option<(u16, u16)>, DropReason> {
    match p.proto {
        IPPROTO_TCP | IPPROTO_UDP => Ok(Some((p.sport, p.dport))),
        IPPROTO_ICMP => {
            if p.l4_offset + ICMP_HLEN > p.ip_end {
                return Err(DropReason::ShortIcmpHeader);
            }
            let hdr: [u8; ICMP_HLEN] = ctx
                .load(p.l4_offset)
                .map_err(|_| DropReason::ShortIcmpHeader)?;
            if hdr[0] != ICMP_ECHO_REQUEST {
                return Ok(None);
            }
            Ok(Some((u16::from_ne_bytes([hdr[4], hdr[5]]), 0)))
        }
        _ => Ok(None),
    }
}

#[inline(always)]
fn exempt(daddr: u32) -> bool {
    u32::from_be(daddr) >> 16 == LINK_LOCAL_TOP16
        || SKIFF_NOMASQ_V1.get(Key::new(32, daddr)).is_some()
}

/// tc egress on an uplink: masquerades pod packets to the outside (known flows first,
/// so a flow keeps its translation if the exempt ranges change under it).
#[inline(always)]
pub fn egress(ctx: &TcContext, p: &Packet) -> Result<i32, DropReason> {
    let Some(cfg) = uplink(ctx) else {
        return Ok(TC_ACT_OK);
    };
    if p.saddr & cfg.src_mask != cfg.src_net {
        return Ok(TC_ACT_OK);
    }
    let Some((sport, dport)) = ports(ctx, p)? else {
        return Ok(TC_ACT_OK);
    };
    let key = CtKey {
        saddr: p.saddr,
        daddr: p.daddr,
        sport,
        dport,
        proto: p.proto,
        dir: ct_dir::MASQ,
        _pad: 0,
    };
    let t = match ct::lookup(&key, p.tcp_flags, false) {
        Some(ct) => tuple(&ct),
        None if exempt(p.daddr) => return Ok(TC_ACT_OK),
        // A TCP flow is masqueraded from its SYN, as netfilter NATs only NEW connections:
        // a segment of an untracked connection (a pod answering a client that reached it
        // by direct routing, from outside the cluster) must keep the pod's address.
        None if p.proto == IPPROTO_TCP && p.tcp_flags & (TCP_SYN | TCP_ACK) != TCP_SYN => {
            return Ok(TC_ACT_OK)
        }
        None => new_flow(&key, &cfg)?,
    };
    if p.proto == IPPROTO_ICMP {
        nat::rewrite_l3(ctx, p, &t)?;
        nat::rewrite_icmp_id(ctx, p, sport, t.sport)?;
    } else {
        nat::rewrite(ctx, p, &t)?;
    }
    counters::count_masq(MasqCounter::Egress);
    // The stack has routed the packet already; only its source changed.
    Ok(TC_ACT_OK)
}

/// Claims a port on the uplink's address and records the flow's MASQ and REPLY entries.
#[inline(always)]
fn new_flow(key: &CtKey, cfg: &MasqIface) -> Result<Tuple, DropReason> {
    let now = ct::now();
    let reply = CtValue {
        saddr: key.daddr,
        daddr: key.saddr,
        sport: key.dport,
        dport: key.sport,
        backend_id: 0,
        service_id: 0,
        flags: ct_flags::MASQ | ct_flags::REDIRECT,
        last_seen_ns: now,
    };
    let mut rkey = CtKey {
        saddr: key.daddr,
        daddr: cfg.addr,
        sport: key.dport,
        dport: 0,
        proto: key.proto,
        dir: ct_dir::REPLY,
        _pad: 0,
    };
    let port = claim_port(
        rkey,
        &reply,
        cfg.port_min,
        cfg.port_max,
        u16::from_be(key.sport),
    )
    .ok_or(DropReason::MasqueradePortExhausted)?;
    let fwd = CtValue {
        saddr: cfg.addr,
        daddr: key.daddr,
        sport: port,
        dport: key.dport,
        backend_id: 0,
        service_id: 0,
        flags: ct_flags::MASQ,
        last_seen_ns: now,
    };
    if SKIFF_CT_V1.insert(key, fwd, BPF_ANY as u64).is_err() {
        // Give the claimed port back rather than leave a reply entry without a flow.
        rkey.dport = port;
        let _ = SKIFF_CT_V1.remove(rkey);
        return Err(DropReason::ConntrackInsertFailed);
    }
    counters::count_masq(MasqCounter::NewFlows);
    Ok(tuple(&fwd))
}

/// tc ingress: an ICMP echo reply to a masqueraded echo request goes back to the pod
/// with the pod's echo id; any other echo reply passes untouched.
#[inline(always)]
pub fn echo_reply(ctx: &TcContext, p: &Packet, id: u16) -> Result<i32, DropReason> {
    let key = CtKey {
        saddr: p.saddr,
        daddr: p.daddr,
        sport: 0,
        dport: id,
        proto: IPPROTO_ICMP,
        dir: ct_dir::REPLY,
        _pad: 0,
    };
    let Some(ct) = ct::lookup(&key, 0, true) else {
        return Ok(TC_ACT_OK);
    };
    if ct.flags & ct_flags::MASQ == 0 {
        return Ok(TC_ACT_OK);
    }
    let t = Tuple {
        saddr: ct.saddr,
        daddr: ct.daddr,
        sport: 0,
        dport: 0,
    };
    nat::rewrite_l3(ctx, p, &t)?;
    nat::rewrite_icmp_id(ctx, p, id, ct.dport)?;
    counters::count_masq(MasqCounter::Ingress);
    redirect::fib_redirect(ctx, p, &t)
}
