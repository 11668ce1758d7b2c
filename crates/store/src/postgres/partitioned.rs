//! The journal of a [`PostgresStore`](super::PostgresStore) in a cluster: several servers
//! write, each only for the partitions it owns, every write conditional on the partition's
//! epoch.
//!
//! - **Appends.** Writer tasks, each with its own connection (`append_connections`), take
//!   turns at one queue: one takes whatever appends queued up (group commit) and writes them
//!   with one prepared statement, its own transaction, so one round trip ([`INSERT_CHUNKS`]):
//!   it reads the epochs of their partitions `FOR SHARE` (a claim of one of them waits for the
//!   commit, and a write that waited on a claim finds the epoch raised) and inserts one chunk
//!   row per execution only if every epoch is still the one the appends were accepted under.
//!   Otherwise it writes nothing and names the partitions that moved on: their appends are
//!   answered with [`StoreError::Fenced`] and the rest sent again. It also checks that each
//!   execution still exists (chunks have no foreign key, whose check locked the execution row
//!   of every chunk: 60% of a commit's time): an append to one removed meanwhile is answered
//!   with [`StoreError::NotFound`]. Each append stays all or nothing. While one commit's WAL is flushed the next is on its way on the other
//!   connection; an append to an execution with a commit in flight waits for it (the single
//!   writer's `Order`), so each execution's appends stay in order.
//! - **Nothing in memory, no frames.** Every committed event is in `baton_journal_chunks` at
//!   once, so any server reads any journal whole, whoever owns it; a server that claims a
//!   partition has nothing to fold. The price is a row per execution per commit, where the
//!   single-writer journal writes a row per commit: for a commit of 69 appends, 483 µs of
//!   server time and 32 KB of WAL against a frame's 72 µs and 3 KB (`pg_stat_statements`),
//!   which bounds the rate of many writers; with one append a commit the two cost the same.
//! - **Heads** (the last sequence number of each execution) are remembered with the epoch they
//!   were learnt under (an execution created here starts known, at 0), and looked up again
//!   once the epoch moved: another server may have appended meanwhile.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use baton_core::{Event, ExecutionId, Ownership, Record, StoreError, StoreResult};
use tokio::sync::{Mutex as AsyncMutex, mpsc, oneshot};
use tokio_postgres::{Client, Statement};

use super::journal::{AppendRequest, Order, key};
use super::{connect, id_bytes, id_from_bytes, is_transient, sequence_param, unavailable};
use crate::shared::{Counters, check_sequences, encode_by_execution, to_json};

/// Last sequence number by execution, with the partition epoch it was learnt under.
type Heads = Arc<Mutex<HashMap<ExecutionId, (i64, u64)>>>;

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The journal's side of a store in a cluster: the queue to its writer task.
#[derive(Debug)]
pub(super) struct Journal {
    appends: mpsc::Sender<AppendRequest>,
    heads: Heads,
}

/// The error of a write for `execution` when this server does not own its partition under the
/// epoch the database holds.
pub(super) fn fenced(execution: ExecutionId, partition: u32, epoch: Option<i64>) -> StoreError {
    match epoch {
        Some(epoch) => StoreError::Fenced(format!(
            "partition {partition} of execution {execution} was taken over by another server (this one held epoch \
             {epoch}); it writes no more for it"
        )),
        None => StoreError::Fenced(format!(
            "this server does not own partition {partition}, which execution {execution} belongs to"
        )),
    }
}

impl Journal {
    /// Starts `writers` writer tasks, each with its own connection.
    pub(super) fn start(
        config: &tokio_postgres::Config,
        ownership: Arc<dyn Ownership>,
        max_batch: usize,
        writers: usize,
        timeout: Duration,
        counters: Arc<Counters>,
    ) -> Self {
        let max_batch = max_batch.max(1);
        let (appends, queue) = mpsc::channel(max_batch);
        let queue = Arc::new(AsyncMutex::new(queue));
        let heads = Heads::default();
        let order = Arc::new(Mutex::new(Order::default()));
        for _ in 0..writers.max(1) {
            let writer = Writer {
                config: config.clone(),
                client: None,
                ownership: Arc::clone(&ownership),
                heads: Arc::clone(&heads),
                order: Arc::clone(&order),
                counters: Arc::clone(&counters),
                max_batch,
                timeout,
            };
            tokio::spawn(writer.run(Arc::clone(&queue)));
        }
        Self { appends, heads }
    }

    /// Notes that `execution` was just created here under partition epoch `epoch`: its journal
    /// is empty, and the first append to it needs no lookup.
    pub(super) fn created(&self, execution: ExecutionId, epoch: i64) {
        lock(&self.heads).entry(execution).or_insert((epoch, 0));
    }

    pub(super) async fn append(&self, events: Vec<Event>) -> StoreResult<()> {
        if events.is_empty() {
            return Ok(());
        }
        let groups = encode_by_execution(events, |event| String::from_utf8(to_json(event)).expect("JSON is UTF-8"));
        let (reply, answer) = oneshot::channel();
        let stopped = || StoreError::unavailable("the postgres journal writer has stopped");
        self.appends.send(AppendRequest { groups, reply }).await.map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }
}

struct Writer {
    config: tokio_postgres::Config,
    /// The connection with [`INSERT_CHUNKS`] and [`HEADS`] prepared on it: a statement sent
    /// by its text would cost a round trip more each time.
    client: Option<(Client, Statement, Statement)>,
    ownership: Arc<dyn Ownership>,
    heads: Heads,
    /// Keeps each execution's appends in order across the writers.
    order: Arc<Mutex<Order>>,
    counters: Arc<Counters>,
    max_batch: usize,
    /// How long a commit may wait for the server before the connection counts as lost.
    timeout: Duration,
}

/// An append this batch takes, with the partition epochs it was checked under.
struct Accepted {
    request: AppendRequest,
    epochs: Vec<(u32, i64)>,
}

impl Writer {
    async fn run(mut self, queue: Arc<AsyncMutex<mpsc::Receiver<AppendRequest>>>) {
        loop {
            // Appends held behind a commit that has finished go first; otherwise new ones.
            let ready = lock(&self.order).take_ready(Vec::new());
            let batch = if ready.is_empty() {
                let mut queue = queue.lock().await;
                let Some(first) = queue.recv().await else { break };
                let mut incoming = vec![first];
                // Only what is queued already: waiting for more would keep `first` waiting.
                let more = queue.len().min(self.max_batch - 1);
                if more > 0 {
                    queue.recv_many(&mut incoming, more).await;
                }
                drop(queue);
                lock(&self.order).take_ready(incoming)
            } else {
                ready
            };
            if batch.is_empty() {
                continue;
            }
            let ids: Vec<u128> = batch.iter().flat_map(|r| &r.groups).map(|(id, _)| key(*id)).collect();
            let began = Instant::now();
            let written = self.write_batch(batch).await;
            lock(&self.order).release(&ids);
            if written > 0 {
                self.counters.committed(written, began.elapsed());
            }
        }
    }

    /// Writes what of `requests` this server may, and answers every one. Returns how many were
    /// written.
    async fn write_batch(&mut self, requests: Vec<AppendRequest>) -> usize {
        // Appends to partitions this server does not own are refused before any SQL.
        let mut accepted = Vec::with_capacity(requests.len());
        for request in requests {
            let owned: Result<Vec<(u32, i64)>, StoreError> = request
                .groups
                .iter()
                .map(|(id, _)| {
                    self.ownership.of(*id).ok_or_else(|| fenced(*id, id.partition(self.ownership.partitions()), None))
                })
                .collect();
            match owned {
                Ok(epochs) => accepted.push(Accepted { request, epochs }),
                Err(e) => {
                    let _ = request.reply.send(Err(e));
                }
            }
        }
        if accepted.is_empty() {
            return 0;
        }
        for attempt in 1..=super::ATTEMPTS {
            let commit = tokio::time::timeout(self.timeout, self.commit(&mut accepted)).await;
            let commit = commit.unwrap_or_else(|_| {
                Err(Failure::broken(StoreError::unavailable(format!(
                    "postgres did not answer a journal commit within {:?}; connecting again",
                    self.timeout
                ))))
            });
            match commit {
                Ok(()) => break,
                Err(e) if e.transient && attempt < super::ATTEMPTS => {}
                Err(e) => {
                    // Whether the commit landed is unknown: heads are looked up again.
                    let mut heads = lock(&self.heads);
                    for entry in &accepted {
                        for (id, _) in &entry.request.groups {
                            heads.remove(id);
                        }
                    }
                    drop(heads);
                    if e.broken {
                        self.client = None;
                    }
                    for entry in accepted {
                        let _ = entry.request.reply.send(Err(e.error.clone()));
                    }
                    return 0;
                }
            }
        }
        let written = accepted.len();
        for entry in accepted {
            let _ = entry.request.reply.send(Ok(()));
        }
        written
    }

    /// Looks up the heads not known under the current epoch, then writes the chunks in one
    /// statement that checks the epochs (see [`INSERT_CHUNKS`]). Refused appends are answered
    /// and removed from `accepted`; on success every one left is committed.
    async fn commit(&mut self, accepted: &mut Vec<Accepted>) -> Result<(), Failure> {
        if self.client.as_ref().is_none_or(|(client, _, _)| client.is_closed()) {
            self.client = None;
            let client = connect(&self.config).await.map_err(Failure::broken)?;
            let insert = client.prepare(INSERT_CHUNKS).await.map_err(Failure::broken)?;
            let heads = client.prepare(HEADS).await.map_err(Failure::broken)?;
            self.client = Some((client, insert, heads));
        }
        let (client, insert, heads) = self.client.as_ref().expect("connected above");
        let unknown: Vec<Vec<u8>> = {
            let cached = lock(&self.heads);
            accepted
                .iter()
                .flat_map(|a| a.request.groups.iter().zip(&a.epochs))
                .filter(|((id, _), (_, epoch))| cached.get(id).is_none_or(|(known, _)| known != epoch))
                .map(|((id, _), _)| id_bytes(*id))
                .collect()
        };
        // Read outside the insert's transaction: the epochs the insert checks are this server's,
        // so every write an earlier owner made has committed, and nobody else appends meanwhile.
        let mut learnt: HashMap<ExecutionId, u64> = HashMap::new();
        if !unknown.is_empty() {
            for row in client.query(heads, &[&unknown]).await.map_err(Failure::from)? {
                let id = id_from_bytes(row.get(0)).map_err(Failure::fatal)?;
                let last: Option<i64> = row.get(1);
                learnt.insert(id, last.map_or(0, |l| u64::try_from(l).unwrap_or(0)));
            }
        }
        loop {
            let batch = Batch::of(accepted, &learnt, &lock(&self.heads));
            if batch.rows.is_empty() {
                return Ok(());
            }
            let p = batch.params();
            let refused = client
                .query(insert, &[&p.ids, &p.lasts, &p.firsts, &p.texts, &p.partitions, &p.epochs])
                .await
                .map_err(Failure::from)?;
            let mut stale: Vec<(u32, i64)> = Vec::new();
            let mut gone: Vec<ExecutionId> = Vec::new();
            for row in &refused {
                match (row.get::<_, Option<i32>>(0), row.get::<_, Option<i64>>(1), row.get::<_, Option<&[u8]>>(2)) {
                    (Some(partition), Some(epoch), _) => stale.push((partition.unsigned_abs(), epoch)),
                    (_, _, Some(id)) => gone.push(id_from_bytes(id).map_err(Failure::fatal)?),
                    _ => {
                        return Err(Failure::fatal(StoreError::unavailable(
                            "postgres: a refusal of a journal commit names nothing",
                        )));
                    }
                }
            }
            if refused.is_empty() {
                let mut heads = lock(&self.heads);
                for (id, (epoch, last)) in batch.heads {
                    heads.insert(id, (epoch, last));
                }
                return Ok(());
            }
            // Nothing was written: the appends to a partition taken over, or to an execution
            // removed, are answered, the rest go again. Rare: only while a partition changes
            // hands, or for an append that came after its execution's retention ran out.
            if !gone.is_empty() {
                let mut heads = lock(&self.heads);
                for id in &gone {
                    heads.remove(id);
                }
            }
            for entry in std::mem::take(accepted) {
                let groups = entry.request.groups.iter().zip(&entry.epochs);
                let taken = groups.clone().find(|(_, held)| stale.contains(held));
                let removed = groups.map(|((id, _), _)| id).find(|id| gone.contains(id));
                match (taken, removed) {
                    (Some(((id, _), (partition, epoch))), _) => {
                        let error = fenced(*id, *partition, Some(*epoch));
                        let _ = entry.request.reply.send(Err(error));
                    }
                    (None, Some(id)) => {
                        let _ = entry.request.reply.send(Err(StoreError::NotFound(Record::Execution(*id))));
                    }
                    (None, None) => accepted.push(entry),
                }
            }
        }
    }
}

/// Inserts the chunks (`$1`..`$4`) only if every partition in `$5` still has the epoch beside
/// it in `$6` and every execution in `$1` exists, as one statement, so one round trip. It
/// returns the partitions whose epoch moved on (or that are gone) as `(partition, epoch,
/// NULL)`, the executions that are gone as `(NULL, NULL, execution)`, and when it returns any
/// it inserted nothing.
///
/// Why this fences: `FOR SHARE` returns each partition row as last committed, waiting for a
/// claim that is raising its epoch (READ COMMITTED rechecks the row the claim wrote), and
/// a claim that comes later waits for this statement's commit. The epochs are compared after
/// the locks, and the insert runs only once every row was locked and matched: finding that
/// `stale` is empty reads every row of `held`.
///
/// The executions are looked up, not locked: a foreign key's lock of each execution row cost
/// more than the rest of the statement (see migration 9). Executions are removed only once
/// their retention ran out, long after their last append.
const INSERT_CHUNKS: &str = "WITH held AS MATERIALIZED (
         SELECT id, epoch FROM baton_partitions WHERE id = ANY($5::INT4[]) ORDER BY id FOR SHARE
     ),
     stale AS MATERIALIZED (
         SELECT e.id, e.epoch FROM UNNEST($5::INT4[], $6::BIGINT[]) AS e(id, epoch)
         LEFT JOIN held ON held.id = e.id
         WHERE held.epoch IS DISTINCT FROM e.epoch
     ),
     gone AS MATERIALIZED (
         SELECT u.id FROM UNNEST($1::BYTEA[]) AS u(id)
         WHERE NOT EXISTS (SELECT 1 FROM baton_executions x WHERE x.id = u.id)
     ),
     written AS (
         INSERT INTO baton_journal_chunks (execution, last_sequence, first_sequence, events)
         SELECT * FROM UNNEST($1::BYTEA[], $2::BIGINT[], $3::BIGINT[], $4::TEXT[])
         WHERE NOT EXISTS (SELECT 1 FROM stale) AND NOT EXISTS (SELECT 1 FROM gone)
     )
     SELECT id, epoch, NULL::BYTEA FROM stale
     UNION ALL SELECT NULL, NULL, id FROM gone";

/// The last stored sequence number of each existing execution among `$1`.
const HEADS: &str = "SELECT e.id, (SELECT MAX(c.last_sequence) FROM baton_journal_chunks c WHERE c.execution = e.id)
     FROM UNNEST($1::BYTEA[]) AS u(id) JOIN baton_executions e ON e.id = u.id";

/// What one insert writes: a chunk row per execution, the epochs it is checked under, and the
/// heads it leaves.
struct Batch {
    rows: BTreeMap<ExecutionId, (u64, u64, String)>,
    epochs: BTreeMap<u32, Vec<i64>>,
    heads: HashMap<ExecutionId, (i64, u64)>,
}

impl Batch {
    /// Checks the appends' sequence numbers against the heads as the appends before each leave
    /// them; the ones that fail are answered and removed from `accepted`.
    fn of(
        accepted: &mut Vec<Accepted>,
        learnt: &HashMap<ExecutionId, u64>,
        cached: &HashMap<ExecutionId, (i64, u64)>,
    ) -> Self {
        let mut batch = Self { rows: BTreeMap::new(), epochs: BTreeMap::new(), heads: HashMap::new() };
        for entry in std::mem::take(accepted) {
            let verdict = entry.request.groups.iter().zip(&entry.epochs).try_for_each(|((id, group), (_, epoch))| {
                let last = batch
                    .heads
                    .get(id)
                    .map(|(_, last)| last)
                    .or_else(|| learnt.get(id))
                    .or_else(|| cached.get(id).filter(|(known, _)| known == epoch).map(|(_, last)| last))
                    .copied()
                    .ok_or(StoreError::NotFound(Record::Execution(*id)))?;
                check_sequences(*id, last, group.iter().map(|(sequence, _)| *sequence))?;
                group.iter().try_for_each(|(sequence, _)| sequence_param(*sequence).map(drop))
            });
            if let Err(e) = verdict {
                let _ = entry.request.reply.send(Err(e));
                continue;
            }
            for ((id, group), (partition, epoch)) in entry.request.groups.iter().zip(&entry.epochs) {
                let (Some((first, _)), Some((last, _))) = (group.first(), group.last()) else { continue };
                let epochs = batch.epochs.entry(*partition).or_default();
                if !epochs.contains(epoch) {
                    epochs.push(*epoch);
                }
                batch.heads.insert(*id, (*epoch, *last));
                let row = batch.rows.entry(*id).or_insert_with(|| (*first, *last, String::new()));
                row.1 = *last;
                for (_, json) in group {
                    if !row.2.is_empty() {
                        row.2.push('\n');
                    }
                    row.2.push_str(json);
                }
            }
            accepted.push(entry);
        }
        batch
    }

    /// The parameters of [`INSERT_CHUNKS`].
    fn params(&self) -> Params<'_> {
        let ids = self.rows.keys().map(|id| id_bytes(*id)).collect();
        let firsts = self.rows.values().map(|(first, _, _)| i64::try_from(*first).unwrap_or(i64::MAX)).collect();
        let lasts = self.rows.values().map(|(_, last, _)| i64::try_from(*last).unwrap_or(i64::MAX)).collect();
        let texts = self.rows.values().map(|(_, _, text)| text.as_str()).collect();
        let (partitions, epochs) = self
            .epochs
            .iter()
            .flat_map(|(partition, epochs)| {
                epochs.iter().map(|epoch| (i32::try_from(*partition).unwrap_or(i32::MAX), *epoch))
            })
            .unzip();
        Params { ids, lasts, firsts, texts, partitions, epochs }
    }
}

struct Params<'a> {
    ids: Vec<Vec<u8>>,
    lasts: Vec<i64>,
    firsts: Vec<i64>,
    texts: Vec<&'a str>,
    partitions: Vec<i32>,
    epochs: Vec<i64>,
}

/// Why a batch's transaction failed.
struct Failure {
    error: StoreError,
    /// Trying again may succeed (a serialization failure or deadlock).
    transient: bool,
    /// The connection may be unusable.
    broken: bool,
}

impl Failure {
    fn broken(error: impl Into<FailureSource>) -> Self {
        let mut failure = Self::from_source(error.into());
        failure.broken = true;
        failure
    }

    fn fatal(error: StoreError) -> Self {
        Self { error, transient: false, broken: false }
    }

    fn from_source(source: FailureSource) -> Self {
        match source {
            FailureSource::Postgres(e) => {
                Self { transient: is_transient(&e), broken: e.as_db_error().is_none(), error: unavailable(e) }
            }
            FailureSource::Store(error) => Self { error, transient: false, broken: true },
        }
    }
}

enum FailureSource {
    Postgres(tokio_postgres::Error),
    Store(StoreError),
}

impl From<tokio_postgres::Error> for FailureSource {
    fn from(e: tokio_postgres::Error) -> Self {
        Self::Postgres(e)
    }
}

impl From<StoreError> for FailureSource {
    fn from(e: StoreError) -> Self {
        Self::Store(e)
    }
}

impl From<tokio_postgres::Error> for Failure {
    fn from(e: tokio_postgres::Error) -> Self {
        Self::from_source(FailureSource::Postgres(e))
    }
}
