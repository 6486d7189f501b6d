//! skiff's privileged test harness: network namespaces, packets, and BPF_PROG_TEST_RUN
//! against the production eBPF object. Used by the tests in `tests/tests/`, which
//! `cargo xtask test` runs as root (and reports as SKIPPED, loudly, where it cannot).

pub mod apiserver;
pub mod bench;
pub mod cgroup;
pub mod netns;
pub mod packet;
pub mod privilege;
pub mod prog_run;
