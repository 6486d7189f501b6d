//! A DaemonSet's revision history as ControllerRevisions (upstream `pkg/controller/history`
//! and the DaemonSet controller's `constructHistory` / `cleanupHistory`), which is what
//! `kubectl rollout history daemonset/<name>` lists and `kubectl rollout undo` restores.
//!
//! - One ControllerRevision per template: named `<daemonset>-<hash>` (upstream's
//!   `ControllerRevisionName`, the prefix cut at 223 bytes), labelled with the template's
//!   labels plus `controller-revision-hash: <hash>` (the hash the pods carry), controlled
//!   by the DaemonSet, and holding upstream's patch: `{"spec":{"template":{…,"$patch":
//!   "replace"}}}`, which kubectl applies as a strategic merge patch to roll back.
//! - The current template's revision has the highest `revision`: a new template gets max + 1,
//!   and a template that comes back (a rollback) has its old revision renumbered to max + 1
//!   rather than a copy made.
//! - Old revisions beyond `revisionHistoryLimit` (default 10) are deleted oldest first,
//!   except those whose hash a pod still carries (upstream counts those against the limit
//!   but keeps them).
//! - A name taken by a revision with other data (a hash collision, or a revision that is
//!   not ours) bumps `status.collisionCount`, which changes the hash, as upstream does.

use std::collections::HashSet;

use k8s_openapi::{
    api::apps::v1::{ControllerRevision, DaemonSet},
    apimachinery::pkg::runtime::RawExtension,
};
use kube::{
    api::{DeleteParams, ObjectMeta, Patch, PatchParams, PostParams},
    Api, ResourceExt as _,
};
use serde_json::{json, Value};

use crate::{daemonset::REVISION_HASH, ownership};

/// Upstream's `revisionHistoryLimit` default for DaemonSets.
pub const DEFAULT_HISTORY_LIMIT: i32 = 10;

/// Upstream's `ControllerRevisionName`: the prefix is cut so that `-<hash>` fits in a
/// 253-byte DNS subdomain.
pub fn revision_name(ds_name: &str, hash: &str) -> String {
    let mut end = ds_name.len().min(223);
    while !ds_name.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}-{hash}", &ds_name[..end])
}

/// Upstream's DaemonSet `getPatch`: the data of the template's revision, a strategic
/// merge patch that replaces `spec.template` as a whole.
pub fn patch_of(ds: &DaemonSet) -> Value {
    let template = ds
        .spec
        .as_ref()
        .map(|s| s.template.clone())
        .unwrap_or_default();
    let mut template = serde_json::to_value(template).unwrap_or_else(|_| json!({}));
    if let Some(m) = template.as_object_mut() {
        m.insert("$patch".into(), json!("replace"));
    }
    json!({"spec": {"template": template}})
}

/// The revision object for `ds`'s current template.
pub fn revision_for(ds: &DaemonSet, hash: &str, revision: i64) -> ControllerRevision {
    let mut labels = ds
        .spec
        .as_ref()
        .and_then(|s| s.template.metadata.as_ref())
        .and_then(|m| m.labels.clone())
        .unwrap_or_default();
    labels.insert(REVISION_HASH.into(), hash.into());
    ControllerRevision {
        metadata: ObjectMeta {
            name: Some(revision_name(&ds.name_any(), hash)),
            namespace: ds.namespace(),
            labels: Some(labels),
            owner_references: Some(vec![ownership::controller_reference(ds)]),
            ..Default::default()
        },
        data: Some(RawExtension(patch_of(ds))),
        revision,
    }
}

fn hash_of(r: &ControllerRevision) -> Option<&str> {
    r.labels().get(REVISION_HASH).map(String::as_str)
}

fn same_data(r: &ControllerRevision, data: &Value) -> bool {
    r.data.as_ref().map(|d| &d.0) == Some(data)
}

/// What to do to `ds`'s history, from the revisions it controls.
#[derive(Debug, PartialEq)]
pub enum Step {
    /// The current template has a revision and it is the newest: nothing to write.
    Current,
    /// Create this revision for the current template.
    Create(Box<ControllerRevision>),
    /// The current template's revision (by name) is older than another: renumber it.
    Renumber { name: String, revision: i64 },
}

/// Upstream's `constructHistory` for the current template (`hash`): its revision, or what
/// to write to get one.
pub fn step(ds: &DaemonSet, hash: &str, owned: &[&ControllerRevision]) -> Step {
    let data = patch_of(ds);
    let max = owned.iter().map(|r| r.revision).max().unwrap_or(0);
    // Several revisions matching (written by someone else): the newest one is current.
    let current = owned
        .iter()
        .filter(|r| hash_of(r) == Some(hash) && same_data(r, &data))
        .max_by_key(|r| r.revision);
    match current {
        None => Step::Create(Box::new(revision_for(ds, hash, max + 1))),
        Some(r) if r.revision < max => Step::Renumber {
            name: r.name_any(),
            revision: max + 1,
        },
        Some(_) => Step::Current,
    }
}

/// Upstream's `cleanupHistory`: the old revisions to delete, oldest first. `live`: the
/// hashes the DaemonSet's pods carry (their revisions are kept, but count against the
/// limit).
pub fn to_delete(
    owned: &[&ControllerRevision],
    current: &str,
    live: &HashSet<&str>,
    limit: i32,
) -> Vec<String> {
    let mut old: Vec<&ControllerRevision> = owned
        .iter()
        .copied()
        .filter(|r| hash_of(r) != Some(current))
        .collect();
    let mut kill = old.len().saturating_sub(limit.max(0) as usize);
    old.sort_by_key(|r| r.revision);
    let mut out = Vec::new();
    for r in old {
        if kill == 0 {
            break;
        }
        if hash_of(r).is_some_and(|h| live.contains(h)) {
            continue;
        }
        out.push(r.name_any());
        kill -= 1;
    }
    out
}

/// What `sync` found.
pub enum Synced {
    /// The current template's revision exists (or was just written).
    Current,
    /// Its name is taken by a revision with other data: `status.collisionCount` was
    /// bumped, so the next reconcile hashes anew.
    Collision,
}

/// Brings `ds`'s history up to its current template (`hash`): creates or renumbers its
/// revision; on a name collision bumps `status.collisionCount`.
pub async fn sync(
    api: &Api<ControllerRevision>,
    ds_api: &Api<DaemonSet>,
    ds: &DaemonSet,
    hash: &str,
    owned: &[&ControllerRevision],
) -> Result<Synced, kube::Error> {
    let key = crate::runtime::key(ds);
    match step(ds, hash, owned) {
        Step::Current => Ok(Synced::Current),
        Step::Renumber { name, revision } => {
            let body = json!({"revision": revision});
            match api
                .patch(&name, &PatchParams::default(), &Patch::Merge(&body))
                .await
            {
                Ok(_) => {
                    tracing::info!("daemonset {key}: revision {name} is current again, renumbered to {revision}");
                    Ok(Synced::Current)
                }
                // Deleted meanwhile: the next reconcile creates it anew.
                Err(kube::Error::Api(e)) if e.code == 404 => Ok(Synced::Current),
                Err(e) => Err(e),
            }
        }
        Step::Create(rev) => {
            let name = rev.name_any();
            match api.create(&PostParams::default(), rev.as_ref()).await {
                Ok(_) => {
                    tracing::info!(
                        "daemonset {key}: created revision {name} (revision {})",
                        rev.revision
                    );
                    Ok(Synced::Current)
                }
                Err(kube::Error::Api(e)) if e.code == 409 => {
                    // Ours already (our cache was behind), or a collision.
                    let existing = api.get(&name).await?;
                    let ours = ownership::controller_ref(&existing.metadata)
                        .is_some_and(|o| Some(&o.uid) == ds.metadata.uid.as_ref());
                    if ours && existing.data == rev.data {
                        if existing.revision < rev.revision {
                            let body = json!({"revision": rev.revision});
                            api.patch(&name, &PatchParams::default(), &Patch::Merge(&body))
                                .await?;
                        }
                        return Ok(Synced::Current);
                    }
                    let count = ds
                        .status
                        .as_ref()
                        .and_then(|s| s.collision_count)
                        .unwrap_or(0)
                        + 1;
                    tracing::warn!(
                        "daemonset {key}: revision name {name} is taken by other data; collisionCount now {count}"
                    );
                    let body = json!({"status": {"collisionCount": count}});
                    ds_api
                        .patch_status(
                            &ds.name_any(),
                            &PatchParams::default(),
                            &Patch::Merge(&body),
                        )
                        .await?;
                    Ok(Synced::Collision)
                }
                Err(e) => Err(e),
            }
        }
    }
}

/// Deletes old revisions (see `to_delete`); a revision gone already is fine.
pub async fn cleanup(
    api: &Api<ControllerRevision>,
    ds: &DaemonSet,
    names: &[String],
) -> Result<(), kube::Error> {
    for name in names {
        match api.delete(name, &DeleteParams::default()).await {
            Ok(_) => tracing::info!(
                "daemonset {}: deleted old revision {name}",
                crate::runtime::key(ds)
            ),
            Err(kube::Error::Api(e)) if e.code == 404 => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::{apps::v1::DaemonSetSpec, core::v1::PodTemplateSpec};

    use super::*;

    fn ds(image: &str) -> DaemonSet {
        serde_json::from_value(json!({
            "metadata": {"name": "agent", "namespace": "kube-system", "uid": "u-1"},
            "spec": {
                "selector": {"matchLabels": {"app": "agent"}},
                "template": {
                    "metadata": {"labels": {"app": "agent"}},
                    "spec": {"containers": [{"name": "c", "image": image}]}
                }
            }
        }))
        .unwrap()
    }

    fn rev(d: &DaemonSet, hash: &str, revision: i64) -> ControllerRevision {
        revision_for(d, hash, revision)
    }

    #[test]
    fn the_patch_replaces_the_template() {
        let d = ds("a:1");
        let p = patch_of(&d);
        assert_eq!(p["spec"]["template"]["$patch"], "replace");
        assert_eq!(
            p["spec"]["template"]["spec"]["containers"][0]["image"],
            "a:1"
        );
        assert_eq!(p.as_object().unwrap().len(), 1, "only spec.template: {p}");
        let r = rev(&d, "h1", 1);
        assert_eq!(r.metadata.name.as_deref(), Some("agent-h1"));
        let labels = r.metadata.labels.unwrap();
        assert_eq!(labels.get("app").map(String::as_str), Some("agent"));
        assert_eq!(labels.get(REVISION_HASH).map(String::as_str), Some("h1"));
        let owner = &r.metadata.owner_references.unwrap()[0];
        assert_eq!(
            (owner.kind.as_str(), owner.controller),
            ("DaemonSet", Some(true))
        );
    }

    #[test]
    fn long_names_are_cut_to_fit() {
        let long = "d".repeat(250);
        let n = revision_name(&long, "5d8f9c7b6");
        assert!(n.len() <= 253, "{}", n.len());
        assert!(n.ends_with("-5d8f9c7b6"));
        assert_eq!(revision_name("web", "h"), "web-h");
    }

    #[test]
    fn a_new_template_gets_the_next_revision() {
        let (v1, v2) = (ds("a:1"), ds("a:2"));
        assert_eq!(
            step(&v1, "h1", &[]),
            Step::Create(Box::new(rev(&v1, "h1", 1)))
        );
        let r1 = rev(&v1, "h1", 1);
        assert_eq!(step(&v1, "h1", &[&r1]), Step::Current);
        assert_eq!(
            step(&v2, "h2", &[&r1]),
            Step::Create(Box::new(rev(&v2, "h2", 2)))
        );
    }

    #[test]
    fn a_rollback_renumbers_the_old_revision() {
        let (v1, v2) = (ds("a:1"), ds("a:2"));
        let (r1, r2) = (rev(&v1, "h1", 1), rev(&v2, "h2", 2));
        assert_eq!(
            step(&v1, "h1", &[&r1, &r2]),
            Step::Renumber {
                name: "agent-h1".into(),
                revision: 3
            }
        );
    }

    #[test]
    fn same_hash_other_data_is_not_the_current_revision() {
        let (v1, v2) = (ds("a:1"), ds("a:2"));
        // A revision with v1's data under v2's hash (a collision): v2 needs its own.
        let clash = rev(&v1, "h2", 1);
        assert!(matches!(step(&v2, "h2", &[&clash]), Step::Create(r) if r.revision == 2));
    }

    #[test]
    fn cleanup_keeps_the_limit_and_live_revisions() {
        let mut d = ds("a:0");
        d.spec = Some(DaemonSetSpec {
            template: PodTemplateSpec::default(),
            ..d.spec.unwrap()
        });
        let revs: Vec<ControllerRevision> = (1..=5).map(|i| rev(&d, &format!("h{i}"), i)).collect();
        let refs: Vec<&ControllerRevision> = revs.iter().collect();
        let none = HashSet::new();
        // Current h5; 4 old ones, limit 2: the two oldest go.
        assert_eq!(
            to_delete(&refs, "h5", &none, 2),
            vec!["agent-h1", "agent-h2"]
        );
        // h1 still runs in a pod: it stays, and counts against the limit.
        let live: HashSet<&str> = ["h1"].into();
        assert_eq!(
            to_delete(&refs, "h5", &live, 2),
            vec!["agent-h2", "agent-h3"]
        );
        assert!(to_delete(&refs, "h5", &none, 10).is_empty());
        assert_eq!(to_delete(&refs, "h5", &none, 0).len(), 4);
    }
}
