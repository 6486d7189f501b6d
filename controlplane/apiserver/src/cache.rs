//! The watch cache: every served resource's objects in memory, fed by one store watch, so
//! that LIST and WATCH do not touch the store in steady state (upstream's cacher, with
//! KEP-2340's consistent reads from cache).
//!
//! * At start (and again after its store watch fails) the cache lists everything under
//!   `/registry/` at one revision `R0` and then watches *all* keys from `R0`. Because every
//!   store write produces exactly one event, the cache's revision — that of the last event
//!   applied — reaches the store's current revision as soon as it has seen every write, which
//!   is what a consistent read waits for ([`WatchCache::wait_for`]). On an etcd shared with
//!   writers outside skiff's key prefix no event carries their revisions: a waiting read
//!   asks etcd for a watch progress notification (upstream's `RequestWatchProgress`,
//!   KEP-2340), which tells the cache it has everything up to etcd's revision. Where the
//!   store cannot report progress (an etcd without the fixes, see `EtcdConfig`), such
//!   reads time out and fall back to the store.
//! * Per resource it keeps the objects at the cache's revision, each an immutable
//!   [`CachedObject`] shared by reference (its JSON as a GET returns it, plus the fields
//!   selectors read: upstream's `GetAttrs`), and a history of its changes sized by
//!   [`HistoryLimits`] (every change younger than `fresh`, 75 s as upstream's
//!   `eventFreshDuration`, within a memory budget shared by all resources), each holding
//!   the object's state *before* and
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
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;
use skiff_api::resources::RESOURCES;
use skiff_api::selector::SelectionAttrs;
use skiff_store::{
    Change, Event, KeyValue, ListOptions, ProgressRequester, ProgressWatchStream, Revision, Store,
    StoreError, WatchItem,
};
use tokio::sync::{mpsc, watch};

/// How long the watch cache remembers changes, and how much memory that may take.
///
/// Upstream sizes its cache by freshness (`--watch-cache` dynamic sizing): it grows while
/// its oldest event is younger than 75 s, up to 100 000 events, so that a client that fell
/// behind in a burst resumes its watch instead of relisting (a 410 in a 10k-pod burst
/// means relisting 10k pods, seconds of work for the client and for us). Upstream has no
/// memory bound; here the histories of all resources share [`HistoryLimits::budget_bytes`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HistoryLimits {
    /// Changes younger than this are kept (unless the budget forces them out).
    pub fresh: Duration,
    /// Changes kept per resource whatever their age (a quiet resource keeps its last
    /// changes, so resuming after a quiet spell stays in memory).
    pub min_changes: usize,
    /// Changes kept per resource at most, however young.
    pub max_changes: usize,
    /// Bytes the histories of all resources may keep alive: object versions held only by
    /// history (the states changes replaced, deleted states) and the entries themselves.
    /// Over it, the oldest changes go first, young or not, and that is logged: watchers
    /// further behind then resume from the store (or get 410 once it has compacted).
    pub budget_bytes: usize,
}

impl Default for HistoryLimits {
    fn default() -> Self {
        HistoryLimits {
            fresh: Duration::from_secs(75),
            min_changes: 1000,
            max_changes: 100_000,
            budget_bytes: 64 * 1024 * 1024,
        }
    }
}

/// How often changes that aged out are forgotten when their resource gets no new ones.
const SWEEP_EVERY: Duration = Duration::from_secs(1);
/// Budget warnings are logged at most this often (with what was dropped meanwhile).
const BUDGET_LOG_EVERY: Duration = Duration::from_secs(10);
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
    /// What label and field selectors read, flat ([`SelectionAttrs`]).
    pub attrs: SelectionAttrs,
    /// Bytes this version takes, about ([`CachedObject::size`]).
    size: usize,
}

impl CachedObject {
    /// `kv` decoded, with `resourceVersion` set to `rv`.
    pub fn new(kind: &str, kv: &KeyValue, rv: Revision) -> CachedObject {
        CachedObject::of(kind, kv.key.clone(), &crate::api::decode_kv(kv, rv))
    }

    /// This version with `resourceVersion` set to `rv`: a deleted object as a DELETED
    /// event carries it (the delete's revision), built from the cache's last state of it.
    fn at_revision(&self, kind: &str, rv: Revision) -> CachedObject {
        let mut obj: serde_json::Value = serde_json::from_slice(&self.json).unwrap_or_default();
        crate::api::set_rv(&mut obj, rv);
        CachedObject::of(kind, self.key.clone(), &obj)
    }

    fn of(kind: &str, key: String, obj: &serde_json::Value) -> CachedObject {
        // Exactly sized: `to_vec` grows its buffer by doubling, and `Bytes::from(Vec)`
        // keeps the spare capacity (a quarter of the buffer on average) for as long as the
        // cache holds this version.
        let json = Bytes::from(
            serde_json::to_vec(obj)
                .unwrap_or_default()
                .into_boxed_slice(),
        );
        let attrs = SelectionAttrs::of(kind, obj);
        let size = std::mem::size_of::<CachedObject>()
            + ARC_HEADER
            + key.len()
            + json.len()
            + attrs.heap_size();
        CachedObject {
            key,
            json,
            attrs,
            size,
        }
    }

    /// The heap bytes of this version: its JSON, key and selector attributes, estimated
    /// without allocator overhead (what the history's budget counts).
    pub fn size(&self) -> usize {
        self.size
    }

    /// The object, decoded.
    #[cfg(test)]
    pub fn value(&self) -> serde_json::Value {
        serde_json::from_slice(&self.json).unwrap_or_default()
    }
}

/// An `Arc`'s counts, in front of its value.
const ARC_HEADER: usize = 2 * std::mem::size_of::<usize>();

/// A change of one object, as the history keeps it and watchers receive it.
pub(crate) struct CachedEvent {
    pub revision: Revision,
    /// When the cache applied it (what [`HistoryLimits::fresh`] measures).
    pub at: Instant,
    /// The object's state before the change (`None`: it was created).
    pub before: Option<Arc<CachedObject>>,
    /// The new state; for a delete, the last state with the delete's revision as its
    /// `resourceVersion` (what a DELETED watch event carries, as upstream).
    pub object: Arc<CachedObject>,
    pub deleted: bool,
    /// This change as a watch event line (`{"type":…,"object":…}\n`), per event type,
    /// built by the first watcher that sends it and shared by all others: a change fanned
    /// out to a thousand watchers is encoded once, not once per watcher.
    lines: [OnceLock<Bytes>; 3],
}

impl CachedEvent {
    /// The watch event line of type `ty` (`ADDED`, `MODIFIED` or `DELETED`) carrying this
    /// change's object as cached.
    pub fn line(&self, ty: &'static str) -> Bytes {
        let slot = match ty {
            "ADDED" => 0,
            "MODIFIED" => 1,
            _ => 2,
        };
        self.lines[slot]
            .get_or_init(|| crate::watch::event_line(ty, &self.object.json))
            .clone()
    }

    /// A store event as the cache represents it (decoding its objects): for events the
    /// cache did not see itself (a watch the store serves).
    pub fn from_store(kind: &str, ev: &Event) -> CachedEvent {
        match ev {
            Event::Put { kv, prev } => CachedEvent {
                revision: kv.mod_revision,
                at: Instant::now(),
                lines: Default::default(),
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
                    at: Instant::now(),
                    lines: Default::default(),
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

    /// The bytes this change keeps alive as a history entry, beyond the current state:
    /// the entry itself, the state it replaced and, for a delete, the deleted state.
    /// Each replaced version is the `before` of exactly one change (the next change of
    /// that key shares it as its own `before`'s successor, not as a copy), so summing this
    /// over a history counts every version it holds once.
    fn cost(&self) -> usize {
        let before = self.before.as_ref().map_or(0, |b| b.size());
        std::mem::size_of::<CachedEvent>()
            + ARC_HEADER
            + std::mem::size_of::<Arc<CachedEvent>>()
            + before
            + if self.deleted { self.object.size() } else { 0 }
    }
}

/// What feeds a watch from the cache: the changes as they are, or the store's events
/// for watches the store serves.
pub(crate) type CacheWatchStream =
    std::pin::Pin<Box<dyn futures::Stream<Item = skiff_store::Result<Arc<CachedEvent>>> + Send>>;

struct Resource {
    kind: &'static str,
    objects: BTreeMap<String, Arc<CachedObject>>,
    history: VecDeque<Arc<CachedEvent>>,
    /// The sum of the costs of `history` ([`CachedEvent::cost`]).
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
    /// Applies the change at `revision` (applied at `now`); returns the bytes its history
    /// entry costs.
    fn apply(&mut self, revision: Revision, key: &str, change: Decoded, now: Instant) -> usize {
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
            at: now,
            before,
            object,
            deleted,
            lines: Default::default(),
        });
        let cost = event.cost();
        self.history_bytes += cost;
        self.history.push_back(event.clone());
        // A full channel: that client is too slow; dropping its sender ends its stream
        // once it has drained what it has.
        self.subscribers.retain(|(prefix, tx)| {
            !key.starts_with(prefix.as_str()) || tx.try_send(event.clone()).is_ok()
        });
        cost
    }

    /// Forgets the oldest change; returns its cost and when it was applied.
    fn pop_oldest(&mut self) -> Option<(usize, Instant)> {
        let old = self.history.pop_front()?;
        let cost = old.cost();
        self.history_bytes -= cost;
        self.complete_after = old.revision;
        Some((cost, old.at))
    }

    /// Forgets changes beyond `max_changes`, and those older than `fresh` beyond
    /// `min_changes`; returns the bytes freed.
    fn trim(&mut self, limits: &HistoryLimits, now: Instant) -> usize {
        let mut freed = 0;
        while let Some(front) = self.history.front() {
            let len = self.history.len();
            let aged = now.saturating_duration_since(front.at) > limits.fresh;
            if len <= limits.max_changes.max(1) && (len <= limits.min_changes || !aged) {
                break;
            }
            freed += self.pop_oldest().map_or(0, |(c, _)| c);
        }
        freed
    }
}

/// What the budget made the histories forget early (young changes), for the log and for
/// tests.
#[cfg(test)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct TrimStats {
    /// Changes younger than `fresh` forgotten because of the budget, since start.
    pub early_trims: u64,
    /// The bytes all histories hold now ([`CachedEvent::cost`]).
    pub history_bytes: usize,
}

#[derive(Default)]
struct State {
    /// False until the first fill, and from a failed store watch until the next fill.
    ready: bool,
    /// Every store change up to this revision has been applied.
    revision: Revision,
    /// By resource root, `/registry/<plural>/`.
    resources: HashMap<String, Resource>,
    /// The sum of every resource's `history_bytes`.
    history_bytes: usize,
    /// Changes forgotten early because of the budget, since start.
    early_trims: u64,
    /// Early trims not logged yet, and when the last budget warning was logged.
    unlogged_trims: u64,
    last_budget_log: Option<Instant>,
}

impl State {
    /// Applies `limits` to `root`'s history (after a change to it) or to every one (a
    /// sweep), then the shared budget: the oldest change of all goes first.
    fn trim(&mut self, limits: &HistoryLimits, root: Option<&str>, now: Instant) {
        let freed: usize = match root {
            Some(r) => self
                .resources
                .get_mut(r)
                .map_or(0, |res| res.trim(limits, now)),
            None => self
                .resources
                .values_mut()
                .map(|res| res.trim(limits, now))
                .sum(),
        };
        self.history_bytes -= freed;
        let mut youngest_dropped: Option<Duration> = None;
        while self.history_bytes > limits.budget_bytes {
            let Some(res) = self
                .resources
                .values_mut()
                .filter_map(|r| Some((r.history.front()?.revision, r)))
                .min_by_key(|(rev, _)| *rev)
                .map(|(_, r)| r)
            else {
                break;
            };
            let Some((cost, at)) = res.pop_oldest() else {
                break;
            };
            self.history_bytes -= cost;
            let age = now.saturating_duration_since(at);
            if age <= limits.fresh {
                self.early_trims += 1;
                self.unlogged_trims += 1;
                youngest_dropped = Some(age);
            }
        }
        if let Some(age) = youngest_dropped {
            let due = self
                .last_budget_log
                .is_none_or(|t| now.saturating_duration_since(t) >= BUDGET_LOG_EVERY);
            if due {
                // What a client further behind than this sees: a resume from the store
                // (decoded per watch), or 410 and a relist once the store compacted.
                tracing::warn!(
                    budget_mib = limits.budget_bytes / (1024 * 1024),
                    dropped = self.unlogged_trims,
                    dropped_total = self.early_trims,
                    window_ms = age.as_millis() as u64,
                    "watch cache: history over its memory budget: forgot {} changes \
                     younger than {:?}; the history now covers only the last {:?} \
                     (watchers further behind resume from the store or relist)",
                    self.unlogged_trims,
                    limits.fresh,
                    age,
                );
                self.unlogged_trims = 0;
                self.last_budget_log = Some(now);
            }
        }
    }
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
    limits: HistoryLimits,
    state: Mutex<State>,
    /// `(ready, revision)`, for readers waiting for the cache to catch up.
    progress: watch::Sender<(bool, Revision)>,
    /// Asks the current store watch for a progress notification.
    requester: Mutex<ProgressRequester>,
}

/// How often a reader waiting for the cache repeats its progress request (upstream's
/// progress requester ticks every 100 ms while reads wait).
const PROGRESS_EVERY: Duration = Duration::from_millis(100);

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

fn new_resources(revision: Revision) -> HashMap<String, Resource> {
    RESOURCES
        .iter()
        .map(|r| {
            (
                format!("/registry/{}/", r.plural),
                Resource {
                    kind: r.kind,
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
    /// A cache whose histories keep what `limits` allow.
    pub fn new(store: Arc<dyn Store>, limits: HistoryLimits) -> WatchCache {
        WatchCache {
            shared: Arc::new(Shared {
                store,
                limits,
                state: Mutex::new(State::default()),
                progress: watch::channel((false, 0)).0,
                requester: Mutex::new(ProgressRequester::unsupported()),
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
        let caught_up = |(ready, rev): &(bool, Revision)| *ready && *rev >= revision;
        if caught_up(&rx.borrow()) {
            return true;
        }
        let requester = self
            .shared
            .requester
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let wait = async {
            loop {
                // No event may be coming (writes outside the watched prefix): ask the
                // store whether the cache is current, again while it is not.
                let asked = requester.request();
                let waited = tokio::time::timeout(PROGRESS_EVERY, rx.wait_for(caught_up))
                    .await
                    .map(|r| r.is_ok());
                match waited {
                    Ok(ok) => return ok,
                    Err(_) if asked => continue,
                    Err(_) => return rx.wait_for(caught_up).await.is_ok(),
                }
            }
        };
        tokio::time::timeout(timeout, wait).await.unwrap_or(false)
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
        matches: &dyn Fn(&SelectionAttrs) -> bool,
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

    /// The cached current state of `key` (in the resource root `root`), if the cache is
    /// filled and has it. It may lag the store by the events in flight: callers either
    /// tolerate that (admission, as upstream's informers) or check it with a
    /// compare-and-swap on its `resourceVersion`.
    pub fn current(&self, root: &str, key: &str) -> Option<Arc<CachedObject>> {
        let s = self.state();
        if !s.ready {
            return None;
        }
        s.resources.get(root)?.objects.get(key).cloned()
    }

    /// What the budget made the histories forget, and what they hold.
    #[cfg(test)]
    pub(crate) fn trim_stats(&self) -> TrimStats {
        let s = self.state();
        TrimStats {
            early_trims: s.early_trims,
            history_bytes: s.history_bytes,
        }
    }

    /// The histories' state in Prometheus' text format (served at `/metrics`).
    pub fn metrics(&self) -> String {
        use std::fmt::Write;
        let s = self.state();
        let mut out = String::new();
        let _ = writeln!(
            out,
            "# HELP skiff_watch_cache_history_bytes Bytes the watch cache histories keep alive.\n\
             # TYPE skiff_watch_cache_history_bytes gauge\n\
             skiff_watch_cache_history_bytes {}\n\
             # HELP skiff_watch_cache_history_budget_bytes The histories' memory budget.\n\
             # TYPE skiff_watch_cache_history_budget_bytes gauge\n\
             skiff_watch_cache_history_budget_bytes {}\n\
             # HELP skiff_watch_cache_budget_evictions_total Changes younger than the freshness window forgotten because of the budget.\n\
             # TYPE skiff_watch_cache_budget_evictions_total counter\n\
             skiff_watch_cache_budget_evictions_total {}\n\
             # HELP skiff_watch_cache_history_changes Changes in each resource's history.\n\
             # TYPE skiff_watch_cache_history_changes gauge",
            s.history_bytes, self.shared.limits.budget_bytes, s.early_trims
        );
        let mut roots: Vec<_> = s.resources.iter().collect();
        roots.sort_by_key(|(root, _)| root.as_str());
        for (root, res) in roots {
            let plural = root.trim_start_matches("/registry/").trim_end_matches('/');
            let _ = writeln!(
                out,
                "skiff_watch_cache_history_changes{{resource=\"{plural}\"}} {}",
                res.history.len()
            );
        }
        out
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
        *self.requester.lock().unwrap_or_else(|e| e.into_inner()) =
            ProgressRequester::unsupported();
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
async fn fill(shared: &Shared) -> skiff_store::Result<ProgressWatchStream> {
    let store = &shared.store;
    let revision = store.current_revision().await?;
    let mut resources = new_resources(revision);
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
    let (stream, requester) = store.watch_with_progress("", revision).await?;
    *shared.requester.lock().unwrap_or_else(|e| e.into_inner()) = requester;
    let mut s = shared.state();
    s.resources = resources;
    s.history_bytes = 0;
    s.revision = revision;
    s.ready = true;
    shared.progress.send_replace((true, revision));
    tracing::debug!("watch cache filled at revision {revision}");
    Ok(stream)
}

/// Applies the store's events until its watch ends; returns why. Between events, forgets
/// changes that aged out.
async fn feed(shared: &Shared, mut stream: ProgressWatchStream) -> Option<StoreError> {
    let mut sweep = tokio::time::interval(SWEEP_EVERY);
    sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let ev = tokio::select! {
            ev = stream.next() => ev?,
            _ = sweep.tick() => {
                shared.state().trim(&shared.limits, None, Instant::now());
                continue;
            }
        };
        let ev = match ev {
            Ok(WatchItem::Change(ev)) => ev,
            Ok(WatchItem::Progress(rev)) => {
                // Every change up to `rev` has been applied (they came before this).
                let mut s = shared.state();
                if rev > s.revision {
                    s.revision = rev;
                    drop(s);
                    shared.progress.send_replace((true, rev));
                }
                continue;
            }
            Err(e) => return Some(e),
        };
        let rev = ev.revision();
        let root = root_of(ev.key()).map(str::to_string);
        let kind = root.as_deref().and_then(kind_of_root);
        // Decoding happens before taking the lock readers share.
        let change =
            match (&ev, kind, root.as_deref()) {
                (Change::Put(kv), Some(kind), _) => Some(Decoded::Put(Arc::new(
                    CachedObject::new(kind, kv, kv.mod_revision),
                ))),
                (Change::Delete { key, revision }, Some(kind), Some(root)) => {
                    match deleted_state(shared, kind, root, key, *revision).await {
                        Ok(obj) => Some(Decoded::Delete(Arc::new(obj))),
                        Err(e) => return Some(e),
                    }
                }
                _ => None,
            };
        {
            let mut s = shared.state();
            let now = Instant::now();
            if let (Some(root), Some(change)) = (root, change) {
                if let Some(res) = s.resources.get_mut(&root) {
                    let cost = res.apply(rev, ev.key(), change, now);
                    s.history_bytes += cost;
                    s.trim(&shared.limits, Some(&root), now);
                }
            }
            s.revision = rev;
        }
        shared.progress.send_replace((true, rev));
    }
}

/// The state a delete at `revision` removed, as its DELETED event carries it. The store's
/// watch does not send it ([`Store::watch_with_progress`]): the cache has it, as the object
/// it holds for `key`. That is still the state before this delete when it is applied: only
/// this feed changes the objects, one change at a time, in revision order.
async fn deleted_state(
    shared: &Shared,
    kind: &str,
    root: &str,
    key: &str,
    revision: Revision,
) -> skiff_store::Result<CachedObject> {
    let last = shared
        .state()
        .resources
        .get(root)
        .and_then(|r| r.objects.get(key).cloned());
    if let Some(last) = last {
        return Ok(last.at_revision(kind, revision));
    }
    // Not reached while the cache is consistent (it saw the key's create, or listed it);
    // read the state from the store rather than send a DELETED event without an object.
    tracing::warn!("watch cache: delete of {key} at {revision}, which it does not hold");
    match shared.store.get_at(key, revision.saturating_sub(1)).await? {
        Some(kv) => Ok(CachedObject::new(kind, &kv, revision)),
        None => Err(StoreError::Corrupt {
            location: format!("watch cache, key {key}"),
            reason: format!("deleted at revision {revision} but not live before it"),
        }),
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
        let cache = WatchCache::new(store.clone(), HistoryLimits::default());
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
        let only_new = |a: &SelectionAttrs| a.label("l") == Some("new");
        let all = |_: &SelectionAttrs| true;
        for &at in &revs {
            for prefix in [root, "/registry/configmaps/a/"] {
                for (name, matches) in [
                    ("all", &all as &dyn Fn(&SelectionAttrs) -> bool),
                    ("new", &only_new),
                ] {
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
                            matches(&SelectionAttrs::of("ConfigMap", &v))
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
            let got: Vec<serde_json::Value> = page.items.iter().map(|o| o.value()).collect();
            let want: Vec<serde_json::Value> = want
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
        let cache = WatchCache::new(
            store.clone(),
            HistoryLimits {
                budget_bytes: budget,
                ..Default::default()
            },
        );
        cache.start();
        assert!(cache.wait_for(r0, Duration::from_secs(10)).await);
        let mut revs = vec![r0];
        for round in 1..=20 {
            revs.push(store.update(key, big(round), None).await.unwrap());
        }
        let cur = *revs.last().unwrap();
        assert!(cache.wait_for(cur, Duration::from_secs(10)).await);
        let root = "/registry/configmaps/";
        let all = |_: &SelectionAttrs| true;
        {
            let s = cache.state();
            let res = &s.resources[root];
            assert!(res.history_bytes <= budget, "{}", res.history_bytes);
            assert_eq!(s.history_bytes, accounted(&s));
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

    /// The store's watch does not send deleted states to the cache
    /// (`Store::watch_with_progress`); its DELETED events carry its own last state of the
    /// object with the delete's revision, which is what a watch served by the store (with
    /// the store's previous values) sends: for an object the cache listed at its fill and
    /// for one it saw created and updated through its watch.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn deletes_carry_the_cached_last_state_at_the_delete_revision() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> =
            Arc::new(RedbStore::open(dir.path().join("s.redb"), Default::default()).unwrap());
        let root = "/registry/configmaps/";
        let listed = "/registry/configmaps/a/listed";
        let watched = "/registry/configmaps/a/watched";
        store
            .create(listed, cm("listed", "a", "one"))
            .await
            .unwrap();
        let cache = started(&store).await;
        let from = store.current_revision().await.unwrap();
        let mut from_cache = cache.watch(root, root, from).await.unwrap();
        store
            .create(watched, cm("watched", "a", "one"))
            .await
            .unwrap();
        store
            .update(watched, cm("watched", "a", "two"), None)
            .await
            .unwrap();
        let (d1, _) = store.delete(watched, None).await.unwrap();
        let (d2, _) = store.delete(listed, None).await.unwrap();
        // The store's own watch of the same changes, decoded as for watches it serves.
        let mut from_store = store.watch(root, from).await.unwrap();
        let mut by_store = Vec::new();
        for _ in 0..4 {
            let ev = tokio::time::timeout(Duration::from_secs(10), from_store.next())
                .await
                .unwrap()
                .unwrap()
                .unwrap();
            by_store.push(CachedEvent::from_store("ConfigMap", &ev));
        }
        for (want, (key, revision)) in
            by_store
                .iter()
                .zip([(watched, 0), (watched, 0), (watched, d1), (listed, d2)])
        {
            let got = next(&mut from_cache).await;
            assert_eq!((got.key(), got.revision), (want.key(), want.revision));
            assert_eq!(got.deleted, want.deleted);
            assert_eq!(got.object.json, want.object.json, "{key}");
            assert_eq!(
                got.before.as_ref().map(|b| b.json.clone()),
                want.before.as_ref().map(|b| b.json.clone())
            );
            if revision != 0 {
                assert!(got.deleted);
                let obj = got.object.value();
                assert_eq!(
                    obj["metadata"]["resourceVersion"],
                    serde_json::json!(revision.to_string())
                );
                // The deleted state is the last one: for `watched`, its update's label.
                let label = if key == watched { "two" } else { "one" };
                assert_eq!(obj["metadata"]["labels"]["l"], serde_json::json!(label));
                assert_eq!(got.object.attrs.label("l"), Some(label));
            }
        }
        assert!(cache.current(root, watched).is_none());
        assert!(cache.current(root, listed).is_none());
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

    /// The bytes the histories hold, recomputed from scratch: every entry, plus every
    /// distinct version they reach that the current state does not (by pointer).
    fn accounted(s: &State) -> usize {
        let mut seen = std::collections::HashSet::new();
        let mut bytes = 0;
        for res in s.resources.values() {
            let current: std::collections::HashSet<*const CachedObject> =
                res.objects.values().map(Arc::as_ptr).collect();
            for c in &res.history {
                bytes += std::mem::size_of::<CachedEvent>()
                    + ARC_HEADER
                    + std::mem::size_of::<Arc<CachedEvent>>();
                for v in c.before.iter().chain(std::iter::once(&c.object)) {
                    let p = Arc::as_ptr(v);
                    if !current.contains(&p) && seen.insert(p) {
                        bytes += v.size();
                    }
                }
            }
        }
        bytes
    }

    fn redb(dir: &tempfile::TempDir, config: skiff_store::RedbConfig) -> Arc<dyn Store> {
        Arc::new(RedbStore::open(dir.path().join("s.redb"), config).unwrap())
    }

    /// `n` creates of small ConfigMaps under `ns`, 16 at a time (group commits).
    async fn create_many(store: &Arc<dyn Store>, ns: &str, n: usize) {
        futures::stream::iter(0..n)
            .for_each_concurrent(16, |i| {
                let store = store.clone();
                async move {
                    store
                        .create(&format!("/registry/configmaps/{ns}/k{i}"), cm("x", ns, "v"))
                        .await
                        .unwrap();
                }
            })
            .await;
    }

    /// A watcher that fell 10 000 changes behind in a burst (seconds, well within the
    /// freshness window) resumes from the cache: no 410, no relist, nothing decoded. The
    /// store's automatic compaction, by count alone, would have compacted its version
    /// away; by age it keeps it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_watcher_10k_changes_behind_in_a_burst_resumes_from_memory() {
        let dir = tempfile::tempdir().unwrap();
        let store = redb(
            &dir,
            skiff_store::RedbConfig {
                retention: 1000,
                compact_every: 1000,
                ..Default::default()
            },
        );
        let cache = started(&store).await;
        let root = "/registry/configmaps/";
        let r0 = store.current_revision().await.unwrap();
        const N: usize = 10_000;
        create_many(&store, "burst", N).await;
        let cur = store.current_revision().await.unwrap();
        assert_eq!(cur, r0 + N as u64);
        assert!(cache.wait_for(cur, Duration::from_secs(30)).await);
        assert!(store.compacted_revision().await.unwrap() <= r0);
        let mut w = cache.watch(root, root, r0).await.unwrap();
        assert_eq!(cache.subscriber_count(root), 1, "served by the cache");
        let mut rev = r0;
        for _ in 0..N {
            let ev = next(&mut w).await;
            assert_eq!(ev.revision, rev + 1);
            rev = ev.revision;
        }
        assert_eq!(cache.trim_stats().early_trims, 0);
        assert_eq!(cache.trim_stats().history_bytes, accounted(&cache.state()));
    }

    /// Over the budget the oldest changes go early (counted, logged); the accounting is
    /// exact and within the budget. A watcher behind the remaining window is served by the
    /// store while it still has the version, gets `Compacted` (the client's 410) once it
    /// does not, and a relist then watches from the cache again.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_watcher_behind_the_budget_gets_410_and_a_relist_recovers() {
        let dir = tempfile::tempdir().unwrap();
        let store = redb(&dir, Default::default());
        let budget = 200_000;
        let cache = WatchCache::new(
            store.clone(),
            HistoryLimits {
                budget_bytes: budget,
                ..Default::default()
            },
        );
        cache.start();
        let root = "/registry/configmaps/";
        let big = |i: usize| {
            Bytes::from(
                serde_json::to_vec(&serde_json::json!({
                    "apiVersion": "v1", "kind": "ConfigMap",
                    "metadata": {"name": format!("c{}", i % 10), "namespace": "a"},
                    "data": {"blob": format!("{i}:{}", "x".repeat(5_000))},
                }))
                .unwrap(),
            )
        };
        for i in 0..10 {
            store
                .create(&format!("/registry/configmaps/a/c{i}"), big(i))
                .await
                .unwrap();
        }
        let r0 = store.current_revision().await.unwrap();
        assert!(cache.wait_for(r0, Duration::from_secs(10)).await);
        for i in 10..200 {
            store
                .update(&format!("/registry/configmaps/a/c{}", i % 10), big(i), None)
                .await
                .unwrap();
        }
        // Also a resource that changes little: the budget takes the oldest of all first.
        store
            .create("/registry/secrets/a/s", cm("s", "a", "v"))
            .await
            .unwrap();
        let cur = store.current_revision().await.unwrap();
        assert!(cache.wait_for(cur, Duration::from_secs(10)).await);
        let stats = cache.trim_stats();
        assert!(stats.early_trims > 100, "{stats:?}");
        assert!(stats.history_bytes <= budget, "{stats:?}");
        {
            let s = cache.state();
            assert_eq!(s.history_bytes, accounted(&s));
            assert_eq!(
                s.history_bytes,
                s.resources.values().map(|r| r.history_bytes).sum::<usize>()
            );
            // ~5 KB per replaced version: about 35 fit.
            let kept = s.resources[root].history.len();
            assert!((20..=40).contains(&kept), "{kept}");
            assert_eq!(s.resources["/registry/secrets/"].history.len(), 1);
        }
        // Behind the window: the store serves it while it has the version.
        let mut from_store = cache.watch(root, root, r0).await.unwrap();
        assert_eq!(cache.subscriber_count(root), 0);
        assert_eq!(next(&mut from_store).await.revision, r0 + 1);
        // Compacted: 410.
        store.compact(cur).await.unwrap();
        assert!(matches!(
            cache.watch(root, root, r0).await,
            Err(StoreError::Compacted { .. })
        ));
        // The relist: the current state from the cache, then a watch from its revision.
        let all = |_: &SelectionAttrs| true;
        let page = cache.list(root, root, None, &all, None, None).unwrap();
        assert_eq!(page.items.len(), 10);
        let mut w = cache.watch(root, root, page.revision).await.unwrap();
        assert_eq!(cache.subscriber_count(root), 1);
        let r = store
            .update("/registry/configmaps/a/c0", big(1000), None)
            .await
            .unwrap();
        assert_eq!(next(&mut w).await.revision, r);
    }

    /// Changes older than `fresh` are forgotten (beyond `min_changes`) even when their
    /// resource gets no new ones; that is not an early trim.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn aged_changes_are_swept() {
        let dir = tempfile::tempdir().unwrap();
        let store = redb(&dir, Default::default());
        let cache = WatchCache::new(
            store.clone(),
            HistoryLimits {
                fresh: Duration::from_millis(300),
                min_changes: 3,
                ..Default::default()
            },
        );
        cache.start();
        let r0 = store.current_revision().await.unwrap();
        assert!(cache.wait_for(r0, Duration::from_secs(10)).await);
        create_many(&store, "a", 20).await;
        let cur = store.current_revision().await.unwrap();
        assert!(cache.wait_for(cur, Duration::from_secs(10)).await);
        let root = "/registry/configmaps/";
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let len = cache.state().resources[root].history.len();
            if len == 3 {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "history still {len}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(cache.trim_stats().early_trims, 0);
        assert_eq!(cache.trim_stats().history_bytes, accounted(&cache.state()));
        // The last three are still served from memory; older versions by the store.
        let _w = cache.watch(root, root, cur - 3).await.unwrap();
        assert_eq!(cache.subscriber_count(root), 1);
        let _old = cache.watch(root, root, cur - 4).await.unwrap();
        assert_eq!(cache.subscriber_count(root), 1);
    }
}
