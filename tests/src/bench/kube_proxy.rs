//! The nat-table ruleset kube-proxy's iptables mode writes for N services, generated from
//! the templates of `shared/design/datapath.md` §3.3 (taken from kube-proxy's
//! proxier_test.go): KUBE-SERVICES → KUBE-SVC (statistic-random cascade) → KUBE-SEP,
//! KUBE-MARK-MASQ, KUBE-NODEPORTS last. Only the nat table: it is what every new
//! connection walks (the filter-table chains only accept or reject and are O(1) here).

use std::{fmt::Write as _, net::Ipv4Addr};

use sha2::{Digest as _, Sha256};

/// One service port with its endpoints, as kube-proxy sees it.
#[derive(Debug, Clone)]
pub struct SvcPort {
    pub namespace: String,
    pub name: String,
    pub port_name: String,
    pub cluster_ip: Ipv4Addr,
    pub port: u16,
    pub node_port: Option<u16>,
    pub endpoints: Vec<(Ipv4Addr, u16)>,
}

impl SvcPort {
    fn port_name(&self) -> String {
        format!("{}/{}:{}", self.namespace, self.name, self.port_name)
    }
}

/// RFC 4648 base32 (standard alphabet, no padding), as Go's base32.StdEncoding.
fn base32(data: &[u8]) -> String {
    const ALPHABET: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let mut out = String::new();
    let (mut buf, mut bits) = (0u32, 0u32);
    for &b in data {
        buf = (buf << 8) | u32::from(b);
        bits += 8;
        while bits >= 5 {
            bits -= 5;
            out.push(ALPHABET[((buf >> bits) & 31) as usize] as char);
        }
    }
    if bits > 0 {
        out.push(ALPHABET[((buf << (5 - bits)) & 31) as usize] as char);
    }
    out
}

/// kube-proxy's chain suffix: the first 16 characters of base32(sha256(s)).
pub fn chain_hash(s: &str) -> String {
    base32(&Sha256::digest(s.as_bytes()))[..16].to_owned()
}

/// `iptables-restore` input for `services` (nat table only).
pub fn ruleset(services: &[SvcPort], cluster_cidr: &str) -> String {
    let mut chains = String::new();
    let mut rules = String::new();
    let mut nodeports = String::new();
    for base in [
        "KUBE-SERVICES",
        "KUBE-NODEPORTS",
        "KUBE-POSTROUTING",
        "KUBE-MARK-MASQ",
    ] {
        let _ = writeln!(chains, ":{base} - [0:0]");
    }
    let _ = writeln!(
        rules,
        "-A PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES"
    );
    let _ = writeln!(
        rules,
        "-A OUTPUT -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES"
    );
    let _ = writeln!(
        rules,
        "-A POSTROUTING -m comment --comment \"kubernetes postrouting rules\" -j KUBE-POSTROUTING"
    );
    let _ = writeln!(rules, "-A KUBE-MARK-MASQ -j MARK --or-mark 0x4000");
    let _ = writeln!(
        rules,
        "-A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN"
    );
    let _ = writeln!(rules, "-A KUBE-POSTROUTING -j MARK --xor-mark 0x4000");
    let _ = writeln!(
        rules,
        "-A KUBE-POSTROUTING -m comment --comment \"kubernetes service traffic requiring SNAT\" -j MASQUERADE --random-fully"
    );
    for s in services {
        let spn = s.port_name();
        let h = chain_hash(&format!("{spn}tcp"));
        let svc = format!("KUBE-SVC-{h}");
        let _ = writeln!(chains, ":{svc} - [0:0]");
        let _ = writeln!(
            rules,
            "-A KUBE-SERVICES -m comment --comment \"{spn} cluster IP\" -m tcp -p tcp -d {}/32 --dport {} -j {svc}",
            s.cluster_ip, s.port
        );
        let _ = writeln!(
            rules,
            "-A {svc} -m comment --comment \"{spn} cluster IP\" -m tcp -p tcp -d {}/32 --dport {} ! -s {cluster_cidr} -j KUBE-MARK-MASQ",
            s.cluster_ip, s.port
        );
        if let Some(np) = s.node_port {
            let ext = format!("KUBE-EXT-{h}");
            let _ = writeln!(chains, ":{ext} - [0:0]");
            let _ = writeln!(
                nodeports,
                "-A KUBE-NODEPORTS -m comment --comment {spn} -m tcp -p tcp --dport {np} -j {ext}"
            );
            let _ = writeln!(
                rules,
                "-A {ext} -m comment --comment \"masquerade traffic for {spn} external destinations\" -j KUBE-MARK-MASQ"
            );
            let _ = writeln!(rules, "-A {ext} -j {svc}");
        }
        let n = s.endpoints.len();
        for (i, (ip, port)) in s.endpoints.iter().enumerate() {
            let sep = format!("KUBE-SEP-{}", chain_hash(&format!("{spn}tcp{ip}:{port}")));
            let _ = writeln!(chains, ":{sep} - [0:0]");
            if i + 1 < n {
                let _ = writeln!(
                    rules,
                    "-A {svc} -m comment --comment \"{spn} -> {ip}:{port}\" -m statistic --mode random --probability {:.10} -j {sep}",
                    1.0 / (n - i) as f64
                );
            } else {
                let _ = writeln!(
                    rules,
                    "-A {svc} -m comment --comment \"{spn} -> {ip}:{port}\" -j {sep}"
                );
            }
            let _ = writeln!(
                rules,
                "-A {sep} -m comment --comment {spn} -s {ip}/32 -j KUBE-MARK-MASQ"
            );
            let _ = writeln!(
                rules,
                "-A {sep} -m comment --comment {spn} -m tcp -p tcp -j DNAT --to-destination {ip}:{port}"
            );
        }
    }
    rules.push_str(&nodeports);
    let _ = writeln!(
        rules,
        "-A KUBE-SERVICES -m comment --comment \"kubernetes service nodeports; NOTE: this must be the last rule in this chain\" -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS"
    );
    format!("*nat\n{chains}{rules}COMMIT\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chain_names_match_kube_proxy() {
        // Values from datapath.md §3.3, verified against kube-proxy's own naming.
        assert_eq!(chain_hash("ns1/svc1:p80tcp"), "XPGD46QRK7WJZT7O");
        assert_eq!(
            chain_hash("ns1/svc1:p80tcp10.180.0.1:80"),
            "SXIVWICOYRO3J4NJ"
        );
    }

    #[test]
    fn rule_count_follows_the_model() {
        let svc = |i: u8, eps: usize| SvcPort {
            namespace: "ns".into(),
            name: format!("s{i}"),
            port_name: "p".into(),
            cluster_ip: Ipv4Addr::new(10, 43, 0, i),
            port: 80,
            node_port: Some(30000 + u16::from(i)),
            endpoints: (0..eps)
                .map(|e| (Ipv4Addr::new(10, 42, i, e as u8), 8080))
                .collect(),
        };
        let text = ruleset(&[svc(1, 3), svc(2, 10)], "10.42.0.0/16");
        let rules = text.lines().filter(|l| l.starts_with("-A ")).count();
        // 7 fixed + last KUBE-SERVICES rule; per service: 2 + 3E + (2 NodePort... 1 in
        // KUBE-NODEPORTS + 2 in KUBE-EXT).
        assert_eq!(rules, 8 + (2 + 9 + 3) + (2 + 30 + 3));
        assert!(text.contains("--probability 0.3333333333 -j KUBE-SEP-"));
        assert!(text
            .lines()
            .rev()
            .nth(1)
            .unwrap()
            .contains("--dst-type LOCAL -j KUBE-NODEPORTS"));
    }
}
