//! Real traffic across a veth into a namespace where the tc ingress program is attached:
//! UDP, TCP and ARP from a real client stack, plus malformed frames put on the wire with
//! an AF_PACKET socket. The counters must move by exactly what was sent.

use std::{
    io::{Read as _, Write as _},
    net::{Ipv4Addr, SocketAddrV4, TcpListener, TcpStream, UdpSocket},
    time::Duration,
};

use skiff_agent::datapath::{Counters, Datapath};
use skiff_datapath_abi::{DropReason, PacketClass};
use skiff_tests::{
    netns::{send_raw_frame, veth, wait_for, NetNs},
    packet::{ethernet_frame, l4_offset, Packet, TcpFlags, CLIENT_MAC, NODE_MAC},
    privilege::require_privileges,
};

const CLIENT_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
const NODE_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
const TIMEOUT: Duration = Duration::from_secs(5);

fn mac(m: [u8; 6]) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// client ns [c0 198.18.0.1] <-veth-> [n0 198.18.0.2] node ns, skiff on n0 ingress.
struct Topology {
    client: NetNs,
    node: NetNs,
    datapath: Datapath,
}

fn topology() -> Topology {
    require_privileges();
    let client = NetNs::new("client");
    let node = NetNs::new("node");
    veth(&client, "c0", &node, "n0");
    // Fixed MACs so raw frames built by the harness are addressed to n0.
    client.ip(&["link", "set", "c0", "address", &mac(CLIENT_MAC)]);
    node.ip(&["link", "set", "n0", "address", &mac(NODE_MAC)]);
    client.addr("c0", "198.18.0.1/24");
    node.addr("n0", "198.18.0.2/24");
    let mut datapath = Datapath::load().expect("loading the datapath");
    node.run(|| datapath.attach_tc_ingress("n0"))
        .expect("attaching tc ingress to n0");
    assert_eq!(datapath.attached_interfaces(), vec!["n0".to_owned()]);
    Topology {
        client,
        node,
        datapath,
    }
}

impl Topology {
    fn counters(&self) -> Counters {
        self.datapath.counters().expect("reading counters")
    }
}

#[test]
fn real_udp_tcp_and_arp_traffic_moves_the_counters() {
    let t = topology();
    let before = t.counters();

    // UDP: N datagrams, all received, so all passed through ingress.
    const N: u64 = 20;
    const PAYLOAD: usize = 32;
    let server = t
        .node
        .run(|| UdpSocket::bind(SocketAddrV4::new(NODE_IP, 9000)))
        .expect("bind udp");
    server.set_read_timeout(Some(TIMEOUT)).unwrap();
    let sender = t
        .client
        .run(|| UdpSocket::bind(SocketAddrV4::new(CLIENT_IP, 0)))
        .expect("bind udp");
    for i in 0..N {
        sender
            .send_to(&[i as u8; PAYLOAD], SocketAddrV4::new(NODE_IP, 9000))
            .expect("send udp");
    }
    let mut buf = [0u8; 64];
    for _ in 0..N {
        let (n, from) = server
            .recv_from(&mut buf)
            .expect("receiving every datagram");
        assert_eq!((n, from), (PAYLOAD, sender.local_addr().unwrap()));
    }

    // TCP: a real connection with data both ways.
    let listener = t
        .node
        .run(|| TcpListener::bind(SocketAddrV4::new(NODE_IP, 9001)))
        .expect("listen");
    let mut conn = t
        .client
        .run(|| TcpStream::connect_timeout(&SocketAddrV4::new(NODE_IP, 9001).into(), TIMEOUT))
        .expect("connect");
    let (mut accepted, _) = listener.accept().expect("accept");
    conn.write_all(&[7u8; 1000]).unwrap();
    let mut got = vec![0u8; 1000];
    accepted.set_read_timeout(Some(TIMEOUT)).unwrap();
    accepted.read_exact(&mut got).unwrap();
    accepted.write_all(b"ok").unwrap();
    let mut reply = [0u8; 2];
    conn.set_read_timeout(Some(TIMEOUT)).unwrap();
    conn.read_exact(&mut reply).unwrap();
    assert_eq!(&reply, b"ok");
    drop(conn);
    drop(accepted);

    let after = t.counters();
    let udp =
        after.class(PacketClass::Ipv4Udp).packets - before.class(PacketClass::Ipv4Udp).packets;
    let udp_bytes =
        after.class(PacketClass::Ipv4Udp).bytes - before.class(PacketClass::Ipv4Udp).bytes;
    assert_eq!(udp, N, "every UDP datagram is counted once");
    assert_eq!(
        udp_bytes,
        N * (14 + 20 + 8 + PAYLOAD as u64),
        "bytes are whole frames"
    );
    let tcp =
        after.class(PacketClass::Ipv4Tcp).packets - before.class(PacketClass::Ipv4Tcp).packets;
    // SYN, the ACK of the handshake and at least one data segment reached n0's ingress.
    assert!(tcp >= 3, "TCP counter moved by {tcp}, want >= 3");
    assert!(
        after.class(PacketClass::NonIpv4).packets >= 1,
        "the client's ARP request is counted"
    );
    for (reason, n) in &after.drops {
        assert_eq!(
            *n, 0,
            "no well-formed traffic is dropped, but {reason:?} = {n}"
        );
    }
    println!("counters after real traffic:\n{}", after.render());
}

#[test]
fn malformed_frames_on_the_wire_are_dropped_with_their_reason() {
    let t = topology();
    let client = SocketAddrV4::new(CLIENT_IP, 40000);
    let node = SocketAddrV4::new(NODE_IP, 80);

    // An IPv4 header cut at 10 bytes: BPF_PROG_TEST_RUN cannot carry this one.
    let truncated = Packet::tcp(client, node, TcpFlags::SYN).build()[..14 + 10].to_vec();
    // A TCP header claiming 60 bytes where 20 exist.
    let mut bad_doff = Packet::tcp(client, node, TcpFlags::SYN).build();
    let off = l4_offset(&bad_doff);
    bad_doff[off + 12] = 0xf0;
    // And one good ICMP echo for contrast.
    let echo = Packet::icmp_echo(CLIENT_IP, NODE_IP, 1, 1)
        .payload(b"ping")
        .build();
    // And a non-IP frame.
    let arp_like = ethernet_frame(0x88b5, &[0; 46]); // IEEE local experimental EtherType

    t.client.run(|| {
        send_raw_frame("c0", &truncated);
        send_raw_frame("c0", &bad_doff);
        send_raw_frame("c0", &echo);
        send_raw_frame("c0", &arp_like);
    });

    let c = wait_for("the four raw frames to be counted", TIMEOUT, || {
        let c = t.counters();
        (c.drop_count(DropReason::ShortIpv4Header) >= 1
            && c.drop_count(DropReason::BadTcpDataOffset) >= 1
            && c.class(PacketClass::Ipv4Icmp).packets >= 1)
            .then_some(c)
    });
    assert_eq!(c.drop_count(DropReason::ShortIpv4Header), 1);
    assert_eq!(c.drop_count(DropReason::BadTcpDataOffset), 1);
    assert_eq!(c.class(PacketClass::Ipv4Icmp).packets, 1);
    assert_eq!(c.class(PacketClass::Ipv4Icmp).bytes, echo.len() as u64);
    for reason in DropReason::ALL {
        if reason != DropReason::ShortIpv4Header && reason != DropReason::BadTcpDataOffset {
            assert_eq!(c.drop_count(reason), 0, "{reason:?}");
        }
    }
}

#[test]
fn namespaces_are_removed_on_drop_even_after_a_panic() {
    require_privileges();
    println!("the panic message below is intentional: the guard must clean up while unwinding");
    let name = std::panic::catch_unwind(|| {
        let ns = NetNs::new("panics");
        let name = ns.name().to_owned();
        assert!(std::path::Path::new(&format!("/run/netns/{name}")).exists());
        std::panic::panic_any(name);
    })
    .expect_err("the closure panics")
    .downcast::<String>()
    .expect("panic payload is the name");
    assert!(
        !std::path::Path::new(&format!("/run/netns/{name}")).exists(),
        "netns {name} survived its guard"
    );
}
