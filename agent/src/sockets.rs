//! Destroying UDP sockets that socket-LB connected to a backend which has left its service
//! (sock_diag SOCK_DESTROY, Linux >= 4.5 with CONFIG_INET_DIAG_DESTROY and
//! CONFIG_INET_UDP_DIAG). A connected UDP socket keeps its translated destination for its
//! whole life; without this a resolver that connect()ed to a DNS ClusterIP would keep
//! talking to a deleted DNS pod (Cilium #12859). The application sees ECONNABORTED on its
//! next call and reconnects through the service.
//!
//! Written by hand over `libc`: the request is two fixed structs, and no sock_diag crate
//! here supports SOCK_DESTROY.

use std::{collections::HashSet, io, mem::size_of, net::SocketAddrV4};

const NETLINK_SOCK_DIAG: i32 = 4;
const SOCK_DIAG_BY_FAMILY: u16 = 20;
const SOCK_DESTROY: u16 = 21;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct NlMsgHdr {
    len: u32,
    kind: u16,
    flags: u16,
    seq: u32,
    pid: u32,
}

/// `struct inet_diag_sockid`: ports and addresses in network byte order.
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct SockId {
    sport: u16,
    dport: u16,
    src: [u32; 4],
    dst: [u32; 4],
    ifindex: u32,
    cookie: [u32; 2],
}

/// `struct inet_diag_req_v2`.
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct DiagReq {
    family: u8,
    protocol: u8,
    ext: u8,
    pad: u8,
    states: u32,
    id: SockId,
}

/// The head of `struct inet_diag_msg`.
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct DiagMsg {
    family: u8,
    state: u8,
    timer: u8,
    retrans: u8,
    id: SockId,
}

const _: () = assert!(size_of::<NlMsgHdr>() == 16);
const _: () = assert!(size_of::<SockId>() == 48);
const _: () = assert!(size_of::<DiagReq>() == 56);

struct Netlink(i32);

impl Drop for Netlink {
    fn drop(&mut self) {
        // SAFETY: closing the fd this value owns.
        unsafe { libc::close(self.0) };
    }
}

fn as_bytes<T: Copy>(v: &T) -> &[u8] {
    // SAFETY: T is a plain #[repr(C)] struct of integers without padding.
    unsafe { std::slice::from_raw_parts((v as *const T).cast(), size_of::<T>()) }
}

impl Netlink {
    fn open() -> io::Result<Netlink> {
        // SAFETY: plain socket(2).
        let fd = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
                NETLINK_SOCK_DIAG,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Netlink(fd))
    }

    fn send(&self, kind: u16, flags: u16, seq: u32, req: &DiagReq) -> io::Result<()> {
        let hdr = NlMsgHdr {
            len: (size_of::<NlMsgHdr>() + size_of::<DiagReq>()) as u32,
            kind,
            flags,
            seq,
            pid: 0,
        };
        let mut buf = Vec::with_capacity(hdr.len as usize);
        buf.extend_from_slice(as_bytes(&hdr));
        buf.extend_from_slice(as_bytes(req));
        // SAFETY: a zeroed sockaddr_nl addresses the kernel; buf is valid for its length.
        let rc = unsafe {
            let mut addr: libc::sockaddr_nl = std::mem::zeroed();
            addr.nl_family = libc::AF_NETLINK as u16;
            libc::sendto(
                self.0,
                buf.as_ptr().cast(),
                buf.len(),
                0,
                (&addr as *const libc::sockaddr_nl).cast(),
                size_of::<libc::sockaddr_nl>() as u32,
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Reads messages until DONE (dumps) or one ERROR/ack; calls `each` per payload.
    fn receive(&self, mut each: impl FnMut(u16, &[u8])) -> io::Result<()> {
        let mut buf = vec![0u8; 1 << 16];
        loop {
            // SAFETY: recv into our buffer.
            let n = unsafe { libc::recv(self.0, buf.as_mut_ptr().cast(), buf.len(), 0) };
            if n < 0 {
                return Err(io::Error::last_os_error());
            }
            let mut off = 0usize;
            let n = n as usize;
            while off + size_of::<NlMsgHdr>() <= n {
                // SAFETY: bounds checked above; read_unaligned copes with any offset.
                let hdr: NlMsgHdr = unsafe { std::ptr::read_unaligned(buf[off..].as_ptr().cast()) };
                let len = hdr.len as usize;
                if len < size_of::<NlMsgHdr>() || off + len > n {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "truncated netlink message",
                    ));
                }
                let payload = &buf[off + size_of::<NlMsgHdr>()..off + len];
                match hdr.kind {
                    NLMSG_DONE => return Ok(()),
                    NLMSG_ERROR => {
                        let errno =
                            i32::from_ne_bytes([payload[0], payload[1], payload[2], payload[3]]);
                        return if errno == 0 {
                            Ok(())
                        } else {
                            Err(io::Error::from_raw_os_error(-errno))
                        };
                    }
                    kind => each(kind, payload),
                }
                off += (len + 3) & !3;
            }
        }
    }
}

/// Destroys the UDP sockets of the calling thread's network namespace that are connected
/// to `backend` and whose socket cookie is in `cookies` (the sockets socket-LB translated;
/// sockets that connected to the backend's address directly are left alone). Returns how
/// many were destroyed.
pub fn destroy_udp(backend: SocketAddrV4, cookies: &HashSet<u64>) -> io::Result<usize> {
    let nl = Netlink::open()?;
    let dump = DiagReq {
        family: libc::AF_INET as u8,
        protocol: libc::IPPROTO_UDP as u8,
        states: u32::MAX,
        ..Default::default()
    };
    let flags = (libc::NLM_F_REQUEST | libc::NLM_F_DUMP) as u16;
    nl.send(SOCK_DIAG_BY_FAMILY, flags, 1, &dump)?;
    let want_addr = u32::from(*backend.ip()).to_be();
    let want_port = backend.port().to_be();
    let mut victims = Vec::new();
    nl.receive(|kind, payload| {
        if kind != SOCK_DIAG_BY_FAMILY || payload.len() < size_of::<DiagMsg>() {
            return;
        }
        // SAFETY: length checked; read_unaligned for an arbitrary offset.
        let msg: DiagMsg = unsafe { std::ptr::read_unaligned(payload.as_ptr().cast()) };
        let cookie = u64::from(msg.id.cookie[0]) | (u64::from(msg.id.cookie[1]) << 32);
        if msg.id.dst[0] == want_addr && msg.id.dport == want_port && cookies.contains(&cookie) {
            victims.push(msg.id);
        }
    })?;
    let mut destroyed = 0;
    for (i, id) in victims.iter().enumerate() {
        let req = DiagReq { id: *id, ..dump };
        nl.send(
            SOCK_DESTROY,
            (libc::NLM_F_REQUEST | libc::NLM_F_ACK) as u16,
            2 + i as u32,
            &req,
        )?;
        match nl.receive(|_, _| {}) {
            Ok(()) => destroyed += 1,
            // Closed by its owner in the meantime.
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(destroyed)
}
