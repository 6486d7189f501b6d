//! Upstream's `ControllerExpectations` idea, tracked by pod identity: after a reconcile
//! creates or deletes pods, the owner does not act on its pod cache again until the
//! cache has seen those writes (created pods present, deleted pods gone or terminating).
//! Without this, a reconcile that runs before the watch delivers its own creates would
//! see too few pods and create them again.
//!
//! Upstream counts adds/deletes down from informer callbacks; kube-rs reflectors have no
//! callbacks, so this checks the cache itself for the (name, uid) pairs it is waiting
//! for. Like upstream, an expectation expires after five minutes (a lost watch event
//! must not wedge the owner forever).

use std::{
    collections::HashMap,
    sync::Mutex,
    time::{Duration, Instant},
};

/// Upstream's `ExpectationsTimeout`.
pub const TIMEOUT: Duration = Duration::from_secs(5 * 60);

/// What the cache says about one pod (by namespace/name).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seen {
    Absent,
    /// Present with this uid; `terminating` = has a deletionTimestamp.
    Present {
        uid: String,
        terminating: bool,
    },
}

#[derive(Debug, Default)]
struct Pending {
    /// (name, uid) created and not yet seen.
    adds: Vec<(String, String)>,
    /// (name, uid) deleted and still seen without deletionTimestamp.
    dels: Vec<(String, String)>,
    since: Option<Instant>,
}

#[derive(Debug, Default)]
pub struct Expectations {
    pending: Mutex<HashMap<String, Pending>>,
}

impl Expectations {
    pub fn expect_creations(&self, key: &str, created: impl IntoIterator<Item = (String, String)>) {
        let mut p = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        let e = p.entry(key.to_string()).or_default();
        e.adds.extend(created);
        e.since = Some(Instant::now());
    }

    pub fn expect_deletions(&self, key: &str, deleted: impl IntoIterator<Item = (String, String)>) {
        let mut p = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        let e = p.entry(key.to_string()).or_default();
        e.dels.extend(deleted);
        e.since = Some(Instant::now());
    }

    /// Are the owner's own writes visible in the cache (`seen` looks a pod name up)?
    /// Observed writes are forgotten; an expired expectation counts as satisfied.
    pub fn satisfied(&self, key: &str, seen: impl Fn(&str) -> Seen) -> bool {
        self.satisfied_at(key, seen, Instant::now())
    }

    fn satisfied_at(&self, key: &str, seen: impl Fn(&str) -> Seen, now: Instant) -> bool {
        let mut p = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        let Some(e) = p.get_mut(key) else { return true };
        e.adds.retain(|(name, uid)| match seen(name) {
            Seen::Present { uid: u, .. } => &u != uid,
            Seen::Absent => true,
        });
        e.dels.retain(|(name, uid)| match seen(name) {
            Seen::Present {
                uid: u,
                terminating,
            } => &u == uid && !terminating,
            Seen::Absent => false,
        });
        let expired = e.since.is_some_and(|s| now.duration_since(s) > TIMEOUT);
        if e.adds.is_empty() && e.dels.is_empty() || expired {
            if expired {
                tracing::warn!(
                    "{key}: expectations expired after {TIMEOUT:?} ({} creates, {} deletes never observed)",
                    e.adds.len(),
                    e.dels.len()
                );
            }
            p.remove(key);
            return true;
        }
        false
    }

    /// Forgets an owner (it was deleted).
    pub fn forget(&self, key: &str) {
        self.pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_for_own_writes_then_expires() {
        let e = Expectations::default();
        assert!(e.satisfied("rs", |_| Seen::Absent), "nothing expected");
        e.expect_creations("rs", [("a".into(), "ua".into()), ("b".into(), "ub".into())]);
        e.expect_deletions("rs", [("c".into(), "uc".into())]);
        let present = |uid: &str, terminating| Seen::Present {
            uid: uid.into(),
            terminating,
        };
        // Nothing seen yet.
        assert!(!e.satisfied("rs", |n| if n == "c" {
            present("uc", false)
        } else {
            Seen::Absent
        }));
        // a seen, c terminating; b still missing.
        assert!(!e.satisfied("rs", |n| match n {
            "a" => present("ua", false),
            "c" => present("uc", true),
            _ => Seen::Absent,
        }));
        // A different pod with b's name (recreated) is not b.
        assert!(!e.satisfied("rs", |n| if n == "b" {
            present("other", false)
        } else {
            Seen::Absent
        }));
        assert!(e.satisfied("rs", |n| if n == "b" {
            present("ub", false)
        } else {
            Seen::Absent
        }));
        assert!(
            e.satisfied("rs", |_| Seen::Absent),
            "forgotten once satisfied"
        );

        e.expect_creations("rs", [("x".into(), "ux".into())]);
        let later = Instant::now() + TIMEOUT + Duration::from_secs(1);
        assert!(e.satisfied_at("rs", |_| Seen::Absent, later), "expired");
    }
}
