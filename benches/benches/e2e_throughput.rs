//! `e2e_throughput`: the 3-step `order` workflow (reserve and charge in parallel, then ship)
//! over the example HTTP services, through the real server (`baton serve`'s code on real
//! sockets, durable on redb), driven by 64 gRPC clients in closed loops: executions per second
//! and start-to-completion latency at p50 and p99, as a client sees it (StartExecution until
//! WatchExecution delivers the terminal event).
//!
//! Server, services and clients share the bench process and its two cores, as they share the
//! machine; the figures are the baseline for the next round.

use std::time::Duration;

use baton::config::ServeArgs;
use baton::serve::Server;
use baton_benches::{closed_loop, quantile, report_figure};
use baton_grpc::pb;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use tonic::transport::Channel;

const CLIENTS: usize = 64;
/// Executions per criterion iteration.
const PER_ITERATION: usize = 500;
/// Executions of the direct measurement for the figures.
const MEASURED: usize = 3_000;

const ORDER: &str = include_str!("../../examples/workflows/order.yaml");

/// The server, the shop's services registered with it, and a channel to it.
async fn setup(dir: &std::path::Path) -> (Channel, Vec<baton_examples::RunningService>) {
    let mut config = ServeArgs::default().resolve().expect("the defaults resolve");
    config.listen = "127.0.0.1:0".parse().expect("an address");
    config.metrics_listen = "127.0.0.1:0".parse().expect("an address");
    config.console_listen = "127.0.0.1:0".parse().expect("an address");
    config.data_dir = dir.to_owned();
    config.log_level = "warn".to_owned();
    // The 64 clients share one connection, which the default limit (2,000 requests per second
    // per connection) would hold to 1,000 executions per second: this measures the engine.
    config.rate_limit = 1_000_000;
    let server = Server::bind(config).await.expect("the server binds");
    let url = format!("http://{}", server.grpc_addr());
    tokio::spawn(server.serve(std::future::pending()));
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

/// One execution from StartExecution to its terminal event.
async fn one(client: &mut pb::execution_service_client::ExecutionServiceClient<Channel>, n: usize) {
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
    while let Some(event) = events.message().await.expect("the watch streams") {
        match event.event.and_then(|e| e.kind) {
            Some(pb::event::Kind::Completed(_)) => return,
            Some(pb::event::Kind::Failed(failed)) => panic!("execution failed: {}", failed.error),
            Some(pb::event::Kind::Cancelled(_)) => panic!("execution cancelled"),
            _ => {}
        }
    }
    panic!("the watch ended before the execution did")
}

/// `executions` executions from `CLIENTS` closed-loop clients: wall time and latencies.
async fn drive(channel: &Channel, executions: usize) -> (Duration, Vec<Duration>) {
    closed_loop(CLIENTS, executions, || {
        let client = pb::execution_service_client::ExecutionServiceClient::new(channel.clone());
        move |n| {
            let mut client = client.clone();
            async move { one(&mut client, n).await }
        }
    })
    .await
}

fn e2e_throughput(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("a runtime");
    let dir = tempfile::tempdir().expect("a temp dir");
    let (channel, _services) = rt.block_on(setup(dir.path()));

    let mut group = c.benchmark_group("e2e_throughput");
    group.sample_size(10);
    group.throughput(Throughput::Elements(PER_ITERATION as u64));
    group.bench_function(format!("baton/order_3_steps_redb_{CLIENTS}_clients"), |b| {
        b.iter_custom(|iters| (0..iters).map(|_| rt.block_on(drive(&channel, PER_ITERATION)).0).sum())
    });
    group.finish();

    let (elapsed, mut latencies) = rt.block_on(drive(&channel, MEASURED));
    assert_eq!(latencies.len(), MEASURED, "one latency per execution");
    latencies.sort_unstable();
    let name = format!("3-step order workflow over HTTP, redb, {CLIENTS} gRPC clients");
    report_figure(
        "e2e_throughput",
        &format!("{name}: executions per second"),
        MEASURED as f64 / elapsed.as_secs_f64(),
        "1/s",
        None,
        None,
    );
    for (label, q) in [("p50", 0.5), ("p99", 0.99)] {
        report_figure(
            "e2e_throughput",
            &format!("{name}: start-to-completion {label}"),
            quantile(&latencies, q).as_secs_f64() * 1e3,
            "ms",
            None,
            None,
        );
    }
}

criterion_group!(benches, e2e_throughput);
criterion_main!(benches);
