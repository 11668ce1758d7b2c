//! A real tonic server on 127.0.0.1:0 over a real registry, driven by a real tonic client:
//! every RegistryService call, its error codes, the message size limit, health and reflection.

mod common;

use std::sync::Arc;

use baton_grpc::pb::registry_service_client::RegistryServiceClient;
use baton_grpc::{Config, pb};
use baton_registry::Registry;
use tokio::sync::oneshot;
use tonic::Code;
use tonic::transport::Channel;

struct Server {
    client: RegistryServiceClient<Channel>,
    channel: Channel,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<Result<(), baton_grpc::Error>>,
}

async fn start() -> Server {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    let registry = Registry::default();
    let taxonomy = Arc::new(baton_core::Taxonomy::default());
    let planner = Arc::new(baton_planner::LivePlanner::new(taxonomy, Arc::new(registry.clone())));
    let backends = common::Fakes::new(common::idle_planner()).backends(Arc::new(registry), planner);
    let task = tokio::spawn(Config::default().serve(backends, listener, async {
        let _ = stopped.await;
    }));
    let channel = Channel::from_shared(format!("http://{address}")).unwrap().connect().await.unwrap();
    // The client accepts large messages so that the server's own limit is what is tested.
    let client = RegistryServiceClient::new(channel.clone()).max_encoding_message_size(64 << 20);
    Server { client, channel, stop: Some(stop), task }
}

impl Server {
    async fn shutdown(mut self) {
        self.stop.take().unwrap().send(()).unwrap();
        self.task.await.unwrap().unwrap();
    }
}

fn spec(id: &str, capability: &str, p99: f64) -> pb::ServiceSpec {
    pb::ServiceSpec {
        id: id.to_owned(),
        endpoint: Some(pb::Endpoint {
            kind: Some(pb::endpoint::Kind::Http(pb::endpoint::Http { url: format!("http://127.0.0.1:1/{id}") })),
        }),
        capabilities: vec![capability.to_owned()],
        qos: Some(pb::Qos { latency_p50_ms: 1.0, latency_p99_ms: p99, ..Default::default() }),
        ..Default::default()
    }
}

fn register(s: pb::ServiceSpec) -> pb::RegisterRequest {
    pb::RegisterRequest { spec: Some(s) }
}

fn find(capability: &str, limit: u32) -> pb::FindServicesRequest {
    pb::FindServicesRequest {
        requirements: Some(pb::ServiceRequirements { capabilities: vec![capability.to_owned()], ..Default::default() }),
        limit,
    }
}

fn ids(response: &pb::FindServicesResponse) -> Vec<&str> {
    response.candidates.iter().map(|c| c.service.as_ref().unwrap().spec.as_ref().unwrap().id.as_str()).collect()
}

fn assert_status<T: std::fmt::Debug>(result: Result<T, tonic::Status>, code: Code, message: &str) {
    let status = result.unwrap_err();
    assert_eq!(status.code(), code, "{status:?}");
    assert!(status.message().contains(message), "{:?} should contain {message:?}", status.message());
}

#[tokio::test]
async fn every_registry_call_works_over_the_wire() {
    let mut server = start().await;
    let c = &mut server.client;

    let created = c.register(register(spec("fast", "charge", 10.0))).await.unwrap().into_inner();
    assert_eq!(created.outcome, pb::RegisterOutcome::Created as i32);
    assert_eq!(created.service.unwrap().status.unwrap().health, pb::Health::Passing as i32);
    c.register(register(spec("slow", "charge", 300.0))).await.unwrap();
    let updated = c.register(register(spec("slow", "charge", 200.0))).await.unwrap().into_inner();
    assert_eq!(updated.outcome, pb::RegisterOutcome::Updated as i32);

    let got = c.get_service(pb::GetServiceRequest { id: "slow".into() }).await.unwrap().into_inner();
    let got = got.service.unwrap();
    assert_eq!(got.spec.as_ref().unwrap().qos.as_ref().unwrap().latency_p99_ms, 200.0);
    assert_eq!(got.spec.unwrap().capacity, 64);

    let beat = c.heartbeat(pb::HeartbeatRequest { id: "fast".into() }).await.unwrap().into_inner();
    let beat = beat.status.unwrap();
    assert!(beat.last_heartbeat.is_some());
    assert_eq!(beat.last_check_output, "heartbeat");

    let found = c.find_services(find("charge", 0)).await.unwrap().into_inner();
    assert_eq!((ids(&found), found.total_matched), (vec!["fast", "slow"], 2));
    let top = c.find_services(find("charge", 1)).await.unwrap().into_inner();
    assert_eq!((ids(&top), top.total_matched), (vec!["fast"], 2));
    assert!(top.candidates[0].score > 0.0 && top.candidates[0].score <= 1.0);

    c.deregister(pb::DeregisterRequest { id: "fast".into() }).await.unwrap();
    let found = c.find_services(find("charge", 0)).await.unwrap().into_inner();
    assert_eq!(ids(&found), ["slow"]);
    server.shutdown().await;
}

#[tokio::test]
async fn listing_pages_through_every_service_in_id_order() {
    let mut server = start().await;
    let c = &mut server.client;
    for i in (0..25).rev() {
        c.register(register(spec(&format!("svc-{i:02}"), "x", 10.0))).await.unwrap();
    }
    let mut seen = Vec::new();
    let mut token = String::new();
    loop {
        let page = c
            .list_services(pb::ListServicesRequest { page_size: 10, page_token: token.clone() })
            .await
            .unwrap()
            .into_inner();
        assert!(page.services.len() <= 10);
        seen.extend(page.services.into_iter().map(|s| s.spec.unwrap().id));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    let expected: Vec<String> = (0..25).map(|i| format!("svc-{i:02}")).collect();
    assert_eq!(seen, expected);
    // Oversized pages are capped, not refused; an unset size uses the default.
    let capped = c.list_services(pb::ListServicesRequest { page_size: 1_000_000, page_token: String::new() });
    assert_eq!(capped.await.unwrap().into_inner().services.len(), 25);
    assert_status(
        c.list_services(pb::ListServicesRequest { page_size: 1, page_token: "Not An Id".into() }).await,
        Code::InvalidArgument,
        "page_token",
    );
    server.shutdown().await;
}

#[tokio::test]
async fn bad_requests_get_typed_codes_and_change_nothing() {
    let mut server = start().await;
    let c = &mut server.client;
    c.register(register(spec("kept", "x", 10.0))).await.unwrap();

    assert_status(c.register(pb::RegisterRequest { spec: None }).await, Code::InvalidArgument, "spec: must be set");
    let mut no_endpoint = spec("bad", "x", 10.0);
    no_endpoint.endpoint = None;
    assert_status(c.register(register(no_endpoint)).await, Code::InvalidArgument, "spec.endpoint");
    let mut bad_qos = spec("kept", "y", 10.0);
    bad_qos.qos.as_mut().unwrap().availability = Some(7.0);
    assert_status(c.register(register(bad_qos)).await, Code::InvalidArgument, r#"invalid qos.availability "7""#);
    assert_status(c.register(register(spec("Bad Id", "x", 1.0))).await, Code::InvalidArgument, "invalid id");
    let mut bad_enum = spec("bad", "x", 10.0);
    bad_enum.security = Some(pb::SecurityProfile { auth_schemes: vec![42], ..Default::default() });
    assert_status(c.register(register(bad_enum)).await, Code::InvalidArgument, "unknown enum value 42");

    assert_status(c.get_service(pb::GetServiceRequest { id: "ghost".into() }).await, Code::NotFound, "ghost");
    assert_status(
        c.get_service(pb::GetServiceRequest { id: "".into() }).await,
        Code::InvalidArgument,
        "must not be empty",
    );
    assert_status(c.heartbeat(pb::HeartbeatRequest { id: "ghost".into() }).await, Code::NotFound, "unknown service");
    assert_status(c.deregister(pb::DeregisterRequest { id: "ghost".into() }).await, Code::NotFound, "unknown service");
    assert_status(
        c.find_services(pb::FindServicesRequest { requirements: None, limit: 0 }).await,
        Code::InvalidArgument,
        "requirements: must be set",
    );
    assert_status(
        c.find_services(pb::FindServicesRequest { requirements: Some(Default::default()), limit: 0 }).await,
        Code::InvalidArgument,
        "state at least one condition",
    );
    let contradictory = pb::ServiceRequirements { min_availability: Some(3.0), ..Default::default() };
    assert_status(
        c.find_services(pb::FindServicesRequest { requirements: Some(contradictory), limit: 0 }).await,
        Code::InvalidArgument,
        "min_availability",
    );

    // Nothing above changed what was registered.
    let kept = c.get_service(pb::GetServiceRequest { id: "kept".into() }).await.unwrap().into_inner();
    assert_eq!(kept.service.unwrap().spec.unwrap().capabilities, ["x"]);
    let all = c.list_services(pb::ListServicesRequest::default()).await.unwrap().into_inner();
    assert_eq!(all.services.len(), 1);
    server.shutdown().await;
}

#[tokio::test]
async fn an_oversized_message_is_refused_and_the_server_keeps_serving() {
    let mut server = start().await;
    let c = &mut server.client;
    let mut huge = spec("huge", "x", 10.0);
    huge.capabilities = (0..700_000).map(|i| format!("cap-{i}")).collect();
    assert_status(c.register(register(huge)).await, Code::OutOfRange, "message length too large");
    c.register(register(spec("small", "x", 10.0))).await.unwrap();
    let found = c.find_services(find("x", 0)).await.unwrap().into_inner();
    assert_eq!(ids(&found), ["small"]);
    server.shutdown().await;
}

#[tokio::test]
async fn health_and_reflection_are_served() {
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;

    let server = start().await;
    let mut health = HealthClient::new(server.channel.clone());
    for service in [
        "",
        "baton.v1.RegistryService",
        "baton.v1.PlannerService",
        "baton.v1.WorkflowService",
        "baton.v1.ExecutionService",
        "baton.v1.WorkerService",
        "baton.v1.OrchestratorService",
    ] {
        let answer = health.check(HealthCheckRequest { service: service.into() }).await.unwrap().into_inner();
        assert_eq!(answer.status, ServingStatus::Serving as i32, "{service:?}");
    }
    assert_eq!(
        health.check(HealthCheckRequest { service: "baton.v1.Nope".into() }).await.unwrap_err().code(),
        Code::NotFound
    );

    let mut reflection = ServerReflectionClient::new(server.channel.clone());
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut answers = reflection.server_reflection_info(tokio_stream::iter([request])).await.unwrap().into_inner();
    let answer = answers.message().await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = answer.message_response else {
        panic!("unexpected reflection answer {answer:?}")
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    for wanted in ["baton.v1.RegistryService", "grpc.health.v1.Health", "baton.v1.ExecutionService"] {
        assert!(names.iter().any(|n| n == wanted), "{wanted} missing from {names:?}");
    }

    // The older protocol, for clients that speak only v1alpha.
    use tonic_reflection::pb::v1alpha;
    let mut alpha = v1alpha::server_reflection_client::ServerReflectionClient::new(server.channel.clone());
    let request = v1alpha::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(v1alpha::server_reflection_request::MessageRequest::ListServices(String::new())),
    };
    let mut answers = alpha.server_reflection_info(tokio_stream::iter([request])).await.unwrap().into_inner();
    let answer = answers.message().await.unwrap().unwrap();
    let Some(v1alpha::server_reflection_response::MessageResponse::ListServicesResponse(list)) =
        answer.message_response
    else {
        panic!("unexpected v1alpha reflection answer {answer:?}")
    };
    assert!(list.service.iter().any(|s| s.name == "baton.v1.WorkflowService"), "{list:?}");
    server.shutdown().await;
}
