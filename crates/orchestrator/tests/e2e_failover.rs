//! Failover: two equivalent inventory services; one is killed mid-run. Every execution
//! completes on the other, and no step's effect happens twice across the two.

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use baton_examples::{Kind, ServiceOptions};
use baton_grpc::pb;
use support::{Clients, ServerProcess, example};

const EXECUTIONS: usize = 40;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_complete_on_the_survivor_when_one_of_two_equivalent_services_dies() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(&dir.path().join("data"), &[]).await;
    let options = ServiceOptions {
        baton: Some(server.url()),
        latency: Duration::from_millis(20),
        ttl: Duration::from_secs(1),
        ..ServiceOptions::default()
    };
    let spawn =
        |kind, id: &str| baton_examples::spawn(kind, ServiceOptions { id: Some(id.to_owned()), ..options.clone() });
    let doomed = spawn(Kind::Inventory, "inventory-a").await.unwrap();
    let survivor = spawn(Kind::Inventory, "inventory-b").await.unwrap();
    let _payments = spawn(Kind::Payments, "payments").await.unwrap();
    let _shipping = spawn(Kind::Shipping, "shipping").await.unwrap();
    let doomed_handle = doomed.handle();
    let mut clients = Clients::new(server.channel().await);
    clients.wait_services(4).await;
    clients.apply(&example("pipeline.yaml")).await;

    let mut ids = Vec::new();
    for n in 0..EXECUTIONS {
        let started = clients
            .executions
            .start_execution(pb::StartExecutionRequest {
                workflow: "pipeline".to_owned(),
                version: None,
                input_json: format!(r#"{{"sku": "book-{n}", "amount": 10}}"#),
                idempotency_key: None,
            })
            .await
            .unwrap();
        ids.push(started.into_inner().execution.unwrap().id);
    }
    // Let the runs get going on both, then kill one as if it crashed: no deregistration.
    tokio::time::timeout(Duration::from_secs(30), async {
        while doomed_handle.stats().effects < 5 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("the doomed service took some of the work");
    doomed.kill().await.unwrap();
    let served_by_survivor_at_kill = survivor.handle().stats().effects;

    clients.all_completed(&ids, Duration::from_secs(120), &server).await;

    assert!(survivor.handle().stats().effects > served_by_survivor_at_kill, "the survivor took over");
    // Each inventory step's effect happened once, on one of the two.
    let mut effects: BTreeMap<String, u64> = doomed_handle.key_effects();
    for (key, n) in survivor.handle().key_effects() {
        *effects.entry(key).or_default() += n;
    }
    assert_eq!(effects.len(), 2 * EXECUTIONS, "reserve and reserve-wrap of every execution");
    let repeated: Vec<_> = effects.iter().filter(|(_, n)| **n != 1).collect();
    assert!(repeated.is_empty(), "effects repeated across the two services: {repeated:?}");
}
