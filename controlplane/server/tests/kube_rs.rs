//! kube-rs (the node agent's client) against an in-process API server on 127.0.0.1, with a
//! handle on the store so tests can compact it.

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Service};
use kube::api::{
    Api, DeleteParams, ListParams, Patch, PatchParams, PostParams, WatchEvent, WatchParams,
};
use kube::runtime::watcher;
use serde_json::json;
use skiff_store::Store;

use support::InProcess;

async fn start() -> InProcess {
    InProcess::redb(Duration::from_secs(1800)).await
}

async fn start_with(
    dir: tempfile::TempDir,
    store: Arc<dyn Store>,
    etcd: Option<support::Etcd>,
) -> InProcess {
    InProcess::start_with(dir, store, etcd, Duration::from_secs(1800)).await
}

/// The same API over the etcd backend: CRUD, list, watch and 410 after compaction.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_backend_serves_the_api() {
    let Some((etcd, store)) = support::Etcd::start().await else {
        return;
    };
    let s = start_with(tempfile::tempdir().unwrap(), Arc::new(store), Some(etcd)).await;
    let cms: Api<ConfigMap> = Api::namespaced(s.client.clone(), "default");
    let rv = cms
        .list(&ListParams::default())
        .await
        .unwrap()
        .metadata
        .resource_version
        .unwrap();
    let mut w = cms
        .watch(&WatchParams::default(), &rv)
        .await
        .unwrap()
        .boxed();
    let c = cms
        .create(&PostParams::default(), &cm("e", json!({"x": "1"})))
        .await
        .unwrap();
    match next_event(&mut w, "ADDED e").await {
        WatchEvent::Added(got) => {
            assert_eq!(got.metadata.resource_version, c.metadata.resource_version)
        }
        other => panic!("expected ADDED, got {other:?}"),
    }
    let e = api_err(
        cms.create(&PostParams::default(), &cm("e", json!({})))
            .await
            .unwrap_err(),
    );
    assert_eq!(e.code, 409);
    let mut stale = c.clone();
    cms.patch(
        "e",
        &PatchParams::default(),
        &Patch::Merge(json!({"data": {"y": "2"}})),
    )
    .await
    .unwrap();
    stale.data = Some([("z".to_string(), "3".to_string())].into());
    let e = api_err(
        cms.replace("e", &PostParams::default(), &stale)
            .await
            .unwrap_err(),
    );
    assert_eq!((e.code, e.reason.as_str()), (409, "Conflict"));
    assert_eq!(
        cms.list(&ListParams::default()).await.unwrap().items.len(),
        1
    );
    let cur = s.store.current_revision().await.unwrap();
    s.store.compact(cur).await.unwrap();
    let mut old = cms
        .watch(&WatchParams::default(), &rv)
        .await
        .unwrap()
        .boxed();
    match next_event(&mut old, "ERROR 410").await {
        WatchEvent::Error(e) => assert_eq!(e.code, 410),
        other => panic!("expected ERROR 410, got {other:?}"),
    }
    cms.delete("e", &DeleteParams::default()).await.unwrap();
    assert!(cms.get_opt("e").await.unwrap().is_none());
}

fn api_err(e: kube::Error) -> Box<kube::core::Status> {
    match e {
        kube::Error::Api(s) => s,
        other => panic!("expected an API error Status, got {other:?}"),
    }
}

fn cm(name: &str, labels: serde_json::Value) -> ConfigMap {
    serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": name, "labels": labels},
        "data": {"k": "v"},
    }))
    .unwrap()
}

fn deployment(name: &str) -> Deployment {
    serde_json::from_value(json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {"containers": [
                    {"name": "a", "image": "busybox"},
                    {"name": "b", "image": "busybox"},
                ]},
            },
        },
    }))
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typed_crud_conflicts_and_errors() {
    let s = start().await;
    let cms: Api<ConfigMap> = Api::namespaced(s.client.clone(), "default");

    let created = cms
        .create(&PostParams::default(), &cm("a", json!({"x": "1"})))
        .await
        .unwrap();
    let meta = &created.metadata;
    assert!(
        meta.uid.as_deref().is_some_and(|u| u.len() == 36),
        "{meta:?}"
    );
    assert!(meta.creation_timestamp.is_some());
    let rv1 = meta.resource_version.clone().unwrap();
    assert_eq!(
        cms.get("a")
            .await
            .unwrap()
            .metadata
            .resource_version
            .unwrap(),
        rv1
    );

    // AlreadyExists.
    let e = api_err(
        cms.create(&PostParams::default(), &cm("a", json!({})))
            .await
            .unwrap_err(),
    );
    assert_eq!((e.code, e.reason.as_str()), (409, "AlreadyExists"), "{e:?}");

    // Update with the current version, then a stale one: 409 Conflict.
    let mut upd = created.clone();
    upd.data = Some([("k".to_string(), "v2".to_string())].into());
    let updated = cms
        .replace("a", &PostParams::default(), &upd)
        .await
        .unwrap();
    assert_ne!(
        updated.metadata.resource_version.as_deref(),
        Some(rv1.as_str())
    );
    let e = api_err(
        cms.replace("a", &PostParams::default(), &upd)
            .await
            .unwrap_err(),
    );
    assert_eq!((e.code, e.reason.as_str()), (409, "Conflict"), "{e:?}");
    assert!(
        e.message.contains("the object has been modified; please apply your changes to the latest version and try again"),
        "{}",
        e.message
    );

    // Not found, invalid (nothing stored), dry run (nothing stored).
    let e = api_err(cms.get("missing").await.unwrap_err());
    assert_eq!((e.code, e.reason.as_str()), (404, "NotFound"));
    let e = api_err(
        cms.create(&PostParams::default(), &cm("Bad_Name", json!({})))
            .await
            .unwrap_err(),
    );
    assert_eq!((e.code, e.reason.as_str()), (422, "Invalid"), "{e:?}");
    assert!(
        e.message
            .contains("metadata.name: Invalid value: \"Bad_Name\""),
        "{}",
        e.message
    );
    let dry = PostParams {
        dry_run: true,
        ..Default::default()
    };
    cms.create(&dry, &cm("dry", json!({}))).await.unwrap();
    assert!(cms.get_opt("dry").await.unwrap().is_none());

    // generateName.
    let mut g = cm("", json!({}));
    g.metadata.name = None;
    g.metadata.generate_name = Some("gen-".into());
    let g = cms.create(&PostParams::default(), &g).await.unwrap();
    let gname = g.metadata.name.unwrap();
    assert!(gname.starts_with("gen-") && gname.len() == 9, "{gname}");

    // Every patch type.
    let pp = PatchParams::default();
    let p = cms
        .patch("a", &pp, &Patch::Merge(json!({"data": {"m": "1"}})))
        .await
        .unwrap();
    assert_eq!(p.data.as_ref().unwrap()["m"], "1");
    let jp: json_patch_kube::Patch =
        serde_json::from_value(json!([{"op": "add", "path": "/data/j", "value": "2"}])).unwrap();
    let p = cms.patch("a", &pp, &Patch::Json::<()>(jp)).await.unwrap();
    assert_eq!(p.data.as_ref().unwrap()["j"], "2");
    let p = cms
        .patch(
            "a",
            &pp,
            &Patch::Strategic(json!({"metadata": {"labels": {"s": "3"}}})),
        )
        .await
        .unwrap();
    assert_eq!(p.metadata.labels.as_ref().unwrap()["s"], "3");
    // Applying a field another manager set with an Update conflicts, like upstream...
    let apply = PatchParams::apply("tester");
    let cfg = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "a"}, "data": {"k": "applied"}});
    let e = api_err(
        cms.patch("a", &apply, &Patch::Apply(&cfg))
            .await
            .unwrap_err(),
    );
    assert_eq!((e.code, e.reason.as_str()), (409, "Conflict"), "{e:?}");
    assert!(e.message.contains(".data.k"), "{}", e.message);
    // ...unless forced.
    let p = cms
        .patch("a", &apply.clone().force(), &Patch::Apply(&cfg))
        .await
        .unwrap();
    assert_eq!(p.data.as_ref().unwrap()["k"], "applied");
    let managers: Vec<String> = p
        .metadata
        .managed_fields
        .unwrap()
        .into_iter()
        .filter_map(|m| m.manager)
        .collect();
    assert!(managers.contains(&"tester".to_string()), "{managers:?}");
    // Another manager applying a different value conflicts without force...
    let other = PatchParams::apply("other");
    let body = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "a"}, "data": {"k": "mine"}});
    let e = api_err(
        cms.patch("a", &other, &Patch::Apply(&body))
            .await
            .unwrap_err(),
    );
    assert_eq!(e.code, 409, "{e:?}");
    // ...and takes the field over with it.
    let p = cms
        .patch("a", &other.force(), &Patch::Apply(&body))
        .await
        .unwrap();
    assert_eq!(p.data.as_ref().unwrap()["k"], "mine");
    // Apply creates.
    let p = cms
        .patch(
            "applied",
            &PatchParams::apply("tester"),
            &Patch::Apply(
                json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "applied"}}),
            ),
        )
        .await
        .unwrap();
    assert!(p.metadata.uid.is_some());

    // Pagination.
    for i in 0..5 {
        cms.create(
            &PostParams::default(),
            &cm(&format!("p{i}"), json!({"page": "yes"})),
        )
        .await
        .unwrap();
    }
    let lp = ListParams::default().labels("page=yes").limit(2);
    let first = cms.list(&lp).await.unwrap();
    assert_eq!(first.items.len(), 2);
    let mut names: Vec<String> = first
        .items
        .iter()
        .map(|c| c.metadata.name.clone().unwrap())
        .collect();
    let mut token = first.metadata.continue_;
    while let Some(t) = token.filter(|t| !t.is_empty()) {
        let page = cms.list(&lp.clone().continue_token(&t)).await.unwrap();
        names.extend(page.items.iter().map(|c| c.metadata.name.clone().unwrap()));
        token = page.metadata.continue_;
    }
    assert_eq!(names, ["p0", "p1", "p2", "p3", "p4"]);
    let unfiltered = cms.list(&ListParams::default().limit(1)).await.unwrap();
    assert!(unfiltered.metadata.remaining_item_count.unwrap() >= 7);

    // A rejected write changes nothing (same resourceVersion, same content).
    let before = cms.get("a").await.unwrap();
    let e = api_err(
        cms.patch(
            "a",
            &pp,
            &Patch::Merge(
                json!({"metadata": {"labels": {"bad": "not valid!"}}, "data": {"new": "x"}}),
            ),
        )
        .await
        .unwrap_err(),
    );
    assert_eq!(e.code, 422, "{e:?}");
    let after = cms.get("a").await.unwrap();
    assert_eq!(
        after.metadata.resource_version,
        before.metadata.resource_version
    );
    assert_eq!(after.data, before.data);

    // Finalizers: delete marks, removing the last finalizer deletes.
    let mut f = cm("fin", json!({}));
    f.metadata.finalizers = Some(vec!["skiff.test/hold".into()]);
    cms.create(&PostParams::default(), &f).await.unwrap();
    cms.delete("fin", &DeleteParams::background())
        .await
        .unwrap();
    let marked = cms.get("fin").await.unwrap();
    assert!(marked.metadata.deletion_timestamp.is_some());
    cms.patch(
        "fin",
        &pp,
        &Patch::Merge(json!({"metadata": {"finalizers": null}})),
    )
    .await
    .unwrap();
    assert!(cms.get_opt("fin").await.unwrap().is_none());
    cms.delete("a", &DeleteParams::default()).await.unwrap();
    let e = api_err(cms.delete("a", &DeleteParams::default()).await.unwrap_err());
    assert_eq!(e.code, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn services_deployments_subresources_and_raw_errors() {
    let s = start().await;
    let svcs: Api<Service> = Api::namespaced(s.client.clone(), "default");
    let svc: Service = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Service", "metadata": {"name": "web"},
        "spec": {"type": "NodePort", "selector": {"app": "web"}, "ports": [{"port": 80}]},
    }))
    .unwrap();
    let svc = svcs.create(&PostParams::default(), &svc).await.unwrap();
    let spec = svc.spec.unwrap();
    let ip = spec.cluster_ip.unwrap();
    assert!(ip.starts_with("10.43."), "{ip}");
    let np = spec.ports.unwrap()[0].node_port.unwrap();
    assert!((30000..=32767).contains(&np), "{np}");

    let deps: Api<Deployment> = Api::namespaced(s.client.clone(), "default");
    deps.create(&PostParams::default(), &deployment("web"))
        .await
        .unwrap();
    // Strategic merge: containers merge by name (b keeps its image, a changes).
    let d = deps
        .patch(
            "web",
            &PatchParams::default(),
            &Patch::Strategic(json!({"spec": {"template": {"spec": {"containers": [{"name": "a", "image": "nginx"}]}}}})),
        )
        .await
        .unwrap();
    let cs = d
        .spec
        .as_ref()
        .unwrap()
        .template
        .spec
        .as_ref()
        .unwrap()
        .containers
        .clone();
    assert_eq!(cs.len(), 2);
    assert_eq!(cs[0].image.as_deref(), Some("nginx"));
    assert_eq!(cs[1].image.as_deref(), Some("busybox"));
    assert_eq!(d.metadata.generation, Some(2));

    // The main endpoint ignores status; /status writes only status.
    let d = deps
        .patch(
            "web",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"replicas": 7}})),
        )
        .await
        .unwrap();
    assert_eq!(d.status.and_then(|s| s.replicas), None);
    let d = deps
        .patch_status(
            "web",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"replicas": 9}, "status": {"replicas": 1}})),
        )
        .await
        .unwrap();
    assert_eq!(d.status.unwrap().replicas, Some(1));
    assert_eq!(d.spec.unwrap().replicas, Some(1));

    // /scale.
    let sc = deps.get_scale("web").await.unwrap();
    assert_eq!(sc.spec.unwrap().replicas, Some(1));
    assert_eq!(sc.status.unwrap().selector.as_deref(), Some("app=web"));
    deps.patch_scale(
        "web",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"replicas": 4}})),
    )
    .await
    .unwrap();
    assert_eq!(
        deps.get("web").await.unwrap().spec.unwrap().replicas,
        Some(4)
    );

    // Raw requests: body too large, malformed, unknown resource, strict field validation.
    let raw = |method: &str, path: &str, ct: &str, body: Vec<u8>| {
        http::Request::builder()
            .method(method)
            .uri(path)
            .header("Content-Type", ct)
            .body(body)
            .unwrap()
    };
    let big = vec![b' '; skiff_apiserver::MAX_BODY_BYTES + 1];
    let e = api_err(
        s.client
            .request_text(raw(
                "POST",
                "/api/v1/namespaces/default/configmaps",
                "application/json",
                big,
            ))
            .await
            .unwrap_err(),
    );
    assert_eq!(e.code, 413, "{e:?}");
    let e = api_err(
        s.client
            .request_text(raw(
                "POST",
                "/api/v1/namespaces/default/configmaps",
                "application/json",
                b"{not json".to_vec(),
            ))
            .await
            .unwrap_err(),
    );
    assert_eq!(e.code, 400, "{e:?}");
    let e = api_err(
        s.client
            .request_text(raw(
                "GET",
                "/api/v1/namespaces/default/widgets",
                "application/json",
                vec![],
            ))
            .await
            .unwrap_err(),
    );
    assert_eq!(e.code, 404, "{e:?}");
    let body = serde_json::to_vec(
        &json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "u"}, "bogus": 1}),
    )
    .unwrap();
    let e = api_err(
        s.client
            .request_text(raw(
                "POST",
                "/api/v1/namespaces/default/configmaps?fieldValidation=Strict",
                "application/json",
                body.clone(),
            ))
            .await
            .unwrap_err(),
    );
    assert_eq!(e.code, 400, "{e:?}");
    assert!(e.message.contains("bogus"), "{}", e.message);
    // Warn creates it and says why in a Warning header (kube logs it; the create succeeds).
    s.client
        .request_text(raw(
            "POST",
            "/api/v1/namespaces/default/configmaps?fieldValidation=Warn",
            "application/json",
            body,
        ))
        .await
        .unwrap();

    // OpenAPI: v3 index and group documents, v2 as JSON.
    let v3: serde_json::Value = serde_json::from_str(
        &s.client
            .request_text(raw("GET", "/openapi/v3", "", vec![]))
            .await
            .unwrap(),
    )
    .unwrap();
    let url = v3["paths"]["apis/apps/v1"]["serverRelativeURL"]
        .as_str()
        .unwrap()
        .to_string();
    let apps: serde_json::Value = serde_json::from_str(
        &s.client
            .request_text(raw("GET", &url, "", vec![]))
            .await
            .unwrap(),
    )
    .unwrap();
    assert!(apps["components"]["schemas"]["io.k8s.api.apps.v1.Deployment"].is_object());
    let v2: serde_json::Value = serde_json::from_str(
        &s.client
            .request_text(raw("GET", "/openapi/v2", "", vec![]))
            .await
            .unwrap(),
    )
    .unwrap();
    assert_eq!(v2["swagger"], "2.0");
    assert!(v2["definitions"]["io.k8s.api.core.v1.Service"].is_object());

    // Anonymous: 401.
    let mut cfg = kube::Config::new(support_url(&s));
    cfg.accept_invalid_certs = true;
    let anon = kube::Client::try_from(cfg).unwrap();
    let e = api_err(
        Api::<ConfigMap>::namespaced(anon, "default")
            .list(&ListParams::default())
            .await
            .unwrap_err(),
    );
    assert_eq!((e.code, e.reason.as_str()), (401, "Unauthorized"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bearer_token_authenticates() {
    let s = start().await;
    let token = s.server.as_ref().unwrap().credentials.admin_token.clone();
    let ca = s.server.as_ref().unwrap().credentials.ca_pem.clone();
    let mut cfg = kube::Config::new(support_url(&s));
    cfg.root_cert = Some(vec![rustls_pemfile_der(&ca)]);
    cfg.auth_info.token = Some(token.into());
    let client = kube::Client::try_from(cfg.clone()).unwrap();
    let cms: Api<ConfigMap> = Api::namespaced(client, "default");
    cms.create(&PostParams::default(), &cm("t", json!({})))
        .await
        .unwrap();
    cfg.auth_info.token = Some("not-the-token".to_string().into());
    let bad: Api<ConfigMap> = Api::namespaced(kube::Client::try_from(cfg).unwrap(), "default");
    let e = api_err(bad.get("t").await.unwrap_err());
    assert_eq!(e.code, 401);
}

/// The DER of the first PEM block (the CA certificate), for kube::Config::root_cert.
fn rustls_pemfile_der(pem: &str) -> Vec<u8> {
    use base64::Engine;
    let b64: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    base64::engine::general_purpose::STANDARD
        .decode(b64)
        .unwrap()
}

/// A watcher that stops reading must not hold up writers or other watchers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_watcher_blocks_nobody() {
    let s = start().await;
    let cms: Api<ConfigMap> = Api::namespaced(s.client.clone(), "default");
    let rv = cms
        .list(&ListParams::default())
        .await
        .unwrap()
        .metadata
        .resource_version
        .unwrap();
    // Never polled after the request: its TCP window and server-side buffers fill up.
    let stalled = cms
        .watch(&WatchParams::default(), &rv)
        .await
        .unwrap()
        .boxed();
    let mut live = cms
        .watch(&WatchParams::default(), &rv)
        .await
        .unwrap()
        .boxed();
    // Enough data to overflow socket buffers and the per-watch channel many times.
    let payload = "x".repeat(32 * 1024);
    const N: usize = 200;
    let writer = {
        let cms = cms.clone();
        tokio::spawn(async move {
            for i in 0..N {
                let mut c = cm(&format!("big{i}"), json!({}));
                c.data = Some([("blob".to_string(), payload.clone())].into());
                cms.create(&PostParams::default(), &c).await.unwrap();
            }
        })
    };
    let mut i = 0;
    while i < N {
        match next_event(&mut live, "the live watcher's events").await {
            WatchEvent::Added(c) => assert_eq!(c.metadata.name.unwrap(), format!("big{i}")),
            // A periodic bookmark (every 10 s) when the writes take that long on a busy
            // machine.
            WatchEvent::Bookmark(_) => continue,
            other => panic!("unexpected {other:?}"),
        }
        i += 1;
    }
    tokio::time::timeout(Duration::from_secs(60), writer)
        .await
        .expect("writers were blocked")
        .unwrap();
    drop(stalled);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pod_binding_delete_collection_and_bookmarks() {
    let s = start().await;
    let pods: Api<Pod> = Api::namespaced(s.client.clone(), "default");
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": "p", "labels": {"group": "g"}},
        "spec": {"containers": [{"name": "c", "image": "busybox"}]},
    }))
    .unwrap();
    let created = pods.create(&PostParams::default(), &pod).await.unwrap();
    assert_eq!(created.status.unwrap().phase.as_deref(), Some("Pending"));
    // A Binding for another pod of the same name (its uid precondition) changes nothing.
    let stale = json!({"apiVersion": "v1", "kind": "Binding", "metadata": {"name": "p", "uid": "not-this-pod"}, "target": {"kind": "Node", "name": "node-2"}});
    let e = api_err(
        pods.create_subresource::<_, serde_json::Value>(
            "binding",
            "p",
            &PostParams::default(),
            &stale,
        )
        .await
        .unwrap_err(),
    );
    assert_eq!(e.code, 409, "{e:?}");
    assert!(e.message.contains("Precondition failed"), "{e:?}");
    assert!(pods
        .get("p")
        .await
        .unwrap()
        .spec
        .unwrap()
        .node_name
        .is_none());
    let uid = created.metadata.uid.clone().unwrap();
    let binding = json!({"apiVersion": "v1", "kind": "Binding", "metadata": {"name": "p", "uid": uid}, "target": {"kind": "Node", "name": "node-1"}});
    let _: serde_json::Value = pods
        .create_subresource("binding", "p", &PostParams::default(), &binding)
        .await
        .unwrap();
    let bound = pods.get("p").await.unwrap();
    assert_eq!(bound.spec.unwrap().node_name.as_deref(), Some("node-1"));
    // The binding records PodScheduled=True, as upstream's.
    assert!(bound
        .status
        .unwrap()
        .conditions
        .unwrap_or_default()
        .iter()
        .any(|c| c.type_ == "PodScheduled" && c.status == "True"));
    // A pod is bound once.
    let e = api_err(
        pods.create_subresource::<_, serde_json::Value>(
            "binding",
            "p",
            &PostParams::default(),
            &binding,
        )
        .await
        .unwrap_err(),
    );
    assert_eq!(e.code, 409, "{e:?}");

    // A bound pod is deleted gracefully: marked, then gone once deleted with grace 0
    // (what the node agent does after stopping it).
    let pending = pods.delete("p", &DeleteParams::default()).await.unwrap();
    let pending = pending.left().expect("a pod being deleted is returned");
    assert_eq!(pending.metadata.deletion_grace_period_seconds, Some(30));
    assert!(pods
        .get("p")
        .await
        .unwrap()
        .metadata
        .deletion_timestamp
        .is_some());
    // Its kubelet's status writes during the grace period leave it in place (only the
    // final delete with grace 0 removes it).
    pods.patch_status(
        "p",
        &PatchParams::default(),
        &Patch::Merge(json!({"status": {"phase": "Running"}})),
    )
    .await
    .unwrap();
    assert!(
        pods.get_opt("p").await.unwrap().is_some(),
        "a status write during graceful deletion deleted the pod"
    );
    pods.delete(
        "p",
        &DeleteParams {
            grace_period_seconds: Some(0),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert!(pods.get_opt("p").await.unwrap().is_none());

    // Bookmarks carry the latest version even when nothing matches the selector; one
    // comes just before the watch times out.
    let rv = pods
        .list(&ListParams::default())
        .await
        .unwrap()
        .metadata
        .resource_version
        .unwrap();
    let mut w = pods
        .watch(&WatchParams::default().labels("group=none").timeout(2), &rv)
        .await
        .unwrap()
        .boxed();
    let mut q = pod.clone();
    q.metadata.name = Some("q".into());
    let q = pods.create(&PostParams::default(), &q).await.unwrap();
    match next_event(&mut w, "a BOOKMARK").await {
        WatchEvent::Bookmark(b) => assert_eq!(
            Some(b.metadata.resource_version),
            q.metadata.resource_version
        ),
        other => panic!("expected a BOOKMARK, got {other:?}"),
    }

    // DELETE on the collection honours the selector.
    let mut other = pod.clone();
    other.metadata.name = Some("other".into());
    other.metadata.labels = None;
    pods.create(&PostParams::default(), &other).await.unwrap();
    pods.delete_collection(
        &DeleteParams::default(),
        &ListParams::default().labels("group=g"),
    )
    .await
    .unwrap();
    let left: Vec<String> = pods
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .map(|p| p.metadata.name.unwrap())
        .collect();
    assert_eq!(left, ["other"]);
}

fn support_url(s: &InProcess) -> http::Uri {
    format!("https://{}", s.server.as_ref().unwrap().addr)
        .parse()
        .unwrap()
}

async fn next_event<S, K>(stream: &mut S, what: &str) -> WatchEvent<K>
where
    S: futures::Stream<Item = kube::Result<WatchEvent<K>>> + Unpin,
{
    tokio::time::timeout(Duration::from_secs(20), stream.next())
        .await
        .unwrap_or_else(|_| panic!("no watch event while waiting for {what}"))
        .unwrap_or_else(|| panic!("watch ended while waiting for {what}"))
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_selectors_and_expired_versions() {
    let s = start().await;
    let cms: Api<ConfigMap> = Api::namespaced(s.client.clone(), "default");
    let list = cms.list(&ListParams::default()).await.unwrap();
    let rv = list.metadata.resource_version.unwrap();
    let mut w = cms
        .watch(&WatchParams::default().labels("app=web").timeout(60), &rv)
        .await
        .unwrap()
        .boxed();
    cms.create(&PostParams::default(), &cm("other", json!({"app": "db"})))
        .await
        .unwrap();
    cms.create(&PostParams::default(), &cm("w", json!({"app": "web"})))
        .await
        .unwrap();
    match next_event(&mut w, "ADDED w").await {
        WatchEvent::Added(c) => assert_eq!(c.metadata.name.as_deref(), Some("w")),
        other => panic!("expected ADDED w, got {other:?}"),
    }
    // Stops matching: DELETED, as upstream.
    cms.patch(
        "w",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"labels": {"app": "x"}}})),
    )
    .await
    .unwrap();
    match next_event(&mut w, "DELETED w").await {
        WatchEvent::Deleted(c) => assert_eq!(c.metadata.labels.unwrap()["app"], "x"),
        other => panic!("expected DELETED w, got {other:?}"),
    }

    // A watch from a compacted version: ERROR 410 Expired.
    let cur = s.store.current_revision().await.unwrap();
    s.store.compact(cur).await.unwrap();
    let mut old = cms
        .watch(&WatchParams::default(), &rv)
        .await
        .unwrap()
        .boxed();
    match next_event(&mut old, "ERROR 410").await {
        WatchEvent::Error(e) => assert_eq!((e.code, e.reason.as_str()), (410, "Expired"), "{e:?}"),
        other => panic!("expected ERROR 410, got {other:?}"),
    }

    // sendInitialEvents: current state, then the initial-events-end bookmark.
    let wp = WatchParams::streaming_lists();
    let mut sl = cms.watch(&wp, "").await.unwrap().boxed();
    let mut added = 0;
    loop {
        match next_event(&mut sl, "initial events").await {
            WatchEvent::Added(_) => added += 1,
            WatchEvent::Bookmark(b) => {
                assert_eq!(
                    b.metadata
                        .annotations
                        .get("k8s.io/initial-events-end")
                        .map(String::as_str),
                    Some("true")
                );
                break;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(added, 2);
}

/// kube-rs's `watcher` (what the node agent runs) re-lists after a 410 caused by
/// compaction and keeps delivering.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runtime_watcher_relists_across_compaction() {
    let s = start().await;
    let cms: Api<ConfigMap> = Api::namespaced(s.client.clone(), "default");
    cms.create(&PostParams::default(), &cm("m0", json!({"app": "watched"})))
        .await
        .unwrap();
    // The watcher lists, then watches from the list's version (the watch request goes out
    // on the next poll, and again every second: the server-side timeout is 1 s). With a
    // selector nothing moves that version forward, so once the store is compacted past it
    // the (re-)watch is too old (410) and the watcher must re-list. Bookmarks are off: the
    // server's bookmarks would move the watcher to the newest version and avoid the 410.
    let cfg = watcher::Config::default()
        .labels("app=watched")
        .timeout(1)
        .disable_bookmarks();
    let mut stream = watcher(cms.clone(), cfg).boxed();
    let deadline = Instant::now() + Duration::from_secs(60);
    // Watcher errors are items of the stream (the watcher recovers on the next poll), so
    // this yields Results.
    macro_rules! next {
        () => {
            tokio::time::timeout(
                deadline.saturating_duration_since(Instant::now()),
                stream.next(),
            )
            .await
            .expect("watcher made no progress before the deadline")
            .expect("watcher ended")
        };
    }
    // First list.
    let mut inits = 0;
    loop {
        match next!().expect("watcher error before compaction") {
            watcher::Event::Init => inits += 1,
            watcher::Event::InitDone => break,
            _ => {}
        }
    }
    assert_eq!(inits, 1);
    // Move the store past the watcher's version and compact it away.
    for i in 0..3 {
        cms.create(
            &PostParams::default(),
            &cm(&format!("noise{i}"), json!({"app": "other"})),
        )
        .await
        .unwrap();
    }
    let cur = s.store.current_revision().await.unwrap();
    s.store.compact(cur).await.unwrap();
    // The next re-watch gets 410 Expired (surfaced as an error item); the watcher then
    // re-lists (a second Init).
    let mut saw_expired = false;
    loop {
        match next!() {
            Err(watcher::Error::WatchError(e)) if e.code == 410 => saw_expired = true,
            Err(e) => panic!("unexpected watcher error {e:?}"),
            Ok(watcher::Event::Init) => break,
            Ok(_) => {}
        }
    }
    assert!(saw_expired, "the watcher re-listed without a 410");
    cms.create(&PostParams::default(), &cm("m1", json!({"app": "watched"})))
        .await
        .unwrap();
    loop {
        match next!().expect("watcher error after re-list") {
            watcher::Event::Apply(c) | watcher::Event::InitApply(c)
                if c.metadata.name.as_deref() == Some("m1") =>
            {
                break
            }
            _ => {}
        }
    }
}
