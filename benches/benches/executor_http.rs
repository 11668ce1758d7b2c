//! `executor_http`: 10,000 independent tasks through the HTTP invoker against a local no-op
//! service (axum on loopback, answering `{}`), at most 64 in flight in the run: requests per
//! second, and the per-task latency at p50 and p99; over plain HTTP/1.1, and over HTTPS (TLS
//! 1.3, HTTP/2 by ALPN, a throwaway CA) in the same run, with the TLS overhead per call.
//!
//! Client and service share the bench's runtime (two workers), as they share the machine, so
//! the figures are the executor's and hyper's cost per call on loopback, not a network's.
//! Connections are pooled: the TLS figures are the steady state of a warm pool (one run before
//! the measured ones opens it), the handshakes amortised.

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
use baton_examples::pki::TestPki;
use baton_examples::tls;
use baton_executor::{Config, Executor, HttpConfig, HttpInvoker, Outcome, TrustRoots};
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

/// Serves the no-op service on a fresh loopback port, over TLS when `tls` is given; returns
/// its URL.
async fn serve(tls: Option<&TestPki>) -> String {
    let router = Router::new().route(
        "/noop",
        // The request body is read so that the connection can be reused.
        post(|_body: Bytes| async { ([(CONTENT_TYPE, "application/json")], "{}") }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("a loopback port");
    let addr = listener.local_addr().expect("a bound address");
    match tls {
        None => {
            tokio::spawn(async move { axum::serve(listener, router).await.expect("the no-op service runs") });
            format!("http://{addr}/noop")
        }
        Some(pki) => {
            let config = tls::server_config(pki.server_cert_pem.as_bytes(), pki.server_key_pem.as_bytes(), None)
                .expect("the test certificate is usable");
            let listener = tls::TlsListener::new(listener, config).expect("a TLS listener");
            tokio::spawn(async move { axum::serve(listener, router).await.expect("the no-op service runs") });
            format!("https://{addr}/noop")
        }
    }
}

/// An executor whose one service is the no-op at `url`, trusting `pki`'s CA.
fn executor(url: &str, pki: &TestPki, times: &Arc<CallTimes>) -> Executor<HttpInvoker> {
    let spec =
        serde_json::json!({"id": "noop", "endpoint": {"protocol": "http", "url": url}, "capabilities": ["noop"]});
    let spec = Arc::new(ServiceSpec::from_json(&spec.to_string()).expect("a valid spec"));
    let roots = TrustRoots::empty().with_pem(pki.ca_pem.as_bytes()).expect("the test CA parses");
    let invoker =
        HttpConfig { roots, ..HttpConfig::default() }.build(Arc::new(move |_: &ServiceId| Some(Arc::clone(&spec))));
    Config { max_in_flight_per_run: IN_FLIGHT, ..Config::default() }.build(
        Arc::new(invoker),
        Arc::clone(times) as Arc<dyn EventSink<Event>>,
        Arc::new(SystemClock),
    )
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
    let pki = TestPki::new("bench");
    let times = Arc::new(CallTimes::default());
    let plain = executor(&rt.block_on(serve(None)), &pki, &times);
    let https = executor(&rt.block_on(serve(Some(&pki))), &pki, &times);
    let dag = Dag::independent(TASKS);

    let mut group = c.benchmark_group("executor_http");
    group.sample_size(10);
    group.throughput(Throughput::Elements(TASKS as u64));
    // Only the run is timed: building the spec before it and dropping the events after it
    // are not.
    for (case, executor) in
        [(format!("baton/independent_{TASKS}"), &plain), (format!("https/independent_{TASKS}"), &https)]
    {
        group.bench_function(case, |b| {
            b.iter_custom(|iters| {
                (0..iters)
                    .map(|_| {
                        let elapsed = rt.block_on(run(executor, &dag));
                        times.take();
                        elapsed
                    })
                    .sum()
            })
        });
    }
    group.finish();

    // A direct measure for the figures: three runs of each, their requests per second and the
    // latency of all their tasks together; the two kinds alternate, so that both see the same
    // machine.
    let name = format!("{TASKS} independent tasks, {IN_FLIGHT} in flight");
    let mut figures = Vec::new();
    for (label, executor) in [("http", &plain), ("https", &https)] {
        // Warms the pool: the TLS figures are of pooled connections.
        rt.block_on(run(executor, &dag));
        times.take();
        figures.push((label, Duration::ZERO, Vec::new()));
    }
    for _ in 0..RUNS {
        for (i, executor) in [&plain, &https].into_iter().enumerate() {
            figures[i].1 += rt.block_on(run(executor, &dag));
            figures[i].2.extend(times.take());
        }
    }
    let mut rates = Vec::new();
    for (label, elapsed, mut latencies) in figures {
        assert_eq!(latencies.len(), RUNS * TASKS, "one latency per task");
        latencies.sort_unstable();
        let rate = (RUNS * TASKS) as f64 / elapsed.as_secs_f64();
        rates.push(rate);
        let (baseline, target) = match label {
            // The plain run is the baseline of the TLS one: within 1.3x of its rate.
            "https" => (Some(rates[0]), Some(">= 0.77x")),
            _ => (None, None),
        };
        report_figure("executor_http", &format!("{name}, {label}: requests per second"), rate, "1/s", baseline, target);
        for (quantile_label, q) in [("p50", 0.5), ("p99", 0.99)] {
            report_figure(
                "executor_http",
                &format!("{name}, {label}: task latency {quantile_label}, scheduled to succeeded"),
                quantile(&latencies, q).as_secs_f64() * 1e3,
                "ms",
                None,
                None,
            );
        }
    }
    // What TLS adds to one call at this load: the difference of the time per call.
    report_figure(
        "executor_http",
        &format!("{name}: TLS overhead per call"),
        (1.0 / rates[1] - 1.0 / rates[0]) * 1e6,
        "us",
        None,
        None,
    );
}

criterion_group!(benches, executor_http);
criterion_main!(benches);
