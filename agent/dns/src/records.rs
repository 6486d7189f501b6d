//! The cluster zone, pure: Services and EndpointSlices in, the records of the Kubernetes
//! DNS-based service discovery spec out (github.com/kubernetes/dns, docs/specification.md;
//! what CoreDNS' kubernetes plugin serves):
//!
//! - `<svc>.<ns>.svc.<zone>` A: the ClusterIP(s); for a headless Service (`clusterIP:
//!   None`) the addresses of its ready endpoints (a missing `ready` counts as ready, as in
//!   CoreDNS; the endpointslice controller already sets ready for
//!   `publishNotReadyAddresses`). An ExternalName Service is a CNAME to its `externalName`.
//! - `_<port>._<proto>.<svc>.<ns>.svc.<zone>` SRV for each named port: `0 100 <port>
//!   <svc>.<ns>.svc.<zone>` for a ClusterIP Service; for a headless one a record per ready
//!   endpoint whose target is `<hostname>.<svc>...` (the endpoint's `hostname`, which the
//!   endpointslice controller takes from a pod's `hostname` when its `subdomain` is the
//!   Service) or else `<a-b-c-d>.<svc>...`, with that target's A record as additional data.
//!   An SRV query for the Service name itself returns every port's records (CoreDNS too).
//! - `<hostname>.<svc>.<ns>.svc.<zone>` and `<a-b-c-d>.<svc>.<ns>.svc.<zone>` A: a headless
//!   Service's ready endpoints.
//! - `<a-b-c-d>.<ns>.pod.<zone>` A: `a.b.c.d` (CoreDNS' `pods insecure`, kubeadm's
//!   default: the name is its own answer, nothing is looked up).
//! - A name that exists with no record of the asked type is NODATA (NOERROR, empty), so an
//!   AAAA query for a Service does not make a resolver give up on its A record; an unknown
//!   name inside the zone is NXDOMAIN. Both carry the zone's SOA for negative caching.
//!
//! Only IPv4 is served (skiff's datapath is IPv4): IPv6 and FQDN slices are skipped.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::Ipv4Addr,
};

use k8s_openapi::api::{core::v1::Service, discovery::v1::EndpointSlice};

/// Time to live of every answer and of negative answers (the SOA minimum): CoreDNS'
/// kubernetes plugin default, short because endpoints move.
pub const TTL: u32 = 5;

/// The label tying an EndpointSlice to its Service.
const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// Record data of the cluster zone.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Rdata {
    A(Ipv4Addr),
    Srv {
        priority: u16,
        weight: u16,
        port: u16,
        /// Fully qualified, lower case, without the trailing dot.
        target: String,
    },
    /// Fully qualified, without the trailing dot.
    Cname(String),
}

/// One record: an owner name (lower case, no trailing dot) and its data.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Rec {
    pub name: String,
    pub data: Rdata,
}

/// The query types the zone distinguishes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QType {
    A,
    Srv,
    Cname,
    Soa,
    Any,
    /// Anything else (AAAA, TXT, ...): never present in the zone, so NODATA or NXDOMAIN.
    Other,
}

/// What the zone says about a query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// Records (answer section) and helpful extra records (additional section).
    Records {
        answers: Vec<Rec>,
        additionals: Vec<Rec>,
    },
    /// The apex SOA (a SOA query for the zone itself).
    Soa,
    /// The name exists, with no record of this type.
    NoData,
    /// The name does not exist in the zone.
    NxDomain,
    /// The name is not inside the cluster zone: forward it.
    NotInZone,
}

/// A snapshot of the cluster zone, rebuilt after every change of the caches.
#[derive(Debug, Clone, Default)]
pub struct Zone {
    domain: String,
    names: BTreeMap<String, BTreeSet<Rdata>>,
    /// Names that exist only as parents of others (`<ns>.svc.<zone>`, `svc.<zone>`, ...):
    /// NODATA, not NXDOMAIN (RFC 8020: an empty non-terminal exists).
    parents: BTreeSet<String>,
    /// The SOA serial: bumped by the caller on every rebuild so secondaries (and humans
    /// reading `dig`) see that the zone changed.
    pub serial: u32,
}

/// Lower case, without a trailing dot.
pub fn normalise(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

/// `10.42.1.7` → `10-42-1-7`, the name of an endpoint without a hostname.
pub fn dashed(ip: Ipv4Addr) -> String {
    ip.to_string().replace('.', "-")
}

fn parse_dashed(label: &str) -> Option<Ipv4Addr> {
    let parts: Vec<&str> = label.split('-').collect();
    if parts.len() != 4 {
        return None;
    }
    let mut o = [0u8; 4];
    for (i, p) in parts.iter().enumerate() {
        // Decimal octets only: "010" or "+1" are not names CoreDNS would answer either.
        if p.is_empty() || p.len() > 3 || !p.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        o[i] = p.parse().ok()?;
    }
    Some(Ipv4Addr::from(o))
}

impl Zone {
    /// Builds the zone `domain` (e.g. `cluster.local`) from complete caches.
    pub fn build(
        domain: &str,
        services: &[Service],
        slices: &[EndpointSlice],
        serial: u32,
    ) -> Zone {
        let domain = normalise(domain);
        let mut z = Zone {
            domain: domain.clone(),
            serial,
            ..Zone::default()
        };
        // Slices by (namespace, service name).
        let mut by_service: BTreeMap<(String, String), Vec<&EndpointSlice>> = BTreeMap::new();
        for s in slices {
            if s.address_type != "IPv4" {
                continue;
            }
            let (Some(ns), Some(svc)) = (
                s.metadata.namespace.as_ref(),
                s.metadata
                    .labels
                    .as_ref()
                    .and_then(|l| l.get(SERVICE_NAME_LABEL)),
            ) else {
                continue;
            };
            by_service
                .entry((ns.clone(), svc.clone()))
                .or_default()
                .push(s);
        }
        for svc in services {
            let (Some(ns), Some(name)) = (&svc.metadata.namespace, &svc.metadata.name) else {
                continue;
            };
            let spec = svc.spec.clone().unwrap_or_default();
            let base = normalise(&format!("{name}.{ns}.svc.{domain}"));
            if spec.type_.as_deref() == Some("ExternalName") {
                if let Some(target) = spec.external_name.as_deref().filter(|t| !t.is_empty()) {
                    z.add(&base, Rdata::Cname(normalise(target)));
                }
                continue;
            }
            let headless = spec.cluster_ip.as_deref() == Some("None");
            if !headless {
                let ips: Vec<Ipv4Addr> = spec
                    .cluster_ips
                    .iter()
                    .flatten()
                    .chain(spec.cluster_ip.iter())
                    .filter_map(|ip| ip.parse().ok())
                    .collect();
                if ips.is_empty() {
                    // Not allocated (yet): the Service has no address to publish.
                    continue;
                }
                for ip in ips {
                    z.add(&base, Rdata::A(ip));
                }
                for p in spec.ports.iter().flatten() {
                    let Some(pname) = p.name.as_deref().filter(|n| !n.is_empty()) else {
                        continue;
                    };
                    let Ok(port) = u16::try_from(p.port) else {
                        continue;
                    };
                    let proto = p.protocol.as_deref().unwrap_or("TCP").to_ascii_lowercase();
                    let srv = Rdata::Srv {
                        priority: 0,
                        weight: 100,
                        port,
                        target: base.clone(),
                    };
                    z.add(
                        &format!("_{}._{proto}.{base}", pname.to_ascii_lowercase()),
                        srv.clone(),
                    );
                    z.add(&base, srv);
                }
                continue;
            }
            // Headless: the ready endpoints themselves.
            let mut targets: BTreeMap<String, Ipv4Addr> = BTreeMap::new();
            let mut srvs: BTreeMap<String, Vec<(u16, String)>> = BTreeMap::new();
            for slice in by_service
                .get(&(ns.clone(), name.clone()))
                .into_iter()
                .flatten()
            {
                for ep in &slice.endpoints {
                    let ready = ep.conditions.as_ref().and_then(|c| c.ready).unwrap_or(true);
                    if !ready {
                        continue;
                    }
                    for addr in &ep.addresses {
                        let Ok(ip) = addr.parse::<Ipv4Addr>() else {
                            continue;
                        };
                        z.add(&base, Rdata::A(ip));
                        let label = ep
                            .hostname
                            .as_deref()
                            .filter(|h| !h.is_empty())
                            .map(str::to_ascii_lowercase)
                            .unwrap_or_else(|| dashed(ip));
                        let target = format!("{label}.{base}");
                        z.add(&target, Rdata::A(ip));
                        // Also reachable by its dashed address when it has a hostname
                        // (CoreDNS answers both).
                        z.add(&format!("{}.{base}", dashed(ip)), Rdata::A(ip));
                        targets.insert(target.clone(), ip);
                        for p in slice.ports.iter().flatten() {
                            let (Some(pname), Some(port)) = (
                                p.name.as_deref().filter(|n| !n.is_empty()),
                                p.port.and_then(|p| u16::try_from(p).ok()),
                            ) else {
                                continue;
                            };
                            let proto = p.protocol.as_deref().unwrap_or("TCP").to_ascii_lowercase();
                            srvs.entry(format!("_{}._{proto}.{base}", pname.to_ascii_lowercase()))
                                .or_default()
                                .push((port, target.clone()));
                        }
                    }
                }
            }
            for (owner, list) in srvs {
                // Equal shares of 100, as CoreDNS weighs records of the same priority.
                let weight = (100 / list.len()).max(1) as u16;
                for (port, target) in list {
                    let srv = Rdata::Srv {
                        priority: 0,
                        weight,
                        port,
                        target,
                    };
                    z.add(&owner, srv.clone());
                    z.add(&base, srv);
                }
            }
            if targets.is_empty() && !z.names.contains_key(&base) {
                // A headless Service with no ready endpoint still exists: NODATA.
                z.parents.insert(base.clone());
                z.add_parents(&base);
            }
        }
        for fixed in ["svc", "pod"] {
            z.parents.insert(format!("{fixed}.{domain}"));
        }
        z
    }

    fn add(&mut self, name: &str, data: Rdata) {
        let name = normalise(name);
        self.add_parents(&name);
        self.names.entry(name).or_default().insert(data);
    }

    fn add_parents(&mut self, name: &str) {
        let mut rest = name;
        while let Some((_, parent)) = rest.split_once('.') {
            if parent.len() < self.domain.len() {
                break;
            }
            self.parents.insert(parent.to_owned());
            rest = parent;
        }
    }

    pub fn domain(&self) -> &str {
        &self.domain
    }

    /// Whether `name` (normalised) is the zone or inside it.
    pub fn contains(&self, name: &str) -> bool {
        in_zone(&self.domain, name)
    }

    /// Answers `qname` (any case, with or without the trailing dot) for `qtype`.
    pub fn lookup(&self, qname: &str, qtype: QType) -> Answer {
        let q = normalise(qname);
        if !self.contains(&q) {
            return Answer::NotInZone;
        }
        if q == self.domain {
            return match qtype {
                QType::Soa | QType::Any => Answer::Soa,
                _ => Answer::NoData,
            };
        }
        if let Some(data) = self.names.get(&q) {
            let rec = |d: &Rdata| Rec {
                name: q.clone(),
                data: d.clone(),
            };
            // A CNAME owner has no other data (RFC 1034 3.6.2): it answers every type.
            if let Some(c) = data.iter().find(|d| matches!(d, Rdata::Cname(_))) {
                return Answer::Records {
                    answers: vec![rec(c)],
                    additionals: vec![],
                };
            }
            let answers: Vec<Rec> = data
                .iter()
                .filter(|d| match qtype {
                    QType::A => matches!(d, Rdata::A(_)),
                    QType::Srv => matches!(d, Rdata::Srv { .. }),
                    QType::Any => true,
                    QType::Cname | QType::Soa | QType::Other => false,
                })
                .map(rec)
                .collect();
            if answers.is_empty() {
                return Answer::NoData;
            }
            let additionals = self.srv_glue(&answers);
            return Answer::Records {
                answers,
                additionals,
            };
        }
        if self.parents.contains(&q) {
            return Answer::NoData;
        }
        // `<a-b-c-d>.<ns>.pod.<zone>`.
        if let Some(rest) = q.strip_suffix(&format!(".pod.{}", self.domain)) {
            if let Some((label, ns)) = rest.split_once('.') {
                if !ns.contains('.') {
                    if let Some(ip) = parse_dashed(label) {
                        return match qtype {
                            QType::A | QType::Any => Answer::Records {
                                answers: vec![Rec {
                                    name: q.clone(),
                                    data: Rdata::A(ip),
                                }],
                                additionals: vec![],
                            },
                            _ => Answer::NoData,
                        };
                    }
                }
            }
        }
        Answer::NxDomain
    }

    /// The A records of SRV targets (sent as additional data so a client needs no second
    /// query; RFC 2782).
    fn srv_glue(&self, answers: &[Rec]) -> Vec<Rec> {
        let mut out = BTreeSet::new();
        for r in answers {
            if let Rdata::Srv { target, .. } = &r.data {
                for d in self.names.get(target).into_iter().flatten() {
                    if matches!(d, Rdata::A(_)) {
                        out.insert(Rec {
                            name: target.clone(),
                            data: d.clone(),
                        });
                    }
                }
            }
        }
        out.into_iter().collect()
    }
}

/// Whether normalised `name` is `domain` or below it.
pub fn in_zone(domain: &str, name: &str) -> bool {
    name == domain
        || name
            .strip_suffix(domain)
            .is_some_and(|head| head.ends_with('.'))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn svc(v: serde_json::Value) -> Service {
        serde_json::from_value(v).unwrap()
    }

    fn slice(v: serde_json::Value) -> EndpointSlice {
        serde_json::from_value(v).unwrap()
    }

    fn a(name: &str, ip: &str) -> Rec {
        Rec {
            name: name.into(),
            data: Rdata::A(ip.parse().unwrap()),
        }
    }

    fn srv(name: &str, weight: u16, port: u16, target: &str) -> Rec {
        Rec {
            name: name.into(),
            data: Rdata::Srv {
                priority: 0,
                weight,
                port,
                target: target.into(),
            },
        }
    }

    fn records(answers: Vec<Rec>, additionals: Vec<Rec>) -> Answer {
        Answer::Records {
            answers,
            additionals,
        }
    }

    fn zone() -> Zone {
        let services = vec![
            svc(json!({"metadata": {"namespace": "default", "name": "web"},
                "spec": {"clusterIP": "10.43.0.20", "clusterIPs": ["10.43.0.20"],
                    "ports": [{"name": "http", "port": 80, "protocol": "TCP"},
                              {"port": 8080}]}})),
            svc(json!({"metadata": {"namespace": "db", "name": "pg"},
                "spec": {"clusterIP": "None",
                    "ports": [{"name": "sql", "port": 5432, "protocol": "TCP"}]}})),
            svc(json!({"metadata": {"namespace": "db", "name": "empty"},
                "spec": {"clusterIP": "None"}})),
            svc(json!({"metadata": {"namespace": "default", "name": "ext"},
                "spec": {"type": "ExternalName", "externalName": "Example.ORG."}})),
            svc(
                json!({"metadata": {"namespace": "default", "name": "pending"},
                "spec": {"ports": [{"port": 1}]}}),
            ),
        ];
        let slices = vec![
            slice(json!({"metadata": {"namespace": "db", "name": "pg-abc",
                    "labels": {"kubernetes.io/service-name": "pg"}},
                "addressType": "IPv4",
                "ports": [{"name": "sql", "port": 5432, "protocol": "TCP"}],
                "endpoints": [
                    {"addresses": ["10.42.0.5"], "hostname": "pg-0", "conditions": {"ready": true}},
                    {"addresses": ["10.42.1.6"], "conditions": {}},
                    {"addresses": ["10.42.1.9"], "hostname": "pg-2", "conditions": {"ready": false}}]})),
            // Another family, and a slice of a Service that is gone: both ignored.
            slice(json!({"metadata": {"namespace": "db", "name": "pg-v6",
                    "labels": {"kubernetes.io/service-name": "pg"}},
                "addressType": "IPv6", "endpoints": [{"addresses": ["fd00::1"]}]})),
            slice(json!({"metadata": {"namespace": "db", "name": "gone-x",
                    "labels": {"kubernetes.io/service-name": "gone"}},
                "addressType": "IPv4", "endpoints": [{"addresses": ["10.42.2.2"]}]})),
        ];
        Zone::build("cluster.local", &services, &slices, 7)
    }

    #[test]
    fn a_cluster_ip_service_has_its_address_and_srv_for_named_ports() {
        let z = zone();
        let web = "web.default.svc.cluster.local";
        assert_eq!(
            z.lookup("WEB.default.svc.cluster.local.", QType::A),
            records(vec![a(web, "10.43.0.20")], vec![])
        );
        let http = "_http._tcp.web.default.svc.cluster.local";
        assert_eq!(
            z.lookup(http, QType::Srv),
            records(vec![srv(http, 100, 80, web)], vec![a(web, "10.43.0.20")])
        );
        // The unnamed port has no SRV name; asking the Service name gives all of them.
        assert_eq!(
            z.lookup(web, QType::Srv),
            records(vec![srv(web, 100, 80, web)], vec![a(web, "10.43.0.20")])
        );
        assert_eq!(
            z.lookup("_http._udp.web.default.svc.cluster.local", QType::Srv),
            Answer::NxDomain
        );
        // AAAA of an existing name: NODATA, so resolvers keep the A answer.
        assert_eq!(z.lookup(web, QType::Other), Answer::NoData);
        // A Service without an allocated ClusterIP publishes nothing yet.
        assert_eq!(
            z.lookup("pending.default.svc.cluster.local", QType::A),
            Answer::NxDomain
        );
    }

    #[test]
    fn a_headless_service_has_its_ready_endpoints_with_hostnames() {
        let z = zone();
        let pg = "pg.db.svc.cluster.local";
        assert_eq!(
            z.lookup(pg, QType::A),
            records(vec![a(pg, "10.42.0.5"), a(pg, "10.42.1.6")], vec![]),
            "not-ready pg-2 and the IPv6 slice are left out"
        );
        assert_eq!(
            z.lookup("pg-0.pg.db.svc.cluster.local", QType::A),
            records(vec![a("pg-0.pg.db.svc.cluster.local", "10.42.0.5")], vec![])
        );
        assert_eq!(
            z.lookup("10-42-1-6.pg.db.svc.cluster.local", QType::A),
            records(
                vec![a("10-42-1-6.pg.db.svc.cluster.local", "10.42.1.6")],
                vec![]
            )
        );
        assert_eq!(
            z.lookup("pg-2.pg.db.svc.cluster.local", QType::A),
            Answer::NxDomain
        );
        let sql = "_sql._tcp.pg.db.svc.cluster.local";
        assert_eq!(
            z.lookup(sql, QType::Srv),
            records(
                vec![
                    srv(sql, 50, 5432, "10-42-1-6.pg.db.svc.cluster.local"),
                    srv(sql, 50, 5432, "pg-0.pg.db.svc.cluster.local"),
                ],
                vec![
                    a("10-42-1-6.pg.db.svc.cluster.local", "10.42.1.6"),
                    a("pg-0.pg.db.svc.cluster.local", "10.42.0.5"),
                ]
            )
        );
        // A headless Service without ready endpoints exists, with no addresses.
        assert_eq!(
            z.lookup("empty.db.svc.cluster.local", QType::A),
            Answer::NoData
        );
        assert_eq!(
            z.lookup("gone.db.svc.cluster.local", QType::A),
            Answer::NxDomain
        );
    }

    #[test]
    fn external_name_is_a_cname_for_every_type() {
        let z = zone();
        let ext = "ext.default.svc.cluster.local";
        let want = records(
            vec![Rec {
                name: ext.into(),
                data: Rdata::Cname("example.org".into()),
            }],
            vec![],
        );
        assert_eq!(z.lookup(ext, QType::A), want);
        assert_eq!(z.lookup(ext, QType::Other), want);
    }

    #[test]
    fn unknown_names_empty_non_terminals_pods_and_other_zones() {
        let z = zone();
        assert_eq!(
            z.lookup("nope.default.svc.cluster.local", QType::A),
            Answer::NxDomain
        );
        assert_eq!(z.lookup("nope.cluster.local", QType::A), Answer::NxDomain);
        for parent in [
            "default.svc.cluster.local",
            "svc.cluster.local",
            "pod.cluster.local",
        ] {
            assert_eq!(z.lookup(parent, QType::A), Answer::NoData, "{parent}");
        }
        assert_eq!(z.lookup("cluster.local", QType::Soa), Answer::Soa);
        assert_eq!(z.lookup("cluster.local", QType::A), Answer::NoData);
        assert_eq!(
            z.lookup("10-42-3-4.any.pod.cluster.local", QType::A),
            records(
                vec![a("10-42-3-4.any.pod.cluster.local", "10.42.3.4")],
                vec![]
            )
        );
        assert_eq!(
            z.lookup("10-42-3-400.any.pod.cluster.local", QType::A),
            Answer::NxDomain
        );
        assert_eq!(
            z.lookup("10-42-3.any.pod.cluster.local", QType::A),
            Answer::NxDomain
        );
        for other in [
            "example.org",
            "cluster.local.example.org",
            "xcluster.local",
            "local",
        ] {
            assert_eq!(z.lookup(other, QType::A), Answer::NotInZone, "{other}");
        }
    }

    #[test]
    fn another_domain_is_honoured() {
        let services = vec![svc(json!({"metadata": {"namespace": "a", "name": "b"},
            "spec": {"clusterIP": "10.43.1.1"}}))];
        let z = Zone::build("Corp.Example.", &services, &[], 1);
        assert_eq!(z.domain(), "corp.example");
        assert_eq!(
            z.lookup("b.a.svc.corp.example", QType::A),
            records(vec![a("b.a.svc.corp.example", "10.43.1.1")], vec![])
        );
        assert_eq!(
            z.lookup("b.a.svc.cluster.local", QType::A),
            Answer::NotInZone
        );
    }
}
