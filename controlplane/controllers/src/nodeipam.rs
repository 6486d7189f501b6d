//! Node IPAM: upstream's range allocator (`pkg/controller/nodeipam/ipam/range_allocator.go`)
//! for one IPv4 `--cluster-cidr`. Each Node without `spec.podCIDR` gets the lowest free
//! `/--node-cidr-mask-size` block, written to `spec.podCIDR` and `spec.podCIDRs`.
//!
//! The allocations live in the Nodes: every sync derives the used blocks from all Nodes'
//! podCIDRs ([`allocate`], pure), so they are stable across restarts. An already-set
//! podCIDR is never changed (upstream makes it immutable once set). No block left → the
//! Node stays without one and gets a Warning Event `CIDRNotAvailable`; a deleted Node
//! frees its block and the waiting Nodes are retried. Syncs run one at a time.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use futures::StreamExt as _;
use k8s_openapi::api::core::v1::Node;
use kube::{
    api::{ListParams, Patch, PatchParams},
    runtime::{
        controller::{Action, Config as ControllerConfig},
        reflector::{ObjectRef, Store},
        watcher, Controller,
    },
    Api, ResourceExt as _,
};

use crate::{backoff::Backoff, cidr::Ipv4Cidr, events::EventType, Ctx};

/// Checks the flags as upstream's controller-manager does at start.
pub fn validate(cluster: &Ipv4Cidr, mask: u8) -> Result<(), String> {
    if mask > 32 {
        return Err(format!(
            "--node-cidr-mask-size {mask}: an IPv4 prefix is at most 32"
        ));
    }
    if mask < cluster.prefix() {
        return Err(format!(
            "--node-cidr-mask-size {mask} is shorter than --cluster-cidr {cluster}'s prefix: a node's block must fit inside the cluster CIDR"
        ));
    }
    if mask - cluster.prefix() > 16 {
        return Err(format!(
            "--node-cidr-mask-size {mask} splits --cluster-cidr {cluster} into more than 65536 blocks (the mask may be at most 16 bits longer than the cluster CIDR's)"
        ));
    }
    Ok(())
}

/// The IPv4 podCIDRs a Node has (either field).
pub fn node_cidrs(node: &Node) -> Vec<Ipv4Cidr> {
    let Some(spec) = node.spec.as_ref() else {
        return Vec::new();
    };
    spec.pod_cidr
        .iter()
        .chain(spec.pod_cidrs.iter().flatten())
        .filter_map(|c| c.parse::<Ipv4Cidr>().ok())
        .collect()
}

fn has_pod_cidr(node: &Node) -> bool {
    node.spec
        .as_ref()
        .is_some_and(|s| s.pod_cidr.as_deref().is_some_and(|c| !c.is_empty()))
}

/// The lowest `/mask` block of `cluster` overlapping none of `used`.
pub fn allocate(cluster: &Ipv4Cidr, mask: u8, used: &[Ipv4Cidr]) -> Option<Ipv4Cidr> {
    let count = cluster.subnet_count(mask)?;
    let mut taken: Vec<(u32, u32)> = used.iter().map(|c| (c.first(), c.last())).collect();
    taken.sort();
    (0..count)
        .filter_map(|i| cluster.subnet(mask, u32::try_from(i).ok()?))
        .find(|b| !taken.iter().any(|(s, e)| *s <= b.last() && b.first() <= *e))
}

struct State {
    ctx: Ctx,
    nodes: Store<Node>,
    backoff: Backoff,
    /// Blocks written but maybe not yet in the cache (node name → block).
    written: Mutex<HashMap<String, Ipv4Cidr>>,
    /// Nodes told about exhaustion (one Event each until it changes).
    reported: Mutex<HashMap<String, String>>,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("setting the podCIDR of Node {0}: {1}")]
    Write(String, #[source] kube::Error),
    #[error("listing Nodes: {0}")]
    List(#[source] kube::Error),
}

pub async fn run(ctx: Ctx) -> anyhow::Result<()> {
    let cluster = ctx.config.cluster_cidr;
    let mask = ctx.config.node_cidr_mask_size;
    validate(&cluster, mask).map_err(anyhow::Error::msg)?;
    let api: Api<Node> = Api::all(ctx.client.clone());
    let controller = Controller::new(api.clone(), watcher::Config::default())
        .with_config(ControllerConfig::default().concurrency(1));
    let nodes = controller.store();
    let state = Arc::new(State {
        ctx: ctx.clone(),
        nodes: nodes.clone(),
        backoff: Backoff::default(),
        written: Mutex::new(HashMap::new()),
        reported: Mutex::new(HashMap::new()),
    });
    // A Node change (a deletion frees a block) re-runs the Nodes still waiting.
    let waiting = move |_: Node| {
        nodes
            .state()
            .into_iter()
            .filter(|n| !has_pod_cidr(n))
            .map(|n| ObjectRef::from_obj(n.as_ref()))
            .collect::<Vec<_>>()
    };
    tracing::info!(
        "node IPAM controller started: /{mask} blocks of {cluster} ({} of them)",
        cluster.subnet_count(mask).unwrap_or(0)
    );
    controller
        .watches(api, watcher::Config::default(), waiting)
        .run(reconcile, error_policy, state)
        .for_each(|r| async move {
            if let Err(e) = r {
                tracing::debug!("nodeipam: {e}");
            }
        })
        .await;
    anyhow::bail!("the node IPAM controller stream ended")
}

fn error_policy(node: Arc<Node>, e: &Error, state: Arc<State>) -> Action {
    let delay = state.backoff.failed(&node.name_any());
    tracing::warn!("nodeipam: {e} (retrying in {delay:?})");
    Action::requeue(delay)
}

/// The blocks `nodes` hold, plus those written but maybe not yet in `nodes`.
fn used_blocks<'a>(state: &State, nodes: impl Iterator<Item = &'a Node>) -> Vec<Ipv4Cidr> {
    let nodes: Vec<&Node> = nodes.collect();
    let mut written = state.written.lock().unwrap_or_else(|e| e.into_inner());
    written.retain(|n, _| nodes.iter().any(|o| o.name_any() == *n && !has_pod_cidr(o)));
    let mut used: Vec<Ipv4Cidr> = nodes.iter().flat_map(|n| node_cidrs(n)).collect();
    used.extend(written.values().copied());
    used
}

async fn reconcile(node: Arc<Node>, state: Arc<State>) -> Result<Action, Error> {
    let name = node.name_any();
    if has_pod_cidr(&node) {
        state
            .written
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&name);
        return Ok(Action::await_change());
    }
    let cluster = state.ctx.config.cluster_cidr;
    let mask = state.ctx.config.node_cidr_mask_size;
    if state
        .written
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .contains_key(&name)
    {
        // Written a moment ago, not in the cache yet: its update will re-run it.
        return Ok(Action::requeue(Duration::from_secs(5)));
    }
    let cached = state.nodes.state();
    let mut found = allocate(
        &cluster,
        mask,
        &used_blocks(&state, cached.iter().map(|n| n.as_ref())),
    );
    if found.is_none() {
        // Before reporting exhaustion, look again on a fresh list: the cache may still
        // hold a Node deleted a moment ago (the deletion is what re-ran this one).
        let live = Api::<Node>::all(state.ctx.client.clone())
            .list(&ListParams::default())
            .await
            .map_err(Error::List)?;
        found = allocate(&cluster, mask, &used_blocks(&state, live.items.iter()));
    }
    let Some(block) = found else {
        let why = format!(
            "No CIDR left in --cluster-cidr {cluster} for Node {name}: all {} /{mask} blocks are allocated",
            cluster.subnet_count(mask).unwrap_or(0)
        );
        let new_reason = state
            .reported
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(name.clone(), why.clone())
            .is_none_or(|old| old != why);
        if new_reason {
            tracing::warn!("nodeipam: {why}");
            state
                .ctx
                .events
                .publish(node.as_ref(), EventType::Warning, "CIDRNotAvailable", &why)
                .await;
        }
        return Ok(Action::requeue(Duration::from_secs(60)));
    };
    let c = block.to_string();
    let patch = serde_json::json!({"spec": {"podCIDR": c, "podCIDRs": [c]}});
    let api: Api<Node> = Api::all(state.ctx.client.clone());
    api.patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .map_err(|e| Error::Write(name.clone(), e))?;
    state
        .written
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(name.clone(), block);
    state
        .reported
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .remove(&name);
    state.backoff.succeeded(&name);
    tracing::info!("nodeipam: Node {name} gets podCIDR {c}");
    Ok(Action::await_change())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(s: &str) -> Ipv4Cidr {
        s.parse().unwrap()
    }

    #[test]
    fn lowest_free_block_skipping_overlaps() {
        let cluster = c("10.42.0.0/16");
        assert_eq!(allocate(&cluster, 24, &[]), Some(c("10.42.0.0/24")));
        assert_eq!(
            allocate(&cluster, 24, &[c("10.42.0.0/24"), c("10.42.2.0/24")]),
            Some(c("10.42.1.0/24"))
        );
        // A wider block set by hand covers several /24s.
        assert_eq!(
            allocate(&cluster, 24, &[c("10.42.0.0/23")]),
            Some(c("10.42.2.0/24"))
        );
        // Blocks outside the cluster CIDR do not matter.
        assert_eq!(
            allocate(&cluster, 24, &[c("10.99.0.0/24")]),
            Some(c("10.42.0.0/24"))
        );
        let tiny = c("10.42.0.0/23");
        assert_eq!(
            allocate(&tiny, 24, &[c("10.42.0.0/24"), c("10.42.1.0/24")]),
            None,
            "exhausted"
        );
    }

    #[test]
    fn flags_are_checked() {
        assert!(validate(&c("10.42.0.0/16"), 24).is_ok());
        assert!(validate(&c("10.42.0.0/16"), 8)
            .unwrap_err()
            .contains("shorter than --cluster-cidr"));
        assert!(validate(&c("10.0.0.0/8"), 30)
            .unwrap_err()
            .contains("more than 65536 blocks"));
        assert!(validate(&c("10.42.0.0/16"), 33)
            .unwrap_err()
            .contains("at most 32"));
    }

    #[test]
    fn node_cidrs_reads_both_fields() {
        let mut n = Node::default();
        assert!(node_cidrs(&n).is_empty());
        n.spec = Some(k8s_openapi::api::core::v1::NodeSpec {
            pod_cidr: Some("10.42.3.0/24".into()),
            pod_cidrs: Some(vec!["10.42.3.0/24".into(), "fd00::/64".into()]),
            ..Default::default()
        });
        assert_eq!(node_cidrs(&n), vec![c("10.42.3.0/24"), c("10.42.3.0/24")]);
        assert!(has_pod_cidr(&n));
    }
}
