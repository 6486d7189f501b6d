//! A line-driven client for socket-LB tests. The harness starts it inside a test network
//! namespace and cgroup (so skiff's cgroup hooks see its sockets) and sends commands on
//! stdin; it answers one line per command on stdout:
//!
//! - `tcp ADDR:PORT`  connect, read one line, report `ok peer=<getpeername> reply=<line>`
//! - `udp ADDR:PORT`  sendto on one long-lived unconnected socket, recvfrom, report
//!   `ok from=<source> reply=<payload>`
//! - `udpc ADDR:PORT` a fresh connected UDP socket: send, recv, report
//!   `ok peer=<getpeername> reply=<payload>`
//!
//! - `udpk-open ADDR:PORT` open (or replace) one long-lived connected UDP socket
//! - `udpk ADDR:PORT` send and receive on it: `ok peer=<getpeername> reply=<payload>`
//!
//! - `bind-tcp ADDR:PORT` / `bind-udp ADDR:PORT` bind a socket there (and close it): `ok`
//!
//! Failures answer `err <io error kind> <raw os error> <elapsed ms>`.

use std::{
    io::{BufRead as _, BufReader, Write as _},
    net::{SocketAddr, TcpStream, UdpSocket},
    time::{Duration, Instant},
};

const TIMEOUT: Duration = Duration::from_secs(2);

fn err(e: std::io::Error, start: Instant) -> String {
    format!(
        "err {:?} {} {}",
        e.kind(),
        e.raw_os_error().unwrap_or(0),
        start.elapsed().as_millis()
    )
}

fn tcp(target: SocketAddr) -> String {
    let start = Instant::now();
    let stream = match TcpStream::connect_timeout(&target, TIMEOUT) {
        Ok(s) => s,
        Err(e) => return err(e, start),
    };
    let _ = stream.set_read_timeout(Some(TIMEOUT));
    let peer = match stream.peer_addr() {
        Ok(p) => p,
        Err(e) => return err(e, start),
    };
    let mut line = String::new();
    match BufReader::new(&stream).read_line(&mut line) {
        Ok(_) => format!("ok peer={peer} reply={}", line.trim()),
        Err(e) => err(e, start),
    }
}

fn udp(sock: &UdpSocket, target: SocketAddr) -> String {
    let start = Instant::now();
    if let Err(e) = sock.send_to(b"hello", target) {
        return err(e, start);
    }
    let mut buf = [0u8; 256];
    match sock.recv_from(&mut buf) {
        Ok((n, from)) => format!(
            "ok from={from} reply={}",
            String::from_utf8_lossy(&buf[..n])
        ),
        Err(e) => err(e, start),
    }
}

fn udp_connected(target: SocketAddr) -> String {
    let start = Instant::now();
    let run = || -> std::io::Result<String> {
        let sock = UdpSocket::bind("0.0.0.0:0")?;
        sock.set_read_timeout(Some(TIMEOUT))?;
        sock.connect(target)?;
        sock.send(b"hello")?;
        let mut buf = [0u8; 256];
        let n = sock.recv(&mut buf)?;
        Ok(format!(
            "ok peer={} reply={}",
            sock.peer_addr()?,
            String::from_utf8_lossy(&buf[..n])
        ))
    };
    run().unwrap_or_else(|e| err(e, start))
}

fn udp_keep(sock: Option<&UdpSocket>) -> String {
    let start = Instant::now();
    let Some(sock) = sock else {
        return "err NotConnected 0 0 no udpk-open yet".into();
    };
    let run = || -> std::io::Result<String> {
        sock.send(b"hello")?;
        let mut buf = [0u8; 256];
        let n = sock.recv(&mut buf)?;
        Ok(format!(
            "ok peer={} reply={}",
            sock.peer_addr()?,
            String::from_utf8_lossy(&buf[..n])
        ))
    };
    run().unwrap_or_else(|e| err(e, start))
}

fn main() {
    let mut kept: Option<UdpSocket> = None;
    let udp_sock = UdpSocket::bind("0.0.0.0:0").expect("binding the UDP socket");
    udp_sock.set_read_timeout(Some(TIMEOUT)).expect("timeout");
    let stdin = std::io::stdin();
    let mut stdout = std::io::stdout();
    for line in stdin.lock().lines() {
        let line = line.expect("reading stdin");
        let mut words = line.split_whitespace();
        let (Some(cmd), Some(target)) = (words.next(), words.next()) else {
            continue;
        };
        let target: SocketAddr = match target.parse() {
            Ok(t) => t,
            Err(e) => {
                writeln!(stdout, "err BadAddress 0 0 {e}").unwrap();
                continue;
            }
        };
        let answer = match cmd {
            "tcp" => tcp(target),
            "udp" => udp(&udp_sock, target),
            "udpc" => udp_connected(target),
            "udpk-open" => {
                let start = Instant::now();
                let open = || -> std::io::Result<UdpSocket> {
                    let sock = UdpSocket::bind("0.0.0.0:0")?;
                    sock.set_read_timeout(Some(TIMEOUT))?;
                    sock.connect(target)?;
                    Ok(sock)
                };
                match open() {
                    Ok(sock) => {
                        kept = Some(sock);
                        "ok".into()
                    }
                    Err(e) => err(e, start),
                }
            }
            "udpk" => udp_keep(kept.as_ref()),
            "bind-tcp" => {
                let start = Instant::now();
                match std::net::TcpListener::bind(target) {
                    Ok(_) => "ok".into(),
                    Err(e) => err(e, start),
                }
            }
            "bind-udp" => {
                let start = Instant::now();
                match UdpSocket::bind(target) {
                    Ok(_) => "ok".into(),
                    Err(e) => err(e, start),
                }
            }
            other => format!("err UnknownCommand 0 0 {other}"),
        };
        writeln!(stdout, "{answer}").unwrap();
        stdout.flush().unwrap();
    }
}
