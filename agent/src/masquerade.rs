//! The masquerade flags of `skiff-agent run`, checked and turned into datapath settings
//! before anything is attached (pure; the datapath side is `datapath::Masquerade`).
//!
//! Semantics follow ip-masq-agent: traffic from pods (the cluster CIDR) leaving through
//! an uplink gets the uplink's address, except towards the non-masquerade ranges, which
//! always include the cluster CIDR itself and the service CIDRs (pod-to-pod and
//! pod-to-service traffic keeps pod addresses), plus `--non-masquerade-cidr`; link-local
//! (169.254.0.0/16) is never masqueraded (enforced in the datapath).

use std::net::Ipv4Addr;

use crate::{datapath::DEFAULT_MASQUERADE_PORTS, translate::parse_cidr};

/// The flags as given.
#[derive(Debug, Clone, Default)]
pub struct MasqueradeFlags {
    /// `auto`, `on` or `off`.
    pub mode: String,
    /// `--masquerade-interface` (empty: derived from `-i`).
    pub interfaces: Vec<String>,
    /// `--cluster-cidr`.
    pub cluster_cidr: String,
    /// `--non-masquerade-cidr`.
    pub non_masquerade: Vec<String>,
    /// `--service-cidr` (exempt too).
    pub service_cidrs: Vec<String>,
    /// `--masquerade-port-range`, `MIN-MAX`.
    pub port_range: String,
}

/// What the flags mean, once checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MasqueradePlan {
    /// Uplinks to masquerade on (tc ingress and egress are attached to each).
    pub interfaces: Vec<String>,
    /// Masqueraded sources.
    pub cluster_cidr: (Ipv4Addr, u8),
    /// Exempt destinations: cluster CIDR, service CIDRs, `--non-masquerade-cidr`.
    pub non_masquerade: Vec<(Ipv4Addr, u8)>,
    /// Port range, inclusive.
    pub ports: (u16, u16),
}

fn cidr(flag: &str, v: &str) -> Result<(Ipv4Addr, u8), String> {
    match parse_cidr(v) {
        Some(Some(c)) => Ok(c),
        _ => Err(format!(
            "--{flag} {v:?} is not an IPv4 CIDR like 10.42.0.0/16"
        )),
    }
}

/// Checks the flags. `pod_network`: the agent runs the pod network (`--kubeconfig` with
/// `--pod-network direct`), which is what `auto` turns masquerade on for: with another
/// CNI, pod egress is that CNI's business. `tc_interfaces` are the `-i` interfaces; by
/// default every one of them except the pod bridge and the VXLAN device masquerades.
pub fn plan(
    flags: &MasqueradeFlags,
    pod_network: bool,
    tc_interfaces: &[String],
    bridge: &str,
) -> Result<Option<MasqueradePlan>, String> {
    let on = match flags.mode.as_str() {
        "auto" => pod_network,
        "on" | "true" => true,
        "off" | "false" => false,
        other => return Err(format!("--masquerade {other:?}: use auto, on or off")),
    };
    // Checked even when off, so a typo does not wait for the day it is turned on.
    let cluster_cidr = cidr("cluster-cidr", &flags.cluster_cidr)?;
    let mut non_masquerade = vec![cluster_cidr];
    for v in flags.service_cidrs.iter().filter(|v| !v.is_empty()) {
        non_masquerade.push(cidr("service-cidr", v)?);
    }
    for v in &flags.non_masquerade {
        non_masquerade.push(cidr("non-masquerade-cidr", v)?);
    }
    non_masquerade.sort();
    non_masquerade.dedup();
    let ports = flags
        .port_range
        .split_once('-')
        .and_then(|(a, b)| Some((a.trim().parse::<u16>().ok()?, b.trim().parse::<u16>().ok()?)))
        .filter(|(a, b)| *a >= 1 && a <= b)
        .ok_or_else(|| {
            format!(
                "--masquerade-port-range {:?} is not MIN-MAX with 1 <= MIN <= MAX <= 65535, like {}-{}",
                flags.port_range, DEFAULT_MASQUERADE_PORTS.0, DEFAULT_MASQUERADE_PORTS.1
            )
        })?;
    if !on {
        return Ok(None);
    }
    let interfaces: Vec<String> = if flags.interfaces.is_empty() {
        tc_interfaces
            .iter()
            .filter(|i| *i != bridge && *i != crate::netsetup::VXLAN_DEVICE)
            .cloned()
            .collect()
    } else {
        flags.interfaces.clone()
    };
    if interfaces.is_empty() {
        return Err(format!(
            "--masquerade is on but no uplink is left to masquerade on (the -i interfaces are \
             only the pod bridge {bridge:?}): name the uplink with --masquerade-interface, or \
             pass --masquerade off"
        ));
    }
    if let Some(i) = interfaces.iter().find(|i| *i == bridge) {
        return Err(format!(
            "--masquerade-interface {i:?} is the pod bridge: masquerade belongs on the uplink \
             traffic leaves the node through"
        ));
    }
    Ok(Some(MasqueradePlan {
        interfaces,
        cluster_cidr,
        non_masquerade,
        ports,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flags(mode: &str) -> MasqueradeFlags {
        MasqueradeFlags {
            mode: mode.into(),
            interfaces: vec![],
            cluster_cidr: "10.42.0.0/16".into(),
            non_masquerade: vec!["192.168.0.0/16".into()],
            service_cidrs: vec!["10.43.0.0/16".into()],
            port_range: "61000-65535".into(),
        }
    }

    fn ifaces(names: &[&str]) -> Vec<String> {
        names.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn auto_follows_the_pod_network_and_skips_the_bridge() {
        let tc = ifaces(&["eth0", "skiff0", "skiff.vxlan"]);
        assert_eq!(plan(&flags("auto"), false, &tc, "skiff0"), Ok(None));
        let p = plan(&flags("auto"), true, &tc, "skiff0").unwrap().unwrap();
        assert_eq!(p.interfaces, ifaces(&["eth0"]));
        assert_eq!(p.cluster_cidr, (Ipv4Addr::new(10, 42, 0, 0), 16));
        assert_eq!(
            p.non_masquerade,
            vec![
                (Ipv4Addr::new(10, 42, 0, 0), 16),
                (Ipv4Addr::new(10, 43, 0, 0), 16),
                (Ipv4Addr::new(192, 168, 0, 0), 16),
            ]
        );
        assert_eq!(p.ports, (61000, 65535));
        assert!(plan(&flags("off"), true, &tc, "skiff0").unwrap().is_none());
        assert!(plan(&flags("on"), false, &tc, "skiff0").unwrap().is_some());
    }

    #[test]
    fn bad_flags_are_named() {
        let tc = ifaces(&["eth0"]);
        let mut f = flags("sometimes");
        assert!(plan(&f, true, &tc, "skiff0")
            .unwrap_err()
            .contains("--masquerade \"sometimes\""));
        f = flags("off");
        f.cluster_cidr = "10.42.0.0".into();
        assert!(plan(&f, true, &tc, "skiff0")
            .unwrap_err()
            .contains("--cluster-cidr"));
        f = flags("on");
        f.non_masquerade = vec!["nope".into()];
        assert!(plan(&f, true, &tc, "skiff0")
            .unwrap_err()
            .contains("--non-masquerade-cidr \"nope\""));
        for bad in ["0-10", "65535-61000", "61000", "a-b"] {
            f = flags("on");
            f.port_range = bad.into();
            assert!(plan(&f, true, &tc, "skiff0")
                .unwrap_err()
                .contains("--masquerade-port-range"));
        }
        f = flags("on");
        assert!(plan(&f, true, &ifaces(&["skiff0"]), "skiff0")
            .unwrap_err()
            .contains("--masquerade-interface"));
        f.interfaces = ifaces(&["skiff0"]);
        assert!(plan(&f, true, &tc, "skiff0")
            .unwrap_err()
            .contains("is the pod bridge"));
    }
}
