//! Forwarding names outside the cluster zone to the node's resolvers (CoreDNS'
//! `forward . /etc/resolv.conf`), the way a stub resolver asks them: UDP first, TCP when
//! the answer is truncated, each server in resolv.conf order with a timeout, a fresh
//! random ID per upstream query and the answer checked against it and the question (a
//! spoofed or stray datagram is ignored, not relayed).

use std::{
    net::{IpAddr, SocketAddr},
    time::Duration,
};

use hickory_proto::op::{Message, Query};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{TcpStream, UdpSocket},
    time::timeout,
};

/// The `nameserver` addresses of a resolv.conf(5) text, in order. Lines that do not parse
/// are skipped (glibc does the same); IPv6 zone indexes (`fe80::1%eth0`) are not supported
/// and skipped.
pub fn parse_resolv_conf(text: &str) -> Vec<IpAddr> {
    text.lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            (w.next()? == "nameserver").then_some(())?;
            w.next()?.parse().ok()
        })
        .collect()
}

/// Where and how names outside the zone are forwarded.
#[derive(Debug, Clone)]
pub struct Forwarder {
    /// Upstream servers, port 53 unless a test says otherwise.
    pub servers: Vec<SocketAddr>,
    /// How long one server gets to answer one attempt (glibc's default is 5 s; CoreDNS'
    /// forward plugin dials with 2 s). The client's own timeout is usually 5 s, so two
    /// servers still fit.
    pub timeout: Duration,
}

/// Why a forwarded query got no answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ForwardError {
    NoUpstream,
    /// Every server failed; one reason per server.
    Failed(Vec<String>),
}

impl std::fmt::Display for ForwardError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ForwardError::NoUpstream => write!(f, "no upstream nameserver configured"),
            ForwardError::Failed(r) => write!(f, "{}", r.join("; ")),
        }
    }
}

fn random_id() -> u16 {
    // The std hasher is randomly keyed per process; mixing in a counter and the clock
    // gives an unpredictable ID without another dependency.
    use std::hash::{BuildHasher as _, Hasher as _};
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed));
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos(),
    );
    h.finish() as u16
}

fn matches(resp: &Message, id: u16, query: &Query) -> bool {
    resp.metadata.id == id
        && resp.queries.len() == 1
        && resp.queries[0].query_type() == query.query_type()
        && resp.queries[0].query_class() == query.query_class()
        && resp.queries[0].name().to_lowercase() == query.name().to_lowercase()
}

impl Forwarder {
    pub fn new(servers: Vec<SocketAddr>) -> Forwarder {
        Forwarder {
            servers,
            timeout: Duration::from_secs(2),
        }
    }

    /// Forwards `query` (recursion desired) and returns the first server's answer.
    pub async fn forward(&self, query: &Query) -> Result<Message, ForwardError> {
        if self.servers.is_empty() {
            return Err(ForwardError::NoUpstream);
        }
        let mut reasons = Vec::new();
        for &server in &self.servers {
            match self.ask(server, query).await {
                Ok(m) => return Ok(m),
                Err(e) => reasons.push(format!("{server}: {e}")),
            }
        }
        Err(ForwardError::Failed(reasons))
    }

    async fn ask(&self, server: SocketAddr, query: &Query) -> Result<Message, String> {
        let id = random_id();
        let mut msg = Message::query();
        msg.metadata.id = id;
        msg.metadata.recursion_desired = true;
        msg.add_query(query.clone());
        let bytes = msg.to_vec().map_err(|e| format!("encoding: {e}"))?;
        let resp = timeout(self.timeout, self.udp(server, &bytes, id, query))
            .await
            .map_err(|_| format!("no answer over UDP in {:?}", self.timeout))??;
        if !resp.metadata.truncation {
            return Ok(resp);
        }
        timeout(self.timeout, self.tcp(server, &bytes, id, query))
            .await
            .map_err(|_| format!("no answer over TCP in {:?}", self.timeout))?
    }

    async fn udp(
        &self,
        server: SocketAddr,
        bytes: &[u8],
        id: u16,
        query: &Query,
    ) -> Result<Message, String> {
        let local: SocketAddr = if server.is_ipv4() {
            "0.0.0.0:0".parse().expect("literal")
        } else {
            "[::]:0".parse().expect("literal")
        };
        let sock = UdpSocket::bind(local)
            .await
            .map_err(|e| format!("binding a UDP socket: {e}"))?;
        // Connected: the kernel drops datagrams from any other address.
        sock.connect(server)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        sock.send(bytes).await.map_err(|e| format!("send: {e}"))?;
        let mut buf = vec![0u8; 65535];
        loop {
            let n = sock
                .recv(&mut buf)
                .await
                .map_err(|e| format!("recv: {e}"))?;
            match Message::from_vec(&buf[..n]) {
                Ok(m) if matches(&m, id, query) => return Ok(m),
                // Not our answer (late, spoofed, garbage): keep waiting until the timeout.
                _ => continue,
            }
        }
    }

    async fn tcp(
        &self,
        server: SocketAddr,
        bytes: &[u8],
        id: u16,
        query: &Query,
    ) -> Result<Message, String> {
        let mut s = TcpStream::connect(server)
            .await
            .map_err(|e| format!("TCP connect: {e}"))?;
        let len = u16::try_from(bytes.len()).map_err(|_| "query too long".to_string())?;
        let mut framed = len.to_be_bytes().to_vec();
        framed.extend_from_slice(bytes);
        s.write_all(&framed)
            .await
            .map_err(|e| format!("TCP write: {e}"))?;
        let n = s.read_u16().await.map_err(|e| format!("TCP read: {e}"))? as usize;
        let mut buf = vec![0u8; n];
        s.read_exact(&mut buf)
            .await
            .map_err(|e| format!("TCP read: {e}"))?;
        let m = Message::from_vec(&buf).map_err(|e| format!("TCP answer: {e}"))?;
        if !matches(&m, id, query) {
            return Err("TCP answer does not match the query".into());
        }
        Ok(m)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolv_conf_nameservers_in_order() {
        let text = "# generated\nsearch example.org\nnameserver 192.0.2.1\nnameserver  ::1 \n\
                    nameserver fe80::1%eth0\nnameserver bogus\noptions ndots:2\nnameserver 192.0.2.2\n";
        let got = parse_resolv_conf(text);
        assert_eq!(
            got,
            ["192.0.2.1", "::1", "192.0.2.2"]
                .map(|s| s.parse::<IpAddr>().unwrap())
                .to_vec()
        );
    }

    #[tokio::test]
    async fn a_silent_upstream_times_out_and_the_next_one_answers() {
        // Two loopback UDP sockets the test owns: the first never answers, the second
        // answers correctly after sending a stray datagram with the wrong ID first.
        let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let good = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let good_addr = good.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            let (n, from) = good.recv_from(&mut buf).await.unwrap();
            let q = Message::from_vec(&buf[..n]).unwrap();
            let mut stray = q.clone().into_response();
            stray.metadata.id = q.metadata.id.wrapping_add(1);
            good.send_to(&stray.to_vec().unwrap(), from).await.unwrap();
            let mut r = q.into_response();
            r.add_answer(hickory_proto::rr::Record::from_rdata(
                r.queries[0].name().clone(),
                30,
                hickory_proto::rr::RData::A(hickory_proto::rr::rdata::A::new(192, 0, 2, 9)),
            ));
            good.send_to(&r.to_vec().unwrap(), from).await.unwrap();
        });
        let mut f = Forwarder::new(vec![silent.local_addr().unwrap(), good_addr]);
        f.timeout = Duration::from_millis(300);
        let q = Query::query(
            hickory_proto::rr::Name::from_ascii("example.test.").unwrap(),
            hickory_proto::rr::RecordType::A,
        );
        let m = f.forward(&q).await.unwrap();
        assert_eq!(m.answers.len(), 1);
        server.await.unwrap();

        let f = Forwarder {
            servers: vec![silent.local_addr().unwrap()],
            timeout: Duration::from_millis(100),
        };
        match f.forward(&q).await {
            Err(ForwardError::Failed(r)) => assert!(r[0].contains("no answer"), "{r:?}"),
            other => panic!("expected a timeout, got {other:?}"),
        }
        assert_eq!(
            Forwarder::new(vec![]).forward(&q).await.unwrap_err(),
            ForwardError::NoUpstream
        );
    }
}
