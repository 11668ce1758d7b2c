//! Calls for an execution sent to a node that does not run it, on two real `baton serve
//! --cluster` nodes with bearer tokens on one throwaway PostgreSQL database: Get answers from
//! the store with the steps' progress, Pause, Resume, Cancel and Signal are forwarded to the
//! owner (with this node's token), a call already forwarded is never forwarded again, an owner
//! that cannot be reached is `UNAVAILABLE` naming it, a Watch on the other node follows the
//! execution across its owner's `kill -9` and the takeover without a gap or a repeat and ends
//! with the terminal event, and an idempotent Start is one execution whichever node takes it.

mod support;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use baton_grpc::pb;
use baton_grpc::pb::execution_service_client::ExecutionServiceClient;
use baton_store::testing::{PgCluster, until};
use support::cluster::{Authed, HOLD, LEASE, TOKEN, bearer};
use support::{ServerProcess, sample, scrape};
use tokio_stream::StreamExt as _;

/// Waits 8 s between two steps: longer than a takeover takes.
const SLOW: &str = "name: slow
steps:
  - { id: first, set: \"a\" }
  - { id: pause, wait: 8s, depends_on: [first] }
  - { id: last, set: \"b\", depends_on: [pause] }
output: \"${ .steps.last.output }\"
";

struct Node {
    process: ServerProcess,
    executions: ExecutionServiceClient<Authed>,
    workflows: pb::workflow_service_client::WorkflowServiceClient<Authed>,
}

async fn node(url: &str, name: &str, dir: &std::path::Path, tokens: &std::path::Path) -> Node {
    let data = dir.join(name);
    let tokens = tokens.to_str().unwrap();
    let args = [
        "--store",
        url,
        "--cluster",
        "--node-id",
        name,
        "--lease-ttl",
        LEASE,
        "--partitions",
        "8",
        "--auth-token-file",
        tokens,
    ];
    let process = ServerProcess::start(&data, &args).await;
    let channel = process.channel().await;
    let intercept: fn(tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> = bearer;
    Node {
        executions: ExecutionServiceClient::with_interceptor(channel.clone(), intercept),
        workflows: pb::workflow_service_client::WorkflowServiceClient::with_interceptor(channel, intercept),
        process,
    }
}

impl Node {
    async fn start(&mut self, workflow: &str, key: Option<&str>) -> pb::StartExecutionResponse {
        let request = pb::StartExecutionRequest {
            workflow: workflow.to_owned(),
            version: None,
            input_json: String::new(),
            idempotency_key: key.map(str::to_owned),
        };
        self.executions.start_execution(request).await.unwrap().into_inner()
    }

    async fn get(&mut self, id: &str) -> pb::Execution {
        let request = pb::GetExecutionRequest { id: id.to_owned() };
        self.executions.get_execution(request).await.unwrap().into_inner().execution.unwrap()
    }
}

fn state(execution: &pb::Execution) -> pb::ExecutionState {
    pb::ExecutionState::try_from(execution.state).unwrap()
}

/// Each task's state, by step.
fn task_states(execution: &pb::Execution) -> BTreeMap<String, i32> {
    execution.tasks.iter().map(|task| (task.step.clone(), task.state)).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_serves_and_forwards_calls_for_executions_another_node_runs() {
    let cluster = tokio::task::spawn_blocking(PgCluster::start).await.unwrap();
    let url = cluster.create_database().await;
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens");
    std::fs::write(&tokens, format!("{TOKEN}\n")).unwrap();
    let mut a = node(&url, "a", dir.path(), &tokens).await;
    let mut b = node(&url, "b", dir.path(), &tokens).await;
    for source in [SLOW, HOLD] {
        let request =
            pb::ApplyDefinitionRequest { source: source.to_owned(), format: pb::DefinitionFormat::Yaml as i32 };
        a.workflows.apply_definition(request).await.unwrap();
    }
    // Both own their share before anything starts, so what b starts stays b's.
    until("an even share of the partitions", Duration::from_secs(30), async || {
        let status = baton_cluster::status(&url).await.unwrap();
        status.nodes.len() == 2 && status.nodes.iter().all(|n| n.partitions == 4)
    })
    .await;

    // An idempotent Start is one execution, whichever nodes take it at once.
    let (on_a, on_b) = tokio::join!(a.start("slow", Some("once")), b.start("slow", Some("once")));
    assert_eq!(on_a.execution.as_ref().unwrap().id, on_b.execution.as_ref().unwrap().id);
    assert!(on_a.existing != on_b.existing, "one start created it, the other found it");

    // Get on the node that does not run it shows the steps' progress, as the owner does.
    let held = b.start("hold", None).await.execution.unwrap().id;
    until("the first step on b", Duration::from_secs(10), async || {
        task_states(&b.get(&held).await).get("first") == Some(&(pb::TaskState::Succeeded as i32))
    })
    .await;
    let seen_on_a = a.get(&held).await;
    assert_eq!(state(&seen_on_a), pb::ExecutionState::Running);
    assert_eq!(task_states(&seen_on_a), task_states(&b.get(&held).await));

    // Pause, Resume and Signal sent to a reach the owner b.
    let paused = a.executions.pause_execution(pb::PauseExecutionRequest { id: held.clone() }).await.unwrap();
    assert_eq!(state(&paused.into_inner().execution.unwrap()), pb::ExecutionState::Paused);
    assert_eq!(state(&b.get(&held).await), pb::ExecutionState::Paused);
    let resumed = a.executions.resume_execution(pb::ResumeExecutionRequest { id: held.clone() }).await.unwrap();
    assert_eq!(state(&resumed.into_inner().execution.unwrap()), pb::ExecutionState::Running);
    let signal = pb::SignalExecutionRequest { id: held.clone(), name: "go".to_owned(), data_json: "42".to_owned() };
    a.executions.signal_execution(signal).await.unwrap();
    until("the signalled execution's end", Duration::from_secs(10), async || {
        state(&a.get(&held).await) == pb::ExecutionState::Completed
    })
    .await;
    assert_eq!(b.get(&held).await.output_json.as_deref(), Some("42"));
    // A command the owner refuses is refused as the owner says: it ended.
    let late = a.executions.pause_execution(pb::PauseExecutionRequest { id: held.clone() }).await.unwrap_err();
    assert_eq!(late.code(), tonic::Code::FailedPrecondition, "{late:?}");

    // Cancel sent to a stops b's run; a watch on a ends with the Cancelled event.
    let doomed = b.start("hold", None).await.execution.unwrap().id;
    let mut watch = a
        .executions
        .watch_execution(pb::WatchExecutionRequest { id: doomed.clone(), from_sequence: 0 })
        .await
        .unwrap()
        .into_inner();
    let first = watch.next().await.unwrap().unwrap().event.unwrap();
    assert_eq!(first.sequence, 1);
    let cancel = pb::CancelExecutionRequest { id: doomed.clone(), reason: "sent to a".to_owned() };
    let cancelled = a.executions.cancel_execution(cancel).await.unwrap().into_inner().execution.unwrap();
    assert_eq!(state(&cancelled), pb::ExecutionState::Cancelled);
    let rest: Vec<pb::Event> =
        tokio::time::timeout(Duration::from_secs(10), watch.map(|event| event.unwrap().event.unwrap()).collect())
            .await
            .expect("the watch ends after the terminal event");
    assert!(matches!(rest.last().unwrap().kind, Some(pb::event::Kind::Cancelled(_))), "{rest:?}");
    let sequences: Vec<u64> = rest.iter().map(|e| e.sequence).collect();
    assert_eq!(sequences, (2..2 + rest.len() as u64).collect::<Vec<_>>());

    // A call another node forwarded already is not forwarded again: one hop.
    let stuck = b.start("hold", None).await.execution.unwrap().id;
    let mut hop = tonic::Request::new(pb::PauseExecutionRequest { id: stuck.clone() });
    hop.metadata_mut().insert("baton-forwarded-by", "c".parse().unwrap());
    let refused = a.executions.pause_execution(hop).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unavailable, "{refused:?}");
    assert!(refused.message().contains("node c forwarded"), "{refused:?}");

    // A watch on a of an execution b runs, across b's kill -9 and a's takeover.
    let slow = b.start("slow", None).await.execution.unwrap().id;
    let mut watch = a
        .executions
        .watch_execution(pb::WatchExecutionRequest { id: slow.clone(), from_sequence: 0 })
        .await
        .unwrap()
        .into_inner();
    let mut events = Vec::new();
    // Until the first step has succeeded on b: it is in the wait now.
    loop {
        let event = watch.next().await.unwrap().unwrap().event.unwrap();
        let first_done = matches!(&event.kind, Some(pb::event::Kind::TaskSucceeded(done)) if done.step == "first");
        events.push(event);
        if first_done {
            break;
        }
    }
    b.process.kill9();
    let killed = Instant::now();
    // b is dead but still owns its partitions until its lease ends: a command for its
    // execution cannot reach it, and says so.
    let unreachable = a.executions.pause_execution(pb::PauseExecutionRequest { id: stuck.clone() }).await.unwrap_err();
    assert_eq!(unreachable.code(), tonic::Code::Unavailable, "{unreachable:?}");
    assert!(unreachable.message().contains("node b at"), "{unreachable:?}");
    let rest = tokio::time::timeout(Duration::from_secs(60), async {
        let mut rest = Vec::new();
        while let Some(event) = watch.next().await {
            rest.push(event.unwrap().event.unwrap());
        }
        rest
    })
    .await
    .unwrap_or_else(|_| panic!("the watch did not end after the takeover\n{}", a.process.log_text()));
    events.extend(rest);
    let sequences: Vec<u64> = events.iter().map(|e| e.sequence).collect();
    assert_eq!(sequences, (1..=events.len() as u64).collect::<Vec<_>>(), "contiguous, none repeated");
    assert!(matches!(events.last().unwrap().kind, Some(pb::event::Kind::Completed(_))), "{events:?}");
    assert_eq!(state(&a.get(&slow).await), pb::ExecutionState::Completed);
    // It ended on a, after b's lease.
    assert!(killed.elapsed() >= Duration::from_secs(3), "ended {:?} after the kill", killed.elapsed());

    // Now a owns everything: the commands run there.
    let cancel = pb::CancelExecutionRequest { id: stuck.clone(), reason: String::new() };
    let cancelled = a.executions.cancel_execution(cancel).await.unwrap().into_inner().execution.unwrap();
    assert_eq!(state(&cancelled), pb::ExecutionState::Cancelled);

    // a's metrics tell the story: what it forwarded, b's death, the takeover.
    let text = scrape(a.process.metrics).await;
    let value = |name: &str| sample(&text, name).unwrap_or_else(|| panic!("{name} missing:\n{text}"));
    // Pause, resume, signal, the refused late pause, cancel, and the one to the dead b.
    assert_eq!(value("baton_cluster_forwarded_calls_total"), 6.0);
    assert_eq!(value("baton_cluster_forwarded_unreachable_total"), 1.0);
    assert_eq!(value("baton_cluster_partitions_owned"), 8.0);
    assert!(value("baton_cluster_partitions_claimed_total") >= 8.0, "{text}");
    assert!(value("baton_cluster_lease_renewal_seconds_count") > 0.0, "{text}");
    assert_eq!(value("baton_cluster_lease_renewal_failures_total"), 0.0);
    until("a seeing itself alone", Duration::from_secs(10), async || {
        sample(&scrape(a.process.metrics).await, "baton_cluster_nodes_live") == Some(1.0)
    })
    .await;
}
