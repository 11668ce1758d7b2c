//! The `baton` binary: `baton serve` runs the server; the other commands are its clients.

#![allow(clippy::print_stderr, reason = "a binary tells its user why it could not start on stderr")]

use std::process::ExitCode;

use baton::cli::{ClientCommand, ClientOptions};
use baton::config::{LogFormat, ServeArgs, ServeConfig, one_per_core};
use baton::serve::{Server, shutdown_signal};
use clap::{Parser, Subcommand};

/// Journal events are encoded on the callers' threads and freed on the journal writer's;
/// glibc's malloc spent a fifth of the process's CPU on such traffic, and mimalloc cut the CPU
/// of a PostgreSQL journal append by about a sixth.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Baton: service orchestration with automatic composition.
#[derive(Debug, Parser)]
#[command(name = "baton", version, about)]
struct Cli {
    #[command(flatten)]
    client: ClientOptions,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Runs the server: gRPC API, metrics, the workflow engine and the registry.
    Serve(Box<ServeArgs>),
    /// Evaluates expressions for a server, over stdin and stdout, within the given bounds.
    #[command(hide = true)]
    EvalWorker(baton::sandbox::worker::WorkerArgs),
    /// Reads a cluster's state from its database.
    #[command(subcommand)]
    Cluster(ClusterCommand),
    #[command(flatten)]
    Client(ClientCommand),
}

#[derive(Debug, Subcommand)]
enum ClusterCommand {
    /// Nodes, their leases (by the database's clock) and the partitions each owns.
    Status {
        /// The cluster's PostgreSQL database.
        #[arg(long, env = "BATON_STORE")]
        store: String,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(args) => {
            let config = match args.resolve() {
                Ok(config) => config,
                Err(error) => {
                    eprintln!("baton serve: {error}");
                    return ExitCode::from(2);
                }
            };
            match runtime(config.worker_threads) {
                Some(runtime) => runtime.block_on(serve(config)),
                None => ExitCode::FAILURE,
            }
        }
        // No runtime: the worker is one thread evaluating and one watching it.
        Command::EvalWorker(args) => baton::sandbox::worker::run(&args),
        Command::Cluster(ClusterCommand::Status { store }) => match runtime(1) {
            Some(runtime) => runtime.block_on(cluster_status(&store)),
            None => ExitCode::FAILURE,
        },
        Command::Client(command) => match runtime(one_per_core()) {
            Some(runtime) => runtime.block_on(baton::cli::run(command, &cli.client)),
            None => ExitCode::FAILURE,
        },
    }
}

/// The async runtime with `workers` threads. Always given, so tokio never reads
/// `TOKIO_WORKER_THREADS`, on whose bad value it panics.
fn runtime(workers: usize) -> Option<tokio::runtime::Runtime> {
    match tokio::runtime::Builder::new_multi_thread().worker_threads(workers).enable_all().build() {
        Ok(runtime) => Some(runtime),
        Err(error) => {
            eprintln!("baton: cannot start the async runtime: {error}");
            None
        }
    }
}

async fn serve(config: ServeConfig) -> ExitCode {
    init_logs(config.log_format, &config.log_level);
    for line in config.describe() {
        tracing::info!("config: {line}");
    }
    let server = match Server::bind(config).await {
        Ok(server) => server,
        Err(error) => {
            tracing::error!(%error, "cannot start");
            return ExitCode::FAILURE;
        }
    };
    // The runtime's own count, which shows `worker_threads` took effect.
    let workers = tokio::runtime::Handle::current().metrics().num_workers();
    tracing::info!(grpc = %server.grpc_addr(), metrics = %server.metrics_addr(), console = %format!("http://{}", server.console_addr()), workers, "serving");
    match server.serve(shutdown_signal()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(%error, "server failed");
            ExitCode::FAILURE
        }
    }
}

#[allow(clippy::print_stdout, reason = "the status is the command's output")]
async fn cluster_status(url: &str) -> ExitCode {
    let status = match baton_cluster::status(url).await {
        Ok(status) => status,
        Err(error) => {
            eprintln!("baton cluster status: {error}");
            return ExitCode::FAILURE;
        }
    };
    let Some(partitions) = status.partitions else {
        println!("no cluster: no node has joined this database");
        return ExitCode::SUCCESS;
    };
    let live = status.nodes.iter().filter(|n| n.lease_remaining_ms > 0).count();
    println!("{partitions} partitions, {live} live node(s), {} partition(s) without a live owner", status.unowned);
    println!("{:<24} {:<28} {:>11} {:>14} {:>10}", "NODE", "ADDRESS", "INCARNATION", "LEASE", "PARTITIONS");
    for node in &status.nodes {
        let lease = if node.lease_remaining_ms > 0 {
            format!("{:.1}s left", node.lease_remaining_ms as f64 / 1000.0)
        } else {
            "expired".to_owned()
        };
        println!("{:<24} {:<28} {:>11} {:>14} {:>10}", node.id, node.address, node.incarnation, lease, node.partitions);
    }
    ExitCode::SUCCESS
}

fn init_logs(format: LogFormat, level: &str) {
    let level: tracing::Level = level.parse().unwrap_or(tracing::Level::INFO);
    let builder = tracing_subscriber::fmt().with_max_level(level).with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}
