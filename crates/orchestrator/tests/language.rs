//! The workflow language end to end, through the real engine, interpreter and HTTP invoker:
//! every construct of the native format, signals and child workflows, with real services on
//! 127.0.0.1.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Json;
use axum::http::HeaderMap;
use axum::routing::post;
use baton::{Options, ServiceOrchestrator};
use baton_core::{Execution, ExecutionId, ExecutionState, ServiceSpec, Store as _, TaskState, WorkflowName};
use serde_json::{Value, json};

/// Calls one service saw, by idempotency key.
type Seen = Arc<Mutex<HashMap<String, Vec<Value>>>>;

/// A service that answers `{"echo": <body>, "n": <body.n * 10>}` and records each call.
async fn service() -> (String, Seen) {
    let seen = Seen::default();
    let router = axum::Router::new().route(
        "/",
        post({
            let seen = Arc::clone(&seen);
            move |headers: HeaderMap, Json(body): Json<Value>| {
                let seen = Arc::clone(&seen);
                async move {
                    let key = headers.get("idempotency-key").and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
                    seen.lock().unwrap().entry(key).or_default().push(body.clone());
                    let n = body.get("n").and_then(Value::as_i64).unwrap_or(0);
                    Json(json!({"echo": body, "n": n * 10}))
                }
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    (format!("http://{addr}/"), seen)
}

async fn baton_with(services: &[(&str, &str)]) -> ServiceOrchestrator {
    let baton = ServiceOrchestrator::open(Options { supervisor: None, ..Options::default() }).await.unwrap();
    for (id, url) in services {
        let spec = ServiceSpec::from_json(
            &json!({"id": id, "endpoint": {"protocol": "http", "url": url}, "capabilities": [id]}).to_string(),
        )
        .unwrap();
        baton.registry().register(spec).unwrap();
    }
    baton
}

async fn run(baton: &ServiceOrchestrator, definition: &str, input: Value) -> Execution {
    let applied = baton.engine().apply(definition).await.unwrap();
    let id = baton.engine().start(&applied.name, None, input, None).await.unwrap();
    tokio::time::timeout(Duration::from_secs(20), baton.engine().wait(id)).await.expect("in time").unwrap()
}

fn state(execution: &Execution, path: &str) -> TaskState {
    execution.tasks.get(path).unwrap_or_else(|| panic!("no task {path}: {:?}", execution.tasks)).state
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn set_switch_and_a_parallel_for_collect_in_order() {
    let (url, seen) = service().await;
    let baton = baton_with(&[("calc", &url)]).await;
    let execution = run(
        &baton,
        r#"
name: orders
steps:
  - id: totals
    set: { big: "${ .input.amount > 100 }", lines: "${ .input.lines }" }
  - id: route
    depends_on: [totals]
    switch:
      - name: express
        when: "${ .steps.totals.output.big }"
        steps:
          - { id: pick, set: "express" }
      - name: ground
        steps:
          - { id: pick, set: "ground" }
  - id: each
    for: { each: line, in: "${ .steps.totals.output.lines }", concurrency: 3 }
    steps:
      - id: price
        service: calc
        input: { n: "${ $line.qty }", at: "${ $index }" }
        output: "${ .n }"
    depends_on: [totals]
output:
  route: "${ .steps.route.output }"
  prices: "${ .steps.each.output }"
"#,
        json!({"amount": 250, "lines": [{"qty": 1}, {"qty": 2}, {"qty": 3}, {"qty": 4}, {"qty": 5}]}),
    )
    .await;
    assert_eq!(execution.state, ExecutionState::Completed, "{execution:?}");
    assert_eq!(execution.output, Some(json!({"route": "express", "prices": [10, 20, 30, 40, 50]})));
    assert_eq!(state(&execution, "route/express/pick"), TaskState::Succeeded);
    assert_eq!(state(&execution, "each/4/price"), TaskState::Succeeded);
    // Every iteration called once, under a key of its own.
    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), 5, "{seen:?}");
    assert!(seen.keys().all(|k| k.contains("/each/")), "{seen:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn try_catches_a_raised_error_and_a_failing_call_with_its_problem() {
    let baton = baton_with(&[]).await;
    let execution = run(
        &baton,
        r#"
name: guarded
steps:
  - id: guard
    try:
      - id: check
        raise: { type: validation, status: 422, title: bad order, detail: "amount ${ .input.amount }" }
    catch:
      errors: { type: validation }
      as: problem
      steps:
        - id: note
          set: { caught: "${ $problem.title }", status: "${ $problem.status }", at: "${ $problem.instance }" }
  - id: unguarded
    depends_on: [guard]
    raise: { type: runtime, status: 500, title: boom }
"#,
        json!({"amount": 7}),
    )
    .await;
    assert_eq!(execution.state, ExecutionState::Failed);
    assert_eq!(state(&execution, "guard"), TaskState::Succeeded);
    assert_eq!(state(&execution, "guard/try/check"), TaskState::Failed);
    assert_eq!(state(&execution, "guard/catch/note"), TaskState::Succeeded);
    let problem = execution.problem.expect("a structured error");
    assert_eq!(problem.status, 500);
    assert_eq!(problem.title.as_deref(), Some("boom"));
    assert_eq!(problem.instance.as_deref(), Some("/steps/1"));
    assert_eq!(execution.error.as_deref(), Some("step unguarded failed: boom"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fork_competes_and_a_bounded_until_loop_stops_or_fails() {
    let baton = baton_with(&[]).await;
    let execution = run(
        &baton,
        r#"
name: race
steps:
  - id: quotes
    fork:
      compete: true
      branches:
        - { name: slow, steps: [{ id: w, wait: 2s }, { id: q, set: "slow", depends_on: [w] }] }
        - { name: fast, steps: [{ id: q, set: "fast" }] }
  - id: count
    until: "${ .steps.step.output >= 3 }"
    max_iterations: 10
    steps:
      - { id: step, set: "${ $index + 1 }" }
output: { winner: "${ .steps.quotes.output }", counted: "${ .steps.count.output }" }
"#,
        json!({}),
    )
    .await;
    assert_eq!(execution.state, ExecutionState::Completed, "{execution:?}");
    assert_eq!(execution.output.as_ref().unwrap()["winner"], json!("fast"));
    assert_eq!(execution.output.as_ref().unwrap()["counted"]["step"]["output"], json!(3));
    let runaway = run(
        &baton,
        "name: runaway\nsteps:\n  - id: spin\n    while: \"${ true }\"\n    max_iterations: 5\n    steps: [{ id: x, set: 1 }]\n",
        json!({}),
    )
    .await;
    assert_eq!(runaway.state, ExecutionState::Failed);
    assert!(runaway.error.as_deref().unwrap().contains("did not end within max_iterations (5)"), "{runaway:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listen_takes_signals_sent_before_and_after_it_each_once() {
    let baton = baton_with(&[]).await;
    let applied = baton
        .engine()
        .apply(
            r#"
name: approvals
steps:
  - id: first
    listen: { signal: approve, timeout: 30s }
  - id: second
    depends_on: [first]
    listen: { signal: approve, timeout: 30s }
output: { a: "${ .steps.first.output }", b: "${ .steps.second.output }" }
"#,
        )
        .await
        .unwrap();
    let id = baton.engine().start(&applied.name, None, json!({}), None).await.unwrap();
    // Sent before any listen runs: kept, and consumed once.
    baton.engine().signal(id, "approve", json!({"by": "ann"})).await.unwrap();
    wait_for(&baton, id, |e| e.tasks.get("first").is_some_and(|t| t.state == TaskState::Succeeded)).await;
    baton.engine().signal(id, "approve", json!({"by": "bob"})).await.unwrap();
    let done = baton.engine().wait(id).await.unwrap();
    assert_eq!(done.output, Some(json!({"a": {"by": "ann"}, "b": {"by": "bob"}})));
    // An ended execution takes no more signals.
    let late = baton.engine().signal(id, "approve", json!(1)).await.unwrap_err();
    assert!(late.to_string().contains("cannot go from completed"), "{late}");
    let bad = baton.engine().signal(id, "no spaces", json!(1)).await.unwrap_err();
    assert!(bad.to_string().contains("must be 1 to 128"), "{bad}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listen_times_out_into_a_catch() {
    let baton = baton_with(&[]).await;
    let execution = run(
        &baton,
        r#"
name: patience
steps:
  - id: wait-for-it
    try:
      - { id: approval, listen: { signal: approve, timeout: 200ms } }
    catch:
      errors: { type: timeout }
      steps:
        - { id: gave-up, set: "timed out" }
output: "${ .steps[\"wait-for-it\"].output }"
"#,
        json!({}),
    )
    .await;
    assert_eq!(execution.state, ExecutionState::Completed, "{execution:?}");
    assert_eq!(execution.output, Some(json!("timed out")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_child_workflow_runs_once_with_a_parent_link_and_cancel_propagates() {
    let baton = baton_with(&[]).await;
    baton
        .engine()
        .apply("name: child\nsteps:\n  - { id: double, set: \"${ .input.n * 2 }\" }\noutput: \"${ .steps.double.output }\"\n")
        .await
        .unwrap();
    let execution = run(
        &baton,
        "name: parent\nsteps:\n  - id: call\n    workflow: { name: child, input: { n: \"${ .input.n }\" } }\noutput: \"${ .steps.call.output }\"\n",
        json!({"n": 21}),
    )
    .await;
    assert_eq!(execution.state, ExecutionState::Completed, "{execution:?}");
    assert_eq!(execution.output, Some(json!(42)));
    let child = execution.tasks["call"].child.expect("the child's id");
    let child = baton.engine().get(child).await.unwrap();
    assert_eq!(child.parent.as_ref().map(|p| p.execution), Some(execution.id));
    assert_eq!(child.workflow, WorkflowName::new("child").unwrap());

    // Cancelling a parent cancels the child it waits for.
    baton.engine().apply("name: sleeper\nsteps:\n  - { id: nap, wait: 1h }\n").await.unwrap();
    let applied =
        baton.engine().apply("name: waits\nsteps:\n  - id: call\n    workflow: { name: sleeper }\n").await.unwrap();
    let parent = baton.engine().start(&applied.name, None, json!({}), None).await.unwrap();
    let view = wait_for(&baton, parent, |e| e.tasks["call"].child.is_some()).await;
    let child = view.tasks["call"].child.unwrap();
    baton.engine().cancel(parent, "stop").await.unwrap();
    let child = tokio::time::timeout(Duration::from_secs(10), baton.engine().wait(child)).await.unwrap().unwrap();
    assert_eq!(child.state, ExecutionState::Cancelled);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_definitions_meet_limits_with_clear_errors() {
    let baton = baton_with(&[]).await;
    // A for over more items than the limit fails its step at run time; the server carries on.
    let huge = run(
        &baton,
        "name: huge\nsteps:\n  - id: each\n    for: { in: \"${ [range(100001)] }\" }\n    steps: [{ id: x, set: 1 }]\n",
        json!({}),
    )
    .await;
    assert_eq!(huge.state, ExecutionState::Failed);
    assert!(huge.error.as_deref().unwrap().contains("the limit is 100000"), "{huge:?}");
    let fine = run(&baton, "name: fine\nsteps:\n  - { id: x, set: 1 }\n", json!({})).await;
    assert_eq!(fine.state, ExecutionState::Completed);
}

/// Polls the execution until `holds` does, for up to 10 s.
async fn wait_for(baton: &ServiceOrchestrator, id: ExecutionId, holds: impl Fn(&Execution) -> bool) -> Execution {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let execution = baton.engine().get(id).await.unwrap();
        if holds(&execution) {
            return execution;
        }
        assert!(tokio::time::Instant::now() < deadline, "never held: {execution:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn parking_baton(store: Option<&std::path::Path>) -> ServiceOrchestrator {
    let mut options = Options { supervisor: None, ..Options::default() };
    options.engine.park_after = Some(Duration::from_millis(200));
    options.engine.park_poll = Duration::from_millis(50);
    if let Some(dir) = store {
        options.store = baton::StoreChoice::Redb(dir.to_path_buf());
    }
    // A server dropped in this process lets its file go once its background tasks have ended,
    // which may be a moment after the drop (a process that exits lets go at once).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        match ServiceOrchestrator::open(options.clone()).await {
            Err(e) if e.to_string().contains("already open") && tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            opened => return opened.unwrap(),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_execution_that_only_waits_is_parked_and_woken_by_its_timer_a_signal_or_its_child() {
    let baton = parking_baton(None).await;
    // A timer due later than park_after: parked until then, then it runs on, on time.
    let applied = baton
        .engine()
        .apply("name: nap\nsteps:\n  - { id: nap, wait: 1s }\n  - { id: after, set: 1, depends_on: [nap] }\n")
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let id = baton.engine().start(&applied.name, None, json!({}), None).await.unwrap();
    let parked = wait_for(&baton, id, |e| e.parked.is_some()).await;
    assert!(parked.parked.unwrap().until.is_some(), "{parked:?}");
    let done = tokio::time::timeout(Duration::from_secs(10), baton.engine().wait(id)).await.unwrap().unwrap();
    assert_eq!(done.state, ExecutionState::Completed, "{done:?}");
    assert!(started.elapsed() >= Duration::from_secs(1), "the timer fired early");
    assert_eq!(done.parked, None);

    // A listen without a timeout: parked with no wake time; the signal wakes it.
    let applied = baton.engine().apply("name: ask\nsteps:\n  - { id: ok, listen: { signal: go } }\n").await.unwrap();
    let id = baton.engine().start(&applied.name, None, json!({}), None).await.unwrap();
    let parked = wait_for(&baton, id, |e| e.parked.is_some()).await;
    assert_eq!(parked.parked.unwrap().until, None);
    baton.engine().signal(id, "go", json!("yes")).await.unwrap();
    let done = tokio::time::timeout(Duration::from_secs(10), baton.engine().wait(id)).await.unwrap().unwrap();
    assert_eq!(done.state, ExecutionState::Completed, "{done:?}");

    // A parent waiting for a child parks; the child's end wakes it.
    baton.engine().apply("name: slow-child\nsteps:\n  - { id: nap, wait: 600ms }\n").await.unwrap();
    let applied =
        baton.engine().apply("name: parent\nsteps:\n  - { id: call, workflow: { name: slow-child } }\n").await.unwrap();
    let id = baton.engine().start(&applied.name, None, json!({}), None).await.unwrap();
    wait_for(&baton, id, |e| e.parked.is_some()).await;
    let done = tokio::time::timeout(Duration::from_secs(10), baton.engine().wait(id)).await.unwrap().unwrap();
    assert_eq!(done.state, ExecutionState::Completed, "{done:?}");
    // A parked execution can be cancelled: it is woken for it.
    let applied = baton.engine().apply("name: long\nsteps:\n  - { id: nap, wait: 1h }\n").await.unwrap();
    let id = baton.engine().start(&applied.name, None, json!({}), None).await.unwrap();
    wait_for(&baton, id, |e| e.parked.is_some()).await;
    baton.engine().cancel(id, "no more").await.unwrap();
    let done = baton.engine().get(id).await.unwrap();
    assert_eq!(done.state, ExecutionState::Cancelled);
    assert_eq!(done.tasks["nap"].state, TaskState::Cancelled);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parked_timers_survive_a_restart_and_fire_once() {
    let dir = tempfile::tempdir().unwrap();
    let id = {
        let baton = parking_baton(Some(dir.path())).await;
        let applied = baton
            .engine()
            .apply("name: nap\nsteps:\n  - { id: nap, wait: 1500ms }\n  - { id: after, set: 1, depends_on: [nap] }\n")
            .await
            .unwrap();
        let id = baton.engine().start(&applied.name, None, json!({}), None).await.unwrap();
        wait_for(&baton, id, |e| e.parked.is_some()).await;
        id
    };
    // A new engine on the same file: not loaded at start (parked), loaded when due, fired once.
    let baton = parking_baton(Some(dir.path())).await;
    assert!(baton.engine().recovery().resumed.is_empty(), "{:?}", baton.engine().recovery());
    let done = tokio::time::timeout(Duration::from_secs(10), baton.engine().wait(id)).await.unwrap().unwrap();
    assert_eq!(done.state, ExecutionState::Completed, "{done:?}");
    let journal = baton.store().read_journal(id, 1).await.unwrap();
    let fired = journal
        .iter()
        .filter(|e| matches!(&e.kind, baton_core::EventKind::TaskSucceeded { step, .. } if step.as_str() == "nap"))
        .count();
    assert_eq!(fired, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiting_for_executions_as_they_are_woken_from_parking_never_errs() {
    // `wait` called while an execution is being loaded back (its record no longer parked, its
    // driver not live yet) waits for the load instead of answering "not running".
    let dir = tempfile::tempdir().unwrap();
    let baton = parking_baton(Some(dir.path())).await;
    let applied = baton
        .engine()
        .apply("name: naps\nsteps:\n  - { id: nap, wait: { until: \"${ .input.at }\" } }\n")
        .await
        .unwrap();
    let due = (chrono::Utc::now() + chrono::Duration::milliseconds(1500)).timestamp_millis() as f64 / 1000.0;
    let mut ids = Vec::new();
    for _ in 0..1000 {
        ids.push(baton.engine().start(&applied.name, None, json!({"at": due}), None).await.unwrap());
    }
    // Each waiter gives up after a few milliseconds and asks again, so that asks land in
    // every phase of each execution's parking and loading.
    let waits: Vec<_> = ids
        .iter()
        .map(|id| {
            let (engine, id) = (baton.engine().clone(), *id);
            tokio::spawn(async move {
                loop {
                    match tokio::time::timeout(Duration::from_millis(3), engine.wait(id)).await {
                        Ok(done) => return done,
                        Err(_) => continue,
                    }
                }
            })
        })
        .collect();
    let done = tokio::time::timeout(Duration::from_secs(60), futures_util::future::join_all(waits)).await.unwrap();
    for execution in done {
        assert_eq!(execution.unwrap().unwrap().state, ExecutionState::Completed);
    }
}

/// A service on 127.0.0.1 that answers every call with 503 (a retryable failure), and one that
/// accepts calls and never answers.
async fn broken_and_silent() -> (String, String) {
    let broken = axum::Router::new()
        .route("/", post(|| async { (axum::http::StatusCode::SERVICE_UNAVAILABLE, "down for maintenance") }));
    let silent = axum::Router::new().route("/", post(std::future::pending::<&'static str>));
    let mut urls = Vec::new();
    for router in [broken, silent] {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        urls.push(format!("http://{}/", listener.local_addr().unwrap()));
        tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    }
    (urls.remove(0), urls.remove(0))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_task_of_an_ended_execution_reads_an_end_state() {
    let (broken, silent) = broken_and_silent().await;
    let (echo, _) = service().await;
    let baton = baton_with(&[("broken", &broken), ("silent", &silent), ("echo", &echo)]).await;
    let retry = "retry: { max_attempts: 2, initial_backoff: 10ms, max_backoff: 10ms }";

    // The final retryable failure ends the step Failed, not Scheduled, under each policy.
    let continued = run(
        &baton,
        &format!(
            "name: continued\nsteps:\n  - {{ id: flaky, service: broken, on_error: continue, {retry} }}\n  - {{ id: after, service: echo, depends_on: [flaky] }}\n  - {{ id: aside, service: echo }}\n"
        ),
        json!({}),
    )
    .await;
    assert_eq!(continued.state, ExecutionState::Completed, "{continued:?}");
    assert_eq!(state(&continued, "flaky"), TaskState::Failed);
    assert_eq!(continued.tasks["flaky"].attempts, 2);
    assert_eq!(state(&continued, "after"), TaskState::Skipped);
    assert_eq!(state(&continued, "aside"), TaskState::Succeeded);
    let failed = run(
        &baton,
        &format!(
            "name: failed\nsteps:\n  - {{ id: flaky, service: broken, {retry} }}\n  - {{ id: after, service: echo, depends_on: [flaky] }}\n"
        ),
        json!({}),
    )
    .await;
    assert_eq!(failed.state, ExecutionState::Failed, "{failed:?}");
    assert_eq!(state(&failed, "flaky"), TaskState::Failed);
    assert_eq!(state(&failed, "after"), TaskState::Skipped);

    // A cancel ends the call in flight and the steps still waiting for it.
    let applied = baton
        .engine()
        .apply("name: hanging\nsteps:\n  - { id: stuck, service: silent }\n  - { id: next, service: echo, depends_on: [stuck] }\n")
        .await
        .unwrap();
    let id = baton.engine().start(&applied.name, None, json!({}), None).await.unwrap();
    wait_for(&baton, id, |e| e.tasks.get("stuck").is_some_and(|t| t.state != TaskState::Pending)).await;
    baton.engine().cancel(id, "no answer").await.unwrap();
    let cancelled = tokio::time::timeout(Duration::from_secs(20), baton.engine().wait(id)).await.unwrap().unwrap();
    assert_eq!(cancelled.state, ExecutionState::Cancelled);
    let open: Vec<_> = cancelled.tasks.iter().filter(|(_, t)| !t.state.is_terminal()).collect();
    assert!(open.is_empty(), "tasks left open after cancel: {open:?}");
    assert_eq!(state(&cancelled, "stuck"), TaskState::Cancelled);
    // A reader of the store sees the same end states as the engine's answer.
    let stored = baton.store().get_execution(id).await.unwrap();
    assert!(stored.tasks.values().all(|t| t.state.is_terminal()), "{stored:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fallback_loops_and_a_step_falling_back_to_itself_are_refused_at_apply() {
    let baton = baton_with(&[]).await;
    let mutual = "name: mutual\nsteps:\n  - { id: a, service: s }\n  - { id: b, service: s, on_error: fallback, fallback: c }\n  - { id: c, service: s, on_error: fallback, fallback: b }\n";
    let error = baton.engine().apply(mutual).await.unwrap_err().to_string();
    assert!(error.contains("fallbacks form a loop: b -> c -> b"), "{error}");
    let own = "name: own\nsteps:\n  - { id: a, service: s, on_error: fallback, fallback: a }\n";
    let error = baton.engine().apply(own).await.unwrap_err().to_string();
    assert!(error.contains(r#"step "a" falls back to itself"#), "{error}");
}
