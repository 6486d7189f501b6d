//! The per-pod state machine (pure): from the Pod spec and what happened to its processes
//! to the actions the runner must take and the status the API must show.
//!
//! Events come in ([`Lifecycle::started`], [`Lifecycle::start_failed`],
//! [`Lifecycle::exited`], [`Lifecycle::probe_result`], [`Lifecycle::set_terminating`]);
//! [`Lifecycle::plan`] says what to do at `now`; [`Lifecycle::status`] renders the Pod
//! status; [`Lifecycle::next_wakeup`] says when `plan` would answer differently without a
//! new event. Time is always an argument, so every rule is tested without sleeping.
//!
//! The rules follow the kubelet:
//! - init containers run one at a time, in order, each to a zero exit, before any regular
//!   container starts; a failed init container is retried (with backoff) unless the
//!   restartPolicy is Never, which fails the pod (`kuberuntime_manager.computePodActions`);
//! - restartPolicy Always restarts every exit, OnFailure only non-zero exits, Never none
//!   (`ShouldContainerBeRestarted`), each restart after the CrashLoopBackOff delay
//!   ([`crate::backoff`]);
//! - phase as `getPhase` (kubelet_pods.go), conditions as `GeneratePodReadyCondition` and
//!   friends (pkg/kubelet/status/generate.go), probes as [`crate::probe`].

use std::{
    collections::BTreeMap,
    time::{Duration, SystemTime},
};

use k8s_openapi::{
    api::core::v1::{
        ContainerState, ContainerStateRunning, ContainerStateTerminated, ContainerStateWaiting,
        ContainerStatus, Pod, PodCondition, PodIP, PodStatus,
    },
    apimachinery::pkg::apis::meta::v1::Time,
};

use crate::{
    backoff::{Backoff, BackoffConfig},
    probe::{ProbeKind, ProbeSpec, Tracker, Verdict},
};

/// The pod's restartPolicy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RestartPolicy {
    Always,
    OnFailure,
    Never,
}

impl RestartPolicy {
    pub fn parse(s: Option<&str>) -> RestartPolicy {
        match s {
            Some("OnFailure") => RestartPolicy::OnFailure,
            Some("Never") => RestartPolicy::Never,
            // Always is the API default.
            _ => RestartPolicy::Always,
        }
    }
}

/// Pod phase.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Pending,
    Running,
    Succeeded,
    Failed,
}

impl Phase {
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Pending => "Pending",
            Phase::Running => "Running",
            Phase::Succeeded => "Succeeded",
            Phase::Failed => "Failed",
        }
    }

    pub fn is_terminal(self) -> bool {
        matches!(self, Phase::Succeeded | Phase::Failed)
    }
}

/// Why a container could not be started.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartFailure {
    /// The image does not resolve (reason `ErrImagePull`); retried with backoff.
    Image(String),
    /// The container's configuration cannot be built: a missing ConfigMap key, a bad
    /// volume (reason `CreateContainerConfigError`); retried with backoff.
    Config(String),
    /// The process could not be executed (reason `StartError`, exit code 128, as
    /// containerd reports it); counts as a run and restarts by policy.
    Exec(String),
}

/// What the runner must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Start (or restart) a container; report back with `instance`.
    Start { container: String, instance: u64 },
    /// Kill a running container instance (gracefully: SIGTERM, grace period, SIGKILL).
    Kill {
        container: String,
        instance: u64,
        /// The probe that failed (its terminationGracePeriodSeconds applies).
        probe: ProbeKind,
        message: String,
    },
    /// Run a probe of a running container instance.
    Probe {
        container: String,
        instance: u64,
        kind: ProbeKind,
    },
}

/// How a container instance ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Terminated {
    pub exit_code: i32,
    pub signal: Option<i32>,
    pub reason: String,
    pub message: Option<String>,
    pub started_at: Option<SystemTime>,
    pub finished_at: SystemTime,
    pub instance: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum State {
    /// Never started, or a start failed before any process ran.
    Waiting {
        reason: String,
        message: Option<String>,
        retry_at: Option<SystemTime>,
    },
    Running {
        started_at: SystemTime,
    },
    Terminated(Terminated),
}

/// One container of the pod.
#[derive(Debug, Clone)]
struct Container {
    name: String,
    image: String,
    init: bool,
    probes: Vec<(ProbeKind, ProbeSpec)>,
    state: State,
    last_termination: Option<Terminated>,
    restart_count: i32,
    backoff: Backoff,
    /// Failed start attempts in a row (image or config errors), for their retry delay.
    start_failures: u32,
    /// Incremented per start; tags exits and probe results so stale ones are ignored.
    instance: u64,
    trackers: Vec<Tracker>,
    kill_sent: bool,
}

impl Container {
    fn new(c: &k8s_openapi::api::core::v1::Container, init: bool) -> Container {
        let mut probes = Vec::new();
        if !init {
            for (kind, p) in [
                (ProbeKind::Startup, &c.startup_probe),
                (ProbeKind::Liveness, &c.liveness_probe),
                (ProbeKind::Readiness, &c.readiness_probe),
            ] {
                if let Some(p) = p {
                    probes.push((kind, ProbeSpec::from_api(p, kind)));
                }
            }
        }
        Container {
            name: c.name.clone(),
            image: c.image.clone().unwrap_or_default(),
            init,
            probes,
            state: State::Waiting {
                reason: if init {
                    "PodInitializing"
                } else {
                    "ContainerCreating"
                }
                .into(),
                message: None,
                retry_at: None,
            },
            last_termination: None,
            restart_count: 0,
            backoff: Backoff::default(),
            start_failures: 0,
            instance: 0,
            trackers: Vec::new(),
            kill_sent: false,
        }
    }

    fn running(&self) -> bool {
        matches!(self.state, State::Running { .. })
    }

    fn succeeded(&self) -> bool {
        matches!(&self.state, State::Terminated(t) if t.exit_code == 0)
    }

    fn tracker(&self, kind: ProbeKind) -> Option<&Tracker> {
        self.trackers.iter().find(|t| t.kind == kind)
    }

    /// Startup probe passed (or there is none) while running.
    fn started(&self) -> bool {
        self.running()
            && self
                .tracker(ProbeKind::Startup)
                .is_none_or(|t| t.verdict() == Verdict::Success)
    }

    fn ready(&self) -> bool {
        self.started()
            && self
                .tracker(ProbeKind::Readiness)
                .is_none_or(|t| t.verdict() == Verdict::Success)
    }
}

/// When a terminated container starts again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Restart {
    No,
    Now,
    At(SystemTime),
}

/// A condition's status and when it last changed.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Cond {
    status: bool,
    since: SystemTime,
}

/// Inputs to the status that the lifecycle does not own.
#[derive(Debug, Clone, Default)]
pub struct StatusInputs {
    pub pod_ips: Vec<String>,
    pub host_ip: Option<String>,
    /// The runtime's container ID prefix, e.g. `skiff://<pod uid>`.
    pub container_id_prefix: String,
}

/// The state machine of one pod.
#[derive(Debug, Clone)]
pub struct Lifecycle {
    pod_name: String,
    restart_policy: RestartPolicy,
    backoff: BackoffConfig,
    containers: Vec<Container>,
    start_time: SystemTime,
    terminating: bool,
    terminal: Option<Phase>,
    /// Conditions the lifecycle does not own (PodScheduled from the scheduler, readiness
    /// gates' conditions from controllers) as the API showed them.
    foreign: Vec<PodCondition>,
    readiness_gates: Vec<String>,
    conds: BTreeMap<&'static str, Cond>,
    qos_class: &'static str,
}

const INITIALIZED: &str = "Initialized";
const CONTAINERS_READY: &str = "ContainersReady";
const READY: &str = "Ready";
const SCHEDULED: &str = "PodScheduled";

impl Lifecycle {
    /// A lifecycle for `pod`, first seen at `now` (its startTime).
    pub fn new(pod: &Pod, backoff: BackoffConfig, now: SystemTime) -> Lifecycle {
        let spec = pod.spec.clone().unwrap_or_default();
        let mut containers: Vec<Container> = spec
            .init_containers
            .iter()
            .flatten()
            .map(|c| Container::new(c, true))
            .collect();
        let has_init = !containers.is_empty();
        containers.extend(spec.containers.iter().map(|c| {
            let mut c = Container::new(c, false);
            if has_init {
                // Regular containers wait for the init containers (kubelet's reason).
                c.state = State::Waiting {
                    reason: "PodInitializing".into(),
                    message: None,
                    retry_at: None,
                };
            }
            c
        }));
        let status = pod.status.clone().unwrap_or_default();
        let foreign = status
            .conditions
            .unwrap_or_default()
            .into_iter()
            .filter(|c| ![INITIALIZED, CONTAINERS_READY, READY].contains(&c.type_.as_str()))
            .collect();
        let mut l = Lifecycle {
            pod_name: pod.metadata.name.clone().unwrap_or_default(),
            restart_policy: RestartPolicy::parse(spec.restart_policy.as_deref()),
            backoff,
            containers,
            start_time: now,
            terminating: false,
            terminal: None,
            foreign,
            readiness_gates: spec
                .readiness_gates
                .iter()
                .flatten()
                .map(|g| g.condition_type.clone())
                .collect(),
            conds: BTreeMap::new(),
            qos_class: qos_class(&spec),
        };
        l.update_conditions(now);
        l
    }

    /// Refreshes the conditions other components own (the pod object changed).
    pub fn set_foreign_conditions(&mut self, pod: &Pod, now: SystemTime) {
        self.foreign = pod
            .status
            .as_ref()
            .and_then(|s| s.conditions.clone())
            .unwrap_or_default()
            .into_iter()
            .filter(|c| ![INITIALIZED, CONTAINERS_READY, READY].contains(&c.type_.as_str()))
            .collect();
        self.update_conditions(now);
    }

    /// Adoption: where the pod's own conditions (Initialized, ContainersReady, Ready) now
    /// have the status the API holds, they keep the API's lastTransitionTime. Recomputed
    /// from scratch they would read as a transition at the agent's restart that never
    /// happened.
    pub fn adopt_condition_times(&mut self, pod: &Pod) {
        let published = pod.status.as_ref().and_then(|s| s.conditions.as_ref());
        for c in published.into_iter().flatten() {
            let Some(since) = c.last_transition_time.as_ref() else {
                continue;
            };
            for k in [INITIALIZED, CONTAINERS_READY, READY] {
                if c.type_ != k {
                    continue;
                }
                if let Some(ours) = self.conds.get_mut(k) {
                    if (c.status == "True") == ours.status {
                        ours.since = SystemTime::from(since.0);
                    }
                }
            }
        }
    }

    pub fn restart_policy(&self) -> RestartPolicy {
        self.restart_policy
    }

    /// The pod is being deleted: no more starts, restarts or probes.
    pub fn set_terminating(&mut self, now: SystemTime) {
        self.terminating = true;
        self.update_conditions(now);
    }

    pub fn is_terminating(&self) -> bool {
        self.terminating
    }

    /// Whether any container instance is running.
    pub fn any_running(&self) -> bool {
        self.containers.iter().any(Container::running)
    }

    /// The running instances, for termination: `(container, instance)`.
    pub fn running_instances(&self) -> Vec<(String, u64)> {
        self.containers
            .iter()
            .filter(|c| c.running())
            .map(|c| (c.name.clone(), c.instance))
            .collect()
    }

    /// How often `name` was restarted so far.
    pub fn restart_count(&self, name: &str) -> i32 {
        self.containers
            .iter()
            .find(|c| c.name == name)
            .map_or(0, |c| c.restart_count)
    }

    fn find(&mut self, name: &str) -> Option<&mut Container> {
        self.containers.iter_mut().find(|c| c.name == name)
    }

    /// The process of `instance` runs (since `now`).
    pub fn started(&mut self, name: &str, instance: u64, now: SystemTime) {
        let Some(c) = self.find(name) else { return };
        if c.instance != instance {
            return;
        }
        c.start_failures = 0;
        c.kill_sent = false;
        c.trackers = c
            .probes
            .iter()
            .map(|(k, s)| Tracker::new(*k, s.clone(), now))
            .collect();
        c.state = State::Running { started_at: now };
        self.update_conditions(now);
    }

    /// Starting `instance` failed.
    pub fn start_failed(
        &mut self,
        name: &str,
        instance: u64,
        failure: StartFailure,
        now: SystemTime,
    ) {
        let backoff = self.backoff;
        let Some(c) = self.find(name) else { return };
        if c.instance != instance {
            return;
        }
        match failure {
            StartFailure::Image(msg) => {
                c.state = waiting_retry(c, "ErrImagePull", msg, &backoff, now);
            }
            StartFailure::Config(msg) => {
                c.state = waiting_retry(c, "CreateContainerConfigError", msg, &backoff, now);
            }
            StartFailure::Exec(msg) => {
                c.trackers.clear();
                c.state = State::Terminated(Terminated {
                    exit_code: 128,
                    signal: None,
                    reason: "StartError".into(),
                    message: Some(msg),
                    started_at: None,
                    finished_at: now,
                    instance,
                });
            }
        }
        self.update_conditions(now);
    }

    /// The process of `instance` exited with `exit_code` (128 + n for signal n).
    pub fn exited(
        &mut self,
        name: &str,
        instance: u64,
        exit_code: i32,
        signal: Option<i32>,
        now: SystemTime,
    ) {
        let Some(c) = self.find(name) else { return };
        if c.instance != instance {
            return;
        }
        let started_at = match c.state {
            State::Running { started_at } => Some(started_at),
            _ => None,
        };
        c.trackers.clear();
        c.kill_sent = false;
        c.state = State::Terminated(Terminated {
            exit_code,
            signal,
            // containerd's reasons: Completed for 0, Error otherwise; OOMKilled is set by
            // `oom_killed` from the memory cgroup's counter.
            reason: if exit_code == 0 { "Completed" } else { "Error" }.into(),
            message: None,
            started_at,
            finished_at: now,
            instance,
        });
        self.update_conditions(now);
    }

    /// The memory limit killed `instance` (its cgroup's oom_kill count grew): the reason
    /// of its termination is OOMKilled, as containerd reports it.
    pub fn oom_killed(&mut self, name: &str, instance: u64) {
        let Some(c) = self.find(name) else { return };
        if let State::Terminated(t) = &mut c.state {
            if t.instance == instance {
                t.reason = "OOMKilled".into();
            }
        }
    }

    /// Restores a container as an earlier runtime left it: its restart count, and its
    /// instance number so that the next start is `instance` (the adopted one).
    pub fn restore(&mut self, name: &str, restart_count: i32, instance: u64) {
        let Some(c) = self.find(name) else { return };
        c.restart_count = restart_count;
        c.instance = instance.saturating_sub(1);
        // Due at once: with `instance` > 0 a plain Waiting state reads as "a Start is in
        // flight" (see `may_start`), and an adopted container that had been restarted
        // before (instance ≥ 2) would never be taken over.
        c.state = State::Waiting {
            reason: "ContainerCreating".into(),
            message: None,
            retry_at: Some(SystemTime::UNIX_EPOCH),
        };
    }

    /// Carries over what an earlier runtime published for an adopted running `instance`:
    /// ready (its readiness probe had passed) and started (its startup probe had), so an
    /// agent restart does not flap the pod's readiness. Call after [`Lifecycle::started`].
    pub fn carry_over_probes(
        &mut self,
        name: &str,
        instance: u64,
        (ready, started): (bool, bool),
        now: SystemTime,
    ) {
        let Some(c) = self.find(name) else { return };
        if c.instance != instance || !c.running() {
            return;
        }
        for t in c.trackers.iter_mut() {
            match t.kind {
                ProbeKind::Readiness if ready => t.assume(Verdict::Success),
                ProbeKind::Startup if started || ready => t.assume(Verdict::Success),
                _ => {}
            }
        }
        self.update_conditions(now);
    }

    /// Restores the pod's startTime (adopted: when the pod really started).
    pub fn set_start_time(&mut self, t: SystemTime) {
        self.start_time = t;
    }

    /// Restores an init container that completed under an earlier runtime.
    pub fn restore_completed(&mut self, name: &str, now: SystemTime) {
        let Some(c) = self.find(name) else { return };
        c.instance = c.instance.max(1);
        c.state = State::Terminated(Terminated {
            exit_code: 0,
            signal: None,
            reason: "Completed".into(),
            message: None,
            started_at: None,
            finished_at: now,
            instance: c.instance,
        });
        self.update_conditions(now);
    }

    /// Sets the start time of a running instance (adopted: when it really started).
    pub fn set_started_at(&mut self, name: &str, instance: u64, at: SystemTime) {
        let Some(c) = self.find(name) else { return };
        if c.instance == instance {
            if let State::Running { started_at } = &mut c.state {
                *started_at = at;
            }
        }
    }

    /// Sets the termination reason of `instance` (an adopted process whose exit status is
    /// unknown).
    pub fn set_termination_reason(&mut self, name: &str, instance: u64, reason: &str) {
        let Some(c) = self.find(name) else { return };
        if let State::Terminated(t) = &mut c.state {
            if t.instance == instance {
                t.reason = reason.into();
            }
        }
    }

    /// Sets the termination message of `instance` (a postStart hook failure).
    pub fn set_termination_message(&mut self, name: &str, instance: u64, message: String) {
        let Some(c) = self.find(name) else { return };
        if let State::Terminated(t) = &mut c.state {
            if t.instance == instance {
                t.message = Some(message);
            }
        }
    }

    /// A probe of `instance` finished.
    pub fn probe_result(
        &mut self,
        name: &str,
        instance: u64,
        kind: ProbeKind,
        ok: bool,
        message: Option<String>,
        now: SystemTime,
    ) {
        let Some(c) = self.find(name) else { return };
        if c.instance != instance || !c.running() {
            return;
        }
        if let Some(t) = c.trackers.iter_mut().find(|t| t.kind == kind) {
            t.record(ok, message);
        }
        self.update_conditions(now);
    }

    fn restart_decision(&self, c: &Container) -> Restart {
        let State::Terminated(t) = &c.state else {
            return Restart::No;
        };
        if self.terminating || self.terminal.is_some() {
            return Restart::No;
        }
        let restart = match self.restart_policy {
            RestartPolicy::Always => !c.init || t.exit_code != 0,
            RestartPolicy::OnFailure => t.exit_code != 0,
            RestartPolicy::Never => false,
        };
        if !restart {
            return Restart::No;
        }
        match c.backoff.restart_at(&self.backoff, t.finished_at) {
            None => Restart::Now,
            Some(at) => Restart::At(at),
        }
    }

    fn init_done(&self) -> bool {
        self.containers
            .iter()
            .filter(|c| c.init)
            .all(Container::succeeded)
    }

    /// What to do at `now`. Starting an instance is recorded here (the caller must run
    /// it and report [`Lifecycle::started`] or [`Lifecycle::start_failed`]).
    pub fn plan(&mut self, now: SystemTime) -> Vec<Action> {
        let mut actions = Vec::new();
        if self.terminating || self.terminal.is_some() {
            return actions;
        }
        let mut starts = Vec::new();
        // Init containers: the first one not yet succeeded gates everything.
        let mut gate = false;
        for (i, c) in self.containers.iter().enumerate().filter(|(_, c)| c.init) {
            if c.succeeded() {
                continue;
            }
            gate = true;
            if self.may_start(c, now) {
                starts.push(i);
            }
            break;
        }
        if !gate {
            for (i, c) in self.containers.iter().enumerate().filter(|(_, c)| !c.init) {
                if self.may_start(c, now) {
                    starts.push(i);
                }
            }
        }
        for i in starts {
            let backoff = self.backoff;
            let c = &mut self.containers[i];
            let finished = match &c.state {
                State::Terminated(t) => {
                    c.restart_count += 1;
                    c.last_termination = Some(t.clone());
                    Some(t.finished_at)
                }
                _ => None,
            };
            if c.instance == 0 || finished.is_some() {
                c.backoff.record_start(&backoff, finished, now);
            }
            c.instance += 1;
            c.state = State::Waiting {
                reason: "ContainerCreating".into(),
                message: None,
                retry_at: None,
            };
            actions.push(Action::Start {
                container: c.name.clone(),
                instance: c.instance,
            });
        }
        // Probes and the kills they call for.
        for c in self.containers.iter_mut().filter(|c| c.running()) {
            let startup_ok = c
                .tracker(ProbeKind::Startup)
                .is_none_or(|t| t.verdict() == Verdict::Success);
            let mut kill = None;
            for t in &c.trackers {
                let fatal = t.verdict() == Verdict::Failure
                    && matches!(t.kind, ProbeKind::Liveness | ProbeKind::Startup);
                if fatal && !c.kill_sent {
                    kill = Some((
                        t.kind,
                        format!(
                            "Container {} failed {} probe, will be restarted: {}",
                            c.name,
                            t.kind.as_str().to_lowercase(),
                            t.last_failure.as_deref().unwrap_or("probe failed")
                        ),
                    ));
                }
            }
            if let Some((probe, message)) = kill {
                c.kill_sent = true;
                actions.push(Action::Kill {
                    container: c.name.clone(),
                    instance: c.instance,
                    probe,
                    message,
                });
                continue;
            }
            if c.kill_sent {
                continue;
            }
            for t in c.trackers.iter_mut() {
                // A startup probe that succeeded never runs again; the others wait for it.
                let runs = match t.kind {
                    ProbeKind::Startup => t.verdict() != Verdict::Success,
                    _ => startup_ok,
                };
                if runs && t.due(now) {
                    t.begin(now);
                    actions.push(Action::Probe {
                        container: c.name.clone(),
                        instance: c.instance,
                        kind: t.kind,
                    });
                }
            }
        }
        self.update_conditions(now);
        actions
    }

    fn may_start(&self, c: &Container, now: SystemTime) -> bool {
        match &c.state {
            State::Waiting { retry_at, .. } => {
                // An instance is being created (Start sent, no answer yet).
                if c.instance > 0 && retry_at.is_none() {
                    return false;
                }
                retry_at.is_none_or(|t| t <= now)
            }
            State::Running { .. } => false,
            State::Terminated(_) => match self.restart_decision(c) {
                Restart::Now => true,
                Restart::At(t) => t <= now,
                Restart::No => false,
            },
        }
    }

    /// When `plan` may act without a new event.
    pub fn next_wakeup(&self) -> Option<SystemTime> {
        if self.terminating || self.terminal.is_some() {
            return None;
        }
        let mut next: Option<SystemTime> = None;
        let mut at = |t: SystemTime| next = Some(next.map_or(t, |n| n.min(t)));
        for c in &self.containers {
            match &c.state {
                State::Waiting {
                    retry_at: Some(t), ..
                } => at(*t),
                State::Terminated(_) => {
                    if let Restart::At(t) = self.restart_decision(c) {
                        at(t)
                    }
                }
                State::Running { .. } => {
                    for t in &c.trackers {
                        if let Some(d) = t.next_due() {
                            at(d)
                        }
                    }
                }
                _ => {}
            }
        }
        next
    }

    /// Phase as the kubelet's getPhase computes it.
    pub fn phase(&self) -> Phase {
        if let Some(p) = self.terminal {
            return p;
        }
        self.compute_phase()
    }

    fn compute_phase(&self) -> Phase {
        let init: Vec<&Container> = self.containers.iter().filter(|c| c.init).collect();
        let never = self.restart_policy == RestartPolicy::Never;
        let init_failed = init
            .iter()
            .any(|c| matches!(&c.state, State::Terminated(t) if t.exit_code != 0));
        if init_failed && never {
            return Phase::Failed;
        }
        let pending_init = init.iter().any(|c| !c.succeeded());
        if pending_init {
            if self.terminating && !self.any_running() {
                return Phase::Failed;
            }
            return Phase::Pending;
        }
        let (mut running, mut waiting, mut stopped, mut succeeded) = (0, 0, 0, 0);
        for c in self.containers.iter().filter(|c| !c.init) {
            match &c.state {
                State::Running { .. } => running += 1,
                State::Terminated(t) => {
                    stopped += 1;
                    if t.exit_code == 0 {
                        succeeded += 1;
                    }
                }
                // Waiting to restart counts as stopped; never run counts as waiting.
                State::Waiting { .. } if c.last_termination.is_some() => stopped += 1,
                State::Waiting { .. } => waiting += 1,
            }
        }
        if waiting > 0 && !self.terminating {
            return Phase::Pending;
        }
        if running > 0 {
            return Phase::Running;
        }
        if stopped == 0 {
            return Phase::Pending;
        }
        let all_ok = stopped == succeeded && waiting == 0;
        if self.terminating {
            // A deleted pod whose containers all stopped (podIsTerminal in getPhase).
            return if all_ok {
                Phase::Succeeded
            } else {
                Phase::Failed
            };
        }
        match self.restart_policy {
            RestartPolicy::Always => Phase::Running,
            _ if all_ok => Phase::Succeeded,
            RestartPolicy::Never => Phase::Failed,
            RestartPolicy::OnFailure => Phase::Running,
        }
    }

    fn update_conditions(&mut self, now: SystemTime) {
        if self.terminal.is_none() {
            let p = self.compute_phase();
            if p.is_terminal() {
                self.terminal = Some(p);
            }
        }
        let initialized = self.init_done();
        let containers_ready = self
            .containers
            .iter()
            .filter(|c| !c.init)
            .all(Container::ready);
        let gates_ok = self.readiness_gates.iter().all(|g| {
            self.foreign
                .iter()
                .any(|c| &c.type_ == g && c.status == "True")
        });
        let ready = containers_ready && gates_ok;
        for (k, v) in [
            (INITIALIZED, initialized),
            (CONTAINERS_READY, containers_ready),
            (READY, ready),
        ] {
            match self.conds.get(k) {
                Some(c) if c.status == v => {}
                _ => {
                    self.conds.insert(
                        k,
                        Cond {
                            status: v,
                            since: now,
                        },
                    );
                }
            }
        }
    }

    /// The Pod status to publish.
    pub fn status(&self, inputs: &StatusInputs, now: SystemTime) -> PodStatus {
        let phase = self.phase();
        let list = |pred: &dyn Fn(&Container) -> bool| -> String {
            self.containers
                .iter()
                .filter(|c| pred(c))
                .map(|c| c.name.as_str())
                .collect::<Vec<_>>()
                .join(" ")
        };
        let mut conditions: Vec<PodCondition> = Vec::new();
        // PodScheduled belongs to the scheduler; a pod bound by other means (nodeName
        // set at creation) is scheduled as far as the kubelet is concerned.
        if !self.foreign.iter().any(|c| c.type_ == SCHEDULED) {
            conditions.push(PodCondition {
                type_: SCHEDULED.into(),
                status: "True".into(),
                last_transition_time: Some(time(self.start_time)),
                ..Default::default()
            });
        }
        conditions.extend(self.foreign.iter().cloned());
        let completed = phase == Phase::Succeeded;
        for (k, reason, names) in [
            (
                INITIALIZED,
                "ContainersNotInitialized",
                list(&|c| c.init && !c.succeeded()),
            ),
            (
                CONTAINERS_READY,
                "ContainersNotReady",
                list(&|c| !c.init && !c.ready()),
            ),
            (
                READY,
                "ContainersNotReady",
                list(&|c| !c.init && !c.ready()),
            ),
        ] {
            let c = &self.conds[k];
            let (reason, message) = if c.status {
                (None, None)
            } else if completed && k != INITIALIZED {
                (Some("PodCompleted".to_string()), None)
            } else if k == INITIALIZED {
                (
                    Some(reason.to_string()),
                    Some(format!("containers with incomplete status: [{names}]")),
                )
            } else if k == READY && !names.is_empty() {
                (
                    Some(reason.to_string()),
                    Some(format!("containers with unready status: [{names}]")),
                )
            } else if k == READY {
                let gates: Vec<&str> = self
                    .readiness_gates
                    .iter()
                    .filter(|g| {
                        !self
                            .foreign
                            .iter()
                            .any(|c| &c.type_ == *g && c.status == "True")
                    })
                    .map(String::as_str)
                    .collect();
                (
                    Some("ReadinessGatesNotReady".to_string()),
                    Some(format!(
                        "corresponding condition of pod readiness gate \"{}\" does not exist or is not True",
                        gates.join("\", \"")
                    )),
                )
            } else {
                (
                    Some(reason.to_string()),
                    Some(format!("containers with unready status: [{names}]")),
                )
            };
            conditions.push(PodCondition {
                type_: k.into(),
                status: if c.status { "True" } else { "False" }.into(),
                last_transition_time: Some(time(c.since)),
                reason,
                message,
                ..Default::default()
            });
        }
        let statuses = |init: bool| -> Option<Vec<ContainerStatus>> {
            let v: Vec<ContainerStatus> = self
                .containers
                .iter()
                .filter(|c| c.init == init)
                .map(|c| self.container_status(c, inputs, now))
                .collect();
            (!v.is_empty() || !init).then_some(v)
        };
        PodStatus {
            phase: Some(phase.as_str().into()),
            conditions: Some(conditions),
            host_ip: inputs.host_ip.clone(),
            host_ips: inputs
                .host_ip
                .as_ref()
                .map(|ip| vec![k8s_openapi::api::core::v1::HostIP { ip: ip.clone() }]),
            pod_ip: inputs.pod_ips.first().cloned(),
            pod_ips: (!inputs.pod_ips.is_empty()).then(|| {
                inputs
                    .pod_ips
                    .iter()
                    .map(|ip| PodIP { ip: ip.clone() })
                    .collect()
            }),
            start_time: Some(time(self.start_time)),
            qos_class: Some(self.qos_class.into()),
            container_statuses: statuses(false),
            init_container_statuses: statuses(true),
            ..Default::default()
        }
    }

    fn container_status(
        &self,
        c: &Container,
        inputs: &StatusInputs,
        now: SystemTime,
    ) -> ContainerStatus {
        let cid = |instance: u64| format!("{}/{}/{instance}", inputs.container_id_prefix, c.name);
        let terminated = |t: &Terminated| ContainerState {
            terminated: Some(ContainerStateTerminated {
                exit_code: t.exit_code,
                signal: t.signal,
                reason: Some(t.reason.clone()),
                message: t.message.clone(),
                started_at: t.started_at.map(time),
                finished_at: Some(time(t.finished_at)),
                container_id: Some(cid(t.instance)),
            }),
            ..Default::default()
        };
        let state = match &c.state {
            State::Waiting {
                reason, message, ..
            } => ContainerState {
                waiting: Some(ContainerStateWaiting {
                    reason: Some(reason.clone()),
                    message: message.clone(),
                }),
                ..Default::default()
            },
            State::Running { started_at } => ContainerState {
                running: Some(ContainerStateRunning {
                    started_at: Some(time(*started_at)),
                }),
                ..Default::default()
            },
            State::Terminated(t) => match self.restart_decision(c) {
                Restart::At(at) if at > now => ContainerState {
                    waiting: Some(ContainerStateWaiting {
                        reason: Some("CrashLoopBackOff".into()),
                        message: Some(format!(
                            "back-off {} restarting failed container={} pod={}",
                            go_duration(c.backoff.current_delay(&self.backoff, t.finished_at)),
                            c.name,
                            self.pod_name
                        )),
                    }),
                    ..Default::default()
                },
                _ => terminated(t),
            },
        };
        // While waiting to restart, lastState is the run that just ended.
        let last = match &c.state {
            State::Terminated(t) if state.waiting.is_some() => Some(terminated(t)),
            _ => c.last_termination.as_ref().map(terminated),
        };
        let container_id = match &c.state {
            State::Running { .. } => Some(cid(c.instance)),
            State::Terminated(t) => Some(cid(t.instance)),
            State::Waiting { .. } => None,
        };
        ContainerStatus {
            name: c.name.clone(),
            image: c.image.clone(),
            image_id: String::new(),
            container_id,
            state: Some(state),
            last_state: Some(last.unwrap_or_default()),
            ready: c.ready(),
            restart_count: c.restart_count,
            started: Some(c.started()),
            ..Default::default()
        }
    }
}

/// The pod's QoS class (upstream `GetPodQOS`): BestEffort without any request or limit,
/// Guaranteed when every container limits cpu and memory and requests (which default to
/// the limits) equal them, Burstable otherwise.
fn qos_class(spec: &k8s_openapi::api::core::v1::PodSpec) -> &'static str {
    let all: Vec<&k8s_openapi::api::core::v1::Container> = spec
        .init_containers
        .iter()
        .flatten()
        .chain(spec.containers.iter())
        .collect();
    let empty = std::collections::BTreeMap::new();
    let mut any = false;
    let mut guaranteed = true;
    for c in &all {
        let r = c.resources.as_ref();
        let limits = r.and_then(|r| r.limits.as_ref()).unwrap_or(&empty);
        let requests = r.and_then(|r| r.requests.as_ref()).unwrap_or(&empty);
        let relevant = |k: &String| k == "cpu" || k == "memory";
        if limits.keys().chain(requests.keys()).any(relevant) {
            any = true;
        }
        for res in ["cpu", "memory"] {
            match limits.get(res) {
                Some(l) if requests.get(res).is_none_or(|q| q == l) => {}
                _ => guaranteed = false,
            }
        }
    }
    match (any, guaranteed) {
        (false, _) => "BestEffort",
        (true, true) => "Guaranteed",
        (true, false) => "Burstable",
    }
}

fn waiting_retry(
    c: &mut Container,
    reason: &str,
    msg: String,
    cfg: &BackoffConfig,
    now: SystemTime,
) -> State {
    let exp = c.start_failures.min(16);
    c.start_failures += 1;
    let delay = cfg.initial.saturating_mul(1u32 << exp).min(cfg.max);
    State::Waiting {
        reason: reason.into(),
        message: Some(msg),
        retry_at: Some(now + delay),
    }
}

/// A Kubernetes timestamp (second precision on the wire).
pub fn time(t: SystemTime) -> Time {
    let ts = k8s_openapi::jiff::Timestamp::try_from(t)
        .unwrap_or(k8s_openapi::jiff::Timestamp::UNIX_EPOCH);
    Time(ts)
}

/// Go's `time.Duration.String()` for whole seconds and milliseconds ("10s", "1m20s",
/// "250ms"), as the kubelet's back-off message prints it.
fn go_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms < 1000 {
        return format!("{ms}ms");
    }
    let s = d.as_secs();
    let frac = ms % 1000;
    let sec = if frac == 0 {
        format!("{}s", s % 60)
    } else {
        let f = format!("{frac:03}");
        format!("{}.{}s", s % 60, f.trim_end_matches('0'))
    };
    match (s / 3600, (s / 60) % 60) {
        (0, 0) => sec,
        (0, m) => format!("{m}m{sec}"),
        (h, m) => format!("{h}h{m}m{sec}"),
    }
}

#[cfg(test)]
mod tests;
