//! skiff's eBPF programs. This file holds only entry points: each names its hook and
//! direction, calls a `try_*` function returning `Result<Verdict, DropReason>`, and turns an
//! error into a counted drop. No entry point ever turns an error into "pass".
#![no_std]
#![no_main]

mod counters;
mod ct;
mod icmp;
mod lb;
mod maps;
mod masq;
mod nat;
mod parse;
mod redirect;
mod reject;
mod service;
mod sock;
mod verdict;
mod xdp;

use aya_ebpf::{
    bindings::xdp_action,
    macros::{cgroup_sock, cgroup_sock_addr, classifier, xdp},
    programs::{SockAddrContext, SockContext, TcContext, XdpContext},
};
use skiff_datapath_abi::DropReason;
use verdict::Verdict;

/// Hook: tc ingress (TCX or clsact) on node-facing interfaces and on the host side of pod
/// interfaces. Direction: packets arriving at the node (from the wire or from a pod).
///
/// Parses Ethernet/IPv4/TCP/UDP (malformed IPv4 is dropped with a counted reason), counts
/// each packet by class, then translates: replies of translated flows back to their
/// frontend, known flows to their backend, new flows to a frontend to a chosen backend
/// (or a TCP RST / ICMP port unreachable when the service has no usable backend).
#[classifier]
pub fn skiff_tc_ingress(ctx: TcContext) -> i32 {
    match try_tc_ingress(&ctx) {
        Ok(action) => action,
        Err(reason) => {
            counters::count_drop(reason);
            Verdict::Drop.tc_action()
        }
    }
}

fn try_tc_ingress(ctx: &TcContext) -> Result<i32, DropReason> {
    let packet = parse::parse(ctx)?;
    counters::count_packet(packet.class, ctx.len());
    service::ingress(ctx, &packet)
}

/// Hook: tc egress on node-facing interfaces. Direction: packets leaving the node.
/// Reverse-translates replies of translated flows that no skiff ingress hook saw (their
/// backend sits behind an interface skiff does not manage), and masquerades pod traffic
/// to the outside on masquerading uplinks. Never drops valid traffic.
#[classifier]
pub fn skiff_tc_egress(ctx: TcContext) -> i32 {
    match try_tc_egress(&ctx) {
        Ok(action) => action,
        Err(reason) => {
            counters::count_drop(reason);
            Verdict::Drop.tc_action()
        }
    }
}

fn try_tc_egress(ctx: &TcContext) -> Result<i32, DropReason> {
    match parse::parse(ctx) {
        Ok(packet) => service::egress(ctx, &packet),
        // On a masquerading uplink a malformed IPv4 packet may be a pod's with its pod
        // address, which must not leak untranslated: dropped and counted. (The host's
        // own stack never builds one; a raw socket that does gets the drop counted.)
        Err(reason) if masq::uplink(ctx).is_some() => Err(reason),
        // Elsewhere malformed packets leaving the node are the stack's own; not ours to
        // judge.
        Err(_) => Ok(Verdict::Pass.tc_action()),
    }
}

/// Hook: cgroup v2 `connect4`, for every socket of processes in the attached cgroup
/// (host processes and pods). Direction: outgoing connect(). TCP and connected UDP to a
/// frontend are pointed at a backend once; no per-packet work follows.
#[cgroup_sock_addr(connect4)]
pub fn skiff_sock_connect4(ctx: SockAddrContext) -> i32 {
    sock::translate(&ctx, false).sock_action()
}

/// Hook: cgroup v2 `sendmsg4`. Direction: outgoing sendmsg()/sendto() with a destination
/// on an unconnected UDP socket. Same translation as connect4, per datagram.
#[cgroup_sock_addr(sendmsg4)]
pub fn skiff_sock_sendmsg4(ctx: SockAddrContext) -> i32 {
    sock::translate(&ctx, true).sock_action()
}

/// Hook: cgroup v2 `recvmsg4`. Direction: incoming UDP datagram delivered to recvmsg(); a
/// reply from a backend is shown as coming from the frontend. Must always return 1.
#[cgroup_sock_addr(recvmsg4)]
pub fn skiff_sock_recvmsg4(ctx: SockAddrContext) -> i32 {
    sock::reverse(&ctx).sock_action()
}

/// Hook: cgroup v2 `getpeername4`. The peer of a translated socket is the frontend.
/// Must always return 1.
#[cgroup_sock_addr(getpeername4)]
pub fn skiff_sock_getpeername4(ctx: SockAddrContext) -> i32 {
    sock::reverse(&ctx).sock_action()
}

/// Hook: cgroup v2 `post_bind4`. Direction: a bind() that has just succeeded in the
/// stack. Undoes it with EADDRINUSE when the port is in the NodePort range on a node
/// address (NodePort bind protection).
#[cgroup_sock(post_bind4)]
pub fn skiff_sock_post_bind4(ctx: SockContext) -> i32 {
    sock::post_bind(&ctx).sock_action()
}

/// Hook: XDP on node-facing interfaces (opt-in, native or generic). Direction: frames
/// arriving from the wire, before the stack. Translates and forwards NodePort /
/// LoadBalancer / ExternalIP flows to remote backends (and their SNATed replies); passes
/// everything else to tc.
#[xdp]
pub fn skiff_xdp(ctx: XdpContext) -> u32 {
    match xdp::try_xdp(&ctx) {
        Ok(action) => {
            let event = if action == xdp_action::XDP_REDIRECT {
                skiff_datapath_abi::XdpCounter::Redirected
            } else {
                skiff_datapath_abi::XdpCounter::Passed
            };
            if let Some(c) = maps::SKIFF_XDPST_V1.get_ptr_mut(event as u32) {
                // SAFETY: this CPU's slot, valid for this run.
                unsafe { *c += 1 };
            }
            action
        }
        Err(reason) => {
            counters::count_drop(reason);
            xdp_action::XDP_DROP
        }
    }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // The verifier rejects any reachable panic path, so this is never executed; it only
    // satisfies no_std.
    loop {}
}

/// Some helpers (and later bpf_sock_destroy-style kfuncs) are GPL-only: the program is
/// dual-licensed like Cilium's datapath.
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual BSD/GPL\0";
