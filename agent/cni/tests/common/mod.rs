//! Test harness for skiff-cni's privileged tests: namespaces the test owns (removed on
//! drop, also while unwinding), a runner that executes a CNI plugin inside a "host"
//! namespace the way a runtime would, and `ip -j` readers.
//!
//! Nothing here touches the host's own interfaces: the plugin runs under
//! `ip netns exec <host-ns>`, so its "host" is a namespace made by the test.

#![allow(dead_code)] // each test binary uses a different part of the harness

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, Instant},
};

use serde_json::{json, Value};

pub const BIN: &str = env!("CARGO_BIN_EXE_skiff-cni");
const PREFIX: &str = "skt-";
static COUNTER: AtomicU32 = AtomicU32::new(0);
static CLEAN_STALE: std::sync::Once = std::sync::Once::new();

/// CI=true (or 1, as `cargo xtask test` accepts): skips become failures.
fn in_ci() -> bool {
    matches!(std::env::var("CI").as_deref(), Ok("true") | Ok("1"))
}

/// Writes straight to the stderr handle: libtest captures `eprintln!` of passing tests,
/// and a skip must be seen.
fn say_skipped(why: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "{why}");
}

/// Whether this test can run. Not root: prints SKIPPED (and fails under CI=true, where a
/// skip would hide a broken set-up).
pub fn privileged(test: &str) -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    let why = format!("SKIPPED: {test}: needs root to create network namespaces");
    if in_ci() {
        panic!("{why} (CI=true: run the suite as root, e.g. through `cargo xtask test`)");
    }
    say_skipped(&why);
    false
}

/// A network namespace that exists as long as this value does.
#[derive(Debug)]
pub struct NetNs {
    pub name: String,
}

impl NetNs {
    pub fn new(tag: &str) -> NetNs {
        CLEAN_STALE.call_once(remove_stale);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let name = format!("{PREFIX}{}-{n}-{tag}", std::process::id());
        run_ok("ip", &["netns", "add", &name]);
        let ns = NetNs { name };
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    pub fn path(&self) -> String {
        format!("/run/netns/{}", self.name)
    }

    pub fn ip(&self, args: &[&str]) -> String {
        let mut full = vec!["-n", &self.name];
        full.extend_from_slice(args);
        run_ok("ip", &full)
    }

    /// `ip -j -d link show` parsed.
    pub fn links(&self) -> Vec<Value> {
        serde_json::from_str(&self.ip(&["-j", "-d", "link", "show"])).expect("ip -j link")
    }

    pub fn link(&self, name: &str) -> Option<Value> {
        self.links()
            .into_iter()
            .find(|l| l["ifname"].as_str() == Some(name))
    }

    /// Names of the veth interfaces in this namespace.
    pub fn veths(&self) -> Vec<String> {
        self.links()
            .into_iter()
            .filter(|l| l["linkinfo"]["info_kind"] == "veth")
            .map(|l| l["ifname"].as_str().unwrap().to_string())
            .collect()
    }

    /// IPv4 addresses of `dev` as "a.b.c.d/n".
    pub fn addrs(&self, dev: &str) -> Vec<String> {
        let v: Value =
            serde_json::from_str(&self.ip(&["-j", "-4", "addr", "show", "dev", dev])).unwrap();
        v.as_array()
            .unwrap()
            .iter()
            .flat_map(|l| l["addr_info"].as_array().cloned().unwrap_or_default())
            .map(|a| format!("{}/{}", a["local"].as_str().unwrap(), a["prefixlen"]))
            .collect()
    }

    /// IPv4 main-table routes as "dst via gw dev X" strings, sorted.
    pub fn routes(&self) -> Vec<String> {
        let v: Value = serde_json::from_str(&self.ip(&["-j", "-4", "route", "show"])).unwrap();
        let mut out: Vec<String> = v
            .as_array()
            .unwrap()
            .iter()
            .map(|r| {
                format!(
                    "{} via {} scope {}",
                    r["dst"].as_str().unwrap_or(""),
                    r["gateway"].as_str().unwrap_or("-"),
                    r["scope"].as_str().unwrap_or("global"),
                )
            })
            .collect();
        out.sort();
        out
    }

    /// Reads a file as seen from inside the namespace (sysfs is remounted by netns exec).
    pub fn cat(&self, path: &str) -> String {
        run_ok("ip", &["netns", "exec", &self.name, "cat", path])
            .trim()
            .to_string()
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        // Errors are printed, not raised: panicking in drop while unwinding aborts.
        match Command::new("ip")
            .args(["netns", "del", &self.name])
            .output()
        {
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

/// Namespaces of earlier runs killed before their drops ran: `skt-<pid>-…` whose pid is gone.
fn remove_stale() {
    let Ok(entries) = std::fs::read_dir("/run/netns") else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_prefix(PREFIX)
            .and_then(|r| r.split('-').next())
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = Command::new("ip").args(["netns", "del", &name]).status();
        }
    }
}

pub fn run_ok(cmd: &str, args: &[&str]) -> String {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running {cmd} {}: {e}", args.join(" ")));
    assert!(
        out.status.success(),
        "`{cmd} {}` failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A directory removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let p = std::env::temp_dir().join(format!("skiff-cni-{}-{n}-{tag}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    pub fn str(&self) -> &str {
        self.0.to_str().unwrap()
    }

    /// Entries of `<dir>/<network>`, sorted.
    pub fn files(&self, network: &str) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(self.0.join(network))
            .map(|rd| {
                rd.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    }

    /// Reservation files only (names that parse as IPs).
    pub fn ip_files(&self, network: &str) -> Vec<String> {
        self.files(network)
            .into_iter()
            .filter(|f| f.parse::<std::net::Ipv4Addr>().is_ok())
            .collect()
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// What one plugin invocation returned.
#[derive(Debug)]
pub struct Reply {
    pub ok: bool,
    pub stdout: String,
    pub stderr: String,
}

impl Reply {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| {
            panic!(
                "plugin stdout is not JSON ({e}): {:?}; stderr: {}",
                self.stdout, self.stderr
            )
        })
    }

    /// Asserts success and returns the parsed result (Null for commands without output).
    pub fn expect_ok(&self, what: &str) -> Value {
        assert!(
            self.ok,
            "{what} failed: stdout {} stderr {}",
            self.stdout, self.stderr
        );
        if self.stdout.trim().is_empty() {
            Value::Null
        } else {
            self.json()
        }
    }

    /// Asserts failure with a spec error object carrying `code`.
    pub fn expect_err(&self, code: u64, what: &str) -> Value {
        assert!(
            !self.ok,
            "{what}: expected error {code}, got success: {}",
            self.stdout
        );
        let v = self.json();
        assert_eq!(v["code"], json!(code), "{what}: wrong code in {v}");
        for k in ["cniVersion", "msg", "details"] {
            assert!(v[k].is_string(), "{what}: error object lacks {k}: {v}");
        }
        v
    }
}

/// One CNI invocation: plugin binary, command, env and stdin config.
pub struct Call<'a> {
    pub plugin: &'a str,
    pub host: &'a NetNs,
    pub command: &'a str,
    pub container_id: Option<&'a str>,
    pub netns: Option<String>,
    pub ifname: Option<&'a str>,
    pub extra_env: Vec<(&'a str, String)>,
}

impl<'a> Call<'a> {
    pub fn new(plugin: &'a str, host: &'a NetNs, command: &'a str) -> Call<'a> {
        Call {
            plugin,
            host,
            command,
            container_id: None,
            netns: None,
            ifname: None,
            extra_env: Vec::new(),
        }
    }

    pub fn attach(mut self, id: &'a str, netns: &NetNs, ifname: &'a str) -> Self {
        self.container_id = Some(id);
        self.netns = Some(netns.path());
        self.ifname = Some(ifname);
        self
    }

    pub fn command(&self) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.host.name, self.plugin])
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("CNI_COMMAND", self.command)
            .env("CNI_PATH", "/usr/lib/cni")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if let Some(id) = self.container_id {
            c.env("CNI_CONTAINERID", id);
        }
        if let Some(ns) = &self.netns {
            c.env("CNI_NETNS", ns);
        }
        if let Some(i) = self.ifname {
            c.env("CNI_IFNAME", i);
        }
        for (k, v) in &self.extra_env {
            c.env(k, v);
        }
        c
    }

    pub fn run(&self, stdin: &Value) -> Reply {
        self.run_raw(&stdin.to_string())
    }

    pub fn run_raw(&self, stdin: &str) -> Reply {
        let mut child = self.command().spawn().expect("spawning plugin");
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(stdin.as_bytes())
            .expect("writing stdin");
        wait_reply(child)
    }
}

pub fn wait_reply(child: std::process::Child) -> Reply {
    let out = child.wait_with_output().expect("waiting for plugin");
    Reply {
        ok: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// A bridge-plugin style config for network `name` on `subnet`.
pub fn conf(version: &str, name: &str, bridge: &str, subnet: &str, data: &TempDir) -> Value {
    json!({
        "cniVersion": version,
        "name": name,
        "type": "skiff-cni",
        "bridge": bridge,
        "isGateway": true,
        "isDefaultGateway": true,
        "mtu": 1400,
        "hairpinMode": true,
        "ipam": {
            "type": "host-local",
            "ranges": [[{"subnet": subnet}]],
            "dataDir": data.str(),
        },
    })
}

/// Polls `cond` until it holds or `timeout` passes.
pub fn wait_for(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::yield_now();
    }
}

/// The Debian reference plugins, when installed.
pub fn reference_plugins(test: &str) -> Option<PathBuf> {
    let dir = PathBuf::from("/usr/lib/cni");
    if dir.join("bridge").exists() && dir.join("host-local").exists() {
        return Some(dir);
    }
    let why = format!(
        "SKIPPED: {test}: Debian's reference CNI plugins are not in /usr/lib/cni \
         (apt-get install -y containernetworking-plugins)"
    );
    if in_ci() {
        panic!("{why}");
    }
    say_skipped(&why);
    None
}
