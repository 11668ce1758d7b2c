//! Worker pull over gRPC against a real `baton serve`: a step bound to a worker-queue service
//! is leased to a worker on a PollTasks stream; a retryable FailTask brings it back as a new
//! attempt under a new token, the old token is refused, and CompleteTask finishes the run.

mod support;

use std::time::Duration;

use baton_core::ServiceSpec;
use baton_grpc::{convert, pb};
use support::{Clients, ServerProcess};
use tonic::Code;

const WORKFLOW: &str = r#"
name: thumbnails
defaults:
  retry: {max_attempts: 3, initial_backoff: 10ms}
steps:
  - id: resize
    service: resizer
    input: {image: "${ .input.image }"}
output: "${ .steps.resize.output }"
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_leases_fails_and_completes_a_step_over_grpc() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(&dir.path().join("data"), &[]).await;
    let channel = server.channel().await;
    let mut clients = Clients::new(channel.clone());
    let spec = ServiceSpec::from_json(
        r#"{"id": "resizer", "endpoint": {"protocol": "worker", "queue": "images"}, "capabilities": ["image.resize"]}"#,
    )
    .unwrap();
    clients.registry.register(pb::RegisterRequest { spec: Some(convert::spec_to_proto(&spec)) }).await.unwrap();
    clients.apply(WORKFLOW).await;
    let started = clients
        .executions
        .start_execution(pb::StartExecutionRequest {
            workflow: "thumbnails".to_owned(),
            version: None,
            input_json: r#"{"image": "cat.png"}"#.to_owned(),
            idempotency_key: None,
        })
        .await
        .unwrap()
        .into_inner();
    let id = started.execution.unwrap().id;

    let mut workers = pb::worker_service_client::WorkerServiceClient::new(channel);
    let mut tasks = workers
        .poll_tasks(pb::PollTasksRequest {
            worker_id: "w1".to_owned(),
            queues: vec!["images".to_owned()],
            max_tasks: 1,
        })
        .await
        .unwrap()
        .into_inner();
    let first = tokio::time::timeout(Duration::from_secs(10), tasks.message()).await.unwrap().unwrap().unwrap();
    let first = first.task.unwrap();
    assert_eq!((first.execution_id.as_str(), first.step.as_str(), first.attempt), (id.as_str(), "resize", 1));
    assert_eq!(first.idempotency_key, format!("{id}/resize"));
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&first.input_json).unwrap(),
        serde_json::json!({"image": "cat.png"})
    );
    workers
        .fail_task(pb::FailTaskRequest {
            task_token: first.task_token.clone(),
            error: "disk full".to_owned(),
            retryable: true,
        })
        .await
        .unwrap();

    // The retry comes back on the same stream, as attempt 2 with a new token.
    let second = tokio::time::timeout(Duration::from_secs(10), tasks.message()).await.unwrap().unwrap().unwrap();
    let second = second.task.unwrap();
    assert_eq!(second.attempt, 2);
    assert_eq!(second.idempotency_key, first.idempotency_key);
    assert_ne!(second.task_token, first.task_token);
    let stale = workers
        .complete_task(pb::CompleteTaskRequest { task_token: first.task_token, output_json: "{}".to_owned() })
        .await
        .unwrap_err();
    assert_eq!(stale.code(), Code::NotFound, "{stale:?}");
    let garbage = workers
        .complete_task(pb::CompleteTaskRequest { task_token: "not-a-token".to_owned(), output_json: "{}".to_owned() })
        .await
        .unwrap_err();
    assert_eq!(garbage.code(), Code::InvalidArgument, "{garbage:?}");
    workers.extend_lease(pb::ExtendLeaseRequest { task_token: second.task_token.clone() }).await.unwrap();
    workers
        .complete_task(pb::CompleteTaskRequest {
            task_token: second.task_token,
            output_json: r#"{"thumbnail": "cat-small.png"}"#.to_owned(),
        })
        .await
        .unwrap();

    let execution = tokio::time::timeout(Duration::from_secs(10), clients.finished(&id)).await.unwrap();
    assert_eq!(
        pb::ExecutionState::try_from(execution.state).unwrap(),
        pb::ExecutionState::Completed,
        "{:?}",
        execution.error
    );
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(execution.output_json.as_deref().unwrap()).unwrap(),
        serde_json::json!({"thumbnail": "cat-small.png"})
    );
}
