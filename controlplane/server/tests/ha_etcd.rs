//! Two `skiff-controlplane` processes on one etcd serve one cluster (HA): a write on one
//! is seen by a watch on the other, and Services created on both at once never share a
//! ClusterIP or node port (the reservations are etcd keys only one create can win).

mod support;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use futures::{StreamExt as _, TryStreamExt as _};
use k8s_openapi::api::core::v1::{ConfigMap, Service};
use kube::{
    api::{PostParams, WatchEvent, WatchParams},
    Api,
};
use serde_json::json;
use support::{Etcd, ServerProcess};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_servers_on_one_etcd_are_one_cluster() {
    let Some((etcd, _store)) = Etcd::start().await else {
        return;
    };
    let flags = [
        "--store",
        "etcd",
        "--etcd-endpoints",
        etcd.url.as_str(),
        "--disable-controllers",
        "--service-cidr",
        "10.43.0.0/26",
    ];
    let a = ServerProcess::start_with(&flags);
    let b = ServerProcess::start_with(&flags);
    let ca = support::kube_client(&a.kubeconfig).await;
    let cb = support::kube_client(&b.kubeconfig).await;
    support::wait_ready(&ca).await;
    support::wait_ready(&cb).await;

    // A watch on B sees a write on A.
    let cms_b: Api<ConfigMap> = Api::namespaced(cb.clone(), "default");
    let rv = cms_b
        .list(&Default::default())
        .await
        .unwrap()
        .metadata
        .resource_version
        .unwrap();
    let mut watch = cms_b
        .watch(&WatchParams::default(), &rv)
        .await
        .unwrap()
        .boxed();
    let cm: ConfigMap =
        serde_json::from_value(json!({"metadata": {"name": "from-a"}, "data": {"k": "v"}}))
            .unwrap();
    Api::<ConfigMap>::namespaced(ca.clone(), "default")
        .create(&PostParams::default(), &cm)
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let ev = tokio::time::timeout_at(deadline.into(), watch.try_next())
            .await
            .expect("server B's watch saw nothing of server A's write")
            .unwrap()
            .expect("watch ended");
        if let WatchEvent::Added(o) = ev {
            assert_eq!(o.metadata.name.as_deref(), Some("from-a"));
            break;
        }
    }

    // Both servers allocate from one /26 at once: 61 dynamic addresses (64 - network -
    // broadcast - the kubernetes Service's), 30 Services each, no address twice.
    let create = |client: kube::Client, prefix: &'static str| async move {
        let svcs: Api<Service> = Api::namespaced(client, "default");
        let mut out = Vec::new();
        for i in 0..30 {
            let s: Service = serde_json::from_value(json!({
                "metadata": {"name": format!("{prefix}{i}")},
                "spec": {"type": "NodePort", "ports": [{"port": 80}]},
            }))
            .unwrap();
            let s = svcs
                .create(&PostParams::default(), &s)
                .await
                .unwrap()
                .spec
                .unwrap();
            out.push((
                s.cluster_ip.unwrap(),
                s.ports.unwrap()[0].node_port.unwrap(),
            ));
        }
        out
    };
    let (xa, xb) = tokio::join!(create(ca.clone(), "a"), create(cb.clone(), "b"));
    let all: Vec<_> = xa.into_iter().chain(xb).collect();
    let ips: HashSet<_> = all.iter().map(|(ip, _)| ip.clone()).collect();
    let ports: HashSet<_> = all.iter().map(|(_, p)| *p).collect();
    assert_eq!(ips.len(), 60, "a ClusterIP was handed out twice: {all:?}");
    assert_eq!(ports.len(), 60, "a node port was handed out twice: {all:?}");
}
