//! A real tonic server on 127.0.0.1:0 over the in-memory executions, driven by a real tonic
//! client: starting (idempotently), reading, listing, pausing, resuming and cancelling
//! executions, watching journals after the end and live, and bad requests.

mod common;

use baton_core::{EventKind, ExecutionId, ServiceId, StepId};
use baton_grpc::pb::execution_service_client::ExecutionServiceClient;
use baton_grpc::pb::workflow_service_client::WorkflowServiceClient;
use baton_grpc::{Config, pb};
use common::{Fakes, assert_status};
use serde_json::json;
use tonic::Code;
use tonic::transport::Channel;

struct Harness {
    server: common::Running,
    fakes: Fakes,
    client: ExecutionServiceClient<Channel>,
}

async fn start() -> Harness {
    let (fakes, backends) = common::fake_backends();
    let server = common::serve(backends, Config::default()).await;
    let mut workflows = WorkflowServiceClient::new(server.channel.clone());
    for name in ["checkout", "refund"] {
        let steps = json!([{"id": "pay", "service": "pay"}, {"id": "ship", "service": "ship", "depends_on": ["pay"]}]);
        let source = json!({"name": name, "steps": steps}).to_string();
        workflows.apply_definition(pb::ApplyDefinitionRequest { source, format: 0 }).await.unwrap();
    }
    let client = ExecutionServiceClient::new(server.channel.clone());
    Harness { server, fakes, client }
}

fn start_request(workflow: &str, input: &str, key: Option<&str>) -> pb::StartExecutionRequest {
    pb::StartExecutionRequest {
        workflow: workflow.into(),
        version: None,
        input_json: input.into(),
        idempotency_key: key.map(Into::into),
    }
}

async fn start_one(c: &mut ExecutionServiceClient<Channel>, workflow: &str) -> pb::Execution {
    c.start_execution(start_request(workflow, "", None)).await.unwrap().into_inner().execution.unwrap()
}

fn id(execution: &pb::Execution) -> ExecutionId {
    execution.id.parse().unwrap()
}

/// Plays a successful run of `pay` then `ship` into the fake's journal.
fn complete(fakes: &Fakes, id: ExecutionId) {
    for step in ["pay", "ship"] {
        let step = StepId::new(step).unwrap();
        let service = ServiceId::new("svc").unwrap();
        fakes.executions.record(id, EventKind::TaskScheduled { step: step.clone(), attempt: 1, service }).unwrap();
        fakes
            .executions
            .record(id, EventKind::TaskSucceeded { step, attempt: 1, output: json!(1), context: None })
            .unwrap();
    }
    fakes.executions.record(id, EventKind::Completed { output: json!({"shipped": true}) }).unwrap();
}

async fn watch(
    c: &mut ExecutionServiceClient<Channel>,
    id: &str,
    from: u64,
) -> tonic::Streaming<pb::WatchExecutionResponse> {
    c.watch_execution(pb::WatchExecutionRequest { id: id.into(), from_sequence: from }).await.unwrap().into_inner()
}

async fn sequences(mut stream: tonic::Streaming<pb::WatchExecutionResponse>) -> Vec<u64> {
    let mut seen = Vec::new();
    while let Some(answer) = stream.message().await.unwrap() {
        seen.push(answer.event.unwrap().sequence);
    }
    seen
}

#[tokio::test]
async fn executions_start_idempotently_and_follow_the_state_machine() {
    let Harness { server, fakes: _fakes, client: mut c } = start().await;
    let started = c.start_execution(start_request("checkout", r#"{"order": 42}"#, Some("order-42"))).await;
    let started = started.unwrap().into_inner();
    assert!(!started.existing);
    let execution = started.execution.unwrap();
    assert_eq!((execution.workflow.as_str(), execution.version), ("checkout", 1));
    assert_eq!(execution.state, pb::ExecutionState::Running as i32);
    assert_eq!(serde_json::from_str::<serde_json::Value>(&execution.input_json).unwrap(), json!({"order": 42}));
    let steps: Vec<_> = execution.tasks.iter().map(|t| (t.step.as_str(), t.state)).collect();
    assert_eq!(steps, [("pay", pb::TaskState::Pending as i32), ("ship", pb::TaskState::Pending as i32)]);

    let again = c.start_execution(start_request("checkout", r#"{"order": 42}"#, Some("order-42"))).await;
    let again = again.unwrap().into_inner();
    assert!(again.existing);
    assert_eq!(again.execution.unwrap().id, execution.id);
    assert_status(
        c.start_execution(start_request("checkout", r#"{"order": 43}"#, Some("order-42"))).await,
        Code::AlreadyExists,
        r#"idempotency key "order-42" already started execution"#,
    );
    let empty_input = start_one(&mut c, "checkout").await;
    assert_eq!(empty_input.input_json, "{}");

    let get = |id: &str| pb::GetExecutionRequest { id: id.into() };
    let got = c.get_execution(get(&execution.id)).await.unwrap().into_inner().execution.unwrap();
    assert_eq!(got.id, execution.id);

    let paused = c.pause_execution(pb::PauseExecutionRequest { id: execution.id.clone() }).await.unwrap();
    assert_eq!(paused.into_inner().execution.unwrap().state, pb::ExecutionState::Paused as i32);
    assert_status(
        c.pause_execution(pb::PauseExecutionRequest { id: execution.id.clone() }).await,
        Code::FailedPrecondition,
        &format!("execution {} cannot go from paused to paused", execution.id),
    );
    let resumed = c.resume_execution(pb::ResumeExecutionRequest { id: execution.id.clone() }).await.unwrap();
    assert_eq!(resumed.into_inner().execution.unwrap().state, pb::ExecutionState::Running as i32);
    let cancel = |id: &str, reason: &str| pb::CancelExecutionRequest { id: id.into(), reason: reason.into() };
    let cancelled = c.cancel_execution(cancel(&execution.id, "customer called")).await.unwrap().into_inner();
    let cancelled = cancelled.execution.unwrap();
    assert_eq!(cancelled.state, pb::ExecutionState::Cancelled as i32);
    assert_eq!(cancelled.error.as_deref(), Some("customer called"));
    assert_status(
        c.cancel_execution(cancel(&execution.id, "again")).await,
        Code::FailedPrecondition,
        &format!("execution {} cannot go from cancelled to cancelled", execution.id),
    );
    assert_status(
        c.resume_execution(pb::ResumeExecutionRequest { id: execution.id.clone() }).await,
        Code::FailedPrecondition,
        "cannot go from cancelled to running",
    );
    let unnamed = c.cancel_execution(cancel(&empty_input.id, "")).await.unwrap().into_inner();
    assert_eq!(unnamed.execution.unwrap().error.as_deref(), Some("cancelled by request"));
    server.shutdown().await;
}

#[tokio::test]
async fn listings_are_newest_first_filtered_and_paged() {
    let Harness { server, fakes: _fakes, client: mut c } = start().await;
    let mut ids = Vec::new();
    for i in 0..5 {
        ids.push(start_one(&mut c, if i % 2 == 0 { "checkout" } else { "refund" }).await.id);
    }
    c.pause_execution(pb::PauseExecutionRequest { id: ids[0].clone() }).await.unwrap();
    c.cancel_execution(pb::CancelExecutionRequest { id: ids[1].clone(), reason: "x".into() }).await.unwrap();

    let mut seen = Vec::new();
    let mut token = String::new();
    loop {
        let request = pb::ListExecutionsRequest { page_size: 2, page_token: token.clone(), ..Default::default() };
        let page = c.list_executions(request).await.unwrap().into_inner();
        assert!(page.executions.len() <= 2);
        assert!(page.executions.iter().all(|e| e.tasks.is_empty()), "listings leave tasks out");
        seen.extend(page.executions.into_iter().map(|e| e.id));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    let newest_first: Vec<String> = ids.iter().rev().cloned().collect();
    assert_eq!(seen, newest_first);

    let list = |request: pb::ListExecutionsRequest| {
        let mut c = c.clone();
        async move {
            let page = c.list_executions(request).await.unwrap().into_inner();
            page.executions.into_iter().map(|e| e.id).collect::<Vec<_>>()
        }
    };
    let refunds = pb::ListExecutionsRequest { workflow: "refund".into(), ..Default::default() };
    assert_eq!(list(refunds).await, [ids[3].clone(), ids[1].clone()]);
    let stopped = pb::ListExecutionsRequest {
        states: vec![pb::ExecutionState::Paused as i32, pb::ExecutionState::Cancelled as i32],
        ..Default::default()
    };
    assert_eq!(list(stopped).await, [ids[1].clone(), ids[0].clone()]);
    let running = pb::ListExecutionsRequest { states: vec![pb::ExecutionState::Running as i32], ..Default::default() };
    assert_eq!(list(running).await.len(), 3);
    let by_prefix = pb::ListExecutionsRequest { id_prefix: ids[2].to_uppercase(), ..Default::default() };
    assert_eq!(list(by_prefix).await, [ids[2].clone()]);
    let future = prost_types::Timestamp { seconds: 4_000_000_000, nanos: 0 };
    let later = pb::ListExecutionsRequest { created_after: Some(future), ..Default::default() };
    assert!(list(later).await.is_empty());
    let before = pb::ListExecutionsRequest { created_before: Some(future), ..Default::default() };
    assert_eq!(list(before).await.len(), 5);
    // An oversized page is capped, not refused.
    let huge = pb::ListExecutionsRequest { page_size: u32::MAX, ..Default::default() };
    assert_eq!(list(huge).await.len(), 5);

    // An idempotency key finds the one execution it started, under the other filters too.
    let keyed = c.clone().start_execution(start_request("refund", "{}", Some("order-7"))).await.unwrap().into_inner();
    let keyed = keyed.execution.unwrap().id;
    let by_key = |key: &str| pb::ListExecutionsRequest { idempotency_key: key.into(), ..Default::default() };
    assert_eq!(list(by_key("order-7")).await, std::slice::from_ref(&keyed));
    let refund = pb::ListExecutionsRequest { workflow: "refund".into(), ..by_key("order-7") };
    assert_eq!(list(refund).await, std::slice::from_ref(&keyed));
    let checkout = pb::ListExecutionsRequest { workflow: "checkout".into(), ..by_key("order-7") };
    assert!(list(checkout).await.is_empty());
    let paused = pb::ListExecutionsRequest { states: vec![pb::ExecutionState::Paused as i32], ..by_key("order-7") };
    assert!(list(paused).await.is_empty());
    assert!(list(by_key("order-8")).await.is_empty());
    server.shutdown().await;
}

#[tokio::test]
async fn a_late_watcher_gets_the_whole_journal_and_the_stream_ends() {
    let Harness { server, fakes, client: mut c } = start().await;
    let execution = start_one(&mut c, "checkout").await;
    complete(&fakes, id(&execution));

    let mut stream = watch(&mut c, &execution.id, 0).await;
    let mut events = Vec::new();
    while let Some(answer) = stream.message().await.unwrap() {
        events.push(answer.event.unwrap());
    }
    let sequences: Vec<u64> = events.iter().map(|e| e.sequence).collect();
    assert_eq!(sequences, [1, 2, 3, 4, 5, 6]);
    assert!(events.iter().all(|e| e.execution_id == execution.id && e.at.is_some()));
    assert!(matches!(&events[0].kind, Some(pb::event::Kind::Started(s)) if s.input_json == "{}"));
    assert!(matches!(&events[1].kind, Some(pb::event::Kind::TaskScheduled(t)) if t.step == "pay" && t.attempt == 1));
    let Some(pb::event::Kind::Completed(done)) = &events[5].kind else { panic!("{:?}", events[5]) };
    assert_eq!(serde_json::from_str::<serde_json::Value>(&done.output_json).unwrap(), json!({"shipped": true}));

    // From a later sequence; from past the end (nothing, and the stream still ends).
    assert_eq!(sequences_from(&mut c, &execution.id, 5).await, [5, 6]);
    assert!(sequences_from(&mut c, &execution.id, 99).await.is_empty());
    let got = c.get_execution(pb::GetExecutionRequest { id: execution.id.clone() }).await.unwrap().into_inner();
    let got = got.execution.unwrap();
    assert_eq!(got.state, pb::ExecutionState::Completed as i32);
    assert!(got.tasks.iter().all(|t| t.state == pb::TaskState::Succeeded as i32 && t.attempts == 1));
    server.shutdown().await;
}

async fn sequences_from(c: &mut ExecutionServiceClient<Channel>, id: &str, from: u64) -> Vec<u64> {
    sequences(watch(c, id, from).await).await
}

#[tokio::test]
async fn a_live_watcher_sees_events_as_they_are_journaled() {
    let Harness { server, fakes, client: mut c } = start().await;
    let execution = start_one(&mut c, "checkout").await;
    let mut stream = watch(&mut c, &execution.id, 0).await;
    assert_eq!(stream.message().await.unwrap().unwrap().event.unwrap().sequence, 1);
    // Past the next event of an unfinished execution: out of range, at once.
    let past = pb::WatchExecutionRequest { id: execution.id.clone(), from_sequence: 3 };
    assert_status(c.watch_execution(past).await, Code::OutOfRange, "past the end of the journal");

    // Journaled after the watcher caught up: each arrives live, in order.
    c.pause_execution(pb::PauseExecutionRequest { id: execution.id.clone() }).await.unwrap();
    let paused = stream.message().await.unwrap().unwrap().event.unwrap();
    assert_eq!((paused.sequence, paused.kind), (2, Some(pb::event::Kind::Paused(pb::event::Paused {}))));
    c.resume_execution(pb::ResumeExecutionRequest { id: execution.id.clone() }).await.unwrap();
    assert_eq!(stream.message().await.unwrap().unwrap().event.unwrap().sequence, 3);
    complete(&fakes, id(&execution));
    let rest: Vec<u64> = sequences(stream).await;
    assert_eq!(rest, [4, 5, 6, 7, 8]);
    server.shutdown().await;
}

#[tokio::test]
async fn bad_execution_requests_get_typed_codes_naming_the_problem() {
    let Harness { server, fakes: _fakes, client: mut c } = start().await;
    let ghost = ExecutionId::generate().to_string();
    let v4 = "6f1c1b9e-3f0a-4c5e-9d2b-1a2b3c4d5e6f";

    assert_status(
        c.start_execution(start_request("checkout", "{not json", None)).await,
        Code::InvalidArgument,
        "input_json: not valid JSON",
    );
    assert_status(
        c.start_execution(start_request("nope", "", None)).await,
        Code::NotFound,
        r#"definition "nope" not found"#,
    );
    assert_status(
        c.start_execution(start_request("No Pe", "", None)).await,
        Code::InvalidArgument,
        "workflow: invalid",
    );
    assert_status(
        c.start_execution(start_request("checkout", "", Some(""))).await,
        Code::InvalidArgument,
        "idempotency_key",
    );
    let mut pinned = start_request("checkout", "", None);
    pinned.version = Some(3);
    assert_status(c.start_execution(pinned).await, Code::NotFound, r#"definition "checkout" version 3 not found"#);

    let get = |id: &str| pb::GetExecutionRequest { id: id.into() };
    assert_status(c.get_execution(get("nope")).await, Code::InvalidArgument, "id: invalid execution_id");
    assert_status(c.get_execution(get(v4)).await, Code::InvalidArgument, "must be a UUIDv7");
    assert_status(c.get_execution(get("")).await, Code::InvalidArgument, "id: must not be empty");
    assert_status(c.get_execution(get(&ghost)).await, Code::NotFound, &format!("execution {ghost} not found"));
    assert_status(c.pause_execution(pb::PauseExecutionRequest { id: ghost.clone() }).await, Code::NotFound, &ghost);
    assert_status(
        c.cancel_execution(pb::CancelExecutionRequest { id: "x".into(), reason: String::new() }).await,
        Code::InvalidArgument,
        "id: invalid execution_id",
    );
    let watch = |id: &str| pb::WatchExecutionRequest { id: id.into(), from_sequence: 0 };
    assert_status(c.watch_execution(watch(&ghost)).await, Code::NotFound, &ghost);
    assert_status(c.watch_execution(watch("nope")).await, Code::InvalidArgument, "id: invalid execution_id");

    let bad_state = pb::ListExecutionsRequest { states: vec![1, 0], ..Default::default() };
    assert_status(c.list_executions(bad_state).await, Code::InvalidArgument, "states[1]: must be specified");
    let unknown_state = pb::ListExecutionsRequest { states: vec![77], ..Default::default() };
    assert_status(c.list_executions(unknown_state).await, Code::InvalidArgument, "states[0]: unknown enum value 77");
    let bad_token = pb::ListExecutionsRequest { page_token: "v1.nope".into(), ..Default::default() };
    assert_status(c.list_executions(bad_token).await, Code::InvalidArgument, "page_token");
    let bad_time = pb::ListExecutionsRequest {
        created_after: Some(prost_types::Timestamp { seconds: 0, nanos: -5 }),
        ..Default::default()
    };
    assert_status(c.list_executions(bad_time).await, Code::InvalidArgument, "created_after");
    let bad_workflow = pb::ListExecutionsRequest { workflow: "Bad".into(), ..Default::default() };
    assert_status(c.list_executions(bad_workflow).await, Code::InvalidArgument, "workflow: invalid");
    let bad_prefix = pb::ListExecutionsRequest { id_prefix: "xyz".into(), ..Default::default() };
    assert_status(c.list_executions(bad_prefix).await, Code::InvalidArgument, "id_prefix");
    let bad_key = pb::ListExecutionsRequest { idempotency_key: "a\u{7}b".into(), ..Default::default() };
    let control = r#"invalid idempotency_key "a\u{7}b": must not hold control characters"#;
    assert_status(c.list_executions(bad_key).await, Code::InvalidArgument, control);
    let long_key = pb::ListExecutionsRequest { idempotency_key: "k".repeat(257), ..Default::default() };
    assert_status(c.list_executions(long_key).await, Code::InvalidArgument, "is 257 bytes long, the limit is 256");

    // Nothing above started anything.
    let all = c.list_executions(pb::ListExecutionsRequest::default()).await.unwrap().into_inner();
    assert!(all.executions.is_empty());
    server.shutdown().await;
}

#[tokio::test]
async fn a_live_watch_ends_as_unavailable_when_the_server_shuts_down() {
    let Harness { server, fakes: _fakes, client: mut c } = start().await;
    let execution = start_one(&mut c, "checkout").await;
    let mut stream = watch(&mut c, &execution.id, 0).await;
    assert_eq!(stream.message().await.unwrap().unwrap().event.unwrap().sequence, 1);
    let stopping = tokio::spawn(server.shutdown());
    let status = stream.message().await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    stopping.await.unwrap();
}

/// What the server accepts, it can answer: a page of executions stops before the message limit
/// and hands back a token, and an execution whose tasks' errors together pass the limit is
/// answered with those errors shortened (the journal keeps them whole).
#[tokio::test]
async fn listings_page_by_size_and_an_execution_always_fits_its_answer() {
    let Harness { server, fakes, client: mut c } = start().await;
    let input = json!({"pad": "x".repeat(1_500_000)}).to_string();
    let mut started = Vec::new();
    for _ in 0..5 {
        let execution = c.start_execution(start_request("checkout", &input, None)).await.unwrap().into_inner();
        started.push(execution.execution.unwrap().id);
    }
    let mut listed = Vec::new();
    let mut token = String::new();
    let mut pages = 0;
    loop {
        let request = pb::ListExecutionsRequest { page_token: token.clone(), ..Default::default() };
        let page = c.list_executions(request).await.expect("every page fits").into_inner();
        assert!(page.executions.len() <= 2, "3 MB at most: {}", page.executions.len());
        assert!(page.executions.iter().all(|e| e.input_json == input));
        listed.extend(page.executions.into_iter().map(|e| e.id));
        pages += 1;
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    started.reverse();
    assert_eq!((listed, pages), (started, 3), "newest first, each once");

    // 1,000 steps whose failures say 4 KiB each: 4 MB of task errors.
    let steps: Vec<_> = (0..1_000).map(|i| json!({"id": format!("s{i}"), "service": "svc"})).collect();
    let source = json!({"name": "wide", "steps": steps}).to_string();
    let mut workflows = WorkflowServiceClient::new(server.channel.clone());
    workflows.apply_definition(pb::ApplyDefinitionRequest { source, format: 0 }).await.unwrap();
    let input = json!({"pad": "y".repeat(1_000_000)}).to_string();
    let wide = c.start_execution(start_request("wide", &input, None)).await.unwrap().into_inner().execution.unwrap();
    let error = "e".repeat(4 * 1024);
    for i in 0..1_000 {
        let step = StepId::new(&format!("s{i}")).unwrap();
        let failed = EventKind::TaskFailed { step, attempt: 1, error: error.clone(), retryable: true, problem: None };
        fakes.executions.record(id(&wide), failed).unwrap();
    }
    let got = c.get_execution(pb::GetExecutionRequest { id: wide.id.clone() }).await.expect("the answer fits");
    let got = got.into_inner().execution.unwrap();
    assert_eq!((got.input_json.as_str(), got.tasks.len()), (input.as_str(), 1_000));
    let task = &got.tasks[0];
    let shown = task.error.as_deref().unwrap();
    assert!(shown.starts_with("eee") && shown.ends_with("(cut from 4096 bytes)"), "{shown}");
    // Pausing answers with the execution too, within the limit.
    let paused = c.pause_execution(pb::PauseExecutionRequest { id: wide.id.clone() }).await.expect("fits");
    assert_eq!(paused.into_inner().execution.unwrap().tasks.len(), 1_000);
    // The journal has every error whole.
    let mut stream = watch(&mut c, &wide.id, 2).await;
    let first = stream.message().await.unwrap().unwrap().event.unwrap();
    assert!(matches!(first.kind, Some(pb::event::Kind::TaskFailed(f)) if f.error == error));
    // A watcher that stops reading holds its stream's flow-control window; let it go.
    drop(stream);
    server.shutdown().await;
}

/// What a store may still hold from before the write-time bounds: outputs and a reason past
/// the message limit. Every read answers, with those fields left out (named in `elided`) or
/// cut, and a listing goes on past them.
#[tokio::test]
async fn executions_stored_before_the_bounds_read_back_with_their_largest_fields_left_out() {
    let Harness { server, fakes, mut client } = start().await;
    let c = &mut client;
    let huge = json!("x".repeat(5 << 20));
    let before = start_one(c, "checkout").await;
    let large = start_one(c, "checkout").await;
    let cancelled = start_one(c, "checkout").await;
    let after = start_one(c, "checkout").await;
    let (pay, svc) = (StepId::new("pay").unwrap(), ServiceId::new("svc").unwrap());
    let record = |id, kind| fakes.executions.record(id, kind).unwrap();
    record(id(&large), EventKind::TaskScheduled { step: pay.clone(), attempt: 1, service: svc });
    record(id(&large), EventKind::TaskSucceeded { step: pay, attempt: 1, output: huge.clone(), context: None });
    record(id(&large), EventKind::Completed { output: huge });
    record(id(&cancelled), EventKind::Cancelled { reason: "r".repeat(5 << 20) });

    let got = c.get_execution(pb::GetExecutionRequest { id: large.id.clone() }).await.expect("it answers");
    let got = got.into_inner().execution.unwrap();
    assert_eq!(got.state, pb::ExecutionState::Completed as i32);
    assert_eq!((got.output_json.as_deref(), got.elided), (Some(""), vec!["output_json".to_owned()]));
    assert_eq!(got.input_json, "{}", "what fits is kept");
    let got = c.get_execution(pb::GetExecutionRequest { id: cancelled.id.clone() }).await.expect("it answers");
    let error = got.into_inner().execution.unwrap().error.unwrap();
    assert!(error.len() <= 4096 && error.ends_with("(cut from 5242880 bytes)"), "{}", &error[error.len() - 40..]);

    // One page, then page by page: every execution is listed, none twice.
    let mut listed = Vec::new();
    for page_size in [0, 1] {
        let mut token = String::new();
        loop {
            let request = pb::ListExecutionsRequest { page_size, page_token: token, ..Default::default() };
            let page = c.list_executions(request).await.expect("a page answers").into_inner();
            listed.extend(page.executions.into_iter().map(|e| (e.id, e.elided)));
            token = page.next_page_token;
            if token.is_empty() {
                break;
            }
        }
    }
    let newest_first = [&after, &cancelled, &large, &before].map(|e| e.id.clone());
    let expected: Vec<_> = newest_first
        .iter()
        .map(|id| (id.clone(), if *id == large.id { vec!["output_json".to_owned()] } else { Vec::new() }))
        .collect();
    assert_eq!(listed, [expected.clone(), expected].concat());

    // The journal reads back to its end, the large events fitted.
    let mut events = watch(c, &large.id, 0).await;
    let mut elided = Vec::new();
    while let Some(answer) = events.message().await.expect("every event answers") {
        elided.push(answer.event.unwrap().elided);
    }
    let succeeded = vec!["task_succeeded.output_json".to_owned()];
    assert_eq!(elided, [vec![], vec![], succeeded, vec!["completed.output_json".to_owned()]]);
    let mut events = watch(c, &cancelled.id, 0).await;
    let mut last = None;
    while let Some(answer) = events.message().await.expect("every event answers") {
        last = answer.event.unwrap().kind;
    }
    let Some(pb::event::Kind::Cancelled(pb::event::Cancelled { reason })) = last else { panic!("{last:?}") };
    assert!(reason.len() <= 4096 && reason.ends_with("(cut from 5242880 bytes)"));
    server.shutdown().await;
}
