//! skiff's scheduler: upstream kube-scheduler's default profile for what a lean cluster
//! needs (design: `controlplane.md` §4), as a pure core plus a thin kube-rs runtime.
//!
//! | module | what |
//! |---|---|
//! | [`quantity`] | resource quantities (`100m`, `1Gi`) as integers |
//! | [`info`] | per-pod requests/host ports, per-node running totals |
//! | [`matching`] | node selector, label selector and toleration semantics |
//! | [`filter`] | NodeUnschedulable, NodeName, TaintToleration, NodeAffinity, NodePorts, NodeResourcesFit |
//! | [`topology`] | PodTopologySpread filter (DoNotSchedule) and score (ScheduleAnyway) |
//! | [`score`] | LeastAllocated, BalancedAllocation, NodeAffinity, TaintToleration scores, weights |
//! | [`schedule`] | one decision: partial filtering (percentageOfNodesToScore), scoring, FitError |
//! | [`cache`] | nodes + bound/assumed pods |
//! | [`queue`] | active/backoff/unschedulable/gated queue |
//! | [`state`] | watch events → cache and queue (upstream's event handlers) |
//! | [`runtime`] | watchers, the scheduling loop, asynchronous binding, Events, PodScheduled |
//!
//! Not implemented (upstream plugins a lean cluster can do without at first, §4):
//! InterPodAffinity, volume plugins, DRA, ImageLocality, preemption; PodTopologySpread's
//! system default constraints.

pub mod cache;
pub mod filter;
pub mod info;
pub mod matching;
pub mod quantity;
pub mod queue;
pub mod runtime;
pub mod schedule;
pub mod score;
pub mod state;
pub mod topology;

pub use runtime::{run, Config};
