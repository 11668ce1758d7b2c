//! Recovery quarantines an execution it cannot resume: even when recovering it panics, that
//! execution is failed with the reason and its journal kept, and the others carry on.

use std::time::Duration;

use baton_core::{
    CreatedExecution, Event, EventKind, Execution, ExecutionFilter, ExecutionId, ExecutionPage, ExecutionState,
    ExecutionUpdate, IdempotencyKey, NewDefinition, PageRequest, PutDefinition, Store, StoreResult, StoredDefinition,
    Timestamp, WorkflowName,
};
use baton_store::MemoryStore;
use baton_workflow::{Config, Engine, FakeRunner};
use serde_json::json;

const CHAIN: &str = r#"
name: chain
steps:
  - {id: a, service: s, input: "${ .input.n }"}
  - {id: b, service: s, depends_on: [a], input: "${ .steps.a.output.input + 1 }"}
output: "${ .steps.b.output.input }"
"#;

/// A store whose journal reads panic for one execution, as a bug in reading what it holds would.
#[derive(Debug, Clone)]
struct PanicsOn {
    inner: MemoryStore,
    execution: ExecutionId,
}

impl Store for PanicsOn {
    async fn put_definition(&self, definition: NewDefinition) -> StoreResult<PutDefinition> {
        self.inner.put_definition(definition).await
    }

    async fn get_definition(&self, name: &WorkflowName, version: Option<u32>) -> StoreResult<StoredDefinition> {
        self.inner.get_definition(name, version).await
    }

    async fn list_definitions(&self) -> StoreResult<Vec<StoredDefinition>> {
        self.inner.list_definitions().await
    }

    async fn create_execution(
        &self,
        execution: Execution,
        idempotency_key: Option<IdempotencyKey>,
    ) -> StoreResult<CreatedExecution> {
        self.inner.create_execution(execution, idempotency_key).await
    }

    async fn get_execution(&self, id: ExecutionId) -> StoreResult<Execution> {
        self.inner.get_execution(id).await
    }

    async fn find_by_idempotency_key(&self, key: &IdempotencyKey) -> StoreResult<Option<Execution>> {
        self.inner.find_by_idempotency_key(key).await
    }

    async fn update_execution(&self, update: ExecutionUpdate) -> StoreResult<Execution> {
        self.inner.update_execution(update).await
    }

    async fn list_executions(&self, filter: &ExecutionFilter, page: &PageRequest) -> StoreResult<ExecutionPage> {
        self.inner.list_executions(filter, page).await
    }

    async fn unfinished_executions(&self) -> StoreResult<Vec<ExecutionId>> {
        self.inner.unfinished_executions().await
    }

    async fn parked_due(&self, before: Timestamp, limit: usize) -> StoreResult<Vec<ExecutionId>> {
        self.inner.parked_due(before, limit).await
    }

    async fn append(&self, events: Vec<Event>) -> StoreResult<()> {
        self.inner.append(events).await
    }

    async fn remove_expired(&self, now: Timestamp, limit: usize) -> StoreResult<usize> {
        self.inner.remove_expired(now, limit).await
    }

    async fn read_journal(&self, execution: ExecutionId, from_sequence: u64) -> StoreResult<Vec<Event>> {
        assert_ne!(execution, self.execution, "a journal this build cannot read");
        self.inner.read_journal(execution, from_sequence).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panic_while_recovering_one_execution_fails_it_and_the_others_recover() {
    let store = MemoryStore::default();
    // The first engine's runs never get a step done, like a process killed mid-run.
    let stuck = FakeRunner::gated();
    let first = Engine::open(Config::default(), store.clone(), stuck).await.unwrap();
    first.apply(CHAIN).await.unwrap();
    let chain = WorkflowName::new("chain").unwrap();
    let broken = first.start(&chain, None, json!({"n": 1}), None).await.unwrap();
    let healthy = first.start(&chain, None, json!({"n": 10}), None).await.unwrap();
    // Both have journaled `Started` before the "crash".
    for id in [broken, healthy] {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while store.read_journal(id, 1).await.unwrap().is_empty() {
            assert!(tokio::time::Instant::now() < deadline, "execution {id} never started");
            tokio::task::yield_now().await;
        }
    }

    let second =
        Engine::open(Config::default(), PanicsOn { inner: store.clone(), execution: broken }, FakeRunner::free())
            .await
            .expect("recovery survives a panic");
    let recovery = second.recovery();
    assert_eq!(recovery.resumed, [healthy]);
    assert_eq!(recovery.failed.len(), 1, "{recovery:?}");
    assert_eq!(recovery.failed[0].0, broken);
    let reason = recovery.failed[0].1.to_string();
    assert!(reason.starts_with("recovering it panicked: "), "{reason}");
    assert!(reason.contains("a journal this build cannot read"), "{reason}");

    let quarantined = second.get(broken).await.unwrap();
    assert_eq!(quarantined.state, ExecutionState::Failed);
    assert!(quarantined.error.unwrap().starts_with("recovery failed: recovering it panicked"));
    // Its journal is kept as it was, for whoever looks into it.
    let journal = store.read_journal(broken, 1).await.unwrap();
    assert!(matches!(journal[0].kind, EventKind::Started { .. }), "{journal:?}");

    let finished = second.wait(healthy).await.unwrap();
    assert_eq!((finished.state, finished.output), (ExecutionState::Completed, Some(json!(11))));

    // The next start finds nothing left to recover: no crash loop.
    let third = Engine::open(Config::default(), store.clone(), FakeRunner::free()).await.unwrap();
    assert_eq!(third.recovery(), baton_workflow::Recovery::default());
}
