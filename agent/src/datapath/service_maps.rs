//! [`ServiceMaps`] over the live BPF maps.

use std::collections::{HashMap as StdHashMap, HashSet};

use aya::maps::{
    lpm_trie::{Key, LpmTrie},
    HashMap, MapData, MapError,
};
use skiff_datapath_abi::{
    ct_flags, ct_timeouts, map_names, proto, AffinityKey, AffinityValue, Backend, CtKey, CtValue,
    ServiceKey, ServiceOptions, ServiceValue, SlotKey, SockRevKey, SockRevValue, SourceRangeKey,
};

use crate::lbmap::{MapSizes, MapWriteError, Purge, Purged, ServiceMaps, Snapshot};

/// The service maps, taken out of the loaded object so they can be written together.
pub struct BpfServiceMaps {
    pub(super) sizes: MapSizes,
    pub(super) services: HashMap<MapData, ServiceKey, ServiceValue>,
    pub(super) slots: HashMap<MapData, SlotKey, u32>,
    pub(super) backends: HashMap<MapData, u32, Backend>,
    pub(super) sock_rev: HashMap<MapData, SockRevKey, SockRevValue>,
    pub(super) conntrack: HashMap<MapData, CtKey, CtValue>,
    /// A second descriptor of the conntrack map, for the atomic take that aya does not
    /// expose for hash maps (`ct_delete`).
    pub(super) conntrack_fd: std::os::fd::OwnedFd,
    pub(super) source_ranges: LpmTrie<MapData, SourceRangeKey, u8>,
    pub(super) options: HashMap<MapData, u32, ServiceOptions>,
    pub(super) affinity: HashMap<MapData, AffinityKey, AffinityValue>,
    pub(super) maglev: aya::maps::Array<MapData, u32>,
}

fn range_key(service_id: u32, range: (std::net::Ipv4Addr, u8)) -> Key<SourceRangeKey> {
    // The service id is always matched whole: 32 bits, then the range's prefix.
    Key::new(
        32 + u32::from(range.1),
        SourceRangeKey {
            service_id_be: service_id.to_be(),
            addr: u32::from(range.0).to_be(),
        },
    )
}

fn write_error(map: &'static str, sizes: &MapSizes, e: MapError) -> MapWriteError {
    if let MapError::SyscallError(s) = &e {
        // The kernel's hash maps answer E2BIG when every preallocated entry is in use.
        if s.io_error.raw_os_error() == Some(libc::E2BIG) {
            return MapWriteError::Full {
                map,
                capacity: sizes.capacity(map),
                flag: MapSizes::flag(map),
            };
        }
    }
    MapWriteError::Other {
        map,
        detail: super::error_chain(&e),
    }
}

/// Deleting an absent key is fine: the reconciler's deletes are idempotent.
fn ignore_missing(r: Result<(), MapError>) -> Result<(), MapError> {
    match r {
        Err(MapError::KeyNotFound) => Ok(()),
        Err(MapError::SyscallError(s)) if s.io_error.raw_os_error() == Some(libc::ENOENT) => Ok(()),
        other => other,
    }
}

impl ServiceMaps for BpfServiceMaps {
    fn put_backend(&mut self, id: u32, backend: Backend) -> Result<(), MapWriteError> {
        self.backends
            .insert(id, backend, 0)
            .map_err(|e| write_error(map_names::BACKENDS, &self.sizes, e))
    }

    fn delete_backend(&mut self, id: u32) -> Result<(), MapWriteError> {
        ignore_missing(self.backends.remove(&id))
            .map_err(|e| write_error(map_names::BACKENDS, &self.sizes, e))
    }

    fn put_slot(&mut self, key: SlotKey, backend_id: u32) -> Result<(), MapWriteError> {
        self.slots
            .insert(key, backend_id, 0)
            .map_err(|e| write_error(map_names::SLOTS, &self.sizes, e))
    }

    fn delete_slot(&mut self, key: SlotKey) -> Result<(), MapWriteError> {
        ignore_missing(self.slots.remove(&key))
            .map_err(|e| write_error(map_names::SLOTS, &self.sizes, e))
    }

    fn put_service(&mut self, key: ServiceKey, value: ServiceValue) -> Result<(), MapWriteError> {
        self.services
            .insert(key, value, 0)
            .map_err(|e| write_error(map_names::SERVICES, &self.sizes, e))
    }

    fn delete_service(&mut self, key: ServiceKey) -> Result<(), MapWriteError> {
        ignore_missing(self.services.remove(&key))
            .map_err(|e| write_error(map_names::SERVICES, &self.sizes, e))
    }

    fn purge_sock_rev(
        &mut self,
        service_id: u32,
        backend: &Backend,
    ) -> Result<Vec<u64>, MapWriteError> {
        // A full walk of the LRU map; backend removals are rare next to lookups, and the
        // walk is what guarantees no socket keeps a stale translation.
        let mut doomed = Vec::new();
        for entry in self.sock_rev.iter() {
            let (k, v) = entry.map_err(|e| write_error(map_names::SOCK_REV, &self.sizes, e))?;
            if k.addr == backend.addr && k.port == backend.port && v.service_id == service_id {
                doomed.push(k);
            }
        }
        for k in &doomed {
            ignore_missing(self.sock_rev.remove(k))
                .map_err(|e| write_error(map_names::SOCK_REV, &self.sizes, e))?;
        }
        Ok(doomed.iter().map(|k| k.cookie).collect())
    }

    fn purge_conntrack(
        &mut self,
        service_id: u32,
        backend_id: u32,
    ) -> Result<usize, MapWriteError> {
        let of_backend =
            |_: &CtKey, v: &CtValue| v.service_id == service_id && v.backend_id == backend_id;
        let doomed = self.conntrack_matching(of_backend)?;
        self.delete_conntrack_if(&doomed, of_backend)
    }

    fn put_source_range(
        &mut self,
        service_id: u32,
        range: (std::net::Ipv4Addr, u8),
    ) -> Result<(), MapWriteError> {
        self.source_ranges
            .insert(&range_key(service_id, range), 1, 0)
            .map_err(|e| write_error(map_names::SOURCE_RANGES, &self.sizes, e))
    }

    fn delete_source_range(
        &mut self,
        service_id: u32,
        range: (std::net::Ipv4Addr, u8),
    ) -> Result<(), MapWriteError> {
        ignore_missing(self.source_ranges.remove(&range_key(service_id, range)))
            .map_err(|e| write_error(map_names::SOURCE_RANGES, &self.sizes, e))
    }

    fn put_service_options(
        &mut self,
        service_id: u32,
        options: ServiceOptions,
    ) -> Result<(), MapWriteError> {
        self.options
            .insert(service_id, options, 0)
            .map_err(|e| write_error(map_names::SERVICE_OPTIONS, &self.sizes, e))
    }

    fn delete_service_options(&mut self, service_id: u32) -> Result<(), MapWriteError> {
        ignore_missing(self.options.remove(&service_id))
            .map_err(|e| write_error(map_names::SERVICE_OPTIONS, &self.sizes, e))
    }

    fn put_maglev_entries(
        &mut self,
        table: u32,
        entries: &[(u32, u32)],
    ) -> Result<(), MapWriteError> {
        if table >= self.sizes.maglev_tables {
            return Err(MapWriteError::Full {
                map: map_names::MAGLEV,
                capacity: self.sizes.maglev_tables,
                flag: MapSizes::flag(map_names::MAGLEV),
            });
        }
        let base = table * skiff_datapath_abi::maglev::TABLE_SIZE;
        for (i, id) in entries {
            self.maglev
                .set(base + i, id, 0)
                .map_err(|e| write_error(map_names::MAGLEV, &self.sizes, e))?;
        }
        Ok(())
    }

    fn purge_affinity(&mut self, service_id: u32, backend_id: u32) -> Result<usize, MapWriteError> {
        let mut doomed = Vec::new();
        for entry in self.affinity.iter() {
            let (k, v) = entry.map_err(|e| write_error(map_names::AFFINITY, &self.sizes, e))?;
            if k.service_id == service_id && v.backend_id == backend_id {
                doomed.push(k);
            }
        }
        for k in &doomed {
            ignore_missing(self.affinity.remove(k))
                .map_err(|e| write_error(map_names::AFFINITY, &self.sizes, e))?;
        }
        Ok(doomed.len())
    }

    fn snapshot(&self) -> Result<Snapshot, MapWriteError> {
        let mut s = Snapshot::default();
        for e in self.services.iter() {
            let (k, v) = e.map_err(|e| write_error(map_names::SERVICES, &self.sizes, e))?;
            s.services.insert(k, v);
        }
        for e in self.slots.iter() {
            let (k, v) = e.map_err(|e| write_error(map_names::SLOTS, &self.sizes, e))?;
            s.slots.insert(k, v);
        }
        for e in self.backends.iter() {
            let (k, v) = e.map_err(|e| write_error(map_names::BACKENDS, &self.sizes, e))?;
            s.backends.insert(k, v);
        }
        for e in self.source_ranges.keys() {
            let k = e.map_err(|e| write_error(map_names::SOURCE_RANGES, &self.sizes, e))?;
            let data = k.data();
            s.source_ranges.insert((
                u32::from_be(data.service_id_be),
                std::net::Ipv4Addr::from(u32::from_be(data.addr)),
                (k.prefix_len() - 32) as u8,
            ));
        }
        for e in self.options.iter() {
            let (k, v) = e.map_err(|e| write_error(map_names::SERVICE_OPTIONS, &self.sizes, e))?;
            s.options.insert(k, v);
        }
        Ok(s)
    }

    /// One walk of each map for every purge of the sync, instead of three full walks per
    /// departing backend (the conntrack map alone holds up to its `--ct-entries`).
    fn purge_backends(&mut self, purges: &[Purge]) -> Result<Purged, MapWriteError> {
        let mut out = Purged::default();
        if purges.is_empty() {
            return Ok(out);
        }
        // (service id, backend id) whose flows go, and whose affinity entries go.
        let flows: HashSet<(u32, u32)> = purges
            .iter()
            .filter(|p| p.flows)
            .map(|p| (p.service_id, p.backend_id))
            .collect();
        let affinity: HashSet<(u32, u32)> = purges
            .iter()
            .map(|p| (p.service_id, p.backend_id))
            .collect();
        if !flows.is_empty() {
            // Socket reverse entries name the backend by address and port.
            let by_addr: StdHashMap<(u32, u32, u16), Backend> = purges
                .iter()
                .filter(|p| p.flows)
                .map(|p| ((p.service_id, p.backend.addr, p.backend.port), p.backend))
                .collect();
            let mut doomed = Vec::new();
            let mut cookies: StdHashMap<(u32, u32, u16), Vec<u64>> = StdHashMap::new();
            for entry in self.sock_rev.iter() {
                let (k, v) = entry.map_err(|e| write_error(map_names::SOCK_REV, &self.sizes, e))?;
                let id = (v.service_id, k.addr, k.port);
                if by_addr.contains_key(&id) {
                    doomed.push(k);
                    cookies.entry(id).or_default().push(k.cookie);
                }
            }
            for k in &doomed {
                ignore_missing(self.sock_rev.remove(k))
                    .map_err(|e| write_error(map_names::SOCK_REV, &self.sizes, e))?;
            }
            for p in purges.iter().filter(|p| p.flows) {
                let id = (p.service_id, p.backend.addr, p.backend.port);
                out.sockets
                    .push((p.backend, cookies.remove(&id).unwrap_or_default()));
            }
            let of_purged = |_: &CtKey, v: &CtValue| flows.contains(&(v.service_id, v.backend_id));
            let doomed = self.conntrack_matching(of_purged)?;
            out.conntrack = self.delete_conntrack_if(&doomed, of_purged)?;
        }
        let mut doomed = Vec::new();
        for entry in self.affinity.iter() {
            let (k, v) = entry.map_err(|e| write_error(map_names::AFFINITY, &self.sizes, e))?;
            if affinity.contains(&(k.service_id, v.backend_id)) {
                doomed.push(k);
            }
        }
        for k in &doomed {
            ignore_missing(self.affinity.remove(k))
                .map_err(|e| write_error(map_names::AFFINITY, &self.sizes, e))?;
        }
        out.affinity = doomed.len();
        Ok(out)
    }
}

/// Whether a conntrack entry last seen at `last_seen_ns` is expired at `now_ns`, by the
/// timeouts of `skiff_datapath_abi::ct_timeouts`.
pub fn ct_expired(key: &CtKey, value: &CtValue, now_ns: u64) -> bool {
    let timeout = if key.proto == proto::TCP {
        if value.flags & ct_flags::CLOSING != 0 {
            ct_timeouts::TCP_CLOSING
        } else if value.flags & ct_flags::SEEN_REPLY != 0 {
            ct_timeouts::TCP_ESTABLISHED
        } else {
            ct_timeouts::TCP_SYN
        }
    } else {
        ct_timeouts::UDP
    };
    now_ns.saturating_sub(value.last_seen_ns) > timeout * 1_000_000_000
}

/// Whether the flow an entry belongs to has aged out, judged on the pair (the entry and
/// its `partner`, if present), as one connection: a FIN or RST seen in either direction
/// puts the whole flow on the close timeout, as Cilium's `ct_entry_closing` (tx or rx
/// closing) does; the idle time is that of the pair's most recent packet. Judging each
/// entry alone kept a flow whose server-side FIN was seen but whose client-side entry
/// was not marked for the established timeout (6 h): a client reusing the port later
/// hit that stale entry and was pinned to its old backend.
pub fn ct_pair_expired(
    key: &CtKey,
    value: &CtValue,
    partner: Option<&CtValue>,
    now_ns: u64,
) -> bool {
    match partner {
        None => ct_expired(key, value, now_ns),
        Some(p) => {
            let flow = CtValue {
                flags: value.flags | p.flags,
                last_seen_ns: value.last_seen_ns.max(p.last_seen_ns),
                ..*value
            };
            ct_expired(key, &flow, now_ns)
        }
    }
}

impl BpfServiceMaps {
    fn conntrack_matching(
        &self,
        keep: impl Fn(&CtKey, &CtValue) -> bool,
    ) -> Result<Vec<CtKey>, MapWriteError> {
        let mut out = Vec::new();
        for entry in self.conntrack.iter() {
            let (k, v) = entry.map_err(|e| write_error(map_names::CONNTRACK, &self.sizes, e))?;
            if keep(&k, &v) {
                out.push(k);
            }
        }
        Ok(out)
    }

    /// Every conntrack entry, for `ct list` and tests.
    pub fn conntrack_entries(&self) -> Result<Vec<(CtKey, CtValue)>, MapWriteError> {
        let mut out = Vec::new();
        for entry in self.conntrack.iter() {
            out.push(entry.map_err(|e| write_error(map_names::CONNTRACK, &self.sizes, e))?);
        }
        Ok(out)
    }

    /// Deletes expired conntrack entries (timeouts by protocol and TCP state). A flow's
    /// two entries age together: a pair goes only when both are idle past their timeout,
    /// since each direction refreshes only its own entry. Returns how many entries went.
    pub fn gc_conntrack(&mut self, now_ns: u64) -> Result<usize, MapWriteError> {
        self.gc_conntrack_counted(now_ns)
            .map(|(deleted, _)| deleted)
    }

    /// [`Self::gc_conntrack`], also returning how many entries remain (the map's fill
    /// level, counted by the same walk).
    pub fn gc_conntrack_counted(&mut self, now_ns: u64) -> Result<(usize, usize), MapWriteError> {
        let all: std::collections::HashMap<CtKey, CtValue> =
            self.conntrack_entries()?.into_iter().collect();
        let mut doomed = Vec::new();
        for (k, v) in &all {
            if ct_pair_expired(k, v, all.get(&partner(k, v)), now_ns) {
                doomed.push(*k);
            }
        }
        // Only an entry still as judged goes: since the walk, the datapath may have
        // replaced it with a new flow's (a client reusing its port), or the flow may have
        // woken up.
        let n = self.delete_conntrack_if(&doomed, |k, current| Some(current) == all.get(k))?;
        Ok((n, all.len() - n))
    }

    /// Deletes those of `keys` whose entry `doomed` still holds for, with
    /// `super::ct_delete`'s re-read, atomic take and put-back: a key the datapath rewrote
    /// for a new flow since the caller's walk keeps the new flow's entry. Returns how
    /// many entries went.
    pub fn delete_conntrack_if(
        &mut self,
        keys: &[CtKey],
        doomed: impl Fn(&CtKey, &CtValue) -> bool,
    ) -> Result<usize, MapWriteError> {
        let mut n = 0;
        for k in keys {
            match self.conntrack.get(k, 0) {
                Ok(current) if doomed(k, &current) => {}
                Ok(_) => continue,
                Err(e) => {
                    ignore_missing(Err(e))
                        .map_err(|e| write_error(map_names::CONNTRACK, &self.sizes, e))?;
                    continue;
                }
            }
            if self.take_conntrack_unless_changed(k, &doomed)? {
                n += 1;
            }
        }
        Ok(n)
    }

    /// The atomic step of [`Self::delete_conntrack_if`], without the re-read: takes `key`
    /// and, when the entry taken is not doomed after all (it changed after the caller
    /// looked), puts it back at once. Returns whether a doomed entry went.
    pub fn take_conntrack_unless_changed(
        &mut self,
        key: &CtKey,
        doomed: impl Fn(&CtKey, &CtValue) -> bool,
    ) -> Result<bool, MapWriteError> {
        let taken =
            super::ct_delete::take(&self.conntrack_fd, key).map_err(|e| MapWriteError::Other {
                map: map_names::CONNTRACK,
                detail: format!("BPF_MAP_LOOKUP_AND_DELETE_ELEM: {e}"),
            })?;
        match taken {
            None => Ok(false),
            Some(v) if doomed(key, &v) => Ok(true),
            Some(v) => {
                // BPF_ANY: if a packet of this flow slipped into the gap and was balanced
                // as a new flow, the entry put back (the flow's real one) wins over it.
                self.conntrack
                    .insert(key, v, 0)
                    .map_err(|e| write_error(map_names::CONNTRACK, &self.sizes, e))?;
                Ok(false)
            }
        }
    }

    /// The capacities the maps were created with.
    pub fn sizes(&self) -> MapSizes {
        self.sizes
    }

    /// Number of live socket reverse-translation entries.
    pub fn sock_rev_len(&self) -> usize {
        self.sock_rev.keys().filter(|k| k.is_ok()).count()
    }
}

/// The key of the other direction of a conntrack entry: a packet rewritten by `v` and
/// answered comes back with source and destination swapped.
pub fn partner(k: &CtKey, v: &CtValue) -> CtKey {
    CtKey {
        saddr: v.daddr,
        daddr: v.saddr,
        sport: v.dport,
        dport: v.sport,
        proto: k.proto,
        dir: skiff_datapath_abi::ct_partner_dir(k.dir, v.flags),
        _pad: 0,
    }
}
