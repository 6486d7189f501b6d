//! First-start credentials, like k3s: a cluster CA, a serving certificate, an admin client
//! certificate and bearer token, and `<data-dir>/admin.kubeconfig` pointing at the server.
//!
//! Layout under the data directory:
//!
//! | file | what |
//! |---|---|
//! | `pki/ca.crt`, `pki/ca.key` | the cluster CA (signs serving and client certificates) |
//! | `pki/serving.crt`, `pki/serving.key` | the HTTPS certificate; re-issued on every start so that its SANs follow `--advertise-address` |
//! | `pki/admin.crt`, `pki/admin.key` | the admin client certificate (`CN=skiff-admin, O=system:masters`) |
//! | `pki/admin.token` | the admin bearer token |
//! | `pki/kubelet-client.crt`, `pki/kubelet-client.key` | the API server's client certificate towards the agents' kubelet API (`CN=kube-apiserver-kubelet-client`, upstream's `--kubelet-client-certificate`) |
//! | `pki/join.token` | the node join token (`K10<CA sha256>::node:<secret>`), for `POST /skiff/v1/join` |
//! | `admin.kubeconfig` | a kubeconfig with the CA and the admin client certificate |
//!
//! Keys are written with mode 0600.

use std::fs;
use std::io::Write;
use std::net::IpAddr;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use base64::Engine;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};

/// The subject of the admin client certificate. `system:masters` is upstream's group that
/// RBAC always allows; skiff's authorizer treats it the same way.
pub const ADMIN_USER: &str = "skiff-admin";
pub const ADMIN_GROUP: &str = "system:masters";

/// The subject of the certificate the API server presents to kubelet APIs (kubeadm's
/// name for upstream's `--kubelet-client-certificate`); agents serve logs only to it.
pub const KUBELET_CLIENT_USER: &str = "kube-apiserver-kubelet-client";

#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("{path}: {source} (check that the data directory is writable by this user)")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{what}: {source}")]
    Cert { what: String, source: rcgen::Error },
    #[error("{path}: {message} (delete the data directory's pki/ folder to regenerate it)")]
    Invalid { path: PathBuf, message: String },
}

/// Everything the server and its clients need, as PEM.
#[derive(Clone, Debug)]
pub struct Credentials {
    pub ca_pem: String,
    pub serving_cert_pem: String,
    pub serving_key_pem: String,
    pub admin_cert_pem: String,
    pub admin_key_pem: String,
    pub admin_token: String,
    /// Authenticates `POST /skiff/v1/join` (see [`join_token`]); `pki/join.token`.
    pub join_token: String,
    pub kubeconfig_path: PathBuf,
    /// The client certificate the server presents to agents' kubelet API (`kubectl logs`).
    pub kubelet_client_cert_pem: String,
    pub kubelet_client_key_pem: String,
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> PkiError + '_ {
    move |source| PkiError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn cert_err(what: &str) -> impl FnOnce(rcgen::Error) -> PkiError + '_ {
    move |source| PkiError::Cert {
        what: what.to_string(),
        source,
    }
}

fn write_file(path: &Path, contents: &str, private: bool) -> Result<(), PkiError> {
    let mut opts = fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    if private {
        opts.mode(0o600);
    }
    let mut f = opts.open(path).map_err(io_err(path))?;
    f.write_all(contents.as_bytes()).map_err(io_err(path))
}

fn read(path: &Path) -> Result<Option<String>, PkiError> {
    match fs::read_to_string(path) {
        Ok(s) => Ok(Some(s)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io_err(path)(e)),
    }
}

/// Random bytes from the kernel.
pub fn random_bytes(n: usize) -> Vec<u8> {
    let mut buf = vec![0u8; n];
    // /dev/urandom never blocks after boot and is always present on Linux.
    if let Ok(mut f) = fs::File::open("/dev/urandom") {
        use std::io::Read;
        if f.read_exact(&mut buf).is_ok() {
            return buf;
        }
    }
    // Unreachable on Linux; ring's generator is the fallback.
    let _ = rustls::crypto::ring::default_provider()
        .secure_random
        .fill(&mut buf);
    buf
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn dn(cn: &str, org: Option<&str>) -> DistinguishedName {
    let mut d = DistinguishedName::new();
    d.push(DnType::CommonName, cn);
    if let Some(o) = org {
        d.push(DnType::OrganizationName, o);
    }
    d
}

fn ca_params() -> CertificateParams {
    let mut p = CertificateParams::default();
    p.distinguished_name = dn("skiff-ca", None);
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    p
}

/// Loads the credentials under `data_dir`, creating what is missing, and (re)issues the
/// serving certificate for `localhost`, `127.0.0.1` and `advertise` addresses. `server_url`
/// is written into the kubeconfig.
pub fn ensure(
    data_dir: &Path,
    advertise: &[IpAddr],
    server_url: &str,
) -> Result<Credentials, PkiError> {
    let pki = data_dir.join("pki");
    fs::create_dir_all(&pki).map_err(io_err(&pki))?;

    let ca_crt = pki.join("ca.crt");
    let ca_key = pki.join("ca.key");
    let (ca_pem, ca_key_pem) = match (read(&ca_crt)?, read(&ca_key)?) {
        (Some(c), Some(k)) => (c, k),
        _ => {
            let key = KeyPair::generate().map_err(cert_err("generating the CA key"))?;
            let cert = ca_params()
                .self_signed(&key)
                .map_err(cert_err("self-signing the CA"))?;
            write_file(&ca_key, &key.serialize_pem(), true)?;
            write_file(&ca_crt, &cert.pem(), false)?;
            (cert.pem(), key.serialize_pem())
        }
    };
    let ca_keypair = KeyPair::from_pem(&ca_key_pem).map_err(|e| PkiError::Invalid {
        path: ca_key.clone(),
        message: e.to_string(),
    })?;
    // The CA's parameters are deterministic (subject, constraints) and its key identifier
    // derives from the key, so rebuilding them reproduces the stored certificate's issuer.
    let issuer = Issuer::new(ca_params(), ca_keypair);

    // Serving certificate: always re-issued (cheap) so the SANs match this start's flags.
    let mut sans = vec![
        SanType::DnsName("localhost".try_into().map_err(cert_err("SAN localhost"))?),
        SanType::IpAddress(IpAddr::from([127, 0, 0, 1])),
    ];
    for ip in advertise {
        let san = SanType::IpAddress(*ip);
        if !sans.contains(&san) {
            sans.push(san);
        }
    }
    let mut sp = CertificateParams::default();
    sp.distinguished_name = dn("skiff-apiserver", None);
    sp.subject_alt_names = sans;
    sp.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    sp.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let skey = KeyPair::generate().map_err(cert_err("generating the serving key"))?;
    let scert = sp
        .signed_by(&skey, &issuer)
        .map_err(cert_err("signing the serving certificate"))?;
    let serving_cert_pem = scert.pem();
    let serving_key_pem = skey.serialize_pem();
    write_file(&pki.join("serving.key"), &serving_key_pem, true)?;
    write_file(&pki.join("serving.crt"), &serving_cert_pem, false)?;

    let admin_crt = pki.join("admin.crt");
    let admin_key = pki.join("admin.key");
    let (admin_cert_pem, admin_key_pem) = match (read(&admin_crt)?, read(&admin_key)?) {
        (Some(c), Some(k)) => (c, k),
        _ => {
            let mut ap = CertificateParams::default();
            ap.distinguished_name = dn(ADMIN_USER, Some(ADMIN_GROUP));
            ap.key_usages = vec![KeyUsagePurpose::DigitalSignature];
            ap.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
            let key = KeyPair::generate().map_err(cert_err("generating the admin key"))?;
            let cert = ap
                .signed_by(&key, &issuer)
                .map_err(cert_err("signing the admin certificate"))?;
            write_file(&admin_key, &key.serialize_pem(), true)?;
            write_file(&admin_crt, &cert.pem(), false)?;
            (cert.pem(), key.serialize_pem())
        }
    };

    let (kubelet_client_cert_pem, kubelet_client_key_pem) = {
        let crt = pki.join("kubelet-client.crt");
        let key = pki.join("kubelet-client.key");
        match (read(&crt)?, read(&key)?) {
            (Some(c), Some(k)) => (c, k),
            _ => {
                let mut p = CertificateParams::default();
                p.distinguished_name = dn(KUBELET_CLIENT_USER, None);
                p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
                p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
                let k =
                    KeyPair::generate().map_err(cert_err("generating the kubelet client key"))?;
                let c = p
                    .signed_by(&k, &issuer)
                    .map_err(cert_err("signing the kubelet client certificate"))?;
                write_file(&key, &k.serialize_pem(), true)?;
                write_file(&crt, &c.pem(), false)?;
                (c.pem(), k.serialize_pem())
            }
        }
    };

    let token_path = pki.join("admin.token");
    let admin_token = match read(&token_path)? {
        Some(t) if !t.trim().is_empty() => t.trim().to_string(),
        _ => {
            let t = hex(&random_bytes(32));
            write_file(&token_path, &t, true)?;
            t
        }
    };

    let join_path = pki.join("join.token");
    let join_token = match read(&join_path)? {
        Some(t) if !t.trim().is_empty() => t.trim().to_string(),
        _ => {
            let t = join_token(&ca_pem, &hex(&random_bytes(32)));
            write_file(&join_path, &t, true)?;
            t
        }
    };

    let kubeconfig_path = data_dir.join("admin.kubeconfig");
    write_file(
        &kubeconfig_path,
        &kubeconfig(server_url, &ca_pem, &admin_cert_pem, &admin_key_pem),
        true,
    )?;

    Ok(Credentials {
        ca_pem,
        serving_cert_pem,
        serving_key_pem,
        admin_cert_pem,
        admin_key_pem,
        admin_token,
        join_token,
        kubeconfig_path,
        kubelet_client_cert_pem,
        kubelet_client_key_pem,
    })
}

/// A kubeconfig (the same shape k3s writes) for the admin client certificate.
pub fn kubeconfig(server_url: &str, ca_pem: &str, cert_pem: &str, key_pem: &str) -> String {
    kubeconfig_for(ADMIN_USER, server_url, ca_pem, cert_pem, key_pem)
}

/// A kubeconfig for the client certificate of `user`.
pub fn kubeconfig_for(
    user: &str,
    server_url: &str,
    ca_pem: &str,
    cert_pem: &str,
    key_pem: &str,
) -> String {
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s.as_bytes());
    format!(
        "apiVersion: v1
kind: Config
clusters:
- cluster:
    certificate-authority-data: {ca}
    server: {server_url}
  name: skiff
contexts:
- context:
    cluster: skiff
    user: {user}
  name: skiff
current-context: skiff
preferences: {{}}
users:
- name: {user}
  user:
    client-certificate-data: {cert}
    client-key-data: {key}
",
        ca = b64(ca_pem),
        cert = b64(cert_pem),
        key = b64(key_pem),
    )
}

/// The group of node identities (upstream's `system:nodes`).
pub const NODE_GROUP: &str = "system:nodes";
/// A node's user name prefix (upstream's `system:node:<nodeName>`).
pub const NODE_USER_PREFIX: &str = "system:node:";

/// The join token: `K10<sha256 of the CA certificate PEM, hex>::node:<secret>`, k3s's
/// shape. The CA hash lets a joining agent pin the CA it downloads from `/cacerts` before
/// it trusts the server; the secret authenticates the join request.
pub fn join_token(ca_pem: &str, secret: &str) -> String {
    use sha2::Digest as _;
    let hash = sha2::Sha256::digest(ca_pem.as_bytes());
    format!("K10{}::node:{secret}", hex(&hash))
}

/// The secret part of a join token (or the bare secret).
pub fn join_secret(token: &str) -> &str {
    token.rsplit_once("::node:").map_or(token, |(_, s)| s)
}

/// Issues a client certificate for node `name` (`CN=system:node:<name>, O=system:nodes`,
/// as the kubelet's) signed by the cluster CA under `data_dir`.
pub fn issue_node_certificate(data_dir: &Path, name: &str) -> Result<(String, String), PkiError> {
    let ca_key = data_dir.join("pki/ca.key");
    let ca_key_pem = read(&ca_key)?.ok_or_else(|| PkiError::Invalid {
        path: ca_key.clone(),
        message: "the CA key is missing".into(),
    })?;
    let ca_keypair = KeyPair::from_pem(&ca_key_pem).map_err(|e| PkiError::Invalid {
        path: ca_key.clone(),
        message: e.to_string(),
    })?;
    let issuer = Issuer::new(ca_params(), ca_keypair);
    let mut p = CertificateParams::default();
    p.distinguished_name = dn(&format!("{NODE_USER_PREFIX}{name}"), Some(NODE_GROUP));
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let key = KeyPair::generate().map_err(cert_err("generating a node key"))?;
    let cert = p
        .signed_by(&key, &issuer)
        .map_err(cert_err("signing a node certificate"))?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// The node name of a client certificate issued by [`issue_node_certificate`] (the caller
/// has verified it chains to the cluster CA), or None for any other subject.
pub fn node_of_certificate(der: &[u8]) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let subject = cert.subject();
    let in_group = subject
        .iter_organization()
        .any(|o| o.as_str().ok() == Some(NODE_GROUP));
    let cn = subject.iter_common_name().next()?.as_str().ok()?;
    let name = cn.strip_prefix(NODE_USER_PREFIX)?;
    (in_group && !name.is_empty()).then(|| name.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_start_keeps_ca_admin_and_token() {
        let dir = tempfile::tempdir().unwrap();
        let a = ensure(dir.path(), &[], "https://127.0.0.1:1").unwrap();
        let b = ensure(
            dir.path(),
            &["10.0.0.1".parse().unwrap()],
            "https://127.0.0.1:1",
        )
        .unwrap();
        assert_eq!(a.ca_pem, b.ca_pem);
        assert_eq!(a.admin_cert_pem, b.admin_cert_pem);
        assert_eq!(a.admin_token, b.admin_token);
        assert_eq!(a.admin_token.len(), 64);
        assert_ne!(a.serving_cert_pem, b.serving_cert_pem);
        let kc = fs::read_to_string(dir.path().join("admin.kubeconfig")).unwrap();
        assert!(kc.contains("server: https://127.0.0.1:1"), "{kc}");
        use std::os::unix::fs::PermissionsExt;
        let mode = fs::metadata(dir.path().join("pki/ca.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}
