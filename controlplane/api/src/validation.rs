//! Validation of objects on create and update, after upstream's
//! `pkg/apis/core/validation`, `pkg/apis/apps/validation`,
//! `pkg/apis/discovery/validation` and apimachinery's `ValidateObjectMeta`. Errors are
//! [`FieldError`]s whose paths, types and details are upstream's, so the 422 message built
//! by [`crate::status::invalid`] reads like a real apiserver's.
//!
//! Covered per kind (every kind gets the metadata checks: name or generateName per the
//! kind's name rule, namespace presence, label and annotation keys/values, annotation
//! size, finalizer names):
//! * Service: DNS-1035 name; ports required (unless headless or ExternalName), port and
//!   targetPort numbers/names, protocol, port names (required when several, DNS-1123
//!   label, unique), duplicate port+protocol, nodePort only for NodePort/LoadBalancer;
//!   type, sessionAffinity, traffic policies, IP family fields, clusterIP(s) syntax,
//!   externalName; selector labels;
//! * Pod and pod templates: containers required, names (DNS-1123 label, unique across
//!   init and regular containers), image required, ports, env var names, volume names
//!   (unique), volumeMounts naming an existing volume with a mountPath, enum fields
//!   (restartPolicy, dnsPolicy, imagePullPolicy, terminationMessagePolicy);
//! * Deployment, ReplicaSet, DaemonSet: selector present, non-empty and valid, matching
//!   the template labels; replicas and history limits non-negative; template
//!   restartPolicy Always; strategy checks (Deployment, DaemonSet);
//! * Job: the pod template (restartPolicy OnFailure or Never);
//! * EndpointSlice: addressType, endpoint addresses per type (1..=100 each), ports;
//! * Namespace: DNS-1123 label name, finalizers; ConfigMap/Secret keys and size; Node
//!   podCIDRs and taints.
//!
//! One deliberate difference: upstream renders a struct-valued bad value with Go's `%#v`
//! (`v1.LabelSelector{MatchLabels:...}`); here it is JSON.

use crate::defaults::{decode, DecodeError};
pub use crate::field::{ErrorKind, FieldError, Path};
use crate::names::*;
use crate::resources;
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, ReplicaSet};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{
    ConfigMap, Container, Namespace, Node, Pod, PodSpec, PodTemplateSpec, Secret, Service,
};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::rbac::v1 as rbac;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

/// Upstream's `TotalAnnotationSizeLimitB` (256 KiB).
pub const TOTAL_ANNOTATION_SIZE_LIMIT: usize = 256 * 1024;
/// Upstream's `MaxSecretSize`, also the ConfigMap limit (1 MiB).
pub const MAX_SECRET_SIZE: usize = 1024 * 1024;

type Errs = Vec<FieldError>;

/// How names of a kind are validated (upstream's `ValidateNameFunc` per kind).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NameRule {
    Dns1123Subdomain,
    Dns1123Label,
    Dns1035Label,
    /// RBAC objects: any path segment (`system:controller:x` is a valid name).
    PathSegment,
}

pub fn name_rule(kind: &str) -> NameRule {
    match kind {
        "Service" => NameRule::Dns1035Label,
        "Namespace" => NameRule::Dns1123Label,
        "Role" | "ClusterRole" | "RoleBinding" | "ClusterRoleBinding" => NameRule::PathSegment,
        _ => NameRule::Dns1123Subdomain,
    }
}

fn check_name(rule: NameRule, name: &str) -> Vec<String> {
    match rule {
        NameRule::Dns1123Subdomain => is_dns1123_subdomain(name),
        NameRule::Dns1123Label => is_dns1123_label(name),
        NameRule::Dns1035Label => is_dns1035_label(name),
        NameRule::PathSegment => crate::rbac::name_errors(name),
    }
}

/// Validates an object (already defaulted) of `kind` on create.
pub fn validate(kind: &str, obj: &Value) -> Result<Vec<FieldError>, DecodeError> {
    let namespaced = obj
        .get("apiVersion")
        .and_then(Value::as_str)
        .and_then(|av| resources::by_api_version_kind(av, kind))
        .map(|r| r.namespaced)
        .unwrap_or(kind != "Namespace" && kind != "Node");
    let meta: ObjectMeta = decode(kind, obj.get("metadata").unwrap_or(&json!({})))?;
    let mut errs =
        validate_object_meta(&meta, namespaced, name_rule(kind), &Path::root("metadata"));
    let spec_present = |f: &str| {
        obj.pointer(&format!("/spec/{f}"))
            .is_some_and(|v| !v.is_null())
    };
    match kind {
        "Service" => errs.extend(validate_service(&decode::<Service>(kind, obj)?)),
        "Pod" => {
            let pod: Pod = decode(kind, obj)?;
            match pod.spec.as_ref() {
                Some(spec) => errs.extend(validate_pod_spec(spec, &Path::root("spec"))),
                None => errs.push(FieldError::required("spec", "")),
            }
        }
        "Deployment" => {
            let d: Deployment = decode(kind, obj)?;
            let spec = d.spec.unwrap_or_default();
            let p = Path::root("spec");
            errs.extend(validate_workload_selector(
                spec_present("selector").then_some(&spec.selector),
                Some(&spec.template),
                "deployment",
                &p,
            ));
            errs.extend(non_negative(spec.replicas, &p.child("replicas")));
            errs.extend(non_negative(
                spec.revision_history_limit,
                &p.child("revisionHistoryLimit"),
            ));
            errs.extend(non_negative(
                spec.min_ready_seconds,
                &p.child("minReadySeconds"),
            ));
            if let (Some(pd), min) = (
                spec.progress_deadline_seconds,
                spec.min_ready_seconds.unwrap_or(0),
            ) {
                if pd <= min {
                    errs.push(FieldError::invalid(
                        p.child("progressDeadlineSeconds"),
                        pd,
                        "must be greater than minReadySeconds",
                    ));
                }
            }
            if let Some(s) = &spec.strategy {
                let sp = p.child("strategy");
                match s.type_.as_deref().unwrap_or("") {
                    "Recreate" => {
                        if s.rolling_update.is_some() {
                            errs.push(FieldError::forbidden(
                                sp.child("rollingUpdate"),
                                "may not be specified when strategy `type` is 'Recreate'",
                            ));
                        }
                    }
                    "RollingUpdate" => {
                        if let Some(ru) = &s.rolling_update {
                            errs.extend(validate_rolling_update(
                                ru.max_unavailable.as_ref(),
                                ru.max_surge.as_ref(),
                                &sp.child("rollingUpdate"),
                            ));
                        }
                    }
                    other => errs.push(FieldError::not_supported(
                        sp.child("type"),
                        other,
                        &["Recreate", "RollingUpdate"],
                    )),
                }
            }
            errs.extend(validate_template(
                Some(&spec.template),
                &["Always"],
                &p.child("template"),
            ));
        }
        "ReplicaSet" => {
            let r: ReplicaSet = decode(kind, obj)?;
            let spec = r.spec.unwrap_or_default();
            let p = Path::root("spec");
            errs.extend(validate_workload_selector(
                spec_present("selector").then_some(&spec.selector),
                spec.template.as_ref(),
                "deployment",
                &p,
            ));
            errs.extend(non_negative(spec.replicas, &p.child("replicas")));
            errs.extend(non_negative(
                spec.min_ready_seconds,
                &p.child("minReadySeconds"),
            ));
            errs.extend(validate_template(
                spec.template.as_ref(),
                &["Always"],
                &p.child("template"),
            ));
        }
        "DaemonSet" => {
            let d: DaemonSet = decode(kind, obj)?;
            let spec = d.spec.unwrap_or_default();
            let p = Path::root("spec");
            errs.extend(validate_workload_selector(
                spec_present("selector").then_some(&spec.selector),
                Some(&spec.template),
                "daemonset",
                &p,
            ));
            errs.extend(non_negative(
                spec.revision_history_limit,
                &p.child("revisionHistoryLimit"),
            ));
            errs.extend(non_negative(
                spec.min_ready_seconds,
                &p.child("minReadySeconds"),
            ));
            if let Some(us) = &spec.update_strategy {
                let up = p.child("updateStrategy");
                match us.type_.as_deref().unwrap_or("") {
                    "OnDelete" => {}
                    "RollingUpdate" => {
                        if let Some(ru) = &us.rolling_update {
                            errs.extend(validate_rolling_update(
                                ru.max_unavailable.as_ref(),
                                ru.max_surge.as_ref(),
                                &up.child("rollingUpdate"),
                            ));
                        }
                    }
                    other => errs.push(FieldError::not_supported(
                        up.child("type"),
                        other,
                        &["OnDelete", "RollingUpdate"],
                    )),
                }
            }
            errs.extend(validate_template(
                Some(&spec.template),
                &["Always"],
                &p.child("template"),
            ));
        }
        "Job" => {
            let j: Job = decode(kind, obj)?;
            let spec = j.spec.unwrap_or_default();
            let p = Path::root("spec");
            for (f, v) in [
                ("parallelism", spec.parallelism),
                ("completions", spec.completions),
                ("backoffLimit", spec.backoff_limit),
            ] {
                errs.extend(non_negative(v, &p.child(f)));
            }
            errs.extend(validate_template(
                Some(&spec.template),
                &["OnFailure", "Never"],
                &p.child("template"),
            ));
        }
        "EndpointSlice" => errs.extend(validate_endpoint_slice(&decode::<EndpointSlice>(
            kind, obj,
        )?)),
        "Namespace" => {
            let ns: Namespace = decode(kind, obj)?;
            for f in ns.spec.and_then(|s| s.finalizers).unwrap_or_default() {
                errs.extend(validate_finalizer(
                    &f,
                    &Path::root("spec").child("finalizers"),
                ));
            }
        }
        "ConfigMap" => {
            let cm: ConfigMap = decode(kind, obj)?;
            let binary: BTreeMap<String, usize> = cm
                .binary_data
                .unwrap_or_default()
                .into_iter()
                .map(|(k, v)| (k, v.0.len()))
                .collect();
            errs.extend(validate_data_keys(&cm.data.unwrap_or_default(), &binary));
        }
        "Secret" => {
            let s: Secret = decode(kind, obj)?;
            let mut data: BTreeMap<String, usize> = s
                .data
                .unwrap_or_default()
                .into_iter()
                .map(|(k, v)| (k, v.0.len()))
                .collect();
            for (k, v) in s.string_data.unwrap_or_default() {
                data.insert(k, v.len());
            }
            errs.extend(validate_secret_keys(&data));
        }
        "Node" => errs.extend(validate_node(&decode::<Node>(kind, obj)?)),
        // Upstream's ValidateControllerRevision: data is mandatory, revision non-negative.
        "ControllerRevision" => {
            let r: k8s_openapi::api::apps::v1::ControllerRevision = decode(kind, obj)?;
            if r.data.is_none() {
                errs.push(FieldError::required("data", "data is mandatory"));
            }
            if r.revision < 0 {
                errs.push(FieldError::invalid(
                    "revision",
                    r.revision,
                    "must be greater than or equal to 0",
                ));
            }
        }
        "Role" => {
            let r: rbac::Role = decode(kind, obj)?;
            errs.extend(crate::rbac::validate_rules(
                r.rules.as_deref().unwrap_or_default(),
                true,
                &Path::root("rules"),
            ));
        }
        "ClusterRole" => {
            let r: rbac::ClusterRole = decode(kind, obj)?;
            errs.extend(crate::rbac::validate_rules(
                r.rules.as_deref().unwrap_or_default(),
                false,
                &Path::root("rules"),
            ));
        }
        "RoleBinding" => {
            let b: rbac::RoleBinding = decode(kind, obj)?;
            errs.extend(crate::rbac::validate_binding(
                &b.role_ref,
                b.subjects.as_deref().unwrap_or_default(),
                false,
            ));
        }
        "ClusterRoleBinding" => {
            let b: rbac::ClusterRoleBinding = decode(kind, obj)?;
            errs.extend(crate::rbac::validate_binding(
                &b.role_ref,
                b.subjects.as_deref().unwrap_or_default(),
                true,
            ));
        }
        _ => {}
    }
    Ok(errs)
}

/// Validates an update: the new object as on create, plus upstream's immutability rules.
pub fn validate_update(
    kind: &str,
    old: &Value,
    new: &Value,
) -> Result<Vec<FieldError>, DecodeError> {
    let mut errs = validate(kind, new)?;
    let m = Path::root("metadata");
    for f in ["name", "namespace", "uid", "creationTimestamp"] {
        let (o, n) = (
            old.pointer(&format!("/metadata/{f}")),
            new.pointer(&format!("/metadata/{f}")),
        );
        // An update that omits uid/creationTimestamp keeps the stored ones.
        if n.is_some() && o != n {
            errs.push(FieldError::invalid(
                m.child(f),
                n.cloned().unwrap_or(Value::Null),
                "field is immutable",
            ));
        }
    }
    let spec = |v: &Value, f: &str| {
        v.pointer(&format!("/spec/{f}"))
            .cloned()
            .unwrap_or(Value::Null)
    };
    match kind {
        // apps/v1 and batch/v1 selectors are immutable.
        "Deployment" | "ReplicaSet" | "DaemonSet" | "Job"
            if spec(old, "selector") != spec(new, "selector") =>
        {
            errs.push(FieldError::invalid(
                "spec.selector",
                spec(new, "selector"),
                "field is immutable",
            ));
        }
        "Service" => {
            let (ot, nt) = (spec(old, "type"), spec(new, "type"));
            let external_name = ot == "ExternalName" || nt == "ExternalName";
            let (oip, nip) = (spec(old, "clusterIP"), spec(new, "clusterIP"));
            // A set clusterIP may not change, except when switching to/from ExternalName;
            // an update that omits it keeps the allocated one.
            if !external_name
                && !oip.as_str().unwrap_or("").is_empty()
                && !nip.is_null()
                && oip != nip
            {
                errs.push(FieldError::invalid(
                    "spec.clusterIPs[0]",
                    nip,
                    "may not change once set",
                ));
            }
        }
        // Upstream's ValidateNodeUpdate: the node IPAM controller may assign podCIDRs to
        // a Node without them, nobody may change them afterwards.
        "Node" => {
            let cidrs = |v: &Value| {
                v.pointer("/spec/podCIDRs")
                    .and_then(Value::as_array)
                    .cloned()
                    .unwrap_or_default()
            };
            let (o, n) = (cidrs(old), cidrs(new));
            if !o.is_empty() && o != n {
                errs.push(FieldError::new(
                    ErrorKind::Forbidden,
                    "spec.podCIDRs",
                    None,
                    "node updates may not change podCIDR except from \"\" to valid",
                ));
            }
            let (op, np) = (spec(old, "providerID"), spec(new, "providerID"));
            if !op.as_str().unwrap_or("").is_empty() && op != np {
                errs.push(FieldError::new(
                    ErrorKind::Forbidden,
                    "spec.providerID",
                    None,
                    "node updates may not change providerID except from \"\" to valid",
                ));
            }
        }
        "RoleBinding" | "ClusterRoleBinding" => {
            errs.extend(crate::rbac::validate_binding_update(old, new));
        }
        // Upstream's ValidateControllerRevisionUpdate: a revision is an immutable snapshot.
        "ControllerRevision" if old.get("data") != new.get("data") => {
            errs.push(FieldError::invalid(
                "data",
                new.get("data").cloned().unwrap_or(Value::Null),
                "field is immutable",
            ));
        }
        "EndpointSlice" if old.get("addressType") != new.get("addressType") => {
            errs.push(FieldError::invalid(
                "addressType",
                new.get("addressType").cloned().unwrap_or(Value::Null),
                "field is immutable",
            ));
        }
        _ => {}
    }
    Ok(errs)
}

/// Upstream's `ValidateObjectMeta`.
pub fn validate_object_meta(meta: &ObjectMeta, namespaced: bool, rule: NameRule, p: &Path) -> Errs {
    let mut errs = Vec::new();
    let name = meta.name.as_deref().unwrap_or("");
    let generate = meta.generate_name.as_deref().unwrap_or("");
    if !generate.is_empty() {
        // A generateName is a prefix: a trailing '-' is masked before validation.
        let masked = match generate.strip_suffix('-') {
            Some(s) => format!("{s}a"),
            None => generate.to_string(),
        };
        for msg in check_name(rule, &masked) {
            errs.push(FieldError::invalid(p.child("generateName"), generate, msg));
        }
    }
    if name.is_empty() {
        if generate.is_empty() {
            errs.push(FieldError::required(
                p.child("name"),
                "name or generateName is required",
            ));
        }
    } else {
        for msg in check_name(rule, name) {
            errs.push(FieldError::invalid(p.child("name"), name, msg));
        }
    }
    let ns = meta.namespace.as_deref().unwrap_or("");
    if namespaced {
        if ns.is_empty() {
            errs.push(FieldError::required(p.child("namespace"), ""));
        } else {
            for msg in is_dns1123_label(ns) {
                errs.push(FieldError::invalid(p.child("namespace"), ns, msg));
            }
        }
    } else if !ns.is_empty() {
        errs.push(FieldError::forbidden(
            p.child("namespace"),
            "not allowed on this type",
        ));
    }
    errs.extend(validate_labels(meta.labels.as_ref(), &p.child("labels")));
    if let Some(ann) = &meta.annotations {
        let lp = p.child("annotations");
        let mut total = 0;
        for (k, v) in ann {
            // Upstream lower-cases annotation keys before the qualified-name check.
            for msg in is_qualified_name(&k.to_lowercase()) {
                errs.push(FieldError::invalid(&lp, k.as_str(), msg));
            }
            total += k.len() + v.len();
        }
        if total > TOTAL_ANNOTATION_SIZE_LIMIT {
            errs.push(FieldError::too_long(&lp, TOTAL_ANNOTATION_SIZE_LIMIT));
        }
    }
    for f in meta.finalizers.iter().flatten() {
        errs.extend(validate_finalizer(f, &p.child("finalizers")));
    }
    // Upstream's validateOwnerReferences: required parts, at most one controller.
    let op = p.child("ownerReferences");
    let mut controller: Option<&str> = None;
    for r in meta.owner_references.iter().flatten() {
        let version = r.api_version.rsplit('/').next().unwrap_or("");
        for (field, empty, what) in [
            ("apiVersion", version.is_empty(), "version"),
            ("kind", r.kind.is_empty(), "kind"),
            ("name", r.name.is_empty(), "name"),
            ("uid", r.uid.is_empty(), "uid"),
        ] {
            if empty {
                let value = match field {
                    "apiVersion" => &r.api_version,
                    "kind" => &r.kind,
                    "name" => &r.name,
                    _ => &r.uid,
                };
                errs.push(FieldError::invalid(
                    op.child(field),
                    value.as_str(),
                    format!("{what} must not be empty"),
                ));
            }
        }
        if r.controller == Some(true) {
            match controller {
                Some(first) => errs.push(FieldError::invalid(
                    &op,
                    serde_json::to_value(meta.owner_references.as_ref()).unwrap_or_default(),
                    format!("Only one reference can have Controller set to true. Found \"true\" in references for {first} and {}", r.name),
                )),
                None => controller = Some(r.name.as_str()),
            }
        }
    }
    errs
}

/// Upstream's `ValidateLabels`: keys are qualified names, values label values; both
/// reported at the labels path itself.
pub fn validate_labels(labels: Option<&BTreeMap<String, String>>, p: &Path) -> Errs {
    let mut errs = Vec::new();
    for (k, v) in labels.into_iter().flatten() {
        for msg in is_qualified_name(k) {
            errs.push(FieldError::invalid(p, k.as_str(), msg));
        }
        for msg in is_valid_label_value(v) {
            errs.push(FieldError::invalid(p, v.as_str(), msg));
        }
    }
    errs
}

const STANDARD_FINALIZERS: &[&str] = &["kubernetes", "orphan", "foregroundDeletion"];

fn validate_finalizer(f: &str, p: &Path) -> Errs {
    let mut errs: Errs = is_qualified_name(f)
        .into_iter()
        .map(|m| FieldError::invalid(p, f, m))
        .collect();
    if errs.is_empty() && !f.contains('/') && !STANDARD_FINALIZERS.contains(&f) {
        errs.push(FieldError::invalid(
            p,
            f,
            "name is neither a standard finalizer name nor is it fully qualified",
        ));
    }
    errs
}

fn non_negative(v: Option<i32>, p: &Path) -> Errs {
    match v {
        Some(n) if n < 0 => vec![FieldError::invalid(
            p,
            n,
            "must be greater than or equal to 0",
        )],
        _ => Vec::new(),
    }
}

fn port_num(port: i64, p: &Path) -> Errs {
    is_valid_port_num(port)
        .into_iter()
        .map(|m| FieldError::invalid(p, port, m))
        .collect()
}

/// Upstream's `ValidatePortNumOrName`.
fn port_num_or_name(port: &IntOrString, p: &Path) -> Errs {
    match port {
        IntOrString::Int(n) => port_num(i64::from(*n), p),
        IntOrString::String(s) => is_valid_port_name(s)
            .into_iter()
            .map(|m| FieldError::invalid(p, s.as_str(), m))
            .collect(),
    }
}

const PROTOCOLS: &[&str] = &["SCTP", "TCP", "UDP"];

fn protocol(proto: Option<&str>, p: &Path) -> Errs {
    match proto.unwrap_or("") {
        "" => vec![FieldError::required(p, "")],
        v if PROTOCOLS.contains(&v) => Vec::new(),
        v => vec![FieldError::not_supported(p, v, PROTOCOLS)],
    }
}

fn one_of(v: Option<&str>, allowed: &[&str], p: &Path) -> Errs {
    match v {
        Some(v) if !allowed.contains(&v) => vec![FieldError::not_supported(p, v, allowed)],
        _ => Vec::new(),
    }
}

fn valid_ip(s: &str) -> bool {
    s.parse::<IpAddr>().is_ok()
}

fn validate_service(svc: &Service) -> Errs {
    let mut errs = Vec::new();
    let p = Path::root("spec");
    let Some(spec) = &svc.spec else {
        return vec![FieldError::required("spec", "")];
    };
    let ty = spec.type_.as_deref().unwrap_or("");
    let cluster_ip = spec.cluster_ip.as_deref().unwrap_or("");
    let headless = cluster_ip == "None";
    errs.extend(one_of(
        Some(ty),
        &["ClusterIP", "ExternalName", "LoadBalancer", "NodePort"],
        &p.child("type"),
    ));
    let ports = spec.ports.as_deref().unwrap_or(&[]);
    if ports.is_empty() && !headless && ty != "ExternalName" {
        errs.push(FieldError::required(p.child("ports"), ""));
    }
    if ty == "ExternalName" {
        let en = spec.external_name.as_deref().unwrap_or("");
        if en.is_empty() {
            errs.push(FieldError::required(p.child("externalName"), ""));
        } else {
            for msg in is_dns1123_subdomain(en.trim_end_matches('.')) {
                errs.push(FieldError::invalid(p.child("externalName"), en, msg));
            }
        }
    }
    let require_name = ports.len() > 1;
    let mut names = BTreeSet::new();
    let mut seen = BTreeSet::new();
    for (i, sp) in ports.iter().enumerate() {
        let pp = p.child("ports").index(i);
        let name = sp.name.as_deref().unwrap_or("");
        if name.is_empty() {
            if require_name {
                errs.push(FieldError::required(pp.child("name"), ""));
            }
        } else {
            for msg in is_dns1123_label(name) {
                errs.push(FieldError::invalid(pp.child("name"), name, msg));
            }
            if !names.insert(name) {
                errs.push(FieldError::duplicate(pp.child("name"), name));
            }
        }
        errs.extend(port_num(i64::from(sp.port), &pp.child("port")));
        errs.extend(protocol(sp.protocol.as_deref(), &pp.child("protocol")));
        if let Some(ap) = sp.app_protocol.as_deref() {
            for msg in is_qualified_name(ap) {
                errs.push(FieldError::invalid(pp.child("appProtocol"), ap, msg));
            }
        }
        if let Some(tp) = &sp.target_port {
            errs.extend(port_num_or_name(tp, &pp.child("targetPort")));
        }
        if let Some(np) = sp.node_port.filter(|n| *n != 0) {
            if ty == "ClusterIP" || ty == "ExternalName" {
                errs.push(FieldError::forbidden(
                    pp.child("nodePort"),
                    format!("may not be used when `type` is '{ty}'"),
                ));
            } else {
                errs.extend(port_num(i64::from(np), &pp.child("nodePort")));
            }
        }
        let key = (sp.port, sp.protocol.clone().unwrap_or_default());
        if !seen.insert(key.clone()) {
            errs.push(FieldError::duplicate(
                pp.as_str(),
                json!({"port": key.0, "protocol": key.1}),
            ));
        }
    }
    if ty != "ExternalName" {
        errs.extend(validate_labels(
            spec.selector.as_ref(),
            &p.child("selector"),
        ));
    }
    errs.extend(one_of(
        spec.session_affinity.as_deref(),
        &["ClientIP", "None"],
        &p.child("sessionAffinity"),
    ));
    // MaxClientIPServiceAffinitySeconds is one day.
    let timeout = spec
        .session_affinity_config
        .as_ref()
        .and_then(|c| c.client_ip.as_ref())
        .and_then(|c| c.timeout_seconds);
    if let Some(t) = timeout.filter(|t| *t <= 0 || *t > 86400) {
        errs.push(FieldError::invalid(
            p.child("sessionAffinityConfig")
                .child("clientIP")
                .child("timeoutSeconds"),
            t,
            "must be greater than 0 and less than 86400",
        ));
    }
    errs.extend(one_of(
        spec.internal_traffic_policy.as_deref(),
        &["Cluster", "Local"],
        &p.child("internalTrafficPolicy"),
    ));
    if let Some(etp) = spec.external_traffic_policy.as_deref() {
        let external = ty == "NodePort"
            || ty == "LoadBalancer"
            || spec.external_ips.as_ref().is_some_and(|e| !e.is_empty());
        if !external && !etp.is_empty() {
            errs.push(FieldError::invalid(
                p.child("externalTrafficPolicy"),
                etp,
                "may only be set for externally-accessible services",
            ));
        } else {
            errs.extend(one_of(
                Some(etp),
                &["Cluster", "Local"],
                &p.child("externalTrafficPolicy"),
            ));
        }
    }
    errs.extend(one_of(
        spec.ip_family_policy.as_deref(),
        &["PreferDualStack", "RequireDualStack", "SingleStack"],
        &p.child("ipFamilyPolicy"),
    ));
    for (i, f) in spec.ip_families.iter().flatten().enumerate() {
        errs.extend(one_of(
            Some(f),
            &["IPv4", "IPv6"],
            &p.child("ipFamilies").index(i),
        ));
    }
    if !cluster_ip.is_empty() && !headless && !valid_ip(cluster_ip) {
        errs.push(FieldError::invalid(
            p.child("clusterIPs").index(0),
            cluster_ip,
            "must be a valid IP address, (e.g. 10.9.8.7 or 2001:db8::ffff)",
        ));
    }
    for (i, ip) in spec.external_ips.iter().flatten().enumerate() {
        if !valid_ip(ip) {
            errs.push(FieldError::invalid(
                p.child("externalIPs").index(i),
                ip.as_str(),
                "must be a valid IP address, (e.g. 10.9.8.7 or 2001:db8::ffff)",
            ));
        }
    }
    errs
}

/// Upstream's `IsEnvVarName`.
fn env_var_name(name: &str) -> Vec<String> {
    let ok = !name.is_empty()
        && !name.as_bytes()[0].is_ascii_digit()
        && name
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'));
    if ok {
        Vec::new()
    } else {
        vec![regex_error(
            "a valid environment variable name must consist of alphabetic characters, digits, '_', '-', or '.', and must not start with a digit",
            "[-._a-zA-Z][-._a-zA-Z0-9]*",
            &["my.env-name", "MY_ENV.NAME", "MyEnvName1"],
        )]
    }
}

fn validate_container(c: &Container, volumes: &BTreeSet<&str>, p: &Path) -> Errs {
    let mut errs = Vec::new();
    if c.name.is_empty() {
        errs.push(FieldError::required(p.child("name"), ""));
    } else {
        for msg in is_dns1123_label(&c.name) {
            errs.push(FieldError::invalid(p.child("name"), c.name.as_str(), msg));
        }
    }
    if c.image.as_deref().unwrap_or("").trim().is_empty() {
        errs.push(FieldError::required(p.child("image"), ""));
    }
    errs.extend(one_of(
        c.image_pull_policy.as_deref(),
        &["Always", "IfNotPresent", "Never"],
        &p.child("imagePullPolicy"),
    ));
    errs.extend(one_of(
        c.termination_message_policy.as_deref(),
        &["FallbackToLogsOnError", "File"],
        &p.child("terminationMessagePolicy"),
    ));
    let mut port_names = BTreeSet::new();
    for (i, port) in c.ports.iter().flatten().enumerate() {
        let pp = p.child("ports").index(i);
        if let Some(n) = port.name.as_deref().filter(|n| !n.is_empty()) {
            for msg in is_valid_port_name(n) {
                errs.push(FieldError::invalid(pp.child("name"), n, msg));
            }
            if !port_names.insert(n) {
                errs.push(FieldError::duplicate(pp.child("name"), n));
            }
        }
        if port.container_port == 0 {
            errs.push(FieldError::required(pp.child("containerPort"), ""));
        } else {
            errs.extend(port_num(
                i64::from(port.container_port),
                &pp.child("containerPort"),
            ));
        }
        if let Some(hp) = port.host_port.filter(|h| *h != 0) {
            errs.extend(port_num(i64::from(hp), &pp.child("hostPort")));
        }
        errs.extend(protocol(port.protocol.as_deref(), &pp.child("protocol")));
    }
    for (i, e) in c.env.iter().flatten().enumerate() {
        let ep = p.child("env").index(i).child("name");
        if e.name.is_empty() {
            errs.push(FieldError::required(ep, ""));
        } else {
            for msg in env_var_name(&e.name) {
                errs.push(FieldError::invalid(&ep, e.name.as_str(), msg));
            }
        }
    }
    for (i, m) in c.volume_mounts.iter().flatten().enumerate() {
        let mp = p.child("volumeMounts").index(i);
        if m.name.is_empty() {
            errs.push(FieldError::required(mp.child("name"), ""));
        } else if !volumes.contains(m.name.as_str()) {
            errs.push(FieldError::new(
                ErrorKind::NotFound,
                mp.child("name"),
                Some(json!(m.name)),
                "",
            ));
        }
        if m.mount_path.is_empty() {
            errs.push(FieldError::required(mp.child("mountPath"), ""));
        }
    }
    errs
}

/// The subset of upstream's `ValidatePodSpec` described in the module docs.
pub fn validate_pod_spec(spec: &PodSpec, p: &Path) -> Errs {
    let mut errs = Vec::new();
    let mut volumes = BTreeSet::new();
    for (i, v) in spec.volumes.iter().flatten().enumerate() {
        let vp = p.child("volumes").index(i).child("name");
        if v.name.is_empty() {
            errs.push(FieldError::required(vp, ""));
            continue;
        }
        for msg in is_dns1123_label(&v.name) {
            errs.push(FieldError::invalid(&vp, v.name.as_str(), msg));
        }
        if !volumes.insert(v.name.as_str()) {
            errs.push(FieldError::duplicate(vp, v.name.as_str()));
        }
    }
    if spec.containers.is_empty() {
        errs.push(FieldError::required(p.child("containers"), ""));
    }
    // Names are unique across init and regular containers.
    let mut names = BTreeSet::new();
    let groups = [
        (
            "initContainers",
            spec.init_containers.as_deref().unwrap_or(&[]),
        ),
        ("containers", &spec.containers[..]),
    ];
    for (field, list) in groups {
        for (i, c) in list.iter().enumerate() {
            let cp = p.child(field).index(i);
            errs.extend(validate_container(c, &volumes, &cp));
            if !c.name.is_empty() && !names.insert(c.name.as_str()) {
                errs.push(FieldError::duplicate(cp.child("name"), c.name.as_str()));
            }
        }
    }
    errs.extend(one_of(
        spec.restart_policy.as_deref(),
        &["Always", "Never", "OnFailure"],
        &p.child("restartPolicy"),
    ));
    errs.extend(one_of(
        spec.dns_policy.as_deref(),
        &["ClusterFirst", "ClusterFirstWithHostNet", "Default", "None"],
        &p.child("dnsPolicy"),
    ));
    if let Some(g) = spec.termination_grace_period_seconds.filter(|g| *g < 0) {
        errs.push(FieldError::invalid(
            p.child("terminationGracePeriodSeconds"),
            g,
            "must be greater than or equal to 0",
        ));
    }
    if let Some(n) = spec.node_name.as_deref().filter(|n| !n.is_empty()) {
        for msg in is_dns1123_subdomain(n) {
            errs.push(FieldError::invalid(p.child("nodeName"), n, msg));
        }
    }
    errs
}

/// Upstream's `ValidateLabelSelector` (metav1 validation).
pub fn validate_label_selector(sel: &LabelSelector, p: &Path) -> Errs {
    let mut errs = Vec::new();
    for (i, e) in sel.match_expressions.iter().flatten().enumerate() {
        let ep = p.child("matchExpressions").index(i);
        let n = e.values.as_ref().map_or(0, Vec::len);
        match e.operator.as_str() {
            "In" | "NotIn" if n == 0 => errs.push(FieldError::required(
                ep.child("values"),
                "must be specified when `operator` is 'In' or 'NotIn'",
            )),
            "Exists" | "DoesNotExist" if n > 0 => errs.push(FieldError::forbidden(
                ep.child("values"),
                "may not be specified when `operator` is 'Exists' or 'DoesNotExist'",
            )),
            "In" | "NotIn" | "Exists" | "DoesNotExist" => {}
            other => errs.push(FieldError::invalid(
                ep.child("operator"),
                other,
                "not a valid selector operator",
            )),
        }
        for msg in is_qualified_name(&e.key) {
            errs.push(FieldError::invalid(ep.child("key"), e.key.as_str(), msg));
        }
    }
    errs.extend(validate_labels(
        sel.match_labels.as_ref(),
        &p.child("matchLabels"),
    ));
    errs
}

fn validate_workload_selector(
    sel: Option<&LabelSelector>,
    template: Option<&PodTemplateSpec>,
    what: &str,
    p: &Path,
) -> Errs {
    let sp = p.child("selector");
    let Some(sel) = sel else {
        return vec![FieldError::required(sp, "")];
    };
    let mut errs = validate_label_selector(sel, &sp);
    let empty = sel.match_labels.as_ref().is_none_or(BTreeMap::is_empty)
        && sel.match_expressions.as_ref().is_none_or(Vec::is_empty);
    if empty {
        errs.push(FieldError::invalid(
            sp,
            serde_json::to_value(sel).unwrap_or_default(),
            format!("empty selector is invalid for {what}"),
        ));
        return errs;
    }
    if !errs.is_empty() {
        return errs;
    }
    let labels = template
        .and_then(|t| t.metadata.as_ref())
        .and_then(|m| m.labels.clone())
        .unwrap_or_default();
    let matches = crate::selector::from_label_selector(Some(sel))
        .map(|m| m.matches(&labels))
        .unwrap_or(false);
    if !matches {
        errs.push(FieldError::invalid(
            p.child("template").child("metadata").child("labels"),
            serde_json::to_value(&labels).unwrap_or_default(),
            "`selector` does not match template `labels`",
        ));
    }
    errs
}

fn validate_template(t: Option<&PodTemplateSpec>, restart: &[&str], p: &Path) -> Errs {
    let Some(t) = t else {
        return vec![FieldError::required(p, "")];
    };
    let mut errs = validate_labels(
        t.metadata.as_ref().and_then(|m| m.labels.as_ref()),
        &p.child("metadata").child("labels"),
    );
    let Some(spec) = &t.spec else {
        errs.push(FieldError::required(p.child("spec"), ""));
        return errs;
    };
    let sp = p.child("spec");
    errs.extend(validate_pod_spec(spec, &sp));
    if let Some(rp) = spec.restart_policy.as_deref() {
        if !restart.contains(&rp) && ["Always", "Never", "OnFailure"].contains(&rp) {
            errs.push(FieldError::not_supported(
                sp.child("restartPolicy"),
                rp,
                restart,
            ));
        }
    }
    errs
}

/// Parses an IntOrString as an absolute number or a percentage (`25%`).
fn int_or_percent(v: &IntOrString, p: &Path) -> Result<(i64, bool), FieldError> {
    match v {
        IntOrString::Int(n) => Ok((i64::from(*n), false)),
        IntOrString::String(s) => s
            .strip_suffix('%')
            .and_then(|n| n.parse::<i64>().ok())
            .map(|n| (n, true))
            .ok_or_else(|| FieldError::invalid(p, s.as_str(), "a valid percent string must be a numeric string followed by an ending '%' (e.g. '1%',  or '93%', regex used for validation is '[0-9]+%')")),
    }
}

fn validate_rolling_update(
    max_unavailable: Option<&IntOrString>,
    max_surge: Option<&IntOrString>,
    p: &Path,
) -> Errs {
    let mut errs = Vec::new();
    let mut values = Vec::new();
    for (f, v) in [("maxUnavailable", max_unavailable), ("maxSurge", max_surge)] {
        let fp = p.child(f);
        let Some(v) = v else {
            values.push(None);
            continue;
        };
        match int_or_percent(v, &fp) {
            Ok((n, pct)) => {
                if n < 0 {
                    errs.push(FieldError::invalid(
                        &fp,
                        serde_json::to_value(v).unwrap_or_default(),
                        "must be greater than or equal to 0",
                    ));
                }
                if pct && n > 100 && f == "maxUnavailable" {
                    errs.push(FieldError::invalid(
                        &fp,
                        serde_json::to_value(v).unwrap_or_default(),
                        "must not be greater than 100%",
                    ));
                }
                values.push(Some(n));
            }
            Err(e) => {
                errs.push(e);
                values.push(None);
            }
        }
    }
    if values[0] == Some(0) && values[1] == Some(0) {
        errs.push(FieldError::invalid(
            p.child("maxUnavailable"),
            serde_json::to_value(max_unavailable).unwrap_or_default(),
            "may not be 0 when `maxSurge` is 0",
        ));
    }
    errs
}

fn validate_endpoint_slice(s: &EndpointSlice) -> Errs {
    let mut errs = Vec::new();
    let at = s.address_type.as_str();
    match at {
        "" => errs.push(FieldError::required("addressType", "")),
        "IPv4" | "IPv6" | "FQDN" => {}
        other => errs.push(FieldError::not_supported(
            "addressType",
            other,
            &["FQDN", "IPv4", "IPv6"],
        )),
    }
    if s.endpoints.len() > 1000 {
        errs.push(FieldError::new(
            ErrorKind::TooMany,
            "endpoints",
            Some(json!(s.endpoints.len())),
            "must have at most 1000 items",
        ));
    }
    for (i, e) in s.endpoints.iter().enumerate() {
        let ap = Path::root("endpoints").index(i).child("addresses");
        if e.addresses.is_empty() {
            errs.push(FieldError::required(&ap, "must contain at least 1 address"));
        } else if e.addresses.len() > 100 {
            errs.push(FieldError::new(
                ErrorKind::TooMany,
                &ap,
                Some(json!(e.addresses.len())),
                "must have at most 100 items",
            ));
        }
        for (j, a) in e.addresses.iter().enumerate() {
            let bad = match at {
                "IPv4" => a
                    .parse::<std::net::Ipv4Addr>()
                    .err()
                    .map(|_| "must be a valid IPv4 address".to_string()),
                "IPv6" => a
                    .parse::<std::net::Ipv6Addr>()
                    .err()
                    .map(|_| "must be a valid IPv6 address".to_string()),
                "FQDN" => is_dns1123_subdomain(a).into_iter().next(),
                _ => None,
            };
            if let Some(msg) = bad {
                errs.push(FieldError::invalid(ap.index(j), a.as_str(), msg));
            }
        }
    }
    let mut names = BTreeSet::new();
    for (i, port) in s.ports.iter().flatten().enumerate() {
        let pp = Path::root("ports").index(i);
        let name = port.name.as_deref().unwrap_or("");
        if !name.is_empty() {
            for msg in is_dns1123_label(name) {
                errs.push(FieldError::invalid(pp.child("name"), name, msg));
            }
        }
        if !names.insert(name) {
            errs.push(FieldError::duplicate(pp.child("name"), name));
        }
        if let Some(n) = port.port {
            errs.extend(port_num(i64::from(n), &pp.child("port")));
        }
        errs.extend(protocol(port.protocol.as_deref(), &pp.child("protocol")));
    }
    errs
}

/// Upstream's `IsConfigMapKey`.
fn config_map_key(k: &str) -> Vec<String> {
    let mut errs = Vec::new();
    if k.len() > DNS1123_SUBDOMAIN_MAX_LENGTH {
        errs.push(max_len_error(DNS1123_SUBDOMAIN_MAX_LENGTH));
    }
    if k.is_empty()
        || !k
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
    {
        errs.push(regex_error(
            "a valid config key must consist of alphanumeric characters, '-', '_' or '.'",
            "[-._a-zA-Z0-9]+",
            &["key.name", "KEY_NAME", "key-name"],
        ));
    }
    if k == "." {
        errs.push("must not be '.'".into());
    } else if k == ".." {
        errs.push("must not be '..'".into());
    } else if k.starts_with("..") {
        errs.push("must not start with '..'".into());
    }
    errs
}

fn validate_data_keys(data: &BTreeMap<String, String>, binary: &BTreeMap<String, usize>) -> Errs {
    let mut errs = Vec::new();
    let mut total = 0;
    for (k, v) in data {
        for msg in config_map_key(k) {
            errs.push(FieldError::invalid(
                Path::root("data").key(k),
                k.as_str(),
                msg,
            ));
        }
        total += v.len();
    }
    for (k, n) in binary {
        for msg in config_map_key(k) {
            errs.push(FieldError::invalid(
                Path::root("binaryData").key(k),
                k.as_str(),
                msg,
            ));
        }
        if data.contains_key(k) {
            errs.push(FieldError::invalid(
                Path::root("binaryData").key(k),
                k.as_str(),
                "duplicate of key present in data",
            ));
        }
        total += n;
    }
    if total > MAX_SECRET_SIZE {
        errs.push(FieldError::too_long("", MAX_SECRET_SIZE));
    }
    errs
}

fn validate_secret_keys(data: &BTreeMap<String, usize>) -> Errs {
    let mut errs = Vec::new();
    let mut total = 0;
    for (k, n) in data {
        for msg in config_map_key(k) {
            errs.push(FieldError::invalid(
                Path::root("data").key(k),
                k.as_str(),
                msg,
            ));
        }
        total += n;
    }
    if total > MAX_SECRET_SIZE {
        errs.push(FieldError::too_long("data", MAX_SECRET_SIZE));
    }
    errs
}

fn valid_cidr(s: &str) -> bool {
    let Some((ip, bits)) = s.split_once('/') else {
        return false;
    };
    let Ok(ip) = ip.parse::<IpAddr>() else {
        return false;
    };
    let max = if ip.is_ipv4() { 32 } else { 128 };
    bits.parse::<u8>().is_ok_and(|b| b <= max)
}

fn validate_node(n: &Node) -> Errs {
    let mut errs = Vec::new();
    let Some(spec) = &n.spec else { return errs };
    let p = Path::root("spec");
    for (i, c) in spec.pod_cidrs.iter().flatten().enumerate() {
        if !valid_cidr(c) {
            errs.push(FieldError::invalid(
                p.child("podCIDRs").index(i),
                c.as_str(),
                "must be a valid CIDR value, (e.g. 10.9.8.0/24 or 2001:db8::/64)",
            ));
        }
    }
    if spec.pod_cidrs.as_ref().is_some_and(|c| c.len() > 2) {
        errs.push(FieldError::invalid(
            p.child("podCIDRs"),
            json!(spec.pod_cidrs),
            "may specify no more than one CIDR for each IP family",
        ));
    }
    for (i, t) in spec.taints.iter().flatten().enumerate() {
        let tp = p.child("taints").index(i);
        for msg in is_qualified_name(&t.key) {
            errs.push(FieldError::invalid(tp.child("key"), t.key.as_str(), msg));
        }
        if t.effect.is_empty() {
            errs.push(FieldError::required(tp.child("effect"), ""));
        } else {
            errs.extend(one_of(
                Some(&t.effect),
                &["NoExecute", "NoSchedule", "PreferNoSchedule"],
                &tp.child("effect"),
            ));
        }
    }
    errs
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::defaults::apply_defaults;
    use crate::field::aggregate;

    fn svc(spec: Value) -> Value {
        json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web", "namespace": "default"}, "spec": spec})
    }

    /// Defaults then validates, as the server does on create, and renders the errors.
    fn messages(kind: &str, obj: Value) -> Vec<String> {
        let obj = apply_defaults(kind, &obj).expect("decodes");
        validate(kind, &obj)
            .expect("decodes")
            .iter()
            .map(|e| e.to_string())
            .collect()
    }

    #[test]
    fn service_errors() {
        let cases: Vec<(Value, Vec<&str>)> = vec![
            (svc(json!({"ports": [{"port": 80}], "selector": {"app": "web"}})), vec![]),
            // targetPort defaults to port, so upstream reports the bad number twice.
            (
                svc(json!({"ports": [{"port": 70000}]})),
                vec![
                    "spec.ports[0].port: Invalid value: 70000: must be between 1 and 65535, inclusive",
                    "spec.ports[0].targetPort: Invalid value: 70000: must be between 1 and 65535, inclusive",
                ],
            ),
            (
                svc(json!({"ports": [{"port": 80, "targetPort": 0}]})),
                vec![],
            ),
            (svc(json!({"selector": {"app": "web"}})), vec!["spec.ports: Required value"]),
            (svc(json!({"clusterIP": "None"})), vec![]),
            (svc(json!({"type": "ExternalName", "externalName": "db.example.com"})), vec![]),
            (svc(json!({"type": "ExternalName"})), vec!["spec.externalName: Required value"]),
            (
                svc(json!({"ports": [{"port": 80}, {"port": 81}]})),
                vec!["spec.ports[0].name: Required value", "spec.ports[1].name: Required value"],
            ),
            (
                svc(json!({"ports": [{"name": "a", "port": 80}, {"name": "a", "port": 80}]})),
                vec!["spec.ports[1].name: Duplicate value: \"a\"", "spec.ports[1]: Duplicate value: {\"port\":80,\"protocol\":\"TCP\"}"],
            ),
            (
                svc(json!({"ports": [{"port": 80, "protocol": "HTTP"}]})),
                vec!["spec.ports[0].protocol: Unsupported value: \"HTTP\": supported values: \"SCTP\", \"TCP\", \"UDP\""],
            ),
            (
                svc(json!({"ports": [{"port": 80, "targetPort": "Http"}]})),
                vec![
                    "spec.ports[0].targetPort: Invalid value: \"Http\": must contain only alpha-numeric characters (a-z, 0-9), and hyphens (-)",
                ],
            ),
            (
                svc(json!({"ports": [{"port": 80, "nodePort": 30080}]})),
                vec!["spec.ports[0].nodePort: Forbidden: may not be used when `type` is 'ClusterIP'"],
            ),
            (svc(json!({"type": "NodePort", "ports": [{"port": 80, "nodePort": 30080}]})), vec![]),
            (
                svc(json!({"ports": [{"port": 80}], "sessionAffinity": "ClientIP", "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 0}}})),
                vec!["spec.sessionAffinityConfig.clientIP.timeoutSeconds: Invalid value: 0: must be greater than 0 and less than 86400"],
            ),
            (
                svc(json!({"ports": [{"port": 80, "appProtocol": "kubernetes.io/h2c"}]})),
                vec![],
            ),
            (
                svc(json!({"ports": [{"port": 80, "appProtocol": "http 2"}]})),
                vec!["spec.ports[0].appProtocol: Invalid value: \"http 2\": name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex used for validation is '([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]')"],
            ),
            (
                svc(json!({"type": "Magic", "ports": [{"port": 80}]})),
                vec!["spec.type: Unsupported value: \"Magic\": supported values: \"ClusterIP\", \"ExternalName\", \"LoadBalancer\", \"NodePort\""],
            ),
            (
                svc(json!({"ports": [{"port": 80}], "externalTrafficPolicy": "Local"})),
                vec!["spec.externalTrafficPolicy: Invalid value: \"Local\": may only be set for externally-accessible services"],
            ),
            (
                svc(json!({"ports": [{"port": 80}], "clusterIP": "10.0.0.300"})),
                vec!["spec.clusterIPs[0]: Invalid value: \"10.0.0.300\": must be a valid IP address, (e.g. 10.9.8.7 or 2001:db8::ffff)"],
            ),
            (
                svc(json!({"ports": [{"port": 80}], "selector": {"app": "a b"}})),
                vec!["spec.selector: Invalid value: \"a b\": a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyValue',  or 'my_value',  or '12345', regex used for validation is '(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?')"],
            ),
        ];
        for (obj, want) in cases {
            assert_eq!(messages("Service", obj.clone()), want, "{obj}");
        }
    }

    #[test]
    fn service_invalid_status_message() {
        let obj = apply_defaults("Service", &svc(json!({"ports": [{"port": 70000, "targetPort": 8080}, {"port": 0, "name": "b", "targetPort": "http"}]}))).unwrap();
        let errs = validate("Service", &obj).unwrap();
        let st = crate::status::invalid("", "Service", "web", &errs);
        assert_eq!(
            st.message(),
            "Service \"web\" is invalid: [spec.ports[0].name: Required value, spec.ports[0].port: Invalid value: 70000: must be between 1 and 65535, inclusive, spec.ports[1].port: Invalid value: 0: must be between 1 and 65535, inclusive]"
        );
        assert_eq!(st.body["details"]["causes"].as_array().unwrap().len(), 3);
    }

    #[test]
    fn metadata_errors() {
        let subdomain = "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')";
        let cm = |meta: Value| json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": meta});
        let big = "x".repeat(TOTAL_ANNOTATION_SIZE_LIMIT);
        let cases: Vec<(&str, Value, Vec<String>)> = vec![
            ("ConfigMap", cm(json!({"name": "ok.name", "namespace": "default"})), vec![]),
            ("ConfigMap", cm(json!({"namespace": "default"})), vec!["metadata.name: Required value: name or generateName is required".into()]),
            ("ConfigMap", cm(json!({"generateName": "web-", "namespace": "default"})), vec![]),
            (
                "ConfigMap",
                cm(json!({"generateName": "Web-", "namespace": "default"})),
                vec![format!("metadata.generateName: Invalid value: \"Web-\": {subdomain}")],
            ),
            ("ConfigMap", cm(json!({"name": "Web", "namespace": "default"})), vec![format!("metadata.name: Invalid value: \"Web\": {subdomain}")]),
            ("ConfigMap", cm(json!({"name": "a"})), vec!["metadata.namespace: Required value".into()]),
            (
                "Namespace",
                json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "a.b"}}),
                vec!["metadata.name: Invalid value: \"a.b\": a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')".into()],
            ),
            (
                "Node",
                json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "n1", "namespace": "default"}}),
                vec!["metadata.namespace: Forbidden: not allowed on this type".into()],
            ),
            (
                "ConfigMap",
                cm(json!({"name": "a", "namespace": "default", "labels": {"-x": "y"}})),
                vec!["metadata.labels: Invalid value: \"-x\": name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex used for validation is '([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]')".into()],
            ),
            (
                "ConfigMap",
                cm(json!({"name": "a", "namespace": "default", "annotations": {"k": big}})),
                vec!["metadata.annotations: Too long: may not be more than 262144 bytes".into()],
            ),
            (
                "ConfigMap",
                cm(json!({"name": "a", "namespace": "default", "ownerReferences": [
                    {"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "rs", "uid": "u1", "controller": true},
                    {"apiVersion": "", "kind": "", "name": "x", "uid": ""}]})),
                vec![
                    "metadata.ownerReferences.apiVersion: Invalid value: \"\": version must not be empty".into(),
                    "metadata.ownerReferences.kind: Invalid value: \"\": kind must not be empty".into(),
                    "metadata.ownerReferences.uid: Invalid value: \"\": uid must not be empty".into(),
                ],
            ),
            (
                "ConfigMap",
                cm(json!({"name": "a", "namespace": "default", "ownerReferences": [
                    {"apiVersion": "v1", "kind": "Pod", "name": "p1", "uid": "u1", "controller": true},
                    {"apiVersion": "v1", "kind": "Pod", "name": "p2", "uid": "u2", "controller": true}]})),
                vec![concat!(
                    "metadata.ownerReferences: Invalid value: [{\"apiVersion\":\"v1\",\"controller\":true,\"kind\":\"Pod\",\"name\":\"p1\",\"uid\":\"u1\"},",
                    "{\"apiVersion\":\"v1\",\"controller\":true,\"kind\":\"Pod\",\"name\":\"p2\",\"uid\":\"u2\"}]: ",
                    "Only one reference can have Controller set to true. Found \"true\" in references for p1 and p2"
                )
                .into()],
            ),
            (
                "Lease",
                json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": {"name": "kube_scheduler", "namespace": "kube-system"}}),
                vec![format!("metadata.name: Invalid value: \"kube_scheduler\": {subdomain}")],
            ),
            (
                "ServiceAccount",
                json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "default", "namespace": "default"}}),
                vec![],
            ),
            (
                "Event",
                json!({"apiVersion": "v1", "kind": "Event", "metadata": {"name": "web.17a2b3c4d5e6f708", "namespace": "default"}}),
                vec![],
            ),
            (
                "ControllerRevision",
                json!({"apiVersion": "apps/v1", "kind": "ControllerRevision", "metadata": {"name": "ds-5d8f", "namespace": "default"},
                       "data": {"spec": {"template": {"$patch": "replace"}}}, "revision": 2}),
                vec![],
            ),
            (
                "ControllerRevision",
                json!({"apiVersion": "apps/v1", "kind": "ControllerRevision", "metadata": {"name": "ds-5d8f", "namespace": "default"}, "revision": -1}),
                vec![
                    "data: Required value: data is mandatory".into(),
                    "revision: Invalid value: -1: must be greater than or equal to 0".into(),
                ],
            ),
            (
                "ConfigMap",
                cm(json!({"name": "a", "namespace": "default", "finalizers": ["custom", "example.com/f", "kubernetes"]})),
                vec!["metadata.finalizers: Invalid value: \"custom\": name is neither a standard finalizer name nor is it fully qualified".into()],
            ),
        ];
        for (kind, obj, want) in cases {
            let got: Vec<String> = validate(kind, &obj)
                .unwrap()
                .iter()
                .map(|e| e.to_string())
                .collect();
            assert_eq!(got, want, "{obj}");
        }
    }

    fn revision(data: Value, revision: i64) -> Value {
        json!({"apiVersion": "apps/v1", "kind": "ControllerRevision", "metadata": {"name": "r", "namespace": "default"}, "data": data, "revision": revision})
    }

    fn deploy(spec: Value) -> Value {
        json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d", "namespace": "default"}, "spec": spec})
    }

    #[test]
    fn workload_errors() {
        let tmpl = |labels: Value| json!({"metadata": {"labels": labels}, "spec": {"containers": [{"name": "c", "image": "x:1"}]}});
        let cases: Vec<(&str, Value, Vec<&str>)> = vec![
            ("Deployment", deploy(json!({"selector": {"matchLabels": {"app": "x"}}, "template": tmpl(json!({"app": "x"}))})), vec![]),
            ("Deployment", deploy(json!({"template": tmpl(json!({"app": "x"}))})), vec!["spec.selector: Required value"]),
            (
                "Deployment",
                deploy(json!({"selector": {}, "template": tmpl(json!({"app": "x"}))})),
                vec!["spec.selector: Invalid value: {}: empty selector is invalid for deployment"],
            ),
            (
                "Deployment",
                deploy(json!({"selector": {"matchLabels": {"app": "y"}}, "template": tmpl(json!({"app": "x"}))})),
                vec!["spec.template.metadata.labels: Invalid value: {\"app\":\"x\"}: `selector` does not match template `labels`"],
            ),
            (
                "Deployment",
                deploy(json!({"replicas": -1, "selector": {"matchLabels": {"app": "x"}}, "template": tmpl(json!({"app": "x"}))})),
                vec!["spec.replicas: Invalid value: -1: must be greater than or equal to 0"],
            ),
            (
                "Deployment",
                deploy(json!({"selector": {"matchExpressions": [{"key": "app", "operator": "In"}]}, "template": tmpl(json!({"app": "x"}))})),
                vec!["spec.selector.matchExpressions[0].values: Required value: must be specified when `operator` is 'In' or 'NotIn'"],
            ),
            (
                "Deployment",
                deploy(json!({"selector": {"matchLabels": {"app": "x"}}, "strategy": {"type": "Recreate", "rollingUpdate": {}}, "template": tmpl(json!({"app": "x"}))})),
                vec!["spec.strategy.rollingUpdate: Forbidden: may not be specified when strategy `type` is 'Recreate'"],
            ),
            (
                "Deployment",
                deploy(json!({"selector": {"matchLabels": {"app": "x"}}, "strategy": {"rollingUpdate": {"maxSurge": 0, "maxUnavailable": "0%"}}, "template": tmpl(json!({"app": "x"}))})),
                vec!["spec.strategy.rollingUpdate.maxUnavailable: Invalid value: \"0%\": may not be 0 when `maxSurge` is 0"],
            ),
            (
                "Deployment",
                deploy(json!({"selector": {"matchLabels": {"app": "x"}}, "template": {"metadata": {"labels": {"app": "x"}}, "spec": {"restartPolicy": "Never", "containers": [{"name": "c", "image": "i"}]}}})),
                vec!["spec.template.spec.restartPolicy: Unsupported value: \"Never\": supported values: \"Always\""],
            ),
            (
                "DaemonSet",
                json!({"apiVersion": "apps/v1", "kind": "DaemonSet", "metadata": {"name": "ds", "namespace": "kube-system"}, "spec": {"selector": {}, "template": tmpl(json!({"app": "x"}))}}),
                vec!["spec.selector: Invalid value: {}: empty selector is invalid for daemonset"],
            ),
            (
                "ReplicaSet",
                json!({"apiVersion": "apps/v1", "kind": "ReplicaSet", "metadata": {"name": "rs", "namespace": "default"}, "spec": {"selector": {"matchLabels": {"app": "x"}}, "template": tmpl(json!({"app": "x"}))}}),
                vec![],
            ),
            (
                "Job",
                json!({"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "j", "namespace": "default"}, "spec": {"template": tmpl(json!({"app": "x"}))}}),
                vec!["spec.template.spec.restartPolicy: Unsupported value: \"Always\": supported values: \"OnFailure\", \"Never\""],
            ),
        ];
        for (kind, obj, want) in cases {
            assert_eq!(messages(kind, obj.clone()), want, "{obj}");
        }
    }

    #[test]
    fn pod_errors() {
        let pod = |spec: Value| json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "namespace": "default"}, "spec": spec});
        let cases: Vec<(Value, Vec<&str>)> = vec![
            (pod(json!({"containers": [{"name": "a", "image": "x"}]})), vec![]),
            (pod(json!({"containers": []})), vec!["spec.containers: Required value"]),
            (
                pod(json!({"containers": [{"name": "a", "image": "x"}, {"name": "a", "image": "y"}]})),
                vec!["spec.containers[1].name: Duplicate value: \"a\""],
            ),
            (
                pod(json!({"initContainers": [{"name": "a", "image": "x"}], "containers": [{"name": "a", "image": "y"}]})),
                vec!["spec.containers[0].name: Duplicate value: \"a\""],
            ),
            (pod(json!({"containers": [{"name": "a"}]})), vec!["spec.containers[0].image: Required value"]),
            (
                pod(json!({"containers": [{"name": "A_1", "image": "x"}]})),
                vec!["spec.containers[0].name: Invalid value: \"A_1\": a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')"],
            ),
            (
                pod(json!({"containers": [{"name": "a", "image": "x", "ports": [{"containerPort": 70000, "protocol": "ICMP"}]}]})),
                vec![
                    "spec.containers[0].ports[0].containerPort: Invalid value: 70000: must be between 1 and 65535, inclusive",
                    "spec.containers[0].ports[0].protocol: Unsupported value: \"ICMP\": supported values: \"SCTP\", \"TCP\", \"UDP\"",
                ],
            ),
            (
                pod(json!({"containers": [{"name": "a", "image": "x", "env": [{"name": "1X"}]}]})),
                vec!["spec.containers[0].env[0].name: Invalid value: \"1X\": a valid environment variable name must consist of alphabetic characters, digits, '_', '-', or '.', and must not start with a digit (e.g. 'my.env-name',  or 'MY_ENV.NAME',  or 'MyEnvName1', regex used for validation is '[-._a-zA-Z][-._a-zA-Z0-9]*')"],
            ),
            (
                pod(json!({"containers": [{"name": "a", "image": "x", "volumeMounts": [{"name": "data", "mountPath": "/d"}]}]})),
                vec!["spec.containers[0].volumeMounts[0].name: Not found: \"data\""],
            ),
            (
                pod(json!({"volumes": [{"name": "v"}, {"name": "v"}], "containers": [{"name": "a", "image": "x", "volumeMounts": [{"name": "v", "mountPath": "/d"}]}]})),
                vec!["spec.volumes[1].name: Duplicate value: \"v\""],
            ),
            (
                pod(json!({"restartPolicy": "Sometimes", "containers": [{"name": "a", "image": "x"}]})),
                vec!["spec.restartPolicy: Unsupported value: \"Sometimes\": supported values: \"Always\", \"Never\", \"OnFailure\""],
            ),
        ];
        for (obj, want) in cases {
            assert_eq!(messages("Pod", obj.clone()), want, "{obj}");
        }
    }

    #[test]
    fn other_kinds() {
        let es = |addr_type: &str, addrs: Value, ports: Value| {
            json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice", "metadata": {"name": "s", "namespace": "default"},
                   "addressType": addr_type, "endpoints": [{"addresses": addrs}], "ports": ports})
        };
        let cases: Vec<(&str, Value, Vec<&str>)> = vec![
            ("EndpointSlice", es("IPv4", json!(["10.0.0.1"]), json!([{"name": "http", "port": 80}])), vec![]),
            (
                "EndpointSlice",
                es("IPv4", json!(["fd00::1"]), json!([])),
                vec!["endpoints[0].addresses[0]: Invalid value: \"fd00::1\": must be a valid IPv4 address"],
            ),
            ("EndpointSlice", es("IPv6", json!([]), json!([])), vec!["endpoints[0].addresses: Required value: must contain at least 1 address"]),
            (
                "EndpointSlice",
                es("IPX", json!(["a"]), json!([])),
                vec!["addressType: Unsupported value: \"IPX\": supported values: \"FQDN\", \"IPv4\", \"IPv6\""],
            ),
            (
                "EndpointSlice",
                es("FQDN", json!(["db.example.com"]), json!([{"name": "a", "port": 1}, {"name": "a", "port": 2}])),
                vec!["ports[1].name: Duplicate value: \"a\""],
            ),
            (
                "ConfigMap",
                json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c", "namespace": "d"}, "data": {"a/b": "1", "..x": "2"}}),
                vec![
                    "data[..x]: Invalid value: \"..x\": must not start with '..'",
                    "data[a/b]: Invalid value: \"a/b\": a valid config key must consist of alphanumeric characters, '-', '_' or '.' (e.g. 'key.name',  or 'KEY_NAME',  or 'key-name', regex used for validation is '[-._a-zA-Z0-9]+')",
                ],
            ),
            (
                "Node",
                json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "n1"}, "spec": {"podCIDRs": ["10.244.1.0/24", "10.244.1.0/33"],
                       "taints": [{"key": "k", "effect": "Sometimes"}]}}),
                vec![
                    "spec.podCIDRs[1]: Invalid value: \"10.244.1.0/33\": must be a valid CIDR value, (e.g. 10.9.8.0/24 or 2001:db8::/64)",
                    "spec.taints[0].effect: Unsupported value: \"Sometimes\": supported values: \"NoExecute\", \"NoSchedule\", \"PreferNoSchedule\"",
                ],
            ),
            (
                "Namespace",
                json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "ns"}, "spec": {"finalizers": ["bad name"]}}),
                vec!["spec.finalizers: Invalid value: \"bad name\": name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex used for validation is '([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]')"],
            ),
        ];
        for (kind, obj, want) in cases {
            assert_eq!(messages(kind, obj.clone()), want, "{obj}");
        }
    }

    #[test]
    fn update_rules() {
        let old = apply_defaults(
            "Service",
            &svc(json!({"ports": [{"port": 80}], "clusterIP": "10.96.0.5"})),
        )
        .unwrap();
        let cases: Vec<(&str, Value, Value, Vec<&str>)> = vec![
            ("Service", old.clone(), old.clone(), vec![]),
            (
                "Service",
                old.clone(),
                { let mut n = old.clone(); n["spec"]["clusterIP"] = json!("10.96.0.6"); n },
                vec!["spec.clusterIPs[0]: Invalid value: \"10.96.0.6\": may not change once set"],
            ),
            (
                "Service",
                old.clone(),
                { let mut n = old.clone(); n["metadata"]["name"] = json!("other"); n },
                vec!["metadata.name: Invalid value: \"other\": field is immutable"],
            ),
            (
                "Deployment",
                deploy(json!({"selector": {"matchLabels": {"app": "x"}}, "template": {"metadata": {"labels": {"app": "x", "v": "1"}}, "spec": {"containers": [{"name": "c", "image": "i"}]}}})),
                deploy(json!({"selector": {"matchLabels": {"app": "x", "v": "1"}}, "template": {"metadata": {"labels": {"app": "x", "v": "1"}}, "spec": {"containers": [{"name": "c", "image": "i"}]}}})),
                vec!["spec.selector: Invalid value: {\"matchLabels\":{\"app\":\"x\",\"v\":\"1\"}}: field is immutable"],
            ),
            (
                "ControllerRevision",
                revision(json!({"a": 1}), 1),
                revision(json!({"a": 1}), 4),
                vec![],
            ),
            (
                "ControllerRevision",
                revision(json!({"a": 1}), 1),
                revision(json!({"a": 2}), 1),
                vec!["data: Invalid value: {\"a\":2}: field is immutable"],
            ),
        ];
        let node = |cidr: Option<&str>| {
            let mut n =
                json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "n1"}, "spec": {}});
            if let Some(c) = cidr {
                n["spec"] = json!({"podCIDR": c, "podCIDRs": [c]});
            }
            n
        };
        let cases: Vec<(&str, Value, Value, Vec<&str>)> = cases
            .into_iter()
            .chain([
                ("Node", node(None), node(Some("10.42.1.0/24")), vec![]),
                ("Node", node(Some("10.42.1.0/24")), node(Some("10.42.1.0/24")), vec![]),
                (
                    "Node",
                    node(Some("10.42.1.0/24")),
                    node(Some("10.42.2.0/24")),
                    vec!["spec.podCIDRs: Forbidden: node updates may not change podCIDR except from \"\" to valid"],
                ),
            ])
            .collect();
        for (kind, old, new, want) in cases {
            let got: Vec<String> = validate_update(kind, &old, &new)
                .unwrap()
                .iter()
                .map(|e| e.to_string())
                .collect();
            assert_eq!(got, want, "{new}");
        }
        let errs = validate_update("Service", &old, &{
            let mut n = old.clone();
            n["spec"]["clusterIP"] = json!("10.96.0.6");
            n
        })
        .unwrap();
        assert_eq!(
            aggregate(&errs),
            "spec.clusterIPs[0]: Invalid value: \"10.96.0.6\": may not change once set"
        );
    }
}
