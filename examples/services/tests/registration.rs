//! Self-registration against a real tonic server over a real registry (with its health
//! supervisor expiring TTLs): register, heartbeat, register again after the server forgot or
//! restarted, deregister; and the planner goal of `examples/goals` composes the three services.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use baton_examples::{Kind, RunningService, ServiceOptions};
use baton_grpc::pb::planner_service_client::PlannerServiceClient;
use baton_grpc::pb::registry_service_client::RegistryServiceClient;
use baton_grpc::{Backends, Config, pb};
use baton_registry::{Registry, SupervisorConfig};
use tokio::sync::oneshot;
use tonic::transport::Channel;

struct Server {
    address: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<Result<(), baton_grpc::Error>>,
    supervisor: baton_registry::SupervisorHandle,
}

/// A Baton gRPC server on `address` (port 0: any) over a fresh registry whose supervisor
/// expires TTLs every 20ms.
async fn start(address: SocketAddr) -> Server {
    let listener = tokio::net::TcpListener::bind(address).await.unwrap();
    let address = listener.local_addr().unwrap();
    let registry = Registry::default();
    let supervisor = SupervisorConfig { tick: Duration::from_millis(20), ..Default::default() }
        .build(registry.clone(), Arc::new(baton_core::fakes::ScriptedProbe::default()))
        .spawn();
    let taxonomy = Arc::new(baton_core::Taxonomy::default());
    let planner = Arc::new(baton_planner::LivePlanner::new(taxonomy, Arc::new(registry.clone())));
    // Registration is what these tests are about; the other services run on core's fakes.
    use baton_core::api::fakes::{InMemoryExecutions, InMemoryOrchestrator, InMemoryWorkerTasks, InMemoryWorkflows};
    let executions = InMemoryExecutions::new(InMemoryWorkflows::default());
    let backends = Backends {
        directory: Arc::new(registry),
        planner: planner.clone(),
        workflows: Arc::new(executions.workflows().clone()),
        executions: Arc::new(executions.clone()),
        workers: Arc::new(InMemoryWorkerTasks::default()),
        orchestrator: Arc::new(InMemoryOrchestrator::new(planner, executions)),
    };
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(Config::default().serve(backends, listener, async {
        let _ = stopped.await;
    }));
    Server { address, stop: Some(stop), task, supervisor }
}

impl Server {
    fn url(&self) -> String {
        format!("http://{}", self.address)
    }

    async fn client(&self) -> RegistryServiceClient<Channel> {
        RegistryServiceClient::connect(self.url()).await.unwrap()
    }

    async fn shutdown(mut self) {
        self.stop.take().unwrap().send(()).unwrap();
        self.task.await.unwrap().unwrap();
        self.supervisor.shutdown().await;
    }
}

fn options(server: &Server, id: &str, ttl: Duration) -> ServiceOptions {
    ServiceOptions { id: Some(id.to_owned()), baton: Some(server.url()), ttl, ..Default::default() }
}

/// The service as the server sees it, or the status code.
async fn get(client: &mut RegistryServiceClient<Channel>, id: &str) -> Result<pb::ServiceView, tonic::Code> {
    match client.get_service(pb::GetServiceRequest { id: id.to_owned() }).await {
        Ok(response) => Ok(response.into_inner().service.unwrap()),
        Err(status) => Err(status.code()),
    }
}

fn health(view: &pb::ServiceView) -> pb::Health {
    pb::Health::try_from(view.status.as_ref().unwrap().health).unwrap()
}

async fn registered(service: &RunningService) {
    let wait = service.handle();
    tokio::time::timeout(Duration::from_secs(20), wait.registered()).await.expect("the service registers");
}

/// Polls `done` every 10ms until it holds, failing after 20s.
async fn eventually<F: Future<Output = bool>>(what: &str, mut done: impl FnMut() -> F) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !done().await {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn a_service_registers_its_spec_and_heartbeats_keep_it_passing() {
    let server = start(SocketAddr::from(([127, 0, 0, 1], 0))).await;
    let mut client = server.client().await;
    // Long enough that a loaded machine does not miss it between two heartbeats.
    let ttl = Duration::from_secs(1);
    let service = baton_examples::spawn(Kind::Payments, options(&server, "payments-1", ttl)).await.unwrap();
    registered(&service).await;

    let view = get(&mut client, "payments-1").await.unwrap();
    let spec = view.spec.as_ref().unwrap();
    assert_eq!(spec, &normalised(service.spec()), "the server keeps the spec as sent");
    assert_eq!(spec.capabilities, ["payment", "payment.charge"]);
    assert_eq!(
        (spec.inputs.as_slice(), spec.outputs.as_slice()),
        (&["order".to_owned()][..], &["receipt".to_owned()][..])
    );
    let Some(pb::endpoint::Kind::Http(endpoint)) = spec.endpoint.as_ref().unwrap().kind.as_ref() else {
        panic!("an http endpoint: {spec:?}")
    };
    assert_eq!(endpoint.url, format!("http://{}/charge", service.addr()));
    let Some(pb::health_check::Kind::Ttl(check)) = spec.health_check.as_ref().unwrap().kind.as_ref() else {
        panic!("a ttl check: {spec:?}")
    };
    assert_eq!(check.ttl, Some(prost_duration(ttl)));
    assert_eq!(spec.labels["kind"], "payments");
    assert_eq!(health(&view), pb::Health::Passing);

    // Over more than a TTL (heartbeats every third of it), it stays passing because it heartbeats.
    let handle = service.handle();
    let client2 = client.clone();
    eventually("four heartbeats went through, each leaving the service passing", move || {
        let (handle, mut client) = (handle.clone(), client2.clone());
        async move {
            let view = get(&mut client, "payments-1").await.unwrap();
            assert_eq!(health(&view), pb::Health::Passing, "{:?}", view.status);
            handle.registration().heartbeats >= 4
        }
    })
    .await;
    let status = service.handle().registration();
    assert_eq!((status.registered, status.registrations), (true, 1));
    assert!(get(&mut client, "payments-1").await.unwrap().status.unwrap().last_heartbeat.is_some());

    // Killed, it stops heartbeating and its TTL runs out.
    service.kill().await.unwrap();
    let client3 = client.clone();
    eventually("the killed service turned critical", move || {
        let mut client = client3.clone();
        async move { health(&get(&mut client, "payments-1").await.unwrap()) == pb::Health::Critical }
    })
    .await;
    server.shutdown().await;
}

/// A spec as the server echoes it: every default filled in.
fn normalised(spec: &pb::ServiceSpec) -> pb::ServiceSpec {
    baton_grpc::convert::spec_to_proto(&baton_grpc::convert::spec_from_proto(spec.clone()).unwrap())
}

fn prost_duration(d: Duration) -> prost_types::Duration {
    prost_types::Duration::try_from(d).unwrap()
}

#[tokio::test]
async fn a_shutdown_deregisters_and_a_forgotten_service_registers_again() {
    let server = start(SocketAddr::from(([127, 0, 0, 1], 0))).await;
    let mut client = server.client().await;
    let service =
        baton_examples::spawn(Kind::Shipping, options(&server, "shipping", Duration::from_millis(150))).await.unwrap();
    registered(&service).await;
    client.deregister(pb::DeregisterRequest { id: "shipping".into() }).await.unwrap();
    let handle = service.handle();
    eventually("the next heartbeat was refused and the service registered again", || {
        let (handle, mut client) = (handle.clone(), client.clone());
        async move { handle.registration().registrations >= 2 && get(&mut client, "shipping").await.is_ok() }
    })
    .await;
    let error = service.handle().registration().last_error.unwrap();
    assert!(error.contains("heartbeat of service shipping failed"), "{error}");

    service.shutdown().await.unwrap();
    assert_eq!(get(&mut client, "shipping").await.unwrap_err(), tonic::Code::NotFound);
    assert!(!handle.registration().registered);
    server.shutdown().await;
}

#[tokio::test]
async fn registration_waits_out_a_server_that_is_down_and_survives_its_restart() {
    // A free port with nothing listening on it yet.
    let address = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap().local_addr().unwrap();
    let baton = Some(format!("http://{address}"));
    let options = ServiceOptions { baton, ttl: Duration::from_millis(300), ..Default::default() };
    let service = baton_examples::spawn(Kind::Inventory, options).await.unwrap();
    let handle = service.handle();
    eventually("a registration attempt failed", || {
        let handle = handle.clone();
        async move { handle.registration().last_error.is_some() }
    })
    .await;
    assert!(!handle.registration().registered);

    let server = start(address).await;
    registered(&service).await;
    let mut client = server.client().await;
    assert_eq!(health(&get(&mut client, "inventory").await.unwrap()), pb::Health::Passing);
    server.shutdown().await;

    // A new server on the same address knows nothing: the heartbeat's NOT_FOUND brings the
    // service back.
    let server = start(address).await;
    let mut client = server.client().await;
    eventually("the service registered with the restarted server", || {
        let mut client = client.clone();
        async move { get(&mut client, "inventory").await.is_ok() }
    })
    .await;
    assert!(handle.registration().registrations >= 2);
    assert_eq!(health(&get(&mut client, "inventory").await.unwrap()), pb::Health::Passing);
    service.shutdown().await.unwrap();
    server.shutdown().await;
}

#[tokio::test]
async fn the_example_goal_plans_over_the_registered_shop() {
    let server = start(SocketAddr::from(([127, 0, 0, 1], 0))).await;
    let options = ServiceOptions { baton: Some(server.url()), ..Default::default() };
    let shop = baton_examples::spawn_shop(&options).await.unwrap();
    for service in &shop {
        registered(service).await;
    }
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../goals/ship-order.yaml")).unwrap();
    let goal: baton_core::Goal = serde_yaml::from_str(&text).unwrap();
    let mut planner = PlannerServiceClient::connect(server.url()).await.unwrap();
    let request = pb::PlanRequest { goal: Some(baton_grpc::convert::goal_to_proto(&goal)) };
    let plan = planner.plan(request).await.unwrap().into_inner().plan.unwrap();

    let mut services: Vec<&str> = plan.tasks.iter().map(|t| t.service.as_str()).collect();
    services.sort_unstable();
    assert_eq!(services, ["inventory", "payments", "shipping"], "{plan:?}");
    let service_of = |task: &str| plan.tasks.iter().find(|t| t.id == task).unwrap().service.as_str();
    let mut levels: Vec<Vec<&str>> =
        plan.levels.iter().map(|l| l.tasks.iter().map(|t| service_of(t)).collect()).collect();
    levels.iter_mut().for_each(|l| l.sort_unstable());
    assert_eq!(levels, [vec!["inventory", "payments"], vec!["shipping"]]);
    let shipping = plan.tasks.iter().find(|t| t.service == "shipping").unwrap();
    let mut inputs = shipping.inputs.clone();
    inputs.sort();
    assert_eq!(inputs, ["receipt", "reservation"]);

    for service in shop {
        service.shutdown().await.unwrap();
    }
    server.shutdown().await;
}
