//! `executor_overhead`: no-op in-process tasks through the whole executor, per DAG shape and
//! size, beside the same DAGs of no-op tasks on dagrs (an existing Rust DAG engine).
//! `executor_critical_path`: tasks of seeded 1-20 ms durations on a layered DAG, ready-queue
//! scheduling against the seed design's level barrier, both beside the critical-path bound.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use baton_benches::dags::{Dag, level_barrier};
use baton_benches::report_figure;
use baton_core::ports::DiscardEvents;
use baton_core::{ExecutionId, ServiceId, SystemClock};
use baton_executor::{Config, InProcessInvoker, Outcome};
use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use dagrs::async_trait::async_trait;
use dagrs::{
    Action, CompletionStatus, Content, DagrsError, DefaultNode, EnvVar, ErrorCode, Graph, InChannels, Node, NodeId,
    NodeTable, OutChannels, Output,
};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

/// The widest fan-out/fan-in run on dagrs. dagrs's time on it grows much faster than its width
/// (measured here on 2 cores: 1,000 tasks in 28 ms, 10,000 in 0.55 s, 100,000 in 55 s, about
/// 1,800 tasks per second), so the 100,000-task fan would keep the bench busy for a quarter of an
/// hour; that case runs on Baton alone and its figure has no baseline. The chain and the layered
/// DAG run on dagrs at every size.
const DAGRS_MAX_FAN: usize = 10_000;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("a runtime")
}

fn executor(invoker: InProcessInvoker, per_run: usize) -> baton_executor::Executor<InProcessInvoker> {
    Config { max_in_flight_per_run: per_run, max_in_flight: per_run, ..Config::default() }.build(
        Arc::new(invoker),
        Arc::new(DiscardEvents),
        Arc::new(SystemClock),
    )
}

/// A no-op dagrs task that keeps the DAG's order. dagrs starts every node of a graph at once
/// and orders them only through their channels, so a node waits for one message from each
/// predecessor and then sends one to each successor: the least a dagrs task must do to run
/// after its dependencies, as a Baton task does. (dagrs's own `run_overhead` bench skips this,
/// so its chain runs unordered.)
struct DagrsNoop;

#[async_trait]
impl Action for DagrsNoop {
    async fn run(&self, inputs: &mut InChannels, outputs: &mut OutChannels, _env: Arc<EnvVar>) -> Output {
        if inputs.map(|received| received.is_ok()).await.contains(&false) {
            return Output::error(DagrsError::new(ErrorCode::DgRun0006NodeExecutionFailed, "a predecessor closed"));
        }
        outputs.broadcast(Content::new(())).await;
        Output::empty()
    }
}

/// `dag` as a dagrs graph of [`DagrsNoop`] nodes, one channel per dependency.
fn dagrs_graph(dag: &Dag) -> Graph {
    let mut table = NodeTable::default();
    let nodes: Vec<DefaultNode> =
        (0..dag.deps.len()).map(|i| DefaultNode::with_action(format!("t{i}"), DagrsNoop, &mut table)).collect();
    let ids: Vec<NodeId> = nodes.iter().map(Node::id).collect();
    let mut graph = Graph::new();
    for node in nodes {
        graph.add_node(node).expect("node names are unique");
    }
    let mut successors = vec![Vec::new(); ids.len()];
    for (i, deps) in dag.deps.iter().enumerate() {
        for &d in deps {
            successors[d].push(ids[i]);
        }
    }
    for (from, to) in successors.into_iter().enumerate().filter(|(_, to)| !to.is_empty()) {
        graph.add_edge(ids[from], to).expect("edges join existing nodes");
    }
    graph.set_env(EnvVar::new(table));
    graph
}

/// Runs `graph` to the end; its cycle check and partition into blocks happen here, inside
/// dagrs's start, where Baton does the equivalent in `RunSpec::new` (set-up): a little in
/// Baton's favour, small beside the run itself.
async fn run_dagrs(graph: &mut Graph, tasks: usize) {
    let report = graph.async_start().await.expect("a dagrs run of no-op tasks succeeds");
    assert!(matches!(report.status, CompletionStatus::Succeeded), "dagrs run aborted");
    assert_eq!(report.node_succeeded, tasks, "every dagrs node ran");
}

/// Baton's figure and dagrs's baseline: `runs` runs timed directly, building the spec or
/// graph outside the timing, in tasks per second.
fn tasks_per_second(size: usize, runs: usize, mut run: impl FnMut() -> Duration) -> f64 {
    let elapsed: Duration = (0..runs).map(|_| run()).sum();
    (runs * size) as f64 / elapsed.as_secs_f64()
}

fn executor_overhead(c: &mut Criterion) {
    let rt = runtime();
    let mut noop = InProcessInvoker::default();
    noop.register(ServiceId::new("s0").expect("valid id"), |_| async { Ok(serde_json::Value::Null) });
    let executor = executor(noop, 256);
    let mut group = c.benchmark_group("executor_overhead");
    group.sample_size(10);
    let cases = ["chain", "fan", "layered"];
    for (shape, size) in [1_000, 10_000, 100_000].into_iter().flat_map(|size| cases.map(|shape| (shape, size))) {
        let dag = match shape {
            "chain" => Dag::chain(size),
            "fan" => Dag::fan_out_in(size),
            _ => Dag::layered(size, 100),
        };
        group.throughput(Throughput::Elements(size as u64));
        // Checking the DAG (templates, validation) happens once per workflow version, not per
        // execution: every run is a new execution of one checked spec, as in production.
        let checked = dag.spec(1);
        group.bench_function(format!("baton/{shape}_{size}"), |b| {
            b.iter_batched(
                || checked.for_execution(ExecutionId::generate()),
                |spec| {
                    let outcome = rt.block_on(async {
                        executor.start(spec, serde_json::Value::Null, BTreeMap::new()).outcome().await
                    });
                    assert!(matches!(outcome, Outcome::Completed(_)), "{outcome:?}");
                },
                BatchSize::LargeInput,
            )
        });
        let on_dagrs = shape != "fan" || size <= DAGRS_MAX_FAN;
        // Building the graph (nodes, channels) is set-up too; the graph is returned so that
        // criterion drops it outside the timing.
        if on_dagrs {
            group.bench_function(format!("dagrs/{shape}_{size}"), |b| {
                b.iter_batched(
                    || dagrs_graph(&dag),
                    |mut graph| {
                        rt.block_on(run_dagrs(&mut graph, size));
                        graph
                    },
                    BatchSize::LargeInput,
                )
            });
        }
        // A direct measure for the figures: ten runs (three of the 100k DAGs), tasks per second.
        let runs = if size >= 100_000 { 3 } else { 10 };
        let baton = tasks_per_second(size, runs, || {
            let spec = checked.for_execution(ExecutionId::generate());
            let started = Instant::now();
            rt.block_on(async { executor.start(spec, serde_json::Value::Null, BTreeMap::new()).outcome().await });
            started.elapsed()
        });
        let dagrs = on_dagrs.then(|| {
            tasks_per_second(size, runs, || {
                let mut graph = dagrs_graph(&dag);
                let started = Instant::now();
                rt.block_on(run_dagrs(&mut graph, size));
                let elapsed = started.elapsed();
                drop(graph);
                elapsed
            })
        });
        let baseline = if on_dagrs {
            "baseline: dagrs".to_owned()
        } else {
            format!("no baseline: dagrs capped at {DAGRS_MAX_FAN}")
        };
        let target = (shape == "layered" && size == 10_000).then_some(">= 1000000");
        report_figure(
            "executor_overhead",
            &format!("{shape} {size}: no-op tasks per second ({baseline})"),
            baton,
            "1/s",
            dagrs,
            target,
        );
    }
    group.finish();
}

fn executor_critical_path(c: &mut Criterion) {
    let rt = runtime();
    let dag = Dag::layered(200, 20);
    let mut rng = SmallRng::seed_from_u64(42);
    let durations: Arc<Vec<Duration>> =
        Arc::new((0..200).map(|_| Duration::from_millis(rng.random_range(1..=20))).collect());
    let bound = dag.critical_path(&durations);
    // What each task really took in the last run: a tokio sleep ends on the timer's next
    // millisecond tick, so tasks overrun their nominal time whatever schedules them. The
    // scheduler's own cost is the wall time over the critical path of the real durations.
    let taken: Arc<Vec<AtomicU64>> = Arc::new((0..200).map(|_| AtomicU64::new(0)).collect());
    let sleep_for = {
        let (durations, taken) = (Arc::clone(&durations), Arc::clone(&taken));
        move |i: usize| {
            let (d, taken) = (durations[i], Arc::clone(&taken));
            async move {
                let started = Instant::now();
                tokio::time::sleep(d).await;
                taken[i].store(started.elapsed().as_nanos() as u64, Ordering::Relaxed);
            }
        }
    };
    let real_bound = |taken: &[AtomicU64]| {
        let real: Vec<Duration> = taken.iter().map(|t| Duration::from_nanos(t.load(Ordering::Relaxed))).collect();
        dag.critical_path(&real)
    };
    let mut invoker = InProcessInvoker::default();
    for i in 0..200 {
        let sleep_for = sleep_for.clone();
        invoker.register(ServiceId::new(&format!("s{i}")).expect("valid id"), move |_| {
            let slept = sleep_for(i);
            async move {
                slept.await;
                Ok(serde_json::Value::Null)
            }
        });
    }
    let checked = dag.spec(200);
    let executor = executor(invoker, 256);
    let mut group = c.benchmark_group("executor_critical_path");
    group.sample_size(10);
    // Per run: wall time, and the critical path of what the tasks really took.
    let mut ready_queue = Vec::new();
    group.bench_function("baton/layered_200", |b| {
        b.iter(|| {
            let spec = checked.for_execution(ExecutionId::generate());
            let started = Instant::now();
            rt.block_on(async { executor.start(spec, serde_json::Value::Null, BTreeMap::new()).outcome().await });
            ready_queue.push((started.elapsed(), real_bound(&taken)));
        })
    });
    let mut barrier = Vec::new();
    group.bench_function("baseline/layered_200", |b| {
        b.iter(|| {
            let started = Instant::now();
            let sleep_for = sleep_for.clone();
            rt.block_on(level_barrier(&dag, Arc::new(sleep_for)));
            barrier.push((started.elapsed(), real_bound(&taken)));
        })
    });
    group.finish();
    // A criterion filter that leaves these cases out leaves nothing to report.
    if ready_queue.is_empty() || barrier.is_empty() {
        return;
    }
    let median = |mut ratios: Vec<f64>| {
        ratios.sort_by(f64::total_cmp);
        ratios[ratios.len() / 2]
    };
    let of_real =
        |runs: &[(Duration, Duration)]| median(runs.iter().map(|(w, b)| w.as_secs_f64() / b.as_secs_f64()).collect());
    let of_nominal = |runs: &[(Duration, Duration)]| {
        median(runs.iter().map(|(w, _)| w.as_secs_f64() / bound.as_secs_f64()).collect())
    };
    report_figure(
        "executor_critical_path",
        "ready queue, wall time / critical path of the real task times",
        of_real(&ready_queue),
        "x",
        None,
        Some("<= 1.05"),
    );
    report_figure(
        "executor_critical_path",
        "level barrier, wall time / critical path of the real task times",
        of_real(&barrier),
        "x",
        None,
        None,
    );
    report_figure(
        "executor_critical_path",
        "ready queue, wall time / critical path of the nominal 1-20 ms (timer ticks included)",
        of_nominal(&ready_queue),
        "x",
        None,
        None,
    );
    report_figure(
        "executor_critical_path",
        "level barrier, wall time / critical path of the nominal 1-20 ms (timer ticks included)",
        of_nominal(&barrier),
        "x",
        None,
        None,
    );
}

criterion_group!(benches, executor_overhead, executor_critical_path);
criterion_main!(benches);
