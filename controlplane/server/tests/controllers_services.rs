//! The service-facing controllers (EndpointSlice/Endpoints, LoadBalancer IPs, node IPAM)
//! and namespace deletion, against a real `skiff-controlplane` process with kubectl and
//! kube-rs. Pods are bound directly (`spec.nodeName`; no scheduler involved) and their
//! status is written the way a kubelet would.

mod support;

use std::future::Future;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use futures::{StreamExt as _, TryStreamExt as _};
use k8s_openapi::api::core::v1::{ConfigMap, Endpoints, Event, Namespace, Node, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Api, Client, ResourceExt as _};
use serde_json::json;
use support::ServerProcess;

const DEADLINE: Duration = Duration::from_secs(45);
const MANAGED_BY: &str = "endpointslice.kubernetes.io/managed-by";

/// Polls `f` until it returns Some, failing with the server log after [`DEADLINE`].
async fn eventually<T, F, Fut>(what: &str, server: &ServerProcess, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + DEADLINE;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        if Instant::now() > deadline {
            let log = server.log();
            let tail: Vec<&str> = log.lines().rev().take(60).collect();
            panic!(
                "{what}: not within {DEADLINE:?}; server log (last lines):\n{}",
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn start(args: &[&str]) -> (ServerProcess, Client) {
    let server = ServerProcess::start_in_with(tempfile::tempdir().expect("temp dir"), args);
    let client = support::kube_client(&server.kubeconfig).await;
    support::wait_ready(&client).await;
    (server, client)
}

/// kubectl (the 1.33 one, else the PATH dispatcher) with its own HOME.
struct Kubectl {
    bin: PathBuf,
    home: tempfile::TempDir,
    kubeconfig: PathBuf,
}

impl Kubectl {
    fn new(server: &ServerProcess) -> Option<Kubectl> {
        let bin = support::kubectl("1.33").or_else(|| {
            let d = support::kubectl_dir()?;
            Some(d.join("kubectl")).filter(|p| p.is_file())
        });
        let Some(bin) = bin else {
            support::skip_or_fail("kubectl is not installed");
            return None;
        };
        Some(Kubectl {
            bin,
            home: tempfile::tempdir().unwrap(),
            kubeconfig: server.kubeconfig.clone(),
        })
    }

    fn run(&self, args: &[&str]) -> std::process::Output {
        Command::new(&self.bin)
            .env("HOME", self.home.path())
            .env_remove("KUBECONFIG")
            .arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .args(args)
            .output()
            .expect("running kubectl")
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "kubectl {args:?} failed:\nstdout: {}\nstderr: {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn apply(&self, manifest: &str) -> String {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("manifest.yaml");
        std::fs::write(&path, manifest).unwrap();
        self.ok(&["apply", "-f", path.to_str().unwrap()])
    }
}

/// Writes a running pod's status as a kubelet would: phase, IP, Ready condition.
async fn set_pod_status(pods: &Api<Pod>, name: &str, ip: &str, ready: bool) {
    let now = k8s_openapi::jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string();
    let status = if ready { "True" } else { "False" };
    pods.patch_status(
        name,
        &PatchParams::default(),
        &Patch::Merge(json!({"status": {
            "phase": "Running",
            "podIP": ip,
            "podIPs": [{"ip": ip}],
            "conditions": [
                {"type": "Ready", "status": status, "lastTransitionTime": now},
                {"type": "ContainersReady", "status": status, "lastTransitionTime": now},
            ],
        }})),
    )
    .await
    .unwrap_or_else(|e| panic!("patching the status of pod {name}: {e}"));
}

async fn create_node(
    nodes: &Api<Node>,
    name: &str,
    labels: serde_json::Value,
    addresses: serde_json::Value,
) {
    let node: Node = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": name, "labels": labels},
    }))
    .unwrap();
    nodes
        .create(&PostParams::default(), &node)
        .await
        .unwrap_or_else(|e| panic!("creating node {name}: {e}"));
    if !addresses.is_null() {
        nodes
            .patch_status(
                name,
                &PatchParams::default(),
                &Patch::Merge(json!({"status": {"addresses": addresses}})),
            )
            .await
            .unwrap_or_else(|e| panic!("setting node {name}'s addresses: {e}"));
    }
}

async fn managed_slices(api: &Api<EndpointSlice>, svc: &str) -> Vec<EndpointSlice> {
    api.list(&ListParams::default().labels(&format!(
        "kubernetes.io/service-name={svc},{MANAGED_BY}=endpointslice-controller.k8s.io"
    )))
    .await
    .expect("listing EndpointSlices")
    .items
}

/// (pod name, ready, serving, terminating) of every endpoint, sorted.
fn endpoint_states(slices: &[EndpointSlice]) -> Vec<(String, bool, bool, bool)> {
    let mut v: Vec<_> = slices
        .iter()
        .flat_map(|s| &s.endpoints)
        .map(|e| {
            let c = e.conditions.clone().unwrap_or_default();
            (
                e.target_ref
                    .as_ref()
                    .and_then(|r| r.name.clone())
                    .unwrap_or_default(),
                c.ready.unwrap_or(false),
                c.serving.unwrap_or(false),
                c.terminating.unwrap_or(false),
            )
        })
        .collect();
    v.sort();
    v
}

fn endpoints_ips(ep: &Endpoints) -> (Vec<String>, Vec<String>) {
    let mut ready = Vec::new();
    let mut not = Vec::new();
    for s in ep.subsets.iter().flatten() {
        ready.extend(s.addresses.iter().flatten().map(|a| a.ip.clone()));
        not.extend(s.not_ready_addresses.iter().flatten().map(|a| a.ip.clone()));
    }
    ready.sort();
    not.sort();
    (ready, not)
}

const WEB: &str = r#"
apiVersion: v1
kind: Service
metadata:
  name: web
  namespace: default
  labels: {tier: frontend}
spec:
  selector: {app: web}
  ports:
  - {name: http, port: 80, targetPort: http}
---
apiVersion: v1
kind: Pod
metadata: {name: web-a, namespace: default, labels: {app: web}}
spec:
  nodeName: n1
  containers:
  - name: c
    image: example.invalid/web
    ports: [{name: http, containerPort: 8080}]
---
apiVersion: v1
kind: Pod
metadata: {name: web-b, namespace: default, labels: {app: web}}
spec:
  nodeName: n1
  hostname: b
  subdomain: web
  containers:
  - name: c
    image: example.invalid/web
    ports: [{name: http, containerPort: 9090}]
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoints_follow_pod_readiness_termination_and_deletion() {
    let (server, client) = start(&[]).await;
    let Some(kubectl) = Kubectl::new(&server) else {
        return;
    };
    let nodes: Api<Node> = Api::all(client.clone());
    create_node(
        &nodes,
        "n1",
        json!({"topology.kubernetes.io/zone": "zone-a"}),
        json!(null),
    )
    .await;
    // A selector-less Service with a slice written by someone else (an agent, a test):
    // the controller must leave it alone.
    let svcs: Api<Service> = Api::default_namespaced(client.clone());
    let slices: Api<EndpointSlice> = Api::default_namespaced(client.clone());
    let manual: Service = serde_json::from_value(json!({
        "metadata": {"name": "manual"},
        "spec": {"ports": [{"port": 80}]},
    }))
    .unwrap();
    svcs.create(&PostParams::default(), &manual).await.unwrap();
    let manual_slice: EndpointSlice = serde_json::from_value(json!({
        "metadata": {"name": "manual-1", "labels": {"kubernetes.io/service-name": "manual"}},
        "addressType": "IPv4",
        "endpoints": [{"addresses": ["10.99.0.1"]}],
        "ports": [{"port": 80, "protocol": "TCP"}],
    }))
    .unwrap();
    let manual_slice = slices
        .create(&PostParams::default(), &manual_slice)
        .await
        .unwrap();

    kubectl.apply(WEB);
    let pods: Api<Pod> = Api::default_namespaced(client.clone());
    let eps: Api<Endpoints> = Api::default_namespaced(client.clone());

    // Before any pod runs: one empty placeholder slice and an empty Endpoints.
    let placeholder = eventually("the placeholder slice", &server, || async {
        let s = managed_slices(&slices, "web").await;
        (s.len() == 1 && s[0].endpoints.is_empty()).then(|| s[0].clone())
    })
    .await;
    let owner = &placeholder.owner_references()[0];
    let svc = svcs.get("web").await.unwrap();
    assert_eq!(
        (owner.kind.as_str(), owner.name.as_str(), owner.uid.as_str()),
        ("Service", "web", svc.uid().unwrap().as_str())
    );
    assert_eq!(owner.controller, Some(true));
    assert_eq!(owner.block_owner_deletion, Some(true));
    assert_eq!(placeholder.address_type, "IPv4");
    assert!(placeholder.name_any().starts_with("web-"));
    assert_eq!(
        placeholder.labels().get("tier").map(String::as_str),
        Some("frontend")
    );

    set_pod_status(&pods, "web-a", "10.42.0.11", true).await;
    set_pod_status(&pods, "web-b", "10.42.0.12", true).await;

    // Two pods resolving `http` to different numbers: two slices.
    let got = eventually("two ready endpoints in two slices", &server, || async {
        let s = managed_slices(&slices, "web").await;
        (endpoint_states(&s)
            == vec![
                ("web-a".to_string(), true, true, false),
                ("web-b".to_string(), true, true, false),
            ]
            && s.len() == 2)
            .then_some(s)
    })
    .await;
    let mut ports: Vec<(i32, Vec<String>)> = got
        .iter()
        .map(|s| {
            let p = &s.ports.as_ref().unwrap()[0];
            assert_eq!(p.name.as_deref(), Some("http"));
            assert_eq!(p.protocol.as_deref(), Some("TCP"));
            (
                p.port.unwrap(),
                s.endpoints.iter().map(|e| e.addresses[0].clone()).collect(),
            )
        })
        .collect();
    ports.sort();
    assert_eq!(
        ports,
        vec![
            (8080, vec!["10.42.0.11".to_string()]),
            (9090, vec!["10.42.0.12".to_string()])
        ]
    );
    let b = got
        .iter()
        .flat_map(|s| &s.endpoints)
        .find(|e| e.addresses[0] == "10.42.0.12")
        .unwrap();
    assert_eq!(b.node_name.as_deref(), Some("n1"));
    assert_eq!(b.zone.as_deref(), Some("zone-a"));
    assert_eq!(b.hostname.as_deref(), Some("b"));
    let pod_b = pods.get("web-b").await.unwrap();
    let target = b.target_ref.as_ref().unwrap();
    assert_eq!(target.kind.as_deref(), Some("Pod"));
    assert_eq!(target.uid, pod_b.uid());
    for s in &got {
        let t = s
            .annotations()
            .get("endpoints.kubernetes.io/last-change-trigger-time")
            .expect("trigger time annotation");
        assert!(t.parse::<k8s_openapi::jiff::Timestamp>().is_ok(), "{t}");
    }
    // kubectl shows them.
    let listed = kubectl.ok(&[
        "get",
        "endpointslices",
        "-l",
        "kubernetes.io/service-name=web",
    ]);
    assert!(
        listed.contains("10.42.0.11") && listed.contains("9090"),
        "{listed}"
    );

    let ep = eventually("Endpoints with both addresses", &server, || async {
        let ep = eps.get_opt("web").await.unwrap()?;
        (endpoints_ips(&ep).0 == vec!["10.42.0.11", "10.42.0.12"]).then_some(ep)
    })
    .await;
    assert_eq!(
        ep.labels().get("tier").map(String::as_str),
        Some("frontend")
    );

    // web-b turns not ready.
    set_pod_status(&pods, "web-b", "10.42.0.12", false).await;
    eventually("web-b not ready", &server, || async {
        let s = managed_slices(&slices, "web").await;
        (endpoint_states(&s)
            == vec![
                ("web-a".to_string(), true, true, false),
                ("web-b".to_string(), false, false, false),
            ])
        .then_some(())
    })
    .await;
    eventually("web-b in notReadyAddresses", &server, || async {
        let ep = eps.get_opt("web").await.unwrap()?;
        (endpoints_ips(&ep) == (vec!["10.42.0.11".into()], vec!["10.42.0.12".into()])).then_some(())
    })
    .await;

    // web-a is deleted: a bound pod terminates first (deletionTimestamp), staying in the
    // slice as serving + terminating, not ready; the Endpoints drop it.
    pods.delete("web-a", &DeleteParams::default())
        .await
        .unwrap();
    eventually("web-a terminating", &server, || async {
        let s = managed_slices(&slices, "web").await;
        (endpoint_states(&s)
            == vec![
                ("web-a".to_string(), false, true, true),
                ("web-b".to_string(), false, false, false),
            ])
        .then_some(())
    })
    .await;
    eventually("web-a out of the Endpoints", &server, || async {
        let ep = eps.get_opt("web").await.unwrap()?;
        (endpoints_ips(&ep) == (vec![], vec!["10.42.0.12".into()])).then_some(())
    })
    .await;
    // Gone for good.
    pods.delete("web-a", &DeleteParams::default().grace_period(0))
        .await
        .unwrap();
    eventually("web-a gone from the slices", &server, || async {
        let s = managed_slices(&slices, "web").await;
        (endpoint_states(&s) == vec![("web-b".to_string(), false, false, false)] && s.len() == 1)
            .then_some(())
    })
    .await;

    // The selector-less Service's slice is untouched, and it got no managed slice.
    let still = slices.get("manual-1").await.unwrap();
    assert_eq!(still.resource_version(), manual_slice.resource_version());
    assert!(managed_slices(&slices, "manual").await.is_empty());
    // Nor is the API server's own default/kubernetes slice taken over.
    assert!(managed_slices(&slices, "kubernetes").await.is_empty());

    // The Service loses its selector: its managed slices go (its Endpoints stay, now
    // the user's, as upstream's endpoints controller leaves selector-less Services').
    let sel_gone = svcs
        .patch(
            "web",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"selector": null}})),
        )
        .await
        .unwrap();
    assert!(sel_gone.spec.unwrap().selector.is_none());
    eventually(
        "managed slices removed with the selector",
        &server,
        || async {
            managed_slices(&slices, "web")
                .await
                .is_empty()
                .then_some(())
        },
    )
    .await;
    assert!(eps.get_opt("web").await.unwrap().is_some());

    // The Service is deleted: its slices and Endpoints go.
    svcs.delete("web", &DeleteParams::default()).await.unwrap();
    eventually(
        "slices and Endpoints removed with the Service",
        &server,
        || async {
            (managed_slices(&slices, "web").await.is_empty()
                && eps.get_opt("web").await.unwrap().is_none())
            .then_some(())
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_fifty_pods_make_three_slices() {
    let (server, client) = start(&[]).await;
    let svcs: Api<Service> = Api::default_namespaced(client.clone());
    let pods: Api<Pod> = Api::default_namespaced(client.clone());
    let slices: Api<EndpointSlice> = Api::default_namespaced(client.clone());
    let svc: Service = serde_json::from_value(json!({
        "metadata": {"name": "big"},
        "spec": {"selector": {"app": "big"}, "ports": [{"port": 80, "targetPort": 8080}]},
    }))
    .unwrap();
    svcs.create(&PostParams::default(), &svc).await.unwrap();
    futures::stream::iter(0..250)
        .map(|i| {
            let pods = pods.clone();
            async move {
                let name = format!("big-{i:03}");
                let pod: Pod = serde_json::from_value(json!({
                    "metadata": {"name": name, "labels": {"app": "big"}},
                    "spec": {"nodeName": "n1", "containers": [{"name": "c", "image": "x"}]},
                }))
                .unwrap();
                pods.create(&PostParams::default(), &pod).await?;
                set_pod_status(
                    &pods,
                    &name,
                    &format!("10.42.{}.{}", i / 200, i % 200 + 1),
                    true,
                )
                .await;
                Ok::<_, kube::Error>(())
            }
        })
        .buffer_unordered(8)
        .try_collect::<Vec<_>>()
        .await
        .expect("creating 250 pods");
    let sizes = eventually("250 endpoints in 3 slices", &server, || async {
        let s = managed_slices(&slices, "big").await;
        let mut sizes: Vec<usize> = s.iter().map(|s| s.endpoints.len()).collect();
        sizes.sort();
        let ready = endpoint_states(&s).iter().filter(|e| e.1).count();
        (sizes.iter().sum::<usize>() == 250 && ready == 250).then_some(sizes)
    })
    .await;
    assert_eq!(sizes.len(), 3, "{sizes:?}");
    assert!(sizes.iter().all(|n| *n <= 100), "{sizes:?}");
    let eps: Api<Endpoints> = Api::default_namespaced(client.clone());
    eventually("Endpoints with 250 addresses", &server, || async {
        let ep = eps.get_opt("big").await.unwrap()?;
        (endpoints_ips(&ep).0.len() == 250).then_some(())
    })
    .await;

    // One pod turns not ready: exactly one slice is rewritten.
    let versions = |s: &[EndpointSlice]| -> Vec<(String, String)> {
        let mut v: Vec<_> = s
            .iter()
            .map(|s| (s.name_any(), s.resource_version().unwrap_or_default()))
            .collect();
        v.sort();
        v
    };
    let before = versions(&managed_slices(&slices, "big").await);
    set_pod_status(&pods, "big-123", "10.42.0.124", false).await;
    let after = eventually("big-123 not ready", &server, || async {
        let s = managed_slices(&slices, "big").await;
        endpoint_states(&s)
            .iter()
            .any(|e| e.0 == "big-123" && !e.1)
            .then(|| versions(&s))
    })
    .await;
    let changed: Vec<_> = before.iter().zip(&after).filter(|(b, a)| b != a).collect();
    assert_eq!(before.len(), after.len());
    assert_eq!(changed.len(), 1, "before {before:?}, after {after:?}");

    // After a restart the controller resyncs everything and writes nothing: the slices
    // and the Endpoints keep their resourceVersions. (A Service created after the restart
    // gets its slice once the resync queued before it has been worked through.)
    eventually("the Endpoints show big-123 not ready", &server, || async {
        let ep = eps.get_opt("big").await.unwrap()?;
        (endpoints_ips(&ep).1 == vec!["10.42.0.124".to_string()]).then_some(())
    })
    .await;
    let ep_version = eps.get("big").await.unwrap().resource_version();
    let dir = server.stop();
    let server = ServerProcess::start_in_with(dir, &[]);
    let client = support::kube_client(&server.kubeconfig).await;
    support::wait_ready(&client).await;
    let svcs: Api<Service> = Api::default_namespaced(client.clone());
    let slices: Api<EndpointSlice> = Api::default_namespaced(client.clone());
    let eps: Api<Endpoints> = Api::default_namespaced(client.clone());
    let probe: Service = serde_json::from_value(json!({
        "metadata": {"name": "probe"},
        "spec": {"selector": {"app": "probe"}, "ports": [{"port": 80}]},
    }))
    .unwrap();
    svcs.create(&PostParams::default(), &probe).await.unwrap();
    eventually("the probe Service's slice", &server, || async {
        (!managed_slices(&slices, "probe").await.is_empty()).then_some(())
    })
    .await;
    assert_eq!(versions(&managed_slices(&slices, "big").await), after);
    assert_eq!(eps.get("big").await.unwrap().resource_version(), ep_version);
}

async fn lb_ips(svcs: &Api<Service>, name: &str) -> Vec<String> {
    let svc = svcs.get(name).await.unwrap();
    let mut v: Vec<String> = svc
        .status
        .and_then(|s| s.load_balancer)
        .and_then(|l| l.ingress)
        .into_iter()
        .flatten()
        .filter_map(|i| i.ip)
        .collect();
    v.sort();
    v
}

fn lb_service(name: &str, annotations: serde_json::Value) -> Service {
    serde_json::from_value(json!({
        "metadata": {"name": name, "annotations": annotations},
        "spec": {"type": "LoadBalancer", "selector": {"app": name}, "ports": [{"port": 80}]},
    }))
    .unwrap()
}

async fn events_for(client: &Client, name: &str) -> Vec<Event> {
    let api: Api<Event> = Api::default_namespaced(client.clone());
    api.list(&ListParams::default().fields(&format!("involvedObject.name={name}")))
        .await
        .expect("listing events")
        .items
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lb_pool_assigns_honours_requests_and_reports_exhaustion() {
    let (server, client) = start(&["--lb-pool", "192.0.2.10-192.0.2.11"]).await;
    let Some(kubectl) = Kubectl::new(&server) else {
        return;
    };
    let svcs: Api<Service> = Api::default_namespaced(client.clone());
    svcs.create(&PostParams::default(), &lb_service("lb-a", json!({})))
        .await
        .unwrap();
    let a = eventually("lb-a gets a pool IP", &server, || async {
        let ips = lb_ips(&svcs, "lb-a").await;
        (!ips.is_empty()).then_some(ips)
    })
    .await;
    assert_eq!(a, vec!["192.0.2.10"]);
    // A request for an address outside the pool stays pending, with the reason.
    svcs.create(
        &PostParams::default(),
        &lb_service(
            "lb-out",
            json!({"skiff.io/load-balancer-ips": "198.51.100.7"}),
        ),
    )
    .await
    .unwrap();
    // A request inside the pool and free is honoured.
    svcs.create(
        &PostParams::default(),
        &lb_service("lb-b", json!({"skiff.io/load-balancer-ips": "192.0.2.11"})),
    )
    .await
    .unwrap();
    eventually("lb-b gets its requested IP", &server, || async {
        (lb_ips(&svcs, "lb-b").await == vec!["192.0.2.11"]).then_some(())
    })
    .await;
    let ev = eventually("an AllocationFailed event for lb-out", &server, || async {
        events_for(&client, "lb-out")
            .await
            .into_iter()
            .find(|e| e.reason.as_deref() == Some("AllocationFailed"))
    })
    .await;
    assert_eq!(ev.type_.as_deref(), Some("Warning"));
    assert!(
        ev.message
            .as_deref()
            .unwrap_or_default()
            .contains("not in the LoadBalancer pool"),
        "{ev:?}"
    );
    assert!(lb_ips(&svcs, "lb-out").await.is_empty());

    // The pool is exhausted: the next Service is pending, with a Warning Event.
    svcs.create(&PostParams::default(), &lb_service("lb-c", json!({})))
        .await
        .unwrap();
    eventually("an AllocationFailed event for lb-c", &server, || async {
        events_for(&client, "lb-c")
            .await
            .into_iter()
            .find(|e| e.reason.as_deref() == Some("AllocationFailed"))
    })
    .await;
    let shown = kubectl.ok(&[
        "get",
        "events",
        "--field-selector",
        "involvedObject.name=lb-c",
        "-o",
        "jsonpath={range .items[*]}{.type} {.reason} {.message}{\"\\n\"}{end}",
    ]);
    assert!(
        shown.contains("Warning AllocationFailed no free IP in the LoadBalancer pool"),
        "{shown}"
    );
    assert!(lb_ips(&svcs, "lb-c").await.is_empty());
    let ok = events_for(&client, "lb-a").await;
    assert!(
        ok.iter()
            .any(|e| e.reason.as_deref() == Some("IPAllocated")
                && e.type_.as_deref() == Some("Normal")),
        "{ok:?}"
    );

    // lb-a goes: its IP goes to the waiting lb-c.
    svcs.delete("lb-a", &DeleteParams::default()).await.unwrap();
    eventually("lb-c gets the freed IP", &server, || async {
        (lb_ips(&svcs, "lb-c").await == vec!["192.0.2.10"]).then_some(())
    })
    .await;

    // lb-b stops being a LoadBalancer: its status is cleared. (The patch clears
    // externalTrafficPolicy and uses another port number itself: skiff's API server does
    // not yet drop type-dependent fields on a type change as upstream's
    // `dropTypeDependentFields`, and carries the old nodePort over to a port of the same
    // number even when the new type has none.)
    svcs.patch(
        "lb-b",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {
            "type": "ClusterIP",
            "externalTrafficPolicy": null,
            "ports": [{"port": 81, "protocol": "TCP", "targetPort": 80}],
        }})),
    )
    .await
    .expect("changing the type to ClusterIP");
    eventually("lb-b's status cleared", &server, || async {
        lb_ips(&svcs, "lb-b").await.is_empty().then_some(())
    })
    .await;
    // The allocations are in the statuses only: a restart keeps them.
    let dir = server.stop();
    let server = ServerProcess::start_in_with(dir, &["--lb-pool", "192.0.2.10-192.0.2.11"]);
    let client = support::kube_client(&server.kubeconfig).await;
    support::wait_ready(&client).await;
    let svcs: Api<Service> = Api::default_namespaced(client.clone());
    svcs.create(&PostParams::default(), &lb_service("lb-d", json!({})))
        .await
        .unwrap();
    eventually("lb-d gets the IP lb-b released", &server, || async {
        (lb_ips(&svcs, "lb-d").await == vec!["192.0.2.11"]).then_some(())
    })
    .await;
    assert_eq!(lb_ips(&svcs, "lb-c").await, vec!["192.0.2.10"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lb_without_pool_publishes_node_addresses() {
    let (server, client) = start(&[]).await;
    let nodes: Api<Node> = Api::all(client.clone());
    create_node(
        &nodes,
        "n1",
        json!({}),
        json!([
            {"type": "InternalIP", "address": "10.0.0.5"},
            {"type": "ExternalIP", "address": "203.0.113.5"},
            {"type": "Hostname", "address": "n1"},
        ]),
    )
    .await;
    let svcs: Api<Service> = Api::default_namespaced(client.clone());
    svcs.create(&PostParams::default(), &lb_service("lb", json!({})))
        .await
        .unwrap();
    eventually("the node's addresses published", &server, || async {
        (lb_ips(&svcs, "lb").await == vec!["10.0.0.5", "203.0.113.5"]).then_some(())
    })
    .await;
    // A second node joins: its address is published too.
    create_node(
        &nodes,
        "n2",
        json!({}),
        json!([{"type": "InternalIP", "address": "10.0.0.6"}]),
    )
    .await;
    eventually("the new node's address published", &server, || async {
        (lb_ips(&svcs, "lb").await == vec!["10.0.0.5", "10.0.0.6", "203.0.113.5"]).then_some(())
    })
    .await;
}

fn pod_cidr(n: &Node) -> Option<(String, Vec<String>)> {
    let spec = n.spec.as_ref()?;
    Some((
        spec.pod_cidr.clone()?,
        spec.pod_cidrs.clone().unwrap_or_default(),
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_ipam_assigns_distinct_blocks_stable_across_restarts() {
    let (server, client) = start(&["--cluster-cidr", "10.42.0.0/22"]).await;
    let nodes: Api<Node> = Api::all(client.clone());
    // A node that comes with its block keeps it, and nobody else gets it.
    let preset: Node = serde_json::from_value(json!({
        "metadata": {"name": "preset"},
        "spec": {"podCIDR": "10.42.1.0/24", "podCIDRs": ["10.42.1.0/24"]},
    }))
    .unwrap();
    nodes.create(&PostParams::default(), &preset).await.unwrap();
    for n in ["a", "b"] {
        create_node(&nodes, n, json!({}), json!(null)).await;
    }
    let first = eventually("podCIDRs for a and b", &server, || async {
        let a = pod_cidr(&nodes.get("a").await.unwrap())?;
        let b = pod_cidr(&nodes.get("b").await.unwrap())?;
        Some((a, b))
    })
    .await;
    let (a, b) = first.clone();
    assert_eq!(a.1, vec![a.0.clone()], "podCIDRs mirrors podCIDR");
    let mut got = vec![a.0.clone(), b.0.clone()];
    got.sort();
    assert_eq!(got, vec!["10.42.0.0/24", "10.42.2.0/24"]);
    assert_eq!(
        pod_cidr(&nodes.get("preset").await.unwrap()).unwrap().0,
        "10.42.1.0/24"
    );

    // Restart: nothing moves; a new node gets the last free block.
    let dir = server.stop();
    let server = ServerProcess::start_in_with(dir, &["--cluster-cidr", "10.42.0.0/22"]);
    let client = support::kube_client(&server.kubeconfig).await;
    support::wait_ready(&client).await;
    let nodes: Api<Node> = Api::all(client.clone());
    create_node(&nodes, "c", json!({}), json!(null)).await;
    let c = eventually("a podCIDR for c", &server, || async {
        pod_cidr(&nodes.get("c").await.unwrap())
    })
    .await;
    assert_eq!(c.0, "10.42.3.0/24");
    assert_eq!(pod_cidr(&nodes.get("a").await.unwrap()).unwrap(), first.0);
    assert_eq!(pod_cidr(&nodes.get("b").await.unwrap()).unwrap(), first.1);

    // Exhausted: the next node waits, with a Warning Event.
    create_node(&nodes, "d", json!({}), json!(null)).await;
    let ev = eventually("CIDRNotAvailable for d", &server, || async {
        events_for(&client, "d")
            .await
            .into_iter()
            .find(|e| e.reason.as_deref() == Some("CIDRNotAvailable"))
    })
    .await;
    assert_eq!(ev.type_.as_deref(), Some("Warning"));
    assert!(pod_cidr(&nodes.get("d").await.unwrap()).is_none());
    // A node leaves: d gets its block.
    nodes.delete("b", &DeleteParams::default()).await.unwrap();
    let d = eventually("d gets b's block", &server, || async {
        pod_cidr(&nodes.get("d").await.unwrap())
    })
    .await;
    assert_eq!(d.0, first.1 .0);
}

const NS_CONTENT: &str = r#"
apiVersion: apps/v1
kind: Deployment
metadata: {name: app, namespace: doomed}
spec:
  replicas: 1
  selector: {matchLabels: {app: app}}
  template:
    metadata: {labels: {app: app}}
    spec:
      containers: [{name: c, image: example.invalid/app}]
---
apiVersion: v1
kind: Service
metadata: {name: app, namespace: doomed}
spec:
  selector: {app: app}
  ports: [{port: 80}]
---
apiVersion: v1
kind: ConfigMap
metadata: {name: settings, namespace: doomed}
data: {a: "1"}
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_namespace_deletes_its_contents() {
    let (server, client) = start(&[]).await;
    let Some(kubectl) = Kubectl::new(&server) else {
        return;
    };
    kubectl.apply("apiVersion: v1\nkind: Namespace\nmetadata: {name: doomed}\n");
    kubectl.apply(NS_CONTENT);
    let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), "doomed");
    // The controller has seen the Service (its placeholder slice exists).
    eventually("the Service's slice", &server, || async {
        (!managed_slices(&slices, "app").await.is_empty()).then_some(())
    })
    .await;
    kubectl.ok(&["delete", "namespace", "doomed"]);
    let ns: Api<Namespace> = Api::all(client.clone());
    eventually("the namespace gone", &server, || async {
        ns.get_opt("doomed").await.unwrap().is_none().then_some(())
    })
    .await;
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "doomed");
    let svcs: Api<Service> = Api::namespaced(client.clone(), "doomed");
    let eps: Api<Endpoints> = Api::namespaced(client.clone(), "doomed");
    let deploys: Api<k8s_openapi::api::apps::v1::Deployment> =
        Api::namespaced(client.clone(), "doomed");
    eventually("everything in it gone", &server, || async {
        let empty = deploys
            .list(&ListParams::default())
            .await
            .ok()?
            .items
            .is_empty()
            && svcs
                .list(&ListParams::default())
                .await
                .ok()?
                .items
                .is_empty()
            && cms
                .list(&ListParams::default())
                .await
                .ok()?
                .items
                .is_empty()
            && eps
                .list(&ListParams::default())
                .await
                .ok()?
                .items
                .is_empty()
            && slices
                .list(&ListParams::default())
                .await
                .ok()?
                .items
                .is_empty();
        empty.then_some(())
    })
    .await;
    let out = kubectl.run(&["get", "deploy,svc,cm", "-n", "doomed", "-o", "name"]);
    let listed = String::from_utf8_lossy(&out.stdout);
    assert!(listed.trim().is_empty(), "still listed: {listed}");
}

/// A `skiff-controlplane controllers` process; killed on drop.
struct ControllersProcess(std::process::Child);

impl Drop for ControllersProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standalone_controllers_process_takes_the_same_flags() {
    let (server, client) = start(&["--disable-controllers"]).await;
    let log = std::fs::File::create(server.dir.path().join("controllers.log")).unwrap();
    let _controllers = ControllersProcess(
        Command::new(env!("CARGO_BIN_EXE_skiff-controlplane"))
            .arg("controllers")
            .arg("--kubeconfig")
            .arg(&server.kubeconfig)
            .args([
                "--lb-pool",
                "192.0.2.50/32",
                "--max-endpoints-per-slice",
                "2",
            ])
            .stdout(std::process::Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawning skiff-controlplane controllers"),
    );
    let svcs: Api<Service> = Api::default_namespaced(client.clone());
    let pods: Api<Pod> = Api::default_namespaced(client.clone());
    let slices: Api<EndpointSlice> = Api::default_namespaced(client.clone());
    svcs.create(&PostParams::default(), &lb_service("lb", json!({})))
        .await
        .unwrap();
    for i in 0..3 {
        let name = format!("lb-{i}");
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": name, "labels": {"app": "lb"}},
            "spec": {"nodeName": "n1", "containers": [{"name": "c", "image": "x"}]},
        }))
        .unwrap();
        pods.create(&PostParams::default(), &pod).await.unwrap();
        set_pod_status(&pods, &name, &format!("10.42.0.{}", 20 + i), true).await;
    }
    let controllers_log =
        || std::fs::read_to_string(server.dir.path().join("controllers.log")).unwrap_or_default();
    let deadline = Instant::now() + DEADLINE;
    loop {
        let ips = lb_ips(&svcs, "lb").await;
        let mut sizes: Vec<usize> = managed_slices(&slices, "lb")
            .await
            .iter()
            .map(|s| s.endpoints.len())
            .collect();
        sizes.sort();
        if ips == vec!["192.0.2.50"] && sizes == vec![1, 2] {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "ips {ips:?}, slice sizes {sizes:?}; controllers log:\n{}",
            controllers_log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[test]
fn bad_controller_flags_fail_before_anything_starts() {
    for (args, want) in [
        (
            vec!["--max-endpoints-per-slice", "1001"],
            "1001 is not in 1..=1000",
        ),
        (
            vec!["--lb-pool", "192.0.2.9-192.0.2.1"],
            "the range starts after it ends",
        ),
        (
            vec![
                "--cluster-cidr",
                "10.42.0.0/16",
                "--node-cidr-mask-size",
                "12",
            ],
            "shorter than --cluster-cidr 10.42.0.0/16's prefix",
        ),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let out = Command::new(env!("CARGO_BIN_EXE_skiff-controlplane"))
            .args(["server", "--data-dir"])
            .arg(dir.path().join("data"))
            .args(["--listen", "127.0.0.1:0"])
            .args(&args)
            .output()
            .expect("running skiff-controlplane");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} was accepted");
        assert!(err.contains(want), "{args:?}: {err}");
        assert!(
            !dir.path().join("data/admin.kubeconfig").exists(),
            "{args:?}: the server started before rejecting the flags"
        );
    }
}

/// The controller skips the watch echoes of its own slice and Endpoints writes (upstream's
/// `EndpointSliceTracker.ShouldSync`), but not anyone else's: a managed slice emptied or
/// deleted by someone, or an Endpoints object overwritten, is put back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn foreign_edits_of_managed_objects_are_reverted() {
    let (server, client) = start(&[]).await;
    let svcs: Api<Service> = Api::default_namespaced(client.clone());
    let pods: Api<Pod> = Api::default_namespaced(client.clone());
    let slices: Api<EndpointSlice> = Api::default_namespaced(client.clone());
    let eps: Api<Endpoints> = Api::default_namespaced(client.clone());
    let svc: Service = serde_json::from_value(json!({
        "metadata": {"name": "owned"},
        "spec": {"selector": {"app": "owned"}, "ports": [{"port": 80, "targetPort": 8080}]},
    }))
    .unwrap();
    svcs.create(&PostParams::default(), &svc).await.unwrap();
    for i in 1..=2 {
        let name = format!("owned-{i}");
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": name, "labels": {"app": "owned"}},
            "spec": {"nodeName": "n1", "containers": [{"name": "c", "image": "x"}]},
        }))
        .unwrap();
        pods.create(&PostParams::default(), &pod).await.unwrap();
        set_pod_status(&pods, &name, &format!("10.42.0.{i}"), true).await;
    }
    let two_ready = || async {
        let s = managed_slices(&slices, "owned").await;
        let ready = endpoint_states(&s).iter().filter(|e| e.1).count();
        (s.len() == 1 && ready == 2).then(|| s[0].clone())
    };
    let slice = eventually("2 ready endpoints", &server, two_ready).await;

    // Someone empties the slice (a generation bump the controller did not write).
    let mut emptied = slice.clone();
    emptied.endpoints.clear();
    slices
        .replace(&slice.name_any(), &PostParams::default(), &emptied)
        .await
        .unwrap();
    let restored = eventually("the emptied slice refilled", &server, two_ready).await;
    assert!(
        restored.metadata.generation > emptied.metadata.generation,
        "rewritten by the controller"
    );

    // Someone deletes it: a new one is created.
    slices
        .delete(&restored.name_any(), &Default::default())
        .await
        .unwrap();
    let recreated = eventually("the deleted slice recreated", &server, two_ready).await;
    assert_ne!(recreated.metadata.uid, restored.metadata.uid);

    // Someone overwrites the Endpoints: the two addresses come back.
    let ep = eventually("Endpoints with 2 addresses", &server, || async {
        let ep = eps.get_opt("owned").await.unwrap()?;
        (endpoints_ips(&ep).0.len() == 2).then_some(ep)
    })
    .await;
    let mut overwritten = ep.clone();
    overwritten.subsets = None;
    eps.replace("owned", &PostParams::default(), &overwritten)
        .await
        .unwrap();
    eventually("the Endpoints restored", &server, || async {
        let now = eps.get_opt("owned").await.unwrap()?;
        (now.metadata.resource_version != ep.metadata.resource_version
            && endpoints_ips(&now).0.len() == 2)
            .then_some(())
    })
    .await;
}

// cpbench: work-queue metrics on the admin /metrics
/// The series `name` of a Prometheus text, as a number.
fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))?
        .trim()
        .parse()
        .ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpointslice_work_queue_metrics_are_served_on_the_admin_metrics() {
    let (server, client) = start(&[]).await;
    let read = || async {
        let req = http::Request::get("/metrics").body(Vec::new()).unwrap();
        client
            .request_text(req)
            .await
            .expect("GET /metrics as admin")
    };
    let svcs: Api<Service> = Api::default_namespaced(client.clone());
    let svc: Service = serde_json::from_value(json!({
        "metadata": {"name": "metrics-web"},
        "spec": {"selector": {"app": "metrics-web"}, "ports": [{"port": 80}]},
    }))
    .unwrap();
    svcs.create(&PostParams::default(), &svc).await.unwrap();
    let slices: Api<EndpointSlice> = Api::default_namespaced(client.clone());
    eventually("the Service's placeholder slice", &server, || async {
        (!managed_slices(&slices, "metrics-web").await.is_empty()).then_some(())
    })
    .await;
    // The sync that wrote it went through the queue: added, taken, done; then idle.
    let q = |m: &str| format!("{m}{{name=\"endpointslice\"}}");
    let text = eventually("an idle endpointslice queue", &server, || async {
        let text = read().await;
        (metric(&text, &q("workqueue_depth")) == Some(0.0)
            && metric(&text, &q("skiff_workqueue_processing")) == Some(0.0))
        .then_some(text)
    })
    .await;
    assert!(
        metric(&text, &q("workqueue_adds_total")).unwrap() >= 1.0,
        "{text}"
    );
    assert!(
        metric(&text, &q("workqueue_work_duration_seconds_count")).unwrap() >= 1.0,
        "{text}"
    );
    assert!(
        metric(&text, &q("workqueue_queue_duration_seconds_count")).unwrap() >= 1.0,
        "{text}"
    );
    assert!(
        metric(&text, "skiff_endpointslice_deferred_syncs_total").is_some(),
        "{text}"
    );
    // The watch cache's own metrics are still there.
    assert!(text.contains("skiff_watch_cache_history_bytes"), "{text}");
}
// end cpbench
