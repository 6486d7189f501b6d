//! Benchmark building blocks (`cargo xtask bench datapath`): the kube-proxy iptables
//! ruleset for comparison, load generators, and statistics. Not part of CI.

pub mod kube_proxy;
pub mod load;
