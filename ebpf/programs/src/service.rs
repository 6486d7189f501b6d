//! Per-packet service translation on tc: new flows to a frontend are load-balanced and
//! tracked; later packets of the flow and its replies follow their conntrack entries.
//!
//! Flow to a backend on this node: DNAT only, the client's address is kept, the stack
//! delivers. Flow to a backend on another node, or a hairpin (a pod reaching itself
//! through its service): DNAT + SNAT to the node's address with a fresh source port, so
//! the reply comes back through this node; such packets are routed from the hook.

use aya_ebpf::{
    bindings::{BPF_ANY, BPF_NOEXIST, TC_ACT_OK},
    helpers::bpf_get_prandom_u32,
    programs::TcContext,
};
use skiff_datapath_abi::{
    affinity_kind, backend_flags, ct_dir, ct_flags, maglev, service_flags, Backend, CtKey, CtValue,
    DropReason, FlowCounter, MasqCounter, PacketClass, ServiceKey,
};

use crate::{
    counters, ct,
    lb::{self, Choice},
    maps::{SKIFF_BE_V1, SKIFF_CFG_V1, SKIFF_CT_V1},
    nat::{self, Tuple},
    parse::{Packet, IPPROTO_TCP},
    redirect, reject,
};

const SNAT_PORT_MIN: u16 = 32768;
const SNAT_PORT_MAX: u16 = 60999;
/// Probes for a free SNAT (or masquerade) port before giving up on a new flow.
const SNAT_TRIES: u32 = 8;

fn translatable(p: &Packet) -> bool {
    p.class == PacketClass::Ipv4Tcp || p.class == PacketClass::Ipv4Udp
}

pub fn tuple(v: &CtValue) -> Tuple {
    Tuple {
        saddr: v.saddr,
        daddr: v.daddr,
        sport: v.sport,
        dport: v.dport,
    }
}

/// tc ingress: replies of translated flows, then known flows, then new flows.
#[inline(always)]
pub fn ingress(ctx: &TcContext, p: &Packet) -> Result<i32, DropReason> {
    if p.class == PacketClass::Ipv4Icmp {
        return crate::icmp::ingress(ctx, p);
    }
    if !translatable(p) {
        return Ok(TC_ACT_OK);
    }
    if let Some(ct) = ct::lookup(&ct::key(p, ct_dir::REPLY), p.tcp_flags, true) {
        let t = tuple(&ct);
        nat::rewrite(ctx, p, &t)?;
        if ct.flags & ct_flags::MASQ != 0 {
            counters::count_masq(MasqCounter::Ingress);
        }
        // The new source is the frontend, a local address for NodePort: route from here.
        // (A masqueraded reply's new destination is a pod; routing it from here too
        // saves the stack's second lookup.)
        return redirect::fib_redirect(ctx, p, &t);
    }
    if let Some(ct) =
        ct::lookup(&ct::key(p, ct_dir::FORWARD), p.tcp_flags, false).filter(|ct| !reopens(p, ct))
    {
        counters::count_lb(ct.service_id, ct.backend_id, false, ctx.len());
        let t = tuple(&ct);
        nat::rewrite(ctx, p, &t)?;
        return if ct.flags & ct_flags::REDIRECT != 0 {
            redirect::fib_redirect(ctx, p, &t)
        } else {
            Ok(TC_ACT_OK)
        };
    }
    new_flow(ctx, p)
}

/// tc egress: reverse translation of replies that reached the wire side without passing
/// a skiff ingress hook (a backend behind an interface skiff does not manage), then
/// masquerade of pod traffic leaving through an uplink.
#[inline(always)]
pub fn egress(ctx: &TcContext, p: &Packet) -> Result<i32, DropReason> {
    if translatable(p) {
        if let Some(ct) = ct::lookup(&ct::key(p, ct_dir::REPLY), p.tcp_flags, true) {
            nat::rewrite(ctx, p, &tuple(&ct))?;
            return Ok(TC_ACT_OK);
        }
    }
    crate::masq::egress(ctx, p)
}

/// Whether a packet that matches a tracked flow's FORWARD entry starts a new connection
/// instead and must be load-balanced afresh: a TCP SYN (without ACK) when the tracked
/// flow is closing (FIN or RST seen: the client reused its port, which netfilter's
/// conntrack also treats as NEW in TIME_WAIT/CLOSE), or when the flow's backend no longer
/// takes new flows (terminating, or gone from the backend map), as Cilium's `lb4_local`
/// re-selects for a SYN on a stale entry. Without this, a reused 5-tuple lands on a pod
/// that is shutting down and the connection dies with it. A retransmitted SYN of a live
/// flow to an active backend keeps its entry (and its backend). The FORWARD entry is
/// overwritten by the new flow's; the old REPLY entry ages out.
#[inline(always)]
pub fn reopens(p: &Packet, ct: &CtValue) -> bool {
    const TCP_SYN: u8 = 0x02;
    const TCP_ACK: u8 = 0x10;
    if p.proto != IPPROTO_TCP || p.tcp_flags & (TCP_SYN | TCP_ACK) != TCP_SYN {
        return false;
    }
    // SAFETY: value copied out under the lookup's RCU protection.
    let reopen = ct.flags & ct_flags::CLOSING != 0
        || match unsafe { SKIFF_BE_V1.get(ct.backend_id).copied() } {
            Some(b) => b.flags & backend_flags::TERMINATING != 0,
            None => true,
        };
    if reopen {
        // Every caller balances the packet afresh when this says so.
        counters::count_flow(FlowCounter::Reopened);
    }
    reopen
}

/// What to do with the first packet of a flow to a possible frontend.
pub enum Plan {
    /// Not a frontend (for this interface's scope): leave it.
    NotAService,
    /// A frontend without usable backends: refuse (RST / ICMP unreachable).
    Refuse,
    /// Tracked and to be rewritten as `fwd` says; `snat` flows are routed from the hook.
    Translate { fwd: CtValue, snat: bool },
}

/// Looks up the frontend, applies source ranges, chooses a backend (affinity, Maglev or
/// random) and records the flow's two conntrack entries. Shared by tc and XDP so both
/// paths make the same decisions; the caller only applies them.
#[inline(always)]
pub fn plan_new_flow(p: &Packet, external: bool) -> Result<Plan, DropReason> {
    let key = ServiceKey {
        addr: p.daddr,
        port: p.dport,
        proto: p.proto,
        scope: 0,
    };
    let svc = if external {
        lb::lookup_external(&key)
    } else {
        lb::lookup(&key)
    };
    let Some(svc) = svc else {
        return Ok(Plan::NotAService);
    };
    if svc.flags & service_flags::SOURCE_RANGES != 0 && !lb::source_allowed(svc.service_id, p.saddr)
    {
        return Err(DropReason::SourceRangeDenied);
    }
    // With session affinity the source port must not matter (Cilium GH#26709), so the
    // Maglev hash leaves it out then.
    let sport = if svc.flags & service_flags::AFFINITY != 0 {
        0
    } else {
        p.sport
    };
    let hash = maglev::flow_hash(p.saddr, p.daddr, sport, p.dport, p.proto);
    let choice = lb::choose_sticky(
        &svc,
        u64::from(p.saddr),
        affinity_kind::CLIENT_IP,
        Some(hash),
    );
    let (service_id, backend_id, backend) = match choice {
        Choice::NoBackend { flags } if flags & service_flags::LOCAL_DROP != 0 => {
            return Err(DropReason::NoLocalBackend)
        }
        Choice::NoBackend { .. } => return Ok(Plan::Refuse),
        Choice::Inconsistent => return Err(DropReason::InconsistentMaps),
        Choice::Backend {
            service_id,
            backend_id,
            backend,
        } => (service_id, backend_id, backend),
    };
    if p.proto == IPPROTO_TCP && p.tcp_flags & 0x02 == 0 {
        // Not the start of a connection: its tracked state is gone. See
        // `FlowCounter::Midstream`.
        counters::count_flow(FlowCounter::Midstream);
    }
    let hairpin = backend.addr == p.saddr;
    let snat = hairpin || backend.flags & backend_flags::LOCAL == 0;
    let flags = if snat {
        ct_flags::SNAT | ct_flags::REDIRECT
    } else {
        0
    };
    let now = ct::now();
    let reply = CtValue {
        saddr: p.daddr,
        daddr: p.saddr,
        sport: p.dport,
        dport: p.sport,
        backend_id,
        service_id,
        flags: flags | ct_flags::REDIRECT,
        last_seen_ns: now,
    };
    let (src_addr, src_port) = if snat {
        snat_source(p, &backend, &reply)?
    } else {
        let rkey = reply_key(p, &backend, p.saddr, p.sport);
        SKIFF_CT_V1
            .insert(rkey, reply, BPF_ANY as u64)
            .map_err(|_| DropReason::ConntrackInsertFailed)?;
        (p.saddr, p.sport)
    };
    let fwd = CtValue {
        saddr: src_addr,
        daddr: backend.addr,
        sport: src_port,
        dport: backend.port,
        backend_id,
        service_id,
        flags,
        last_seen_ns: now,
    };
    SKIFF_CT_V1
        .insert(ct::key(p, ct_dir::FORWARD), fwd, BPF_ANY as u64)
        .map_err(|_| DropReason::ConntrackInsertFailed)?;
    counters::count_lb(service_id, backend_id, true, 0);
    Ok(Plan::Translate { fwd, snat })
}

fn new_flow(ctx: &TcContext, p: &Packet) -> Result<i32, DropReason> {
    // SAFETY: reading the ifindex the kernel filled in the context.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    match plan_new_flow(p, lb::is_external(ifindex))? {
        Plan::NotAService => Ok(TC_ACT_OK),
        Plan::Refuse => reject::refuse(ctx, p),
        Plan::Translate { fwd, snat } => {
            counters::count_lb(fwd.service_id, fwd.backend_id, false, ctx.len());
            let t = tuple(&fwd);
            nat::rewrite(ctx, p, &t)?;
            if snat {
                redirect::fib_redirect(ctx, p, &t)
            } else {
                Ok(TC_ACT_OK)
            }
        }
    }
}

fn reply_key(p: &Packet, backend: &Backend, daddr: u32, dport: u16) -> CtKey {
    CtKey {
        saddr: backend.addr,
        daddr,
        sport: backend.port,
        dport,
        proto: p.proto,
        dir: ct_dir::REPLY,
        _pad: 0,
    }
}

/// Picks a source port on the node's SNAT address whose reply key is free (the client's
/// own port first, then random ones) and claims it by inserting the reply entry with
/// BPF_NOEXIST, so two flows can never share a reply key.
fn snat_source(p: &Packet, backend: &Backend, reply: &CtValue) -> Result<(u32, u16), DropReason> {
    let cfg = SKIFF_CFG_V1.get(0).copied().unwrap_or_default();
    if cfg.snat_addr == 0 {
        return Err(DropReason::SnatNotConfigured);
    }
    let min = if cfg.snat_port_min == 0 {
        SNAT_PORT_MIN
    } else {
        cfg.snat_port_min
    };
    let max = if cfg.snat_port_max == 0 {
        SNAT_PORT_MAX
    } else {
        cfg.snat_port_max
    };
    let rkey = reply_key(p, backend, cfg.snat_addr, 0);
    match claim_port(rkey, reply, min, max, u16::from_be(p.sport)) {
        Some(port) => Ok((cfg.snat_addr, port)),
        None => Err(DropReason::SnatPortExhausted),
    }
}

/// Claims a port in `min..=max` (host byte order, `min <= max`) for a flow whose reply
/// key is `rkey` with the port as its destination port: inserts `reply` under that key
/// with BPF_NOEXIST, so two flows (service SNAT and masquerade alike, they share the
/// REPLY key space) can never share a reply key. `own` (the client's port) is tried
/// first when it is in range, then a random port and the ones after it (wrapping), as
/// Linux's nf_nat does: unlike independent random probes, a nearly full range is still
/// found within the tries. Returns the port in network byte order.
///
/// Verifier: the loop is bounded by the constant SNAT_TRIES (8 map inserts per new
/// flow at most), which keeps the egress program far from the 1M-instruction limit.
#[inline(always)]
pub fn claim_port(mut rkey: CtKey, reply: &CtValue, min: u16, max: u16, own: u16) -> Option<u16> {
    let span = u32::from(max.saturating_sub(min)) + 1;
    let (mut port, mut i) = if own >= min && own <= max {
        (own, 0)
    } else {
        // SAFETY: helper without preconditions.
        let r = unsafe { bpf_get_prandom_u32() };
        (min + (r % span) as u16, 1)
    };
    while i < SNAT_TRIES {
        rkey.dport = port.to_be();
        if SKIFF_CT_V1.insert(rkey, *reply, BPF_NOEXIST as u64).is_ok() {
            return Some(port.to_be());
        }
        port = if i == 0 {
            // The client's own port was taken: continue from a random one.
            // SAFETY: helper without preconditions.
            min + (unsafe { bpf_get_prandom_u32() } % span) as u16
        } else if port >= max {
            min
        } else {
            port + 1
        };
        i += 1;
    }
    None
}
