//! What the end-to-end benches share: the real server (`baton serve`'s code on real sockets)
//! with the example shop's HTTP services registered, the `order` workflow applied, and one
//! execution as a client sees it, from StartExecution to the end of its watch.

use std::time::Duration;

use baton::config::ServeArgs;
use baton::serve::Server;
use baton_benches::closed_loop;
use baton_grpc::pb;
use tonic::transport::Channel;

/// Changes how many executions a bench measures directly for its figures: more for a steadier
/// figure, fewer for a quick comparison of two builds.
const MEASURED_ENV: &str = "BATON_BENCH_E2E_MEASURED";

const ORDER: &str = include_str!("../../../examples/workflows/order.yaml");

/// The server over `store` (redb in `dir` when `None`), the shop's services registered with
/// it, and a channel to it.
pub(crate) async fn setup(
    dir: &std::path::Path,
    store: Option<String>,
) -> (Channel, Vec<baton_examples::RunningService>) {
    let mut config = ServeArgs::default().resolve().expect("the defaults resolve");
    config.listen = "127.0.0.1:0".parse().expect("an address");
    config.metrics_listen = "127.0.0.1:0".parse().expect("an address");
    config.console_listen = "127.0.0.1:0".parse().expect("an address");
    config.data_dir = dir.to_owned();
    config.store = store;
    config.log_level = "warn".to_owned();
    // The 64 clients share one connection, which the default limit (2,000 requests per second
    // per connection) would hold to 1,000 executions per second: this measures the engine.
    config.rate_limit = 1_000_000;
    let server = Server::bind(config).await.expect("the server binds");
    let url = format!("http://{}", server.grpc_addr());
    tokio::spawn(server.serve(std::future::pending()));
    shop(url).await
}

/// The shop's services, registered with the server at `url`, and a channel to it with `order`
/// applied.
pub(crate) async fn shop(url: String) -> (Channel, Vec<baton_examples::RunningService>) {
    let options = baton_examples::ServiceOptions { baton: Some(url.clone()), ..Default::default() };
    let services = baton_examples::spawn_shop(&options).await.expect("the shop starts");
    for service in &services {
        service.handle().registered().await;
    }
    let channel = Channel::from_shared(url).expect("a URL").connect().await.expect("the server answers");
    let mut workflows = pb::workflow_service_client::WorkflowServiceClient::new(channel.clone());
    workflows
        .apply_definition(pb::ApplyDefinitionRequest {
            source: ORDER.to_owned(),
            format: pb::DefinitionFormat::Yaml as i32,
        })
        .await
        .expect("the order workflow applies");
    (channel, services)
}

/// One execution from StartExecution to its terminal event. The watch is read to its end,
/// which follows the terminal event: a stream dropped with frames still in flight costs the
/// connection a reset, and enough of them close it.
pub(crate) async fn one(client: &mut pb::execution_service_client::ExecutionServiceClient<Channel>, n: usize) {
    let started = client
        .start_execution(pb::StartExecutionRequest {
            workflow: "order".to_owned(),
            version: None,
            input_json: format!(r#"{{"sku": "book-{n}", "quantity": 1, "amount": 12.5}}"#),
            idempotency_key: None,
        })
        .await
        .expect("starts")
        .into_inner();
    let id = started.execution.expect("an execution").id;
    let mut events =
        client.watch_execution(pb::WatchExecutionRequest { id, from_sequence: 0 }).await.expect("watches").into_inner();
    let mut completed = false;
    while let Some(event) = events.message().await.expect("the watch streams") {
        match event.event.and_then(|e| e.kind) {
            Some(pb::event::Kind::Completed(_)) => completed = true,
            Some(pb::event::Kind::Failed(failed)) => panic!("execution failed: {}", failed.error),
            Some(pb::event::Kind::Cancelled(_)) => panic!("execution cancelled"),
            _ => {}
        }
    }
    assert!(completed, "the watch ended before the execution did");
}

/// `executions` executions from `clients` closed-loop clients on `channel`: wall time and
/// latencies.
pub(crate) async fn drive(channel: &Channel, clients: usize, executions: usize) -> (Duration, Vec<Duration>) {
    closed_loop(clients, executions, || {
        let client = pb::execution_service_client::ExecutionServiceClient::new(channel.clone());
        move |n| {
            let mut client = client.clone();
            async move { one(&mut client, n).await }
        }
    })
    .await
}

/// The executions a bench measures for its figures: `default`, or [`MEASURED_ENV`]'s number.
pub(crate) fn measured(default: usize) -> usize {
    std::env::var(MEASURED_ENV).ok().map_or(default, |v| v.parse().expect("BATON_BENCH_E2E_MEASURED: a count"))
}
