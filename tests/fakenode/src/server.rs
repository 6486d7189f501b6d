//! A real `skiff-controlplane server` process on 127.0.0.1 for the benchmarks: a fresh
//! data directory under the system temp dir (removed on drop, after the process is
//! killed), the admin kubeconfig it writes, and a client once `/readyz` says ok.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};

/// How long a server gets to write its kubeconfig and answer `/readyz`.
const START_DEADLINE: Duration = Duration::from_secs(60);

pub struct BenchServer {
    child: Child,
    dir: PathBuf,
    pub client: kube::Client,
}

impl Drop for BenchServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl BenchServer {
    /// Starts `bin server --listen 127.0.0.1:0 --data-dir <tmp>/data <extra>`; `tag`
    /// names the temp dir (`skiff-<tag>-<pid>`).
    pub async fn start(bin: &Path, tag: &str, extra: &[&str]) -> anyhow::Result<BenchServer> {
        let dir = std::env::temp_dir().join(format!("skiff-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let data = dir.join("data");
        let log = std::fs::File::create(dir.join("server.log"))?;
        let child = Command::new(bin)
            .args(["server", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(&data)
            .args(extra)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        // From here on the guard cleans up, whatever fails next.
        let mut guard = Guard(Some((child, dir.clone())));
        let kubeconfig = data.join("admin.kubeconfig");
        let deadline = Instant::now() + START_DEADLINE;
        while !std::fs::read_to_string(&kubeconfig).is_ok_and(|t| t.contains("server: ")) {
            if Instant::now() > deadline {
                bail!(
                    "no kubeconfig from {} within {START_DEADLINE:?}; its log:\n{}",
                    bin.display(),
                    std::fs::read_to_string(dir.join("server.log")).unwrap_or_default()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let kc = kube::config::Kubeconfig::read_from(&kubeconfig)?;
        let client = kube::Client::try_from(
            kube::Config::from_custom_kubeconfig(kc, &Default::default()).await?,
        )?;
        loop {
            let req = http::Request::get("/readyz")
                .body(Vec::new())
                .expect("request");
            if client.request_text(req).await.is_ok_and(|t| t == "ok") {
                break;
            }
            if Instant::now() > deadline {
                bail!("{} not ready within {START_DEADLINE:?}", bin.display());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let (child, dir) = guard.0.take().expect("guard armed");
        Ok(BenchServer { child, dir, client })
    }

    /// The server's stderr so far (for a failed run's report).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("server.log")).unwrap_or_default()
    }
}

struct Guard(Option<(Child, PathBuf)>);

impl Drop for Guard {
    fn drop(&mut self) {
        if let Some((mut child, dir)) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// The 1-minute load average (`/proc/loadavg`), printed with every benchmark result so a
/// reader knows how busy the machine was.
pub fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| {
            let f: Vec<&str> = s.split_whitespace().take(3).collect();
            (f.len() == 3).then(|| f.join(" "))
        })
        .unwrap_or_else(|| "unknown".into())
}
