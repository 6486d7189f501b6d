//! Node identities against a real `skiff-controlplane` process: an agent trades the join
//! token for a `system:node:<name>` credential (`POST /skiff/v1/join`, after pinning the
//! CA from `/cacerts` against the token's hash), and that credential may do what an agent
//! needs and nothing else (upstream's Node authorizer + NodeRestriction).

mod support;

use k8s_openapi::api::{
    apps::v1::Deployment,
    coordination::v1::Lease,
    core::v1::{ConfigMap, Node, Pod, Secret, Service},
};
use kube::{
    api::{DeleteParams, ListParams, Patch, PatchParams, PostParams},
    Api, Client,
};
use serde_json::json;
use sha2::Digest as _;
use support::ServerProcess;

fn obj<T: serde::de::DeserializeOwned>(v: serde_json::Value) -> T {
    serde_json::from_value(v).unwrap()
}

fn code(e: kube::Error) -> (u16, String) {
    match e {
        kube::Error::Api(s) => (s.code, s.message),
        other => panic!("expected an API error, got {other}"),
    }
}

/// A client for `url` that trusts `ca_pem` and sends `token` (or nothing).
fn raw_client(url: &str, ca_pem: &str, token: Option<&str>) -> Client {
    let mut cfg = kube::Config::new(url.parse().unwrap());
    cfg.root_cert = Some(vec![rustls_der(ca_pem)]);
    if let Some(t) = token {
        cfg.auth_info.token = Some(t.to_string().into());
    }
    Client::try_from(cfg).unwrap()
}

fn rustls_der(pem: &str) -> Vec<u8> {
    use base64::Engine as _;
    let b64: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    base64::engine::general_purpose::STANDARD
        .decode(b64)
        .unwrap()
}

async fn join(client: &Client, node: &str) -> Result<String, kube::Error> {
    let req = http::Request::post("/skiff/v1/join")
        .header("content-type", "application/json")
        .body(serde_json::to_vec(&json!({"nodeName": node})).unwrap())
        .unwrap();
    client.request_text(req).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_joined_node_may_do_what_an_agent_needs_and_nothing_else() {
    let server = ServerProcess::start_with(&["--disable-controllers"]);
    let admin = support::kube_client(&server.kubeconfig).await;
    support::wait_ready(&admin).await;
    let token = std::fs::read_to_string(server.data_dir().join("pki/join.token")).unwrap();
    let token = token.trim();

    // The CA from /cacerts (unauthenticated) matches the hash in the token.
    let ca_file = std::fs::read_to_string(server.data_dir().join("pki/ca.crt")).unwrap();
    let anon = raw_client(&server.url, &ca_file, None);
    let ca = anon
        .request_text(http::Request::get("/cacerts").body(Vec::new()).unwrap())
        .await
        .unwrap();
    let hash: String = sha2::Sha256::digest(ca.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert!(token.starts_with(&format!("K10{hash}::node:")), "{token}");

    // A wrong token is a 401; a bad node name a 400.
    let wrong = raw_client(&server.url, &ca, Some("K10abc::node:not-the-secret"));
    assert_eq!(code(join(&wrong, "n1").await.unwrap_err()).0, 401);
    let joiner = raw_client(&server.url, &ca, Some(token));
    let (c, msg) = code(join(&joiner, "Bad_Name").await.unwrap_err());
    assert_eq!(c, 400, "{msg}");
    let kubeconfig = join(&joiner, "n1").await.unwrap();
    let path = server.dir.path().join("n1.kubeconfig");
    std::fs::write(&path, &kubeconfig).unwrap();
    let node = support::kube_client(&path).await;

    // Its own Node: create, status; another Node: 403 with upstream's wording.
    let nodes: Api<Node> = Api::all(node.clone());
    nodes
        .create(
            &PostParams::default(),
            &obj(json!({"metadata": {"name": "n1"}})),
        )
        .await
        .unwrap();
    nodes
        .patch_status(
            "n1",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"conditions": [{"type": "Ready", "status": "True"}]}})),
        )
        .await
        .unwrap();
    let (c, msg) = code(
        nodes
            .create(
                &PostParams::default(),
                &obj(json!({"metadata": {"name": "n2"}})),
            )
            .await
            .unwrap_err(),
    );
    assert_eq!(c, 403);
    assert!(
        msg.contains("User \"system:node:n1\" cannot create resource \"nodes\" in API group \"\" at the cluster scope"),
        "{msg}"
    );
    Api::<Node>::all(admin.clone())
        .create(
            &PostParams::default(),
            &obj(json!({"metadata": {"name": "n2"}})),
        )
        .await
        .unwrap();
    assert_eq!(
        code(
            nodes
                .delete("n2", &DeleteParams::default())
                .await
                .unwrap_err()
        )
        .0,
        403
    );
    assert_eq!(
        code(
            nodes
                .delete("n1", &DeleteParams::default())
                .await
                .unwrap_err()
        )
        .0,
        403
    );

    // Its own Lease only.
    let leases: Api<Lease> = Api::namespaced(node.clone(), "kube-node-lease");
    leases
        .create(
            &PostParams::default(),
            &obj(json!({"metadata": {"name": "n1"}, "spec": {"holderIdentity": "n1"}})),
        )
        .await
        .unwrap();
    assert_eq!(
        code(
            leases
                .create(
                    &PostParams::default(),
                    &obj(json!({"metadata": {"name": "n2"}}))
                )
                .await
                .unwrap_err()
        )
        .0,
        403
    );

    // Reads an agent needs.
    Api::<Service>::all(node.clone())
        .list(&ListParams::default())
        .await
        .unwrap();
    Api::<Pod>::all(node.clone())
        .list(&ListParams::default())
        .await
        .unwrap();
    assert_eq!(
        code(
            Api::<Secret>::all(node.clone())
                .list(&ListParams::default())
                .await
                .unwrap_err()
        )
        .0,
        403
    );
    assert_eq!(
        code(
            Api::<Deployment>::all(node.clone())
                .list(&ListParams::default())
                .await
                .unwrap_err()
        )
        .0,
        403
    );

    // Pods: status and deletion only for pods bound to it; Secrets/ConfigMaps only those
    // such a pod references.
    let admin_pods: Api<Pod> = Api::namespaced(admin.clone(), "default");
    let pod = |name: &str, on: &str| -> Pod {
        obj(
            json!({"metadata": {"name": name}, "spec": {"nodeName": on, "containers": [{"name": "c", "image": "skiff.local/host",
            "env": [{"name": "S", "valueFrom": {"secretKeyRef": {"name": format!("{name}-secret"), "key": "k"}}}],
            "envFrom": [{"configMapRef": {"name": format!("{name}-cm")}}]}]}}),
        )
    };
    admin_pods
        .create(&PostParams::default(), &pod("mine", "n1"))
        .await
        .unwrap();
    admin_pods
        .create(&PostParams::default(), &pod("theirs", "n2"))
        .await
        .unwrap();
    for owner in ["mine", "theirs"] {
        Api::<Secret>::namespaced(admin.clone(), "default")
            .create(&PostParams::default(), &obj(json!({"metadata": {"name": format!("{owner}-secret")}, "stringData": {"k": "v"}})))
            .await
            .unwrap();
        Api::<ConfigMap>::namespaced(admin.clone(), "default")
            .create(
                &PostParams::default(),
                &obj(json!({"metadata": {"name": format!("{owner}-cm")}, "data": {"k": "v"}})),
            )
            .await
            .unwrap();
    }
    let secrets: Api<Secret> = Api::namespaced(node.clone(), "default");
    let cms: Api<ConfigMap> = Api::namespaced(node.clone(), "default");
    secrets.get("mine-secret").await.unwrap();
    cms.get("mine-cm").await.unwrap();
    let (c, msg) = code(secrets.get("theirs-secret").await.unwrap_err());
    assert_eq!(c, 403);
    assert!(
        msg.contains("no relationship found between node \"n1\" and this object"),
        "{msg}"
    );
    assert_eq!(code(cms.get("theirs-cm").await.unwrap_err()).0, 403);

    let pods: Api<Pod> = Api::namespaced(node.clone(), "default");
    let running = Patch::Merge(json!({"status": {"phase": "Running"}}));
    pods.patch_status("mine", &PatchParams::default(), &running)
        .await
        .unwrap();
    assert_eq!(
        code(
            pods.patch_status("theirs", &PatchParams::default(), &running)
                .await
                .unwrap_err()
        )
        .0,
        403
    );
    // Not the spec, even of its own pods, and no new pods.
    assert_eq!(
        code(
            pods.patch(
                "mine",
                &PatchParams::default(),
                &Patch::Merge(json!({"metadata": {"labels": {"x": "y"}}}))
            )
            .await
            .unwrap_err()
        )
        .0,
        403
    );
    assert_eq!(
        code(
            pods.create(&PostParams::default(), &pod("new", "n1"))
                .await
                .unwrap_err()
        )
        .0,
        403
    );
    assert_eq!(
        code(
            pods.delete("theirs", &DeleteParams::default())
                .await
                .unwrap_err()
        )
        .0,
        403
    );
    pods.delete("mine", &DeleteParams::default().grace_period(0))
        .await
        .unwrap();

    // The admin is unaffected.
    admin_pods
        .delete("theirs", &DeleteParams::default().grace_period(0))
        .await
        .unwrap();
}
