//! HTTPS serving: TLS (rustls, ring), client-certificate and bearer-token authentication,
//! and the accept loop that hands requests to the API router.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use skiff_store::Store;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;

use crate::pki::{self, Credentials};

/// Server settings (the binary's flags).
#[derive(Clone, Debug)]
pub struct Config {
    pub data_dir: PathBuf,
    pub listen: SocketAddr,
    /// Extra IPs for the serving certificate's SANs (and the first one for the kubeconfig's
    /// server URL when the listen address is unspecified).
    pub advertise: Vec<IpAddr>,
    /// The Service ClusterIP range.
    pub service_cidr: crate::alloc::ServiceCidr,
    /// The NodePort range (also for healthCheckNodePort).
    pub node_port_range: crate::alloc::NodePortRange,
    /// Upstream's `--min-request-timeout`: a watch without `timeoutSeconds` ends after a
    /// random time between this and twice this (clients then re-watch).
    pub min_request_timeout: std::time::Duration,
    /// What the watch cache's histories keep (watch resumes and continued LISTs within
    /// them are served from memory).
    pub watch_cache: crate::cache::HistoryLimits,
}

impl Config {
    /// Defaults for everything but the data directory and listen address.
    pub fn new(data_dir: PathBuf, listen: SocketAddr) -> Config {
        Config {
            data_dir,
            listen,
            advertise: Vec::new(),
            service_cidr: Default::default(),
            node_port_range: Default::default(),
            min_request_timeout: std::time::Duration::from_secs(1800),
            watch_cache: Default::default(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error(transparent)]
    Pki(#[from] pki::PkiError),
    #[error("binding {addr}: {source} (is another server on that port? pass --listen)")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("TLS setup: {0}")]
    Tls(String),
}

/// Who a request comes from, after authentication.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Identity {
    /// The admin (client certificate `CN=skiff-admin,O=system:masters` or the admin token).
    Admin,
    /// A node (`CN=system:node:<name>, O=system:nodes`, issued through the join token):
    /// may read what an agent needs and write only its own Node, Lease and pods' status.
    Node(String),
    /// A client certificate signed by the cluster CA that is neither the admin's nor a
    /// node's: authenticated, authorized for nothing.
    OtherCertificate,
    Anonymous,
}

/// Per-connection information, inserted into every request's extensions.
#[derive(Clone, Debug)]
pub struct ConnInfo {
    pub client_cert: Option<CertificateDer<'static>>,
    pub remote: SocketAddr,
}

/// A running server. Dropping it does not stop it; call [`RunningServer::shutdown`].
pub struct RunningServer {
    pub addr: SocketAddr,
    pub credentials: Credentials,
    shutdown: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl RunningServer {
    /// Stops accepting connections and waits for the accept loop to end.
    pub async fn shutdown(self) {
        let _ = self.shutdown.send(true);
        let _ = self.task.await;
    }

    /// Waits until the accept loop ends (it only ends on shutdown).
    pub async fn wait(self) {
        let _ = self.task.await;
    }
}

fn server_url(listen: SocketAddr, advertise: &[IpAddr]) -> String {
    let ip = if listen.ip().is_unspecified() {
        advertise
            .first()
            .copied()
            .unwrap_or(IpAddr::from([127, 0, 0, 1]))
    } else {
        listen.ip()
    };
    match ip {
        IpAddr::V4(v4) => format!("https://{v4}:{}", listen.port()),
        IpAddr::V6(v6) => format!("https://[{v6}]:{}", listen.port()),
    }
}

/// Binds, writes credentials and the kubeconfig (with the bound port, so `--listen
/// 127.0.0.1:0` works), and starts serving in the background.
pub async fn start(config: Config, store: Arc<dyn Store>) -> Result<RunningServer, ServerError> {
    let listener = TcpListener::bind(config.listen)
        .await
        .map_err(|source| ServerError::Bind {
            addr: config.listen,
            source,
        })?;
    let addr = listener.local_addr().map_err(|source| ServerError::Bind {
        addr: config.listen,
        source,
    })?;
    let url = server_url(addr, &config.advertise);
    let creds = pki::ensure(&config.data_dir, &config.advertise, &url)?;
    let tls = tls_config(&creds)?;
    let acceptor = TlsAcceptor::from(Arc::new(tls));

    let admin_der = CertificateDer::from_pem_slice(creds.admin_cert_pem.as_bytes())
        .map_err(|e| ServerError::Tls(format!("admin certificate: {e}")))?;
    let state = crate::api::AppState::new(
        store,
        &config,
        &creds,
        admin_der,
        addr.to_string(),
        url.clone(),
    );
    // LIST and WATCH read the watch cache once it has filled (the store until then).
    state.cache.start();
    // Where pods reach this server: the first advertise address, else the listen address.
    let endpoint_ip = config
        .advertise
        .first()
        .copied()
        .unwrap_or(if addr.ip().is_unspecified() {
            IpAddr::from([127, 0, 0, 1])
        } else {
            addr.ip()
        });
    state.bootstrap(endpoint_ip, addr.port()).await;
    // Upstream's repair controllers run at startup and every 3 minutes.
    let repair_state = state.clone();
    let _repair = tokio::spawn(async move {
        loop {
            tokio::time::sleep(std::time::Duration::from_secs(180)).await;
            repair_state.repair_allocations().await;
        }
    });
    let router = crate::api::router(state);

    let (tx, mut rx) = watch::channel(false);
    let task = tokio::spawn(async move {
        loop {
            let (tcp, remote) = tokio::select! {
                r = listener.accept() => match r {
                    Ok(x) => x,
                    Err(e) => {
                        tracing::warn!("accept: {e}");
                        continue;
                    }
                },
                _ = rx.changed() => break,
            };
            // cpbench: no Nagle delay on API responses and watch events. Go's net package
            // (the upstream API server) sets TCP_NODELAY on every connection; without it a
            // watch event written while the previous one is unacknowledged waits for the
            // client's delayed ACK (tens of ms, up to 200 on Linux).
            let _ = tcp.set_nodelay(true);
            // end cpbench
            let acceptor = acceptor.clone();
            let router = router.clone();
            tokio::spawn(async move {
                let tls = match acceptor.accept(tcp).await {
                    Ok(t) => t,
                    Err(e) => {
                        tracing::debug!("TLS handshake with {remote}: {e}");
                        return;
                    }
                };
                let client_cert = tls
                    .get_ref()
                    .1
                    .peer_certificates()
                    .and_then(|c| c.first())
                    .map(|c| c.clone().into_owned());
                let info = ConnInfo {
                    client_cert,
                    remote,
                };
                let svc = hyper::service::service_fn(
                    move |mut req: hyper::Request<hyper::body::Incoming>| {
                        req.extensions_mut().insert(info.clone());
                        let router = router.clone();
                        async move {
                            use tower_service::Service;
                            let mut r = router;
                            r.call(req.map(axum::body::Body::new)).await
                        }
                    },
                );
                let io = hyper_util::rt::TokioIo::new(tls);
                let builder = hyper_util::server::conn::auto::Builder::new(
                    hyper_util::rt::TokioExecutor::new(),
                );
                if let Err(e) = builder.serve_connection(io, svc).await {
                    tracing::debug!("connection from {remote}: {e}");
                }
            });
        }
    });
    tracing::info!("serving the Kubernetes API on https://{addr}");
    Ok(RunningServer {
        addr,
        credentials: creds,
        shutdown: tx,
        task,
    })
}

fn tls_config(creds: &Credentials) -> Result<rustls::ServerConfig, ServerError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    let ca = CertificateDer::from_pem_slice(creds.ca_pem.as_bytes())
        .map_err(|e| ServerError::Tls(format!("CA certificate: {e}")))?;
    roots
        .add(ca.clone())
        .map_err(|e| ServerError::Tls(format!("CA certificate: {e}")))?;
    // Client certificates are optional at the TLS layer (bearer tokens and anonymous
    // requests must reach the HTTP layer, which answers 401 like upstream), but one that is
    // presented must chain to the cluster CA.
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .allow_unauthenticated()
    .build()
    .map_err(|e| ServerError::Tls(format!("client verifier: {e}")))?;
    let chain = vec![
        CertificateDer::from_pem_slice(creds.serving_cert_pem.as_bytes())
            .map_err(|e| ServerError::Tls(format!("serving certificate: {e}")))?,
        ca,
    ];
    let key = PrivateKeyDer::from_pem_slice(creds.serving_key_pem.as_bytes())
        .map_err(|e| ServerError::Tls(format!("serving key: {e}")))?;
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| ServerError::Tls(e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .map_err(|e| ServerError::Tls(e.to_string()))?;
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(cfg)
}
