//! Masquerade settings of the datapath: which uplinks masquerade pod traffic, with which
//! address, source range and port range (`SKIFF_MASQ_V1`), and the destinations exempt
//! from it (`SKIFF_NOMASQ_V1`). The eBPF side is `ebpf/programs/src/masq.rs`.

use std::net::Ipv4Addr;

use aya::maps::{lpm_trie::Key, lpm_trie::LpmTrie, HashMap, PerCpuArray};
use skiff_datapath_abi::{map_names, MasqCounter, MasqIface};

use super::{Datapath, DatapathError};

/// Masquerade on one uplink, in plain types.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Masquerade {
    /// The address pod sources become (the uplink's own address, as MASQUERADE uses).
    pub address: Ipv4Addr,
    /// Sources that are masqueraded: the cluster CIDR (every pod, this node's podCIDR
    /// included), as (base, prefix length).
    pub sources: (Ipv4Addr, u8),
    /// Translated ports (and ICMP echo ids), inclusive, `min <= max`.
    pub ports: (u16, u16),
}

/// Default masquerade port range: above Linux's default ephemeral range
/// (`net.ipv4.ip_local_port_range` = 32768-60999), so a port the node's own sockets pick
/// is never also handed to a pod flow towards the same destination (the datapath does not
/// track the host's own connections). Also outside the default SNAT range of service
/// traffic, although both share one collision-free key space anyway.
pub const DEFAULT_PORTS: (u16, u16) = (61000, 65535);

fn netmask(prefix: u8) -> u32 {
    if prefix == 0 {
        0
    } else {
        u32::MAX << (32 - u32::from(prefix.min(32)))
    }
}

impl Masquerade {
    /// The map value.
    pub fn to_abi(&self) -> MasqIface {
        let mask = netmask(self.sources.1);
        MasqIface {
            addr: u32::from(self.address).to_be(),
            src_net: (u32::from(self.sources.0) & mask).to_be(),
            src_mask: mask.to_be(),
            port_min: self.ports.0,
            port_max: self.ports.1,
        }
    }
}

fn map_err(map: &'static str) -> impl Fn(aya::maps::MapError) -> DatapathError {
    move |source| DatapathError::MapRead {
        map,
        source: Box::new(source),
    }
}

/// The ifindex of `interface` in the calling thread's network namespace.
fn ifindex(interface: &str) -> Result<u32, DatapathError> {
    let name = std::ffi::CString::new(interface).map_err(|_| DatapathError::Pin {
        path: interface.to_owned(),
        detail: "interface name contains NUL".into(),
    })?;
    // SAFETY: if_nametoindex reads a NUL-terminated string.
    let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
    if index == 0 {
        return Err(DatapathError::Masquerade {
            interface: interface.to_owned(),
            detail: "no such interface in this network namespace (`ip link show`)".into(),
        });
    }
    Ok(index)
}

/// The first IPv4 address of `interface` (in the calling thread's namespace), if any.
pub fn interface_address(interface: &str) -> Option<Ipv4Addr> {
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs allocates a list we free below; we only read it meanwhile.
    if unsafe { libc::getifaddrs(&mut head) } != 0 {
        return None;
    }
    let mut found = None;
    let mut cur = head;
    while !cur.is_null() {
        // SAFETY: `cur` is a node of the list getifaddrs returned.
        let ifa = unsafe { &*cur };
        cur = ifa.ifa_next;
        if ifa.ifa_addr.is_null() || ifa.ifa_name.is_null() {
            continue;
        }
        // SAFETY: ifa_name is a NUL-terminated string owned by the list.
        let name = unsafe { std::ffi::CStr::from_ptr(ifa.ifa_name) };
        // SAFETY: ifa_addr is non-null; sa_family says which sockaddr it is.
        if name.to_bytes() == interface.as_bytes()
            && i32::from(unsafe { (*ifa.ifa_addr).sa_family }) == libc::AF_INET
        {
            // SAFETY: an AF_INET address is a sockaddr_in.
            let sin = unsafe { &*(ifa.ifa_addr as *const libc::sockaddr_in) };
            found = Some(Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr)));
            break;
        }
    }
    // SAFETY: freeing the list getifaddrs returned, once.
    unsafe { libc::freeifaddrs(head) };
    found
}

impl Datapath {
    /// Masquerades pod traffic leaving through each `(interface, settings)` (interfaces
    /// in the calling thread's namespace; tc egress must be attached to each, and tc
    /// ingress for the replies), and nowhere else: uplinks an earlier agent configured
    /// in pinned maps are dropped. An empty list turns masquerade off.
    pub fn set_masquerade(&mut self, uplinks: &[(&str, Masquerade)]) -> Result<(), DatapathError> {
        let mut wanted = Vec::new();
        for (interface, m) in uplinks {
            if m.ports.0 > m.ports.1 || m.ports.0 == 0 {
                return Err(DatapathError::Masquerade {
                    interface: (*interface).to_owned(),
                    detail: format!(
                        "port range {}-{} is empty or includes 0",
                        m.ports.0, m.ports.1
                    ),
                });
            }
            wanted.push((ifindex(interface)?, m.to_abi()));
        }
        let map =
            self.ebpf
                .map_mut(map_names::MASQUERADE)
                .ok_or_else(|| DatapathError::MissingMap {
                    name: map_names::MASQUERADE.to_owned(),
                })?;
        let mut map: HashMap<_, u32, MasqIface> =
            HashMap::try_from(map).map_err(map_err(map_names::MASQUERADE))?;
        for (index, value) in &wanted {
            map.insert(index, value, 0)
                .map_err(map_err(map_names::MASQUERADE))?;
        }
        let present: Vec<u32> = map.keys().filter_map(Result::ok).collect();
        for index in present {
            if !wanted.iter().any(|(i, _)| *i == index) {
                match map.remove(&index) {
                    Ok(()) | Err(aya::maps::MapError::KeyNotFound) => {}
                    Err(e) => return Err(map_err(map_names::MASQUERADE)(e)),
                }
            }
        }
        Ok(())
    }

    /// Replaces the destinations exempt from masquerade with `cidrs` (base, prefix
    /// length). Link-local is exempt in the datapath itself and needs no entry.
    pub fn set_non_masquerade(&mut self, cidrs: &[(Ipv4Addr, u8)]) -> Result<(), DatapathError> {
        let map = self
            .ebpf
            .map_mut(map_names::NON_MASQUERADE)
            .ok_or_else(|| DatapathError::MissingMap {
                name: map_names::NON_MASQUERADE.to_owned(),
            })?;
        let mut trie: LpmTrie<_, u32, u8> =
            LpmTrie::try_from(map).map_err(map_err(map_names::NON_MASQUERADE))?;
        let wanted: Vec<(u32, u32)> = cidrs
            .iter()
            .map(|(a, p)| {
                let p = u32::from((*p).min(32));
                ((u32::from(*a) & netmask(p as u8)).to_be(), p)
            })
            .collect();
        // Add first, then remove what is no longer wanted: no moment without the
        // ranges that stay.
        for (addr, prefix) in &wanted {
            trie.insert(&Key::new(*prefix, *addr), 1, 0)
                .map_err(map_err(map_names::NON_MASQUERADE))?;
        }
        let present: Vec<Key<u32>> = trie.keys().filter_map(Result::ok).collect();
        for key in present {
            if !wanted.contains(&(key.data(), key.prefix_len())) {
                match trie.remove(&key) {
                    Ok(()) | Err(aya::maps::MapError::KeyNotFound) => {}
                    Err(e) => return Err(map_err(map_names::NON_MASQUERADE)(e)),
                }
            }
        }
        Ok(())
    }

    /// Masquerade events summed over CPUs, in `MasqCounter::ALL` order.
    pub fn masq_counters(&self) -> Result<Vec<(MasqCounter, u64)>, DatapathError> {
        let map =
            self.ebpf
                .map(map_names::MASQ_STATS)
                .ok_or_else(|| DatapathError::MissingMap {
                    name: map_names::MASQ_STATS.to_owned(),
                })?;
        let array: PerCpuArray<_, u64> =
            PerCpuArray::try_from(map).map_err(map_err(map_names::MASQ_STATS))?;
        MasqCounter::ALL
            .iter()
            .map(|c| {
                let v = array
                    .get(&(*c as u32), 0)
                    .map_err(map_err(map_names::MASQ_STATS))?;
                Ok((*c, v.iter().fold(0u64, |a, x| a.saturating_add(*x))))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn map_value_is_masked_and_in_network_order() {
        let m = Masquerade {
            address: Ipv4Addr::new(203, 0, 113, 2),
            sources: (Ipv4Addr::new(10, 42, 7, 9), 16),
            ports: DEFAULT_PORTS,
        };
        let v = m.to_abi();
        assert_eq!(v.addr, u32::from_ne_bytes([203, 0, 113, 2]));
        assert_eq!(v.src_net, u32::from_ne_bytes([10, 42, 0, 0]));
        assert_eq!(v.src_mask, u32::from_ne_bytes([255, 255, 0, 0]));
        assert_eq!((v.port_min, v.port_max), (61000, 65535));
        assert_eq!(netmask(0), 0);
        assert_eq!(netmask(32), u32::MAX);
    }
}
