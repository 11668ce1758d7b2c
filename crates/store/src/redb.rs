//! [`RedbStore`]: the embedded default, one redb file and a write-ahead journal under the
//! data directory.
//!
//! Journal appends, the hot path, go to a write-ahead log of segment files (`wal.rs`).
//! One log-writer thread takes whatever appends have queued up, checks their sequence numbers,
//! writes them as one checksummed frame and answers them after one `fdatasync`: group commit at
//! the cost of a sequential write, without the page copies, checksums and freed-page
//! bookkeeping of a B-tree commit (which bounded group commit when appends went to redb).
//! The events also stay in memory, where reads find them, until the redb writer folds them
//! into `journal_chunks`: every so many events or bytes ([`LogOptions`]) the log moves on to a
//! new segment, and the full one is folded in one redb transaction, as one chunk per
//! execution (a row per event cost a core at full speed), and deleted. When folding falls
//! behind by a few segments, appends wait for it.
//!
//! Every other write (creations, updates, definitions) goes to the redb writer thread, which
//! applies whatever has queued up in one write transaction committed with
//! [`Durability::Immediate`]. A write that breaks a rule (a sequence gap, an illegal
//! transition) is checked before anything is written and fails alone; a storage error fails
//! its whole batch.
//!
//! Opening the store folds whatever segments a previous run left (it may have been killed)
//! into `journal_chunks` before anything else, frame by frame: a frame torn by a crash was
//! never acknowledged and is dropped whole. Closing folds the last segment.
//!
//! Reads run on tokio's blocking pool in their own read transactions, never waiting for the
//! writers; a journal read merges the unfolded events it finds in memory.
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
//! | `journal_chunks` | (id, last sequence) | a chunk: the events of one fold, each as sequence, length, JSON |
//! | `meta` | `schema_version` | 3 |

use std::collections::{HashMap, VecDeque};
use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

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
    Counters, IdHasherBuilder, Key, check_read, check_sequences, encode_by_execution, key_of, key_range, paginate,
    to_json,
};
use crate::wal::{self, Segment};

/// The file inside the data directory.
pub const FILE_NAME: &str = "baton.redb";
/// The layout version this build writes and reads. Version 2 kept an event per row in
/// `journal` and unfolded events in `journal_log` (version 1 had no log); both are upgraded in
/// place into chunks.
const SCHEMA_VERSION: u64 = 3;
/// The most writes one transaction or one journal frame takes; more wait for the next one.
const MAX_BATCH: usize = 1024;
/// How the journal log is cut into segments and folded into redb.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogOptions {
    /// Move on to a new segment, and fold the full one into redb, once it holds this many
    /// events: the more, the more events of an execution share a chunk and the cheaper a fold
    /// is per event; the fewer, the less memory and the quicker a replay after a crash.
    pub fold_events: usize,
    /// The same once a segment's events take this many bytes, for large step outputs.
    pub fold_bytes: usize,
    /// Full segments that may wait to be folded before appends wait for the fold. Unfolded
    /// events stay in memory: up to about `(max_unfolded + 1) * fold_bytes`.
    pub max_unfolded: usize,
    /// Events a fold moves in a redb transaction that other writes (creations, updates) wait
    /// for, so that they wait for a slice of a fold, not all of it; with no write waiting, a
    /// slice is 8 times larger. Slices but the last are not made durable on their own; the
    /// segment stays until the last is.
    pub fold_slice: usize,
}

impl Default for LogOptions {
    /// 65,536 events or 16 MiB per segment, two waiting: at most about 48 MiB in memory, and
    /// a fold per execution per 65,536 events (a fold per 4,096 events cost 15% of the
    /// throughput at 256 writers). Slices of 256 events, about a millisecond each: a whole
    /// fold held other writes up for 100 to 200 ms, slices of 4,096 for 20, and
    /// `workflow_throughput`'s p99 went from 107 ms (4,096) to about 50 ms (1,024) and 30 ms
    /// (256) at 64 clients.
    fn default() -> Self {
        Self { fold_events: 1 << 16, fold_bytes: 16 << 20, max_unfolded: 2, fold_slice: 256 }
    }
}

/// The most execution heads the log writer remembers before it starts over; a head it has
/// forgotten costs one lookup.
const MAX_HEADS: usize = 1 << 20;

type Bytes = &'static [u8];
const DEFINITIONS: TableDefinition<(&str, u32), Bytes> = TableDefinition::new("definitions");
const EXECUTIONS: TableDefinition<u128, Bytes> = TableDefinition::new("executions");
const BY_CREATED: TableDefinition<Key, ()> = TableDefinition::new("executions_by_created");
const BY_WORKFLOW: TableDefinition<(&str, i64, u128), ()> = TableDefinition::new("executions_by_workflow");
const UNFINISHED: TableDefinition<Key, ()> = TableDefinition::new("executions_unfinished");
const IDEMPOTENCY: TableDefinition<&str, u128> = TableDefinition::new("idempotency_keys");
/// Journal chunks: the events of one execution that one fold moved, under (id, last sequence).
const JOURNAL: TableDefinition<(u128, u64), Bytes> = TableDefinition::new("journal_chunks");
/// Version 2's journal, an event under each (id, sequence); made into chunks on open.
const JOURNAL_V2: TableDefinition<(u128, u64), Bytes> = TableDefinition::new("journal");
/// Version 2's unfolded events, keyed by (commit, id, sequence); made into chunks on open.
const JOURNAL_LOG: TableDefinition<(u64, u128, u64), Bytes> = TableDefinition::new("journal_log");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");

/// A store in one redb file, `baton.redb`, and the journal's log segments under a data
/// directory. Cheap to clone; the files close when the last clone is dropped.
#[derive(Debug, Clone)]
pub struct RedbStore {
    inner: Arc<Inner>,
}

/// What opening the store found of the journal log a previous run left.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Recovery {
    /// Segments folded into redb.
    pub segments: usize,
    /// Events they held.
    pub events: usize,
    /// Frames dropped, with where and why: a torn last frame (a write the crash interrupted,
    /// never acknowledged) or a damaged one.
    pub dropped_frames: Vec<String>,
}

#[derive(Debug)]
struct Inner {
    path: PathBuf,
    db: Arc<Database>,
    counters: Arc<Counters>,
    unfolded: Arc<Unfolded>,
    recovery: Recovery,
    appends: Option<mpsc::Sender<Append>>,
    log_writer: Option<JoinHandle<()>>,
    jobs: Option<mpsc::Sender<Box<dyn Job>>>,
    writer: Option<JoinHandle<()>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Closing a queue stops its thread after its last batch. The log writer goes first: it
        // queues the fold of its last segment for the redb writer. Waiting for both releases
        // the files, so the same directory can be opened again right away.
        drop(self.appends.take());
        if let Some(log_writer) = self.log_writer.take() {
            let _ = log_writer.join();
        }
        drop(self.jobs.take());
        if let Some(writer) = self.writer.take() {
            let _ = writer.join();
        }
    }
}

impl RedbStore {
    /// Opens (or creates) the store in `data_dir`, creating the directory when missing, and
    /// folds in what the journal log of a previous run holds. [`StoreError::Unavailable`] when
    /// the files cannot be opened, are in use, or were written by a newer build.
    pub async fn open(data_dir: &Path) -> StoreResult<Self> {
        Self::open_with(data_dir, LogOptions::default()).await
    }

    /// [`RedbStore::open`] with the journal log cut and folded as `options` say.
    pub async fn open_with(data_dir: &Path, options: LogOptions) -> StoreResult<Self> {
        let data_dir = data_dir.to_path_buf();
        tokio::task::spawn_blocking(move || Self::open_blocking(&data_dir, options))
            .await
            .map_err(|e| StoreError::unavailable(format!("opening the redb store panicked: {e}")))?
    }

    fn open_blocking(data_dir: &Path, options: LogOptions) -> StoreResult<Self> {
        let path = data_dir.join(FILE_NAME);
        let failed =
            |e: &dyn std::fmt::Display| StoreError::unavailable(format!("cannot open {}: {e}", path.display()));
        std::fs::create_dir_all(data_dir).map_err(|e| failed(&e))?;
        // redb locks its file: holding it makes this process the only one touching the log.
        let db = Database::create(&path).map_err(|e| failed(&e))?;
        prepare(&db).map_err(|e| failed(&e))?;
        let (recovery, next_segment) = recover(&db, data_dir).map_err(|e| failed(&e))?;
        let db = Arc::new(db);
        let counters = Arc::new(Counters::default());
        let unfolded = Arc::new(Unfolded::new());
        let (jobs, queue) = mpsc::channel(MAX_BATCH);
        let mut log_writer = LogWriter {
            dir: data_dir.to_path_buf(),
            db: Arc::clone(&db),
            counters: Arc::clone(&counters),
            unfolded: Arc::clone(&unfolded),
            folds: jobs.clone(),
            segment: None,
            next_segment,
            heads: HashMap::default(),
            failed: None,
            options,
        };
        // The first segment is made here so that a directory it cannot be made in fails the open.
        log_writer.segment = Some(log_writer.create_segment().map_err(|e| failed(&e))?);
        let writer = {
            let writer = Writer {
                db: Arc::clone(&db),
                counters: Arc::clone(&counters),
                unfolded: Arc::clone(&unfolded),
                dir: data_dir.to_path_buf(),
                fold: None,
                fold_failed: false,
                fold_slice: options.fold_slice,
            };
            std::thread::Builder::new()
                .name("baton-redb-writer".to_owned())
                .spawn(move || writer.run(queue))
                .map_err(|e| failed(&e))?
        };
        let (appends, append_queue) = mpsc::channel(MAX_BATCH);
        let log_writer = std::thread::Builder::new()
            .name("baton-journal-log".to_owned())
            .spawn(move || log_writer.run(append_queue))
            .map_err(|e| failed(&e))?;
        Ok(Self {
            inner: Arc::new(Inner {
                path,
                db,
                counters,
                unfolded,
                recovery,
                appends: Some(appends),
                log_writer: Some(log_writer),
                jobs: Some(jobs),
                writer: Some(writer),
            }),
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// What group commit did so far: journal frames and redb transactions that answered
    /// writes (folds answer none and are not counted).
    pub fn commit_stats(&self) -> CommitStats {
        self.inner.counters.snapshot()
    }

    /// What opening the store found of the journal log a previous run left.
    pub fn recovery(&self) -> &Recovery {
        &self.inner.recovery
    }

    /// Queues `work` for the redb writer and waits until the transaction holding it committed.
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
        self.read_database(move |db| work(&db.begin_read()?)).await
    }

    /// Runs `work` on the blocking pool, to begin its read transaction when it is ready.
    async fn read_database<T, F>(&self, work: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&Database) -> Result<T, Fail> + Send + 'static,
    {
        let db = Arc::clone(&self.inner.db);
        match tokio::task::spawn_blocking(move || work(&db)).await {
            Ok(result) => result.map_err(Fail::into_store_error),
            Err(e) => Err(StoreError::unavailable(format!("a redb read panicked: {e}"))),
        }
    }
}

fn writer_gone() -> StoreError {
    StoreError::unavailable("the redb writer thread has stopped")
}

fn log_writer_gone() -> StoreError {
    StoreError::unavailable("the journal log writer thread has stopped")
}

/// Creates the tables, checks the layout version and upgrades an older one.
fn prepare(db: &Database) -> Result<(), Fail> {
    let mut txn = db.begin_write()?;
    txn.set_durability(Durability::Immediate)?;
    {
        Tables::open(&txn)?;
        let mut meta = txn.open_table(META)?;
        let version = meta.get("schema_version")?.map(|v| v.value());
        match version {
            None | Some(1 | 2) => {
                fold_version_2_log(&txn)?;
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

/// Makes version 2's events (`journal` and `journal_log`) into chunks and drops both tables.
fn fold_version_2_log(txn: &WriteTransaction) -> Result<(), Fail> {
    let mut events = Generation::default();
    {
        let journal = txn.open_table(JOURNAL_V2)?;
        for entry in journal.iter()? {
            let (key, bytes) = entry?;
            let (id, sequence) = key.value();
            events.insert(id, sequence, bytes.value());
        }
        let log = txn.open_table(JOURNAL_LOG)?;
        for entry in log.iter()? {
            let (key, bytes) = entry?;
            let (_, id, sequence) = key.value();
            events.insert(id, sequence, bytes.value());
        }
    }
    events.write_chunks(&mut txn.open_table(JOURNAL)?)?;
    txn.delete_table(JOURNAL_V2)?;
    txn.delete_table(JOURNAL_LOG)?;
    Ok(())
}

/// Folds every log segment in `dir` into `journal_chunks` in one transaction, oldest first, a chunk
/// per execution and segment as the run that wrote them would have (so a segment folded
/// twice writes the same chunks twice), then deletes them. Returns what it found and the
/// number the next segment takes.
fn recover(db: &Database, dir: &Path) -> Result<(Recovery, u64), Fail> {
    let io = |e: std::io::Error| Fail::Store(StoreError::unavailable(format!("the journal log: {e}")));
    let found = wal::segments(dir).map_err(io)?;
    let Some((last, _)) = found.last() else { return Ok((Recovery::default(), 0)) };
    let next = last + 1;
    let mut recovery = Recovery { segments: found.len(), ..Recovery::default() };
    let mut txn = db.begin_write()?;
    txn.set_durability(Durability::Immediate)?;
    {
        let mut journal = txn.open_table(JOURNAL)?;
        for (_, path) in &found {
            let replayed = wal::replay(path).map_err(io)?;
            recovery.events += replayed.records.len();
            if let Some(reason) = replayed.stopped {
                recovery.dropped_frames.push(format!("{}: {reason}", path.display()));
            }
            let mut events = Generation::default();
            for (id, sequence, json) in replayed.records {
                events.insert(id, sequence, &json);
            }
            events.write_chunks(&mut journal)?;
        }
    }
    txn.commit()?;
    for (_, path) in &found {
        std::fs::remove_file(path).map_err(io)?;
    }
    wal::sync_dir(dir).map_err(io)?;
    Ok((recovery, next))
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

/// The tables of a write transaction.
struct Tables<'t> {
    definitions: Table<'t, (&'static str, u32), Bytes>,
    executions: Table<'t, u128, Bytes>,
    by_created: Table<'t, Key, ()>,
    by_workflow: Table<'t, (&'static str, i64, u128), ()>,
    unfinished: Table<'t, Key, ()>,
    idempotency: Table<'t, &'static str, u128>,
    journal: Table<'t, (u128, u64), Bytes>,
}

impl<'t> Tables<'t> {
    fn open(txn: &'t WriteTransaction) -> Result<Self, Fail> {
        Ok(Self {
            definitions: txn.open_table(DEFINITIONS)?,
            executions: txn.open_table(EXECUTIONS)?,
            by_created: txn.open_table(BY_CREATED)?,
            by_workflow: txn.open_table(BY_WORKFLOW)?,
            unfinished: txn.open_table(UNFINISHED)?,
            idempotency: txn.open_table(IDEMPOTENCY)?,
            journal: txn.open_table(JOURNAL)?,
        })
    }
}

/// A write waiting in the redb writer's queue.
trait Job: Send + std::fmt::Debug {
    /// Applies the write inside the batch's transaction. An error is a storage error and
    /// aborts the batch; a broken rule is kept as this job's result.
    fn apply(&mut self, tables: &mut Tables<'_>) -> Result<(), ::redb::Error>;
    /// Answers the caller: with `failure` when the batch did not commit, else with the result.
    fn finish(self: Box<Self>, failure: Option<&StoreError>);
    /// Whether a caller waits for this write, so that it counts in [`CommitStats`].
    fn answers_a_caller(&self) -> bool {
        true
    }
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

/// How many times larger a fold's slice is when no write waits for its transaction.
const IDLE_SLICES: usize = 8;

/// The redb writer thread.
struct Writer {
    db: Arc<Database>,
    counters: Arc<Counters>,
    unfolded: Arc<Unfolded>,
    dir: PathBuf,
    /// The fold under way, a slice per transaction.
    fold: Option<Fold>,
    /// Whether the last fold failed: the next starts when a job arrives (the log writer asks
    /// again when it needs room), not in a loop.
    fold_failed: bool,
    fold_slice: usize,
}

impl Writer {
    /// One transaction per batch of whatever has queued up, each with the next slice of a fold
    /// when one is under way, so a fold never holds up other writes for long. Runs until the
    /// queue is closed and nothing is left to fold.
    fn run(mut self, mut queue: mpsc::Receiver<Box<dyn Job>>) {
        let mut batch = Vec::with_capacity(MAX_BATCH);
        let mut open = true;
        loop {
            if self.fold.is_none() && !self.fold_failed {
                self.fold = Fold::start(&self.unfolded);
            }
            if self.fold.is_some() {
                // Take what has queued up without waiting: the fold goes on regardless.
                while open && batch.len() < MAX_BATCH {
                    match queue.try_recv() {
                        Ok(job) => batch.push(job),
                        Err(mpsc::error::TryRecvError::Empty) => break,
                        Err(mpsc::error::TryRecvError::Disconnected) => open = false,
                    }
                }
            } else if !open || queue.blocking_recv_many(&mut batch, MAX_BATCH) == 0 {
                break;
            } else {
                self.fold_failed = false;
            }
            self.commit_batch(&mut batch);
        }
    }

    fn commit_batch(&mut self, batch: &mut Vec<Box<dyn Job>>) {
        let began = Instant::now();
        let failure = self.commit(batch).err().map(Fail::into_store_error);
        let answered = batch.iter().filter(|job| job.answers_a_caller()).count();
        if failure.is_none() && answered > 0 {
            self.counters.committed(answered, began.elapsed());
        }
        for job in batch.drain(..) {
            job.finish(failure.as_ref());
        }
        match (&failure, &self.fold) {
            (None, Some(fold)) if fold.is_done() => {
                let fold = self.fold.take().expect("matched above");
                fold.finish(&self.unfolded, &self.dir);
            }
            (Some(failure), Some(_)) => {
                self.fold = None;
                self.fold_failed = true;
                self.unfolded.fold_failed(failure.clone());
            }
            _ => {}
        }
    }

    fn commit(&mut self, batch: &mut [Box<dyn Job>]) -> Result<(), Fail> {
        let callers_wait = batch.iter().any(|job| job.answers_a_caller());
        let mut txn = self.db.begin_write()?;
        {
            let mut tables = Tables::open(&txn)?;
            for job in batch.iter_mut() {
                // On error the transaction is dropped, which aborts it: nothing of the batch stays.
                job.apply(&mut tables)?;
            }
            if let Some(fold) = &mut self.fold {
                // With no caller waiting, a larger slice costs no one and saves commits.
                let slice = if callers_wait { self.fold_slice } else { self.fold_slice.saturating_mul(IDLE_SLICES) };
                fold.apply_slice(&mut tables.journal, slice)?;
            }
        }
        // A slice of a fold alone need not be durable: its segment stays until the fold's last
        // slice is, and a crash before then folds the segment again on open.
        let fold_ends = self.fold.as_ref().is_some_and(Fold::is_done);
        let durability = if callers_wait || fold_ends { Durability::Immediate } else { Durability::None };
        txn.set_durability(durability)?;
        txn.commit()?;
        Ok(())
    }
}

/// Journal events in the log and not yet folded into `journal_chunks`, by segment: what journal
/// reads merge, and where the log writer finds an execution's last sequence number.
#[derive(Debug)]
struct Unfolded {
    generations: Mutex<Generations>,
    /// Signalled when a fold ends, for a log writer waiting for room.
    folded: Condvar,
}

#[derive(Debug)]
struct Generations {
    /// Full segments, oldest first, waiting to be folded.
    full: VecDeque<Arc<Generation>>,
    /// The segment being written.
    open: Generation,
    /// Why the last fold failed, until one succeeds.
    fold_failure: Option<StoreError>,
}

/// The events of one log segment: their JSON packed into blocks, so that a segment of many
/// events costs few allocations to fill and to free, and an index by execution.
#[derive(Debug, Default)]
struct Generation {
    segment: u64,
    blocks: Vec<Vec<u8>>,
    /// Each execution's events in sequence order.
    index: HashMap<u128, Vec<Placed>, IdHasherBuilder>,
    events: usize,
    bytes: usize,
}

/// Where an event's JSON is in a generation: (sequence, block, offset, length).
type Placed = (u64, u32, u32, u32);

/// The size of a block of event JSON (a larger event gets a block of its own).
const BLOCK_BYTES: usize = 1 << 20;

impl Generation {
    /// Adds `id`'s event `sequence`, which follows its others here.
    fn insert(&mut self, id: u128, sequence: u64, json: &[u8]) {
        let fits = self.blocks.last().is_some_and(|block| block.capacity() - block.len() >= json.len());
        if !fits {
            self.blocks.push(Vec::with_capacity(BLOCK_BYTES.max(json.len())));
        }
        let block_number = self.blocks.len() - 1;
        let block = &mut self.blocks[block_number];
        let offset = block.len();
        block.extend_from_slice(json);
        let entry = (sequence, as_u32(block_number), as_u32(offset), as_u32(json.len()));
        self.index.entry(id).or_default().push(entry);
        self.events += 1;
        self.bytes += json.len();
    }

    fn last(&self, id: u128) -> Option<u64> {
        self.index.get(&id)?.last().map(|(sequence, ..)| *sequence)
    }

    fn json(&self, block: u32, offset: u32, len: u32) -> &[u8] {
        let offset = offset as usize;
        &self.blocks[block as usize][offset..offset + len as usize]
    }

    fn copy_events(&self, id: u128, from: u64, into: &mut Vec<(u64, Vec<u8>)>) {
        let Some(events) = self.index.get(&id) else { return };
        let first = events.partition_point(|(sequence, ..)| *sequence < from);
        into.extend(
            events[first..]
                .iter()
                .map(|(sequence, block, offset, len)| (*sequence, self.json(*block, *offset, *len).to_vec())),
        );
    }

    /// The executions with events here, in the order their chunks are written: by id, so the
    /// B-tree is walked once.
    fn chunk_order(&self) -> Vec<u128> {
        let mut ids: Vec<u128> = self.index.keys().copied().collect();
        ids.sort_unstable();
        ids
    }

    /// Writes the events as one chunk per execution, in [`Generation::chunk_order`].
    fn write_chunks(&self, journal: &mut Table<'_, (u128, u64), Bytes>) -> Result<(), ::redb::Error> {
        let mut chunk = Vec::new();
        for id in self.chunk_order() {
            self.write_chunk(journal, id, &mut chunk)?;
        }
        Ok(())
    }

    /// Writes `id`'s events as one chunk (built in `chunk`); returns how many there were.
    fn write_chunk(
        &self,
        journal: &mut Table<'_, (u128, u64), Bytes>,
        id: u128,
        chunk: &mut Vec<u8>,
    ) -> Result<usize, ::redb::Error> {
        let Some(events) = self.index.get(&id) else { return Ok(0) };
        chunk.clear();
        for (sequence, block, offset, len) in events {
            wal::push_event(chunk, *sequence, self.json(*block, *offset, *len));
        }
        if let Some((last, ..)) = events.last() {
            journal.insert((id, *last), chunk.as_slice())?;
        }
        Ok(events.len())
    }
}

fn as_u32(n: usize) -> u32 {
    // Blocks, offsets and lengths are bounded by memory far below 4 Gi for a segment, which
    // moves on at `fold_bytes`.
    u32::try_from(n).expect("a segment's events fit in 4 GiB")
}

/// The events of a journal chunk ([`wal::push_event`] after one another), or where it is
/// damaged.
fn chunk_events(mut chunk: &[u8]) -> Result<Vec<(u64, &[u8])>, String> {
    let mut events = Vec::new();
    while !chunk.is_empty() {
        let (sequence, json, rest) = wal::next_event(chunk)
            .ok_or_else(|| format!("a journal chunk is cut short after {} events", events.len()))?;
        events.push((sequence, json));
        chunk = rest;
    }
    Ok(events)
}

impl Unfolded {
    fn new() -> Self {
        let generations = Generations { full: VecDeque::new(), open: Generation::default(), fold_failure: None };
        Self { generations: Mutex::new(generations), folded: Condvar::new() }
    }

    fn lock(&self) -> MutexGuard<'_, Generations> {
        // The maps stay whole even if a holder panicked: every change is a single insert or
        // swap.
        self.generations.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The last unfolded sequence number of `id`, if it has unfolded events.
    fn last(&self, id: u128) -> Option<u64> {
        let generations = self.lock();
        generations.open.last(id).or_else(|| generations.full.iter().rev().find_map(|generation| generation.last(id)))
    }

    /// Records why a fold failed, for a log writer waiting for room.
    fn fold_failed(&self, failure: StoreError) {
        self.lock().fold_failure = Some(failure);
        self.folded.notify_all();
    }

    /// `id`'s unfolded events from sequence `from` on, in order.
    fn events(&self, id: u128, from: u64) -> Vec<(u64, Vec<u8>)> {
        let generations = self.lock();
        let mut events = Vec::new();
        for generation in &generations.full {
            generation.copy_events(id, from, &mut events);
        }
        generations.open.copy_events(id, from, &mut events);
        events
    }
}

/// An append waiting in the log writer's queue: its events, grouped by execution and encoded
/// by the caller.
#[derive(Debug)]
struct Append {
    groups: Encoded,
    reply: oneshot::Sender<StoreResult<()>>,
    /// The caller's tokio runtime, where the answers are sent from, if it runs on one.
    runtime: Option<tokio::runtime::Handle>,
}

/// Answers a frame's appends from a task on the first caller's runtime: waking a task from
/// one of its own workers is a push to a local queue, from this thread a push to the shared
/// queue and maybe a syscall, which cost the log writer about 2 µs per append.
fn answer_in_runtime(appends: Vec<Append>) {
    let runtime = appends.first().and_then(|append| append.runtime.clone());
    let answers = Answers(appends.into_iter().map(|append| append.reply).collect());
    match runtime {
        // A runtime shutting down drops the task unrun, which answers from here instead: other
        // callers in the frame may wait on another runtime.
        Some(runtime) => drop(runtime.spawn(async move { drop(answers) })),
        None => drop(answers),
    }
}

/// Acknowledgements of durable appends, sent when dropped, wherever that happens.
struct Answers(Vec<oneshot::Sender<StoreResult<()>>>);

impl Drop for Answers {
    fn drop(&mut self) {
        for reply in self.0.drain(..) {
            // The caller may have given up waiting; the append stands regardless.
            let _ = reply.send(Ok(()));
        }
    }
}

/// The log writer thread's state between frames.
struct LogWriter {
    dir: PathBuf,
    db: Arc<Database>,
    counters: Arc<Counters>,
    unfolded: Arc<Unfolded>,
    /// The redb writer's queue, for folds.
    folds: mpsc::Sender<Box<dyn Job>>,
    /// The segment being written; `None` after one could not be created.
    segment: Option<Segment>,
    next_segment: u64,
    /// Last sequence numbers the log writer knows: it is the only one appending, so they stay
    /// true until it forgets them.
    heads: HashMap<u128, u64, IdHasherBuilder>,
    /// Why the log takes no more appends, after a write failed.
    failed: Option<StoreError>,
    options: LogOptions,
}

impl LogWriter {
    /// One frame per batch of whatever has queued up, then the fold of the last segment.
    fn run(mut self, mut queue: mpsc::Receiver<Append>) {
        let mut batch = Vec::with_capacity(MAX_BATCH);
        while queue.blocking_recv_many(&mut batch, MAX_BATCH) > 0 {
            self.commit(&mut batch);
        }
        self.move_on(false);
    }

    /// Checks, writes and answers one batch.
    fn commit(&mut self, batch: &mut Vec<Append>) {
        let began = Instant::now();
        if let Err(e) = self.failed.clone().map_or_else(|| self.wait_for_room(), Err) {
            for append in batch.drain(..) {
                let _ = append.reply.send(Err(e.clone()));
            }
            return;
        }
        let mut read = None;
        let mut staged: HashMap<u128, u64, IdHasherBuilder> = HashMap::default();
        let mut accepted = Vec::with_capacity(batch.len());
        for append in batch.drain(..) {
            match self.check(&append.groups, &staged, &mut read) {
                Ok(lasts) => {
                    staged.extend(lasts);
                    accepted.push(append);
                }
                Err(e) => {
                    let _ = append.reply.send(Err(e));
                }
            }
        }
        if accepted.is_empty() {
            return;
        }
        match self.write_frame(&accepted) {
            Ok(()) => {
                let full = {
                    let mut generations = self.unfolded.lock();
                    let open = &mut generations.open;
                    for append in &mut accepted {
                        for (execution, events) in append.groups.drain(..) {
                            let id = id_key(execution);
                            for (sequence, json) in events {
                                open.insert(id, sequence, &json);
                            }
                        }
                    }
                    open.events >= self.options.fold_events || open.bytes >= self.options.fold_bytes
                };
                if self.heads.len() + staged.len() > MAX_HEADS {
                    self.heads.clear();
                }
                self.heads.extend(staged);
                self.counters.committed(accepted.len(), began.elapsed());
                answer_in_runtime(accepted);
                if full {
                    self.move_on(true);
                }
            }
            Err(e) => {
                // What the file holds after a failed write or sync is unknown (the frame may
                // still land), so, like PostgreSQL after a failed fsync, the log takes no more
                // appends: reopening the store replays whatever did land.
                let failure =
                    StoreError::unavailable(format!("the journal log failed a write ({e}); reopen the store to go on"));
                for append in accepted {
                    let _ = append.reply.send(Err(failure.clone()));
                }
                self.failed = Some(failure);
            }
        }
    }

    /// The last sequence number of every execution in `groups` after the append, or why it
    /// cannot be taken.
    fn check(
        &mut self,
        groups: &Encoded,
        staged: &HashMap<u128, u64, IdHasherBuilder>,
        read: &mut Option<ReadTransaction>,
    ) -> StoreResult<Vec<(u128, u64)>> {
        let mut lasts = Vec::with_capacity(groups.len());
        for (execution, events) in groups {
            let id = id_key(*execution);
            let head = match staged.get(&id).or_else(|| self.heads.get(&id)) {
                Some(head) => *head,
                None => self.look_up_head(*execution, read)?,
            };
            check_sequences(*execution, head, events.iter().map(|(sequence, _)| *sequence))?;
            lasts.push((id, events.last().map_or(head, |(sequence, _)| *sequence)));
        }
        Ok(lasts)
    }

    /// An execution's last sequence number from the unfolded events, else from redb;
    /// [`StoreError::NotFound`] when there is no such execution.
    fn look_up_head(&mut self, execution: ExecutionId, read: &mut Option<ReadTransaction>) -> StoreResult<u64> {
        let id = id_key(execution);
        // Unfolded events leave memory only after their fold committed, so looking in memory
        // first and in redb second cannot miss any.
        let head = match self.unfolded.last(id) {
            Some(head) => head,
            None => {
                let txn = match read {
                    Some(txn) => txn,
                    None => read.insert(self.db.begin_read().map_err(|e| Fail::from(e).into_store_error())?),
                };
                let found = || -> Result<u64, Fail> {
                    if txn.open_table(EXECUTIONS)?.get(id)?.is_none() {
                        return Err(StoreError::NotFound(Record::Execution(execution)).into());
                    }
                    last_sequence(&txn.open_table(JOURNAL)?, execution)
                };
                found().map_err(Fail::into_store_error)?
            }
        };
        self.heads.insert(id, head);
        Ok(head)
    }

    fn write_frame(&mut self, appends: &[Append]) -> std::io::Result<()> {
        if self.segment.is_none() {
            self.segment = Some(self.create_segment()?);
        }
        let segment = self.segment.as_mut().expect("created above");
        segment.begin_frame();
        for append in appends {
            for (execution, events) in &append.groups {
                let id = id_key(*execution);
                for (sequence, json) in events {
                    segment.push(id, *sequence, json);
                }
            }
        }
        segment.write_frame()
    }

    /// Creates the next segment and makes it the open generation's.
    fn create_segment(&mut self) -> std::io::Result<Segment> {
        let number = self.next_segment;
        self.next_segment += 1;
        let segment = Segment::create(&self.dir, number)?;
        self.unfolded.lock().open.segment = number;
        Ok(segment)
    }

    /// Closes the segment being written, hands its events to the redb writer to fold, and
    /// (when `go_on`) starts the next segment.
    fn move_on(&mut self, go_on: bool) {
        {
            // The next generation takes its segment's number when the segment is created, before
            // any event lands in it.
            let mut generations = self.unfolded.lock();
            let open = std::mem::take(&mut generations.open);
            generations.full.push_back(Arc::new(open));
        }
        self.segment = None;
        // A redb writer that is gone fails the next wait for room instead.
        let _ = self.folds.blocking_send(Box::new(FoldRequest));
        if go_on {
            // A failure here is retried by the next frame, which fails until a segment exists.
            self.segment = self.create_segment().ok();
        }
    }

    /// Waits while `max_unfolded` segments wait to be folded. Fails when folding fails (after
    /// queueing another try) or the redb writer is gone.
    fn wait_for_room(&self) -> StoreResult<()> {
        let mut generations = self.unfolded.lock();
        while generations.full.len() >= self.options.max_unfolded.max(1) {
            if let Some(failure) = generations.fold_failure.take() {
                drop(generations);
                let _ = self.folds.blocking_send(Box::new(FoldRequest));
                return Err(StoreError::unavailable(format!("the journal cannot be folded into redb: {failure}")));
            }
            if self.folds.is_closed() {
                return Err(writer_gone());
            }
            generations = self
                .unfolded
                .folded
                .wait_timeout(generations, Duration::from_millis(100))
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .0;
        }
        Ok(())
    }
}

/// Moves the full segments' events into `journal_chunks`, a chunk per execution and segment,
/// a slice of events per transaction, and once the last slice is durable
/// drops them from memory and deletes their files.
#[derive(Debug)]
struct Fold {
    taken: Vec<Arc<Generation>>,
    /// (generation, execution) in the order their chunks are written: by id within a segment.
    chunks: Vec<(usize, u128)>,
    next: usize,
}

impl Fold {
    /// A fold of every full segment, if there is one.
    fn start(unfolded: &Unfolded) -> Option<Self> {
        let taken: Vec<Arc<Generation>> = unfolded.lock().full.iter().cloned().collect();
        if taken.is_empty() {
            return None;
        }
        let mut chunks = Vec::new();
        for (number, generation) in taken.iter().enumerate() {
            chunks.extend(generation.chunk_order().into_iter().map(|id| (number, id)));
        }
        Some(Self { taken, chunks, next: 0 })
    }

    fn apply_slice(&mut self, journal: &mut Table<'_, (u128, u64), Bytes>, slice: usize) -> Result<(), ::redb::Error> {
        let mut events = 0;
        let mut chunk = Vec::new();
        while events < slice.max(1)
            && let Some((generation, id)) = self.chunks.get(self.next)
        {
            events += self.taken[*generation].write_chunk(journal, *id, &mut chunk)?;
            self.next += 1;
        }
        Ok(())
    }

    fn is_done(&self) -> bool {
        self.next >= self.chunks.len()
    }

    fn finish(self, unfolded: &Unfolded, dir: &Path) {
        {
            let mut generations = unfolded.lock();
            // The taken segments are the oldest: nothing else drops them.
            for generation in &self.taken {
                if generations.full.front().is_some_and(|front| Arc::ptr_eq(front, generation)) {
                    generations.full.pop_front();
                }
            }
            generations.fold_failure = None;
        }
        unfolded.folded.notify_all();
        // A segment left behind is folded again on open, which rewrites the same chunks.
        for generation in &self.taken {
            let _ = std::fs::remove_file(wal::segment_path(dir, generation.segment));
        }
        let _ = wal::sync_dir(dir);
    }
}

/// Wakes the redb writer to fold the segments that are full.
#[derive(Debug)]
struct FoldRequest;

impl Job for FoldRequest {
    fn apply(&mut self, _: &mut Tables<'_>) -> Result<(), ::redb::Error> {
        Ok(())
    }

    fn finish(self: Box<Self>, _: Option<&StoreError>) {}

    fn answers_a_caller(&self) -> bool {
        false
    }
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

/// `execution`'s journal from `from`: the chunks in `journal_chunks`, then the `unfolded` events that
/// follow (taken from memory before the read transaction began, so a fold in between shows
/// them twice, never not at all). An event seen twice is the same event; the first is kept.
fn read_journal(
    txn: &ReadTransaction,
    execution: ExecutionId,
    from: u64,
    unfolded: Vec<(u64, Vec<u8>)>,
) -> Result<Vec<Event>, Fail> {
    if txn.open_table(EXECUTIONS)?.get(id_key(execution))?.is_none() {
        return Err(StoreError::NotFound(Record::Execution(execution)).into());
    }
    let decode = |bytes: &[u8]| serde_json::from_slice::<Event>(bytes).map_err(|e| e.to_string());
    let corrupt = |reason: String| Fail::Store(StoreError::corrupt(Record::Journal(execution), reason));
    let journal = txn.open_table(JOURNAL)?;
    let key = id_key(execution);
    let mut entries = Vec::new();
    let mut seen = from - 1;
    // Chunks are keyed by their last sequence: the first one from `from` on holds `from`.
    for chunk in journal.range((key, from)..=(key, u64::MAX))? {
        let (_, chunk) = chunk?;
        for (sequence, json) in chunk_events(chunk.value()).map_err(corrupt)? {
            if sequence > seen {
                entries.push((sequence, decode(json)));
                seen = sequence;
            }
        }
    }
    entries.extend(
        unfolded.into_iter().filter(|(sequence, _)| *sequence > seen).map(|(sequence, json)| (sequence, decode(&json))),
    );
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
        let (reply, answer) = oneshot::channel();
        let append = Append {
            groups: encode_by_execution(events, to_json),
            reply,
            runtime: tokio::runtime::Handle::try_current().ok(),
        };
        let appends = self.inner.appends.as_ref().ok_or_else(log_writer_gone)?;
        appends.send(append).await.map_err(|_| log_writer_gone())?;
        answer.await.map_err(|_| log_writer_gone())?
    }

    async fn read_journal(&self, execution: ExecutionId, from_sequence: u64) -> StoreResult<Vec<Event>> {
        let from = from_sequence.max(1);
        let unfolded = Arc::clone(&self.inner.unfolded);
        self.read_database(move |db| {
            let recent = unfolded.events(id_key(execution), from);
            read_journal(&db.begin_read()?, execution, from, recent)
        })
        .await
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
        let id = id_key(execution);
        let (key, chunk) = {
            let mut chunks = journal.range((id, sequence)..=(id, u64::MAX)).expect("range");
            let (key, chunk) = chunks.next().expect("the event is stored").expect("readable");
            (key.value(), chunk.value().to_vec())
        };
        let mut damaged = Vec::new();
        let mut found = false;
        for (stored, json) in chunk_events(&chunk).expect("an intact chunk") {
            if stored != sequence {
                wal::push_event(&mut damaged, stored, json);
            } else if garble {
                found = true;
                wal::push_event(&mut damaged, stored, b"{not json");
            } else {
                found = true;
            }
        }
        assert!(found, "event {sequence} of {execution} is stored");
        journal.insert(key, damaged.as_slice()).expect("overwrite");
    }
    txn.commit().expect("commit");
}

#[cfg(test)]
mod tests {
    use baton_core::{EventKind, ExecutionState, StepId, Timestamp};

    use super::*;

    /// Segments of a few events, so that tests cross many folds and wait for them.
    const SMALL: LogOptions = LogOptions { fold_events: 64, fold_bytes: 1 << 20, max_unfolded: 1, fold_slice: 5 };

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
            trace: None,
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
        let store = RedbStore::open_with(dir.path(), SMALL).await.unwrap();
        let (a, b) = (created(&store).await, created(&store).await);
        let per_append = 97;
        let mut last = 0;
        while usize::try_from(last).unwrap() * 2 < SMALL.fold_events * 7 {
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
        let store = RedbStore::open_with(dir.path(), SMALL).await.unwrap();
        check(store.clone()).await;
        store.append(vec![event(b, last + 1)]).await.unwrap();
        assert_eq!(store.read_journal(b, last).await.unwrap(), events(b, last..=last + 1));
    }

    /// A version 2 file's events (a row each in `journal` and `journal_log`) are made into
    /// chunks on open, and the journal goes on from them.
    #[tokio::test]
    async fn a_version_2_log_is_folded_on_open() {
        let dir = tempfile::TempDir::new().unwrap();
        let store = RedbStore::open(dir.path()).await.unwrap();
        let id = created(&store).await;
        drop(store);
        {
            let db = Database::create(dir.path().join(FILE_NAME)).unwrap();
            let txn = db.begin_write().unwrap();
            {
                let mut journal = txn.open_table(JOURNAL_V2).unwrap();
                for sequence in 1..=2 {
                    journal.insert((id_key(id), sequence), to_json(&event(id, sequence)).as_slice()).unwrap();
                }
                let mut log = txn.open_table(JOURNAL_LOG).unwrap();
                for sequence in 3..=4 {
                    log.insert((7, id_key(id), sequence), to_json(&event(id, sequence)).as_slice()).unwrap();
                }
                txn.open_table(META).unwrap().insert("schema_version", 2).unwrap();
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
        drop(store);
        let db = Database::create(dir.path().join(FILE_NAME)).unwrap();
        let txn = db.begin_read().unwrap();
        assert_eq!(txn.open_table(META).unwrap().get("schema_version").unwrap().unwrap().value(), SCHEMA_VERSION);
        assert!(txn.open_table(JOURNAL_LOG).is_err(), "the version 2 log is dropped");
        assert!(txn.open_table(JOURNAL_V2).is_err(), "the version 2 journal is dropped");
    }

    /// Writes `frames` of events into a new log segment in `dir`, as a run killed before
    /// folding it leaves them, and a torn frame after them when `torn`.
    fn leave_segment(dir: &Path, number: u64, frames: &[Vec<Event>], torn: bool) {
        let mut segment = Segment::create(dir, number).unwrap();
        for frame in frames {
            segment.begin_frame();
            for event in frame {
                segment.push(id_key(event.execution), event.sequence, &to_json(event));
            }
            segment.write_frame().unwrap();
        }
        if torn {
            use std::io::Write;
            let mut file = std::fs::File::options().append(true).open(segment.path()).unwrap();
            file.write_all(b"BJF1\x40\x00\x00\x00half a frame").unwrap();
        }
    }

    /// The segments a killed run left are folded on open, oldest first and frame by frame; a
    /// torn last frame is dropped and reported; the files are gone afterwards and the journal
    /// goes on from the last whole frame.
    #[tokio::test]
    async fn segments_left_by_a_killed_run_are_folded_on_open() {
        let dir = tempfile::TempDir::new().unwrap();
        let store = RedbStore::open(dir.path()).await.unwrap();
        assert_eq!(store.recovery(), &Recovery::default());
        let (a, b) = (created(&store).await, created(&store).await);
        store.append(events(a, 1..=2)).await.unwrap();
        drop(store);
        leave_segment(dir.path(), 40, &[events(a, 3..=4), events(b, 1..=1)], false);
        leave_segment(dir.path(), 41, &[events(a, 5..=5)], true);
        let store = RedbStore::open(dir.path()).await.unwrap();
        let recovery = store.recovery().clone();
        assert_eq!((recovery.segments, recovery.events), (2, 4));
        assert_eq!(recovery.dropped_frames.len(), 1, "{recovery:?}");
        assert!(recovery.dropped_frames[0].contains("journal-00000000000000000041.wal"), "{recovery:?}");
        assert!(recovery.dropped_frames[0].ends_with("is cut short in its body"), "{recovery:?}");
        assert_eq!(store.read_journal(a, 1).await.unwrap(), events(a, 1..=5));
        assert_eq!(store.read_journal(b, 1).await.unwrap(), events(b, 1..=1));
        store.append(events(a, 6..=7)).await.unwrap();
        // The run numbers its segments after the ones it found.
        let numbers: Vec<u64> = wal::segments(dir.path()).unwrap().into_iter().map(|(number, _)| number).collect();
        assert_eq!(numbers, vec![42]);
        drop(store);
        assert!(wal::segments(dir.path()).unwrap().is_empty(), "a closed store folded its last segment");
        let store = RedbStore::open(dir.path()).await.unwrap();
        assert_eq!(store.recovery(), &Recovery::default());
        assert_eq!(store.read_journal(a, 4).await.unwrap(), events(a, 4..=7));
    }

    /// Events larger than a block of the in-memory log, and a segment cut by bytes rather than
    /// events, read back whole from memory, after the fold and after a reopen.
    #[tokio::test]
    async fn large_events_read_back_from_memory_and_from_chunks() {
        let dir = tempfile::TempDir::new().unwrap();
        let options = LogOptions { fold_bytes: 4 << 20, ..SMALL };
        let store = RedbStore::open_with(dir.path(), options).await.unwrap();
        let id = created(&store).await;
        let large = |sequence: u64| {
            let mut event = event(id, sequence);
            let step = StepId::new("s").unwrap();
            let output = serde_json::json!({"blob": "x".repeat((1 << 20) + 7 * sequence as usize)});
            event.kind = EventKind::TaskSucceeded { step, attempt: 1, output };
            event
        };
        store.append(vec![large(1), event(id, 2)]).await.unwrap();
        assert_eq!(store.read_journal(id, 1).await.unwrap(), vec![large(1), event(id, 2)]);
        // Four more megabytes cut the segment and fold it.
        store.append(vec![large(3), large(4), large(5), large(6)]).await.unwrap();
        let mut expected = vec![large(1), event(id, 2)];
        expected.extend((3..=6).map(large));
        assert_eq!(store.read_journal(id, 1).await.unwrap(), expected);
        drop(store);
        let store = RedbStore::open_with(dir.path(), options).await.unwrap();
        assert_eq!(store.read_journal(id, 2).await.unwrap(), expected[1..].to_vec());
    }

    /// A store shared by two runtimes: one shuts down while its appends share frames with the
    /// other's, whose appends must all still be answered (answers go out from a task on the
    /// runtime of a frame's first caller, which may be the one shutting down).
    #[test]
    fn a_runtime_shutting_down_does_not_swallow_the_answers_of_another() {
        let dir = tempfile::TempDir::new().unwrap();
        let live = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        let store = live.block_on(RedbStore::open(dir.path())).unwrap();
        for round in 0..60_u64 {
            let (mine, theirs) = live.block_on(async { (created(&store).await, created(&store).await) });
            let dying = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
            let writer = store.clone();
            dying.spawn(async move {
                for sequence in 1.. {
                    if writer.append(vec![event(theirs, sequence)]).await.is_err() {
                        return;
                    }
                }
            });
            let appended = live.block_on(async {
                let writer = store.clone();
                let mine = tokio::spawn(async move {
                    for sequence in 1..=200 {
                        writer.append(vec![event(mine, sequence)]).await?;
                    }
                    Ok::<_, StoreError>(())
                });
                tokio::time::sleep(std::time::Duration::from_millis(round % 4)).await;
                dying.shutdown_background();
                mine.await.unwrap()
            });
            appended.unwrap_or_else(|e| panic!("round {round}: {e}"));
            assert_eq!(live.block_on(store.read_journal(mine, 1)).unwrap().len(), 200);
        }
    }

    /// Many small appends move through several segments and folds while reads run beside
    /// them; every read sees a whole journal.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn reads_beside_folds_see_whole_journals() {
        let dir = tempfile::TempDir::new().unwrap();
        let store = RedbStore::open_with(dir.path(), SMALL).await.unwrap();
        let id = created(&store).await;
        let reader = {
            let store = store.clone();
            tokio::spawn(async move {
                let mut longest = 0;
                while longest < SMALL.fold_events * 7 {
                    let journal = store.read_journal(id, 1).await.unwrap();
                    assert!(journal.len() >= longest, "a read lost events");
                    assert_eq!(journal, events(id, 1..=journal.len() as u64));
                    longest = journal.len();
                    tokio::task::yield_now().await;
                }
            })
        };
        let mut last = 0;
        while last < (SMALL.fold_events * 7) as u64 {
            store.append(events(id, last + 1..=last + 16)).await.unwrap();
            last += 16;
        }
        reader.await.unwrap();
    }
}
