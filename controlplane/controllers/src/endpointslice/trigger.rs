//! Upstream's `TriggerTimeTracker` (`pkg/controller/util/endpoint/trigger_time_tracker.go`):
//! the value of `endpoints.kubernetes.io/last-change-trigger-time`.
//!
//! Per Service it remembers the trigger time of every selected pod (its Ready condition's
//! last transition, else its creation) and of the Service (its creation) as of the last
//! sync. A sync's trigger time is the EARLIEST of the times that moved since then: the
//! oldest change the written endpoints are the first to reflect, so "now − annotation"
//! is the network programming latency of that change (the SIG scalability SLI). Nothing
//! moved → None (upstream clears the annotation).

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use k8s_openapi::{
    api::core::v1::{Pod, Service},
    apimachinery::pkg::apis::meta::v1::Time,
    jiff::Timestamp,
};

use super::pods;

#[derive(Default)]
struct State {
    /// Pod name → (trigger time, whether it came from the Ready condition).
    pods: HashMap<String, (Timestamp, bool)>,
    service: Option<Timestamp>,
}

#[derive(Default, Clone)]
pub struct TriggerTimeTracker {
    services: Arc<Mutex<HashMap<(String, String), State>>>,
}

impl TriggerTimeTracker {
    /// The trigger time for a sync of `svc` over `pods` (its selected pods); records them.
    pub fn compute(&self, svc: &Service, pods: &[&Pod]) -> Option<Time> {
        let key = (
            svc.metadata.namespace.clone().unwrap_or_default(),
            svc.metadata.name.clone().unwrap_or_default(),
        );
        let mut all = self.services.lock().unwrap_or_else(|e| e.into_inner());
        let state = all.entry(key).or_default();
        let mut min: Option<Timestamp> = None;
        let mut now_pods = HashMap::with_capacity(pods.len());
        for p in pods {
            let Some((t, from_ready)) = pods::trigger_time(p) else {
                continue;
            };
            let name = p.metadata.name.clone().unwrap_or_default();
            // Moved: a later time, or the first Ready transition after the creation time
            // stood in for it (both can fall in the same second).
            let moved = state.pods.get(&name).is_none_or(|&(last, last_ready)| {
                t.0 > last || (t.0 == last && from_ready && !last_ready)
            });
            if moved {
                min = Some(min.map_or(t.0, |m| m.min(t.0)));
            }
            now_pods.insert(name, (t.0, from_ready));
        }
        let svc_time = svc.metadata.creation_timestamp.as_ref().map(|t| t.0);
        if let Some(t) = svc_time {
            if state.service.is_none_or(|last| t > last) {
                min = Some(min.map_or(t, |m| m.min(t)));
            }
        }
        state.pods = now_pods;
        state.service = svc_time;
        min.map(Time)
    }

    /// Forgets a deleted Service.
    pub fn delete_service(&self, namespace: &str, name: &str) {
        self.services
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&(namespace.to_string(), name.to_string()));
    }
}

#[cfg(test)]
mod tests {
    use super::super::pods::testing::*;
    use super::*;

    #[test]
    fn reports_the_earliest_unreflected_change() {
        let tracker = TriggerTimeTracker::default();
        let svc = service("web", vec![]);
        let a = pod("a", "10.42.0.1", true);
        // First sync: the Service's creation is the oldest change.
        assert_eq!(
            tracker.compute(&svc, &[&a]),
            Some(ts("2025-12-31T00:00:00Z"))
        );
        // Nothing moved.
        assert_eq!(tracker.compute(&svc, &[&a]), None);
        // b turns ready later than a did; then a flips too: the earlier of the two.
        let mut b = pod("b", "10.42.0.2", true);
        b.status.as_mut().unwrap().conditions.as_mut().unwrap()[0].last_transition_time =
            Some(ts("2026-01-01T00:09:00Z"));
        assert_eq!(
            tracker.compute(&svc, &[&a, &b]),
            Some(ts("2026-01-01T00:09:00Z"))
        );
        let mut a2 = a.clone();
        a2.status.as_mut().unwrap().conditions.as_mut().unwrap()[0].last_transition_time =
            Some(ts("2026-01-01T00:10:00Z"));
        let mut b2 = b.clone();
        b2.status.as_mut().unwrap().conditions.as_mut().unwrap()[0].last_transition_time =
            Some(ts("2026-01-01T00:11:00Z"));
        assert_eq!(
            tracker.compute(&svc, &[&a2, &b2]),
            Some(ts("2026-01-01T00:10:00Z"))
        );
        // A pod created without a Ready condition that turns ready within the same
        // second: its first Ready transition still counts as a change.
        let mut c = pod("c", "10.42.0.3", true);
        c.status.as_mut().unwrap().conditions = None;
        c.metadata.creation_timestamp = Some(ts("2026-01-01T00:20:00Z"));
        assert_eq!(
            tracker.compute(&svc, &[&a2, &b2, &c]),
            Some(ts("2026-01-01T00:20:00Z"))
        );
        let mut c_ready = pod("c", "10.42.0.3", true);
        c_ready.metadata.creation_timestamp = c.metadata.creation_timestamp.clone();
        c_ready
            .status
            .as_mut()
            .unwrap()
            .conditions
            .as_mut()
            .unwrap()[0]
            .last_transition_time = Some(ts("2026-01-01T00:20:00Z"));
        assert_eq!(
            tracker.compute(&svc, &[&a2, &b2, &c_ready]),
            Some(ts("2026-01-01T00:20:00Z"))
        );
        assert_eq!(tracker.compute(&svc, &[&a2, &b2, &c_ready]), None);
        tracker.delete_service("default", "web");
        assert_eq!(
            tracker.compute(&svc, &[&a2]),
            Some(ts("2025-12-31T00:00:00Z"))
        );
    }
}
