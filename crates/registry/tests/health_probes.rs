//! The health supervisor with the real [`NetworkProbe`] against real HTTP and gRPC servers on
//! loopback. Rounds are driven by calling `tick` with a fake clock moved past the interval.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use baton_core::fakes::{FakeClock, RecordingSink};
use baton_core::{Health, RegistryEvent, ServiceId, ServiceSpec, ServiceStatus};
use baton_registry::{Config, NetworkProbe, Registry, Supervisor, SupervisorConfig};
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::server::NamedService;

const INTERVAL: Duration = Duration::from_secs(10);

struct Harness {
    registry: Registry,
    clock: FakeClock,
    events: RecordingSink<RegistryEvent>,
    supervisor: Supervisor<NetworkProbe>,
    id: ServiceId,
}

impl Harness {
    /// A registry holding one service `svc` with `check` (a flat health check document) probed
    /// every 10s, and a supervisor with the network probe.
    fn new(check: serde_json::Value) -> Self {
        let mut health_check = serde_json::json!({"interval": "10s", "timeout": "2s"});
        health_check.as_object_mut().unwrap().extend(check.as_object().unwrap().clone());
        let spec = ServiceSpec::from_json(
            &serde_json::json!({
                "id": "svc",
                "endpoint": {"protocol": "http", "url": "http://127.0.0.1:1/"},
                "capabilities": ["x"],
                "health_check": health_check,
            })
            .to_string(),
        )
        .unwrap();
        let clock = FakeClock::default();
        let events = RecordingSink::default();
        let registry = Config::default().build_with(Arc::new(clock.clone()), Arc::new(events.clone()));
        registry.register(spec).unwrap();
        events.take();
        let supervisor = SupervisorConfig::default().build(registry.clone(), Arc::new(NetworkProbe::default()));
        Self { registry, clock, events, supervisor, id: ServiceId::new("svc").unwrap() }
    }

    /// One round, then the clock moved a full interval on; returns the status after the round.
    async fn round(&self) -> ServiceStatus {
        self.supervisor.tick().await;
        self.clock.advance(INTERVAL);
        self.registry.get(&self.id).unwrap().status
    }

    fn changed(&self, from: Health, to: Health, output: &str) -> RegistryEvent {
        RegistryEvent::HealthChanged { id: self.id.clone(), from, to, output: output.to_owned() }
    }
}

async fn health(State(up): State<Arc<AtomicBool>>) -> (StatusCode, &'static str) {
    if up.load(Ordering::SeqCst) {
        (StatusCode::OK, "ok")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "draining: database connection lost")
    }
}

/// An HTTP server on loopback whose `/health` answers 200 while the flag is set and 503 otherwise.
async fn http_server(up: Arc<AtomicBool>) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let router = Router::new().route("/health", get(health)).with_state(up);
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    format!("http://{address}/health")
}

#[tokio::test]
async fn an_http_check_follows_the_status_code() {
    let up = Arc::new(AtomicBool::new(true));
    let url = http_server(Arc::clone(&up)).await;
    let h = Harness::new(serde_json::json!({
        "kind": "http", "url": url, "healthy_threshold": 1, "unhealthy_threshold": 2,
    }));
    assert_eq!(h.registry.get(&h.id).unwrap().status.health, Health::Unknown);

    assert_eq!(h.round().await.health, Health::Passing);
    up.store(false, Ordering::SeqCst);
    let first_failure = h.round().await;
    assert_eq!(first_failure.health, Health::Passing, "one failure is below the unhealthy threshold");
    assert_eq!(first_failure.last_check_output, "HTTP 503: draining: database connection lost");
    assert_eq!(h.round().await.health, Health::Critical);
    up.store(true, Ordering::SeqCst);
    assert_eq!(h.round().await.health, Health::Passing);

    assert_eq!(
        h.events.take(),
        [
            h.changed(Health::Unknown, Health::Passing, "HTTP 200"),
            h.changed(Health::Passing, Health::Critical, "HTTP 503: draining: database connection lost"),
            h.changed(Health::Critical, Health::Passing, "HTTP 200"),
        ]
    );
}

/// The service whose health the gRPC server reports.
struct Payments;

impl NamedService for Payments {
    const NAME: &'static str = "baton.test.Payments";
}

#[tokio::test]
async fn a_grpc_check_follows_the_serving_status() {
    let (reporter, service) = tonic_health::server::health_reporter();
    reporter.set_serving::<Payments>().await;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move {
        tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(TcpListenerStream::new(listener))
            .await
            .unwrap();
    });
    let h = Harness::new(serde_json::json!({
        "kind": "grpc", "url": format!("http://{address}"), "service": Payments::NAME,
        "healthy_threshold": 1, "unhealthy_threshold": 1,
    }));

    assert_eq!(h.round().await.health, Health::Passing);
    reporter.set_not_serving::<Payments>().await;
    assert_eq!(h.round().await.health, Health::Critical);
    reporter.set_serving::<Payments>().await;
    assert_eq!(h.round().await.health, Health::Passing);

    assert_eq!(
        h.events.take(),
        [
            h.changed(Health::Unknown, Health::Passing, "SERVING"),
            h.changed(Health::Passing, Health::Critical, "NOT_SERVING"),
            h.changed(Health::Critical, Health::Passing, "SERVING"),
        ]
    );
}

#[tokio::test]
async fn a_grpc_check_of_a_service_the_server_does_not_know_fails() {
    let (_reporter, service) = tonic_health::server::health_reporter();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move {
        tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(TcpListenerStream::new(listener))
            .await
            .unwrap();
    });
    let h = Harness::new(serde_json::json!({
        "kind": "grpc", "url": format!("grpc://{address}"), "service": "baton.test.Unknown",
    }));
    let status = h.round().await;
    assert_eq!(status.health, Health::Critical);
    assert!(status.last_check_output.starts_with("gRPC NotFound"), "{}", status.last_check_output);
}

/// A loopback port with nothing listening on it.
async fn closed_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    listener.local_addr().unwrap().port()
}

#[tokio::test]
async fn a_refused_connection_turns_critical_with_the_error() {
    let port = closed_port().await;
    for check in [
        serde_json::json!({"kind": "http", "url": format!("http://127.0.0.1:{port}/health")}),
        serde_json::json!({"kind": "grpc", "url": format!("http://127.0.0.1:{port}")}),
    ] {
        let h = Harness::new(check.clone());
        let status = h.round().await;
        assert_eq!(status.health, Health::Critical, "{check}");
        assert!(status.last_check_output.contains("Connection refused"), "{check}: {}", status.last_check_output);
    }
}
