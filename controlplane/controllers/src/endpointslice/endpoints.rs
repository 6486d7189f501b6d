//! The pure planner of the legacy core/v1 `Endpoints` object (upstream's endpoints
//! controller, `pkg/controller/endpoint/endpoints_controller.go` `syncService`).
//!
//! One object named like the Service. Ready pods go to `addresses`, the others to
//! `notReadyAddresses` (publishNotReadyAddresses puts them all in `addresses`); terminating
//! pods are left out unless publishNotReadyAddresses. Subsets are repacked as upstream's
//! `RepackSubsets`: addresses that serve the same ports share a subset. At most 1000
//! addresses (upstream's `maxCapacity`); beyond that the object is truncated (ready
//! addresses kept first) and annotated `endpoints.kubernetes.io/over-capacity: truncated`.

use std::collections::BTreeMap;

use k8s_openapi::{
    api::core::v1::{
        EndpointAddress, EndpointPort, EndpointSubset, Endpoints, ObjectReference, Pod, Service,
    },
    apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time},
};

use super::{pods, slices};

pub const OVER_CAPACITY_ANNOTATION: &str = "endpoints.kubernetes.io/over-capacity";
pub const MAX_CAPACITY: usize = 1000;

type PortKey = (String, i32, String, Option<String>);
type AddrKey = (String, String);
/// A port (None: a headless Service without ports) and the addresses serving it, each
/// with its readiness.
type PortAddrs = (
    Option<EndpointPort>,
    BTreeMap<AddrKey, (EndpointAddress, bool)>,
);

fn port_key(p: &EndpointPort) -> PortKey {
    (
        p.name.clone().unwrap_or_default(),
        p.port,
        p.protocol.clone().unwrap_or_else(|| "TCP".into()),
        p.app_protocol.clone(),
    )
}

fn addr_key(a: &EndpointAddress) -> AddrKey {
    (
        a.ip.clone(),
        a.target_ref
            .as_ref()
            .and_then(|r| r.uid.clone())
            .unwrap_or_default(),
    )
}

/// The subsets `svc`'s selected `pods` make, and whether they were truncated.
pub fn desired_subsets(svc: &Service, pods: &[&Pod]) -> (Vec<EndpointSubset>, bool) {
    let spec = svc.spec.clone().unwrap_or_default();
    let pnra = spec.publish_not_ready_addresses.unwrap_or(false);
    let headless = spec.cluster_ip.as_deref() == Some("None");
    let ports = spec.ports.unwrap_or_default();
    // Port (None: headless without ports) → address → (address, ready).
    let mut by_port: BTreeMap<Option<PortKey>, PortAddrs> = BTreeMap::new();
    let mut sorted: Vec<&Pod> = pods.to_vec();
    sorted.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
    for pod in sorted {
        if !pods::should_be_in_endpoints(pod, pnra) {
            continue;
        }
        let Some(ip) = pods::ipv4_addresses(pod).into_iter().next() else {
            continue;
        };
        let addr = EndpointAddress {
            ip,
            hostname: pods::hostname_for(pod, svc),
            node_name: Some(
                pod.spec
                    .as_ref()
                    .and_then(|s| s.node_name.clone())
                    .unwrap_or_default(),
            ),
            target_ref: Some(ObjectReference {
                kind: Some("Pod".into()),
                namespace: pod.metadata.namespace.clone(),
                name: pod.metadata.name.clone(),
                uid: pod.metadata.uid.clone(),
                ..Default::default()
            }),
        };
        let ready = pnra || pods::is_ready(pod);
        let mut put = |port: Option<EndpointPort>| {
            by_port
                .entry(port.as_ref().map(port_key))
                .or_insert_with(|| (port, BTreeMap::new()))
                .1
                .insert(addr_key(&addr), (addr.clone(), ready));
        };
        if ports.is_empty() {
            // Headless Services may have no ports; their addresses are still published.
            if headless {
                put(None);
            }
            continue;
        }
        for sp in &ports {
            if let Some(n) = pods::find_port(pod, sp) {
                put(Some(EndpointPort {
                    name: sp.name.clone().filter(|n| !n.is_empty()),
                    port: n,
                    protocol: Some(pods::protocol(sp)),
                    app_protocol: sp.app_protocol.clone(),
                }));
            }
        }
    }
    // RepackSubsets: ports sharing the same (address, ready) set share a subset.
    type Group = (
        Vec<EndpointPort>,
        BTreeMap<AddrKey, (EndpointAddress, bool)>,
    );
    let mut groups: BTreeMap<Vec<(AddrKey, bool)>, Group> = BTreeMap::new();
    for (_, (port, addrs)) in by_port {
        let key: Vec<(AddrKey, bool)> = addrs.iter().map(|(k, (_, r))| (k.clone(), *r)).collect();
        let g = groups.entry(key).or_insert_with(|| (Vec::new(), addrs));
        g.0.extend(port);
    }
    let mut budget = MAX_CAPACITY;
    let total: usize = groups.values().map(|g| g.1.len()).sum();
    let truncated = total > MAX_CAPACITY;
    let mut subsets = Vec::new();
    // Ready addresses first when truncating (upstream prioritises them too).
    let mut parts: Vec<(
        Vec<EndpointPort>,
        Vec<EndpointAddress>,
        Vec<EndpointAddress>,
    )> = groups
        .into_values()
        .map(|(ports, addrs)| {
            let (ready, not): (Vec<_>, Vec<_>) = addrs.into_values().partition(|(_, r)| *r);
            (
                ports,
                ready.into_iter().map(|(a, _)| a).collect(),
                not.into_iter().map(|(a, _)| a).collect(),
            )
        })
        .collect();
    for p in parts.iter_mut() {
        p.1.truncate(budget);
        budget -= p.1.len();
    }
    for p in parts.iter_mut() {
        p.2.truncate(budget);
        budget -= p.2.len();
    }
    for (ports, ready, not) in parts {
        if ready.is_empty() && not.is_empty() {
            continue;
        }
        subsets.push(EndpointSubset {
            addresses: (!ready.is_empty()).then_some(ready),
            not_ready_addresses: (!not.is_empty()).then_some(not),
            ports: (!ports.is_empty()).then_some(ports),
        });
    }
    (subsets, truncated)
}

/// Subsets in a canonical form for comparison: addresses sorted by (ip, uid) without the
/// pods' resourceVersions, ports sorted, subsets sorted (upstream's
/// `endpointSubsetsEqualIgnoreResourceVersion` over `SortSubsets`).
fn canonical(subsets: &[EndpointSubset]) -> Vec<String> {
    let norm = |v: &Option<Vec<EndpointAddress>>| {
        let mut v: Vec<EndpointAddress> = v.clone().unwrap_or_default();
        for a in &mut v {
            if let Some(r) = a.target_ref.as_mut() {
                r.resource_version = None;
            }
        }
        v.sort_by_key(addr_key);
        v
    };
    let mut out: Vec<String> = subsets
        .iter()
        .map(|s| {
            let mut ports = s.ports.clone().unwrap_or_default();
            ports.sort_by_key(port_key);
            serde_json::json!([norm(&s.addresses), norm(&s.not_ready_addresses), ports]).to_string()
        })
        .collect();
    out.sort();
    out
}

/// The labels of a Service's Endpoints: the Service's, plus the headless marker.
fn endpoints_labels(svc: &Service) -> BTreeMap<String, String> {
    let mut l = svc.metadata.labels.clone().unwrap_or_default();
    let ip_set = svc
        .spec
        .as_ref()
        .and_then(|s| s.cluster_ip.as_deref())
        .is_some_and(|ip| !ip.is_empty() && ip != "None");
    if ip_set {
        l.remove(slices::LABEL_HEADLESS);
    } else {
        l.insert(slices::LABEL_HEADLESS.into(), String::new());
    }
    l
}

/// The Endpoints to write for `svc` (create when `current` is None, else replace), or
/// None when `current` is already right.
pub fn plan(
    svc: &Service,
    pods: &[&Pod],
    current: Option<&Endpoints>,
    trigger_time: Option<&Time>,
) -> Option<Endpoints> {
    let (subsets, truncated) = desired_subsets(svc, pods);
    let labels = endpoints_labels(svc);
    if let Some(cur) = current {
        let cur_truncated = cur
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(OVER_CAPACITY_ANNOTATION))
            .is_some();
        if canonical(cur.subsets.as_deref().unwrap_or_default()) == canonical(&subsets)
            && cur.metadata.labels.clone().unwrap_or_default() == labels
            && cur_truncated == truncated
        {
            return None;
        }
    }
    let mut meta = match current {
        Some(c) => c.metadata.clone(),
        None => ObjectMeta {
            name: svc.metadata.name.clone(),
            namespace: svc.metadata.namespace.clone(),
            ..Default::default()
        },
    };
    meta.labels = (!labels.is_empty()).then_some(labels);
    slices::set_trigger_time(&mut meta, trigger_time);
    let ann = meta.annotations.get_or_insert_with(BTreeMap::new);
    if truncated {
        ann.insert(OVER_CAPACITY_ANNOTATION.into(), "truncated".into());
    } else {
        ann.remove(OVER_CAPACITY_ANNOTATION);
    }
    if ann.is_empty() {
        meta.annotations = None;
    }
    Some(Endpoints {
        metadata: meta,
        subsets: (!subsets.is_empty()).then_some(subsets),
    })
}

#[cfg(test)]
mod tests {
    use super::super::pods::testing::*;
    use super::*;
    use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

    fn ips(v: &Option<Vec<EndpointAddress>>) -> Vec<&str> {
        v.iter().flatten().map(|a| a.ip.as_str()).collect()
    }

    #[test]
    fn ready_and_not_ready_addresses_share_subsets_by_port() {
        let svc = service(
            "web",
            vec![port("http", 80, IntOrString::String("http".into()))],
        );
        let mut term = pod("c", "10.42.0.3", true);
        term.metadata.deletion_timestamp = Some(ts("2026-01-01T00:05:00Z"));
        let pods = [
            pod("a", "10.42.0.1", true),
            pod("b", "10.42.0.2", false),
            term,
            with_http_port(pod("d", "10.42.0.4", true), 9090),
        ];
        let refs: Vec<&Pod> = pods.iter().collect();
        let ep = plan(&svc, &refs, None, None).unwrap();
        assert_eq!(ep.metadata.name.as_deref(), Some("web"));
        let subsets = ep.subsets.unwrap();
        assert_eq!(subsets.len(), 2, "{subsets:?}");
        let s8080 = subsets
            .iter()
            .find(|s| s.ports.as_ref().unwrap()[0].port == 8080)
            .unwrap();
        assert_eq!(ips(&s8080.addresses), vec!["10.42.0.1"]);
        assert_eq!(
            ips(&s8080.not_ready_addresses),
            vec!["10.42.0.2"],
            "terminating pods are left out"
        );
        assert_eq!(
            s8080.ports.as_ref().unwrap()[0].name.as_deref(),
            Some("http")
        );
        let s9090 = subsets
            .iter()
            .find(|s| s.ports.as_ref().unwrap()[0].port == 9090)
            .unwrap();
        assert_eq!(ips(&s9090.addresses), vec!["10.42.0.4"]);
        let a = &s8080.addresses.as_ref().unwrap()[0];
        assert_eq!(a.node_name.as_deref(), Some("n1"));
        assert_eq!(a.target_ref.as_ref().unwrap().name.as_deref(), Some("a"));

        // Unchanged → no write; with the pods reordered too.
        let current = Endpoints {
            metadata: ObjectMeta {
                name: Some("web".into()),
                resource_version: Some("7".into()),
                ..Default::default()
            },
            subsets: Some(subsets.into_iter().rev().collect()),
        };
        let rev: Vec<&Pod> = pods.iter().rev().collect();
        assert_eq!(plan(&svc, &rev, Some(&current), None), None);
        // b turns ready: one subset with both ports' addresses? No: ports differ (8080 vs
        // 9090), so still two subsets, and b moves to addresses.
        let mut pods2 = pods.clone();
        pods2[1] = pod("b", "10.42.0.2", true);
        let refs: Vec<&Pod> = pods2.iter().collect();
        let ep = plan(&svc, &refs, Some(&current), None).unwrap();
        assert_eq!(ep.metadata.resource_version.as_deref(), Some("7"));
        let s = ep.subsets.unwrap();
        let s8080 = s
            .iter()
            .find(|s| s.ports.as_ref().unwrap()[0].port == 8080)
            .unwrap();
        assert_eq!(ips(&s8080.addresses), vec!["10.42.0.1", "10.42.0.2"]);
        assert!(s8080.not_ready_addresses.is_none());
    }

    #[test]
    fn publish_not_ready_and_multi_port_repacking() {
        let mut svc = service(
            "web",
            vec![
                port("http", 80, IntOrString::String("http".into())),
                port("admin", 81, IntOrString::Int(9000)),
            ],
        );
        svc.spec.as_mut().unwrap().publish_not_ready_addresses = Some(true);
        let mut term = pod("c", "10.42.0.3", false);
        term.metadata.deletion_timestamp = Some(ts("2026-01-01T00:05:00Z"));
        let pods = [
            pod("a", "10.42.0.1", true),
            pod("b", "10.42.0.2", false),
            term,
        ];
        let refs: Vec<&Pod> = pods.iter().collect();
        let ep = plan(&svc, &refs, None, None).unwrap();
        let subsets = ep.subsets.unwrap();
        assert_eq!(
            subsets.len(),
            1,
            "same addresses for both ports: one subset"
        );
        assert_eq!(
            ips(&subsets[0].addresses),
            vec!["10.42.0.1", "10.42.0.2", "10.42.0.3"]
        );
        assert_eq!(subsets[0].ports.as_ref().unwrap().len(), 2);
    }

    #[test]
    fn headless_without_ports_and_empty_services() {
        let mut svc = service("web", vec![]);
        svc.spec.as_mut().unwrap().cluster_ip = Some("None".into());
        let pods = [pod("a", "10.42.0.1", true)];
        let refs: Vec<&Pod> = pods.iter().collect();
        let ep = plan(&svc, &refs, None, None).unwrap();
        assert_eq!(
            ep.metadata.labels.unwrap().get(slices::LABEL_HEADLESS),
            Some(&String::new())
        );
        let subsets = ep.subsets.unwrap();
        assert_eq!(ips(&subsets[0].addresses), vec!["10.42.0.1"]);
        assert!(subsets[0].ports.is_none());
        // No pods: an Endpoints object with no subsets.
        let plain = service("web", vec![port("", 80, IntOrString::Int(80))]);
        let ep = plan(&plain, &[], None, None).unwrap();
        assert!(ep.subsets.is_none());
        assert_eq!(plan(&plain, &[], Some(&ep), None), None);
    }

    #[test]
    fn over_capacity_truncates_ready_first() {
        let svc = service("web", vec![port("", 80, IntOrString::Int(80))]);
        let pods: Vec<Pod> = (0..1100)
            .map(|i| {
                pod(
                    &format!("p{i:04}"),
                    &format!("10.42.{}.{}", i / 250, i % 250 + 1),
                    i % 2 == 0,
                )
            })
            .collect();
        let refs: Vec<&Pod> = pods.iter().collect();
        let ep = plan(&svc, &refs, None, None).unwrap();
        assert_eq!(
            ep.metadata
                .annotations
                .as_ref()
                .unwrap()
                .get(OVER_CAPACITY_ANNOTATION)
                .map(String::as_str),
            Some("truncated")
        );
        let s = &ep.subsets.unwrap()[0];
        assert_eq!(s.addresses.as_ref().unwrap().len(), 550);
        assert_eq!(s.not_ready_addresses.as_ref().unwrap().len(), 450);
    }
}
