//! A long-lived client keeps its connection: 64 callers on one tonic channel with default
//! settings each start an execution through a real `baton serve`, watch it and drop the watch
//! as soon as the terminal event arrives, as a client that has what it needs does. A server
//! that sent the end of the stream after the terminal event, in a later write, left each such
//! stream with frames in flight after the client had reset it; h2 counts those as protocol
//! errors and, after 1,024, closes the connection with every call on it
//! (`GoAway too_many_internal_resets`, hyperium/h2 issue 856).
//!
//! The soak runs the same loop longer on one connection and prints its figures on stderr,
//! lines starting `soak:`: executions per second, errors, the server's RSS at the start and
//! end. Short by default, for CI; `cargo xtask soak` runs it with `BATON_SOAK_EXECUTIONS`
//! (200,000 by default there).

#![allow(clippy::print_stderr, reason = "the soak reports its figures on stderr")]

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use baton_grpc::pb;
use pb::execution_service_client::ExecutionServiceClient;
use support::{Clients, ServerProcess, TICK, wait_completed};
use tokio::task::JoinSet;
use tonic::transport::Channel;

/// Callers on the one channel.
const CALLERS: usize = 64;

/// A server that lets one connection make as many requests as the callers can: the default
/// limit (2,000 a second per connection) would pace them, not test the connection.
async fn server(dir: &std::path::Path) -> ServerProcess {
    ServerProcess::start(dir, &["--rate-limit", "1000000", "--log-level", "warn"]).await
}

/// Starts execution `n`, watches it and drops the watch at its terminal event.
async fn one(client: &mut ExecutionServiceClient<Channel>, n: usize) -> Result<(), String> {
    let request = pb::StartExecutionRequest {
        workflow: "tick".to_owned(),
        version: None,
        input_json: format!(r#"{{"n": {n}}}"#),
        idempotency_key: None,
    };
    let started = client.start_execution(request).await.map_err(|s| format!("start {n}: {s:?}"))?.into_inner();
    let id = started.execution.ok_or("an answer without its execution")?.id;
    let request = pb::WatchExecutionRequest { id: id.clone(), from_sequence: 0 };
    let mut events = client.watch_execution(request).await.map_err(|s| format!("watch {id}: {s:?}"))?.into_inner();
    while let Some(event) = events.message().await.map_err(|s| format!("watch {id}: {s:?}"))? {
        match event.event.and_then(|e| e.kind) {
            // Dropped here, unread to its end: what the test is about.
            Some(pb::event::Kind::Completed(_)) => return Ok(()),
            Some(pb::event::Kind::Failed(failed)) => return Err(format!("{id} failed: {}", failed.error)),
            Some(pb::event::Kind::Cancelled(_)) => return Err(format!("{id} was cancelled")),
            _ => {}
        }
    }
    Err(format!("the watch of {id} ended before its terminal event"))
}

/// What `executions` executions by [`CALLERS`] callers on `channel` came to.
struct Run {
    elapsed: Duration,
    errors: Vec<String>,
}

impl Run {
    fn assert_no_errors(&self) {
        let first = self.errors.first().map_or("", String::as_str);
        assert!(self.errors.is_empty(), "{} executions failed, the first: {first}", self.errors.len());
    }
}

/// Runs `executions` executions, [`CALLERS`] at a time, all on `channel`; a caller that fails
/// one goes on with the next, so that every failure is counted.
async fn run(channel: &Channel, executions: usize) -> Run {
    let next = Arc::new(AtomicUsize::new(0));
    let began = Instant::now();
    let mut callers = JoinSet::new();
    for _ in 0..CALLERS {
        let (next, mut client) = (Arc::clone(&next), ExecutionServiceClient::new(channel.clone()));
        callers.spawn(async move {
            let mut errors = Vec::new();
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= executions {
                    return errors;
                }
                if let Err(error) = one(&mut client, n).await {
                    errors.push(error);
                }
            }
        });
    }
    let errors = callers.join_all().await.into_iter().flatten().collect();
    Run { elapsed: began.elapsed(), errors }
}

/// The server's resident set, in MB, from `/proc`.
fn rss_mb(server: &ServerProcess) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{}/status", server.pid())).unwrap();
    let kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/<pid>/status");
    kb / 1024.0
}

/// A running server with `tick` applied, and one channel to it.
async fn setup(dir: &std::path::Path) -> (ServerProcess, Channel) {
    let server = server(dir).await;
    let channel = server.channel().await;
    Clients::new(channel.clone()).apply(TICK).await;
    (server, channel)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixty_four_callers_dropping_each_watch_at_its_end_keep_one_connection() {
    const EXECUTIONS: usize = 20_000;
    let dir = tempfile::tempdir().unwrap();
    let (_server, channel) = setup(&dir.path().join("data")).await;
    let run = run(&channel, EXECUTIONS).await;
    run.assert_no_errors();
    // Every execution ran once and completed.
    wait_completed(&channel, EXECUTIONS, Duration::from_secs(60)).await;
    eprintln!("{EXECUTIONS} executions by {CALLERS} callers on one channel in {:.1?}", run.elapsed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn soak() {
    let executions: usize = match std::env::var("BATON_SOAK_EXECUTIONS") {
        Ok(text) => text.parse().unwrap_or_else(|_| panic!("BATON_SOAK_EXECUTIONS={text:?} does not parse")),
        Err(_) => 3_000,
    };
    let dir = tempfile::tempdir().unwrap();
    let (server, channel) = setup(&dir.path().join("data")).await;
    let rss_start = rss_mb(&server);
    let run = run(&channel, executions).await;
    let rss_end = rss_mb(&server);
    let rate = executions as f64 / run.elapsed.as_secs_f64();
    eprintln!("soak: {executions} executions by {CALLERS} callers on one connection in {:.1?}", run.elapsed);
    eprintln!("soak: executions per second {rate:.0}");
    eprintln!("soak: errors {}", run.errors.len());
    eprintln!("soak: server RSS start {rss_start:.1} MB, end {rss_end:.1} MB");
    run.assert_no_errors();
}
