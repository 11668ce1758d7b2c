//! `executor_overhead`: no-op in-process tasks through the whole executor, per DAG shape and
//! size. `executor_critical_path`: tasks of seeded 1-20 ms durations on a layered DAG, ready-queue
//! scheduling against the seed design's level barrier, both beside the critical-path bound.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use baton_benches::dags::{Dag, level_barrier};
use baton_benches::report_figure;
use baton_core::ports::DiscardEvents;
use baton_core::{ServiceId, SystemClock};
use baton_executor::{Config, InProcessInvoker, Outcome};
use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

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

fn executor_overhead(c: &mut Criterion) {
    let rt = runtime();
    let mut noop = InProcessInvoker::default();
    noop.register(ServiceId::new("s0").expect("valid id"), |_| async { Ok(serde_json::Value::Null) });
    let executor = executor(noop, 256);
    let mut group = c.benchmark_group("executor_overhead");
    group.sample_size(10);
    for (shape, size) in
        [("chain", 1_000), ("fan", 1_000), ("layered", 1_000), ("chain", 10_000), ("fan", 10_000), ("layered", 10_000)]
    {
        let dag = match shape {
            "chain" => Dag::chain(size),
            "fan" => Dag::fan_out_in(size),
            _ => Dag::layered(size, 100),
        };
        group.throughput(Throughput::Elements(size as u64));
        // Building the spec (templates, validation) is not the scheduler's cost: set-up.
        group.bench_function(format!("baton/{shape}_{size}"), |b| {
            b.iter_batched(
                || dag.spec(1),
                |spec| {
                    let outcome = rt.block_on(async {
                        executor.start(spec, serde_json::Value::Null, BTreeMap::new()).outcome().await
                    });
                    assert!(matches!(outcome, Outcome::Completed(_)), "{outcome:?}");
                },
                BatchSize::LargeInput,
            )
        });
        // A direct measure for the figure: ten runs, tasks per second.
        let specs: Vec<_> = (0..10).map(|_| dag.spec(1)).collect();
        let started = Instant::now();
        for spec in specs {
            rt.block_on(async { executor.start(spec, serde_json::Value::Null, BTreeMap::new()).outcome().await });
        }
        let per_second = (10 * size) as f64 / started.elapsed().as_secs_f64();
        let target = (shape == "layered" && size == 10_000).then_some(">= 1000000");
        report_figure(
            "executor_overhead",
            &format!("{shape} {size}: no-op tasks per second"),
            per_second,
            "1/s",
            None,
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
    let mut invoker = InProcessInvoker::default();
    for i in 0..200 {
        let d = durations[i];
        invoker.register(ServiceId::new(&format!("s{i}")).expect("valid id"), move |_| async move {
            tokio::time::sleep(d).await;
            Ok(serde_json::Value::Null)
        });
    }
    let executor = executor(invoker, 256);
    let mut group = c.benchmark_group("executor_critical_path");
    group.sample_size(10);
    let mut ready_queue = Vec::new();
    group.bench_function("baton/layered_200", |b| {
        b.iter(|| {
            let started = Instant::now();
            rt.block_on(async {
                executor.start(dag.spec(200), serde_json::Value::Null, BTreeMap::new()).outcome().await
            });
            ready_queue.push(started.elapsed());
        })
    });
    let mut barrier = Vec::new();
    group.bench_function("baseline/layered_200", |b| {
        b.iter(|| {
            let started = Instant::now();
            let durations = Arc::clone(&durations);
            rt.block_on(level_barrier(
                &dag,
                Arc::new(move |i| {
                    let d = durations[i];
                    async move { tokio::time::sleep(d).await }
                }),
            ));
            barrier.push(started.elapsed());
        })
    });
    group.finish();
    let median = |mut v: Vec<Duration>| {
        v.sort();
        v[v.len() / 2].as_secs_f64() / bound.as_secs_f64()
    };
    report_figure(
        "executor_critical_path",
        "ready queue, wall time / critical path",
        median(ready_queue),
        "x",
        None,
        Some("<= 1.05"),
    );
    report_figure(
        "executor_critical_path",
        "level barrier, wall time / critical path",
        median(barrier),
        "x",
        None,
        None,
    );
}

criterion_group!(benches, executor_overhead, executor_critical_path);
criterion_main!(benches);
