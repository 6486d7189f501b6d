//! Masquerade of pod traffic to the outside through BPF_PROG_TEST_RUN against the
//! production object: the rewrite on tc egress, the replies on tc ingress, checksums
//! (checked by an independent implementation), the non-masquerade ranges, port
//! allocation and its exhaustion, ICMP echo and ICMP errors, malformed packets.
//!
//! Addresses (none exist outside the runner's namespace): the uplink (the runner's `lo`,
//! where BPF_PROG_TEST_RUN puts packets) masquerades as NODE 198.18.0.2; the cluster CIDR
//! is 198.18.2.0/23 (local pods 198.18.2.x on `pods0`, remote pods 198.18.3.x); the
//! service CIDR 198.18.100.0/24 and 198.18.0.128/25 are exempt; 198.18.0.1 is "outside".

use std::net::{Ipv4Addr, SocketAddrV4};

use skiff_agent::datapath::{BpfServiceMaps, Masquerade};
use skiff_datapath_abi::{
    ct_dir, ct_flags,
    program_names::{TC_EGRESS, TC_INGRESS},
    DropReason, MasqCounter,
};
use skiff_tests::{
    packet::{
        clear_udp_checksum, icmp_error, internet_checksum, l4_offset, parse, verify_checksums,
        Packet, TcpFlags,
    },
    prog_run::{ProgRunner, RunResult, TcAction},
};

const NODE: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
const OUTSIDE: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
const CLUSTER: (Ipv4Addr, u8) = (Ipv4Addr::new(198, 18, 2, 0), 23);
const SERVICES: (Ipv4Addr, u8) = (Ipv4Addr::new(198, 18, 100, 0), 24);
const EXTRA: (Ipv4Addr, u8) = (Ipv4Addr::new(198, 18, 0, 128), 25);
const PORTS: (u16, u16) = (61000, 65535);

fn pod(i: u8) -> Ipv4Addr {
    Ipv4Addr::new(198, 18, 2, i)
}
fn sa(ip: Ipv4Addr, port: u16) -> SocketAddrV4 {
    SocketAddrV4::new(ip, port)
}

struct Fixture {
    runner: ProgRunner,
    maps: BpfServiceMaps,
}

fn fixture_with_ports(ports: (u16, u16)) -> Fixture {
    let mut runner = ProgRunner::new();
    let maps = runner.service_maps();
    runner.masquerade_as_uplink(
        Masquerade {
            address: NODE,
            sources: CLUSTER,
            ports,
        },
        &[CLUSTER, SERVICES, EXTRA],
    );
    Fixture { runner, maps }
}

fn fixture() -> Fixture {
    fixture_with_ports(PORTS)
}

impl Fixture {
    fn run(&mut self, program: &str, frame: &[u8]) -> RunResult {
        self.runner.run(program, frame)
    }

    /// Egress that must not drop; returns the frame as it leaves.
    fn egress(&mut self, frame: &[u8]) -> Vec<u8> {
        let r = self.run(TC_EGRESS, frame);
        assert!(r.drop_deltas.is_empty(), "drops {:?}", r.drop_deltas);
        assert_eq!(r.action, TcAction::Ok, "egress never redirects");
        r.packet_out
    }

    fn masq(&self, event: MasqCounter) -> u64 {
        self.runner.counters().masq(event)
    }

    fn ct(&self) -> Vec<(skiff_datapath_abi::CtKey, skiff_datapath_abi::CtValue)> {
        self.maps.conntrack_entries().unwrap()
    }
}

fn assert_frame(out: &[u8], expected: &[u8], what: &str) {
    verify_checksums(out).unwrap_or_else(|e| panic!("{what}: {e}"));
    if out != expected {
        panic!(
            "{what}: frame differs\n got      {:?}\n expected {:?}",
            parse(out).map(|p| (p.ipv4, p.transport)),
            parse(expected).map(|p| (p.ipv4, p.transport))
        );
    }
}

/// The source (address, port) of a TCP/UDP frame.
fn source(frame: &[u8]) -> SocketAddrV4 {
    parse(frame).unwrap().endpoints().expect("TCP or UDP").0
}

fn echo_id(frame: &[u8]) -> u16 {
    let off = l4_offset(frame);
    u16::from_be_bytes([frame[off + 4], frame[off + 5]])
}

/// An ICMP echo reply: the request's frame with type 0 and its checksum redone.
fn echo_reply(src: Ipv4Addr, dst: Ipv4Addr, id: u16, seq: u16) -> Vec<u8> {
    let mut f = Packet::icmp_echo(src, dst, id, seq)
        .payload(b"ping")
        .build();
    let off = l4_offset(&f);
    f[off] = 0;
    f[off + 2] = 0;
    f[off + 3] = 0;
    let csum = internet_checksum(&f[off..], 0);
    f[off + 2..off + 4].copy_from_slice(&csum.to_be_bytes());
    f
}

#[test]
fn tcp_to_the_outside_is_masqueraded_and_replies_go_back_to_the_pod() {
    let mut f = fixture();
    let client = sa(pod(10), 40000);
    let server = sa(OUTSIDE, 80);
    let out = f.egress(&Packet::tcp(client, server, TcpFlags::SYN).build());
    let translated = source(&out);
    assert_eq!(*translated.ip(), NODE, "the uplink's address");
    let port = translated.port();
    assert!((PORTS.0..=PORTS.1).contains(&port), "port {port} in range");
    assert_frame(
        &out,
        &Packet::tcp(translated, server, TcpFlags::SYN).build(),
        "SNAT with both checksums fixed",
    );
    let entries = f.ct();
    assert_eq!(entries.len(), 2, "a MASQ and a REPLY entry: {entries:?}");
    assert!(entries
        .iter()
        .all(|(_, v)| v.flags & ct_flags::MASQ != 0 && v.service_id == 0));
    assert!(entries.iter().any(|(k, _)| k.dir == ct_dir::MASQ));

    // Later packets follow the entry (same port).
    let out = f.egress(&Packet::tcp(client, server, TcpFlags::ACK).build());
    assert_eq!(source(&out), translated);

    // The SYN-ACK comes back to the pod, routed from the hook (TTL decremented).
    let synack = Packet::tcp(server, translated, TcpFlags::SYN_ACK).ack_number(1001);
    let r = f.run(TC_INGRESS, &synack.build());
    assert!(r.drop_deltas.is_empty(), "{:?}", r.drop_deltas);
    assert_eq!(r.action, TcAction::Redirect);
    assert_frame(
        &r.packet_out,
        &Packet::tcp(server, client, TcpFlags::SYN_ACK)
            .ack_number(1001)
            .ttl(63)
            .build(),
        "reverse translation to the pod",
    );
    assert_eq!(f.masq(MasqCounter::NewFlows), 1);
    assert_eq!(f.masq(MasqCounter::Egress), 2);
    assert_eq!(f.masq(MasqCounter::Ingress), 1);
    // The reply marked both entries: they age on the established timeout together.
    assert!(f
        .ct()
        .iter()
        .all(|(_, v)| v.flags & ct_flags::SEEN_REPLY != 0));

    // The pod's packet on the pod side (tc ingress of its interface) is not touched by
    // the MASQ entry: only egress applies it.
    let r = f.run(
        TC_INGRESS,
        &Packet::tcp(client, server, TcpFlags::ACK).build(),
    );
    assert_eq!(r.action, TcAction::Ok);
    assert_eq!(
        r.packet_out,
        Packet::tcp(client, server, TcpFlags::ACK).build()
    );
}

#[test]
fn udp_is_masqueraded_with_valid_or_absent_checksums() {
    let mut f = fixture();
    let client = sa(pod(11), 5353);
    let server = sa(OUTSIDE, 53);
    let out = f.egress(&Packet::udp(client, server).payload(b"query").build());
    let translated = source(&out);
    assert_eq!(*translated.ip(), NODE);
    assert_frame(
        &out,
        &Packet::udp(translated, server).payload(b"query").build(),
        "UDP SNAT",
    );
    let r = f.run(
        TC_INGRESS,
        &Packet::udp(server, translated).payload(b"answer").build(),
    );
    assert_eq!(r.action, TcAction::Redirect);
    assert_frame(
        &r.packet_out,
        &Packet::udp(server, client)
            .payload(b"answer")
            .ttl(63)
            .build(),
        "UDP reply to the pod",
    );

    // A UDP checksum of 0 ("none") stays 0.
    let client = sa(pod(12), 5353);
    let mut frame = Packet::udp(client, server).payload(b"x").build();
    clear_udp_checksum(&mut frame);
    let out = f.egress(&frame);
    let mut expected = Packet::udp(source(&out), server).payload(b"x").build();
    clear_udp_checksum(&mut expected);
    assert_frame(&out, &expected, "zero UDP checksum stays zero");
}

#[test]
fn exempt_destinations_and_foreign_sources_keep_their_addresses() {
    let mut f = fixture();
    let client = sa(pod(10), 40000);
    let cases = [
        (
            sa(Ipv4Addr::new(198, 18, 3, 10), 8080),
            "a pod on another node (cluster CIDR)",
        ),
        (
            sa(Ipv4Addr::new(198, 18, 100, 10), 80),
            "a ClusterIP (service CIDR)",
        ),
        (
            sa(Ipv4Addr::new(198, 18, 0, 200), 80),
            "a --non-masquerade-cidr range",
        ),
        (
            sa(Ipv4Addr::new(169, 254, 169, 254), 80),
            "link-local (always)",
        ),
    ];
    for (dst, what) in cases {
        for frame in [
            Packet::tcp(client, dst, TcpFlags::SYN).build(),
            Packet::udp(client, dst).payload(b"x").build(),
        ] {
            let out = f.egress(&frame);
            assert_eq!(out, frame, "{what}: unchanged");
        }
    }
    // The node's own traffic (a source outside the cluster CIDR) is not masquerade's.
    let own = Packet::tcp(sa(NODE, 45000), sa(OUTSIDE, 80), TcpFlags::SYN).build();
    assert_eq!(f.egress(&own), own, "the node's own packet");
    // Just outside the cluster CIDR (198.18.4.0 is past 198.18.2.0/23).
    let near = Packet::tcp(
        sa(Ipv4Addr::new(198, 18, 4, 1), 1),
        sa(OUTSIDE, 80),
        TcpFlags::SYN,
    )
    .build();
    assert_eq!(f.egress(&near), near, "a source outside the cluster CIDR");
    // TCP starts with a SYN: a pod's answer on a connection from outside that reached it
    // directly (no entry, no SYN) keeps the pod's address, like netfilter's NEW-only NAT.
    for flags in [TcpFlags::SYN_ACK, TcpFlags::ACK] {
        let answer = Packet::tcp(sa(pod(10), 80), sa(OUTSIDE, 50000), flags).build();
        assert_eq!(
            f.egress(&answer),
            answer,
            "an untracked connection's {flags:?}"
        );
    }
    // Other protocols pass untranslated (no ports to claim).
    let gre = Packet::ip_raw(pod(10), OUTSIDE, 47)
        .payload(b"gre!")
        .build();
    assert_eq!(f.egress(&gre), gre, "GRE is not translated");
    assert!(f.ct().is_empty(), "no entry for any of them: {:?}", f.ct());
    assert_eq!(f.masq(MasqCounter::NewFlows), 0);
}

#[test]
fn pods_with_the_same_source_port_get_distinct_ports_until_the_range_is_exhausted() {
    // Two ports only: two flows fit, the third is refused with its own drop reason.
    let mut f = fixture_with_ports((62000, 62001));
    let server = sa(OUTSIDE, 443);
    let mut ports = Vec::new();
    for i in [10, 11] {
        let out = f.egress(&Packet::tcp(sa(pod(i), 40000), server, TcpFlags::SYN).build());
        let s = source(&out);
        assert_eq!(*s.ip(), NODE);
        ports.push(s.port());
    }
    ports.sort();
    assert_eq!(ports, vec![62000, 62001], "distinct ports, both in range");
    let r = f.run(
        TC_EGRESS,
        &Packet::tcp(sa(pod(12), 40000), server, TcpFlags::SYN).build(),
    );
    assert_eq!(r.action, TcAction::Shot);
    assert_eq!(
        r.drop_deltas,
        vec![(DropReason::MasqueradePortExhausted, 1)]
    );
    // Another destination has its own reply keys: ports are free again there.
    let out = f.egress(&Packet::tcp(sa(pod(12), 40000), sa(OUTSIDE, 444), TcpFlags::SYN).build());
    assert!((62000..=62001).contains(&source(&out).port()));
    assert_eq!(f.masq(MasqCounter::NewFlows), 3);
}

#[test]
fn icmp_echo_uses_the_id_as_its_port() {
    let mut f = fixture();
    let request = Packet::icmp_echo(pod(10), OUTSIDE, 7, 1)
        .payload(b"ping")
        .build();
    let out = f.egress(&request);
    let ip = parse(&out).unwrap().ipv4.unwrap();
    assert_eq!(Ipv4Addr::from(ip.source), NODE);
    let id = echo_id(&out);
    assert!((PORTS.0..=PORTS.1).contains(&id), "id {id}");
    assert_frame(
        &out,
        &Packet::icmp_echo(NODE, OUTSIDE, id, 1)
            .payload(b"ping")
            .build(),
        "echo request with the node's address and a new id",
    );
    let r = f.run(TC_INGRESS, &echo_reply(OUTSIDE, NODE, id, 1));
    assert_eq!(r.action, TcAction::Redirect);
    let mut expected = echo_reply(OUTSIDE, pod(10), 7, 1);
    expected[14 + 8] = 63; // TTL
    skiff_tests::packet::fix_ipv4_checksum(&mut expected);
    assert_frame(&r.packet_out, &expected, "echo reply back to the pod, id 7");
    // An echo reply nobody asked for passes untouched.
    let stray = echo_reply(OUTSIDE, NODE, 9, 1);
    let r = f.run(TC_INGRESS, &stray);
    assert_eq!((r.action, r.packet_out), (TcAction::Ok, stray));
}

#[test]
fn icmp_errors_about_masqueraded_flows_reach_the_pod() {
    let mut f = fixture();
    let client = sa(pod(10), 40000);
    let server = sa(OUTSIDE, 9999);
    let out = f.egress(&Packet::udp(client, server).payload(b"x").build());
    let translated = source(&out);
    // A router (198.18.0.3) says "fragmentation needed" about the packet as it left.
    let router = Ipv4Addr::new(198, 18, 0, 3);
    let error = icmp_error(router, NODE, 3, 4, &out);
    let r = f.run(TC_INGRESS, &error);
    assert!(r.drop_deltas.is_empty(), "{:?}", r.drop_deltas);
    assert_eq!(r.action, TcAction::Redirect);
    let original = Packet::udp(client, server).payload(b"x").build();
    let mut expected = icmp_error(router, pod(10), 3, 4, &original);
    expected[14 + 8] = 63;
    skiff_tests::packet::fix_ipv4_checksum(&mut expected);
    // The quoted UDP checksum is left as it was (only 8 bytes are quoted and receivers do
    // not verify it), so compare it with the translated packet's quote.
    let off = l4_offset(&expected) + 8 + 20 + 6;
    let quoted = l4_offset(&out) + 6;
    expected[off..off + 2].copy_from_slice(&out[quoted..quoted + 2]);
    let icmp = l4_offset(&expected);
    expected[icmp + 2] = 0;
    expected[icmp + 3] = 0;
    let csum = internet_checksum(&expected[icmp..], 0);
    expected[icmp + 2..icmp + 4].copy_from_slice(&csum.to_be_bytes());
    assert_frame(&r.packet_out, &expected, "ICMP error translated to the pod");
    assert_eq!(translated.ip(), &NODE);
    assert_eq!(f.masq(MasqCounter::IcmpErrors), 1);
}

#[test]
fn malformed_pod_packets_on_a_masquerading_uplink_are_dropped_and_counted() {
    let mut f = fixture();
    let good = Packet::tcp(sa(pod(10), 40000), sa(OUTSIDE, 80), TcpFlags::SYN).build();
    let off = l4_offset(&good);
    // TCP data offset 4 (< 5 words).
    let mut bad_doff = good.clone();
    bad_doff[off + 12] = 0x40;
    // IPv4 total length past the frame.
    let mut long = good.clone();
    skiff_tests::packet::set_ipv4_total_len(&mut long, 1400);
    // An ICMP packet with a 4-byte ICMP header.
    let mut short_icmp = Packet::ip_raw(pod(10), OUTSIDE, 1)
        .payload(&[8, 0, 0, 0])
        .build();
    skiff_tests::packet::fix_ipv4_checksum(&mut short_icmp);
    for (frame, reason) in [
        (bad_doff, DropReason::BadTcpDataOffset),
        (long, DropReason::BadIpv4TotalLength),
        (short_icmp, DropReason::ShortIcmpHeader),
    ] {
        let r = f.run(TC_EGRESS, &frame);
        assert_eq!(r.action, TcAction::Shot, "{reason:?}");
        assert_eq!(r.drop_deltas, vec![(reason, 1)]);
    }
    assert!(f.ct().is_empty());
}

#[test]
fn without_masquerade_egress_passes_malformed_packets_as_before() {
    let mut runner = ProgRunner::new();
    let good = Packet::tcp(sa(pod(10), 40000), sa(OUTSIDE, 80), TcpFlags::SYN).build();
    let mut bad = good.clone();
    bad[l4_offset(&good) + 12] = 0x40;
    for frame in [good, bad] {
        let r = runner.run(TC_EGRESS, &frame);
        assert_eq!(r.action, TcAction::Ok);
        assert!(r.drop_deltas.is_empty());
        assert_eq!(r.packet_out, frame, "no uplink masquerades: untouched");
    }
}
