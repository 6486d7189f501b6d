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
//!
//! A queue made with [`WorkQueue::named`] reports client-go's work-queue metrics (depth,
//! adds, retries, queue and work durations; see [`crate::metrics`]).

use std::{
    collections::{HashMap, VecDeque},
    hash::Hash,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use tokio::sync::Notify;

use crate::metrics::QueueMetrics;
use std::sync::atomic::Ordering;

#[derive(Debug)]
struct State<K> {
    queue: VecDeque<K>,
    /// Keys waiting, with when each was first queued since it was last handed out.
    dirty: HashMap<K, Instant>,
    /// Keys being processed, with when a worker took each (the work duration's start).
    processing: HashMap<K, Instant>,
}

impl<K> State<K> {
    /// Brings the gauges in line with the state (called under the lock after a change).
    fn gauges(&self, m: Option<&QueueMetrics>) {
        if let Some(m) = m {
            m.depth.store(self.queue.len() as i64, Ordering::Relaxed);
            m.processing
                .store(self.processing.len() as i64, Ordering::Relaxed);
        }
    }
}

#[derive(Debug)]
pub struct WorkQueue<K> {
    state: Mutex<State<K>>,
    ready: Notify,
    metrics: Option<Arc<QueueMetrics>>,
}

impl<K: Clone + Eq + Hash + Send + Sync + 'static> WorkQueue<K> {
    pub fn new() -> Arc<WorkQueue<K>> {
        Self::with_metrics(None)
    }

    /// A queue whose metrics are served as `name` (client-go's `workqueue.NewNamed`).
    pub fn named(name: &str) -> Arc<WorkQueue<K>> {
        Self::with_metrics(Some(crate::metrics::queue(name)))
    }

    fn with_metrics(metrics: Option<Arc<QueueMetrics>>) -> Arc<WorkQueue<K>> {
        Arc::new(WorkQueue {
            state: Mutex::new(State {
                queue: VecDeque::new(),
                dirty: HashMap::new(),
                processing: HashMap::new(),
            }),
            ready: Notify::new(),
            metrics,
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
        if let Some(m) = &self.metrics {
            m.adds.fetch_add(1, Ordering::Relaxed);
        }
        if !s.processing.contains_key(&key) {
            s.queue.push_back(key);
            s.gauges(self.metrics.as_deref());
            drop(s);
            self.ready.notify_one();
        }
    }

    /// Queues `key` after `delay` (a failed key's backoff: counted as a retry).
    pub fn add_after(self: &Arc<Self>, key: K, delay: Duration) {
        if let Some(m) = &self.metrics {
            m.retries.fetch_add(1, Ordering::Relaxed);
        }
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
                    let now = Instant::now();
                    let waited = s
                        .dirty
                        .remove(&k)
                        .map_or(Duration::ZERO, |t| now.saturating_duration_since(t));
                    s.processing.insert(k.clone(), now);
                    s.gauges(self.metrics.as_deref());
                    if let Some(m) = &self.metrics {
                        m.queue_duration.observe(waited);
                    }
                    return (k, waited);
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
        let taken = s.processing.remove(key);
        if let (Some(m), Some(t)) = (&self.metrics, taken) {
            m.work_duration.observe(t.elapsed());
        }
        let again = s.dirty.contains_key(key);
        if again {
            s.queue.push_back(key.clone());
        }
        s.gauges(self.metrics.as_deref());
        drop(s);
        if again {
            self.ready.notify_one();
        }
    }

    /// Keys being processed by a worker.
    pub fn processing(&self) -> usize {
        self.lock().processing.len()
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

    #[tokio::test]
    async fn a_named_queue_reports_depth_processing_and_durations() {
        let q = WorkQueue::<u32>::named("workqueue-test-metrics");
        let m = crate::metrics::queue_for_test("workqueue-test-metrics");
        let get = |m: &QueueMetrics| {
            (
                m.depth.load(Ordering::Relaxed),
                m.processing.load(Ordering::Relaxed),
                m.adds.load(Ordering::Relaxed),
            )
        };
        q.add(1);
        q.add(1);
        q.add(2);
        assert_eq!(get(&m), (2, 0, 2), "a repeat of a waiting key is no add");
        let (k, _) = q.get_timed().await;
        assert_eq!(get(&m), (1, 1, 2));
        assert_eq!(m.queue_duration.count(), 1);
        q.add(k); // while processing: dirty, not in the queue
        assert_eq!(get(&m), (1, 1, 3));
        q.done(&k);
        assert_eq!(get(&m), (2, 0, 3), "queued again once done");
        assert_eq!(m.work_duration.count(), 1);
        for _ in 0..2 {
            let k = q.get().await;
            q.done(&k);
        }
        assert_eq!(get(&m), (0, 0, 3), "idle");
        assert!(
            crate::metrics::render().contains("workqueue_depth{name=\"workqueue-test-metrics\"} 0")
        );
    }
}
