//! Kubernetes objects → datapath [`Model`]: the pure function at the front of
//! `translate` → `reconcile` → `lbmap`.
//!
//! [`translate`] takes every Service and EndpointSlice the agent watches plus what it knows
//! about its own node, and returns the desired [`Model`] and the [`Diagnostic`]s for values it
//! had to drop. It does no IO, keeps no state, never panics on any input, and its output does
//! not depend on the order of its input (maps are keyed and vectors sorted) except that, when
//! the same Service appears twice, the first one is used.
//!
//! The rules are kube-proxy's (`pkg/proxy`: `servicechangetracker.go`, `serviceport.go`,
//! `endpointslicecache.go`, `util/utils.go`, and the informer label selectors in
//! `cmd/kube-proxy/app/server.go`); each function says which one it implements and where we
//! differ. The datapath is IPv4-only today, so this is kube-proxy's *IPv4* proxier: IPv6
//! addresses are dropped silently, and a Service with only IPv6 cluster IPs is not
//! programmed at all.
//!
//! What is diagnosed and what is silent: values that a valid, API-server-validated object
//! never contains (an unknown protocol, port 0, a malformed IP, duplicate port names) produce
//! a [`Diagnostic`] naming the object and field, and only that value (or that port) is
//! dropped; the rest of the object still translates. Objects that are valid but not ours to
//! program (ExternalName, headless, owned by another proxy, IPv6-only) are skipped silently,
//! as kube-proxy skips them.

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt,
    net::{IpAddr, Ipv4Addr},
    sync::Arc,
};

use k8s_openapi::api::{
    core::v1::{LoadBalancerIngress, Service},
    discovery::v1::{Endpoint as K8sEndpoint, EndpointConditions, EndpointSlice},
};

use crate::model::{
    Endpoint, EndpointState, Frontend, FrontendKind, Model, Protocol, ServicePort, ServicePortName,
};

/// EndpointSlice label naming the Service the slice belongs to (discovery/v1
/// `LabelServiceName`).
pub const LABEL_SERVICE_NAME: &str = "kubernetes.io/service-name";
/// Service/EndpointSlice label saying another service proxy owns the object (KEP-2447).
pub const LABEL_SERVICE_PROXY_NAME: &str = "service.kubernetes.io/service-proxy-name";
/// Label the EndpointSlice controller puts on slices of headless Services (core/v1
/// `IsHeadlessService`).
pub const LABEL_HEADLESS: &str = "service.kubernetes.io/headless";

/// What the agent knows about the node it runs on.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeContext {
    /// This node's name, compared with endpoints' `nodeName` to mark them local. Empty
    /// means no endpoint is local (kube-proxy's `isLocal` needs a non-empty hostname).
    pub node_name: String,
    /// The addresses NodePorts are exposed on.
    pub node_addresses: Vec<Ipv4Addr>,
    /// Cluster-wide default load-balancing algorithm is Maglev (a Service's
    /// `skiff.io/lb-algorithm` annotation overrides it either way).
    pub default_maglev: bool,
}

/// A value that could not be translated and was dropped.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Diagnostic {
    /// `Service default/web` or `EndpointSlice default/web-abc`.
    pub object: String,
    /// JSON path of the offending field inside the object, e.g. `spec.ports[1].protocol`.
    pub field: String,
    /// What was wrong, what skiff did about it, and what to fix.
    pub message: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}: {}", self.object, self.field, self.message)
    }
}

/// Translates Services and EndpointSlices into the datapath model; diagnostics come back
/// sorted and without duplicates.
///
/// The rules, and the kube-proxy code each comes from:
/// - Services and slices labelled `service.kubernetes.io/service-proxy-name` or
///   `service.kubernetes.io/headless` are ignored (the informers' label selector).
/// - ExternalName and headless (`clusterIP: None`) Services are skipped (`ShouldSkipService`),
///   and so are Services without an IPv4 cluster IP (`GetClusterIPByFamily` +
///   `serviceToServiceMap` in the IPv4 proxier).
/// - Each `spec.ports[]` entry is one `namespace/name:port-name`, with frontends at every IPv4
///   cluster IP, at every node address on `nodePort` (NodePort and LoadBalancer types), at
///   every IPv4 VIP-mode `status.loadBalancer.ingress[].ip` (LoadBalancer type), and at every
///   IPv4 `spec.externalIPs` entry (`newBaseServiceInfo`). Protocol absent means TCP.
/// - Endpoints come from the Service's IPv4 slices, from slice ports with the same name and
///   protocol (`endpointInfoByServicePort`), first address only, deduplicated by
///   address:port (`addEndpoints`), ready → active, serving and terminating → terminating
///   (`CategorizeEndpoints`, ProxyTerminatingEndpoints), the rest → not ready (no new
///   flows, established ones kept), local when `nodeName` is this node.
/// - A Service without endpoints keeps its frontends, so the datapath rejects its traffic
///   (kube-proxy's "has no endpoints" REJECT rule) instead of letting it escape.
pub fn translate(
    services: &[Service],
    slices: &[EndpointSlice],
    node: &NodeContext,
) -> (Model, Vec<Diagnostic>) {
    let mut diags = Vec::new();

    // Services first, so slices are only parsed (and diagnosed) for services we program.
    let mut translated: BTreeMap<(String, String), TranslatedService> = BTreeMap::new();
    for svc in services {
        let Some(t) = translate_service(svc, node, &mut diags) else {
            continue;
        };
        let key = (t.namespace.to_string(), t.name.to_string());
        if translated.contains_key(&key) {
            diags.push(Diagnostic {
                object: format!("Service {}/{}", key.0, key.1),
                field: "metadata.name".into(),
                message: "this Service appears more than once in the input; only the first \
                          copy is programmed. This is a bug in the caller's object cache."
                    .into(),
            });
            continue;
        }
        translated.insert(key, t);
    }

    // kube-proxy groups slices by (namespace, kubernetes.io/service-name) in
    // `endpointSliceCacheKeys`; a slice without the label belongs to no Service.
    let mut slices_by_service: BTreeMap<(String, String), Vec<ParsedSlice>> = BTreeMap::new();
    for slice in slices {
        let Some(key) = slice_service_key(slice) else {
            continue;
        };
        if !translated.contains_key(&key) {
            continue;
        }
        if let Some(parsed) = parse_slice(slice, node, &mut diags) {
            slices_by_service.entry(key).or_default().push(parsed);
        }
    }

    let mut model = Model::default();
    for (key, svc) in &translated {
        let service_slices: Vec<&ParsedSlice> =
            slices_by_service.get(key).into_iter().flatten().collect();
        model.services.extend(service_ports(svc, &service_slices));
    }

    diags.sort();
    diags.dedup();
    (model, diags)
}

/// A Service reduced to what the model needs: its valid ports with their frontends. What
/// the service sync keeps per Service instead of the object (a few hundred bytes instead
/// of kilobytes of metadata, managedFields and status). Built once per Service version
/// and kept for its lifetime, so its slices are exact (boxed, no spare capacity) and its
/// names are the shared strings every [`ServicePortName`] of the Service points to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TranslatedService {
    pub namespace: Arc<str>,
    pub name: Arc<str>,
    ports: Box<[PortFrontends]>,
}

/// The model entries of one translated Service, with endpoints from its parsed slices (the
/// slices labelled with its name, in any order): the per-Service step of [`translate`], so
/// a change to one Service or one of its slices recomputes only that Service.
pub fn service_ports(
    svc: &TranslatedService,
    slices: &[&ParsedSlice],
) -> Vec<(ServicePortName, ServicePort)> {
    svc.ports
        .iter()
        .map(|port| {
            (
                ServicePortName {
                    namespace: svc.namespace.clone(),
                    name: svc.name.clone(),
                    port: port.name.clone(),
                },
                ServicePort {
                    proto: Some(port.proto),
                    frontends: port.frontends.to_vec(),
                    endpoints: endpoints_for(&port.name, port.proto, slices),
                    external_local: port.external_local,
                    internal_local: port.internal_local,
                    source_ranges: port.source_ranges.to_vec(),
                    affinity_timeout: port.affinity_timeout,
                    maglev: port.maglev,
                    health_check_node_port: port.health_check_node_port,
                },
            )
        })
        .collect()
}

/// One valid service port with its frontends, before endpoints are attached.
#[derive(Debug, Clone, PartialEq, Eq)]
struct PortFrontends {
    name: Arc<str>,
    proto: Protocol,
    frontends: Box<[Frontend]>,
    external_local: bool,
    internal_local: bool,
    source_ranges: Box<[(Ipv4Addr, u8)]>,
    affinity_timeout: Option<u32>,
    maglev: bool,
    health_check_node_port: Option<u16>,
}

/// Parses an IPv4 or IPv6 CIDR: `Some(Some(v4 range))`, `Some(None)` for IPv6, `None`
/// when malformed. Host bits are cleared, as upstream's validation does.
pub fn parse_cidr(s: &str) -> Option<Option<(Ipv4Addr, u8)>> {
    let (addr, len) = s.trim().split_once('/')?;
    let len: u8 = len.parse().ok()?;
    if addr.contains(':') {
        let _: std::net::Ipv6Addr = addr.parse().ok()?;
        return (len <= 128).then_some(None);
    }
    let addr: Ipv4Addr = addr.parse().ok()?;
    if len > 32 {
        return None;
    }
    let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
    Some(Some((Ipv4Addr::from(u32::from(addr) & mask), len)))
}

/// The Service types kube-proxy programs (ExternalName is filtered out before this).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ServiceType {
    ClusterIp,
    NodePort,
    LoadBalancer,
}

fn object_name(kind: &str, namespace: Option<&str>, name: Option<&str>) -> String {
    let ns = namespace
        .filter(|s| !s.is_empty())
        .unwrap_or("<no namespace>");
    let name = name.filter(|s| !s.is_empty()).unwrap_or("<no name>");
    format!("{kind} {ns}/{name}")
}

fn has_label(labels: Option<&BTreeMap<String, String>>, key: &str) -> bool {
    labels.is_some_and(|l| l.contains_key(key))
}

/// Service → its valid ports with frontends, or `None` when the Service is skipped
/// (diagnostics for the values it dropped go to `diags`).
pub fn translate_service(
    svc: &Service,
    node: &NodeContext,
    diags: &mut Vec<Diagnostic>,
) -> Option<TranslatedService> {
    let meta = &svc.metadata;
    let object = object_name("Service", meta.namespace.as_deref(), meta.name.as_deref());
    let mut diag = |field: String, message: String| {
        diags.push(Diagnostic {
            object: object.clone(),
            field,
            message,
        })
    };

    // kube-proxy's informers select `!service.kubernetes.io/service-proxy-name` (another
    // proxy owns the Service, KEP-2447) and `!service.kubernetes.io/headless`; such Services
    // never reach the proxier, so they are skipped without a word.
    let labels = meta.labels.as_ref();
    if has_label(labels, LABEL_SERVICE_PROXY_NAME) || has_label(labels, LABEL_HEADLESS) {
        return None;
    }
    let spec = svc.spec.as_ref();
    let type_name = spec.and_then(|s| s.type_.as_deref());
    // `ShouldSkipService`: ExternalName Services are a DNS CNAME, nothing to proxy.
    if type_name == Some("ExternalName") {
        return None;
    }

    let cluster_ips: Vec<(String, &str)> = match spec {
        Some(s) if s.cluster_ips.as_ref().is_some_and(|ips| !ips.is_empty()) => s
            .cluster_ips
            .iter()
            .flatten()
            .enumerate()
            .map(|(i, ip)| (format!("spec.clusterIPs[{i}]"), ip.as_str()))
            .collect(),
        Some(s) => s
            .cluster_ip
            .iter()
            .filter(|ip| !ip.is_empty())
            .map(|ip| ("spec.clusterIP".to_owned(), ip.as_str()))
            .collect(),
        None => Vec::new(),
    };
    // `ShouldSkipService` / `IsServiceIPSet`: `clusterIP: None` is a headless Service, DNS
    // only. (`clusterIPs[0]` is authoritative when set; the API server keeps the two in sync.)
    if cluster_ips.first().is_some_and(|(_, ip)| *ip == "None") {
        return None;
    }

    let Some(namespace) = meta.namespace.clone().filter(|s| !s.is_empty()) else {
        diag(
            "metadata.namespace".into(),
            "is empty; a Service is namespaced and cannot be matched with its EndpointSlices \
             without one, so it is not programmed. The object did not come from the API server \
             as stored; check the watch that produced it."
                .into(),
        );
        return None;
    };
    let Some(name) = meta.name.clone().filter(|s| !s.is_empty()) else {
        diag(
            "metadata.name".into(),
            "is empty; the Service is not programmed. The object did not come from the API \
             server as stored; check the watch that produced it."
                .into(),
        );
        return None;
    };

    // `ShouldSkipService` also skips a Service whose cluster IP is unset. The API server
    // always allocates one for ClusterIP/NodePort/LoadBalancer Services, so unlike
    // kube-proxy (a V(3) log line) we say so.
    if cluster_ips.is_empty() {
        diag(
            "spec.clusterIP".into(),
            "is empty; kube-proxy semantics skip a Service without a cluster IP, so nothing is \
             programmed for it. The API server allocates one on create: check that the Service \
             was stored by a conforming API server."
                .into(),
        );
        return None;
    }
    let mut v4_cluster_ips = Vec::new();
    let mut saw_v6 = false;
    let mut saw_invalid = false;
    for (field, ip) in &cluster_ips {
        match parse_ip(ip) {
            ParsedIp::V4(a) => v4_cluster_ips.push(a),
            ParsedIp::V6 => saw_v6 = true,
            ParsedIp::Invalid => {
                saw_invalid = true;
                diag(field.clone(), invalid_ip_message(ip, "cluster IP"));
            }
        }
    }
    // `GetClusterIPByFamily` returns "" for the IPv4 proxier when the Service has no IPv4
    // cluster IP, and `serviceToServiceMap` then drops the whole Service: an IPv6-only Service
    // gets no IPv4 NodePorts or external IPs either. A Service whose only IPv4 candidate was
    // malformed is not known to be IPv6-only, so its other frontends still go on.
    if v4_cluster_ips.is_empty() && saw_v6 && !saw_invalid {
        return None;
    }

    let service_type = match type_name {
        None | Some("ClusterIP") => ServiceType::ClusterIp,
        Some("NodePort") => ServiceType::NodePort,
        Some("LoadBalancer") => ServiceType::LoadBalancer,
        Some(other) => {
            diag(
                "spec.type".into(),
                format!(
                    "{other:?} is not one of ClusterIP, NodePort, LoadBalancer, ExternalName; \
                     the Service is programmed as ClusterIP (no NodePort or load-balancer \
                     frontends). Fix the Service's type."
                ),
            );
            ServiceType::ClusterIp
        }
    };

    // `newBaseServiceInfo`: external IPs filtered to the proxier's family (`MapIPsByIPFamily`,
    // which also drops unparsable ones).
    let mut external_ips = Vec::new();
    for (i, ip) in spec
        .and_then(|s| s.external_ips.as_ref())
        .into_iter()
        .flatten()
        .enumerate()
    {
        match parse_ip(ip) {
            ParsedIp::V4(a) => external_ips.push(a),
            ParsedIp::V6 => {}
            ParsedIp::Invalid => diag(
                format!("spec.externalIPs[{i}]"),
                invalid_ip_message(ip, "external IP"),
            ),
        }
    }

    // Load-balancer VIPs come from the status, and only for type LoadBalancer: a Service that
    // changed type may still carry a stale status until its controller clears it.
    let mut lb_ips = Vec::new();
    if service_type == ServiceType::LoadBalancer {
        let ingress = svc
            .status
            .as_ref()
            .and_then(|s| s.load_balancer.as_ref())
            .and_then(|lb| lb.ingress.as_ref());
        for (i, ing) in ingress.into_iter().flatten().enumerate() {
            if let Some(a) = lb_ingress_ip(i, ing, &mut diag) {
                lb_ips.push(a);
            }
        }
    }

    // kube-proxy's ExternalPolicyLocal: only meaningful for NodePort and LoadBalancer
    // services (upstream's apiserver rejects it on ClusterIP services).
    let external_local = service_type != ServiceType::ClusterIp
        && spec.and_then(|s| s.external_traffic_policy.as_deref()) == Some("Local");
    let internal_local = spec.and_then(|s| s.internal_traffic_policy.as_deref()) == Some("Local");
    // kube-proxy honours loadBalancerSourceRanges for LoadBalancer services only.
    let mut source_ranges = Vec::new();
    if service_type == ServiceType::LoadBalancer {
        for (i, cidr) in spec
            .and_then(|s| s.load_balancer_source_ranges.as_ref())
            .into_iter()
            .flatten()
            .enumerate()
        {
            match parse_cidr(cidr) {
                Some(Some(range)) => source_ranges.push(range),
                // An IPv6 range never matches an IPv4 client: nothing to program.
                Some(None) => {}
                None => diag(
                    format!("spec.loadBalancerSourceRanges[{i}]"),
                    format!(
                        "{cidr:?} is not a CIDR (like 203.0.113.0/24); it is ignored, so \
                         fewer sources are allowed than intended. Fix the range."
                    ),
                ),
            }
        }
    }
    // Only meaningful (and only allocated upstream) for LoadBalancer + eTP=Local.
    let health_check_node_port = (service_type == ServiceType::LoadBalancer && external_local)
        .then(|| spec.and_then(|s| s.health_check_node_port))
        .flatten()
        .and_then(|p| u16::try_from(p).ok())
        .filter(|p| *p > 0);
    // skiff's per-service load-balancing algorithm (Cilium: service.cilium.io/lb-algorithm).
    let maglev = match svc
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get("skiff.io/lb-algorithm"))
        .map(String::as_str)
    {
        None => node.default_maglev,
        Some("random") => false,
        Some("maglev") => true,
        Some(other) => {
            diag(
                "metadata.annotations[skiff.io/lb-algorithm]".into(),
                format!("{other:?} is not a load-balancing algorithm (use random or maglev); random is used."),
            );
            false
        }
    };
    // Session affinity: kube-proxy's default timeout is 10800 s (3 h).
    let affinity_timeout = (spec.and_then(|s| s.session_affinity.as_deref()) == Some("ClientIP"))
        .then(|| {
            spec.and_then(|s| s.session_affinity_config.as_ref())
                .and_then(|c| c.client_ip.as_ref())
                .and_then(|c| c.timeout_seconds)
                .filter(|t| *t > 0)
                .map_or(10800, |t| t as u32)
        });
    let k8s_ports = spec.and_then(|s| s.ports.as_ref());
    if k8s_ports.is_none_or(|p| p.is_empty()) {
        diag(
            "spec.ports".into(),
            "is empty; a non-headless Service needs at least one port, so nothing is \
             programmed for it. Add a port to the Service."
                .into(),
        );
        return None;
    }

    let mut ports: Vec<PortFrontends> = Vec::new();
    // Port name → index of the spec.ports entry that claimed it.
    let mut names: BTreeMap<String, usize> = BTreeMap::new();
    for (i, p) in k8s_ports.into_iter().flatten().enumerate() {
        let port_name = p.name.clone().unwrap_or_default();
        let proto = Protocol::from_k8s(p.protocol.as_deref());
        if proto.is_none() {
            diag(
                format!("spec.ports[{i}].protocol"),
                format!(
                    "{:?} is not one of TCP, UDP, SCTP; this port is not programmed, the \
                     Service's other ports are. Fix the port's protocol.",
                    p.protocol.as_deref().unwrap_or_default()
                ),
            );
        }
        let port = valid_port(p.port);
        if port.is_none() {
            diag(
                format!("spec.ports[{i}].port"),
                format!(
                    "{} is not a port number (1-65535); this port is not programmed, the \
                     Service's other ports are. Fix the port number.",
                    p.port
                ),
            );
        }
        // The model keys service ports by namespace/name/port-name (kube-proxy adds the
        // protocol); the API server requires unique port names, so a duplicate can only be
        // a malformed object.
        let duplicate_of = names.get(&port_name).copied();
        if let Some(first) = duplicate_of {
            diag(
                format!("spec.ports[{i}].name"),
                format!(
                    "port name {port_name:?} is already used by spec.ports[{first}]; port names \
                     must be unique within a Service, so this port is not programmed. Rename \
                     one of the ports."
                ),
            );
        }
        let (Some(proto), Some(port), None) = (proto, port, duplicate_of) else {
            continue;
        };
        names.insert(port_name.clone(), i);

        let mut frontends = Vec::new();
        let at = |addrs: &[Ipv4Addr], port: u16, kind: FrontendKind| -> Vec<Frontend> {
            addrs
                .iter()
                .map(|&addr| Frontend {
                    addr,
                    port,
                    proto,
                    kind,
                })
                .collect()
        };
        frontends.extend(at(&v4_cluster_ips, port, FrontendKind::ClusterIp));
        // NodePorts: every node address at nodePort, for NodePort and LoadBalancer Services
        // (a LoadBalancer with `allocateLoadBalancerNodePorts: false` has no nodePort). 0 or
        // absent means "no NodePort".
        if let Some(np) = p.node_port.filter(|&np| np != 0) {
            match valid_port(np) {
                Some(np) if service_type != ServiceType::ClusterIp => {
                    frontends.extend(at(&node.node_addresses, np, FrontendKind::NodePort));
                }
                // The API server clears nodePort when a Service becomes ClusterIP.
                Some(_) => {}
                None => diag(
                    format!("spec.ports[{i}].nodePort"),
                    format!(
                        "{np} is not a port number (1-65535); this port gets no NodePort \
                         frontends, its other frontends are programmed. Fix the nodePort."
                    ),
                ),
            }
        }
        frontends.extend(at(&lb_ips, port, FrontendKind::LoadBalancer));
        frontends.extend(at(&external_ips, port, FrontendKind::ExternalIp));
        frontends.sort();
        frontends.dedup();
        ports.push(PortFrontends {
            name: port_name.into(),
            proto,
            frontends: frontends.into_boxed_slice(),
            external_local,
            internal_local,
            source_ranges: source_ranges.as_slice().into(),
            affinity_timeout,
            maglev,
            health_check_node_port,
        });
    }
    Some(TranslatedService {
        namespace: namespace.into(),
        name: name.into(),
        ports: ports.into_boxed_slice(),
    })
}

/// `newBaseServiceInfo`'s load-balancer VIP filter: ingress entries without an IP
/// (hostname-only load balancers) are skipped, and so are entries whose `ipMode` is not
/// `VIP` (`IsVIPMode`, KEP-1860: with `ipMode: Proxy` the load balancer proxies to the
/// NodePorts itself and the node must not capture the IP).
fn lb_ingress_ip(
    i: usize,
    ing: &LoadBalancerIngress,
    diag: &mut impl FnMut(String, String),
) -> Option<Ipv4Addr> {
    let ip = ing.ip.as_deref().filter(|ip| !ip.is_empty())?;
    match ing.ip_mode.as_deref() {
        None | Some("VIP") => {}
        Some("Proxy") => return None,
        Some(other) => {
            diag(
                format!("status.loadBalancer.ingress[{i}].ipMode"),
                format!(
                    "{other:?} is not one of VIP, Proxy; like kube-proxy, skiff treats it as \
                     not VIP and does not program {ip}. Fix the load-balancer controller that \
                     wrote the status."
                ),
            );
            return None;
        }
    }
    match parse_ip(ip) {
        ParsedIp::V4(a) => Some(a),
        ParsedIp::V6 => None,
        ParsedIp::Invalid => {
            diag(
                format!("status.loadBalancer.ingress[{i}].ip"),
                format!(
                    "{ip:?} is not an IP address; this load-balancer IP is not programmed, the \
                     Service's other frontends are. Fix the load-balancer controller that wrote \
                     the status."
                ),
            );
            None
        }
    }
}

fn invalid_ip_message(ip: &str, what: &str) -> String {
    format!(
        "{ip:?} is not an IP address; this {what} is not programmed, the Service's other \
         frontends are. Fix the Service."
    )
}

fn valid_port(p: i32) -> Option<u16> {
    u16::try_from(p).ok().filter(|&p| p != 0)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ParsedIp {
    V4(Ipv4Addr),
    /// Valid, but not for the IPv4 datapath.
    V6,
    Invalid,
}

/// Parses like Kubernetes' `netutils.ParseIPSloppy`, which every kube-proxy path uses: besides
/// the canonical forms it accepts IPv4 octets with leading zeros, read as decimal (objects
/// stored before Kubernetes 1.20 tightened validation may still hold them).
fn parse_ip(s: &str) -> ParsedIp {
    match s.parse::<IpAddr>() {
        Ok(IpAddr::V4(a)) => return ParsedIp::V4(a),
        Ok(IpAddr::V6(_)) => return ParsedIp::V6,
        Err(_) => {}
    }
    let mut octets = [0u8; 4];
    let mut parts = s.split('.');
    for octet in &mut octets {
        let Some(part) = parts.next() else {
            return ParsedIp::Invalid;
        };
        if part.is_empty() || part.len() > 3 || !part.bytes().all(|b| b.is_ascii_digit()) {
            return ParsedIp::Invalid;
        }
        match part.parse::<u8>() {
            Ok(v) => *octet = v,
            Err(_) => return ParsedIp::Invalid,
        }
    }
    if parts.next().is_some() {
        return ParsedIp::Invalid;
    }
    ParsedIp::V4(Ipv4Addr::from(octets))
}

/// `(namespace, service name)` a slice belongs to, or `None` for slices kube-proxy ignores:
/// no `kubernetes.io/service-name` label (`endpointSliceCacheKeys`), or labelled as owned by
/// another proxy or headless (the informer's label selector).
pub fn slice_service_key(slice: &EndpointSlice) -> Option<(String, String)> {
    let labels = slice.metadata.labels.as_ref()?;
    if labels.contains_key(LABEL_SERVICE_PROXY_NAME) || labels.contains_key(LABEL_HEADLESS) {
        return None;
    }
    let service = labels.get(LABEL_SERVICE_NAME).filter(|s| !s.is_empty())?;
    let namespace = slice.metadata.namespace.clone().filter(|s| !s.is_empty())?;
    Some((namespace, service.clone()))
}

/// An EndpointSlice reduced to what the model needs (what the service sync keeps per
/// slice instead of the object; boxed slices, so no spare capacity is kept).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedSlice {
    /// `(port name, protocol, port number)`.
    ports: Box<[(String, Protocol, u16)]>,
    endpoints: Box<[(Ipv4Addr, EndpointState, bool)]>,
}

/// Parses an IPv4 slice; slices of other address types (IPv6, FQDN) yield `None` silently,
/// as in kube-proxy's IPv4 proxier (its per-family slice cache drops them).
pub fn parse_slice(
    slice: &EndpointSlice,
    node: &NodeContext,
    diags: &mut Vec<Diagnostic>,
) -> Option<ParsedSlice> {
    if slice.address_type != "IPv4" {
        return None;
    }
    let meta = &slice.metadata;
    let object = object_name(
        "EndpointSlice",
        meta.namespace.as_deref(),
        meta.name.as_deref(),
    );
    let mut diag = |field: String, message: String| {
        diags.push(Diagnostic {
            object: object.clone(),
            field,
            message,
        })
    };

    let mut ports = Vec::new();
    for (i, p) in slice.ports.iter().flatten().enumerate() {
        let proto = Protocol::from_k8s(p.protocol.as_deref());
        if proto.is_none() {
            diag(
                format!("ports[{i}].protocol"),
                format!(
                    "{:?} is not one of TCP, UDP, SCTP; endpoints are not programmed for this \
                     port. Fix the controller that wrote the slice.",
                    p.protocol.as_deref().unwrap_or_default()
                ),
            );
        }
        // `endpointInfoByServicePort` ignores a nil or 0 port ("all ports" is not
        // implemented by kube-proxy either).
        let port = p.port.and_then(valid_port);
        if port.is_none() {
            diag(
                format!("ports[{i}].port"),
                format!(
                    "{} is not a port number (1-65535); endpoints are not programmed for this \
                     port (a missing port, meaning \"all ports\", is not supported). Fix the \
                     controller that wrote the slice.",
                    p.port
                        .map_or_else(|| "absent".to_owned(), |p| p.to_string())
                ),
            );
        }
        if let (Some(proto), Some(port)) = (proto, port) {
            // The brief's matching rule: an absent name equals "" (kube-proxy drops ports
            // with a nil name; the EndpointSlice controller always writes one).
            ports.push((p.name.clone().unwrap_or_default(), proto, port));
        }
    }

    let mut endpoints = Vec::new();
    for (i, ep) in slice.endpoints.iter().enumerate() {
        // discovery/v1: consumers may use only the first address, and kube-proxy does.
        let Some(addr) = ep.addresses.first() else {
            diag(
                format!("endpoints[{i}].addresses"),
                "is empty; discovery/v1 requires at least one address, so this endpoint is \
                 not programmed. Fix the controller that wrote the slice."
                    .into(),
            );
            continue;
        };
        let addr = match parse_ip(addr) {
            ParsedIp::V4(a) => a,
            ParsedIp::V6 | ParsedIp::Invalid => {
                diag(
                    format!("endpoints[{i}].addresses[0]"),
                    format!(
                        "{addr:?} is not an IPv4 address, as addressType IPv4 requires; this \
                         endpoint is not programmed. Fix the controller that wrote the slice."
                    ),
                );
                continue;
            }
        };
        let state = endpoint_state(ep.conditions.as_ref());
        endpoints.push((addr, state, is_local(ep, node)));
    }
    Some(ParsedSlice {
        ports: ports.into_boxed_slice(),
        endpoints: endpoints.into_boxed_slice(),
    })
}

/// discovery/v1 conditions with the API's documented defaults: `ready` nil → true, `serving`
/// nil → "defer to ready", `terminating` nil → false. (kube-proxy's `newEndpointSliceInfo`
/// reads a nil `serving` as true; the two differ only for a not-ready, terminating endpoint
/// with `serving` unset, which the EndpointSlice controller never writes: it always sets
/// `serving`. We follow the API documentation.) Then
/// `CategorizeEndpoints`: ready endpoints take new flows; with none ready, serving and
/// terminating ones do (ProxyTerminatingEndpoints, KEP-1669); the rest take none, but stay
/// in the model as [`EndpointState::NotReady`] so their established connections survive.
fn endpoint_state(conditions: Option<&EndpointConditions>) -> EndpointState {
    let ready = conditions.and_then(|c| c.ready).unwrap_or(true);
    let serving = conditions.and_then(|c| c.serving).unwrap_or(ready);
    let terminating = conditions.and_then(|c| c.terminating).unwrap_or(false);
    if ready {
        EndpointState::Active
    } else if serving && terminating {
        EndpointState::Terminating
    } else {
        EndpointState::NotReady
    }
}

/// kube-proxy's `isLocal`: the endpoint's `nodeName` is this node, and this node has a name.
fn is_local(ep: &K8sEndpoint, node: &NodeContext) -> bool {
    !node.node_name.is_empty() && ep.node_name.as_deref() == Some(node.node_name.as_str())
}

/// Endpoints of one service port: every slice port with the same name and protocol
/// contributes its endpoints at its own port number (named targetPorts resolve per pod, so
/// slices differ). One address:port appears once: active beats terminating beats not
/// ready, and among equals
/// local beats remote (kube-proxy's `addEndpoints` favours local), so the result does not
/// depend on slice order.
fn endpoints_for(name: &str, proto: Protocol, slices: &[&ParsedSlice]) -> Vec<Endpoint> {
    let mut best: BTreeMap<(Ipv4Addr, u16), (EndpointState, bool)> = BTreeMap::new();
    for slice in slices {
        let ports: BTreeSet<u16> = slice
            .ports
            .iter()
            .filter(|(n, p, _)| n == name && *p == proto)
            .map(|(_, _, port)| *port)
            .collect();
        for port in ports {
            for &(addr, state, local) in slice.endpoints.iter() {
                best.entry((addr, port))
                    .and_modify(|cur| {
                        // Smaller is better: Active < Terminating < NotReady, then local (false < true).
                        if (state, !local) < (cur.0, !cur.1) {
                            *cur = (state, local);
                        }
                    })
                    .or_insert((state, local));
            }
        }
    }
    best.into_iter()
        .map(|((addr, port), (state, local))| Endpoint {
            addr,
            port,
            state,
            local,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use serde_json::{json, Value};

    use super::*;
    use crate::model::{
        EndpointState::{Active, NotReady, Terminating},
        FrontendKind::{ClusterIp, ExternalIp, LoadBalancer, NodePort},
        Protocol::{Tcp, Udp},
    };

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    fn fe(addr: &str, port: u16, proto: Protocol, kind: FrontendKind) -> Frontend {
        Frontend {
            addr: ip(addr),
            port,
            proto,
            kind,
        }
    }

    fn ep(addr: &str, port: u16, state: EndpointState, local: bool) -> Endpoint {
        Endpoint {
            addr: ip(addr),
            port,
            state,
            local,
        }
    }

    fn port(
        ns: &str,
        name: &str,
        port: &str,
        proto: Protocol,
        frontends: Vec<Frontend>,
        endpoints: Vec<Endpoint>,
    ) -> (ServicePortName, ServicePort) {
        (
            ServicePortName::new(ns, name, port),
            ServicePort {
                proto: Some(proto),
                frontends,
                endpoints,
                ..Default::default()
            },
        )
    }

    fn model(ports: Vec<(ServicePortName, ServicePort)>) -> Model {
        Model {
            services: ports.into_iter().collect(),
        }
    }

    fn diag(object: &str, field: &str, message: &str) -> Diagnostic {
        Diagnostic {
            object: object.into(),
            field: field.into(),
            message: message.into(),
        }
    }

    /// node-a with two addresses: NodePorts appear on both.
    fn node_a() -> NodeContext {
        NodeContext {
            node_name: "node-a".into(),
            node_addresses: vec![ip("192.168.1.10"), ip("192.168.1.11")],
            ..Default::default()
        }
    }

    struct Case {
        name: &'static str,
        services: Vec<Value>,
        slices: Vec<Value>,
        node: NodeContext,
        want: Model,
        want_diags: Vec<Diagnostic>,
    }

    fn run(cases: Vec<Case>) {
        for case in cases {
            let services: Vec<Service> = case
                .services
                .into_iter()
                .map(|v| serde_json::from_value(v).expect("test Service JSON"))
                .collect();
            let slices: Vec<EndpointSlice> = case
                .slices
                .into_iter()
                .map(|v| serde_json::from_value(v).expect("test EndpointSlice JSON"))
                .collect();
            let (got, diags) = translate(&services, &slices, &case.node);
            assert_eq!(got, case.want, "case {:?}: model", case.name);
            assert_eq!(diags, case.want_diags, "case {:?}: diagnostics", case.name);

            // Input order does not matter, except which copy of a duplicated Service wins.
            let keys: BTreeSet<(Option<String>, Option<String>)> = services
                .iter()
                .map(|s| (s.metadata.namespace.clone(), s.metadata.name.clone()))
                .collect();
            if keys.len() == services.len() {
                let mut rev_services = services.clone();
                rev_services.reverse();
                let mut rev_slices = slices.clone();
                rev_slices.reverse();
                let (got_rev, diags_rev) = translate(&rev_services, &rev_slices, &case.node);
                assert_eq!(got_rev, got, "case {:?}: reversed input", case.name);
                assert_eq!(diags_rev, diags, "case {:?}: reversed input", case.name);
            }
        }
    }

    #[test]
    fn cluster_ip_with_two_ports_and_named_target_ports_in_two_slices() {
        run(vec![Case {
            name: "named targetPorts resolve to different numbers per slice",
            services: vec![json!({
                "apiVersion": "v1",
                "kind": "Service",
                "metadata": {"namespace": "default", "name": "web"},
                "spec": {
                    "type": "ClusterIP",
                    "clusterIP": "10.96.0.10",
                    "clusterIPs": ["10.96.0.10"],
                    "ports": [
                        {"name": "http", "port": 80, "targetPort": "http"},
                        {"name": "metrics", "port": 9090, "protocol": "TCP", "targetPort": "metrics"}
                    ]
                }
            })],
            slices: vec![
                json!({
                    "apiVersion": "discovery.k8s.io/v1",
                    "kind": "EndpointSlice",
                    "metadata": {
                        "namespace": "default", "name": "web-a",
                        "labels": {"kubernetes.io/service-name": "web"}
                    },
                    "addressType": "IPv4",
                    "ports": [
                        {"name": "http", "port": 8080, "protocol": "TCP"},
                        {"name": "metrics", "port": 9100, "protocol": "TCP"}
                    ],
                    "endpoints": [
                        {"addresses": ["10.244.1.5"], "nodeName": "node-a", "conditions": {"ready": true}},
                        {"addresses": ["10.244.2.7"], "nodeName": "node-b"}
                    ]
                }),
                json!({
                    "metadata": {
                        "namespace": "default", "name": "web-b",
                        "labels": {"kubernetes.io/service-name": "web"}
                    },
                    "addressType": "IPv4",
                    "ports": [
                        {"name": "metrics", "port": 9101, "protocol": "TCP"},
                        {"name": "http", "port": 8081, "protocol": "TCP"}
                    ],
                    "endpoints": [
                        {"addresses": ["10.244.3.9"], "nodeName": "node-c",
                         "conditions": {"ready": true, "serving": true, "terminating": false}}
                    ]
                }),
            ],
            node: node_a(),
            want: model(vec![
                port(
                    "default",
                    "web",
                    "http",
                    Tcp,
                    vec![fe("10.96.0.10", 80, Tcp, ClusterIp)],
                    vec![
                        ep("10.244.1.5", 8080, Active, true),
                        ep("10.244.2.7", 8080, Active, false),
                        ep("10.244.3.9", 8081, Active, false),
                    ],
                ),
                port(
                    "default",
                    "web",
                    "metrics",
                    Tcp,
                    vec![fe("10.96.0.10", 9090, Tcp, ClusterIp)],
                    vec![
                        ep("10.244.1.5", 9100, Active, true),
                        ep("10.244.2.7", 9100, Active, false),
                        ep("10.244.3.9", 9101, Active, false),
                    ],
                ),
            ]),
            want_diags: vec![],
        }]);
    }

    #[test]
    fn frontends_per_service_type() {
        run(vec![
            Case {
                name: "NodePort on every node address, per port, with its own protocol",
                services: vec![json!({
                    "metadata": {"namespace": "default", "name": "np"},
                    "spec": {
                        "type": "NodePort",
                        "clusterIP": "10.96.0.20",
                        "ports": [
                            {"name": "web", "port": 80, "nodePort": 30080},
                            {"name": "dns", "port": 53, "protocol": "UDP", "nodePort": 30053}
                        ]
                    }
                })],
                slices: vec![],
                node: node_a(),
                want: model(vec![
                    port(
                        "default",
                        "np",
                        "dns",
                        Udp,
                        vec![
                            fe("10.96.0.20", 53, Udp, ClusterIp),
                            fe("192.168.1.10", 30053, Udp, NodePort),
                            fe("192.168.1.11", 30053, Udp, NodePort),
                        ],
                        vec![],
                    ),
                    port(
                        "default",
                        "np",
                        "web",
                        Tcp,
                        vec![
                            fe("10.96.0.20", 80, Tcp, ClusterIp),
                            fe("192.168.1.10", 30080, Tcp, NodePort),
                            fe("192.168.1.11", 30080, Tcp, NodePort),
                        ],
                        vec![],
                    ),
                ]),
                want_diags: vec![],
            },
            Case {
                name: "a ClusterIP Service's stale nodePort and load-balancer status are ignored",
                services: vec![json!({
                    "metadata": {"namespace": "default", "name": "cip"},
                    "spec": {
                        "clusterIP": "10.96.0.21",
                        "ports": [{"port": 80, "nodePort": 30099}]
                    },
                    "status": {"loadBalancer": {"ingress": [{"ip": "203.0.113.21"}]}}
                })],
                slices: vec![],
                node: node_a(),
                want: model(vec![port(
                    "default",
                    "cip",
                    "",
                    Tcp,
                    vec![fe("10.96.0.21", 80, Tcp, ClusterIp)],
                    vec![],
                )]),
                want_diags: vec![],
            },
            Case {
                name: "LoadBalancer: IPv4 VIP-mode ingress IPs plus NodePorts",
                services: vec![json!({
                    "metadata": {"namespace": "default", "name": "lb"},
                    "spec": {
                        "type": "LoadBalancer",
                        "clusterIP": "10.96.0.30",
                        "ports": [{"name": "https", "port": 443, "nodePort": 31443}]
                    },
                    "status": {"loadBalancer": {"ingress": [
                        {"ip": "203.0.113.5"},
                        {"hostname": "lb.example.com"},
                        {"ip": "2001:db8::5"},
                        {"ip": "203.0.113.6", "ipMode": "Proxy"},
                        {"ip": "203.0.113.7", "ipMode": "VIP"}
                    ]}}
                })],
                slices: vec![],
                node: node_a(),
                want: model(vec![port(
                    "default",
                    "lb",
                    "https",
                    Tcp,
                    vec![
                        fe("10.96.0.30", 443, Tcp, ClusterIp),
                        fe("192.168.1.10", 31443, Tcp, NodePort),
                        fe("192.168.1.11", 31443, Tcp, NodePort),
                        fe("203.0.113.5", 443, Tcp, LoadBalancer),
                        fe("203.0.113.7", 443, Tcp, LoadBalancer),
                    ],
                    vec![],
                )]),
                want_diags: vec![],
            },
            Case {
                name: "LoadBalancer without NodePorts (allocateLoadBalancerNodePorts: false)",
                services: vec![json!({
                    "metadata": {"namespace": "default", "name": "lb-nonp"},
                    "spec": {
                        "type": "LoadBalancer",
                        "allocateLoadBalancerNodePorts": false,
                        "clusterIP": "10.96.0.31",
                        "ports": [{"port": 443}]
                    },
                    "status": {"loadBalancer": {"ingress": [{"ip": "203.0.113.31"}]}}
                })],
                slices: vec![],
                node: node_a(),
                want: model(vec![port(
                    "default",
                    "lb-nonp",
                    "",
                    Tcp,
                    vec![
                        fe("10.96.0.31", 443, Tcp, ClusterIp),
                        fe("203.0.113.31", 443, Tcp, LoadBalancer),
                    ],
                    vec![],
                )]),
                want_diags: vec![],
            },
            Case {
                name: "externalIPs at the service port, IPv6 ones dropped",
                services: vec![json!({
                    "metadata": {"namespace": "shop", "name": "ext"},
                    "spec": {
                        "clusterIP": "10.96.0.40",
                        "externalIPs": ["198.51.100.2", "2001:db8::2", "198.51.100.1"],
                        "ports": [{"port": 8080, "protocol": "TCP"}]
                    }
                })],
                slices: vec![],
                node: node_a(),
                want: model(vec![port(
                    "shop",
                    "ext",
                    "",
                    Tcp,
                    vec![
                        fe("10.96.0.40", 8080, Tcp, ClusterIp),
                        fe("198.51.100.1", 8080, Tcp, ExternalIp),
                        fe("198.51.100.2", 8080, Tcp, ExternalIp),
                    ],
                    vec![],
                )]),
                want_diags: vec![],
            },
            Case {
                name: "dual-stack: only the IPv4 cluster IP, NodePorts on IPv4 node addresses",
                services: vec![json!({
                    "metadata": {"namespace": "default", "name": "dual"},
                    "spec": {
                        "type": "NodePort",
                        "clusterIP": "fd00::50",
                        "clusterIPs": ["fd00::50", "10.96.0.50"],
                        "ipFamilies": ["IPv6", "IPv4"],
                        "ports": [{"port": 80, "nodePort": 30050}]
                    }
                })],
                slices: vec![],
                node: NodeContext {
                    node_name: "node-a".into(),
                    node_addresses: vec![ip("192.168.1.10")],
                    ..Default::default()
                },
                want: model(vec![port(
                    "default",
                    "dual",
                    "",
                    Tcp,
                    vec![
                        fe("10.96.0.50", 80, Tcp, ClusterIp),
                        fe("192.168.1.10", 30050, Tcp, NodePort),
                    ],
                    vec![],
                )]),
                want_diags: vec![],
            },
        ]);
    }

    #[test]
    fn services_kube_proxy_does_not_program_are_skipped_silently() {
        // Each Service has a ready endpoint, so only the Service-level rule hides it.
        fn with_slice(service: Value) -> Case {
            let name = service["metadata"]["name"].as_str().unwrap().to_owned();
            Case {
                name: "skipped",
                slices: vec![json!({
                    "metadata": {
                        "namespace": "default", "name": format!("{name}-1"),
                        "labels": {"kubernetes.io/service-name": name}
                    },
                    "addressType": "IPv4",
                    "ports": [{"name": "", "port": 8080, "protocol": "TCP"}],
                    "endpoints": [{"addresses": ["10.244.0.1"]}]
                })],
                services: vec![service],
                node: node_a(),
                want: Model::default(),
                want_diags: vec![],
            }
        }
        run(vec![
            Case {
                name: "headless: clusterIP None",
                ..with_slice(json!({
                    "metadata": {"namespace": "default", "name": "headless"},
                    "spec": {"clusterIP": "None", "ports": [{"port": 80}]}
                }))
            },
            Case {
                name: "headless: clusterIPs [None]",
                ..with_slice(json!({
                    "metadata": {"namespace": "default", "name": "headless2"},
                    "spec": {"clusterIP": "None", "clusterIPs": ["None"], "ports": [{"port": 80}]}
                }))
            },
            Case {
                name: "ExternalName",
                ..with_slice(json!({
                    "metadata": {"namespace": "default", "name": "cname"},
                    "spec": {"type": "ExternalName", "externalName": "db.example.com",
                             "ports": [{"port": 80}]}
                }))
            },
            Case {
                name: "owned by another proxy",
                ..with_slice(json!({
                    "metadata": {"namespace": "default", "name": "other",
                                 "labels": {"service.kubernetes.io/service-proxy-name": "other-proxy"}},
                    "spec": {"clusterIP": "10.96.1.1", "ports": [{"port": 80}]}
                }))
            },
            Case {
                name: "labelled headless",
                ..with_slice(json!({
                    "metadata": {"namespace": "default", "name": "hl",
                                 "labels": {"service.kubernetes.io/headless": ""}},
                    "spec": {"clusterIP": "10.96.1.2", "ports": [{"port": 80}]}
                }))
            },
            Case {
                name: "IPv6-only: no IPv4 NodePorts or external IPs either",
                ..with_slice(json!({
                    "metadata": {"namespace": "default", "name": "v6"},
                    "spec": {"type": "NodePort", "clusterIP": "fd00::10", "clusterIPs": ["fd00::10"],
                             "ipFamilies": ["IPv6"], "externalIPs": ["198.51.100.1"],
                             "ports": [{"port": 80, "nodePort": 30001}]}
                }))
            },
        ]);
    }

    #[test]
    fn endpoint_conditions() {
        // (ready, serving, terminating), None = field absent; expected state. Every listed
        // endpoint is in the model; the not-ready ones take no new flows.
        type Cond = Option<bool>;
        let table: &[(Cond, Cond, Cond, EndpointState)] = &[
            // All 8 explicit combinations.
            (Some(true), Some(true), Some(true), Active),
            (Some(true), Some(true), Some(false), Active),
            (Some(true), Some(false), Some(true), Active),
            (Some(true), Some(false), Some(false), Active),
            (Some(false), Some(true), Some(true), Terminating),
            (Some(false), Some(true), Some(false), NotReady),
            (Some(false), Some(false), Some(true), NotReady),
            (Some(false), Some(false), Some(false), NotReady),
            // nil variants: ready nil → true; serving nil → ready; terminating nil → false.
            (None, None, None, Active),
            (None, None, Some(true), Active),
            (None, Some(false), Some(true), Active),
            (Some(false), None, Some(true), NotReady),
            (Some(false), None, None, NotReady),
            (Some(false), Some(true), None, NotReady),
        ];
        for &(ready, serving, terminating, want) in table {
            let mut conditions = serde_json::Map::new();
            for (key, value) in [
                ("ready", ready),
                ("serving", serving),
                ("terminating", terminating),
            ] {
                if let Some(v) = value {
                    conditions.insert(key.into(), json!(v));
                }
            }
            let services: Vec<Service> = vec![serde_json::from_value(json!({
                "metadata": {"namespace": "default", "name": "c"},
                "spec": {"clusterIP": "10.96.0.60", "ports": [{"port": 80}]}
            }))
            .unwrap()];
            let slices: Vec<EndpointSlice> = vec![serde_json::from_value(json!({
                "metadata": {"namespace": "default", "name": "c-1",
                             "labels": {"kubernetes.io/service-name": "c"}},
                "addressType": "IPv4",
                "ports": [{"name": "", "port": 8080, "protocol": "TCP"}],
                "endpoints": [{"addresses": ["10.244.0.60"], "conditions": conditions}]
            }))
            .unwrap()];
            let (got, diags) = translate(&services, &slices, &node_a());
            let want_endpoints = vec![ep("10.244.0.60", 8080, want, false)];
            assert_eq!(
                got,
                model(vec![port(
                    "default",
                    "c",
                    "",
                    Tcp,
                    vec![fe("10.96.0.60", 80, Tcp, ClusterIp)],
                    want_endpoints,
                )]),
                "ready={ready:?} serving={serving:?} terminating={terminating:?}"
            );
            assert_eq!(diags, vec![]);
        }
    }

    fn local_case(name: &'static str, node: NodeContext, local_a: bool) -> Case {
        Case {
            name,
            services: vec![json!({
                "metadata": {"namespace": "default", "name": "loc"},
                "spec": {"clusterIP": "10.96.0.70", "ports": [{"port": 80}]}
            })],
            slices: vec![json!({
                "metadata": {"namespace": "default", "name": "loc-1",
                             "labels": {"kubernetes.io/service-name": "loc"}},
                "addressType": "IPv4",
                "ports": [{"name": "", "port": 8080, "protocol": "TCP"}],
                "endpoints": [
                    {"addresses": ["10.244.0.1"], "nodeName": "node-a"},
                    {"addresses": ["10.244.0.2"], "nodeName": "node-b"},
                    {"addresses": ["10.244.0.3"]},
                    {"addresses": ["10.244.0.4"], "nodeName": ""}
                ]
            })],
            node,
            want: model(vec![port(
                "default",
                "loc",
                "",
                Tcp,
                vec![fe("10.96.0.70", 80, Tcp, ClusterIp)],
                vec![
                    ep("10.244.0.1", 8080, Active, local_a),
                    ep("10.244.0.2", 8080, Active, false),
                    ep("10.244.0.3", 8080, Active, false),
                    ep("10.244.0.4", 8080, Active, false),
                ],
            )]),
            want_diags: vec![],
        }
    }

    #[test]
    fn local_and_remote_endpoints() {
        run(vec![
            local_case("on node-a", node_a(), true),
            local_case(
                "a node without a name has no local endpoints",
                NodeContext {
                    node_name: String::new(),
                    node_addresses: vec![],
                    ..Default::default()
                },
                false,
            ),
        ]);
    }

    #[test]
    fn which_slices_and_slice_ports_feed_a_service_port() {
        let ep_slice =
            |ns: &str, name: &str, labels: Value, address_type: &str, ports: Value, addr: &str| {
                json!({
                    "metadata": {"namespace": ns, "name": name, "labels": labels},
                    "addressType": address_type,
                    "ports": ports,
                    "endpoints": [{"addresses": [addr]}]
                })
            };
        let owned = json!({"kubernetes.io/service-name": "m"});
        run(vec![Case {
            name: "name and protocol match; other namespaces, families, owners do not",
            services: vec![json!({
                "metadata": {"namespace": "default", "name": "m"},
                "spec": {"clusterIP": "10.96.0.80", "ports": [{"port": 80}]}
            })],
            slices: vec![
                // Absent name and protocol match the unnamed TCP port.
                ep_slice(
                    "default",
                    "m-1",
                    owned.clone(),
                    "IPv4",
                    json!([{"port": 8080}]),
                    "10.244.0.1",
                ),
                ep_slice(
                    "default",
                    "m-2",
                    owned.clone(),
                    "IPv4",
                    json!([{"name": "", "port": 8081, "protocol": "TCP"}]),
                    "10.244.0.2",
                ),
                ep_slice(
                    "default",
                    "m-3",
                    owned.clone(),
                    "IPv4",
                    json!([{"name": "http", "port": 8082, "protocol": "TCP"}]),
                    "10.244.0.3",
                ),
                ep_slice(
                    "default",
                    "m-4",
                    owned.clone(),
                    "IPv4",
                    json!([{"name": "", "port": 8083, "protocol": "UDP"}]),
                    "10.244.0.4",
                ),
                ep_slice(
                    "other",
                    "m-5",
                    owned.clone(),
                    "IPv4",
                    json!([{"port": 8084}]),
                    "10.244.0.5",
                ),
                ep_slice(
                    "default",
                    "m-6",
                    json!({}),
                    "IPv4",
                    json!([{"port": 8085}]),
                    "10.244.0.6",
                ),
                ep_slice(
                    "default",
                    "m-7",
                    json!({"kubernetes.io/service-name": "m",
                                                  "service.kubernetes.io/service-proxy-name": "x"}),
                    "IPv4",
                    json!([{"port": 8086}]),
                    "10.244.0.7",
                ),
                ep_slice(
                    "default",
                    "m-8",
                    owned.clone(),
                    "IPv6",
                    json!([{"port": 8087}]),
                    "fd00::8",
                ),
                ep_slice(
                    "default",
                    "m-9",
                    owned.clone(),
                    "FQDN",
                    json!([{"port": 8088}]),
                    "db.example.com",
                ),
            ],
            node: node_a(),
            want: model(vec![port(
                "default",
                "m",
                "",
                Tcp,
                vec![fe("10.96.0.80", 80, Tcp, ClusterIp)],
                vec![
                    ep("10.244.0.1", 8080, Active, false),
                    ep("10.244.0.2", 8081, Active, false),
                ],
            )]),
            want_diags: vec![],
        }]);
    }

    #[test]
    fn duplicate_endpoints_across_slices_appear_once() {
        run(vec![Case {
            name: "active beats terminating, local beats remote, other ports stay apart",
            services: vec![json!({
                "metadata": {"namespace": "default", "name": "dup"},
                "spec": {"clusterIP": "10.96.0.100", "ports": [{"name": "http", "port": 80}]}
            })],
            slices: vec![
                json!({
                    "metadata": {"namespace": "default", "name": "dup-a",
                                 "labels": {"kubernetes.io/service-name": "dup"}},
                    "addressType": "IPv4",
                    "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
                    "endpoints": [
                        {"addresses": ["10.244.1.1"], "nodeName": "node-b",
                         "conditions": {"ready": false, "serving": true, "terminating": true}},
                        {"addresses": ["10.244.1.2"], "nodeName": "node-b"},
                        {"addresses": ["10.244.1.3"],
                         "conditions": {"ready": false, "serving": true, "terminating": true}}
                    ]
                }),
                json!({
                    "metadata": {"namespace": "default", "name": "dup-b",
                                 "labels": {"kubernetes.io/service-name": "dup"}},
                    "addressType": "IPv4",
                    "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
                    "endpoints": [
                        {"addresses": ["10.244.1.1"], "conditions": {"ready": true}},
                        {"addresses": ["10.244.1.2"], "nodeName": "node-a"},
                        {"addresses": ["10.244.1.3"],
                         "conditions": {"ready": false, "serving": true, "terminating": true}}
                    ]
                }),
                json!({
                    "metadata": {"namespace": "default", "name": "dup-c",
                                 "labels": {"kubernetes.io/service-name": "dup"}},
                    "addressType": "IPv4",
                    "ports": [{"name": "http", "port": 9090, "protocol": "TCP"}],
                    "endpoints": [{"addresses": ["10.244.1.2"]}]
                }),
            ],
            node: node_a(),
            want: model(vec![port(
                "default",
                "dup",
                "http",
                Tcp,
                vec![fe("10.96.0.100", 80, Tcp, ClusterIp)],
                vec![
                    ep("10.244.1.1", 8080, Active, false),
                    ep("10.244.1.2", 8080, Active, true),
                    ep("10.244.1.2", 9090, Active, false),
                    ep("10.244.1.3", 8080, Terminating, false),
                ],
            )]),
            want_diags: vec![],
        }]);
    }

    #[test]
    fn unknown_protocol_drops_that_port_only() {
        run(vec![Case {
            name: "HTTP port dropped, UDP port translated",
            services: vec![json!({
                "metadata": {"namespace": "default", "name": "proto"},
                "spec": {
                    "clusterIP": "10.96.0.90",
                    "ports": [
                        {"name": "a", "port": 80, "protocol": "HTTP"},
                        {"name": "b", "port": 81, "protocol": "UDP"}
                    ]
                }
            })],
            slices: vec![json!({
                "metadata": {"namespace": "default", "name": "proto-1",
                             "labels": {"kubernetes.io/service-name": "proto"}},
                "addressType": "IPv4",
                "ports": [
                    {"name": "a", "port": 8080, "protocol": "HTTP"},
                    {"name": "b", "port": 8081, "protocol": "UDP"}
                ],
                "endpoints": [{"addresses": ["10.244.0.90"]}]
            })],
            node: node_a(),
            want: model(vec![port(
                "default",
                "proto",
                "b",
                Udp,
                vec![fe("10.96.0.90", 81, Udp, ClusterIp)],
                vec![ep("10.244.0.90", 8081, Active, false)],
            )]),
            want_diags: vec![
                diag(
                    "EndpointSlice default/proto-1",
                    "ports[0].protocol",
                    "\"HTTP\" is not one of TCP, UDP, SCTP; endpoints are not programmed for \
                     this port. Fix the controller that wrote the slice.",
                ),
                diag(
                    "Service default/proto",
                    "spec.ports[0].protocol",
                    "\"HTTP\" is not one of TCP, UDP, SCTP; this port is not programmed, the \
                     Service's other ports are. Fix the port's protocol.",
                ),
            ],
        }]);
    }

    #[test]
    fn malformed_values_are_diagnosed_and_dropped() {
        run(vec![
            Case {
                name: "bad cluster IP, external IP, ports, nodePort, duplicate port name",
                services: vec![json!({
                    "metadata": {"namespace": "default", "name": "bad"},
                    "spec": {
                        "type": "NodePort",
                        "clusterIPs": ["10.96.0.300"],
                        "externalIPs": ["1.2.3", "198.51.100.9"],
                        "ports": [
                            {"name": "zero", "port": 0},
                            {"name": "big", "port": 70000},
                            {"name": "ok", "port": 80, "nodePort": 70000},
                            {"name": "np", "port": 81, "nodePort": 30081},
                            {"name": "ok", "port": 82}
                        ]
                    }
                })],
                slices: vec![],
                node: node_a(),
                want: model(vec![
                    port(
                        "default",
                        "bad",
                        "np",
                        Tcp,
                        vec![
                            fe("192.168.1.10", 30081, Tcp, NodePort),
                            fe("192.168.1.11", 30081, Tcp, NodePort),
                            fe("198.51.100.9", 81, Tcp, ExternalIp),
                        ],
                        vec![],
                    ),
                    port(
                        "default",
                        "bad",
                        "ok",
                        Tcp,
                        vec![fe("198.51.100.9", 80, Tcp, ExternalIp)],
                        vec![],
                    ),
                ]),
                want_diags: vec![
                    diag(
                        "Service default/bad",
                        "spec.clusterIPs[0]",
                        "\"10.96.0.300\" is not an IP address; this cluster IP is not programmed, \
                         the Service's other frontends are. Fix the Service.",
                    ),
                    diag(
                        "Service default/bad",
                        "spec.externalIPs[0]",
                        "\"1.2.3\" is not an IP address; this external IP is not programmed, the \
                         Service's other frontends are. Fix the Service.",
                    ),
                    diag(
                        "Service default/bad",
                        "spec.ports[0].port",
                        "0 is not a port number (1-65535); this port is not programmed, the \
                         Service's other ports are. Fix the port number.",
                    ),
                    diag(
                        "Service default/bad",
                        "spec.ports[1].port",
                        "70000 is not a port number (1-65535); this port is not programmed, the \
                         Service's other ports are. Fix the port number.",
                    ),
                    diag(
                        "Service default/bad",
                        "spec.ports[2].nodePort",
                        "70000 is not a port number (1-65535); this port gets no NodePort \
                         frontends, its other frontends are programmed. Fix the nodePort.",
                    ),
                    diag(
                        "Service default/bad",
                        "spec.ports[4].name",
                        "port name \"ok\" is already used by spec.ports[2]; port names must be \
                         unique within a Service, so this port is not programmed. Rename one of \
                         the ports.",
                    ),
                ],
            },
            Case {
                name: "bad load-balancer ingress entries",
                services: vec![json!({
                    "metadata": {"namespace": "default", "name": "badlb"},
                    "spec": {"type": "LoadBalancer", "clusterIP": "10.96.0.110", "ports": [{"port": 80}]},
                    "status": {"loadBalancer": {"ingress": [
                        {"ip": "not-an-ip"},
                        {"ip": "203.0.113.70"},
                        {"ip": "203.0.113.71", "ipMode": "Magic"}
                    ]}}
                })],
                slices: vec![],
                node: node_a(),
                want: model(vec![port(
                    "default",
                    "badlb",
                    "",
                    Tcp,
                    vec![
                        fe("10.96.0.110", 80, Tcp, ClusterIp),
                        fe("203.0.113.70", 80, Tcp, LoadBalancer),
                    ],
                    vec![],
                )]),
                want_diags: vec![
                    diag(
                        "Service default/badlb",
                        "status.loadBalancer.ingress[0].ip",
                        "\"not-an-ip\" is not an IP address; this load-balancer IP is not \
                         programmed, the Service's other frontends are. Fix the load-balancer \
                         controller that wrote the status.",
                    ),
                    diag(
                        "Service default/badlb",
                        "status.loadBalancer.ingress[2].ipMode",
                        "\"Magic\" is not one of VIP, Proxy; like kube-proxy, skiff treats it as \
                         not VIP and does not program 203.0.113.71. Fix the load-balancer \
                         controller that wrote the status.",
                    ),
                ],
            },
            Case {
                name: "bad slice ports and endpoint addresses",
                services: vec![json!({
                    "metadata": {"namespace": "default", "name": "sl"},
                    "spec": {"clusterIP": "10.96.0.120", "ports": [{"port": 80}]}
                })],
                slices: vec![json!({
                    "metadata": {"namespace": "default", "name": "sl-1",
                                 "labels": {"kubernetes.io/service-name": "sl"}},
                    "addressType": "IPv4",
                    "ports": [
                        {"port": 8080},
                        {"name": "x", "port": 1, "protocol": "ICMP"},
                        {"name": "y"}
                    ],
                    "endpoints": [
                        {"addresses": []},
                        {"addresses": ["10.244.0.999"]},
                        {"addresses": ["fd00::1"]},
                        {"addresses": ["10.244.0.8", "10.244.0.9"]}
                    ]
                })],
                node: node_a(),
                want: model(vec![port(
                    "default",
                    "sl",
                    "",
                    Tcp,
                    vec![fe("10.96.0.120", 80, Tcp, ClusterIp)],
                    vec![ep("10.244.0.8", 8080, Active, false)],
                )]),
                want_diags: vec![
                    diag(
                        "EndpointSlice default/sl-1",
                        "endpoints[0].addresses",
                        "is empty; discovery/v1 requires at least one address, so this endpoint \
                         is not programmed. Fix the controller that wrote the slice.",
                    ),
                    diag(
                        "EndpointSlice default/sl-1",
                        "endpoints[1].addresses[0]",
                        "\"10.244.0.999\" is not an IPv4 address, as addressType IPv4 requires; \
                         this endpoint is not programmed. Fix the controller that wrote the slice.",
                    ),
                    diag(
                        "EndpointSlice default/sl-1",
                        "endpoints[2].addresses[0]",
                        "\"fd00::1\" is not an IPv4 address, as addressType IPv4 requires; this \
                         endpoint is not programmed. Fix the controller that wrote the slice.",
                    ),
                    diag(
                        "EndpointSlice default/sl-1",
                        "ports[1].protocol",
                        "\"ICMP\" is not one of TCP, UDP, SCTP; endpoints are not programmed for \
                         this port. Fix the controller that wrote the slice.",
                    ),
                    diag(
                        "EndpointSlice default/sl-1",
                        "ports[2].port",
                        "absent is not a port number (1-65535); endpoints are not programmed for \
                         this port (a missing port, meaning \"all ports\", is not supported). Fix \
                         the controller that wrote the slice.",
                    ),
                ],
            },
            Case {
                name: "leading zeros read as decimal, unknown type falls back to ClusterIP",
                services: vec![json!({
                    "metadata": {"namespace": "default", "name": "odd"},
                    "spec": {"type": "Weird", "clusterIP": "010.096.000.013",
                             "ports": [{"port": 80, "nodePort": 30013}]}
                })],
                slices: vec![],
                node: node_a(),
                want: model(vec![port(
                    "default",
                    "odd",
                    "",
                    Tcp,
                    vec![fe("10.96.0.13", 80, Tcp, ClusterIp)],
                    vec![],
                )]),
                want_diags: vec![diag(
                    "Service default/odd",
                    "spec.type",
                    "\"Weird\" is not one of ClusterIP, NodePort, LoadBalancer, ExternalName; the \
                     Service is programmed as ClusterIP (no NodePort or load-balancer \
                     frontends). Fix the Service's type.",
                )],
            },
            Case {
                name: "Services that cannot be programmed at all",
                services: vec![
                    json!({"metadata": {"namespace": "default", "name": "noip"},
                           "spec": {"ports": [{"port": 80}]}}),
                    json!({"metadata": {"namespace": "default", "name": "noports"},
                           "spec": {"clusterIP": "10.96.0.130"}}),
                    json!({"metadata": {"name": "nons"},
                           "spec": {"clusterIP": "10.96.0.131", "ports": [{"port": 80}]}}),
                    json!({"metadata": {"namespace": "default"},
                           "spec": {"clusterIP": "10.96.0.132", "ports": [{"port": 80}]}}),
                ],
                slices: vec![],
                node: node_a(),
                want: Model::default(),
                want_diags: vec![
                    diag(
                        "Service <no namespace>/nons",
                        "metadata.namespace",
                        "is empty; a Service is namespaced and cannot be matched with its \
                         EndpointSlices without one, so it is not programmed. The object did not \
                         come from the API server as stored; check the watch that produced it.",
                    ),
                    diag(
                        "Service default/<no name>",
                        "metadata.name",
                        "is empty; the Service is not programmed. The object did not come from \
                         the API server as stored; check the watch that produced it.",
                    ),
                    diag(
                        "Service default/noip",
                        "spec.clusterIP",
                        "is empty; kube-proxy semantics skip a Service without a cluster IP, so \
                         nothing is programmed for it. The API server allocates one on create: \
                         check that the Service was stored by a conforming API server.",
                    ),
                    diag(
                        "Service default/noports",
                        "spec.ports",
                        "is empty; a non-headless Service needs at least one port, so nothing is \
                         programmed for it. Add a port to the Service.",
                    ),
                ],
            },
            Case {
                name: "the same Service twice keeps the first",
                services: vec![
                    json!({"metadata": {"namespace": "default", "name": "twice"},
                           "spec": {"clusterIP": "10.96.0.140", "ports": [{"port": 80}]}}),
                    json!({"metadata": {"namespace": "default", "name": "twice"},
                           "spec": {"clusterIP": "10.96.0.141", "ports": [{"port": 80}]}}),
                ],
                slices: vec![],
                node: node_a(),
                want: model(vec![port(
                    "default",
                    "twice",
                    "",
                    Tcp,
                    vec![fe("10.96.0.140", 80, Tcp, ClusterIp)],
                    vec![],
                )]),
                want_diags: vec![diag(
                    "Service default/twice",
                    "metadata.name",
                    "this Service appears more than once in the input; only the first copy is \
                     programmed. This is a bug in the caller's object cache.",
                )],
            },
        ]);
    }

    /// Deterministic pseudo-random generator (no dev-dependency for one test).
    struct Lcg(u64);

    impl Lcg {
        fn next(&mut self) -> u64 {
            self.0 = self
                .0
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            self.0 >> 33
        }

        fn pick<T: Clone>(&mut self, items: &[T]) -> T {
            items[(self.next() as usize) % items.len()].clone()
        }

        /// A JSON value from `items`, or absent (`None`) one time in four.
        fn maybe(&mut self, items: &[Value]) -> Option<Value> {
            if self.next().is_multiple_of(4) {
                None
            } else {
                Some(self.pick(items))
            }
        }
    }

    fn insert(obj: &mut serde_json::Map<String, Value>, key: &str, value: Option<Value>) {
        if let Some(v) = value {
            obj.insert(key.into(), v);
        }
    }

    #[test]
    fn traffic_policies_source_ranges_and_session_affinity() {
        let svc = json!({
            "metadata": {"namespace": "default", "name": "lb"},
            "spec": {
                "type": "LoadBalancer",
                "clusterIP": "10.43.0.20",
                "externalTrafficPolicy": "Local",
                "internalTrafficPolicy": "Local",
                "sessionAffinity": "ClientIP",
                "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 60}},
                "loadBalancerSourceRanges": ["203.0.113.7/24", "not-a-cidr", "2001:db8::/32"],
                "ports": [{"port": 80, "nodePort": 30080}]
            }
        });
        let services: Vec<Service> = vec![serde_json::from_value(svc).unwrap()];
        let (model, diags) = translate(&services, &[], &node_a());
        let port = &model.services[&ServicePortName::new("default", "lb", "")];
        assert!(port.external_local && port.internal_local);
        assert_eq!(port.affinity_timeout, Some(60));
        // Host bits are cleared; the IPv6 range is not an error, just not IPv4.
        assert_eq!(port.source_ranges, vec![(ip("203.0.113.0"), 24)]);
        assert_eq!(
            diags,
            vec![diag(
                "Service default/lb",
                "spec.loadBalancerSourceRanges[1]",
                "\"not-a-cidr\" is not a CIDR (like 203.0.113.0/24); it is ignored, so fewer \
                 sources are allowed than intended. Fix the range."
            )]
        );

        // Defaults: affinity None -> no timeout; ClientIP without config -> 10800 s;
        // externalTrafficPolicy is meaningless on a ClusterIP service.
        let svc = json!({
            "metadata": {"namespace": "default", "name": "c"},
            "spec": {
                "clusterIP": "10.43.0.21",
                "externalTrafficPolicy": "Local",
                "sessionAffinity": "ClientIP",
                "loadBalancerSourceRanges": ["203.0.113.0/24"],
                "ports": [{"port": 80}]
            }
        });
        let services: Vec<Service> = vec![serde_json::from_value(svc).unwrap()];
        let (model, _) = translate(&services, &[], &node_a());
        let port = &model.services[&ServicePortName::new("default", "c", "")];
        assert!(!port.external_local && !port.internal_local);
        assert_eq!(port.affinity_timeout, Some(10800));
        assert!(
            port.source_ranges.is_empty(),
            "source ranges are for LoadBalancer services"
        );
    }

    #[test]
    fn garbage_input_never_panics_and_output_is_well_formed() {
        let ips = [
            json!("10.96.0.1"),
            json!("10.96.0.2"),
            json!("10.96.0.3"),
            json!("10.96.0.4"),
            json!("10.96.0.5"),
            json!("None"),
            json!(""),
            json!("fd00::1"),
            json!("garbage"),
            json!("999.1.1.1"),
            json!("01.002.3.4"),
            json!("1.2.3.4.5"),
            json!("1..2.3"),
            json!("::ffff:1.2.3.4"),
            json!(" 10.0.0.1"),
            json!("10.0.0.1/24"),
        ];
        let ports = [
            json!(53),
            json!(8443),
            json!(30000),
            json!(0),
            json!(-1),
            json!(80),
            json!(443),
            json!(65535),
            json!(65536),
            json!(i32::MAX),
            json!(i32::MIN),
        ];
        let protos = [
            json!("TCP"),
            json!("UDP"),
            json!("SCTP"),
            json!("tcp"),
            json!(""),
            json!("ICMP"),
        ];
        let names = [json!(""), json!("http"), json!("dns"), json!("ü\u{0}")];
        let types = [
            json!("ClusterIP"),
            json!("NodePort"),
            json!("LoadBalancer"),
            json!("ExternalName"),
            json!(""),
            json!("Bogus"),
        ];
        let bools = [json!(true), json!(false)];
        let modes = [json!("VIP"), json!("Proxy"), json!("")];
        let address_types = [
            json!("IPv4"),
            json!("IPv4"),
            json!("IPv4"),
            json!("IPv6"),
            json!("FQDN"),
            json!(""),
        ];
        let target_ports = [
            json!(8080),
            json!(8081),
            json!(8080),
            json!(0),
            json!(-1),
            json!(65536),
        ];
        let svc_names = ["a", "b", "c", ""];
        let nodes = [json!("node-a"), json!("node-b"), json!("")];
        // Mostly valid endpoint addresses (with repeats, to exercise deduplication).
        let endpoint_ips = [
            json!("10.244.0.1"),
            json!("10.244.0.2"),
            json!("10.244.0.3"),
            json!("10.244.0.1"),
            json!("fd00::1"),
            json!("10.244.0.256"),
            json!(""),
        ];

        // How much of the translation the garbage reached, so the test fails if the
        // generator degenerates into inputs that are all rejected up front.
        let (mut ports_seen, mut endpoints_seen, mut diags_seen) = (0, 0, 0);
        let mut rng = Lcg(0x5eed);
        for round in 0..1000 {
            let mut services = Vec::new();
            let mut service_names = vec![json!("unowned")];
            // (name, protocol) of generated service ports: slice ports reuse them half the
            // time, so endpoints actually match.
            let mut port_shapes: Vec<(Option<Value>, Option<Value>)> = vec![(None, None)];
            for i in 0..rng.next() % 4 {
                let mut spec = serde_json::Map::new();
                insert(&mut spec, "type", rng.maybe(&types));
                insert(&mut spec, "clusterIP", rng.maybe(&ips));
                let list: Vec<Value> = (0..rng.next() % 3).map(|_| rng.pick(&ips)).collect();
                insert(&mut spec, "clusterIPs", Some(json!(list)));
                let list: Vec<Value> = (0..rng.next() % 3).map(|_| rng.pick(&ips)).collect();
                insert(&mut spec, "externalIPs", Some(json!(list)));
                let mut sports = Vec::new();
                for _ in 0..rng.next() % 4 {
                    let mut p = serde_json::Map::new();
                    let name = rng.maybe(&names);
                    let protocol = rng.maybe(&protos);
                    port_shapes.push((name.clone(), protocol.clone()));
                    insert(&mut p, "name", name);
                    insert(&mut p, "port", rng.maybe(&ports));
                    insert(&mut p, "protocol", protocol);
                    insert(&mut p, "nodePort", rng.maybe(&ports));
                    sports.push(Value::Object(p));
                }
                insert(&mut spec, "ports", Some(json!(sports)));
                let ingress: Vec<Value> = (0..rng.next() % 3)
                    .map(|_| {
                        let mut ing = serde_json::Map::new();
                        insert(&mut ing, "ip", rng.maybe(&ips));
                        insert(&mut ing, "ipMode", rng.maybe(&modes));
                        Value::Object(ing)
                    })
                    .collect();
                let mut labels = serde_json::Map::new();
                if rng.next().is_multiple_of(8) {
                    labels.insert(LABEL_SERVICE_PROXY_NAME.into(), json!("x"));
                }
                // Unique names per round, so input order cannot matter.
                let name = format!("{}{i}", rng.pick(&svc_names));
                service_names.push(json!(name));
                services.push(json!({
                    "metadata": {"namespace": "default", "name": name, "labels": labels},
                    "spec": spec,
                    "status": {"loadBalancer": {"ingress": ingress}}
                }));
            }
            let mut slices = Vec::new();
            for i in 0..rng.next() % 5 {
                // Half the slices are well-formed apart from their conditions, so that
                // endpoints reach the model; the other half are garbage throughout.
                let sane = rng.next().is_multiple_of(2);
                let mut eports = Vec::new();
                for _ in 0..rng.next() % 3 {
                    let mut p = serde_json::Map::new();
                    let (name, protocol) = if sane || rng.next().is_multiple_of(2) {
                        rng.pick(&port_shapes)
                    } else {
                        (rng.maybe(&names), rng.maybe(&protos))
                    };
                    insert(&mut p, "name", name);
                    if sane {
                        insert(&mut p, "port", Some(rng.pick(&target_ports[..2])));
                    } else {
                        insert(&mut p, "port", rng.maybe(&target_ports));
                    }
                    insert(&mut p, "protocol", protocol);
                    eports.push(Value::Object(p));
                }
                let mut endpoints = Vec::new();
                for _ in 0..rng.next() % 4 {
                    let addrs: Vec<Value> = if sane {
                        vec![rng.pick(&endpoint_ips[..3])]
                    } else {
                        (0..rng.next() % 3)
                            .map(|_| rng.pick(&endpoint_ips))
                            .collect()
                    };
                    let mut cond = serde_json::Map::new();
                    insert(&mut cond, "ready", rng.maybe(&bools));
                    insert(&mut cond, "serving", rng.maybe(&bools));
                    insert(&mut cond, "terminating", rng.maybe(&bools));
                    let mut e = serde_json::Map::new();
                    e.insert("addresses".into(), json!(addrs));
                    e.insert("conditions".into(), Value::Object(cond));
                    insert(&mut e, "nodeName", rng.maybe(&nodes));
                    endpoints.push(Value::Object(e));
                }
                let service = rng.pick(&service_names);
                slices.push(json!({
                    "metadata": {"namespace": "default", "name": format!("s{i}"),
                                 "labels": {"kubernetes.io/service-name": service}},
                    "addressType": if sane { json!("IPv4") } else { rng.pick(&address_types) },
                    "ports": eports,
                    "endpoints": endpoints
                }));
            }
            let services: Vec<Service> = services
                .into_iter()
                .map(|v| serde_json::from_value(v).expect("generated Service JSON"))
                .collect();
            let slices: Vec<EndpointSlice> = slices
                .into_iter()
                .map(|v| serde_json::from_value(v).expect("generated EndpointSlice JSON"))
                .collect();
            let node = node_a();
            let (m, diags) = translate(&services, &slices, &node);

            let mut rev_services = services.clone();
            rev_services.reverse();
            let mut rev_slices = slices.clone();
            rev_slices.reverse();
            assert_eq!(
                translate(&rev_services, &rev_slices, &node),
                (m.clone(), diags.clone()),
                "round {round}: input order changed the output"
            );

            ports_seen += m.services.len();
            endpoints_seen += m
                .services
                .values()
                .map(|p| p.endpoints.len())
                .sum::<usize>();
            diags_seen += diags.len();
            assert!(
                diags.windows(2).all(|w| w[0] < w[1]),
                "round {round}: diagnostics not sorted and unique: {diags:#?}"
            );
            for (name, sp) in &m.services {
                let proto = sp.proto.expect("every translated port has a protocol");
                assert!(
                    sp.frontends.windows(2).all(|w| w[0] < w[1]),
                    "round {round}: {name}: frontends not sorted and unique"
                );
                for f in &sp.frontends {
                    assert_eq!(f.proto, proto, "round {round}: {name}");
                    assert_ne!(f.port, 0, "round {round}: {name}");
                    if f.kind == NodePort {
                        assert!(
                            node.node_addresses.contains(&f.addr),
                            "round {round}: {name}"
                        );
                    }
                }
                assert!(
                    sp.endpoints
                        .windows(2)
                        .all(|w| (w[0].addr, w[0].port) < (w[1].addr, w[1].port)),
                    "round {round}: {name}: endpoints not sorted or an address:port repeats"
                );
                assert!(sp.endpoints.iter().all(|e| e.port != 0), "round {round}");
            }
        }
        eprintln!(
            "garbage: {ports_seen} ports, {endpoints_seen} endpoints, {diags_seen} diagnostics"
        );
        assert!(ports_seen >= 200 && endpoints_seen >= 20 && diags_seen >= 1000);
    }
}
