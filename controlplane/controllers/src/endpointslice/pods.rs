//! Pod facts both endpoint controllers use, after upstream's `pkg/api/v1/pod` and
//! `pkg/controller/util/endpointslice` helpers.

use std::collections::BTreeMap;

use k8s_openapi::{
    api::core::v1::{Pod, Service, ServicePort},
    apimachinery::pkg::{apis::meta::v1::Time, util::intstr::IntOrString},
};

/// `IsPodReady`: the `Ready` condition is `True`.
pub fn is_ready(pod: &Pod) -> bool {
    ready_condition(pod).is_some_and(|c| c.status == "True")
}

fn ready_condition(pod: &Pod) -> Option<&k8s_openapi::api::core::v1::PodCondition> {
    pod.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == "Ready")
}

/// `deletionTimestamp` set: the pod is terminating.
pub fn is_terminating(pod: &Pod) -> bool {
    pod.metadata.deletion_timestamp.is_some()
}

/// `ShouldPodBeInEndpoints`: not terminal (Succeeded/Failed), has an IP, and (unless
/// `include_terminating`) not terminating. EndpointSlices include terminating pods (so
/// proxies can fall back to serving+terminating endpoints, ProxyTerminatingEndpoints);
/// the legacy Endpoints only with `publishNotReadyAddresses`.
pub fn should_be_in_endpoints(pod: &Pod, include_terminating: bool) -> bool {
    let status = pod.status.as_ref();
    if matches!(
        status.and_then(|s| s.phase.as_deref()),
        Some("Succeeded" | "Failed")
    ) {
        return false;
    }
    if ipv4_addresses(pod).is_empty() {
        return false;
    }
    include_terminating || !is_terminating(pod)
}

/// The pod's IPv4 addresses (`status.podIPs`, else `status.podIP`), the addresses of an
/// `IPv4` EndpointSlice endpoint (upstream's `getEndpointAddresses`).
pub fn ipv4_addresses(pod: &Pod) -> Vec<String> {
    let Some(status) = pod.status.as_ref() else {
        return Vec::new();
    };
    let mut ips: Vec<String> = status
        .pod_ips
        .iter()
        .flatten()
        .map(|p| p.ip.clone())
        .collect();
    if ips.is_empty() {
        ips.extend(status.pod_ip.clone().filter(|ip| !ip.is_empty()));
    }
    ips.retain(|ip| ip.parse::<std::net::Ipv4Addr>().is_ok());
    ips
}

/// `ShouldSetHostname`: `spec.hostname` set and `spec.subdomain` names the Service.
pub fn hostname_for(pod: &Pod, svc: &Service) -> Option<String> {
    let spec = pod.spec.as_ref()?;
    let host = spec.hostname.as_deref().filter(|h| !h.is_empty())?;
    (spec.subdomain.as_deref() == svc.metadata.name.as_deref()
        && pod.metadata.namespace == svc.metadata.namespace)
        .then(|| host.to_string())
}

/// The Service port's protocol (defaulted `TCP`).
pub fn protocol(sp: &ServicePort) -> String {
    sp.protocol.clone().unwrap_or_else(|| "TCP".into())
}

/// `FindPort`: the pod port a Service port's `targetPort` means. A number is used as is
/// (unset means `port`); a name is looked up among the containers' ports with the same
/// protocol (and restartable init containers', i.e. sidecars). None: this pod has no such
/// port, and the Service port is left out of the pod's port set.
pub fn find_port(pod: &Pod, sp: &ServicePort) -> Option<i32> {
    match &sp.target_port {
        None => Some(sp.port),
        Some(IntOrString::Int(0)) => Some(sp.port),
        Some(IntOrString::Int(n)) => Some(*n),
        Some(IntOrString::String(name)) => {
            let spec = pod.spec.as_ref()?;
            let proto = protocol(sp);
            let sidecars = spec
                .init_containers
                .iter()
                .flatten()
                .filter(|c| c.restart_policy.as_deref() == Some("Always"));
            spec.containers
                .iter()
                .chain(sidecars)
                .flat_map(|c| c.ports.iter().flatten())
                .find(|p| {
                    p.name.as_deref() == Some(name.as_str())
                        && p.protocol.as_deref().unwrap_or("TCP") == proto
                })
                .map(|p| p.container_port)
        }
    }
}

/// When the pod's state last changed in a way the endpoints show: the Ready condition's
/// last transition, else the pod's creation (upstream's `getPodTriggerTime`, plus the
/// creation time for pods that never reported readiness). The flag says which it is.
pub fn trigger_time(pod: &Pod) -> Option<(Time, bool)> {
    ready_condition(pod)
        .and_then(|c| c.last_transition_time.clone())
        .map(|t| (t, true))
        .or_else(|| pod.metadata.creation_timestamp.clone().map(|t| (t, false)))
}

/// Whether `labels` satisfy a Service's equality-based selector.
pub fn selector_matches(
    selector: &BTreeMap<String, String>,
    labels: Option<&BTreeMap<String, String>>,
) -> bool {
    selector
        .iter()
        .all(|(k, v)| labels.and_then(|l| l.get(k)) == Some(v))
}

#[cfg(test)]
pub(crate) mod testing {
    //! Builders for pods and Services in the planners' tests.
    use super::*;
    use k8s_openapi::api::core::v1::{
        Container, ContainerPort, PodCondition, PodIP, PodSpec, PodStatus, ServiceSpec,
    };
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    pub fn ts(s: &str) -> Time {
        Time(s.parse().unwrap())
    }

    pub fn pod(name: &str, ip: &str, ready: bool) -> Pod {
        Pod {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some("default".into()),
                uid: Some(format!("uid-{name}")),
                labels: Some([("app".to_string(), "web".to_string())].into()),
                creation_timestamp: Some(ts("2026-01-01T00:00:00Z")),
                ..Default::default()
            },
            spec: Some(PodSpec {
                node_name: Some("n1".into()),
                containers: vec![Container {
                    name: "c".into(),
                    ports: Some(vec![ContainerPort {
                        name: Some("http".into()),
                        container_port: 8080,
                        protocol: Some("TCP".into()),
                        ..Default::default()
                    }]),
                    ..Default::default()
                }],
                ..Default::default()
            }),
            status: Some(PodStatus {
                phase: Some("Running".into()),
                pod_ip: Some(ip.into()).filter(|s: &String| !s.is_empty()),
                pod_ips: Some(vec![PodIP { ip: ip.into() }]).filter(|_| !ip.is_empty()),
                conditions: Some(vec![PodCondition {
                    type_: "Ready".into(),
                    status: if ready { "True" } else { "False" }.into(),
                    last_transition_time: Some(ts("2026-01-01T00:01:00Z")),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
        }
    }

    /// Sets the pod's named port `http` to `port`.
    pub fn with_http_port(mut p: Pod, port: i32) -> Pod {
        p.spec.as_mut().unwrap().containers[0]
            .ports
            .as_mut()
            .unwrap()[0]
            .container_port = port;
        p
    }

    pub fn service(name: &str, ports: Vec<ServicePort>) -> Service {
        Service {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some("default".into()),
                uid: Some(format!("uid-svc-{name}")),
                creation_timestamp: Some(ts("2025-12-31T00:00:00Z")),
                ..Default::default()
            },
            spec: Some(ServiceSpec {
                selector: Some([("app".to_string(), "web".to_string())].into()),
                cluster_ip: Some("10.43.0.10".into()),
                ports: Some(ports),
                ..Default::default()
            }),
            status: None,
        }
    }

    pub fn port(name: &str, port: i32, target: IntOrString) -> ServicePort {
        ServicePort {
            name: Some(name.into()).filter(|n: &String| !n.is_empty()),
            port,
            protocol: Some("TCP".into()),
            target_port: Some(target),
            ..Default::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::testing::*;
    use super::*;

    #[test]
    fn membership_follows_should_pod_be_in_endpoints() {
        let ready = pod("a", "10.42.0.5", true);
        assert!(should_be_in_endpoints(&ready, true));
        assert!(!should_be_in_endpoints(&pod("a", "", true), true), "no IP");
        let mut done = ready.clone();
        done.status.as_mut().unwrap().phase = Some("Succeeded".into());
        assert!(!should_be_in_endpoints(&done, true));
        done.status.as_mut().unwrap().phase = Some("Failed".into());
        assert!(!should_be_in_endpoints(&done, true));
        let mut term = ready.clone();
        term.metadata.deletion_timestamp = Some(ts("2026-01-01T00:02:00Z"));
        assert!(should_be_in_endpoints(&term, true));
        assert!(!should_be_in_endpoints(&term, false));
        let mut v6 = ready;
        v6.status.as_mut().unwrap().pod_ips = Some(vec![k8s_openapi::api::core::v1::PodIP {
            ip: "fd00::5".into(),
        }]);
        assert!(!should_be_in_endpoints(&v6, true), "no IPv4 address");
    }

    #[test]
    fn find_port_resolves_numbers_and_names_per_protocol() {
        let p = pod("a", "10.42.0.5", true);
        let named = port("web", 80, IntOrString::String("http".into()));
        assert_eq!(find_port(&p, &named), Some(8080));
        assert_eq!(
            find_port(&p, &port("", 80, IntOrString::String("nope".into()))),
            None
        );
        let mut udp = named.clone();
        udp.protocol = Some("UDP".into());
        assert_eq!(find_port(&p, &udp), None, "a TCP port does not serve UDP");
        assert_eq!(
            find_port(&p, &port("", 80, IntOrString::Int(9090))),
            Some(9090)
        );
        let mut unset = named;
        unset.target_port = None;
        assert_eq!(find_port(&p, &unset), Some(80));
    }

    #[test]
    fn hostname_needs_the_service_as_subdomain() {
        let svc = service("web", vec![]);
        let mut p = pod("a", "10.42.0.5", true);
        p.spec.as_mut().unwrap().hostname = Some("a-0".into());
        assert_eq!(hostname_for(&p, &svc), None);
        p.spec.as_mut().unwrap().subdomain = Some("web".into());
        assert_eq!(hostname_for(&p, &svc).as_deref(), Some("a-0"));
    }
}
