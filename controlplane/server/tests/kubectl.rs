//! The real kubectl (1.29 and 1.33) against a `skiff-controlplane` process on 127.0.0.1.

mod support;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use support::ServerProcess;

fn testdata(name: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/testdata")
        .join(name)
        .to_string_lossy()
        .into_owned()
}

struct Kubectl {
    bin: PathBuf,
    home: tempfile::TempDir,
    kubeconfig: PathBuf,
}

impl Kubectl {
    /// `kubectl.<version>` with its own HOME (its discovery cache) against `server`, or
    /// None (after SKIPPED / a CI failure) when that kubectl is not installed.
    fn new(version: &str, server: &ServerProcess) -> Option<Kubectl> {
        let Some(bin) = support::kubectl(version) else {
            support::skip_or_fail(&format!(
                "kubectl.{version} not found next to the kubectl on PATH (install google-cloud-cli's kubectl)"
            ));
            return None;
        };
        Some(Kubectl {
            bin,
            home: tempfile::tempdir().unwrap(),
            kubeconfig: server.kubeconfig.clone(),
        })
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(&self.bin);
        c.env("HOME", self.home.path())
            .env_remove("KUBECONFIG")
            .arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .args(args);
        c
    }

    fn run(&self, args: &[&str]) -> Output {
        self.command(args).output().expect("running kubectl")
    }

    /// Runs and asserts success; returns stdout.
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

    /// Runs and asserts failure; returns stderr.
    fn fails(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            !out.status.success(),
            "kubectl {args:?} unexpectedly succeeded: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8_lossy(&out.stderr).into_owned()
    }

    /// Polls `/readyz` through kubectl until the server answers.
    fn wait_ready(&self, server: &ServerProcess) {
        let deadline = Instant::now() + support::START_DEADLINE;
        loop {
            let out = self.run(&["get", "--raw", "/readyz"]);
            if out.status.success() && out.stdout == b"ok" {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "server not ready: {}\nserver log: {}",
                String::from_utf8_lossy(&out.stderr),
                server.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// apply (create, no-op, update), get, delete: the core any kubectl version must do.
fn apply_get_delete(version: &str) {
    let server = ServerProcess::start();
    let Some(k) = Kubectl::new(version, &server) else {
        return;
    };
    k.wait_ready(&server);
    let svc = testdata("svc.yaml");
    let deploy = testdata("deploy.yaml");
    assert_eq!(k.ok(&["apply", "-f", &svc]).trim(), "service/web created");
    assert_eq!(k.ok(&["apply", "-f", &svc]).trim(), "service/web unchanged");
    assert_eq!(
        k.ok(&["apply", "-f", &testdata("svc2.yaml")]).trim(),
        "service/web configured"
    );
    // The strategic merge patch kubectl computed replaced port 80 with 8080.
    assert_eq!(
        k.ok(&["get", "svc", "web", "-o", "jsonpath={.spec.ports[*].port}"]),
        "8080"
    );
    assert_eq!(
        k.ok(&["apply", "-f", &deploy]).trim(),
        "deployment.apps/web created"
    );
    let table = k.ok(&["get", "svc"]);
    let mut lines = table.lines();
    let header = lines.next().unwrap_or("");
    for col in [
        "NAME",
        "TYPE",
        "CLUSTER-IP",
        "EXTERNAL-IP",
        "PORT(S)",
        "AGE",
    ] {
        assert!(header.contains(col), "{table}");
    }
    // The bootstrap `kubernetes` Service is listed too.
    assert!(
        lines
            .clone()
            .any(|l| l.starts_with("kubernetes ") && l.contains("10.43.0.1")),
        "{table}"
    );
    let row = lines.find(|l| l.starts_with("web ")).unwrap_or("");
    assert!(
        row.starts_with("web ")
            && row.contains("ClusterIP")
            && row.contains("10.43.")
            && row.contains("8080/TCP"),
        "{table}"
    );
    let deploys = k.ok(&["get", "deploy", "-o", "wide"]);
    assert!(
        deploys.contains("READY") && deploys.contains("nginx:1.27") && deploys.contains("app=web"),
        "{deploys}"
    );
    assert_eq!(
        k.ok(&["get", "svc,deploy", "-o", "name"]),
        "service/kubernetes\nservice/web\ndeployment.apps/web\n"
    );
    let json: serde_json::Value =
        serde_json::from_str(&k.ok(&["get", "svc", "web", "-o", "json"])).unwrap();
    assert_eq!(json["kind"], "Service");
    assert_eq!(json["metadata"]["labels"]["app"], "web");
    let yaml = k.ok(&["get", "deploy", "web", "-o", "yaml"]);
    assert!(
        yaml.contains("kind: Deployment") && yaml.contains("replicas: 2"),
        "{yaml}"
    );
    assert_eq!(
        k.ok(&["delete", "svc", "web"]).trim(),
        "service \"web\" deleted"
    );
    assert_eq!(
        k.ok(&["delete", "-f", &deploy]).trim(),
        "deployment.apps \"web\" deleted"
    );
    let err = k.fails(&["get", "svc", "web"]);
    assert!(err.contains("services \"web\" not found"), "{err}");
    assert_eq!(
        k.ok(&["get", "svc,deploy", "-o", "name"]),
        "service/kubernetes\n"
    );
}

#[test]
fn kubectl_1_29_apply_get_delete() {
    apply_get_delete("1.29");
}

#[test]
fn kubectl_1_33_apply_get_delete() {
    apply_get_delete("1.33");
}

#[test]
fn kubectl_1_33_label_annotate_patch_edit_diff_explain_watch() {
    let server = ServerProcess::start();
    let Some(k) = Kubectl::new("1.33", &server) else {
        return;
    };
    k.wait_ready(&server);
    let deploy = testdata("deploy.yaml");
    k.ok(&["apply", "-f", &testdata("svc.yaml")]);
    k.ok(&["apply", "-f", &deploy]);

    assert_eq!(
        k.ok(&["label", "svc", "web", "tier=fe"]).trim(),
        "service/web labeled"
    );
    assert_eq!(
        k.ok(&["annotate", "svc", "web", "note=hi"]).trim(),
        "service/web annotated"
    );
    assert_eq!(
        k.ok(&[
            "get",
            "svc",
            "web",
            "-o",
            "jsonpath={.metadata.labels.tier} {.metadata.annotations.note}"
        ]),
        "fe hi"
    );

    // The three patch types.
    assert_eq!(
        k.ok(&[
            "patch",
            "deploy",
            "web",
            "-p",
            r#"{"spec":{"template":{"spec":{"containers":[{"name":"web","image":"nginx:1.28"}]}}}}"#
        ])
        .trim(),
        "deployment.apps/web patched"
    );
    k.ok(&[
        "patch",
        "deploy",
        "web",
        "--type",
        "merge",
        "-p",
        r#"{"metadata":{"labels":{"merged":"yes"}}}"#,
    ]);
    k.ok(&[
        "patch",
        "deploy",
        "web",
        "--type",
        "json",
        "-p",
        r#"[{"op":"replace","path":"/spec/replicas","value":3}]"#,
    ]);
    assert_eq!(
        k.ok(&["get", "deploy", "web", "-o", "jsonpath={.spec.template.spec.containers[0].image} {.spec.template.spec.containers[0].ports[0].containerPort} {.metadata.labels.merged} {.spec.replicas}"]),
        "nginx:1.28 80 yes 3"
    );
    let err = k.fails(&[
        "patch",
        "deploy",
        "web",
        "--type",
        "json",
        "-p",
        r#"[{"op":"test","path":"/spec/replicas","value":99}]"#,
    ]);
    assert!(err.contains("Error from server"), "{err}");

    // edit: KUBE_EDITOR is a script that edits the file kubectl hands it.
    let editor = k.home.path().join("editor.sh");
    std::fs::write(
        &editor,
        "#!/bin/sh\nsed -i 's/^  replicas: 3$/  replicas: 5/' \"$1\"\n",
    )
    .unwrap();
    std::fs::set_permissions(&editor, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let out = k
        .command(&["edit", "deploy", "web"])
        .env("KUBE_EDITOR", &editor)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "deployment.apps/web edited"
    );
    assert_eq!(
        k.ok(&["get", "deploy", "web", "-o", "jsonpath={.spec.replicas}"]),
        "5"
    );

    // diff: exit 1 with the difference, 0 once applied.
    let out = k.run(&["diff", "-f", &deploy]);
    let diff = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{diff}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        diff.contains("-  replicas: 5") && diff.contains("+  replicas: 2"),
        "{diff}"
    );
    k.ok(&["apply", "-f", &deploy]);
    let out = k.run(&["diff", "-f", &deploy]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );

    // Server-side apply (create, then update).
    assert_eq!(
        k.ok(&["apply", "--server-side", "-f", &testdata("cm.yaml")])
            .trim(),
        "configmap/settings serverside-applied"
    );
    assert_eq!(
        k.ok(&["apply", "--server-side", "-f", &testdata("cm2.yaml")])
            .trim(),
        "configmap/settings serverside-applied"
    );
    assert_eq!(
        k.ok(&["get", "cm", "settings", "-o", "jsonpath={.data.mode}"]),
        "slow"
    );

    // explain and api-resources.
    let explain = k.ok(&["explain", "deployment.spec.replicas"]);
    assert!(
        explain.contains("FIELD: replicas <integer>") && explain.contains("Number of desired pods"),
        "{explain}"
    );
    let explain = k.ok(&["explain", "svc.spec.ports"]);
    assert!(explain.contains("targetPort"), "{explain}");
    let res = k.ok(&["api-resources"]);
    assert!(
        res.lines()
            .any(|l| l.starts_with("deployments") && l.contains("deploy") && l.contains("apps/v1")),
        "{res}"
    );
    assert!(
        res.lines()
            .any(|l| l.starts_with("endpointslices") && l.contains("discovery.k8s.io/v1")),
        "{res}"
    );

    // Unknown fields: kubectl's default --validate=strict is enforced by the server
    // (fieldValidation=Strict); --validate=warn shows the server's Warning header.
    let typo = testdata("unknown-field.yaml");
    let err = k.fails(&["apply", "-f", &typo]);
    assert!(err.contains("unknown field \"bogus\""), "{err}");
    let out = k
        .command(&["apply", "--validate=warn", "-f", &typo])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("Warning: unknown field \"bogus\""),
        "{stderr}"
    );

    // Errors come back with upstream's messages.
    let err = k.fails(&["create", "-f", &testdata("bad-name.yaml")]);
    assert!(
        err.contains(
            "ConfigMap \"Bad_Name\" is invalid: metadata.name: Invalid value: \"Bad_Name\""
        ),
        "{err}"
    );
    let stale = k.ok(&["get", "cm", "settings", "-o", "json"]);
    k.ok(&["label", "cm", "settings", "bump=1"]);
    // replace with the original manifest (no clusterIP) keeps the allocated ClusterIP.
    let ip = k.ok(&["get", "svc", "web", "-o", "jsonpath={.spec.clusterIP}"]);
    assert!(ip.starts_with("10.43."), "{ip}");
    k.ok(&["replace", "-f", &testdata("svc.yaml")]);
    assert_eq!(
        k.ok(&["get", "svc", "web", "-o", "jsonpath={.spec.clusterIP}"]),
        ip
    );
    let stale_file = k.home.path().join("stale.json");
    std::fs::write(&stale_file, stale).unwrap();
    let err = k.fails(&["replace", "-f", stale_file.to_str().unwrap()]);
    assert!(err.contains("the object has been modified; please apply your changes to the latest version and try again"), "{err}");

    // get -w: the current row, then a change.
    let mut child = k
        .command(&["get", "svc", "-w"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let recv = |what: &str| {
        rx.recv_timeout(Duration::from_secs(30))
            .unwrap_or_else(|_| panic!("kubectl get -w printed no line for {what}"))
    };
    assert!(recv("the header").contains("CLUSTER-IP"));
    assert!(recv("the kubernetes Service's row").starts_with("kubernetes "));
    assert!(recv("the initial row").starts_with("web "));
    k.ok(&["label", "svc", "web", "watched=yes"]);
    assert!(recv("the MODIFIED event").starts_with("web "));
    k.ok(&["delete", "svc", "web"]);
    assert!(recv("the DELETED event").starts_with("web "));
    let _ = child.kill();
    let _ = child.wait();
}

/// A restart on the same data directory keeps the objects and the credentials.
#[test]
fn restart_keeps_objects_and_credentials() {
    let server = ServerProcess::start();
    let Some(k) = Kubectl::new("1.33", &server) else {
        return;
    };
    k.wait_ready(&server);
    k.ok(&["apply", "-f", &testdata("svc.yaml")]);
    let uid = k.ok(&["get", "svc", "web", "-o", "jsonpath={.metadata.uid}"]);
    let ca = std::fs::read_to_string(server.data_dir().join("pki/ca.crt")).unwrap();
    let server = ServerProcess::start_in(server.stop());
    k.wait_ready(&server);
    assert_eq!(
        k.ok(&["get", "svc", "web", "-o", "jsonpath={.metadata.uid}"]),
        uid
    );
    assert_eq!(
        std::fs::read_to_string(server.data_dir().join("pki/ca.crt")).unwrap(),
        ca
    );
}

#[test]
fn etcd_store_needs_endpoints() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_skiff-controlplane"))
        .args([
            "server",
            "--store",
            "etcd",
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
        ])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--store etcd needs --etcd-endpoints"), "{err}");
}

/// rbac.authorization.k8s.io objects are served (stored, validated, printed; not
/// enforced), so manifests carrying RBAC apply: among them skiff's own DaemonSet manifest
/// for running the agent as kube-proxy's replacement on another cluster.
#[test]
fn rbac_objects_and_the_agent_deploy_manifest_apply() {
    let server = ServerProcess::start();
    let Some(k) = Kubectl::new("1.33", &server) else {
        return;
    };
    k.wait_ready(&server);
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../deploy/skiff-agent.yaml")
        .to_string_lossy()
        .into_owned();
    let kinds = [
        "serviceaccount/skiff-agent",
        "clusterrole.rbac.authorization.k8s.io/skiff-agent",
        "clusterrolebinding.rbac.authorization.k8s.io/skiff-agent",
        "configmap/skiff-agent",
        "daemonset.apps/skiff-agent",
    ];
    let dry = k.ok(&["apply", "--dry-run=server", "-f", &manifest]);
    for kind in kinds {
        assert!(
            dry.contains(&format!("{kind} created (server dry run)")),
            "{dry}"
        );
    }
    let created = k.ok(&["apply", "-f", &manifest]);
    for kind in kinds {
        assert!(created.contains(&format!("{kind} created")), "{created}");
    }
    let again = k.ok(&["apply", "-f", &manifest]);
    for kind in kinds {
        assert!(again.contains(&format!("{kind} unchanged")), "{again}");
    }
    let wide = k.ok(&["get", "clusterrolebinding", "skiff-agent", "-o", "wide"]);
    assert!(
        wide.contains("ClusterRole/skiff-agent") && wide.contains("kube-system/skiff-agent"),
        "{wide}"
    );
    assert_eq!(
        k.ok(&[
            "get",
            "clusterrole",
            "skiff-agent",
            "-o",
            "jsonpath={.rules[1].resources[0]}"
        ]),
        "endpointslices"
    );

    // kubectl create sends these as protobuf.
    assert_eq!(
        k.ok(&[
            "create",
            "clusterrole",
            "system:pod-reader",
            "--verb=get,list",
            "--resource=pods"
        ])
        .trim(),
        "clusterrole.rbac.authorization.k8s.io/system:pod-reader created"
    );
    assert_eq!(
        k.ok(&[
            "create",
            "rolebinding",
            "readers",
            "--clusterrole=system:pod-reader",
            "--user=alice",
            "--serviceaccount=default:builder"
        ])
        .trim(),
        "rolebinding.rbac.authorization.k8s.io/readers created"
    );
    let rb = k.ok(&["get", "rolebinding", "readers", "-o", "wide"]);
    assert!(
        rb.contains("ClusterRole/system:pod-reader")
            && rb.contains("alice")
            && rb.contains("default/builder"),
        "{rb}"
    );
    // Upstream's validation messages, and nothing stored.
    let mut child = k
        .command(&["apply", "-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write as _;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(
            b"apiVersion: rbac.authorization.k8s.io/v1\nkind: Role\nmetadata:\n  name: bad\nrules:\n- apiGroups: [\"\"]\n  resources: [pods]\n  verbs: []\n",
        )
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("The Role \"bad\" is invalid: rules[0].verbs: Required value: verbs must contain at least one value"),
        "{err}"
    );
    assert!(k.fails(&["get", "role", "bad"]).contains("NotFound"));
    let err = k.fails(&[
        "patch",
        "rolebinding",
        "readers",
        "--type=merge",
        "-p",
        r#"{"roleRef":{"name":"other"}}"#,
    ]);
    assert!(
        err.contains("roleRef: Invalid value") && err.contains("cannot change roleRef"),
        "{err}"
    );
    let resources = k.ok(&[
        "api-resources",
        "--api-group=rbac.authorization.k8s.io",
        "--no-headers",
    ]);
    assert_eq!(resources.lines().count(), 4, "{resources}");
    assert!(k
        .ok(&["explain", "clusterrole.rules.verbs"])
        .contains("Verbs is a list of Verbs"));
}
