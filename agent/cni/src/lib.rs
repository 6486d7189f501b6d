//! skiff-cni: a CNI plugin (spec 1.1.0; also 0.4.0 and 1.0.0) that attaches a container to
//! a Linux bridge through a veth pair, with built-in IPAM that keeps host-local's on-disk
//! format. Synchronous on purpose: one short-lived process per invocation, no runtime.
//!
//! [`run`] is the whole plugin as a function of environment and stdin, so the binary is a
//! thin wrapper and the protocol logic can be unit-tested.
//!
//! # Configuration (the reference `bridge` plugin's keys, where implemented)
//! - `bridge` (default `skiff0`, created if missing), `isGateway`, `isDefaultGateway`
//!   (implies isGateway), `mtu`, `hairpinMode` (default **true**: a pod reaching a
//!   Service VIP that translates back to itself needs the frame to leave and re-enter its
//!   own port), `dns` (copied into the result).
//! - `ipam`: host-local keys, `type` must be `host-local` (or absent): `ranges` (range sets
//!   of `{subnet, rangeStart, rangeEnd, gateway}`) or the legacy `subnet`/`rangeStart`/
//!   `rangeEnd`/`gateway`, `routes` (`{dst, gw?}`), `dataDir` (default
//!   `/var/lib/cni/networks`). IPv4 only.
//! - `ipMasq`, `vlan`, `promiscMode` are refused with code 2 instead of being ignored.
//!
//! # Commands
//! - ADD: bridge (+ gateway address and `ip_forward=1` when a gateway), one address per
//!   range set, veth `veth<hash>` on the bridge with hairpin on and an alias
//!   `skiff-cni <network> <containerID> <ifname>`, container end created directly in
//!   `CNI_NETNS` as `CNI_IFNAME`, addresses, routes, lo up. Any failure after the address
//!   was reserved rolls back veth and reservation.
//! - DEL: idempotent; needs neither the namespace nor prevResult (the host veth name is
//!   derived from network, container ID and ifname).
//! - CHECK: container interface (name, MAC), addresses, routes against prevResult; host
//!   veth on the bridge; reservations on disk.
//! - GC: removes reservation files and host veths (found by alias) of attachments not in
//!   `cni.dev/valid-attachments`.
//! - STATUS: ready (exit 0) iff the config names at least one IPv4 range (the agent fills
//!   `ipam.ranges` from the node's pod CIDR and writes an empty list until it knows it),
//!   the IPAM directory can be created and locked, and every range set has a free
//!   address; otherwise code 50.
//! - VERSION: 0.4.0, 1.0.0, 1.1.0; a config's `cniVersions` picks the highest shared.
//!
//! # Error codes
//! 1 version, 2 unsupported field, 3 CNI_NETNS does not exist, 4 bad CNI_* variable
//! (also a CNI_NETNS that is not a network namespace), 5 I/O, 6 undecodable stdin or
//! prevResult, 7 invalid config, 11 range exhausted, 50 not ready; plugin-specific: 100
//! attachment already exists, 101 CHECK mismatch, 102 netlink failure.

pub mod config;
pub mod error;
pub mod ipam;
pub mod nl;

use std::{fs::File, io, net::Ipv4Addr, path::Path};

use serde_json::{json, Map, Value};

use config::{Command, Env, Ipam, NetConf, RouteSpec};
pub use config::{LATEST, SUPPORTED};
use error::*;
use ipam::{Allocation, IpamError, Store};
use nl::{Netlink, Route4};

/// What the binary prints and how it exits.
#[derive(Debug)]
pub struct Outcome {
    pub stdout: Option<String>,
    pub stderr: Option<String>,
    pub exit_code: i32,
}

impl Outcome {
    fn ok(stdout: Option<Value>) -> Outcome {
        Outcome {
            stdout: stdout.map(|v| v.to_string()),
            stderr: None,
            exit_code: 0,
        }
    }

    pub fn error(e: &CniError, version: &str) -> Outcome {
        Outcome {
            stdout: Some(e.to_json(version).to_string()),
            stderr: Some(format!("error {}: {e}", e.code)),
            exit_code: 1,
        }
    }
}

/// Runs one plugin invocation.
pub fn run(vars: &[(String, String)], stdin: &[u8]) -> Outcome {
    let parsed: Option<Value> = serde_json::from_slice(stdin).ok();
    // The error object carries the version the caller asked for when we can tell it.
    let asked = parsed
        .as_ref()
        .and_then(|v| v.get("cniVersion"))
        .and_then(Value::as_str)
        .filter(|v| SUPPORTED.contains(v))
        .unwrap_or(LATEST)
        .to_string();
    let command = vars
        .iter()
        .find(|(k, _)| k == "CNI_COMMAND")
        .map(|(_, v)| v.as_str());
    let command = match command.map(|c| (c, Command::parse(c))) {
        Some((_, Some(c))) => c,
        Some((c, None)) => {
            return Outcome::error(
                &CniError::new(
                    INVALID_ENV,
                    "CNI_COMMAND is invalid",
                    format!("{c:?}: expected ADD, DEL, CHECK, GC, STATUS or VERSION"),
                ),
                &asked,
            )
        }
        None => {
            return Outcome::error(
                &CniError::new(
                    INVALID_ENV,
                    "CNI_COMMAND is missing",
                    "the runtime must set CNI_COMMAND (ADD, DEL, CHECK, GC, STATUS or VERSION)",
                ),
                &asked,
            )
        }
    };
    if command == Command::Version {
        // VERSION needs no valid config: it is how a runtime learns what to send.
        return Outcome::ok(Some(json!({
            "cniVersion": LATEST,
            "supportedVersions": SUPPORTED,
        })));
    }
    let Some(value) = parsed.filter(Value::is_object) else {
        let details = match serde_json::from_slice::<Value>(stdin) {
            Err(e) => format!("stdin is not JSON: {e}"),
            Ok(_) => "stdin must be a JSON object".to_string(),
        };
        return Outcome::error(
            &CniError::new(DECODE, "cannot decode the network configuration", details),
            &asked,
        );
    };
    let version = match config::negotiate(&value) {
        Ok(v) => v,
        Err(e) => return Outcome::error(&e, &asked),
    };
    let env = Env::from_vars(vars);
    let result = NetConf::parse(&value).and_then(|conf| match command {
        Command::Add => cmd_add(&conf, &env, &version).map(Some),
        Command::Del => cmd_del(&conf, &env).map(|_| None),
        Command::Check => cmd_check(&conf, &env).map(|_| None),
        Command::Gc => need_1_1(&version, "GC")
            .and_then(|_| cmd_gc(&conf))
            .map(|_| None),
        Command::Status => need_1_1(&version, "STATUS")
            .and_then(|_| cmd_status(&conf))
            .map(|_| None),
        Command::Version => unreachable!("handled above"),
    });
    match result {
        Ok(out) => Outcome::ok(out),
        Err(e) => Outcome::error(&e, &version),
    }
}

/// GC and STATUS exist from spec 1.1.0 on.
fn need_1_1(version: &str, what: &str) -> Result<()> {
    if version == "1.1.0" {
        Ok(())
    } else {
        Err(CniError::new(
            INCOMPATIBLE_VERSION,
            format!("{what} needs CNI 1.1.0"),
            format!("the configuration speaks {version}; {what} was added in spec 1.1.0"),
        ))
    }
}

fn nl_err(what: impl Into<String>) -> impl FnOnce(io::Error) -> CniError {
    let what = what.into();
    move |e| CniError::new(NETLINK_FAILURE, what, e.to_string())
}

fn ipam_err(e: IpamError) -> CniError {
    let code = match e {
        IpamError::Exhausted { .. } => TRY_AGAIN_LATER,
        IpamError::Duplicate { .. } => ALREADY_ATTACHED,
        IpamError::Io { .. } => IO_FAILURE,
    };
    let details = e.to_string();
    CniError::new(code, "IP address allocation failed", details)
}

/// Host-side veth name, derived from (network, container, ifname) so DEL and GC find it
/// without prevResult. FNV-1a; "veth" + 8 hex digits like the reference plugin's names.
pub fn host_veth_name(network: &str, id: &str, ifname: &str) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in network
        .bytes()
        .chain([0])
        .chain(id.bytes())
        .chain([0])
        .chain(ifname.bytes())
    {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("veth{:08x}", (h ^ (h >> 32)) as u32)
}

/// IFLA_IFALIAS of the host veth: lets GC map a host port back to its attachment.
fn alias(network: &str, id: &str, ifname: &str) -> String {
    format!("skiff-cni {network} {id} {ifname}")
}

fn parse_alias<'a>(alias: &'a str, network: &str) -> Option<(&'a str, &'a str)> {
    let rest = alias.strip_prefix("skiff-cni ")?;
    let rest = rest.strip_prefix(network)?.strip_prefix(' ')?;
    rest.split_once(' ')
}

/// Opens CNI_NETNS. A path that does not exist means the container is gone (code 3).
fn open_netns(path: &str) -> Result<File> {
    File::open(path).map_err(|e| {
        let code = if e.kind() == io::ErrorKind::NotFound {
            UNKNOWN_CONTAINER
        } else {
            INVALID_ENV
        };
        CniError::new(
            code,
            "cannot open the container network namespace",
            format!("CNI_NETNS={path}: {e}"),
        )
    })
}

fn netns_socket(ns: &File, path: &str) -> Result<Netlink> {
    Netlink::open_in(ns).map_err(|e| {
        if e.raw_os_error() == Some(libc::EINVAL) {
            CniError::new(
                INVALID_ENV,
                "CNI_NETNS is not a network namespace",
                format!("CNI_NETNS={path}: setns refused it ({e})"),
            )
        } else {
            CniError::new(
                NETLINK_FAILURE,
                "cannot open a netlink socket in the container namespace",
                format!("CNI_NETNS={path}: {e}"),
            )
        }
    })
}

fn lock_store(ipam: &Ipam, network: &str) -> Result<Store> {
    Store::lock(&ipam.data_dir, network).map_err(ipam_err)
}

fn cmd_add(conf: &NetConf, env: &Env, version: &str) -> Result<Value> {
    let id = env.container_id()?;
    let ifname = env.ifname()?;
    let netns_path = env.netns()?;
    let ipam = conf.ipam()?;
    if ipam.sets.is_empty() {
        return Err(CniError::new(
            INVALID_CONFIG,
            "no IP range configured",
            "\"ipam.ranges\" is empty: the node's pod CIDR has not been written into the config yet",
        ));
    }
    let prev = conf
        .prev_result
        .as_ref()
        .map(PrevResult::parse)
        .transpose()?;
    // Everything that can fail without side effects comes first, so an error here leaks
    // nothing: the namespace, both sockets, the container's interface name.
    let ns = open_netns(netns_path)?;
    let mut cont = netns_socket(&ns, netns_path)?;
    let mut host = Netlink::open().map_err(nl_err("opening a netlink socket"))?;
    if cont
        .link_by_name(ifname)
        .map_err(nl_err("looking up CNI_IFNAME in the container"))?
        .is_some()
    {
        return Err(CniError::new(
            ALREADY_ATTACHED,
            "the container already has this interface",
            format!("{ifname} exists in {netns_path}; was ADD called twice without DEL?"),
        ));
    }
    let bridge = host
        .ensure_bridge(&conf.bridge, conf.mtu)
        .map_err(nl_err(format!("creating bridge {}", conf.bridge)))?
        .ok_or_else(|| {
            CniError::new(
                INVALID_CONFIG,
                "the bridge name is taken",
                format!(
                    "a non-bridge interface named {} exists on the host; pick another \"bridge\"",
                    conf.bridge
                ),
            )
        })?;

    let allocs = lock_store(&ipam, &conf.name)?
        .allocate(&ipam.sets, id, ifname)
        .map_err(ipam_err)?;

    let host_name = host_veth_name(&conf.name, id, ifname);
    let mut created = false;
    let attached = attach(
        conf,
        &ipam,
        &allocs,
        &mut host,
        &mut cont,
        &ns,
        &bridge,
        &host_name,
        (id, ifname),
        &mut created,
    );
    match attached {
        Ok(links) => Ok(build_result(
            conf, &ipam, &allocs, links, netns_path, version, prev,
        )),
        Err(e) => {
            // Roll back in reverse: the veth (deleting one end removes both), then the
            // addresses this call reserved (allocate() refused to run if any existed).
            if created {
                if let Ok(Some(l)) = host.link_by_name(&host_name) {
                    let _ = host.delete_link(l.index);
                }
            }
            if let Ok(store) = lock_store(&ipam, &conf.name) {
                let _ = store.release(id, ifname);
            }
            Err(e)
        }
    }
}

struct AttachedLinks {
    bridge: nl::Link,
    host: nl::Link,
    cont: nl::Link,
}

#[allow(clippy::too_many_arguments)]
fn attach(
    conf: &NetConf,
    ipam: &Ipam,
    allocs: &[Allocation],
    host: &mut Netlink,
    cont: &mut Netlink,
    ns: &File,
    bridge: &nl::Link,
    host_name: &str,
    (id, ifname): (&str, &str),
    created: &mut bool,
) -> Result<AttachedLinks> {
    host.create_veth(host_name, ifname, ns, conf.mtu)
        .map_err(nl_err(format!("creating veth {host_name} <-> {ifname}")))?;
    *created = true;
    let hv = host
        .link_by_name(host_name)
        .map_err(nl_err("reading the host veth"))?
        .ok_or_else(|| {
            CniError::new(NETLINK_FAILURE, "host veth vanished", host_name.to_string())
        })?;
    host.attach_port(hv.index, bridge.index, &alias(&conf.name, id, ifname))
        .map_err(nl_err(format!("attaching {host_name} to {}", conf.bridge)))?;
    if conf.hairpin_mode {
        host.set_hairpin(hv.index, true)
            .map_err(nl_err(format!("turning hairpin on for {host_name}")))?;
    }
    if conf.is_gateway || conf.is_default_gateway {
        for a in allocs {
            host.add_addr(bridge.index, a.range.gateway, a.range.prefix)
                .map_err(nl_err(format!(
                    "adding gateway {} to {}",
                    a.range.gateway, conf.bridge
                )))?;
        }
        // The bridge plugin turns forwarding on when the bridge is a gateway; without it
        // pods cannot leave the node. The sysctl is per network namespace.
        std::fs::write("/proc/sys/net/ipv4/ip_forward", "1").map_err(|e| {
            CniError::new(
                IO_FAILURE,
                "enabling IPv4 forwarding",
                format!("/proc/sys/net/ipv4/ip_forward: {e}"),
            )
        })?;
    }

    let cv = cont
        .link_by_name(ifname)
        .map_err(nl_err("reading the container interface"))?
        .ok_or_else(|| {
            CniError::new(
                NETLINK_FAILURE,
                "container interface vanished",
                ifname.to_string(),
            )
        })?;
    cont.set_up(cv.index)
        .map_err(nl_err(format!("bringing {ifname} up in the container")))?;
    for a in allocs {
        cont.add_addr(cv.index, a.ip, a.range.prefix)
            .map_err(nl_err(format!(
                "adding {}/{} to {ifname}",
                a.ip, a.range.prefix
            )))?;
    }
    for r in container_routes(conf, ipam, allocs) {
        let route = Route4 {
            dst: r.dst,
            prefix: r.prefix,
            gw: r.gw.or(Some(allocs[0].range.gateway)),
            oif: Some(cv.index),
        };
        cont.add_route(&route).map_err(nl_err(format!(
            "adding route {}/{} via {:?} in the container",
            r.dst, r.prefix, route.gw
        )))?;
    }
    // The spec leaves loopback to the runtime or the loopback plugin; skiff-cni is often
    // the only plugin, so it brings lo up itself (idempotent).
    if let Some(lo) = cont.link_by_name("lo").map_err(nl_err("reading lo"))? {
        cont.set_up(lo.index)
            .map_err(nl_err("bringing lo up in the container"))?;
    }
    let bridge = host
        .link_by_name(&conf.bridge)
        .map_err(nl_err("reading the bridge"))?
        .unwrap_or_else(|| bridge.clone());
    let cont_link = cont
        .link_by_name(ifname)
        .map_err(nl_err("reading the container interface"))?
        .unwrap_or(cv);
    let hv = host
        .link_by_name(host_name)
        .map_err(nl_err("reading the host veth"))?
        .unwrap_or(hv);
    Ok(AttachedLinks {
        bridge,
        host: hv,
        cont: cont_link,
    })
}

/// Routes for the container: IPAM's, plus the default route when isDefaultGateway.
fn container_routes(conf: &NetConf, ipam: &Ipam, allocs: &[Allocation]) -> Vec<RouteSpec> {
    let mut routes = ipam.routes.clone();
    if conf.is_default_gateway && !routes.iter().any(|r| r.prefix == 0) && !allocs.is_empty() {
        routes.push(RouteSpec {
            dst: Ipv4Addr::UNSPECIFIED,
            prefix: 0,
            gw: Some(allocs[0].range.gateway),
        });
    }
    routes
}

fn build_result(
    conf: &NetConf,
    ipam: &Ipam,
    allocs: &[Allocation],
    links: AttachedLinks,
    netns_path: &str,
    version: &str,
    prev: Option<PrevResult>,
) -> Value {
    let v11 = version == "1.1.0";
    let iface = |l: &nl::Link, sandbox: Option<&str>| {
        let mut m = Map::new();
        m.insert("name".into(), json!(l.name));
        m.insert("mac".into(), json!(l.mac));
        if v11 {
            // `mtu` in interfaces is new in 1.1.0.
            m.insert("mtu".into(), json!(l.mtu));
        }
        if let Some(s) = sandbox {
            m.insert("sandbox".into(), json!(s));
        }
        Value::Object(m)
    };
    let prev = prev.unwrap_or_default();
    let mut interfaces = prev.interfaces.clone();
    let base = interfaces.len();
    interfaces.push(iface(&links.bridge, None));
    interfaces.push(iface(&links.host, None));
    interfaces.push(iface(&links.cont, Some(netns_path)));
    let mut ips = prev.ips.clone();
    for a in allocs {
        let mut m = Map::new();
        if version == "0.4.0" {
            // 0.4.0 tags each IP with its family; 1.x dropped the field.
            m.insert("version".into(), json!("4"));
        }
        m.insert("interface".into(), json!(base + 2));
        m.insert(
            "address".into(),
            json!(format!("{}/{}", a.ip, a.range.prefix)),
        );
        m.insert("gateway".into(), json!(a.range.gateway.to_string()));
        ips.push(Value::Object(m));
    }
    let mut routes = prev.routes.clone();
    for r in container_routes(conf, ipam, allocs) {
        let mut m = Map::new();
        m.insert("dst".into(), json!(format!("{}/{}", r.dst, r.prefix)));
        if let Some(gw) = r.gw {
            m.insert("gw".into(), json!(gw.to_string()));
        }
        routes.push(Value::Object(m));
    }
    let dns = conf.dns.clone().or(prev.dns).unwrap_or_else(|| json!({}));
    json!({
        "cniVersion": version,
        "interfaces": interfaces,
        "ips": ips,
        "routes": routes,
        "dns": dns,
    })
}

/// The parts of a prevResult the plugin passes through or checks.
#[derive(Debug, Default, Clone)]
struct PrevResult {
    interfaces: Vec<Value>,
    ips: Vec<Value>,
    routes: Vec<Value>,
    dns: Option<Value>,
}

impl PrevResult {
    fn parse(v: &Value) -> Result<PrevResult> {
        let list = |k: &str| -> Result<Vec<Value>> {
            match v.get(k) {
                None | Some(Value::Null) => Ok(Vec::new()),
                Some(Value::Array(a)) => Ok(a.clone()),
                Some(_) => Err(CniError::new(
                    DECODE,
                    "invalid prevResult",
                    format!("prevResult.{k} must be an array"),
                )),
            }
        };
        if !v.is_object() {
            return Err(CniError::new(
                DECODE,
                "invalid prevResult",
                "prevResult must be an object",
            ));
        }
        Ok(PrevResult {
            interfaces: list("interfaces")?,
            ips: list("ips")?,
            routes: list("routes")?,
            dns: v.get("dns").cloned(),
        })
    }
}

fn cmd_del(conf: &NetConf, env: &Env) -> Result<()> {
    let id = env.container_id()?;
    let ifname = env.ifname()?;
    let ipam = conf.ipam()?;
    let mut host = Netlink::open().map_err(nl_err("opening a netlink socket"))?;
    // DEL must succeed when the namespace is gone and without prevResult (SPEC.md, DEL):
    // the host veth's name is derived, and a vanished namespace took its veth end along.
    let host_name = host_veth_name(&conf.name, id, ifname);
    if let Some(l) = host
        .link_by_name(&host_name)
        .map_err(nl_err(format!("looking up {host_name}")))?
    {
        // Only our own port: on a name-hash collision the link belongs to another
        // attachment (whose ADD succeeded where this one failed), and must stay.
        if l.alias.as_deref() == Some(alias(&conf.name, id, ifname).as_str()) {
            host.delete_link(l.index)
                .map_err(nl_err(format!("deleting {host_name}")))?;
        }
    }
    if let Some(path) = env.netns.as_deref() {
        if let Ok(ns) = File::open(path) {
            if let Ok(mut cont) = Netlink::open_in(&ns) {
                if let Some(l) = cont
                    .link_by_name(ifname)
                    .map_err(nl_err(format!("looking up {ifname} in the container")))?
                {
                    cont.delete_link(l.index)
                        .map_err(nl_err(format!("deleting {ifname} in the container")))?;
                }
            }
        }
    }
    // Nothing was ever allocated on this network: do not create its directory on DEL.
    if !ipam.data_dir.join(&conf.name).exists() {
        return Ok(());
    }
    lock_store(&ipam, &conf.name)?
        .release(id, ifname)
        .map_err(ipam_err)?;
    Ok(())
}

fn mismatch(details: String) -> CniError {
    CniError::new(
        CHECK_MISMATCH,
        "the attachment does not match prevResult",
        details,
    )
}

fn cmd_check(conf: &NetConf, env: &Env) -> Result<()> {
    let id = env.container_id()?;
    let ifname = env.ifname()?;
    let netns_path = env.netns()?;
    let ipam = conf.ipam()?;
    let prev = conf.prev_result.as_ref().ok_or_else(|| {
        CniError::new(
            INVALID_CONFIG,
            "CHECK needs prevResult",
            "the runtime must pass the ADD result as \"prevResult\"",
        )
    })?;
    let prev = PrevResult::parse(prev)?;
    let ns = open_netns(netns_path)?;
    let mut cont = netns_socket(&ns, netns_path)?;
    let mut host = Netlink::open().map_err(nl_err("opening a netlink socket"))?;

    let cv = cont
        .link_by_name(ifname)
        .map_err(nl_err("reading the container interface"))?
        .ok_or_else(|| mismatch(format!("{ifname} does not exist in {netns_path}")))?;
    let idx = prev.interfaces.iter().position(|i| {
        i.get("name").and_then(Value::as_str) == Some(ifname) && i.get("sandbox").is_some()
    });
    let Some(idx) = idx else {
        return Err(mismatch(format!(
            "prevResult lists no sandbox interface named {ifname}"
        )));
    };
    if let Some(mac) = prev.interfaces[idx].get("mac").and_then(Value::as_str) {
        if !mac.eq_ignore_ascii_case(&cv.mac) {
            return Err(mismatch(format!(
                "{ifname} has MAC {} but prevResult says {mac}",
                cv.mac
            )));
        }
    }
    let have = cont
        .addrs(Some(cv.index))
        .map_err(nl_err("reading container addresses"))?;
    let store = lock_store(&ipam, &conf.name)?;
    let held = store.reservations().map_err(ipam_err)?;
    drop(store);
    for ip in &prev.ips {
        if ip.get("interface").and_then(Value::as_u64) != Some(idx as u64) {
            continue;
        }
        let addr = ip.get("address").and_then(Value::as_str).unwrap_or("");
        let (a, p) = ipam::parse_cidr(addr).map_err(|e| {
            CniError::new(DECODE, "invalid prevResult", format!("ips[].address: {e}"))
        })?;
        if !have.iter().any(|(_, x, xp)| *x == a && *xp == p) {
            return Err(mismatch(format!("{ifname} lacks address {addr}")));
        }
        if !held
            .iter()
            .any(|(x, i, f)| *x == a && i == id && f == ifname)
        {
            return Err(mismatch(format!(
                "{a} is not reserved for {id}/{ifname} in {}",
                ipam.data_dir.join(&conf.name).display()
            )));
        }
    }
    let routes = cont.routes().map_err(nl_err("reading container routes"))?;
    for r in &prev.routes {
        let dst = r.get("dst").and_then(Value::as_str).unwrap_or("");
        let (d, p) = ipam::parse_cidr(dst).map_err(|e| {
            CniError::new(DECODE, "invalid prevResult", format!("routes[].dst: {e}"))
        })?;
        let gw: Option<Ipv4Addr> = r
            .get("gw")
            .and_then(Value::as_str)
            .and_then(|g| g.parse().ok());
        let found = routes
            .iter()
            .any(|x| x.dst == d && x.prefix == p && (gw.is_none() || x.gw == gw));
        if !found {
            return Err(mismatch(format!(
                "route {dst} via {gw:?} is missing in the container"
            )));
        }
    }
    let host_name = host_veth_name(&conf.name, id, ifname);
    let hv = host
        .link_by_name(&host_name)
        .map_err(nl_err("reading the host veth"))?
        .ok_or_else(|| mismatch(format!("host veth {host_name} does not exist")))?;
    let bridge = host
        .link_by_name(&conf.bridge)
        .map_err(nl_err("reading the bridge"))?
        .ok_or_else(|| mismatch(format!("bridge {} does not exist", conf.bridge)))?;
    if hv.master != Some(bridge.index) {
        return Err(mismatch(format!(
            "{host_name} is not attached to {}",
            conf.bridge
        )));
    }
    Ok(())
}

fn cmd_gc(conf: &NetConf) -> Result<()> {
    let ipam = conf.ipam()?;
    // Without the list every attachment would look stale; refuse rather than wipe the
    // node (libcni always sends it, empty when nothing is valid).
    let valid = conf.valid_attachments.clone().ok_or_else(|| {
        CniError::new(
            INVALID_CONFIG,
            "GC needs cni.dev/valid-attachments",
            "the runtime must pass \"cni.dev/valid-attachments\" (an empty list when no attachment is valid)",
        )
    })?;
    let is_valid = |id: &str, ifname: &str| {
        valid
            .iter()
            .any(|a| a.container_id == id && (a.ifname == ifname || ifname.is_empty()))
    };
    let mut host = Netlink::open().map_err(nl_err("opening a netlink socket"))?;
    for l in host.links().map_err(nl_err("listing links"))? {
        let Some((id, ifname)) = l.alias.as_deref().and_then(|a| parse_alias(a, &conf.name)) else {
            continue;
        };
        if !is_valid(id, ifname) {
            host.delete_link(l.index)
                .map_err(nl_err(format!("GC: deleting {}", l.name)))?;
        }
    }
    if !ipam.data_dir.join(&conf.name).exists() {
        return Ok(());
    }
    let store = lock_store(&ipam, &conf.name)?;
    for (ip, id, ifname) in store.reservations().map_err(ipam_err)? {
        if !is_valid(&id, &ifname) {
            store.release_ip(ip).map_err(ipam_err)?;
        }
    }
    Ok(())
}

/// Ready means: the config names at least one IPv4 range (the agent writes the node's pod
/// CIDR into `ipam.ranges`; until then the list is empty), the IPAM directory can be
/// created and locked, and every range set still has a free address.
fn cmd_status(conf: &NetConf) -> Result<()> {
    let ipam = conf.ipam()?;
    let not_ready =
        |details: String| CniError::new(NOT_AVAILABLE, "skiff-cni is not ready", details);
    if ipam.sets.is_empty() {
        return Err(not_ready(
            "\"ipam.ranges\" is empty: the node's pod CIDR has not been configured yet".into(),
        ));
    }
    let store = Store::lock(&ipam.data_dir, &conf.name).map_err(|e| not_ready(e.to_string()))?;
    if !store
        .has_free(&ipam.sets)
        .map_err(|e| not_ready(e.to_string()))?
    {
        return Err(not_ready(format!(
            "every address of network {} is allocated ({})",
            conf.name,
            Path::new(&ipam.data_dir).join(&conf.name).display()
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(cmd: &str) -> Vec<(String, String)> {
        vec![("CNI_COMMAND".into(), cmd.into())]
    }

    fn parse(o: &Outcome) -> Value {
        serde_json::from_str(o.stdout.as_deref().unwrap()).unwrap()
    }

    #[test]
    fn version_lists_supported() {
        let o = run(&vars("VERSION"), br#"{"cniVersion":"1.1.0"}"#);
        assert_eq!(o.exit_code, 0);
        assert_eq!(
            parse(&o),
            json!({"cniVersion": "1.1.0", "supportedVersions": ["0.4.0", "1.0.0", "1.1.0"]})
        );
    }

    #[test]
    fn decode_and_env_errors_are_spec_objects() {
        let o = run(&vars("ADD"), b"{not json");
        assert_ne!(o.exit_code, 0);
        let v = parse(&o);
        assert_eq!(v["code"], 6);
        assert_eq!(v["cniVersion"], "1.1.0");
        assert!(v["msg"].is_string() && v["details"].is_string());

        let o = run(&[], br#"{"cniVersion":"0.4.0"}"#);
        assert_eq!(parse(&o)["code"], 4);
        assert_eq!(parse(&o)["cniVersion"], "0.4.0");

        let o = run(&vars("FROB"), b"{}");
        assert_eq!(parse(&o)["code"], 4);

        let o = run(&vars("ADD"), br#"{"cniVersion":"0.3.1","name":"n"}"#);
        assert_eq!(parse(&o)["code"], 1);
    }

    #[test]
    fn gc_and_status_need_1_1() {
        let o = run(
            &vars("STATUS"),
            br#"{"cniVersion":"1.0.0","name":"n","ipam":{"subnet":"10.250.0.0/24"}}"#,
        );
        assert_eq!(parse(&o)["code"], 1);
    }

    #[test]
    fn status_not_ready_without_ranges() {
        let o = run(
            &vars("STATUS"),
            br#"{"cniVersion":"1.1.0","name":"n","ipam":{"type":"host-local","ranges":[]}}"#,
        );
        assert_eq!(parse(&o)["code"], 50);
    }

    #[test]
    fn veth_names_are_stable_and_short() {
        let a = host_veth_name("net", "c1", "eth0");
        assert_eq!(a, host_veth_name("net", "c1", "eth0"));
        assert_ne!(a, host_veth_name("net", "c1", "eth1"));
        assert_ne!(a, host_veth_name("net2", "c1", "eth0"));
        assert_eq!(a.len(), 12);
        assert_eq!(
            parse_alias(&alias("net", "c1", "eth0"), "net"),
            Some(("c1", "eth0"))
        );
        assert_eq!(parse_alias(&alias("net2", "c1", "eth0"), "net"), None);
    }
}
