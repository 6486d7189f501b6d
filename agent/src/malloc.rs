//! glibc malloc settings for the agent (agent memory, issue 7): fixed thresholds at
//! start ([`configure`]) and the heap's free pages handed back after a full sync
//! ([`release_free_memory`]).
//!
//! Why fixed thresholds: glibc starts with a 128 KiB mmap threshold, and raises it to the
//! size of every mmapped chunk that is freed (up to 32 MiB), with the trim threshold at
//! twice that. The agent allocates and frees buffers of several MiB (the `/metrics` text
//! of 10k Services is 2.4 MB; per-tick counter reads, list pages): measured at 10k
//! Services, glibc had held up to 17 MB in mmapped chunks (`malloc_stats`: "max mmap
//! bytes"), so after their free every buffer below that size came from the heap, and
//! the heap's top was never trimmed (its threshold had grown past the heap's size). Each
//! transient buffer then left resident pages between the long-lived allocations of the
//! caches, the model and the reconciler. With the thresholds fixed, buffers of
//! [`MMAP_THRESHOLD`] or more are mapped and unmapped (their pages go back at free),
//! and a free top of the heap above it is returned at once.
//!
//! Why one arena: all of the agent's work runs on one thread (a current-thread tokio
//! runtime); the other threads are tokio's blocking pool (name resolution of the API
//! server, log reads for `kubectl logs`), whose allocations are few and small. An arena
//! per such thread would only keep its high-water mark.
//!
//! An operator who sets `MALLOC_ARENA_MAX`, `MALLOC_MMAP_THRESHOLD_`,
//! `MALLOC_TRIM_THRESHOLD_` or `GLIBC_TUNABLES` keeps their own settings: glibc applied
//! them at startup and [`configure`] leaves malloc alone.
//!
//! Why trim after a full sync: a full sync (the initial list, a relist, the periodic
//! resync) allocates far more than it keeps: pages of list objects decoded and projected,
//! a second model built beside the first, every group's endpoint list cloned for the
//! reconciler. What it keeps is hundreds of thousands of small, long-lived allocations
//! spread over the whole heap that burst produced, so the freed memory between them is in
//! the middle of the heap, where automatic trimming (only the top) never reaches.
//! `malloc_trim(0)` walks the arena and returns each whole free page with
//! `MADV_DONTNEED` (glibc ≥ 2.8); the next burst faults them in again. Cost: one walk of
//! the free chunks, a few milliseconds at 10k Services, after a sync that took seconds;
//! incremental syncs (the latency path) never call it.

/// Arenas glibc may create (its default on 64-bit: 8 per core).
pub const ARENAS: i32 = 1;
/// Allocations of at least this many bytes get their own mapping, returned on free; a
/// free top of the heap larger than this is returned too (glibc's initial values, fixed).
pub const MMAP_THRESHOLD: i32 = 128 * 1024;

/// Environment variables through which an operator configures glibc malloc.
const OPERATOR_VARS: [&str; 4] = [
    "MALLOC_ARENA_MAX",
    "MALLOC_MMAP_THRESHOLD_",
    "MALLOC_TRIM_THRESHOLD_",
    "GLIBC_TUNABLES",
];

/// Whether the operator configured malloc (`is_set` tells whether a variable is set).
fn operator_configured(is_set: impl Fn(&str) -> bool) -> bool {
    OPERATOR_VARS.iter().any(|v| is_set(v))
}

/// Applies [`ARENAS`] and [`MMAP_THRESHOLD`] (as the mmap and the trim threshold) unless
/// the operator configured malloc. Call first thing in `main`, before any thread exists
/// (glibc fixes the arena limit when a second thread first needs an arena).
pub fn configure() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        if operator_configured(|v| std::env::var_os(v).is_some()) {
            return;
        }
        // SAFETY: mallopt only sets allocator parameters; no other thread is running yet.
        // It returns 0 on an invalid value, which these constants are not. Setting either
        // threshold turns off glibc's dynamic adjustment of both.
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, ARENAS);
            libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD);
            libc::mallopt(libc::M_TRIM_THRESHOLD, MMAP_THRESHOLD);
        }
    }
}

/// Returns the heap's free pages to the kernel (glibc; a no-op elsewhere).
pub fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only manipulates glibc's own free lists and page mappings; it
    // is thread-safe (it takes each arena's lock).
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Free bytes in glibc's arenas (`mallinfo2().fordblks`; 0 elsewhere).
fn free_bytes() -> usize {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallinfo2 only reads the arenas' statistics (under their locks).
    unsafe {
        libc::mallinfo2().fordblks
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    0
}

/// Hands free heap pages back while the agent is idle, as Go's background scavenger and
/// jemalloc's decay do (agent memory, issue 7).
///
/// Why: the trim after a full sync covers the big burst, but incremental syncs, ticks
/// and `/metrics` scrapes free memory too, and glibc only returns the top of the heap.
/// Measured at 10k Services after 200 changes and 30 s idle: 1.2 MB of whole free pages
/// inside the heap, and run-to-run idle growth of 0.6 to 2.7 MB. A trim walks the free
/// chunks (0.6 to 6 ms at that size) and runs only when the agent went quiet after
/// work, or at most every [`Scavenger::PERIOD`] when free space grew by
/// [`Scavenger::SLACK`], so a busy sync loop never pays for it.
#[derive(Debug)]
pub struct Scavenger {
    /// The last sync since the last trim, if any.
    active_at: Option<std::time::Instant>,
    last_trim: std::time::Instant,
    free_after_trim: usize,
}

impl Scavenger {
    /// Quiet time after the last sync before its garbage is returned.
    pub const QUIET: std::time::Duration = std::time::Duration::from_secs(5);
    /// Shortest interval between trims that no sync prompted.
    pub const PERIOD: std::time::Duration = std::time::Duration::from_secs(60);
    /// Growth of free heap that prompts such a trim.
    pub const SLACK: usize = 1 << 20;

    pub fn new(now: std::time::Instant) -> Scavenger {
        Scavenger {
            active_at: None,
            last_trim: now,
            free_after_trim: free_bytes(),
        }
    }

    /// A sync ran.
    pub fn active(&mut self, now: std::time::Instant) {
        self.active_at = Some(now);
    }

    /// Whether a trim is due at `now`; `free` (the arenas' free bytes) is asked only once
    /// a period has passed without one, since `mallinfo2` walks the free lists.
    fn due(&mut self, now: std::time::Instant, free: impl FnOnce() -> usize) -> bool {
        let settled = self
            .active_at
            .is_some_and(|t| now.saturating_duration_since(t) >= Self::QUIET);
        if settled {
            return true;
        }
        if now.saturating_duration_since(self.last_trim) < Self::PERIOD {
            return false;
        }
        if free() >= self.free_after_trim.saturating_add(Self::SLACK) {
            return true;
        }
        // Not grown enough: look again a period from now.
        self.last_trim = now;
        false
    }

    /// On a tick: trims if due; returns whether it did.
    pub fn tick(&mut self, now: std::time::Instant) -> bool {
        if !self.due(now, free_bytes) {
            return false;
        }
        release_free_memory();
        self.active_at = None;
        self.last_trim = now;
        self.free_after_trim = free_bytes();
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scavenger_trims_once_quiet_after_work_or_when_free_space_drifts_up() {
        let t0 = std::time::Instant::now();
        let s = |active_at, free_after_trim| Scavenger {
            active_at,
            last_trim: t0,
            free_after_trim,
        };
        let at = |secs| t0 + std::time::Duration::from_secs(secs);
        let never = || -> usize { panic!("free bytes asked for within a period") };
        // Nothing happened: never due, however much is free, until a period passed; the
        // free lists are not even walked.
        assert!(!s(None, 0).due(at(30), never));
        // Work at 10 s: due 5 s later, not before.
        assert!(!s(Some(at(10)), 0).due(at(14), never));
        assert!(s(Some(at(10)), 0).due(at(15), never));
        // No work, but a period passed and free space grew by the slack (not less).
        assert!(s(None, 4 << 20).due(at(60), || 5 << 20));
        assert!(!s(None, 4 << 20).due(at(59), never));
        let mut quiet = s(None, 4 << 20);
        assert!(!quiet.due(at(60), || (5 << 20) - 1));
        // Checked at 60 s: the next look is a period later.
        assert!(!quiet.due(at(119), never));
        assert!(quiet.due(at(120), || 5 << 20));
    }

    #[test]
    fn any_operator_setting_leaves_malloc_alone() {
        assert!(!operator_configured(|_| false));
        for var in OPERATOR_VARS {
            assert!(operator_configured(|v| v == var), "{var}");
        }
        assert!(!operator_configured(|v| v == "MALLOC_TOP_PAD_"));
    }
}
