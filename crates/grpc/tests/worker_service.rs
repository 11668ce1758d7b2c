//! A real tonic server on 127.0.0.1:0 over the in-memory worker queues, driven by a real tonic
//! client: a poll stream that waits for work, receives tasks queued after it started, holds no
//! more than `max_tasks` unfinished, and loses no task when the worker goes away; completing,
//! failing and extending tasks; and bad requests.

mod common;

use std::sync::Arc;
use std::time::Duration;

use baton_core::api::TaskFailure;
use baton_core::api::fakes::{InMemoryWorkerTasks, NewTask};
use baton_core::{ExecutionId, ServiceId, StepId, SystemClock};
use baton_grpc::pb::worker_service_client::WorkerServiceClient;
use baton_grpc::{Config, Limits, pb};
use common::{Fakes, assert_status};
use serde_json::json;
use tonic::Code;
use tonic::transport::Channel;

struct Harness {
    server: common::Running,
    fakes: Fakes,
    client: WorkerServiceClient<Channel>,
}

async fn start_with(workers: InMemoryWorkerTasks) -> Harness {
    let fakes = Fakes::with_workers(common::idle_planner(), workers);
    let backends = fakes.backends(Arc::new(baton_core::fakes::InMemoryDirectory::default()), common::idle_planner());
    // Streams poll again often, so that leases the fake's queues reclaim lazily come back soon.
    let limits = Limits { poll_wait: Duration::from_millis(100), ..Limits::default() };
    let server = common::serve(backends, Config { limits, ..Config::default() }).await;
    let client = WorkerServiceClient::new(server.channel.clone());
    Harness { server, fakes, client }
}

async fn start() -> Harness {
    start_with(InMemoryWorkerTasks::default()).await
}

fn task(queue: &str, step: &str) -> NewTask {
    NewTask {
        queue: queue.into(),
        service: ServiceId::new("resize").unwrap(),
        execution: ExecutionId::generate(),
        step: StepId::new(step).unwrap(),
        attempt: 1,
        input: json!({"image": step}),
        deadline: None,
    }
}

fn poll(queues: &[&str], max_tasks: u32) -> pb::PollTasksRequest {
    pb::PollTasksRequest { worker_id: "w1".into(), queues: queues.iter().map(|q| q.to_string()).collect(), max_tasks }
}

async fn next(stream: &mut tonic::Streaming<pb::PollTasksResponse>) -> pb::Task {
    let answer = tokio::time::timeout(Duration::from_secs(10), stream.message()).await.expect("a task in time");
    answer.unwrap().expect("the stream stays open").task.unwrap()
}

#[tokio::test]
async fn a_poll_stream_waits_for_work_and_receives_tasks_queued_later() {
    let Harness { server, fakes, client: mut c } = start().await;
    let mut stream = c.poll_tasks(poll(&["images", "thumbs"], 4)).await.unwrap().into_inner();
    // The stream is open and the server polls; only now does work arrive.
    fakes.workers.enqueue(task("images", "a"));
    let first = next(&mut stream).await;
    assert_eq!((first.queue.as_str(), first.service.as_str(), first.step.as_str()), ("images", "resize", "a"));
    assert_eq!(first.attempt, 1);
    assert_eq!(first.idempotency_key, format!("{}/a", first.execution_id));
    assert_eq!(serde_json::from_str::<serde_json::Value>(&first.input_json).unwrap(), json!({"image": "a"}));
    assert!(first.lease_expires_at.is_some() && first.deadline.is_none());
    // The stream keeps going: a second queue, later again.
    fakes.workers.enqueue(task("thumbs", "b"));
    let second = next(&mut stream).await;
    assert_eq!(second.queue, "thumbs");

    let complete = pb::CompleteTaskRequest { task_token: first.task_token.clone(), output_json: r#"{"w":64}"#.into() };
    c.complete_task(complete.clone()).await.unwrap();
    assert_status(c.complete_task(complete).await, Code::NotFound, &first.task_token);
    let extended = c.extend_lease(pb::ExtendLeaseRequest { task_token: second.task_token.clone() }).await.unwrap();
    let extended = extended.into_inner();
    assert!(extended.lease_expires_at.unwrap().seconds >= second.lease_expires_at.unwrap().seconds);
    assert!(!extended.cancel_requested);
    let fail =
        pb::FailTaskRequest { task_token: second.task_token.clone(), error: "corrupt image".into(), retryable: false };
    c.fail_task(fail.clone()).await.unwrap();
    assert_status(c.fail_task(fail).await, Code::NotFound, "unknown, finished or its lease expired");
    assert_status(
        c.extend_lease(pb::ExtendLeaseRequest { task_token: second.task_token.clone() }).await,
        Code::NotFound,
        &second.task_token,
    );

    let finished = fakes.workers.finished();
    assert_eq!(finished.len(), 2);
    assert_eq!((finished[0].worker.as_str(), finished[0].result.clone()), ("w1", Ok(json!({"w": 64}))));
    let failure = TaskFailure { error: "corrupt image".into(), retryable: false };
    assert_eq!(finished[1].result, Err(failure));
    server.shutdown().await;
}

#[tokio::test]
async fn a_stream_holds_at_most_max_tasks_unfinished() {
    let Harness { server, fakes, client: mut c } = start().await;
    for step in ["a", "b", "c"] {
        fakes.workers.enqueue(task("images", step));
    }
    let mut stream = c.poll_tasks(poll(&["images"], 1)).await.unwrap().into_inner();
    let first = next(&mut stream).await;
    assert_eq!(first.step, "a");
    // A negative check needs a bound: the second task must not come while the first is held.
    let early = tokio::time::timeout(Duration::from_millis(300), stream.message()).await;
    assert!(early.is_err(), "a second task came while the first was unfinished: {early:?}");
    assert_eq!(fakes.workers.queued("images"), 2);
    c.complete_task(pb::CompleteTaskRequest { task_token: first.task_token, output_json: String::new() })
        .await
        .unwrap();
    assert_eq!(next(&mut stream).await.step, "b");
    assert_eq!(fakes.workers.finished()[0].result, Ok(serde_json::Value::Null));
    server.shutdown().await;
}

#[tokio::test]
async fn no_task_is_lost_when_a_worker_goes_away() {
    // Short leases: a task leased to a stream whose worker left comes back soon.
    let workers = InMemoryWorkerTasks::with_clock(Arc::new(SystemClock), Duration::from_millis(500));
    let Harness { server, fakes, client: mut c } = start_with(workers).await;
    let gone = c.poll_tasks(poll(&["images"], 1)).await.unwrap().into_inner();
    drop(gone);
    // Whether or not the server had leased it to the stream that went away, it comes back.
    fakes.workers.enqueue(task("images", "a"));
    let mut other = c.clone();
    let request = pb::PollTasksRequest { worker_id: "w2".into(), ..poll(&["images"], 1) };
    let mut stream = other.poll_tasks(request).await.unwrap().into_inner();
    assert_eq!(next(&mut stream).await.step, "a");
    server.shutdown().await;
}

#[tokio::test]
async fn a_cancelled_task_says_so_on_extension() {
    let Harness { server, fakes, client: mut c } = start().await;
    let queued = task("images", "a");
    let execution = queued.execution;
    fakes.workers.enqueue(queued);
    let mut stream = c.poll_tasks(poll(&["images"], 1)).await.unwrap().into_inner();
    let leased = next(&mut stream).await;
    fakes.workers.cancel(execution);
    let extended = c.extend_lease(pb::ExtendLeaseRequest { task_token: leased.task_token.clone() }).await.unwrap();
    assert!(extended.into_inner().cancel_requested);
    assert_status(
        c.complete_task(pb::CompleteTaskRequest { task_token: leased.task_token, output_json: "1".into() }).await,
        Code::FailedPrecondition,
        "cancelled by its caller",
    );
    server.shutdown().await;
}

#[tokio::test]
async fn bad_worker_requests_get_typed_codes_naming_the_problem() {
    let Harness { server, fakes, client: mut c } = start().await;
    assert_status(c.poll_tasks(poll(&[], 1)).await, Code::InvalidArgument, "queues: must name at least one queue");
    assert_status(c.poll_tasks(poll(&["ok", "Bad Queue"], 1)).await, Code::InvalidArgument, "queues[1]");
    let anonymous = pb::PollTasksRequest { worker_id: " ".into(), ..poll(&["images"], 1) };
    assert_status(c.poll_tasks(anonymous).await, Code::InvalidArgument, "worker_id: must not be empty");

    let complete =
        |token: &str, output: &str| pb::CompleteTaskRequest { task_token: token.into(), output_json: output.into() };
    assert_status(c.complete_task(complete("", "1")).await, Code::InvalidArgument, "task_token: must not be empty");
    assert_status(c.complete_task(complete("a b", "1")).await, Code::InvalidArgument, "invalid task_token");
    assert_status(c.complete_task(complete("task-999.1", "1")).await, Code::NotFound, "task-999.1");
    assert_status(
        c.fail_task(pb::FailTaskRequest { task_token: "task-9.1".into(), error: "x".into(), retryable: true }).await,
        Code::NotFound,
        "task-9.1",
    );
    assert_status(
        c.extend_lease(pb::ExtendLeaseRequest { task_token: String::new() }).await,
        Code::InvalidArgument,
        "task_token",
    );

    // Malformed output is refused before the task is touched: it stays leased.
    fakes.workers.enqueue(task("images", "a"));
    let mut stream = c.poll_tasks(poll(&["images"], 1)).await.unwrap().into_inner();
    let leased = next(&mut stream).await;
    assert_status(
        c.complete_task(complete(&leased.task_token, "{oops")).await,
        Code::InvalidArgument,
        "output_json: not valid JSON",
    );
    assert_eq!(fakes.workers.leased(), 1);
    c.complete_task(complete(&leased.task_token, "[1]")).await.unwrap();
    server.shutdown().await;
}

#[tokio::test]
async fn open_streams_end_as_unavailable_when_the_server_shuts_down() {
    let Harness { server, fakes: _fakes, client: mut c } = start().await;
    let mut stream = c.poll_tasks(poll(&["images"], 1)).await.unwrap().into_inner();
    // Shutting down must not wait for the worker to hang up.
    let stopping = tokio::spawn(server.shutdown());
    let status = stream.message().await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(status.message().contains("shutting down"), "{}", status.message());
    stopping.await.unwrap();
}
