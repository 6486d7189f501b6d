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
    /// V2: one entry per reason of [`super::DropReason::COUNT`] = 20 (V1 had 18); a pinned
    /// V1 map is too short for the masquerade reasons, so the name changed with the size.
    pub const DROPS: &str = "SKIFF_DROPS_V2";

    /// `HASH`, key [`super::ServiceKey`], value [`super::ServiceValue`]: one entry per
    /// frontend (ClusterIP:port, NodeIP:nodePort, LB IP:port, ExternalIP:port).
    pub const SERVICES: &str = "SKIFF_SVC_V1";
    /// `HASH`, key [`super::SlotKey`], value `u32` backend id: the backend list of a
    /// service, shared by all of its frontends.
    pub const SLOTS: &str = "SKIFF_SLOT_V1";
    /// `HASH`, key `u32` backend id, value [`super::Backend`].
    pub const BACKENDS: &str = "SKIFF_BE_V1";
    /// `LRU_HASH`, key [`super::SockRevKey`], value [`super::SockRevValue`]: what a socket
    /// translated at connect()/sendmsg(), so replies and getpeername() show the VIP.
    pub const SOCK_REV: &str = "SKIFF_SKREV_V1";
    /// `PER_CPU_ARRAY`, index [`super::SockLbCounter`], value `u64`.
    pub const SOCK_STATS: &str = "SKIFF_SKSTAT_V1";
    /// `LRU_HASH`, key [`super::CtKey`], value [`super::CtValue`]: per-packet connection
    /// tracking of translated flows (both directions).
    pub const CONNTRACK: &str = "SKIFF_CT_V1";
    /// `ARRAY` of one [`super::NodeConfig`]: this node's datapath settings.
    pub const CONFIG: &str = "SKIFF_CFG_V1";
    /// `HASH`, key ifindex (`u32`, host byte order), value [`super::iface_flags`] bits.
    pub const IFACES: &str = "SKIFF_IFACE_V1";
    /// `LPM_TRIE`, key prefix length + [`super::SourceRangeKey`], value `u8` (1): allowed
    /// client ranges per service id.
    pub const SOURCE_RANGES: &str = "SKIFF_SRCRNG_V1";
    /// `HASH`, key service id (`u32`), value [`super::ServiceOptions`].
    pub const SERVICE_OPTIONS: &str = "SKIFF_SVCOPT_V1";
    /// `LRU_HASH`, key [`super::AffinityKey`], value [`super::AffinityValue`].
    pub const AFFINITY: &str = "SKIFF_AFFIN_V1";
    /// `ARRAY` of one [`super::BindProtection`].
    pub const BIND_PROTECTION: &str = "SKIFF_BINDP_V1";
    /// `HASH`, key node IPv4 address (network byte order), value `u8` (1).
    pub const NODE_ADDRS: &str = "SKIFF_NODEIP_V1";
    /// `HASH`, key port (`u32`, host byte order), value `u8` (1): NodePort-range ports the
    /// agent itself binds (health-check node ports), exempt from bind protection.
    pub const BIND_EXEMPT: &str = "SKIFF_BINDOK_V1";
    /// `PER_CPU_ARRAY`, index [`super::XdpCounter`], value `u64`.
    pub const XDP_STATS: &str = "SKIFF_XDPST_V1";
    /// `ARRAY` of `u32` backend ids: Maglev lookup tables, [`super::maglev::TABLE_SIZE`]
    /// entries per table, table `t` at `t * TABLE_SIZE`.
    pub const MAGLEV: &str = "SKIFF_MAGLEV_V1";
    /// `PER_CPU_ARRAY`, index service id, value [`super::LbCounter`].
    pub const SERVICE_STATS: &str = "SKIFF_SVCST_V1";
    /// `PER_CPU_ARRAY`, index backend id, value [`super::LbCounter`].
    pub const BACKEND_STATS: &str = "SKIFF_BEST_V1";
    /// `HASH`, key ifindex (`u32`, host byte order), value [`super::MasqIface`]: the
    /// uplinks on which pod traffic to the outside is masqueraded (tc egress), and how.
    pub const MASQUERADE: &str = "SKIFF_MASQ_V1";
    /// `LPM_TRIE`, key prefix length + IPv4 destination (network byte order), value `u8`
    /// (1): destinations pod traffic keeps its source for (cluster CIDR, service CIDR,
    /// `--non-masquerade-cidr`, as ip-masq-agent's `nonMasqueradeCIDRs`).
    pub const NON_MASQUERADE: &str = "SKIFF_NOMASQ_V1";
    /// `PER_CPU_ARRAY`, index [`super::MasqCounter`], value `u64`.
    pub const MASQ_STATS: &str = "SKIFF_MASQST_V1";
    /// `PER_CPU_ARRAY`, index [`super::FlowCounter`], value `u64`.
    pub const FLOW_STATS: &str = "SKIFF_FLOWST_V1";

    /// Every map name, for checks that the object and the kernel agree with this crate.
    pub const ALL: &[&str] = &[
        STATS,
        DROPS,
        SERVICES,
        SLOTS,
        BACKENDS,
        SOCK_REV,
        SOCK_STATS,
        CONNTRACK,
        CONFIG,
        SERVICE_STATS,
        BACKEND_STATS,
        IFACES,
        SOURCE_RANGES,
        SERVICE_OPTIONS,
        AFFINITY,
        BIND_PROTECTION,
        NODE_ADDRS,
        MAGLEV,
        BIND_EXEMPT,
        XDP_STATS,
        MASQUERADE,
        NON_MASQUERADE,
        MASQ_STATS,
        FLOW_STATS,
    ];
}

/// Names of the program entry points in the object file.
pub mod program_names {
    /// tc ingress on node-facing and pod-facing interfaces (`#[classifier]`): new flows to
    /// frontends are translated, replies of translated flows reverse-translated.
    pub const TC_INGRESS: &str = "skiff_tc_ingress";
    /// tc egress on node-facing interfaces: reverse translation of replies that did not
    /// pass a skiff ingress hook (backends behind interfaces skiff does not manage).
    pub const TC_EGRESS: &str = "skiff_tc_egress";
    /// cgroup v2 `connect4`: translate a service VIP to a backend at connect().
    pub const SOCK_CONNECT4: &str = "skiff_sock_connect4";
    /// cgroup v2 `sendmsg4`: the same for unconnected UDP sends.
    pub const SOCK_SENDMSG4: &str = "skiff_sock_sendmsg4";
    /// cgroup v2 `recvmsg4`: show the VIP as the source of UDP replies.
    pub const SOCK_RECVMSG4: &str = "skiff_sock_recvmsg4";
    /// cgroup v2 `getpeername4`: show the VIP as the peer of a translated socket.
    pub const SOCK_GETPEERNAME4: &str = "skiff_sock_getpeername4";
    /// cgroup v2 `post_bind4`: NodePort bind protection.
    pub const SOCK_POST_BIND4: &str = "skiff_sock_post_bind4";
    /// XDP on node-facing interfaces: acceleration of flows to remote backends.
    pub const XDP: &str = "skiff_xdp";

    /// The socket-LB programs with their cgroup attach points, in attach order.
    pub const SOCK_LB: &[&str] = &[
        SOCK_CONNECT4,
        SOCK_SENDMSG4,
        SOCK_RECVMSG4,
        SOCK_GETPEERNAME4,
    ];
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
    /// A frontend's slot or backend entry was missing (the agent was mid-update or the
    /// maps are corrupt): the packet is dropped rather than sent untranslated.
    InconsistentMaps = 9,
    /// The conntrack map refused an insert (full and no LRU victim, or a race).
    ConntrackInsertFailed = 10,
    /// No free source port for SNAT towards this backend after several tries.
    SnatPortExhausted = 11,
    /// Rewriting the packet (store or checksum helper) failed.
    RewriteFailed = 12,
    /// No route to the translated destination (bpf_fib_lookup failed).
    NoRoute = 13,
    /// A packet to a frontend without usable backends that cannot be answered with a
    /// reject (a TCP RST itself).
    NoBackend = 14,
    /// A flow needs SNAT (remote backend, hairpin) but the agent has not configured the
    /// node's SNAT address yet.
    SnatNotConfigured = 15,
    /// externalTrafficPolicy=Local and no endpoint of the service on this node.
    NoLocalBackend = 16,
    /// The client is outside the service's loadBalancerSourceRanges.
    SourceRangeDenied = 17,
    /// Masquerade found no free port on the uplink's address towards this destination
    /// (every probed reply key taken): the pod's new flow is dropped rather than sent with
    /// its pod address, which the outside could not answer.
    MasqueradePortExhausted = 18,
    /// Protocol ICMP but the 8-byte ICMP header is not all there (checked where ICMP is
    /// translated: masquerade of echo requests).
    ShortIcmpHeader = 19,
}

impl DropReason {
    /// Number of reasons: the size of the drops map.
    pub const COUNT: u32 = 20;
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
        DropReason::InconsistentMaps,
        DropReason::ConntrackInsertFailed,
        DropReason::SnatPortExhausted,
        DropReason::RewriteFailed,
        DropReason::NoRoute,
        DropReason::NoBackend,
        DropReason::SnatNotConfigured,
        DropReason::NoLocalBackend,
        DropReason::SourceRangeDenied,
        DropReason::MasqueradePortExhausted,
        DropReason::ShortIcmpHeader,
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
            DropReason::InconsistentMaps => "inconsistent_maps",
            DropReason::ConntrackInsertFailed => "conntrack_insert_failed",
            DropReason::SnatPortExhausted => "snat_port_exhausted",
            DropReason::RewriteFailed => "rewrite_failed",
            DropReason::NoRoute => "no_route",
            DropReason::NoBackend => "no_backend",
            DropReason::SnatNotConfigured => "snat_not_configured",
            DropReason::NoLocalBackend => "no_local_backend",
            DropReason::SourceRangeDenied => "source_range_denied",
            DropReason::MasqueradePortExhausted => "masquerade_port_exhausted",
            DropReason::ShortIcmpHeader => "short_icmp_header",
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

/// IP protocol numbers as stored in [`ServiceKey::proto`] and [`Backend::proto`].
pub mod proto {
    pub const TCP: u8 = 6;
    pub const UDP: u8 = 17;
    pub const SCTP: u8 = 132;
}

/// Key of [`map_names::SERVICES`]: one service frontend.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServiceKey {
    /// Frontend IPv4 address, network byte order (as in `struct sockaddr_in`).
    pub addr: u32,
    /// Frontend port, network byte order.
    pub port: u16,
    /// IP protocol ([`proto`]).
    pub proto: u8,
    /// [`scope`]: which clients this entry serves.
    pub scope: u8,
}

/// Frontend kinds and behaviours, bits of [`ServiceValue::flags`].
pub mod service_flags {
    pub const CLUSTER_IP: u32 = 1 << 0;
    pub const NODE_PORT: u32 = 1 << 1;
    pub const LOAD_BALANCER: u32 = 1 << 2;
    pub const EXTERNAL_IP: u32 = 1 << 3;
    /// With no usable backend, drop (externalTrafficPolicy=Local on a node without local
    /// endpoints: the external load balancer's health check must see this node fail)
    /// instead of refusing.
    pub const LOCAL_DROP: u32 = 1 << 4;
    /// New flows from sources outside the service's `loadBalancerSourceRanges`
    /// (`SKIFF_SRCRANGE_V1`) are dropped.
    pub const SOURCE_RANGES: u32 = 1 << 5;
    /// sessionAffinity: ClientIP (`SKIFF_AFFINITY_V1`, timeout in `SKIFF_SVCOPT_V1`).
    pub const AFFINITY: u32 = 1 << 6;
    /// Maglev consistent hashing (`SKIFF_MAGLEV_V1`, table number in `SKIFF_SVCOPT_V1`).
    pub const MAGLEV: u32 = 1 << 7;
}

/// Values of [`ServiceKey::scope`].
pub mod scope {
    /// Every client: socket LB, pods, and outside traffic when no EXTERNAL_LOCAL entry
    /// exists.
    pub const CLUSTER: u8 = 0;
    /// Traffic arriving from outside the cluster (an interface marked
    /// `iface_flags::EXTERNAL`) to a service with externalTrafficPolicy=Local: looked up
    /// first there, holding only this node's endpoints.
    pub const EXTERNAL_LOCAL: u8 = 1;
}

/// Bits of the value of [`map_names::IFACES`].
pub mod iface_flags {
    /// A node-facing interface: traffic arriving on it comes from outside the cluster.
    pub const EXTERNAL: u32 = 1 << 0;
}

/// Value of [`map_names::SERVICES`].
///
/// Backend choice (Kubernetes' ProxyTerminatingEndpoints rule): slots `0..active` hold
/// ready, non-terminating backends; slots `active..active + terminating` hold serving,
/// terminating ones, used only when `active == 0`. Both zero: no usable backend, reject.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ServiceValue {
    /// Identifies the service port: the key of its slots, host byte order. Never 0.
    pub service_id: u32,
    /// Number of active backend slots, host byte order.
    pub active: u16,
    /// Number of terminating-but-serving backend slots after the active ones.
    pub terminating: u16,
    /// [`service_flags`] bits, host byte order.
    pub flags: u32,
}

/// Key of [`map_names::SLOTS`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SlotKey {
    /// [`ServiceValue::service_id`], host byte order.
    pub service_id: u32,
    /// Slot index, host byte order.
    pub slot: u32,
}

/// Bits of [`Backend::flags`].
pub mod backend_flags {
    /// The endpoint is terminating (it may still serve existing flows).
    pub const TERMINATING: u8 = 1 << 0;
    /// The endpoint runs on this node.
    pub const LOCAL: u8 = 1 << 1;
}

/// Value of [`map_names::BACKENDS`] (key: backend id, `u32`, host byte order, never 0).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Backend {
    /// Backend IPv4 address, network byte order.
    pub addr: u32,
    /// Backend port, network byte order.
    pub port: u16,
    /// IP protocol ([`proto`]).
    pub proto: u8,
    /// [`backend_flags`] bits.
    pub flags: u8,
}

/// Key of [`map_names::SOCK_REV`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct SockRevKey {
    /// `bpf_get_socket_cookie()` of the translated socket, host byte order.
    pub cookie: u64,
    /// Backend IPv4 address the socket was sent to, network byte order.
    pub addr: u32,
    /// Backend port, network byte order.
    pub port: u16,
    pub _pad: u16,
}

/// Value of [`map_names::SOCK_REV`]: the frontend the application asked for.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct SockRevValue {
    /// Frontend IPv4 address, network byte order.
    pub addr: u32,
    /// Frontend port, network byte order.
    pub port: u16,
    pub _pad: u16,
    /// The service the frontend belongs to, so the agent can purge a service's entries.
    pub service_id: u32,
}

/// Socket-LB events: the index into [`map_names::SOCK_STATS`].
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SockLbCounter {
    /// connect()/sendmsg() to a frontend, translated to a backend.
    Translated = 0,
    /// connect()/sendmsg() to a frontend with no usable backend: refused (ECONNREFUSED).
    NoBackend = 1,
    /// A slot or backend entry was missing mid-update: the call proceeds untranslated.
    InconsistentMaps = 2,
    /// recvmsg()/getpeername() rewritten back to the frontend.
    ReverseTranslated = 3,
    /// The reverse map was full or the update failed: replies will show the backend.
    ReverseUpdateFailed = 4,
}

impl SockLbCounter {
    pub const COUNT: u32 = 5;
    pub const ALL: [SockLbCounter; Self::COUNT as usize] = [
        SockLbCounter::Translated,
        SockLbCounter::NoBackend,
        SockLbCounter::InconsistentMaps,
        SockLbCounter::ReverseTranslated,
        SockLbCounter::ReverseUpdateFailed,
    ];

    pub const fn name(self) -> &'static str {
        match self {
            SockLbCounter::Translated => "translated",
            SockLbCounter::NoBackend => "no_backend",
            SockLbCounter::InconsistentMaps => "inconsistent_maps",
            SockLbCounter::ReverseTranslated => "reverse_translated",
            SockLbCounter::ReverseUpdateFailed => "reverse_update_failed",
        }
    }
}

/// Direction of a conntrack entry, [`CtKey::dir`].
pub mod ct_dir {
    /// The key is the flow as the client sent it (to the frontend).
    pub const FORWARD: u8 = 1;
    /// The key is a reply as it comes back from the backend (after DNAT/SNAT), or from
    /// the outside to a masqueraded flow.
    pub const REPLY: u8 = 2;
    /// The key is a pod's packet of a masqueraded flow as it leaves through an uplink.
    /// Looked up on tc egress only, never on ingress: the same 5-tuple arriving on the
    /// pod's interface must reach the stack untranslated (a local source would make it a
    /// martian), so it cannot share FORWARD's key space.
    pub const MASQ: u8 = 3;
}

/// The direction of the partner entry of an entry in direction `dir` with [`ct_flags`]
/// `flags`: FORWARD and MASQ entries pair with REPLY; a REPLY entry pairs with MASQ when it
/// carries [`ct_flags::MASQ`], else with FORWARD. Shared by the datapath and the agent's
/// garbage collection.
pub const fn ct_partner_dir(dir: u8, flags: u32) -> u8 {
    if dir != ct_dir::REPLY {
        ct_dir::REPLY
    } else if flags & ct_flags::MASQ != 0 {
        ct_dir::MASQ
    } else {
        ct_dir::FORWARD
    }
}

/// Key of [`map_names::CONNTRACK`]: a packet's 5-tuple as it arrives, plus direction.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CtKey {
    /// Source IPv4, network byte order.
    pub saddr: u32,
    /// Destination IPv4, network byte order.
    pub daddr: u32,
    /// Source port, network byte order.
    pub sport: u16,
    /// Destination port, network byte order.
    pub dport: u16,
    /// IP protocol ([`proto`]).
    pub proto: u8,
    /// [`ct_dir`].
    pub dir: u8,
    pub _pad: u16,
}

/// Bits of [`CtValue::flags`].
pub mod ct_flags {
    /// The flow is source-NATed (remote backend or hairpin).
    pub const SNAT: u32 = 1 << 0;
    /// A reply has been seen (TCP: past SYN; UDP: bidirectional).
    pub const SEEN_REPLY: u32 = 1 << 1;
    /// TCP FIN or RST seen: the entry ages out on the short close timeout.
    pub const CLOSING: u32 = 1 << 2;
    /// After rewriting, route the packet from the hook (bpf_fib_lookup +
    /// bpf_redirect_neigh) instead of handing it to the stack, which would drop a packet
    /// whose new source is a local address as a martian.
    pub const REDIRECT: u32 = 1 << 3;
    /// A masqueraded pod flow (no service): `backend_id` and `service_id` are 0, and the
    /// REPLY entry's partner is in direction [`super::ct_dir::MASQ`].
    pub const MASQ: u32 = 1 << 4;
}

/// Value of [`map_names::CONNTRACK`]: how to rewrite packets matching the key.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CtValue {
    /// New source IPv4, network byte order.
    pub saddr: u32,
    /// New destination IPv4, network byte order.
    pub daddr: u32,
    /// New source port, network byte order.
    pub sport: u16,
    /// New destination port, network byte order.
    pub dport: u16,
    /// The backend the flow was sent to (host byte order), so removing a backend can
    /// purge its flows.
    pub backend_id: u32,
    /// The service of the frontend (host byte order).
    pub service_id: u32,
    /// [`ct_flags`] bits.
    pub flags: u32,
    /// `bpf_ktime_get_ns()` of the last packet, refreshed at most once a second.
    pub last_seen_ns: u64,
}

/// Conntrack timeouts applied by the agent's garbage collection, in seconds. Values follow
/// Cilium's (datapath.md §1.3): long for established TCP, short for half-open and closing.
pub mod ct_timeouts {
    pub const TCP_SYN: u64 = 60;
    pub const TCP_ESTABLISHED: u64 = 21600;
    pub const TCP_CLOSING: u64 = 10;
    pub const UDP: u64 = 60;
}

/// Value of [`map_names::CONFIG`] (one entry, index 0).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NodeConfig {
    /// Source address for SNAT towards remote backends and for hairpin flows, network
    /// byte order. While it is 0 (agent not configured yet) such flows are dropped with
    /// `SnatNotConfigured` rather than sent with a source the backend cannot answer.
    pub snat_addr: u32,
    /// Lowest SNAT source port (host byte order); 0 means 32768.
    pub snat_port_min: u16,
    /// Highest SNAT source port (host byte order); 0 means 60999.
    pub snat_port_max: u16,
}

/// Value of [`map_names::MASQUERADE`]: masquerade on one uplink.
///
/// A packet leaving through the uplink is masqueraded when its source is inside
/// `src_net/src_mask` (the cluster CIDR) and its destination is neither link-local
/// (169.254.0.0/16, never) nor in [`map_names::NON_MASQUERADE`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MasqIface {
    /// The address sources are rewritten to (the uplink's), network byte order.
    pub addr: u32,
    /// Source range base, network byte order, already masked.
    pub src_net: u32,
    /// Source range netmask, network byte order.
    pub src_mask: u32,
    /// Lowest translated port (and ICMP echo id), host byte order.
    pub port_min: u16,
    /// Highest translated port, host byte order; `port_min..=port_max` is never empty.
    pub port_max: u16,
}

/// Masquerade events: the index into [`map_names::MASQ_STATS`].
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum MasqCounter {
    /// New masqueraded flows (a port claimed).
    NewFlows = 0,
    /// Pod packets rewritten to the uplink's address on egress.
    Egress = 1,
    /// Replies rewritten back to the pod on ingress (TCP, UDP, ICMP echo replies).
    Ingress = 2,
    /// ICMP errors about masqueraded flows translated back to the pod.
    IcmpErrors = 3,
}

impl MasqCounter {
    pub const COUNT: u32 = 4;
    pub const ALL: [MasqCounter; Self::COUNT as usize] = [
        MasqCounter::NewFlows,
        MasqCounter::Egress,
        MasqCounter::Ingress,
        MasqCounter::IcmpErrors,
    ];

    pub const fn name(self) -> &'static str {
        match self {
            MasqCounter::NewFlows => "new_flows",
            MasqCounter::Egress => "egress_packets",
            MasqCounter::Ingress => "ingress_packets",
            MasqCounter::IcmpErrors => "icmp_errors",
        }
    }
}

/// Conntrack events of per-packet service flows: the index into
/// [`map_names::FLOW_STATS`]. Both are rare in a healthy cluster and each explains a kind
/// of "connection reset" users report.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum FlowCounter {
    /// A TCP packet without SYN matched no tracked flow and was balanced as a new one.
    /// Its backend has no such connection and answers with a RST: the flow's conntrack
    /// entry was lost (deleted while in use, evicted from a full map) or the flow began
    /// before the datapath was there.
    Midstream = 0,
    /// A SYN on a tracked tuple was balanced afresh (`service::reopens`): the client
    /// reused the port of a closed flow, or the flow's backend is terminating or gone.
    Reopened = 1,
}

impl FlowCounter {
    pub const COUNT: u32 = 2;
    pub const ALL: [FlowCounter; Self::COUNT as usize] =
        [FlowCounter::Midstream, FlowCounter::Reopened];

    pub const fn name(self) -> &'static str {
        match self {
            FlowCounter::Midstream => "midstream_new",
            FlowCounter::Reopened => "reopened",
        }
    }
}

/// Data of a [`map_names::SOURCE_RANGES`] key; the LPM prefix length is 32 (the service
/// id, always matched whole) plus the range's prefix length.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SourceRangeKey {
    /// Service id, **big-endian**: the trie matches bytes in order.
    pub service_id_be: u32,
    /// Client IPv4 address or range base, network byte order.
    pub addr: u32,
}

/// Value of [`map_names::SERVICE_OPTIONS`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ServiceOptions {
    /// Session affinity timeout in seconds (host byte order); 0 = no affinity.
    pub affinity_timeout_s: u32,
    /// Maglev table number + 1 in [`map_names::MAGLEV`] (host byte order); 0 = random
    /// choice.
    pub maglev_table: u32,
}

/// Values of [`AffinityKey::kind`].
pub mod affinity_kind {
    /// Per-packet path: the client is its IPv4 address.
    pub const CLIENT_IP: u32 = 0;
    /// Socket path: the client is its network namespace (netns cookie), so every socket of
    /// a pod shares the affinity.
    pub const NETNS: u32 = 1;
}

/// Key of [`map_names::AFFINITY`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct AffinityKey {
    /// Client IPv4 (network byte order, zero-extended) or netns cookie.
    pub client: u64,
    /// Service id (host byte order).
    pub service_id: u32,
    /// [`affinity_kind`].
    pub kind: u32,
}

/// Value of [`map_names::AFFINITY`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AffinityValue {
    /// The remembered backend (host byte order).
    pub backend_id: u32,
    pub _pad: u32,
    /// `bpf_ktime_get_ns()` of the last new flow that used it.
    pub last_used_ns: u64,
}

/// Value of [`map_names::BIND_PROTECTION`]: host processes may not bind ports in
/// `[port_min, port_max]` (the NodePort range) on node addresses or the wildcard, so no
/// local daemon silently steals a NodePort (Cilium's `nodePort.bindProtection`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BindProtection {
    /// Host byte order.
    pub port_min: u16,
    /// Host byte order.
    pub port_max: u16,
    /// 1 when enabled.
    pub enabled: u32,
}

/// Maglev consistent hashing (Eisenbud et al., NSDI 2016): the flow hash both the
/// datapath and the agent compute, and the table geometry. The table contents are built in
/// user space (`skiff_agent::maglev`).
pub mod maglev {
    /// Entries per table: a prime (Cilium's default), ≥ 100 × backends keeps the
    /// disruption of a backend change within ~1% of optimal.
    pub const TABLE_SIZE: u32 = 16381;
    /// Default number of tables (services using Maglev) per node.
    pub const DEFAULT_TABLES: u32 = 64;

    /// Hash of a flow's 5-tuple (raw network-order fields as stored in the packet), the
    /// same on every node: a murmur3-style finaliser over the mixed fields. No loops, so
    /// the verifier sees straight-line code.
    #[inline(always)]
    pub const fn flow_hash(saddr: u32, daddr: u32, sport: u16, dport: u16, proto: u8) -> u32 {
        let mut h: u32 = 0x9e37_79b9;
        h ^= saddr;
        h = h.wrapping_mul(0x85eb_ca6b);
        h = h.rotate_left(13) ^ daddr;
        h = h.wrapping_mul(0xc2b2_ae35);
        h = h.rotate_left(13) ^ ((sport as u32) << 16 | dport as u32);
        h = h.wrapping_mul(0x85eb_ca6b);
        h ^= proto as u32;
        h ^= h >> 16;
        h = h.wrapping_mul(0x85eb_ca6b);
        h ^= h >> 13;
        h = h.wrapping_mul(0xc2b2_ae35);
        h ^ (h >> 16)
    }
}

/// What the XDP program did with frames: the index into [`map_names::XDP_STATS`].
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum XdpCounter {
    /// Translated and forwarded from XDP.
    Redirected = 0,
    /// Handed to the stack (and tc).
    Passed = 1,
}

impl XdpCounter {
    pub const COUNT: u32 = 2;
    pub const ALL: [XdpCounter; Self::COUNT as usize] =
        [XdpCounter::Redirected, XdpCounter::Passed];
}

/// Per-service or per-backend traffic counters (one per CPU; the agent sums them).
/// Per-packet flows count every forward packet; socket-LB flows count only the
/// connect()/sendmsg() that chose the backend (later packets never reach BPF).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LbCounter {
    /// New flows (connections, UDP 5-tuples, socket translations), host byte order.
    pub new_flows: u64,
    /// Packets translated on the per-packet path, client to backend direction.
    pub packets: u64,
    /// Bytes of those packets (whole frames).
    pub bytes: u64,
}

impl LbCounter {
    pub const fn saturating_add(self, o: LbCounter) -> LbCounter {
        LbCounter {
            new_flows: self.new_flows.saturating_add(o.new_flows),
            packets: self.packets.saturating_add(o.packets),
            bytes: self.bytes.saturating_add(o.bytes),
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
const _: () = assert!(size_of::<ServiceKey>() == 8);
const _: () = assert!(offset_of!(ServiceKey, port) == 4);
const _: () = assert!(offset_of!(ServiceKey, proto) == 6);
const _: () = assert!(offset_of!(ServiceKey, scope) == 7);
const _: () = assert!(size_of::<ServiceValue>() == 12);
const _: () = assert!(offset_of!(ServiceValue, active) == 4);
const _: () = assert!(offset_of!(ServiceValue, terminating) == 6);
const _: () = assert!(offset_of!(ServiceValue, flags) == 8);
const _: () = assert!(size_of::<SlotKey>() == 8);
const _: () = assert!(size_of::<Backend>() == 8);
const _: () = assert!(offset_of!(Backend, port) == 4);
const _: () = assert!(offset_of!(Backend, proto) == 6);
const _: () = assert!(offset_of!(Backend, flags) == 7);
const _: () = assert!(size_of::<SockRevKey>() == 16);
const _: () = assert!(offset_of!(SockRevKey, addr) == 8);
const _: () = assert!(offset_of!(SockRevKey, port) == 12);
const _: () = assert!(size_of::<SockRevValue>() == 12);
const _: () = assert!(offset_of!(SockRevValue, service_id) == 8);
const _: () = assert!(SockLbCounter::ALL.len() == SockLbCounter::COUNT as usize);
const _: () = assert!(size_of::<CtKey>() == 16);
const _: () = assert!(offset_of!(CtKey, sport) == 8);
const _: () = assert!(offset_of!(CtKey, proto) == 12);
const _: () = assert!(offset_of!(CtKey, dir) == 13);
const _: () = assert!(size_of::<CtValue>() == 32);
const _: () = assert!(offset_of!(CtValue, backend_id) == 12);
const _: () = assert!(offset_of!(CtValue, flags) == 20);
const _: () = assert!(offset_of!(CtValue, last_seen_ns) == 24);
const _: () = assert!(size_of::<NodeConfig>() == 8);
const _: () = assert!(size_of::<MasqIface>() == 16);
const _: () = assert!(offset_of!(MasqIface, port_min) == 12);
const _: () = assert!(MasqCounter::ALL.len() == MasqCounter::COUNT as usize);
const _: () = assert!(size_of::<LbCounter>() == 24);
const _: () = assert!(size_of::<SourceRangeKey>() == 8);
const _: () = assert!(size_of::<BindProtection>() == 8);
const _: () = assert!(size_of::<ServiceOptions>() == 8);
const _: () = assert!(size_of::<AffinityKey>() == 16);
const _: () = assert!(offset_of!(AffinityKey, service_id) == 8);
const _: () = assert!(size_of::<AffinityValue>() == 16);
const _: () = assert!(offset_of!(AffinityValue, last_used_ns) == 8);
const _: () = assert!(offset_of!(LbCounter, bytes) == 16);
const _: () = assert!(size_of::<PacketClass>() == 4);
const _: () = assert!(PacketClass::ALL.len() == PacketClass::COUNT as usize);
const _: () = assert!(DropReason::ALL.len() == DropReason::COUNT as usize);

#[cfg(feature = "user")]
mod user {
    // SAFETY: `TrafficCounter` is `#[repr(C)]`, made only of `u64`s, has no padding,
    // and every bit pattern is a valid value.
    unsafe impl aya::Pod for super::TrafficCounter {}
    // SAFETY (all below): `#[repr(C)]`, integer fields only, padding spelled out as
    // fields (asserted sizes equal the field sums), every bit pattern valid.
    unsafe impl aya::Pod for super::ServiceKey {}
    unsafe impl aya::Pod for super::ServiceValue {}
    unsafe impl aya::Pod for super::SlotKey {}
    unsafe impl aya::Pod for super::Backend {}
    unsafe impl aya::Pod for super::SockRevKey {}
    unsafe impl aya::Pod for super::SockRevValue {}
    unsafe impl aya::Pod for super::CtKey {}
    unsafe impl aya::Pod for super::CtValue {}
    unsafe impl aya::Pod for super::NodeConfig {}
    unsafe impl aya::Pod for super::MasqIface {}
    unsafe impl aya::Pod for super::LbCounter {}
    unsafe impl aya::Pod for super::SourceRangeKey {}
    unsafe impl aya::Pod for super::BindProtection {}
    unsafe impl aya::Pod for super::ServiceOptions {}
    unsafe impl aya::Pod for super::AffinityKey {}
    unsafe impl aya::Pod for super::AffinityValue {}
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
            let version = name.rsplit_once("_V").map(|(_, v)| v).unwrap_or("");
            assert!(
                !version.is_empty() && version.bytes().all(|b| b.is_ascii_digit()),
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
    fn conntrack_partners_pair_up() {
        assert_eq!(ct_partner_dir(ct_dir::FORWARD, 0), ct_dir::REPLY);
        assert_eq!(ct_partner_dir(ct_dir::REPLY, 0), ct_dir::FORWARD);
        assert_eq!(
            ct_partner_dir(ct_dir::REPLY, ct_flags::SNAT),
            ct_dir::FORWARD
        );
        assert_eq!(ct_partner_dir(ct_dir::MASQ, ct_flags::MASQ), ct_dir::REPLY);
        assert_eq!(ct_partner_dir(ct_dir::REPLY, ct_flags::MASQ), ct_dir::MASQ);
    }

    #[test]
    fn map_names_are_unique() {
        for (i, a) in map_names::ALL.iter().enumerate() {
            for b in &map_names::ALL[i + 1..] {
                assert_ne!(a, b);
            }
        }
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
