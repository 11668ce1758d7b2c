//! Worker queues shared by three real `baton serve --cluster` nodes on one throwaway PostgreSQL
//! database: tasks of executions started on node A are leased by a worker polling node B and
//! answered there, and the executions complete on A; a stale token is refused; a cancel on the
//! owner reaches the worker's extension through B; tasks of a node killed with `kill -9`, queued
//! or leased, are delivered and answered after the takeover, each step answered once.

#![allow(clippy::print_stderr, reason = "the test logs how long the takeover took")]

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use baton_core::ServiceSpec;
use baton_grpc::{convert, pb};
use baton_store::testing::{PgCluster, sql_client, until};
use support::{Clients, ServerProcess, sample, scrape};
use tonic::Code;
use tonic::transport::Channel;

/// Lease of the test's nodes: short, so a takeover fits in the test's time.
const LEASE: &str = "3s";

const WORKFLOW: &str = r#"
name: thumbnails
steps:
  - id: resize
    service: resizer
    input: {image: "${ .input.image }"}
output: "${ .steps.resize.output }"
"#;

type Workers = pb::worker_service_client::WorkerServiceClient<Channel>;

async fn node(url: &str, name: &str, dir: &std::path::Path) -> ServerProcess {
    let data = dir.join(name);
    ServerProcess::start(&data, &["--store", url, "--cluster", "--node-id", name, "--lease-ttl", LEASE]).await
}

/// Starts `count` executions on `node`; their ids.
async fn start(node: &ServerProcess, prefix: &str, count: usize) -> Vec<String> {
    let mut clients = Clients::new(node.channel().await);
    let mut ids = Vec::new();
    for n in 0..count {
        let started = clients
            .executions
            .start_execution(pb::StartExecutionRequest {
                workflow: "thumbnails".to_owned(),
                version: None,
                input_json: format!(r#"{{"image": "{prefix}-{n}.png"}}"#),
                idempotency_key: Some(format!("{prefix}-{n}")),
            })
            .await
            .unwrap()
            .into_inner();
        ids.push(started.execution.unwrap().id);
    }
    ids
}

/// Leases `count` tasks through `workers`, each within a few seconds.
async fn lease(workers: &mut Workers, worker: &str, count: usize) -> Vec<pb::Task> {
    let mut stream = workers
        .poll_tasks(pb::PollTasksRequest {
            worker_id: worker.to_owned(),
            queues: vec!["images".to_owned()],
            max_tasks: u32::try_from(count).unwrap(),
        })
        .await
        .unwrap()
        .into_inner();
    let mut tasks = Vec::new();
    while tasks.len() < count {
        let message = tokio::time::timeout(Duration::from_secs(20), stream.message())
            .await
            .unwrap_or_else(|_| panic!("{} of {count} tasks leased", tasks.len()))
            .unwrap()
            .unwrap();
        tasks.push(message.task.unwrap());
    }
    tasks
}

async fn complete(workers: &mut Workers, task: &pb::Task) {
    let output = serde_json::json!({"thumbnail": format!("small-{}", task.execution_id)}).to_string();
    workers
        .complete_task(pb::CompleteTaskRequest { task_token: task.task_token.clone(), output_json: output })
        .await
        .unwrap();
}

/// The node that owns execution `id`'s partition now.
async fn owner_of(sql: &tokio_postgres::Client, id: &str) -> String {
    let id: baton_core::ExecutionId = id.parse().unwrap();
    let partition = i32::try_from(id.partition(64)).unwrap();
    let row = sql.query_one("SELECT owner FROM baton_partitions WHERE id = $1", &[&partition]).await.unwrap();
    row.get(0)
}

/// Each of `ids` completed with its worker's output.
async fn completed(reader: &mut Clients, ids: &[String], within: Duration, node: &ServerProcess) {
    reader.all_completed(ids, within, node).await;
    for id in ids {
        let execution = reader.finished(id).await;
        let output: serde_json::Value = serde_json::from_str(execution.output_json.as_deref().unwrap()).unwrap();
        assert_eq!(output, serde_json::json!({"thumbnail": format!("small-{id}")}));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_on_any_node_take_the_tasks_of_every_node() {
    let cluster = tokio::task::spawn_blocking(PgCluster::start).await.unwrap();
    let url = cluster.create_database().await;
    let dir = tempfile::tempdir().unwrap();
    let a = node(&url, "a", dir.path()).await;
    let b = node(&url, "b", dir.path()).await;
    let mut c = node(&url, "c", dir.path()).await;
    let spec = ServiceSpec::from_json(
        r#"{"id": "resizer", "endpoint": {"protocol": "worker", "queue": "images"}, "capabilities": ["image.resize"]}"#,
    )
    .unwrap();
    // The registry is still per node: the service registers with each.
    for node in [&a, &b, &c] {
        let mut clients = Clients::new(node.channel().await);
        clients.registry.register(pb::RegisterRequest { spec: Some(convert::spec_to_proto(&spec)) }).await.unwrap();
    }
    Clients::new(a.channel().await).apply(WORKFLOW).await;
    // Settled: every partition owned, none of the nodes above its share, so none hands one on.
    until("the nodes share the partitions", Duration::from_secs(60), async || {
        let status = baton_cluster::status(&url).await.unwrap();
        let shares: Vec<u32> = status.nodes.iter().map(|n| n.partitions).collect();
        shares.len() == 3 && shares.iter().sum::<u32>() == 64 && shares.iter().all(|s| *s <= 64_u32.div_ceil(3))
    })
    .await;
    let sql = sql_client(&url).await;
    let mut via_b = Workers::new(b.channel().await);
    let mut reader = Clients::new(b.channel().await);
    // Every delivery the worker saw, by idempotency key.
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();

    // 5. Executions owned by a; the worker polls b.
    let on_a = start(&a, "a", 4).await;
    let tasks = lease(&mut via_b, "w-b", 4).await;
    let keys: BTreeSet<String> = tasks.iter().map(|t| t.idempotency_key.clone()).collect();
    assert_eq!(keys, on_a.iter().map(|id| format!("{id}/resize")).collect());
    for task in &tasks {
        *seen.entry(task.idempotency_key.clone()).or_default() += 1;
        complete(&mut via_b, task).await;
    }
    completed(&mut reader, &on_a, Duration::from_secs(30), &a).await;
    // A token already answered is NOT_FOUND, on any node, and changes nothing.
    let mut via_c = Workers::new(c.channel().await);
    for workers in [&mut via_b, &mut via_c] {
        let stale = workers
            .complete_task(pb::CompleteTaskRequest {
                task_token: tasks[0].task_token.clone(),
                output_json: "{}".to_owned(),
            })
            .await
            .unwrap_err();
        assert_eq!(stale.code(), Code::NotFound, "{stale:?}");
        let stale =
            workers.extend_lease(pb::ExtendLeaseRequest { task_token: tasks[0].task_token.clone() }).await.unwrap_err();
        assert_eq!(stale.code(), Code::NotFound, "{stale:?}");
    }
    completed(&mut reader, &on_a, Duration::from_secs(5), &a).await;

    // A cancel on the owner reaches the worker's extension on another node.
    let cancelled = start(&a, "cancel", 1).await;
    let held = lease(&mut via_b, "w-b", 1).await.pop().unwrap();
    assert_eq!(held.execution_id, cancelled[0]);
    let extended = via_c.extend_lease(pb::ExtendLeaseRequest { task_token: held.task_token.clone() }).await.unwrap();
    assert!(!extended.into_inner().cancel_requested);
    // Commands go to the execution's owner (a, unless a partition moved since).
    let owner = owner_of(&sql, &cancelled[0]).await;
    let owner = [&a, &b, &c][usize::from(owner.as_bytes()[0] - b'a')];
    Clients::new(owner.channel().await)
        .executions
        .cancel_execution(pb::CancelExecutionRequest { id: cancelled[0].clone(), reason: "test".to_owned() })
        .await
        .unwrap();
    until("the worker is asked to stop", Duration::from_secs(10), async || {
        let extended = via_c.extend_lease(pb::ExtendLeaseRequest { task_token: held.task_token.clone() }).await;
        extended.unwrap().into_inner().cancel_requested
    })
    .await;
    let refused = via_b
        .complete_task(pb::CompleteTaskRequest { task_token: held.task_token.clone(), output_json: "{}".to_owned() })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::NotFound, "{refused:?}");

    // kill -9 of the owner of queued and leased tasks: they are delivered and answered after
    // the takeover, each once.
    let on_c = start(&c, "c", 4).await;
    let before_kill = lease(&mut via_b, "w-b", 2).await;
    until("c's other tasks are queued", Duration::from_secs(10), async || {
        let queued: i64 =
            sql.query_one("SELECT count(*) FROM baton_worker_tasks WHERE state = 'queued'", &[]).await.unwrap().get(0);
        queued == 2
    })
    .await;
    // Another node's metrics count c's tasks: the queues' depths are the cluster's.
    until("a's metrics count the queue across the cluster", Duration::from_secs(10), async || {
        let text = scrape(a.metrics).await;
        let images = |name: &str| sample(&text, &format!("{name}{{queue=\"images\"}}"));
        images("baton_worker_queue_depth") == Some(2.0) && images("baton_worker_queue_leased") == Some(2.0)
    })
    .await;
    c.kill9();
    let killed = Instant::now();
    until("c's partitions are claimed", Duration::from_secs(30), async || {
        let status = baton_cluster::status(&url).await.unwrap();
        status.nodes.iter().filter(|n| n.id != "c").map(|n| n.partitions).sum::<u32>() == 64
    })
    .await;
    let mut via_a = Workers::new(a.channel().await);
    for task in &before_kill {
        *seen.entry(task.idempotency_key.clone()).or_default() += 1;
        complete(&mut via_a, task).await;
    }
    let after_kill = lease(&mut via_b, "w-b", 2).await;
    for task in &after_kill {
        *seen.entry(task.idempotency_key.clone()).or_default() += 1;
        complete(&mut via_b, task).await;
    }
    completed(&mut reader, &on_c, Duration::from_secs(60), &a).await;
    eprintln!("c's executions completed {:?} after the kill", killed.elapsed());
    assert_eq!(seen.len(), 8);
    assert!(seen.values().all(|n| *n == 1), "a task was delivered twice: {seen:?}");
    // Each step journaled one success.
    let rows = sql.query("SELECT events FROM baton_journal_chunks", &[]).await.unwrap();
    let mut succeeded: BTreeMap<String, usize> = BTreeMap::new();
    for row in &rows {
        let text: &str = row.get(0);
        for line in text.split('\n') {
            let event: baton_core::Event = serde_json::from_str(line).unwrap();
            if let baton_core::EventKind::TaskSucceeded { step, .. } = &event.kind {
                *succeeded.entry(format!("{}/{step}", event.execution)).or_default() += 1;
            }
        }
    }
    let expected: BTreeMap<String, usize> = on_a.iter().chain(&on_c).map(|id| (format!("{id}/resize"), 1)).collect();
    assert_eq!(succeeded, expected, "one TaskSucceeded per step, none for the cancelled execution");
    drop((a, b));
}
