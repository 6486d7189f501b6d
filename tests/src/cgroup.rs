//! cgroup v2 directories owned by a test, and child processes started inside a network
//! namespace and a cgroup (so cgroup socket hooks see exactly the test's own sockets).

use std::{
    fs::File,
    io::{BufRead as _, BufReader, Write as _},
    os::{fd::AsRawFd as _, unix::process::CommandExt as _},
    path::{Path, PathBuf},
    process::{Child, ChildStdin, ChildStdout, Command, Stdio},
    sync::atomic::{AtomicU32, Ordering},
};

use crate::netns::NetNs;

/// Where this machine mounts cgroup v2 (hybrid layout); a pure v2 host has it at
/// /sys/fs/cgroup. `SKIFF_CGROUP2_ROOT` overrides both.
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

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A cgroup v2 directory removed on drop (after its processes have exited).
#[derive(Debug)]
pub struct Cgroup {
    path: PathBuf,
}

impl Cgroup {
    pub fn new(tag: &str) -> Cgroup {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let path = cgroup2_root().join(format!("skt-{}-{n}-{tag}", std::process::id()));
        std::fs::create_dir(&path)
            .unwrap_or_else(|e| panic!("creating cgroup {}: {e}", path.display()));
        Cgroup { path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_dir(&self.path) {
            eprintln!("warning: removing cgroup {}: {e}", self.path.display());
        }
    }
}

/// A child process with line-based stdin/stdout, killed on drop.
pub struct LineChild {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl LineChild {
    /// Starts `program args` inside `ns` and `cgroup`: the child joins both between fork
    /// and exec, before it creates any socket.
    pub fn spawn(program: &Path, args: &[&str], ns: &NetNs, cgroup: &Cgroup) -> LineChild {
        let ns_file = File::open(format!("/run/netns/{}", ns.name())).expect("opening netns");
        let procs = std::fs::OpenOptions::new()
            .write(true)
            .open(cgroup.path().join("cgroup.procs"))
            .expect("opening cgroup.procs");
        let ns_fd = ns_file.as_raw_fd();
        let procs_fd = procs.as_raw_fd();
        let mut cmd = Command::new(program);
        cmd.args(args).stdin(Stdio::piped()).stdout(Stdio::piped());
        // SAFETY: only async-signal-safe calls (setns, write) between fork and exec; the
        // fds stay open in the parent until spawn returns.
        unsafe {
            cmd.pre_exec(move || {
                if libc::setns(ns_fd, libc::CLONE_NEWNET) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                // "0" moves the writing process itself (cgroup v2 cgroup.procs).
                if libc::write(procs_fd, b"0".as_ptr().cast(), 1) != 1 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", program.display()));
        drop((ns_file, procs));
        let stdin = child.stdin.take().expect("stdin");
        let stdout = BufReader::new(child.stdout.take().expect("stdout"));
        LineChild {
            child,
            stdin,
            stdout,
        }
    }

    /// Sends one command line and returns the answer line.
    pub fn ask(&mut self, line: &str) -> String {
        writeln!(self.stdin, "{line}").expect("writing to the child");
        self.stdin.flush().expect("flushing");
        let mut answer = String::new();
        let n = self
            .stdout
            .read_line(&mut answer)
            .expect("reading the child");
        assert!(n > 0, "the child exited instead of answering `{line}`");
        answer.trim().to_owned()
    }
}

impl Drop for LineChild {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
