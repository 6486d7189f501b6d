//! ClusterIP and NodePort allocation for Services (upstream's service REST `BeforeCreate`
//! allocators), IPv4 only.
//!
//! Allocation reads the Services in the store and picks a free value; two concurrent
//! creates could pick the same one (upstream serialises through an allocation bitmap in
//! the store). Acceptable for a single-writer control plane; noted for the integrator.

use std::collections::HashSet;
use std::net::Ipv4Addr;

use serde_json::{json, Value};
use skiff_api::field::FieldError;
use skiff_api::status::{self as st, StatusError};
use skiff_store::{ListOptions, Store};

/// The Service ClusterIP range (k3s's default 10.43.0.0/16).
#[derive(Clone, Copy, Debug)]
pub struct ServiceCidr {
    pub base: Ipv4Addr,
    pub prefix: u8,
}

impl Default for ServiceCidr {
    fn default() -> Self {
        ServiceCidr {
            base: Ipv4Addr::new(10, 43, 0, 0),
            prefix: 16,
        }
    }
}

impl std::str::FromStr for ServiceCidr {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (ip, p) = s
            .split_once('/')
            .ok_or_else(|| format!("{s:?} is not a CIDR like 10.43.0.0/16"))?;
        let ip: Ipv4Addr = ip.parse().map_err(|e| format!("{s:?}: {e}"))?;
        let prefix: u8 = p.parse().map_err(|e| format!("{s:?}: {e}"))?;
        if !(8..=30).contains(&prefix) {
            return Err(format!("{s:?}: the prefix length must be between 8 and 30"));
        }
        let mask = u32::MAX << (32 - prefix);
        Ok(ServiceCidr {
            base: Ipv4Addr::from(u32::from(ip) & mask),
            prefix,
        })
    }
}

impl ServiceCidr {
    /// The first usable address, reserved for the `kubernetes` Service (upstream's rule).
    pub fn kubernetes_ip(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.base) + 1)
    }

    fn size(&self) -> u32 {
        1u32 << (32 - self.prefix)
    }

    fn contains(&self, ip: Ipv4Addr) -> bool {
        let mask = u32::MAX << (32 - self.prefix);
        u32::from(ip) & mask == u32::from(self.base)
    }
}

pub const NODE_PORT_MIN: i64 = 30000;
pub const NODE_PORT_MAX: i64 = 32767;

fn invalid(name: &str, field: &str, value: Value, detail: &str) -> StatusError {
    st::invalid(
        "",
        "Service",
        name,
        &[FieldError::invalid(field, value, detail)],
    )
}

/// Fills `spec.clusterIP(s)` and node ports of a Service being created.
pub async fn allocate(
    store: &dyn Store,
    cidr: ServiceCidr,
    svc: &mut Value,
) -> Result<(), StatusError> {
    let name = svc
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    let ty = svc
        .pointer("/spec/type")
        .and_then(Value::as_str)
        .unwrap_or("ClusterIP")
        .to_string();
    if ty == "ExternalName" {
        return Ok(());
    }
    let services = store
        .list("/registry/services/", ListOptions::default())
        .await
        .map_err(|e| st::internal_error(&e.to_string()))?;
    let mut used_ips = HashSet::new();
    let mut used_ports = HashSet::new();
    for kv in &services.items {
        let Ok(v) = serde_json::from_slice::<Value>(&kv.value) else {
            continue;
        };
        if let Some(ip) = v.pointer("/spec/clusterIP").and_then(Value::as_str) {
            used_ips.insert(ip.to_string());
        }
        for p in v
            .pointer("/spec/ports")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            if let Some(n) = p.get("nodePort").and_then(Value::as_i64) {
                used_ports.insert(n);
            }
        }
    }
    let requested = svc
        .pointer("/spec/clusterIP")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    let ip = if requested == "None" {
        requested
    } else if requested.is_empty() {
        // Random probing like upstream's allocator; the first address is left for the
        // `kubernetes` Service, as upstream reserves it.
        let size = cidr.size();
        let start =
            u32::from_le_bytes(crate::pki::random_bytes(4).try_into().unwrap_or([0; 4])) % size;
        let base = u32::from(cidr.base);
        (0..size)
            .map(|i| (start + i) % size)
            .filter(|off| *off > 1 && *off < size - 1)
            .map(|off| Ipv4Addr::from(base + off).to_string())
            .find(|ip| !used_ips.contains(ip))
            .ok_or_else(|| {
                st::internal_error(&format!(
                    "failed to allocate a serviceIP: range {}/{} is full",
                    cidr.base, cidr.prefix
                ))
            })?
    } else {
        let parsed: Ipv4Addr = requested.parse().map_err(|_| {
            invalid(
                &name,
                "spec.clusterIPs[0]",
                json!(requested),
                "must be a valid IP address, (e.g. 10.9.8.7 or 2001:db8::ffff)",
            )
        })?;
        if !cidr.contains(parsed) {
            return Err(invalid(
                &name,
                "spec.clusterIPs",
                json!([requested]),
                &format!(
                    "failed to allocate IP {requested}: the provided IP ({requested}) is not in the valid range. The range of valid IPs is {}/{}",
                    cidr.base, cidr.prefix
                ),
            ));
        }
        if used_ips.contains(&requested) {
            return Err(invalid(
                &name,
                "spec.clusterIPs",
                json!([requested]),
                &format!("failed to allocate IP {requested}: provided IP is already allocated"),
            ));
        }
        requested
    };
    svc["spec"]["clusterIP"] = json!(ip);
    svc["spec"]["clusterIPs"] = json!([ip]);

    if ty == "NodePort" || ty == "LoadBalancer" {
        let mut next = NODE_PORT_MIN;
        if let Some(ports) = svc.pointer_mut("/spec/ports").and_then(Value::as_array_mut) {
            for (i, p) in ports.iter_mut().enumerate() {
                match p.get("nodePort").and_then(Value::as_i64) {
                    Some(n) if n != 0 => {
                        if used_ports.contains(&n) {
                            return Err(invalid(
                                &name,
                                &format!("spec.ports[{i}].nodePort"),
                                json!(n),
                                "provided port is already allocated",
                            ));
                        }
                        used_ports.insert(n);
                    }
                    _ => {
                        while used_ports.contains(&next) && next <= NODE_PORT_MAX {
                            next += 1;
                        }
                        if next > NODE_PORT_MAX {
                            return Err(st::internal_error(
                                "failed to allocate a nodePort: range is full",
                            ));
                        }
                        p["nodePort"] = json!(next);
                        used_ports.insert(next);
                    }
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidr_parsing() {
        let c: ServiceCidr = "10.43.7.9/16".parse().unwrap();
        assert_eq!(c.base, Ipv4Addr::new(10, 43, 0, 0));
        assert!(c.contains(Ipv4Addr::new(10, 43, 255, 1)));
        assert!(!c.contains(Ipv4Addr::new(10, 44, 0, 1)));
        assert!("10.0.0.0".parse::<ServiceCidr>().is_err());
        assert!("10.0.0.0/31".parse::<ServiceCidr>().is_err());
    }
}
