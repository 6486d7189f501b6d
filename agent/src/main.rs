//! `skiff-agent`: the node agent binary.

use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use skiff_agent::datapath::Datapath;

#[derive(Parser)]
#[command(
    name = "skiff-agent",
    version,
    about = "skiff's node agent (eBPF service datapath)"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Load the datapath, attach tc ingress to the given interfaces and print the packet and
    /// drop counters every interval. The programs detach when the process exits.
    Run {
        /// Interfaces (in this network namespace) to attach tc ingress to.
        #[arg(long = "interface", short = 'i', required = true)]
        interfaces: Vec<String>,
        /// Seconds between counter reports.
        #[arg(long, default_value_t = 5)]
        interval_secs: u64,
        /// Stop after this many seconds (default: run until killed).
        #[arg(long)]
        duration_secs: Option<u64>,
    },
    /// Load the datapath (running the kernel verifier), print what it contains, and exit.
    Check,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Check => {
            let dp = Datapath::load().context("checking the datapath")?;
            let (maps, programs) = dp.inventory();
            println!(
                "eBPF object: {} bytes, verifier accepted all programs",
                skiff_agent::datapath::object_size()
            );
            println!("programs: {}", programs.join(", "));
            println!("maps: {}", maps.join(", "));
            Ok(())
        }
        Command::Run {
            interfaces,
            interval_secs,
            duration_secs,
        } => {
            let mut dp = Datapath::load().context("loading the datapath")?;
            for interface in &interfaces {
                dp.attach_tc_ingress(interface)?;
                println!("attached tc ingress to {interface}");
            }
            let start = Instant::now();
            let interval = Duration::from_secs(interval_secs.max(1));
            loop {
                std::thread::sleep(interval);
                print!("{}", dp.counters()?.render());
                println!("--");
                if duration_secs.is_some_and(|d| start.elapsed() >= Duration::from_secs(d)) {
                    return Ok(());
                }
            }
        }
    }
}
