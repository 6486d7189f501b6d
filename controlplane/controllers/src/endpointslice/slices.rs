//! The pure EndpointSlice planner: upstream's `endpointslice` reconciler
//! (`staging/src/k8s.io/endpointslice/reconciler.go`) for the IPv4 address type.
//!
//! From a Service, its selected pods, the nodes' zones and the slices that exist, it
//! computes the creates, updates and deletes that make the slices match, with upstream's
//! placement rules so a change rewrites as few slices as possible:
//! 1. endpoints are grouped by their resolved port set (named `targetPort`s resolve per
//!    pod, so pods mapping `http` to different numbers land in different slices);
//! 2. per group, existing slices keep the endpoints still desired (updated in place when
//!    a condition or field changed); a slice left empty is deleted;
//! 3. new endpoints fill slices already being updated (fullest first), then the one
//!    unchanged slice that they fit closest to full, and only then new slices;
//! 4. creates are turned into updates of slices that would be deleted (no churn);
//! 5. a Service with no endpoints at all keeps one empty placeholder slice.
//!
//! A slice whose endpoints and labels are already right is not written.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use k8s_openapi::{
    api::{
        core::v1::{ObjectReference, Pod, Service},
        discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice},
    },
    apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference, Time},
};

use super::pods;

/// Label naming the Service a slice belongs to.
pub const LABEL_SERVICE_NAME: &str = "kubernetes.io/service-name";
/// Label naming the controller that manages a slice.
pub const LABEL_MANAGED_BY: &str = "endpointslice.kubernetes.io/managed-by";
/// Upstream's controller name: proxies and tools recognise it.
pub const CONTROLLER_NAME: &str = "endpointslice-controller.k8s.io";
/// Set (empty value) on the slices and Endpoints of headless Services.
pub const LABEL_HEADLESS: &str = "service.kubernetes.io/headless";
/// When the change these endpoints reflect happened (network programming latency SLI).
pub const TRIGGER_TIME_ANNOTATION: &str = "endpoints.kubernetes.io/last-change-trigger-time";
/// The only address type skiff's datapath programs.
pub const ADDRESS_TYPE: &str = "IPv4";

/// What the planner looks at.
pub struct Inputs<'a> {
    pub service: &'a Service,
    /// The pods the Service's selector matches (any order).
    pub pods: &'a [&'a Pod],
    /// Node name → `topology.kubernetes.io/zone`, for nodes that have the label.
    pub node_zones: &'a HashMap<String, String>,
    /// The slices labelled as this Service's and managed by this controller.
    pub existing: &'a [EndpointSlice],
    pub max_endpoints_per_slice: usize,
    /// The earliest change not yet reflected ([`super::trigger`]); None removes the
    /// annotation from written slices, as upstream.
    pub trigger_time: Option<&'a Time>,
}

/// The writes that make the slices match.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Plan {
    /// New slices (`generateName` set, no name).
    pub create: Vec<EndpointSlice>,
    /// Existing slices with new content (metadata kept: name, resourceVersion).
    pub update: Vec<EndpointSlice>,
    pub delete: Vec<EndpointSlice>,
}

impl Plan {
    pub fn is_empty(&self) -> bool {
        self.create.is_empty() && self.update.is_empty() && self.delete.is_empty()
    }
}

/// A port set's identity: upstream's `PortMapKey` (hash of the ports), as sorted tuples.
type PortKey = Vec<(String, i32, String, Option<String>)>;

fn port_key(ports: &[EndpointPort]) -> PortKey {
    let mut k: PortKey = ports
        .iter()
        .map(|p| {
            (
                p.name.clone().unwrap_or_default(),
                p.port.unwrap_or(0),
                p.protocol.clone().unwrap_or_else(|| "TCP".into()),
                p.app_protocol.clone(),
            )
        })
        .collect();
    k.sort();
    k
}

/// An endpoint's identity: upstream's `hashEndpoint` (addresses, hostname, target).
type EndpointKey = (Vec<String>, Option<String>, Option<(String, String)>);

fn endpoint_key(e: &Endpoint) -> EndpointKey {
    let mut addrs = e.addresses.clone();
    addrs.sort();
    (
        addrs,
        e.hostname.clone(),
        e.target_ref.as_ref().map(|r| {
            (
                r.namespace.clone().unwrap_or_default(),
                r.name.clone().unwrap_or_default(),
            )
        }),
    )
}

/// Upstream's `EndpointsEqualBeyondHash`: the fields outside the identity.
fn same_endpoint(a: &Endpoint, b: &Endpoint) -> bool {
    let cond = |e: &Endpoint| {
        let c = e.conditions.clone().unwrap_or_default();
        (c.ready, c.serving, c.terminating)
    };
    let target = |e: &Endpoint| {
        e.target_ref.as_ref().map(|r| {
            (
                r.kind.clone(),
                r.namespace.clone(),
                r.name.clone(),
                r.uid.clone(),
            )
        })
    };
    a.node_name == b.node_name && a.zone == b.zone && cond(a) == cond(b) && target(a) == target(b)
}

/// `IsServiceIPSet`: a ClusterIP that is neither empty nor `None` (headless).
fn service_ip_set(svc: &Service) -> bool {
    svc.spec
        .as_ref()
        .and_then(|s| s.cluster_ip.as_deref())
        .is_some_and(|ip| !ip.is_empty() && ip != "None")
}

fn publish_not_ready(svc: &Service) -> bool {
    svc.spec
        .as_ref()
        .and_then(|s| s.publish_not_ready_addresses)
        .unwrap_or(false)
}

/// `podToEndpoint`: conditions per upstream. `serving` is the Ready condition (or
/// publishNotReadyAddresses) whether or not the pod terminates; `ready` is never true for
/// a terminating pod unless publishNotReadyAddresses.
pub fn pod_endpoint(pod: &Pod, svc: &Service, zones: &HashMap<String, String>) -> Endpoint {
    let pnra = publish_not_ready(svc);
    let serving = pnra || pods::is_ready(pod);
    let terminating = pods::is_terminating(pod);
    let ready = pnra || (serving && !terminating);
    let node = pod
        .spec
        .as_ref()
        .and_then(|s| s.node_name.clone())
        .filter(|n| !n.is_empty());
    Endpoint {
        addresses: pods::ipv4_addresses(pod),
        conditions: Some(EndpointConditions {
            ready: Some(ready),
            serving: Some(serving),
            terminating: Some(terminating),
        }),
        target_ref: Some(ObjectReference {
            kind: Some("Pod".into()),
            namespace: pod.metadata.namespace.clone(),
            name: pod.metadata.name.clone(),
            uid: pod.metadata.uid.clone(),
            ..Default::default()
        }),
        zone: node.as_ref().and_then(|n| zones.get(n).cloned()),
        node_name: node,
        hostname: pods::hostname_for(pod, svc),
        ..Default::default()
    }
}

/// `getEndpointPorts`: the Service's ports as this pod serves them; a port whose named
/// targetPort the pod lacks is left out.
pub fn pod_ports(svc: &Service, pod: &Pod) -> Vec<EndpointPort> {
    svc.spec
        .as_ref()
        .and_then(|s| s.ports.as_ref())
        .into_iter()
        .flatten()
        .filter_map(|sp| {
            Some(EndpointPort {
                name: Some(sp.name.clone().unwrap_or_default()),
                port: Some(pods::find_port(pod, sp)?),
                protocol: Some(pods::protocol(sp)),
                app_protocol: sp.app_protocol.clone(),
            })
        })
        .collect()
}

/// The labels of the Service's slices: the Service's own (minus the reserved keys), the
/// headless marker, the service name and the manager.
pub fn slice_labels(svc: &Service) -> BTreeMap<String, String> {
    let reserved = [LABEL_SERVICE_NAME, LABEL_MANAGED_BY, LABEL_HEADLESS];
    let mut l: BTreeMap<String, String> = svc
        .metadata
        .labels
        .iter()
        .flatten()
        .filter(|(k, _)| !reserved.contains(&k.as_str()))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    if !service_ip_set(svc) {
        l.insert(LABEL_HEADLESS.into(), String::new());
    }
    l.insert(
        LABEL_SERVICE_NAME.into(),
        svc.metadata.name.clone().unwrap_or_default(),
    );
    l.insert(LABEL_MANAGED_BY.into(), CONTROLLER_NAME.into());
    l
}

/// The controller reference every slice of `svc` carries (the garbage collector deletes
/// the slices with their Service).
pub fn owner_reference(svc: &Service) -> OwnerReference {
    OwnerReference {
        api_version: "v1".into(),
        kind: "Service".into(),
        name: svc.metadata.name.clone().unwrap_or_default(),
        uid: svc.metadata.uid.clone().unwrap_or_default(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    }
}

fn owned_by(slice: &EndpointSlice, svc: &Service) -> bool {
    let uid = svc.metadata.uid.as_deref().unwrap_or_default();
    slice
        .metadata
        .owner_references
        .iter()
        .flatten()
        .any(|o| o.controller == Some(true) && o.kind == "Service" && o.uid == uid)
}

fn new_slice(svc: &Service, ports: &[EndpointPort]) -> EndpointSlice {
    EndpointSlice {
        metadata: ObjectMeta {
            generate_name: Some(format!(
                "{}-",
                svc.metadata.name.as_deref().unwrap_or_default()
            )),
            namespace: svc.metadata.namespace.clone(),
            labels: Some(slice_labels(svc)),
            owner_references: Some(vec![owner_reference(svc)]),
            ..Default::default()
        },
        address_type: ADDRESS_TYPE.into(),
        endpoints: Vec::new(),
        ports: (!ports.is_empty()).then(|| ports.to_vec()),
    }
}

fn ports_of(s: &EndpointSlice) -> &[EndpointPort] {
    s.ports.as_deref().unwrap_or_default()
}

/// Plans the writes for one Service (see the module docs).
pub fn plan(inp: &Inputs<'_>) -> Plan {
    let svc = inp.service;
    let max = inp.max_endpoints_per_slice.max(1);
    let mut plan = Plan::default();

    let mut existing_by_ports: BTreeMap<PortKey, Vec<EndpointSlice>> = BTreeMap::new();
    for s in inp.existing {
        if owned_by(s, svc) && s.address_type == ADDRESS_TYPE {
            existing_by_ports
                .entry(port_key(ports_of(s)))
                .or_default()
                .push(s.clone());
        } else {
            // A slice of an older Service with the same name, or of another family.
            plan.delete.push(s.clone());
        }
    }

    // Desired endpoints per port set, in a stable order (pods by name).
    let mut sorted: Vec<&Pod> = inp.pods.to_vec();
    sorted.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
    let mut desired: BTreeMap<PortKey, (Vec<EndpointPort>, BTreeMap<EndpointKey, Endpoint>)> =
        BTreeMap::new();
    for pod in sorted {
        if !pods::should_be_in_endpoints(pod, true) {
            continue;
        }
        let ports = pod_ports(svc, pod);
        let ep = pod_endpoint(pod, svc, inp.node_zones);
        desired
            .entry(port_key(&ports))
            .or_insert_with(|| (ports, BTreeMap::new()))
            .1
            .insert(endpoint_key(&ep), ep);
    }

    for (key, (ports, set)) in desired.iter() {
        let existing = existing_by_ports.remove(key).unwrap_or_default();
        by_port_set(svc, &existing, set.clone(), ports, max, &mut plan);
    }
    // Port sets no longer desired.
    for (_, slices) in existing_by_ports {
        plan.delete.extend(slices);
    }

    // A Service without endpoints keeps one empty placeholder slice.
    if inp.existing.len() == plan.delete.len() && plan.create.is_empty() {
        let placeholder = new_slice(svc, &[]);
        let is_placeholder = |s: &EndpointSlice| {
            s.endpoints.is_empty()
                && ports_of(s).is_empty()
                && s.address_type == ADDRESS_TYPE
                && owned_by(s, svc)
                && s.metadata.labels == placeholder.metadata.labels
        };
        if plan.delete.len() == 1 && is_placeholder(&plan.delete[0]) {
            plan.delete.clear();
        } else {
            plan.create.push(placeholder);
        }
    }

    // Reuse slices that would be deleted for the slices to create.
    let mut i = 0;
    while i < plan.delete.len() && !plan.create.is_empty() {
        let doomed = &plan.delete[i];
        if doomed.address_type == ADDRESS_TYPE && owned_by(doomed, svc) {
            let doomed = plan.delete.remove(i);
            let mut reused = plan.create.pop().expect("create is not empty");
            reused.metadata = ObjectMeta {
                labels: reused.metadata.labels.take(),
                ..doomed.metadata
            };
            plan.update.push(reused);
        } else {
            i += 1;
        }
    }

    for s in plan.create.iter_mut().chain(plan.update.iter_mut()) {
        set_trigger_time(&mut s.metadata, inp.trigger_time);
    }
    plan
}

/// Sets or clears the trigger-time annotation (`RFC3339`, UTC).
pub fn set_trigger_time(meta: &mut ObjectMeta, t: Option<&Time>) {
    let ann = meta.annotations.get_or_insert_with(BTreeMap::new);
    match t {
        Some(t) => {
            ann.insert(
                TRIGGER_TIME_ANNOTATION.into(),
                t.0.strftime("%Y-%m-%dT%H:%M:%SZ").to_string(),
            );
        }
        None => {
            ann.remove(TRIGGER_TIME_ANNOTATION);
        }
    }
    if ann.is_empty() {
        meta.annotations = None;
    }
}

/// Upstream's `reconcileByPortMapping` for one port set.
fn by_port_set(
    svc: &Service,
    existing: &[EndpointSlice],
    mut want: BTreeMap<EndpointKey, Endpoint>,
    ports: &[EndpointPort],
    max: usize,
    plan: &mut Plan,
) {
    let labels = slice_labels(svc);
    let mut by_name: BTreeMap<String, EndpointSlice> = BTreeMap::new();
    let mut unchanged: BTreeSet<String> = BTreeSet::new();
    let mut to_update: BTreeSet<String> = BTreeSet::new();

    // 1. Keep what is still desired; note what changed.
    for s in existing {
        let name = s.metadata.name.clone().unwrap_or_default();
        let mut kept = Vec::with_capacity(s.endpoints.len());
        let mut changed = false;
        for e in &s.endpoints {
            if let Some(d) = want.remove(&endpoint_key(e)) {
                changed |= !same_endpoint(&d, e);
                kept.push(d);
            }
        }
        let labels_changed = s.metadata.labels.as_ref() != Some(&labels);
        if changed || kept.len() != s.endpoints.len() {
            if kept.is_empty() {
                plan.delete.push(s.clone());
                continue;
            }
            let mut u = s.clone();
            u.endpoints = kept;
            u.metadata.labels = Some(labels.clone());
            to_update.insert(name.clone());
            by_name.insert(name, u);
        } else if labels_changed {
            let mut u = s.clone();
            u.metadata.labels = Some(labels.clone());
            to_update.insert(name.clone());
            by_name.insert(name, u);
        } else {
            unchanged.insert(name.clone());
            by_name.insert(name, s.clone());
        }
    }

    let mut pending: Vec<Endpoint> = want.into_values().collect();
    pending.reverse(); // pop() takes them in key order

    // 2. Fill the slices being written anyway, fullest first.
    if !pending.is_empty() && !to_update.is_empty() {
        let mut names: Vec<String> = to_update.iter().cloned().collect();
        names.sort_by_key(|n| std::cmp::Reverse(by_name[n].endpoints.len()));
        for n in names {
            let s = by_name.get_mut(&n).expect("listed above");
            while s.endpoints.len() < max {
                let Some(e) = pending.pop() else { break };
                s.endpoints.push(e);
            }
        }
    }

    // 3. The rest: into the unchanged slice they fit closest to full, else new slices.
    while !pending.is_empty() {
        let mut target: Option<String> = None;
        if pending.len() < max && !unchanged.is_empty() {
            target = slice_to_fill(&unchanged, &by_name, pending.len(), max);
        }
        let mut s = match &target {
            Some(n) => by_name.remove(n).expect("unchanged slices are in by_name"),
            None => new_slice(svc, ports),
        };
        while s.endpoints.len() < max {
            let Some(e) = pending.pop() else { break };
            s.endpoints.push(e);
        }
        match target {
            Some(n) => {
                unchanged.remove(&n);
                to_update.insert(n.clone());
                by_name.insert(n, s);
            }
            None => plan.create.push(s),
        }
    }

    for n in to_update {
        plan.update.extend(by_name.remove(&n));
    }
}

/// `getSliceToFill`: the slice that `n` more endpoints bring closest to `max` without
/// going over.
fn slice_to_fill(
    names: &BTreeSet<String>,
    by_name: &BTreeMap<String, EndpointSlice>,
    n: usize,
    max: usize,
) -> Option<String> {
    let mut best: Option<(usize, &String)> = None;
    for name in names {
        let len = by_name[name].endpoints.len();
        if n + len > max {
            continue;
        }
        let diff = max - (n + len);
        if best.is_none_or(|(d, _)| diff < d) {
            best = Some((diff, name));
            if diff == 0 {
                break;
            }
        }
    }
    best.map(|(_, n)| n.clone())
}

#[cfg(test)]
mod tests {
    use super::super::pods::testing::*;
    use super::*;
    use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

    /// Turns planned writes into the "server state": creates get names.
    fn apply(existing: &mut Vec<EndpointSlice>, plan: &Plan, next_name: &mut u32) {
        for d in &plan.delete {
            existing.retain(|s| s.metadata.name != d.metadata.name);
        }
        for u in &plan.update {
            let slot = existing
                .iter_mut()
                .find(|s| s.metadata.name == u.metadata.name)
                .expect("update of an existing slice");
            *slot = u.clone();
        }
        for c in &plan.create {
            assert!(c.metadata.name.is_none());
            let mut c = c.clone();
            *next_name += 1;
            c.metadata.name = Some(format!("web-{next_name}"));
            existing.push(c);
        }
    }

    fn run(svc: &Service, pods: &[Pod], existing: &[EndpointSlice], max: usize) -> Plan {
        let refs: Vec<&Pod> = pods.iter().collect();
        let zones: HashMap<String, String> = [("n1".to_string(), "zone-a".to_string())].into();
        plan(&Inputs {
            service: svc,
            pods: &refs,
            node_zones: &zones,
            existing,
            max_endpoints_per_slice: max,
            trigger_time: None,
        })
    }

    fn http_svc() -> Service {
        service(
            "web",
            vec![port("http", 80, IntOrString::String("http".into()))],
        )
    }

    /// (pod, ready, serving, terminating)
    type Conditions = (String, Option<bool>, Option<bool>, Option<bool>);

    fn conditions(plan: &Plan) -> Vec<Conditions> {
        plan.create
            .iter()
            .chain(&plan.update)
            .flat_map(|s| &s.endpoints)
            .map(|e| {
                let c = e.conditions.clone().unwrap();
                (
                    e.target_ref.clone().unwrap().name.unwrap(),
                    c.ready,
                    c.serving,
                    c.terminating,
                )
            })
            .collect()
    }

    #[test]
    fn conditions_table() {
        let svc = http_svc();
        let deleting = ts("2026-01-01T00:05:00Z");
        let mut term_ready = pod("c-term-ready", "10.42.0.3", true);
        term_ready.metadata.deletion_timestamp = Some(deleting.clone());
        let mut term_unready = pod("d-term-unready", "10.42.0.4", false);
        term_unready.metadata.deletion_timestamp = Some(deleting);
        let pods = vec![
            pod("a-ready", "10.42.0.1", true),
            pod("b-unready", "10.42.0.2", false),
            term_ready,
            term_unready,
        ];
        let p = run(&svc, &pods, &[], 100);
        assert_eq!(
            conditions(&p),
            vec![
                ("a-ready".into(), Some(true), Some(true), Some(false)),
                ("b-unready".into(), Some(false), Some(false), Some(false)),
                ("c-term-ready".into(), Some(false), Some(true), Some(true)),
                (
                    "d-term-unready".into(),
                    Some(false),
                    Some(false),
                    Some(true)
                ),
            ]
        );
        // publishNotReadyAddresses: ready and serving regardless.
        let mut pnra = svc.clone();
        pnra.spec.as_mut().unwrap().publish_not_ready_addresses = Some(true);
        let p = run(&pnra, &pods, &[], 100);
        assert_eq!(
            conditions(&p),
            vec![
                ("a-ready".into(), Some(true), Some(true), Some(false)),
                ("b-unready".into(), Some(true), Some(true), Some(false)),
                ("c-term-ready".into(), Some(true), Some(true), Some(true)),
                ("d-term-unready".into(), Some(true), Some(true), Some(true)),
            ]
        );
    }

    #[test]
    fn endpoint_fields_ports_labels_and_owner() {
        let mut svc = http_svc();
        svc.metadata.labels = Some(
            [
                ("team".to_string(), "x".to_string()),
                (LABEL_MANAGED_BY.to_string(), "someone".to_string()),
            ]
            .into(),
        );
        let mut a = pod("a", "10.42.0.1", true);
        a.spec.as_mut().unwrap().hostname = Some("a-0".into());
        a.spec.as_mut().unwrap().subdomain = Some("web".into());
        let mut elsewhere = pod("b", "10.42.0.2", true);
        elsewhere.spec.as_mut().unwrap().node_name = Some("n-unknown".into());
        let mut no_ip = pod("c", "", true);
        no_ip.spec.as_mut().unwrap().node_name = Some("n1".into());
        let p = run(&svc, &[a, elsewhere, no_ip], &[], 100);
        assert_eq!(p.create.len(), 1);
        let s = &p.create[0];
        assert_eq!(s.address_type, "IPv4");
        assert_eq!(s.metadata.generate_name.as_deref(), Some("web-"));
        assert_eq!(s.metadata.namespace.as_deref(), Some("default"));
        let labels = s.metadata.labels.clone().unwrap();
        assert_eq!(
            labels.get(LABEL_SERVICE_NAME).map(String::as_str),
            Some("web")
        );
        assert_eq!(
            labels.get(LABEL_MANAGED_BY).map(String::as_str),
            Some(CONTROLLER_NAME),
            "a Service label cannot claim the slice for another manager"
        );
        assert_eq!(labels.get("team").map(String::as_str), Some("x"));
        assert!(!labels.contains_key(LABEL_HEADLESS));
        let owner = &s.metadata.owner_references.as_ref().unwrap()[0];
        assert_eq!(
            (owner.kind.as_str(), owner.name.as_str(), owner.uid.as_str()),
            ("Service", "web", "uid-svc-web")
        );
        assert_eq!(owner.controller, Some(true));
        assert_eq!(owner.block_owner_deletion, Some(true));
        assert_eq!(
            s.ports,
            Some(vec![EndpointPort {
                name: Some("http".into()),
                port: Some(8080),
                protocol: Some("TCP".into()),
                app_protocol: None,
            }])
        );
        assert_eq!(s.endpoints.len(), 2, "the pod without an IP is skipped");
        let a = &s.endpoints[0];
        assert_eq!(a.addresses, vec!["10.42.0.1".to_string()]);
        assert_eq!(a.node_name.as_deref(), Some("n1"));
        assert_eq!(a.zone.as_deref(), Some("zone-a"));
        assert_eq!(a.hostname.as_deref(), Some("a-0"));
        let t = a.target_ref.as_ref().unwrap();
        assert_eq!(
            (
                t.kind.as_deref(),
                t.name.as_deref(),
                t.namespace.as_deref(),
                t.uid.as_deref()
            ),
            (Some("Pod"), Some("a"), Some("default"), Some("uid-a"))
        );
        let b = &s.endpoints[1];
        assert_eq!(b.node_name.as_deref(), Some("n-unknown"));
        assert_eq!(b.zone, None, "a node that does not exist has no zone");
        assert_eq!(b.hostname, None);
    }

    #[test]
    fn headless_services_get_the_headless_label() {
        let mut svc = http_svc();
        svc.spec.as_mut().unwrap().cluster_ip = Some("None".into());
        let p = run(&svc, &[pod("a", "10.42.0.1", true)], &[], 100);
        let labels = p.create[0].metadata.labels.clone().unwrap();
        assert_eq!(labels.get(LABEL_HEADLESS).map(String::as_str), Some(""));
    }

    #[test]
    fn named_ports_resolving_differently_go_to_different_slices() {
        let svc = http_svc();
        let pods = vec![
            with_http_port(pod("a", "10.42.0.1", true), 8080),
            with_http_port(pod("b", "10.42.0.2", true), 9090),
            with_http_port(pod("c", "10.42.0.3", true), 8080),
        ];
        let p = run(&svc, &pods, &[], 100);
        assert_eq!(p.create.len(), 2);
        let mut got: Vec<(i32, Vec<String>)> = p
            .create
            .iter()
            .map(|s| {
                (
                    s.ports.as_ref().unwrap()[0].port.unwrap(),
                    s.endpoints.iter().map(|e| e.addresses[0].clone()).collect(),
                )
            })
            .collect();
        got.sort();
        assert_eq!(
            got,
            vec![
                (8080, vec!["10.42.0.1".into(), "10.42.0.3".into()]),
                (9090, vec!["10.42.0.2".into()]),
            ]
        );
        // A pod lacking the named port serves the Service's other ports only.
        let two = service(
            "web",
            vec![
                port("http", 80, IntOrString::String("http".into())),
                port("metrics", 9100, IntOrString::Int(9100)),
            ],
        );
        let mut bare = pod("d", "10.42.0.4", true);
        bare.spec.as_mut().unwrap().containers[0].ports = None;
        let p = run(&two, &[pod("a", "10.42.0.1", true), bare], &[], 100);
        let mut sets: Vec<Vec<i32>> = p
            .create
            .iter()
            .map(|s| {
                let mut v: Vec<i32> = s.ports.iter().flatten().filter_map(|p| p.port).collect();
                v.sort();
                v
            })
            .collect();
        sets.sort();
        assert_eq!(sets, vec![vec![8080, 9100], vec![9100]]);
    }

    fn many(n: usize) -> Vec<Pod> {
        (0..n)
            .map(|i| {
                pod(
                    &format!("p{i:03}"),
                    &format!("10.42.{}.{}", i / 200, i % 200 + 1),
                    true,
                )
            })
            .collect()
    }

    #[test]
    fn two_hundred_fifty_pods_make_three_slices_and_one_change_touches_one() {
        let svc = http_svc();
        let mut pods = many(250);
        let p = run(&svc, &pods, &[], 100);
        let mut sizes: Vec<usize> = p.create.iter().map(|s| s.endpoints.len()).collect();
        sizes.sort();
        assert_eq!(sizes, vec![50, 100, 100]);
        assert!(p.update.is_empty() && p.delete.is_empty());
        let mut state = Vec::new();
        let mut n = 0;
        apply(&mut state, &p, &mut n);

        // Nothing changed: nothing to write.
        assert!(run(&svc, &pods, &state, 100).is_empty());

        // One pod turns not ready: only its slice is rewritten.
        pods[120]
            .status
            .as_mut()
            .unwrap()
            .conditions
            .as_mut()
            .unwrap()[0]
            .status = "False".into();
        let p = run(&svc, &pods, &state, 100);
        assert!(p.create.is_empty() && p.delete.is_empty());
        assert_eq!(p.update.len(), 1);
        let holder = state
            .iter()
            .find(|s| {
                s.endpoints
                    .iter()
                    .any(|e| e.target_ref.as_ref().unwrap().name.as_deref() == Some("p120"))
            })
            .unwrap();
        assert_eq!(p.update[0].metadata.name, holder.metadata.name);
        let e = p.update[0]
            .endpoints
            .iter()
            .find(|e| e.target_ref.as_ref().unwrap().name.as_deref() == Some("p120"))
            .unwrap();
        assert_eq!(e.conditions.as_ref().unwrap().ready, Some(false));
        apply(&mut state, &p, &mut n);

        // One pod deleted: only its slice is rewritten.
        let gone = pods.remove(10);
        let p = run(&svc, &pods, &state, 100);
        assert_eq!((p.create.len(), p.update.len(), p.delete.len()), (0, 1, 0));
        assert!(p.update[0]
            .endpoints
            .iter()
            .all(|e| e.target_ref.as_ref().unwrap().name != gone.metadata.name));
        apply(&mut state, &p, &mut n);

        // A new pod fills an existing slice instead of creating one.
        pods.push(pod("zz-new", "10.42.9.9", true));
        let p = run(&svc, &pods, &state, 100);
        assert_eq!((p.create.len(), p.update.len(), p.delete.len()), (0, 1, 0));
        apply(&mut state, &p, &mut n);
        assert_eq!(state.len(), 3);
        assert!(state.iter().all(|s| s.endpoints.len() <= 100));
        assert_eq!(state.iter().map(|s| s.endpoints.len()).sum::<usize>(), 250);
    }

    #[test]
    fn new_endpoints_fill_the_slice_they_fit_closest_to_full() {
        let svc = http_svc();
        let mut pods = many(150); // slices of 100 and 50
        let mut state = Vec::new();
        let mut n = 0;
        apply(&mut state, &run(&svc, &pods, &[], 100), &mut n);
        pods.extend(many(200).into_iter().skip(150).take(30));
        let p = run(&svc, &pods, &state, 100);
        assert_eq!((p.create.len(), p.update.len()), (0, 1));
        assert_eq!(p.update[0].endpoints.len(), 80);
    }

    #[test]
    fn terminating_pods_stay_until_gone_and_empty_services_keep_a_placeholder() {
        let svc = http_svc();
        let mut pods = vec![pod("a", "10.42.0.1", true)];
        let mut state = Vec::new();
        let mut n = 0;
        apply(&mut state, &run(&svc, &pods, &[], 100), &mut n);
        pods[0].metadata.deletion_timestamp = Some(ts("2026-01-01T00:05:00Z"));
        let p = run(&svc, &pods, &state, 100);
        assert_eq!(
            conditions(&p),
            vec![("a".into(), Some(false), Some(true), Some(true))]
        );
        apply(&mut state, &p, &mut n);
        // The pod is gone: the slice is emptied into the placeholder (an update, not a
        // delete and create), with no ports.
        let p = run(&svc, &[], &state, 100);
        assert_eq!((p.create.len(), p.update.len(), p.delete.len()), (0, 1, 0));
        assert!(p.update[0].endpoints.is_empty());
        assert_eq!(p.update[0].ports, None);
        apply(&mut state, &p, &mut n);
        assert!(
            run(&svc, &[], &state, 100).is_empty(),
            "the placeholder stays"
        );
        // A service with no pods at all gets a placeholder created.
        let p = run(&svc, &[], &[], 100);
        assert_eq!(p.create.len(), 1);
        assert!(p.create[0].endpoints.is_empty());
    }

    #[test]
    fn slices_of_another_owner_are_deleted_and_label_drift_is_repaired() {
        let svc = http_svc();
        let pods = vec![pod("a", "10.42.0.1", true)];
        let mut state = Vec::new();
        let mut n = 0;
        apply(&mut state, &run(&svc, &pods, &[], 100), &mut n);
        // The Service was recreated (new uid): its old slice goes, a new one comes.
        let mut again = svc.clone();
        again.metadata.uid = Some("uid-svc-web-2".into());
        let p = run(&again, &pods, &state, 100);
        assert_eq!((p.create.len(), p.update.len(), p.delete.len()), (1, 0, 1));
        // A label added to the Service is copied onto the slice.
        let mut labelled = svc.clone();
        labelled.metadata.labels = Some([("tier".to_string(), "fe".to_string())].into());
        let p = run(&labelled, &pods, &state, 100);
        assert_eq!((p.create.len(), p.update.len(), p.delete.len()), (0, 1, 0));
        assert_eq!(
            p.update[0].metadata.labels.as_ref().unwrap().get("tier"),
            Some(&"fe".to_string())
        );
    }

    #[test]
    fn a_port_change_rewrites_slices_in_place() {
        let svc = http_svc();
        let pods = many(150);
        let mut state = Vec::new();
        let mut n = 0;
        apply(&mut state, &run(&svc, &pods, &[], 100), &mut n);
        let numeric = service("web", vec![port("http", 80, IntOrString::Int(7070))]);
        let p = run(&numeric, &pods, &state, 100);
        // Two slices of the old port set become two of the new one: updates, no churn.
        assert_eq!((p.create.len(), p.update.len(), p.delete.len()), (0, 2, 0));
        assert!(p
            .update
            .iter()
            .all(|s| s.ports.as_ref().unwrap()[0].port == Some(7070)));
    }

    #[test]
    fn max_endpoints_per_slice_is_honoured() {
        let svc = http_svc();
        let p = run(&svc, &many(25), &[], 10);
        let mut sizes: Vec<usize> = p.create.iter().map(|s| s.endpoints.len()).collect();
        sizes.sort();
        assert_eq!(sizes, vec![5, 10, 10]);
    }

    #[test]
    fn trigger_time_is_written_on_changed_slices_only() {
        let svc = http_svc();
        let pods = [pod("a", "10.42.0.1", true)];
        let refs: Vec<&Pod> = pods.iter().collect();
        let t = ts("2026-01-01T00:01:00Z");
        let zones = HashMap::new();
        let p = plan(&Inputs {
            service: &svc,
            pods: &refs,
            node_zones: &zones,
            existing: &[],
            max_endpoints_per_slice: 100,
            trigger_time: Some(&t),
        });
        assert_eq!(
            p.create[0]
                .metadata
                .annotations
                .as_ref()
                .unwrap()
                .get(TRIGGER_TIME_ANNOTATION)
                .map(String::as_str),
            Some("2026-01-01T00:01:00Z")
        );
    }
}
