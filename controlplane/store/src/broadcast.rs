//! In-process watch fan-out for embedded backends (kine's broadcaster).
//!
//! Writers call [`Broadcaster::publish`] after each commit, in revision order, while holding
//! the store's writer lock. Each subscriber has its own bounded channel and a key prefix;
//! `publish` never waits: a subscriber whose channel is full is dropped on the spot and its
//! stream ends with [`StoreError::WatcherTooSlow`]. That bounds memory per watcher and keeps a
//! stuck HTTP client from stalling writers or other watchers.
//!
//! Handing over from history replay to live events without gaps or duplicates relies on
//! [`Broadcaster::subscribe_if_caught_up`]: it registers a subscriber only if nothing newer
//! than the replay position has been published yet, under the same lock `publish` takes.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::mpsc;

use crate::{Event, Revision};

struct Subscriber {
    prefix: String,
    tx: mpsc::Sender<Event>,
    /// Set when `publish` drops this subscriber for being slow, so the receiving end can tell
    /// "cut off" from "store closed".
    lagged: Arc<AtomicBool>,
}

struct Inner {
    /// Revision of the last event published (or of the store when the broadcaster started).
    last_published: Revision,
    subscribers: Vec<Subscriber>,
}

/// Fan-out of committed events to live watchers.
pub(crate) struct Broadcaster {
    inner: Mutex<Inner>,
    buffer: usize,
}

/// The receiving end of a subscription.
pub(crate) struct Subscription {
    pub(crate) rx: mpsc::Receiver<Event>,
    pub(crate) lagged: Arc<AtomicBool>,
}

impl Broadcaster {
    /// `start` is the store's current revision: everything up to it is history, not live.
    pub(crate) fn new(start: Revision, buffer: usize) -> Self {
        Broadcaster {
            inner: Mutex::new(Inner {
                last_published: start,
                subscribers: Vec::new(),
            }),
            buffer: buffer.max(1),
        }
    }

    pub(crate) fn buffer(&self) -> usize {
        self.buffer
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding this lock cannot leave `Inner` half-updated in a way that
        // matters (worst case a subscriber list missing an entry), so poisoning is ignored.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Delivers `event` to every subscriber whose prefix matches. Callers publish in strictly
    /// increasing revision order.
    pub(crate) fn publish(&self, event: &Event) {
        let mut inner = self.lock();
        debug_assert!(event.revision() > inner.last_published);
        inner.last_published = event.revision();
        let key = event.key();
        inner.subscribers.retain(|sub| {
            if sub.tx.is_closed() {
                return false;
            }
            if !key.starts_with(sub.prefix.as_str()) {
                return true;
            }
            match sub.tx.try_send(event.clone()) {
                Ok(()) => true,
                Err(mpsc::error::TrySendError::Full(_)) => {
                    sub.lagged.store(true, Ordering::Release);
                    tracing::warn!(
                        prefix = %sub.prefix,
                        buffer = self.buffer,
                        revision = event.revision(),
                        "dropping slow watcher"
                    );
                    false
                }
                Err(mpsc::error::TrySendError::Closed(_)) => false,
            }
        });
    }

    /// Registers a live subscriber for `prefix` if every event up to and including
    /// `replayed_through` is all that has been published; otherwise returns `None` and the
    /// caller replays more history first. A subscriber registered here receives exactly the
    /// events with revision `> replayed_through`.
    pub(crate) fn subscribe_if_caught_up(
        &self,
        prefix: &str,
        replayed_through: Revision,
    ) -> Option<Subscription> {
        let mut inner = self.lock();
        if inner.last_published > replayed_through {
            return None;
        }
        let (tx, rx) = mpsc::channel(self.buffer);
        let lagged = Arc::new(AtomicBool::new(false));
        inner.subscribers.push(Subscriber {
            prefix: prefix.to_owned(),
            tx,
            lagged: lagged.clone(),
        });
        Some(Subscription { rx, lagged })
    }

    #[cfg(test)]
    fn subscriber_count(&self) -> usize {
        self.lock().subscribers.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::KeyValue;

    fn put(key: &str, rev: Revision) -> Event {
        Event::Put {
            kv: KeyValue {
                key: key.into(),
                value: bytes::Bytes::from_static(b"v"),
                create_revision: rev,
                mod_revision: rev,
            },
            prev: None,
        }
    }

    #[test]
    fn subscribe_refuses_when_replay_is_behind() {
        let b = Broadcaster::new(5, 4);
        assert!(b.subscribe_if_caught_up("/", 4).is_none());
        assert!(b.subscribe_if_caught_up("/", 5).is_some());
    }

    #[test]
    fn filters_by_prefix_and_drops_full_subscribers_only() {
        let b = Broadcaster::new(0, 2);
        let mut slow = b.subscribe_if_caught_up("/a/", 0).unwrap();
        let mut other = b.subscribe_if_caught_up("/b/", 0).unwrap();
        for rev in 1..=3 {
            b.publish(&put(&format!("/a/{rev}"), rev));
        }
        b.publish(&put("/b/x", 4));
        assert!(slow.lagged.load(Ordering::Acquire));
        // The two buffered events are still delivered, then the channel is closed.
        assert_eq!(slow.rx.try_recv().unwrap().revision(), 1);
        assert_eq!(slow.rx.try_recv().unwrap().revision(), 2);
        assert!(matches!(
            slow.rx.try_recv(),
            Err(mpsc::error::TryRecvError::Disconnected)
        ));
        assert!(!other.lagged.load(Ordering::Acquire));
        assert_eq!(other.rx.try_recv().unwrap().key(), "/b/x");
        assert_eq!(b.subscriber_count(), 1);
    }

    #[test]
    fn closed_subscribers_are_pruned() {
        let b = Broadcaster::new(0, 2);
        let sub = b.subscribe_if_caught_up("/a/", 0).unwrap();
        drop(sub);
        b.publish(&put("/z", 1));
        assert_eq!(b.subscriber_count(), 0);
    }
}
