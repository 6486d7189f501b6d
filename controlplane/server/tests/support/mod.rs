//! Shared test support: a real `skiff-controlplane` process (or an in-process server with
//! a store handle) on 127.0.0.1 with a free port and a temporary data directory.

#![allow(dead_code)] // each test binary uses part of this module

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long a server gets to come up (a cold debug binary on a busy CI machine).
pub const START_DEADLINE: Duration = Duration::from_secs(60);

/// Something a test needs is missing: under `CI=true` that is a failure, otherwise the
/// test prints `SKIPPED: <why>` and returns.
pub fn skip_or_fail(why: &str) {
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{why} (CI=true: a missing test dependency is a failure)");
    }
    eprintln!("SKIPPED: {why}");
}

/// A server process; killed on drop.
pub struct ServerProcess {
    child: Child,
    pub dir: tempfile::TempDir,
    pub kubeconfig: PathBuf,
    pub url: String,
}

impl ServerProcess {
    /// Starts the binary with `--listen 127.0.0.1:0` and waits for its kubeconfig; call
    /// [`wait_ready`] before using it.
    pub fn start() -> ServerProcess {
        ServerProcess::start_in(tempfile::tempdir().expect("creating a temporary data directory"))
    }

    /// Stops the process and returns its directory (data dir and log) for a restart.
    pub fn stop(mut self) -> tempfile::TempDir {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let dir = tempfile::tempdir().expect("placeholder dir");
        std::mem::replace(&mut self.dir, dir)
    }

    /// Starts in `dir` (`dir/data` is the data directory; an existing one is reused).
    pub fn start_in(dir: tempfile::TempDir) -> ServerProcess {
        ServerProcess::start_in_with(dir, &[])
    }

    /// [`ServerProcess::start`] with extra `server` flags.
    pub fn start_with(extra: &[&str]) -> ServerProcess {
        ServerProcess::start_in_with(
            tempfile::tempdir().expect("creating a temporary data directory"),
            extra,
        )
    }

    /// [`ServerProcess::start_in`] with extra `server` flags.
    pub fn start_in_with(dir: tempfile::TempDir, extra: &[&str]) -> ServerProcess {
        let _ = std::fs::remove_file(dir.path().join("data/admin.kubeconfig"));
        let log = std::fs::File::create(dir.path().join("server.log")).expect("server log");
        let child = Command::new(env!("CARGO_BIN_EXE_skiff-controlplane"))
            .args(["server", "--data-dir"])
            .arg(dir.path().join("data"))
            .args(["--listen", "127.0.0.1:0"])
            .args(extra)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawning skiff-controlplane");
        let kubeconfig = dir.path().join("data/admin.kubeconfig");
        let deadline = Instant::now() + START_DEADLINE;
        let mut s = ServerProcess {
            child,
            dir,
            kubeconfig,
            url: String::new(),
        };
        loop {
            if let Ok(text) = std::fs::read_to_string(&s.kubeconfig) {
                if let Some(line) = text
                    .lines()
                    .find(|l| l.trim_start().starts_with("server: "))
                {
                    s.url = line.trim_start().trim_start_matches("server: ").to_string();
                    break;
                }
            }
            if let Ok(Some(status)) = s.child.try_wait() {
                panic!("skiff-controlplane exited with {status}: {}", s.log());
            }
            assert!(
                Instant::now() < deadline,
                "no kubeconfig after {START_DEADLINE:?}: {}",
                s.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        s
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    // cpbench helper: graceful stop (leader Lease release on shutdown)
    /// Sends SIGTERM (a graceful stop, unlike the SIGKILL of `Drop`).
    pub fn terminate(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("running kill");
        assert!(status.success(), "kill -TERM {}: {status}", self.child.id());
    }

    /// The exit status once the process has exited, without waiting.
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }
    // end cpbench helper
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A kube-rs client for a kubeconfig.
pub async fn kube_client(kubeconfig: &Path) -> kube::Client {
    let kc = kube::config::Kubeconfig::read_from(kubeconfig).expect("reading the kubeconfig");
    let cfg = kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
        .await
        .expect("kubeconfig -> kube::Config");
    kube::Client::try_from(cfg).expect("kube client")
}

/// Polls `/readyz` until it answers `ok` or the deadline passes.
pub async fn wait_ready(client: &kube::Client) {
    let deadline = Instant::now() + START_DEADLINE;
    loop {
        let req = http::Request::get("/readyz").body(Vec::new()).unwrap();
        match client.request_text(req).await {
            Ok(t) if t == "ok" => return,
            other => {
                assert!(Instant::now() < deadline, "server not ready: {other:?}");
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
        }
    }
}

/// The directory holding the versioned kubectl binaries (`kubectl.1.29` ... `kubectl.1.33`)
/// next to the `kubectl` on PATH.
pub fn kubectl_dir() -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    for d in std::env::split_paths(&path) {
        let k = d.join("kubectl");
        if k.is_file() {
            let real = std::fs::canonicalize(&k).ok()?;
            return real.parent().map(Path::to_path_buf);
        }
    }
    None
}

/// `kubectl.<version>` (e.g. `1.29`), if installed.
pub fn kubectl(version: &str) -> Option<PathBuf> {
    let p = kubectl_dir()?.join(format!("kubectl.{version}"));
    p.is_file().then_some(p)
}

/// A throwaway single-member etcd on 127.0.0.1 (ports picked free; retried if taken).
pub struct Etcd {
    child: Child,
    pub url: String,
    _dir: tempfile::TempDir,
}

impl Drop for Etcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind an ephemeral port on 127.0.0.1")
        .port()
}

impl Etcd {
    /// Starts etcd and connects a store to it, or returns None after SKIPPED (a failure
    /// under CI=true) when etcd is not installed.
    pub async fn start() -> Option<(Etcd, skiff_store::EtcdStore)> {
        let binary = std::env::var_os("PATH").and_then(|p| {
            std::env::split_paths(&p)
                .map(|d| d.join("etcd"))
                .find(|p| p.is_file())
        });
        let Some(binary) = binary else {
            skip_or_fail("etcd is not installed (apt-get install etcd-server)");
            return None;
        };
        let mut last = String::new();
        for _ in 0..3 {
            let dir = tempfile::tempdir().expect("temp dir");
            let url = format!("http://127.0.0.1:{}", free_port());
            let peer = format!("http://127.0.0.1:{}", free_port());
            let log_path = dir.path().join("etcd.log");
            let child = Command::new(&binary)
                .arg("--name=test")
                .arg(format!("--data-dir={}", dir.path().join("data").display()))
                .arg(format!("--listen-client-urls={url}"))
                .arg(format!("--advertise-client-urls={url}"))
                .arg(format!("--listen-peer-urls={peer}"))
                .arg(format!("--initial-advertise-peer-urls={peer}"))
                .arg(format!("--initial-cluster=test={peer}"))
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(&log_path).expect("etcd log"))
                .spawn()
                .expect("spawn etcd");
            let mut etcd = Etcd {
                child,
                url,
                _dir: dir,
            };
            let deadline = Instant::now() + START_DEADLINE;
            loop {
                if let Ok(Some(status)) = etcd.child.try_wait() {
                    last = format!(
                        "etcd exited with {status}: {}",
                        std::fs::read_to_string(&log_path).unwrap_or_default()
                    );
                    break;
                }
                let mut cfg = skiff_store::EtcdConfig::new([etcd.url.clone()]);
                cfg.connect_timeout = Duration::from_millis(500);
                cfg.key_prefix = "/skiff-test".into();
                if let Ok(store) = skiff_store::EtcdStore::connect(cfg).await {
                    use skiff_store::Store;
                    if store.current_revision().await.is_ok() {
                        return Some((etcd, store));
                    }
                }
                if Instant::now() > deadline {
                    last = "etcd not ready before the deadline".into();
                    break;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        panic!("etcd did not start: {last}");
    }
}

/// An API server in this process, with a handle on its store (tests compact it).
pub struct InProcess {
    pub server: Option<skiff_apiserver::RunningServer>,
    pub store: std::sync::Arc<dyn skiff_store::Store>,
    pub client: kube::Client,
    pub dir: tempfile::TempDir,
    pub etcd: Option<Etcd>,
}

impl Drop for InProcess {
    fn drop(&mut self) {
        if let Some(s) = self.server.take() {
            drop(tokio::spawn(s.shutdown()));
        }
    }
}

impl InProcess {
    /// Over a fresh redb store; watches without timeoutSeconds last `min_request_timeout`
    /// (to 2x).
    pub async fn redb(min_request_timeout: Duration) -> InProcess {
        let dir = tempfile::tempdir().unwrap();
        let store = std::sync::Arc::new(
            skiff_store::RedbStore::open(dir.path().join("store.redb"), Default::default())
                .expect("redb store"),
        );
        InProcess::start_with(dir, store, None, min_request_timeout).await
    }

    pub async fn start_with(
        dir: tempfile::TempDir,
        store: std::sync::Arc<dyn skiff_store::Store>,
        etcd: Option<Etcd>,
        min_request_timeout: Duration,
    ) -> InProcess {
        InProcess::start_configured(dir, store, etcd, |cfg| {
            cfg.min_request_timeout = min_request_timeout
        })
        .await
    }

    // cp helper: in-process server with a tuned Config (watch cache history)
    /// Over a fresh redb store, with `configure` applied to the server's Config.
    pub async fn redb_configured(
        configure: impl FnOnce(&mut skiff_apiserver::Config),
    ) -> InProcess {
        let dir = tempfile::tempdir().unwrap();
        let store = std::sync::Arc::new(
            skiff_store::RedbStore::open(dir.path().join("store.redb"), Default::default())
                .expect("redb store"),
        );
        InProcess::start_configured(dir, store, None, configure).await
    }
    // end cp helper

    pub async fn start_configured(
        dir: tempfile::TempDir,
        store: std::sync::Arc<dyn skiff_store::Store>,
        etcd: Option<Etcd>,
        configure: impl FnOnce(&mut skiff_apiserver::Config),
    ) -> InProcess {
        let mut cfg =
            skiff_apiserver::Config::new(dir.path().to_path_buf(), "127.0.0.1:0".parse().unwrap());
        configure(&mut cfg);
        let server = skiff_apiserver::start(cfg, store.clone())
            .await
            .expect("starting the API server");
        let client = kube_client(&server.credentials.kubeconfig_path).await;
        wait_ready(&client).await;
        InProcess {
            server: Some(server),
            store,
            client,
            dir,
            etcd,
        }
    }

    pub fn kubeconfig(&self) -> PathBuf {
        self.dir.path().join("admin.kubeconfig")
    }
}

// ---------------------------------------------------------------------------------------
// scheduler helper: a kubectl with its own HOME.

/// A kubectl (the newest installed of 1.33..1.29) with its own HOME against `kubeconfig`;
/// None after SKIPPED (a failure under CI=true) when none is installed.
pub struct SchedKubectl {
    bin: PathBuf,
    home: tempfile::TempDir,
    kubeconfig: PathBuf,
}

impl SchedKubectl {
    pub fn new(kubeconfig: &Path) -> Option<SchedKubectl> {
        let Some(bin) = ["1.33", "1.32", "1.31", "1.30", "1.29"]
            .iter()
            .find_map(|v| kubectl(v))
        else {
            skip_or_fail("no kubectl.1.29..1.33 next to the kubectl on PATH");
            return None;
        };
        Some(SchedKubectl {
            bin,
            home: tempfile::tempdir().unwrap(),
            kubeconfig: kubeconfig.to_path_buf(),
        })
    }

    /// Runs `kubectl args...` (stdin from `input` if given), asserts success, returns stdout.
    pub fn ok(&self, args: &[&str], input: Option<&str>) -> String {
        use std::io::Write as _;
        let mut c = Command::new(&self.bin);
        c.env("HOME", self.home.path())
            .env_remove("KUBECONFIG")
            .arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = c.spawn().expect("running kubectl");
        if let Some(i) = input {
            child.stdin.take().unwrap().write_all(i.as_bytes()).unwrap();
        }
        drop(child.stdin.take());
        let out = child.wait_with_output().expect("kubectl output");
        assert!(
            out.status.success(),
            "kubectl {args:?} failed ({}):\nstdout: {}\nstderr: {}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}
// end scheduler helper
