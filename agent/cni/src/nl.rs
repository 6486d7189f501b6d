//! Synchronous rtnetlink: one blocking NETLINK_ROUTE socket per network namespace, with the
//! message types of `netlink-packet-route`. Only the request/ack/dump loop is written here;
//! every message layout comes from the crate.
//!
//! A netlink socket stays bound to the network namespace it was created in, so
//! [`Netlink::open_in`] enters the target namespace just long enough to create the socket
//! and then returns the thread to where it was.

use std::{
    fs::File,
    io,
    net::{IpAddr, Ipv4Addr},
    os::fd::AsRawFd,
};

use netlink_packet_core::{
    NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL,
    NLM_F_REPLACE, NLM_F_REQUEST,
};
use netlink_packet_route::{
    address::{AddressAttribute, AddressMessage},
    link::{
        InfoBridgePort, InfoData, InfoKind, InfoPortData, InfoPortKind, InfoVeth, InfoVxlan,
        LinkAttribute, LinkFlags, LinkInfo, LinkMessage,
    },
    neighbour::{
        NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState,
    },
    route::{
        RouteAddress, RouteAttribute, RouteFlags, RouteMessage, RouteProtocol, RouteScope,
        RouteType,
    },
    AddressFamily, RouteNetlinkMessage,
};
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};
use nix::sched::{setns, CloneFlags};

/// A link as far as the plugin cares.
#[derive(Debug, Clone)]
pub struct Link {
    pub index: u32,
    pub name: String,
    pub mac: String,
    pub mtu: u32,
    pub up: bool,
    pub master: Option<u32>,
    pub kind: Option<InfoKind>,
    pub alias: Option<String>,
}

/// An IPv4 route of the main table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route4 {
    pub dst: Ipv4Addr,
    pub prefix: u8,
    pub gw: Option<Ipv4Addr>,
    pub oif: Option<u32>,
}

pub struct Netlink {
    sock: Socket,
    seq: u32,
}

impl Netlink {
    /// A socket in the calling thread's network namespace.
    pub fn open() -> io::Result<Netlink> {
        let mut sock = Socket::new(NETLINK_ROUTE)?;
        sock.bind_auto()?;
        sock.connect(&SocketAddr::new(0, 0))?;
        // Extended acks make the kernel attach a reason to some errors; best effort, the
        // errno alone is still reported when a kernel does not support them.
        let _ = sock.set_ext_ack(true);
        Ok(Netlink { sock, seq: 0 })
    }

    /// A socket in the network namespace `ns` (an open `/run/netns/x` or
    /// `/proc/<pid>/ns/net`). Fails with EINVAL if `ns` is not a network namespace.
    pub fn open_in(ns: &File) -> io::Result<Netlink> {
        let here = File::open("/proc/thread-self/ns/net")?;
        setns(ns, CloneFlags::CLONE_NEWNET).map_err(io::Error::from)?;
        let result = Netlink::open();
        // Returning is not optional: every later host-side operation assumes it.
        setns(&here, CloneFlags::CLONE_NEWNET).map_err(|e| {
            io::Error::other(format!(
                "could not return to the original network namespace: {e}"
            ))
        })?;
        result
    }

    fn request(
        &mut self,
        msg: RouteNetlinkMessage,
        flags: u16,
    ) -> io::Result<Vec<RouteNetlinkMessage>> {
        self.seq = self.seq.wrapping_add(1);
        let seq = self.seq;
        let mut header = NetlinkHeader::default();
        header.flags = NLM_F_REQUEST | flags;
        header.sequence_number = seq;
        let mut packet = NetlinkMessage::new(header, NetlinkPayload::from(msg));
        packet.finalize();
        let mut buf = vec![0; packet.buffer_len()];
        packet.serialize(&mut buf);
        self.sock.send(&buf, 0)?;

        let dump = flags & NLM_F_DUMP == NLM_F_DUMP;
        let mut out = Vec::new();
        let mut rx = vec![0u8; 1 << 16];
        loop {
            let n = self.sock.recv(&mut &mut rx[..], 0)?;
            let mut off = 0;
            while off < n {
                let pkt = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&rx[off..n])
                    .map_err(|e| io::Error::other(format!("decoding netlink reply: {e}")))?;
                let len = pkt.header.length as usize;
                if pkt.header.sequence_number != seq {
                    off += len.max(1);
                    continue;
                }
                match pkt.payload {
                    NetlinkPayload::Done(_) => return Ok(out),
                    NetlinkPayload::Error(e) => {
                        return match e.code {
                            None => Ok(out),
                            Some(code) => Err(io::Error::from_raw_os_error(-code.get())),
                        };
                    }
                    NetlinkPayload::InnerMessage(m) => {
                        out.push(m);
                        if !dump && flags & NLM_F_ACK == 0 {
                            return Ok(out);
                        }
                    }
                    _ => {}
                }
                if len == 0 {
                    break;
                }
                off += len;
            }
        }
    }

    fn ack(&mut self, msg: RouteNetlinkMessage, flags: u16) -> io::Result<()> {
        self.request(msg, NLM_F_ACK | flags).map(|_| ())
    }

    pub fn links(&mut self) -> io::Result<Vec<Link>> {
        let msgs = self.request(
            RouteNetlinkMessage::GetLink(LinkMessage::default()),
            NLM_F_DUMP,
        )?;
        Ok(msgs
            .into_iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewLink(l) => Some(to_link(&l)),
                _ => None,
            })
            .collect())
    }

    pub fn link_by_name(&mut self, name: &str) -> io::Result<Option<Link>> {
        let mut msg = LinkMessage::default();
        msg.attributes.push(LinkAttribute::IfName(name.to_string()));
        match self.request(RouteNetlinkMessage::GetLink(msg), 0) {
            Ok(msgs) => Ok(msgs.into_iter().find_map(|m| match m {
                RouteNetlinkMessage::NewLink(l) => Some(to_link(&l)),
                _ => None,
            })),
            Err(e) if e.raw_os_error() == Some(libc::ENODEV) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Creates bridge `name` unless it exists; returns it up. `Ok(None)` if a link of that
    /// name exists but is not a bridge.
    pub fn ensure_bridge(&mut self, name: &str, mtu: Option<u32>) -> io::Result<Option<Link>> {
        if self.link_by_name(name)?.is_none() {
            let mut msg = LinkMessage::default();
            msg.attributes.push(LinkAttribute::IfName(name.to_string()));
            if let Some(mtu) = mtu {
                msg.attributes.push(LinkAttribute::Mtu(mtu));
            }
            msg.attributes
                .push(LinkAttribute::LinkInfo(vec![LinkInfo::Kind(
                    InfoKind::Bridge,
                )]));
            match self.ack(RouteNetlinkMessage::NewLink(msg), NLM_F_CREATE | NLM_F_EXCL) {
                // Another plugin instance created it first: fine, use theirs.
                Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {}
                other => other?,
            }
        }
        let Some(link) = self.link_by_name(name)? else {
            return Err(io::Error::other(format!(
                "bridge {name} vanished right after creation"
            )));
        };
        if link.kind != Some(InfoKind::Bridge) {
            return Ok(None);
        }
        if !link.up {
            self.set_up(link.index)?;
        }
        Ok(Some(link))
    }

    /// Creates a veth pair: `host` here, `peer` directly inside the namespace `peer_ns`
    /// (so the container-side name never clashes with a host interface).
    pub fn create_veth(
        &mut self,
        host: &str,
        peer: &str,
        peer_ns: &File,
        mtu: Option<u32>,
    ) -> io::Result<()> {
        let mut peer_msg = LinkMessage::default();
        peer_msg
            .attributes
            .push(LinkAttribute::IfName(peer.to_string()));
        peer_msg
            .attributes
            .push(LinkAttribute::NetNsFd(peer_ns.as_raw_fd()));
        let mut msg = LinkMessage::default();
        msg.attributes.push(LinkAttribute::IfName(host.to_string()));
        if let Some(mtu) = mtu {
            msg.attributes.push(LinkAttribute::Mtu(mtu));
            peer_msg.attributes.push(LinkAttribute::Mtu(mtu));
        }
        msg.attributes.push(LinkAttribute::LinkInfo(vec![
            LinkInfo::Kind(InfoKind::Veth),
            LinkInfo::Data(InfoData::Veth(InfoVeth::Peer(peer_msg))),
        ]));
        self.ack(RouteNetlinkMessage::NewLink(msg), NLM_F_CREATE | NLM_F_EXCL)
    }

    pub fn set_up(&mut self, index: u32) -> io::Result<()> {
        let mut msg = LinkMessage::default();
        msg.header.index = index;
        msg.header.flags = LinkFlags::Up;
        msg.header.change_mask = LinkFlags::Up;
        self.ack(RouteNetlinkMessage::SetLink(msg), 0)
    }

    /// Enslaves `index` to `master`, labels it with `alias` and brings it up.
    pub fn attach_port(&mut self, index: u32, master: u32, alias: &str) -> io::Result<()> {
        let mut msg = LinkMessage::default();
        msg.header.index = index;
        msg.header.flags = LinkFlags::Up;
        msg.header.change_mask = LinkFlags::Up;
        msg.attributes.push(LinkAttribute::Controller(master));
        msg.attributes
            .push(LinkAttribute::IfAlias(alias.to_string()));
        self.ack(RouteNetlinkMessage::SetLink(msg), 0)
    }

    /// Sets the bridge-port hairpin flag (IFLA_BRPORT_MODE through IFLA_INFO_SLAVE_DATA,
    /// what `ip link set X type bridge_slave hairpin on` sends).
    pub fn set_hairpin(&mut self, index: u32, on: bool) -> io::Result<()> {
        let mut msg = LinkMessage::default();
        msg.header.index = index;
        msg.attributes.push(LinkAttribute::LinkInfo(vec![
            LinkInfo::PortKind(InfoPortKind::Bridge),
            LinkInfo::PortData(InfoPortData::BridgePort(vec![InfoBridgePort::HairpinMode(
                on,
            )])),
        ]));
        self.ack(RouteNetlinkMessage::NewLink(msg), 0)
    }

    /// Deletes link `index`; a link that is already gone is not an error.
    pub fn delete_link(&mut self, index: u32) -> io::Result<()> {
        let mut msg = LinkMessage::default();
        msg.header.index = index;
        match self.ack(RouteNetlinkMessage::DelLink(msg), 0) {
            Err(e) if e.raw_os_error() == Some(libc::ENODEV) => Ok(()),
            other => other,
        }
    }

    /// Adds `addr/prefix` to link `index`; an address that is already there is fine.
    pub fn add_addr(&mut self, index: u32, addr: Ipv4Addr, prefix: u8) -> io::Result<()> {
        let mut msg = AddressMessage::default();
        msg.header.family = AddressFamily::Inet;
        msg.header.prefix_len = prefix;
        msg.header.index = index;
        msg.attributes
            .push(AddressAttribute::Local(IpAddr::V4(addr)));
        msg.attributes
            .push(AddressAttribute::Address(IpAddr::V4(addr)));
        let bits = u32::from(addr);
        let mask = if prefix == 0 {
            0
        } else {
            u32::MAX << (32 - prefix)
        };
        msg.attributes
            .push(AddressAttribute::Broadcast(Ipv4Addr::from(bits | !mask)));
        match self.ack(
            RouteNetlinkMessage::NewAddress(msg),
            NLM_F_CREATE | NLM_F_EXCL,
        ) {
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => Ok(()),
            other => other,
        }
    }

    /// IPv4 addresses of link `index` (or of all links with `None`).
    pub fn addrs(&mut self, index: Option<u32>) -> io::Result<Vec<(u32, Ipv4Addr, u8)>> {
        let mut req = AddressMessage::default();
        req.header.family = AddressFamily::Inet;
        let msgs = self.request(RouteNetlinkMessage::GetAddress(req), NLM_F_DUMP)?;
        let mut out = Vec::new();
        for m in msgs {
            let RouteNetlinkMessage::NewAddress(a) = m else {
                continue;
            };
            if index.is_some_and(|i| i != a.header.index) {
                continue;
            }
            for attr in &a.attributes {
                if let AddressAttribute::Local(IpAddr::V4(ip)) = attr {
                    out.push((a.header.index, *ip, a.header.prefix_len));
                }
            }
        }
        Ok(out)
    }

    /// Adds an IPv4 route in the main table; an identical existing route is fine.
    pub fn add_route(&mut self, route: &Route4) -> io::Result<()> {
        let mut msg = RouteMessage::default();
        msg.header.address_family = AddressFamily::Inet;
        msg.header.destination_prefix_length = route.prefix;
        msg.header.table = netlink_packet_route::route::RouteHeader::RT_TABLE_MAIN;
        msg.header.protocol = RouteProtocol::Boot;
        msg.header.kind = RouteType::Unicast;
        msg.header.scope = if route.gw.is_some() {
            RouteScope::Universe
        } else {
            RouteScope::Link
        };
        if route.prefix > 0 {
            msg.attributes
                .push(RouteAttribute::Destination(RouteAddress::Inet(route.dst)));
        }
        if let Some(gw) = route.gw {
            msg.attributes
                .push(RouteAttribute::Gateway(RouteAddress::Inet(gw)));
        }
        if let Some(oif) = route.oif {
            msg.attributes.push(RouteAttribute::Oif(oif));
        }
        match self.ack(
            RouteNetlinkMessage::NewRoute(msg),
            NLM_F_CREATE | NLM_F_EXCL,
        ) {
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => Ok(()),
            other => other,
        }
    }

    /// IPv4 unicast routes of the main table.
    pub fn routes(&mut self) -> io::Result<Vec<Route4>> {
        let mut req = RouteMessage::default();
        req.header.address_family = AddressFamily::Inet;
        let msgs = self.request(RouteNetlinkMessage::GetRoute(req), NLM_F_DUMP)?;
        let mut out = Vec::new();
        for m in msgs {
            let RouteNetlinkMessage::NewRoute(r) = m else {
                continue;
            };
            if r.header.table != netlink_packet_route::route::RouteHeader::RT_TABLE_MAIN
                || r.header.kind != RouteType::Unicast
            {
                continue;
            }
            let mut route = Route4 {
                dst: Ipv4Addr::UNSPECIFIED,
                prefix: r.header.destination_prefix_length,
                gw: None,
                oif: None,
            };
            for attr in &r.attributes {
                match attr {
                    RouteAttribute::Destination(RouteAddress::Inet(d)) => route.dst = *d,
                    RouteAttribute::Gateway(RouteAddress::Inet(g)) => route.gw = Some(*g),
                    RouteAttribute::Oif(o) => route.oif = Some(*o),
                    _ => {}
                }
            }
            out.push(route);
        }
        Ok(out)
    }
}

// ---- Used by the node agent (skiff-agent's netsetup): routes it owns, told apart from
// everybody else's by their protocol number, and the bridge's addresses.

/// What a main-table IPv4 route does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum RouteAction {
    /// Unicast through a gateway (`ip route replace DST via GW`).
    Via(Ipv4Addr),
    /// Unicast through a gateway that is on-link on `oif` without a connected route
    /// (`ip route replace DST via GW dev OIF onlink`): how an overlay device is used.
    Onlink { gw: Ipv4Addr, oif: u32 },
    /// `ip route replace unreachable DST`: the lookup fails at once with EHOSTUNREACH
    /// (ICMP host unreachable for forwarded packets) instead of following the default route.
    Unreachable,
    /// Anything else (directly connected, blackhole, multipath…): reported, never written.
    Other,
}

/// One IPv4 route of the main table with the fields that identify it for the kernel
/// (destination, prefix, tos, priority) plus its protocol and action.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteEntry {
    pub dst: Ipv4Addr,
    pub prefix: u8,
    pub tos: u8,
    pub priority: u32,
    pub protocol: u8,
    pub action: RouteAction,
}

impl Netlink {
    /// Every IPv4 route of the main table (unicast and otherwise).
    pub fn main_routes(&mut self) -> io::Result<Vec<RouteEntry>> {
        let mut req = RouteMessage::default();
        req.header.address_family = AddressFamily::Inet;
        let msgs = self.request(RouteNetlinkMessage::GetRoute(req), NLM_F_DUMP)?;
        let mut out = Vec::new();
        for m in msgs {
            let RouteNetlinkMessage::NewRoute(r) = m else {
                continue;
            };
            let mut table = u32::from(r.header.table);
            let mut entry = RouteEntry {
                dst: Ipv4Addr::UNSPECIFIED,
                prefix: r.header.destination_prefix_length,
                tos: r.header.tos,
                priority: 0,
                protocol: r.header.protocol.into(),
                action: RouteAction::Other,
            };
            let mut gw = None;
            let mut oif = None;
            for attr in &r.attributes {
                match attr {
                    RouteAttribute::Destination(RouteAddress::Inet(d)) => entry.dst = *d,
                    RouteAttribute::Gateway(RouteAddress::Inet(g)) => gw = Some(*g),
                    RouteAttribute::Oif(o) => oif = Some(*o),
                    RouteAttribute::Priority(p) => entry.priority = *p,
                    // Tables above 255 only travel in the attribute.
                    RouteAttribute::Table(t) => table = *t,
                    _ => {}
                }
            }
            if table != u32::from(netlink_packet_route::route::RouteHeader::RT_TABLE_MAIN) {
                continue;
            }
            let onlink = r.header.flags.contains(RouteFlags::Onlink);
            entry.action = match (r.header.kind, gw) {
                (RouteType::Unicast, Some(g)) => match oif {
                    Some(oif) if onlink => RouteAction::Onlink { gw: g, oif },
                    _ => RouteAction::Via(g),
                },
                (RouteType::Unreachable, _) => RouteAction::Unreachable,
                _ => RouteAction::Other,
            };
            out.push(entry);
        }
        Ok(out)
    }

    fn route_message(dst: Ipv4Addr, prefix: u8, action: RouteAction, protocol: u8) -> RouteMessage {
        let mut msg = RouteMessage::default();
        msg.header.address_family = AddressFamily::Inet;
        msg.header.destination_prefix_length = prefix;
        msg.header.table = netlink_packet_route::route::RouteHeader::RT_TABLE_MAIN;
        msg.header.protocol = RouteProtocol::from(protocol);
        msg.header.scope = RouteScope::Universe;
        msg.header.kind = match action {
            RouteAction::Unreachable => RouteType::Unreachable,
            _ => RouteType::Unicast,
        };
        if prefix > 0 {
            msg.attributes
                .push(RouteAttribute::Destination(RouteAddress::Inet(dst)));
        }
        match action {
            RouteAction::Via(gw) => msg
                .attributes
                .push(RouteAttribute::Gateway(RouteAddress::Inet(gw))),
            RouteAction::Onlink { gw, oif } => {
                msg.header.flags = RouteFlags::Onlink;
                msg.attributes
                    .push(RouteAttribute::Gateway(RouteAddress::Inet(gw)));
                msg.attributes.push(RouteAttribute::Oif(oif));
            }
            _ => {}
        }
        msg
    }

    /// `ip route replace` of a main-table route with `protocol`: creates it, or replaces
    /// the route with the same destination, tos 0 and priority 0. The caller checks that
    /// such a route is its own first (the kernel would replace anybody's).
    pub fn replace_route(
        &mut self,
        dst: Ipv4Addr,
        prefix: u8,
        action: RouteAction,
        protocol: u8,
    ) -> io::Result<()> {
        if action == RouteAction::Other {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "only via and unreachable routes can be written",
            ));
        }
        let msg = Self::route_message(dst, prefix, action, protocol);
        self.ack(
            RouteNetlinkMessage::NewRoute(msg),
            NLM_F_CREATE | NLM_F_REPLACE,
        )
    }

    /// Deletes the main-table route `dst/prefix` of `protocol` (the kernel matches the
    /// protocol too, so another owner's route of the same destination stays). A route that
    /// is already gone is not an error.
    pub fn delete_route(
        &mut self,
        dst: Ipv4Addr,
        prefix: u8,
        action: RouteAction,
        protocol: u8,
    ) -> io::Result<()> {
        let msg = Self::route_message(dst, prefix, action, protocol);
        match self.ack(RouteNetlinkMessage::DelRoute(msg), 0) {
            Err(e) if e.raw_os_error() == Some(libc::ESRCH) => Ok(()),
            other => other,
        }
    }

    /// Creates VXLAN device `name` (VNI `vni`, UDP `port`, underlay source `local`, MAC
    /// `mac`, no learning: the FDB is programmed) unless one with exactly these settings
    /// exists; a device of that name with other settings is replaced. The settings are
    /// recorded in the link's alias, which is how an existing device is recognised.
    /// Returns the link, up, and whether it was (re)created.
    pub fn ensure_vxlan(
        &mut self,
        name: &str,
        vni: u32,
        port: u16,
        local: Ipv4Addr,
        mac: [u8; 6],
        mtu: Option<u32>,
    ) -> io::Result<(Link, bool)> {
        let alias = format!("skiff vxlan vni={vni} port={port} local={local}");
        let mac_text = mac
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<Vec<_>>()
            .join(":");
        let mut created = false;
        match self.link_by_name(name)? {
            Some(l)
                if l.kind == Some(InfoKind::Vxlan)
                    && l.alias.as_deref() == Some(alias.as_str())
                    && l.mac == mac_text
                    && mtu.is_none_or(|m| m == l.mtu) => {}
            Some(l) if l.kind != Some(InfoKind::Vxlan) => {
                return Err(io::Error::other(format!(
                    "a link named {name} exists and is not a VXLAN device"
                )))
            }
            other => {
                if let Some(l) = other {
                    self.delete_link(l.index)?;
                }
                let mut msg = LinkMessage::default();
                msg.attributes.push(LinkAttribute::IfName(name.to_string()));
                msg.attributes.push(LinkAttribute::Address(mac.to_vec()));
                if let Some(mtu) = mtu {
                    msg.attributes.push(LinkAttribute::Mtu(mtu));
                }
                msg.attributes.push(LinkAttribute::LinkInfo(vec![
                    LinkInfo::Kind(InfoKind::Vxlan),
                    LinkInfo::Data(InfoData::Vxlan(vec![
                        InfoVxlan::Id(vni),
                        InfoVxlan::Local(local),
                        InfoVxlan::Port(port),
                        InfoVxlan::Learning(false),
                    ])),
                ]));
                self.ack(RouteNetlinkMessage::NewLink(msg), NLM_F_CREATE | NLM_F_EXCL)?;
                created = true;
            }
        }
        let link = self
            .link_by_name(name)?
            .ok_or_else(|| io::Error::other(format!("{name} vanished right after creation")))?;
        if created || !link.up {
            // IFLA_IFALIAS is only applied by a set, not at creation.
            let mut msg = LinkMessage::default();
            msg.header.index = link.index;
            msg.header.flags = LinkFlags::Up;
            msg.header.change_mask = LinkFlags::Up;
            msg.attributes.push(LinkAttribute::IfAlias(alias));
            self.ack(RouteNetlinkMessage::SetLink(msg), 0)?;
        }
        Ok((link, created))
    }

    fn neighbour_message(
        family: AddressFamily,
        index: u32,
        ip: Ipv4Addr,
        mac: Option<[u8; 6]>,
    ) -> NeighbourMessage {
        let mut msg = NeighbourMessage::default();
        msg.header.family = family;
        msg.header.ifindex = index;
        msg.header.state = NeighbourState::Permanent;
        if family == AddressFamily::Bridge {
            // NTF_SELF: the entry belongs to the VXLAN device's own FDB.
            msg.header.flags = NeighbourFlags::Own;
        }
        if let Some(mac) = mac {
            msg.attributes
                .push(NeighbourAttribute::LinkLayerAddress(mac.to_vec()));
        }
        msg.attributes
            .push(NeighbourAttribute::Destination(NeighbourAddress::Inet(ip)));
        msg
    }

    /// Permanent entries of link `index`: ARP entries (`fdb == false`: IP → MAC) or FDB
    /// entries (`fdb == true`: MAC → remote underlay IP).
    pub fn permanent_neighbours(
        &mut self,
        index: u32,
        fdb: bool,
    ) -> io::Result<Vec<(Ipv4Addr, [u8; 6])>> {
        let mut req = NeighbourMessage::default();
        req.header.family = if fdb {
            AddressFamily::Bridge
        } else {
            AddressFamily::Inet
        };
        let msgs = self.request(RouteNetlinkMessage::GetNeighbour(req), NLM_F_DUMP)?;
        let mut out = Vec::new();
        for m in msgs {
            let RouteNetlinkMessage::NewNeighbour(n) = m else {
                continue;
            };
            if n.header.ifindex != index || n.header.state != NeighbourState::Permanent {
                continue;
            }
            let mut ip = None;
            let mut mac = None;
            for a in &n.attributes {
                match a {
                    NeighbourAttribute::Destination(NeighbourAddress::Inet(i)) => ip = Some(*i),
                    NeighbourAttribute::Destination(NeighbourAddress::Other(b)) if b.len() == 4 => {
                        ip = Some(Ipv4Addr::new(b[0], b[1], b[2], b[3]))
                    }
                    NeighbourAttribute::LinkLayerAddress(b) if b.len() == 6 => {
                        mac = Some([b[0], b[1], b[2], b[3], b[4], b[5]])
                    }
                    _ => {}
                }
            }
            if let (Some(ip), Some(mac)) = (ip, mac) {
                out.push((ip, mac));
            }
        }
        Ok(out)
    }

    /// `ip neigh replace IP lladdr MAC dev INDEX nud permanent` (`fdb == false`) or
    /// `bridge fdb replace MAC dev INDEX dst IP self permanent` (`fdb == true`).
    pub fn replace_neighbour(
        &mut self,
        index: u32,
        ip: Ipv4Addr,
        mac: [u8; 6],
        fdb: bool,
    ) -> io::Result<()> {
        let family = if fdb {
            AddressFamily::Bridge
        } else {
            AddressFamily::Inet
        };
        let msg = Self::neighbour_message(family, index, ip, Some(mac));
        self.ack(
            RouteNetlinkMessage::NewNeighbour(msg),
            NLM_F_CREATE | NLM_F_REPLACE,
        )
    }

    /// Deletes what [`Netlink::replace_neighbour`] wrote; a missing entry is not an error.
    pub fn delete_neighbour(
        &mut self,
        index: u32,
        ip: Ipv4Addr,
        mac: [u8; 6],
        fdb: bool,
    ) -> io::Result<()> {
        let family = if fdb {
            AddressFamily::Bridge
        } else {
            AddressFamily::Inet
        };
        let msg = Self::neighbour_message(family, index, ip, fdb.then_some(mac));
        match self.ack(RouteNetlinkMessage::DelNeighbour(msg), 0) {
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(()),
            other => other,
        }
    }

    /// Removes `addr/prefix` from link `index`; an absent address is not an error.
    pub fn delete_addr(&mut self, index: u32, addr: Ipv4Addr, prefix: u8) -> io::Result<()> {
        let mut msg = AddressMessage::default();
        msg.header.family = AddressFamily::Inet;
        msg.header.prefix_len = prefix;
        msg.header.index = index;
        msg.attributes
            .push(AddressAttribute::Local(IpAddr::V4(addr)));
        match self.ack(RouteNetlinkMessage::DelAddress(msg), 0) {
            Err(e) if e.raw_os_error() == Some(libc::EADDRNOTAVAIL) => Ok(()),
            other => other,
        }
    }
}

fn to_link(l: &LinkMessage) -> Link {
    let mut link = Link {
        index: l.header.index,
        name: String::new(),
        mac: String::new(),
        mtu: 0,
        up: l.header.flags.contains(LinkFlags::Up),
        master: None,
        kind: None,
        alias: None,
    };
    for attr in &l.attributes {
        match attr {
            LinkAttribute::IfName(n) => link.name = n.clone(),
            LinkAttribute::Address(a) => {
                link.mac = a
                    .iter()
                    .map(|b| format!("{b:02x}"))
                    .collect::<Vec<_>>()
                    .join(":")
            }
            LinkAttribute::Mtu(m) => link.mtu = *m,
            LinkAttribute::Controller(m) => link.master = Some(*m),
            LinkAttribute::IfAlias(a) => link.alias = Some(a.clone()),
            LinkAttribute::LinkInfo(infos) => {
                for i in infos {
                    if let LinkInfo::Kind(k) = i {
                        link.kind = Some(k.clone());
                    }
                }
            }
            _ => {}
        }
    }
    link
}
