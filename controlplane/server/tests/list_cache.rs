//! LIST from the watch cache (KEP-2340): the cache and the store give the same answers,
//! the resourceVersion rules pick who answers, and pagination under concurrent writes
//! neither duplicates nor skips. `x-skiff-list-from: cache|store` says who answered.

mod support;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};

use support::InProcess;

struct Listed {
    from: String,
    code: u16,
    body: Value,
}

impl Listed {
    fn names(&self) -> Vec<String> {
        self.body["items"]
            .as_array()
            .unwrap_or(&Vec::new())
            .iter()
            .map(|i| {
                format!(
                    "{}/{}",
                    i["metadata"]["namespace"].as_str().unwrap_or(""),
                    i["metadata"]["name"].as_str().unwrap_or("")
                )
            })
            .collect()
    }

    fn rv(&self) -> String {
        self.body["metadata"]["resourceVersion"]
            .as_str()
            .unwrap_or("")
            .to_string()
    }

    fn cont(&self) -> Option<String> {
        self.body["metadata"]["continue"]
            .as_str()
            .map(str::to_string)
    }
}

async fn get(client: &kube::Client, path_and_query: &str) -> Listed {
    let req = http::Request::get(path_and_query)
        .body(kube::client::Body::empty())
        .unwrap();
    let resp = client.send(req).await.expect("request");
    let code = resp.status().as_u16();
    let from = resp
        .headers()
        .get("x-skiff-list-from")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let bytes = resp.into_body().collect_bytes().await.expect("body");
    let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    Listed { from, code, body }
}

async fn post(client: &kube::Client, path: &str, obj: Value) -> Value {
    let req = http::Request::post(path)
        .header("content-type", "application/json")
        .body(serde_json::to_vec(&obj).unwrap())
        .unwrap();
    let text = client.request_text(req).await.expect("create");
    serde_json::from_str(&text).unwrap()
}

fn pod(name: &str, app: &str, node: &str, phase: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "labels": {"app": app, "idx": name}},
        "spec": {"nodeName": node, "containers": [{"name": "c", "image": "skiff.local/host"}]},
        "status": {"phase": phase},
    })
}

async fn ns(client: &kube::Client, name: &str) {
    post(
        client,
        "/api/v1/namespaces",
        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}),
    )
    .await;
}

/// Pages through `base` (which has `?`) with `limit`, returning every page.
async fn pages(client: &kube::Client, base: &str, limit: usize) -> Vec<Listed> {
    let mut out = Vec::new();
    let mut cont: Option<String> = None;
    loop {
        let mut q = format!("{base}&limit={limit}");
        if let Some(c) = &cont {
            q.push_str(&format!("&continue={c}"));
        }
        let page = get(client, &q).await;
        assert_eq!(page.code, 200, "{q}: {}", page.body);
        cont = page.cont();
        out.push(page);
        if cont.is_none() {
            return out;
        }
    }
}

async fn seed(s: &InProcess) {
    ns(&s.client, "a").await;
    ns(&s.client, "b").await;
    for i in 0..30 {
        let (nsn, app, node, phase) = match i % 3 {
            0 => ("a", "web", "n1", "Running"),
            1 => ("a", "db", "n2", "Pending"),
            _ => ("b", "web", "n2", "Running"),
        };
        post(
            &s.client,
            &format!("/api/v1/namespaces/{nsn}/pods"),
            pod(&format!("p{i:02}"), app, node, phase),
        )
        .await;
    }
}

/// The same queries answered by the cache (resourceVersion unset) and by the store
/// (`Exact` at the cache's revision): equal items, tokens, counts; pages too.
async fn cache_equals_store(s: &InProcess) {
    seed(s).await;
    for query in [
        "/api/v1/pods?",
        "/api/v1/namespaces/a/pods?",
        "/api/v1/pods?labelSelector=app%3Dweb",
        "/api/v1/pods?labelSelector=app+in+(web,db),idx!%3Dp03",
        "/api/v1/pods?fieldSelector=spec.nodeName%3Dn2",
        "/api/v1/namespaces/a/pods?fieldSelector=status.phase%3DRunning&labelSelector=app",
        "/api/v1/namespaces?",
    ] {
        let cached = get(&s.client, query).await;
        assert_eq!(
            (cached.code, cached.from.as_str()),
            (200, "cache"),
            "{query}"
        );
        let rv = cached.rv();
        let stored = get(
            &s.client,
            &format!("{query}&resourceVersion={rv}&resourceVersionMatch=Exact"),
        )
        .await;
        assert_eq!(
            (stored.code, stored.from.as_str()),
            (200, "store"),
            "{query}"
        );
        assert_eq!(cached.body, stored.body, "{query}");
        // Page by page: the first pages from each, continued from each.
        for limit in [1, 4, 7] {
            let c = get(&s.client, &format!("{query}&limit={limit}")).await;
            let st = get(
                &s.client,
                &format!(
                    "{query}&limit={limit}&resourceVersion={}&resourceVersionMatch=Exact",
                    c.rv()
                ),
            )
            .await;
            assert_eq!(c.body, st.body, "{query} limit {limit}");
            let all = pages(&s.client, query, limit).await;
            assert!(all.iter().all(|p| p.from == "cache"), "{query}");
            let names: Vec<String> = all.iter().flat_map(|p| p.names()).collect();
            assert_eq!(names, cached.names(), "{query} limit {limit}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cache_answers_equal_the_store_redb() {
    let s = InProcess::redb(Duration::from_secs(1800)).await;
    cache_equals_store(&s).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cache_answers_equal_the_store_etcd() {
    let Some((etcd, store)) = support::Etcd::start().await else {
        return;
    };
    let s = InProcess::start_with(
        tempfile::tempdir().unwrap(),
        Arc::new(store),
        Some(etcd),
        Duration::from_secs(1800),
    )
    .await;
    cache_equals_store(&s).await;
}

/// Who answers for each resourceVersion / resourceVersionMatch / continue.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resource_version_rules() {
    // A short history, so that a few writes push a continue token out of the window.
    const HISTORY: usize = 40;
    let s = InProcess::redb_configured(|c| {
        c.watch_cache.min_changes = HISTORY;
        c.watch_cache.max_changes = HISTORY;
    })
    .await;
    seed(&s).await;
    let c = &s.client;
    let latest = get(c, "/api/v1/pods").await;
    assert_eq!(latest.from, "cache");
    // A write is visible to the very next consistent LIST (the cache waited for it).
    let created = post(
        c,
        "/api/v1/namespaces/a/pods",
        pod("fresh", "web", "n1", "Running"),
    )
    .await;
    let after = get(
        c,
        "/api/v1/namespaces/a/pods?fieldSelector=metadata.name%3Dfresh",
    )
    .await;
    assert_eq!((after.from.as_str(), after.names().len()), ("cache", 1));
    assert!(
        after.rv().parse::<u64>().unwrap()
            >= created["metadata"]["resourceVersion"]
                .as_str()
                .unwrap()
                .parse()
                .unwrap()
    );
    // "0": the cache, whatever it has.
    assert_eq!(get(c, "/api/v1/pods?resourceVersion=0").await.from, "cache");
    // NotOlderThan a version the cache has: the cache.
    let rv = after.rv();
    for q in [
        format!("/api/v1/pods?resourceVersion={rv}"),
        format!("/api/v1/pods?resourceVersion={rv}&resourceVersionMatch=NotOlderThan"),
    ] {
        let l = get(c, &q).await;
        assert_eq!((l.code, l.from.as_str()), (200, "cache"), "{q}");
    }
    // A version the store has not reached: 504, as upstream. (kube-rs retries a 504 by
    // default, which would only make this slow: ask without retries.)
    let far = rv.parse::<u64>().unwrap() + 1000;
    let kc = kube::config::Kubeconfig::read_from(s.kubeconfig()).unwrap();
    let mut cfg = kube::Config::from_custom_kubeconfig(kc, &Default::default())
        .await
        .unwrap();
    cfg.default_retry = false;
    let no_retry = kube::Client::try_from(cfg).unwrap();
    let l = get(&no_retry, &format!("/api/v1/pods?resourceVersion={far}")).await;
    assert_eq!(l.code, 504, "{}", l.body);
    assert_eq!(l.body["reason"], "Timeout");
    // Exact: the store, at that snapshot (the pod created later is not in it).
    let before = latest.rv();
    let l = get(
        c,
        &format!("/api/v1/namespaces/a/pods?resourceVersion={before}&resourceVersionMatch=Exact"),
    )
    .await;
    assert_eq!((l.code, l.from.as_str()), (200, "store"));
    assert!(!l.names().contains(&"a/fresh".to_string()));
    assert_eq!(l.rv(), before);

    // A continue token within the cache's window: the cache, at the token's revision.
    let first = get(c, "/api/v1/pods?limit=5").await;
    let token = first.cont().unwrap();
    // More writes to pods than the cache keeps history for push the token's revision out
    // of the window: the store answers, still at that revision.
    post(
        c,
        "/api/v1/namespaces/b/pods",
        pod("later", "web", "n1", "Running"),
    )
    .await;
    let next = get(c, &format!("/api/v1/pods?limit=5&continue={token}")).await;
    assert_eq!((next.code, next.from.as_str()), (200, "cache"));
    assert!(!next.names().contains(&"b/later".to_string()));
    let store = &s.store;
    for i in 0..(HISTORY + 5) {
        // Straight to the store (fast): status-only churn on one pod.
        let key = "/registry/pods/b/later";
        let kv = store.get(key).await.unwrap().unwrap();
        let mut v: Value = serde_json::from_slice(&kv.value).unwrap();
        v["metadata"]["annotations"] = json!({"n": i.to_string()});
        store
            .update(key, serde_json::to_vec(&v).unwrap().into(), None)
            .await
            .unwrap();
    }
    let old = get(c, &format!("/api/v1/pods?limit=5&continue={token}")).await;
    assert_eq!(
        (old.code, old.from.as_str()),
        (200, "store"),
        "{}",
        old.body
    );
    assert_eq!(old.body["items"], next.body["items"]);
    // Compacted past the token: 410 whoever would answer.
    let cur = store.current_revision().await.unwrap();
    store.compact(cur).await.unwrap();
    let gone = get(c, &format!("/api/v1/pods?limit=5&continue={token}")).await;
    assert_eq!(gone.code, 410, "{}", gone.body);
    // And a token from a recent page stays with the cache until compaction passes it.
    let fresh = get(c, "/api/v1/pods?limit=5").await;
    let again = get(
        c,
        &format!("/api/v1/pods?limit=5&continue={}", fresh.cont().unwrap()),
    )
    .await;
    assert_eq!((again.code, again.from.as_str()), (200, "cache"));
}

/// Paging through pods while a writer creates, updates and deletes them: the pages
/// together are exactly the snapshot at the first page's revision (no duplicate, no skip).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pagination_under_concurrent_writes() {
    let s = InProcess::redb(Duration::from_secs(1800)).await;
    seed(&s).await;
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let c = s.client.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut i = 0u32;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                // New pods sort between and around the existing ones.
                let name = format!("p{:02}x{i}", i % 40);
                post(
                    &c,
                    "/api/v1/namespaces/a/pods",
                    pod(&name, "web", "n1", "Running"),
                )
                .await;
                let victim = format!("/api/v1/namespaces/a/pods/p{:02}", (i * 3) % 30);
                let req = http::Request::delete(&victim).body(Vec::new()).unwrap();
                let _ = c.request_text(req).await;
                i += 1;
            }
            i
        })
    };
    let mut checked = 0;
    for round in 0..6 {
        let all = pages(&s.client, "/api/v1/pods?", 3 + round).await;
        let rv = all[0].rv();
        assert!(
            all.iter().all(|p| p.rv() == rv),
            "every page at one revision"
        );
        let names: Vec<String> = all.iter().flat_map(|p| p.names()).collect();
        let unique: BTreeSet<&String> = names.iter().collect();
        assert_eq!(unique.len(), names.len(), "duplicates in {names:?}");
        let snapshot = get(
            &s.client,
            &format!("/api/v1/pods?resourceVersion={rv}&resourceVersionMatch=Exact"),
        )
        .await;
        assert_eq!(snapshot.from, "store");
        assert_eq!(names, snapshot.names(), "pages vs the snapshot at {rv}");
        checked += all.iter().filter(|p| p.from == "cache").count();
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let writes = writer.await.unwrap();
    assert!(writes > 0, "the writer ran");
    assert!(checked > 0, "the cache answered pages");
}

/// On an etcd shared with writers outside skiff's prefix, a consistent LIST (no
/// resourceVersion) after such a write is still answered by the watch cache: the cache asks
/// etcd for a watch progress notification (KEP-2340) to learn it is current at etcd's
/// revision. Without progress notifications the same read falls back to etcd.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consistent_lists_from_cache_on_a_shared_etcd() {
    use skiff_store::Store;
    for progress in [true, false] {
        let Some((etcd, _)) = support::Etcd::start().await else {
            return;
        };
        let mut cfg = skiff_store::EtcdConfig::new([etcd.url.clone()]);
        cfg.key_prefix = "/skiff-test".into();
        // Debian's etcd 3.4.23 predates the releases the default trusts (3.4.31+); the
        // ordering bug fixed there needs a skiff write in flight, which this test has not.
        cfg.watch_progress = Some(progress);
        let store = skiff_store::EtcdStore::connect(cfg).await.unwrap();
        let mut other_cfg = skiff_store::EtcdConfig::new([etcd.url.clone()]);
        other_cfg.key_prefix = "/another-tenant".into();
        let other = skiff_store::EtcdStore::connect(other_cfg).await.unwrap();
        let s = InProcess::start_with(
            tempfile::tempdir().unwrap(),
            Arc::new(store),
            Some(etcd),
            Duration::from_secs(1800),
        )
        .await;
        let first = get(&s.client, "/api/v1/namespaces/default/configmaps").await;
        assert_eq!(first.code, 200, "{}", first.body);
        for i in 0..3 {
            let rev = other.create(&format!("/k{i}"), "x".into()).await.unwrap();
            let t0 = std::time::Instant::now();
            let l = get(&s.client, "/api/v1/namespaces/default/configmaps").await;
            assert_eq!(l.code, 200, "{}", l.body);
            if progress {
                assert_eq!(l.from, "cache", "progress {progress}, round {i}");
                assert!(l.rv().parse::<u64>().unwrap() >= rev);
                // Well below the 3 s a read waits for the cache before asking etcd.
                assert!(t0.elapsed() < Duration::from_secs(2), "{:?}", t0.elapsed());
            } else {
                assert_eq!(l.from, "store", "progress {progress}, round {i}");
            }
        }
    }
}
