//! Metrics end to end: an orchestrator over redb runs a workflow against real HTTP services on
//! loopback (one of them down, so the call fails over), a real `/metrics` endpoint is scraped
//! over HTTP, and a gRPC server behind the metrics layer answers a real client.

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::routing::post;
use baton::metrics::{Format, Metrics, serve_metrics};
use baton::{Options, ServiceOrchestrator, StoreChoice};
use baton_core::{ExecutionState, ServiceSpec, WorkflowName};
use baton_executor::BreakerState;
use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

/// Serves `{"answer": answer}` on a loopback port; its URL.
async fn service(answer: Value) -> String {
    let router = axum::Router::new().route("/", post(move || async move { Json(json!({"answer": answer})) }));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    format!("http://{addr}/")
}

/// A loopback URL nothing listens on.
async fn dead_url() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    format!("http://{addr}/")
}

fn spec(id: &str, url: &str, latency_ms: f64) -> ServiceSpec {
    ServiceSpec::from_json(
        &json!({
            "id": id,
            "endpoint": {"protocol": "http", "url": url},
            "capabilities": ["payment"],
            "qos": {"latency_p50_ms": latency_ms, "latency_p99_ms": latency_ms},
        })
        .to_string(),
    )
    .unwrap()
}

/// GETs `path` from `addr` with `accept`: status, content type and body.
async fn get(addr: std::net::SocketAddr, path: &str, accept: Option<&str>) -> (u16, String, String) {
    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
    let mut request = hyper::Request::get(format!("http://{addr}{path}"));
    if let Some(accept) = accept {
        request = request.header("accept", accept);
    }
    let response = client.request(request.body(Empty::new()).unwrap()).await.unwrap();
    let status = response.status().as_u16();
    let content_type =
        response.headers().get("content-type").map(|v| v.to_str().unwrap().to_owned()).unwrap_or_default();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, content_type, String::from_utf8(body.to_vec()).unwrap())
}

/// The value of the sample `sample` (name and labels) in `text`.
fn value(text: &str, sample: &str) -> Option<f64> {
    text.lines().find_map(|line| line.strip_prefix(sample)?.strip_prefix(' ')?.split(' ').next()?.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scrape_shows_executions_tasks_registry_failovers_breakers_and_the_journal() {
    let dir = tempfile::tempdir().unwrap();
    let metrics = Metrics::default();
    let mut options =
        Options { supervisor: None, store: StoreChoice::Redb(dir.path().to_owned()), ..Options::default() };
    options.engine.observer = Arc::new(metrics.clone());
    let baton = ServiceOrchestrator::open(options).await.unwrap();
    metrics.watch(&baton);
    metrics.watch_breakers(|id| if id.as_str() == "pay-fast" { BreakerState::Open } else { BreakerState::Closed });

    let dead = dead_url().await;
    let live = service(json!("paid")).await;
    baton.registry().register(spec("pay-fast", &dead, 5.0)).unwrap();
    baton.registry().register(spec("pay-slow", &live, 50.0)).unwrap();
    let applied = baton
        .engine()
        .apply(
            r#"
name: pay
steps:
  - id: charge
    query: {capabilities: [payment]}
    retry: {max_attempts: 2}
"#,
        )
        .await
        .unwrap();
    let name = WorkflowName::new("pay").unwrap();
    let id = baton.engine().start(&name, Some(applied.version), json!({}), None).await.unwrap();
    let finished = tokio::time::timeout(Duration::from_secs(10), baton.engine().wait(id)).await.unwrap().unwrap();
    assert_eq!(finished.state, ExecutionState::Completed, "{:?}", finished.error);

    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    let server = tokio::spawn(serve_metrics(listener, metrics.clone(), async move {
        let _ = stopped.await;
    }));

    let (status, content_type, text) = get(addr, "/metrics", Some("application/openmetrics-text;version=1.0.0")).await;
    assert_eq!(status, 200);
    assert_eq!(content_type, Format::OpenMetrics.content_type());
    assert!(text.ends_with("# EOF\n"), "{text}");
    for family in [
        "baton_executions_started counter",
        "baton_executions_finished counter",
        "baton_executions_running gauge",
        "baton_executions_paused gauge",
        "baton_task_attempts counter",
        "baton_task_duration_seconds histogram",
        "baton_registry_services gauge",
        "baton_registry_services_registered gauge",
        "baton_circuit_breaker_open gauge",
        "baton_failovers counter",
        "baton_worker_queue_depth gauge",
        "baton_journal_commits counter",
        "baton_journal_writes counter",
        "baton_grpc_unauthenticated counter",
    ] {
        assert!(text.contains(&format!("# TYPE {family}\n")), "no {family} in\n{text}");
    }
    for (sample, expected) in [
        (r#"baton_executions_started_total{workflow="pay"}"#, 1.0),
        (r#"baton_executions_finished_total{workflow="pay",outcome="completed"}"#, 1.0),
        ("baton_executions_running", 0.0),
        ("baton_executions_paused", 0.0),
        ("baton_registry_services_registered", 2.0),
        (r#"baton_circuit_breaker_open{service="pay-fast"}"#, 1.0),
        ("baton_failovers_total", 1.0),
    ] {
        assert_eq!(value(&text, sample), Some(expected), "{sample} in\n{text}");
    }
    // Two attempts, each labelled with the service that answered, not the query's stand-in: the
    // one that failed, then the one failed over to; both timed.
    let attempts = text.lines().filter(|l| l.starts_with("baton_task_attempts_total{")).collect::<Vec<_>>();
    assert_eq!(attempts.len(), 2, "{text}");
    assert_eq!(
        value(&text, r#"baton_task_attempts_total{service="pay-fast",outcome="retryable"}"#),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        value(&text, r#"baton_task_attempts_total{service="pay-slow",outcome="succeeded"}"#),
        Some(1.0),
        "{text}"
    );
    assert_eq!(value(&text, r#"baton_task_retries_total{service="pay-slow"}"#), Some(1.0), "{text}");
    assert!(!text.contains("query."), "no stand-in id in\n{text}");
    let timed = text.lines().filter(|l| l.starts_with("baton_task_duration_seconds_count{") && l.ends_with(" 1"));
    assert_eq!(timed.count(), 2, "{text}");
    let health: f64 = ["passing", "critical", "unknown"]
        .iter()
        .map(|h| value(&text, &format!(r#"baton_registry_services{{health="{h}"}}"#)).unwrap())
        .sum();
    assert_eq!(health, 2.0, "{text}");
    // Every journal write was committed, in no more transactions than writes.
    let commits = value(&text, "baton_journal_commits_total").unwrap();
    let writes = value(&text, "baton_journal_writes_total").unwrap();
    assert!(commits >= 1.0 && writes >= commits, "{text}");

    // Without asking for OpenMetrics, the Prometheus text format.
    let (status, content_type, text) = get(addr, "/metrics", None).await;
    assert_eq!((status, content_type.as_str()), (200, "text/plain; version=0.0.4; charset=utf-8"));
    assert!(text.contains("# TYPE baton_failovers_total counter\n") && !text.contains("# EOF"), "{text}");

    let (status, _, _) = get(addr, "/", None).await;
    assert_eq!(status, 404);
    let (status, _, _) = get(addr, "/metrics/x", None).await;
    assert_eq!(status, 404);

    stop.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(5), server).await.unwrap().unwrap().unwrap();
    baton.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_grpc_layer_counts_calls_by_method_and_code() {
    let metrics = Metrics::default();
    let (reporter, health) = tonic_health::server::health_reporter();
    reporter.set_service_status("baton.v1.ExecutionService", tonic_health::ServingStatus::Serving).await;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            .layer(metrics.grpc_layer())
            .add_service(health)
            .serve_with_incoming_shutdown(tonic::transport::server::TcpIncoming::from(listener), async move {
                let _ = stopped.await;
            }),
    );

    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}")).unwrap().connect().await.unwrap();
    let mut client = HealthClient::new(channel);
    for _ in 0..2 {
        let ok = client.check(HealthCheckRequest { service: "baton.v1.ExecutionService".to_owned() }).await;
        assert!(ok.is_ok(), "{ok:?}");
    }
    let missing = client.check(HealthCheckRequest { service: "nope".to_owned() }).await.unwrap_err();
    assert_eq!(missing.code(), tonic::Code::NotFound);

    let text = metrics.render(Format::OpenMetrics);
    for (sample, expected) in [
        (r#"baton_grpc_requests_total{method="/grpc.health.v1.Health/Check",code="OK"}"#, 2.0),
        (r#"baton_grpc_requests_total{method="/grpc.health.v1.Health/Check",code="NOT_FOUND"}"#, 1.0),
        (r#"baton_grpc_request_duration_seconds_count{method="/grpc.health.v1.Health/Check"}"#, 3.0),
        ("baton_grpc_unauthenticated_total", 0.0),
    ] {
        assert_eq!(value(&text, sample), Some(expected), "{sample} in\n{text}");
    }

    stop.send(()).unwrap();
    drop(client);
    tokio::time::timeout(Duration::from_secs(5), server).await.unwrap().unwrap().unwrap();
}
