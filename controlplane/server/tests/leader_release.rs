//! A leader that is asked to stop (SIGTERM) releases its Leases (client-go's
//! `ReleaseOnCancel`, set by kube-controller-manager and kube-scheduler): the standby on
//! the same etcd takes over at its next retry (2 s), not after the 15 s lease duration a
//! killed leader leaves behind.

mod support;

use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::Lease;
use kube::api::Api;
use support::ServerProcess;

const DEADLINE: Duration = Duration::from_secs(60);

fn holder(l: &Lease) -> String {
    l.spec
        .as_ref()
        .and_then(|s| s.holder_identity.clone())
        .unwrap_or_default()
}

fn leads(s: &ServerProcess, lease: &str) -> bool {
    s.log()
        .lines()
        .any(|l| l.contains(&format!("kube-system/{lease}:")) && l.contains("became leader"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopping_leader_releases_its_leases_and_the_standby_takes_over_at_once() {
    let Some((etcd, _store)) = support::Etcd::start().await else {
        return;
    };
    let args = ["--store", "etcd", "--etcd-endpoints", etcd.url.as_str()];
    let a = ServerProcess::start_with(&args);
    let ca = support::kube_client(&a.kubeconfig).await;
    support::wait_ready(&ca).await;
    // `a` leads both (it started first and alone) before the standby comes up.
    let leases: Api<Lease> = Api::namespaced(ca.clone(), "kube-system");
    let deadline = Instant::now() + DEADLINE;
    while !(leads(&a, "kube-controller-manager") && leads(&a, "kube-scheduler")) {
        assert!(Instant::now() < deadline, "a never led: {}", a.log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let b = ServerProcess::start_with(&args);
    let cb = support::kube_client(&b.kubeconfig).await;
    support::wait_ready(&cb).await;
    let deadline = Instant::now() + DEADLINE;
    while !b
        .log()
        .lines()
        .any(|l| l.contains("kube-system/kube-controller-manager: ") && l.contains(" waits"))
    {
        assert!(Instant::now() < deadline, "b never campaigned: {}", b.log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let before = holder(&leases.get("kube-controller-manager").await.unwrap());
    assert!(!before.is_empty());

    let mut a = a;
    let t = Instant::now();
    a.terminate();
    let leases: Api<Lease> = Api::namespaced(cb.clone(), "kube-system");
    for lease in ["kube-controller-manager", "kube-scheduler"] {
        loop {
            let l = leases.get(lease).await.unwrap();
            let h = holder(&l);
            if !h.is_empty() && h != before && leads(&b, lease) {
                let spec = l.spec.unwrap();
                assert_eq!(spec.lease_duration_seconds, Some(15), "b renews as usual");
                assert_eq!(spec.lease_transitions, Some(1), "{lease}");
                break;
            }
            assert!(
                t.elapsed() < DEADLINE,
                "{lease}: no takeover; a: {}\nb: {}",
                a.log(),
                b.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let took = t.elapsed();
    // A killed leader's Lease is taken only after its 15 s duration; a released one at
    // the standby's next 2 s retry. 10 s leaves room for a slow machine, not for expiry.
    assert!(
        took < Duration::from_secs(10),
        "takeover took {took:?}: the lease was not released"
    );
    let log = a.log();
    for lease in ["kube-controller-manager", "kube-scheduler"] {
        assert!(
            log.contains(&format!("kube-system/{lease}: "))
                && log
                    .lines()
                    .any(|l| l.contains(lease) && l.contains("released the lease")),
            "{lease} not released: {log}"
        );
    }
    let deadline = Instant::now() + DEADLINE;
    let status = loop {
        if let Some(s) = a.exited() {
            break s;
        }
        assert!(Instant::now() < deadline, "a did not exit after SIGTERM");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(status.success(), "a exited with {status}: {log}");
    drop(b);
    drop(etcd);
}
