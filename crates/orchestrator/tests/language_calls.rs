//! Calls the interpreter makes inside a loop, a fork and a try, through the real engine,
//! dispatcher and HTTP invoker against services on 127.0.0.1: each attempt is journaled under
//! the service that answered (a capability query resolved, a failed candidate failed over),
//! shaped by the step's `http:` with the loop's variables, and carries `Idempotency-Key` and
//! its own span in `traceparent`.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::Request;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use baton::{Options, ServiceOrchestrator};
use baton_core::{EventKind, ExecutionState, ExecutionTrace, ServiceSpec, StepId, Store as _, TraceContext};
use serde_json::{Value, json};

/// What a service saw of one request.
#[derive(Debug, Clone)]
struct Seen {
    method: String,
    uri: String,
    key: String,
    traceparent: String,
    attempt: u32,
}

/// A service on a fresh port recording every request; it answers 503 when `fails`, else
/// `{"served": <name>}`.
async fn service(name: &'static str, fails: bool) -> (String, Arc<Mutex<Vec<Seen>>>) {
    let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
    let record = Arc::clone(&seen);
    let router = axum::Router::new().fallback(move |request: Request| {
        let record = Arc::clone(&record);
        async move {
            let header =
                |name: &str| request.headers().get(name).and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
            record.lock().unwrap().push(Seen {
                method: request.method().to_string(),
                uri: request.uri().to_string(),
                key: header("idempotency-key"),
                traceparent: header("traceparent"),
                attempt: header("x-baton-attempt").parse().unwrap_or(0),
            });
            if fails {
                return (StatusCode::SERVICE_UNAVAILABLE, "busy").into_response();
            }
            ([("content-type", "application/json")], json!({ "served": name }).to_string()).into_response()
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    (format!("http://{address}/api"), seen)
}

fn register(baton: &ServiceOrchestrator, id: &str, url: &str) {
    let spec = json!({"id": id, "endpoint": {"protocol": "http", "url": url}, "capabilities": ["stock"]});
    baton.registry().register(ServiceSpec::from_json(&spec.to_string()).unwrap()).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_in_loops_forks_and_tries_name_the_service_and_carry_their_trace() {
    let (flaky_url, flaky) = service("flaky", true).await;
    let (steady_url, steady) = service("steady", false).await;
    let baton = ServiceOrchestrator::open(Options { supervisor: None, ..Options::default() }).await.unwrap();
    register(&baton, "flaky", &flaky_url);
    register(&baton, "steady", &steady_url);
    let applied = baton
        .engine()
        .apply(
            r#"
name: shaped
defaults:
  retry: { max_attempts: 3, initial_backoff: 1ms, max_backoff: 5ms }
steps:
  - id: each
    for: { each: sku, in: "${ .input.skus }" }
    steps:
      - id: stock
        query: { capabilities: [stock] }
        http:
          method: PUT
          path: "/stock/${ $sku }"
          query: { at: "${ $index }", n: "${ $sku | length }" }
        input: { sku: "${ $sku }" }
  - id: both
    depends_on: [each]
    fork:
      branches:
        - name: left
          steps:
            - id: ping
              service: steady
              http: { method: GET, path: /ping/left }
        - name: right
          steps:
            - id: guarded
              try:
                - id: ping
                  service: flaky
                  alternatives: [steady]
                  http: { method: GET, path: /ping/right }
              catch: {}
output: "${ .steps.both.output }"
"#,
        )
        .await
        .unwrap();
    let caller = TraceContext::parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", None).unwrap();
    let (id, _) = baton
        .engine()
        .start_or_find(&applied.name, None, json!({"skus": ["a/b", "cd"]}), None, Some(caller.clone()))
        .await
        .unwrap();
    let execution =
        tokio::time::timeout(Duration::from_secs(20), baton.engine().wait(id)).await.expect("in time").unwrap();
    assert_eq!(execution.state, ExecutionState::Completed, "{execution:?}");

    // Every attempt is journaled under a registered service, never a query's stand-in; every
    // success under the one that answered.
    let journal = baton.store().read_journal(id, 1).await.unwrap();
    let mut scheduled = std::collections::HashMap::new();
    for event in &journal {
        if let EventKind::TaskScheduled { step, attempt, service } = &event.kind {
            assert!(["flaky", "steady"].contains(&service.as_str()), "{service} scheduled for {step}");
            scheduled.insert((step.to_string(), *attempt), service.to_string());
        }
    }
    let mut succeeded = Vec::new();
    for event in &journal {
        match &event.kind {
            EventKind::TaskSucceeded { step, attempt, .. } if *attempt > 0 => {
                assert_eq!(scheduled[&(step.to_string(), *attempt)], "steady", "{step} answered by steady");
                succeeded.push(step.to_string());
            }
            EventKind::TaskFailed { step, attempt, .. } if *attempt > 0 => {
                assert_eq!(scheduled[&(step.to_string(), *attempt)], "flaky", "{step} failed on flaky");
            }
            _ => {}
        }
    }
    succeeded.sort();
    assert_eq!(succeeded, ["both/left/ping", "both/right/guarded/try/ping", "each/0/stock", "each/1/stock"]);
    // The pinned step failed over to its alternative after flaky's 503.
    assert_eq!(scheduled[&("both/right/guarded/try/ping".to_owned(), 1)], "flaky");
    assert_eq!(scheduled[&("both/right/guarded/try/ping".to_owned(), 2)], "steady");

    // What the services saw: each iteration's request shaped with its own variables, keyed by
    // its path, and in the caller's trace under the attempt's own span.
    let trace = ExecutionTrace::new(id, Some(&caller));
    let everything: Vec<Seen> = flaky.lock().unwrap().iter().chain(steady.lock().unwrap().iter()).cloned().collect();
    let check = |path: &str, method: &str, uri: &str| {
        let calls: Vec<&Seen> = everything.iter().filter(|s| s.key == format!("{id}/{path}")).collect();
        assert!(!calls.is_empty(), "no call of {path}: {everything:?}");
        for call in calls {
            assert_eq!((call.method.as_str(), call.uri.as_str()), (method, uri), "{path}");
            let span = trace.attempt(&StepId::new(path).unwrap(), call.attempt);
            assert_eq!(call.traceparent, trace.traceparent(span), "{path} attempt {}", call.attempt);
            assert!(call.traceparent.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"), "the caller's trace");
        }
    };
    check("each/0/stock", "PUT", "/api/stock/a%2Fb?at=0&n=3");
    check("each/1/stock", "PUT", "/api/stock/cd?at=1&n=2");
    check("both/left/ping", "GET", "/api/ping/left");
    check("both/right/guarded/try/ping", "GET", "/api/ping/right");
    let output: Value = execution.output.unwrap();
    assert_eq!(output, json!([{"served": "steady"}, {"served": "steady"}]), "the fork's branches");
}
