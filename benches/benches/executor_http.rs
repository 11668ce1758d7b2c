//! `executor_http`: 10,000 independent tasks through the HTTP invoker against a local no-op
//! service (axum on loopback, answering `{}`), at most 64 in flight in the run: requests per
//! second, and the per-task latency at p50 and p99.
//!
//! Client and service share the bench's runtime (two workers), as they share the machine, so
//! the figures are the executor's and hyper's cost per call on loopback, not a network's.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::http::header::CONTENT_TYPE;
use axum::routing::post;
use baton_benches::dags::Dag;
use baton_benches::{quantile, report_figure};
use baton_core::ports::EventSink;
use baton_core::{Event, EventKind, ServiceId, ServiceSpec, StepId, SystemClock, Timestamp};
use baton_executor::{Config, Executor, HttpConfig, HttpInvoker, Outcome};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};

/// Tasks per run.
const TASKS: usize = 10_000;
/// The run's in-flight limit.
const IN_FLIGHT: usize = 64;
/// Runs timed directly for the figures.
const RUNS: usize = 3;

/// The per-task latency is read from the executor's own events, from `TaskScheduled` to
/// `TaskSucceeded`, rather than timed in a wrapper around the invoker. The executor emits
/// `TaskScheduled` once the task holds its permits, just before it calls the invoker, and
/// `TaskSucceeded` just after the call returns, so the span is the call as the executor
/// sees it: the HTTP round trip plus the wait for a worker between the two. It leaves out
/// the wait in the ready queue for one of the 64 slots, which with 10,000 tasks ready at once
/// only measures a task's place in the queue (up to the whole run). Events keep the invoker
/// under test exactly `HttpInvoker`, and they are what the journal records, so the same
/// figure can be read off a production run.
#[derive(Debug, Default)]
struct CallTimes {
    events: Mutex<Vec<(StepId, bool, Timestamp)>>,
}

impl EventSink<Event> for CallTimes {
    fn publish(&self, event: Event) {
        let (step, succeeded) = match event.kind {
            EventKind::TaskScheduled { step, .. } => (step, false),
            EventKind::TaskSucceeded { step, .. } => (step, true),
            _ => return,
        };
        self.events.lock().unwrap_or_else(PoisonError::into_inner).push((step, succeeded, event.at));
    }
}

impl CallTimes {
    /// The latency of each task since the last call, scheduled to succeeded.
    fn take(&self) -> Vec<Duration> {
        let events = std::mem::take(&mut *self.events.lock().unwrap_or_else(PoisonError::into_inner));
        let mut scheduled = HashMap::with_capacity(events.len() / 2);
        let mut latencies = Vec::with_capacity(events.len() / 2);
        for (step, succeeded, at) in events {
            if !succeeded {
                scheduled.insert(step, at);
            } else if let Some(start) = scheduled.remove(&step) {
                latencies.push((at - start).to_std().unwrap_or_default());
            }
        }
        latencies
    }
}

/// Serves the no-op service on a fresh loopback port; returns its URL.
async fn serve() -> String {
    let router = Router::new().route(
        "/noop",
        // The request body is read so that the connection can be reused.
        post(|_body: Bytes| async { ([(CONTENT_TYPE, "application/json")], "{}") }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("a loopback port");
    let addr = listener.local_addr().expect("a bound address");
    tokio::spawn(async move { axum::serve(listener, router).await.expect("the no-op service runs") });
    format!("http://{addr}/noop")
}

/// One run of the DAG's spec; panics unless every task succeeded.
async fn run(executor: &Executor<HttpInvoker>, dag: &Dag) -> Duration {
    let spec = dag.spec(1);
    let started = Instant::now();
    let outcome = executor.start(spec, serde_json::Value::Null, BTreeMap::new()).outcome().await;
    let elapsed = started.elapsed();
    assert!(matches!(outcome, Outcome::Completed(_)), "{outcome:?}");
    elapsed
}

fn executor_http(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("a runtime");
    let url = rt.block_on(serve());
    let spec =
        serde_json::json!({"id": "noop", "endpoint": {"protocol": "http", "url": url}, "capabilities": ["noop"]});
    let spec = Arc::new(ServiceSpec::from_json(&spec.to_string()).expect("a valid spec"));
    let invoker = HttpConfig::default().build(Arc::new(move |_: &ServiceId| Some(Arc::clone(&spec))));
    let times = Arc::new(CallTimes::default());
    let executor = Config { max_in_flight_per_run: IN_FLIGHT, ..Config::default() }.build(
        Arc::new(invoker),
        Arc::clone(&times) as Arc<dyn EventSink<Event>>,
        Arc::new(SystemClock),
    );
    let dag = Dag::independent(TASKS);

    let mut group = c.benchmark_group("executor_http");
    group.sample_size(10);
    group.throughput(Throughput::Elements(TASKS as u64));
    // Only the run is timed: building the spec before it and dropping the events after it
    // are not.
    group.bench_function(format!("baton/independent_{TASKS}"), |b| {
        b.iter_custom(|iters| {
            (0..iters)
                .map(|_| {
                    let elapsed = rt.block_on(run(&executor, &dag));
                    times.take();
                    elapsed
                })
                .sum()
        })
    });
    group.finish();

    // A direct measure for the figures: three runs, their requests per second and the
    // latency of all their tasks together.
    times.take();
    let elapsed: Duration = (0..RUNS).map(|_| rt.block_on(run(&executor, &dag))).sum();
    let mut latencies = times.take();
    assert_eq!(latencies.len(), RUNS * TASKS, "one latency per task");
    latencies.sort_unstable();
    let name = format!("{TASKS} independent tasks, {IN_FLIGHT} in flight");
    report_figure(
        "executor_http",
        &format!("{name}: requests per second"),
        (RUNS * TASKS) as f64 / elapsed.as_secs_f64(),
        "1/s",
        None,
        None,
    );
    for (label, q) in [("p50", 0.5), ("p99", 0.99)] {
        report_figure(
            "executor_http",
            &format!("{name}: task latency {label}, scheduled to succeeded"),
            quantile(&latencies, q).as_secs_f64() * 1e3,
            "ms",
            None,
            None,
        );
    }
}

criterion_group!(benches, executor_http);
criterion_main!(benches);
