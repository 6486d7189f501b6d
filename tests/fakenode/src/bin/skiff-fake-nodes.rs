//! `skiff-fake-nodes --kubeconfig K --count N`: runs N fake nodes until interrupted.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;

#[derive(Parser)]
#[command(
    name = "skiff-fake-nodes",
    about = "Register and run fake nodes (nothing behind them)"
)]
struct Args {
    #[arg(long)]
    kubeconfig: PathBuf,
    #[arg(long, default_value_t = 3)]
    count: usize,
    #[arg(long, default_value = "fake-node-")]
    prefix: String,
    #[arg(long, default_value = "32")]
    cpu: String,
    #[arg(long, default_value = "256Gi")]
    memory: String,
    #[arg(long, default_value_t = 110)]
    pods: u32,
    /// Seconds between Lease renewals.
    #[arg(long, default_value_t = 10)]
    lease_interval: u64,
    /// Leave pods bound to the nodes alone (no Running status, no deletion finalising).
    #[arg(long)]
    no_pods: bool,
    /// Delete the nodes (and their leases) on exit.
    #[arg(long)]
    cleanup: bool,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let a = Args::parse();
    let kc = kube::config::Kubeconfig::read_from(&a.kubeconfig)
        .with_context(|| format!("reading the kubeconfig {}", a.kubeconfig.display()))?;
    let cfg = kube::Config::from_custom_kubeconfig(kc, &Default::default()).await?;
    let client = kube::Client::try_from(cfg)?;
    let fake = skiff_fake_nodes::FakeNodes::start(
        client.clone(),
        skiff_fake_nodes::Config {
            count: a.count,
            prefix: a.prefix.clone(),
            shape: skiff_fake_nodes::NodeShape {
                cpu: a.cpu,
                memory: a.memory,
                pods: a.pods,
                ..Default::default()
            },
            lease_interval: Duration::from_secs(a.lease_interval.max(1)),
            manage_pods: !a.no_pods,
            ..Default::default()
        },
    )
    .await?;
    tracing::info!(
        "{} fake nodes running; Ctrl-C stops them",
        fake.names().len()
    );
    tokio::signal::ctrl_c().await?;
    drop(fake);
    if a.cleanup {
        let n = skiff_fake_nodes::delete_all(client, &a.prefix).await?;
        tracing::info!("deleted {n} fake nodes");
    }
    Ok(())
}
