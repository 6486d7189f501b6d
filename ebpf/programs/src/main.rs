//! skiff's eBPF programs. This file holds only entry points: each names its hook and
//! direction, calls a `try_*` function returning `Result<Verdict, DropReason>`, and turns an
//! error into a counted drop. No entry point ever turns an error into "pass".
#![no_std]
#![no_main]

mod counters;
mod maps;
mod parse;
mod verdict;

use aya_ebpf::{macros::classifier, programs::TcContext};
use skiff_datapath_abi::DropReason;
use verdict::Verdict;

/// Hook: tc ingress (TCX or clsact) on node-facing interfaces.
/// Direction: packets arriving at the node from the wire.
///
/// Today it parses Ethernet/IPv4/TCP/UDP, counts each packet by class and drops malformed
/// IPv4 with a counted reason. Service translation is built on this parser (Datapath I).
#[classifier]
pub fn skiff_tc_ingress(ctx: TcContext) -> i32 {
    match try_tc_ingress(&ctx) {
        Ok(verdict) => verdict.tc_action(),
        Err(reason) => {
            counters::count_drop(reason);
            Verdict::Drop.tc_action()
        }
    }
}

fn try_tc_ingress(ctx: &TcContext) -> Result<Verdict, DropReason> {
    let packet = parse::parse(ctx)?;
    counters::count_packet(packet.class, ctx.len());
    Ok(Verdict::Pass)
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
