//! The watch cache: every served resource's objects in memory, fed by one store watch, so
//! that LIST and WATCH do not touch the store in steady state (upstream's cacher, with
//! KEP-2340's consistent reads from cache).
//!
//! * At start (and again after its store watch fails) the cache lists everything under
//!   `/registry/` at one revision `R0` and then watches *all* keys from `R0`. Because every
//!   store write produces exactly one event, the cache's revision — that of the last event
//!   applied — reaches the store's current revision as soon as it has seen every write, which
//!   is what a consistent read waits for ([`WatchCache::wait_for`]). (On an etcd shared with
//!   writers outside skiff's key prefix the cache cannot reach etcd's revision without
//!   progress notifications; such reads time out and fall back to the store.)
//! * Per resource it keeps the objects at the cache's revision, each an immutable
//!   [`CachedObject`] shared by reference (its JSON as a GET returns it, plus the fields
//!   selectors read: upstream's `GetAttrs`), and the last [`HISTORY`] changes (at most
//!   [`HISTORY_BYTES`] of object versions), each holding the object's state *before* and
//!   *after* the change by reference: a version is in memory once, whether it is current,
//!   in the history, or both. With those, a page of the snapshot at any revision `R` in the
//!   window (`R >= complete_after`) is the current state with the changes after `R`
//!   undone — exactly what the store answers at `R`, so a paginated LIST can continue from
//!   the cache under concurrent writes.
//! * Watchers get those changes ([`CachedEvent`]) as they are: selectors match the cached
//!   attributes and events are written from the cached JSON, so fanning one change out to
//!   a thousand watchers decodes and encodes nothing per watcher.
//! * A watch from revision `r` is served from the history when it covers everything after
//!   `r` and the store has not compacted `r` away; otherwise it goes to the store, which
//!   answers from its own history or with `Compacted` (the client's 410).
//! * Subscribers get events through bounded channels filled with `try_send`: a subscriber
//!   whose channel is full is dropped (its response ends and the client re-watches), so a
//!   slow client never delays the cache, the store or other clients.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::ops::Bound;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use serde_json::Value;
use skiff_api::resources::RESOURCES;
use skiff_store::{Event, KeyValue, ListOptions, Revision, Store, StoreError, WatchStream};
use tokio::sync::{mpsc, watch};

/// Changes kept per resource by default: watches resuming from, and continued LISTs at, a
/// revision within the last this-many changes of their resource are served from memory.
pub const HISTORY: usize = 1000;
/// At most this many bytes of object versions (JSON) per resource's history: 1000 changes
/// of large objects (ConfigMaps, Secrets up to 1 MiB each) would otherwise pin up to 1 GB.
/// Older changes are forgotten first, so the window only gets shorter.
pub const HISTORY_BYTES: usize = 16 * 1024 * 1024;
/// Events buffered per subscriber beyond its replay before it counts as too slow.
pub const SUBSCRIBER_BUFFER: usize = 1024;
/// Keys read per store page while (re)filling the cache.
const FILL_PAGE: usize = 2000;

/// One object version as the cache holds it; immutable, shared by reference.
pub(crate) struct CachedObject {
    /// The store key (what tests and debugging look at; pages are ordered by it).
    #[cfg_attr(not(test), allow(dead_code))]
    pub key: String,
    /// The object as a GET returns it (`resourceVersion` set), JSON.
    pub json: Bytes,
    /// What label and field selectors read ([`skiff_api::selector::selection_attrs`]).
    pub attrs: Value,
}

impl CachedObject {
    /// `kv` decoded, with `resourceVersion` set to `rv`.
    pub fn new(kind: &str, kv: &KeyValue, rv: Revision) -> CachedObject {
        let obj = crate::api::decode_kv(kv, rv);
        CachedObject {
            key: kv.key.clone(),
            json: Bytes::from(serde_json::to_vec(&obj).unwrap_or_default()),
            attrs: skiff_api::selector::selection_attrs(kind, &obj),
        }
    }

    /// The object, decoded.
    #[cfg(test)]
    pub fn value(&self) -> Value {
        serde_json::from_slice(&self.json).unwrap_or_default()
    }
}

/// A change of one object, as the history keeps it and watchers receive it.
pub(crate) struct CachedEvent {
    pub revision: Revision,
    /// The object's state before the change (`None`: it was created).
    pub before: Option<Arc<CachedObject>>,
    /// The new state; for a delete, the last state with the delete's revision as its
    /// `resourceVersion` (what a DELETED watch event carries, as upstream).
    pub object: Arc<CachedObject>,
    pub deleted: bool,
}

impl CachedEvent {
    /// A store event as the cache represents it (decoding its objects): for events the
    /// cache did not see itself (a watch the store serves).
    pub fn from_store(kind: &str, ev: &Event) -> CachedEvent {
        match ev {
            Event::Put { kv, prev } => CachedEvent {
                revision: kv.mod_revision,
                before: prev
                    .as_ref()
                    .map(|p| Arc::new(CachedObject::new(kind, p, p.mod_revision))),
                object: Arc::new(CachedObject::new(kind, kv, kv.mod_revision)),
                deleted: false,
            },
            Event::Delete { revision, prev } => {
                let last = Arc::new(CachedObject::new(kind, prev, prev.mod_revision));
                CachedEvent {
                    revision: *revision,
                    object: Arc::new(CachedObject::new(kind, prev, *revision)),
                    before: Some(last),
                    deleted: true,
                }
            }
        }
    }

    pub fn key(&self) -> &str {
        &self.object.key
    }

    /// The bytes of object versions this change keeps alive beyond the current state
    /// (the state it replaced; for a delete also the deleted state).
    fn cost(&self) -> usize {
        let before = self.before.as_ref().map_or(0, |b| b.json.len());
        before
            + if self.deleted {
                self.object.json.len()
            } else {
                0
            }
    }
}

/// What feeds a watch from the cache: the changes as they are, or the store's events
/// for watches the store serves.
pub(crate) type CacheWatchStream =
    std::pin::Pin<Box<dyn futures::Stream<Item = skiff_store::Result<Arc<CachedEvent>>> + Send>>;

struct Resource {
    kind: &'static str,
    /// Changes kept in `history`.
    keep: usize,
    /// Bytes of object versions `history` may keep alive ([`CachedEvent::cost`]).
    keep_bytes: usize,
    objects: BTreeMap<String, Arc<CachedObject>>,
    history: VecDeque<Arc<CachedEvent>>,
    /// The sum of the costs of `history`.
    history_bytes: usize,
    /// Every change of this resource with a revision above this one is in `history`.
    complete_after: Revision,
    /// Each subscriber's key prefix (its namespace, or the whole resource) and channel:
    /// only matching events count against its buffer.
    subscribers: Vec<(String, mpsc::Sender<Arc<CachedEvent>>)>,
}

/// A store event with its new object decoded (outside the cache's lock).
enum Decoded {
    Put(Arc<CachedObject>),
    /// The deleted object with the delete's revision.
    Delete(Arc<CachedObject>),
}

impl Resource {
    /// Applies the change at `revision`.
    fn apply(&mut self, revision: Revision, key: &str, change: Decoded) {
        let (object, deleted) = match change {
            Decoded::Put(obj) => (obj, false),
            Decoded::Delete(obj) => (obj, true),
        };
        // The state before is the cache's current one: shared, not decoded again.
        let before = if deleted {
            self.objects.remove(key)
        } else {
            self.objects.insert(key.to_string(), object.clone())
        };
        let event = Arc::new(CachedEvent {
            revision,
            before,
            object,
            deleted,
        });
        self.history_bytes += event.cost();
        self.history.push_back(event.clone());
        while self.history.len() > self.keep
            || (self.history_bytes > self.keep_bytes && self.history.len() > 1)
        {
            if let Some(old) = self.history.pop_front() {
                self.history_bytes -= old.cost();
                self.complete_after = old.revision;
            }
        }
        // A full channel: that client is too slow; dropping its sender ends its stream
        // once it has drained what it has.
        self.subscribers.retain(|(prefix, tx)| {
            !key.starts_with(prefix.as_str()) || tx.try_send(event.clone()).is_ok()
        });
    }
}

#[derive(Default)]
struct State {
    /// False until the first fill, and from a failed store watch until the next fill.
    ready: bool,
    /// Every store change up to this revision has been applied.
    revision: Revision,
    /// By resource root, `/registry/<plural>/`.
    resources: HashMap<String, Resource>,
}

/// One page of a LIST answered by the cache.
pub(crate) struct CachePage {
    pub items: Vec<Arc<CachedObject>>,
    pub revision: Revision,
    /// The last key of the page, when the snapshot has more keys after it.
    pub continue_after: Option<String>,
    /// With `continue_after`: how many keys the snapshot has after it.
    pub remaining: u64,
}

struct Shared {
    store: Arc<dyn Store>,
    /// Changes kept per resource.
    history: usize,
    /// Bytes of object versions kept per resource's history.
    history_bytes: usize,
    state: Mutex<State>,
    /// `(ready, revision)`, for readers waiting for the cache to catch up.
    progress: watch::Sender<(bool, Revision)>,
}

pub(crate) struct WatchCache {
    shared: Arc<Shared>,
    feed: Mutex<Option<tokio::task::AbortHandle>>,
}

impl Drop for WatchCache {
    fn drop(&mut self) {
        if let Some(h) = self.feed.lock().unwrap_or_else(|e| e.into_inner()).take() {
            h.abort();
        }
    }
}

/// `/registry/<plural>/` of a key, if it has that shape.
fn root_of(key: &str) -> Option<&str> {
    let rest = key.strip_prefix("/registry/")?;
    let end = rest.find('/')?;
    Some(&key[..10 + end + 1])
}

/// The kind stored under a resource root.
fn kind_of_root(root: &str) -> Option<&'static str> {
    let plural = root.strip_prefix("/registry/")?.strip_suffix('/')?;
    RESOURCES
        .iter()
        .find(|r| r.plural == plural)
        .map(|r| r.kind)
}

fn new_resources(revision: Revision, keep: usize, keep_bytes: usize) -> HashMap<String, Resource> {
    RESOURCES
        .iter()
        .map(|r| {
            (
                format!("/registry/{}/", r.plural),
                Resource {
                    kind: r.kind,
                    keep: keep.max(1),
                    keep_bytes,
                    objects: BTreeMap::new(),
                    history: VecDeque::new(),
                    history_bytes: 0,
                    complete_after: revision,
                    subscribers: Vec::new(),
                },
            )
        })
        .collect()
}

impl WatchCache {
    /// A cache keeping `history` changes per resource, at most [`HISTORY_BYTES`] of them.
    pub fn new(store: Arc<dyn Store>, history: usize) -> WatchCache {
        WatchCache::with_history_bytes(store, history, HISTORY_BYTES)
    }

    pub fn with_history_bytes(
        store: Arc<dyn Store>,
        history: usize,
        history_bytes: usize,
    ) -> WatchCache {
        WatchCache {
            shared: Arc::new(Shared {
                store,
                history,
                history_bytes,
                state: Mutex::new(State::default()),
                progress: watch::channel((false, 0)).0,
            }),
            feed: Mutex::new(None),
        }
    }

    /// Starts filling and feeding the cache (once; later calls do nothing). Until it is
    /// filled, reads fall back to the store.
    pub fn start(&self) {
        let mut feed = self.feed.lock().unwrap_or_else(|e| e.into_inner());
        if feed.is_none() {
            *feed = Some(tokio::spawn(run(self.shared.clone())).abort_handle());
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.shared.state()
    }

    /// Waits until the cache is filled and has applied every change up to `revision`;
    /// false after `timeout`.
    pub async fn wait_for(&self, revision: Revision, timeout: Duration) -> bool {
        let mut rx = self.shared.progress.subscribe();
        tokio::time::timeout(
            timeout,
            rx.wait_for(|(ready, rev)| *ready && *rev >= revision),
        )
        .await
        .is_ok_and(|r| r.is_ok())
    }

    /// Whether the cache is filled (and its revision).
    pub fn ready(&self) -> Option<Revision> {
        let s = self.state();
        s.ready.then_some(s.revision)
    }

    /// A page of the keys under `prefix` (inside the resource root `root`) in the snapshot
    /// at `at` (`None`: the cache's revision) that `matches` accepts, after `after`, at most
    /// `limit` of them; the same page the store's snapshot at that revision yields. `None`
    /// when the cache cannot answer: not filled, `at` newer than the cache or older than
    /// its window for this resource.
    pub fn list(
        &self,
        root: &str,
        prefix: &str,
        at: Option<Revision>,
        matches: &dyn Fn(&Value) -> bool,
        limit: Option<usize>,
        after: Option<&str>,
    ) -> Option<CachePage> {
        let s = self.state();
        if !s.ready {
            return None;
        }
        let res = s.resources.get(root)?;
        let at = at.unwrap_or(s.revision);
        if at > s.revision || at < res.complete_after {
            return None;
        }
        // The snapshot at `at`: for every key changed after `at`, its state before its
        // first change after `at`.
        let mut undone: BTreeMap<&str, Option<&Arc<CachedObject>>> = BTreeMap::new();
        for c in res.history.iter().rev() {
            if c.revision <= at {
                break;
            }
            undone.insert(c.key(), c.before.as_ref());
        }
        let lower = match after {
            Some(a) if a >= prefix => Bound::Excluded(a),
            _ => Bound::Included(prefix),
        };
        let current = res
            .objects
            .range::<str, _>((lower, Bound::Unbounded))
            .map(|(k, v)| (k.as_str(), Some(v)));
        let old = undone.range::<str, _>((lower, Bound::Unbounded));
        let mut snapshot = Merge {
            current: current.peekable(),
            undone: old.map(|(k, v)| (*k, *v)).peekable(),
        }
        .take_while(|(k, _)| k.starts_with(prefix));
        let mut items = Vec::new();
        while let Some((key, obj)) = snapshot.next() {
            if !matches(&obj.attrs) {
                continue;
            }
            items.push(obj.clone());
            if limit.is_some_and(|l| items.len() >= l) {
                let remaining = snapshot.count() as u64;
                return Some(CachePage {
                    items,
                    revision: at,
                    continue_after: (remaining > 0).then(|| key.to_string()),
                    remaining,
                });
            }
        }
        Some(CachePage {
            items,
            revision: at,
            continue_after: None,
            remaining: 0,
        })
    }

    /// Like [`Store::watch`] for keys under `prefix`, which must lie inside the resource
    /// root `root` (`/registry/<resource>/`), yielding the cache's changes.
    pub async fn watch(
        &self,
        root: &str,
        prefix: &str,
        from: Revision,
    ) -> skiff_store::Result<CacheWatchStream> {
        // The store's compaction decides what is too old (410), also for versions the cache
        // still remembers, so that clients see one rule whatever serves them.
        let compacted = self.shared.store.compacted_revision().await?;
        let rx = {
            let mut s = self.state();
            let ready = s.ready;
            match s.resources.get_mut(root) {
                Some(res) if ready && from >= res.complete_after && from >= compacted => {
                    let replay: Vec<Arc<CachedEvent>> = res
                        .history
                        .iter()
                        .filter(|c| c.revision > from && c.key().starts_with(prefix))
                        .cloned()
                        .collect();
                    let (tx, rx) = mpsc::channel(replay.len() + SUBSCRIBER_BUFFER);
                    for e in replay {
                        // Cannot fail: the channel has room for the whole replay.
                        let _ = tx.try_send(e);
                    }
                    res.subscribers.push((prefix.to_string(), tx));
                    Some(rx)
                }
                _ => None,
            }
        };
        let Some(rx) = rx else {
            // Decoded per watch: only watches from versions the cache does not hold (or
            // while it is not filled) get here.
            let kind = kind_of_root(root).unwrap_or_default();
            let stream = self.shared.store.watch(prefix, from).await?;
            return Ok(Box::pin(stream.map(move |item| {
                item.map(|ev| Arc::new(CachedEvent::from_store(kind, &ev)))
            })));
        };
        let stream =
            futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|e| (e, rx)) })
                .filter(move |e| {
                    // Events at or below `from` can arrive when `from` is newer than the
                    // cache (a version from another server or from the store).
                    let keep = e.revision > from;
                    async move { keep }
                })
                .map(Ok);
        Ok(Box::pin(stream))
    }

    #[cfg(test)]
    fn subscriber_count(&self, root: &str) -> usize {
        self.state()
            .resources
            .get(root)
            .map_or(0, |r| r.subscribers.len())
    }
}

/// Merges the current objects with the undone changes (both sorted by key); an undone key
/// replaces the current state (`None`: absent in the snapshot).
struct Merge<'a, C, U>
where
    C: Iterator<Item = (&'a str, Option<&'a Arc<CachedObject>>)>,
    U: Iterator<Item = (&'a str, Option<&'a Arc<CachedObject>>)>,
{
    current: std::iter::Peekable<C>,
    undone: std::iter::Peekable<U>,
}

impl<'a, C, U> Iterator for Merge<'a, C, U>
where
    C: Iterator<Item = (&'a str, Option<&'a Arc<CachedObject>>)>,
    U: Iterator<Item = (&'a str, Option<&'a Arc<CachedObject>>)>,
{
    type Item = (&'a str, &'a Arc<CachedObject>);

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            let next = match (self.current.peek(), self.undone.peek()) {
                (None, None) => return None,
                (Some(_), None) => self.current.next(),
                (None, Some(_)) => self.undone.next(),
                (Some((c, _)), Some((u, _))) => match c.cmp(u) {
                    std::cmp::Ordering::Less => self.current.next(),
                    std::cmp::Ordering::Greater => self.undone.next(),
                    std::cmp::Ordering::Equal => {
                        self.current.next();
                        self.undone.next()
                    }
                },
            };
            if let Some((k, Some(v))) = next {
                return Some((k, v));
            }
        }
    }
}

impl Shared {
    fn state(&self) -> MutexGuard<'_, State> {
        // A panic while holding this lock cannot leave the state half-updated in a way that
        // matters more than a failed feed does, so poisoning is ignored.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Closes every subscriber (their clients re-watch) and sends reads to the store.
    fn invalidate(&self) {
        let mut s = self.state();
        s.ready = false;
        for r in s.resources.values_mut() {
            r.subscribers.clear();
        }
        let rev = s.revision;
        self.progress.send_replace((false, rev));
    }
}

/// Fills the cache and feeds it from one store watch; refills after a failure.
async fn run(shared: Arc<Shared>) {
    let mut backoff = Duration::from_millis(100);
    loop {
        match fill(&shared).await {
            Ok(stream) => {
                backoff = Duration::from_millis(100);
                let e = feed(&shared, stream).await;
                match e {
                    Some(StoreError::WatcherTooSlow { .. }) | None => {
                        tracing::info!("watch cache: store watch ended; refilling")
                    }
                    Some(e) => tracing::warn!("watch cache: store watch failed: {e}; refilling"),
                }
            }
            Err(e) => {
                tracing::warn!(
                    "watch cache: filling from the store failed: {e}; retrying in {backoff:?}"
                );
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
        shared.invalidate();
    }
}

/// Lists everything at one revision into fresh resources and starts the watch after it.
async fn fill(shared: &Shared) -> skiff_store::Result<WatchStream> {
    let store = &shared.store;
    let revision = store.current_revision().await?;
    let mut resources = new_resources(revision, shared.history, shared.history_bytes);
    let mut after = None;
    loop {
        let page = store
            .list(
                "/registry/",
                ListOptions {
                    revision: Some(revision),
                    limit: Some(FILL_PAGE),
                    continue_after: after.take(),
                },
            )
            .await?;
        for kv in &page.items {
            if let Some(res) = root_of(&kv.key).and_then(|r| resources.get_mut(r)) {
                res.objects.insert(
                    kv.key.clone(),
                    Arc::new(CachedObject::new(res.kind, kv, kv.mod_revision)),
                );
            }
        }
        if !page.more() || page.items.is_empty() {
            break;
        }
        after = page.items.last().map(|kv| kv.key.clone());
    }
    // All keys, not only `/registry/`: every write must move the cache's revision.
    let stream = store.watch("", revision).await?;
    let mut s = shared.state();
    s.resources = resources;
    s.revision = revision;
    s.ready = true;
    shared.progress.send_replace((true, revision));
    tracing::debug!("watch cache filled at revision {revision}");
    Ok(stream)
}

/// Applies the store's events until its watch ends; returns why.
async fn feed(shared: &Shared, mut stream: WatchStream) -> Option<StoreError> {
    loop {
        let ev = match stream.next().await? {
            Ok(ev) => ev,
            Err(e) => return Some(e),
        };
        let rev = ev.revision();
        let root = root_of(ev.key()).map(str::to_string);
        let kind = root.as_deref().and_then(kind_of_root);
        // Decoding happens before taking the lock readers share.
        let change = kind.map(|kind| match &ev {
            Event::Put { kv, .. } => {
                Decoded::Put(Arc::new(CachedObject::new(kind, kv, kv.mod_revision)))
            }
            Event::Delete { revision, prev } => {
                Decoded::Delete(Arc::new(CachedObject::new(kind, prev, *revision)))
            }
        });
        {
            let mut s = shared.state();
            if let (Some(res), Some(change)) = (root.and_then(|r| s.resources.get_mut(&r)), change)
            {
                res.apply(rev, ev.key(), change);
            }
            s.revision = rev;
        }
        shared.progress.send_replace((true, rev));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use skiff_store::RedbStore;

    async fn next(s: &mut CacheWatchStream) -> Arc<CachedEvent> {
        tokio::time::timeout(Duration::from_secs(10), s.next())
            .await
            .expect("no event in time")
            .expect("stream ended")
            .expect("stream error")
    }

    fn cm(name: &str, ns: &str, labels: &str) -> Bytes {
        Bytes::from(
            serde_json::to_vec(&serde_json::json!({
                "apiVersion": "v1", "kind": "ConfigMap",
                "metadata": {"name": name, "namespace": ns, "labels": {"l": labels}},
            }))
            .unwrap(),
        )
    }

    async fn started(store: &Arc<dyn Store>) -> WatchCache {
        let cache = WatchCache::new(store.clone(), HISTORY);
        cache.start();
        let cur = store.current_revision().await.unwrap();
        assert!(cache.wait_for(cur, Duration::from_secs(10)).await);
        cache
    }

    #[test]
    fn roots() {
        assert_eq!(root_of("/registry/pods/ns/a"), Some("/registry/pods/"));
        assert_eq!(root_of("/registry/nodes/n"), Some("/registry/nodes/"));
        assert_eq!(root_of("/registry/x"), None);
        assert_eq!(root_of("/other/pods/a"), None);
    }

    /// Every page the cache answers at any revision in its window equals the store's at
    /// that revision, with and without a selector.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn snapshots_equal_the_store() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> =
            Arc::new(RedbStore::open(dir.path().join("s.redb"), Default::default()).unwrap());
        for i in 0..10 {
            store
                .create(&format!("/registry/configmaps/a/k{i}"), cm("x", "a", "old"))
                .await
                .unwrap();
        }
        let cache = started(&store).await;
        let mut revs = vec![store.current_revision().await.unwrap()];
        // Updates, deletes, re-creates and new keys, interleaved.
        for round in 0..6u32 {
            let k = |i: u32| format!("/registry/configmaps/a/k{i}");
            let label = if round % 2 == 0 { "new" } else { "old" };
            store
                .update(&k(round), cm("x", "a", label), None)
                .await
                .unwrap();
            store.delete(&k(round + 3), None).await.unwrap();
            store.create(&k(round + 3), cm("x", "a", "new")).await.ok();
            store
                .create(
                    &format!("/registry/configmaps/b/n{round}"),
                    cm("y", "b", "new"),
                )
                .await
                .unwrap();
            store
                .create(
                    &format!("/registry/skiff.io/other/{round}"),
                    cm("z", "", ""),
                )
                .await
                .unwrap();
            revs.push(store.current_revision().await.unwrap());
        }
        let cur = *revs.last().unwrap();
        assert!(cache.wait_for(cur, Duration::from_secs(10)).await);
        let root = "/registry/configmaps/";
        let only_new = |v: &Value| v.pointer("/metadata/labels/l") == Some(&Value::from("new"));
        let all = |_: &Value| true;
        for &at in &revs {
            for prefix in [root, "/registry/configmaps/a/"] {
                for (name, matches) in
                    [("all", &all as &dyn Fn(&Value) -> bool), ("new", &only_new)]
                {
                    // Page through with limit 3 from the cache; compare with the store.
                    let mut after: Option<String> = None;
                    let mut got = Vec::new();
                    loop {
                        let page = cache
                            .list(root, prefix, Some(at), matches, Some(3), after.as_deref())
                            .expect("in the window");
                        assert_eq!(page.revision, at);
                        got.extend(page.items.iter().map(|o| o.key.clone()));
                        match page.continue_after {
                            Some(k) => after = Some(k),
                            None => break,
                        }
                    }
                    let want: Vec<String> = store
                        .list(
                            prefix,
                            ListOptions {
                                revision: Some(at),
                                ..Default::default()
                            },
                        )
                        .await
                        .unwrap()
                        .items
                        .iter()
                        .filter(|kv| {
                            let v = crate::api::decode_kv(kv, kv.mod_revision);
                            matches(&v)
                        })
                        .map(|kv| kv.key.clone())
                        .collect();
                    assert_eq!(got, want, "at {at} under {prefix} ({name})");
                }
            }
            // Objects carry their own resourceVersion, as the store's.
            let page = cache.list(root, root, Some(at), &all, None, None).unwrap();
            let want = store
                .list(
                    root,
                    ListOptions {
                        revision: Some(at),
                        ..Default::default()
                    },
                )
                .await
                .unwrap();
            let got: Vec<Value> = page.items.iter().map(|o| o.value()).collect();
            let want: Vec<Value> = want
                .items
                .iter()
                .map(|kv| crate::api::decode_kv(kv, kv.mod_revision))
                .collect();
            assert_eq!(got, want);
        }
        // Outside the window or ahead of the cache: no answer.
        assert!(cache
            .list(root, root, Some(revs[0] - 1), &all, None, None)
            .is_none());
        assert!(cache
            .list(root, root, Some(cur + 1), &all, None, None)
            .is_none());
        // remaining counts the snapshot's keys after the page.
        let page = cache
            .list(root, root, Some(cur), &all, Some(2), None)
            .unwrap();
        let total = cache
            .list(root, root, Some(cur), &all, None, None)
            .unwrap()
            .items
            .len();
        assert_eq!(page.remaining as usize, total - 2);
    }

    /// The history keeps at most its byte budget of object versions, each version once
    /// (shared with the current state and between consecutive changes); revisions that
    /// fall out of it are answered by the store.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn history_is_bounded_by_bytes_and_shares_versions() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> =
            Arc::new(RedbStore::open(dir.path().join("s.redb"), Default::default()).unwrap());
        let key = "/registry/configmaps/a/x";
        let big = |round: usize| {
            Bytes::from(
                serde_json::to_vec(&serde_json::json!({
                    "apiVersion": "v1", "kind": "ConfigMap",
                    "metadata": {"name": "x", "namespace": "a"},
                    "data": {"blob": format!("{round}:{}", "x".repeat(10_000))},
                }))
                .unwrap(),
            )
        };
        let r0 = store.create(key, big(0)).await.unwrap();
        let budget = 50_000;
        let cache = WatchCache::with_history_bytes(store.clone(), HISTORY, budget);
        cache.start();
        assert!(cache.wait_for(r0, Duration::from_secs(10)).await);
        let mut revs = vec![r0];
        for round in 1..=20 {
            revs.push(store.update(key, big(round), None).await.unwrap());
        }
        let cur = *revs.last().unwrap();
        assert!(cache.wait_for(cur, Duration::from_secs(10)).await);
        let root = "/registry/configmaps/";
        let all = |_: &Value| true;
        {
            let s = cache.state();
            let res = &s.resources[root];
            assert!(res.history_bytes <= budget, "{}", res.history_bytes);
            // ~10 KB per replaced version: four or five fit.
            assert!(
                (3..=5).contains(&res.history.len()),
                "{}",
                res.history.len()
            );
            let newest = res.history.back().unwrap();
            assert!(Arc::ptr_eq(&newest.object, &res.objects[key]));
            let h: Vec<_> = res.history.iter().collect();
            for w in h.windows(2) {
                assert!(Arc::ptr_eq(w[1].before.as_ref().unwrap(), &w[0].object));
            }
        }
        // Out of the window: the cache does not answer; the store does.
        assert!(cache.list(root, root, Some(r0), &all, None, None).is_none());
        let recent = revs[revs.len() - 3];
        let page = cache
            .list(root, root, Some(recent), &all, None, None)
            .unwrap();
        assert_eq!(
            page.items[0].value()["data"]["blob"].as_str().unwrap()[..3],
            *"18:"
        );
        let mut old = cache.watch(root, root, r0).await.unwrap();
        assert_eq!(next(&mut old).await.revision, revs[1]);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn fan_out_replay_fallback_and_slow_subscribers() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> =
            Arc::new(RedbStore::open(dir.path().join("s.redb"), Default::default()).unwrap());
        let root = "/registry/configmaps/";
        let before = store.current_revision().await.unwrap();
        store
            .create("/registry/configmaps/a/x", Bytes::from_static(b"{}"))
            .await
            .unwrap();
        let r1 = store.current_revision().await.unwrap();
        let cache = started(&store).await;

        // From the current revision: served by the cache; filtered by namespace prefix.
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
        assert_eq!(next(&mut all).await.revision, r_b);
        assert_eq!(next(&mut all).await.revision, r_a);
        let ev = next(&mut ns_a).await;
        assert_eq!((ev.key(), ev.revision), ("/registry/configmaps/a/z", r_a));

        // A later watch from r1 is replayed from the cache's history.
        assert!(cache.wait_for(r_a, Duration::from_secs(10)).await);
        let mut late = cache.watch(root, root, r1).await.unwrap();
        assert_eq!(next(&mut late).await.revision, r_b);
        assert_eq!(next(&mut late).await.revision, r_a);

        // Older than the cache: the store serves it (and has the event before the cache).
        let mut old = cache.watch(root, root, before).await.unwrap();
        assert_eq!(next(&mut old).await.revision, r1);

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
        // `all` (reading) and `ns_a` (no events in its namespace) stay; `_stalled` and `late`
        // (not reading) were cut off. (`old` is a store watch.)
        assert_eq!(cache.subscriber_count(root), 2);
        // A cut-off subscriber's stream ends after what it had buffered.
        let mut drained = 0;
        while let Ok(Some(_)) = tokio::time::timeout(Duration::from_secs(10), late.next()).await {
            drained += 1;
        }
        assert!(drained >= SUBSCRIBER_BUFFER && drained < n, "{drained}");
    }
}
