//! skiff's pod runtime: runs the Pods bound to one node, the kubelet's job kept lean.
//!
//! Per pod: a network namespace attached by invoking the CNI plugin (`skiff-cni`) as a
//! container runtime does, a cgroup under the socket-LB attach point, and each container
//! as a process tree inside both; init containers first, probes, restarts with
//! CrashLoopBackOff, graceful termination, and the Pod status the API shows.
//!
//! - [`lifecycle`] (pure): spec + observed process states → actions and Pod status.
//! - [`probe`] (pure) / [`prober`]: probe timing and results / running them.
//! - [`backoff`] (pure): the kubelet's restart backoff.
//! - [`env`], [`volumes`], [`image`]: building a container's environment, volumes and
//!   root filesystem.
//! - [`cni`], [`sandbox`], [`process`], [`logs`]: the node side; [`logread`]: reading
//!   logs back for `kubectl logs`.
//! - [`worker`]: one task per pod driving all of the above; [`Runtime::run`] watches the
//!   API for the node's pods and runs one worker each.

pub mod adopt;
pub mod backoff;
pub mod cni;
// dns: the pod's resolv.conf (issue 8)
pub mod dns;
pub mod env;
pub mod hooks;
pub mod image;
pub mod lifecycle;
pub mod limits;
pub mod logread;
pub mod logs;
pub mod probe;
pub mod prober;
pub mod process;
pub mod sandbox;
pub mod static_pods;
pub mod volumes;
pub mod worker;

use std::{net::IpAddr, path::PathBuf};

pub use worker::Runtime;

/// The runtime's configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// The pod network (plugin directories, network config, node namespace).
    pub cni: cni::Cni,
    /// cgroup v2 directory pods' cgroups are created under (the socket-LB attach point,
    /// e.g. /sys/fs/cgroup/unified).
    pub cgroup_parent: PathBuf,
    /// Per-pod state (volumes, cached CNI results): `<state_dir>/pods/<uid>`.
    pub state_dir: PathBuf,
    /// Container logs: `<log_dir>/<ns>_<pod>_<uid>/<container>/<n>.log`.
    pub log_dir: PathBuf,
    pub log_limits: logs::LogLimits,
    pub backoff: backoff::BackoffConfig,
    /// The node's address (status.hostIP; the pod IP of hostNetwork pods).
    pub host_ip: Option<IpAddr>,
    // dns: the pod's resolv.conf (issue 8)
    /// Cluster DNS server(s), cluster domain and the node's resolv.conf.
    pub dns: dns::DnsConfig,
    // end dns
}
