//! Implementations of Baton's [`Store`] port: where definitions, executions and their
//! journals live.
//!
//! What it is for: three stores that keep the same contract (stated on the port in
//! [`baton_core::store`] and checked by one conformance suite):
//!
//! - [`MemoryStore`]: a mutex-guarded map, for tests and throwaway runs;
//! - [`RedbStore`]: the embedded default, one redb file and a write-ahead journal log under
//!   the data directory;
//! - [`PostgresStore`]: state in a PostgreSQL database, in SQL portable to CockroachDB and
//!   YugabyteDB, with a versioned schema applied on start; journals are written by one server
//!   at a time, the one that connected last, or in a cluster by the owner of each execution's
//!   partition, every write conditional on the partition's epoch.
//!
//! Both durable stores commit journal appends in groups: appends from many executions that
//! arrive together share one fsync (one log frame for redb, one frame row in one transaction
//! for PostgreSQL), and each caller is answered once it is durable. [`AnyStore`] picks one of the three at run time.
//!
//! What it is not for: deciding what to store. The workflow engine (`baton-workflow`) owns the
//! lifecycle of executions and what goes into their journals; this crate only keeps them.
//!
//! With the `test-util` feature, [`conformance`] holds the suite every store passes and
//! [`testing`] the harnesses, including [`testing::PgCluster`], a throwaway PostgreSQL cluster.
//!
//! ```
//! use baton_core::{NewDefinition, Store, Timestamp, WorkflowName};
//! use baton_store::MemoryStore;
//!
//! # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
//! let store = MemoryStore::default();
//! let definition = NewDefinition {
//!     name: WorkflowName::new("checkout").unwrap(),
//!     content_hash: "sha256:1f2e".to_owned(),
//!     body: serde_json::json!({"name": "checkout", "steps": []}),
//!     created_at: Timestamp::from_timestamp(1_800_000_000, 0).unwrap(),
//! };
//! let first = store.put_definition(definition.clone()).await.unwrap();
//! let again = store.put_definition(definition).await.unwrap();
//! assert_eq!((first.version, first.created), (1, true));
//! assert_eq!((again.version, again.created), (1, false));
//! # });
//! ```

#[cfg(any(test, feature = "test-util"))]
pub mod conformance;
pub mod memory;
pub mod postgres;
pub mod redb;
mod shared;
#[cfg(any(test, feature = "test-util"))]
pub mod testing;

use baton_core::{
    CreatedExecution, Event, Execution, ExecutionFilter, ExecutionId, ExecutionPage, ExecutionUpdate, IdempotencyKey,
    NewDefinition, PageRequest, PutDefinition, Store, StoreResult, StoredDefinition, WorkflowName,
};

pub use crate::memory::MemoryStore;
pub use crate::postgres::PostgresStore;
pub use crate::redb::{DEFAULT_CACHE_BYTES, Options as RedbOptions};
pub use crate::redb::{LogOptions, RedbStore};

/// What a durable store's group commit did so far: writes answered after a commit, and the
/// transactions they took. `writes / transactions` is the mean batch size.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CommitStats {
    /// Committed transactions.
    pub transactions: u64,
    /// Writes in them (for PostgreSQL, journal appends only).
    pub writes: u64,
    /// Time the transactions took from their first write to durable (the fsync included);
    /// `commit_time / transactions` is the mean commit latency.
    pub commit_time: std::time::Duration,
    /// Writes that failed because the storage had no room (a full disk); nothing of them was
    /// written.
    pub no_space: u64,
}

/// One of the stores, chosen at run time (e.g. from configuration).
#[derive(Debug, Clone)]
pub enum AnyStore {
    /// In memory.
    Memory(MemoryStore),
    /// A redb file.
    Redb(RedbStore),
    /// A PostgreSQL database.
    Postgres(PostgresStore),
}

// Each store's future is boxed: inline, every caller's future (an execution's driver, alive
// for as long as the execution) would be as large as the largest store's, PostgreSQL's.
macro_rules! dispatch {
    ($self:ident, $store:ident => $call:expr) => {
        match $self {
            AnyStore::Memory($store) => Box::pin($call).await,
            AnyStore::Redb($store) => Box::pin($call).await,
            AnyStore::Postgres($store) => Box::pin($call).await,
        }
    };
}

impl Store for AnyStore {
    async fn put_definition(&self, definition: NewDefinition) -> StoreResult<PutDefinition> {
        dispatch!(self, s => s.put_definition(definition))
    }

    async fn get_definition(&self, name: &WorkflowName, version: Option<u32>) -> StoreResult<StoredDefinition> {
        dispatch!(self, s => s.get_definition(name, version))
    }

    async fn list_definitions(&self) -> StoreResult<Vec<StoredDefinition>> {
        dispatch!(self, s => s.list_definitions())
    }

    async fn create_execution(
        &self,
        execution: Execution,
        idempotency_key: Option<IdempotencyKey>,
    ) -> StoreResult<CreatedExecution> {
        dispatch!(self, s => s.create_execution(execution, idempotency_key))
    }

    async fn create_latest_execution(
        &self,
        execution: Execution,
        idempotency_key: Option<IdempotencyKey>,
    ) -> StoreResult<Option<CreatedExecution>> {
        dispatch!(self, s => s.create_latest_execution(execution, idempotency_key))
    }

    async fn get_execution(&self, id: ExecutionId) -> StoreResult<Execution> {
        dispatch!(self, s => s.get_execution(id))
    }

    async fn find_by_idempotency_key(&self, key: &IdempotencyKey) -> StoreResult<Option<Execution>> {
        dispatch!(self, s => s.find_by_idempotency_key(key))
    }

    async fn update_execution(&self, update: ExecutionUpdate) -> StoreResult<Execution> {
        dispatch!(self, s => s.update_execution(update))
    }

    async fn list_executions(&self, filter: &ExecutionFilter, page: &PageRequest) -> StoreResult<ExecutionPage> {
        dispatch!(self, s => s.list_executions(filter, page))
    }

    async fn unfinished_executions(&self) -> StoreResult<Vec<ExecutionId>> {
        dispatch!(self, s => s.unfinished_executions())
    }

    async fn parked_due(&self, before: baton_core::Timestamp, limit: usize) -> StoreResult<Vec<ExecutionId>> {
        dispatch!(self, s => s.parked_due(before, limit))
    }

    async fn append(&self, events: Vec<Event>) -> StoreResult<()> {
        dispatch!(self, s => s.append(events))
    }

    async fn read_journal(&self, execution: ExecutionId, from_sequence: u64) -> StoreResult<Vec<Event>> {
        dispatch!(self, s => s.read_journal(execution, from_sequence))
    }

    async fn remove_expired(&self, now: baton_core::Timestamp, limit: usize) -> StoreResult<usize> {
        dispatch!(self, s => s.remove_expired(now, limit))
    }
}
