//! Static pods: Pod manifests in a directory on the node (`--pod-manifest-path`), run by
//! the runtime without the API server, and mirrored into the API as the kubelet does.
//!
//! Each file (`*.yaml`, `*.yml`, `*.json`; dot files are ignored, as upstream) holds one
//! Pod. As the kubelet's file source: the name becomes `<name>-<node>`, the namespace
//! defaults to `default`, the UID is a hash of the node, the file and its content (so a
//! changed manifest is a new pod: the old one stops, the new one starts), the annotations
//! `kubernetes.io/config.hash` (the UID), `kubernetes.io/config.source: file` and
//! `kubernetes.io/config.seen` are set, the pod tolerates every NoExecute taint, and it is
//! bound to the node.
//!
//! The mirror pod ([`mirror_pod`]) is that pod as an API object with
//! `kubernetes.io/config.mirror: <hash>` and an ownerReference to the Node; the runtime
//! writes the static pod's status to it, recreates it when it is deleted or differs, and
//! deletes the mirrors of manifests that are gone. Mirror pods seen through the API are
//! never run themselves.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

use k8s_openapi::api::core::v1::{Pod, Toleration};
use sha2::Digest as _;

pub const CONFIG_HASH: &str = "kubernetes.io/config.hash";
pub const CONFIG_SOURCE: &str = "kubernetes.io/config.source";
pub const CONFIG_SEEN: &str = "kubernetes.io/config.seen";
pub const CONFIG_MIRROR: &str = "kubernetes.io/config.mirror";

/// Is this API pod a mirror pod?
pub fn is_mirror(pod: &Pod) -> bool {
    pod.metadata
        .annotations
        .as_ref()
        .is_some_and(|a| a.contains_key(CONFIG_MIRROR))
}

/// Is this pod a static pod (from a manifest)?
pub fn is_static(pod: &Pod) -> bool {
    pod.metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(CONFIG_SOURCE))
        .is_some_and(|s| s == "file")
}

/// One manifest's outcome.
#[derive(Debug)]
pub enum Manifest {
    Pod(Box<Pod>),
    /// The file could not be used: what and why.
    Invalid(String),
}

fn is_manifest(p: &Path) -> bool {
    let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
    !name.starts_with('.')
        && matches!(
            p.extension().and_then(|e| e.to_str()),
            Some("yaml" | "yml" | "json")
        )
}

/// Reads every manifest in `dir` (sorted by file name). A missing directory holds none.
pub fn read_dir(dir: &Path, node: &str) -> BTreeMap<PathBuf, Manifest> {
    let mut out = BTreeMap::new();
    let Ok(rd) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in rd.flatten() {
        let p = e.path();
        if !p.is_file() || !is_manifest(&p) {
            continue;
        }
        let m = match std::fs::read(&p) {
            Ok(bytes) => match parse(&p, &bytes, node) {
                Ok(pod) => Manifest::Pod(Box::new(pod)),
                Err(e) => Manifest::Invalid(format!("{}: {e}", p.display())),
            },
            Err(e) => Manifest::Invalid(format!("{}: {e}", p.display())),
        };
        out.insert(p, m);
    }
    out
}

/// A manifest as the static pod the runtime runs.
pub fn parse(path: &Path, bytes: &[u8], node: &str) -> Result<Pod, String> {
    let value: serde_json::Value = if path.extension().and_then(|e| e.to_str()) == Some("json") {
        serde_json::from_slice(bytes).map_err(|e| format!("not valid JSON: {e}"))?
    } else {
        serde_norway::from_slice(bytes).map_err(|e| format!("not valid YAML: {e}"))?
    };
    match (value["apiVersion"].as_str(), value["kind"].as_str()) {
        (Some("v1"), Some("Pod")) => {}
        (v, k) => {
            return Err(format!(
                "a static pod manifest holds one Pod (apiVersion v1, kind Pod), not apiVersion {v:?} kind {k:?}"
            ))
        }
    }
    let mut pod: Pod =
        serde_json::from_value(value).map_err(|e| format!("not a valid Pod: {e}"))?;
    let name = pod
        .metadata
        .name
        .clone()
        .filter(|n| !n.is_empty())
        .ok_or("metadata.name is required")?;
    if pod.spec.as_ref().is_none_or(|s| s.containers.is_empty()) {
        return Err("spec.containers must list at least one container".into());
    }
    // Upstream's generatePodName.
    pod.metadata.name = Some(format!("{name}-{}", node.to_lowercase()));
    if pod.metadata.namespace.as_deref().unwrap_or("").is_empty() {
        pod.metadata.namespace = Some("default".into());
    }
    let mut h = sha2::Sha256::new();
    h.update(format!("host:{node}\nfile:{}\n", path.display()).as_bytes());
    h.update(bytes);
    let digest = h.finalize();
    let hex: String = digest[..16].iter().map(|b| format!("{b:02x}")).collect();
    let uid = if pod.metadata.uid.as_deref().unwrap_or("").is_empty() {
        hex.clone()
    } else {
        pod.metadata.uid.clone().unwrap_or_default()
    };
    pod.metadata.uid = Some(uid.clone());
    let ann = pod.metadata.annotations.get_or_insert_with(BTreeMap::new);
    ann.insert(CONFIG_HASH.into(), uid);
    ann.insert(CONFIG_SOURCE.into(), "file".into());
    ann.insert(
        CONFIG_SEEN.into(),
        k8s_openapi::jiff::Timestamp::now().to_string(),
    );
    let spec = pod.spec.get_or_insert_with(Default::default);
    spec.node_name = Some(node.to_string());
    // Upstream: static pods tolerate every NoExecute taint (they are the node's own).
    spec.tolerations
        .get_or_insert_with(Vec::new)
        .push(Toleration {
            operator: Some("Exists".into()),
            effect: Some("NoExecute".into()),
            ..Default::default()
        });
    pod.status = None;
    Ok(pod)
}

/// The static pod's hash (its config.hash annotation).
pub fn hash(pod: &Pod) -> String {
    pod.metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(CONFIG_HASH))
        .cloned()
        .unwrap_or_default()
}

/// The mirror pod of `pod` for the API: no UID or status of its own, the mirror
/// annotation, and an ownerReference to the Node (so deleting the Node removes it).
pub fn mirror_pod(pod: &Pod, node_uid: &str) -> Pod {
    let mut m = pod.clone();
    let h = hash(pod);
    m.metadata.uid = None;
    m.metadata.resource_version = None;
    m.metadata
        .annotations
        .get_or_insert_with(BTreeMap::new)
        .insert(CONFIG_MIRROR.into(), h);
    let node = pod
        .spec
        .as_ref()
        .and_then(|s| s.node_name.clone())
        .unwrap_or_default();
    m.metadata.owner_references = Some(vec![
        k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference {
            api_version: "v1".into(),
            kind: "Node".into(),
            name: node,
            uid: node_uid.to_string(),
            ..Default::default()
        },
    ]);
    m.status = None;
    m
}

/// Does the API's `mirror` still mirror `pod` (same hash, not being deleted)?
pub fn mirror_current(mirror: &Pod, pod: &Pod) -> bool {
    mirror.metadata.deletion_timestamp.is_none()
        && mirror
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(CONFIG_MIRROR))
            .is_some_and(|h| *h == hash(pod))
}

/// Makes the API's mirror pods match the static pods `desired`: creates missing ones,
/// replaces stale ones (another hash, or being deleted), deletes those of manifests that
/// are gone. Sends the UID of each static pod whose mirror it created on `created`.
pub async fn sync_mirrors(
    client: kube::Client,
    node: String,
    desired: Vec<Pod>,
    created: tokio::sync::mpsc::UnboundedSender<String>,
) {
    use k8s_openapi::api::core::v1::Node;
    use kube::api::{DeleteParams, ListParams, PostParams, Preconditions};
    let node_uid = match kube::Api::<Node>::all(client.clone()).get_opt(&node).await {
        Ok(Some(n)) => n.metadata.uid.unwrap_or_default(),
        Ok(None) => {
            tracing::warn!(
                "static pods: the Node {node} is not registered yet; mirror pods wait for it"
            );
            return;
        }
        Err(e) => {
            tracing::warn!("static pods: reading Node {node}: {e}");
            return;
        }
    };
    let delete = |api: kube::Api<Pod>, m: Pod| async move {
        let name = m.metadata.name.clone().unwrap_or_default();
        let dp = DeleteParams {
            grace_period_seconds: Some(0),
            preconditions: Some(Preconditions {
                uid: m.metadata.uid.clone(),
                resource_version: None,
            }),
            ..Default::default()
        };
        match api.delete(&name, &dp).await {
            Ok(_) => true,
            Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => true,
            Err(e) => {
                tracing::warn!("static pods: deleting mirror pod {name}: {e}");
                false
            }
        }
    };
    let key = |p: &Pod| {
        (
            p.metadata.namespace.clone().unwrap_or_default(),
            p.metadata.name.clone().unwrap_or_default(),
        )
    };
    for p in &desired {
        let (ns, name) = key(p);
        let api: kube::Api<Pod> = kube::Api::namespaced(client.clone(), &ns);
        match api.get_opt(&name).await {
            Ok(Some(m)) if mirror_current(&m, p) => continue,
            Ok(Some(m)) if !is_mirror(&m) => {
                tracing::warn!(
                    "static pods: pod {ns}/{name} exists and is not a mirror pod: the static pod runs, its status is not reported until that pod is removed"
                );
                continue;
            }
            Ok(Some(m)) => {
                if !delete(api.clone(), m).await {
                    continue;
                }
            }
            Ok(None) => {}
            Err(e) => {
                tracing::warn!("static pods: reading mirror pod {ns}/{name}: {e}");
                continue;
            }
        }
        match api
            .create(&PostParams::default(), &mirror_pod(p, &node_uid))
            .await
        {
            Ok(_) => {
                tracing::info!("static pods: created mirror pod {ns}/{name}");
                let _ = created.send(p.metadata.uid.clone().unwrap_or_default());
            }
            // Raced with an earlier round's create: the next round checks it.
            Err(kube::Error::Api(e)) if e.code == 409 => {}
            Err(e) => tracing::warn!("static pods: creating mirror pod {ns}/{name}: {e}"),
        }
    }
    // Mirrors whose static pod is gone.
    let lp = ListParams::default().fields(&format!("spec.nodeName={node}"));
    match kube::Api::<Pod>::all(client.clone()).list(&lp).await {
        Ok(list) => {
            for m in list.items.into_iter().filter(is_mirror) {
                let k = key(&m);
                if !desired.iter().any(|p| key(p) == k) {
                    tracing::info!(
                        "static pods: deleting mirror pod {}/{} (its manifest is gone)",
                        k.0,
                        k.1
                    );
                    delete(kube::Api::namespaced(client.clone(), &k.0), m).await;
                }
            }
        }
        Err(e) => tracing::warn!("static pods: listing the node's pods: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MANIFEST: &str = "apiVersion: v1\nkind: Pod\nmetadata:\n  name: web\nspec:\n  containers:\n  - name: c\n    image: skiff.local/host\n    command: [sleep, '3600']\n";

    #[test]
    fn a_manifest_becomes_the_kubelets_static_pod() {
        let p = parse(Path::new("/m/web.yaml"), MANIFEST.as_bytes(), "Node-1").unwrap();
        assert_eq!(p.metadata.name.as_deref(), Some("web-node-1"));
        assert_eq!(p.metadata.namespace.as_deref(), Some("default"));
        let uid = p.metadata.uid.clone().unwrap();
        assert_eq!(uid.len(), 32);
        assert_eq!(hash(&p), uid);
        assert!(is_static(&p) && !is_mirror(&p));
        assert_eq!(
            p.spec.as_ref().unwrap().node_name.as_deref(),
            Some("Node-1")
        );
        // Same content, same UID; another content or file, another UID.
        let again = parse(Path::new("/m/web.yaml"), MANIFEST.as_bytes(), "Node-1").unwrap();
        assert_eq!(again.metadata.uid, p.metadata.uid);
        let changed = MANIFEST.replace("3600", "60");
        let other = parse(Path::new("/m/web.yaml"), changed.as_bytes(), "Node-1").unwrap();
        assert_ne!(other.metadata.uid, p.metadata.uid);
        let m = mirror_pod(&p, "node-uid");
        assert!(is_mirror(&m) && m.metadata.uid.is_none());
        assert_eq!(
            m.metadata.owner_references.as_ref().unwrap()[0].uid,
            "node-uid"
        );
        assert!(mirror_current(&m, &p) && !mirror_current(&m, &other));
    }

    #[test]
    fn bad_manifests_say_why() {
        let e = parse(
            Path::new("/m/x.yaml"),
            b"kind: Service\napiVersion: v1\n",
            "n",
        )
        .unwrap_err();
        assert!(e.contains("one Pod"), "{e}");
        let e = parse(Path::new("/m/x.json"), b"{", "n").unwrap_err();
        assert!(e.contains("not valid JSON"), "{e}");
        let e = parse(
            Path::new("/m/x.yaml"),
            b"apiVersion: v1\nkind: Pod\nmetadata: {name: a}\nspec: {containers: []}\n",
            "n",
        )
        .unwrap_err();
        assert!(e.contains("at least one container"), "{e}");
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.yaml"), MANIFEST).unwrap();
        std::fs::write(dir.path().join(".hidden.yaml"), MANIFEST).unwrap();
        std::fs::write(dir.path().join("notes.txt"), "x").unwrap();
        let all = read_dir(dir.path(), "n");
        assert_eq!(all.len(), 1);
    }
}
