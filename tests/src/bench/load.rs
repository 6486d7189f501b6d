//! Load generators with latency recording: TCP connect-request-response-close (no
//! keep-alive), request/response on one connection, and bulk transfer. Bounded by time;
//! they only ever talk to addresses inside the benchmark's namespaces.

use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpListener, TcpStream},
    time::{Duration, Instant},
};

/// Latency percentiles and rate of one run.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct Run {
    pub ops: u64,
    pub errors: u64,
    pub per_sec: f64,
    pub p50_us: f64,
    pub p99_us: f64,
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i].as_secs_f64() * 1e6
}

fn summarize(mut lat: Vec<Duration>, errors: u64, elapsed: Duration) -> Run {
    lat.sort();
    Run {
        ops: lat.len() as u64,
        errors,
        per_sec: lat.len() as f64 / elapsed.as_secs_f64(),
        p50_us: percentile(&lat, 0.5),
        p99_us: percentile(&lat, 0.99),
    }
}

/// A server answering each connection's 1-byte requests with 1 byte until it closes, and
/// sinking bulk data. One thread per connection.
pub fn serve(listener: TcpListener) {
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            std::thread::spawn(move || {
                let mut conn = conn;
                let _ = conn.set_nodelay(true);
                let mut buf = [0u8; 65536];
                loop {
                    match conn.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        // One byte is a request; more is bulk data, which is only counted
                        // by the client's write rate.
                        Ok(1) => {
                            if conn.write_all(&buf[..1]).is_err() {
                                break;
                            }
                        }
                        Ok(_) => {}
                    }
                }
            });
        }
    });
}

fn set_linger_zero(s: &TcpStream) {
    use std::os::fd::AsRawFd as _;
    let l = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: setsockopt with a valid fd and a correctly sized linger struct.
    unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&l as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as u32,
        );
    }
}

/// New connection per request for `duration`: connect, 1-byte request, 1-byte reply,
/// close. Latency is connect() through reply.
pub fn crr(to: SocketAddr, duration: Duration) -> Run {
    let mut lat = Vec::new();
    let mut errors = 0;
    let start = Instant::now();
    while start.elapsed() < duration {
        let t = Instant::now();
        let ok = (|| -> std::io::Result<()> {
            let mut s = TcpStream::connect_timeout(&to, Duration::from_secs(1))?;
            s.set_nodelay(true)?;
            s.set_read_timeout(Some(Duration::from_secs(1)))?;
            s.write_all(b"x")?;
            let mut b = [0u8; 1];
            s.read_exact(&mut b)?;
            // RST on close (SO_LINGER 0): no TIME_WAIT on the client, so a long run never
            // runs out of ephemeral ports.
            set_linger_zero(&s);
            Ok(())
        })();
        match ok {
            Ok(()) => lat.push(t.elapsed()),
            Err(_) => errors += 1,
        }
    }
    summarize(lat, errors, start.elapsed())
}

/// Request/response on one established connection for `duration`.
pub fn rr(to: SocketAddr, duration: Duration) -> Run {
    let mut lat = Vec::new();
    let mut errors = 0;
    let start = Instant::now();
    let Ok(mut s) = TcpStream::connect_timeout(&to, Duration::from_secs(1)) else {
        return Run {
            errors: 1,
            ..Default::default()
        };
    };
    let _ = s.set_nodelay(true);
    let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
    let mut b = [0u8; 1];
    while start.elapsed() < duration {
        let t = Instant::now();
        if s.write_all(b"x").and_then(|_| s.read_exact(&mut b)).is_ok() {
            lat.push(t.elapsed());
        } else {
            errors += 1;
            break;
        }
    }
    summarize(lat, errors, start.elapsed())
}

/// Bulk send for `duration`; returns Gbit/s.
pub fn bulk(to: SocketAddr, duration: Duration) -> f64 {
    let Ok(mut s) = TcpStream::connect_timeout(&to, Duration::from_secs(1)) else {
        return 0.0;
    };
    let chunk = vec![0x5au8; 1 << 20];
    let start = Instant::now();
    let mut sent = 0u64;
    while start.elapsed() < duration {
        if s.write_all(&chunk).is_err() {
            break;
        }
        sent += chunk.len() as u64;
    }
    sent as f64 * 8.0 / start.elapsed().as_secs_f64() / 1e9
}
