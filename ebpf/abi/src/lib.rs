//! The one definition of everything skiff's eBPF programs and user space share.
//!
//! Rules (see ARCHITECTURE.md):
//! - `#![no_std]`, no dependencies except `aya` behind the `user` feature (for `aya::Pod`).
//! - Keys and values are `#[repr(C)]` with explicit padding fields, no `bool`, no `Option`,
//!   no enums carrying data. Every multi-byte field names its byte order.
//! - Map names carry a layout version. Changing a key or value layout means a new name
//!   (`..._V2`), so an agent never reads a pinned map with the wrong layout.
//! - Sizes and offsets are asserted at compile time below, for both sides at once.
#![no_std]

use core::mem::{offset_of, size_of};

/// Names of the BPF maps, as they appear in the object file and in the kernel.
///
/// The kernel keeps 15 characters of a map name (`BPF_OBJ_NAME_LEN` is 16 with the NUL),
/// so every name here is at most 15 bytes; `names_fit_the_kernel` checks it.
pub mod map_names {
    /// `PER_CPU_ARRAY`, index [`super::PacketClass`], value [`super::TrafficCounter`].
    pub const STATS: &str = "SKIFF_STATS_V1";
    /// `PER_CPU_ARRAY`, index [`super::DropReason`], value `u64` (packets dropped).
    pub const DROPS: &str = "SKIFF_DROPS_V1";

    /// Every map name, for checks that the object and the kernel agree with this crate.
    pub const ALL: &[&str] = &[STATS, DROPS];
}

/// Names of the program entry points in the object file.
pub mod program_names {
    /// tc ingress on node-facing interfaces (`#[classifier]`).
    pub const TC_INGRESS: &str = "skiff_tc_ingress";
}

/// Traffic classes counted by the tc ingress program: the index into [`map_names::STATS`].
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PacketClass {
    /// IPv4 carrying a complete TCP header.
    Ipv4Tcp = 0,
    /// IPv4 carrying a complete UDP header.
    Ipv4Udp = 1,
    /// IPv4 carrying ICMP.
    Ipv4Icmp = 2,
    /// IPv4 with any other protocol.
    Ipv4Other = 3,
    /// A non-first IPv4 fragment: it carries no L4 header to parse.
    Ipv4Fragment = 4,
    /// Anything whose EtherType is not IPv4 (ARP, IPv6, VLAN-tagged, ...).
    NonIpv4 = 5,
}

impl PacketClass {
    /// Number of classes: the size of the stats map.
    pub const COUNT: u32 = 6;
    /// All classes, in index order.
    pub const ALL: [PacketClass; Self::COUNT as usize] = [
        PacketClass::Ipv4Tcp,
        PacketClass::Ipv4Udp,
        PacketClass::Ipv4Icmp,
        PacketClass::Ipv4Other,
        PacketClass::Ipv4Fragment,
        PacketClass::NonIpv4,
    ];

    /// Stable snake_case name, used in CLI output and metrics labels.
    pub const fn name(self) -> &'static str {
        match self {
            PacketClass::Ipv4Tcp => "ipv4_tcp",
            PacketClass::Ipv4Udp => "ipv4_udp",
            PacketClass::Ipv4Icmp => "ipv4_icmp",
            PacketClass::Ipv4Other => "ipv4_other",
            PacketClass::Ipv4Fragment => "ipv4_fragment",
            PacketClass::NonIpv4 => "non_ipv4",
        }
    }
}

/// Why a program dropped a packet: the index into [`map_names::DROPS`].
///
/// Values are part of the ABI: never renumber, only append (and bump `COUNT`).
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DropReason {
    /// Frame shorter than an Ethernet header (14 bytes).
    ShortEthernet = 0,
    /// EtherType IPv4 but fewer than 20 bytes follow the Ethernet header.
    ShortIpv4Header = 1,
    /// EtherType IPv4 but the version nibble is not 4.
    BadIpv4Version = 2,
    /// IHL below 5, or an IHL that runs past the end of the packet.
    BadIpv4HeaderLength = 3,
    /// IPv4 total length smaller than the header or larger than the frame.
    BadIpv4TotalLength = 4,
    /// Protocol TCP but the 20-byte TCP header is not all there.
    ShortTcpHeader = 5,
    /// TCP data offset below 5, or past the end of the IPv4 payload.
    BadTcpDataOffset = 6,
    /// Protocol UDP but the 8-byte UDP header is not all there.
    ShortUdpHeader = 7,
    /// UDP length field below 8 or larger than the IPv4 payload.
    BadUdpLength = 8,
}

impl DropReason {
    /// Number of reasons: the size of the drops map.
    pub const COUNT: u32 = 9;
    /// All reasons, in index order.
    pub const ALL: [DropReason; Self::COUNT as usize] = [
        DropReason::ShortEthernet,
        DropReason::ShortIpv4Header,
        DropReason::BadIpv4Version,
        DropReason::BadIpv4HeaderLength,
        DropReason::BadIpv4TotalLength,
        DropReason::ShortTcpHeader,
        DropReason::BadTcpDataOffset,
        DropReason::ShortUdpHeader,
        DropReason::BadUdpLength,
    ];

    /// Stable snake_case name, used in CLI output and metrics labels.
    pub const fn name(self) -> &'static str {
        match self {
            DropReason::ShortEthernet => "short_ethernet",
            DropReason::ShortIpv4Header => "short_ipv4_header",
            DropReason::BadIpv4Version => "bad_ipv4_version",
            DropReason::BadIpv4HeaderLength => "bad_ipv4_header_length",
            DropReason::BadIpv4TotalLength => "bad_ipv4_total_length",
            DropReason::ShortTcpHeader => "short_tcp_header",
            DropReason::BadTcpDataOffset => "bad_tcp_data_offset",
            DropReason::ShortUdpHeader => "short_udp_header",
            DropReason::BadUdpLength => "bad_udp_length",
        }
    }

    /// The reason with this map index, if any.
    pub const fn from_index(index: u32) -> Option<DropReason> {
        if index < Self::COUNT {
            Some(Self::ALL[index as usize])
        } else {
            None
        }
    }
}

/// A packet and byte counter. Value of [`map_names::STATS`] (one per CPU).
///
/// Both fields are host byte order (the kernel and the agent run on the same machine).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TrafficCounter {
    /// Packets seen.
    pub packets: u64,
    /// Bytes seen: `skb->len`, the whole frame including the Ethernet header.
    pub bytes: u64,
}

impl TrafficCounter {
    /// Sum of two counters (used to fold per-CPU values), saturating rather than wrapping.
    pub const fn saturating_add(self, other: TrafficCounter) -> TrafficCounter {
        TrafficCounter {
            packets: self.packets.saturating_add(other.packets),
            bytes: self.bytes.saturating_add(other.bytes),
        }
    }
}

// Layout asserts: both sides compile these, so a layout change cannot reach only one side.
const _: () = assert!(size_of::<TrafficCounter>() == 16);
const _: () = assert!(offset_of!(TrafficCounter, packets) == 0);
const _: () = assert!(offset_of!(TrafficCounter, bytes) == 8);
const _: () = assert!(size_of::<DropReason>() == 4);
const _: () = assert!(size_of::<PacketClass>() == 4);
const _: () = assert!(PacketClass::ALL.len() == PacketClass::COUNT as usize);
const _: () = assert!(DropReason::ALL.len() == DropReason::COUNT as usize);

#[cfg(feature = "user")]
mod user {
    // SAFETY: `TrafficCounter` is `#[repr(C)]`, made only of `u64`s, has no padding,
    // and every bit pattern is a valid value.
    unsafe impl aya::Pod for super::TrafficCounter {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_fit_the_kernel() {
        for name in map_names::ALL {
            assert!(
                name.len() <= 15,
                "map name {name} is longer than the kernel keeps"
            );
            assert!(
                name.ends_with("_V1"),
                "map name {name} carries no layout version"
            );
        }
    }

    #[test]
    fn enum_indices_are_dense_and_ordered() {
        for (i, class) in PacketClass::ALL.iter().enumerate() {
            assert_eq!(*class as u32, i as u32, "{class:?}");
        }
        for (i, reason) in DropReason::ALL.iter().enumerate() {
            assert_eq!(*reason as u32, i as u32, "{reason:?}");
            assert_eq!(DropReason::from_index(i as u32), Some(*reason));
        }
        assert_eq!(DropReason::from_index(DropReason::COUNT), None);
    }

    #[test]
    fn names_are_unique() {
        for (i, a) in DropReason::ALL.iter().enumerate() {
            for b in &DropReason::ALL[i + 1..] {
                assert_ne!(a.name(), b.name());
            }
        }
        for (i, a) in PacketClass::ALL.iter().enumerate() {
            for b in &PacketClass::ALL[i + 1..] {
                assert_ne!(a.name(), b.name());
            }
        }
    }
}
