//! [`PostgresStore`]: state in a PostgreSQL database, over tokio-postgres.
//!
//! The SQL is kept portable so that CockroachDB and YugabyteDB serve too: plain tables and
//! indexes, `INSERT .. ON CONFLICT DO NOTHING`, row-value comparisons, `UNNEST` of arrays; no
//! `LISTEN/NOTIFY`, no advisory locks, no PL/pgSQL, no `DISTINCT ON`. Ids are `BYTEA` (bytes
//! compare as UUIDs do), times are `BIGINT` nanoseconds, JSON is `TEXT`, so nothing depends on
//! collations or server-side JSON; integer columns name their width (`INT4`, `BIGINT`), since
//! CockroachDB reads a bare `INT` as 64 bits. Every statement that can meet a serialization
//! failure (CockroachDB runs serializable) is retried.
//!
//! The schema is created on start from [`MIGRATIONS`], a versioned list recorded in
//! `baton_schema_migrations`; a database whose schema is newer than this build is refused.
//!
//! Journals are written by one server at a time, the one that connected last: see `journal.rs`
//! for how appends are grouped into one row per commit and folded per execution later. In a
//! cluster ([`PostgresStore::connect_partitioned`]) each server writes for the partitions it
//! owns, see `partitioned.rs`. Every write for an execution (journal, creation, update) commits
//! only under its fencing epoch: the writer's, or in a cluster the partition's; a write that
//! lost it is [`StoreError::Fenced`]. The other calls share a small pool of connections and are
//! safe from several servers at once.

mod journal;
mod partitioned;
mod pooled;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use baton_core::store::timestamp_nanos;
use baton_core::{
    CreatedExecution, Event, Execution, ExecutionFilter, ExecutionId, ExecutionPage, ExecutionState, ExecutionUpdate,
    IdempotencyKey, NewDefinition, Order, Ownership, PageRequest, PutDefinition, Record, Store, StoreError,
    StoreResult, StoredDefinition, Timestamp, WorkflowName,
};
use tokio_postgres::error::SqlState;
use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, NoTls};

pub use self::journal::Takeover;
use self::pooled::Pooled;
use crate::CommitStats;
use crate::shared::{Counters, key_range, paginate, to_json};

/// One step of the schema.
#[derive(Debug, Clone, Copy)]
pub struct Migration {
    /// Applied in increasing order, each once.
    pub version: i32,
    /// What it does, for people.
    pub name: &'static str,
    /// The statements.
    pub sql: &'static str,
}

/// The schema, oldest first. Append only: a landed migration never changes.
pub const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "definitions, executions, journal",
        sql: "
        CREATE TABLE IF NOT EXISTS baton_definitions (
            name TEXT NOT NULL,
            version INT4 NOT NULL,
            content_hash TEXT NOT NULL,
            body TEXT NOT NULL,
            created_at BIGINT NOT NULL,
            PRIMARY KEY (name, version)
        );
        CREATE TABLE IF NOT EXISTS baton_executions (
            id BYTEA PRIMARY KEY,
            workflow TEXT NOT NULL,
            state TEXT NOT NULL,
            created_at BIGINT NOT NULL,
            revision BIGINT NOT NULL,
            idempotency_key TEXT UNIQUE,
            record TEXT NOT NULL
        );
        CREATE INDEX IF NOT EXISTS baton_executions_by_created ON baton_executions (created_at, id);
        CREATE INDEX IF NOT EXISTS baton_executions_by_workflow ON baton_executions (workflow, created_at, id);
        CREATE INDEX IF NOT EXISTS baton_executions_by_state ON baton_executions (state, created_at, id);
        CREATE TABLE IF NOT EXISTS baton_journal (
            execution BYTEA NOT NULL REFERENCES baton_executions (id),
            sequence BIGINT NOT NULL,
            event TEXT NOT NULL,
            PRIMARY KEY (execution, sequence)
        );
    ",
    },
    Migration {
        version: 2,
        name: "journal frames and chunks, one writer",
        sql: "
        CREATE TABLE IF NOT EXISTS baton_journal_writer (
            id INT4 PRIMARY KEY CHECK (id = 0),
            epoch BIGINT NOT NULL
        );
        INSERT INTO baton_journal_writer (id, epoch) VALUES (0, 0) ON CONFLICT DO NOTHING;
        CREATE TABLE IF NOT EXISTS baton_journal_frames (
            frame BIGINT PRIMARY KEY,
            events TEXT NOT NULL
        );
        CREATE TABLE IF NOT EXISTS baton_journal_chunks (
            execution BYTEA NOT NULL REFERENCES baton_executions (id),
            last_sequence BIGINT NOT NULL,
            first_sequence BIGINT NOT NULL,
            events TEXT NOT NULL,
            PRIMARY KEY (execution, last_sequence)
        );
        INSERT INTO baton_journal_chunks (execution, last_sequence, first_sequence, events)
            SELECT execution, sequence, sequence, event FROM baton_journal;
        DROP TABLE baton_journal;
    ",
    },
    Migration {
        version: 3,
        name: "parked executions",
        sql: "
        ALTER TABLE baton_executions ADD COLUMN IF NOT EXISTS parked BOOLEAN NOT NULL DEFAULT FALSE;
        ALTER TABLE baton_executions ADD COLUMN IF NOT EXISTS wake_at BIGINT;
        CREATE INDEX IF NOT EXISTS baton_executions_by_wake ON baton_executions (wake_at, id) WHERE wake_at IS NOT NULL;
    ",
    },
    Migration {
        version: 4,
        name: "retention",
        sql: "
        ALTER TABLE baton_executions ADD COLUMN IF NOT EXISTS expires_at BIGINT;
        CREATE INDEX IF NOT EXISTS baton_executions_by_expiry ON baton_executions (expires_at, id)
            WHERE expires_at IS NOT NULL;
    ",
    },
    Migration {
        version: 5,
        name: "cluster: nodes with leases, partitions with epochs",
        // Written by baton-cluster. Leases are times of the database's clock (`now()`), so no
        // node's clock matters; `baton_cluster` holds the partition count the first node fixed.
        sql: "
        CREATE TABLE IF NOT EXISTS baton_cluster (
            id INT4 PRIMARY KEY CHECK (id = 0),
            partitions INT4 NOT NULL
        );
        CREATE TABLE IF NOT EXISTS baton_nodes (
            id TEXT PRIMARY KEY,
            address TEXT NOT NULL,
            incarnation BIGINT NOT NULL,
            lease_expires_at TIMESTAMPTZ NOT NULL,
            joined_at TIMESTAMPTZ NOT NULL
        );
        CREATE TABLE IF NOT EXISTS baton_partitions (
            id INT4 PRIMARY KEY,
            owner TEXT,
            epoch BIGINT NOT NULL
        );
    ",
    },
    Migration {
        version: 6,
        name: "executions carry their cluster partition",
        // Filled by the cluster's stores: on insert, and for rows written before at connect
        // (the partition is a hash that portable SQL cannot compute). NULL outside a cluster.
        sql: "
        ALTER TABLE baton_executions ADD COLUMN IF NOT EXISTS partition_id INT4;
        CREATE INDEX IF NOT EXISTS baton_executions_by_partition_wake ON baton_executions (partition_id, wake_at, id)
            WHERE wake_at IS NOT NULL;
    ",
    },
    Migration {
        version: 7,
        name: "cluster: worker tasks",
        // Written by baton-cluster's shared worker queues: one row per step of an execution
        // handed to workers (`call_key`), claimed by any node, owned by its partition's owner.
        sql: "
        CREATE TABLE IF NOT EXISTS baton_worker_tasks (
            id BYTEA PRIMARY KEY,
            call_key TEXT NOT NULL UNIQUE,
            queue TEXT NOT NULL,
            partition_id INT4 NOT NULL,
            execution BYTEA NOT NULL,
            step TEXT NOT NULL,
            attempt INT4 NOT NULL,
            service TEXT NOT NULL,
            payload TEXT NOT NULL,
            state TEXT NOT NULL,
            delivery INT4 NOT NULL,
            expired_leases INT4 NOT NULL,
            worker TEXT,
            lease_expires_at TIMESTAMPTZ,
            queued_at TIMESTAMPTZ NOT NULL,
            finished_at TIMESTAMPTZ,
            outcome TEXT,
            output TEXT,
            retryable BOOLEAN
        );
        CREATE INDEX IF NOT EXISTS baton_worker_tasks_open ON baton_worker_tasks (queue, queued_at, id)
            WHERE state IN ('queued', 'leased');
        CREATE INDEX IF NOT EXISTS baton_worker_tasks_closed ON baton_worker_tasks (partition_id, finished_at)
            WHERE state IN ('done', 'cancelled');
    ",
    },
    Migration {
        version: 8,
        name: "cluster: the shared service registry",
        // Written by baton-cluster's `Services`. Every change takes the next value of
        // `baton_registry_clock.seq` under that row's lock, so sequences commit in order and a
        // reader that saw one has seen every smaller one. A removal keeps its row (spec NULL)
        // for `REMOVALS_KEPT`, so readers that poll see it.
        sql: "
        CREATE TABLE IF NOT EXISTS baton_registry_clock (
            id INT4 PRIMARY KEY CHECK (id = 0),
            seq BIGINT NOT NULL
        );
        INSERT INTO baton_registry_clock (id, seq) VALUES (0, 0) ON CONFLICT DO NOTHING;
        CREATE TABLE IF NOT EXISTS baton_services (
            id TEXT PRIMARY KEY,
            partition INT4 NOT NULL,
            spec TEXT,
            ttl_ms BIGINT,
            health TEXT NOT NULL,
            output TEXT NOT NULL,
            beat_at TIMESTAMPTZ NOT NULL,
            seq BIGINT NOT NULL,
            changed_at TIMESTAMPTZ NOT NULL
        );
        CREATE INDEX IF NOT EXISTS baton_services_by_seq ON baton_services (seq);
    ",
    },
    Migration {
        version: 9,
        name: "journal chunks without a foreign key",
        // The key's check locked each chunk's execution row, through a trigger, for every
        // chunk inserted: in a cluster, where an append is a chunk, that was 60% of a commit's
        // time (1.2 ms of a 69-chunk commit, 0.5 ms without). The inserts check that the
        // execution exists instead, and executions are removed with their chunks.
        sql: "
        ALTER TABLE baton_journal_chunks DROP CONSTRAINT IF EXISTS baton_journal_chunks_execution_fkey;
    ",
    },
];

/// How to reach the database.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// A libpq-style connection string: `postgres://user@host:5432/db` or
    /// `host=/run/postgresql port=5432 user=baton dbname=baton`. TLS is not supported yet.
    pub url: String,
    /// Connections for everything but journal appends, which have their own.
    pub pool_size: usize,
    /// The most appends one journal frame (one commit) takes.
    pub max_batch: usize,
    /// Connections committing journal frames (in a cluster, batches of chunks), each with one
    /// commit in flight: while one waits for its commit to be flushed, the next is on its way.
    pub append_connections: usize,
    /// Events kept in memory (as well as in frames) before they are folded into chunks.
    pub fold_events: usize,
    /// Bytes of events kept in memory before they are folded, whatever their number.
    pub fold_bytes: usize,
    /// How long a call may wait for the server before it fails as unavailable and the
    /// connections are made again: a network that drops packets without a reset would
    /// otherwise hold a connection, and every call on it, until the kernel gives up (minutes).
    pub timeout: Duration,
    /// PostgreSQL ends a session of this store that sits this long inside a transaction
    /// (`idle_in_transaction_session_timeout`). A cluster node sets it below its lease: a node
    /// frozen in the middle of a write would otherwise hold its partitions' rows locked, and no
    /// other node could claim them. `None` leaves the server's setting.
    pub idle_in_transaction_timeout: Option<Duration>,
}

impl Config {
    /// Defaults for `url`: 4 pooled connections, frames of up to 1000 appends on 2 append
    /// connections, folds every 65,536 events or 16 MiB, calls answered within 30 s.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            pool_size: 4,
            max_batch: 1000,
            append_connections: 2,
            fold_events: 65_536,
            fold_bytes: 16 << 20,
            timeout: Duration::from_secs(30),
            idle_in_transaction_timeout: None,
        }
    }
}

/// Brings the schema of the database `config` names up to date, and nothing more: for what
/// must find the tables before a store connects (a cluster member registering).
pub async fn migrate_schema(config: &Config) -> StoreResult<()> {
    let pg: tokio_postgres::Config =
        config.url.parse().map_err(|e| StoreError::Invalid { field: "url".to_owned(), reason: describe(&e) })?;
    migrate(&mut connect(&pg).await?).await
}

/// A store in a PostgreSQL (or CockroachDB, YugabyteDB) database. Cheap to clone; the
/// connections close when the last clone is dropped.
#[derive(Debug, Clone)]
pub struct PostgresStore {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    config: tokio_postgres::Config,
    pool: Vec<Mutex<Option<Arc<Pooled>>>>,
    next: AtomicUsize,
    journal: Journal,
    counters: Arc<Counters>,
    timeout: Duration,
}

/// Who writes journals, and under which epochs.
#[derive(Debug)]
enum Journal {
    /// This server alone, under the writer epoch it took over with.
    Single(journal::Journal),
    /// The partitions this server owns in a cluster, each under its epoch.
    Partitioned { journal: partitioned::Journal, ownership: Arc<dyn Ownership>, takeover: Takeover },
}

/// The epoch a write for an execution commits under: a row of `table` with `id` and `epoch`,
/// read `FOR SHARE` in the write's statement.
struct Fence {
    table: &'static str,
    id: i32,
    epoch: i64,
}

/// The condition that keeps an execution out while a newer version of its workflow exists
/// (`$2` the workflow, `$10` its version).
const NEWEST_ONLY: &str =
    "\n                 WHERE NOT EXISTS (SELECT 1 FROM baton_definitions d WHERE d.name = $2 AND d.version > $10)";

/// How often a statement that met a serialization failure or lost a race is tried in all.
const ATTEMPTS: usize = 16;

impl PostgresStore {
    /// Connects, brings the schema up to date and takes over the journal: a server that held
    /// it before takes no more appends. [`StoreError::Invalid`] for a bad URL,
    /// [`StoreError::Unavailable`] when the server cannot be reached or its schema is newer
    /// than this build.
    pub async fn connect(config: &Config) -> StoreResult<Self> {
        let pg = parse(config)?;
        let mut first = connect(&pg).await?;
        migrate(&mut first).await?;
        tune(&first).await;
        let pool: Vec<_> = (0..config.pool_size.max(1)).map(|_| Mutex::new(None)).collect();
        *pool[0].lock().unwrap_or_else(PoisonError::into_inner) = Some(Arc::new(Pooled::new(first)));
        let counters = Arc::new(Counters::default());
        let options = journal::Options {
            max_batch: config.max_batch.max(1),
            writers: config.append_connections.max(1),
            fold_events: config.fold_events.max(1),
            fold_bytes: config.fold_bytes.max(1),
        };
        let journal = journal::Journal::take_over(&pg, connect(&pg).await?, options, Arc::clone(&counters)).await?;
        let journal = Journal::Single(journal);
        Ok(Self {
            inner: Arc::new(Inner {
                config: pg,
                pool,
                next: AtomicUsize::new(0),
                journal,
                counters,
                timeout: config.timeout,
            }),
        })
    }

    /// Connects as one server of a cluster: it writes for the executions of the partitions
    /// `ownership` says it owns, each write conditional on the partition's epoch. Like
    /// [`connect`](Self::connect) it brings the schema up to date and takes the single-writer
    /// role over, folding what a server outside the cluster left and fencing that server out;
    /// the cluster's own journals need no folding.
    pub async fn connect_partitioned(config: &Config, ownership: Arc<dyn Ownership>) -> StoreResult<Self> {
        let mut pg = parse(config)?;
        if let Some(timeout) = config.idle_in_transaction_timeout {
            let given = pg.get_options().unwrap_or_default().to_owned();
            let millis = timeout.as_millis().max(1);
            pg.options(format!("{given} -c idle_in_transaction_session_timeout={millis}").trim_start());
        }
        let mut first = connect(&pg).await?;
        migrate(&mut first).await?;
        tune(&first).await;
        let (takeover, _) = journal::recover(&mut first).await?;
        fill_partitions(&first, ownership.partitions()).await?;
        let pool: Vec<_> = (0..config.pool_size.max(1)).map(|_| Mutex::new(None)).collect();
        *pool[0].lock().unwrap_or_else(PoisonError::into_inner) = Some(Arc::new(Pooled::new(first)));
        let counters = Arc::new(Counters::default());
        let journal = partitioned::Journal::start(
            &pg,
            Arc::clone(&ownership),
            config.max_batch,
            config.append_connections,
            config.timeout,
            Arc::clone(&counters),
        );
        let journal = Journal::Partitioned { journal, ownership, takeover };
        Ok(Self {
            inner: Arc::new(Inner {
                config: pg,
                pool,
                next: AtomicUsize::new(0),
                journal,
                counters,
                timeout: config.timeout,
            }),
        })
    }

    /// Inserts `execution` under its fencing epoch; with `latest_only`, only while no newer
    /// version of its workflow exists (`Ok(None)` otherwise).
    async fn insert_execution(
        &self,
        execution: Execution,
        idempotency_key: Option<IdempotencyKey>,
        latest_only: bool,
    ) -> StoreResult<Option<CreatedExecution>> {
        self.bounded(async move {
            let created_at = timestamp_nanos("created_at", execution.created_at)?;
            let client = self.client().await?;
            let id = id_bytes(execution.id);
            let key = idempotency_key.as_ref().map(IdempotencyKey::as_str);
            let record = String::from_utf8(to_json(&execution)).expect("JSON is UTF-8");
            let state = state_text(execution.state);
            let fence = self.fence(execution.id)?;
            // In a cluster the row names its partition, so that a node's queries filter in SQL.
            let partition = match &self.inner.journal {
                Journal::Single(_) => None,
                Journal::Partitioned { .. } => Some(fence.id),
            };
            // Only under the fencing epoch, `FOR SHARE` as every write for an execution.
            let sql = format!(
                "INSERT INTO baton_executions (id, workflow, state, created_at, revision, idempotency_key, record,
                     partition_id)
                 SELECT $1::BYTEA, $2::TEXT, $3::TEXT, $4::BIGINT, 0, $5::TEXT, $6::TEXT, $9::INT4
                 FROM (SELECT 1 FROM {} WHERE id = $7 AND epoch = $8 FOR SHARE) AS current{}
                 ON CONFLICT DO NOTHING",
                fence.table,
                if latest_only { NEWEST_ONLY } else { "" }
            );
            let version = i32::try_from(execution.version).unwrap_or(i32::MAX);
            let workflow = execution.workflow.as_str().to_owned();
            let mut params: Vec<&(dyn ToSql + Sync)> =
                vec![&id, &workflow, &state, &created_at, &key, &record, &fence.id, &fence.epoch, &partition];
            if latest_only {
                params.push(&version);
            }
            // Nothing inserted and not fenced: whether a newer version kept it out.
            let newer = || async {
                let sql = "SELECT 1 FROM baton_definitions WHERE name = $1 AND version > $2 LIMIT 1";
                client.query_opt_prepared(sql, &[&workflow, &version]).await.map(|row| latest_only && row.is_some())
            };
            for _ in 0..ATTEMPTS {
                let inserted = client.execute_prepared(&sql, &params).await;
                match inserted {
                    Ok(1) => {
                        match &self.inner.journal {
                            Journal::Single(journal) => journal.created(execution.id),
                            Journal::Partitioned { journal, .. } => journal.created(execution.id, fence.epoch),
                        }
                        return Ok(Some(CreatedExecution { execution, created: true }));
                    }
                    Ok(_) => match Self::fenced_out(&client, &fence).await {
                        Ok(true) => return Err(self.fenced_error(execution.id, &fence)),
                        Ok(false) => {}
                        Err(e) if is_transient(&e) => continue,
                        Err(e) => return Err(unavailable(e)),
                    },
                    Err(e) if is_transient(&e) => continue,
                    Err(e) => return Err(unavailable(e)),
                }
                // Nothing inserted: the key was used before, a newer version was put, or the id
                // is taken.
                let Some(key) = key else {
                    match newer().await {
                        Ok(true) => return Ok(None),
                        Ok(false) => return Err(StoreError::AlreadyExists(execution.id)),
                        Err(e) if is_transient(&e) => continue,
                        Err(e) => return Err(unavailable(e)),
                    }
                };
                let existing = client
                    .query_opt_prepared("SELECT id, record FROM baton_executions WHERE idempotency_key = $1", &[&key])
                    .await;
                match existing {
                    Ok(Some(row)) => {
                        let id = id_from_bytes(row.get(0))?;
                        let execution = decode_execution(id, row.get(1))?;
                        return Ok(Some(CreatedExecution { execution, created: false }));
                    }
                    Ok(None) => match newer().await {
                        Ok(true) => return Ok(None),
                        Ok(false) => return Err(StoreError::AlreadyExists(execution.id)),
                        Err(e) if is_transient(&e) => {}
                        Err(e) => return Err(unavailable(e)),
                    },
                    Err(e) if is_transient(&e) => {}
                    Err(e) => return Err(unavailable(e)),
                }
            }
            Err(StoreError::unavailable(format!("execution {} kept meeting concurrent writers", execution.id)))
        })
        .await
    }

    /// This store's writer epoch, and what it found of the journal the previous writer left.
    pub fn takeover(&self) -> &Takeover {
        match &self.inner.journal {
            Journal::Single(journal) => journal.takeover(),
            Journal::Partitioned { takeover, .. } => takeover,
        }
    }

    /// The epoch a write for `execution` must commit under, or [`StoreError::Fenced`] when this
    /// server does not own its partition.
    fn fence(&self, execution: ExecutionId) -> StoreResult<Fence> {
        match &self.inner.journal {
            Journal::Single(journal) => {
                Ok(Fence { table: "baton_journal_writer", id: 0, epoch: journal.takeover().epoch })
            }
            Journal::Partitioned { ownership, .. } => match ownership.of(execution) {
                Some((partition, epoch)) => {
                    Ok(Fence { table: "baton_partitions", id: i32::try_from(partition).unwrap_or(i32::MAX), epoch })
                }
                None => Err(partitioned::fenced(execution, execution.partition(ownership.partitions()), None)),
            },
        }
    }

    /// Whether `fence` no longer holds at the database, for a write that changed nothing.
    async fn fenced_out(client: &Pooled, fence: &Fence) -> Result<bool, tokio_postgres::Error> {
        let sql = format!("SELECT epoch FROM {} WHERE id = $1", fence.table);
        let row = client.query_opt_prepared(&sql, &[&fence.id]).await?;
        Ok(row.is_none_or(|row| row.get::<_, i64>(0) != fence.epoch))
    }

    /// The error of a write for `execution` under `fence` after the epoch moved on.
    fn fenced_error(&self, execution: ExecutionId, fence: &Fence) -> StoreError {
        match &self.inner.journal {
            Journal::Single(_) => journal::fenced(fence.epoch),
            Journal::Partitioned { .. } => partitioned::fenced(execution, fence.id.unsigned_abs(), Some(fence.epoch)),
        }
    }

    /// Of `ids`, those this server works on: all of them, or in a cluster those of its
    /// partitions.
    fn owned(&self, ids: Vec<ExecutionId>) -> Vec<ExecutionId> {
        match &self.inner.journal {
            Journal::Single(_) => ids,
            Journal::Partitioned { ownership, .. } => {
                ids.into_iter().filter(|id| ownership.of(*id).is_some()).collect()
            }
        }
    }

    /// In a cluster, the partitions this server owns now, for queries that filter by them.
    fn owned_partitions(&self) -> Option<Vec<i32>> {
        match &self.inner.journal {
            Journal::Single(_) => None,
            Journal::Partitioned { ownership, .. } => {
                Some(ownership.owned().into_iter().map(|(p, _)| i32::try_from(p).unwrap_or(i32::MAX)).collect())
            }
        }
    }

    /// What group commit of journal appends did so far.
    pub fn commit_stats(&self) -> CommitStats {
        self.inner.counters.snapshot()
    }

    /// `work`, failed as unavailable when the server does not answer it within the timeout.
    /// The pooled connections are then dropped, so the next calls connect afresh rather than
    /// wait on a connection the network swallowed (no reset ever comes through a blackhole).
    async fn bounded<T>(&self, work: impl Future<Output = StoreResult<T>>) -> StoreResult<T> {
        match tokio::time::timeout(self.inner.timeout, work).await {
            Ok(answer) => answer,
            Err(_) => {
                for slot in &self.inner.pool {
                    *slot.lock().unwrap_or_else(PoisonError::into_inner) = None;
                }
                Err(StoreError::unavailable(format!(
                    "postgres did not answer within {:?}; connecting again",
                    self.inner.timeout
                )))
            }
        }
    }

    /// A pooled connection, reconnecting when the one in the slot has closed.
    async fn client(&self) -> StoreResult<Arc<Pooled>> {
        let slot = &self.inner.pool[self.inner.next.fetch_add(1, Ordering::Relaxed) % self.inner.pool.len()];
        let current = slot.lock().unwrap_or_else(PoisonError::into_inner).clone();
        if let Some(client) = current
            && !client.is_closed()
        {
            return Ok(client);
        }
        let client = Arc::new(Pooled::new(connect(&self.inner.config).await?));
        *slot.lock().unwrap_or_else(PoisonError::into_inner) = Some(Arc::clone(&client));
        Ok(client)
    }
}

/// Names the partition of every execution written before the database served a cluster (or
/// by a server outside it), in batches; the hash is computed here, not in portable SQL.
async fn fill_partitions(client: &Client, partitions: u32) -> StoreResult<()> {
    const BATCH: i64 = 5_000;
    loop {
        let rows = client
            .query("SELECT id FROM baton_executions WHERE partition_id IS NULL LIMIT $1", &[&BATCH])
            .await
            .map_err(unavailable)?;
        if rows.is_empty() {
            return Ok(());
        }
        let mut ids = Vec::with_capacity(rows.len());
        let mut parts = Vec::with_capacity(rows.len());
        for row in &rows {
            let bytes: Vec<u8> = row.get(0);
            let id = id_from_bytes(&bytes)?;
            parts.push(i32::try_from(id.partition(partitions)).unwrap_or(i32::MAX));
            ids.push(bytes);
        }
        client
            .execute(
                "UPDATE baton_executions SET partition_id = u.p
                 FROM UNNEST($1::BYTEA[], $2::INT4[]) AS u(id, p) WHERE baton_executions.id = u.id",
                &[&ids, &parts],
            )
            .await
            .map_err(unavailable)?;
    }
}

/// The connection settings of `config`, with TCP keepalives and a TCP user timeout of
/// `config.timeout` where the URL sets none: the kernel then closes a connection whose peer
/// went silent instead of waiting on it for many minutes.
fn parse(config: &Config) -> StoreResult<tokio_postgres::Config> {
    let mut pg: tokio_postgres::Config =
        config.url.parse().map_err(|e| StoreError::Invalid { field: "url".to_owned(), reason: describe(&e) })?;
    if pg.get_tcp_user_timeout().is_none() {
        pg.tcp_user_timeout(config.timeout);
    }
    let probe = (config.timeout / 4).max(Duration::from_secs(1));
    if pg.get_keepalives_idle() > probe {
        pg.keepalives(true).keepalives_idle(probe).keepalives_interval(probe).keepalives_retries(3);
    }
    Ok(pg)
}

async fn connect(config: &tokio_postgres::Config) -> StoreResult<Client> {
    let (client, connection) = config.connect(NoTls).await.map_err(unavailable)?;
    // The connection ends when the client is dropped or the server goes away; the client then
    // reports itself closed and the pool reconnects.
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(client)
}

/// A tokio-postgres error with the server's message, which its `Display` leaves out.
fn describe(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{}: {} (SQLSTATE {})", db.severity(), db.message(), db.code().code()),
        None => match std::error::Error::source(e) {
            Some(source) => format!("{e}: {source}"),
            None => e.to_string(),
        },
    }
}

fn unavailable(e: tokio_postgres::Error) -> StoreError {
    // The statement failed whole: nothing of it was written.
    if e.code() == Some(&SqlState::DISK_FULL) {
        return StoreError::NoSpace(format!("postgres: {}", describe(&e)));
    }
    StoreError::unavailable(format!("postgres: {}", describe(&e)))
}

/// Whether trying again may succeed: a serialization failure or a deadlock.
fn is_transient(e: &tokio_postgres::Error) -> bool {
    matches!(e.code(), Some(code) if *code == SqlState::T_R_SERIALIZATION_FAILURE || *code == SqlState::T_R_DEADLOCK_DETECTED)
}

async fn migrate(client: &mut Client) -> StoreResult<()> {
    client
        .batch_execute(
            "CREATE TABLE IF NOT EXISTS baton_schema_migrations (
                version INT4 PRIMARY KEY, name TEXT NOT NULL, applied_at BIGINT NOT NULL
            )",
        )
        .await
        .map_err(unavailable)?;
    let latest = MIGRATIONS.last().map_or(0, |m| m.version);
    for attempt in 1..=ATTEMPTS {
        let rows = client.query("SELECT version FROM baton_schema_migrations", &[]).await.map_err(unavailable)?;
        let applied: Vec<i32> = rows.iter().map(|row| row.get(0)).collect();
        if let Some(newer) = applied.iter().copied().find(|v| *v > latest) {
            return Err(StoreError::unavailable(format!(
                "the database has schema version {newer}, this build knows versions up to {latest}"
            )));
        }
        let Some(next) = MIGRATIONS.iter().find(|m| !applied.contains(&m.version)) else { return Ok(()) };
        match apply(client, next).await {
            Ok(()) => {}
            // Another node may be migrating at the same moment: look again.
            Err(_) if attempt < ATTEMPTS => {}
            Err(e) => {
                return Err(StoreError::unavailable(format!(
                    "schema migration {} ({}) failed: {}",
                    next.version,
                    next.name,
                    describe(&e)
                )));
            }
        }
    }
    Err(StoreError::unavailable("the schema migrations did not settle"))
}

/// Storage settings that are PostgreSQL's own, so CockroachDB or YugabyteDB may refuse them;
/// each is tried on its own and may fail.
async fn tune(client: &Client) {
    // Frames are read once, at a takeover: compressing them with pglz cost a quarter of the
    // server's time; with lz4 it costs less than the bytes it saves.
    // Without lz4 (a server built without it), frames are stored uncompressed.
    let frames = "ALTER TABLE baton_journal_frames ALTER COLUMN events";
    if client.batch_execute(&format!("{frames} SET COMPRESSION lz4")).await.is_err() {
        let _ = client.batch_execute(&format!("{frames} SET STORAGE EXTERNAL")).await;
    }
    // Chunks are kept, so they stay compressed, with lz4 where the server has it: pglz took
    // an eighth of the machine at 100,000 appends a second.
    let _ = client.batch_execute("ALTER TABLE baton_journal_chunks ALTER COLUMN events SET COMPRESSION lz4").await;
    // A frame of a usual batch, and a chunk of a usual execution, compress to a few KB: kept
    // inline in the table each is one row to write (and a frame, to delete), where TOAST made
    // it three rows and two index entries.
    for table in ["baton_journal_frames", "baton_journal_chunks"] {
        let _ = client.batch_execute(&format!("ALTER TABLE {table} SET (toast_tuple_target = 8160)")).await;
    }
}

async fn apply(client: &mut Client, migration: &Migration) -> Result<(), tokio_postgres::Error> {
    let tx = client.transaction().await?;
    tx.batch_execute(migration.sql).await?;
    let applied_at = chrono_now_nanos();
    tx.execute(
        "INSERT INTO baton_schema_migrations (version, name, applied_at) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
        &[&migration.version, &migration.name, &applied_at],
    )
    .await?;
    tx.commit().await
}

fn chrono_now_nanos() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
}

fn id_bytes(id: ExecutionId) -> Vec<u8> {
    id.as_uuid().as_bytes().to_vec()
}

fn id_from_bytes(bytes: &[u8]) -> StoreResult<ExecutionId> {
    uuid::Uuid::from_slice(bytes)
        .ok()
        .and_then(|uuid| ExecutionId::from_uuid(uuid).ok())
        .ok_or_else(|| StoreError::unavailable(format!("the database holds a bad execution id {bytes:02x?}")))
}

fn from_nanos(nanos: i64) -> Timestamp {
    Timestamp::from_timestamp_nanos(nanos)
}

fn decode_execution(id: ExecutionId, record: &str) -> StoreResult<Execution> {
    let execution: Execution = serde_json::from_str(record)
        .map_err(|e| StoreError::corrupt(Record::Execution(id), format!("unreadable record: {e}")))?;
    if execution.id != id {
        return Err(StoreError::corrupt(Record::Execution(id), format!("the record is of execution {}", execution.id)));
    }
    Ok(execution)
}

fn definition_from_row(name: &WorkflowName, row: &tokio_postgres::Row) -> StoreResult<StoredDefinition> {
    let version: i32 = row.get("version");
    let version = u32::try_from(version)
        .map_err(|_| StoreError::unavailable(format!("the database holds definition {name} with version {version}")))?;
    let body: &str = row.get("body");
    let body = serde_json::from_str(body).map_err(|e| {
        StoreError::corrupt(
            Record::Definition { name: name.clone(), version: Some(version) },
            format!("unreadable body: {e}"),
        )
    })?;
    Ok(StoredDefinition {
        name: name.clone(),
        version,
        content_hash: row.get("content_hash"),
        body,
        created_at: from_nanos(row.get("created_at")),
    })
}

fn state_text(state: ExecutionState) -> String {
    state.to_string()
}

fn sequence_param(sequence: u64) -> StoreResult<i64> {
    i64::try_from(sequence).map_err(|_| StoreError::Invalid {
        field: "sequence".to_owned(),
        reason: format!("{sequence} is larger than the database can hold"),
    })
}

impl Store for PostgresStore {
    async fn put_definition(&self, definition: NewDefinition) -> StoreResult<PutDefinition> {
        self.bounded(async move {
            let client = self.client().await?;
            let name = definition.name.as_str();
            let body = String::from_utf8(to_json(&definition.body)).expect("JSON is UTF-8");
            let created_at = timestamp_nanos("created_at", definition.created_at)?;
            for _ in 0..ATTEMPTS {
                let latest = client
                    .query_opt(
                        "SELECT version, content_hash FROM baton_definitions WHERE name = $1 ORDER BY version DESC LIMIT 1",
                        &[&name],
                    )
                    .await;
                let latest = match latest {
                    Ok(row) => row.map(|row| (row.get::<_, i32>(0), row.get::<_, String>(1))),
                    Err(e) if is_transient(&e) => continue,
                    Err(e) => return Err(unavailable(e)),
                };
                let version = match latest {
                    Some((version, hash)) if hash == definition.content_hash => {
                        let version = u32::try_from(version)
                            .map_err(|_| StoreError::unavailable(format!("definition {name} has version {version}")))?;
                        return Ok(PutDefinition { version, created: false });
                    }
                    Some((version, _)) => version.checked_add(1).ok_or_else(|| StoreError::Invalid {
                        field: "version".to_owned(),
                        reason: "the definition has run out of versions".to_owned(),
                    })?,
                    None => 1,
                };
                let inserted = client
                    .execute(
                        "INSERT INTO baton_definitions (name, version, content_hash, body, created_at)
                         VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING",
                        &[&name, &version, &definition.content_hash, &body, &created_at],
                    )
                    .await;
                match inserted {
                    Ok(1) => return Ok(PutDefinition { version: version.unsigned_abs(), created: true }),
                    // Another writer took this version first: look at the latest again.
                    Ok(_) => {}
                    Err(e) if is_transient(&e) => {}
                    Err(e) => return Err(unavailable(e)),
                }
            }
            Err(StoreError::unavailable(format!("definition {name} kept meeting concurrent writers")))
        })
        .await
    }

    async fn get_definition(&self, name: &WorkflowName, version: Option<u32>) -> StoreResult<StoredDefinition> {
        self.bounded(async move {
            let client = self.client().await?;
            let columns = "SELECT version, content_hash, body, created_at FROM baton_definitions";
            let row = match version {
                None => {
                    let sql = format!("{columns} WHERE name = $1 ORDER BY version DESC LIMIT 1");
                    client.query_opt_prepared(&sql, &[&name.as_str()]).await
                }
                Some(version) => match i32::try_from(version) {
                    Ok(v) => {
                        let sql = format!("{columns} WHERE name = $1 AND version = $2");
                        client.query_opt_prepared(&sql, &[&name.as_str(), &v]).await
                    }
                    Err(_) => Ok(None),
                },
            }
            .map_err(unavailable)?;
            match row {
                Some(row) => definition_from_row(name, &row),
                None => Err(StoreError::NotFound(Record::Definition { name: name.clone(), version })),
            }
        })
        .await
    }

    async fn list_definitions(&self) -> StoreResult<Vec<StoredDefinition>> {
        self.bounded(async move {
            let client = self.client().await?;
            let rows = client
                .query(
                    "SELECT d.name, d.version, d.content_hash, d.body, d.created_at FROM baton_definitions d
                     WHERE d.version = (SELECT MAX(m.version) FROM baton_definitions m WHERE m.name = d.name)
                     ORDER BY d.name",
                    &[],
                )
                .await
                .map_err(unavailable)?;
            rows.iter()
                .map(|row| {
                    let name: &str = row.get("name");
                    let name = WorkflowName::new(name).map_err(|e| {
                        StoreError::unavailable(format!("the database holds a bad definition name: {e}"))
                    })?;
                    definition_from_row(&name, row)
                })
                .collect()
        })
        .await
    }

    async fn create_execution(
        &self,
        execution: Execution,
        idempotency_key: Option<IdempotencyKey>,
    ) -> StoreResult<CreatedExecution> {
        let created = self.insert_execution(execution, idempotency_key, false).await?;
        created.ok_or_else(|| StoreError::unavailable("postgres: an execution was refused for a newer version unasked"))
    }

    async fn create_latest_execution(
        &self,
        execution: Execution,
        idempotency_key: Option<IdempotencyKey>,
    ) -> StoreResult<Option<CreatedExecution>> {
        self.insert_execution(execution, idempotency_key, true).await
    }

    async fn get_execution(&self, id: ExecutionId) -> StoreResult<Execution> {
        self.bounded(async move {
            let client = self.client().await?;
            let row = client
                .query_opt_prepared("SELECT record FROM baton_executions WHERE id = $1", &[&id_bytes(id)])
                .await
                .map_err(unavailable)?
                .ok_or(StoreError::NotFound(Record::Execution(id)))?;
            decode_execution(id, row.get(0))
        })
        .await
    }

    async fn find_by_idempotency_key(&self, key: &IdempotencyKey) -> StoreResult<Option<Execution>> {
        self.bounded(async move {
            let client = self.client().await?;
            // The column is UNIQUE, so this is a lookup in its index.
            let row = client
                .query_opt_prepared(
                    "SELECT id, record FROM baton_executions WHERE idempotency_key = $1",
                    &[&key.as_str()],
                )
                .await
                .map_err(unavailable)?;
            row.map(|row| decode_execution(id_from_bytes(row.get(0))?, row.get(1))).transpose()
        })
        .await
    }

    async fn update_execution(&self, update: ExecutionUpdate) -> StoreResult<Execution> {
        self.bounded(async move {
            let client = self.client().await?;
            let id = id_bytes(update.id);
            let fence = self.fence(update.id)?;
            // Optimistic: read, apply, and write only if nobody wrote in between (same revision),
            // and only while this server's fencing epoch is current. Without the epoch a server
            // that was taken over could still fail an execution the new writer had recovered, after
            // its recovery: on the new writer's next start nothing would resume it.
            let sql = format!(
                "UPDATE baton_executions
                 SET state = $1, record = $2, revision = revision + 1, parked = $5, wake_at = $6,
                     expires_at = $9
                 FROM (SELECT 1 FROM {} WHERE id = $7 AND epoch = $8 FOR SHARE) AS current
                 WHERE baton_executions.id = $3 AND revision = $4",
                fence.table
            );
            let read = "SELECT record, revision FROM baton_executions WHERE id = $1";
            for _ in 0..ATTEMPTS {
                let row = match client.query_opt_prepared(read, &[&id]).await {
                    Ok(row) => row.ok_or(StoreError::NotFound(Record::Execution(update.id)))?,
                    Err(e) if is_transient(&e) => continue,
                    Err(e) => return Err(unavailable(e)),
                };
                let mut execution = decode_execution(update.id, row.get(0))?;
                let revision: i64 = row.get(1);
                update.apply(&mut execution)?;
                let record = String::from_utf8(to_json(&execution)).expect("JSON is UTF-8");
                let wake_at =
                    execution.parked.and_then(|p| p.until).map(|at| timestamp_nanos("parked.until", at)).transpose()?;
                let expires_at = execution.expires_at.map(|at| timestamp_nanos("expires_at", at)).transpose()?;
                // `FOR SHARE` makes a takeover wait for this update, and an update that waited on a
                // takeover finds the epoch changed, as a journal frame's insert does.
                let written = client
                    .execute_prepared(
                        &sql,
                        &[
                            &state_text(execution.state),
                            &record,
                            &id,
                            &revision,
                            &execution.parked.is_some(),
                            &wake_at,
                            &fence.id,
                            &fence.epoch,
                            &expires_at,
                        ],
                    )
                    .await;
                match written {
                    Ok(1) => return Ok(execution),
                    // Nothing written: another update came first, or this server was fenced out.
                    Ok(_) => match Self::fenced_out(&client, &fence).await {
                        Ok(true) => return Err(self.fenced_error(update.id, &fence)),
                        Ok(false) => {}
                        Err(e) if is_transient(&e) => {}
                        Err(e) => return Err(unavailable(e)),
                    },
                    Err(e) if is_transient(&e) => {}
                    Err(e) => return Err(unavailable(e)),
                }
            }
            Err(StoreError::unavailable(format!("execution {} kept meeting concurrent writers", update.id)))
        })
        .await
    }

    async fn list_executions(&self, filter: &ExecutionFilter, page: &PageRequest) -> StoreResult<ExecutionPage> {
        self.bounded(async move {
            let Some((low, high)) = key_range(filter, page)? else { return Ok(ExecutionPage::default()) };
            let mut sql = String::from("SELECT id, record FROM baton_executions WHERE TRUE");
            let mut params: Vec<Box<dyn ToSql + Sync + Send>> = Vec::new();
            let mut condition = |sql: &mut String, template: &str, values: Vec<Box<dyn ToSql + Sync + Send>>| {
                let mut clause = template.to_owned();
                for value in values {
                    params.push(value);
                    clause = clause.replacen('?', &format!("${}", params.len()), 1);
                }
                sql.push_str(" AND ");
                sql.push_str(&clause);
            };
            if let Some(workflow) = &filter.workflow {
                condition(&mut sql, "workflow = ?", vec![Box::new(workflow.as_str().to_owned())]);
            }
            if let Some(state) = filter.state {
                condition(&mut sql, "state = ?", vec![Box::new(state_text(state))]);
            }
            // The UNIQUE column's index answers this one alone.
            if let Some(key) = &filter.idempotency_key {
                condition(&mut sql, "idempotency_key = ?", vec![Box::new(key.as_str().to_owned())]);
            }
            for (bound, op_included, op_excluded) in [(low, ">=", ">"), (high, "<=", "<")] {
                let (op, (created, id)) = match bound {
                    std::ops::Bound::Included(key) => (op_included, key),
                    std::ops::Bound::Excluded(key) => (op_excluded, key),
                    std::ops::Bound::Unbounded => continue,
                };
                condition(
                    &mut sql,
                    &format!("(created_at, id) {op} (?, ?)"),
                    vec![Box::new(created), Box::new(id.to_be_bytes().to_vec())],
                );
            }
            let direction = match page.order {
                Order::OldestFirst => "ASC",
                Order::NewestFirst => "DESC",
            };
            let fetch = i64::try_from(page.effective_limit() + 1).unwrap_or(i64::MAX);
            params.push(Box::new(fetch));
            sql.push_str(&format!(" ORDER BY created_at {direction}, id {direction} LIMIT ${}", params.len()));
            let refs: Vec<&(dyn ToSql + Sync)> = params.iter().map(|p| &**p as &(dyn ToSql + Sync)).collect();
            let client = self.client().await?;
            let rows = client.query(&sql, &refs).await.map_err(unavailable)?;
            let executions = rows.iter().map(|row| decode_execution(id_from_bytes(row.get(0))?, row.get(1)));
            paginate(executions, filter, page)
        })
        .await
    }

    async fn unfinished_executions(&self) -> StoreResult<Vec<ExecutionId>> {
        self.bounded(async move {
            use ExecutionState::*;
            let unfinished: Vec<String> = [Created, Running, Paused, Completed, Failed, Cancelled]
                .into_iter()
                .filter(|s| !s.is_terminal())
                .map(state_text)
                .collect();
            let client = self.client().await?;
            let rows = match self.owned_partitions() {
                None => {
                    client
                        .query(
                            "SELECT id FROM baton_executions WHERE state = ANY($1) AND NOT parked
                             ORDER BY created_at, id",
                            &[&unfinished],
                        )
                        .await
                }
                Some(partitions) => {
                    client
                        .query(
                            "SELECT id FROM baton_executions WHERE state = ANY($1) AND NOT parked
                             AND partition_id = ANY($2) ORDER BY created_at, id",
                            &[&unfinished, &partitions],
                        )
                        .await
                }
            }
            .map_err(unavailable)?;
            let ids = rows.iter().map(|row| id_from_bytes(row.get(0))).collect::<StoreResult<Vec<_>>>()?;
            Ok(self.owned(ids))
        })
        .await
    }

    async fn parked_due(&self, before: baton_core::Timestamp, limit: usize) -> StoreResult<Vec<ExecutionId>> {
        self.bounded(async move {
            let client = self.client().await?;
            let limit = i64::try_from(limit).unwrap_or(i64::MAX);
            let before = timestamp_nanos("before", before)?;
            // In a cluster only this node's partitions, filtered before the limit: other nodes'
            // due executions must not fill the page and starve this one.
            let rows = match self.owned_partitions() {
                None => {
                    client
                        .query(
                            "SELECT id FROM baton_executions WHERE wake_at IS NOT NULL AND wake_at <= $1 AND parked
                             ORDER BY wake_at, id LIMIT $2",
                            &[&before, &limit],
                        )
                        .await
                }
                Some(partitions) => {
                    client
                        .query(
                            "SELECT id FROM baton_executions WHERE wake_at IS NOT NULL AND wake_at <= $1 AND parked
                             AND partition_id = ANY($3) ORDER BY wake_at, id LIMIT $2",
                            &[&before, &limit, &partitions],
                        )
                        .await
                }
            }
            .map_err(unavailable)?;
            // A partition lost since the query is not this node's to wake.
            let ids = rows.iter().map(|row| id_from_bytes(row.get(0))).collect::<StoreResult<Vec<_>>>()?;
            Ok(self.owned(ids))
        })
        .await
    }

    async fn append(&self, events: Vec<Event>) -> StoreResult<()> {
        self.bounded(async move {
            match &self.inner.journal {
                Journal::Single(journal) => journal.append(events).await,
                Journal::Partitioned { journal, .. } => journal.append(events).await,
            }
        })
        .await
    }

    async fn remove_expired(&self, now: Timestamp, limit: usize) -> StoreResult<usize> {
        self.bounded(async move {
            let now = timestamp_nanos("now", now)?;
            let limit = i64::try_from(limit).unwrap_or(i64::MAX);
            if limit == 0 {
                return Ok(0);
            }
            let client = self.client().await?;
            // One statement: its chunks and the rows go together. Events of a removed execution
            // still in memory are dropped by their fold, which skips removed executions. In a
            // cluster every node removes; `SKIP LOCKED` lets each take rows the others are not.
            let remove = "WITH due AS (
                    SELECT id FROM baton_executions WHERE expires_at IS NOT NULL AND expires_at <= $1
                    ORDER BY expires_at, id LIMIT $2 FOR UPDATE SKIP LOCKED
                ), chunks AS (
                    DELETE FROM baton_journal_chunks WHERE execution IN (SELECT id FROM due)
                )
                DELETE FROM baton_executions WHERE id IN (SELECT id FROM due)";
            for _ in 0..ATTEMPTS {
                match client.execute(remove, &[&now, &limit]).await {
                    Ok(removed) => return Ok(usize::try_from(removed).unwrap_or(usize::MAX)),
                    Err(e) if is_transient(&e) => {}
                    Err(e) => return Err(unavailable(e)),
                }
            }
            Err(StoreError::unavailable("removing expired executions kept meeting concurrent writers"))
        })
        .await
    }

    async fn read_journal(&self, execution: ExecutionId, from_sequence: u64) -> StoreResult<Vec<Event>> {
        self.bounded(async move {
            let client = self.client().await?;
            let exists = client
                .query_opt_prepared("SELECT 1 FROM baton_executions WHERE id = $1", &[&id_bytes(execution)])
                .await
                .map_err(unavailable)?;
            if exists.is_none() {
                return Err(StoreError::NotFound(Record::Execution(execution)));
            }
            match &self.inner.journal {
                Journal::Single(journal) => journal.read(&client, execution, from_sequence.max(1)).await,
                // Every committed event of a cluster's journals is in chunks, whoever wrote it.
                Journal::Partitioned { .. } => {
                    journal::read_stored(&client, execution, from_sequence.max(1), &[]).await
                }
            }
        })
        .await
    }
}
