//! skiff's cluster DNS, served by the node agent on every node (like NodeLocal DNSCache,
//! but authoritative for the cluster zone itself): the kube-dns Service's ClusterIP
//! (`10.43.0.10`) is translated by the datapath to a node's DNS server, which answers the
//! cluster zone from the agent's own Service and EndpointSlice caches (no second watch)
//! and forwards every other name to the node's resolvers.
//!
//! - [`records`] (pure): Services + EndpointSlices → the zone's records, per the
//!   Kubernetes DNS specification.
//! - [`forward`]: the upstream forwarder (resolv.conf servers, UDP then TCP, timeouts).
//! - [`server`]: hickory-server listeners and the request handler.

pub mod forward;
pub mod records;
pub mod server;

/// The Node annotation an agent serving DNS sets to its port; the control plane's
/// clusterdns controller (skiff_controllers::clusterdns::NODE_ANNOTATION, same value) puts
/// such Nodes behind the kube-dns Service.
pub const NODE_ANNOTATION: &str = "skiff.io/cluster-dns";

pub use forward::Forwarder;
pub use records::Zone;
pub use server::{Config, DnsServer, ZoneHandle};
