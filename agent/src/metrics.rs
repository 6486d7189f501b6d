//! `/metrics` in the Prometheus text exposition format (version 0.0.4), written by hand:
//! a handful of counters, gauges and two histograms do not justify a metrics crate.
//!
//! - `skiff_network_programming_duration_seconds` (histogram): for each applied
//!   EndpointSlice change, now − its `endpoints.kubernetes.io/last-change-trigger-time`
//!   annotation (the SLI upstream's kubeproxy_network_programming_duration_seconds
//!   measures, with buckets down to 1 ms because skiff's goal is p99 ≤ 50 ms);
//! - `skiff_sync_duration_seconds` (histogram), `skiff_syncs_total`,
//!   `skiff_sync_errors_total`, `skiff_last_sync_timestamp_seconds`; the last sync itself:
//!   `skiff_last_sync_duration_seconds`, `skiff_last_sync_services_changed`,
//!   `skiff_last_sync_map_writes`, `skiff_last_sync_full` (what `skiff-agent status` shows);
//! - `skiff_packets_total`/`skiff_bytes_total{class}` and `skiff_drops_total{reason}` of the
//!   datapath (what `skiff-agent drops` prints);
//! - `skiff_service_flows_total`/`_packets_total`/`_bytes_total{service,port,scope}` per
//!   programmed service port (what `skiff-agent lb list` prints);
//! - `skiff_map_entries{map}` and `skiff_map_capacity{map}`: fill levels.
//!
//! The datapath numbers are sampled by the agent's periodic tick ([`Metrics::set_datapath`]),
//! so a scrape never walks BPF maps.

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    sync::{Arc, Mutex},
    time::{Duration, SystemTime},
};

use axum::{
    http::{header, HeaderValue},
    response::IntoResponse,
    routing::get,
    Router,
};
use skiff_datapath_abi::LbCounter;

use crate::{datapath::Counters, model::ServicePortName};

/// Network programming latency buckets (seconds): 1 ms to 5 min.
pub const LATENCY_BUCKETS: [f64; 19] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
    120.0, 180.0, 240.0, 300.0,
];
/// Sync duration buckets (seconds): 100 µs to 10 s.
pub const SYNC_BUCKETS: [f64; 14] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 2.5, 10.0,
];

/// A cumulative histogram.
#[derive(Debug, Clone)]
pub struct Histogram {
    bounds: Vec<f64>,
    /// Per bucket (not cumulative); the last slot is +Inf.
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

impl Histogram {
    pub fn new(bounds: &[f64]) -> Histogram {
        Histogram {
            bounds: bounds.to_vec(),
            counts: vec![0; bounds.len() + 1],
            sum: 0.0,
            count: 0,
        }
    }

    pub fn observe(&mut self, v: f64) {
        let i = self
            .bounds
            .iter()
            .position(|b| v <= *b)
            .unwrap_or(self.bounds.len());
        self.counts[i] += 1;
        self.sum += v;
        self.count += 1;
    }

    pub fn count(&self) -> u64 {
        self.count
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} histogram");
        let mut cumulative = 0;
        for (b, c) in self.bounds.iter().zip(&self.counts) {
            cumulative += c;
            let _ = writeln!(out, "{name}_bucket{{le=\"{b}\"}} {cumulative}");
        }
        cumulative += self.counts[self.bounds.len()];
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {cumulative}");
        let _ = writeln!(out, "{name}_sum {}", self.sum);
        let _ = writeln!(out, "{name}_count {}", self.count);
    }
}

/// A label value, escaped per the text format (backslash, quote, newline) as it is
/// written: a scrape at 10k Services writes 30k label values, and an escaped copy of each
/// was 90k short-lived allocations between the agent's long-lived ones (agent memory,
/// issue 7).
pub struct Escaped<'a>(pub &'a str);

impl std::fmt::Display for Escaped<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut rest = self.0;
        while let Some(i) = rest.find(['\\', '"', '\n']) {
            f.write_str(&rest[..i])?;
            f.write_str(match rest.as_bytes()[i] {
                b'\\' => r"\\",
                b'"' => "\\\"",
                _ => r"\n",
            })?;
            rest = &rest[i + 1..];
        }
        f.write_str(rest)
    }
}

/// One map's fill level.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MapFill {
    pub map: String,
    pub entries: u64,
    pub capacity: u64,
}

/// Datapath numbers sampled at one tick.
#[derive(Debug, Clone, Default)]
pub struct DatapathSample {
    pub counters: Counters,
    /// Per service id.
    pub services: Vec<(u32, LbCounter)>,
    pub maps: Vec<MapFill>,
}

#[derive(Debug)]
struct Inner {
    programming: Histogram,
    sync: Histogram,
    syncs: u64,
    sync_errors: u64,
    last_sync: Option<SystemTime>,
    last_sync_detail: Option<LastSync>,
    service_names: BTreeMap<u32, ServicePortName>,
    datapath: Option<DatapathSample>,
    watch_errors: u64,
    /// Latest consistency check: (check, problems found), and how many ran.
    consistency: Vec<(&'static str, u64)>,
    consistency_checks: u64,
    heartbeats_ok: u64,
    heartbeats_failed: u64,
    last_heartbeat: Option<SystemTime>,
}

// agent sync scale (issue 7)
/// What the last sync did, for `skiff-agent status` (the histograms say how syncs are
/// distributed; this says what the latest one cost).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LastSync {
    /// Translate + reconcile time.
    pub duration: Duration,
    /// Services recomputed (all of them for a full sync).
    pub services_changed: usize,
    pub map_writes: usize,
    /// Every Service was rebuilt (first list, relist, periodic check).
    pub full: bool,
}
// end agent sync scale

/// The agent's metrics, shared between the sync loop and the HTTP server.
#[derive(Debug)]
pub struct Metrics {
    inner: Mutex<Inner>,
}

impl Metrics {
    pub fn new() -> Arc<Metrics> {
        Arc::new(Metrics {
            inner: Mutex::new(Inner {
                programming: Histogram::new(&LATENCY_BUCKETS),
                sync: Histogram::new(&SYNC_BUCKETS),
                syncs: 0,
                sync_errors: 0,
                last_sync: None,
                last_sync_detail: None,
                service_names: BTreeMap::new(),
                datapath: None,
                watch_errors: 0,
                consistency: Vec::new(),
                consistency_checks: 0,
                heartbeats_ok: 0,
                heartbeats_failed: 0,
                last_heartbeat: None,
            }),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records one reprogramming: its duration, its map-write errors, the programming
    /// latencies of the slice changes it applied, and the programmed service ids (`None`:
    /// unchanged since the last sync).
    pub fn observe_sync(
        &self,
        duration: Duration,
        errors: usize,
        latencies: &[Duration],
        service_ids: Option<&[(ServicePortName, u32)]>,
    ) {
        let mut m = self.lock();
        m.sync.observe(duration.as_secs_f64());
        m.syncs += 1;
        m.sync_errors += errors as u64;
        m.last_sync = Some(SystemTime::now());
        for l in latencies {
            m.programming.observe(l.as_secs_f64());
        }
        if let Some(ids) = service_ids {
            m.service_names = ids.iter().map(|(n, id)| (*id, n.clone())).collect();
        }
    }

    // agent sync scale (issue 7)
    /// Records what the latest sync did (after [`Metrics::observe_sync`]).
    pub fn observe_last_sync(&self, last: LastSync) {
        self.lock().last_sync_detail = Some(last);
    }
    // end agent sync scale

    /// Records a consistency check ([`consistency`]).
    pub fn set_consistency(&self, problems: Vec<(&'static str, u64)>) {
        let mut m = self.lock();
        m.consistency = problems;
        m.consistency_checks += 1;
    }

    /// A watch of the API failed (kube-rs retries with backoff).
    pub fn observe_watch_error(&self) {
        self.lock().watch_errors += 1;
    }

    /// One Node heartbeat round (Lease renewal + status check): ok or not.
    pub fn observe_heartbeat(&self, ok: bool) {
        let mut m = self.lock();
        if ok {
            m.heartbeats_ok += 1;
            m.last_heartbeat = Some(SystemTime::now());
        } else {
            m.heartbeats_failed += 1;
        }
    }

    /// Service ids currently programmed (for sampling their counters).
    pub fn service_ids(&self) -> Vec<u32> {
        self.lock().service_names.keys().copied().collect()
    }

    pub fn set_datapath(&self, sample: DatapathSample) {
        self.lock().datapath = Some(sample);
    }

    /// Observations of the programming latency histogram so far.
    pub fn programming_observations(&self) -> u64 {
        self.lock().programming.count()
    }

    /// The text exposition.
    pub fn render(&self) -> String {
        let m = self.lock();
        // Sized for the per-service lines up front (~90 bytes each, three metrics): one
        // mapping of its own at scale, not a chain of doublings through the heap.
        let services = m.datapath.as_ref().map_or(0, |d| d.services.len());
        let mut out = String::with_capacity(16 * 1024 + services * 3 * 96);
        m.programming.render(
            &mut out,
            "skiff_network_programming_duration_seconds",
            "Time from an EndpointSlice change (endpoints.kubernetes.io/last-change-trigger-time) to its programming in the datapath.",
        );
        m.sync.render(
            &mut out,
            "skiff_sync_duration_seconds",
            "Time to translate and reconcile the service maps once.",
        );
        let _ = writeln!(
            out,
            "# HELP skiff_syncs_total Reprogrammings of the service maps."
        );
        let _ = writeln!(out, "# TYPE skiff_syncs_total counter");
        let _ = writeln!(out, "skiff_syncs_total {}", m.syncs);
        let _ = writeln!(
            out,
            "# HELP skiff_sync_errors_total Service ports that failed to program, summed over syncs."
        );
        let _ = writeln!(out, "# TYPE skiff_sync_errors_total counter");
        let _ = writeln!(out, "skiff_sync_errors_total {}", m.sync_errors);
        let unix = |t: SystemTime| {
            t.duration_since(SystemTime::UNIX_EPOCH)
                .unwrap_or_default()
                .as_secs_f64()
        };
        if let Some(t) = m.last_sync {
            let _ = writeln!(
                out,
                "# HELP skiff_last_sync_timestamp_seconds When the service maps were last reprogrammed."
            );
            let _ = writeln!(out, "# TYPE skiff_last_sync_timestamp_seconds gauge");
            let _ = writeln!(out, "skiff_last_sync_timestamp_seconds {}", unix(t));
        }
        // agent sync scale (issue 7)
        if let Some(l) = m.last_sync_detail {
            let gauges: [(&str, &str, f64); 4] = [
                (
                    "skiff_last_sync_duration_seconds",
                    "Translate and reconcile time of the latest sync.",
                    l.duration.as_secs_f64(),
                ),
                (
                    "skiff_last_sync_services_changed",
                    "Services the latest sync recomputed (every Service for a full sync).",
                    l.services_changed as f64,
                ),
                (
                    "skiff_last_sync_map_writes",
                    "Map writes and deletes of the latest sync.",
                    l.map_writes as f64,
                ),
                (
                    "skiff_last_sync_full",
                    "1 if the latest sync rebuilt every Service (first list, relist, periodic check).",
                    if l.full { 1.0 } else { 0.0 },
                ),
            ];
            for (name, help, v) in gauges {
                let _ = writeln!(out, "# HELP {name} {help}");
                let _ = writeln!(out, "# TYPE {name} gauge");
                let _ = writeln!(out, "{name} {v}");
            }
        }
        // end agent sync scale
        let _ = writeln!(
            out,
            "# HELP skiff_watch_errors_total Failed API watches (each is retried with backoff)."
        );
        let _ = writeln!(out, "# TYPE skiff_watch_errors_total counter");
        let _ = writeln!(out, "skiff_watch_errors_total {}", m.watch_errors);
        if m.consistency_checks > 0 {
            let _ = writeln!(
                out,
                "# HELP skiff_consistency_checks_total Comparisons of the maps' contents with what the agent wrote."
            );
            let _ = writeln!(out, "# TYPE skiff_consistency_checks_total counter");
            let _ = writeln!(
                out,
                "skiff_consistency_checks_total {}",
                m.consistency_checks
            );
            let _ = writeln!(
                out,
                "# HELP skiff_consistency_problems Problems the last consistency check found, by check (0: consistent)."
            );
            let _ = writeln!(out, "# TYPE skiff_consistency_problems gauge");
            for (check, n) in &m.consistency {
                let _ = writeln!(out, "skiff_consistency_problems{{check=\"{check}\"}} {n}");
            }
        }
        let _ = writeln!(
            out,
            "# HELP skiff_node_heartbeats_total Node heartbeat rounds (Lease renewal and status check), by result."
        );
        let _ = writeln!(out, "# TYPE skiff_node_heartbeats_total counter");
        let _ = writeln!(
            out,
            "skiff_node_heartbeats_total{{result=\"ok\"}} {}",
            m.heartbeats_ok
        );
        let _ = writeln!(
            out,
            "skiff_node_heartbeats_total{{result=\"error\"}} {}",
            m.heartbeats_failed
        );
        if let Some(t) = m.last_heartbeat {
            let _ = writeln!(
                out,
                "# HELP skiff_node_last_heartbeat_timestamp_seconds When the Node heartbeat last succeeded."
            );
            let _ = writeln!(
                out,
                "# TYPE skiff_node_last_heartbeat_timestamp_seconds gauge"
            );
            let _ = writeln!(
                out,
                "skiff_node_last_heartbeat_timestamp_seconds {}",
                unix(t)
            );
        }
        let Some(dp) = &m.datapath else {
            return out;
        };
        let _ = writeln!(
            out,
            "# HELP skiff_packets_total Packets seen by the datapath, by class."
        );
        let _ = writeln!(out, "# TYPE skiff_packets_total counter");
        for (class, c) in &dp.counters.classes {
            let _ = writeln!(
                out,
                "skiff_packets_total{{class=\"{}\"}} {}",
                class.name(),
                c.packets
            );
        }
        let _ = writeln!(
            out,
            "# HELP skiff_bytes_total Bytes seen by the datapath, by class."
        );
        let _ = writeln!(out, "# TYPE skiff_bytes_total counter");
        for (class, c) in &dp.counters.classes {
            let _ = writeln!(
                out,
                "skiff_bytes_total{{class=\"{}\"}} {}",
                class.name(),
                c.bytes
            );
        }
        let _ = writeln!(
            out,
            "# HELP skiff_drops_total Packets dropped by the datapath, by reason."
        );
        let _ = writeln!(out, "# TYPE skiff_drops_total counter");
        for (reason, n) in &dp.counters.drops {
            let _ = writeln!(out, "skiff_drops_total{{reason=\"{}\"}} {n}", reason.name());
        }
        // Masquerade of pod traffic to the outside (drops are in skiff_drops_total).
        let _ = writeln!(
            out,
            "# HELP skiff_masquerade_total Masquerade events: new flows, packets rewritten each way, ICMP errors translated."
        );
        let _ = writeln!(out, "# TYPE skiff_masquerade_total counter");
        for (event, n) in &dp.counters.masquerade {
            let _ = writeln!(
                out,
                "skiff_masquerade_total{{event=\"{}\"}} {n}",
                event.name()
            );
        }
        let _ = writeln!(
            out,
            "# HELP skiff_flow_events_total Conntrack events of service flows: midstream_new (a TCP packet without SYN balanced as a new flow: its backend resets it), reopened (a SYN on a tracked tuple balanced afresh)."
        );
        let _ = writeln!(out, "# TYPE skiff_flow_events_total counter");
        for (event, n) in &dp.counters.flows {
            let _ = writeln!(
                out,
                "skiff_flow_events_total{{event=\"{}\"}} {n}",
                event.name()
            );
        }
        for (metric, help, get) in [
            (
                "skiff_service_flows_total",
                "New flows (connections, UDP flows, socket translations) per service port.",
                (|c: &LbCounter| c.new_flows) as fn(&LbCounter) -> u64,
            ),
            (
                "skiff_service_packets_total",
                "Packets translated per packet, client to backend, per service port.",
                |c: &LbCounter| c.packets,
            ),
            (
                "skiff_service_bytes_total",
                "Bytes of those packets per service port.",
                |c: &LbCounter| c.bytes,
            ),
        ] {
            let _ = writeln!(out, "# HELP {metric} {help}");
            let _ = writeln!(out, "# TYPE {metric} counter");
            // Labels written in place, nothing allocated per service (see [`Escaped`]).
            for (id, c) in &dp.services {
                let Some(name) = m.service_names.get(id) else {
                    continue;
                };
                // The reconciler names a Local-policy group `<port>#local`.
                let (port, scope) = match name.port.strip_suffix("#local") {
                    Some(p) => (p, "local"),
                    None => (&*name.port, "cluster"),
                };
                let _ = writeln!(
                    out,
                    "{metric}{{service=\"{}/{}\",port=\"{}\",scope=\"{scope}\"}} {}",
                    Escaped(&name.namespace),
                    Escaped(&name.name),
                    Escaped(port),
                    get(c)
                );
            }
        }
        let _ = writeln!(out, "# HELP skiff_map_entries Entries in use per BPF map.");
        let _ = writeln!(out, "# TYPE skiff_map_entries gauge");
        for f in &dp.maps {
            let _ = writeln!(
                out,
                "skiff_map_entries{{map=\"{}\"}} {}",
                Escaped(&f.map),
                f.entries
            );
        }
        let _ = writeln!(out, "# HELP skiff_map_capacity Capacity per BPF map.");
        let _ = writeln!(out, "# TYPE skiff_map_capacity gauge");
        for f in &dp.maps {
            let _ = writeln!(
                out,
                "skiff_map_capacity{{map=\"{}\"}} {}",
                Escaped(&f.map),
                f.capacity
            );
        }
        out
    }
}

/// Samples the datapath for [`Metrics::set_datapath`] and collects expired conntrack
/// entries in the same walk (the agent's periodic tick). `usage`: the reconciler's entry
/// counts (the service maps are not walked); `now_ns`: CLOCK_MONOTONIC. Returns the sample
/// and the number of conntrack entries collected.
pub fn sample_datapath(
    dp: &crate::datapath::Datapath,
    maps: &mut crate::datapath::BpfServiceMaps,
    usage: crate::reconcile::MapUsage,
    service_ids: &[u32],
    now_ns: u64,
) -> Result<(DatapathSample, usize), String> {
    use skiff_datapath_abi::map_names;
    // Garbage collection first: it must not wait for a counter read to succeed.
    let (collected, conntrack) = maps
        .gc_conntrack_counted(now_ns)
        .map_err(|e| format!("conntrack GC: {e}"))?;
    let counters = dp.counters().map_err(|e| e.to_string())?;
    let services = dp
        .lb_counters(false, service_ids)
        .map_err(|e| e.to_string())?;
    let sizes = maps.sizes();
    // Labelled by role (services, slots…), not by the versioned BPF map name.
    let fill = |label: &str, map: &str, entries: usize| MapFill {
        map: label.to_owned(),
        entries: entries as u64,
        capacity: u64::from(sizes.capacity(map)),
    };
    let maps = vec![
        fill("services", map_names::SERVICES, usage.services),
        fill("slots", map_names::SLOTS, usage.slots),
        fill("backends", map_names::BACKENDS, usage.backends),
        fill("maglev_tables", map_names::MAGLEV, usage.maglev_tables),
        fill("conntrack", map_names::CONNTRACK, conntrack),
        fill("sock_rev", map_names::SOCK_REV, maps.sock_rev_len()),
    ];
    Ok((
        DatapathSample {
            counters,
            services,
            maps,
        },
        collected,
    ))
}

/// The consistency check: the service maps as read back (`snapshot`) against what the
/// reconciler holds it wrote (`usage`), plus the datapath's invariants
/// ([`crate::lbmap::Snapshot::dangling`]: every slot a frontend counts exists and names an
/// existing backend). Each entry is a check and how many problems it found.
pub fn consistency(
    snapshot: &crate::lbmap::Snapshot,
    usage: crate::reconcile::MapUsage,
) -> Vec<(&'static str, u64)> {
    let diff = |a: usize, b: usize| a.abs_diff(b) as u64;
    vec![
        ("dangling", snapshot.dangling().len() as u64),
        ("services", diff(snapshot.services.len(), usage.services)),
        ("slots", diff(snapshot.slots.len(), usage.slots)),
        ("backends", diff(snapshot.backends.len(), usage.backends)),
    ]
}

/// The `/metrics` router.
pub fn router(metrics: Arc<Metrics>) -> Router {
    Router::new().route(
        "/metrics",
        get(move || {
            let metrics = metrics.clone();
            async move {
                let mut r = metrics.render().into_response();
                r.headers_mut().insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
                );
                r
            }
        }),
    )
}

/// Parses a text exposition into (series with labels, value), checking the grammar this
/// module writes: `# HELP`/`# TYPE` comments, `name{labels} value` samples, each sample's
/// family declared by a TYPE line. For tests and `skiff-agent status`.
pub fn parse(text: &str) -> Result<Vec<(String, f64)>, String> {
    let mut typed: Vec<String> = Vec::new();
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let n = i + 1;
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut parts = rest.split(' ');
            let (Some(name), Some(kind), None) = (parts.next(), parts.next(), parts.next()) else {
                return Err(format!("line {n}: malformed TYPE: {line}"));
            };
            if !["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind) {
                return Err(format!("line {n}: unknown type {kind}"));
            }
            typed.push(name.to_owned());
            continue;
        }
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        let (series, value) = line
            .rsplit_once(' ')
            .ok_or_else(|| format!("line {n}: no value: {line}"))?;
        let value: f64 = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            v => v
                .parse()
                .map_err(|_| format!("line {n}: bad value {v:?}"))?,
        };
        let name = series.split('{').next().unwrap_or_default();
        let valid_name = !name.is_empty()
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
            && !name.starts_with(|c: char| c.is_ascii_digit());
        if !valid_name {
            return Err(format!("line {n}: bad metric name {name:?}"));
        }
        if let Some(labels) = series.strip_prefix(name) {
            let braced = labels.starts_with('{') && labels.ends_with('}');
            if !labels.is_empty() && !braced {
                return Err(format!("line {n}: malformed labels {labels:?}"));
            }
        }
        let family_declared = typed.iter().any(|t| {
            name == t
                || ["_bucket", "_sum", "_count"]
                    .iter()
                    .any(|s| name.strip_suffix(s) == Some(t.as_str()))
        });
        if !family_declared {
            return Err(format!("line {n}: {name} has no TYPE line"));
        }
        out.push((series.to_owned(), value));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_are_escaped_per_the_text_format() {
        assert_eq!(Escaped("plain/name").to_string(), "plain/name");
        assert_eq!(Escaped("a\\b\"c\nd\"").to_string(), r#"a\\b\"c\nd\""#);
        assert_eq!(Escaped("").to_string(), "");
    }

    #[test]
    fn histogram_buckets_are_cumulative() {
        let mut h = Histogram::new(&[0.01, 0.1]);
        for v in [0.005, 0.05, 0.05, 5.0] {
            h.observe(v);
        }
        let mut s = String::new();
        h.render(&mut s, "x", "help");
        let parsed = parse(&s).unwrap();
        let get = |k: &str| parsed.iter().find(|(n, _)| n == k).unwrap().1;
        assert_eq!(get("x_bucket{le=\"0.01\"}"), 1.0);
        assert_eq!(get("x_bucket{le=\"0.1\"}"), 3.0);
        assert_eq!(get("x_bucket{le=\"+Inf\"}"), 4.0);
        assert_eq!(get("x_count"), 4.0);
    }

    #[test]
    fn consistency_finds_dangling_slots_and_count_mismatches() {
        use skiff_datapath_abi::{ServiceKey, ServiceValue};
        let mut snap = crate::lbmap::Snapshot::default();
        snap.services.insert(
            ServiceKey::default(),
            ServiceValue {
                service_id: 1,
                active: 2,
                terminating: 0,
                flags: 0,
            },
        );
        // Slot 0 exists but names no backend; slot 1 is missing.
        snap.slots.insert(
            skiff_datapath_abi::SlotKey {
                service_id: 1,
                slot: 0,
            },
            7,
        );
        let usage = crate::reconcile::MapUsage {
            services: 1,
            slots: 2,
            backends: 1,
            maglev_tables: 0,
        };
        assert_eq!(
            consistency(&snap, usage),
            vec![
                ("dangling", 2),
                ("services", 0),
                ("slots", 1),
                ("backends", 1)
            ]
        );
    }

    #[test]
    fn render_parses_and_labels_services() {
        let m = Metrics::new();
        m.observe_sync(
            Duration::from_millis(3),
            0,
            &[Duration::from_millis(20)],
            Some(&[
                (ServicePortName::new("default", "web", "http"), 1),
                (ServicePortName::new("default", "web", "http#local"), 2),
            ]),
        );
        m.set_datapath(DatapathSample {
            counters: Counters {
                classes: vec![],
                drops: vec![(skiff_datapath_abi::DropReason::ShortEthernet, 7)],
                masquerade: vec![(skiff_datapath_abi::MasqCounter::NewFlows, 4)],
                flows: vec![(skiff_datapath_abi::FlowCounter::Midstream, 6)],
            },
            services: vec![(
                2,
                LbCounter {
                    new_flows: 3,
                    packets: 4,
                    bytes: 5,
                },
            )],
            maps: vec![MapFill {
                map: "services".into(),
                entries: 2,
                capacity: 65536,
            }],
        });
        m.observe_last_sync(LastSync {
            duration: Duration::from_micros(1250),
            services_changed: 1,
            map_writes: 3,
            full: false,
        });
        let text = m.render();
        let parsed = parse(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
        let get = |k: &str| {
            parsed
                .iter()
                .find(|(n, _)| n == k)
                .unwrap_or_else(|| panic!("{k} missing from\n{text}"))
                .1
        };
        assert_eq!(get("skiff_drops_total{reason=\"short_ethernet\"}"), 7.0);
        assert_eq!(get("skiff_masquerade_total{event=\"new_flows\"}"), 4.0);
        assert_eq!(get("skiff_flow_events_total{event=\"midstream_new\"}"), 6.0);
        assert_eq!(
            get("skiff_network_programming_duration_seconds_bucket{le=\"0.025\"}"),
            1.0
        );
        assert_eq!(
            get("skiff_service_packets_total{service=\"default/web\",port=\"http\",scope=\"local\"}"),
            4.0
        );
        assert_eq!(get("skiff_map_capacity{map=\"services\"}"), 65536.0);
        assert_eq!(get("skiff_last_sync_duration_seconds"), 0.00125);
        assert_eq!(get("skiff_last_sync_map_writes"), 3.0);
        assert_eq!(get("skiff_last_sync_full"), 0.0);
        assert!(parse("foo 1\n").is_err(), "undeclared family");
        assert!(parse("# TYPE foo counter\nfoo x\n").is_err());
    }
}
