//! The server over real loopback sockets (unprivileged; nothing leaves 127.0.0.1): answer
//! codes before and after the first sync, UDP truncation and the TCP retry, forwarding
//! (relayed answers, an ExternalName CNAME chased upstream, a dead upstream → SERVFAIL).

use std::{net::SocketAddr, time::Duration};

use hickory_proto::{
    op::{Edns, Message, Query, ResponseCode},
    rr::{Name, RData, RecordType},
};
use k8s_openapi::api::{core::v1::Service, discovery::v1::EndpointSlice};
use serde_json::json;
use skiff_dns::{Config, DnsServer, Forwarder, Zone, ZoneHandle};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{TcpStream, UdpSocket},
};

async fn ask_with(server: SocketAddr, name: &str, t: RecordType, tcp: bool, edns: bool) -> Message {
    let mut m = Message::query();
    m.metadata.id = 4242;
    m.metadata.recursion_desired = true;
    m.add_query(Query::query(Name::from_ascii(name).unwrap(), t));
    if edns {
        let mut e = Edns::new();
        e.set_max_payload(1232);
        m.set_edns(e);
    }
    let bytes = m.to_vec().unwrap();
    let fut = async {
        if tcp {
            let mut s = TcpStream::connect(server).await.unwrap();
            let mut framed = (bytes.len() as u16).to_be_bytes().to_vec();
            framed.extend_from_slice(&bytes);
            s.write_all(&framed).await.unwrap();
            let n = s.read_u16().await.unwrap() as usize;
            let mut buf = vec![0; n];
            s.read_exact(&mut buf).await.unwrap();
            buf
        } else {
            let s = UdpSocket::bind("127.0.0.1:0").await.unwrap();
            s.send_to(&bytes, server).await.unwrap();
            let mut buf = vec![0; 65535];
            let (n, _) = s.recv_from(&mut buf).await.unwrap();
            buf.truncate(n);
            buf
        }
    };
    let buf = tokio::time::timeout(Duration::from_secs(5), fut)
        .await
        .expect("an answer within 5 s");
    let r = Message::from_vec(&buf).unwrap();
    assert_eq!(r.metadata.id, 4242);
    r
}

async fn ask(server: SocketAddr, name: &str, t: RecordType) -> Message {
    ask_with(server, name, t, false, false).await
}

fn svc(v: serde_json::Value) -> Service {
    serde_json::from_value(v).unwrap()
}

async fn start(domain: &str, zone: ZoneHandle, upstreams: Vec<SocketAddr>) -> SocketAddr {
    let mut forwarder = Forwarder::new(upstreams);
    forwarder.timeout = Duration::from_millis(300);
    let s = DnsServer::bind(
        "127.0.0.1:0".parse().unwrap(),
        zone,
        Config {
            domain: domain.into(),
            forwarder,
        },
    )
    .await
    .unwrap();
    assert_eq!(s.udp_addr, s.tcp_addr);
    let addr = s.udp_addr;
    tokio::spawn(s.run());
    addr
}

#[tokio::test]
async fn zone_answers_truncation_and_forwarding() {
    // The upstream: another zone on its own port.
    let up_zone = ZoneHandle::new();
    up_zone.set(Zone::build(
        "example.test",
        &[svc(json!({"metadata": {"namespace": "n", "name": "www"},
            "spec": {"clusterIP": "192.0.2.80"}}))],
        &[],
        1,
    ));
    let upstream = start("example.test", up_zone, vec![]).await;

    let zone = ZoneHandle::new();
    let server = start("cluster.local", zone.clone(), vec![upstream]).await;

    // Before the first complete sync: SERVFAIL inside the zone, never NXDOMAIN.
    let m = ask(server, "web.default.svc.cluster.local.", RecordType::A).await;
    assert_eq!(m.metadata.response_code, ResponseCode::ServFail);

    let many: Vec<serde_json::Value> = (0..200)
        .map(|i| json!({"addresses": [format!("10.42.{}.{}", i / 250, i % 250 + 1)]}))
        .collect();
    let big: EndpointSlice = serde_json::from_value(json!({
        "metadata": {"namespace": "default", "name": "big-1",
            "labels": {"kubernetes.io/service-name": "big"}},
        "addressType": "IPv4", "endpoints": many}))
    .unwrap();
    zone.set(Zone::build(
        "cluster.local",
        &[
            svc(json!({"metadata": {"namespace": "default", "name": "web"},
                "spec": {"clusterIP": "10.43.0.20"}})),
            svc(json!({"metadata": {"namespace": "default", "name": "big"},
                "spec": {"clusterIP": "None"}})),
            svc(
                json!({"metadata": {"namespace": "default", "name": "alias"},
                "spec": {"type": "ExternalName", "externalName": "www.n.svc.example.test"}}),
            ),
        ],
        &[big],
        2,
    ));
    let m = ask(server, "web.default.svc.cluster.local.", RecordType::A).await;
    assert_eq!(m.metadata.response_code, ResponseCode::NoError);
    assert!(m.metadata.authoritative && m.metadata.recursion_available);
    assert_eq!(m.answers.len(), 1);
    let m = ask(server, "soa.cluster.local.", RecordType::A).await;
    assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
    match &m.authorities[..] {
        [r] => match &r.data {
            RData::SOA(soa) => {
                assert_eq!(soa.serial, 2);
                assert_eq!(soa.minimum, 5);
            }
            other => panic!("{other:?}"),
        },
        other => panic!("{other:?}"),
    }

    // 200 A records do not fit 512 bytes (no EDNS) or 1232 (EDNS): TC, no records; TCP
    // gets them all.
    for edns in [false, true] {
        let m = ask_with(
            server,
            "big.default.svc.cluster.local.",
            RecordType::A,
            false,
            edns,
        )
        .await;
        assert!(m.metadata.truncation, "edns {edns}");
        assert!(m.answers.is_empty());
        assert_eq!(m.edns.is_some(), edns);
    }
    let m = ask_with(
        server,
        "big.default.svc.cluster.local.",
        RecordType::A,
        true,
        false,
    )
    .await;
    assert!(!m.metadata.truncation);
    assert_eq!(m.answers.len(), 200);

    // Forwarded: relayed as the upstream answered, not authoritative.
    let m = ask(server, "www.n.svc.example.test.", RecordType::A).await;
    assert_eq!(m.metadata.response_code, ResponseCode::NoError);
    assert!(!m.metadata.authoritative);
    assert_eq!(m.answers.len(), 1);
    // ExternalName: the CNAME, then the target's records from upstream.
    let m = ask(server, "alias.default.svc.cluster.local.", RecordType::A).await;
    let kinds: Vec<RecordType> = m.answers.iter().map(|r| r.record_type()).collect();
    assert_eq!(kinds, [RecordType::CNAME, RecordType::A], "{m:?}");

    // A dead upstream (a bound socket that never answers): SERVFAIL after the timeout.
    let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let lonely = start("cluster.local", zone, vec![silent.local_addr().unwrap()]).await;
    let m = ask(lonely, "www.n.svc.example.test.", RecordType::A).await;
    assert_eq!(m.metadata.response_code, ResponseCode::ServFail);
}
