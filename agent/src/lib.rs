//! skiff-agent: the node agent. Today it loads the eBPF datapath, attaches it and reads its
//! counters; service translation, the API watchers and the CNI plugin build on this.

pub mod datapath;
