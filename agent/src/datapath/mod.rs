//! The only module of skiff that imports `aya`: it loads the embedded eBPF object, attaches
//! its programs, reads its maps and runs its programs through BPF_PROG_TEST_RUN.
//!
//! Everything outside this module sees plain Rust types (`Counters`, `ProgRun`, ...), so the
//! rest of the agent and the tests never depend on aya's API directly.

mod counters;
mod object;
mod prog_run;
mod service_maps;

use std::{collections::BTreeSet, fs::File, path::Path};

use aya::{
    maps::HashMap,
    programs::{tc, CgroupAttachMode, CgroupSockAddr, SchedClassifier, TcAttachType},
    util::KernelVersion,
    Ebpf, EbpfLoader,
};
pub use counters::{Counters, SockCounters};
pub use prog_run::ProgRun;
pub use service_maps::{ct_expired, partner, BpfServiceMaps};
use skiff_datapath_abi::{map_names, program_names, NodeConfig};

use crate::lbmap::MapSizes;

/// Maps moved out of the `Ebpf` object into [`BpfServiceMaps`] at load.
const TAKEN_MAPS: [&str; 5] = [
    map_names::SERVICES,
    map_names::SLOTS,
    map_names::BACKENDS,
    map_names::SOCK_REV,
    map_names::CONNTRACK,
];

/// Load-time configuration of the datapath.
#[derive(Debug, Clone, Copy, Default)]
pub struct DatapathConfig {
    /// Capacities of the service maps (the `--map-size-*` agent flags).
    pub map_sizes: MapSizes,
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
fn error_chain(e: &dyn std::error::Error) -> String {
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
}

impl Datapath {
    /// Loads the eBPF object embedded in this binary with default map sizes.
    pub fn load() -> Result<Self, DatapathError> {
        Self::load_with(&DatapathConfig::default())
    }

    /// Loads the eBPF object, sizing maps from `config`, and loads every program into the
    /// kernel (running the verifier), without attaching anything.
    pub fn load_with(config: &DatapathConfig) -> Result<Self, DatapathError> {
        let sizes = config.map_sizes;
        let mut ebpf = EbpfLoader::new()
            .map_max_entries(map_names::SERVICES, sizes.services)
            .map_max_entries(map_names::SLOTS, sizes.slots)
            .map_max_entries(map_names::BACKENDS, sizes.backends)
            .map_max_entries(map_names::SOCK_REV, sizes.sock_rev)
            .map_max_entries(map_names::CONNTRACK, sizes.conntrack)
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
        let service_maps = BpfServiceMaps {
            sizes,
            services: take_hash_map(&mut ebpf, map_names::SERVICES)?,
            slots: take_hash_map(&mut ebpf, map_names::SLOTS)?,
            backends: take_hash_map(&mut ebpf, map_names::BACKENDS)?,
            sock_rev: take_hash_map(&mut ebpf, map_names::SOCK_REV)?,
            conntrack: take_hash_map(&mut ebpf, map_names::CONNTRACK)?,
        };
        Ok(Datapath {
            ebpf,
            attached: BTreeSet::new(),
            service_maps: Some(service_maps),
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
        for name in program_names::SOCK_LB {
            let program = sock_program(&mut self.ebpf, name)?;
            program
                .attach(&dir, CgroupAttachMode::Single)
                .map_err(|source| DatapathError::AttachCgroup {
                    program: (*name).to_owned(),
                    path: cgroup.display().to_string(),
                    source: Box::new(source),
                })?;
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

    /// Attaches the tc egress program (reverse translation of replies) to `interface`.
    pub fn attach_tc_egress(&mut self, interface: &str) -> Result<(), DatapathError> {
        let name = program_names::TC_EGRESS;
        let program = tc_program(&mut self.ebpf, name)?;
        program
            .attach(interface, TcAttachType::Egress)
            .map_err(|source| DatapathError::Attach {
                program: name.to_owned(),
                interface: interface.to_owned(),
                source: Box::new(source),
            })?;
        Ok(())
    }

    /// Reads the per-CPU socket load-balancing counters, summed over CPUs.
    pub fn sock_counters(&self) -> Result<SockCounters, DatapathError> {
        counters::read_sock(&self.ebpf)
    }

    /// Attaches the tc ingress program to `interface` in the calling thread's network
    /// namespace (TCX on Linux >= 6.6, a clsact qdisc + cls_bpf before that).
    pub fn attach_tc_ingress(&mut self, interface: &str) -> Result<(), DatapathError> {
        let name = program_names::TC_INGRESS;
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
        let program = tc_program(&mut self.ebpf, name)?;
        program
            .attach(interface, TcAttachType::Ingress)
            .map_err(|source| DatapathError::Attach {
                program: name.to_owned(),
                interface: interface.to_owned(),
                source: Box::new(source),
            })?;
        self.attached.insert(interface.to_owned());
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

fn sock_program<'a>(
    ebpf: &'a mut Ebpf,
    name: &str,
) -> Result<&'a mut CgroupSockAddr, DatapathError> {
    ebpf.program_mut(name)
        .and_then(|p| <&mut CgroupSockAddr>::try_from(p).ok())
        .ok_or_else(|| DatapathError::MissingProgram {
            name: name.to_owned(),
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

fn tc_program<'a>(
    ebpf: &'a mut Ebpf,
    name: &str,
) -> Result<&'a mut SchedClassifier, DatapathError> {
    ebpf.program_mut(name)
        .and_then(|p| <&mut SchedClassifier>::try_from(p).ok())
        .ok_or_else(|| DatapathError::MissingProgram {
            name: name.to_owned(),
        })
}

/// Size in bytes of the embedded eBPF object.
pub fn object_size() -> usize {
    object::bytes().len()
}
