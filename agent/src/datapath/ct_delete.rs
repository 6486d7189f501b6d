//! Conditional deletion of conntrack entries that the datapath may be rewriting at the
//! same moment.
//!
//! The conntrack GC and the purge of a departed backend's flows decide from a walk of the
//! map which keys to delete. Between that walk and the delete, a client reusing its port
//! can have the datapath overwrite the key with a new flow's entry (a SYN on a closing
//! flow, or on a flow whose backend is gone, is balanced afresh: `service::reopens`).
//! Deleting that entry cuts the new connection right after its handshake: its next packet
//! finds no entry, is balanced as a new flow, lands on a backend that never saw the SYN,
//! and gets a RST. Rolling updates under load hit this, because the purge walks exactly
//! the flows of the backend that just left, whose tuples the client is about to reuse.
//!
//! A BPF hash map has no compare-and-delete. What it has since Linux 5.14 is
//! `BPF_MAP_LOOKUP_AND_DELETE_ELEM` on hash and LRU hash maps: the delete happens under
//! the bucket lock and returns the value it removed. So a delete here is: re-read (skip
//! an entry that changed), take atomically, and if what was taken is no longer doomed
//! (it changed between the re-read and the take), put it straight back. A flow is then
//! cut only if one of its own packets arrives within the microseconds between the take
//! and the put, on top of the reuse landing between the re-read and the take.
//!
//! aya 0.14 exposes `lookup_and_delete` only for queues and stacks, hence the raw call.

use std::os::fd::{AsRawFd, OwnedFd};

use skiff_datapath_abi::{CtKey, CtValue};

/// `BPF_MAP_LOOKUP_AND_DELETE_ELEM` from `include/uapi/linux/bpf.h`.
const BPF_MAP_LOOKUP_AND_DELETE_ELEM: libc::c_long = 21;

/// The map-element member of `union bpf_attr` (`map_fd`, `key`, `value`, `flags`); the
/// kernel zero-fills the rest of the union when the size passed is smaller.
#[repr(C)]
struct MapElemAttr {
    map_fd: u32,
    _pad: u32,
    key: u64,
    value: u64,
    flags: u64,
}

/// Atomically removes `key` from the conntrack map behind `fd`, returning the value that
/// was removed, or `None` when the key was absent.
pub(super) fn take(fd: &OwnedFd, key: &CtKey) -> std::io::Result<Option<CtValue>> {
    let mut value = CtValue::default();
    let attr = MapElemAttr {
        map_fd: fd.as_raw_fd() as u32,
        _pad: 0,
        key: key as *const CtKey as u64,
        value: &mut value as *mut CtValue as u64,
        flags: 0,
    };
    // SAFETY: `attr` points at a live key and a value buffer of the map's value size
    // (CtValue is the map's value type, checked when the map was taken from the object),
    // and the size passed is that of the struct.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_MAP_LOOKUP_AND_DELETE_ELEM,
            &attr as *const MapElemAttr,
            std::mem::size_of::<MapElemAttr>() as libc::c_uint,
        )
    };
    if rc == 0 {
        return Ok(Some(value));
    }
    let e = std::io::Error::last_os_error();
    if e.raw_os_error() == Some(libc::ENOENT) {
        Ok(None)
    } else {
        Err(e)
    }
}
