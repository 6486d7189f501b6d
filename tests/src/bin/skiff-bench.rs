//! `cargo xtask bench datapath`: skiff's datapath against the kernel floor and against
//! kube-proxy's iptables ruleset, on one throwaway network-namespace topology. Prints a
//! markdown table and writes JSON. Every packet stays inside namespaces made here.
//!
//! ```text
//!  client ns [c0 198.18.0.1] --- [n0 198.18.0.2] node ns [br0 198.18.2.1] --- backend pod 198.18.2.10-19
//!                                                        \--- client pod 198.18.2.99 (ClusterIP client)
//! ```

use std::{
    collections::BTreeMap,
    net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener},
    path::PathBuf,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _};
use skiff_agent::{
    datapath::{map_memory, Datapath, DatapathConfig},
    lbmap::MapSizes,
    model::{
        Endpoint, EndpointState, Frontend, FrontendKind, Model, Protocol, ServicePort,
        ServicePortName,
    },
    reconcile::Reconciler,
};
use skiff_datapath_abi::{program_names::TC_INGRESS, NodeConfig};
use skiff_tests::{
    bench::{
        kube_proxy::{self, SvcPort},
        load::{self, Run},
    },
    cgroup::{cgroup2_root, Cgroup},
    netns::{veth, NetNs},
    packet::{Packet, TcpFlags},
    prog_run::ProgRunner,
};

const NODE: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
const CLIENT: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
const POD_CLIENT: Ipv4Addr = Ipv4Addr::new(198, 18, 2, 99);
const NODE_PORT: u16 = 30080;
const ENDPOINTS: u8 = 10;

fn backend_ip(i: u8) -> Ipv4Addr {
    Ipv4Addr::new(198, 18, 2, 10 + i)
}

/// ClusterIP of service `i`: 100.64.0.0/10 holds 100k services. These addresses exist
/// only as map keys and rules inside the benchmark's namespaces (no route leads out).
fn cluster_ip(i: usize) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(Ipv4Addr::new(100, 64, 0, 0)) + i as u32)
}

/// Endpoint `e` of a never-hit service `i` (100.96.0.0/11).
fn fake_endpoint(i: usize, e: usize) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(Ipv4Addr::new(100, 96, 0, 0)) + (i * 16 + e) as u32)
}

/// N services; service 0 is the measured one (its endpoints are the backend pod's 10
/// addresses), the others point at addresses nothing answers (never hit).
fn services(n: usize, endpoints: usize) -> Vec<SvcPort> {
    (0..n)
        .map(|i| SvcPort {
            namespace: "bench".into(),
            name: format!("svc{i}"),
            port_name: "http".into(),
            cluster_ip: cluster_ip(i),
            port: 80,
            // 30080.. up to the end of the default NodePort range (32767).
            node_port: (i < 2688).then_some(NODE_PORT + i as u16),
            endpoints: (0..endpoints)
                .map(|e| {
                    if i == 0 {
                        (backend_ip(e as u8), 8080)
                    } else {
                        (fake_endpoint(i, e), 8080)
                    }
                })
                .collect(),
        })
        .collect()
}

fn model(svcs: &[SvcPort], node_ports: bool) -> Model {
    let mut m = Model::default();
    for s in svcs {
        let mut frontends = vec![Frontend {
            addr: s.cluster_ip,
            port: s.port,
            proto: Protocol::Tcp,
            kind: FrontendKind::ClusterIp,
        }];
        if let (true, Some(np)) = (node_ports, s.node_port) {
            frontends.push(Frontend {
                addr: NODE,
                port: np,
                proto: Protocol::Tcp,
                kind: FrontendKind::NodePort,
            });
        }
        m.services.insert(
            ServicePortName::new(&s.namespace, &s.name, &s.port_name),
            ServicePort {
                proto: Some(Protocol::Tcp),
                frontends,
                endpoints: s
                    .endpoints
                    .iter()
                    .map(|(a, p)| Endpoint {
                        addr: *a,
                        port: *p,
                        state: EndpointState::Active,
                        local: true,
                    })
                    .collect(),
                ..Default::default()
            },
        );
    }
    m
}

fn sizes_for(n: usize, endpoints: usize) -> MapSizes {
    let d = MapSizes::default();
    MapSizes {
        services: d.services.max((n * 2 + 16) as u32),
        slots: d.slots.max((n * endpoints + 16) as u32),
        backends: d.backends.max((n * endpoints + 16) as u32),
        ..d
    }
}

#[derive(serde::Serialize, Default)]
struct Report {
    machine: BTreeMap<String, String>,
    prog_run: Vec<ProgRunRow>,
    connect4: Vec<Connect4Row>,
    selection: Vec<SelectionRow>,
    programming: Vec<ProgrammingRow>,
    memory: Vec<skiff_agent::datapath::MapMemory>,
    traffic: Vec<TrafficRow>,
    forwarding: Vec<ForwardingRow>,
}

#[derive(serde::Serialize)]
struct ProgRunRow {
    services: usize,
    /// Mean over 100k repeats of one packet of an established flow.
    established_ns: f64,
    /// Mean of single runs of packets that each start a new flow.
    new_flow_single_ns: f64,
    /// Mean of single runs of packets of established flows: the fixed cost of a
    /// single-run measurement, to subtract.
    established_single_ns: f64,
    /// established_ns + (new_flow_single_ns - established_single_ns).
    new_flow_ns: f64,
    not_a_service_ns: f64,
}

#[derive(serde::Serialize)]
struct Connect4Row {
    services: usize,
    /// Mean connect() of an unconnected UDP socket to a service VIP (socket LB runs).
    vip_connect_ns: f64,
    /// The same to the backend address directly (no service lookup).
    direct_connect_ns: f64,
}

#[derive(serde::Serialize)]
struct SelectionRow {
    backends: usize,
    random_new_flow_ns: f64,
    maglev_new_flow_ns: f64,
}

#[derive(serde::Serialize)]
struct ProgrammingRow {
    what: String,
    services: usize,
    endpoints_each: usize,
    skiff_ms: f64,
    iptables_restore_ms: f64,
}

#[derive(serde::Serialize)]
struct ForwardingRow {
    mode: String,
    sent_pps: f64,
    received_pps: f64,
}

#[derive(serde::Serialize)]
struct TrafficRow {
    target: String,
    mode: String,
    services: usize,
    crr: Run,
    rr: Run,
    bulk_gbps: Option<f64>,
}

fn machine() -> BTreeMap<String, String> {
    let mut m = BTreeMap::new();
    let sh = |c: &str| {
        Command::new("sh")
            .arg("-c")
            .arg(c)
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
            .unwrap_or_default()
    };
    m.insert("kernel".into(), sh("uname -r"));
    m.insert("cpus".into(), sh("nproc"));
    m.insert(
        "cpu".into(),
        sh("grep -m1 'model name' /proc/cpuinfo | cut -d: -f2"),
    );
    m.insert(
        "memory".into(),
        sh("grep MemTotal /proc/meminfo | tr -s ' '"),
    );
    m.insert("iptables".into(), sh("iptables-restore --version"));
    m
}

/// Per-packet cost through BPF_PROG_TEST_RUN with `n` services installed.
fn prog_run_costs(n: usize) -> ProgRunRow {
    let config = DatapathConfig {
        map_sizes: sizes_for(n, 1),
        pin_dir: None,
    };
    let mut runner = ProgRunner::with_config(&config);
    let mut maps = runner.service_maps();
    runner.set_node_config(NodeConfig {
        snat_addr: u32::from(NODE).to_be(),
        ..Default::default()
    });
    let svcs = services(n, 1);
    let report = Reconciler::new().sync(&model(&svcs, true), &mut maps);
    assert!(report.errors.is_empty(), "{:?}", report.errors);

    let to = SocketAddrV4::new(NODE, NODE_PORT);
    let repeat = 100_000;
    // Established: one SYN creates the flow, then the same ACK over and over.
    runner.run(
        TC_INGRESS,
        &Packet::tcp(SocketAddrV4::new(CLIENT, 1000), to, TcpFlags::SYN).build(),
    );
    let ack = Packet::tcp(SocketAddrV4::new(CLIENT, 1000), to, TcpFlags::ACK).build();
    let established = runner
        .run_repeat(TC_INGRESS, &ack, repeat)
        .duration
        .as_nanos() as f64;
    // New flows: distinct source ports, one run each (mean of the kernel's timings).
    let flows = 5000u16;
    let mut total = 0u128;
    for i in 0..flows {
        let syn = Packet::tcp(SocketAddrV4::new(CLIENT, 2000 + i), to, TcpFlags::SYN).build();
        total += runner.run(TC_INGRESS, &syn).duration.as_nanos();
    }
    let new_flow_single = total as f64 / f64::from(flows);
    // The same number of single runs on established flows (the ones just created):
    // the difference is what creating a flow costs; the rest is per-call overhead.
    let mut total = 0u128;
    for i in 0..flows {
        let ack = Packet::tcp(SocketAddrV4::new(CLIENT, 2000 + i), to, TcpFlags::ACK).build();
        total += runner.run(TC_INGRESS, &ack).duration.as_nanos();
    }
    let established_single = total as f64 / f64::from(flows);
    let other = Packet::tcp(
        SocketAddrV4::new(CLIENT, 1000),
        SocketAddrV4::new(NODE, 22),
        TcpFlags::ACK,
    )
    .build();
    let not_a_service = runner
        .run_repeat(TC_INGRESS, &other, repeat)
        .duration
        .as_nanos() as f64;
    ProgRunRow {
        services: n,
        established_ns: established,
        new_flow_single_ns: new_flow_single,
        established_single_ns: established_single,
        new_flow_ns: established + (new_flow_single - established_single),
        not_a_service_ns: not_a_service,
    }
}

/// Socket-LB cost: connect() of a UDP socket (no packet is sent) to a VIP, with connect4
/// translating it, vs to the backend address directly, from this process moved into a
/// cgroup with socket LB attached. The difference is what connect4 adds per connect().
fn connect4_cost(n: usize) -> anyhow::Result<Connect4Row> {
    let ns = NetNs::new("c4");
    ns.ip(&["addr", "add", "198.18.1.1/32", "dev", "lo"]);
    let cgroup = Cgroup::new("c4");
    std::fs::write(cgroup.path().join("cgroup.procs"), "0").context("joining the cgroup")?;
    let config = DatapathConfig {
        map_sizes: sizes_for(n, 1),
        pin_dir: None,
    };
    let mut dp = Datapath::load_with(&config)?;
    dp.attach_sock_lb(cgroup.path())?;
    let mut maps = dp.service_maps()?;
    let mut svcs = services(n, 1);
    svcs[0].endpoints = vec![(Ipv4Addr::new(198, 18, 1, 1), 8080)];
    // The measured service speaks UDP (connect() on UDP sends nothing).
    let mut m = model(&svcs, false);
    for port in m.services.values_mut() {
        port.proto = Some(Protocol::Udp);
        for f in &mut port.frontends {
            f.proto = Protocol::Udp;
        }
    }
    let report = Reconciler::new().sync(&m, &mut maps);
    assert!(report.errors.is_empty(), "{:?}", report.errors.first());
    let rounds = 20_000u32;
    let time = |to: SocketAddr| -> anyhow::Result<f64> {
        ns.run(|| -> anyhow::Result<f64> {
            let sock = std::net::UdpSocket::bind("0.0.0.0:0")?;
            let start = Instant::now();
            for _ in 0..rounds {
                sock.connect(to)?;
            }
            Ok(start.elapsed().as_nanos() as f64 / f64::from(rounds))
        })
    };
    // Warm up both paths, then measure them interleaved to share any drift.
    time(SocketAddr::V4(SocketAddrV4::new(cluster_ip(0), 80)))?;
    let mut vip = 0.0;
    let mut direct = 0.0;
    for _ in 0..3 {
        vip += time(SocketAddr::V4(SocketAddrV4::new(cluster_ip(0), 80)))?;
        direct += time(SocketAddr::V4(SocketAddrV4::new(
            Ipv4Addr::new(198, 18, 1, 1),
            8080,
        )))?;
    }
    std::fs::write(cgroup2_root().join("cgroup.procs"), "0").context("leaving the cgroup")?;
    drop(maps);
    drop(dp);
    Ok(Connect4Row {
        services: n,
        vip_connect_ns: vip / 3.0,
        direct_connect_ns: direct / 3.0,
    })
}

/// New-flow cost (net of single-run overhead, as in `prog_run_costs`) of random vs Maglev
/// selection for one NodePort service with `backends` backends.
fn selection_costs(backends: usize) -> SelectionRow {
    let cost = |maglev: bool| {
        let config = DatapathConfig {
            map_sizes: sizes_for(1, backends),
            pin_dir: None,
        };
        let mut runner = ProgRunner::with_config(&config);
        let mut maps = runner.service_maps();
        let mut svcs = services(1, backends);
        svcs[0].endpoints = (0..backends).map(|e| (fake_endpoint(1, e), 8080)).collect();
        let mut m = model(&svcs, true);
        for port in m.services.values_mut() {
            port.maglev = maglev;
        }
        let report = Reconciler::new().sync(&m, &mut maps);
        assert!(report.errors.is_empty(), "{:?}", report.errors);
        let to = SocketAddrV4::new(NODE, NODE_PORT);
        let flows = 3000u16;
        let (mut new_total, mut est_total) = (0u128, 0u128);
        for i in 0..flows {
            let c = SocketAddrV4::new(CLIENT, 2000 + i);
            new_total += runner
                .run(TC_INGRESS, &Packet::tcp(c, to, TcpFlags::SYN).build())
                .duration
                .as_nanos();
            est_total += runner
                .run(TC_INGRESS, &Packet::tcp(c, to, TcpFlags::ACK).build())
                .duration
                .as_nanos();
        }
        let ack = Packet::tcp(SocketAddrV4::new(CLIENT, 2000), to, TcpFlags::ACK).build();
        let established = runner
            .run_repeat(TC_INGRESS, &ack, 100_000)
            .duration
            .as_nanos() as f64;
        established + (new_total as f64 - est_total as f64) / f64::from(flows)
    };
    SelectionRow {
        backends,
        random_new_flow_ns: cost(false),
        maglev_new_flow_ns: cost(true),
    }
}

fn iptables_restore(ns: &NetNs, rules: &str, noflush: bool) -> anyhow::Result<Duration> {
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", ns.name(), "iptables-restore", "-w"]);
    if noflush {
        cmd.arg("--noflush");
    }
    let mut child = cmd
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("running iptables-restore")?;
    let start = Instant::now();
    {
        use std::io::Write as _;
        child.stdin.take().unwrap().write_all(rules.as_bytes())?;
    }
    let out = child.wait_with_output()?;
    let took = start.elapsed();
    if !out.status.success() {
        bail!(
            "iptables-restore failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(took)
}

/// Install from empty and one-endpoint change, skiff vs iptables-restore.
fn programming_costs(n: usize, endpoints: usize) -> anyhow::Result<Vec<ProgrammingRow>> {
    let svcs = services(n, endpoints);
    let desired = model(&svcs, true);
    let config = DatapathConfig {
        map_sizes: sizes_for(n, endpoints),
        pin_dir: None,
    };
    let mut datapath = Datapath::load_with(&config)?;
    let mut maps = datapath.service_maps()?;
    let mut reconciler = Reconciler::new();
    let start = Instant::now();
    let report = reconciler.sync(&desired, &mut maps);
    let install = start.elapsed();
    assert!(report.errors.is_empty(), "{:?}", report.errors);

    // One endpoint of one service changes, 100 times (alternating), mean.
    let mut changed = desired.clone();
    let name = ServicePortName::new("bench", &format!("svc{}", n / 2), "http");
    let rounds = 100;
    let start = Instant::now();
    for r in 0..rounds {
        let port = changed.services.get_mut(&name).unwrap();
        port.endpoints[0].addr = if r % 2 == 0 {
            Ipv4Addr::new(198, 18, 255, 1)
        } else {
            svcs[n / 2].endpoints[0].0
        };
        let report = reconciler.sync(&changed, &mut maps);
        assert!(report.errors.is_empty() && report.writes > 0);
    }
    let change = start.elapsed() / rounds;

    let ns = NetNs::new("iptables");
    let full = kube_proxy::ruleset(&svcs, "198.18.0.0/15");
    let ipt_install = iptables_restore(&ns, &full, false)?;
    // kube-proxy's partial sync (MinimizeIPTablesRestore): only the changed service's
    // chains are rewritten, with --noflush.
    let mut one = svcs[n / 2].clone();
    one.endpoints[0].0 = Ipv4Addr::new(198, 18, 255, 1);
    let partial = partial_ruleset(&one);
    let ipt_change = iptables_restore(&ns, &partial, true)?;
    drop(datapath);
    Ok(vec![
        ProgrammingRow {
            what: "install from empty".into(),
            services: n,
            endpoints_each: endpoints,
            skiff_ms: install.as_secs_f64() * 1e3,
            iptables_restore_ms: ipt_install.as_secs_f64() * 1e3,
        },
        ProgrammingRow {
            what: "change one endpoint".into(),
            services: n,
            endpoints_each: endpoints,
            skiff_ms: change.as_secs_f64() * 1e3,
            iptables_restore_ms: ipt_change.as_secs_f64() * 1e3,
        },
    ])
}

/// The chains of one service, flushed and rewritten, as kube-proxy's partial restore does.
fn partial_ruleset(s: &SvcPort) -> String {
    let full = kube_proxy::ruleset(std::slice::from_ref(s), "198.18.0.0/15");
    let mut out = String::from("*nat\n");
    for l in full.lines() {
        // Keep this service's own chains (declared = flushed) and their rules.
        if (l.starts_with(":KUBE-SVC-")
            || l.starts_with(":KUBE-SEP-")
            || l.starts_with(":KUBE-EXT-"))
            || (l.starts_with("-A KUBE-SVC-")
                || l.starts_with("-A KUBE-SEP-")
                || l.starts_with("-A KUBE-EXT-"))
        {
            out.push_str(l);
            out.push('\n');
        }
    }
    out.push_str("COMMIT\n");
    out
}

struct Topology {
    client: NetNs,
    node: NetNs,
    _pod: NetNs,
    client_pod: NetNs,
}

fn topology() -> Topology {
    let client = NetNs::new("bclient");
    let node = NetNs::new("bnode");
    let pod = NetNs::new("bpod");
    let client_pod = NetNs::new("bcpod");
    veth(&client, "c0", &node, "n0");
    client.addr("c0", "198.18.0.1/24");
    client.ip(&["route", "add", "default", "via", "198.18.0.2"]);
    node.addr("n0", "198.18.0.2/24");
    node.bridge("br0");
    node.addr("br0", "198.18.2.1/24");
    node.sysctl("net/ipv4/conf/all/forwarding", "1");
    for (ns, host, first) in [(&pod, "pb", backend_ip(0)), (&client_pod, "pc", POD_CLIENT)] {
        veth(&node, host, ns, "eth0");
        node.enslave(host, "br0");
        ns.addr("eth0", &format!("{first}/24"));
        ns.ip(&["route", "add", "default", "via", "198.18.2.1"]);
    }
    for e in 1..ENDPOINTS {
        pod.ip(&[
            "addr",
            "add",
            &format!("{}/24", backend_ip(e)),
            "dev",
            "eth0",
        ]);
    }
    let listener = pod.run(|| TcpListener::bind("0.0.0.0:8080")).expect("bind");
    load::serve(listener);
    Topology {
        client,
        node,
        _pod: pod,
        client_pod,
    }
}

fn measure(ns: &NetNs, to: SocketAddr, duration: Duration, bulk: bool) -> (Run, Run, Option<f64>) {
    ns.run(|| {
        let crr = load::crr(to, duration);
        let rr = load::rr(to, duration);
        let b = bulk.then(|| load::bulk(to, duration));
        (crr, rr, b)
    })
}

fn traffic(scales: &[usize], duration: Duration) -> anyhow::Result<Vec<TrafficRow>> {
    let t = topology();
    let mut rows = Vec::new();
    // Socket LB for the ClusterIP client needs this process in a cgroup skiff attaches to.
    let cgroup = Cgroup::new("bench");
    std::fs::write(cgroup.path().join("cgroup.procs"), "0").context("joining the bench cgroup")?;
    let targets = [
        (
            "NodePort from outside",
            &t.client,
            SocketAddr::V4(SocketAddrV4::new(NODE, NODE_PORT)),
        ),
        (
            "ClusterIP from a pod",
            &t.client_pod,
            SocketAddr::V4(SocketAddrV4::new(cluster_ip(0), 80)),
        ),
    ];
    // (a) the kernel floor: the same clients straight to a backend address.
    for (target, ns, _) in &targets {
        let direct = SocketAddr::V4(SocketAddrV4::new(backend_ip(0), 8080));
        let (crr, rr, bulk) = measure(ns, direct, duration, true);
        rows.push(TrafficRow {
            target: (*target).into(),
            mode: "routing (no service)".into(),
            services: 0,
            crr,
            rr,
            bulk_gbps: bulk,
        });
    }
    for &n in scales {
        let svcs = services(n, ENDPOINTS as usize);
        // (b) kube-proxy's iptables ruleset.
        iptables_restore(&t.node, &kube_proxy::ruleset(&svcs, "198.18.2.0/24"), false)?;
        for (i, (target, ns, to)) in targets.iter().enumerate() {
            let (crr, rr, bulk) = measure(ns, *to, duration, n == scales[0] && i == 0);
            rows.push(TrafficRow {
                target: (*target).into(),
                mode: "kube-proxy iptables".into(),
                services: n,
                crr,
                rr,
                bulk_gbps: bulk,
            });
        }
        // An empty nat table (restore without --noflush) removes every kube-proxy chain.
        iptables_restore(&t.node, "*nat\nCOMMIT\n", false)?;

        // (c) skiff: tc on the node's interfaces, socket LB for the pod client.
        let config = DatapathConfig {
            map_sizes: sizes_for(n, ENDPOINTS as usize),
            pin_dir: None,
        };
        let mut dp = Datapath::load_with(&config)?;
        dp.set_node_config(NodeConfig {
            snat_addr: u32::from(NODE).to_be(),
            ..Default::default()
        })?;
        t.node.run(|| -> anyhow::Result<()> {
            for i in ["n0", "pb", "pc"] {
                dp.attach_tc_ingress(i)?;
            }
            dp.attach_tc_egress("n0")?;
            Ok(())
        })?;
        let mut maps = dp.service_maps()?;
        let report = Reconciler::new().sync(&model(&svcs, true), &mut maps);
        assert!(report.errors.is_empty(), "{:?}", report.errors);
        for (i, (target, ns, to)) in targets.iter().enumerate() {
            // NodePort from outside is per-packet (tc). The pod client gets socket LB,
            // attached only now: this process's sockets (all clients) share one cgroup.
            if i == 1 {
                dp.attach_sock_lb(cgroup.path())?;
            }
            let (crr, rr, bulk) = measure(ns, *to, duration, n == scales[0] && i == 0);
            rows.push(TrafficRow {
                target: (*target).into(),
                mode: "skiff".into(),
                services: n,
                crr,
                rr,
                bulk_gbps: bulk,
            });
        }
        drop(maps);
        drop(dp);
    }
    // Leave the cgroup before it is removed.
    std::fs::write(cgroup2_root().join("cgroup.procs"), "0").context("leaving the bench cgroup")?;
    Ok(rows)
}

/// NodePort → remote backend forwarding rate with small UDP datagrams (one sender
/// thread, `duration` per mode), counted where they arrive: the backend pod on node2.
fn forwarding(duration: Duration) -> anyhow::Result<Vec<ForwardingRow>> {
    use std::sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    };
    let client = NetNs::new("fclient");
    let node = NetNs::new("fnode");
    let node2 = NetNs::new("fnode2");
    let pod = NetNs::new("fpod");
    veth(&client, "c0", &node, "n0");
    client.addr("c0", "198.18.0.1/24");
    client.ip(&["route", "add", "default", "via", "198.18.0.2"]);
    node.addr("n0", "198.18.0.2/24");
    node.sysctl("net/ipv4/conf/all/forwarding", "1");
    veth(&node, "n1", &node2, "m0");
    node.addr("n1", "198.18.5.1/24");
    node.ip(&["route", "add", "198.18.3.0/24", "via", "198.18.5.2"]);
    node2.addr("m0", "198.18.5.2/24");
    node2.ip(&["route", "add", "198.18.0.0/24", "via", "198.18.5.1"]);
    node2.sysctl("net/ipv4/conf/all/forwarding", "1");
    veth(&node2, "r0", &pod, "eth0");
    node2.addr("r0", "198.18.3.1/24");
    pod.addr("eth0", "198.18.3.10/24");
    pod.ip(&["route", "add", "default", "via", "198.18.3.1"]);
    // Frames from a wire carry full checksums (needed by XDP); make the client's veth
    // behave like one for every mode alike.
    let _ = Command::new("ip")
        .args([
            "netns",
            "exec",
            client.name(),
            "ethtool",
            "-K",
            "c0",
            "tx",
            "off",
        ])
        .status();
    let received = Arc::new(AtomicU64::new(0));
    let sink = pod.run(|| std::net::UdpSocket::bind("198.18.3.10:9000"))?;
    {
        let received = received.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 64];
            while sink.recv(&mut buf).is_ok() {
                received.fetch_add(1, Ordering::Relaxed);
            }
        });
    }
    let backend = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::new(198, 18, 3, 10), 9000));
    let nodeport = SocketAddr::V4(SocketAddrV4::new(NODE, NODE_PORT));
    let svc = SvcPort {
        namespace: "bench".into(),
        name: "udp".into(),
        port_name: "p".into(),
        cluster_ip: cluster_ip(0),
        port: 9000,
        node_port: Some(NODE_PORT),
        endpoints: vec![(Ipv4Addr::new(198, 18, 3, 10), 9000)],
    };
    let run = |mode: &str, to: SocketAddr| -> anyhow::Result<ForwardingRow> {
        let sender = client.run(|| std::net::UdpSocket::bind("198.18.0.1:0"))?;
        // Warm up (ARP, conntrack) then count.
        for _ in 0..100 {
            let _ = sender.send_to(b"warmup-packet-00", to);
        }
        std::thread::sleep(Duration::from_millis(200));
        let before = received.load(Ordering::Relaxed);
        let start = Instant::now();
        let mut sent = 0u64;
        while start.elapsed() < duration {
            for _ in 0..64 {
                if sender.send_to(b"0123456789abcdef", to).is_ok() {
                    sent += 1;
                }
            }
        }
        let elapsed = start.elapsed().as_secs_f64();
        // Let the queues drain before reading the count.
        std::thread::sleep(Duration::from_millis(300));
        let got = received.load(Ordering::Relaxed) - before;
        Ok(ForwardingRow {
            mode: mode.into(),
            sent_pps: sent as f64 / elapsed,
            received_pps: got as f64 / elapsed,
        })
    };
    let mut rows = vec![run("routing (no service)", backend)?];
    // kube-proxy: NodePort DNAT + masquerade in the node.
    let mut udp_rules = kube_proxy::ruleset(std::slice::from_ref(&svc), "198.18.2.0/24");
    udp_rules = udp_rules.replace("-m tcp -p tcp", "-m udp -p udp");
    iptables_restore(&node, &udp_rules, false)?;
    rows.push(run("kube-proxy iptables", nodeport)?);
    iptables_restore(&node, "*nat\nCOMMIT\n", false)?;
    let mut dp = Datapath::load_with(&DatapathConfig::default())?;
    dp.set_node_config(NodeConfig {
        snat_addr: u32::from(NODE).to_be(),
        ..Default::default()
    })?;
    node.run(|| -> anyhow::Result<()> {
        dp.attach_tc_ingress("n0")?;
        dp.attach_tc_ingress("n1")?;
        dp.set_external_interface("n0")?;
        Ok(())
    })?;
    let mut maps = dp.service_maps()?;
    let m = Model {
        services: [(
            ServicePortName::new("bench", "udp", "p"),
            ServicePort {
                proto: Some(Protocol::Udp),
                frontends: vec![Frontend {
                    addr: NODE,
                    port: NODE_PORT,
                    proto: Protocol::Udp,
                    kind: FrontendKind::NodePort,
                }],
                endpoints: vec![Endpoint {
                    addr: Ipv4Addr::new(198, 18, 3, 10),
                    port: 9000,
                    state: EndpointState::Active,
                    local: false,
                }],
                ..Default::default()
            },
        )]
        .into_iter()
        .collect(),
    };
    let report = Reconciler::new().sync(&m, &mut maps);
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    rows.push(run("skiff tc", nodeport)?);
    node.run(|| dp.attach_xdp("n0", true))?;
    node2.run(|| dp.attach_xdp("m0", true))?;
    rows.push(run("skiff XDP (native)", nodeport)?);
    let (redirected, _) = dp.xdp_counters()?;
    eprintln!("xdp redirected {redirected} frames");
    drop(maps);
    drop(dp);
    Ok(rows)
}

fn render(r: &Report) -> String {
    let mut s = String::new();
    s.push_str("### Per-packet cost (BPF_PROG_TEST_RUN, tc ingress, NodePort)\n\n");
    s.push_str(
        "| services | established flow | new flow | not a service |\n|---:|---:|---:|---:|\n",
    );
    for p in &r.prog_run {
        s.push_str(&format!(
            "| {} | {:.0} ns | {:.0} ns | {:.0} ns |\n",
            p.services, p.established_ns, p.new_flow_ns, p.not_a_service_ns
        ));
    }
    if let (Some(first), Some(last)) = (r.prog_run.first(), r.prog_run.last()) {
        s.push_str(&format!(
            "\nRatio {}/{} services: established {:.2}, new flow {:.2}.\n",
            last.services,
            first.services,
            last.established_ns / first.established_ns,
            last.new_flow_ns / first.new_flow_ns
        ));
    }
    s.push_str("\n### Socket LB: UDP connect() to a VIP vs to the backend directly\n\n| services | to the VIP (connect4 translates) | direct | connect4 adds |\n|---:|---:|---:|---:|\n");
    for c in &r.connect4 {
        s.push_str(&format!(
            "| {} | {:.0} ns | {:.0} ns | {:.0} ns |\n",
            c.services,
            c.vip_connect_ns,
            c.direct_connect_ns,
            c.vip_connect_ns - c.direct_connect_ns
        ));
    }
    s.push_str("\n### Backend selection, new NodePort flow (BPF_PROG_TEST_RUN)\n\n| backends | random | Maglev |\n|---:|---:|---:|\n");
    for r in &r.selection {
        s.push_str(&format!(
            "| {} | {:.0} ns | {:.0} ns |\n",
            r.backends, r.random_new_flow_ns, r.maglev_new_flow_ns
        ));
    }
    s.push_str("\n### Programming cost\n\n| change | services × endpoints | skiff | iptables-restore | ratio |\n|---|---:|---:|---:|---:|\n");
    for p in &r.programming {
        s.push_str(&format!(
            "| {} | {} × {} | {:.3} ms | {:.3} ms | {:.0}× |\n",
            p.what,
            p.services,
            p.endpoints_each,
            p.skiff_ms,
            p.iptables_restore_ms,
            p.iptables_restore_ms / p.skiff_ms
        ));
    }
    s.push_str("\n### Map memory (kernel memlock, capacities sized for the programming row's services)\n\n| map | max entries | bytes | bytes/entry |\n|---|---:|---:|---:|\n");
    for m in &r.memory {
        s.push_str(&format!(
            "| {} | {} | {} | {:.0} |\n",
            m.name,
            m.max_entries,
            m.bytes,
            m.bytes as f64 / f64::from(m.max_entries.max(1))
        ));
    }
    s.push_str("\n### NodePort → remote backend forwarding, 16-byte UDP payloads, one sender thread\n\n| mode | sent pps | received pps |\n|---|---:|---:|\n");
    for f in &r.forwarding {
        s.push_str(&format!(
            "| {} | {:.0} | {:.0} |\n",
            f.mode, f.sent_pps, f.received_pps
        ));
    }
    s.push_str("\n### Real traffic (1 client thread, connections without keep-alive, 1-byte request/response)\n\n");
    s.push_str("| target | mode | services | conn/s | conn p50 | conn p99 | RR p50 | RR p99 | bulk |\n|---|---|---:|---:|---:|---:|---:|---:|---:|\n");
    for t in &r.traffic {
        s.push_str(&format!(
            "| {} | {} | {} | {:.0} | {:.0} µs | {:.0} µs | {:.0} µs | {:.0} µs | {} |\n",
            t.target,
            t.mode,
            t.services,
            t.crr.per_sec,
            t.crr.p50_us,
            t.crr.p99_us,
            t.rr.p50_us,
            t.rr.p99_us,
            t.bulk_gbps
                .map(|g| format!("{g:.1} Gbit/s"))
                .unwrap_or_else(|| "-".into())
        ));
    }
    s
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) != Some("datapath") {
        bail!("usage: skiff-bench datapath [--quick] [--out FILE]");
    }
    let quick = args.iter().any(|a| a == "--quick");
    let out = args
        .iter()
        .position(|a| a == "--out")
        .and_then(|i| args.get(i + 1))
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("bench-results/datapath.json"));
    skiff_tests::privilege::require_privileges();

    let mut report = Report {
        machine: machine(),
        ..Default::default()
    };
    let c4_scales: &[usize] = if quick {
        &[1, 1000]
    } else {
        &[1, 1000, 10_000, 100_000]
    };
    for &n in c4_scales {
        eprintln!("connect4: {n} services");
        report.connect4.push(connect4_cost(n)?);
    }
    if args.iter().any(|a| a == "--only-connect4") {
        println!("{}", render(&report));
        return Ok(());
    }
    let prog_scales: &[usize] = if quick {
        &[1, 1000]
    } else {
        &[1, 1000, 10_000, 100_000]
    };
    for &n in prog_scales {
        eprintln!("prog-run: {n} services");
        report.prog_run.push(prog_run_costs(n));
    }
    eprintln!("selection: random vs maglev at 1000 backends");
    report
        .selection
        .push(selection_costs(if quick { 100 } else { 1000 }));
    let (pn, pe) = if quick { (1000, 10) } else { (10_000, 10) };
    eprintln!("programming: {pn} services x {pe} endpoints");
    report.programming = programming_costs(pn, pe)?;
    {
        // Capacities sized for the installed services, as an operator would set them.
        let config = DatapathConfig {
            map_sizes: sizes_for(pn, pe),
            pin_dir: None,
        };
        let mut dp = Datapath::load_with(&config)?;
        let mut maps = dp.service_maps()?;
        let svcs = services(pn, pe);
        let r = Reconciler::new().sync(&model(&svcs, true), &mut maps);
        assert!(r.errors.is_empty(), "{:?}", r.errors.first());
        report.memory = map_memory();
    }
    let scales: &[usize] = if quick {
        &[1, 1000]
    } else {
        &[1, 1000, 10_000]
    };
    let duration = Duration::from_secs(if quick { 1 } else { 3 });
    eprintln!("traffic: {scales:?} services, {duration:?} per point");
    report.traffic = traffic(scales, duration)?;

    eprintln!("forwarding: small UDP, NodePort -> remote backend");
    report.forwarding = forwarding(duration)?;

    let table = render(&report);
    println!("{table}");
    if let Some(dir) = out.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&out, serde_json::to_string_pretty(&report)?)?;
    eprintln!("wrote {}", out.display());
    Ok(())
}
