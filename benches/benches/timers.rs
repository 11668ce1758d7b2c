//! `timers`: durable timers armed, then fired, on redb and on PostgreSQL. Each execution is one
//! `wait` until a time from its input, then a `set`; the engine parks an execution that only
//! waits (out of memory, listed in the store by wake time) and loads it back as it comes due.
//!
//! The figures come from one large run per store (`BATON_BENCH_TIMERS`, default 100,000): every
//! timer is armed for one moment after the last is armed; then the rate at which they fire
//! (timers completed per second from that moment) and each timer's lateness (its completion
//! event's time minus its due time) at p50 and p99. Criterion measures a small arm-and-fire
//! round of 1,000 timers on each store beside it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use baton::{ExecutorRunner, Router};
use baton_benches::{quantile, report_figure};
use baton_core::{Event, EventKind, EventSink, ExecutionId, ExecutionState, Store, SystemClock, WorkflowName};
use baton_executor::InProcessInvoker;
use baton_store::RedbStore;
use baton_store::postgres::{Config as PgConfig, PostgresStore};
use baton_store::testing::PgCluster;
use baton_workflow::{Config, Engine};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use serde_json::json;
use tokio::runtime::Runtime;

const WORKFLOW: &str = r#"
name: timer
steps:
  - { id: nap, wait: { until: "${ .input.at }" } }
  - { id: done, set: "${ .input.n }", depends_on: [nap] }
output: "${ .steps.done.output }"
"#;

/// Timers per criterion round.
const ROUND: usize = 1_000;
/// Callers arming timers at once.
const ARMERS: usize = 64;

type TimerEngine<S> = Engine<S, ExecutorRunner<InProcessInvoker>>;

async fn engine<S: Store + Clone>(store: S) -> TimerEngine<S> {
    let router = Arc::new(Router::default());
    let executor = baton_executor::Config::default().build(
        Arc::new(InProcessInvoker::default()),
        Arc::clone(&router) as Arc<dyn EventSink<Event>>,
        Arc::new(SystemClock),
    );
    let config = Config {
        park_after: Some(Duration::from_millis(100)),
        park_poll: Duration::from_millis(50),
        ..Config::default()
    };
    let engine = Engine::open(config, store, ExecutorRunner::new(executor, router)).await.expect("the engine opens");
    engine.apply(WORKFLOW).await.expect("the workflow applies");
    engine
}

/// Microseconds since the epoch.
fn epoch_micros(at: chrono::DateTime<chrono::Utc>) -> i64 {
    at.timestamp_micros()
}

/// Arms `count` timers due `lead` after the call, from [`ARMERS`] callers; their ids and the
/// due time (whole milliseconds, in microseconds since the epoch).
async fn arm<S: Store + Clone>(engine: &TimerEngine<S>, count: usize, lead: Duration) -> (Vec<ExecutionId>, i64) {
    let due_ms = chrono::Utc::now().timestamp_millis() + lead.as_millis() as i64;
    let (due, at) = (due_ms * 1000, due_ms as f64 / 1000.0);
    let name = WorkflowName::new("timer").expect("a valid name");
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut armers = tokio::task::JoinSet::new();
    for _ in 0..ARMERS {
        let (engine, name, next) = (engine.clone(), name.clone(), Arc::clone(&next));
        armers.spawn(async move {
            let mut ids = Vec::new();
            loop {
                let n = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if n >= count {
                    return ids;
                }
                ids.push(engine.start(&name, None, json!({"n": n, "at": at}), None).await.expect("starts"));
            }
        });
    }
    let mut ids = Vec::with_capacity(count);
    while let Some(armed) = armers.join_next().await {
        ids.extend(armed.expect("an armer ends"));
    }
    (ids, due)
}

/// Waits for every timer; each one's lateness, from its completion event.
async fn fired<S: Store + Clone>(engine: &TimerEngine<S>, store: &S, ids: &[ExecutionId], due: i64) -> Vec<Duration> {
    let mut lateness = Vec::with_capacity(ids.len());
    for &id in ids {
        let done = engine.wait(id).await.expect("finishes");
        assert_eq!(done.state, ExecutionState::Completed, "{:?}", done.error);
        let journal = store.read_journal(id, 1).await.expect("the journal reads");
        let fired_at = journal
            .iter()
            .find(|e| matches!(&e.kind, EventKind::TaskSucceeded { step, .. } if step.as_str() == "nap"))
            .map(|e| epoch_micros(e.at))
            .expect("the timer fired");
        assert!(fired_at >= due, "a timer fired {} µs early", due - fired_at);
        lateness.push(Duration::from_micros((fired_at - due) as u64));
    }
    lateness
}

/// One large run on `store`: the figures.
fn figures<S: Store + Clone>(runtime: &Runtime, label: &str, store: S, count: usize) {
    runtime.block_on(async {
        let engine = engine(store.clone()).await;
        let started = Instant::now();
        // Due well after the last is armed: arming runs at a few thousand per second.
        let lead = Duration::from_secs(5) + Duration::from_secs_f64(count as f64 / 2_000.0);
        let (ids, due) = arm(&engine, count, lead).await;
        let armed = started.elapsed();
        let resident_while_waiting = baton_benches::resident_bytes();
        let mut lateness = fired(&engine, &store, &ids, due).await;
        lateness.sort_unstable();
        let last = *lateness.last().expect("timers");
        report_figure(
            "timers",
            &format!("{label}: {count} timers armed per second"),
            count as f64 / armed.as_secs_f64(),
            "1/s",
            None,
            None,
        );
        report_figure(
            "timers",
            &format!("{label}: timers fired per second"),
            count as f64 / last.as_secs_f64().max(1e-3),
            "1/s",
            None,
            None,
        );
        for (name, q) in [("p50", 0.5), ("p99", 0.99)] {
            report_figure(
                "timers",
                &format!("{label}: lateness {name}"),
                quantile(&lateness, q).as_secs_f64() * 1e3,
                "ms",
                None,
                None,
            );
        }
        if let Some(bytes) = resident_while_waiting {
            report_figure(
                "timers",
                &format!("{label}: resident memory with every timer armed"),
                bytes as f64 / (1 << 20) as f64,
                "MiB",
                None,
                None,
            );
        }
    });
}

fn timers(c: &mut Criterion) {
    let runtime =
        tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("a runtime");
    let count: usize = std::env::var("BATON_BENCH_TIMERS").ok().and_then(|v| v.parse().ok()).unwrap_or(100_000);
    let dir = tempfile::tempdir().expect("a temp dir");
    let cluster = PgCluster::start_in(dir.path());
    let postgres = || {
        runtime
            .block_on(async { PostgresStore::connect(&PgConfig::new(cluster.create_database().await)).await })
            .expect("postgres store connects")
    };

    let mut group = c.benchmark_group("timers");
    group.sample_size(10);
    group.throughput(Throughput::Elements(ROUND as u64));
    let redb = runtime.block_on(RedbStore::open(&dir.path().join("round"))).expect("redb opens");
    let redb_engine = runtime.block_on(engine(redb.clone()));
    group.bench_function("baton/arm_and_fire_1000_redb", |b| {
        b.iter_custom(|iters| {
            (0..iters)
                .map(|_| {
                    let started = Instant::now();
                    runtime.block_on(async {
                        let (ids, due) = arm(&redb_engine, ROUND, Duration::from_millis(300)).await;
                        fired(&redb_engine, &redb, &ids, due).await;
                    });
                    started.elapsed()
                })
                .sum()
        })
    });
    drop(redb_engine);
    let pg = postgres();
    let pg_engine = runtime.block_on(engine(pg.clone()));
    group.bench_function("baton/arm_and_fire_1000_postgres", |b| {
        b.iter_custom(|iters| {
            (0..iters)
                .map(|_| {
                    let started = Instant::now();
                    runtime.block_on(async {
                        let (ids, due) = arm(&pg_engine, ROUND, Duration::from_millis(300)).await;
                        fired(&pg_engine, &pg, &ids, due).await;
                    });
                    started.elapsed()
                })
                .sum()
        })
    });
    drop(pg_engine);
    group.finish();

    let redb = runtime.block_on(RedbStore::open(&dir.path().join("large"))).expect("redb opens");
    figures(&runtime, "redb", redb, count);
    figures(&runtime, "postgres", postgres(), count);
}

criterion_group!(benches, timers);
criterion_main!(benches);
