//! The service maps as the reconciler sees them: a small trait with one implementation
//! over the live BPF maps (`datapath::BpfServiceMaps`) and one in memory
//! ([`FakeServiceMaps`]) for unprivileged tests. Neither side of this trait knows about
//! Kubernetes objects; keys and values are the ABI types.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::Ipv4Addr,
};

use skiff_datapath_abi::{map_names, Backend, ServiceKey, ServiceOptions, ServiceValue, SlotKey};

/// A failed map write. Says which map, what went wrong, and for a full map which flag
/// raises its size (Cilium users' "argument list too long" is the lesson here).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MapWriteError {
    #[error(
        "BPF map {map} is full ({capacity} entries): raise it with `--{flag}` (skiff-agent) \
         and restart the agent"
    )]
    Full {
        map: &'static str,
        capacity: u32,
        flag: &'static str,
    },
    #[error("writing BPF map {map} failed: {detail}")]
    Other { map: &'static str, detail: String },
}

/// Capacities of the service maps, with the agent flag that sets each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MapSizes {
    pub services: u32,
    pub slots: u32,
    pub backends: u32,
    pub sock_rev: u32,
    pub conntrack: u32,
    /// Maglev tables (services using Maglev), `TABLE_SIZE` entries of 4 bytes each.
    pub maglev_tables: u32,
}

impl Default for MapSizes {
    fn default() -> Self {
        // Same as the defaults compiled into ebpf/programs/src/maps.rs.
        MapSizes {
            services: 65536,
            slots: 262144,
            backends: 65536,
            sock_rev: 262144,
            conntrack: 262144,
            maglev_tables: skiff_datapath_abi::maglev::DEFAULT_TABLES,
        }
    }
}

impl MapSizes {
    /// The agent flag that sizes `map`.
    pub fn flag(map: &str) -> &'static str {
        match map {
            m if m == map_names::SERVICES => "map-size-services",
            m if m == map_names::SLOTS => "map-size-slots",
            m if m == map_names::BACKENDS => "map-size-backends",
            m if m == map_names::SOCK_REV => "map-size-sock-rev",
            m if m == map_names::CONNTRACK => "map-size-conntrack",
            m if m == map_names::MAGLEV => "maglev-tables",
            _ => "map-size",
        }
    }

    pub fn capacity(&self, map: &str) -> u32 {
        match map {
            m if m == map_names::SERVICES => self.services,
            m if m == map_names::SLOTS => self.slots,
            m if m == map_names::BACKENDS => self.backends,
            m if m == map_names::SOCK_REV => self.sock_rev,
            m if m == map_names::CONNTRACK => self.conntrack,
            m if m == map_names::MAGLEV => self.maglev_tables,
            _ => 0,
        }
    }
}

/// A backend whose flows a sync purges from one service (see `reconcile`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Purge {
    pub service_id: u32,
    pub backend_id: u32,
    pub backend: Backend,
    /// Conntrack and socket reverse entries too (the backend left the service, or is a
    /// UDP backend that went not-ready); otherwise only its affinity entries.
    pub flows: bool,
}

/// What [`ServiceMaps::purge_backends`] removed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Purged {
    /// Socket cookies per backend (see [`ServiceMaps::purge_sock_rev`]).
    pub sockets: Vec<(Backend, Vec<u64>)>,
    pub conntrack: usize,
    pub affinity: usize,
}

/// Writes to the service maps. Deleting a missing key is not an error (idempotence).
pub trait ServiceMaps {
    fn put_backend(&mut self, id: u32, backend: Backend) -> Result<(), MapWriteError>;
    fn delete_backend(&mut self, id: u32) -> Result<(), MapWriteError>;
    fn put_slot(&mut self, key: SlotKey, backend_id: u32) -> Result<(), MapWriteError>;
    fn delete_slot(&mut self, key: SlotKey) -> Result<(), MapWriteError>;
    fn put_service(&mut self, key: ServiceKey, value: ServiceValue) -> Result<(), MapWriteError>;
    fn delete_service(&mut self, key: ServiceKey) -> Result<(), MapWriteError>;
    /// Removes every socket reverse-translation entry of service `service_id` pointing at
    /// `backend`, so no socket keeps a translation to a backend that left the service.
    /// Returns the socket cookies of the entries that went: those sockets may still be
    /// connected to the backend (connected UDP), see `sockets::destroy_udp`.
    fn purge_sock_rev(
        &mut self,
        service_id: u32,
        backend: &Backend,
    ) -> Result<Vec<u64>, MapWriteError>;
    /// Removes every conntrack entry (both directions) of service `service_id` whose flow
    /// goes to backend `backend_id`, so the next packet of such a flow picks a live
    /// backend instead of following a dead one (the stale-UDP-flow bug class).
    fn purge_conntrack(&mut self, service_id: u32, backend_id: u32)
        -> Result<usize, MapWriteError>;
    /// Allows clients in `range` to open flows to service `service_id`'s source-range
    /// checked frontends.
    fn put_source_range(
        &mut self,
        service_id: u32,
        range: (Ipv4Addr, u8),
    ) -> Result<(), MapWriteError>;
    fn delete_source_range(
        &mut self,
        service_id: u32,
        range: (Ipv4Addr, u8),
    ) -> Result<(), MapWriteError>;
    fn put_service_options(
        &mut self,
        service_id: u32,
        options: ServiceOptions,
    ) -> Result<(), MapWriteError>;
    fn delete_service_options(&mut self, service_id: u32) -> Result<(), MapWriteError>;
    /// Writes entries (index in table, backend id) of Maglev table `table`.
    fn put_maglev_entries(
        &mut self,
        table: u32,
        entries: &[(u32, u32)],
    ) -> Result<(), MapWriteError>;
    /// Forgets every client's session affinity to `backend_id` for service `service_id`.
    fn purge_affinity(&mut self, service_id: u32, backend_id: u32) -> Result<usize, MapWriteError>;
    /// A copy of the contents, for consistency checks and golden tests.
    fn snapshot(&self) -> Result<Snapshot, MapWriteError>;

    /// The purges of a whole sync at once. The kernel maps override this with one walk of
    /// each map for all of them (a rolling update replaces many backends in one sync, and
    /// each per-backend purge walks the whole conntrack map); this default does them one
    /// by one, in order.
    fn purge_backends(&mut self, purges: &[Purge]) -> Result<Purged, MapWriteError> {
        let mut out = Purged::default();
        for p in purges {
            if p.flows {
                let cookies = self.purge_sock_rev(p.service_id, &p.backend)?;
                out.sockets.push((p.backend, cookies));
                out.conntrack += self.purge_conntrack(p.service_id, p.backend_id)?;
            }
            out.affinity += self.purge_affinity(p.service_id, p.backend_id)?;
        }
        Ok(out)
    }
}

/// The contents of the service maps, ordered, with a stable text form.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Snapshot {
    pub services: BTreeMap<ServiceKey, ServiceValue>,
    pub slots: BTreeMap<SlotKey, u32>,
    pub backends: BTreeMap<u32, Backend>,
    /// (service id, range base, prefix length).
    pub source_ranges: BTreeSet<(u32, Ipv4Addr, u8)>,
    pub options: BTreeMap<u32, ServiceOptions>,
}

fn addr(a: u32) -> std::net::Ipv4Addr {
    std::net::Ipv4Addr::from(u32::from_be(a))
}

fn proto_name(p: u8) -> String {
    match p {
        skiff_datapath_abi::proto::TCP => "TCP".into(),
        skiff_datapath_abi::proto::UDP => "UDP".into(),
        skiff_datapath_abi::proto::SCTP => "SCTP".into(),
        p => format!("proto{p}"),
    }
}

impl Snapshot {
    /// One line per entry: `svc`, `slot`, `backend`, sorted. Used by golden tests and the
    /// debug CLI, so the format only ever grows.
    pub fn render(&self) -> String {
        let mut out = String::new();
        for (k, v) in &self.services {
            out.push_str(&format!(
                "svc {}:{}/{} scope={} -> id={} active={} terminating={} flags={:#x}\n",
                addr(k.addr),
                u16::from_be(k.port),
                proto_name(k.proto),
                k.scope,
                v.service_id,
                v.active,
                v.terminating,
                v.flags
            ));
        }
        for (k, v) in &self.slots {
            out.push_str(&format!(
                "slot {}[{}] -> backend {}\n",
                k.service_id, k.slot, v
            ));
        }
        for (id, a, l) in &self.source_ranges {
            out.push_str(&format!("range {id} {a}/{l}\n"));
        }
        for (id, o) in &self.options {
            out.push_str(&format!(
                "options {id} affinity={}s\n",
                o.affinity_timeout_s
            ));
        }
        for (id, b) in &self.backends {
            out.push_str(&format!(
                "backend {} {}:{}/{} flags={:#x}\n",
                id,
                addr(b.addr),
                u16::from_be(b.port),
                proto_name(b.proto),
                b.flags
            ));
        }
        out
    }

    /// Every invariant the datapath relies on: each frontend's slots `0..active+terminating`
    /// exist and name existing backends. Returns the violations.
    pub fn dangling(&self) -> Vec<String> {
        let mut problems = Vec::new();
        for (k, v) in &self.services {
            for slot in 0..u32::from(v.active) + u32::from(v.terminating) {
                let key = SlotKey {
                    service_id: v.service_id,
                    slot,
                };
                match self.slots.get(&key) {
                    None => problems.push(format!(
                        "{k:?}: slot {slot} of service {} missing",
                        v.service_id
                    )),
                    Some(b) if !self.backends.contains_key(b) => {
                        problems.push(format!("{k:?}: slot {slot} names missing backend {b}"))
                    }
                    Some(_) => {}
                }
            }
            if v.flags & skiff_datapath_abi::service_flags::AFFINITY != 0
                && !self.options.contains_key(&v.service_id)
            {
                problems.push(format!(
                    "{k:?}: affinity flag without options for service {}",
                    v.service_id
                ));
            }
        }
        problems
    }
}

/// An in-memory [`ServiceMaps`] with the same capacity semantics as the kernel's hash
/// maps, recording every write in order so tests can check minimality and ordering.
#[derive(Debug, Default)]
pub struct FakeServiceMaps {
    pub sizes: MapSizes,
    pub contents: Snapshot,
    /// Every successful write, in order (`put svc ...`, `del slot ...`).
    pub log: Vec<String>,
    /// Socket reverse entries as (service id, backend) -> socket cookies, for purge tests.
    pub sock_rev: BTreeMap<(u32, Backend), Vec<u64>>,
    /// Conntrack entries as (service id, backend id) -> count, for purge tests.
    pub conntrack: BTreeMap<(u32, u32), usize>,
    /// Affinity entries as (service id, backend id) -> count, for purge tests.
    pub affinity: BTreeMap<(u32, u32), usize>,
    /// Maglev tables by number (only tables that were written).
    pub maglev: BTreeMap<u32, Vec<u32>>,
    /// After each write, check the datapath invariants and record violations here.
    pub violations: Vec<String>,
}

impl FakeServiceMaps {
    pub fn new(sizes: MapSizes) -> Self {
        FakeServiceMaps {
            sizes,
            ..Default::default()
        }
    }

    fn full(map: &'static str, sizes: &MapSizes) -> MapWriteError {
        MapWriteError::Full {
            map,
            capacity: sizes.capacity(map),
            flag: MapSizes::flag(map),
        }
    }

    fn check(&mut self, op: String) {
        for v in self.contents.dangling() {
            self.violations.push(format!("after `{op}`: {v}"));
        }
        self.log.push(op);
    }
}

impl ServiceMaps for FakeServiceMaps {
    fn put_backend(&mut self, id: u32, backend: Backend) -> Result<(), MapWriteError> {
        let map = &mut self.contents.backends;
        if !map.contains_key(&id) && map.len() >= self.sizes.backends as usize {
            return Err(Self::full(map_names::BACKENDS, &self.sizes));
        }
        map.insert(id, backend);
        self.check(format!("put backend {id}"));
        Ok(())
    }

    fn delete_backend(&mut self, id: u32) -> Result<(), MapWriteError> {
        self.contents.backends.remove(&id);
        self.check(format!("del backend {id}"));
        Ok(())
    }

    fn put_slot(&mut self, key: SlotKey, backend_id: u32) -> Result<(), MapWriteError> {
        let map = &mut self.contents.slots;
        if !map.contains_key(&key) && map.len() >= self.sizes.slots as usize {
            return Err(Self::full(map_names::SLOTS, &self.sizes));
        }
        map.insert(key, backend_id);
        self.check(format!("put slot {}[{}]", key.service_id, key.slot));
        Ok(())
    }

    fn delete_slot(&mut self, key: SlotKey) -> Result<(), MapWriteError> {
        self.contents.slots.remove(&key);
        self.check(format!("del slot {}[{}]", key.service_id, key.slot));
        Ok(())
    }

    fn put_service(&mut self, key: ServiceKey, value: ServiceValue) -> Result<(), MapWriteError> {
        let map = &mut self.contents.services;
        if !map.contains_key(&key) && map.len() >= self.sizes.services as usize {
            return Err(Self::full(map_names::SERVICES, &self.sizes));
        }
        map.insert(key, value);
        self.check(format!(
            "put svc {}:{}/{}",
            addr(key.addr),
            u16::from_be(key.port),
            proto_name(key.proto)
        ));
        Ok(())
    }

    fn delete_service(&mut self, key: ServiceKey) -> Result<(), MapWriteError> {
        self.contents.services.remove(&key);
        self.check(format!(
            "del svc {}:{}/{}",
            addr(key.addr),
            u16::from_be(key.port),
            proto_name(key.proto)
        ));
        Ok(())
    }

    fn purge_sock_rev(
        &mut self,
        service_id: u32,
        backend: &Backend,
    ) -> Result<Vec<u64>, MapWriteError> {
        // As the kernel map's walk: by address and port (the flags may have changed
        // since the sockets were translated, e.g. the backend went not-ready).
        let keys: Vec<(u32, Backend)> = self
            .sock_rev
            .keys()
            .filter(|(id, b)| *id == service_id && b.addr == backend.addr && b.port == backend.port)
            .copied()
            .collect();
        let n = keys
            .iter()
            .filter_map(|k| self.sock_rev.remove(k))
            .flatten()
            .collect();
        self.log.push(format!(
            "purge sock-rev {service_id} {}:{}",
            addr(backend.addr),
            u16::from_be(backend.port)
        ));
        Ok(n)
    }

    fn purge_conntrack(
        &mut self,
        service_id: u32,
        backend_id: u32,
    ) -> Result<usize, MapWriteError> {
        let n = self
            .conntrack
            .remove(&(service_id, backend_id))
            .unwrap_or(0);
        self.log
            .push(format!("purge ct {service_id} backend {backend_id}"));
        Ok(n)
    }

    fn put_source_range(
        &mut self,
        service_id: u32,
        range: (Ipv4Addr, u8),
    ) -> Result<(), MapWriteError> {
        self.contents
            .source_ranges
            .insert((service_id, range.0, range.1));
        self.check(format!("put range {service_id} {}/{}", range.0, range.1));
        Ok(())
    }

    fn delete_source_range(
        &mut self,
        service_id: u32,
        range: (Ipv4Addr, u8),
    ) -> Result<(), MapWriteError> {
        self.contents
            .source_ranges
            .remove(&(service_id, range.0, range.1));
        self.check(format!("del range {service_id} {}/{}", range.0, range.1));
        Ok(())
    }

    fn put_service_options(
        &mut self,
        service_id: u32,
        options: ServiceOptions,
    ) -> Result<(), MapWriteError> {
        self.contents.options.insert(service_id, options);
        self.check(format!("put options {service_id}"));
        Ok(())
    }

    fn delete_service_options(&mut self, service_id: u32) -> Result<(), MapWriteError> {
        self.contents.options.remove(&service_id);
        self.check(format!("del options {service_id}"));
        Ok(())
    }

    fn put_maglev_entries(
        &mut self,
        table: u32,
        entries: &[(u32, u32)],
    ) -> Result<(), MapWriteError> {
        if table >= self.sizes.maglev_tables {
            return Err(Self::full(map_names::MAGLEV, &self.sizes));
        }
        let t = self
            .maglev
            .entry(table)
            .or_insert_with(|| vec![0; skiff_datapath_abi::maglev::TABLE_SIZE as usize]);
        for (i, id) in entries {
            t[*i as usize] = *id;
        }
        self.log
            .push(format!("put maglev {table} x{}", entries.len()));
        Ok(())
    }

    fn purge_affinity(&mut self, service_id: u32, backend_id: u32) -> Result<usize, MapWriteError> {
        let n = self.affinity.remove(&(service_id, backend_id)).unwrap_or(0);
        self.log
            .push(format!("purge affinity {service_id} backend {backend_id}"));
        Ok(n)
    }

    fn snapshot(&self) -> Result<Snapshot, MapWriteError> {
        Ok(self.contents.clone())
    }
}
