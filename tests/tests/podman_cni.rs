//! A real container runtime invokes skiff-cni: Debian's `podman` (CNI network backend,
//! `runc`) starts a container from a locally built image (no registry is reachable: a
//! busybox rootfs imported with `podman import`), the container gets its address from
//! skiff-cni's IPAM and reaches a ClusterIP that skiff's tc program translates per packet
//! to a backend outside the node; removing the container releases the address and the
//! veth (podman runs CNI DEL).
//!
//! ```text
//!  node ns: [pmbr0 10.77.0.1/24, created by skiff-cni's ADD] --- podman container 10.77.0.x
//!           [b0 198.18.9.1/24] --- backend ns [eth0 198.18.9.2] HTTP :8080
//!  ClusterIP 10.96.77.10:80 -> 198.18.9.2:8080 (remote backend: SNAT to 198.18.9.1)
//! ```
//!
//! podman runs in the node namespace through `nsenter --net` (not `ip netns exec`, which
//! remounts /sys and hides the cgroup hierarchies runc needs), with its own storage and
//! run directories, network config directory, plugin directory and cgroup parent, so the
//! machine's podman state is never touched. Why runc and not crun (Debian's default): this
//! machine mounts cgroups in hybrid mode with a controller (hugetlb) on the v2 hierarchy,
//! which crun refuses; runc supports it.

use std::{
    io::{Read as _, Write as _},
    net::{Ipv4Addr, SocketAddrV4, TcpListener},
    path::{Path, PathBuf},
    process::{Command, Output},
    time::Duration,
};

use skiff_agent::{
    datapath::{Datapath, DatapathConfig},
    model::{
        Endpoint, EndpointState, Frontend, FrontendKind, Model, Protocol, ServicePort,
        ServicePortName,
    },
    reconcile::Reconciler,
};
use skiff_datapath_abi::NodeConfig;
use skiff_tests::{
    apiserver::sibling_binary,
    netns::{veth, wait_for, NetNs},
    privilege::require_privileges,
};

const NODE_ADDR: Ipv4Addr = Ipv4Addr::new(198, 18, 9, 1);
const BACKEND: Ipv4Addr = Ipv4Addr::new(198, 18, 9, 2);
const CLUSTER_IP: Ipv4Addr = Ipv4Addr::new(10, 96, 77, 10);
const BRIDGE: &str = "pmbr0";
const IMAGE: &str = "skiff.local/busybox:podman-test";

fn need(path: &str, package: &str) {
    assert!(
        Path::new(path).exists(),
        "{path} is missing: install Debian's {package} (`cargo xtask setup` does)"
    );
}

/// podman with everything it keeps pointed into `dir`.
struct Podman {
    dir: tempfile::TempDir,
    netns: String,
    cgroup_parent: String,
}

impl Podman {
    fn new(netns: &NetNs) -> Podman {
        need("/usr/bin/podman", "podman");
        need("/usr/sbin/runc", "runc");
        need("/bin/busybox", "busybox-static");
        let dir = tempfile::Builder::new()
            .prefix("skiff-podman-")
            .tempdir()
            .unwrap();
        let d = dir.path();
        for sub in ["root", "runroot", "net", "bin", "ipam", "rootfs/bin"] {
            std::fs::create_dir_all(d.join(sub)).unwrap();
        }
        std::fs::copy(sibling_binary("skiff-cni"), d.join("bin/skiff-cni")).unwrap();
        let conf = format!(
            "[engine]\ncgroup_manager = \"cgroupfs\"\nevents_logger = \"file\"\n\
             events_logfile_path = \"{0}/events.log\"\nruntime = \"runc\"\n\
             [network]\nnetwork_backend = \"cni\"\ncni_plugin_dirs = [\"{0}/bin\"]\n\
             network_config_dir = \"{0}/net\"\n",
            d.display()
        );
        std::fs::write(d.join("containers.conf"), conf).unwrap();
        let pm = Podman {
            netns: format!("/run/netns/{}", netns.name()),
            cgroup_parent: format!("/skiff-podman-{}", std::process::id()),
            dir,
        };
        pm.build_image();
        pm
    }

    fn cmd(&self) -> Command {
        let d = self.dir.path();
        let mut c = Command::new("nsenter");
        c.arg(format!("--net={}", self.netns))
            .arg("podman")
            .arg("--root")
            .arg(d.join("root"))
            .arg("--runroot")
            .arg(d.join("runroot"))
            .args(["--storage-driver", "vfs"])
            .env("CONTAINERS_CONF", d.join("containers.conf"));
        c
    }

    /// `podman run <flags> <args>` with what every container here needs: the skiff-cni
    /// network, our cgroup parent, and ulimits within this machine's hard RLIMIT_NOFILE
    /// (below podman's default of 1048576, which runc cannot set).
    fn run_container(&self, network: &str, flags: &[&str], args: &[&str]) -> Output {
        let mut all = vec!["run"];
        all.extend_from_slice(flags);
        all.extend_from_slice(&[
            "--network",
            network,
            "--cgroup-parent",
            &self.cgroup_parent,
            "--ulimit",
            "nofile=1024:1024",
            "--ulimit",
            "nproc=1024:1024",
            IMAGE,
        ]);
        all.extend_from_slice(args);
        self.run(&all)
    }

    fn run(&self, args: &[&str]) -> Output {
        self.cmd()
            .args(args)
            .output()
            .expect("running podman through nsenter")
    }

    /// A busybox root filesystem (Debian's static busybox and its applet links) imported
    /// as a local image: the stand-in for an image pulled from a registry.
    fn build_image(&self) {
        let rootfs = self.dir.path().join("rootfs");
        std::fs::copy("/bin/busybox", rootfs.join("bin/busybox")).unwrap();
        for applet in ["sh", "ip", "nc", "cat", "sleep"] {
            std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(applet)).unwrap();
        }
        let tar = self.dir.path().join("rootfs.tar");
        let st = Command::new("tar")
            .arg("-C")
            .arg(&rootfs)
            .arg("-cf")
            .arg(&tar)
            .arg(".")
            .status()
            .unwrap();
        assert!(st.success(), "tar of the rootfs failed");
        let out = self.run(&["import", tar.to_str().unwrap(), IMAGE]);
        assert!(
            out.status.success(),
            "podman import: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// The CNI network podman runs its containers in: skiff-cni, as the agent configures it.
    fn write_network(&self, name: &str) {
        let conf = serde_json::json!({
            "cniVersion": "1.0.0",
            "name": name,
            "plugins": [{
                "type": "skiff-cni",
                "bridge": BRIDGE,
                "isGateway": true,
                "isDefaultGateway": true,
                "hairpinMode": true,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{"subnet": "10.77.0.0/24", "gateway": "10.77.0.1"}]],
                    "dataDir": self.ipam_dir(),
                },
            }],
        });
        std::fs::write(
            self.dir.path().join(format!("net/{name}.conflist")),
            serde_json::to_vec_pretty(&conf).unwrap(),
        )
        .unwrap();
    }

    fn ipam_dir(&self) -> PathBuf {
        self.dir.path().join("ipam")
    }

    /// Addresses skiff-cni's IPAM holds for `network` (one file per address).
    fn reserved(&self, network: &str) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(self.ipam_dir().join(network))
            .map(|rd| {
                rd.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| n.parse::<Ipv4Addr>().is_ok())
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        // A failed test may leave containers: remove them (CNI DEL runs), then the cgroup
        // directories runc made under our parent in every hierarchy.
        let _ = self.run(&["rm", "--all", "--force", "--time", "0"]);
        if let Ok(rd) = std::fs::read_dir("/sys/fs/cgroup") {
            for h in rd.flatten() {
                let top = h.path().join(self.cgroup_parent.trim_start_matches('/'));
                remove_cgroup_tree(&top);
            }
        }
    }
}

fn remove_cgroup_tree(dir: &Path) {
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                remove_cgroup_tree(&e.path());
            }
        }
        let _ = std::fs::remove_dir(dir);
    }
}

/// Answers every HTTP request with the peer address it saw.
fn http_backend(ns: &NetNs) {
    let listener = ns.run(|| TcpListener::bind(SocketAddrV4::new(BACKEND, 8080)).unwrap());
    std::thread::spawn(move || {
        for mut conn in listener.incoming().flatten() {
            let peer = conn.peer_addr().unwrap();
            let mut buf = [0u8; 1024];
            let _ = conn.set_read_timeout(Some(Duration::from_secs(2)));
            let _ = conn.read(&mut buf);
            let body = format!("backend saw {peer}\n");
            let _ = write!(
                conn,
                "HTTP/1.0 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            );
        }
    });
}

/// An HTTP GET with busybox `nc` (Debian's static busybox 1.35 `wget` dies of SIGSEGV in this
/// minimal rootfs, even against a refused port), printing the response.
fn http_get_script(addr: Ipv4Addr) -> String {
    format!("printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 3 {addr} 80")
}

fn clusterip_service() -> Model {
    let port = ServicePort {
        proto: Some(Protocol::Tcp),
        frontends: vec![Frontend {
            addr: CLUSTER_IP,
            port: 80,
            proto: Protocol::Tcp,
            kind: FrontendKind::ClusterIp,
        }],
        endpoints: vec![Endpoint {
            addr: BACKEND,
            port: 8080,
            state: EndpointState::Active,
            local: false,
        }],
        ..Default::default()
    };
    Model {
        services: [(ServicePortName::new("default", "web", "http"), port)]
            .into_iter()
            .collect(),
    }
}

#[test]
fn a_podman_container_gets_its_address_from_skiff_cni_and_reaches_a_clusterip() {
    require_privileges();
    let node = NetNs::new("pmnode");
    let backend = NetNs::new("pmbe");
    veth(&node, "b0", &backend, "eth0");
    node.addr("b0", &format!("{NODE_ADDR}/24"));
    backend.addr("eth0", &format!("{BACKEND}/24"));
    node.sysctl("net/ipv4/conf/all/forwarding", "1");
    http_backend(&backend);
    // The bridge exists before the first container so tc can be attached to it; skiff-cni
    // adopts it and adds the gateway address (isGateway), as on a node the agent set up.
    node.bridge(BRIDGE);

    let mut datapath = Datapath::load_with(&DatapathConfig::default()).expect("loading");
    datapath
        .set_node_config(NodeConfig {
            snat_addr: u32::from(NODE_ADDR).to_be(),
            ..Default::default()
        })
        .unwrap();
    node.run(|| {
        // Pod traffic to the gateway's MAC goes up through the bridge device, so tc ingress
        // on the bridge sees every pod's packets whatever its veth is called; replies from
        // the backend come in on b0.
        datapath.attach_tc_ingress(BRIDGE).unwrap();
        datapath.attach_tc_ingress("b0").unwrap();
    });
    let mut maps = datapath.service_maps().unwrap();
    let report = Reconciler::new().sync(&clusterip_service(), &mut maps);
    assert!(report.errors.is_empty(), "{:?}", report.errors);

    let pm = Podman::new(&node);
    let network = format!("skiffpm{}", std::process::id());
    pm.write_network(&network);

    // A long-running container first: its address is reserved while it runs and the
    // container sees exactly that address on eth0.
    let out = pm.run_container(
        &network,
        &["-d", "--name", "sleeper"],
        &["/bin/sleep", "600"],
    );
    assert!(
        out.status.success(),
        "podman run -d: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let reserved = pm.reserved(&network);
    assert_eq!(reserved.len(), 1, "one address reserved: {reserved:?}");
    let ip = pm.run(&["exec", "sleeper", "/bin/ip", "-4", "addr", "show", "eth0"]);
    let ip = String::from_utf8_lossy(&ip.stdout).into_owned();
    assert!(
        ip.contains(&format!("inet {}/24", reserved[0])),
        "the container's eth0 has skiff-cni's address {}: {ip}",
        reserved[0]
    );
    let gw = node.ip_output(&["-4", "addr", "show", BRIDGE]);
    assert!(
        gw.contains("inet 10.77.0.1/24"),
        "skiff-cni put the gateway on the bridge: {gw}"
    );

    // The container reaches the ClusterIP; the backend sees the node's SNAT address.
    let get = http_get_script(CLUSTER_IP);
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let answer = wait_for(
        "the ClusterIP to answer the container",
        Duration::from_secs(25),
        || {
            let out = pm.run(&["exec", "sleeper", "/bin/sh", "-c", &get]);
            let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
            if out.status.success() && stdout.contains("backend saw") {
                return Some(stdout);
            }
            if std::time::Instant::now() > deadline {
                panic!(
                    "no answer through the ClusterIP: {stdout} {}; datapath counters: {:?}",
                    String::from_utf8_lossy(&out.stderr),
                    datapath.counters(),
                );
            }
            None
        },
    );
    assert!(
        answer.contains(&format!("backend saw {NODE_ADDR}:")),
        "answer through the ClusterIP: {answer}"
    );

    // Removing the container runs CNI DEL: the address and the host-side veth are gone.
    let out = pm.run(&["rm", "--force", "--time", "0", "sleeper"]);
    assert!(
        out.status.success(),
        "podman rm: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        pm.reserved(&network),
        Vec::<String>::new(),
        "address released"
    );
    let links = node.ip_output(&["-o", "link", "show", "master", BRIDGE]);
    assert!(
        links.trim().is_empty(),
        "no veth left on the bridge: {links}"
    );

    // A one-shot `podman run --rm` works too (ADD and DEL around a short-lived container).
    let out = pm.run_container(&network, &["--rm"], &["/bin/sh", "-c", &get]);
    assert!(
        out.status.success(),
        "podman run --rm wget: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("backend saw "),
        "podman run --rm: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert_eq!(
        pm.reserved(&network),
        Vec::<String>::new(),
        "address released"
    );
}
