//! ICMP errors about translated flows (services and masquerade alike) (RFC 5508 §4.2 behaviour for NATs): a "port
//! unreachable", "fragmentation needed" or "time exceeded" quoting a translated packet is
//! itself translated, outer and inner headers alike, so the endpoint that receives it
//! can match it to its socket. Without this, path MTU discovery through a NodePort
//! breaks and a client never learns that a backend's port is closed.
//!
//! The quoted (inner) packet is the one the error is about, so its source and destination
//! are swapped relative to the flow's direction: an error travelling back to the client
//! quotes the client's (translated) packet, whose swap is the flow's REPLY key.

use aya_ebpf::{
    bindings::TC_ACT_OK,
    helpers::{bpf_csum_diff, bpf_skb_load_bytes, bpf_skb_store_bytes},
    programs::TcContext,
    EbpfContext as _,
};
use skiff_datapath_abi::{ct_dir, ct_flags, proto, CtKey, DropReason};

use crate::{ct, nat, parse::Packet, redirect};

const ICMP_ECHO_REPLY: u8 = 0;
const ICMP_DEST_UNREACH: u8 = 3;
const ICMP_TIME_EXCEEDED: u8 = 11;
const ICMP_PARAMETER_PROBLEM: u8 = 12;
/// Inner IPv4 header (options are not handled: such errors pass untranslated) plus the
/// 8 bytes of transport header every ICMP error quotes.
const INNER_LEN: usize = 28;

/// Translates an ICMP error about a tracked flow; anything else passes untouched.
#[inline(always)]
pub fn ingress(ctx: &TcContext, p: &Packet) -> Result<i32, DropReason> {
    let icmp_off = p.l4_offset;
    let mut hdr = [0u8; 8];
    // SAFETY: `hdr` is 8 writable bytes; the helper fails cleanly on a short packet.
    if unsafe {
        bpf_skb_load_bytes(
            ctx.as_ptr().cast(),
            icmp_off as u32,
            hdr.as_mut_ptr().cast(),
            8,
        )
    } != 0
    {
        return Ok(TC_ACT_OK);
    }
    if hdr[0] == ICMP_ECHO_REPLY {
        return crate::masq::echo_reply(ctx, p, u16::from_ne_bytes([hdr[4], hdr[5]]));
    }
    if !matches!(
        hdr[0],
        ICMP_DEST_UNREACH | ICMP_TIME_EXCEEDED | ICMP_PARAMETER_PROBLEM
    ) {
        return Ok(TC_ACT_OK);
    }
    let inner_off = icmp_off + 8;
    let mut old = [0u8; INNER_LEN];
    // SAFETY: as above.
    if unsafe {
        bpf_skb_load_bytes(
            ctx.as_ptr().cast(),
            inner_off as u32,
            old.as_mut_ptr().cast(),
            INNER_LEN as u32,
        )
    } != 0
    {
        return Ok(TC_ACT_OK);
    }
    let inner_proto = old[9];
    if old[0] != 0x45 || (inner_proto != proto::TCP && inner_proto != proto::UDP) {
        return Ok(TC_ACT_OK);
    }
    let in_saddr = u32::from_ne_bytes([old[12], old[13], old[14], old[15]]);
    let in_daddr = u32::from_ne_bytes([old[16], old[17], old[18], old[19]]);
    let in_sport = u16::from_ne_bytes([old[20], old[21]]);
    let in_dport = u16::from_ne_bytes([old[22], old[23]]);
    // The flow the quoted packet belongs to, seen from the error's direction.
    let swapped = |dir| CtKey {
        saddr: in_daddr,
        daddr: in_saddr,
        sport: in_dport,
        dport: in_sport,
        proto: inner_proto,
        dir,
        _pad: 0,
    };
    let (ct, towards_client) = if let Some(v) = ct::lookup(&swapped(ct_dir::REPLY), 0, false) {
        (v, true)
    } else if let Some(v) = ct::lookup(&swapped(ct_dir::FORWARD), 0, false) {
        (v, false)
    } else {
        return Ok(TC_ACT_OK);
    };
    // `ct` rewrites packets going the error's way: (saddr, sport) -> (daddr, dport) ...
    // The quoted packet went the opposite way, so its source takes the rewrite's
    // destination and vice versa.
    let mut new = old;
    new[12..16].copy_from_slice(&ct.daddr.to_ne_bytes());
    new[16..20].copy_from_slice(&ct.saddr.to_ne_bytes());
    new[20..22].copy_from_slice(&ct.dport.to_ne_bytes());
    new[22..24].copy_from_slice(&ct.sport.to_ne_bytes());
    // The inner IPv4 checksum, recomputed over the rewritten header.
    new[10] = 0;
    new[11] = 0;
    let mut sum = 0u32;
    let mut i = 0;
    while i < 10 {
        sum += u32::from(u16::from_be_bytes([new[2 * i], new[2 * i + 1]]));
        i += 1;
    }
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    new[10..12].copy_from_slice(&(!(sum as u16)).to_be_bytes());
    // The quoted transport checksum is left alone: only 8 bytes are quoted, a TCP
    // checksum is not among them, and receivers do not verify it (as Linux's own NAT).

    // ICMP checksum: apply the difference of the quoted bytes.
    // SAFETY: both buffers are INNER_LEN bytes, a multiple of 4.
    let diff = unsafe {
        bpf_csum_diff(
            old.as_mut_ptr().cast(),
            INNER_LEN as u32,
            new.as_mut_ptr().cast(),
            INNER_LEN as u32,
            0,
        )
    };
    ctx.l4_csum_replace(icmp_off + 2, 0, diff as u64, 0)
        .map_err(|_| DropReason::RewriteFailed)?;
    // SAFETY: storing INNER_LEN bytes inside the packet where they were loaded from.
    if unsafe {
        bpf_skb_store_bytes(
            ctx.as_ptr().cast(),
            inner_off as u32,
            new.as_ptr().cast(),
            INNER_LEN as u32,
            0,
        )
    } != 0
    {
        return Err(DropReason::RewriteFailed);
    }

    // Outer header: the error goes to whoever the flow's packets go to in its direction;
    // if the backend itself sent it, it appears to come from the frontend.
    let backend_sent_it = p.saddr == in_daddr;
    let outer = nat::Tuple {
        saddr: if backend_sent_it { ct.saddr } else { p.saddr },
        daddr: ct.daddr,
        sport: 0,
        dport: 0,
    };
    nat::rewrite_l3(ctx, p, &outer)?;
    if ct.flags & ct_flags::MASQ != 0 {
        crate::counters::count_masq(skiff_datapath_abi::MasqCounter::IcmpErrors);
    }
    if towards_client || ct.flags & ct_flags::REDIRECT != 0 {
        redirect::fib_redirect(ctx, p, &outer)
    } else {
        Ok(TC_ACT_OK)
    }
}
