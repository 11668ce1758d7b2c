//! Three real `baton serve --cluster` nodes on one throwaway PostgreSQL database: executions
//! started round-robin across the nodes all complete with each step's effect once; a `kill -9`
//! of a node mid-run loses nothing (its partitions are claimed after its lease and its
//! executions resumed); the journals left in the database keep their invariants; `baton
//! cluster status` shows the nodes; a server started outside the cluster on its database is
//! refused.
//!
//! The one example shop registers with the first node; the others know it from the registry
//! the nodes share (`e2e_cluster_registry.rs` tests that registry itself).

#![allow(clippy::print_stderr, reason = "the test logs the takeover time and the final cluster status")]

mod support;

use std::collections::{BTreeMap, HashMap};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use baton_grpc::pb;
use baton_store::testing::{PgCluster, sql_client};
use support::{Clients, ServerProcess, example, free_addr};

/// Lease of the test's nodes: short, so a takeover fits in the test's time.
const LEASE: &str = "3s";

async fn node(url: &str, name: &str, dir: &std::path::Path) -> ServerProcess {
    let data = dir.join(name);
    ServerProcess::start(&data, &["--store", url, "--cluster", "--node-id", name, "--lease-ttl", LEASE]).await
}

/// The example shop, registered with the first of `nodes` and known to all.
async fn shop(nodes: &[&ServerProcess]) -> Vec<baton_examples::RunningService> {
    let options = baton_examples::ServiceOptions {
        baton: Some(nodes[0].url()),
        ttl: Duration::from_secs(3600),
        latency: Duration::from_millis(20),
        capacity: 64,
        ..Default::default()
    };
    let services = baton_examples::spawn_shop(&options).await.unwrap();
    // The nodes share the registry: the others learn of the shop from the database.
    for node in nodes {
        Clients::new(node.channel().await).wait_services(3).await;
    }
    services
}

fn start(key: &str) -> pb::StartExecutionRequest {
    pb::StartExecutionRequest {
        workflow: "pipeline".to_owned(),
        version: None,
        input_json: r#"{"sku": "book-1", "amount": 3.5}"#.to_owned(),
        idempotency_key: Some(key.to_owned()),
    }
}

/// Starts `count` executions round-robin over `nodes`, keys `prefix-<n>`; their ids.
async fn start_round_robin(nodes: &[&ServerProcess], prefix: &str, count: usize) -> Vec<String> {
    let mut clients = Vec::new();
    for node in nodes {
        clients.push(Clients::new(node.channel().await));
    }
    let mut ids = Vec::with_capacity(count);
    for n in 0..count {
        let count = clients.len();
        let client = &mut clients[n % count];
        let started = client.executions.start_execution(start(&format!("{prefix}-{n}"))).await.unwrap().into_inner();
        ids.push(started.execution.unwrap().id);
    }
    ids
}

/// Every step's effect happened once per key, over all shops; the number of keys.
fn effects_once(shops: &[Vec<baton_examples::RunningService>]) -> usize {
    let mut counts: BTreeMap<(String, String), u64> = BTreeMap::new();
    for service in shops.iter().flatten() {
        for (key, n) in service.handle().key_effects() {
            *counts.entry((service.id().to_owned(), key)).or_default() += n;
        }
    }
    let repeated: Vec<_> = counts.iter().filter(|(_, n)| **n != 1).collect();
    assert!(repeated.is_empty(), "effects repeated: {repeated:?}");
    counts.len()
}

/// The partitions' epochs, by partition.
async fn epochs(client: &tokio_postgres::Client) -> Vec<i64> {
    let rows = client.query("SELECT epoch FROM baton_partitions ORDER BY id", &[]).await.unwrap();
    rows.iter().map(|row| row.get(0)).collect()
}

/// What must hold of the database after a run: every execution terminal, each journal
/// contiguous from 1 with one `Started` first, at most one `TaskSucceeded` per step.
async fn check_invariants(client: &tokio_postgres::Client, executions: usize) {
    let states = client.query("SELECT state, count(*) FROM baton_executions GROUP BY state", &[]).await.unwrap();
    let states: HashMap<String, i64> = states.iter().map(|row| (row.get(0), row.get(1))).collect();
    assert_eq!(states, HashMap::from([("completed".to_owned(), i64::try_from(executions).unwrap())]));
    let rows = client
        .query(
            "SELECT execution, first_sequence, events FROM baton_journal_chunks ORDER BY execution, last_sequence",
            &[],
        )
        .await
        .unwrap();
    let mut journals: BTreeMap<Vec<u8>, Vec<baton_core::Event>> = BTreeMap::new();
    for row in &rows {
        let text: &str = row.get(2);
        let events = text.split('\n').map(|line| serde_json::from_str::<baton_core::Event>(line).unwrap());
        journals.entry(row.get(0)).or_default().extend(events);
    }
    assert_eq!(journals.len(), executions, "one journal per execution");
    for events in journals.values() {
        let id = events[0].execution;
        let sequences: Vec<u64> = events.iter().map(|e| e.sequence).collect();
        assert_eq!(sequences, (1..=events.len() as u64).collect::<Vec<_>>(), "journal of {id} is not contiguous");
        assert!(matches!(events[0].kind, baton_core::EventKind::Started { .. }), "{id} does not start with Started");
        let started = events.iter().filter(|e| matches!(e.kind, baton_core::EventKind::Started { .. })).count();
        assert_eq!(started, 1, "{id}");
        let mut succeeded: HashMap<String, usize> = HashMap::new();
        for event in events {
            if let baton_core::EventKind::TaskSucceeded { step, .. } = &event.kind {
                *succeeded.entry(step.to_string()).or_default() += 1;
            }
        }
        assert!(succeeded.values().all(|n| *n == 1), "{id}: {succeeded:?}");
        assert!(matches!(events.last().unwrap().kind, baton_core::EventKind::Completed { .. }), "{id}");
    }
}

/// `baton cluster status` for the database at `url`.
fn cluster_status(url: &str) -> String {
    let output =
        Command::new(env!("CARGO_BIN_EXE_baton")).args(["cluster", "status", "--store", url]).output().unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8(output.stdout).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_share_the_work_and_take_over_a_killed_one() {
    let cluster = tokio::task::spawn_blocking(PgCluster::start).await.unwrap();
    let url = cluster.create_database().await;
    let dir = tempfile::tempdir().unwrap();
    let a = node(&url, "a", dir.path()).await;
    let mut b = node(&url, "b", dir.path()).await;
    let c = node(&url, "c", dir.path()).await;
    let shops = vec![shop(&[&a, &b, &c]).await];
    Clients::new(a.channel().await).apply(&example("pipeline.yaml")).await;
    let client = sql_client(&url).await;
    // The three share the partitions before the run: none owns them all.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let status = baton_cluster::status(&url).await.unwrap();
        let shares: Vec<u32> = status.nodes.iter().map(|n| n.partitions).collect();
        if shares.len() == 3 && shares.iter().all(|s| *s >= 16) {
            break;
        }
        assert!(Instant::now() < deadline, "the nodes did not share the partitions: {status:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let text = cluster_status(&url);
    assert!(text.starts_with("64 partitions, 3 live node(s)"), "{text}");
    for name in ["a", "b", "c"] {
        assert!(text.lines().any(|line| line.starts_with(name) && line.contains("left")), "{text}");
    }

    // 1. 300 executions round-robin over the nodes: all complete, each effect once.
    let ids = start_round_robin(&[&a, &b, &c], "run", 300).await;
    let mut reader = Clients::new(c.channel().await);
    reader.all_completed(&ids, Duration::from_secs(240), &a).await;
    assert_eq!(effects_once(&shops), 300 * 5);

    // 2. kill -9 of a node mid-run: every acknowledged start completes.
    let before = epochs(&client).await;
    let more = start_round_robin(&[&a, &b, &c], "kill", 90).await;
    b.kill9();
    let killed = Instant::now();
    let deadline = killed + Duration::from_secs(60);
    loop {
        let status = baton_cluster::status(&url).await.unwrap();
        let survivors: u32 = status.nodes.iter().filter(|n| n.id != "b").map(|n| n.partitions).sum();
        if survivors == 64 {
            assert!(
                status.nodes.iter().all(|n| n.id != "b" || n.lease_remaining_ms <= 0),
                "claimed before b's lease ended"
            );
            break;
        }
        assert!(Instant::now() < deadline, "b's partitions were not claimed: {status:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Within the lease and a few heartbeats.
    assert!(killed.elapsed() < Duration::from_secs(3 + 5), "took {:?}", killed.elapsed());
    eprintln!("partitions owned again {:?} after the kill", killed.elapsed());
    reader.all_completed(&more, Duration::from_secs(120), &a).await;
    assert_eq!(effects_once(&shops), 390 * 5);
    let after = epochs(&client).await;
    assert!(before.iter().zip(&after).all(|(b, a)| a >= b), "an epoch went down");
    assert!(before.iter().zip(&after).any(|(b, a)| a > b), "no partition changed hands");

    // 7. What the database holds keeps the journal's invariants.
    check_invariants(&client, 390).await;

    // 8. A server outside the cluster is refused the cluster's database, saying why.
    let mut outsider = Command::new(env!("CARGO_BIN_EXE_baton"))
        .args(["serve", "--store", &url, "--listen", &free_addr().to_string()])
        .args(["--metrics-listen", &free_addr().to_string(), "--console-listen", &free_addr().to_string()])
        .arg("--data-dir")
        .arg(dir.path().join("outsider"))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = outsider.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            outsider.kill().unwrap();
            panic!("a server outside the cluster started on its database");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut outsider.stderr.take().unwrap(), &mut stderr).unwrap();
    assert!(!status.success());
    assert!(stderr.contains("used by a cluster (live nodes: a, c)"), "{stderr}");
    eprintln!("{}", cluster_status(&url));
    drop((a, c));
}
