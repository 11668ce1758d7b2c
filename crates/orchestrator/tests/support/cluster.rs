//! What the cluster tests share: nodes of one database, the example shop registered with
//! them, starts spread over them, and the checks of what the database holds afterwards.

use std::collections::{BTreeMap, HashMap};
use std::process::Command;
use std::time::Duration;

use baton_grpc::pb;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

use super::{Clients, ServerProcess};

/// Lease of the test's nodes: short, so a takeover fits in the test's time.
pub(crate) const LEASE: &str = "3s";

/// The token every node of a test with tokens accepts and every client presents.
pub(crate) const TOKEN: &str = "cluster-test-token-0123456789";

/// Waits for a signal: runs until told.
pub(crate) const HOLD: &str = "name: hold
steps:
  - { id: first, set: \"a\" }
  - { id: go, listen: { signal: go }, depends_on: [first] }
output: \"${ .steps.go.output }\"
";

/// A channel whose calls carry [`TOKEN`].
pub(crate) type Authed =
    InterceptedService<Channel, fn(tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status>>;

/// Adds `authorization: Bearer TOKEN` to a call.
pub(crate) fn bearer(mut request: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
    request.metadata_mut().insert("authorization", format!("Bearer {TOKEN}").parse().unwrap());
    Ok(request)
}

/// A cluster node named `name` on the database at `url`, its data dir under `dir`.
pub(crate) async fn node(url: &str, name: &str, dir: &std::path::Path) -> ServerProcess {
    let data = dir.join(name);
    ServerProcess::start(&data, &["--store", url, "--cluster", "--node-id", name, "--lease-ttl", LEASE]).await
}

/// The example shop, each call taking `latency`, registered with the first of `nodes` and
/// known to all through the registry they share.
pub(crate) async fn shop(nodes: &[&ServerProcess], latency: Duration) -> Vec<baton_examples::RunningService> {
    let options = baton_examples::ServiceOptions {
        baton: Some(nodes[0].url()),
        ttl: Duration::from_secs(3600),
        latency,
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

/// A start of the example pipeline with idempotency key `key`.
pub(crate) fn start(key: &str) -> pb::StartExecutionRequest {
    pb::StartExecutionRequest {
        workflow: "pipeline".to_owned(),
        version: None,
        input_json: r#"{"sku": "book-1", "amount": 3.5}"#.to_owned(),
        idempotency_key: Some(key.to_owned()),
    }
}

/// Starts `count` executions round-robin over `nodes`, keys `prefix-<n>`; their ids.
pub(crate) async fn start_round_robin(nodes: &[&ServerProcess], prefix: &str, count: usize) -> Vec<String> {
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
pub(crate) fn effects_once(shops: &[Vec<baton_examples::RunningService>]) -> usize {
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
pub(crate) async fn epochs(client: &tokio_postgres::Client) -> Vec<i64> {
    let rows = client.query("SELECT epoch FROM baton_partitions ORDER BY id", &[]).await.unwrap();
    rows.iter().map(|row| row.get(0)).collect()
}

/// What must hold of the database after a run: every execution terminal, each journal
/// contiguous from 1 with one `Started` first, at most one `TaskSucceeded` per step.
pub(crate) async fn check_invariants(client: &tokio_postgres::Client, executions: usize) {
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
pub(crate) fn cluster_status(url: &str) -> String {
    let output =
        Command::new(env!("CARGO_BIN_EXE_baton")).args(["cluster", "status", "--store", url]).output().unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8(output.stdout).unwrap()
}
