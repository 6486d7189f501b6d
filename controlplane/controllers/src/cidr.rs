//! IPv4 CIDRs and address ranges for the LoadBalancer pool and node IPAM flags, parsed
//! with errors that say what is wrong and what a valid value looks like.

use std::{fmt, net::Ipv4Addr, str::FromStr};

/// An IPv4 network `a.b.c.d/n` (host bits must be zero, as upstream's `--cluster-cidr`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Ipv4Cidr {
    network: u32,
    prefix: u8,
}

impl Ipv4Cidr {
    pub fn new(addr: Ipv4Addr, prefix: u8) -> Result<Ipv4Cidr, String> {
        if prefix > 32 {
            return Err(format!(
                "prefix length /{prefix} is longer than 32 bits (an IPv4 prefix is 0..32)"
            ));
        }
        let a = u32::from(addr);
        let mask = Self::mask_of(prefix);
        if a & !mask != 0 {
            return Err(format!(
                "{addr}/{prefix} has host bits set; the network is {}/{prefix}",
                Ipv4Addr::from(a & mask)
            ));
        }
        Ok(Ipv4Cidr { network: a, prefix })
    }

    fn mask_of(prefix: u8) -> u32 {
        if prefix == 0 {
            0
        } else {
            u32::MAX << (32 - u32::from(prefix))
        }
    }

    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    pub fn first(&self) -> u32 {
        self.network
    }

    pub fn last(&self) -> u32 {
        self.network | !Self::mask_of(self.prefix)
    }

    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & Self::mask_of(self.prefix) == self.network
    }

    /// The `i`-th subnet of length `prefix` inside this one.
    pub fn subnet(&self, prefix: u8, i: u32) -> Option<Ipv4Cidr> {
        if prefix < self.prefix || prefix > 32 {
            return None;
        }
        let count = self.subnet_count(prefix)?;
        if u64::from(i) >= count {
            return None;
        }
        let size = 1u64 << (32 - u32::from(prefix));
        let start = u64::from(self.network) + u64::from(i) * size;
        Some(Ipv4Cidr {
            network: u32::try_from(start).ok()?,
            prefix,
        })
    }

    /// How many subnets of length `prefix` this network holds.
    pub fn subnet_count(&self, prefix: u8) -> Option<u64> {
        (prefix >= self.prefix && prefix <= 32).then(|| 1u64 << (prefix - self.prefix))
    }
}

impl fmt::Display for Ipv4Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", Ipv4Addr::from(self.network), self.prefix)
    }
}

impl FromStr for Ipv4Cidr {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        let (ip, bits) = s.split_once('/').ok_or_else(|| {
            format!("{s:?} is not a CIDR (expected a.b.c.d/n, e.g. 10.42.0.0/16)")
        })?;
        let ip: Ipv4Addr = ip
            .parse()
            .map_err(|_| format!("{s:?}: {ip:?} is not an IPv4 address"))?;
        let bits: u8 = bits
            .parse()
            .map_err(|_| format!("{s:?}: {bits:?} is not a prefix length (0..32)"))?;
        Ipv4Cidr::new(ip, bits).map_err(|e| format!("{s:?}: {e}"))
    }
}

/// An inclusive IPv4 address range, written as a CIDR or `a.b.c.d-a.b.c.e`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Ipv4Range {
    pub start: u32,
    pub end: u32,
}

impl Ipv4Range {
    pub fn len(&self) -> u64 {
        u64::from(self.end) - u64::from(self.start) + 1
    }

    pub fn is_empty(&self) -> bool {
        false
    }

    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        (self.start..=self.end).contains(&u32::from(ip))
    }
}

impl fmt::Display for Ipv4Range {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}-{}",
            Ipv4Addr::from(self.start),
            Ipv4Addr::from(self.end)
        )
    }
}

impl FromStr for Ipv4Range {
    type Err = String;
    /// A CIDR gives its addresses without the network and broadcast ones when it has more
    /// than two (MetalLB's `avoidBuggyIPs`: `.0`/`.255` trip some clients); a /31 or /32
    /// gives all of them. A range is taken as written.
    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        if s.contains('/') {
            let c: Ipv4Cidr = s.parse()?;
            let (mut start, mut end) = (c.first(), c.last());
            if c.prefix() < 31 {
                start += 1;
                end -= 1;
            }
            return Ok(Ipv4Range { start, end });
        }
        let Some((a, b)) = s.split_once('-') else {
            return Err(format!(
                "{s:?} is neither a CIDR (10.0.0.0/24) nor a range (10.0.0.10-10.0.0.20)"
            ));
        };
        let parse = |x: &str| {
            x.trim()
                .parse::<Ipv4Addr>()
                .map(u32::from)
                .map_err(|_| format!("{s:?}: {:?} is not an IPv4 address", x.trim()))
        };
        let (start, end) = (parse(a)?, parse(b)?);
        if start > end {
            return Err(format!(
                "{s:?}: the range starts after it ends (write the lower address first)"
            ));
        }
        Ok(Ipv4Range { start, end })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidrs_parse_with_clear_errors() {
        let c: Ipv4Cidr = "10.42.0.0/16".parse().unwrap();
        assert_eq!(c.to_string(), "10.42.0.0/16");
        assert_eq!(c.subnet(24, 0).unwrap().to_string(), "10.42.0.0/24");
        assert_eq!(c.subnet(24, 255).unwrap().to_string(), "10.42.255.0/24");
        assert_eq!(c.subnet(24, 256), None);
        assert_eq!(c.subnet_count(24), Some(256));
        assert!(c.contains("10.42.7.1".parse().unwrap()));
        assert!(!c.contains("10.43.0.1".parse().unwrap()));
        for (bad, why) in [
            ("10.42.0.0", "is not a CIDR"),
            ("10.42.0.1/16", "host bits set; the network is 10.42.0.0/16"),
            ("10.42.0.0/33", "longer than 32 bits"),
            ("fd00::/64", "is not an IPv4 address"),
            ("10.42.0.0/x", "is not a prefix length"),
        ] {
            let e = bad.parse::<Ipv4Cidr>().unwrap_err();
            assert!(e.contains(why), "{bad}: {e}");
        }
    }

    #[test]
    fn ranges_parse_from_cidrs_and_dashes() {
        let r: Ipv4Range = "192.0.2.0/30".parse().unwrap();
        assert_eq!(r.to_string(), "192.0.2.1-192.0.2.2");
        let r: Ipv4Range = "192.0.2.7/32".parse().unwrap();
        assert_eq!(r.len(), 1);
        let r: Ipv4Range = " 192.0.2.10 - 192.0.2.20 ".parse().unwrap();
        assert_eq!(r.len(), 11);
        assert!(r.contains("192.0.2.15".parse().unwrap()));
        for (bad, why) in [
            ("192.0.2.20-192.0.2.10", "starts after it ends"),
            ("192.0.2.1-x", "\"x\" is not an IPv4 address"),
            ("pool", "neither a CIDR"),
        ] {
            let e = bad.parse::<Ipv4Range>().unwrap_err();
            assert!(e.contains(why), "{bad}: {e}");
        }
    }
}
