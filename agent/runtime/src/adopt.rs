//! Re-adoption after a runtime restart: a pod whose cgroup, processes and state
//! directory an earlier run left is taken over without restarting its containers when
//! the API pod's spec is unchanged (the kubelet + containerd behaviour across a kubelet
//! restart).
//!
//! What makes it possible:
//! - container stdout/stderr are FIFOs in the pod's state directory that the container
//!   holds open read-write, so a container never gets SIGPIPE while no runtime reads, and
//!   the next runtime opens them again and finds what was written meanwhile (up to the
//!   pipe buffer; the writer blocks beyond it);
//! - per container, a record of the instance (`<state>/containers/<name>.json`: pid, the
//!   process's start time in clock ticks against pid reuse, instance, restart count,
//!   start time) and, per pod, the hash of the spec it was started from;
//! - the network namespace is reopened from a live container process
//!   (`/proc/<pid>/ns/net`), the pod IPs come from the cached CNI result.
//!
//! An adopted process is not the runtime's child: its exit is seen through its pidfd,
//! but its exit status is not observable, so it is reported as upstream reports a
//! container whose status was lost (`ContainerStatusUnknown`, exit code 137).

use std::{
    collections::BTreeMap,
    io,
    os::fd::{AsRawFd, FromRawFd as _, OwnedFd, RawFd},
    path::{Path, PathBuf},
    sync::Arc,
};

use k8s_openapi::api::core::v1::Pod;
use serde::{Deserialize, Serialize};
use sha2::Digest as _;

/// The pod state file holding the hash of the spec the pod was started from.
pub const SPEC_HASH_FILE: &str = "spec.sha256";

/// Reason and exit code of an adopted container that exited (upstream's values for a
/// container whose status could not be found).
pub const UNKNOWN_REASON: &str = "ContainerStatusUnknown";
pub const UNKNOWN_EXIT_CODE: i32 = 137;

/// A started container instance, as recorded for the next runtime.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Record {
    pub instance: u64,
    pub restart_count: i32,
    pub pid: i32,
    /// `/proc/<pid>/stat` starttime (clock ticks since boot): a reused pid differs.
    pub start_ticks: u64,
    /// Unix milliseconds of the start.
    pub started_at_ms: u64,
}

/// The hash of a pod's spec (what decides whether its containers may be adopted).
pub fn spec_hash(pod: &Pod) -> String {
    let spec = serde_json::to_vec(&pod.spec).unwrap_or_default();
    sha2::Sha256::digest(&spec)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn record_path(pod_dir: &Path, container: &str) -> PathBuf {
    pod_dir.join("containers").join(format!("{container}.json"))
}

pub fn write_record(pod_dir: &Path, container: &str, r: &Record) -> io::Result<()> {
    let p = record_path(pod_dir, container);
    if let Some(d) = p.parent() {
        std::fs::create_dir_all(d)?;
    }
    let tmp = p.with_extension("json.tmp");
    std::fs::write(&tmp, serde_json::to_vec(r).unwrap_or_default())?;
    std::fs::rename(tmp, p)
}

/// The records in a pod's state directory, by container.
pub fn read_records(pod_dir: &Path) -> BTreeMap<String, Record> {
    std::fs::read_dir(pod_dir.join("containers"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_str()?.strip_suffix(".json")?.to_string();
            let r = serde_json::from_slice(&std::fs::read(e.path()).ok()?).ok()?;
            Some((name, r))
        })
        .collect()
}

/// The start time of `pid` in clock ticks (field 22 of `/proc/<pid>/stat`).
pub fn start_ticks(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces and parentheses: count after the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// Is the recorded process still the one running under its pid?
pub fn alive(r: &Record) -> bool {
    start_ticks(r.pid) == Some(r.start_ticks)
}

/// A pidfd for `pid`.
pub fn pidfd(pid: i32) -> io::Result<OwnedFd> {
    // SAFETY: pidfd_open has no memory arguments; the returned fd is owned here.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh descriptor nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

struct SharedFd(Arc<OwnedFd>);

impl AsRawFd for SharedFd {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_raw_fd()
    }
}

/// Waits until the process behind `pidfd` has exited (a pidfd turns readable).
pub async fn wait_exit(pidfd: Arc<OwnedFd>) {
    // SAFETY: the descriptor is owned by the Arc this AsyncFd holds, so it stays open
    // and the same for the AsyncFd's whole life; as_raw_fd always returns it.
    let registered = unsafe {
        tokio::io::unix::AsyncFd::register_with_interest(
            SharedFd(pidfd),
            tokio::io::Interest::READABLE,
        )
    };
    match registered.map_err(std::io::Error::from) {
        Ok(fd) => {
            let _ = fd.readable().await;
        }
        Err(e) => {
            // Cannot wait: never report an exit that did not happen.
            tracing::warn!("waiting for an adopted process: {e}");
            std::future::pending::<()>().await;
        }
    }
}

/// The stdout and stderr FIFOs of a container (created when missing).
pub fn fifos(pod_dir: &Path, container: &str) -> io::Result<(PathBuf, PathBuf)> {
    let dir = pod_dir.join("io");
    std::fs::create_dir_all(&dir)?;
    let out = dir.join(format!("{container}.stdout"));
    let err = dir.join(format!("{container}.stderr"));
    for p in [&out, &err] {
        if !p.exists() {
            nix::unistd::mkfifo(p.as_path(), nix::sys::stat::Mode::from_bits_truncate(0o600))
                .map_err(io::Error::from)?;
        }
    }
    Ok((out, err))
}

/// The runtime's (non-blocking) read ends of a container's FIFOs.
pub fn readers(
    out: &Path,
    err: &Path,
) -> io::Result<(
    tokio::net::unix::pipe::Receiver,
    tokio::net::unix::pipe::Receiver,
)> {
    let o = tokio::net::unix::pipe::OpenOptions::new().open_receiver(out)?;
    let e = tokio::net::unix::pipe::OpenOptions::new().open_receiver(err)?;
    Ok((o, e))
}

/// The container's ends: opened read-write, so that the container itself always counts
/// as a reader (no SIGPIPE while no runtime reads).
pub fn writers(out: &Path, err: &Path) -> io::Result<(std::fs::File, std::fs::File)> {
    let open = |p: &Path| std::fs::OpenOptions::new().read(true).write(true).open(p);
    Ok((open(out)?, open(err)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_identify_the_process() {
        let dir = tempfile::tempdir().unwrap();
        let me = std::process::id() as i32;
        let r = Record {
            instance: 3,
            restart_count: 2,
            pid: me,
            start_ticks: start_ticks(me).unwrap(),
            started_at_ms: 1,
        };
        write_record(dir.path(), "app", &r).unwrap();
        let all = read_records(dir.path());
        assert_eq!(all.get("app"), Some(&r));
        assert!(alive(&r));
        assert!(!alive(&Record {
            start_ticks: r.start_ticks + 1,
            ..r.clone()
        }));
    }

    #[tokio::test]
    async fn a_fifo_survives_its_reader_and_keeps_what_was_written() {
        use tokio::io::AsyncReadExt as _;
        let dir = tempfile::tempdir().unwrap();
        let (out, err) = fifos(dir.path(), "c").unwrap();
        let (r1, _e1) = readers(&out, &err).unwrap();
        let (mut w, _we) = writers(&out, &err).unwrap();
        drop(r1); // the runtime goes away
        use std::io::Write as _;
        w.write_all(b"while nobody reads\n").unwrap(); // no EPIPE
        let (mut r2, _e2) = readers(&out, &err).unwrap();
        drop(w);
        drop(_we);
        let mut s = String::new();
        r2.read_to_string(&mut s).await.unwrap();
        assert_eq!(s, "while nobody reads\n");
    }
}
