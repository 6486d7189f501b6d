//! What a program decided to do, independent of the hook's return codes.

use aya_ebpf::{
    bindings::{TC_ACT_OK, TC_ACT_SHOT},
    helpers::bpf_set_retval,
};

/// ECONNREFUSED (include/uapi/asm-generic/errno.h).
const ECONNREFUSED: i32 = 111;
/// EADDRINUSE (include/uapi/asm-generic/errno.h).
const EADDRINUSE: i32 = 98;

/// A program's decision. Drops that have a reason travel as `Err(DropReason)` instead, so
/// they are always counted; `Drop` here is only the code an entry point returns for them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Let the kernel continue.
    Pass,
    /// Discard the packet.
    Drop,
    /// Socket hooks: fail the system call with ECONNREFUSED (a service with no usable
    /// backend is refused at once, never black-holed).
    Refuse,
    /// Socket hooks: fail bind() with EADDRINUSE (the port belongs to a NodePort).
    Taken,
}

impl Verdict {
    /// The return code for a tc (TCX or cls_bpf direct-action) program.
    #[inline(always)]
    pub fn tc_action(self) -> i32 {
        match self {
            Verdict::Pass => TC_ACT_OK,
            Verdict::Drop | Verdict::Refuse | Verdict::Taken => TC_ACT_SHOT,
        }
    }

    /// The return code for a cgroup sock_addr program: 1 allows the call, 0 rejects it
    /// with the errno set by bpf_set_retval (Linux >= 5.18; EPERM without it).
    #[inline(always)]
    pub fn sock_action(self) -> i32 {
        match self {
            Verdict::Pass => 1,
            Verdict::Drop | Verdict::Refuse => {
                // SAFETY: bpf_set_retval is available to all cgroup program types.
                unsafe { bpf_set_retval(-ECONNREFUSED) };
                0
            }
            Verdict::Taken => {
                // SAFETY: as above.
                unsafe { bpf_set_retval(-EADDRINUSE) };
                0
            }
        }
    }
}
