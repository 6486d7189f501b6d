//! The node's kubelet API, reduced to what the API server needs for `kubectl logs`:
//! `GET /containerLogs/{namespace}/{pod}/{container}` over HTTPS (upstream's port 10250),
//! with the kubelet's query (`follow`, `previous`, `timestamps`, `tailLines`,
//! `sinceSeconds`, `sinceTime`, `limitBytes`) and its errors.
//!
//! Authentication: a client certificate chained to the cluster CA is required (401
//! without one) and only the API server's identity (`CN=kube-apiserver-kubelet-client`)
//! is authorised (403 otherwise, upstream's wording), where the kubelet would ask the API
//! server with a SubjectAccessReview. The serving certificate is self-signed at start (as a
//! kubelet without `--tls-cert-file`); the API server does not verify it, as upstream.
//!
//! The container instance comes from the Pod's status (the kubelet's
//! `validateContainerLogStatus`), the files from skiff-runtime's log directory
//! ([`skiff_runtime::logread`]). A follow ends when the container is no longer running
//! with the same container ID (checked against the API every [`FOLLOW_STATUS_PERIOD`]),
//! once everything it wrote has been sent.

use std::{
    net::{IpAddr, SocketAddr},
    path::PathBuf,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::Duration,
};

use axum::body::Body;
use http::{header, HeaderValue, Request, Response, StatusCode};
use k8s_openapi::api::core::v1::{ContainerStatus, Pod};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use skiff_runtime::logread::{self, Instance, ReadOptions};

/// The identity the API server presents (skiff-apiserver's `pki::KUBELET_CLIENT_USER`).
pub const API_SERVER_USER: &str = "kube-apiserver-kubelet-client";

/// The kubelet's default port.
pub const DEFAULT_PORT: u16 = 10250;

/// How often a followed container's status is checked.
pub const FOLLOW_STATUS_PERIOD: Duration = Duration::from_secs(2);

/// What the server needs.
#[derive(Clone)]
pub struct KubeletApi {
    pub client: kube::Client,
    pub node_name: String,
    /// skiff-runtime's `Config::log_dir`.
    pub log_dir: PathBuf,
    /// DER certificates client certificates must chain to (the cluster CA).
    pub client_ca: Vec<Vec<u8>>,
    /// Addresses for the self-signed serving certificate's SANs.
    pub addresses: Vec<IpAddr>,
}

#[derive(Debug, thiserror::Error)]
pub enum KubeletApiError {
    #[error("the kubelet API's TLS set-up: {0}")]
    Tls(String),
    #[error("listening on {addr}: {source} (pick another --kubelet-port, or 0 to turn the kubelet API off)")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

fn tls_config(api: &KubeletApi) -> Result<rustls::ServerConfig, KubeletApiError> {
    let tls = |e: &dyn std::fmt::Display| KubeletApiError::Tls(e.to_string());
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for der in &api.client_ca {
        roots
            .add(CertificateDer::from(der.clone()))
            .map_err(|e| tls(&format!("the cluster CA: {e}")))?;
    }
    if roots.is_empty() {
        return Err(KubeletApiError::Tls(
            "no cluster CA to verify the API server's client certificate against (the kubeconfig has no certificate-authority-data)".into(),
        ));
    }
    // Optional at the TLS layer so that a request without a certificate gets the
    // kubelet's 401 rather than a failed handshake; one presented must chain to the CA.
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .allow_unauthenticated()
    .build()
    .map_err(|e| tls(&e))?;
    let mut params =
        rcgen::CertificateParams::new(vec!["localhost".to_string(), api.node_name.clone()])
            .map_err(|e| tls(&e))?;
    params.distinguished_name.push(
        rcgen::DnType::CommonName,
        format!("{}@skiff-agent", api.node_name),
    );
    for a in &api.addresses {
        params.subject_alt_names.push(rcgen::SanType::IpAddress(*a));
    }
    let key = rcgen::KeyPair::generate().map_err(|e| tls(&e))?;
    let cert = params.self_signed(&key).map_err(|e| tls(&e))?;
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| tls(&e))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(
            vec![cert.der().clone()],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
        )
        .map_err(|e| tls(&e))?;
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(cfg)
}

/// Binds `addr` and serves until the returned task is dropped or aborted.
pub async fn serve(
    addr: SocketAddr,
    api: KubeletApi,
) -> Result<(SocketAddr, tokio::task::JoinHandle<()>), KubeletApiError> {
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls_config(&api)?));
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| KubeletApiError::Bind { addr, source })?;
    let local = listener
        .local_addr()
        .map_err(|source| KubeletApiError::Bind { addr, source })?;
    let api = Arc::new(api);
    let task = tokio::spawn(async move {
        loop {
            let (tcp, remote) = match listener.accept().await {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!("kubelet API accept: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let acceptor = acceptor.clone();
            let api = api.clone();
            tokio::spawn(async move {
                let tls = match acceptor.accept(tcp).await {
                    Ok(t) => t,
                    Err(e) => {
                        tracing::debug!("kubelet API TLS handshake with {remote}: {e}");
                        return;
                    }
                };
                let user = tls
                    .get_ref()
                    .1
                    .peer_certificates()
                    .and_then(|c| c.first())
                    .map(|c| common_name(c).unwrap_or_default());
                let svc = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                    let api = api.clone();
                    let user = user.clone();
                    async move { Ok::<_, std::convert::Infallible>(handle(&api, user, req).await) }
                });
                let io = hyper_util::rt::TokioIo::new(tls);
                let builder = hyper_util::server::conn::auto::Builder::new(
                    hyper_util::rt::TokioExecutor::new(),
                );
                if let Err(e) = builder.serve_connection(io, svc).await {
                    tracing::debug!("kubelet API connection from {remote}: {e}");
                }
            });
        }
    });
    Ok((local, task))
}

fn common_name(der: &CertificateDer<'_>) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let cn = cert.subject().iter_common_name().next()?.as_str().ok()?;
    Some(cn.to_string())
}

fn text(code: StatusCode, body: impl Into<Body>) -> Response<Body> {
    let mut r = Response::new(body.into());
    *r.status_mut() = code;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

async fn handle<B>(api: &KubeletApi, user: Option<String>, req: Request<B>) -> Response<Body> {
    let path = req.uri().path().to_string();
    let Some(user) = user else {
        return text(StatusCode::UNAUTHORIZED, "Unauthorized");
    };
    let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let (ns, pod, container) = match parts.as_slice() {
        ["containerLogs", ns, pod, container]
            if !ns.is_empty() && !pod.is_empty() && !container.is_empty() =>
        {
            (ns.to_string(), pod.to_string(), container.to_string())
        }
        _ => return text(StatusCode::NOT_FOUND, "404 page not found"),
    };
    if user != API_SERVER_USER {
        return text(
            StatusCode::FORBIDDEN,
            format!("Forbidden (user={user}, verb=get, resource=nodes, subresource(s)=[log])"),
        );
    }
    if req.method() != http::Method::GET {
        return text(StatusCode::METHOD_NOT_ALLOWED, "405 method not allowed");
    }
    let query = req.uri().query().unwrap_or("");
    let (opts, previous) = match parse_query(query) {
        Ok(x) => x,
        Err(e) => return text(StatusCode::BAD_REQUEST, e),
    };
    match container_logs(api, &ns, &pod, &container, opts, previous).await {
        Ok(body) => text(StatusCode::OK, body),
        Err((code, msg)) => text(code, msg),
    }
}

/// The kubelet's query (values as the API server sends them).
fn parse_query(query: &str) -> Result<(ReadOptions, bool), String> {
    let mut opts = ReadOptions::default();
    let mut previous = false;
    let mut since_seconds = None;
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let v = percent_decode(v);
        let flag = || match v.as_str() {
            "true" | "1" | "" => Ok(true),
            "false" | "0" => Ok(false),
            _ => Err(format!("{k}: {v:?} is not a boolean")),
        };
        let number = || {
            v.parse::<u64>()
                .map_err(|_| format!("{k}: {v:?} is not a non-negative integer"))
        };
        match k {
            "follow" => opts.follow = flag()?,
            "previous" => previous = flag()?,
            "timestamps" => opts.timestamps = flag()?,
            "tailLines" => opts.tail_lines = Some(number()?),
            "limitBytes" => opts.limit_bytes = Some(number()?),
            "sinceSeconds" => since_seconds = Some(number()?),
            "sinceTime" => {
                opts.since = Some(
                    v.parse()
                        .map_err(|_| format!("sinceTime: {v:?} is not an RFC 3339 time"))?,
                )
            }
            _ => {}
        }
    }
    if let Some(s) = since_seconds {
        let now = k8s_openapi::jiff::Timestamp::now();
        opts.since = Some(
            now.checked_sub(k8s_openapi::jiff::SignedDuration::from_secs(s as i64))
                .unwrap_or(k8s_openapi::jiff::Timestamp::UNIX_EPOCH),
        );
    }
    Ok((opts, previous))
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let hex = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match (
            b[i],
            b.get(i + 1).copied().and_then(hex),
            b.get(i + 2).copied().and_then(hex),
        ) {
            (b'%', Some(h), Some(l)) => {
                out.push(h << 4 | l);
                i += 3;
            }
            (b'+', _, _) => {
                out.push(b' ');
                i += 1;
            }
            (c, _, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn find_status<'a>(pod: &'a Pod, container: &str) -> Option<&'a ContainerStatus> {
    let s = pod.status.as_ref()?;
    [
        &s.container_statuses,
        &s.init_container_statuses,
        &s.ephemeral_container_statuses,
    ]
    .into_iter()
    .flatten()
    .flatten()
    .find(|c| c.name == container)
}

/// Is `container` running with `container_id`?
fn running_as(pod: &Pod, container: &str, container_id: &str) -> bool {
    find_status(pod, container).is_some_and(|c| {
        c.container_id.as_deref() == Some(container_id)
            && c.state.as_ref().is_some_and(|s| s.running.is_some())
    })
}

async fn container_logs(
    api: &KubeletApi,
    ns: &str,
    name: &str,
    container: &str,
    opts: ReadOptions,
    previous: bool,
) -> Result<Body, (StatusCode, String)> {
    let pods: kube::Api<Pod> = kube::Api::namespaced(api.client.clone(), ns);
    let pod = pods
        .get_opt(name)
        .await
        .map_err(|e| {
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("reading pod {ns}/{name} from the API server: {e}"),
            )
        })?
        .filter(|p| p.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some(&api.node_name))
        .ok_or_else(|| {
            (
                StatusCode::NOT_FOUND,
                format!("pod {name:?} does not exist"),
            )
        })?;
    let status = find_status(&pod, container).ok_or_else(|| {
        (
            StatusCode::BAD_REQUEST,
            format!("container {container:?} in pod {name:?} is not available"),
        )
    })?;
    let instance = logread::select_instance(name, status, previous)
        .map_err(|e| (StatusCode::BAD_REQUEST, e))?;
    // A mirror pod stands for a static pod, whose UID is the mirror annotation (the
    // kubelet's translation of mirror to static pod).
    let uid = pod
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(skiff_runtime::static_pods::CONFIG_MIRROR))
        .or(pod.metadata.uid.as_ref())
        .cloned()
        .unwrap_or_default();
    let dir = skiff_runtime::logs::pod_dir(&api.log_dir, ns, name, &uid).join(container);
    let Some(live) = logread::instance_log(&dir, instance) else {
        return Ok(Body::empty());
    };
    // Following is only meaningful for the running instance.
    let running = Arc::new(AtomicBool::new(false));
    let watched_id = match (instance, status.container_id.clone()) {
        (Instance::Latest, Some(id)) if opts.follow && running_as(&pod, container, &id) => {
            running.store(true, Ordering::SeqCst);
            Some(id)
        }
        _ => None,
    };
    let (tx, rx) = tokio::sync::mpsc::channel::<Vec<u8>>(16);
    if let Some(id) = watched_id {
        let (running, tx, container) = (running.clone(), tx.clone(), container.to_string());
        let name = name.to_string();
        tokio::spawn(async move {
            while running.load(Ordering::SeqCst) && !tx.is_closed() {
                tokio::time::sleep(FOLLOW_STATUS_PERIOD).await;
                match pods.get_opt(&name).await {
                    Ok(Some(p)) if running_as(&p, &container, &id) => {}
                    Ok(_) => running.store(false, Ordering::SeqCst),
                    // The API unreachable for a moment: keep following.
                    Err(e) => tracing::debug!("kubelet API: following {name}: {e}"),
                }
            }
        });
    }
    tokio::task::spawn_blocking(move || {
        let r = logread::read(
            &live,
            &opts,
            |chunk| tx.blocking_send(chunk.to_vec()).is_ok(),
            || running.load(Ordering::SeqCst),
        );
        // Stops the status checks.
        running.store(false, Ordering::SeqCst);
        if let Err(e) = r {
            tracing::warn!("kubelet API: reading {}: {e}", live.display());
        }
    });
    let stream = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|chunk| (Ok::<_, std::io::Error>(bytes_of(chunk)), rx))
    });
    Ok(Body::from_stream(stream))
}

fn bytes_of(v: Vec<u8>) -> axum::body::Bytes {
    axum::body::Bytes::from(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_as_the_api_server_sends_it() {
        let (o, prev) =
            parse_query("follow=true&previous=true&tailLines=3&limitBytes=10&sinceTime=2026-01-01T00%3A00%3A00Z&timestamps=true")
                .unwrap();
        assert!(o.follow && prev && o.timestamps);
        assert_eq!(o.tail_lines, Some(3));
        assert_eq!(o.limit_bytes, Some(10));
        assert_eq!(o.since.unwrap().to_string(), "2026-01-01T00:00:00Z");
        let (o, prev) = parse_query("sinceSeconds=60").unwrap();
        assert!(!prev && !o.follow);
        let age = k8s_openapi::jiff::Timestamp::now().duration_since(o.since.unwrap());
        assert!((59..=61).contains(&age.as_secs()), "{age:?}");
        assert!(parse_query("tailLines=-1").is_err());
        assert_eq!(percent_decode("a%3Ab%2"), "a:b%2");
    }
}
