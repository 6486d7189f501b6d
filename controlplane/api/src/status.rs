//! Builders for upstream-shaped `metav1.Status` failure objects (the body of every
//! non-2xx API response), mirroring `k8s.io/apimachinery/pkg/api/errors`: same reason,
//! code, message wording and `details`, since clients (kubectl, client-go's
//! `IsNotFound`/`IsConflict`, kube-rs) branch on `reason` and show `message` verbatim.

use crate::field::{aggregate, FieldError};
use serde_json::{json, Map, Value};

/// The group and plural of the resource an error is about (`""`/`services`,
/// `apps`/`deployments`): upstream's `schema.GroupResource`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GroupResource<'a> {
    pub group: &'a str,
    pub resource: &'a str,
}

impl GroupResource<'_> {
    /// `services`, `deployments.apps`.
    fn qualified(&self) -> String {
        if self.group.is_empty() {
            self.resource.to_string()
        } else {
            format!("{}.{}", self.resource, self.group)
        }
    }
}

/// A failure Status: HTTP code plus the JSON body to send.
#[derive(Debug, Clone, PartialEq)]
pub struct StatusError {
    pub code: u16,
    pub body: Value,
}

impl StatusError {
    pub fn reason(&self) -> &str {
        self.body["reason"].as_str().unwrap_or("")
    }
    pub fn message(&self) -> &str {
        self.body["message"].as_str().unwrap_or("")
    }
}

fn status(code: u16, reason: &str, message: String, details: Option<Value>) -> StatusError {
    let mut body = json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    });
    if let Some(d) = details {
        body["details"] = d;
    }
    StatusError { code, body }
}

/// Upstream `StatusDetails` for a named resource: empty strings are omitted
/// (`omitempty`), and `kind` holds the *resource* (plural), as upstream does.
fn details(gr: GroupResource<'_>, name: &str) -> Value {
    let mut d = Map::new();
    if !name.is_empty() {
        d.insert("name".into(), json!(name));
    }
    if !gr.group.is_empty() {
        d.insert("group".into(), json!(gr.group));
    }
    if !gr.resource.is_empty() {
        d.insert("kind".into(), json!(gr.resource));
    }
    Value::Object(d)
}

/// 404 `services "web" not found`.
pub fn not_found(gr: GroupResource<'_>, name: &str) -> StatusError {
    status(
        404,
        "NotFound",
        format!("{} {name:?} not found", gr.qualified()),
        Some(details(gr, name)),
    )
}

/// 409 `services "web" already exists` (create of an existing name).
pub fn already_exists(gr: GroupResource<'_>, name: &str) -> StatusError {
    status(
        409,
        "AlreadyExists",
        format!("{} {name:?} already exists", gr.qualified()),
        Some(details(gr, name)),
    )
}

/// 409 Conflict. `reason` is upstream's inner error text.
pub fn conflict(gr: GroupResource<'_>, name: &str, reason: &str) -> StatusError {
    status(
        409,
        "Conflict",
        format!(
            "Operation cannot be fulfilled on {} {name:?}: {reason}",
            gr.qualified()
        ),
        Some(details(gr, name)),
    )
}

/// The text of upstream's optimistic-concurrency failure (`registry.OptimisticLockErrorMsg`).
pub const OPTIMISTIC_LOCK_MSG: &str =
    "the object has been modified; please apply your changes to the latest version and try again";

/// 409 Conflict for a stale `metadata.resourceVersion` on update.
pub fn resource_version_conflict(gr: GroupResource<'_>, name: &str) -> StatusError {
    conflict(gr, name, OPTIMISTIC_LOCK_MSG)
}

/// 422 Invalid with one `details.causes` entry per field error. `group_kind` is upstream's
/// `GroupKind.String()` (`Service`, `Deployment.apps`).
pub fn invalid(group: &str, kind: &str, name: &str, errs: &[FieldError]) -> StatusError {
    let qualified_kind = if group.is_empty() {
        kind.to_string()
    } else {
        format!("{kind}.{group}")
    };
    let message = if errs.is_empty() {
        format!("{qualified_kind} {name:?} is invalid")
    } else {
        format!("{qualified_kind} {name:?} is invalid: {}", aggregate(errs))
    };
    let causes: Vec<Value> = errs
        .iter()
        .map(|e| json!({"reason": e.kind.cause_type(), "message": e.body(), "field": e.path}))
        .collect();
    let mut d = Map::new();
    if !name.is_empty() {
        d.insert("name".into(), json!(name));
    }
    if !group.is_empty() {
        d.insert("group".into(), json!(group));
    }
    d.insert("kind".into(), json!(kind));
    d.insert("causes".into(), Value::Array(causes));
    status(422, "Invalid", message, Some(Value::Object(d)))
}

/// 400 BadRequest with the given message (malformed body, bad selector, bad patch...).
pub fn bad_request(message: impl Into<String>) -> StatusError {
    status(400, "BadRequest", message.into(), None)
}

/// 410 Expired: a too-old resourceVersion or continue token (`NewResourceExpired`).
pub fn expired(message: impl Into<String>) -> StatusError {
    status(410, "Expired", message.into(), None)
}

/// 410 Gone (`NewGone`).
pub fn gone(message: impl Into<String>) -> StatusError {
    status(410, "Gone", message.into(), None)
}

/// The message upstream's watch cache sends for a too-old watch resourceVersion.
pub fn watch_too_old() -> StatusError {
    expired("The resourceVersion for the provided watch is too old.")
}

/// 403 `services "web" is forbidden: <why>` (`services is forbidden: ...` without a name).
pub fn forbidden(gr: GroupResource<'_>, name: &str, why: &str) -> StatusError {
    let message = if name.is_empty() {
        format!("{} is forbidden: {why}", gr.qualified())
    } else {
        format!("{} {name:?} is forbidden: {why}", gr.qualified())
    };
    status(403, "Forbidden", message, Some(details(gr, name)))
}

/// 401 Unauthorized; upstream substitutes `not authorized` for an empty message.
pub fn unauthorized(message: &str) -> StatusError {
    let m = if message.is_empty() {
        "not authorized"
    } else {
        message
    };
    status(401, "Unauthorized", m.to_string(), None)
}

/// 413 `Request entity too large: <what>`.
pub fn request_entity_too_large(message: &str) -> StatusError {
    status(
        413,
        "RequestEntityTooLarge",
        format!("Request entity too large: {message}"),
        None,
    )
}

/// 405 `<action> is not supported on resources of kind "services"` (reason MethodNotAllowed).
pub fn method_not_supported(gr: GroupResource<'_>, action: &str) -> StatusError {
    status(
        405,
        "MethodNotAllowed",
        format!(
            "{action} is not supported on resources of kind {:?}",
            gr.qualified()
        ),
        Some(details(gr, "")),
    )
}

/// 415 for a body whose Content-Type the endpoint does not accept (upstream's
/// `errUnsupportedMediaType`).
pub fn unsupported_media_type(accepted: &[&str]) -> StatusError {
    status(
        415,
        "UnsupportedMediaType",
        format!(
            "the body of the request was in an unknown format - accepted media types include: {}",
            accepted.join(", ")
        ),
        None,
    )
}

/// 406 for an Accept header the server cannot satisfy (upstream's `errNotAcceptable`).
pub fn not_acceptable(accepted: &[&str]) -> StatusError {
    status(
        406,
        "NotAcceptable",
        format!(
            "only the following media types are accepted: {}",
            accepted.join(", ")
        ),
        None,
    )
}

/// 500 `Internal error occurred: <err>`, with the error as the single cause.
pub fn internal_error(err: &str) -> StatusError {
    status(
        500,
        "InternalError",
        format!("Internal error occurred: {err}"),
        Some(json!({"causes": [{"message": err}]})),
    )
}

/// Success Status, as returned by DELETE of a collection or of an object already gone.
pub fn success(gr: GroupResource<'_>, name: &str, uid: Option<&str>) -> Value {
    let mut d = details(gr, name);
    if let Some(u) = uid {
        d["uid"] = json!(u);
    }
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "details": d})
}

#[cfg(test)]
mod tests {
    use super::*;

    const SVC: GroupResource<'static> = GroupResource {
        group: "",
        resource: "services",
    };
    const DEPLOY: GroupResource<'static> = GroupResource {
        group: "apps",
        resource: "deployments",
    };

    #[test]
    fn codes_reasons_messages() {
        let cases: Vec<(StatusError, u16, &str, &str)> = vec![
            (
                not_found(SVC, "web"),
                404,
                "NotFound",
                r#"services "web" not found"#,
            ),
            (
                not_found(DEPLOY, "web"),
                404,
                "NotFound",
                r#"deployments.apps "web" not found"#,
            ),
            (
                already_exists(SVC, "web"),
                409,
                "AlreadyExists",
                r#"services "web" already exists"#,
            ),
            (
                resource_version_conflict(SVC, "web"),
                409,
                "Conflict",
                r#"Operation cannot be fulfilled on services "web": the object has been modified; please apply your changes to the latest version and try again"#,
            ),
            (
                bad_request("bad selector"),
                400,
                "BadRequest",
                "bad selector",
            ),
            (
                watch_too_old(),
                410,
                "Expired",
                "The resourceVersion for the provided watch is too old.",
            ),
            (gone("continue expired"), 410, "Gone", "continue expired"),
            (
                forbidden(SVC, "web", "User \"x\" cannot get resource"),
                403,
                "Forbidden",
                r#"services "web" is forbidden: User "x" cannot get resource"#,
            ),
            (
                forbidden(SVC, "", "nope"),
                403,
                "Forbidden",
                "services is forbidden: nope",
            ),
            (unauthorized(""), 401, "Unauthorized", "not authorized"),
            (unauthorized("bad token"), 401, "Unauthorized", "bad token"),
            (
                request_entity_too_large("limit is 3145728"),
                413,
                "RequestEntityTooLarge",
                "Request entity too large: limit is 3145728",
            ),
            (
                unsupported_media_type(&["application/json", "application/yaml"]),
                415,
                "UnsupportedMediaType",
                "the body of the request was in an unknown format - accepted media types include: application/json, application/yaml",
            ),
            (
                not_acceptable(&["application/json"]),
                406,
                "NotAcceptable",
                "only the following media types are accepted: application/json",
            ),
            (internal_error("disk full"), 500, "InternalError", "Internal error occurred: disk full"),
            (
                method_not_supported(DEPLOY, "deletecollection"),
                405,
                "MethodNotAllowed",
                r#"deletecollection is not supported on resources of kind "deployments.apps""#,
            ),
        ];
        for (err, code, reason, message) in cases {
            assert_eq!(err.code, code, "{message}");
            assert_eq!(err.body["code"], code, "{message}");
            assert_eq!(err.reason(), reason);
            assert_eq!(err.message(), message);
            assert_eq!(err.body["kind"], "Status");
            assert_eq!(err.body["apiVersion"], "v1");
            assert_eq!(err.body["status"], "Failure");
        }
    }

    #[test]
    fn not_found_full_body() {
        assert_eq!(
            not_found(DEPLOY, "web").body,
            json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                   "message": "deployments.apps \"web\" not found", "reason": "NotFound",
                   "details": {"name": "web", "group": "apps", "kind": "deployments"}, "code": 404})
        );
    }

    #[test]
    fn invalid_with_causes() {
        let errs = vec![
            FieldError::invalid(
                "spec.ports[0].port",
                70000,
                "must be between 1 and 65535, inclusive",
            ),
            FieldError::required("spec.selector", ""),
        ];
        let e = invalid("", "Service", "web", &errs);
        assert_eq!(e.code, 422);
        assert_eq!(
            e.message(),
            "Service \"web\" is invalid: [spec.ports[0].port: Invalid value: 70000: must be between 1 and 65535, inclusive, spec.selector: Required value]"
        );
        assert_eq!(
            e.body["details"],
            json!({"name": "web", "kind": "Service", "causes": [
                {"reason": "FieldValueInvalid", "message": "Invalid value: 70000: must be between 1 and 65535, inclusive", "field": "spec.ports[0].port"},
                {"reason": "FieldValueRequired", "message": "Required value", "field": "spec.selector"},
            ]})
        );
        let one = invalid("apps", "Deployment", "web", &errs[1..]);
        assert_eq!(
            one.message(),
            "Deployment.apps \"web\" is invalid: spec.selector: Required value"
        );
        assert_eq!(one.body["details"]["group"], "apps");
        assert_eq!(
            invalid("", "Pod", "p", &[]).message(),
            "Pod \"p\" is invalid"
        );
    }

    #[test]
    fn success_status() {
        assert_eq!(
            success(SVC, "web", Some("u1")),
            json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success",
                   "details": {"name": "web", "kind": "services", "uid": "u1"}})
        );
    }
}
