//! Runs entry points of the production eBPF object (the one embedded in skiff-agent)
//! through BPF_PROG_TEST_RUN and reports verdict, output packet, duration and the
//! counter side effects.

use std::time::Duration;

use skiff_agent::datapath::{BpfServiceMaps, Counters, Datapath, DatapathConfig};
use skiff_datapath_abi::{DropReason, NodeConfig, PacketClass, TrafficCounter};

use crate::netns::NetNs;

/// tc return codes (include/uapi/linux/pkt_cls.h).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TcAction {
    /// TC_ACT_OK (0): continue.
    Ok,
    /// TC_ACT_SHOT (2): drop.
    Shot,
    /// TC_ACT_REDIRECT (7).
    Redirect,
    /// Any other code.
    Other(u32),
}

impl TcAction {
    pub fn from_code(code: u32) -> TcAction {
        match code {
            0 => TcAction::Ok,
            2 => TcAction::Shot,
            7 => TcAction::Redirect,
            c => TcAction::Other(c),
        }
    }
}

/// The outcome of one run, with counter deltas.
#[derive(Debug, Clone)]
pub struct RunResult {
    pub action: TcAction,
    pub packet_out: Vec<u8>,
    pub duration: Duration,
    /// Class counters that changed, with their deltas.
    pub class_deltas: Vec<(PacketClass, TrafficCounter)>,
    /// Drop reasons that changed, with their deltas.
    pub drop_deltas: Vec<(DropReason, u64)>,
}

/// A loaded copy of the production object. Each runner has its own maps, so tests that
/// run in parallel do not see each other's side effects.
///
/// Runs execute inside a private network namespace: BPF_PROG_TEST_RUN gives the packet the
/// loopback device of the caller's namespace, so bpf_fib_lookup sees only the routes set
/// up here (a "node" with 198.18.0.2/24 on `ext0` and remote pods 198.18.3.0/24 behind
/// 198.18.0.3), never the host's.
pub struct ProgRunner {
    datapath: Datapath,
    ns: NetNs,
}

impl ProgRunner {
    /// Loads the object (the verifier runs on every program).
    pub fn new() -> ProgRunner {
        Self::with_config(&DatapathConfig::default())
    }

    /// Loads the object with `config` (map sizes; no pinning is expected here).
    pub fn with_config(config: &DatapathConfig) -> ProgRunner {
        crate::privilege::require_privileges();
        let ns = NetNs::new("progrun");
        // veth pairs stand in for devices (this kernel has no dummy driver); the peers only
        // give the devices a carrier.
        for (dev, cidr) in [("ext0", "198.18.0.2/24"), ("pods0", "198.18.2.1/24")] {
            let peer = format!("{dev}p");
            ns.ip(&["link", "add", dev, "type", "veth", "peer", "name", &peer]);
            ns.ip(&["link", "set", &peer, "up"]);
            ns.addr(dev, cidr);
        }
        let remote_pods = ["route", "add", "198.18.3.0/24", "via", "198.18.0.3"];
        ns.ip(&remote_pods);
        // A node forwards; bpf_fib_lookup answers FWD_DISABLED otherwise.
        ns.sysctl("net/ipv4/conf/all/forwarding", "1");
        // Resolved neighbours for the remote pods' gateway and the external client, so
        // bpf_fib_lookup can answer SUCCESS with MAC addresses (what XDP needs).
        for (ip, mac) in [
            ("198.18.0.3", "02:00:00:00:00:03"),
            ("198.18.0.1", "02:00:00:00:00:01"),
        ] {
            ns.ip(&[
                "neigh",
                "add",
                ip,
                "lladdr",
                mac,
                "dev",
                "ext0",
                "nud",
                "permanent",
            ]);
        }
        ProgRunner {
            datapath: Datapath::load_with(config)
                .unwrap_or_else(|e| panic!("loading the datapath: {e}")),
            ns,
        }
    }

    /// Names of the maps and programs in the loaded object.
    pub fn inventory(&self) -> (Vec<String>, Vec<String>) {
        self.datapath.inventory()
    }

    /// The service maps, for provisioning through the real reconciler (once per runner).
    pub fn service_maps(&mut self) -> BpfServiceMaps {
        self.datapath.service_maps().expect("service maps")
    }

    /// Makes test packets count as arriving from outside the cluster (BPF_PROG_TEST_RUN
    /// gives them the runner namespace's loopback device, which this marks external).
    pub fn packets_come_from_outside(&mut self) {
        let datapath = &mut self.datapath;
        self.ns
            .run(|| datapath.set_external_interface("lo"))
            .expect("marking lo external");
    }

    /// Sets the node's SNAT configuration.
    pub fn set_node_config(&mut self, config: NodeConfig) {
        self.datapath
            .set_node_config(config)
            .expect("writing the node config");
    }

    /// Masquerades test packets (BPF_PROG_TEST_RUN gives them the runner namespace's
    /// loopback device, which this makes a masquerading uplink) with `m`, exempting
    /// `non_masquerade`.
    pub fn masquerade_as_uplink(
        &mut self,
        m: skiff_agent::datapath::Masquerade,
        non_masquerade: &[(std::net::Ipv4Addr, u8)],
    ) {
        let datapath = &mut self.datapath;
        self.ns
            .run(|| datapath.set_masquerade(&[("lo", m)]))
            .expect("making lo a masquerading uplink");
        datapath
            .set_non_masquerade(non_masquerade)
            .expect("writing the non-masquerade ranges");
    }

    pub fn counters(&self) -> Counters {
        self.datapath.counters().expect("reading counters")
    }

    /// Runs the XDP program once on `packet`: (XDP action, output frame).
    pub fn run_xdp(&mut self, packet: &[u8]) -> (u32, Vec<u8>) {
        let datapath = &mut self.datapath;
        let run = self
            .ns
            .run(|| datapath.prog_run_xdp(packet, 1))
            .unwrap_or_else(|e| panic!("BPF_PROG_TEST_RUN of the XDP program: {e}"));
        (run.return_code, run.packet_out)
    }

    /// The MAC address of `dev` in the runner's namespace.
    pub fn mac_of(&self, dev: &str) -> [u8; 6] {
        let out = self.ns.ip_output(&["-br", "link", "show", dev]);
        let mac = out.split_whitespace().nth(2).expect("ip -br link output");
        let mut b = [0u8; 6];
        for (i, part) in mac.split(':').enumerate() {
            b[i] = u8::from_str_radix(part, 16).expect("hex");
        }
        b
    }

    /// Runs `program` once on `packet`.
    pub fn run(&mut self, program: &str, packet: &[u8]) -> RunResult {
        self.run_repeat(program, packet, 1)
    }

    /// Runs `program` `repeat` times on `packet` (duration is the kernel's mean per run).
    pub fn run_repeat(&mut self, program: &str, packet: &[u8], repeat: u32) -> RunResult {
        let before = self.counters();
        let datapath = &mut self.datapath;
        let run = self
            .ns
            .run(|| datapath.prog_run(program, packet, repeat))
            .unwrap_or_else(|e| panic!("BPF_PROG_TEST_RUN of {program}: {e}"));
        let after = self.counters();
        let class_deltas = after
            .classes
            .iter()
            .zip(&before.classes)
            .filter(|((_, a), (_, b))| a != b)
            .map(|((c, a), (_, b))| {
                (
                    *c,
                    TrafficCounter {
                        packets: a.packets - b.packets,
                        bytes: a.bytes - b.bytes,
                    },
                )
            })
            .collect();
        let drop_deltas = after
            .drops
            .iter()
            .zip(&before.drops)
            .filter(|((_, a), (_, b))| a != b)
            .map(|((r, a), (_, b))| (*r, a - b))
            .collect();
        RunResult {
            action: TcAction::from_code(run.return_code),
            packet_out: run.packet_out,
            duration: run.duration,
            class_deltas,
            drop_deltas,
        }
    }
}

impl Default for ProgRunner {
    fn default() -> Self {
        ProgRunner::new()
    }
}
