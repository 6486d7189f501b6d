//! `GET /api/v1/namespaces/{ns}/pods/{name}/log`: `kubectl logs`, served as upstream's
//! pod log REST storage does, by proxying to the kubelet API of the pod's node
//! (`https://<InternalIP>:<daemonEndpoints.kubeletEndpoint.Port>/containerLogs/...`).
//!
//! The API server checks what it can from the Pod (it exists, which container, the
//! options) with upstream's messages; the agent then picks the container instance from
//! the status and reads the files (the kubelet's share, including the "is waiting to
//! start" errors). Towards the agent the server authenticates with its kubelet client
//! certificate ([`crate::pki::KUBELET_CLIENT_USER`]) and, like upstream without
//! `--kubelet-certificate-authority`, does not verify the agent's serving certificate.
//! The body streams through, so `follow=true` lasts as long as the agent keeps sending.

use std::{sync::Arc, time::Duration};

use axum::body::Body;
use axum::http::{header, Method, StatusCode};
use axum::response::Response;
use rustls::pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer, ServerName};
use serde_json::Value;
use skiff_api::status::{self as st, StatusError};

use crate::api::{get_object, AppState, Ctx, Target};

/// Upstream's default kubelet port (`--kubelet-port`), for a Node that reports none.
pub const DEFAULT_KUBELET_PORT: u16 = 10250;

/// How long connecting to a kubelet may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The TLS client configuration towards kubelet APIs.
pub(crate) fn kubelet_client_config(
    creds: &crate::pki::Credentials,
) -> Result<Arc<rustls::ClientConfig>, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let cert = CertificateDer::from_pem_slice(creds.kubelet_client_cert_pem.as_bytes())
        .map_err(|e| format!("kubelet client certificate: {e}"))?;
    let key = PrivateKeyDer::from_pem_slice(creds.kubelet_client_key_pem.as_bytes())
        .map_err(|e| format!("kubelet client key: {e}"))?;
    let cfg = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyServer(provider)))
        .with_client_auth_cert(vec![cert], key)
        .map_err(|e| format!("kubelet client certificate: {e}"))?;
    Ok(Arc::new(cfg))
}

/// Accepts any kubelet serving certificate (upstream's behaviour without
/// `--kubelet-certificate-authority`: kubelets' serving certificates are usually
/// self-signed), while still checking the handshake signatures.
#[derive(Debug)]
struct AnyServer(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AnyServer {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// The validated PodLogOptions, as the query sent to the kubelet.
fn kubelet_query(ctx: &Ctx) -> Result<String, StatusError> {
    let mut q: Vec<(&str, String)> = Vec::new();
    for flag in ["follow", "previous", "timestamps"] {
        match ctx.q(flag) {
            "" | "false" | "0" => {}
            "true" | "1" => q.push((flag, "true".into())),
            other => {
                return Err(st::bad_request(format!(
                    "{flag}: Invalid value: {other:?}: must be true or false"
                )))
            }
        }
    }
    let int = |name: &str, min: i64, rule: &str| -> Result<Option<i64>, StatusError> {
        match ctx.q(name) {
            "" => Ok(None),
            s => match s.parse::<i64>() {
                Ok(n) if n >= min => Ok(Some(n)),
                _ => Err(st::bad_request(format!(
                    "{name}: Invalid value: {s:?}: {rule}"
                ))),
            },
        }
    };
    let since_seconds = int("sinceSeconds", 1, "must be greater than 0")?;
    let tail = int("tailLines", 0, "must be greater than or equal to 0")?;
    let limit = int("limitBytes", 1, "must be greater than 0")?;
    let since_time = match ctx.q("sinceTime") {
        "" => None,
        s => Some(
            s.parse::<k8s_openapi::jiff::Timestamp>()
                .map_err(|_| {
                    st::bad_request(format!(
                        "sinceTime: Invalid value: {s:?}: must be an RFC 3339 time like 2026-01-02T15:04:05Z"
                    ))
                })?
                .to_string(),
        ),
    };
    if since_seconds.is_some() && since_time.is_some() {
        return Err(st::bad_request(
            "at most one of `sinceTime` or `sinceSeconds` may be specified",
        ));
    }
    if let Some(n) = since_seconds {
        q.push(("sinceSeconds", n.to_string()));
    }
    if let Some(t) = since_time {
        q.push(("sinceTime", t));
    }
    if let Some(n) = tail {
        q.push(("tailLines", n.to_string()));
    }
    if let Some(n) = limit {
        q.push(("limitBytes", n.to_string()));
    }
    Ok(q.iter()
        .map(|(k, v)| format!("{k}={}", urlencode(v)))
        .collect::<Vec<_>>()
        .join("&"))
}

fn urlencode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn names(pod: &Value, field: &str) -> Vec<String> {
    pod["spec"][field]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|c| c["name"].as_str().map(str::to_string))
        .collect()
}

/// Upstream's container choice for pods/log (`podLogLocation`).
fn container_of(pod: &Value, name: &str, requested: &str) -> Result<String, StatusError> {
    let containers = names(pod, "containers");
    let init = names(pod, "initContainers");
    let ephemeral = names(pod, "ephemeralContainers");
    if requested.is_empty() {
        if containers.len() == 1 && init.is_empty() && ephemeral.is_empty() {
            return Ok(containers[0].clone());
        }
        let mut msg = format!(
            "a container name must be specified for pod {name}, choose one of: [{}]",
            containers.join(" ")
        );
        if !init.is_empty() {
            msg.push_str(&format!(
                " or one of the init containers: [{}]",
                init.join(" ")
            ));
        }
        if !ephemeral.is_empty() {
            msg.push_str(&format!(
                " or one of the ephemeral containers: [{}]",
                ephemeral.join(" ")
            ));
        }
        return Err(st::bad_request(msg));
    }
    if containers
        .iter()
        .chain(&init)
        .chain(&ephemeral)
        .any(|c| c == requested)
    {
        Ok(requested.to_string())
    } else {
        Err(st::bad_request(format!(
            "container {requested} is not valid for pod {name}"
        )))
    }
}

/// The kubelet endpoint of a Node: its first InternalIP (else ExternalIP) and the
/// kubelet port it reports.
fn kubelet_endpoint(node: &Value, node_name: &str) -> Result<(String, u16), StatusError> {
    let addrs = node
        .pointer("/status/addresses")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let by_type = |ty: &str| {
        addrs
            .iter()
            .find(|a| a["type"] == ty)
            .and_then(|a| a["address"].as_str())
            .map(str::to_string)
    };
    let ip = by_type("InternalIP")
        .or_else(|| by_type("ExternalIP"))
        .ok_or_else(|| {
            st::internal_error(&format!(
                "node {node_name:?} reports no InternalIP or ExternalIP address: its kubelet cannot be reached"
            ))
        })?;
    let port = node
        .pointer("/status/daemonEndpoints/kubeletEndpoint/Port")
        .and_then(Value::as_u64)
        .and_then(|p| u16::try_from(p).ok())
        .filter(|p| *p != 0)
        .unwrap_or(DEFAULT_KUBELET_PORT);
    Ok((ip, port))
}

pub(crate) async fn get(state: &AppState, t: &Target, ctx: &Ctx) -> Result<Response, StatusError> {
    if ctx.method != Method::GET {
        return Err(st::method_not_supported(t.gr(), "create"));
    }
    let name = t.name.clone().unwrap_or_default();
    let ns = t.ns.clone().unwrap_or_default();
    let (pod, _) = get_object(state, t).await?;
    let container = container_of(&pod, &name, ctx.q("container"))?;
    let query = kubelet_query(ctx)?;
    let node_name = pod
        .pointer("/spec/nodeName")
        .and_then(Value::as_str)
        .unwrap_or("");
    if node_name.is_empty() {
        // Upstream: no location, an empty stream.
        return Ok(plain(StatusCode::OK, Body::empty()));
    }
    let node_kv = state
        .store
        .get(&format!("/registry/nodes/{node_name}"))
        .await
        .map_err(|e| st::internal_error(&e.to_string()))?
        .ok_or_else(|| {
            st::not_found(
                st::GroupResource {
                    group: "",
                    resource: "nodes",
                },
                node_name,
            )
        })?;
    let node: Value = serde_json::from_slice(&node_kv.value)
        .map_err(|e| st::internal_error(&format!("decoding node {node_name}: {e}")))?;
    let (ip, port) = kubelet_endpoint(&node, node_name)?;
    let host = if ip.contains(':') {
        format!("[{ip}]:{port}")
    } else {
        format!("{ip}:{port}")
    };
    let path = format!("/containerLogs/{ns}/{name}/{container}");
    let path_q = if query.is_empty() {
        path
    } else {
        format!("{path}?{query}")
    };
    let url = format!("https://{host}{path_q}");
    let resp = fetch(&state.kubelet_tls, &host, &ip, &path_q)
        .await
        .map_err(|e| st::internal_error(&format!("Get {url:?}: {e}")))?;
    let code = resp.status();
    if code.is_success() {
        let body = Body::new(resp.into_body());
        return Ok(plain(StatusCode::OK, body));
    }
    let bytes = axum::body::to_bytes(Body::new(resp.into_body()), 64 * 1024)
        .await
        .unwrap_or_default();
    let text = String::from_utf8_lossy(&bytes).trim().to_string();
    Err(match code.as_u16() {
        400 | 404 => {
            let mut e = st::bad_request(text);
            if code == StatusCode::NOT_FOUND {
                e.code = 404;
                e.body["code"] = serde_json::json!(404);
                e.body["reason"] = serde_json::json!("NotFound");
            }
            e
        }
        401 | 403 => st::internal_error(&format!(
            "the kubelet API of node {node_name:?} refused the API server's client certificate (HTTP {code}): {text}"
        )),
        _ => st::internal_error(&format!("Get {url:?}: HTTP {code}: {text}")),
    })
}

fn plain(code: StatusCode, body: Body) -> Response {
    let mut r = Response::new(body);
    *r.status_mut() = code;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain"),
    );
    r
}

/// One HTTP/1.1 GET over TLS; the connection lives as long as the response body.
async fn fetch(
    tls: &Arc<rustls::ClientConfig>,
    host: &str,
    ip: &str,
    path: &str,
) -> Result<hyper::Response<hyper::body::Incoming>, String> {
    let tcp = tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::TcpStream::connect(host))
        .await
        .map_err(|_| format!("dial tcp {host}: i/o timeout"))?
        .map_err(|e| format!("dial tcp {host}: {e}"))?;
    let _ = tcp.set_nodelay(true);
    let server_name = ServerName::try_from(ip.to_string()).map_err(|e| e.to_string())?;
    let stream = tokio_rustls::TlsConnector::from(tls.clone())
        .connect(server_name, tcp)
        .await
        .map_err(|e| format!("TLS handshake with {host}: {e}"))?;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .map_err(|e| e.to_string())?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!("kubelet connection: {e}");
        }
    });
    let req = hyper::Request::get(path)
        .header(header::HOST, host)
        .body(axum::body::Body::empty())
        .map_err(|e| e.to_string())?;
    sender.send_request(req).await.map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn container_choice_as_upstream() {
        let pod = json!({"spec": {"containers": [{"name": "a"}, {"name": "b"}], "initContainers": [{"name": "i"}]}});
        assert_eq!(
            container_of(&pod, "p", "").unwrap_err().message(),
            "a container name must be specified for pod p, choose one of: [a b] or one of the init containers: [i]"
        );
        assert_eq!(container_of(&pod, "p", "i").unwrap(), "i");
        assert_eq!(
            container_of(&pod, "p", "x").unwrap_err().message(),
            "container x is not valid for pod p"
        );
        let one = json!({"spec": {"containers": [{"name": "only"}]}});
        assert_eq!(container_of(&one, "p", "").unwrap(), "only");
    }

    #[test]
    fn endpoint_prefers_internal_ip_and_defaults_the_port() {
        let node = json!({"status": {"addresses": [{"type": "Hostname", "address": "n"}, {"type": "InternalIP", "address": "10.0.0.2"}]}});
        assert_eq!(
            kubelet_endpoint(&node, "n").unwrap(),
            ("10.0.0.2".to_string(), 10250)
        );
        let node = json!({"status": {"addresses": [{"type": "InternalIP", "address": "10.0.0.2"}],
                          "daemonEndpoints": {"kubeletEndpoint": {"Port": 11250}}}});
        assert_eq!(kubelet_endpoint(&node, "n").unwrap().1, 11250);
        assert!(kubelet_endpoint(&json!({}), "n").is_err());
    }
}
