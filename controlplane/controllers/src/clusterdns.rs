//! The cluster DNS Service and its endpoints: `kube-system/kube-dns` (the name every
//! Kubernetes tool and tutorial expects; label `k8s-app=kube-dns`) at a fixed ClusterIP
//! (`--cluster-dns`, by default the 10th address of the service range, 10.43.0.10, as
//! kubeadm and k3s choose), with no selector, and EndpointSlices listing every Node whose
//! agent serves DNS.
//!
//! skiff's DNS server runs inside each node agent (node-local, like NodeLocal DNSCache):
//! an agent started with `--dns-bind-address` marks its Node with the annotation
//! [`NODE_ANNOTATION`] = the port it serves on. This controller keeps one slice per port
//! value (a slice's ports apply to all of its endpoints) with each such Node's InternalIP,
//! `nodeName`, and ready/serving = the Node's `Ready` condition (terminating while the Node
//! is being deleted). The slices carry `managed-by` [`MANAGED_BY`], so the endpointslice
//! controller (which only touches its own) leaves them alone; traffic to the ClusterIP then
//! goes through the normal service datapath to a node's DNS server, and a node whose agent
//! stops heartbeating drops out as soon as the node lifecycle controller marks it Unknown.
//!
//! The Service is ensured the way the addon manager's `EnsureExists` mode does: created
//! when missing, never overwritten (an administrator may add ports or annotations). A
//! Service that exists with another ClusterIP is reported, not replaced.
//!
//! Runtime: a reflector over Nodes plus watches on the Service and its slices; any change
//! (and a periodic resync) runs [`plan`] (pure) against a fresh list of the slices and
//! applies the difference.

use std::{collections::BTreeMap, net::Ipv4Addr, time::Duration};

use futures::StreamExt as _;
use k8s_openapi::api::{
    core::v1::{Node, Service},
    discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice},
};
use kube::{
    api::{DeleteParams, ListParams, PostParams},
    runtime::{reflector, watcher, WatchStreamExt as _},
    Api, ResourceExt as _,
};
use serde_json::json;

use crate::{backoff::Backoff, Ctx};

pub const NAMESPACE: &str = "kube-system";
pub const SERVICE: &str = "kube-dns";
/// Set by a node agent serving DNS; the value is its port (decimal).
pub const NODE_ANNOTATION: &str = "skiff.io/cluster-dns";
/// `endpointslice.kubernetes.io/managed-by` of the slices this controller owns.
pub const MANAGED_BY: &str = "clusterdns.skiff.io";
const LABEL_MANAGED_BY: &str = "endpointslice.kubernetes.io/managed-by";
const LABEL_SERVICE_NAME: &str = "kubernetes.io/service-name";
/// Periodic resync: repairs anything a lost watch event left behind.
const RESYNC: Duration = Duration::from_secs(60);

/// The `kube-dns` Service with ClusterIP `ip`.
pub fn service(ip: Ipv4Addr) -> Service {
    serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {
            "name": SERVICE, "namespace": NAMESPACE,
            "labels": {
                "k8s-app": "kube-dns",
                "kubernetes.io/name": "CoreDNS",
                "kubernetes.io/cluster-service": "true",
            },
        },
        "spec": {
            "type": "ClusterIP", "clusterIP": ip.to_string(), "clusterIPs": [ip.to_string()],
            "ports": [
                {"name": "dns", "port": 53, "protocol": "UDP", "targetPort": 53},
                {"name": "dns-tcp", "port": 53, "protocol": "TCP", "targetPort": 53},
            ],
        },
    }))
    .expect("a valid Service")
}

/// The DNS port a Node's agent announces, if it announces a valid one.
pub fn node_port(node: &Node) -> Option<u16> {
    node.annotations()
        .get(NODE_ANNOTATION)
        .and_then(|v| v.trim().parse::<u16>().ok())
        .filter(|p| *p != 0)
}

fn internal_ip(node: &Node) -> Option<Ipv4Addr> {
    node.status
        .as_ref()?
        .addresses
        .as_ref()?
        .iter()
        .filter(|a| a.type_ == "InternalIP")
        .find_map(|a| a.address.parse().ok())
}

fn node_ready(node: &Node) -> bool {
    node.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|cs| cs.iter().find(|c| c.type_ == "Ready"))
        .is_some_and(|c| c.status == "True")
}

/// Name of the slice for DNS servers on `port`.
pub fn slice_name(port: u16) -> String {
    format!("{SERVICE}-{port}")
}

/// The slices `nodes` call for: one per announced port, endpoints sorted by node name.
/// Nodes announcing an invalid port, or without an InternalIP, are left out.
pub fn desired(nodes: &[Node]) -> BTreeMap<String, EndpointSlice> {
    let mut by_port: BTreeMap<u16, Vec<&Node>> = BTreeMap::new();
    for n in nodes {
        if let (Some(p), Some(_)) = (node_port(n), internal_ip(n)) {
            by_port.entry(p).or_default().push(n);
        }
    }
    by_port
        .into_iter()
        .map(|(port, mut ns)| {
            ns.sort_by_key(|n| n.name_any());
            let endpoints = ns
                .iter()
                .map(|n| {
                    let ready = node_ready(n);
                    Endpoint {
                        addresses: vec![internal_ip(n).expect("filtered above").to_string()],
                        conditions: Some(EndpointConditions {
                            ready: Some(ready && n.metadata.deletion_timestamp.is_none()),
                            serving: Some(ready),
                            terminating: Some(n.metadata.deletion_timestamp.is_some()),
                        }),
                        node_name: Some(n.name_any()),
                        ..Endpoint::default()
                    }
                })
                .collect();
            let name = slice_name(port);
            let slice = EndpointSlice {
                metadata: kube::api::ObjectMeta {
                    name: Some(name.clone()),
                    namespace: Some(NAMESPACE.into()),
                    labels: Some(
                        [
                            (LABEL_SERVICE_NAME.to_string(), SERVICE.to_string()),
                            (LABEL_MANAGED_BY.to_string(), MANAGED_BY.to_string()),
                        ]
                        .into(),
                    ),
                    ..Default::default()
                },
                address_type: "IPv4".into(),
                endpoints,
                ports: Some(
                    [("dns", "UDP"), ("dns-tcp", "TCP")]
                        .map(|(n, p)| EndpointPort {
                            name: Some(n.into()),
                            port: Some(port.into()),
                            protocol: Some(p.into()),
                            app_protocol: None,
                        })
                        .to_vec(),
                ),
            };
            (name, slice)
        })
        .collect()
}

/// One write.
#[derive(Debug, Clone, PartialEq)]
pub enum Write {
    Create(EndpointSlice),
    /// Replace with this content (the existing resourceVersion is set on it).
    Replace(EndpointSlice),
    Delete(String),
}

/// What makes `have` (this controller's slices) match `want`.
pub fn plan(want: &BTreeMap<String, EndpointSlice>, have: &[EndpointSlice]) -> Vec<Write> {
    let mut writes = Vec::new();
    let have_by_name: BTreeMap<String, &EndpointSlice> =
        have.iter().map(|s| (s.name_any(), s)).collect();
    for (name, w) in want {
        match have_by_name.get(name) {
            None => writes.push(Write::Create(w.clone())),
            Some(h) => {
                let same = h.endpoints == w.endpoints
                    && h.ports == w.ports
                    && h.address_type == w.address_type
                    && h.metadata.labels == w.metadata.labels;
                if !same {
                    let mut r = w.clone();
                    r.metadata.resource_version = h.metadata.resource_version.clone();
                    writes.push(Write::Replace(r));
                }
            }
        }
    }
    for name in have_by_name.keys() {
        if !want.contains_key(name) {
            writes.push(Write::Delete(name.clone()));
        }
    }
    writes
}

/// Creates the Service when it is missing; reports one with another ClusterIP.
async fn ensure_service(ctx: &Ctx, ip: Ipv4Addr) -> Result<(), kube::Error> {
    let api: Api<Service> = Api::namespaced(ctx.client.clone(), NAMESPACE);
    match api.get_opt(SERVICE).await? {
        Some(s) => {
            let have = s.spec.as_ref().and_then(|s| s.cluster_ip.clone());
            if have.as_deref() != Some(ip.to_string().as_str()) {
                tracing::warn!(
                    "clusterdns: Service {NAMESPACE}/{SERVICE} has ClusterIP {have:?}, not --cluster-dns {ip}: pods are told {ip}; delete the Service to have it recreated"
                );
            }
            Ok(())
        }
        None => match api.create(&PostParams::default(), &service(ip)).await {
            Ok(_) => {
                tracing::info!("clusterdns: created Service {NAMESPACE}/{SERVICE} at {ip}");
                Ok(())
            }
            Err(kube::Error::Api(e)) if e.code == 409 => Ok(()),
            Err(e) => Err(e),
        },
    }
}

async fn sync(ctx: &Ctx, ip: Ipv4Addr, nodes: &reflector::Store<Node>) -> Result<(), kube::Error> {
    ensure_service(ctx, ip).await?;
    let nodes: Vec<Node> = nodes.state().iter().map(|n| n.as_ref().clone()).collect();
    let want = desired(&nodes);
    let api: Api<EndpointSlice> = Api::namespaced(ctx.client.clone(), NAMESPACE);
    // A fresh list, never a cache: a slice created a moment ago must not be created twice.
    let have = api
        .list(&ListParams::default().labels(&format!("{LABEL_MANAGED_BY}={MANAGED_BY}")))
        .await?
        .items;
    for w in plan(&want, &have) {
        match w {
            Write::Create(s) => {
                api.create(&PostParams::default(), &s).await?;
                tracing::info!(
                    "clusterdns: created EndpointSlice {NAMESPACE}/{} ({} nodes)",
                    s.name_any(),
                    s.endpoints.len()
                );
            }
            Write::Replace(s) => {
                api.replace(&s.name_any(), &PostParams::default(), &s)
                    .await?;
                tracing::info!(
                    "clusterdns: updated EndpointSlice {NAMESPACE}/{} ({} nodes, {} ready)",
                    s.name_any(),
                    s.endpoints.len(),
                    s.endpoints
                        .iter()
                        .filter(|e| e.conditions.as_ref().and_then(|c| c.ready) == Some(true))
                        .count()
                );
            }
            Write::Delete(name) => {
                match api.delete(&name, &DeleteParams::default()).await {
                    Ok(_) => {}
                    Err(kube::Error::Api(e)) if e.code == 404 => {}
                    Err(e) => return Err(e),
                }
                tracing::info!("clusterdns: deleted EndpointSlice {NAMESPACE}/{name}");
            }
        }
    }
    Ok(())
}

/// Runs the controller (nothing to do when `--cluster-dns` is off).
pub async fn run(ctx: Ctx) -> anyhow::Result<()> {
    let Some(ip) = ctx.config.cluster_dns else {
        tracing::info!("clusterdns controller off (no --cluster-dns)");
        return Ok(());
    };
    let client = ctx.client.clone();
    let (nodes, writer) = reflector::store::<Node>();
    let node_events = reflector::reflector(
        writer,
        watcher(Api::<Node>::all(client.clone()), watcher::Config::default()),
    )
    .default_backoff()
    .map(|r| r.map(|_| ()).map_err(|e| format!("watching Nodes: {e}")));
    let svc_events = watcher(
        Api::<Service>::namespaced(client.clone(), NAMESPACE),
        watcher::Config::default().fields(&format!("metadata.name={SERVICE}")),
    )
    .default_backoff()
    .map(|r| {
        r.map(|_| ())
            .map_err(|e| format!("watching Service {SERVICE}: {e}"))
    });
    let slice_events = watcher(
        Api::<EndpointSlice>::namespaced(client, NAMESPACE),
        watcher::Config::default().labels(&format!("{LABEL_MANAGED_BY}={MANAGED_BY}")),
    )
    .default_backoff()
    .map(|r| {
        r.map(|_| ())
            .map_err(|e| format!("watching EndpointSlices: {e}"))
    });
    let mut events = Box::pin(futures::stream::select(
        node_events,
        futures::stream::select(svc_events, slice_events),
    ));
    tracing::info!("clusterdns controller started: Service {NAMESPACE}/{SERVICE} at {ip}");
    let backoff = Backoff::default();
    let mut resync = tokio::time::interval(RESYNC);
    let mut retry_at: Option<tokio::time::Instant> = None;
    loop {
        let retry = async {
            match retry_at {
                Some(t) => tokio::time::sleep_until(t).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            e = events.next() => match e {
                Some(Ok(())) => {}
                Some(Err(e)) => {
                    tracing::warn!("clusterdns: {e}");
                    continue;
                }
                None => anyhow::bail!("the clusterdns watch streams ended"),
            },
            _ = resync.tick() => {}
            _ = retry => {}
        }
        // Coalesce a burst (a relist, many nodes at once) into one sync.
        while let Some(Some(_)) = futures::FutureExt::now_or_never(events.next()) {}
        if futures::FutureExt::now_or_never(nodes.wait_until_ready()).is_none() {
            // Planning from a half-listed node cache would delete endpoints.
            continue;
        }
        match sync(&ctx, ip, &nodes).await {
            Ok(()) => {
                backoff.succeeded("kube-dns");
                retry_at = None;
            }
            Err(e) => {
                let wait = backoff.failed("kube-dns");
                tracing::warn!("clusterdns: sync failed (retrying in {wait:?}): {e}");
                retry_at = Some(tokio::time::Instant::now() + wait);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str, ann: Option<&str>, ip: &str, ready: &str) -> Node {
        let mut n: Node = serde_json::from_value(json!({
            "metadata": {"name": name},
            "status": {
                "addresses": [{"type": "Hostname", "address": name},
                              {"type": "InternalIP", "address": ip}],
                "conditions": [{"type": "Ready", "status": ready}],
            },
        }))
        .unwrap();
        if let Some(a) = ann {
            n.metadata.annotations = Some([(NODE_ANNOTATION.to_string(), a.to_string())].into());
        }
        n
    }

    fn eps(s: &EndpointSlice) -> Vec<(String, String, bool, bool)> {
        s.endpoints
            .iter()
            .map(|e| {
                let c = e.conditions.clone().unwrap();
                (
                    e.node_name.clone().unwrap(),
                    e.addresses[0].clone(),
                    c.ready.unwrap(),
                    c.serving.unwrap(),
                )
            })
            .collect()
    }

    #[test]
    fn nodes_serving_dns_become_endpoints_ready_as_the_node() {
        let mut deleting = node("d", Some("53"), "192.0.2.4", "True");
        deleting.metadata.deletion_timestamp =
            Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                "2026-01-01T00:00:00Z".parse().unwrap(),
            ));
        let nodes = vec![
            node("b", Some("53"), "192.0.2.2", "False"),
            node("a", Some("53"), "192.0.2.1", "True"),
            node("c", None, "192.0.2.3", "True"),
            node("e", Some("5353"), "192.0.2.5", "Unknown"),
            node("f", Some("bogus"), "192.0.2.6", "True"),
            node("g", Some("0"), "192.0.2.7", "True"),
            deleting,
        ];
        let want = desired(&nodes);
        assert_eq!(
            want.keys().collect::<Vec<_>>(),
            ["kube-dns-53", "kube-dns-5353"]
        );
        let s = &want["kube-dns-53"];
        assert_eq!(
            eps(s),
            [
                ("a".into(), "192.0.2.1".into(), true, true),
                ("b".into(), "192.0.2.2".into(), false, false),
                ("d".into(), "192.0.2.4".into(), false, true),
            ]
        );
        assert_eq!(
            s.endpoints[2].conditions.as_ref().unwrap().terminating,
            Some(true)
        );
        let ports: Vec<_> = s
            .ports
            .iter()
            .flatten()
            .map(|p| {
                (
                    p.name.clone().unwrap(),
                    p.port.unwrap(),
                    p.protocol.clone().unwrap(),
                )
            })
            .collect();
        assert_eq!(
            ports,
            [
                ("dns".into(), 53, "UDP".into()),
                ("dns-tcp".into(), 53, "TCP".into())
            ]
        );
        assert_eq!(
            s.labels().get(LABEL_MANAGED_BY).map(String::as_str),
            Some(MANAGED_BY),
            "the endpointslice controller must not adopt it"
        );
        assert_eq!(
            eps(&want["kube-dns-5353"]),
            [("e".into(), "192.0.2.5".into(), false, false)]
        );
    }

    #[test]
    fn plan_writes_only_differences() {
        let nodes = vec![node("a", Some("53"), "192.0.2.1", "True")];
        let want = desired(&nodes);
        assert_eq!(
            plan(&want, &[]),
            vec![Write::Create(want["kube-dns-53"].clone())]
        );
        let mut have = want["kube-dns-53"].clone();
        have.metadata.resource_version = Some("7".into());
        assert!(
            plan(&want, std::slice::from_ref(&have)).is_empty(),
            "nothing changed"
        );
        // The node turns NotReady: replaced with the old resourceVersion.
        let want2 = desired(&[node("a", Some("53"), "192.0.2.1", "False")]);
        match &plan(&want2, std::slice::from_ref(&have))[..] {
            [Write::Replace(s)] => {
                assert_eq!(s.metadata.resource_version.as_deref(), Some("7"));
                assert_eq!(
                    s.endpoints[0].conditions.as_ref().unwrap().ready,
                    Some(false)
                );
            }
            other => panic!("{other:?}"),
        }
        // No node serves DNS any more: the slice goes.
        assert_eq!(
            plan(&desired(&[]), &[have]),
            vec![Write::Delete("kube-dns-53".into())]
        );
    }

    #[test]
    fn the_service_has_the_fixed_ip_and_no_selector() {
        let s = service(Ipv4Addr::new(10, 43, 0, 10));
        let spec = s.spec.unwrap();
        assert_eq!(spec.cluster_ip.as_deref(), Some("10.43.0.10"));
        assert!(spec.selector.is_none());
        assert_eq!(s.metadata.labels.unwrap()["k8s-app"], "kube-dns");
        assert_eq!(spec.ports.unwrap().len(), 2);
    }
}
