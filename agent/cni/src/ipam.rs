//! Built-in IPAM that allocates the way the reference `host-local` plugin does and keeps
//! the same files, so a node can switch between the two without losing reservations:
//!
//! - `dataDir/<network>/<ip>`: one file per allocated address, created with O_EXCL,
//!   containing `"<containerID>\r\n<ifname>"`;
//! - `dataDir/<network>/last_reserved_ip.<n>`: the round-robin cursor of range set `n`;
//! - `dataDir/<network>/lock`: an empty file; every allocator (ours and host-local) holds
//!   an exclusive flock on it while it reads or changes the directory.
//!
//! Allocation is host-local's "loosely round-robin": start after the cursor if the cursor
//! lies in the range set (else at the first range's start), walk the ranges in order with
//! wrap-around, skip each range's gateway, take the first address without a file.
//! IPv4 only.

use std::{
    fs::{self, File, OpenOptions},
    io::{self, Write},
    net::Ipv4Addr,
    path::{Path, PathBuf},
};

use nix::fcntl::{Flock, FlockArg};

/// One `ranges[i][j]` entry after defaults were applied (host-local's Canonicalize).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Range {
    /// Network address (host bits cleared).
    pub network: Ipv4Addr,
    pub prefix: u8,
    pub start: Ipv4Addr,
    pub end: Ipv4Addr,
    pub gateway: Ipv4Addr,
}

impl Range {
    /// Applies host-local's defaults: rangeStart = network+1, rangeEnd = broadcast-1,
    /// gateway = network+1; the gateway itself is never handed out.
    pub fn new(
        subnet: &str,
        start: Option<&str>,
        end: Option<&str>,
        gateway: Option<&str>,
    ) -> Result<Range, String> {
        let (addr, prefix) = parse_cidr(subnet)?;
        if prefix > 30 {
            return Err(format!(
                "subnet {subnet} is too small to allocate from (need /30 or larger)"
            ));
        }
        let mask = prefix_mask(prefix);
        let net = u32::from(addr) & mask;
        let bcast = net | !mask;
        let contains = |ip: u32| ip & mask == net;
        let parse_in = |what: &str, v: Option<&str>, default: u32| -> Result<u32, String> {
            match v {
                None => Ok(default),
                Some(s) => {
                    let ip: Ipv4Addr = s
                        .parse()
                        .map_err(|_| format!("{what} {s:?} is not an IPv4 address"))?;
                    let ip = u32::from(ip);
                    if !contains(ip) {
                        return Err(format!("{what} {s} is outside subnet {subnet}"));
                    }
                    Ok(ip)
                }
            }
        };
        let s = parse_in("rangeStart", start, net + 1)?;
        let e = parse_in("rangeEnd", end, bcast - 1)?;
        let g = parse_in("gateway", gateway, net + 1)?;
        if s > e {
            return Err(format!(
                "rangeStart {} is after rangeEnd {}",
                Ipv4Addr::from(s),
                Ipv4Addr::from(e)
            ));
        }
        if s == net || e == bcast {
            return Err(format!(
                "range {}-{} includes the network or broadcast address of {subnet}",
                Ipv4Addr::from(s),
                Ipv4Addr::from(e)
            ));
        }
        Ok(Range {
            network: Ipv4Addr::from(net),
            prefix,
            start: Ipv4Addr::from(s),
            end: Ipv4Addr::from(e),
            gateway: Ipv4Addr::from(g),
        })
    }

    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        let (ip, s, e) = (u32::from(ip), u32::from(self.start), u32::from(self.end));
        s <= ip && ip <= e
    }

    fn overlaps(&self, other: &Range) -> bool {
        u32::from(self.start) <= u32::from(other.end)
            && u32::from(other.start) <= u32::from(self.end)
    }
}

pub fn prefix_mask(prefix: u8) -> u32 {
    if prefix == 0 {
        0
    } else {
        u32::MAX << (32 - u32::from(prefix))
    }
}

/// Parses `a.b.c.d/n` (IPv4 only).
pub fn parse_cidr(s: &str) -> Result<(Ipv4Addr, u8), String> {
    let (a, p) = s
        .split_once('/')
        .ok_or_else(|| format!("{s:?} is not in CIDR form (a.b.c.d/n)"))?;
    let addr: Ipv4Addr = a.parse().map_err(|_| {
        format!("{s:?}: {a:?} is not an IPv4 address (skiff-cni allocates IPv4 only)")
    })?;
    let prefix: u8 = p
        .parse()
        .ok()
        .filter(|p| *p <= 32)
        .ok_or_else(|| format!("{s:?}: prefix length {p:?} is not 0..=32"))?;
    Ok((addr, prefix))
}

/// Checks that the ranges of one set do not overlap (host-local rejects that too).
pub fn check_set(set: &[Range]) -> Result<(), String> {
    for (i, a) in set.iter().enumerate() {
        for b in &set[i + 1..] {
            if a.overlaps(b) {
                return Err(format!(
                    "ranges {}-{} and {}-{} overlap",
                    a.start, a.end, b.start, b.end
                ));
            }
        }
    }
    Ok(())
}

/// What an allocation produced: the address, the range it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Allocation {
    pub ip: Ipv4Addr,
    pub range: Range,
}

#[derive(Debug, thiserror::Error)]
pub enum IpamError {
    #[error("no free IP addresses in range set {set} ({ranges}) of network {network}")]
    Exhausted {
        network: String,
        set: usize,
        ranges: String,
    },
    #[error("container {id} interface {ifname} already holds {ip} in network {network}: duplicate ADD without DEL")]
    Duplicate {
        network: String,
        id: String,
        ifname: String,
        ip: Ipv4Addr,
    },
    #[error("IPAM store {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> IpamError + '_ {
    move |source| IpamError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The per-network directory, locked for as long as this value lives.
pub struct Store {
    dir: PathBuf,
    network: String,
    _lock: Flock<File>,
}

/// Line break between container ID and ifname in a reservation file (host-local's
/// `LineBreak`).
const LINE_BREAK: &str = "\r\n";
const LAST_RESERVED: &str = "last_reserved_ip.";

impl Store {
    /// Opens (creating if needed) `data_dir/network` and takes the exclusive lock.
    pub fn lock(data_dir: &Path, network: &str) -> Result<Store, IpamError> {
        let dir = data_dir.join(network);
        fs::create_dir_all(&dir).map_err(io_err(&dir))?;
        let lock_path = dir.join("lock");
        // Mode 0750 is what host-local gives its lock file; matched so the directories
        // look the same whichever plugin made them.
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode_bits(0o750)
            .open(&lock_path)
            .map_err(io_err(&lock_path))?;
        let lock = Flock::lock(file, FlockArg::LockExclusive)
            .map_err(|(_, e)| io_err(&lock_path)(e.into()))?;
        Ok(Store {
            dir,
            network: network.to_string(),
            _lock: lock,
        })
    }

    /// Reservations as (ip, containerID, ifname).
    pub fn reservations(&self) -> Result<Vec<(Ipv4Addr, String, String)>, IpamError> {
        let mut out = Vec::new();
        for entry in fs::read_dir(&self.dir).map_err(io_err(&self.dir))? {
            let entry = entry.map_err(io_err(&self.dir))?;
            let name = entry.file_name();
            let Some(ip) = name.to_str().and_then(|n| n.parse::<Ipv4Addr>().ok()) else {
                continue;
            };
            let path = entry.path();
            let data = match fs::read_to_string(&path) {
                Ok(d) => d,
                // Removed by a host-local that does not share our lock discipline.
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(io_err(&path)(e)),
            };
            let data = data.trim();
            // host-local before 0.7 wrote only the container ID; read both forms.
            let (id, ifname) = data.split_once(LINE_BREAK).unwrap_or((data, ""));
            out.push((ip, id.trim().to_string(), ifname.trim().to_string()));
        }
        out.sort();
        Ok(out)
    }

    fn reserve(&self, ip: Ipv4Addr, id: &str, ifname: &str, set: usize) -> Result<bool, IpamError> {
        let path = self.dir.join(ip.to_string());
        let mut f = match OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode_bits(0o644)
            .open(&path)
        {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => return Ok(false),
            Err(e) => return Err(io_err(&path)(e)),
        };
        let written = f
            .write_all(format!("{id}{LINE_BREAK}{ifname}").as_bytes())
            .and_then(|_| f.sync_all());
        if let Err(e) = written {
            let _ = fs::remove_file(&path);
            return Err(io_err(&path)(e));
        }
        let cursor = self.dir.join(format!("{LAST_RESERVED}{set}"));
        fs::write(&cursor, ip.to_string()).map_err(io_err(&cursor))?;
        Ok(true)
    }

    fn last_reserved(&self, set: usize) -> Option<Ipv4Addr> {
        fs::read_to_string(self.dir.join(format!("{LAST_RESERVED}{set}")))
            .ok()
            .and_then(|s| s.trim().parse().ok())
    }

    /// Allocates one address from each range set for (id, ifname). All or nothing: on
    /// failure the addresses already reserved by this call are released again.
    pub fn allocate(
        &self,
        sets: &[Vec<Range>],
        id: &str,
        ifname: &str,
    ) -> Result<Vec<Allocation>, IpamError> {
        if let Some((ip, _, _)) = self
            .reservations()?
            .into_iter()
            .find(|(_, i, f)| i == id && f == ifname)
        {
            return Err(IpamError::Duplicate {
                network: self.network.clone(),
                id: id.to_string(),
                ifname: ifname.to_string(),
                ip,
            });
        }
        let mut got: Vec<Allocation> = Vec::new();
        for (n, set) in sets.iter().enumerate() {
            match self.allocate_in_set(n, set, id, ifname) {
                Ok(a) => got.push(a),
                Err(e) => {
                    for a in &got {
                        let _ = fs::remove_file(self.dir.join(a.ip.to_string()));
                    }
                    return Err(e);
                }
            }
        }
        Ok(got)
    }

    fn allocate_in_set(
        &self,
        n: usize,
        set: &[Range],
        id: &str,
        ifname: &str,
    ) -> Result<Allocation, IpamError> {
        for (ri, ip) in candidates(set, self.last_reserved(n)) {
            if self.reserve(ip, id, ifname, n)? {
                return Ok(Allocation {
                    ip,
                    range: set[ri].clone(),
                });
            }
        }
        Err(IpamError::Exhausted {
            network: self.network.clone(),
            set: n,
            ranges: set
                .iter()
                .map(|r| format!("{}-{}", r.start, r.end))
                .collect::<Vec<_>>()
                .join(", "),
        })
    }

    /// Releases every address held by (id, ifname); returns them.
    pub fn release(&self, id: &str, ifname: &str) -> Result<Vec<Ipv4Addr>, IpamError> {
        let mut freed = Vec::new();
        for (ip, i, f) in self.reservations()? {
            // host-local's ReleaseByID also accepts old files that hold only the ID.
            if i == id && (f == ifname || f.is_empty()) {
                let path = self.dir.join(ip.to_string());
                match fs::remove_file(&path) {
                    Ok(()) => freed.push(ip),
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => return Err(io_err(&path)(e)),
                }
            }
        }
        Ok(freed)
    }

    /// Releases one address (used by GC).
    pub fn release_ip(&self, ip: Ipv4Addr) -> Result<(), IpamError> {
        let path = self.dir.join(ip.to_string());
        match fs::remove_file(&path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(io_err(&path)(e)),
            _ => Ok(()),
        }
    }

    /// Whether at least one address of every set is free (for STATUS).
    pub fn has_free(&self, sets: &[Vec<Range>]) -> Result<bool, IpamError> {
        let held: std::collections::HashSet<Ipv4Addr> =
            self.reservations()?.into_iter().map(|r| r.0).collect();
        Ok(sets.iter().all(|set| {
            candidates(set, None)
                .into_iter()
                .any(|(_, ip)| !held.contains(&ip))
        }))
    }
}

/// Candidate addresses in host-local's order: after `last` if it lies in the set, else from
/// the first range's start; wrapping over all ranges; never a range's gateway.
pub fn candidates(set: &[Range], last: Option<Ipv4Addr>) -> Vec<(usize, Ipv4Addr)> {
    let mut all: Vec<(usize, Ipv4Addr)> = Vec::new();
    for (ri, r) in set.iter().enumerate() {
        for ip in u32::from(r.start)..=u32::from(r.end) {
            let ip = Ipv4Addr::from(ip);
            if ip != r.gateway {
                all.push((ri, ip));
            }
        }
    }
    let start = match last {
        Some(last) if set.iter().any(|r| r.contains(last)) => {
            // The address after `last` in walk order (`last` itself may be a gateway, so
            // find the first candidate that comes after it within its range order).
            let ri = set.iter().position(|r| r.contains(last)).unwrap_or(0);
            all.iter()
                .position(|(i, ip)| *i > ri || (*i == ri && u32::from(*ip) > u32::from(last)))
                .unwrap_or(0)
        }
        _ => 0,
    };
    all.rotate_left(start);
    all
}

trait ModeBits {
    fn mode_bits(&mut self, mode: u32) -> &mut Self;
}

impl ModeBits for OpenOptions {
    /// host-local creates reservation files 0644 and its lock file 0750.
    fn mode_bits(&mut self, mode: u32) -> &mut Self {
        use std::os::unix::fs::OpenOptionsExt;
        self.mode(mode)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(s: &str) -> Range {
        Range::new(s, None, None, None).unwrap()
    }

    #[test]
    fn defaults_follow_host_local() {
        let range = r("10.250.3.77/24");
        assert_eq!(range.network, Ipv4Addr::new(10, 250, 3, 0));
        assert_eq!(range.start, Ipv4Addr::new(10, 250, 3, 1));
        assert_eq!(range.end, Ipv4Addr::new(10, 250, 3, 254));
        assert_eq!(range.gateway, Ipv4Addr::new(10, 250, 3, 1));
        let c = candidates(&[range], None);
        assert_eq!(c[0].1, Ipv4Addr::new(10, 250, 3, 2), "gateway is skipped");
        assert_eq!(c.len(), 253);
    }

    #[test]
    fn rejects_bad_ranges() {
        assert!(Range::new("10.0.0.0/31", None, None, None).is_err());
        assert!(Range::new("10.0.0.0/24", Some("10.0.1.5"), None, None).is_err());
        assert!(Range::new("10.0.0.0/24", Some("10.0.0.9"), Some("10.0.0.5"), None).is_err());
        assert!(Range::new("fd00::/64", None, None, None).is_err());
        assert!(Range::new("10.0.0.0", None, None, None).is_err());
        assert!(check_set(&[r("10.0.0.0/24"), r("10.0.0.0/25")]).is_err());
    }

    #[test]
    fn round_robin_continues_after_cursor_and_wraps() {
        let set = [
            Range::new("10.0.0.0/29", Some("10.0.0.2"), Some("10.0.0.4"), None).unwrap(),
            Range::new("10.0.1.0/29", Some("10.0.1.2"), Some("10.0.1.3"), None).unwrap(),
        ];
        let order = |last| {
            candidates(&set, last)
                .into_iter()
                .map(|(_, ip)| ip.to_string())
                .collect::<Vec<_>>()
        };
        assert_eq!(
            order(Some("10.0.0.4".parse().unwrap())),
            ["10.0.1.2", "10.0.1.3", "10.0.0.2", "10.0.0.3", "10.0.0.4"]
        );
        assert_eq!(order(Some("192.0.2.1".parse().unwrap()))[0], "10.0.0.2");
        assert_eq!(order(Some("10.0.1.3".parse().unwrap()))[0], "10.0.0.2");
    }

    #[test]
    fn store_files_match_host_local_layout() {
        let dir = std::env::temp_dir().join(format!("skiff-cni-ipam-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let set = vec![Range::new("10.0.0.0/29", None, Some("10.0.0.3"), None).unwrap()];
        let store = Store::lock(&dir, "net1").unwrap();
        let a = store
            .allocate(std::slice::from_ref(&set), "c1", "eth0")
            .unwrap();
        assert_eq!(a[0].ip, Ipv4Addr::new(10, 0, 0, 2));
        assert_eq!(
            fs::read_to_string(dir.join("net1/10.0.0.2")).unwrap(),
            "c1\r\neth0"
        );
        assert_eq!(
            fs::read_to_string(dir.join("net1/last_reserved_ip.0")).unwrap(),
            "10.0.0.2"
        );
        assert!(dir.join("net1/lock").exists());
        assert!(matches!(
            store.allocate(std::slice::from_ref(&set), "c1", "eth0"),
            Err(IpamError::Duplicate { .. })
        ));
        let b = store
            .allocate(std::slice::from_ref(&set), "c2", "eth0")
            .unwrap();
        assert_eq!(b[0].ip, Ipv4Addr::new(10, 0, 0, 3));
        assert!(matches!(
            store.allocate(std::slice::from_ref(&set), "c3", "eth0"),
            Err(IpamError::Exhausted { .. })
        ));
        assert_eq!(store.release("c1", "eth0").unwrap(), [a[0].ip]);
        assert!(!dir.join("net1/10.0.0.2").exists());
        // The cursor is at .3, so the next allocation wraps to .2.
        let c = store
            .allocate(std::slice::from_ref(&set), "c3", "eth0")
            .unwrap();
        assert_eq!(c[0].ip, Ipv4Addr::new(10, 0, 0, 2));
        drop(store);
        fs::remove_dir_all(&dir).unwrap();
    }
}
