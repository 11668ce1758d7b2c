//! A real tonic server on 127.0.0.1:0 over a real registry and a `LivePlanner`, driven by real
//! tonic clients: services registered over the wire are composed into plans, only while their
//! health is passing; bad and unsatisfiable goals get the codes a client can act on.

mod common;

use std::sync::Arc;
use std::time::Duration;

use baton_core::fakes::{FakeClock, ScriptedProbe};
use baton_core::ports::DiscardEvents;
use baton_core::{ServiceId, TaxonomyBuilder};
use baton_grpc::pb::planner_service_client::PlannerServiceClient;
use baton_grpc::pb::registry_service_client::RegistryServiceClient;
use baton_grpc::{Config, pb};
use baton_planner::LivePlanner;
use baton_registry::{Supervisor, SupervisorConfig};
use tokio::sync::oneshot;
use tonic::Code;
use tonic::transport::Channel;

struct Server {
    registry: RegistryServiceClient<Channel>,
    planner: PlannerServiceClient<Channel>,
    channel: Channel,
    clock: FakeClock,
    probe: Arc<ScriptedProbe>,
    supervisor: Supervisor<ScriptedProbe>,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<Result<(), baton_grpc::Error>>,
}

/// Concepts: `document > invoice`, and roots `order`, `risk`, `receipt`.
async fn start() -> Server {
    let clock = FakeClock::default();
    let registry = baton_registry::Config::default().build_with(Arc::new(clock.clone()), Arc::new(DiscardEvents));
    let probe = Arc::new(ScriptedProbe::default());
    let supervisor = SupervisorConfig::default().build(registry.clone(), Arc::clone(&probe));
    let mut taxonomy = TaxonomyBuilder::default();
    taxonomy.add("document", None).unwrap().add("invoice", Some("document")).unwrap();
    for root in ["order", "risk", "receipt"] {
        taxonomy.add(root, None).unwrap();
    }
    let planner = LivePlanner::new(Arc::new(taxonomy.build().unwrap()), Arc::new(registry.clone()));
    let backends = common::Fakes::new(common::idle_planner()).backends(Arc::new(registry), Arc::new(planner));

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(Config::default().serve(backends, listener, async {
        let _ = stopped.await;
    }));
    let channel = Channel::from_shared(format!("http://{address}")).unwrap().connect().await.unwrap();
    Server {
        registry: RegistryServiceClient::new(channel.clone()),
        planner: PlannerServiceClient::new(channel.clone()),
        channel,
        clock,
        probe,
        supervisor,
        stop: Some(stop),
        task,
    }
}

impl Server {
    async fn shutdown(mut self) {
        self.stop.take().unwrap().send(()).unwrap();
        self.task.await.unwrap().unwrap();
    }

    async fn register(&mut self, spec: pb::ServiceSpec) {
        self.registry.register(pb::RegisterRequest { spec: Some(spec) }).await.unwrap();
    }

    async fn plan(&mut self, goal: pb::Goal) -> Result<pb::Plan, tonic::Status> {
        Ok(self.planner.plan(pb::PlanRequest { goal: Some(goal) }).await?.into_inner().plan.unwrap())
    }

    async fn health(&mut self, id: &str) -> i32 {
        let got = self.registry.get_service(pb::GetServiceRequest { id: id.into() }).await.unwrap().into_inner();
        got.service.unwrap().status.unwrap().health
    }
}

/// A service with QoS `(latency_ms, cost, throughput_rps, availability)` and no health check.
fn service(id: &str, inputs: &[&str], outputs: &[&str], qos: (f64, f64, f64, f64)) -> pb::ServiceSpec {
    pb::ServiceSpec {
        id: id.to_owned(),
        endpoint: Some(pb::Endpoint {
            kind: Some(pb::endpoint::Kind::Http(pb::endpoint::Http { url: format!("http://127.0.0.1:1/{id}") })),
        }),
        inputs: inputs.iter().map(|s| s.to_string()).collect(),
        outputs: outputs.iter().map(|s| s.to_string()).collect(),
        qos: Some(pb::Qos {
            latency_p50_ms: qos.0,
            latency_p99_ms: qos.0,
            cost: qos.1,
            throughput_rps: qos.2,
            availability: Some(qos.3),
        }),
        ..Default::default()
    }
}

/// The same, probed over HTTP: unknown until a probe passes, critical after one fails.
fn probed(id: &str, inputs: &[&str], outputs: &[&str], qos: (f64, f64, f64, f64)) -> pb::ServiceSpec {
    pb::ServiceSpec {
        health_check: Some(pb::HealthCheck {
            kind: Some(pb::health_check::Kind::Http(pb::health_check::Http {
                // Nothing listens there; the scripted probe answers instead.
                url: "http://127.0.0.1:1/health".to_owned(),
            })),
            interval: Some(prost_types::Duration { seconds: 10, nanos: 0 }),
            healthy_threshold: 1,
            unhealthy_threshold: 1,
            ..Default::default()
        }),
        ..service(id, inputs, outputs, qos)
    }
}

fn goal(provided: &[&str], wanted: &[&str]) -> pb::Goal {
    pb::Goal {
        provided: provided.iter().map(|s| s.to_string()).collect(),
        wanted: wanted.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    }
}

fn levels(plan: &pb::Plan) -> Vec<Vec<&str>> {
    plan.levels.iter().map(|l| strs(&l.tasks)).collect()
}

fn strs(values: &[String]) -> Vec<&str> {
    values.iter().map(String::as_str).collect()
}

/// Every task as `(id, service, alternatives, depends_on)`.
fn tasks(plan: &pb::Plan) -> Vec<(&str, &str, Vec<&str>, Vec<&str>)> {
    plan.tasks.iter().map(|t| (t.id.as_str(), t.service.as_str(), strs(&t.alternatives), strs(&t.depends_on))).collect()
}

/// The data flow as sorted `(from_task, from_concept, to_task, to_concept)`.
fn flow(plan: &pb::Plan) -> Vec<(&str, &str, &str, &str)> {
    let mut edges: Vec<_> = plan
        .data_flow
        .iter()
        .map(|e| (e.from_task.as_str(), e.from_concept.as_str(), e.to_task.as_str(), e.to_concept.as_str()))
        .collect();
    edges.sort();
    edges
}

fn assert_close(actual: f64, expected: f64, what: &str) {
    assert!((actual - expected).abs() < 1e-9, "{what}: {actual} != {expected}");
}

fn assert_status<T: std::fmt::Debug>(result: Result<T, tonic::Status>, code: Code, message: &str) {
    let status = result.unwrap_err();
    assert_eq!(status.code(), code, "{status:?}");
    assert!(status.message().contains(message), "{:?} should contain {message:?}", status.message());
}

#[tokio::test]
async fn plans_compose_the_passing_services_registered_over_the_wire() {
    let mut server = start().await;
    server.register(service("billing", &["order"], &["invoice"], (10.0, 1.0, 100.0, 0.99))).await;
    server.register(service("billing-slow", &["order"], &["invoice"], (15.0, 0.5, 200.0, 0.999))).await;
    server.register(service("fraud", &["order"], &["risk"], (5.0, 0.25, 50.0, 0.98))).await;
    server.register(service("archive", &["document", "risk"], &["receipt"], (20.0, 0.125, 80.0, 0.995))).await;
    // The fastest biller, but nothing has probed it yet: unknown health, not to be planned with.
    server.register(probed("billing-fast", &["order"], &["invoice"], (1.0, 1.0, 100.0, 0.99))).await;
    assert_eq!(server.health("billing-fast").await, pb::Health::Unknown as i32);

    let want_receipt = goal(&["order"], &["receipt"]);
    let plan = server.plan(want_receipt.clone()).await.unwrap();
    assert_eq!(levels(&plan), [vec!["billing", "fraud"], vec!["archive"]]);
    assert_eq!(
        tasks(&plan),
        [
            ("billing", "billing", vec!["billing-slow"], vec![]),
            ("fraud", "fraud", vec![], vec![]),
            ("archive", "archive", vec![], vec!["billing", "fraud"]),
        ]
    );
    assert_eq!(plan.tasks[2].inputs, ["document", "risk"]);
    assert_eq!(plan.tasks[2].outputs, ["receipt"]);
    assert_eq!(
        flow(&plan),
        [
            ("", "order", "billing", "order"),
            ("", "order", "fraud", "order"),
            ("billing", "invoice", "archive", "document"),
            ("fraud", "risk", "archive", "risk"),
        ]
    );
    let predicted = plan.predicted.unwrap();
    assert_close(predicted.latency_ms, 30.0, "critical path: max(10, 5) + 20");
    assert_close(predicted.cost, 1.375, "summed cost");
    assert_close(predicted.throughput_rps, 50.0, "bottleneck throughput");
    assert_close(predicted.availability, 0.99 * 0.98 * 0.995, "multiplied availability");

    // Its probe passes: the next plan uses it, with the others as ranked alternatives.
    server.supervisor.tick().await;
    assert_eq!(server.health("billing-fast").await, pb::Health::Passing as i32);
    let plan = server.plan(want_receipt.clone()).await.unwrap();
    assert_eq!(levels(&plan), [vec!["billing-fast", "fraud"], vec!["archive"]]);
    assert_eq!(tasks(&plan)[0], ("billing-fast", "billing-fast", vec!["billing", "billing-slow"], vec![]));
    assert_close(plan.predicted.unwrap().latency_ms, 25.0, "critical path: max(1, 5) + 20");

    // Its probe fails: critical, and out of plans (and alternatives) again.
    let fast = ServiceId::new("billing-fast").unwrap();
    server.probe.script(&fast, [Err("connection refused".to_owned())]);
    server.clock.advance(Duration::from_secs(10));
    server.supervisor.tick().await;
    assert_eq!(server.health("billing-fast").await, pb::Health::Critical as i32);
    let plan = server.plan(want_receipt.clone()).await.unwrap();
    assert_eq!(tasks(&plan)[0], ("billing", "billing", vec!["billing-slow"], vec![]));

    // Under a cost objective the cheaper biller wins instead.
    let cheap = pb::Goal { objective: pb::Objective::Cost as i32, ..want_receipt };
    let plan = server.plan(cheap).await.unwrap();
    assert_eq!(tasks(&plan)[0], ("billing-slow", "billing-slow", vec!["billing"], vec![]));
    assert_close(plan.predicted.unwrap().cost, 0.875, "summed cost");
    server.shutdown().await;
}

#[tokio::test]
async fn goals_that_cannot_be_met_or_are_malformed_get_actionable_codes() {
    let mut server = start().await;
    server.register(service("billing", &["order"], &["invoice"], (10.0, 1.0, 100.0, 0.99))).await;
    server.register(service("archive", &["document", "risk"], &["receipt"], (20.0, 0.1, 80.0, 0.995))).await;

    // Nothing produces `risk`, which the only archive needs.
    assert_status(server.plan(goal(&["order"], &["receipt"])).await, Code::FailedPrecondition, "needs risk");
    assert_status(server.plan(goal(&["order"], &["refund"])).await, Code::FailedPrecondition, "wanted refund");
    let mut tight = goal(&["order"], &["invoice"]);
    tight.constraints = Some(pb::Constraints { max_latency_ms: Some(5.0), ..Default::default() });
    assert_status(server.plan(tight).await, Code::FailedPrecondition, "max_latency_ms");
    let mut ghost = goal(&["order"], &["invoice"]);
    ghost.constraints = Some(pb::Constraints { include_services: vec!["ghost".into()], ..Default::default() });
    assert_status(server.plan(ghost).await, Code::FailedPrecondition, r#"included service "ghost""#);
    // Once a service produces it, the same goal is met.
    server.register(service("fraud", &["order"], &["risk"], (5.0, 0.2, 50.0, 0.98))).await;
    let plan = server.plan(goal(&["order"], &["receipt"])).await.unwrap();
    assert_eq!(levels(&plan), [vec!["billing", "fraud"], vec!["archive"]]);

    assert_status(server.plan(goal(&["order"], &[])).await, Code::InvalidArgument, "goal.wanted");
    assert_status(
        server.planner.plan(pb::PlanRequest { goal: None }).await,
        Code::InvalidArgument,
        "goal: must be set",
    );
    let bad_objective = pb::Goal { objective: 42, ..goal(&["order"], &["invoice"]) };
    assert_status(server.plan(bad_objective).await, Code::InvalidArgument, "goal.objective");
    let mut bad_id = goal(&["order"], &["invoice"]);
    bad_id.constraints = Some(pb::Constraints { exclude_services: vec!["Not An Id".into()], ..Default::default() });
    assert_status(server.plan(bad_id).await, Code::InvalidArgument, "goal.constraints.exclude_services[0]");
    let mut bad_bound = goal(&["order"], &["invoice"]);
    bad_bound.constraints = Some(pb::Constraints { min_availability: Some(1.5), ..Default::default() });
    assert_status(server.plan(bad_bound).await, Code::InvalidArgument, "constraints.min_availability");
    server.shutdown().await;
}

/// The status of a goal wanting 20,000 unknown concepts names every one, over a megabyte: sent
/// whole, its trailer would be far past the 16 KiB header block a tonic client accepts, and the
/// client would close the connection. The server cuts the message, and the connection carries on.
#[tokio::test]
async fn a_huge_status_message_is_cut_and_the_connection_carries_on() {
    let mut server = start().await;
    let wanted: Vec<String> = (0..20_000).map(|i| format!("unknown-concept-{i}")).collect();
    let wanted: Vec<&str> = wanted.iter().map(String::as_str).collect();
    let status = server.plan(goal(&["order"], &wanted)).await.unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition, "{:.300}", status.message());
    assert!(status.message().starts_with("unsatisfiable: wanted unknown-concept-0, "), "{:.300}", status.message());
    assert!(status.message().contains("… (cut from "), "{:.300}", status.message());
    assert!(status.message().len() < 2 * 1024, "{}", status.message().len());
    // The same connection answers the next call.
    assert_status(server.plan(goal(&["order"], &["refund"])).await, Code::FailedPrecondition, "wanted refund");
    server.shutdown().await;
}

#[tokio::test]
async fn the_planner_service_reports_serving() {
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

    let server = start().await;
    let mut health = HealthClient::new(server.channel.clone());
    let answer =
        health.check(HealthCheckRequest { service: "baton.v1.PlannerService".into() }).await.unwrap().into_inner();
    assert_eq!(answer.status, ServingStatus::Serving as i32);
    server.shutdown().await;
}
