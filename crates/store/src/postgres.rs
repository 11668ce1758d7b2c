//! [`PostgresStore`]: the multi-node store, over tokio-postgres.
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
//! Journal appends go to a few writer tasks, each with its own connection, that take turns at
//! the queue: one takes whatever has queued up and writes it in one transaction (group commit)
//! while the others' transactions are in flight, so the server flushes their WAL together too.
//! A caller is answered once the transaction holding its append committed, which with
//! `synchronous_commit = on` (the default) means the WAL is flushed. A batch costs two round
//! trips (`BEGIN` with the journal heads, then the insert of every row with `COMMIT`), and
//! callers encode their events before queueing. Concurrent batches stay safe: each checks
//! continuity against what is committed, and the primary key refuses a repeat. The other calls
//! share a small pool of connections.

use std::collections::HashMap;
use std::future::Future;
use std::pin::pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use baton_core::store::timestamp_nanos;
use baton_core::{
    CreatedExecution, Event, Execution, ExecutionFilter, ExecutionId, ExecutionPage, ExecutionState, ExecutionUpdate,
    IdempotencyKey, NewDefinition, Order, PageRequest, PutDefinition, Record, Store, StoreError, StoreResult,
    StoredDefinition, Timestamp, WorkflowName,
};
use tokio::sync::{Mutex as AsyncMutex, mpsc, oneshot};
use tokio_postgres::error::SqlState;
use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, NoTls, Statement};

use crate::CommitStats;
use crate::shared::{Counters, check_read, check_sequences, group_by_execution, key_range, paginate, to_json};

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
pub const MIGRATIONS: &[Migration] = &[Migration {
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
}];

/// How to reach the database.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// A libpq-style connection string: `postgres://user@host:5432/db` or
    /// `host=/run/postgresql port=5432 user=baton dbname=baton`. TLS is not supported yet.
    pub url: String,
    /// Connections for everything but journal appends, which have their own.
    pub pool_size: usize,
    /// The most appends one transaction takes.
    pub max_batch: usize,
    /// Connections writing journal appends, each committing one batch at a time.
    pub append_connections: usize,
}

impl Config {
    /// Defaults for `url`: 4 pooled connections, batches of up to 1000 appends, 4 append
    /// connections.
    pub fn new(url: impl Into<String>) -> Self {
        Self { url: url.into(), pool_size: 4, max_batch: 1000, append_connections: 4 }
    }
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
    pool: Vec<Mutex<Option<Arc<Client>>>>,
    next: AtomicUsize,
    appends: mpsc::Sender<AppendRequest>,
    counters: Arc<Counters>,
}

#[derive(Debug)]
struct AppendRequest {
    /// The events grouped by execution: sequence numbers and JSON, encoded by the caller.
    groups: Vec<(ExecutionId, Vec<(u64, String)>)>,
    reply: oneshot::Sender<StoreResult<()>>,
}

/// How often a statement that met a serialization failure or lost a race is tried in all.
const ATTEMPTS: usize = 16;

impl PostgresStore {
    /// Connects, brings the schema up to date and starts the append writer.
    /// [`StoreError::Invalid`] for a bad URL, [`StoreError::Unavailable`] when the server
    /// cannot be reached or its schema is newer than this build.
    pub async fn connect(config: &Config) -> StoreResult<Self> {
        let pg: tokio_postgres::Config =
            config.url.parse().map_err(|e| StoreError::Invalid { field: "url".to_owned(), reason: describe(&e) })?;
        let mut first = connect(&pg).await?;
        migrate(&mut first).await?;
        let pool: Vec<_> = (0..config.pool_size.max(1)).map(|_| Mutex::new(None)).collect();
        *pool[0].lock().unwrap_or_else(PoisonError::into_inner) = Some(Arc::new(first));
        let (appends, queue) = mpsc::channel(config.max_batch.max(1));
        let queue = Arc::new(AsyncMutex::new(queue));
        let counters = Arc::new(Counters::default());
        for _ in 0..config.append_connections.max(1) {
            let (queue, counters) = (Arc::clone(&queue), Arc::clone(&counters));
            tokio::spawn(append_loop(pg.clone(), queue, config.max_batch.max(1), counters));
        }
        Ok(Self { inner: Arc::new(Inner { config: pg, pool, next: AtomicUsize::new(0), appends, counters }) })
    }

    /// What group commit of journal appends did so far.
    pub fn commit_stats(&self) -> CommitStats {
        self.inner.counters.snapshot()
    }

    /// A pooled connection, reconnecting when the one in the slot has closed.
    async fn client(&self) -> StoreResult<Arc<Client>> {
        let slot = &self.inner.pool[self.inner.next.fetch_add(1, Ordering::Relaxed) % self.inner.pool.len()];
        let current = slot.lock().unwrap_or_else(PoisonError::into_inner).clone();
        if let Some(client) = current
            && !client.is_closed()
        {
            return Ok(client);
        }
        let client = Arc::new(connect(&self.inner.config).await?);
        *slot.lock().unwrap_or_else(PoisonError::into_inner) = Some(Arc::clone(&client));
        Ok(client)
    }
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

/// An append writer: its own connection, one transaction per batch of queued appends. The
/// writers share the queue; the one holding it takes the next batch while the others commit,
/// so appends gather during every commit.
async fn append_loop(
    config: tokio_postgres::Config,
    queue: Arc<AsyncMutex<mpsc::Receiver<AppendRequest>>>,
    max_batch: usize,
    counters: Arc<Counters>,
) {
    let mut writer: Option<Writer> = None;
    let mut batch = Vec::with_capacity(max_batch);
    loop {
        let taken = queue.lock().await.recv_many(&mut batch, max_batch).await;
        if taken == 0 {
            break;
        }
        if writer.as_ref().is_some_and(|w| w.client.is_closed()) {
            writer = None;
        }
        if writer.is_none() {
            match Writer::connect(&config, Arc::clone(&counters)).await {
                Ok(fresh) => writer = Some(fresh),
                Err(e) => {
                    for request in batch.drain(..) {
                        let _ = request.reply.send(Err(e.clone()));
                    }
                    continue;
                }
            }
        }
        let writer = writer.as_mut().expect("connected above");
        let results = writer.commit(&batch).await;
        for (request, result) in batch.drain(..).zip(results) {
            // The caller may have given up waiting; the append stands regardless.
            let _ = request.reply.send(result);
        }
    }
}

struct Writer {
    client: Client,
    heads: Statement,
    insert: Statement,
    counters: Arc<Counters>,
}

impl Writer {
    async fn connect(config: &tokio_postgres::Config, counters: Arc<Counters>) -> StoreResult<Self> {
        let client = connect(config).await?;
        let heads = client
            .prepare(
                // A join with the ids rather than `e.id = ANY($1)`, which on a small table the
                // planner runs as a scan comparing every row with every id.
                "SELECT e.id, (SELECT MAX(j.sequence) FROM baton_journal j WHERE j.execution = e.id)
                 FROM UNNEST($1::BYTEA[]) AS u(id) JOIN baton_executions e ON e.id = u.id",
            )
            .await
            .map_err(unavailable)?;
        let insert = client
            .prepare(
                "INSERT INTO baton_journal (execution, sequence, event)
                 SELECT * FROM UNNEST($1::BYTEA[], $2::BIGINT[], $3::TEXT[])",
            )
            .await
            .map_err(unavailable)?;
        Ok(Self { client, heads, insert, counters })
    }

    /// Commits a batch, one result per request. When the batch transaction fails (another node
    /// wrote the same journal, a serialization failure), each request is tried on its own, so
    /// one bad append cannot fail the others.
    async fn commit(&mut self, requests: &[AppendRequest]) -> Vec<StoreResult<()>> {
        match self.try_commit(requests).await {
            Ok(results) => results,
            Err(e) if requests.len() == 1 && !(is_transient(&e) || is_conflict(&e)) => vec![Err(unavailable(e))],
            Err(_) => {
                let mut results = Vec::with_capacity(requests.len());
                for request in requests {
                    results.push(self.commit_one(request).await);
                }
                results
            }
        }
    }

    async fn commit_one(&mut self, request: &AppendRequest) -> StoreResult<()> {
        for _ in 1..ATTEMPTS {
            match self.try_commit(std::slice::from_ref(request)).await {
                Ok(mut results) => return results.pop().expect("one result per request"),
                // A lost race shows up as a conflict on the next look at the journal.
                Err(e) if is_transient(&e) || is_conflict(&e) => {}
                Err(e) => return Err(unavailable(e)),
            }
        }
        Err(StoreError::unavailable("the append kept meeting concurrent writers"))
    }

    async fn try_commit(&mut self, requests: &[AppendRequest]) -> Result<Vec<StoreResult<()>>, tokio_postgres::Error> {
        let result = self.try_commit_inner(requests).await;
        if result.is_err() && !self.client.is_closed() {
            // Leaves no transaction open for the next batch; harmless when none is.
            let _ = self.client.batch_execute("ROLLBACK").await;
        }
        result
    }

    async fn try_commit_inner(
        &mut self,
        requests: &[AppendRequest],
    ) -> Result<Vec<StoreResult<()>>, tokio_postgres::Error> {
        let began = std::time::Instant::now();
        let mut ids: Vec<Vec<u8>> = requests.iter().flat_map(|r| &r.groups).map(|(id, _)| id_bytes(*id)).collect();
        ids.sort_unstable();
        ids.dedup();
        // One round trip: the server reads the heads inside the transaction just begun.
        let (begun, rows) = both(self.client.batch_execute("BEGIN"), self.client.query(&self.heads, &[&ids])).await;
        begun?;
        let mut heads: HashMap<ExecutionId, u64> = HashMap::with_capacity(ids.len());
        for row in rows? {
            let id: &[u8] = row.get(0);
            let last: Option<i64> = row.get(1);
            if let Ok(id) = id_from_bytes(id) {
                heads.insert(id, last.map_or(0, |l| u64::try_from(l).unwrap_or(0)));
            }
        }
        let rows: usize = requests.iter().flat_map(|r| &r.groups).map(|(_, group)| group.len()).sum();
        let (mut executions, mut sequences, mut events) =
            (Vec::with_capacity(rows), Vec::with_capacity(rows), Vec::with_capacity(rows));
        let mut results = Vec::with_capacity(requests.len());
        for request in requests {
            let verdict = request.groups.iter().try_for_each(|(id, group)| {
                let last = *heads.get(id).ok_or(StoreError::NotFound(Record::Execution(*id)))?;
                check_sequences(*id, last, group.iter().map(|(sequence, _)| *sequence))?;
                group.iter().try_for_each(|(sequence, _)| sequence_param(*sequence).map(drop))
            });
            if verdict.is_ok() {
                for (id, group) in &request.groups {
                    if let Some((last, _)) = group.last() {
                        heads.insert(*id, *last);
                    }
                    for (sequence, event) in group {
                        executions.push(id_bytes(*id));
                        sequences.push(sequence_param(*sequence).expect("checked above"));
                        events.push(event.as_str());
                    }
                }
            }
            results.push(verdict);
        }
        if executions.is_empty() {
            self.client.batch_execute("COMMIT").await?;
        } else {
            // One round trip. Should the insert fail, the server ends the aborted transaction
            // at COMMIT without error, and the insert's error is what counts.
            let (inserted, committed) = both(
                self.client.execute(&self.insert, &[&executions, &sequences, &events]),
                self.client.batch_execute("COMMIT"),
            )
            .await;
            inserted?;
            committed?;
        }
        self.counters.committed(results.len(), began.elapsed());
        Ok(results)
    }
}

/// Runs two futures to completion together and returns both outputs. On one connection,
/// tokio-postgres sends the requests of both in the order they are first polled, without
/// waiting for the first answer: a pipeline.
async fn both<A: Future, B: Future>(a: A, b: B) -> (A::Output, B::Output) {
    let (mut a, mut b) = (pin!(a), pin!(b));
    let (mut first, mut second) = (None, None);
    std::future::poll_fn(|cx| {
        if first.is_none()
            && let std::task::Poll::Ready(out) = a.as_mut().poll(cx)
        {
            first = Some(out);
        }
        if second.is_none()
            && let std::task::Poll::Ready(out) = b.as_mut().poll(cx)
        {
            second = Some(out);
        }
        if first.is_some() && second.is_some() { std::task::Poll::Ready(()) } else { std::task::Poll::Pending }
    })
    .await;
    (first.expect("ready above"), second.expect("ready above"))
}

fn is_conflict(e: &tokio_postgres::Error) -> bool {
    e.code() == Some(&SqlState::UNIQUE_VIOLATION)
}

impl Store for PostgresStore {
    async fn put_definition(&self, definition: NewDefinition) -> StoreResult<PutDefinition> {
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
    }

    async fn get_definition(&self, name: &WorkflowName, version: Option<u32>) -> StoreResult<StoredDefinition> {
        let client = self.client().await?;
        let columns = "SELECT version, content_hash, body, created_at FROM baton_definitions";
        let row = match version {
            None => {
                let sql = format!("{columns} WHERE name = $1 ORDER BY version DESC LIMIT 1");
                client.query_opt(&sql, &[&name.as_str()]).await
            }
            Some(version) => match i32::try_from(version) {
                Ok(v) => {
                    client
                        .query_opt(&format!("{columns} WHERE name = $1 AND version = $2"), &[&name.as_str(), &v])
                        .await
                }
                Err(_) => Ok(None),
            },
        }
        .map_err(unavailable)?;
        match row {
            Some(row) => definition_from_row(name, &row),
            None => Err(StoreError::NotFound(Record::Definition { name: name.clone(), version })),
        }
    }

    async fn list_definitions(&self) -> StoreResult<Vec<StoredDefinition>> {
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
                let name = WorkflowName::new(name)
                    .map_err(|e| StoreError::unavailable(format!("the database holds a bad definition name: {e}")))?;
                definition_from_row(&name, row)
            })
            .collect()
    }

    async fn create_execution(
        &self,
        execution: Execution,
        idempotency_key: Option<IdempotencyKey>,
    ) -> StoreResult<CreatedExecution> {
        let created_at = timestamp_nanos("created_at", execution.created_at)?;
        let client = self.client().await?;
        let id = id_bytes(execution.id);
        let key = idempotency_key.as_ref().map(IdempotencyKey::as_str);
        let record = String::from_utf8(to_json(&execution)).expect("JSON is UTF-8");
        let state = state_text(execution.state);
        for _ in 0..ATTEMPTS {
            let inserted = client
                .execute(
                    "INSERT INTO baton_executions (id, workflow, state, created_at, revision, idempotency_key, record)
                     VALUES ($1, $2, $3, $4, 0, $5, $6) ON CONFLICT DO NOTHING",
                    &[&id, &execution.workflow.as_str(), &state, &created_at, &key, &record],
                )
                .await;
            match inserted {
                Ok(1) => return Ok(CreatedExecution { execution, created: true }),
                Ok(_) => {}
                Err(e) if is_transient(&e) => continue,
                Err(e) => return Err(unavailable(e)),
            }
            // Nothing inserted: the key was used before, or the id is taken.
            let Some(key) = key else { return Err(StoreError::AlreadyExists(execution.id)) };
            let existing =
                client.query_opt("SELECT id, record FROM baton_executions WHERE idempotency_key = $1", &[&key]).await;
            match existing {
                Ok(Some(row)) => {
                    let id = id_from_bytes(row.get(0))?;
                    let execution = decode_execution(id, row.get(1))?;
                    return Ok(CreatedExecution { execution, created: false });
                }
                Ok(None) => return Err(StoreError::AlreadyExists(execution.id)),
                Err(e) if is_transient(&e) => {}
                Err(e) => return Err(unavailable(e)),
            }
        }
        Err(StoreError::unavailable(format!("execution {} kept meeting concurrent writers", execution.id)))
    }

    async fn get_execution(&self, id: ExecutionId) -> StoreResult<Execution> {
        let client = self.client().await?;
        let row = client
            .query_opt("SELECT record FROM baton_executions WHERE id = $1", &[&id_bytes(id)])
            .await
            .map_err(unavailable)?
            .ok_or(StoreError::NotFound(Record::Execution(id)))?;
        decode_execution(id, row.get(0))
    }

    async fn update_execution(&self, update: ExecutionUpdate) -> StoreResult<Execution> {
        let client = self.client().await?;
        let id = id_bytes(update.id);
        // Optimistic: read, apply, and write only if nobody wrote in between (same revision).
        for _ in 0..ATTEMPTS {
            let row =
                match client.query_opt("SELECT record, revision FROM baton_executions WHERE id = $1", &[&id]).await {
                    Ok(row) => row.ok_or(StoreError::NotFound(Record::Execution(update.id)))?,
                    Err(e) if is_transient(&e) => continue,
                    Err(e) => return Err(unavailable(e)),
                };
            let mut execution = decode_execution(update.id, row.get(0))?;
            let revision: i64 = row.get(1);
            update.apply(&mut execution)?;
            let record = String::from_utf8(to_json(&execution)).expect("JSON is UTF-8");
            let written = client
                .execute(
                    "UPDATE baton_executions SET state = $1, record = $2, revision = revision + 1
                     WHERE id = $3 AND revision = $4",
                    &[&state_text(execution.state), &record, &id, &revision],
                )
                .await;
            match written {
                Ok(1) => return Ok(execution),
                Ok(_) => {}
                Err(e) if is_transient(&e) => {}
                Err(e) => return Err(unavailable(e)),
            }
        }
        Err(StoreError::unavailable(format!("execution {} kept meeting concurrent writers", update.id)))
    }

    async fn list_executions(&self, filter: &ExecutionFilter, page: &PageRequest) -> StoreResult<ExecutionPage> {
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
    }

    async fn unfinished_executions(&self) -> StoreResult<Vec<ExecutionId>> {
        use ExecutionState::*;
        let unfinished: Vec<String> = [Created, Running, Paused, Completed, Failed, Cancelled]
            .into_iter()
            .filter(|s| !s.is_terminal())
            .map(state_text)
            .collect();
        let client = self.client().await?;
        let rows = client
            .query("SELECT id FROM baton_executions WHERE state = ANY($1) ORDER BY created_at, id", &[&unfinished])
            .await
            .map_err(unavailable)?;
        rows.iter().map(|row| id_from_bytes(row.get(0))).collect()
    }

    async fn append(&self, events: Vec<Event>) -> StoreResult<()> {
        if events.is_empty() {
            return Ok(());
        }
        // Encoding here, on the caller's task, keeps it off the writers' critical path.
        let groups = group_by_execution(events)
            .into_iter()
            .map(|(id, group)| {
                let encoded = group
                    .iter()
                    .map(|event| (event.sequence, String::from_utf8(to_json(event)).expect("JSON is UTF-8")));
                (id, encoded.collect())
            })
            .collect();
        let (reply, answer) = oneshot::channel();
        let stopped = || StoreError::unavailable("the postgres append writer has stopped");
        self.inner.appends.send(AppendRequest { groups, reply }).await.map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }

    async fn read_journal(&self, execution: ExecutionId, from_sequence: u64) -> StoreResult<Vec<Event>> {
        let client = self.client().await?;
        let id = id_bytes(execution);
        let exists =
            client.query_opt("SELECT 1 FROM baton_executions WHERE id = $1", &[&id]).await.map_err(unavailable)?;
        if exists.is_none() {
            return Err(StoreError::NotFound(Record::Execution(execution)));
        }
        let from = from_sequence.max(1);
        let rows = client
            .query(
                "SELECT sequence, event FROM baton_journal WHERE execution = $1 AND sequence >= $2 ORDER BY sequence",
                &[&id, &i64::try_from(from).unwrap_or(i64::MAX)],
            )
            .await
            .map_err(unavailable)?;
        let entries = rows.iter().map(|row| {
            let sequence: i64 = row.get(0);
            let event: &str = row.get(1);
            (u64::try_from(sequence).unwrap_or(0), serde_json::from_str::<Event>(event).map_err(|e| e.to_string()))
        });
        check_read(execution, from, entries)
    }
}
