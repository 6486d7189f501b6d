//! The etcd v3 backend.
//!
//! Keys live under [`EtcdConfig::key_prefix`] exactly as given (store key `k` is etcd key
//! `key_prefix + k`), so several stores (or tests) can share one etcd. etcd's revisions are
//! the store's revisions; note they are global to the etcd cluster, so a store sees revision
//! gaps made by writes under other prefixes.
//!
//! - CAS is an etcd `Txn` comparing the key's `version > 0` (it is live) and, when asked, its
//!   `mod_revision`; the failure branch reads the key to tell `NotFound` from `Conflict`.
//! - `list` is a series of range reads of at most [`LIST_PAGE`] keys, all at the revision of
//!   the first one (or the one asked for), each continuing just after the last key of the
//!   previous one, until the limit or the end of the prefix; the count etcd returns with the
//!   last page gives `remaining`. `continue_after` starts the range just after that key.
//! - `watch` is an etcd watch from `from_revision + 1` with `prev_kv`; `watch_with_progress`
//!   (the watch cache's) the same without `prev_kv`, so that etcd does not read and send
//!   the previous value of every update and delete it reports. A pump task reads the
//!   gRPC stream and forwards into a bounded channel, cutting the watcher off when it is full
//!   of live events, so one slow consumer cannot hold the shared HTTP/2 connection (and the
//!   other watches on it) back. History replayed at the start is forwarded at the consumer's
//!   pace instead (see [`pump`]).
//! - etcd does not report its compacted revision directly. A range read at revision 1 fails
//!   once anything was compacted; a watch from revision 1 then answers with the compacted
//!   revision. That costs two round trips, only on error paths and in
//!   [`Store::compacted_revision`].

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, DeleteOptions, GetOptions, PutOptions, Txn, TxnOp,
    TxnOpResponse, WatchOptions,
};
use tokio::sync::mpsc;

use futures::StreamExt;

use crate::{
    Change, Event, KeyValue, ListOptions, ListResult, ProgressRequester, ProgressWatchStream,
    Result, Revision, Store, StoreError, WatchItem, WatchStream,
};

const BACKEND: &str = "etcd";
const COMPACTED_MSG: &str = "required revision has been compacted";
const FUTURE_MSG: &str = "required revision is a future revision";
/// tonic's error for a response above the client's decoding limit.
const TOO_LARGE_MSG: &str = "message length too large";

/// Keys per range request of a `list`: a LIST of 10k pods is ~14 MB, far above a gRPC
/// client's usual 4 MiB response limit, so `list` reads it page by page at one revision
/// (as kube-apiserver's storage pages etcd), which also bounds each response's memory.
const LIST_PAGE: usize = 500;
/// The largest response `list` and `watch` accept. A page of [`LIST_PAGE`] objects fits
/// while they average 32 KiB; a page that does not is read again in halves. A watch
/// response carries up to 1000 revisions' events (etcd's `watchBatchMaxRevs`), each
/// possibly with its previous value, so it gets the same room.
const MAX_RESPONSE_BYTES: usize = 16 * 1024 * 1024;

/// Settings of an [`EtcdStore`].
#[derive(Clone, Debug)]
pub struct EtcdConfig {
    /// Client URLs, e.g. `http://127.0.0.1:2379`.
    pub endpoints: Vec<String>,
    /// Prepended to every key; may be empty.
    pub key_prefix: String,
    /// How long to wait for a connection.
    pub connect_timeout: Duration,
    /// Events buffered per watcher before it is cut off as too slow.
    pub watch_buffer: usize,
    /// Whether [`Store::watch_with_progress`] asks etcd for progress notifications.
    /// `None`: when etcd's version has the fixes upstream requires for consistent reads
    /// from its watch cache (3.4.31+, 3.5.13+): older releases can send a progress
    /// notification ahead of events at or below its revision (etcd-io/etcd#15220, #17529),
    /// which would let a consistent read miss a write.
    pub watch_progress: Option<bool>,
}

impl EtcdConfig {
    /// Defaults: no key prefix, 5 s connect timeout, 1 024 events per watcher.
    pub fn new(endpoints: impl IntoIterator<Item = impl Into<String>>) -> Self {
        EtcdConfig {
            endpoints: endpoints.into_iter().map(Into::into).collect(),
            key_prefix: String::new(),
            connect_timeout: Duration::from_secs(5),
            watch_buffer: 1024,
            watch_progress: None,
        }
    }
}

/// A store backed by etcd. Cheap to clone.
#[derive(Clone)]
pub struct EtcdStore {
    client: Client,
    prefix: String,
    watch_buffer: usize,
    /// Whether watch progress requests are used ([`EtcdConfig::watch_progress`]).
    watch_progress: bool,
}

/// Whether etcd `version` (`3.4.23`) has the watch progress fixes upstream requires.
fn progress_is_reliable(version: &str) -> bool {
    let mut parts = version.split('.').map(|p| p.parse::<u64>().unwrap_or(0));
    let (major, minor, patch) = (
        parts.next().unwrap_or(0),
        parts.next().unwrap_or(0),
        parts.next().unwrap_or(0),
    );
    match (major, minor) {
        (3, 4) => patch >= 31,
        (3, 5) => patch >= 13,
        (3, m) => m >= 6,
        (m, _) => m > 3,
    }
}

fn etcd_err(operation: &'static str) -> impl FnOnce(etcd_client::Error) -> StoreError {
    move |e| StoreError::backend(BACKEND, operation, e)
}

fn is_grpc(e: &etcd_client::Error, needle: &str) -> bool {
    matches!(e, etcd_client::Error::GRpcStatus(s) if s.message().contains(needle))
}

fn to_i64(revision: Revision) -> Result<i64> {
    i64::try_from(revision).map_err(|_| StoreError::InvalidArgument {
        reason: format!("revision {revision} does not fit etcd's signed 64-bit revisions"),
    })
}

fn to_rev(revision: i64) -> Revision {
    // etcd revisions are positive; a negative one would be an etcd bug, and 0 is "none".
    revision.max(0) as Revision
}

/// The smallest key greater than every key starting with `prefix` (etcd's range end for a
/// prefix); `[0]` (etcd's "to the end") when no such key exists.
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

/// etcd rejects an empty key; `"\0"` is the smallest key, so a range starting there (or a
/// single-key probe of it) means the same as starting at "".
fn nonempty(key: Vec<u8>) -> Vec<u8> {
    if key.is_empty() {
        vec![0]
    } else {
        key
    }
}

impl EtcdStore {
    /// Connects to etcd.
    pub async fn connect(config: EtcdConfig) -> Result<EtcdStore> {
        let options = ConnectOptions::new()
            .with_connect_timeout(config.connect_timeout)
            .with_keep_alive(Duration::from_secs(10), Duration::from_secs(5));
        let client = Client::connect(&config.endpoints, Some(options))
            .await
            .map_err(|e| {
                StoreError::backend(
                    BACKEND,
                    "connect",
                    format!("cannot connect to etcd at {:?}: {e}", config.endpoints),
                )
            })?;
        let watch_progress = match config.watch_progress {
            Some(on) => on,
            None => {
                let version = client
                    .clone()
                    .maintenance_client()
                    .status()
                    .await
                    .map(|s| s.version().to_string())
                    .unwrap_or_default();
                let ok = progress_is_reliable(&version);
                if !ok {
                    tracing::info!(
                        "etcd {version}: watch progress notifications are not used (they need \
                         3.4.31+ or 3.5.13+); consistent reads wait for an event under the \
                         key prefix and otherwise fall back to etcd"
                    );
                }
                ok
            }
        };
        Ok(EtcdStore {
            client,
            prefix: config.key_prefix,
            watch_buffer: config.watch_buffer.max(1),
            watch_progress,
        })
    }

    /// Starts an etcd watch (see [`Store::watch`]) yielding what `mode` asks for. Returns
    /// the stream and the gRPC stream's request side (for progress requests).
    async fn start_watch(
        &self,
        prefix: &str,
        from_revision: Revision,
        mode: WatchMode,
    ) -> Result<(PumpStream, Option<etcd_client::WatchRequestSender>)> {
        let full_prefix = self.full_key(prefix);
        // Same rule as reads: a revision you can list at is one you can watch from. etcd itself
        // would accept `from_revision = compacted - 1`; checking with a read keeps the two
        // backends identical.
        let probe = GetOptions::new()
            .with_revision(to_i64(from_revision.max(1))?)
            .with_count_only();
        if let Err(e) = self
            .client
            .kv_client()
            .get(self.probe_key(), Some(probe))
            .await
        {
            // A future revision is fine for a watch: it waits for it.
            if !is_grpc(&e, FUTURE_MSG) {
                return Err(self.read_error(e, from_revision).await);
            }
        }
        let mut options = WatchOptions::new()
            .with_range(prefix_end(&full_prefix))
            .with_start_revision(to_i64(from_revision + 1)?);
        if mode == WatchMode::Events {
            options = options.with_prev_key();
        }
        let stream = self
            .client
            .watch_client()
            .max_decoding_message_size(MAX_RESPONSE_BYTES)
            .watch(nonempty(full_prefix), Some(options))
            .await
            .map_err(etcd_err("start watch"))?;
        let (sender, mut stream) = stream.split();
        // Wait for etcd to confirm the watch so a failure surfaces here.
        let replay_through = match stream.message().await.map_err(etcd_err("start watch"))? {
            Some(resp) if resp.created() && !resp.canceled() => header_revision(resp.header())?,
            Some(resp) => {
                return Err(StoreError::backend(
                    BACKEND,
                    "start watch",
                    format!("etcd refused the watch: {}", resp.cancel_reason()),
                ))
            }
            None => {
                return Err(StoreError::backend(
                    BACKEND,
                    "start watch",
                    "etcd closed the watch stream before confirming it",
                ))
            }
        };
        let (tx, rx) = mpsc::channel(self.watch_buffer);
        let lagged = Arc::new(AtomicBool::new(false));
        tokio::spawn(pump(
            stream,
            self.prefix.clone(),
            from_revision,
            replay_through,
            tx,
            lagged.clone(),
            mode,
        ));
        let state = (rx, lagged, Some(prefix.to_owned()), self.watch_buffer);
        let stream =
            futures::stream::unfold(state, |(mut rx, lagged, prefix, buffer)| async move {
                let prefix_name = prefix?;
                match rx.recv().await {
                    Some(Ok(event)) => Some((Ok(event), (rx, lagged, Some(prefix_name), buffer))),
                    Some(Err(e)) => Some((Err(e), (rx, lagged, None, buffer))),
                    None if lagged.load(Ordering::Acquire) => Some((
                        Err(StoreError::WatcherTooSlow {
                            prefix: prefix_name,
                            buffer,
                        }),
                        (rx, lagged, None, buffer),
                    )),
                    None => None,
                }
            });
        Ok((Box::pin(stream), Some(sender)))
    }

    fn full_key(&self, key: &str) -> Vec<u8> {
        let mut full = Vec::with_capacity(self.prefix.len() + key.len());
        full.extend_from_slice(self.prefix.as_bytes());
        full.extend_from_slice(key.as_bytes());
        full
    }

    /// A key to aim single-key reads at when only the response header (the revision) or the
    /// error (compacted?) matters.
    fn probe_key(&self) -> Vec<u8> {
        nonempty(self.full_key(""))
    }

    fn convert(&self, kv: &etcd_client::KeyValue) -> Result<KeyValue> {
        convert_kv(&self.prefix, kv)
    }

    /// Maps a failed read at `requested` to `Compacted`/`FutureRevision` when that is what
    /// etcd said.
    async fn read_error(&self, e: etcd_client::Error, requested: Revision) -> StoreError {
        if is_grpc(&e, COMPACTED_MSG) {
            return match self.find_compacted_revision().await {
                Ok(compacted) => StoreError::Compacted {
                    requested,
                    compacted,
                },
                Err(e) => e,
            };
        }
        if is_grpc(&e, FUTURE_MSG) {
            return match self.current().await {
                Ok(current) => StoreError::FutureRevision { requested, current },
                Err(e) => e,
            };
        }
        etcd_err("read")(e)
    }

    async fn current(&self) -> Result<Revision> {
        let resp = self
            .client
            .kv_client()
            .get(self.probe_key(), Some(GetOptions::new().with_count_only()))
            .await
            .map_err(etcd_err("read current revision"))?;
        header_revision(resp.header())
    }

    async fn find_compacted_revision(&self) -> Result<Revision> {
        let probe = self
            .client
            .kv_client()
            .get(
                self.probe_key(),
                Some(GetOptions::new().with_revision(1).with_count_only()),
            )
            .await;
        match probe {
            Ok(_) => return Ok(0),
            Err(e) if is_grpc(&e, COMPACTED_MSG) => {}
            Err(e) => return Err(etcd_err("probe compacted revision")(e)),
        }
        // Revision 1 is compacted, so a watch from it is answered with the compacted revision.
        let mut stream = self
            .client
            .watch_client()
            .watch(
                self.probe_key(),
                Some(WatchOptions::new().with_start_revision(1)),
            )
            .await
            .map_err(etcd_err("probe compacted revision"))?;
        let deadline = Duration::from_secs(10);
        let found = tokio::time::timeout(deadline, async {
            while let Some(resp) = stream
                .message()
                .await
                .map_err(etcd_err("probe compacted revision"))?
            {
                if resp.compact_revision() > 0 {
                    return Ok(to_rev(resp.compact_revision()));
                }
            }
            Err(StoreError::backend(
                BACKEND,
                "probe compacted revision",
                "watch ended without reporting the compacted revision",
            ))
        })
        .await;
        found.unwrap_or_else(|_| {
            Err(StoreError::backend(
                BACKEND,
                "probe compacted revision",
                format!("etcd did not report its compacted revision within {deadline:?}"),
            ))
        })
    }

    /// Runs a conditional write: `checks` (plus "the key is live") then `op`, else read the
    /// key. Returns the success response or the `NotFound`/`Conflict` error.
    async fn cas(
        &self,
        key: &str,
        expected: Option<Revision>,
        op: TxnOp,
        operation: &'static str,
    ) -> Result<etcd_client::TxnResponse> {
        crate::check_key(key)?;
        let full = self.full_key(key);
        let mut compares = vec![Compare::version(full.clone(), CompareOp::Greater, 0)];
        if let Some(expected) = expected {
            compares.push(Compare::mod_revision(
                full.clone(),
                CompareOp::Equal,
                to_i64(expected)?,
            ));
        }
        let txn = Txn::new()
            .when(compares)
            .and_then(vec![op])
            .or_else(vec![TxnOp::get(full, None)]);
        let resp = self
            .client
            .kv_client()
            .txn(txn)
            .await
            .map_err(etcd_err(operation))?;
        if resp.succeeded() {
            return Ok(resp);
        }
        let current = resp.op_responses().into_iter().find_map(|r| match r {
            TxnOpResponse::Get(g) => Some(g.kvs().first().map(|kv| to_rev(kv.mod_revision()))),
            _ => None,
        });
        match (current.flatten(), expected) {
            (Some(current), Some(expected)) => Err(StoreError::Conflict {
                key: key.to_owned(),
                expected,
                current,
            }),
            _ => Err(StoreError::NotFound {
                key: key.to_owned(),
            }),
        }
    }
}

fn convert_kv(prefix: &str, kv: &etcd_client::KeyValue) -> Result<KeyValue> {
    let corrupt = |reason: String| StoreError::Corrupt {
        location: format!("etcd key {:?}", String::from_utf8_lossy(kv.key())),
        reason,
    };
    let key = std::str::from_utf8(kv.key()).map_err(|_| corrupt("key is not UTF-8".into()))?;
    let key = key
        .strip_prefix(prefix)
        .ok_or_else(|| corrupt(format!("key is outside the store prefix {prefix:?}")))?;
    Ok(KeyValue {
        key: key.to_owned(),
        value: Bytes::copy_from_slice(kv.value()),
        create_revision: to_rev(kv.create_revision()),
        mod_revision: to_rev(kv.mod_revision()),
    })
}

fn header_revision(header: Option<&etcd_client::ResponseHeader>) -> Result<Revision> {
    header
        .map(|h| to_rev(h.revision()))
        .ok_or_else(|| StoreError::backend(BACKEND, "read response", "response has no header"))
}

fn convert_event(prefix: &str, event: &etcd_client::Event) -> Result<Event> {
    let missing = |what: &str| {
        StoreError::backend(
            BACKEND,
            "watch",
            format!(
                "etcd sent an event without {what} (history compacted under the watch?); \
                 watch again"
            ),
        )
    };
    let kv = event.kv().ok_or_else(|| missing("a key-value"))?;
    let prev = event.prev_kv().map(|p| convert_kv(prefix, p)).transpose()?;
    match event.event_type() {
        etcd_client::EventType::Put => {
            let kv = convert_kv(prefix, kv)?;
            if prev.is_none() && kv.create_revision != kv.mod_revision {
                return Err(missing("the previous value of an update"));
            }
            Ok(Event::Put { kv, prev })
        }
        etcd_client::EventType::Delete => Ok(Event::Delete {
            revision: to_rev(kv.mod_revision()),
            prev: prev.ok_or_else(|| missing("the previous value of a delete"))?,
        }),
    }
}

/// What an etcd watch yields.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum WatchMode {
    /// [`Event`]s with previous values ([`Store::watch`]): the watch asks for `prev_kv`.
    Events,
    /// [`Change`]s without them ([`Store::watch_with_progress`]); with `progress`,
    /// responses without events come through as progress.
    Changes { progress: bool },
}

/// What the pump forwards: one of [`WatchMode`]'s items.
#[derive(Debug)]
enum Pumped {
    Event(Event),
    Change(Change),
    Progress(Revision),
}

impl Pumped {
    fn revision(&self) -> Revision {
        match self {
            Pumped::Event(e) => e.revision(),
            Pumped::Change(c) => c.revision(),
            Pumped::Progress(r) => *r,
        }
    }
}

type PumpStream = std::pin::Pin<Box<dyn futures::Stream<Item = Result<Pumped>> + Send>>;

/// A watch event without `prev_kv` as a [`Change`].
fn convert_change(prefix: &str, event: &etcd_client::Event) -> Result<Change> {
    let kv = event.kv().ok_or_else(|| {
        StoreError::backend(BACKEND, "watch", "etcd sent an event without a key-value")
    })?;
    let kv = convert_kv(prefix, kv)?;
    Ok(match event.event_type() {
        etcd_client::EventType::Put => Change::Put(kv),
        // etcd's delete event carries the key and the delete's revision (as mod_revision).
        etcd_client::EventType::Delete => Change::Delete {
            key: kv.key,
            revision: kv.mod_revision,
        },
    })
}

/// How long the pump waits for a consumer that is not taking replayed (historical) events.
const REPLAY_STALL_LIMIT: Duration = Duration::from_secs(10);

/// Forwards one etcd watch into a bounded channel until the consumer goes away or the watch
/// ends. Events up to `replay_through` (the revision when the watch was created) are history
/// that etcd sends in large bursts, so the pump waits for room for them, as the redb backend
/// replays at the consumer's pace, but at most [`REPLAY_STALL_LIMIT`]. Later (live) events
/// never wait: a consumer `buffer` events behind is cut off.
async fn pump(
    mut stream: etcd_client::WatchResponseStream,
    prefix: String,
    from_revision: Revision,
    replay_through: Revision,
    tx: mpsc::Sender<Result<Pumped>>,
    lagged: Arc<AtomicBool>,
    mode: WatchMode,
) {
    let progress = mode == WatchMode::Changes { progress: true };
    let mut last = from_revision;
    loop {
        let message = tokio::select! {
            _ = tx.closed() => return,
            m = stream.message() => m,
        };
        let items: Vec<Result<Pumped>> = match message {
            Ok(Some(resp)) if resp.compact_revision() > 0 => vec![Err(StoreError::Compacted {
                requested: last,
                compacted: to_rev(resp.compact_revision()),
            })],
            Ok(Some(resp)) if resp.canceled() => vec![Err(StoreError::backend(
                BACKEND,
                "watch",
                format!("etcd cancelled the watch: {}", resp.cancel_reason()),
            ))],
            // A response without events is a progress notification: everything up to its
            // header's revision was sent before it.
            Ok(Some(resp)) if resp.events().is_empty() => {
                if let (true, Ok(rev)) = (progress, header_revision(resp.header())) {
                    // Advisory: dropped when the consumer has no room (it asks again).
                    let _ = tx.try_send(Ok(Pumped::Progress(rev)));
                }
                continue;
            }
            Ok(Some(resp)) => resp
                .events()
                .iter()
                .map(|e| match mode {
                    WatchMode::Events => convert_event(&prefix, e).map(Pumped::Event),
                    WatchMode::Changes { .. } => convert_change(&prefix, e).map(Pumped::Change),
                })
                .collect(),
            Ok(None) => vec![Err(StoreError::backend(
                BACKEND,
                "watch",
                "etcd closed the watch stream; watch again",
            ))],
            Err(e) => vec![Err(etcd_err("watch")(e))],
        };
        for item in items {
            let stop = item.is_err();
            let replay = match &item {
                Ok(item @ (Pumped::Event(_) | Pumped::Change(_))) => {
                    last = item.revision();
                    last <= replay_through
                }
                Ok(Pumped::Progress(_)) | Err(_) => false,
            };
            let sent = if replay {
                tx.send_timeout(item, REPLAY_STALL_LIMIT)
                    .await
                    .map_err(|e| match e {
                        mpsc::error::SendTimeoutError::Timeout(_) => true,
                        mpsc::error::SendTimeoutError::Closed(_) => false,
                    })
            } else {
                tx.try_send(item).map_err(|e| match e {
                    mpsc::error::TrySendError::Full(_) => true,
                    mpsc::error::TrySendError::Closed(_) => false,
                })
            };
            match sent {
                Ok(()) if !stop => {}
                Ok(()) => return,
                Err(too_slow) => {
                    if too_slow {
                        lagged.store(true, Ordering::Release);
                        tracing::warn!(%prefix, "dropping slow etcd watcher");
                    }
                    return;
                }
            }
        }
    }
}

#[async_trait]
impl Store for EtcdStore {
    async fn create(&self, key: &str, value: Bytes) -> Result<Revision> {
        crate::check_key(key)?;
        let full = self.full_key(key);
        let txn = Txn::new()
            .when(vec![Compare::create_revision(
                full.clone(),
                CompareOp::Equal,
                0,
            )])
            .and_then(vec![TxnOp::put(full, value.to_vec(), None)]);
        let resp = self
            .client
            .kv_client()
            .txn(txn)
            .await
            .map_err(etcd_err("create"))?;
        if !resp.succeeded() {
            return Err(StoreError::AlreadyExists {
                key: key.to_owned(),
            });
        }
        header_revision(resp.header())
    }

    async fn create_all(&self, kvs: Vec<(String, Bytes)>) -> Result<Vec<Revision>> {
        crate::check_create_all(&kvs)?;
        let full: Vec<Vec<u8>> = kvs.iter().map(|(k, _)| self.full_key(k)).collect();
        // One transaction: every key absent, then every put; else read which are live
        // (keys only) to name one in the error.
        let txn = Txn::new()
            .when(
                full.iter()
                    .map(|k| Compare::create_revision(k.clone(), CompareOp::Equal, 0))
                    .collect::<Vec<_>>(),
            )
            .and_then(
                full.iter()
                    .zip(&kvs)
                    .map(|(k, (_, v))| TxnOp::put(k.clone(), v.to_vec(), None))
                    .collect::<Vec<_>>(),
            )
            .or_else(
                full.iter()
                    .map(|k| TxnOp::get(k.clone(), Some(GetOptions::new().with_keys_only())))
                    .collect::<Vec<_>>(),
            );
        let resp = self
            .client
            .kv_client()
            .txn(txn)
            .await
            .map_err(etcd_err("create_all"))?;
        if !resp.succeeded() {
            let live = resp
                .op_responses()
                .into_iter()
                .zip(&kvs)
                .find_map(|(r, (key, _))| match r {
                    TxnOpResponse::Get(g) if !g.kvs().is_empty() => Some(key.clone()),
                    _ => None,
                })
                // Not reached: the reads run in the transaction whose compares failed.
                .unwrap_or_else(|| kvs[0].0.clone());
            return Err(StoreError::AlreadyExists { key: live });
        }
        let revision = header_revision(resp.header())?;
        Ok(vec![revision; kvs.len()])
    }

    async fn update(
        &self,
        key: &str,
        value: Bytes,
        expected_mod_revision: Option<Revision>,
    ) -> Result<Revision> {
        let op = TxnOp::put(self.full_key(key), value.to_vec(), Some(PutOptions::new()));
        let resp = self.cas(key, expected_mod_revision, op, "update").await?;
        header_revision(resp.header())
    }

    async fn delete(
        &self,
        key: &str,
        expected_mod_revision: Option<Revision>,
    ) -> Result<(Revision, KeyValue)> {
        let op = TxnOp::delete(
            self.full_key(key),
            Some(DeleteOptions::new().with_prev_key()),
        );
        let resp = self.cas(key, expected_mod_revision, op, "delete").await?;
        let revision = header_revision(resp.header())?;
        let prev = resp
            .op_responses()
            .into_iter()
            .find_map(|r| match r {
                TxnOpResponse::Delete(d) => d.prev_kvs().first().cloned(),
                _ => None,
            })
            .ok_or_else(|| {
                StoreError::backend(BACKEND, "delete", "etcd did not return the deleted value")
            })?;
        Ok((revision, self.convert(&prev)?))
    }

    async fn get(&self, key: &str) -> Result<Option<KeyValue>> {
        let resp = self
            .client
            .kv_client()
            .get(self.full_key(key), None)
            .await
            .map_err(etcd_err("get"))?;
        resp.kvs().first().map(|kv| self.convert(kv)).transpose()
    }

    async fn get_at(&self, key: &str, revision: Revision) -> Result<Option<KeyValue>> {
        // etcd's revision 0 means "latest"; its history starts at 1 (the empty store).
        let options = GetOptions::new().with_revision(to_i64(revision.max(1))?);
        match self
            .client
            .kv_client()
            .get(self.full_key(key), Some(options))
            .await
        {
            Ok(resp) => resp.kvs().first().map(|kv| self.convert(kv)).transpose(),
            Err(e) => Err(self.read_error(e, revision).await),
        }
    }

    async fn list(&self, prefix: &str, options: ListOptions) -> Result<ListResult> {
        let full_prefix = self.full_key(prefix);
        let end = prefix_end(&full_prefix);
        let mut start = match &options.continue_after {
            Some(after) if after.as_str() >= prefix => {
                let mut k = self.full_key(after);
                k.push(0);
                k
            }
            _ => nonempty(full_prefix.clone()),
        };
        let wanted = options.limit.filter(|l| *l > 0);
        // The snapshot every page is read at: the one asked for, else the revision the first
        // page was served at (etcd reads at its current revision then).
        let mut revision = options.revision;
        let mut page_size = LIST_PAGE;
        let mut items: Vec<KeyValue> = Vec::new();
        let mut kv = self
            .client
            .kv_client()
            .max_decoding_message_size(MAX_RESPONSE_BYTES);
        loop {
            let take = wanted.map_or(page_size, |w| (w - items.len()).min(page_size));
            let mut get = GetOptions::new()
                .with_range(end.clone())
                .with_limit(i64::try_from(take).unwrap_or(i64::MAX));
            if let Some(r) = revision {
                get = get.with_revision(to_i64(r.max(1))?);
            }
            let resp = match kv.get(start.clone(), Some(get)).await {
                Ok(resp) => resp,
                // A page of large objects: read it again in smaller pages. One object always
                // fits (etcd's own request limit, 1.5 MiB by default, bounds a value).
                Err(e) if is_grpc(&e, TOO_LARGE_MSG) && page_size > 1 => {
                    page_size /= 2;
                    continue;
                }
                Err(e) => return Err(self.read_error(e, revision.unwrap_or_default()).await),
            };
            if revision.is_none() {
                revision = Some(header_revision(resp.header())?);
            }
            // `count` is the number of keys in [start, end) at the snapshot.
            let in_range = u64::try_from(resp.count()).unwrap_or(0);
            let got = resp.kvs().len() as u64;
            for kv in resp.kvs() {
                items.push(self.convert(kv)?);
            }
            let remaining = in_range.saturating_sub(got);
            let full = wanted.is_some_and(|w| items.len() >= w);
            if remaining == 0 || full || got == 0 {
                return Ok(ListResult {
                    items,
                    revision: revision.unwrap_or_default(),
                    remaining,
                });
            }
            start = self.full_key(&items.last().map(|kv| kv.key.clone()).unwrap_or_default());
            start.push(0);
        }
    }

    async fn watch(&self, prefix: &str, from_revision: Revision) -> Result<WatchStream> {
        let (stream, sender) = self
            .start_watch(prefix, from_revision, WatchMode::Events)
            .await?;
        Ok(Box::pin(stream.filter_map(move |item| {
            // The request side stays open while the stream is consumed.
            let _open = &sender;
            async move {
                match item {
                    Ok(Pumped::Event(e)) => Some(Ok(e)),
                    // Not sent in this mode.
                    Ok(Pumped::Change(_) | Pumped::Progress(_)) => None,
                    Err(e) => Some(Err(e)),
                }
            }
        })))
    }

    async fn watch_with_progress(
        &self,
        prefix: &str,
        from_revision: Revision,
    ) -> Result<(ProgressWatchStream, ProgressRequester)> {
        let progress = self.watch_progress;
        let (stream, sender) = self
            .start_watch(prefix, from_revision, WatchMode::Changes { progress })
            .await?;
        let changes = |stream: PumpStream, open: Option<etcd_client::WatchRequestSender>| {
            let stream: ProgressWatchStream = Box::pin(stream.filter_map(move |item| {
                // Without progress requests the request side stays open here, while the
                // stream is consumed (as in `watch`).
                let _open = &open;
                async move {
                    match item {
                        Ok(Pumped::Change(c)) => Some(Ok(WatchItem::Change(c))),
                        Ok(Pumped::Progress(r)) => Some(Ok(WatchItem::Progress(r))),
                        // Not sent in this mode.
                        Ok(Pumped::Event(_)) => None,
                        Err(e) => Some(Err(e)),
                    }
                }
            }));
            stream
        };
        let mut sender = match sender {
            Some(sender) if progress => sender,
            open => return Ok((changes(stream, open), ProgressRequester::unsupported())),
        };
        // The progress task below holds the request side open.
        let stream = changes(stream, None);
        // Requests go out from a task of their own (the sender is async); a request made
        // while one is queued is merged with it.
        let (req_tx, mut req_rx) = mpsc::channel::<()>(1);
        tokio::spawn(async move {
            while req_rx.recv().await.is_some() {
                if sender.request_progress().await.is_err() {
                    return;
                }
            }
        });
        Ok((
            stream,
            ProgressRequester::new(move || {
                let _ = req_tx.try_send(());
            }),
        ))
    }

    async fn current_revision(&self) -> Result<Revision> {
        self.current().await
    }

    async fn compacted_revision(&self) -> Result<Revision> {
        self.find_compacted_revision().await
    }

    async fn compact(&self, revision: Revision) -> Result<()> {
        if revision <= 1 {
            // etcd's history starts at revision 1: nothing before it to forget.
            return Ok(());
        }
        match self
            .client
            .kv_client()
            .compact(to_i64(revision)?, None)
            .await
        {
            Ok(_) => Ok(()),
            // Already compacted at or past it: nothing to do.
            Err(e) if is_grpc(&e, COMPACTED_MSG) => Ok(()),
            Err(e) if is_grpc(&e, FUTURE_MSG) => Err(StoreError::FutureRevision {
                requested: revision,
                current: self.current().await?,
            }),
            Err(e) => Err(etcd_err("compact")(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{prefix_end, progress_is_reliable};

    #[test]
    fn progress_needs_the_fixed_releases() {
        for (v, ok) in [
            ("3.4.23", false),
            ("3.4.31", true),
            ("3.5.12", false),
            ("3.5.13", true),
            ("3.6.0", true),
            ("", false),
        ] {
            assert_eq!(progress_is_reliable(v), ok, "{v}");
        }
    }

    #[test]
    fn prefix_end_increments_last_byte() {
        assert_eq!(prefix_end(b"/a/"), b"/a0".to_vec());
        assert_eq!(prefix_end(b"a\xff"), b"b".to_vec());
        assert_eq!(prefix_end(b""), vec![0]);
        assert_eq!(prefix_end(b"\xff\xff"), vec![0]);
    }
}
