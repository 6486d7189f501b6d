//! The scheduler cache: every node with the running totals of the pods bound to it, plus
//! the pods this scheduler *assumed* onto a node before the API confirmed the binding
//! (upstream's `AssumePod`), so the next decision already accounts for them. An assumed
//! pod is confirmed when the watch shows it bound, forgotten when its binding fails.

use std::{collections::HashMap, sync::Arc};

use k8s_openapi::api::core::v1::Node;

use crate::info::{NodeInfo, PodInfo};

#[derive(Debug)]
struct CachedPod {
    node: String,
    assumed: bool,
}

/// What a Node event changed, for the queue's "move unschedulable pods" decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeChange {
    Added,
    /// Labels, taints, unschedulable or allocatable changed: a pod rejected before may fit.
    SchedulingRelevant,
    /// Only status noise (heartbeats, conditions, images).
    Irrelevant,
}

#[derive(Debug, Default)]
pub struct Cache {
    nodes: Vec<NodeInfo>,
    index: HashMap<String, usize>,
    pods: HashMap<String, CachedPod>,
    live: usize,
}

fn relevant_differs(a: &Node, b: &Node) -> bool {
    let spec = |n: &Node| {
        n.spec
            .as_ref()
            .map(|s| (s.taints.clone(), s.unschedulable.unwrap_or(false)))
    };
    a.metadata.labels != b.metadata.labels
        || spec(a) != spec(b)
        || a.status.as_ref().and_then(|s| s.allocatable.as_ref())
            != b.status.as_ref().and_then(|s| s.allocatable.as_ref())
}

impl Cache {
    pub fn new() -> Cache {
        Cache::default()
    }

    /// Every entry, including placeholders of nodes only pods name (`node` is None).
    pub fn nodes(&self) -> &[NodeInfo] {
        &self.nodes
    }

    /// Nodes with a Node object: the candidates.
    pub fn live_nodes(&self) -> usize {
        self.live
    }

    pub fn node(&self, name: &str) -> Option<&NodeInfo> {
        self.index.get(name).map(|i| &self.nodes[*i])
    }

    fn entry(&mut self, name: &str) -> &mut NodeInfo {
        let i = match self.index.get(name) {
            Some(i) => *i,
            None => {
                self.nodes.push(NodeInfo::new(name));
                self.index.insert(name.to_string(), self.nodes.len() - 1);
                self.nodes.len() - 1
            }
        };
        &mut self.nodes[i]
    }

    pub fn upsert_node(&mut self, node: Node) -> NodeChange {
        let name = node.metadata.name.clone().unwrap_or_default();
        let e = self.entry(&name);
        let change = match e.node.as_deref() {
            None => NodeChange::Added,
            Some(old) if relevant_differs(old, &node) => NodeChange::SchedulingRelevant,
            Some(_) => NodeChange::Irrelevant,
        };
        e.set_node(Arc::new(node));
        if change == NodeChange::Added {
            self.live += 1;
        }
        change
    }

    pub fn remove_node(&mut self, name: &str) {
        let Some(&i) = self.index.get(name) else {
            return;
        };
        if self.nodes[i].node.take().is_some() {
            self.live -= 1;
        }
        if self.nodes[i].pods.is_empty() {
            self.drop_entry(i);
        }
    }

    fn drop_entry(&mut self, i: usize) {
        let gone = self.nodes.swap_remove(i);
        self.index.remove(&gone.name);
        if i < self.nodes.len() {
            self.index.insert(self.nodes[i].name.clone(), i);
        }
    }

    pub fn is_assumed(&self, key: &str) -> bool {
        self.pods.get(key).is_some_and(|p| p.assumed)
    }

    pub fn contains_pod(&self, key: &str) -> bool {
        self.pods.contains_key(key)
    }

    pub fn pod_keys(&self) -> Vec<String> {
        self.pods.keys().cloned().collect()
    }

    /// Names of the nodes with a Node object.
    pub fn node_names(&self) -> Vec<String> {
        self.nodes
            .iter()
            .filter(|n| n.node.is_some())
            .map(|n| n.name.clone())
            .collect()
    }

    pub fn pod_count(&self) -> usize {
        self.pods.len()
    }

    /// Counts `pod` on `node` before the binding is confirmed.
    pub fn assume(&mut self, pod: Arc<PodInfo>, node: &str) {
        self.remove_pod(&pod.key);
        self.pods.insert(
            pod.key.clone(),
            CachedPod {
                node: node.to_string(),
                assumed: true,
            },
        );
        self.entry(node).add_pod(pod);
    }

    /// Undoes [`Cache::assume`] after a failed binding (no-op for confirmed pods).
    pub fn forget(&mut self, key: &str) {
        if self.is_assumed(key) {
            self.remove_pod(key);
        }
    }

    /// A pod the API shows bound to a node (confirms an assumed one). Returns true when a
    /// bound pod moved or changed what it holds (rare; in-place updates).
    pub fn add_or_update_pod(&mut self, pod: Arc<PodInfo>) {
        let Some(node) = pod.node_name().map(str::to_string) else {
            return;
        };
        self.remove_pod(&pod.key);
        self.pods.insert(
            pod.key.clone(),
            CachedPod {
                node: node.clone(),
                assumed: false,
            },
        );
        self.entry(&node).add_pod(pod);
    }

    /// Removes a pod (deleted, finished, or forgotten); true if it was cached.
    pub fn remove_pod(&mut self, key: &str) -> bool {
        let Some(p) = self.pods.remove(key) else {
            return false;
        };
        if let Some(&i) = self.index.get(&p.node) {
            self.nodes[i].remove_pod(key);
            if self.nodes[i].node.is_none() && self.nodes[i].pods.is_empty() {
                self.drop_entry(i);
            }
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::info::testutil::*;

    fn bound(name: &str, node: &str, cpu: &str) -> Arc<PodInfo> {
        let mut p = pod(name, Some(cpu), None);
        p.spec.as_mut().unwrap().node_name = Some(node.into());
        Arc::new(PodInfo::new(p))
    }

    #[test]
    fn assume_confirm_forget() {
        let mut c = Cache::new();
        assert_eq!(
            c.upsert_node(node("n1", "4", "8Gi", "110")),
            NodeChange::Added
        );
        assert_eq!(
            c.upsert_node(node("n1", "4", "8Gi", "110")),
            NodeChange::Irrelevant
        );
        assert_eq!(
            c.upsert_node(with_labels(node("n1", "4", "8Gi", "110"), &[("x", "y")])),
            NodeChange::SchedulingRelevant
        );
        let p = Arc::new(PodInfo::new(pod("p", Some("1"), None)));
        c.assume(p.clone(), "n1");
        assert!(c.is_assumed("default/p"));
        assert_eq!(c.node("n1").unwrap().requested.milli_cpu, 1000);
        // The watch confirms it: still counted once.
        c.add_or_update_pod(bound("p", "n1", "1"));
        assert!(!c.is_assumed("default/p"));
        assert_eq!(c.node("n1").unwrap().requested.milli_cpu, 1000);
        // Forget only undoes assumed pods.
        c.forget("default/p");
        assert_eq!(c.node("n1").unwrap().pods.len(), 1);
        let q = Arc::new(PodInfo::new(pod("q", Some("2"), None)));
        c.assume(q, "n1");
        c.forget("default/q");
        assert_eq!(c.node("n1").unwrap().requested.milli_cpu, 1000);
        assert!(c.remove_pod("default/p"));
        assert_eq!(c.node("n1").unwrap().requested.milli_cpu, 0);
    }

    #[test]
    fn pods_on_unknown_nodes_make_placeholders() {
        let mut c = Cache::new();
        c.add_or_update_pod(bound("p", "ghost", "1"));
        assert_eq!(c.live_nodes(), 0);
        assert_eq!(c.nodes().len(), 1);
        assert_eq!(
            c.upsert_node(node("ghost", "4", "8Gi", "110")),
            NodeChange::Added
        );
        assert_eq!(
            c.node("ghost").unwrap().requested.milli_cpu,
            1000,
            "kept across"
        );
        c.remove_node("ghost");
        assert_eq!(c.live_nodes(), 0);
        assert_eq!(c.nodes().len(), 1, "placeholder stays while pods name it");
        c.remove_pod("default/p");
        assert!(c.nodes().is_empty());
        // Index stays consistent across swap_remove.
        for n in ["a", "b", "c"] {
            c.upsert_node(node(n, "1", "1Gi", "1"));
        }
        c.remove_node("a");
        assert_eq!(c.node("c").unwrap().name, "c");
        assert_eq!(c.node("b").unwrap().name, "b");
        assert_eq!(c.live_nodes(), 2);
    }
}
