//! The pod sandbox: a network namespace attached through CNI, a cgroup under the
//! runtime's parent (the socket-LB attach point) with one child per container, and a
//! directory for volumes.
//!
//! The network namespace is held by an open file descriptor rather than a bind mount: it
//! lives exactly as long as the runtime holds it or a container runs in it, no mount
//! point can leak (including into containers' private mount namespaces, which would pin
//! other pods' namespaces), and CNI plugins get it as `/proc/<runtime pid>/fd/<fd>`.
//! (`nsenter --net=/proc/<pid>/fd/<fd>` enters it for debugging.)

use std::{
    fs::File,
    net::IpAddr,
    os::fd::AsRawFd as _,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use k8s_openapi::api::core::v1::Pod;
use nix::sched::{unshare, CloneFlags};
use serde_json::Value;

use crate::{cni, process, Config};

/// Name of a pod's cgroup under the parent.
pub fn pod_cgroup_name(uid: &str) -> String {
    format!("skiff-pod-{uid}")
}

#[derive(Debug)]
pub struct Sandbox {
    pub uid: String,
    pub netns: Arc<File>,
    pub netns_path: String,
    pub cgroup: PathBuf,
    pub dir: PathBuf,
    /// The CNI result; `None` for hostNetwork pods.
    pub cni_result: Option<Value>,
    pub ips: Vec<IpAddr>,
    args: String,
}

fn io_err(what: &str, p: &Path, e: impl std::fmt::Display) -> String {
    format!("{what} {}: {e}", p.display())
}

/// A new, empty network namespace (loopback comes up with CNI ADD).
fn new_netns() -> std::io::Result<File> {
    // unshare(CLONE_NEWNET) moves only the calling thread; a throwaway thread keeps the
    // runtime's threads in the node's namespace.
    std::thread::spawn(|| -> std::io::Result<File> {
        unshare(CloneFlags::CLONE_NEWNET).map_err(std::io::Error::from)?;
        File::open("/proc/thread-self/ns/net")
    })
    .join()
    .map_err(|_| std::io::Error::other("netns thread panicked"))?
}

impl Sandbox {
    /// Creates the sandbox of `pod`. On failure everything created so far is removed.
    pub async fn create(cfg: &Config, pod: &Pod) -> Result<Sandbox, String> {
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        let ns = pod
            .metadata
            .namespace
            .clone()
            .unwrap_or_else(|| "default".into());
        let name = pod.metadata.name.clone().unwrap_or_default();
        let host_network = pod
            .spec
            .as_ref()
            .and_then(|s| s.host_network)
            .unwrap_or(false);
        let dir = cfg.state_dir.join("pods").join(&uid);
        let cgroup = cfg.cgroup_parent.join(pod_cgroup_name(&uid));
        let netns = if host_network {
            let p = cfg
                .cni
                .host_netns
                .clone()
                .unwrap_or_else(|| PathBuf::from("/proc/self/ns/net"));
            File::open(&p).map_err(|e| io_err("opening the node network namespace", &p, e))?
        } else {
            new_netns().map_err(|e| format!("creating a network namespace: {e}"))?
        };
        let netns_path = format!("/proc/{}/fd/{}", std::process::id(), netns.as_raw_fd());
        let mut sb = Sandbox {
            args: cni::pod_args(&ns, &name, &uid),
            uid,
            netns: Arc::new(netns),
            netns_path,
            cgroup,
            dir,
            cni_result: None,
            ips: vec![],
        };
        let r = sb.setup(cfg, host_network).await;
        if let Err(e) = r {
            if let Err(d) = sb.destroy(cfg).await {
                tracing::warn!(uid = sb.uid, "cleaning up a failed sandbox: {d}");
            }
            return Err(e);
        }
        Ok(sb)
    }

    async fn setup(&mut self, cfg: &Config, host_network: bool) -> Result<(), String> {
        std::fs::create_dir_all(&self.dir).map_err(|e| io_err("creating", &self.dir, e))?;
        std::fs::create_dir_all(&self.cgroup)
            .map_err(|e| io_err("creating cgroup", &self.cgroup, e))?;
        if host_network {
            self.ips = cfg.host_ip.into_iter().collect();
            return Ok(());
        }
        // Written before ADD so a crash between ADD and the result still lets the next
        // start's garbage collection run DEL for this pod.
        std::fs::write(self.dir.join("cni-args"), &self.args)
            .map_err(|e| io_err("writing", &self.dir, e))?;
        let att = cfg
            .cni
            .add(&self.uid, &self.netns_path, &self.args)
            .await
            .map_err(|e| e.to_string())?;
        let cached = self.dir.join("cni-result.json");
        std::fs::write(&cached, att.result.to_string())
            .map_err(|e| io_err("writing", &cached, e))?;
        self.cni_result = Some(att.result);
        self.ips = att.ips;
        if self.ips.is_empty() {
            return Err("the CNI result lists no address for the pod's interface".into());
        }
        Ok(())
    }

    /// The cgroup of one container (created, and emptied of a previous instance).
    pub async fn container_cgroup(&self, container: &str) -> Result<PathBuf, String> {
        let p = self.cgroup.join(container);
        std::fs::create_dir_all(&p).map_err(|e| io_err("creating cgroup", &p, e))?;
        process::kill_cgroup(&p, Duration::from_secs(10))
            .await
            .map_err(|e| e.to_string())?;
        Ok(p)
    }

    /// Kills every process of the pod, detaches it from the network (CNI DEL) and removes
    /// its cgroups and directory. Idempotent.
    pub async fn destroy(&mut self, cfg: &Config) -> Result<(), String> {
        let mut errs = Vec::new();
        if let Err(e) = process::kill_cgroup(&self.cgroup, Duration::from_secs(10)).await {
            errs.push(e.to_string());
        }
        if self.dir.join("cni-args").exists() {
            match cfg
                .cni
                .del(
                    &self.uid,
                    &self.netns_path,
                    &self.args,
                    self.cni_result.as_ref(),
                )
                .await
            {
                Ok(()) => {
                    let _ = std::fs::remove_file(self.dir.join("cni-args"));
                }
                Err(e) => errs.push(e.to_string()),
            }
        }
        if let Err(e) = process::remove_cgroup(&self.cgroup) {
            errs.push(io_err("removing cgroup", &self.cgroup, e));
        }
        if errs.is_empty() {
            if let Err(e) = std::fs::remove_dir_all(&self.dir) {
                if e.kind() != std::io::ErrorKind::NotFound {
                    errs.push(io_err("removing", &self.dir, e));
                }
            }
        }
        if errs.is_empty() {
            Ok(())
        } else {
            Err(errs.join("; "))
        }
    }
}

impl Sandbox {
    /// The sandbox an earlier run of the runtime left for `pod`, taken over: the network
    /// namespace reopened from the live container process `pid` (the node's for
    /// hostNetwork pods), the IPs from the cached CNI result.
    pub fn adopt(cfg: &Config, pod: &Pod, pid: i32) -> Result<Sandbox, String> {
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        let ns = pod
            .metadata
            .namespace
            .clone()
            .unwrap_or_else(|| "default".into());
        let name = pod.metadata.name.clone().unwrap_or_default();
        let host_network = pod
            .spec
            .as_ref()
            .and_then(|s| s.host_network)
            .unwrap_or(false);
        let dir = cfg.state_dir.join("pods").join(&uid);
        let p = if host_network {
            cfg.cni
                .host_netns
                .clone()
                .unwrap_or_else(|| PathBuf::from("/proc/self/ns/net"))
        } else {
            PathBuf::from(format!("/proc/{pid}/ns/net"))
        };
        let netns = File::open(&p).map_err(|e| io_err("opening the network namespace", &p, e))?;
        let cni_result: Option<Value> = if host_network {
            None
        } else {
            let cached = dir.join("cni-result.json");
            let v = std::fs::read_to_string(&cached)
                .ok()
                .and_then(|s| serde_json::from_str(&s).ok())
                .ok_or_else(|| format!("{}: no cached CNI result", cached.display()))?;
            Some(v)
        };
        let ips = match &cni_result {
            Some(r) => cni::sandbox_ips(r),
            None => cfg.host_ip.into_iter().collect(),
        };
        Ok(Sandbox {
            args: cni::pod_args(&ns, &name, &uid),
            netns_path: format!("/proc/{}/fd/{}", std::process::id(), netns.as_raw_fd()),
            netns: Arc::new(netns),
            cgroup: cfg.cgroup_parent.join(pod_cgroup_name(&uid)),
            dir,
            cni_result,
            ips,
            uid,
        })
    }
}

/// The pods an earlier run left (a state directory or a cgroup), by UID: candidates for
/// adoption ([`Sandbox::adopt`]); the others are released with [`release_leftover`].
pub fn leftovers(cfg: &Config) -> std::collections::HashSet<String> {
    let mut v = std::collections::HashSet::new();
    for e in std::fs::read_dir(&cfg.cgroup_parent)
        .into_iter()
        .flatten()
        .flatten()
    {
        let name = e.file_name().to_string_lossy().into_owned();
        if let Some(uid) = name.strip_prefix("skiff-pod-") {
            if e.path().is_dir() {
                v.insert(uid.to_string());
            }
        }
    }
    for e in std::fs::read_dir(cfg.state_dir.join("pods"))
        .into_iter()
        .flatten()
        .flatten()
    {
        v.insert(e.file_name().to_string_lossy().into_owned());
    }
    v
}

/// Releases what an earlier run left of pod `uid`: its processes are killed, its cgroup
/// removed, its CNI attachment deleted (with the cached result) and its state removed.
pub async fn release_leftover(cfg: &Config, uid: &str) -> Result<(), String> {
    let cg = cfg.cgroup_parent.join(pod_cgroup_name(uid));
    if cg.is_dir() {
        process::kill_cgroup(&cg, Duration::from_secs(10))
            .await
            .map_err(|e| e.to_string())?;
        process::remove_cgroup(&cg).map_err(|err| io_err("removing cgroup", &cg, err))?;
    }
    let dir = cfg.state_dir.join("pods").join(uid);
    if let Ok(args) = std::fs::read_to_string(dir.join("cni-args")) {
        let prev: Option<Value> = std::fs::read_to_string(dir.join("cni-result.json"))
            .ok()
            .and_then(|s| serde_json::from_str(&s).ok());
        cfg.cni
            .del(uid, "", &args, prev.as_ref())
            .await
            .map_err(|e| format!("releasing the network of old pod {uid}: {e}"))?;
    }
    if dir.exists() {
        std::fs::remove_dir_all(&dir).map_err(|e| io_err("removing", &dir, e))?;
    }
    Ok(())
}
