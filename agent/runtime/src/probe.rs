//! Probe semantics (pure): when a probe is due and what its results mean, as the kubelet's
//! prober workers (`pkg/kubelet/prober/worker.go`) define them.
//!
//! - A worker starts with the container. Nothing runs before `initialDelaySeconds` have
//!   passed since the container started; then one probe per `periodSeconds`.
//! - The initial result is *failure* for readiness (not ready until proven), *success* for
//!   liveness (alive until proven dead) and *unknown* for startup.
//! - The result flips only after `successThreshold` consecutive successes (readiness only;
//!   liveness and startup must use 1) or `failureThreshold` consecutive failures.
//! - While a startup probe has not succeeded, liveness and readiness do not run; once it
//!   succeeded it never runs again for that container instance.
//! - A liveness or startup probe that reaches its failure threshold kills the container;
//!   its restart policy decides what comes next.

use std::time::{Duration, SystemTime};

use k8s_openapi::{api::core::v1::Probe, apimachinery::pkg::util::intstr::IntOrString};

/// Which probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ProbeKind {
    Startup,
    Liveness,
    Readiness,
}

impl ProbeKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ProbeKind::Startup => "Startup",
            ProbeKind::Liveness => "Liveness",
            ProbeKind::Readiness => "Readiness",
        }
    }
}

/// What a probe does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// GET `scheme://host:port/path`; 200..=399 is success.
    Http {
        host: Option<String>,
        port: PortRef,
        path: String,
        https: bool,
        headers: Vec<(String, String)>,
    },
    /// A TCP connect that completes is success.
    Tcp { host: Option<String>, port: PortRef },
    /// A command run in the container's environment; exit 0 is success.
    Exec { command: Vec<String> },
    /// A handler skiff does not implement (gRPC): always fails, with this message.
    Unsupported(String),
}

/// A port by number or by the name of a container port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PortRef {
    Number(u16),
    Name(String),
}

impl PortRef {
    fn from_intstr(p: &IntOrString) -> PortRef {
        match p {
            IntOrString::Int(n) => PortRef::Number(u16::try_from(*n).unwrap_or(0)),
            IntOrString::String(s) => match s.parse::<u16>() {
                Ok(n) => PortRef::Number(n),
                Err(_) => PortRef::Name(s.clone()),
            },
        }
    }
}

/// A probe with upstream's defaults applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeSpec {
    pub action: Action,
    pub initial_delay: Duration,
    pub period: Duration,
    pub timeout: Duration,
    pub success_threshold: u32,
    pub failure_threshold: u32,
}

fn secs(v: Option<i32>, default: i32, min: i32) -> Duration {
    Duration::from_secs(v.unwrap_or(default).max(min) as u64)
}

impl ProbeSpec {
    /// From the API object; defaults as in the API (period 10 s, timeout 1 s, success 1,
    /// failure 3). Values below the API's minimum (validation rejects them upstream) are
    /// raised to it rather than making a probe spin.
    pub fn from_api(p: &Probe, kind: ProbeKind) -> ProbeSpec {
        let handler = p;
        let action = if let Some(h) = &handler.http_get {
            Action::Http {
                host: h.host.clone().filter(|s| !s.is_empty()),
                port: PortRef::from_intstr(&h.port),
                path: h
                    .path
                    .clone()
                    .filter(|s| !s.is_empty())
                    .unwrap_or_else(|| "/".into()),
                https: h.scheme.as_deref() == Some("HTTPS"),
                headers: h
                    .http_headers
                    .iter()
                    .flatten()
                    .map(|h| (h.name.clone(), h.value.clone()))
                    .collect(),
            }
        } else if let Some(t) = &handler.tcp_socket {
            Action::Tcp {
                host: t.host.clone().filter(|s| !s.is_empty()),
                port: PortRef::from_intstr(&t.port),
            }
        } else if let Some(e) = &handler.exec {
            Action::Exec {
                command: e.command.clone().unwrap_or_default(),
            }
        } else if handler.grpc.is_some() {
            Action::Unsupported("gRPC probes are not supported by skiff's runtime".into())
        } else {
            Action::Unsupported("the probe has no handler (httpGet, tcpSocket or exec)".into())
        };
        // Liveness and startup must have successThreshold 1 (API validation).
        let success = match kind {
            ProbeKind::Readiness => p.success_threshold.unwrap_or(1).max(1) as u32,
            _ => 1,
        };
        ProbeSpec {
            action,
            initial_delay: secs(p.initial_delay_seconds, 0, 0),
            period: secs(p.period_seconds, 10, 1),
            timeout: secs(p.timeout_seconds, 1, 1),
            success_threshold: success,
            failure_threshold: p.failure_threshold.unwrap_or(3).max(1) as u32,
        }
    }
}

/// A probe's current verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Unknown,
    Success,
    Failure,
}

/// One probe of one container instance.
#[derive(Debug, Clone)]
pub struct Tracker {
    pub kind: ProbeKind,
    pub spec: ProbeSpec,
    started_at: SystemTime,
    last_run: Option<SystemTime>,
    in_flight: bool,
    successes: u32,
    failures: u32,
    verdict: Verdict,
    /// The message of the last failed run (for events and logs).
    pub last_failure: Option<String>,
}

impl Tracker {
    pub fn new(kind: ProbeKind, spec: ProbeSpec, container_started_at: SystemTime) -> Tracker {
        let verdict = match kind {
            ProbeKind::Readiness => Verdict::Failure,
            ProbeKind::Liveness => Verdict::Success,
            ProbeKind::Startup => Verdict::Unknown,
        };
        Tracker {
            kind,
            spec,
            started_at: container_started_at,
            last_run: None,
            in_flight: false,
            successes: 0,
            failures: 0,
            verdict,
            last_failure: None,
        }
    }

    pub fn verdict(&self) -> Verdict {
        self.verdict
    }

    /// When the next run is due (it may be in the past); `None` while one is in flight.
    pub fn next_due(&self) -> Option<SystemTime> {
        if self.in_flight {
            return None;
        }
        Some(match self.last_run {
            None => self.started_at + self.spec.initial_delay,
            Some(last) => last + self.spec.period,
        })
    }

    /// Whether a run should start at `now`.
    pub fn due(&self, now: SystemTime) -> bool {
        self.next_due().is_some_and(|d| d <= now)
    }

    /// Marks a run as started at `now`.
    pub fn begin(&mut self, now: SystemTime) {
        self.in_flight = true;
        self.last_run = Some(now);
    }

    /// Records a run's result; returns whether the verdict changed.
    pub fn record(&mut self, ok: bool, message: Option<String>) -> bool {
        self.in_flight = false;
        let before = self.verdict;
        if ok {
            self.failures = 0;
            self.successes = self.successes.saturating_add(1);
            if self.successes >= self.spec.success_threshold {
                self.verdict = Verdict::Success;
            }
        } else {
            self.successes = 0;
            self.failures = self.failures.saturating_add(1);
            self.last_failure = message;
            if self.failures >= self.spec.failure_threshold {
                self.verdict = Verdict::Failure;
            }
        }
        before != self.verdict
    }

    /// Takes over the verdict an earlier runtime reached for the same running container
    /// (adoption after an agent restart). Without it a readiness tracker starts at
    /// Failure, and every ready pod of a restarted agent would flap not-ready until its
    /// first probe: its endpoints leave their Services, and the node's established
    /// connections to them are cut. (The kubelet has that flap: after a restart it
    /// reports ready=false until the readiness probe runs again.) The next runs judge as
    /// usual: `failure_threshold` failures still turn it.
    pub fn assume(&mut self, verdict: Verdict) {
        self.verdict = verdict;
    }

    /// After a liveness/startup kill the worker starts over with the next instance; this
    /// one must not fire again (the kubelet pauses the worker until the restart).
    pub fn consecutive_failures(&self) -> u32 {
        self.failures
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{ExecAction, HTTPGetAction, TCPSocketAction};

    fn t(ms: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_millis(1_000_000_000 + ms)
    }

    fn spec(delay: u64, period: u64, success: u32, failure: u32) -> ProbeSpec {
        ProbeSpec {
            action: Action::Tcp {
                host: None,
                port: PortRef::Number(80),
            },
            initial_delay: Duration::from_secs(delay),
            period: Duration::from_secs(period),
            timeout: Duration::from_secs(1),
            success_threshold: success,
            failure_threshold: failure,
        }
    }

    #[test]
    fn defaults_and_handlers_follow_the_api() {
        let p = Probe {
            http_get: Some(HTTPGetAction {
                port: IntOrString::String("http".into()),
                ..Default::default()
            }),
            success_threshold: Some(3),
            ..Default::default()
        };
        let s = ProbeSpec::from_api(&p, ProbeKind::Readiness);
        assert_eq!(s.period, Duration::from_secs(10));
        assert_eq!(s.timeout, Duration::from_secs(1));
        assert_eq!((s.success_threshold, s.failure_threshold), (3, 3));
        assert_eq!(
            s.action,
            Action::Http {
                host: None,
                port: PortRef::Name("http".into()),
                path: "/".into(),
                https: false,
                headers: vec![]
            }
        );
        // Liveness ignores a successThreshold other than 1.
        assert_eq!(
            ProbeSpec::from_api(&p, ProbeKind::Liveness).success_threshold,
            1
        );
        let tcp = Probe {
            tcp_socket: Some(TCPSocketAction {
                port: IntOrString::Int(8080),
                host: Some(String::new()),
            }),
            ..Default::default()
        };
        assert_eq!(
            ProbeSpec::from_api(&tcp, ProbeKind::Liveness).action,
            Action::Tcp {
                host: None,
                port: PortRef::Number(8080)
            }
        );
        let exec = Probe {
            exec: Some(ExecAction {
                command: Some(vec!["true".into()]),
            }),
            ..Default::default()
        };
        assert!(matches!(
            ProbeSpec::from_api(&exec, ProbeKind::Startup).action,
            Action::Exec { .. }
        ));
        assert!(matches!(
            ProbeSpec::from_api(&Probe::default(), ProbeKind::Startup).action,
            Action::Unsupported(_)
        ));
    }

    #[test]
    fn initial_delay_then_period() {
        let mut tr = Tracker::new(ProbeKind::Liveness, spec(5, 2, 1, 3), t(0));
        assert!(!tr.due(t(4_999)));
        assert!(tr.due(t(5_000)));
        tr.begin(t(5_000));
        assert!(!tr.due(t(9_000)), "no second run while one is in flight");
        tr.record(true, None);
        assert_eq!(tr.next_due(), Some(t(7_000)));
    }

    #[test]
    fn initial_verdicts_per_kind() {
        assert_eq!(
            Tracker::new(ProbeKind::Readiness, spec(0, 1, 1, 1), t(0)).verdict(),
            Verdict::Failure
        );
        assert_eq!(
            Tracker::new(ProbeKind::Liveness, spec(0, 1, 1, 1), t(0)).verdict(),
            Verdict::Success
        );
        assert_eq!(
            Tracker::new(ProbeKind::Startup, spec(0, 1, 1, 1), t(0)).verdict(),
            Verdict::Unknown
        );
    }

    #[test]
    fn thresholds_need_consecutive_results() {
        let mut tr = Tracker::new(ProbeKind::Readiness, spec(0, 1, 2, 3), t(0));
        assert!(!tr.record(true, None));
        assert_eq!(tr.verdict(), Verdict::Failure, "one success of two");
        assert!(tr.record(true, None));
        assert_eq!(tr.verdict(), Verdict::Success);
        tr.record(false, Some("a".into()));
        tr.record(false, Some("b".into()));
        tr.record(true, None); // interrupts the failure run
        tr.record(false, Some("c".into()));
        tr.record(false, Some("d".into()));
        assert_eq!(tr.verdict(), Verdict::Success, "two failures of three");
        assert!(tr.record(false, Some("e".into())));
        assert_eq!(tr.verdict(), Verdict::Failure);
        assert_eq!(tr.last_failure.as_deref(), Some("e"));
        assert_eq!(tr.consecutive_failures(), 3);
    }
}
