//! A pod's `/etc/resolv.conf`, by the kubelet's rules (pkg/kubelet/network/dns/dns.go):
//!
//! - `dnsPolicy: ClusterFirst` (the default): `nameserver <cluster DNS>`, `search
//!   <ns>.svc.<domain> svc.<domain> <domain>` followed by the node's search domains,
//!   `options ndots:5`. A hostNetwork pod with ClusterFirst gets the node's resolv.conf
//!   instead, unless it asks for `ClusterFirstWithHostNet`. With no cluster DNS configured
//!   ClusterFirst falls back to the node's (the kubelet does the same, with a warning).
//! - `Default`: the node's resolv.conf (nameservers, search, options).
//! - `None`: only `spec.dnsConfig` (which the API requires then).
//! - `spec.dnsConfig` is merged on top of any of these: nameservers and searches appended
//!   without duplicates, options merged by name (the pod's value wins).
//! - Limits as the kubelet's: at most 3 nameservers (glibc's MAXNS), at most 32 search
//!   domains and 2048 characters of search list; the rest is dropped.
//!
//! The file is written into the pod's state directory at every container start (so a
//! changed node resolv.conf reaches restarted containers) and bind-mounted read-only over
//! `/etc/resolv.conf` in the container's private mount namespace (skiff.local/host) or
//! inside its root filesystem (skiff.local/rootfs), unless the container mounts a volume
//! there itself.

use std::{
    net::IpAddr,
    path::{Path, PathBuf},
};

use k8s_openapi::api::core::v1::{Container, Pod};

use crate::volumes::Mount;

/// The runtime's DNS settings (the kubelet's `--cluster-dns`, `--cluster-domain`,
/// `--resolv-conf`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsConfig {
    /// The cluster DNS Service's ClusterIP(s); empty: ClusterFirst behaves as Default.
    pub cluster_dns: Vec<IpAddr>,
    pub cluster_domain: String,
    /// The node's resolv.conf (for `Default` and the node's search domains). On hosts
    /// whose /etc/resolv.conf points at a loopback stub (systemd-resolved's 127.0.0.53),
    /// use the real one (`/run/systemd/resolve/resolv.conf`), as for a kubelet.
    pub resolv_conf: PathBuf,
}

impl Default for DnsConfig {
    fn default() -> Self {
        DnsConfig {
            cluster_dns: Vec::new(),
            cluster_domain: "cluster.local".into(),
            resolv_conf: PathBuf::from("/etc/resolv.conf"),
        }
    }
}

/// The kubelet's limits (validation.MaxDNSNameservers / MaxDNSSearchPaths /
/// MaxDNSSearchListChars).
const MAX_NAMESERVERS: usize = 3;
const MAX_SEARCHES: usize = 32;
const MAX_SEARCH_CHARS: usize = 2048;

/// The contents of a resolv.conf.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ResolvConf {
    pub nameservers: Vec<String>,
    pub searches: Vec<String>,
    /// `name` or `name:value`.
    pub options: Vec<String>,
}

impl ResolvConf {
    /// Parses resolv.conf(5) as the kubelet does: `nameserver` lines accumulate, the last
    /// `search` line wins, `options` accumulate; comments and other keywords are ignored.
    pub fn parse(text: &str) -> ResolvConf {
        let mut r = ResolvConf::default();
        for line in text.lines() {
            let line = line.split(['#', ';']).next().unwrap_or("");
            let mut f = line.split_whitespace();
            match f.next() {
                Some("nameserver") => r.nameservers.extend(f.next().map(str::to_owned)),
                Some("search") => {
                    r.searches = f
                        .map(|s| s.trim_end_matches('.').to_owned())
                        .filter(|s| !s.is_empty())
                        .collect()
                }
                Some("options") => r.options.extend(f.map(str::to_owned)),
                _ => {}
            }
        }
        r
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        if !self.searches.is_empty() {
            out += &format!("search {}\n", self.searches.join(" "));
        }
        for n in &self.nameservers {
            out += &format!("nameserver {n}\n");
        }
        if !self.options.is_empty() {
            out += &format!("options {}\n", self.options.join(" "));
        }
        out
    }
}

fn push_unique(list: &mut Vec<String>, items: impl IntoIterator<Item = String>) {
    for i in items {
        if !list.contains(&i) {
            list.push(i);
        }
    }
}

fn option_name(o: &str) -> &str {
    o.split(':').next().unwrap_or(o)
}

/// Options merged by name; `extra` wins (the kubelet's mergeDNSOptions).
fn merge_options(base: &[String], extra: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for o in base.iter().chain(extra) {
        match out.iter_mut().find(|x| option_name(x) == option_name(o)) {
            Some(x) => *x = o.clone(),
            None => out.push(o.clone()),
        }
    }
    out
}

/// The resolv.conf of `pod`, given the node's.
pub fn pod_resolv_conf(
    cfg: &DnsConfig,
    node: &ResolvConf,
    pod: &Pod,
) -> Result<ResolvConf, String> {
    let spec = pod.spec.clone().unwrap_or_default();
    let host_network = spec.host_network == Some(true);
    let policy = spec.dns_policy.as_deref().unwrap_or("ClusterFirst");
    let cluster = match policy {
        "ClusterFirstWithHostNet" => true,
        "ClusterFirst" => !host_network,
        "Default" => false,
        "None" => {
            if spec.dns_config.is_none() {
                return Err("dnsPolicy None needs spec.dnsConfig (nameservers, searches, options)".into());
            }
            false
        }
        other => {
            return Err(format!(
                "dnsPolicy {other:?} is not one of ClusterFirst, ClusterFirstWithHostNet, Default, None"
            ))
        }
    };
    let mut r = if policy == "None" {
        ResolvConf::default()
    } else if cluster && !cfg.cluster_dns.is_empty() {
        let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
        let d = cfg.cluster_domain.trim_end_matches('.');
        let mut searches = vec![format!("{ns}.svc.{d}"), format!("svc.{d}"), d.to_owned()];
        push_unique(&mut searches, node.searches.iter().cloned());
        ResolvConf {
            nameservers: cfg.cluster_dns.iter().map(|i| i.to_string()).collect(),
            searches,
            options: vec!["ndots:5".into()],
        }
    } else {
        if cluster {
            tracing::warn!(
                pod = pod.metadata.name.as_deref().unwrap_or(""),
                "dnsPolicy ClusterFirst but no cluster DNS configured: using the node's resolv.conf"
            );
        }
        node.clone()
    };
    if let Some(dc) = &spec.dns_config {
        push_unique(&mut r.nameservers, dc.nameservers.iter().flatten().cloned());
        push_unique(
            &mut r.searches,
            dc.searches
                .iter()
                .flatten()
                .map(|s| s.trim_end_matches('.').to_owned()),
        );
        let extra: Vec<String> = dc
            .options
            .iter()
            .flatten()
            .filter_map(|o| {
                let name = o.name.as_deref().filter(|n| !n.is_empty())?;
                Some(match &o.value {
                    Some(v) => format!("{name}:{v}"),
                    None => name.to_owned(),
                })
            })
            .collect();
        r.options = merge_options(&r.options, &extra);
    }
    // The kubelet's limits: drop what glibc would not use anyway, in order.
    r.nameservers.truncate(MAX_NAMESERVERS);
    r.searches.truncate(MAX_SEARCHES);
    while r.searches.iter().map(|s| s.len() + 1).sum::<usize>() > MAX_SEARCH_CHARS {
        r.searches.pop();
    }
    Ok(r)
}

/// Target of the mount.
const RESOLV_CONF: &str = "/etc/resolv.conf";

/// Writes the pod's resolv.conf into `pod_dir` and returns its mount for container `c`
/// (none when `c` mounts a volume at /etc/resolv.conf itself). The error is a
/// CreateContainerConfigError.
pub fn mount(
    cfg: &DnsConfig,
    pod: &Pod,
    c: &Container,
    pod_dir: &Path,
) -> Result<Option<Mount>, String> {
    if c.volume_mounts
        .iter()
        .flatten()
        .any(|m| Path::new(&m.mount_path) == Path::new(RESOLV_CONF))
    {
        return Ok(None);
    }
    let node = match std::fs::read_to_string(&cfg.resolv_conf) {
        Ok(t) => ResolvConf::parse(&t),
        // No node resolv.conf: the cluster part still works (the kubelet treats an
        // unreadable --resolv-conf as an error only when it is needed).
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => ResolvConf::default(),
        Err(e) => {
            return Err(format!(
                "reading the node's resolv.conf {}: {e}",
                cfg.resolv_conf.display()
            ))
        }
    };
    let text = pod_resolv_conf(cfg, &node, pod)?.render();
    let path = pod_dir.join("resolv.conf");
    // Written beside and renamed: a container starting meanwhile never sees half a file.
    let tmp = pod_dir.join("resolv.conf.tmp");
    std::fs::write(&tmp, text)
        .and_then(|_| std::fs::rename(&tmp, &path))
        .map_err(|e| format!("writing {}: {e}", path.display()))?;
    Ok(Some(Mount {
        source: path,
        target: PathBuf::from(RESOLV_CONF),
        read_only: true,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(spec: serde_json::Value) -> Pod {
        serde_json::from_value(
            json!({"metadata": {"namespace": "shop", "name": "p"}, "spec": spec}),
        )
        .unwrap()
    }

    fn cfg() -> DnsConfig {
        DnsConfig {
            cluster_dns: vec!["10.43.0.10".parse().unwrap()],
            ..DnsConfig::default()
        }
    }

    fn node() -> ResolvConf {
        ResolvConf::parse(
            "# node\nnameserver 192.0.2.53\nsearch old.example\nsearch corp.example lab.example.\n\
             nameserver 192.0.2.54 ; second\noptions edns0 ndots:1\ndomain ignored.example\n",
        )
    }

    #[test]
    fn the_node_file_parses_like_the_kubelet() {
        assert_eq!(
            node(),
            ResolvConf {
                nameservers: vec!["192.0.2.53".into(), "192.0.2.54".into()],
                searches: vec!["corp.example".into(), "lab.example".into()],
                options: vec!["edns0".into(), "ndots:1".into()],
            }
        );
    }

    #[test]
    fn cluster_first_uses_the_cluster_dns_and_the_kubernetes_search_path() {
        let r = pod_resolv_conf(&cfg(), &node(), &pod(json!({"containers": []}))).unwrap();
        assert_eq!(
            r.render(),
            "search shop.svc.cluster.local svc.cluster.local cluster.local corp.example lab.example\n\
             nameserver 10.43.0.10\noptions ndots:5\n"
        );
    }

    #[test]
    fn host_network_uses_the_node_file_unless_cluster_first_with_host_net() {
        let r = pod_resolv_conf(&cfg(), &node(), &pod(json!({"hostNetwork": true}))).unwrap();
        assert_eq!(r, node());
        let r = pod_resolv_conf(
            &cfg(),
            &node(),
            &pod(json!({"hostNetwork": true, "dnsPolicy": "ClusterFirstWithHostNet"})),
        )
        .unwrap();
        assert_eq!(r.nameservers, ["10.43.0.10"]);
        let r = pod_resolv_conf(&cfg(), &node(), &pod(json!({"dnsPolicy": "Default"}))).unwrap();
        assert_eq!(r, node());
        // No cluster DNS configured: ClusterFirst falls back to the node's.
        let r = pod_resolv_conf(&DnsConfig::default(), &node(), &pod(json!({}))).unwrap();
        assert_eq!(r, node());
    }

    #[test]
    fn dns_config_is_merged_and_none_uses_it_alone() {
        let dc = json!({"nameservers": ["192.0.2.99", "10.43.0.10"], "searches": ["extra.example."],
            "options": [{"name": "ndots", "value": "2"}, {"name": "single-request"}, {"value": "x"}]});
        let r = pod_resolv_conf(&cfg(), &node(), &pod(json!({"dnsConfig": dc}))).unwrap();
        assert_eq!(r.nameservers, ["10.43.0.10", "192.0.2.99"]);
        assert_eq!(r.searches.last().map(String::as_str), Some("extra.example"));
        assert_eq!(r.options, ["ndots:2", "single-request"]);
        let r = pod_resolv_conf(
            &cfg(),
            &node(),
            &pod(json!({"dnsPolicy": "None", "dnsConfig": {"nameservers": ["192.0.2.1"]}})),
        )
        .unwrap();
        assert_eq!(r.render(), "nameserver 192.0.2.1\n");
        let e = pod_resolv_conf(&cfg(), &node(), &pod(json!({"dnsPolicy": "None"}))).unwrap_err();
        assert!(e.contains("dnsConfig"), "{e}");
        let e =
            pod_resolv_conf(&cfg(), &node(), &pod(json!({"dnsPolicy": "Cluster"}))).unwrap_err();
        assert!(e.contains("\"Cluster\""), "{e}");
    }

    #[test]
    fn the_kubelet_limits_apply() {
        let searches: Vec<String> = (0..40).map(|i| format!("s{i}.example")).collect();
        let dc =
            json!({"nameservers": ["192.0.2.1", "192.0.2.2", "192.0.2.3"], "searches": searches});
        let r = pod_resolv_conf(&cfg(), &node(), &pod(json!({"dnsConfig": dc}))).unwrap();
        assert_eq!(r.nameservers, ["10.43.0.10", "192.0.2.1", "192.0.2.2"]);
        assert_eq!(r.searches.len(), MAX_SEARCHES);
        let long: Vec<String> = (0..20).map(|i| format!("{i}{}", "x".repeat(200))).collect();
        let r = pod_resolv_conf(
            &cfg(),
            &node(),
            &pod(json!({"dnsConfig": {"searches": long}})),
        )
        .unwrap();
        assert!(r.searches.iter().map(|s| s.len() + 1).sum::<usize>() <= MAX_SEARCH_CHARS);
    }

    #[test]
    fn the_file_is_written_and_mounted_unless_the_container_mounts_one() {
        let dir = tempfile::tempdir().unwrap();
        let conf = dir.path().join("node-resolv.conf");
        std::fs::write(&conf, "nameserver 192.0.2.53\n").unwrap();
        let cfg = DnsConfig {
            resolv_conf: conf,
            ..cfg()
        };
        let p = pod(json!({"containers": [{"name": "c"}]}));
        let c: Container = serde_json::from_value(json!({"name": "c"})).unwrap();
        let m = mount(&cfg, &p, &c, dir.path()).unwrap().unwrap();
        assert_eq!(m.target, Path::new("/etc/resolv.conf"));
        assert!(m.read_only);
        let text = std::fs::read_to_string(&m.source).unwrap();
        assert!(text.contains("nameserver 10.43.0.10\n"), "{text}");
        let own: Container = serde_json::from_value(
            json!({"name": "c", "volumeMounts": [{"name": "v", "mountPath": "/etc/resolv.conf"}]}),
        )
        .unwrap();
        assert_eq!(mount(&cfg, &p, &own, dir.path()).unwrap(), None);
    }
}
