//! Volumes materialised as host directories under the pod's directory
//! (`<state>/pods/<uid>/volumes/<name>`), and the per-container mount list.
//!
//! - `emptyDir`: an empty directory (medium Memory included: a plain directory, no
//!   tmpfs, and `sizeLimit` is not enforced);
//! - `hostPath`: the node path itself, checked or created per `type` as upstream;
//! - `configMap` / `secret`: one file per key (or per `items` entry), mode from
//!   `defaultMode`/`mode` (0644 default), written once when the pod starts (later
//!   changes of the object are not propagated yet).
//!
//! Anything else is refused with a message naming the volume.

use std::{
    collections::BTreeMap,
    os::unix::fs::{FileTypeExt as _, PermissionsExt as _},
    path::{Component, Path, PathBuf},
};

use k8s_openapi::api::core::v1::{Container, KeyToPath, Pod};

use crate::env::Refs;

/// One bind mount of a container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    pub source: PathBuf,
    /// The mountPath as the container sees it (absolute).
    pub target: PathBuf,
    pub read_only: bool,
}

/// Creates every volume of `pod` under `dir`; returns volume name → host path.
pub fn materialise(
    pod: &Pod,
    dir: &Path,
    refs: &Refs,
) -> Result<BTreeMap<String, PathBuf>, String> {
    let mut out = BTreeMap::new();
    let spec = pod.spec.clone().unwrap_or_default();
    for v in spec.volumes.iter().flatten() {
        let path = dir.join(&v.name);
        let io = |what: &str, p: &Path, e: std::io::Error| {
            format!("volume {:?}: {what} {}: {e}", v.name, p.display())
        };
        if v.empty_dir.is_some() {
            std::fs::create_dir_all(&path).map_err(|e| io("creating", &path, e))?;
            // Like the kubelet's emptyDir: world-writable so any user in the pod can write.
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o777))
                .map_err(|e| io("setting the mode of", &path, e))?;
            out.insert(v.name.clone(), path);
        } else if let Some(h) = &v.host_path {
            let p = PathBuf::from(&h.path);
            check_host_path(&p, h.type_.as_deref().unwrap_or(""))
                .map_err(|e| format!("volume {:?}: hostPath {}: {e}", v.name, p.display()))?;
            out.insert(v.name.clone(), p);
        } else if let Some(cm) = &v.config_map {
            let keys = match refs.config_maps.get(&cm.name).cloned().flatten() {
                Some(o) => {
                    let mut m: BTreeMap<String, Vec<u8>> = o
                        .data
                        .unwrap_or_default()
                        .into_iter()
                        .map(|(k, v)| (k, v.into_bytes()))
                        .collect();
                    m.extend(
                        o.binary_data
                            .unwrap_or_default()
                            .into_iter()
                            .map(|(k, b)| (k, b.0)),
                    );
                    Some(m)
                }
                None if cm.optional == Some(true) => Some(BTreeMap::new()),
                None => None,
            };
            let keys = keys.ok_or_else(|| {
                format!(
                    "volume {:?}: configmap {:?} not found; create it or mark the volume optional",
                    v.name, cm.name
                )
            })?;
            write_keys(
                &path,
                &keys,
                cm.items.as_deref(),
                cm.default_mode,
                cm.optional == Some(true),
                &format!("configmap {:?}", cm.name),
            )
            .map_err(|e| format!("volume {:?}: {e}", v.name))?;
            out.insert(v.name.clone(), path);
        } else if let Some(s) = &v.secret {
            let name = s.secret_name.clone().unwrap_or_default();
            let keys = match refs.secrets.get(&name).cloned().flatten() {
                Some(o) => Some(
                    o.data
                        .unwrap_or_default()
                        .into_iter()
                        .map(|(k, b)| (k, b.0))
                        .collect(),
                ),
                None if s.optional == Some(true) => Some(BTreeMap::new()),
                None => None,
            };
            let keys = keys.ok_or_else(|| {
                format!(
                    "volume {:?}: secret {name:?} not found; create it or mark the volume optional",
                    v.name
                )
            })?;
            write_keys(
                &path,
                &keys,
                s.items.as_deref(),
                s.default_mode,
                s.optional == Some(true),
                &format!("secret {name:?}"),
            )
            .map_err(|e| format!("volume {:?}: {e}", v.name))?;
            out.insert(v.name.clone(), path);
        } else {
            return Err(format!(
                "volume {:?}: only emptyDir, hostPath, configMap and secret volumes are supported by skiff's runtime",
                v.name
            ));
        }
    }
    Ok(out)
}

fn check_host_path(p: &Path, ty: &str) -> Result<(), String> {
    let meta = std::fs::metadata(p);
    let want = |ok: bool, what: &str| {
        if ok {
            Ok(())
        } else {
            Err(format!("is not a {what} (type {ty})"))
        }
    };
    match ty {
        "" => Ok(()),
        "DirectoryOrCreate" => match meta {
            Ok(m) => want(m.is_dir(), "directory"),
            Err(_) => {
                std::fs::create_dir_all(p).map_err(|e| format!("creating: {e}"))?;
                std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o755))
                    .map_err(|e| e.to_string())
            }
        },
        "FileOrCreate" => match meta {
            Ok(m) => want(m.is_file(), "file"),
            Err(_) => std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)
                .map(|_| ())
                .map_err(|e| format!("creating: {e}")),
        },
        "Directory" | "File" | "Socket" | "CharDevice" | "BlockDevice" => {
            let m = meta.map_err(|e| format!("does not exist ({e}); type {ty} needs it"))?;
            let ft = m.file_type();
            match ty {
                "Directory" => want(ft.is_dir(), "directory"),
                "File" => want(ft.is_file(), "file"),
                "Socket" => want(ft.is_socket(), "socket"),
                "CharDevice" => want(ft.is_char_device(), "character device"),
                _ => want(ft.is_block_device(), "block device"),
            }
        }
        other => Err(format!("unknown hostPath type {other:?}")),
    }
}

/// A relative path without `..`, as upstream validates `items[].path` and `subPath`.
fn safe_relative(p: &str) -> bool {
    let path = Path::new(p);
    !p.is_empty()
        && path
            .components()
            .all(|c| matches!(c, Component::Normal(_) | Component::CurDir))
}

fn write_keys(
    dir: &Path,
    keys: &BTreeMap<String, Vec<u8>>,
    items: Option<&[KeyToPath]>,
    default_mode: Option<i32>,
    optional: bool,
    what: &str,
) -> Result<(), String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    let default_mode = default_mode.unwrap_or(0o644) as u32;
    let mut files: Vec<(String, &[u8], u32)> = Vec::new();
    match items {
        None => {
            for (k, v) in keys {
                files.push((k.clone(), v, default_mode));
            }
        }
        Some(items) => {
            for it in items {
                match keys.get(&it.key) {
                    Some(v) => files.push((
                        it.path.clone(),
                        v,
                        it.mode.map_or(default_mode, |m| m as u32),
                    )),
                    None if optional => {}
                    None => {
                        return Err(format!(
                            "{what} has no key {:?} (items); add it or mark the volume optional",
                            it.key
                        ))
                    }
                }
            }
        }
    }
    for (rel, data, mode) in files {
        if !safe_relative(&rel) {
            return Err(format!(
                "{what}: path {rel:?} must be relative and must not contain '..'"
            ));
        }
        let p = dir.join(&rel);
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent).map_err(|e| e.to_string())?;
        }
        std::fs::write(&p, data).map_err(|e| format!("writing {}: {e}", p.display()))?;
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode & 0o777))
            .map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// The bind mounts of container `c`, given the materialised volumes.
pub fn mounts(c: &Container, volumes: &BTreeMap<String, PathBuf>) -> Result<Vec<Mount>, String> {
    let mut out = Vec::new();
    for m in c.volume_mounts.iter().flatten() {
        let src = volumes.get(&m.name).ok_or_else(|| {
            format!(
                "container {:?}: volumeMount {:?} names no volume of the pod",
                c.name, m.name
            )
        })?;
        if !m.mount_path.starts_with('/') {
            return Err(format!(
                "container {:?}: mountPath {:?} must be absolute",
                c.name, m.mount_path
            ));
        }
        let source = match m.sub_path.as_deref().filter(|s| !s.is_empty()) {
            None => src.clone(),
            Some(sp) if safe_relative(sp) => {
                let p = src.join(sp);
                if !p.exists() {
                    std::fs::create_dir_all(&p).map_err(|e| {
                        format!(
                            "container {:?}: creating subPath {}: {e}",
                            c.name,
                            p.display()
                        )
                    })?;
                }
                p
            }
            Some(sp) => {
                return Err(format!(
                    "container {:?}: subPath {sp:?} must be relative and must not contain '..'",
                    c.name
                ))
            }
        };
        out.push(Mount {
            source,
            target: PathBuf::from(&m.mount_path),
            read_only: m.read_only == Some(true),
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn materialises_each_kind_and_maps_mounts() {
        let host = tempfile::tempdir().unwrap();
        let hp = host.path().join("made");
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": "p"},
            "spec": {"containers": [{"name": "c", "volumeMounts": [
                {"name": "cfg", "mountPath": "/etc/cfg", "readOnly": true},
                {"name": "scratch", "mountPath": "/scratch", "subPath": "sub"}]}],
              "volumes": [
                {"name": "scratch", "emptyDir": {}},
                {"name": "hp", "hostPath": {"path": hp.to_str().unwrap(), "type": "DirectoryOrCreate"}},
                {"name": "cfg", "configMap": {"name": "cm", "items": [{"key": "a", "path": "x/a.txt", "mode": 0o600}]}},
                {"name": "sec", "secret": {"secretName": "s", "defaultMode": 0o400}}]}
        }))
        .unwrap();
        let mut refs = Refs::default();
        refs.config_maps.insert(
            "cm".into(),
            Some(serde_json::from_value(json!({"data": {"a": "A", "b": "B"}})).unwrap()),
        );
        refs.secrets.insert(
            "s".into(),
            Some(serde_json::from_value(json!({"data": {"k": "c2VjcmV0"}})).unwrap()),
        );
        let dir = tempfile::tempdir().unwrap();
        let vols = materialise(&pod, dir.path(), &refs).unwrap();
        assert!(hp.is_dir());
        assert_eq!(vols["hp"], hp);
        let a = vols["cfg"].join("x/a.txt");
        assert_eq!(std::fs::read_to_string(&a).unwrap(), "A");
        assert!(!vols["cfg"].join("b").exists(), "items select keys");
        assert_eq!(
            std::fs::metadata(&a).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let k = vols["sec"].join("k");
        assert_eq!(std::fs::read_to_string(&k).unwrap(), "secret");
        assert_eq!(
            std::fs::metadata(&k).unwrap().permissions().mode() & 0o777,
            0o400
        );
        let c = &pod.spec.as_ref().unwrap().containers[0];
        let m = mounts(c, &vols).unwrap();
        assert_eq!(
            m,
            [
                Mount {
                    source: vols["cfg"].clone(),
                    target: "/etc/cfg".into(),
                    read_only: true
                },
                Mount {
                    source: vols["scratch"].join("sub"),
                    target: "/scratch".into(),
                    read_only: false
                }
            ]
        );
    }

    #[test]
    fn bad_volumes_are_refused_with_the_volume_name() {
        let refs = Refs::default();
        let dir = tempfile::tempdir().unwrap();
        let pod = |v: serde_json::Value| -> Pod {
            serde_json::from_value(json!({"spec": {"containers": [], "volumes": [v]}})).unwrap()
        };
        let err = materialise(
            &pod(json!({"name": "x", "configMap": {"name": "nope"}})),
            dir.path(),
            &refs,
        )
        .unwrap_err();
        assert!(err.contains("\"x\"") && err.contains("not found"), "{err}");
        assert!(materialise(
            &pod(json!({"name": "x", "configMap": {"name": "nope", "optional": true}})),
            dir.path(),
            &refs
        )
        .is_ok());
        let err = materialise(
            &pod(json!({"name": "x", "hostPath": {"path": "/nonexistent/skiff", "type": "Directory"}})),
            dir.path(),
            &refs,
        )
        .unwrap_err();
        assert!(err.contains("does not exist"), "{err}");
        let err = materialise(
            &pod(json!({"name": "x", "nfs": {"server": "a", "path": "/"}})),
            dir.path(),
            &refs,
        )
        .unwrap_err();
        assert!(err.contains("only emptyDir"), "{err}");
        let mut refs = Refs::default();
        refs.config_maps.insert(
            "cm".into(),
            Some(serde_json::from_value(json!({"data": {"a": "A"}})).unwrap()),
        );
        let err = materialise(
            &pod(json!({"name": "x", "configMap": {"name": "cm", "items": [{"key": "a", "path": "../a"}]}})),
            dir.path(),
            &refs,
        )
        .unwrap_err();
        assert!(err.contains("must not contain '..'"), "{err}");
    }
}
