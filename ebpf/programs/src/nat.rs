//! Rewriting a packet's addresses and ports with incremental checksum updates.

use aya_ebpf::{
    bindings::{BPF_F_MARK_MANGLED_0, BPF_F_PSEUDO_HDR},
    programs::TcContext,
};
use skiff_datapath_abi::{proto, DropReason};

use crate::parse::{Packet, ETH_HLEN};

const IP_CSUM_OFF: usize = ETH_HLEN + 10;
const IP_TTL_OFF: usize = ETH_HLEN + 8;
const IP_SADDR_OFF: usize = ETH_HLEN + 12;
const IP_DADDR_OFF: usize = ETH_HLEN + 16;

/// A flow's addresses and ports, network byte order (raw wire values).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Tuple {
    pub saddr: u32,
    pub daddr: u32,
    pub sport: u16,
    pub dport: u16,
}

fn ok(r: Result<(), i64>) -> Result<(), DropReason> {
    r.map_err(|_| DropReason::RewriteFailed)
}

/// Rewrites `p` (as parsed) to `new`, fixing the IPv4 header checksum and the TCP/UDP
/// checksum (pseudo-header for addresses). A UDP checksum of 0 ("none") stays 0
/// (BPF_F_MARK_MANGLED_0). Invalidates direct packet pointers; the parsed copy stays valid.
#[inline(always)]
pub fn rewrite(ctx: &TcContext, p: &Packet, new: &Tuple) -> Result<(), DropReason> {
    let (l4_csum, mangled) = if p.proto == proto::TCP {
        (p.l4_offset + 16, 0)
    } else {
        (p.l4_offset + 6, BPF_F_MARK_MANGLED_0 as u64)
    };
    let pseudo = BPF_F_PSEUDO_HDR as u64;
    if new.saddr != p.saddr {
        ok(ctx.l4_csum_replace(
            l4_csum,
            p.saddr.into(),
            new.saddr.into(),
            pseudo | mangled | 4,
        ))?;
        ok(ctx.l3_csum_replace(IP_CSUM_OFF, p.saddr.into(), new.saddr.into(), 4))?;
        ok(ctx.store(IP_SADDR_OFF, &new.saddr, 0))?;
    }
    if new.daddr != p.daddr {
        ok(ctx.l4_csum_replace(
            l4_csum,
            p.daddr.into(),
            new.daddr.into(),
            pseudo | mangled | 4,
        ))?;
        ok(ctx.l3_csum_replace(IP_CSUM_OFF, p.daddr.into(), new.daddr.into(), 4))?;
        ok(ctx.store(IP_DADDR_OFF, &new.daddr, 0))?;
    }
    if new.sport != p.sport {
        ok(ctx.l4_csum_replace(l4_csum, p.sport.into(), new.sport.into(), mangled | 2))?;
        ok(ctx.store(p.l4_offset, &new.sport, 0))?;
    }
    if new.dport != p.dport {
        ok(ctx.l4_csum_replace(l4_csum, p.dport.into(), new.dport.into(), mangled | 2))?;
        ok(ctx.store(p.l4_offset + 2, &new.dport, 0))?;
    }
    Ok(())
}

/// Rewrites only the IPv4 addresses (for ICMP, which has no pseudo-header checksum).
#[inline(always)]
pub fn rewrite_l3(ctx: &TcContext, p: &Packet, new: &Tuple) -> Result<(), DropReason> {
    if new.saddr != p.saddr {
        ok(ctx.l3_csum_replace(IP_CSUM_OFF, p.saddr.into(), new.saddr.into(), 4))?;
        ok(ctx.store(IP_SADDR_OFF, &new.saddr, 0))?;
    }
    if new.daddr != p.daddr {
        ok(ctx.l3_csum_replace(IP_CSUM_OFF, p.daddr.into(), new.daddr.into(), 4))?;
        ok(ctx.store(IP_DADDR_OFF, &new.daddr, 0))?;
    }
    Ok(())
}

/// Rewrites an ICMP echo's identifier (offset 4 of the ICMP header) from `old` to `new`
/// (both as on the wire). The ICMP checksum covers no pseudo-header, so only the two
/// bytes' difference goes into it.
#[inline(always)]
pub fn rewrite_icmp_id(ctx: &TcContext, p: &Packet, old: u16, new: u16) -> Result<(), DropReason> {
    if old == new {
        return Ok(());
    }
    ok(ctx.l4_csum_replace(p.l4_offset + 2, old.into(), new.into(), 2))?;
    ok(ctx.store(p.l4_offset + 4, &new, 0))
}

/// Decrements the TTL as a router would (packets redirected from tc bypass the stack's
/// forwarding, which normally does it). Returns false when the TTL is exhausted.
#[inline(always)]
pub fn decrement_ttl(ctx: &TcContext) -> Result<bool, DropReason> {
    let word: u16 = ctx
        .load(IP_TTL_OFF)
        .map_err(|_| DropReason::RewriteFailed)?;
    let bytes = word.to_ne_bytes();
    if bytes[0] <= 1 {
        return Ok(false);
    }
    let new = u16::from_ne_bytes([bytes[0] - 1, bytes[1]]);
    ok(ctx.l3_csum_replace(IP_CSUM_OFF, word.into(), new.into(), 2))?;
    ok(ctx.store(IP_TTL_OFF, &new, 0))?;
    Ok(true)
}
