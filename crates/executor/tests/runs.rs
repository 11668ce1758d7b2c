//! Runs driven by a scripted invoker under tokio's paused time.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use baton_core::fakes::{FakeClock, RecordingSink};
use baton_core::{ErrorPolicy, Event, EventKind, ExecutionId, GraphError, RetryPolicy, ServiceId, StepId, Template};
use baton_executor::{Config, Executor, Failure, Outcome, RunSpec, ScriptedInvoker, SpecError, Step, TaskSpec};
use serde_json::{Value, json};
use tokio::time::Instant;

const MS: Duration = Duration::from_millis(1);

fn task(id: &str, services: &[&str], depends_on: &[&str], input: Value) -> TaskSpec {
    TaskSpec {
        id: StepId::new(id).unwrap(),
        services: services.iter().map(|s| ServiceId::new(s).unwrap()).collect(),
        input: Template::compile("input", &input).unwrap(),
        call: None,
        depends_on: depends_on.iter().map(|s| StepId::new(s).unwrap()).collect(),
        retry: RetryPolicy { max_attempts: 1, ..RetryPolicy::default() },
        timeout: None,
        task_timeout: None,
        on_error: ErrorPolicy::Fail,
    }
}

fn spec(tasks: Vec<TaskSpec>, output: Value) -> RunSpec {
    RunSpec::new(ExecutionId::generate(), tasks, Template::compile("output", &output).unwrap(), None).unwrap()
}

struct Harness {
    executor: Executor<ScriptedInvoker>,
    invoker: ScriptedInvoker,
    events: RecordingSink<Event>,
}

fn harness(config: Config) -> Harness {
    let invoker = ScriptedInvoker::default();
    let events = RecordingSink::default();
    let executor = Config { jitter_seed: Some(7), ..config }.build(
        Arc::new(invoker.clone()),
        Arc::new(events.clone()),
        Arc::new(FakeClock::default()),
    );
    Harness { executor, invoker, events }
}

fn ok(ms: u64, output: Value) -> Step {
    Step::Ok(MS * ms as u32, output)
}

fn kinds(events: &[Event]) -> Vec<String> {
    events
        .iter()
        .map(|e| match &e.kind {
            EventKind::Started { .. } => "started".to_owned(),
            EventKind::TaskScheduled { step, attempt, service } => format!("scheduled {step}#{attempt}@{service}"),
            EventKind::TaskSucceeded { step, .. } => format!("succeeded {step}"),
            EventKind::TaskFailed { step, attempt, retryable, .. } => {
                format!("failed {step}#{attempt} retryable={retryable}")
            }
            EventKind::TaskSkipped { step, .. } => format!("skipped {step}"),
            EventKind::Paused => "paused".to_owned(),
            EventKind::Resumed => "resumed".to_owned(),
            EventKind::Cancelled { .. } => "cancelled".to_owned(),
            EventKind::Completed { .. } => "completed".to_owned(),
            EventKind::Failed { .. } => "failed".to_owned(),
            EventKind::TimerStarted { step, .. } => format!("timer {step}"),
            EventKind::SignalReceived { name, .. } => format!("signal {name}"),
            EventKind::SignalConsumed { step, .. } => format!("consumed {step}"),
            EventKind::ChildStarted { step, .. } => format!("child {step}"),
        })
        .collect()
}

#[tokio::test(start_paused = true)]
async fn a_diamond_runs_by_readiness_not_by_level() {
    let h = harness(Config::default());
    // b is slow, c is quick; d needs only c, so it starts before b ends.
    h.invoker.script("a", [ok(10, json!({"n": 1}))]);
    h.invoker.script("b", [ok(100, json!("b"))]);
    h.invoker.script("c", [ok(10, json!("c"))]);
    h.invoker.script("d", [ok(10, json!("d"))]);
    h.invoker.script("e", [ok(10, json!("e"))]);
    let run = spec(
        vec![
            task("a", &["a"], &[], json!({"x": "${ .input.x }"})),
            task("b", &["b"], &["a"], json!("${ .steps.a.output.n }")),
            task("c", &["c"], &["a"], json!("${ .steps.a.output.n + 1 }")),
            task("d", &["d"], &["c"], json!({})),
            task("e", &["e"], &["b", "d"], json!({})),
        ],
        json!({"b": "${ .steps.b.output }", "d": "${ .steps.d.output }"}),
    );
    let started = Instant::now();
    let outcome = h.executor.start(run, json!({"x": 5}), BTreeMap::new()).outcome().await;
    assert_eq!(outcome, Outcome::Completed(json!({"b": "b", "d": "d"})));
    // Critical path a(10) + b(100) + e(10); a level barrier would add nothing here but d
    // finishing at 30 shows it did not wait for b.
    assert_eq!(started.elapsed(), MS * 120);
    let calls = h.invoker.calls();
    let order: Vec<&str> = calls.iter().map(|c| c.service.as_str()).collect();
    assert_eq!(order, ["a", "b", "c", "d", "e"]);
    assert_eq!(calls[0].payload, json!({"x": 5}));
    assert_eq!((calls[1].payload.clone(), calls[2].payload.clone()), (json!(1), json!(2)));
    let seq: Vec<u64> = h.events.events().iter().map(|e| e.sequence).collect();
    assert_eq!(seq, (1..=seq.len() as u64).collect::<Vec<_>>());
}

#[tokio::test(start_paused = true)]
async fn retries_back_off_with_the_same_idempotency_key() {
    let h = harness(Config::default());
    let boom = || Step::Fail(MS, Failure::retryable("http_500", "boom"));
    h.invoker.script("a", [boom(), boom(), ok(1, json!("done"))]);
    let mut t = task("a", &["a"], &[], json!({}));
    t.retry =
        RetryPolicy { max_attempts: 3, initial_backoff: MS * 100, max_backoff: MS * 150, ..RetryPolicy::default() };
    let started = Instant::now();
    let outcome =
        h.executor.start(spec(vec![t], json!("${ .steps.a.output }")), json!({}), BTreeMap::new()).outcome().await;
    assert_eq!(outcome, Outcome::Completed(json!("done")));
    let calls = h.invoker.calls();
    assert_eq!(calls.len(), 3);
    assert!(calls.iter().all(|c| c.idempotency_key() == calls[0].idempotency_key()));
    assert_eq!(calls.iter().map(|c| c.attempt).collect::<Vec<_>>(), [1, 2, 3]);
    // Three 1 ms calls plus two full-jitter backoffs of at most 100 and 150 ms.
    assert!(started.elapsed() <= MS * 253, "{:?}", started.elapsed());
    assert_eq!(
        kinds(&h.events.events()),
        [
            "started",
            "scheduled a#1@a",
            "failed a#1 retryable=true",
            "scheduled a#2@a",
            "failed a#2 retryable=true",
            "scheduled a#3@a",
            "succeeded a",
            "completed"
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn permanent_failures_are_not_retried_and_fail_the_run() {
    let h = harness(Config::default());
    h.invoker.script("a", [Step::Fail(MS, Failure::permanent("http_400", "bad request"))]);
    let mut t = task("a", &["a"], &[], json!({}));
    t.retry.max_attempts = 5;
    let outcome = h
        .executor
        .start(spec(vec![t, task("b", &["b"], &["a"], json!({}))], json!(null)), json!({}), BTreeMap::new())
        .outcome()
        .await;
    assert_eq!(outcome.error().as_deref(), Some("step a failed: http_400: bad request"));
    assert_eq!(h.invoker.calls().len(), 1);
}

#[tokio::test(start_paused = true)]
async fn failover_tries_the_alternatives_in_order() {
    let h = harness(Config::default());
    h.invoker.script("primary", [Step::Fail(MS, Failure::retryable("connect", "refused"))]);
    h.invoker.script("second", [Step::Fail(MS, Failure::permanent("http_404", "gone"))]);
    h.invoker.script("third", [ok(1, json!("third"))]);
    let mut t = task("a", &["primary", "second", "third"], &[], json!({}));
    t.retry.max_attempts = 3;
    let outcome =
        h.executor.start(spec(vec![t], json!("${ .steps.a.output }")), json!({}), BTreeMap::new()).outcome().await;
    assert_eq!(outcome, Outcome::Completed(json!("third")));
    let services: Vec<String> = h.invoker.calls().iter().map(|c| c.service.to_string()).collect();
    assert_eq!(services, ["primary", "second", "third"]);
}

#[tokio::test(start_paused = true)]
async fn each_timeout_kind_is_enforced() {
    // Per attempt: the hang times out and the retry succeeds.
    let h = harness(Config::default());
    h.invoker.script("a", [Step::Hang, ok(1, json!("late"))]);
    let mut t = task("a", &["a"], &[], json!({}));
    t.timeout = Some(MS * 50);
    t.retry = RetryPolicy { max_attempts: 2, initial_backoff: MS, ..RetryPolicy::default() };
    let outcome =
        h.executor.start(spec(vec![t], json!("${ .steps.a.output }")), json!({}), BTreeMap::new()).outcome().await;
    assert_eq!(outcome, Outcome::Completed(json!("late")));
    assert!(kinds(&h.events.events()).contains(&"failed a#1 retryable=true".to_owned()));

    // Per task: all attempts together.
    let h = harness(Config::default());
    h.invoker.script("a", [Step::Hang]);
    let mut t = task("a", &["a"], &[], json!({}));
    t.task_timeout = Some(MS * 80);
    let outcome = h.executor.start(spec(vec![t], json!(null)), json!({}), BTreeMap::new()).outcome().await;
    assert_eq!(outcome.error().as_deref(), Some("step a failed: task timed out after 80ms"));

    // Per run.
    let h = harness(Config::default());
    h.invoker.script("a", [Step::Hang]);
    let run = RunSpec::new(
        ExecutionId::generate(),
        vec![task("a", &["a"], &[], json!({}))],
        Template::compile("o", &json!(null)).unwrap(),
        Some(MS * 200),
    )
    .unwrap();
    let started = Instant::now();
    let outcome = h.executor.start(run, json!({}), BTreeMap::new()).outcome().await;
    assert_eq!(outcome.error().as_deref(), Some("run deadline of 200ms exceeded"));
    assert_eq!(started.elapsed(), MS * 200);
}

#[tokio::test(start_paused = true)]
async fn error_policies_continue_and_fall_back() {
    let h = harness(Config::default());
    h.invoker.script("flaky", [Step::Fail(MS, Failure::permanent("boom", "no"))]);
    let mut a = task("a", &["flaky"], &[], json!({}));
    a.on_error = ErrorPolicy::Continue;
    let run = spec(
        vec![
            a,
            task("b", &["b"], &["a"], json!({})),
            task("c", &["c"], &["b"], json!({})),
            task("d", &["d"], &[], json!("ok")),
        ],
        json!({"d": "${ .steps.d.output }"}),
    );
    let outcome = h.executor.start(run, json!({}), BTreeMap::new()).outcome().await;
    assert_eq!(outcome, Outcome::Completed(json!({"d": "ok"})));
    let kinds = kinds(&h.events.events());
    assert!(kinds.contains(&"skipped b".to_owned()) && kinds.contains(&"skipped c".to_owned()), "{kinds:?}");

    let h = harness(Config::default());
    h.invoker.script("flaky", [Step::Fail(MS, Failure::permanent("boom", "no"))]);
    h.invoker.script("backup", [ok(1, json!("from backup"))]);
    let mut a = task("a", &["flaky"], &[], json!({}));
    a.on_error = ErrorPolicy::Fallback(StepId::new("a-backup").unwrap());
    let run = spec(
        vec![
            a,
            task("a-backup", &["backup"], &[], json!({})),
            task("b", &["b"], &["a"], json!("${ .steps.a.output }")),
        ],
        json!("${ .steps.b.output }"),
    );
    let outcome = h.executor.start(run, json!({}), BTreeMap::new()).outcome().await;
    assert_eq!(outcome, Outcome::Completed(json!("from backup")));
}

#[tokio::test(start_paused = true)]
async fn pause_holds_dispatch_and_resume_continues() {
    let h = harness(Config::default());
    h.invoker.script("a", [ok(50, json!(1))]);
    let run = spec(vec![task("a", &["a"], &[], json!({})), task("b", &["b"], &["a"], json!({}))], json!(null));
    let handle = h.executor.start(run, json!({}), BTreeMap::new());
    tokio::time::sleep(MS * 10).await;
    handle.pause();
    tokio::time::sleep(MS * 200).await;
    // a finished while paused; b was not dispatched.
    assert_eq!(h.invoker.calls().len(), 1);
    assert!(kinds(&h.events.events()).contains(&"succeeded a".to_owned()));
    handle.resume();
    assert_eq!(handle.outcome().await, Outcome::Completed(json!(null)));
    let kinds = kinds(&h.events.events());
    let at = |k: &str| kinds.iter().position(|x| x == k).unwrap();
    assert!(at("paused") < at("succeeded a") && at("resumed") < at("scheduled b#1@b"), "{kinds:?}");
}

#[tokio::test(start_paused = true)]
async fn cancel_aborts_in_flight_calls_and_pause_holds_a_sleeping_retry() {
    let h = harness(Config::default());
    h.invoker.script("a", [Step::Hang]);
    let handle =
        h.executor.start(spec(vec![task("a", &["a"], &[], json!({}))], json!(null)), json!({}), BTreeMap::new());
    tokio::time::sleep(MS * 10).await;
    handle.cancel("operator said so");
    assert_eq!(handle.outcome().await, Outcome::Cancelled("operator said so".to_owned()));
    assert_eq!(kinds(&h.events.events()).last().unwrap(), "cancelled");

    let h = harness(Config::default());
    h.invoker.script("a", [Step::Fail(MS, Failure::retryable("x", "y"))]);
    let mut t = task("a", &["a"], &[], json!({}));
    t.retry = RetryPolicy {
        max_attempts: 2,
        initial_backoff: MS * 100,
        max_backoff: MS * 100,
        multiplier: 1.0,
        ..RetryPolicy::default()
    };
    let handle = h.executor.start(spec(vec![t], json!(null)), json!({}), BTreeMap::new());
    tokio::time::sleep(MS * 5).await;
    handle.pause();
    tokio::time::sleep(MS * 1000).await;
    assert_eq!(h.invoker.calls().len(), 1, "the retry waits for resume");
    handle.resume();
    assert_eq!(handle.outcome().await, Outcome::Completed(json!(null)));
    assert_eq!(h.invoker.calls().len(), 2);
}

#[tokio::test(start_paused = true)]
async fn limits_cap_tasks_in_flight() {
    let h = harness(Config { max_in_flight_per_run: 2, ..Config::default() });
    let tasks: Vec<TaskSpec> = (0..6)
        .map(|i| {
            let id = format!("t{i}");
            h.invoker.script(&id, [ok(100, json!(i))]);
            task(&id, &[&id], &[], json!({}))
        })
        .collect();
    let started = Instant::now();
    let outcome = h.executor.start(spec(tasks, json!(null)), json!({}), BTreeMap::new()).outcome().await;
    assert_eq!(outcome, Outcome::Completed(json!(null)));
    assert_eq!(started.elapsed(), MS * 300, "six 100 ms tasks, two at a time");
}

#[tokio::test(start_paused = true)]
async fn resumed_runs_skip_completed_tasks() {
    let h = harness(Config::default());
    let run = spec(
        vec![task("a", &["a"], &[], json!({})), task("b", &["b"], &["a"], json!("${ .steps.a.output }"))],
        json!("${ .steps.b.output }"),
    );
    let completed = BTreeMap::from([(StepId::new("a").unwrap(), json!("kept"))]);
    let outcome = h.executor.start(run, json!({}), completed).outcome().await;
    assert_eq!(outcome, Outcome::Completed(json!("kept")));
    let services: Vec<String> = h.invoker.calls().iter().map(|c| c.service.to_string()).collect();
    assert_eq!(services, ["b"]);
}

#[test]
fn bad_specs_are_refused() {
    let t = |id: &str, deps: &[&str]| task(id, &["s"], deps, json!({}));
    let out = || Template::compile("o", &json!(null)).unwrap();
    let make = |tasks| RunSpec::new(ExecutionId::generate(), tasks, out(), None).map(drop);
    let a = StepId::new("a").unwrap();
    assert_eq!(make(vec![t("a", &[]), t("a", &[])]), Err(SpecError::Graph(GraphError::DuplicateStep(a.clone()))));
    assert!(matches!(make(vec![t("a", &["ghost"])]), Err(SpecError::Graph(GraphError::UnknownDependency { .. }))));
    let cycle = vec![a.clone(), StepId::new("b").unwrap(), a];
    assert_eq!(make(vec![t("a", &["b"]), t("b", &["a"])]), Err(SpecError::Graph(GraphError::Cycle(cycle))));
    assert!(matches!(make(vec![task("a", &[], &[], json!({}))]), Err(SpecError::NoService(_))));
    let falls_back =
        |id: &str, to: &str| TaskSpec { on_error: ErrorPolicy::Fallback(StepId::new(to).unwrap()), ..t(id, &[]) };
    let b = StepId::new("b").unwrap();
    assert_eq!(make(vec![falls_back("b", "b")]), Err(SpecError::Graph(GraphError::SelfFallback(b.clone()))));
    let chain = vec![b.clone(), StepId::new("c").unwrap(), b];
    let mutual = vec![t("a", &[]), falls_back("b", "c"), falls_back("c", "b")];
    assert_eq!(make(mutual), Err(SpecError::Graph(GraphError::FallbackLoop(chain))));
}

#[tokio::test(start_paused = true)]
async fn an_open_breaker_takes_a_service_out_of_selection() {
    let h = harness(Config { breaker_threshold: 2, breaker_cool_down: Duration::from_secs(60), ..Config::default() });
    let down = || Step::Fail(MS, Failure::retryable("http_503", "down"));
    h.invoker.script("main", [down(), down()]);
    let bad = ServiceId::new("main").unwrap();
    let mut t = task("a", &["main"], &[], json!({}));
    t.retry = RetryPolicy { max_attempts: 2, initial_backoff: MS, ..RetryPolicy::default() };
    let outcome = h.executor.start(spec(vec![t], json!(null)), json!({}), BTreeMap::new()).outcome().await;
    assert!(matches!(outcome, Outcome::Failed(_)));
    assert_eq!(h.executor.breaker_state(&bad), baton_executor::BreakerState::Open);
    // The next run goes straight to the alternative: `main` is not called again.
    let outcome = h
        .executor
        .start(
            spec(vec![task("b", &["main", "spare"], &[], json!("x"))], json!("${ .steps.b.output }")),
            json!({}),
            BTreeMap::new(),
        )
        .outcome()
        .await;
    assert_eq!(outcome, Outcome::Completed(json!("x")));
    let services: Vec<String> = h.invoker.calls().iter().map(|c| c.service.to_string()).collect();
    assert_eq!(services, ["main", "main", "spare"]);
    // After the cool-down one probe goes to `main` again; its success closes the breaker.
    tokio::time::advance(Duration::from_secs(60)).await;
    let outcome = h
        .executor
        .start(spec(vec![task("c", &["main"], &[], json!(1))], json!(null)), json!({}), BTreeMap::new())
        .outcome()
        .await;
    assert_eq!(outcome, Outcome::Completed(json!(null)));
    assert_eq!(h.executor.breaker_state(&bad), baton_executor::BreakerState::Closed);
}

#[tokio::test(start_paused = true)]
async fn a_service_limit_holds_across_runs() {
    let h = harness(Config::default());
    h.executor.limit_service(&ServiceId::new("shared").unwrap(), 1);
    h.invoker.script("shared", [ok(100, json!(1)), ok(100, json!(2)), ok(100, json!(3))]);
    let started = Instant::now();
    let runs: Vec<_> = (0..3)
        .map(|i| {
            h.executor.start(
                spec(vec![task(&format!("t{i}"), &["shared"], &[], json!({}))], json!(null)),
                json!({}),
                BTreeMap::new(),
            )
        })
        .collect();
    for run in runs {
        assert_eq!(run.outcome().await, Outcome::Completed(json!(null)));
    }
    assert_eq!(started.elapsed(), MS * 300, "one call at a time");
}

#[tokio::test(start_paused = true)]
async fn runs_queued_behind_a_full_service_leave_the_global_limit_to_other_services() {
    let h = harness(Config { max_in_flight: 2, ..Config::default() });
    h.executor.limit_service(&ServiceId::new("slow").unwrap(), 1);
    h.invoker.script("slow", [ok(100, json!(1)), ok(100, json!(2))]);
    h.invoker.script("fast", [ok(10, json!(3))]);
    let started = Instant::now();
    let run = |step: &str, service: &str| {
        h.executor.start(spec(vec![task(step, &[service], &[], json!({}))], json!(null)), json!({}), BTreeMap::new())
    };
    // The second run to "slow" waits for its slot; it must not sit on the other global slot.
    let slow = [run("a", "slow"), run("b", "slow")];
    let fast = run("c", "fast");
    assert_eq!(fast.outcome().await, Outcome::Completed(json!(null)));
    assert_eq!(started.elapsed(), MS * 10, "the fast service's call went out at once");
    for run in slow {
        assert_eq!(run.outcome().await, Outcome::Completed(json!(null)));
    }
    assert_eq!(started.elapsed(), MS * 200, "one call to the slow service at a time");
}

/// The scripted invoker, declaring a capacity for each service it knows.
struct DeclaringInvoker {
    inner: ScriptedInvoker,
    capacity: usize,
}

impl baton_executor::Invoker for DeclaringInvoker {
    fn capacity(&self, _service: &ServiceId) -> Option<usize> {
        Some(self.capacity)
    }

    async fn invoke(&self, call: baton_executor::Call) -> Result<Value, Failure> {
        self.inner.invoke(call).await
    }
}

#[tokio::test(start_paused = true)]
async fn the_capacity_an_invoker_declares_limits_calls_across_runs_without_failing_them() {
    let inner = ScriptedInvoker::default();
    inner.script("shared", [ok(100, json!(1)), ok(100, json!(2)), ok(100, json!(3))]);
    let executor = Config { jitter_seed: Some(7), ..Config::default() }.build(
        Arc::new(DeclaringInvoker { inner, capacity: 2 }),
        Arc::new(RecordingSink::<Event>::default()),
        Arc::new(FakeClock::default()),
    );
    let started = Instant::now();
    let runs: Vec<_> = (0..3)
        .map(|i| {
            executor.start(
                spec(vec![task(&format!("t{i}"), &["shared"], &[], json!({}))], json!(null)),
                json!({}),
                BTreeMap::new(),
            )
        })
        .collect();
    for run in runs {
        assert_eq!(run.outcome().await, Outcome::Completed(json!(null)), "waiting for a slot fails nothing");
    }
    assert_eq!(started.elapsed(), MS * 200, "two calls at a time, the third after one of them");
}

/// A sink like a durable journal: each completion is kept after `delay`, and the completion
/// of `refuse` is refused. Records when every event arrived.
#[derive(Clone, Default)]
struct SlowJournal {
    delay: Duration,
    refuse: Option<&'static str>,
    seen: Arc<std::sync::Mutex<Vec<(Instant, Event)>>>,
}

impl baton_core::EventSink<Event> for SlowJournal {
    fn publish(&self, event: Event) {
        self.seen.lock().unwrap().push((Instant::now(), event));
    }

    fn record(&self, event: Event) -> baton_core::Recorded {
        let refused =
            matches!(&event.kind, EventKind::TaskSucceeded { step, .. } if Some(step.as_str()) == self.refuse);
        self.publish(event);
        if refused {
            return baton_core::Recorded::refused("the journal refused it");
        }
        let delay = self.delay;
        baton_core::Recorded::later(async move {
            tokio::time::sleep(delay).await;
            Ok(())
        })
    }
}

fn journaled(journal: &SlowJournal) -> Executor<ScriptedInvoker> {
    let invoker = ScriptedInvoker::default();
    invoker.script("a", [ok(10, json!("a"))]);
    invoker.script("b", [ok(10, json!("b"))]);
    Config { jitter_seed: Some(7), ..Config::default() }.build(
        Arc::new(invoker),
        Arc::new(journal.clone()),
        Arc::new(FakeClock::default()),
    )
}

#[tokio::test(start_paused = true)]
async fn a_dependant_starts_only_once_the_completion_is_kept() {
    let journal = SlowJournal { delay: MS * 50, ..SlowJournal::default() };
    let executor = journaled(&journal);
    let started = Instant::now();
    let tasks = vec![task("a", &["a"], &[], json!(null)), task("b", &["b"], &["a"], json!(null))];
    let outcome = executor.start(spec(tasks, json!(null)), json!(null), BTreeMap::new()).outcome().await;
    assert!(matches!(outcome, Outcome::Completed(_)), "{outcome:?}");
    let seen = journal.seen.lock().unwrap().clone();
    let at = |wanted: &str| {
        let (when, _) = seen.iter().find(|(_, e)| kinds(std::slice::from_ref(e))[0] == wanted).expect(wanted);
        *when - started
    };
    // a takes 10 ms and its completion 50 ms more to be kept: b cannot be scheduled earlier.
    assert_eq!(at("succeeded a"), MS * 10);
    assert_eq!(at("scheduled b#1@b"), MS * 60);
}

#[tokio::test(start_paused = true)]
async fn a_refused_completion_fails_its_step_and_releases_nothing() {
    let journal = SlowJournal { refuse: Some("a"), ..SlowJournal::default() };
    let executor = journaled(&journal);
    let tasks = vec![task("a", &["a"], &[], json!(null)), task("b", &["b"], &["a"], json!(null))];
    let outcome = executor.start(spec(tasks, json!(null)), json!(null), BTreeMap::new()).outcome().await;
    assert_eq!(outcome.error().as_deref(), Some("step a failed: the journal refused it"));
    let seen: Vec<Event> = journal.seen.lock().unwrap().iter().map(|(_, e)| e.clone()).collect();
    assert_eq!(kinds(&seen), ["started", "scheduled a#1@a", "succeeded a", "failed a#1 retryable=false", "failed"]);
}

#[tokio::test(start_paused = true)]
async fn an_input_over_the_bound_fails_its_step_before_any_call() {
    let h = harness(Config { max_input_bytes: Some(64), ..Config::default() });
    h.invoker.script("a", [ok(1, json!("x".repeat(100)))]);
    h.invoker.script("b", [ok(1, json!("never"))]);
    let mut b = task("b", &["b"], &["a"], json!({"copy": "${ .steps.a.output }"}));
    b.retry.max_attempts = 3;
    let spec = spec(vec![task("a", &["a"], &[], json!({})), b], json!(null));
    let outcome = h.executor.start(spec, json!({}), BTreeMap::new()).outcome().await;
    let expected = "input_too_large: input is 111 bytes of JSON, the limit is 64";
    assert_eq!(outcome.error(), Some(format!("step b failed: {expected}")));
    let calls: Vec<String> = h.invoker.calls().into_iter().map(|call| call.step.to_string()).collect();
    assert_eq!(calls, ["a"], "b was never called");
    let failed = h.events.events().into_iter().find_map(|e| match e.kind {
        EventKind::TaskFailed { step, attempt, error, retryable, .. } if step.as_str() == "b" => {
            Some((attempt, error, retryable))
        }
        _ => None,
    });
    assert_eq!(failed, Some((0, expected.to_owned(), false)));
}

#[tokio::test(start_paused = true)]
async fn a_run_whose_last_task_finishes_while_paused_completes_once_resumed() {
    let h = harness(Config::default());
    h.invoker.script("a", [ok(50, json!(1))]);
    let run = spec(vec![task("a", &["a"], &[], json!({}))], json!(null));
    let handle = h.executor.start(run, json!({}), BTreeMap::new());
    tokio::time::sleep(MS * 10).await;
    handle.pause();
    tokio::time::sleep(MS * 200).await;
    // Paused has no way to completed: the run waits with its last task done.
    assert_eq!(kinds(&h.events.events()), ["started", "scheduled a#1@a", "paused", "succeeded a"]);
    handle.resume();
    assert_eq!(handle.outcome().await, Outcome::Completed(json!(null)));
    assert_eq!(kinds(&h.events.events()).last().map(String::as_str), Some("completed"));
}
