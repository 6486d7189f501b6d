//! Service lookup and backend choice, shared by every hook that translates.

use aya_ebpf::helpers::bpf_get_prandom_u32;
use skiff_datapath_abi::{iface_flags, scope, Backend, ServiceKey, ServiceValue, SlotKey};

use crate::maps::{SKIFF_BE_V1, SKIFF_IFACE_V1, SKIFF_SLOT_V1, SKIFF_SVC_V1};

/// Outcome of choosing a backend for a new flow to a frontend.
pub enum Choice {
    /// Not a service frontend: leave the flow alone.
    NotAService,
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

/// Looks up the frontend and chooses a backend.
#[inline(always)]
pub fn resolve(key: &ServiceKey) -> Choice {
    match lookup(key) {
        Some(svc) => choose(&svc),
        None => Choice::NotAService,
    }
}

/// For traffic from outside the cluster: the EXTERNAL_LOCAL entry of a frontend
/// (externalTrafficPolicy=Local) wins over its cluster-wide entry.
#[inline(always)]
pub fn resolve_external(key: &ServiceKey) -> Choice {
    let local = ServiceKey {
        scope: scope::EXTERNAL_LOCAL,
        ..*key
    };
    match lookup(&local) {
        Some(svc) => choose(&svc),
        None => resolve(key),
    }
}

/// Whether packets arriving on `ifindex` come from outside the cluster.
#[inline(always)]
pub fn is_external(ifindex: u32) -> bool {
    // SAFETY: value copied out under the lookup's RCU protection.
    unsafe { SKIFF_IFACE_V1.get(ifindex).copied() }.is_some_and(|f| f & iface_flags::EXTERNAL != 0)
}
