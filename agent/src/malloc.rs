//! Handing the heap's free pages back to the kernel after a full sync (agent memory,
//! issue 7).
//!
//! Why: a full sync (the initial list, a relist, the periodic resync) allocates far more
//! than it keeps: pages of list objects decoded and projected, a second model built
//! beside the first, every group's endpoint list cloned for the reconciler. What it keeps
//! is hundreds of thousands of small, long-lived allocations spread over the whole heap
//! that burst produced, so the freed memory between them is in the middle of glibc's
//! heaps, where its automatic trimming (only the top of a heap, above
//! `M_TRIM_THRESHOLD`) never reaches: that memory stayed resident, and tuning the
//! thresholds or the arena count changed nothing (BENCHMARKS.md). `malloc_trim(0)`
//! walks every arena and returns each whole free page with `MADV_DONTNEED` (glibc ≥ 2.8);
//! the next burst faults them in again.
//!
//! Cost: one walk of the free chunks, a few milliseconds at 10k Services, after a sync
//! that took seconds; incremental syncs (the latency path) never call it.

/// Returns the heap's free pages to the kernel (glibc; a no-op elsewhere).
pub fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only manipulates glibc's own free lists and page mappings; it
    // is thread-safe (it takes each arena's lock).
    unsafe {
        libc::malloc_trim(0);
    }
}
