//! The agent's API client: kube's default stack (what `kube::Client::try_from` builds),
//! assembled here only to give hyper a fixed read buffer (agent memory, issue 7).
//!
//! Why: hyper's HTTP/1 client starts each connection with an 8 KiB read buffer and doubles
//! it whenever a read fills it, up to ~400 KiB, and never gives the space back while the
//! connection lives. The initial LISTs of Services and EndpointSlices (megabytes each at
//! 10k Services) grow the buffers of the connections their watches then keep open for
//! hours: 0.86 MB of the agent's live heap at 10k Services (heaptrack), for watch streams
//! whose events are a few kB. With a fixed [`READ_BUFFER`] a LIST takes more reads (TLS
//! hands out records of at most 16 KiB anyway) and the buffers stay small.
//!
//! What differs from kube's stack: no `TraceLayer` (its spans are debug-level request
//! logs), no gzip layer (kube's `gzip` feature is off here). Kubeconfigs whose stack kube
//! builds differently (a proxy, or an exec plugin whose client certificate expires and
//! must be refreshed) get kube's own client unchanged.

use hyper_util::{client::legacy::connect::HttpConnector, rt::TokioExecutor};
use kube::client::ConfigExt as _;
use tower::ServiceBuilder;

/// Bytes hyper reads into per read on an API connection: four TLS records.
pub const READ_BUFFER: usize = 64 * 1024;

/// A client for `config`, as `kube::Client::try_from` would build it, with a fixed read
/// buffer.
pub fn client(config: kube::Config) -> kube::Result<kube::Client> {
    if config.proxy_url.is_some() || config.auth_info.exec.is_some() {
        return kube::Client::try_from(config);
    }
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    let https = config.rustls_https_connector_with_connector(http)?;
    let mut connector = hyper_timeout::TimeoutConnector::new(https);
    connector.set_connect_timeout(config.connect_timeout);
    connector.set_read_timeout(config.read_timeout);
    connector.set_write_timeout(config.write_timeout);
    connector.set_reset_reader_on_write(config.reset_reader_on_write);
    let hyper: hyper_util::client::legacy::Client<_, kube::client::Body> =
        hyper_util::client::legacy::Builder::new(TokioExecutor::new())
            .http1_read_buf_exact_size(READ_BUFFER)
            .build(connector);
    let retry = config
        .default_retry
        .then(|| tower::retry::RetryLayer::new(kube::client::retry::RetryPolicy::server_retry()));
    let service = ServiceBuilder::new()
        .layer(config.base_uri_layer())
        .option_layer(retry)
        .option_layer(config.auth_layer()?)
        .layer(config.extra_headers_layer()?)
        .map_err(tower::BoxError::from)
        .service(hyper);
    Ok(kube::Client::new(service, config.default_namespace))
}
