//! The agent against a real API server: skiff-controlplane runs as a process on loopback,
//! the agent's service sync (kube-rs watchers → translate → reconcile) programs a real
//! datapath, and a client process in a test namespace + cgroup talks to the Service's
//! ClusterIP. Objects are written with kube-rs, as any controller would.

use std::{
    net::{Ipv4Addr, SocketAddrV4, TcpListener},
    path::Path,
    time::{Duration, Instant},
};

use k8s_openapi::api::{core::v1::Service, discovery::v1::EndpointSlice};
use kube::{
    api::{DeleteParams, Patch, PatchParams, PostParams},
    Api,
};
use skiff_agent::{
    datapath::Datapath,
    reconcile::Reconciler,
    translate::NodeContext,
    watch::{self, SyncConfig},
};
use skiff_tests::{
    apiserver::{self, ApiServer},
    cgroup::{Cgroup, LineChild},
    netns::NetNs,
    privilege::require_privileges,
};

fn slice(name: &str, ips: &[Ipv4Addr]) -> EndpointSlice {
    serde_json::from_value(serde_json::json!({
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {"name": name, "namespace": "default", "labels": {"kubernetes.io/service-name": "web"}},
        "addressType": "IPv4",
        "endpoints": ips.iter().map(|ip| serde_json::json!({"addresses": [ip.to_string()], "conditions": {"ready": true}})).collect::<Vec<_>>(),
        "ports": [{"port": 8080, "protocol": "TCP"}]
    }))
    .unwrap()
}

/// Polls `ask` until `check` accepts its answer, or fails after `timeout`.
fn eventually(
    client: &mut LineChild,
    cmd: &str,
    timeout: Duration,
    check: impl Fn(&str) -> bool,
) -> String {
    let deadline = Instant::now() + timeout;
    loop {
        let answer = client.ask(cmd);
        if check(&answer) {
            return answer;
        }
        assert!(
            Instant::now() < deadline,
            "`{cmd}` still answers `{answer}` after {timeout:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn services_written_to_the_api_are_programmed_and_survive_an_api_server_restart() {
    require_privileges();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut api = ApiServer::start("agentapi", &[]);
    let kubeconfig = api.kubeconfig();
    let kube = rt.block_on(apiserver::client(&kubeconfig));

    // Backends on loopback of a test namespace; skiff's socket LB for its cgroup.
    let ns = NetNs::new("agentapi");
    let backends = [Ipv4Addr::new(198, 18, 1, 1), Ipv4Addr::new(198, 18, 1, 2)];
    for b in backends {
        ns.ip(&["addr", "add", &format!("{b}/32"), "dev", "lo"]);
        let l = ns
            .run(|| TcpListener::bind(SocketAddrV4::new(b, 8080)))
            .unwrap();
        std::thread::spawn(move || {
            for mut c in l.incoming().flatten() {
                let _ = std::io::Write::write_all(&mut c, format!("{b}\n").as_bytes());
            }
        });
    }
    let cgroup = Cgroup::new("agentapi");
    let mut datapath = Datapath::load().unwrap();
    datapath.attach_sock_lb(cgroup.path()).unwrap();
    let mut maps = datapath.service_maps().unwrap();

    // The agent: its own thread and runtime, like the skiff-agent binary.
    let agent_kubeconfig = kubeconfig.clone();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let client = apiserver::client(&agent_kubeconfig).await;
            let config = SyncConfig {
                node: NodeContext {
                    node_name: "node-a".into(),
                    node_addresses: vec![],
                    ..Default::default()
                },
                external_ip_cidrs: vec![],
                ..Default::default()
            };
            let hooks = watch::Hooks {
                on_sync: |_: &watch::Synced| {},
                on_error: |_: &str| {},
                tick: Duration::from_secs(5),
                on_tick: |_: &mut skiff_agent::datapath::BpfServiceMaps| {},
                on_pending: || {},
            };
            watch::run(
                client,
                config,
                &mut maps,
                &mut Reconciler::new(),
                None,
                hooks,
            )
            .await;
        });
        drop(datapath);
    });

    // A Service and its EndpointSlice, written through the API.
    let services: Api<Service> = Api::namespaced(kube.clone(), "default");
    let svc: Service = serde_json::from_value(serde_json::json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "web", "namespace": "default"},
        "spec": {"ports": [{"port": 80, "targetPort": 8080}]}
    }))
    .unwrap();
    let svc = rt
        .block_on(services.create(&PostParams::default(), &svc))
        .unwrap();
    let vip: Ipv4Addr = svc.spec.unwrap().cluster_ip.unwrap().parse().unwrap();
    let slices: Api<EndpointSlice> = Api::namespaced(kube.clone(), "default");
    rt.block_on(slices.create(&PostParams::default(), &slice("web-1", &backends)))
        .unwrap();

    let mut client = LineChild::spawn(
        Path::new(env!("CARGO_BIN_EXE_skiff-test-client")),
        &[],
        &ns,
        &cgroup,
    );
    let cmd = format!("tcp {vip}:80");
    let answer = eventually(&mut client, &cmd, Duration::from_secs(10), |a| {
        a.starts_with("ok")
    });
    assert!(answer.contains(&format!("peer={vip}:80")), "{answer}");

    // One endpoint goes: traffic follows the API.
    let only_second = slice("web-1", &backends[1..]);
    let patch = PatchParams::apply("skiff-test").force();
    rt.block_on(slices.patch("web-1", &patch, &Patch::Apply(&only_second)))
        .unwrap();
    // A single answer from the second backend proves nothing (it was a candidate all
    // along): wait for 20 in a row, which random choice over two backends gives with
    // probability 1e-6.
    let want = format!("reply={}", backends[1]);
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut streak = 0;
    while streak < 20 {
        let a = client.ask(&cmd);
        streak = if a.ends_with(&want) { streak + 1 } else { 0 };
        assert!(
            Instant::now() < deadline,
            "traffic never settled on {}: {a}",
            backends[1]
        );
    }

    // The API server goes away: nothing is deleted, traffic goes on.
    api.stop();
    for _ in 0..10 {
        let a = client.ask(&cmd);
        assert!(a.starts_with("ok"), "with the API server down: {a}");
    }
    // It comes back (same data); the agent's watchers relist and keep following it.
    api.restart();
    let kube = rt.block_on(apiserver::client(&kubeconfig));
    let services: Api<Service> = Api::namespaced(kube, "default");
    rt.block_on(services.delete("web", &DeleteParams::default()))
        .unwrap();
    // Without the frontend the ClusterIP is just an address with no route in this
    // namespace: connect() fails locally (no packet leaves).
    eventually(&mut client, &cmd, Duration::from_secs(20), |a| {
        a.starts_with("err") && !a.contains(" 111 ")
    });
}
