//! Cluster DNS end to end, inside a network namespace the test owns (nothing leaves it):
//! a real API server, the real `skiff-agent run --dns-bind-address` answering from its
//! Service/EndpointSlice watch, a second local DNS server as the node's upstream, and a
//! DNS client (hickory-proto messages over real UDP and TCP sockets) asking for a
//! ClusterIP Service, a headless Service and its pod hostname, an SRV name, an unknown
//! name (NXDOMAIN), an upstream name (forwarded) and malformed queries (FORMERR, the
//! server keeps answering). The agent's Node carries the `skiff.io/cluster-dns`
//! annotation the control plane's clusterdns controller selects on.

use std::{
    collections::BTreeSet,
    net::{Ipv4Addr, SocketAddr, UdpSocket},
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use hickory_proto::{
    op::{Message, MessageType, OpCode, Query, ResponseCode},
    rr::{Name, RData, RecordType},
};
use k8s_openapi::api::{core::v1::Node, core::v1::Service, discovery::v1::EndpointSlice};
use kube::{api::PostParams, Api};
use serde_json::json;
use skiff_tests::{
    apiserver::{sibling_binary, ApiServer},
    netns::NetNs,
    privilege::require_privileges,
};

const DNS: &str = "127.0.0.1:53";
const UPSTREAM_IP: &str = "127.0.0.2";

/// The agent process, killed on drop; its output goes to a file shown on failure.
struct Agent {
    child: Child,
    log: PathBuf,
}

impl Agent {
    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.log);
    }
}

fn query_bytes(name: &str, t: RecordType, id: u16) -> Vec<u8> {
    let mut m = Message::query();
    m.metadata.id = id;
    m.metadata.recursion_desired = true;
    m.add_query(Query::query(Name::from_ascii(name).unwrap(), t));
    m.to_vec().unwrap()
}

/// One query over UDP (or TCP), with a 2 s timeout.
fn ask_raw(bytes: &[u8], tcp: bool) -> Result<Message, String> {
    let server: SocketAddr = DNS.parse().unwrap();
    let timeout = Duration::from_secs(2);
    let buf = if tcp {
        use std::io::{Read as _, Write as _};
        let mut s = std::net::TcpStream::connect_timeout(&server, timeout)
            .map_err(|e| format!("TCP connect: {e}"))?;
        s.set_read_timeout(Some(timeout)).unwrap();
        let mut framed = (bytes.len() as u16).to_be_bytes().to_vec();
        framed.extend_from_slice(bytes);
        s.write_all(&framed).map_err(|e| e.to_string())?;
        let mut len = [0u8; 2];
        s.read_exact(&mut len)
            .map_err(|e| format!("TCP read: {e}"))?;
        let mut buf = vec![0u8; u16::from_be_bytes(len) as usize];
        s.read_exact(&mut buf)
            .map_err(|e| format!("TCP read: {e}"))?;
        buf
    } else {
        let s = UdpSocket::bind("127.0.0.1:0").unwrap();
        s.set_read_timeout(Some(timeout)).unwrap();
        s.send_to(bytes, server).map_err(|e| e.to_string())?;
        let mut buf = vec![0u8; 4096];
        let (n, _) = s
            .recv_from(&mut buf)
            .map_err(|e| format!("UDP recv: {e}"))?;
        buf.truncate(n);
        buf
    };
    Message::from_vec(&buf).map_err(|e| format!("decoding the answer: {e}"))
}

fn ask(name: &str, t: RecordType, tcp: bool) -> Result<Message, String> {
    let id = 0x5a5a;
    let m = ask_raw(&query_bytes(name, t, id), tcp)?;
    if m.metadata.id != id || m.metadata.message_type != MessageType::Response {
        return Err(format!("not our answer: {m:?}"));
    }
    Ok(m)
}

fn a_records(m: &Message) -> BTreeSet<Ipv4Addr> {
    m.answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::A(a) => Some(a.0),
            _ => None,
        })
        .collect()
}

/// Polls `f` until it returns Ok, panicking with the last error and the agent log.
fn eventually<T>(what: &str, agent: &Agent, mut f: impl FnMut() -> Result<T, String>) -> T {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match f() {
            Ok(v) => return v,
            Err(e) if Instant::now() > deadline => {
                panic!("{what}: {e}\nagent log:\n{}", agent.log())
            }
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

#[test]
fn the_agent_answers_cluster_names_and_forwards_the_rest() {
    require_privileges();
    let ns = NetNs::new("dns");
    // Everything runs on a thread inside the namespace: the API server and the agent are
    // forked from it (and so live in it), and every socket the test opens is in it.
    ns.run(|| {
        // A worker thread (created here, so in the namespace too) runs the upstream
        // server while the test blocks on its own queries.
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let api = ApiServer::start("dns", &["--disable-controllers", "--disable-scheduler"]);
        let client = rt.block_on(api.client());

        // The node's upstream: a second DNS server (skiff-dns with another zone) on
        // another loopback address of the namespace.
        let upstream_zone = skiff_dns::ZoneHandle::new();
        let ext: Service = serde_json::from_value(json!({
            "metadata": {"namespace": "default", "name": "ext"},
            "spec": {"clusterIP": "192.0.2.77"}}))
        .unwrap();
        upstream_zone.set(skiff_dns::Zone::build("upstream.test", &[ext], &[], 1));
        let upstream = rt
            .block_on(skiff_dns::DnsServer::bind(
                format!("{UPSTREAM_IP}:53").parse().unwrap(),
                upstream_zone,
                skiff_dns::Config {
                    domain: "upstream.test".into(),
                    forwarder: skiff_dns::Forwarder::new(vec![]),
                },
            ))
            .expect("binding the upstream DNS server");
        rt.spawn(upstream.run());
        let resolv = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(
            resolv.path(),
            format!("search example.invalid\nnameserver {UPSTREAM_IP}\n"),
        )
        .unwrap();

        // The objects: a ClusterIP Service with a named port, a headless one with a
        // hostname endpoint, a ready one without and a not-ready one.
        rt.block_on(async {
            let svcs: Api<Service> = Api::namespaced(client.clone(), "default");
            for s in [
                json!({"metadata": {"name": "web"}, "spec": {"clusterIP": "10.43.0.20",
                    "ports": [{"name": "http", "port": 80, "protocol": "TCP"}]}}),
                json!({"metadata": {"name": "db"}, "spec": {"clusterIP": "None",
                    "ports": [{"name": "sql", "port": 5432, "protocol": "TCP"}]}}),
            ] {
                let s: Service = serde_json::from_value(s).unwrap();
                svcs.create(&PostParams::default(), &s).await.unwrap();
            }
            let slice: EndpointSlice = serde_json::from_value(json!({
                "metadata": {"name": "db-1", "labels": {
                    "kubernetes.io/service-name": "db",
                    "endpointslice.kubernetes.io/managed-by": "cluster-dns-test"}},
                "addressType": "IPv4",
                "ports": [{"name": "sql", "port": 5432, "protocol": "TCP"}],
                "endpoints": [
                    {"addresses": ["10.42.0.5"], "hostname": "db-0", "conditions": {"ready": true}},
                    {"addresses": ["10.42.0.6"], "conditions": {"ready": true}},
                    {"addresses": ["10.42.0.7"], "conditions": {"ready": false}}]}))
            .unwrap();
            Api::<EndpointSlice>::namespaced(client.clone(), "default")
                .create(&PostParams::default(), &slice)
                .await
                .unwrap();
        });

        let node_name = format!("dns-{}", std::process::id());
        let log =
            std::env::temp_dir().join(format!("skiff-cluster-dns-{}.log", std::process::id()));
        let out = std::fs::File::create(&log).unwrap();
        let child = Command::new(sibling_binary("skiff-agent"))
            .args(["run", "-i", "lo", "--no-pin", "--kubeconfig"])
            .arg(api.kubeconfig())
            .args(["--node-name", &node_name, "--node-address", "127.0.0.1"])
            .args(["--pod-network", "none", "--healthz-bind-address", ""])
            .args(["--metrics-bind-address", "", "--dns-bind-address", DNS])
            .arg("--dns-resolv-conf")
            .arg(resolv.path())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .stdin(Stdio::null())
            .spawn()
            .expect("starting skiff-agent");
        let agent = Agent { child, log };

        // A ClusterIP Service, over UDP and TCP, in any case.
        let m = eventually("web's A record", &agent, || {
            let m = ask("Web.Default.svc.cluster.local.", RecordType::A, false)?;
            (m.metadata.response_code == ResponseCode::NoError && !m.answers.is_empty())
                .then_some(m.clone())
                .ok_or_else(|| format!("{:?}", m.metadata.response_code))
        });
        assert_eq!(
            a_records(&m),
            BTreeSet::from([Ipv4Addr::new(10, 43, 0, 20)])
        );
        assert!(m.metadata.authoritative);
        assert_eq!(m.answers[0].ttl, 5);
        let m = ask("web.default.svc.cluster.local.", RecordType::A, true).unwrap();
        assert_eq!(
            a_records(&m),
            BTreeSet::from([Ipv4Addr::new(10, 43, 0, 20)]),
            "TCP"
        );

        // Headless: the ready endpoints; the pod hostname; SRV with targets and glue.
        let m = ask("db.default.svc.cluster.local.", RecordType::A, false).unwrap();
        assert_eq!(
            a_records(&m),
            BTreeSet::from([Ipv4Addr::new(10, 42, 0, 5), Ipv4Addr::new(10, 42, 0, 6)])
        );
        let m = ask("db-0.db.default.svc.cluster.local.", RecordType::A, false).unwrap();
        assert_eq!(a_records(&m), BTreeSet::from([Ipv4Addr::new(10, 42, 0, 5)]));
        let m = ask(
            "_sql._tcp.db.default.svc.cluster.local.",
            RecordType::SRV,
            false,
        )
        .unwrap();
        let mut targets: Vec<(u16, String)> = m
            .answers
            .iter()
            .filter_map(|r| match &r.data {
                RData::SRV(s) => Some((s.port, s.target.to_ascii())),
                _ => None,
            })
            .collect();
        targets.sort();
        assert_eq!(
            targets,
            [
                (5432, "10-42-0-6.db.default.svc.cluster.local.".to_string()),
                (5432, "db-0.db.default.svc.cluster.local.".to_string()),
            ]
        );
        assert_eq!(m.additionals.len(), 2, "the targets' A records ride along");
        let m = ask(
            "_http._tcp.web.default.svc.cluster.local.",
            RecordType::SRV,
            false,
        )
        .unwrap();
        assert!(
            matches!(m.answers[..], [ref r] if matches!(&r.data, RData::SRV(s) if s.port == 80)),
            "{m:?}"
        );

        // Unknown names inside the zone: NXDOMAIN with the SOA; AAAA of a Service: NODATA.
        let m = ask("nothing.default.svc.cluster.local.", RecordType::A, false).unwrap();
        assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
        assert!(
            matches!(m.authorities[..], [ref r] if r.record_type() == RecordType::SOA),
            "{m:?}"
        );
        let m = ask("web.default.svc.cluster.local.", RecordType::AAAA, false).unwrap();
        assert_eq!(m.metadata.response_code, ResponseCode::NoError);
        assert!(m.answers.is_empty());

        // A name outside the zone goes to the upstream (the second local server).
        let m = ask("ext.default.svc.upstream.test.", RecordType::A, false).unwrap();
        assert_eq!(m.metadata.response_code, ResponseCode::NoError, "{m:?}");
        assert_eq!(
            a_records(&m),
            BTreeSet::from([Ipv4Addr::new(192, 0, 2, 77)])
        );
        assert!(!m.metadata.authoritative);
        let m = ask("nothing.upstream.test.", RecordType::A, true).unwrap();
        assert_eq!(
            m.metadata.response_code,
            ResponseCode::NXDomain,
            "upstream NXDOMAIN relayed"
        );

        // Malformed queries: FORMERR (two questions), NOTIMP (an UPDATE); garbage is
        // answered or dropped, and the server still answers afterwards.
        let mut two = Message::query();
        two.metadata.id = 7;
        two.add_query(Query::query(
            Name::from_ascii("a.cluster.local.").unwrap(),
            RecordType::A,
        ));
        two.add_query(Query::query(
            Name::from_ascii("b.cluster.local.").unwrap(),
            RecordType::A,
        ));
        let m = ask_raw(&two.to_vec().unwrap(), false).unwrap();
        assert_eq!(m.metadata.response_code, ResponseCode::FormErr);
        let mut update = Message::new(8, MessageType::Query, OpCode::Update);
        update.add_query(Query::query(
            Name::from_ascii("cluster.local.").unwrap(),
            RecordType::SOA,
        ));
        let m = ask_raw(&update.to_vec().unwrap(), false).unwrap();
        assert_eq!(m.metadata.response_code, ResponseCode::NotImp);
        let mut garbage = query_bytes("web.default.svc.cluster.local.", RecordType::A, 9);
        garbage.truncate(garbage.len() - 3);
        let _ = ask_raw(&garbage, false);
        let _ = ask_raw(&[0xff; 5], true);
        let m = ask("web.default.svc.cluster.local.", RecordType::A, false).unwrap();
        assert_eq!(a_records(&m).len(), 1, "still serving after bad input");

        // A change reaches DNS with the next sync: the not-ready endpoint becomes ready.
        rt.block_on(async {
            let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), "default");
            let mut s = slices.get("db-1").await.unwrap();
            s.endpoints[2].conditions.as_mut().unwrap().ready = Some(true);
            slices
                .replace("db-1", &PostParams::default(), &s)
                .await
                .unwrap();
        });
        eventually("the newly ready endpoint", &agent, || {
            let got = a_records(&ask("db.default.svc.cluster.local.", RecordType::A, false)?);
            (got.len() == 3).then_some(()).ok_or(format!("{got:?}"))
        });

        // The Node says it serves DNS, on which port.
        let ann = eventually("the Node annotation", &agent, || {
            rt.block_on(Api::<Node>::all(client.clone()).get_opt(&node_name))
                .map_err(|e| e.to_string())?
                .and_then(|n| n.metadata.annotations?.get("skiff.io/cluster-dns").cloned())
                .ok_or_else(|| "not annotated yet".to_string())
        });
        assert_eq!(ann, "53");
        drop(agent);
        drop(api);
    });
}

/// skiff-runtime's resolv.conf, used by a real resolver: a hostNetwork pod with
/// `ClusterFirstWithHostNet` runs in the test's namespace, where a skiff-dns server on
/// 127.0.0.1:53 is the cluster DNS; glibc (`getent`) resolves the short name `web` through
/// the Kubernetes search path (`default.svc.cluster.local` first, ndots:5).
#[test]
fn a_pod_resolves_a_service_by_its_short_name() {
    use k8s_openapi::api::core::v1::Pod;
    use skiff_runtime::{backoff::BackoffConfig, cni::Cni, dns::DnsConfig, logs::LogLimits};
    require_privileges();
    let ns = NetNs::new("dnspod");
    let cgroup = skiff_tests::cgroup::Cgroup::new("dnspod");
    let work = tempfile::tempdir().unwrap();
    let netns_path = PathBuf::from(format!("/run/netns/{}", ns.name()));
    ns.run(|| {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let api = ApiServer::start("dnspod", &["--disable-controllers", "--disable-scheduler"]);
        let client = rt.block_on(api.client());

        let zone = skiff_dns::ZoneHandle::new();
        let web: Service = serde_json::from_value(json!({
            "metadata": {"namespace": "default", "name": "web"},
            "spec": {"clusterIP": "10.43.0.20"}}))
        .unwrap();
        zone.set(skiff_dns::Zone::build("cluster.local", &[web], &[], 1));
        let server = rt
            .block_on(skiff_dns::DnsServer::bind(
                DNS.parse().unwrap(),
                zone,
                skiff_dns::Config {
                    domain: "cluster.local".into(),
                    forwarder: skiff_dns::Forwarder::new(vec![]),
                },
            ))
            .expect("binding the DNS server");
        rt.spawn(server.run());

        // The node's resolv.conf must not leak into ClusterFirst pods' nameservers.
        let node_resolv = work.path().join("node-resolv.conf");
        std::fs::write(&node_resolv, "nameserver 192.0.2.53\nsearch node.example\n").unwrap();
        let config = skiff_runtime::Config {
            cni: Cni {
                plugin_dirs: vec![],
                network: json!({}),
                ifname: "eth0".into(),
                host_netns: Some(netns_path.clone()),
            },
            cgroup_parent: cgroup.path().to_path_buf(),
            state_dir: work.path().join("state"),
            log_dir: work.path().join("logs"),
            log_limits: LogLimits::default(),
            backoff: BackoffConfig::scaled(Duration::from_millis(100)),
            host_ip: Some("127.0.0.1".parse().unwrap()),
            dns: DnsConfig {
                cluster_dns: vec!["127.0.0.1".parse().unwrap()],
                cluster_domain: "cluster.local".into(),
                resolv_conf: node_resolv,
            },
        };
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let kubeconfig = api.kubeconfig();
        // Its own thread and runtime, as in the agent (a thread started here is in the
        // namespace too).
        let runtime = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let c = skiff_tests::apiserver::client(&kubeconfig).await;
                skiff_runtime::Runtime::run_until(c, "dns-pod-node", config, async {
                    let _ = stop_rx.await;
                })
                .await
                .map_err(|e| e.to_string())
            })
        });

        let script = "set -e; cat /etc/resolv.conf; \
            grep -qx 'search default.svc.cluster.local svc.cluster.local cluster.local node.example' /etc/resolv.conf; \
            grep -qx 'nameserver 127.0.0.1' /etc/resolv.conf; \
            ! grep -q 192.0.2.53 /etc/resolv.conf; \
            grep -qx 'options ndots:5' /etc/resolv.conf; \
            getent hosts web | grep -q '^10.43.0.20 '";
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": "resolver", "namespace": "default"},
            "spec": {"nodeName": "dns-pod-node", "hostNetwork": true,
                "dnsPolicy": "ClusterFirstWithHostNet", "restartPolicy": "Never",
                "containers": [{"name": "c", "image": "skiff.local/host",
                    "command": ["/bin/sh", "-c", script]}]}}))
        .unwrap();
        let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
        rt.block_on(pods.create(&PostParams::default(), &pod))
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        let phase = loop {
            let p = rt.block_on(pods.get("resolver")).unwrap();
            let phase = p.status.as_ref().and_then(|s| s.phase.clone()).unwrap_or_default();
            if phase == "Succeeded" || phase == "Failed" {
                break phase;
            }
            assert!(
                Instant::now() < deadline,
                "the pod did not finish: {:?}",
                p.status
            );
            std::thread::sleep(Duration::from_millis(100));
        };
        let log: String = walk(&work.path().join("logs"))
            .iter()
            .map(|f| std::fs::read_to_string(f).unwrap_or_default())
            .collect();
        assert_eq!(phase, "Succeeded", "container log:\n{log}");

        let _ = stop_tx.send(());
        runtime
            .join()
            .unwrap()
            .expect("the runtime stops cleanly");
        drop(api);
    });
}

fn walk(dir: &std::path::Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}
