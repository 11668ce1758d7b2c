//! The client commands against a real gRPC server on 127.0.0.1:0 serving a real registry and a
//! `LivePlanner`: services registered from YAML and JSON files are listed, shown, composed into
//! plans and deregistered, and each command's exit code says how it went. The server serves only
//! those two services, so the test needs no other backend; `cli_watch.rs` covers the execution
//! commands.

use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;

use baton::cli::{ClientCommand, ClientOptions};
use baton_core::TaxonomyBuilder;
use baton_grpc::pb::planner_service_server::PlannerServiceServer;
use baton_grpc::pb::registry_service_server::RegistryServiceServer;
use baton_grpc::{Limits, PlannerApi, RegistryApi};
use baton_planner::LivePlanner;
use clap::Parser;
use tokio::sync::oneshot;

#[derive(Debug, Parser)]
struct Cli {
    #[command(flatten)]
    options: ClientOptions,
    #[command(subcommand)]
    command: ClientCommand,
}

struct Server {
    url: String,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<Result<(), tonic::transport::Error>>,
}

impl Server {
    async fn start() -> Self {
        let registry = baton_registry::Config::default().build();
        let mut taxonomy = TaxonomyBuilder::default();
        for concept in ["order", "receipt", "tracking"] {
            taxonomy.add(concept, None).unwrap();
        }
        let planner = LivePlanner::new(Arc::new(taxonomy.build().unwrap()), Arc::new(registry.clone()));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let (stop, stopped) = oneshot::channel::<()>();
        // Only the two services these commands call, so the test needs no other backend.
        let task = tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(RegistryServiceServer::new(RegistryApi::new(Arc::new(registry), Limits::default())))
                .add_service(PlannerServiceServer::new(PlannerApi::new(Arc::new(planner))))
                .serve_with_incoming_shutdown(tokio_stream::wrappers::TcpListenerStream::new(listener), async {
                    let _ = stopped.await;
                }),
        );
        Self { url, stop: Some(stop), task }
    }

    /// Runs `baton ARGS --server URL` and returns its exit code.
    async fn baton(&self, args: &[&str]) -> ExitCode {
        let argv = std::iter::once("baton").chain(args.iter().copied()).chain(["--server", &self.url]);
        let cli = Cli::try_parse_from(argv).unwrap_or_else(|e| panic!("{args:?}: {e}"));
        baton::cli::run(cli.command, &cli.options).await
    }

    async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        self.task.await.unwrap().unwrap();
    }
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path.display().to_string()
}

#[tokio::test]
async fn services_register_list_plan_and_deregister_through_the_cli() {
    let server = Server::start().await;
    let dir = tempfile::tempdir().unwrap();
    let payments = write(
        dir.path(),
        "payments.yaml",
        "id: payments-1\nendpoint: {protocol: http, url: \"http://127.0.0.1:9/charge\"}\n\
         capabilities: [payment.charge]\ninputs: [order]\noutputs: [receipt]\n\
         qos: {latency_p50_ms: 10, latency_p99_ms: 20, throughput_rps: 100, cost: 1}\n",
    );
    let shipping = write(
        dir.path(),
        "shipping.json",
        r#"{"id": "shipping-1", "endpoint": {"protocol": "http", "url": "http://127.0.0.1:9/ship"},
            "inputs": ["receipt"], "outputs": ["tracking"],
            "qos": {"latency_p50_ms": 5, "latency_p99_ms": 9, "throughput_rps": 50, "cost": 2}}"#,
    );
    let token = write(dir.path(), "token", "s3cret\n");
    let ok = ExitCode::SUCCESS;
    let failed = ExitCode::from(1);

    assert_eq!(server.baton(&["service", "register", &payments]).await, ok);
    assert_eq!(server.baton(&["service", "register", &shipping, "--output", "json"]).await, ok);
    assert_eq!(server.baton(&["service", "register", &payments]).await, ok, "registering again updates");
    assert_eq!(server.baton(&["service", "list"]).await, ok);
    assert_eq!(server.baton(&["service", "list", "--output", "json", "--token-file", &token]).await, ok);
    assert_eq!(server.baton(&["service", "get", "payments-1"]).await, ok);
    assert_eq!(server.baton(&["service", "get", "nope"]).await, failed, "NOT_FOUND");

    assert_eq!(server.baton(&["plan", "--have", "order", "--want", "tracking", "--max-latency", "1000"]).await, ok);
    assert_eq!(server.baton(&["plan", "--have", "order", "--want", "tracking", "--output", "json"]).await, ok);
    assert_eq!(
        server.baton(&["plan", "--have", "order", "--want", "tracking", "--max-cost", "1"]).await,
        failed,
        "no plan meets the bound"
    );

    assert_eq!(server.baton(&["service", "deregister", "payments-1"]).await, ok);
    assert_eq!(server.baton(&["service", "deregister", "payments-1"]).await, failed, "already gone");
    assert_eq!(
        server.baton(&["plan", "--have", "order", "--want", "tracking"]).await,
        failed,
        "no producer of receipt"
    );
    server.stop().await;
}
