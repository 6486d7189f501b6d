//! Node-level policies applied to the model after translation.
//!
//! ExternalIP safety (CVE-2020-8554): any user who can create a Service can claim any
//! address as an ExternalIP and intercept traffic meant for it. Upstream's answer is the
//! DenyServiceExternalIPs admission plugin; skiff's agent additionally programs only the
//! ExternalIPs inside an allowed set (`--external-ip-cidr`, empty by default) and reports
//! the rest.

use std::net::Ipv4Addr;

use crate::{
    model::{FrontendKind, Model},
    translate::Diagnostic,
};

fn contains(range: (Ipv4Addr, u8), addr: Ipv4Addr) -> bool {
    let (net, len) = range;
    let mask = if len == 0 {
        0
    } else {
        u32::MAX << (32 - u32::from(len))
    };
    u32::from(addr) & mask == u32::from(net) & mask
}

/// Removes ExternalIP frontends outside `allowed` from `model`, one diagnostic each.
pub fn restrict_external_ips(model: &mut Model, allowed: &[(Ipv4Addr, u8)]) -> Vec<Diagnostic> {
    let mut diags = Vec::new();
    for (name, port) in &mut model.services {
        port.frontends.retain(|f| {
            if f.kind != FrontendKind::ExternalIp || allowed.iter().any(|r| contains(*r, f.addr)) {
                return true;
            }
            diags.push(Diagnostic {
                object: format!("Service {}/{}", name.namespace, name.name),
                field: "spec.externalIPs".into(),
                message: format!(
                    "external IP {} is outside the node's allowed ExternalIP ranges ({}), so it \
                     is not programmed (an ExternalIP can capture traffic for any address: \
                     CVE-2020-8554). Allow it with skiff-agent --external-ip-cidr, or remove it.",
                    f.addr,
                    if allowed.is_empty() {
                        "none configured".to_owned()
                    } else {
                        allowed
                            .iter()
                            .map(|(a, l)| format!("{a}/{l}"))
                            .collect::<Vec<_>>()
                            .join(", ")
                    }
                ),
            });
            false
        });
    }
    diags.sort();
    diags.dedup();
    diags
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Frontend, Protocol, ServicePort, ServicePortName};

    fn model() -> Model {
        let f = |a: [u8; 4], kind| Frontend {
            addr: Ipv4Addr::from(a),
            port: 80,
            proto: Protocol::Tcp,
            kind,
        };
        let port = ServicePort {
            frontends: vec![
                f([10, 43, 0, 10], FrontendKind::ClusterIp),
                f([203, 0, 113, 7], FrontendKind::ExternalIp),
                f([198, 51, 100, 9], FrontendKind::ExternalIp),
            ],
            ..Default::default()
        };
        Model {
            services: [(ServicePortName::new("default", "web", "http"), port)]
                .into_iter()
                .collect(),
        }
    }

    #[test]
    fn only_allowed_external_ips_survive_and_the_rest_are_reported() {
        let mut m = model();
        let diags = restrict_external_ips(&mut m, &[(Ipv4Addr::new(203, 0, 113, 0), 24)]);
        let kept: Vec<Ipv4Addr> = m
            .services
            .values()
            .next()
            .unwrap()
            .frontends
            .iter()
            .map(|f| f.addr)
            .collect();
        assert_eq!(
            kept,
            [Ipv4Addr::new(10, 43, 0, 10), Ipv4Addr::new(203, 0, 113, 7)]
        );
        assert_eq!(diags.len(), 1);
        assert_eq!(
            diags[0].to_string(),
            "Service default/web spec.externalIPs: external IP 198.51.100.9 is outside the node's \
             allowed ExternalIP ranges (203.0.113.0/24), so it is not programmed (an ExternalIP \
             can capture traffic for any address: CVE-2020-8554). Allow it with skiff-agent \
             --external-ip-cidr, or remove it."
        );
    }

    #[test]
    fn by_default_no_external_ip_is_programmed() {
        let mut m = model();
        assert_eq!(restrict_external_ips(&mut m, &[]).len(), 2);
        assert_eq!(m.services.values().next().unwrap().frontends.len(), 1);
        let mut m = model();
        assert!(restrict_external_ips(&mut m, &[(Ipv4Addr::UNSPECIFIED, 0)]).is_empty());
    }
}
