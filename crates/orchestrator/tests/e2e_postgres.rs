//! `baton serve --store postgres://...` against a throwaway PostgreSQL cluster: a workflow runs,
//! the server is killed with `kill -9` mid-run and started again on the same database, and the
//! execution completes with each step's effect once.

mod support;

use std::time::Duration;

use baton_grpc::pb;
use baton_store::testing::PgCluster;
use support::{Clients, ServerProcess, shop_with_pipeline};

/// The start of the one execution, with its idempotency key.
fn start() -> pb::StartExecutionRequest {
    pb::StartExecutionRequest {
        workflow: "pipeline".to_owned(),
        version: None,
        input_json: r#"{"sku": "book-1", "amount": 3.5}"#.to_owned(),
        idempotency_key: Some("pg-1".to_owned()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_lives_in_postgresql_across_a_kill9() {
    let cluster = tokio::task::spawn_blocking(PgCluster::start).await.unwrap();
    let url = cluster.create_database().await;
    let dir = tempfile::tempdir().unwrap();
    let mut server = ServerProcess::start(&dir.path().join("unused"), &["--store", &url]).await;
    let (services, mut clients) = shop_with_pipeline(&server, Duration::from_millis(200)).await;
    let started = clients.executions.start_execution(start()).await.unwrap().into_inner();
    let id = started.execution.unwrap().id;
    // Two of the five steps in, then no shutdown at all.
    tokio::time::sleep(Duration::from_millis(500)).await;
    server.kill9();
    assert!(!dir.path().join("unused").exists(), "nothing was written to the data dir");
    server.restart().await;
    let mut clients = Clients::new(server.channel().await);
    clients.all_completed([&id], Duration::from_secs(60), &server).await;
    for service in &services {
        let repeated: Vec<_> = service.handle().key_effects().into_iter().filter(|(_, n)| *n != 1).collect();
        assert!(repeated.is_empty(), "{}: effects repeated: {repeated:?}", service.id());
    }
    // The same idempotency key after the restart answers with the same execution.
    let again = clients.executions.start_execution(start()).await.unwrap().into_inner();
    assert!(again.existing);
    assert_eq!(again.execution.unwrap().id, id);
}
