//! Validation of rbac.authorization.k8s.io/v1 objects, as upstream's
//! `pkg/apis/rbac/validation`: policy rules need verbs and either (apiGroups + resources)
//! or nonResourceURLs (cluster roles only); bindings need a supported roleRef and subjects
//! of a known kind; a binding's roleRef never changes (upstream: delete and recreate).
//!
//! skiff stores and serves these objects so manifests carrying RBAC apply unchanged; its
//! authorizer does not evaluate them yet (admin and node identities only).

use k8s_openapi::api::rbac::v1::{PolicyRule, RoleRef, Subject};
use serde_json::Value;

use crate::field::{FieldError, Path};
use crate::names::is_dns1123_subdomain;

pub const GROUP: &str = "rbac.authorization.k8s.io";

/// Upstream's `ValidateRBACName` (path.IsValidPathSegmentName): names end up in URLs
/// unescaped, so `/` and `%` are refused and `.`/`..` too. Everything else goes.
pub fn name_errors(name: &str) -> Vec<String> {
    if name == "." || name == ".." {
        return vec![format!("may not be '{name}'")];
    }
    let mut out = Vec::new();
    for bad in ["/", "%"] {
        if name.contains(bad) {
            out.push(format!("may not contain '{bad}'"));
        }
    }
    out
}

/// Upstream's `ValidatePolicyRule`.
pub fn validate_rules(rules: &[PolicyRule], namespaced: bool, p: &Path) -> Vec<FieldError> {
    let mut errs = Vec::new();
    for (i, rule) in rules.iter().enumerate() {
        let p = p.index(i);
        if rule.verbs.is_empty() {
            errs.push(FieldError::required(
                p.child("verbs").as_str(),
                "verbs must contain at least one value",
            ));
        }
        let non_resource = rule.non_resource_urls.as_deref().unwrap_or_default();
        let groups = rule.api_groups.as_deref().unwrap_or_default();
        let resources = rule.resources.as_deref().unwrap_or_default();
        let names = rule.resource_names.as_deref().unwrap_or_default();
        if !non_resource.is_empty() {
            if namespaced {
                errs.push(FieldError::invalid(
                    p.child("nonResourceURLs").as_str(),
                    Value::from(non_resource.to_vec()),
                    "namespaced rules cannot apply to non-resource URLs",
                ));
            }
            if !groups.is_empty() || !resources.is_empty() || !names.is_empty() {
                errs.push(FieldError::invalid(
                    p.child("nonResourceURLs").as_str(),
                    Value::from(non_resource.to_vec()),
                    "rules cannot apply to both regular resources and non-resource URLs",
                ));
            }
            continue;
        }
        if groups.is_empty() {
            errs.push(FieldError::required(
                p.child("apiGroups").as_str(),
                "resource rules must supply at least one api group",
            ));
        }
        if resources.is_empty() {
            errs.push(FieldError::required(
                p.child("resources").as_str(),
                "resource rules must supply at least one resource",
            ));
        }
    }
    errs
}

/// Upstream's `ValidateRoleBinding` / `ValidateClusterRoleBinding`: the roleRef and the
/// subjects. `cluster`: a ClusterRoleBinding (only ClusterRoles; ServiceAccount subjects
/// need a namespace).
pub fn validate_binding(
    role_ref: &RoleRef,
    subjects: &[Subject],
    cluster: bool,
) -> Vec<FieldError> {
    let mut errs = Vec::new();
    let r = Path::root("roleRef");
    if role_ref.api_group != GROUP {
        errs.push(FieldError::not_supported(
            r.child("apiGroup").as_str(),
            role_ref.api_group.as_str(),
            &[GROUP],
        ));
    }
    let kinds: &[&str] = if cluster {
        &["ClusterRole"]
    } else {
        &["Role", "ClusterRole"]
    };
    if !kinds.contains(&role_ref.kind.as_str()) {
        errs.push(FieldError::not_supported(
            r.child("kind").as_str(),
            role_ref.kind.as_str(),
            kinds,
        ));
    }
    if role_ref.name.is_empty() {
        errs.push(FieldError::required(r.child("name").as_str(), ""));
    } else {
        for e in name_errors(&role_ref.name) {
            errs.push(FieldError::invalid(
                r.child("name").as_str(),
                role_ref.name.as_str(),
                e,
            ));
        }
    }
    let s = Path::root("subjects");
    for (i, subject) in subjects.iter().enumerate() {
        errs.extend(validate_subject(subject, cluster, &s.index(i)));
    }
    errs
}

/// Upstream's `ValidateRoleBindingSubject`.
fn validate_subject(s: &Subject, cluster: bool, p: &Path) -> Vec<FieldError> {
    let mut errs = Vec::new();
    if s.name.is_empty() {
        errs.push(FieldError::required(p.child("name").as_str(), ""));
    }
    let group = s.api_group.as_deref().unwrap_or("");
    match s.kind.as_str() {
        "ServiceAccount" => {
            if !s.name.is_empty() {
                for e in is_dns1123_subdomain(&s.name) {
                    errs.push(FieldError::invalid(
                        p.child("name").as_str(),
                        s.name.as_str(),
                        e,
                    ));
                }
            }
            if !group.is_empty() {
                errs.push(FieldError::not_supported(
                    p.child("apiGroup").as_str(),
                    group,
                    &[""],
                ));
            }
            if cluster && s.namespace.as_deref().unwrap_or("").is_empty() {
                errs.push(FieldError::required(p.child("namespace").as_str(), ""));
            }
        }
        "User" | "Group" => {
            if group != GROUP {
                errs.push(FieldError::not_supported(
                    p.child("apiGroup").as_str(),
                    group,
                    &[GROUP],
                ));
            }
        }
        other => errs.push(FieldError::not_supported(
            p.child("kind").as_str(),
            other,
            &["ServiceAccount", "User", "Group"],
        )),
    }
    errs
}

/// Upstream's `ValidateRoleBindingUpdate`: roleRef is immutable.
pub fn validate_binding_update(old: &Value, new: &Value) -> Option<FieldError> {
    let (o, n) = (old.get("roleRef"), new.get("roleRef"));
    (o != n).then(|| {
        FieldError::invalid(
            "roleRef",
            n.cloned().unwrap_or(Value::Null),
            "cannot change roleRef",
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn rules(v: Value) -> Vec<PolicyRule> {
        serde_json::from_value(v).unwrap()
    }

    fn bodies(errs: &[FieldError]) -> Vec<String> {
        errs.iter()
            .map(|e| format!("{}: {}", e.path, e.body()))
            .collect()
    }

    #[test]
    fn rules_need_verbs_groups_and_resources() {
        let errs = validate_rules(&rules(json!([{"verbs": []}])), true, &Path::root("rules"));
        assert_eq!(
            bodies(&errs),
            [
                "rules[0].verbs: Required value: verbs must contain at least one value",
                "rules[0].apiGroups: Required value: resource rules must supply at least one api group",
                "rules[0].resources: Required value: resource rules must supply at least one resource",
            ]
        );
        let ok = rules(json!([{"apiGroups": [""], "resources": ["pods"], "verbs": ["get"]}]));
        assert!(validate_rules(&ok, true, &Path::root("rules")).is_empty());
    }

    #[test]
    fn non_resource_urls_only_in_cluster_roles_and_alone() {
        let r = rules(json!([{"nonResourceURLs": ["/healthz"], "verbs": ["get"]}]));
        assert!(validate_rules(&r, false, &Path::root("rules")).is_empty());
        let errs = validate_rules(&r, true, &Path::root("rules"));
        assert_eq!(
            bodies(&errs),
            ["rules[0].nonResourceURLs: Invalid value: [\"/healthz\"]: namespaced rules cannot apply to non-resource URLs"]
        );
        let mixed =
            rules(json!([{"nonResourceURLs": ["/x"], "resources": ["pods"], "verbs": ["get"]}]));
        assert_eq!(validate_rules(&mixed, false, &Path::root("rules")).len(), 1);
    }

    #[test]
    fn bindings_check_role_ref_and_subjects() {
        let rr: RoleRef =
            serde_json::from_value(json!({"apiGroup": GROUP, "kind": "Role", "name": "r"}))
                .unwrap();
        let sa: Vec<Subject> =
            serde_json::from_value(json!([{"kind": "ServiceAccount", "name": "agent"}])).unwrap();
        assert!(validate_binding(&rr, &sa, false).is_empty());
        // A ClusterRoleBinding may only name ClusterRoles, and its SA subjects a namespace.
        assert_eq!(
            bodies(&validate_binding(&rr, &sa, true)),
            [
                "roleRef.kind: Unsupported value: \"Role\": supported values: \"ClusterRole\"",
                "subjects[0].namespace: Required value",
            ]
        );
        let bad: Vec<Subject> = serde_json::from_value(
            json!([{"kind": "Robot", "name": "x"}, {"kind": "User", "name": "u"}]),
        )
        .unwrap();
        assert_eq!(
            bodies(&validate_binding(&rr, &bad, false)),
            [
                "subjects[0].kind: Unsupported value: \"Robot\": supported values: \"ServiceAccount\", \"User\", \"Group\"",
                "subjects[1].apiGroup: Unsupported value: \"\": supported values: \"rbac.authorization.k8s.io\"",
            ]
        );
    }

    #[test]
    fn role_ref_is_immutable() {
        let old = json!({"roleRef": {"apiGroup": GROUP, "kind": "ClusterRole", "name": "a"}});
        let new = json!({"roleRef": {"apiGroup": GROUP, "kind": "ClusterRole", "name": "b"}});
        assert!(validate_binding_update(&old, &old).is_none());
        assert!(validate_binding_update(&old, &new)
            .unwrap()
            .body()
            .ends_with(": cannot change roleRef"));
    }

    #[test]
    fn names_are_path_segments() {
        assert!(name_errors("system:controller:x").is_empty());
        assert_eq!(name_errors("a/b"), ["may not contain '/'"]);
        assert_eq!(name_errors(".."), ["may not be '..'"]);
    }
}
