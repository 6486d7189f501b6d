//! The DNS server: hickory-server's UDP and TCP listeners (framing, malformed messages
//! answered FORMERR, per-connection timeouts) with a handler that answers the cluster zone
//! from the current [`Zone`] snapshot and forwards everything else.
//!
//! Answer codes, as CoreDNS gives them: in-zone answers are authoritative; a name in the
//! zone before the first complete sync of the caches is SERVFAIL (not NXDOMAIN: a negative
//! answer would be cached by clients for a Service that exists); an upstream failure is
//! SERVFAIL; opcodes other than QUERY are NOTIMP; a message with other than one question is
//! FORMERR; zone transfers are REFUSED.

use std::{
    net::SocketAddr,
    sync::{Arc, RwLock},
    time::Duration,
};

use hickory_proto::{
    op::{Edns, Header, HeaderCounts, Message, MessageType, Metadata, OpCode, Query, ResponseCode},
    rr::{
        rdata::{A, CNAME, SOA, SRV},
        Name, RData, Record, RecordType,
    },
};
use hickory_server::{
    net::{runtime::Time, xfer::Protocol},
    server::{Request, RequestHandler, ResponseHandler, ResponseInfo},
    zone_handler::MessageResponseBuilder,
    Server,
};

use crate::{
    forward::Forwarder,
    records::{self, Answer, QType, Rdata, Rec, Zone},
};

/// The zone the server answers from, replaced as a whole after every cache change.
#[derive(Clone, Default)]
pub struct ZoneHandle(Arc<RwLock<Option<Arc<Zone>>>>);

impl ZoneHandle {
    pub fn new() -> ZoneHandle {
        ZoneHandle::default()
    }

    /// Publishes a complete zone (the first call makes the server answer the zone).
    pub fn set(&self, zone: Zone) {
        *self.0.write().unwrap_or_else(|p| p.into_inner()) = Some(Arc::new(zone));
    }

    pub fn get(&self) -> Option<Arc<Zone>> {
        self.0.read().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// What the handler needs.
#[derive(Clone)]
pub struct Config {
    /// The cluster domain (`cluster.local`).
    pub domain: String,
    pub forwarder: Forwarder,
}

/// Largest UDP answer we send when the client's EDNS buffer is larger (the DNS flag day
/// 2020 value, which avoids IP fragmentation).
const MAX_UDP_PAYLOAD: u16 = 1232;
/// An idle TCP connection is closed after this long (CoreDNS: 10 s read timeout).
const TCP_IDLE: Duration = Duration::from_secs(10);

struct Handler {
    domain: String,
    zone: ZoneHandle,
    forwarder: Forwarder,
}

/// A running server (dropping it does not stop it; call [`DnsServer::shutdown`]).
pub struct DnsServer {
    server: Server<Handler>,
    pub udp_addr: SocketAddr,
    pub tcp_addr: SocketAddr,
}

impl DnsServer {
    /// Binds UDP and TCP on `addr` (port 0 picks one, the same number for both when it
    /// can) and starts serving on the current tokio runtime.
    pub async fn bind(addr: SocketAddr, zone: ZoneHandle, cfg: Config) -> std::io::Result<Self> {
        let udp = tokio::net::UdpSocket::bind(addr).await?;
        let udp_addr = udp.local_addr()?;
        let tcp =
            tokio::net::TcpListener::bind(SocketAddr::new(addr.ip(), udp_addr.port())).await?;
        let tcp_addr = tcp.local_addr()?;
        let mut server = Server::new(Handler {
            domain: records::normalise(&cfg.domain),
            zone,
            forwarder: cfg.forwarder,
        });
        server.register_socket(udp);
        server.register_listener(tcp, TCP_IDLE, 32);
        Ok(DnsServer {
            server,
            udp_addr,
            tcp_addr,
        })
    }

    /// Runs until the listeners fail (they do not, in practice).
    pub async fn run(mut self) -> Result<(), String> {
        self.server
            .block_until_done()
            .await
            .map_err(|e| e.to_string())
    }

    pub async fn shutdown(mut self) -> Result<(), String> {
        self.server
            .shutdown_gracefully()
            .await
            .map_err(|e| e.to_string())
    }
}

fn qtype(t: RecordType) -> QType {
    match t {
        RecordType::A => QType::A,
        RecordType::SRV => QType::Srv,
        RecordType::CNAME => QType::Cname,
        RecordType::SOA => QType::Soa,
        RecordType::ANY => QType::Any,
        _ => QType::Other,
    }
}

fn fqdn(name: &str) -> Option<Name> {
    Name::from_ascii(format!("{name}.")).ok()
}

fn to_record(r: &Rec) -> Option<Record> {
    let name = fqdn(&r.name)?;
    let data = match &r.data {
        Rdata::A(ip) => RData::A(A(*ip)),
        Rdata::Srv {
            priority,
            weight,
            port,
            target,
        } => RData::SRV(SRV::new(*priority, *weight, *port, fqdn(target)?)),
        Rdata::Cname(t) => RData::CNAME(CNAME(fqdn(t)?)),
    };
    Some(Record::from_rdata(name, records::TTL, data))
}

/// The zone's SOA (CoreDNS' values: `ns.dns.<zone>. hostmaster.<zone>.`, refresh 7200,
/// retry 1800, expire 86400, minimum = the TTL, which bounds negative caching).
fn soa(zone: &Zone) -> Option<Record> {
    let d = zone.domain();
    let rdata = SOA::new(
        fqdn(&format!("ns.dns.{d}"))?,
        fqdn(&format!("hostmaster.{d}"))?,
        zone.serial,
        7200,
        1800,
        86400,
        records::TTL,
    );
    Some(Record::from_rdata(
        fqdn(d)?,
        records::TTL,
        RData::SOA(rdata),
    ))
}

/// The sections of a response before encoding.
#[derive(Default)]
struct Reply {
    code: ResponseCode,
    authoritative: bool,
    answers: Vec<Record>,
    authorities: Vec<Record>,
    additionals: Vec<Record>,
}

impl Reply {
    fn code(code: ResponseCode) -> Reply {
        Reply {
            code,
            ..Reply::default()
        }
    }
}

impl Handler {
    async fn answer(&self, query: &Query) -> Reply {
        let name = records::normalise(&query.name().to_ascii());
        if !records::in_zone(&self.domain, &name) {
            return self.forward(query, vec![]).await;
        }
        if matches!(query.query_type(), RecordType::AXFR | RecordType::IXFR) {
            return Reply::code(ResponseCode::Refused);
        }
        let Some(zone) = self.zone.get() else {
            tracing::debug!(%name, "cluster zone not synced yet: SERVFAIL");
            return Reply::code(ResponseCode::ServFail);
        };
        let mut reply = Reply {
            authoritative: true,
            ..Reply::default()
        };
        let negative = |mut reply: Reply, code| {
            reply.code = code;
            reply.authorities.extend(soa(&zone));
            reply
        };
        match zone.lookup(&name, qtype(query.query_type())) {
            Answer::NotInZone => unreachable!("checked by in_zone above"),
            Answer::NoData => negative(reply, ResponseCode::NoError),
            Answer::NxDomain => negative(reply, ResponseCode::NXDomain),
            Answer::Soa => {
                reply.answers.extend(soa(&zone));
                reply
            }
            Answer::Records {
                answers,
                additionals,
            } => {
                let (Some(answers), Some(additionals)) = (
                    answers.iter().map(to_record).collect::<Option<Vec<_>>>(),
                    additionals
                        .iter()
                        .map(to_record)
                        .collect::<Option<Vec<_>>>(),
                ) else {
                    // An object name that is not a valid DNS name (the API validates them,
                    // so only a foreign API server could send one).
                    tracing::warn!(%name, "a record of the zone is not a valid DNS name");
                    return Reply::code(ResponseCode::ServFail);
                };
                // An ExternalName CNAME pointing outside the zone: resolve the target too,
                // as a recursive server does, unless the CNAME itself was asked for.
                let cname_out = match answers.as_slice() {
                    [r] if query.query_type() != RecordType::CNAME => match &r.data {
                        RData::CNAME(CNAME(t)) => Some(t.clone()),
                        _ => None,
                    },
                    _ => None,
                };
                if let Some(target) = cname_out {
                    let target_name = records::normalise(&target.to_ascii());
                    if !records::in_zone(&self.domain, &target_name) {
                        let mut q = query.clone();
                        q.set_name(target);
                        let mut r = self.forward(&q, answers).await;
                        r.authoritative = false;
                        return r;
                    }
                }
                reply.answers = answers;
                reply.additionals = additionals;
                reply
            }
        }
    }

    /// Forwards `query` upstream; `prefix` (a CNAME chain) goes before the answers.
    async fn forward(&self, query: &Query, prefix: Vec<Record>) -> Reply {
        match self.forwarder.forward(query).await {
            Ok(m) => {
                let mut answers = prefix;
                answers.extend(m.answers);
                Reply {
                    code: m.metadata.response_code,
                    authoritative: false,
                    answers,
                    authorities: m.authorities,
                    additionals: m.additionals,
                }
            }
            Err(e) => {
                tracing::info!(name = %query.name(), qtype = %query.query_type(), "forwarding failed: {e}");
                Reply::code(ResponseCode::ServFail)
            }
        }
    }
}

/// The encoded size of a reply, to decide on truncation before hickory's encoder would
/// turn an oversized UDP answer into SERVFAIL.
fn encoded_len(query: &Query, reply: &Reply, edns: Option<&Edns>) -> usize {
    let mut m = Message::new(0, MessageType::Response, OpCode::Query);
    m.add_query(query.clone());
    m.add_answers(reply.answers.iter().cloned());
    m.add_authorities(reply.authorities.iter().cloned());
    m.add_additionals(reply.additionals.iter().cloned());
    if let Some(e) = edns {
        m.set_edns(e.clone());
    }
    m.to_vec().map(|v| v.len()).unwrap_or(usize::MAX)
}

fn failed(request: &Request) -> ResponseInfo {
    let mut metadata = Metadata::response_from_request(&request.metadata);
    metadata.response_code = ResponseCode::ServFail;
    ResponseInfo::from(Header {
        metadata,
        counts: HeaderCounts::default(),
    })
}

#[async_trait::async_trait]
impl RequestHandler for Handler {
    async fn handle_request<R: ResponseHandler, T: Time>(
        &self,
        request: &Request,
        mut response: R,
    ) -> ResponseInfo {
        let builder = MessageResponseBuilder::from_message_request(request);
        let code = if request.metadata.message_type != MessageType::Query {
            Some(ResponseCode::FormErr)
        } else if request.metadata.op_code != OpCode::Query {
            Some(ResponseCode::NotImp)
        } else if request.queries.queries().len() != 1 {
            Some(ResponseCode::FormErr)
        } else {
            None
        };
        if let Some(code) = code {
            return response
                .send_response(builder.error_msg(&request.metadata, code))
                .await
                .unwrap_or_else(|_| failed(request));
        }
        let query = request.queries.queries()[0].original().clone();
        let mut reply = self.answer(&query).await;

        // EDNS: answer with our own OPT when the client sent one (RFC 6891).
        let resp_edns = request.edns.as_ref().map(|req| {
            let mut e = Edns::new();
            e.set_max_payload(req.max_payload().clamp(512, MAX_UDP_PAYLOAD));
            e
        });
        let mut metadata = Metadata::response_from_request(&request.metadata);
        metadata.response_code = reply.code;
        metadata.authoritative = reply.authoritative;
        metadata.recursion_available = true;
        if request.protocol() == Protocol::Udp {
            let limit = resp_edns.as_ref().map_or(512, |e| e.max_payload()) as usize;
            if encoded_len(&query, &reply, resp_edns.as_ref()) > limit {
                // RFC 1035 4.2.1 / RFC 7766: set TC and send no records; the client retries
                // over TCP.
                metadata.truncation = true;
                reply.answers.clear();
                reply.authorities.clear();
                reply.additionals.clear();
            }
        }
        let mut builder = builder;
        if let Some(e) = resp_edns.as_ref() {
            builder.edns(e);
        }
        let msg = builder.build(
            metadata,
            reply.answers.iter(),
            reply.authorities.iter(),
            std::iter::empty(),
            reply.additionals.iter(),
        );
        match response.send_response(msg).await {
            Ok(info) => info,
            Err(e) => {
                tracing::debug!("sending a DNS response: {e}");
                failed(request)
            }
        }
    }
}
