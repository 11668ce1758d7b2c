//! The engine over the real store and executor: 200 executions of a 5-step workflow, the
//! engine aborted mid-run (its tokio runtime dropped without a shutdown), then reopened on the
//! same redb file, or the same PostgreSQL database. Every execution completes, none is lost, and every step's effect happens
//! once per (execution, step) idempotency key; a step completed before the crash is not
//! called again.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use baton_core::{
    Event, EventKind, EventSink, ExecutionFilter, ExecutionId, ExecutionState, IdempotencyKey, PageRequest, Recorded,
    ServiceId, StepTarget, Store, SystemClock, WorkflowName,
};
use baton_executor::{Call, Executor, InProcessInvoker, RunSpec, TaskSpec};
use baton_store::testing::PgCluster;
use baton_store::{PostgresStore, RedbStore};
use baton_workflow::{Config, Engine, Outcome, RunHandle, RunRequest, Runner};
use futures_util::StreamExt;
use serde_json::{Value, json};

const WORKFLOW: &str = r#"
name: five
steps:
  - {id: s1, service: work, input: "${ .input.n }"}
  - {id: s2, service: work, depends_on: [s1], input: "${ .steps.s1.output.n }"}
  - {id: s3, service: work, depends_on: [s2], input: "${ .steps.s2.output.n }"}
  - {id: s4, service: work, depends_on: [s3], input: "${ .steps.s3.output.n }"}
  - {id: s5, service: work, depends_on: [s4], input: "${ .steps.s4.output.n }"}
output: "${ .steps.s5.output.n }"
"#;

const EXECUTIONS: usize = 200;

/// Routes the executor's events to each run's sink, dropping the sink after the run's last
/// event so the engine sees the run end.
#[derive(Default)]
struct Router {
    sinks: Mutex<HashMap<ExecutionId, Arc<dyn EventSink<Event>>>>,
}

impl Router {
    fn sink(&self, event: &Event) -> Option<Arc<dyn EventSink<Event>>> {
        let last =
            matches!(event.kind, EventKind::Completed { .. } | EventKind::Failed { .. } | EventKind::Cancelled { .. });
        let mut sinks = self.sinks.lock().unwrap();
        if last { sinks.remove(&event.execution) } else { sinks.get(&event.execution).cloned() }
    }
}

impl EventSink<Event> for Router {
    fn publish(&self, event: Event) {
        if let Some(sink) = self.sink(&event) {
            sink.publish(event);
        }
    }

    /// Completions wait for the engine's journal, as in the orchestrator's router.
    fn record(&self, event: Event) -> Recorded {
        match self.sink(&event) {
            Some(sink) => sink.record(event),
            None => Recorded::refused("the run has ended"),
        }
    }
}

/// The adapter the orchestrator will provide: `baton_executor` behind the engine's runner port.
struct ExecutorRunner {
    executor: Executor<InProcessInvoker>,
    router: Arc<Router>,
}

struct ExecutorHandle(baton_executor::RunHandle);

impl RunHandle for ExecutorHandle {
    fn pause(&self) {
        self.0.pause();
    }

    fn resume(&self) {
        self.0.resume();
    }

    fn cancel(&self, reason: &str) {
        self.0.cancel(reason);
    }

    async fn outcome(self) -> Outcome {
        match self.0.outcome().await {
            baton_executor::Outcome::Completed(output) => Outcome::Completed(output),
            baton_executor::Outcome::Failed(error) => Outcome::Failed(error),
            baton_executor::Outcome::Cancelled(reason) => Outcome::Cancelled(reason),
        }
    }
}

impl Runner for ExecutorRunner {
    type Handle = ExecutorHandle;

    fn start(&self, request: RunRequest, events: Arc<dyn EventSink<Event>>) -> Result<ExecutorHandle, String> {
        let definition = request.definition.definition();
        let mut tasks = Vec::with_capacity(definition.steps.len());
        for (step, input) in definition.steps.iter().zip(request.definition.inputs()) {
            let StepTarget::Service { id, alternatives } = &step.target else {
                return Err(format!("step {:?} has a capability query, which needs the registry", step.id.as_str()));
            };
            tasks.push(TaskSpec {
                id: step.id.clone(),
                services: std::iter::once(id.clone()).chain(alternatives.iter().cloned()).collect(),
                input: input.clone(),
                depends_on: step.depends_on.clone(),
                retry: step.retry.clone().unwrap_or_else(|| definition.defaults.retry.clone()),
                timeout: step.timeout.or(definition.defaults.timeout),
                task_timeout: step.task_timeout,
                on_error: step.on_error.clone(),
            });
        }
        let spec = RunSpec::new(request.execution, tasks, request.definition.output().clone(), definition.deadline)
            .map_err(|e| e.to_string())?;
        self.router.sinks.lock().unwrap().insert(request.execution, events);
        Ok(ExecutorHandle(self.executor.start(spec, request.input, request.completed)))
    }
}

/// What the `work` service saw: calls per idempotency key, the effects it applied (once per
/// key, as an idempotent service does) and the keys called since the restart.
#[derive(Default)]
struct Ledger {
    calls: HashMap<String, u32>,
    effects: HashSet<String>,
    after_restart: HashSet<String>,
    restarted: bool,
}

fn runner(ledger: &Arc<Mutex<Ledger>>) -> ExecutorRunner {
    let mut invoker = InProcessInvoker::default();
    let ledger = Arc::clone(ledger);
    invoker.register(ServiceId::new("work").unwrap(), move |call: Call| {
        let ledger = Arc::clone(&ledger);
        async move {
            let key = call.idempotency_key();
            {
                let mut ledger = ledger.lock().unwrap();
                *ledger.calls.entry(key.clone()).or_default() += 1;
                if ledger.restarted {
                    ledger.after_restart.insert(key.clone());
                }
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
            ledger.lock().unwrap().effects.insert(key);
            Ok(json!({"n": call.payload.as_i64().unwrap() + 1}))
        }
    });
    let router = Arc::new(Router::default());
    let executor =
        baton_executor::Config::default().build(Arc::new(invoker), Arc::clone(&router) as _, Arc::new(SystemClock));
    ExecutorRunner { executor, router }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap()
}

fn key(i: usize) -> Option<IdempotencyKey> {
    Some(IdempotencyKey::new(&format!("run-{i}")).unwrap())
}

async fn start_all<S: Store>(engine: &Engine<S, ExecutorRunner>) -> Vec<ExecutionId> {
    let name = WorkflowName::new("five").unwrap();
    let mut ids = Vec::with_capacity(EXECUTIONS);
    for i in 0..EXECUTIONS {
        ids.push(engine.start(&name, None, json!({"n": i * 10}), key(i)).await.unwrap());
    }
    ids
}

/// The steps whose success the journal holds, per execution.
async fn completed_steps<S: Store>(store: &S, ids: &[ExecutionId]) -> BTreeMap<ExecutionId, BTreeSet<String>> {
    let mut done = BTreeMap::new();
    for &id in ids {
        let journal = store.read_journal(id, 1).await.unwrap();
        let steps = journal.iter().filter_map(|e| match &e.kind {
            EventKind::TaskSucceeded { step, .. } => Some(step.to_string()),
            _ => None,
        });
        done.insert(id, steps.collect());
    }
    done
}

fn crash_mid_run<S, F, Fut>(open: &F, ledger: &Arc<Mutex<Ledger>>) -> Vec<ExecutionId>
where
    S: Store + Clone,
    F: Fn() -> Fut,
    Fut: Future<Output = S>,
{
    let rt = runtime();
    let ids = rt.block_on(async {
        let store = open().await;
        let engine = Engine::open(Config::default(), store, runner(ledger)).await.unwrap();
        engine.apply(WORKFLOW).await.unwrap();
        let ids = start_all(&engine).await;
        // Let a good part of the work happen, then pull the plug.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        while ledger.lock().unwrap().effects.len() < EXECUTIONS * 5 * 2 / 5 {
            assert!(tokio::time::Instant::now() < deadline, "no progress before the crash");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        ids
    });
    // No shutdown: the runtime's tasks (drivers, runs, calls) are dropped wherever they are.
    drop(rt);
    ids
}

#[test]
fn executions_survive_an_engine_crash_and_run_each_step_once_on_redb() {
    let dir = tempfile::tempdir().unwrap();
    survive_a_crash(&|| async { RedbStore::open(dir.path()).await.unwrap() });
}

#[test]
fn executions_survive_an_engine_crash_and_run_each_step_once_on_postgres() {
    let cluster = PgCluster::start();
    let url = runtime().block_on(cluster.create_database());
    let config = baton_store::postgres::Config::new(url);
    survive_a_crash(&|| async { PostgresStore::connect(&config).await.unwrap() });
}

/// Crashes the engine mid-run over the store `open` gives, reopens it, and checks the outcome.
fn survive_a_crash<S, F, Fut>(open: &F)
where
    S: Store + Clone,
    F: Fn() -> Fut,
    Fut: Future<Output = S>,
{
    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let ids = crash_mid_run(open, &ledger);
    assert_eq!(ids.iter().collect::<HashSet<_>>().len(), EXECUTIONS);

    let rt = runtime();
    rt.block_on(async {
        let store = open().await;
        let before = completed_steps(&store, &ids).await;
        let completed_before: usize = before.values().map(BTreeSet::len).sum();
        assert!(
            completed_before > 0 && completed_before < EXECUTIONS * 5,
            "the crash came mid-run: {completed_before}"
        );
        ledger.lock().unwrap().restarted = true;
        let engine = Engine::open(Config::default(), store.clone(), runner(&ledger)).await.unwrap();
        let recovery = engine.recovery();
        assert!(recovery.failed.is_empty(), "{:?}", recovery.failed);
        assert!(!recovery.resumed.is_empty());
        // The same keys name the same executions after the restart.
        assert_eq!(start_all(&engine).await, ids);

        for (i, &id) in ids.iter().enumerate() {
            let mut events = Box::pin(engine.watch(id, 0).await.unwrap());
            let mut journal = Vec::new();
            tokio::time::timeout(Duration::from_secs(60), async {
                while let Some(event) = events.next().await {
                    journal.push(event.unwrap());
                }
            })
            .await
            .expect("every execution ends");
            let execution = engine.get(id).await.unwrap();
            assert_eq!(execution.state, ExecutionState::Completed, "{execution:?}");
            assert_eq!(execution.output, Some(Value::from(i as i64 * 10 + 5)));
            assert!(journal.iter().enumerate().all(|(n, e)| e.sequence == n as u64 + 1), "a contiguous journal");
            let started = journal.iter().filter(|e| matches!(e.kind, EventKind::Started { .. })).count();
            assert_eq!(started, 1);
            let mut succeeded: Vec<String> = journal
                .iter()
                .filter_map(|e| match &e.kind {
                    EventKind::TaskSucceeded { step, .. } => Some(step.to_string()),
                    _ => None,
                })
                .collect();
            succeeded.sort();
            assert_eq!(succeeded, ["s1", "s2", "s3", "s4", "s5"], "each step succeeds once in the journal");
        }

        let all = engine
            .list(&ExecutionFilter::default(), &PageRequest { limit: 1000, ..PageRequest::default() })
            .await
            .unwrap();
        assert_eq!(all.executions.len(), EXECUTIONS, "none lost, none doubled");
        assert!(all.executions.iter().all(|e| e.state == ExecutionState::Completed));

        let ledger = ledger.lock().unwrap();
        let expected: HashSet<String> = ids.iter().flat_map(|id| (1..=5).map(move |s| format!("{id}/s{s}"))).collect();
        assert_eq!(ledger.effects, expected, "one effect per (execution, step) key");
        for (id, steps) in &before {
            for step in steps {
                let key = format!("{id}/{step}");
                assert!(!ledger.after_restart.contains(&key), "{key} completed before the crash but ran again");
            }
        }
        // Keys called more than once are steps in flight at the crash, re-run under the same key.
        assert!(ledger.calls.keys().all(|k| expected.contains(k)));
    });
}
