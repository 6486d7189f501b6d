//! skiff's Kubernetes-compatible API server: the only crate that knows HTTP routing and
//! wire formats. Kubernetes semantics come from `skiff-api`, storage from `skiff-store`.
//!
//! | module | what |
//! |---|---|
//! | [`server`] | HTTPS (rustls), authentication, the accept loop: [`server::start`] |
//! | [`pki`] | first-start CA, serving and admin certificates, token, `admin.kubeconfig` |
//! | `api` | discovery, CRUD, subresources, lists (with pagination and selectors) |
//! | `watch` | `?watch=true` streams |
//! | `cache` | watch fan-out: one store watch per resource, recent history, slow clients cut off |
//! | `authz` | what a node identity may do (upstream's Node authorizer + NodeRestriction) |
//! | `pod_logs` | `pods/{name}/log`: `kubectl logs`, proxied to the node's kubelet API |
//! | `join` | `POST /skiff/v1/join`: a node credential for the join token |
//! | `openapi` | `/openapi/v3` documents for kubectl's validation and `explain` |
//! | [`protobuf`] | `application/vnd.kubernetes.protobuf` request bodies decoded to JSON |

pub mod alloc;
mod api;
mod authz;
mod cache;
mod join;
mod openapi;
mod openapi_pb;
pub mod pki;
mod pod_logs;
pub mod protobuf;
pub mod server;
mod util;
mod watch;

pub use api::MAX_BODY_BYTES;
pub use cache::HistoryLimits as WatchCacheLimits;
pub use server::{start, Config, RunningServer};

// cpbench: metrics of in-process components (the controllers' work queues) on /metrics
static METRICS_SOURCES: std::sync::Mutex<Vec<fn() -> String>> = std::sync::Mutex::new(Vec::new());

/// Appends `render`'s output (Prometheus text format) to the admin `/metrics`: the
/// binary registers the in-process controllers' metrics here (upstream's components each
/// serve their own; k3s serves them from one process too).
pub fn add_metrics_source(render: fn() -> String) {
    METRICS_SOURCES
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push(render);
}

/// What the registered sources render now.
fn extra_metrics() -> String {
    let sources = METRICS_SOURCES
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    sources.iter().map(|render| render()).collect()
}
// end cpbench
