//! The workflow engine over the real store and the executor (through the orchestrator's
//! `ExecutorRunner`): 200 executions of a 5-step workflow, the engine aborted mid-run (its
//! tokio runtime dropped without a shutdown), then reopened on the same redb file, or the same
//! PostgreSQL database. Every execution completes, none is lost, and every step's effect
//! happens once per (execution, step) idempotency key; a step completed before the crash is
//! not called again. (`e2e_chaos` does the same to a whole `baton serve` process.)

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use baton::{ExecutorRunner, Router};
use baton_core::{
    EventKind, ExecutionFilter, ExecutionId, ExecutionState, IdempotencyKey, PageRequest, ServiceId, Store,
    SystemClock, WorkflowName,
};
use baton_executor::{Call, InProcessInvoker};
use baton_store::testing::PgCluster;
use baton_store::{PostgresStore, RedbStore};
use baton_workflow::{Config, Engine};
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

/// What the `work` service saw: calls per idempotency key, the effects it applied (once per
/// key, as an idempotent service does) and the keys called since the restart.
#[derive(Default)]
struct Ledger {
    calls: HashMap<String, u32>,
    effects: HashSet<String>,
    after_restart: HashSet<String>,
    restarted: bool,
}

type Runner = ExecutorRunner<InProcessInvoker>;

fn runner(ledger: &Arc<Mutex<Ledger>>) -> Runner {
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
    ExecutorRunner::new(executor, router)
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap()
}

fn key(i: usize) -> Option<IdempotencyKey> {
    Some(IdempotencyKey::new(&format!("run-{i}")).unwrap())
}

async fn start_all<S: Store>(engine: &Engine<S, Runner>) -> Vec<ExecutionId> {
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
