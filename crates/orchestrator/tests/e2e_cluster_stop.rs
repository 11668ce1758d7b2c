//! A cluster node frozen (`SIGSTOP`) for twice its lease and then thawed (`SIGCONT`), on two
//! real `baton serve --cluster` nodes over one throwaway PostgreSQL database: the other node
//! takes its partitions over once its lease has expired and finishes its executions; the
//! thawed node fences itself, makes no service call (the example services record the calling
//! node from `X-Baton-Node`) and commits nothing that breaks a journal, then rejoins.

mod support;

use std::collections::BTreeMap;
use std::process::Command;
use std::time::{Duration, Instant};

use baton_grpc::pb;
use baton_store::testing::{PgCluster, sql_client};
use support::cluster::check_invariants;
use support::{Clients, ServerProcess, example, sample, scrape};

/// Lease of the test's nodes.
const LEASE: Duration = Duration::from_secs(3);

async fn node(url: &str, name: &str, dir: &std::path::Path) -> ServerProcess {
    let args = ["--store", url, "--cluster", "--node-id", name, "--lease-ttl", "3s", "--partitions", "8"];
    ServerProcess::start(&dir.join(name), &args).await
}

fn signal(server: &ServerProcess, name: &str) {
    let status = Command::new("kill").arg(format!("-{name}")).arg(server.pid().to_string()).status().unwrap();
    assert!(status.success(), "kill -{name}");
}

async fn start_on(clients: &mut Clients, key: String) -> String {
    let request = pb::StartExecutionRequest {
        workflow: "pipeline".to_owned(),
        version: None,
        input_json: r#"{"sku": "book-1", "amount": 3.5}"#.to_owned(),
        idempotency_key: Some(key),
    };
    clients.executions.start_execution(request).await.unwrap().into_inner().execution.unwrap().id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_frozen_past_its_lease_calls_and_commits_nothing_after_it() {
    let cluster = tokio::task::spawn_blocking(PgCluster::start).await.unwrap();
    let url = cluster.create_database().await;
    let dir = tempfile::tempdir().unwrap();
    let a = node(&url, "a", dir.path()).await;
    let b = node(&url, "b", dir.path()).await;
    // The shop registers with a, and the test registers it with b too (each node has its own
    // registry). Slow steps, so that b has runs in flight when it is frozen.
    let options = baton_examples::ServiceOptions {
        baton: Some(a.url()),
        ttl: Duration::from_secs(3600),
        latency: Duration::from_millis(150),
        capacity: 64,
        ..Default::default()
    };
    let shop = baton_examples::spawn_shop(&options).await.unwrap();
    let mut on_a = Clients::new(a.channel().await);
    let mut on_b = Clients::new(b.channel().await);
    on_a.wait_services(3).await;
    let listed = on_a.registry.list_services(pb::ListServicesRequest::default()).await.unwrap().into_inner();
    for view in &listed.services {
        let spec = view.spec.clone().unwrap();
        let id = spec.id.clone();
        on_b.registry.register(pb::RegisterRequest { spec: Some(spec) }).await.unwrap();
        on_b.registry.heartbeat(pb::HeartbeatRequest { id }).await.unwrap();
    }
    on_a.apply(&example("pipeline.yaml")).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let status = baton_cluster::status(&url).await.unwrap();
        if status.nodes.len() == 2 && status.nodes.iter().all(|n| n.partitions == 4) {
            break;
        }
        assert!(Instant::now() < deadline, "the nodes did not share the partitions: {status:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let mut ids = Vec::new();
    for n in 0..40 {
        let clients = if n % 2 == 0 { &mut on_a } else { &mut on_b };
        ids.push(start_on(clients, format!("before-{n}")).await);
    }
    // Frozen with runs in flight, for twice its lease: a takes its partitions over.
    let stopped = Instant::now();
    signal(&b, "STOP");
    for n in 0..10 {
        ids.push(start_on(&mut on_a, format!("during-{n}")).await);
    }
    let deadline = stopped + Duration::from_secs(30);
    loop {
        let status = baton_cluster::status(&url).await.unwrap();
        if status.nodes.iter().any(|n| n.id == "a" && n.partitions == 8) {
            break;
        }
        assert!(Instant::now() < deadline, "a did not take b's partitions: {status:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The scenario's length, not a wait for a state: b stays frozen for twice its lease.
    tokio::time::sleep_until((stopped + 2 * LEASE).into()).await;
    signal(&b, "CONT");
    let thawed = Instant::now();

    on_a.all_completed(&ids, Duration::from_secs(120), &a).await;
    // b fences itself when it runs again and joins anew: it owns partitions again later.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let status = baton_cluster::status(&url).await.unwrap();
        if status.nodes.iter().any(|n| n.id == "b" && n.incarnation >= 2 && n.partitions > 0) {
            break;
        }
        assert!(Instant::now() < deadline, "b did not rejoin: {status:?}\n{}", b.log_text());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(b.log_text().contains("fenced"), "b did not fence itself:\n{}", b.log_text());
    let text = scrape(b.metrics).await;
    assert!(sample(&text, "baton_cluster_self_fences_total").is_some_and(|n| n >= 1.0), "{text}");
    assert!(sample(&text, "baton_cluster_lease_renewal_failures_total").is_some_and(|n| n >= 1.0), "{text}");
    let text = scrape(a.metrics).await;
    assert!(sample(&text, "baton_cluster_partitions_claimed_total").is_some_and(|n| n >= 8.0), "{text}");

    // No call from b after it thawed: what it sent before it froze may arrive late, nothing after.
    let mut from_b = 0;
    for service in &shop {
        for (node, at) in service.handle().callers() {
            assert!(node == "a" || node == "b", "{node}");
            if node == "b" {
                from_b += 1;
                assert!(at < thawed, "b called {} {:?} after it thawed", service.id(), at - thawed);
            }
        }
    }
    assert!(from_b > 0, "b made no call at all before it was frozen");
    // Every step's effect once per key, whichever node called.
    let mut effects: BTreeMap<(String, String), u64> = BTreeMap::new();
    for service in &shop {
        for (key, n) in service.handle().key_effects() {
            *effects.entry((service.id().to_owned(), key)).or_default() += n;
        }
    }
    assert!(effects.values().all(|n| *n == 1), "effects repeated: {effects:?}");
    assert_eq!(effects.len(), ids.len() * 5);

    // What the database holds: every journal contiguous, one Started, a step succeeded at most
    // once, ending with Completed: nothing b wrote after its lease broke one.
    let client = sql_client(&url).await;
    check_invariants(&client, ids.len()).await;
}
