//! The controllers' metrics in Prometheus' text format (version 0.0.4), served on the
//! API server's admin `/metrics` when the controllers run in-process: client-go's
//! work-queue metrics (`workqueue_*`, same names and meaning, with a `name` label per
//! queue), written by hand as the agent's are (a few counters, gauges and histograms do
//! not justify a metrics crate).
//!
//! - `workqueue_depth{name}` (gauge): keys waiting (not counting those being processed);
//! - `skiff_workqueue_processing{name}` (gauge): keys a worker holds right now; a queue
//!   is idle when both are 0 (what `skiff-controllers-bench` waits for before measuring
//!   steady state);
//! - `workqueue_adds_total{name}`, `workqueue_retries_total{name}` (counters): adds that
//!   queued a key (a repeat of a waiting key does not count, as in client-go), and adds
//!   after a failure's backoff;
//! - `workqueue_queue_duration_seconds{name}` (histogram): first add → handed to a worker;
//! - `workqueue_work_duration_seconds{name}` (histogram): handed to a worker → done (the
//!   sync itself);
//! - counters a controller registers with [`counter`] (e.g. the EndpointSlice
//!   controller's deferred syncs).
//!
//! The registry is process-wide, like client-go's global metrics provider: a queue made
//! again under the same name (the controllers restart after a lost leader Lease) replaces
//! the old one's series, which Prometheus reads as a counter reset.

use std::{
    fmt::Write as _,
    sync::{
        atomic::{AtomicI64, AtomicU64, Ordering},
        Arc, Mutex, OnceLock,
    },
    time::Duration,
};

/// Latency buckets (seconds), 100 µs to 10 s: fine enough around the EndpointSlice
/// controller's 20 ms goal (client-go's decades, 10 ns to 10 s, put 1 ms to 100 ms in
/// two buckets).
pub const DURATION_BUCKETS: [f64; 16] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

/// A cumulative histogram of durations, updated without a lock.
#[derive(Debug)]
pub struct Histogram {
    /// Per bucket of [`DURATION_BUCKETS`] (not cumulative); the last slot is +Inf.
    counts: [AtomicU64; DURATION_BUCKETS.len() + 1],
    sum_nanos: AtomicU64,
    count: AtomicU64,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            counts: std::array::from_fn(|_| AtomicU64::new(0)),
            sum_nanos: AtomicU64::new(0),
            count: AtomicU64::new(0),
        }
    }
}

impl Histogram {
    pub fn observe(&self, d: Duration) {
        let v = d.as_secs_f64();
        let i = DURATION_BUCKETS
            .iter()
            .position(|b| v <= *b)
            .unwrap_or(DURATION_BUCKETS.len());
        self.counts[i].fetch_add(1, Ordering::Relaxed);
        self.sum_nanos.fetch_add(
            u64::try_from(d.as_nanos()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    fn render(&self, out: &mut String, name: &str, labels: &str) {
        let mut cumulative = 0;
        for (b, c) in DURATION_BUCKETS.iter().zip(&self.counts) {
            cumulative += c.load(Ordering::Relaxed);
            let _ = writeln!(out, "{name}_bucket{{{labels},le=\"{b}\"}} {cumulative}");
        }
        cumulative += self.counts[DURATION_BUCKETS.len()].load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{{labels},le=\"+Inf\"}} {cumulative}");
        let sum = self.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9;
        let _ = writeln!(out, "{name}_sum{{{labels}}} {sum}");
        let _ = writeln!(out, "{name}_count{{{labels}}} {}", self.count());
    }
}

/// One work queue's metrics; the queue updates them (see [`crate::workqueue`]).
#[derive(Debug, Default)]
pub struct QueueMetrics {
    pub depth: AtomicI64,
    pub processing: AtomicI64,
    pub adds: AtomicU64,
    pub retries: AtomicU64,
    pub queue_duration: Histogram,
    pub work_duration: Histogram,
}

/// A counter a controller registered with [`counter`].
struct Counter {
    name: &'static str,
    help: &'static str,
    value: Arc<AtomicU64>,
}

#[derive(Default)]
struct Registry {
    queues: Vec<(String, Arc<QueueMetrics>)>,
    counters: Vec<Counter>,
}

fn registry() -> std::sync::MutexGuard<'static, Registry> {
    static REGISTRY: OnceLock<Mutex<Registry>> = OnceLock::new();
    REGISTRY
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner())
}

/// The metrics of the queue called `name`, fresh (replacing an older queue's of that name).
pub fn queue(name: &str) -> Arc<QueueMetrics> {
    let m = Arc::new(QueueMetrics::default());
    let mut r = registry();
    r.queues.retain(|(n, _)| n != name);
    r.queues.push((name.to_string(), m.clone()));
    m
}

/// The metrics registered as `name` (tests look at what a queue recorded).
#[cfg(test)]
pub(crate) fn queue_for_test(name: &str) -> Arc<QueueMetrics> {
    registry()
        .queues
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, m)| m.clone())
        .expect("a queue registered under that name")
}

/// A process-wide counter `name` (registered once; later calls return the same one).
pub fn counter(name: &'static str, help: &'static str) -> Arc<AtomicU64> {
    let mut r = registry();
    if let Some(c) = r.counters.iter().find(|c| c.name == name) {
        return c.value.clone();
    }
    let value = Arc::new(AtomicU64::new(0));
    r.counters.push(Counter {
        name,
        help,
        value: value.clone(),
    });
    value
}

/// Every registered metric in Prometheus' text format.
pub fn render() -> String {
    let r = registry();
    let mut queues: Vec<&(String, Arc<QueueMetrics>)> = r.queues.iter().collect();
    queues.sort_by(|a, b| a.0.cmp(&b.0));
    let mut out = String::new();
    let gauge = |out: &mut String,
                 metric: &str,
                 kind: &str,
                 help: &str,
                 value: &dyn Fn(&QueueMetrics) -> String| {
        let _ = writeln!(out, "# HELP {metric} {help}\n# TYPE {metric} {kind}");
        for (name, m) in &queues {
            let _ = writeln!(out, "{metric}{{name=\"{name}\"}} {}", value(m));
        }
    };
    gauge(
        &mut out,
        "workqueue_depth",
        "gauge",
        "Keys waiting in the work queue.",
        &|m| m.depth.load(Ordering::Relaxed).to_string(),
    );
    gauge(
        &mut out,
        "skiff_workqueue_processing",
        "gauge",
        "Keys a worker is processing.",
        &|m| m.processing.load(Ordering::Relaxed).to_string(),
    );
    gauge(
        &mut out,
        "workqueue_adds_total",
        "counter",
        "Adds that queued a key.",
        &|m| m.adds.load(Ordering::Relaxed).to_string(),
    );
    gauge(
        &mut out,
        "workqueue_retries_total",
        "counter",
        "Keys queued again after a failed sync's backoff.",
        &|m| m.retries.load(Ordering::Relaxed).to_string(),
    );
    for (metric, help, pick) in [
        (
            "workqueue_queue_duration_seconds",
            "Time from a key's first add to a worker taking it.",
            (|m: &QueueMetrics| &m.queue_duration) as fn(&QueueMetrics) -> &Histogram,
        ),
        (
            "workqueue_work_duration_seconds",
            "Time a worker spent on a key.",
            |m: &QueueMetrics| &m.work_duration,
        ),
    ] {
        let _ = writeln!(out, "# HELP {metric} {help}\n# TYPE {metric} histogram");
        for (name, m) in &queues {
            pick(m).render(&mut out, metric, &format!("name=\"{name}\""));
        }
    }
    for c in &r.counters {
        let _ = writeln!(
            out,
            "# HELP {0} {1}\n# TYPE {0} counter\n{0} {2}",
            c.name,
            c.help,
            c.value.load(Ordering::Relaxed)
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn value(text: &str, series: &str) -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
            .unwrap_or_else(|| panic!("{series} missing in:\n{text}"))
            .parse()
            .expect("a number")
    }

    #[test]
    fn histograms_are_cumulative_with_sum_and_count() {
        let m = queue("metrics-test-histogram");
        m.queue_duration.observe(Duration::from_micros(50));
        m.queue_duration.observe(Duration::from_millis(3));
        m.queue_duration.observe(Duration::from_secs(60));
        let text = render();
        let s = |le: &str| {
            value(
                &text,
                &format!(
                    "workqueue_queue_duration_seconds_bucket{{name=\"metrics-test-histogram\",le=\"{le}\"}}"
                ),
            )
        };
        assert_eq!(s("0.0001"), 1.0);
        assert_eq!(s("0.0025"), 1.0);
        assert_eq!(s("0.005"), 2.0);
        assert_eq!(s("10"), 2.0);
        assert_eq!(s("+Inf"), 3.0);
        let sum = value(
            &text,
            "workqueue_queue_duration_seconds_sum{name=\"metrics-test-histogram\"}",
        );
        assert!((sum - 60.00305).abs() < 1e-9, "{sum}");
        assert_eq!(
            value(
                &text,
                "workqueue_queue_duration_seconds_count{name=\"metrics-test-histogram\"}"
            ),
            3.0
        );
    }

    #[test]
    fn a_queue_made_again_replaces_the_old_series_and_counters_are_shared() {
        let old = queue("metrics-test-replaced");
        old.adds.fetch_add(5, Ordering::Relaxed);
        let new = queue("metrics-test-replaced");
        new.adds.fetch_add(1, Ordering::Relaxed);
        let text = render();
        assert_eq!(
            text.matches("workqueue_adds_total{name=\"metrics-test-replaced\"}")
                .count(),
            1
        );
        assert_eq!(
            value(
                &text,
                "workqueue_adds_total{name=\"metrics-test-replaced\"}"
            ),
            1.0
        );
        let a = counter("skiff_metrics_test_total", "A test counter.");
        let b = counter("skiff_metrics_test_total", "A test counter.");
        a.fetch_add(2, Ordering::Relaxed);
        b.fetch_add(1, Ordering::Relaxed);
        assert_eq!(value(&render(), "skiff_metrics_test_total"), 3.0);
    }
}
