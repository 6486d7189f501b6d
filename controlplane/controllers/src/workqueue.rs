//! A deduplicating work queue with client-go's `workqueue` semantics, for controllers whose
//! primary key must be reconciled even after its object is gone (the EndpointSlice
//! controller cleans up after a deleted Service; [`kube::runtime::Controller`] only calls
//! the reconciler for objects still in its store).
//!
//! The rules (client-go `workqueue.Type`):
//! - a key queued twice before a worker takes it is processed once (`dirty` set);
//! - a key is never processed by two workers at once: added while being processed, it is
//!   queued again when the worker calls [`WorkQueue::done`] (`processing` set);
//! - [`WorkQueue::add_after`] re-adds a key after a delay (backoff of failed keys);
//! - [`WorkQueue::get_timed`] also says how long the key waited since it was first queued
//!   (client-go's `workqueue_queue_duration_seconds`), so a slow path can be told apart
//!   from a long queue.

use std::{
    collections::{HashMap, HashSet, VecDeque},
    hash::Hash,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use tokio::sync::Notify;

#[derive(Debug)]
struct State<K> {
    queue: VecDeque<K>,
    /// Keys waiting, with when each was first queued since it was last handed out.
    dirty: HashMap<K, Instant>,
    processing: HashSet<K>,
}

#[derive(Debug)]
pub struct WorkQueue<K> {
    state: Mutex<State<K>>,
    ready: Notify,
}

impl<K: Clone + Eq + Hash + Send + Sync + 'static> WorkQueue<K> {
    pub fn new() -> Arc<WorkQueue<K>> {
        Arc::new(WorkQueue {
            state: Mutex::new(State {
                queue: VecDeque::new(),
                dirty: HashMap::new(),
                processing: HashSet::new(),
            }),
            ready: Notify::new(),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State<K>> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues `key` unless it is already waiting.
    pub fn add(&self, key: K) {
        let mut s = self.lock();
        if s.dirty.contains_key(&key) {
            return;
        }
        s.dirty.insert(key.clone(), Instant::now());
        if !s.processing.contains(&key) {
            s.queue.push_back(key);
            drop(s);
            self.ready.notify_one();
        }
    }

    /// Queues `key` after `delay`.
    pub fn add_after(self: &Arc<Self>, key: K, delay: Duration) {
        let q = Arc::clone(self);
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            q.add(key);
        });
    }

    /// Waits for the next key; the caller must call [`WorkQueue::done`] with it.
    pub async fn get(&self) -> K {
        self.get_timed().await.0
    }

    /// [`Self::get`], and how long the key waited since it was first queued.
    pub async fn get_timed(&self) -> (K, Duration) {
        loop {
            {
                let mut s = self.lock();
                if let Some(k) = s.queue.pop_front() {
                    let since = s.dirty.remove(&k);
                    s.processing.insert(k.clone());
                    return (k, since.map_or(Duration::ZERO, |t| t.elapsed()));
                }
            }
            // `notify_one` stores a permit when nobody waits, so an add between the
            // check above and this await is not lost.
            self.ready.notified().await;
        }
    }

    /// Marks `key` processed; re-queues it if it was added meanwhile.
    pub fn done(&self, key: &K) {
        let mut s = self.lock();
        s.processing.remove(key);
        if s.dirty.contains_key(key) {
            s.queue.push_back(key.clone());
            drop(s);
            self.ready.notify_one();
        }
    }

    /// Keys waiting (not counting those being processed).
    pub fn len(&self) -> usize {
        self.lock().queue.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn deduplicates_and_never_hands_out_a_key_twice_at_once() {
        let q = WorkQueue::<String>::new();
        q.add("a".into());
        q.add("a".into());
        q.add("b".into());
        assert_eq!(q.len(), 2, "a queued twice waits once");
        let a = q.get().await;
        assert_eq!(a, "a");
        // Added while being processed: not handed to another worker ...
        q.add("a".into());
        assert_eq!(q.get().await, "b");
        assert!(q.is_empty());
        let second = tokio::time::timeout(Duration::from_millis(50), q.get()).await;
        assert!(second.is_err(), "a is still being processed");
        // ... but queued again once the first worker is done.
        q.done(&a);
        assert_eq!(q.get().await, "a");
    }

    #[tokio::test]
    async fn get_timed_counts_from_the_first_add() {
        let q = WorkQueue::<u32>::new();
        q.add(1);
        std::thread::sleep(Duration::from_millis(30));
        q.add(1); // a repeat does not restart the clock
        let (k, waited) = q.get_timed().await;
        assert_eq!(k, 1);
        assert!(waited >= Duration::from_millis(30), "{waited:?}");
        q.add(1);
        q.done(&1);
        let (_, waited) = q.get_timed().await;
        assert!(
            waited < Duration::from_millis(30),
            "re-queued while processing: {waited:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn add_after_waits_for_the_delay() {
        let q = WorkQueue::<u32>::new();
        q.add_after(7, Duration::from_secs(5));
        tokio::task::yield_now().await;
        assert!(q.is_empty());
        tokio::time::advance(Duration::from_secs(6)).await;
        assert_eq!(
            tokio::time::timeout(Duration::from_secs(1), q.get()).await,
            Ok(7)
        );
    }
}
