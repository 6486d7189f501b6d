//! Network configuration (stdin) and environment (CNI_*) parsing and validation.

use std::{net::Ipv4Addr, path::PathBuf};

use serde::Deserialize;
use serde_json::Value;

use crate::{
    error::{
        CniError, Result, DECODE, INCOMPATIBLE_VERSION, INVALID_CONFIG, INVALID_ENV,
        UNSUPPORTED_FIELD,
    },
    ipam::{self, Range},
};

/// Versions this plugin speaks, oldest first.
pub const SUPPORTED: [&str; 3] = ["0.4.0", "1.0.0", "1.1.0"];
pub const LATEST: &str = "1.1.0";

/// host-local's default `dataDir`.
pub const DEFAULT_DATA_DIR: &str = "/var/lib/cni/networks";
pub const DEFAULT_BRIDGE: &str = "skiff0";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    Add,
    Del,
    Check,
    Gc,
    Status,
    Version,
}

impl Command {
    pub fn parse(s: &str) -> Option<Command> {
        Some(match s {
            "ADD" => Command::Add,
            "DEL" => Command::Del,
            "CHECK" => Command::Check,
            "GC" => Command::Gc,
            "STATUS" => Command::Status,
            "VERSION" => Command::Version,
            _ => return None,
        })
    }
}

/// The CNI_* environment of one invocation.
#[derive(Debug, Clone, Default)]
pub struct Env {
    pub container_id: Option<String>,
    pub netns: Option<String>,
    pub ifname: Option<String>,
}

impl Env {
    pub fn from_vars(vars: &[(String, String)]) -> Env {
        let get = |k: &str| {
            vars.iter()
                .find(|(n, _)| n == k)
                .map(|(_, v)| v.clone())
                .filter(|v| !v.is_empty())
        };
        Env {
            container_id: get("CNI_CONTAINERID"),
            netns: get("CNI_NETNS"),
            ifname: get("CNI_IFNAME"),
        }
    }

    /// CNI_CONTAINERID, required and well-formed: "must start with an alphanumeric
    /// character, optionally followed by any combination of one or more alphanumeric
    /// characters, underscore, dot or hyphen" (SPEC.md, Parameters).
    pub fn container_id(&self) -> Result<&str> {
        let id = self.container_id.as_deref().ok_or_else(|| {
            CniError::new(
                INVALID_ENV,
                "CNI_CONTAINERID is missing",
                "the runtime must set CNI_CONTAINERID for ADD, DEL, CHECK",
            )
        })?;
        let mut chars = id.chars();
        let first_ok = chars.next().is_some_and(|c| c.is_ascii_alphanumeric());
        if !first_ok || !chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-')) {
            return Err(CniError::new(
                INVALID_ENV,
                "CNI_CONTAINERID is invalid",
                format!(
                    "{id:?}: must start with a letter or digit followed by letters, digits, '_', '.' or '-'"
                ),
            ));
        }
        Ok(id)
    }

    /// CNI_IFNAME, required and a valid Linux interface name.
    pub fn ifname(&self) -> Result<&str> {
        let name = self.ifname.as_deref().ok_or_else(|| {
            CniError::new(
                INVALID_ENV,
                "CNI_IFNAME is missing",
                "the runtime must set CNI_IFNAME (e.g. eth0) for ADD, DEL, CHECK",
            )
        })?;
        valid_ifname(name).map_err(|why| {
            CniError::new(
                INVALID_ENV,
                "CNI_IFNAME is invalid",
                format!("{name:?}: {why}"),
            )
        })?;
        Ok(name)
    }

    /// CNI_NETNS, required for ADD and CHECK; an absolute path.
    pub fn netns(&self) -> Result<&str> {
        let ns = self.netns.as_deref().ok_or_else(|| {
            CniError::new(
                INVALID_ENV,
                "CNI_NETNS is missing",
                "the runtime must set CNI_NETNS to the container's network namespace path for ADD and CHECK",
            )
        })?;
        if !ns.starts_with('/') {
            return Err(CniError::new(
                INVALID_ENV,
                "CNI_NETNS is invalid",
                format!("{ns:?} is not an absolute path (e.g. /run/netns/x or /proc/<pid>/ns/net)"),
            ));
        }
        Ok(ns)
    }
}

/// Linux interface name rules (dev_valid_name): 1..=15 bytes, not "." or "..", no '/',
/// ':' or whitespace.
pub fn valid_ifname(name: &str) -> std::result::Result<(), &'static str> {
    if name.is_empty() || name.len() > 15 {
        return Err("must be 1 to 15 bytes long");
    }
    if name == "." || name == ".." {
        return Err("must not be '.' or '..'");
    }
    if name
        .chars()
        .any(|c| c == '/' || c == ':' || c.is_whitespace())
    {
        return Err("must not contain '/', ':' or whitespace");
    }
    Ok(())
}

#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Attachment {
    #[serde(rename = "containerID")]
    pub container_id: String,
    pub ifname: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RouteConf {
    pub dst: String,
    pub gw: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RangeConf {
    pub subnet: String,
    pub range_start: Option<String>,
    pub range_end: Option<String>,
    pub gateway: Option<String>,
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct IpamConf {
    #[serde(rename = "type", default)]
    pub ipam_type: String,
    pub ranges: Option<Vec<Vec<RangeConf>>>,
    // The legacy single-range form host-local still accepts.
    pub subnet: Option<String>,
    pub range_start: Option<String>,
    pub range_end: Option<String>,
    pub gateway: Option<String>,
    #[serde(default)]
    pub routes: Vec<RouteConf>,
    pub data_dir: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NetConf {
    #[serde(default)]
    pub name: String,
    #[serde(default = "default_bridge")]
    pub bridge: String,
    #[serde(default)]
    pub is_gateway: bool,
    #[serde(default)]
    pub is_default_gateway: bool,
    pub mtu: Option<u32>,
    /// skiff's pods reach their own Services through the bridge (a Service VIP can
    /// translate back to the sending pod), so hairpin is on unless turned off.
    #[serde(default = "yes")]
    pub hairpin_mode: bool,
    pub ipam: Option<IpamConf>,
    pub dns: Option<Value>,
    pub prev_result: Option<Value>,
    /// bridge-plugin keys skiff-cni does not implement; refused (code 2) when set rather
    /// than silently ignored.
    #[serde(default)]
    pub ip_masq: bool,
    #[serde(default)]
    pub vlan: u32,
    #[serde(default)]
    pub promisc_mode: bool,
    #[serde(rename = "cni.dev/valid-attachments")]
    pub valid_attachments: Option<Vec<Attachment>>,
}

fn default_bridge() -> String {
    DEFAULT_BRIDGE.to_string()
}

fn yes() -> bool {
    true
}

/// A route to install in the container and report in the result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteSpec {
    pub dst: Ipv4Addr,
    pub prefix: u8,
    /// As configured (reported as is); the installed route falls back to the gateway.
    pub gw: Option<Ipv4Addr>,
}

/// Validated IPAM settings.
#[derive(Debug, Clone)]
pub struct Ipam {
    pub sets: Vec<Vec<Range>>,
    pub routes: Vec<RouteSpec>,
    pub data_dir: PathBuf,
}

fn invalid(msg: &str, details: impl Into<String>) -> CniError {
    CniError::new(INVALID_CONFIG, msg, details)
}

impl NetConf {
    /// Parses and validates the parts every command needs.
    pub fn parse(v: &Value) -> Result<NetConf> {
        let conf: NetConf = serde_json::from_value(v.clone())
            .map_err(|e| invalid("invalid network configuration", e.to_string()))?;
        let name_ok = {
            let mut c = conf.name.chars();
            c.next().is_some_and(|c| c.is_ascii_alphanumeric())
                && c.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
        };
        // The name becomes a directory under dataDir, so it must not be a path.
        if !name_ok {
            return Err(invalid(
                "invalid network name",
                format!(
                    "\"name\": {:?} must start with a letter or digit followed by letters, digits, '_', '.' or '-'",
                    conf.name
                ),
            ));
        }
        valid_ifname(&conf.bridge).map_err(|why| {
            invalid(
                "invalid bridge name",
                format!("\"bridge\": {:?} {why}", conf.bridge),
            )
        })?;
        for (key, set) in [
            ("ipMasq", conf.ip_masq),
            ("vlan", conf.vlan != 0),
            ("promiscMode", conf.promisc_mode),
        ] {
            if set {
                return Err(CniError::new(
                    UNSUPPORTED_FIELD,
                    format!("unsupported field \"{key}\""),
                    format!(
                        "skiff-cni does not implement the bridge plugin's \"{key}\" (masquerading is the skiff agent's job); remove it from the config"
                    ),
                ));
            }
        }
        if let Some(mtu) = conf.mtu {
            if !(68..=65535).contains(&mtu) {
                return Err(invalid(
                    "invalid mtu",
                    format!("\"mtu\": {mtu} is outside 68..=65535"),
                ));
            }
        }
        Ok(conf)
    }

    /// The IPAM section, validated. Zero range sets is allowed here (STATUS reports it).
    pub fn ipam(&self) -> Result<Ipam> {
        let ipam = self.ipam.clone().ok_or_else(|| {
            invalid(
                "missing \"ipam\"",
                "skiff-cni needs an \"ipam\" section with host-local keys (ranges, dataDir)",
            )
        })?;
        if !matches!(ipam.ipam_type.as_str(), "" | "host-local" | "skiff") {
            return Err(invalid(
                "unsupported ipam type",
                format!(
                    "\"ipam.type\": {:?}: skiff-cni has built-in host-local IPAM only; use \"host-local\"",
                    ipam.ipam_type
                ),
            ));
        }
        let mut confs = ipam.ranges.clone().unwrap_or_default();
        if let Some(subnet) = &ipam.subnet {
            confs.insert(
                0,
                vec![RangeConf {
                    subnet: subnet.clone(),
                    range_start: ipam.range_start.clone(),
                    range_end: ipam.range_end.clone(),
                    gateway: ipam.gateway.clone(),
                }],
            );
        }
        let mut sets = Vec::new();
        for (i, set) in confs.iter().enumerate() {
            if set.is_empty() {
                return Err(invalid(
                    "invalid ipam range set",
                    format!("\"ipam.ranges[{i}]\" is empty"),
                ));
            }
            let mut ranges = Vec::new();
            for (j, r) in set.iter().enumerate() {
                ranges.push(
                    Range::new(
                        &r.subnet,
                        r.range_start.as_deref(),
                        r.range_end.as_deref(),
                        r.gateway.as_deref(),
                    )
                    .map_err(|e| {
                        invalid("invalid ipam range", format!("ipam.ranges[{i}][{j}]: {e}"))
                    })?,
                );
            }
            ipam::check_set(&ranges)
                .map_err(|e| invalid("invalid ipam range set", format!("ipam.ranges[{i}]: {e}")))?;
            sets.push(ranges);
        }
        let mut routes = Vec::new();
        for (i, r) in ipam.routes.iter().enumerate() {
            let (dst, prefix) = ipam::parse_cidr(&r.dst)
                .map_err(|e| invalid("invalid ipam route", format!("ipam.routes[{i}].dst: {e}")))?;
            let dst = Ipv4Addr::from(u32::from(dst) & ipam::prefix_mask(prefix));
            let gw = match &r.gw {
                None => None,
                Some(g) => Some(g.parse().map_err(|_| {
                    invalid(
                        "invalid ipam route",
                        format!("ipam.routes[{i}].gw: {g:?} is not an IPv4 address"),
                    )
                })?),
            };
            routes.push(RouteSpec { dst, prefix, gw });
        }
        Ok(Ipam {
            sets,
            routes,
            data_dir: PathBuf::from(ipam.data_dir.as_deref().unwrap_or(DEFAULT_DATA_DIR)),
        })
    }
}

/// Orders versions numerically ("1.10.0" > "1.9.0").
fn version_key(v: &str) -> Vec<u32> {
    v.split('.').map(|p| p.parse().unwrap_or(0)).collect()
}

/// Picks the version to speak: with `cniVersions`, the highest one both sides support;
/// otherwise `cniVersion`, which must be supported.
pub fn negotiate(v: &Value) -> Result<String> {
    let unsupported = |what: String| {
        CniError::new(
            INCOMPATIBLE_VERSION,
            "incompatible CNI version",
            format!("{what}; skiff-cni supports {}", SUPPORTED.join(", ")),
        )
    };
    if let Some(list) = v.get("cniVersions") {
        let list = list.as_array().ok_or_else(|| {
            CniError::new(
                DECODE,
                "invalid cniVersions",
                "\"cniVersions\" must be an array of strings",
            )
        })?;
        let best = list
            .iter()
            .filter_map(Value::as_str)
            .filter(|s| SUPPORTED.contains(s))
            .max_by_key(|s| version_key(s));
        return best
            .map(str::to_string)
            .ok_or_else(|| unsupported(format!("none of cniVersions {list:?} is supported")));
    }
    match v.get("cniVersion") {
        Some(Value::String(s)) if SUPPORTED.contains(&s.as_str()) => Ok(s.clone()),
        Some(Value::String(s)) => Err(unsupported(format!("cniVersion {s:?} is not supported"))),
        Some(_) => Err(CniError::new(
            DECODE,
            "invalid cniVersion",
            "\"cniVersion\" must be a string such as \"1.1.0\"",
        )),
        None => Err(invalid(
            "missing cniVersion",
            "the network configuration must set \"cniVersion\" (or \"cniVersions\")",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn negotiation_picks_highest_shared() {
        assert_eq!(
            negotiate(&json!({"cniVersions": ["0.3.1", "1.0.0", "0.4.0", "9.9.9"]})).unwrap(),
            "1.0.0"
        );
        assert_eq!(negotiate(&json!({"cniVersion": "0.4.0"})).unwrap(), "0.4.0");
        assert_eq!(
            negotiate(&json!({"cniVersion": "0.3.1"})).unwrap_err().code,
            INCOMPATIBLE_VERSION
        );
        assert_eq!(
            negotiate(&json!({"cniVersions": ["0.2.0"]}))
                .unwrap_err()
                .code,
            INCOMPATIBLE_VERSION
        );
        assert_eq!(negotiate(&json!({})).unwrap_err().code, INVALID_CONFIG);
    }

    #[test]
    fn container_id_format() {
        let env = |id: &str| Env {
            container_id: Some(id.into()),
            ..Env::default()
        };
        assert!(env("a1_b.c-d").container_id().is_ok());
        for bad in ["-abc", "_x", "a/b", "a b", "é"] {
            assert_eq!(
                env(bad).container_id().unwrap_err().code,
                INVALID_ENV,
                "{bad}"
            );
        }
        assert_eq!(Env::default().container_id().unwrap_err().code, INVALID_ENV);
    }

    #[test]
    fn network_name_cannot_escape_data_dir() {
        let err = NetConf::parse(&json!({"name": "../etc"})).unwrap_err();
        assert_eq!(err.code, INVALID_CONFIG);
    }

    #[test]
    fn legacy_subnet_and_routes() {
        let conf = NetConf::parse(&json!({
            "name": "n", "ipam": {"type": "host-local", "subnet": "10.250.0.0/24",
            "routes": [{"dst": "0.0.0.0/0"}, {"dst": "10.9.0.0/16", "gw": "10.250.0.9"}]}
        }))
        .unwrap();
        let ipam = conf.ipam().unwrap();
        assert_eq!(ipam.sets.len(), 1);
        assert_eq!(ipam.routes[1].gw, Some(Ipv4Addr::new(10, 250, 0, 9)));
        assert_eq!(ipam.data_dir, PathBuf::from(DEFAULT_DATA_DIR));
        let masq = NetConf::parse(&json!({"name": "n", "ipMasq": true})).unwrap_err();
        assert_eq!(masq.code, UNSUPPORTED_FIELD);
        let bad = NetConf::parse(&json!({"name": "n", "ipam": {"type": "dhcp"}})).unwrap();
        assert_eq!(bad.ipam().unwrap_err().code, INVALID_CONFIG);
    }
}
