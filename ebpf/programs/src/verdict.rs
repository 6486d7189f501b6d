//! What a program decided to do with a packet, independent of the hook's return codes.

use aya_ebpf::bindings::{TC_ACT_OK, TC_ACT_SHOT};

/// A program's decision. Drops that have a reason travel as `Err(DropReason)` instead, so
/// they are always counted; `Drop` here is only the code an entry point returns for them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Let the kernel continue with the packet.
    Pass,
    /// Discard the packet.
    Drop,
}

impl Verdict {
    /// The return code for a tc (TCX or cls_bpf direct-action) program.
    #[inline(always)]
    pub fn tc_action(self) -> i32 {
        match self {
            Verdict::Pass => TC_ACT_OK,
            Verdict::Drop => TC_ACT_SHOT,
        }
    }
}
