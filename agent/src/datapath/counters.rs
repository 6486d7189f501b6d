//! Reading the per-CPU counter maps.

use std::{
    borrow::Borrow,
    sync::atomic::{AtomicBool, Ordering},
};

use aya::{
    maps::{MapData, PerCpuArray},
    Ebpf,
};
use skiff_datapath_abi::{
    map_names, DropReason, FlowCounter, LbCounter, MasqCounter, PacketClass, SockLbCounter,
    TrafficCounter,
};

use super::DatapathError;

/// Counters summed over all CPUs, in ABI index order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    /// One entry per [`PacketClass`], in `PacketClass::ALL` order.
    pub classes: Vec<(PacketClass, TrafficCounter)>,
    /// One entry per [`DropReason`], in `DropReason::ALL` order.
    pub drops: Vec<(DropReason, u64)>,
    /// One entry per [`MasqCounter`], in `MasqCounter::ALL` order (empty when read from
    /// pins of an agent that predates masquerade).
    pub masquerade: Vec<(MasqCounter, u64)>,
    /// One entry per [`FlowCounter`], in `FlowCounter::ALL` order (empty when read from
    /// pins of an agent that predates these counters).
    pub flows: Vec<(FlowCounter, u64)>,
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

    /// One masquerade counter.
    pub fn masq(&self, event: MasqCounter) -> u64 {
        self.masquerade
            .iter()
            .find(|(e, _)| *e == event)
            .map(|(_, v)| *v)
            .unwrap_or_default()
    }

    /// One conntrack event counter of service flows.
    pub fn flow(&self, event: FlowCounter) -> u64 {
        self.flows
            .iter()
            .find(|(e, _)| *e == event)
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
        for (event, n) in &self.masquerade {
            out.push_str(&format!("masquerade{{event={}}} {}\n", event.name(), n));
        }
        for (event, n) in &self.flows {
            out.push_str(&format!("flows{{event={}}} {}\n", event.name(), n));
        }
        out
    }
}

pub(super) fn read(ebpf: &Ebpf) -> Result<Counters, DatapathError> {
    Counters::from_maps(
        &per_cpu::<TrafficCounter>(ebpf, map_names::STATS)?,
        &per_cpu::<u64>(ebpf, map_names::DROPS)?,
        Some(&per_cpu::<u64>(ebpf, map_names::MASQ_STATS)?),
        Some(&per_cpu::<u64>(ebpf, map_names::FLOW_STATS)?),
    )
}

impl Counters {
    /// Sums the counter maps, from the loaded object or from pins (`inspect`); the
    /// masquerade and flow maps are `None` in pins of an agent that predates them.
    pub(super) fn from_maps<M: Borrow<MapData>>(
        stats: &PerCpuArray<M, TrafficCounter>,
        drops: &PerCpuArray<M, u64>,
        masq: Option<&PerCpuArray<M, u64>>,
        flows: Option<&PerCpuArray<M, u64>>,
    ) -> Result<Counters, DatapathError> {
        let add = |a: u64, b: u64| a.saturating_add(b);
        Ok(Counters {
            classes: sums(
                stats,
                map_names::STATS,
                &PacketClass::ALL,
                |c| c as u32,
                |a, b| a.saturating_add(b),
            )?,
            drops: sums(drops, map_names::DROPS, &DropReason::ALL, |r| r as u32, add)?,
            masquerade: match masq {
                Some(m) => sums(
                    m,
                    map_names::MASQ_STATS,
                    &MasqCounter::ALL,
                    |e| e as u32,
                    add,
                )?,
                None => Vec::new(),
            },
            flows: match flows {
                Some(m) => sums(
                    m,
                    map_names::FLOW_STATS,
                    &FlowCounter::ALL,
                    |e| e as u32,
                    add,
                )?,
                None => Vec::new(),
            },
        })
    }
}

/// Each of `items`' entry (at `index(item)`) of per-CPU array `name`, summed over CPUs.
pub(super) fn sums<M: Borrow<MapData>, T: Copy, V: aya::Pod + Default>(
    map: &PerCpuArray<M, V>,
    name: &'static str,
    items: &[T],
    index: impl Fn(T) -> u32,
    add: impl Fn(V, V) -> V,
) -> Result<Vec<(T, V)>, DatapathError> {
    items
        .iter()
        .map(|&item| {
            let values = map
                .get(&index(item), 0)
                .map_err(|source| DatapathError::MapRead {
                    map: name,
                    source: Box::new(source),
                })?;
            Ok((item, values.iter().fold(V::default(), |a, v| add(a, *v))))
        })
        .collect()
}

/// Socket load-balancing counters summed over all CPUs, in `SockLbCounter::ALL` order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SockCounters {
    pub events: Vec<(SockLbCounter, u64)>,
}

impl SockCounters {
    pub fn get(&self, event: SockLbCounter) -> u64 {
        self.events
            .iter()
            .find(|(e, _)| *e == event)
            .map(|(_, n)| *n)
            .unwrap_or_default()
    }
}

pub(super) fn read_sock(ebpf: &Ebpf) -> Result<SockCounters, DatapathError> {
    let map = per_cpu::<u64>(ebpf, map_names::SOCK_STATS)?;
    Ok(SockCounters {
        events: sums(
            &map,
            map_names::SOCK_STATS,
            &SockLbCounter::ALL,
            |e| e as u32,
            |a, b| a.saturating_add(b),
        )?,
    })
}

/// The per-backend or per-service counter map.
pub(super) fn lb_map_name(backends: bool) -> &'static str {
    if backends {
        map_names::BACKEND_STATS
    } else {
        map_names::SERVICE_STATS
    }
}

pub(super) fn read_lb(
    ebpf: &Ebpf,
    backends: bool,
    ids: &[u32],
) -> Result<Vec<(u32, LbCounter)>, DatapathError> {
    let name = lb_map_name(backends);
    let map = ebpf.map(name).ok_or_else(|| DatapathError::MissingMap {
        name: name.to_owned(),
    })?;
    lb_sums(map, name, ids)
}

/// Set when the kernel refused a batch lookup as unsupported (before Linux 5.6).
static BATCH_UNSUPPORTED: AtomicBool = AtomicBool::new(false);

/// Whether counter reads use `BPF_MAP_LOOKUP_BATCH` (false once the kernel refused it).
pub fn counter_reads_batched() -> bool {
    !BATCH_UNSUPPORTED.load(Ordering::Relaxed)
}

/// The counters of `ids` in the per-CPU array `map`, summed over CPUs. Ids are small and
/// dense (the reconciler hands out the smallest free one), so this is one batch read of
/// indices `0..=max(ids)`, or index by index where the kernel has no batch lookup. Ids
/// past the array were not counted (see the map's doc): zero.
pub(super) fn lb_sums(
    map: &aya::maps::Map,
    name: &'static str,
    ids: &[u32],
) -> Result<Vec<(u32, LbCounter)>, DatapathError> {
    let read_err = |source| DatapathError::MapRead {
        map: name,
        source: Box::new(source),
    };
    let array: PerCpuArray<&MapData, LbCounter> = PerCpuArray::try_from(map).map_err(read_err)?;
    let Some(max) = ids.iter().max() else {
        return Ok(Vec::new());
    };
    let batched = !BATCH_UNSUPPORTED.load(Ordering::Relaxed);
    if let (true, aya::maps::Map::PerCpuArray(data)) = (batched, map) {
        let add = |a: LbCounter, c: LbCounter| a.saturating_add(c);
        match super::batch::per_cpu_sums(data, array.len(), max.saturating_add(1), add) {
            Ok(sums) => {
                return Ok(ids
                    .iter()
                    .map(|id| (*id, sums.get(*id as usize).copied().unwrap_or_default()))
                    .collect())
            }
            // Remembered, so an old kernel costs one failed syscall, not one per tick.
            Err(e) if super::batch::unsupported(&e) => {
                BATCH_UNSUPPORTED.store(true, Ordering::Relaxed);
                tracing::info!(
                    "BPF_MAP_LOOKUP_BATCH unsupported ({e}): reading counters index by index"
                );
            }
            Err(io_error) => {
                return Err(read_err(aya::maps::MapError::SyscallError(
                    aya::sys::SyscallError {
                        call: "bpf_map_lookup_batch",
                        io_error,
                    },
                )))
            }
        }
    }
    Ok(ids
        .iter()
        .map(|id| {
            let sum = array
                .get(id, 0)
                .map(|v| {
                    v.iter()
                        .fold(LbCounter::default(), |a, c| a.saturating_add(*c))
                })
                .unwrap_or_default();
            (*id, sum)
        })
        .collect())
}

pub(super) fn write_lb(
    ebpf: &mut Ebpf,
    backends: bool,
    id: u32,
    per_cpu: Vec<LbCounter>,
) -> Result<(), DatapathError> {
    let name = if backends {
        map_names::BACKEND_STATS
    } else {
        map_names::SERVICE_STATS
    };
    let err = |source| DatapathError::MapRead {
        map: name,
        source: Box::new(source),
    };
    let map = ebpf
        .map_mut(name)
        .ok_or_else(|| DatapathError::MissingMap {
            name: name.to_owned(),
        })?;
    let mut array: PerCpuArray<&mut MapData, LbCounter> =
        PerCpuArray::try_from(map).map_err(err)?;
    let values = aya::maps::PerCpuValues::try_from(per_cpu).map_err(|e| {
        err(aya::maps::MapError::SyscallError(aya::sys::SyscallError {
            call: "per-CPU values",
            io_error: e,
        }))
    })?;
    array.set(id, values, 0).map_err(err)
}

fn per_cpu<'a, V: aya::Pod>(
    ebpf: &'a Ebpf,
    name: &'static str,
) -> Result<PerCpuArray<&'a MapData, V>, DatapathError> {
    let map = ebpf.map(name).ok_or_else(|| DatapathError::MissingMap {
        name: name.to_owned(),
    })?;
    PerCpuArray::try_from(map).map_err(|source| DatapathError::MapRead {
        map: name,
        source: Box::new(source),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Counters {
        Counters {
            classes: PacketClass::ALL
                .iter()
                .map(|c| {
                    let n = *c as u64;
                    (
                        *c,
                        TrafficCounter {
                            packets: n,
                            bytes: n * 100,
                        },
                    )
                })
                .collect(),
            drops: DropReason::ALL
                .iter()
                .map(|r| (*r, u64::from(*r as u32 % 2)))
                .collect(),
            masquerade: MasqCounter::ALL.iter().map(|e| (*e, 3)).collect(),
            flows: FlowCounter::ALL.iter().map(|e| (*e, 5)).collect(),
        }
    }

    #[test]
    fn lookups_and_totals() {
        let c = sample();
        assert_eq!(
            c.class(PacketClass::Ipv4Udp),
            TrafficCounter {
                packets: 1,
                bytes: 100
            }
        );
        assert_eq!(c.drop_count(DropReason::ShortIpv4Header), 1);
        assert_eq!(c.drop_count(DropReason::ShortEthernet), 0);
        // classes 0..=5 sum to 15; each odd-numbered drop reason counts 1.
        assert_eq!(c.total_packets(), 15 + u64::from(DropReason::COUNT / 2));
        assert_eq!(
            Counters::default().class(PacketClass::Ipv4Tcp),
            TrafficCounter::default()
        );
    }

    #[test]
    fn render_is_stable() {
        let text = sample().render();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines.len(),
            (PacketClass::COUNT + DropReason::COUNT + MasqCounter::COUNT + FlowCounter::COUNT)
                as usize
        );
        assert_eq!(
            lines[(PacketClass::COUNT + DropReason::COUNT + MasqCounter::COUNT) as usize],
            "flows{event=midstream_new} 5"
        );
        assert_eq!(
            lines[(PacketClass::COUNT + DropReason::COUNT) as usize],
            "masquerade{event=new_flows} 3"
        );
        assert_eq!(lines[0], "packets{class=ipv4_tcp} 0 bytes=0");
        assert_eq!(lines[1], "packets{class=ipv4_udp} 1 bytes=100");
        assert_eq!(lines[6], "drops{reason=short_ethernet} 0");
        assert_eq!(lines[7], "drops{reason=short_ipv4_header} 1");
    }
}
