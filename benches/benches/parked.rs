//! `parked`: 100,000 executions (`BATON_BENCH_PARKED` to change) started by 64 gRPC clients,
//! each waiting on a worker-pull task that no worker takes, over the real server in a process
//! of its own (this bench's executable run again as the server, redb in a temporary
//! directory). The tasks are spread over 16 queues, below the per-queue cap, and each step's
//! timeout outlasts the bench; past each worker service's capacity (64) and the executor's
//! global limit of calls in flight, runs wait for their turn to call. Figures: the start rate, the server's resident memory above
//! idle (in all and per waiting execution) once every task is queued, and GetExecution and
//! ListExecutions (one page) latency p50/p99 while they wait.

#![allow(clippy::print_stderr, reason = "a bench reports its progress on stderr")]

use std::io::{BufRead as _, Read as _, Write as _};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use baton::config::ServeArgs;
use baton::serve::Server;
use baton_benches::{closed_loop, quantile, report_figure, resident_bytes_of};
use baton_grpc::pb;
use criterion::{Criterion, criterion_group};
use tonic::transport::Channel;

const CLIENTS: usize = 64;
/// Queues the waiting tasks spread over: 100,000 stay under the cap of 10,000 on each.
const QUEUES: usize = 16;
/// Set in the server process this bench starts: its data directory.
const SERVE_VAR: &str = "BATON_BENCH_PARKED_SERVE";
/// A profiler the server process runs under, e.g. `heaptrack` or `valgrind --tool=dhat`
/// (words split on spaces, the server's command after them). Memory figures are then the
/// profiler's process's, not the server's alone.
const WRAPPER_VAR: &str = "BATON_BENCH_PARKED_WRAPPER";
/// Calls of each kind measured while the executions wait.
const CALLS: usize = 2_000;

/// The server process: `baton serve`'s code on loopback, its addresses on stdout, until its
/// standard input closes.
fn serve(dir: std::path::PathBuf) {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("a runtime");
    rt.block_on(async {
        let mut config = ServeArgs::default().resolve().expect("the defaults resolve");
        config.listen = "127.0.0.1:0".parse().expect("an address");
        config.metrics_listen = "127.0.0.1:0".parse().expect("an address");
        config.console_listen = "127.0.0.1:0".parse().expect("an address");
        config.data_dir = dir;
        config.log_level = "warn".to_owned();
        // 64 clients on one connection start as fast as the server lets them.
        config.rate_limit = 1_000_000;
        let server = Server::bind(config).await.expect("the server binds");
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
            .expect("the server serves");
    });
}

/// The server in a process of its own, and its addresses.
struct ServerProcess {
    child: Child,
    grpc: String,
    metrics: String,
}

impl ServerProcess {
    fn start(dir: &std::path::Path) -> Self {
        let mut child = baton_benches::this_executable_wrapped(WRAPPER_VAR)
            .env(SERVE_VAR, dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("the server process starts");
        let mut stdout = std::io::BufReader::new(child.stdout.take().expect("piped"));
        // A profiler may say things of its own first: the addresses are the line of two.
        let (grpc, metrics) = loop {
            let mut line = String::new();
            let read = stdout.read_line(&mut line).expect("the server says where it listens");
            assert!(read > 0, "the server process ended before it said where it listens");
            if let Some((grpc, metrics)) = line.trim().split_once(' ')
                && grpc.parse::<std::net::SocketAddr>().is_ok()
            {
                break (grpc.to_owned(), metrics.to_owned());
            }
        };
        Self { grpc: format!("http://{grpc}"), metrics, child }
    }

    fn resident(&self) -> u64 {
        resident_bytes_of(self.child.id()).expect("the server's /proc/<pid>/statm reads")
    }

    /// Tasks waiting on the bench's queues, from the server's metrics.
    fn queued(&self) -> u64 {
        let mut stream = std::net::TcpStream::connect(&self.metrics).expect("the metrics answer");
        stream.set_read_timeout(Some(Duration::from_secs(10))).expect("a timeout");
        write!(stream, "GET /metrics HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n", self.metrics)
            .expect("the request goes");
        let mut text = String::new();
        stream.read_to_string(&mut text).expect("the metrics read");
        text.lines()
            .filter(|line| line.starts_with("baton_worker_queue_depth{") && line.contains("queue=\"parked-"))
            .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>() as u64
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        // Closing its input stops it; a kill makes sure, but not of a profiler, which writes
        // its findings once the server has stopped.
        drop(self.child.stdin.take());
        if std::env::var_os(WRAPPER_VAR).is_none() {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

/// A worker-queue service per queue and a one-step workflow waiting on each.
async fn setup(channel: &Channel) {
    let mut registry = pb::registry_service_client::RegistryServiceClient::new(channel.clone());
    let mut workflows = pb::workflow_service_client::WorkflowServiceClient::new(channel.clone());
    for queue in 0..QUEUES {
        let spec = baton_core::ServiceSpec::from_json(&format!(
            r#"{{"id": "idle-{queue}", "endpoint": {{"protocol": "worker", "queue": "parked-{queue}"}},
                "capabilities": ["bench.idle"]}}"#
        ))
        .expect("a worker service");
        registry
            .register(pb::RegisterRequest { spec: Some(baton_grpc::convert::spec_to_proto(&spec)) })
            .await
            .expect("the service registers");
        let source = format!(
            "name: parked-{queue}\nsteps:\n  - id: wait\n    service: idle-{queue}\n    timeout: 1h\n    \
             input: {{n: \"${{ .input.n }}\"}}\noutput: \"${{ .steps.wait.output }}\"\n"
        );
        workflows
            .apply_definition(pb::ApplyDefinitionRequest { source, format: pb::DefinitionFormat::Yaml as i32 })
            .await
            .expect("the workflow applies");
    }
}

/// Starts `count` executions from `CLIENTS` clients: their ids and the wall time.
async fn start_all(channel: &Channel, count: usize) -> (Vec<String>, Duration) {
    let ids = std::sync::Arc::new(std::sync::Mutex::new(Vec::with_capacity(count)));
    let (elapsed, _) = closed_loop(CLIENTS, count, || {
        let client = pb::execution_service_client::ExecutionServiceClient::new(channel.clone());
        let ids = std::sync::Arc::clone(&ids);
        move |n| {
            let (mut client, ids) = (client.clone(), std::sync::Arc::clone(&ids));
            async move {
                let started = client
                    .start_execution(pb::StartExecutionRequest {
                        workflow: format!("parked-{}", n % QUEUES),
                        version: None,
                        input_json: format!(r#"{{"n": {n}}}"#),
                        idempotency_key: None,
                    })
                    .await
                    .expect("starts")
                    .into_inner();
                let id = started.execution.expect("an execution").id;
                ids.lock().expect("not poisoned").push(id);
            }
        }
    })
    .await;
    let ids = std::mem::take(&mut *ids.lock().expect("not poisoned"));
    (ids, elapsed)
}

/// Latencies of `calls` GetExecution calls, one at a time, over `ids`.
async fn gets(channel: &Channel, ids: &[String], calls: usize) -> Vec<Duration> {
    let mut client = pb::execution_service_client::ExecutionServiceClient::new(channel.clone());
    let mut latencies = Vec::with_capacity(calls);
    for n in 0..calls {
        let id = ids[(n * 7_919) % ids.len()].clone();
        let begun = Instant::now();
        let execution = client.get_execution(pb::GetExecutionRequest { id }).await.expect("gets").into_inner();
        latencies.push(begun.elapsed());
        let execution = execution.execution.expect("an execution");
        assert_eq!(
            execution.state,
            pb::ExecutionState::Running as i32,
            "execution {} waits: {:?}",
            execution.id,
            execution.error
        );
    }
    latencies
}

/// Latencies of `calls` ListExecutions calls of the first page, one at a time.
async fn lists(channel: &Channel, calls: usize) -> Vec<Duration> {
    let mut client = pb::execution_service_client::ExecutionServiceClient::new(channel.clone());
    let mut latencies = Vec::with_capacity(calls);
    for _ in 0..calls {
        let begun = Instant::now();
        let page = client.list_executions(pb::ListExecutionsRequest::default()).await.expect("lists").into_inner();
        latencies.push(begun.elapsed());
        assert!(!page.executions.is_empty(), "a page of executions");
    }
    latencies
}

fn parked(c: &mut Criterion) {
    let count: usize = std::env::var("BATON_BENCH_PARKED").ok().and_then(|v| v.parse().ok()).unwrap_or(100_000);
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("a runtime");
    let dir = tempfile::tempdir().expect("a temp dir");
    let server = ServerProcess::start(&dir.path().join("data"));
    let channel = rt.block_on(async {
        let channel = Channel::from_shared(server.grpc.clone()).expect("a URL").connect().await.expect("answers");
        setup(&channel).await;
        channel
    });
    let idle = server.resident();
    eprintln!("parked: server idle at {} MiB; starting {count} executions", idle >> 20);

    let (ids, elapsed) = rt.block_on(start_all(&channel, count));
    assert_eq!(ids.len(), count, "every execution started");
    eprintln!("parked: {count} started in {elapsed:?}; waiting for their tasks to queue");
    // Each worker service takes as many tasks at once as its capacity, and the executor keeps
    // at most its global limit of calls in flight across runs: the rest of the runs wait for
    // their turn (FIFO), holding what a waiting run holds.
    let in_flight = (QUEUES as u64 * u64::from(baton_core::service::DEFAULT_CAPACITY))
        .min(baton_executor::Config::default().max_in_flight as u64)
        .min(count as u64);
    let deadline = Instant::now() + Duration::from_secs(600);
    while server.queued() < in_flight {
        assert!(Instant::now() < deadline, "{} of {in_flight} tasks queued after 10 minutes", server.queued());
        std::thread::sleep(Duration::from_millis(200));
    }
    // The last drivers journal their `Started` and launch their runs: until memory stops
    // moving.
    let mut waiting = server.resident();
    loop {
        assert!(Instant::now() < deadline, "the server's memory settles");
        std::thread::sleep(Duration::from_millis(500));
        let now = server.resident();
        if now.abs_diff(waiting) < 1 << 20 {
            break;
        }
        waiting = now;
    }
    let above = waiting.saturating_sub(idle) as f64;
    eprintln!("parked: server at {} MiB with {count} waiting", waiting >> 20);
    // Recorded before the calls below, so that a failure there cannot lose them.
    let name = format!("{count} executions waiting on worker tasks, redb, {CLIENTS} gRPC clients");
    report_figure(
        "parked",
        &format!("{name}: starts per second"),
        count as f64 / elapsed.as_secs_f64(),
        "1/s",
        None,
        Some(">= 5000"),
    );
    report_figure(
        "parked",
        &format!("{name}: server resident memory above idle"),
        above / (1 << 20) as f64,
        "MiB",
        None,
        Some("<= 1024"),
    );
    report_figure(
        "parked",
        &format!("{name}: server resident memory per waiting execution"),
        above / count as f64 / 1024.0,
        "KiB",
        None,
        Some("<= 10"),
    );
    report_figure(
        "parked",
        &format!("{name}: server resident memory idle"),
        idle as f64 / (1 << 20) as f64,
        "MiB",
        None,
        None,
    );

    let mut group = c.benchmark_group("parked");
    group.sample_size(10);
    group.bench_function(format!("baton/get_execution_{count}_waiting"), |b| {
        b.iter_custom(|iters| {
            let begun = Instant::now();
            rt.block_on(gets(&channel, &ids, iters as usize));
            begun.elapsed()
        })
    });
    group.bench_function(format!("baton/list_executions_page_{count}_waiting"), |b| {
        b.iter_custom(|iters| {
            let begun = Instant::now();
            rt.block_on(lists(&channel, iters as usize));
            begun.elapsed()
        })
    });
    group.finish();

    let (mut got, mut listed) =
        rt.block_on(async { (gets(&channel, &ids, CALLS).await, lists(&channel, CALLS / 4).await) });
    got.sort_unstable();
    listed.sort_unstable();
    for (call, latencies) in [("GetExecution", &got), ("ListExecutions one page", &listed)] {
        for (label, q, target) in [("p50", 0.5, None), ("p99", 0.99, Some("<= 5 ms"))] {
            report_figure(
                "parked",
                &format!("{name}: {call} {label}"),
                quantile(latencies, q).as_secs_f64() * 1e3,
                "ms",
                None,
                target,
            );
        }
    }
    drop(server);
}

criterion_group!(benches, parked);

fn main() {
    if let Some(dir) = std::env::var_os(SERVE_VAR) {
        serve(dir.into());
        return;
    }
    benches();
    Criterion::default().configure_from_args().final_summary();
}
