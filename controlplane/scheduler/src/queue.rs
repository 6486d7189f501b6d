//! The scheduling queue, shaped like upstream's `PriorityQueue`:
//! - **active**: pods ready to schedule, highest `.spec.priority` first, then oldest;
//! - **backoff**: pods that failed, waiting `1 s · 2^(attempts−1)` capped at 10 s
//!   (upstream's podInitialBackoff / podMaxBackoff) after their last attempt;
//! - **unschedulable**: pods no node fits; a cluster event (node added or changed, a
//!   bound pod deleted) moves them all to active (or to backoff if still backing off),
//!   and after 5 min they are retried anyway (podMaxInUnschedulablePodsDuration);
//! - **gated**: pods with `schedulingGates`, never popped until an update clears them.
//!
//! A failure that raced with a cluster event (the event came during the pod's scheduling
//! cycle) sends the pod to backoff rather than unschedulable, so the event is not lost
//! (upstream's moveRequestCycle). Time is an argument everywhere: tests drive a fake clock.

use std::cmp::{Ordering, Reverse};
use std::collections::{BinaryHeap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::info::PodInfo;

pub const POD_INITIAL_BACKOFF: Duration = Duration::from_secs(1);
pub const POD_MAX_BACKOFF: Duration = Duration::from_secs(10);
pub const POD_MAX_IN_UNSCHEDULABLE: Duration = Duration::from_secs(300);
/// How often unschedulable pods are checked against [`POD_MAX_IN_UNSCHEDULABLE`]
/// (upstream's flushUnschedulablePodsLeftover period), so the check is not a scan of the
/// whole queue per scheduled pod.
pub const UNSCHEDULABLE_CHECK_PERIOD: Duration = Duration::from_secs(30);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Active,
    Backoff,
    Unschedulable,
    Gated,
    /// Popped and being scheduled.
    InFlight,
}

#[derive(Debug)]
struct Entry {
    pod: Arc<PodInfo>,
    state: State,
    /// When the pod first entered the queue (the activeQ order's tie-break).
    timestamp: Instant,
    attempts: u32,
    last_attempt: Option<Instant>,
    /// When it became unschedulable (for the 5-minute flush).
    unschedulable_since: Option<Instant>,
    /// Bumped on every state change; heap items of older generations are stale.
    generation: u64,
}

#[derive(Debug, PartialEq, Eq)]
struct ActiveItem {
    priority: i32,
    timestamp: Instant,
    seq: u64,
    key: String,
    generation: u64,
}

impl Ord for ActiveItem {
    fn cmp(&self, o: &Self) -> Ordering {
        // Max-heap: higher priority first, then the earlier timestamp, then FIFO.
        self.priority
            .cmp(&o.priority)
            .then_with(|| o.timestamp.cmp(&self.timestamp))
            .then_with(|| o.seq.cmp(&self.seq))
    }
}

impl PartialOrd for ActiveItem {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}

/// What [`SchedulingQueue::pop`] hands out.
#[derive(Debug, Clone)]
pub struct Popped {
    pub pod: Arc<PodInfo>,
    /// The scheduling cycle this attempt belongs to (give it back on failure).
    pub cycle: u64,
    pub attempts: u32,
}

#[derive(Debug)]
pub struct SchedulingQueue {
    entries: HashMap<String, Entry>,
    active: BinaryHeap<ActiveItem>,
    backoff: BinaryHeap<Reverse<(Instant, u64, String, u64)>>,
    seq: u64,
    cycle: u64,
    move_request_cycle: u64,
    unschedulable: usize,
    next_unschedulable_check: Option<Instant>,
    initial_backoff: Duration,
    max_backoff: Duration,
}

impl Default for SchedulingQueue {
    fn default() -> Self {
        SchedulingQueue::new(POD_INITIAL_BACKOFF, POD_MAX_BACKOFF)
    }
}

fn gated(p: &PodInfo) -> bool {
    p.pod
        .spec
        .as_ref()
        .and_then(|s| s.scheduling_gates.as_ref())
        .is_some_and(|g| !g.is_empty())
}

impl SchedulingQueue {
    pub fn new(initial_backoff: Duration, max_backoff: Duration) -> SchedulingQueue {
        SchedulingQueue {
            entries: HashMap::new(),
            active: BinaryHeap::new(),
            backoff: BinaryHeap::new(),
            seq: 0,
            cycle: 0,
            move_request_cycle: 0,
            unschedulable: 0,
            next_unschedulable_check: None,
            initial_backoff,
            max_backoff,
        }
    }

    /// Upstream's `calculateBackoffDuration`.
    pub fn backoff_duration(&self, attempts: u32) -> Duration {
        let mut d = self.initial_backoff;
        for _ in 1..attempts {
            if d > self.max_backoff.saturating_sub(d) {
                return self.max_backoff;
            }
            d += d;
        }
        d.min(self.max_backoff)
    }

    fn backoff_expiry(&self, e: &Entry) -> Option<Instant> {
        e.last_attempt
            .map(|t| t + self.backoff_duration(e.attempts))
    }

    fn set_state(&mut self, key: &str, state: State, now: Instant) {
        let until = self
            .entries
            .get(key)
            .and_then(|e| self.backoff_expiry(e))
            .unwrap_or(now);
        let Some(e) = self.entries.get_mut(key) else {
            return;
        };
        if e.state == State::Unschedulable {
            self.unschedulable -= 1;
        }
        if state == State::Unschedulable {
            self.unschedulable += 1;
        }
        e.state = state;
        e.generation += 1;
        self.seq += 1;
        match state {
            State::Active => self.active.push(ActiveItem {
                priority: e.pod.priority,
                timestamp: e.timestamp,
                seq: self.seq,
                key: key.to_string(),
                generation: e.generation,
            }),
            State::Backoff => {
                self.backoff
                    .push(Reverse((until, self.seq, key.to_string(), e.generation)))
            }
            State::Unschedulable => e.unschedulable_since = Some(now),
            State::Gated | State::InFlight => {}
        }
    }

    /// Active, or backoff if the pod's backoff since its last attempt has not expired.
    fn activate_or_backoff(&mut self, key: &str, now: Instant) {
        let still = self
            .entries
            .get(key)
            .and_then(|e| self.backoff_expiry(e))
            .is_some_and(|t| t > now);
        self.set_state(key, if still { State::Backoff } else { State::Active }, now);
    }

    /// A pending pod was added or updated (from the watch).
    pub fn add_or_update(&mut self, pod: Arc<PodInfo>, now: Instant) {
        let key = pod.key.clone();
        let is_gated = gated(&pod);
        match self.entries.get_mut(&key) {
            None => {
                self.entries.insert(
                    key.clone(),
                    Entry {
                        pod,
                        state: State::Gated,
                        timestamp: now,
                        attempts: 0,
                        last_attempt: None,
                        unschedulable_since: None,
                        generation: 0,
                    },
                );
                if !is_gated {
                    self.set_state(&key, State::Active, now);
                }
            }
            Some(e) => {
                let spec_changed = e.pod.pod.spec != pod.pod.spec
                    || e.pod.pod.metadata.labels != pod.pod.metadata.labels;
                e.pod = pod;
                let state = e.state;
                match state {
                    State::Gated if !is_gated => self.set_state(&key, State::Active, now),
                    State::Unschedulable | State::Backoff if spec_changed && is_gated => {
                        self.set_state(&key, State::Gated, now)
                    }
                    // An update may make it fit (upstream: isPodUpdated → move).
                    State::Unschedulable if spec_changed => self.activate_or_backoff(&key, now),
                    State::Active if is_gated => self.set_state(&key, State::Gated, now),
                    _ => {}
                }
            }
        }
    }

    /// Forget a pod (deleted, bound elsewhere, no longer ours).
    pub fn delete(&mut self, key: &str) {
        if let Some(e) = self.entries.remove(key) {
            if e.state == State::Unschedulable {
                self.unschedulable -= 1;
            }
        }
    }

    pub fn contains(&self, key: &str) -> bool {
        self.entries.contains_key(key)
    }

    pub fn state(&self, key: &str) -> Option<State> {
        self.entries.get(key).map(|e| e.state)
    }

    pub fn keys(&self) -> Vec<String> {
        self.entries.keys().cloned().collect()
    }

    /// Whether [`Self::pop`] may return a pod (the heap can hold stale items; `pop`
    /// drops them).
    pub fn has_active(&self) -> bool {
        !self.active.is_empty()
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Moves expired backoff pods to active and long-unschedulable ones back in.
    pub fn flush(&mut self, now: Instant) {
        while let Some(Reverse((until, _, key, generation))) = self.backoff.peek().cloned() {
            if until > now {
                break;
            }
            self.backoff.pop();
            if self
                .entries
                .get(&key)
                .is_some_and(|e| e.generation == generation && e.state == State::Backoff)
            {
                self.set_state(&key, State::Active, now);
            }
        }
        if self.unschedulable == 0 {
            self.next_unschedulable_check = None;
            return;
        }
        match self.next_unschedulable_check {
            Some(t) if now < t => return,
            None => {
                // First unschedulable pod since the last check: look again in a period.
                self.next_unschedulable_check = Some(now + UNSCHEDULABLE_CHECK_PERIOD);
                return;
            }
            Some(_) => self.next_unschedulable_check = Some(now + UNSCHEDULABLE_CHECK_PERIOD),
        }
        let stale: Vec<String> = self
            .entries
            .iter()
            .filter(|(_, e)| {
                e.state == State::Unschedulable
                    && e.unschedulable_since.is_some_and(|t| {
                        now.saturating_duration_since(t) >= POD_MAX_IN_UNSCHEDULABLE
                    })
            })
            .map(|(k, _)| k.clone())
            .collect();
        for k in stale {
            self.activate_or_backoff(&k, now);
        }
    }

    /// When [`Self::flush`] next has something to do (the earliest backoff expiry).
    pub fn next_wakeup(&mut self) -> Option<Instant> {
        let mut backoff = None;
        while let Some(Reverse((until, _, key, generation))) = self.backoff.peek() {
            let live = self
                .entries
                .get(key)
                .is_some_and(|e| e.generation == *generation && e.state == State::Backoff);
            if live {
                backoff = Some(*until);
                break;
            }
            self.backoff.pop();
        }
        let check = self
            .next_unschedulable_check
            .filter(|_| self.unschedulable > 0);
        match (backoff, check) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// The next pod to schedule (flush first).
    pub fn pop(&mut self, now: Instant) -> Option<Popped> {
        while let Some(item) = self.active.pop() {
            let Some(e) = self.entries.get_mut(&item.key) else {
                continue;
            };
            if e.generation != item.generation || e.state != State::Active {
                continue;
            }
            e.attempts += 1;
            e.last_attempt = Some(now);
            let popped = Popped {
                pod: e.pod.clone(),
                cycle: self.cycle + 1,
                attempts: e.attempts,
            };
            self.cycle += 1;
            self.set_state(&item.key, State::InFlight, now);
            return Some(popped);
        }
        None
    }

    /// The pod was assumed onto a node: it leaves the queue.
    pub fn done(&mut self, key: &str) {
        if self.state(key) == Some(State::InFlight) {
            self.entries.remove(key);
        }
    }

    /// No node fits the pod popped in `cycle`.
    pub fn unschedulable(&mut self, key: &str, cycle: u64, now: Instant) {
        if self.state(key) != Some(State::InFlight) {
            return;
        }
        if self.move_request_cycle >= cycle {
            // A cluster event arrived while this pod was being scheduled.
            self.set_state(key, State::Backoff, now);
        } else {
            self.set_state(key, State::Unschedulable, now);
        }
    }

    /// The attempt failed for a transient reason (binding, API error): back off and retry.
    /// `pod` re-enters the queue if it had already left it (assumed, then the bind failed).
    pub fn retry(&mut self, pod: Arc<PodInfo>, attempts: u32, now: Instant) {
        let key = pod.key.clone();
        match self.entries.get_mut(&key) {
            Some(e) if e.state == State::InFlight => {}
            Some(_) => return,
            None => {
                self.entries.insert(
                    key.clone(),
                    Entry {
                        pod,
                        state: State::InFlight,
                        timestamp: now,
                        attempts,
                        last_attempt: Some(now),
                        unschedulable_since: None,
                        generation: 0,
                    },
                );
            }
        }
        self.set_state(&key, State::Backoff, now);
    }

    /// A cluster event that may make unschedulable pods fit (upstream's
    /// `MoveAllToActiveOrBackoffQueue`).
    pub fn move_all(&mut self, now: Instant) {
        self.move_request_cycle = self.cycle;
        let keys: Vec<String> = self
            .entries
            .iter()
            .filter(|(_, e)| e.state == State::Unschedulable)
            .map(|(k, _)| k.clone())
            .collect();
        for k in keys {
            self.activate_or_backoff(&k, now);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::info::testutil::pod;
    use k8s_openapi::api::core::v1::PodSchedulingGate;

    fn info(name: &str, priority: i32) -> Arc<PodInfo> {
        let mut p = pod(name, None, None);
        p.spec.as_mut().unwrap().priority = Some(priority);
        Arc::new(PodInfo::new(p))
    }

    #[test]
    fn backoff_durations_double_to_the_cap() {
        let q = SchedulingQueue::default();
        let secs: Vec<u64> = (1..=6).map(|a| q.backoff_duration(a).as_secs()).collect();
        assert_eq!(secs, vec![1, 2, 4, 8, 10, 10]);
    }

    #[test]
    fn priority_then_age() {
        let t0 = Instant::now();
        let mut q = SchedulingQueue::default();
        q.add_or_update(info("low-old", 0), t0);
        q.add_or_update(info("high", 10), t0 + Duration::from_millis(5));
        q.add_or_update(info("low-new", 0), t0 + Duration::from_millis(9));
        let order: Vec<String> =
            std::iter::from_fn(|| q.pop(t0).map(|p| p.pod.key.clone())).collect();
        assert_eq!(
            order,
            vec!["default/high", "default/low-old", "default/low-new"]
        );
    }

    #[test]
    fn unschedulable_waits_for_a_cluster_event_then_respects_backoff() {
        let t0 = Instant::now();
        let mut q = SchedulingQueue::default();
        q.add_or_update(info("p", 0), t0);
        let p = q.pop(t0).unwrap();
        q.unschedulable(&p.pod.key, p.cycle, t0);
        assert_eq!(q.state("default/p"), Some(State::Unschedulable));
        q.flush(t0 + Duration::from_secs(60));
        assert!(
            q.pop(t0 + Duration::from_secs(60)).is_none(),
            "no event: stays put"
        );
        // A node appears 300 ms later: still inside the 1 s backoff -> backoff queue.
        let t1 = t0 + Duration::from_millis(300);
        q.move_all(t1);
        assert_eq!(q.state("default/p"), Some(State::Backoff));
        assert_eq!(q.next_wakeup(), Some(t0 + Duration::from_secs(1)));
        q.flush(t0 + Duration::from_millis(999));
        assert!(q.pop(t1).is_none());
        q.flush(t0 + Duration::from_secs(1));
        let p = q.pop(t0 + Duration::from_secs(1)).unwrap();
        assert_eq!(p.attempts, 2);
        // Second failure; an event 5 s later (past the 2 s backoff) activates at once.
        let t2 = t0 + Duration::from_secs(1);
        q.unschedulable(&p.pod.key, p.cycle, t2);
        q.move_all(t2 + Duration::from_secs(5));
        assert_eq!(q.state("default/p"), Some(State::Active));
        assert!(q.pop(t2 + Duration::from_secs(5)).is_some());
    }

    #[test]
    fn an_event_during_the_cycle_is_not_lost() {
        let t0 = Instant::now();
        let mut q = SchedulingQueue::default();
        q.add_or_update(info("p", 0), t0);
        let p = q.pop(t0).unwrap();
        q.move_all(t0); // e.g. a node was added while p was being scheduled
        q.unschedulable(&p.pod.key, p.cycle, t0);
        assert_eq!(
            q.state("default/p"),
            Some(State::Backoff),
            "retried after backoff"
        );
        q.flush(t0 + Duration::from_secs(1));
        assert!(q.pop(t0 + Duration::from_secs(1)).is_some());
    }

    #[test]
    fn unschedulable_pods_are_retried_after_five_minutes() {
        let t0 = Instant::now();
        let mut q = SchedulingQueue::default();
        q.add_or_update(info("p", 0), t0);
        let p = q.pop(t0).unwrap();
        q.unschedulable(&p.pod.key, p.cycle, t0);
        q.flush(t0);
        assert_eq!(
            q.next_wakeup(),
            Some(t0 + UNSCHEDULABLE_CHECK_PERIOD),
            "checked periodically"
        );
        let t1 = t0 + UNSCHEDULABLE_CHECK_PERIOD;
        q.flush(t1);
        assert!(q.pop(t1).is_none(), "not yet five minutes");
        assert_eq!(q.next_wakeup(), Some(t1 + UNSCHEDULABLE_CHECK_PERIOD));
        let mut t = t1;
        while t < t0 + POD_MAX_IN_UNSCHEDULABLE {
            t += UNSCHEDULABLE_CHECK_PERIOD;
            q.flush(t);
        }
        assert!(q.pop(t).is_some());
        assert_eq!(q.next_wakeup(), None);
    }

    #[test]
    fn retry_after_bind_failure_backs_off() {
        let t0 = Instant::now();
        let mut q = SchedulingQueue::default();
        q.add_or_update(info("p", 0), t0);
        let p = q.pop(t0).unwrap();
        q.done(&p.pod.key);
        assert!(q.is_empty());
        q.retry(p.pod.clone(), p.attempts, t0);
        assert_eq!(q.state("default/p"), Some(State::Backoff));
        q.flush(t0 + Duration::from_millis(500));
        assert!(q.pop(t0 + Duration::from_millis(500)).is_none());
        q.flush(t0 + Duration::from_secs(1));
        assert_eq!(q.pop(t0 + Duration::from_secs(1)).unwrap().attempts, 2);
    }

    #[test]
    fn scheduling_gates_hold_pods() {
        let t0 = Instant::now();
        let mut q = SchedulingQueue::default();
        let mut p = pod("g", None, None);
        p.spec.as_mut().unwrap().scheduling_gates = Some(vec![PodSchedulingGate {
            name: "wait".into(),
        }]);
        q.add_or_update(Arc::new(PodInfo::new(p.clone())), t0);
        assert_eq!(q.state("default/g"), Some(State::Gated));
        q.move_all(t0);
        assert!(
            q.pop(t0).is_none(),
            "gated pods are not popped, even after events"
        );
        p.spec.as_mut().unwrap().scheduling_gates = None;
        q.add_or_update(Arc::new(PodInfo::new(p)), t0);
        assert_eq!(q.pop(t0).unwrap().pod.key, "default/g");
    }

    #[test]
    fn updates_and_deletes() {
        let t0 = Instant::now();
        let mut q = SchedulingQueue::default();
        q.add_or_update(info("p", 0), t0);
        let p = q.pop(t0).unwrap();
        q.unschedulable(&p.pod.key, p.cycle, t0);
        // A spec change moves it out of unschedulable (backoff first: 1 s not over).
        q.add_or_update(info("p", 5), t0 + Duration::from_millis(10));
        assert_eq!(q.state("default/p"), Some(State::Backoff));
        q.delete("default/p");
        q.flush(t0 + Duration::from_secs(2));
        assert!(q.pop(t0 + Duration::from_secs(2)).is_none());
        assert_eq!(q.next_wakeup(), None, "stale heap items are dropped");
    }
}
