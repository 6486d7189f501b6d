//! The scheduler's view of the cluster, updated by watch events: what the runtime's loop
//! owns, kept free of I/O so the event rules are unit-tested. The rules are upstream's
//! event handlers (`eventhandlers.go`): bound pods go to the cache, our pending pods to the
//! queue, and events that may make a rejected pod fit move the unschedulable ones.

use std::sync::Arc;
use std::time::Instant;

use k8s_openapi::api::core::v1::{Node, Pod};

use crate::cache::{Cache, NodeChange};
use crate::info::PodInfo;
use crate::queue::SchedulingQueue;

fn is_terminal(p: &Pod) -> bool {
    matches!(
        p.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Succeeded" | "Failed")
    )
}

#[derive(Debug)]
pub struct State {
    pub cache: Cache,
    pub queue: SchedulingQueue,
    scheduler_name: String,
}

impl State {
    pub fn new(scheduler_name: String) -> State {
        State {
            cache: Cache::new(),
            queue: SchedulingQueue::default(),
            scheduler_name,
        }
    }

    /// Ours: `spec.schedulerName` is ours or empty (the API server defaults it).
    pub fn responsible(&self, p: &Pod) -> bool {
        let name = p
            .spec
            .as_ref()
            .and_then(|s| s.scheduler_name.as_deref())
            .unwrap_or("");
        name.is_empty() || name == self.scheduler_name
    }

    pub fn on_node(&mut self, n: Node, now: Instant) {
        match self.cache.upsert_node(n) {
            NodeChange::Added | NodeChange::SchedulingRelevant => self.queue.move_all(now),
            NodeChange::Irrelevant => {}
        }
    }

    pub fn on_pod(&mut self, p: Pod, now: Instant) {
        let terminal = is_terminal(&p);
        let responsible = self.responsible(&p);
        let info = Arc::new(PodInfo::new(p));
        if info.node_name().is_some() {
            self.queue.delete(&info.key);
            if terminal {
                if self.cache.remove_pod(&info.key) {
                    self.queue.move_all(now);
                }
            } else {
                self.cache.add_or_update_pod(info);
            }
            return;
        }
        if self.cache.is_assumed(&info.key) {
            // Our binding is in flight; this is an older, unbound view of the pod.
            return;
        }
        if responsible && !terminal && !info.terminating() {
            self.queue.add_or_update(info, now);
        } else {
            self.queue.delete(&info.key);
        }
    }

    pub fn on_pod_gone(&mut self, key: &str, now: Instant) {
        self.queue.delete(key);
        if self.cache.remove_pod(key) {
            // Upstream's AssignedPodDelete: its resources and ports are free again.
            self.queue.move_all(now);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::info::testutil::*;
    use crate::queue::State as Q;
    use std::time::Duration;

    fn bound(mut p: Pod, node: &str) -> Pod {
        p.spec.as_mut().unwrap().node_name = Some(node.into());
        p
    }

    #[test]
    fn pending_pods_of_ours_are_queued_others_are_not() {
        let t = Instant::now();
        let mut s = State::new("default-scheduler".into());
        s.on_pod(pod("mine", None, None), t);
        let mut other = pod("other", None, None);
        other.spec.as_mut().unwrap().scheduler_name = Some("custom".into());
        s.on_pod(other, t);
        let mut explicit = pod("explicit", None, None);
        explicit.spec.as_mut().unwrap().scheduler_name = Some("default-scheduler".into());
        s.on_pod(explicit, t);
        let mut dying = pod("dying", None, None);
        dying.metadata.deletion_timestamp =
            Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                k8s_openapi::jiff::Timestamp::now(),
            ));
        s.on_pod(dying, t);
        assert!(s.queue.contains("default/mine"));
        assert!(s.queue.contains("default/explicit"));
        assert!(!s.queue.contains("default/other"));
        assert!(!s.queue.contains("default/dying"));
        // Bound elsewhere (by someone else): out of the queue, into the cache.
        s.on_pod(bound(pod("mine", Some("1"), None), "n1"), t);
        assert!(!s.queue.contains("default/mine"));
        assert!(s.cache.contains_pod("default/mine"));
    }

    #[test]
    fn a_stale_unbound_view_of_an_assumed_pod_is_ignored() {
        let t = Instant::now();
        let mut s = State::new("default-scheduler".into());
        s.on_node(node("n1", "4", "8Gi", "110"), t);
        s.on_pod(pod("p", Some("1"), None), t);
        let popped = s.queue.pop(t).unwrap();
        s.queue.done(&popped.pod.key);
        s.cache.assume(popped.pod, "n1");
        // e.g. the PodScheduled status patch of an earlier attempt arriving late.
        s.on_pod(pod("p", Some("1"), None), t);
        assert!(!s.queue.contains("default/p"), "not scheduled twice");
        s.on_pod(bound(pod("p", Some("1"), None), "n1"), t);
        assert!(!s.cache.is_assumed("default/p"), "confirmed by the watch");
        assert_eq!(s.cache.node("n1").unwrap().requested.milli_cpu, 1000);
    }

    fn unschedulable(s: &mut State, name: &str, t: Instant) {
        s.on_pod(pod(name, Some("64"), None), t);
        let p = s.queue.pop(t).unwrap();
        s.queue.unschedulable(&p.pod.key, p.cycle, t);
        assert_eq!(
            s.queue.state(&format!("default/{name}")),
            Some(Q::Unschedulable)
        );
    }

    #[test]
    fn cluster_events_move_unschedulable_pods() {
        let t0 = Instant::now();
        let late = t0 + Duration::from_secs(20); // past any backoff
        let mut s = State::new("default-scheduler".into());
        s.on_node(node("n1", "4", "8Gi", "110"), t0);
        unschedulable(&mut s, "big", t0);
        // Heartbeat-only node updates do not.
        let mut hb = node("n1", "4", "8Gi", "110");
        hb.status.as_mut().unwrap().conditions = Some(vec![]);
        s.on_node(hb, late);
        assert_eq!(s.queue.state("default/big"), Some(Q::Unschedulable));
        // A new node does.
        s.on_node(node("n2", "64", "8Gi", "110"), late);
        assert_eq!(s.queue.state("default/big"), Some(Q::Active));
        let p = s.queue.pop(late).unwrap();
        s.queue.unschedulable(&p.pod.key, p.cycle, late);
        // A changed node (label) does.
        let later = late + Duration::from_secs(20);
        s.on_node(
            with_labels(node("n1", "4", "8Gi", "110"), &[("a", "b")]),
            later,
        );
        assert_eq!(s.queue.state("default/big"), Some(Q::Active));
        let p = s.queue.pop(later).unwrap();
        s.queue.unschedulable(&p.pod.key, p.cycle, later);
        // A bound pod finishing (Succeeded) or deleted does.
        let mut done = bound(pod("done", Some("1"), None), "n1");
        s.on_pod(done.clone(), later);
        done.status = Some(k8s_openapi::api::core::v1::PodStatus {
            phase: Some("Succeeded".into()),
            ..Default::default()
        });
        let even_later = later + Duration::from_secs(20);
        s.on_pod(done, even_later);
        assert!(!s.cache.contains_pod("default/done"));
        assert_eq!(s.queue.state("default/big"), Some(Q::Active));
        let p = s.queue.pop(even_later).unwrap();
        s.queue.unschedulable(&p.pod.key, p.cycle, even_later);
        s.on_pod(bound(pod("other", None, None), "n1"), even_later);
        let last = even_later + Duration::from_secs(20);
        s.on_pod_gone("default/other", last);
        assert_eq!(s.queue.state("default/big"), Some(Q::Active));
        // Deleting a pending pod only drops it.
        s.on_pod_gone("default/big", last);
        assert!(s.queue.is_empty());
    }
}
