//! `expression_bombs`: how other executions fare while some run expression bombs.
//!
//! A `baton serve` node in a process of its own (this bench's executable, see
//! `baton_benches::node`) with its default expression bounds: one evaluator process per core,
//! 1 s of CPU, 256 MiB each. The example shop's services, and three workflows: `order` (its
//! inputs plain paths, which the server reads itself), `order-jq` (the same with inputs that
//! need jq, so the evaluators) and `bomb` (one step whose input is `last(range(1e11))`,
//! which runs until its CPU time is up and fails the execution with `expression_limit`).
//!
//! `order` and `order-jq` run from [`CLIENTS`] closed-loop clients each, first alone and then
//! while [`BOMBERS`] more clients start bombs back to back. Figures: start-to-completion p50
//! and p99 of each, alone and beside the bombs; the bombs that ended meanwhile; the resident
//! memory of the server and its evaluators at their peak beside the bombs.

// Only the shop is used here: the server runs in a process of its own.
#[allow(dead_code)]
mod e2e;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use baton_benches::node::{NodeProcess, serve_if_node};
use baton_benches::{quantile, report_figure, resident_bytes_of};
use baton_grpc::pb;
use tonic::transport::Channel;

const BENCH: &str = "expression_bombs";
/// Clients of each measured workflow.
const CLIENTS: usize = 8;
/// Clients starting bombs back to back: twice the evaluators of a 2-core machine.
const BOMBERS: usize = 4;
/// Executions of each workflow measured per phase (`BATON_BENCH_BOMBS_MEASURED` to change).
const MEASURED: usize = 400;

const ORDER_JQ: &str = r#"
name: order-jq
defaults: { timeout: 5s }
steps:
  - id: reserve
    query: { capabilities: [inventory.reserve], protocols: [http] }
    input: { sku: "${ .input.sku | ascii_downcase }", quantity: "${ .input.quantity + 0 }" }
  - id: charge
    query: { capabilities: [payment.charge], protocols: [http] }
    input: { amount: "${ .input.amount * 1 }" }
  - id: ship
    query: { capabilities: [shipping.ship], protocols: [http] }
    depends_on: [reserve, charge]
    input: { reservation: "${ .steps.reserve.output.id }", receipt: "${ .steps.charge.output.receipt }" }
"#;

const BOMB: &str = r#"
name: bomb
steps:
  - id: boom
    query: { capabilities: [inventory.reserve], protocols: [http] }
    input: { count: "${ last(range(1e11)) }" }
"#;

fn main() {
    if serve_if_node() {
        return;
    }
    let measured: usize =
        std::env::var("BATON_BENCH_BOMBS_MEASURED").map_or(MEASURED, |v| v.parse().expect("a count of executions"));
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("a runtime");
    let dir = tempfile::tempdir().expect("a temp dir");
    let data = dir.path().join("data");
    let data = data.to_str().expect("a UTF-8 path");
    let node = NodeProcess::start(&["--data-dir", data, "--rate-limit", "1000000"], None, &dir.path().join("node.log"));
    rt.block_on(async {
        let (channel, _services) = e2e::shop(node.grpc.clone()).await;
        let mut workflows = pb::workflow_service_client::WorkflowServiceClient::new(channel.clone());
        for source in [ORDER_JQ, BOMB] {
            let request =
                pb::ApplyDefinitionRequest { source: source.to_owned(), format: pb::DefinitionFormat::Yaml as i32 };
            workflows.apply_definition(request).await.expect("the workflow applies");
        }
        // Warm up: the evaluators start, the services' connections open.
        for workflow in ["order", "order-jq"] {
            measure(&channel, workflow, measured / 10).await;
        }
        let alone = [measure(&channel, "order", measured).await, measure(&channel, "order-jq", measured).await];

        let stop = Arc::new(AtomicBool::new(false));
        let bombs = Arc::new(AtomicU64::new(0));
        let bombers: Vec<_> = (0..BOMBERS)
            .map(|_| tokio::spawn(bomber(channel.clone(), Arc::clone(&stop), Arc::clone(&bombs))))
            .collect();
        let peak = tokio::spawn(peak_resident(node.pid(), Arc::clone(&stop)));
        // Let the bombs take the evaluators before measuring.
        tokio::time::sleep(Duration::from_secs(3)).await;
        let bombs_before = bombs.load(Ordering::Relaxed);
        let begun = Instant::now();
        let beside = [measure(&channel, "order", measured).await, measure(&channel, "order-jq", measured).await];
        let bomb_rate = (bombs.load(Ordering::Relaxed) - bombs_before) as f64 / begun.elapsed().as_secs_f64();
        stop.store(true, Ordering::Relaxed);
        for bomber in bombers {
            bomber.await.expect("a bomber ends");
        }
        let peak = peak.await.expect("the sampler ends");

        for (workflow, (alone, beside)) in
            ["order (plain paths)", "order-jq (jq)"].iter().zip(alone.iter().zip(&beside))
        {
            for (label, q) in [("p50", 0.5), ("p99", 0.99)] {
                let name = format!("{workflow}, {CLIENTS} clients: start-to-completion {label}");
                let (alone, beside) = (ms(quantile(alone, q)), ms(quantile(beside, q)));
                report_figure(BENCH, &format!("{name} alone"), alone, "ms", None, None);
                report_figure(BENCH, &format!("{name} beside {BOMBERS} bombers"), beside, "ms", Some(alone), None);
            }
        }
        report_figure(BENCH, &format!("bombs stopped per second, {BOMBERS} bombers"), bomb_rate, "1/s", None, None);
        let mib = peak as f64 / (1 << 20) as f64;
        report_figure(
            BENCH,
            "peak resident memory of the server and its evaluators beside the bombs",
            mib,
            "MiB",
            None,
            None,
        );
    });
    drop(node);
}

fn ms(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1e3
}

/// Latencies, sorted, of `executions` executions of `workflow` from [`CLIENTS`] clients.
async fn measure(channel: &Channel, workflow: &'static str, executions: usize) -> Vec<Duration> {
    let (_, mut latencies) = baton_benches::closed_loop(CLIENTS, executions, || {
        let client = pb::execution_service_client::ExecutionServiceClient::new(channel.clone());
        move |n| {
            let mut client = client.clone();
            async move {
                let failure = run(&mut client, workflow, n).await;
                assert_eq!(failure, None, "{workflow} failed");
            }
        }
    })
    .await;
    latencies.sort_unstable();
    latencies
}

/// Starts bombs back to back until `stop`, counting those that ended failed.
async fn bomber(channel: Channel, stop: Arc<AtomicBool>, bombs: Arc<AtomicU64>) {
    let mut client = pb::execution_service_client::ExecutionServiceClient::new(channel);
    let mut n = 0;
    while !stop.load(Ordering::Relaxed) {
        let failure = run(&mut client, "bomb", n).await.expect("a bomb fails its execution");
        assert!(failure.contains("expression_limit"), "a bomb failed otherwise: {failure}");
        bombs.fetch_add(1, Ordering::Relaxed);
        n += 1;
    }
}

/// One execution of `workflow`, from its start to the end of its watch: `None` when it
/// completed, else why it failed.
async fn run(
    client: &mut pb::execution_service_client::ExecutionServiceClient<Channel>,
    workflow: &str,
    n: usize,
) -> Option<String> {
    let request = pb::StartExecutionRequest {
        workflow: workflow.to_owned(),
        input_json: format!(r#"{{"sku": "BOOK-{n}", "quantity": 1, "amount": 12.5}}"#),
        ..Default::default()
    };
    let id = client.start_execution(request).await.expect("starts").into_inner().execution.expect("an execution").id;
    let request = pb::WatchExecutionRequest { id, from_sequence: 0 };
    let mut events = client.watch_execution(request).await.expect("watches").into_inner();
    let mut ended = None;
    while let Some(event) = events.message().await.expect("the watch streams") {
        match event.event.and_then(|e| e.kind) {
            Some(pb::event::Kind::Completed(_)) => ended = Some(None),
            Some(pb::event::Kind::Failed(failed)) => ended = Some(Some(failed.error)),
            _ => {}
        }
    }
    ended.expect("the watch ended with the execution")
}

/// The largest resident memory of process `pid` and its children together, sampled every
/// 100 ms until `stop`.
async fn peak_resident(pid: u32, stop: Arc<AtomicBool>) -> u64 {
    let mut peak = 0;
    while !stop.load(Ordering::Relaxed) {
        let tree: u64 = std::iter::once(pid).chain(children(pid)).filter_map(resident_bytes_of).sum();
        peak = peak.max(tree);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    peak
}

/// The processes whose parent is `pid`, from `/proc/<pid>/stat`.
fn children(pid: u32) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else { return Vec::new() };
    entries
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|candidate| {
            let stat = std::fs::read_to_string(format!("/proc/{candidate}/stat")).unwrap_or_default();
            // After the command name's `)`: state, then the parent's id.
            stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().nth(1)?.parse::<u32>().ok()) == Some(pid)
        })
        .collect()
}
