//! The conformance suite every [`Store`] backend must pass.
//!
//! A backend's test file defines an async fixture `fn() -> Option<Fixture>` (None: backend
//! unavailable and the test was reported SKIPPED) and invokes
//! `conformance_tests!(fixture_fn);`, which generates one `#[tokio::test]` per check below.
//! Fixtures must build stores with a watch buffer of [`WATCH_BUFFER`] events.

#![allow(dead_code)] // each test crate uses a different subset of the helpers

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use skiff_store::{Event, KeyValue, ListOptions, Revision, Store, StoreError, WatchStream};

/// Events a watcher may fall behind before it is cut off, for fixtures.
pub const WATCH_BUFFER: usize = 64;

/// How long any single awaited event may take before the test fails.
const EVENT_DEADLINE: Duration = Duration::from_secs(10);

/// A store under test plus whatever keeps its backend alive (temp dir, etcd process).
pub struct Fixture {
    pub store: Arc<dyn Store>,
    pub guard: Box<dyn std::any::Any + Send>,
}

/// Generates one test per conformance check, each with a fresh fixture.
#[macro_export]
macro_rules! conformance_tests {
    ($fixture:path) => {
        $crate::conformance_tests!(@each $fixture;
            create_and_duplicate_create,
            update_is_compare_and_swap,
            concurrent_cas_has_one_winner,
            delete_returns_previous_and_checks_revision,
            revisions_strictly_increase,
            list_prefix_is_a_string_prefix,
            list_pagination_is_consistent_across_writes,
            list_and_get_at_old_revisions,
            lists_larger_than_a_grpc_message,
            watch_from_now,
            watch_from_past_replays_then_goes_live,
            watch_and_reads_of_compacted_revisions_fail,
            slow_watcher_is_cut_off_fast_one_keeps_going,
            create_all_is_all_or_nothing,
            concurrent_create_alls_sharing_a_key_have_one_winner,
            watch_with_progress_reports_changes_without_previous_values
        );
    };
    (@each $fixture:path; $($name:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                let Some(fixture) = $fixture().await else { return };
                conformance::$name(fixture.store.clone()).await;
                drop(fixture);
            }
        )*
    };
}

fn b(s: &str) -> Bytes {
    Bytes::copy_from_slice(s.as_bytes())
}

/// Next item of a watch, failing the test if none comes within [`EVENT_DEADLINE`].
pub async fn next_item(stream: &mut WatchStream) -> Option<Result<Event, StoreError>> {
    tokio::time::timeout(EVENT_DEADLINE, stream.next())
        .await
        .unwrap_or_else(|_| panic!("no watch event within {EVENT_DEADLINE:?}"))
}

pub async fn next_event(stream: &mut WatchStream) -> Event {
    match next_item(stream).await {
        Some(Ok(event)) => event,
        other => panic!("expected a watch event, got {other:?}"),
    }
}

fn keys(items: &[KeyValue]) -> Vec<&str> {
    items.iter().map(|kv| kv.key.as_str()).collect()
}

pub async fn create_and_duplicate_create(store: Arc<dyn Store>) {
    let rev = store.create("/t/a", b("one")).await.unwrap();
    let kv = store
        .get("/t/a")
        .await
        .unwrap()
        .expect("created key is readable");
    assert_eq!(kv.value, b("one"));
    assert_eq!((kv.create_revision, kv.mod_revision), (rev, rev));

    match store.create("/t/a", b("two")).await {
        Err(StoreError::AlreadyExists { key }) => assert_eq!(key, "/t/a"),
        other => panic!("duplicate create must fail AlreadyExists, got {other:?}"),
    }
    assert_eq!(store.get("/t/a").await.unwrap().unwrap().value, b("one"));
    assert!(store.get("/t/missing").await.unwrap().is_none());
    for result in [
        store.create("", b("x")).await,
        store.update("", b("x"), None).await,
        store.delete("", None).await.map(|(rev, _)| rev),
    ] {
        assert!(
            matches!(result, Err(StoreError::InvalidArgument { .. })),
            "an empty key must be rejected, got {result:?}"
        );
    }

    // A deleted key can be created again, as a new incarnation.
    let (del_rev, _) = store.delete("/t/a", None).await.unwrap();
    let again = store.create("/t/a", b("three")).await.unwrap();
    assert!(again > del_rev);
    let kv = store.get("/t/a").await.unwrap().unwrap();
    assert_eq!((kv.create_revision, kv.value), (again, b("three")));
}

pub async fn update_is_compare_and_swap(store: Arc<dyn Store>) {
    let created = store.create("/t/k", b("v1")).await.unwrap();
    let r2 = store.update("/t/k", b("v2"), Some(created)).await.unwrap();
    assert!(r2 > created);

    match store.update("/t/k", b("stale"), Some(created)).await {
        Err(StoreError::Conflict {
            key,
            expected,
            current,
        }) => assert_eq!((key.as_str(), expected, current), ("/t/k", created, r2)),
        other => panic!("stale CAS must fail Conflict, got {other:?}"),
    }
    let kv = store.get("/t/k").await.unwrap().unwrap();
    assert_eq!((kv.value, kv.mod_revision), (b("v2"), r2));

    // Unconditional update, keeping the create revision.
    let r3 = store.update("/t/k", b("v3"), None).await.unwrap();
    let kv = store.get("/t/k").await.unwrap().unwrap();
    assert_eq!(
        (kv.value, kv.create_revision, kv.mod_revision),
        (b("v3"), created, r3)
    );

    for expected in [None, Some(r3)] {
        match store.update("/t/nope", b("x"), expected).await {
            Err(StoreError::NotFound { key }) => assert_eq!(key, "/t/nope"),
            other => panic!("update of a missing key must fail NotFound, got {other:?}"),
        }
    }
    assert!(store.get("/t/nope").await.unwrap().is_none());
}

pub async fn concurrent_cas_has_one_winner(store: Arc<dyn Store>) {
    let start = store.create("/t/counter", b("0")).await.unwrap();
    let tasks: Vec<_> = (0..8)
        .map(|i| {
            let store = store.clone();
            tokio::spawn(async move {
                store
                    .update("/t/counter", b(&format!("writer {i}")), Some(start))
                    .await
            })
        })
        .collect();
    let mut winners = Vec::new();
    for task in tasks {
        match task.await.unwrap() {
            Ok(rev) => winners.push(rev),
            Err(StoreError::Conflict { expected, .. }) => assert_eq!(expected, start),
            Err(e) => panic!("unexpected error: {e}"),
        }
    }
    assert_eq!(winners.len(), 1, "exactly one CAS from {start} may win");
    let kv = store.get("/t/counter").await.unwrap().unwrap();
    assert_eq!(kv.mod_revision, winners[0]);
}

pub async fn delete_returns_previous_and_checks_revision(store: Arc<dyn Store>) {
    let created = store.create("/t/d", b("v1")).await.unwrap();
    let updated = store.update("/t/d", b("v2"), None).await.unwrap();
    match store.delete("/t/d", Some(created)).await {
        Err(StoreError::Conflict {
            expected, current, ..
        }) => assert_eq!((expected, current), (created, updated)),
        other => panic!("stale delete must fail Conflict, got {other:?}"),
    }
    assert!(store.get("/t/d").await.unwrap().is_some());

    let (rev, prev) = store.delete("/t/d", Some(updated)).await.unwrap();
    assert!(rev > updated);
    assert_eq!(
        (prev.key.as_str(), prev.value, prev.mod_revision),
        ("/t/d", b("v2"), updated)
    );
    assert_eq!(prev.create_revision, created);
    assert!(store.get("/t/d").await.unwrap().is_none());
    match store.delete("/t/d", None).await {
        Err(StoreError::NotFound { key }) => assert_eq!(key, "/t/d"),
        other => panic!("deleting a missing key must fail NotFound, got {other:?}"),
    }
}

pub async fn revisions_strictly_increase(store: Arc<dyn Store>) {
    let mut last = store.current_revision().await.unwrap();
    let mut check = |rev: Revision, what: &str| {
        assert!(rev > last, "{what}: revision went from {last} to {rev}");
        last = rev;
        rev
    };
    check(store.create("/t/a", b("1")).await.unwrap(), "create a");
    check(store.create("/t/b", b("1")).await.unwrap(), "create b");
    check(
        store.update("/t/a", b("2"), None).await.unwrap(),
        "update a",
    );
    check(store.delete("/t/b", None).await.unwrap().0, "delete b");
    check(
        store.create("/t/b", b("2")).await.unwrap(),
        "create b again",
    );
    check(
        store.update("/t/b", b("3"), None).await.unwrap(),
        "update b",
    );
    let final_rev = check(store.delete("/t/a", None).await.unwrap().0, "delete a");
    assert_eq!(store.current_revision().await.unwrap(), final_rev);

    // Failed writes do not consume revisions.
    assert!(store.create("/t/b", b("dup")).await.is_err());
    assert!(store.update("/t/a", b("gone"), None).await.is_err());
    assert!(store.update("/t/b", b("stale"), Some(1)).await.is_err());
    assert!(store.delete("/t/a", None).await.is_err());
    assert_eq!(store.current_revision().await.unwrap(), final_rev);
    let next = store.update("/t/b", b("4"), None).await.unwrap();
    assert!(next > final_rev);
}

pub async fn list_prefix_is_a_string_prefix(store: Arc<dyn Store>) {
    for key in ["/a/b/x", "/a/bc", "/a/b", "/a/c/y", "/a/b/y/z"] {
        store.create(key, b(key)).await.unwrap();
    }
    let list = |prefix: &'static str| {
        let store = store.clone();
        async move { store.list(prefix, ListOptions::default()).await.unwrap() }
    };
    // The apiserver's prefixes end in '/', which isolates one directory.
    let dir = list("/a/b/").await;
    assert_eq!(keys(&dir.items), ["/a/b/x", "/a/b/y/z"]);
    assert_eq!(dir.remaining, 0);
    assert!(!dir.more());
    // Without the '/', it is a plain string prefix: "/a/bc" matches too. Sorted by bytes.
    assert_eq!(
        keys(&list("/a/b").await.items),
        ["/a/b", "/a/b/x", "/a/b/y/z", "/a/bc"]
    );
    assert_eq!(list("").await.items.len(), 5);
    assert!(list("/nothing/").await.items.is_empty());
    let values: Vec<_> = list("/a/")
        .await
        .items
        .into_iter()
        .map(|kv| kv.value)
        .collect();
    assert_eq!(
        values,
        ["/a/b", "/a/b/x", "/a/b/y/z", "/a/bc", "/a/c/y"].map(b)
    );
}

pub async fn list_pagination_is_consistent_across_writes(store: Arc<dyn Store>) {
    let mut original = BTreeMap::new();
    for i in 0..10 {
        let key = format!("/p/{i:02}");
        store.create(&key, b(&format!("v{i}"))).await.unwrap();
        original.insert(key, b(&format!("v{i}")));
    }
    store.create("/q/outside", b("x")).await.unwrap();

    let first = store
        .list(
            "/p/",
            ListOptions {
                limit: Some(4),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(keys(&first.items), ["/p/00", "/p/01", "/p/02", "/p/03"]);
    assert_eq!(first.remaining, 6);
    assert_eq!(first.revision, store.current_revision().await.unwrap());

    // Writes between pages must not show up in later pages of the same list.
    store.update("/p/05", b("changed"), None).await.unwrap();
    store.delete("/p/06", None).await.unwrap();
    store.create("/p/045", b("new")).await.unwrap();
    store.create("/p/99", b("new")).await.unwrap();
    store.delete("/p/01", None).await.unwrap();

    let mut seen: Vec<KeyValue> = first.items.clone();
    let mut last = first;
    while last.more() {
        let page = store
            .list(
                "/p/",
                ListOptions {
                    revision: Some(last.revision),
                    limit: Some(4),
                    continue_after: Some(last.items.last().unwrap().key.clone()),
                },
            )
            .await
            .unwrap();
        assert_eq!(page.revision, last.revision, "pages share one snapshot");
        assert!(page.items.len() <= 4);
        seen.extend(page.items.iter().cloned());
        assert_eq!(page.remaining as usize, 10 - seen.len());
        last = page;
    }
    let seen: BTreeMap<_, _> = seen.into_iter().map(|kv| (kv.key, kv.value)).collect();
    assert_eq!(seen, original);

    // A fresh list sees the new state.
    let now = store.list("/p/", ListOptions::default()).await.unwrap();
    assert_eq!(
        keys(&now.items),
        [
            "/p/00", "/p/02", "/p/03", "/p/04", "/p/045", "/p/05", "/p/07", "/p/08", "/p/09",
            "/p/99"
        ]
    );
    assert!(now.revision > last.revision);
}

/// A value of `len` bytes that names its key and version, so a misplaced or stale value
/// is caught.
fn big_value(key: &str, version: u32, len: usize) -> Bytes {
    let head = format!("{key}@{version}:");
    let mut v = head.into_bytes();
    v.resize(len.max(v.len()), b'.');
    Bytes::from(v)
}

/// More data under one prefix than fits one 4 MiB gRPC message (a LIST of 10k pods is
/// ~14 MB), in more keys than one page, plus values so large that a page of them does not
/// fit either: unlimited, limited and continued lists, at the current and at an older
/// revision, see every key once with its value of that revision.
pub async fn lists_larger_than_a_grpc_message(store: Arc<dyn Store>) {
    const SMALL: usize = 1200; // more keys than a backend page
    const SMALL_LEN: usize = 4 * 1024; // 4.8 MB in all
                                       // 20 MiB: more than a backend may accept in one response (etcd's store: 16 MiB), so
                                       // a page holding them has to be split.
    const BIG: usize = 20;
    const BIG_LEN: usize = 1024 * 1024;
    let mut want: BTreeMap<String, Bytes> = BTreeMap::new();
    for i in 0..SMALL {
        let key = format!("/big/s/{i:05}");
        let value = big_value(&key, 0, SMALL_LEN);
        store.create(&key, value.clone()).await.unwrap();
        want.insert(key, value);
    }
    for i in 0..BIG {
        let key = format!("/big/t/{i:02}");
        let value = big_value(&key, 0, BIG_LEN);
        store.create(&key, value.clone()).await.unwrap();
        want.insert(key, value);
    }
    store.create("/bigger", b("outside")).await.unwrap();
    let at = store.current_revision().await.unwrap();

    // Later writes must not leak into a list at `at`.
    store
        .update("/big/s/00000", big_value("/big/s/00000", 1, 10), None)
        .await
        .unwrap();
    store.delete("/big/t/05", None).await.unwrap();
    store
        .create("/big/s/00000a", big_value("/big/s/00000a", 1, 10))
        .await
        .unwrap();

    let check = |items: &[KeyValue], what: &str| {
        let got: BTreeMap<String, Bytes> = items
            .iter()
            .map(|kv| (kv.key.clone(), kv.value.clone()))
            .collect();
        assert_eq!(got.len(), items.len(), "{what}: a key listed twice");
        assert!(
            got.keys().eq(want.keys()),
            "{what}: {} keys instead of {}",
            got.len(),
            want.len()
        );
        for (k, v) in &want {
            assert!(got[k] == *v, "{what}: wrong value for {k}");
        }
    };
    let old = store
        .list(
            "/big/",
            ListOptions {
                revision: Some(at),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(old.revision, at);
    assert_eq!(old.remaining, 0);
    check(&old.items, "unlimited list at an old revision");

    // Pages of 700 (more than one backend page, several MiB each), continued at `at`.
    let mut seen = Vec::new();
    let mut after = None;
    loop {
        let page = store
            .list(
                "/big/",
                ListOptions {
                    revision: Some(at),
                    limit: Some(700),
                    continue_after: after.take(),
                },
            )
            .await
            .unwrap();
        assert_eq!(page.revision, at);
        assert!(page.items.len() <= 700);
        seen.extend(page.items.iter().cloned());
        assert_eq!(page.remaining as usize, want.len() - seen.len());
        if !page.more() {
            break;
        }
        after = page.items.last().map(|kv| kv.key.clone());
    }
    check(&seen, "limited list at an old revision");

    // The current state: one key changed, one gone, one new.
    let now = store.list("/big/", ListOptions::default()).await.unwrap();
    assert_eq!(now.revision, store.current_revision().await.unwrap());
    assert_eq!(now.items.len(), want.len());
    assert_eq!(now.items[0].value, big_value("/big/s/00000", 1, 10));
    assert_eq!(now.items[1].key, "/big/s/00000a");
    assert!(!now.items.iter().any(|kv| kv.key == "/big/t/05"));
}

pub async fn list_and_get_at_old_revisions(store: Arc<dyn Store>) {
    let r1 = store.create("/o/k1", b("a")).await.unwrap();
    let r2 = store.update("/o/k1", b("b"), None).await.unwrap();
    let r3 = store.create("/o/k2", b("c")).await.unwrap();
    let (r4, _) = store.delete("/o/k1", None).await.unwrap();
    let r5 = store.create("/o/k1", b("d")).await.unwrap();

    let at = |rev: Revision| {
        let store = store.clone();
        async move {
            let page = store
                .list(
                    "/o/",
                    ListOptions {
                        revision: Some(rev),
                        ..Default::default()
                    },
                )
                .await
                .unwrap();
            assert_eq!(page.revision, rev);
            page.items
                .into_iter()
                .map(|kv| (kv.key, String::from_utf8(kv.value.to_vec()).unwrap()))
                .collect::<Vec<_>>()
        }
    };
    let kv = |k: &str, v: &str| (k.to_owned(), v.to_owned());
    assert_eq!(at(r1).await, [kv("/o/k1", "a")]);
    assert_eq!(at(r2).await, [kv("/o/k1", "b")]);
    assert_eq!(at(r3).await, [kv("/o/k1", "b"), kv("/o/k2", "c")]);
    assert_eq!(at(r4).await, [kv("/o/k2", "c")]);
    assert_eq!(at(r5).await, [kv("/o/k1", "d"), kv("/o/k2", "c")]);

    let old = store.get_at("/o/k1", r2).await.unwrap().unwrap();
    assert_eq!(
        (old.value, old.create_revision, old.mod_revision),
        (b("b"), r1, r2)
    );
    assert!(store.get_at("/o/k1", r4).await.unwrap().is_none());
    assert_eq!(
        store
            .get_at("/o/k1", r5)
            .await
            .unwrap()
            .unwrap()
            .create_revision,
        r5
    );

    let future = r5 + 1000;
    match store.get_at("/o/k1", future).await {
        Err(StoreError::FutureRevision { requested, current }) => {
            assert_eq!((requested, current), (future, r5))
        }
        other => panic!("a future revision must fail FutureRevision, got {other:?}"),
    }
    let listed = store
        .list(
            "/o/",
            ListOptions {
                revision: Some(future),
                ..Default::default()
            },
        )
        .await;
    assert!(
        matches!(listed, Err(StoreError::FutureRevision { .. })),
        "{listed:?}"
    );
}

pub async fn watch_from_now(store: Arc<dyn Store>) {
    store.create("/w/before", b("old")).await.unwrap();
    let from = store.current_revision().await.unwrap();
    let mut watch = store.watch("/w/", from).await.unwrap();
    // A revision that has not happened yet can be watched from too.
    let future_from = from + 2;
    let mut future = store.watch("/w/", future_from).await.unwrap();

    let r1 = store.create("/w/a", b("1")).await.unwrap();
    store.create("/other/a", b("not watched")).await.unwrap();
    let r2 = store.update("/w/a", b("2"), None).await.unwrap();
    let (r3, _) = store.delete("/w/a", None).await.unwrap();

    let expected: Vec<Revision> = [r1, r2, r3]
        .into_iter()
        .filter(|r| *r > future_from)
        .collect();
    assert!(!expected.is_empty());
    for rev in expected {
        assert_eq!(next_event(&mut future).await.revision(), rev);
    }

    match next_event(&mut watch).await {
        Event::Put { kv, prev: None } => {
            assert_eq!(
                (kv.key.as_str(), kv.value, kv.mod_revision),
                ("/w/a", b("1"), r1)
            )
        }
        other => panic!("expected a create, got {other:?}"),
    }
    match next_event(&mut watch).await {
        Event::Put {
            kv,
            prev: Some(prev),
        } => {
            assert_eq!(
                (kv.value, kv.mod_revision, kv.create_revision),
                (b("2"), r2, r1)
            );
            assert_eq!((prev.value, prev.mod_revision), (b("1"), r1));
        }
        other => panic!("expected an update, got {other:?}"),
    }
    match next_event(&mut watch).await {
        Event::Delete { revision, prev } => {
            assert_eq!(revision, r3);
            assert_eq!(
                (prev.key.as_str(), prev.value, prev.mod_revision),
                ("/w/a", b("2"), r2)
            );
        }
        other => panic!("expected a delete, got {other:?}"),
    }
}

pub async fn watch_from_past_replays_then_goes_live(store: Arc<dyn Store>) {
    let mut written = Vec::new();
    for i in 0..40 {
        let key = format!("/h/{}", i % 7);
        let rev = match store.create(&key, b(&i.to_string())).await {
            Ok(rev) => rev,
            Err(StoreError::AlreadyExists { .. }) => {
                store.update(&key, b(&i.to_string()), None).await.unwrap()
            }
            Err(e) => panic!("{e}"),
        };
        written.push(rev);
        store.create(&format!("/hx/{i}"), b("noise")).await.unwrap();
    }
    let from = written[9];
    let mut watch = store.watch("/h/", from).await.unwrap();

    // Keep writing while the watcher replays, so the hand-over to live events races writes.
    // 30 replayed + 30 live events fit the watch buffer, so a consumer stalled by a busy
    // machine cannot be cut off: this test is about gaps and duplicates, not speed.
    let writer = {
        let store = store.clone();
        tokio::spawn(async move {
            let mut revs = Vec::new();
            for i in 40..70 {
                let key = format!("/h/{}", i % 7);
                revs.push(store.update(&key, b(&i.to_string()), None).await.unwrap());
            }
            revs
        })
    };
    let mut got = Vec::new();
    while got.len() < 30 {
        got.push(next_event(&mut watch).await);
    }
    written.extend(writer.await.unwrap());
    while got.len() < 60 {
        got.push(next_event(&mut watch).await);
    }
    let revs: Vec<Revision> = got.iter().map(Event::revision).collect();
    assert_eq!(
        revs,
        written[10..],
        "replay then live: every revision once, in order"
    );
    for (event, i) in got.iter().zip(10..) {
        match event {
            Event::Put { kv, .. } => {
                assert_eq!(kv.key, format!("/h/{}", i % 7));
                assert_eq!(kv.value, b(&i.to_string()));
            }
            other => panic!("expected puts only, got {other:?}"),
        }
    }
    // And nothing else is pending: a fresh write is the very next event.
    let last = store.update("/h/0", b("final"), None).await.unwrap();
    assert_eq!(next_event(&mut watch).await.revision(), last);
}

pub async fn watch_and_reads_of_compacted_revisions_fail(store: Arc<dyn Store>) {
    let mut revs = Vec::new();
    for i in 0..10 {
        revs.push(store.update_or_create("/c/k", &i.to_string()).await);
        store.create(&format!("/c/other{i}"), b("x")).await.unwrap();
    }
    let compact_at = revs[5];
    store.compact(compact_at).await.unwrap();
    assert_eq!(store.compacted_revision().await.unwrap(), compact_at);
    // Compacting to an older revision is a no-op.
    store.compact(revs[2]).await.unwrap();
    assert_eq!(store.compacted_revision().await.unwrap(), compact_at);

    match store.watch("/c/", revs[1]).await {
        Err(StoreError::Compacted {
            requested,
            compacted,
        }) => assert_eq!((requested, compacted), (revs[1], compact_at)),
        Err(e) => panic!("expected Compacted, got {e}"),
        Ok(_) => panic!("watching a compacted revision must fail"),
    }
    let old_list = store
        .list(
            "/c/",
            ListOptions {
                revision: Some(revs[1]),
                ..Default::default()
            },
        )
        .await;
    assert!(
        matches!(old_list, Err(StoreError::Compacted { requested, compacted })
            if requested == revs[1] && compacted == compact_at),
        "{old_list:?}"
    );
    assert!(matches!(
        store.get_at("/c/k", revs[1]).await,
        Err(StoreError::Compacted { .. })
    ));

    // The compacted revision itself is still readable and watchable, with prev values.
    let snapshot = store
        .list(
            "/c/",
            ListOptions {
                revision: Some(compact_at),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let k = snapshot.items.iter().find(|kv| kv.key == "/c/k").unwrap();
    assert_eq!((k.value.clone(), k.mod_revision), (b("5"), compact_at));
    assert_eq!(snapshot.items.len(), 1 + 5);

    let mut watch = store.watch("/c/k", compact_at).await.unwrap();
    for (i, rev) in revs.iter().enumerate().skip(6) {
        match next_event(&mut watch).await {
            Event::Put {
                kv,
                prev: Some(prev),
            } => {
                assert_eq!((kv.mod_revision, kv.value), (*rev, b(&i.to_string())));
                assert_eq!(prev.value, b(&(i - 1).to_string()));
            }
            other => panic!("expected an update with prev, got {other:?}"),
        }
    }
}

pub async fn slow_watcher_is_cut_off_fast_one_keeps_going(store: Arc<dyn Store>) {
    let from = store.current_revision().await.unwrap();
    let mut slow = store.watch("/s/", from).await.unwrap();
    let mut fast = store.watch("/s/", from).await.unwrap();
    let total = WATCH_BUFFER * 4;

    // The writer never gets more than half a buffer ahead of the fast reader, so the fast
    // watcher keeps up by construction however the machine schedules it; the slow one never
    // reads at all.
    let (progress_tx, mut progress) = tokio::sync::watch::channel(0usize);
    let reader = tokio::spawn(async move {
        let mut revs = Vec::new();
        while revs.len() < total {
            revs.push(next_event(&mut fast).await.revision());
            progress_tx.send_replace(revs.len());
        }
        revs
    });
    let mut written = Vec::new();
    for i in 0..total {
        let ahead = i.saturating_sub(WATCH_BUFFER / 2);
        tokio::time::timeout(EVENT_DEADLINE, progress.wait_for(|read| *read >= ahead))
            .await
            .expect("fast watcher stopped receiving")
            .expect("fast reader task ended");
        let key = format!("/s/{}", i % 5);
        written.push(store.update_or_create(&key, &i.to_string()).await);
    }
    assert_eq!(
        reader.await.unwrap(),
        written,
        "the fast watcher saw everything"
    );

    // The slow watcher gets what was buffered before it fell behind, in order, then an error.
    let mut slow_revs = Vec::new();
    let error = loop {
        match next_item(&mut slow).await {
            Some(Ok(event)) => slow_revs.push(event.revision()),
            Some(Err(e)) => break e,
            None => panic!("a cut-off watcher must end with an error, not silently"),
        }
    };
    assert!(
        matches!(error, StoreError::WatcherTooSlow { ref prefix, buffer }
            if prefix == "/s/" && buffer == WATCH_BUFFER),
        "{error}"
    );
    assert!(slow_revs.len() < total, "the slow watcher was cut off");
    assert_eq!(slow_revs, written[..slow_revs.len()]);
    assert!(
        next_item(&mut slow).await.is_none(),
        "nothing after the error"
    );

    // Re-watching from the last revision it saw resumes exactly.
    let resume_from = slow_revs.last().copied().unwrap_or(from);
    let mut again = store.watch("/s/", resume_from).await.unwrap();
    let mut resumed = Vec::new();
    while resumed.len() < total - slow_revs.len() {
        resumed.push(next_event(&mut again).await.revision());
    }
    assert_eq!(resumed, written[slow_revs.len()..]);
}

/// Test-only convenience: create the key or update it unconditionally.
#[async_trait::async_trait]
pub trait StoreExt {
    async fn update_or_create(&self, key: &str, value: &str) -> Revision;
}

#[async_trait::async_trait]
impl StoreExt for Arc<dyn Store> {
    async fn update_or_create(&self, key: &str, value: &str) -> Revision {
        match self.create(key, b(value)).await {
            Ok(rev) => rev,
            Err(StoreError::AlreadyExists { .. }) => {
                self.update(key, b(value), None).await.unwrap()
            }
            Err(e) => panic!("writing {key}: {e}"),
        }
    }
}

/// `create_all` writes every key or none: a live key fails the whole write, names that
/// key and consumes no revision; a successful one is read and watched as ordinary creates.
pub async fn create_all_is_all_or_nothing(store: Arc<dyn Store>) {
    let from = store.current_revision().await.unwrap();
    let mut watch = store.watch("/g/", from).await.unwrap();
    let taken = store.create("/g/taken", b("t")).await.unwrap();
    match store
        .create_all(vec![("/g/new".into(), b("n")), ("/g/taken".into(), b("x"))])
        .await
    {
        Err(StoreError::AlreadyExists { key }) => assert_eq!(key, "/g/taken"),
        other => panic!("a live key must fail the whole create_all, got {other:?}"),
    }
    assert!(
        store.get("/g/new").await.unwrap().is_none(),
        "nothing of a failed create_all is written"
    );
    assert_eq!(store.current_revision().await.unwrap(), taken);
    for bad in [
        vec![],
        vec![
            ("/g/twice".to_string(), b("1")),
            ("/g/twice".into(), b("2")),
        ],
        vec![("".to_string(), b("1"))],
    ] {
        let r = store.create_all(bad).await;
        assert!(
            matches!(r, Err(StoreError::InvalidArgument { .. })),
            "no keys, a repeated key or an empty key must be rejected, got {r:?}"
        );
    }

    let revs = store
        .create_all(vec![("/g/svc".into(), b("s")), ("/g/ip".into(), b("i"))])
        .await
        .unwrap();
    assert_eq!(revs.len(), 2);
    assert!(revs[0] > taken && revs[1] >= revs[0], "{revs:?}");
    assert_eq!(store.current_revision().await.unwrap(), revs[1]);
    for (key, value, rev) in [("/g/svc", "s", revs[0]), ("/g/ip", "i", revs[1])] {
        let kv = store.get(key).await.unwrap().expect("created");
        assert_eq!(
            (kv.value, kv.create_revision, kv.mod_revision),
            (b(value), rev, rev)
        );
    }
    // Watchers see the earlier create, then both keys of the group, in order.
    let mut seen = Vec::new();
    for _ in 0..3 {
        match next_event(&mut watch).await {
            Event::Put { kv, prev: None } => seen.push((kv.key, kv.mod_revision)),
            other => panic!("expected a create, got {other:?}"),
        }
    }
    assert_eq!(
        seen,
        vec![
            ("/g/taken".to_string(), taken),
            ("/g/svc".to_string(), revs[0]),
            ("/g/ip".to_string(), revs[1]),
        ]
    );
}

/// Racing `create_all`s that share one key (two Services picking the same ClusterIP):
/// exactly one wins, and the losers' other keys are not written.
pub async fn concurrent_create_alls_sharing_a_key_have_one_winner(store: Arc<dyn Store>) {
    let tasks: Vec<_> = (0..8)
        .map(|i| {
            let store = store.clone();
            tokio::spawn(async move {
                let own = format!("/race/svc-{i}");
                let r = store
                    .create_all(vec![
                        (own.clone(), b("s")),
                        ("/race/ip".into(), b(&i.to_string())),
                    ])
                    .await;
                (own, r)
            })
        })
        .collect();
    let mut winners = Vec::new();
    for task in tasks {
        let (own, r) = task.await.unwrap();
        match r {
            Ok(_) => winners.push(own),
            Err(StoreError::AlreadyExists { key }) => {
                assert_eq!(key, "/race/ip");
                assert!(
                    store.get(&own).await.unwrap().is_none(),
                    "{own} was written"
                );
            }
            Err(e) => panic!("unexpected error: {e}"),
        }
    }
    assert_eq!(winners.len(), 1, "{winners:?}");
    let page = store.list("/race/", ListOptions::default()).await.unwrap();
    assert_eq!(keys(&page.items), vec!["/race/ip", winners[0].as_str()]);
}

/// `watch_with_progress` (the watch cache's watch) reports the same changes as `watch`,
/// replayed from history and then live, as [`Change`]s: a put with its new state, a delete
/// with its key and revision only (no previous values: etcd is not asked for them).
pub async fn watch_with_progress_reports_changes_without_previous_values(store: Arc<dyn Store>) {
    use skiff_store::{Change, WatchItem};
    async fn next_change(stream: &mut skiff_store::ProgressWatchStream) -> Change {
        loop {
            let item = tokio::time::timeout(EVENT_DEADLINE, stream.next())
                .await
                .unwrap_or_else(|_| panic!("no change within {EVENT_DEADLINE:?}"));
            match item {
                Some(Ok(WatchItem::Change(c))) => return c,
                Some(Ok(WatchItem::Progress(_))) => continue,
                other => panic!("expected a change, got {other:?}"),
            }
        }
    }
    let from = store.current_revision().await.unwrap();
    // History: written before the watch starts, replayed from the store's log.
    let r1 = store.create("/p/a", b("1")).await.unwrap();
    store.create("/px/a", b("not watched")).await.unwrap();
    let r2 = store.update("/p/a", b("2"), None).await.unwrap();
    let (r3, _) = store.delete("/p/a", None).await.unwrap();
    let (mut stream, _requester) = store.watch_with_progress("/p/", from).await.unwrap();
    // Live: written after.
    let r4 = store.create("/p/a", b("3")).await.unwrap();
    let r5 = store.update("/p/a", b("4"), Some(r4)).await.unwrap();
    let (r6, _) = store.delete("/p/a", Some(r5)).await.unwrap();
    let put = |value: &str, mod_revision, create_revision| {
        Change::Put(KeyValue {
            key: "/p/a".into(),
            value: b(value),
            create_revision,
            mod_revision,
        })
    };
    let delete = |revision| Change::Delete {
        key: "/p/a".into(),
        revision,
    };
    let expected = [
        put("1", r1, r1),
        put("2", r2, r1),
        delete(r3),
        put("3", r4, r4),
        put("4", r5, r4),
        delete(r6),
    ];
    for want in expected {
        let got = next_change(&mut stream).await;
        assert_eq!(got.revision(), want.revision());
        assert_eq!(got, want);
    }
    // Nothing else is pending: the next write is the next change.
    let r7 = store.create("/p/b", b("5")).await.unwrap();
    assert_eq!(
        next_change(&mut stream).await,
        Change::Put(KeyValue {
            key: "/p/b".into(),
            value: b("5"),
            create_revision: r7,
            mod_revision: r7,
        })
    );
}
