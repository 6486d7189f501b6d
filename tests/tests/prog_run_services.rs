//! Per-packet service translation through BPF_PROG_TEST_RUN against the production object,
//! with maps programmed by the real reconciler. Rows compare the whole output frame with
//! the frame the builder makes for the expected translation (so every header field and
//! both checksums are checked), and check conntrack side effects.
//!
//! Addresses (none exist outside the runner's namespace): node 198.18.0.2 (ext0), external
//! clients 198.18.0.x, local pods 198.18.2.x, remote pods 198.18.3.x, ClusterIP
//! 198.18.100.10, LoadBalancer IP 198.18.200.1, ExternalIP 198.18.201.1.

use std::net::{Ipv4Addr, SocketAddrV4};

use skiff_agent::{
    datapath::BpfServiceMaps,
    lbmap::ServiceMaps as _,
    model::{
        Endpoint, EndpointState, Frontend, FrontendKind, Model, Protocol, ServicePort,
        ServicePortName,
    },
    reconcile::{Reconciler, SyncReport},
};
use skiff_datapath_abi::{
    ct_dir, ct_flags,
    program_names::{TC_EGRESS, TC_INGRESS},
    CtKey, DropReason, FlowCounter, NodeConfig,
};
use skiff_tests::{
    packet::{clear_udp_checksum, parse, verify_checksums, Packet, TcpFlags, ETH_HLEN},
    prog_run::{ProgRunner, TcAction},
};

const NODE: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
const CLIENT: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
const CLUSTER_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 100, 10);
const LB_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 200, 1);
const EXTERNAL_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 201, 1);
const NODE_PORT: u16 = 30080;

fn local_pod(i: u8) -> Ipv4Addr {
    Ipv4Addr::new(198, 18, 2, i)
}
fn remote_pod(i: u8) -> Ipv4Addr {
    Ipv4Addr::new(198, 18, 3, i)
}
fn sa(ip: Ipv4Addr, port: u16) -> SocketAddrV4 {
    SocketAddrV4::new(ip, port)
}

struct Fixture {
    runner: ProgRunner,
    maps: BpfServiceMaps,
    reconciler: Reconciler,
}

fn fixture() -> Fixture {
    let mut runner = ProgRunner::new();
    let maps = runner.service_maps();
    runner.set_node_config(NodeConfig {
        snat_addr: u32::from(NODE).to_be(),
        ..Default::default()
    });
    Fixture {
        runner,
        maps,
        reconciler: Reconciler::new(),
    }
}

fn ep(addr: Ipv4Addr, state: EndpointState, local: bool) -> Endpoint {
    Endpoint {
        addr,
        port: 8080,
        state,
        local,
    }
}

/// "default/web": ClusterIP :80, NodePort :30080 on the node, LB IP :80, ExternalIP :80.
fn web(proto: Protocol, endpoints: &[Endpoint]) -> (ServicePortName, ServicePort) {
    let f = |addr, port, kind| Frontend {
        addr,
        port,
        proto,
        kind,
    };
    (
        ServicePortName::new("default", "web", ""),
        ServicePort {
            proto: Some(proto),
            frontends: vec![
                f(CLUSTER_IP, 80, FrontendKind::ClusterIp),
                f(NODE, NODE_PORT, FrontendKind::NodePort),
                f(LB_IP, 80, FrontendKind::LoadBalancer),
                f(EXTERNAL_IP, 80, FrontendKind::ExternalIp),
            ],
            endpoints: endpoints.to_vec(),
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
        assert!(report.errors.is_empty(), "{:?}", report.errors);
        report
    }

    fn ingress(&mut self, frame: &[u8]) -> (TcAction, Vec<u8>) {
        let r = self.runner.run(TC_INGRESS, frame);
        assert!(
            r.drop_deltas.is_empty(),
            "unexpected drops {:?}",
            r.drop_deltas
        );
        (r.action, r.packet_out)
    }

    fn ct_len(&self) -> usize {
        self.maps.conntrack_entries().expect("conntrack").len()
    }
}

fn tcp(src: SocketAddrV4, dst: SocketAddrV4, flags: TcpFlags) -> Packet {
    Packet::tcp(src, dst, flags).seq(1000).payload(b"")
}

/// Asserts `out` is exactly `expected` (all fields, checksums included).
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

#[test]
fn nodeport_to_a_local_backend_is_dnated_and_replies_are_reverse_translated() {
    let mut f = fixture();
    f.program(&[web(
        Protocol::Tcp,
        &[ep(local_pod(10), EndpointState::Active, true)],
    )]);
    let client = sa(CLIENT, 40000);
    let backend = sa(local_pod(10), 8080);

    let syn = tcp(client, sa(NODE, NODE_PORT), TcpFlags::SYN);
    let (action, out) = f.ingress(&syn.build());
    assert_eq!(action, TcAction::Ok, "local backend: the stack delivers");
    assert_frame(
        &out,
        &tcp(client, backend, TcpFlags::SYN).build(),
        "DNAT, client address kept",
    );
    assert_eq!(f.ct_len(), 2, "a FORWARD and a REPLY entry");
    let entries = f.maps.conntrack_entries().unwrap();
    let (_, fwd) = entries
        .iter()
        .find(|(k, _)| k.dir == ct_dir::FORWARD)
        .unwrap();
    assert_eq!(fwd.flags & ct_flags::SNAT, 0);

    // The backend's SYN-ACK comes back through the node: source becomes the NodePort, and
    // the packet is routed from the hook (its new source is a local address).
    let synack = tcp(backend, client, TcpFlags::SYN_ACK).ack_number(1001);
    let (action, out) = f.ingress(&synack.build());
    assert_eq!(action, TcAction::Redirect);
    assert_frame(
        &out,
        &tcp(sa(NODE, NODE_PORT), client, TcpFlags::SYN_ACK)
            .ack_number(1001)
            .ttl(63)
            .build(),
        "reverse NAT",
    );

    // More backends appear; the established flow keeps its backend (conntrack).
    f.program(&[web(
        Protocol::Tcp,
        &[
            ep(local_pod(10), EndpointState::Active, true),
            ep(local_pod(11), EndpointState::Active, true),
            ep(local_pod(12), EndpointState::Active, true),
        ],
    )]);
    for _ in 0..20 {
        let (_, out) = f.ingress(&tcp(client, sa(NODE, NODE_PORT), TcpFlags::ACK).build());
        assert_frame(
            &out,
            &tcp(client, backend, TcpFlags::ACK).build(),
            "conntrack hit keeps the backend",
        );
    }
}

#[test]
fn egress_reverse_translates_replies_no_ingress_hook_saw() {
    let mut f = fixture();
    f.program(&[web(
        Protocol::Tcp,
        &[ep(local_pod(10), EndpointState::Active, true)],
    )]);
    let client = sa(CLIENT, 40001);
    f.ingress(&tcp(client, sa(LB_IP, 80), TcpFlags::SYN).build());
    let r = f.runner.run(
        TC_EGRESS,
        &tcp(sa(local_pod(10), 8080), client, TcpFlags::SYN_ACK).build(),
    );
    assert_eq!(r.action, TcAction::Ok);
    assert_frame(
        &r.packet_out,
        &tcp(sa(LB_IP, 80), client, TcpFlags::SYN_ACK).build(),
        "egress reverse NAT",
    );
}

#[test]
fn udp_frontends_of_every_kind_are_translated_with_valid_or_absent_checksums() {
    let mut f = fixture();
    f.program(&[web(
        Protocol::Udp,
        &[ep(local_pod(10), EndpointState::Active, true)],
    )]);
    let backend = sa(local_pod(10), 8080);
    for (i, frontend) in [sa(NODE, NODE_PORT), sa(LB_IP, 80), sa(EXTERNAL_IP, 80)]
        .into_iter()
        .enumerate()
    {
        let client = sa(CLIENT, 41000 + i as u16);
        let (action, out) = f.ingress(&Packet::udp(client, frontend).payload(b"query").build());
        assert_eq!(action, TcAction::Ok, "{frontend}");
        assert_frame(
            &out,
            &Packet::udp(client, backend).payload(b"query").build(),
            &format!("UDP to {frontend}"),
        );
    }
    // A UDP checksum of 0 means "none" and must stay 0 (not become a wrong checksum).
    let client = sa(CLIENT, 41999);
    let mut frame = Packet::udp(client, sa(NODE, NODE_PORT))
        .payload(b"x")
        .build();
    clear_udp_checksum(&mut frame);
    let (_, out) = f.ingress(&frame);
    let mut expected = Packet::udp(client, backend).payload(b"x").build();
    clear_udp_checksum(&mut expected);
    assert_frame(&out, &expected, "zero UDP checksum stays zero");
}

#[test]
fn clusterip_traffic_from_a_pod_is_translated_per_packet() {
    let mut f = fixture();
    f.program(&[web(
        Protocol::Tcp,
        &[ep(local_pod(10), EndpointState::Active, true)],
    )]);
    let pod = sa(local_pod(20), 45000);
    let (action, out) = f.ingress(&tcp(pod, sa(CLUSTER_IP, 80), TcpFlags::SYN).build());
    assert_eq!(action, TcAction::Ok);
    assert_frame(
        &out,
        &tcp(pod, sa(local_pod(10), 8080), TcpFlags::SYN).build(),
        "ClusterIP fallback",
    );
    let (action, out) = f.ingress(&tcp(sa(local_pod(10), 8080), pod, TcpFlags::SYN_ACK).build());
    assert_eq!(action, TcAction::Redirect);
    assert_frame(
        &out,
        &tcp(sa(CLUSTER_IP, 80), pod, TcpFlags::SYN_ACK)
            .ttl(63)
            .build(),
        "reply shows the ClusterIP",
    );
}

#[test]
fn a_remote_backend_gets_snat_with_a_collision_free_source_port() {
    let mut f = fixture();
    f.program(&[web(
        Protocol::Tcp,
        &[ep(remote_pod(10), EndpointState::Active, false)],
    )]);
    let backend = sa(remote_pod(10), 8080);
    let client = sa(CLIENT, 40000);
    let (action, out) = f.ingress(&tcp(client, sa(NODE, NODE_PORT), TcpFlags::SYN).build());
    assert_eq!(
        action,
        TcAction::Redirect,
        "SNATed flows are routed from the hook"
    );
    assert_frame(
        &out,
        &tcp(sa(NODE, 40000), backend, TcpFlags::SYN).ttl(63).build(),
        "DNAT + SNAT, client port kept when free",
    );

    let (action, out) = f.ingress(&tcp(backend, sa(NODE, 40000), TcpFlags::SYN_ACK).build());
    assert_eq!(action, TcAction::Redirect);
    assert_frame(
        &out,
        &tcp(sa(NODE, NODE_PORT), client, TcpFlags::SYN_ACK)
            .ttl(63)
            .build(),
        "reply: both translations undone",
    );

    // Another client using the same source port must not share the reply key.
    let other = sa(Ipv4Addr::new(198, 18, 0, 5), 40000);
    let (_, out) = f.ingress(&tcp(other, sa(NODE, NODE_PORT), TcpFlags::SYN).build());
    let (src, dst) = parse(&out).unwrap().endpoints().unwrap();
    assert_eq!(*src.ip(), NODE);
    assert_ne!(src.port(), 40000, "port 40000 is taken by the first flow");
    assert!(
        (32768..=60999).contains(&src.port()),
        "SNAT port {} outside the range",
        src.port()
    );
    assert_eq!(dst, backend);
}

#[test]
fn snat_without_a_configured_address_is_dropped_with_a_reason() {
    let mut runner = ProgRunner::new();
    let mut maps = runner.service_maps();
    let mut reconciler = Reconciler::new();
    let model = Model {
        services: [web(
            Protocol::Tcp,
            &[ep(remote_pod(10), EndpointState::Active, false)],
        )]
        .into_iter()
        .collect(),
    };
    assert!(reconciler.sync(&model, &mut maps).errors.is_empty());
    let r = runner.run(
        TC_INGRESS,
        &tcp(sa(CLIENT, 40000), sa(NODE, NODE_PORT), TcpFlags::SYN).build(),
    );
    assert_eq!(r.action, TcAction::Shot);
    assert_eq!(r.drop_deltas, vec![(DropReason::SnatNotConfigured, 1)]);
}

#[test]
fn a_pod_reaching_itself_through_its_service_is_hairpinned() {
    let mut f = fixture();
    f.program(&[web(
        Protocol::Tcp,
        &[ep(local_pod(10), EndpointState::Active, true)],
    )]);
    let me = sa(local_pod(10), 46000);
    let (action, out) = f.ingress(&tcp(me, sa(CLUSTER_IP, 80), TcpFlags::SYN).build());
    assert_eq!(action, TcAction::Redirect);
    assert_frame(
        &out,
        &tcp(sa(NODE, 46000), sa(local_pod(10), 8080), TcpFlags::SYN)
            .ttl(63)
            .build(),
        "hairpin SNAT",
    );
    let (_, out) =
        f.ingress(&tcp(sa(local_pod(10), 8080), sa(NODE, 46000), TcpFlags::SYN_ACK).build());
    assert_frame(
        &out,
        &tcp(sa(CLUSTER_IP, 80), me, TcpFlags::SYN_ACK)
            .ttl(63)
            .build(),
        "hairpin reply",
    );
}

#[test]
fn a_tcp_flow_to_a_service_without_backends_gets_a_rst() {
    let mut f = fixture();
    f.program(&[web(Protocol::Tcp, &[])]);
    let client = sa(CLIENT, 40000);
    let (action, out) = f.ingress(
        &tcp(client, sa(CLUSTER_IP, 80), TcpFlags::SYN)
            .payload(b"")
            .build(),
    );
    assert_eq!(
        action,
        TcAction::Redirect,
        "sent back out of the arrival interface"
    );
    verify_checksums(&out).unwrap();
    assert_eq!(out.len(), ETH_HLEN + 40);
    let p = parse(&out).unwrap();
    assert_eq!(p.endpoints(), Some((sa(CLUSTER_IP, 80), client)));
    let etherparse::TransportHeader::Tcp(t) = p.transport.unwrap() else {
        panic!("not TCP")
    };
    assert!(t.rst && t.ack && !t.syn, "RST|ACK");
    assert_eq!(
        (t.sequence_number, t.acknowledgment_number),
        (0, 1001),
        "ack = SYN seq + 1"
    );
    assert_eq!(
        &out[0..6],
        &skiff_tests::packet::CLIENT_MAC,
        "addressed back to the sender"
    );

    // A segment carrying ACK gets a RST with seq = its ack number and no ACK flag.
    let (_, out) = f.ingress(
        &tcp(client, sa(CLUSTER_IP, 80), TcpFlags::ACK)
            .ack_number(777)
            .payload(b"data")
            .build(),
    );
    let etherparse::TransportHeader::Tcp(t) = parse(&out).unwrap().transport.unwrap() else {
        panic!()
    };
    assert!(t.rst && !t.ack);
    assert_eq!(t.sequence_number, 777);
    assert_eq!(f.ct_len(), 0, "refused flows leave no conntrack state");
}

#[test]
fn a_udp_flow_to_a_service_without_backends_gets_icmp_port_unreachable() {
    let mut f = fixture();
    f.program(&[web(Protocol::Udp, &[])]);
    let client = sa(CLIENT, 5353);
    let query = Packet::udp(client, sa(CLUSTER_IP, 80))
        .ipv4_options(&[0x94, 4, 0, 0])
        .payload(b"query-bytes")
        .build();
    let (action, out) = f.ingress(&query);
    assert_eq!(action, TcAction::Redirect);
    verify_checksums(&out).unwrap();
    let p = parse(&out).unwrap();
    let ip = p.ipv4.unwrap();
    assert_eq!(
        (Ipv4Addr::from(ip.source), Ipv4Addr::from(ip.destination)),
        (CLUSTER_IP, CLIENT)
    );
    let icmp = &out[ETH_HLEN + 20..];
    assert_eq!(
        (icmp[0], icmp[1]),
        (3, 3),
        "destination unreachable / port unreachable"
    );
    // RFC 792: the original IP header (with its options) and 8 bytes of its payload.
    let quoted_len = 24 + 8;
    assert_eq!(&icmp[8..], &query[ETH_HLEN..ETH_HLEN + quoted_len]);
    assert_eq!(
        skiff_tests::packet::internet_checksum(icmp, 0),
        0,
        "ICMP checksum"
    );
}

#[test]
fn terminating_backends_take_new_flows_only_when_nothing_else_serves() {
    let mut f = fixture();
    f.program(&[web(
        Protocol::Tcp,
        &[
            ep(local_pod(10), EndpointState::Active, true),
            ep(local_pod(11), EndpointState::Terminating, true),
        ],
    )]);
    for port in 0..40 {
        let (_, out) =
            f.ingress(&tcp(sa(CLIENT, 50000 + port), sa(NODE, NODE_PORT), TcpFlags::SYN).build());
        assert_eq!(
            parse(&out).unwrap().endpoints().unwrap().1,
            sa(local_pod(10), 8080)
        );
    }
    // An existing flow to the terminating backend keeps working (it was chosen while it was
    // the only one), until the backend is removed.
    f.program(&[web(
        Protocol::Tcp,
        &[ep(local_pod(11), EndpointState::Terminating, true)],
    )]);
    let old = sa(CLIENT, 49999);
    let (_, out) = f.ingress(&tcp(old, sa(NODE, NODE_PORT), TcpFlags::SYN).build());
    assert_eq!(
        parse(&out).unwrap().endpoints().unwrap().1,
        sa(local_pod(11), 8080),
        "all terminating: serving ones are used"
    );
    f.program(&[web(
        Protocol::Tcp,
        &[
            ep(local_pod(12), EndpointState::Active, true),
            ep(local_pod(11), EndpointState::Terminating, true),
        ],
    )]);
    let (_, out) = f.ingress(&tcp(old, sa(NODE, NODE_PORT), TcpFlags::ACK).build());
    assert_eq!(
        parse(&out).unwrap().endpoints().unwrap().1,
        sa(local_pod(11), 8080),
        "existing flow stays on its terminating backend"
    );
}

#[test]
fn a_syn_on_a_reused_tuple_is_balanced_afresh_when_its_flow_closed_or_its_backend_terminates() {
    let mut f = fixture();
    let a = local_pod(10);
    let b = local_pod(11);
    f.program(&[web(Protocol::Tcp, &[ep(a, EndpointState::Active, true)])]);
    let client = sa(CLIENT, 40000);
    let to = |flags| tcp(client, sa(NODE, NODE_PORT), flags).build();
    let backend_of = |out: &[u8]| parse(out).unwrap().endpoints().unwrap().1;
    let (_, out) = f.ingress(&to(TcpFlags::SYN));
    assert_eq!(backend_of(&out), sa(a, 8080));

    // a starts terminating and b takes over: a retransmitted SYN of the tuple (or the
    // client reusing its port) must not land on the pod that is shutting down.
    f.program(&[web(
        Protocol::Tcp,
        &[
            ep(b, EndpointState::Active, true),
            ep(a, EndpointState::Terminating, true),
        ],
    )]);
    let (_, out) = f.ingress(&to(TcpFlags::ACK));
    assert_eq!(backend_of(&out), sa(a, 8080), "the live flow stays on a");
    let (_, out) = f.ingress(&to(TcpFlags::SYN));
    assert_eq!(backend_of(&out), sa(b, 8080), "a new connection goes to b");
    let (_, out) = f.ingress(&to(TcpFlags::ACK));
    assert_eq!(backend_of(&out), sa(b, 8080), "and stays there");

    // The flow to b closes (FIN) and the client reuses the tuple: a new connection, on a
    // fresh (not closing) entry; b is the only active backend, so b again.
    let fin = TcpFlags {
        fin: true,
        ack: true,
        ..Default::default()
    };
    let (_, _) = f.ingress(&to(fin));
    let closing = f
        .maps
        .conntrack_entries()
        .unwrap()
        .into_iter()
        .find(|(k, _)| k.dir == ct_dir::FORWARD)
        .expect("the forward entry");
    assert_ne!(
        closing.1.flags & ct_flags::CLOSING,
        0,
        "FIN marks it closing"
    );
    let (_, out) = f.ingress(&to(TcpFlags::SYN));
    assert_eq!(backend_of(&out), sa(b, 8080));
    let reopened = f
        .maps
        .conntrack_entries()
        .unwrap()
        .into_iter()
        .find(|(k, _)| k.dir == ct_dir::FORWARD)
        .expect("the forward entry");
    assert_eq!(
        reopened.1.flags & ct_flags::CLOSING,
        0,
        "the SYN opened a new flow: its entry is not closing"
    );
}

/// The purge of a departed backend's flows (and the GC) decides from a walk of the map,
/// then deletes. A client that reuses a walked tuple in between gets a new flow under the
/// same key: that entry must survive the delete, or the connection's next packet is
/// balanced midstream onto a backend that never saw its SYN (a RST; the residual failure
/// of rolling updates under load).
#[test]
fn a_delete_after_a_walk_keeps_the_flow_that_reused_the_tuple_meanwhile() {
    let mut f = fixture();
    let a = local_pod(10);
    let b = local_pod(11);
    f.program(&[web(Protocol::Tcp, &[ep(a, EndpointState::Active, true)])]);
    let client = sa(CLIENT, 40003);
    let to = |flags| tcp(client, sa(NODE, NODE_PORT), flags).build();
    let backend_of = |out: &[u8]| parse(out).unwrap().endpoints().unwrap().1;
    let fin = TcpFlags {
        fin: true,
        ack: true,
        ..Default::default()
    };
    f.ingress(&to(TcpFlags::SYN));
    f.ingress(&tcp(sa(a, 8080), client, TcpFlags::SYN_ACK).build());
    f.ingress(&to(fin));
    f.program(&[web(
        Protocol::Tcp,
        &[
            ep(b, EndpointState::Active, true),
            ep(a, EndpointState::Terminating, true),
        ],
    )]);

    // The walk: every entry is a's closed flow.
    let walked = f.maps.conntrack_entries().unwrap();
    assert_eq!(walked.len(), 2);
    let a_id = walked[0].1.backend_id;
    let keys: Vec<CtKey> = walked.iter().map(|(k, _)| *k).collect();
    // Meanwhile the client reuses its port: a new connection, balanced to b.
    let (_, out) = f.ingress(&to(TcpFlags::SYN));
    assert_eq!(backend_of(&out), sa(b, 8080));
    assert_eq!(f.runner.counters().flow(FlowCounter::Reopened), 1);
    // The delete: of what the walk found, only what still belongs to a goes.
    let deleted = f
        .maps
        .delete_conntrack_if(&keys, |_, v| v.backend_id == a_id)
        .unwrap();
    assert_eq!(
        deleted, 1,
        "a's reply entry; the reused forward key is b's now"
    );
    let (_, out) = f.ingress(&to(TcpFlags::ACK));
    assert_eq!(
        backend_of(&out),
        sa(b, 8080),
        "the new connection stays on b"
    );
    assert_eq!(
        f.runner.counters().flow(FlowCounter::Midstream),
        0,
        "no packet was balanced midstream"
    );
}

/// The atomic step of that delete: an entry taken that is not doomed after all (it
/// changed after the re-read) goes straight back, unchanged.
#[test]
fn a_conntrack_entry_taken_that_changed_is_put_back() {
    let mut f = fixture();
    let a = local_pod(10);
    f.program(&[web(Protocol::Tcp, &[ep(a, EndpointState::Active, true)])]);
    let client = sa(CLIENT, 40004);
    f.ingress(&tcp(client, sa(NODE, NODE_PORT), TcpFlags::SYN).build());
    let before = f.maps.conntrack_entries().unwrap();
    let (fwd, _) = *before
        .iter()
        .find(|(k, _)| k.dir == ct_dir::FORWARD)
        .expect("forward entry");
    assert!(!f
        .maps
        .take_conntrack_unless_changed(&fwd, |_, _| false)
        .unwrap());
    let mut after = f.maps.conntrack_entries().unwrap();
    let mut expected = before.clone();
    after.sort_by_key(|(k, _)| k.dir);
    expected.sort_by_key(|(k, _)| k.dir);
    assert_eq!(after, expected, "put back as it was");
    assert!(f
        .maps
        .take_conntrack_unless_changed(&fwd, |_, _| true)
        .unwrap());
    assert_eq!(f.ct_len(), 1, "the forward entry went");
    // What losing a live flow's entry looks like: its next packet is balanced midstream,
    // and counted.
    f.ingress(&tcp(client, sa(NODE, NODE_PORT), TcpFlags::ACK).build());
    assert_eq!(f.runner.counters().flow(FlowCounter::Midstream), 1);
}

#[test]
fn removing_a_backend_purges_its_flows_so_udp_clients_move_on() {
    let mut f = fixture();
    let a = ep(local_pod(10), EndpointState::Active, true);
    let b = ep(local_pod(11), EndpointState::Active, true);
    f.program(&[web(Protocol::Udp, &[a])]);
    let resolver = sa(CLIENT, 5353);
    let (_, out) = f.ingress(
        &Packet::udp(resolver, sa(CLUSTER_IP, 80))
            .payload(b"q1")
            .build(),
    );
    assert_eq!(
        parse(&out).unwrap().endpoints().unwrap().1,
        sa(local_pod(10), 8080)
    );

    // The DNS pod is replaced: a goes, b comes. The flow's entries are purged at once, not
    // left to time out while the resolver keeps reusing its source port.
    let report = f.program(&[web(Protocol::Udp, &[b])]);
    assert_eq!(
        report.purged_conntrack, 2,
        "forward and reply entries of the flow"
    );
    let (_, out) = f.ingress(
        &Packet::udp(resolver, sa(CLUSTER_IP, 80))
            .payload(b"q2")
            .build(),
    );
    assert_eq!(
        parse(&out).unwrap().endpoints().unwrap().1,
        sa(local_pod(11), 8080),
        "same 5-tuple, live backend"
    );
}

#[test]
fn traffic_to_non_service_addresses_is_untouched() {
    let mut f = fixture();
    f.program(&[web(
        Protocol::Tcp,
        &[ep(local_pod(10), EndpointState::Active, true)],
    )]);
    for frame in [
        tcp(sa(CLIENT, 40000), sa(NODE, 22), TcpFlags::SYN).build(),
        tcp(sa(CLIENT, 40000), sa(CLUSTER_IP, 81), TcpFlags::SYN).build(),
        Packet::udp(sa(CLIENT, 40000), sa(CLUSTER_IP, 80)).build(),
    ] {
        let (action, out) = f.ingress(&frame);
        assert_eq!(action, TcAction::Ok);
        assert_eq!(out, frame);
    }
    assert_eq!(f.ct_len(), 0);
}

#[test]
fn conntrack_gc_ages_pairs_by_protocol_state_and_keeps_live_flows() {
    let mut f = fixture();
    f.program(&[web(
        Protocol::Tcp,
        &[ep(local_pod(10), EndpointState::Active, true)],
    )]);
    let half_open = sa(CLIENT, 40000);
    let established = sa(CLIENT, 40001);
    f.ingress(&tcp(half_open, sa(NODE, NODE_PORT), TcpFlags::SYN).build());
    f.ingress(&tcp(established, sa(NODE, NODE_PORT), TcpFlags::SYN).build());
    f.ingress(&tcp(sa(local_pod(10), 8080), established, TcpFlags::SYN_ACK).build());
    let entries = f.maps.conntrack_entries().unwrap();
    assert_eq!(entries.len(), 4);
    let fwd_flags: Vec<u32> = entries
        .iter()
        .filter(|(k, _)| k.dir == ct_dir::FORWARD)
        .map(|(k, v)| (u16::from_be(k.sport), v.flags))
        .map(|(port, flags)| {
            if port == 40001 {
                flags & ct_flags::SEEN_REPLY
            } else {
                0
            }
        })
        .collect();
    assert!(
        fwd_flags.contains(&ct_flags::SEEN_REPLY),
        "the first reply marks the forward entry"
    );
    let base = entries.iter().map(|(_, v)| v.last_seen_ns).max().unwrap();
    let s = 1_000_000_000u64;

    assert_eq!(
        f.maps.gc_conntrack(base + 30 * s).unwrap(),
        0,
        "nothing is idle long enough"
    );
    assert_eq!(
        f.maps.gc_conntrack(base + 61 * s).unwrap(),
        2,
        "the half-open flow's pair goes after the SYN timeout"
    );
    let left = f.maps.conntrack_entries().unwrap();
    assert!(left
        .iter()
        .all(|(k, v)| u16::from_be(k.sport) == 40001 || u16::from_be(v.dport) == 40001));
    assert_eq!(
        f.maps.gc_conntrack(base + 3600 * s).unwrap(),
        0,
        "established flows live 6 h"
    );
    assert_eq!(f.maps.gc_conntrack(base + 21601 * s).unwrap(), 2);
    assert_eq!(f.ct_len(), 0);
}

#[test]
fn a_fin_in_either_direction_puts_the_whole_flow_on_the_close_timeout() {
    let mut f = fixture();
    f.program(&[web(
        Protocol::Tcp,
        &[ep(local_pod(10), EndpointState::Active, true)],
    )]);
    let client = sa(CLIENT, 40002);
    let backend = sa(local_pod(10), 8080);
    f.ingress(&tcp(client, sa(NODE, NODE_PORT), TcpFlags::SYN).build());
    f.ingress(&tcp(backend, client, TcpFlags::SYN_ACK).build());
    f.ingress(&tcp(client, sa(NODE, NODE_PORT), TcpFlags::ACK).build());
    // Only the server's FIN is seen (the client's went another way, or was lost): the
    // client-side entry alone would keep the established timeout.
    let fin = TcpFlags {
        fin: true,
        ack: true,
        ..Default::default()
    };
    f.ingress(&tcp(backend, client, fin).build());
    let entries = f.maps.conntrack_entries().unwrap();
    assert_eq!(entries.len(), 2);
    let closing: Vec<bool> = entries
        .iter()
        .map(|(_, v)| v.flags & ct_flags::CLOSING != 0)
        .collect();
    assert!(
        closing.contains(&true) && closing.contains(&false),
        "one side marked closing: {closing:?}"
    );
    let base = entries.iter().map(|(_, v)| v.last_seen_ns).max().unwrap();
    let s = 1_000_000_000u64;
    assert_eq!(
        f.maps.gc_conntrack(base + 5 * s).unwrap(),
        0,
        "not idle long enough"
    );
    assert_eq!(
        f.maps.gc_conntrack(base + 11 * s).unwrap(),
        2,
        "both entries go after the close timeout, not 6 h"
    );
}

/// The quoted packet of an ICMP error frame, as (source, destination).
fn quoted_endpoints(frame: &[u8]) -> (SocketAddrV4, SocketAddrV4) {
    let inner = &frame[ETH_HLEN + 20 + 8..];
    let ip = |b: &[u8]| Ipv4Addr::new(b[0], b[1], b[2], b[3]);
    let port = |b: &[u8]| u16::from_be_bytes([b[0], b[1]]);
    (
        sa(ip(&inner[12..16]), port(&inner[20..22])),
        sa(ip(&inner[16..20]), port(&inner[22..24])),
    )
}

#[test]
fn icmp_errors_about_translated_flows_are_translated_both_ways() {
    let mut f = fixture();
    f.program(&[web(
        Protocol::Udp,
        &[ep(local_pod(10), EndpointState::Active, true)],
    )]);
    let client = sa(CLIENT, 5353);
    let frontend = sa(NODE, NODE_PORT);
    let backend = sa(local_pod(10), 8080);
    let (_, translated) = f.ingress(&Packet::udp(client, frontend).payload(b"query").build());

    // The backend answers "port unreachable" about the packet it received (client ->
    // backend): the client must see it from the frontend, about client -> frontend.
    let err = skiff_tests::packet::icmp_error(local_pod(10), CLIENT, 3, 3, &translated);
    let (action, out) = f.ingress(&err);
    assert_eq!(
        action,
        TcAction::Redirect,
        "towards the client: routed from the hook"
    );
    verify_checksums(&out).unwrap();
    let outer = parse(&out).unwrap().ipv4.unwrap();
    assert_eq!(
        (
            Ipv4Addr::from(outer.source),
            Ipv4Addr::from(outer.destination)
        ),
        (NODE, CLIENT)
    );
    assert_eq!(
        quoted_endpoints(&out),
        (client, frontend),
        "the quoted packet is the client's own"
    );
    let inner_ip = &out[ETH_HLEN + 28..ETH_HLEN + 48];
    assert_eq!(
        skiff_tests::packet::internet_checksum(inner_ip, 0),
        0,
        "inner IPv4 checksum"
    );

    // The client answers a reply with "port unreachable" (its socket closed): the backend
    // must see it about backend -> client.
    let reply_as_client_saw_it = Packet::udp(frontend, client).payload(b"answer").build();
    let err = skiff_tests::packet::icmp_error(CLIENT, NODE, 3, 3, &reply_as_client_saw_it);
    let (action, out) = f.ingress(&err);
    assert_eq!(
        action,
        TcAction::Ok,
        "towards a local backend: the stack delivers"
    );
    verify_checksums(&out).unwrap();
    let outer = parse(&out).unwrap().ipv4.unwrap();
    assert_eq!(
        (
            Ipv4Addr::from(outer.source),
            Ipv4Addr::from(outer.destination)
        ),
        (CLIENT, local_pod(10))
    );
    assert_eq!(quoted_endpoints(&out), (backend, client));

    // Errors about flows skiff does not track pass untouched.
    let stranger = Packet::udp(sa(CLIENT, 1), sa(Ipv4Addr::new(198, 18, 9, 9), 2)).build();
    let err = skiff_tests::packet::icmp_error(CLIENT, NODE, 3, 3, &stranger);
    let (action, out) = f.ingress(&err);
    assert_eq!((action, out), (TcAction::Ok, err));
}

#[test]
fn a_full_kernel_map_is_reported_with_its_name_size_and_flag() {
    let config = skiff_agent::datapath::DatapathConfig {
        map_sizes: skiff_agent::lbmap::MapSizes {
            services: 6,
            ..Default::default()
        },
        pin_dir: None,
    };
    let mut runner = ProgRunner::with_config(&config);
    let mut maps = runner.service_maps();
    let mut reconciler = Reconciler::new();
    // Two services of four frontends each: the second does not fit into 6 entries.
    let a = web(
        Protocol::Tcp,
        &[ep(local_pod(10), EndpointState::Active, true)],
    );
    let mut b = web(
        Protocol::Udp,
        &[ep(local_pod(11), EndpointState::Active, true)],
    );
    b.0 = ServicePortName::new("default", "zz-dns", "");
    let model = Model {
        services: [a, b].into_iter().collect(),
    };
    let report = reconciler.sync(&model, &mut maps);
    assert_eq!(report.errors.len(), 1, "{:?}", report.errors);
    let (name, err) = &report.errors[0];
    assert_eq!(name.to_string(), "default/zz-dns");
    assert_eq!(
        err.to_string(),
        "BPF map SKIFF_SVC_V1 is full (6 entries): raise it with `--map-size-services` (skiff-agent) and restart the agent"
    );
    // The service that fit works.
    let r = runner.run(
        TC_INGRESS,
        &tcp(sa(CLIENT, 40000), sa(NODE, NODE_PORT), TcpFlags::SYN).build(),
    );
    assert_eq!(r.action, TcAction::Ok);
    assert_eq!(
        parse(&r.packet_out).unwrap().endpoints().unwrap().1,
        sa(local_pod(10), 8080)
    );
}

fn with_policy(
    mut svc: (ServicePortName, ServicePort),
    external: bool,
    internal: bool,
) -> (ServicePortName, ServicePort) {
    svc.1.external_local = external;
    svc.1.internal_local = internal;
    svc
}

#[test]
fn external_traffic_policy_local_keeps_outside_traffic_on_local_backends() {
    let mixed = [
        ep(local_pod(10), EndpointState::Active, true),
        ep(remote_pod(10), EndpointState::Active, false),
    ];
    let mut f = fixture();
    f.runner.packets_come_from_outside();
    f.program(&[with_policy(web(Protocol::Tcp, &mixed), true, false)]);
    for port in 0..30 {
        let client = sa(CLIENT, 50000 + port);
        let (action, out) = f.ingress(&tcp(client, sa(NODE, NODE_PORT), TcpFlags::SYN).build());
        assert_eq!(action, TcAction::Ok);
        assert_frame(
            &out,
            &tcp(client, sa(local_pod(10), 8080), TcpFlags::SYN).build(),
            "local backend, client address kept",
        );
    }
    // No local endpoint: outside traffic is dropped (the health check fails over), with
    // its reason.
    f.program(&[with_policy(web(Protocol::Tcp, &mixed[1..]), true, false)]);
    let r = f.runner.run(
        TC_INGRESS,
        &tcp(sa(CLIENT, 40000), sa(LB_IP, 80), TcpFlags::SYN).build(),
    );
    assert_eq!(r.action, TcAction::Shot);
    assert_eq!(r.drop_deltas, vec![(DropReason::NoLocalBackend, 1)]);
}

#[test]
fn in_cluster_traffic_to_an_external_local_service_uses_every_backend() {
    // Packets from a pod interface (not external): the cluster-wide entry applies.
    let mut f = fixture();
    f.program(&[with_policy(
        web(
            Protocol::Tcp,
            &[ep(remote_pod(10), EndpointState::Active, false)],
        ),
        true,
        false,
    )]);
    let pod = sa(local_pod(20), 45000);
    let (action, out) = f.ingress(&tcp(pod, sa(NODE, NODE_PORT), TcpFlags::SYN).build());
    assert_eq!(action, TcAction::Redirect, "remote backend via SNAT");
    assert_eq!(
        parse(&out).unwrap().endpoints().unwrap().1,
        sa(remote_pod(10), 8080)
    );
}

#[test]
fn internal_traffic_policy_local_refuses_clusterip_without_local_backends() {
    let mut f = fixture();
    let remote_only = [ep(remote_pod(10), EndpointState::Active, false)];
    f.program(&[with_policy(web(Protocol::Tcp, &remote_only), false, true)]);
    let pod = sa(local_pod(20), 45000);
    let (action, out) = f.ingress(&tcp(pod, sa(CLUSTER_IP, 80), TcpFlags::SYN).build());
    assert_eq!(action, TcAction::Redirect);
    let etherparse::TransportHeader::Tcp(t) = parse(&out).unwrap().transport.unwrap() else {
        panic!()
    };
    assert!(t.rst, "no local endpoint: the ClusterIP refuses");
    // The NodePort is not affected by the internal policy.
    let (_, out) = f.ingress(&tcp(pod, sa(NODE, NODE_PORT), TcpFlags::SYN).build());
    assert_eq!(
        parse(&out).unwrap().endpoints().unwrap().1,
        sa(remote_pod(10), 8080)
    );
    // With a local endpoint, only it serves the ClusterIP.
    f.program(&[with_policy(
        web(
            Protocol::Tcp,
            &[
                ep(local_pod(10), EndpointState::Active, true),
                remote_only[0],
            ],
        ),
        false,
        true,
    )]);
    for port in 0..20 {
        let (_, out) = f.ingress(
            &tcp(
                sa(local_pod(20), 46000 + port),
                sa(CLUSTER_IP, 80),
                TcpFlags::SYN,
            )
            .build(),
        );
        assert_eq!(
            parse(&out).unwrap().endpoints().unwrap().1,
            sa(local_pod(10), 8080)
        );
    }
}

#[test]
fn load_balancer_source_ranges_admit_only_listed_clients() {
    let mut f = fixture();
    let mut svc = web(
        Protocol::Tcp,
        &[ep(local_pod(10), EndpointState::Active, true)],
    );
    svc.1.source_ranges = vec![(Ipv4Addr::new(198, 18, 0, 0), 30)];
    f.program(&[svc]);
    let inside = sa(CLIENT, 40000); // 198.18.0.1
    let outside = sa(Ipv4Addr::new(198, 18, 0, 5), 40000);
    for frontend in [sa(LB_IP, 80), sa(EXTERNAL_IP, 80)] {
        let (action, out) = f.ingress(&tcp(inside, frontend, TcpFlags::SYN).build());
        assert_eq!(action, TcAction::Ok);
        assert_eq!(
            parse(&out).unwrap().endpoints().unwrap().1,
            sa(local_pod(10), 8080)
        );
        let r = f
            .runner
            .run(TC_INGRESS, &tcp(outside, frontend, TcpFlags::SYN).build());
        assert_eq!(r.action, TcAction::Shot, "{frontend}");
        assert_eq!(r.drop_deltas, vec![(DropReason::SourceRangeDenied, 1)]);
    }
    // The ranges guard the externally reachable frontends only.
    let (action, _) = f.ingress(&tcp(outside, sa(CLUSTER_IP, 80), TcpFlags::SYN).build());
    assert_eq!(action, TcAction::Ok);
    // Removing the ranges opens the service again, and the trie is emptied.
    f.program(&[web(
        Protocol::Tcp,
        &[ep(local_pod(10), EndpointState::Active, true)],
    )]);
    let (action, _) = f.ingress(
        &tcp(
            sa(Ipv4Addr::new(198, 18, 0, 9), 1),
            sa(LB_IP, 80),
            TcpFlags::SYN,
        )
        .build(),
    );
    assert_eq!(action, TcAction::Ok);
    assert!(f.maps.snapshot().unwrap().source_ranges.is_empty());
}

#[test]
fn session_affinity_sticks_to_a_backend_until_it_leaves_or_the_timeout_passes() {
    let mut f = fixture();
    let three: Vec<Endpoint> = (10..13)
        .map(|i| ep(local_pod(i), EndpointState::Active, true))
        .collect();
    let mut svc = web(Protocol::Tcp, &three);
    svc.1.affinity_timeout = Some(1);
    f.program(&[svc.clone()]);
    let backend_of = |f: &mut Fixture, client: Ipv4Addr, port: u16| {
        let (_, out) =
            f.ingress(&tcp(sa(client, port), sa(NODE, NODE_PORT), TcpFlags::SYN).build());
        parse(&out).unwrap().endpoints().unwrap().1
    };
    let first = backend_of(&mut f, CLIENT, 50000);
    for port in 50001..50030 {
        assert_eq!(
            backend_of(&mut f, CLIENT, port),
            first,
            "the same client sticks to its backend"
        );
    }
    // The remembered backend leaves the service: its affinity entries go with it.
    let remaining: Vec<Endpoint> = three
        .iter()
        .copied()
        .filter(|e| sa(e.addr, 8080) != first)
        .collect();
    svc.1.endpoints = remaining;
    let report = f.program(&[svc.clone()]);
    assert_eq!(report.purged_affinity, 1);
    let second = backend_of(&mut f, CLIENT, 51000);
    assert_ne!(second, first);
    // After the 1 s timeout without new flows the client is balanced afresh: poll new flows
    // (each one also refreshes the entry only if it is still valid) until one differs.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let mut port = 52000;
    loop {
        std::thread::sleep(std::time::Duration::from_millis(1100));
        let b = backend_of(&mut f, CLIENT, port);
        port += 1;
        if b != second {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "affinity never expired"
        );
    }
}

#[test]
fn maglev_nodes_agree_on_every_flow_and_follow_the_user_space_table() {
    let backends: Vec<Endpoint> = (10..20)
        .map(|i| ep(local_pod(i), EndpointState::Active, true))
        .collect();
    let mut svc = web(Protocol::Tcp, &backends);
    svc.1.maglev = true;
    // Node 1 programs just the service; node 2 has another service first (different
    // ids) and receives the endpoints in reverse order.
    let mut node1 = fixture();
    node1.program(&[svc.clone()]);
    let mut node2 = fixture();
    let mut other = web(
        Protocol::Udp,
        &[ep(local_pod(99), EndpointState::Active, true)],
    );
    other.0 = ServicePortName::new("default", "aaa-first", "");
    node2.program(&[other.clone()]);
    let mut reversed = svc.clone();
    reversed.1.endpoints.reverse();
    node2.program(&[other, reversed]);

    let addrs: Vec<(std::net::SocketAddrV4, u32)> = backends
        .iter()
        .enumerate()
        .map(|(i, e)| (sa(e.addr, 8080), i as u32 + 1))
        .collect();
    let table = skiff_agent::maglev::build(&addrs, skiff_datapath_abi::maglev::TABLE_SIZE);
    for i in 0..5_000u32 {
        let client = sa(
            Ipv4Addr::from(u32::from(Ipv4Addr::new(198, 18, 16, 0)) + (i % 4096)),
            10000 + (i / 4096) as u16,
        );
        let frame = tcp(client, sa(NODE, NODE_PORT), TcpFlags::SYN).build();
        let (_, out1) = node1.ingress(&frame);
        let (_, out2) = node2.ingress(&frame);
        let b1 = parse(&out1).unwrap().endpoints().unwrap().1;
        let b2 = parse(&out2).unwrap().endpoints().unwrap().1;
        assert_eq!(b1, b2, "flow {client}: the nodes disagree");
        let h = skiff_datapath_abi::maglev::flow_hash(
            u32::from(*client.ip()).to_be(),
            u32::from(NODE).to_be(),
            client.port().to_be(),
            NODE_PORT.to_be(),
            6,
        );
        let predicted = addrs
            .iter()
            .find(|(_, id)| *id == table[(h % skiff_datapath_abi::maglev::TABLE_SIZE) as usize])
            .unwrap()
            .0;
        assert_eq!(
            b1, predicted,
            "flow {client}: the datapath does not follow the table"
        );
    }
}

const XDP_PASS: u32 = 2;
const XDP_REDIRECT: u32 = 4;

#[test]
fn xdp_and_tc_translate_remote_backend_flows_identically() {
    let remote = [ep(remote_pod(10), EndpointState::Active, false)];
    let mut tc = fixture();
    tc.runner.packets_come_from_outside();
    let mut xdp = fixture();
    xdp.runner.packets_come_from_outside();
    for f in [&mut tc, &mut xdp] {
        f.program(&[web(Protocol::Tcp, &remote), {
            let mut u = web(Protocol::Udp, &remote);
            u.0 = ServicePortName::new("default", "web-udp", "");
            u
        }]);
    }
    let client = sa(CLIENT, 40000);
    let mut zero_csum_udp = Packet::udp(client, sa(NODE, NODE_PORT))
        .payload(b"q")
        .build();
    clear_udp_checksum(&mut zero_csum_udp);
    let frames = [
        tcp(client, sa(NODE, NODE_PORT), TcpFlags::SYN).build(),
        // Distinct client ports keep the SNAT port deterministic (the client's own port is
        // free); a collision would pick a random one, differently on each runner.
        tcp(sa(CLIENT, 40002), sa(LB_IP, 80), TcpFlags::SYN).build(),
        Packet::udp(sa(CLIENT, 40001), sa(NODE, NODE_PORT))
            .payload(b"query")
            .build(),
        zero_csum_udp,
        // Later packets and the backend's replies follow the flows' conntrack entries.
        tcp(client, sa(NODE, NODE_PORT), TcpFlags::ACK).build(),
        tcp(sa(remote_pod(10), 8080), sa(NODE, 40000), TcpFlags::SYN_ACK).build(),
    ];
    let ext0 = xdp.runner.mac_of("ext0");
    for (i, frame) in frames.iter().enumerate() {
        let (tc_action, tc_out) = tc.ingress(frame);
        let (xdp_action, xdp_out) = xdp.runner.run_xdp(frame);
        assert_eq!(tc_action, TcAction::Redirect, "frame {i}");
        assert_eq!(
            xdp_action, XDP_REDIRECT,
            "frame {i}: XDP forwards it itself"
        );
        verify_checksums(&xdp_out).unwrap_or_else(|e| panic!("frame {i}: {e}"));
        assert_eq!(
            &xdp_out[ETH_HLEN..],
            &tc_out[ETH_HLEN..],
            "frame {i}: same translation on both paths"
        );
        assert_eq!(
            &xdp_out[6..12],
            &ext0,
            "frame {i}: source MAC of the egress device"
        );
        let next_hop: [u8; 6] = if i == 5 {
            [2, 0, 0, 0, 0, 1]
        } else {
            [2, 0, 0, 0, 0, 3]
        };
        assert_eq!(
            &xdp_out[0..6],
            &next_hop,
            "frame {i}: destination MAC of the next hop"
        );
    }
}

#[test]
fn xdp_passes_local_backends_and_non_service_traffic_to_tc() {
    let mut f = fixture();
    f.runner.packets_come_from_outside();
    f.program(&[web(
        Protocol::Tcp,
        &[ep(local_pod(10), EndpointState::Active, true)],
    )]);
    let syn = tcp(sa(CLIENT, 40000), sa(NODE, NODE_PORT), TcpFlags::SYN).build();
    let (action, out) = f.runner.run_xdp(&syn);
    assert_eq!(
        (action, &out),
        (XDP_PASS, &syn),
        "local backend: untouched, for tc"
    );
    // tc picks the flow XDP already tracked.
    let (_, out) = f.ingress(&syn);
    assert_eq!(
        parse(&out).unwrap().endpoints().unwrap().1,
        sa(local_pod(10), 8080)
    );
    let other = tcp(sa(CLIENT, 40000), sa(NODE, 22), TcpFlags::SYN).build();
    assert_eq!(f.runner.run_xdp(&other), (XDP_PASS, other));
}

/// Readiness flapping (issue #7): a backend whose readiness probe fails keeps its
/// established TCP connections (kube-proxy keeps their conntrack; only new flows avoid
/// it), new connections go to the ready backends, and when it is ready again it takes new
/// flows without anything having been purged. Removed from the slice, its flows go.
#[test]
fn a_not_ready_backend_keeps_its_established_tcp_flows_but_takes_no_new_ones() {
    let mut f = fixture();
    let a = local_pod(10);
    let b = local_pod(11);
    let backend_of = |out: &[u8]| parse(out).unwrap().endpoints().unwrap().1;
    f.program(&[web(Protocol::Tcp, &[ep(a, EndpointState::Active, true)])]);
    let client = sa(CLIENT, 41000);
    let to = |flags| tcp(client, sa(NODE, NODE_PORT), flags).build();
    let (_, out) = f.ingress(&to(TcpFlags::SYN));
    assert_eq!(backend_of(&out), sa(a, 8080));
    f.ingress(&tcp(sa(a, 8080), client, TcpFlags::SYN_ACK).build());
    f.ingress(&to(TcpFlags::ACK));

    // a's readiness probe fails; b is ready.
    let report = f.program(&[web(
        Protocol::Tcp,
        &[
            ep(a, EndpointState::NotReady, true),
            ep(b, EndpointState::Active, true),
        ],
    )]);
    assert_eq!(report.purged_conntrack, 0, "no TCP flow is purged");
    assert!(report.stale_sockets.is_empty());
    assert_eq!(f.ct_len(), 2, "the flow's FORWARD and REPLY entries");
    for _ in 0..5 {
        let (_, out) = f.ingress(&to(TcpFlags::ACK));
        assert_eq!(
            backend_of(&out),
            sa(a, 8080),
            "the established flow stays on a"
        );
    }
    let (action, out) = f.ingress(&tcp(sa(a, 8080), client, TcpFlags::ACK).build());
    assert_eq!(action, TcAction::Redirect);
    assert_eq!(
        parse(&out).unwrap().endpoints().unwrap().0,
        sa(NODE, NODE_PORT),
        "a's replies are still reverse-translated"
    );
    for port in 0..40 {
        let (_, out) =
            f.ingress(&tcp(sa(CLIENT, 42000 + port), sa(NODE, NODE_PORT), TcpFlags::SYN).build());
        assert_eq!(backend_of(&out), sa(b, 8080), "new connections avoid a");
    }
    assert_eq!(
        f.runner.counters().flow(FlowCounter::Midstream),
        0,
        "no packet was balanced midstream"
    );

    // A SYN reusing a tuple tracked to the not-ready backend (the client reused its port
    // after a crash, no FIN seen) is a new connection: balanced afresh, to b.
    let reuser = sa(CLIENT, 41001);
    let (_, out) = f.ingress(&tcp(reuser, sa(NODE, NODE_PORT), TcpFlags::SYN).build());
    assert_eq!(backend_of(&out), sa(b, 8080));

    // a is ready again: it takes new flows, and nothing was purged on the way.
    let report = f.program(&[web(
        Protocol::Tcp,
        &[
            ep(a, EndpointState::Active, true),
            ep(b, EndpointState::Active, true),
        ],
    )]);
    assert_eq!(report.purged_conntrack, 0);
    let (_, out) = f.ingress(&to(TcpFlags::ACK));
    assert_eq!(backend_of(&out), sa(a, 8080));
    let picked: std::collections::BTreeSet<SocketAddrV4> = (0..64)
        .map(|port| {
            let (_, out) = f.ingress(
                &tcp(sa(CLIENT, 43000 + port), sa(NODE, NODE_PORT), TcpFlags::SYN).build(),
            );
            backend_of(&out)
        })
        .collect();
    assert!(picked.contains(&sa(a, 8080)), "a takes new flows again");

    // Gone from the slice (after going not-ready first): its flows are purged.
    f.program(&[web(
        Protocol::Tcp,
        &[
            ep(a, EndpointState::NotReady, true),
            ep(b, EndpointState::Active, true),
        ],
    )]);
    // Both entries of a flow name its backend id; a's is the one its forward entries
    // rewrite to.
    let entries = f.maps.conntrack_entries().unwrap();
    let a_id = entries
        .iter()
        .find(|(k, v)| k.dir == ct_dir::FORWARD && v.daddr == u32::from(a).to_be())
        .map(|(_, v)| v.backend_id)
        .expect("a forward entry to a");
    let a_flows = |f: &Fixture| {
        f.maps
            .conntrack_entries()
            .unwrap()
            .into_iter()
            .filter(|(_, v)| v.backend_id == a_id)
            .count()
    };
    let before = a_flows(&f);
    assert!(before >= 2, "a still carries its flows while not ready");
    let report = f.program(&[web(Protocol::Tcp, &[ep(b, EndpointState::Active, true)])]);
    assert_eq!(report.purged_conntrack, before);
    assert_eq!(a_flows(&f), 0);
}

/// UDP has no handshake: a flow to a backend that went not-ready is purged, so the next
/// datagram of the same 5-tuple reaches a ready backend (the stale-UDP-flow complaint).
#[test]
fn a_udp_flow_to_a_backend_that_went_not_ready_moves_to_a_ready_one() {
    let mut f = fixture();
    let a = local_pod(10);
    let b = local_pod(11);
    f.program(&[web(Protocol::Udp, &[ep(a, EndpointState::Active, true)])]);
    let resolver = sa(CLIENT, 5354);
    let query = |p: &[u8]| Packet::udp(resolver, sa(CLUSTER_IP, 80)).payload(p).build();
    let (_, out) = f.ingress(&query(b"q1"));
    assert_eq!(parse(&out).unwrap().endpoints().unwrap().1, sa(a, 8080));

    let report = f.program(&[web(
        Protocol::Udp,
        &[
            ep(a, EndpointState::NotReady, true),
            ep(b, EndpointState::Active, true),
        ],
    )]);
    assert_eq!(report.purged_conntrack, 2, "forward and reply entries");
    let (_, out) = f.ingress(&query(b"q2"));
    assert_eq!(
        parse(&out).unwrap().endpoints().unwrap().1,
        sa(b, 8080),
        "same 5-tuple, ready backend"
    );
}

/// Session affinity must not pin a new connection to a backend that went not-ready: its
/// affinity entries are purged with its slots, while its established flow stays.
#[test]
fn session_affinity_does_not_pin_new_connections_to_a_not_ready_backend() {
    let mut f = fixture();
    let three: Vec<Endpoint> = (10..13)
        .map(|i| ep(local_pod(i), EndpointState::Active, true))
        .collect();
    let mut svc = web(Protocol::Tcp, &three);
    svc.1.affinity_timeout = Some(3600);
    f.program(&[svc.clone()]);
    let backend_of = |f: &mut Fixture, port: u16, flags| {
        let (_, out) = f.ingress(&tcp(sa(CLIENT, port), sa(NODE, NODE_PORT), flags).build());
        parse(&out).unwrap().endpoints().unwrap().1
    };
    let pinned = backend_of(&mut f, 44000, TcpFlags::SYN);
    assert_eq!(backend_of(&mut f, 44001, TcpFlags::SYN), pinned);

    svc.1.endpoints = three
        .iter()
        .map(|e| Endpoint {
            state: if sa(e.addr, 8080) == pinned {
                EndpointState::NotReady
            } else {
                EndpointState::Active
            },
            ..*e
        })
        .collect();
    let report = f.program(&[svc.clone()]);
    assert_eq!(report.purged_affinity, 1);
    assert_eq!(report.purged_conntrack, 0);
    let moved = backend_of(&mut f, 44002, TcpFlags::SYN);
    assert_ne!(moved, pinned, "a new connection is not pinned to it");
    for port in 44003..44010 {
        assert_eq!(
            backend_of(&mut f, port, TcpFlags::SYN),
            moved,
            "the client sticks to its new backend"
        );
    }
    assert_eq!(
        backend_of(&mut f, 44000, TcpFlags::ACK),
        pinned,
        "the established flow stays"
    );
}

/// A rolling update replaces many backends in one sync: their flows are purged with one
/// walk of each map (`ServiceMaps::purge_backends`), and exactly theirs: the flows of
/// the backend that stays, and of a backend that only went not-ready (TCP), are kept.
#[test]
fn backends_leaving_in_one_sync_are_purged_together_and_only_they() {
    let mut f = fixture();
    let pods: Vec<Endpoint> = (10..14)
        .map(|i| ep(local_pod(i), EndpointState::Active, true))
        .collect();
    f.program(&[web(Protocol::Tcp, &pods)]);
    // Flows until every backend carries at least one.
    let mut by_backend: std::collections::BTreeMap<SocketAddrV4, Vec<SocketAddrV4>> =
        Default::default();
    let mut port = 45000;
    while by_backend.len() < pods.len() || by_backend.values().any(|c| c.is_empty()) {
        let client = sa(CLIENT, port);
        let (_, out) = f.ingress(&tcp(client, sa(NODE, NODE_PORT), TcpFlags::SYN).build());
        by_backend
            .entry(parse(&out).unwrap().endpoints().unwrap().1)
            .or_default()
            .push(client);
        port += 1;
        assert!(port < 46000, "random choice never reached every backend");
    }
    let entries_of = |f: &Fixture, addr: Ipv4Addr| {
        let be = u32::from(addr).to_be();
        let ids: Vec<u32> = f
            .maps
            .conntrack_entries()
            .unwrap()
            .iter()
            .filter(|(k, v)| k.dir == ct_dir::FORWARD && v.daddr == be)
            .map(|(_, v)| v.backend_id)
            .collect();
        f.maps
            .conntrack_entries()
            .unwrap()
            .iter()
            .filter(|(_, v)| ids.contains(&v.backend_id))
            .count()
    };
    let gone_entries = entries_of(&f, local_pod(10)) + entries_of(&f, local_pod(11));
    let kept_12 = entries_of(&f, local_pod(12));
    let kept_13 = entries_of(&f, local_pod(13));
    // 10 and 11 leave, 12 goes not-ready, 13 stays.
    let report = f.program(&[web(
        Protocol::Tcp,
        &[
            ep(local_pod(12), EndpointState::NotReady, true),
            ep(local_pod(13), EndpointState::Active, true),
        ],
    )]);
    assert_eq!(report.purged_conntrack, gone_entries);
    assert_eq!(entries_of(&f, local_pod(10)), 0);
    assert_eq!(entries_of(&f, local_pod(11)), 0);
    assert_eq!(entries_of(&f, local_pod(12)), kept_12);
    assert_eq!(entries_of(&f, local_pod(13)), kept_13);
    for (backend, clients) in &by_backend {
        if backend.ip() == &local_pod(12) || backend.ip() == &local_pod(13) {
            for c in clients {
                let (_, out) = f.ingress(&tcp(*c, sa(NODE, NODE_PORT), TcpFlags::ACK).build());
                assert_eq!(parse(&out).unwrap().endpoints().unwrap().1, *backend);
            }
        }
    }
}
