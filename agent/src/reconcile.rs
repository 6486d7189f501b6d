//! The only writer of the service maps. Given the desired [`Model`], it computes the
//! minimal set of map writes against what it applied last and performs them in an order
//! that keeps the datapath consistent at every step:
//!
//! 1. backends a service will use are written before any slot names them;
//! 2. slots `0..n` are written before a frontend's counts grow to `n`;
//! 3. frontend counts shrink before the slots beyond them are deleted;
//! 4. backends are deleted only after no slot names them.
//!
//! So a lookup that races with an update always lands on a slot that exists and a backend
//! that exists (old or new). One endpoint change rewrites only that service's entries.
//!
//! What happens to the flows of a backend (kube-proxy's rules, `pkg/proxy/conntrack`):
//! - it leaves its service (removed from every slice): its conntrack, socket reverse and
//!   affinity entries are purged, so every client moves on at once;
//! - it stops taking new flows but is still listed (not ready, [`EndpointState::NotReady`]):
//!   it loses its slots, stays in the backend map, and keeps its TCP (and SCTP) flows: no
//!   established TCP flow is deleted because its backend went not-ready (a readiness
//!   probe failing for a moment must not reset every connection). Its affinity entries
//!   are purged, so no new connection is pinned to it; a UDP backend's flows and
//!   connected sockets are purged as if it had left (UDP has no handshake to tell an old
//!   flow from a new one: the next datagram must reach a ready backend);
//! - it becomes ready again: it gets slots back, nothing is purged.
//!
//! A failed write (a full map) stops that service's update, is reported with the map and
//! the flag that sizes it, and every other service still syncs.

#[cfg(test)]
use std::collections::HashMap;
use std::{
    collections::{BTreeMap, BTreeSet},
    sync::Arc,
};

use skiff_datapath_abi::{
    backend_flags, scope, service_flags, Backend, ServiceKey, ServiceValue, SlotKey,
};

use crate::{
    lbmap::{MapWriteError, ServiceMaps},
    model::{EndpointState, Frontend, FrontendKind, Model, Protocol, ServicePortName},
};

/// Entries in use per service map, as the reconciler wrote them.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct MapUsage {
    pub services: usize,
    pub slots: usize,
    pub backends: usize,
    pub maglev_tables: usize,
}

/// What one sync did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct SyncReport {
    /// Map writes and deletes performed.
    pub writes: usize,
    /// Service ports that could not be (fully) programmed, and why.
    pub errors: Vec<(ServicePortName, MapWriteError)>,
    /// Frontends claimed by more than one service port: the first in name order keeps it.
    pub conflicts: Vec<String>,
    /// Socket reverse entries purged for backends that left their service.
    pub purged_sock_rev: usize,
    /// Sockets (by cookie) that socket-LB had translated to a backend that left its
    /// service. Connected UDP sockets among them still point at the backend: the caller
    /// destroys them (`sockets::destroy_udp`) in the namespaces it manages, so clients
    /// reconnect through the service instead of talking to a dead backend.
    pub stale_sockets: Vec<(std::net::SocketAddrV4, Vec<u64>)>,
    /// Conntrack entries purged for backends that left their service.
    pub purged_conntrack: usize,
    /// Session affinity entries purged for backends that left their service or stopped
    /// taking new flows (not ready).
    pub purged_affinity: usize,
}

impl SyncReport {
    fn note_stale_sockets(&mut self, b: &Backend, cookies: Vec<u64>) {
        self.purged_sock_rev += cookies.len();
        if !cookies.is_empty() {
            let addr = std::net::SocketAddrV4::new(
                std::net::Ipv4Addr::from(u32::from_be(b.addr)),
                u16::from_be(b.port),
            );
            self.stale_sockets.push((addr, cookies));
        }
    }
}

#[derive(Debug, Default, Clone)]
struct AppliedService {
    id: u32,
    /// Backend id per slot, in slot order.
    slots: Vec<u32>,
    /// Backends of not-ready endpoints, sorted: in the backend map (so their established
    /// flows keep working) but named by no slot (so no new flow picks them). Each holds a
    /// reference in `backend_refs` like a slot does.
    idle: Vec<u32>,
    frontends: SmallMap<ServiceKey, ServiceValue>,
    source_ranges: BTreeSet<(std::net::Ipv4Addr, u8)>,
    options: Option<skiff_datapath_abi::ServiceOptions>,
    /// Maglev table number and its contents (None: contents unknown, rewrite all).
    maglev: Option<(u32, Option<Vec<u32>>)>,
    /// The frontend keys this group claims (owned or not): its entries in `claims`.
    claimed: Vec<ServiceKey>,
}

/// A map as a sorted vector with no spare capacity. A group has one to a few frontends;
/// a `BTreeMap` allocates a whole 11-entry node for one (about 300 bytes per Service, 3 MB
/// at 10k Services), this one `entries × 24` bytes.
#[derive(Debug, Clone)]
struct SmallMap<K, V>(Vec<(K, V)>);

impl<K, V> Default for SmallMap<K, V> {
    fn default() -> Self {
        SmallMap(Vec::new())
    }
}

impl<K: Ord, V> SmallMap<K, V> {
    fn find(&self, k: &K) -> Result<usize, usize> {
        self.0.binary_search_by(|(x, _)| x.cmp(k))
    }

    fn get(&self, k: &K) -> Option<&V> {
        self.find(k).ok().map(|i| &self.0[i].1)
    }

    fn contains_key(&self, k: &K) -> bool {
        self.find(k).is_ok()
    }

    fn insert(&mut self, k: K, v: V) {
        match self.find(&k) {
            Ok(i) => self.0[i].1 = v,
            Err(i) => {
                self.0.reserve_exact(1);
                self.0.insert(i, (k, v));
            }
        }
    }

    fn remove(&mut self, k: &K) -> Option<V> {
        let i = self.find(k).ok()?;
        let (_, v) = self.0.remove(i);
        if self.0.is_empty() {
            self.0 = Vec::new();
        }
        Some(v)
    }

    fn keys(&self) -> impl Iterator<Item = &K> {
        self.0.iter().map(|(k, _)| k)
    }

    fn len(&self) -> usize {
        self.0.len()
    }
}

/// Smallest-free id allocator (ids start at 1; 0 means "none" in the maps).
#[derive(Debug, Default, Clone)]
struct Ids {
    next: u32,
    free: BTreeSet<u32>,
}

impl Ids {
    fn alloc(&mut self) -> u32 {
        if let Some(id) = self.free.pop_first() {
            return id;
        }
        self.next += 1;
        self.next
    }

    fn release(&mut self, id: u32) {
        self.free.insert(id);
    }

    /// An allocator for which `used` are taken: the gaps below the highest are free.
    fn reserved(used: impl Iterator<Item = u32>) -> Ids {
        let used: BTreeSet<u32> = used.collect();
        let next = used.last().copied().unwrap_or(0);
        Ids {
            next,
            free: (1..next).filter(|i| !used.contains(i)).collect(),
        }
    }
}

type BackendAddr = (u32, u16, u8);

fn addr_of(b: &Backend) -> BackendAddr {
    (b.addr, b.port, b.proto)
}

/// What a [`BackendTable`] row is.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum RowState {
    /// No backend has this id.
    #[default]
    Free,
    /// The id is the backend's at `BackendEntry::backend`'s address; the map holds
    /// nothing under it yet (its write is pending or failed).
    Assigned,
    /// The map holds `BackendEntry::backend` under this id.
    Written,
}

/// One backend id's row in [`BackendTable`].
#[derive(Debug, Default, Clone, Copy)]
struct BackendEntry {
    /// The backend's address (and, once written, exactly what the map holds).
    backend: Backend,
    /// Slots naming this id plus idle holds of it, over all services.
    refs: u32,
    state: RowState,
}

/// The backends written and the references to each, by backend id, as one table indexed
/// by id, with an address → id index that stores only ids (agent memory, issue 7).
///
/// Backend ids come from a smallest-free allocator ([`Ids`]), so they are dense below the
/// largest in use (adopted ones are bounded by the backend map's capacity): a row costs
/// 16 bytes where two hash maps over the ids cost 22 at their usual fill. The index is a
/// `hashbrown::HashTable` of ids whose addresses live in the rows: 5 bytes per bucket
/// where a `HashMap<(addr, port, proto), id>` took 13 (at 100k backends its 131072
/// buckets were 1.7 MB, now 0.66 MB).
#[derive(Debug, Default)]
struct BackendTable {
    rows: Vec<BackendEntry>,
    /// Ids of `Assigned` and `Written` rows, hashed by their address. At most one id per
    /// address; an adopted duplicate stays unindexed and is collected.
    index: hashbrown::HashTable<u32>,
    hasher: std::hash::RandomState,
    /// Rows holding a backend.
    len: usize,
}

impl BackendTable {
    fn row(&mut self, id: u32) -> &mut BackendEntry {
        let i = id as usize;
        if i >= self.rows.len() {
            self.rows.resize(i + 1, BackendEntry::default());
        }
        &mut self.rows[i]
    }

    fn hash(hasher: &std::hash::RandomState, addr: BackendAddr) -> u64 {
        std::hash::BuildHasher::hash_one(hasher, addr)
    }

    /// The id assigned to this address, if any.
    fn id_of(&self, addr: BackendAddr) -> Option<u32> {
        let rows = &self.rows;
        self.index
            .find(Self::hash(&self.hasher, addr), |&id| {
                addr_of(&rows[id as usize].backend) == addr
            })
            .copied()
    }

    /// Gives the free id `id` to `b`'s address; false (and nothing changes) when the
    /// address already has an id.
    fn assign(&mut self, id: u32, b: Backend) -> bool {
        if self.id_of(addr_of(&b)).is_some() {
            return false;
        }
        let row = self.row(id);
        debug_assert_eq!(row.state, RowState::Free, "backend id {id} assigned twice");
        row.backend = b;
        row.state = RowState::Assigned;
        let rows = &self.rows;
        let hasher = &self.hasher;
        self.index
            .insert_unique(Self::hash(hasher, addr_of(&b)), id, |&i| {
                Self::hash(hasher, addr_of(&rows[i as usize].backend))
            });
        true
    }

    fn get(&self, id: u32) -> Option<&Backend> {
        self.rows
            .get(id as usize)
            .filter(|r| r.state == RowState::Written)
            .map(|r| &r.backend)
    }

    /// Records that the map holds `b` under `id`, which is `b`'s address's id (assigned)
    /// or, when adopting, unindexed.
    fn insert(&mut self, id: u32, b: Backend) {
        let row = self.row(id);
        debug_assert!(
            row.state == RowState::Free || addr_of(&row.backend) == addr_of(&b),
            "backend id {id} rewritten with another address"
        );
        let added = row.state != RowState::Written;
        row.backend = b;
        row.state = RowState::Written;
        self.len += usize::from(added);
    }

    /// Frees `id`: its address loses it, its row is emptied. Returns what the map held
    /// under it, if anything.
    fn release(&mut self, id: u32) -> Option<Backend> {
        let row = self.rows.get_mut(id as usize)?;
        let (state, b) = (row.state, row.backend);
        row.state = RowState::Free;
        if state == RowState::Free {
            return None;
        }
        if let Ok(entry) = self
            .index
            .find_entry(Self::hash(&self.hasher, addr_of(&b)), |&i| i == id)
        {
            entry.remove();
        }
        self.len -= usize::from(state == RowState::Written);
        (state == RowState::Written).then_some(b)
    }

    fn len(&self) -> usize {
        self.len
    }

    fn referenced(&self, id: u32) -> bool {
        self.rows.get(id as usize).is_some_and(|r| r.refs > 0)
    }

    fn add_ref(&mut self, id: u32) {
        self.row(id).refs += 1;
    }

    /// Drops one reference to `id`; the last one makes it a collection candidate.
    fn drop_ref(&mut self, unreferenced: &mut BTreeSet<u32>, id: u32) {
        if let Some(row) = self.rows.get_mut(id as usize).filter(|r| r.refs > 0) {
            row.refs -= 1;
            if row.refs == 0 {
                unreferenced.insert(id);
            }
        }
    }

    /// A service that is going drops one of its references (a slot or an idle hold) to a
    /// backend; `purge`: the service holds no other, so the backend's flows in it are
    /// queued for purging.
    fn leave(
        &mut self,
        purges: &mut Vec<crate::lbmap::Purge>,
        unreferenced: &mut BTreeSet<u32>,
        (service_id, backend_id): (u32, u32),
        purge: bool,
    ) {
        if purge {
            push_purge(purges, self, service_id, backend_id, true);
        }
        self.drop_ref(unreferenced, backend_id);
    }

    /// Gives back the spare capacity growth left (after a full sync).
    fn pack(&mut self) {
        while self
            .rows
            .last()
            .is_some_and(|r| r.state == RowState::Free && r.refs == 0)
        {
            self.rows.pop();
        }
        self.rows.shrink_to_fit();
        let rows = &self.rows;
        let hasher = &self.hasher;
        self.index
            .shrink_to_fit(|&i| Self::hash(hasher, addr_of(&rows[i as usize].backend)));
    }

    /// (id, references) of every referenced id.
    #[cfg(test)]
    fn refs(&self) -> HashMap<u32, u32> {
        (0u32..)
            .zip(&self.rows)
            .filter(|(_, r)| r.refs > 0)
            .map(|(id, r)| (id, r.refs))
            .collect()
    }

    /// Ids holding a backend.
    #[cfg(test)]
    fn ids(&self) -> impl Iterator<Item = u32> + '_ {
        (0u32..)
            .zip(&self.rows)
            .filter(|(_, r)| r.state == RowState::Written)
            .map(|(id, _)| id)
    }
}

/// Remembers what it wrote; see the module documentation.
#[derive(Debug, Default)]
pub struct Reconciler {
    services: BTreeMap<ServicePortName, AppliedService>,
    service_ids: Ids,
    /// The backends written, with the slots and idle holds naming each.
    /// Also the address → id index (hashed, not a B-tree: 100k backends are allocated in
    /// ascending id order, which leaves B-tree nodes half full, and nothing iterates it in
    /// order).
    backends: BackendTable,
    backend_id_alloc: Ids,
    /// Maglev table numbers + 1 (the allocator hands out ids from 1).
    maglev_tables: Ids,
    /// Every group claiming a frontend key, in name order: the first owns it. Kept across
    /// syncs so an incremental sync knows whose ownership a change moves.
    claims: BTreeMap<ServiceKey, Vec<ServicePortName>>,
    /// Backends that may be named by no slot since the last collection: written ones and
    /// ones that lost a slot. Collecting only these keeps a change's cost independent of
    /// the number of backends.
    unreferenced: BTreeSet<u32>,
    /// The set of programmed groups changed since [`Reconciler::take_ids_changed`].
    ids_changed: bool,
    /// Purges queued by this sync's groups, run together at its end.
    purges: Vec<crate::lbmap::Purge>,
}

/// Queues the purge of `backend_id`'s entries in service `service_id` (flows too, or
/// only affinity), if the backend is known.
fn push_purge(
    purges: &mut Vec<crate::lbmap::Purge>,
    backends: &BackendTable,
    service_id: u32,
    backend_id: u32,
    flows: bool,
) {
    if let Some(b) = backends.get(backend_id) {
        purges.push(crate::lbmap::Purge {
            service_id,
            backend_id,
            backend: *b,
            flows,
        });
    }
}

/// The group owning a frontend key: the first claimant in name order.
fn owner<'a>(
    claims: &'a BTreeMap<ServiceKey, Vec<ServicePortName>>,
    key: &ServiceKey,
) -> Option<&'a ServicePortName> {
    claims.get(key).and_then(|c| c.first())
}

fn claim(
    claims: &mut BTreeMap<ServiceKey, Vec<ServicePortName>>,
    key: ServiceKey,
    name: &ServicePortName,
) {
    let c = claims.entry(key).or_default();
    if let Err(i) = c.binary_search(name) {
        // Almost every frontend has one claimant: no spare capacity (a first `insert`
        // would reserve four).
        c.reserve_exact(1);
        c.insert(i, name.clone());
    }
}

fn unclaim(
    claims: &mut BTreeMap<ServiceKey, Vec<ServicePortName>>,
    key: ServiceKey,
    name: &ServicePortName,
) {
    if let Some(c) = claims.get_mut(&key) {
        if let Ok(i) = c.binary_search(name) {
            c.remove(i);
        }
        if c.is_empty() {
            claims.remove(&key);
        }
    }
}

/// The entries of one Service (`namespace/name:*`, including `#local` groups) in a map
/// keyed by service port name.
fn service_range<'a, V>(
    map: &'a BTreeMap<ServicePortName, V>,
    namespace: &'a str,
    name: &'a str,
) -> impl Iterator<Item = (&'a ServicePortName, &'a V)> {
    map.range(ServicePortName::new(namespace, name, "")..)
        .take_while(move |(n, _)| &*n.namespace == namespace && &*n.name == name)
}

fn conflict(key: &ServiceKey, owner: &ServicePortName, name: &ServicePortName) -> String {
    format!(
        "{}:{}/{} is claimed by {owner} and {name}; {owner} keeps it",
        std::net::Ipv4Addr::from(u32::from_be(key.addr)),
        u16::from_be(key.port),
        key.proto
    )
}

fn frontend_key(f: &Frontend, scope: u8) -> ServiceKey {
    ServiceKey {
        addr: u32::from(f.addr).to_be(),
        port: f.port.to_be(),
        proto: f.proto.number(),
        scope,
    }
}

/// Frontend entries that share one backend list, i.e. one service id. A service port is
/// one group, or two when a traffic policy is Local: the local group holds only this
/// node's endpoints and is named `<port>#local`.
#[derive(Debug, Clone)]
struct Group {
    name: ServicePortName,
    proto: Option<Protocol>,
    /// Frontend keys with their `service_flags`.
    frontends: Vec<(ServiceKey, u32)>,
    endpoints: Vec<crate::model::Endpoint>,
    /// loadBalancerSourceRanges, written when a frontend carries SOURCE_RANGES.
    source_ranges: BTreeSet<(std::net::Ipv4Addr, u8)>,
    affinity_timeout: Option<u32>,
    maglev: bool,
}

/// Splits service ports into groups (see [`Group`]). With externalTrafficPolicy=Local an
/// external frontend gets a second, EXTERNAL_LOCAL-scoped entry for traffic arriving from
/// outside (kube-proxy's KUBE-EXT → KUBE-SVL) while its cluster-scoped entry keeps serving
/// in-cluster clients from every node; with internalTrafficPolicy=Local the ClusterIP
/// itself points at the local group.
fn groups(desired: &Model) -> BTreeMap<ServicePortName, Group> {
    groups_of(desired.services.iter())
}

/// [`groups`] of some service ports.
fn groups_of<'a>(
    ports: impl Iterator<Item = (&'a ServicePortName, &'a crate::model::ServicePort)>,
) -> BTreeMap<ServicePortName, Group> {
    let mut out = BTreeMap::new();
    for (name, port) in ports {
        let ranges: BTreeSet<_> = port.source_ranges.iter().copied().collect();
        let mut all = Group {
            name: name.clone(),
            proto: port.proto,
            frontends: Vec::new(),
            endpoints: port.endpoints.clone(),
            source_ranges: ranges.clone(),
            affinity_timeout: port.affinity_timeout,
            maglev: port.maglev,
        };
        let mut local = Group {
            name: name.with_port(&format!("{}#local", name.port)),
            proto: port.proto,
            frontends: Vec::new(),
            endpoints: port.endpoints.iter().filter(|e| e.local).copied().collect(),
            source_ranges: ranges.clone(),
            affinity_timeout: port.affinity_timeout,
            maglev: port.maglev,
        };
        for f in &port.frontends {
            let mut flag = f.kind.flag();
            // kube-proxy's KUBE-FW chains: source ranges guard the load-balancer address;
            // skiff applies them to ExternalIPs as well (both are reachable from outside).
            if !ranges.is_empty()
                && matches!(
                    f.kind,
                    FrontendKind::LoadBalancer | FrontendKind::ExternalIp
                )
            {
                flag |= service_flags::SOURCE_RANGES;
            }
            if port.affinity_timeout.is_some() {
                flag |= service_flags::AFFINITY;
            }
            if port.maglev {
                flag |= service_flags::MAGLEV;
            }
            if f.kind == FrontendKind::ClusterIp {
                if port.internal_local {
                    local
                        .frontends
                        .push((frontend_key(f, scope::CLUSTER), flag));
                } else {
                    all.frontends.push((frontend_key(f, scope::CLUSTER), flag));
                }
            } else {
                all.frontends.push((frontend_key(f, scope::CLUSTER), flag));
                if port.external_local {
                    local.frontends.push((
                        frontend_key(f, scope::EXTERNAL_LOCAL),
                        flag | service_flags::LOCAL_DROP,
                    ));
                }
            }
        }
        let has_frontends = !all.frontends.is_empty();
        if has_frontends || local.frontends.is_empty() {
            out.insert(all.name.clone(), all);
        }
        if !local.frontends.is_empty() {
            out.insert(local.name.clone(), local);
        }
    }
    out
}

impl Reconciler {
    pub fn new() -> Self {
        Self::default()
    }

    /// Brings the maps from the last applied state to `desired`: every service group
    /// (the first sync, relists, the periodic check).
    pub fn sync(&mut self, desired: &Model, maps: &mut dyn ServiceMaps) -> SyncReport {
        let mut report = SyncReport::default();
        let groups = groups(desired);
        self.claims.clear();
        for (name, group) in &groups {
            for (key, _) in &group.frontends {
                claim(&mut self.claims, *key, name);
            }
        }
        for (key, c) in &self.claims {
            for other in c.iter().skip(1) {
                report.conflicts.push(conflict(key, &c[0], other));
            }
        }

        for (name, group) in &groups {
            if let Err(e) = self.sync_service(group, maps, &mut report) {
                report.errors.push((name.clone(), e));
            }
        }

        let gone: Vec<ServicePortName> = self
            .services
            .keys()
            .filter(|n| !groups.contains_key(*n))
            .cloned()
            .collect();
        self.finish_sync(gone, maps, &mut report);
        // Groups were inserted in name order, which leaves B-tree nodes half empty;
        // rebuilt from sorted entries every node is full (agent memory, issue 7).
        self.services = std::mem::take(&mut self.services).into_iter().collect();
        self.claims = std::mem::take(&mut self.claims).into_iter().collect();
        self.backends.pack();
        report
    }

    /// Brings the groups of `services` (namespace, name) to what `desired` says, as
    /// [`Reconciler::sync`] would, touching nothing else but the groups of other
    /// Services that claim one of their old or new frontends (its owner may change).
    /// `desired` must be complete (those other groups are read from it); its entries for
    /// Services not named here must be what was last synced.
    pub fn sync_services(
        &mut self,
        desired: &Model,
        services: &BTreeSet<(Arc<str>, Arc<str>)>,
        maps: &mut dyn ServiceMaps,
    ) -> SyncReport {
        let mut report = SyncReport::default();
        let mut groups: BTreeMap<ServicePortName, Group> = BTreeMap::new();
        let mut old: Vec<ServicePortName> = Vec::new();
        for (ns, name) in services {
            groups.extend(groups_of(service_range(&desired.services, ns, name)));
            old.extend(service_range(&self.services, ns, name).map(|(n, _)| n.clone()));
        }
        // Claims move from the groups' old frontends to their new ones.
        let mut touched: BTreeSet<ServiceKey> = BTreeSet::new();
        for n in &old {
            let claimed = self
                .services
                .get_mut(n)
                .map(|a| std::mem::take(&mut a.claimed))
                .unwrap_or_default();
            for key in claimed {
                unclaim(&mut self.claims, key, n);
                touched.insert(key);
            }
        }
        for (n, g) in &groups {
            for (key, _) in &g.frontends {
                claim(&mut self.claims, *key, n);
                touched.insert(*key);
            }
        }
        // Other Services sharing a touched frontend are synced too: one may gain or lose it.
        let mut others: BTreeSet<(Arc<str>, Arc<str>)> = BTreeSet::new();
        for key in &touched {
            let Some(c) = self.claims.get(key) else {
                continue;
            };
            for other in c.iter().skip(1) {
                report.conflicts.push(conflict(key, &c[0], other));
            }
            for n in c {
                if !groups.contains_key(n) {
                    others.insert((n.namespace.clone(), n.name.clone()));
                }
            }
        }
        for (ns, name) in &others {
            groups.extend(groups_of(service_range(&desired.services, ns, name)));
        }

        for (name, group) in &groups {
            if let Err(e) = self.sync_service(group, maps, &mut report) {
                report.errors.push((name.clone(), e));
            }
        }
        let gone = old
            .into_iter()
            .filter(|n| !groups.contains_key(n))
            .collect();
        self.finish_sync(gone, maps, &mut report);
        report
    }

    /// The end of every sync: removes the groups that are `gone`, runs the purges the
    /// sync queued, then deletes the backends no slot names any more (in that order:
    /// flows of a departed backend go before its entry).
    fn finish_sync(
        &mut self,
        gone: Vec<ServicePortName>,
        maps: &mut dyn ServiceMaps,
        report: &mut SyncReport,
    ) {
        for name in gone {
            if let Err(e) = self.remove_service(&name, maps, report) {
                report.errors.push((name, e));
            }
        }
        self.flush_purges(maps, report);
        if let Err(e) = self.collect_backends(maps, report) {
            report
                .errors
                .push((ServicePortName::new("", "", "backends"), e));
        }
    }

    fn backend_id(&mut self, b: &Backend) -> u32 {
        if let Some(id) = self.backends.id_of(addr_of(b)) {
            return id;
        }
        let id = self.backend_id_alloc.alloc();
        self.backends.assign(id, *b);
        id
    }

    fn sync_service(
        &mut self,
        group: &Group,
        maps: &mut dyn ServiceMaps,
        report: &mut SyncReport,
    ) -> Result<(), MapWriteError> {
        let name = &group.name;
        // The group exists (with its id and its claims) before its first write, so a
        // failed write leaves it known: the next sync retries it or removes it.
        let applied = match self.services.get_mut(name) {
            Some(a) => a,
            None => {
                let id = self.service_ids.alloc();
                self.ids_changed = true;
                self.services.entry(name.clone()).or_insert(AppliedService {
                    id,
                    ..Default::default()
                })
            }
        };
        applied.claimed = group.frontends.iter().map(|(k, _)| *k).collect();
        let proto = group.proto.unwrap_or(Protocol::Tcp).number();
        // Slot order: active endpoints, then terminating ones, each sorted, so an
        // unchanged endpoint set always yields the same slots (no churn).
        // Not-ready endpoints sort last and get no slot.
        let mut endpoints = group.endpoints.clone();
        endpoints.sort_by_key(|e| (e.state, e.addr, e.port));
        endpoints.dedup_by_key(|e| (e.addr, e.port));
        let serving = endpoints.iter().filter(|e| e.state.serving()).count();
        let active = endpoints
            .iter()
            .filter(|e| e.state == EndpointState::Active)
            .count();
        let terminating = serving - active;

        let mut slot_ids = Vec::with_capacity(serving);
        let mut idle_ids = Vec::new();
        for e in &endpoints {
            let mut flags = 0;
            // A not-ready backend is flagged like a terminating one: the datapath reads
            // the flag only to balance afresh a SYN that reuses a tuple tracked to it
            // (`service::reopens`), which is right for both (neither takes new flows of
            // its own); which slots exist is what decides selection.
            if e.state != EndpointState::Active {
                flags |= backend_flags::TERMINATING;
            }
            if e.local {
                flags |= backend_flags::LOCAL;
            }
            let b = Backend {
                addr: u32::from(e.addr).to_be(),
                port: e.port.to_be(),
                proto,
                flags,
            };
            let id = self.backend_id(&b);
            // 1. backends before the slots that name them.
            if self.backends.get(id) != Some(&b) {
                maps.put_backend(id, b)?;
                report.writes += 1;
                self.backends.insert(id, b);
                // Collected if no slot ends up naming it (a later write failed).
                self.unreferenced.insert(id);
            }
            if e.state.serving() {
                slot_ids.push(id);
            } else {
                idle_ids.push(id);
            }
        }
        idle_ids.sort_unstable();

        // Frontends this group no longer owns, and whether another group has written
        // them already (then the entry is that group's now, not this one's to delete).
        let stale: Vec<(ServiceKey, bool)> = self.services[name]
            .frontends
            .keys()
            .filter(|k| {
                owner(&self.claims, k) != Some(name)
                    || !group.frontends.iter().any(|(g, _)| g == *k)
            })
            .map(|k| (*k, self.written_by_other(k, name)))
            .collect();

        let Some(applied) = self.services.get_mut(name) else {
            unreachable!("created above");
        };

        let before: BTreeSet<u32> = applied.slots.iter().copied().collect();
        // Idle holds change first: a backend moving from a slot to idle is never without
        // a reference, so it is not collected in between.
        let old_idle = std::mem::replace(&mut applied.idle, idle_ids);
        for id in &applied.idle {
            if old_idle.binary_search(id).is_err() {
                self.backends.add_ref(*id);
            }
        }
        for id in &old_idle {
            if applied.idle.binary_search(id).is_err() {
                self.backends.drop_ref(&mut self.unreferenced, *id);
            }
        }

        // 2. slots 0..n before any count grows.
        for (i, id) in slot_ids.iter().enumerate() {
            if applied.slots.get(i) != Some(id) {
                let key = SlotKey {
                    service_id: applied.id,
                    slot: i as u32,
                };
                maps.put_slot(key, *id)?;
                report.writes += 1;
                self.backends.add_ref(*id);
                if i < applied.slots.len() {
                    let old = std::mem::replace(&mut applied.slots[i], *id);
                    self.backends.drop_ref(&mut self.unreferenced, old);
                } else {
                    applied.slots.push(*id);
                }
            }
        }

        // Source ranges and options before the frontends whose flags make the datapath
        // read them.
        let wants_ranges = group
            .frontends
            .iter()
            .any(|(_, f)| f & service_flags::SOURCE_RANGES != 0);
        let ranges: BTreeSet<_> = if wants_ranges {
            group.source_ranges.clone()
        } else {
            BTreeSet::new()
        };
        for r in ranges.difference(&applied.source_ranges.clone()) {
            maps.put_source_range(applied.id, *r)?;
            report.writes += 1;
            applied.source_ranges.insert(*r);
        }
        // Maglev: the table over the usable backends (active ones, or the terminating
        // ones when none is active), diffed against what the table holds.
        if group.maglev {
            let table_no = match applied.maglev {
                Some((t, _)) => t,
                None => {
                    let t = self.maglev_tables.alloc() - 1;
                    applied.maglev = Some((t, None));
                    t
                }
            };
            let usable: Vec<(std::net::SocketAddrV4, u32)> = endpoints
                .iter()
                .zip(&slot_ids)
                .filter(|(e, _)| {
                    if active > 0 {
                        e.state == EndpointState::Active
                    } else {
                        true
                    }
                })
                .map(|(e, id)| (std::net::SocketAddrV4::new(e.addr, e.port), *id))
                .collect();
            let table = crate::maglev::build(&usable, skiff_datapath_abi::maglev::TABLE_SIZE);
            let old = applied.maglev.as_ref().and_then(|(_, t)| t.as_ref());
            let changes: Vec<(u32, u32)> = table
                .iter()
                .enumerate()
                .filter(|(i, id)| old.is_none_or(|o| o[*i] != **id))
                .map(|(i, id)| (i as u32, *id))
                .collect();
            if !changes.is_empty() {
                maps.put_maglev_entries(table_no, &changes)?;
                report.writes += 1;
            }
            applied.maglev = Some((table_no, Some(table)));
        }
        let maglev_table = applied.maglev.as_ref().map_or(0, |(t, _)| t + 1);
        let options = (group.affinity_timeout.is_some() || group.maglev).then(|| {
            skiff_datapath_abi::ServiceOptions {
                affinity_timeout_s: group.affinity_timeout.unwrap_or(0),
                maglev_table: if group.maglev { maglev_table } else { 0 },
            }
        });
        if let Some(o) = options {
            if applied.options != Some(o) {
                maps.put_service_options(applied.id, o)?;
                report.writes += 1;
                applied.options = Some(o);
            }
        }

        // 3. frontends with their new counts.
        let mut wanted: BTreeMap<ServiceKey, ServiceValue> = BTreeMap::new();
        for (key, flag) in &group.frontends {
            if owner(&self.claims, key) != Some(name) {
                continue;
            }
            let v = wanted.entry(*key).or_insert(ServiceValue {
                service_id: applied.id,
                active: active as u16,
                terminating: terminating as u16,
                flags: 0,
            });
            v.flags |= flag;
        }
        for (key, value) in &wanted {
            if applied.frontends.get(key) != Some(value) {
                maps.put_service(*key, *value)?;
                report.writes += 1;
                applied.frontends.insert(*key, *value);
            }
        }

        // 4. frontends the service no longer has, before the slots they count go. One
        // that another group has rewritten already is left alone (deleting it would
        // remove the new owner's entry); a new owner syncing later overwrites it.
        for (key, taken) in stale {
            debug_assert!(!wanted.contains_key(&key));
            if !taken {
                maps.delete_service(key)?;
                report.writes += 1;
            }
            applied.frontends.remove(&key);
        }

        // 5. slots beyond the new count, now that no frontend counts them.
        while applied.slots.len() > slot_ids.len() {
            let i = applied.slots.len() - 1;
            let key = SlotKey {
                service_id: applied.id,
                slot: i as u32,
            };
            maps.delete_slot(key)?;
            report.writes += 1;
            if let Some(id) = applied.slots.pop() {
                self.backends.drop_ref(&mut self.unreferenced, id);
            }
        }

        // Ranges and options no frontend needs any more.
        for r in applied.source_ranges.clone().difference(&ranges) {
            maps.delete_source_range(applied.id, *r)?;
            report.writes += 1;
            applied.source_ranges.remove(r);
        }
        if options.is_none() && applied.options.is_some() {
            maps.delete_service_options(applied.id)?;
            report.writes += 1;
            applied.options = None;
        }
        if !group.maglev {
            if let Some((t, _)) = applied.maglev.take() {
                self.maglev_tables.release(t + 1);
            }
        }

        // 6. backends that left this service: no socket keeps their reverse translation
        // (the stale-UDP-flow bug class: a resolver pinned to a replaced DNS pod). Those
        // that only went not-ready keep their TCP flows (see the module documentation).
        let after: BTreeSet<u32> = applied.slots.iter().copied().collect();
        // The purges themselves run once per sync, for all groups (`flush_purges`).
        for id in before.difference(&after) {
            let still_listed = applied.idle.binary_search(id).is_ok();
            let udp = self
                .backends
                .get(*id)
                .is_some_and(|b| b.proto == Protocol::Udp.number());
            let flows = !still_listed || udp;
            push_purge(&mut self.purges, &self.backends, applied.id, *id, flows);
        }
        // Idle backends that left the service altogether (they had no slot, so the loop
        // above did not see them): flows they still carry go too.
        for id in &old_idle {
            if applied.idle.binary_search(id).is_ok() || after.contains(id) {
                continue;
            }
            push_purge(&mut self.purges, &self.backends, applied.id, *id, true);
        }
        Ok(())
    }

    /// Runs the purges the sync's groups queued, with one walk of each map
    /// ([`ServiceMaps::purge_backends`]), before `collect_backends` deletes the backends.
    fn flush_purges(&mut self, maps: &mut dyn ServiceMaps, report: &mut SyncReport) {
        let purges = std::mem::take(&mut self.purges);
        match maps.purge_backends(&purges) {
            Ok(purged) => {
                for (b, cookies) in purged.sockets {
                    report.note_stale_sockets(&b, cookies);
                }
                report.purged_conntrack += purged.conntrack;
                report.purged_affinity += purged.affinity;
                report.writes += purges
                    .iter()
                    .map(|p| if p.flows { 3 } else { 1 })
                    .sum::<usize>();
            }
            Err(e) => report
                .errors
                .push((ServicePortName::new("", "", "purges"), e)),
        }
    }

    /// Whether a group other than `name` has written frontend `key` (it owns it now).
    fn written_by_other(&self, key: &ServiceKey, name: &ServicePortName) -> bool {
        owner(&self.claims, key)
            .filter(|o| *o != name)
            .and_then(|o| self.services.get(o))
            .is_some_and(|a| a.frontends.contains_key(key))
    }

    fn remove_service(
        &mut self,
        name: &ServicePortName,
        maps: &mut dyn ServiceMaps,
        report: &mut SyncReport,
    ) -> Result<(), MapWriteError> {
        let Some(applied) = self.services.get(name) else {
            return Ok(());
        };
        let keys: Vec<(ServiceKey, bool)> = applied
            .frontends
            .keys()
            .map(|k| (*k, self.written_by_other(k, name)))
            .collect();
        let Some(applied) = self.services.get_mut(name) else {
            return Ok(());
        };
        for (key, taken) in keys {
            // As in `sync_service`: a frontend another group has rewritten is left to it.
            if !taken {
                maps.delete_service(key)?;
                report.writes += 1;
            }
            applied.frontends.remove(&key);
        }
        while let Some(backend_id) = applied.slots.last().copied() {
            let key = SlotKey {
                service_id: applied.id,
                slot: (applied.slots.len() - 1) as u32,
            };
            maps.delete_slot(key)?;
            report.writes += 1;
            applied.slots.pop();
            let last = !applied.slots.contains(&backend_id);
            self.backends.leave(
                &mut self.purges,
                &mut self.unreferenced,
                (applied.id, backend_id),
                last,
            );
        }
        for backend_id in std::mem::take(&mut applied.idle) {
            self.backends.leave(
                &mut self.purges,
                &mut self.unreferenced,
                (applied.id, backend_id),
                true,
            );
        }
        for r in applied.source_ranges.clone() {
            maps.delete_source_range(applied.id, r)?;
            report.writes += 1;
            applied.source_ranges.remove(&r);
        }
        if applied.options.take().is_some() {
            maps.delete_service_options(applied.id)?;
            report.writes += 1;
        }
        if let Some((t, _)) = applied.maglev.take() {
            self.maglev_tables.release(t + 1);
        }
        let id = applied.id;
        self.services.remove(name);
        self.service_ids.release(id);
        self.ids_changed = true;
        Ok(())
    }

    /// Deletes backends no slot names any more (the candidates in `unreferenced`).
    fn collect_backends(
        &mut self,
        maps: &mut dyn ServiceMaps,
        report: &mut SyncReport,
    ) -> Result<(), MapWriteError> {
        let candidates = std::mem::take(&mut self.unreferenced);
        for &id in &candidates {
            if self.backends.referenced(id) || self.backends.get(id).is_none() {
                continue;
            }
            if let Err(e) = maps.delete_backend(id) {
                // Still candidates: the next sync retries.
                self.unreferenced.extend(candidates.range(id..));
                return Err(e);
            }
            report.writes += 1;
            self.backends.release(id);
            self.backend_id_alloc.release(id);
        }
        Ok(())
    }

    /// Takes over maps written by an earlier agent (pinned maps after a restart) instead of
    /// rewriting them: each desired service port adopts the service id found under any of
    /// its frontends, with its slots and backends as they are; entries no desired service
    /// claims are remembered as orphans, so the next [`Reconciler::sync`] removes them. Ids
    /// in use are never handed out again. Call once, before the first sync.
    pub fn adopt(&mut self, snapshot: &crate::lbmap::Snapshot, desired: &Model) {
        for (id, b) in &snapshot.backends {
            // A second id with an address already seen stays unindexed: no slot is
            // added for it, so it is collected (unless an adopted slot names it).
            self.backends.assign(*id, *b);
            self.backends.insert(*id, *b);
        }
        self.backend_id_alloc = Ids::reserved(snapshot.backends.keys().copied());
        // Backends no adopted slot names are deleted by the first sync.
        self.unreferenced.extend(snapshot.backends.keys().copied());

        let mut by_id: BTreeMap<u32, AppliedService> = BTreeMap::new();
        for (key, value) in &snapshot.services {
            let applied = by_id
                .entry(value.service_id)
                .or_insert_with(|| AppliedService {
                    id: value.service_id,
                    ..Default::default()
                });
            applied.frontends.insert(*key, *value);
        }
        for (id, a, l) in &snapshot.source_ranges {
            if let Some(applied) = by_id.get_mut(id) {
                applied.source_ranges.insert((*a, *l));
            }
        }
        for (id, o) in &snapshot.options {
            if let Some(applied) = by_id.get_mut(id) {
                applied.options = Some(*o);
                if o.maglev_table > 0 {
                    // The table's contents are not read back: the first sync rewrites
                    // it with the same values (no flow moves).
                    applied.maglev = Some((o.maglev_table - 1, None));
                }
            }
        }
        self.maglev_tables = Ids::reserved(
            snapshot
                .options
                .values()
                .filter(|o| o.maglev_table > 0)
                .map(|o| o.maglev_table),
        );
        for applied in by_id.values_mut() {
            let mut slot = 0;
            while let Some(b) = snapshot.slots.get(&SlotKey {
                service_id: applied.id,
                slot,
            }) {
                applied.slots.push(*b);
                self.backends.add_ref(*b);
                slot += 1;
            }
        }
        self.service_ids = Ids::reserved(by_id.keys().copied());

        for (name, group) in groups(desired) {
            let found = group
                .frontends
                .iter()
                .find_map(|(key, _)| snapshot.services.get(key))
                .map(|v| v.service_id);
            if let Some(applied) = found.and_then(|id| by_id.remove(&id)) {
                self.services.insert(name, applied);
            }
        }
        for (id, applied) in by_id {
            self.services
                .insert(ServicePortName::new("", "orphan", &id.to_string()), applied);
        }
        self.ids_changed = true;
    }

    /// Whether the set of programmed groups (and so [`Reconciler::service_ids`]) changed
    /// since the last call.
    pub fn take_ids_changed(&mut self) -> bool {
        std::mem::take(&mut self.ids_changed)
    }

    /// Every programmed group (service port, `<port>#local` for a Local traffic policy)
    /// with its service id, in name order.
    pub fn service_ids(&self) -> Vec<(ServicePortName, u32)> {
        self.services
            .iter()
            .map(|(n, a)| (n.clone(), a.id))
            .collect()
    }

    /// Entries this reconciler holds in each map (what it wrote, so no map walk).
    pub fn usage(&self) -> MapUsage {
        MapUsage {
            services: self.services.values().map(|a| a.frontends.len()).sum(),
            slots: self.services.values().map(|a| a.slots.len()).sum(),
            backends: self.backends.len(),
            maglev_tables: self
                .services
                .values()
                .filter(|a| a.maglev.is_some())
                .count(),
        }
    }

    /// Service id of a service port, if programmed.
    pub fn service_id(&self, name: &ServicePortName) -> Option<u32> {
        self.services.get(name).map(|s| s.id)
    }

    /// The bookkeeping the incremental path relies on, recomputed from scratch: slot
    /// reference counts, no backend left unnamed, claims matching each group's frontends.
    #[cfg(test)]
    fn check_bookkeeping(&self) {
        let mut refs: HashMap<u32, u32> = HashMap::new();
        for a in self.services.values() {
            for id in a.slots.iter().chain(&a.idle) {
                *refs.entry(*id).or_default() += 1;
            }
            for id in &a.idle {
                assert!(!a.slots.contains(id), "idle backend {id} has a slot");
            }
        }
        assert_eq!(refs, self.backends.refs(), "slot and idle reference counts");
        for id in self.backends.ids() {
            assert!(
                refs.contains_key(&id),
                "backend {id} is named by no slot or idle hold"
            );
        }
        let mut claims: BTreeMap<ServiceKey, Vec<ServicePortName>> = BTreeMap::new();
        for (n, a) in &self.services {
            for k in &a.claimed {
                claim(&mut claims, *k, n);
            }
        }
        assert_eq!(claims, self.claims, "frontend claims");
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;
    use crate::{
        lbmap::{FakeServiceMaps, MapSizes},
        model::{Endpoint, FrontendKind, ServicePort},
    };

    fn backend(last: u8, port: u16) -> Backend {
        Backend {
            addr: u32::from(Ipv4Addr::new(10, 42, 0, last)).to_be(),
            port: port.to_be(),
            proto: 6,
            flags: 0,
        }
    }

    #[test]
    fn backend_index_finds_assigned_ids_until_released_and_survives_packing() {
        let mut t = BackendTable::default();
        for id in 1..=200u32 {
            assert!(t.assign(id, backend(id as u8, 8000 + id as u16)));
        }
        // Written or only assigned, an id is found by its address.
        for id in (1..=200u32).step_by(2) {
            t.insert(id, backend(id as u8, 8000 + id as u16));
        }
        assert_eq!(t.len(), 100);
        for id in 1..=200u32 {
            assert_eq!(
                t.id_of(addr_of(&backend(id as u8, 8000 + id as u16))),
                Some(id)
            );
        }
        // Flags are not part of the address: a rewrite with new flags keeps the id.
        let mut flagged = backend(1, 8001);
        flagged.flags = backend_flags::TERMINATING;
        assert!(!t.assign(7, flagged), "an address has one id");
        t.insert(1, flagged);
        assert_eq!(t.get(1), Some(&flagged));
        assert_eq!(t.id_of(addr_of(&flagged)), Some(1));

        // Releasing the upper half and packing leaves the rest findable.
        for id in 101..=200u32 {
            let written = t.release(id);
            assert_eq!(written.is_some(), id % 2 == 1, "id {id}");
        }
        t.pack();
        assert_eq!(t.rows.len(), 101);
        assert_eq!(t.len(), 50);
        for id in 1..=200u32 {
            let want = (id <= 100).then_some(id);
            assert_eq!(t.id_of(addr_of(&backend(id as u8, 8000 + id as u16))), want);
        }
        assert_eq!(t.release(150), None, "a free id releases nothing");
    }

    #[test]
    fn adopted_duplicate_address_stays_unindexed_and_releasing_it_keeps_the_first() {
        let mut t = BackendTable::default();
        let b = backend(9, 80);
        assert!(t.assign(3, b));
        t.insert(3, b);
        // What adopt does with a second id holding the same address.
        assert!(!t.assign(5, b));
        t.insert(5, b);
        assert_eq!(t.len(), 2);
        assert_eq!(t.id_of(addr_of(&b)), Some(3));
        assert_eq!(t.release(5), Some(b));
        assert_eq!(t.id_of(addr_of(&b)), Some(3));
        assert_eq!(t.release(3), Some(b));
        assert_eq!(t.id_of(addr_of(&b)), None);
        assert_eq!(t.len(), 0);
    }

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    fn ep(addr: &str, state: EndpointState) -> Endpoint {
        Endpoint {
            addr: ip(addr),
            port: 8080,
            state,
            local: false,
        }
    }

    fn web(endpoints: &[Endpoint]) -> (ServicePortName, ServicePort) {
        (
            ServicePortName::new("default", "web", "http"),
            ServicePort {
                proto: Some(Protocol::Tcp),
                frontends: vec![
                    Frontend {
                        addr: ip("10.43.0.10"),
                        port: 80,
                        proto: Protocol::Tcp,
                        kind: FrontendKind::ClusterIp,
                    },
                    Frontend {
                        addr: ip("192.168.1.10"),
                        port: 30080,
                        proto: Protocol::Tcp,
                        kind: FrontendKind::NodePort,
                    },
                ],
                endpoints: endpoints.to_vec(),
                ..Default::default()
            },
        )
    }

    fn model(services: &[(ServicePortName, ServicePort)]) -> Model {
        Model {
            services: services.iter().cloned().collect(),
        }
    }

    fn sync(r: &mut Reconciler, maps: &mut FakeServiceMaps, m: &Model) -> SyncReport {
        maps.log.clear();
        let report = r.sync(m, maps);
        assert!(
            maps.violations.is_empty(),
            "datapath invariant broken: {:#?}",
            maps.violations
        );
        r.check_bookkeeping();
        report
    }

    /// An incremental sync of the named Services (namespace, name).
    fn sync_some(
        r: &mut Reconciler,
        maps: &mut FakeServiceMaps,
        m: &Model,
        services: &[(&str, &str)],
    ) -> SyncReport {
        maps.log.clear();
        let changed: BTreeSet<(Arc<str>, Arc<str>)> = services
            .iter()
            .map(|(ns, n)| (Arc::from(*ns), Arc::from(*n)))
            .collect();
        let report = r.sync_services(m, &changed, maps);
        assert!(
            maps.violations.is_empty(),
            "datapath invariant broken: {:#?}",
            maps.violations
        );
        r.check_bookkeeping();
        report
    }

    fn api(endpoints: &[Endpoint]) -> (ServicePortName, ServicePort) {
        (
            ServicePortName::new("default", "api", ""),
            ServicePort {
                proto: Some(Protocol::Tcp),
                frontends: vec![Frontend {
                    addr: ip("10.43.0.20"),
                    port: 443,
                    proto: Protocol::Tcp,
                    kind: FrontendKind::ClusterIp,
                }],
                endpoints: endpoints.to_vec(),
                ..Default::default()
            },
        )
    }

    /// The service's slot contents, by backend address, in slot order.
    fn slot_addrs(maps: &FakeServiceMaps, service_id: u32) -> Vec<Ipv4Addr> {
        let c = &maps.contents;
        (0..)
            .map_while(|slot| c.slots.get(&SlotKey { service_id, slot }))
            .map(|id| Ipv4Addr::from(u32::from_be(c.backends[id].addr)))
            .collect()
    }

    fn backend_id_of(maps: &FakeServiceMaps, addr: &str) -> Option<u32> {
        let be = u32::from(ip(addr)).to_be();
        maps.contents
            .backends
            .iter()
            .find(|(_, b)| b.addr == be)
            .map(|(id, _)| *id)
    }

    fn with_proto(
        mut svc: (ServicePortName, ServicePort),
        proto: Protocol,
    ) -> (ServicePortName, ServicePort) {
        svc.1.proto = Some(proto);
        for f in &mut svc.1.frontends {
            f.proto = proto;
        }
        svc
    }

    #[test]
    fn a_not_ready_endpoint_keeps_its_backend_and_tcp_flows_but_loses_its_slots() {
        let mut r = Reconciler::new();
        let mut maps = FakeServiceMaps::new(MapSizes::default());
        let a = ep("10.42.0.4", EndpointState::Active);
        let b = ep("10.42.0.5", EndpointState::Active);
        sync(&mut r, &mut maps, &model(&[web(&[a, b])]));
        let id = r.service_id(&web(&[]).0).unwrap();
        let a_id = backend_id_of(&maps, "10.42.0.4").unwrap();
        maps.conntrack.insert((id, a_id), 2);
        maps.affinity.insert((id, a_id), 1);

        let a_not_ready = Endpoint {
            state: EndpointState::NotReady,
            ..a
        };
        let report = sync(&mut r, &mut maps, &model(&[web(&[a_not_ready, b])]));
        assert_eq!(slot_addrs(&maps, id), vec![ip("10.42.0.5")]);
        let v = maps.contents.services.values().next().unwrap();
        assert_eq!((v.active, v.terminating), (1, 0), "a is counted nowhere");
        let backend = maps.contents.backends[&a_id];
        assert_ne!(
            backend.flags & backend_flags::TERMINATING,
            0,
            "flagged so a SYN reusing its tuple is balanced afresh"
        );
        assert_eq!(report.purged_conntrack, 0, "TCP flows are kept");
        assert_eq!(maps.conntrack.get(&(id, a_id)), Some(&2));
        assert!(!maps.log.iter().any(|l| l.starts_with("purge ct")));
        assert_eq!(
            report.purged_affinity, 1,
            "no new connection is pinned to a"
        );

        // Ready again: slots back, same backend id, nothing purged.
        let report = sync(&mut r, &mut maps, &model(&[web(&[a, b])]));
        assert_eq!(
            slot_addrs(&maps, id),
            vec![ip("10.42.0.4"), ip("10.42.0.5")]
        );
        assert_eq!(backend_id_of(&maps, "10.42.0.4"), Some(a_id));
        assert_eq!(maps.contents.backends[&a_id].flags, 0);
        assert_eq!(report.purged_conntrack, 0);
        assert!(
            !maps.log.iter().any(|l| l.starts_with("purge")),
            "{:?}",
            maps.log
        );

        // Not ready, then removed from the slice: purged then, and the backend goes.
        sync(&mut r, &mut maps, &model(&[web(&[a_not_ready, b])]));
        let report = sync(&mut r, &mut maps, &model(&[web(&[b])]));
        assert_eq!(report.purged_conntrack, 2);
        assert_eq!(backend_id_of(&maps, "10.42.0.4"), None);

        // A service whose only endpoint is not ready has no usable backend (the datapath
        // refuses new flows), and its removal purges the idle backend's flows.
        sync(&mut r, &mut maps, &model(&[web(&[a_not_ready])]));
        let v = maps.contents.services.values().next().unwrap();
        assert_eq!((v.active, v.terminating), (0, 0));
        let a_id = backend_id_of(&maps, "10.42.0.4").expect("kept as a backend");
        maps.conntrack.insert((id, a_id), 2);
        let report = sync(&mut r, &mut maps, &model(&[]));
        assert_eq!(report.purged_conntrack, 2);
        assert!(maps.contents.backends.is_empty());
    }

    #[test]
    fn a_udp_backend_that_goes_not_ready_has_its_flows_and_sockets_purged() {
        let mut r = Reconciler::new();
        let mut maps = FakeServiceMaps::new(MapSizes::default());
        let a = ep("10.42.0.4", EndpointState::Active);
        let b = ep("10.42.0.5", EndpointState::Active);
        let dns = |eps: &[Endpoint]| with_proto(web(eps), Protocol::Udp);
        sync(&mut r, &mut maps, &model(&[dns(&[a, b])]));
        let id = r.service_id(&web(&[]).0).unwrap();
        let a_id = backend_id_of(&maps, "10.42.0.4").unwrap();
        maps.conntrack.insert((id, a_id), 2);
        let a_backend = maps.contents.backends[&a_id];
        maps.sock_rev.insert((id, a_backend), vec![7]);

        let a_not_ready = Endpoint {
            state: EndpointState::NotReady,
            ..a
        };
        let report = sync(&mut r, &mut maps, &model(&[dns(&[a_not_ready, b])]));
        assert_eq!(report.purged_conntrack, 2);
        assert_eq!(
            report.stale_sockets,
            vec![("10.42.0.4:8080".parse().unwrap(), vec![7])],
            "connected UDP sockets to a are destroyed"
        );
        assert!(
            maps.contents.backends.contains_key(&a_id),
            "still a known backend"
        );
        assert_eq!(slot_addrs(&maps, id), vec![ip("10.42.0.5")]);
    }

    #[test]
    fn not_ready_endpoints_are_left_out_of_the_maglev_table() {
        let mut r = Reconciler::new();
        let mut maps = FakeServiceMaps::new(MapSizes::default());
        let a = ep("10.42.0.4", EndpointState::NotReady);
        let b = ep("10.42.0.5", EndpointState::Active);
        let mut svc = web(&[a, b]);
        svc.1.maglev = true;
        sync(&mut r, &mut maps, &model(&[svc]));
        let a_id = backend_id_of(&maps, "10.42.0.4").unwrap();
        let b_id = backend_id_of(&maps, "10.42.0.5").unwrap();
        let table = maps.maglev.values().next().expect("a table");
        assert!(table.iter().all(|id| *id == b_id), "only b, never {a_id}");
    }

    #[test]
    fn an_incremental_change_to_one_service_does_not_touch_another() {
        let mut r = Reconciler::new();
        let mut maps = FakeServiceMaps::new(MapSizes::default());
        let a = ep("10.42.0.4", EndpointState::Active);
        let b = ep("10.42.0.5", EndpointState::Active);
        let c = ep("10.42.0.6", EndpointState::Active);
        sync(&mut r, &mut maps, &model(&[web(&[a, b]), api(&[b, c])]));
        let api_id = r.service_id(&api(&[]).0).unwrap();
        let api_before: Vec<String> = maps
            .contents
            .render()
            .lines()
            .filter(|l| {
                l.contains(&format!("id={api_id} ")) || l.starts_with(&format!("slot {api_id}["))
            })
            .map(str::to_owned)
            .collect();
        assert_eq!(api_before.len(), 3, "{api_before:?}");

        // web loses b (which api keeps) and gains a new endpoint.
        let d = ep("10.42.0.7", EndpointState::Active);
        let report = sync_some(
            &mut r,
            &mut maps,
            &model(&[web(&[a, d]), api(&[b, c])]),
            &[("default", "web")],
        );
        assert!(report.errors.is_empty(), "{report:?}");
        let web_id = r.service_id(&web(&[]).0).unwrap();
        assert!(
            maps.log.iter().all(|l| !l.contains(&format!(" {api_id}["))
                && !l.contains(&format!("sock-rev {api_id} "))),
            "api's entries were rewritten: {:?}",
            maps.log
        );
        assert_eq!(
            maps.log,
            [
                "put backend 4",
                &format!("put slot {web_id}[1]"),
                &format!("purge sock-rev {web_id} 10.42.0.5:8080"),
                &format!("purge ct {web_id} backend 1"),
                &format!("purge affinity {web_id} backend 1"),
            ]
        );
        let api_after: Vec<String> = maps
            .contents
            .render()
            .lines()
            .filter(|l| {
                l.contains(&format!("id={api_id} ")) || l.starts_with(&format!("slot {api_id}["))
            })
            .map(str::to_owned)
            .collect();
        assert_eq!(api_before, api_after);
        assert!(
            maps.contents
                .backends
                .values()
                .any(|be| be.addr == u32::from(ip("10.42.0.5")).to_be()),
            "b stays: api still uses it"
        );
        // A sync of a Service nothing changed in writes nothing.
        let report = sync_some(
            &mut r,
            &mut maps,
            &model(&[web(&[a, d]), api(&[b, c])]),
            &[("default", "api")],
        );
        assert_eq!(report.writes, 0);
    }

    #[test]
    fn a_backend_removed_incrementally_leaves_the_maps() {
        let mut r = Reconciler::new();
        let mut maps = FakeServiceMaps::new(MapSizes::default());
        let a = ep("10.42.0.4", EndpointState::Active);
        let b = ep("10.42.0.5", EndpointState::Active);
        sync(&mut r, &mut maps, &model(&[web(&[a, b]), api(&[a])]));
        let b_addr = u32::from(ip("10.42.0.5")).to_be();
        let b_id = *maps
            .contents
            .backends
            .iter()
            .find(|(_, be)| be.addr == b_addr)
            .unwrap()
            .0;
        sync_some(
            &mut r,
            &mut maps,
            &model(&[web(&[a]), api(&[a])]),
            &[("default", "web")],
        );
        assert!(
            !maps.contents.backends.contains_key(&b_id),
            "{}",
            maps.contents.render()
        );
        assert!(maps.log.contains(&format!("del backend {b_id}")));
        assert!(maps.contents.dangling().is_empty());
        let v = maps
            .contents
            .services
            .iter()
            .find(|(k, _)| k.port == 80u16.to_be())
            .map(|(_, v)| *v)
            .unwrap();
        assert_eq!(v.active, 1);

        // Removing a whole Service incrementally removes everything it wrote; the backend
        // it shared with api stays.
        sync_some(
            &mut r,
            &mut maps,
            &model(&[api(&[a])]),
            &[("default", "web")],
        );
        assert_eq!(maps.contents.services.len(), 1);
        assert_eq!(maps.contents.backends.len(), 1);
        assert_eq!(maps.contents.slots.len(), 1);
        assert!(maps.contents.dangling().is_empty());
    }

    #[test]
    fn a_frontend_moving_between_services_incrementally_ends_at_its_owner() {
        let mut r = Reconciler::new();
        let mut maps = FakeServiceMaps::new(MapSizes::default());
        let a = ep("10.42.0.4", EndpointState::Active);
        let z = ep("10.42.0.99", EndpointState::Active);
        // "default/zzz" alone holds web's frontends.
        let mut later = web(&[z]);
        later.0 = ServicePortName::new("default", "zzz", "");
        sync(&mut r, &mut maps, &model(&[later.clone()]));
        let zzz_id = r.service_id(&later.0).unwrap();
        // web (sorting first) appears with the same frontends: it takes them over, and
        // zzz's sync must not delete the entries web wrote.
        let report = sync_some(
            &mut r,
            &mut maps,
            &model(&[web(&[a]), later.clone()]),
            &[("default", "web")],
        );
        assert_eq!(report.conflicts.len(), 2, "{report:?}");
        let web_id = r.service_id(&web(&[]).0).unwrap();
        assert_eq!(maps.contents.services.len(), 2);
        assert!(maps
            .contents
            .services
            .values()
            .all(|v| v.service_id == web_id));
        // web goes away: zzz gets them back.
        sync_some(&mut r, &mut maps, &model(&[later]), &[("default", "web")]);
        assert_eq!(maps.contents.services.len(), 2);
        assert!(maps
            .contents
            .services
            .values()
            .all(|v| v.service_id == zzz_id));
        assert!(maps.contents.dangling().is_empty());
    }

    /// A small deterministic generator (xorshift64*) for the differential test.
    struct Rng(u64);

    impl Rng {
        fn below(&mut self, n: u64) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) % n
        }
    }

    /// A random service port of Service `svc{i}`: frontends that sometimes collide with
    /// another Service's, endpoints from a shared pool (so backends are shared), optional
    /// Local policies and Maglev.
    fn random_port(rng: &mut Rng, i: u64) -> (ServicePortName, ServicePort) {
        // Eight cluster IPs for twelve Services: some frontends are claimed twice.
        let vip = Ipv4Addr::new(10, 43, 0, rng.below(8) as u8 + 1);
        let mut frontends = vec![Frontend {
            addr: vip,
            port: 80,
            proto: Protocol::Tcp,
            kind: FrontendKind::ClusterIp,
        }];
        if rng.below(3) == 0 {
            frontends.push(Frontend {
                addr: ip("192.168.1.10"),
                port: 30000 + i as u16,
                proto: Protocol::Tcp,
                kind: FrontendKind::NodePort,
            });
        }
        let endpoints = (0..rng.below(5))
            .map(|_| {
                // Local and state follow from the address, so every Service that shares a
                // backend wants the same backend flags.
                let host = rng.below(16) as u8;
                Endpoint {
                    addr: Ipv4Addr::new(10, 42, 0, host),
                    port: 8080,
                    state: if host.is_multiple_of(5) {
                        EndpointState::Terminating
                    } else {
                        EndpointState::Active
                    },
                    local: host.is_multiple_of(2),
                }
            })
            .collect();
        (
            ServicePortName::new("default", &format!("svc{i}"), ""),
            ServicePort {
                proto: Some(Protocol::Tcp),
                frontends,
                endpoints,
                external_local: rng.below(4) == 0,
                internal_local: rng.below(6) == 0,
                affinity_timeout: (rng.below(5) == 0).then_some(60),
                maglev: rng.below(6) == 0,
                ..Default::default()
            },
        )
    }

    #[test]
    fn incremental_syncs_leave_the_maps_as_full_syncs_do() {
        let mut rng = Rng(0x5eed_1234_abcd_0001);
        let mut desired = Model::default();
        let (mut inc, mut inc_maps) =
            (Reconciler::new(), FakeServiceMaps::new(MapSizes::default()));
        let (mut full, mut full_maps) =
            (Reconciler::new(), FakeServiceMaps::new(MapSizes::default()));
        for step in 0..400 {
            // Change one to three Services: replace, add or remove.
            let mut changed = Vec::new();
            for _ in 0..=rng.below(3) {
                let i = rng.below(12);
                let name = format!("svc{i}");
                desired.services.retain(|n, _| *n.name != *name);
                if rng.below(5) != 0 {
                    let (n, p) = random_port(&mut rng, i);
                    desired.services.insert(n, p);
                }
                changed.push(name);
            }
            let names: Vec<(&str, &str)> =
                changed.iter().map(|n| ("default", n.as_str())).collect();
            let ri = sync_some(&mut inc, &mut inc_maps, &desired, &names);
            let rf = sync(&mut full, &mut full_maps, &desired);
            assert!(ri.errors.is_empty() && rf.errors.is_empty());
            assert_eq!(
                inc_maps.contents.render(),
                full_maps.contents.render(),
                "step {step}: changed {changed:?}"
            );
            assert!(inc_maps.contents.dangling().is_empty(), "step {step}");
        }
        // What the incremental path left is what a full reconcile wants: it writes nothing.
        let report = sync(&mut inc, &mut inc_maps, &desired);
        assert_eq!(report.writes, 0, "{:?}", inc_maps.log);
    }

    #[test]
    fn install_from_empty_writes_backends_then_slots_then_frontends() {
        let mut r = Reconciler::new();
        let mut maps = FakeServiceMaps::new(MapSizes::default());
        let m = model(&[web(&[
            ep("10.42.0.5", EndpointState::Active),
            ep("10.42.0.4", EndpointState::Active),
            ep("10.42.0.9", EndpointState::Terminating),
        ])]);
        let report = sync(&mut r, &mut maps, &m);
        assert!(report.errors.is_empty());
        assert_eq!(
            maps.log,
            [
                "put backend 1",
                "put backend 2",
                "put backend 3",
                "put slot 1[0]",
                "put slot 1[1]",
                "put slot 1[2]",
                "put svc 10.43.0.10:80/TCP",
                "put svc 192.168.1.10:30080/TCP",
            ]
        );
        assert_eq!(
            maps.contents.render(),
            "svc 10.43.0.10:80/TCP scope=0 -> id=1 active=2 terminating=1 flags=0x1\n\
             svc 192.168.1.10:30080/TCP scope=0 -> id=1 active=2 terminating=1 flags=0x2\n\
             slot 1[0] -> backend 1\n\
             slot 1[1] -> backend 2\n\
             slot 1[2] -> backend 3\n\
             backend 1 10.42.0.4:8080/TCP flags=0x0\n\
             backend 2 10.42.0.5:8080/TCP flags=0x0\n\
             backend 3 10.42.0.9:8080/TCP flags=0x1\n"
        );
        // A second sync of the same model writes nothing.
        let report = sync(&mut r, &mut maps, &m);
        assert_eq!(report.writes, 0);
        assert!(maps.log.is_empty());
    }

    #[test]
    fn one_endpoint_change_touches_only_its_service() {
        let mut r = Reconciler::new();
        let mut maps = FakeServiceMaps::new(MapSizes::default());
        let other = (
            ServicePortName::new("kube-system", "dns", "dns"),
            ServicePort {
                proto: Some(Protocol::Udp),
                frontends: vec![Frontend {
                    addr: ip("10.43.0.10"),
                    port: 53,
                    proto: Protocol::Udp,
                    kind: FrontendKind::ClusterIp,
                }],
                endpoints: vec![ep("10.42.1.2", EndpointState::Active)],
                ..Default::default()
            },
        );
        let a = ep("10.42.0.4", EndpointState::Active);
        let b = ep("10.42.0.5", EndpointState::Active);
        let c = ep("10.42.0.6", EndpointState::Active);
        sync(&mut r, &mut maps, &model(&[web(&[a, b]), other.clone()]));
        let web_id = r.service_id(&web(&[]).0).unwrap();

        // Add one endpoint: its backend, its slot, the two frontends' counts.
        let report = sync(&mut r, &mut maps, &model(&[web(&[a, b, c]), other.clone()]));
        assert_eq!(
            maps.log,
            [
                "put backend 4",
                &format!("put slot {web_id}[2]"),
                "put svc 10.43.0.10:80/TCP",
                "put svc 192.168.1.10:30080/TCP",
            ]
        );
        assert_eq!(report.writes, 4);

        // Remove a middle endpoint: slots are compacted, counts shrink, then the tail slot
        // and the unused backend go, and sockets of the removed backend are purged.
        let (b_id, b_backend) = maps
            .contents
            .backends
            .iter()
            .find(|(_, be)| be.addr == u32::from(ip("10.42.0.5")).to_be())
            .map(|(id, be)| (*id, *be))
            .unwrap();
        maps.sock_rev.insert((web_id, b_backend), vec![11, 12]);
        maps.conntrack.insert((web_id, b_id), 4);
        let report = sync(&mut r, &mut maps, &model(&[web(&[a, c]), other]));
        assert_eq!(
            maps.log,
            [
                &format!("put slot {web_id}[1]"),
                "put svc 10.43.0.10:80/TCP",
                "put svc 192.168.1.10:30080/TCP",
                &format!("del slot {web_id}[2]"),
                &format!("purge sock-rev {web_id} 10.42.0.5:8080"),
                &format!("purge ct {web_id} backend {b_id}"),
                &format!("purge affinity {web_id} backend {b_id}"),
                &format!("del backend {b_id}"),
            ]
        );
        assert_eq!(report.purged_sock_rev, 2);
        assert_eq!(
            report.stale_sockets,
            vec![("10.42.0.5:8080".parse().unwrap(), vec![11, 12])]
        );
        assert_eq!(report.purged_conntrack, 4);
    }

    #[test]
    fn terminating_endpoints_sit_after_active_ones() {
        let mut r = Reconciler::new();
        let mut maps = FakeServiceMaps::new(MapSizes::default());
        // All terminating: counts say 0 active, 2 terminating (the datapath falls back).
        sync(
            &mut r,
            &mut maps,
            &model(&[web(&[
                ep("10.42.0.7", EndpointState::Terminating),
                ep("10.42.0.8", EndpointState::Terminating),
            ])]),
        );
        let v = maps.contents.services.values().next().unwrap();
        assert_eq!((v.active, v.terminating), (0, 2));
        // An endpoint turning from active to terminating rewrites its backend flags.
        sync(
            &mut r,
            &mut maps,
            &model(&[web(&[ep("10.42.0.7", EndpointState::Active)])]),
        );
        let v = maps.contents.services.values().next().unwrap();
        assert_eq!((v.active, v.terminating), (1, 0));
        assert_eq!(
            maps.contents.backends.len(),
            1,
            "the unused backend is gone"
        );
    }

    #[test]
    fn no_endpoints_keeps_the_frontend_with_zero_counts() {
        let mut r = Reconciler::new();
        let mut maps = FakeServiceMaps::new(MapSizes::default());
        sync(&mut r, &mut maps, &model(&[web(&[])]));
        assert_eq!(
            maps.contents.services.len(),
            2,
            "frontends exist so the datapath can refuse"
        );
        for v in maps.contents.services.values() {
            assert_eq!((v.active, v.terminating), (0, 0));
        }
    }

    #[test]
    fn removing_a_service_removes_everything_it_wrote() {
        let mut r = Reconciler::new();
        let mut maps = FakeServiceMaps::new(MapSizes::default());
        sync(
            &mut r,
            &mut maps,
            &model(&[web(&[ep("10.42.0.4", EndpointState::Active)])]),
        );
        sync(&mut r, &mut maps, &model(&[]));
        assert_eq!(maps.contents, Default::default());
        // Ids are reused after release.
        sync(
            &mut r,
            &mut maps,
            &model(&[web(&[ep("10.42.0.4", EndpointState::Active)])]),
        );
        assert_eq!(r.service_id(&web(&[]).0), Some(1));
    }

    #[test]
    fn a_full_map_fails_that_service_only_and_names_the_flag() {
        let mut r = Reconciler::new();
        let mut maps = FakeServiceMaps::new(MapSizes {
            services: 3,
            ..MapSizes::default()
        });
        let big = web(&[ep("10.42.0.4", EndpointState::Active)]); // 2 frontends
        let mut small = web(&[ep("10.42.0.5", EndpointState::Active)]);
        small.0 = ServicePortName::new("default", "api", "");
        small.1.frontends = vec![
            Frontend {
                addr: ip("10.43.0.20"),
                port: 443,
                proto: Protocol::Tcp,
                kind: FrontendKind::ClusterIp,
            },
            Frontend {
                addr: ip("10.43.0.21"),
                port: 443,
                proto: Protocol::Tcp,
                kind: FrontendKind::ClusterIp,
            },
        ];
        let report = sync(&mut r, &mut maps, &model(&[big, small]));
        // "default/api" sorts first and takes 2 entries; "default/web" fits one of two.
        assert_eq!(report.errors.len(), 1);
        let (name, err) = &report.errors[0];
        assert_eq!(name.to_string(), "default/web:http");
        assert_eq!(
            err.to_string(),
            "BPF map SKIFF_SVC_V1 is full (3 entries): raise it with `--map-size-services` \
             (skiff-agent) and restart the agent"
        );
        assert_eq!(maps.contents.services.len(), 3);
    }

    #[test]
    fn a_restarted_reconciler_adopts_the_maps_and_rewrites_nothing() {
        let mut maps = FakeServiceMaps::new(MapSizes::default());
        let a = ep("10.42.0.4", EndpointState::Active);
        let b = ep("10.42.0.5", EndpointState::Active);
        let mut gone = web(&[a]);
        gone.0 = ServicePortName::new("default", "gone", "");
        gone.1.frontends.truncate(1);
        gone.1.frontends[0].addr = ip("10.43.0.99");
        let before = model(&[web(&[a, b]), gone]);
        sync(&mut Reconciler::new(), &mut maps, &before);
        let written = maps.contents.clone();

        // A new agent, same desired state minus one service: only that service goes.
        let desired = model(&[web(&[a, b])]);
        let mut r = Reconciler::new();
        r.adopt(&written, &desired);
        let report = sync(&mut r, &mut maps, &desired);
        // "default/gone" sorted first and got id 1; its flows are purged, its backend stays
        // (web still uses it).
        assert_eq!(
            maps.log,
            [
                "del svc 10.43.0.99:80/TCP",
                "del slot 1[0]",
                "purge sock-rev 1 10.42.0.4:8080",
                "purge ct 1 backend 1",
                "purge affinity 1 backend 1"
            ],
            "{report:?}"
        );
        assert_eq!(maps.contents.services.len(), 2);
        // New ids never collide with adopted ones.
        let c = ep("10.42.0.6", EndpointState::Active);
        sync(&mut r, &mut maps, &model(&[web(&[a, b, c])]));
        assert_eq!(maps.contents.backends.len(), 3);
        assert!(maps.contents.dangling().is_empty());
    }

    #[test]
    fn a_restarted_reconciler_keeps_a_not_ready_backend_and_its_tcp_flows() {
        let mut maps = FakeServiceMaps::new(MapSizes::default());
        let a = Endpoint {
            state: EndpointState::NotReady,
            ..ep("10.42.0.4", EndpointState::Active)
        };
        let b = ep("10.42.0.5", EndpointState::Active);
        let desired = model(&[web(&[a, b])]);
        sync(&mut Reconciler::new(), &mut maps, &desired);
        let a_id = backend_id_of(&maps, "10.42.0.4").expect("a not-ready backend is kept");
        let id = maps.contents.services.values().next().unwrap().service_id;
        maps.conntrack.insert((id, a_id), 2);
        let written = maps.contents.clone();

        // A new agent with the same desired state: a has no slot to be adopted through,
        // yet it must stay (its established TCP flows point at it).
        let mut r = Reconciler::new();
        r.adopt(&written, &desired);
        let report = sync(&mut r, &mut maps, &desired);
        assert_eq!(
            backend_id_of(&maps, "10.42.0.4"),
            Some(a_id),
            "{:?}",
            maps.log
        );
        assert_eq!(report.purged_conntrack, 0, "{:?}", maps.log);
        assert_eq!(maps.conntrack.get(&(id, a_id)), Some(&2));
        assert!(maps.contents.dangling().is_empty());
    }

    #[test]
    fn local_traffic_policies_get_their_own_local_only_backend_lists() {
        let mut r = Reconciler::new();
        let mut maps = FakeServiceMaps::new(MapSizes::default());
        let local = Endpoint {
            local: true,
            ..ep("10.42.0.4", EndpointState::Active)
        };
        let remote = ep("10.42.1.4", EndpointState::Active);
        let (name, mut port) = web(&[local, remote]);
        port.external_local = true;
        sync(&mut r, &mut maps, &model(&[(name.clone(), port.clone())]));
        assert_eq!(
            maps.contents.render(),
            "svc 10.43.0.10:80/TCP scope=0 -> id=1 active=2 terminating=0 flags=0x1\n\
             svc 192.168.1.10:30080/TCP scope=0 -> id=1 active=2 terminating=0 flags=0x2\n\
             svc 192.168.1.10:30080/TCP scope=1 -> id=2 active=1 terminating=0 flags=0x12\n\
             slot 1[0] -> backend 1\n\
             slot 1[1] -> backend 2\n\
             slot 2[0] -> backend 1\n\
             backend 1 10.42.0.4:8080/TCP flags=0x2\n\
             backend 2 10.42.1.4:8080/TCP flags=0x0\n",
            "the NodePort keeps a cluster-wide entry for in-cluster clients"
        );
        // internalTrafficPolicy=Local moves the ClusterIP to the local list too; turning
        // both off removes the local list entirely.
        port.internal_local = true;
        sync(&mut r, &mut maps, &model(&[(name.clone(), port.clone())]));
        let cip = maps
            .contents
            .services
            .iter()
            .find(|(k, _)| k.port == 80u16.to_be())
            .map(|(_, v)| *v)
            .unwrap();
        assert_eq!((cip.service_id, cip.active), (2, 1));
        port.external_local = false;
        port.internal_local = false;
        sync(&mut r, &mut maps, &model(&[(name, port)]));
        assert!(maps.contents.services.keys().all(|k| k.scope == 0));
        assert!(maps.contents.slots.keys().all(|k| k.service_id == 1));
    }

    #[test]
    fn a_frontend_claimed_twice_goes_to_the_first_service() {
        let mut r = Reconciler::new();
        let mut maps = FakeServiceMaps::new(MapSizes::default());
        let a = web(&[ep("10.42.0.4", EndpointState::Active)]);
        let mut b = a.clone();
        b.0 = ServicePortName::new("default", "zzz", "");
        b.1.endpoints = vec![ep("10.42.0.99", EndpointState::Active)];
        let report = sync(&mut r, &mut maps, &model(&[a, b]));
        assert_eq!(report.conflicts.len(), 2, "{:?}", report.conflicts);
        assert!(report.conflicts[0].contains("default/web:http keeps it"));
        let owner = r
            .service_id(&ServicePortName::new("default", "web", "http"))
            .unwrap();
        assert!(maps
            .contents
            .services
            .values()
            .all(|v| v.service_id == owner));
    }
}
