//! `cargo xtask up`: run what skiff has today. Until the control plane (issues 5, 6) and
//! service routing (issues 3, 4, 7, 8) exist, that is the eBPF datapath skeleton: the agent
//! attached to a veth in a throwaway namespace, counting real traffic.

use std::{
    io::{BufRead as _, BufReader},
    net::{Ipv4Addr, SocketAddrV4, TcpStream, UdpSocket},
    process::{Command, Stdio},
    time::Duration,
};

use anyhow::{bail, Context as _};

use crate::{
    cmd::{self, cargo, is_root, workspace_root},
    setup,
};

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

pub fn run() -> anyhow::Result<()> {
    println!("skiff today: the eBPF datapath skeleton (tc ingress parser, per-CPU packet and drop");
    println!("counters) and the agent that loads it. The control plane, service routing, CNI and");
    println!("pod runtime are not built yet; `up` will grow into a whole cluster as they land.\n");
    if !is_root() {
        bail!(
            "`cargo xtask up` needs root: it creates network namespaces and attaches eBPF programs"
        );
    }
    setup::ensure()?;
    cmd::run(cargo().args(["build", "-p", "skiff-agent", "-p", "xtask"]))?;
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
