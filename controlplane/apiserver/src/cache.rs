//! Watch fan-out: one store watch per resource, shared by every client watch of that
//! resource, with a bounded history so that a watch from a recent resourceVersion is
//! served from memory (upstream's watch cache does the same for watches; LIST still reads
//! the store).
//!
//! * A hub is created on the first watch of a resource and feeds from the store from the
//!   revision current at that moment; it keeps the last [`HISTORY`] events.
//! * A watch from revision `r` is served by the hub when its history covers everything
//!   after `r` and the store has not compacted `r` away; otherwise it goes to the store,
//!   which answers from its own history or with `Compacted` (the client's 410).
//! * Subscribers get events through bounded channels filled with `try_send`: a subscriber
//!   whose channel is full is dropped (its response ends and the client re-watches), so a
//!   slow client never delays the hub, the store or other clients.
//! * If the hub's own store watch fails (e.g. the store cut it off), the hub closes all its
//!   subscribers and is replaced on the next watch.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use futures::StreamExt;
use skiff_store::{Event, Revision, Store, StoreError, WatchStream};
use tokio::sync::mpsc;

/// Events kept per resource for watches that resume from a recent version.
pub const HISTORY: usize = 1000;
/// Events buffered per subscriber beyond its replay before it counts as too slow.
pub const SUBSCRIBER_BUFFER: usize = 1024;

struct HubInner {
    history: VecDeque<Arc<Event>>,
    /// Every event with a revision above this one is in `history` (or still to come).
    complete_after: Revision,
    /// Each subscriber's key prefix (its namespace, or the whole resource) and channel:
    /// only matching events count against its buffer.
    subscribers: Vec<(String, mpsc::Sender<Arc<Event>>)>,
    closed: bool,
}

struct Hub {
    inner: Mutex<HubInner>,
}

pub(crate) struct WatchCache {
    store: Arc<dyn Store>,
    hubs: Mutex<HashMap<String, Arc<Hub>>>,
}

impl WatchCache {
    pub fn new(store: Arc<dyn Store>) -> WatchCache {
        WatchCache {
            store,
            hubs: Mutex::new(HashMap::new()),
        }
    }

    /// Like [`Store::watch`] for keys under `prefix`, which must lie inside the resource
    /// root `root` (`/registry/<resource>/`).
    pub async fn watch(
        &self,
        root: &str,
        prefix: &str,
        from: Revision,
    ) -> skiff_store::Result<WatchStream> {
        let hub = self.hub(root).await?;
        // The store's compaction decides what is too old (410), also for versions the hub
        // still remembers, so that clients see one rule whatever serves them.
        let compacted = self.store.compacted_revision().await?;
        let rx = {
            let mut inner = hub.inner.lock().unwrap_or_else(|e| e.into_inner());
            if inner.closed || from < inner.complete_after || from < compacted {
                None
            } else {
                let replay: Vec<Arc<Event>> = inner
                    .history
                    .iter()
                    .filter(|e| e.revision() > from && e.key().starts_with(prefix))
                    .cloned()
                    .collect();
                let (tx, rx) = mpsc::channel(replay.len() + SUBSCRIBER_BUFFER);
                for e in replay {
                    // Cannot fail: the channel has room for the whole replay.
                    let _ = tx.try_send(e);
                }
                inner.subscribers.push((prefix.to_string(), tx));
                Some(rx)
            }
        };
        let Some(rx) = rx else {
            return self.store.watch(prefix, from).await;
        };
        let stream =
            futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|e| (e, rx)) })
                .filter(move |e| {
                    // The hub may deliver events at or below `from` that it received after the
                    // subscriber registered (the hub can lag the store).
                    let keep = e.revision() > from;
                    async move { keep }
                })
                .map(|e| Ok((*e).clone()));
        Ok(Box::pin(stream))
    }

    async fn hub(&self, root: &str) -> skiff_store::Result<Arc<Hub>> {
        if let Some(h) = self
            .hubs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(root)
        {
            if !h.inner.lock().unwrap_or_else(|e| e.into_inner()).closed {
                return Ok(h.clone());
            }
        }
        let start = self.store.current_revision().await?;
        let stream = self.store.watch(root, start).await?;
        let hub = Arc::new(Hub {
            inner: Mutex::new(HubInner {
                history: VecDeque::new(),
                complete_after: start,
                subscribers: Vec::new(),
                closed: false,
            }),
        });
        let mut hubs = self.hubs.lock().unwrap_or_else(|e| e.into_inner());
        // Another watch may have created one meanwhile: use the live one.
        if let Some(h) = hubs.get(root) {
            if !h.inner.lock().unwrap_or_else(|e| e.into_inner()).closed {
                return Ok(h.clone());
            }
        }
        hubs.insert(root.to_string(), hub.clone());
        tokio::spawn(feed(hub.clone(), stream, root.to_string()));
        Ok(hub)
    }
}

async fn feed(hub: Arc<Hub>, mut stream: WatchStream, root: String) {
    loop {
        let item = stream.next().await;
        let mut inner = hub.inner.lock().unwrap_or_else(|e| e.into_inner());
        match item {
            Some(Ok(ev)) => {
                let ev = Arc::new(ev);
                inner.history.push_back(ev.clone());
                while inner.history.len() > HISTORY {
                    if let Some(old) = inner.history.pop_front() {
                        inner.complete_after = old.revision();
                    }
                }
                // A full channel: that client is too slow; dropping its sender ends its
                // stream once it has drained what it has.
                let key = ev.key().to_string();
                inner.subscribers.retain(|(prefix, tx)| {
                    !key.starts_with(prefix.as_str()) || tx.try_send(ev.clone()).is_ok()
                });
            }
            end => {
                if let Some(Err(e)) = end {
                    if !matches!(e, StoreError::WatcherTooSlow { .. }) {
                        tracing::warn!("watch cache for {root}: {e}");
                    }
                }
                inner.closed = true;
                inner.subscribers.clear();
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use skiff_store::RedbStore;
    use std::time::Duration;

    async fn next(s: &mut WatchStream) -> Event {
        tokio::time::timeout(Duration::from_secs(10), s.next())
            .await
            .expect("no event in time")
            .expect("stream ended")
            .expect("stream error")
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn fan_out_replay_fallback_and_slow_subscribers() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> =
            Arc::new(RedbStore::open(dir.path().join("s.redb"), Default::default()).unwrap());
        let cache = WatchCache::new(store.clone());
        let root = "/registry/configmaps/";
        let before = store.current_revision().await.unwrap();
        store
            .create("/registry/configmaps/a/x", Bytes::from_static(b"{}"))
            .await
            .unwrap();
        let r1 = store.current_revision().await.unwrap();

        // From the current revision: served by the hub; filtered by namespace prefix.
        let mut ns_a = cache
            .watch(root, "/registry/configmaps/a/", r1)
            .await
            .unwrap();
        let mut all = cache.watch(root, root, r1).await.unwrap();
        // A subscriber that never reads.
        let _stalled = cache.watch(root, root, r1).await.unwrap();
        let r_b = store
            .create("/registry/configmaps/b/y", Bytes::from_static(b"{}"))
            .await
            .unwrap();
        let r_a = store
            .create("/registry/configmaps/a/z", Bytes::from_static(b"{}"))
            .await
            .unwrap();
        assert_eq!(next(&mut all).await.revision(), r_b);
        assert_eq!(next(&mut all).await.revision(), r_a);
        let ev = next(&mut ns_a).await;
        assert_eq!((ev.key(), ev.revision()), ("/registry/configmaps/a/z", r_a));

        // A later watch from r1 is replayed from the hub's history.
        let mut late = cache.watch(root, root, r1).await.unwrap();
        assert_eq!(next(&mut late).await.revision(), r_b);
        assert_eq!(next(&mut late).await.revision(), r_a);

        // Older than the hub: the store serves it (and has the event before the hub).
        let mut old = cache.watch(root, root, before).await.unwrap();
        assert_eq!(next(&mut old).await.revision(), r1);

        // Overflow the stalled subscriber; the reading one still gets everything.
        let n = SUBSCRIBER_BUFFER + 10;
        let writer = {
            let store = store.clone();
            tokio::spawn(async move {
                for i in 0..n {
                    store
                        .create(
                            &format!("/registry/configmaps/c/k{i}"),
                            Bytes::from_static(b"{}"),
                        )
                        .await
                        .unwrap();
                }
            })
        };
        for _ in 0..n {
            next(&mut all).await;
        }
        writer.await.unwrap();
        let hub = cache.hub(root).await.unwrap();
        let subs = hub.inner.lock().unwrap().subscribers.len();
        // `all` (reading) and `ns_a` (no events in its namespace) stay; `_stalled` and `late`
        // (not reading) were cut off. (`old` is a store watch.)
        assert_eq!(subs, 2);
        // A cut-off subscriber's stream ends after what it had buffered.
        let mut drained = 0;
        while let Ok(Some(_)) = tokio::time::timeout(Duration::from_secs(10), late.next()).await {
            drained += 1;
        }
        assert!(drained >= SUBSCRIBER_BUFFER && drained < n, "{drained}");
    }
}
