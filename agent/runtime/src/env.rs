//! A container's environment, as the kubelet's `makeEnvironmentVariables` builds it:
//! `envFrom` sources first (in order, with their prefix), then `env` in order, later
//! definitions replacing earlier ones; `$(VAR)` in values refers to variables defined
//! before (`$$` escapes), and the same expansion applies to command and args.
//!
//! ConfigMaps and Secrets are fetched by the caller ([`Refs`]); resolution is pure.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{ConfigMap, Container, Pod, Secret};

/// The ConfigMaps and Secrets a pod refers to (`None`: does not exist).
#[derive(Debug, Clone, Default)]
pub struct Refs {
    pub config_maps: BTreeMap<String, Option<ConfigMap>>,
    pub secrets: BTreeMap<String, Option<Secret>>,
}

impl Refs {
    /// The names a pod refers to, for fetching: (ConfigMaps, Secrets).
    pub fn wanted(pod: &Pod) -> (Vec<String>, Vec<String>) {
        let mut cms = Vec::new();
        let mut secrets = Vec::new();
        let spec = pod.spec.clone().unwrap_or_default();
        for c in spec
            .init_containers
            .iter()
            .flatten()
            .chain(spec.containers.iter())
        {
            for e in c.env_from.iter().flatten() {
                if let Some(r) = &e.config_map_ref {
                    cms.push(r.name.clone());
                }
                if let Some(r) = &e.secret_ref {
                    secrets.push(r.name.clone());
                }
            }
            for e in c.env.iter().flatten() {
                let Some(v) = &e.value_from else { continue };
                if let Some(r) = &v.config_map_key_ref {
                    cms.push(r.name.clone());
                }
                if let Some(r) = &v.secret_key_ref {
                    secrets.push(r.name.clone());
                }
            }
        }
        for v in spec.volumes.iter().flatten() {
            if let Some(c) = &v.config_map {
                cms.push(c.name.clone());
            }
            if let Some(s) = &v.secret {
                if let Some(n) = &s.secret_name {
                    secrets.push(n.clone());
                }
            }
        }
        cms.sort();
        cms.dedup();
        secrets.sort();
        secrets.dedup();
        (cms, secrets)
    }

    /// A ConfigMap's key (data, then binaryData as UTF-8).
    pub fn config_map_key(&self, name: &str, key: &str) -> Lookup {
        match self.config_maps.get(name) {
            None | Some(None) => Lookup::NoObject,
            Some(Some(cm)) => {
                if let Some(v) = cm.data.as_ref().and_then(|d| d.get(key)) {
                    Lookup::Found(v.clone())
                } else if let Some(v) = cm.binary_data.as_ref().and_then(|d| d.get(key)) {
                    Lookup::Found(String::from_utf8_lossy(&v.0).into_owned())
                } else {
                    Lookup::NoKey
                }
            }
        }
    }

    pub fn secret_key(&self, name: &str, key: &str) -> Lookup {
        match self.secrets.get(name) {
            None | Some(None) => Lookup::NoObject,
            Some(Some(s)) => {
                if let Some(v) = s.data.as_ref().and_then(|d| d.get(key)) {
                    Lookup::Found(String::from_utf8_lossy(&v.0).into_owned())
                } else if let Some(v) = s.string_data.as_ref().and_then(|d| d.get(key)) {
                    Lookup::Found(v.clone())
                } else {
                    Lookup::NoKey
                }
            }
        }
    }
}

/// The result of looking a key up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    Found(String),
    NoObject,
    NoKey,
}

/// Key/value pairs of an `envFrom` source.
type Pairs = Vec<(String, String)>;

/// Pod facts `fieldRef` can name.
#[derive(Debug, Clone, Default)]
pub struct PodFacts {
    pub pod_ips: Vec<String>,
    pub host_ip: Option<String>,
    pub node_name: String,
}

/// Builds the environment of `c`; the error is a `CreateContainerConfigError` message.
pub fn build(
    pod: &Pod,
    c: &Container,
    facts: &PodFacts,
    refs: &Refs,
) -> Result<Vec<(String, String)>, String> {
    let mut env: Vec<(String, String)> = Vec::new();
    let set = |env: &mut Vec<(String, String)>, k: String, v: String| {
        if let Some(e) = env.iter_mut().find(|(n, _)| *n == k) {
            e.1 = v;
        } else {
            env.push((k, v));
        }
    };
    for (i, from) in c.env_from.iter().flatten().enumerate() {
        let prefix = from.prefix.clone().unwrap_or_default();
        let (kind, name, optional, pairs): (&str, String, bool, Option<Pairs>) =
            if let Some(r) = &from.config_map_ref {
                let pairs = refs.config_maps.get(&r.name).cloned().flatten().map(|cm| {
                    let mut v: Vec<(String, String)> =
                        cm.data.unwrap_or_default().into_iter().collect();
                    v.extend(
                        cm.binary_data
                            .unwrap_or_default()
                            .into_iter()
                            .map(|(k, b)| (k, String::from_utf8_lossy(&b.0).into_owned())),
                    );
                    v
                });
                ("ConfigMap", r.name.clone(), r.optional == Some(true), pairs)
            } else if let Some(r) = &from.secret_ref {
                let pairs = refs.secrets.get(&r.name).cloned().flatten().map(|s| {
                    s.data
                        .unwrap_or_default()
                        .into_iter()
                        .map(|(k, b)| (k, String::from_utf8_lossy(&b.0).into_owned()))
                        .collect()
                });
                ("Secret", r.name.clone(), r.optional == Some(true), pairs)
            } else {
                return Err(format!(
                    "container {:?}: envFrom[{i}] names neither a configMapRef nor a secretRef",
                    c.name
                ));
            };
        match pairs {
            Some(pairs) => {
                for (k, v) in pairs {
                    let k = format!("{prefix}{k}");
                    // Keys that are not valid variable names are skipped, as upstream
                    // (which also emits an event naming them).
                    if valid_name(&k) {
                        set(&mut env, k, v);
                    }
                }
            }
            None if optional => {}
            None => {
                return Err(format!(
                    "{kind} {:?} not found (container {:?}, envFrom[{i}]); create it or mark the reference optional",
                    name, c.name
                ))
            }
        }
    }
    for e in c.env.iter().flatten() {
        let value = if let Some(from) = &e.value_from {
            let missing = |kind: &str, obj: &str, key: &str, what: Lookup| match what {
                Lookup::NoObject => format!(
                    "{kind} {obj:?} not found (container {:?}, env {:?})",
                    c.name, e.name
                ),
                _ => format!(
                    "couldn't find key {key} in {kind} {}/{obj} (container {:?}, env {:?})",
                    pod.metadata.namespace.as_deref().unwrap_or("default"),
                    c.name,
                    e.name
                ),
            };
            if let Some(r) = &from.config_map_key_ref {
                match refs.config_map_key(&r.name, &r.key) {
                    Lookup::Found(v) => v,
                    _ if r.optional == Some(true) => continue,
                    other => return Err(missing("configmap", &r.name, &r.key, other)),
                }
            } else if let Some(r) = &from.secret_key_ref {
                match refs.secret_key(&r.name, &r.key) {
                    Lookup::Found(v) => v,
                    _ if r.optional == Some(true) => continue,
                    other => return Err(missing("secret", &r.name, &r.key, other)),
                }
            } else if let Some(f) = &from.field_ref {
                field(pod, facts, &f.field_path).ok_or_else(|| {
                    format!(
                        "container {:?}, env {:?}: fieldRef {:?} is not supported (metadata.name, metadata.namespace, metadata.uid, metadata.labels['k'], metadata.annotations['k'], spec.nodeName, spec.serviceAccountName, status.podIP, status.podIPs, status.hostIP, status.hostIPs)",
                        c.name, e.name, f.field_path
                    )
                })?
            } else {
                return Err(format!(
                    "container {:?}, env {:?}: resourceFieldRef is not supported by skiff's runtime",
                    c.name, e.name
                ));
            }
        } else {
            expand(e.value.as_deref().unwrap_or(""), &env)
        };
        set(&mut env, e.name.clone(), value);
    }
    Ok(env)
}

fn field(pod: &Pod, facts: &PodFacts, path: &str) -> Option<String> {
    let m = &pod.metadata;
    let spec = pod.spec.as_ref();
    let indexed = |prefix: &str, map: Option<&BTreeMap<String, String>>| {
        let key = path
            .strip_prefix(prefix)?
            .strip_prefix("['")?
            .strip_suffix("']")?;
        Some(map.and_then(|m| m.get(key)).cloned().unwrap_or_default())
    };
    Some(match path {
        "metadata.name" => m.name.clone().unwrap_or_default(),
        "metadata.namespace" => m.namespace.clone().unwrap_or_else(|| "default".into()),
        "metadata.uid" => m.uid.clone().unwrap_or_default(),
        "spec.nodeName" => facts.node_name.clone(),
        "spec.serviceAccountName" => spec
            .and_then(|s| s.service_account_name.clone())
            .unwrap_or_else(|| "default".into()),
        "status.podIP" => facts.pod_ips.first().cloned().unwrap_or_default(),
        "status.podIPs" => facts.pod_ips.join(","),
        "status.hostIP" | "status.hostIPs" => facts.host_ip.clone().unwrap_or_default(),
        _ => {
            return indexed("metadata.labels", m.labels.as_ref())
                .or_else(|| indexed("metadata.annotations", m.annotations.as_ref()))
        }
    })
}

/// An environment variable name the kubelet accepts (C identifier-ish, as
/// `IsEnvVarName`: letters, digits, '_', '-', '.', not starting with a digit).
fn valid_name(k: &str) -> bool {
    !k.is_empty()
        && !k.starts_with(|c: char| c.is_ascii_digit())
        && k.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
}

/// `$(VAR)` expansion (k8s.io/kubernetes/third_party/forked/golang/expansion): a defined
/// VAR is replaced, an undefined one is left as written, `$$` is a literal `$`.
pub fn expand(input: &str, env: &[(String, String)]) -> String {
    let mut out = String::with_capacity(input.len());
    let b = input.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'$' && i + 1 < b.len() {
            if b[i + 1] == b'$' {
                out.push('$');
                i += 2;
                continue;
            }
            if b[i + 1] == b'(' {
                if let Some(end) = input[i + 2..].find(')') {
                    let name = &input[i + 2..i + 2 + end];
                    match env.iter().find(|(k, _)| k == name) {
                        Some((_, v)) => out.push_str(v),
                        None => out.push_str(&input[i..i + 3 + end]),
                    }
                    i += 3 + end;
                    continue;
                }
            }
        }
        let ch = input[i..].chars().next().unwrap_or('\0');
        out.push(ch);
        i += ch.len_utf8().max(1);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod() -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": "web", "namespace": "ns1", "uid": "u-1", "labels": {"app": "a"}},
            "spec": {"containers": [{"name": "c"}], "volumes": [
                {"name": "v", "configMap": {"name": "cm-vol"}},
                {"name": "s", "secret": {"secretName": "sec"}}]}
        }))
        .unwrap()
    }

    fn container(v: serde_json::Value) -> Container {
        serde_json::from_value(v).unwrap()
    }

    fn refs() -> Refs {
        let mut r = Refs::default();
        r.config_maps.insert(
            "cm".into(),
            Some(
                serde_json::from_value(json!({"data": {"K": "v1", "bad key": "x", "L": "l"}}))
                    .unwrap(),
            ),
        );
        r.config_maps.insert("gone".into(), None);
        r.secrets.insert(
            "sec".into(),
            Some(serde_json::from_value(json!({"data": {"pw": "aHVudGVyMg=="}})).unwrap()),
        );
        r
    }

    #[test]
    fn env_from_then_env_with_expansion_and_refs() {
        let c = container(json!({"name": "c",
        "envFrom": [{"configMapRef": {"name": "cm"}, "prefix": "CM_"},
                    {"configMapRef": {"name": "gone", "optional": true}}],
        "env": [
            {"name": "A", "value": "a"},
            {"name": "B", "value": "$(A)-$(CM_K)-$(NOPE)-$$(A)"},
            {"name": "CM_L", "value": "override"},
            {"name": "PW", "valueFrom": {"secretKeyRef": {"name": "sec", "key": "pw"}}},
            {"name": "K", "valueFrom": {"configMapKeyRef": {"name": "cm", "key": "K"}}},
            {"name": "OPT", "valueFrom": {"configMapKeyRef": {"name": "cm", "key": "zz", "optional": true}}},
            {"name": "NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
            {"name": "NS", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
            {"name": "IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
            {"name": "NODE", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
            {"name": "APP", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['app']"}}},
        ]}));
        let facts = PodFacts {
            pod_ips: vec!["198.18.0.9".into()],
            host_ip: None,
            node_name: "n1".into(),
        };
        let env = build(&pod(), &c, &facts, &refs()).unwrap();
        let get = |k: &str| env.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
        assert_eq!(get("CM_K"), Some("v1"));
        assert_eq!(get("CM_bad key"), None, "invalid names are skipped");
        assert_eq!(get("CM_L"), Some("override"));
        assert_eq!(get("B"), Some("a-v1-$(NOPE)-$(A)"));
        assert_eq!(get("PW"), Some("hunter2"));
        assert_eq!(get("K"), Some("v1"));
        assert_eq!(get("OPT"), None);
        assert_eq!(get("NAME"), Some("web"));
        assert_eq!(get("NS"), Some("ns1"));
        assert_eq!(get("IP"), Some("198.18.0.9"));
        assert_eq!(get("NODE"), Some("n1"));
        assert_eq!(get("APP"), Some("a"));
        // CM_L keeps its first position though its value was replaced.
        let pos = |k: &str| env.iter().position(|(n, _)| n == k).unwrap();
        assert!(pos("CM_L") < pos("A"));
    }

    #[test]
    fn missing_references_are_config_errors() {
        let facts = PodFacts::default();
        let c = container(json!({"name": "c", "envFrom": [{"configMapRef": {"name": "gone"}}]}));
        let err = build(&pod(), &c, &facts, &refs()).unwrap_err();
        assert!(err.contains("ConfigMap \"gone\" not found"), "{err}");
        let c = container(json!({"name": "c", "env": [{"name": "X",
            "valueFrom": {"configMapKeyRef": {"name": "cm", "key": "nokey"}}}]}));
        let err = build(&pod(), &c, &facts, &refs()).unwrap_err();
        assert!(
            err.contains("couldn't find key nokey in configmap ns1/cm"),
            "{err}"
        );
        let c = container(json!({"name": "c", "env": [{"name": "X",
            "valueFrom": {"fieldRef": {"fieldPath": "spec.schedulerName"}}}]}));
        assert!(build(&pod(), &c, &facts, &refs())
            .unwrap_err()
            .contains("not supported"));
    }

    #[test]
    fn wanted_lists_every_reference_once() {
        let (cms, secrets) = Refs::wanted(&pod());
        assert_eq!(cms, ["cm-vol"]);
        assert_eq!(secrets, ["sec"]);
    }

    #[test]
    fn expansion_edge_cases() {
        let env = vec![("A".to_string(), "1".to_string())];
        assert_eq!(expand("$(A)$(A)", &env), "11");
        assert_eq!(expand("$(A", &env), "$(A");
        assert_eq!(expand("$", &env), "$");
        assert_eq!(expand("x$yé$(A)", &env), "x$yé1");
    }
}
