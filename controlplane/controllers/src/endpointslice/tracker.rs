//! Planning from watch caches instead of a LIST per sync, made safe the way upstream does
//! it (`pkg/controller/endpointslice/endpointslice_tracker.go`): the controller remembers
//! the generation of every object it wrote, and a sync whose cache does not show those
//! writes yet (a slice created a moment ago missing, an older generation, a deleted slice
//! still present) plans nothing — the watch event that brings the cache up to date queues
//! the Service again. Without that, a sync racing its own previous write would create a
//! second slice for the same endpoints (creates use `generateName`). Updates carry the
//! cached `resourceVersion`, so any other staleness ends in a 409 and a retry.
//!
//! [`SliceCache`] is the managed slices grouped by Service, fed from the slice watch, so a
//! sync finds its Service's slices without scanning every slice.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::ResourceExt as _;

use super::index::Key;
use super::slices::LABEL_SERVICE_NAME;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    /// We wrote this generation (or a later one must show).
    Generation(i64),
    /// We deleted it.
    Deleted,
}

/// Per Service: object uid → what the cache must show for our last write to it.
#[derive(Debug, Default)]
pub struct Tracker {
    services: HashMap<Key, HashMap<String, Expect>>,
}

/// What the staleness check needs of a cached object.
pub struct Seen<'a> {
    pub uid: &'a str,
    pub generation: i64,
    pub terminating: bool,
}

impl<'a> Seen<'a> {
    pub fn of(meta: &'a k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> Seen<'a> {
        Seen {
            uid: meta.uid.as_deref().unwrap_or(""),
            generation: meta.generation.unwrap_or(0),
            terminating: meta.deletion_timestamp.is_some(),
        }
    }
}

impl Tracker {
    /// We created or updated an object of `svc`; `meta` is what the API returned.
    pub fn written(
        &mut self,
        svc: &Key,
        meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
    ) {
        let Some(uid) = meta.uid.clone() else {
            return;
        };
        self.services
            .entry(svc.clone())
            .or_default()
            .insert(uid, Expect::Generation(meta.generation.unwrap_or(0)));
    }

    /// We deleted the object with `uid`.
    pub fn deleted(&mut self, svc: &Key, uid: &str) {
        self.services
            .entry(svc.clone())
            .or_default()
            .insert(uid.to_string(), Expect::Deleted);
    }

    /// The watch reported the object gone: nothing more to expect of it.
    pub fn observed_deletion(&mut self, svc: &Key, uid: &str) {
        if let Some(m) = self.services.get_mut(svc) {
            m.remove(uid);
            if m.is_empty() {
                self.services.remove(svc);
            }
        }
    }

    /// After a relist (which reports no deletions): forgets objects not in it.
    pub fn retain_present(&mut self, present: &std::collections::HashSet<String>) {
        for m in self.services.values_mut() {
            m.retain(|uid, _| present.contains(uid));
        }
        self.services.retain(|_, m| !m.is_empty());
    }

    pub fn forget_service(&mut self, svc: &Key) {
        self.services.remove(svc);
    }

    /// Whether the cached objects of `svc` miss one of our writes (upstream's
    /// `StaleSlices`): an object we wrote that is absent or at an older generation, or one
    /// we deleted that is still there (unless already terminating).
    pub fn stale(&self, svc: &Key, cached: &[Seen<'_>]) -> bool {
        let Some(expected) = self.services.get(svc) else {
            return false;
        };
        for o in cached {
            match expected.get(o.uid) {
                Some(Expect::Generation(g)) if o.generation < *g => return true,
                Some(Expect::Deleted) if !o.terminating => return true,
                _ => {}
            }
        }
        expected.iter().any(|(uid, e)| {
            matches!(e, Expect::Generation(_)) && !cached.iter().any(|o| o.uid == uid)
        })
    }
}

/// The managed slices, by Service, as the slice watch last showed them.
#[derive(Debug, Default)]
pub struct SliceCache {
    by_service: HashMap<Key, BTreeMap<String, Arc<EndpointSlice>>>,
    /// Slice (namespace, name) → the Service label it was filed under.
    owner: HashMap<Key, Key>,
    /// A relist in progress: its slices, swapped in at its end.
    relist: Option<Vec<Arc<EndpointSlice>>>,
}

fn service_of(sl: &EndpointSlice) -> Option<Key> {
    Some((
        sl.namespace().unwrap_or_default(),
        sl.labels().get(LABEL_SERVICE_NAME)?.clone(),
    ))
}

impl SliceCache {
    /// A slice was added or changed. Returns the Services to sync: its own, and the one
    /// it was filed under before if its label changed.
    pub fn apply(&mut self, sl: EndpointSlice) -> Vec<Key> {
        let key = (sl.namespace().unwrap_or_default(), sl.name_any());
        let mut touched = Vec::new();
        if let Some(old) = self.remove(&key) {
            touched.push(old);
        }
        if let Some(svc) = service_of(&sl) {
            self.by_service
                .entry(svc.clone())
                .or_default()
                .insert(key.1.clone(), Arc::new(sl));
            self.owner.insert(key, svc.clone());
            if !touched.contains(&svc) {
                touched.push(svc);
            }
        }
        touched
    }

    /// A slice was deleted; returns the Service it belonged to.
    pub fn delete(&mut self, sl: &EndpointSlice) -> Option<Key> {
        self.remove(&(sl.namespace().unwrap_or_default(), sl.name_any()))
    }

    fn remove(&mut self, key: &Key) -> Option<Key> {
        let svc = self.owner.remove(key)?;
        if let Some(m) = self.by_service.get_mut(&svc) {
            m.remove(&key.1);
            if m.is_empty() {
                self.by_service.remove(&svc);
            }
        }
        Some(svc)
    }

    pub fn relist_started(&mut self) {
        self.relist = Some(Vec::new());
    }

    pub fn relist_item(&mut self, sl: EndpointSlice) {
        self.relist.get_or_insert_with(Vec::new).push(Arc::new(sl));
    }

    /// The relist is complete: it replaces the cache. Returns the Services whose slices
    /// differ from before (one appeared, vanished — deletions were not reported — or has
    /// another resourceVersion); a relist that shows what the cache held syncs nothing.
    pub fn relist_done(&mut self) -> Vec<Key> {
        let items = self.relist.take().unwrap_or_default();
        let before = std::mem::take(&mut self.by_service);
        self.owner.clear();
        for sl in items {
            self.apply(Arc::unwrap_or_clone(sl));
        }
        let versions = |m: &BTreeMap<String, Arc<EndpointSlice>>| -> Vec<(String, Option<String>)> {
            m.iter()
                .map(|(n, sl)| (n.clone(), sl.metadata.resource_version.clone()))
                .collect()
        };
        let mut touched: Vec<Key> = before
            .keys()
            .chain(self.by_service.keys())
            .filter(|k| before.get(*k).map(versions) != self.by_service.get(*k).map(versions))
            .cloned()
            .collect();
        touched.sort();
        touched.dedup();
        touched
    }

    /// The uids of every cached slice.
    pub fn uids(&self) -> std::collections::HashSet<String> {
        self.by_service
            .values()
            .flat_map(|m| m.values())
            .filter_map(|sl| sl.metadata.uid.clone())
            .collect()
    }

    /// The slices filed under `svc`.
    pub fn slices_of(&self, svc: &Key) -> Vec<Arc<EndpointSlice>> {
        self.by_service
            .get(svc)
            .map(|m| m.values().cloned().collect())
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    fn k(ns: &str, n: &str) -> Key {
        (ns.into(), n.into())
    }

    fn meta(uid: &str, generation: i64) -> ObjectMeta {
        ObjectMeta {
            uid: Some(uid.into()),
            generation: Some(generation),
            ..Default::default()
        }
    }

    fn seen(uid: &str, generation: i64) -> Seen<'_> {
        Seen {
            uid,
            generation,
            terminating: false,
        }
    }

    #[test]
    fn a_cache_missing_our_writes_is_stale() {
        let mut t = Tracker::default();
        let svc = k("a", "web");
        assert!(
            !t.stale(&svc, &[seen("x", 1)]),
            "nothing written: never stale"
        );
        t.written(&svc, &meta("s1", 1));
        assert!(t.stale(&svc, &[]), "created, not in the cache yet");
        assert!(!t.stale(&svc, &[seen("s1", 1)]));
        t.written(&svc, &meta("s1", 2));
        assert!(t.stale(&svc, &[seen("s1", 1)]), "older generation cached");
        assert!(
            !t.stale(&svc, &[seen("s1", 3)]),
            "someone wrote after us: fine"
        );
        t.deleted(&svc, "s1");
        assert!(t.stale(&svc, &[seen("s1", 2)]), "deleted, still cached");
        assert!(
            !t.stale(
                &svc,
                &[Seen {
                    uid: "s1",
                    generation: 2,
                    terminating: true
                }]
            ),
            "terminating counts as deleted"
        );
        assert!(!t.stale(&svc, &[]), "deleted and gone");
        t.observed_deletion(&svc, "s1");
        assert!(
            !t.stale(&svc, &[seen("s1", 1)]),
            "forgotten after the watch saw it go"
        );
        t.written(&svc, &meta("s2", 1));
        assert!(!t.stale(&k("a", "other"), &[]), "per Service");
        t.retain_present(&["s3".to_string()].into());
        assert!(!t.stale(&svc, &[]), "a relist without s2 forgets it");
        t.written(&svc, &meta("s2", 1));
        t.forget_service(&svc);
        assert!(!t.stale(&svc, &[]));
    }

    fn slice(name: &str, svc: Option<&str>) -> EndpointSlice {
        let mut labels = std::collections::BTreeMap::new();
        if let Some(s) = svc {
            labels.insert(LABEL_SERVICE_NAME.to_string(), s.to_string());
        }
        EndpointSlice {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some("a".into()),
                labels: Some(labels),
                ..Default::default()
            },
            address_type: "IPv4".into(),
            endpoints: vec![],
            ports: None,
        }
    }

    fn names(c: &SliceCache, svc: &Key) -> Vec<String> {
        let mut v: Vec<String> = c.slices_of(svc).iter().map(|s| s.name_any()).collect();
        v.sort();
        v
    }

    #[test]
    fn slices_are_filed_by_service_and_follow_relabels_and_relists() {
        let mut c = SliceCache::default();
        assert_eq!(c.apply(slice("web-1", Some("web"))), vec![k("a", "web")]);
        c.apply(slice("web-2", Some("web")));
        c.apply(slice("db-1", Some("db")));
        assert!(c.apply(slice("stray", None)).is_empty());
        assert_eq!(names(&c, &k("a", "web")), vec!["web-1", "web-2"]);
        // Relabelled: leaves web for db; both Services need a sync.
        assert_eq!(
            c.apply(slice("web-2", Some("db"))),
            vec![k("a", "web"), k("a", "db")]
        );
        assert_eq!(names(&c, &k("a", "db")), vec!["db-1", "web-2"]);
        assert_eq!(c.delete(&slice("web-1", Some("web"))), Some(k("a", "web")));
        assert!(c.slices_of(&k("a", "web")).is_empty());
        // A relist without db-1: db is reported (its slice vanished), the new one too.
        c.relist_started();
        c.relist_item(slice("web-2", Some("db")));
        c.relist_item(slice("api-1", Some("api")));
        assert_eq!(
            names(&c, &k("a", "db")),
            vec!["db-1", "web-2"],
            "old until done"
        );
        assert_eq!(c.relist_done(), vec![k("a", "api"), k("a", "db")]);
        assert_eq!(names(&c, &k("a", "db")), vec!["web-2"]);
        assert_eq!(names(&c, &k("a", "api")), vec!["api-1"]);
        // A relist showing exactly what the cache holds touches nothing (a lost watch
        // must not resync every Service); a new resourceVersion touches its Service.
        c.relist_started();
        c.relist_item(slice("web-2", Some("db")));
        c.relist_item(slice("api-1", Some("api")));
        assert!(c.relist_done().is_empty());
        let mut newer = slice("api-1", Some("api"));
        newer.metadata.resource_version = Some("7".into());
        c.relist_started();
        c.relist_item(slice("web-2", Some("db")));
        c.relist_item(newer);
        assert_eq!(c.relist_done(), vec![k("a", "api")]);
    }
}
