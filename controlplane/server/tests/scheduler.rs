//! The scheduler and the node lifecycle controller in a real `skiff-controlplane`
//! process, with fake nodes (skiff-fake-nodes) standing in for kubelets. Pods are
//! created directly (no ReplicaSet controller needed).

mod support;

use std::collections::BTreeMap;
use std::future::Future;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Event, Node, Pod};
use kube::api::ListParams;
use kube::{Api, Client, ResourceExt as _};
use skiff_fake_nodes::{FakeNodes, NodeShape};
use support::{SchedKubectl, ServerProcess};

const DEADLINE: Duration = Duration::from_secs(30);

/// Polls `f` every 50 ms until it yields Some, or panics after `within` naming `what`.
async fn eventually<T, F, Fut>(what: &str, within: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {within:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn setup(server: &ServerProcess, cpu: &str) -> (Client, FakeNodes) {
    let client = support::kube_client(&server.kubeconfig).await;
    support::wait_ready(&client).await;
    let fake = FakeNodes::start(
        client.clone(),
        skiff_fake_nodes::Config {
            count: 3,
            shape: NodeShape {
                cpu: cpu.into(),
                memory: "8Gi".into(),
                ..Default::default()
            },
            lease_interval: Duration::from_millis(500),
            ..Default::default()
        },
    )
    .await
    .expect("starting fake nodes");
    (client, fake)
}

fn pod_yaml(name: &str, cpu: &str, extra_spec: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  labels:\n    app: web\nspec:\n{extra_spec}  containers:\n  - name: c\n    image: registry.invalid/web:1\n    resources:\n      requests:\n        cpu: {cpu}\n        memory: 64Mi\n"
    )
}

fn node_of(p: &Pod) -> Option<String> {
    p.spec.as_ref()?.node_name.clone()
}

async fn bound(pods: &Api<Pod>, name: &str) -> String {
    eventually(&format!("pod {name} bound"), DEADLINE, || async {
        pods.get(name).await.ok().as_ref().and_then(node_of)
    })
    .await
}

/// The message of the newest Event with `reason` about `name` (kube-rs, field selector).
async fn event(client: &Client, name: &str, reason: &str) -> Option<String> {
    let events: Api<Event> = Api::namespaced(client.clone(), "default");
    let lp = ListParams::default().fields(&format!("involvedObject.name={name},reason={reason}"));
    let list = events.list(&lp).await.ok()?;
    list.items
        .into_iter()
        .max_by_key(|e| e.last_timestamp.clone().map(|t| t.0))
        .and_then(|e| e.message)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_spread_over_three_fake_nodes_and_run() {
    let server = ServerProcess::start();
    let (client, fake) = setup(&server, "4").await;
    let Some(kubectl) = SchedKubectl::new(&server.kubeconfig) else {
        return;
    };
    let yaml: String = (0..6)
        .map(|i| pod_yaml(&format!("web-{i}"), "100m", ""))
        .collect::<Vec<_>>()
        .join("---\n");
    kubectl.ok(&["create", "-f", "-"], Some(&yaml));
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let mut per_node: BTreeMap<String, usize> = BTreeMap::new();
    for i in 0..6 {
        *per_node
            .entry(bound(&pods, &format!("web-{i}")).await)
            .or_default() += 1;
    }
    // Equal requests on equal nodes: LeastAllocated with assumed pods spreads exactly.
    assert_eq!(
        per_node,
        fake.names()
            .into_iter()
            .map(|n| (n, 2))
            .collect::<BTreeMap<_, _>>(),
        "{}",
        server.log()
    );
    // The fake kubelets run them: Running, Ready, a pod IP from the node's range.
    let p = eventually("web-0 Running and Ready", DEADLINE, || async {
        let p = pods.get("web-0").await.ok()?;
        let st = p.status.as_ref()?;
        let ready = st
            .conditions
            .iter()
            .flatten()
            .any(|c| c.type_ == "Ready" && c.status == "True");
        (st.phase.as_deref() == Some("Running") && ready && st.pod_ip.is_some()).then_some(p)
    })
    .await;
    let ip = p.status.as_ref().unwrap().pod_ip.clone().unwrap();
    let node = node_of(&p).unwrap();
    // From the node's podCIDR (assigned by the in-process node IPAM controller from
    // 10.42.0.0/16) or, if the fake node ran the pod before that, its derived range.
    let cidr = Api::<Node>::all(client.clone())
        .get(&node)
        .await
        .unwrap()
        .spec
        .and_then(|s| s.pod_cidr)
        .unwrap_or_default();
    let in_cidr = cidr
        .strip_suffix(".0/24")
        .is_some_and(|prefix| ip.starts_with(&format!("{prefix}.")));
    assert!(
        in_cidr || ip.starts_with("10.128."),
        "pod IP {ip} neither from the node's podCIDR {cidr:?} nor from the derived 10.128.0.0/9 range"
    );
    let msg = eventually("the Scheduled event", DEADLINE, || {
        event(&client, "web-0", "Scheduled")
    })
    .await;
    assert_eq!(
        msg,
        format!("Successfully assigned default/web-0 to {node}")
    );
    // kubectl shows the node assignment too.
    let wide = kubectl.ok(&["get", "pod", "web-0", "-o", "wide"], None);
    assert!(wide.contains(&node) && wide.contains("Running"), "{wide}");
    // A deleted bound pod is finalised by its fake kubelet (gracePeriodSeconds=0).
    kubectl.ok(&["delete", "pod", "web-1", "--wait=false"], None);
    eventually("web-1 gone", DEADLINE, || async {
        matches!(pods.get_opt("web-1").await, Ok(None)).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unschedulable_pod_reports_and_is_retried_when_a_node_is_added() {
    let server = ServerProcess::start();
    let (client, fake) = setup(&server, "4").await;
    let Some(kubectl) = SchedKubectl::new(&server.kubeconfig) else {
        return;
    };
    kubectl.ok(&["create", "-f", "-"], Some(&pod_yaml("big", "16", "")));
    // kubectl get events shows upstream's message.
    let msg = eventually(
        "FailedScheduling in kubectl get events",
        DEADLINE,
        || async {
            let out = kubectl.ok(
                &[
                    "get",
                    "events",
                    "--field-selector",
                    "involvedObject.name=big,reason=FailedScheduling",
                    "-o",
                    "jsonpath={.items[*].message}",
                ],
                None,
            );
            (!out.is_empty()).then_some(out)
        },
    )
    .await;
    assert_eq!(msg, "0/3 nodes are available: 3 Insufficient cpu.");
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let cond = eventually("PodScheduled=False", DEADLINE, || async {
        let p = pods.get("big").await.ok()?;
        p.status?
            .conditions?
            .into_iter()
            .find(|c| c.type_ == "PodScheduled")
    })
    .await;
    assert_eq!(cond.status, "False");
    assert_eq!(cond.reason.as_deref(), Some("Unschedulable"));
    assert_eq!(
        cond.message.as_deref(),
        Some("0/3 nodes are available: 3 Insufficient cpu.")
    );
    assert!(node_of(&pods.get("big").await.unwrap()).is_none());
    // A big node joins: the cluster event moves the pod back at once (no 10 s stall).
    let added = Instant::now();
    fake.add_node(
        "big-node",
        &NodeShape {
            cpu: "32".into(),
            memory: "64Gi".into(),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let node = bound(&pods, "big").await;
    let took = added.elapsed();
    assert_eq!(node, "big-node");
    assert!(
        took < Duration::from_secs(3),
        "scheduled {took:?} after the node was added"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_selector_taints_and_host_ports() {
    let server = ServerProcess::start();
    let (client, _fake) = setup(&server, "4").await;
    let Some(kubectl) = SchedKubectl::new(&server.kubeconfig) else {
        return;
    };
    kubectl.ok(&["label", "node", "fake-node-1", "disk=ssd"], None);
    kubectl.ok(
        &["taint", "node", "fake-node-2", "dedicated=infra:NoSchedule"],
        None,
    );
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    // Wait until the scheduler has seen the label and the taint (a probe pod per change
    // would be racy; the node objects are what it watches).
    let nodes: Api<Node> = Api::all(client.clone());
    eventually("label and taint stored", DEADLINE, || async {
        let n1 = nodes.get("fake-node-1").await.ok()?;
        let n2 = nodes.get("fake-node-2").await.ok()?;
        (n1.labels().get("disk").is_some()
            && n2
                .spec
                .as_ref()?
                .taints
                .as_ref()
                .is_some_and(|t| !t.is_empty()))
        .then_some(())
    })
    .await;

    kubectl.ok(
        &["create", "-f", "-"],
        Some(&pod_yaml("ssd", "100m", "  nodeSelector:\n    disk: ssd\n")),
    );
    assert_eq!(bound(&pods, "ssd").await, "fake-node-1");

    let pin2 = "  nodeSelector:\n    kubernetes.io/hostname: fake-node-2\n";
    kubectl.ok(
        &["create", "-f", "-"],
        Some(&pod_yaml("untolerated", "100m", pin2)),
    );
    let msg = eventually("FailedScheduling of untolerated", DEADLINE, || {
        event(&client, "untolerated", "FailedScheduling")
    })
    .await;
    assert_eq!(
        msg,
        "0/3 nodes are available: 1 node(s) had untolerated taint {dedicated: infra}, 2 node(s) didn't match Pod's node affinity/selector."
    );
    let tolerated = format!(
        "{pin2}  tolerations:\n  - key: dedicated\n    operator: Equal\n    value: infra\n    effect: NoSchedule\n"
    );
    kubectl.ok(
        &["create", "-f", "-"],
        Some(&pod_yaml("tolerated", "100m", &tolerated)),
    );
    assert_eq!(bound(&pods, "tolerated").await, "fake-node-2");

    // Host ports: two nodes are free for 8080/TCP (fake-node-2 is tainted), the third pod
    // wanting it has nowhere to go.
    let hp = |name: &str| {
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\nspec:\n  containers:\n  - name: c\n    image: registry.invalid/lb:1\n    ports:\n    - containerPort: 8080\n      hostPort: 8080\n"
        )
    };
    kubectl.ok(&["create", "-f", "-"], Some(&hp("hp-a")));
    let a = bound(&pods, "hp-a").await;
    kubectl.ok(&["create", "-f", "-"], Some(&hp("hp-b")));
    let b = bound(&pods, "hp-b").await;
    assert_ne!(a, b, "the same hostPort never lands twice on one node");
    kubectl.ok(&["create", "-f", "-"], Some(&hp("hp-c")));
    let msg = eventually("FailedScheduling of hp-c", DEADLINE, || {
        event(&client, "hp-c", "FailedScheduling")
    })
    .await;
    assert_eq!(
        msg,
        "0/3 nodes are available: 1 node(s) had untolerated taint {dedicated: infra}, 2 node(s) didn't have free ports for the requested pod ports."
    );
    // Deleting hp-a frees its port: hp-c is retried (AssignedPodDelete) and takes it.
    kubectl.ok(&["delete", "pod", "hp-a", "--wait=false"], None);
    assert_eq!(bound(&pods, "hp-c").await, a);
}

fn taint_keys(n: &Node) -> Vec<String> {
    n.spec
        .as_ref()
        .and_then(|s| s.taints.as_ref())
        .map(|t| {
            t.iter()
                .map(|t| format!("{}:{}", t.key, t.effect))
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_node_goes_unknown_its_pods_are_evicted_and_recovery_clears_the_taint() {
    let server = ServerProcess::start_with(&[
        "--node-monitor-grace-period",
        "2s",
        "--pod-eviction-timeout",
        "3s",
    ]);
    let (client, fake) = setup(&server, "4").await;
    let Some(kubectl) = SchedKubectl::new(&server.kubeconfig) else {
        return;
    };
    let pin0 = "  nodeSelector:\n    kubernetes.io/hostname: fake-node-0\n";
    kubectl.ok(
        &["create", "-f", "-"],
        Some(&pod_yaml("victim", "100m", pin0)),
    );
    let forever = format!(
        "{pin0}  tolerations:\n  - key: node.kubernetes.io/unreachable\n    operator: Exists\n    effect: NoExecute\n"
    );
    kubectl.ok(
        &["create", "-f", "-"],
        Some(&pod_yaml("survivor", "100m", &forever)),
    );
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    for name in ["victim", "survivor"] {
        eventually(&format!("{name} running"), DEADLINE, || async {
            let p = pods.get(name).await.ok()?;
            (p.status?.phase.as_deref() == Some("Running")).then_some(())
        })
        .await;
    }
    let nodes: Api<Node> = Api::all(client.clone());
    // Healthy nodes stay healthy across several grace periods (leases every 500 ms).
    tokio::time::sleep(Duration::from_millis(2500)).await;
    for n in nodes.list(&ListParams::default()).await.unwrap().items {
        assert!(
            taint_keys(&n).is_empty(),
            "{} tainted while healthy: {:?}",
            n.name_any(),
            taint_keys(&n)
        );
    }

    fake.silence("fake-node-0");
    let silenced = Instant::now();
    let node = eventually(
        "fake-node-0 Ready=Unknown and unreachable",
        DEADLINE,
        || async {
            let n = nodes.get("fake-node-0").await.ok()?;
            let ready = n
                .status
                .as_ref()?
                .conditions
                .as_ref()?
                .iter()
                .find(|c| c.type_ == "Ready")?
                .clone();
            (ready.status == "Unknown"
                && taint_keys(&n).contains(&"node.kubernetes.io/unreachable:NoExecute".to_string()))
            .then_some((n, ready))
        },
    )
    .await;
    let (n, ready) = node;
    assert!(
        silenced.elapsed() >= Duration::from_millis(1500),
        "not before the grace period"
    );
    assert_eq!(ready.reason.as_deref(), Some("NodeStatusUnknown"));
    assert_eq!(
        ready.message.as_deref(),
        Some("Kubelet stopped posting node status.")
    );
    assert!(taint_keys(&n).contains(&"node.kubernetes.io/unreachable:NoSchedule".to_string()));
    // When the controller tainted the node (server time, second resolution).
    let time_added = n
        .spec
        .as_ref()
        .and_then(|s| s.taints.as_ref())
        .and_then(|ts| {
            ts.iter()
                .find(|t| t.key == "node.kubernetes.io/unreachable" && t.effect == "NoExecute")
        })
        .and_then(|t| t.time_added.clone())
        .expect("the NoExecute taint has a timeAdded")
        .0;

    // The victim is deleted once the eviction timeout has passed; the survivor stays.
    let victim = eventually("victim marked for deletion", DEADLINE, || async {
        match pods.get_opt("victim").await {
            Ok(Some(p)) if p.metadata.deletion_timestamp.is_some() => Some(p),
            _ => None,
        }
    })
    .await;
    // The eviction moment is the deletionTimestamp minus the grace period (both set by
    // the server at the DELETE): not before timeAdded + 3 s, minus 1 s for the second
    // resolution of both timestamps. Measured on server time, so machine load cannot
    // make it flaky.
    let deleted_at = victim.metadata.deletion_timestamp.clone().unwrap().0;
    let grace = victim.metadata.deletion_grace_period_seconds.unwrap_or(0);
    let evicted_after = deleted_at.as_second() - grace - time_added.as_second();
    assert!(
        evicted_after >= 2,
        "evicted {evicted_after} s after the taint was added, before the 3 s timeout"
    );
    let msg = eventually("TaintManagerEviction event", DEADLINE, || {
        event(&client, "victim", "TaintManagerEviction")
    })
    .await;
    assert_eq!(msg, "Marking for deletion Pod default/victim");
    let s = pods.get("survivor").await.unwrap();
    assert!(
        s.metadata.deletion_timestamp.is_none(),
        "a pod tolerating unreachable forever stays"
    );
    // New pods avoid the unreachable node.
    kubectl.ok(
        &["create", "-f", "-"],
        Some(&pod_yaml("newcomer", "100m", "")),
    );
    assert_ne!(bound(&pods, "newcomer").await, "fake-node-0");

    // Recovery: heartbeats resume, Ready=True is posted, the taints go, and the kubelet
    // finalises the victim's deletion.
    fake.resume("fake-node-0");
    eventually(
        "fake-node-0 Ready=True without taints",
        DEADLINE,
        || async {
            let n = nodes.get("fake-node-0").await.ok()?;
            let ready = n
                .status
                .as_ref()?
                .conditions
                .as_ref()?
                .iter()
                .any(|c| c.type_ == "Ready" && c.status == "True");
            (ready && taint_keys(&n).is_empty()).then_some(())
        },
    )
    .await;
    eventually("victim gone", DEADLINE, || async {
        matches!(pods.get_opt("victim").await, Ok(None)).then_some(())
    })
    .await;
    // The node takes pods again.
    kubectl.ok(
        &["create", "-f", "-"],
        Some(&pod_yaml("back", "100m", pin0)),
    );
    assert_eq!(bound(&pods, "back").await, "fake-node-0");
}

/// `server --disable-scheduler` leaves pods pending; `scheduler --kubeconfig` runs the
/// same scheduler as its own process.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_scheduler_subcommand_runs_alone() {
    let server = ServerProcess::start_with(&["--disable-scheduler"]);
    let (client, _fake) = setup(&server, "4").await;
    assert!(
        server
            .log()
            .contains("scheduler disabled (--disable-scheduler)"),
        "{}",
        server.log()
    );
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let p: Pod = serde_json::from_str(
        &serde_json::to_string(&serde_json::json!({
            "metadata": {"name": "solo"},
            "spec": {"containers": [{"name": "c", "image": "registry.invalid/x:1"}]},
        }))
        .unwrap(),
    )
    .unwrap();
    pods.create(&Default::default(), &p).await.unwrap();
    let log = std::fs::File::create(server.dir.path().join("scheduler.log")).unwrap();
    let mut sched = std::process::Command::new(env!("CARGO_BIN_EXE_skiff-controlplane"))
        .arg("scheduler")
        .arg("--kubeconfig")
        .arg(&server.kubeconfig)
        .stderr(log)
        .spawn()
        .expect("spawning skiff-controlplane scheduler");
    let node = bound(&pods, "solo").await;
    let _ = sched.kill();
    let _ = sched.wait();
    assert!(node.starts_with("fake-node-"), "{node}");
}
