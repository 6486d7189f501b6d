//! Which pods each Service selects, kept up to date from the watch events, so a sync reads
//! its Service's members instead of scanning every pod, and a pod event matches only the
//! Services of its namespace (upstream lists both per namespace from its informer
//! indexes: `podLister.Pods(ns).List(selector)` and `GetPodServiceMemberships`).
//!
//! The index keeps its own copy of what matching reads (each pod's labels, each Service's
//! selector), updated only from the events it is handed, under one lock. It therefore never
//! depends on when a reflector's cache catches up (kube-rs swaps a relisted cache in only
//! at `InitDone`): whichever of a pod's and a Service's change arrives second is matched
//! against the other's newest state.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use super::pods::selector_matches;

/// A namespace and a name.
pub type Key = (String, String);

type Labels = BTreeMap<String, String>;

#[derive(Debug, Default)]
pub struct Membership {
    by_pod: HashMap<Key, BTreeSet<String>>,
    by_service: HashMap<Key, BTreeSet<String>>,
    /// Namespace → pod name → its labels.
    pods: HashMap<String, BTreeMap<String, Labels>>,
    /// Namespace → Service name → its selector (None: selects nothing).
    services: HashMap<String, BTreeMap<String, Option<Labels>>>,
}

fn remove_from(map: &mut HashMap<Key, BTreeSet<String>>, key: &Key, item: &str) {
    if let Some(set) = map.get_mut(key) {
        set.remove(item);
        if set.is_empty() {
            map.remove(key);
        }
    }
}

fn remove_name<V>(map: &mut HashMap<String, BTreeMap<String, V>>, ns: &str, name: &str) {
    if let Some(names) = map.get_mut(ns) {
        names.remove(name);
        if names.is_empty() {
            map.remove(ns);
        }
    }
}

impl Membership {
    /// A pod was added or changed: matches its labels against the Services of its
    /// namespace. Returns (the Services selecting it now, those that did before).
    pub fn pod_changed(
        &mut self,
        pod: &Key,
        labels: Labels,
    ) -> (BTreeSet<String>, BTreeSet<String>) {
        if self.pods.get(&pod.0).and_then(|m| m.get(&pod.1)) == Some(&labels) {
            // Same labels (a status update, most pod events): its memberships are what
            // the Services' own changes kept current, no selector to match again (that
            // is every Service of the namespace per event, 1000 in the benchmark).
            let now = self.by_pod.get(pod).cloned().unwrap_or_default();
            return (now.clone(), now);
        }
        let now: BTreeSet<String> = self
            .services
            .get(&pod.0)
            .into_iter()
            .flatten()
            .filter(|(_, sel)| {
                sel.as_ref()
                    .is_some_and(|s| selector_matches(s, Some(&labels)))
            })
            .map(|(name, _)| name.clone())
            .collect();
        self.pods
            .entry(pod.0.clone())
            .or_default()
            .insert(pod.1.clone(), labels);
        let before = self.set_pod(pod, now.clone());
        (now, before)
    }

    /// Forgets a deleted pod; returns the Services it was selected by.
    pub fn pod_deleted(&mut self, pod: &Key) -> BTreeSet<String> {
        remove_name(&mut self.pods, &pod.0, &pod.1);
        self.set_pod(pod, BTreeSet::new())
    }

    fn set_pod(&mut self, pod: &Key, services: BTreeSet<String>) -> BTreeSet<String> {
        let before = self.by_pod.remove(pod).unwrap_or_default();
        for svc in before.difference(&services) {
            remove_from(&mut self.by_service, &(pod.0.clone(), svc.clone()), &pod.1);
        }
        for svc in services.difference(&before) {
            self.by_service
                .entry((pod.0.clone(), svc.clone()))
                .or_default()
                .insert(pod.1.clone());
        }
        if !services.is_empty() {
            self.by_pod.insert(pod.clone(), services);
        }
        before
    }

    /// A Service was added or changed: matches its selector against the pods of its
    /// namespace (None, no selector: it selects nothing).
    pub fn service_changed(&mut self, svc: &Key, selector: Option<Labels>) {
        let members: BTreeSet<String> = match &selector {
            None => BTreeSet::new(),
            Some(sel) => self
                .pods
                .get(&svc.0)
                .into_iter()
                .flatten()
                .filter(|(_, labels)| selector_matches(sel, Some(labels)))
                .map(|(name, _)| name.clone())
                .collect(),
        };
        self.services
            .entry(svc.0.clone())
            .or_default()
            .insert(svc.1.clone(), selector);
        self.set_service(svc, members);
    }

    /// Forgets a deleted Service.
    pub fn service_deleted(&mut self, svc: &Key) {
        remove_name(&mut self.services, &svc.0, &svc.1);
        self.set_service(svc, BTreeSet::new());
    }

    fn set_service(&mut self, svc: &Key, pods: BTreeSet<String>) {
        let before = self.by_service.remove(svc).unwrap_or_default();
        for p in before.difference(&pods) {
            remove_from(&mut self.by_pod, &(svc.0.clone(), p.clone()), &svc.1);
        }
        for p in pods.difference(&before) {
            self.by_pod
                .entry((svc.0.clone(), p.clone()))
                .or_default()
                .insert(svc.1.clone());
        }
        if !pods.is_empty() {
            self.by_service.insert(svc.clone(), pods);
        }
    }

    /// The pods `svc` selects.
    pub fn members(&self, svc: &Key) -> Vec<String> {
        self.by_service
            .get(svc)
            .map(|s| s.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// Every pod key known (for a relist's "which vanished").
    pub fn pod_keys(&self) -> Vec<Key> {
        self.pods
            .iter()
            .flat_map(|(ns, names)| names.keys().map(move |n| (ns.clone(), n.clone())))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn k(ns: &str, n: &str) -> Key {
        (ns.into(), n.into())
    }

    fn set(items: &[&str]) -> BTreeSet<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    fn labels(kv: &[(&str, &str)]) -> Labels {
        kv.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn pods_are_matched_against_their_namespaces_services() {
        let mut m = Membership::default();
        m.service_changed(&k("a", "web"), Some(labels(&[("app", "web")])));
        m.service_changed(&k("a", "all"), Some(labels(&[])));
        m.service_changed(&k("a", "manual"), None);
        m.service_changed(&k("b", "web"), Some(labels(&[("app", "web")])));
        let web = labels(&[("app", "web"), ("tier", "x")]);
        assert_eq!(
            m.pod_changed(&k("a", "p1"), web.clone()),
            (set(&["all", "web"]), set(&[]))
        );
        m.pod_changed(&k("a", "p2"), labels(&[("app", "db")]));
        m.pod_changed(&k("b", "p1"), web);
        assert_eq!(m.members(&k("a", "web")), vec!["p1"]);
        assert_eq!(
            m.members(&k("a", "all")),
            vec!["p1", "p2"],
            "empty selector: all"
        );
        assert!(m.members(&k("a", "manual")).is_empty(), "no selector: none");
        assert_eq!(m.members(&k("b", "web")), vec!["p1"], "namespaces apart");
        // Relabelled: leaves web, and the caller learns it was there.
        assert_eq!(
            m.pod_changed(&k("a", "p1"), labels(&[("app", "db")])),
            (set(&["all"]), set(&["all", "web"]))
        );
        assert!(m.members(&k("a", "web")).is_empty());
        // Same labels again (a status update): the same Services, now and before.
        assert_eq!(
            m.pod_changed(&k("a", "p1"), labels(&[("app", "db")])),
            (set(&["all"]), set(&["all"]))
        );
        assert_eq!(m.pod_deleted(&k("a", "p2")), set(&["all"]));
        assert_eq!(m.members(&k("a", "all")), vec!["p1"]);
        assert_eq!(m.pod_keys().len(), 2);
    }

    #[test]
    fn a_service_change_rematches_the_pods_it_knows() {
        let mut m = Membership::default();
        // Pods seen before any Service (the order a relist can produce).
        m.pod_changed(&k("a", "p1"), labels(&[("app", "web")]));
        m.pod_changed(&k("a", "p2"), labels(&[("app", "db")]));
        m.service_changed(&k("a", "svc"), Some(labels(&[("app", "web")])));
        assert_eq!(m.members(&k("a", "svc")), vec!["p1"]);
        // The selector changed: now p2 only; p1's side follows.
        m.service_changed(&k("a", "svc"), Some(labels(&[("app", "db")])));
        assert_eq!(m.members(&k("a", "svc")), vec!["p2"]);
        assert_eq!(
            m.pod_changed(&k("a", "p2"), labels(&[("app", "db")])),
            (set(&["svc"]), set(&["svc"])),
            "a status update of p2 sees the new selector's membership"
        );
        assert_eq!(
            m.pod_changed(&k("a", "p1"), labels(&[("app", "web")])),
            (set(&[]), set(&[])),
            "p1 no longer counted in svc"
        );
        // The selector removed: selects nothing.
        m.service_changed(&k("a", "svc"), None);
        assert!(m.members(&k("a", "svc")).is_empty());
        m.service_changed(&k("a", "svc"), Some(labels(&[("app", "db")])));
        m.service_deleted(&k("a", "svc"));
        assert!(m.members(&k("a", "svc")).is_empty());
        assert_eq!(
            m.pod_changed(&k("a", "p2"), labels(&[("app", "db")])),
            (set(&[]), set(&[])),
            "the deleted Service left the pod's side too, and matches no more"
        );
    }
}
