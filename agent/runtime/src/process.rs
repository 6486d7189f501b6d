//! Container processes: started inside the pod's network namespace and the container's
//! cgroup (joined between fork and exec, before the program runs, so every socket it
//! opens is the pod's and the socket-LB hooks on the cgroup parent see it), in a new
//! session, with a private mount namespace when it has volumes or a root filesystem.
//!
//! Stopping follows the kubelet: SIGTERM to the main process, `terminationGracePeriod`
//! to exit, then `cgroup.kill` (SIGKILL to every process of the cgroup, kernel ≥ 5.14),
//! which also removes whatever the main process left behind when it exited by itself.

use std::{
    ffi::CString,
    fs::File,
    io,
    os::{
        fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
        unix::{ffi::OsStrExt as _, process::CommandExt as _},
    },
    path::{Path, PathBuf},
    process::Stdio,
    sync::Arc,
    time::Duration,
};

use crate::{image::Image, volumes::Mount};

/// containerd's default PATH for containers that do not set one.
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Everything needed to start one process of a container.
#[derive(Debug, Clone)]
pub struct Spec {
    pub argv: Vec<String>,
    pub env: Vec<(String, String)>,
    pub working_dir: Option<String>,
    pub image: Image,
    pub mounts: Vec<Mount>,
    pub netns: Arc<File>,
    /// The container's cgroup directory (exists).
    pub cgroup: PathBuf,
    /// cgroup v1 directories the process joins too (limits on a hybrid host, see
    /// [`crate::limits`]).
    pub extra_cgroups: Vec<PathBuf>,
}

/// A started process.
#[derive(Debug)]
pub struct Started {
    pub child: tokio::process::Child,
    pub pid: i32,
    /// A pidfd: signals reach this process even if its pid were reused.
    pub pidfd: OwnedFd,
}

fn cstr(p: &Path) -> io::Result<CString> {
    CString::new(p.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains a NUL byte"))
}

fn check(rc: libc::c_int) -> io::Result<()> {
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Checks the mount targets in the parent (clear errors instead of a failed exec) and
/// creates them inside a root filesystem. The error is a CreateContainerConfigError.
pub fn prepare_mounts(spec: &Spec) -> Result<(), String> {
    for m in &spec.mounts {
        let is_file = m.source.is_file();
        match &spec.image {
            Image::Host => {
                let ok = if is_file {
                    m.target.is_file()
                } else {
                    m.target.is_dir()
                };
                if !ok {
                    return Err(format!(
                        "mountPath {} does not exist on the node as a {}: with image {:?} the container sees the node's filesystem and volumes are bind-mounted over existing paths; create it, or use a {}<dir> image",
                        m.target.display(),
                        if is_file { "file" } else { "directory" },
                        crate::image::HOST,
                        crate::image::ROOTFS_PREFIX,
                    ));
                }
            }
            Image::Rootfs(root) => {
                let t = root.join(m.target.strip_prefix("/").unwrap_or(&m.target));
                let r = if is_file {
                    t.parent()
                        .map_or(Ok(()), std::fs::create_dir_all)
                        .and_then(|_| {
                            std::fs::OpenOptions::new()
                                .create(true)
                                .append(true)
                                .open(&t)
                                .map(|_| ())
                        })
                } else {
                    std::fs::create_dir_all(&t)
                };
                r.map_err(|e| format!("creating mount point {}: {e}", t.display()))?;
            }
        }
    }
    Ok(())
}

/// Starts `spec` with the given stdio. The caller reaps `child`.
pub fn spawn(spec: &Spec, stdout: Stdio, stderr: Stdio) -> io::Result<Started> {
    let program = spec
        .argv
        .first()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "empty command"))?;
    let mut cmd = tokio::process::Command::new(program);
    cmd.args(&spec.argv[1..])
        .env_clear()
        .envs(spec.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(stderr);
    if !spec.env.iter().any(|(k, _)| k == "PATH") {
        cmd.env("PATH", DEFAULT_PATH);
    }
    let procs = std::fs::OpenOptions::new()
        .write(true)
        .open(spec.cgroup.join("cgroup.procs"))?;
    let netns_fd = spec.netns.as_raw_fd();
    let procs_fd = procs.as_raw_fd();
    let extra_procs = spec
        .extra_cgroups
        .iter()
        .map(|d| {
            std::fs::OpenOptions::new()
                .write(true)
                .open(d.join("cgroup.procs"))
        })
        .collect::<io::Result<Vec<File>>>()?;
    let extra_fds: Vec<i32> = extra_procs.iter().map(|f| f.as_raw_fd()).collect();
    // Everything the child needs, allocated before fork: between fork and exec only
    // async-signal-safe calls are allowed, so no allocation happens there.
    let root = match &spec.image {
        Image::Rootfs(r) => Some(r.clone()),
        Image::Host => None,
    };
    let private_mounts = root.is_some() || !spec.mounts.is_empty();
    let mut binds: Vec<(CString, CString, bool)> = Vec::new();
    for m in &spec.mounts {
        let target = match &root {
            Some(r) => r.join(m.target.strip_prefix("/").unwrap_or(&m.target)),
            None => m.target.clone(),
        };
        binds.push((cstr(&m.source)?, cstr(&target)?, m.read_only));
    }
    let mut special: Vec<(CString, CString, CString, libc::c_ulong)> = Vec::new();
    if let Some(r) = &root {
        if r.join("proc").is_dir() {
            special.push((c"proc".into(), cstr(&r.join("proc"))?, c"proc".into(), 0));
        }
        if r.join("dev").is_dir() {
            special.push((
                c"/dev".into(),
                cstr(&r.join("dev"))?,
                c"".into(),
                libc::MS_BIND | libc::MS_REC,
            ));
        }
    }
    let root_c = root.as_deref().map(cstr).transpose()?;
    let workdir = cstr(Path::new(spec.working_dir.as_deref().unwrap_or("/")))?;
    // SAFETY: the closure makes only raw syscalls on data prepared above; the fds it
    // uses stay open in the parent until spawn returns.
    unsafe {
        cmd.as_std_mut().pre_exec(move || {
            check(libc::setns(netns_fd, libc::CLONE_NEWNET))?;
            // "0" moves the writing process (cgroup v2 cgroup.procs).
            if libc::write(procs_fd, b"0".as_ptr().cast(), 1) != 1 {
                return Err(io::Error::last_os_error());
            }
            // cgroup v1 reads "0" as the writing process too.
            for fd in &extra_fds {
                if libc::write(*fd, b"0".as_ptr().cast(), 1) != 1 {
                    return Err(io::Error::last_os_error());
                }
            }
            // Its own session and process group: the container's tree, not the agent's.
            if libc::setsid() < 0 {
                return Err(io::Error::last_os_error());
            }
            if private_mounts {
                check(libc::unshare(libc::CLONE_NEWNS))?;
                // Nothing mounted here may propagate back to the node.
                check(libc::mount(
                    std::ptr::null(),
                    c"/".as_ptr(),
                    std::ptr::null(),
                    libc::MS_REC | libc::MS_PRIVATE,
                    std::ptr::null(),
                ))?;
                for (src, dst, fstype, flags) in &special {
                    let fstype = if fstype.is_empty() {
                        std::ptr::null()
                    } else {
                        fstype.as_ptr()
                    };
                    check(libc::mount(
                        src.as_ptr(),
                        dst.as_ptr(),
                        fstype,
                        *flags,
                        std::ptr::null(),
                    ))?;
                }
                for (src, dst, ro) in &binds {
                    check(libc::mount(
                        src.as_ptr(),
                        dst.as_ptr(),
                        std::ptr::null(),
                        libc::MS_BIND | libc::MS_REC,
                        std::ptr::null(),
                    ))?;
                    if *ro {
                        check(libc::mount(
                            std::ptr::null(),
                            dst.as_ptr(),
                            std::ptr::null(),
                            libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY,
                            std::ptr::null(),
                        ))?;
                    }
                }
            }
            if let Some(r) = &root_c {
                check(libc::chroot(r.as_ptr()))?;
            }
            check(libc::chdir(workdir.as_ptr()))?;
            Ok(())
        });
    }
    let child = cmd.spawn()?;
    drop(procs);
    drop(extra_procs);
    let pid = child
        .id()
        .ok_or_else(|| io::Error::other("the child exited before its pid was read"))?
        as i32;
    // SAFETY: pidfd_open has no memory arguments; the returned fd is owned here.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh descriptor nobody else owns.
    let pidfd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    Ok(Started { child, pid, pidfd })
}

/// Sends `sig` through a pidfd (ESRCH — already gone — is not an error).
pub fn signal(pidfd: &OwnedFd, sig: i32) -> io::Result<()> {
    // SAFETY: no memory arguments except a null siginfo, which the call allows.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd.as_raw_fd(),
            sig,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        )
    };
    if rc == 0 {
        return Ok(());
    }
    let e = io::Error::last_os_error();
    if e.raw_os_error() == Some(libc::ESRCH) {
        Ok(())
    } else {
        Err(e)
    }
}

/// The exit code Kubernetes reports: the status, or 128 + signal.
pub fn exit_code(status: std::process::ExitStatus) -> (i32, Option<i32>) {
    use std::os::unix::process::ExitStatusExt as _;
    match (status.code(), status.signal()) {
        (Some(c), _) => (c, None),
        (None, Some(s)) => (128 + s, Some(s)),
        (None, None) => (-1, None),
    }
}

/// Kills every process of a cgroup and waits until it is empty (or `timeout`).
pub async fn kill_cgroup(cgroup: &Path, timeout: Duration) -> io::Result<()> {
    if !cgroup.exists() {
        return Ok(());
    }
    if populated(cgroup) {
        std::fs::write(cgroup.join("cgroup.kill"), "1")?;
    }
    let deadline = tokio::time::Instant::now() + timeout;
    while populated(cgroup) {
        if tokio::time::Instant::now() >= deadline {
            return Err(io::Error::other(format!(
                "{} still has processes after cgroup.kill",
                cgroup.display()
            )));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(())
}

/// Whether a cgroup (or a descendant) has processes (`cgroup.events`).
pub fn populated(cgroup: &Path) -> bool {
    std::fs::read_to_string(cgroup.join("cgroup.events"))
        .map(|s| s.lines().any(|l| l == "populated 1"))
        .unwrap_or(false)
}

/// Removes a cgroup tree bottom-up (it must be empty of processes).
pub fn remove_cgroup(cgroup: &Path) -> io::Result<()> {
    if !cgroup.exists() {
        return Ok(());
    }
    for e in std::fs::read_dir(cgroup)? {
        let e = e?;
        if e.file_type()?.is_dir() {
            remove_cgroup(&e.path())?;
        }
    }
    match std::fs::remove_dir(cgroup) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}
