//! The HTTP API: authentication, discovery, CRUD, subresources and lists. Watches are in
//! [`crate::watch`], OpenAPI documents in [`crate::openapi`].
//!
//! Storage layout follows kube-apiserver: `/registry/<resource>/<namespace>/<name>` for
//! namespaced objects and `/registry/<resource>/<name>` for cluster-scoped ones; an
//! object's `resourceVersion` is the store's `mod_revision` of its key (it is not stored
//! in the value, it is set on every read).

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::Response;
use axum::Router;
use base64::Engine;
use bytes::Bytes;
use rustls::pki_types::CertificateDer;
use serde_json::{json, Value};
use skiff_api::resources::{self, ApiPath, ResourceInfo, Subresource};
use skiff_api::status::{self as st, GroupResource, StatusError};
use skiff_api::unknown_fields::FieldValidation;
use skiff_api::{apply, defaults, patch, selector, table, unknown_fields, validation};
use skiff_store::{KeyValue, ListOptions, Store, StoreError};

use crate::server::{ConnInfo, Identity};
use crate::util::{self, now_rfc3339, parse_query};

/// Upstream's request body limit (`--max-request-body-bytes` default, 3 MiB).
pub const MAX_BODY_BYTES: usize = 3 * 1024 * 1024;

/// The version `/version` reports: the Kubernetes API level skiff-api's semantics follow.
pub const KUBE_MINOR: &str = "33";

pub struct AppState {
    pub store: Arc<dyn Store>,
    admin_token: String,
    pub(crate) ca_pem: String,
    pub(crate) join_secret: String,
    pub(crate) data_dir: std::path::PathBuf,
    /// The URL clients use (written into the kubeconfigs this server hands out).
    pub(crate) server_url: String,
    admin_cert: CertificateDer<'static>,
    server_address: String,
    service_cidr: crate::alloc::ServiceCidr,
    alloc: crate::alloc::Allocator,
    /// How long a watch without `timeoutSeconds` lasts.
    pub(crate) watch_timeout: std::time::Duration,
    pub(crate) cache: crate::cache::WatchCache,
    // kubectl logs: the TLS client (with the kubelet client certificate) towards agents.
    pub(crate) kubelet_tls: Arc<rustls::ClientConfig>,
}

impl AppState {
    pub fn new(
        store: Arc<dyn Store>,
        config: &crate::server::Config,
        creds: &crate::pki::Credentials,
        admin_cert: CertificateDer<'static>,
        server_address: String,
        server_url: String,
    ) -> Arc<AppState> {
        Arc::new(AppState {
            cache: crate::cache::WatchCache::new(store.clone(), config.watch_cache),
            alloc: crate::alloc::Allocator::new(
                store.clone(),
                config.service_cidr,
                config.node_port_range,
            ),
            store,
            admin_token: creds.admin_token.clone(),
            ca_pem: creds.ca_pem.clone(),
            join_secret: crate::pki::join_secret(&creds.join_token).to_string(),
            data_dir: config.data_dir.clone(),
            server_url,
            admin_cert,
            server_address,
            service_cidr: config.service_cidr,
            watch_timeout: config.min_request_timeout,
            // kubectl logs
            kubelet_tls: crate::pod_logs::kubelet_client_config(creds)
                .expect("the kubelet client certificate issued at startup is valid"),
        })
    }

    /// Creates the namespaces upstream's apiserver always has, and the `default/kubernetes`
    /// Service (ClusterIP: the range's first address) with its EndpointSlice and Endpoints
    /// pointing at this server (upstream's bootstrap controller and endpoint reconciler).
    pub async fn bootstrap(&self, endpoint_ip: std::net::IpAddr, port: u16) {
        self.bootstrap_namespaces().await;
        let ip = self.service_cidr.kubernetes_ip().to_string();
        let meta = |labels: Value| {
            json!({
                "name": "kubernetes", "namespace": "default", "uid": util::uuid_v4(),
                "creationTimestamp": now_rfc3339(), "generation": 1, "labels": labels,
            })
        };
        let svc = json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": meta(json!({"component": "apiserver", "provider": "kubernetes"})),
            "spec": {
                "type": "ClusterIP", "clusterIP": ip, "clusterIPs": [ip],
                "ports": [{"name": "https", "port": 443, "protocol": "TCP", "targetPort": port}],
                "sessionAffinity": "None", "ipFamilies": ["IPv4"], "ipFamilyPolicy": "SingleStack",
                "internalTrafficPolicy": "Cluster",
            },
            "status": {"loadBalancer": {}},
        });
        let family = if endpoint_ip.is_ipv4() {
            "IPv4"
        } else {
            "IPv6"
        };
        let slice = json!({
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": meta(json!({
                "kubernetes.io/service-name": "kubernetes",
                "endpointslice.kubernetes.io/managed-by": "endpointslicemirroring-controller.k8s.io",
            })),
            "addressType": family,
            "endpoints": [{"addresses": [endpoint_ip.to_string()], "conditions": {"ready": true}}],
            "ports": [{"name": "https", "port": port, "protocol": "TCP"}],
        });
        let endpoints = json!({
            "apiVersion": "v1", "kind": "Endpoints",
            "metadata": meta(json!({"endpointslice.kubernetes.io/skip-mirror": "true"})),
            "subsets": [{
                "addresses": [{"ip": endpoint_ip.to_string()}],
                "ports": [{"name": "https", "port": port, "protocol": "TCP"}],
            }],
        });
        // The Service is created once (its ClusterIP never changes); the endpoints follow
        // this start's address and port.
        self.put_system_object("/registry/services/default/kubernetes", svc, false)
            .await;
        self.put_system_object("/registry/endpointslices/default/kubernetes", slice, true)
            .await;
        self.put_system_object("/registry/endpoints/default/kubernetes", endpoints, true)
            .await;
        self.repair_allocations().await;
    }

    /// One pass of the ClusterIP / NodePort repair (see `alloc`), logged.
    pub async fn repair_allocations(&self) {
        match self.alloc.repair().await {
            Ok(r) => {
                for k in &r.restored {
                    tracing::info!("allocation repair: restored the reservation {k}");
                }
                for k in &r.leaked {
                    tracing::info!("allocation repair: released the leaked reservation {k}");
                }
                for d in &r.duplicates {
                    tracing::warn!(
                        "allocation repair: {d}; delete or change one of these Services"
                    );
                }
            }
            Err(e) => tracing::warn!("allocation repair failed: {e} (retried in 3 minutes)"),
        }
    }

    /// Creates `obj` at `key` if absent; with `reconcile`, replaces the content fields of
    /// an existing one when they differ (keeping its metadata).
    async fn put_system_object(&self, key: &str, obj: Value, reconcile: bool) {
        match self.store.get(key).await {
            Ok(None) => {
                if let Err(e) = self.store.create(key, to_bytes(&obj)).await {
                    tracing::warn!("creating {key}: {e}");
                }
            }
            Ok(Some(kv)) if reconcile => {
                let Ok(mut cur) = serde_json::from_slice::<Value>(&kv.value) else {
                    return;
                };
                let mut changed = false;
                for (k, v) in obj.as_object().into_iter().flatten() {
                    if k != "metadata" && cur.get(k) != Some(v) {
                        cur[k] = v.clone();
                        changed = true;
                    }
                }
                if changed {
                    if let Err(e) = self
                        .store
                        .update(key, to_bytes(&cur), Some(kv.mod_revision))
                        .await
                    {
                        tracing::warn!("updating {key}: {e}");
                    }
                }
            }
            Ok(Some(_)) => {}
            Err(e) => tracing::warn!("reading {key}: {e}"),
        }
    }

    async fn bootstrap_namespaces(&self) {
        for ns in ["default", "kube-system", "kube-public", "kube-node-lease"] {
            let key = format!("/registry/namespaces/{ns}");
            let obj = json!({
                "apiVersion": "v1", "kind": "Namespace",
                "metadata": {
                    "name": ns, "uid": util::uuid_v4(), "creationTimestamp": now_rfc3339(),
                    "labels": {"kubernetes.io/metadata.name": ns},
                },
                "spec": {"finalizers": ["kubernetes"]},
                "status": {"phase": "Active"},
            });
            match self.store.get(&key).await {
                Ok(Some(_)) => {}
                Ok(None) => {
                    if let Err(e) = self.store.create(&key, to_bytes(&obj)).await {
                        if !matches!(e, StoreError::AlreadyExists { .. }) {
                            tracing::warn!("creating namespace {ns}: {e}");
                        }
                    }
                }
                Err(e) => tracing::warn!("reading namespace {ns}: {e}"),
            }
        }
    }

    fn authenticate(&self, headers: &HeaderMap, conn: Option<&ConnInfo>) -> Identity {
        if let Some(auth) = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
        {
            if let Some(token) = auth.strip_prefix("Bearer ") {
                // Constant-time comparison: the token is a password.
                let a = token.trim().as_bytes();
                let b = self.admin_token.as_bytes();
                let mut diff = a.len() ^ b.len();
                for (x, y) in a.iter().zip(b.iter()) {
                    diff |= (x ^ y) as usize;
                }
                if diff == 0 {
                    return Identity::Admin;
                }
                return Identity::Anonymous;
            }
        }
        // rustls already verified that a presented certificate chains to the cluster CA.
        match conn.and_then(|c| c.client_cert.as_ref()) {
            Some(c) if *c == self.admin_cert => Identity::Admin,
            Some(c) => match crate::pki::node_of_certificate(c) {
                Some(node) => Identity::Node(node),
                None => Identity::OtherCertificate,
            },
            None => Identity::Anonymous,
        }
    }
}

pub fn router(state: Arc<AppState>) -> Router {
    Router::new().fallback(handle).with_state(state)
}

// ---------------------------------------------------------------------------------------
// Responses

pub(crate) fn to_bytes(v: &Value) -> Bytes {
    Bytes::from(serde_json::to_vec(v).unwrap_or_default())
}

pub(crate) fn json_response(code: u16, v: &Value) -> Response {
    let mut r = Response::new(Body::from(to_bytes(v)));
    *r.status_mut() = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

pub(crate) fn status_response(e: StatusError) -> Response {
    json_response(e.code, &e.body)
}

pub(crate) fn text(code: StatusCode, body: impl Into<Body>) -> Response {
    let mut r = Response::new(body.into());
    *r.status_mut() = code;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

fn store_error(e: StoreError) -> StatusError {
    match e {
        StoreError::Compacted { .. } => st::expired(format!("too old resource version: {e}")),
        other => st::internal_error(&other.to_string()),
    }
}

// ---------------------------------------------------------------------------------------
// Request context

pub(crate) struct Ctx {
    pub method: Method,
    pub query: HashMap<String, String>,
    pub accept: String,
    pub content_type: String,
    pub user_agent: String,
    pub body: Bytes,
    pub identity: Identity,
}

impl Ctx {
    pub fn q(&self, k: &str) -> &str {
        self.query.get(k).map(String::as_str).unwrap_or("")
    }

    fn dry_run(&self) -> Result<bool, StatusError> {
        match self.q("dryRun") {
            "" => Ok(false),
            "All" => Ok(true),
            other => Err(st::bad_request(format!(
                "dryRun: Unsupported value: {other:?}: supported values: \"All\""
            ))),
        }
    }

    /// `fieldManager`, or upstream's default: the user agent's program name.
    fn manager(&self) -> String {
        let m = self.q("fieldManager");
        if !m.is_empty() {
            return m.to_string();
        }
        let ua = self.user_agent.split('/').next().unwrap_or("").trim();
        if ua.is_empty() {
            "unknown".into()
        } else {
            ua.chars().take(128).collect()
        }
    }

    pub fn wants_table(&self) -> bool {
        self.accept
            .split(',')
            .next()
            .is_some_and(|first| first.contains("as=Table"))
    }

    pub fn include_object(&self) -> Result<table::IncludeObject, StatusError> {
        table::IncludeObject::parse(self.q("includeObject")).ok_or_else(|| {
            st::bad_request(format!(
                "includeObject: Unsupported value: {:?}: supported values: \"None\", \"Metadata\", \"Object\"",
                self.q("includeObject")
            ))
        })
    }

    /// Decodes the body as an object: JSON, or YAML for `application/yaml`.
    fn body_object(&self) -> Result<Value, StatusError> {
        let ct = self.content_type.split(';').next().unwrap_or("").trim();
        let v: Value = match ct {
            "" | "application/json" | "*/*" => serde_json::from_slice(&self.body)
                .map_err(|e| st::bad_request(format!("the request body is not valid JSON: {e}")))?,
            "application/yaml" | "application/apply-patch+yaml" => parse_yaml(&self.body)?,
            crate::protobuf::MEDIA_TYPE => decode_protobuf(&self.body)?,
            other => {
                let mut e = st::unsupported_media_type(BODY_MEDIA_TYPES);
                e.body["message"] = json!(format!(
                    "the body of the request was in an unknown format - accepted media types include: {} (got {other})",
                    BODY_MEDIA_TYPES.join(", ")
                ));
                return Err(e);
            }
        };
        if !v.is_object() {
            return Err(st::bad_request(
                "the request body must be a JSON object (a Kubernetes object with apiVersion, kind and metadata)",
            ));
        }
        Ok(v)
    }
}

/// The media types an object body (POST, PUT) may have.
const BODY_MEDIA_TYPES: &[&str] = &[
    "application/json",
    "application/yaml",
    crate::protobuf::MEDIA_TYPE,
];

/// A protobuf body as JSON: malformed bytes are a 400, a kind without a protobuf
/// definition here a 415 naming it.
fn decode_protobuf(body: &[u8]) -> Result<Value, StatusError> {
    use crate::protobuf::DecodeError;
    crate::protobuf::decode(body).map_err(|e| match &e {
        DecodeError::Malformed { .. } => st::bad_request(e.to_string()),
        DecodeError::UnknownKind { .. } | DecodeError::Unsupported(_) => {
            let mut s = st::unsupported_media_type(BODY_MEDIA_TYPES);
            s.body["message"] = json!(e.to_string());
            s
        }
    })
}

fn parse_yaml(body: &[u8]) -> Result<Value, StatusError> {
    serde_norway::from_slice::<Value>(body)
        .map_err(|e| st::bad_request(format!("the request body is not valid YAML: {e}")))
}

// ---------------------------------------------------------------------------------------
// Dispatch

async fn handle(State(state): State<Arc<AppState>>, req: Request) -> Response {
    let started = std::time::Instant::now();
    let (parts, body) = req.into_parts();
    let path = parts.uri.path().to_string();
    // Upstream lets anyone read health (system:public-info-viewer); everything else needs
    // credentials.
    match path.as_str() {
        "/healthz" | "/livez" => return text(StatusCode::OK, "ok"),
        "/readyz" => {
            return match state.store.current_revision().await {
                Ok(_) => text(StatusCode::OK, "ok"),
                Err(e) => {
                    tracing::warn!("readyz: store: {e}");
                    text(StatusCode::SERVICE_UNAVAILABLE, "store not ready")
                }
            };
        }
        _ => {}
    }
    if path == "/cacerts" {
        // Public, as k3s's: a joining agent checks it against the hash in its join token.
        return text(StatusCode::OK, state.ca_pem.clone());
    }
    let identity = state.authenticate(&parts.headers, parts.extensions.get::<ConnInfo>());
    let body = match read_body(body).await {
        Ok(b) => b,
        Err(e) => return status_response(e),
    };
    if path == crate::join::JOIN_PATH {
        return crate::join::handle(&state, &parts.method, &parts.headers, &body).await;
    }
    match &identity {
        Identity::Admin | Identity::Node(_) => {}
        Identity::Anonymous => return status_response(st::unauthorized("")),
        Identity::OtherCertificate => {
            return status_response(st::forbidden(
                GroupResource {
                    group: "",
                    resource: "",
                },
                "",
                "this client certificate names neither the cluster admin nor a node (system:node:<name> in group system:nodes)",
            ));
        }
    }
    // cp helper: watch cache metrics
    if path == "/metrics" && parts.method == axum::http::Method::GET {
        // Upstream serves /metrics to authorized users (the admin here).
        if !matches!(identity, Identity::Admin) {
            return status_response(st::forbidden(
                GroupResource {
                    group: "",
                    resource: "",
                },
                "",
                "only the cluster admin may read /metrics",
            ));
        }
        // cpbench: the in-process controllers' metrics follow the watch cache's.
        return text(
            StatusCode::OK,
            state.cache.metrics() + &crate::extra_metrics(),
        );
        // end cpbench
    }
    // end cp helper
    let h = |n: header::HeaderName| {
        parts
            .headers
            .get(n)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string()
    };
    let ctx = Ctx {
        method: parts.method.clone(),
        query: parse_query(parts.uri.query()),
        accept: h(header::ACCEPT),
        content_type: h(header::CONTENT_TYPE),
        user_agent: h(header::USER_AGENT),
        body,
        identity,
    };
    let method = ctx.method.clone();
    let query = parts.uri.query().unwrap_or("").to_string();
    let r = match route(&state, &path, ctx).await {
        Ok(r) => r,
        Err(e) => status_response(e),
    };
    // Access log (RUST_LOG=skiff_apiserver=debug); watch responses log when they start.
    // `ms` is the handler's time up to the response head (body streaming not included).
    tracing::debug!(
        %method,
        path,
        query,
        status = r.status().as_u16(),
        ms = started.elapsed().as_secs_f64() * 1e3,
        "request"
    );
    r
}

/// Reads a request body up to [`MAX_BODY_BYTES`]. A larger body is answered with 413 after
/// draining up to [`DRAIN_BYTES`] of it: answering and closing while an HTTP/1.1 client is
/// still writing makes it fail with a broken pipe instead of reading the Status.
async fn read_body(body: Body) -> Result<Bytes, StatusError> {
    use futures::StreamExt;
    let mut stream = body.into_data_stream();
    let mut buf = bytes::BytesMut::new();
    let mut total = 0usize;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| st::bad_request(format!("reading the request body: {e}")))?;
        total += chunk.len();
        if total <= MAX_BODY_BYTES {
            buf.extend_from_slice(&chunk);
        } else if total > DRAIN_BYTES {
            break;
        }
    }
    if total > MAX_BODY_BYTES {
        return Err(st::request_entity_too_large(&format!(
            "limit is {MAX_BODY_BYTES}"
        )));
    }
    Ok(buf.freeze())
}

/// How much of an oversized body is read (and discarded) before answering 413.
const DRAIN_BYTES: usize = 4 * MAX_BODY_BYTES;

fn not_found_path(path: &str) -> StatusError {
    let mut e = st::bad_request(format!(
        "the server could not find the requested resource ({path})"
    ));
    e.code = 404;
    e.body["code"] = json!(404);
    e.body["reason"] = json!("NotFound");
    e
}

async fn route(state: &Arc<AppState>, path: &str, ctx: Ctx) -> Result<Response, StatusError> {
    if path == "/version" {
        return Ok(json_response(200, &version()));
    }
    if path == "/openapi/v2" || path.starts_with("/openapi/") {
        return crate::openapi::serve(path, &ctx);
    }
    let api = resources::parse_path(path).map_err(|_| not_found_path(path))?;
    let read_only = |v: Option<Value>| -> Result<Response, StatusError> {
        if ctx.method != Method::GET {
            return Err(method_not_allowed(&ctx.method));
        }
        v.map(|v| json_response(200, &v))
            .ok_or_else(|| not_found_path(path))
    };
    match api {
        ApiPath::CoreVersions => read_only(Some(resources::api_versions(&state.server_address))),
        ApiPath::Groups => read_only(Some(resources::api_group_list())),
        ApiPath::Group(g) => read_only(resources::api_group(&g)),
        ApiPath::GroupVersion { group, version } => {
            read_only(resources::api_resource_list(&group, &version))
        }
        ApiPath::Resource {
            resource,
            namespace,
            name,
            subresource,
        } => {
            let t = Target {
                r: resource,
                ns: namespace,
                name,
            };
            resource_request(state, t, subresource, ctx).await
        }
    }
}

fn method_not_allowed(m: &Method) -> StatusError {
    let mut e = st::bad_request(format!(
        "the server does not allow this method on the requested resource ({m})"
    ));
    e.code = 405;
    e.body["code"] = json!(405);
    e.body["reason"] = json!("MethodNotAllowed");
    e
}

pub fn version() -> Value {
    json!({
        "major": "1",
        "minor": KUBE_MINOR,
        "gitVersion": format!("v1.{KUBE_MINOR}.0-skiff.{}", env!("CARGO_PKG_VERSION")),
        "gitCommit": "",
        "gitTreeState": "",
        "buildDate": "",
        "goVersion": "",
        "compiler": "rustc",
        "platform": "linux/amd64",
    })
}

/// What a resource request addresses.
#[derive(Clone)]
pub(crate) struct Target {
    pub r: &'static ResourceInfo,
    pub ns: Option<String>,
    pub name: Option<String>,
}

impl Target {
    pub fn gr(&self) -> GroupResource<'static> {
        GroupResource {
            group: self.r.group,
            resource: self.r.plural,
        }
    }

    /// The key prefix of the collection this request lists or watches.
    pub fn prefix(&self) -> String {
        match (&self.ns, self.r.namespaced) {
            (Some(ns), true) => format!("/registry/{}/{ns}/", self.r.plural),
            _ => format!("/registry/{}/", self.r.plural),
        }
    }

    fn key(&self, name: &str) -> String {
        match &self.ns {
            Some(ns) if self.r.namespaced => format!("/registry/{}/{ns}/{name}", self.r.plural),
            _ => format!("/registry/{}/{name}", self.r.plural),
        }
    }

    fn name(&self) -> &str {
        self.name.as_deref().unwrap_or("")
    }
}

async fn resource_request(
    state: &Arc<AppState>,
    t: Target,
    sub: Option<&'static Subresource>,
    ctx: Ctx,
) -> Result<Response, StatusError> {
    let m = ctx.method.clone();
    let sub_name = sub.map(|s| s.name);
    if let Identity::Node(node) = &ctx.identity {
        crate::authz::authorize_node(state, node, &t, sub_name, &ctx).await?;
    }
    if t.r.namespaced && t.ns.is_none() && !(m == Method::GET && t.name.is_none()) {
        // Only list and watch work across namespaces.
        return Err(st::method_not_supported(t.gr(), verb_of(&m)));
    }
    match (t.name.is_some(), sub_name) {
        (false, None) => match m {
            Method::GET => {
                if matches!(ctx.q("watch"), "true" | "1") {
                    crate::watch::watch(state, &t, &ctx).await
                } else {
                    list(state, &t, &ctx).await
                }
            }
            Method::POST => create(state, &t, &ctx).await,
            Method::DELETE => delete_collection(state, &t, &ctx).await,
            _ => Err(st::method_not_supported(t.gr(), verb_of(&m))),
        },
        (true, None) => match m {
            Method::GET => get(state, &t, &ctx).await,
            Method::PUT => write_existing(state, &t, &ctx, Mode::Main).await,
            Method::PATCH => write_existing(state, &t, &ctx, Mode::Main).await,
            Method::DELETE => delete(state, &t, &ctx).await,
            _ => Err(st::method_not_supported(t.gr(), verb_of(&m))),
        },
        (true, Some("status")) => match m {
            Method::GET => get(state, &t, &ctx).await,
            Method::PUT | Method::PATCH => write_existing(state, &t, &ctx, Mode::Status).await,
            _ => Err(st::method_not_supported(t.gr(), verb_of(&m))),
        },
        (true, Some("scale")) => match m {
            Method::GET => {
                let (obj, _) = get_object(state, &t).await?;
                Ok(json_response(200, &scale_of(&obj)))
            }
            Method::PUT | Method::PATCH => write_existing(state, &t, &ctx, Mode::Scale).await,
            _ => Err(st::method_not_supported(t.gr(), verb_of(&m))),
        },
        (true, Some("binding")) if m == Method::POST => binding(state, &t, &ctx).await,
        // kubectl logs: proxied to the node's kubelet API.
        (true, Some("log")) => crate::pod_logs::get(state, &t, &ctx).await,
        (true, Some("finalize")) if m == Method::PUT => {
            write_existing(state, &t, &ctx, Mode::Finalize).await
        }
        _ => Err(st::method_not_supported(t.gr(), verb_of(&m))),
    }
}

fn verb_of(m: &Method) -> &'static str {
    match *m {
        Method::GET => "get",
        Method::POST => "create",
        Method::PUT => "update",
        Method::PATCH => "patch",
        Method::DELETE => "delete",
        _ => "this method",
    }
}

// ---------------------------------------------------------------------------------------
// Reads

/// Decodes a stored value and sets its `resourceVersion`.
pub(crate) fn decode_kv(kv: &KeyValue, rv: u64) -> Value {
    let mut v: Value = serde_json::from_slice(&kv.value).unwrap_or_else(|e| {
        tracing::error!("stored object {} is not JSON: {e}", kv.key);
        json!({})
    });
    set_rv(&mut v, rv);
    v
}

pub(crate) fn set_rv(v: &mut Value, rv: u64) {
    if let Some(meta) = v.get_mut("metadata").and_then(Value::as_object_mut) {
        meta.insert("resourceVersion".into(), json!(rv.to_string()));
    }
}

pub(crate) async fn get_object(state: &AppState, t: &Target) -> Result<(Value, u64), StatusError> {
    let kv = state
        .store
        .get(&t.key(t.name()))
        .await
        .map_err(store_error)?
        .ok_or_else(|| st::not_found(t.gr(), t.name()))?;
    Ok((decode_kv(&kv, kv.mod_revision), kv.mod_revision))
}

fn object_response(code: u16, t: &Target, obj: &Value, ctx: &Ctx) -> Result<Response, StatusError> {
    if ctx.wants_table() && ctx.method == Method::GET {
        let rv = obj
            .pointer("/metadata/resourceVersion")
            .and_then(Value::as_str)
            .unwrap_or("");
        let tb = table::table(
            t.r.kind,
            std::slice::from_ref(obj),
            rv,
            ctx.include_object()?,
            util::now_unix(),
        );
        return Ok(json_response(code, &tb));
    }
    Ok(json_response(code, obj))
}

async fn get(state: &AppState, t: &Target, ctx: &Ctx) -> Result<Response, StatusError> {
    let (obj, _) = get_object(state, t).await?;
    object_response(200, t, &obj, ctx)
}

pub(crate) struct Selectors {
    pub label: selector::LabelMatcher,
    pub field: selector::FieldMatcher,
}

impl Selectors {
    pub fn parse(t: &Target, ctx: &Ctx) -> Result<Selectors, StatusError> {
        let label = selector::parse_label_selector(ctx.q("labelSelector"))
            .map_err(|e| st::bad_request(format!("unable to parse requirement: {e}")))?;
        let field = selector::parse_field_selector(ctx.q("fieldSelector"), t.r.kind)
            .map_err(|e| st::bad_request(e.to_string()))?;
        Ok(Selectors { label, field })
    }

    pub fn everything(&self) -> bool {
        self.label.is_everything() && self.field.is_everything()
    }

    pub fn matches(&self, obj: &Value) -> bool {
        self.label.matches_object(obj) && self.field.matches(obj)
    }

    /// [`Self::matches`] on the watch cache's attributes of an object.
    pub fn matches_attrs(&self, attrs: &selector::SelectionAttrs) -> bool {
        self.label.matches_attrs(attrs) && self.field.matches_attrs(attrs)
    }
}

fn continue_token(rv: u64, start: &str) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(to_bytes(
        &json!({"v": "meta.k8s.io/v1", "rv": rv, "start": start}),
    ))
}

fn parse_continue(token: &str) -> Result<(u64, String), StatusError> {
    let bad = || {
        st::bad_request(format!(
            "continue key is not valid: {token:?} (start the list again without continue)"
        ))
    };
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(token.trim_end_matches('='))
        .map_err(|_| bad())?;
    let v: Value = serde_json::from_slice(&raw).map_err(|_| bad())?;
    let rv = v.get("rv").and_then(Value::as_u64).ok_or_else(bad)?;
    let start = v.get("start").and_then(Value::as_str).ok_or_else(bad)?;
    Ok((rv, start.to_string()))
}

fn parse_rv(s: &str) -> Result<u64, StatusError> {
    s.parse::<u64>().map_err(|_| {
        st::bad_request(format!(
            "invalid resource version {s:?}: resourceVersion must be an unsigned integer"
        ))
    })
}

/// How long a LIST waits for the watch cache to reach the revision it must serve before
/// it reads the store instead (upstream's cacher waits the same 3 s, `blockTimeout`).
pub(crate) const CACHE_WAIT: std::time::Duration = std::time::Duration::from_secs(3);

/// Which snapshot a LIST reads, per upstream's `resourceVersion`/`resourceVersionMatch`
/// rules, and so who answers it (KEP-2340, consistent reads from cache).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ListAt {
    /// Unset: the most recent state. The cache answers once it has caught up with the
    /// store's current revision (bounded wait), else the store.
    Latest,
    /// `0`: any state; the cache's, whatever it has (the store's before it is filled).
    Any,
    /// `N` (`NotOlderThan`, the default for a set version): the cache once it has reached
    /// `N`; a version the store has not reached is 504 Too large resource version.
    NotOlderThan(u64),
    /// `N` with `Exact`: that snapshot, from the store.
    Exact(u64),
    /// A continue token's revision: that snapshot, from the cache while its window still
    /// holds it, else from the store (410 once compacted).
    Continue(u64),
}

fn list_at(ctx: &Ctx) -> Result<ListAt, StatusError> {
    let rv = ctx.q("resourceVersion");
    let rvm = ctx.q("resourceVersionMatch");
    if rv.is_empty() {
        if !rvm.is_empty() {
            return Err(st::bad_request(
                "resourceVersionMatch is forbidden unless resourceVersion is provided",
            ));
        }
        return Ok(ListAt::Latest);
    }
    let n = parse_rv(rv)?;
    match rvm {
        "Exact" => {
            if n == 0 {
                return Err(st::bad_request(
                    "resourceVersionMatch \"exact\" is forbidden for resourceVersion \"0\"",
                ));
            }
            Ok(ListAt::Exact(n))
        }
        "" | "NotOlderThan" if n == 0 => Ok(ListAt::Any),
        "" | "NotOlderThan" => Ok(ListAt::NotOlderThan(n)),
        other => Err(st::bad_request(format!(
            "resourceVersionMatch: Unsupported value: {other:?}: supported values: \"Exact\", \"NotOlderThan\""
        ))),
    }
}

fn too_large(n: u64, cur: u64) -> StatusError {
    let mut e = st::bad_request(format!("Too large resource version: {n}, current: {cur}"));
    e.code = 504;
    e.body["code"] = json!(504);
    e.body["reason"] = json!("Timeout");
    e
}

fn continue_too_old() -> StatusError {
    st::expired(
        "The provided continue parameter is too old to display a consistent list result. You can start a new list without the continue parameter.",
    )
}

/// One listed object, JSON as a GET returns it: read from the store (encoded as soon as
/// the selectors have seen it, so a LIST of 10k objects holds 10k small buffers, not 10k
/// decoded trees), or shared with the watch cache.
pub(crate) enum ListItem {
    Encoded(Bytes),
    Cached(Arc<crate::cache::CachedObject>),
}

impl ListItem {
    pub fn json(&self) -> &[u8] {
        match self {
            ListItem::Encoded(b) => b,
            ListItem::Cached(c) => &c.json,
        }
    }

    pub fn into_value(self) -> Value {
        serde_json::from_slice(self.json()).unwrap_or_default()
    }

    fn write_json(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(self.json());
    }
}

/// Matching objects of a collection, paginated, and the list's revision.
pub(crate) struct ListPage {
    pub items: Vec<ListItem>,
    pub revision: u64,
    pub continue_token: Option<String>,
    pub remaining: Option<u64>,
    /// Whether the watch cache answered (for tests and the access log).
    pub from_cache: bool,
}

impl ListPage {
    pub fn into_values(self) -> Vec<Value> {
        self.items.into_iter().map(ListItem::into_value).collect()
    }
}

/// A page of a collection read as `at` says: from the watch cache where it can answer,
/// else from the store. Both give the same page for the same revision: the continue token
/// is the revision and the last key looked at, whoever answered.
pub(crate) async fn list_objects(
    state: &AppState,
    t: &Target,
    sel: &Selectors,
    at: ListAt,
    limit: Option<usize>,
    continue_after: Option<String>,
) -> Result<ListPage, StatusError> {
    let cache = &state.cache;
    let cached_at = match at {
        ListAt::Latest => {
            let cur = state.store.current_revision().await.map_err(store_error)?;
            cache.wait_for(cur, CACHE_WAIT).await.then_some(None)
        }
        ListAt::Any => cache.ready().map(|_| None),
        ListAt::NotOlderThan(n) => {
            let reached = cache.ready().is_some_and(|r| r >= n) || {
                let cur = state.store.current_revision().await.map_err(store_error)?;
                if n > cur {
                    return Err(too_large(n, cur));
                }
                cache.wait_for(n, CACHE_WAIT).await
            };
            reached.then_some(None)
        }
        ListAt::Exact(_) => None,
        ListAt::Continue(r) => {
            if cache.ready().is_some_and(|c| c < r) {
                // A token from another server or from the store: wait for it briefly.
                cache.wait_for(r, CACHE_WAIT).await;
            }
            Some(Some(r))
        }
    };
    if let Some(rev) = cached_at {
        let root = format!("/registry/{}/", t.r.plural);
        let matches = |attrs: &selector::SelectionAttrs| sel.matches_attrs(attrs);
        if let Some(page) = cache.list(
            &root,
            &t.prefix(),
            rev,
            &matches,
            limit,
            continue_after.as_deref(),
        ) {
            if let ListAt::Continue(r) = at {
                // The store's compaction decides what is too old, as for watches, so that
                // clients see one rule whatever answers them.
                let compacted = state
                    .store
                    .compacted_revision()
                    .await
                    .map_err(store_error)?;
                if r < compacted {
                    return Err(continue_too_old());
                }
            }
            let remaining = page.continue_after.is_some() && sel.everything();
            return Ok(ListPage {
                continue_token: page
                    .continue_after
                    .as_deref()
                    .map(|k| continue_token(page.revision, k)),
                remaining: remaining.then_some(page.remaining),
                items: page.items.into_iter().map(ListItem::Cached).collect(),
                revision: page.revision,
                from_cache: true,
            });
        }
    }
    let revision = match at {
        ListAt::Exact(n) | ListAt::Continue(n) => Some(n),
        _ => None,
    };
    list_from_store(state, t, sel, revision, limit, continue_after).await
}

async fn list_from_store(
    state: &AppState,
    t: &Target,
    sel: &Selectors,
    revision: Option<u64>,
    limit: Option<usize>,
    continue_after: Option<String>,
) -> Result<ListPage, StatusError> {
    let prefix = t.prefix();
    let mut items = Vec::new();
    let mut after = continue_after;
    let mut rev = revision;
    loop {
        let want = limit.map(|l| l.saturating_sub(items.len()).max(1));
        let page = state
            .store
            .list(
                &prefix,
                ListOptions {
                    revision: rev,
                    limit: want,
                    continue_after: after.clone(),
                },
            )
            .await
            .map_err(|e| match e {
                StoreError::Compacted { .. } => continue_too_old(),
                other => store_error(other),
            })?;
        rev = Some(page.revision);
        let n = page.items.len();
        for (i, kv) in page.items.iter().enumerate() {
            let obj = decode_kv(kv, kv.mod_revision);
            if sel.matches(&obj) {
                items.push(ListItem::Encoded(to_bytes(&obj)));
            }
            after = Some(kv.key.clone());
            if let Some(l) = limit {
                if items.len() >= l {
                    let more = i + 1 < n || page.more();
                    let remaining = if sel.everything() {
                        Some(page.remaining + (n - i - 1) as u64)
                    } else {
                        None
                    };
                    return Ok(ListPage {
                        items,
                        revision: page.revision,
                        continue_token: more.then(|| continue_token(page.revision, &kv.key)),
                        remaining: if more { remaining } else { None },
                        from_cache: false,
                    });
                }
            }
        }
        if !page.more() || n == 0 {
            return Ok(ListPage {
                items,
                revision: page.revision,
                continue_token: None,
                remaining: None,
                from_cache: false,
            });
        }
    }
}

async fn list(state: &AppState, t: &Target, ctx: &Ctx) -> Result<Response, StatusError> {
    let sel = Selectors::parse(t, ctx)?;
    let limit = match ctx.q("limit") {
        "" => None,
        l => Some(l.parse::<usize>().map_err(|_| {
            st::bad_request(format!(
                "limit: Invalid value: {l:?}: must be a non-negative integer"
            ))
        })?)
        .filter(|l| *l > 0),
    };
    let (at, after) = match ctx.q("continue") {
        "" => (list_at(ctx)?, None),
        c => {
            let (rv, start) = parse_continue(c)?;
            (ListAt::Continue(rv), Some(start))
        }
    };
    let page = list_objects(state, t, &sel, at, limit, after).await?;
    let rv = page.revision.to_string();
    let continue_token = page.continue_token.clone();
    if ctx.wants_table() {
        let mut tb = table::table(
            t.r.kind,
            &page.into_values(),
            &rv,
            ctx.include_object()?,
            util::now_unix(),
        );
        if let Some(c) = &continue_token {
            tb["metadata"]["continue"] = json!(c);
        }
        return Ok(json_response(200, &tb));
    }
    let mut meta = json!({"resourceVersion": rv});
    if let Some(c) = continue_token {
        meta["continue"] = json!(c);
    }
    if let Some(r) = page.remaining {
        meta["remainingItemCount"] = json!(r);
    }
    // The items are written as they are (the cache holds them encoded), after the list's
    // own fields.
    let head = json!({
        "kind": format!("{}List", t.r.kind),
        "apiVersion": t.r.api_version(),
        "metadata": meta,
    });
    let items_len: usize = page.items.iter().map(|i| i.json().len() + 1).sum();
    let mut body = Vec::with_capacity(items_len + 256);
    let _ = serde_json::to_writer(&mut body, &head);
    body.pop(); // the closing brace
    body.extend_from_slice(b",\"items\":[");
    for (i, item) in page.items.iter().enumerate() {
        if i > 0 {
            body.push(b',');
        }
        item.write_json(&mut body);
    }
    body.extend_from_slice(b"]}");
    let mut r = Response::new(Body::from(body));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    if page.from_cache {
        // Which path answered, for tests and debugging (upstream has no such header).
        r.headers_mut()
            .insert("x-skiff-list-from", HeaderValue::from_static("cache"));
    } else {
        r.headers_mut()
            .insert("x-skiff-list-from", HeaderValue::from_static("store"));
    }
    Ok(r)
}

// ---------------------------------------------------------------------------------------
// Writes

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// The main resource: `.status` changes are ignored when a status subresource exists.
    Main,
    /// `/status`: only `.status` changes.
    Status,
    /// `/scale`: only `.spec.replicas` changes.
    Scale,
    /// `namespaces/<name>/finalize`: only `.spec.finalizers` changes.
    Finalize,
}

/// Checks `apiVersion`/`kind` of a body against the resource (filling them in when
/// absent, as upstream's decoder defaults them from the URL).
fn check_type(obj: &mut Value, api_version: &str, kind: &str) -> Result<(), StatusError> {
    let av = obj
        .get("apiVersion")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    let k = obj
        .get("kind")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    if !av.is_empty() && av != api_version {
        return Err(st::bad_request(format!(
            "the API version in the data ({av}) does not match the expected API version ({api_version})"
        )));
    }
    if !k.is_empty() && k != kind {
        return Err(st::bad_request(format!(
            "the kind in the data ({k}) does not match the expected kind ({kind})"
        )));
    }
    obj["apiVersion"] = json!(api_version);
    obj["kind"] = json!(kind);
    Ok(())
}

/// `fieldValidation`: Strict fails, Warn returns `Warning` header values.
fn field_validation(
    ctx: &Ctx,
    kind: &str,
    api_version: &str,
    raw: &Value,
) -> Result<Vec<String>, StatusError> {
    let mode = FieldValidation::parse(ctx.q("fieldValidation"))?;
    if mode == FieldValidation::Ignore {
        return Ok(Vec::new());
    }
    let unknown = unknown_fields::find_unknown_fields(kind, raw);
    if unknown.is_empty() {
        return Ok(Vec::new());
    }
    match mode {
        FieldValidation::Strict => Err(unknown_fields::strict_error(kind, api_version, &unknown)),
        _ => Ok(unknown_fields::warnings(&unknown)),
    }
}

fn with_warnings(mut r: Response, warnings: &[String]) -> Response {
    for w in warnings {
        // RFC 7234 warning format, as upstream: `299 - "<text>"`, with `"` and `\`
        // escaped inside the quoted string (client-go unescapes them).
        let v = format!("299 - \"{}\"", w.replace('\\', "\\\\").replace('"', "\\\""));
        if let Ok(hv) = HeaderValue::from_str(&v) {
            r.headers_mut().append("Warning", hv);
        }
    }
    r
}

fn defaulted(kind: &str, obj: &Value) -> Result<Value, StatusError> {
    defaults::apply_defaults(kind, obj).map_err(|e| st::bad_request(e.message))
}

fn validate_create(r: &ResourceInfo, obj: &Value) -> Result<(), StatusError> {
    let errs = validation::validate(r.kind, obj).map_err(|e| st::bad_request(e.message))?;
    if errs.is_empty() {
        Ok(())
    } else {
        Err(st::invalid(r.group, r.kind, name_of(obj), &errs))
    }
}

fn validate_update(r: &ResourceInfo, old: &Value, new: &Value) -> Result<(), StatusError> {
    let errs =
        validation::validate_update(r.kind, old, new).map_err(|e| st::bad_request(e.message))?;
    if errs.is_empty() {
        Ok(())
    } else {
        Err(st::invalid(r.group, r.kind, name_of(new), &errs))
    }
}

fn name_of(obj: &Value) -> &str {
    obj.pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or("")
}

fn has_status(r: &ResourceInfo) -> bool {
    r.subresource("status").is_some()
}

fn meta_mut(obj: &mut Value) -> &mut serde_json::Map<String, Value> {
    if !obj.get("metadata").is_some_and(Value::is_object) {
        obj["metadata"] = json!({});
    }
    obj["metadata"]
        .as_object_mut()
        .expect("metadata is an object")
}

/// Status on create, per upstream's strategies' `PrepareForCreate`.
fn reset_status_for_create(r: &ResourceInfo, obj: &mut Value) {
    match r.kind {
        // Nodes may set status on create (the kubelet registers with it).
        "Node" => {}
        "Namespace" => {
            obj["status"] = json!({"phase": "Active"});
            // Upstream's PrepareForCreate: every namespace carries the `kubernetes`
            // finalizer, which the namespace controller removes once it has emptied it.
            let mut fs = namespace_finalizers(obj);
            if !fs.contains(&json!("kubernetes")) {
                fs.push(json!("kubernetes"));
            }
            obj["spec"]["finalizers"] = Value::Array(fs);
        }
        "Pod" => obj["status"] = json!({"phase": "Pending"}),
        _ if has_status(r) => {
            if let Some(m) = obj.as_object_mut() {
                m.remove("status");
            }
            if r.kind == "Service" {
                obj["status"] = json!({"loadBalancer": {}});
            }
        }
        _ => {}
    }
}

/// Everything but metadata and status: a change here bumps `metadata.generation`.
fn spec_part(obj: &Value) -> Value {
    let mut v = obj.clone();
    if let Some(m) = v.as_object_mut() {
        m.remove("metadata");
        m.remove("status");
    }
    v
}

async fn namespace_exists(state: &AppState, t: &Target) -> Result<(), StatusError> {
    let Some(ns) = t.ns.as_deref().filter(|_| t.r.namespaced) else {
        return Ok(());
    };
    // Upstream's NamespaceLifecycle admission reads its informer's cache and asks the
    // store only when the cache does not have the namespace (it may have just been
    // created): one store round trip less per create.
    let key = format!("/registry/namespaces/{ns}");
    let obj = match state.cache.current("/registry/namespaces/", &key) {
        Some(cached) => Some(serde_json::from_slice::<Value>(&cached.json).unwrap_or_default()),
        None => state
            .store
            .get(&key)
            .await
            .map_err(store_error)?
            .map(|kv| decode_kv(&kv, kv.mod_revision)),
    };
    match obj {
        None => Err(st::not_found(
            GroupResource {
                group: "",
                resource: "namespaces",
            },
            ns,
        )),
        Some(obj) => {
            if obj.pointer("/metadata/deletionTimestamp").is_some() {
                // Upstream's NamespaceLifecycle admission.
                return Err(st::forbidden(
                    t.gr(),
                    "",
                    &format!("unable to create new content in namespace {ns} because it is being terminated"),
                ));
            }
            Ok(())
        }
    }
}

async fn create(state: &AppState, t: &Target, ctx: &Ctx) -> Result<Response, StatusError> {
    let mut obj = ctx.body_object()?;
    let dry = ctx.dry_run()?;
    check_type(&mut obj, &t.r.api_version(), t.r.kind)?;
    resources::ensure_namespace(&mut obj, t.ns.as_deref())?;
    let warnings = field_validation(ctx, t.r.kind, &t.r.api_version(), &obj)?;
    let obj = create_object(state, t, obj, Some(&ctx.manager()), dry).await?;
    Ok(with_warnings(json_response(201, &obj), &warnings))
}

/// The create path shared by POST and apply-creates: defaults, generateName, system
/// metadata, validation, storage. `manager` None: managedFields are already set (apply).
async fn create_object(
    state: &AppState,
    t: &Target,
    obj: Value,
    manager: Option<&str>,
    dry: bool,
) -> Result<Value, StatusError> {
    let mut obj = defaulted(t.r.kind, &obj)?;
    {
        let meta = meta_mut(&mut obj);
        let name = meta
            .get("name")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        let gen = meta
            .get("generateName")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        if name.is_empty() && !gen.is_empty() {
            let rnd = util::uuid_v4();
            let mut bytes = rnd.bytes().cycle();
            let generated = skiff_api::names::generate_name(&gen, |n| {
                bytes.next().map(|b| b as usize % n.max(1)).unwrap_or(0)
            });
            meta.insert("name".into(), json!(generated));
        }
        meta.insert("uid".into(), json!(util::uuid_v4()));
        meta.insert("creationTimestamp".into(), json!(now_rfc3339()));
        meta.insert("generation".into(), json!(1));
        for f in [
            "resourceVersion",
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
            "selfLink",
        ] {
            meta.remove(f);
        }
    }
    reset_status_for_create(t.r, &mut obj);
    validate_create(t.r, &obj)?;
    namespace_exists(state, t).await?;
    let allocating = t.r.kind == "Service";
    // A Service create that loses a free value to a concurrent create allocates again.
    let unallocated = allocating.then(|| obj.clone());
    let mut races = 0;
    // cp helper: one store round trip per Service create. The first attempt takes the
    // values this server's hint does not know as taken for free without reading them;
    // losing that bet (another server holds one) is not a race and costs one attempt
    // more, read from the store.
    let mut trust_hint = !dry;
    loop {
        let reservation = if allocating {
            Some(if trust_hint {
                state.alloc.on_create_trusting_hint(&mut obj).await?
            } else {
                state.alloc.on_create(&mut obj, dry).await?
            })
        } else {
            None
        };
        if let Some(m) = manager {
            obj = apply::record_update(t.r.kind, None, &obj, m, &t.r.api_version(), &now_rfc3339());
        }
        let name = name_of(&obj).to_string();
        let key = t.key(&name);
        if dry {
            if state.store.get(&key).await.map_err(store_error)?.is_some() {
                return Err(st::already_exists(t.gr(), &name));
            }
            return Ok(obj);
        }
        let created = match reservation {
            // The Service and its reservations in one write; a rejected create leaves
            // nothing behind, not even its ClusterIP reservation.
            Some(r) => match state.alloc.create_with(r, &key, to_bytes(&obj)).await {
                Ok(rev) => Ok(rev),
                Err(crate::alloc::CreateFailed::Raced { key: taken }) => {
                    if !std::mem::take(&mut trust_hint) {
                        races += 1;
                    }
                    if races >= ALLOCATION_RACES {
                        return Err(st::internal_error(&format!(
                            "failed to allocate: {taken} was taken by a concurrent create \
                             {races} times in a row; retry the request"
                        )));
                    }
                    if let Some(o) = &unallocated {
                        obj = o.clone();
                    }
                    continue;
                }
                Err(crate::alloc::CreateFailed::Store(e)) => Err(e),
            },
            None => state.store.create(&key, to_bytes(&obj)).await,
        };
        let rev = created.map_err(|e| match e {
            StoreError::AlreadyExists { .. } => st::already_exists(t.gr(), &name),
            other => store_error(other),
        })?;
        set_rv(&mut obj, rev);
        return Ok(obj);
    }
}

/// Allocations a Service create retries when concurrent creates take the free values it
/// picked (each retry skips the values it lost).
const ALLOCATION_RACES: usize = 4;

/// The new state of an object after a PUT or PATCH of `mode`, before system fields.
fn requested_state(
    t: &Target,
    ctx: &Ctx,
    mode: Mode,
    current: &Value,
) -> Result<(Value, Vec<String>, bool), StatusError> {
    let av = t.r.api_version();
    let kind = t.r.kind;
    // (object, warnings, manager-already-recorded)
    if mode == Mode::Scale {
        let cur_scale = scale_of(current);
        let new_scale = if ctx.method == Method::PUT {
            ctx.body_object()?
        } else {
            let pt = patch::PatchType::from_content_type(&ctx.content_type)
                .filter(|p| *p != patch::PatchType::Apply)
                .ok_or_else(|| unsupported_patch(&ctx.content_type))?;
            let p: Value = serde_json::from_slice(&ctx.body)
                .map_err(|e| st::bad_request(format!("the patch is not valid JSON: {e}")))?;
            patch::apply_patch("Scale", pt, &cur_scale, &p)
                .map_err(|e| st::bad_request(e.message))?
        };
        check_precondition(t, &new_scale, current)?;
        let replicas = new_scale
            .pointer("/spec/replicas")
            .cloned()
            .unwrap_or(json!(0));
        if !replicas.is_i64() || replicas.as_i64().unwrap_or(-1) < 0 {
            let errs = vec![skiff_api::field::FieldError::invalid(
                "spec.replicas",
                replicas.clone(),
                "must be greater than or equal to 0",
            )];
            return Err(st::invalid("autoscaling", "Scale", t.name(), &errs));
        }
        let mut obj = current.clone();
        obj["spec"]["replicas"] = replicas;
        return Ok((obj, Vec::new(), false));
    }
    if ctx.method == Method::PUT {
        let mut obj = ctx.body_object()?;
        check_type(&mut obj, &av, kind)?;
        resources::ensure_namespace(&mut obj, t.ns.as_deref())?;
        resources::ensure_name(&obj, t.name())?;
        let warnings = field_validation(ctx, kind, &av, &obj)?;
        check_precondition(t, &obj, current)?;
        return Ok((obj, warnings, false));
    }
    let pt = patch::PatchType::from_content_type(&ctx.content_type)
        .ok_or_else(|| unsupported_patch(&ctx.content_type))?;
    if pt == patch::PatchType::Apply {
        let mut cfg = ctx.body_object_as_yaml()?;
        check_type(&mut cfg, &av, kind)?;
        resources::ensure_namespace(&mut cfg, t.ns.as_deref())?;
        resources::ensure_name(&cfg, t.name())?;
        let warnings = field_validation(ctx, kind, &av, &cfg)?;
        let manager = ctx.q("fieldManager");
        let force = ctx.q("force") == "true";
        let mut base = current.clone();
        if mode == Mode::Status {
            // Apply to /status touches only status.
            if let Some(s) = cfg.get("status").cloned() {
                base["status"] = s;
            }
            return Ok((base, warnings, false));
        }
        let out = apply::apply(kind, Some(&base), &cfg, manager, &now_rfc3339(), force)
            .map_err(|e| e.status())?;
        return Ok((out, warnings, true));
    }
    let p: Value = serde_json::from_slice(&ctx.body)
        .map_err(|e| st::bad_request(format!("the patch is not valid JSON: {e}")))?;
    let out = patch::apply_patch(kind, pt, current, &p).map_err(|e| {
        let mut err = st::bad_request(e.message.clone());
        if e.message.contains("test") {
            err.code = 422;
            err.body["code"] = json!(422);
            err.body["reason"] = json!("Invalid");
        }
        err
    })?;
    let warnings = field_validation(ctx, kind, &av, &out)?;
    check_precondition(t, &out, current)?;
    Ok((out, warnings, false))
}

impl Ctx {
    fn body_object_as_yaml(&self) -> Result<Value, StatusError> {
        // apply-patch+yaml bodies are YAML (kubectl sends JSON, which is YAML too).
        let v = parse_yaml(&self.body)?;
        if !v.is_object() {
            return Err(st::bad_request(
                "the applied configuration must be a YAML or JSON object",
            ));
        }
        Ok(v)
    }
}

fn unsupported_patch(ct: &str) -> StatusError {
    let mut e = st::unsupported_media_type(&[
        "application/json-patch+json",
        "application/merge-patch+json",
        "application/strategic-merge-patch+json",
        "application/apply-patch+yaml",
    ]);
    e.body["message"] = json!(format!(
        "the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml, application/strategic-merge-patch+json (got {ct:?})"
    ));
    e
}

/// A `metadata.resourceVersion` in the request must be the current one (optimistic
/// concurrency); none means an unconditional update.
fn check_precondition(t: &Target, new: &Value, current: &Value) -> Result<(), StatusError> {
    let want = new
        .pointer("/metadata/resourceVersion")
        .and_then(Value::as_str)
        .unwrap_or("");
    let have = current
        .pointer("/metadata/resourceVersion")
        .and_then(Value::as_str)
        .unwrap_or("");
    if !want.is_empty() && want != have {
        return Err(st::resource_version_conflict(t.gr(), t.name()));
    }
    Ok(())
}

/// PUT, PATCH (including apply, which may create), on the main resource or a subresource.
async fn write_existing(
    state: &AppState,
    t: &Target,
    ctx: &Ctx,
    mode: Mode,
) -> Result<Response, StatusError> {
    let dry = ctx.dry_run()?;
    let is_apply = ctx.method == Method::PATCH
        && patch::PatchType::from_content_type(&ctx.content_type) == Some(patch::PatchType::Apply);
    if is_apply && ctx.q("fieldManager").is_empty() {
        return Err(st::bad_request(
            "PATCH requests with apply content type require fieldManager: set the fieldManager query parameter",
        ));
    }
    // Patches are retried on a concurrent write, as upstream's GuaranteedUpdate does; a
    // PUT with a resourceVersion fails with 409 instead.
    //
    // cp helper: the first attempt starts from the watch cache's state, as upstream's
    // cacher passes its cached object to GuaranteedUpdate: the write's compare-and-swap
    // on that version is what makes it safe. Whatever the cached state decides on its own
    // (not found, nothing to change, a conflict, a rejection) is decided again from the
    // store, so a cache that lags changes no answer, only costs a round trip.
    let root = format!("/registry/{}/", t.r.plural);
    let mut try_cache = !dry;
    for _attempt in 0..9 {
        let cached = if std::mem::take(&mut try_cache) {
            state.cache.current(&root, &t.key(t.name())).and_then(|c| {
                let v: Value = serde_json::from_slice(&c.json).ok()?;
                let rv = v
                    .pointer("/metadata/resourceVersion")?
                    .as_str()?
                    .parse()
                    .ok()?;
                Some((v, rv))
            })
        } else {
            None
        };
        let from_cache = cached.is_some();
        // On a rejection from the cached state, the store's state decides.
        macro_rules! or_retry {
            ($e:expr) => {
                match $e {
                    Ok(v) => v,
                    Err(_) if from_cache => continue,
                    Err(e) => return Err(e),
                }
            };
        }
        let (current, mod_revision) = match cached {
            Some(c) => c,
            None => match state
                .store
                .get(&t.key(t.name()))
                .await
                .map_err(store_error)?
            {
                Some(kv) => (decode_kv(&kv, kv.mod_revision), kv.mod_revision),
                None => (Value::Null, 0),
            },
        };
        if current.is_null() {
            if is_apply && mode == Mode::Main {
                let mut cfg = ctx.body_object_as_yaml()?;
                check_type(&mut cfg, &t.r.api_version(), t.r.kind)?;
                resources::ensure_namespace(&mut cfg, t.ns.as_deref())?;
                resources::ensure_name(&cfg, t.name())?;
                let warnings = field_validation(ctx, t.r.kind, &t.r.api_version(), &cfg)?;
                let applied = apply::apply(
                    t.r.kind,
                    None,
                    &cfg,
                    ctx.q("fieldManager"),
                    &now_rfc3339(),
                    ctx.q("force") == "true",
                )
                .map_err(|e| e.status())?;
                let obj = create_object(state, t, applied, None, dry).await?;
                return Ok(with_warnings(json_response(201, &obj), &warnings));
            }
            return Err(st::not_found(t.gr(), t.name()));
        }
        let (requested, warnings, recorded) = or_retry!(requested_state(t, ctx, mode, &current));
        let mut new = or_retry!(finish_update(t, ctx, mode, &current, requested, recorded));
        // Node ports / healthCheckNodePort a changed Service spec now needs, reserved
        // before the write and released again if it does not commit.
        let (reservation, freed) = if t.r.kind == "Service" && mode == Mode::Main {
            or_retry!(state.alloc.on_update(&current, &mut new, dry).await)
        } else {
            Default::default()
        };
        if without_managed_fields(&new) == without_managed_fields(&current) && !dry {
            if from_cache {
                // "Nothing to change" is only true of the store's current state.
                state.alloc.release(reservation.keys).await;
                continue;
            }
            // Nothing changed: upstream skips the write and keeps the resourceVersion.
            let body = if mode == Mode::Scale {
                scale_of(&current)
            } else {
                current
            };
            return Ok(with_warnings(json_response(200, &body), &warnings));
        }
        if dry {
            let body = if mode == Mode::Scale {
                scale_of(&new)
            } else {
                new
            };
            return Ok(with_warnings(json_response(200, &body), &warnings));
        }
        let mut stored = new.clone();
        if let Some(m) = stored.get_mut("metadata").and_then(Value::as_object_mut) {
            m.remove("resourceVersion");
        }
        // Removing the last finalizer of an object being deleted deletes it — unless it
        // is in a graceful deletion (a pod with deletionGracePeriodSeconds > 0): then its
        // kubelet's final DELETE with grace 0 removes it, and a status write meanwhile
        // must not (upstream's `deletionFinalizersForGarbageCollection` / graceful
        // deletion rules). Otherwise a terminating pod vanishes at its first status
        // update, cutting short the serving+terminating window of its endpoint.
        let graceful = new
            .pointer("/metadata/deletionGracePeriodSeconds")
            .and_then(Value::as_i64)
            .is_some_and(|g| g > 0);
        let finalize = new.pointer("/metadata/deletionTimestamp").is_some()
            && finalizers(&new).is_empty()
            && namespace_finalizers(&new).is_empty()
            && !graceful;
        let result = if finalize {
            state
                .store
                .delete(&t.key(t.name()), Some(mod_revision))
                .await
                .map(|(rev, _)| rev)
        } else {
            state
                .store
                .update(&t.key(t.name()), to_bytes(&stored), Some(mod_revision))
                .await
        };
        if result.is_err() {
            state.alloc.release(reservation.keys).await;
        } else if finalize && t.r.kind == "Service" {
            state.alloc.on_delete(&new).await;
        } else {
            state.alloc.release(freed).await;
        }
        match result {
            Ok(rev) => {
                let mut out = new;
                set_rv(&mut out, rev);
                let body = if mode == Mode::Scale {
                    scale_of(&out)
                } else {
                    out
                };
                return Ok(with_warnings(json_response(200, &body), &warnings));
            }
            Err(StoreError::Conflict { .. }) => {
                if !from_cache
                    && ctx.method == Method::PUT
                    && requested_rv(ctx).is_some_and(|rv| !rv.is_empty())
                {
                    return Err(st::resource_version_conflict(t.gr(), t.name()));
                }
                continue;
            }
            Err(StoreError::NotFound { .. }) if from_cache => continue,
            Err(StoreError::NotFound { .. }) => return Err(st::not_found(t.gr(), t.name())),
            Err(e) => return Err(store_error(e)),
        }
    }
    Err(st::conflict(
        t.gr(),
        t.name(),
        "the object kept changing; please apply your changes to the latest version and try again",
    ))
}

fn without_managed_fields(obj: &Value) -> Value {
    let mut v = obj.clone();
    if let Some(m) = v.get_mut("metadata").and_then(Value::as_object_mut) {
        m.remove("managedFields");
    }
    v
}

fn requested_rv(ctx: &Ctx) -> Option<String> {
    let v: Value = serde_json::from_slice(&ctx.body).ok()?;
    v.pointer("/metadata/resourceVersion")
        .and_then(Value::as_str)
        .map(str::to_string)
}

/// A Namespace's `spec.finalizers` (upstream's `ShouldDeleteNamespaceDuringUpdate`: a
/// terminating namespace goes when these and `metadata.finalizers` are both empty).
fn namespace_finalizers(obj: &Value) -> Vec<Value> {
    obj.pointer("/spec/finalizers")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default()
}

fn finalizers(obj: &Value) -> Vec<Value> {
    obj.pointer("/metadata/finalizers")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default()
}

/// Defaults, system metadata, status handling, generation, validation and managedFields
/// for an update from `current` to `requested`.
fn finish_update(
    t: &Target,
    ctx: &Ctx,
    mode: Mode,
    current: &Value,
    requested: Value,
    recorded: bool,
) -> Result<Value, StatusError> {
    let kind = t.r.kind;
    let mut requested = requested;
    if kind == "Service" && mode == Mode::Main {
        keep_allocated_values(current, &mut requested);
        drop_type_dependent_fields(current, &mut requested);
    }
    let mut new = defaulted(kind, &requested)?;
    // Status subresource semantics (upstream's strategies' PrepareForUpdate).
    match mode {
        Mode::Main if has_status(t.r) => match current.get("status") {
            Some(s) => new["status"] = s.clone(),
            None => {
                if let Some(m) = new.as_object_mut() {
                    m.remove("status");
                }
            }
        },
        Mode::Status => {
            let mut base = current.clone();
            match new.get("status") {
                Some(s) => base["status"] = s.clone(),
                None => {
                    if let Some(m) = base.as_object_mut() {
                        m.remove("status");
                    }
                }
            }
            new = base;
        }
        Mode::Finalize => {
            // Upstream's namespace finalize strategy: the request's spec.finalizers, the
            // rest as stored.
            let mut base = current.clone();
            base["spec"]["finalizers"] = new
                .pointer("/spec/finalizers")
                .cloned()
                .unwrap_or_else(|| json!([]));
            new = base;
        }
        _ => {}
    }
    if kind == "Namespace" && mode != Mode::Finalize {
        // Upstream's namespace strategies: spec.finalizers change only through /finalize.
        match current.pointer("/spec/finalizers") {
            Some(f) => new["spec"]["finalizers"] = f.clone(),
            None => {
                if let Some(spec) = new.get_mut("spec").and_then(Value::as_object_mut) {
                    spec.remove("finalizers");
                }
            }
        }
    }
    // System fields clients cannot change.
    {
        let cur_meta = current
            .get("metadata")
            .cloned()
            .unwrap_or_else(|| json!({}));
        let meta = meta_mut(&mut new);
        for f in [
            "uid",
            "creationTimestamp",
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
            "generation",
            "resourceVersion",
        ] {
            match cur_meta.get(f) {
                Some(v) => {
                    meta.insert(f.into(), v.clone());
                }
                None => {
                    meta.remove(f);
                }
            }
        }
        if !recorded {
            if let Some(mf) = cur_meta.get("managedFields") {
                meta.insert("managedFields".into(), mf.clone());
            }
        }
    }
    if spec_part(&new) != spec_part(current) {
        let g = current
            .pointer("/metadata/generation")
            .and_then(Value::as_i64)
            .unwrap_or(0);
        new["metadata"]["generation"] = json!(g + 1);
    }
    if current.pointer("/metadata/deletionTimestamp").is_some() {
        // Upstream: no new finalizers once deletion started.
        let old: Vec<Value> = finalizers(current);
        if finalizers(&new).iter().any(|f| !old.contains(f)) {
            let errs = vec![skiff_api::field::FieldError::forbidden(
                "metadata.finalizers",
                "no new finalizers can be added if the object is being deleted",
            )];
            return Err(st::invalid(t.r.group, kind, t.name(), &errs));
        }
    }
    validate_update(t.r, current, &new)?;
    if !recorded {
        let manager = ctx.manager();
        new = apply::record_update(
            kind,
            Some(current),
            &new,
            &manager,
            &t.r.api_version(),
            &now_rfc3339(),
        );
    }
    Ok(new)
}

/// Upstream's `dropTypeDependentFields`: a type change (say LoadBalancer → ClusterIP by a
/// patch that only sets `type`) drops the fields the new type does not have, where the
/// user left them as they were: node ports, healthCheckNodePort, externalTrafficPolicy,
/// allocateLoadBalancerNodePorts, loadBalancerClass, and the ClusterIPs of a Service
/// that becomes ExternalName. Without it such a patch fails validation.
fn drop_type_dependent_fields(current: &Value, new: &mut Value) {
    let ty = |v: &Value| {
        v.pointer("/spec/type")
            .and_then(Value::as_str)
            .unwrap_or("ClusterIP")
            .to_string()
    };
    let (old_ty, new_ty) = (ty(current), ty(new));
    if old_ty == new_ty {
        return;
    }
    let external = |t: &str| t == "NodePort" || t == "LoadBalancer";
    let unchanged = |new: &Value, p: &str| new.pointer(p) == current.pointer(p);
    let old_ports = current
        .pointer("/spec/ports")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let mut drop = Vec::new();
    if !unchanged(new, "/spec/healthCheckNodePort") {
        // The user set it: validation decides.
    } else if new_ty != "LoadBalancer" {
        drop.push("healthCheckNodePort");
    }
    if !external(&new_ty) && unchanged(new, "/spec/externalTrafficPolicy") {
        drop.push("externalTrafficPolicy");
    }
    if new_ty != "LoadBalancer" {
        for f in ["allocateLoadBalancerNodePorts", "loadBalancerClass"] {
            if unchanged(new, &format!("/spec/{f}")) {
                drop.push(f);
            }
        }
    }
    if new_ty == "ExternalName" {
        for f in ["clusterIP", "clusterIPs", "ipFamilies", "ipFamilyPolicy"] {
            if unchanged(new, &format!("/spec/{f}")) {
                drop.push(f);
            }
        }
    }
    let Some(spec) = new.get_mut("spec").and_then(Value::as_object_mut) else {
        return;
    };
    for f in drop {
        spec.remove(f);
    }
    if external(&old_ty) && !external(&new_ty) {
        for p in spec
            .get_mut("ports")
            .and_then(Value::as_array_mut)
            .into_iter()
            .flatten()
        {
            let same_as_before = old_ports
                .iter()
                .any(|o| o.get("port") == p.get("port") && o.get("nodePort") == p.get("nodePort"));
            if same_as_before {
                if let Some(m) = p.as_object_mut() {
                    m.remove("nodePort");
                }
            }
        }
    }
}

/// Upstream's `patchAllocatedValues`: an update that leaves out a Service's allocated
/// ClusterIP(s) or node ports (e.g. `kubectl replace` of the original manifest) keeps them.
fn keep_allocated_values(current: &Value, new: &mut Value) {
    let empty = |v: Option<&Value>| match v {
        None | Some(Value::Null) => true,
        Some(Value::String(s)) => s.is_empty(),
        Some(Value::Array(a)) => a.is_empty(),
        _ => false,
    };
    let Some(spec) = new.get_mut("spec").and_then(Value::as_object_mut) else {
        return;
    };
    for f in ["clusterIP", "clusterIPs"] {
        if empty(spec.get(f)) {
            if let Some(v) = current.pointer(&format!("/spec/{f}")) {
                spec.insert(f.into(), v.clone());
            }
        }
    }
    let old_ports = current
        .pointer("/spec/ports")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    if let Some(ports) = spec.get_mut("ports").and_then(Value::as_array_mut) {
        for p in ports.iter_mut() {
            if !empty(p.get("nodePort")) && p.get("nodePort") != Some(&json!(0)) {
                continue;
            }
            let same = old_ports.iter().find(|o| {
                o.get("port") == p.get("port")
                    && o.get("protocol").unwrap_or(&json!("TCP"))
                        == p.get("protocol").unwrap_or(&json!("TCP"))
            });
            if let Some(np) = same.and_then(|o| o.get("nodePort")) {
                p["nodePort"] = np.clone();
            }
        }
    }
}

/// The `autoscaling/v1` Scale of a Deployment or ReplicaSet.
fn scale_of(obj: &Value) -> Value {
    let meta = obj.get("metadata").cloned().unwrap_or_else(|| json!({}));
    let selector = obj
        .pointer("/spec/selector/matchLabels")
        .and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or("")))
                .collect::<Vec<_>>()
                .join(",")
        })
        .unwrap_or_default();
    let mut sm = json!({});
    for f in [
        "name",
        "namespace",
        "uid",
        "resourceVersion",
        "creationTimestamp",
    ] {
        if let Some(v) = meta.get(f) {
            sm[f] = v.clone();
        }
    }
    json!({
        "kind": "Scale",
        "apiVersion": "autoscaling/v1",
        "metadata": sm,
        "spec": {"replicas": obj.pointer("/spec/replicas").cloned().unwrap_or(json!(1))},
        "status": {
            "replicas": obj.pointer("/status/replicas").cloned().unwrap_or(json!(0)),
            "selector": selector,
        },
    })
}

/// `POST pods/<name>/binding`: assigns the pod to a node, once (upstream's `assignPod`).
async fn binding(state: &AppState, t: &Target, ctx: &Ctx) -> Result<Response, StatusError> {
    let b = ctx.body_object()?;
    let node = b
        .pointer("/target/name")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    if node.is_empty() {
        let errs = vec![skiff_api::field::FieldError::required("target.name", "")];
        return Err(st::invalid("", "Binding", t.name(), &errs));
    }
    let dry = ctx.dry_run()?;
    // Upstream's `setPodNodeAndMetadata` preconditions: the Binding's uid names the pod
    // the scheduler decided for, not a later pod of the same name.
    let want_uid = b
        .pointer("/metadata/uid")
        .and_then(Value::as_str)
        .filter(|u| !u.is_empty());
    for _ in 0..8 {
        let kv = state
            .store
            .get(&t.key(t.name()))
            .await
            .map_err(store_error)?
            .ok_or_else(|| st::not_found(t.gr(), t.name()))?;
        let mut pod = decode_kv(&kv, kv.mod_revision);
        let uid = pod
            .pointer("/metadata/uid")
            .and_then(Value::as_str)
            .unwrap_or("");
        if let Some(want) = want_uid.filter(|w| *w != uid) {
            return Err(st::conflict(
                t.gr(),
                t.name(),
                &format!(
                    "Precondition failed: UID in precondition: {want}, UID in object meta: {uid}"
                ),
            ));
        }
        if pod.pointer("/metadata/deletionTimestamp").is_some() {
            return Err(st::conflict(
                t.gr(),
                t.name(),
                "pod is being deleted, cannot be assigned to a host",
            ));
        }
        let cur = pod
            .pointer("/spec/nodeName")
            .and_then(Value::as_str)
            .unwrap_or("");
        if !cur.is_empty() {
            return Err(st::conflict(
                t.gr(),
                t.name(),
                &format!("pod {} is already assigned to node {cur:?}", t.name()),
            ));
        }
        pod["spec"]["nodeName"] = json!(node);
        // Upstream's binding also records PodScheduled=True.
        let scheduled =
            json!({"type": "PodScheduled", "status": "True", "lastTransitionTime": now_rfc3339()});
        if !pod.get("status").is_some_and(Value::is_object) {
            pod["status"] = json!({});
        }
        let conds = pod["status"]
            .as_object_mut()
            .expect("status is an object")
            .entry("conditions")
            .or_insert_with(|| json!([]));
        if let Some(list) = conds.as_array_mut() {
            list.retain(|c| c.get("type").and_then(Value::as_str) != Some("PodScheduled"));
            list.push(scheduled);
        }
        if let Some(m) = pod.get_mut("metadata").and_then(Value::as_object_mut) {
            m.remove("resourceVersion");
        }
        if !dry {
            match state
                .store
                .update(&t.key(t.name()), to_bytes(&pod), Some(kv.mod_revision))
                .await
            {
                Ok(_) => {}
                Err(StoreError::Conflict { .. }) => continue,
                Err(e) => return Err(store_error(e)),
            }
        }
        let mut s = st::success(t.gr(), t.name(), None);
        s["code"] = json!(201);
        return Ok(json_response(201, &s));
    }
    // Every attempt lost to a concurrent write: say so instead of claiming success.
    Err(st::conflict(
        t.gr(),
        t.name(),
        "the pod kept changing while it was being bound; try again",
    ))
}

// ---------------------------------------------------------------------------------------
// Deletes

/// Resources whose DELETE returns the deleted object (upstream's `ReturnDeletedObject`);
/// the others return a Success Status.
fn returns_deleted_object(r: &ResourceInfo) -> bool {
    matches!(r.kind, "Pod" | "Service" | "Namespace")
}

fn delete_options(ctx: &Ctx) -> Result<Value, StatusError> {
    if ctx.body.is_empty() {
        return Ok(json!({}));
    }
    let ct = ctx.content_type.split(';').next().unwrap_or("").trim();
    let v: Value = if ct == crate::protobuf::MEDIA_TYPE {
        decode_protobuf(&ctx.body)?
    } else {
        serde_json::from_slice(&ctx.body).map_err(|e| {
            st::bad_request(format!("the DeleteOptions body is not valid JSON: {e}"))
        })?
    };
    if let Some(p) = v.get("propagationPolicy").and_then(Value::as_str) {
        if !matches!(p, "Orphan" | "Background" | "Foreground") {
            return Err(st::bad_request(format!(
                "propagationPolicy: Unsupported value: {p:?}: supported values: \"Foreground\", \"Background\", \"Orphan\""
            )));
        }
    }
    Ok(v)
}

async fn delete(state: &AppState, t: &Target, ctx: &Ctx) -> Result<Response, StatusError> {
    let opts = delete_options(ctx)?;
    let dry = ctx.dry_run()?
        || opts
            .get("dryRun")
            .and_then(Value::as_array)
            .is_some_and(|a| a.iter().any(|v| v == "All"));
    let (code, body) = delete_one(state, t, &opts, dry).await?;
    Ok(json_response(code, &body))
}

async fn delete_one(
    state: &AppState,
    t: &Target,
    opts: &Value,
    dry: bool,
) -> Result<(u16, Value), StatusError> {
    let key = t.key(t.name());
    for _ in 0..8 {
        let kv = state
            .store
            .get(&key)
            .await
            .map_err(store_error)?
            .ok_or_else(|| st::not_found(t.gr(), t.name()))?;
        let obj = decode_kv(&kv, kv.mod_revision);
        if let Some(uid) = opts.pointer("/preconditions/uid").and_then(Value::as_str) {
            let have = obj
                .pointer("/metadata/uid")
                .and_then(Value::as_str)
                .unwrap_or("");
            if uid != have {
                return Err(st::conflict(
                    t.gr(),
                    t.name(),
                    &format!("Precondition failed: UID in precondition: {uid}, UID in object meta: {have}"),
                ));
            }
        }
        if let Some(rv) = opts
            .pointer("/preconditions/resourceVersion")
            .and_then(Value::as_str)
        {
            if rv != kv.mod_revision.to_string() {
                return Err(st::conflict(
                    t.gr(),
                    t.name(),
                    &format!("Precondition failed: ResourceVersion in precondition: {rv}, ResourceVersion in object meta: {}", kv.mod_revision),
                ));
            }
        }
        // Upstream's deletion strategy: Foreground and Orphan propagation are carried out
        // by the garbage collector, which the `foregroundDeletion` / `orphan` finalizer
        // (added here) tells what to do before the object may go.
        let mut obj = obj;
        let policy_finalizer = match opts.get("propagationPolicy").and_then(Value::as_str) {
            Some("Foreground") => Some("foregroundDeletion"),
            Some("Orphan") => Some("orphan"),
            _ => None,
        };
        if let Some(f) = policy_finalizer {
            let mut fs = finalizers(&obj);
            if obj.pointer("/metadata/deletionTimestamp").is_none() && !fs.contains(&json!(f)) {
                fs.push(json!(f));
                obj["metadata"]["finalizers"] = Value::Array(fs);
            }
        }
        if t.r.kind == "Namespace" && matches!(t.name(), "default" | "kube-system" | "kube-public")
        {
            // Upstream's NamespaceLifecycle admission keeps these.
            return Err(st::forbidden(
                t.gr(),
                t.name(),
                "this namespace may not be deleted",
            ));
        }
        if t.r.kind == "Namespace" && !namespace_finalizers(&obj).is_empty() {
            // Upstream's namespace REST Delete: mark it Terminating; the namespace
            // controller deletes its content and then its `kubernetes` finalizer, and the
            // update removing the last finalizer deletes it.
            if obj.pointer("/metadata/deletionTimestamp").is_some() {
                return Err(st::conflict(
                    t.gr(),
                    t.name(),
                    "The system is ensuring all content is removed from this namespace.  Upon completion, this namespace will automatically be purged by the system.",
                ));
            }
            let mut marked = obj.clone();
            marked["metadata"]["deletionTimestamp"] = json!(now_rfc3339());
            marked["metadata"]["deletionGracePeriodSeconds"] = json!(0);
            marked["status"]["phase"] = json!("Terminating");
            if let Some(m) = marked.get_mut("metadata").and_then(Value::as_object_mut) {
                m.remove("resourceVersion");
            }
            if dry {
                return Ok((200, marked));
            }
            match state
                .store
                .update(&key, to_bytes(&marked), Some(kv.mod_revision))
                .await
            {
                Ok(rev) => {
                    set_rv(&mut marked, rev);
                    return Ok((200, marked));
                }
                Err(StoreError::Conflict { .. }) => continue,
                Err(e) => return Err(store_error(e)),
            }
        }
        let grace = pod_grace_period(t.r, &obj, opts);
        if grace > 0 {
            // Graceful pod deletion: the pod's kubelet (skiff's node agent) stops it and then
            // deletes it with gracePeriodSeconds=0. A second delete may only shorten the
            // period.
            let marked_with = obj
                .pointer("/metadata/deletionGracePeriodSeconds")
                .and_then(Value::as_i64);
            let already = obj.pointer("/metadata/deletionTimestamp").is_some();
            if dry || (already && marked_with.is_some_and(|g| g <= grace)) {
                return Ok((200, obj));
            }
            let mut marked = obj.clone();
            marked["metadata"]["deletionTimestamp"] =
                json!(util::rfc3339(util::now_unix() + grace));
            marked["metadata"]["deletionGracePeriodSeconds"] = json!(grace);
            if let Some(m) = marked.get_mut("metadata").and_then(Value::as_object_mut) {
                m.remove("resourceVersion");
            }
            match state
                .store
                .update(&key, to_bytes(&marked), Some(kv.mod_revision))
                .await
            {
                Ok(rev) => {
                    set_rv(&mut marked, rev);
                    return Ok((200, marked));
                }
                Err(StoreError::Conflict { .. }) => continue,
                Err(e) => return Err(store_error(e)),
            }
        }
        if !finalizers(&obj).is_empty() {
            // Graceful: mark for deletion; whoever owns a finalizer removes it and the
            // update that removes the last one deletes the object.
            if obj.pointer("/metadata/deletionTimestamp").is_some() || dry {
                return Ok((200, obj));
            }
            let mut marked = obj.clone();
            marked["metadata"]["deletionTimestamp"] = json!(now_rfc3339());
            marked["metadata"]["deletionGracePeriodSeconds"] = json!(0);
            if let Some(m) = marked.get_mut("metadata").and_then(Value::as_object_mut) {
                m.remove("resourceVersion");
            }
            match state
                .store
                .update(&key, to_bytes(&marked), Some(kv.mod_revision))
                .await
            {
                Ok(rev) => {
                    set_rv(&mut marked, rev);
                    return Ok((200, marked));
                }
                Err(StoreError::Conflict { .. }) => continue,
                Err(e) => return Err(store_error(e)),
            }
        }
        if dry {
            return Ok((200, deleted_body(t, obj)));
        }
        match state.store.delete(&key, Some(kv.mod_revision)).await {
            Ok(_) => {
                if t.r.kind == "Service" {
                    state.alloc.on_delete(&obj).await;
                }
                return Ok((200, deleted_body(t, obj)));
            }
            Err(StoreError::Conflict { .. }) => continue,
            Err(StoreError::NotFound { .. }) => return Err(st::not_found(t.gr(), t.name())),
            Err(e) => return Err(store_error(e)),
        }
    }
    Err(st::conflict(
        t.gr(),
        t.name(),
        "the object kept changing; try again",
    ))
}

/// Upstream's pod `CheckGracefulDelete`: the period is `gracePeriodSeconds` from the
/// DeleteOptions, else the pod's `terminationGracePeriodSeconds` (default 30); a pod that
/// is not bound to a node, or has finished, is deleted at once (0). Other kinds: 0.
fn pod_grace_period(r: &ResourceInfo, obj: &Value, opts: &Value) -> i64 {
    if r.kind != "Pod" {
        return 0;
    }
    let node = obj
        .pointer("/spec/nodeName")
        .and_then(Value::as_str)
        .unwrap_or("");
    let phase = obj
        .pointer("/status/phase")
        .and_then(Value::as_str)
        .unwrap_or("");
    if node.is_empty() || matches!(phase, "Succeeded" | "Failed") {
        return 0;
    }
    opts.get("gracePeriodSeconds")
        .and_then(Value::as_i64)
        .or_else(|| {
            obj.pointer("/spec/terminationGracePeriodSeconds")
                .and_then(Value::as_i64)
        })
        .unwrap_or(30)
        .max(0)
}

fn deleted_body(t: &Target, obj: Value) -> Value {
    if returns_deleted_object(t.r) {
        obj
    } else {
        let uid = obj
            .pointer("/metadata/uid")
            .and_then(Value::as_str)
            .map(str::to_string);
        st::success(t.gr(), t.name(), uid.as_deref())
    }
}

async fn delete_collection(
    state: &AppState,
    t: &Target,
    ctx: &Ctx,
) -> Result<Response, StatusError> {
    let opts = delete_options(ctx)?;
    let dry = ctx.dry_run()?;
    let sel = Selectors::parse(t, ctx)?;
    let page = list_objects(state, t, &sel, ListAt::Latest, None, None).await?;
    let revision = page.revision;
    let mut items = Vec::new();
    for obj in page.into_values() {
        let one = Target {
            r: t.r,
            ns: obj
                .pointer("/metadata/namespace")
                .and_then(Value::as_str)
                .map(str::to_string)
                .or_else(|| t.ns.clone()),
            name: Some(name_of(&obj).to_string()),
        };
        match delete_one(state, &one, &opts, dry).await {
            Ok(_) => items.push(obj),
            Err(e) if e.code == 404 => {}
            Err(e) => return Err(e),
        }
    }
    Ok(json_response(
        200,
        &json!({
            "kind": format!("{}List", t.r.kind),
            "apiVersion": t.r.api_version(),
            "metadata": {"resourceVersion": revision.to_string()},
            "items": items,
        }),
    ))
}
