//! Every BPF map of the object, in one place. Names are the versioned names of
//! `skiff_datapath_abi::map_names` (the `#[map]` macro takes the static's identifier as the
//! map name, and the agent checks on load that every ABI name is present in the object).
//!
//! The sizes here are defaults; the agent resizes maps at load time from its
//! configuration (`EbpfLoader::set_max_entries`), so capacity is never a rebuild.

use aya_ebpf::{
    macros::map,
    maps::{lpm_trie::LpmTrie, Array, HashMap, LruHashMap, PerCpuArray},
};
use skiff_datapath_abi::{
    AffinityKey, AffinityValue, Backend, BindProtection, CtKey, CtValue, DropReason, LbCounter,
    MasqCounter, MasqIface, NodeConfig, PacketClass, ServiceKey, ServiceOptions, ServiceValue,
    SlotKey, SockLbCounter, SockRevKey, SockRevValue, SourceRangeKey, TrafficCounter,
};

/// Packets and bytes per [`PacketClass`], per CPU (no atomics on the fast path).
#[map]
pub static SKIFF_STATS_V1: PerCpuArray<TrafficCounter> =
    PerCpuArray::with_max_entries(PacketClass::COUNT, 0);

/// Dropped packets per [`DropReason`], per CPU.
#[map]
pub static SKIFF_DROPS_V2: PerCpuArray<u64> = PerCpuArray::with_max_entries(DropReason::COUNT, 0);

/// Service frontends.
#[map]
pub static SKIFF_SVC_V1: HashMap<ServiceKey, ServiceValue> = HashMap::with_max_entries(65536, 0);

/// Backend slots of each service.
#[map]
pub static SKIFF_SLOT_V1: HashMap<SlotKey, u32> = HashMap::with_max_entries(262144, 0);

/// Backends by id.
#[map]
pub static SKIFF_BE_V1: HashMap<u32, Backend> = HashMap::with_max_entries(65536, 0);

/// Socket reverse translations (LRU: a socket that closes leaves its entry to age out).
#[map]
pub static SKIFF_SKREV_V1: LruHashMap<SockRevKey, SockRevValue> =
    LruHashMap::with_max_entries(262144, 0);

/// Socket-LB events per [`SockLbCounter`], per CPU.
#[map]
pub static SKIFF_SKSTAT_V1: PerCpuArray<u64> =
    PerCpuArray::with_max_entries(SockLbCounter::COUNT, 0);

/// Connection tracking of per-packet translated flows, both directions.
#[map]
pub static SKIFF_CT_V1: LruHashMap<CtKey, CtValue> = LruHashMap::with_max_entries(262144, 0);

/// This node's settings, written by the agent at start.
#[map]
pub static SKIFF_CFG_V1: Array<NodeConfig> = Array::with_max_entries(1, 0);

/// Traffic per service id. Ids are allocated smallest-free, so they stay below the number
/// of services; ids past the end are simply not counted.
#[map]
pub static SKIFF_SVCST_V1: PerCpuArray<LbCounter> = PerCpuArray::with_max_entries(16384, 0);

/// Traffic per backend id.
#[map]
pub static SKIFF_BEST_V1: PerCpuArray<LbCounter> = PerCpuArray::with_max_entries(16384, 0);

/// Interface roles by ifindex (`iface_flags`), written by the agent when it attaches.
#[map]
pub static SKIFF_IFACE_V1: HashMap<u32, u32> = HashMap::with_max_entries(1024, 0);

/// Allowed source ranges per service id (loadBalancerSourceRanges).
#[map]
pub static SKIFF_SRCRNG_V1: LpmTrie<SourceRangeKey, u8> = LpmTrie::with_max_entries(16384, 0);

/// Per-service options (session affinity timeout).
#[map]
pub static SKIFF_SVCOPT_V1: HashMap<u32, ServiceOptions> = HashMap::with_max_entries(65536, 0);

/// Session affinity: client -> backend, per service.
#[map]
pub static SKIFF_AFFIN_V1: LruHashMap<AffinityKey, AffinityValue> =
    LruHashMap::with_max_entries(65536, 0);

/// NodePort bind protection settings.
#[map]
pub static SKIFF_BINDP_V1: Array<BindProtection> = Array::with_max_entries(1, 0);

/// This node's addresses.
#[map]
pub static SKIFF_NODEIP_V1: HashMap<u32, u8> = HashMap::with_max_entries(256, 0);

/// Maglev lookup tables (backend ids). Sized by the agent (tables × TABLE_SIZE); the
/// default here is one table so an agent without Maglev services pays 64 KiB.
#[map]
pub static SKIFF_MAGLEV_V1: Array<u32> =
    Array::with_max_entries(skiff_datapath_abi::maglev::TABLE_SIZE, 0);

/// Ports exempt from bind protection (the agent's health-check node ports).
#[map]
pub static SKIFF_BINDOK_V1: HashMap<u32, u8> = HashMap::with_max_entries(4096, 0);

/// XDP outcomes per `XdpCounter`, per CPU.
#[map]
pub static SKIFF_XDPST_V1: PerCpuArray<u64> =
    PerCpuArray::with_max_entries(skiff_datapath_abi::XdpCounter::COUNT, 0);

/// Masquerading uplinks by ifindex, written by the agent when it attaches.
#[map]
pub static SKIFF_MASQ_V1: HashMap<u32, MasqIface> = HashMap::with_max_entries(64, 0);

/// Destinations exempt from masquerade (cluster CIDR, service CIDR, configured ranges).
#[map]
pub static SKIFF_NOMASQ_V1: LpmTrie<u32, u8> = LpmTrie::with_max_entries(256, 0);

/// Masquerade events per `MasqCounter`, per CPU.
#[map]
pub static SKIFF_MASQST_V1: PerCpuArray<u64> = PerCpuArray::with_max_entries(MasqCounter::COUNT, 0);

/// Conntrack events of service flows per `FlowCounter`, per CPU.
#[map]
pub static SKIFF_FLOWST_V1: PerCpuArray<u64> =
    PerCpuArray::with_max_entries(skiff_datapath_abi::FlowCounter::COUNT, 0);
