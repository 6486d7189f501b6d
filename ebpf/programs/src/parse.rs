//! Safe header parsing with direct packet access.
//!
//! Every read is preceded by a bounds check against `data_end`, which is what the
//! verifier demands before it lets a program dereference packet memory. Variable offsets
//! (the IPv4 IHL) are masked to their 4-bit field first so the verifier can bound them.

use aya_ebpf::programs::{TcContext, XdpContext};
use skiff_datapath_abi::{DropReason, PacketClass};

pub const ETH_HLEN: usize = 14;
const ETH_P_IPV4: u16 = 0x0800;
const IPV4_MIN_HLEN: usize = 20;
const TCP_MIN_HLEN: usize = 20;
const UDP_HLEN: usize = 8;
pub const IPPROTO_ICMP: u8 = 1;
pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;
/// Fragment offset bits of the IPv4 flags/fragment field.
const IPV4_FRAG_OFFSET_MASK: u16 = 0x1fff;
/// Enough linear data for Ethernet + the largest IPv4 header (60) + the largest TCP
/// header (60). Pulled only when the linear area is shorter than both this and the packet.
const PULL_LEN: u32 = (ETH_HLEN + 60 + 60) as u32;

/// What the parser learned about a packet. Addresses and ports are network byte order
/// exactly as on the wire (stored as the raw `u32`/`u16` read from the packet).
#[derive(Clone, Copy)]
pub struct Packet {
    pub class: PacketClass,
    pub l4_offset: usize,
    pub proto: u8,
    pub saddr: u32,
    pub daddr: u32,
    pub sport: u16,
    pub dport: u16,
    /// TCP flags byte (FIN 0x01, SYN 0x02, RST 0x04, ACK 0x10); 0 for other protocols.
    pub tcp_flags: u8,
    /// Offset of the end of the IPv4 packet (Ethernet header included).
    pub ip_end: usize,
}

/// What the parser needs from a hook's context: the packet's linear bytes, its full
/// length, and (tc only) a way to make headers linear.
pub trait PacketCtx {
    fn data(&self) -> usize;
    fn data_end(&self) -> usize;
    fn len(&self) -> u32;
    fn pull(&self, len: u32);
}

impl PacketCtx for TcContext {
    #[inline(always)]
    fn data(&self) -> usize {
        TcContext::data(self)
    }
    #[inline(always)]
    fn data_end(&self) -> usize {
        TcContext::data_end(self)
    }
    #[inline(always)]
    fn len(&self) -> u32 {
        TcContext::len(self)
    }
    #[inline(always)]
    fn pull(&self, len: u32) {
        // On failure the bounds checks report the packet as truncated.
        let _ = self.pull_data(len);
    }
}

impl PacketCtx for XdpContext {
    #[inline(always)]
    fn data(&self) -> usize {
        XdpContext::data(self)
    }
    #[inline(always)]
    fn data_end(&self) -> usize {
        XdpContext::data_end(self)
    }
    #[inline(always)]
    fn len(&self) -> u32 {
        (XdpContext::data_end(self) - XdpContext::data(self)) as u32
    }
    #[inline(always)]
    fn pull(&self, _len: u32) {
        // XDP frames are linear (multi-buffer frames are not attached in skiff's mode).
    }
}

/// Returns a pointer to `N` bytes at `offset`, or `None` if they are not in the linear data.
#[inline(always)]
fn bytes_at<const N: usize, C: PacketCtx>(ctx: &C, offset: usize) -> Option<*const [u8; N]> {
    let start = ctx.data();
    let end = ctx.data_end();
    if start + offset + N > end {
        return None;
    }
    Some((start + offset) as *const [u8; N])
}

#[inline(always)]
fn read<const N: usize, C: PacketCtx>(ctx: &C, offset: usize) -> Option<[u8; N]> {
    // SAFETY: `bytes_at` checked that the N bytes lie inside [data, data_end).
    bytes_at::<N, C>(ctx, offset).map(|p| unsafe { *p })
}

/// Parses Ethernet, IPv4 and the TCP/UDP header. Malformed IPv4 is an `Err` with the
/// reason; anything that is not IPv4 is `Ok` with class `NonIpv4`.
#[inline(always)]
pub fn parse<C: PacketCtx>(ctx: &C) -> Result<Packet, DropReason> {
    let skb_len = ctx.len();
    let linear = (ctx.data_end() - ctx.data()) as u32;
    if linear < PULL_LEN && linear < skb_len {
        // Headers may sit in paged fragments (GRO, some drivers). Make them linear; on
        // failure the bounds checks below report the packet as truncated.
        ctx.pull(if skb_len < PULL_LEN {
            skb_len
        } else {
            PULL_LEN
        });
    }

    let Some(eth) = read::<{ ETH_HLEN }, C>(ctx, 0) else {
        return Err(DropReason::ShortEthernet);
    };
    let mut packet = Packet {
        class: PacketClass::NonIpv4,
        l4_offset: 0,
        proto: 0,
        saddr: 0,
        daddr: 0,
        sport: 0,
        dport: 0,
        tcp_flags: 0,
        ip_end: 0,
    };
    if u16::from_be_bytes([eth[12], eth[13]]) != ETH_P_IPV4 {
        return Ok(packet);
    }

    let Some(ip) = read::<IPV4_MIN_HLEN, C>(ctx, ETH_HLEN) else {
        return Err(DropReason::ShortIpv4Header);
    };
    if ip[0] >> 4 != 4 {
        return Err(DropReason::BadIpv4Version);
    }
    let ihl = ((ip[0] & 0x0f) as usize) * 4;
    if ihl < IPV4_MIN_HLEN || ETH_HLEN + ihl > skb_len as usize {
        return Err(DropReason::BadIpv4HeaderLength);
    }
    let total_len = u16::from_be_bytes([ip[2], ip[3]]) as usize;
    // BIG TCP (Linux 6.3+) aggregates IPv4 packets beyond 64 KiB and then writes a total
    // length of 0; trust skb->len for those.
    let ip_end = if total_len == 0 && skb_len as usize > ETH_HLEN + 0xffff {
        skb_len as usize
    } else {
        if total_len < ihl || ETH_HLEN + total_len > skb_len as usize {
            return Err(DropReason::BadIpv4TotalLength);
        }
        ETH_HLEN + total_len
    };
    packet.ip_end = ip_end;
    packet.proto = ip[9];
    packet.saddr = u32::from_ne_bytes([ip[12], ip[13], ip[14], ip[15]]);
    packet.daddr = u32::from_ne_bytes([ip[16], ip[17], ip[18], ip[19]]);

    if u16::from_be_bytes([ip[6], ip[7]]) & IPV4_FRAG_OFFSET_MASK != 0 {
        // A non-first fragment has no L4 header; reassembly is the stack's business.
        packet.class = PacketClass::Ipv4Fragment;
        return Ok(packet);
    }

    let l4 = ETH_HLEN + ihl;
    packet.l4_offset = l4;
    match packet.proto {
        IPPROTO_TCP => {
            if l4 + TCP_MIN_HLEN > ip_end {
                return Err(DropReason::ShortTcpHeader);
            }
            let Some(tcp) = read::<TCP_MIN_HLEN, C>(ctx, l4) else {
                return Err(DropReason::ShortTcpHeader);
            };
            let doff = ((tcp[12] >> 4) as usize) * 4;
            if doff < TCP_MIN_HLEN || l4 + doff > ip_end {
                return Err(DropReason::BadTcpDataOffset);
            }
            packet.sport = u16::from_ne_bytes([tcp[0], tcp[1]]);
            packet.dport = u16::from_ne_bytes([tcp[2], tcp[3]]);
            packet.tcp_flags = tcp[13];
            packet.class = PacketClass::Ipv4Tcp;
        }
        IPPROTO_UDP => {
            if l4 + UDP_HLEN > ip_end {
                return Err(DropReason::ShortUdpHeader);
            }
            let Some(udp) = read::<UDP_HLEN, C>(ctx, l4) else {
                return Err(DropReason::ShortUdpHeader);
            };
            let udp_len = u16::from_be_bytes([udp[4], udp[5]]) as usize;
            // A GSO UDP packet (UDP_SEGMENT) may carry a length covering one segment only;
            // the stack validates those itself, so only reject impossible lengths.
            if udp_len < UDP_HLEN || l4 + udp_len > ip_end {
                return Err(DropReason::BadUdpLength);
            }
            packet.sport = u16::from_ne_bytes([udp[0], udp[1]]);
            packet.dport = u16::from_ne_bytes([udp[2], udp[3]]);
            packet.class = PacketClass::Ipv4Udp;
        }
        IPPROTO_ICMP => packet.class = PacketClass::Ipv4Icmp,
        _ => packet.class = PacketClass::Ipv4Other,
    }
    Ok(packet)
}
