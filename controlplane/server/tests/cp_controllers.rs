//! The namespace controller, the pod garbage collector and leader election against real
//! `skiff-controlplane` processes.

mod support;

use std::future::Future;
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Pod};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::Client;
use serde_json::json;

use support::ServerProcess;

const DEADLINE: Duration = Duration::from_secs(60);

async fn eventually<T, F, Fut>(what: &str, servers: &[&ServerProcess], mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + DEADLINE;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        if Instant::now() > deadline {
            let logs: Vec<String> = servers
                .iter()
                .map(|s| {
                    let log = s.log();
                    let tail: Vec<&str> = log.lines().rev().take(40).collect();
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                })
                .collect();
            panic!(
                "{what}: not within {DEADLINE:?}; server logs:\n{}",
                logs.join("\n-----\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn start(args: &[&str]) -> (ServerProcess, Client) {
    let server = ServerProcess::start_with(args);
    let client = support::kube_client(&server.kubeconfig).await;
    support::wait_ready(&client).await;
    (server, client)
}

fn obj<T: serde::de::DeserializeOwned>(v: serde_json::Value) -> T {
    serde_json::from_value(v).expect("a valid object")
}

async fn create_ns(client: &Client, name: &str) {
    let nss: Api<Namespace> = Api::all(client.clone());
    nss.create(
        &PostParams::default(),
        &obj(json!({"metadata": {"name": name}})),
    )
    .await
    .unwrap();
}

/// DELETE marks the namespace Terminating (kubernetes finalizer kept), new content is
/// refused with upstream's 403, a finalizer on content holds the namespace with
/// upstream's conditions, and once it is removed the controller finalizes the namespace.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn namespace_deletion_is_done_by_the_controller() {
    let (server, client) = start(&[]).await;
    create_ns(&client, "ns-gc").await;
    let nss: Api<Namespace> = Api::all(client.clone());
    let created = nss.get("ns-gc").await.unwrap();
    assert_eq!(
        created.spec.as_ref().and_then(|s| s.finalizers.clone()),
        Some(vec!["kubernetes".to_string()])
    );
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "ns-gc");
    cms.create(
        &PostParams::default(),
        &obj(json!({"metadata": {"name": "plain"}})),
    )
    .await
    .unwrap();
    cms.create(
        &PostParams::default(),
        &obj(json!({"metadata": {"name": "held", "finalizers": ["example.com/hold"]}})),
    )
    .await
    .unwrap();
    let pods: Api<Pod> = Api::namespaced(client.clone(), "ns-gc");
    pods.create(
        &PostParams::default(),
        &obj(json!({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "c", "image": "skiff.local/host"}]}})),
    )
    .await
    .unwrap();

    let marked = nss.delete("ns-gc", &DeleteParams::default()).await.unwrap();
    let marked = marked
        .left()
        .expect("the namespace is returned, not deleted");
    assert!(marked.metadata.deletion_timestamp.is_some());
    assert_eq!(
        marked.status.and_then(|s| s.phase).as_deref(),
        Some("Terminating")
    );
    // New content is refused as upstream's NamespaceLifecycle admission does.
    let e = cms
        .create(
            &PostParams::default(),
            &obj(json!({"metadata": {"name": "late"}})),
        )
        .await
        .unwrap_err();
    match e {
        kube::Error::Api(s) => {
            assert_eq!(s.code, 403);
            assert!(
                s.message.contains("unable to create new content in namespace ns-gc because it is being terminated"),
                "{}",
                s.message
            );
        }
        other => panic!("expected 403, got {other:?}"),
    }
    // The controller deletes what it can; the held ConfigMap remains and says so.
    let ns = eventually(
        "conditions naming the held finalizer",
        &[&server],
        || async {
            let ns = nss.get("ns-gc").await.ok()?;
            let conds = ns.status.as_ref()?.conditions.clone()?;
            let fin = conds
                .iter()
                .find(|c| c.type_ == "NamespaceFinalizersRemaining")?;
            (fin.status == "True"
                && pods
                    .list(&ListParams::default())
                    .await
                    .ok()?
                    .items
                    .is_empty()
                && cms.get_opt("plain").await.ok()?.is_none())
            .then_some(ns)
        },
    )
    .await;
    let conds = ns.status.unwrap().conditions.unwrap();
    let by_type = |t: &str| conds.iter().find(|c| c.type_ == t).unwrap().clone();
    assert_eq!(by_type("NamespaceDeletionContentFailure").status, "False");
    assert_eq!(
        by_type("NamespaceDeletionDiscoveryFailure")
            .reason
            .as_deref(),
        Some("ResourcesDiscovered")
    );
    let remaining = by_type("NamespaceContentRemaining");
    assert_eq!(remaining.status, "True");
    assert_eq!(
        remaining.message.as_deref(),
        Some("Some resources are remaining: configmaps. has 1 resource instances")
    );
    assert_eq!(
        by_type("NamespaceFinalizersRemaining").message.as_deref(),
        Some("Some content in the namespace has finalizers remaining: example.com/hold in 1 resource instances")
    );
    // A second DELETE while terminating: upstream's 409.
    match nss.delete("ns-gc", &DeleteParams::default()).await {
        Err(kube::Error::Api(s)) => assert_eq!(s.code, 409, "{}", s.message),
        other => panic!("expected 409, got {other:?}"),
    }
    // Release the held object: the namespace goes.
    cms.patch(
        "held",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"finalizers": null}})),
    )
    .await
    .unwrap();
    eventually("the namespace gone", &[&server], || async {
        nss.get_opt("ns-gc").await.ok()?.is_none().then_some(())
    })
    .await;
    // The namespaces upstream keeps cannot be deleted.
    match nss.delete("default", &DeleteParams::default()).await {
        Err(kube::Error::Api(s)) => assert_eq!(s.code, 403, "{}", s.message),
        other => panic!("expected 403, got {other:?}"),
    }
}

/// Without controllers nothing removes the `kubernetes` finalizer: the namespace stays
/// Terminating with its content (the API server no longer deletes content itself);
/// `/finalize` removing the finalizer deletes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finalize_subresource_without_controllers() {
    let (_server, client) = start(&["--disable-controllers", "--disable-scheduler"]).await;
    create_ns(&client, "ns-fin").await;
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "ns-fin");
    cms.create(
        &PostParams::default(),
        &obj(json!({"metadata": {"name": "c"}})),
    )
    .await
    .unwrap();
    let nss: Api<Namespace> = Api::all(client.clone());
    nss.delete("ns-fin", &DeleteParams::default())
        .await
        .unwrap();
    // An update through the main resource cannot drop spec.finalizers.
    let mut ns = nss.get("ns-fin").await.unwrap();
    ns.spec.as_mut().unwrap().finalizers = Some(vec![]);
    let kept = nss
        .replace("ns-fin", &PostParams::default(), &ns)
        .await
        .unwrap();
    assert_eq!(
        kept.spec.unwrap().finalizers,
        Some(vec!["kubernetes".to_string()])
    );
    assert!(
        cms.get_opt("c").await.unwrap().is_some(),
        "content stays until finalized"
    );
    let mut ns = nss.get("ns-fin").await.unwrap();
    ns.spec.as_mut().unwrap().finalizers = Some(vec![]);
    nss.replace_subresource("finalize", "ns-fin", &PostParams::default(), &ns)
        .await
        .unwrap();
    assert!(nss.get_opt("ns-fin").await.unwrap().is_none());
}

fn pod(name: &str, node: &str) -> Pod {
    obj(json!({
        "metadata": {"name": name},
        "spec": {"nodeName": node, "containers": [{"name": "c", "image": "skiff.local/host"}]},
    }))
}

async fn set_phase(pods: &Api<Pod>, name: &str, phase: &str) {
    pods.patch_status(
        name,
        &PatchParams::default(),
        &Patch::Merge(json!({"status": {"phase": phase}})),
    )
    .await
    .unwrap();
}

/// Terminated pods over the threshold go oldest first; pods of a deleted node go after
/// the quarantine, marked Failed with DisruptionTarget first; terminating pods on an
/// out-of-service NotReady node are force-deleted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pod_gc() {
    let (server, client) = start(&[
        "--disable-scheduler",
        "--terminated-pod-gc-threshold",
        "2",
        "--pod-gc-period",
        "200ms",
        "--pod-gc-orphan-quarantine",
        "1s",
    ])
    .await;
    let nodes: Api<k8s_openapi::api::core::v1::Node> = Api::all(client.clone());
    for (n, taint) in [("gc-live", false), ("gc-oos", true)] {
        let mut v = json!({"metadata": {"name": n}});
        if taint {
            v["spec"] = json!({"taints": [{"key": "node.kubernetes.io/out-of-service", "value": "nodeshutdown", "effect": "NoExecute"}]});
        }
        nodes.create(&PostParams::default(), &obj(v)).await.unwrap();
    }
    // gc-oos is NotReady.
    nodes
        .patch_status(
            "gc-oos",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"conditions": [{"type": "Ready", "status": "False", "reason": "KubeletNotReady"}]}})),
        )
        .await
        .unwrap();
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    // Four finished pods, created in order; the two oldest must go.
    for i in 0..4 {
        pods.create(
            &PostParams::default(),
            &pod(&format!("done-{i}"), "gc-live"),
        )
        .await
        .unwrap();
        set_phase(
            &pods,
            &format!("done-{i}"),
            if i % 2 == 0 { "Succeeded" } else { "Failed" },
        )
        .await;
        // creationTimestamp has one-second resolution: keep the order unambiguous.
        tokio::time::sleep(Duration::from_millis(1100)).await;
    }
    pods.create(&PostParams::default(), &pod("running", "gc-live"))
        .await
        .unwrap();
    pods.create(&PostParams::default(), &pod("orphan", "gc-gone"))
        .await
        .unwrap();
    pods.create(&PostParams::default(), &pod("stuck", "gc-oos"))
        .await
        .unwrap();
    // A graceful delete leaves it terminating (no kubelet finishes it).
    pods.delete("stuck", &DeleteParams::default())
        .await
        .unwrap();
    assert!(pods.get_opt("stuck").await.unwrap().is_some());

    eventually("pod GC done", &[&server], || async {
        let names: Vec<String> = pods
            .list(&ListParams::default())
            .await
            .ok()?
            .items
            .into_iter()
            .map(|p| p.metadata.name.unwrap_or_default())
            .collect();
        let want = ["done-2", "done-3", "running"];
        (names.len() == want.len() && want.iter().all(|w| names.iter().any(|n| n == w)))
            .then_some(())
    })
    .await;
    assert!(
        server
            .log()
            .contains("pod GC: deleted pod default/orphan (Orphaned)"),
        "{}",
        server.log()
    );
    assert!(server
        .log()
        .contains("pod GC: deleted pod default/stuck (OutOfService)"));
}

fn lease_holder(l: &Lease) -> String {
    l.spec
        .as_ref()
        .and_then(|s| s.holder_identity.clone())
        .unwrap_or_default()
}

/// Two servers on one etcd: one holds each Lease, the other waits; kill the holder and the
/// other takes over within lease duration + retry (15 s + 2 s) and its controllers act.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_election_on_one_etcd() {
    let Some((etcd, _store)) = support::Etcd::start().await else {
        return;
    };
    let args = ["--store", "etcd", "--etcd-endpoints", etcd.url.as_str()];
    let (a, client_a) = start(&args).await;
    let (b, client_b) = start(&args).await;
    let leases: Api<Lease> = Api::namespaced(client_b.clone(), "kube-system");
    let became = |s: &ServerProcess, lease: &str| {
        s.log()
            .lines()
            .any(|l| l.contains(&format!("kube-system/{lease}:")) && l.contains("became leader"))
    };
    for lease in ["kube-controller-manager", "kube-scheduler"] {
        let holder = eventually("a holder", &[&a, &b], || async {
            let l = leases.get_opt(lease).await.ok()??;
            let h = lease_holder(&l);
            (!h.is_empty() && (became(&a, lease) || became(&b, lease))).then_some(h)
        })
        .await;
        // Exactly one of the two leads, the other waits for it.
        assert!(
            became(&a, lease) != became(&b, lease),
            "{lease}: both or neither lead"
        );
        let l = leases.get(lease).await.unwrap();
        let spec = l.spec.unwrap();
        assert_eq!(spec.lease_duration_seconds, Some(15));
        assert!(holder.contains('_'), "{holder}");
    }
    // Kill the controller-manager leader.
    let a_leads = became(&a, "kube-controller-manager");
    let before = lease_holder(&leases.get("kube-controller-manager").await.unwrap());
    let (survivor, client) = if a_leads {
        drop(a);
        (b, client_b)
    } else {
        drop(b);
        (a, client_a)
    };
    let t = Instant::now();
    let leases: Api<Lease> = Api::namespaced(client.clone(), "kube-system");
    let after = eventually("failover", &[&survivor], || async {
        let l = leases.get_opt("kube-controller-manager").await.ok()??;
        let h = lease_holder(&l);
        (h != before && became(&survivor, "kube-controller-manager")).then_some(l)
    })
    .await;
    let took = t.elapsed();
    assert!(took < Duration::from_secs(30), "failover took {took:?}");
    assert_eq!(after.spec.unwrap().lease_transitions, Some(1));
    // The new leader's controllers work: a Terminating namespace is finalized.
    create_ns(&client, "after-failover").await;
    let nss: Api<Namespace> = Api::all(client.clone());
    nss.delete("after-failover", &DeleteParams::default())
        .await
        .unwrap();
    eventually(
        "namespace finalized by the new leader",
        &[&survivor],
        || async {
            nss.get_opt("after-failover")
                .await
                .ok()?
                .is_none()
                .then_some(())
        },
    )
    .await;
    drop(etcd);
}
