//! Packet tables for the tc ingress skeleton, run through BPF_PROG_TEST_RUN against the
//! production object: every row checks the verdict, that the packet leaves untouched, and
//! that exactly the expected counter moved (by one packet and the frame's length).

use std::net::{Ipv4Addr, SocketAddrV4};

use skiff_datapath_abi::{program_names::TC_INGRESS, DropReason, PacketClass};
use skiff_tests::{
    packet::{
        ethernet_frame, fix_ipv4_checksum, l4_offset, set_ipv4_total_len, verify_checksums, Packet,
        TcpFlags, ETH_HLEN,
    },
    prog_run::{ProgRunner, TcAction},
};

fn sa(s: &str) -> SocketAddrV4 {
    s.parse().expect("socket address")
}
fn client() -> SocketAddrV4 {
    sa("198.18.0.1:40000")
}
fn node() -> SocketAddrV4 {
    sa("198.18.0.2:80")
}
fn ip(s: &str) -> Ipv4Addr {
    s.parse().expect("ip")
}

enum Expect {
    Pass(PacketClass),
    Drop(DropReason),
}

struct Row {
    name: &'static str,
    frame: Vec<u8>,
    expect: Expect,
}

fn tcp_syn() -> Vec<u8> {
    Packet::tcp(client(), node(), TcpFlags::SYN).build()
}
fn udp(payload: &[u8]) -> Vec<u8> {
    Packet::udp(client(), node()).payload(payload).build()
}

fn rows() -> Vec<Row> {
    use Expect::*;
    let mut v = vec![
        Row {
            name: "valid TCP SYN",
            frame: tcp_syn(),
            expect: Pass(PacketClass::Ipv4Tcp),
        },
        Row {
            name: "valid TCP with options and payload",
            frame: Packet::tcp(client(), node(), TcpFlags::ACK)
                .tcp_options_len(12)
                .payload(b"GET / HTTP/1.1\r\n\r\n")
                .build(),
            expect: Pass(PacketClass::Ipv4Tcp),
        },
        Row {
            name: "valid UDP",
            frame: udp(b"hello"),
            expect: Pass(PacketClass::Ipv4Udp),
        },
        Row {
            name: "valid UDP, empty payload",
            frame: udp(b""),
            expect: Pass(PacketClass::Ipv4Udp),
        },
        Row {
            name: "ICMP echo",
            frame: Packet::icmp_echo(ip("198.18.0.1"), ip("198.18.0.2"), 1, 1)
                .payload(b"x")
                .build(),
            expect: Pass(PacketClass::Ipv4Icmp),
        },
        Row {
            name: "GRE is another protocol",
            frame: Packet::ip_raw(ip("198.18.0.1"), ip("198.18.0.2"), 47)
                .payload(&[0; 8])
                .build(),
            expect: Pass(PacketClass::Ipv4Other),
        },
        Row {
            name: "IPv4 options (router alert) + TCP",
            frame: Packet::tcp(client(), node(), TcpFlags::SYN)
                .ipv4_options(&[0x94, 0x04, 0, 0])
                .build(),
            expect: Pass(PacketClass::Ipv4Tcp),
        },
        Row {
            name: "IPv4 maximal options (40 bytes) + UDP",
            frame: Packet::udp(client(), node())
                .ipv4_options(&[1; 40])
                .payload(b"q")
                .build(),
            expect: Pass(PacketClass::Ipv4Udp),
        },
        Row {
            name: "ARP is not IPv4",
            frame: ethernet_frame(0x0806, &[0; 28]),
            expect: Pass(PacketClass::NonIpv4),
        },
        Row {
            name: "IPv6 is not IPv4",
            frame: ethernet_frame(0x86dd, &[0x60; 40]),
            expect: Pass(PacketClass::NonIpv4),
        },
        // Not here: IPv4 frames with fewer than 20 bytes after the Ethernet header.
        // BPF_PROG_TEST_RUN refuses them with EINVAL before the program runs (measured on
        // 6.18: 1..19 bytes fail, 20 pass), so `ShortIpv4Header` is covered by the netns
        // test, which sends such a frame over a real veth with an AF_PACKET socket.
    ];

    let mut f = tcp_syn();
    f[ETH_HLEN] = 0x65; // version 6, IHL 5
    fix_ipv4_checksum(&mut f);
    v.push(Row {
        name: "version 6 under EtherType IPv4",
        frame: f,
        expect: Drop(DropReason::BadIpv4Version),
    });

    let mut f = tcp_syn();
    f[ETH_HLEN] = 0x44; // IHL 4 (16 bytes) is below the minimum
    v.push(Row {
        name: "IHL below 5",
        frame: f,
        expect: Drop(DropReason::BadIpv4HeaderLength),
    });

    let mut f = udp(b"");
    f[ETH_HLEN] = 0x4f; // IHL 15 = 60 bytes, more than the frame holds
    v.push(Row {
        name: "IHL past the end of the frame",
        frame: f,
        expect: Drop(DropReason::BadIpv4HeaderLength),
    });

    let mut f = tcp_syn();
    let len = (f.len() - ETH_HLEN + 100) as u16;
    set_ipv4_total_len(&mut f, len);
    v.push(Row {
        name: "total length beyond the frame",
        frame: f,
        expect: Drop(DropReason::BadIpv4TotalLength),
    });

    let mut f = tcp_syn();
    set_ipv4_total_len(&mut f, 12);
    v.push(Row {
        name: "total length below the header",
        frame: f,
        expect: Drop(DropReason::BadIpv4TotalLength),
    });

    let mut f = tcp_syn();
    f.truncate(ETH_HLEN + 20 + 10);
    set_ipv4_total_len(&mut f, 30);
    v.push(Row {
        name: "TCP header truncated at 10 bytes",
        frame: f,
        expect: Drop(DropReason::ShortTcpHeader),
    });

    let mut f = tcp_syn();
    let off = l4_offset(&f);
    f[off + 12] = 0x30; // data offset 3 words
    v.push(Row {
        name: "TCP data offset below 5",
        frame: f,
        expect: Drop(DropReason::BadTcpDataOffset),
    });

    let mut f = tcp_syn();
    let off = l4_offset(&f);
    f[off + 12] = 0xf0; // data offset 15 words = 60 bytes, only 20 present
    v.push(Row {
        name: "TCP data offset past the packet",
        frame: f,
        expect: Drop(DropReason::BadTcpDataOffset),
    });

    let mut f = udp(b"");
    f.truncate(ETH_HLEN + 20 + 4);
    set_ipv4_total_len(&mut f, 24);
    v.push(Row {
        name: "UDP header truncated at 4 bytes",
        frame: f,
        expect: Drop(DropReason::ShortUdpHeader),
    });

    let mut f = udp(b"abcd");
    let off = l4_offset(&f);
    f[off + 4..off + 6].copy_from_slice(&4u16.to_be_bytes());
    v.push(Row {
        name: "UDP length below 8",
        frame: f,
        expect: Drop(DropReason::BadUdpLength),
    });

    let mut f = udp(b"abcd");
    let off = l4_offset(&f);
    f[off + 4..off + 6].copy_from_slice(&200u16.to_be_bytes());
    v.push(Row {
        name: "UDP length beyond the IP payload",
        frame: f,
        expect: Drop(DropReason::BadUdpLength),
    });

    // A non-first fragment carries no L4 header: even 4 bytes of payload are fine.
    let mut f = Packet::ip_raw(ip("198.18.0.1"), ip("198.18.0.2"), 6)
        .payload(&[1, 2, 3, 4])
        .build();
    f[ETH_HLEN + 6..ETH_HLEN + 8].copy_from_slice(&(100u16).to_be_bytes());
    fix_ipv4_checksum(&mut f);
    v.push(Row {
        name: "non-first fragment",
        frame: f,
        expect: Pass(PacketClass::Ipv4Fragment),
    });

    // A first fragment (MF set, offset 0) has the TCP header and is parsed as TCP.
    let mut f = Packet::tcp(client(), node(), TcpFlags::ACK)
        .payload(&[0; 32])
        .build();
    f[ETH_HLEN + 6] |= 0x20;
    fix_ipv4_checksum(&mut f);
    v.push(Row {
        name: "first fragment with MF",
        frame: f,
        expect: Pass(PacketClass::Ipv4Tcp),
    });

    // Ethernet pads short frames to 60 bytes; the trailer after the IP packet is legal.
    let mut f = udp(b"");
    f.resize(60, 0);
    v.push(Row {
        name: "UDP with Ethernet padding",
        frame: f,
        expect: Pass(PacketClass::Ipv4Udp),
    });
    v
}

#[test]
fn tc_ingress_skeleton_packet_table() {
    let mut runner = ProgRunner::new();
    let mut failures = Vec::new();
    let rows = rows();
    for row in &rows {
        let r = runner.run(TC_INGRESS, &row.frame);
        let mut problems = Vec::new();
        if r.packet_out != row.frame {
            problems.push("program modified the packet".to_owned());
        }
        match row.expect {
            Expect::Pass(class) => {
                if r.action != TcAction::Ok {
                    problems.push(format!("verdict {:?}, want Ok", r.action));
                }
                let want = vec![(
                    class,
                    skiff_datapath_abi::TrafficCounter {
                        packets: 1,
                        bytes: row.frame.len() as u64,
                    },
                )];
                if r.class_deltas != want || !r.drop_deltas.is_empty() {
                    problems.push(format!(
                        "counters moved {:?} / drops {:?}, want {want:?} and no drops",
                        r.class_deltas, r.drop_deltas
                    ));
                }
                if let Err(e) = verify_checksums(&r.packet_out) {
                    problems.push(format!("output checksum: {e}"));
                }
            }
            Expect::Drop(reason) => {
                if r.action != TcAction::Shot {
                    problems.push(format!("verdict {:?}, want Shot", r.action));
                }
                if r.drop_deltas != vec![(reason, 1)] || !r.class_deltas.is_empty() {
                    problems.push(format!(
                        "drops moved {:?} / classes {:?}, want exactly {reason:?} +1",
                        r.drop_deltas, r.class_deltas
                    ));
                }
            }
        }
        println!(
            "prog-run {:<45} {:?} in {:?}",
            row.name, r.action, r.duration
        );
        if !problems.is_empty() {
            failures.push(format!("{}: {}", row.name, problems.join("; ")));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} rows failed:\n{}",
        failures.len(),
        rows.len(),
        failures.join("\n")
    );
}

#[test]
fn every_abi_map_and_program_is_in_the_object() {
    let runner = ProgRunner::new();
    let counters = runner.counters();
    assert_eq!(counters.classes.len(), PacketClass::COUNT as usize);
    assert_eq!(counters.drops.len(), DropReason::COUNT as usize);
    assert_eq!(counters.total_packets(), 0, "a fresh load starts at zero");
    // The ABI's list of maps is exactly the object's: a map missing from the list would
    // silently escape pinning and the restart guarantees.
    let (maps, programs) = runner.inventory();
    let mut abi: Vec<String> = skiff_datapath_abi::map_names::ALL
        .iter()
        .map(|m| (*m).to_owned())
        .collect();
    abi.sort();
    assert_eq!(maps, abi);
    for p in [
        skiff_datapath_abi::program_names::TC_INGRESS,
        skiff_datapath_abi::program_names::TC_EGRESS,
    ]
    .iter()
    .chain(skiff_datapath_abi::program_names::SOCK_LB)
    {
        assert!(
            programs.iter().any(|x| x == p),
            "program {p} missing from the object"
        );
    }
    assert!(programs
        .iter()
        .any(|x| x == skiff_datapath_abi::program_names::SOCK_POST_BIND4));
    assert!(programs
        .iter()
        .any(|x| x == skiff_datapath_abi::program_names::XDP));
    assert_eq!(
        programs.len(),
        4 + skiff_datapath_abi::program_names::SOCK_LB.len()
    );
}

#[test]
fn repeated_runs_accumulate_per_cpu_counters() {
    let mut runner = ProgRunner::new();
    let frame = udp(b"0123456789");
    let r = runner.run_repeat(TC_INGRESS, &frame, 1000);
    assert_eq!(r.action, TcAction::Ok);
    assert_eq!(
        r.class_deltas,
        vec![(
            PacketClass::Ipv4Udp,
            skiff_datapath_abi::TrafficCounter {
                packets: 1000,
                bytes: 1000 * frame.len() as u64
            }
        )]
    );
}
