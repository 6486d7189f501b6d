//! `skiff-agent status`: one screen about the agent on this node, from what it exposes
//! (`/healthz`, `/metrics`), the API (the Node, its podCIDR and Lease) and the kernel (the
//! agent's routes). Each source that cannot be read says why on its line; the rest still
//! shows. Gathering is in the binary; this module renders (and is unit-tested).

use std::{
    fmt::Write as _,
    io::{Read as _, Write as _},
    net::SocketAddr,
    time::{Duration, SystemTime},
};

/// A blocking HTTP/1.1 GET (the agent's own loopback endpoints): (status code, body).
pub fn http_get(addr: SocketAddr, path: &str) -> Result<(u16, String), String> {
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2))
        .map_err(|e| format!("connecting to {addr}: {e}"))?;
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .map_err(|e| format!("writing to {addr}: {e}"))?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)
        .map_err(|e| format!("reading from {addr}: {e}"))?;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("{addr}{path}: not an HTTP response"))?;
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("{addr}{path}: bad status line"))?;
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        let mut out = String::new();
        let mut rest = body;
        while let Some((size, tail)) = rest.split_once("\r\n") {
            let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
            if n == 0 || tail.len() < n {
                break;
            }
            out.push_str(&tail[..n]);
            rest = tail[n..].trim_start_matches("\r\n");
        }
        out
    } else {
        body.to_owned()
    };
    Ok((code, body))
}

/// What the API says about this node.
#[derive(Debug, Clone, Default)]
pub struct NodeView {
    pub name: String,
    /// Ready condition: status and reason.
    pub ready: Option<(String, String)>,
    pub pod_cidr: Option<String>,
    /// Age of the Lease's renewTime.
    pub lease_age: Option<Duration>,
}

/// The API as `status` reached it.
#[derive(Debug, Clone)]
pub struct ApiView {
    pub server: String,
    pub version: String,
    /// The Node, when one was named.
    pub node: Option<Result<NodeView, String>>,
}

/// Everything `status` shows, as gathered.
#[derive(Debug, Clone)]
pub struct Inputs {
    pub healthz: Result<(u16, String), String>,
    pub metrics: Result<Vec<(String, f64)>, String>,
    /// `None` without --kubeconfig.
    pub api: Option<Result<ApiView, String>>,
    /// The agent's routes (protocol 115), as `ip route` would print them.
    pub routes: Result<Vec<String>, String>,
    pub now: SystemTime,
}

fn get(parsed: &[(String, f64)], series: &str) -> Option<f64> {
    parsed.iter().find(|(n, _)| n == series).map(|(_, v)| *v)
}

/// Upper bound of the bucket holding quantile `q` of a histogram (Prometheus'
/// histogram_quantile without interpolation): a conservative estimate.
pub fn quantile_bound(parsed: &[(String, f64)], name: &str, q: f64) -> Option<f64> {
    let prefix = format!("{name}_bucket{{le=\"");
    let mut buckets: Vec<(f64, f64)> = parsed
        .iter()
        .filter_map(|(n, v)| {
            let le = n.strip_prefix(&prefix)?.strip_suffix("\"}")?;
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().ok()?
            };
            Some((le, *v))
        })
        .collect();
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    let total = buckets.last()?.1;
    if total == 0.0 {
        return None;
    }
    buckets
        .iter()
        .find(|(_, c)| *c >= q * total)
        .map(|(le, _)| *le)
}

fn ago(now: SystemTime, unix_secs: f64) -> String {
    let then = SystemTime::UNIX_EPOCH + Duration::from_secs_f64(unix_secs.max(0.0));
    match now.duration_since(then) {
        Ok(d) => format!("{:.1}s ago", d.as_secs_f64()),
        Err(_) => "just now".into(),
    }
}

fn seconds(v: f64) -> String {
    if v.is_infinite() {
        "> 300s".into()
    } else if v < 1.0 {
        format!("≤ {:.0}ms", v * 1000.0)
    } else {
        format!("≤ {v}s")
    }
}

/// The screen.
pub fn render(i: &Inputs) -> String {
    let mut out = String::new();
    let _ = match &i.healthz {
        Ok((code, body)) => {
            let eligible = serde_json::from_str::<serde_json::Value>(body)
                .ok()
                .and_then(|v| v["nodeEligible"].as_bool());
            writeln!(
                out,
                "agent health   {} (HTTP {code}){}",
                if *code == 200 { "healthy" } else { "UNHEALTHY" },
                match eligible {
                    Some(false) => ", node not eligible (being deleted or drained)",
                    _ => "",
                }
            )
        }
        Err(e) => writeln!(out, "agent health   unknown: {e}"),
    };
    match &i.api {
        None => {
            let _ = writeln!(out, "API            (no --kubeconfig given)");
        }
        Some(Err(e)) => {
            let _ = writeln!(out, "API            UNREACHABLE: {e}");
        }
        Some(Ok(ApiView {
            server,
            version,
            node,
        })) => {
            let _ = writeln!(out, "API            {server} ({version})");
            match node {
                None => {}
                Some(Err(e)) => {
                    let _ = writeln!(out, "node           {e}");
                }
                Some(Ok(n)) => {
                    let ready = n
                        .ready
                        .as_ref()
                        .map(|(s, r)| format!("Ready={s} ({r})"))
                        .unwrap_or_else(|| "no Ready condition".into());
                    let lease = n
                        .lease_age
                        .map(|d| format!("lease renewed {:.1}s ago", d.as_secs_f64()))
                        .unwrap_or_else(|| "no lease".into());
                    let _ = writeln!(out, "node           {}: {ready}, {lease}", n.name);
                    let _ = writeln!(
                        out,
                        "podCIDR        {}",
                        n.pod_cidr.as_deref().unwrap_or("(not assigned yet)")
                    );
                }
            }
        }
    }
    match &i.metrics {
        Err(e) => {
            let _ = writeln!(out, "metrics        unavailable: {e}");
        }
        Ok(m) => {
            let syncs = get(m, "skiff_syncs_total").unwrap_or(0.0);
            let errors = get(m, "skiff_sync_errors_total").unwrap_or(0.0);
            let last = get(m, "skiff_last_sync_timestamp_seconds")
                .map(|t| ago(i.now, t))
                .unwrap_or_else(|| "never".into());
            let _ = writeln!(
                out,
                "last sync      {last} ({syncs} syncs, {errors} failed service ports, {} watch errors)",
                get(m, "skiff_watch_errors_total").unwrap_or(0.0)
            );
            // agent sync scale (issue 7): what the latest sync cost.
            if let Some(d) = get(m, "skiff_last_sync_duration_seconds") {
                let changed = get(m, "skiff_last_sync_services_changed").unwrap_or(0.0);
                let what = if get(m, "skiff_last_sync_full") == Some(1.0) {
                    format!("full, {changed} services")
                } else {
                    format!(
                        "{changed} service{} changed",
                        if changed == 1.0 { "" } else { "s" }
                    )
                };
                let _ = writeln!(
                    out,
                    "last sync took {:.2}ms ({what}, {} map writes)",
                    d * 1e3,
                    get(m, "skiff_last_sync_map_writes").unwrap_or(0.0)
                );
            }
            // end agent sync scale
            if let Some(t) = get(m, "skiff_node_last_heartbeat_timestamp_seconds") {
                let _ = writeln!(out, "heartbeat      {}", ago(i.now, t));
            }
            let lat = "skiff_network_programming_duration_seconds";
            if let (Some(p50), Some(p99)) =
                (quantile_bound(m, lat, 0.5), quantile_bound(m, lat, 0.99))
            {
                let _ = writeln!(
                    out,
                    "programming    p50 {} p99 {} ({} changes)",
                    seconds(p50),
                    seconds(p99),
                    get(m, &format!("{lat}_count")).unwrap_or(0.0)
                );
            }
            let problems: Vec<String> = m
                .iter()
                .filter_map(|(n, v)| {
                    let check = n
                        .strip_prefix("skiff_consistency_problems{check=\"")?
                        .strip_suffix("\"}")?;
                    (*v > 0.0).then(|| format!("{check}: {v}"))
                })
                .collect();
            let _ = match get(m, "skiff_consistency_checks_total") {
                None => writeln!(out, "consistency    not checked yet"),
                Some(_) if problems.is_empty() => {
                    writeln!(out, "consistency    ok (maps match what the agent wrote)")
                }
                Some(_) => writeln!(out, "consistency    PROBLEMS: {}", problems.join(", ")),
            };
            let mut maps: Vec<(String, f64, f64)> = m
                .iter()
                .filter_map(|(n, v)| {
                    let map = n
                        .strip_prefix("skiff_map_entries{map=\"")?
                        .strip_suffix("\"}")?;
                    let cap = get(m, &format!("skiff_map_capacity{{map=\"{map}\"}}"))?;
                    Some((map.to_owned(), *v, cap))
                })
                .collect();
            maps.sort_by(|a, b| a.0.cmp(&b.0));
            if maps.is_empty() {
                let _ = writeln!(out, "maps           (not sampled yet)");
            }
            for (name, used, cap) in maps {
                let pct = if cap > 0.0 { used / cap * 100.0 } else { 0.0 };
                let warn = if pct >= 90.0 { "  <- nearly full" } else { "" };
                let _ = writeln!(out, "map {name:<14} {used:>8} / {cap:<8} {pct:5.1}%{warn}");
            }
        }
    }
    match &i.routes {
        Ok(r) => {
            let _ = writeln!(out, "routes         {} (protocol 115)", r.len());
            for line in r {
                let _ = writeln!(out, "  {line}");
            }
        }
        Err(e) => {
            let _ = writeln!(out, "routes         unreadable: {e}");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_every_source_and_its_failures() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1000);
        let metrics = vec![
            ("skiff_syncs_total".to_string(), 4.0),
            ("skiff_sync_errors_total".to_string(), 0.0),
            ("skiff_last_sync_timestamp_seconds".to_string(), 998.0),
            ("skiff_last_sync_duration_seconds".to_string(), 0.00125),
            ("skiff_last_sync_services_changed".to_string(), 1.0),
            ("skiff_last_sync_map_writes".to_string(), 3.0),
            ("skiff_last_sync_full".to_string(), 0.0),
            (
                "skiff_network_programming_duration_seconds_bucket{le=\"0.01\"}".to_string(),
                90.0,
            ),
            (
                "skiff_network_programming_duration_seconds_bucket{le=\"0.05\"}".to_string(),
                100.0,
            ),
            (
                "skiff_network_programming_duration_seconds_bucket{le=\"+Inf\"}".to_string(),
                100.0,
            ),
            (
                "skiff_network_programming_duration_seconds_count".to_string(),
                100.0,
            ),
            ("skiff_consistency_checks_total".to_string(), 3.0),
            (
                "skiff_consistency_problems{check=\"dangling\"}".to_string(),
                0.0,
            ),
            (
                "skiff_consistency_problems{check=\"slots\"}".to_string(),
                2.0,
            ),
            ("skiff_map_entries{map=\"services\"}".to_string(), 950.0),
            ("skiff_map_capacity{map=\"services\"}".to_string(), 1000.0),
        ];
        let screen = render(&Inputs {
            healthz: Ok((200, r#"{"nodeEligible": true}"#.into())),
            metrics: Ok(metrics),
            api: Some(Ok(ApiView {
                server: "https://127.0.0.1:6443".into(),
                version: "v1.33.0".into(),
                node: Some(Ok(NodeView {
                    name: "node-a".into(),
                    ready: Some(("True".into(), "KubeletReady".into())),
                    pod_cidr: Some("10.244.0.0/24".into()),
                    lease_age: Some(Duration::from_secs(3)),
                })),
            })),
            routes: Err("netlink: permission denied".into()),
            now,
        });
        for want in [
            "agent health   healthy (HTTP 200)",
            "node           node-a: Ready=True (KubeletReady), lease renewed 3.0s ago",
            "podCIDR        10.244.0.0/24",
            "last sync      2.0s ago (4 syncs",
            "last sync took 1.25ms (1 service changed, 3 map writes)",
            "programming    p50 ≤ 10ms p99 ≤ 50ms (100 changes)",
            "95.0%  <- nearly full",
            "consistency    PROBLEMS: slots: 2",
            "routes         unreadable: netlink: permission denied",
        ] {
            assert!(screen.contains(want), "{want:?} missing from\n{screen}");
        }
        let down = render(&Inputs {
            healthz: Err("connecting to 127.0.0.1:10256: refused".into()),
            metrics: Err("refused".into()),
            api: Some(Err("connection refused".into())),
            routes: Ok(vec![]),
            now,
        });
        assert!(down.contains("agent health   unknown: connecting"));
        assert!(down.contains("API            UNREACHABLE: connection refused"));
    }
}
