//! Small system helpers: `ip`, processes started inside a network namespace, cgroup v2
//! trees, network namespace identity.

use std::{
    fs::File,
    os::{
        fd::AsRawFd as _,
        unix::{fs::MetadataExt as _, process::CommandExt as _},
    },
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _};

/// Runs `ip args...`; the error names the command and its stderr.
pub fn ip(args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .with_context(|| format!("running `ip {}` (is iproute2 installed?)", args.join(" ")))?;
    if !out.status.success() {
        bail!(
            "`ip {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// `ip -n <ns> args...`.
pub fn ip_in(ns: &str, args: &[&str]) -> anyhow::Result<()> {
    let mut full = vec!["-n", ns];
    full.extend_from_slice(args);
    ip(&full)
}

/// The bind-mounted handle of a named namespace (`ip netns add`).
pub fn netns_path(ns: &str) -> PathBuf {
    PathBuf::from(format!("/run/netns/{ns}"))
}

/// Sets a sysctl inside a namespace: /proc/sys/net is resolved per network namespace
/// when the file is opened, so a thread that entered it writes that namespace's value.
pub fn sysctl_in(ns: &str, key: &str, value: &str) -> anyhow::Result<()> {
    let path = format!("/proc/sys/{key}");
    in_netns(ns, || std::fs::write(&path, value))?
        .with_context(|| format!("setting {path} in {ns}"))
}

/// Runs `f` on a fresh thread that entered network namespace `ns` (only that thread
/// changes namespace; sockets it opens stay in `ns` wherever they are used afterwards).
pub fn in_netns<R: Send>(ns: &str, f: impl FnOnce() -> R + Send) -> anyhow::Result<R> {
    let path = netns_path(ns);
    let file = File::open(&path).with_context(|| format!("opening {}", path.display()))?;
    std::thread::scope(|s| {
        s.spawn(|| {
            // SAFETY: setns on this thread with a valid namespace fd we own.
            if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                return Err(anyhow::anyhow!(
                    "setns into {}: {}",
                    path.display(),
                    std::io::Error::last_os_error()
                ));
            }
            Ok(f())
        })
        .join()
        .unwrap_or_else(|p| std::panic::resume_unwind(p))
    })
}

/// Where to put a process started with [`spawn_in`].
pub struct Placement<'a> {
    /// Network namespace (by name) to join.
    pub netns: Option<&'a str>,
    /// Network namespace by path (e.g. `/proc/<pid>/ns/net` of a pod's process).
    pub netns_path: Option<&'a Path>,
    /// cgroup v2 directory to join (so cgroup socket hooks see the process's sockets).
    pub cgroup: Option<&'a Path>,
}

/// Configures `cmd` to join the placement between fork and exec (before it opens any
/// socket), in its own process group (a terminal's Ctrl-C reaches only the harness, which
/// then stops everything in order). The returned files must live until `spawn` returns.
pub fn place(cmd: &mut Command, p: &Placement) -> anyhow::Result<Vec<File>> {
    let mut keep = Vec::new();
    let ns_fd = match (p.netns, p.netns_path) {
        (Some(ns), _) => {
            let f = File::open(netns_path(ns)).with_context(|| format!("opening netns {ns}"))?;
            let fd = f.as_raw_fd();
            keep.push(f);
            Some(fd)
        }
        (None, Some(path)) => {
            let f = File::open(path).with_context(|| format!("opening {}", path.display()))?;
            let fd = f.as_raw_fd();
            keep.push(f);
            Some(fd)
        }
        (None, None) => None,
    };
    let procs_fd = match p.cgroup {
        Some(cg) => {
            let f = std::fs::OpenOptions::new()
                .write(true)
                .open(cg.join("cgroup.procs"))
                .with_context(|| format!("opening {}/cgroup.procs", cg.display()))?;
            let fd = f.as_raw_fd();
            keep.push(f);
            Some(fd)
        }
        None => None,
    };
    cmd.process_group(0);
    // SAFETY: only async-signal-safe calls (setns, write) between fork and exec; the fds
    // stay open in the parent (`keep`) until spawn returns.
    unsafe {
        cmd.pre_exec(move || {
            if let Some(fd) = ns_fd {
                if libc::setns(fd, libc::CLONE_NEWNET) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            if let Some(fd) = procs_fd {
                // "0": the writing process itself (cgroup v2 cgroup.procs).
                if libc::write(fd, b"0".as_ptr().cast(), 1) != 1 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    Ok(keep)
}

/// Starts `cmd` in network namespace `ns`, stdout and stderr appended to `log`.
pub fn spawn_in(ns: &str, cmd: &mut Command, log: &Path) -> anyhow::Result<Child> {
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .with_context(|| format!("creating {}", log.display()))?;
    cmd.stdin(Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out);
    let _keep = place(
        cmd,
        &Placement {
            netns: Some(ns),
            netns_path: None,
            cgroup: None,
        },
    )?;
    cmd.spawn()
        .with_context(|| format!("starting {:?} in {ns}", cmd.get_program()))
}

/// Sends `sig` to `child` and waits up to `grace` for it to exit, then SIGKILLs it.
pub fn stop(child: &mut Child, sig: i32, grace: Duration) {
    if let Ok(Some(_)) = child.try_wait() {
        return;
    }
    // SAFETY: kill(2) on our own child's pid; it is not reaped yet, so no pid reuse.
    unsafe { libc::kill(child.id() as i32, sig) };
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// (device, inode) of a namespace file: two handles are the same namespace when equal.
pub fn ns_id(path: &Path) -> Option<(u64, u64)> {
    std::fs::metadata(path).ok().map(|m| (m.dev(), m.ino()))
}

/// Where this machine mounts cgroup v2: /sys/fs/cgroup/unified on a hybrid layout,
/// /sys/fs/cgroup on a pure v2 host. `SKIFF_CGROUP2_ROOT` overrides both.
pub fn cgroup2_root() -> PathBuf {
    if let Some(p) = std::env::var_os("SKIFF_CGROUP2_ROOT") {
        return PathBuf::from(p);
    }
    let unified = Path::new("/sys/fs/cgroup/unified");
    if unified.join("cgroup.procs").exists() {
        return unified.to_path_buf();
    }
    PathBuf::from("/sys/fs/cgroup")
}

fn populated(cg: &Path) -> bool {
    std::fs::read_to_string(cg.join("cgroup.events"))
        .map(|s| s.lines().any(|l| l == "populated 1"))
        .unwrap_or(false)
}

/// SIGKILLs every process in the cgroup tree (`cgroup.kill`, kernel ≥ 5.14), waits until
/// it is empty and removes it bottom-up.
pub fn destroy_cgroup(cg: &Path) -> anyhow::Result<()> {
    if !cg.exists() {
        return Ok(());
    }
    if populated(cg) {
        std::fs::write(cg.join("cgroup.kill"), "1")
            .with_context(|| format!("writing {}/cgroup.kill", cg.display()))?;
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while populated(cg) {
        if Instant::now() > deadline {
            bail!(
                "{} still has processes 10 s after cgroup.kill",
                cg.display()
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    remove_cgroup_tree(cg)
}

fn remove_cgroup_tree(cg: &Path) -> anyhow::Result<()> {
    // cgroupfs: a directory is removed with rmdir once its children are, whatever
    // interface files it shows.
    if let Ok(rd) = std::fs::read_dir(cg) {
        for e in rd.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                remove_cgroup_tree(&e.path())?;
            }
        }
    }
    match std::fs::remove_dir(cg) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).with_context(|| format!("removing cgroup {}", cg.display())),
    }
}

/// Polls `f` every `every` until it returns `Some` or `timeout` passes.
pub fn poll<T>(timeout: Duration, every: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(every);
    }
}
