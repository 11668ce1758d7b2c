use std::time::Duration;

use baton_core::{
    EventSink, ExecutionFilter, ExecutionState, IdempotencyKey, Order, PageRequest, StoreError, TaskState, WorkflowName,
};
use baton_store::MemoryStore;
use futures_util::StreamExt;
use serde_json::json;

use super::*;
use crate::FakeRunner;
use crate::runner::RunRequest;

const CHAIN: &str = r#"
name: chain
steps:
  - {id: a, service: s, input: "${ .input.n }"}
  - {id: b, service: s, depends_on: [a], input: "${ .steps.a.output.input + 1 }"}
  - {id: c, service: s, depends_on: [b], input: "${ .steps.b.output.input + 1 }"}
output: "${ .steps.c.output.input }"
"#;

type TestEngine = Engine<MemoryStore, FakeRunner>;

async fn engine(store: &MemoryStore, runner: &FakeRunner, config: Config) -> TestEngine {
    let engine = Engine::open(config, store.clone(), runner.clone()).await.unwrap();
    engine.apply(CHAIN).await.unwrap();
    engine
}

fn chain() -> WorkflowName {
    WorkflowName::new("chain").unwrap()
}

/// Collects the events of `id` from `from` until `stop` says so or the stream ends, within a
/// deadline.
async fn events_until<S: Store>(
    engine: &Engine<S, FakeRunner>,
    id: ExecutionId,
    from: u64,
    stop: impl Fn(&[Event]) -> bool,
) -> Vec<Event> {
    let mut stream = Box::pin(engine.watch(id, from).await.unwrap());
    let mut seen = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(event) = stream.next().await {
            seen.push(event.unwrap());
            if stop(&seen) {
                break;
            }
        }
    })
    .await
    .expect("events in time");
    seen
}

async fn finish(engine: &TestEngine, id: ExecutionId) -> Execution {
    events_until(engine, id, 0, |_| false).await;
    engine.get(id).await.unwrap()
}

fn succeeded(events: &[Event]) -> usize {
    events.iter().filter(|e| matches!(e.kind, EventKind::TaskSucceeded { .. })).count()
}

fn kinds(events: &[Event]) -> Vec<&'static str> {
    events
        .iter()
        .map(|e| match e.kind {
            EventKind::Started { .. } => "started",
            EventKind::TaskScheduled { .. } => "scheduled",
            EventKind::TaskSucceeded { .. } => "succeeded",
            EventKind::TaskFailed { .. } => "failed_task",
            EventKind::TaskSkipped { .. } => "skipped",
            EventKind::Paused => "paused",
            EventKind::Resumed => "resumed",
            EventKind::Cancelled { .. } => "cancelled",
            EventKind::Completed { .. } => "completed",
            EventKind::Failed { .. } => "failed",
            EventKind::TimerStarted { .. } => "timer",
            EventKind::SignalReceived { .. } => "signal",
            EventKind::SignalConsumed { .. } => "consumed",
            EventKind::ChildStarted { .. } => "child",
        })
        .collect()
}

#[tokio::test]
async fn apply_versions_only_changed_content() {
    let store = MemoryStore::default();
    let engine = Engine::open(Config::default(), store.clone(), FakeRunner::free()).await.unwrap();
    let first = engine.apply(CHAIN).await.unwrap();
    assert_eq!((first.version, first.created), (1, true));
    let again = engine.apply(CHAIN).await.unwrap();
    assert_eq!((again.version, again.created), (1, false));
    // The same content as JSON, keys in another order, is the same version.
    let json = r#"{"steps": [{"service": "s", "id": "a", "input": "${ .input.n }"},
        {"input": "${ .steps.a.output.input + 1 }", "id": "b", "service": "s", "depends_on": ["a"]},
        {"id": "c", "service": "s", "depends_on": ["b"], "input": "${ .steps.b.output.input + 1 }"}],
        "output": "${ .steps.c.output.input }", "name": "chain"}"#;
    assert_eq!(engine.apply(json).await.unwrap(), Applied { name: chain(), version: 1, created: false });
    let changed =
        engine.apply(&CHAIN.replace("service: s, depends_on: [a]", "service: t, depends_on: [a]")).await.unwrap();
    assert_eq!((changed.version, changed.created), (2, true));
    let (version, latest) = engine.definition(&chain(), None).await.unwrap();
    assert_eq!(version, 2);
    assert!(
        matches!(latest.definition().steps[1].target(), Some(baton_core::StepTarget::Service { id, .. }) if id.as_str() == "t")
    );
    // Executions pin the version they start with.
    let pinned = engine.start(&chain(), Some(1), json!({"n": 1}), None).await.unwrap();
    assert_eq!(engine.get(pinned).await.unwrap().version, 1);
    let latest = engine.start(&chain(), None, json!({"n": 1}), None).await.unwrap();
    assert_eq!(engine.get(latest).await.unwrap().version, 2);
    let missing = engine.start(&chain(), Some(9), json!({}), None).await.unwrap_err();
    assert_eq!(missing.to_string(), r#"definition "chain" version 9 not found"#);
    // A refused definition stores nothing.
    let err = engine.apply("name: other\nsteps:\n  - {id: a, service: s, depends_on: [a]}\n").await.unwrap_err();
    assert_eq!(err.to_string(), "steps form a cycle: a -> a");
    let names: Vec<String> = engine.definitions().await.unwrap().into_iter().map(|d| d.name.to_string()).collect();
    assert_eq!(names, ["chain"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_execution_pauses_resumes_and_completes_with_legal_transitions_only() {
    let (store, runner) = (MemoryStore::default(), FakeRunner::gated());
    let engine = engine(&store, &runner, Config::default()).await;
    let id = engine.start(&chain(), None, json!({"n": 1}), None).await.unwrap();
    assert_eq!(engine.get(id).await.unwrap().state, ExecutionState::Running);
    runner.release(1);
    events_until(&engine, id, 0, |e| succeeded(e) == 1).await;
    engine.pause(id).await.unwrap();
    assert_eq!(engine.get(id).await.unwrap().state, ExecutionState::Paused);
    let err = engine.pause(id).await.unwrap_err();
    assert_eq!(
        err,
        Error::InvalidTransition { execution: id, from: ExecutionState::Paused, to: ExecutionState::Paused }
    );
    // Paused: released permits are not used.
    runner.release(2);
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(runner.dispatched().len(), 1, "a paused run dispatches nothing");
    engine.resume(id).await.unwrap();
    let err = engine.resume(id).await;
    assert!(matches!(err, Ok(()) | Err(Error::InvalidTransition { .. })), "{err:?}");
    let execution = finish(&engine, id).await;
    assert_eq!(execution.state, ExecutionState::Completed);
    assert_eq!(execution.output, Some(json!(3)));
    assert!(execution.tasks.values().all(|t| t.state == TaskState::Succeeded && t.attempts == 1), "{execution:?}");
    let journal = store.read_journal(id, 1).await.unwrap();
    assert_eq!(
        kinds(&journal),
        [
            "started",
            "scheduled",
            "succeeded",
            "paused",
            "resumed",
            "scheduled",
            "succeeded",
            "scheduled",
            "succeeded",
            "completed"
        ]
    );
    assert!(journal.iter().enumerate().all(|(i, e)| e.sequence == i as u64 + 1));
    for (call, to) in
        [("pause", ExecutionState::Paused), ("resume", ExecutionState::Running), ("cancel", ExecutionState::Cancelled)]
    {
        let result = match call {
            "pause" => engine.pause(id).await,
            "resume" => engine.resume(id).await,
            _ => engine.cancel(id, "late").await,
        };
        assert_eq!(
            result.unwrap_err(),
            Error::InvalidTransition { execution: id, from: ExecutionState::Completed, to }
        );
    }
    let unknown = ExecutionId::generate();
    assert!(matches!(engine.pause(unknown).await, Err(Error::Store(baton_core::StoreError::NotFound(_)))));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_stops_a_paused_execution() {
    let (store, runner) = (MemoryStore::default(), FakeRunner::gated());
    let engine = engine(&store, &runner, Config::default()).await;
    let id = engine.start(&chain(), None, json!({"n": 1}), None).await.unwrap();
    engine.pause(id).await.unwrap();
    engine.cancel(id, "not needed").await.unwrap();
    let execution = engine.get(id).await.unwrap();
    assert_eq!((execution.state, execution.error.as_deref()), (ExecutionState::Cancelled, Some("not needed")));
    runner.release(3);
    let journal = events_until(&engine, id, 0, |_| false).await;
    assert_eq!(kinds(&journal).last(), Some(&"cancelled"));
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(runner.dispatched().is_empty(), "a cancelled run dispatches nothing");
    assert_eq!(store.read_journal(id, 1).await.unwrap().len(), journal.len(), "nothing journaled after the end");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_starts_with_one_key_make_one_execution() {
    let (store, runner) = (MemoryStore::default(), FakeRunner::free());
    let engine = engine(&store, &runner, Config::default()).await;
    let key = IdempotencyKey::new("order-7").unwrap();
    // The same request 100 times at once, as a client retrying over a flaky network would.
    let starts: Vec<_> = (0..100)
        .map(|_| {
            let (engine, key) = (engine.clone(), key.clone());
            tokio::spawn(async move { engine.start(&chain(), None, json!({"n": 7}), Some(key)).await.unwrap() })
        })
        .collect();
    let mut ids = Vec::new();
    for start in starts {
        ids.push(start.await.unwrap());
    }
    ids.dedup();
    assert_eq!(ids.len(), 1, "{ids:?}");
    finish(&engine, ids[0]).await;
    let page = engine.list(&ExecutionFilter::default(), &PageRequest::default()).await.unwrap();
    assert_eq!(page.executions.len(), 1);
    let runs: std::collections::BTreeSet<_> = runner.dispatched().into_iter().map(|(e, _)| e).collect();
    assert_eq!(runs.len(), 1, "one run");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_reused_for_another_request_is_refused() {
    let (store, runner) = (MemoryStore::default(), FakeRunner::free());
    let engine = engine(&store, &runner, Config::default()).await;
    let key = IdempotencyKey::new("order-8").unwrap();
    let id = engine.start(&chain(), None, json!({"n": 1}), Some(key.clone())).await.unwrap();
    assert_eq!(engine.start(&chain(), None, json!({"n": 1}), Some(key.clone())).await.unwrap(), id);
    match engine.start(&chain(), None, json!({"n": 2}), Some(key.clone())).await {
        Err(Error::IdempotencyConflict { key: k, execution }) => assert_eq!((k, execution), (key, id)),
        other => panic!("wanted an idempotency conflict, got {other:?}"),
    }
    finish(&engine, id).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listing_filters_and_pages() {
    let (store, runner) = (MemoryStore::default(), FakeRunner::free());
    let engine = engine(&store, &runner, Config::default()).await;
    let mut ids = Vec::new();
    for n in 0..5 {
        let id = engine.start(&chain(), None, json!({"n": n}), None).await.unwrap();
        finish(&engine, id).await;
        ids.push(id);
    }
    let filter = ExecutionFilter { state: Some(ExecutionState::Completed), ..ExecutionFilter::default() };
    let mut page = PageRequest { limit: 2, order: Order::OldestFirst, token: None };
    let mut listed = Vec::new();
    loop {
        let got = engine.list(&filter, &page).await.unwrap();
        assert!(got.executions.len() <= 2);
        listed.extend(got.executions.iter().map(|e| e.id));
        match got.next {
            Some(token) => page.token = Some(token),
            None => break,
        }
    }
    assert_eq!(listed, ids);
    let running = ExecutionFilter { state: Some(ExecutionState::Running), ..ExecutionFilter::default() };
    assert!(engine.list(&running, &PageRequest::default()).await.unwrap().executions.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watchers_get_the_journal_then_live_events() {
    let (store, runner) = (MemoryStore::default(), FakeRunner::gated());
    let engine = engine(&store, &runner, Config::default()).await;
    let id = engine.start(&chain(), None, json!({"n": 1}), None).await.unwrap();
    runner.release(1);
    let early = events_until(&engine, id, 0, |e| succeeded(e) == 1).await;
    assert_eq!(kinds(&early), ["started", "scheduled", "succeeded"]);
    let from_zero = tokio::spawn({
        let engine = engine.clone();
        async move { events_until(&engine, id, 0, |_| false).await }
    });
    let from_three = tokio::spawn({
        let engine = engine.clone();
        async move { events_until(&engine, id, 3, |_| false).await }
    });
    runner.release(2);
    let all = from_zero.await.unwrap();
    assert_eq!(all, store.read_journal(id, 1).await.unwrap());
    assert_eq!(kinds(&all).last(), Some(&"completed"));
    assert_eq!(from_three.await.unwrap(), all[2..]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_output_fails_its_step() {
    let (store, runner) = (MemoryStore::default(), FakeRunner::free());
    runner.set_output(&StepId::new("b").unwrap(), json!("x".repeat(200)));
    let engine = engine(&store, &runner, Config { max_output_bytes: 100, ..Config::default() }).await;
    let id = engine.start(&chain(), None, json!({"n": 1}), None).await.unwrap();
    let execution = finish(&engine, id).await;
    assert_eq!(execution.state, ExecutionState::Failed);
    let error = execution.error.unwrap();
    assert_eq!(error, r#"step b failed: output of step "b" is 202 bytes, the limit is 100"#);
    assert_eq!(execution.tasks[&StepId::new("b").unwrap()].state, TaskState::Failed);
    let journal = store.read_journal(id, 1).await.unwrap();
    assert_eq!(kinds(&journal), ["started", "scheduled", "succeeded", "scheduled", "failed_task", "failed"]);
    // The refusal reached the runner before it released anything downstream of `b`.
    let dispatched: Vec<_> = runner.dispatched().into_iter().map(|(_, step)| step.to_string()).collect();
    assert_eq!(dispatched, ["a", "b"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recovery_resumes_running_keeps_paused_and_fails_corrupt() {
    let (store, stuck) = (MemoryStore::default(), FakeRunner::gated());
    let first = engine(&store, &stuck, Config::default()).await;
    let running = first.start(&chain(), None, json!({"n": 10}), None).await.unwrap();
    stuck.release(1);
    events_until(&first, running, 0, |e| succeeded(e) == 1).await;
    let paused = first.start(&chain(), None, json!({"n": 20}), None).await.unwrap();
    first.pause(paused).await.unwrap();
    let corrupt = first.start(&chain(), None, json!({"n": 30}), None).await.unwrap();
    let finished = first.start(&chain(), None, json!({"n": 40}), None).await.unwrap();
    events_until(&first, finished, 0, |e| !e.is_empty()).await;
    first.pause(corrupt).await.unwrap();
    first.resume(corrupt).await.unwrap();
    // A crash after the terminal event was journaled but before the record said so.
    store
        .append(vec![Event {
            execution: finished,
            sequence: 2,
            at: baton_core::SystemClock.now(),
            kind: EventKind::Cancelled { reason: "crash test".to_owned() },
        }])
        .await
        .unwrap();
    assert!(store.remove_event(corrupt, 2));
    // The first engine's runs stay stuck (no permits), like a crashed process's.
    let runner = FakeRunner::free();
    let second = Engine::open(Config::default(), store.clone(), runner.clone()).await.unwrap();
    let recovery = second.recovery();
    assert_eq!(recovery.resumed, [running]);
    assert_eq!(recovery.paused, [paused]);
    assert_eq!(recovery.finished, [finished]);
    assert_eq!(recovery.failed.len(), 1);
    assert_eq!(recovery.failed[0].0, corrupt);
    let execution = second.get(corrupt).await.unwrap();
    assert_eq!(execution.state, ExecutionState::Failed);
    assert!(execution.error.as_deref().unwrap().starts_with("recovery failed: corrupt journal"), "{execution:?}");
    assert_eq!(second.get(finished).await.unwrap().state, ExecutionState::Cancelled);
    let mut watch = Box::pin(second.watch(corrupt, 0).await.unwrap());
    let first_item = watch.next().await.unwrap();
    assert!(matches!(first_item, Err(Error::Store(baton_core::StoreError::Corrupt { .. }))), "{first_item:?}");
    assert!(watch.next().await.is_none());

    let execution = finish(&second, running).await;
    assert_eq!((execution.state, execution.output), (ExecutionState::Completed, Some(json!(12))));
    let steps: Vec<String> =
        runner.dispatched().iter().filter(|(e, _)| *e == running).map(|(_, s)| s.to_string()).collect();
    assert_eq!(steps, ["b", "c"], "the completed step is not run again");
    let journal = store.read_journal(running, 1).await.unwrap();
    assert_eq!(kinds(&journal).iter().filter(|k| **k == "started").count(), 1);

    assert_eq!(second.get(paused).await.unwrap().state, ExecutionState::Paused);
    assert!(!runner.dispatched().iter().any(|(e, _)| *e == paused), "paused stays paused");
    second.resume(paused).await.unwrap();
    let execution = finish(&second, paused).await;
    assert_eq!((execution.state, execution.output), (ExecutionState::Completed, Some(json!(22))));
}

/// A runner that cannot run anything.
#[derive(Debug)]
struct Refusing;

impl Runner for Refusing {
    type Handle = crate::FakeHandle;

    fn start(&self, _: RunRequest, _: Arc<dyn EventSink<Event>>) -> Result<crate::FakeHandle, String> {
        Err("no capacity".to_owned())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_runner_that_refuses_fails_the_execution() {
    let store = MemoryStore::default();
    let engine = Engine::open(Config::default(), store.clone(), Refusing).await.unwrap();
    engine.apply(CHAIN).await.unwrap();
    let id = engine.start(&chain(), None, json!({"n": 1}), None).await.unwrap();
    let mut events = Box::pin(engine.watch(id, 0).await.unwrap());
    let mut seen = Vec::new();
    while let Some(event) = tokio::time::timeout(Duration::from_secs(10), events.next()).await.unwrap() {
        seen.push(event.unwrap());
    }
    assert_eq!(kinds(&seen), ["started", "failed"]);
    let execution = engine.get(id).await.unwrap();
    assert_eq!(execution.state, ExecutionState::Failed);
    assert_eq!(execution.error, Some(format!("runner cannot start execution {id}: no capacity")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_answers_with_the_finished_execution_before_and_after_the_end() {
    let (store, runner) = (MemoryStore::default(), FakeRunner::gated());
    let engine = engine(&store, &runner, Config::default()).await;
    let id = engine.start(&chain(), None, json!({"n": 1}), None).await.unwrap();
    let waiting = tokio::spawn({
        let engine = engine.clone();
        async move { engine.wait(id).await }
    });
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert!(!waiting.is_finished(), "the execution has not finished yet");
    runner.release(10);
    let finished = tokio::time::timeout(Duration::from_secs(10), waiting).await.unwrap().unwrap().unwrap();
    assert_eq!(finished.state, ExecutionState::Completed);
    // After the end the record answers.
    assert_eq!(engine.wait(id).await.unwrap().state, ExecutionState::Completed);
    let unknown = engine.wait(ExecutionId::generate()).await.unwrap_err();
    assert!(matches!(unknown, Error::Store(_)), "{unknown:?}");
}

/// Counts what it is shown, by workflow.
#[derive(Debug, Default)]
struct Counting(std::sync::Mutex<Vec<(String, u64)>>);

impl crate::Observer for Counting {
    fn journaled(&self, execution: &baton_core::Execution, events: &[Event]) {
        let mut seen = self.0.lock().unwrap();
        seen.extend(events.iter().map(|e| (execution.workflow.to_string(), e.sequence)));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_observer_sees_every_journaled_event_in_order() {
    let (store, runner) = (MemoryStore::default(), FakeRunner::free());
    let observer = Arc::new(Counting::default());
    let config = Config { observer: Arc::clone(&observer) as Arc<dyn crate::Observer>, ..Config::default() };
    let engine = engine(&store, &runner, config).await;
    let id = engine.start(&chain(), None, json!({"n": 1}), None).await.unwrap();
    engine.wait(id).await.unwrap();
    let journal = store.read_journal(id, 1).await.unwrap();
    let seen = observer.0.lock().unwrap().clone();
    let expected: Vec<(String, u64)> = journal.iter().map(|e| ("chain".to_owned(), e.sequence)).collect();
    assert_eq!(seen, expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_shows_live_step_progress_between_state_changes() {
    let (store, runner) = (MemoryStore::default(), FakeRunner::gated());
    let engine = engine(&store, &runner, Config::default()).await;
    let id = engine.start(&chain(), None, json!({"n": 1}), None).await.unwrap();
    runner.release(1);
    events_until(&engine, id, 0, |e| succeeded(e) == 1).await;
    let live = engine.get(id).await.unwrap();
    assert_eq!(live.state, ExecutionState::Running);
    assert_eq!(live.tasks[&StepId::new("a").unwrap()].state, TaskState::Succeeded);
    assert_eq!(live.tasks[&StepId::new("b").unwrap()].state, TaskState::Pending);
    runner.release(10);
    let finished = engine.wait(id).await.unwrap();
    // The final record has every step.
    assert_eq!(store.get_execution(id).await.unwrap(), finished);
    assert!(finished.tasks.values().all(|t| t.state == TaskState::Succeeded));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_from_past_the_end_answers_at_once() {
    let (store, runner) = (MemoryStore::default(), FakeRunner::gated());
    let engine = engine(&store, &runner, Config::default()).await;
    let id = engine.start(&chain(), None, json!({"n": 1}), None).await.unwrap();
    assert_eq!(kinds(&events_until(&engine, id, 0, |_| true).await), ["started"]);
    // Live, with one event journaled: the next one is worth waiting for, later ones are not.
    let next = tokio::spawn({
        let engine = engine.clone();
        async move { events_until(&engine, id, 2, |_| true).await }
    });
    match engine.watch(id, 3).await.map(drop) {
        Err(Error::WatchPastEnd { execution, from_sequence: 3 }) => assert_eq!(execution, id),
        other => panic!("expected a watch past the end, got {other:?}"),
    }
    runner.release(3);
    assert_eq!(kinds(&next.await.unwrap()), ["scheduled"]);
    let last = events_until(&engine, id, 0, |_| false).await.len() as u64;
    // A watch ends with the terminal event, maybe before the driver has gone: wait for that.
    engine.wait(id).await.unwrap();
    // Ended: from the end on there is nothing to wait for, and the stream ends at once.
    for from in [last + 1, last + 2, 1_000_000] {
        let mut stream = Box::pin(engine.watch(id, from).await.unwrap());
        let end = tokio::time::timeout(Duration::from_secs(5), stream.next()).await;
        assert!(matches!(end, Ok(None)), "from {from}: {end:?}");
    }
}

/// Two steps whose outputs the run's output puts side by side.
const PAIR: &str = r#"
name: pair
steps:
  - {id: a, service: s}
  - {id: b, service: s}
output: "${ [.steps.a.output, .steps.b.output] }"
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inputs_outputs_and_reasons_are_bounded_when_written() {
    let (store, runner) = (MemoryStore::default(), FakeRunner::free());
    runner.set_output(&StepId::new("a").unwrap(), json!("a".repeat(60)));
    runner.set_output(&StepId::new("b").unwrap(), json!("b".repeat(60)));
    let config = Config { max_input_bytes: 64, max_output_bytes: 100, ..Config::default() };
    let paired = Engine::open(config, store.clone(), runner.clone()).await.unwrap();
    paired.apply(PAIR).await.unwrap();
    let pair = WorkflowName::new("pair").unwrap();

    // An input over the bound is refused, naming the field and the bound, and nothing is stored.
    let err = paired.start(&pair, None, json!({"pad": "x".repeat(100)}), None).await.unwrap_err();
    assert!(matches!(err, Error::InputTooLarge { size: 110, limit: 64 }), "{err:?}");
    assert_eq!(err.to_string(), "input_json is 110 bytes of JSON, the limit is 64");
    assert!(paired.list(&ExecutionFilter::default(), &PageRequest::default()).await.unwrap().executions.is_empty());

    // Each step's output fits, the run's output does not: the execution fails, saying why.
    let id = paired.start(&pair, None, json!({}), None).await.unwrap();
    let execution = finish(&paired, id).await;
    assert_eq!(execution.state, ExecutionState::Failed);
    assert_eq!(execution.error.as_deref(), Some("output of the run is 127 bytes of JSON, the limit is 100"));
    assert_eq!(execution.output, None);
    let journal = store.read_journal(id, 1).await.unwrap();
    assert_eq!(kinds(&journal).last(), Some(&"failed"));

    // A cancel reason over the bound is refused and changes nothing; one within it cancels.
    let (store, runner) = (MemoryStore::default(), FakeRunner::gated());
    let engine = engine(&store, &runner, Config::default()).await;
    let id = engine.start(&chain(), None, json!({"n": 1}), None).await.unwrap();
    let long = "r".repeat(baton_core::bounds::MAX_REASON_BYTES + 1);
    let err = engine.cancel(id, &long).await.unwrap_err();
    assert!(matches!(err, Error::ReasonTooLong { size: 4097, limit: 4096 }), "{err:?}");
    assert_eq!(engine.get(id).await.unwrap().state, ExecutionState::Running);
    engine.cancel(id, &long[..4096]).await.unwrap();
    assert_eq!(engine.get(id).await.unwrap().error.map(|e| e.len()), Some(4096));
}

/// A runner that refuses every run with a reason of 100,000 bytes.
#[derive(Debug)]
struct Verbose;

impl Runner for Verbose {
    type Handle = crate::FakeHandle;

    fn start(&self, _: RunRequest, _: Arc<dyn EventSink<Event>>) -> Result<crate::FakeHandle, String> {
        Err("no capacity ".repeat(8_334))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_error_over_the_bound_is_journaled_cut() {
    let store = MemoryStore::default();
    let engine = Engine::open(Config::default(), store.clone(), Verbose).await.unwrap();
    engine.apply(CHAIN).await.unwrap();
    let id = engine.start(&chain(), None, json!({"n": 1}), None).await.unwrap();
    let mut events = Box::pin(engine.watch(id, 0).await.unwrap());
    while tokio::time::timeout(Duration::from_secs(10), events.next()).await.unwrap().is_some() {}
    let execution = engine.get(id).await.unwrap();
    let error = execution.error.unwrap();
    assert!(error.len() <= baton_core::bounds::MAX_REASON_BYTES, "{}", error.len());
    assert!(error.starts_with(&format!("runner cannot start execution {id}: no capacity")), "{error}");
    let whole = format!("runner cannot start execution {id}: ").len() + "no capacity ".len() * 8_334;
    assert!(error.ends_with(&format!("(cut from {whole} bytes)")), "{error}");
    let journal = store.read_journal(id, 1).await.unwrap();
    let EventKind::Failed { error: journaled, .. } = &journal.last().unwrap().kind else { panic!("{journal:?}") };
    assert_eq!(journaled, &error);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_and_resume_in_a_loop_stop_at_the_journal_cap_and_cancel_still_works() {
    let (store, runner) = (MemoryStore::default(), FakeRunner::gated());
    let engine = engine(&store, &runner, Config { max_journal_events: 10, ..Config::default() }).await;
    let id = engine.start(&chain(), None, json!({"n": 1}), None).await.unwrap();
    let mut refused = None;
    for _ in 0..100 {
        let result = match engine.get(id).await.unwrap().state {
            ExecutionState::Paused => engine.resume(id).await,
            _ => engine.pause(id).await,
        };
        if let Err(error) = result {
            refused = Some(error);
            break;
        }
    }
    let refused = refused.expect("the cap stops the loop");
    assert!(
        matches!(&refused, Error::JournalFull { execution, cap: crate::JournalCap::Events(10) } if *execution == id)
    );
    assert_eq!(
        refused.to_string(),
        format!("the journal of execution {id} has reached its cap of 10 events; it can only be cancelled now")
    );
    assert_eq!(store.read_journal(id, 1).await.unwrap().len(), 10);
    engine.cancel(id, "enough").await.unwrap();
    let journal = store.read_journal(id, 1).await.unwrap();
    assert_eq!((journal.len(), kinds(&journal).last().copied()), (11, Some("cancelled")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_that_reaches_the_journal_cap_fails_saying_so() {
    // By events: the chain needs 8 (started, 3 x scheduled and succeeded, completed).
    let (store, runner) = (MemoryStore::default(), FakeRunner::free());
    let by_events = engine(&store, &runner, Config { max_journal_events: 5, ..Config::default() }).await;
    let id = by_events.start(&chain(), None, json!({"n": 1}), None).await.unwrap();
    let execution = finish(&by_events, id).await;
    assert_eq!(execution.state, ExecutionState::Failed);
    assert_eq!(execution.error.as_deref(), Some("the journal reached its cap of 5 events"));
    let journal = store.read_journal(id, 1).await.unwrap();
    assert!(journal.len() <= 6, "{}", journal.len());
    assert_eq!(kinds(&journal).last(), Some(&"failed"));

    // By bytes: two outputs of 3,000 bytes pass a cap of 5,000.
    let (store, runner) = (MemoryStore::default(), FakeRunner::free());
    runner.set_output(&StepId::new("a").unwrap(), json!("a".repeat(3_000)));
    runner.set_output(&StepId::new("b").unwrap(), json!("b".repeat(3_000)));
    let engine = engine(&store, &runner, Config { max_journal_bytes: 5_000, ..Config::default() }).await;
    let id = engine.start(&chain(), None, json!({"n": 1}), None).await.unwrap();
    let execution = finish(&engine, id).await;
    assert_eq!(execution.state, ExecutionState::Failed);
    assert_eq!(execution.error.as_deref(), Some("the journal reached its cap of 5000 bytes"));
    assert_eq!(execution.tasks[&StepId::new("a").unwrap()].state, TaskState::Succeeded);
    assert_ne!(execution.tasks[&StepId::new("b").unwrap()].state, TaskState::Succeeded);
}

/// A store whose disk can be made full: every write then fails with
/// [`StoreError::NoSpace`] and writes nothing.
#[derive(Debug, Clone, Default)]
struct FullDisk {
    inner: MemoryStore,
    full: Arc<std::sync::atomic::AtomicBool>,
    /// Only execution records fail to be written: the journal still has room.
    records_full: Arc<std::sync::atomic::AtomicBool>,
    /// While a test holds it, journal appends wait (a slow disk).
    appends_held: Arc<tokio::sync::Mutex<()>>,
    /// While a test holds it, record updates wait.
    records_held: Arc<tokio::sync::Mutex<()>>,
}

impl FullDisk {
    fn set_full(&self, full: bool) {
        self.full.store(full, std::sync::atomic::Ordering::SeqCst);
    }

    fn set_records_full(&self, full: bool) {
        self.records_full.store(full, std::sync::atomic::Ordering::SeqCst);
    }

    fn check(&self) -> baton_core::StoreResult<()> {
        if self.full.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(StoreError::NoSpace("writing /data/baton.redb: No space left on device".to_owned()));
        }
        Ok(())
    }
}

impl Store for FullDisk {
    async fn put_definition(
        &self,
        definition: baton_core::NewDefinition,
    ) -> baton_core::StoreResult<baton_core::PutDefinition> {
        self.check()?;
        self.inner.put_definition(definition).await
    }

    async fn get_definition(
        &self,
        name: &WorkflowName,
        version: Option<u32>,
    ) -> baton_core::StoreResult<StoredDefinition> {
        self.inner.get_definition(name, version).await
    }

    async fn list_definitions(&self) -> baton_core::StoreResult<Vec<StoredDefinition>> {
        self.inner.list_definitions().await
    }

    async fn create_execution(
        &self,
        execution: Execution,
        key: Option<IdempotencyKey>,
    ) -> baton_core::StoreResult<baton_core::CreatedExecution> {
        self.check()?;
        self.inner.create_execution(execution, key).await
    }

    async fn get_execution(&self, id: ExecutionId) -> baton_core::StoreResult<Execution> {
        self.inner.get_execution(id).await
    }

    async fn find_by_idempotency_key(&self, key: &IdempotencyKey) -> baton_core::StoreResult<Option<Execution>> {
        self.inner.find_by_idempotency_key(key).await
    }

    async fn update_execution(&self, update: ExecutionUpdate) -> baton_core::StoreResult<Execution> {
        let _held = self.records_held.lock().await;
        self.check()?;
        if self.records_full.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(StoreError::NoSpace("writing /data/baton.redb: No space left on device".to_owned()));
        }
        self.inner.update_execution(update).await
    }

    async fn list_executions(
        &self,
        filter: &ExecutionFilter,
        page: &PageRequest,
    ) -> baton_core::StoreResult<ExecutionPage> {
        self.inner.list_executions(filter, page).await
    }

    async fn remove_expired(&self, now: baton_core::Timestamp, limit: usize) -> baton_core::StoreResult<usize> {
        self.check()?;
        self.inner.remove_expired(now, limit).await
    }

    async fn unfinished_executions(&self) -> baton_core::StoreResult<Vec<ExecutionId>> {
        self.inner.unfinished_executions().await
    }

    async fn parked_due(
        &self,
        before: baton_core::Timestamp,
        limit: usize,
    ) -> baton_core::StoreResult<Vec<ExecutionId>> {
        self.inner.parked_due(before, limit).await
    }

    async fn append(&self, events: Vec<Event>) -> baton_core::StoreResult<()> {
        let _held = self.appends_held.lock().await;
        self.check()?;
        self.inner.append(events).await
    }

    async fn read_journal(&self, execution: ExecutionId, from: u64) -> baton_core::StoreResult<Vec<Event>> {
        self.inner.read_journal(execution, from).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_starts_while_its_started_is_written_and_journals_nothing_before_it() {
    let (store, runner) = (FullDisk::default(), FakeRunner::free());
    let engine = Engine::open(Config::default(), store.clone(), runner.clone()).await.unwrap();
    engine.apply(CHAIN).await.unwrap();
    let held = store.appends_held.lock().await;
    let id = engine.start(&chain(), None, json!({"n": 1}), None).await.unwrap();
    // The first step needs only the input, durable in the record: it goes out while `Started`
    // waits for the disk.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while runner.dispatched().is_empty() {
        assert!(tokio::time::Instant::now() < deadline, "the first step was not dispatched in time");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(store.read_journal(id, 1).await.unwrap().is_empty());
    assert_eq!(runner.dispatched().len(), 1, "the second step waits for the first one's result");
    drop(held);
    let execution = tokio::time::timeout(Duration::from_secs(10), engine.wait(id)).await.unwrap().unwrap();
    assert_eq!((execution.state, execution.output), (ExecutionState::Completed, Some(json!(3))));
    let journal = store.read_journal(id, 1).await.unwrap();
    assert_eq!(
        kinds(&journal),
        ["started", "scheduled", "succeeded", "scheduled", "succeeded", "scheduled", "succeeded", "completed"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watchers_hear_the_end_once_journaled_while_the_record_is_written() {
    let (store, runner) = (FullDisk::default(), FakeRunner::free());
    let engine = Engine::open(Config::default(), store.clone(), runner.clone()).await.unwrap();
    engine.apply(CHAIN).await.unwrap();
    let held = store.records_held.lock().await;
    let id = engine.start(&chain(), None, json!({"n": 1}), None).await.unwrap();
    let events = events_until(&engine, id, 0, |_| false).await;
    assert_eq!(kinds(&events).last(), Some(&"completed"));
    assert_eq!(store.get_execution(id).await.unwrap().state, ExecutionState::Running, "the record is still held");
    // A get meanwhile asks the driver, which answers once the record is written.
    let get = tokio::spawn({
        let engine = engine.clone();
        async move { engine.get(id).await }
    });
    drop(held);
    let execution = tokio::time::timeout(Duration::from_secs(10), get).await.unwrap().unwrap().unwrap();
    assert_eq!(execution.state, ExecutionState::Completed);
    assert_eq!(store.get_execution(id).await.unwrap().state, ExecutionState::Completed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_holds_runs_refuses_changes_and_everything_goes_on_once_it_has_room() {
    let (store, runner) = (FullDisk::default(), FakeRunner::gated());
    let engine = Engine::open(Config::default(), store.clone(), runner.clone()).await.unwrap();
    engine.apply(CHAIN).await.unwrap();
    let id = engine.start(&chain(), None, json!({"n": 1}), None).await.unwrap();
    runner.release(1);
    events_until(&engine, id, 0, |e| succeeded(e) == 1).await;

    store.set_full(true);
    // A pause is answered at once, saying why, and changes nothing.
    match engine.pause(id).await {
        Err(Error::Store(StoreError::NoSpace(reason))) => assert!(reason.contains("No space left"), "{reason}"),
        other => panic!("expected no space, got {other:?}"),
    }
    assert_eq!(engine.get(id).await.unwrap().state, ExecutionState::Running);
    // The run goes on but its next events wait for room: nothing more is journaled.
    runner.release(2);
    let error = engine.start(&chain(), None, json!({"n": 2}), None).await.unwrap_err();
    assert!(matches!(error, Error::Store(StoreError::NoSpace(_))), "{error:?}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(store.read_journal(id, 1).await.unwrap().len(), 3, "started, scheduled, succeeded");
    let cancel = engine.cancel(id, "no room").await.unwrap_err();
    assert!(matches!(cancel, Error::Store(StoreError::NoSpace(_))), "{cancel:?}");

    // Room again: the run journals what waited and ends; each event once, in order.
    store.set_full(false);
    let execution = tokio::time::timeout(Duration::from_secs(10), engine.wait(id)).await.unwrap().unwrap();
    assert_eq!((execution.state, execution.output), (ExecutionState::Completed, Some(json!(3))));
    let journal = store.read_journal(id, 1).await.unwrap();
    assert_eq!(
        kinds(&journal),
        ["started", "scheduled", "succeeded", "scheduled", "succeeded", "scheduled", "succeeded", "completed"]
    );
    assert_eq!(store.get_execution(id).await.unwrap().state, ExecutionState::Completed);
    engine.start(&chain(), None, json!({"n": 2}), None).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_record_of_a_run_that_ended_on_a_full_disk_is_written_once_there_is_room() {
    let (store, runner) = (FullDisk::default(), FakeRunner::gated());
    let engine = Engine::open(Config::default(), store.clone(), runner.clone()).await.unwrap();
    engine.apply(CHAIN).await.unwrap();
    let id = engine.start(&chain(), None, json!({"n": 1}), None).await.unwrap();
    runner.release(2);
    events_until(&engine, id, 0, |e| succeeded(e) == 2).await;
    // The journal takes the end; the record finds no room.
    store.set_records_full(true);
    runner.release(1);
    events_until(&engine, id, 0, |e| kinds(e).last() == Some(&"completed")).await;
    assert_eq!(store.get_execution(id).await.unwrap().state, ExecutionState::Running, "the record waits");
    // Meanwhile the execution reads as it ended, and refuses changes as an ended one does.
    assert_eq!(engine.get(id).await.unwrap().state, ExecutionState::Completed);
    assert!(matches!(engine.pause(id).await, Err(Error::InvalidTransition { .. })));
    store.set_records_full(false);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while store.get_execution(id).await.unwrap().state != ExecutionState::Completed {
        assert!(tokio::time::Instant::now() < deadline, "the record was never written");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(engine.get(id).await.unwrap().state, ExecutionState::Completed);
}

/// Whether the engine has forgotten `id` everywhere a caller looks: `get`, `list` and `watch`.
async fn removed(engine: &TestEngine, id: ExecutionId) -> bool {
    let gone = |result: Result<_>| matches!(result, Err(Error::Store(StoreError::NotFound(_))));
    let listed = engine.list(&ExecutionFilter::default(), &PageRequest::default()).await.unwrap();
    let in_list = listed.executions.iter().any(|e| e.id == id);
    let watched = engine.watch(id, 0).await.map(|_| ());
    gone(engine.get(id).await.map(|_| ())) && !in_list && gone(watched)
}

/// Polls (on paused time) until `id` is removed, within a deadline.
async fn until_removed(engine: &TestEngine, id: ExecutionId) {
    tokio::time::timeout(Duration::from_secs(60), async {
        while !removed(engine, id).await {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
    .await
    .expect("removed in time");
}

#[tokio::test(start_paused = true)]
async fn ended_executions_are_removed_a_retention_after_their_end() {
    let store = MemoryStore::default();
    let runner = FakeRunner::gated();
    let clock = baton_core::fakes::FakeClock::default();
    let hour = Duration::from_secs(3600);
    let config = Config { clock: Arc::new(clock.clone()), retention: Some(hour), ..Config::default() };
    let engine = engine(&store, &runner, config).await;
    engine.apply(&CHAIN.replace("name: chain", "name: kept\nretention: 3h")).await.unwrap();
    let kept = WorkflowName::new("kept").unwrap();
    let key = |text: &str| Some(IdempotencyKey::new(text).unwrap());
    let input = json!({"n": 1});
    // One at a time, so the gated runner's permits go to that one: `long` (the definition's
    // 3h) and `short` (the server's 1h) end at once; `late` ends 50 minutes after it started.
    let long = engine.start(&kept, None, input.clone(), key("long")).await.unwrap();
    runner.release(3);
    finish(&engine, long).await;
    let short = engine.start(&chain(), None, input.clone(), key("short")).await.unwrap();
    runner.release(3);
    finish(&engine, short).await;
    let late = engine.start(&chain(), None, input.clone(), key("late")).await.unwrap();
    clock.advance(Duration::from_secs(50 * 60));
    runner.release(3);
    assert_eq!(finish(&engine, late).await.state, ExecutionState::Completed);

    // Past `short`'s retention: it is gone, with its key; `late`, created as long ago but
    // ended later, and `long` are untouched.
    clock.advance(Duration::from_secs(11 * 60));
    until_removed(&engine, short).await;
    for id in [late, long] {
        assert!(!removed(&engine, id).await, "{id} is kept");
        let events = events_until(&engine, id, 0, |_| false).await;
        assert_eq!(kinds(&events).last(), Some(&"completed"));
    }
    let (again, existing) = engine.start_or_find(&chain(), None, input.clone(), key("short"), None).await.unwrap();
    assert!(!existing && again != short, "the key starts a new run");
    runner.release(3);
    finish(&engine, again).await;
    let (found, existing) = engine.start_or_find(&chain(), None, input.clone(), key("late"), None).await.unwrap();
    assert!(existing && found == late, "a kept execution's key still finds it");

    // A retention after `late` ended, it goes too; `long` keeps its 3 hours.
    clock.advance(Duration::from_secs(50 * 60));
    until_removed(&engine, late).await;
    assert!(!removed(&engine, long).await);
    clock.advance(Duration::from_secs(80 * 60));
    until_removed(&engine, long).await;
    assert!(removed(&engine, again).await, "`again` ended 2h10m ago, past the server's 1h");
}

/// Starts executions of the chain until each of `partitions` partitions has one, and returns
/// them by partition.
async fn one_per_partition(engine: &TestEngine, partitions: u32) -> BTreeMap<u32, Vec<ExecutionId>> {
    let mut by_partition: BTreeMap<u32, Vec<ExecutionId>> = BTreeMap::new();
    while by_partition.len() < partitions as usize {
        let id = engine.start(&chain(), None, json!({"n": 1}), None).await.unwrap();
        by_partition.entry(id.partition(partitions)).or_default().push(id);
    }
    by_partition
}

/// Polls `check` every few milliseconds until it holds, for at most ten seconds.
async fn until(what: &str, check: impl Fn() -> bool) {
    tokio::time::timeout(Duration::from_secs(10), async {
        while !check() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("not within 10 s: {what}"));
}

/// Polls `check` every few milliseconds until it holds, for at most ten seconds.
async fn until_async(what: &str, check: impl AsyncFn() -> bool) {
    tokio::time::timeout(Duration::from_secs(10), async {
        while !check().await {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("not within 10 s: {what}"));
}

/// Remembers the executions whose drivers stopped because this server no longer owns them.
#[derive(Debug, Default)]
struct Fences(std::sync::Mutex<HashSet<ExecutionId>>);

impl crate::Observer for Fences {
    fn journaled(&self, _: &baton_core::Execution, _: &[Event]) {}

    fn fenced(&self, execution: ExecutionId) {
        self.0.lock().unwrap().insert(execution);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_a_cluster_the_engine_runs_only_its_partitions_and_follows_their_changes() {
    use baton_core::fakes::FixedOwnership;
    let store = MemoryStore::default();
    // Another server started them, then died with every run in flight.
    let dead = engine(&store, &FakeRunner::gated(), Config::default()).await;
    let by_partition = one_per_partition(&dead, 4).await;
    // A start answers before its run journals `Started`; a server that died has written it
    // (the memory store fences nobody, so a late one would race the second server's).
    for id in by_partition.values().flatten() {
        let id = *id;
        let store = store.clone();
        until_async("Started journaled", async move || !store.read_journal(id, 1).await.unwrap().is_empty()).await;
    }
    let ownership = Arc::new(FixedOwnership::all(4, 1));
    ownership.remove(2);
    ownership.remove(3);
    let fenced = Arc::new(Fences::default());
    let config = Config {
        ownership: Some(ownership.clone() as Arc<dyn Ownership>),
        ownership_poll: Duration::from_millis(5),
        observer: Arc::clone(&fenced) as Arc<dyn crate::Observer>,
        ..Config::default()
    };
    let runner = FakeRunner::gated();
    let second = engine(&store, &runner, config).await;
    let recovered = second.recovery().resumed;
    let expected: Vec<ExecutionId> = by_partition.range(0..2).flat_map(|(_, ids)| ids.clone()).collect();
    assert_eq!(recovered.iter().copied().collect::<HashSet<_>>(), expected.iter().copied().collect::<HashSet<_>>());
    // Partition 0 goes to another server while its runs wait for their first step.
    ownership.remove(0);
    // Stopped: their drivers have let go of the runs, not only left the live map.
    until("partition 0's runs stopped", || {
        let live = lock(&second.inner.live);
        let fenced = fenced.0.lock().unwrap();
        by_partition[&0].iter().all(|id| !live.contains_key(id) && fenced.contains(id))
    })
    .await;
    runner.release(10_000);
    for id in &by_partition[&1] {
        assert_eq!(finish(&second, *id).await.state, ExecutionState::Completed);
    }
    for id in &by_partition[&0] {
        // Stopped, not failed: it runs on at its new owner.
        assert_eq!(kinds(&store.read_journal(*id, 1).await.unwrap()), ["started"]);
        assert_eq!(store.get_execution(*id).await.unwrap().state, ExecutionState::Running);
    }
    let ran: HashSet<ExecutionId> = runner.dispatched().into_iter().map(|(id, _)| id).collect();
    for partition in [0, 2, 3] {
        assert!(by_partition[&partition].iter().all(|id| !ran.contains(id)), "partition {partition} ran here");
    }
    // Partition 2 is gained (a dead server's), and partition 0 comes back under a new epoch.
    ownership.set(2, 1);
    ownership.set(0, 2);
    for id in by_partition[&2].iter().chain(&by_partition[&0]) {
        until("gained execution recovered", || {
            lock(&second.inner.live).contains_key(id) || { runner.dispatched().iter().any(|(e, _)| e == id) }
        })
        .await;
        assert_eq!(finish(&second, *id).await.state, ExecutionState::Completed);
        let journal = store.read_journal(*id, 1).await.unwrap();
        assert_eq!(kinds(&journal).iter().filter(|k| **k == "started").count(), 1, "{:?}", kinds(&journal));
    }
    for id in &by_partition[&3] {
        assert_eq!(store.get_execution(*id).await.unwrap().state, ExecutionState::Running, "partition 3 is not ours");
    }
    // A start here gets an id of a partition this server owns, so this server runs it.
    for _ in 0..20 {
        let id = second.start(&chain(), None, json!({"n": 1}), None).await.unwrap();
        assert_ne!(id.partition(4), 3, "partition 3 is not ours");
        assert_eq!(finish(&second, id).await.state, ExecutionState::Completed);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watcher_that_falls_behind_reads_what_it_missed_from_the_journal() {
    let (store, runner) = (MemoryStore::default(), FakeRunner::gated());
    // One live event buffered: a watcher that is not read while the run goes on lags.
    let engine = engine(&store, &runner, Config { watch_capacity: 1, ..Config::default() }).await;
    let id = engine.start(&chain(), None, json!({"n": 1}), None).await.unwrap();
    let mut stream = Box::pin(engine.watch(id, 0).await.unwrap());
    let first = tokio::time::timeout(Duration::from_secs(10), stream.next()).await.unwrap().unwrap().unwrap();
    runner.release(3);
    let ended = tokio::time::timeout(Duration::from_secs(10), engine.wait(id)).await.unwrap().unwrap();
    assert_eq!(ended.state, ExecutionState::Completed);
    let mut seen = vec![first];
    while let Some(event) = tokio::time::timeout(Duration::from_secs(10), stream.next()).await.unwrap() {
        seen.push(event.unwrap());
    }
    assert_eq!(seen, store.read_journal(id, 1).await.unwrap());
    assert_eq!(kinds(&seen).last(), Some(&"completed"));
    // The last watcher gone, nothing is kept for the execution.
    drop(stream);
    assert!(lock(&engine.inner.watchers).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watchers_of_one_execution_hear_nothing_of_another() {
    let (store, runner) = (MemoryStore::default(), FakeRunner::free());
    let engine = engine(&store, &runner, Config::default()).await;
    let first = engine.start(&chain(), None, json!({"n": 1}), None).await.unwrap();
    let second = engine.start(&chain(), None, json!({"n": 2}), None).await.unwrap();
    let (a, b) = tokio::join!(finish(&engine, first), finish(&engine, second));
    assert_eq!((a.output, b.output), (Some(json!(3)), Some(json!(4))));
    let seen = events_until(&engine, second, 0, |_| false).await;
    assert!(seen.iter().all(|e| e.execution == second));
    assert_eq!(seen, store.read_journal(second, 1).await.unwrap());
    assert!(lock(&engine.inner.watchers).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_start_without_a_version_runs_the_latest_applied() {
    let (store, runner) = (MemoryStore::default(), FakeRunner::free());
    let engine = engine(&store, &runner, Config::default()).await;
    let first = engine.start(&chain(), None, json!({"n": 1}), None).await.unwrap();
    assert_eq!(engine.get(first).await.unwrap().version, 1);
    let changed = CHAIN.replace("output: \"${ .steps.c.output.input }\"", "output: \"${ .steps.b.output.input }\"");
    assert_eq!(engine.apply(&changed).await.unwrap().version, 2);
    let second = engine.start(&chain(), None, json!({"n": 1}), None).await.unwrap();
    let execution = finish(&engine, second).await;
    assert_eq!((execution.version, execution.output), (2, Some(json!(2))));
    // A second engine over the same store learns the latest version from it.
    let reopened = Engine::open(Config::default(), store.clone(), runner.clone()).await.unwrap();
    let third = reopened.start(&chain(), None, json!({"n": 1}), None).await.unwrap();
    assert_eq!(reopened.get(third).await.unwrap().version, 2);
}

/// In a cluster a start uses the latest version this server knows, stored only while no other
/// server has applied a newer one: then it learns that one and starts it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_a_cluster_a_start_runs_the_version_another_server_applied() {
    use baton_core::fakes::FixedOwnership;
    let store = MemoryStore::default();
    let cluster = |ownership: FixedOwnership| Config {
        ownership: Some(Arc::new(ownership) as Arc<dyn Ownership>),
        ..Config::default()
    };
    // The other server owns nothing here: it only applies.
    let owns_none = FixedOwnership::all(1, 1);
    owns_none.remove(0);
    let (runner, other_runner) = (FakeRunner::free(), FakeRunner::free());
    let here = engine(&store, &runner, cluster(FixedOwnership::all(1, 1))).await;
    let there = engine(&store, &other_runner, cluster(owns_none)).await;
    let first = here.start(&chain(), None, json!({"n": 1}), None).await.unwrap();
    assert_eq!(finish(&here, first).await.version, 1);
    let changed = CHAIN.replace("output: \"${ .steps.c.output.input }\"", "output: \"${ .steps.b.output.input }\"");
    assert_eq!(there.apply(&changed).await.unwrap().version, 2);
    let second = here.start(&chain(), None, json!({"n": 1}), None).await.unwrap();
    let execution = finish(&here, second).await;
    assert_eq!((execution.version, execution.output), (2, Some(json!(2))));
    let third = here.start(&chain(), None, json!({"n": 1}), None).await.unwrap();
    assert_eq!(here.get(third).await.unwrap().version, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_a_cluster_a_watch_and_a_get_follow_an_execution_another_server_runs_across_its_move() {
    use baton_core::fakes::FixedOwnership;
    let store = MemoryStore::default();
    let cluster = |ownership: &Arc<FixedOwnership>| Config {
        ownership: Some(ownership.clone() as Arc<dyn Ownership>),
        ownership_poll: Duration::from_millis(5),
        remote_watch_poll: Duration::from_millis(5),
        ..Config::default()
    };
    let (owns_all, owns_none) = (Arc::new(FixedOwnership::all(1, 1)), Arc::new(FixedOwnership::all(1, 1)));
    owns_none.remove(0);
    let (owner_runner, other_runner) = (FakeRunner::gated(), FakeRunner::gated());
    let owner = engine(&store, &owner_runner, cluster(&owns_all)).await;
    let other = engine(&store, &other_runner, cluster(&owns_none)).await;
    let id = owner.start(&chain(), None, json!({"n": 1}), None).await.unwrap();
    let mut stream = Box::pin(other.watch(id, 0).await.unwrap());
    owner_runner.release(1);
    let mut seen = Vec::new();
    while succeeded(&seen) < 1 {
        let event = tokio::time::timeout(Duration::from_secs(10), stream.next()).await.unwrap().unwrap();
        seen.push(event.unwrap());
    }
    // Get on the server that does not run it: the journal's progress, which the record (written
    // on state changes only) does not show yet.
    let step = StepId::new("a").unwrap();
    let here = other.get(id).await.unwrap();
    assert_eq!(here.tasks[&step].state, TaskState::Succeeded);
    assert_ne!(store.get_execution(id).await.unwrap().tasks[&step].state, TaskState::Succeeded);
    // The execution moves to the watching server, which finishes it; the watch goes on.
    owns_all.remove(0);
    owns_none.set(0, 2);
    other_runner.release(10_000);
    while let Some(event) = tokio::time::timeout(Duration::from_secs(10), stream.next()).await.unwrap() {
        seen.push(event.unwrap());
    }
    assert_eq!(seen, store.read_journal(id, 1).await.unwrap(), "contiguous, none repeated");
    assert_eq!(kinds(&seen).last(), Some(&"completed"));
    assert_eq!(other.get(id).await.unwrap().state, ExecutionState::Completed);
}
