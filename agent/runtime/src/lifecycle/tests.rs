use super::*;
use serde_json::json;

fn t(ms: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_millis(1_700_000_000_000 + ms)
}

fn pod(spec: serde_json::Value) -> Pod {
    serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "p", "namespace": "default", "uid": "u1"},
        "spec": spec,
    }))
    .unwrap()
}

fn one(policy: &str) -> Pod {
    pod(
        json!({"restartPolicy": policy, "containers": [{"name": "c", "image": "skiff.local/host"}]}),
    )
}

fn cfg() -> BackoffConfig {
    BackoffConfig::default()
}

fn inputs() -> StatusInputs {
    StatusInputs {
        pod_ips: vec!["198.18.0.5".into()],
        host_ip: Some("192.0.2.1".into()),
        container_id_prefix: "skiff://u1".into(),
    }
}

fn starts(actions: &[Action]) -> Vec<(String, u64)> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Start {
                container,
                instance,
            } => Some((container.clone(), *instance)),
            _ => None,
        })
        .collect()
}

fn cond(s: &PodStatus, ty: &str) -> (String, Option<String>) {
    let c = s
        .conditions
        .as_ref()
        .unwrap()
        .iter()
        .find(|c| c.type_ == ty)
        .unwrap_or_else(|| panic!("no {ty} condition"));
    (c.status.clone(), c.reason.clone())
}

fn cstatus<'a>(s: &'a PodStatus, name: &str) -> &'a ContainerStatus {
    s.container_statuses
        .iter()
        .flatten()
        .chain(s.init_container_statuses.iter().flatten())
        .find(|c| c.name == name)
        .unwrap()
}

fn waiting_reason(s: &PodStatus, name: &str) -> Option<String> {
    cstatus(s, name)
        .state
        .as_ref()
        .and_then(|st| st.waiting.as_ref())
        .and_then(|w| w.reason.clone())
}

#[test]
fn a_plain_pod_starts_runs_and_is_ready() {
    let mut l = Lifecycle::new(&one("Always"), cfg(), t(0));
    let s = l.status(&inputs(), t(0));
    assert_eq!(s.phase.as_deref(), Some("Pending"));
    assert_eq!(
        waiting_reason(&s, "c").as_deref(),
        Some("ContainerCreating")
    );
    assert_eq!(cond(&s, "PodScheduled").0, "True");
    assert_eq!(cond(&s, "Initialized").0, "True");
    assert_eq!(
        cond(&s, "Ready"),
        ("False".into(), Some("ContainersNotReady".into()))
    );

    let a = l.plan(t(1));
    assert_eq!(starts(&a), [("c".to_string(), 1)]);
    assert!(l.plan(t(2)).is_empty(), "no second start while creating");
    l.started("c", 1, t(3));
    let s = l.status(&inputs(), t(3));
    assert_eq!(s.phase.as_deref(), Some("Running"));
    assert_eq!(cond(&s, "ContainersReady").0, "True");
    assert_eq!(cond(&s, "Ready").0, "True");
    let c = cstatus(&s, "c");
    assert!(c.ready);
    assert_eq!(c.started, Some(true));
    assert_eq!(c.container_id.as_deref(), Some("skiff://u1/c/1"));
    assert_eq!(s.pod_ip.as_deref(), Some("198.18.0.5"));
    assert_eq!(s.host_ip.as_deref(), Some("192.0.2.1"));
    assert_eq!(s.start_time, Some(time(t(0))));
    let ready = s
        .conditions
        .unwrap()
        .into_iter()
        .find(|c| c.type_ == "Ready")
        .unwrap();
    assert_eq!(ready.last_transition_time, Some(time(t(3))));
}

#[test]
fn init_containers_run_first_in_order() {
    let p = pod(json!({"containers": [{"name": "main"}],
        "initContainers": [{"name": "i1"}, {"name": "i2"}]}));
    let mut l = Lifecycle::new(&p, cfg(), t(0));
    let s = l.status(&inputs(), t(0));
    assert_eq!(
        cond(&s, "Initialized"),
        ("False".into(), Some("ContainersNotInitialized".into()))
    );
    assert_eq!(
        waiting_reason(&s, "main").as_deref(),
        Some("PodInitializing")
    );
    assert_eq!(starts(&l.plan(t(1))), [("i1".to_string(), 1)]);
    l.started("i1", 1, t(2));
    assert!(starts(&l.plan(t(3))).is_empty());
    l.exited("i1", 1, 0, None, t(4));
    assert_eq!(starts(&l.plan(t(5))), [("i2".to_string(), 1)]);
    l.started("i2", 1, t(6));
    assert_eq!(l.phase(), Phase::Pending);
    l.exited("i2", 1, 0, None, t(7));
    assert_eq!(starts(&l.plan(t(8))), [("main".to_string(), 1)]);
    let s = l.status(&inputs(), t(8));
    assert_eq!(cond(&s, "Initialized").0, "True");
    let i1 = cstatus(&s, "i1");
    let term = i1.state.as_ref().unwrap().terminated.as_ref().unwrap();
    assert_eq!(
        (term.exit_code, term.reason.as_deref()),
        (0, Some("Completed"))
    );
}

#[test]
fn a_failed_init_container_fails_a_never_pod_and_retries_otherwise() {
    let spec = |policy| {
        pod(
            json!({"restartPolicy": policy, "containers": [{"name": "main"}],
            "initContainers": [{"name": "i1"}]}),
        )
    };
    let mut never = Lifecycle::new(&spec("Never"), cfg(), t(0));
    never.plan(t(0));
    never.started("i1", 1, t(1));
    never.exited("i1", 1, 2, None, t(2));
    assert!(never.plan(t(3)).is_empty());
    assert_eq!(never.phase(), Phase::Failed);

    let mut always = Lifecycle::new(&spec("Always"), cfg(), t(0));
    always.plan(t(0));
    always.started("i1", 1, t(1));
    always.exited("i1", 1, 2, None, t(2));
    assert_eq!(starts(&always.plan(t(2))), [("i1".to_string(), 2)]);
    always.started("i1", 2, t(3));
    always.exited("i1", 2, 2, None, t(4));
    assert!(always.plan(t(5)).is_empty(), "in backoff");
    let s = always.status(&inputs(), t(5));
    assert_eq!(
        waiting_reason(&s, "i1").as_deref(),
        Some("CrashLoopBackOff")
    );
    assert_eq!(s.phase.as_deref(), Some("Pending"));
    assert_eq!(always.next_wakeup(), Some(t(10_004)));
    assert_eq!(starts(&always.plan(t(10_004))), [("i1".to_string(), 3)]);
}

#[test]
fn restart_policy_always_backs_off_exponentially() {
    let mut l = Lifecycle::new(&one("Always"), cfg(), t(0));
    let mut now = 0;
    let mut inst = 0;
    let mut delays = vec![];
    for _ in 0..5 {
        let a = l.plan(t(now));
        let (_, i) = starts(&a)[0].clone();
        assert_eq!(i, inst + 1);
        inst = i;
        l.started("c", inst, t(now + 1));
        l.exited("c", inst, 1, None, t(now + 500));
        now += 500;
        let s = l.status(&inputs(), t(now));
        let cs = cstatus(&s, "c");
        assert_eq!(cs.restart_count as u64, inst - 1);
        assert_eq!(s.phase.as_deref(), Some("Running"));
        assert_eq!(cond(&s, "Ready").0, "False");
        match l.next_wakeup() {
            None => delays.push(0),
            Some(w) => {
                let d = w.duration_since(t(now)).unwrap().as_millis() as u64;
                delays.push(d);
                assert!(
                    l.plan(t(now + d - 1)).is_empty(),
                    "restart before the delay"
                );
                let last = cs.last_state.as_ref().unwrap().terminated.as_ref().unwrap();
                assert_eq!((last.exit_code, last.reason.as_deref()), (1, Some("Error")));
                let w = cs.state.as_ref().unwrap().waiting.as_ref().unwrap();
                assert_eq!(w.reason.as_deref(), Some("CrashLoopBackOff"));
                assert_eq!(
                    w.message.as_deref(),
                    Some(
                        format!(
                            "back-off {} restarting failed container=c pod=p",
                            go_duration(Duration::from_millis(d))
                        )
                        .as_str()
                    )
                );
                now += d;
            }
        }
    }
    assert_eq!(delays, [0, 10_000, 20_000, 40_000, 80_000]);
    let s = l.status(&inputs(), t(now));
    assert_eq!(cstatus(&s, "c").restart_count, 4);
}

#[test]
fn on_failure_restarts_only_failures_and_never_none() {
    let mut l = Lifecycle::new(&one("OnFailure"), cfg(), t(0));
    l.plan(t(0));
    l.started("c", 1, t(1));
    l.exited("c", 1, 3, None, t(2));
    assert_eq!(starts(&l.plan(t(2))), [("c".to_string(), 2)]);
    l.started("c", 2, t(3));
    l.exited("c", 2, 0, None, t(4));
    assert!(l.plan(t(1_000_000)).is_empty());
    assert_eq!(l.phase(), Phase::Succeeded);
    let s = l.status(&inputs(), t(5));
    assert_eq!(
        cond(&s, "Ready"),
        ("False".into(), Some("PodCompleted".into()))
    );

    let mut n = Lifecycle::new(&one("Never"), cfg(), t(0));
    n.plan(t(0));
    n.started("c", 1, t(1));
    n.exited("c", 1, 137, Some(9), t(2));
    assert!(n.plan(t(1_000_000)).is_empty());
    assert_eq!(n.phase(), Phase::Failed);
    let s = n.status(&inputs(), t(3));
    let term = cstatus(&s, "c").state.clone().unwrap().terminated.unwrap();
    assert_eq!((term.exit_code, term.signal), (137, Some(9)));
    // Terminal phases are sticky.
    assert_eq!(n.phase(), Phase::Failed);
}

#[test]
fn always_restarts_a_clean_exit_too() {
    let mut l = Lifecycle::new(&one("Always"), cfg(), t(0));
    l.plan(t(0));
    l.started("c", 1, t(1));
    l.exited("c", 1, 0, None, t(2));
    assert_eq!(starts(&l.plan(t(2))), [("c".to_string(), 2)]);
}

fn probed(probes: serde_json::Value) -> Pod {
    let mut c = json!({"name": "c", "image": "skiff.local/host"});
    for (k, v) in probes.as_object().unwrap() {
        c[k] = v.clone();
    }
    pod(json!({"containers": [c]}))
}

fn probes(actions: &[Action]) -> Vec<ProbeKind> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Probe { kind, .. } => Some(*kind),
            _ => None,
        })
        .collect()
}

/// An agent restart adopts a running, ready container: it stays ready (no endpoint flap)
/// until its own probes say otherwise, `failureThreshold` failures in a row as usual.
#[test]
fn an_adopted_ready_container_stays_ready_until_its_probe_fails() {
    let p = probed(json!({
        "readinessProbe": {"tcpSocket": {"port": 80}, "periodSeconds": 1, "failureThreshold": 2},
    }));
    let mut l = Lifecycle::new(&p, cfg(), t(0));
    l.restore("c", 0, 1);
    l.plan(t(0));
    l.started("c", 1, t(0));
    assert!(
        !cstatus(&l.status(&inputs(), t(0)), "c").ready,
        "a fresh tracker"
    );
    l.carry_over_probes("c", 1, (true, true), t(0));
    let s = l.status(&inputs(), t(0));
    assert!(
        cstatus(&s, "c").ready,
        "ready as the earlier runtime published"
    );
    assert_eq!(cond(&s, "Ready").0, "True");
    l.probe_result("c", 1, ProbeKind::Readiness, false, None, t(10));
    assert!(
        cstatus(&l.status(&inputs(), t(10)), "c").ready,
        "one failure of two"
    );
    l.probe_result("c", 1, ProbeKind::Readiness, false, None, t(1010));
    assert!(!cstatus(&l.status(&inputs(), t(1010)), "c").ready);

    // Published not ready: nothing to carry over, the probe decides.
    let mut l = Lifecycle::new(&p, cfg(), t(0));
    l.restore("c", 0, 1);
    l.plan(t(0));
    l.started("c", 1, t(0));
    l.carry_over_probes("c", 1, (false, true), t(0));
    assert!(!cstatus(&l.status(&inputs(), t(0)), "c").ready);
}

#[test]
fn readiness_gates_ready_and_liveness_kills() {
    let p = probed(json!({
        "readinessProbe": {"tcpSocket": {"port": 80}, "periodSeconds": 1, "initialDelaySeconds": 2},
        "livenessProbe": {"tcpSocket": {"port": 80}, "periodSeconds": 1, "failureThreshold": 2},
    }));
    let mut l = Lifecycle::new(&p, cfg(), t(0));
    l.plan(t(0));
    l.started("c", 1, t(0));
    let s = l.status(&inputs(), t(0));
    assert!(
        !cstatus(&s, "c").ready,
        "not ready before the readiness probe"
    );
    assert_eq!(cstatus(&s, "c").started, Some(true));
    // Liveness runs at once; readiness after its initial delay.
    assert_eq!(probes(&l.plan(t(0))), [ProbeKind::Liveness]);
    l.probe_result("c", 1, ProbeKind::Liveness, true, None, t(10));
    assert!(probes(&l.plan(t(999))).is_empty());
    assert_eq!(l.next_wakeup(), Some(t(1000)));
    assert_eq!(
        probes(&l.plan(t(2000))),
        [ProbeKind::Liveness, ProbeKind::Readiness]
    );
    l.probe_result("c", 1, ProbeKind::Readiness, true, None, t(2001));
    let s = l.status(&inputs(), t(2001));
    assert!(cstatus(&s, "c").ready);
    assert_eq!(cond(&s, "Ready").0, "True");
    // Two liveness failures in a row: kill once, then restart with the count.
    l.probe_result(
        "c",
        1,
        ProbeKind::Liveness,
        false,
        Some("refused".into()),
        t(2002),
    );
    assert!(l
        .plan(t(2002))
        .iter()
        .all(|a| !matches!(a, Action::Kill { .. })));
    l.plan(t(3000));
    l.probe_result(
        "c",
        1,
        ProbeKind::Liveness,
        false,
        Some("refused".into()),
        t(3001),
    );
    let a = l.plan(t(3001));
    assert_eq!(
        a,
        [Action::Kill {
            container: "c".into(),
            instance: 1,
            probe: ProbeKind::Liveness,
            message: "Container c failed liveness probe, will be restarted: refused".into()
        }]
    );
    assert!(l.plan(t(5000)).is_empty(), "one kill, no more probes");
    // A late result from the killed instance changes nothing.
    l.exited("c", 1, 143, Some(15), t(5001));
    l.probe_result("c", 1, ProbeKind::Readiness, true, None, t(5002));
    assert_eq!(starts(&l.plan(t(5002))), [("c".to_string(), 2)]);
    l.started("c", 2, t(5003));
    let s = l.status(&inputs(), t(5003));
    assert_eq!(cstatus(&s, "c").restart_count, 1);
    assert!(!cstatus(&s, "c").ready, "a new instance starts unready");
}

#[test]
fn startup_probe_gates_the_others_and_kills_on_failure() {
    let p = probed(json!({
        "startupProbe": {"exec": {"command": ["true"]}, "periodSeconds": 1, "failureThreshold": 2},
        "readinessProbe": {"tcpSocket": {"port": 80}, "periodSeconds": 1},
        "livenessProbe": {"tcpSocket": {"port": 80}, "periodSeconds": 1},
    }));
    let mut l = Lifecycle::new(&p, cfg(), t(0));
    l.plan(t(0));
    l.started("c", 1, t(0));
    assert_eq!(
        cstatus(&l.status(&inputs(), t(0)), "c").started,
        Some(false)
    );
    assert_eq!(probes(&l.plan(t(0))), [ProbeKind::Startup]);
    l.probe_result("c", 1, ProbeKind::Startup, false, None, t(1));
    assert_eq!(probes(&l.plan(t(1000))), [ProbeKind::Startup]);
    l.probe_result("c", 1, ProbeKind::Startup, true, None, t(1001));
    assert_eq!(
        cstatus(&l.status(&inputs(), t(1001)), "c").started,
        Some(true)
    );
    assert_eq!(
        probes(&l.plan(t(2000))),
        [ProbeKind::Liveness, ProbeKind::Readiness],
        "startup never runs again"
    );

    let mut l = Lifecycle::new(&p, cfg(), t(0));
    l.plan(t(0));
    l.started("c", 1, t(0));
    l.plan(t(0));
    l.probe_result("c", 1, ProbeKind::Startup, false, None, t(1));
    l.plan(t(1000));
    l.probe_result(
        "c",
        1,
        ProbeKind::Startup,
        false,
        Some("exit 1".into()),
        t(1001),
    );
    let a = l.plan(t(1001));
    assert!(matches!(&a[..], [Action::Kill { message, .. }] if message.contains("startup probe")));
}

#[test]
fn image_and_config_errors_wait_and_retry() {
    let mut l = Lifecycle::new(&one("Always"), cfg(), t(0));
    l.plan(t(0));
    l.start_failed("c", 1, StartFailure::Image("no such image".into()), t(1));
    let s = l.status(&inputs(), t(1));
    assert_eq!(waiting_reason(&s, "c").as_deref(), Some("ErrImagePull"));
    assert_eq!(
        cstatus(&s, "c")
            .state
            .as_ref()
            .unwrap()
            .waiting
            .as_ref()
            .unwrap()
            .message
            .as_deref(),
        Some("no such image")
    );
    assert_eq!(s.phase.as_deref(), Some("Pending"));
    assert_eq!(cstatus(&s, "c").restart_count, 0);
    assert!(l.plan(t(2)).is_empty());
    assert_eq!(l.next_wakeup(), Some(t(10_001)));
    assert_eq!(starts(&l.plan(t(10_001))), [("c".to_string(), 2)]);
    l.start_failed(
        "c",
        2,
        StartFailure::Config("key x missing".into()),
        t(10_002),
    );
    assert_eq!(
        waiting_reason(&l.status(&inputs(), t(10_002)), "c").as_deref(),
        Some("CreateContainerConfigError")
    );
    assert_eq!(l.next_wakeup(), Some(t(30_002)), "the retry delay doubles");
}

#[test]
fn an_exec_failure_is_a_start_error_run() {
    let mut l = Lifecycle::new(&one("Never"), cfg(), t(0));
    l.plan(t(0));
    l.start_failed("c", 1, StartFailure::Exec("no such file".into()), t(1));
    let s = l.status(&inputs(), t(1));
    let term = cstatus(&s, "c").state.clone().unwrap().terminated.unwrap();
    assert_eq!(
        (term.exit_code, term.reason.as_deref()),
        (128, Some("StartError"))
    );
    assert_eq!(l.phase(), Phase::Failed);
}

#[test]
fn terminating_stops_restarts_and_ends_terminal() {
    let mut l = Lifecycle::new(&one("Always"), cfg(), t(0));
    l.plan(t(0));
    l.started("c", 1, t(1));
    l.set_terminating(t(2));
    assert_eq!(l.running_instances(), [("c".to_string(), 1)]);
    l.exited("c", 1, 143, Some(15), t(3));
    assert!(l.plan(t(4)).is_empty());
    assert_eq!(l.phase(), Phase::Failed);
    assert!(!l.any_running());
}

#[test]
fn readiness_gates_need_their_condition() {
    let mut p = pod(json!({"containers": [{"name": "c"}],
        "readinessGates": [{"conditionType": "example.com/lb"}]}));
    let mut l = Lifecycle::new(&p, cfg(), t(0));
    l.plan(t(0));
    l.started("c", 1, t(1));
    let s = l.status(&inputs(), t(1));
    assert_eq!(cond(&s, "ContainersReady").0, "True");
    assert_eq!(
        cond(&s, "Ready"),
        ("False".into(), Some("ReadinessGatesNotReady".into()))
    );
    p.status = Some(PodStatus {
        conditions: Some(vec![PodCondition {
            type_: "example.com/lb".into(),
            status: "True".into(),
            ..Default::default()
        }]),
        ..Default::default()
    });
    l.set_foreign_conditions(&p, t(2));
    let s = l.status(&inputs(), t(2));
    assert_eq!(cond(&s, "Ready").0, "True");
    assert_eq!(cond(&s, "example.com/lb").0, "True", "kept in the status");
}

#[test]
fn go_durations() {
    assert_eq!(go_duration(Duration::from_secs(10)), "10s");
    assert_eq!(go_duration(Duration::from_secs(80)), "1m20s");
    assert_eq!(go_duration(Duration::from_secs(300)), "5m0s");
    assert_eq!(go_duration(Duration::from_millis(250)), "250ms");
    assert_eq!(go_duration(Duration::from_millis(1500)), "1.5s");
}

#[test]
fn qos_classes() {
    let q =
        |c: serde_json::Value| qos_class(pod(json!({"containers": [c]})).spec.as_ref().unwrap());
    assert_eq!(q(json!({"name": "c"})), "BestEffort");
    assert_eq!(
        q(json!({"name": "c", "resources": {"limits": {"cpu": "1", "memory": "1Gi"}}})),
        "Guaranteed"
    );
    assert_eq!(
        q(json!({"name": "c", "resources": {"requests": {"cpu": "100m"}}})),
        "Burstable"
    );
    assert_eq!(
        q(
            json!({"name": "c", "resources": {"limits": {"cpu": "1", "memory": "1Gi"}, "requests": {"cpu": "500m"}}})
        ),
        "Burstable"
    );
}

#[test]
fn a_restored_container_is_started_as_its_recorded_instance_whatever_its_restarts() {
    // Adoption after a runtime restart: the earlier run had restarted the container once
    // (instance 2, restartCount 1); the new run must take over instance 2, not wait for a
    // Start it never sent.
    for (restart_count, instance) in [(0, 1), (1, 2), (4, 5)] {
        let mut l = Lifecycle::new(&one("Always"), cfg(), t(0));
        l.restore("c", restart_count, instance);
        assert_eq!(
            starts(&l.plan(t(1))),
            vec![("c".to_string(), instance)],
            "restored as instance {instance}"
        );
        l.started("c", instance, t(2));
        let s = l.status(&inputs(), t(3));
        assert_eq!(cstatus(&s, "c").restart_count, restart_count);
    }
}
