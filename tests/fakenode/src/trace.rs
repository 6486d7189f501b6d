//! What `skiff-controllers-bench` reads back from the server: the EndpointSlice
//! controller's work-queue gauges on the admin `/metrics` (so the steady phase starts on
//! an idle queue), and the controller's per-sync debug lines in the server log (so each
//! probe's latency splits into the controller's own stages).

/// The EndpointSlice controller's queue as `/metrics` shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueState {
    /// `workqueue_depth`: keys waiting.
    pub depth: i64,
    /// `skiff_workqueue_processing`: keys a worker holds.
    pub processing: i64,
    /// `workqueue_adds_total`: changes as long as events keep queueing syncs.
    pub adds: u64,
}

impl QueueState {
    pub fn idle(&self) -> bool {
        self.depth == 0 && self.processing == 0
    }
}

/// The queue `name`'s state in a `/metrics` text; `None` if the server does not export it
/// (not a skiff-controlplane with in-process controllers, or an older one).
pub fn queue_state(metrics: &str, name: &str) -> Option<QueueState> {
    let series = |metric: &str| -> Option<&str> {
        let prefix = format!("{metric}{{name=\"{name}\"}} ");
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(prefix.as_str()))
            .map(str::trim)
    };
    Some(QueueState {
        depth: series("workqueue_depth")?.parse().ok()?,
        processing: series("skiff_workqueue_processing")?.parse().ok()?,
        adds: series("workqueue_adds_total")?.parse().ok()?,
    })
}

/// One EndpointSlice sync from the server log (`endpointslice: synced <ns>/<svc> … trace:
/// enq=… deq=… sent=… answered=… end=… deferred=…`), wall-clock µs since the epoch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sync {
    /// `namespace/name` of the Service.
    pub service: String,
    /// The key's first add to the queue (≈ the triggering event's arrival).
    pub enqueued: i64,
    /// A worker took it.
    pub dequeued: i64,
    /// Its slice/Endpoints writes went out and were all answered (None: wrote nothing).
    pub writes: Option<(i64, i64)>,
    pub end: i64,
    /// The caches were behind our own writes: it planned nothing and waits for an echo.
    pub deferred: bool,
}

/// The sync lines of a server log, in log order.
pub fn syncs(log: &str) -> Vec<Sync> {
    log.lines().filter_map(parse_sync).collect()
}

fn parse_sync(line: &str) -> Option<Sync> {
    let rest = &line[line.find("endpointslice: synced ")? + "endpointslice: synced ".len()..];
    let service = rest.split_whitespace().next()?.to_string();
    let trace = &rest[rest.find(" trace: ")? + " trace: ".len()..];
    let field = |k: &str| -> Option<&str> {
        trace
            .split_whitespace()
            .find_map(|kv| kv.strip_prefix(k)?.strip_prefix('='))
    };
    let num = |k: &str| -> Option<i64> { field(k)?.parse().ok() };
    let writes = match (field("sent")?, field("answered")?) {
        ("-", _) | (_, "-") => None,
        (a, b) => Some((a.parse().ok()?, b.parse().ok()?)),
    };
    Some(Sync {
        service,
        enqueued: num("enq")?,
        dequeued: num("deq")?,
        writes,
        end: num("end")?,
        deferred: field("deferred")? == "true",
    })
}

/// One probe's path through the controller, from the syncs of its Service.
#[derive(Debug, Clone, PartialEq)]
pub struct Path {
    /// The first sync taken after the Ready write was sent: its first add.
    pub enqueued: i64,
    /// The sync that wrote the ready endpoint (the first one with writes after the
    /// Ready write): taken, writes sent, answered.
    pub dequeued: i64,
    pub sent: i64,
    pub answered: i64,
    /// Syncs between the Ready write and the writing one that deferred.
    pub deferrals: usize,
    /// Syncs between them that ran and wrote nothing.
    pub idle_syncs: usize,
}

/// The path of a probe whose Ready write was sent at `sent_at` (wall µs), given its
/// Service's syncs in log order; None if no sync wrote after it.
pub fn path(syncs: &[&Sync], sent_at: i64) -> Option<Path> {
    let after: Vec<&&Sync> = syncs.iter().filter(|s| s.dequeued >= sent_at).collect();
    let first = after.first()?;
    let writer = after.iter().find(|s| s.writes.is_some())?;
    let (sent, answered) = writer.writes?;
    let before_writer = after.iter().take_while(|s| s.writes.is_none());
    let (mut deferrals, mut idle_syncs) = (0, 0);
    for s in before_writer {
        if s.deferred {
            deferrals += 1;
        } else {
            idle_syncs += 1;
        }
    }
    Some(Path {
        enqueued: first.enqueued.min(writer.enqueued),
        dequeued: writer.dequeued,
        sent,
        answered,
        deferrals,
        idle_syncs,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_queue_gauges_and_misses_an_unknown_queue() {
        let text = "# HELP workqueue_depth x\nworkqueue_depth{name=\"endpointslice\"} 3\n\
                    skiff_workqueue_processing{name=\"endpointslice\"} 1\n\
                    workqueue_adds_total{name=\"endpointslice\"} 1234\n";
        let q = queue_state(text, "endpointslice").expect("present");
        assert_eq!(
            q,
            QueueState {
                depth: 3,
                processing: 1,
                adds: 1234
            }
        );
        assert!(!q.idle());
        assert_eq!(queue_state(text, "other"), None);
        assert_eq!(queue_state("", "endpointslice"), None);
    }

    const LOG: &str = "\
2026-12-01T20:00:00.000001Z DEBUG skiff_controllers::endpointslice: endpointslice: synced default/svc-1 in 1.2ms after 300µs queued (0 queued now) trace: enq=100 deq=400 sent=- answered=- end=500 deferred=true
2026-12-01T20:00:00.000002Z  INFO skiff_controllers::endpointslice: endpointslice: updated default/svc-1-abc for Service default/svc-1 (11 endpoints)
2026-12-01T20:00:00.000003Z DEBUG skiff_controllers::endpointslice: endpointslice: synced default/svc-1 in 3ms after 10µs queued (0 queued now) trace: enq=900 deq=910 sent=950 answered=2950 end=3000 deferred=false
2026-12-01T20:00:00.000004Z DEBUG skiff_controllers::endpointslice: endpointslice: synced default/svc-2 in 1ms after 0ns queued (0 queued now)
";

    #[test]
    fn parses_sync_lines_and_finds_a_probes_path() {
        let s = syncs(LOG);
        assert_eq!(s.len(), 2, "lines without a trace are skipped: {s:?}");
        assert_eq!(s[1].writes, Some((950, 2950)));
        assert!(s[0].deferred);
        let refs: Vec<&Sync> = s.iter().collect();
        let p = path(&refs, 50).expect("a writing sync");
        assert_eq!(
            p,
            Path {
                enqueued: 100,
                dequeued: 910,
                sent: 950,
                answered: 2950,
                deferrals: 1,
                idle_syncs: 0
            }
        );
        assert_eq!(path(&refs, 3001), None, "nothing wrote after it");
    }
}
