//! Inputs and outputs rendered on the configured evaluator: an evaluation that fails or goes
//! past a bound fails its step under the step's error policy, and one that never answers holds
//! up neither cancel nor the run's deadline.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use baton_core::api::BoxFuture;
use baton_core::expr::Bound;
use baton_core::fakes::{FakeClock, RecordingSink};
use baton_core::{
    ErrorPolicy, EvalError, Evaluator, Event, EventKind, ExecutionId, Expression, RetryPolicy, ServiceId, StepId,
    Template,
};
use baton_executor::{Config, Executor, Outcome, RunSpec, ScriptedInvoker, Step, TaskSpec};
use serde_json::{Value, json};

/// Evaluations that go past the CPU bound, or never answer.
#[derive(Debug, Default)]
struct Scripted {
    hang: bool,
    started: Arc<AtomicUsize>,
    dropped: Arc<AtomicUsize>,
}

/// Counts the evaluations abandoned.
struct DropCounter(Arc<AtomicUsize>);

impl Drop for DropCounter {
    fn drop(&mut self) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

impl Evaluator for Scripted {
    fn evaluate<'a>(
        &'a self,
        expressions: &'a [&'a Expression],
        _: &'a Value,
        _: &'a [Value],
    ) -> BoxFuture<'a, Result<Vec<Value>, EvalError>> {
        self.started.fetch_add(1, Ordering::SeqCst);
        if self.hang {
            let guard = DropCounter(Arc::clone(&self.dropped));
            return Box::pin(async move {
                let _guard = guard;
                std::future::pending().await
            });
        }
        let error = EvalError::limit(expressions[0].source(), Bound::CpuTime(Duration::from_secs(1)));
        Box::pin(std::future::ready(Err(error)))
    }
}

fn task(id: &str, depends_on: &[&str], input: Value, on_error: ErrorPolicy) -> TaskSpec {
    TaskSpec {
        id: StepId::new(id).unwrap(),
        services: vec![ServiceId::new("echo").unwrap()],
        input: Template::compile("input", &input).unwrap(),
        call: None,
        depends_on: depends_on.iter().map(|s| StepId::new(s).unwrap()).collect(),
        retry: RetryPolicy { max_attempts: 3, ..RetryPolicy::default() },
        timeout: None,
        task_timeout: None,
        on_error,
    }
}

fn harness(evaluator: Arc<dyn Evaluator>) -> (Executor<ScriptedInvoker>, ScriptedInvoker, RecordingSink<Event>) {
    let invoker = ScriptedInvoker::default();
    let events = RecordingSink::default();
    let config = Config { jitter_seed: Some(7), evaluator, ..Config::default() };
    let executor = config.build(Arc::new(invoker.clone()), Arc::new(events.clone()), Arc::new(FakeClock::default()));
    (executor, invoker, events)
}

fn spec(tasks: Vec<TaskSpec>, output: Value, deadline: Option<Duration>) -> RunSpec {
    RunSpec::new(ExecutionId::generate(), tasks, Template::compile("output", &output).unwrap(), deadline).unwrap()
}

/// The failures journaled: step, attempt, retryable, error.
fn failures(events: &RecordingSink<Event>) -> Vec<(String, u32, bool, String)> {
    events
        .events()
        .into_iter()
        .filter_map(|e| match e.kind {
            EventKind::TaskFailed { step, attempt, error, retryable, .. } => {
                Some((step.to_string(), attempt, retryable, error))
            }
            _ => None,
        })
        .collect()
}

const LIMIT: &str = "expression_limit: expression `.input.n + 1` used more than its CPU time limit of 1s";

#[tokio::test(start_paused = true)]
async fn an_expression_past_a_bound_fails_its_step_once_under_its_error_policy() {
    let limited = || Arc::new(Scripted::default());
    let spin = || json!({"n": "${ .input.n + 1 }"});

    // fail: the run fails, naming the step and the bound; nothing is called or retried.
    let (executor, invoker, events) = harness(limited());
    let run = spec(vec![task("a", &[], spin(), ErrorPolicy::Fail)], json!(null), None);
    let outcome = executor.start(run, json!({"n": 1}), BTreeMap::new()).outcome().await;
    assert_eq!(outcome.error(), Some(format!("step a failed: {LIMIT}")));
    assert_eq!(failures(&events), [("a".to_owned(), 0, false, LIMIT.to_owned())]);
    assert!(invoker.calls().is_empty());

    // continue: what needs the step is skipped, the rest runs and the run completes.
    let (executor, invoker, events) = harness(limited());
    invoker.script("echo", [Step::Ok(Duration::ZERO, json!("c done"))]);
    let run = spec(
        vec![
            task("a", &[], spin(), ErrorPolicy::Continue),
            task("b", &["a"], json!({}), ErrorPolicy::Fail),
            task("c", &[], json!("${ .input.n }"), ErrorPolicy::Fail),
        ],
        json!("${ .steps.c.output }"),
        None,
    );
    let outcome = executor.start(run, json!({"n": 1}), BTreeMap::new()).outcome().await;
    assert_eq!(outcome, Outcome::Completed(json!("c done")));
    let skipped = events
        .events()
        .into_iter()
        .any(|e| matches!(&e.kind, EventKind::TaskSkipped { step, .. } if step.as_str() == "b"));
    assert!(skipped, "b needs a, which failed");
    assert_eq!(invoker.calls().len(), 1);

    // fallback: the fallback step runs in its place.
    let (executor, invoker, _) = harness(limited());
    invoker.script("echo", [Step::Ok(Duration::ZERO, json!("spare"))]);
    let run = spec(
        vec![
            task("a", &[], spin(), ErrorPolicy::Fallback(StepId::new("spare").unwrap())),
            task("spare", &[], json!({}), ErrorPolicy::Fail),
        ],
        json!("${ .steps.a.output }"),
        None,
    );
    let outcome = executor.start(run, json!({"n": 1}), BTreeMap::new()).outcome().await;
    assert_eq!(outcome, Outcome::Completed(json!("spare")));
}

#[tokio::test(start_paused = true)]
async fn cancel_and_the_deadline_end_runs_whose_evaluation_never_answers() {
    let evaluator = Arc::new(Scripted { hang: true, ..Scripted::default() });
    let (executor, invoker, _) = harness(Arc::clone(&evaluator) as Arc<dyn Evaluator>);

    // An input being evaluated: cancel ends the run and abandons the evaluation.
    let run = spec(vec![task("a", &[], json!("${ .input.n + 1 }"), ErrorPolicy::Fail)], json!(null), None);
    let handle = executor.start(run, json!({"n": 1}), BTreeMap::new());
    while evaluator.started.load(Ordering::SeqCst) == 0 {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    handle.cancel("enough");
    assert_eq!(handle.outcome().await, Outcome::Cancelled("enough".to_owned()));
    assert_eq!(evaluator.dropped.load(Ordering::SeqCst), 1, "the evaluation was abandoned");

    // The output being evaluated: cancel still ends the run.
    invoker.script("echo", [Step::Ok(Duration::ZERO, json!(1)), Step::Ok(Duration::ZERO, json!(2))]);
    let output = json!("${ .steps.a.output + 1 }");
    let run = spec(vec![task("a", &[], json!({}), ErrorPolicy::Fail)], output.clone(), None);
    let handle = executor.start(run, json!({}), BTreeMap::new());
    while evaluator.started.load(Ordering::SeqCst) < 2 {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    handle.cancel("stop");
    assert_eq!(handle.outcome().await, Outcome::Cancelled("stop".to_owned()));
    assert_eq!(evaluator.dropped.load(Ordering::SeqCst), 2);

    // And the run's deadline ends it.
    let run = spec(vec![task("a", &[], json!({}), ErrorPolicy::Fail)], output, Some(Duration::from_secs(2)));
    let outcome = executor.start(run, json!({}), BTreeMap::new()).outcome().await;
    assert_eq!(outcome.error().as_deref(), Some("run deadline of 2s exceeded"));
    assert_eq!(evaluator.dropped.load(Ordering::SeqCst), 3);
}
