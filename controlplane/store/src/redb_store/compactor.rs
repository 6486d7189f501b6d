//! The redb store's background compactor: automatic compaction off the write path.
//!
//! Why: compaction deletes up to [`super::COMPACT_CHUNK`] revisions' rows per transaction,
//! and a run can be many chunks. Run inside the write that crossed the `compact_every`
//! boundary (as before), that write's answer waited for the whole run, and every write
//! queued behind it waited for each chunk's commit and fsync. Now a write only records the
//! target ([`Compactor::request`], a mutex and a condvar signal) and one thread per store
//! compacts. Its chunks still take redb's single write transaction in turn with the
//! writers' group commits (redb has one writer at a time), so a write can wait for at most
//! one chunk; the chunks before the last commit without an fsync and the compactor steps
//! aside while writes are queued (see [`super::Shared::compact`]).
//!
//! The thread holds the store weakly, so dropping the last [`super::RedbStore`] clone ends
//! it; that drop joins the thread (unless it happens on the compactor thread itself, when
//! a run held the last reference), so the file can be opened again right after.

use std::sync::{Arc, Condvar, Mutex, Weak};
use std::thread::JoinHandle;

use super::{lock, Revision, Shared};

/// What the writers asked for, and whether the store is gone.
#[derive(Default)]
struct Request {
    /// The highest target requested so far.
    target: Revision,
    shutdown: bool,
}

#[derive(Default)]
struct Signal {
    request: Mutex<Request>,
    wake: Condvar,
}

/// Handle to the compactor thread of one store (a field of [`Shared`]).
pub(super) struct Compactor {
    signal: Arc<Signal>,
    thread: Option<JoinHandle<()>>,
}

impl Compactor {
    /// Starts the thread for the store behind `shared` (which may not be complete yet: the
    /// thread only looks at it once a target is requested).
    pub(super) fn spawn(shared: Weak<Shared>) -> std::io::Result<Compactor> {
        let signal = Arc::new(Signal::default());
        let thread = std::thread::Builder::new()
            .name("redb-compactor".into())
            .spawn({
                let signal = signal.clone();
                move || run(&signal, &shared)
            })?;
        Ok(Compactor {
            signal,
            thread: Some(thread),
        })
    }

    /// Asks for the log to be compacted to `target` (a no-op when a higher target is
    /// already pending or done). Returns at once.
    pub(super) fn request(&self, target: Revision) {
        let mut request = lock(&self.signal.request);
        if target > request.target {
            request.target = target;
            self.signal.wake.notify_one();
        }
    }
}

impl Drop for Compactor {
    fn drop(&mut self) {
        lock(&self.signal.request).shutdown = true;
        self.signal.wake.notify_one();
        if let Some(thread) = self.thread.take() {
            // The store is dropped on the compactor thread when a run held the last
            // reference: that thread ends by itself after this (it cannot join itself).
            if thread.thread().id() != std::thread::current().id() {
                let _ = thread.join();
            }
        }
    }
}

fn run(signal: &Signal, shared: &Weak<Shared>) {
    let mut done: Revision = 0;
    loop {
        let target = {
            let mut request = lock(&signal.request);
            while !request.shutdown && request.target <= done {
                request = signal.wake.wait(request).unwrap_or_else(|e| e.into_inner());
            }
            if request.shutdown {
                return;
            }
            request.target
        };
        let Some(shared) = shared.upgrade() else {
            return;
        };
        if let Err(e) = shared.compact(target) {
            tracing::warn!(error = %e, path = %shared.path.display(), "automatic compaction failed");
        }
        // A failed run is not retried at this target: the next request (every
        // `compact_every` writes) asks again with a higher one.
        done = target;
    }
}
