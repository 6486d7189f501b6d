//! `skiff-agent join`: trade the cluster's join token for this node's credential, as a
//! k3s agent does. The token (`K10<sha256 of the CA>::node:<secret>`, from the server's
//! `<data-dir>/pki/join.token`) names the CA: the agent fetches `/cacerts` without
//! trusting anything yet, checks its hash against the token, and only then sends the
//! secret, over TLS pinned to that CA, to `POST /skiff/v1/join`. The answer is a
//! kubeconfig for `system:node:<name>`, which the API server holds to what a node may do.

use anyhow::{bail, Context as _};
use sha2::Digest as _;

/// The CA hash and secret of a join token.
pub fn parse_token(token: &str) -> anyhow::Result<(String, String)> {
    let t = token.trim();
    let help = "a join token looks like K10<64 hex digits>::node:<secret>; copy it from <data-dir>/pki/join.token on the server";
    let rest = t
        .strip_prefix("K10")
        .with_context(|| format!("the join token does not start with K10: {help}"))?;
    let (hash, secret) = rest
        .split_once("::node:")
        .with_context(|| format!("the join token has no ::node: part: {help}"))?;
    if hash.len() != 64 || !hash.bytes().all(|b| b.is_ascii_hexdigit()) || secret.is_empty() {
        bail!("the join token is malformed: {help}");
    }
    Ok((hash.to_ascii_lowercase(), secret.to_string()))
}

fn pem_to_der(pem: &str) -> anyhow::Result<Vec<u8>> {
    use base64::Engine as _;
    let b64: String = pem
        .lines()
        .skip_while(|l| !l.starts_with("-----BEGIN CERTIFICATE"))
        .skip(1)
        .take_while(|l| !l.starts_with("-----END"))
        .collect();
    base64::engine::general_purpose::STANDARD
        .decode(b64)
        .context("the server's /cacerts is not a PEM certificate")
}

/// Joins `server` (an https URL) as `node`; returns the node's kubeconfig.
pub async fn join(server: &str, token: &str, node: &str) -> anyhow::Result<String> {
    let (want_hash, _) = parse_token(token)?;
    let url: http::Uri = server
        .parse()
        .with_context(|| format!("--server {server:?} is not a URL like https://10.0.0.1:6443"))?;

    // 1. The CA, unauthenticated and not yet trusted: the token's hash decides.
    let mut cfg = kube::Config::new(url.clone());
    cfg.accept_invalid_certs = true;
    let client = kube::Client::try_from(cfg).context("building an API client")?;
    let ca = client
        .request_text(http::Request::get("/cacerts").body(Vec::new())?)
        .await
        .with_context(|| format!("fetching {server}/cacerts"))?;
    let got_hash: String = sha2::Sha256::digest(ca.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    if got_hash != want_hash {
        bail!(
            "the CA {server} presents (sha256 {got_hash}) is not the one the join token names (sha256 {want_hash}): a different cluster, or someone in between; the token was not sent"
        );
    }

    // 2. The join request, over TLS pinned to that CA.
    let mut cfg = kube::Config::new(url);
    cfg.root_cert = Some(vec![pem_to_der(&ca)?]);
    cfg.auth_info.token = Some(token.trim().to_string().into());
    let client = kube::Client::try_from(cfg).context("building an API client")?;
    let body = serde_json::to_vec(&serde_json::json!({ "nodeName": node }))?;
    let req = http::Request::post("/skiff/v1/join")
        .header("content-type", "application/json")
        .body(body)?;
    client
        .request_text(req)
        .await
        .with_context(|| format!("joining {server} as node {node:?}"))
}

/// Writes the kubeconfig with mode 0600 (it holds the node's private key).
pub fn write_kubeconfig(path: &std::path::Path, text: &str) -> anyhow::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(|| format!("writing {}", tmp.display()))?;
    f.write_all(text.as_bytes())?;
    f.sync_all()?;
    std::fs::rename(&tmp, path).with_context(|| format!("renaming to {}", path.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_parse_or_say_what_is_wrong() {
        let h = "ab".repeat(32);
        assert_eq!(
            parse_token(&format!("K10{h}::node:s3cret\n")).unwrap(),
            (h.clone(), "s3cret".to_string())
        );
        for bad in [
            "",
            "K10abc::node:x",
            &format!("X10{h}::node:x"),
            &format!("K10{h}::node:"),
            &format!("K10{h}"),
        ] {
            let e = parse_token(bad).unwrap_err().to_string();
            assert!(e.contains("pki/join.token"), "{bad}: {e}");
        }
    }
}
