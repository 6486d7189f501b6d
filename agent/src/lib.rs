//! skiff-agent: the node agent. It turns Services and EndpointSlices into eBPF map entries
//! (`translate` → `model` → `reconcile` → `lbmap`) and loads, attaches and reads the datapath
//! (`datapath`, the only module that touches aya).

// The API client with a fixed read buffer (agent memory, issue 7).
pub mod apiclient;
pub mod datapath;
pub mod debug;
pub mod health;
pub mod join;
pub mod kubelet_api;
pub mod lbmap;
pub mod maglev;
// Returning free heap pages after full syncs (agent memory, issue 7).
pub mod malloc;
// Masquerade of pod traffic to the outside (issue 7).
pub mod masquerade;
pub mod metrics;
pub mod model;
pub mod netsetup;
pub mod node;
pub mod policy;
pub mod reconcile;
pub mod sockets;
pub mod status;
pub mod translate;
pub mod uplink;
pub mod watch;
