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
//! A full disk fails a write with [`StoreError::NoSpace`] and leaves nothing of it: a frame
//! that did not fit is cut off its segment, and after a redb commit that did not fit the redb
//! writer opens the file again (`handle.rs`: redb takes no writes after a failed one), so that
//! writes go in again once there is room.
//!
//! Opening the store folds whatever segments a previous run left (it may have been killed)
//! into `journal_chunks` before anything else, frame by frame: a frame torn by a crash was
//! never acknowledged and is dropped whole. Closing folds the last segment.
//!
//! Reads run on tokio's blocking pool in their own read transactions, never waiting for the
//! writers; a journal read merges the unfolded events it finds in memory. A listing walks
//! `executions_by_created` or, for one workflow, `executions_by_workflow` within the key
//! range; by idempotency key it is one lookup in `idempotency_keys`.
//!
//! Files by job: `schema.rs` (tables, layout version and upgrades, key and record encoding),
//! `writer.rs` (the redb writer thread and its writes), `wal.rs` (segment files and frames),
//! `log.rs` (the log writer thread), `unfolded.rs` (unfolded events in memory), `fold.rs`
//! (folding segments into chunks, on open and as they fill), `reads.rs` (listings and journal
//! reads) and `fail.rs` (storage errors against broken rules); this file holds the
//! [`RedbStore`] handle and its [`Store`] implementation.
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
//! | `executions_unfinished` | (created, id), unfinished and not parked | - |
//! | `executions_parked` | (wake time, id), parked with a wake time | - |
//! | `idempotency_keys` | key | id |
//! | `execution_keys` | id | its idempotency key |
//! | `executions_expiring` | (expiry time, id), ended with a retention | - |
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
    Timestamp, WorkflowName,
};
use tokio::sync::{mpsc, oneshot};

use self::handle::Handle;
use self::wal::{FrameError, Segment};
use self::{fail::*, fold::*, log::*, reads::*, schema::*, unfolded::*, writer::*};
use crate::CommitStats;
use crate::shared::{
    Counters, IdHasherBuilder, Key, check_read, check_sequences, encode_by_execution, key_of, key_range, keyed_page,
    paginate, to_json,
};

mod fail;
mod fold;
mod handle;
mod log;
mod reads;
mod schema;
mod unfolded;
mod wal;
mod writer;

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
    /// throughput at 256 writers; segments of 16,384 events and 4 MiB cost about 8% more CPU
    /// per execution in `retained` and left its resident memory where it was, as mimalloc kept
    /// what the smaller window gave back). Slices of 256 events, about a millisecond each: a
    /// whole fold held other writes up for 100 to 200 ms, slices of 4,096 for 20, and
    /// `workflow_throughput`'s p99 went from 107 ms (4,096) to about 50 ms (1,024) and 30 ms
    /// (256) at 64 clients.
    fn default() -> Self {
        Self { fold_events: 1 << 16, fold_bytes: 16 << 20, max_unfolded: 2, fold_slice: 256 }
    }
}

impl LogOptions {
    /// The most bytes of event JSON the unfolded window holds: the full segments that may
    /// wait for their fold and the open one, which moves on after the frame that fills it
    /// (so it may pass `fold_bytes` by one frame).
    pub fn window_bytes(&self) -> usize {
        (self.max_unfolded.max(1) + 1).saturating_mul(self.fold_bytes)
    }
}

/// How the store is opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Options {
    /// Bytes of redb's page cache (reads and writes together): what the file costs in memory
    /// besides the unfolded journal. redb's own default is 1 GiB, which a long-running server
    /// fills as its file grows.
    pub cache_bytes: usize,
    /// How the journal log is cut into segments and folded.
    pub log: LogOptions,
}

/// redb's page cache by default: 64 MiB.
pub const DEFAULT_CACHE_BYTES: usize = 64 << 20;

impl Default for Options {
    fn default() -> Self {
        Self { cache_bytes: DEFAULT_CACHE_BYTES, log: LogOptions::default() }
    }
}

/// Opens (or creates) the redb file with a page cache of `cache_bytes`.
fn create_database(path: &Path, cache_bytes: usize) -> Result<Database, DatabaseError> {
    Database::builder().set_cache_size(cache_bytes).create(path)
}

/// The most execution heads the log writer remembers before it starts over, with a map of
/// its first size: a head it has forgotten costs one lookup, in the unfolded events in memory
/// for a live execution. Heads of ended executions pile up, so this bounds memory that would
/// otherwise grow with every execution ever run (at 1 << 20, about 70 MB kept for good; at
/// 1 << 16, 4.3 MB in a heap profile of `retained`).
const MAX_HEADS: usize = 1 << 14;

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
    db: Arc<Handle>,
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
        Self::open_with(data_dir, Options::default()).await
    }

    /// [`RedbStore::open`] with the cache and the journal log as `options` say.
    pub async fn open_with(data_dir: &Path, options: Options) -> StoreResult<Self> {
        let data_dir = data_dir.to_path_buf();
        tokio::task::spawn_blocking(move || Self::open_blocking(&data_dir, options))
            .await
            .map_err(|e| StoreError::unavailable(format!("opening the redb store panicked: {e}")))?
    }

    fn open_blocking(data_dir: &Path, Options { cache_bytes, log: options }: Options) -> StoreResult<Self> {
        let path = data_dir.join(FILE_NAME);
        let failed =
            |e: &dyn std::fmt::Display| StoreError::unavailable(format!("cannot open {}: {e}", path.display()));
        std::fs::create_dir_all(data_dir).map_err(|e| failed(&e))?;
        // redb locks its file: holding it makes this process the only one touching the log.
        let db = create_database(&path, cache_bytes).map_err(|e| failed(&e))?;
        prepare(&db).map_err(|e| failed(&e))?;
        let (recovery, next_segment) = recover(&db, data_dir).map_err(|e| failed(&e))?;
        let db = Arc::new(Handle::new(path.clone(), cache_bytes, db));
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
                failed: None,
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
        F: Fn(&ReadTransaction) -> Result<T, Fail> + Send + 'static,
    {
        self.read_database(move |db| work(&db.begin_read()?)).await
    }

    /// Runs `work` on the blocking pool, to begin its read transaction when it is ready. A
    /// read that meets a handle a write failed on (`PreviousIo`: redb reads no more through it)
    /// has the file opened again, if the redb writer has not yet, and reads anew.
    async fn read_database<T, F>(&self, work: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: Fn(&Database) -> Result<T, Fail> + Send + 'static,
    {
        let handle = Arc::clone(&self.inner.db);
        let read = move || {
            let db = handle.get().map_err(Fail::Store)?;
            match work(&db) {
                Err(Fail::Storage(::redb::Error::PreviousIo)) => {
                    handle.replace(Some(db))?;
                    work(&*handle.get().map_err(Fail::Store)?)
                }
                result => result,
            }
        };
        match tokio::task::spawn_blocking(read).await {
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
            found.ok_or_else(|| Fail::Store(StoreError::NotFound(Record::Definition { name: name.clone(), version })))
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

    async fn find_by_idempotency_key(&self, key: &IdempotencyKey) -> StoreResult<Option<Execution>> {
        let key = key.clone();
        self.read(move |txn| find_by_key(txn, &key)).await
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

    async fn parked_due(&self, before: Timestamp, limit: usize) -> StoreResult<Vec<ExecutionId>> {
        let until = timestamp_nanos("before", before)?;
        self.read(move |txn| {
            let parked = txn.open_table(PARKED)?;
            parked.range(..=(until, u128::MAX))?.take(limit).map(|entry| id_from_key(entry?.0.value().1)).collect()
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

    async fn remove_expired(&self, now: Timestamp, limit: usize) -> StoreResult<usize> {
        let now = timestamp_nanos("now", now)?;
        if limit == 0 {
            return Ok(0);
        }
        // A read first: with nothing due (the usual answer to the engine's look every second)
        // an idle server commits nothing, and syncs nothing to disk.
        let due = self
            .read_database(move |db| {
                let txn = db.begin_read()?;
                let expiring = match txn.open_table(EXPIRING) {
                    Ok(table) => table,
                    Err(::redb::TableError::TableDoesNotExist(_)) => return Ok(false),
                    Err(e) => return Err(e.into()),
                };
                Ok(expiring.range(..=(now, u128::MAX))?.next().is_some())
            })
            .await?;
        if !due {
            return Ok(0);
        }
        // Its unfolded events stay in memory until their segment's fold, which skips them.
        self.write(move |t| remove_expired(t, now, limit)).await
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
mod tests;
