//! skiff's versioned object store: the storage model behind the Kubernetes-compatible
//! apiserver. No HTTP and no Kubernetes types here: keys are strings, values are bytes.
//!
//! # Model
//!
//! The model is etcd's, as kine re-implements it on SQL (see `shared/design/controlplane.md`
//! §1.2), and the apiserver's `resourceVersion` is a [`Revision`]:
//!
//! - **One global revision counter.** Every successful write (create, update, delete) gets the
//!   next revision, a `u64` shared by all keys. A key's `mod_revision` is the revision of its
//!   last write, its `create_revision` the revision of the write that created it.
//!   Revisions are never reused, not even across restarts. (One exception to "each write
//!   its own revision": the keys of one [`Store::create_all`] share a revision on etcd, as
//!   the puts of one etcd transaction do; redb gives each its own.)
//! - **A revision log.** Each write appends one row to a log keyed by revision. Reads at an old
//!   revision (consistent pagination, `resourceVersion=` lists) and watch replay read the log.
//! - **Compaction.** The log is bounded: `compact(c)` forgets what is needed only to read
//!   snapshots older than `c`. Afterwards, snapshot reads at `r >= c` and watches from
//!   `r >= c` still work; older ones fail with [`StoreError::Compacted`] (the apiserver's 410).
//!   Invariant: *a revision you can still list at is a revision you can still watch from*, so
//!   list-then-watch is exact.
//! - **Watch.** `watch(prefix, from)` yields every change under `prefix` with revision `> from`,
//!   in revision order, each exactly once: first replayed from history, then live. A watcher
//!   that does not keep up is cut off with [`StoreError::WatcherTooSlow`] rather than slowing
//!   writers or other watchers (kine drops slow subscribers the same way); the client
//!   re-watches from the last revision it saw.
//!
//! # Prefixes
//!
//! A prefix is a plain string prefix, as in etcd's `WithPrefix`: `"/a/b"` matches `"/a/bc"`.
//! The apiserver always passes prefixes ending in `/` (`/registry/pods/default/`), which
//! isolates one directory level. The empty prefix matches every key.
//!
//! # Backends
//!
//! - [`RedbStore`]: an embedded single-file store (redb), one durable transaction per write,
//!   automatic bounded compaction, in-process watch fan-out.
//! - `EtcdStore` (cargo feature `etcd`, on by default): an etcd v3 cluster; etcd's revisions
//!   are the store's revisions.
//!
//! Both pass the same conformance suite (`tests/conformance/`).

mod broadcast;
mod error;
#[cfg(feature = "etcd")]
mod etcd;
mod redb_store;

use std::pin::Pin;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use futures::Stream;

pub use error::{Result, StoreError};
#[cfg(feature = "etcd")]
pub use etcd::{EtcdConfig, EtcdStore};
pub use redb_store::{RedbConfig, RedbStore, DEFAULT_CACHE_SIZE as REDB_DEFAULT_CACHE_SIZE};

/// A point in the store's history; the apiserver's `resourceVersion`. Strictly increasing
/// over the life of a store, shared by all keys.
pub type Revision = u64;

/// A key and its value as of some revision.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyValue {
    pub key: String,
    pub value: Bytes,
    /// Revision of the write that created this incarnation of the key (a key deleted and
    /// created again gets a new one).
    pub create_revision: Revision,
    /// Revision of the last write to the key; the CAS token for `update`/`delete`.
    pub mod_revision: Revision,
}

/// A change seen by a watcher.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// The key was created (`prev` is `None`) or updated (`prev` is its previous state).
    Put {
        kv: KeyValue,
        prev: Option<KeyValue>,
    },
    /// The key was deleted at `revision`; `prev` is its last state before the delete.
    Delete { revision: Revision, prev: KeyValue },
}

impl Event {
    /// The revision of the write this event reports.
    pub fn revision(&self) -> Revision {
        match self {
            Event::Put { kv, .. } => kv.mod_revision,
            Event::Delete { revision, .. } => *revision,
        }
    }

    /// The key this event is about.
    pub fn key(&self) -> &str {
        match self {
            Event::Put { kv, .. } => &kv.key,
            Event::Delete { prev, .. } => &prev.key,
        }
    }
}

/// Writes need a key: etcd has no empty key, and an empty key would be listed under every
/// prefix.
pub(crate) fn check_key(key: &str) -> Result<()> {
    if key.is_empty() {
        return Err(StoreError::InvalidArgument {
            reason: "the key is empty; keys look like /registry/<resource>/<namespace>/<name>"
                .into(),
        });
    }
    Ok(())
}

/// Checks the keys of a [`Store::create_all`]: at least one, none empty, no two equal.
pub(crate) fn check_create_all(kvs: &[(String, Bytes)]) -> Result<()> {
    if kvs.is_empty() {
        return Err(StoreError::InvalidArgument {
            reason: "create_all needs at least one key".into(),
        });
    }
    let mut seen = std::collections::HashSet::with_capacity(kvs.len());
    for (key, _) in kvs {
        check_key(key)?;
        if !seen.insert(key.as_str()) {
            return Err(StoreError::InvalidArgument {
                reason: format!("create_all was given the key {key} twice"),
            });
        }
    }
    Ok(())
}

/// How to read a list.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ListOptions {
    /// Read the snapshot at this revision; `None` reads the current revision. Must not be
    /// older than the compacted revision nor newer than the current one.
    pub revision: Option<Revision>,
    /// Return at most this many items (`None` or `Some(0)`: no limit).
    pub limit: Option<usize>,
    /// Start strictly after this key (the last key of the previous page).
    pub continue_after: Option<String>,
}

/// One page of a list.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListResult {
    /// Live keys under the prefix, sorted by key (byte order).
    pub items: Vec<KeyValue>,
    /// The snapshot revision the page was read at. Read the next page at this revision so that
    /// all pages come from one snapshot.
    pub revision: Revision,
    /// How many live keys under the prefix, after the last returned one, the snapshot still
    /// holds; `remaining > 0` means there is another page.
    pub remaining: u64,
}

impl ListResult {
    /// Whether another page follows.
    pub fn more(&self) -> bool {
        self.remaining > 0
    }
}

/// A change as [`Store::watch_with_progress`] reports it: without previous values, for a
/// watcher that keeps the current state of every key it watches itself (the apiserver's
/// watch cache) and so knows what a change replaced. Why not [`Event`]: etcd sends an
/// event's previous value only when the watch asks for it (`prev_kv`), and then reads it
/// for every event (a range read at `mod_revision - 1` per update and delete, in its
/// watch's send loop) and sends it along; a watcher that already has it pays for both for
/// nothing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    /// The key was created or updated.
    Put(KeyValue),
    /// The key was deleted at `revision`.
    Delete { key: String, revision: Revision },
}

impl Change {
    /// The revision of the write this change reports.
    pub fn revision(&self) -> Revision {
        match self {
            Change::Put(kv) => kv.mod_revision,
            Change::Delete { revision, .. } => *revision,
        }
    }

    /// The key this change is about.
    pub fn key(&self) -> &str {
        match self {
            Change::Put(kv) => &kv.key,
            Change::Delete { key, .. } => key,
        }
    }
}

impl From<Event> for Change {
    fn from(event: Event) -> Change {
        match event {
            Event::Put { kv, .. } => Change::Put(kv),
            Event::Delete { revision, prev } => Change::Delete {
                key: prev.key,
                revision,
            },
        }
    }
}

/// What a [`Store::watch_with_progress`] stream yields.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WatchItem {
    Change(Change),
    /// Every change under the watched prefix up to this revision has been yielded before
    /// this item (etcd's watch progress notification): the watcher is current at this
    /// revision although no event under its prefix carried it.
    Progress(Revision),
}

/// The stream [`Store::watch_with_progress`] returns.
pub type ProgressWatchStream = Pin<Box<dyn Stream<Item = Result<WatchItem>> + Send + 'static>>;

/// Asks a [`Store::watch_with_progress`] stream for a [`WatchItem::Progress`] as soon as
/// possible (upstream's `RequestWatchProgress`, KEP-2340). Requests made while one is
/// pending are merged.
#[derive(Clone, Default)]
pub struct ProgressRequester(Option<Arc<dyn Fn() + Send + Sync>>);

impl ProgressRequester {
    /// A requester for a store that cannot report progress.
    pub fn unsupported() -> ProgressRequester {
        ProgressRequester(None)
    }

    pub fn new(request: impl Fn() + Send + Sync + 'static) -> ProgressRequester {
        ProgressRequester(Some(Arc::new(request)))
    }

    /// Requests progress; false if the store cannot report it.
    pub fn request(&self) -> bool {
        match &self.0 {
            Some(f) => {
                f();
                true
            }
            None => false,
        }
    }
}

/// The stream a watch returns: events in revision order. An `Err` item is the last one; the
/// stream also ends (without an error) when the store is dropped. Either way the client
/// watches again from the last revision it received.
pub type WatchStream = Pin<Box<dyn Stream<Item = Result<Event>> + Send + 'static>>;

/// A versioned key-value store. Object-safe: the apiserver holds an `Arc<dyn Store>`.
///
/// Every write returns the revision it was committed at; once a write has returned `Ok`, it is
/// durable and visible to every later read and watch.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Creates `key`. Fails with [`StoreError::AlreadyExists`] if the key is live.
    async fn create(&self, key: &str, value: Bytes) -> Result<Revision>;

    /// Creates every key of `kvs` in one atomic write: all of them, or, when one is live,
    /// none ([`StoreError::AlreadyExists`] naming a live one). Keys must be distinct.
    /// Returns each key's revision, in order (non-decreasing: etcd gives one transaction
    /// one revision, redb gives each key the next one; either way readers and watchers see
    /// all of them or none). What this is for: a Service and the reservations of the
    /// ClusterIP and node ports it holds, written in one commit instead of one per value.
    async fn create_all(&self, kvs: Vec<(String, Bytes)>) -> Result<Vec<Revision>>;

    /// Replaces the value of a live key. With `expected_mod_revision`, only if the key's
    /// `mod_revision` still equals it ([`StoreError::Conflict`] otherwise). A missing key is
    /// [`StoreError::NotFound`].
    async fn update(
        &self,
        key: &str,
        value: Bytes,
        expected_mod_revision: Option<Revision>,
    ) -> Result<Revision>;

    /// Deletes a live key (CAS as for `update`). Returns the delete's revision and the key's
    /// last state.
    async fn delete(
        &self,
        key: &str,
        expected_mod_revision: Option<Revision>,
    ) -> Result<(Revision, KeyValue)>;

    /// The key's current state, if live.
    async fn get(&self, key: &str) -> Result<Option<KeyValue>>;

    /// The key's state in the snapshot at `revision`, if live then.
    async fn get_at(&self, key: &str, revision: Revision) -> Result<Option<KeyValue>>;

    /// Lists live keys starting with `prefix` (a plain string prefix), sorted by key.
    async fn list(&self, prefix: &str, options: ListOptions) -> Result<ListResult>;

    /// Streams changes to keys starting with `prefix` with revision `> from_revision`, first
    /// from history, then live. `from_revision` older than the compacted revision fails with
    /// [`StoreError::Compacted`]: from this call, or as the stream's last item if compaction
    /// overtakes a watcher still replaying history. Pass the revision of a list to get exactly
    /// what changed since. A future `from_revision` is allowed: the stream waits for it.
    async fn watch(&self, prefix: &str, from_revision: Revision) -> Result<WatchStream>;

    /// [`Store::watch`] for a watcher that keeps its own copy of the watched keys (the
    /// watch cache): the same changes in the same order, as [`Change`]s, without previous
    /// values (a delete names only its key: the watcher has the deleted state). Its stream
    /// can also report progress when asked through the returned requester: for a watcher
    /// that must know it is current at the store's revision although writes outside its
    /// prefix (an etcd shared with other clients) move that revision without an event for
    /// it. The default reports no progress: right for stores whose watch of the empty
    /// prefix sees every write (redb), whose events have their previous values at hand.
    async fn watch_with_progress(
        &self,
        prefix: &str,
        from_revision: Revision,
    ) -> Result<(ProgressWatchStream, ProgressRequester)> {
        use futures::StreamExt;
        let stream = self.watch(prefix, from_revision).await?;
        Ok((
            Box::pin(stream.map(|item| item.map(|e| WatchItem::Change(e.into())))),
            ProgressRequester::unsupported(),
        ))
    }

    /// The revision of the last committed write (or the store's initial revision).
    async fn current_revision(&self) -> Result<Revision>;

    /// The oldest revision still readable (`0` if nothing was ever compacted).
    async fn compacted_revision(&self) -> Result<Revision>;

    /// Forgets history older than `revision`. Compacting to a revision at or below the
    /// current compacted revision is a no-op; a future revision is
    /// [`StoreError::FutureRevision`].
    async fn compact(&self, revision: Revision) -> Result<()>;
}
