//! Running probes. httpGet and tcpSocket connect from the node's network namespace to
//! the pod's IP (or `host`), as the kubelet does; exec runs the command in the
//! container's environment (same namespaces, cgroup, root and mounts).
//!
//! httpGet: `GET <path>` with `Host`, `User-Agent: kube-probe/<version>`, `Accept: */*`
//! and the probe's headers; a status in 200..=399 is success (the kubelet follows
//! redirects; skiff accepts the redirect status itself). HTTPS is not supported yet and
//! fails with a message saying so.

use std::{
    fs::File,
    io,
    net::{IpAddr, SocketAddr},
    os::fd::{FromRawFd as _, OwnedFd},
    path::{Path, PathBuf},
    process::Stdio,
    time::Duration,
};

use k8s_openapi::api::core::v1::ContainerPort;
use nix::sched::{setns, CloneFlags};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use crate::{
    probe::{Action, PortRef},
    process,
};

/// What a probe needs to know about its container.
#[derive(Debug, Clone)]
pub struct Target {
    pub host_netns: Option<PathBuf>,
    pub pod_ip: Option<IpAddr>,
    pub ports: Vec<ContainerPort>,
    /// The container's process spec (for exec probes).
    pub exec: Option<process::Spec>,
}

/// Runs one probe; returns success and, on failure, why.
pub async fn run(action: &Action, timeout: Duration, target: &Target) -> (bool, Option<String>) {
    let r = tokio::time::timeout(timeout, run_inner(action, timeout, target)).await;
    match r {
        Ok(Ok(())) => (true, None),
        Ok(Err(msg)) => (false, Some(msg)),
        Err(_) => (
            false,
            Some(format!("probe timed out after {}s", timeout.as_secs())),
        ),
    }
}

async fn run_inner(action: &Action, timeout: Duration, target: &Target) -> Result<(), String> {
    match action {
        Action::Unsupported(msg) => Err(msg.clone()),
        Action::Tcp { host, port } => {
            let addr = addr(host, port, target)?;
            connect(target.host_netns.as_deref(), addr)
                .await
                .map(drop)
                .map_err(|e| format!("dial tcp {addr}: {e}"))
        }
        Action::Http {
            host,
            port,
            path,
            https,
            headers,
        } => {
            if *https {
                return Err("HTTPS probes are not supported by skiff's runtime yet".into());
            }
            let addr = addr(host, port, target)?;
            let url = format!("http://{addr}{path}");
            let mut s = connect(target.host_netns.as_deref(), addr)
                .await
                .map_err(|e| format!("Get \"{url}\": dial tcp {addr}: {e}"))?;
            let mut req = format!("GET {path} HTTP/1.1\r\n");
            let has = |name: &str| headers.iter().any(|(k, _)| k.eq_ignore_ascii_case(name));
            if !has("host") {
                req.push_str(&format!("Host: {addr}\r\n"));
            }
            if !has("user-agent") {
                req.push_str("User-Agent: kube-probe/1.33\r\n");
            }
            if !has("accept") {
                req.push_str("Accept: */*\r\n");
            }
            for (k, v) in headers {
                req.push_str(&format!("{k}: {v}\r\n"));
            }
            req.push_str("Connection: close\r\n\r\n");
            s.write_all(req.as_bytes())
                .await
                .map_err(|e| format!("Get \"{url}\": {e}"))?;
            let mut buf = Vec::with_capacity(256);
            let mut chunk = [0u8; 256];
            while !buf.windows(2).any(|w| w == b"\r\n") && buf.len() < 4096 {
                let n = s
                    .read(&mut chunk)
                    .await
                    .map_err(|e| format!("Get \"{url}\": {e}"))?;
                if n == 0 {
                    break;
                }
                buf.extend_from_slice(&chunk[..n]);
            }
            let line = String::from_utf8_lossy(&buf);
            let line = line.lines().next().unwrap_or("");
            let code: Option<u16> = line
                .strip_prefix("HTTP/1.")
                .and_then(|r| r.get(2..5))
                .and_then(|c| c.parse().ok());
            match code {
                Some(c) if (200..400).contains(&c) => Ok(()),
                Some(c) => Err(format!("HTTP probe failed with statuscode: {c}")),
                None => Err(format!("Get \"{url}\": malformed HTTP response {line:?}")),
            }
        }
        Action::Exec { command } => {
            let Some(spec) = &target.exec else {
                return Err("the container is not running".into());
            };
            if command.is_empty() {
                return Err("exec probe has an empty command".into());
            }
            let mut spec = spec.clone();
            spec.argv = command.clone();
            let started = process::spawn(&spec, Stdio::piped(), Stdio::piped())
                .map_err(|e| format!("exec {command:?}: {e}"))?;
            let pid = started.pid;
            let out = tokio::time::timeout(timeout, started.child.wait_with_output()).await;
            match out {
                Err(_) => {
                    // Its own process group (setsid in spawn): kill all of it.
                    // SAFETY: kill has no memory arguments.
                    unsafe { libc::kill(-pid, libc::SIGKILL) };
                    Err(format!(
                        "command {command:?} timed out after {}s",
                        timeout.as_secs()
                    ))
                }
                Ok(Err(e)) => Err(format!("exec {command:?}: {e}")),
                Ok(Ok(o)) if o.status.success() => Ok(()),
                Ok(Ok(o)) => {
                    let mut text = String::from_utf8_lossy(&o.stdout).into_owned();
                    text.push_str(&String::from_utf8_lossy(&o.stderr));
                    text.truncate(10 * 1024);
                    let (code, _) = process::exit_code(o.status);
                    Err(format!(
                        "command {command:?} exited with {code}: {}",
                        text.trim()
                    ))
                }
            }
        }
    }
}

fn addr(host: &Option<String>, port: &PortRef, target: &Target) -> Result<SocketAddr, String> {
    let ip = match host {
        Some(h) => h.parse::<IpAddr>().map_err(|_| {
            format!("probe host {h:?} is not an IP address (names are not resolved)")
        })?,
        None => target
            .pod_ip
            .ok_or_else(|| "the pod has no IP address yet".to_string())?,
    };
    let port = match port {
        PortRef::Number(n) if *n > 0 => *n,
        PortRef::Number(_) => return Err("probe port must be 1..=65535".into()),
        PortRef::Name(name) => target
            .ports
            .iter()
            .find(|p| p.name.as_deref() == Some(name))
            .and_then(|p| u16::try_from(p.container_port).ok())
            .ok_or_else(|| format!("probe port name {name:?} is not a port of the container"))?,
    };
    Ok(SocketAddr::new(ip, port))
}

/// A TCP connection from network namespace `netns` (`None`: ours).
async fn connect(netns: Option<&Path>, addr: SocketAddr) -> io::Result<tokio::net::TcpStream> {
    let socket = match netns {
        None if addr.is_ipv4() => tokio::net::TcpSocket::new_v4()?,
        None => tokio::net::TcpSocket::new_v6()?,
        Some(p) => {
            let ns = File::open(p)?;
            let family = if addr.is_ipv4() {
                libc::AF_INET
            } else {
                libc::AF_INET6
            };
            // A socket belongs to the namespace of the thread that created it, so a
            // short-lived thread enters the namespace and makes it; the runtime's own
            // threads never change namespace.
            let fd = std::thread::scope(|s| {
                s.spawn(|| -> io::Result<OwnedFd> {
                    setns(&ns, CloneFlags::CLONE_NEWNET).map_err(io::Error::from)?;
                    // SAFETY: plain socket(2); the fd is owned right away.
                    let fd = unsafe {
                        libc::socket(
                            family,
                            libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                            0,
                        )
                    };
                    if fd < 0 {
                        return Err(io::Error::last_os_error());
                    }
                    // SAFETY: fd is fresh and owned by nobody else.
                    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
                })
                .join()
                .map_err(|_| io::Error::other("socket thread panicked"))?
            })?;
            tokio::net::TcpSocket::from_std_stream(std::net::TcpStream::from(fd))
        }
    };
    socket.connect(addr).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    /// A one-connection-at-a-time HTTP server on loopback answering `status`, which
    /// records the request head it got.
    async fn server(status: u16) -> (SocketAddr, tokio::sync::mpsc::UnboundedReceiver<String>) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                let mut buf = vec![0u8; 2048];
                let n = s.read(&mut buf).await.unwrap_or(0);
                let _ = tx.send(String::from_utf8_lossy(&buf[..n]).into_owned());
                let _ = s
                    .write_all(
                        format!("HTTP/1.1 {status} X\r\nContent-Length: 0\r\n\r\n").as_bytes(),
                    )
                    .await;
            }
        });
        (addr, rx)
    }

    fn target(ip: &str, ports: Vec<ContainerPort>) -> Target {
        Target {
            host_netns: None,
            pod_ip: Some(ip.parse().unwrap()),
            ports,
            exec: None,
        }
    }

    fn http(port: PortRef, headers: Vec<(String, String)>) -> Action {
        Action::Http {
            host: None,
            port,
            path: "/healthz".into(),
            https: false,
            headers,
        }
    }

    #[tokio::test]
    async fn http_status_decides_and_the_request_looks_like_the_kubelets() {
        let (ok, mut seen) = server(204).await;
        let t = target("127.0.0.1", vec![]);
        let hdr = vec![("X-Probe".to_string(), "1".to_string())];
        let r = run(
            &http(PortRef::Number(ok.port()), hdr),
            Duration::from_secs(2),
            &t,
        )
        .await;
        assert_eq!(r, (true, None));
        let req = seen.recv().await.unwrap();
        assert!(req.starts_with("GET /healthz HTTP/1.1\r\n"), "{req}");
        assert!(
            req.contains("User-Agent: kube-probe/") && req.contains("X-Probe: 1"),
            "{req}"
        );

        let (redirect, _) = server(302).await;
        let r = run(
            &http(PortRef::Number(redirect.port()), vec![]),
            Duration::from_secs(2),
            &t,
        )
        .await;
        assert!(r.0, "3xx counts as success");

        let (bad, _) = server(503).await;
        let r = run(
            &http(PortRef::Number(bad.port()), vec![]),
            Duration::from_secs(2),
            &t,
        )
        .await;
        assert_eq!(
            r,
            (false, Some("HTTP probe failed with statuscode: 503".into()))
        );
    }

    #[tokio::test]
    async fn tcp_named_ports_and_refusals() {
        let (ok, _) = server(200).await;
        let ports = vec![ContainerPort {
            name: Some("web".into()),
            container_port: ok.port() as i32,
            ..Default::default()
        }];
        let t = target("127.0.0.1", ports);
        let tcp = |port| Action::Tcp { host: None, port };
        assert!(
            run(
                &tcp(PortRef::Name("web".into())),
                Duration::from_secs(2),
                &t
            )
            .await
            .0
        );
        let (ok, msg) = run(
            &tcp(PortRef::Name("nope".into())),
            Duration::from_secs(2),
            &t,
        )
        .await;
        assert!(!ok && msg.unwrap().contains("not a port of the container"));
        // A port nobody listens on (bound then released).
        let free = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let (ok, msg) = run(&tcp(PortRef::Number(free)), Duration::from_secs(2), &t).await;
        assert!(!ok && msg.unwrap().starts_with("dial tcp"), "refused");
        let bad_host = Action::Tcp {
            host: Some("example.com".into()),
            port: PortRef::Number(80),
        };
        let (ok, msg) = run(&bad_host, Duration::from_secs(2), &t).await;
        assert!(!ok && msg.unwrap().contains("not an IP address"));
        let (ok, msg) = run(
            &Action::Unsupported("gRPC".into()),
            Duration::from_secs(1),
            &t,
        )
        .await;
        assert_eq!((ok, msg.as_deref()), (false, Some("gRPC")));
    }
}
