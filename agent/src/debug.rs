//! The debug commands' text output, from plain snapshots (no aya here): what a user reads
//! when asking "which backend would this flow hit, and why".

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    net::{Ipv4Addr, SocketAddrV4},
};

use skiff_datapath_abi::{
    backend_flags, ct_dir, ct_flags, proto, service_flags, CtKey, CtValue, LbCounter, ServiceKey,
    SlotKey,
};

use crate::lbmap::Snapshot;

fn ip(a: u32) -> Ipv4Addr {
    Ipv4Addr::from(u32::from_be(a))
}

fn proto_name(p: u8) -> &'static str {
    match p {
        proto::TCP => "TCP",
        proto::UDP => "UDP",
        proto::SCTP => "SCTP",
        _ => "?",
    }
}

fn kinds(flags: u32) -> String {
    let mut k = Vec::new();
    for (bit, name) in [
        (service_flags::CLUSTER_IP, "ClusterIP"),
        (service_flags::NODE_PORT, "NodePort"),
        (service_flags::LOAD_BALANCER, "LoadBalancer"),
        (service_flags::EXTERNAL_IP, "ExternalIP"),
    ] {
        if flags & bit != 0 {
            k.push(name);
        }
    }
    k.join(",")
}

/// `lb list`: every frontend with its backends in slot order and their counters, then
/// the not-ready backends (see [`lb_list_with_flows`]), without their flows.
pub fn lb_list(
    s: &Snapshot,
    service_counters: &BTreeMap<u32, LbCounter>,
    backend_counters: &BTreeMap<u32, LbCounter>,
) -> String {
    lb_list_with_flows(s, service_counters, backend_counters, &[])
}

/// [`lb_list`], with each not-ready backend's established flows counted per service
/// from `conntrack` (forward entries). A not-ready endpoint keeps its backend entry,
/// flagged TERMINATING, and loses its slots (`reconcile`): no frontend lists it, and the
/// backend map does not say whose it is, so its live flows are what names its services.
pub fn lb_list_with_flows(
    s: &Snapshot,
    service_counters: &BTreeMap<u32, LbCounter>,
    backend_counters: &BTreeMap<u32, LbCounter>,
    conntrack: &[(CtKey, CtValue)],
) -> String {
    let mut out = String::new();
    for (k, v) in &s.services {
        let c = service_counters
            .get(&v.service_id)
            .copied()
            .unwrap_or_default();
        let _ = writeln!(
            out,
            "{}:{}/{} {} service={} active={} terminating={} new_flows={} packets={} bytes={}",
            ip(k.addr),
            u16::from_be(k.port),
            proto_name(k.proto),
            kinds(v.flags),
            v.service_id,
            v.active,
            v.terminating,
            c.new_flows,
            c.packets,
            c.bytes
        );
        if let Some(o) = s.options.get(&v.service_id) {
            if o.affinity_timeout_s > 0 {
                let _ = writeln!(
                    out,
                    "  session affinity: ClientIP, {}s",
                    o.affinity_timeout_s
                );
            }
            if o.maglev_table > 0 {
                let _ = writeln!(
                    out,
                    "  maglev: table {} ({} KiB)",
                    o.maglev_table - 1,
                    (skiff_datapath_abi::maglev::TABLE_SIZE * 4).div_ceil(1024)
                );
            }
        }
        if v.active == 0 && v.terminating == 0 {
            let _ = writeln!(out, "  (no usable backend: new flows are refused)");
        }
        for slot in 0..u32::from(v.active) + u32::from(v.terminating) {
            let key = SlotKey {
                service_id: v.service_id,
                slot,
            };
            let Some(id) = s.slots.get(&key) else {
                let _ = writeln!(out, "  slot {slot}: MISSING (maps inconsistent)");
                continue;
            };
            match s.backends.get(id) {
                Some(b) => {
                    let c = backend_counters.get(id).copied().unwrap_or_default();
                    let state = if b.flags & backend_flags::TERMINATING != 0 {
                        "terminating"
                    } else {
                        "active"
                    };
                    let place = if b.flags & backend_flags::LOCAL != 0 {
                        "local"
                    } else {
                        "remote"
                    };
                    let _ = writeln!(
                        out,
                        "  -> {}:{} backend={} {state} {place} new_flows={} packets={} bytes={}",
                        ip(b.addr),
                        u16::from_be(b.port),
                        id,
                        c.new_flows,
                        c.packets,
                        c.bytes
                    );
                }
                None => {
                    let _ = writeln!(
                        out,
                        "  slot {slot}: backend {id} MISSING (maps inconsistent)"
                    );
                }
            }
        }
    }
    if s.services.is_empty() {
        out.push_str("no service frontends programmed\n");
    }
    not_ready(&mut out, s, backend_counters, conntrack);
    let tables = s.options.values().filter(|o| o.maglev_table > 0).count() as u32;
    if tables > 0 {
        let _ = writeln!(
            out,
            "maglev tables in use: {tables} ({} KiB)",
            tables * (skiff_datapath_abi::maglev::TABLE_SIZE * 4).div_ceil(1024)
        );
    }
    out
}

/// The backends no slot names: not-ready endpoints (TERMINATING flag), which keep their
/// established flows and take no new ones; any other is about to be collected.
fn not_ready(
    out: &mut String,
    s: &Snapshot,
    backend_counters: &BTreeMap<u32, LbCounter>,
    conntrack: &[(CtKey, CtValue)],
) {
    let slotted: std::collections::BTreeSet<u32> = s.slots.values().copied().collect();
    let idle: Vec<(&u32, &skiff_datapath_abi::Backend)> = s
        .backends
        .iter()
        .filter(|(id, _)| !slotted.contains(id))
        .collect();
    if idle.is_empty() {
        return;
    }
    let _ = writeln!(
        out,
        "backends named by no slot ({}): kept for their established flows, no new flow picks them",
        idle.len()
    );
    for (id, b) in idle {
        let c = backend_counters.get(id).copied().unwrap_or_default();
        let state = if b.flags & backend_flags::TERMINATING != 0 {
            "not-ready"
        } else {
            "unused"
        };
        let place = if b.flags & backend_flags::LOCAL != 0 {
            "local"
        } else {
            "remote"
        };
        let mut flows: BTreeMap<u32, usize> = BTreeMap::new();
        for (k, v) in conntrack {
            if k.dir == ct_dir::FORWARD && v.backend_id == *id {
                *flows.entry(v.service_id).or_default() += 1;
            }
        }
        let flows: Vec<String> = flows
            .iter()
            .map(|(svc, n)| format!("service={svc}:{n}"))
            .collect();
        let _ = writeln!(
            out,
            "  {}:{}/{} backend={id} {state} {place} flows=[{}] new_flows={} packets={} bytes={}",
            ip(b.addr),
            u16::from_be(b.port),
            proto_name(b.proto),
            flows.join(","),
            c.new_flows,
            c.packets,
            c.bytes
        );
    }
}

/// Filters for `ct list`.
#[derive(Debug, Default, Clone)]
pub struct CtFilter {
    pub proto: Option<u8>,
    /// Matches either end of the flow, before or after translation.
    pub addr: Option<Ipv4Addr>,
    pub service_id: Option<u32>,
}

/// `ct list`: one line per entry, forward entries first.
pub fn ct_list(entries: &[(CtKey, CtValue)], filter: &CtFilter, now_ns: u64) -> String {
    let mut rows: Vec<&(CtKey, CtValue)> = entries
        .iter()
        .filter(|(k, v)| {
            filter.proto.is_none_or(|p| p == k.proto)
                && filter.service_id.is_none_or(|s| s == v.service_id)
                && filter.addr.is_none_or(|a| {
                    let a = u32::from(a).to_be();
                    [k.saddr, k.daddr, v.saddr, v.daddr].contains(&a)
                })
        })
        .collect();
    rows.sort_by_key(|(k, _)| (k.dir, *k));
    let mut out = String::new();
    for (k, v) in rows {
        let dir = match k.dir {
            ct_dir::FORWARD => "fwd",
            ct_dir::MASQ => "masq",
            _ => "rev",
        };
        let mut flags = Vec::new();
        for (bit, name) in [
            (ct_flags::SNAT, "snat"),
            (ct_flags::SEEN_REPLY, "seen-reply"),
            (ct_flags::CLOSING, "closing"),
            (ct_flags::MASQ, "masq"),
        ] {
            if v.flags & bit != 0 {
                flags.push(name);
            }
        }
        let age = now_ns.saturating_sub(v.last_seen_ns) / 1_000_000_000;
        let _ = writeln!(
            out,
            "{} {dir} {} -> {} => {} -> {} service={} backend={} [{}] idle={}s",
            proto_name(k.proto),
            SocketAddrV4::new(ip(k.saddr), u16::from_be(k.sport)),
            SocketAddrV4::new(ip(k.daddr), u16::from_be(k.dport)),
            SocketAddrV4::new(ip(v.saddr), u16::from_be(v.sport)),
            SocketAddrV4::new(ip(v.daddr), u16::from_be(v.dport)),
            v.service_id,
            v.backend_id,
            flags.join(","),
            age
        );
    }
    out
}

/// `lb explain`: what the datapath does with the first packet (or connect()) of a flow.
pub fn explain(
    s: &Snapshot,
    existing: Option<CtValue>,
    proto_num: u8,
    src: SocketAddrV4,
    dst: SocketAddrV4,
) -> String {
    if let Some(v) = existing {
        return format!(
            "existing flow (conntrack): {src} -> {dst} is sent to {} as {} (backend {}); it stays there until the backend leaves the service\n",
            SocketAddrV4::new(ip(v.daddr), u16::from_be(v.dport)),
            SocketAddrV4::new(ip(v.saddr), u16::from_be(v.sport)),
            v.backend_id
        );
    }
    let key = ServiceKey {
        addr: u32::from(*dst.ip()).to_be(),
        port: dst.port().to_be(),
        proto: proto_num,
        scope: 0,
    };
    let Some(v) = s.services.get(&key) else {
        return format!(
            "{dst}/{} is not a service frontend: skiff leaves the flow alone\n",
            proto_name(proto_num)
        );
    };
    let (base, count, why) = if v.active > 0 {
        (0, u32::from(v.active), "active backends")
    } else if v.terminating > 0 {
        (
            u32::from(v.active),
            u32::from(v.terminating),
            "terminating-but-serving backends (no active one exists)",
        )
    } else {
        let how = if proto_num == proto::TCP {
            "connect() fails with ECONNREFUSED; from outside, a TCP RST"
        } else {
            "sendmsg()/connect() fail with ECONNREFUSED; from outside, ICMP port unreachable"
        };
        return format!(
            "{dst}/{} ({}) has no usable backend: the flow is refused ({how})\n",
            proto_name(proto_num),
            kinds(v.flags)
        );
    };
    let mut out = format!(
        "{src} -> {dst}/{} ({}, service {}): a new flow picks uniformly at random among {count} {why}:\n",
        proto_name(proto_num),
        kinds(v.flags),
        v.service_id
    );
    for slot in base..base + count {
        let b = s
            .slots
            .get(&SlotKey {
                service_id: v.service_id,
                slot,
            })
            .and_then(|id| s.backends.get(id).map(|b| (id, b)));
        match b {
            Some((id, b)) => {
                let snat = if b.flags & backend_flags::LOCAL == 0
                    || b.addr == u32::from(*src.ip()).to_be()
                {
                    " (remote or hairpin: source NATed to the node on the per-packet path)"
                } else {
                    ""
                };
                let _ = writeln!(
                    out,
                    "  {}:{} (backend {id}){snat}",
                    ip(b.addr),
                    u16::from_be(b.port)
                );
            }
            None => {
                let _ = writeln!(
                    out,
                    "  slot {slot}: missing (maps inconsistent; packets are dropped)"
                );
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use skiff_datapath_abi::{Backend, ServiceValue};

    use super::*;

    fn snapshot() -> Snapshot {
        let mut s = Snapshot::default();
        let key = |a: [u8; 4], p: u16| ServiceKey {
            addr: u32::from(Ipv4Addr::from(a)).to_be(),
            port: p.to_be(),
            proto: proto::TCP,
            scope: 0,
        };
        s.services.insert(
            key([10, 43, 0, 10], 80),
            ServiceValue {
                service_id: 1,
                active: 1,
                terminating: 1,
                flags: service_flags::CLUSTER_IP,
            },
        );
        s.services.insert(
            key([10, 43, 0, 11], 80),
            ServiceValue {
                service_id: 2,
                active: 0,
                terminating: 0,
                flags: service_flags::CLUSTER_IP,
            },
        );
        s.slots.insert(
            SlotKey {
                service_id: 1,
                slot: 0,
            },
            7,
        );
        s.slots.insert(
            SlotKey {
                service_id: 1,
                slot: 1,
            },
            8,
        );
        let be = |a: [u8; 4], flags| Backend {
            addr: u32::from(Ipv4Addr::from(a)).to_be(),
            port: 8080u16.to_be(),
            proto: proto::TCP,
            flags,
        };
        s.backends
            .insert(7, be([10, 42, 0, 4], backend_flags::LOCAL));
        s.backends
            .insert(8, be([10, 42, 1, 4], backend_flags::TERMINATING));
        s
    }

    #[test]
    fn lb_list_shows_backends_states_and_counters() {
        let mut sc = BTreeMap::new();
        sc.insert(
            1,
            LbCounter {
                new_flows: 3,
                packets: 10,
                bytes: 640,
            },
        );
        let mut with_maglev = snapshot();
        with_maglev.options.insert(
            2,
            skiff_datapath_abi::ServiceOptions {
                affinity_timeout_s: 0,
                maglev_table: 1,
            },
        );
        let text = lb_list(&with_maglev, &BTreeMap::new(), &BTreeMap::new());
        assert!(
            text.contains("  maglev: table 0 (64 KiB)\n")
                && text.ends_with("maglev tables in use: 1 (64 KiB)\n"),
            "{text}"
        );
        let text = lb_list(&snapshot(), &sc, &BTreeMap::new());
        assert_eq!(
            text,
            "10.43.0.10:80/TCP ClusterIP service=1 active=1 terminating=1 new_flows=3 packets=10 bytes=640\n\
             \x20 -> 10.42.0.4:8080 backend=7 active local new_flows=0 packets=0 bytes=0\n\
             \x20 -> 10.42.1.4:8080 backend=8 terminating remote new_flows=0 packets=0 bytes=0\n\
             10.43.0.11:80/TCP ClusterIP service=2 active=0 terminating=0 new_flows=0 packets=0 bytes=0\n\
             \x20 (no usable backend: new flows are refused)\n"
        );
    }

    #[test]
    fn lb_list_shows_not_ready_backends_with_their_flows() {
        let mut s = snapshot();
        // 9: a not-ready endpoint of service 1 (TERMINATING, no slot) with one flow.
        s.backends.insert(
            9,
            Backend {
                addr: u32::from(Ipv4Addr::new(10, 42, 2, 4)).to_be(),
                port: 8080u16.to_be(),
                proto: proto::TCP,
                flags: backend_flags::TERMINATING,
            },
        );
        let flow = |dir, backend_id| {
            (
                CtKey {
                    dir,
                    ..Default::default()
                },
                CtValue {
                    backend_id,
                    service_id: 1,
                    ..Default::default()
                },
            )
        };
        // Its forward entry counts; the reverse one and another backend's flow do not.
        let conntrack = [
            flow(ct_dir::FORWARD, 9),
            flow(ct_dir::REPLY, 9),
            flow(ct_dir::FORWARD, 7),
        ];
        let mut bc = BTreeMap::new();
        bc.insert(
            9,
            LbCounter {
                new_flows: 1,
                packets: 4,
                bytes: 256,
            },
        );
        let text = lb_list_with_flows(&s, &BTreeMap::new(), &bc, &conntrack);
        assert!(
            text.ends_with(
                "backends named by no slot (1): kept for their established flows, no new flow picks them\n\
                 \x20 10.42.2.4:8080/TCP backend=9 not-ready remote flows=[service=1:1] new_flows=1 packets=4 bytes=256\n"
            ),
            "{text}"
        );
        // The slotted backends stay under their frontend, not in the section.
        assert!(!text.contains("backend=7 not-ready") && !text.contains("backend=8 not-ready"));
        // Without conntrack (`lb_list`), the backend is listed with no flows.
        let text = lb_list(&s, &BTreeMap::new(), &BTreeMap::new());
        assert!(
            text.contains("  10.42.2.4:8080/TCP backend=9 not-ready remote flows=[] new_flows=0"),
            "{text}"
        );
        // Nothing unslotted: no section.
        assert!(!lb_list(&snapshot(), &BTreeMap::new(), &BTreeMap::new()).contains("no slot"));
    }

    #[test]
    fn explain_says_where_a_flow_goes_and_why() {
        let s = snapshot();
        let src: SocketAddrV4 = "10.42.0.9:40000".parse().unwrap();
        let text = explain(&s, None, proto::TCP, src, "10.43.0.10:80".parse().unwrap());
        assert!(text.contains("among 1 active backends"), "{text}");
        assert!(text.contains("10.42.0.4:8080 (backend 7)"), "{text}");
        assert!(
            !text.contains("10.42.1.4"),
            "terminating backends are not candidates: {text}"
        );
        let text = explain(&s, None, proto::TCP, src, "10.43.0.11:80".parse().unwrap());
        assert!(
            text.contains("refused") && text.contains("ECONNREFUSED"),
            "{text}"
        );
        let text = explain(&s, None, proto::UDP, src, "10.43.0.10:80".parse().unwrap());
        assert!(text.contains("not a service frontend"), "{text}");
        let existing = CtValue {
            saddr: u32::from(*src.ip()).to_be(),
            daddr: u32::from(Ipv4Addr::new(10, 42, 1, 4)).to_be(),
            sport: 40000u16.to_be(),
            dport: 8080u16.to_be(),
            backend_id: 8,
            ..Default::default()
        };
        let text = explain(
            &s,
            Some(existing),
            proto::TCP,
            src,
            "10.43.0.10:80".parse().unwrap(),
        );
        assert!(
            text.contains("existing flow") && text.contains("10.42.1.4:8080"),
            "{text}"
        );
    }
}
