//! Test packets: a fluent builder for Ethernet/IPv4/TCP/UDP/ICMP with correct checksums
//! (built on etherparse), helpers to corrupt them on purpose, and a parser plus an
//! independent checksum check for the packets a program hands back.

use std::net::{Ipv4Addr, SocketAddrV4};

use etherparse::{
    EtherType, IpHeaders, IpNumber, Ipv4Extensions, Ipv4Header, Ipv4Options, NetHeaders,
    PacketBuilder, PacketHeaders, TransportHeader,
};

pub const CLIENT_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
pub const NODE_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];
pub const ETH_HLEN: usize = 14;

/// TCP flags for [`Packet::tcp`].
#[derive(Clone, Copy, Debug, Default)]
pub struct TcpFlags {
    pub syn: bool,
    pub ack: bool,
    pub fin: bool,
    pub rst: bool,
    pub psh: bool,
}

impl TcpFlags {
    pub const SYN: TcpFlags = TcpFlags {
        syn: true,
        ack: false,
        fin: false,
        rst: false,
        psh: false,
    };
    pub const ACK: TcpFlags = TcpFlags {
        syn: false,
        ack: true,
        fin: false,
        rst: false,
        psh: false,
    };
    pub const SYN_ACK: TcpFlags = TcpFlags {
        syn: true,
        ack: true,
        fin: false,
        rst: false,
        psh: false,
    };
}

#[derive(Clone, Debug)]
enum L4 {
    Tcp {
        sport: u16,
        dport: u16,
        flags: TcpFlags,
        seq: u32,
        ack: u32,
        options_len: usize,
    },
    Udp {
        sport: u16,
        dport: u16,
    },
    IcmpEcho {
        id: u16,
        seq: u16,
    },
    /// Raw IP payload under the given protocol number.
    Raw {
        proto: u8,
    },
}

/// A packet under construction. Every `build()` yields a frame with valid IPv4, TCP, UDP
/// and ICMP checksums; use the corruption helpers afterwards for malformed inputs.
#[derive(Clone, Debug)]
pub struct Packet {
    src_mac: [u8; 6],
    dst_mac: [u8; 6],
    src: Ipv4Addr,
    dst: Ipv4Addr,
    ttl: u8,
    ip_options: Vec<u8>,
    l4: L4,
    payload: Vec<u8>,
}

impl Packet {
    fn new(src: Ipv4Addr, dst: Ipv4Addr, l4: L4) -> Packet {
        Packet {
            src_mac: CLIENT_MAC,
            dst_mac: NODE_MAC,
            src,
            dst,
            ttl: 64,
            ip_options: Vec::new(),
            l4,
            payload: Vec::new(),
        }
    }

    /// A TCP segment from `src` to `dst` with `flags`.
    pub fn tcp(src: SocketAddrV4, dst: SocketAddrV4, flags: TcpFlags) -> Packet {
        Packet::new(
            *src.ip(),
            *dst.ip(),
            L4::Tcp {
                sport: src.port(),
                dport: dst.port(),
                flags,
                seq: 1000,
                ack: 0,
                options_len: 0,
            },
        )
    }

    /// A UDP datagram from `src` to `dst`.
    pub fn udp(src: SocketAddrV4, dst: SocketAddrV4) -> Packet {
        Packet::new(
            *src.ip(),
            *dst.ip(),
            L4::Udp {
                sport: src.port(),
                dport: dst.port(),
            },
        )
    }

    /// An ICMP echo request.
    pub fn icmp_echo(src: Ipv4Addr, dst: Ipv4Addr, id: u16, seq: u16) -> Packet {
        Packet::new(src, dst, L4::IcmpEcho { id, seq })
    }

    /// An IPv4 packet with protocol number `proto` and a raw payload.
    pub fn ip_raw(src: Ipv4Addr, dst: Ipv4Addr, proto: u8) -> Packet {
        Packet::new(src, dst, L4::Raw { proto })
    }

    /// Sets the L4 payload.
    pub fn payload(mut self, payload: &[u8]) -> Packet {
        self.payload = payload.to_vec();
        self
    }

    /// Adds IPv4 options (padded with End-of-Options to a multiple of 4 bytes, ≤ 40).
    pub fn ipv4_options(mut self, options: &[u8]) -> Packet {
        let mut o = options.to_vec();
        while !o.len().is_multiple_of(4) {
            o.push(0);
        }
        assert!(o.len() <= 40, "IPv4 options are at most 40 bytes");
        self.ip_options = o;
        self
    }

    /// Adds `len` bytes of TCP NOP options (multiple of 4, ≤ 40), raising the data offset.
    pub fn tcp_options_len(mut self, len: usize) -> Packet {
        assert!(
            len.is_multiple_of(4) && len <= 40,
            "TCP options length must be a multiple of 4, <= 40"
        );
        if let L4::Tcp { options_len, .. } = &mut self.l4 {
            *options_len = len;
        } else {
            panic!("tcp_options_len on a non-TCP packet");
        }
        self
    }

    /// Sets the TCP sequence number.
    pub fn seq(mut self, value: u32) -> Packet {
        if let L4::Tcp { seq, .. } = &mut self.l4 {
            *seq = value;
        }
        self
    }

    /// Sets the TCP acknowledgment number (meaningful with the ACK flag).
    pub fn ack_number(mut self, value: u32) -> Packet {
        if let L4::Tcp { ack, .. } = &mut self.l4 {
            *ack = value;
        }
        self
    }

    /// Sets the TTL.
    pub fn ttl(mut self, ttl: u8) -> Packet {
        self.ttl = ttl;
        self
    }

    /// Serialises the frame.
    pub fn build(&self) -> Vec<u8> {
        let proto = match self.l4 {
            L4::Tcp { .. } => IpNumber::TCP,
            L4::Udp { .. } => IpNumber::UDP,
            L4::IcmpEcho { .. } => IpNumber::ICMP,
            L4::Raw { proto } => IpNumber(proto),
        };
        let mut ip = Ipv4Header::new(0, self.ttl, proto, self.src.octets(), self.dst.octets())
            .expect("valid IPv4 header");
        ip.options = Ipv4Options::try_from(&self.ip_options[..]).expect("valid IPv4 options");
        let step = PacketBuilder::ethernet2(self.src_mac, self.dst_mac)
            .ip(IpHeaders::Ipv4(ip, Ipv4Extensions::default()));
        let mut out = Vec::new();
        match self.l4 {
            L4::Tcp {
                sport,
                dport,
                flags,
                seq,
                ack,
                options_len,
            } => {
                let mut b = step.tcp(sport, dport, seq, 64240);
                if flags.syn {
                    b = b.syn();
                }
                if flags.ack {
                    b = b.ack(ack);
                }
                if flags.fin {
                    b = b.fin();
                }
                if flags.rst {
                    b = b.rst();
                }
                if flags.psh {
                    b = b.psh();
                }
                if options_len > 0 {
                    b = b
                        .options_raw(&vec![1u8; options_len])
                        .expect("valid TCP options");
                }
                b.write(&mut out, &self.payload)
                    .expect("building TCP packet");
            }
            L4::Udp { sport, dport } => step
                .udp(sport, dport)
                .write(&mut out, &self.payload)
                .expect("building UDP packet"),
            L4::IcmpEcho { id, seq } => step
                .icmpv4_echo_request(id, seq)
                .write(&mut out, &self.payload)
                .expect("building ICMP packet"),
            L4::Raw { proto } => {
                let mut ip = Ipv4Header::new(
                    self.payload.len() as u16,
                    self.ttl,
                    IpNumber(proto),
                    self.src.octets(),
                    self.dst.octets(),
                )
                .expect("valid IPv4 header");
                ip.options = Ipv4Options::try_from(&self.ip_options[..]).expect("valid options");
                ip.header_checksum = ip.calc_header_checksum();
                out.extend_from_slice(&self.dst_mac);
                out.extend_from_slice(&self.src_mac);
                out.extend_from_slice(&EtherType::IPV4.0.to_be_bytes());
                ip.write(&mut out).expect("writing IPv4 header");
                out.extend_from_slice(&self.payload);
            }
        }
        out
    }
}

/// A non-IP Ethernet frame (e.g. ARP = 0x0806, IPv6 = 0x86dd) with `payload`.
pub fn ethernet_frame(ether_type: u16, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(ETH_HLEN + payload.len());
    out.extend_from_slice(&NODE_MAC);
    out.extend_from_slice(&CLIENT_MAC);
    out.extend_from_slice(&ether_type.to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// Offset of the L4 header in a frame built by [`Packet::build`].
pub fn l4_offset(frame: &[u8]) -> usize {
    ETH_HLEN + usize::from(frame[ETH_HLEN] & 0x0f) * 4
}

/// Recomputes the IPv4 header checksum after a deliberate edit of the header, so a test
/// isolates the defect it means to test.
pub fn fix_ipv4_checksum(frame: &mut [u8]) {
    let ihl = usize::from(frame[ETH_HLEN] & 0x0f) * 4;
    let end = (ETH_HLEN + ihl).min(frame.len());
    frame[ETH_HLEN + 10] = 0;
    frame[ETH_HLEN + 11] = 0;
    let sum = internet_checksum(&frame[ETH_HLEN..end], 0);
    frame[ETH_HLEN + 10..ETH_HLEN + 12].copy_from_slice(&sum.to_be_bytes());
}

/// Sets the IPv4 total length field (and fixes the header checksum).
pub fn set_ipv4_total_len(frame: &mut [u8], len: u16) {
    frame[ETH_HLEN + 2..ETH_HLEN + 4].copy_from_slice(&len.to_be_bytes());
    fix_ipv4_checksum(frame);
}

/// RFC 1071 one's complement sum over `data`, folded, complemented; `initial` lets a
/// caller add a pseudo-header.
pub fn internet_checksum(data: &[u8], initial: u32) -> u16 {
    let mut sum = initial;
    let mut chunks = data.chunks_exact(2);
    for c in &mut chunks {
        sum += u32::from(u16::from_be_bytes([c[0], c[1]]));
    }
    if let [last] = chunks.remainder() {
        sum += u32::from(*last) << 8;
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// A frame as parsed back for assertions.
#[derive(Debug, Clone)]
pub struct Parsed {
    pub ether_type: u16,
    pub ipv4: Option<Ipv4Header>,
    pub transport: Option<TransportHeader>,
    pub payload: Vec<u8>,
}

impl Parsed {
    /// Source and destination of a TCP or UDP packet.
    pub fn endpoints(&self) -> Option<(SocketAddrV4, SocketAddrV4)> {
        let ip = self.ipv4.as_ref()?;
        let (sp, dp) = match self.transport.as_ref()? {
            TransportHeader::Tcp(t) => (t.source_port, t.destination_port),
            TransportHeader::Udp(u) => (u.source_port, u.destination_port),
            _ => return None,
        };
        Some((
            SocketAddrV4::new(Ipv4Addr::from(ip.source), sp),
            SocketAddrV4::new(Ipv4Addr::from(ip.destination), dp),
        ))
    }
}

/// Parses an Ethernet frame. Errors say what was malformed.
pub fn parse(frame: &[u8]) -> Result<Parsed, String> {
    let headers = PacketHeaders::from_ethernet_slice(frame).map_err(|e| format!("{e}"))?;
    let ether_type = u16::from_be_bytes([frame[12], frame[13]]);
    let ipv4 = match headers.net {
        Some(NetHeaders::Ipv4(h, _)) => Some(h),
        _ => None,
    };
    Ok(Parsed {
        ether_type,
        ipv4,
        transport: headers.transport,
        payload: headers.payload.slice().to_vec(),
    })
}

/// Checks the IPv4 header checksum and the TCP/UDP/ICMP checksum of `frame` with an
/// implementation independent of the builder. Returns which one is wrong.
pub fn verify_checksums(frame: &[u8]) -> Result<(), String> {
    if frame.len() < ETH_HLEN + 20 || u16::from_be_bytes([frame[12], frame[13]]) != 0x0800 {
        return Ok(());
    }
    let ihl = usize::from(frame[ETH_HLEN] & 0x0f) * 4;
    let ip = &frame[ETH_HLEN..ETH_HLEN + ihl];
    if internet_checksum(ip, 0) != 0 {
        return Err(format!(
            "bad IPv4 header checksum {:#06x}",
            u16::from_be_bytes([ip[10], ip[11]])
        ));
    }
    if u16::from_be_bytes([ip[6], ip[7]]) & 0x3fff != 0 {
        // A fragment (MF set or offset > 0): the L4 checksum covers the reassembled
        // datagram, which one fragment cannot check.
        return Ok(());
    }
    let total = usize::from(u16::from_be_bytes([ip[2], ip[3]]));
    let l4 = &frame[ETH_HLEN + ihl..ETH_HLEN + total];
    let proto = ip[9];
    let pseudo = |len: usize| -> u32 {
        let mut s = 0u32;
        for c in ip[12..20].chunks_exact(2) {
            s += u32::from(u16::from_be_bytes([c[0], c[1]]));
        }
        s + u32::from(proto) + len as u32
    };
    match proto {
        6 if internet_checksum(l4, pseudo(l4.len())) != 0 => Err("bad TCP checksum".into()),
        17 if l4.len() >= 8 && u16::from_be_bytes([l4[6], l4[7]]) != 0 => {
            if internet_checksum(l4, pseudo(l4.len())) != 0 {
                Err("bad UDP checksum".into())
            } else {
                Ok(())
            }
        }
        1 if internet_checksum(l4, 0) != 0 => Err("bad ICMP checksum".into()),
        _ => Ok(()),
    }
}

/// Zeroes the UDP checksum of `frame` ("no checksum", legal for UDP over IPv4).
pub fn clear_udp_checksum(frame: &mut [u8]) {
    let off = l4_offset(frame);
    frame[off + 6] = 0;
    frame[off + 7] = 0;
}

/// An ICMP error (`icmp_type`/`code`, e.g. 3/3 port unreachable) from `src` to `dst`
/// quoting the IPv4 header and first 8 payload bytes of `about` (an Ethernet frame), with
/// valid outer IPv4 and ICMP checksums.
pub fn icmp_error(src: Ipv4Addr, dst: Ipv4Addr, icmp_type: u8, code: u8, about: &[u8]) -> Vec<u8> {
    let ihl = usize::from(about[ETH_HLEN] & 0x0f) * 4;
    let quoted = &about[ETH_HLEN..ETH_HLEN + ihl + 8];
    let mut icmp = vec![icmp_type, code, 0, 0, 0, 0, 0, 0];
    icmp.extend_from_slice(quoted);
    let csum = internet_checksum(&icmp, 0);
    icmp[2..4].copy_from_slice(&csum.to_be_bytes());
    let mut ip = Ipv4Header::new(
        icmp.len() as u16,
        64,
        IpNumber::ICMP,
        src.octets(),
        dst.octets(),
    )
    .expect("valid IPv4 header");
    ip.header_checksum = ip.calc_header_checksum();
    let mut out = Vec::new();
    out.extend_from_slice(&NODE_MAC);
    out.extend_from_slice(&CLIENT_MAC);
    out.extend_from_slice(&EtherType::IPV4.0.to_be_bytes());
    ip.write(&mut out).expect("writing IPv4 header");
    out.extend_from_slice(&icmp);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sa(s: &str) -> SocketAddrV4 {
        s.parse().unwrap()
    }

    #[test]
    fn built_packets_have_valid_checksums_and_parse_back() {
        let frames = [
            Packet::tcp(sa("198.18.0.1:40000"), sa("198.18.0.2:80"), TcpFlags::SYN).build(),
            Packet::tcp(sa("198.18.0.1:40000"), sa("198.18.0.2:80"), TcpFlags::ACK)
                .payload(b"hello")
                .tcp_options_len(12)
                .build(),
            Packet::udp(sa("198.18.0.1:5353"), sa("198.18.0.2:53"))
                .payload(b"q")
                .build(),
            Packet::udp(sa("198.18.0.1:5353"), sa("198.18.0.2:53"))
                .ipv4_options(&[0x94, 0x04, 0, 0])
                .payload(b"abc")
                .build(),
            Packet::icmp_echo(
                "198.18.0.1".parse().unwrap(),
                "198.18.0.2".parse().unwrap(),
                7,
                1,
            )
            .payload(b"ping")
            .build(),
            Packet::ip_raw(
                "198.18.0.1".parse().unwrap(),
                "198.18.0.2".parse().unwrap(),
                47,
            )
            .payload(&[0; 8])
            .build(),
        ];
        for f in &frames {
            verify_checksums(f).unwrap();
            let p = parse(f).unwrap();
            assert_eq!(p.ether_type, 0x0800);
            assert!(p.ipv4.is_some());
        }
        let p = parse(&frames[1]).unwrap();
        assert_eq!(
            p.endpoints(),
            Some((sa("198.18.0.1:40000"), sa("198.18.0.2:80")))
        );
        assert_eq!(p.payload, b"hello");
        assert_eq!(l4_offset(&frames[3]), ETH_HLEN + 24);
    }

    #[test]
    fn checksum_verifier_catches_corruption() {
        let mut f = Packet::tcp(sa("198.18.0.1:1"), sa("198.18.0.2:2"), TcpFlags::SYN).build();
        f[ETH_HLEN + 8] = 1; // TTL changed without fixing the checksum
        assert!(verify_checksums(&f).unwrap_err().contains("IPv4"));
        fix_ipv4_checksum(&mut f);
        verify_checksums(&f).unwrap();
        let off = l4_offset(&f);
        f[off + 4] ^= 0xff; // sequence number changed
        assert!(verify_checksums(&f).unwrap_err().contains("TCP"));

        let mut u = Packet::udp(sa("198.18.0.1:1"), sa("198.18.0.2:2"))
            .payload(b"x")
            .build();
        let off = l4_offset(&u);
        u[off + 8] ^= 1;
        assert!(verify_checksums(&u).unwrap_err().contains("UDP"));
    }
}
