//! [`RedbStore`]: the embedded default, one redb file under the data directory.
//!
//! Every write (journal appends, creations, updates, definitions) goes to a single writer
//! thread, which takes whatever has queued up, applies it in one write transaction and commits
//! it with [`Durability::Immediate`]: group commit. A caller's write is answered only after the
//! transaction holding it committed, so many executions appending at once share one fsync.
//! A write that breaks a rule (a sequence gap, an illegal transition) is checked before
//! anything is written and fails alone; a storage error fails the whole batch.
//!
//! Appends land in `journal_log` first, keyed by commit, so a commit of events for hundreds of
//! executions dirties a few adjacent pages instead of one copy-on-write page per execution
//! (that page traffic, not the fsync, bounded group commit). Once the log holds
//! [`FOLD_EVENTS`] events or [`FOLD_BYTES`] bytes, the next transaction moves it into
//! `journal` in key order, where every execution's events sit together for reads; it is also
//! folded when the writer starts and stops. A read merges the two. The writer keeps the last
//! sequence number of every execution in the log, so an append needs no lookup to be checked.
//! Callers encode their events before queueing, off the writer thread.
//!
//! Reads run on tokio's blocking pool in their own read transactions, never waiting for the
//! writer.
//!
//! Layout (an execution id is its UUID as a `u128`, a time is nanoseconds since the epoch as an
//! `i64`; redb compares both as numbers, so ids sort as UUIDs do):
//!
//! | table | key | value |
//! |---|---|---|
//! | `definitions` | (name, version) | JSON [`StoredDefinition`] |
//! | `executions` | id | JSON [`Execution`] |
//! | `executions_by_created` | (created, id) | - |
//! | `executions_by_workflow` | (workflow, created, id) | - |
//! | `executions_unfinished` | (created, id) | - |
//! | `idempotency_keys` | key | id |
//! | `journal` | (id, sequence) | JSON [`Event`] |
//! | `journal_log` | (commit, id, sequence) | JSON [`Event`], not yet in `journal` |
//! | `meta` | `schema_version` | 2 |

use std::collections::HashMap;
use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread::JoinHandle;

use ::redb::{
    CommitError, Database, DatabaseError, Durability, ReadTransaction, ReadableDatabase, ReadableTable,
    SetDurabilityError, StorageError, Table, TableDefinition, TableError, TransactionError, WriteTransaction,
};
use baton_core::store::timestamp_nanos;
use baton_core::{
    CreatedExecution, Event, Execution, ExecutionFilter, ExecutionId, ExecutionPage, ExecutionUpdate, IdempotencyKey,
    NewDefinition, Order, PageRequest, PutDefinition, Record, Store, StoreError, StoreResult, StoredDefinition,
    WorkflowName,
};
use tokio::sync::{mpsc, oneshot};

use crate::CommitStats;
use crate::shared::{
    Counters, Key, check_read, check_sequences, group_by_execution, key_of, key_range, paginate, to_json,
};

/// The file inside the data directory.
pub const FILE_NAME: &str = "baton.redb";
/// The layout version this build writes and reads. Version 1 had no `journal_log`; it is
/// upgraded in place, since an empty log reads as version 1 did.
const SCHEMA_VERSION: u64 = 2;
/// The most writes one transaction takes; more wait for the next one.
const MAX_BATCH: usize = 1024;
/// Fold the journal log once it holds this many events: enough that every fold moves many
/// events per execution, few enough that a read scanning the log stays cheap.
pub const FOLD_EVENTS: usize = 4096;
/// Fold the journal log once its events take this many bytes, for large step outputs.
pub const FOLD_BYTES: usize = 4 << 20;

type Bytes = &'static [u8];
const DEFINITIONS: TableDefinition<(&str, u32), Bytes> = TableDefinition::new("definitions");
const EXECUTIONS: TableDefinition<u128, Bytes> = TableDefinition::new("executions");
const BY_CREATED: TableDefinition<Key, ()> = TableDefinition::new("executions_by_created");
const BY_WORKFLOW: TableDefinition<(&str, i64, u128), ()> = TableDefinition::new("executions_by_workflow");
const UNFINISHED: TableDefinition<Key, ()> = TableDefinition::new("executions_unfinished");
const IDEMPOTENCY: TableDefinition<&str, u128> = TableDefinition::new("idempotency_keys");
const JOURNAL: TableDefinition<(u128, u64), Bytes> = TableDefinition::new("journal");
const JOURNAL_LOG: TableDefinition<(u64, u128, u64), Bytes> = TableDefinition::new("journal_log");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");

/// A store in one redb file, `baton.redb` under a data directory. Cheap to clone; the file
/// closes when the last clone is dropped.
#[derive(Debug, Clone)]
pub struct RedbStore {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    path: PathBuf,
    db: Arc<Database>,
    counters: Arc<Counters>,
    jobs: Option<mpsc::Sender<Box<dyn Job>>>,
    writer: Option<JoinHandle<()>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Closing the queue stops the writer after its last batch; waiting for it releases the
        // file, so the same directory can be opened again right away.
        drop(self.jobs.take());
        if let Some(writer) = self.writer.take() {
            let _ = writer.join();
        }
    }
}

impl RedbStore {
    /// Opens (or creates) the store in `data_dir`, creating the directory when missing.
    /// [`StoreError::Unavailable`] when the file cannot be opened, is in use, or was written by
    /// a newer build.
    pub async fn open(data_dir: &Path) -> StoreResult<Self> {
        let data_dir = data_dir.to_path_buf();
        tokio::task::spawn_blocking(move || Self::open_blocking(&data_dir))
            .await
            .map_err(|e| StoreError::unavailable(format!("opening the redb store panicked: {e}")))?
    }

    fn open_blocking(data_dir: &Path) -> StoreResult<Self> {
        let path = data_dir.join(FILE_NAME);
        let failed =
            |e: &dyn std::fmt::Display| StoreError::unavailable(format!("cannot open {}: {e}", path.display()));
        std::fs::create_dir_all(data_dir).map_err(|e| failed(&e))?;
        let db = Database::create(&path).map_err(|e| failed(&e))?;
        prepare(&db).map_err(|e| failed(&e))?;
        let db = Arc::new(db);
        let (jobs, queue) = mpsc::channel(MAX_BATCH);
        let counters = Arc::new(Counters::default());
        let writer = {
            let writer = Writer::new(Arc::clone(&db), Arc::clone(&counters));
            std::thread::Builder::new()
                .name("baton-redb-writer".to_owned())
                .spawn(move || writer.run(queue))
                .map_err(|e| failed(&e))?
        };
        Ok(Self { inner: Arc::new(Inner { path, db, counters, jobs: Some(jobs), writer: Some(writer) }) })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// What group commit did so far (every kind of write counts).
    pub fn commit_stats(&self) -> CommitStats {
        self.inner.counters.snapshot()
    }

    /// Queues `work` for the writer and waits until the transaction holding it committed.
    async fn write<T, F>(&self, work: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut Tables<'_>) -> Result<T, Fail> + Send + 'static,
    {
        let (reply, answer) = oneshot::channel();
        let job = Box::new(Pending { work: Some(work), result: None, reply });
        let jobs = self.inner.jobs.as_ref().ok_or_else(writer_gone)?;
        jobs.send(job).await.map_err(|_| writer_gone())?;
        answer.await.map_err(|_| writer_gone())?
    }

    /// Runs `work` in a read transaction on the blocking pool.
    async fn read<T, F>(&self, work: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&ReadTransaction) -> Result<T, Fail> + Send + 'static,
    {
        let db = Arc::clone(&self.inner.db);
        let task = tokio::task::spawn_blocking(move || -> Result<T, Fail> { work(&db.begin_read()?) });
        match task.await {
            Ok(result) => result.map_err(Fail::into_store_error),
            Err(e) => Err(StoreError::unavailable(format!("a redb read panicked: {e}"))),
        }
    }
}

fn writer_gone() -> StoreError {
    StoreError::unavailable("the redb writer thread has stopped")
}

/// Creates the tables and checks the layout version.
fn prepare(db: &Database) -> Result<(), Fail> {
    let mut txn = db.begin_write()?;
    txn.set_durability(Durability::Immediate)?;
    {
        Tables::open(&txn, &HashMap::new(), 0)?;
        let mut meta = txn.open_table(META)?;
        let version = meta.get("schema_version")?.map(|v| v.value());
        match version {
            None | Some(1) => {
                meta.insert("schema_version", SCHEMA_VERSION)?;
            }
            Some(SCHEMA_VERSION) => {}
            Some(other) => {
                return Err(Fail::Store(StoreError::unavailable(format!(
                    "the file has layout version {other}, this build reads version {SCHEMA_VERSION}"
                ))));
            }
        }
    }
    txn.commit()?;
    Ok(())
}

/// Why an operation on the file failed: a storage error (fails the whole batch) or a broken
/// rule (fails this operation only).
#[derive(Debug)]
enum Fail {
    Storage(::redb::Error),
    Store(StoreError),
}

impl Fail {
    fn into_store_error(self) -> StoreError {
        match self {
            Self::Storage(e) => StoreError::unavailable(format!("redb: {e}")),
            Self::Store(e) => e,
        }
    }
}

impl std::fmt::Display for Fail {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Storage(e) => e.fmt(f),
            Self::Store(e) => e.fmt(f),
        }
    }
}

impl From<StoreError> for Fail {
    fn from(e: StoreError) -> Self {
        Self::Store(e)
    }
}

macro_rules! storage_errors {
    ($($error:ty),*) => {$(
        impl From<$error> for Fail {
            fn from(e: $error) -> Self {
                Self::Storage(e.into())
            }
        }
    )*};
}
storage_errors!(
    ::redb::Error,
    StorageError,
    TableError,
    TransactionError,
    CommitError,
    SetDurabilityError,
    DatabaseError
);

/// The tables of a write transaction, and what it does to the journal log.
struct Tables<'t> {
    definitions: Table<'t, (&'static str, u32), Bytes>,
    executions: Table<'t, u128, Bytes>,
    by_created: Table<'t, Key, ()>,
    by_workflow: Table<'t, (&'static str, i64, u128), ()>,
    unfinished: Table<'t, Key, ()>,
    idempotency: Table<'t, &'static str, u128>,
    journal: Table<'t, (u128, u64), Bytes>,
    journal_log: Table<'t, (u64, u128, u64), Bytes>,
    /// The writer's last sequence numbers as of the previous commit.
    heads: &'t HashMap<u128, u64>,
    /// Last sequence numbers this transaction moved; the writer keeps them once it commits.
    staged: HashMap<u128, u64>,
    /// The first part of this transaction's log keys.
    commit: u64,
    /// Events and bytes this transaction added to the log.
    logged: (usize, usize),
}

impl<'t> Tables<'t> {
    fn open(txn: &'t WriteTransaction, heads: &'t HashMap<u128, u64>, commit: u64) -> Result<Self, Fail> {
        Ok(Self {
            definitions: txn.open_table(DEFINITIONS)?,
            executions: txn.open_table(EXECUTIONS)?,
            by_created: txn.open_table(BY_CREATED)?,
            by_workflow: txn.open_table(BY_WORKFLOW)?,
            unfinished: txn.open_table(UNFINISHED)?,
            idempotency: txn.open_table(IDEMPOTENCY)?,
            journal: txn.open_table(JOURNAL)?,
            journal_log: txn.open_table(JOURNAL_LOG)?,
            heads,
            staged: HashMap::new(),
            commit,
            logged: (0, 0),
        })
    }

    /// The last sequence number of `id`'s journal, [`StoreError::NotFound`] when there is no
    /// such execution. Known to the writer for every execution with events in the log, so only
    /// an execution not appended to since the last fold costs a lookup.
    fn head(&self, id: ExecutionId) -> Result<u64, Fail> {
        let key = id_key(id);
        if let Some(last) = self.staged.get(&key).or_else(|| self.heads.get(&key)) {
            return Ok(*last);
        }
        if self.executions.get(key)?.is_none() {
            return Err(StoreError::NotFound(Record::Execution(id)).into());
        }
        last_sequence(&self.journal, id)
    }
}

/// A write waiting in the writer's queue.
trait Job: Send + std::fmt::Debug {
    /// Applies the write inside the batch's transaction. An error is a storage error and
    /// aborts the batch; a broken rule is kept as this job's result.
    fn apply(&mut self, tables: &mut Tables<'_>) -> Result<(), ::redb::Error>;
    /// Answers the caller: with `failure` when the batch did not commit, else with the result.
    fn finish(self: Box<Self>, failure: Option<&StoreError>);
}

struct Pending<T, F> {
    work: Option<F>,
    result: Option<StoreResult<T>>,
    reply: oneshot::Sender<StoreResult<T>>,
}

impl<T, F> std::fmt::Debug for Pending<T, F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pending").field("applied", &self.result.is_some()).finish_non_exhaustive()
    }
}

impl<T, F> Job for Pending<T, F>
where
    T: Send,
    F: FnOnce(&mut Tables<'_>) -> Result<T, Fail> + Send,
{
    fn apply(&mut self, tables: &mut Tables<'_>) -> Result<(), ::redb::Error> {
        let work = self.work.take().expect("a job is applied once");
        self.result = Some(match work(tables) {
            Ok(value) => Ok(value),
            Err(Fail::Store(e)) => Err(e),
            Err(Fail::Storage(e)) => return Err(e),
        });
        Ok(())
    }

    fn finish(self: Box<Self>, failure: Option<&StoreError>) {
        let result = match (self.result, failure) {
            // A broken rule was checked before anything was written: it stands either way.
            (Some(Err(rule)), _) => Err(rule),
            (_, Some(failure)) => Err(failure.clone()),
            (Some(Ok(value)), None) => Ok(value),
            (None, None) => Err(StoreError::unavailable("the write was not applied")),
        };
        // The caller may have given up waiting; the write stands regardless.
        let _ = self.reply.send(result);
    }
}

/// The writer thread's state between transactions.
struct Writer {
    db: Arc<Database>,
    counters: Arc<Counters>,
    /// The last sequence number of every execution with events in the journal log (and of
    /// some without), as committed.
    heads: HashMap<u128, u64>,
    /// Events and bytes in the journal log.
    logged: (usize, usize),
    /// The next transaction's commit number, the first part of its log keys.
    commit: u64,
    /// Whether the next transaction folds the log first: at start, since `heads` knows nothing
    /// of a log left by the previous run, and after a failed commit, which may or may not have
    /// landed.
    must_fold: bool,
}

impl Writer {
    fn new(db: Arc<Database>, counters: Arc<Counters>) -> Self {
        Self { db, counters, heads: HashMap::new(), logged: (0, 0), commit: 0, must_fold: true }
    }

    /// One transaction per batch of whatever has queued up, then a last fold, so a closed file
    /// keeps every event in `journal`.
    fn run(mut self, mut queue: mpsc::Receiver<Box<dyn Job>>) {
        let mut batch = Vec::with_capacity(MAX_BATCH);
        while queue.blocking_recv_many(&mut batch, MAX_BATCH) > 0 {
            let began = std::time::Instant::now();
            let failure = self.commit(&mut batch, false).err().map(Fail::into_store_error);
            if failure.is_none() {
                self.counters.committed(batch.len(), began.elapsed());
            }
            for job in batch.drain(..) {
                job.finish(failure.as_ref());
            }
        }
        if self.logged.0 > 0 || self.must_fold {
            // Nobody waits for this one; a failure leaves the log to the next start.
            let _ = self.commit(&mut batch, true);
        }
    }

    fn commit(&mut self, batch: &mut [Box<dyn Job>], force_fold: bool) -> Result<(), Fail> {
        let result = self.try_commit(batch, force_fold);
        if result.is_err() {
            // The log may hold what `heads` does not know: start over from the file.
            self.must_fold = true;
        }
        result
    }

    fn try_commit(&mut self, batch: &mut [Box<dyn Job>], force_fold: bool) -> Result<(), Fail> {
        let fold = force_fold || self.must_fold || self.logged.0 >= FOLD_EVENTS || self.logged.1 >= FOLD_BYTES;
        let mut txn = self.db.begin_write()?;
        txn.set_durability(Durability::Immediate)?;
        if fold {
            fold_log(&txn)?;
        }
        let (staged, logged) = {
            let mut tables = Tables::open(&txn, &self.heads, self.commit)?;
            for job in batch.iter_mut() {
                // On error the transaction is dropped, which aborts it: nothing of the batch stays.
                job.apply(&mut tables)?;
            }
            (tables.staged, tables.logged)
        };
        txn.commit()?;
        self.commit += 1;
        if fold {
            // Folded executions read their head from `journal` again.
            self.heads.clear();
            self.logged = (0, 0);
            self.must_fold = false;
        }
        self.heads.extend(staged);
        self.logged = (self.logged.0 + logged.0, self.logged.1 + logged.1);
        Ok(())
    }
}

/// Moves every event of the journal log into `journal`, in key order so each execution's
/// pages are written once, and empties the log.
fn fold_log(txn: &WriteTransaction) -> Result<(), Fail> {
    let mut entries = Vec::new();
    {
        let log = txn.open_table(JOURNAL_LOG)?;
        for entry in log.iter()? {
            let (key, bytes) = entry?;
            let (_, id, sequence) = key.value();
            entries.push(((id, sequence), bytes.value().to_vec()));
        }
    }
    if entries.is_empty() {
        return Ok(());
    }
    entries.sort_unstable_by_key(|(key, _)| *key);
    {
        let mut journal = txn.open_table(JOURNAL)?;
        for (key, bytes) in &entries {
            journal.insert(*key, bytes.as_slice())?;
        }
    }
    // Dropping the table frees its pages wholesale; the batch's `Tables::open` creates it anew.
    txn.delete_table(JOURNAL_LOG)?;
    Ok(())
}

fn id_key(id: ExecutionId) -> u128 {
    id.as_uuid().as_u128()
}

fn id_from_key(key: u128) -> Result<ExecutionId, Fail> {
    ExecutionId::from_uuid(uuid::Uuid::from_u128(key))
        .map_err(|e| Fail::Store(StoreError::unavailable(format!("an index of the redb file holds a bad id: {e}"))))
}

fn decode_execution(id: ExecutionId, bytes: &[u8]) -> Result<Execution, Fail> {
    let execution: Execution = serde_json::from_slice(bytes)
        .map_err(|e| StoreError::corrupt(Record::Execution(id), format!("unreadable record: {e}")))?;
    if execution.id != id {
        return Err(
            StoreError::corrupt(Record::Execution(id), format!("the record is of execution {}", execution.id)).into()
        );
    }
    Ok(execution)
}

fn load_execution(executions: &impl ReadableTable<u128, Bytes>, id: ExecutionId) -> Result<Execution, Fail> {
    let bytes = executions.get(id_key(id))?.ok_or(StoreError::NotFound(Record::Execution(id)))?;
    decode_execution(id, bytes.value())
}

fn decode_definition(name: &WorkflowName, version: u32, bytes: &[u8]) -> Result<StoredDefinition, Fail> {
    serde_json::from_slice(bytes).map_err(|e| {
        Fail::Store(StoreError::corrupt(
            Record::Definition { name: name.clone(), version: Some(version) },
            format!("unreadable record: {e}"),
        ))
    })
}

fn latest_definition(
    definitions: &impl ReadableTable<(&'static str, u32), Bytes>,
    name: &WorkflowName,
) -> Result<Option<StoredDefinition>, Fail> {
    let last = definitions.range((name.as_str(), 0)..=(name.as_str(), u32::MAX))?.next_back().transpose()?;
    last.map(|(key, bytes)| decode_definition(name, key.value().1, bytes.value())).transpose()
}

fn last_sequence(journal: &impl ReadableTable<(u128, u64), Bytes>, id: ExecutionId) -> Result<u64, Fail> {
    let key = id_key(id);
    let last = journal.range((key, 0)..=(key, u64::MAX))?.next_back().transpose()?;
    Ok(last.map_or(0, |(key, _)| key.value().1))
}

fn put_definition(t: &mut Tables<'_>, definition: NewDefinition) -> Result<PutDefinition, Fail> {
    let latest = latest_definition(&t.definitions, &definition.name)?;
    if let Some(latest) = &latest
        && latest.content_hash == definition.content_hash
    {
        return Ok(PutDefinition { version: latest.version, created: false });
    }
    let version = latest.map_or(Some(1), |latest| latest.version.checked_add(1)).ok_or_else(|| {
        StoreError::Invalid { field: "version".to_owned(), reason: "the definition has run out of versions".to_owned() }
    })?;
    let stored = StoredDefinition {
        name: definition.name,
        version,
        content_hash: definition.content_hash,
        body: definition.body,
        created_at: definition.created_at,
    };
    t.definitions.insert((stored.name.as_str(), version), to_json(&stored).as_slice())?;
    Ok(PutDefinition { version, created: true })
}

fn create_execution(
    t: &mut Tables<'_>,
    execution: Execution,
    idempotency_key: Option<IdempotencyKey>,
) -> Result<CreatedExecution, Fail> {
    if let Some(key) = &idempotency_key {
        let existing = t.idempotency.get(key.as_str())?.map(|id| id.value());
        if let Some(existing) = existing {
            let execution = load_execution(&t.executions, id_from_key(existing)?)?;
            return Ok(CreatedExecution { execution, created: false });
        }
    }
    let (created, id) = key_of(execution.created_at, execution.id)?;
    if t.executions.get(id)?.is_some() {
        return Err(StoreError::AlreadyExists(execution.id).into());
    }
    t.executions.insert(id, to_json(&execution).as_slice())?;
    t.by_created.insert((created, id), ())?;
    t.by_workflow.insert((execution.workflow.as_str(), created, id), ())?;
    if !execution.state.is_terminal() {
        t.unfinished.insert((created, id), ())?;
    }
    if let Some(key) = &idempotency_key {
        t.idempotency.insert(key.as_str(), id)?;
    }
    Ok(CreatedExecution { execution, created: true })
}

fn update_execution(t: &mut Tables<'_>, update: &ExecutionUpdate) -> Result<Execution, Fail> {
    let mut execution = load_execution(&t.executions, update.id)?;
    let was_unfinished = !execution.state.is_terminal();
    update.apply(&mut execution)?;
    let key = key_of(execution.created_at, execution.id)?;
    t.executions.insert(key.1, to_json(&execution).as_slice())?;
    if was_unfinished && execution.state.is_terminal() {
        t.unfinished.remove(key)?;
    }
    Ok(execution)
}

/// The events of one append, grouped by execution and encoded by the caller.
type Encoded = Vec<(ExecutionId, Vec<(u64, Vec<u8>)>)>;

fn encode(events: Vec<Event>) -> Encoded {
    group_by_execution(events)
        .into_iter()
        .map(|(id, events)| (id, events.iter().map(|event| (event.sequence, to_json(event))).collect()))
        .collect()
}

fn append(t: &mut Tables<'_>, groups: &Encoded) -> Result<(), Fail> {
    for (execution, events) in groups {
        check_sequences(*execution, t.head(*execution)?, events.iter().map(|(sequence, _)| *sequence))?;
    }
    for (execution, events) in groups {
        let id = id_key(*execution);
        for (sequence, bytes) in events {
            t.journal_log.insert((t.commit, id, *sequence), bytes.as_slice())?;
            t.logged = (t.logged.0 + 1, t.logged.1 + bytes.len());
        }
        if let Some((last, _)) = events.last() {
            t.staged.insert(id, *last);
        }
    }
    Ok(())
}

fn list_executions(txn: &ReadTransaction, filter: &ExecutionFilter, page: &PageRequest) -> Result<ExecutionPage, Fail> {
    let Some((low, high)) = key_range(filter, page)? else { return Ok(ExecutionPage::default()) };
    let executions = txn.open_table(EXECUTIONS)?;
    let load = |key: Result<Key, StorageError>| -> StoreResult<Execution> {
        let (_, id) = key.map_err(|e| StoreError::unavailable(format!("redb: {e}")))?;
        load_execution(&executions, id_from_key(id).map_err(Fail::into_store_error)?).map_err(Fail::into_store_error)
    };
    let page = match &filter.workflow {
        None => {
            let index = txn.open_table(BY_CREATED)?;
            let keys = index.range::<Key>((low, high))?.map(|entry| entry.map(|(key, _)| key.value()));
            ordered(keys.map(load), filter, page)
        }
        Some(workflow) => {
            let name = workflow.as_str();
            let low = match low {
                Bound::Unbounded => Bound::Included((name, i64::MIN, 0)),
                bound => bound.map(|(created, id)| (name, created, id)),
            };
            let high = match high {
                Bound::Unbounded => Bound::Included((name, i64::MAX, u128::MAX)),
                bound => bound.map(|(created, id)| (name, created, id)),
            };
            let index = txn.open_table(BY_WORKFLOW)?;
            let keys = index.range::<(&str, i64, u128)>((low, high))?.map(|entry| {
                entry.map(|(key, _)| {
                    let (_, created, id) = key.value();
                    (created, id)
                })
            });
            ordered(keys.map(load), filter, page)
        }
    };
    Ok(page?)
}

/// Pages through `candidates` (ascending) in the order the request asks for.
fn ordered(
    candidates: impl DoubleEndedIterator<Item = StoreResult<Execution>>,
    filter: &ExecutionFilter,
    page: &PageRequest,
) -> StoreResult<ExecutionPage> {
    match page.order {
        Order::OldestFirst => paginate(candidates, filter, page),
        Order::NewestFirst => paginate(candidates.rev(), filter, page),
    }
}

fn read_journal(txn: &ReadTransaction, execution: ExecutionId, from: u64) -> Result<Vec<Event>, Fail> {
    if txn.open_table(EXECUTIONS)?.get(id_key(execution))?.is_none() {
        return Err(StoreError::NotFound(Record::Execution(execution)).into());
    }
    let decode = |bytes: &[u8]| serde_json::from_slice::<Event>(bytes).map_err(|e| e.to_string());
    let journal = txn.open_table(JOURNAL)?;
    let key = id_key(execution);
    let from = from.max(1);
    let mut entries = journal
        .range((key, from)..=(key, u64::MAX))?
        .map(|entry| entry.map(|(key, bytes)| (key.value().1, decode(bytes.value()))))
        .collect::<Result<Vec<_>, StorageError>>()?;
    // The events not yet folded follow those in `journal`; the log is small, so a scan is
    // cheaper than keeping a second index of it.
    let log = txn.open_table(JOURNAL_LOG)?;
    let folded = entries.len();
    for entry in log.iter()? {
        let (logged, bytes) = entry?;
        let (_, id, sequence) = logged.value();
        if id == key && sequence >= from {
            entries.push((sequence, decode(bytes.value())));
        }
    }
    // Commits keep each execution's order already; a stable sort only guards the invariant.
    entries[folded..].sort_by_key(|(sequence, _)| *sequence);
    Ok(check_read(execution, from, entries)?)
}

impl Store for RedbStore {
    async fn put_definition(&self, definition: NewDefinition) -> StoreResult<PutDefinition> {
        self.write(move |t| put_definition(t, definition)).await
    }

    async fn get_definition(&self, name: &WorkflowName, version: Option<u32>) -> StoreResult<StoredDefinition> {
        let name = name.clone();
        self.read(move |txn| {
            let definitions = txn.open_table(DEFINITIONS)?;
            let found = match version {
                None => latest_definition(&definitions, &name)?,
                Some(version) => match definitions.get((name.as_str(), version))? {
                    Some(bytes) => Some(decode_definition(&name, version, bytes.value())?),
                    None => None,
                },
            };
            found.ok_or_else(|| Fail::Store(StoreError::NotFound(Record::Definition { name, version })))
        })
        .await
    }

    async fn list_definitions(&self) -> StoreResult<Vec<StoredDefinition>> {
        self.read(|txn| {
            let definitions = txn.open_table(DEFINITIONS)?;
            let mut latest: Vec<StoredDefinition> = Vec::new();
            // Keys sort by (name, version), so the last entry of each name is its latest.
            for entry in definitions.iter()? {
                let (key, bytes) = entry?;
                let (name, version) = key.value();
                let name = WorkflowName::new(name)
                    .map_err(|e| StoreError::unavailable(format!("the redb file holds a bad definition name: {e}")))?;
                let definition = decode_definition(&name, version, bytes.value())?;
                match latest.last_mut() {
                    Some(previous) if previous.name == definition.name => *previous = definition,
                    _ => latest.push(definition),
                }
            }
            Ok(latest)
        })
        .await
    }

    async fn create_execution(
        &self,
        execution: Execution,
        idempotency_key: Option<IdempotencyKey>,
    ) -> StoreResult<CreatedExecution> {
        // Check what needs no file before queueing, so a bad timestamp costs no transaction.
        timestamp_nanos("created_at", execution.created_at)?;
        self.write(move |t| create_execution(t, execution, idempotency_key)).await
    }

    async fn get_execution(&self, id: ExecutionId) -> StoreResult<Execution> {
        self.read(move |txn| load_execution(&txn.open_table(EXECUTIONS)?, id)).await
    }

    async fn update_execution(&self, update: ExecutionUpdate) -> StoreResult<Execution> {
        self.write(move |t| update_execution(t, &update)).await
    }

    async fn list_executions(&self, filter: &ExecutionFilter, page: &PageRequest) -> StoreResult<ExecutionPage> {
        let (filter, page) = (filter.clone(), page.clone());
        self.read(move |txn| list_executions(txn, &filter, &page)).await
    }

    async fn unfinished_executions(&self) -> StoreResult<Vec<ExecutionId>> {
        self.read(|txn| {
            let unfinished = txn.open_table(UNFINISHED)?;
            unfinished.iter()?.map(|entry| id_from_key(entry?.0.value().1)).collect()
        })
        .await
    }

    async fn append(&self, events: Vec<Event>) -> StoreResult<()> {
        if events.is_empty() {
            return Ok(());
        }
        let groups = encode(events);
        self.write(move |t| append(t, &groups)).await
    }

    async fn read_journal(&self, execution: ExecutionId, from_sequence: u64) -> StoreResult<Vec<Event>> {
        self.read(move |txn| read_journal(txn, execution, from_sequence)).await
    }
}

/// Damages the journal of a closed store in `data_dir`, for tests of corruption handling:
/// removes the event (`garble: false`) or overwrites it with bytes that are not JSON.
#[cfg(any(test, feature = "test-util"))]
pub(crate) fn damage_journal(data_dir: &Path, execution: ExecutionId, sequence: u64, garble: bool) {
    let db = Database::create(data_dir.join(FILE_NAME)).expect("the store is closed");
    let txn = db.begin_write().expect("write transaction");
    {
        let mut journal = txn.open_table(JOURNAL).expect("journal table");
        let key = (id_key(execution), sequence);
        if garble {
            journal.insert(key, b"{not json".as_slice()).expect("overwrite");
        } else {
            assert!(journal.remove(key).expect("remove").is_some(), "event {sequence} of {execution} is stored");
        }
    }
    txn.commit().expect("commit");
}

#[cfg(test)]
mod tests {
    use baton_core::{EventKind, ExecutionState, StepId, Timestamp};

    use super::*;

    fn at() -> Timestamp {
        Timestamp::from_timestamp(1_800_000_000, 0).unwrap()
    }

    fn execution() -> Execution {
        Execution {
            id: ExecutionId::generate(),
            workflow: WorkflowName::new("fold").unwrap(),
            version: 1,
            state: ExecutionState::Running,
            input: serde_json::json!({}),
            output: None,
            error: None,
            tasks: Default::default(),
            created_at: at(),
            updated_at: at(),
        }
    }

    fn event(execution: ExecutionId, sequence: u64) -> Event {
        let step = StepId::new("s").unwrap();
        let output = serde_json::json!({"n": sequence});
        Event { execution, sequence, at: at(), kind: EventKind::TaskSucceeded { step, attempt: 1, output } }
    }

    fn events(execution: ExecutionId, sequences: std::ops::RangeInclusive<u64>) -> Vec<Event> {
        sequences.map(|sequence| event(execution, sequence)).collect()
    }

    async fn created(store: &RedbStore) -> ExecutionId {
        store.create_execution(execution(), None).await.unwrap().execution.id
    }

    /// Appends that cross several folds read back whole and from any point, before and after
    /// a reopen, and keep being checked for gaps and repeats.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn journals_read_the_same_across_folds() {
        let dir = tempfile::TempDir::new().unwrap();
        let store = RedbStore::open(dir.path()).await.unwrap();
        let (a, b) = (created(&store).await, created(&store).await);
        let per_append = 97;
        let mut last = 0;
        while usize::try_from(last).unwrap() * 2 < FOLD_EVENTS * 3 {
            let mut batch = events(a, last + 1..=last + per_append);
            batch.extend(events(b, last + 1..=last + per_append));
            store.append(batch).await.unwrap();
            last += per_append;
            // Read between appends, so some reads meet events on both sides of a fold.
            if last % (per_append * 8) == 0 {
                assert_eq!(store.read_journal(a, last - 150).await.unwrap(), events(a, last - 150..=last));
            }
        }
        let check = |store: RedbStore| async move {
            assert_eq!(store.read_journal(a, 1).await.unwrap(), events(a, 1..=last));
            assert_eq!(store.read_journal(b, last - 5).await.unwrap(), events(b, last - 5..=last));
            assert_eq!(
                store.append(vec![event(a, last)]).await.unwrap_err(),
                StoreError::SequenceConflict { execution: a, expected: last + 1, got: last }
            );
        };
        check(store).await;
        let store = RedbStore::open(dir.path()).await.unwrap();
        check(store.clone()).await;
        store.append(vec![event(b, last + 1)]).await.unwrap();
        assert_eq!(store.read_journal(b, last).await.unwrap(), events(b, last..=last + 1));
    }

    /// Events a run left in the log (it stopped before folding) are read, and continued, by
    /// the next one.
    #[tokio::test]
    async fn a_log_left_by_an_earlier_run_is_taken_up() {
        let dir = tempfile::TempDir::new().unwrap();
        let store = RedbStore::open(dir.path()).await.unwrap();
        let id = created(&store).await;
        store.append(events(id, 1..=2)).await.unwrap();
        drop(store);
        {
            let db = Database::create(dir.path().join(FILE_NAME)).unwrap();
            let txn = db.begin_write().unwrap();
            {
                let mut log = txn.open_table(JOURNAL_LOG).unwrap();
                for sequence in 3..=4 {
                    log.insert((7, id_key(id), sequence), to_json(&event(id, sequence)).as_slice()).unwrap();
                }
            }
            txn.commit().unwrap();
        }
        let store = RedbStore::open(dir.path()).await.unwrap();
        assert_eq!(store.read_journal(id, 2).await.unwrap(), events(id, 2..=4));
        assert_eq!(
            store.append(vec![event(id, 3)]).await.unwrap_err(),
            StoreError::SequenceConflict { execution: id, expected: 5, got: 3 }
        );
        store.append(vec![event(id, 5)]).await.unwrap();
        assert_eq!(store.read_journal(id, 1).await.unwrap(), events(id, 1..=5));
    }
}
