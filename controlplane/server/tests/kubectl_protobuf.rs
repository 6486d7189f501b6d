//! Protobuf against a `skiff-controlplane` process: kubectl's typed-client commands
//! (`create deployment`, `create configmap`, ...) whose request bodies are
//! `application/vnd.kubernetes.protobuf`, with the real kubectl 1.29 and 1.33; hand-built
//! bodies for PUT, the scale and binding subresources, DeleteOptions and the error answers;
//! and `/openapi/v2` as gnostic protobuf for kubectl 1.27 and 1.28 `apply`.

mod support;

use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::ServerProcess;

const PROTOBUF: &str = "application/vnd.kubernetes.protobuf";

fn start_server() -> ServerProcess {
    // No controllers: the stored objects are exactly what the API server made of the bodies.
    ServerProcess::start_with(&["--disable-controllers"])
}

struct Kubectl {
    bin: PathBuf,
    home: tempfile::TempDir,
    kubeconfig: PathBuf,
}

impl Kubectl {
    fn new(version: &str, server: &ServerProcess) -> Option<Kubectl> {
        let Some(bin) = support::kubectl(version) else {
            support::skip_or_fail(&format!(
                "kubectl.{version} not found next to the kubectl on PATH (install google-cloud-cli's kubectl)"
            ));
            return None;
        };
        let k = Kubectl {
            bin,
            home: tempfile::tempdir().unwrap(),
            kubeconfig: server.kubeconfig.clone(),
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while !k.run(&["get", "--raw", "/readyz"]).status.success() {
            assert!(
                Instant::now() < deadline,
                "server not ready: {}",
                server.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Some(k)
    }

    fn run(&self, args: &[&str]) -> Output {
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
            "kubectl {args:?} failed ({}):\nstdout: {}\nstderr: {}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn get(&self, args: &[&str]) -> Value {
        let mut a = vec!["get"];
        a.extend_from_slice(args);
        a.extend_from_slice(&["-o", "json"]);
        serde_json::from_str(&self.ok(&a)).expect("kubectl get -o json prints JSON")
    }
}

/// The typed-client commands that send protobuf, and what the server stored for each.
fn typed_client_commands(version: &str, sends_protobuf: bool) {
    let server = start_server();
    let Some(k) = Kubectl::new(version, &server) else {
        return;
    };
    // -v=8 logs the request headers. kubectl sends typed objects as protobuf from 1.32 on
    // (1.29-1.31 send JSON; the same commands must work for both).
    let out = k.run(&["create", "deployment", "web", "--image=nginx", "-v=8"]);
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "create deployment: {log}");
    let media = if sends_protobuf {
        PROTOBUF
    } else {
        "application/json"
    };
    let sent = format!("Content-Type: {media}");
    assert!(
        log.contains(&sent),
        "kubectl {version} did not send {sent}: {log}"
    );

    k.ok(&[
        "create",
        "deployment",
        "zero",
        "--image=nginx",
        "--replicas=0",
        "--port=8080",
    ]);
    k.ok(&[
        "create",
        "configmap",
        "cm1",
        "--from-literal=a=b",
        "--from-literal=key2=value2",
    ]);
    k.ok(&[
        "create",
        "secret",
        "generic",
        "s1",
        "--from-literal=password=hunter2",
    ]);
    k.ok(&["create", "namespace", "ns1"]);
    k.ok(&["create", "service", "clusterip", "svc1", "--tcp=80:8080"]);
    k.ok(&[
        "expose",
        "deployment",
        "web",
        "--port=80",
        "--target-port=8080",
    ]);
    k.ok(&["create", "serviceaccount", "sa1"]);
    k.ok(&["create", "job", "j1", "--image=busybox", "--", "echo", "hi"]);
    // A server-side dry run decodes, defaults and validates, and stores nothing.
    let dry = k.ok(&[
        "create",
        "deployment",
        "dry",
        "--image=nginx",
        "--dry-run=server",
        "-o",
        "json",
    ]);
    let dry: Value = serde_json::from_str(&dry).unwrap();
    assert_eq!(dry["spec"]["strategy"]["type"], "RollingUpdate", "{dry}");
    assert!(!k.run(&["get", "deployment", "dry"]).status.success());

    let names = k.ok(&["get", "deploy,cm,secret,svc,sa,job", "-o", "name"]);
    for n in [
        "deployment.apps/web",
        "deployment.apps/zero",
        "configmap/cm1",
        "secret/s1",
        "service/svc1",
        "service/web",
        "serviceaccount/sa1",
        "job.batch/j1",
    ] {
        assert!(names.lines().any(|l| l == n), "{n} missing from:\n{names}");
    }

    let d = k.get(&["deployment", "web", "--show-managed-fields"]);
    assert_eq!(d["spec"]["replicas"], 1);
    assert_eq!(
        d["spec"]["selector"],
        json!({"matchLabels": {"app": "web"}})
    );
    let c = &d["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(
        (c["name"].as_str(), c["image"].as_str()),
        (Some("nginx"), Some("nginx"))
    );
    // Defaulted by the JSON path the decoded body went through.
    assert_eq!(d["spec"]["strategy"]["rollingUpdate"]["maxSurge"], "25%");
    assert_eq!(c["terminationMessagePolicy"], "File");
    assert_eq!(
        d["metadata"]["managedFields"][0]["manager"],
        "kubectl-create"
    );

    let z = k.get(&["deployment", "zero"]);
    assert_eq!(z["spec"]["replicas"], 0, "a present zero survives: {z}");
    assert_eq!(
        z["spec"]["template"]["spec"]["containers"][0]["ports"],
        json!([{"containerPort": 8080, "protocol": "TCP"}])
    );

    let cm = k.get(&["configmap", "cm1"]);
    assert_eq!(cm["data"], json!({"a": "b", "key2": "value2"}));
    let s = k.get(&["secret", "s1"]);
    assert_eq!(s["data"], json!({"password": "aHVudGVyMg=="}));
    assert_eq!(s["type"], "Opaque");
    let ns = k.get(&["namespace", "ns1"]);
    assert_eq!(ns["status"]["phase"], "Active");

    let svc = k.get(&["service", "svc1"]);
    assert_eq!(
        svc["spec"]["ports"],
        json!([{"name": "80-8080", "port": 80, "protocol": "TCP", "targetPort": 8080}])
    );
    assert_eq!(svc["spec"]["selector"], json!({"app": "svc1"}));
    assert!(
        svc["spec"]["clusterIP"]
            .as_str()
            .is_some_and(|ip| ip.starts_with("10.")),
        "{svc}"
    );
    let web = k.get(&["service", "web"]);
    assert_eq!(web["spec"]["selector"], json!({"app": "web"}));
    assert_eq!(web["spec"]["ports"][0]["targetPort"], 8080);

    k.get(&["serviceaccount", "sa1"]);
    let j = k.get(&["job", "j1"]);
    let pod = &j["spec"]["template"]["spec"];
    assert_eq!(pod["containers"][0]["command"], json!(["echo", "hi"]));
    assert_eq!(pod["restartPolicy"], "Never");
    assert_eq!(j["spec"]["backoffLimit"], 6, "defaulted: {j}");
}

#[test]
fn kubectl_1_29_typed_client_commands() {
    typed_client_commands("1.29", false);
}

#[test]
fn kubectl_1_33_typed_client_commands() {
    typed_client_commands("1.33", true);
}

// ---- hand-built bodies -------------------------------------------------------------------

fn varint(mut v: u64, out: &mut Vec<u8>) {
    loop {
        let b = (v & 0x7f) as u8;
        v >>= 7;
        if v == 0 {
            out.push(b);
            return;
        }
        out.push(b | 0x80);
    }
}

fn len_field(tag: u64, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    varint(tag << 3 | 2, &mut out);
    varint(body.len() as u64, &mut out);
    out.extend_from_slice(body);
    out
}

fn int_field(tag: u64, v: u64) -> Vec<u8> {
    let mut out = Vec::new();
    varint(tag << 3, &mut out);
    varint(v, &mut out);
    out
}

/// `k8s\0` + runtime.Unknown{typeMeta, raw}.
fn envelope(api_version: &str, kind: &str, raw: &[u8]) -> Vec<u8> {
    let tm = [
        len_field(1, api_version.as_bytes()),
        len_field(2, kind.as_bytes()),
    ]
    .concat();
    [b"k8s\0".to_vec(), len_field(1, &tm), len_field(2, raw)].concat()
}

/// ObjectMeta{name} (tag 1 of every top-level kind).
fn meta(name: &str) -> Vec<u8> {
    len_field(1, &len_field(1, name.as_bytes()))
}

async fn send(
    client: &kube::Client,
    method: &str,
    path: &str,
    body: Vec<u8>,
) -> Result<Value, (u16, String)> {
    let req = http::Request::builder()
        .method(method)
        .uri(path)
        .header("Content-Type", PROTOBUF)
        .body(body)
        .unwrap();
    match client.request_text(req).await {
        Ok(t) => Ok(serde_json::from_str(&t).unwrap_or(Value::Null)),
        Err(kube::Error::Api(s)) => Err((s.code, s.message)),
        Err(e) => panic!("{method} {path}: {e}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn put_subresources_delete_options_and_errors() {
    let server = start_server();
    let client = support::kube_client(&server.kubeconfig).await;
    support::wait_ready(&client).await;
    let ns = "/api/v1/namespaces/default";

    // POST then PUT a ConfigMap (data: map<string, string>, tag 2).
    let cm = |v: &str| {
        let entry = [len_field(1, b"k"), len_field(2, v.as_bytes())].concat();
        envelope(
            "v1",
            "ConfigMap",
            &[meta("cm"), len_field(2, &entry)].concat(),
        )
    };
    let created = send(&client, "POST", &format!("{ns}/configmaps"), cm("one"))
        .await
        .unwrap();
    assert_eq!(created["data"], json!({"k": "one"}));
    let updated = send(&client, "PUT", &format!("{ns}/configmaps/cm"), cm("two"))
        .await
        .unwrap();
    assert_eq!(updated["data"], json!({"k": "two"}));

    // PUT deployments/x/scale with autoscaling/v1 Scale{spec: {replicas: 0}}.
    let deploy = json!({
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d"},
        "spec": {"replicas": 3, "selector": {"matchLabels": {"app": "d"}},
                 "template": {"metadata": {"labels": {"app": "d"}},
                              "spec": {"containers": [{"name": "c", "image": "nginx"}]}}},
    });
    let req = http::Request::post("/apis/apps/v1/namespaces/default/deployments")
        .header("Content-Type", "application/json")
        .body(serde_json::to_vec(&deploy).unwrap())
        .unwrap();
    client.request_text(req).await.unwrap();
    let scale = envelope(
        "autoscaling/v1",
        "Scale",
        &[meta("d"), len_field(2, &int_field(1, 0))].concat(),
    );
    let s = send(
        &client,
        "PUT",
        "/apis/apps/v1/namespaces/default/deployments/d/scale",
        scale,
    )
    .await
    .unwrap();
    // ScaleSpec.replicas is a Go value field: the decoded body omits the zero (as Go's JSON
    // does) and the scale subresource reads an absent replicas as 0.
    assert_eq!(s["spec"]["replicas"], 0, "{s}");
    let req = http::Request::get("/apis/apps/v1/namespaces/default/deployments/d")
        .body(Vec::new())
        .unwrap();
    let d: Value = serde_json::from_str(&client.request_text(req).await.unwrap()).unwrap();
    assert_eq!(d["spec"]["replicas"], 0);

    // POST pods/p/binding with Binding{target: ObjectReference{kind: Node, name: n1}}, as
    // kube-scheduler sends it.
    let pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"},
                     "spec": {"containers": [{"name": "c", "image": "nginx"}]}});
    let req = http::Request::post(format!("{ns}/pods"))
        .header("Content-Type", "application/json")
        .body(serde_json::to_vec(&pod).unwrap())
        .unwrap();
    client.request_text(req).await.unwrap();
    let target = [len_field(1, b"Node"), len_field(3, b"n1")].concat();
    let binding = envelope(
        "v1",
        "Binding",
        &[meta("p"), len_field(2, &target)].concat(),
    );
    send(&client, "POST", &format!("{ns}/pods/p/binding"), binding)
        .await
        .unwrap();
    let req = http::Request::get(format!("{ns}/pods/p"))
        .body(Vec::new())
        .unwrap();
    let p: Value = serde_json::from_str(&client.request_text(req).await.unwrap()).unwrap();
    assert_eq!(p["spec"]["nodeName"], "n1");

    // DELETE with protobuf DeleteOptions{gracePeriodSeconds: 0} removes the bound pod at once.
    let opts = envelope("v1", "DeleteOptions", &int_field(1, 0));
    send(&client, "DELETE", &format!("{ns}/pods/p"), opts)
        .await
        .unwrap();
    let req = http::Request::get(format!("{ns}/pods/p"))
        .body(Vec::new())
        .unwrap();
    match client.request_text(req).await {
        Err(kube::Error::Api(s)) => assert_eq!(s.code, 404),
        other => panic!("pod still there after a 0-grace delete: {other:?}"),
    }

    // Malformed: 400 with where and what; nothing stored.
    // (A data entry whose value claims 100 bytes and has 1.)
    let entry = [len_field(1, b"k"), vec![0x12, 100, b'v']].concat();
    let bad = envelope(
        "v1",
        "ConfigMap",
        &[meta("cm"), len_field(2, &entry)].concat(),
    );
    let (code, msg) = send(&client, "PUT", &format!("{ns}/configmaps/cm"), bad)
        .await
        .unwrap_err();
    assert_eq!(code, 400, "{msg}");
    assert!(
        msg.contains("malformed at data") && msg.contains("runs past the end"),
        "{msg}"
    );
    let (code, msg) = send(
        &client,
        "POST",
        &format!("{ns}/configmaps"),
        b"k8s\0\xff".to_vec(),
    )
    .await
    .unwrap_err();
    assert_eq!(code, 400, "{msg}");
    let (code, msg) = send(&client, "POST", &format!("{ns}/configmaps"), b"{}".to_vec())
        .await
        .unwrap_err();
    assert_eq!(code, 400, "{msg}");
    assert!(msg.contains("prefix"), "{msg}");
    let req = http::Request::get(format!("{ns}/configmaps/cm"))
        .body(Vec::new())
        .unwrap();
    let still: Value = serde_json::from_str(&client.request_text(req).await.unwrap()).unwrap();
    assert_eq!(still["data"], json!({"k": "two"}));

    // A kind without a protobuf definition here: 415 naming it.
    let ingress = envelope("networking.k8s.io/v1", "Ingress", &meta("r"));
    let (code, msg) = send(&client, "POST", &format!("{ns}/configmaps"), ingress)
        .await
        .unwrap_err();
    assert_eq!(code, 415, "{msg}");
    assert!(
        msg.contains("Ingress in version \"networking.k8s.io/v1\""),
        "{msg}"
    );

    // Other media types: 415 listing protobuf among the accepted ones.
    let req = http::Request::post(format!("{ns}/configmaps"))
        .header("Content-Type", "application/cbor")
        .body(b"x".to_vec())
        .unwrap();
    match client.request_text(req).await {
        Err(kube::Error::Api(s)) => {
            assert_eq!(s.code, 415);
            assert!(s.message.contains(PROTOBUF), "{}", s.message);
        }
        other => panic!("{other:?}"),
    }
}

// ---- /openapi/v2 as protobuf ------------------------------------------------------------

/// kubectl 1.27 and 1.28 load `/openapi/v2` as protobuf (and nothing else) for `apply`'s
/// validation and its strategic-merge patches: apply, re-apply with a change, and an
/// unknown field (refused by the server, kubectl sends fieldValidation=Strict) all work
/// without `--validate=false`.
fn apply_with_openapi_v2_protobuf(version: &str) {
    let server = start_server();
    let Some(k) = Kubectl::new(version, &server) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let manifest = |replicas: u32, extra: &str| {
        let p = dir.path().join(format!("d{replicas}.yaml"));
        std::fs::write(
            &p,
            format!(
                "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: applied\nspec:\n  replicas: {replicas}\n{extra}  selector:\n    matchLabels: {{app: applied}}\n  template:\n    metadata:\n      labels: {{app: applied}}\n    spec:\n      containers:\n      - name: c\n        image: nginx\n        ports:\n        - containerPort: 80\n        resources:\n          limits: {{cpu: 500m}}\n"
            ),
        )
        .unwrap();
        p.to_string_lossy().into_owned()
    };
    let out = k.run(&["apply", "-f", &manifest(2, ""), "-v=6"]);
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "first apply: {log}");
    assert!(
        log.contains("/openapi/v2") && log.contains("200 OK"),
        "{log}"
    );
    k.ok(&["apply", "-f", &manifest(5, "")]);
    assert_eq!(k.get(&["deployment", "applied"])["spec"]["replicas"], 5);
    let out = k.run(&["apply", "-f", &manifest(6, "  bogusField: 1\n")]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("bogusField"), "{err}");
    assert_eq!(k.get(&["deployment", "applied"])["spec"]["replicas"], 5);
}

#[test]
fn kubectl_1_27_apply_without_validate_false() {
    apply_with_openapi_v2_protobuf("1.27");
}

#[test]
fn kubectl_1_28_apply_without_validate_false() {
    apply_with_openapi_v2_protobuf("1.28");
}
