//! The orchestrator over real HTTP services on 127.0.0.1: capability-bound steps resolved at
//! dispatch with failover, and the seed's `orchestrate_services` from goal to result.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Json;
use axum::http::HeaderMap;
use axum::routing::post;
use baton::{Options, ServiceOrchestrator};
use baton_core::{ExecutionState, Goal, ServiceSpec, WorkflowName};
use serde_json::{Value, json};

/// Idempotency keys seen by one service, with how often.
type Seen = Arc<Mutex<HashMap<String, u32>>>;

/// Serves `answer` (merged with the request body) on a loopback port; the URL and what it saw.
async fn service(answer: Value) -> (String, Seen) {
    let seen = Seen::default();
    let router = axum::Router::new().route(
        "/",
        post({
            let seen = Arc::clone(&seen);
            move |headers: HeaderMap, Json(body): Json<Value>| {
                let seen = Arc::clone(&seen);
                let answer = answer.clone();
                async move {
                    let key = headers.get("idempotency-key").and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
                    *seen.lock().unwrap().entry(key).or_default() += 1;
                    Json(json!({"answer": answer, "got": body}))
                }
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    (format!("http://{addr}/"), seen)
}

/// A loopback URL nothing listens on.
async fn dead_url() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    format!("http://{addr}/")
}

fn spec(id: &str, url: &str, capability: &str, inputs: &[&str], outputs: &[&str], latency_ms: f64) -> ServiceSpec {
    ServiceSpec::from_json(
        &json!({
            "id": id,
            "endpoint": {"protocol": "http", "url": url},
            "capabilities": [capability],
            "inputs": inputs,
            "outputs": outputs,
            "qos": {"latency_p50_ms": latency_ms, "latency_p99_ms": latency_ms},
        })
        .to_string(),
    )
    .unwrap()
}

async fn orchestrator() -> ServiceOrchestrator {
    ServiceOrchestrator::open(Options { supervisor: None, ..Options::default() }).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_capability_step_resolves_at_dispatch_and_fails_over_to_the_next_candidate() {
    let baton = orchestrator().await;
    // The faster-looking payment service is down: the call fails over to the other one.
    let dead = dead_url().await;
    let (live, seen) = service(json!("paid")).await;
    baton.registry().register(spec("pay-fast", &dead, "payment", &[], &[], 5.0)).unwrap();
    baton.registry().register(spec("pay-slow", &live, "payment", &[], &[], 50.0)).unwrap();
    let applied = baton
        .engine()
        .apply(
            r#"
name: pay
steps:
  - id: charge
    query: {capabilities: [payment]}
    input: {amount: "${ .input.amount }"}
    # The failover to the second candidate is the second attempt.
    retry: {max_attempts: 2}
output: "${ .steps.charge.output }"
"#,
        )
        .await
        .unwrap();
    let name = WorkflowName::new("pay").unwrap();
    let id = baton.engine().start(&name, Some(applied.version), json!({"amount": 12}), None).await.unwrap();
    let finished = tokio::time::timeout(Duration::from_secs(10), baton.engine().wait(id)).await.unwrap().unwrap();
    assert_eq!(finished.state, ExecutionState::Completed, "{:?}", finished.error);
    assert_eq!(finished.output, Some(json!({"answer": "paid", "got": {"amount": 12}})));
    assert_eq!(*seen.lock().unwrap(), HashMap::from([(format!("{id}/charge"), 1)]));
    assert_eq!(baton.executor().failovers(), 1);
    // Both attempts are named by the service they went to.
    let charge = &finished.tasks["charge"];
    assert_eq!((charge.attempts, charge.service.as_ref().map(|s| s.as_str())), (2, Some("pay-slow")));
    // Capacity permits were given back.
    assert_eq!(baton.registry().get(&"pay-slow".parse().unwrap()).unwrap().status.in_flight, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orchestrate_plans_a_goal_over_live_services_runs_it_and_waits() {
    let baton = orchestrator().await;
    let (billing, _) = service(json!("invoice")).await;
    let (archive, _) = service(json!("receipt")).await;
    baton.registry().register(spec("billing", &billing, "bill", &["order"], &["invoice"], 10.0)).unwrap();
    baton.registry().register(spec("archive", &archive, "archive", &["invoice"], &["receipt"], 10.0)).unwrap();
    let goal: Goal = serde_json::from_value(json!({"provided": ["order"], "wanted": ["receipt"]})).unwrap();
    let done = baton.orchestrate(&goal, json!({"order": 7}), Some(Duration::from_secs(10))).await.unwrap();
    let services: Vec<&str> = done.plan.tasks.iter().map(|t| t.service.as_str()).collect();
    assert_eq!(services, ["billing", "archive"]);
    let finished = done.finished.unwrap();
    assert_eq!(finished.state, ExecutionState::Completed, "{:?}", finished.error);
    // The same goal again reuses its workflow: same name, same version.
    let again = baton.orchestrate(&goal, json!({"order": 8}), None).await.unwrap();
    assert_eq!((again.workflow, again.version), (done.workflow, done.version));
    assert!(again.finished.is_none());

    // A goal no service meets is a typed planning error, and nothing is started.
    let impossible: Goal = serde_json::from_value(json!({"provided": ["order"], "wanted": ["refund"]})).unwrap();
    let error = baton.orchestrate(&impossible, json!({}), None).await.unwrap_err();
    assert!(error.to_string().contains("refund"), "{error}");
}
