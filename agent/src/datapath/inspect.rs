//! Read-only views of the live, pinned maps for the debug commands (`lb list`, `ct list`,
//! `lb explain`). They open the pins of a running (or stopped) agent; nothing here writes.

use std::path::{Path, PathBuf};

use aya::maps::{HashMap, Map, MapData, PerCpuArray};
use skiff_datapath_abi::{
    ct_dir, map_names, Backend, CtKey, CtValue, LbCounter, ServiceKey, ServiceOptions,
    ServiceValue, SlotKey,
};

use super::{error_chain, DatapathError};
use crate::lbmap::Snapshot;

/// The pinned maps of one agent.
pub struct Inspector {
    dir: PathBuf,
}

fn open(dir: &Path, name: &'static str) -> Result<Map, DatapathError> {
    let path = dir.join("maps").join(name);
    let data = MapData::from_pin(&path).map_err(|e| DatapathError::Pin {
        path: path.display().to_string(),
        detail: format!(
            "{}. Is skiff-agent running with --pin-dir {}?",
            error_chain(&e),
            dir.display()
        ),
    })?;
    Map::from_map_data(data).map_err(|source| DatapathError::MapRead {
        map: name,
        source: Box::new(source),
    })
}

fn read_err(map: &'static str) -> impl Fn(aya::maps::MapError) -> DatapathError {
    move |source| DatapathError::MapRead {
        map,
        source: Box::new(source),
    }
}

impl Inspector {
    pub fn new(pin_dir: &Path) -> Inspector {
        Inspector {
            dir: pin_dir.to_path_buf(),
        }
    }

    /// Frontends, slots and backends.
    pub fn snapshot(&self) -> Result<Snapshot, DatapathError> {
        let mut s = Snapshot::default();
        let svc: HashMap<_, ServiceKey, ServiceValue> =
            HashMap::try_from(open(&self.dir, map_names::SERVICES)?)
                .map_err(read_err(map_names::SERVICES))?;
        for e in svc.iter() {
            let (k, v) = e.map_err(read_err(map_names::SERVICES))?;
            s.services.insert(k, v);
        }
        let slots: HashMap<_, SlotKey, u32> = HashMap::try_from(open(&self.dir, map_names::SLOTS)?)
            .map_err(read_err(map_names::SLOTS))?;
        for e in slots.iter() {
            let (k, v) = e.map_err(read_err(map_names::SLOTS))?;
            s.slots.insert(k, v);
        }
        let be: HashMap<_, u32, Backend> = HashMap::try_from(open(&self.dir, map_names::BACKENDS)?)
            .map_err(read_err(map_names::BACKENDS))?;
        for e in be.iter() {
            let (k, v) = e.map_err(read_err(map_names::BACKENDS))?;
            s.backends.insert(k, v);
        }
        let opts: HashMap<_, u32, ServiceOptions> =
            HashMap::try_from(open(&self.dir, map_names::SERVICE_OPTIONS)?)
                .map_err(read_err(map_names::SERVICE_OPTIONS))?;
        for e in opts.iter() {
            let (k, v) = e.map_err(read_err(map_names::SERVICE_OPTIONS))?;
            s.options.insert(k, v);
        }
        Ok(s)
    }

    /// The active backends of one frontend, by point lookups (frontend, its slots, their
    /// backends): cheap enough to poll at scale, unlike [`Self::snapshot`]. `None` when
    /// the frontend is not programmed.
    pub fn frontend_backends(
        &self,
        key: &ServiceKey,
    ) -> Result<Option<Vec<Backend>>, DatapathError> {
        let svc: HashMap<_, ServiceKey, ServiceValue> =
            HashMap::try_from(open(&self.dir, map_names::SERVICES)?)
                .map_err(read_err(map_names::SERVICES))?;
        let v = match svc.get(key, 0) {
            Ok(v) => v,
            Err(aya::maps::MapError::KeyNotFound) => return Ok(None),
            Err(e) => return Err(read_err(map_names::SERVICES)(e)),
        };
        let slots: HashMap<_, SlotKey, u32> = HashMap::try_from(open(&self.dir, map_names::SLOTS)?)
            .map_err(read_err(map_names::SLOTS))?;
        let be: HashMap<_, u32, Backend> = HashMap::try_from(open(&self.dir, map_names::BACKENDS)?)
            .map_err(read_err(map_names::BACKENDS))?;
        let mut out = Vec::new();
        for slot in 0..u32::from(v.active) {
            let Ok(id) = slots.get(
                &SlotKey {
                    service_id: v.service_id,
                    slot,
                },
                0,
            ) else {
                continue;
            };
            if let Ok(b) = be.get(&id, 0) {
                out.push(b);
            }
        }
        Ok(Some(out))
    }

    /// Conntrack entries.
    pub fn conntrack(&self) -> Result<Vec<(CtKey, CtValue)>, DatapathError> {
        let ct: HashMap<_, CtKey, CtValue> =
            HashMap::try_from(open(&self.dir, map_names::CONNTRACK)?)
                .map_err(read_err(map_names::CONNTRACK))?;
        let mut out = Vec::new();
        for e in ct.iter() {
            out.push(e.map_err(read_err(map_names::CONNTRACK))?);
        }
        Ok(out)
    }

    /// The forward conntrack entry of a flow, if it exists.
    pub fn flow(&self, key: &CtKey) -> Result<Option<CtValue>, DatapathError> {
        let ct: HashMap<_, CtKey, CtValue> =
            HashMap::try_from(open(&self.dir, map_names::CONNTRACK)?)
                .map_err(read_err(map_names::CONNTRACK))?;
        let key = CtKey {
            dir: ct_dir::FORWARD,
            ..*key
        };
        match ct.get(&key, 0) {
            Ok(v) => Ok(Some(v)),
            Err(aya::maps::MapError::KeyNotFound) => Ok(None),
            Err(e) => Err(read_err(map_names::CONNTRACK)(e)),
        }
    }

    /// Packet classes and drops by reason, summed over CPUs.
    pub fn counters(&self) -> Result<super::Counters, DatapathError> {
        use skiff_datapath_abi::TrafficCounter;
        let per_cpu = |name: &'static str| -> Result<Map, DatapathError> { open(&self.dir, name) };
        let stats: PerCpuArray<_, TrafficCounter> =
            PerCpuArray::try_from(per_cpu(map_names::STATS)?)
                .map_err(read_err(map_names::STATS))?;
        let drops: PerCpuArray<_, u64> = PerCpuArray::try_from(per_cpu(map_names::DROPS)?)
            .map_err(read_err(map_names::DROPS))?;
        // Pins of an agent that predates masquerade or the flow counters have no such
        // map: nothing to show.
        let optional =
            |name: &'static str| -> Result<Option<PerCpuArray<MapData, u64>>, DatapathError> {
                match per_cpu(name) {
                    Ok(map) => PerCpuArray::try_from(map).map(Some).map_err(read_err(name)),
                    Err(_) => Ok(None),
                }
            };
        let masq = optional(map_names::MASQ_STATS)?;
        let flows = optional(map_names::FLOW_STATS)?;
        super::Counters::from_maps(&stats, &drops, masq.as_ref(), flows.as_ref())
    }

    /// Per-service (`backends == false`) or per-backend counters for `ids`, summed over CPUs.
    pub fn lb_counters(
        &self,
        backends: bool,
        ids: &[u32],
    ) -> Result<Vec<(u32, LbCounter)>, DatapathError> {
        let name = super::counters::lb_map_name(backends);
        super::counters::lb_sums(&open(&self.dir, name)?, name, ids)
    }
}
