//! `cargo xtask up`: a simulated skiff cluster on this machine (skiff-cluster: network
//! namespaces for the nodes on a bridge that plays the physical network, the control
//! plane, one agent per node running its pods) until Ctrl-C, then everything is removed.
//! `--demo` keeps the original datapath demo: the agent attached to a veth in a throwaway
//! namespace, counting real traffic.

use std::{
    io::{BufRead as _, BufReader},
    net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream, UdpSocket},
    process::{Command, Stdio},
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _};

use crate::{
    cmd::{self, cargo, is_root, workspace_root},
    setup,
};

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

/// Options of `cargo xtask up`.
pub struct Up {
    pub nodes: usize,
    pub etcd: bool,
    pub api_port: u16,
}

pub fn cluster(up: Up) -> anyhow::Result<()> {
    if !is_root() {
        bail!(
            "`cargo xtask up` needs root: it creates network namespaces, cgroups and eBPF programs"
        );
    }
    setup::ensure()?;
    let t_build = Instant::now();
    cmd::run(cargo().args([
        "build",
        "-p",
        "skiff-controlplane",
        "-p",
        "skiff-agent",
        "-p",
        "skiff-cni",
    ]))?;
    eprintln!("built in {:.1?}", t_build.elapsed());
    // Ctrl-C and SIGTERM only set a flag: the cluster is torn down in order below (the
    // children are in their own process groups, so the terminal's SIGINT reaches only us).
    // SAFETY: the handler only stores to an atomic (async-signal-safe).
    unsafe {
        libc::signal(libc::SIGINT, on_signal as *const () as libc::sighandler_t);
        libc::signal(libc::SIGTERM, on_signal as *const () as libc::sighandler_t);
    }
    let mut opts =
        skiff_cluster::Options::new("up", up.nodes, &workspace_root().join("target/debug"));
    opts.store = if up.etcd {
        skiff_cluster::Store::Etcd
    } else {
        skiff_cluster::Store::Redb
    };
    opts.api_listen = SocketAddr::from(([127, 0, 0, 1], up.api_port));
    opts.progress = |l| println!("  {l}");
    println!("\nstarting a {}-node skiff cluster:", up.nodes);
    let cluster = skiff_cluster::Cluster::start(opts)?;
    let kc = cluster.kubeconfig().display().to_string();
    let n1 = &cluster.nodes()[0];
    println!(
        "\nskiff is up: {} node(s) Ready {:.1?} after start (build not counted).\n",
        cluster.nodes().len(),
        cluster.ready_after()
    );
    println!("  export KUBECONFIG={kc}");
    println!("  kubectl get nodes -o wide");
    println!("  kubectl apply -f examples/          # a web Deployment + ClusterIP/NodePort/LoadBalancer Services, a ConfigMap app, a Job");
    println!("  kubectl get pods,svc -o wide");
    println!();
    println!("The cluster lives in network namespaces; this host reaches only the API server.");
    println!("Traffic to services goes from inside the simulated network:");
    println!(
        "  nsenter --net=/run/netns/{} curl -s http://<EXTERNAL-IP of web-lb>/     # an external client",
        cluster.external_netns()
    );
    println!(
        "  nsenter --net=/run/netns/{} curl -s http://{}:<NodePort of web-nodeport>/",
        cluster.external_netns(),
        n1.ip
    );
    println!(
        "  sh -c 'echo $$ > {}/host/cgroup.procs; exec nsenter --net=/run/netns/{} curl -s http://<CLUSTER-IP of web>/'   # on {}",
        n1.cgroup.display(),
        n1.netns,
        n1.name
    );
    println!(
        "Logs: {} (controlplane.log, node-<i>.log, node-<i>/pod-logs/).",
        cluster.dir().display()
    );
    println!("\nCtrl-C stops the agents, the control plane, and removes namespaces, cgroups, pins and state.");
    while !STOP.load(Ordering::SeqCst) {
        std::thread::sleep(Duration::from_millis(100));
    }
    println!("\ntearing down...");
    let t = Instant::now();
    drop(cluster);
    println!("removed in {:.1?}", t.elapsed());
    Ok(())
}

const CLIENT_NS: &str = "skiff-demo-client";
const NODE_NS: &str = "skiff-demo-node";
/// RFC 2544 benchmarking range: addresses that exist only inside the demo namespaces.
const CLIENT_IP: &str = "198.18.0.1";
const NODE_IP: &str = "198.18.0.2";

/// Removes the demo namespaces when dropped, whatever happened.
struct Namespaces;

impl Drop for Namespaces {
    fn drop(&mut self) {
        for ns in [CLIENT_NS, NODE_NS] {
            let _ = Command::new("ip")
                .args(["netns", "del", ns])
                .stderr(Stdio::null())
                .status();
        }
    }
}

/// `cargo xtask up --demo`: the datapath demo.
pub fn demo() -> anyhow::Result<()> {
    println!("The datapath demo: the agent's tc program counting real traffic between two");
    println!("throwaway namespaces (per-CPU packet and drop counters).\n");
    if !is_root() {
        bail!(
            "`cargo xtask up` needs root: it creates network namespaces and attaches eBPF programs"
        );
    }
    setup::ensure()?;
    // Not `-p xtask`: rebuilding the running binary would replace the file that the
    // traffic generator below executes (`current_exe` then names a deleted file).
    cmd::run(cargo().args(["build", "-p", "skiff-agent"]))?;
    let agent = workspace_root().join("target/debug/skiff-agent");
    let xtask = std::env::current_exe().context("locating the xtask binary")?;

    let _cleanup = Namespaces;
    drop(Namespaces); // clear leftovers of an interrupted earlier run
    let ip = |args: &[&str]| cmd::run(Command::new("ip").args(args));
    ip(&["netns", "add", CLIENT_NS])?;
    ip(&["netns", "add", NODE_NS])?;
    ip(&[
        "link", "add", "c0", "netns", CLIENT_NS, "type", "veth", "peer", "name", "n0", "netns",
        NODE_NS,
    ])?;
    ip(&[
        "-n",
        CLIENT_NS,
        "addr",
        "add",
        &format!("{CLIENT_IP}/24"),
        "dev",
        "c0",
    ])?;
    ip(&[
        "-n",
        NODE_NS,
        "addr",
        "add",
        &format!("{NODE_IP}/24"),
        "dev",
        "n0",
    ])?;
    for (ns, dev) in [
        (CLIENT_NS, "c0"),
        (NODE_NS, "n0"),
        (CLIENT_NS, "lo"),
        (NODE_NS, "lo"),
    ] {
        ip(&["-n", ns, "link", "set", dev, "up"])?;
    }

    println!("\nstarting skiff-agent in {NODE_NS}, attached to n0 (tc ingress):");
    let mut child = Command::new("ip")
        .args(["netns", "exec", NODE_NS])
        .arg(&agent)
        .args([
            "run",
            // The demo's namespaces are thrown away: nothing must outlive the process.
            "--no-pin",
            "--interface",
            "n0",
            "--interval-secs",
            "2",
            "--duration-secs",
            "4",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .context("starting skiff-agent")?;
    let mut lines = BufReader::new(child.stdout.take().context("agent stdout")?).lines();
    // Wait for the attach message (not a fixed sleep): traffic sent earlier is not counted.
    match lines.next() {
        Some(Ok(l)) if l.contains("attached") => println!("  {l}"),
        other => bail!("skiff-agent did not attach: {other:?}"),
    }

    println!("sending traffic from {CLIENT_NS} ({CLIENT_IP}) to {NODE_IP}: 10 UDP datagrams, 3 TCP connection attempts");
    cmd::run(
        Command::new("ip")
            .args(["netns", "exec", CLIENT_NS])
            .arg(&xtask)
            .args(["demo-traffic", NODE_IP]),
    )?;

    for line in lines {
        println!("  {}", line?);
    }
    let status = child.wait()?;
    if !status.success() {
        bail!("skiff-agent exited with {status}");
    }
    println!("\nThe namespaces are removed now. Tests: `cargo xtask test`.");
    Ok(())
}

/// Runs in the client namespace: UDP datagrams and TCP connection attempts (answered with
/// RST, since nothing listens) so every counter class the demo shows moves.
pub fn demo_traffic(target: Ipv4Addr) -> anyhow::Result<()> {
    let udp = UdpSocket::bind("0.0.0.0:0")?;
    for i in 0..10u8 {
        udp.send_to(&[i; 64], SocketAddrV4::new(target, 9000))?;
    }
    for _ in 0..3 {
        // Refused: the node's stack answers the SYN with a RST.
        let _ = TcpStream::connect_timeout(
            &SocketAddrV4::new(target, 80).into(),
            Duration::from_secs(1),
        );
    }
    Ok(())
}
