//! Refusing a flow to a service with no usable backend, the way a host without a listener
//! would: a TCP RST for TCP, an ICMP port unreachable for UDP. The reply is built in place
//! (the skb is resized with bpf_skb_change_tail and rewritten whole) and sent back out of
//! the interface the packet came in on. Black-holing instead would leave clients waiting
//! for a timeout (kube-proxy's REJECT rule and Cilium's `service-no-backend-response`).

use aya_ebpf::{
    bindings::TC_ACT_REDIRECT,
    helpers::{
        bpf_csum_diff, bpf_redirect, bpf_skb_change_tail, bpf_skb_load_bytes, bpf_skb_store_bytes,
    },
    programs::TcContext,
    EbpfContext as _,
};
use skiff_datapath_abi::{proto, DropReason};

use crate::parse::{Packet, ETH_HLEN};

const TCP_RST_LEN: usize = ETH_HLEN + 20 + 20;
/// Largest ICMP error we build: Ethernet + IPv4 + ICMP + a quoted IPv4 header with maximal
/// options + 8 bytes of the original datagram (RFC 792).
const ICMP_MAX_LEN: usize = ETH_HLEN + 20 + 8 + 60 + 8;

/// One's complement sum of 16-bit words, folded and complemented.
#[inline(always)]
fn fold(mut sum: u32) -> u16 {
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    !(sum as u16)
}

#[inline(always)]
fn sum_words(bytes: &[u8], start: usize, words: usize, mut sum: u32) -> u32 {
    let mut i = 0;
    while i < words {
        sum += u32::from(u16::from_be_bytes([
            bytes[start + 2 * i],
            bytes[start + 2 * i + 1],
        ]));
        i += 1;
    }
    sum
}

/// Writes an IPv4 header (no options, DF, TTL 64) at `buf[14..34]` with its checksum.
#[inline(always)]
fn ipv4_header(buf: &mut [u8], total_len: u16, protocol: u8, saddr: u32, daddr: u32) {
    let h = &mut buf[ETH_HLEN..ETH_HLEN + 20];
    h[0] = 0x45;
    h[1] = 0;
    h[2..4].copy_from_slice(&total_len.to_be_bytes());
    h[4..6].copy_from_slice(&[0, 0]);
    h[6..8].copy_from_slice(&0x4000u16.to_be_bytes());
    h[8] = 64;
    h[9] = protocol;
    h[10..12].copy_from_slice(&[0, 0]);
    h[12..16].copy_from_slice(&saddr.to_ne_bytes());
    h[16..20].copy_from_slice(&daddr.to_ne_bytes());
    let csum = fold(sum_words(buf, ETH_HLEN, 10, 0));
    buf[ETH_HLEN + 10..ETH_HLEN + 12].copy_from_slice(&csum.to_be_bytes());
}

/// Copies exactly N bytes at `offset` (aya's `load_bytes` clamps the length to the skb,
/// which the verifier sees as a possibly zero-sized read and rejects).
#[inline(always)]
fn load_exact<const N: usize>(
    ctx: &TcContext,
    offset: usize,
    dst: &mut [u8; N],
) -> Result<(), DropReason> {
    // SAFETY: dst is N writable bytes; the helper fails cleanly if the skb is shorter.
    let rc = unsafe {
        bpf_skb_load_bytes(
            ctx.skb.skb.cast(),
            offset as u32,
            dst.as_mut_ptr().cast(),
            N as u32,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(DropReason::RewriteFailed)
    }
}

/// Swaps the Ethernet addresses of the original frame into `buf[0..14]`.
#[inline(always)]
fn ethernet_reply(ctx: &TcContext, buf: &mut [u8]) -> Result<(), DropReason> {
    let mut macs = [0u8; 12];
    load_exact(ctx, 0, &mut macs)?;
    buf[0..6].copy_from_slice(&macs[6..12]);
    buf[6..12].copy_from_slice(&macs[0..6]);
    buf[12] = 0x08;
    buf[13] = 0x00;
    Ok(())
}

#[inline(always)]
fn send_back(ctx: &TcContext) -> i32 {
    // SAFETY: redirect to the egress of the interface the packet arrived on.
    unsafe { bpf_redirect((*ctx.skb.skb).ifindex, 0) };
    TC_ACT_REDIRECT
}

/// Answers `p` with a TCP RST (RFC 9293 §3.10.7.1: seq from the segment's ACK if it had
/// one, else seq 0 and ACK = seq + segment length).
#[inline(always)]
fn tcp_rst(ctx: &TcContext, p: &Packet) -> Result<i32, DropReason> {
    if p.tcp_flags & 0x04 != 0 {
        // Never answer a RST with a RST.
        return Err(DropReason::NoBackend);
    }
    let mut hdr = [0u8; 13];
    load_exact(ctx, p.l4_offset, &mut hdr)?;
    let seq = u32::from_be_bytes([hdr[4], hdr[5], hdr[6], hdr[7]]);
    let ack = u32::from_be_bytes([hdr[8], hdr[9], hdr[10], hdr[11]]);
    let doff = ((hdr[12] >> 4) as usize) * 4;
    let payload = p.ip_end.saturating_sub(p.l4_offset + doff) as u32;
    let syn_fin = u32::from(p.tcp_flags & 0x02 != 0) + u32::from(p.tcp_flags & 0x01 != 0);
    let (rst_seq, rst_ack, flags) = if p.tcp_flags & 0x10 != 0 {
        (ack, 0u32, 0x04u8)
    } else {
        (0u32, seq.wrapping_add(payload + syn_fin), 0x14u8)
    };

    let mut buf = [0u8; TCP_RST_LEN];
    ethernet_reply(ctx, &mut buf)?;
    ipv4_header(&mut buf, 40, proto::TCP, p.daddr, p.saddr);
    let t = ETH_HLEN + 20;
    buf[t..t + 2].copy_from_slice(&p.dport.to_ne_bytes());
    buf[t + 2..t + 4].copy_from_slice(&p.sport.to_ne_bytes());
    buf[t + 4..t + 8].copy_from_slice(&rst_seq.to_be_bytes());
    buf[t + 8..t + 12].copy_from_slice(&rst_ack.to_be_bytes());
    buf[t + 12] = 5 << 4;
    buf[t + 13] = flags;
    // Pseudo-header: source, destination, protocol, TCP length.
    let mut sum = sum_words(&buf, ETH_HLEN + 12, 4, 0);
    sum += u32::from(proto::TCP) + 20;
    sum = sum_words(&buf, t, 10, sum);
    let csum = fold(sum);
    buf[t + 16..t + 18].copy_from_slice(&csum.to_be_bytes());

    // SAFETY: resizing the skb this program owns.
    if unsafe { bpf_skb_change_tail(ctx.skb.skb, TCP_RST_LEN as u32, 0) } != 0 {
        return Err(DropReason::RewriteFailed);
    }
    ctx.store(0, &buf, 0)
        .map_err(|_| DropReason::RewriteFailed)?;
    Ok(send_back(ctx))
}

/// Answers `p` with ICMP destination unreachable, port unreachable (type 3, code 3),
/// quoting the original IPv4 header and the first 8 bytes of its payload (RFC 792).
#[inline(always)]
fn icmp_port_unreachable(ctx: &TcContext, p: &Packet) -> Result<i32, DropReason> {
    let ihl = p.l4_offset - ETH_HLEN;
    // Masks give the verifier the bounds it needs for the variable-length copies.
    let quoted = (ihl + 8) & 0x7f;
    if !(28..=68).contains(&quoted) {
        return Err(DropReason::BadIpv4HeaderLength);
    }
    let mut buf = [0u8; ICMP_MAX_LEN];
    let icmp = ETH_HLEN + 20;
    // SAFETY: the destination range buf[icmp + 8 .. icmp + 8 + quoted] is inside buf
    // (quoted <= 68), and the source range lies inside the parsed packet.
    if unsafe {
        bpf_skb_load_bytes(
            ctx.skb.skb.cast(),
            ETH_HLEN as u32,
            buf.as_mut_ptr().add(icmp + 8).cast(),
            quoted as u32,
        )
    } != 0
    {
        return Err(DropReason::RewriteFailed);
    }
    ethernet_reply(ctx, &mut buf)?;
    let total = (20 + 8 + quoted) as u16;
    ipv4_header(&mut buf, total, 1, p.daddr, p.saddr);
    buf[icmp] = 3; // destination unreachable
    buf[icmp + 1] = 3; // port unreachable
                       // SAFETY: the range buf[icmp .. icmp + 8 + quoted] is inside buf and a multiple of 4.
    let sum = unsafe {
        bpf_csum_diff(
            core::ptr::null_mut(),
            0,
            buf.as_mut_ptr().add(icmp).cast(),
            (8 + quoted) as u32,
            0,
        )
    };
    // csum_partial (behind bpf_csum_diff) sums native-endian words: its folded result is
    // already in wire order when stored natively.
    let csum = fold(sum as u32);
    buf[icmp + 2..icmp + 4].copy_from_slice(&csum.to_ne_bytes());

    let len = (icmp + 8 + quoted) as u32;
    // SAFETY: resizing and rewriting the skb this program owns; len <= ICMP_MAX_LEN.
    unsafe {
        if bpf_skb_change_tail(ctx.skb.skb, len, 0) != 0 {
            return Err(DropReason::RewriteFailed);
        }
        if bpf_skb_store_bytes(ctx.as_ptr().cast(), 0, buf.as_ptr().cast(), len, 0) != 0 {
            return Err(DropReason::RewriteFailed);
        }
    }
    Ok(send_back(ctx))
}

/// Refuses `p`, a new TCP or UDP flow to a frontend without usable backends.
#[inline(always)]
pub fn refuse(ctx: &TcContext, p: &Packet) -> Result<i32, DropReason> {
    if p.proto == proto::TCP {
        tcp_rst(ctx, p)
    } else {
        icmp_port_unreachable(ctx, p)
    }
}
