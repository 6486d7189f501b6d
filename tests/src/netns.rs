//! Network namespaces owned by a test: unique names, removed on drop (also when the test
//! panics, since drop runs during unwinding), plus veth and bridge helpers.
//!
//! Namespaces are made with iproute2 (`ip netns add`), so they are visible to `ip netns
//! exec` for debugging a failing test. Code runs inside one through [`NetNs::run`], which
//! moves a fresh thread into it with setns(2): only that thread changes namespace, and
//! sockets it creates stay in that namespace wherever they are used afterwards.

use std::{
    fs::File,
    process::Command,
    sync::atomic::{AtomicU32, Ordering},
};

use nix::sched::{setns, CloneFlags};

/// Prefix of every namespace the harness creates: `skt-<pid>-<n>-<tag>`.
const PREFIX: &str = "skt-";

static COUNTER: AtomicU32 = AtomicU32::new(0);
static CLEAN_STALE: std::sync::Once = std::sync::Once::new();

/// Runs `ip` with `args`, panicking with the command and its stderr if it fails.
pub fn ip(args: &[&str]) {
    let out = Command::new("ip")
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running `ip {}`: {e}", args.join(" ")));
    assert!(
        out.status.success(),
        "`ip {}` failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr).trim()
    );
}

/// A network namespace that exists for as long as this value does.
#[derive(Debug)]
pub struct NetNs {
    name: String,
}

impl NetNs {
    /// Creates a fresh namespace with loopback up. `tag` appears in its name for debugging.
    pub fn new(tag: &str) -> NetNs {
        CLEAN_STALE.call_once(remove_stale_namespaces);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let name = format!("{PREFIX}{}-{n}-{tag}", std::process::id());
        ip(&["netns", "add", &name]);
        let ns = NetNs { name };
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    /// The namespace's name (as `ip netns list` shows it).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Runs `ip -n <ns> args...`, panicking on failure.
    pub fn ip(&self, args: &[&str]) {
        let mut full = vec!["-n", self.name.as_str()];
        full.extend_from_slice(args);
        ip(&full);
    }

    /// Runs `ip -n <ns> args...` and returns its stdout.
    pub fn ip_output(&self, args: &[&str]) -> String {
        let out = Command::new("ip")
            .arg("-n")
            .arg(&self.name)
            .args(args)
            .output()
            .expect("running ip");
        assert!(
            out.status.success(),
            "`ip -n {} {}` failed",
            self.name,
            args.join(" ")
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Adds `cidr` (e.g. "198.18.0.1/24") to `dev` and sets it up.
    pub fn addr(&self, dev: &str, cidr: &str) {
        self.ip(&["addr", "add", cidr, "dev", dev]);
        self.ip(&["link", "set", dev, "up"]);
    }

    /// Creates a bridge `name` in this namespace, up.
    pub fn bridge(&self, name: &str) {
        self.ip(&["link", "add", name, "type", "bridge"]);
        self.ip(&["link", "set", name, "up"]);
    }

    /// Puts `dev` on bridge `bridge` and sets it up.
    pub fn enslave(&self, dev: &str, bridge: &str) {
        self.ip(&["link", "set", dev, "master", bridge]);
        self.ip(&["link", "set", dev, "up"]);
    }

    /// Sets a sysctl of this namespace (`key` like "net/ipv4/ip_forward").
    pub fn sysctl(&self, key: &str, value: &str) {
        let path = format!("/proc/sys/{key}");
        self.run(|| std::fs::write(&path, value))
            .unwrap_or_else(|e| panic!("setting {path} in {}: {e}", self.name));
    }

    /// Runs `f` on a thread that has entered this namespace, and returns its result.
    /// Panics in `f` propagate to the caller.
    pub fn run<R: Send>(&self, f: impl FnOnce() -> R + Send) -> R {
        let path = format!("/run/netns/{}", self.name);
        std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    let file = File::open(&path).unwrap_or_else(|e| panic!("opening {path}: {e}"));
                    setns(&file, CloneFlags::CLONE_NEWNET)
                        .unwrap_or_else(|e| panic!("setns into {path}: {e}"));
                    f()
                })
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
        })
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        // Deleting the namespace also destroys the veths and bridges inside it. Errors are
        // reported but not raised: a panic in drop during unwinding would abort.
        let out = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
        match out {
            Ok(o) if o.status.success() => {}
            Ok(o) => eprintln!(
                "warning: removing netns {}: {}",
                self.name,
                String::from_utf8_lossy(&o.stderr).trim()
            ),
            Err(e) => eprintln!("warning: removing netns {}: {e}", self.name),
        }
    }
}

/// Creates a veth pair with one end `a_dev` in `a` and the other `b_dev` in `b`, both up.
pub fn veth(a: &NetNs, a_dev: &str, b: &NetNs, b_dev: &str) {
    ip(&[
        "link",
        "add",
        a_dev,
        "netns",
        a.name(),
        "type",
        "veth",
        "peer",
        "name",
        b_dev,
        "netns",
        b.name(),
    ]);
    a.ip(&["link", "set", a_dev, "up"]);
    b.ip(&["link", "set", b_dev, "up"]);
}

/// Removes namespaces left by earlier runs that were killed before their drops ran
/// (SIGKILL, timeouts), recognised by the prefix and a pid that no longer exists.
fn remove_stale_namespaces() {
    let Ok(entries) = std::fs::read_dir("/run/netns") else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(rest) = name.strip_prefix(PREFIX) else {
            continue;
        };
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if pid != std::process::id() && !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            let _ = Command::new("ip").args(["netns", "del", &name]).status();
        }
    }
}

/// Sends one raw Ethernet frame out of `iface` with an AF_PACKET socket, bypassing the
/// sender's IP stack (the way to put a malformed packet on a real wire). Call it inside
/// [`NetNs::run`] for the namespace that holds `iface`.
pub fn send_raw_frame(iface: &str, frame: &[u8]) {
    let name = std::ffi::CString::new(iface).expect("interface name");
    // SAFETY: plain libc calls with valid, initialised arguments; the fd is closed below.
    unsafe {
        let ifindex = libc::if_nametoindex(name.as_ptr());
        assert!(ifindex != 0, "no interface {iface} in this namespace");
        let fd = libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0);
        assert!(
            fd >= 0,
            "AF_PACKET socket: {}",
            std::io::Error::last_os_error()
        );
        let mut addr: libc::sockaddr_ll = std::mem::zeroed();
        addr.sll_family = libc::AF_PACKET as u16;
        addr.sll_ifindex = ifindex as i32;
        addr.sll_halen = 6;
        addr.sll_addr[..6].copy_from_slice(&frame[..6]);
        let sent = libc::sendto(
            fd,
            frame.as_ptr().cast(),
            frame.len(),
            0,
            (&addr as *const libc::sockaddr_ll).cast(),
            std::mem::size_of::<libc::sockaddr_ll>() as u32,
        );
        let err = std::io::Error::last_os_error();
        libc::close(fd);
        assert_eq!(
            sent,
            frame.len() as isize,
            "sending a raw frame on {iface}: {err}"
        );
    }
}

/// Polls `f` until it returns `Some`, or panics with `what` after `timeout`.
pub fn wait_for<T>(
    what: &str,
    timeout: std::time::Duration,
    mut f: impl FnMut() -> Option<T>,
) -> T {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}

/// A directory on bpffs for pinned maps and links, removed (unpinned) on drop: programs
/// attached through links pinned there detach once nothing else holds them.
#[derive(Debug)]
pub struct BpffsDir {
    path: std::path::PathBuf,
}

impl BpffsDir {
    pub fn new(tag: &str) -> BpffsDir {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        BpffsDir {
            path: std::path::PathBuf::from(format!(
                "/sys/fs/bpf/{PREFIX}{}-{n}-{tag}",
                std::process::id()
            )),
        }
    }

    pub fn path(&self) -> &std::path::Path {
        &self.path
    }
}

impl Drop for BpffsDir {
    fn drop(&mut self) {
        if self.path.exists() {
            if let Err(e) = std::fs::remove_dir_all(&self.path) {
                eprintln!("warning: removing {}: {e}", self.path.display());
            }
        }
    }
}
