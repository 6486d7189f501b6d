//! Service address allocation and deletion propagation in a real `skiff-controlplane`
//! process: ClusterIP / NodePort / healthCheckNodePort reservations (conflicts are 422s
//! naming the field, ranges come from the flags, deletes free values, a restart keeps
//! them, concurrent creates never share one), and the finalizers DELETE adds for
//! Foreground and Orphan propagation.

mod support;

use std::collections::HashSet;
use std::process::Command;

use k8s_openapi::api::core::v1::{ConfigMap, Service};
use kube::{
    api::{DeleteParams, PostParams, PropagationPolicy},
    Api,
};
use serde_json::json;
use support::ServerProcess;

fn service(name: &str, spec: serde_json::Value) -> Service {
    serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": name},
        "spec": spec,
    }))
    .unwrap()
}

fn status_message(e: kube::Error) -> (u16, String) {
    match e {
        kube::Error::Api(s) => (s.code, s.message),
        other => panic!("expected an API error, got {other}"),
    }
}

const FLAGS: &[&str] = &[
    "--service-node-port-range",
    "31000-31009",
    "--disable-controllers",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_ips_node_ports_and_health_check_ports() {
    let server = ServerProcess::start_with(FLAGS);
    let client = support::kube_client(&server.kubeconfig).await;
    support::wait_ready(&client).await;
    let svcs: Api<Service> = Api::namespaced(client.clone(), "default");
    let pp = PostParams::default();

    // A requested ClusterIP is honoured once; the second request is a 422 naming the field.
    svcs.create(
        &pp,
        &service(
            "a",
            json!({"clusterIP": "10.43.0.50", "ports": [{"port": 80}]}),
        ),
    )
    .await
    .unwrap();
    let (code, msg) = status_message(
        svcs.create(
            &pp,
            &service(
                "b",
                json!({"clusterIP": "10.43.0.50", "ports": [{"port": 80}]}),
            ),
        )
        .await
        .unwrap_err(),
    );
    assert_eq!(code, 422);
    assert_eq!(
        msg,
        "Service \"b\" is invalid: spec.clusterIPs: Invalid value: [\"10.43.0.50\"]: failed to allocate IP 10.43.0.50: provided IP is already allocated"
    );

    // The same through kubectl: exit 1 and upstream's text.
    let manifest = server.dir.path().join("dup.yaml");
    std::fs::write(
        &manifest,
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: c\nspec:\n  clusterIP: 10.43.0.50\n  ports:\n  - port: 80\n",
    )
    .unwrap();
    if let Some(kubectl) = support::kubectl("1.33") {
        let home = tempfile::tempdir().unwrap();
        let out = Command::new(kubectl)
            .env("HOME", home.path())
            .arg("--kubeconfig")
            .arg(&server.kubeconfig)
            .args(["apply", "-f"])
            .arg(&manifest)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains("provided IP is already allocated"),
            "{stderr}"
        );
    } else {
        support::skip_or_fail("kubectl.1.33 not installed");
    }

    // Node ports come from --service-node-port-range.
    let (code, msg) = status_message(
        svcs.create(
            &pp,
            &service(
                "low",
                json!({"type": "NodePort", "ports": [{"port": 80, "nodePort": 30500}]}),
            ),
        )
        .await
        .unwrap_err(),
    );
    assert_eq!(code, 422);
    assert!(msg.contains("spec.ports[0].nodePort: Invalid value: 30500: provided port is not in the valid range. The range of valid ports is 31000-31009"), "{msg}");

    // Ten ports in the range: an LB with eTP=Local takes two (its node port and its
    // healthCheckNodePort), eight NodePort Services the rest.
    let lb = svcs
        .create(
            &pp,
            &service("lb", json!({"type": "LoadBalancer", "externalTrafficPolicy": "Local", "ports": [{"port": 80}]})),
        )
        .await
        .unwrap();
    let spec = lb.spec.unwrap();
    let hc = spec
        .health_check_node_port
        .expect("healthCheckNodePort allocated");
    let np = spec.ports.unwrap()[0].node_port.unwrap();
    assert!((31000..=31009).contains(&hc) && (31000..=31009).contains(&np) && hc != np);
    let mut ports = HashSet::from([hc, np]);
    for i in 0..8 {
        let s = svcs
            .create(
                &pp,
                &service(
                    &format!("np{i}"),
                    json!({"type": "NodePort", "ports": [{"port": 80}]}),
                ),
            )
            .await
            .unwrap();
        assert!(ports.insert(s.spec.unwrap().ports.unwrap()[0].node_port.unwrap()));
    }
    let (code, msg) = status_message(
        svcs.create(
            &pp,
            &service("full", json!({"type": "NodePort", "ports": [{"port": 80}]})),
        )
        .await
        .unwrap_err(),
    );
    assert_eq!(code, 500, "{msg}");
    assert!(msg.contains("range 31000-31009 is full"), "{msg}");
    // The rejected create left no ClusterIP reservation behind, and a delete frees its port.
    svcs.delete("np3", &DeleteParams::default()).await.unwrap();
    svcs.create(
        &pp,
        &service("full", json!({"type": "NodePort", "ports": [{"port": 80}]})),
    )
    .await
    .expect("the port np3 freed is allocatable again");

    // LoadBalancer -> ClusterIP by a patch that only sets the type (upstream's
    // dropTypeDependentFields): node ports, healthCheckNodePort and eTP go, and the freed
    // ports can be requested again at once.
    let patched = svcs
        .patch(
            "lb",
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(json!({"spec": {"type": "ClusterIP"}})),
        )
        .await
        .expect("a type change to ClusterIP drops the type's fields")
        .spec
        .unwrap();
    assert!(patched.health_check_node_port.is_none());
    assert!(patched.external_traffic_policy.is_none());
    assert!(patched.ports.unwrap()[0].node_port.is_none());
    for (i, port) in [np, hc].into_iter().enumerate() {
        svcs.create(
            &pp,
            &service(
                &format!("reuse{i}"),
                json!({"type": "NodePort", "ports": [{"port": 80, "nodePort": port}]}),
            ),
        )
        .await
        .unwrap_or_else(|e| panic!("port {port} was not released by the type change: {e}"));
        svcs.delete(&format!("reuse{i}"), &DeleteParams::default())
            .await
            .unwrap();
    }

    // Concurrent creates never share a ClusterIP.
    let creates = (0..20).map(|i| {
        let svcs = svcs.clone();
        async move {
            svcs.create(
                &PostParams::default(),
                &service(&format!("r{i}"), json!({"ports": [{"port": 80}]})),
            )
            .await
            .unwrap()
            .spec
            .unwrap()
            .cluster_ip
            .unwrap()
        }
    });
    let ips: Vec<String> = futures::future::join_all(creates).await;
    let distinct: HashSet<&String> = ips.iter().collect();
    assert_eq!(distinct.len(), ips.len(), "{ips:?}");

    // After a restart on the same data directory, reservations still hold.
    let before: HashSet<String> = svcs
        .list(&Default::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter_map(|s| s.spec.and_then(|s| s.cluster_ip))
        .collect();
    let dir = server.stop();
    let server = ServerProcess::start_in_with(dir, FLAGS);
    let client = support::kube_client(&server.kubeconfig).await;
    support::wait_ready(&client).await;
    let svcs: Api<Service> = Api::namespaced(client.clone(), "default");
    for i in 0..20 {
        let s = svcs
            .create(
                &pp,
                &service(&format!("after{i}"), json!({"ports": [{"port": 80}]})),
            )
            .await
            .unwrap();
        let ip = s.spec.unwrap().cluster_ip.unwrap();
        assert!(
            !before.contains(&ip),
            "{ip} was handed out again after a restart"
        );
    }
    let (code, _) = status_message(
        svcs.create(
            &pp,
            &service(
                "b",
                json!({"clusterIP": "10.43.0.50", "ports": [{"port": 80}]}),
            ),
        )
        .await
        .unwrap_err(),
    );
    assert_eq!(code, 422);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn foreground_and_orphan_deletes_leave_a_finalizer_for_the_garbage_collector() {
    let server = ServerProcess::start_with(FLAGS);
    let client = support::kube_client(&server.kubeconfig).await;
    support::wait_ready(&client).await;
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    for (name, policy, finalizer) in [
        ("fg", PropagationPolicy::Foreground, "foregroundDeletion"),
        ("orph", PropagationPolicy::Orphan, "orphan"),
    ] {
        let cm: ConfigMap =
            serde_json::from_value(json!({"metadata": {"name": name}, "data": {"k": "v"}}))
                .unwrap();
        cms.create(&PostParams::default(), &cm).await.unwrap();
        let dp = DeleteParams {
            propagation_policy: Some(policy),
            ..Default::default()
        };
        cms.delete(name, &dp).await.unwrap();
        let left = cms
            .get(name)
            .await
            .expect("kept until the collector is done");
        assert!(left.metadata.deletion_timestamp.is_some());
        assert_eq!(left.metadata.finalizers, Some(vec![finalizer.to_string()]));
    }
    // Background (kubectl's default) deletes at once.
    let cm: ConfigMap =
        serde_json::from_value(json!({"metadata": {"name": "bg"}, "data": {"k": "v"}})).unwrap();
    cms.create(&PostParams::default(), &cm).await.unwrap();
    cms.delete("bg", &DeleteParams::background()).await.unwrap();
    assert!(cms.get_opt("bg").await.unwrap().is_none());
}
