//! [`ServiceMaps`] over the live BPF maps.

use aya::maps::{HashMap, MapData, MapError};
use skiff_datapath_abi::{
    map_names, Backend, ServiceKey, ServiceValue, SlotKey, SockRevKey, SockRevValue,
};

use crate::lbmap::{MapSizes, MapWriteError, ServiceMaps, Snapshot};

/// The service maps, taken out of the loaded object so they can be written together.
pub struct BpfServiceMaps {
    pub(super) sizes: MapSizes,
    pub(super) services: HashMap<MapData, ServiceKey, ServiceValue>,
    pub(super) slots: HashMap<MapData, SlotKey, u32>,
    pub(super) backends: HashMap<MapData, u32, Backend>,
    pub(super) sock_rev: HashMap<MapData, SockRevKey, SockRevValue>,
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
    ) -> Result<usize, MapWriteError> {
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
        Ok(s)
    }
}

impl BpfServiceMaps {
    /// Number of live socket reverse-translation entries.
    pub fn sock_rev_len(&self) -> usize {
        self.sock_rev.keys().filter(|k| k.is_ok()).count()
    }
}
