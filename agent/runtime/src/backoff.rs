//! CrashLoopBackOff: when a container that exited may start again.
//!
//! The kubelet keeps one `flowcontrol.Backoff` entry per container (initial 10 s, doubling,
//! capped at 5 min, no jitter) and consults it in `doBackOff` with the container's
//! `finishedAt`:
//! - no entry → start now and create one (so the *first* restart is immediate);
//! - an entry whose last update is older than the reset window → treated as absent: a
//!   container that ran that long is healthy again and starts over at the initial delay;
//! - otherwise the container waits until `finishedAt + delay` (reason `CrashLoopBackOff`),
//!   and each start doubles the delay for the next crash.
//!
//! Time is an input everywhere, so the rules are unit-tested without sleeping.

use std::time::{Duration, SystemTime};

/// The knobs; [`BackoffConfig::default`] is the kubelet's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackoffConfig {
    /// First delay (kubelet: 10 s).
    pub initial: Duration,
    /// Cap (kubelet: 5 min).
    pub max: Duration,
    /// A container that ran at least this long since its previous start has its backoff
    /// reset (kubelet: 2 × max = 10 min).
    pub reset_after: Duration,
}

impl Default for BackoffConfig {
    fn default() -> Self {
        BackoffConfig {
            initial: Duration::from_secs(10),
            max: Duration::from_secs(300),
            reset_after: Duration::from_secs(600),
        }
    }
}

impl BackoffConfig {
    /// The kubelet's shape with a different base: `initial`, capped at 30 × initial,
    /// reset after 60 × initial (tests use milliseconds).
    pub fn scaled(initial: Duration) -> Self {
        BackoffConfig {
            initial,
            max: initial * 30,
            reset_after: initial * 60,
        }
    }
}

/// One container's backoff entry.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Backoff {
    entry: Option<Entry>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Entry {
    delay: Duration,
    last_start: SystemTime,
}

impl Backoff {
    /// When a container that finished at `finished_at` may start again (`None`: now).
    pub fn restart_at(&self, cfg: &BackoffConfig, finished_at: SystemTime) -> Option<SystemTime> {
        let e = self.live_entry(cfg, finished_at)?;
        Some(finished_at + e.delay)
    }

    /// The delay the next [`Backoff::restart_at`] waits, for messages ("back-off 20s").
    pub fn current_delay(&self, cfg: &BackoffConfig, finished_at: SystemTime) -> Duration {
        self.live_entry(cfg, finished_at)
            .map_or(Duration::ZERO, |e| e.delay)
    }

    /// Records a (re)start at `now` after a run that finished at `finished_at` (or a first
    /// start: `None`), as `backOff.Next` does.
    pub fn record_start(
        &mut self,
        cfg: &BackoffConfig,
        finished_at: Option<SystemTime>,
        now: SystemTime,
    ) {
        let live = finished_at.and_then(|f| self.live_entry(cfg, f));
        let delay = match (live, finished_at) {
            // First start of the container: no entry yet, the first crash restarts at once.
            (_, None) => {
                self.entry = None;
                return;
            }
            (None, Some(_)) => cfg.initial,
            (Some(e), Some(_)) => (e.delay * 2).min(cfg.max),
        };
        self.entry = Some(Entry {
            delay,
            last_start: now,
        });
    }

    fn live_entry(&self, cfg: &BackoffConfig, finished_at: SystemTime) -> Option<Entry> {
        let e = self.entry?;
        let ran = finished_at
            .duration_since(e.last_start)
            .unwrap_or(Duration::ZERO);
        (ran <= cfg.reset_after).then_some(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000 + s)
    }

    #[test]
    fn first_restart_is_immediate_then_doubles_to_the_cap() {
        let cfg = BackoffConfig::default();
        let mut b = Backoff::default();
        b.record_start(&cfg, None, t(0));
        // Crash 1 at t=1: restart now (no entry), which creates the 10 s entry.
        assert_eq!(b.restart_at(&cfg, t(1)), None);
        b.record_start(&cfg, Some(t(1)), t(1));
        let mut now = 1;
        let mut seen = vec![];
        for _ in 0..8 {
            let finished = now + 1;
            let at = b.restart_at(&cfg, t(finished)).expect("in backoff");
            let delay = at.duration_since(t(finished)).unwrap().as_secs();
            seen.push(delay);
            now = finished + delay;
            b.record_start(&cfg, Some(t(finished)), t(now));
        }
        assert_eq!(seen, [10, 20, 40, 80, 160, 300, 300, 300]);
    }

    #[test]
    fn a_long_run_resets_the_delay() {
        let cfg = BackoffConfig::default();
        let mut b = Backoff::default();
        b.record_start(&cfg, None, t(0));
        b.record_start(&cfg, Some(t(1)), t(1));
        b.record_start(&cfg, Some(t(2)), t(12));
        assert_eq!(b.current_delay(&cfg, t(13)), Duration::from_secs(20));
        // Ran 10 min + 1 s since the last start: healthy again, restart at once.
        assert_eq!(b.restart_at(&cfg, t(12 + 601)), None);
        b.record_start(&cfg, Some(t(613)), t(613));
        assert_eq!(b.restart_at(&cfg, t(614)), Some(t(624)));
    }

    #[test]
    fn scaled_keeps_the_kubelet_shape() {
        let cfg = BackoffConfig::scaled(Duration::from_millis(100));
        assert_eq!(cfg.max, Duration::from_secs(3));
        assert_eq!(cfg.reset_after, Duration::from_secs(6));
    }
}
