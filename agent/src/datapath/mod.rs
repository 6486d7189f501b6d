//! The only module of skiff that imports `aya`: it loads the embedded eBPF object, attaches
//! its programs, reads its maps and runs its programs through BPF_PROG_TEST_RUN.
//!
//! Everything outside this module sees plain Rust types (`Counters`, `ProgRun`, ...), so the
//! rest of the agent and the tests never depend on aya's API directly.

mod batch;
mod counters;
mod ct_delete;
mod inspect;
mod masquerade;
mod object;
mod prog_run;
mod service_maps;

use std::{
    collections::BTreeSet,
    fs::File,
    path::{Path, PathBuf},
};

use aya::{
    maps::HashMap,
    programs::{
        links::{FdLink, PinnedLink},
        tc::{self, SchedClassifierLink},
        CgroupAttachMode, CgroupSockAddr, SchedClassifier, TcAttachType,
    },
    util::KernelVersion,
    Ebpf, EbpfLoader,
};
pub use counters::{counter_reads_batched, Counters, SockCounters};
pub use inspect::Inspector;
pub use masquerade::{interface_address, Masquerade, DEFAULT_PORTS as DEFAULT_MASQUERADE_PORTS};
pub use prog_run::ProgRun;
pub use service_maps::{ct_expired, ct_pair_expired, partner, BpfServiceMaps};
use skiff_datapath_abi::{map_names, program_names, NodeConfig};

use crate::lbmap::MapSizes;

/// Maps moved out of the `Ebpf` object into [`BpfServiceMaps`] at load.
const TAKEN_MAPS: [&str; 9] = [
    map_names::MAGLEV,
    map_names::SERVICES,
    map_names::SLOTS,
    map_names::BACKENDS,
    map_names::SOCK_REV,
    map_names::CONNTRACK,
    map_names::SOURCE_RANGES,
    map_names::SERVICE_OPTIONS,
    map_names::AFFINITY,
];

/// Load-time configuration of the datapath.
#[derive(Debug, Clone, Default)]
pub struct DatapathConfig {
    /// Capacities of the service maps (the `--map-size-*` agent flags).
    pub map_sizes: MapSizes,
    /// bpffs directory (e.g. /sys/fs/bpf/skiff) where maps and links are pinned. With it,
    /// a restarted agent reuses the live maps (conntrack included) and atomically swaps
    /// its programs into the existing links, so established flows never see a gap.
    /// Without it, everything goes away with the process.
    pub pin_dir: Option<PathBuf>,
}

/// Errors from loading, attaching or reading the datapath. Each says what failed and what
/// a user can do about it.
#[derive(Debug, thiserror::Error)]
pub enum DatapathError {
    #[error(
        "loading skiff's eBPF object failed: {}. skiff needs root (CAP_BPF, CAP_NET_ADMIN, \
         CAP_SYS_ADMIN) and Linux >= 5.15 with BTF (/sys/kernel/btf/vmlinux)",
        error_chain(source)
    )]
    Load {
        #[source]
        source: Box<aya::EbpfError>,
    },
    #[error("the eBPF object has no program `{name}`: the agent and ebpf/programs are out of step; rebuild both")]
    MissingProgram { name: String },
    #[error(
        "the eBPF object has no map `{name}`: the agent and ebpf/abi are out of step; rebuild both"
    )]
    MissingMap { name: String },
    #[error("eBPF program `{program}`: {action} failed: {}", error_chain(source))]
    Program {
        program: String,
        action: &'static str,
        #[source]
        source: Box<aya::programs::ProgramError>,
    },
    #[error(
        "attaching `{program}` to interface `{interface}` failed: {}. Check that the \
         interface exists in this network namespace (`ip link show {interface}`)",
        error_chain(source)
    )]
    Attach {
        program: String,
        interface: String,
        #[source]
        source: Box<aya::programs::ProgramError>,
    },
    #[error("adding the clsact qdisc to `{interface}` failed: {source}")]
    Clsact {
        interface: String,
        #[source]
        source: Box<aya::programs::tc::TcError>,
    },
    #[error(
        "opening cgroup {path} failed: {source}. Socket load balancing attaches to a cgroup v2 \
         directory (this machine mounts it at /sys/fs/cgroup/unified)"
    )]
    Cgroup {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "attaching `{program}` to cgroup {path} failed: {}",
        error_chain(source)
    )]
    AttachCgroup {
        program: String,
        path: String,
        #[source]
        source: Box<aya::programs::ProgramError>,
    },
    #[error("pinning under {path} failed: {detail}. Is bpffs mounted there (`mount -t bpf bpf /sys/fs/bpf`)?")]
    Pin { path: String, detail: String },
    #[error("masquerade on `{interface}`: {detail}")]
    Masquerade { interface: String, detail: String },
    #[error("the service maps were already handed out by `Datapath::service_maps`")]
    ServiceMapsTaken,
    #[error("reading map `{map}` failed: {source}")]
    MapRead {
        map: &'static str,
        #[source]
        source: Box<aya::maps::MapError>,
    },
}

/// `error: cause: cause ...`: aya's errors keep the errno in their source chain, and a
/// user needs to see it.
pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        out.push_str(": ");
        out.push_str(&s.to_string());
        cur = s.source();
    }
    out
}

/// The loaded eBPF object: programs loaded into the kernel, maps created. Dropping it
/// detaches everything it attached and releases the maps.
pub struct Datapath {
    ebpf: Ebpf,
    /// Interfaces the tc ingress program is attached to (the links live inside `ebpf`).
    attached: BTreeSet<String>,
    /// The service maps, until handed out once by [`Datapath::service_maps`].
    service_maps: Option<BpfServiceMaps>,
    pin_dir: Option<PathBuf>,
}

// agent sync scale (issue 7)
/// The number of possible CPUs: how many values a per-CPU map holds per entry.
pub fn possible_cpus() -> std::io::Result<usize> {
    aya::util::nr_cpus().map_err(|(_, e)| e)
}
// end agent sync scale

impl Datapath {
    /// Loads the eBPF object embedded in this binary with default map sizes.
    pub fn load() -> Result<Self, DatapathError> {
        Self::load_with(&DatapathConfig::default())
    }

    /// Loads the eBPF object, sizing maps from `config`, and loads every program into the
    /// kernel (running the verifier), without attaching anything.
    pub fn load_with(config: &DatapathConfig) -> Result<Self, DatapathError> {
        let sizes = config.map_sizes;
        let mut loader = EbpfLoader::new();
        let map_pins: Vec<(&str, PathBuf)> = match &config.pin_dir {
            Some(dir) => {
                ensure_bpffs(dir)?;
                let maps = dir.join("maps");
                std::fs::create_dir_all(&maps).map_err(|e| DatapathError::Pin {
                    path: maps.display().to_string(),
                    detail: e.to_string(),
                })?;
                std::fs::create_dir_all(dir.join("links")).map_err(|e| DatapathError::Pin {
                    path: dir.join("links").display().to_string(),
                    detail: e.to_string(),
                })?;
                map_names::ALL.iter().map(|n| (*n, maps.join(n))).collect()
            }
            None => Vec::new(),
        };
        for (name, path) in &map_pins {
            loader.map_pin_path(name, path.as_path());
        }
        let mut ebpf = loader
            .map_max_entries(map_names::SERVICES, sizes.services)
            .map_max_entries(map_names::SLOTS, sizes.slots)
            .map_max_entries(map_names::BACKENDS, sizes.backends)
            .map_max_entries(map_names::SOCK_REV, sizes.sock_rev)
            .map_max_entries(map_names::CONNTRACK, sizes.conntrack)
            .map_max_entries(
                map_names::MAGLEV,
                sizes.maglev_tables.max(1) * skiff_datapath_abi::maglev::TABLE_SIZE,
            )
            .load(object::bytes())
            .map_err(|source| DatapathError::Load {
                source: Box::new(source),
            })?;
        for name in map_names::ALL {
            if ebpf.map(name).is_none() {
                return Err(DatapathError::MissingMap {
                    name: (*name).to_owned(),
                });
            }
        }
        for name in [program_names::TC_INGRESS, program_names::TC_EGRESS] {
            let program = tc_program(&mut ebpf, name)?;
            program.load().map_err(|source| DatapathError::Program {
                program: name.to_owned(),
                action: "load (verifier)",
                source: Box::new(source),
            })?;
        }
        for name in program_names::SOCK_LB {
            let program = sock_program(&mut ebpf, name)?;
            program.load().map_err(|source| DatapathError::Program {
                program: (*name).to_owned(),
                action: "load (verifier)",
                source: Box::new(source),
            })?;
        }
        xdp_program(&mut ebpf)?
            .load()
            .map_err(|source| DatapathError::Program {
                program: program_names::XDP.to_owned(),
                action: "load (verifier)",
                source: Box::new(source),
            })?;
        bind_program(&mut ebpf)?
            .load()
            .map_err(|source| DatapathError::Program {
                program: program_names::SOCK_POST_BIND4.to_owned(),
                action: "load (verifier)",
                source: Box::new(source),
            })?;
        let service_maps = BpfServiceMaps {
            sizes,
            services: take_hash_map(&mut ebpf, map_names::SERVICES)?,
            slots: take_hash_map(&mut ebpf, map_names::SLOTS)?,
            backends: take_hash_map(&mut ebpf, map_names::BACKENDS)?,
            sock_rev: take_hash_map(&mut ebpf, map_names::SOCK_REV)?,
            conntrack_fd: map_fd(&ebpf, map_names::CONNTRACK)?,
            conntrack: take_hash_map(&mut ebpf, map_names::CONNTRACK)?,
            source_ranges: {
                let map = ebpf.take_map(map_names::SOURCE_RANGES).ok_or_else(|| {
                    DatapathError::MissingMap {
                        name: map_names::SOURCE_RANGES.to_owned(),
                    }
                })?;
                aya::maps::lpm_trie::LpmTrie::try_from(map).map_err(|source| {
                    DatapathError::MapRead {
                        map: map_names::SOURCE_RANGES,
                        source: Box::new(source),
                    }
                })?
            },
            options: take_hash_map(&mut ebpf, map_names::SERVICE_OPTIONS)?,
            affinity: take_hash_map(&mut ebpf, map_names::AFFINITY)?,
            maglev: {
                let map =
                    ebpf.take_map(map_names::MAGLEV)
                        .ok_or_else(|| DatapathError::MissingMap {
                            name: map_names::MAGLEV.to_owned(),
                        })?;
                aya::maps::Array::try_from(map).map_err(|source| DatapathError::MapRead {
                    map: map_names::MAGLEV,
                    source: Box::new(source),
                })?
            },
        };
        Ok(Datapath {
            ebpf,
            attached: BTreeSet::new(),
            service_maps: Some(service_maps),
            pin_dir: config.pin_dir.clone(),
        })
    }

    /// Attaches the socket load-balancing programs (connect4, sendmsg4, recvmsg4,
    /// getpeername4) to the cgroup v2 directory `cgroup`: every socket created by a
    /// process in it or below it is translated. Other programs on the cgroup keep running:
    /// aya attaches through bpf_link, and cgroup links always coexist (BPF_F_ALLOW_MULTI
    /// semantics); passing that flag to BPF_LINK_CREATE itself is EINVAL.
    pub fn attach_sock_lb(&mut self, cgroup: &Path) -> Result<(), DatapathError> {
        let dir = File::open(cgroup).map_err(|source| DatapathError::Cgroup {
            path: cgroup.display().to_string(),
            source,
        })?;
        let cgroup_tag = cgroup.display().to_string().replace('/', "_");
        for name in program_names::SOCK_LB {
            let program = sock_program(&mut self.ebpf, name)?;
            let attach_error = |source| DatapathError::AttachCgroup {
                program: (*name).to_owned(),
                path: cgroup.display().to_string(),
                source: Box::new(source),
            };
            let id = program
                .attach(&dir, CgroupAttachMode::Single)
                .map_err(attach_error)?;
            if let Some(pin_dir) = &self.pin_dir {
                // The new program runs before the old one goes: for a moment both are in
                // the cgroup's chain, and the second sees an already translated address
                // (not a frontend) and passes. No connect() ever goes untranslated.
                let path = pin_dir
                    .join("links")
                    .join(format!("sock-{name}-{cgroup_tag}"));
                let link = program.take_link(id).map_err(attach_error)?;
                pin_link(link, &path, " (pinning needs bpf_link cgroup attach)")?;
            }
        }
        Ok(())
    }

    /// NodePort bind protection: binds of ports in `port_min..=port_max` on the wildcard
    /// or one of `node_addrs` by processes in `cgroup` (and below) fail with EADDRINUSE.
    /// `enabled: false` turns it off without detaching.
    pub fn set_bind_protection(
        &mut self,
        port_min: u16,
        port_max: u16,
        node_addrs: &[std::net::Ipv4Addr],
        enabled: bool,
    ) -> Result<(), DatapathError> {
        let read_err = |map: &'static str| {
            move |source| DatapathError::MapRead {
                map,
                source: Box::new(source),
            }
        };
        {
            let map = self.ebpf.map_mut(map_names::NODE_ADDRS).ok_or_else(|| {
                DatapathError::MissingMap {
                    name: map_names::NODE_ADDRS.to_owned(),
                }
            })?;
            let mut addrs: HashMap<_, u32, u8> =
                HashMap::try_from(map).map_err(read_err(map_names::NODE_ADDRS))?;
            for a in node_addrs {
                addrs
                    .insert(u32::from(*a).to_be(), 1, 0)
                    .map_err(read_err(map_names::NODE_ADDRS))?;
            }
        }
        let map = self
            .ebpf
            .map_mut(map_names::BIND_PROTECTION)
            .ok_or_else(|| DatapathError::MissingMap {
                name: map_names::BIND_PROTECTION.to_owned(),
            })?;
        let mut array: aya::maps::Array<_, skiff_datapath_abi::BindProtection> =
            aya::maps::Array::try_from(map).map_err(read_err(map_names::BIND_PROTECTION))?;
        array
            .set(
                0,
                skiff_datapath_abi::BindProtection {
                    port_min,
                    port_max,
                    enabled: u32::from(enabled),
                },
                0,
            )
            .map_err(read_err(map_names::BIND_PROTECTION))
    }

    /// Ports in the NodePort range that processes may still bind (the agent's own
    /// health-check node ports). Replaces the previous set.
    pub fn set_bind_exemptions(&mut self, ports: &[u16]) -> Result<(), DatapathError> {
        let map =
            self.ebpf
                .map_mut(map_names::BIND_EXEMPT)
                .ok_or_else(|| DatapathError::MissingMap {
                    name: map_names::BIND_EXEMPT.to_owned(),
                })?;
        let err = |source| DatapathError::MapRead {
            map: map_names::BIND_EXEMPT,
            source: Box::new(source),
        };
        let mut exempt: HashMap<_, u32, u8> = HashMap::try_from(map).map_err(err)?;
        let old: Vec<u32> = exempt.keys().filter_map(Result::ok).collect();
        for p in ports {
            exempt.insert(u32::from(*p), 1, 0).map_err(err)?;
        }
        for p in old {
            if !ports.iter().any(|x| u32::from(*x) == p) {
                let _ = exempt.remove(&p);
            }
        }
        Ok(())
    }

    /// Attaches NodePort bind protection (post_bind4) to the cgroup v2 directory `cgroup`.
    pub fn attach_bind_protection(&mut self, cgroup: &Path) -> Result<(), DatapathError> {
        let dir = File::open(cgroup).map_err(|source| DatapathError::Cgroup {
            path: cgroup.display().to_string(),
            source,
        })?;
        let program = bind_program(&mut self.ebpf)?;
        let id = program
            .attach(&dir, CgroupAttachMode::Single)
            .map_err(|source| DatapathError::AttachCgroup {
                program: program_names::SOCK_POST_BIND4.to_owned(),
                path: cgroup.display().to_string(),
                source: Box::new(source),
            })?;
        if let Some(pin_dir) = &self.pin_dir {
            let tag = cgroup.display().to_string().replace('/', "_");
            let path = pin_dir.join("links").join(format!("bind-{tag}"));
            let link = program
                .take_link(id)
                .map_err(|source| DatapathError::AttachCgroup {
                    program: program_names::SOCK_POST_BIND4.to_owned(),
                    path: cgroup.display().to_string(),
                    source: Box::new(source),
                })?;
            pin_link(link, &path, "")?;
        }
        Ok(())
    }

    /// The service maps, for the reconciler (the only writer). Handed out once.
    pub fn service_maps(&mut self) -> Result<BpfServiceMaps, DatapathError> {
        self.service_maps
            .take()
            .ok_or(DatapathError::ServiceMapsTaken)
    }

    /// Writes this node's datapath settings (SNAT address and port range).
    pub fn set_node_config(&mut self, config: NodeConfig) -> Result<(), DatapathError> {
        let map =
            self.ebpf
                .map_mut(map_names::CONFIG)
                .ok_or_else(|| DatapathError::MissingMap {
                    name: map_names::CONFIG.to_owned(),
                })?;
        let mut array: aya::maps::Array<_, NodeConfig> =
            aya::maps::Array::try_from(map).map_err(|source| DatapathError::MapRead {
                map: map_names::CONFIG,
                source: Box::new(source),
            })?;
        array
            .set(0, config, 0)
            .map_err(|source| DatapathError::MapRead {
                map: map_names::CONFIG,
                source: Box::new(source),
            })
    }

    /// Per-service (`backends == false`) or per-backend counters of `ids`, summed over
    /// CPUs (ids past the array's end were never counted and read as zero).
    pub fn lb_counters(
        &self,
        backends: bool,
        ids: &[u32],
    ) -> Result<Vec<(u32, skiff_datapath_abi::LbCounter)>, DatapathError> {
        counters::read_lb(&self.ebpf, backends, ids)
    }

    // agent sync scale (issue 7)
    /// Overwrites the per-CPU values of one per-service (`backends == false`) or
    /// per-backend counter (tests of the readers; `per_cpu` has one value per possible
    /// CPU, [`possible_cpus`]).
    pub fn set_lb_counter(
        &mut self,
        backends: bool,
        id: u32,
        per_cpu: Vec<skiff_datapath_abi::LbCounter>,
    ) -> Result<(), DatapathError> {
        counters::write_lb(&mut self.ebpf, backends, id, per_cpu)
    }
    // end agent sync scale

    /// Reads the per-CPU socket load-balancing counters, summed over CPUs.
    pub fn sock_counters(&self) -> Result<SockCounters, DatapathError> {
        counters::read_sock(&self.ebpf)
    }

    /// Attaches the tc ingress program to `interface` in the calling thread's network
    /// namespace (TCX on Linux >= 6.6, a clsact qdisc + cls_bpf before that). With a pin
    /// directory, an existing pinned link is updated in place (atomic program swap).
    pub fn attach_tc_ingress(&mut self, interface: &str) -> Result<(), DatapathError> {
        self.attach_tc(interface, TcAttachType::Ingress, program_names::TC_INGRESS)?;
        self.attached.insert(interface.to_owned());
        Ok(())
    }

    /// Marks `interface` (in the calling thread's network namespace) as node-facing:
    /// traffic arriving on it comes from outside the cluster, so externalTrafficPolicy=Local
    /// applies to it.
    pub fn set_external_interface(&mut self, interface: &str) -> Result<(), DatapathError> {
        let name = std::ffi::CString::new(interface).map_err(|_| DatapathError::Pin {
            path: interface.to_owned(),
            detail: "interface name contains NUL".into(),
        })?;
        // SAFETY: if_nametoindex reads a NUL-terminated string.
        let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) };
        if ifindex == 0 {
            return Err(DatapathError::Attach {
                program: "interface roles".into(),
                interface: interface.to_owned(),
                source: Box::new(aya::programs::ProgramError::UnexpectedProgramType),
            });
        }
        let map =
            self.ebpf
                .map_mut(map_names::IFACES)
                .ok_or_else(|| DatapathError::MissingMap {
                    name: map_names::IFACES.to_owned(),
                })?;
        let mut roles: HashMap<_, u32, u32> =
            HashMap::try_from(map).map_err(|source| DatapathError::MapRead {
                map: map_names::IFACES,
                source: Box::new(source),
            })?;
        roles
            .insert(ifindex, skiff_datapath_abi::iface_flags::EXTERNAL, 0)
            .map_err(|source| DatapathError::MapRead {
                map: map_names::IFACES,
                source: Box::new(source),
            })
    }

    /// Attaches XDP acceleration to `interface` (in the calling thread's namespace):
    /// `native` runs it in the driver (veth supports it; the receiving side of a redirect
    /// must then have XDP too), otherwise generic (skb) mode. With a pin directory the link
    /// is pinned and a restarted agent swaps its program in.
    pub fn attach_xdp(&mut self, interface: &str, native: bool) -> Result<(), DatapathError> {
        use aya::programs::{xdp::XdpLink, XdpMode};
        let name = program_names::XDP;
        let attach_error = |source| DatapathError::Attach {
            program: name.to_owned(),
            interface: interface.to_owned(),
            source: Box::new(source),
        };
        let pin_path = self
            .pin_dir
            .as_ref()
            .map(|d| d.join("links").join(format!("xdp-{interface}")));
        let program = xdp_program(&mut self.ebpf)?;
        if let Some(path) = pin_path.as_ref().filter(|p| p.exists()) {
            let link: XdpLink = pinned_link(path)?;
            program.attach_to_link(link).map_err(attach_error)?;
            return Ok(());
        }
        let mode = if native {
            XdpMode::Driver
        } else {
            XdpMode::Skb
        };
        let id = program.attach(interface, mode).map_err(attach_error)?;
        if let Some(path) = pin_path {
            let link = program.take_link(id).map_err(attach_error)?;
            pin_link(link, &path, "")?;
        }
        Ok(())
    }

    /// (redirected, passed) frames of the XDP program, summed over CPUs.
    pub fn xdp_counters(&self) -> Result<(u64, u64), DatapathError> {
        let map = self
            .ebpf
            .map(map_names::XDP_STATS)
            .ok_or_else(|| DatapathError::MissingMap {
                name: map_names::XDP_STATS.to_owned(),
            })?;
        let array: aya::maps::PerCpuArray<_, u64> =
            aya::maps::PerCpuArray::try_from(map).map_err(|source| DatapathError::MapRead {
                map: map_names::XDP_STATS,
                source: Box::new(source),
            })?;
        let mut sums = [0u64; 2];
        for (i, sum) in sums.iter_mut().enumerate() {
            let v = array
                .get(&(i as u32), 0)
                .map_err(|source| DatapathError::MapRead {
                    map: map_names::XDP_STATS,
                    source: Box::new(source),
                })?;
            *sum = v.iter().sum();
        }
        Ok((sums[0], sums[1]))
    }

    /// Runs the XDP program through BPF_PROG_TEST_RUN (see [`Datapath::prog_run`]).
    pub fn prog_run_xdp(&mut self, packet: &[u8], repeat: u32) -> Result<ProgRun, DatapathError> {
        let prog = xdp_program(&mut self.ebpf)?;
        prog_run::run(prog, program_names::XDP, packet, repeat)
    }

    /// Attaches the tc egress program (reverse translation of replies) to `interface`.
    pub fn attach_tc_egress(&mut self, interface: &str) -> Result<(), DatapathError> {
        self.attach_tc(interface, TcAttachType::Egress, program_names::TC_EGRESS)
    }

    fn attach_tc(
        &mut self,
        interface: &str,
        attach_type: TcAttachType,
        name: &'static str,
    ) -> Result<(), DatapathError> {
        let tcx = KernelVersion::current().is_ok_and(|v| v >= KernelVersion::new(6, 6, 0));
        if !tcx {
            match tc::qdisc_add_clsact(interface) {
                Ok(()) => {}
                // Another tc user (or an earlier run) already added it: that is fine.
                Err(tc::TcError::NetlinkError(e)) if e.raw_os_error() == Some(libc::EEXIST) => {}
                Err(source) => {
                    return Err(DatapathError::Clsact {
                        interface: interface.to_owned(),
                        source: Box::new(source),
                    })
                }
            }
        }
        let attach_error = |source| DatapathError::Attach {
            program: name.to_owned(),
            interface: interface.to_owned(),
            source: Box::new(source),
        };
        let pin_path = self.pin_dir.as_ref().map(|d| {
            let dir = if matches!(attach_type, TcAttachType::Ingress) {
                "ingress"
            } else {
                "egress"
            };
            d.join("links").join(format!("tc-{dir}-{interface}"))
        });
        let program = tc_program(&mut self.ebpf, name)?;
        // A restarted agent: swap the new program into the live link, no detach gap.
        if let Some(path) = pin_path.as_ref().filter(|p| p.exists()) {
            let link: SchedClassifierLink = pinned_link(path)?;
            program.attach_to_link(link).map_err(attach_error)?;
            return Ok(());
        }
        let id = program
            .attach(interface, attach_type)
            .map_err(attach_error)?;
        if let Some(path) = pin_path {
            let link = program.take_link(id).map_err(attach_error)?;
            pin_link(link, &path, " (pinning needs TCX links, Linux >= 6.6)")?;
        }
        Ok(())
    }

    /// Interfaces the tc ingress program is attached to, sorted.
    pub fn attached_interfaces(&self) -> Vec<String> {
        self.attached.iter().cloned().collect()
    }

    /// Names of the maps and programs of the loaded object, sorted.
    pub fn inventory(&self) -> (Vec<String>, Vec<String>) {
        let mut maps: Vec<String> = self.ebpf.maps().map(|(n, _)| n.to_owned()).collect();
        // The service maps are taken out of the object at load (for the reconciler), but
        // are still part of it.
        maps.extend(TAKEN_MAPS.iter().map(|m| (*m).to_owned()));
        let mut programs: Vec<String> = self.ebpf.programs().map(|(n, _)| n.to_owned()).collect();
        maps.sort();
        programs.sort();
        (maps, programs)
    }

    /// Reads the per-CPU packet and drop counters, summed over CPUs.
    pub fn counters(&self) -> Result<Counters, DatapathError> {
        counters::read(&self.ebpf)
    }

    /// Runs the program `program` once per `repeat` on `packet` through BPF_PROG_TEST_RUN
    /// and returns its verdict, the packet as the program left it, and the mean duration.
    /// The program's map side effects (counters, later conntrack) are real.
    pub fn prog_run(
        &mut self,
        program: &str,
        packet: &[u8],
        repeat: u32,
    ) -> Result<ProgRun, DatapathError> {
        let prog = tc_program(&mut self.ebpf, program)?;
        prog_run::run(prog, program, packet, repeat)
    }
}

/// statfs magic of bpffs (include/uapi/linux/magic.h).
const BPF_FS_MAGIC: i64 = 0xcafe4a11;

fn is_bpffs(path: &Path) -> bool {
    let Ok(c) = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()) else {
        return false;
    };
    // SAFETY: statfs writes into the zeroed struct we own; the path is NUL-terminated.
    unsafe {
        let mut st: libc::statfs = std::mem::zeroed();
        libc::statfs(c.as_ptr(), &mut st) == 0 && st.f_type as i64 == BPF_FS_MAGIC
    }
}

/// Makes sure `dir` lives on bpffs. /sys/fs/bpf is mounted if it is not yet (some hosts
/// do not mount it at boot; Cilium does the same); any other location must already be
/// on bpffs.
fn ensure_bpffs(dir: &Path) -> Result<(), DatapathError> {
    let root = Path::new("/sys/fs/bpf");
    let mount_point = if dir.starts_with(root) { root } else { dir };
    if is_bpffs(mount_point) || (mount_point != root && dir.ancestors().any(is_bpffs)) {
        return Ok(());
    }
    if mount_point != root {
        return Err(DatapathError::Pin {
            path: dir.display().to_string(),
            detail: "not on a bpffs mount; use a directory under /sys/fs/bpf".into(),
        });
    }
    let (src, fstype) = (c"bpf", c"bpf");
    let target = c"/sys/fs/bpf";
    // SAFETY: static NUL-terminated strings, no data argument.
    let rc = unsafe {
        libc::mount(
            src.as_ptr(),
            target.as_ptr(),
            fstype.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Err(DatapathError::Pin {
            path: root.display().to_string(),
            detail: format!("mounting bpffs: {}", std::io::Error::last_os_error()),
        });
    }
    Ok(())
}

fn pin_error(path: &Path, detail: impl std::fmt::Display) -> DatapathError {
    DatapathError::Pin {
        path: path.display().to_string(),
        detail: detail.to_string(),
    }
}

/// Pins `link` at `path`, first unpinning a link an earlier agent left there (the new
/// link is already attached, so the old one can go without a gap).
fn pin_link<L>(link: L, path: &Path, hint: &str) -> Result<(), DatapathError>
where
    FdLink: TryFrom<L>,
    <FdLink as TryFrom<L>>::Error: std::fmt::Display,
{
    if path.exists() {
        let old = PinnedLink::from_pin(path).map_err(|e| pin_error(path, e))?;
        old.unpin().map_err(|e| pin_error(path, e))?;
    }
    FdLink::try_from(link)
        .map_err(|e| pin_error(path, format!("{e}{hint}")))?
        .pin(path)
        .map_err(|e| pin_error(path, e))?;
    Ok(())
}

/// Opens the link pinned at `path` as a program's link type (to swap a program in).
fn pinned_link<L>(path: &Path) -> Result<L, DatapathError>
where
    L: TryFrom<FdLink>,
    <L as TryFrom<FdLink>>::Error: std::fmt::Display,
{
    let pinned = PinnedLink::from_pin(path).map_err(|e| pin_error(path, e))?;
    L::try_from(FdLink::from(pinned)).map_err(|e| pin_error(path, e))
}

/// The program `name` of the object as its concrete type.
fn program<'a, T>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut T, DatapathError>
where
    &'a mut T: TryFrom<&'a mut aya::programs::Program>,
{
    ebpf.program_mut(name)
        .and_then(|p| <&mut T>::try_from(p).ok())
        .ok_or_else(|| DatapathError::MissingProgram {
            name: name.to_owned(),
        })
}

fn xdp_program(ebpf: &mut Ebpf) -> Result<&mut aya::programs::Xdp, DatapathError> {
    program(ebpf, program_names::XDP)
}

fn bind_program(ebpf: &mut Ebpf) -> Result<&mut aya::programs::CgroupSock, DatapathError> {
    program(ebpf, program_names::SOCK_POST_BIND4)
}

fn sock_program<'a>(
    ebpf: &'a mut Ebpf,
    name: &str,
) -> Result<&'a mut CgroupSockAddr, DatapathError> {
    program(ebpf, name)
}

fn tc_program<'a>(
    ebpf: &'a mut Ebpf,
    name: &str,
) -> Result<&'a mut SchedClassifier, DatapathError> {
    program(ebpf, name)
}

/// A descriptor of its own for map `name` of the object (before it is taken), for calls
/// aya does not wrap.
fn map_fd(ebpf: &Ebpf, name: &'static str) -> Result<std::os::fd::OwnedFd, DatapathError> {
    use std::os::fd::AsFd;
    let data = match ebpf.map(name) {
        Some(aya::maps::Map::HashMap(d) | aya::maps::Map::LruHashMap(d)) => d,
        Some(_) | None => {
            return Err(DatapathError::MissingMap {
                name: name.to_owned(),
            })
        }
    };
    data.fd()
        .as_fd()
        .try_clone_to_owned()
        .map_err(|io_error| DatapathError::MapRead {
            map: name,
            source: Box::new(aya::maps::MapError::SyscallError(aya::sys::SyscallError {
                call: "dup",
                io_error,
            })),
        })
}

fn take_hash_map<K: aya::Pod, V: aya::Pod>(
    ebpf: &mut Ebpf,
    name: &'static str,
) -> Result<HashMap<aya::maps::MapData, K, V>, DatapathError> {
    let map = ebpf
        .take_map(name)
        .ok_or_else(|| DatapathError::MissingMap {
            name: name.to_owned(),
        })?;
    HashMap::try_from(map).map_err(|source| DatapathError::MapRead {
        map: name,
        source: Box::new(source),
    })
}

/// Kernel memory of one skiff map held by this process.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct MapMemory {
    pub name: String,
    pub max_entries: u32,
    /// `memlock` from /proc/self/fdinfo: what the kernel charges for the map.
    pub bytes: u64,
}

/// Memory of every skiff map this process holds an fd of (map names from the kernel's
/// map info, sizes from fdinfo). Duplicates (two loaded copies) are all listed.
pub fn map_memory() -> Vec<MapMemory> {
    let mut names = std::collections::HashMap::new();
    for info in aya::maps::loaded_maps().flatten() {
        if let Some(name) = info.name_as_str().filter(|n| n.starts_with("SKIFF_")) {
            names.insert(info.id(), (name.to_owned(), info.max_entries()));
        }
    }
    let mut out = Vec::new();
    let Ok(fds) = std::fs::read_dir("/proc/self/fdinfo") else {
        return out;
    };
    for fd in fds.flatten() {
        let Ok(text) = std::fs::read_to_string(fd.path()) else {
            continue;
        };
        let field = |k: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(k))
                .and_then(|v| v.trim().parse::<u64>().ok())
        };
        if let (Some(id), Some(bytes)) = (field("map_id:"), field("memlock:")) {
            if let Some((name, max_entries)) = names.get(&(id as u32)) {
                out.push(MapMemory {
                    name: name.clone(),
                    max_entries: *max_entries,
                    bytes,
                });
            }
        }
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

/// Size in bytes of the embedded eBPF object.
pub fn object_size() -> usize {
    object::bytes().len()
}
