//! The pod runtime against the real API server and the real skiff-cni: pods written with
//! kube-rs (bound to the node by `spec.nodeName`, no scheduler), run by
//! `skiff_runtime::Runtime` as processes in their own network namespaces.
//!
//! The "node" is a test network namespace: skiff-cni runs there (its bridge and the pod
//! veths live there, never in the root namespace), probes connect from there, and the pod
//! CIDR is 198.18.0.0/24 (RFC 2544 benchmarking range). Each test has its own API server,
//! node namespace, cgroup parent and IPAM directory.

use std::{
    net::Ipv4Addr,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use kube::{
    api::{DeleteParams, PostParams},
    Api, Client,
};
use serde_json::json;
use skiff_runtime::{backoff::BackoffConfig, cni::Cni, logs::LogLimits, Config, Runtime};
use skiff_tests::{
    apiserver::{self, free_port, sibling_binary, ApiServer},
    cgroup::Cgroup,
    netns::NetNs,
    privilege::require_privileges,
};

const NODE: &str = "node-rt";

/// One node: API server, node namespace, cgroup parent, runtime thread.
struct Node {
    // Field order is drop order: the runtime stops (and tears pods down) before the
    // namespace, cgroup and API server go.
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    crash: Option<tokio::sync::oneshot::Sender<()>>,
    runtime: Option<std::thread::JoinHandle<()>>,
    config: Config,
    kubeconfig: PathBuf,
    client: Client,
    rt: tokio::runtime::Runtime,
    ns: NetNs,
    cgroup: Cgroup,
    ipam_dir: PathBuf,
    network: String,
    work: tempfile::TempDir,
    _api: ApiServer,
}

impl Node {
    fn start(tag: &str, backoff: BackoffConfig) -> Node {
        require_privileges();
        // The runtime's log in the test output (RUST_LOG overrides the level).
        let _ = tracing_subscriber::fmt()
            .with_env_filter(
                tracing_subscriber::EnvFilter::try_from_default_env()
                    .unwrap_or_else(|_| "skiff_runtime=info".into()),
            )
            .with_test_writer()
            .try_init();
        let work = tempfile::Builder::new()
            .prefix(&format!("skiff-rt-{tag}-"))
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
        let ns = NetNs::new(tag);
        let cgroup = Cgroup::new(tag);
        let ipam_dir = work.path().join("ipam");
        let network = format!("skrt{}", std::process::id());
        let cni_bin = sibling_binary("skiff-cni");
        let config = Config {
            cni: Cni {
                plugin_dirs: vec![cni_bin.parent().unwrap().to_path_buf()],
                network: json!({
                    "cniVersion": "1.1.0",
                    "name": network,
                    "plugins": [{
                        "type": "skiff-cni",
                        "bridge": "skiff0",
                        "isGateway": true,
                        "ipam": {
                            "type": "host-local",
                            "ranges": [[{"subnet": "198.18.0.0/24"}]],
                            "dataDir": ipam_dir,
                        }
                    }]
                }),
                ifname: "eth0".into(),
                host_netns: Some(PathBuf::from(format!("/run/netns/{}", ns.name()))),
            },
            cgroup_parent: cgroup.path().to_path_buf(),
            state_dir: work.path().join("state"),
            log_dir: work.path().join("logs"),
            log_limits: LogLimits::default(),
            backoff,
            host_ip: Some("198.18.0.1".parse().unwrap()),
            // dns: no cluster DNS here; pods get the node's resolv.conf (issue 8)
            dns: Default::default(),
        };
        let (stop, crash, runtime) = spawn_runtime(&kubeconfig, &config);
        Node {
            stop: Some(stop),
            crash: Some(crash),
            runtime: Some(runtime),
            config,
            kubeconfig,
            client,
            rt,
            ns,
            cgroup,
            ipam_dir,
            network,
            work,
            _api: api,
        }
    }

    /// Drops the runtime mid-flight (no shutdown: its pods are left running, as when the
    /// agent is killed) and starts a new one with the same configuration.
    fn crash_and_restart(&mut self) {
        if let Some(c) = self.crash.take() {
            let _ = c.send(());
        }
        if let Some(t) = self.runtime.take() {
            t.join().unwrap();
        }
        let (stop, crash, runtime) = spawn_runtime(&self.kubeconfig, &self.config);
        self.stop = Some(stop);
        self.crash = Some(crash);
        self.runtime = Some(runtime);
    }

    fn dir(&self) -> &Path {
        self.work.path()
    }

    fn pods(&self) -> Api<Pod> {
        Api::namespaced(self.client.clone(), "default")
    }

    fn create(&self, pod: serde_json::Value) {
        let mut pod = pod;
        pod["spec"]["nodeName"] = json!(NODE);
        let pod: Pod = serde_json::from_value(pod).unwrap();
        self.rt
            .block_on(self.pods().create(&PostParams::default(), &pod))
            .unwrap();
    }

    fn get(&self, name: &str) -> Option<Pod> {
        self.rt.block_on(self.pods().get_opt(name)).unwrap()
    }

    /// Polls the pod until `f` accepts it.
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
            if let Some(p) = self.get(name) {
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

    fn delete_and_wait_gone(&self, name: &str, timeout: Duration) {
        self.rt
            .block_on(self.pods().delete(name, &DeleteParams::default()))
            .unwrap();
        let deadline = Instant::now() + timeout;
        while self.get(name).is_some() {
            assert!(
                Instant::now() < deadline,
                "pod {name} still exists {timeout:?} after its deletion"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Host veths on the node's bridge.
    fn bridge_ports(&self) -> Vec<String> {
        let out = Command::new("ip")
            .args([
                "-n",
                self.ns.name(),
                "-o",
                "link",
                "show",
                "master",
                "skiff0",
            ])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.split(':').nth(1).map(|n| n.trim().to_string()))
            .collect()
    }

    /// IPAM reservation files (host-local layout: one file per address).
    fn reservations(&self) -> Vec<String> {
        std::fs::read_dir(self.ipam_dir.join(&self.network))
            .map(|rd| {
                rd.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| n.parse::<Ipv4Addr>().is_ok())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Waits until no veth, IPAM reservation or pod cgroup is left. The runtime deletes
    /// the Pod only after releasing them, but skiff's API server also removes a pod being
    /// deleted on any write to it (a status update racing the deletion), so the object
    /// can vanish first.
    fn wait_released(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let ports = self.bridge_ports();
            let ips = self.reservations();
            let cgroups = self.pod_cgroups();
            let state: Vec<_> = std::fs::read_dir(self.dir().join("state/pods"))
                .map(|rd| rd.flatten().map(|e| e.file_name()).collect())
                .unwrap_or_default();
            if ports.is_empty() && ips.is_empty() && cgroups.is_empty() && state.is_empty() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "left behind: veths {ports:?}, IPAM reservations {ips:?}, cgroups {cgroups:?}, pod state {state:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn pod_cgroups(&self) -> Vec<String> {
        std::fs::read_dir(self.cgroup.path())
            .unwrap()
            .flatten()
            .filter(|e| e.path().is_dir())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect()
    }
}

/// A thread running the runtime until `stop` (graceful: pods are stopped) or `crash`
/// (the runtime is dropped mid-flight).
fn spawn_runtime(
    kubeconfig: &Path,
    config: &Config,
) -> (
    tokio::sync::oneshot::Sender<()>,
    tokio::sync::oneshot::Sender<()>,
    std::thread::JoinHandle<()>,
) {
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let (crash_tx, crash_rx) = tokio::sync::oneshot::channel::<()>();
    let runtime_kubeconfig = kubeconfig.to_path_buf();
    let config = config.clone();
    let runtime = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            // Its own client: a kube Client's connection tasks run on the runtime
            // that created it, and the test's runtime only runs inside block_on.
            let rt_client = apiserver::client(&runtime_kubeconfig).await;
            tokio::select! {
                r = Runtime::run_until(rt_client, NODE, config, async {
                    let _ = stop_rx.await;
                }) => r.expect("runtime"),
                _ = crash_rx => {}
            }
        });
    });
    (stop_tx, crash_tx, runtime)
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

fn container_status(p: &Pod) -> Option<k8s_openapi::api::core::v1::ContainerStatus> {
    p.status
        .as_ref()?
        .container_statuses
        .as_ref()?
        .first()
        .cloned()
}

fn condition(p: &Pod, ty: &str) -> Option<String> {
    p.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == ty)
        .map(|c| c.status.clone())
}

fn wait_file(path: &Path, timeout: Duration) -> String {
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(s) = std::fs::read_to_string(path) {
            if !s.is_empty() {
                return s;
            }
        }
        assert!(
            Instant::now() < deadline,
            "{} did not appear within {timeout:?}",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// HTTP GET from inside the node namespace to the pod (an address in a test namespace).
fn http_status_from_node(node: &Node, ip: &str, port: u16) -> String {
    let addr: std::net::SocketAddr = format!("{ip}:{port}").parse().unwrap();
    node.ns.run(|| {
        use std::io::{Read as _, Write as _};
        let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2))
            .expect("connecting to the pod from the node namespace");
        s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        s.write_all(b"GET / HTTP/1.0\r\n\r\n").unwrap();
        let mut buf = [0u8; 64];
        let n = s.read(&mut buf).unwrap();
        String::from_utf8_lossy(&buf[..n])
            .lines()
            .next()
            .unwrap_or("")
            .to_string()
    })
}

#[test]
fn a_pod_gets_an_ip_becomes_ready_and_its_deletion_releases_everything() {
    let node = Node::start("rtweb", BackoffConfig::scaled(Duration::from_millis(200)));
    let d = node.dir().to_path_buf();
    for sub in ["cfg-mnt", "out", "out-mnt"] {
        std::fs::create_dir_all(d.join(sub)).unwrap();
    }
    let cm: ConfigMap = serde_json::from_value(json!({
        "metadata": {"name": "cfg"}, "data": {"greeting": "hello"}
    }))
    .unwrap();
    node.rt
        .block_on(
            Api::<ConfigMap>::namespaced(node.client.clone(), "default")
                .create(&PostParams::default(), &cm),
        )
        .unwrap();
    let out_mnt = d.join("out-mnt");
    let script = format!(
        "echo \"$POD_IP $POD_NAME $GREETING $(cat {cfg}/greeting) $(pwd)\" > {out}/info; \
         trap 'echo TERM > {out}/term; exit 0' TERM; \
         /usr/bin/python3 -m http.server 8080 --bind 0.0.0.0 >/dev/null 2>&1 & wait",
        cfg = d.join("cfg-mnt").display(),
        out = out_mnt.display(),
    );
    node.create(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "web", "namespace": "default"},
        "spec": {
            "terminationGracePeriodSeconds": 10,
            "volumes": [
                {"name": "cfg", "configMap": {"name": "cfg"}},
                {"name": "out", "hostPath": {"path": d.join("out"), "type": "Directory"}},
            ],
            "containers": [{
                "name": "web",
                "image": "skiff.local/host",
                "command": ["/bin/sh", "-c", script],
                "workingDir": "/tmp",
                "env": [
                    {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
                    {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                    {"name": "GREETING", "valueFrom": {"configMapKeyRef": {"name": "cfg", "key": "greeting"}}},
                ],
                "volumeMounts": [
                    {"name": "cfg", "mountPath": d.join("cfg-mnt"), "readOnly": true},
                    {"name": "out", "mountPath": out_mnt},
                ],
                "ports": [{"name": "http", "containerPort": 8080}],
                "readinessProbe": {"httpGet": {"path": "/", "port": "http"}, "periodSeconds": 1},
            }]
        }
    }));

    let pod = node.wait_pod("web", "Running and Ready", Duration::from_secs(60), |p| {
        (condition(p, "Ready").as_deref() == Some("True")).then(|| p.clone())
    });
    let st = pod.status.clone().unwrap();
    assert_eq!(st.phase.as_deref(), Some("Running"));
    let ip: Ipv4Addr = st.pod_ip.as_deref().unwrap().parse().unwrap();
    assert_eq!(ip.octets()[..3], [198, 18, 0], "{ip} from the pod CIDR");
    assert_eq!(
        st.pod_ips.as_ref().unwrap()[0].ip,
        ip.to_string(),
        "podIPs mirrors podIP"
    );
    assert_eq!(st.host_ip.as_deref(), Some("198.18.0.1"));
    assert!(st.start_time.is_some());
    for c in ["PodScheduled", "Initialized", "ContainersReady", "Ready"] {
        assert_eq!(condition(&pod, c).as_deref(), Some("True"), "{c}");
    }
    let cs = container_status(&pod).unwrap();
    assert!(cs.ready && cs.started == Some(true));
    assert_eq!(cs.restart_count, 0);
    assert!(cs.state.unwrap().running.is_some());
    assert_eq!(cs.image, "skiff.local/host");

    // Env (fieldRef, configMapKeyRef), configMap volume (read-only bind mount), hostPath
    // volume (written through its mountPath, read at its node path), workingDir.
    let info = wait_file(&d.join("out/info"), Duration::from_secs(10));
    assert_eq!(info.trim(), format!("{ip} web hello hello /tmp"));
    assert!(
        std::fs::read_dir(d.join("out-mnt"))
            .unwrap()
            .next()
            .is_none(),
        "the bind mount stayed private to the container"
    );

    // The pod's address answers on the node's bridge, from the node namespace.
    assert!(http_status_from_node(&node, &ip.to_string(), 8080).starts_with("HTTP/1.0 200"));
    assert_eq!(node.bridge_ports().len(), 1, "one veth on the bridge");
    assert_eq!(node.reservations(), [ip.to_string()]);
    assert_eq!(node.pod_cgroups().len(), 1);
    // The container's log is written in the CRI format.
    let uid = pod.metadata.uid.clone().unwrap();
    let log_dir = d.join(format!("logs/default_web_{uid}/web"));
    assert!(log_dir.join("0.log").exists(), "{}", log_dir.display());

    node.delete_and_wait_gone("web", Duration::from_secs(30));
    assert_eq!(
        std::fs::read_to_string(d.join("out/term")).ok().as_deref(),
        Some("TERM\n"),
        "the container got SIGTERM"
    );
    node.wait_released();
}

#[test]
fn a_crashing_container_restarts_with_growing_backoff() {
    let node = Node::start("rtcrash", BackoffConfig::scaled(Duration::from_millis(200)));
    let starts = node.dir().join("starts");
    node.create(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "crash"},
        "spec": {"restartPolicy": "Always", "containers": [{
            "name": "c", "image": "skiff.local/host",
            "command": ["/bin/sh", "-c", format!("date +%s%N >> {}; exit 1", starts.display())],
        }]}
    }));
    // Restarts 1..4 come after 0, 200, 400, 800 ms (the first restart is immediate).
    let deadline = Instant::now() + Duration::from_secs(30);
    let times: Vec<u128> = loop {
        let t: Vec<u128> = std::fs::read_to_string(&starts)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect();
        if t.len() >= 5 {
            break t;
        }
        assert!(
            Instant::now() < deadline,
            "only {} starts; pod status: {}",
            t.len(),
            serde_json::to_string_pretty(&node.get("crash").and_then(|p| p.status)).unwrap()
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let gaps: Vec<u128> = times
        .windows(2)
        .map(|w| (w[1] - w[0]) / 1_000_000)
        .collect();
    for (i, want) in [(1, 200u128), (2, 400), (3, 800)] {
        assert!(
            gaps[i] >= want,
            "restart {} after {} ms (< {want}): {gaps:?}",
            i + 1,
            gaps[i]
        );
    }
    assert!(gaps[3] > gaps[1], "the delay grows: {gaps:?}");

    let cs = node.wait_pod("crash", "CrashLoopBackOff", Duration::from_secs(30), |p| {
        let cs = container_status(p)?;
        let w = cs.state.as_ref()?.waiting.as_ref()?;
        (w.reason.as_deref() == Some("CrashLoopBackOff") && cs.restart_count >= 4).then_some(cs)
    });
    let last = cs.last_state.unwrap().terminated.unwrap();
    assert_eq!((last.exit_code, last.reason.as_deref()), (1, Some("Error")));
    let msg = cs.state.unwrap().waiting.unwrap().message.unwrap();
    assert!(
        msg.starts_with("back-off ") && msg.ends_with("restarting failed container=c pod=crash"),
        "{msg}"
    );
    let pod = node.get("crash").unwrap();
    assert_eq!(
        pod.status.as_ref().unwrap().phase.as_deref(),
        Some("Running"),
        "a crash-looping Always pod is Running"
    );
    assert_eq!(condition(&pod, "Ready").as_deref(), Some("False"));
    node.delete_and_wait_gone("crash", Duration::from_secs(30));
    node.wait_released();
}

#[test]
fn a_failing_liveness_probe_restarts_the_container() {
    let node = Node::start("rtlive", BackoffConfig::scaled(Duration::from_millis(200)));
    let alive = node.dir().join("alive");
    let starts = node.dir().join("starts");
    node.create(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "live"},
        "spec": {"terminationGracePeriodSeconds": 2, "containers": [{
            "name": "c", "image": "skiff.local/host",
            "command": ["/bin/sh", "-c", format!("date +%s%N >> {}; exec sleep 1000", starts.display())],
            "livenessProbe": {
                "exec": {"command": ["/bin/sh", "-c", format!("test -e {}", alive.display())]},
                "periodSeconds": 1, "failureThreshold": 2,
            },
        }]}
    }));
    let cs = node.wait_pod("live", "a liveness restart", Duration::from_secs(40), |p| {
        let cs = container_status(p)?;
        (cs.restart_count >= 1 && cs.state.as_ref()?.running.is_some()).then_some(cs)
    });
    // sleep ignores nothing: SIGTERM ended it (128 + 15).
    let last = cs.last_state.unwrap().terminated.unwrap();
    assert_eq!(last.exit_code, 143, "{last:?}");
    // The restarted shell appends its line just after it is reported running: poll.
    let deadline = Instant::now() + Duration::from_secs(5);
    while wait_file(&starts, Duration::from_secs(1)).lines().count() < 2 {
        assert!(
            Instant::now() < deadline,
            "the restarted container never ran"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    std::fs::write(&alive, "").unwrap();
    node.delete_and_wait_gone("live", Duration::from_secs(30));
    node.wait_released();
}

#[test]
fn an_unknown_image_is_err_image_pull() {
    let node = Node::start("rtimg", BackoffConfig::scaled(Duration::from_millis(200)));
    node.create(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "img"},
        "spec": {"containers": [{"name": "c", "image": "nginx:1.27", "command": ["nginx"]}]}
    }));
    let w = node.wait_pod("img", "ErrImagePull", Duration::from_secs(30), |p| {
        let w = container_status(p)?.state?.waiting?;
        (w.reason.as_deref() == Some("ErrImagePull")).then_some(w)
    });
    let msg = w.message.unwrap();
    assert!(
        msg.contains("nginx:1.27") && msg.contains("skiff.local/host"),
        "the message says where images are looked up: {msg}"
    );
    let pod = node.get("img").unwrap();
    assert_eq!(pod.status.unwrap().phase.as_deref(), Some("Pending"));
    assert_eq!(node.reservations().len(), 1, "the sandbox exists");
    node.delete_and_wait_gone("img", Duration::from_secs(30));
    node.wait_released();
}

/// A minimal root filesystem: /bin/sh and the libraries `ldd` names.
fn make_rootfs(root: &Path) {
    let out = Command::new("ldd").arg("/bin/sh").output().unwrap();
    let mut files = vec![PathBuf::from("/bin/sh")];
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        // "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)" or "/lib64/ld-linux... (0x...)"
        let path = line
            .split("=>")
            .last()
            .and_then(|r| r.split_whitespace().next())
            .filter(|p| p.starts_with('/'));
        if let Some(p) = path {
            files.push(PathBuf::from(p));
        }
    }
    for f in files {
        let dst = root.join(f.strip_prefix("/").unwrap());
        std::fs::create_dir_all(dst.parent().unwrap()).unwrap();
        std::fs::copy(&f, &dst).unwrap_or_else(|e| panic!("copying {}: {e}", f.display()));
    }
    for d in ["proc", "dev"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
}

#[test]
fn a_rootfs_image_runs_chrooted_after_its_init_container() {
    let node = Node::start("rtroot", BackoffConfig::scaled(Duration::from_millis(200)));
    let root = node.dir().join("rootfs");
    make_rootfs(&root);
    let out = node.dir().join("out");
    std::fs::create_dir_all(&out).unwrap();
    let image = format!("skiff.local/rootfs{}", root.display());
    node.create(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "chroot"},
        "spec": {
            "restartPolicy": "Never",
            "volumes": [
                {"name": "data", "emptyDir": {}},
                {"name": "out", "hostPath": {"path": out, "type": "Directory"}},
            ],
            "initContainers": [{
                "name": "init", "image": image,
                "command": ["/bin/sh", "-c", "echo from-init > /data/msg"],
                "volumeMounts": [{"name": "data", "mountPath": "/data"}],
            }],
            "containers": [{
                "name": "main", "image": image,
                "command": ["/bin/sh", "-c",
                    "read x < /data/msg; echo \"$x\" > /out/msg; cd /; echo * > /out/listing; read c < /proc/self/comm; echo \"$c\" > /out/comm"],
                "volumeMounts": [
                    {"name": "data", "mountPath": "/data"},
                    {"name": "out", "mountPath": "/out"},
                ],
            }],
        }
    }));
    let pod = node.wait_pod("chroot", "Succeeded", Duration::from_secs(30), |p| {
        (p.status.as_ref()?.phase.as_deref() == Some("Succeeded")).then(|| p.clone())
    });
    let st = pod.status.clone().unwrap();
    let init = &st.init_container_statuses.as_ref().unwrap()[0];
    let t = init.state.as_ref().unwrap().terminated.as_ref().unwrap();
    assert_eq!((t.exit_code, t.reason.as_deref()), (0, Some("Completed")));
    let main = &st.container_statuses.as_ref().unwrap()[0];
    let t = main.state.as_ref().unwrap().terminated.as_ref().unwrap();
    assert_eq!((t.exit_code, t.reason.as_deref()), (0, Some("Completed")));
    assert_eq!(condition(&pod, "Initialized").as_deref(), Some("True"));
    assert_eq!(condition(&pod, "Ready").as_deref(), Some("False"));
    // The init container's output reached the main container through the emptyDir;
    // the main container saw only the root filesystem (and its mounts) at /.
    assert_eq!(
        std::fs::read_to_string(out.join("msg")).unwrap(),
        "from-init\n"
    );
    let listing = std::fs::read_to_string(out.join("listing")).unwrap();
    let mut entries: Vec<&str> = listing.split_whitespace().collect();
    entries.sort();
    assert!(
        entries.contains(&"data") && entries.contains(&"out") && !entries.contains(&"work"),
        "{entries:?}"
    );
    assert_eq!(
        std::fs::read_to_string(out.join("comm")).unwrap(),
        "sh\n",
        "/proc is mounted"
    );
    node.delete_and_wait_gone("chroot", Duration::from_secs(30));
    node.wait_released();
}

#[test]
fn a_container_ignoring_sigterm_is_killed_after_its_grace_period() {
    let node = Node::start("rtkill", BackoffConfig::scaled(Duration::from_millis(200)));
    let ready = node.dir().join("ready");
    node.create(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "stubborn"},
        "spec": {"terminationGracePeriodSeconds": 2, "containers": [{
            "name": "c", "image": "skiff.local/host",
            // A child in the background that ignores SIGTERM too: cgroup.kill gets both.
            "command": ["/bin/sh", "-c", format!("trap '' TERM; sleep 1000 & touch {}; while :; do sleep 1; done", ready.display())],
        }]}
    }));
    node.wait_pod("stubborn", "Running", Duration::from_secs(30), |p| {
        (p.status.as_ref()?.phase.as_deref() == Some("Running")).then_some(())
    });
    wait_file_exists(&ready, Duration::from_secs(10));
    let t0 = Instant::now();
    node.delete_and_wait_gone("stubborn", Duration::from_secs(30));
    let took = t0.elapsed();
    assert!(
        took >= Duration::from_secs(2),
        "the pod went after {took:?}, before its 2 s grace period"
    );
    node.wait_released();
}

fn wait_file_exists(path: &Path, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    while !path.exists() {
        assert!(
            Instant::now() < deadline,
            "{} did not appear",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_restarted_runtime_adopts_its_running_pods() {
    let mut node = Node::start("rtadopt", BackoffConfig::scaled(Duration::from_millis(200)));
    let out = node.dir().join("adopt-out");
    std::fs::create_dir_all(&out).unwrap();
    node.create(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "keeper", "namespace": "default"},
        "spec": {"containers": [{
            "name": "c", "image": "skiff.local/host",
            "command": ["/bin/sh", "-c", format!(
                "echo $$$$ > {o}/pid; i=0; while true; do i=$((i+1)); echo \"tick $i\"; sleep 0.05; done",
                o = out.display())],
        }]}
    }));
    let before = node.wait_pod(
        "keeper",
        "running with an IP",
        Duration::from_secs(30),
        |p| {
            let c = container_status(p)?;
            (c.state.as_ref()?.running.is_some() && p.status.as_ref()?.pod_ip.is_some())
                .then(|| p.clone())
        },
    );
    let pid: i32 = wait_file(&out.join("pid"), Duration::from_secs(10))
        .trim()
        .parse()
        .unwrap();
    let uid = before.metadata.uid.clone().unwrap();
    let log = node
        .dir()
        .join(format!("logs/default_keeper_{uid}/c/0.log"));
    let ticks = |log: &Path| -> Vec<u64> {
        std::fs::read_to_string(log)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.rsplit_once("tick ").and_then(|(_, n)| n.parse().ok()))
            .collect()
    };
    let c0 = container_status(&before).unwrap();

    node.crash_and_restart();

    // The new runtime reads the same process's output again: the log keeps counting.
    let last_before = *ticks(&log).last().unwrap_or(&0);
    let deadline = Instant::now() + Duration::from_secs(30);
    while ticks(&log).last().copied().unwrap_or(0) < last_before + 20 {
        assert!(
            Instant::now() < deadline,
            "the log did not continue after the restart: {:?}",
            ticks(&log).last()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let t = ticks(&log);
    assert!(
        t.windows(2).all(|w| w[1] == w[0] + 1),
        "ticks restarted or jumped: the container was restarted"
    );
    // Same process, same pod IP, same container ID, restart count and start time.
    assert_eq!(
        wait_file(&out.join("pid"), Duration::from_secs(1))
            .trim()
            .parse::<i32>()
            .unwrap(),
        pid
    );
    assert!(Path::new(&format!("/proc/{pid}")).exists());
    let after = node.wait_pod(
        "keeper",
        "the status of the adopted pod",
        Duration::from_secs(10),
        |p| {
            let c = container_status(p)?;
            c.state.as_ref()?.running.is_some().then(|| p.clone())
        },
    );
    let c1 = container_status(&after).unwrap();
    assert_eq!(
        after.status.as_ref().unwrap().pod_ip,
        before.status.as_ref().unwrap().pod_ip
    );
    assert_eq!(
        (c1.restart_count, &c1.container_id),
        (c0.restart_count, &c0.container_id)
    );
    assert_eq!(
        c1.state.unwrap().running.unwrap().started_at,
        c0.state.unwrap().running.unwrap().started_at
    );
    // Its network namespace was reopened: deleting the pod releases everything (CNI DEL
    // in the adopted namespace).
    node.delete_and_wait_gone("keeper", Duration::from_secs(30));
    node.wait_released();
    assert!(
        !Path::new(&format!("/proc/{pid}/stat")).exists()
            || std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .unwrap()
                .contains(") Z ")
    );
}

#[test]
fn pods_deleted_while_no_runtime_ran_are_released_at_restart() {
    let mut node = Node::start("rtgone", BackoffConfig::scaled(Duration::from_millis(200)));
    let out = node.dir().join("gone-out");
    std::fs::create_dir_all(&out).unwrap();
    for name in ["graceful", "forced"] {
        node.create(json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": "default"},
            "spec": {"containers": [{
                "name": "c", "image": "skiff.local/host",
                "command": ["/bin/sh", "-c", format!("echo $$$$ > {}/{name}; exec sleep 3600", out.display())],
            }]}
        }));
        node.wait_pod(name, "running", Duration::from_secs(30), |p| {
            container_status(p)?.state?.running.map(|_| ())
        });
    }
    let pid = |name: &str| -> i32 {
        wait_file(&out.join(name), Duration::from_secs(10))
            .trim()
            .parse()
            .unwrap()
    };
    let pids = [pid("graceful"), pid("forced")];
    // The runtime goes away; meanwhile one pod is deleted gracefully (it waits for a
    // kubelet to finalise it) and the other is force-deleted (gone from the API).
    if let Some(c) = node.crash.take() {
        let _ = c.send(());
    }
    node.runtime.take().unwrap().join().unwrap();
    node.rt
        .block_on(node.pods().delete("graceful", &DeleteParams::default()))
        .unwrap();
    node.rt
        .block_on(
            node.pods()
                .delete("forced", &DeleteParams::default().grace_period(0)),
        )
        .unwrap();
    let (stop, crash, runtime) = spawn_runtime(&node.kubeconfig, &node.config);
    node.stop = Some(stop);
    node.crash = Some(crash);
    node.runtime = Some(runtime);
    let deadline = Instant::now() + Duration::from_secs(30);
    while node.get("graceful").is_some() {
        assert!(
            Instant::now() < deadline,
            "the graceful deletion was not finalised"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    node.wait_released();
    for p in pids {
        let stat = std::fs::read_to_string(format!("/proc/{p}/stat")).unwrap_or_default();
        assert!(
            stat.is_empty() || stat.contains(") Z "),
            "process {p} still runs: {stat}"
        );
    }
}
