//! The official Python `kubernetes` client (installed into a venv under the target
//! directory on first use) against an in-process server.

mod support;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, PostParams};
use serde_json::json;

const CLIENT_VERSION: &str = "37.0.2";

/// A venv with `kubernetes==CLIENT_VERSION`, or None after SKIPPED / a CI failure.
fn python_with_client() -> Option<PathBuf> {
    let venv =
        Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("py-kubernetes-{CLIENT_VERSION}"));
    let python = venv.join("bin/python");
    let marker = venv.join("installed");
    if marker.is_file() {
        return Some(python);
    }
    let run = |cmd: &mut Command| -> Result<(), String> {
        let out = cmd.output().map_err(|e| format!("{cmd:?}: {e}"))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(format!(
                "{cmd:?} failed: {}",
                String::from_utf8_lossy(&out.stderr)
            ))
        }
    };
    let setup = run(Command::new("python3").arg("-m").arg("venv").arg(&venv)).and_then(|_| {
        run(Command::new(venv.join("bin/pip"))
            .args(["install", "--quiet", "--disable-pip-version-check"])
            .arg(format!("kubernetes=={CLIENT_VERSION}")))
    });
    match setup {
        Ok(()) => {
            std::fs::write(&marker, CLIENT_VERSION).unwrap();
            Some(python)
        }
        Err(why) => {
            support::skip_or_fail(&format!(
                "cannot set up the Python kubernetes client (needs python3 with venv and PyPI): {why}"
            ));
            None
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_client_creates_lists_and_survives_410_mid_watch() {
    let Some(python) = tokio::task::spawn_blocking(python_with_client)
        .await
        .unwrap()
    else {
        return;
    };
    // Watches end after 1-2 s, so the client re-watches on its own from its last version.
    let s = support::InProcess::redb(Duration::from_secs(1)).await;
    let cms: Api<ConfigMap> = Api::namespaced(s.client.clone(), "default");
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/testdata/svc.yaml");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/testdata/python_client.py");
    let mut child = Command::new(python)
        .arg(script)
        .arg(s.kubeconfig())
        .arg(manifest)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("running python");
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut stderr = child.stderr.take().unwrap();
    let errors = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = std::io::Read::read_to_string(&mut stderr, &mut s);
        s
    });
    let expect = |prefix: &str| -> String {
        match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(line) if line.starts_with(prefix) => line,
            Ok(line) => panic!("expected {prefix}, the script printed {line:?}"),
            Err(_) => panic!("the script printed no {prefix} line"),
        }
    };
    expect("SYNCED");
    // Move the store on and compact away the version the script is watching from.
    for i in 0..3 {
        let c: ConfigMap =
            serde_json::from_value(json!({"metadata": {"name": format!("noise{i}")}})).unwrap();
        cms.create(&PostParams::default(), &c).await.unwrap();
    }
    let cur = s.store.current_revision().await.unwrap();
    s.store.compact(cur).await.unwrap();
    expect("RELISTED");
    let m1: ConfigMap =
        serde_json::from_value(json!({"metadata": {"name": "m1", "labels": {"app": "watched"}}}))
            .unwrap();
    cms.create(&PostParams::default(), &m1).await.unwrap();
    assert_eq!(expect("SAW"), "SAW m1");
    let status = child.wait().unwrap();
    assert!(
        status.success(),
        "python exited with {status}: {}",
        errors.join().unwrap()
    );
}
