//! What the watch cache's per-object selector attributes cost on the heap
//! ([`SelectionAttrs`]), measured with a counting allocator (this test binary's own).
//!
//! The cache holds one per object version (10k pods: 10k of them, plus the versions its
//! history keeps). Before, they were a `serde_json::Value` tree of the same fields; that
//! tree is built here too, for the comparison the assertion is about.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering};

use serde_json::{json, Value};
use skiff_api::selector::SelectionAttrs;

/// Bytes currently allocated (requested sizes; malloc adds its own overhead per chunk).
static LIVE: AtomicIsize = AtomicIsize::new(0);

struct Counting;

// SAFETY: forwards to the system allocator; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE.fetch_add(
            new_size as isize - layout.size() as isize,
            Ordering::Relaxed,
        );
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// Heap bytes `f`'s result keeps alive.
fn retained<T>(f: impl FnOnce() -> T) -> (T, isize) {
    let before = LIVE.load(Ordering::Relaxed);
    let out = f();
    (out, LIVE.load(Ordering::Relaxed) - before)
}

/// The benchmark's pod (`skiff-apiserver-bench`) as stored: defaulted, with status.
fn pod() -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "bench-00042", "namespace": "bench", "uid": "0b6c8f0e-2f4d-4f3a-9a53-1d2b3c4d5e6f",
                     "labels": {"app": "app-42", "bench": "true"}},
        "spec": {"nodeName": "bench-node-42", "restartPolicy": "Always",
                 "schedulerName": "default-scheduler", "serviceAccountName": "default",
                 "containers": [{"name": "c", "image": "skiff.local/host"}]},
        "status": {"phase": "Pending"},
    })
}

/// The same fields as a JSON tree, as the cache kept them before.
fn as_value_tree(obj: &Value) -> Value {
    let mut out = json!({});
    for p in [
        "/metadata/name",
        "/metadata/namespace",
        "/metadata/labels",
        "/spec/nodeName",
        "/spec/restartPolicy",
        "/spec/schedulerName",
        "/spec/serviceAccountName",
        "/status/phase",
    ] {
        let parts: Vec<&str> = p[1..].split('/').collect();
        let (last, parents) = parts.split_last().unwrap();
        let mut at = &mut out;
        for part in parents {
            at = at
                .as_object_mut()
                .unwrap()
                .entry(*part)
                .or_insert_with(|| json!({}));
        }
        at.as_object_mut()
            .unwrap()
            .insert((*last).to_string(), obj.pointer(p).unwrap().clone());
    }
    out
}

#[test]
fn a_pods_selector_attributes_take_a_fraction_of_a_json_tree() {
    let pod = pod();
    let (attrs, flat) = retained(|| SelectionAttrs::of("Pod", &pod));
    let (tree, tree_bytes) = retained(|| as_value_tree(&pod));
    eprintln!("selector attributes of a pod: flat {flat} bytes, JSON tree {tree_bytes} bytes");
    assert_eq!(attrs.label("app"), Some("app-42"));
    assert_eq!(
        tree.pointer("/spec/nodeName"),
        pod.pointer("/spec/nodeName")
    );
    assert!(flat < 700, "flat attributes take {flat} bytes");
    assert!(
        flat * 4 < tree_bytes,
        "flat {flat} bytes against a tree of {tree_bytes}"
    );
}
