//! The agent's node side against a real API server (skiff-controlplane on loopback, its
//! controllers off so the test owns podCIDRs): Node registration and Lease heartbeat; the
//! pod network set up inside a test network namespace (bridge, CNI files, routes to other
//! Nodes' podCIDRs, unreachable service ranges); /healthz, healthCheckNodePort servers and
//! /metrics over real HTTP on loopback.

use std::{
    collections::BTreeSet,
    io::{Read as _, Write as _},
    net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream},
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant, SystemTime},
};

use k8s_openapi::api::{
    coordination::v1::Lease,
    core::v1::{Node, Service},
    discovery::v1::EndpointSlice,
};
use kube::{
    api::{DeleteParams, Patch, PatchParams, PostParams},
    Api, Client,
};
use skiff_agent::{
    datapath::{BpfServiceMaps, Datapath},
    health::{self, HealthCheckServers, ProxyHealth},
    metrics::{self, Metrics},
    netsetup::{self, NetConfig, NetSetup},
    node::{self, HostInfo, NodeConfig},
    reconcile::{MapUsage, Reconciler},
    translate::NodeContext,
    watch::{self, SyncConfig, Synced},
};
use skiff_datapath_abi::{program_names::TC_INGRESS, DropReason};
use skiff_tests::{
    apiserver::{self, controlplane_binary, free_port, sibling_binary, ApiServer},
    netns::{veth, NetNs},
    packet::{fix_ipv4_checksum, Packet, TcpFlags, ETH_HLEN},
    privilege::require_privileges,
};

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// Polls `f` every 50 ms until it returns `Some`, or panics with `what` and the last
/// observation after `timeout`.
fn eventually<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Result<T, String>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        match f() {
            Ok(v) => return v,
            Err(last) => assert!(
                Instant::now() < deadline,
                "timed out after {timeout:?} waiting for {what}; last: {last}"
            ),
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn temp_dir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!(
        "skiff-agent-node-{tag}-{}-{}",
        std::process::id(),
        free_port()
    ));
    std::fs::create_dir_all(&d).unwrap();
    d
}

// ---- 1. Node registration and Lease ----

fn condition<'a>(n: &'a Node, t: &str) -> Option<&'a k8s_openapi::api::core::v1::NodeCondition> {
    n.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == t)
}

#[test]
fn the_node_registers_posts_ready_and_renews_its_lease() {
    require_privileges();
    let rt = runtime();
    let api = ApiServer::start("agent-node-register", &["--disable-controllers"]);
    let kubeconfig = api.kubeconfig();
    let kube = rt.block_on(apiserver::client(&kubeconfig));

    let agent_kc = kubeconfig.clone();
    std::thread::spawn(move || {
        runtime().block_on(async move {
            let c = apiserver::client(&agent_kc).await;
            let mut cfg = NodeConfig::new("node-a", vec![Ipv4Addr::new(192, 0, 2, 10)]);
            cfg.lease_renew_period = Duration::from_millis(500);
            let info = HostInfo::gather(Path::new("/")).unwrap();
            node::run(c, cfg, info, |_| {}).await;
        })
    });

    let nodes: Api<Node> = Api::all(kube.clone());
    let n = eventually("Node node-a Ready", Duration::from_secs(10), || {
        let n = rt
            .block_on(nodes.get_opt("node-a"))
            .map_err(|e| e.to_string())?
            .ok_or("no Node yet")?;
        match condition(&n, "Ready") {
            Some(c) if c.status == "True" => Ok(n),
            other => Err(format!("Ready is {other:?}")),
        }
    });
    let status = n.status.as_ref().unwrap();
    let ready = condition(&n, "Ready").unwrap();
    assert_eq!(ready.reason.as_deref(), Some("KubeletReady"));
    assert_eq!(
        ready.message.as_deref(),
        Some("skiff-agent is posting ready status")
    );
    assert!(ready.last_heartbeat_time.is_some());
    for t in ["MemoryPressure", "DiskPressure", "PIDPressure"] {
        assert_eq!(
            condition(&n, t).map(|c| c.status.as_str()),
            Some("False"),
            "{t}"
        );
    }
    let addrs: Vec<(String, String)> = status
        .addresses
        .iter()
        .flatten()
        .map(|a| (a.type_.clone(), a.address.clone()))
        .collect();
    assert_eq!(
        addrs,
        [
            ("InternalIP".into(), "192.0.2.10".into()),
            ("Hostname".into(), "node-a".into())
        ]
    );
    let cap = status.capacity.as_ref().unwrap();
    let alloc = status.allocatable.as_ref().unwrap();
    let host = HostInfo::gather(Path::new("/")).unwrap();
    assert_eq!(cap["cpu"].0, host.cpus.to_string());
    assert_eq!(cap["pods"].0, "110");
    assert_eq!(cap["memory"].0, format!("{}Ki", host.memory_bytes / 1024));
    assert!(cap.contains_key("ephemeral-storage"));
    assert!(alloc.contains_key("memory") && alloc.contains_key("ephemeral-storage"));
    let info = status.node_info.as_ref().unwrap();
    assert!(info.kubelet_version.starts_with("skiff-"), "{info:?}");
    assert_eq!(info.kube_proxy_version, info.kubelet_version);
    assert_eq!(info.operating_system, "linux");
    assert_eq!(info.kernel_version, host.kernel_version);
    let labels = n.metadata.labels.clone().unwrap_or_default();
    assert_eq!(labels["kubernetes.io/hostname"], "node-a");
    assert_eq!(labels["kubernetes.io/os"], "linux");
    assert_eq!(labels["kubernetes.io/arch"], host.architecture);
    assert!(!labels.contains_key("node.kubernetes.io/instance-type"));

    // The Lease: held by the node, 40 s, owned by the Node, renewed.
    let leases: Api<Lease> = Api::namespaced(kube.clone(), "kube-node-lease");
    let first = eventually("the node Lease", Duration::from_secs(10), || {
        rt.block_on(leases.get_opt("node-a"))
            .map_err(|e| e.to_string())?
            .ok_or_else(|| "no Lease yet".to_string())
    });
    let spec = first.spec.clone().unwrap();
    assert_eq!(spec.holder_identity.as_deref(), Some("node-a"));
    assert_eq!(spec.lease_duration_seconds, Some(40));
    let owner = &first.metadata.owner_references.as_ref().unwrap()[0];
    assert_eq!(
        (owner.kind.as_str(), owner.name.as_str()),
        ("Node", "node-a")
    );
    assert_eq!(Some(&owner.uid), n.metadata.uid.as_ref());
    let t0 = spec.renew_time.unwrap().0;
    eventually(
        "the Lease renewTime to advance",
        Duration::from_secs(5),
        || {
            let l = rt
                .block_on(leases.get("node-a"))
                .map_err(|e| e.to_string())?;
            let t = l.spec.unwrap().renew_time.unwrap().0;
            if t > t0 {
                Ok(())
            } else {
                Err(format!("renewTime still {t}"))
            }
        },
    );

    // The node lifecycle controller marks it Unknown and a network plugin adds its own
    // condition: the agent restores Ready at once and keeps the other condition.
    let patch = serde_json::json!({"status": {"conditions": [
        {"type": "Ready", "status": "Unknown", "reason": "NodeStatusUnknown", "message": "Kubelet stopped posting node status."},
        {"type": "NetworkUnavailable", "status": "False", "reason": "RouteCreated", "message": "routes created"}
    ]}});
    rt.block_on(nodes.patch_status("node-a", &PatchParams::default(), &Patch::Merge(&patch)))
        .unwrap();
    eventually(
        "Ready=True again, with NetworkUnavailable kept",
        Duration::from_secs(5),
        || {
            let n = rt
                .block_on(nodes.get("node-a"))
                .map_err(|e| e.to_string())?;
            let ok = condition(&n, "Ready").is_some_and(|c| c.status == "True")
                && condition(&n, "NetworkUnavailable")
                    .is_some_and(|c| c.reason.as_deref() == Some("RouteCreated"))
                && condition(&n, "MemoryPressure").is_some();
            if ok {
                Ok(())
            } else {
                Err(format!("{:?}", n.status.and_then(|s| s.conditions)))
            }
        },
    );
}

// ---- 2. Pod network in a namespace ----

async fn put_node(kube: &Client, name: &str, ip: &str, pod_cidr: Option<&str>) {
    let nodes: Api<Node> = Api::all(kube.clone());
    let n: Node = serde_json::from_value(serde_json::json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": name},
        "spec": match pod_cidr {
            Some(c) => serde_json::json!({"podCIDR": c, "podCIDRs": [c]}),
            None => serde_json::json!({}),
        },
    }))
    .unwrap();
    nodes.create(&PostParams::default(), &n).await.unwrap();
    set_node_ip(kube, name, ip).await;
}

async fn set_node_ip(kube: &Client, name: &str, ip: &str) {
    let nodes: Api<Node> = Api::all(kube.clone());
    let status = serde_json::json!({"status": {"addresses": [
        {"type": "InternalIP", "address": ip}, {"type": "Hostname", "address": name}
    ]}});
    nodes
        .patch_status(name, &PatchParams::default(), &Patch::Merge(&status))
        .await
        .unwrap();
}

/// `ip route show proto 115` in `ns`, one normalised line per route.
fn skiff_routes(ns: &NetNs) -> BTreeSet<String> {
    ns.ip_output(&["route", "show", "proto", "115"])
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .filter(|l| !l.is_empty())
        .collect()
}

fn set(lines: &[&str]) -> BTreeSet<String> {
    lines.iter().map(|s| s.to_string()).collect()
}

#[test]
fn the_pod_network_follows_the_nodes_inside_a_namespace() {
    require_privileges();
    let rt = runtime();
    let api = ApiServer::start("agent-node-podnet", &["--disable-controllers"]);
    let kubeconfig = api.kubeconfig();
    let kube = rt.block_on(apiserver::client(&kubeconfig));

    // The "node": a namespace with one node-facing interface on 192.168.77.0/24 (a veth
    // to a peer namespace standing for the wire), plus routes somebody else owns (one of
    // them to a range a Node will claim).
    let ns = NetNs::new("podnet");
    let wire = NetNs::new("wire");
    veth(&ns, "eth0", &wire, "eth0");
    ns.addr("eth0", "192.168.77.1/24");
    ns.ip(&["route", "add", "10.99.0.0/16", "via", "192.168.77.9"]);
    ns.ip(&[
        "route",
        "add",
        "10.244.3.0/24",
        "via",
        "192.168.77.9",
        "proto",
        "static",
    ]);

    rt.block_on(async {
        put_node(&kube, "node-a", "192.168.77.1", None).await;
        put_node(&kube, "node-b", "192.168.77.2", Some("10.244.1.0/24")).await;
        put_node(&kube, "node-c", "192.168.77.3", Some("10.244.2.0/24")).await;
        put_node(&kube, "node-d", "192.168.77.4", Some("10.244.3.0/24")).await;
        // Not on this node's L2 segment: direct routing cannot reach it.
        put_node(&kube, "node-e", "192.168.200.5", Some("10.244.5.0/24")).await;
    });

    let conf_dir = temp_dir("conf");
    let bin_dir = temp_dir("bin");
    let plugin = temp_dir("src").join("skiff-cni");
    std::fs::write(&plugin, b"\x7fELF not really, but bytes to copy").unwrap();
    let mut cfg = NetConfig::new("node-a");
    cfg.cni_conf_dir = conf_dir.clone();
    cfg.cni_bin_dir = bin_dir.clone();
    cfg.cni_source = Some(plugin.clone());
    cfg.unreachable = vec![
        (Ipv4Addr::new(10, 43, 0, 0), 16),
        (Ipv4Addr::new(203, 0, 113, 0), 24),
    ];
    cfg.resync = Duration::from_millis(500);
    // Netlink socket and ip_forward of the namespace; everything after runs on it.
    let mut setup = ns.run(|| NetSetup::new(cfg)).unwrap();
    assert_eq!(
        ns.run(|| std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward"))
            .unwrap()
            .trim(),
        "1"
    );
    setup.prepare().unwrap();
    let conflist_path = conf_dir.join("10-skiff.conflist");
    let read_conflist = || -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(&conflist_path).unwrap()).unwrap()
    };
    assert_eq!(
        read_conflist()["plugins"][0]["ipam"]["ranges"],
        serde_json::json!([]),
        "no podCIDR yet: skiff-cni STATUS must say not ready"
    );
    let installed = bin_dir.join("skiff-cni");
    assert_eq!(
        std::fs::read(&installed).unwrap(),
        std::fs::read(&plugin).unwrap()
    );
    assert_eq!(
        std::fs::metadata(&installed).unwrap().permissions().mode() & 0o777,
        0o755
    );

    let problems = Arc::new(Mutex::new(Vec::<String>::new()));
    let seen = problems.clone();
    let agent_kc = kubeconfig.clone();
    std::thread::spawn(move || {
        runtime().block_on(async move {
            let c = apiserver::client(&agent_kc).await;
            netsetup::run(
                c,
                &mut setup,
                netsetup::NetHooks {
                    on_apply: |a: &netsetup::Applied, _| {
                        seen.lock().unwrap().extend(a.errors.iter().cloned());
                    },
                    on_error: |_: &str| {},
                },
            )
            .await;
        })
    });

    let want = set(&[
        "10.244.1.0/24 via 192.168.77.2 dev eth0",
        "10.244.2.0/24 via 192.168.77.3 dev eth0",
        "unreachable 10.43.0.0/16",
        "unreachable 203.0.113.0/24",
    ]);
    eventually(
        "routes to node-b and node-c",
        Duration::from_secs(10),
        || {
            let have = skiff_routes(&ns);
            if have == want {
                Ok(())
            } else {
                Err(format!("{have:?}"))
            }
        },
    );
    // Somebody else's routes are untouched, and the collision is reported.
    let foreign = ns.ip_output(&["route", "show", "10.244.3.0/24"]);
    assert!(
        foreign.contains("via 192.168.77.9") && foreign.contains("proto static"),
        "{foreign}"
    );
    assert!(ns
        .ip_output(&["route", "show", "10.99.0.0/16"])
        .contains("via 192.168.77.9"));
    eventually(
        "node-d's collision and node-e's next hop reported",
        Duration::from_secs(5),
        || {
            let p = problems.lock().unwrap();
            let collision = p
                .iter()
                .any(|e| e.contains("10.244.3.0/24") && e.contains("does not own"));
            let off_link = p.iter().any(|e| {
                e.contains("10.244.5.0/24 via 192.168.200.5") && e.contains("directly connected")
            });
            if collision && off_link {
                Ok(())
            } else {
                Err(format!("{p:?}"))
            }
        },
    );

    // A VIP without a frontend fails at once inside the node, no packet leaves.
    let out = Command::new("ip")
        .args(["-n", ns.name(), "route", "get", "10.43.0.10"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        // RTN_UNREACHABLE routes answer EHOSTUNREACH (fib_props in net/ipv4/fib_semantics.c).
        String::from_utf8_lossy(&out.stderr).contains("No route to host"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let err = ns
        .run(|| {
            TcpStream::connect_timeout(
                &SocketAddr::from(([10, 43, 0, 10], 80)),
                Duration::from_secs(2),
            )
        })
        .unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EHOSTUNREACH), "{err}");

    // The control plane assigns this node's range: bridge + gateway, CNI config.
    rt.block_on(Api::<Node>::all(kube.clone()).patch(
        "node-a",
        &PatchParams::default(),
        &Patch::Merge(serde_json::json!({"spec": {"podCIDR": "10.244.0.0/24", "podCIDRs": ["10.244.0.0/24"]}})),
    ))
    .unwrap();
    eventually("skiff0 with 10.244.0.1/24", Duration::from_secs(10), || {
        let out = Command::new("ip")
            .args(["-n", ns.name(), "-o", "-4", "addr", "show", "dev", "skiff0"])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        if text.contains("inet 10.244.0.1/24") {
            Ok(())
        } else {
            Err(text)
        }
    });
    assert!(
        ns.ip_output(&["link", "show", "skiff0"])
            .contains("state UP")
            || ns.ip_output(&["link", "show", "skiff0"]).contains(",UP")
    );
    eventually(
        "the conflist with the node's range",
        Duration::from_secs(5),
        || {
            let c = read_conflist();
            let ranges = c["plugins"][0]["ipam"]["ranges"].clone();
            if ranges == serde_json::json!([[{"subnet": "10.244.0.0/24", "gateway": "10.244.0.1"}]])
            {
                Ok(())
            } else {
                Err(ranges.to_string())
            }
        },
    );
    assert_eq!(read_conflist()["plugins"][0]["bridge"], "skiff0");

    // A node goes: its route goes. Another moves: its route follows.
    rt.block_on(Api::<Node>::all(kube.clone()).delete("node-c", &DeleteParams::default()))
        .unwrap();
    rt.block_on(set_node_ip(&kube, "node-b", "192.168.77.5"));
    let want = set(&[
        "10.244.1.0/24 via 192.168.77.5 dev eth0",
        "unreachable 10.43.0.0/16",
        "unreachable 203.0.113.0/24",
    ]);
    eventually(
        "node-c's route gone, node-b's moved",
        Duration::from_secs(10),
        || {
            let have = skiff_routes(&ns);
            if have == want {
                Ok(())
            } else {
                Err(format!("{have:?}"))
            }
        },
    );
    // A route deleted behind the agent's back comes back at the next resync.
    ns.ip(&["route", "del", "10.244.1.0/24"]);
    eventually("the deleted route restored", Duration::from_secs(5), || {
        let have = skiff_routes(&ns);
        if have == want {
            Ok(())
        } else {
            Err(format!("{have:?}"))
        }
    });
    assert!(ns
        .ip_output(&["route", "show", "10.244.3.0/24"])
        .contains("proto static"));
    for d in [conf_dir, bin_dir, plugin.parent().unwrap().to_path_buf()] {
        let _ = std::fs::remove_dir_all(d);
    }
}

// ---- 3. /healthz, healthCheckNodePort, /metrics ----

/// One HTTP/1.1 GET on loopback: (status code, body).
fn http_get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| std::io::Error::other(format!("no header end in {text:?}")))?;
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("bad status line in {head:?}")))?;
    // Small bodies come back in one chunk when chunked: strip the framing.
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(body)
    } else {
        body.to_owned()
    };
    Ok((code, body))
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 {
            break;
        }
        out.push_str(&rest[..n]);
        body = rest[n..].trim_start_matches("\r\n");
    }
    out
}

fn lb_slice(node: &str, trigger: &str) -> EndpointSlice {
    serde_json::from_value(serde_json::json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": "lb-1", "namespace": "default",
            "labels": {"kubernetes.io/service-name": "lb"},
            "annotations": {"endpoints.kubernetes.io/last-change-trigger-time": trigger}},
        "addressType": "IPv4",
        "endpoints": [{"addresses": ["198.18.5.1"], "conditions": {"ready": true}, "nodeName": node}],
        "ports": [{"port": 8080, "protocol": "TCP"}]
    }))
    .unwrap()
}

fn rfc3339_now() -> String {
    k8s_openapi::jiff::Timestamp::try_from(SystemTime::now())
        .unwrap()
        .to_string()
}

/// A port in the NodePort range that nothing on loopback holds now.
fn free_node_port() -> u16 {
    let seed = std::process::id() as u16;
    (0..2000)
        .map(|i| 30000 + (seed.wrapping_add(i * 7)) % 2767)
        .find(|p| TcpListener::bind(("127.0.0.1", *p)).is_ok())
        .expect("a free port in 30000-32767")
}

#[test]
fn healthz_health_check_node_ports_and_metrics_answer_over_http() {
    require_privileges();
    let rt = runtime();
    let api = ApiServer::start("agent-node-health", &["--disable-controllers"]);
    let kubeconfig = api.kubeconfig();
    let kube = rt.block_on(apiserver::client(&kubeconfig));

    // A real datapath; one malformed frame through tc ingress so a drop counter moves.
    let mut dp = Datapath::load().unwrap();
    let mut frame = Packet::tcp(
        "198.18.0.1:40000".parse().unwrap(),
        "198.18.0.2:80".parse().unwrap(),
        TcpFlags::SYN,
    )
    .build();
    frame[ETH_HLEN] = 0x65; // IPv4 EtherType, version 6
    fix_ipv4_checksum(&mut frame);
    dp.prog_run(TC_INGRESS, &frame, 1).unwrap();
    let mut maps = dp.service_maps().unwrap();

    let healthz = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let metrics_addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let hc_port = free_node_port();
    let proxy = ProxyHealth::new(Duration::from_secs(60));
    let metrics = Metrics::new();

    let (agent_kc, p2, m2) = (kubeconfig.clone(), proxy.clone(), metrics.clone());
    std::thread::spawn(move || {
        runtime().block_on(async move {
            let c = apiserver::client(&agent_kc).await;
            tokio::spawn(health::serve(
                health::bind(healthz).unwrap(),
                health::healthz_router(p2.clone()),
            ));
            tokio::spawn(health::serve(
                health::bind(metrics_addr).unwrap(),
                metrics::router(m2.clone()),
            ));
            let mut hc = HealthCheckServers::new(vec![Ipv4Addr::LOCALHOST.into()], p2.clone());
            let usage = std::cell::Cell::new(MapUsage::default());
            let config = SyncConfig {
                node: NodeContext {
                    node_name: "node-a".into(),
                    ..Default::default()
                },
                external_ip_cidrs: vec![],
                ..Default::default()
            };
            watch::run(
                c,
                config,
                &mut maps,
                &mut Reconciler::new(),
                None,
                watch::Hooks {
                    on_sync: |s: &Synced| {
                        usage.set(s.usage);
                        m2.observe_sync(
                            s.duration,
                            s.report.errors.len(),
                            &s.programming_latencies,
                            s.service_ids.as_deref(),
                        );
                        p2.updated();
                        let errors = hc.update(&s.health_checks);
                        assert!(errors.is_empty(), "{errors:?}");
                    },
                    on_error: |_: &str| {},
                    tick: Duration::from_millis(100),
                    on_tick: |m: &mut BpfServiceMaps| {
                        let ids = m2.service_ids();
                        let (sample, _) =
                            metrics::sample_datapath(&dp, m, usage.get(), &ids, 0).unwrap();
                        m2.set_datapath(sample);
                        let snap = skiff_agent::lbmap::ServiceMaps::snapshot(m).unwrap();
                        m2.set_consistency(metrics::consistency(&snap, usage.get()));
                    },
                    on_pending: || p2.queued(),
                },
            )
            .await;
        })
    });

    // /healthz in kube-proxy's shape.
    let (code, body) = eventually("/healthz", Duration::from_secs(10), || {
        http_get(healthz, "/healthz").map_err(|e| e.to_string())
    });
    assert_eq!(code, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["nodeEligible"], true);
    assert!(
        v["lastUpdated"].as_str().unwrap().ends_with("+0000 UTC") && v["currentTime"].is_string(),
        "{body}"
    );

    // A LoadBalancer service with externalTrafficPolicy=Local and one endpoint here.
    let services: Api<Service> = Api::namespaced(kube.clone(), "default");
    let svc: Service = serde_json::from_value(serde_json::json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "lb", "namespace": "default"},
        "spec": {"type": "LoadBalancer", "externalTrafficPolicy": "Local",
            "healthCheckNodePort": hc_port,
            "ports": [{"port": 80, "targetPort": 8080}]}
    }))
    .unwrap();
    rt.block_on(services.create(&PostParams::default(), &svc))
        .unwrap();
    let slices: Api<EndpointSlice> = Api::namespaced(kube.clone(), "default");
    rt.block_on(slices.create(&PostParams::default(), &lb_slice("node-a", &rfc3339_now())))
        .unwrap();
    let hc_addr = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, hc_port));
    let (code, body) =
        eventually(
            "health check port 200",
            Duration::from_secs(10),
            || match http_get(hc_addr, "/") {
                Ok((200, b)) => Ok((200, b)),
                Ok((c, b)) => Err(format!("{c} {b}")),
                Err(e) => Err(e.to_string()),
            },
        );
    assert_eq!(code, 200);
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&body).unwrap(),
        serde_json::json!({"service": {"namespace": "default", "name": "lb"}, "localEndpoints": 1, "serviceProxyHealthy": true})
    );

    // The endpoint moves to another node: 503 with no local endpoints.
    rt.block_on(slices.patch(
        "lb-1",
        &PatchParams::apply("skiff-test").force(),
        &Patch::Apply(&lb_slice("node-b", &rfc3339_now())),
    ))
    .unwrap();
    let body = eventually(
        "health check port 503",
        Duration::from_secs(10),
        || match http_get(hc_addr, "/healthz") {
            Ok((503, b)) => Ok(b),
            Ok((c, b)) => Err(format!("{c} {b}")),
            Err(e) => Err(e.to_string()),
        },
    );
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["localEndpoints"], 0);

    // /metrics: valid text, the datapath's drops, and both slice changes measured.
    let parsed = eventually("metrics with both changes", Duration::from_secs(10), || {
        let (code, text) = http_get(metrics_addr, "/metrics").map_err(|e| e.to_string())?;
        if code != 200 {
            return Err(format!("{code}"));
        }
        let parsed = metrics::parse(&text).map_err(|e| format!("{e}\n{text}"))?;
        let count = parsed
            .iter()
            .find(|(n, _)| n == "skiff_network_programming_duration_seconds_count")
            .map(|(_, v)| *v);
        let drops = parsed
            .iter()
            .find(|(n, _)| n == "skiff_drops_total{reason=\"bad_ipv4_version\"}")
            .map(|(_, v)| *v);
        // Map fill is sampled on the agent's tick from the last sync: wait for a sample
        // that has seen the Service too (one right after a resync may still be empty).
        let services = parsed
            .iter()
            .find(|(n, _)| n == "skiff_map_entries{map=\"services\"}")
            .map(|(_, v)| *v);
        match (count, drops, services) {
            (Some(c), Some(d), Some(s)) if c >= 2.0 && d >= 1.0 && s >= 1.0 => Ok(parsed),
            _ => Err(text),
        }
    });
    for r in DropReason::ALL {
        let series = format!("skiff_drops_total{{reason=\"{}\"}}", r.name());
        assert!(parsed.iter().any(|(n, _)| *n == series), "{series} missing");
    }
    let le_inf = parsed
        .iter()
        .find(|(n, _)| n == "skiff_network_programming_duration_seconds_bucket{le=\"+Inf\"}")
        .unwrap()
        .1;
    assert!(le_inf >= 2.0);
    // Both changes were programmed within a minute of their trigger times.
    let le_60 = parsed
        .iter()
        .find(|(n, _)| n == "skiff_network_programming_duration_seconds_bucket{le=\"60\"}")
        .unwrap()
        .1;
    assert_eq!(le_60, le_inf);
    // The maps hold exactly what the reconciler wrote.
    for check in ["dangling", "services", "slots", "backends"] {
        let series = format!("skiff_consistency_problems{{check=\"{check}\"}}");
        let v = parsed.iter().find(|(n, _)| *n == series).map(|(_, v)| *v);
        assert_eq!(v, Some(0.0), "{series}");
    }
    let services_fill = parsed
        .iter()
        .find(|(n, _)| n == "skiff_map_entries{map=\"services\"}")
        .map(|(_, v)| *v);
    assert!(services_fill.is_some_and(|v| v >= 1.0), "{services_fill:?}");

    // The service goes: its health check server stops.
    rt.block_on(services.delete("lb", &DeleteParams::default()))
        .unwrap();
    eventually(
        "health check port closed",
        Duration::from_secs(10),
        || match http_get(hc_addr, "/") {
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => Ok(()),
            other => Err(format!("{other:?}")),
        },
    );
}

// ---- 4. The skiff-agent binary, end to end inside a namespace ----

/// A child process killed (SIGKILL) on drop unless it already exited.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Runs `f` with a kube client on a thread inside `ns` (the API server listens on that
/// namespace's loopback).
fn in_ns<T: Send>(
    ns: &NetNs,
    kubeconfig: &Path,
    f: impl FnOnce(Client) -> futures_like::BoxFuture<T> + Send,
) -> T {
    ns.run(|| {
        runtime().block_on(async {
            let c = apiserver::client(kubeconfig).await;
            f(c).await
        })
    })
}

mod futures_like {
    pub type BoxFuture<T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send>>;
}

#[test]
fn the_agent_binary_registers_sets_up_the_node_and_leaves_it_on_sigterm() {
    require_privileges();
    let agent_bin = sibling_binary("skiff-agent");
    let cni_bin = sibling_binary("skiff-cni");
    let ns = NetNs::new("e2e");
    let wire = NetNs::new("e2ewire");
    veth(&ns, "eth0", &wire, "eth0");
    ns.addr("eth0", "192.168.78.1/24");

    let data = temp_dir("e2e-data");
    let api_port = free_port();
    let _api = Proc(
        Command::new("ip")
            .args(["netns", "exec", ns.name()])
            .arg(controlplane_binary())
            .args(["server", "--disable-controllers", "--data-dir"])
            .arg(&data)
            .args(["--listen", &format!("127.0.0.1:{api_port}")])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let kubeconfig = data.join("admin.kubeconfig");
    in_ns(&ns, &kubeconfig, |c| {
        Box::pin(async move {
            put_node(&c, "node-b", "192.168.78.2", Some("10.244.1.0/24")).await;
        })
    });

    let conf_dir = temp_dir("e2e-conf");
    let bin_dir = temp_dir("e2e-bin");
    let (healthz, metrics_port) = (free_port(), free_port());
    let log = temp_dir("e2e-log").join("agent.log");
    let mut agent = Proc(
        Command::new("ip")
            .args(["netns", "exec", ns.name()])
            .arg(&agent_bin)
            .args([
                "run",
                "--interface",
                "eth0",
                "--no-pin",
                "--interval-secs",
                "1",
                // The node side only: no --cgroup, so no pods (cluster.rs runs them).
                "--no-run-pods",
            ])
            .arg("--kubeconfig")
            .arg(&kubeconfig)
            .args(["--node-name", "node-a", "--node-address", "192.168.78.1"])
            .args([
                "--node-lease-renew-secs",
                "1",
                "--consistency-check-secs",
                "1",
            ])
            .arg("--cni-conf-dir")
            .arg(&conf_dir)
            .arg("--cni-bin-dir")
            .arg(&bin_dir)
            .args(["--healthz-bind-address", &format!("127.0.0.1:{healthz}")])
            .args([
                "--metrics-bind-address",
                &format!("127.0.0.1:{metrics_port}"),
            ])
            .stdout(std::fs::File::create(&log).unwrap())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap(),
    );
    let agent_log = || std::fs::read_to_string(&log).unwrap_or_default();

    // Registered and Ready; the control plane (here: the test) assigns the range.
    eventually("node-a registered Ready", Duration::from_secs(20), || {
        if let Ok(Some(status)) = agent.0.try_wait() {
            panic!("skiff-agent exited with {status}: {}", agent_log());
        }
        let n = in_ns(&ns, &kubeconfig, |c| {
            Box::pin(async move { Api::<Node>::all(c).get_opt("node-a").await })
        })
        .map_err(|e| e.to_string())?
        .ok_or("no Node yet")?;
        match condition(&n, "Ready") {
            Some(c) if c.status == "True" => Ok(()),
            other => Err(format!("{other:?}")),
        }
    });
    in_ns(&ns, &kubeconfig, |c| {
        Box::pin(async move {
            Api::<Node>::all(c)
                .patch(
                    "node-a",
                    &PatchParams::default(),
                    &Patch::Merge(serde_json::json!({"spec": {"podCIDR": "10.244.0.0/24", "podCIDRs": ["10.244.0.0/24"]}})),
                )
                .await
                .unwrap();
        })
    });
    let want = set(&[
        "10.244.1.0/24 via 192.168.78.2 dev eth0",
        "unreachable 10.43.0.0/16",
    ]);
    eventually("routes and skiff0", Duration::from_secs(10), || {
        let routes = skiff_routes(&ns);
        let addr = ns.ip_output(&["-o", "-4", "addr", "show"]);
        if routes == want && addr.contains("skiff0") && addr.contains("10.244.0.1/24") {
            Ok(())
        } else {
            Err(format!("{routes:?} {addr}\n{}", agent_log()))
        }
    });

    // skiff-cni was installed from next to the agent and accepts the written config:
    // STATUS says ready (its IPAM directory redirected into a temp dir).
    assert_eq!(
        std::fs::read(bin_dir.join("skiff-cni")).unwrap(),
        std::fs::read(&cni_bin).unwrap()
    );
    let list: serde_json::Value =
        eventually("conflist with a range", Duration::from_secs(5), || {
            let v: serde_json::Value =
                serde_json::from_slice(&std::fs::read(conf_dir.join("10-skiff.conflist")).unwrap())
                    .unwrap();
            if v["plugins"][0]["ipam"]["ranges"][0][0]["subnet"] == "10.244.0.0/24" {
                Ok(v)
            } else {
                Err(v.to_string())
            }
        });
    let ipam_dir = temp_dir("e2e-ipam");
    let mut plugin_conf = list["plugins"][0].clone();
    plugin_conf["name"] = list["name"].clone();
    plugin_conf["cniVersion"] = list["cniVersion"].clone();
    plugin_conf["ipam"]["dataDir"] = ipam_dir.display().to_string().into();
    let mut status = Command::new(bin_dir.join("skiff-cni"))
        .env("CNI_COMMAND", "STATUS")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    status
        .stdin
        .take()
        .unwrap()
        .write_all(plugin_conf.to_string().as_bytes())
        .unwrap();
    let out = status.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "skiff-cni STATUS: {}",
        String::from_utf8_lossy(&out.stdout)
    );

    // /healthz and /metrics of the binary, on the namespace's loopback.
    let (code, body) = eventually("the binary's /healthz", Duration::from_secs(10), || {
        ns.run(|| http_get(SocketAddr::from(([127, 0, 0, 1], healthz)), "/healthz"))
            .map_err(|e| e.to_string())
    });
    assert_eq!(code, 200, "{body}");
    let text = eventually(
        "the binary's /metrics with datapath counters",
        Duration::from_secs(10),
        || {
            let (_, text) = ns
                .run(|| http_get(SocketAddr::from(([127, 0, 0, 1], metrics_port)), "/metrics"))
                .map_err(|e| e.to_string())?;
            if text.contains("skiff_drops_total{") && text.contains("skiff_syncs_total") {
                Ok(text)
            } else {
                Err(text)
            }
        },
    );
    metrics::parse(&text).unwrap();

    // `skiff-agent status` puts it on one screen (polled: the first consistency check runs
    // a second after the first sync).
    let wants = [
        "agent health   healthy (HTTP 200)",
        "node           node-a: Ready=True (KubeletReady)",
        "podCIDR        10.244.0.0/24",
        "map services",
        "routes         2 (protocol 115)",
        "  10.244.1.0/24 via 192.168.78.2",
        "consistency    ok",
    ];
    let screen = eventually("a complete status screen", Duration::from_secs(10), || {
        let out = Command::new("ip")
            .args(["netns", "exec", ns.name()])
            .arg(&agent_bin)
            .arg("status")
            .arg("--kubeconfig")
            .arg(&kubeconfig)
            .args(["--node-name", "node-a"])
            .args(["--healthz-address", &format!("127.0.0.1:{healthz}")])
            .args(["--metrics-address", &format!("127.0.0.1:{metrics_port}")])
            .output()
            .unwrap();
        let screen = String::from_utf8_lossy(&out.stdout).into_owned();
        if out.status.success() && wants.iter().all(|w| screen.contains(w)) {
            Ok(screen)
        } else {
            Err(screen)
        }
    });
    assert!(
        !screen.contains("UNREACHABLE") && !screen.contains("never"),
        "{screen}"
    );

    // SIGTERM: a clean exit that leaves Node, routes and bridge in place.
    // SAFETY: kill(2) on the pid of our own child.
    unsafe { libc::kill(agent.0.id() as i32, libc::SIGTERM) };
    let exited = eventually("the agent to exit", Duration::from_secs(10), || {
        agent.0.try_wait().unwrap().ok_or("running".to_string())
    });
    assert!(exited.success(), "{exited}: {}", agent_log());
    assert!(agent_log().contains("SIGTERM"), "{}", agent_log());
    assert_eq!(skiff_routes(&ns), want);
    let still = in_ns(&ns, &kubeconfig, |c| {
        Box::pin(async move { Api::<Node>::all(c).get_opt("node-a").await.unwrap() })
    });
    assert!(still.is_some(), "the Node must stay after SIGTERM");
    for d in [
        data,
        conf_dir,
        bin_dir,
        ipam_dir,
        log.parent().unwrap().to_path_buf(),
    ] {
        let _ = std::fs::remove_dir_all(d);
    }
}

// ---- 5. The VXLAN overlay between two node namespaces ----

/// Starts the pod network of `node` inside `ns` with the overlay, on its own thread.
fn start_overlay_node(ns: &NetNs, kubeconfig: &Path, node: &str, conf: &Path) {
    let mut cfg = NetConfig::new(node);
    cfg.cni_conf_dir = conf.to_path_buf();
    cfg.unreachable = vec![(Ipv4Addr::new(10, 43, 0, 0), 16)];
    cfg.tunnel = Some(netsetup::VxlanConfig::default());
    cfg.resync = Duration::from_millis(500);
    let mut setup = ns.run(|| NetSetup::new(cfg)).unwrap();
    setup.prepare().unwrap();
    let kc = kubeconfig.to_path_buf();
    std::thread::spawn(move || {
        runtime().block_on(async move {
            let c = apiserver::client(&kc).await;
            let hooks = netsetup::NetHooks {
                on_apply: |_: &netsetup::Applied, _| {},
                on_error: |_: &str| {},
            };
            netsetup::run(c, &mut setup, hooks).await;
        })
    });
}

/// RX packets of `dev` in `ns` (`ip -s link`).
fn rx_packets(ns: &NetNs, dev: &str) -> u64 {
    let text = ns.ip_output(&["-s", "link", "show", dev]);
    let mut lines = text.lines();
    while let Some(l) = lines.next() {
        if l.trim_start().starts_with("RX:") {
            return lines
                .next()
                .and_then(|n| n.split_whitespace().nth(1))
                .and_then(|p| p.parse().ok())
                .unwrap_or(0);
        }
    }
    0
}

#[test]
fn the_vxlan_overlay_carries_pod_traffic_between_two_node_namespaces() {
    require_privileges();
    let rt = runtime();
    let api = ApiServer::start("agent-node-vxlan", &["--disable-controllers"]);
    let kubeconfig = api.kubeconfig();
    let kube = rt.block_on(apiserver::client(&kubeconfig));
    let a = NetNs::new("vxa");
    let b = NetNs::new("vxb");
    veth(&a, "eth0", &b, "eth0");
    a.addr("eth0", "192.168.79.1/24");
    b.addr("eth0", "192.168.79.2/24");
    rt.block_on(async {
        put_node(&kube, "node-a", "192.168.79.1", Some("10.244.0.0/24")).await;
        put_node(&kube, "node-b", "192.168.79.2", Some("10.244.1.0/24")).await;
        // Far away (no shared segment): the overlay still routes to it.
        put_node(&kube, "node-c", "192.0.2.30", Some("10.244.2.0/24")).await;
    });
    let conf = temp_dir("vxlan-conf");
    start_overlay_node(&a, &kubeconfig, "node-a", &conf.join("a"));
    start_overlay_node(&b, &kubeconfig, "node-b", &conf.join("b"));

    let want = set(&[
        "10.244.1.0/24 via 10.244.1.0 dev skiff.vxlan onlink",
        "10.244.2.0/24 via 10.244.2.0 dev skiff.vxlan onlink",
        "unreachable 10.43.0.0/16",
    ]);
    eventually("node-a's tunnel routes", Duration::from_secs(10), || {
        let have = skiff_routes(&a);
        if have == want {
            Ok(())
        } else {
            Err(format!("{have:?}"))
        }
    });
    let neigh = a.ip_output(&["neigh", "show", "dev", "skiff.vxlan"]);
    assert!(
        neigh.contains("10.244.1.0 lladdr 0e:73:c0:a8:4f:02 PERMANENT"),
        "{neigh}"
    );
    let fdb = |ns: &NetNs| {
        let out = Command::new("bridge")
            .args(["-n", ns.name(), "fdb", "show", "dev", "skiff.vxlan"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let f = fdb(&a);
    assert!(
        f.contains("0e:73:c0:a8:4f:02 dst 192.168.79.2 self permanent"),
        "{f}"
    );
    assert!(
        f.contains("0e:73:c0:00:02:1e dst 192.0.2.30 self permanent"),
        "{f}"
    );
    assert!(a
        .ip_output(&["-o", "-4", "addr", "show", "dev", "skiff.vxlan"])
        .contains("10.244.0.0/32"));

    // Real traffic: node-a reaches node-b's pod gateway only through the tunnel (its only
    // route to 10.244.1.0/24), and the reply comes back the same way.
    eventually("node-b's skiff0 gateway", Duration::from_secs(10), || {
        let t = b.ip_output(&["-o", "-4", "addr", "show", "dev", "skiff0"]);
        if t.contains("10.244.1.1/24") {
            Ok(())
        } else {
            Err(t)
        }
    });
    let listener = b
        .run(|| TcpListener::bind(SocketAddrV4::new(Ipv4Addr::new(10, 244, 1, 1), 8080)))
        .unwrap();
    std::thread::spawn(move || {
        for mut c in listener.incoming().flatten() {
            let peer = c
                .peer_addr()
                .map(|p| p.ip().to_string())
                .unwrap_or_default();
            let _ = c.write_all(format!("hello {peer}\n").as_bytes());
        }
    });
    let rx_before = rx_packets(&b, "skiff.vxlan");
    let reply = a
        .run(|| -> std::io::Result<String> {
            let mut s = TcpStream::connect_timeout(
                &SocketAddr::from(([10, 244, 1, 1], 8080)),
                Duration::from_secs(5),
            )?;
            s.set_read_timeout(Some(Duration::from_secs(5)))?;
            let mut out = String::new();
            s.read_to_string(&mut out)?;
            Ok(out)
        })
        .unwrap();
    assert_eq!(
        reply, "hello 10.244.0.0\n",
        "sourced from node-a's tunnel address"
    );
    assert!(
        rx_packets(&b, "skiff.vxlan") > rx_before,
        "traffic crossed the tunnel"
    );

    // node-c goes: its route, ARP and FDB entries go.
    rt.block_on(Api::<Node>::all(kube.clone()).delete("node-c", &DeleteParams::default()))
        .unwrap();
    eventually(
        "node-c's tunnel state removed",
        Duration::from_secs(10),
        || {
            let routes = skiff_routes(&a);
            let f = fdb(&a);
            let n = a.ip_output(&["neigh", "show", "dev", "skiff.vxlan"]);
            if !routes.iter().any(|r| r.contains("10.244.2.0"))
                && !f.contains("192.0.2.30")
                && !n.contains("10.244.2.0")
            {
                Ok(())
            } else {
                Err(format!("{routes:?}\n{f}\n{n}"))
            }
        },
    );
    let _ = std::fs::remove_dir_all(conf);
}
