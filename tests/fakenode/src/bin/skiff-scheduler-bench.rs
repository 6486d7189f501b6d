//! Scheduler throughput benchmark (`cargo xtask bench controlplane`), the shape of
//! upstream's scheduler_perf SchedulingBasic (5000 nodes, 10 000 pods, no kubelet):
//!
//! 1. **in-memory**: the scheduling core alone (filter + score + assume over the cache),
//!    no API at all — the ceiling of the algorithm;
//! 2. **end to end**: a real `skiff-controlplane` process on 127.0.0.1 (API server only),
//!    N fake nodes registered through the API, P pending pods created through the API,
//!    then the scheduler (this process, the same code `server` runs in-process) started
//!    and timed until every pod is bound — decisions, `pods/binding` POSTs and
//!    `Scheduled` Events included. This is the honest number.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use clap::Parser;
use futures::StreamExt as _;
use k8s_openapi::api::core::v1::{Container, Node, Pod, PodSpec, ResourceRequirements};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::PostParams;
use kube::runtime::{watcher, WatchStreamExt as _};
use kube::Api;
use skiff_fake_nodes::server::{load_average, BenchServer};
use skiff_scheduler::cache::Cache;
use skiff_scheduler::info::PodInfo;
use skiff_scheduler::schedule::Algorithm;

#[derive(Parser)]
#[command(name = "skiff-scheduler-bench")]
struct Args {
    #[arg(long, default_value_t = 5000)]
    nodes: usize,
    #[arg(long, default_value_t = 10_000)]
    pods: usize,
    /// The skiff-controlplane binary for the end-to-end run (omit for in-memory only).
    #[arg(long)]
    server: Option<PathBuf>,
    /// Concurrent API calls while registering nodes and creating pods.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
}

/// scheduler_perf's `pod-default.yaml` requests.
fn bench_pod(i: usize) -> Pod {
    Pod {
        metadata: ObjectMeta {
            name: Some(format!("bench-{i}")),
            namespace: Some("default".into()),
            ..Default::default()
        },
        spec: Some(PodSpec {
            containers: vec![Container {
                name: "pause".into(),
                image: Some("registry.k8s.io/pause:3.10".into()),
                resources: Some(ResourceRequirements {
                    requests: Some(
                        [
                            ("cpu".to_string(), Quantity("100m".into())),
                            ("memory".to_string(), Quantity("500Mi".into())),
                        ]
                        .into(),
                    ),
                    ..Default::default()
                }),
                ..Default::default()
            }],
            ..Default::default()
        }),
        status: None,
    }
}

fn bench_node(i: usize) -> Node {
    let name = format!("fake-node-{i}");
    let mut n: Node = serde_json::from_value(serde_json::json!({
        "metadata": {"name": name, "labels": {
            "kubernetes.io/hostname": name,
            "topology.kubernetes.io/zone": format!("fake-zone-{}", i % 3),
        }},
        "spec": {},
        "status": {"allocatable": {"cpu": "32", "memory": "256Gi", "pods": "110", "ephemeral-storage": "100Gi"}},
    }))
    .expect("node literal");
    n.metadata.namespace = None;
    n
}

fn in_memory(nodes: usize, pods: usize) -> f64 {
    let mut cache = Cache::new();
    for i in 0..nodes {
        cache.upsert_node(bench_node(i));
    }
    let infos: Vec<Arc<PodInfo>> = (0..pods)
        .map(|i| Arc::new(PodInfo::new(bench_pod(i))))
        .collect();
    let mut alg = Algorithm::new(None, 0x5eed);
    let t = Instant::now();
    for p in infos {
        let d = alg.schedule(&p, &cache).expect("every bench pod fits");
        cache.assume(p, &d.node);
    }
    let secs = t.elapsed().as_secs_f64();
    println!(
        "in-memory: {pods} pods on {nodes} nodes in {secs:.3} s = {:.0} pods/s (filter+score+assume, one thread, no API)",
        pods as f64 / secs
    );
    pods as f64 / secs
}

async fn end_to_end(
    bin: &Path,
    nodes: usize,
    pods: usize,
    concurrency: usize,
) -> anyhow::Result<()> {
    let server = BenchServer::start(
        bin,
        "scheduler-bench",
        &["--disable-scheduler", "--disable-controllers"],
    )
    .await?;
    let client = server.client.clone();
    println!("machine load (1/5/15 min) before: {}", load_average());
    let t = Instant::now();
    let fake = skiff_fake_nodes::FakeNodes::start(
        client.clone(),
        skiff_fake_nodes::Config {
            count: nodes,
            // Leases renewed rarely: scheduler_perf runs without kubelets, and 500
            // renewals/s would be a different benchmark.
            lease_interval: Duration::from_secs(600),
            manage_pods: false,
            concurrency,
            ..Default::default()
        },
    )
    .await?;
    let reg = t.elapsed().as_secs_f64();
    println!("setup: {nodes} fake nodes registered (node + status + lease) in {reg:.1} s");

    let api: Api<Pod> = Api::namespaced(client.clone(), "default");
    let t = Instant::now();
    let created: Vec<Result<Pod, kube::Error>> = futures::stream::iter(0..pods)
        .map(|i| {
            let api = api.clone();
            async move { api.create(&PostParams::default(), &bench_pod(i)).await }
        })
        .buffer_unordered(concurrency)
        .collect()
        .await;
    if let Some(Err(e)) = created.into_iter().find(|r| r.is_err()) {
        bail!("creating bench pods: {e}");
    }
    let secs = t.elapsed().as_secs_f64();
    println!("setup: {pods} pending pods created in {secs:.1} s ({:.0} creates/s at concurrency {concurrency})", pods as f64 / secs);

    // Count bound pods from a watch, started before the scheduler.
    let (done_tx, done_rx) = tokio::sync::oneshot::channel::<Instant>();
    let counter = {
        let api = api.clone();
        tokio::spawn(async move {
            let mut bound = std::collections::HashSet::new();
            let mut s = watcher(api, watcher::Config::default())
                .default_backoff()
                .applied_objects()
                .boxed();
            let mut done = Some(done_tx);
            while let Some(Ok(p)) = s.next().await {
                if p.spec.as_ref().and_then(|s| s.node_name.as_ref()).is_some() {
                    bound.insert(p.metadata.name.clone().unwrap_or_default());
                    if bound.len() >= pods {
                        if let Some(tx) = done.take() {
                            let _ = tx.send(Instant::now());
                        }
                    }
                }
            }
        })
    };
    let t = Instant::now();
    let sched = tokio::spawn(skiff_scheduler::run(
        client.clone(),
        skiff_scheduler::Config::default(),
    ));
    let end = tokio::time::timeout(Duration::from_secs(1800), done_rx)
        .await
        .context("not every pod was bound within 30 minutes")??;
    let secs = end.duration_since(t).as_secs_f64();
    println!(
        "end to end: {pods} pods bound on {nodes} nodes in {secs:.2} s = {:.0} pods/s (scheduler start incl. its initial list -> last binding seen by a watch; binding POSTs + Scheduled Events through skiff-controlplane on 127.0.0.1)",
        pods as f64 / secs
    );
    println!("machine load (1/5/15 min) after: {}", load_average());
    sched.abort();
    counter.abort();
    drop(fake);
    drop(server);
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let a = Args::parse();
    in_memory(a.nodes, a.pods);
    if let Some(bin) = a.server.as_ref() {
        end_to_end(bin, a.nodes, a.pods, a.concurrency).await?;
    }
    Ok(())
}
