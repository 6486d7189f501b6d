//! Invoking CNI plugins exactly as a container runtime does (CNI spec, "Protocol" and
//! "Execution of Network Configurations"): the plugin binary named by `type`, found in
//! the plugin directories (also passed as `CNI_PATH`), `CNI_COMMAND`,
//! `CNI_CONTAINERID`, `CNI_NETNS`, `CNI_IFNAME`, `CNI_ARGS` in its environment, the
//! network configuration on stdin, the result or error object on stdout.
//!
//! The configuration may be a single plugin's config or a `.conflist` (`plugins`): ADD
//! runs the plugins in order, each getting the previous result as `prevResult`; DEL runs
//! them in reverse with the cached ADD result. Plugins run in the node's network
//! namespace ([`Cni::host_netns`]), which is where the bridge lives.

use std::{
    fs::File,
    net::IpAddr,
    os::{fd::AsRawFd as _, unix::process::CommandExt as _},
    path::PathBuf,
    process::Stdio,
    time::Duration,
};

use serde_json::{Map, Value};
use tokio::io::AsyncWriteExt as _;

/// How to reach the network.
#[derive(Debug, Clone)]
pub struct Cni {
    /// Directories searched for plugin binaries, in order (`CNI_PATH`).
    pub plugin_dirs: Vec<PathBuf>,
    /// The network configuration (a plugin config or a conflist).
    pub network: Value,
    /// The interface name inside the pod (`CNI_IFNAME`).
    pub ifname: String,
    /// The node's network namespace, where plugins run (`None`: the runtime's own).
    pub host_netns: Option<PathBuf>,
}

/// A CNI invocation failed.
#[derive(Debug, thiserror::Error)]
pub enum CniError {
    #[error("invalid CNI network configuration: {0}")]
    Config(String),
    #[error(
        "CNI plugin {plugin:?} not found in {dirs} (set the runtime's CNI plugin directories)"
    )]
    NotFound { plugin: String, dirs: String },
    #[error("running CNI plugin {plugin} ({command}): {error}")]
    Exec {
        plugin: String,
        command: &'static str,
        error: String,
    },
    #[error("CNI plugin {plugin} {command} failed: {msg}")]
    Plugin {
        plugin: String,
        command: &'static str,
        msg: String,
    },
}

/// What ADD produced.
#[derive(Debug, Clone)]
pub struct Attachment {
    /// The last plugin's result (the cached result DEL gets as prevResult).
    pub result: Value,
    /// The pod's addresses (sandbox interfaces only), IPv4 first.
    pub ips: Vec<IpAddr>,
}

impl Cni {
    fn plugins(&self) -> Result<Vec<Value>, CniError> {
        let net = self
            .network
            .as_object()
            .ok_or_else(|| CniError::Config("the configuration must be a JSON object".into()))?;
        let Some(list) = net.get("plugins") else {
            return Ok(vec![self.network.clone()]);
        };
        let list = list
            .as_array()
            .filter(|l| !l.is_empty())
            .ok_or_else(|| CniError::Config("\"plugins\" must be a non-empty array".into()))?;
        let mut out = Vec::new();
        for (i, p) in list.iter().enumerate() {
            let mut p: Map<String, Value> = p
                .as_object()
                .cloned()
                .ok_or_else(|| CniError::Config(format!("plugins[{i}] is not an object")))?;
            // The list's name and version apply to every plugin (libcni buildOneConfig).
            for k in ["name", "cniVersion"] {
                if let Some(v) = net.get(k) {
                    p.insert(k.into(), v.clone());
                }
            }
            out.push(Value::Object(p));
        }
        Ok(out)
    }

    fn find(&self, ty: &str) -> Result<PathBuf, CniError> {
        if ty.is_empty() || ty.contains('/') {
            return Err(CniError::Config(format!(
                "plugin type {ty:?} must be a plain binary name"
            )));
        }
        self.plugin_dirs
            .iter()
            .map(|d| d.join(ty))
            .find(|p| p.is_file())
            .ok_or_else(|| CniError::NotFound {
                plugin: ty.into(),
                dirs: self
                    .plugin_dirs
                    .iter()
                    .map(|d| d.display().to_string())
                    .collect::<Vec<_>>()
                    .join(":"),
            })
    }

    /// ADD for `container_id` in the namespace at `netns`. A failure part-way undoes
    /// the plugins that succeeded (DEL), so nothing stays allocated.
    pub async fn add(
        &self,
        container_id: &str,
        netns: &str,
        args: &str,
    ) -> Result<Attachment, CniError> {
        let plugins = self.plugins()?;
        let mut prev: Option<Value> = None;
        for (i, p) in plugins.iter().enumerate() {
            let mut conf = p.clone();
            if let Some(r) = &prev {
                conf["prevResult"] = r.clone();
            }
            match self.invoke("ADD", &conf, container_id, netns, args).await {
                Ok(out) => prev = Some(out.unwrap_or(Value::Null)),
                Err(e) => {
                    // Roll back what ran, this plugin included (it may have half-done).
                    for q in plugins[..=i].iter().rev() {
                        let mut conf = q.clone();
                        if let Some(r) = &prev {
                            conf["prevResult"] = r.clone();
                        }
                        if let Err(d) = self.invoke("DEL", &conf, container_id, netns, args).await {
                            tracing::warn!(container_id, "rolling back a failed CNI ADD: {d}");
                        }
                    }
                    return Err(e);
                }
            }
        }
        let result = prev.unwrap_or(Value::Null);
        Ok(Attachment {
            ips: sandbox_ips(&result),
            result,
        })
    }

    /// DEL, in reverse plugin order, with the ADD result when known. Idempotent: the
    /// plugins must accept a DEL for something already gone.
    pub async fn del(
        &self,
        container_id: &str,
        netns: &str,
        args: &str,
        prev: Option<&Value>,
    ) -> Result<(), CniError> {
        let mut first_err = None;
        for p in self.plugins()?.iter().rev() {
            let mut conf = p.clone();
            if let Some(r) = prev.filter(|r| !r.is_null()) {
                conf["prevResult"] = r.clone();
            }
            if let Err(e) = self.invoke("DEL", &conf, container_id, netns, args).await {
                first_err.get_or_insert(e);
            }
        }
        first_err.map_or(Ok(()), Err)
    }

    async fn invoke(
        &self,
        command: &'static str,
        conf: &Value,
        container_id: &str,
        netns: &str,
        args: &str,
    ) -> Result<Option<Value>, CniError> {
        let ty = conf.get("type").and_then(Value::as_str).unwrap_or("");
        let bin = self.find(ty)?;
        let exec_err = |error: String| CniError::Exec {
            plugin: bin.display().to_string(),
            command,
            error,
        };
        let host = match &self.host_netns {
            Some(p) => Some(File::open(p).map_err(|e| {
                exec_err(format!(
                    "opening the node network namespace {}: {e}",
                    p.display()
                ))
            })?),
            None => None,
        };
        let mut cmd = tokio::process::Command::new(&bin);
        cmd.env("CNI_COMMAND", command)
            .env("CNI_CONTAINERID", container_id)
            .env("CNI_NETNS", netns)
            .env("CNI_IFNAME", &self.ifname)
            .env("CNI_ARGS", args)
            .env(
                "CNI_PATH",
                std::env::join_paths(&self.plugin_dirs).unwrap_or_default(),
            )
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        if let Some(f) = &host {
            let fd = f.as_raw_fd();
            // SAFETY: setns is async-signal-safe; the fd stays open until spawn returns.
            unsafe {
                cmd.as_std_mut().pre_exec(move || {
                    if libc::setns(fd, libc::CLONE_NEWNET) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        let mut child = cmd.spawn().map_err(|e| exec_err(e.to_string()))?;
        drop(host);
        let stdin = conf.to_string();
        if let Some(mut pipe) = child.stdin.take() {
            pipe.write_all(stdin.as_bytes())
                .await
                .map_err(|e| exec_err(format!("writing the configuration: {e}")))?;
        }
        let out = tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
            .await
            .map_err(|_| exec_err("no answer within 60 s".into()))?
            .map_err(|e| exec_err(e.to_string()))?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        tracing::debug!(plugin = %bin.display(), command, container_id, netns, status = %out.status, "CNI");
        if !out.status.success() {
            // The error object: {"code", "msg", "details"} (SPEC.md, "Error").
            let msg = match serde_json::from_str::<Value>(&stdout) {
                Ok(v) => format!(
                    "code {}: {}{}",
                    v["code"],
                    v["msg"].as_str().unwrap_or(""),
                    v["details"]
                        .as_str()
                        .map(|d| format!(" ({d})"))
                        .unwrap_or_default()
                ),
                Err(_) => format!(
                    "{}: {}{}",
                    out.status,
                    stdout.trim(),
                    String::from_utf8_lossy(&out.stderr).trim()
                ),
            };
            return Err(CniError::Plugin {
                plugin: bin.display().to_string(),
                command,
                msg,
            });
        }
        if command != "ADD" {
            return Ok(None);
        }
        serde_json::from_str(&stdout)
            .map(Some)
            .map_err(|e| exec_err(format!("the result is not JSON ({e}): {stdout}")))
    }
}

/// The addresses on sandbox interfaces of a result (an `ips[]` entry without an
/// `interface` index counts too), IPv4 first.
pub fn sandbox_ips(result: &Value) -> Vec<IpAddr> {
    let ifaces = result["interfaces"].as_array().cloned().unwrap_or_default();
    let mut ips: Vec<IpAddr> = result["ips"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|ip| match ip["interface"].as_u64() {
            Some(i) => ifaces
                .get(i as usize)
                .is_some_and(|f| f.get("sandbox").is_some_and(|s| !s.is_null())),
            None => true,
        })
        .filter_map(|ip| ip["address"].as_str()?.split('/').next()?.parse().ok())
        .collect();
    ips.sort_by_key(|ip| !ip.is_ipv4());
    ips
}

/// `CNI_ARGS` for a pod, as the kubelet passes them.
pub fn pod_args(namespace: &str, name: &str, uid: &str) -> String {
    format!(
        "IgnoreUnknown=1;K8S_POD_NAMESPACE={namespace};K8S_POD_NAME={name};K8S_POD_INFRA_CONTAINER_ID={uid};K8S_POD_UID={uid}"
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn conflists_expand_with_the_list_name_and_version() {
        let c = Cni {
            plugin_dirs: vec![],
            network: json!({"cniVersion": "1.1.0", "name": "net",
                "plugins": [{"type": "skiff-cni", "bridge": "b"}, {"type": "tuning"}]}),
            ifname: "eth0".into(),
            host_netns: None,
        };
        let p = c.plugins().unwrap();
        assert_eq!(p.len(), 2);
        assert_eq!(
            p[0],
            json!({"type": "skiff-cni", "bridge": "b", "name": "net", "cniVersion": "1.1.0"})
        );
        let err = c.find("skiff-cni").unwrap_err().to_string();
        assert!(err.contains("not found"), "{err}");
        let single = Cni {
            network: json!({"cniVersion": "1.1.0", "name": "n", "type": "x"}),
            ..c.clone()
        };
        assert_eq!(single.plugins().unwrap().len(), 1);
        let bad = Cni {
            network: json!({"plugins": []}),
            ..c
        };
        assert!(bad.plugins().is_err());
    }

    #[test]
    fn sandbox_ips_skip_host_interfaces() {
        let r = json!({
            "interfaces": [{"name": "skiff0"}, {"name": "veth1"}, {"name": "eth0", "sandbox": "/proc/1/fd/3"}],
            "ips": [{"address": "198.18.0.1/24", "interface": 0},
                    {"address": "fd00::5/64", "interface": 2},
                    {"address": "198.18.0.5/24", "interface": 2}]
        });
        assert_eq!(
            sandbox_ips(&r),
            vec![
                "198.18.0.5".parse::<IpAddr>().unwrap(),
                "fd00::5".parse().unwrap()
            ]
        );
    }
}
