//! Namespace controller (upstream's `pkg/controller/namespace/deletion`): a Namespace the
//! API server marked for deletion (deletionTimestamp set, `status.phase=Terminating`,
//! `spec.finalizers` still holding `kubernetes`) has all its content deleted, its status
//! conditions kept as upstream's, and then the `kubernetes` finalizer removed through the
//! `/finalize` subresource, upon which the API server deletes the Namespace.
//!
//! The resources to empty come from discovery (every namespaced resource that can be
//! listed and deleted), so content of kinds this controller has never heard of goes too.
//! Collections are deleted with `deletecollection` (Background propagation, as upstream);
//! what remains (pods in graceful termination, objects with finalizers) is waited for by
//! requeueing, and the conditions say what remains and why.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt as _;
use k8s_openapi::api::core::v1::Namespace;
use kube::{
    api::{DeleteParams, DynamicObject, ListParams, PostParams},
    discovery::{verbs, ApiResource, Discovery, Scope},
    runtime::{
        controller::{Action, Config as ControllerConfig},
        watcher, Controller,
    },
    Api, ResourceExt as _,
};
use serde_json::{json, Value};

use crate::{backoff::Backoff, Ctx};

/// The finalizer the API server puts on every Namespace and this controller removes.
pub const FINALIZER: &str = "kubernetes";
/// How soon a namespace whose content is still going is looked at again (upstream
/// requeues after its estimate, at least a few seconds; graceful pods dominate).
const REMAINING_RECHECK: Duration = Duration::from_secs(2);

/// Upstream's namespace condition types.
pub const DISCOVERY_FAILURE: &str = "NamespaceDeletionDiscoveryFailure";
pub const GROUP_VERSION_PARSING_FAILURE: &str = "NamespaceDeletionGroupVersionParsingFailure";
pub const CONTENT_FAILURE: &str = "NamespaceDeletionContentFailure";
pub const CONTENT_REMAINING: &str = "NamespaceContentRemaining";
pub const FINALIZERS_REMAINING: &str = "NamespaceFinalizersRemaining";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("namespace {0}: {1}")]
    Api(String, #[source] kube::Error),
}

/// What one deletion pass found, from which the conditions follow.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Pass {
    /// Discovery failed (message).
    pub discovery_failure: Option<String>,
    /// Resources whose deletion failed: `"<resource>: <error>"`.
    pub delete_failures: Vec<String>,
    /// Objects still present per resource (`pods.` / `deployments.apps`).
    pub remaining: BTreeMap<String, usize>,
    /// Objects per finalizer among those still present.
    pub finalizers: BTreeMap<String, usize>,
}

impl Pass {
    /// Nothing left and nothing failed: the finalizer may go.
    pub fn done(&self) -> bool {
        self.discovery_failure.is_none()
            && self.delete_failures.is_empty()
            && self.remaining.is_empty()
    }
}

fn condition(ty: &str, failing: bool, reason: &str, message: String) -> Value {
    json!({
        "type": ty,
        "status": if failing { "True" } else { "False" },
        "reason": reason,
        "message": message,
    })
}

/// The five conditions upstream's deleter sets, in its order with its reasons and
/// messages (`pkg/controller/namespace/deletion/status_condition_utils.go`).
pub fn conditions(pass: &Pass) -> Vec<Value> {
    let discovery = match &pass.discovery_failure {
        Some(m) => condition(
            DISCOVERY_FAILURE,
            true,
            "DiscoveryFailed",
            format!("Discovery failed for some groups, 1 failing: {m}"),
        ),
        None => condition(
            DISCOVERY_FAILURE,
            false,
            "ResourcesDiscovered",
            "All resources successfully discovered".into(),
        ),
    };
    let parsing = condition(
        GROUP_VERSION_PARSING_FAILURE,
        false,
        "ParsedGroupVersions",
        "All legacy kube types successfully parsed".into(),
    );
    let content = if pass.delete_failures.is_empty() {
        condition(
            CONTENT_FAILURE,
            false,
            "ContentDeleted",
            "All content successfully deleted, may be waiting on finalization".into(),
        )
    } else {
        condition(
            CONTENT_FAILURE,
            true,
            "ContentDeletionFailed",
            format!(
                "Failed to delete all resource types, {} remaining: {}",
                pass.delete_failures.len(),
                pass.delete_failures.join(", ")
            ),
        )
    };
    let remaining = if pass.remaining.is_empty() {
        condition(
            CONTENT_REMAINING,
            false,
            "ContentRemoved",
            "All content successfully removed".into(),
        )
    } else {
        let parts: Vec<String> = pass
            .remaining
            .iter()
            .map(|(r, n)| format!("{r} has {n} resource instances"))
            .collect();
        condition(
            CONTENT_REMAINING,
            true,
            "SomeResourcesRemain",
            format!("Some resources are remaining: {}", parts.join(", ")),
        )
    };
    let finalizers = if pass.finalizers.is_empty() {
        condition(
            FINALIZERS_REMAINING,
            false,
            "ContentHasNoFinalizers",
            "All content-preserving finalizers finished".into(),
        )
    } else {
        let parts: Vec<String> = pass
            .finalizers
            .iter()
            .map(|(f, n)| format!("{f} in {n} resource instances"))
            .collect();
        condition(
            FINALIZERS_REMAINING,
            true,
            "SomeFinalizersRemain",
            format!(
                "Some content in the namespace has finalizers remaining: {}",
                parts.join(", ")
            ),
        )
    };
    vec![discovery, parsing, content, remaining, finalizers]
}

/// Whether the controller has work on `ns`: marked for deletion and still holding the
/// `kubernetes` finalizer.
pub fn needs_finalizing(ns: &Namespace) -> bool {
    ns.metadata.deletion_timestamp.is_some()
        && ns
            .spec
            .as_ref()
            .and_then(|s| s.finalizers.as_ref())
            .is_some_and(|f| f.iter().any(|f| f == FINALIZER))
}

/// `<plural>.<group>` as upstream names resources in its messages (`pods.`).
fn resource_name(ar: &ApiResource) -> String {
    format!("{}.{}", ar.plural, ar.group)
}

struct State {
    ctx: Ctx,
    backoff: Backoff,
}

pub async fn run(ctx: Ctx) -> anyhow::Result<()> {
    let api: Api<Namespace> = Api::all(ctx.client.clone());
    let state = Arc::new(State {
        ctx,
        backoff: Backoff::default(),
    });
    tracing::info!("namespace controller started");
    Controller::new(api, watcher::Config::default())
        .with_config(ControllerConfig::default().concurrency(4))
        .run(reconcile, error_policy, state)
        .for_each(|r| async move {
            if let Err(e) = r {
                tracing::debug!("namespace: {e}");
            }
        })
        .await;
    anyhow::bail!("the namespace controller stream ended")
}

fn error_policy(ns: Arc<Namespace>, e: &Error, state: Arc<State>) -> Action {
    let delay = state.backoff.failed(&ns.name_any());
    tracing::warn!("namespace: {e} (retrying in {delay:?})");
    Action::requeue(delay)
}

async fn reconcile(ns: Arc<Namespace>, state: Arc<State>) -> Result<Action, Error> {
    if !needs_finalizing(&ns) {
        return Ok(Action::await_change());
    }
    let name = ns.name_any();
    let client = &state.ctx.client;
    let pass = delete_content(client, &name).await;
    let api: Api<Namespace> = Api::all(client.clone());
    let err = |e| Error::Api(name.clone(), e);
    let want = conditions(&pass);
    let have: Vec<Value> = ns
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .map(|cs| {
            cs.iter()
                .map(|c| {
                    json!({"type": c.type_, "status": c.status, "reason": c.reason, "message": c.message})
                })
                .collect()
        })
        .unwrap_or_default();
    if have != want {
        let now = serde_json::to_value(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
            k8s_openapi::jiff::Timestamp::now(),
        ))
        .unwrap_or_default();
        let conds: Vec<Value> = want
            .iter()
            .map(|c| {
                let mut c = c.clone();
                c["lastTransitionTime"] = json!(now);
                c
            })
            .collect();
        let patch = json!({"status": {"phase": "Terminating", "conditions": conds}});
        match api
            .patch_status(
                &name,
                &kube::api::PatchParams::default(),
                &kube::api::Patch::Merge(&patch),
            )
            .await
        {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 404 => return Ok(Action::await_change()),
            Err(e) => return Err(err(e)),
        }
    }
    if !pass.done() {
        tracing::info!(
            "namespace {name}: waiting for its content to go ({:?} remaining, {} failures)",
            pass.remaining,
            pass.delete_failures.len()
        );
        return Ok(Action::requeue(REMAINING_RECHECK));
    }
    // Everything is gone: drop our finalizer through /finalize; the API server deletes
    // the Namespace once no finalizer is left.
    let mut fresh = match api.get_opt(&name).await.map_err(err)? {
        Some(n) if needs_finalizing(&n) => n,
        _ => return Ok(Action::await_change()),
    };
    if let Some(spec) = fresh.spec.as_mut() {
        if let Some(f) = spec.finalizers.as_mut() {
            f.retain(|f| f != FINALIZER);
        }
    }
    match api
        .replace_subresource("finalize", &name, &PostParams::default(), &fresh)
        .await
    {
        Ok(_) => {
            tracing::info!("namespace {name}: content deleted, finalized");
            state.backoff.succeeded(&name);
            Ok(Action::await_change())
        }
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(Action::await_change()),
        Err(e) => Err(err(e)),
    }
}

/// Deletes every namespaced resource's objects in `ns` and reports what remains.
async fn delete_content(client: &kube::Client, ns: &str) -> Pass {
    let mut pass = Pass::default();
    let discovery = match Discovery::new(client.clone()).run().await {
        Ok(d) => d,
        Err(e) => {
            pass.discovery_failure = Some(e.to_string());
            return pass;
        }
    };
    for group in discovery.groups() {
        for (ar, caps) in group.recommended_resources() {
            if !matches!(caps.scope, Scope::Namespaced)
                || !caps.supports_operation(verbs::LIST)
                || !(caps.supports_operation(verbs::DELETE_COLLECTION)
                    || caps.supports_operation(verbs::DELETE))
            {
                continue;
            }
            let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), ns, &ar);
            let rname = resource_name(&ar);
            let dp = DeleteParams::background();
            let deleted = if caps.supports_operation(verbs::DELETE_COLLECTION) {
                api.delete_collection(&dp, &ListParams::default())
                    .await
                    .map(|_| ())
            } else {
                delete_each(&api, &dp).await
            };
            if let Err(e) = deleted {
                if !matches!(&e, kube::Error::Api(s) if s.code == 404) {
                    pass.delete_failures.push(format!("{rname}: {e}"));
                }
            }
            match api.list(&ListParams::default()).await {
                Ok(list) if !list.items.is_empty() => {
                    pass.remaining.insert(rname, list.items.len());
                    for o in &list.items {
                        for f in o.finalizers() {
                            *pass.finalizers.entry(f.clone()).or_default() += 1;
                        }
                    }
                }
                Ok(_) => {}
                Err(e) => pass.delete_failures.push(format!("{rname}: listing: {e}")),
            }
        }
    }
    pass
}

async fn delete_each(api: &Api<DynamicObject>, dp: &DeleteParams) -> Result<(), kube::Error> {
    for o in api.list(&ListParams::default()).await?.items {
        match api.delete(&o.name_any(), dp).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conditions_follow_upstream() {
        let ok = conditions(&Pass::default());
        let types: Vec<&str> = ok.iter().map(|c| c["type"].as_str().unwrap()).collect();
        assert_eq!(
            types,
            [
                DISCOVERY_FAILURE,
                GROUP_VERSION_PARSING_FAILURE,
                CONTENT_FAILURE,
                CONTENT_REMAINING,
                FINALIZERS_REMAINING
            ]
        );
        assert!(ok.iter().all(|c| c["status"] == "False"));
        assert_eq!(ok[2]["reason"], "ContentDeleted");

        let pass = Pass {
            delete_failures: vec!["widgets.example.com: boom".into()],
            remaining: [("pods.".to_string(), 2)].into(),
            finalizers: [("example.com/keep".to_string(), 1)].into(),
            ..Default::default()
        };
        assert!(!pass.done());
        let c = conditions(&pass);
        assert_eq!(
            (c[2]["status"].as_str(), c[2]["reason"].as_str()),
            (Some("True"), Some("ContentDeletionFailed"))
        );
        assert_eq!(
            c[2]["message"],
            "Failed to delete all resource types, 1 remaining: widgets.example.com: boom"
        );
        assert_eq!(
            c[3]["message"],
            "Some resources are remaining: pods. has 2 resource instances"
        );
        assert_eq!(
            c[4]["message"],
            "Some content in the namespace has finalizers remaining: example.com/keep in 1 resource instances"
        );
    }

    #[test]
    fn only_terminating_namespaces_with_our_finalizer_are_worked_on() {
        let ns = |deleting: bool, finalizers: &[&str]| -> Namespace {
            let mut v = json!({"metadata": {"name": "x"}, "spec": {"finalizers": finalizers}});
            if deleting {
                v["metadata"]["deletionTimestamp"] = json!("2026-01-01T00:00:00Z");
            }
            serde_json::from_value(v).unwrap()
        };
        assert!(needs_finalizing(&ns(true, &["kubernetes"])));
        assert!(!needs_finalizing(&ns(false, &["kubernetes"])));
        assert!(!needs_finalizing(&ns(true, &[])));
        assert!(!needs_finalizing(&ns(true, &["other"])));
    }
}
