//! The pod network on the node: every node's pods live in its `spec.podCIDR` behind a
//! bridge, and the nodes route each other's pod ranges. Direct routing (flannel's host-gw,
//! Calico without encapsulation) sends them through the other node's InternalIP, which
//! must be on a connected network; the VXLAN overlay ([`VxlanConfig`], flannel's vxlan
//! backend) encapsulates them instead, for nodes that do not share an L2 segment.
//!
//! What the agent keeps true, from the Node objects:
//! - bridge `skiff0` up, holding the gateway (first address) of this node's podCIDR;
//! - the CNI network config `<cni-conf-dir>/10-skiff.conflist` for skiff-cni with that range
//!   (`"ranges": []` until the control plane assigns one, so skiff-cni's STATUS says not
//!   ready), and the `skiff-cni` binary in `<cni-bin-dir>` (copied from next to the agent,
//!   through a temporary file and rename(2), so a runtime never execs half a binary);
//! - `<podCIDR> via <InternalIP>` for every other node (direct), or with VXLAN: device
//!   `skiff.vxlan` (no learning, MAC derived from the node's InternalIP by [`vtep_mac`], so
//!   no node has to publish it), holding `<own podCIDR network>/32` so traffic it
//!   originates returns through the tunnel; per other node `<podCIDR> via <its network
//!   address> dev skiff.vxlan onlink`, a permanent ARP entry for that address → its VTEP
//!   MAC, and an FDB entry VTEP MAC → its InternalIP;
//! - `unreachable` routes for the service CIDR and the LB pools: a packet to a VIP the
//!   datapath did not translate fails at once (EHOSTUNREACH locally, ICMP host unreachable
//!   when forwarded) instead of leaving by the default route.
//!
//! The agent's routes carry protocol [`RTPROT_SKIFF`] (115, `proto 115` in `ip route`), so
//! it can tell them from everybody else's: it only ever deletes routes of that protocol,
//! and it does not replace a route of another protocol with the same destination (that is
//! reported as a conflict). Nothing is removed before the Node list is complete, and
//! nothing is removed on exit: pods keep their connectivity while the agent restarts.
//!
//! Netlink requests go out on a socket opened by [`NetSetup::new`] in the calling thread's
//! network namespace; all later work uses that socket, wherever it runs.

use std::{
    collections::BTreeMap,
    io::{self, Write as _},
    net::Ipv4Addr,
    path::{Path, PathBuf},
    time::Duration,
};

use futures::StreamExt as _;
use k8s_openapi::api::core::v1::Node;
use kube::{
    runtime::{watcher, WatchStreamExt as _},
    Api, Client, ResourceExt as _,
};
use skiff_cni::nl::{Netlink, RouteAction};

/// Name of the VXLAN device.
pub const VXLAN_DEVICE: &str = "skiff.vxlan";
/// Bytes VXLAN over IPv4 adds to a frame (outer IPv4 20 + UDP 8 + VXLAN 8 + inner
/// Ethernet 14): pod MTU is 1500 − 50 unless `--mtu` says otherwise.
pub const VXLAN_OVERHEAD: u32 = 50;

/// The VXLAN overlay's settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VxlanConfig {
    pub vni: u32,
    /// UDP destination port: 4789 (IANA) by default; flannel uses Linux's legacy 8472.
    pub port: u16,
}

impl Default for VxlanConfig {
    fn default() -> Self {
        VxlanConfig { vni: 1, port: 4789 }
    }
}

/// The VTEP MAC of the node with InternalIP `ip`: `0e:73:` + the address (locally
/// administered, unicast; 0x73 is `s`). Unique per node because InternalIPs are, and
/// computable by every node, so nothing is published in the API.
pub fn vtep_mac(ip: Ipv4Addr) -> [u8; 6] {
    let o = ip.octets();
    [0x0e, 0x73, o[0], o[1], o[2], o[3]]
}

/// Where a route of the node network goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Hop {
    /// Direct routing: through the node's InternalIP on a connected network.
    Via(Ipv4Addr),
    /// VXLAN: through the remote range's network address on the VXLAN device, whose FDB
    /// sends it to `vtep` (the remote node's InternalIP).
    Tunnel { gw: Ipv4Addr, vtep: Ipv4Addr },
    /// `unreachable`: service and LB ranges.
    Unreachable,
}

use crate::watch::Cache;

/// Route protocol of every route the agent writes. Unassigned in the kernel's
/// `include/uapi/linux/rtnetlink.h` and iproute2's `rt_protos` (FRR uses 186..=192, Calico
/// 80); 0x73 is ASCII `s`.
pub const RTPROT_SKIFF: u8 = 115;
pub const CONFLIST_NAME: &str = "10-skiff.conflist";
pub const CNI_BINARY: &str = "skiff-cni";
pub const NETWORK_NAME: &str = "skiff";

/// An IPv4 range: network address (host bits clear) and prefix length.
pub type Cidr = (Ipv4Addr, u8);

fn mask(prefix: u8) -> u32 {
    if prefix == 0 {
        0
    } else {
        u32::MAX << (32 - prefix)
    }
}

/// Whether two ranges share an address.
pub fn overlaps(a: Cidr, b: Cidr) -> bool {
    let m = mask(a.1.min(b.1));
    u32::from(a.0) & m == u32::from(b.0) & m
}

fn contains(range: Cidr, ip: Ipv4Addr) -> bool {
    u32::from(ip) & mask(range.1) == u32::from(range.0)
}

/// The gateway of a pod range: its first address (what skiff-cni and the bridge plugin
/// default to).
pub fn gateway(cidr: Cidr) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(cidr.0) + 1)
}

/// How the node network is set up.
#[derive(Debug, Clone)]
pub struct NetConfig {
    pub node_name: String,
    pub bridge: String,
    pub mtu: Option<u32>,
    pub cni_conf_dir: PathBuf,
    pub cni_bin_dir: PathBuf,
    /// The skiff-cni binary to install; `None`: leave the bin dir alone.
    pub cni_source: Option<PathBuf>,
    /// Ranges that get `unreachable` routes (service CIDR, LB pools).
    pub unreachable: Vec<Cidr>,
    /// The VXLAN overlay instead of direct routing.
    pub tunnel: Option<VxlanConfig>,
    /// How often the routes are re-checked even without Node changes (a link flap removes
    /// the kernel's routes through it).
    pub resync: Duration,
    // cluster: pod runtime wiring (issue 8)
    /// host-local IPAM's `dataDir` in the conflist (one file per allocated address).
    /// Several simulated nodes on one machine each need their own.
    pub ipam_data_dir: PathBuf,
    // end cluster
}

impl NetConfig {
    pub fn new(node_name: &str) -> NetConfig {
        NetConfig {
            node_name: node_name.to_owned(),
            bridge: skiff_cni::config::DEFAULT_BRIDGE.to_owned(),
            mtu: None,
            cni_conf_dir: PathBuf::from("/etc/cni/net.d"),
            cni_bin_dir: PathBuf::from("/opt/cni/bin"),
            cni_source: None,
            unreachable: Vec::new(),
            tunnel: None,
            resync: Duration::from_secs(30),
            // cluster: pod runtime wiring (issue 8)
            ipam_data_dir: PathBuf::from(skiff_cni::config::DEFAULT_DATA_DIR),
            // end cluster
        }
    }

    /// MTU of pod interfaces: `mtu`, else the VXLAN default when tunnelling.
    pub fn pod_mtu(&self) -> Option<u32> {
        self.mtu
            .or_else(|| self.tunnel.as_ref().map(|_| 1500 - VXLAN_OVERHEAD))
    }
}

/// The first InternalIP of a Node.
pub fn internal_ip(node: &Node) -> Option<Ipv4Addr> {
    node.status
        .as_ref()?
        .addresses
        .as_ref()?
        .iter()
        .filter(|a| a.type_ == "InternalIP")
        .find_map(|a| a.address.parse().ok())
}

/// The IPv4 pod range of a Node: the first IPv4 entry of `spec.podCIDRs`, else
/// `spec.podCIDR`.
pub fn pod_cidr(node: &Node) -> Option<Cidr> {
    let spec = node.spec.as_ref()?;
    spec.pod_cidrs
        .iter()
        .flatten()
        .chain(spec.pod_cidr.iter())
        .find_map(|c| crate::translate::parse_cidr(c).flatten())
}

/// What the node network should be.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Desired {
    /// This node's pod range, once assigned.
    pub pod_cidr: Option<Cidr>,
    /// This node's InternalIP (the VXLAN underlay address).
    pub node_ip: Option<Ipv4Addr>,
    pub routes: BTreeMap<Cidr, Hop>,
}

/// The desired network for `cfg.node_name` given every Node, plus what was left out and
/// why. A node without a podCIDR or an InternalIP gets no route (the node IPAM controller
/// has not reached it yet); ranges that collide are reported and skipped, first come first
/// served in name order.
pub fn desired(nodes: &[Node], cfg: &NetConfig) -> (Desired, Vec<String>) {
    let mut d = Desired::default();
    let mut diagnostics = Vec::new();
    for r in &cfg.unreachable {
        d.routes.insert(*r, Hop::Unreachable);
    }
    let own = nodes.iter().find(|n| n.name_any() == cfg.node_name);
    d.pod_cidr = own.and_then(pod_cidr);
    d.node_ip = own.and_then(internal_ip);
    let mut sorted: Vec<&Node> = nodes.iter().collect();
    sorted.sort_by_key(|n| n.name_any());
    let mut taken: Vec<(Cidr, String)> = Vec::new();
    if let Some(own) = d.pod_cidr {
        taken.push((own, format!("this node ({})", cfg.node_name)));
    }
    for n in sorted {
        let name = n.name_any();
        if name == cfg.node_name {
            continue;
        }
        let (Some(cidr), Some(ip)) = (pod_cidr(n), internal_ip(n)) else {
            continue;
        };
        let show = |c: Cidr| format!("{}/{}", c.0, c.1);
        if let Some(r) = cfg.unreachable.iter().find(|r| overlaps(**r, cidr)) {
            diagnostics.push(format!(
                "Node {name}: podCIDR {} overlaps the service/LB range {}: no route",
                show(cidr),
                show(*r)
            ));
            continue;
        }
        if let Some((_, owner)) = taken.iter().find(|(c, _)| overlaps(*c, cidr)) {
            diagnostics.push(format!(
                "Node {name}: podCIDR {} overlaps the podCIDR of {owner}: no route",
                show(cidr)
            ));
            continue;
        }
        if taken.iter().any(|(c, _)| contains(*c, ip)) {
            diagnostics.push(format!(
                "Node {name}: InternalIP {ip} is inside a pod range: no route"
            ));
            continue;
        }
        taken.push((cidr, format!("Node {name}")));
        let hop = match cfg.tunnel {
            Some(_) => Hop::Tunnel {
                gw: cidr.0,
                vtep: ip,
            },
            None => Hop::Via(ip),
        };
        d.routes.insert(cidr, hop);
    }
    (d, diagnostics)
}

/// The CNI network configuration list for skiff-cni (keys: agent/cni/src/lib.rs). Without
/// a pod range `ranges` is empty, which skiff-cni's STATUS reports as not ready.
pub fn conflist(cfg: &NetConfig, pod_cidr: Option<Cidr>) -> serde_json::Value {
    let ranges: Vec<serde_json::Value> = pod_cidr
        .map(|c| {
            serde_json::json!([{
                "subnet": format!("{}/{}", c.0, c.1),
                "gateway": gateway(c).to_string(),
            }])
        })
        .into_iter()
        .collect();
    let mut plugin = serde_json::json!({
        "type": CNI_BINARY,
        "bridge": cfg.bridge,
        "isGateway": true,
        "isDefaultGateway": true,
        "hairpinMode": true,
        "ipam": {
            "type": "host-local",
            "ranges": ranges,
            "dataDir": cfg.ipam_data_dir,
        },
    });
    if let Some(mtu) = cfg.pod_mtu() {
        plugin["mtu"] = mtu.into();
    }
    serde_json::json!({
        "cniVersion": skiff_cni::LATEST,
        "name": NETWORK_NAME,
        "plugins": [plugin],
    })
}

/// Writes `contents` to `path` unless it already holds exactly that, through a temporary
/// file in the same directory and rename(2) (readers see the old or the new file, never a
/// partial one). Returns whether it wrote.
pub fn write_atomically(path: &Path, contents: &[u8], mode: u32) -> io::Result<bool> {
    use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
    if std::fs::read(path).is_ok_and(|have| have == contents) {
        let perms_ok =
            std::fs::metadata(path).is_ok_and(|m| m.permissions().mode() & 0o7777 == mode);
        if perms_ok {
            return Ok(false);
        }
    }
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)
        .map_err(|e| io::Error::new(e.kind(), format!("creating {}: {e}", dir.display())))?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.skiff-tmp-{}", std::process::id()));
    let result = (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&tmp)?;
        f.write_all(contents)?;
        f.set_permissions(std::fs::Permissions::from_mode(mode))?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(io::Error::new(
            e.kind(),
            format!("writing {}: {e}", path.display()),
        ));
    }
    Ok(true)
}

/// Copies the skiff-cni binary `source` into `bin_dir` (atomically, mode 0755) unless the
/// same bytes are already there. Returns whether it copied.
pub fn install_cni(source: &Path, bin_dir: &Path) -> io::Result<bool> {
    let bytes = std::fs::read(source).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!(
                "reading the CNI plugin {}: {e} (install skiff-cni next to skiff-agent, or set --cni-plugin)",
                source.display()
            ),
        )
    })?;
    write_atomically(&bin_dir.join(CNI_BINARY), &bytes, 0o755)
}

/// What one [`NetSetup::apply`] did.
#[derive(Debug, Clone, Default)]
pub struct Applied {
    pub bridge_changed: bool,
    pub conflist_written: bool,
    pub routes_added: Vec<String>,
    pub routes_deleted: Vec<String>,
    /// Problems that did not stop the rest (conflicting routes, unreachable next hops).
    pub errors: Vec<String>,
    /// Nodes left out of the routes, and why.
    pub diagnostics: Vec<String>,
}

/// A route as `ip route` would print it (roughly).
pub fn show_route(dst: Ipv4Addr, prefix: u8, action: RouteAction) -> String {
    match action {
        RouteAction::Via(gw) => format!("{dst}/{prefix} via {gw}"),
        RouteAction::Onlink { gw, .. } => {
            format!("{dst}/{prefix} via {gw} dev {VXLAN_DEVICE} onlink")
        }
        RouteAction::Unreachable => format!("unreachable {dst}/{prefix}"),
        RouteAction::Other => format!("{dst}/{prefix}"),
    }
}

/// The node network, as set up through one netlink socket.
pub struct NetSetup {
    nl: Netlink,
    cfg: NetConfig,
}

impl NetSetup {
    /// Opens netlink in the calling thread's network namespace and turns on IPv4
    /// forwarding there (pods' traffic to other nodes and Services is routed by the host).
    pub fn new(cfg: NetConfig) -> io::Result<NetSetup> {
        let nl = Netlink::open()
            .map_err(|e| io::Error::new(e.kind(), format!("opening rtnetlink: {e}")))?;
        // /proc/sys/net is per network namespace, resolved when the file is opened: this
        // is the namespace of the calling thread, like the netlink socket above.
        std::fs::write("/proc/sys/net/ipv4/ip_forward", "1")
            .map_err(|e| io::Error::new(e.kind(), format!("enabling net.ipv4.ip_forward: {e}")))?;
        Ok(NetSetup { nl, cfg })
    }

    pub fn config(&self) -> &NetConfig {
        &self.cfg
    }

    /// Start-up work that needs no Node: installs skiff-cni, and writes a not-ready
    /// conflist if none exists (an existing one, from before a restart, stays until the
    /// Node list says otherwise, so pods keep being created meanwhile).
    pub fn prepare(&mut self) -> io::Result<()> {
        if let Some(src) = &self.cfg.cni_source {
            install_cni(src, &self.cfg.cni_bin_dir)?;
        }
        let path = self.cfg.cni_conf_dir.join(CONFLIST_NAME);
        if !path.exists() {
            let body =
                serde_json::to_vec_pretty(&conflist(&self.cfg, None)).map_err(io::Error::other)?;
            write_atomically(&path, &body, 0o644)?;
        }
        Ok(())
    }

    /// Brings bridge, conflist and routes to `want`.
    pub fn apply(&mut self, want: &Desired) -> Applied {
        let mut out = Applied::default();
        if let Some(cidr) = want.pod_cidr {
            match self.ensure_bridge(cidr) {
                Ok(changed) => out.bridge_changed = changed,
                Err(e) => out
                    .errors
                    .push(format!("setting up bridge {}: {e}", self.cfg.bridge)),
            }
        }
        let path = self.cfg.cni_conf_dir.join(CONFLIST_NAME);
        if want.pod_cidr.is_some() || !path.exists() {
            let body = serde_json::to_vec_pretty(&conflist(&self.cfg, want.pod_cidr))
                .expect("a JSON value serialises");
            match write_atomically(&path, &body, 0o644) {
                Ok(w) => out.conflist_written = w,
                Err(e) => out.errors.push(e.to_string()),
            }
        }
        let tunnel = match (&self.cfg.tunnel, want.node_ip) {
            (Some(v), Some(ip)) => {
                let v = v.clone();
                match self.ensure_tunnel(&v, ip, want) {
                    Ok(index) => Some(index),
                    Err(e) => {
                        out.errors.push(format!("setting up {VXLAN_DEVICE}: {e}"));
                        None
                    }
                }
            }
            (Some(_), None) => {
                out.errors.push(format!(
                    "Node {} has no InternalIP yet: no VXLAN underlay address",
                    self.cfg.node_name
                ));
                None
            }
            (None, _) => {
                if let Err(e) = self.remove_stale_tunnel() {
                    out.errors.push(format!("removing {VXLAN_DEVICE}: {e}"));
                }
                None
            }
        };
        if let Err(e) = self.sync_routes(want, tunnel, &mut out) {
            out.errors.push(format!("reading the routing table: {e}"));
        }
        out
    }

    /// The VXLAN device for underlay address `local`, holding `<podCIDR network>/32`, with
    /// exactly the ARP and FDB entries of the tunnel routes in `want`. Returns its index.
    fn ensure_tunnel(
        &mut self,
        v: &VxlanConfig,
        local: Ipv4Addr,
        want: &Desired,
    ) -> io::Result<u32> {
        let (link, _) = self.nl.ensure_vxlan(
            VXLAN_DEVICE,
            v.vni,
            v.port,
            local,
            vtep_mac(local),
            self.cfg.pod_mtu(),
        )?;
        let addr = want.pod_cidr.map(|c| (c.0, 32u8));
        for (_, a, p) in self.nl.addrs(Some(link.index))? {
            if Some((a, p)) != addr {
                self.nl.delete_addr(link.index, a, p)?;
            }
        }
        if let Some((a, p)) = addr {
            self.nl.add_addr(link.index, a, p)?;
        }
        let mut arp = BTreeMap::new();
        let mut fdb = BTreeMap::new();
        for hop in want.routes.values() {
            if let Hop::Tunnel { gw, vtep } = *hop {
                arp.insert(gw, vtep_mac(vtep));
                fdb.insert(vtep, vtep_mac(vtep));
            }
        }
        for (table, is_fdb) in [(&arp, false), (&fdb, true)] {
            let have = self.nl.permanent_neighbours(link.index, is_fdb)?;
            for (ip, mac) in &have {
                if table.get(ip) != Some(mac) {
                    self.nl.delete_neighbour(link.index, *ip, *mac, is_fdb)?;
                }
            }
            for (ip, mac) in table {
                if !have.contains(&(*ip, *mac)) {
                    self.nl.replace_neighbour(link.index, *ip, *mac, is_fdb)?;
                }
            }
        }
        Ok(link.index)
    }

    /// Deletes a VXLAN device this agent created (recognised by its alias) once the
    /// overlay is off; its routes go with it.
    fn remove_stale_tunnel(&mut self) -> io::Result<()> {
        if let Some(l) = self.nl.link_by_name(VXLAN_DEVICE)? {
            if l.alias
                .as_deref()
                .is_some_and(|a| a.starts_with("skiff vxlan "))
            {
                self.nl.delete_link(l.index)?;
            }
        }
        Ok(())
    }

    /// Bridge up with exactly the gateway address of `cidr` (a stale address from an
    /// earlier range goes). Returns whether anything changed.
    fn ensure_bridge(&mut self, cidr: Cidr) -> io::Result<bool> {
        let existed = self.nl.link_by_name(&self.cfg.bridge)?.is_some();
        let link = self
            .nl
            .ensure_bridge(&self.cfg.bridge, self.cfg.mtu)?
            .ok_or_else(|| {
                io::Error::other(format!(
                    "a link named {} exists and is not a bridge",
                    self.cfg.bridge
                ))
            })?;
        let mut changed = !existed;
        let gw = gateway(cidr);
        let addrs = self.nl.addrs(Some(link.index))?;
        for (_, a, p) in &addrs {
            if (*a, *p) != (gw, cidr.1) {
                self.nl.delete_addr(link.index, *a, *p)?;
                changed = true;
            }
        }
        if !addrs.iter().any(|(_, a, p)| (*a, *p) == (gw, cidr.1)) {
            self.nl.add_addr(link.index, gw, cidr.1)?;
            changed = true;
        }
        Ok(changed)
    }

    fn sync_routes(
        &mut self,
        want: &Desired,
        tunnel: Option<u32>,
        out: &mut Applied,
    ) -> io::Result<()> {
        let mut wanted: BTreeMap<Cidr, RouteAction> = BTreeMap::new();
        for (&(dst, prefix), hop) in &want.routes {
            let action = match *hop {
                Hop::Via(gw) => RouteAction::Via(gw),
                Hop::Unreachable => RouteAction::Unreachable,
                Hop::Tunnel { gw, .. } => match tunnel {
                    Some(oif) => RouteAction::Onlink { gw, oif },
                    // Reported by apply; without the device the route cannot exist.
                    None => continue,
                },
            };
            wanted.insert((dst, prefix), action);
        }
        let table = self.nl.main_routes()?;
        // Ours that are no longer wanted (or wanted differently) go first, so a changed
        // next hop is a replace of our own route.
        for r in table.iter().filter(|r| r.protocol == RTPROT_SKIFF) {
            if wanted.get(&(r.dst, r.prefix)) == Some(&r.action) {
                continue;
            }
            if wanted.contains_key(&(r.dst, r.prefix)) && r.tos == 0 && r.priority == 0 {
                // Replaced below.
                continue;
            }
            match self
                .nl
                .delete_route(r.dst, r.prefix, r.action, RTPROT_SKIFF)
            {
                Ok(()) => out
                    .routes_deleted
                    .push(show_route(r.dst, r.prefix, r.action)),
                Err(e) => out.errors.push(format!(
                    "deleting route {}: {e}",
                    show_route(r.dst, r.prefix, r.action)
                )),
            }
        }
        for (&(dst, prefix), &action) in &wanted {
            let same_key = table
                .iter()
                .find(|r| (r.dst, r.prefix, r.tos, r.priority) == (dst, prefix, 0, 0));
            match same_key {
                Some(r) if r.protocol == RTPROT_SKIFF && r.action == action => continue,
                Some(r) if r.protocol != RTPROT_SKIFF => {
                    out.errors.push(format!(
                        "route {} not written: the table has {} (protocol {}), which skiff does not own",
                        show_route(dst, prefix, action),
                        show_route(r.dst, r.prefix, r.action),
                        r.protocol
                    ));
                    continue;
                }
                _ => {}
            }
            match self.nl.replace_route(dst, prefix, action, RTPROT_SKIFF) {
                Ok(()) => out.routes_added.push(show_route(dst, prefix, action)),
                Err(e) => {
                    let hint = if e.raw_os_error() == Some(libc::ENETUNREACH) {
                        " (the next hop is not on a directly connected network: nodes must share an L2 segment for direct routing)"
                    } else {
                        ""
                    };
                    out.errors.push(format!(
                        "writing route {}: {e}{hint}",
                        show_route(dst, prefix, action)
                    ));
                }
            }
        }
        Ok(())
    }
}

/// A Node reduced to what [`desired`] and [`crate::node::eligible`] read: the cache holds
/// this, not the object (images, conditions, managedFields are kilobytes per Node).
fn compact_node(n: Node) -> Node {
    use k8s_openapi::api::core::v1::{NodeSpec, NodeStatus};
    Node {
        metadata: kube::api::ObjectMeta {
            name: n.metadata.name,
            deletion_timestamp: n.metadata.deletion_timestamp,
            ..Default::default()
        },
        spec: n.spec.map(|s| NodeSpec {
            pod_cidr: s.pod_cidr,
            pod_cidrs: s.pod_cidrs,
            taints: s.taints,
            ..Default::default()
        }),
        status: n.status.map(|s| NodeStatus {
            addresses: s.addresses,
            ..Default::default()
        }),
    }
}

/// What [`run`] reports.
pub struct NetHooks<A, E> {
    /// After every apply, with whether this node is eligible for traffic (not being
    /// deleted, not tainted ToBeDeletedByClusterAutoscaler: kube-proxy's /healthz rule).
    pub on_apply: A,
    pub on_error: E,
}

/// Watches Nodes and keeps the node network in line, forever. Nothing is applied (so no
/// route removed) until the Node list is complete, and again after each relist until it is.
pub async fn run<A, E>(client: Client, setup: &mut NetSetup, hooks: NetHooks<A, E>)
where
    A: FnMut(&Applied, bool),
    E: FnMut(&str),
{
    let NetHooks {
        mut on_apply,
        mut on_error,
    } = hooks;
    let mut nodes =
        Box::pin(watcher(Api::<Node>::all(client), watcher::Config::default()).default_backoff());
    let mut cache: Cache<Node> = Cache::default();
    let mut ticker = tokio::time::interval(setup.cfg.resync);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let changed = tokio::select! {
            e = nodes.next() => match e {
                Some(Ok(e)) => {
                    let mut changed = cache.apply(e, compact_node).changed();
                    while let Some(Some(e)) = futures::FutureExt::now_or_never(nodes.next()) {
                        match e {
                            Ok(e) => changed |= cache.apply(e, compact_node).changed(),
                            Err(e) => on_error(&format!("watching Nodes: {e}")),
                        }
                    }
                    changed
                }
                Some(Err(e)) => {
                    on_error(&format!("watching Nodes: {e}"));
                    false
                }
                None => return,
            },
            _ = ticker.tick() => true,
        };
        if !changed || !cache.ready() {
            continue;
        }
        let all = cache.objects();
        let (want, diagnostics) = desired(&all, &setup.cfg);
        let eligible = all
            .iter()
            .find(|n| n.name_any() == setup.cfg.node_name)
            .is_none_or(crate::node::eligible);
        let mut applied = setup.apply(&want);
        applied.diagnostics = diagnostics;
        on_apply(&applied, eligible);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str, ip: &str, cidr: Option<&str>) -> Node {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": name},
            "spec": {"podCIDR": cidr},
            "status": {"addresses": [{"type": "Hostname", "address": name}, {"type": "InternalIP", "address": ip}]},
        }))
        .unwrap()
    }

    fn cfg() -> NetConfig {
        let mut c = NetConfig::new("a");
        c.unreachable = vec![(Ipv4Addr::new(10, 43, 0, 0), 16)];
        c
    }

    #[test]
    fn routes_to_other_nodes_and_unreachable_service_range() {
        let nodes = [
            node("a", "192.0.2.1", Some("10.244.0.0/24")),
            node("b", "192.0.2.2", Some("10.244.1.0/24")),
            node("c", "192.0.2.3", None),
            node("d", "192.0.2.4", Some("10.244.0.128/25")),
            node("e", "192.0.2.5", Some("10.43.7.0/24")),
        ];
        let (d, diags) = desired(&nodes, &cfg());
        assert_eq!(d.pod_cidr, Some((Ipv4Addr::new(10, 244, 0, 0), 24)));
        assert_eq!(
            d.routes.into_iter().collect::<Vec<_>>(),
            vec![
                ((Ipv4Addr::new(10, 43, 0, 0), 16), Hop::Unreachable),
                (
                    (Ipv4Addr::new(10, 244, 1, 0), 24),
                    Hop::Via(Ipv4Addr::new(192, 0, 2, 2))
                ),
            ]
        );
        assert_eq!(diags.len(), 2, "{diags:?}");
        assert!(diags[0].contains("Node d") && diags[0].contains("this node"));
        assert!(diags[1].contains("Node e") && diags[1].contains("10.43.0.0/16"));
        assert_eq!(d.node_ip, Some(Ipv4Addr::new(192, 0, 2, 1)));

        // The overlay: the same nodes, tunnelled to their VTEPs; pods get a smaller MTU.
        let mut vx = cfg();
        vx.tunnel = Some(VxlanConfig::default());
        let (d, _) = desired(&nodes, &vx);
        assert_eq!(
            d.routes[&(Ipv4Addr::new(10, 244, 1, 0), 24)],
            Hop::Tunnel {
                gw: Ipv4Addr::new(10, 244, 1, 0),
                vtep: Ipv4Addr::new(192, 0, 2, 2)
            }
        );
        assert_eq!(vx.pod_mtu(), Some(1450));
        assert_eq!(
            conflist(&vx, d.pod_cidr)["plugins"][0]["mtu"],
            serde_json::json!(1450)
        );
        assert_eq!(
            vtep_mac(Ipv4Addr::new(192, 0, 2, 2)),
            [0x0e, 0x73, 192, 0, 2, 2]
        );
    }

    #[test]
    fn conflist_has_the_range_once_known() {
        let c = cfg();
        let none = conflist(&c, None);
        assert_eq!(none["plugins"][0]["ipam"]["ranges"], serde_json::json!([]));
        let some = conflist(&c, Some((Ipv4Addr::new(10, 244, 3, 0), 24)));
        assert_eq!(
            some["plugins"][0]["ipam"]["ranges"],
            serde_json::json!([[{"subnet": "10.244.3.0/24", "gateway": "10.244.3.1"}]])
        );
        assert_eq!(some["plugins"][0]["type"], "skiff-cni");
        // skiff-cni itself accepts it and finds the range (the runtime copies the list's
        // name and cniVersion into each plugin's config, as libcni does).
        let mut conf = some["plugins"][0].clone();
        conf["name"] = some["name"].clone();
        conf["cniVersion"] = some["cniVersion"].clone();
        let plugin = skiff_cni::config::NetConf::parse(&conf).unwrap();
        assert_eq!(plugin.ipam().unwrap().sets.len(), 1);
    }

    #[test]
    fn atomic_writes_skip_identical_contents() {
        let dir = std::env::temp_dir().join(format!("skiff-netsetup-{}", std::process::id()));
        let p = dir.join("x.conflist");
        assert!(write_atomically(&p, b"one", 0o644).unwrap());
        assert!(!write_atomically(&p, b"one", 0o644).unwrap());
        assert!(write_atomically(&p, b"two", 0o644).unwrap());
        assert_eq!(std::fs::read(&p).unwrap(), b"two");
        let leftovers: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().contains("skiff-tmp"))
            .collect();
        assert!(leftovers.is_empty());
        let err = install_cni(&dir.join("missing"), &dir).unwrap_err();
        assert!(err.to_string().contains("--cni-plugin"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
