//! The node agent's kubelet share beyond running pods: `kubectl logs` through the real API
//! server (which proxies to the agent's kubelet API) and the real kubectl.
//!
//! Each test has its own API server (no controllers), a Node object whose InternalIP is
//! 127.0.0.1 and whose kubelet endpoint is the test's kubelet API server, a cgroup parent
//! and a runtime. Pods use `hostNetwork: true` (they only print; nothing is sent anywhere),
//! so no pod network is needed.

use std::{
    io::{BufRead as _, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use k8s_openapi::api::core::v1::{Node as KNode, Pod};
use kube::{
    api::{LogParams, Patch, PatchParams, PostParams},
    Api, Client,
};
use serde_json::json;
use skiff_runtime::{backoff::BackoffConfig, cni::Cni, logs::LogLimits, Config, Runtime};
use skiff_tests::{
    apiserver::{self, free_port, ApiServer},
    cgroup::Cgroup,
    privilege::require_privileges,
};

async fn config_for(kubeconfig: &Path) -> kube::Config {
    let kc = kube::config::Kubeconfig::read_from(kubeconfig).unwrap();
    kube::Config::from_custom_kubeconfig(kc, &Default::default())
        .await
        .unwrap()
}

/// API server, Node object, cgroup parent, and a thread running the runtime and the
/// kubelet API with the node's own credential (`skiff-agent join`), so the Node
/// authorizer sees everything they do.
struct Node {
    // Field order is drop order: the runtime stops (and tears pods down) before the
    // cgroup and the API server go.
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    runtime: Option<std::thread::JoinHandle<()>>,
    name: String,
    client: Client,
    rt: tokio::runtime::Runtime,
    kubelet_port: u16,
    _cgroup: Cgroup,
    work: tempfile::TempDir,
    api: ApiServer,
}

impl Node {
    fn start(tag: &str) -> Node {
        Node::start_with(tag, skiff_runtime::worker::RunOptions::default())
    }

    fn start_with(tag: &str, options: skiff_runtime::worker::RunOptions) -> Node {
        require_privileges();
        let _ = tracing_subscriber::fmt()
            .with_env_filter(
                tracing_subscriber::EnvFilter::try_from_default_env()
                    .unwrap_or_else(|_| "skiff_runtime=info,skiff_agent=debug".into()),
            )
            .with_test_writer()
            .try_init();
        let work = tempfile::Builder::new()
            .prefix(&format!("skiff-kl-{tag}-"))
            .tempdir()
            .unwrap();
        std::fs::create_dir_all(work.path().join("api")).unwrap();
        let api = ApiServer::start_in(
            &work.path().join("api"),
            free_port(),
            &["--disable-controllers"],
        );
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let kubeconfig = api.kubeconfig();
        let client = rt.block_on(apiserver::client(&kubeconfig));
        let name = format!("node-{tag}");
        let kubelet_port = free_port();
        // The Node as registration leaves it: InternalIP and the kubelet endpoint.
        rt.block_on(async {
            let nodes: Api<KNode> = Api::all(client.clone());
            let n: KNode = serde_json::from_value(json!({"metadata": {"name": name}})).unwrap();
            nodes.create(&PostParams::default(), &n).await.unwrap();
            nodes
                .patch_status(
                    &name,
                    &PatchParams::default(),
                    &Patch::Merge(json!({"status": {
                        "addresses": [{"type": "InternalIP", "address": "127.0.0.1"}],
                        "daemonEndpoints": {"kubeletEndpoint": {"Port": kubelet_port}},
                    }})),
                )
                .await
                .unwrap();
        });
        let token = std::fs::read_to_string(api.dir.join("pki/join.token")).unwrap();
        let node_kc = rt
            .block_on(skiff_agent::join::join(&api.url(), token.trim(), &name))
            .expect("joining the node");
        let node_kubeconfig = work.path().join("node.kubeconfig");
        skiff_agent::join::write_kubeconfig(&node_kubeconfig, &node_kc).unwrap();
        let cgroup = Cgroup::new(tag);
        let log_dir = work.path().join("logs");
        let config = Config {
            cni: Cni {
                plugin_dirs: vec![],
                network: json!({"cniVersion": "1.1.0", "name": "unused", "plugins": []}),
                ifname: "eth0".into(),
                host_netns: None,
            },
            cgroup_parent: cgroup.path().to_path_buf(),
            state_dir: work.path().join("state"),
            log_dir: log_dir.clone(),
            log_limits: LogLimits::default(),
            backoff: BackoffConfig::scaled(Duration::from_millis(200)),
            host_ip: Some("127.0.0.1".parse().unwrap()),
            dns: Default::default(),
        };
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<()>();
        let node_name = name.clone();
        let runtime = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let conf = config_for(&node_kubeconfig).await;
                let ca = conf.root_cert.clone().unwrap_or_default();
                let rt_client = Client::try_from(conf).unwrap();
                let api = skiff_agent::kubelet_api::KubeletApi {
                    client: rt_client.clone(),
                    node_name: node_name.clone(),
                    log_dir,
                    client_ca: ca,
                    addresses: vec!["127.0.0.1".parse().unwrap()],
                };
                let (_, server) = skiff_agent::kubelet_api::serve(
                    format!("127.0.0.1:{kubelet_port}").parse().unwrap(),
                    api,
                )
                .await
                .expect("kubelet API");
                ready_tx.send(()).unwrap();
                Runtime::run_with(rt_client, &node_name, config, options, async {
                    let _ = stop_rx.await;
                })
                .await
                .expect("runtime");
                server.abort();
            });
        });
        ready_rx
            .recv_timeout(Duration::from_secs(30))
            .expect("the kubelet API did not start");
        Node {
            stop: Some(stop_tx),
            runtime: Some(runtime),
            name,
            client,
            rt,
            kubelet_port,
            _cgroup: cgroup,
            work,
            api,
        }
    }

    fn pods(&self) -> Api<Pod> {
        Api::namespaced(self.client.clone(), "default")
    }

    fn create(&self, pod: serde_json::Value) {
        let mut pod = pod;
        pod["spec"]["nodeName"] = json!(self.name);
        pod["spec"]["hostNetwork"] = json!(true);
        let pod: Pod = serde_json::from_value(pod).unwrap();
        self.rt
            .block_on(self.pods().create(&PostParams::default(), &pod))
            .unwrap();
    }

    fn wait_pod<T>(
        &self,
        name: &str,
        what: &str,
        timeout: Duration,
        mut f: impl FnMut(&Pod) -> Option<T>,
    ) -> T {
        let deadline = Instant::now() + timeout;
        let mut last = None;
        loop {
            if let Some(p) = self.rt.block_on(self.pods().get_opt(name)).unwrap() {
                if let Some(v) = f(&p) {
                    return v;
                }
                last = Some(p);
            }
            assert!(
                Instant::now() < deadline,
                "timed out after {timeout:?} waiting for pod {name}: {what}; last seen status: {}",
                serde_json::to_string_pretty(&last.and_then(|p| p.status)).unwrap()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn kubectl(&self, args: &[&str]) -> std::process::Output {
        Command::new("kubectl")
            .arg("--kubeconfig")
            .arg(self.api.kubeconfig())
            .args(args)
            .output()
            .expect("running kubectl")
    }

    /// kubectl's stdout, asserting success.
    fn kubectl_ok(&self, args: &[&str]) -> String {
        let out = self.kubectl(args);
        assert!(
            out.status.success(),
            "kubectl {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// kubectl's stderr, asserting failure.
    fn kubectl_err(&self, args: &[&str]) -> String {
        let out = self.kubectl(args);
        assert!(
            !out.status.success(),
            "kubectl {args:?} should fail; it printed {}",
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8(out.stderr).unwrap()
    }

    /// Polls `kubectl args` until its output satisfies `f`.
    fn kubectl_until(&self, args: &[&str], what: &str, f: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let out = self.kubectl(args);
            let s = String::from_utf8_lossy(&out.stdout).into_owned();
            if out.status.success() && f(&s) {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "kubectl {args:?}: {what}; last output {s:?}, stderr {}",
                String::from_utf8_lossy(&out.stderr)
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.runtime.take() {
            let _ = t.join();
        }
    }
}

fn container_status(p: &Pod, name: &str) -> Option<k8s_openapi::api::core::v1::ContainerStatus> {
    p.status
        .as_ref()?
        .container_statuses
        .as_ref()?
        .iter()
        .find(|c| c.name == name)
        .cloned()
}

fn running(p: &Pod, name: &str) -> bool {
    container_status(p, name)
        .and_then(|c| c.state)
        .is_some_and(|s| s.running.is_some())
}

/// A child killed on drop (a `kubectl logs -f` that must not outlive a failed test).
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn kubectl_logs_through_the_api_server_and_the_kubelet_api() {
    let node = Node::start("logs");
    let counter = node.work.path().join("runs");
    // "ticker" prints a numbered line every 100 ms; "runs" counts its runs in a file on
    // the host filesystem, fails its first run and stays up on the second, so its
    // current and previous logs differ.
    node.create(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "talker", "namespace": "default"},
        "spec": {"containers": [
            {"name": "ticker", "image": "skiff.local/host",
             "command": ["/bin/sh", "-c", "i=0; while true; do i=$((i+1)); echo \"tick $i\"; sleep 0.1; done"]},
            {"name": "runs", "image": "skiff.local/host",
             "command": ["/bin/sh", "-c", format!(
                 "n=$(cat {c} 2>/dev/null || echo 0); n=$((n+1)); echo $n > {c}; echo \"run $n\"; echo \"err $n\" >&2; \
                  if [ $n -ge 2 ]; then exec sleep 3600; fi; exit 1", c = counter.display())]},
        ]}
    }));
    node.wait_pod(
        "talker",
        "both containers running, runs restarted once",
        Duration::from_secs(60),
        |p| {
            (running(p, "ticker")
                && running(p, "runs")
                && container_status(p, "runs").is_some_and(|c| c.restart_count == 1))
            .then_some(())
        },
    );

    // The current and the previous instance.
    let current = node.kubectl_until(
        &["logs", "talker", "-c", "runs"],
        "the second run's lines",
        |s| s.contains("run 2"),
    );
    assert_eq!(current, "run 2\nerr 2\n");
    let previous = node.kubectl_ok(&["logs", "talker", "-c", "runs", "--previous"]);
    assert_eq!(previous, "run 1\nerr 1\n");
    let err = node.kubectl_err(&["logs", "talker", "-c", "ticker", "--previous"]);
    assert!(
        err.contains(r#"previous terminated container "ticker" in pod "talker" not found"#),
        "{err}"
    );

    // --tail, --timestamps, --limit-bytes, --since, --since-time.
    node.kubectl_until(&["logs", "talker", "-c", "ticker"], "a few ticks", |s| {
        s.contains("tick 5\n")
    });
    let tail = node.kubectl_ok(&["logs", "talker", "-c", "ticker", "--tail=2"]);
    let lines: Vec<&str> = tail.lines().collect();
    assert_eq!(lines.len(), 2, "{tail:?}");
    let n: u64 = lines[0].strip_prefix("tick ").unwrap().parse().unwrap();
    assert_eq!(lines[1], format!("tick {}", n + 1), "{tail:?}");
    let ts = node.kubectl_ok(&["logs", "talker", "-c", "ticker", "--tail=1", "--timestamps"]);
    let (stamp, text) = ts.trim_end().split_once(' ').unwrap();
    assert!(
        stamp.parse::<k8s_openapi::jiff::Timestamp>().is_ok(),
        "not an RFC 3339 timestamp: {ts:?}"
    );
    assert!(text.starts_with("tick "), "{ts:?}");
    let limited = node.kubectl_ok(&["logs", "talker", "-c", "ticker", "--limit-bytes=7"]);
    assert_eq!(limited, "tick 1\n");
    std::thread::sleep(Duration::from_millis(1500)); // lets ticks older than 1 s exist
    let recent = node.kubectl_ok(&["logs", "talker", "-c", "ticker", "--since=1s"]);
    assert!(
        !recent.contains("tick 1\n") && recent.contains("tick "),
        "{recent:?}"
    );
    let future = (k8s_openapi::jiff::Timestamp::now()
        + k8s_openapi::jiff::SignedDuration::from_hours(1))
    .to_string();
    let none = node.kubectl_ok(&[
        "logs",
        "talker",
        "-c",
        "ticker",
        &format!("--since-time={future}"),
    ]);
    assert_eq!(none, "");

    // -f streams new lines as they are written.
    let mut follow = Killed(
        Command::new("kubectl")
            .arg("--kubeconfig")
            .arg(node.api.kubeconfig())
            .args(["logs", "-f", "talker", "-c", "ticker", "--tail=1"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let mut out = BufReader::new(follow.0.stdout.take().unwrap());
    let mut first = String::new();
    out.read_line(&mut first).unwrap();
    let start: u64 = first.trim().strip_prefix("tick ").unwrap().parse().unwrap();
    for k in 1..=5 {
        let mut l = String::new();
        out.read_line(&mut l).unwrap();
        assert_eq!(l, format!("tick {}\n", start + k));
    }
    drop(follow);

    // Upstream's errors: a container name is required through the API when there are
    // several; an unknown container; a container that cannot start.
    let e = node
        .rt
        .block_on(node.pods().logs("talker", &LogParams::default()))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains(
            "a container name must be specified for pod talker, choose one of: [ticker runs]"
        ),
        "{e}"
    );
    let err = node.kubectl_err(&["logs", "talker", "-c", "nope"]);
    assert!(
        err.contains("container nope is not valid for pod talker"),
        "{err}"
    );
    node.create(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "nopull", "namespace": "default"},
        "spec": {"containers": [{"name": "c", "image": "docker.io/library/busybox", "command": ["true"]}]}
    }));
    node.wait_pod("nopull", "ErrImagePull", Duration::from_secs(30), |p| {
        container_status(p, "c")
            .and_then(|c| c.state?.waiting?.reason)
            .filter(|r| r == "ErrImagePull")
    });
    let err = node.kubectl_err(&["logs", "nopull"]);
    assert!(
        err.contains(r#"container "c" in pod "nopull" is waiting to start: image can't be pulled"#),
        "{err}"
    );
}

#[test]
fn follow_ends_when_the_container_exits() {
    let node = Node::start("follow");
    let gate = node.work.path().join("gate");
    node.create(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "short", "namespace": "default"},
        "spec": {"restartPolicy": "Never", "containers": [
            {"name": "c", "image": "skiff.local/host",
             "command": ["/bin/sh", "-c", format!(
                 "echo first; while [ ! -e {g} ]; do sleep 0.05; done; echo last", g = gate.display())]},
        ]}
    }));
    node.wait_pod("short", "running", Duration::from_secs(30), |p| {
        running(p, "c").then_some(())
    });
    let follow = Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(node.api.kubeconfig())
        .args(["logs", "-f", "short"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut follow = Killed(follow);
    let mut out = BufReader::new(follow.0.stdout.take().unwrap());
    let mut l = String::new();
    out.read_line(&mut l).unwrap();
    assert_eq!(l, "first\n");
    std::fs::write(&gate, "").unwrap();
    // The rest arrives and kubectl exits by itself once the container has stopped.
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut out, &mut rest).unwrap();
    assert_eq!(rest, "last\n");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(st) = follow.0.try_wait().unwrap() {
            assert!(st.success(), "kubectl logs -f exited with {st}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "kubectl logs -f did not end after the container exited"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn the_kubelet_api_serves_only_the_api_server() {
    let node = Node::start("kauth");
    node.create(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "p", "namespace": "default"},
        "spec": {"containers": [{"name": "c", "image": "skiff.local/host", "command": ["/bin/sh", "-c", "echo secret; exec sleep 3600"]}]}
    }));
    node.wait_pod("p", "running", Duration::from_secs(30), |p| {
        running(p, "c").then_some(())
    });
    let url = format!(
        "https://127.0.0.1:{}/containerLogs/default/p/c",
        node.kubelet_port
    );
    let pki = node.api.dir.join("pki");
    let curl = |extra: &[&str]| -> (String, String) {
        let out = Command::new("curl")
            .args(["-sk", "-o", "-", "-w", "\n%{http_code}"])
            .args(extra)
            .arg(&url)
            .output()
            .unwrap();
        let s = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, code) = s.rsplit_once('\n').unwrap();
        (code.to_string(), body.to_string())
    };
    // No certificate: 401.
    assert_eq!(curl(&[]).0, "401");
    // A cluster certificate that is not the API server's (the admin's): 403.
    let admin = curl(&[
        "--cert",
        pki.join("admin.crt").to_str().unwrap(),
        "--key",
        pki.join("admin.key").to_str().unwrap(),
    ]);
    assert_eq!(admin.0, "403", "{admin:?}");
    assert!(admin.1.contains("user=skiff-admin"), "{admin:?}");
    // The API server's kubelet client certificate: the log.
    let ok = curl(&[
        "--cert",
        pki.join("kubelet-client.crt").to_str().unwrap(),
        "--key",
        pki.join("kubelet-client.key").to_str().unwrap(),
    ]);
    assert_eq!(ok, ("200".to_string(), "secret\n".to_string()));
    // A self-signed certificate with the right name but outside the cluster CA: the
    // handshake fails.
    let dir = node.work.path();
    let gen = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-days",
            "1",
        ])
        .args(["-subj", "/CN=kube-apiserver-kubelet-client", "-keyout"])
        .arg(dir.join("fake.key"))
        .arg("-out")
        .arg(dir.join("fake.crt"))
        .output()
        .unwrap();
    assert!(
        gen.status.success(),
        "{}",
        String::from_utf8_lossy(&gen.stderr)
    );
    let fake = curl(&[
        "--cert",
        dir.join("fake.crt").to_str().unwrap(),
        "--key",
        dir.join("fake.key").to_str().unwrap(),
    ]);
    assert_eq!(fake.0, "000", "{fake:?}");
}

fn pod_uid(p: &Pod) -> String {
    p.metadata.uid.clone().unwrap()
}

/// Where the runtime put a container's memory and cpu values: the v2 cgroup when the
/// parent offers the controller, else the v1 mirror tree (see skiff_runtime::limits).
fn limit_file(
    node_cgroup: &Path,
    pod_uid: &str,
    container: &str,
    controller: &str,
    v2: &str,
    v1: &str,
) -> PathBuf {
    let offered =
        std::fs::read_to_string(node_cgroup.join("cgroup.controllers")).unwrap_or_default();
    let pod = format!("skiff-pod-{pod_uid}");
    if offered.split_whitespace().any(|c| c == controller) {
        return node_cgroup.join(pod).join(container).join(v2);
    }
    let own = std::fs::read_to_string("/proc/self/cgroup").unwrap();
    let path = own
        .lines()
        .find_map(|l| {
            let mut p = l.splitn(3, ':');
            let _ = p.next();
            let ctrls = p.next()?;
            ctrls
                .split(',')
                .any(|c| c == controller)
                .then(|| p.next().unwrap().to_string())
        })
        .unwrap_or_else(|| panic!("no cgroup v1 {controller} hierarchy and no v2 controller"));
    let mount = std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .find_map(|l| {
            let (pre, post) = l.split_once(" - ")?;
            let mut post = post.split(' ');
            (post.next()? == "cgroup" && post.nth(1)?.split(',').any(|o| o == controller))
                .then(|| PathBuf::from(pre.split(' ').nth(4).unwrap()))
        })
        .unwrap();
    mount
        .join(path.trim_start_matches('/'))
        .join(format!(
            "skiff-{}",
            node_cgroup.file_name().unwrap().to_string_lossy()
        ))
        .join(pod)
        .join(container)
        .join(v1)
}

#[test]
fn memory_and_cpu_limits_are_applied_and_the_memory_limit_oom_kills() {
    let node = Node::start("limits");
    node.create(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "hog", "namespace": "default"},
        "spec": {"restartPolicy": "Never", "containers": [
            // Touches 256 MiB under a 64 MiB limit.
            {"name": "hog", "image": "skiff.local/host",
             "command": ["/usr/bin/python3", "-c", "a = 'x' * (256 << 20); print('survived')"],
             "resources": {"limits": {"memory": "64Mi"}}},
            {"name": "idle", "image": "skiff.local/host", "command": ["sleep", "3600"],
             "resources": {"limits": {"memory": "32Mi", "cpu": "250m"}, "requests": {"cpu": "100m"}}},
        ]}
    }));
    let p = node.wait_pod("hog", "hog OOMKilled", Duration::from_secs(60), |p| {
        let t = container_status(p, "hog")?.state?.terminated?;
        (running(p, "idle") && t.reason.as_deref() == Some("OOMKilled")).then(|| (p.clone(), t))
    });
    assert_eq!(p.1.exit_code, 137, "{:?}", p.1);
    let cond =
        p.0.status
            .as_ref()
            .unwrap()
            .conditions
            .as_ref()
            .unwrap()
            .iter()
            .find(|c| c.type_ == skiff_runtime::limits::CONDITION)
            .cloned()
            .expect("the limits condition");
    assert_eq!(cond.status, "True", "{cond:?}");
    let uid = pod_uid(&p.0);
    let cg = node._cgroup.path();
    let read = |f: PathBuf| {
        std::fs::read_to_string(&f)
            .unwrap_or_else(|e| panic!("{}: {e}", f.display()))
            .trim()
            .to_string()
    };
    assert_eq!(
        read(limit_file(
            cg,
            &uid,
            "idle",
            "memory",
            "memory.max",
            "memory.limit_in_bytes"
        )),
        (32u64 << 20).to_string()
    );
    let quota = read(limit_file(
        cg,
        &uid,
        "idle",
        "cpu",
        "cpu.max",
        "cpu.cfs_quota_us",
    ));
    assert!(quota == "25000 100000" || quota == "25000", "{quota}");
    let weight = read(limit_file(
        cg,
        &uid,
        "idle",
        "cpu",
        "cpu.weight",
        "cpu.shares",
    ));
    assert!(
        weight == "4" || weight == "102",
        "cpu.weight 4 / cpu.shares 102 for 100m: {weight}"
    );
    let out = node.kubectl_ok(&["logs", "hog", "-c", "hog"]);
    assert!(!out.contains("survived"), "{out}");
}

fn write_manifest(dir: &Path, file: &str, text: &str) {
    // Written aside and renamed: the runtime never reads half a file.
    let tmp = dir.join(format!(".{file}.tmp"));
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, dir.join(file)).unwrap();
}

#[test]
fn static_pods_run_from_manifests_and_are_mirrored() {
    let manifests = tempfile::tempdir().unwrap();
    let manifest = |word: &str| {
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata:\n  name: web\n  labels: {{app: web}}\nspec:\n  hostNetwork: true\n  containers:\n  - name: c\n    image: skiff.local/host\n    command: [/bin/sh, -c, 'echo {word}; exec sleep 3600']\n"
        )
    };
    write_manifest(manifests.path(), "web.yaml", &manifest("hello"));
    write_manifest(
        manifests.path(),
        "broken.yaml",
        "apiVersion: v1\nkind: Pod\nmetadata: {}\n",
    );
    let node = Node::start_with(
        "static",
        skiff_runtime::worker::RunOptions {
            pod_manifest_path: Some(manifests.path().to_path_buf()),
            manifest_poll: Duration::from_millis(200),
        },
    );
    let mirror_name = format!("web-{}", node.name);
    let node_uid = node
        .rt
        .block_on(Api::<KNode>::all(node.client.clone()).get(&node.name))
        .unwrap()
        .metadata
        .uid
        .unwrap();
    // The mirror pod: annotated, owned by the Node, with the static pod's status.
    let first = node.wait_pod(
        &mirror_name,
        "the mirror pod running",
        Duration::from_secs(60),
        |p| running(p, "c").then(|| p.clone()),
    );
    let ann = first.metadata.annotations.clone().unwrap();
    assert_eq!(
        ann.get("kubernetes.io/config.source").map(String::as_str),
        Some("file")
    );
    let hash = ann
        .get("kubernetes.io/config.mirror")
        .cloned()
        .expect("config.mirror");
    assert_eq!(ann.get("kubernetes.io/config.hash"), Some(&hash));
    let owner = &first.metadata.owner_references.as_ref().unwrap()[0];
    assert_eq!(
        (owner.kind.as_str(), owner.name.as_str(), owner.uid.as_str()),
        ("Node", node.name.as_str(), node_uid.as_str())
    );
    // The static pod runs once (the mirror pod itself is not run): one pod cgroup.
    let pod_cgroups = || -> Vec<String> {
        std::fs::read_dir(node._cgroup.path())
            .unwrap()
            .flatten()
            .filter(|e| e.path().is_dir())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect()
    };
    assert_eq!(pod_cgroups(), vec![format!("skiff-pod-{hash}")]);
    node.kubectl_until(&["logs", &mirror_name], "the static pod's log", |s| {
        s == "hello\n"
    });
    let cid = container_status(&first, "c").unwrap().container_id;

    // Deleting the mirror pod recreates it; the static pod keeps running.
    node.kubectl_ok(&["delete", "pod", &mirror_name, "--wait=false"]);
    let again = node.wait_pod(
        &mirror_name,
        "a new mirror pod with the running status",
        Duration::from_secs(30),
        |p| (p.metadata.uid != first.metadata.uid && running(p, "c")).then(|| p.clone()),
    );
    assert_eq!(
        container_status(&again, "c").unwrap().container_id,
        cid,
        "the container was not restarted"
    );

    // A changed manifest is a new pod.
    write_manifest(manifests.path(), "web.yaml", &manifest("changed"));
    let changed = node.wait_pod(
        &mirror_name,
        "the mirror of the changed manifest",
        Duration::from_secs(60),
        |p| {
            let h = p
                .metadata
                .annotations
                .as_ref()?
                .get("kubernetes.io/config.mirror")?
                .clone();
            (h != hash && running(p, "c")).then(|| p.clone())
        },
    );
    node.kubectl_until(&["logs", &mirror_name], "the new pod's log", |s| {
        s == "changed\n"
    });
    let new_hash = changed.metadata.annotations.unwrap()["kubernetes.io/config.mirror"].clone();
    let deadline = Instant::now() + Duration::from_secs(30);
    while pod_cgroups() != vec![format!("skiff-pod-{new_hash}")] {
        assert!(
            Instant::now() < deadline,
            "the old static pod still runs: {:?}",
            pod_cgroups()
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    // A removed manifest stops the pod and removes its mirror.
    std::fs::remove_file(manifests.path().join("web.yaml")).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let gone = node
            .rt
            .block_on(node.pods().get_opt(&mirror_name))
            .unwrap()
            .is_none();
        if gone && pod_cgroups().is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "mirror pod or cgroup left: {:?}",
            pod_cgroups()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn post_start_and_pre_stop_hooks_run_around_the_container() {
    let node = Node::start("hooks");
    let d = node.work.path().join("hooks");
    std::fs::create_dir_all(&d).unwrap();
    let f = |n: &str| d.join(n).display().to_string();
    node.create(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "hooked", "namespace": "default"},
        "spec": {"terminationGracePeriodSeconds": 10, "containers": [{
            "name": "c", "image": "skiff.local/host",
            // On SIGTERM it records whether preStop ran first.
            "command": ["/bin/sh", "-c", format!(
                "trap 'if [ -e {pre} ]; then echo after-prestop > {term}; else echo no-prestop > {term}; fi; exit 0' TERM; \
                 while true; do sleep 0.1; done", pre = f("pre"), term = f("term"))],
            "lifecycle": {
                "postStart": {"exec": {"command": ["/bin/sh", "-c", format!("echo $HOSTNAME > {}", f("post"))]}},
                "preStop": {"exec": {"command": ["/bin/sh", "-c", format!("echo stopping > {}", f("pre"))]}},
            },
        }]}
    }));
    node.wait_pod("hooked", "running", Duration::from_secs(30), |p| {
        running(p, "c").then_some(())
    });
    // Running only once postStart has completed, in the container's environment.
    assert_eq!(std::fs::read_to_string(f("post")).unwrap(), "hooked\n");
    node.rt
        .block_on(node.pods().delete("hooked", &Default::default()))
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while node
        .rt
        .block_on(node.pods().get_opt("hooked"))
        .unwrap()
        .is_some()
    {
        assert!(Instant::now() < deadline, "the pod was not deleted");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        std::fs::read_to_string(f("term")).unwrap(),
        "after-prestop\n"
    );

    // A failing postStart kills the container, which restarts by its policy.
    node.create(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "badhook", "namespace": "default"},
        "spec": {"containers": [{
            "name": "c", "image": "skiff.local/host", "command": ["sleep", "3600"],
            "lifecycle": {"postStart": {"exec": {"command": ["/bin/false"]}}},
        }]}
    }));
    let last = node.wait_pod(
        "badhook",
        "restarted after the hook failure",
        Duration::from_secs(30),
        |p| {
            let c = container_status(p, "c")?;
            let t = c.last_state?.terminated?;
            (c.restart_count >= 1).then_some(t)
        },
    );
    assert!(
        last.message
            .as_deref()
            .unwrap_or("")
            .starts_with("PostStartHookError: "),
        "{last:?}"
    );
}
