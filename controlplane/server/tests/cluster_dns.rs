//! The clusterdns controller against a real `skiff-controlplane` process: the
//! `kube-system/kube-dns` Service at the 10th address of the service range (recreated when
//! deleted), and its EndpointSlice following the Nodes that announce a DNS server and
//! their Ready condition, untouched by the endpointslice controller.

mod support;

use std::future::Future;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Node, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Api, Client};
use serde_json::json;
use support::ServerProcess;

const DEADLINE: Duration = Duration::from_secs(45);

async fn eventually<T, F, Fut>(what: &str, server: &ServerProcess, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    let deadline = Instant::now() + DEADLINE;
    loop {
        let last = match f().await {
            Ok(v) => return v,
            Err(e) => e,
        };
        if Instant::now() > deadline {
            let log = server.log();
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            panic!(
                "{what}: not within {DEADLINE:?} (last: {last}); server log:\n{}",
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn set_ready(nodes: &Api<Node>, name: &str, status: &str) {
    nodes
        .patch_status(
            name,
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {
                "addresses": [{"type": "InternalIP", "address": format!("192.0.2.{}", &name[1..])}],
                "conditions": [{"type": "Ready", "status": status, "reason": "Test"}]}})),
        )
        .await
        .unwrap_or_else(|e| panic!("setting node {name} Ready={status}: {e}"));
}

async fn create_node(nodes: &Api<Node>, name: &str, dns_port: Option<&str>) {
    let mut meta = json!({"name": name});
    if let Some(p) = dns_port {
        meta["annotations"] = json!({"skiff.io/cluster-dns": p});
    }
    let node: Node =
        serde_json::from_value(json!({"apiVersion": "v1", "kind": "Node", "metadata": meta}))
            .unwrap();
    nodes
        .create(&PostParams::default(), &node)
        .await
        .unwrap_or_else(|e| panic!("creating node {name}: {e}"));
    set_ready(nodes, name, "True").await;
}

/// (nodeName, address, ready) of the kube-dns slices' endpoints, by slice name.
async fn dns_endpoints(
    slices: &Api<EndpointSlice>,
) -> Result<Vec<(String, String, String, bool)>, String> {
    let list = slices
        .list(&ListParams::default().labels("kubernetes.io/service-name=kube-dns"))
        .await
        .map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    for s in list.items {
        let name = s.metadata.name.clone().unwrap_or_default();
        let managed = s
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get("endpointslice.kubernetes.io/managed-by"))
            .cloned();
        if managed.as_deref() != Some("clusterdns.skiff.io") {
            return Err(format!("slice {name} is managed by {managed:?}"));
        }
        for e in s.endpoints {
            out.push((
                name.clone(),
                e.node_name.unwrap_or_default(),
                e.addresses[0].clone(),
                e.conditions.and_then(|c| c.ready).unwrap_or(false),
            ));
        }
    }
    out.sort();
    Ok(out)
}

fn ep(slice: &str, node: &str, ip: &str, ready: bool) -> (String, String, String, bool) {
    (slice.into(), node.into(), ip.into(), ready)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kube_dns_service_and_slices_follow_the_dns_nodes() {
    // A non-default service range: the Service takes its 10th address.
    let server =
        ServerProcess::start_with(&["--service-cidr", "10.96.0.0/16", "--disable-scheduler"]);
    let client: Client = support::kube_client(&server.kubeconfig).await;
    support::wait_ready(&client).await;
    let services: Api<Service> = Api::namespaced(client.clone(), "kube-system");
    let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), "kube-system");
    let nodes: Api<Node> = Api::all(client.clone());

    let svc = eventually("the kube-dns Service", &server, || async {
        services
            .get_opt("kube-dns")
            .await
            .map_err(|e| e.to_string())?
            .ok_or_else(|| "absent".to_string())
    })
    .await;
    let spec = svc.spec.clone().unwrap();
    assert_eq!(spec.cluster_ip.as_deref(), Some("10.96.0.10"));
    assert!(
        spec.selector.is_none(),
        "selector-less: its endpoints are the nodes"
    );
    let ports: Vec<(String, i32, String)> = spec
        .ports
        .iter()
        .flatten()
        .map(|p| (p.name.clone().unwrap(), p.port, p.protocol.clone().unwrap()))
        .collect();
    assert_eq!(
        ports,
        [
            ("dns".into(), 53, "UDP".into()),
            ("dns-tcp".into(), 53, "TCP".into())
        ]
    );
    assert_eq!(svc.metadata.labels.unwrap()["k8s-app"], "kube-dns");

    // n1 and n2 serve DNS on 53, n3 does not, n4 on 5353.
    create_node(&nodes, "n1", Some("53")).await;
    create_node(&nodes, "n2", Some("53")).await;
    create_node(&nodes, "n3", None).await;
    create_node(&nodes, "n4", Some("5353")).await;
    let want = vec![
        ep("kube-dns-53", "n1", "192.0.2.1", true),
        ep("kube-dns-53", "n2", "192.0.2.2", true),
        ep("kube-dns-5353", "n4", "192.0.2.4", true),
    ];
    eventually("endpoints of the DNS nodes", &server, || async {
        let got = dns_endpoints(&slices).await?;
        (got == want).then_some(()).ok_or(format!("{got:?}"))
    })
    .await;
    let s = slices.get("kube-dns-5353").await.unwrap();
    let ports: Vec<i32> = s.ports.iter().flatten().filter_map(|p| p.port).collect();
    assert_eq!(
        ports,
        [5353, 5353],
        "the slice's ports are the announced port"
    );

    // n2 goes NotReady: its endpoint is not ready (still listed, serving false).
    set_ready(&nodes, "n2", "False").await;
    eventually("n2 not ready", &server, || async {
        let got = dns_endpoints(&slices).await?;
        got.contains(&ep("kube-dns-53", "n2", "192.0.2.2", false))
            .then_some(())
            .ok_or(format!("{got:?}"))
    })
    .await;
    set_ready(&nodes, "n2", "True").await;

    // n4 stops serving (annotation removed): its slice goes; n1 is deleted: it leaves.
    nodes
        .patch(
            "n4",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"annotations": {"skiff.io/cluster-dns": null}}})),
        )
        .await
        .unwrap();
    nodes.delete("n1", &DeleteParams::default()).await.unwrap();
    eventually("only n2 left", &server, || async {
        let got = dns_endpoints(&slices).await?;
        (got == vec![ep("kube-dns-53", "n2", "192.0.2.2", true)])
            .then_some(())
            .ok_or(format!("{got:?}"))
    })
    .await;

    // A deleted Service is recreated (EnsureExists), at the same address.
    services
        .delete("kube-dns", &DeleteParams::default())
        .await
        .unwrap();
    eventually("kube-dns recreated", &server, || async {
        let s = services
            .get_opt("kube-dns")
            .await
            .map_err(|e| e.to_string())?;
        match s {
            Some(s) if s.metadata.deletion_timestamp.is_none() => {
                let ip = s.spec.and_then(|s| s.cluster_ip);
                (ip.as_deref() == Some("10.96.0.10"))
                    .then_some(())
                    .ok_or(format!("{ip:?}"))
            }
            _ => Err("absent".into()),
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_dns_none_creates_nothing() {
    let server = ServerProcess::start_with(&["--cluster-dns", "none", "--disable-scheduler"]);
    let client: Client = support::kube_client(&server.kubeconfig).await;
    support::wait_ready(&client).await;
    // The controllers are running (the node IPAM gives a Node a podCIDR) ...
    let nodes: Api<Node> = Api::all(client.clone());
    create_node(&nodes, "n9", Some("53")).await;
    eventually("n9's podCIDR", &server, || async {
        let n = nodes.get("n9").await.map_err(|e| e.to_string())?;
        n.spec
            .and_then(|s| s.pod_cidr)
            .map(|_| ())
            .ok_or_else(|| "no podCIDR yet".to_string())
    })
    .await;
    // ... but no kube-dns objects appear.
    let services: Api<Service> = Api::namespaced(client.clone(), "kube-system");
    assert!(services.get_opt("kube-dns").await.unwrap().is_none());
    let slices: Api<EndpointSlice> = Api::namespaced(client, "kube-system");
    assert!(slices
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .is_empty());
}
