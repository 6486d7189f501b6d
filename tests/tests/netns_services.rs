//! Per-packet service translation with real traffic: an external client namespace, a node
//! namespace running skiff's tc programs, backend pods on a bridge in the node, and a
//! second node with a remote pod. Maps are programmed by the real reconciler.
//!
//! ```text
//!  ext [c0 198.18.0.1] --- [n0 198.18.0.2] node [br0 198.18.2.1] --- pods 198.18.2.1x
//!                                          [n1 198.18.5.1] --- [m0 198.18.5.2] node2 [198.18.3.1] --- pod 198.18.3.10
//! ```

use std::{
    io::{BufRead as _, BufReader, Write as _},
    net::{Ipv4Addr, SocketAddrV4, TcpListener, TcpStream, UdpSocket},
    time::{Duration, Instant},
};

use skiff_agent::{
    datapath::{BpfServiceMaps, Datapath, DatapathConfig},
    lbmap::ServiceMaps as _,
    model::{
        Endpoint, EndpointState, Frontend, FrontendKind, Model, Protocol, ServicePort,
        ServicePortName,
    },
    reconcile::Reconciler,
};
use skiff_datapath_abi::NodeConfig;
use skiff_tests::{
    netns::{veth, BpffsDir, NetNs},
    privilege::require_privileges,
};

const NODE: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
const CLUSTER_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 100, 10);
const LB_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 200, 1);
const NODE_PORT: u16 = 30080;
const TIMEOUT: Duration = Duration::from_secs(3);

fn local_pod(i: u8) -> Ipv4Addr {
    Ipv4Addr::new(198, 18, 2, 10 + i)
}
const REMOTE_POD: Ipv4Addr = Ipv4Addr::new(198, 18, 3, 10);

struct Cluster {
    ext: NetNs,
    node: NetNs,
    _node2: NetNs,
    pods: Vec<NetNs>,
    _remote: NetNs,
    client_pod: NetNs,
    datapath: Option<Datapath>,
    maps: BpfServiceMaps,
    reconciler: Reconciler,
    ifaces: Vec<String>,
    pins: Option<BpffsDir>,
}

/// Serves TCP and UDP on 8080 in `ns` at `addr`, answering "<addr> saw <peer>".
fn serve(ns: &NetNs, addr: Ipv4Addr) {
    let at = SocketAddrV4::new(addr, 8080);
    let (tcp, udp) = ns.run(|| (TcpListener::bind(at).unwrap(), UdpSocket::bind(at).unwrap()));
    std::thread::spawn(move || {
        for mut conn in tcp.incoming().flatten() {
            let peer = conn.peer_addr().unwrap();
            let _ = writeln!(conn, "{at} saw {peer}");
        }
    });
    std::thread::spawn(move || {
        let mut buf = [0u8; 64];
        while let Ok((_, from)) = udp.recv_from(&mut buf) {
            let _ = udp.send_to(format!("{at} saw {from}").as_bytes(), from);
        }
    });
}

fn pod_on_bridge(node: &NetNs, i: u8, addr: Ipv4Addr) -> NetNs {
    let pod = NetNs::new(&format!("pod{i}"));
    let host = format!("p{i}");
    veth(node, &host, &pod, "eth0");
    node.enslave(&host, "br0");
    pod.addr("eth0", &format!("{addr}/24"));
    pod.ip(&["route", "add", "default", "via", "198.18.2.1"]);
    pod
}

fn cluster(local_pods: u8) -> Cluster {
    cluster_with(local_pods, None)
}

/// Loads the datapath into `node`, attached to `ifaces` (ingress) and n0 (egress).
fn start_datapath(
    node: &NetNs,
    ifaces: &[String],
    pins: Option<&BpffsDir>,
) -> (Datapath, BpfServiceMaps) {
    let config = DatapathConfig {
        pin_dir: pins.map(|p| p.path().to_path_buf()),
        ..Default::default()
    };
    let mut datapath = Datapath::load_with(&config).expect("loading the datapath");
    datapath
        .set_node_config(NodeConfig {
            snat_addr: u32::from(NODE).to_be(),
            ..Default::default()
        })
        .unwrap();
    node.run(|| {
        for iface in ifaces {
            datapath.attach_tc_ingress(iface).unwrap();
        }
        datapath.attach_tc_egress("n0").unwrap();
        // n0 faces the outside world: externalTrafficPolicy=Local applies to it.
        datapath.set_external_interface("n0").unwrap();
    });
    let maps = datapath.service_maps().unwrap();
    (datapath, maps)
}

fn cluster_with(local_pods: u8, pins: Option<BpffsDir>) -> Cluster {
    require_privileges();
    let ext = NetNs::new("ext");
    let node = NetNs::new("node");
    let node2 = NetNs::new("node2");
    veth(&ext, "c0", &node, "n0");
    ext.addr("c0", "198.18.0.1/24");
    ext.ip(&["route", "add", "default", "via", "198.18.0.2"]);
    node.addr("n0", "198.18.0.2/24");
    node.bridge("br0");
    node.addr("br0", "198.18.2.1/24");
    node.sysctl("net/ipv4/conf/all/forwarding", "1");
    let pods: Vec<NetNs> = (0..local_pods)
        .map(|i| pod_on_bridge(&node, i, local_pod(i)))
        .collect();
    for (i, pod) in pods.iter().enumerate() {
        serve(pod, local_pod(i as u8));
    }
    let client_pod = pod_on_bridge(&node, 99, Ipv4Addr::new(198, 18, 2, 99));

    // The second node and its pod, reached through n1.
    veth(&node, "n1", &node2, "m0");
    node.addr("n1", "198.18.5.1/24");
    node.ip(&["route", "add", "198.18.3.0/24", "via", "198.18.5.2"]);
    node2.addr("m0", "198.18.5.2/24");
    node2.ip(&["route", "add", "198.18.0.0/24", "via", "198.18.5.1"]);
    node2.sysctl("net/ipv4/conf/all/forwarding", "1");
    let remote = NetNs::new("remote");
    veth(&node2, "r0", &remote, "eth0");
    node2.addr("r0", "198.18.3.1/24");
    remote.addr("eth0", "198.18.3.10/24");
    remote.ip(&["route", "add", "default", "via", "198.18.3.1"]);
    serve(&remote, REMOTE_POD);

    let mut ifaces = vec!["n0".to_owned(), "n1".to_owned(), "p99".to_owned()];
    ifaces.extend((0..local_pods).map(|i| format!("p{i}")));
    let (datapath, maps) = start_datapath(&node, &ifaces, pins.as_ref());
    Cluster {
        ext,
        node,
        _node2: node2,
        pods,
        _remote: remote,
        client_pod,
        datapath: Some(datapath),
        maps,
        reconciler: Reconciler::new(),
        ifaces,
        pins,
    }
}

fn service(proto: Protocol, endpoints: &[Endpoint]) -> Model {
    let f = |addr, port, kind| Frontend {
        addr,
        port,
        proto,
        kind,
    };
    let port = ServicePort {
        proto: Some(proto),
        frontends: vec![
            f(CLUSTER_IP, 80, FrontendKind::ClusterIp),
            f(NODE, NODE_PORT, FrontendKind::NodePort),
            f(LB_IP, 80, FrontendKind::LoadBalancer),
        ],
        endpoints: endpoints.to_vec(),
        ..Default::default()
    };
    Model {
        services: [(ServicePortName::new("default", "web", ""), port)]
            .into_iter()
            .collect(),
    }
}

fn local(i: u8) -> Endpoint {
    Endpoint {
        addr: local_pod(i),
        port: 8080,
        state: EndpointState::Active,
        local: true,
    }
}
fn remote() -> Endpoint {
    Endpoint {
        addr: REMOTE_POD,
        port: 8080,
        state: EndpointState::Active,
        local: false,
    }
}

impl Cluster {
    /// Simulates an agent restart: the old datapath object goes away (as when the process
    /// exits), a new one loads from the same pins, reattaches and adopts the maps.
    fn restart(
        &mut self,
        desired: &Model,
        while_down: impl FnOnce(),
    ) -> skiff_agent::reconcile::SyncReport {
        drop(self.datapath.take());
        while_down();
        let (datapath, maps) = start_datapath(&self.node, &self.ifaces, self.pins.as_ref());
        self.datapath = Some(datapath);
        self.maps = maps;
        self.reconciler = Reconciler::new();
        let snapshot = self.maps.snapshot().unwrap();
        self.reconciler.adopt(&snapshot, desired);
        self.program(desired)
    }

    fn program(&mut self, model: &Model) -> skiff_agent::reconcile::SyncReport {
        let r = self.reconciler.sync(model, &mut self.maps);
        assert!(r.errors.is_empty(), "{:?}", r.errors);
        r
    }
}

/// One TCP exchange from `ns`: returns (peer as seen by the client, server's line).
fn tcp_from(ns: &NetNs, to: SocketAddrV4) -> std::io::Result<(SocketAddrV4, String)> {
    let stream = ns.run(|| TcpStream::connect_timeout(&to.into(), TIMEOUT))?;
    stream.set_read_timeout(Some(TIMEOUT))?;
    let peer = match stream.peer_addr()? {
        std::net::SocketAddr::V4(a) => a,
        other => panic!("{other}"),
    };
    let mut line = String::new();
    BufReader::new(&stream).read_line(&mut line)?;
    Ok((peer, line.trim().to_owned()))
}

#[test]
fn nodeport_and_loadbalancer_reach_local_backends_with_the_client_address_kept() {
    let mut c = cluster(2);
    c.program(&service(Protocol::Tcp, &[local(0), local(1)]));
    let mut seen = std::collections::BTreeSet::new();
    for to in [
        SocketAddrV4::new(NODE, NODE_PORT),
        SocketAddrV4::new(LB_IP, 80),
    ] {
        for _ in 0..30 {
            let (peer, line) =
                tcp_from(&c.ext, to).unwrap_or_else(|e| panic!("connecting to {to}: {e}"));
            assert_eq!(peer, to, "the client talks to the frontend");
            let (backend, saw) = line.split_once(" saw ").unwrap();
            assert!(
                saw.starts_with("198.18.0.1:"),
                "local backend sees the real client: {line}"
            );
            seen.insert(backend.to_owned());
        }
    }
    assert_eq!(seen.len(), 2, "both local backends serve: {seen:?}");
}

#[test]
fn nodeport_to_a_remote_backend_is_snated_and_answered() {
    let mut c = cluster(0);
    c.program(&service(Protocol::Tcp, &[remote()]));
    for _ in 0..10 {
        let (peer, line) =
            tcp_from(&c.ext, SocketAddrV4::new(NODE, NODE_PORT)).expect("connect through SNAT");
        assert_eq!(peer, SocketAddrV4::new(NODE, NODE_PORT));
        assert!(
            line.starts_with(&format!("{REMOTE_POD}:8080 saw 198.18.0.2:")),
            "remote backend sees the node: {line}"
        );
    }
    // UDP too, with replies appearing to come from the NodePort.
    let sock = c.ext.run(|| UdpSocket::bind("198.18.0.1:0")).unwrap();
    sock.set_read_timeout(Some(TIMEOUT)).unwrap();
    c.program(&service(Protocol::Udp, &[remote()]));
    sock.send_to(b"q", SocketAddrV4::new(NODE, NODE_PORT))
        .unwrap();
    let mut buf = [0u8; 128];
    let (n, from) = sock.recv_from(&mut buf).expect("UDP reply through SNAT");
    assert_eq!(
        from,
        std::net::SocketAddr::V4(SocketAddrV4::new(NODE, NODE_PORT))
    );
    assert!(String::from_utf8_lossy(&buf[..n])
        .starts_with(&format!("{REMOTE_POD}:8080 saw 198.18.0.2:")));
}

#[test]
fn clusterip_from_a_pod_without_socket_lb_is_translated_per_packet() {
    let mut c = cluster(2);
    c.program(&service(Protocol::Tcp, &[local(0), local(1)]));
    for _ in 0..10 {
        let (peer, line) = tcp_from(&c.client_pod, SocketAddrV4::new(CLUSTER_IP, 80))
            .expect("ClusterIP from a pod");
        assert_eq!(peer, SocketAddrV4::new(CLUSTER_IP, 80));
        assert!(line.contains(" saw 198.18.2.99:"), "{line}");
    }
}

#[test]
fn a_service_without_endpoints_is_refused_for_tcp_and_udp() {
    let mut c = cluster(1);
    c.program(&service(Protocol::Tcp, &[]));
    let start = Instant::now();
    let err = tcp_from(&c.ext, SocketAddrV4::new(NODE, NODE_PORT)).expect_err("no backend");
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused, "{err}");
    assert!(
        start.elapsed() < Duration::from_millis(100),
        "refused in {:?}",
        start.elapsed()
    );

    c.program(&service(Protocol::Udp, &[]));
    let sock = c.ext.run(|| UdpSocket::bind("198.18.0.1:0")).unwrap();
    sock.connect(SocketAddrV4::new(LB_IP, 80)).unwrap();
    sock.set_read_timeout(Some(TIMEOUT)).unwrap();
    sock.send(b"q").unwrap();
    let mut buf = [0u8; 16];
    let err = sock.recv(&mut buf).expect_err("ICMP port unreachable");
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused, "{err}");
}

#[test]
fn a_udp_client_moves_to_a_live_backend_when_its_backend_is_removed() {
    let mut c = cluster(2);
    c.program(&service(Protocol::Udp, &[local(0)]));
    let sock = c.ext.run(|| UdpSocket::bind("198.18.0.1:0")).unwrap();
    sock.set_read_timeout(Some(TIMEOUT)).unwrap();
    sock.connect(SocketAddrV4::new(NODE, NODE_PORT)).unwrap();
    let mut buf = [0u8; 128];
    let mut ask = || {
        sock.send(b"q").unwrap();
        let n = sock.recv(&mut buf).expect("reply");
        String::from_utf8_lossy(&buf[..n]).into_owned()
    };
    for _ in 0..5 {
        assert!(ask().starts_with(&format!("{}:8080", local_pod(0))));
    }
    // Replace backend 0 by backend 1 (a DNS pod rollout): the same socket, same 5-tuple,
    // must land on the live backend at once.
    let report = c.program(&service(Protocol::Udp, &[local(1)]));
    assert_eq!(report.purged_conntrack, 2);
    c.pods[0].ip(&["link", "set", "eth0", "down"]);
    for _ in 0..5 {
        assert!(
            ask().starts_with(&format!("{}:8080", local_pod(1))),
            "moved to the live backend"
        );
    }
    let _ = &c.node;
}

#[test]
fn a_pod_reaches_itself_through_its_own_service() {
    let mut c = cluster(1);
    c.program(&service(Protocol::Tcp, &[local(0)]));
    for _ in 0..5 {
        let (peer, line) =
            tcp_from(&c.pods[0], SocketAddrV4::new(CLUSTER_IP, 80)).expect("hairpin connect");
        assert_eq!(peer, SocketAddrV4::new(CLUSTER_IP, 80));
        assert!(
            line.starts_with(&format!("{}:8080 saw 198.18.0.2:", local_pod(0))),
            "hairpin flows are SNATed: {line}"
        );
    }
}

#[test]
fn an_agent_restart_during_a_long_tcp_stream_loses_nothing() {
    let mut c = cluster_with(2, Some(BpffsDir::new("restart")));
    // Echo servers on both pods, port 9090, behind NodePort 30090. A flow moved to the
    // other pod mid-stream would be reset by it: only surviving conntrack keeps it alive.
    for pod in 0..2u8 {
        let at = SocketAddrV4::new(local_pod(pod), 9090);
        let listener = c.pods[pod as usize].run(|| TcpListener::bind(at)).unwrap();
        std::thread::spawn(move || {
            for mut conn in listener.incoming().flatten() {
                std::thread::spawn(move || {
                    let mut buf = [0u8; 4096];
                    loop {
                        match std::io::Read::read(&mut conn, &mut buf) {
                            Ok(0) | Err(_) => break,
                            Ok(n) => {
                                if conn.write_all(&buf[..n]).is_err() {
                                    break;
                                }
                            }
                        }
                    }
                });
            }
        });
    }
    let echo = Model {
        services: [(
            ServicePortName::new("default", "echo", ""),
            ServicePort {
                proto: Some(Protocol::Tcp),
                frontends: vec![Frontend {
                    addr: NODE,
                    port: 30090,
                    proto: Protocol::Tcp,
                    kind: FrontendKind::NodePort,
                }],
                endpoints: (0..2)
                    .map(|i| Endpoint {
                        addr: local_pod(i),
                        port: 9090,
                        state: EndpointState::Active,
                        local: true,
                    })
                    .collect(),
                ..Default::default()
            },
        )]
        .into_iter()
        .collect(),
    };
    c.program(&echo);
    let mut stream = c
        .ext
        .run(|| TcpStream::connect_timeout(&SocketAddrV4::new(NODE, 30090).into(), TIMEOUT))
        .expect("connect");
    stream.set_read_timeout(Some(TIMEOUT)).unwrap();
    let exchange = |stream: &mut TcpStream, round: u32| {
        let chunk: Vec<u8> = (0..1024u32).map(|i| (i + round) as u8).collect();
        stream
            .write_all(&chunk)
            .unwrap_or_else(|e| panic!("round {round}: write: {e}"));
        let mut back = vec![0u8; chunk.len()];
        std::io::Read::read_exact(stream, &mut back)
            .unwrap_or_else(|e| panic!("round {round}: read: {e}"));
        assert_eq!(back, chunk, "round {round}: echo differs");
    };
    for round in 0..50 {
        exchange(&mut stream, round);
    }
    let ct_before = c.maps.conntrack_entries().unwrap().len();
    // While no agent runs, the pinned links keep the programs attached and the pinned
    // maps keep the flow's state: the stream goes on.
    let report = c.restart(&echo, || {
        for round in 50..60 {
            exchange(&mut stream, round);
        }
    });
    assert_eq!(
        report.writes, 0,
        "the restarted agent adopts the maps and rewrites nothing"
    );
    assert_eq!(
        c.maps.conntrack_entries().unwrap().len(),
        ct_before,
        "conntrack survived"
    );
    for round in 60..100 {
        exchange(&mut stream, round);
    }
}

#[test]
fn the_debug_views_read_counters_and_flows_from_the_live_pinned_maps() {
    let pins = BpffsDir::new("debug");
    let pin_dir = pins.path().to_path_buf();
    let mut c = cluster_with(2, Some(pins));
    c.program(&service(Protocol::Tcp, &[local(0), local(1)]));
    for _ in 0..10 {
        tcp_from(&c.ext, SocketAddrV4::new(NODE, NODE_PORT)).expect("connect");
    }
    let inspector = skiff_agent::datapath::Inspector::new(&pin_dir);
    let snapshot = inspector.snapshot().unwrap();
    assert_eq!(
        snapshot,
        c.maps.snapshot().unwrap(),
        "the pins are the live maps"
    );
    let sid = snapshot.services.values().next().unwrap().service_id;
    let svc = inspector.lb_counters(false, &[sid]).unwrap()[0].1;
    assert_eq!(svc.new_flows, 10, "one new flow per connection");
    assert!(
        svc.packets >= 30,
        "SYN, ACK and FIN at least, per connection: {svc:?}"
    );
    let ids: Vec<u32> = snapshot.backends.keys().copied().collect();
    let per_backend = inspector.lb_counters(true, &ids).unwrap();
    assert_eq!(
        per_backend.iter().map(|(_, c)| c.new_flows).sum::<u64>(),
        10
    );
    assert_eq!(
        per_backend.iter().map(|(_, c)| c.packets).sum::<u64>(),
        svc.packets
    );

    let sc = [(sid, svc)].into_iter().collect();
    let bc = per_backend.into_iter().collect();
    let list = skiff_agent::debug::lb_list(&snapshot, &sc, &bc);
    assert!(
        list.contains(&format!(
            "198.18.0.2:30080/TCP NodePort service={sid} active=2 terminating=0 new_flows=10"
        )),
        "{list}"
    );
    let counters = inspector.counters().unwrap();
    assert!(
        counters
            .class(skiff_datapath_abi::PacketClass::Ipv4Tcp)
            .packets
            >= 30
    );
    assert_eq!(
        counters.drops.iter().map(|(_, n)| n).sum::<u64>(),
        0,
        "{}",
        counters.render()
    );
    let ct = inspector.conntrack().unwrap();
    assert_eq!(ct.len(), 20, "two entries per connection");
    let text = skiff_agent::debug::ct_list(&ct, &Default::default(), u64::MAX);
    assert_eq!(
        text.lines()
            .filter(|l| l.contains(" fwd ") && l.contains("seen-reply"))
            .count(),
        10,
        "{text}"
    );
    let explained = skiff_agent::debug::explain(
        &snapshot,
        None,
        6,
        "198.18.0.1:1".parse().unwrap(),
        SocketAddrV4::new(NODE, NODE_PORT),
    );
    assert!(explained.contains("among 2 active backends"), "{explained}");
}

#[test]
fn external_traffic_policy_local_preserves_the_client_address_and_drops_without_local_backends() {
    let mut c = cluster(1);
    let mut model = service(Protocol::Tcp, &[local(0), remote()]);
    for port in model.services.values_mut() {
        port.external_local = true;
    }
    c.program(&model);
    for _ in 0..20 {
        let (_, line) = tcp_from(&c.ext, SocketAddrV4::new(NODE, NODE_PORT)).expect("connect");
        assert!(
            line.starts_with(&format!("{}:8080 saw 198.18.0.1:", local_pod(0))),
            "only the local backend, and it sees the real client: {line}"
        );
    }
    // In-cluster clients still reach every backend through the same NodePort.
    let mut remote_seen = false;
    for _ in 0..30 {
        let (_, line) =
            tcp_from(&c.client_pod, SocketAddrV4::new(NODE, NODE_PORT)).expect("connect");
        remote_seen |= line.starts_with(&format!("{REMOTE_POD}:8080"));
    }
    assert!(
        remote_seen,
        "30 in-cluster connections over 2 backends reach the remote one"
    );
    // Without a local endpoint, outside connections are dropped, not refused: the
    // external load balancer's health check must see this node fail.
    let mut model = service(Protocol::Tcp, &[remote()]);
    for port in model.services.values_mut() {
        port.external_local = true;
    }
    c.program(&model);
    let stream = c.ext.run(|| {
        TcpStream::connect_timeout(
            &SocketAddrV4::new(NODE, NODE_PORT).into(),
            Duration::from_millis(300),
        )
    });
    let err = stream.expect_err("dropped");
    assert_eq!(err.kind(), std::io::ErrorKind::TimedOut, "{err}");
}

#[test]
fn native_xdp_on_veth_forwards_nodeport_flows_to_a_remote_backend() {
    let mut c = cluster(0);
    c.program(&service(Protocol::Tcp, &[remote()]));
    // Frames from a real wire carry complete checksums; a veth peer hands over
    // CHECKSUM_PARTIAL frames instead, whose offload state XDP cannot see (and a
    // redirected xdp_frame loses). The client's veth plays the wire here.
    let out = std::process::Command::new("ip")
        .args([
            "netns",
            "exec",
            c.ext.name(),
            "ethtool",
            "-K",
            "c0",
            "tx",
            "off",
        ])
        .output()
        .expect("running ethtool (installed by cargo xtask setup)");
    assert!(
        out.status.success(),
        "ethtool: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let dp = c.datapath.as_mut().unwrap();
    // Native XDP on the node-facing veth. A veth only receives XDP-redirected frames
    // natively when its peer runs XDP too: skiff's program on node2's m0 passes all of
    // them (nothing there is a frontend).
    c.node
        .run(|| dp.attach_xdp("n0", true))
        .expect("native XDP on n0");
    c._node2
        .run(|| dp.attach_xdp("m0", true))
        .expect("native XDP on m0");
    for _ in 0..10 {
        let (peer, line) =
            tcp_from(&c.ext, SocketAddrV4::new(NODE, NODE_PORT)).expect("connect through XDP");
        assert_eq!(peer, SocketAddrV4::new(NODE, NODE_PORT));
        assert!(
            line.starts_with(&format!("{REMOTE_POD}:8080 saw 198.18.0.2:")),
            "{line}"
        );
    }
    let (redirected, _) = c.datapath.as_ref().unwrap().xdp_counters().unwrap();
    assert!(
        redirected >= 20,
        "XDP forwarded the flows' packets itself ({redirected} redirected)"
    );
}

// agent sync scale (issue 7)
/// The per-service and per-backend counters are read with one BPF_MAP_LOOKUP_BATCH per
/// map (the agent samples them every tick, on the thread that programs the maps): the
/// sums over CPUs must be what was written, for sparse ids, for id 0, for ids past the
/// array (never counted: zero), through both readers (the agent's and the debug views').
#[test]
fn batch_counter_reads_sum_what_each_cpu_counted() {
    use skiff_datapath_abi::LbCounter;
    require_privileges();
    let pins = BpffsDir::new("ctrbatch");
    let mut datapath = Datapath::load_with(&DatapathConfig {
        pin_dir: Some(pins.path().to_path_buf()),
        ..Default::default()
    })
    .expect("loading the datapath");
    let cpus = skiff_agent::datapath::possible_cpus().unwrap();
    let written = [1u32, 2, 5, 700, 4095, 16383];
    let ids: Vec<u32> = vec![0, 1, 2, 3, 5, 700, 4095, 16383, 16384, 1_000_000];
    let value = |id: u32, cpu: usize| LbCounter {
        new_flows: u64::from(id) * 10 + cpu as u64,
        packets: u64::from(id) + 1_000 * cpu as u64,
        bytes: (u64::from(id) << 20) | cpu as u64,
    };
    for backends in [false, true] {
        for id in written {
            let per_cpu = (0..cpus).map(|c| value(id, c)).collect();
            datapath.set_lb_counter(backends, id, per_cpu).unwrap();
        }
        // Id 3 stays zero: a gap between written ids.
        let want: Vec<(u32, LbCounter)> = ids
            .iter()
            .map(|&id| {
                let sum = (0..cpus)
                    .filter(|_| written.contains(&id))
                    .fold(LbCounter::default(), |a, c| a.saturating_add(value(id, c)));
                (id, sum)
            })
            .collect();
        assert!(want[1].1.packets > 0, "the test writes something");
        assert_eq!(
            datapath.lb_counters(backends, &ids).unwrap(),
            want,
            "backends={backends}: the agent's read"
        );
        assert_eq!(
            skiff_agent::datapath::Inspector::new(pins.path())
                .lb_counters(backends, &ids)
                .unwrap(),
            want,
            "backends={backends}: the debug views' read"
        );
        assert!(datapath.lb_counters(backends, &[]).unwrap().is_empty());
        // The per-index fallback would give the same sums: the batch path must have run
        // (Linux >= 5.6 has batch ops for array maps; the suite needs >= 5.15).
        assert!(
            skiff_agent::datapath::counter_reads_batched(),
            "the kernel refused BPF_MAP_LOOKUP_BATCH: the batch read is broken"
        );
    }
}
// end agent sync scale
