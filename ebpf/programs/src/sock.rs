//! Socket-level load balancing (cgroup v2 sock_addr hooks): a connect() or sendmsg() to a
//! service frontend is rewritten to a backend before the kernel routes anything, so an
//! established flow costs nothing per packet. The reverse map lets recvmsg() and
//! getpeername() show the frontend the application asked for.
//!
//! Context fields are read and written with volatile 32-bit accesses: the verifier only
//! accepts full-width stores to `user_ip4`/`user_port`, and LLVM would otherwise narrow
//! `user_port` (a port in its low 16 bits) to a 16-bit access.

use aya_ebpf::{
    helpers::{bpf_get_netns_cookie, bpf_get_socket_cookie},
    programs::{SockAddrContext, SockContext},
    EbpfContext as _,
};
use skiff_datapath_abi::{
    affinity_kind, proto, ServiceKey, SockLbCounter, SockRevKey, SockRevValue,
};

use crate::{
    counters::count_sock,
    lb::{self, Choice},
    maps::{SKIFF_BINDOK_V1, SKIFF_BINDP_V1, SKIFF_NODEIP_V1, SKIFF_SKREV_V1},
    verdict::Verdict,
};

#[inline(always)]
fn user_ip4(ctx: &SockAddrContext) -> u32 {
    // SAFETY: `sock_addr` is the context pointer the kernel passed to this program.
    unsafe { core::ptr::read_volatile(&(*ctx.sock_addr).user_ip4) }
}

#[inline(always)]
fn user_port(ctx: &SockAddrContext) -> u16 {
    // SAFETY: as above; the port sits in the low 16 bits, network byte order.
    unsafe { core::ptr::read_volatile(&(*ctx.sock_addr).user_port) as u16 }
}

#[inline(always)]
fn protocol(ctx: &SockAddrContext) -> u8 {
    // SAFETY: as above.
    unsafe { core::ptr::read_volatile(&(*ctx.sock_addr).protocol) as u8 }
}

#[inline(always)]
fn set_dest(ctx: &SockAddrContext, addr: u32, port: u16) {
    // SAFETY: these hooks may write user_ip4/user_port (32-bit stores).
    unsafe {
        core::ptr::write_volatile(&mut (*ctx.sock_addr).user_ip4, addr);
        core::ptr::write_volatile(&mut (*ctx.sock_addr).user_port, u32::from(port));
    }
}

#[inline(always)]
fn cookie(ctx: &SockAddrContext) -> u64 {
    // SAFETY: bpf_get_socket_cookie is allowed for sock_addr programs.
    unsafe { bpf_get_socket_cookie(ctx.as_ptr()) }
}

/// connect4 and sendmsg4: translate a frontend to a backend, or refuse when it has none.
#[inline(always)]
pub fn translate(ctx: &SockAddrContext, only_udp: bool) -> Verdict {
    let proto = protocol(ctx);
    if proto != proto::TCP && proto != proto::UDP {
        return Verdict::Pass;
    }
    if only_udp && proto != proto::UDP {
        return Verdict::Pass;
    }
    let key = ServiceKey {
        addr: user_ip4(ctx),
        port: user_port(ctx),
        proto,
        scope: 0,
    };
    let Some(svc) = lb::lookup(&key) else {
        return Verdict::Pass;
    };
    // SAFETY: bpf_get_netns_cookie is allowed for sock_addr programs (Linux >= 5.7).
    let netns = unsafe { bpf_get_netns_cookie(ctx.as_ptr()) };
    match lb::choose_sticky(&svc, netns, affinity_kind::NETNS, None) {
        Choice::NoBackend { .. } => {
            count_sock(SockLbCounter::NoBackend);
            Verdict::Refuse
        }
        Choice::Inconsistent => {
            count_sock(SockLbCounter::InconsistentMaps);
            Verdict::Pass
        }
        Choice::Backend {
            service_id,
            backend_id,
            backend,
        } => {
            crate::counters::count_lb(service_id, backend_id, true, 0);
            let rev_key = SockRevKey {
                cookie: cookie(ctx),
                addr: backend.addr,
                port: backend.port,
                _pad: 0,
            };
            let rev = SockRevValue {
                addr: key.addr,
                port: key.port,
                _pad: 0,
                service_id,
            };
            if SKIFF_SKREV_V1.insert(rev_key, rev, 0).is_err() {
                count_sock(SockLbCounter::ReverseUpdateFailed);
            }
            set_dest(ctx, backend.addr, backend.port);
            count_sock(SockLbCounter::Translated);
            Verdict::Pass
        }
    }
}

/// recvmsg4 and getpeername4: show the frontend instead of the backend.
#[inline(always)]
pub fn reverse(ctx: &SockAddrContext) -> Verdict {
    let key = SockRevKey {
        cookie: cookie(ctx),
        addr: user_ip4(ctx),
        port: user_port(ctx),
        _pad: 0,
    };
    // SAFETY: value copied out under the lookup's RCU protection.
    if let Some(rev) = unsafe { SKIFF_SKREV_V1.get(key).copied() } {
        set_dest(ctx, rev.addr, rev.port);
        count_sock(SockLbCounter::ReverseTranslated);
    }
    Verdict::Pass
}

/// post_bind4: refuse a bind of a NodePort-range port on a node address or the wildcard.
#[inline(always)]
pub fn post_bind(ctx: &SockContext) -> Verdict {
    let Some(cfg) = SKIFF_BINDP_V1.get(0).copied() else {
        return Verdict::Pass;
    };
    if cfg.enabled == 0 {
        return Verdict::Pass;
    }
    // SAFETY: reading fields of the context the kernel passed (4-byte loads).
    let (port, addr) = unsafe {
        (
            core::ptr::read_volatile(&(*ctx.sock).src_port),
            core::ptr::read_volatile(&(*ctx.sock).src_ip4),
        )
    };
    // src_port is host byte order in struct bpf_sock.
    if port < u32::from(cfg.port_min) || port > u32::from(cfg.port_max) {
        return Verdict::Pass;
    }
    // SAFETY: value copied out under the lookup's RCU protection.
    if unsafe { SKIFF_BINDOK_V1.get(port) }.is_some() {
        return Verdict::Pass;
    }
    // SAFETY: value copied out under the lookup's RCU protection.
    if addr == 0 || unsafe { SKIFF_NODEIP_V1.get(addr) }.is_some() {
        Verdict::Taken
    } else {
        Verdict::Pass
    }
}
