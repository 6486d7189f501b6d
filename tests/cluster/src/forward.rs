//! The host's way to the API server: a TCP forwarder on the host's loopback whose
//! upstream sockets are opened inside the simulated network's namespace. The root
//! namespace so gets no link, address or route of the simulated network at all.

use std::{
    io,
    net::{Shutdown, SocketAddr, TcpListener, TcpStream},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    thread::JoinHandle,
    time::Duration,
};

use anyhow::Context as _;

use crate::sys;

pub struct Forwarder {
    local: SocketAddr,
    stop: Arc<AtomicBool>,
    conns: Arc<Mutex<Conns>>,
    accept: Option<JoinHandle<()>>,
}

impl Forwarder {
    /// Listens on `listen` (port 0: any free port) in this namespace and forwards each
    /// connection to `upstream` as seen from network namespace `ns`.
    pub fn start(listen: SocketAddr, ns: &str, upstream: SocketAddr) -> anyhow::Result<Forwarder> {
        let listener = TcpListener::bind(listen).with_context(|| {
            format!("listening on {listen} for the API server (is the port taken? choose another)")
        })?;
        let local = listener.local_addr()?;
        let stop = Arc::new(AtomicBool::new(false));
        let conns: Arc<Mutex<Conns>> = Arc::default();
        let ns = ns.to_owned();
        let accept = {
            let stop = stop.clone();
            let conns = conns.clone();
            std::thread::Builder::new()
                .name("skiff-cluster-forward".into())
                .spawn(move || {
                    for client in listener.incoming() {
                        if stop.load(Ordering::SeqCst) {
                            break;
                        }
                        let Ok(client) = client else { continue };
                        let ns = ns.clone();
                        let conns = conns.clone();
                        std::thread::spawn(move || {
                            let upstream = sys::in_netns(&ns, || {
                                TcpStream::connect_timeout(&upstream, Duration::from_secs(5))
                            });
                            let Ok(Ok(upstream)) = upstream else { return };
                            let _ = pipe(client, upstream, &conns);
                        });
                    }
                })?
        };
        Ok(Forwarder {
            local,
            stop,
            conns,
            accept: Some(accept),
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }
}

/// Open connections (both sockets), so drop can shut them down.
#[derive(Default)]
struct Conns {
    next: u64,
    open: std::collections::HashMap<u64, [TcpStream; 2]>,
}

fn pipe(client: TcpStream, upstream: TcpStream, conns: &Mutex<Conns>) -> io::Result<()> {
    client.set_nodelay(true)?;
    upstream.set_nodelay(true)?;
    let id = {
        let mut c = conns.lock().unwrap_or_else(|e| e.into_inner());
        c.next += 1;
        let id = c.next;
        c.open
            .insert(id, [client.try_clone()?, upstream.try_clone()?]);
        id
    };
    let r = copy_both(client, upstream);
    conns
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .open
        .remove(&id);
    r
}

fn copy_both(client: TcpStream, upstream: TcpStream) -> io::Result<()> {
    let (mut c_read, mut u_write) = (client.try_clone()?, upstream.try_clone()?);
    let up = std::thread::spawn(move || {
        let _ = io::copy(&mut c_read, &mut u_write);
        let _ = u_write.shutdown(Shutdown::Write);
    });
    let (mut u_read, mut c_write) = (upstream, client);
    let _ = io::copy(&mut u_read, &mut c_write);
    let _ = c_write.shutdown(Shutdown::Write);
    let _ = up.join();
    Ok(())
}

impl Drop for Forwarder {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop so it sees the flag and closes the listener.
        let _ = TcpStream::connect_timeout(&self.local, Duration::from_secs(1));
        if let Some(t) = self.accept.take() {
            let _ = t.join();
        }
        let mut conns = self.conns.lock().unwrap_or_else(|e| e.into_inner());
        for [a, b] in conns.open.values() {
            let _ = a.shutdown(Shutdown::Both);
            let _ = b.shutdown(Shutdown::Both);
        }
        conns.open.clear();
    }
}
