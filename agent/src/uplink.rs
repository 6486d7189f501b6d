//! Which interfaces face the node's network, when `skiff-agent run` is not told (`-i`):
//! the ones holding the node's addresses (`--node-address`). A DaemonSet on an existing
//! cluster cannot name interfaces per node (eth0, ens5, enp1s0...), but it knows the
//! node's address (`status.hostIP` through the downward API), and NodePort/LoadBalancer
//! traffic from outside arrives on the interface that holds it.

use std::net::Ipv4Addr;

/// Pure part: the names of the links (index → name) holding any of `node_addresses`,
/// in address order, without duplicates; an address no link holds is an error naming it.
pub fn pick(
    node_addresses: &[Ipv4Addr],
    addrs: &[(u32, Ipv4Addr, u8)],
    links: &[(u32, String)],
) -> Result<Vec<String>, String> {
    if node_addresses.is_empty() {
        return Err(
            "no interfaces to attach to: give -i/--interface, or --node-address so the agent \
             attaches to the interfaces holding the node's addresses"
                .into(),
        );
    }
    let mut out = Vec::new();
    for want in node_addresses {
        let Some((index, ..)) = addrs.iter().find(|(_, a, _)| a == want) else {
            return Err(format!(
                "--node-address {want} is not an address of any interface in this network \
                 namespace (see `ip -4 addr`); give -i/--interface explicitly"
            ));
        };
        let name = links
            .iter()
            .find(|(i, _)| i == index)
            .map(|(_, n)| n.clone())
            .ok_or_else(|| format!("interface #{index} holding {want} vanished"))?;
        if !out.contains(&name) {
            out.push(name);
        }
    }
    Ok(out)
}

/// The interfaces holding `node_addresses` in the current network namespace.
pub fn interfaces_for(node_addresses: &[Ipv4Addr]) -> Result<Vec<String>, String> {
    let mut nl = skiff_cni::nl::Netlink::open().map_err(|e| format!("netlink: {e}"))?;
    let addrs = nl
        .addrs(None)
        .map_err(|e| format!("listing addresses: {e}"))?;
    let links: Vec<(u32, String)> = nl
        .links()
        .map_err(|e| format!("listing links: {e}"))?
        .into_iter()
        .map(|l| (l.index, l.name))
        .collect();
    pick(node_addresses, &addrs, &links)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn picks_the_interfaces_holding_the_node_addresses_once_each() {
        let a = |s: &str| s.parse::<Ipv4Addr>().unwrap();
        let addrs = [
            (1, a("127.0.0.1"), 8),
            (2, a("10.0.0.5"), 24),
            (2, a("10.0.1.5"), 24),
            (3, a("192.0.2.7"), 24),
        ];
        let links = [
            (1, "lo".to_string()),
            (2, "ens5".to_string()),
            (3, "eth1".to_string()),
        ];
        assert_eq!(
            pick(&[a("10.0.1.5"), a("10.0.0.5")], &addrs, &links).unwrap(),
            ["ens5"]
        );
        assert_eq!(
            pick(&[a("192.0.2.7"), a("10.0.0.5")], &addrs, &links).unwrap(),
            ["eth1", "ens5"]
        );
        let err = pick(&[a("203.0.113.1")], &addrs, &links).unwrap_err();
        assert!(
            err.contains("203.0.113.1 is not an address of any interface"),
            "{err}"
        );
        assert!(pick(&[], &addrs, &links)
            .unwrap_err()
            .contains("give -i/--interface"));
    }
}
