//! What the datapath should do, as plain data: service ports with their frontends and
//! usable endpoints. Built from Kubernetes objects by `translate`, consumed by `reconcile`.
//! No IO, no BPF, no Kubernetes types.

use std::{collections::BTreeMap, fmt, net::Ipv4Addr, sync::Arc};

use skiff_datapath_abi::{proto, service_flags};

/// `namespace/name:port` — the identity kube-proxy gives a service port.
///
/// The parts are shared strings: the service sync names every port of a Service with the
/// `Arc`s of its one `TranslatedService`, so the model, the reconciler's groups and
/// claims and the metrics' id→name map hold reference counts, not copies (at 10k
/// Services these names were a quarter of a million separate allocations).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ServicePortName {
    pub namespace: Arc<str>,
    pub name: Arc<str>,
    /// The port's name; empty for a single unnamed port.
    pub port: Arc<str>,
}

impl ServicePortName {
    pub fn new(namespace: &str, name: &str, port: &str) -> Self {
        ServicePortName {
            namespace: namespace.into(),
            name: name.into(),
            port: port.into(),
        }
    }

    /// The same Service with another port name (shares the namespace and name).
    pub fn with_port(&self, port: &str) -> Self {
        ServicePortName {
            namespace: self.namespace.clone(),
            name: self.name.clone(),
            port: port.into(),
        }
    }
}

impl fmt::Display for ServicePortName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)?;
        if !self.port.is_empty() {
            write!(f, ":{}", self.port)?;
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Protocol {
    Tcp,
    Udp,
    Sctp,
}

impl Protocol {
    pub fn number(self) -> u8 {
        match self {
            Protocol::Tcp => proto::TCP,
            Protocol::Udp => proto::UDP,
            Protocol::Sctp => proto::SCTP,
        }
    }

    /// Parses a Kubernetes protocol name (`TCP`, `UDP`, `SCTP`; absent means TCP).
    pub fn from_k8s(name: Option<&str>) -> Option<Protocol> {
        match name.unwrap_or("TCP") {
            "TCP" => Some(Protocol::Tcp),
            "UDP" => Some(Protocol::Udp),
            "SCTP" => Some(Protocol::Sctp),
            _ => None,
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Protocol::Tcp => "TCP",
            Protocol::Udp => "UDP",
            Protocol::Sctp => "SCTP",
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum FrontendKind {
    ClusterIp,
    NodePort,
    LoadBalancer,
    ExternalIp,
}

impl FrontendKind {
    pub fn flag(self) -> u32 {
        match self {
            FrontendKind::ClusterIp => service_flags::CLUSTER_IP,
            FrontendKind::NodePort => service_flags::NODE_PORT,
            FrontendKind::LoadBalancer => service_flags::LOAD_BALANCER,
            FrontendKind::ExternalIp => service_flags::EXTERNAL_IP,
        }
    }
}

/// An address:port where clients reach a service port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Frontend {
    pub addr: Ipv4Addr,
    pub port: u16,
    pub proto: Protocol,
    pub kind: FrontendKind,
}

/// Whether an endpoint takes new flows. The order is the preference order (a smaller
/// state wins when one address:port is listed twice).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum EndpointState {
    /// Ready and not terminating: takes new flows.
    Active,
    /// Serving but terminating: takes new flows only when no active endpoint exists.
    Terminating,
    /// Listed in a slice but neither ready nor serving-terminating (a failing readiness
    /// probe, a terminating pod that stopped serving): takes no new flows, but stays a
    /// known backend so its established TCP connections keep their conntrack entries, as
    /// kube-proxy keeps them (it only clears UDP conntrack of endpoints that stop
    /// serving, `pkg/proxy/conntrack` `CleanStaleEntries`) and Cilium keeps CT for
    /// non-active backends. See `reconcile` for what is purged.
    NotReady,
}

impl EndpointState {
    /// Whether the endpoint may be chosen for a new flow (at all: terminating ones only
    /// when no active one exists).
    pub fn serving(self) -> bool {
        self != EndpointState::NotReady
    }
}

/// A backend of a service port as its slices list it. Endpoints removed from every
/// slice are not in the model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Endpoint {
    pub addr: Ipv4Addr,
    pub port: u16,
    pub state: EndpointState,
    /// Runs on this node.
    pub local: bool,
}

/// One service port: its frontends and its usable endpoints.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServicePort {
    pub proto: Option<Protocol>,
    pub frontends: Vec<Frontend>,
    pub endpoints: Vec<Endpoint>,
    /// `externalTrafficPolicy: Local` (NodePort/LoadBalancer): traffic from outside the
    /// cluster to NodePort, LoadBalancer and ExternalIP frontends goes only to endpoints on
    /// this node, keeps the client's address, and is dropped when there is none here.
    pub external_local: bool,
    /// `internalTrafficPolicy: Local`: ClusterIP traffic goes only to endpoints on this
    /// node; with none, it is refused.
    pub internal_local: bool,
    /// `loadBalancerSourceRanges` (address, prefix length): when non-empty, only these
    /// sources reach the LoadBalancer and ExternalIP frontends from outside.
    pub source_ranges: Vec<(Ipv4Addr, u8)>,
    /// `sessionAffinity: ClientIP` with its timeout in seconds.
    pub affinity_timeout: Option<u32>,
    /// Maglev consistent hashing instead of random choice for traffic from outside
    /// (annotation `skiff.io/lb-algorithm: maglev`).
    pub maglev: bool,
    /// `healthCheckNodePort` (LoadBalancer with externalTrafficPolicy=Local): the agent
    /// answers `/healthz` there with the local endpoint count, so the external load
    /// balancer only sends traffic to nodes with local endpoints.
    pub health_check_node_port: Option<u16>,
}

/// The whole desired state.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Model {
    pub services: BTreeMap<ServicePortName, ServicePort>,
}

/// One health-check node port and what it reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthCheck {
    pub port: u16,
    /// The service (namespace/name) it reports for.
    pub service: (String, String),
    /// Ready endpoints of the service on this node, over all its ports (kube-proxy's
    /// `localEndpoints`): 0 means the node must fail the check (503).
    pub local_endpoints: usize,
}

impl Model {
    /// The health-check node ports this node serves, with their local endpoint counts.
    pub fn health_checks(&self) -> Vec<HealthCheck> {
        let mut by_port: BTreeMap<u16, HealthCheck> = BTreeMap::new();
        for (name, port) in &self.services {
            let Some(hc) = port.health_check_node_port else {
                continue;
            };
            let entry = by_port.entry(hc).or_insert_with(|| HealthCheck {
                port: hc,
                service: (name.namespace.to_string(), name.name.to_string()),
                local_endpoints: 0,
            });
            let mut local: Vec<_> = port
                .endpoints
                .iter()
                .filter(|e| e.local && e.state == EndpointState::Active)
                .map(|e| e.addr)
                .collect();
            local.sort();
            local.dedup();
            entry.local_endpoints = entry.local_endpoints.max(local.len());
        }
        by_port.into_values().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn health_checks_count_ready_local_endpoints_per_service() {
        let ep = |a: [u8; 4], state, local| Endpoint {
            addr: Ipv4Addr::from(a),
            port: 8080,
            state,
            local,
        };
        let port = |hc, endpoints: Vec<Endpoint>| ServicePort {
            endpoints,
            health_check_node_port: hc,
            ..Default::default()
        };
        let m = Model {
            services: [
                (
                    ServicePortName::new("default", "lb", "http"),
                    port(
                        Some(31000),
                        vec![
                            ep([10, 42, 0, 4], EndpointState::Active, true),
                            ep([10, 42, 0, 5], EndpointState::Terminating, true),
                            ep([10, 42, 1, 4], EndpointState::Active, false),
                        ],
                    ),
                ),
                (
                    ServicePortName::new("default", "lb", "https"),
                    port(
                        Some(31000),
                        vec![ep([10, 42, 0, 4], EndpointState::Active, true)],
                    ),
                ),
                (
                    ServicePortName::new("default", "empty", ""),
                    port(Some(31001), vec![]),
                ),
                (
                    ServicePortName::new("default", "plain", ""),
                    port(None, vec![]),
                ),
            ]
            .into_iter()
            .collect(),
        };
        assert_eq!(
            m.health_checks(),
            vec![
                HealthCheck {
                    port: 31000,
                    service: ("default".into(), "lb".into()),
                    local_endpoints: 1
                },
                HealthCheck {
                    port: 31001,
                    service: ("default".into(), "empty".into()),
                    local_endpoints: 0
                },
            ]
        );
    }
}
