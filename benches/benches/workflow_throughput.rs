//! `workflow_throughput`: executions per second of a 5-step workflow whose steps are
//! in-process no-ops, durable on redb, and each execution's start-to-completion latency at
//! p50 and p99; beside it in the same run, a workflow with control flow: a call, a `switch`
//! whose chosen case calls once more, and a `for` over 10 items calling once per item, all 10
//! at once (12 calls in all).
//!
//! The whole path is the production one but for the network: the workflow engine journals
//! every event to redb (group commit, fsync per batch) and gives each step's completion to the
//! executor only once it is on disk, so a chain of five steps costs five durable appends in
//! sequence plus `Started` and `Completed`. Clients run closed loops: start an execution, wait
//! for it to finish, start the next.
//!
//! Then the 5-step workflow on PostgreSQL, with a lone server's single-writer journal and as
//! the node of a cluster whose every write is checked against its partition's epoch, side by
//! side (see [`postgres_fenced_against_single_writer`]).

use std::sync::Arc;
use std::time::Duration;

use baton::{ExecutorRunner, Router};
use baton_benches::{closed_loop, quantile, report_figure};
use baton_core::{Event, EventSink, ExecutionState, Ownership, ServiceId, Store, SystemClock, WorkflowName};
use baton_executor::{Call, InProcessInvoker};
use baton_store::RedbStore;
use baton_store::postgres::{Config as PgConfig, PostgresStore};
use baton_store::testing::PgCluster;
use baton_workflow::{Config, Engine};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use serde_json::json;

const WORKFLOW: &str = r#"
name: five
steps:
  - {id: s1, service: noop, input: "${ .input.n }"}
  - {id: s2, service: noop, depends_on: [s1], input: "${ .steps.s1.output }"}
  - {id: s3, service: noop, depends_on: [s2], input: "${ .steps.s2.output }"}
  - {id: s4, service: noop, depends_on: [s3], input: "${ .steps.s3.output }"}
  - {id: s5, service: noop, depends_on: [s4], input: "${ .steps.s4.output }"}
output: "${ .steps.s5.output }"
"#;

const CONTROL_FLOW: &str = r#"
name: control-flow
steps:
  - {id: s1, service: noop, input: "${ .input.n }"}
  - id: route
    depends_on: [s1]
    switch:
      - name: many
        when: "${ .steps.s1.output > 0 }"
        steps: [{id: pick, service: noop, input: "${ .input.items }"}]
      - name: none
        steps: [{id: pick, set: []}]
  - id: each
    depends_on: [route]
    for: { in: "${ .steps.route.output }", concurrency: 10 }
    steps: [{id: item, service: noop, input: "${ $item }"}]
output: "${ .steps.each.output | length }"
"#;

/// Executions per criterion iteration.
const PER_ITERATION: usize = 1_000;
/// Executions of each direct measurement for the figures.
const MEASURED: usize = 6_000;

type BenchEngine<S = RedbStore> = Engine<S, ExecutorRunner<InProcessInvoker>>;

/// Executions of each PostgreSQL measurement: the single-writer journal and the cluster's.
const MEASURED_POSTGRES: usize = 3_000;

async fn engine(dir: &std::path::Path) -> BenchEngine {
    let store = RedbStore::open(dir).await.expect("the redb store opens");
    engine_on(store, Config::default()).await
}

async fn engine_on<S: Store>(store: S, config: Config) -> BenchEngine<S> {
    let mut invoker = InProcessInvoker::default();
    invoker.register(ServiceId::new("noop").expect("a valid id"), |call: Call| async move { Ok(call.payload) });
    let router = Arc::new(Router::default());
    let executor = baton_executor::Config::default().build(
        Arc::new(invoker),
        Arc::clone(&router) as Arc<dyn EventSink<Event>>,
        Arc::new(SystemClock),
    );
    let runner = ExecutorRunner::new(executor, router);
    let engine = Engine::open(config, store, runner).await.expect("the engine opens");
    engine.apply(WORKFLOW).await.expect("the workflow applies");
    engine.apply(CONTROL_FLOW).await.expect("the control-flow workflow applies");
    engine
}

/// Runs `executions` executions from `clients` closed-loop clients; the wall time and every
/// execution's start-to-completion latency.
async fn drive<S: Store>(
    engine: &BenchEngine<S>,
    workflow: &str,
    executions: usize,
    clients: usize,
) -> (Duration, Vec<Duration>) {
    let name = WorkflowName::new(workflow).expect("a valid name");
    let input = json!({"n": 1, "items": (0..10).collect::<Vec<u32>>()});
    closed_loop(clients, executions, || {
        let (engine, name, input) = (engine.clone(), name.clone(), input.clone());
        move |_| {
            let (engine, name, input) = (engine.clone(), name.clone(), input.clone());
            async move {
                let id = engine.start(&name, None, input, None).await.expect("starts");
                let finished = engine.wait(id).await.expect("finishes");
                assert_eq!(finished.state, ExecutionState::Completed, "{:?}", finished.error);
            }
        }
    })
    .await
}

fn workflow_throughput(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("a runtime");
    let dir = tempfile::tempdir().expect("a temp dir");
    let engine = rt.block_on(engine(dir.path()));

    let mut group = c.benchmark_group("workflow_throughput");
    group.sample_size(10);
    group.throughput(Throughput::Elements(PER_ITERATION as u64));
    for clients in [64, 256] {
        group.bench_function(format!("baton/five_steps_redb_{clients}_clients"), |b| {
            b.iter_custom(|iters| {
                (0..iters).map(|_| rt.block_on(drive(&engine, "five", PER_ITERATION, clients)).0).sum()
            })
        });
    }
    group.bench_function("baton/control_flow_redb_64_clients", |b| {
        b.iter_custom(|iters| {
            (0..iters).map(|_| rt.block_on(drive(&engine, "control-flow", PER_ITERATION, 64)).0).sum()
        })
    });
    group.finish();

    let runs = [
        ("five", 64, "5-step workflow"),
        ("five", 256, "5-step workflow"),
        ("control-flow", 64, "switch and 10-item parallel for"),
    ];
    for (workflow, clients, what) in runs {
        let (elapsed, mut latencies) = rt.block_on(drive(&engine, workflow, MEASURED, clients));
        assert_eq!(latencies.len(), MEASURED, "one latency per execution");
        latencies.sort_unstable();
        let name = format!("{what} on redb, {clients} clients");
        report_figure(
            "workflow_throughput",
            &format!("{name}: executions per second"),
            MEASURED as f64 / elapsed.as_secs_f64(),
            "1/s",
            None,
            (workflow == "five").then_some(">= 2000"),
        );
        for (label, q) in [("p50", 0.5), ("p99", 0.99)] {
            report_figure(
                "workflow_throughput",
                &format!("{name}: start-to-completion {label}"),
                quantile(&latencies, q).as_secs_f64() * 1e3,
                "ms",
                None,
                None,
            );
        }
    }
    drop(engine);
    postgres_fenced_against_single_writer(&rt);
}

/// The 5-step workflow on PostgreSQL, 64 clients: with the single-writer journal of a lone
/// server, then as the one node of a cluster (P = 64, every write checked against its
/// partition's epoch), shown against the first (target: at most 10% slower). Each on a fresh
/// database of one throwaway server.
fn postgres_fenced_against_single_writer(rt: &tokio::runtime::Runtime) {
    let cluster = PgCluster::start();
    let single = rt.block_on(async {
        let url = cluster.create_database().await;
        let store = PostgresStore::connect(&PgConfig::new(url)).await.expect("the postgres store connects");
        engine_on(store, Config::default()).await
    });
    let (single_rate, single_p50) = measure_postgres(rt, &single);
    drop(single);
    let (fenced, member) = rt.block_on(async {
        let url = cluster.create_database().await;
        let (store, member) = baton_benches::partitioned_postgres(&url).await;
        let ownership: Arc<dyn Ownership> = Arc::new(member.clone());
        (engine_on(store, Config { ownership: Some(ownership), ..Config::default() }).await, member)
    });
    let (fenced_rate, fenced_p50) = measure_postgres(rt, &fenced);
    drop(fenced);
    rt.block_on(async { member.leave().await.expect("the bench node leaves") });
    let bench = "workflow_throughput";
    let name = "5-step workflow on postgres, 64 clients";
    report_figure(bench, &format!("{name}, single writer: executions per second"), single_rate, "1/s", None, None);
    report_figure(bench, &format!("{name}, single writer: start-to-completion p50"), single_p50, "ms", None, None);
    report_figure(
        bench,
        &format!("{name}, 64 partitions fenced: executions per second"),
        fenced_rate,
        "1/s",
        Some(single_rate),
        Some(">= 0.9x"),
    );
    report_figure(
        bench,
        &format!("{name}, 64 partitions fenced: start-to-completion p50"),
        fenced_p50,
        "ms",
        None,
        None,
    );
}

/// Executions per second and the p50 latency (ms) of the 5-step workflow, 64 clients, after a
/// warm-up of a tenth as many.
fn measure_postgres<S: Store>(rt: &tokio::runtime::Runtime, engine: &BenchEngine<S>) -> (f64, f64) {
    rt.block_on(drive(engine, "five", MEASURED_POSTGRES / 10, 64));
    let (elapsed, mut latencies) = rt.block_on(drive(engine, "five", MEASURED_POSTGRES, 64));
    latencies.sort_unstable();
    (MEASURED_POSTGRES as f64 / elapsed.as_secs_f64(), quantile(&latencies, 0.5).as_secs_f64() * 1e3)
}

criterion_group!(benches, workflow_throughput);
criterion_main!(benches);
