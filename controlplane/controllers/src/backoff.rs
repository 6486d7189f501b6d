//! Per-key exponential backoff for failed reconciles: 5 ms doubling to a 60 s cap (the
//! shape of client-go's `ItemExponentialFailureRateLimiter` in the controller-manager),
//! reset by a success. Not a fixed multi-second stall: the first retries are immediate
//! enough that a transient conflict costs milliseconds.

use std::{collections::HashMap, sync::Mutex, time::Duration};

#[derive(Debug)]
pub struct Backoff {
    base: Duration,
    cap: Duration,
    failures: Mutex<HashMap<String, u32>>,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff::new(Duration::from_millis(5), Duration::from_secs(60))
    }
}

impl Backoff {
    pub fn new(base: Duration, cap: Duration) -> Backoff {
        Backoff {
            base,
            cap,
            failures: Mutex::new(HashMap::new()),
        }
    }

    /// Records a failure of `key` and returns how long to wait before retrying it.
    pub fn failed(&self, key: &str) -> Duration {
        let mut f = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        let n = f.entry(key.to_string()).or_insert(0);
        let delay = self
            .base
            .saturating_mul(1u32.checked_shl(*n).unwrap_or(u32::MAX))
            .min(self.cap);
        *n = n.saturating_add(1);
        delay
    }

    /// Forgets `key`'s failures (call after a successful reconcile).
    pub fn succeeded(&self, key: &str) {
        self.failures
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_to_the_cap_and_resets() {
        let b = Backoff::new(Duration::from_millis(5), Duration::from_millis(30));
        assert_eq!(b.failed("a"), Duration::from_millis(5));
        assert_eq!(b.failed("a"), Duration::from_millis(10));
        assert_eq!(b.failed("a"), Duration::from_millis(20));
        assert_eq!(b.failed("a"), Duration::from_millis(30));
        assert_eq!(
            b.failed("b"),
            Duration::from_millis(5),
            "keys are independent"
        );
        for _ in 0..100 {
            assert!(b.failed("a") <= Duration::from_millis(30));
        }
        b.succeeded("a");
        assert_eq!(b.failed("a"), Duration::from_millis(5));
    }
}
