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

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
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
    pub fn of(meta: &'a ObjectMeta) -> Seen<'a> {
        Seen {
            uid: meta.uid.as_deref().unwrap_or(""),
            generation: meta.generation.unwrap_or(0),
            terminating: meta.deletion_timestamp.is_some(),
        }
    }
}

impl Tracker {
    /// We created or updated an object of `svc`; `meta` is what the API returned.
    pub fn written(&mut self, svc: &Key, meta: &ObjectMeta) {
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

    /// The watch reported the object gone: nothing more to expect of it. Returns whether
    /// the deletion needs a sync (upstream's `HandleDeletion`): not when it is the echo of
    /// our own delete, yes when someone else deleted an object of ours (it is put back).
    pub fn observed_deletion(&mut self, svc: &Key, uid: &str) -> bool {
        let Some(m) = self.services.get_mut(svc) else {
            return true;
        };
        let expected = m.remove(uid);
        if m.is_empty() {
            self.services.remove(svc);
        }
        expected != Some(Expect::Deleted)
    }

    /// Whether a watch event showing the object `uid` of `svc` at `generation` needs a
    /// sync (upstream's `EndpointSliceTracker.ShouldSync`): not when it is the echo of
    /// our own write (the generation we wrote, or an older one still in flight), yes for
    /// an object we never wrote or a later generation (someone else changed it).
    pub fn should_sync(&self, svc: &Key, uid: &str, generation: i64) -> bool {
        match self.services.get(svc).and_then(|m| m.get(uid)) {
            Some(Expect::Generation(g)) => generation > *g,
            // We deleted it and it shows again: not our doing.
            Some(Expect::Deleted) | None => true,
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

/// Our own slice and Endpoints writes, and what their watch events mean: the echo of our
/// own write queues nothing (upstream's `ShouldSync` / `HandleDeletion`; without it the
/// controller syncs every Service once more per object it wrote), anything else about a
/// managed object queues its Service, and so does the next event of a Service whose sync
/// found the caches behind our writes and is waiting for them ([`OwnWrites::defer`]).
#[derive(Debug, Default)]
pub struct OwnWrites {
    pub slices: Tracker,
    pub endpoints: Tracker,
    deferred: HashSet<Key>,
}

impl OwnWrites {
    /// A slice watch event applied `sl` to `cache`: the Services to queue.
    pub fn slice_applied(&mut self, cache: &mut SliceCache, sl: EndpointSlice) -> Vec<Key> {
        let svc = service_of(&sl);
        let uid = sl.metadata.uid.clone().unwrap_or_default();
        let generation = sl.metadata.generation.unwrap_or(0);
        let touched = cache.apply(sl);
        match svc {
            // Still filed under the same Service: a sync unless it is our echo.
            Some(svc) if touched == [svc.clone()] => {
                let needed = self.slices.should_sync(&svc, &uid, generation);
                self.wanted(svc, needed).into_iter().collect()
            }
            // Relabelled, or its Service label removed: both Services, always.
            _ => {
                for k in &touched {
                    self.deferred.remove(k);
                }
                touched
            }
        }
    }

    /// A slice watch event deleted `sl` from `cache`: the Services to queue.
    pub fn slice_deleted(&mut self, cache: &mut SliceCache, sl: &EndpointSlice) -> Vec<Key> {
        let Some(svc) = cache.delete(sl) else {
            return Vec::new();
        };
        let needed = match sl.metadata.uid.as_deref() {
            Some(uid) => self.slices.observed_deletion(&svc, uid),
            None => true,
        };
        self.wanted(svc, needed).into_iter().collect()
    }

    /// An Endpoints watch event for `svc` (already in the Endpoints cache): whether it
    /// queues the Service.
    pub fn endpoints_event(&mut self, svc: &Key, meta: &ObjectMeta, deleted: bool) -> bool {
        let uid = meta.uid.as_deref();
        let needed = match (uid, deleted) {
            (Some(uid), true) => self.endpoints.observed_deletion(svc, uid),
            (Some(uid), false) => {
                self.endpoints
                    .should_sync(svc, uid, meta.generation.unwrap_or(0))
            }
            (None, _) => true,
        };
        self.wanted(svc.clone(), needed).is_some()
    }

    /// A sync of `svc` found the caches behind our writes and planned nothing: its next
    /// slice or Endpoints event queues it, echo or not.
    pub fn defer(&mut self, svc: &Key) {
        self.deferred.insert(svc.clone());
    }

    /// Takes back [`Self::defer`] (the caches caught up before any event came).
    pub fn undefer(&mut self, svc: &Key) {
        self.deferred.remove(svc);
    }

    /// A relist ended: every deferred Service, its wait over. A relist reports objects
    /// without per-object events (the Endpoints handler sees none; the slice cache
    /// reports only Services whose slices differ), so the echo a deferred sync waits for
    /// may have come inside it: without this the Service would wait for an unrelated
    /// event. A sync still behind defers again.
    pub fn take_deferred(&mut self) -> Vec<Key> {
        let mut v: Vec<Key> = self.deferred.drain().collect();
        v.sort();
        v
    }

    /// Whether the cached slices and Endpoints of `svc` miss one of our writes.
    pub fn stale(&self, svc: &Key, slices: &[Seen<'_>], endpoints: &[Seen<'_>]) -> bool {
        self.slices.stale(svc, slices) || self.endpoints.stale(svc, endpoints)
    }

    /// `svc` if the event needs a sync or the Service waits for one (the wait ends here).
    fn wanted(&mut self, svc: Key, needed: bool) -> Option<Key> {
        let deferred = self.deferred.remove(&svc);
        (needed || deferred).then_some(svc)
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

/// The Service a managed slice is filed under (its `kubernetes.io/service-name` label).
pub fn service_of(sl: &EndpointSlice) -> Option<Key> {
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

    fn written_slice(name: &str, uid: &str, generation: i64) -> EndpointSlice {
        let mut sl = slice(name, Some("web"));
        sl.metadata.uid = Some(uid.into());
        sl.metadata.generation = Some(generation);
        sl
    }

    #[test]
    fn the_echo_of_our_own_slice_write_queues_nothing_a_foreign_edit_does() {
        let mut w = OwnWrites::default();
        let mut c = SliceCache::default();
        let web = k("a", "web");
        // We created web-1 (generation 1); its watch event is our echo.
        let ours = written_slice("web-1", "u1", 1);
        w.slices.written(&web, &ours.metadata);
        assert!(
            w.slice_applied(&mut c, ours.clone()).is_empty(),
            "own create"
        );
        // We updated it to generation 2: the echo (and a late echo of 1) queue nothing.
        let ours2 = written_slice("web-1", "u1", 2);
        w.slices.written(&web, &ours2.metadata);
        assert!(
            w.slice_applied(&mut c, ours.clone()).is_empty(),
            "late echo"
        );
        assert!(w.slice_applied(&mut c, ours2).is_empty(), "own update");
        assert_eq!(
            names(&c, &web),
            vec!["web-1"],
            "the cache follows all the same"
        );
        // Someone else edited our slice (the API server bumped its generation): resync.
        let foreign = written_slice("web-1", "u1", 3);
        assert_eq!(w.slice_applied(&mut c, foreign), vec![web.clone()]);
        // A slice we never wrote (another controller instance, a restart): resync.
        assert_eq!(
            w.slice_applied(&mut c, written_slice("web-2", "u2", 1)),
            vec![web.clone()]
        );
        // Relabelled by someone: both Services, whatever the generation.
        let mut moved = written_slice("web-2", "u2", 1);
        moved
            .metadata
            .labels
            .as_mut()
            .unwrap()
            .insert(LABEL_SERVICE_NAME.into(), "db".into());
        assert_eq!(
            w.slice_applied(&mut c, moved.clone()),
            vec![web.clone(), k("a", "db")]
        );
        // Our own delete's echo queues nothing; someone else's delete puts it back.
        w.slices.deleted(&k("a", "db"), "u2");
        assert!(w.slice_deleted(&mut c, &moved).is_empty(), "own delete");
        let sl = written_slice("web-1", "u1", 3);
        assert_eq!(w.slice_deleted(&mut c, &sl), vec![web.clone()]);
    }

    #[test]
    fn a_deferred_sync_is_queued_by_the_echo_it_waits_for() {
        let mut w = OwnWrites::default();
        let mut c = SliceCache::default();
        let web = k("a", "web");
        let ours = written_slice("web-1", "u1", 1);
        w.slices.written(&web, &ours.metadata);
        // The sync ran before the echo came: stale, it defers.
        assert!(w.stale(&web, &[], &[]));
        w.defer(&web);
        assert_eq!(w.slice_applied(&mut c, ours.clone()), vec![web.clone()]);
        // The wait ends with that event: the next echo is skipped again.
        let ours2 = written_slice("web-1", "u1", 2);
        w.slices.written(&web, &ours2.metadata);
        assert!(w.slice_applied(&mut c, ours2).is_empty());
        // Endpoints the same way: our echo nothing, a deferred echo or a foreign edit yes.
        let ep = meta("e1", 1);
        w.endpoints.written(&web, &ep);
        assert!(!w.endpoints_event(&web, &ep, false), "own Endpoints write");
        w.defer(&web);
        assert!(w.endpoints_event(&web, &ep, false), "deferred");
        assert!(!w.endpoints_event(&web, &ep, false), "deferral consumed");
        assert!(
            w.endpoints_event(&web, &meta("e1", 2), false),
            "foreign edit"
        );
        assert!(
            w.endpoints_event(&k("a", "db"), &meta("e2", 1), false),
            "never written by us"
        );
        w.endpoints.deleted(&web, "e1");
        assert!(!w.endpoints_event(&web, &ep, true), "own delete");
        assert!(
            w.endpoints_event(&k("a", "db"), &meta("e2", 1), true),
            "someone deleted it"
        );
        // A relist ends every wait (its objects come without per-object events).
        let ep4 = meta("e4", 1);
        w.endpoints.written(&web, &ep4);
        w.defer(&web);
        w.defer(&k("a", "db"));
        assert_eq!(w.take_deferred(), vec![k("a", "db"), web.clone()]);
        assert!(w.take_deferred().is_empty());
        assert!(
            !w.endpoints_event(&web, &ep4, false),
            "no longer deferred: the echo is skipped"
        );
        // undefer takes a deferral back: the echo is skipped again.
        let ep3 = meta("e3", 1);
        w.endpoints.written(&web, &ep3);
        w.defer(&web);
        w.undefer(&web);
        assert!(!w.endpoints_event(&web, &ep3, false));
    }
}
