//! Service lookup and backend choice, shared by every hook that translates.

use aya_ebpf::helpers::bpf_get_prandom_u32;
use aya_ebpf::maps::lpm_trie::Key;
use skiff_datapath_abi::{
    iface_flags, maglev, scope, service_flags, AffinityKey, AffinityValue, Backend, ServiceKey,
    ServiceValue, SlotKey, SourceRangeKey,
};

use crate::maps::{
    SKIFF_AFFIN_V1, SKIFF_BE_V1, SKIFF_IFACE_V1, SKIFF_MAGLEV_V1, SKIFF_SLOT_V1, SKIFF_SRCRNG_V1,
    SKIFF_SVCOPT_V1, SKIFF_SVC_V1,
};

/// Outcome of choosing a backend for a new flow to a frontend.
pub enum Choice {
    /// A frontend with no usable backend: the caller rejects (or, with
    /// `service_flags::LOCAL_DROP`, drops) the flow. Carries the frontend's flags.
    NoBackend { flags: u32 },
    /// A slot or backend was missing: the agent is mid-update (or the maps are corrupt).
    /// The flow proceeds untranslated and the event is counted.
    Inconsistent,
    /// Translate to this backend.
    Backend {
        service_id: u32,
        backend_id: u32,
        backend: Backend,
    },
}

#[inline(always)]
pub fn lookup(key: &ServiceKey) -> Option<ServiceValue> {
    // SAFETY: the value is copied out while the map lookup's RCU protection holds.
    unsafe { SKIFF_SVC_V1.get(key).copied() }
}

/// Uniform random choice over the usable backends of `svc` (ProxyTerminatingEndpoints:
/// terminating-but-serving backends only when no active one exists).
#[inline(always)]
pub fn choose(svc: &ServiceValue) -> Choice {
    let (base, count) = if svc.active > 0 {
        (0u32, u32::from(svc.active))
    } else if svc.terminating > 0 {
        (u32::from(svc.active), u32::from(svc.terminating))
    } else {
        return Choice::NoBackend { flags: svc.flags };
    };
    // SAFETY: helper without preconditions.
    let slot = base + unsafe { bpf_get_prandom_u32() } % count;
    let key = SlotKey {
        service_id: svc.service_id,
        slot,
    };
    // SAFETY: values copied out under the lookup's RCU protection.
    let Some(backend_id) = (unsafe { SKIFF_SLOT_V1.get(key).copied() }) else {
        return Choice::Inconsistent;
    };
    let Some(backend) = (unsafe { SKIFF_BE_V1.get(backend_id).copied() }) else {
        return Choice::Inconsistent;
    };
    Choice::Backend {
        service_id: svc.service_id,
        backend_id,
        backend,
    }
}

/// For traffic from outside the cluster: the EXTERNAL_LOCAL entry of a frontend
/// (externalTrafficPolicy=Local) wins over its cluster-wide entry.
#[inline(always)]
pub fn lookup_external(key: &ServiceKey) -> Option<ServiceValue> {
    let local = ServiceKey {
        scope: scope::EXTERNAL_LOCAL,
        ..*key
    };
    lookup(&local).or_else(|| lookup(key))
}

/// Whether `saddr` may open flows to service `service_id` (loadBalancerSourceRanges).
#[inline(always)]
pub fn source_allowed(service_id: u32, saddr: u32) -> bool {
    let key = Key::new(
        64,
        SourceRangeKey {
            service_id_be: service_id.to_be(),
            addr: saddr,
        },
    );
    SKIFF_SRCRNG_V1.get(key).is_some()
}

/// Maglev: the flow's hash picks an entry of the service's table; every node computes
/// the same table, so every node picks the same backend for the same flow.
#[inline(always)]
pub fn choose_maglev(svc: &ServiceValue, hash: u32) -> Choice {
    // SAFETY: values copied out under the lookups' RCU protection.
    let table =
        unsafe { SKIFF_SVCOPT_V1.get(svc.service_id).copied() }.map_or(0, |o| o.maglev_table);
    if table == 0 {
        return choose(svc);
    }
    let index = (table - 1) * maglev::TABLE_SIZE + hash % maglev::TABLE_SIZE;
    let Some(backend_id) = SKIFF_MAGLEV_V1.get(index).copied() else {
        return Choice::Inconsistent;
    };
    if backend_id == 0 {
        // An empty table: the service has no usable backend.
        return Choice::NoBackend { flags: svc.flags };
    }
    // SAFETY: as above.
    match unsafe { SKIFF_BE_V1.get(backend_id).copied() } {
        Some(backend) => Choice::Backend {
            service_id: svc.service_id,
            backend_id,
            backend,
        },
        None => Choice::Inconsistent,
    }
}

/// [`choose`], honouring session affinity: a client that opened a flow to the service
/// within its timeout goes to the same backend, as long as that backend still exists
/// (the agent purges the entries of a backend that leaves the service).
#[inline(always)]
pub fn choose_sticky(svc: &ServiceValue, client: u64, kind: u32, hash: Option<u32>) -> Choice {
    if svc.flags & service_flags::AFFINITY == 0 {
        return pick(svc, hash);
    }
    // SAFETY: values copied out under the lookups' RCU protection.
    let timeout_ns = u64::from(
        unsafe { SKIFF_SVCOPT_V1.get(svc.service_id).copied() }.map_or(0, |o| o.affinity_timeout_s),
    ) * 1_000_000_000;
    let key = AffinityKey {
        client,
        service_id: svc.service_id,
        kind,
    };
    let now = crate::ct::now();
    if let Some(entry) = SKIFF_AFFIN_V1.get_ptr_mut(key) {
        // SAFETY: pointer from a successful lookup, valid for this run.
        let remembered = unsafe { *entry };
        if now.wrapping_sub(remembered.last_used_ns) <= timeout_ns {
            if let Some(backend) = unsafe { SKIFF_BE_V1.get(remembered.backend_id).copied() } {
                // SAFETY: as above.
                unsafe { (*entry).last_used_ns = now };
                return Choice::Backend {
                    service_id: svc.service_id,
                    backend_id: remembered.backend_id,
                    backend,
                };
            }
        }
    }
    let choice = pick(svc, hash);
    remember(&key, &choice, now);
    choice
}

/// Maglev for services that use it when the caller has a flow hash (the per-packet path;
/// socket LB is east-west and stays random, as in Cilium), random otherwise.
#[inline(always)]
fn pick(svc: &ServiceValue, hash: Option<u32>) -> Choice {
    match hash {
        Some(h) if svc.flags & service_flags::MAGLEV != 0 => choose_maglev(svc, h),
        _ => choose(svc),
    }
}

#[inline(always)]
fn remember(key: &AffinityKey, choice: &Choice, now: u64) {
    if let Choice::Backend { backend_id, .. } = choice {
        let value = AffinityValue {
            backend_id: *backend_id,
            _pad: 0,
            last_used_ns: now,
        };
        // Best effort: without the entry the next flow is balanced afresh.
        let _ = SKIFF_AFFIN_V1.insert(key, value, 0);
    }
}

/// Whether packets arriving on `ifindex` come from outside the cluster.
#[inline(always)]
pub fn is_external(ifindex: u32) -> bool {
    // SAFETY: value copied out under the lookup's RCU protection.
    unsafe { SKIFF_IFACE_V1.get(ifindex).copied() }.is_some_and(|f| f & iface_flags::EXTERNAL != 0)
}
