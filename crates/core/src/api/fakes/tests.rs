use std::task::Waker;

use futures_util::{FutureExt as _, StreamExt as _};
use serde_json::json;

use super::*;
use crate::execution::TaskState;
use crate::fakes::FakeClock;

fn name(text: &str) -> WorkflowName {
    WorkflowName::new(text).unwrap()
}

fn definition(workflow: &str, steps: &[&str]) -> String {
    let steps: Vec<Value> = steps.iter().map(|s| json!({"id": s, "service": "svc"})).collect();
    json!({"name": workflow, "description": "test", "steps": steps}).to_string()
}

/// Runs a future that must not wait.
fn now<T>(future: impl Future<Output = T>) -> T {
    future.now_or_never().expect("the fake answers without waiting")
}

fn executions() -> InMemoryExecutions {
    let workflows = InMemoryWorkflows::default();
    workflows.apply_now(&definition("checkout", &["a", "b"]), DefinitionFormat::Auto).unwrap();
    InMemoryExecutions::with_clock(workflows, Arc::new(FakeClock::default()))
}

fn start(executions: &InMemoryExecutions, key: Option<&str>, input: Value) -> ApiResult<StartedExecution> {
    now(executions.start(StartExecution {
        workflow: name("checkout"),
        version: None,
        input,
        idempotency_key: key.map(|k| IdempotencyKey::new(k).unwrap()),
        trace: None,
    }))
}

#[test]
fn the_catalog_versions_changed_content_and_pages() {
    let catalog = InMemoryWorkflows::default();
    let first = now(catalog.apply(definition("checkout", &["a"]), DefinitionFormat::Json)).unwrap();
    assert_eq!((first.definition.version, first.created, first.definition.step_count), (1, true, 1));
    let same = now(catalog.apply(definition("checkout", &["a"]), DefinitionFormat::Auto)).unwrap();
    assert_eq!((same.definition.version, same.created), (1, false));
    let second = now(catalog.apply(definition("checkout", &["a", "b"]), DefinitionFormat::Auto)).unwrap();
    assert_eq!((second.definition.version, second.created), (2, true));
    assert_ne!(first.definition.content_hash, second.definition.content_hash);
    now(catalog.apply(definition("billing", &["x"]), DefinitionFormat::Auto)).unwrap();

    let got = now(catalog.get(name("checkout"), Some(1))).unwrap();
    assert_eq!(got.summary, first.definition);
    assert_eq!(got.definition["steps"][0]["id"], "a");
    assert_eq!(got.source.unwrap().format, DefinitionFormat::Json);
    assert_eq!(now(catalog.get(name("checkout"), None)).unwrap().summary.version, 2);
    let missing = now(catalog.get(name("checkout"), Some(9))).unwrap_err();
    assert_eq!(missing, ApiError::NotFound(r#"definition "checkout" version 9 not found"#.into()));

    let page = |name: Option<&str>, token: Option<String>| {
        now(catalog.list(DefinitionQuery { name: name.map(self::name), page_token: token, limit: 1 }))
    };
    let first_page = page(None, None).unwrap();
    assert_eq!(first_page.definitions[0].name.as_str(), "billing");
    let second_page = page(None, first_page.next).unwrap();
    assert_eq!((second_page.definitions[0].version, second_page.next), (2, None));
    let newest = page(Some("checkout"), None).unwrap();
    assert_eq!(newest.definitions[0].version, 2);
    let older = page(Some("checkout"), newest.next).unwrap();
    assert_eq!((older.definitions[0].version, older.next), (1, None));
    let bad = page(Some("checkout"), Some("x".into())).unwrap_err();
    assert!(matches!(&bad, ApiError::InvalidArgument { field, .. } if field == "page_token"), "{bad}");
}

#[test]
fn the_catalog_refuses_what_it_cannot_check() {
    let catalog = InMemoryWorkflows::default();
    let check = |source: String, format, expected: &str| {
        let err = catalog.apply_now(&source, format).unwrap_err();
        assert!(err.to_string().contains(expected), "{err} should contain {expected:?}");
    };
    check("name: x\nsteps: []".into(), DefinitionFormat::Auto, "reads JSON definitions only");
    check("{".into(), DefinitionFormat::Json, "invalid source: definition does not parse as json");
    check(definition("x", &["a", "a"]), DefinitionFormat::Auto, r#"step "a" appears twice"#);
    let unknown = json!({"name": "x", "steps": [{"id": "a", "service": "s", "depends_on": ["b"]}]});
    check(unknown.to_string(), DefinitionFormat::Auto, r#"invalid steps[0].depends_on: step "a" depends on unknown"#);
}

#[test]
fn starts_are_idempotent_by_key_and_follow_the_state_machine() {
    let executions = executions();
    let started = start(&executions, Some("k"), json!({"n": 1})).unwrap();
    let id = started.execution.id;
    assert_eq!(
        (started.existing, started.execution.state, started.execution.tasks.len()),
        (false, ExecutionState::Running, 2)
    );
    let again = start(&executions, Some("k"), json!({"n": 1})).unwrap();
    assert_eq!((again.existing, again.execution.id), (true, id));
    let conflict = start(&executions, Some("k"), json!({"n": 2})).unwrap_err();
    assert!(matches!(&conflict, ApiError::AlreadyExists(m) if m.contains(r#"idempotency key "k""#)), "{conflict}");
    let unknown = now(executions.start(StartExecution {
        workflow: name("nope"),
        version: None,
        input: Value::Null,
        idempotency_key: None,
        trace: None,
    }));
    assert_eq!(unknown.unwrap_err(), ApiError::NotFound(r#"definition "nope" not found"#.into()));

    assert_eq!(now(executions.pause(id)).unwrap().state, ExecutionState::Paused);
    assert_eq!(
        now(executions.pause(id)).unwrap_err(),
        ApiError::transition(id, ExecutionState::Paused, ExecutionState::Paused)
    );
    assert_eq!(now(executions.resume(id)).unwrap().state, ExecutionState::Running);
    let cancelled = now(executions.cancel(id, "no longer needed".into())).unwrap();
    assert_eq!((cancelled.state, cancelled.error.as_deref()), (ExecutionState::Cancelled, Some("no longer needed")));
    assert_eq!(
        now(executions.resume(id)).unwrap_err(),
        ApiError::transition(id, ExecutionState::Cancelled, ExecutionState::Running)
    );
    assert!(matches!(executions.record(id, EventKind::Paused), Err(ApiError::FailedPrecondition(_))));
    let kinds: Vec<_> = executions.events(id).unwrap().into_iter().map(|e| (e.sequence, e.kind)).collect();
    assert_eq!(kinds.len(), 4);
    assert_eq!(kinds[3], (4, EventKind::Cancelled { reason: "no longer needed".into() }));
    let ghost = ExecutionId::generate();
    assert_eq!(now(executions.get(ghost)).unwrap_err(), ApiError::NotFound(format!("execution {ghost} not found")));
}

#[test]
fn recorded_events_move_tasks_and_states() {
    let executions = executions();
    let id = start(&executions, None, json!({})).unwrap().execution.id;
    let step = StepId::new("a").unwrap();
    let service = ServiceId::new("svc").unwrap();
    executions.record(id, EventKind::TaskScheduled { step: step.clone(), attempt: 1, service }).unwrap();
    executions
        .record(id, EventKind::TaskSucceeded { step: step.clone(), attempt: 1, output: json!(1), context: None })
        .unwrap();
    let illegal = executions.record(id, EventKind::Resumed).unwrap_err();
    assert_eq!(illegal, ApiError::transition(id, ExecutionState::Running, ExecutionState::Running));
    executions.record(id, EventKind::Completed { output: json!({"done": true}) }).unwrap();
    let execution = now(executions.get(id)).unwrap();
    assert_eq!(execution.state, ExecutionState::Completed);
    assert_eq!(execution.output, Some(json!({"done": true})));
    assert_eq!((execution.tasks[&step].state, execution.tasks[&step].attempts), (TaskState::Succeeded, 1));
}

#[test]
fn watchers_get_the_journal_then_live_events_and_stop_after_the_end() {
    let executions = executions();
    let id = start(&executions, None, json!({})).unwrap().execution.id;
    let mut live = now(executions.watch(id, 0)).unwrap();
    let mut cx = std::task::Context::from_waker(Waker::noop());
    let first = live.next().now_or_never().unwrap().unwrap().unwrap();
    assert_eq!((first.sequence, &first.kind), (1, &EventKind::Started { input: json!({}) }));
    assert!(live.poll_next_unpin(&mut cx).is_pending());
    now(executions.pause(id)).unwrap();
    assert_eq!(live.next().now_or_never().unwrap().unwrap().unwrap().kind, EventKind::Paused);
    now(executions.cancel(id, "stop".into())).unwrap();
    assert_eq!(live.next().now_or_never().unwrap().unwrap().unwrap().sequence, 3);
    assert!(live.next().now_or_never().unwrap().is_none());

    // A late watcher from 0 gets the whole journal; one from past the end gets nothing.
    let late: Vec<u64> = now(now(executions.watch(id, 0)).unwrap().map(|e| e.unwrap().sequence).collect::<Vec<_>>());
    assert_eq!(late, [1, 2, 3]);
    let past: Vec<_> = now(now(executions.watch(id, 9)).unwrap().collect::<Vec<_>>());
    assert!(past.is_empty());
    let ghost = ExecutionId::generate();
    assert!(matches!(now(executions.watch(ghost, 0)), Err(ApiError::NotFound(_))));
}

#[test]
fn listings_filter_and_page_by_keyset() {
    let executions = executions();
    let ids: Vec<ExecutionId> = (0..5).map(|i| start(&executions, None, json!(i)).unwrap().execution.id).collect();
    now(executions.pause(ids[1])).unwrap();
    now(executions.cancel(ids[2], "x".into())).unwrap();
    let list = |query: ExecutionQuery, page: PageRequest| now(executions.list(query, page)).unwrap();
    let newest = PageRequest { limit: 2, order: Order::NewestFirst, token: None };
    let first = list(ExecutionQuery::default(), newest.clone());
    assert_eq!(first.executions.iter().map(|e| e.id).collect::<Vec<_>>(), [ids[4], ids[3]]);
    let second = list(ExecutionQuery::default(), PageRequest { token: first.next, ..newest });
    assert_eq!(second.executions.iter().map(|e| e.id).collect::<Vec<_>>(), [ids[2], ids[1]]);
    let stopped =
        ExecutionQuery { states: vec![ExecutionState::Paused, ExecutionState::Cancelled], ..Default::default() };
    let page = list(stopped, PageRequest::default());
    assert_eq!((page.executions.iter().map(|e| e.id).collect::<Vec<_>>(), page.next), (vec![ids[1], ids[2]], None));
    let other = ExecutionQuery { workflow: Some(name("other")), ..Default::default() };
    assert!(list(other, PageRequest::default()).executions.is_empty());
    let bad = PageRequest { token: Some(PageToken::from_text("nope".into())), ..PageRequest::default() };
    let err = now(executions.list(ExecutionQuery::default(), bad)).unwrap_err();
    assert!(matches!(&err, ApiError::InvalidArgument { field, .. } if field == "page_token"), "{err}");
}

#[test]
fn a_listing_by_idempotency_key_holds_the_one_execution_it_started() {
    let executions = executions();
    let keyed: Vec<ExecutionId> =
        (0..3).map(|i| start(&executions, Some(&format!("k{i}")), json!(i)).unwrap().execution.id).collect();
    start(&executions, None, json!("no key")).unwrap();
    now(executions.pause(keyed[1])).unwrap();
    let key = |k: &str| Some(IdempotencyKey::new(k).unwrap());
    let ids = |query: ExecutionQuery| {
        let page = now(executions.list(query, PageRequest::default())).unwrap();
        assert_eq!(page.next, None);
        page.executions.iter().map(|e| e.id).collect::<Vec<_>>()
    };
    assert_eq!(ids(ExecutionQuery { idempotency_key: key("k1"), ..Default::default() }), [keyed[1]]);
    let paused =
        ExecutionQuery { idempotency_key: key("k1"), states: vec![ExecutionState::Paused], ..Default::default() };
    assert_eq!(ids(paused), [keyed[1]]);
    let running =
        ExecutionQuery { idempotency_key: key("k1"), states: vec![ExecutionState::Running], ..Default::default() };
    assert!(ids(running).is_empty());
    let other = ExecutionQuery { idempotency_key: key("k2"), workflow: Some(name("other")), ..Default::default() };
    assert!(ids(other).is_empty());
    assert!(ids(ExecutionQuery { idempotency_key: key("unused"), ..Default::default() }).is_empty());
}

fn task(queue: &str, step: &str) -> NewTask {
    NewTask {
        queue: queue.into(),
        service: ServiceId::new("svc").unwrap(),
        execution: ExecutionId::generate(),
        step: StepId::new(step).unwrap(),
        attempt: 1,
        input: json!({"step": step}),
        deadline: None,
    }
}

fn poll_request(queues: &[&str], max_tasks: usize) -> PollTasks {
    PollTasks {
        worker: "w1".into(),
        queues: queues.iter().map(|q| q.to_string()).collect(),
        max_tasks,
        max_wait: Duration::from_secs(60),
    }
}

#[test]
fn polls_wait_for_tasks_and_leases_are_fenced_by_tokens() {
    let clock = FakeClock::default();
    let tasks = InMemoryWorkerTasks::with_clock(Arc::new(clock.clone()), Duration::from_secs(30));
    let mut waiting = tasks.poll(poll_request(&["images"], 2));
    let mut cx = std::task::Context::from_waker(Waker::noop());
    assert!(waiting.as_mut().poll(&mut cx).is_pending());
    tasks.enqueue(task("images", "a"));
    tasks.enqueue(task("other", "b"));
    let leased = now(waiting).unwrap();
    assert_eq!(leased.len(), 1);
    let first = leased[0].clone();
    assert_eq!((first.queue.as_str(), first.step.as_str(), first.attempt), ("images", "a", 1));
    assert_eq!(first.idempotency_key, format!("{}/a", first.execution));
    assert_eq!((tasks.queued("images"), tasks.leased()), (0, 1));

    // An extension moves the expiry; an expired lease redelivers with a new token.
    clock.advance(Duration::from_secs(20));
    let extended = now(tasks.extend(first.token.clone())).unwrap();
    assert_eq!((extended.expires_at, extended.cancel_requested), (clock.now() + chrono::Duration::seconds(30), false));
    clock.advance(Duration::from_secs(31));
    assert_eq!(tasks.queued("images"), 1);
    let stale = now(tasks.complete(first.token.clone(), json!(1))).unwrap_err();
    assert!(matches!(&stale, ApiError::NotFound(m) if m.contains(first.token.as_str())), "{stale}");
    let again = now(tasks.poll(poll_request(&["images"], 1))).unwrap();
    assert_ne!(again[0].token, first.token);
    now(tasks.complete(again[0].token.clone(), json!({"ok": true}))).unwrap();
    assert!(matches!(now(tasks.complete(again[0].token.clone(), json!(1))), Err(ApiError::NotFound(_))));

    let other = now(tasks.poll(poll_request(&["other"], 1))).unwrap();
    tasks.cancel(other[0].execution);
    assert!(now(tasks.extend(other[0].token.clone())).unwrap().cancel_requested);
    let refused = now(tasks.fail(other[0].token.clone(), TaskFailure { error: "boom".into(), retryable: true }));
    assert!(matches!(refused, Err(ApiError::FailedPrecondition(_))));

    let finished = tasks.finished();
    assert_eq!(finished.len(), 1);
    assert_eq!((finished[0].worker.as_str(), finished[0].result.clone()), ("w1", Ok(json!({"ok": true}))));
    let empty = now(tasks.poll(PollTasks { max_wait: Duration::ZERO, ..poll_request(&["images"], 1) })).unwrap();
    assert!(empty.is_empty());
    assert!(matches!(now(tasks.poll(poll_request(&[], 1))), Err(ApiError::InvalidArgument { .. })));
}
