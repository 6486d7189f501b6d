//! Reading the per-CPU counter maps.

use aya::{
    maps::{MapData, PerCpuArray},
    Ebpf,
};
use skiff_datapath_abi::{map_names, DropReason, PacketClass, TrafficCounter};

use super::DatapathError;

/// Counters summed over all CPUs, in ABI index order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    /// One entry per [`PacketClass`], in `PacketClass::ALL` order.
    pub classes: Vec<(PacketClass, TrafficCounter)>,
    /// One entry per [`DropReason`], in `DropReason::ALL` order.
    pub drops: Vec<(DropReason, u64)>,
}

impl Counters {
    /// The counter of one class.
    pub fn class(&self, class: PacketClass) -> TrafficCounter {
        self.classes
            .iter()
            .find(|(c, _)| *c == class)
            .map(|(_, v)| *v)
            .unwrap_or_default()
    }

    /// Packets dropped for one reason.
    pub fn drop_count(&self, reason: DropReason) -> u64 {
        self.drops
            .iter()
            .find(|(r, _)| *r == reason)
            .map(|(_, v)| *v)
            .unwrap_or_default()
    }

    /// Every packet counted, accepted or dropped.
    pub fn total_packets(&self) -> u64 {
        let seen: u64 = self.classes.iter().map(|(_, c)| c.packets).sum();
        let dropped: u64 = self.drops.iter().map(|(_, n)| n).sum();
        seen + dropped
    }

    /// Stable, line-per-counter text form (used by the CLI and by golden tests).
    pub fn render(&self) -> String {
        let mut out = String::new();
        for (class, c) in &self.classes {
            out.push_str(&format!(
                "packets{{class={}}} {} bytes={}\n",
                class.name(),
                c.packets,
                c.bytes
            ));
        }
        for (reason, n) in &self.drops {
            out.push_str(&format!("drops{{reason={}}} {}\n", reason.name(), n));
        }
        out
    }
}

pub(super) fn read(ebpf: &Ebpf) -> Result<Counters, DatapathError> {
    let stats = per_cpu::<TrafficCounter>(ebpf, map_names::STATS)?;
    let drops = per_cpu::<u64>(ebpf, map_names::DROPS)?;

    let mut out = Counters::default();
    for class in PacketClass::ALL {
        let values = stats
            .get(&(class as u32), 0)
            .map_err(|source| DatapathError::MapRead {
                map: map_names::STATS,
                source,
            })?;
        let sum = values
            .iter()
            .fold(TrafficCounter::default(), |acc, v| acc.saturating_add(*v));
        out.classes.push((class, sum));
    }
    for reason in DropReason::ALL {
        let values = drops
            .get(&(reason as u32), 0)
            .map_err(|source| DatapathError::MapRead {
                map: map_names::DROPS,
                source,
            })?;
        out.drops.push((
            reason,
            values.iter().fold(0u64, |a, v| a.saturating_add(*v)),
        ));
    }
    Ok(out)
}

fn per_cpu<'a, V: aya::Pod>(
    ebpf: &'a Ebpf,
    name: &'static str,
) -> Result<PerCpuArray<&'a MapData, V>, DatapathError> {
    let map = ebpf.map(name).ok_or_else(|| DatapathError::MissingMap {
        name: name.to_owned(),
    })?;
    PerCpuArray::try_from(map).map_err(|source| DatapathError::MapRead { map: name, source })
}
