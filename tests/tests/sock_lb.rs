//! Socket-level load balancing with real sockets: a client process inside a test network
//! namespace and cgroup talks to service VIPs; skiff's cgroup hooks translate them to
//! backends served by this test inside the same namespace. The maps are programmed by the
//! real reconciler from a model, exactly as the agent does.

use std::{
    collections::BTreeMap,
    io::Write as _,
    net::{Ipv4Addr, SocketAddrV4, TcpListener, UdpSocket},
    path::Path,
};

use skiff_agent::{
    datapath::{BpfServiceMaps, Datapath},
    lbmap::ServiceMaps as _,
    model::{
        Endpoint, EndpointState, Frontend, FrontendKind, Model, Protocol, ServicePort,
        ServicePortName,
    },
    reconcile::{Reconciler, SyncReport},
};
use skiff_datapath_abi::SockLbCounter;
use skiff_tests::{
    cgroup::{Cgroup, LineChild},
    netns::NetNs,
    privilege::require_privileges,
};

const VIP: Ipv4Addr = Ipv4Addr::new(198, 18, 100, 10);
const BACKEND_PORT: u16 = 8080;

fn backend_ip(i: u8) -> Ipv4Addr {
    Ipv4Addr::new(198, 18, 1, i)
}

struct Fixture {
    ns: NetNs,
    cgroup: Cgroup,
    datapath: Datapath,
    maps: BpfServiceMaps,
    reconciler: Reconciler,
}

/// One namespace with backends 198.18.1.1..=n on loopback, each serving TCP and UDP on
/// port 8080 and answering with its own address; skiff's socket LB on a fresh cgroup.
fn fixture(backends: u8) -> Fixture {
    require_privileges();
    let ns = NetNs::new("socklb");
    for i in 1..=backends {
        ns.ip(&["addr", "add", &format!("{}/32", backend_ip(i)), "dev", "lo"]);
        let addr = SocketAddrV4::new(backend_ip(i), BACKEND_PORT);
        let (tcp, udp) = ns.run(|| {
            (
                TcpListener::bind(addr).unwrap(),
                UdpSocket::bind(addr).unwrap(),
            )
        });
        // Server threads live until the test process exits; they only ever answer.
        std::thread::spawn(move || {
            for mut conn in tcp.incoming().flatten() {
                let _ = writeln!(conn, "{addr}");
            }
        });
        std::thread::spawn(move || {
            let mut buf = [0u8; 64];
            while let Ok((_, from)) = udp.recv_from(&mut buf) {
                let _ = udp.send_to(addr.to_string().as_bytes(), from);
            }
        });
    }
    let cgroup = Cgroup::new("socklb");
    let mut datapath = Datapath::load().expect("loading the datapath");
    datapath
        .attach_sock_lb(cgroup.path())
        .expect("attaching socket LB");
    let maps = datapath.service_maps().expect("service maps");
    Fixture {
        ns,
        cgroup,
        datapath,
        maps,
        reconciler: Reconciler::new(),
    }
}

fn service(
    name: &str,
    proto: Protocol,
    port: u16,
    endpoints: &[(u8, EndpointState)],
) -> (ServicePortName, ServicePort) {
    (
        ServicePortName::new("default", name, ""),
        ServicePort {
            proto: Some(proto),
            frontends: vec![Frontend {
                addr: VIP,
                port,
                proto,
                kind: FrontendKind::ClusterIp,
            }],
            endpoints: endpoints
                .iter()
                .map(|(i, state)| Endpoint {
                    addr: backend_ip(*i),
                    port: BACKEND_PORT,
                    state: *state,
                    local: true,
                })
                .collect(),
            ..Default::default()
        },
    )
}

impl Fixture {
    fn program(&mut self, services: &[(ServicePortName, ServicePort)]) -> SyncReport {
        let model = Model {
            services: services.iter().cloned().collect(),
        };
        let report = self.reconciler.sync(&model, &mut self.maps);
        assert!(report.errors.is_empty(), "sync errors: {:?}", report.errors);
        let snapshot = self.maps.snapshot().expect("snapshot");
        assert!(snapshot.dangling().is_empty(), "{:?}", snapshot.dangling());
        report
    }

    fn client(&self) -> LineChild {
        LineChild::spawn(
            Path::new(env!("CARGO_BIN_EXE_skiff-test-client")),
            &[],
            &self.ns,
            &self.cgroup,
        )
    }

    fn sock(&self, event: SockLbCounter) -> u64 {
        self.datapath
            .sock_counters()
            .expect("sock counters")
            .get(event)
    }
}

/// Parses `ok key=value reply=<backend>` into (key value, backend).
fn ok(answer: &str, key: &str) -> (String, String) {
    let mut fields = BTreeMap::new();
    let mut words = answer.split_whitespace();
    assert_eq!(words.next(), Some("ok"), "client answered `{answer}`");
    for w in words {
        if let Some((k, v)) = w.split_once('=') {
            fields.insert(k.to_owned(), v.to_owned());
        }
    }
    (fields[key].clone(), fields["reply"].clone())
}

#[test]
fn tcp_clusterip_spreads_over_backends_and_getpeername_shows_the_vip() {
    let mut f = fixture(3);
    let active = [
        (1, EndpointState::Active),
        (2, EndpointState::Active),
        (3, EndpointState::Active),
    ];
    f.program(&[service("web", Protocol::Tcp, 80, &active)]);
    let mut client = f.client();
    let mut hits: BTreeMap<String, u32> = BTreeMap::new();
    for _ in 0..90 {
        let (peer, backend) = ok(&client.ask(&format!("tcp {VIP}:80")), "peer");
        assert_eq!(
            peer,
            format!("{VIP}:80"),
            "getpeername() shows the VIP, not the backend"
        );
        *hits.entry(backend).or_default() += 1;
    }
    assert_eq!(hits.len(), 3, "every backend is used: {hits:?}");
    // Uniform random: each backend's share of 90 is Binomial(90, 1/3), mean 30, sd 4.5;
    // fewer than 10 has probability ~1e-5.
    assert!(hits.values().all(|n| *n >= 10), "distribution {hits:?}");
    assert!(f.sock(SockLbCounter::Translated) >= 90);
    assert!(f.sock(SockLbCounter::ReverseTranslated) >= 90);
}

#[test]
fn udp_replies_appear_to_come_from_the_vip() {
    let mut f = fixture(2);
    f.program(&[service(
        "dns",
        Protocol::Udp,
        53,
        &[(1, EndpointState::Active), (2, EndpointState::Active)],
    )]);
    let mut client = f.client();
    let mut backends = BTreeMap::<String, u32>::new();
    for _ in 0..40 {
        let (from, backend) = ok(&client.ask(&format!("udp {VIP}:53")), "from");
        assert_eq!(
            from,
            format!("{VIP}:53"),
            "recvmsg() shows the VIP as the source"
        );
        *backends.entry(backend).or_default() += 1;
    }
    assert_eq!(backends.len(), 2, "{backends:?}");
    for _ in 0..5 {
        let (peer, _) = ok(&client.ask(&format!("udpc {VIP}:53")), "peer");
        assert_eq!(
            peer,
            format!("{VIP}:53"),
            "connected UDP: getpeername() shows the VIP"
        );
    }
}

#[test]
fn a_service_without_endpoints_is_refused_at_once() {
    let mut f = fixture(1);
    f.program(&[
        service("web", Protocol::Tcp, 80, &[]),
        service("dns", Protocol::Udp, 53, &[]),
    ]);
    let mut client = f.client();
    for cmd in [
        format!("tcp {VIP}:80"),
        format!("udp {VIP}:53"),
        format!("udpc {VIP}:53"),
    ] {
        let answer = client.ask(&cmd);
        let words: Vec<&str> = answer.split_whitespace().collect();
        assert_eq!(
            &words[..3],
            ["err", "ConnectionRefused", "111"],
            "`{cmd}` answered `{answer}`"
        );
        let ms: u64 = words[3].parse().unwrap();
        assert!(
            ms < 100,
            "`{cmd}` took {ms} ms to fail; a refusal must be immediate"
        );
    }
    assert!(f.sock(SockLbCounter::NoBackend) >= 3);
}

#[test]
fn terminating_endpoints_serve_only_when_no_active_one_exists() {
    let mut f = fixture(3);
    f.program(&[service(
        "web",
        Protocol::Tcp,
        80,
        &[(1, EndpointState::Active), (2, EndpointState::Terminating)],
    )]);
    let mut client = f.client();
    for _ in 0..30 {
        let (_, backend) = ok(&client.ask(&format!("tcp {VIP}:80")), "peer");
        assert_eq!(
            backend,
            format!("{}:{BACKEND_PORT}", backend_ip(1)),
            "new flows avoid terminating endpoints"
        );
    }
    f.program(&[service(
        "web",
        Protocol::Tcp,
        80,
        &[
            (2, EndpointState::Terminating),
            (3, EndpointState::Terminating),
        ],
    )]);
    let mut seen = BTreeMap::<String, u32>::new();
    for _ in 0..30 {
        let (_, backend) = ok(&client.ask(&format!("tcp {VIP}:80")), "peer");
        *seen.entry(backend).or_default() += 1;
    }
    let want: Vec<String> = [2, 3]
        .iter()
        .map(|i| format!("{}:{BACKEND_PORT}", backend_ip(*i)))
        .collect();
    assert_eq!(
        seen.keys().cloned().collect::<Vec<_>>(),
        want,
        "all terminating: serving ones are used"
    );
}

#[test]
fn removing_a_backend_moves_a_udp_client_and_purges_its_reverse_entries() {
    let mut f = fixture(3);
    let all = [
        (1, EndpointState::Active),
        (2, EndpointState::Active),
        (3, EndpointState::Active),
    ];
    f.program(&[service("dns", Protocol::Udp, 53, &all)]);
    let mut client = f.client();
    let gone = format!("{}:{BACKEND_PORT}", backend_ip(1));
    let mut used_gone = false;
    for _ in 0..30 {
        let (_, backend) = ok(&client.ask(&format!("udp {VIP}:53")), "from");
        used_gone |= backend == gone;
    }
    assert!(
        used_gone,
        "30 datagrams over 3 backends reach backend 1 (p of not: 1e-5)"
    );
    let entries_before = f.maps.sock_rev_len();

    // The backend's pod goes away: the agent removes it, then its address disappears.
    let report = f.program(&[service("dns", Protocol::Udp, 53, &all[1..])]);
    assert_eq!(
        report.purged_sock_rev, 1,
        "the client's reverse entry for backend 1 is purged"
    );
    assert_eq!(f.maps.sock_rev_len(), entries_before - 1);
    f.ns.ip(&["addr", "del", &format!("{}/32", backend_ip(1)), "dev", "lo"]);

    for _ in 0..30 {
        let answer = client.ask(&format!("udp {VIP}:53"));
        let (from, backend) = ok(&answer, "from");
        assert_ne!(backend, gone, "no datagram goes to the removed backend");
        assert_eq!(from, format!("{VIP}:53"));
    }
}

#[test]
fn connected_udp_sockets_to_a_removed_backend_are_destroyed_and_reconnect() {
    let mut f = fixture(2);
    f.program(&[service(
        "dns",
        Protocol::Udp,
        53,
        &[(1, EndpointState::Active)],
    )]);
    let mut client = f.client();
    assert_eq!(client.ask(&format!("udpk-open {VIP}:53")), "ok");
    let (peer, backend) = ok(&client.ask(&format!("udpk {VIP}:53")), "peer");
    assert_eq!(
        (peer.as_str(), backend),
        (
            format!("{VIP}:53").as_str(),
            format!("{}:{BACKEND_PORT}", backend_ip(1))
        )
    );

    // The DNS pod is replaced. The socket stays connected to the old pod's address, so the
    // agent destroys it in the client's namespace.
    let report = f.program(&[service(
        "dns",
        Protocol::Udp,
        53,
        &[(2, EndpointState::Active)],
    )]);
    f.ns.ip(&["addr", "del", &format!("{}/32", backend_ip(1)), "dev", "lo"]);
    assert_eq!(report.stale_sockets.len(), 1, "{:?}", report.stale_sockets);
    let (addr, cookies) = report.stale_sockets[0].clone();
    let cookies: std::collections::HashSet<u64> = cookies.into_iter().collect();
    let destroyed =
        f.ns.run(|| skiff_agent::sockets::destroy_udp(addr, &cookies))
            .expect("sock_diag destroy");
    assert_eq!(destroyed, 1);

    // The application learns at once instead of timing out against a dead pod: the socket
    // was disconnected (send: EDESTADDRREQ) with ECONNABORTED pending (recv). It
    // reconnects through the service and lands on the live backend.
    let answer = client.ask(&format!("udpk {VIP}:53"));
    let words: Vec<&str> = answer.split_whitespace().collect();
    assert!(
        words[0] == "err" && ["89", "103"].contains(&words[2]),
        "{answer}"
    );
    assert!(
        words[3].parse::<u64>().unwrap() < 100,
        "the error is immediate: {answer}"
    );
    assert_eq!(client.ask(&format!("udpk-open {VIP}:53")), "ok");
    let (_, backend) = ok(&client.ask(&format!("udpk {VIP}:53")), "peer");
    assert_eq!(backend, format!("{}:{BACKEND_PORT}", backend_ip(2)));
}

#[test]
fn host_processes_cannot_bind_nodeports_on_node_addresses() {
    let mut f = fixture(1);
    let node = backend_ip(1); // stands in for a node address in this namespace
    f.datapath
        .attach_bind_protection(f.cgroup.path())
        .expect("attach post_bind4");
    f.datapath
        .set_bind_protection(30000, 32767, &[node], true)
        .unwrap();
    let mut client = f.client();
    for (cmd, want) in [
        ("bind-tcp 0.0.0.0:30080", "err AddrInUse 98"),
        ("bind-udp 0.0.0.0:32767", "err AddrInUse 98"),
        (&*format!("bind-tcp {node}:30000"), "err AddrInUse 98"),
        // Outside the range, or on an address that is not the node's: allowed.
        ("bind-tcp 0.0.0.0:8081", "ok"),
        ("bind-tcp 0.0.0.0:29999", "ok"),
        ("bind-tcp 127.0.0.1:30080", "ok"),
    ] {
        let answer = client.ask(cmd);
        assert!(
            answer.starts_with(want),
            "`{cmd}` answered `{answer}`, want `{want}`"
        );
    }
    // The agent can turn it off.
    f.datapath
        .set_bind_protection(30000, 32767, &[node], false)
        .unwrap();
    assert_eq!(client.ask("bind-tcp 0.0.0.0:30080"), "ok");
}

#[test]
fn socket_lb_session_affinity_keys_on_the_client_namespace() {
    let mut f = fixture(3);
    let active = [
        (1, EndpointState::Active),
        (2, EndpointState::Active),
        (3, EndpointState::Active),
    ];
    let mut svc = service("web", Protocol::Tcp, 80, &active);
    svc.1.affinity_timeout = Some(60);
    f.program(&[svc]);
    let mut client = f.client();
    let (_, first) = ok(&client.ask(&format!("tcp {VIP}:80")), "peer");
    for _ in 0..20 {
        let (_, backend) = ok(&client.ask(&format!("tcp {VIP}:80")), "peer");
        assert_eq!(
            backend, first,
            "every socket of the namespace sticks to one backend"
        );
    }
}
