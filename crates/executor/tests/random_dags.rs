//! Property: for random DAGs and random failure scripts, a task is dispatched only after all
//! its dependencies succeeded, no task succeeds twice, and the outcome matches a reference model.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use baton_core::fakes::{FakeClock, RecordingSink};
use baton_core::{ErrorPolicy, Event, EventKind, ExecutionId, RetryPolicy, ServiceId, StepId, Template};
use baton_executor::{Config, Failure, Outcome, RunSpec, ScriptedInvoker, Step, TaskSpec};
use proptest::prelude::*;
use serde_json::json;

#[derive(Debug, Clone, Copy)]
enum Answer {
    Ok,
    Retryable,
    Permanent,
}

#[derive(Debug, Clone)]
struct Case {
    deps: Vec<Vec<usize>>,
    scripts: Vec<Vec<(Answer, u64)>>,
    attempts: Vec<u32>,
    keep_going: Vec<bool>,
}

fn case() -> impl Strategy<Value = Case> {
    (1..10usize).prop_flat_map(|n| {
        let deps =
            (0..n).map(|i| proptest::sample::subsequence((0..i).collect::<Vec<_>>(), 0..=i.min(3))).collect::<Vec<_>>();
        let answer = prop_oneof![3 => Just(Answer::Ok), 2 => Just(Answer::Retryable), 1 => Just(Answer::Permanent)];
        let scripts = proptest::collection::vec(proptest::collection::vec((answer, 0..20u64), 0..4), n);
        (deps, scripts, proptest::collection::vec(1..4u32, n), proptest::collection::vec(any::<bool>(), n))
            .prop_map(|(deps, scripts, attempts, keep_going)| Case { deps, scripts, attempts, keep_going })
    })
}

/// The reference: whether each task succeeds when it runs, from its script alone.
fn succeeds(script: &[(Answer, u64)], attempts: u32) -> bool {
    for attempt in 0..attempts as usize {
        match script.get(attempt).map(|s| s.0) {
            None | Some(Answer::Ok) => return true,
            Some(Answer::Permanent) => return false,
            Some(Answer::Retryable) => {}
        }
    }
    false
}

/// The tasks that succeed in a completed run, or `None` when the run fails: a task runs once
/// its dependencies succeeded, and a failing task that does not keep going fails the run.
fn expected(case: &Case) -> Option<Vec<bool>> {
    let n = case.deps.len();
    let mut ok = vec![false; n];
    for i in 0..n {
        if case.deps[i].iter().all(|&d| ok[d]) {
            ok[i] = succeeds(&case.scripts[i], case.attempts[i]);
            if !ok[i] && !case.keep_going[i] {
                return None;
            }
        }
    }
    Some(ok)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn runs_respect_dependencies_and_match_the_model(case in case()) {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_time().start_paused(true).build().unwrap();
        let invoker = ScriptedInvoker::default();
        let events = RecordingSink::<Event>::default();
        let n = case.deps.len();
        let name = |i: usize| format!("t{i}");
        let tasks: Vec<TaskSpec> = (0..n)
            .map(|i| {
                invoker.script(&name(i), case.scripts[i].iter().map(|&(answer, ms)| {
                    let delay = Duration::from_millis(ms);
                    match answer {
                        Answer::Ok => Step::Ok(delay, json!(i)),
                        Answer::Retryable => Step::Fail(delay, Failure::retryable("flaky", "try again")),
                        Answer::Permanent => Step::Fail(delay, Failure::permanent("broken", "no")),
                    }
                }));
                TaskSpec {
                    id: StepId::new(&name(i)).unwrap(),
                    services: vec![ServiceId::new(&name(i)).unwrap()],
                    input: Template::compile("input", &json!({})).unwrap(),
                    call: None,
                    depends_on: case.deps[i].iter().map(|&d| StepId::new(&name(d)).unwrap()).collect(),
                    retry: RetryPolicy { max_attempts: case.attempts[i], initial_backoff: Duration::from_millis(5), ..RetryPolicy::default() },
                    timeout: None,
                    task_timeout: None,
                    on_error: if case.keep_going[i] { ErrorPolicy::Continue } else { ErrorPolicy::Fail },
                }
            })
            .collect();
        let spec = RunSpec::new(ExecutionId::generate(), tasks, Template::compile("o", &json!(null)).unwrap(), None).unwrap();
        let executor = Config { jitter_seed: Some(1), ..Config::default() }.build(
            Arc::new(invoker),
            Arc::new(events.clone()),
            Arc::new(FakeClock::default()),
        );
        let outcome = runtime.block_on(async { executor.start(spec, json!({}), BTreeMap::new()).outcome().await });
        let model = expected(&case);
        prop_assert_eq!(matches!(outcome, Outcome::Completed(_)), model.is_some(), "outcome {:?}", outcome);

        let mut succeeded: HashSet<String> = HashSet::new();
        for event in events.events() {
            match event.kind {
                EventKind::TaskScheduled { step, .. } => {
                    let i: usize = step.as_str()[1..].parse().unwrap();
                    for &d in &case.deps[i] {
                        prop_assert!(succeeded.contains(&name(d)), "{step} dispatched before t{d} succeeded");
                    }
                }
                EventKind::TaskSucceeded { step, .. } => {
                    prop_assert!(succeeded.insert(step.to_string()), "{step} succeeded twice");
                }
                _ => {}
            }
        }
        if let Some(ok) = model {
            let want: HashSet<String> = (0..n).filter(|&i| ok[i]).map(name).collect();
            prop_assert_eq!(succeeded, want);
        }
    }
}
