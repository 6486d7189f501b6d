//! `cargo xtask`: the project's automation. Every command that builds eBPF runs `setup`
//! first, which installs only what is missing and says what it does.

mod bench;
mod cmd;
mod lint;
mod setup;
mod test;
mod up;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask", about = "skiff's build, test and run automation")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Install what building and testing need: Debian packages, nightly rust-src,
    /// bpf-linker built against the nightly's LLVM. Idempotent.
    Setup,
    /// Build every host crate (the eBPF object is built and embedded by the agent's build.rs).
    Build,
    /// rustfmt check, clippy -D warnings on host crates and on the eBPF crate.
    Lint,
    /// THE test command: setup, lint, unit tests, then the privileged suite (root, BPF,
    /// netns). Without privileges the privileged suite is reported SKIPPED, and with
    /// CI=true that is a failure.
    Test {
        /// Skip the lint step (for quick local iterations; CI never passes this).
        #[arg(long)]
        no_lint: bool,
    },
    /// Benchmarks (not part of CI): `datapath` prints a markdown table and writes
    /// bench-results/datapath.json; `controlplane` measures scheduler throughput,
    /// Pod Ready → EndpointSlice latency and a 1000-replica Deployment.
    /// Pass --quick for a smaller, faster run.
    Bench {
        /// What to benchmark: datapath, controlplane.
        what: String,
        /// Smaller scales and shorter runs.
        #[arg(long)]
        quick: bool,
    },
    /// Start a simulated skiff cluster on this machine (control plane + N nodes as network
    /// namespaces, pods running), print how to use it with kubectl, tear it down on Ctrl-C.
    Up {
        /// Number of simulated nodes.
        #[arg(long, default_value_t = 1)]
        nodes: usize,
        /// The store: redb (embedded) or etcd (a local etcd process).
        #[arg(long, default_value = "redb")]
        store: String,
        /// The host port of the API server (on 127.0.0.1).
        #[arg(long, default_value_t = 6443)]
        api_port: u16,
        /// Instead: the datapath demo (two namespaces, tc counters).
        #[arg(long)]
        demo: bool,
    },
    /// (internal) Traffic generator used by `up`, run inside the demo client namespace.
    #[command(hide = true)]
    DemoTraffic { target: std::net::Ipv4Addr },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Setup => setup::ensure(),
        Command::Build => {
            setup::ensure()?;
            cmd::run(cmd::cargo().args(["build", "--workspace", "--exclude", "skiff-datapath"]))
        }
        Command::Lint => {
            setup::ensure()?;
            lint::run()
        }
        Command::Test { no_lint } => test::run(no_lint),
        Command::Up {
            nodes,
            store,
            api_port,
            demo,
        } => {
            if demo {
                return up::demo();
            }
            let etcd = match store.as_str() {
                "redb" => false,
                "etcd" => true,
                other => anyhow::bail!("--store {other:?}: use redb or etcd"),
            };
            up::cluster(up::Up {
                nodes,
                etcd,
                api_port,
            })
        }
        Command::Bench { what, quick } => bench::run(&what, quick),
        Command::DemoTraffic { target } => up::demo_traffic(target),
    }
}
