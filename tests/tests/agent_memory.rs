//! Heap the agent's desired state and reconciler hold at 10k Services / 100k endpoints
//! (agent memory, issue 7), counted by a global allocator in this test binary: live
//! bytes requested and live allocations, which is what glibc's per-chunk overhead and
//! fragmentation multiply (BENCHMARKS.md, "agent memory"). No privilege needed; one test
//! in this binary, so nothing else allocates while it counts.

use std::{
    alloc::{GlobalAlloc, Layout, System},
    net::Ipv4Addr,
    sync::atomic::{AtomicIsize, Ordering},
};

use k8s_openapi::api::{core::v1::Service, discovery::v1::EndpointSlice};
use skiff_agent::{
    lbmap::{MapWriteError, ServiceMaps, Snapshot},
    reconcile::Reconciler,
    translate::{translate, NodeContext},
};
use skiff_datapath_abi::{Backend, ServiceKey, ServiceOptions, ServiceValue, SlotKey};

/// Maps that accept every write and keep nothing (the fake's per-write invariant check
/// is quadratic at this scale, and its contents are not the agent's memory).
struct Sink;

impl ServiceMaps for Sink {
    fn put_backend(&mut self, _: u32, _: Backend) -> Result<(), MapWriteError> {
        Ok(())
    }
    fn delete_backend(&mut self, _: u32) -> Result<(), MapWriteError> {
        Ok(())
    }
    fn put_slot(&mut self, _: SlotKey, _: u32) -> Result<(), MapWriteError> {
        Ok(())
    }
    fn delete_slot(&mut self, _: SlotKey) -> Result<(), MapWriteError> {
        Ok(())
    }
    fn put_service(&mut self, _: ServiceKey, _: ServiceValue) -> Result<(), MapWriteError> {
        Ok(())
    }
    fn delete_service(&mut self, _: ServiceKey) -> Result<(), MapWriteError> {
        Ok(())
    }
    fn purge_sock_rev(&mut self, _: u32, _: &Backend) -> Result<Vec<u64>, MapWriteError> {
        Ok(Vec::new())
    }
    fn purge_conntrack(&mut self, _: u32, _: u32) -> Result<usize, MapWriteError> {
        Ok(0)
    }
    fn put_source_range(&mut self, _: u32, _: (Ipv4Addr, u8)) -> Result<(), MapWriteError> {
        Ok(())
    }
    fn delete_source_range(&mut self, _: u32, _: (Ipv4Addr, u8)) -> Result<(), MapWriteError> {
        Ok(())
    }
    fn put_service_options(&mut self, _: u32, _: ServiceOptions) -> Result<(), MapWriteError> {
        Ok(())
    }
    fn delete_service_options(&mut self, _: u32) -> Result<(), MapWriteError> {
        Ok(())
    }
    fn put_maglev_entries(&mut self, _: u32, _: &[(u32, u32)]) -> Result<(), MapWriteError> {
        Ok(())
    }
    fn purge_affinity(&mut self, _: u32, _: u32) -> Result<usize, MapWriteError> {
        Ok(0)
    }
    fn snapshot(&self) -> Result<Snapshot, MapWriteError> {
        Ok(Snapshot::default())
    }
}

struct Counting;

static BYTES: AtomicIsize = AtomicIsize::new(0);
static ALLOCS: AtomicIsize = AtomicIsize::new(0);

// SAFETY: delegates to the system allocator; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        BYTES.fetch_add(layout.size() as isize, Ordering::Relaxed);
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        BYTES.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        ALLOCS.fetch_sub(1, Ordering::Relaxed);
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        BYTES.fetch_add(
            new_size as isize - layout.size() as isize,
            Ordering::Relaxed,
        );
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn live() -> (isize, isize) {
    (
        BYTES.load(Ordering::Relaxed),
        ALLOCS.load(Ordering::Relaxed),
    )
}

/// The benchmark's shape (`skiff-agent-bench`): Service `svc-<i>` with one port and a
/// slice of `endpoints` ready endpoints.
fn objects(services: usize, endpoints: usize) -> (Vec<Service>, Vec<EndpointSlice>) {
    let mut svcs = Vec::with_capacity(services);
    let mut slices = Vec::with_capacity(services);
    for i in 0..services {
        let ip = Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 96, 0, 0)) + i as u32 + 1);
        svcs.push(
            serde_json::from_value(serde_json::json!({
                "metadata": {"namespace": "bench", "name": format!("svc-{i}")},
                "spec": {"clusterIP": ip.to_string(), "ports": [{"port": 80, "protocol": "TCP"}]}
            }))
            .unwrap(),
        );
        let eps: Vec<serde_json::Value> = (0..endpoints)
            .map(|e| {
                let n = (i * endpoints + e) as u32;
                let addr = Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 128, 0, 0)) + n);
                serde_json::json!({"addresses": [addr.to_string()],
                                   "conditions": {"ready": true}, "nodeName": "n"})
            })
            .collect();
        slices.push(
            serde_json::from_value(serde_json::json!({
                "metadata": {"namespace": "bench", "name": format!("svc-{i}-abcde"),
                             "labels": {"kubernetes.io/service-name": format!("svc-{i}")}},
                "addressType": "IPv4",
                "ports": [{"name": "", "port": 8080, "protocol": "TCP"}],
                "endpoints": eps
            }))
            .unwrap(),
        );
    }
    (svcs, slices)
}

#[test]
fn model_and_reconciler_at_10k_services_stay_within_their_heap_budget() {
    let (services, slices) = objects(10_000, 10);
    let before = live();
    let (model, diags) = translate(&services, &slices, &NodeContext::default());
    assert!(diags.is_empty(), "{diags:?}");
    let mut reconciler = Reconciler::new();
    let report = reconciler.sync(&model, &mut Sink);
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    drop(report);
    let after = live();
    let (bytes, allocs) = (after.0 - before.0, after.1 - before.1);
    eprintln!(
        "model + reconciler at 10k services / 100k endpoints: {:.1} MB requested in {} \
         live allocations",
        bytes as f64 / 1e6,
        allocs
    );
    // Budgets with ~20% headroom over what this commit measures (10.2 MB, 93.5k; session
    // 8: 11.3 MB before the id-only backend index; session 6: 12.6 MB, before the dense
    // backend table; before the issue-7 work: 21.0 MB, 157k); the goal is 40 MB of
    // resident memory for the whole agent, and each allocation costs glibc at least 32
    // bytes.
    assert!(bytes < 12_200_000, "{bytes} bytes");
    assert!(allocs < 110_000, "{allocs} allocations");
    drop((model, reconciler));
}
