//! Crash: 300 executions of the 5-step pipeline against the example services while the
//! server is killed with `kill -9` three times at random moments and restarted. Every
//! execution acknowledged by Start exists after each restart, all 300 complete, and every
//! step's side effect happened exactly once (the services dedup by Idempotency-Key).

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use baton_grpc::pb;
use rand::{Rng, SeedableRng};
use support::{Clients, ServerProcess, shop_with_pipeline};
use tokio::task::JoinSet;

const EXECUTIONS: usize = 300;
const KILLS: usize = 3;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_kill9s_lose_nothing_and_repeat_no_effect() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = ServerProcess::start(&dir.path().join("data"), &[]).await;
    // Latency keeps executions in flight when the kills land.
    let (services, _) = shop_with_pipeline(&server, Duration::from_millis(15)).await;

    // Starters keep trying (same idempotency key) through the kills.
    let grpc = server.url();
    let mut starters = JoinSet::new();
    for n in 0..EXECUTIONS {
        let grpc = grpc.clone();
        starters.spawn(async move {
            let request = pb::StartExecutionRequest {
                workflow: "pipeline".to_owned(),
                version: None,
                input_json: format!(r#"{{"sku": "book-{n}", "amount": {n}.5}}"#),
                idempotency_key: Some(format!("crash-{n}")),
            };
            loop {
                let started = async {
                    let channel = tonic::transport::Channel::from_shared(grpc.clone()).unwrap().connect().await?;
                    let mut client = pb::execution_service_client::ExecutionServiceClient::new(channel);
                    Ok::<_, Box<dyn std::error::Error + Send + Sync>>(
                        client.start_execution(request.clone()).await?.into_inner(),
                    )
                };
                match started.await {
                    Ok(answer) => return (n, answer.execution.unwrap().id),
                    Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            }
        });
    }

    let mut rng = rand::rngs::StdRng::seed_from_u64(0xba70);
    let mut acknowledged = BTreeMap::new();
    for kill in 0..KILLS {
        tokio::time::sleep(Duration::from_millis(rng.random_range(300..1500))).await;
        while let Some(Ok((n, id))) = starters.try_join_next() {
            acknowledged.insert(n, id);
        }
        server.kill9();
        server.restart().await;
        let mut clients = Clients::new(server.channel().await);
        // Everything Start acknowledged before the kill is still there.
        for id in acknowledged.values() {
            let found = clients.executions.get_execution(pb::GetExecutionRequest { id: id.clone() }).await;
            assert!(
                found.is_ok(),
                "execution {id} lost by kill {}: {:?}\n{}",
                kill + 1,
                found.err(),
                server.log_text()
            );
        }
    }
    while let Some(started) = starters.join_next().await {
        let (n, id) = started.unwrap();
        acknowledged.insert(n, id);
    }
    assert_eq!(acknowledged.len(), EXECUTIONS);

    let mut clients = Clients::new(server.channel().await);
    clients.all_completed(acknowledged.values(), Duration::from_secs(180), &server).await;

    // Exactly once per (execution, step): inventory serves reserve and reserve-wrap,
    // payments charge, shipping ship and ship-wrap.
    let steps: BTreeMap<&str, usize> = BTreeMap::from([("inventory", 2), ("payments", 1), ("shipping", 2)]);
    for service in &services {
        let effects = service.handle().key_effects();
        let expected = steps[service.id()] * EXECUTIONS;
        assert_eq!(effects.len(), expected, "{}: one key per execution and step", service.id());
        let repeated: Vec<_> = effects.iter().filter(|(_, n)| **n != 1).collect();
        assert!(repeated.is_empty(), "{}: effects repeated: {repeated:?}", service.id());
        for id in acknowledged.values() {
            assert!(effects.keys().any(|k| k.starts_with(id.as_str())), "{}: nothing for {id}", service.id());
        }
    }
}
