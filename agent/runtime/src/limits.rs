//! Resource limits: a container's `resources.limits.memory` and `limits.cpu`, and its
//! `requests.cpu` as a CPU weight, written to its cgroup, and the pod-level limits to the
//! pod's cgroup, the way the kubelet's cgroup manager computes them; never silently
//! ignored: what cannot be enforced is returned as a message for the pod status.
//!
//! Where: the runtime's cgroup v2 parent when its `cgroup.controllers` offers the
//! controller (it is enabled in the parent's and the pod cgroup's `cgroup.subtree_control`
//! as needed). On a hybrid host, whose v2 hierarchy has no memory or cpu controller
//! (they are bound to v1), the v1 hierarchy of that controller: a mirror tree
//! `<v1 mount>/<runtime's own v1 cgroup>/skiff-<parent name>/skiff-pod-<uid>/<container>`
//! that container processes join too (between fork and exec, as the v2 one).
//!
//! Values (upstream `pkg/kubelet/cm`): memory limit → `memory.max` (v1
//! `memory.limit_in_bytes`), with swap off (`memory.swap.max` 0, the kubelet's NoSwap);
//! CPU limit → `cpu.max` `<quota> 100000` with quota = milliCPU × 100 (at least 1000;
//! v1 `cpu.cfs_quota_us`/`cpu.cfs_period_us`); CPU request → shares = milliCPU × 1024 /
//! 1000 (at least 2), v2 `cpu.weight` = 1 + (shares − 2) × 9999 / 262142 (v1
//! `cpu.shares`). The pod gets a limit only when every container has one: the larger
//! of the containers' sum and the largest init container's.
//!
//! OOMKilled: the `oom_kill` counter of the container's memory cgroup (v2
//! `memory.events`, v1 `memory.oom_control`) grew while the instance ran.

use std::{
    io,
    path::{Path, PathBuf},
};

use k8s_openapi::api::core::v1::{Container, PodSpec};

/// The kubelet's CFS period (100 ms).
pub const CPU_PERIOD_US: u64 = 100_000;

/// What a container or pod asks for.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Wanted {
    pub memory_bytes: Option<u64>,
    pub cpu_limit_milli: Option<u64>,
    pub cpu_request_milli: Option<u64>,
}

impl Wanted {
    pub fn any(&self) -> bool {
        self.memory_bytes.is_some()
            || self.cpu_limit_milli.is_some()
            || self.cpu_request_milli.is_some()
    }
}

/// A Kubernetes quantity (`128Mi`, `1.5G`, `500m`, `2`, `1e3`) as a number.
pub fn parse_quantity(s: &str) -> Option<f64> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '+' || c == '-'))
        .unwrap_or(s.len());
    let (num, suffix) = s.split_at(split);
    let n: f64 = num.parse().ok()?;
    let mult = match suffix {
        "" => 1.0,
        "n" => 1e-9,
        "u" => 1e-6,
        "m" => 1e-3,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        "E" => 1e18,
        "Ki" => 1024.0,
        "Mi" => 1024f64.powi(2),
        "Gi" => 1024f64.powi(3),
        "Ti" => 1024f64.powi(4),
        "Pi" => 1024f64.powi(5),
        "Ei" => 1024f64.powi(6),
        e if e.starts_with(['e', 'E']) => 10f64.powi(e[1..].parse().ok()?),
        _ => return None,
    };
    let v = n * mult;
    (v.is_finite() && v >= 0.0).then_some(v)
}

fn quantity(
    map: Option<
        &std::collections::BTreeMap<
            String,
            k8s_openapi::apimachinery::pkg::api::resource::Quantity,
        >,
    >,
    key: &str,
) -> Option<f64> {
    map?.get(key).and_then(|q| parse_quantity(&q.0))
}

/// What a container's `resources` ask for (a CPU request defaults to the CPU limit, as
/// API defaulting does).
pub fn container_wanted(c: &Container) -> Wanted {
    let r = c.resources.clone().unwrap_or_default();
    let milli = |v: f64| (v * 1000.0).ceil() as u64;
    let cpu_limit = quantity(r.limits.as_ref(), "cpu").map(milli);
    Wanted {
        memory_bytes: quantity(r.limits.as_ref(), "memory").map(|v| v.ceil() as u64),
        cpu_limit_milli: cpu_limit,
        cpu_request_milli: quantity(r.requests.as_ref(), "cpu")
            .map(milli)
            .or(cpu_limit),
    }
}

/// The pod-level values: a limit only when every container has one (the larger of the
/// regular containers' sum and the largest init container's); requests summed likewise.
pub fn pod_wanted(spec: &PodSpec) -> Wanted {
    let apps: Vec<Wanted> = spec.containers.iter().map(container_wanted).collect();
    let inits: Vec<Wanted> = spec
        .init_containers
        .iter()
        .flatten()
        .map(container_wanted)
        .collect();
    let combine = |f: &dyn Fn(&Wanted) -> Option<u64>, all_needed: bool| -> Option<u64> {
        let app: Option<Vec<u64>> = apps.iter().map(f).collect();
        let init: Option<Vec<u64>> = inits.iter().map(f).collect();
        if all_needed {
            let (app, init) = (app?, init?);
            Some(
                app.iter()
                    .sum::<u64>()
                    .max(init.into_iter().max().unwrap_or(0)),
            )
        } else {
            let sum: u64 = apps.iter().filter_map(f).sum();
            let init_max = inits.iter().filter_map(f).max().unwrap_or(0);
            let v = sum.max(init_max);
            (v > 0).then_some(v)
        }
    };
    Wanted {
        memory_bytes: combine(&|w| w.memory_bytes, true),
        cpu_limit_milli: combine(&|w| w.cpu_limit_milli, true),
        cpu_request_milli: combine(&|w| w.cpu_request_milli, false),
    }
}

/// The kubelet's `MilliCPUToShares`.
pub fn cpu_shares(milli: u64) -> u64 {
    (milli * 1024 / 1000).max(2)
}

/// The kubelet's cgroup v2 conversion of shares to `cpu.weight`.
pub fn cpu_weight(shares: u64) -> u64 {
    1 + (shares.clamp(2, 262_144) - 2) * 9999 / 262_142
}

/// The kubelet's `MilliCPUToQuota` (period 100 ms, quota at least 1 ms).
pub fn cpu_quota(milli: u64) -> u64 {
    (milli * CPU_PERIOD_US / 1000).max(1000)
}

/// Where one controller lives.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Place {
    /// In the v2 parent.
    V2,
    /// A v1 hierarchy: the directory pods' v1 cgroups go under.
    V1(PathBuf),
    /// Nowhere: why.
    Unavailable(String),
}

/// The controllers a runtime can use, found once per runtime.
#[derive(Debug, Clone)]
pub struct Controllers {
    parent: PathBuf,
    memory: Place,
    cpu: Place,
}

fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_default()
}

/// The mount point of the v1 hierarchy carrying `controller`, from /proc/self/mountinfo.
fn v1_mount(mountinfo: &str, controller: &str) -> Option<PathBuf> {
    mountinfo.lines().find_map(|l| {
        let (pre, post) = l.split_once(" - ")?;
        let mut post = post.split(' ');
        if post.next()? != "cgroup" {
            return None;
        }
        let _source = post.next()?;
        let opts = post.next()?;
        opts.split(',')
            .any(|o| o == controller)
            .then(|| PathBuf::from(pre.split(' ').nth(4).unwrap_or("")))
    })
}

/// This process's cgroup in the v1 hierarchy of `controller`, from /proc/self/cgroup.
fn v1_own(proc_cgroup: &str, controller: &str) -> Option<String> {
    proc_cgroup.lines().find_map(|l| {
        let mut parts = l.splitn(3, ':');
        let _id = parts.next()?;
        let ctrls = parts.next()?;
        let path = parts.next()?;
        ctrls
            .split(',')
            .any(|c| c == controller)
            .then(|| path.to_string())
    })
}

impl Controllers {
    /// Looks at the host: `parent` is the runtime's cgroup v2 parent.
    pub fn discover(parent: &Path) -> Controllers {
        let v2: Vec<String> = read(&parent.join("cgroup.controllers"))
            .split_whitespace()
            .map(str::to_string)
            .collect();
        let mountinfo = read(Path::new("/proc/self/mountinfo"));
        let own = read(Path::new("/proc/self/cgroup"));
        let tree = format!(
            "skiff-{}",
            parent
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| "root".into())
        );
        let place = |name: &str| -> Place {
            if v2.iter().any(|c| c == name) {
                return Place::V2;
            }
            match (v1_mount(&mountinfo, name), v1_own(&own, name)) {
                (Some(m), Some(own)) => {
                    Place::V1(m.join(own.trim_start_matches('/')).join(&tree))
                }
                _ => Place::Unavailable(format!(
                    "the cgroup v2 parent {} offers no {name} controller (cgroup.controllers: {:?}) and no cgroup v1 {name} hierarchy is mounted",
                    parent.display(),
                    v2.join(" ")
                )),
            }
        };
        Controllers {
            parent: parent.to_path_buf(),
            memory: place("memory"),
            cpu: place("cpu"),
        }
    }

    /// Removes the v1 trees of pods an earlier run left (their processes died with their
    /// v2 cgroups).
    pub fn collect_garbage(&self, keep: &dyn Fn(&str) -> bool) {
        for place in [&self.memory, &self.cpu] {
            if let Place::V1(root) = place {
                for e in std::fs::read_dir(root).into_iter().flatten().flatten() {
                    let name = e.file_name().to_string_lossy().into_owned();
                    if name.starts_with("skiff-pod-") && !keep(&name) {
                        let _ = crate::process::remove_cgroup(&e.path());
                    }
                }
            }
        }
    }
}

/// Enables `controller` for the children of `dir` (cgroup v2).
fn enable(dir: &Path, controller: &str) -> io::Result<()> {
    let sc = dir.join("cgroup.subtree_control");
    if read(&sc).split_whitespace().any(|c| c == controller) {
        return Ok(());
    }
    std::fs::write(&sc, format!("+{controller}"))
}

fn write(dir: &Path, file: &str, value: &str) -> Result<(), String> {
    std::fs::write(dir.join(file), value)
        .map_err(|e| format!("writing {value:?} to {}: {e}", dir.join(file).display()))
}

/// A pod's cgroups as far as limits are concerned.
#[derive(Debug, Clone)]
pub struct PodLimits {
    controllers: Controllers,
    v2_pod: PathBuf,
    /// v1 pod directories (memory, cpu), created when needed.
    v1_pod: Vec<(&'static str, PathBuf)>,
    pod_cgroup_name: String,
    /// What could not be enforced, for the pod status.
    pub unenforced: Vec<String>,
    /// Whether the pod asks for anything at all.
    pub wanted: bool,
}

impl PodLimits {
    /// Applies the pod-level values to the pod cgroup `v2_pod` (which exists).
    pub fn apply(controllers: &Controllers, v2_pod: &Path, spec: &PodSpec) -> PodLimits {
        let w = pod_wanted(spec);
        let any_container = spec
            .containers
            .iter()
            .chain(spec.init_containers.iter().flatten())
            .any(|c| container_wanted(c).any());
        let mut pl = PodLimits {
            controllers: controllers.clone(),
            v2_pod: v2_pod.to_path_buf(),
            v1_pod: Vec::new(),
            pod_cgroup_name: v2_pod
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
            unenforced: Vec::new(),
            wanted: any_container,
        };
        if !any_container {
            return pl;
        }
        let wants_memory = spec
            .containers
            .iter()
            .chain(spec.init_containers.iter().flatten())
            .any(|c| container_wanted(c).memory_bytes.is_some());
        let wants_cpu = spec
            .containers
            .iter()
            .chain(spec.init_containers.iter().flatten())
            .any(|c| {
                let w = container_wanted(c);
                w.cpu_limit_milli.is_some() || w.cpu_request_milli.is_some()
            });
        if wants_memory {
            if let Some(dir) = pl.pod_dir("memory", &controllers.memory.clone()) {
                let r = match (&controllers.memory, w.memory_bytes) {
                    (_, None) => Ok(()),
                    (Place::V2, Some(b)) => {
                        write(&dir, "memory.max", &b.to_string()).and_then(|_| {
                            if dir.join("memory.swap.max").exists() {
                                write(&dir, "memory.swap.max", "0")
                            } else {
                                Ok(())
                            }
                        })
                    }
                    (_, Some(b)) => write(&dir, "memory.limit_in_bytes", &b.to_string()),
                };
                if let Err(e) = r {
                    pl.unenforced.push(format!("pod memory limit: {e}"));
                }
            }
        }
        if wants_cpu {
            if let Some(dir) = pl.pod_dir("cpu", &controllers.cpu.clone()) {
                let mut errs = Vec::new();
                if let Some(m) = w.cpu_limit_milli {
                    let r = if controllers.cpu == Place::V2 {
                        write(
                            &dir,
                            "cpu.max",
                            &format!("{} {CPU_PERIOD_US}", cpu_quota(m)),
                        )
                    } else {
                        write(&dir, "cpu.cfs_period_us", &CPU_PERIOD_US.to_string()).and_then(
                            |_| write(&dir, "cpu.cfs_quota_us", &cpu_quota(m).to_string()),
                        )
                    };
                    errs.extend(r.err());
                }
                let shares = cpu_shares(w.cpu_request_milli.unwrap_or(0));
                let r = if controllers.cpu == Place::V2 {
                    write(&dir, "cpu.weight", &cpu_weight(shares).to_string())
                } else {
                    write(&dir, "cpu.shares", &shares.to_string())
                };
                errs.extend(r.err());
                for e in errs {
                    pl.unenforced.push(format!("pod cpu: {e}"));
                }
            }
        }
        pl
    }

    /// The pod's directory for `controller` (created; controllers enabled on the way),
    /// or None with the reason recorded.
    fn pod_dir(&mut self, controller: &'static str, place: &Place) -> Option<PathBuf> {
        match place {
            Place::V2 => {
                let r = enable(&self.controllers.parent, controller)
                    .map_err(|e| {
                        format!(
                            "enabling the {controller} controller in {}/cgroup.subtree_control: {e}",
                            self.controllers.parent.display()
                        )
                    })
                    .and_then(|_| {
                        enable(&self.v2_pod, controller).map_err(|e| {
                            format!(
                                "enabling the {controller} controller in {}/cgroup.subtree_control: {e}",
                                self.v2_pod.display()
                            )
                        })
                    });
                match r {
                    Ok(()) => Some(self.v2_pod.clone()),
                    Err(e) => {
                        self.unenforced.push(e);
                        None
                    }
                }
            }
            Place::V1(root) => {
                let dir = root.join(&self.pod_cgroup_name);
                match std::fs::create_dir_all(&dir) {
                    Ok(()) => {
                        self.v1_pod.push((controller, dir.clone()));
                        Some(dir)
                    }
                    Err(e) => {
                        self.unenforced.push(format!(
                            "creating the cgroup v1 {controller} cgroup {}: {e}",
                            dir.display()
                        ));
                        None
                    }
                }
            }
            Place::Unavailable(why) => {
                self.unenforced.push(why.clone());
                None
            }
        }
    }

    /// Applies a container's values to its v2 cgroup `v2_container` (which exists);
    /// returns the v1 cgroups its processes must join too and what was not enforced.
    pub fn container(&self, v2_container: &Path, c: &Container) -> (Vec<PathBuf>, Vec<String>) {
        let w = container_wanted(c);
        let mut extra = Vec::new();
        let mut errs = Vec::new();
        if !w.any() {
            // Still joins the v1 pod trees that exist, so the pod limit covers it.
            for (_, dir) in &self.v1_pod {
                let d = dir.join(&c.name);
                if std::fs::create_dir_all(&d).is_ok() {
                    extra.push(d);
                }
            }
            return (extra, errs);
        }
        let dir_for = |controller: &str,
                       place: &Place,
                       extra: &mut Vec<PathBuf>,
                       errs: &mut Vec<String>|
         -> Option<PathBuf> {
            match place {
                Place::V2 => Some(v2_container.to_path_buf()),
                Place::V1(_) => {
                    let pod = self.v1_pod.iter().find(|(k, _)| *k == controller)?;
                    let d = pod.1.join(&c.name);
                    match std::fs::create_dir_all(&d) {
                        Ok(()) => {
                            extra.push(d.clone());
                            Some(d)
                        }
                        Err(e) => {
                            errs.push(format!("creating {}: {e}", d.display()));
                            None
                        }
                    }
                }
                Place::Unavailable(_) => None,
            }
        };
        // Memory.
        let mem_dir = dir_for("memory", &self.controllers.memory, &mut extra, &mut errs);
        if let Some(b) = w.memory_bytes {
            match (&mem_dir, &self.controllers.memory) {
                (Some(d), Place::V2) => {
                    errs.extend(write(d, "memory.max", &b.to_string()).err());
                    if d.join("memory.swap.max").exists() {
                        errs.extend(write(d, "memory.swap.max", "0").err());
                    }
                }
                (Some(d), _) => {
                    errs.extend(write(d, "memory.limit_in_bytes", &b.to_string()).err())
                }
                (None, Place::Unavailable(why)) => errs.push(format!(
                    "memory limit {} of container {:?} is not enforced: {why}",
                    human_bytes(b),
                    c.name
                )),
                (None, _) => errs.push(format!(
                    "memory limit of container {:?} is not enforced: its pod has no memory cgroup",
                    c.name
                )),
            }
        }
        // CPU.
        let cpu_dir = dir_for("cpu", &self.controllers.cpu, &mut extra, &mut errs);
        if w.cpu_limit_milli.is_some() || w.cpu_request_milli.is_some() {
            match (&cpu_dir, &self.controllers.cpu) {
                (Some(d), place) => {
                    let v2 = *place == Place::V2;
                    if let Some(m) = w.cpu_limit_milli {
                        let r = if v2 {
                            write(d, "cpu.max", &format!("{} {CPU_PERIOD_US}", cpu_quota(m)))
                        } else {
                            write(d, "cpu.cfs_period_us", &CPU_PERIOD_US.to_string())
                                .and_then(|_| write(d, "cpu.cfs_quota_us", &cpu_quota(m).to_string()))
                        };
                        errs.extend(r.err());
                    }
                    let shares = cpu_shares(w.cpu_request_milli.unwrap_or(0));
                    let r = if v2 {
                        write(d, "cpu.weight", &cpu_weight(shares).to_string())
                    } else {
                        write(d, "cpu.shares", &shares.to_string())
                    };
                    errs.extend(r.err());
                }
                (None, Place::Unavailable(why)) => errs.push(format!(
                    "cpu limit/request of container {:?} is not enforced: {why}",
                    c.name
                )),
                (None, _) => errs.push(format!(
                    "cpu limit/request of container {:?} is not enforced: its pod has no cpu cgroup",
                    c.name
                )),
            }
        }
        (extra, errs)
    }

    /// The `oom_kill` count of a container's memory cgroup.
    pub fn oom_kills(&self, v2_container: &Path, container: &str) -> u64 {
        let field = |text: String| {
            text.lines()
                .find_map(|l| l.strip_prefix("oom_kill "))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0)
        };
        match &self.controllers.memory {
            Place::V2 => field(read(&v2_container.join("memory.events"))),
            Place::V1(_) => self
                .v1_pod
                .iter()
                .find(|(k, _)| *k == "memory")
                .map_or(0, |(_, d)| {
                    field(read(&d.join(container).join("memory.oom_control")))
                }),
            Place::Unavailable(_) => 0,
        }
    }

    /// Removes the v1 cgroups (after the pod's processes are gone).
    pub fn remove(&self) -> Result<(), String> {
        let mut errs = Vec::new();
        for (_, d) in &self.v1_pod {
            if let Err(e) = crate::process::remove_cgroup(d) {
                errs.push(format!("removing cgroup {}: {e}", d.display()));
            }
        }
        if errs.is_empty() {
            Ok(())
        } else {
            Err(errs.join("; "))
        }
    }
}

/// The pod condition reporting whether the pod's resource limits are enforced.
pub const CONDITION: &str = "skiff.io/ResourceLimitsEnforced";

/// Sets [`CONDITION`] in `status`: True when everything asked for is enforced, False
/// (reason ControllerUnavailable) with what is not. Its lastTransitionTime is the pod's
/// startTime: the limits are applied when the pod starts.
pub fn set_condition(
    status: &mut k8s_openapi::api::core::v1::PodStatus,
    pod: &[String],
    containers: &std::collections::BTreeMap<String, Vec<String>>,
) {
    use k8s_openapi::api::core::v1::PodCondition;
    let problems: Vec<&str> = pod
        .iter()
        .chain(containers.values().flatten())
        .map(String::as_str)
        .collect();
    let conds = status.conditions.get_or_insert_with(Vec::new);
    conds.retain(|c| c.type_ != CONDITION);
    conds.push(PodCondition {
        type_: CONDITION.into(),
        status: if problems.is_empty() { "True" } else { "False" }.into(),
        reason: Some(
            if problems.is_empty() {
                "Enforced"
            } else {
                "ControllerUnavailable"
            }
            .into(),
        ),
        message: (!problems.is_empty()).then(|| problems.join("; ")),
        last_transition_time: status.start_time.clone(),
        ..Default::default()
    });
}

fn human_bytes(b: u64) -> String {
    for (unit, size) in [("Gi", 1u64 << 30), ("Mi", 1 << 20), ("Ki", 1 << 10)] {
        if b >= size && b.is_multiple_of(size) {
            return format!("{}{unit}", b / size);
        }
    }
    b.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn quantities() {
        assert_eq!(parse_quantity("128Mi"), Some(134_217_728.0));
        assert_eq!(parse_quantity("1G"), Some(1e9));
        assert_eq!(parse_quantity("500m"), Some(0.5));
        assert_eq!(parse_quantity("2"), Some(2.0));
        assert_eq!(parse_quantity("1.5"), Some(1.5));
        assert_eq!(parse_quantity("1e3"), Some(1000.0));
        assert_eq!(parse_quantity("12Q"), None);
        assert_eq!(parse_quantity(""), None);
    }

    #[test]
    fn kubelet_conversions() {
        assert_eq!(cpu_shares(0), 2);
        assert_eq!(cpu_shares(1000), 1024);
        assert_eq!(cpu_weight(2), 1);
        assert_eq!(cpu_weight(1024), 39);
        assert_eq!(cpu_weight(262_144), 10_000);
        assert_eq!(cpu_quota(500), 50_000);
        assert_eq!(cpu_quota(1), 1000);
    }

    #[test]
    fn pod_values_need_every_container_to_have_a_limit() {
        let spec: PodSpec = serde_json::from_value(json!({"containers": [
            {"name": "a", "resources": {"limits": {"memory": "64Mi", "cpu": "500m"}}},
            {"name": "b", "resources": {"limits": {"memory": "32Mi"}, "requests": {"cpu": "250m"}}},
        ], "initContainers": [
            {"name": "i", "resources": {"limits": {"memory": "128Mi", "cpu": "1"}}},
        ]}))
        .unwrap();
        let w = pod_wanted(&spec);
        assert_eq!(
            w.memory_bytes,
            Some(128 << 20),
            "the init container's is larger"
        );
        assert_eq!(w.cpu_limit_milli, None, "b has no cpu limit");
        assert_eq!(w.cpu_request_milli, Some(1000), "max(500 + 250, 1000)");
        let a = container_wanted(&spec.containers[0]);
        assert_eq!(
            a.cpu_request_milli,
            Some(500),
            "the request defaults to the limit"
        );
    }

    #[test]
    fn unavailable_controllers_are_reported_not_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let pod_cg = dir.path().join("skiff-pod-u");
        std::fs::create_dir_all(pod_cg.join("c")).unwrap();
        let ctrl = Controllers {
            parent: dir.path().to_path_buf(),
            memory: Place::Unavailable("no memory controller here".into()),
            cpu: Place::Unavailable("no cpu controller here".into()),
        };
        let spec: PodSpec = serde_json::from_value(json!({"containers": [
            {"name": "c", "resources": {"limits": {"memory": "64Mi", "cpu": "1"}}},
        ]}))
        .unwrap();
        let pl = PodLimits::apply(&ctrl, &pod_cg, &spec);
        assert!(pl.wanted);
        assert_eq!(
            pl.unenforced,
            vec!["no memory controller here", "no cpu controller here"]
        );
        let (extra, errs) = pl.container(&pod_cg.join("c"), &spec.containers[0]);
        assert!(extra.is_empty());
        assert_eq!(errs.len(), 2, "{errs:?}");
        assert!(
            errs[0].starts_with("memory limit 64Mi of container \"c\" is not enforced"),
            "{errs:?}"
        );
        let mut st = k8s_openapi::api::core::v1::PodStatus::default();
        let by_container = std::collections::BTreeMap::from([("c".to_string(), errs)]);
        set_condition(&mut st, &pl.unenforced, &by_container);
        let c = &st.conditions.unwrap()[0];
        assert_eq!((c.type_.as_str(), c.status.as_str()), (CONDITION, "False"));
        assert_eq!(c.reason.as_deref(), Some("ControllerUnavailable"));
        assert!(c
            .message
            .as_ref()
            .unwrap()
            .contains("no memory controller here"));
    }

    #[test]
    fn v2_values_are_written() {
        let dir = tempfile::tempdir().unwrap();
        let pod_cg = dir.path().join("skiff-pod-u");
        std::fs::create_dir_all(pod_cg.join("c")).unwrap();
        let ctrl = Controllers {
            parent: dir.path().to_path_buf(),
            memory: Place::V2,
            cpu: Place::V2,
        };
        let spec: PodSpec = serde_json::from_value(json!({"containers": [
            {"name": "c", "resources": {"limits": {"memory": "64Mi", "cpu": "500m"}, "requests": {"cpu": "250m"}}},
        ]}))
        .unwrap();
        let pl = PodLimits::apply(&ctrl, &pod_cg, &spec);
        assert!(pl.unenforced.is_empty(), "{:?}", pl.unenforced);
        // A plain directory stands in for cgroupfs: subtree_control holds what was written.
        assert_eq!(read(&dir.path().join("cgroup.subtree_control")), "+cpu");
        assert_eq!(read(&pod_cg.join("memory.max")), (64u64 << 20).to_string());
        assert_eq!(read(&pod_cg.join("cpu.max")), "50000 100000");
        let (_, errs) = pl.container(&pod_cg.join("c"), &spec.containers[0]);
        assert!(errs.is_empty(), "{errs:?}");
        assert_eq!(
            read(&pod_cg.join("c/cpu.weight")),
            cpu_weight(cpu_shares(250)).to_string()
        );
        assert_eq!(
            read(&pod_cg.join("c/memory.max")),
            (64u64 << 20).to_string()
        );
    }

    #[test]
    fn v1_hierarchies_from_proc() {
        let mountinfo = "30 25 0:26 / /sys/fs/cgroup/memory rw,relatime shared:9 - cgroup cgroup rw,memory\n\
                         31 25 0:27 / /sys/fs/cgroup/cpu,cpuacct rw,relatime - cgroup cgroup rw,cpu,cpuacct\n\
                         32 25 0:28 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw";
        assert_eq!(
            v1_mount(mountinfo, "memory"),
            Some(PathBuf::from("/sys/fs/cgroup/memory"))
        );
        assert_eq!(
            v1_mount(mountinfo, "cpu"),
            Some(PathBuf::from("/sys/fs/cgroup/cpu,cpuacct"))
        );
        assert_eq!(v1_mount(mountinfo, "pids"), None);
        let cg = "4:memory:/a/b\n1:cpu,cpuacct:/\n0::/x";
        assert_eq!(v1_own(cg, "memory").as_deref(), Some("/a/b"));
        assert_eq!(v1_own(cg, "cpu").as_deref(), Some("/"));
    }
}
