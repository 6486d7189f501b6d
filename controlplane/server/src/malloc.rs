//! glibc malloc settings the server applies to itself before it starts any thread.
//!
//! Why: glibc gives threads that allocate at the same time arenas of their own, up to 8
//! per core, and memory freed in an arena stays with that arena (only the free top of each
//! heap goes back to the kernel). The API server's store work runs on tokio's blocking
//! pool (every redb read and write is a `spawn_blocking`, on whichever of up to 512 threads
//! is idle), so over time most arenas hold the high-water mark of some burst: a 10k-pod
//! LIST from the store, a batch of creates. Measured with `cargo xtask bench apiserver`
//! (BENCHMARKS.md, API server section), that was the largest part of the redb server's
//! resident memory above the etcd one's, whose store calls are async gRPC on the two
//! worker threads.
//!
//! What: at most [`ARENAS`] arenas (the main one plus one), so freed memory is reused by
//! the next burst instead of being held per thread; and a fixed mmap threshold
//! ([`MMAP_THRESHOLD`]) so that large, short-lived buffers (a LIST response of 10k pods is
//! ~15 MB) are mapped and unmapped instead of raising glibc's dynamic threshold and then
//! staying in a heap. An operator who sets `MALLOC_ARENA_MAX`, `MALLOC_MMAP_THRESHOLD_` or
//! `GLIBC_TUNABLES` keeps their own settings: glibc applied those at startup and this
//! leaves malloc alone.

/// Arenas glibc may create (its default on 64-bit: 8 per core).
pub const ARENAS: i32 = 2;
/// Allocations of at least this many bytes get their own mapping, returned on free.
pub const MMAP_THRESHOLD: i32 = 1024 * 1024;

/// Environment variables through which an operator configures glibc malloc.
const OPERATOR_VARS: [&str; 3] = [
    "MALLOC_ARENA_MAX",
    "MALLOC_MMAP_THRESHOLD_",
    "GLIBC_TUNABLES",
];

/// Whether the operator configured malloc (`is_set` tells whether a variable is set).
fn operator_configured(is_set: impl Fn(&str) -> bool) -> bool {
    OPERATOR_VARS.iter().any(|v| is_set(v))
}

/// Applies [`ARENAS`] and [`MMAP_THRESHOLD`] unless the operator configured malloc. Call
/// first thing in `main`, before any thread exists (glibc fixes the arena limit when the
/// first thread needs an arena).
pub fn configure() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        if operator_configured(|v| std::env::var_os(v).is_some()) {
            return;
        }
        // SAFETY: mallopt only sets allocator parameters; no other thread is running yet.
        // It returns 0 on an invalid value, which these constants are not.
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, ARENAS);
            libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn any_operator_setting_leaves_malloc_alone() {
        assert!(!operator_configured(|_| false));
        for var in OPERATOR_VARS {
            assert!(operator_configured(|v| v == var), "{var}");
        }
        assert!(!operator_configured(|v| v == "MALLOC_TOP_PAD_"));
    }
}
