//! `baton serve` nodes in processes of their own, for benches that kill or pin them: the
//! bench's own executable, run again with [`NODE_ENV`] set, parses its arguments as
//! `baton serve` does and serves with `baton serve`'s code (this crate's allocator is the
//! binary's) until its standard input closes (the bench ended) or it is killed. A node runs
//! its jq evaluators as `baton serve` does, as its own executable again (`eval-worker`). A
//! bench's `main` calls [`serve_if_node`] first.

use std::io::{BufRead as _, Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use baton::config::ServeArgs;
use baton::serve::Server;

/// Set in a node's process: its `baton serve` arguments, one a line.
pub const NODE_ENV: &str = "BATON_BENCH_NODE";

/// Serves as a node and answers `true` when this process was started as one; `false` in the
/// bench itself.
#[allow(clippy::print_stderr, reason = "a node that cannot start says why on its stderr, the bench's log")]
pub fn serve_if_node() -> bool {
    if std::env::args().nth(1).as_deref() == Some("eval-worker") {
        evaluate_as_worker();
    }
    let Some(args) = std::env::var_os(NODE_ENV) else { return false };
    let args = args.to_string_lossy().lines().map(str::to_owned).collect::<Vec<_>>();
    let command = <ServeArgs as clap::Args>::augment_args(clap::Command::new("serve"));
    let parsed = command
        .try_get_matches_from(std::iter::once("serve".to_owned()).chain(args))
        .and_then(|matches| <ServeArgs as clap::FromArgMatches>::from_arg_matches(&matches));
    let config = match parsed.map_err(|e| e.to_string()).and_then(|a| a.resolve().map_err(|e| e.to_string())) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("bench node: {error}");
            std::process::exit(2);
        }
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(config.worker_threads)
        .enable_all()
        .build()
        .expect("a runtime");
    runtime.block_on(async {
        let server = Server::bind(config).await.expect("the node binds");
        let mut stdout = std::io::stdout();
        writeln!(stdout, "{} {}", server.grpc_addr(), server.metrics_addr()).expect("stdout takes the addresses");
        stdout.flush().expect("stdout takes the addresses");
        let stdin_closed = tokio::task::spawn_blocking(|| {
            let mut rest = Vec::new();
            let _ = std::io::stdin().read_to_end(&mut rest);
        });
        server
            .serve(async move {
                let _ = stdin_closed.await;
            })
            .await
            .expect("the node serves");
    });
    true
}

/// Serves as a node's jq evaluator (`baton eval-worker`, which the node runs as its own
/// executable with the server's environment cleared) and exits.
#[allow(clippy::print_stderr, reason = "the node reads how an evaluator died from its stderr")]
fn evaluate_as_worker() -> ! {
    let command = <baton::sandbox::worker::WorkerArgs as clap::Args>::augment_args(clap::Command::new("eval-worker"));
    let parsed = command
        .try_get_matches_from(std::env::args().skip(1))
        .and_then(|matches| <baton::sandbox::worker::WorkerArgs as clap::FromArgMatches>::from_arg_matches(&matches));
    match parsed {
        Ok(args) => std::process::exit(if baton::sandbox::worker::run(&args) == std::process::ExitCode::SUCCESS {
            0
        } else {
            2
        }),
        Err(error) => {
            eprintln!("bench evaluator: {error}");
            std::process::exit(2);
        }
    }
}

/// A node process: `baton serve` with the given arguments (loopback ports it picks), on the
/// given CPUs when asked (`taskset -c`).
#[derive(Debug)]
pub struct NodeProcess {
    child: Option<Child>,
    args: Vec<String>,
    cpus: Option<String>,
    log: PathBuf,
    /// The gRPC API, `http://host:port`.
    pub grpc: String,
    /// The metrics address, `host:port`.
    pub metrics: String,
}

impl NodeProcess {
    /// Starts a node with `args` (beside loopback listen addresses on free ports), its stderr
    /// appended to `log`, and waits until it listens.
    pub fn start(args: &[&str], cpus: Option<&str>, log: &Path) -> Self {
        let mut node = Self {
            child: None,
            args: args.iter().map(|a| (*a).to_owned()).collect(),
            cpus: cpus.map(str::to_owned),
            log: log.to_owned(),
            grpc: String::new(),
            metrics: String::new(),
        };
        node.spawn();
        node
    }

    fn spawn(&mut self) {
        let exe = std::env::current_exe().expect("this executable");
        let mut command = match &self.cpus {
            Some(cpus) => {
                let mut command = Command::new("taskset");
                command.args(["-c", cpus]).arg(exe);
                command
            }
            None => Command::new(exe),
        };
        let listen = ["--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0", "--console-listen", "127.0.0.1:0"];
        let args: Vec<&str> = listen.into_iter().chain(self.args.iter().map(String::as_str)).collect();
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&self.log).expect("the node's log opens");
        let mut child = command
            .env(NODE_ENV, args.join("\n"))
            .env_remove("BATON_CONFIG")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .expect("the node process starts");
        let mut line = String::new();
        let stdout = child.stdout.take().expect("piped");
        std::io::BufReader::new(stdout).read_line(&mut line).expect("the node says where it listens");
        let Some((grpc, metrics)) = line.trim().split_once(' ') else {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the node did not start; its log:\n{}", std::fs::read_to_string(&self.log).unwrap_or_default());
        };
        self.grpc = format!("http://{grpc}");
        self.metrics = metrics.to_owned();
        self.child = Some(child);
    }

    /// `kill -9`: no shutdown, no handover.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().expect("SIGKILL is delivered");
            child.wait().expect("the node is reaped");
        }
    }

    /// Starts the node again with the same arguments, after [`kill9`](Self::kill9); its
    /// addresses change.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "restart after kill9");
        self.spawn();
    }

    /// The node's process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("a running node").id()
    }
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        self.kill9();
    }
}
