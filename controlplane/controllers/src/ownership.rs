//! Who owns what: label-selector matching, controller ownerReferences and upstream's
//! `ControllerRefManager` (simplified): an owner adopts matching orphans and releases
//! the objects it controls that no longer match its selector. Plus the slow-start batch
//! that every controller creating pods uses.

use std::collections::BTreeMap;

use futures::future::join_all;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference};
use kube::{
    api::{Patch, PatchParams},
    core::{Selector, SelectorExt as _},
    Api, Resource,
};
use serde::de::DeserializeOwned;

/// Does `selector` select `labels`? A missing selector selects nothing (upstream's
/// `labels.Nothing()` for a nil selector); a selector that does not parse selects nothing.
/// An empty selector also selects nothing here: apps/v1 validation requires a non-empty
/// one, and an owner that adopted every pod of its namespace would be a disaster.
pub fn selects(
    selector: Option<&LabelSelector>,
    labels: Option<&BTreeMap<String, String>>,
) -> bool {
    let Some(sel) = selector else { return false };
    if sel.match_labels.as_ref().is_none_or(|m| m.is_empty())
        && sel.match_expressions.as_ref().is_none_or(|e| e.is_empty())
    {
        return false;
    }
    let Ok(sel) = Selector::try_from(sel.clone()) else {
        return false;
    };
    let empty = BTreeMap::new();
    sel.matches(labels.unwrap_or(&empty))
}

/// The owner reference with `controller: true`, if any.
pub fn controller_ref(meta: &ObjectMeta) -> Option<&OwnerReference> {
    meta.owner_references
        .as_ref()?
        .iter()
        .find(|r| r.controller == Some(true))
}

/// The controller reference an owner puts on what it creates (`controller` and
/// `blockOwnerDeletion` both true, as upstream's `NewControllerRef`).
pub fn controller_reference<K: Resource<DynamicType = ()>>(owner: &K) -> OwnerReference {
    let mut r = owner.owner_ref(&()).unwrap_or_default();
    r.controller = Some(true);
    r.block_owner_deletion = Some(true);
    r
}

/// What an owner does with one candidate object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claim {
    /// Controlled by this owner and matching: it counts.
    Owned,
    /// Matching orphan: add our controller reference, then it counts.
    Adopt,
    /// Controlled by us but no longer matching: remove our reference.
    Release,
    /// Not ours (another controller's, or not matching).
    Ignore,
}

/// Upstream's `ClaimObject`: by controller reference first, then by selector. A deleting
/// owner adopts nothing and releases nothing; a deleting object is never adopted.
pub fn claim(
    owner_uid: &str,
    owner_deleting: bool,
    selector: Option<&LabelSelector>,
    obj: &ObjectMeta,
) -> Claim {
    let matches = selects(selector, obj.labels.as_ref());
    match controller_ref(obj) {
        Some(r) if r.uid != owner_uid => Claim::Ignore,
        Some(_) if matches => Claim::Owned,
        Some(_) if owner_deleting => Claim::Ignore,
        Some(_) => Claim::Release,
        None if owner_deleting || obj.deletion_timestamp.is_some() || !matches => Claim::Ignore,
        None => Claim::Adopt,
    }
}

/// Adds `owner` as controller of `name` (a merge patch that carries the object's
/// resourceVersion, so a concurrent change makes it fail instead of losing a reference).
pub async fn adopt<K>(api: &Api<K>, obj: &ObjectMeta, owner: OwnerReference) -> kube::Result<K>
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug,
{
    let mut refs = obj.owner_references.clone().unwrap_or_default();
    refs.retain(|r| r.uid != owner.uid);
    refs.push(owner);
    patch_refs(api, obj, refs).await
}

/// Removes every owner reference to `owner_uid` from the object.
pub async fn release<K>(api: &Api<K>, obj: &ObjectMeta, owner_uid: &str) -> kube::Result<K>
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug,
{
    let mut refs = obj.owner_references.clone().unwrap_or_default();
    refs.retain(|r| r.uid != owner_uid);
    patch_refs(api, obj, refs).await
}

async fn patch_refs<K>(api: &Api<K>, obj: &ObjectMeta, refs: Vec<OwnerReference>) -> kube::Result<K>
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug,
{
    let patch = serde_json::json!({
        "metadata": {
            "ownerReferences": refs,
            "resourceVersion": obj.resource_version,
        }
    });
    api.patch(
        obj.name.as_deref().unwrap_or_default(),
        &PatchParams::default(),
        &Patch::Merge(&patch),
    )
    .await
}

/// Upstream's `slowStartBatch`: runs `count` calls of `f` in batches of 1, 2, 4, ...
/// (each batch concurrently), stopping after the first batch with a failure, so a
/// create that fails (quota, admission, a bad template) fails once instead of `count`
/// times. Returns the successes and the first error.
pub async fn slow_start_batch<T, E, F, Fut>(count: usize, mut f: F) -> (Vec<T>, Option<E>)
where
    F: FnMut(usize) -> Fut,
    Fut: std::future::Future<Output = Result<T, E>>,
{
    let mut done = Vec::new();
    let mut remaining = count;
    let mut batch = remaining.min(1);
    let mut index = 0;
    while batch > 0 {
        let results = join_all((index..index + batch).map(&mut f)).await;
        index += batch;
        let mut err = None;
        for r in results {
            match r {
                Ok(v) => done.push(v),
                Err(e) => {
                    err.get_or_insert(e);
                }
            }
        }
        if err.is_some() {
            return (done, err);
        }
        remaining -= batch;
        batch = remaining.min(batch * 2);
    }
    (done, None)
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    fn meta(labels: &[(&str, &str)], controller: Option<&str>) -> ObjectMeta {
        ObjectMeta {
            labels: Some(
                labels
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            ),
            owner_references: controller.map(|uid| {
                vec![OwnerReference {
                    uid: uid.into(),
                    controller: Some(true),
                    ..Default::default()
                }]
            }),
            ..Default::default()
        }
    }

    fn app(v: &str) -> LabelSelector {
        LabelSelector {
            match_labels: Some([("app".to_string(), v.to_string())].into()),
            ..Default::default()
        }
    }

    #[test]
    fn claims() {
        let sel = app("web");
        let s = Some(&sel);
        assert_eq!(
            claim("me", false, s, &meta(&[("app", "web")], Some("me"))),
            Claim::Owned
        );
        assert_eq!(
            claim("me", false, s, &meta(&[("app", "web")], None)),
            Claim::Adopt
        );
        assert_eq!(
            claim("me", false, s, &meta(&[("app", "db")], Some("me"))),
            Claim::Release
        );
        assert_eq!(
            claim("me", false, s, &meta(&[("app", "web")], Some("other"))),
            Claim::Ignore
        );
        assert_eq!(
            claim("me", false, s, &meta(&[("app", "db")], None)),
            Claim::Ignore
        );
        assert_eq!(
            claim("me", true, s, &meta(&[("app", "web")], None)),
            Claim::Ignore
        );
        assert_eq!(
            claim("me", true, s, &meta(&[("app", "db")], Some("me"))),
            Claim::Ignore
        );
        assert_eq!(
            claim("me", false, None, &meta(&[("app", "web")], None)),
            Claim::Ignore
        );
        let empty = LabelSelector::default();
        assert_eq!(
            claim("me", false, Some(&empty), &meta(&[("app", "web")], None)),
            Claim::Ignore,
            "an empty selector adopts nothing"
        );
        let mut deleting = meta(&[("app", "web")], None);
        deleting.deletion_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
            k8s_openapi::jiff::Timestamp::UNIX_EPOCH,
        ));
        assert_eq!(claim("me", false, s, &deleting), Claim::Ignore);
    }

    #[tokio::test]
    async fn slow_start_grows_and_stops_at_the_first_failing_batch() {
        let calls = Arc::new(Mutex::new(Vec::new()));
        let c = calls.clone();
        let (ok, err) = slow_start_batch(10, |i| {
            let c = c.clone();
            async move {
                c.lock().unwrap().push(i);
                if i == 4 {
                    Err("boom")
                } else {
                    Ok(i)
                }
            }
        })
        .await;
        // Batches 1 (0), 2 (1,2), 4 (3..=6): the third fails, nothing after it runs.
        assert_eq!(calls.lock().unwrap().len(), 7);
        assert_eq!(ok.len(), 6);
        assert_eq!(err, Some("boom"));
        let (ok, err) = slow_start_batch(10, |i| async move { Ok::<_, ()>(i) }).await;
        assert_eq!((ok.len(), err), (10, None));
        let (ok, err) = slow_start_batch(0, |i| async move { Ok::<_, ()>(i) }).await;
        assert_eq!((ok.len(), err), (0, None));
    }
}
