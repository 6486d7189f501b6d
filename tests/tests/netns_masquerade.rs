//! Masquerade with real traffic: pods on a node's bridge reach an "outside" namespace
//! through the node's uplink, where skiff's tc programs rewrite their source to the
//! uplink's address. The outside has no route back to the pods, so every answer that
//! arrives proves the translation both ways.
//!
//! ```text
//!  pod0 [10.99.1.10] ─┐
//!  pod1 [10.99.1.11] ─┴─ [br0 10.99.1.1] node [n0 203.0.113.2] ─── [o0 203.0.113.10, .200] out
//! ```
//! Cluster CIDR 10.99.0.0/16, service CIDR 10.100.0.0/16, and 203.0.113.128/25 exempt
//! (`--non-masquerade-cidr`): 203.0.113.200 sees pod addresses. Every address exists only
//! inside the namespaces this test creates.

use std::{
    io::{BufRead as _, BufReader, Write as _},
    net::{Ipv4Addr, SocketAddrV4, TcpListener, TcpStream, UdpSocket},
    os::fd::FromRawFd as _,
    sync::mpsc,
    time::Duration,
};

use skiff_agent::datapath::{interface_address, Datapath, DatapathConfig, Masquerade};
use skiff_datapath_abi::{DropReason, MasqCounter};
use skiff_tests::{
    netns::{send_raw_frame, veth, wait_for, NetNs},
    packet::{l4_offset, Packet, TcpFlags},
    privilege::require_privileges,
};

const UPLINK: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 2);
const OUTSIDE: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 10);
const EXEMPT: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 200);
const TIMEOUT: Duration = Duration::from_secs(5);

fn pod_addr(i: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 99, 1, 10 + i)
}

struct Net {
    out: NetNs,
    node: NetNs,
    pods: Vec<NetNs>,
    datapath: Datapath,
    /// Sources the exempt UDP listener saw.
    exempt_seen: mpsc::Receiver<SocketAddrV4>,
}

/// TCP and UDP on OUTSIDE:8080 answering "saw <peer>"; UDP on EXEMPT:9000 reporting its
/// senders (it cannot answer pods: no route back).
fn serve_outside(out: &NetNs) -> mpsc::Receiver<SocketAddrV4> {
    let at = SocketAddrV4::new(OUTSIDE, 8080);
    let exempt_at = SocketAddrV4::new(EXEMPT, 9000);
    let (tcp, udp, exempt) = out.run(|| {
        (
            TcpListener::bind(at).unwrap(),
            UdpSocket::bind(at).unwrap(),
            UdpSocket::bind(exempt_at).unwrap(),
        )
    });
    std::thread::spawn(move || {
        for mut conn in tcp.incoming().flatten() {
            let peer = conn.peer_addr().unwrap();
            let _ = writeln!(conn, "saw {peer}");
        }
    });
    std::thread::spawn(move || {
        let mut buf = [0u8; 64];
        while let Ok((_, from)) = udp.recv_from(&mut buf) {
            let _ = udp.send_to(format!("saw {from}").as_bytes(), from);
        }
    });
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut buf = [0u8; 64];
        while let Ok((_, std::net::SocketAddr::V4(from))) = exempt.recv_from(&mut buf) {
            if tx.send(from).is_err() {
                return;
            }
        }
    });
    rx
}

/// The topology without a datapath (the agent binary brings its own).
fn topology() -> (NetNs, NetNs, Vec<NetNs>, mpsc::Receiver<SocketAddrV4>) {
    require_privileges();
    let out = NetNs::new("mqout");
    let node = NetNs::new("mqnode");
    veth(&node, "n0", &out, "o0");
    node.addr("n0", "203.0.113.2/24");
    out.addr("o0", "203.0.113.10/24");
    out.addr("o0", "203.0.113.200/24");
    node.bridge("br0");
    node.addr("br0", "10.99.1.1/24");
    node.sysctl("net/ipv4/conf/all/forwarding", "1");
    let pods: Vec<NetNs> = (0..2u8)
        .map(|i| {
            let pod = NetNs::new(&format!("mqpod{i}"));
            let host = format!("mq{i}");
            veth(&node, &host, &pod, "eth0");
            node.enslave(&host, "br0");
            pod.addr("eth0", &format!("{}/24", pod_addr(i)));
            pod.ip(&["route", "add", "default", "via", "10.99.1.1"]);
            // ICMP datagram ("ping") sockets for root in the pod.
            pod.sysctl("net/ipv4/ping_group_range", "0 2147483647");
            pod
        })
        .collect();
    let exempt_seen = serve_outside(&out);
    (out, node, pods, exempt_seen)
}

fn net() -> Net {
    let (out, node, pods, exempt_seen) = topology();
    let mut datapath =
        Datapath::load_with(&DatapathConfig::default()).expect("loading the datapath");
    node.run(|| {
        datapath.attach_tc_ingress("n0").unwrap();
        datapath.attach_tc_egress("n0").unwrap();
        // What the agent does: the uplink's own address.
        let address = interface_address("n0").expect("n0 has an address");
        assert_eq!(address, UPLINK);
        datapath
            .set_masquerade(&[(
                "n0",
                Masquerade {
                    address,
                    sources: (Ipv4Addr::new(10, 99, 0, 0), 16),
                    ports: skiff_agent::datapath::DEFAULT_MASQUERADE_PORTS,
                },
            )])
            .unwrap();
    });
    datapath
        .set_non_masquerade(&[
            (Ipv4Addr::new(10, 99, 0, 0), 16),
            (Ipv4Addr::new(10, 100, 0, 0), 16),
            (Ipv4Addr::new(203, 0, 113, 128), 25),
        ])
        .unwrap();
    Net {
        out,
        node,
        pods,
        datapath,
        exempt_seen,
    }
}

/// A TCP connection from `pod` bound to `sport`, to OUTSIDE:8080; returns what the
/// server saw as its peer.
fn tcp_from(pod: &NetNs, addr: Ipv4Addr, sport: u16) -> SocketAddrV4 {
    pod.run(|| {
        // SAFETY: plain socket calls on a fresh fd that the TcpStream then owns.
        let stream = unsafe {
            let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
            assert!(fd >= 0);
            let one: libc::c_int = 1;
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_REUSEADDR,
                (&one as *const libc::c_int).cast(),
                4,
            );
            let mut sin: libc::sockaddr_in = std::mem::zeroed();
            sin.sin_family = libc::AF_INET as u16;
            sin.sin_port = sport.to_be();
            sin.sin_addr.s_addr = u32::from(addr).to_be();
            let len = std::mem::size_of::<libc::sockaddr_in>() as u32;
            assert_eq!(
                libc::bind(fd, (&sin as *const libc::sockaddr_in).cast(), len),
                0,
                "bind {addr}:{sport}: {}",
                std::io::Error::last_os_error()
            );
            TcpStream::from_raw_fd(fd)
        };
        let target = std::net::SocketAddr::V4(SocketAddrV4::new(OUTSIDE, 8080));
        // std's connect on an existing socket: through socket2-free libc.
        // SAFETY: connecting the owned fd to a valid sockaddr_in.
        let rc = unsafe {
            use std::os::fd::AsRawFd as _;
            let mut sin: libc::sockaddr_in = std::mem::zeroed();
            sin.sin_family = libc::AF_INET as u16;
            sin.sin_port = 8080u16.to_be();
            sin.sin_addr.s_addr = u32::from(OUTSIDE).to_be();
            libc::connect(
                stream.as_raw_fd(),
                (&sin as *const libc::sockaddr_in).cast(),
                std::mem::size_of::<libc::sockaddr_in>() as u32,
            )
        };
        assert_eq!(
            rc,
            0,
            "connect {addr}:{sport} -> {target}: {}",
            std::io::Error::last_os_error()
        );
        stream.set_read_timeout(Some(TIMEOUT)).unwrap();
        let mut line = String::new();
        BufReader::new(&stream).read_line(&mut line).unwrap();
        parse_saw(&line)
    })
}

fn parse_saw(text: &str) -> SocketAddrV4 {
    text.trim()
        .strip_prefix("saw ")
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("unexpected answer {text:?}"))
}

fn udp_from(pod: &NetNs, addr: Ipv4Addr, sport: u16) -> SocketAddrV4 {
    pod.run(|| {
        let s = UdpSocket::bind(SocketAddrV4::new(addr, sport)).unwrap();
        s.set_read_timeout(Some(Duration::from_millis(500)))
            .unwrap();
        let mut buf = [0u8; 64];
        // UDP may lose the first datagram while ARP resolves: retry within the deadline.
        wait_for("a UDP answer from the outside", TIMEOUT, || {
            s.send_to(b"hi", SocketAddrV4::new(OUTSIDE, 8080)).unwrap();
            let (n, _) = s.recv_from(&mut buf).ok()?;
            Some(parse_saw(std::str::from_utf8(&buf[..n]).unwrap()))
        })
    })
}

/// One ICMP echo from `pod` through an ICMP datagram socket: the kernel matches the
/// reply to the socket by echo id, so an answer proves the id was translated back.
fn ping_from(pod: &NetNs) -> bool {
    pod.run(|| {
        // SAFETY: plain socket calls on a fresh fd that is closed at the end.
        unsafe {
            let fd = libc::socket(libc::AF_INET, libc::SOCK_DGRAM, libc::IPPROTO_ICMP);
            assert!(fd >= 0, "ping socket: {}", std::io::Error::last_os_error());
            let tv = libc::timeval {
                tv_sec: 0,
                tv_usec: 500_000,
            };
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&tv as *const libc::timeval).cast(),
                std::mem::size_of::<libc::timeval>() as u32,
            );
            let mut sin: libc::sockaddr_in = std::mem::zeroed();
            sin.sin_family = libc::AF_INET as u16;
            sin.sin_addr.s_addr = u32::from(OUTSIDE).to_be();
            let deadline = std::time::Instant::now() + TIMEOUT;
            let mut ok = false;
            let mut seq: u16 = 0;
            while !ok && std::time::Instant::now() < deadline {
                seq += 1;
                let mut req = [8u8, 0, 0, 0, 0, 0, 0, 0, b'p', b'i', b'n', b'g'];
                req[6..8].copy_from_slice(&seq.to_be_bytes());
                libc::sendto(
                    fd,
                    req.as_ptr().cast(),
                    req.len(),
                    0,
                    (&sin as *const libc::sockaddr_in).cast(),
                    std::mem::size_of::<libc::sockaddr_in>() as u32,
                );
                let mut buf = [0u8; 64];
                let n = libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), 0);
                ok = n >= 8 && buf[0] == 0;
            }
            libc::close(fd);
            ok
        }
    })
}

#[test]
fn pods_reach_the_outside_as_the_node_and_replies_come_back() {
    let n = net();
    // Same source port in both pods: distinct translated ports.
    let tcp: Vec<SocketAddrV4> = (0..2u8)
        .map(|i| tcp_from(&n.pods[i as usize], pod_addr(i), 40000))
        .collect();
    for seen in &tcp {
        assert_eq!(*seen.ip(), UPLINK, "the outside sees the node: {tcp:?}");
    }
    assert_ne!(tcp[0].port(), tcp[1].port(), "distinct ports: {tcp:?}");
    let udp: Vec<SocketAddrV4> = (0..2u8)
        .map(|i| udp_from(&n.pods[i as usize], pod_addr(i), 40000))
        .collect();
    for seen in &udp {
        assert_eq!(*seen.ip(), UPLINK, "UDP too: {udp:?}");
    }
    assert_ne!(udp[0].port(), udp[1].port(), "distinct UDP ports: {udp:?}");
    for (i, pod) in n.pods.iter().enumerate() {
        assert!(ping_from(pod), "pod {i}: an echo reply arrives");
    }
    let c = n.datapath.counters().unwrap();
    assert!(c.masq(MasqCounter::NewFlows) >= 6, "{}", c.render());
    assert!(c.masq(MasqCounter::Ingress) >= 6, "{}", c.render());
    drop(n.out);
}

#[test]
fn exempt_destinations_see_pod_addresses() {
    let n = net();
    let pod = &n.pods[0];
    // A socket belongs to the namespace it was created in, whichever thread uses it.
    let s = pod.run(|| UdpSocket::bind(SocketAddrV4::new(pod_addr(0), 41000)).unwrap());
    let seen = wait_for("a datagram at the exempt address", TIMEOUT, || {
        s.send_to(b"hi", SocketAddrV4::new(EXEMPT, 9000)).unwrap();
        n.exempt_seen.recv_timeout(Duration::from_millis(200)).ok()
    });
    assert_eq!(
        seen,
        SocketAddrV4::new(pod_addr(0), 41000),
        "not masqueraded"
    );
    assert_eq!(
        n.datapath.counters().unwrap().masq(MasqCounter::NewFlows),
        0
    );
}

#[test]
fn broken_pod_packets_are_dropped_on_the_uplink_and_counted() {
    let n = net();
    let bridge_mac = {
        let out = n.node.ip_output(&["-br", "link", "show", "br0"]);
        let mac = out
            .split_whitespace()
            .nth(2)
            .expect("ip -br link")
            .to_owned();
        let mut b = [0u8; 6];
        for (i, part) in mac.split(':').enumerate() {
            b[i] = u8::from_str_radix(part, 16).unwrap();
        }
        b
    };
    // A TCP segment with data offset 4: the node forwards it (IP does not look at TCP),
    // and the uplink's egress must not let it out with the pod's address.
    let mut frame = Packet::tcp(
        SocketAddrV4::new(pod_addr(0), 40001),
        SocketAddrV4::new(OUTSIDE, 8080),
        TcpFlags::SYN,
    )
    .build();
    frame[..6].copy_from_slice(&bridge_mac);
    let off = l4_offset(&frame);
    frame[off + 12] = 0x40;
    let before = n
        .datapath
        .counters()
        .unwrap()
        .drop_count(DropReason::BadTcpDataOffset);
    wait_for("the broken segment to be dropped on n0", TIMEOUT, || {
        n.pods[0].run(|| send_raw_frame("eth0", &frame));
        let now = n
            .datapath
            .counters()
            .unwrap()
            .drop_count(DropReason::BadTcpDataOffset);
        (now > before).then_some(())
    });
}

/// The agent binary's flags end to end: `skiff-agent run -i n0 --masquerade on` in the
/// node namespace masquerades with n0's address; a bad flag is refused before anything
/// is attached.
#[test]
fn the_agent_binary_masquerades_on_its_uplink() {
    let (_out, node, pods, _seen) = topology();
    let agent = skiff_tests::apiserver::sibling_binary("skiff-agent");
    let bad = std::process::Command::new("ip")
        .args(["netns", "exec", node.name()])
        .arg(&agent)
        .args(["run", "-i", "n0", "--no-pin", "--masquerade", "on"])
        .args(["--masquerade-port-range", "65535-61000"])
        .output()
        .unwrap();
    assert!(!bad.status.success());
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(err.contains("--masquerade-port-range"), "{err}");

    let mut child = std::process::Command::new("ip")
        .args(["netns", "exec", node.name()])
        .arg(&agent)
        .args(["run", "-i", "n0", "--no-pin", "--interval-secs", "1"])
        .args(["--masquerade", "on", "--cluster-cidr", "10.99.0.0/16"])
        .args(["--service-cidr", "10.100.0.0/16"])
        .args(["--non-masquerade-cidr", "203.0.113.128/25"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::inherit())
        .spawn()
        .unwrap();
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let stdout = child.stdout.take().unwrap();
    let _child = Kill(child);
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let line = wait_for("the agent to report masquerade", TIMEOUT * 4, || {
        rx.recv_timeout(Duration::from_millis(100))
            .ok()
            .filter(|l| l.starts_with("masquerading"))
    });
    assert_eq!(
        line,
        "masquerading 10.99.0.0/16 on n0 as 203.0.113.2, ports 61000-65535"
    );
    let seen = tcp_from(&pods[0], pod_addr(0), 40010);
    assert_eq!(*seen.ip(), UPLINK);
    assert!(seen.port() >= 61000, "{seen}");
}
