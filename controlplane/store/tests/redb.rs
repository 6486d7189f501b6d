//! The redb backend: the conformance suite plus durability and compaction tests.

mod conformance;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use conformance::{next_event, Fixture, StoreExt, WATCH_BUFFER};
use skiff_store::{Event, ListOptions, RedbConfig, RedbStore, Store, StoreError};

fn config() -> RedbConfig {
    RedbConfig {
        watch_buffer: WATCH_BUFFER,
        ..RedbConfig::default()
    }
}

async fn fixture() -> Option<Fixture> {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = RedbStore::open(dir.path().join("store.redb"), config()).expect("open store");
    Some(Fixture {
        store: Arc::new(store),
        guard: Box::new(dir),
    })
}

conformance_tests!(fixture);

/// Polls until the store's compacted revision is at least `want` (automatic compaction runs
/// in the background), at most 30 s; returns the compacted revision.
async fn compacted_at_least(store: &dyn Store, want: u64) -> u64 {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let compacted = store.compacted_revision().await.unwrap();
        if compacted >= want || std::time::Instant::now() > deadline {
            return compacted;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn open(path: &Path, config: RedbConfig) -> Arc<dyn Store> {
    Arc::new(RedbStore::open(path, config).expect("open store"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reopen_keeps_data_and_revisions_keep_increasing() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store.redb");
    let (last, compacted) = {
        let store = open(&path, config());
        store
            .create("/r/a", Bytes::from_static(b"1"))
            .await
            .unwrap();
        store
            .create("/r/b", Bytes::from_static(b"2"))
            .await
            .unwrap();
        store
            .update("/r/a", Bytes::from_static(b"3"), None)
            .await
            .unwrap();
        let (last, _) = store.delete("/r/b", None).await.unwrap();
        store.compact(last - 1).await.unwrap();
        (last, store.compacted_revision().await.unwrap())
    };
    // The file is closed once the last handle is gone, so it can be opened again.
    let store = open(&path, config());
    assert_eq!(store.current_revision().await.unwrap(), last);
    assert_eq!(store.compacted_revision().await.unwrap(), compacted);
    let a = store.get("/r/a").await.unwrap().unwrap();
    assert_eq!(a.value, Bytes::from_static(b"3"));
    assert!(store.get("/r/b").await.unwrap().is_none());

    // Even deleting the newest key (whose log row compaction may remove later) never lets a
    // revision be reused.
    let next = store
        .create("/r/c", Bytes::from_static(b"4"))
        .await
        .unwrap();
    assert_eq!(next, last + 1);
    let mut watch = store.watch("/r/", last).await.unwrap();
    assert_eq!(next_event(&mut watch).await.revision(), next);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opening_the_same_file_twice_fails() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store.redb");
    let _first = RedbStore::open(&path, config()).unwrap();
    match RedbStore::open(&path, config()) {
        Err(StoreError::Backend { backend, .. }) => assert_eq!(backend, "redb"),
        Err(e) => panic!("unexpected error {e}"),
        Ok(_) => panic!("a second open of a store file in use must fail"),
    }
}

/// Churn: 8 000 updates over 200 keys (200-byte values) with a retention of 1 000 revisions,
/// compacting every 250 writes. Automatic compaction must keep the log and the file bounded.
///
/// Measured here (ext4, `cargo test -p skiff-store --test redb automatic_compaction --
/// --nocapture` prints it): with compaction the file stays at 552 KiB (565 248 bytes) from
/// the first round to the last; with `compact_every: 0` the same churn grows it to 3.2 MiB
/// (3 379 200 bytes), and to 6.4 MiB at 20 000 updates. The 1.5 MiB bound allows one redb
/// growth step of slack and fails if compaction does not run or does not free rows.
/// (20 000 updates would take ~45 s in a debug build, where redb itself is unoptimised.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn automatic_compaction_bounds_the_file_under_churn() {
    const KEYS: usize = 200;
    const UPDATES: usize = 8_000;
    const RETENTION: u64 = 1_000;
    const COMPACT_EVERY: u64 = 250;
    const MAX_FILE_BYTES: u64 = 3 << 19;

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store.redb");
    let store = RedbStore::open(
        &path,
        RedbConfig {
            retention: RETENTION,
            // By count only: this test bounds the file.
            retention_age: Duration::ZERO,
            compact_every: COMPACT_EVERY,
            watch_buffer: WATCH_BUFFER,
            ..RedbConfig::default()
        },
    )
    .unwrap();
    let value = Bytes::from(vec![b'x'; 200]);
    let mut max_size = 0;
    let mut last = 0;
    // Four writers, as an apiserver would have; each owns a quarter of the keys.
    for round in 0..(UPDATES / KEYS) {
        let mut tasks = Vec::new();
        for w in 0..4 {
            let store = store.clone();
            let value = value.clone();
            tasks.push(tokio::spawn(async move {
                let mut last = 0;
                for k in (w..KEYS).step_by(4) {
                    let key = format!("/churn/{k:03}");
                    last = if round == 0 {
                        store.create(&key, value.clone()).await.unwrap()
                    } else {
                        store.update(&key, value.clone(), None).await.unwrap()
                    };
                }
                last
            }));
        }
        for t in tasks {
            last = last.max(t.await.unwrap());
        }
        max_size = max_size.max(std::fs::metadata(&path).unwrap().len());
    }
    assert_eq!(last, UPDATES as u64);
    let compacted = compacted_at_least(&store, last - RETENTION - COMPACT_EVERY).await;
    assert!(
        compacted >= last - RETENTION - COMPACT_EVERY,
        "compaction lags: compacted {compacted}, current {last}"
    );
    let log_rows = store.log_len().await.unwrap();
    assert!(
        log_rows <= RETENTION + COMPACT_EVERY + KEYS as u64,
        "log holds {log_rows} rows"
    );
    eprintln!("churn: max file size {max_size} bytes, log rows {log_rows}");
    assert!(
        max_size < MAX_FILE_BYTES,
        "file grew to {max_size} bytes (bound {MAX_FILE_BYTES})"
    );
    // Still fully readable.
    let all = store.list("/churn/", ListOptions::default()).await.unwrap();
    assert_eq!(all.items.len(), KEYS);
    let old = store.watch("/churn/", 1).await;
    assert!(matches!(old, Err(StoreError::Compacted { .. })));
}

/// Automatic compaction keeps young history beyond `retention` (a burst of writes must not
/// shrink the history to seconds: the watch cache's window by age relies on it), up to
/// `max_retention`; old history goes by count as before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn automatic_compaction_keeps_young_history_up_to_the_cap() {
    async fn churn(age: Duration) -> (u64, u64) {
        let dir = tempfile::tempdir().unwrap();
        let store = RedbStore::open(
            dir.path().join("store.redb"),
            RedbConfig {
                retention: 100,
                retention_age: age,
                max_retention: 1_000,
                compact_every: 100,
                ..config()
            },
        )
        .unwrap();
        let writes = futures::future::join_all((0..8).map(|w| {
            let store = store.clone();
            async move {
                for i in 0..375 {
                    let key = format!("/k/{w}");
                    let v = Bytes::from(format!("{i}"));
                    if i == 0 {
                        store.create(&key, v).await.unwrap();
                    } else {
                        store.update(&key, v, None).await.unwrap();
                    }
                }
            }
        }));
        writes.await;
        let cur = store.current_revision().await.unwrap();
        // The last boundary (revision 3000) asks for `expected`; nothing asks for more.
        let expected = if age.is_zero() {
            cur - 100
        } else {
            cur - 1_000
        };
        let compacted = compacted_at_least(&store, expected).await;
        (cur, compacted)
    }
    // Young (an hour's age): only the cap compacts.
    let (cur, compacted) = churn(Duration::from_secs(3600)).await;
    assert_eq!(cur, 3000);
    assert_eq!(compacted, cur - 1_000);
    // Age zero: by count.
    let (cur, compacted) = churn(Duration::ZERO).await;
    assert_eq!(compacted, cur - 100);
}

/// The size bound: young history (an hour's retention) is compacted once the replaced
/// versions it holds pass `max_retained_bytes`, so a burst of large updates cannot grow
/// the file for the whole retention window; without the bound it is all kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn automatic_compaction_bounds_young_history_by_size() {
    const UPDATES: u64 = 3_000;
    const VALUE: usize = 1_000;
    const MAX_BYTES: u64 = 200 * 1024;
    async fn churn(max_retained_bytes: u64) -> (u64, u64, u64) {
        let dir = tempfile::tempdir().unwrap();
        let store = RedbStore::open(
            dir.path().join("store.redb"),
            RedbConfig {
                retention: 100,
                retention_age: Duration::from_secs(3600),
                compact_every: 100,
                max_retained_bytes,
                ..config()
            },
        )
        .unwrap();
        let value = Bytes::from(vec![b'v'; VALUE]);
        for i in 0..UPDATES {
            let key = format!("/k/{}", i % 10);
            if i < 10 {
                store.create(&key, value.clone()).await.unwrap();
            } else {
                store.update(&key, value.clone(), None).await.unwrap();
            }
        }
        // What the bound allows: its bytes in rows, plus one check interval.
        let want = UPDATES - MAX_BYTES / VALUE as u64 - 100;
        let compacted = if max_retained_bytes > 0 {
            compacted_at_least(&store, want).await
        } else {
            store.compacted_revision().await.unwrap()
        };
        (want, compacted, store.log_len().await.unwrap())
    }
    let (want, compacted, rows) = churn(MAX_BYTES).await;
    assert!(compacted >= want, "compacted to {compacted}, want {want}");
    assert!(rows <= UPDATES - want + 10, "log holds {rows} rows");
    let (_, compacted, rows) = churn(0).await;
    assert_eq!((compacted, rows), (0, UPDATES));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compaction_removes_only_unreachable_rows() {
    let dir = tempfile::tempdir().unwrap();
    let store = RedbStore::open(
        dir.path().join("store.redb"),
        RedbConfig {
            compact_every: 0,
            ..config()
        },
    )
    .unwrap();
    let shared: Arc<dyn Store> = Arc::new(store.clone());
    let r1 = shared.update_or_create("/k/a", "1").await; // superseded at r2
    let r2 = shared.update_or_create("/k/a", "2").await; // live at the cut
    let r3 = shared.update_or_create("/k/b", "1").await; // deleted at r4
    let (r4, _) = shared.delete("/k/b", None).await.unwrap(); // tombstone before the cut
    let r5 = shared.update_or_create("/k/c", "1").await; // the cut
    let r6 = shared.update_or_create("/k/a", "3").await; // after the cut, prev is r2
    assert_eq!(store.log_len().await.unwrap(), 6);
    shared.compact(r5).await.unwrap();
    // Gone: r1 (superseded by r2), r3 (superseded by r4), r4 (tombstone older than the cut).
    assert_eq!(store.log_len().await.unwrap(), 3);
    let _ = (r1, r3, r4);
    let mut watch = shared.watch("/k/", r5).await.unwrap();
    match next_event(&mut watch).await {
        Event::Put {
            kv,
            prev: Some(prev),
        } => {
            assert_eq!((kv.mod_revision, prev.mod_revision), (r6, r2));
        }
        other => panic!("expected the update with its prev, got {other:?}"),
    }
    let at_cut = shared
        .list(
            "/k/",
            ListOptions {
                revision: Some(r5),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let got: Vec<_> = at_cut
        .items
        .iter()
        .map(|kv| (kv.key.as_str(), kv.mod_revision))
        .collect();
    assert_eq!(got, [("/k/a", r2), ("/k/c", r5)]);
    match shared.compact(r6 + 1).await {
        Err(StoreError::FutureRevision { requested, current }) => {
            assert_eq!((requested, current), (r6 + 1, r6))
        }
        other => panic!("compacting the future must fail, got {other:?}"),
    }
}

#[test]
fn acknowledged_writes_survive_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store.redb");
    // The writer is its own binary (tests/support/crash_child.rs), so it can be killed
    // mid-write without taking the test with it.
    let mut child = Command::new(env!("CARGO_BIN_EXE_skiff-store-crash-child"))
        .arg(&path)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut acked = Vec::new();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    while acked.len() < 300 {
        let line = lines
            .next()
            .expect("child exited before 300 acknowledged writes")
            .unwrap();
        // Skip libtest's own output; an ack may share a line with it.
        let Some(at) = line.find("ack ") else {
            continue;
        };
        let rest = &line[at + 4..];
        let mut parts = rest.split(' ');
        let (key, rev, value) = (parts.next(), parts.next(), parts.next());
        acked.push((
            key.unwrap().to_owned(),
            rev.unwrap().parse::<u64>().unwrap(),
            value.unwrap().to_owned(),
        ));
    }
    child.kill().unwrap(); // SIGKILL, mid-write
    child.wait().unwrap();

    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let store = open(&path, config());
        let current = store.current_revision().await.unwrap();
        let max_acked = acked.iter().map(|a| a.1).max().unwrap();
        assert!(
            current >= max_acked,
            "current {current} < acknowledged {max_acked}"
        );
        for (key, rev, value) in &acked {
            let kv = store
                .get_at(key, *rev)
                .await
                .unwrap()
                .unwrap_or_else(|| panic!("acknowledged write {key}@{rev} lost"));
            assert_eq!(
                (kv.mod_revision, kv.value.as_ref()),
                (*rev, value.as_bytes())
            );
        }
        let next = store.update_or_create("/crash/after", "x").await;
        assert_eq!(next, current + 1, "revisions continue after the crash");
    });
}

/// Concurrent writes share commits (one fsync per batch), and each keeps its own
/// semantics inside a batch: distinct revisions, one winner among creates of one key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writes_share_commits_and_keep_their_own_checks() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(RedbStore::open(dir.path().join("store.redb"), config()).unwrap());
    let base = store.write_commits();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..200 {
        let store = store.clone();
        tasks.spawn(async move {
            // Every fourth write races for the same key.
            let key = if i % 4 == 0 {
                "/registry/pods/default/contended".to_string()
            } else {
                format!("/registry/pods/default/p{i}")
            };
            store.create(&key, Bytes::from(format!("{i}"))).await
        });
    }
    let mut revisions = Vec::new();
    let mut exists = 0;
    while let Some(r) = tasks.join_next().await {
        match r.unwrap() {
            Ok(rev) => revisions.push(rev),
            Err(StoreError::AlreadyExists { .. }) => exists += 1,
            Err(e) => panic!("unexpected error: {e}"),
        }
    }
    assert_eq!(
        exists, 49,
        "one of the 50 creates of the contended key wins"
    );
    assert_eq!(revisions.len(), 151);
    revisions.sort_unstable();
    revisions.dedup();
    assert_eq!(revisions.len(), 151, "every write has its own revision");
    let commits = store.write_commits() - base;
    assert!(
        commits < 151,
        "151 concurrent writes took {commits} commits: group commit did not batch"
    );
    // All durable: a reopen sees them.
    drop(store);
    let store = RedbStore::open(dir.path().join("store.redb"), config()).unwrap();
    let all = store
        .list("/registry/pods/", ListOptions::default())
        .await
        .unwrap();
    assert_eq!(all.items.len(), 151);
}
