//! `POST /skiff/v1/join`: a node's agent trades the cluster's join token for a node
//! credential, as k3s agents do with theirs. Body `{"nodeName": "<name>"}`, header
//! `Authorization: Bearer <join token>`; the answer is a kubeconfig (YAML) with a client
//! certificate `CN=system:node:<name>, O=system:nodes` signed by the cluster CA, which the
//! `authz` module then holds to what a node may do.
//!
//! Before sending the token, the agent fetches `/cacerts` and checks it against the CA
//! hash inside the token (`K10<sha256>::node:<secret>`), so the token never goes to a
//! server that is not the cluster's.

use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::response::Response;
use serde_json::Value;
use skiff_api::status as st;

use crate::api::{status_response, text, AppState};

pub const JOIN_PATH: &str = "/skiff/v1/join";

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let mut diff = a.len() ^ b.len();
    for (x, y) in a.iter().zip(b.iter()) {
        diff |= (x ^ y) as usize;
    }
    diff == 0
}

pub async fn handle(
    state: &AppState,
    method: &Method,
    headers: &HeaderMap,
    body: &[u8],
) -> Response {
    if method != Method::POST {
        let mut e = st::bad_request(format!("{JOIN_PATH} only accepts POST"));
        e.code = 405;
        e.body["code"] = 405.into();
        e.body["reason"] = "MethodNotAllowed".into();
        return status_response(e);
    }
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(|t| crate::pki::join_secret(t.trim()))
        .unwrap_or("");
    if presented.is_empty() || !constant_time_eq(presented.as_bytes(), state.join_secret.as_bytes())
    {
        return status_response(st::unauthorized(
            "joining needs the cluster's join token (<data-dir>/pki/join.token on the server) as a bearer token",
        ));
    }
    let req: Value = match serde_json::from_slice(body) {
        Ok(v) => v,
        Err(e) => {
            return status_response(st::bad_request(format!(
                "the join request must be JSON like {{\"nodeName\": \"node-1\"}}: {e}"
            )))
        }
    };
    let name = req.get("nodeName").and_then(Value::as_str).unwrap_or("");
    let problems = skiff_api::names::is_dns1123_subdomain(name);
    if !problems.is_empty() {
        return status_response(st::bad_request(format!(
            "nodeName {name:?} is not a valid node name: {}",
            problems.join("; ")
        )));
    }
    match crate::pki::issue_node_certificate(&state.data_dir, name) {
        Ok((cert, key)) => {
            tracing::info!("issued a node credential for {name} (system:node:{name})");
            let user = format!("{}{name}", crate::pki::NODE_USER_PREFIX);
            let kc =
                crate::pki::kubeconfig_for(&user, &state.server_url, &state.ca_pem, &cert, &key);
            let mut r = text(StatusCode::OK, kc);
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                header::HeaderValue::from_static("application/yaml"),
            );
            r
        }
        Err(e) => status_response(st::internal_error(&format!(
            "issuing the node certificate: {e}"
        ))),
    }
}
