//! Defaulting on create/update, as upstream's generated defaulters
//! (`pkg/apis/core/v1/defaults.go`, `pkg/apis/apps/v1/defaults.go`,
//! `pkg/apis/batch/v1/defaults.go`, `pkg/apis/discovery/v1/defaults.go`) plus the few
//! defaults upstream sets in its registry strategies (Namespace `spec.finalizers`,
//! Service `ipFamilyPolicy`/`ipFamilies`).
//!
//! The JSON object is decoded into k8s-openapi's typed struct for its kind, defaulted,
//! and encoded again; fields k8s-openapi does not know are dropped by the round trip, so
//! `fieldValidation` ([`crate::unknown_fields`]) must run on the raw body first. Kinds
//! without defaults here (ConfigMap, ServiceAccount, Event, Lease...) are returned
//! unchanged.

use k8s_openapi::api::apps::v1::{
    DaemonSet, DaemonSetUpdateStrategy, Deployment, DeploymentStrategy, ReplicaSet,
    RollingUpdateDaemonSet, RollingUpdateDeployment,
};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{
    ClientIPConfig, Container, Endpoints, Namespace, NamespaceSpec, NamespaceStatus, Node, Pod,
    PodSecurityContext, PodSpec, Probe, Secret, Service, SessionAffinityConfig, Volume,
};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::{json, Value};
use std::fmt;

/// The body does not decode as the kind it claims to be (a field of the wrong JSON
/// type). The server answers 400 BadRequest with this message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodeError {
    pub message: String,
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for DecodeError {}

/// Decodes `obj` as `T`, with upstream's wording for a body that does not fit
/// (`Service in version "v1" cannot be handled as a Service: ...`).
pub fn decode<T: DeserializeOwned>(kind: &str, obj: &Value) -> Result<T, DecodeError> {
    serde_json::from_value(obj.clone()).map_err(|e| {
        let version = obj.get("apiVersion").and_then(Value::as_str).unwrap_or("");
        DecodeError {
            message: format!("{kind} in version {version:?} cannot be handled as a {kind}: {e}"),
        }
    })
}

fn roundtrip<T: DeserializeOwned + Serialize>(
    kind: &str,
    obj: &Value,
    f: impl FnOnce(&mut T),
) -> Result<Value, DecodeError> {
    let mut typed: T = decode(kind, obj)?;
    f(&mut typed);
    serde_json::to_value(&typed).map_err(|e| DecodeError {
        message: format!("{kind} could not be encoded: {e}"),
    })
}

fn set<T>(slot: &mut Option<T>, v: T) {
    if slot.is_none() {
        *slot = Some(v);
    }
}

fn set_str(slot: &mut Option<String>, v: &str) {
    if slot.as_deref().unwrap_or("").is_empty() {
        *slot = Some(v.to_string());
    }
}

/// Applies upstream's defaults for `kind` to `obj`.
pub fn apply_defaults(kind: &str, obj: &Value) -> Result<Value, DecodeError> {
    let mut out = defaulted(kind, obj)?;
    // k8s-openapi models the workloads' required `spec.selector` as a plain struct, so the
    // round trip would turn a missing selector into `{}`; keep it missing, so that
    // validation reports `Required value` like upstream (whose field is a pointer).
    if matches!(kind, "Deployment" | "ReplicaSet" | "DaemonSet")
        && obj.pointer("/spec/selector").is_none()
    {
        if let Some(spec) = out.get_mut("spec").and_then(Value::as_object_mut) {
            spec.remove("selector");
        }
    }
    Ok(out)
}

fn defaulted(kind: &str, obj: &Value) -> Result<Value, DecodeError> {
    match kind {
        "Service" => roundtrip(kind, obj, default_service),
        "Pod" => roundtrip(kind, obj, |p: &mut Pod| {
            if let Some(spec) = p.spec.as_mut() {
                default_pod_spec(spec);
                default_pod_only(spec);
            }
        }),
        "Deployment" => roundtrip(kind, obj, |d: &mut Deployment| {
            let Some(spec) = d.spec.as_mut() else { return };
            set(&mut spec.replicas, 1);
            let strategy = spec
                .strategy
                .get_or_insert_with(DeploymentStrategy::default);
            set_str(&mut strategy.type_, "RollingUpdate");
            if strategy.type_.as_deref() == Some("RollingUpdate") {
                let ru = strategy
                    .rolling_update
                    .get_or_insert_with(RollingUpdateDeployment::default);
                set(&mut ru.max_unavailable, IntOrString::String("25%".into()));
                set(&mut ru.max_surge, IntOrString::String("25%".into()));
            }
            set(&mut spec.revision_history_limit, 10);
            set(&mut spec.progress_deadline_seconds, 600);
            if let Some(ps) = spec.template.spec.as_mut() {
                default_pod_spec(ps);
            }
        }),
        "ReplicaSet" => roundtrip(kind, obj, |r: &mut ReplicaSet| {
            let Some(spec) = r.spec.as_mut() else { return };
            set(&mut spec.replicas, 1);
            if let Some(ps) = spec.template.as_mut().and_then(|t| t.spec.as_mut()) {
                default_pod_spec(ps);
            }
        }),
        "DaemonSet" => roundtrip(kind, obj, |d: &mut DaemonSet| {
            let Some(spec) = d.spec.as_mut() else { return };
            let us = spec
                .update_strategy
                .get_or_insert_with(DaemonSetUpdateStrategy::default);
            set_str(&mut us.type_, "RollingUpdate");
            if us.type_.as_deref() == Some("RollingUpdate") {
                let ru = us
                    .rolling_update
                    .get_or_insert_with(RollingUpdateDaemonSet::default);
                set(&mut ru.max_unavailable, IntOrString::Int(1));
                set(&mut ru.max_surge, IntOrString::Int(0));
            }
            set(&mut spec.revision_history_limit, 10);
            if let Some(ps) = spec.template.spec.as_mut() {
                default_pod_spec(ps);
            }
        }),
        "Job" => roundtrip(kind, obj, |j: &mut Job| {
            let template_labels = j
                .spec
                .as_ref()
                .and_then(|s| s.template.metadata.as_ref())
                .and_then(|m| m.labels.clone());
            let Some(spec) = j.spec.as_mut() else { return };
            // Both unset means a non-parallel job: one completion, one pod at a time.
            if spec.completions.is_none() && spec.parallelism.is_none() {
                spec.completions = Some(1);
            }
            set(&mut spec.parallelism, 1);
            let backoff = if spec.backoff_limit_per_index.is_some() {
                i32::MAX
            } else {
                6
            };
            set(&mut spec.backoff_limit, backoff);
            set_str(&mut spec.completion_mode, "NonIndexed");
            set(&mut spec.suspend, false);
            let replacement = if spec.pod_failure_policy.is_some() {
                "Failed"
            } else {
                "TerminatingOrFailed"
            };
            set_str(&mut spec.pod_replacement_policy, replacement);
            if let Some(ps) = spec.template.spec.as_mut() {
                default_pod_spec(ps);
            }
            // Upstream copies the template labels to an unlabelled Job.
            if j.metadata.labels.as_ref().is_none_or(|l| l.is_empty()) {
                if let Some(l) = template_labels {
                    j.metadata.labels = Some(l);
                }
            }
        }),
        "EndpointSlice" => roundtrip(kind, obj, |s: &mut EndpointSlice| {
            for p in s.ports.iter_mut().flatten() {
                set(&mut p.name, String::new());
                set_str(&mut p.protocol, "TCP");
            }
        }),
        "Endpoints" => roundtrip(kind, obj, |e: &mut Endpoints| {
            for p in e
                .subsets
                .iter_mut()
                .flatten()
                .flat_map(|s| s.ports.iter_mut().flatten())
            {
                set_str(&mut p.protocol, "TCP");
            }
        }),
        "Namespace" => roundtrip(kind, obj, |n: &mut Namespace| {
            // NamespaceDefaultLabelName (GA 1.22): the immutable name label.
            if let Some(name) = n.metadata.name.clone() {
                n.metadata
                    .labels
                    .get_or_insert_with(Default::default)
                    .insert("kubernetes.io/metadata.name".into(), name);
            }
            // The registry's PrepareForCreate adds the `kubernetes` finalizer.
            let spec = n.spec.get_or_insert_with(NamespaceSpec::default);
            set(&mut spec.finalizers, vec!["kubernetes".to_string()]);
            let status = n.status.get_or_insert_with(NamespaceStatus::default);
            set_str(&mut status.phase, "Active");
        }),
        "Node" => roundtrip(kind, obj, |n: &mut Node| {
            if let Some(st) = n.status.as_mut() {
                if st.allocatable.is_none() {
                    st.allocatable = st.capacity.clone();
                }
            }
        }),
        "Secret" => roundtrip(kind, obj, |s: &mut Secret| set_str(&mut s.type_, "Opaque")),
        _ => Ok(obj.clone()),
    }
}

fn default_service(s: &mut Service) {
    let Some(spec) = s.spec.as_mut() else { return };
    set_str(&mut spec.session_affinity, "None");
    match spec.session_affinity.as_deref() {
        Some("None") => spec.session_affinity_config = None,
        Some("ClientIP") => {
            let has_timeout = spec
                .session_affinity_config
                .as_ref()
                .and_then(|c| c.client_ip.as_ref())
                .and_then(|c| c.timeout_seconds)
                .is_some();
            if !has_timeout {
                // DefaultClientIPServiceAffinitySeconds: 3 hours.
                spec.session_affinity_config = Some(SessionAffinityConfig {
                    client_ip: Some(ClientIPConfig {
                        timeout_seconds: Some(10800),
                    }),
                });
            }
        }
        _ => {}
    }
    set_str(&mut spec.type_, "ClusterIP");
    let ty = spec.type_.clone().unwrap_or_default();
    for p in spec.ports.iter_mut().flatten() {
        set_str(&mut p.protocol, "TCP");
        let unset = match &p.target_port {
            None => true,
            Some(IntOrString::Int(0)) => true,
            Some(IntOrString::String(s)) => s.is_empty(),
            Some(IntOrString::Int(_)) => false,
        };
        if unset {
            p.target_port = Some(IntOrString::Int(p.port));
        }
    }
    // serviceutil.ExternallyAccessible: LoadBalancer, NodePort, or ClusterIP with externalIPs.
    let external = ty == "LoadBalancer"
        || ty == "NodePort"
        || (ty == "ClusterIP" && spec.external_ips.as_ref().is_some_and(|e| !e.is_empty()));
    if external {
        set_str(&mut spec.external_traffic_policy, "Cluster");
    }
    if matches!(ty.as_str(), "ClusterIP" | "NodePort" | "LoadBalancer") {
        set_str(&mut spec.internal_traffic_policy, "Cluster");
    }
    if ty == "LoadBalancer" {
        set(&mut spec.allocate_load_balancer_node_ports, true);
    }
    // The registry keeps `clusterIPs[0]` equal to `clusterIP` (normalizeClusterIPs).
    if let Some(ip) = spec.cluster_ip.clone().filter(|ip| !ip.is_empty()) {
        if spec.cluster_ips.as_ref().is_none_or(|c| c.is_empty()) {
            spec.cluster_ips = Some(vec![ip]);
        }
    }
    // The registry (not defaults.go) fills the IP family fields for every type but
    // ExternalName. skiff clusters are single-stack: the family is the clusterIP's when
    // one is given, else IPv4.
    if ty != "ExternalName" {
        set_str(&mut spec.ip_family_policy, "SingleStack");
        if spec.ip_families.as_ref().is_none_or(|f| f.is_empty()) {
            let v6 = spec
                .cluster_ip
                .as_deref()
                .is_some_and(|ip| ip.contains(':'));
            spec.ip_families = Some(vec![if v6 { "IPv6" } else { "IPv4" }.to_string()]);
        }
    }
}

/// `SetDefaults_PodSpec` and the container/probe/volume defaulters beneath it; these run
/// for Pods and for every pod template.
fn default_pod_spec(spec: &mut PodSpec) {
    set_str(&mut spec.dns_policy, "ClusterFirst");
    set_str(&mut spec.restart_policy, "Always");
    set(&mut spec.security_context, PodSecurityContext::default());
    set(&mut spec.termination_grace_period_seconds, 30);
    set_str(&mut spec.scheduler_name, "default-scheduler");
    for c in spec
        .containers
        .iter_mut()
        .chain(spec.init_containers.iter_mut().flatten())
    {
        default_container(c);
    }
    for v in spec.volumes.iter_mut().flatten() {
        default_volume(v);
    }
}

/// `SetDefaults_Pod`: what runs for Pods only, not for templates.
fn default_pod_only(spec: &mut PodSpec) {
    set(&mut spec.enable_service_links, true);
    let host_network = spec.host_network == Some(true);
    for c in spec
        .containers
        .iter_mut()
        .chain(spec.init_containers.iter_mut().flatten())
    {
        // Requests default to limits for each resource with a limit and no request.
        if let Some(res) = c.resources.as_mut() {
            if let Some(limits) = res.limits.clone() {
                let requests = res.requests.get_or_insert_with(Default::default);
                for (k, v) in limits {
                    requests.entry(k).or_insert(v);
                }
            }
        }
        // With hostNetwork the host port is the container port.
        if host_network {
            for p in c.ports.iter_mut().flatten() {
                if p.host_port.unwrap_or(0) == 0 {
                    p.host_port = Some(p.container_port);
                }
            }
        }
    }
}

/// Upstream's image-name parsing, reduced to what pull-policy defaulting needs: the tag
/// of the last path component, `latest` when neither tag nor digest is given.
fn image_tag(image: &str) -> Option<&str> {
    if image.contains('@') {
        return None;
    }
    let last = image.rsplit('/').next().unwrap_or(image);
    Some(last.split_once(':').map(|(_, t)| t).unwrap_or("latest"))
}

fn default_container(c: &mut Container) {
    if c.image_pull_policy.as_deref().unwrap_or("").is_empty() {
        let always = image_tag(c.image.as_deref().unwrap_or("")) == Some("latest");
        c.image_pull_policy = Some(if always { "Always" } else { "IfNotPresent" }.into());
    }
    set_str(&mut c.termination_message_path, "/dev/termination-log");
    set_str(&mut c.termination_message_policy, "File");
    for p in c.ports.iter_mut().flatten() {
        set_str(&mut p.protocol, "TCP");
    }
    for e in c.env.iter_mut().flatten() {
        if let Some(fr) = e.value_from.as_mut().and_then(|v| v.field_ref.as_mut()) {
            set_str(&mut fr.api_version, "v1");
        }
    }
    for p in [
        &mut c.liveness_probe,
        &mut c.readiness_probe,
        &mut c.startup_probe,
    ]
    .into_iter()
    .flatten()
    {
        default_probe(p);
    }
}

fn default_probe(p: &mut Probe) {
    set(&mut p.timeout_seconds, 1);
    set(&mut p.period_seconds, 10);
    set(&mut p.success_threshold, 1);
    set(&mut p.failure_threshold, 3);
    if let Some(h) = p.http_get.as_mut() {
        set_str(&mut h.path, "/");
        set_str(&mut h.scheme, "HTTP");
    }
}

fn default_volume(v: &mut Volume) {
    // SetDefaults_Volume: a volume with no source is an emptyDir.
    let only_name = serde_json::to_value(&*v)
        .ok()
        .and_then(|j| j.as_object().map(|m| m.keys().all(|k| k == "name")))
        .unwrap_or(false);
    if only_name {
        v.empty_dir = Some(Default::default());
    }
    // 0644, upstream's Secret/ConfigMap/projected volume default mode.
    const MODE: i32 = 0o644;
    if let Some(cm) = v.config_map.as_mut() {
        set(&mut cm.default_mode, MODE);
    }
    if let Some(s) = v.secret.as_mut() {
        set(&mut s.default_mode, MODE);
    }
    if let Some(p) = v.projected.as_mut() {
        set(&mut p.default_mode, MODE);
    }
    if let Some(d) = v.downward_api.as_mut() {
        set(&mut d.default_mode, MODE);
    }
}

/// A JSON null-safe accessor used by the tests and the server: the defaulted value at a
/// JSON pointer, or null.
pub fn at<'a>(obj: &'a Value, pointer: &str) -> &'a Value {
    static NULL: Value = json!(null);
    obj.pointer(pointer).unwrap_or(&NULL)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// (kind, input, [(JSON pointer, expected value after defaulting)])
    type Case = (&'static str, Value, Vec<(&'static str, Value)>);

    fn check(cases: Vec<Case>) {
        for (kind, input, expects) in cases {
            let out = apply_defaults(kind, &input).unwrap_or_else(|e| panic!("{kind}: {e}"));
            for (ptr, want) in expects {
                assert_eq!(at(&out, ptr), &want, "{kind} {ptr} of {input}");
            }
        }
    }

    #[test]
    fn service_defaults() {
        let svc = |spec: Value| json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web"}, "spec": spec});
        check(vec![
            (
                "Service",
                svc(
                    json!({"ports": [{"name": "http", "port": 80, "targetPort": "http"}, {"port": 53, "protocol": "UDP"}], "selector": {"app": "web"}}),
                ),
                vec![
                    ("/spec/type", json!("ClusterIP")),
                    ("/spec/sessionAffinity", json!("None")),
                    ("/spec/internalTrafficPolicy", json!("Cluster")),
                    ("/spec/ipFamilyPolicy", json!("SingleStack")),
                    ("/spec/ipFamilies", json!(["IPv4"])),
                    ("/spec/externalTrafficPolicy", json!(null)),
                    ("/spec/ports/0/protocol", json!("TCP")),
                    ("/spec/ports/0/targetPort", json!("http")),
                    ("/spec/ports/1/protocol", json!("UDP")),
                    ("/spec/ports/1/targetPort", json!(53)),
                    ("/spec/allocateLoadBalancerNodePorts", json!(null)),
                    ("/apiVersion", json!("v1")),
                    ("/kind", json!("Service")),
                ],
            ),
            (
                "Service",
                svc(
                    json!({"type": "LoadBalancer", "ports": [{"port": 443, "targetPort": 0}], "sessionAffinity": "ClientIP"}),
                ),
                vec![
                    ("/spec/externalTrafficPolicy", json!("Cluster")),
                    ("/spec/allocateLoadBalancerNodePorts", json!(true)),
                    ("/spec/ports/0/targetPort", json!(443)),
                    (
                        "/spec/sessionAffinityConfig",
                        json!({"clientIP": {"timeoutSeconds": 10800}}),
                    ),
                ],
            ),
            (
                "Service",
                svc(
                    json!({"type": "NodePort", "externalTrafficPolicy": "Local", "clusterIP": "fd00::10"}),
                ),
                vec![
                    ("/spec/externalTrafficPolicy", json!("Local")),
                    ("/spec/ipFamilies", json!(["IPv6"])),
                    ("/spec/clusterIPs", json!(["fd00::10"])),
                ],
            ),
            (
                "Service",
                svc(json!({"externalIPs": ["1.2.3.4"]})),
                vec![("/spec/externalTrafficPolicy", json!("Cluster"))],
            ),
            (
                "Service",
                svc(json!({"type": "ExternalName", "externalName": "example.com"})),
                vec![
                    ("/spec/internalTrafficPolicy", json!(null)),
                    ("/spec/ipFamilyPolicy", json!(null)),
                    ("/spec/sessionAffinity", json!("None")),
                ],
            ),
            (
                "Service",
                svc(
                    json!({"sessionAffinity": "None", "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 5}}}),
                ),
                vec![("/spec/sessionAffinityConfig", json!(null))],
            ),
        ]);
    }

    #[test]
    fn pod_defaults() {
        let pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}, "spec": {
            "containers": [
                {"name": "a", "image": "nginx", "ports": [{"containerPort": 80}],
                 "resources": {"limits": {"cpu": "1"}},
                 "readinessProbe": {"httpGet": {"port": 80}},
                 "env": [{"name": "N", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}]},
                {"name": "b", "image": "registry:5000/app:1.2"},
                {"name": "c", "image": "app:latest", "imagePullPolicy": "Never"},
                {"name": "d", "image": "app@sha256:abcd"},
                {"name": "e", "image": "localhost:5000/app"}
            ],
            "volumes": [{"name": "scratch"}, {"name": "cm", "configMap": {"name": "cm"}}]
        }});
        check(vec![(
            "Pod",
            pod,
            vec![
                ("/spec/restartPolicy", json!("Always")),
                ("/spec/dnsPolicy", json!("ClusterFirst")),
                ("/spec/terminationGracePeriodSeconds", json!(30)),
                ("/spec/schedulerName", json!("default-scheduler")),
                ("/spec/enableServiceLinks", json!(true)),
                ("/spec/securityContext", json!({})),
                ("/spec/containers/0/imagePullPolicy", json!("Always")),
                ("/spec/containers/1/imagePullPolicy", json!("IfNotPresent")),
                ("/spec/containers/2/imagePullPolicy", json!("Never")),
                ("/spec/containers/3/imagePullPolicy", json!("IfNotPresent")),
                ("/spec/containers/4/imagePullPolicy", json!("Always")),
                (
                    "/spec/containers/0/terminationMessagePath",
                    json!("/dev/termination-log"),
                ),
                ("/spec/containers/0/terminationMessagePolicy", json!("File")),
                ("/spec/containers/0/ports/0/protocol", json!("TCP")),
                ("/spec/containers/0/ports/0/hostPort", json!(null)),
                ("/spec/containers/0/resources/requests", json!({"cpu": "1"})),
                (
                    "/spec/containers/0/readinessProbe",
                    json!({"httpGet": {"port": 80, "path": "/", "scheme": "HTTP"},
                    "timeoutSeconds": 1, "periodSeconds": 10, "successThreshold": 1, "failureThreshold": 3}),
                ),
                (
                    "/spec/containers/0/env/0/valueFrom/fieldRef/apiVersion",
                    json!("v1"),
                ),
                ("/spec/volumes/0/emptyDir", json!({})),
                ("/spec/volumes/1/configMap/defaultMode", json!(420)),
                ("/spec/volumes/1/emptyDir", json!(null)),
            ],
        )]);
        let host = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}, "spec": {"hostNetwork": true,
            "containers": [{"name": "a", "image": "x:1", "ports": [{"containerPort": 9100}]}]}});
        check(vec![(
            "Pod",
            host,
            vec![("/spec/containers/0/ports/0/hostPort", json!(9100))],
        )]);
    }

    #[test]
    fn workload_defaults() {
        let template = json!({"metadata": {"labels": {"app": "x"}}, "spec": {"containers": [{"name": "c", "image": "x:1"}]}});
        check(vec![
            (
                "Deployment",
                json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d"},
                       "spec": {"selector": {"matchLabels": {"app": "x"}}, "template": template.clone()}}),
                vec![
                    ("/spec/replicas", json!(1)),
                    (
                        "/spec/strategy",
                        json!({"type": "RollingUpdate", "rollingUpdate": {"maxSurge": "25%", "maxUnavailable": "25%"}}),
                    ),
                    ("/spec/revisionHistoryLimit", json!(10)),
                    ("/spec/progressDeadlineSeconds", json!(600)),
                    ("/spec/template/spec/restartPolicy", json!("Always")),
                    (
                        "/spec/template/spec/containers/0/imagePullPolicy",
                        json!("IfNotPresent"),
                    ),
                    // enableServiceLinks is defaulted on Pods only, not on templates.
                    ("/spec/template/spec/enableServiceLinks", json!(null)),
                ],
            ),
            (
                "Deployment",
                json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d"},
                       "spec": {"replicas": 0, "strategy": {"type": "Recreate"}, "selector": {}, "template": template.clone()}}),
                vec![
                    ("/spec/replicas", json!(0)),
                    ("/spec/strategy", json!({"type": "Recreate"})),
                ],
            ),
            (
                "Deployment",
                json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d"}, "spec": {"template": template.clone()}}),
                vec![
                    ("/spec/selector", json!(null)),
                    ("/spec/replicas", json!(1)),
                ],
            ),
            (
                "ReplicaSet",
                json!({"apiVersion": "apps/v1", "kind": "ReplicaSet", "metadata": {"name": "r"}, "spec": {"selector": {}, "template": template.clone()}}),
                vec![
                    ("/spec/replicas", json!(1)),
                    ("/spec/template/spec/dnsPolicy", json!("ClusterFirst")),
                ],
            ),
            (
                "DaemonSet",
                json!({"apiVersion": "apps/v1", "kind": "DaemonSet", "metadata": {"name": "ds"}, "spec": {"selector": {}, "template": template.clone()}}),
                vec![
                    (
                        "/spec/updateStrategy",
                        json!({"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 0, "maxUnavailable": 1}}),
                    ),
                    ("/spec/revisionHistoryLimit", json!(10)),
                ],
            ),
            (
                "Job",
                json!({"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "j"}, "spec": {"template": template.clone()}}),
                vec![
                    ("/spec/completions", json!(1)),
                    ("/spec/parallelism", json!(1)),
                    ("/spec/backoffLimit", json!(6)),
                    ("/spec/completionMode", json!("NonIndexed")),
                    ("/spec/suspend", json!(false)),
                    ("/spec/podReplacementPolicy", json!("TerminatingOrFailed")),
                    ("/metadata/labels", json!({"app": "x"})),
                ],
            ),
            (
                "Job",
                json!({"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "j"}, "spec": {"parallelism": 3, "template": template}}),
                vec![
                    ("/spec/completions", json!(null)),
                    ("/spec/parallelism", json!(3)),
                ],
            ),
        ]);
    }

    #[test]
    fn other_defaults() {
        check(vec![
            (
                "Namespace",
                json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "team-a"}}),
                vec![
                    (
                        "/metadata/labels",
                        json!({"kubernetes.io/metadata.name": "team-a"}),
                    ),
                    ("/spec/finalizers", json!(["kubernetes"])),
                    ("/status/phase", json!("Active")),
                ],
            ),
            (
                "EndpointSlice",
                json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice", "metadata": {"name": "s"}, "addressType": "IPv4",
                       "endpoints": [], "ports": [{"port": 80}]}),
                vec![(
                    "/ports/0",
                    json!({"name": "", "port": 80, "protocol": "TCP"}),
                )],
            ),
            (
                "Node",
                json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "n"}, "status": {"capacity": {"cpu": "2"}}}),
                vec![("/status/allocatable", json!({"cpu": "2"}))],
            ),
            (
                "Secret",
                json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s"}}),
                vec![("/type", json!("Opaque"))],
            ),
            (
                "ConfigMap",
                json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}, "data": {"a": "b"}, "extra": 1}),
                vec![("/extra", json!(1)), ("/data", json!({"a": "b"}))],
            ),
        ]);
    }

    #[test]
    fn decode_errors() {
        let bad = json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web"}, "spec": {"ports": [{"port": "eighty"}]}});
        let e = apply_defaults("Service", &bad).unwrap_err();
        assert!(
            e.message.starts_with("Service in version \"v1\" cannot be handled as a Service: invalid type: string \"eighty\""),
            "{e}"
        );
    }

    /// Every leaf of `input` must be in `output` with the same value.
    fn assert_preserved(input: &Value, output: &Value, path: &str) {
        match (input, output) {
            (Value::Object(i), Value::Object(o)) => {
                for (k, v) in i {
                    let o = o.get(k).unwrap_or_else(|| panic!("{path}.{k} was dropped"));
                    assert_preserved(v, o, &format!("{path}.{k}"));
                }
            }
            (Value::Array(i), Value::Array(o)) => {
                assert_eq!(i.len(), o.len(), "{path} length");
                for (n, (a, b)) in i.iter().zip(o).enumerate() {
                    assert_preserved(a, b, &format!("{path}[{n}]"));
                }
            }
            (i, o) => assert_eq!(i, o, "{path}"),
        }
    }

    /// Stored objects go through defaulting on every write, so it must keep what clients
    /// sent (timestamps, quantities, status) byte for byte and be idempotent.
    #[test]
    fn round_trip_preserves_and_is_idempotent() {
        let objects = vec![
            (
                "Pod",
                json!({"apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": "p", "namespace": "default", "uid": "6d1f0f3c-1111-2222-3333-444455556666",
                             "resourceVersion": "42", "creationTimestamp": "2026-01-01T00:00:00Z",
                             "labels": {"app": "web"}, "annotations": {"a": "b"},
                             "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "rs", "uid": "u", "controller": true, "blockOwnerDeletion": true}]},
                "spec": {"nodeName": "n1", "containers": [{"name": "c", "image": "nginx:1.27",
                    "resources": {"requests": {"cpu": "250m", "memory": "64Mi"}, "limits": {"memory": "128Mi"}},
                    "ports": [{"containerPort": 80, "name": "http", "protocol": "TCP"}]}],
                    "tolerations": [{"key": "node.kubernetes.io/not-ready", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300}]},
                "status": {"phase": "Running", "podIP": "10.244.1.5", "podIPs": [{"ip": "10.244.1.5"}], "startTime": "2026-01-01T00:00:01Z",
                    "conditions": [{"type": "Ready", "status": "True", "lastTransitionTime": "2026-01-01T00:00:05Z"}]}}),
            ),
            (
                "Service",
                json!({"apiVersion": "v1", "kind": "Service",
                "metadata": {"name": "web", "namespace": "default", "creationTimestamp": "2026-01-01T00:00:00Z"},
                "spec": {"type": "LoadBalancer", "clusterIP": "10.96.0.20", "ports": [{"name": "http", "port": 80, "targetPort": "http", "nodePort": 31000}],
                         "selector": {"app": "web"}},
                "status": {"loadBalancer": {"ingress": [{"ip": "192.0.2.10", "ipMode": "VIP"}]}}}),
            ),
            (
                "Deployment",
                json!({"apiVersion": "apps/v1", "kind": "Deployment",
                "metadata": {"name": "d", "namespace": "default", "generation": 3},
                "spec": {"replicas": 3, "selector": {"matchLabels": {"app": "d"}},
                         "template": {"metadata": {"labels": {"app": "d"}}, "spec": {"containers": [{"name": "c", "image": "x:1"}]}}},
                "status": {"replicas": 3, "readyReplicas": 2, "observedGeneration": 3,
                           "conditions": [{"type": "Available", "status": "True", "lastUpdateTime": "2026-01-01T00:00:00Z", "lastTransitionTime": "2026-01-01T00:00:00Z", "reason": "MinimumReplicasAvailable", "message": "ok"}]}}),
            ),
            (
                "Node",
                json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "n1"},
                "spec": {"podCIDR": "10.244.1.0/24", "podCIDRs": ["10.244.1.0/24"]},
                "status": {"capacity": {"cpu": "2", "memory": "24Gi", "pods": "110"}, "allocatable": {"cpu": "1900m", "memory": "23Gi", "pods": "110"},
                           "addresses": [{"type": "InternalIP", "address": "192.0.2.1"}],
                           "conditions": [{"type": "Ready", "status": "True", "lastHeartbeatTime": "2026-01-01T00:00:00Z", "lastTransitionTime": "2026-01-01T00:00:00Z"}]}}),
            ),
            (
                "EndpointSlice",
                json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                "metadata": {"name": "web-abc12", "namespace": "default", "labels": {"kubernetes.io/service-name": "web"}},
                "addressType": "IPv4",
                "endpoints": [{"addresses": ["10.244.1.5"], "conditions": {"ready": true, "serving": true, "terminating": false},
                               "nodeName": "n1", "targetRef": {"kind": "Pod", "name": "p", "namespace": "default"}}],
                "ports": [{"name": "http", "port": 80, "protocol": "TCP"}]}),
            ),
        ];
        for (kind, obj) in objects {
            let once = apply_defaults(kind, &obj).unwrap();
            assert_preserved(&obj, &once, kind);
            let twice = apply_defaults(kind, &once).unwrap();
            assert_eq!(once, twice, "{kind}: defaulting is idempotent");
        }
    }
}
