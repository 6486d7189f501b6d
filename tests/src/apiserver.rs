//! A real `skiff-controlplane` process on loopback for the agent tests (the binary that
//! `cargo xtask test` builds before the privileged suite), removed with its data
//! directory on drop.

use std::{
    net::TcpListener,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

/// `target/debug/skiff-controlplane`, next to the test binary's `deps/` directory.
pub fn controlplane_binary() -> PathBuf {
    sibling_binary("skiff-controlplane")
}

/// A binary of this workspace next to the running test's `deps/` directory.
pub fn sibling_binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("the test binary's path");
    let bin = exe
        .parent()
        .and_then(Path::parent)
        .expect("target/debug/deps/<test>")
        .join(name);
    assert!(
        bin.exists(),
        "{} is missing: run `cargo build -p {name}` (cargo xtask test does)",
        bin.display()
    );
    bin
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("an ephemeral port on 127.0.0.1")
        .port()
}

pub struct ApiServer {
    child: Option<Child>,
    pub dir: PathBuf,
    pub port: u16,
    extra: Vec<String>,
}

impl ApiServer {
    /// Starts `skiff-controlplane server` with `extra` flags in a fresh data directory.
    pub fn start(tag: &str, extra: &[&str]) -> ApiServer {
        let port = free_port();
        let dir =
            std::env::temp_dir().join(format!("skiff-test-{tag}-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("the data directory");
        ApiServer::start_in(&dir, port, extra)
    }

    /// Starts the server on `dir` and `port`. Its stderr goes to `<dir>/server.log`
    /// (appended across restarts), which a failing test can print.
    pub fn start_in(dir: &Path, port: u16, extra: &[&str]) -> ApiServer {
        let mut server = ApiServer {
            child: None,
            dir: dir.to_path_buf(),
            port,
            extra: extra.iter().map(|s| s.to_string()).collect(),
        };
        server.restart();
        server
    }

    /// Kills the server (SIGKILL: a crash, not a clean shutdown), keeping its data.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Stops the server if it runs and starts it again on the same data, port and flags.
    pub fn restart(&mut self) {
        self.stop();
        std::fs::create_dir_all(&self.dir).expect("the data directory");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("server.log"))
            .expect("the server log");
        let child = Command::new(controlplane_binary())
            .args(["server", "--data-dir"])
            .arg(&self.dir)
            .args(["--listen", &format!("127.0.0.1:{}", self.port)])
            .args(&self.extra)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("starting skiff-controlplane");
        self.child = Some(child);
    }

    pub fn kubeconfig(&self) -> PathBuf {
        self.dir.join("admin.kubeconfig")
    }

    pub fn url(&self) -> String {
        format!("https://127.0.0.1:{}", self.port)
    }

    /// A client for the admin kubeconfig, once the server answers.
    pub async fn client(&self) -> kube::Client {
        client(&self.kubeconfig()).await
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A client for `kubeconfig`, polling until the file exists and the server answers.
pub async fn client(kubeconfig: &Path) -> kube::Client {
    // Generous: it only bounds a test that fails anyway, and a first start of a debug
    // build on a loaded machine generates certificates and opens the store.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if kubeconfig.exists() {
            if let Ok(kc) = kube::config::Kubeconfig::read_from(kubeconfig) {
                if let Ok(conf) =
                    kube::Config::from_custom_kubeconfig(kc, &Default::default()).await
                {
                    if let Ok(c) = kube::Client::try_from(conf) {
                        if c.apiserver_version().await.is_ok() {
                            return c;
                        }
                    }
                }
            }
        }
        assert!(
            Instant::now() < deadline,
            "the API server behind {} did not become ready",
            kubeconfig.display()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
