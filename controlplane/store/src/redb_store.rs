//! The embedded backend: one redb file.
//!
//! # Layout
//!
//! - `log`: revision → row. The append-only revision log (kine's table): each write appends
//!   one row holding the key, the value, the key's `create_revision`, the revision of the row
//!   it supersedes (`prev_revision`, 0 for a create) and a tombstone flag for deletes.
//! - `keys`: (key, revision) → tombstone flag. The per-key index: the last entry of a key is
//!   its latest state (live or deleted), earlier entries are the history that snapshot reads
//!   at old revisions need. Reading a key "as of r" is one seek to its last entry `<= r`.
//!   One index serves both current and snapshot reads, so there is no second "latest" table
//!   to keep in step with it.
//! - `meta`: format version, current revision, compacted revision. The current revision is
//!   stored (not derived from the log) so that revisions are never reused, whatever
//!   compaction removes.
//!
//! # Writes
//!
//! Writes commit with `Durability::Immediate` (redb's default: fsync before `commit`
//! returns), so an acknowledged write survives a crash. Writes are serialised by a mutex
//! that also covers publishing the events to the [`Broadcaster`], so live events are
//! published in revision order.
//!
//! Concurrent writes share commits (group commit, as databases amortise their log flush):
//! a writer queues its operation, and whoever holds the write lock next takes every queued
//! operation, applies them in queue order in one transaction (each its own revision, each
//! checked on its own: a conflict fails that operation only), commits once and answers
//! each. The fsync, which dominates a write's cost, is then paid once per batch instead of
//! once per write; an answer still comes only after the commit that made it durable.
//! A [`Store::create_all`] is one queued write of several creates: all its keys are
//! checked before any is staged, so it fails (or succeeds) as a whole inside the batch.
//!
//! # Compaction
//!
//! Compacting to `c` deletes the rows that no snapshot at `r >= c` can see: rows superseded by
//! a row at revision `<= c`, and tombstones older than `c`. Every row at or after `c` stays,
//! and so does the row each of them supersedes unless that is itself at or before `c`
//! (which is exactly what replaying a watch from `c` needs for `prev` values). The log is
//! walked from the old compacted revision in chunks of [`COMPACT_CHUNK`] revisions, one
//! transaction each, so a compaction never holds the write lock for long. Every
//! `compact_every` writes the store compacts itself in the background (a thread per store,
//! [`compactor`]: the write that crosses the boundary only records the target, and other
//! writes wait for at most one chunk), keeping the last `retention`
//! revisions *and* every revision younger than `retention_age`, but never more than
//! `max_retention`: upstream's API server compacts etcd every 5 minutes to the revision of
//! the previous round, so history always spans at least 5 minutes, and the watch cache's
//! window (by age, 75 s) relies on it; a count alone would be seconds of history in a
//! burst of writes. The hard cap keeps the file bounded under endless churn (redb reuses
//! freed pages).
//!
//! # Watch
//!
//! A watch replays the log after `from_revision` in batches (each batch its own read
//! transaction, checking the compacted revision), then registers with the broadcaster once
//! its replay position has caught up with the last published revision; events it already
//! replayed are skipped by revision, so there are no gaps and no duplicates.

use std::collections::VecDeque;
use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use redb::{
    Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition,
    WriteTransaction,
};

use crate::broadcast::{Broadcaster, Subscription};

mod compactor;
use crate::{
    Event, KeyValue, ListOptions, ListResult, Result, Revision, Store, StoreError, WatchStream,
};
use compactor::Compactor;

const LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("log");
const KEYS: TableDefinition<(&str, u64), bool> = TableDefinition::new("keys");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");

const META_FORMAT: &str = "format";
const META_CURRENT: &str = "current_revision";
const META_COMPACTED: &str = "compacted_revision";
const FORMAT_VERSION: u64 = 1;

/// Revisions compacted per transaction.
pub const COMPACT_CHUNK: u64 = 1000;
/// How long a compaction waits between chunks while writes are queued.
const COMPACT_YIELD: Duration = Duration::from_millis(20);
/// Events read per replay batch of a watch.
const REPLAY_BATCH: usize = 256;
/// Log rows scanned per replay batch at most, so a watch on a quiet prefix does not scan the
/// whole log in one read.
const REPLAY_SCAN: usize = 4096;

const BACKEND: &str = "redb";

/// Settings of a [`RedbStore`].
#[derive(Clone, Debug)]
pub struct RedbConfig {
    /// Revisions of history kept by automatic compaction (watch and snapshot reads can go this
    /// far back). Default 10 000.
    pub retention: u64,
    /// Revisions younger than this are kept by automatic compaction too (checked at
    /// `compact_every` granularity; revisions from before the store was opened count as
    /// written at open). Default 5 minutes, upstream's `--etcd-compaction-interval`.
    pub retention_age: Duration,
    /// Automatic compaction never keeps more than this many revisions, however young.
    /// Default 100 000 (upstream's watch cache capacity cap). At least `retention`.
    pub max_retention: u64,
    /// Automatic compaction also keeps the removable history (rows that later writes
    /// replaced or deleted, and tombstones) below about this many bytes, however young:
    /// at 100 000 revisions of 1.5 KB pods the count cap alone would let a 5-minute burst
    /// add 150 MB to the file. The last `retention` revisions are kept regardless.
    /// Measured at `compact_every` granularity over the writes since the store was opened.
    /// Default [`DEFAULT_MAX_RETAINED_BYTES`]; 0: no size bound.
    pub max_retained_bytes: u64,
    /// Run automatic compaction every this many writes (0 disables it). Default 1 000.
    pub compact_every: u64,
    /// Events buffered per live watcher before it is cut off as too slow. Default 1 024.
    pub watch_buffer: usize,
    /// Bytes of file pages redb keeps in memory (its read cache plus its write buffer).
    /// Default [`DEFAULT_CACHE_SIZE`]; redb's own default, 1 GiB, lets the cache grow to
    /// the whole file, duplicating what the kernel's page cache already holds.
    pub cache_size: usize,
}

/// The default [`RedbConfig::max_retained_bytes`]: 64 MiB of replaced versions (the watch
/// cache's history budget is the same size).
pub const DEFAULT_MAX_RETAINED_BYTES: u64 = 64 * 1024 * 1024;

/// The default [`RedbConfig::cache_size`]: 32 MiB. Reads that miss it are served from the
/// kernel's page cache (a `pread`, not a disk read, for a file that fits in memory), and
/// the API server answers LIST and WATCH from its watch cache, not from the store.
pub const DEFAULT_CACHE_SIZE: usize = 32 * 1024 * 1024;

impl Default for RedbConfig {
    fn default() -> Self {
        RedbConfig {
            retention: 10_000,
            retention_age: Duration::from_secs(300),
            max_retention: 100_000,
            max_retained_bytes: DEFAULT_MAX_RETAINED_BYTES,
            compact_every: 1_000,
            watch_buffer: 1_024,
            cache_size: DEFAULT_CACHE_SIZE,
        }
    }
}

/// The embedded store. Cheap to clone (all clones share one database).
#[derive(Clone)]
pub struct RedbStore {
    shared: Arc<Shared>,
}

struct Shared {
    db: Database,
    path: PathBuf,
    config: RedbConfig,
    /// Serialises writes together with publishing their events (see module docs).
    writer: Mutex<()>,
    /// Writes waiting for the next commit (group commit, see module docs).
    queue: Mutex<Vec<Pending>>,
    /// Write transactions committed (each one fsync), for tests and metrics.
    commits: std::sync::atomic::AtomicU64,
    broadcaster: Broadcaster,
    /// `(when, revision)`: the current revision at open and at each automatic-compaction
    /// check, oldest first; what `retention_age` is measured with.
    checkpoints: Mutex<VecDeque<Checkpoint>>,
    /// Bytes of rows made removable (replaced or deleted, plus tombstones) by the writes
    /// since open, cumulative: what [`RedbConfig::max_retained_bytes`] is measured with.
    superseded_bytes: std::sync::atomic::AtomicU64,
    /// Held by a compaction run (automatic or [`Store::compact`]), so runs do not overlap.
    compacting: Mutex<()>,
    /// Runs automatic compaction in the background (see [`compactor`]). `None` only while
    /// the store is being built.
    compactor: Option<Compactor>,
}

/// What one write answers: its revision and the key's previous state.
type WriteResult = (Revision, Option<KeyValue>);
type Reply = std::sync::mpsc::SyncSender<Result<Vec<WriteResult>>>;

/// A queued write and where its answer goes: one operation, or several that commit
/// together or not at all ([`Store::create_all`]).
struct Pending {
    ops: Vec<(String, WriteOp)>,
    reply: Reply,
}

/// A write batch that takes at least this long (staging, commit with its fsync, publishing)
/// is logged with the split.
const SLOW_COMMIT: Duration = Duration::from_millis(50);

/// At most this many writes share one transaction, so a burst does not make the first
/// writer wait for thousands of others to be staged.
const MAX_BATCH: usize = 512;

/// Locks `m`, also after a panic elsewhere (the data behind these locks stays consistent:
/// the queue is a plain list and the writer lock guards nothing but ordering).
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn fail_all(batch: Vec<Pending>, operation: &'static str, e: &redb::Error) {
    for p in batch {
        let _ = p
            .reply
            .send(Err(StoreError::backend(BACKEND, operation, e.to_string())));
    }
}

fn db_err(operation: &'static str) -> impl FnOnce(redb::Error) -> StoreError {
    move |e| StoreError::backend(BACKEND, operation, e)
}

/// Converts any redb error type into a [`StoreError::Backend`] naming the operation.
macro_rules! tri {
    ($e:expr, $op:expr) => {
        $e.map_err(|e| db_err($op)(e.into()))?
    };
}

/// One row of the revision log.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Row {
    key: String,
    value: Bytes,
    create_revision: Revision,
    /// The row of this key this one supersedes; 0 for a create.
    prev_revision: Revision,
    deleted: bool,
}

// Row encoding, version 1 (little endian):
//   u8 flags (bit 0: tombstone) | u64 create_revision | u64 prev_revision |
//   u32 key length | key bytes | value bytes (the rest)
const ROW_HEADER: usize = 1 + 8 + 8 + 4;

impl Row {
    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(ROW_HEADER + self.key.len() + self.value.len());
        out.push(u8::from(self.deleted));
        out.extend_from_slice(&self.create_revision.to_le_bytes());
        out.extend_from_slice(&self.prev_revision.to_le_bytes());
        let key_len = u32::try_from(self.key.len()).expect("keys are far shorter than 4 GiB");
        out.extend_from_slice(&key_len.to_le_bytes());
        out.extend_from_slice(self.key.as_bytes());
        out.extend_from_slice(&self.value);
        out
    }

    fn decode(revision: Revision, data: &[u8]) -> Result<Row> {
        let head = RowHead::decode(revision, data)?;
        Ok(Row {
            key: head.key.to_owned(),
            value: Bytes::copy_from_slice(&data[head.value_at..]),
            create_revision: head.create_revision,
            prev_revision: head.prev_revision,
            deleted: head.deleted,
        })
    }

    fn into_kv(self, mod_revision: Revision) -> KeyValue {
        KeyValue {
            key: self.key,
            value: self.value,
            create_revision: self.create_revision,
            mod_revision,
        }
    }
}

/// A row's header and key, borrowed from the encoded row (what compaction reads).
struct RowHead<'a> {
    key: &'a str,
    create_revision: Revision,
    prev_revision: Revision,
    deleted: bool,
    /// Where the value starts in the encoded row.
    value_at: usize,
}

impl<'a> RowHead<'a> {
    fn decode(revision: Revision, data: &'a [u8]) -> Result<RowHead<'a>> {
        let corrupt = |reason: &str| StoreError::Corrupt {
            location: format!("log row {revision}"),
            reason: reason.to_owned(),
        };
        if data.len() < ROW_HEADER {
            return Err(corrupt("row shorter than its header"));
        }
        let u64_at = |at: usize| u64::from_le_bytes(data[at..at + 8].try_into().expect("8 bytes"));
        let flags = data[0];
        if flags > 1 {
            return Err(corrupt("unknown flags"));
        }
        let key_len = u32::from_le_bytes(data[17..21].try_into().expect("4 bytes")) as usize;
        let key_end = ROW_HEADER
            .checked_add(key_len)
            .filter(|end| *end <= data.len())
            .ok_or_else(|| corrupt("key length past the end of the row"))?;
        let key = std::str::from_utf8(&data[ROW_HEADER..key_end])
            .map_err(|_| corrupt("key is not UTF-8"))?;
        Ok(RowHead {
            key,
            create_revision: u64_at(1),
            prev_revision: u64_at(9),
            deleted: flags == 1,
            value_at: key_end,
        })
    }
}

fn read_row(log: &impl ReadableTable<u64, &'static [u8]>, revision: Revision) -> Result<Row> {
    let guard = tri!(log.get(revision), "read log row").ok_or_else(|| StoreError::Corrupt {
        location: format!("log row {revision}"),
        reason: "row referenced by the key index or a later row is missing".into(),
    })?;
    Row::decode(revision, guard.value())
}

fn read_meta(meta: &impl ReadableTable<&'static str, u64>, name: &str) -> Result<u64> {
    tri!(meta.get(name), "read metadata")
        .map(|g| g.value())
        .ok_or_else(|| StoreError::Corrupt {
            location: format!("metadata {name:?}"),
            reason: "missing".into(),
        })
}

/// The key's last index entry at or before `revision`: `(mod_revision, tombstone)`.
fn latest_entry(
    keys: &impl ReadableTable<(&'static str, u64), bool>,
    key: &str,
    revision: Revision,
) -> Result<Option<(Revision, bool)>> {
    let mut range = tri!(keys.range((key, 0)..=(key, revision)), "read key index");
    match range.next_back() {
        None => Ok(None),
        Some(entry) => {
            let (k, v) = tri!(entry, "read key index");
            Ok(Some((k.value().1, v.value())))
        }
    }
}

/// The key's live state at `revision`, if any.
fn live_at(
    keys: &impl ReadableTable<(&'static str, u64), bool>,
    log: &impl ReadableTable<u64, &'static [u8]>,
    key: &str,
    revision: Revision,
) -> Result<Option<KeyValue>> {
    match latest_entry(keys, key, revision)? {
        Some((rev, false)) => Ok(Some(read_row(log, rev)?.into_kv(rev))),
        _ => Ok(None),
    }
}

/// The store at one automatic-compaction check: when, its revision, and the cumulative
/// bytes its writes had made removable by then.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Checkpoint {
    at: Instant,
    revision: Revision,
    superseded: u64,
}

/// Where automatic compaction at `now` compacts to, if anywhere; records the checkpoint
/// `now` and forgets those no longer needed.
///
/// - By age: every revision up to a checkpoint's was written at or before its instant, so
///   compacting to the newest checkpoint at least `retention_age` old never drops a
///   younger revision.
/// - By size: a row replaced at revision `s` goes with a compaction to `s` or later, so
///   after compacting to checkpoint `c` the removable history left is about
///   `now.superseded - c.superseded`; the oldest checkpoint that brings it within
///   `max_retained_bytes` is the target (overriding the age, not the `retention` floor).
fn auto_compact_target(
    cps: &mut VecDeque<Checkpoint>,
    now: Checkpoint,
    config: &RedbConfig,
) -> Option<Revision> {
    cps.push_back(now);
    // The newest checkpoint old enough; the ones before it are no longer needed.
    let old_enough = |at: Instant| now.at.saturating_duration_since(at) >= config.retention_age;
    while cps.len() > 1 && old_enough(cps[1].at) {
        cps.pop_front();
    }
    let aged = match cps.front() {
        Some(cp) if old_enough(cp.at) => cp.revision,
        _ => 0,
    };
    // Index 0 within the bound: no pressure beyond what the age already allows.
    let by_size = match config.max_retained_bytes {
        0 => 0,
        max => match cps
            .iter()
            .position(|cp| now.superseded.saturating_sub(cp.superseded) <= max)
        {
            Some(0) | None => 0,
            Some(i) => cps[i].revision,
        },
    };
    let by_count = now.revision.saturating_sub(config.retention);
    let cap = now.revision.saturating_sub(config.max_retention);
    let target = by_count.min(aged.max(by_size)).max(cap);
    (target > 0).then_some(target)
}

/// Checks that a snapshot at `requested` can be read.
/// The bytes of log rows that `event` made removable by compaction: the row it replaced
/// or deleted, and its own tombstone.
fn removable_bytes(event: &Event) -> u64 {
    let row = |kv: &KeyValue| (ROW_HEADER + kv.key.len() + kv.value.len()) as u64;
    match event {
        Event::Put { prev, .. } => prev.as_ref().map_or(0, row),
        Event::Delete { prev, .. } => row(prev) + (ROW_HEADER + prev.key.len()) as u64,
    }
}

fn check_readable(requested: Revision, current: Revision, compacted: Revision) -> Result<()> {
    if requested < compacted {
        return Err(StoreError::Compacted {
            requested,
            compacted,
        });
    }
    if requested > current {
        return Err(StoreError::FutureRevision { requested, current });
    }
    Ok(())
}

enum WriteOp {
    Create(Bytes),
    Update(Bytes, Option<Revision>),
    Delete(Option<Revision>),
}

impl RedbStore {
    /// Opens (or creates) the store file at `path`. Blocks on file I/O; call it at start-up or
    /// from `spawn_blocking`. After a crash redb repairs the file on open, which reads it all.
    pub fn open(path: impl AsRef<Path>, config: RedbConfig) -> Result<RedbStore> {
        let path = path.as_ref().to_path_buf();
        if config.retention == 0 {
            return Err(StoreError::InvalidArgument {
                reason: "RedbConfig::retention must be at least 1 revision".into(),
            });
        }
        if config.max_retention < config.retention {
            return Err(StoreError::InvalidArgument {
                reason: format!(
                    "RedbConfig::max_retention ({}) must be at least retention ({})",
                    config.max_retention, config.retention
                ),
            });
        }
        let db = redb::Builder::new()
            .set_cache_size(config.cache_size)
            .create(&path)
            .map_err(|e| {
                StoreError::backend(
                    BACKEND,
                    "open",
                    format!("cannot open store file {}: {e}", path.display()),
                )
            })?;
        let txn = tri!(db.begin_write(), "begin open transaction");
        let current = {
            tri!(txn.open_table(LOG), "create log table");
            tri!(txn.open_table(KEYS), "create key index");
            let mut meta = tri!(txn.open_table(META), "create metadata table");
            let format = tri!(meta.get(META_FORMAT), "read metadata").map(|g| g.value());
            match format {
                None => {
                    tri!(meta.insert(META_FORMAT, FORMAT_VERSION), "init metadata");
                    tri!(meta.insert(META_CURRENT, 0), "init metadata");
                    tri!(meta.insert(META_COMPACTED, 0), "init metadata");
                    0
                }
                Some(FORMAT_VERSION) => read_meta(&meta, META_CURRENT)?,
                Some(other) => {
                    return Err(StoreError::Corrupt {
                        location: path.display().to_string(),
                        reason: format!(
                            "store format {other} is not supported by this build \
                             (it reads format {FORMAT_VERSION})"
                        ),
                    })
                }
            }
        };
        tri!(txn.commit(), "commit open transaction");
        let broadcaster = Broadcaster::new(current, config.watch_buffer);
        let mut spawn_error = None;
        let shared = Arc::new_cyclic(|weak| Shared {
            db,
            path,
            config,
            writer: Mutex::new(()),
            queue: Mutex::new(Vec::new()),
            commits: std::sync::atomic::AtomicU64::new(0),
            broadcaster,
            checkpoints: Mutex::new(VecDeque::from([Checkpoint {
                at: Instant::now(),
                revision: current,
                superseded: 0,
            }])),
            superseded_bytes: std::sync::atomic::AtomicU64::new(0),
            compacting: Mutex::new(()),
            compactor: Compactor::spawn(weak.clone())
                .map_err(|e| spawn_error = Some(e))
                .ok(),
        });
        if let Some(e) = spawn_error {
            return Err(StoreError::backend(
                BACKEND,
                "open",
                format!("cannot start the compaction thread: {e}"),
            ));
        }
        Ok(RedbStore { shared })
    }

    /// The file backing this store.
    pub fn path(&self) -> &Path {
        &self.shared.path
    }

    /// Write transactions committed so far for writes (group commit shares one among
    /// concurrent writes; compaction's own transactions are not counted).
    pub fn write_commits(&self) -> u64 {
        self.shared.commits.load(Ordering::Relaxed)
    }

    /// Number of rows in the revision log (for tests and metrics: compaction bounds it).
    pub async fn log_len(&self) -> Result<u64> {
        self.blocking(|s| {
            let txn = tri!(s.db.begin_read(), "begin read");
            let log = tri!(txn.open_table(LOG), "open log");
            Ok(tri!(log.len(), "count log rows"))
        })
        .await
    }

    async fn blocking<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Shared) -> Result<T> + Send + 'static,
    {
        let shared = self.shared.clone();
        tokio::task::spawn_blocking(move || f(&shared))
            .await
            .map_err(|e| StoreError::backend(BACKEND, "run blocking task", e))?
    }

    async fn write(&self, key: &str, op: WriteOp) -> Result<(Revision, Option<KeyValue>)> {
        crate::check_key(key)?;
        let mut results = self.write_all(vec![(key.to_owned(), op)]).await?;
        Ok(results.remove(0))
    }

    /// Applies `ops` (distinct, checked keys) atomically; one result per operation.
    async fn write_all(&self, ops: Vec<(String, WriteOp)>) -> Result<Vec<WriteResult>> {
        self.blocking(move |s| {
            let results = s.write(ops)?;
            for (revision, _) in &results {
                s.request_auto_compact(*revision);
            }
            Ok(results)
        })
        .await
    }
}

impl Shared {
    /// Applies one write durably and publishes its event, sharing the commit with the
    /// writes queued at the same time (see module docs).
    fn write(&self, ops: Vec<(String, WriteOp)>) -> Result<Vec<WriteResult>> {
        let (reply, answer) = std::sync::mpsc::sync_channel(1);
        lock(&self.queue).push(Pending { ops, reply });
        loop {
            let writer = lock(&self.writer);
            // The batch that held the lock may have taken (and answered) this write.
            if let Ok(result) = answer.try_recv() {
                return result;
            }
            let batch: Vec<Pending> = {
                let mut q = lock(&self.queue);
                let n = q.len().min(MAX_BATCH);
                q.drain(..n).collect()
            };
            self.commit_batch(batch);
            drop(writer);
            // Answers are sent before the lock is released, so this write has its answer
            // now unless it was beyond MAX_BATCH in the queue: then take the lock again.
            if let Ok(result) = answer.try_recv() {
                return result;
            }
        }
    }

    /// Stages `batch` in one transaction, commits, publishes the events in revision order
    /// and answers every write. A write that fails its own checks (conflict, exists, not
    /// found) changes nothing and fails alone; a failure of the database fails the batch.
    fn commit_batch(&self, batch: Vec<Pending>) {
        if batch.is_empty() {
            return;
        }
        let started = Instant::now();
        let writes = batch.len();
        let txn = match self.db.begin_write() {
            Ok(txn) => txn,
            Err(e) => return fail_all(batch, "begin write", &e.into()),
        };
        let mut staged: Vec<(Reply, Result<Vec<Event>>)> = Vec::with_capacity(batch.len());
        for p in batch {
            let result = Self::stage_atomic(&txn, p.ops);
            if let Err(StoreError::Backend { .. }) = &result {
                // The transaction may hold part of this write: nothing of it may commit.
                let _ = txn.abort();
                let message = result.err().map(|e| e.to_string()).unwrap_or_default();
                let _ = p.reply.send(Err(StoreError::backend(
                    BACKEND,
                    "stage write",
                    message.clone(),
                )));
                for (q, _) in staged {
                    let _ = q.send(Err(StoreError::backend(
                        BACKEND,
                        "stage write",
                        message.clone(),
                    )));
                }
                return;
            }
            staged.push((p.reply, result));
        }
        let staged_at = Instant::now();
        let committed = txn.commit();
        let committed_at = Instant::now();
        self.commits.fetch_add(1, Ordering::Relaxed);
        if let Err(e) = committed {
            let message = redb::Error::from(e).to_string();
            for (q, _) in staged {
                let _ = q.send(Err(StoreError::backend(
                    BACKEND,
                    "commit write",
                    message.clone(),
                )));
            }
            return;
        }
        for (reply, result) in staged {
            let answer = result.map(|events| {
                events
                    .into_iter()
                    .map(|event| {
                        self.superseded_bytes
                            .fetch_add(removable_bytes(&event), Ordering::Relaxed);
                        self.broadcaster.publish(&event);
                        match event {
                            Event::Put { kv, prev } => (kv.mod_revision, prev),
                            Event::Delete { revision, prev } => (revision, Some(prev)),
                        }
                    })
                    .collect()
            });
            let _ = reply.send(answer);
        }
        // Where a slow write answer's time went (a write waits for the batch ahead of it
        // too, so its answer can take up to twice this).
        let total = started.elapsed();
        if total >= SLOW_COMMIT {
            let ms = |d: Duration| d.as_secs_f64() * 1e3;
            tracing::info!(
                writes,
                stage_ms = ms(staged_at - started),
                commit_ms = ms(committed_at - staged_at),
                publish_ms = ms(committed_at.elapsed()),
                "slow redb write batch: {:.1} ms",
                ms(total)
            );
        }
    }

    /// Stages the operations of one queued write: all of them, or (when one fails its
    /// check) none. Each gets its own revision, in order, in the batch's transaction.
    fn stage_atomic(txn: &WriteTransaction, ops: Vec<(String, WriteOp)>) -> Result<Vec<Event>> {
        if ops.len() > 1 {
            // Checked before anything is staged, so a failed check leaves the transaction
            // (shared with the batch's other writes) untouched. The keys are distinct, so
            // staging one cannot change another's check. Only creates come in groups.
            let keys = tri!(txn.open_table(KEYS), "open key index");
            let meta = tri!(txn.open_table(META), "open metadata");
            let current = read_meta(&meta, META_CURRENT)?;
            for (key, op) in &ops {
                debug_assert!(matches!(op, WriteOp::Create(_)));
                if let Some((_, false)) = latest_entry(&keys, key, current)? {
                    return Err(StoreError::AlreadyExists { key: key.clone() });
                }
            }
        }
        ops.into_iter()
            .map(|(key, op)| Self::stage_write(txn, &key, op))
            .collect()
    }

    fn stage_write(txn: &WriteTransaction, key: &str, op: WriteOp) -> Result<Event> {
        let mut meta = tri!(txn.open_table(META), "open metadata");
        let mut log = tri!(txn.open_table(LOG), "open log");
        let mut keys = tri!(txn.open_table(KEYS), "open key index");
        let current = read_meta(&meta, META_CURRENT)?;
        let prev = live_at(&keys, &log, key, current)?;
        let revision = current + 1;

        let check = |expected: Option<Revision>| -> Result<KeyValue> {
            let prev = prev.clone().ok_or_else(|| StoreError::NotFound {
                key: key.to_owned(),
            })?;
            match expected {
                Some(expected) if expected != prev.mod_revision => Err(StoreError::Conflict {
                    key: key.to_owned(),
                    expected,
                    current: prev.mod_revision,
                }),
                _ => Ok(prev),
            }
        };
        let (row, event) = match op {
            WriteOp::Create(value) => {
                if prev.is_some() {
                    return Err(StoreError::AlreadyExists {
                        key: key.to_owned(),
                    });
                }
                let row = Row {
                    key: key.to_owned(),
                    value,
                    create_revision: revision,
                    prev_revision: 0,
                    deleted: false,
                };
                let kv = row.clone().into_kv(revision);
                (row, Event::Put { kv, prev: None })
            }
            WriteOp::Update(value, expected) => {
                let prev = check(expected)?;
                let row = Row {
                    key: key.to_owned(),
                    value,
                    create_revision: prev.create_revision,
                    prev_revision: prev.mod_revision,
                    deleted: false,
                };
                let kv = row.clone().into_kv(revision);
                (
                    row,
                    Event::Put {
                        kv,
                        prev: Some(prev),
                    },
                )
            }
            WriteOp::Delete(expected) => {
                let prev = check(expected)?;
                let row = Row {
                    key: key.to_owned(),
                    value: Bytes::new(),
                    create_revision: prev.create_revision,
                    prev_revision: prev.mod_revision,
                    deleted: true,
                };
                (row, Event::Delete { revision, prev })
            }
        };
        tri!(
            log.insert(revision, row.encode().as_slice()),
            "append log row"
        );
        tri!(
            keys.insert((key, revision), row.deleted),
            "update key index"
        );
        tri!(meta.insert(META_CURRENT, revision), "advance revision");
        Ok(event)
    }

    /// Every `compact_every` revisions, asks the background compactor to compact away
    /// what is older than both the last `retention` revisions and `retention_age`, within
    /// `max_retention` (module docs). Returns at once: the write that crossed the boundary
    /// does not wait for the compaction (a failure there is logged by the compactor).
    fn request_auto_compact(&self, revision: Revision) {
        let every = self.config.compact_every;
        if every == 0 || !revision.is_multiple_of(every) {
            return;
        }
        let now = Checkpoint {
            at: Instant::now(),
            revision,
            superseded: self.superseded_bytes.load(Ordering::Relaxed),
        };
        let target = {
            let mut cps = lock(&self.checkpoints);
            auto_compact_target(&mut cps, now, &self.config)
        };
        if let (Some(target), Some(compactor)) = (target, &self.compactor) {
            compactor.request(target);
        }
    }

    /// Compacts the log to `target`, [`COMPACT_CHUNK`] revisions per transaction.
    ///
    /// Writes wait for at most one chunk: each chunk holds the writer lock (redb has one
    /// write transaction at a time anyway) only for its own transaction, and between
    /// chunks the compaction waits while writes are queued, up to [`COMPACT_YIELD`], so a
    /// steady stream of writes still lets it progress. The chunks before the last commit
    /// with `Durability::None` (no fsync; redb makes them durable with the next durable
    /// commit, and a crash before that loses only compaction work, redone later); the last
    /// one, or the chunk that finds nothing left, commits durably, so the run is on disk
    /// when this returns.
    fn compact(&self, target: Revision) -> Result<()> {
        let _run = lock(&self.compacting);
        let started = Instant::now();
        let (mut chunks, mut removed, mut longest) = (0u32, 0usize, Duration::ZERO);
        let mut durable_pending = false;
        loop {
            let writer = lock(&self.writer);
            let chunk_started = Instant::now();
            let mut txn = tri!(self.db.begin_write(), "begin compaction");
            let outcome = Self::compact_chunk(&txn, target);
            let done = match outcome {
                Ok(Some(n)) => {
                    removed += n;
                    false
                }
                Ok(None) => true,
                Err(e) => {
                    tri!(txn.abort(), "abort compaction");
                    return Err(e);
                }
            };
            if done && !durable_pending {
                tri!(txn.abort(), "end compaction");
            } else {
                // The chunk that finds nothing left makes the earlier ones durable.
                let durability = if done {
                    redb::Durability::Immediate
                } else {
                    redb::Durability::None
                };
                tri!(txn.set_durability(durability), "set compaction durability");
                tri!(txn.commit(), "commit compaction");
                durable_pending = !done;
            }
            drop(writer);
            longest = longest.max(chunk_started.elapsed());
            if done {
                break;
            }
            chunks += 1;
            self.yield_to_writers();
        }
        if chunks > 0 {
            let (longest_chunk_ms, total_ms) = (
                longest.as_secs_f64() * 1e3,
                started.elapsed().as_secs_f64() * 1e3,
            );
            // A chunk is the longest a write waits for compaction: worth seeing when slow.
            if longest >= SLOW_COMMIT {
                tracing::info!(
                    target,
                    chunks,
                    removed,
                    longest_chunk_ms,
                    total_ms,
                    "compacted the redb log (slow chunk)"
                );
            } else {
                tracing::debug!(
                    target,
                    chunks,
                    removed,
                    longest_chunk_ms,
                    total_ms,
                    "compacted the redb log"
                );
            }
        }
        Ok(())
    }

    /// Waits (up to [`COMPACT_YIELD`]) while writes are queued, so they take the writer
    /// lock before the next compaction chunk does (a mutex is not fair: the compactor could
    /// otherwise take it again right after releasing it).
    fn yield_to_writers(&self) {
        let until = Instant::now() + COMPACT_YIELD;
        while !lock(&self.queue).is_empty() && Instant::now() < until {
            std::thread::sleep(Duration::from_micros(200));
        }
    }

    /// Compacts up to [`COMPACT_CHUNK`] revisions towards `target`: `Ok(Some(rows removed))`,
    /// or `Ok(None)` when there was nothing left to do.
    fn compact_chunk(txn: &WriteTransaction, target: Revision) -> Result<Option<usize>> {
        let mut meta = tri!(txn.open_table(META), "open metadata");
        let mut log = tri!(txn.open_table(LOG), "open log");
        let mut keys = tri!(txn.open_table(KEYS), "open key index");
        let current = read_meta(&meta, META_CURRENT)?;
        let compacted = read_meta(&meta, META_COMPACTED)?;
        if target > current {
            return Err(StoreError::FutureRevision {
                requested: target,
                current,
            });
        }
        if target <= compacted {
            return Ok(None);
        }
        let end = target.min(compacted + COMPACT_CHUNK);
        // Rows at `compacted` are re-examined: a tombstone there was kept by the previous
        // compaction (it was not older than it) and can go now.
        let mut doomed: Vec<(String, Revision)> = Vec::new();
        for entry in tri!(log.range(compacted..=end), "scan log") {
            let (rev, data) = tri!(entry, "scan log");
            let rev = rev.value();
            // The header only: the value (most of the row) is not needed, nor copied.
            let head = RowHead::decode(rev, data.value())?;
            if head.prev_revision != 0 {
                doomed.push((head.key.to_owned(), head.prev_revision));
            }
            if head.deleted && rev < end {
                doomed.push((head.key.to_owned(), rev));
            }
        }
        for (key, rev) in &doomed {
            tri!(log.remove(*rev), "remove log row");
            tri!(keys.remove((key.as_str(), *rev)), "remove key index entry");
        }
        tri!(
            meta.insert(META_COMPACTED, end),
            "advance compacted revision"
        );
        Ok(Some(doomed.len()))
    }

    fn list(&self, prefix: &str, options: &ListOptions) -> Result<ListResult> {
        let txn = tri!(self.db.begin_read(), "begin read");
        let meta = tri!(txn.open_table(META), "open metadata");
        let log = tri!(txn.open_table(LOG), "open log");
        let keys = tri!(txn.open_table(KEYS), "open key index");
        let current = read_meta(&meta, META_CURRENT)?;
        let revision = options.revision.unwrap_or(current);
        check_readable(revision, current, read_meta(&meta, META_COMPACTED)?)?;
        let limit = options.limit.filter(|l| *l > 0).unwrap_or(usize::MAX);

        let mut items = Vec::new();
        let mut remaining = 0u64;
        // Walk distinct keys: seek to the first index entry after the previous key, then seek
        // that key's last entry at or before `revision`. Two seeks per key, however long its
        // history.
        let mut cursor: String = match &options.continue_after {
            Some(after) if after.as_str() >= prefix => after.clone(),
            _ => String::new(),
        };
        let mut first = cursor.is_empty();
        loop {
            let lower = if first {
                Bound::Included((prefix, 0))
            } else {
                Bound::Excluded((cursor.as_str(), u64::MAX))
            };
            first = false;
            let next_key = {
                let mut range = tri!(
                    keys.range::<(&str, u64)>((lower, Bound::Unbounded)),
                    "scan key index"
                );
                match range.next() {
                    None => break,
                    Some(entry) => {
                        let (k, _) = tri!(entry, "scan key index");
                        let k = k.value().0;
                        if !k.starts_with(prefix) {
                            break;
                        }
                        k.to_owned()
                    }
                }
            };
            if let Some((rev, false)) = latest_entry(&keys, &next_key, revision)? {
                if items.len() < limit {
                    items.push(read_row(&log, rev)?.into_kv(rev));
                } else {
                    remaining += 1;
                }
            }
            cursor = next_key;
        }
        Ok(ListResult {
            items,
            revision,
            remaining,
        })
    }

    fn get_at(&self, key: &str, revision: Option<Revision>) -> Result<Option<KeyValue>> {
        let txn = tri!(self.db.begin_read(), "begin read");
        let meta = tri!(txn.open_table(META), "open metadata");
        let log = tri!(txn.open_table(LOG), "open log");
        let keys = tri!(txn.open_table(KEYS), "open key index");
        let current = read_meta(&meta, META_CURRENT)?;
        let revision = revision.unwrap_or(current);
        check_readable(revision, current, read_meta(&meta, META_COMPACTED)?)?;
        live_at(&keys, &log, key, revision)
    }

    fn revisions(&self) -> Result<(Revision, Revision)> {
        let txn = tri!(self.db.begin_read(), "begin read");
        let meta = tri!(txn.open_table(META), "open metadata");
        Ok((
            read_meta(&meta, META_CURRENT)?,
            read_meta(&meta, META_COMPACTED)?,
        ))
    }

    /// Reads the next replay batch after `pos`: matching events and the last revision
    /// scanned (`pos` itself when the log has nothing newer).
    fn replay_batch(&self, prefix: &str, pos: Revision) -> Result<(Vec<Event>, Revision)> {
        let txn = tri!(self.db.begin_read(), "begin read");
        let meta = tri!(txn.open_table(META), "open metadata");
        let log = tri!(txn.open_table(LOG), "open log");
        let compacted = read_meta(&meta, META_COMPACTED)?;
        // Checked in the same snapshot as the rows are read: with `pos >= compacted`, every
        // row after `pos` and every `prev` they need is still there.
        if pos < compacted {
            return Err(StoreError::Compacted {
                requested: pos,
                compacted,
            });
        }
        let mut events = Vec::new();
        let mut scanned_through = pos;
        for (scanned, entry) in tri!(log.range(pos + 1..), "scan log").enumerate() {
            if scanned >= REPLAY_SCAN || events.len() >= REPLAY_BATCH {
                break;
            }
            let (rev, data) = tri!(entry, "scan log");
            let rev = rev.value();
            scanned_through = rev;
            let row = Row::decode(rev, data.value())?;
            if !row.key.starts_with(prefix) {
                continue;
            }
            let prev = match row.prev_revision {
                0 => None,
                p => Some(read_row(&log, p)?.into_kv(p)),
            };
            events.push(if row.deleted {
                Event::Delete {
                    revision: rev,
                    prev: prev.ok_or_else(|| StoreError::Corrupt {
                        location: format!("log row {rev}"),
                        reason: "tombstone without a previous row".into(),
                    })?,
                }
            } else {
                Event::Put {
                    kv: row.into_kv(rev),
                    prev,
                }
            });
        }
        Ok((events, scanned_through))
    }
}

enum WatchState {
    Replay {
        shared: Arc<Shared>,
        prefix: String,
        pos: Revision,
        buffered: VecDeque<Event>,
    },
    Live {
        sub: Subscription,
        prefix: String,
        buffer: usize,
        /// Events at or before this revision were already replayed (a commit can be read by
        /// the replay before it is published).
        skip_through: Revision,
    },
    Done,
}

impl WatchState {
    async fn next(self) -> Option<(Result<Event>, WatchState)> {
        let mut state = self;
        loop {
            match state {
                WatchState::Done => return None,
                WatchState::Replay {
                    shared,
                    prefix,
                    pos,
                    mut buffered,
                } => {
                    if let Some(event) = buffered.pop_front() {
                        let pos = event.revision();
                        let next = WatchState::Replay {
                            shared,
                            prefix,
                            pos,
                            buffered,
                        };
                        return Some((Ok(event), next));
                    }
                    let batch = {
                        let shared = shared.clone();
                        let prefix = prefix.clone();
                        tokio::task::spawn_blocking(move || shared.replay_batch(&prefix, pos))
                            .await
                            .map_err(|e| StoreError::backend(BACKEND, "run blocking task", e))
                            .and_then(|r| r)
                    };
                    let (events, scanned_through) = match batch {
                        Ok(b) => b,
                        Err(e) => return Some((Err(e), WatchState::Done)),
                    };
                    if scanned_through == pos {
                        // Nothing newer in the log: switch to live if nothing newer has been
                        // published either, else read the log again.
                        if let Some(sub) = shared.broadcaster.subscribe_if_caught_up(&prefix, pos) {
                            state = WatchState::Live {
                                sub,
                                prefix,
                                buffer: shared.broadcaster.buffer(),
                                skip_through: pos,
                            };
                            continue;
                        }
                        tokio::task::yield_now().await;
                    }
                    // Events are yielded one by one (advancing `pos`); `pos` jumps to
                    // `scanned_through` only when the batch had no match.
                    let pos = if events.is_empty() {
                        scanned_through
                    } else {
                        pos
                    };
                    state = WatchState::Replay {
                        shared,
                        prefix,
                        pos,
                        buffered: events.into(),
                    };
                }
                WatchState::Live {
                    mut sub,
                    prefix,
                    buffer,
                    skip_through,
                } => match sub.rx.recv().await {
                    Some(event) if event.revision() <= skip_through => {
                        state = WatchState::Live {
                            sub,
                            prefix,
                            buffer,
                            skip_through,
                        };
                    }
                    Some(event) => {
                        let next = WatchState::Live {
                            sub,
                            prefix,
                            buffer,
                            skip_through,
                        };
                        return Some((Ok(event), next));
                    }
                    None if sub.lagged.load(Ordering::Acquire) => {
                        return Some((
                            Err(StoreError::WatcherTooSlow { prefix, buffer }),
                            WatchState::Done,
                        ));
                    }
                    // The store was dropped: the watch simply ends.
                    None => return None,
                },
            }
        }
    }
}

#[async_trait]
impl Store for RedbStore {
    async fn create(&self, key: &str, value: Bytes) -> Result<Revision> {
        Ok(self.write(key, WriteOp::Create(value)).await?.0)
    }

    async fn create_all(&self, kvs: Vec<(String, Bytes)>) -> Result<Vec<Revision>> {
        crate::check_create_all(&kvs)?;
        let ops = kvs
            .into_iter()
            .map(|(key, value)| (key, WriteOp::Create(value)))
            .collect();
        Ok(self
            .write_all(ops)
            .await?
            .into_iter()
            .map(|(revision, _)| revision)
            .collect())
    }

    async fn update(
        &self,
        key: &str,
        value: Bytes,
        expected_mod_revision: Option<Revision>,
    ) -> Result<Revision> {
        Ok(self
            .write(key, WriteOp::Update(value, expected_mod_revision))
            .await?
            .0)
    }

    async fn delete(
        &self,
        key: &str,
        expected_mod_revision: Option<Revision>,
    ) -> Result<(Revision, KeyValue)> {
        let (revision, prev) = self
            .write(key, WriteOp::Delete(expected_mod_revision))
            .await?;
        let prev = prev.expect("a successful delete always has the deleted state");
        Ok((revision, prev))
    }

    async fn get(&self, key: &str) -> Result<Option<KeyValue>> {
        let key = key.to_owned();
        self.blocking(move |s| s.get_at(&key, None)).await
    }

    async fn get_at(&self, key: &str, revision: Revision) -> Result<Option<KeyValue>> {
        let key = key.to_owned();
        self.blocking(move |s| s.get_at(&key, Some(revision))).await
    }

    async fn list(&self, prefix: &str, options: ListOptions) -> Result<ListResult> {
        let prefix = prefix.to_owned();
        self.blocking(move |s| s.list(&prefix, &options)).await
    }

    async fn watch(&self, prefix: &str, from_revision: Revision) -> Result<WatchStream> {
        // Fail fast (the common 410 case) instead of from the first poll of the stream.
        let (_, compacted) = self.blocking(|s| s.revisions()).await?;
        if from_revision < compacted {
            return Err(StoreError::Compacted {
                requested: from_revision,
                compacted,
            });
        }
        // Watching from now (the common case after a list): subscribe before returning, so
        // the watcher is live, and counted against its buffer, from this call on.
        let broadcaster = &self.shared.broadcaster;
        let state = match broadcaster.subscribe_if_caught_up(prefix, from_revision) {
            Some(sub) => WatchState::Live {
                sub,
                prefix: prefix.to_owned(),
                buffer: broadcaster.buffer(),
                skip_through: from_revision,
            },
            None => WatchState::Replay {
                shared: self.shared.clone(),
                prefix: prefix.to_owned(),
                pos: from_revision,
                buffered: VecDeque::new(),
            },
        };
        Ok(Box::pin(futures::stream::unfold(state, WatchState::next)))
    }

    async fn current_revision(&self) -> Result<Revision> {
        Ok(self.blocking(|s| s.revisions()).await?.0)
    }

    async fn compacted_revision(&self) -> Result<Revision> {
        Ok(self.blocking(|s| s.revisions()).await?.1)
    }

    async fn compact(&self, revision: Revision) -> Result<()> {
        self.blocking(move |s| s.compact(revision)).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn row_roundtrip() {
        let row = Row {
            key: "/registry/pods/default/web-0".into(),
            value: Bytes::from_static(b"{\"kind\":\"Pod\"}"),
            create_revision: 7,
            prev_revision: 41,
            deleted: false,
        };
        assert_eq!(Row::decode(42, &row.encode()).unwrap(), row);
        let tomb = Row {
            value: Bytes::new(),
            deleted: true,
            ..row
        };
        assert_eq!(Row::decode(43, &tomb.encode()).unwrap(), tomb);
    }

    /// A write is committed before it is published. A watch that starts in that window must
    /// neither miss the write nor, once the publish lands, see it a second time.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn events_committed_but_not_yet_published_are_neither_lost_nor_duplicated() {
        use futures::StreamExt;
        let dir = tempfile::tempdir().unwrap();
        let store = RedbStore::open(dir.path().join("s.redb"), RedbConfig::default()).unwrap();
        let r1 = store.create("/a", Bytes::from_static(b"1")).await.unwrap();

        // Commit r2 the way `Shared::write` does, but hold back its publish.
        let txn = store.shared.db.begin_write().unwrap();
        let late =
            Shared::stage_write(&txn, "/b", WriteOp::Create(Bytes::from_static(b"2"))).unwrap();
        txn.commit().unwrap();
        let r2 = late.revision();

        // Replayed from the log: r1 and r2 are delivered once, from history.
        let mut from_past = store.watch("/", 0).await.unwrap();
        assert_eq!(from_past.next().await.unwrap().unwrap().revision(), r1);
        assert_eq!(from_past.next().await.unwrap().unwrap().revision(), r2);
        // Watching from r2 (a list at r2 saw it) subscribes live right away.
        let mut from_r2 = store.watch("/", r2).await.unwrap();

        store.shared.broadcaster.publish(&late);
        let r3 = store.create("/c", Bytes::from_static(b"3")).await.unwrap();
        for watch in [&mut from_past, &mut from_r2] {
            let next = tokio::time::timeout(std::time::Duration::from_secs(10), watch.next())
                .await
                .expect("r3 is delivered")
                .unwrap()
                .unwrap();
            assert_eq!(next.revision(), r3, "r2 must not be delivered again");
        }
    }

    /// The write that crosses a `compact_every` boundary, and the writes after it, are
    /// answered while a compaction run cannot proceed (here: the run lock is held, as by a
    /// long run); the run happens once it can.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn writes_do_not_wait_for_automatic_compaction() {
        let dir = tempfile::tempdir().unwrap();
        let store = RedbStore::open(
            dir.path().join("s.redb"),
            RedbConfig {
                retention: 10,
                retention_age: Duration::ZERO,
                max_retention: 10,
                compact_every: 50,
                ..RedbConfig::default()
            },
        )
        .unwrap();
        let (release, released) = std::sync::mpsc::channel::<()>();
        let (held, is_held) = std::sync::mpsc::channel::<()>();
        let holder = {
            let shared = store.shared.clone();
            std::thread::spawn(move || {
                let _run = lock(&shared.compacting);
                held.send(()).unwrap();
                let _ = released.recv();
            })
        };
        is_held.recv().unwrap();
        let value = || Bytes::from_static(b"v");
        store.create("/k", value()).await.unwrap();
        for _ in 1..120 {
            tokio::time::timeout(Duration::from_secs(10), store.update("/k", value(), None))
                .await
                .expect("a write must not wait for automatic compaction")
                .unwrap();
        }
        assert_eq!(store.compacted_revision().await.unwrap(), 0);
        drop(release);
        holder.join().unwrap();
        // Revision 100 asked for 90.
        let deadline = Instant::now() + Duration::from_secs(30);
        while store.compacted_revision().await.unwrap() < 90 {
            assert!(
                Instant::now() < deadline,
                "compaction did not run once it could"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(store.log_len().await.unwrap(), 120 - 90 + 1);
    }

    /// The size bound compacts young history once the removable bytes since a checkpoint
    /// exceed it, and only then; age and count rules as before.
    #[test]
    fn automatic_compaction_target_by_size() {
        let config = RedbConfig {
            retention: 100,
            retention_age: Duration::from_secs(300),
            max_retention: 100_000,
            max_retained_bytes: 1_000,
            ..RedbConfig::default()
        };
        let t0 = Instant::now();
        let cp = |secs: u64, revision: Revision, superseded: u64| Checkpoint {
            at: t0 + Duration::from_secs(secs),
            revision,
            superseded,
        };
        let mut cps = VecDeque::from([cp(0, 0, 0)]);
        // Young and small: nothing.
        assert_eq!(
            auto_compact_target(&mut cps, cp(1, 1000, 400), &config),
            None
        );
        assert_eq!(
            auto_compact_target(&mut cps, cp(2, 2000, 900), &config),
            None
        );
        // 1 500 bytes since the open: compacting to 1000 leaves 1 100, to 2000 leaves 600.
        assert_eq!(
            auto_compact_target(&mut cps, cp(3, 3000, 1500), &config),
            Some(2000)
        );
        // Never into the last `retention` revisions.
        let mut cps = VecDeque::from([cp(0, 0, 0)]);
        assert_eq!(
            auto_compact_target(&mut cps, cp(1, 150, 50_000), &config),
            Some(50)
        );
        // No size bound: only age and count.
        let unbounded = RedbConfig {
            max_retained_bytes: 0,
            ..config.clone()
        };
        let mut cps = VecDeque::from([cp(0, 0, 0)]);
        assert_eq!(
            auto_compact_target(&mut cps, cp(3, 3000, 50_000), &unbounded),
            None
        );
        assert_eq!(
            auto_compact_target(&mut cps, cp(303, 4000, 60_000), &unbounded),
            Some(3000)
        );
    }

    /// Dropping the store ends its compactor, so the file can be opened again at once.
    #[test]
    fn dropping_the_store_ends_the_compactor() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.redb");
        for _ in 0..3 {
            let store = RedbStore::open(&path, RedbConfig::default()).unwrap();
            drop(store);
        }
    }

    #[test]
    fn row_decode_rejects_garbage() {
        assert!(matches!(
            Row::decode(1, &[0, 1, 2]),
            Err(StoreError::Corrupt { .. })
        ));
        let mut bad = Row {
            key: "k".into(),
            value: Bytes::new(),
            create_revision: 1,
            prev_revision: 0,
            deleted: false,
        }
        .encode();
        bad[17] = 200; // key length past the end
        assert!(matches!(
            Row::decode(1, &bad),
            Err(StoreError::Corrupt { .. })
        ));
    }
}
