//! `skiff-agent join` against a real API server: the agent pins the CA named by the join
//! token, trades the token for a `system:node:<name>` kubeconfig, and that credential is
//! the node's (its own Node yes, another's no). A token naming another CA is refused
//! before the secret is sent; a wrong secret is a 401.

use k8s_openapi::api::core::v1::Node;
use kube::{api::PostParams, Api};
use skiff_tests::apiserver::{self, ApiServer};

fn node(name: &str) -> Node {
    serde_json::from_value(serde_json::json!({"metadata": {"name": name}})).unwrap()
}

#[tokio::test]
async fn join_pins_the_ca_and_yields_a_node_credential() {
    let server = ApiServer::start("join", &["--disable-controllers"]);
    let _admin = server.client().await;
    let token = std::fs::read_to_string(server.dir.join("pki/join.token")).unwrap();

    let kc = skiff_agent::join::join(&server.url(), &token, "n1")
        .await
        .unwrap();
    let path = server.dir.join("n1.kubeconfig");
    skiff_agent::join::write_kubeconfig(&path, &kc).unwrap();
    use std::os::unix::fs::PermissionsExt as _;
    assert_eq!(
        std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let as_node = apiserver::client(&path).await;
    // The agent's own heartbeat works with nothing more than this credential: it
    // registers its Node, posts status and renews its Lease.
    let mut hb = skiff_agent::node::NodeAgent::new(
        as_node.clone(),
        skiff_agent::node::NodeConfig::new("n1", vec![std::net::Ipv4Addr::new(198, 18, 0, 1)]),
        skiff_agent::node::HostInfo::gather(std::path::Path::new("/")).unwrap(),
    );
    let beat = hb.tick().await;
    assert!(beat.errors.is_empty(), "{:?}", beat.errors);
    assert!(beat.lease_renewed && beat.status_posted, "{beat:?}");
    let nodes: Api<Node> = Api::all(as_node);
    let n1 = nodes.get("n1").await.unwrap();
    assert!(n1
        .status
        .unwrap()
        .conditions
        .unwrap()
        .iter()
        .any(|c| c.type_ == "Ready" && c.status == "True"));
    match nodes.create(&PostParams::default(), &node("n2")).await {
        Err(kube::Error::Api(s)) => assert_eq!(s.code, 403, "{}", s.message),
        other => panic!("a node created another node: {other:?}"),
    }

    // A token for another cluster's CA: refused before anything is sent.
    let (_, secret) = skiff_agent::join::parse_token(&token).unwrap();
    let other = format!("K10{}::node:{secret}", "0".repeat(64));
    let e = skiff_agent::join::join(&server.url(), &other, "n3")
        .await
        .unwrap_err();
    assert!(
        format!("{e:#}").contains("is not the one the join token names"),
        "{e:#}"
    );
    // The right CA but a wrong secret: the server says 401.
    let hash = token
        .trim()
        .strip_prefix("K10")
        .unwrap()
        .split("::")
        .next()
        .unwrap()
        .to_string();
    let wrong = format!("K10{hash}::node:not-it");
    let e = skiff_agent::join::join(&server.url(), &wrong, "n3")
        .await
        .unwrap_err();
    assert!(
        format!("{e:#}").contains("401") || format!("{e:#}").contains("join token"),
        "{e:#}"
    );
}
