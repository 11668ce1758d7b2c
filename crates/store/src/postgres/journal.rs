//! The journal of [`PostgresStore`](super::PostgresStore): one writer per database, fenced by
//! an epoch, that writes each batch of appends as one row.
//!
//! Why one row per batch: a row per event costs PostgreSQL about 10 µs of CPU (executor, heap,
//! index and WAL), which holds a 2-core machine near 100,000 appends a second however well
//! commits are grouped. A batch written as one row costs about as much as one event did.
//!
//! - **Taking over.** [`Journal::take_over`] raises `baton_journal_writer.epoch` and, in the
//!   same transaction, folds every frame the previous writer left. Each frame insert is
//!   conditional on the epoch under `FOR SHARE`, so once a newer writer has taken over, the
//!   older one's inserts write nothing and it stops taking appends: two servers never both
//!   extend a journal.
//! - **Appends.** Writer tasks, each with its own connection, take turns at one queue: one
//!   takes whatever appends queued up (group commit), checks their sequence numbers against
//!   the last sequence number known for each execution (looking up the unknown ones in one
//!   query), and inserts their events as one frame: the events' JSON, a line each. The insert
//!   runs as its own transaction, so a caller is answered once the server flushed its WAL
//!   (`synchronous_commit = on`). While one frame's commit is flushed, the next is on its way;
//!   an append to an execution whose frame is in flight waits for that frame ([`Order`]).
//! - **In memory until folded.** Acknowledged events stay in memory, by execution. After
//!   `fold_events` events or `fold_bytes` bytes, a fold task writes them as one chunk per
//!   execution into `baton_journal_chunks` and deletes their frames, in one transaction.
//! - **Reads** take the execution's events in memory first, then its chunks, and keep each
//!   sequence number once: a fold that commits in between moves events from the first place
//!   to the second, never out of both.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering as AtomicOrdering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use baton_core::{Event, ExecutionId, Record, StoreError, StoreResult};
use bytes::{BufMut, BytesMut};
use tokio::sync::{Mutex as AsyncMutex, Notify, mpsc, oneshot};
use tokio_postgres::error::Severity;
use tokio_postgres::types::{IsNull, ToSql, Type, to_sql_checked};
use tokio_postgres::{Client, Statement, Transaction};

use super::{connect, id_bytes, id_from_bytes, sequence_param, unavailable};
use crate::shared::{Counters, IdHasherBuilder, check_read, check_sequences, encode_by_execution, to_json};

/// The events of one execution, JSON-encoded, with their sequence numbers, oldest first.
pub(super) type Encoded = Vec<(u64, String)>;

/// Maps keyed by execution id (as a number), hashed cheaply.
type ById<V> = HashMap<u128, V, IdHasherBuilder>;

pub(super) fn key(id: ExecutionId) -> u128 {
    id.as_uuid().as_u128()
}

/// The most text one chunk insert carries: larger statements made the server copy and fault
/// in fresh memory for every fold.
const CHUNK_SLICE_BYTES: usize = 256 << 10;

/// What taking over the journal found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Takeover {
    /// This server's writer epoch; the one before it is fenced out.
    pub epoch: i64,
    /// Frames the previous writer left unfolded, now folded.
    pub frames: usize,
    /// Events they held.
    pub events: usize,
    /// Lines of those frames that were not events and were dropped, with where they were.
    pub unreadable: Vec<String>,
}

/// How the journal batches and folds.
#[derive(Debug, Clone, Copy)]
pub(super) struct Options {
    pub(super) max_batch: usize,
    pub(super) writers: usize,
    pub(super) fold_events: usize,
    pub(super) fold_bytes: usize,
}

/// The journal's side of the store: the queue to its writer task and what it holds in memory.
#[derive(Debug)]
pub(super) struct Journal {
    shared: Arc<Shared>,
    appends: mpsc::Sender<AppendRequest>,
    takeover: Takeover,
}

/// Appends waiting for a writer: the events by execution, and who to answer.
#[derive(Debug)]
pub(super) struct AppendRequest {
    pub(super) groups: Vec<(ExecutionId, Encoded)>,
    pub(super) reply: oneshot::Sender<StoreResult<()>>,
}

#[derive(Debug)]
struct Shared {
    state: Mutex<State>,
    /// Wakes the fold task: a window is ready, or the writer has stopped.
    fold_wanted: Notify,
    /// Wakes a writer waiting for room: a fold finished.
    folded: Notify,
    epoch: i64,
    options: Options,
    counters: Arc<Counters>,
    /// Writers waiting for the queue while another holds it.
    idle_writers: AtomicUsize,
}

#[derive(Debug, Default)]
struct State {
    /// The last sequence number of every execution with events in memory, and of some more.
    heads: ById<u64>,
    unfolded: Window,
    /// The window the fold task is writing, readable until its transaction committed.
    folding: Option<Arc<Window>>,
    /// Why the writer takes no more appends, once it cannot.
    stopped: Option<StoreError>,
    /// Keeps each execution's appends in order across writers.
    order: Order,
    /// The number the next frame takes.
    next_frame: i64,
    /// Writer tasks still running.
    writers: usize,
    /// Every writer task has ended: the fold task ends after its last window.
    closed: bool,
}

/// Acknowledged events not yet folded, and the frames that hold them.
#[derive(Debug, Default)]
struct Window {
    by_execution: ById<Lines>,
    events: usize,
    bytes: usize,
    /// Frames commit out of order, so the fold deletes these, not a range.
    frames: Vec<i64>,
}

/// Events of one execution, a JSON line each, as a chunk stores them: the text is ready to be
/// folded as it is. Copying an event in here cost less than keeping the caller's encoding
/// alive until the fold (measured with glibc's allocator): that left it no freed memory to
/// hand out again.
#[derive(Debug, Default)]
struct Lines {
    first: u64,
    last: u64,
    text: String,
}

impl Lines {
    fn push(&mut self, sequence: u64, json: &str) {
        if self.text.is_empty() {
            self.first = sequence;
        } else {
            self.text.push('\n');
        }
        self.last = sequence;
        self.text.push_str(json);
    }

    /// The lines from sequence number `from` on, with the first one's number. The writer
    /// only adds consecutive sequence numbers, so line `i` holds `first + i`.
    fn tail(&self, from: u64) -> Option<(u64, String)> {
        if self.text.is_empty() || from > self.last {
            return None;
        }
        let skip = usize::try_from(from.saturating_sub(self.first)).unwrap_or(usize::MAX);
        let start = if skip == 0 {
            0
        } else {
            self.text.match_indices('\n').nth(skip - 1).map_or(self.text.len(), |(at, _)| at + 1)
        };
        Some((self.first.max(from), self.text[start..].to_owned()))
    }
}

/// Text written into a statement's parameter a piece at a time, each piece on a line of its
/// own, so a frame is never assembled in memory first.
struct JoinedLines<I>(I);

impl<'a, I: Iterator<Item = &'a str> + Clone> std::fmt::Debug for JoinedLines<I> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JoinedLines").field("lines", &self.0.clone().count()).finish()
    }
}

impl<'a, I: Iterator<Item = &'a str> + Clone> ToSql for JoinedLines<I> {
    fn to_sql(&self, _: &Type, out: &mut BytesMut) -> Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        // TEXT's binary form is the UTF-8 text itself.
        for (index, line) in self.0.clone().enumerate() {
            if index > 0 {
                out.put_u8(b'\n');
            }
            out.put_slice(line.as_bytes());
        }
        Ok(IsNull::No)
    }

    fn accepts(ty: &Type) -> bool {
        *ty == Type::TEXT
    }

    to_sql_checked!();
}

impl Shared {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Stops the journal taking appends, for `reason`, which it returns as the error.
    fn stop(&self, reason: String) -> StoreError {
        self.stop_with(StoreError::unavailable(reason))
    }

    /// Stops the journal taking appends, answering them with `error` from now on.
    fn stop_with(&self, error: StoreError) -> StoreError {
        self.state().stopped.get_or_insert(error).clone()
    }

    fn is_full(&self, state: &State) -> bool {
        state.unfolded.events >= self.options.fold_events || state.unfolded.bytes >= self.options.fold_bytes
    }

    /// Hands a full window to the fold task unless it is busy with one.
    fn maybe_fold(&self, state: &mut State) {
        if state.folding.is_none() && self.is_full(state) {
            state.folding = Some(Arc::new(std::mem::take(&mut state.unfolded)));
            self.fold_wanted.notify_one();
        }
    }

    /// Waits while a full window waits behind the one being folded, so memory stays bounded.
    async fn wait_for_room(&self) {
        loop {
            let folded = self.folded.notified();
            {
                let state = self.state();
                if state.folding.is_none() || !self.is_full(&state) || state.stopped.is_some() {
                    return;
                }
            }
            folded.await;
        }
    }
}

impl Journal {
    /// Takes the journal over on `client`, folding what the previous writer left, and starts
    /// the writer and fold tasks.
    pub(super) async fn take_over(
        config: &tokio_postgres::Config,
        mut client: Client,
        options: Options,
        counters: Arc<Counters>,
    ) -> StoreResult<Self> {
        let (takeover, last_frame) = recover(&mut client).await?;
        let shared = Arc::new(Shared {
            // Each epoch numbers its frames from its own 2^32 block, so a number an older writer
            // is still settling is never this writer's.
            state: Mutex::new(State {
                next_frame: (last_frame + 1).max(takeover.epoch.saturating_mul(1 << 32)),
                ..State::default()
            }),
            fold_wanted: Notify::new(),
            folded: Notify::new(),
            epoch: takeover.epoch,
            options,
            counters,
            idle_writers: AtomicUsize::new(0),
        });
        let (appends, queue) = mpsc::channel(options.max_batch.max(1));
        let queue = Arc::new(AsyncMutex::new(queue));
        let writers = options.writers.max(1);
        shared.state().writers = writers;
        let mut first = Some(client);
        for _ in 0..writers {
            let writer = Writer { shared: Arc::clone(&shared), connection: Connection::new(config, first.take()) };
            tokio::spawn(writer.run(Arc::clone(&queue)));
        }
        tokio::spawn(fold_loop(config.clone(), Arc::clone(&shared)));
        Ok(Self { shared, appends, takeover })
    }

    pub(super) fn takeover(&self) -> &Takeover {
        &self.takeover
    }

    /// Notes that `execution` was just created here: its journal is empty, and the first
    /// append to it needs no lookup.
    pub(super) fn created(&self, execution: ExecutionId) {
        self.shared.state().heads.entry(key(execution)).or_insert(0);
    }

    pub(super) async fn append(&self, events: Vec<Event>) -> StoreResult<()> {
        if events.is_empty() {
            return Ok(());
        }
        // Encoding here, on the caller's task, keeps it off the writer's critical path.
        let groups = encode_by_execution(events, |event| String::from_utf8(to_json(event)).expect("JSON is UTF-8"));
        let (reply, answer) = oneshot::channel();
        let stopped = || StoreError::unavailable("the postgres journal writer has stopped");
        self.appends.send(AppendRequest { groups, reply }).await.map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }

    /// Reads the journal of `execution` from `from` (at least 1); the caller has checked that
    /// the execution exists.
    pub(super) async fn read(&self, client: &Client, execution: ExecutionId, from: u64) -> StoreResult<Vec<Event>> {
        // Memory first: a fold committing after this moves events into the chunks read next.
        let in_memory: Vec<(u64, String)> = {
            let state = self.shared.state();
            let folding = state.folding.as_deref().and_then(|w| w.by_execution.get(&key(execution)));
            let unfolded = state.unfolded.by_execution.get(&key(execution));
            folding.into_iter().chain(unfolded).filter_map(|lines| lines.tail(from)).collect()
        };
        read_stored(client, execution, from, &in_memory).await
    }
}

/// Reads the journal of `execution` from `from` out of its chunks, then of `in_memory` (JSON
/// lines each with the first one's sequence number) what comes after the chunks.
pub(super) async fn read_stored(
    client: &Client,
    execution: ExecutionId,
    from: u64,
    in_memory: &[(u64, String)],
) -> StoreResult<Vec<Event>> {
    let rows = client
        .query(
            "SELECT first_sequence, events FROM baton_journal_chunks
             WHERE execution = $1 AND last_sequence >= $2 ORDER BY last_sequence",
            &[&id_bytes(execution), &i64::try_from(from).unwrap_or(i64::MAX)],
        )
        .await
        .map_err(unavailable)?;
    let mut entries: Vec<(u64, Result<Event, String>)> = Vec::new();
    for row in &rows {
        let first = u64::try_from(row.get::<_, i64>(0)).unwrap_or(0);
        let decoded = numbered_lines(first, row.get(1)).map(|(at, line)| decode_line(line, at));
        entries.extend(decoded.filter(|(sequence, _)| *sequence >= from));
    }
    let last_stored = entries.last().map_or(0, |(sequence, _)| *sequence);
    for (first, lines) in in_memory {
        let newer = numbered_lines(*first, lines).filter(|(sequence, _)| *sequence > last_stored);
        entries.extend(newer.map(|(sequence, line)| decode_line(line, sequence)));
    }
    check_read(execution, from, entries)
}

/// The error of a write made under writer epoch `epoch` after a newer writer took over.
pub(super) fn fenced(epoch: i64) -> StoreError {
    StoreError::Fenced(format!(
        "another server has taken over this database's journal (this one held writer epoch {epoch}); it writes no \
         more"
    ))
}

/// The lines of `text` with the sequence numbers they stand at, the first at `first`.
fn numbered_lines(first: u64, text: &str) -> impl Iterator<Item = (u64, &str)> {
    (first..).zip(text.split('\n'))
}

/// A stored line as `(its sequence number, the event or why it is unreadable)`; `at` stands in
/// for the sequence number of a line that does not parse.
fn decode_line(line: &str, at: u64) -> (u64, Result<Event, String>) {
    match serde_json::from_str::<Event>(line) {
        Ok(event) => (event.sequence, Ok(event)),
        Err(e) => (at, Err(e.to_string())),
    }
}

/// Inserts the frame only while this writer's epoch is current. `FOR SHARE` makes a takeover
/// wait for the insert, and an insert that waited on a takeover finds the epoch changed.
const INSERT_FRAME: &str = "INSERT INTO baton_journal_frames (frame, events)
     SELECT $2, $3 FROM baton_journal_writer WHERE id = 0 AND epoch = $1 FOR SHARE";

/// The last stored sequence number of each existing execution among `$1`. Only executions
/// with no events in memory are looked up, so their chunks hold all their events.
const HEADS: &str = "SELECT e.id, (SELECT MAX(c.last_sequence) FROM baton_journal_chunks c WHERE c.execution = e.id)
     FROM UNNEST($1::BYTEA[]) AS u(id) JOIN baton_executions e ON e.id = u.id";

/// Takes the writer role and folds the frames the previous writer left, in one transaction:
/// the new epoch's row lock keeps the previous writer from adding frames meanwhile.
pub(super) async fn recover(client: &mut Client) -> StoreResult<(Takeover, i64)> {
    let tx = client.transaction().await.map_err(unavailable)?;
    let epoch: i64 = tx
        .query_one("UPDATE baton_journal_writer SET epoch = epoch + 1 WHERE id = 0 RETURNING epoch", &[])
        .await
        .map_err(unavailable)?
        .get(0);
    let rows =
        tx.query("SELECT frame, events FROM baton_journal_frames ORDER BY frame", &[]).await.map_err(unavailable)?;
    let mut takeover = Takeover { epoch, frames: rows.len(), ..Takeover::default() };
    let mut window: ById<Lines> = ById::default();
    let mut last_frame = 0_i64;
    for row in &rows {
        let frame: i64 = row.get(0);
        let lines: &str = row.get(1);
        last_frame = last_frame.max(frame);
        // An empty frame stands for an insert that was lost (see `Connection::resolve`).
        for (index, line) in lines.split('\n').enumerate().filter(|(_, line)| !line.is_empty()) {
            match serde_json::from_str::<Event>(line) {
                Ok(event) => {
                    takeover.events += 1;
                    window.entry(key(event.execution)).or_default().push(event.sequence, line);
                }
                Err(e) => takeover.unreadable.push(format!("frame {frame}, line {}: {e}", index + 1)),
            }
        }
    }
    if !rows.is_empty() {
        insert_chunks(&tx, &window).await.map_err(unavailable)?;
        tx.execute("DELETE FROM baton_journal_frames WHERE frame <= $1", &[&last_frame]).await.map_err(unavailable)?;
    }
    tx.commit().await.map_err(unavailable)?;
    Ok((takeover, last_frame))
}

/// Writes one chunk per execution of `window`, in statements of about [`CHUNK_SLICE_BYTES`],
/// but for executions removed meanwhile (their retention ran out).
async fn insert_chunks(tx: &Transaction<'_>, window: &ById<Lines>) -> Result<(), tokio_postgres::Error> {
    let insert = tx
        .prepare(
            "INSERT INTO baton_journal_chunks (execution, first_sequence, last_sequence, events)
             SELECT u.* FROM UNNEST($1::BYTEA[], $2::BIGINT[], $3::BIGINT[], $4::TEXT[]) AS u(execution, f, l, e)
             WHERE EXISTS (SELECT 1 FROM baton_executions x WHERE x.id = u.execution)",
        )
        .await?;
    let chunks: Vec<(u128, &Lines)> =
        window.iter().filter(|(_, lines)| !lines.text.is_empty()).map(|(id, lines)| (*id, lines)).collect();
    let mut start = 0;
    while start < chunks.len() {
        let mut end = start;
        let mut bytes = 0;
        while end < chunks.len() && bytes < CHUNK_SLICE_BYTES {
            bytes += chunks[end].1.text.len();
            end += 1;
        }
        let slice = &chunks[start..end];
        let executions: Vec<Vec<u8>> = slice.iter().map(|(id, _)| id.to_be_bytes().to_vec()).collect();
        let firsts: Vec<i64> = slice.iter().map(|(_, l)| i64::try_from(l.first).unwrap_or(i64::MAX)).collect();
        let lasts: Vec<i64> = slice.iter().map(|(_, l)| i64::try_from(l.last).unwrap_or(i64::MAX)).collect();
        let texts: Vec<&str> = slice.iter().map(|(_, l)| l.text.as_str()).collect();
        tx.execute(&insert, &[&executions, &firsts, &lasts, &texts]).await?;
        start = end;
    }
    Ok(())
}

/// A writer task: takes appends, checks their sequence numbers, commits them as one frame on
/// its own connection and answers their callers. Several writers share the queue, so while
/// one waits for its commit to be flushed the next frame is on its way.
struct Writer {
    shared: Arc<Shared>,
    connection: Connection,
}

/// How a frame insert ended.
enum Outcome {
    Durable,
    /// A newer writer holds the journal: nothing was written, and nothing more will be.
    Fenced,
    /// Nothing was written. `true` when an empty frame took the number (see
    /// [`Connection::resolve`]), which the next fold deletes.
    Failed(StoreError, bool),
    /// Whether the frame committed stays unknown: the journal stops.
    Lost(StoreError),
}

impl Writer {
    async fn run(mut self, queue: Arc<AsyncMutex<mpsc::Receiver<AppendRequest>>>) {
        let max = self.shared.options.max_batch.max(1);
        let mut incoming = Vec::with_capacity(max);
        loop {
            // Held appends whose frames finished go first; otherwise wait for new ones.
            let ready = self.shared.state().order.take_ready(Vec::new());
            let batch = if ready.is_empty() {
                self.shared.idle_writers.fetch_add(1, AtomicOrdering::Relaxed);
                let mut queue = queue.lock().await;
                self.shared.idle_writers.fetch_sub(1, AtomicOrdering::Relaxed);
                let Some(first) = queue.recv().await else { break };
                incoming.push(first);
                // A burst that finds another writer idle is shared with it, so both frames are
                // in flight together rather than one after the other.
                let queued = queue.len();
                let more = if self.shared.idle_writers.load(AtomicOrdering::Relaxed) > 0 {
                    queued.div_ceil(2)
                } else {
                    queued
                };
                // Only what is queued already: waiting for more would keep `first` waiting.
                let more = more.min(max - 1);
                if more > 0 {
                    queue.recv_many(&mut incoming, more).await;
                }
                drop(queue);
                self.shared.state().order.take_ready(std::mem::take(&mut incoming))
            } else {
                ready
            };
            if !batch.is_empty() {
                self.write_batch(batch).await;
            }
        }
        let mut state = self.shared.state();
        state.writers -= 1;
        if state.writers == 0 {
            state.closed = true;
            drop(state);
            self.shared.fold_wanted.notify_one();
        }
    }

    /// Checks `requests`, answers the refused ones, and commits the rest as one frame.
    async fn write_batch(&mut self, requests: Vec<AppendRequest>) {
        let shared = Arc::clone(&self.shared);
        let ids: Vec<u128> = requests.iter().flat_map(|r| &r.groups).map(|(id, _)| key(*id)).collect();
        let began = Instant::now();
        let answer_all = |requests: Vec<AppendRequest>, e: &StoreError| {
            shared.state().order.release(&ids);
            for request in requests {
                let _ = request.reply.send(Err(e.clone()));
            }
        };
        shared.wait_for_room().await;
        let stopped = shared.state().stopped.clone();
        if let Some(stopped) = stopped {
            return answer_all(requests, &stopped);
        }
        if let Err(e) = self.learn_heads(&requests).await {
            return answer_all(requests, &e);
        }
        let mut heads: ById<u64> = ById::default();
        let mut accepted = Vec::with_capacity(requests.len());
        let number = {
            let mut state = shared.state();
            for request in requests {
                // Checked against the heads as the appends accepted before it leave them.
                let verdict = request.groups.iter().try_for_each(|(id, group)| {
                    let last = heads
                        .get(&key(*id))
                        .or_else(|| state.heads.get(&key(*id)))
                        .copied()
                        .ok_or(StoreError::NotFound(Record::Execution(*id)))?;
                    check_sequences(*id, last, group.iter().map(|(sequence, _)| *sequence))?;
                    group.iter().try_for_each(|(sequence, _)| sequence_param(*sequence).map(drop))
                });
                match verdict {
                    Ok(()) => {
                        for (id, group) in &request.groups {
                            if let Some((last, _)) = group.last() {
                                heads.insert(key(*id), *last);
                            }
                        }
                        accepted.push(request);
                    }
                    Err(e) => {
                        let _ = request.reply.send(Err(e));
                    }
                }
            }
            state.next_frame += 1;
            state.next_frame - 1
        };
        if accepted.is_empty() {
            shared.state().order.release(&ids);
            return;
        }
        let frame =
            JoinedLines(accepted.iter().flat_map(|r| &r.groups).flat_map(|(_, group)| group).map(|(_, e)| e.as_str()));
        let outcome = self.connection.write(shared.epoch, number, &frame).await;
        let failure = match outcome {
            Outcome::Durable => None,
            Outcome::Fenced => Some(shared.stop_with(fenced(shared.epoch))),
            Outcome::Failed(e, tombstone) => {
                if tombstone {
                    shared.state().unfolded.frames.push(number);
                }
                Some(e)
            }
            Outcome::Lost(e) => Some(shared.stop(format!(
                "postgres: whether journal frame {number} was committed is unknown ({e}); restart the server to \
                 write again"
            ))),
        };
        if let Some(failure) = failure {
            return answer_all(accepted, &failure);
        }
        {
            let mut state = shared.state();
            let window = &mut state.unfolded;
            window.frames.push(number);
            for (id, group) in accepted.iter().flat_map(|r| &r.groups) {
                let lines = window.by_execution.entry(key(*id)).or_default();
                for (sequence, event) in group {
                    lines.push(*sequence, event);
                    window.bytes += event.len();
                }
                window.events += group.len();
            }
            state.heads.extend(heads);
            state.order.release(&ids);
            shared.maybe_fold(&mut state);
        }
        shared.counters.committed(accepted.len(), began.elapsed());
        for request in accepted {
            // The caller may have given up waiting; the append stands regardless.
            let _ = request.reply.send(Ok(()));
        }
    }

    /// Looks up the heads of executions in `requests` the journal does not know yet.
    async fn learn_heads(&mut self, requests: &[AppendRequest]) -> StoreResult<()> {
        let mut unknown: Vec<Vec<u8>> = {
            let state = self.shared.state();
            let ids = requests.iter().flat_map(|r| &r.groups).map(|(id, _)| *id);
            ids.filter(|id| !state.heads.contains_key(&key(*id))).map(id_bytes).collect()
        };
        if unknown.is_empty() {
            return Ok(());
        }
        unknown.sort_unstable();
        unknown.dedup();
        let (client, statements) = self.connection.get().await?;
        let rows = client.query(&statements[HEADS_AT], &[&unknown]).await.map_err(unavailable)?;
        let mut state = self.shared.state();
        for row in rows {
            let id = id_from_bytes(row.get(0))?;
            let last: Option<i64> = row.get(1);
            state.heads.entry(key(id)).or_insert_with(|| last.map_or(0, |l| u64::try_from(l).unwrap_or(0)));
        }
        Ok(())
    }
}

/// Keeps each execution's appends in order across writers: an append to an execution with a
/// frame in flight, or with an append held before it, is held until that frame finished, so
/// a frame that fails never leaves a later one with a gap.
#[derive(Debug, Default)]
pub(super) struct Order {
    /// Executions with events in a frame in flight, and how many such frames.
    busy: ById<usize>,
    /// Held appends, oldest first.
    held: Vec<AppendRequest>,
}

impl Order {
    /// The held appends that can go now, then those of `incoming` that can; holds the rest
    /// and marks what goes as in flight.
    pub(super) fn take_ready(&mut self, incoming: Vec<AppendRequest>) -> Vec<AppendRequest> {
        if self.held.is_empty() && incoming.is_empty() {
            return Vec::new();
        }
        // Executions with an append held in this pass: later appends to them wait behind it.
        let mut held_ids: ById<()> = ById::default();
        let mut ready = Vec::with_capacity(incoming.len());
        let mut still_held = Vec::new();
        for request in std::mem::take(&mut self.held).into_iter().chain(incoming) {
            let blocked = |id: &u128| self.busy.contains_key(id) || held_ids.contains_key(id);
            if request.groups.iter().any(|(id, _)| blocked(&key(*id))) {
                held_ids.extend(request.groups.iter().map(|(id, _)| (key(*id), ())));
                still_held.push(request);
            } else {
                ready.push(request);
            }
        }
        self.held = still_held;
        for (id, _) in ready.iter().flat_map(|r| &r.groups) {
            *self.busy.entry(key(*id)).or_default() += 1;
        }
        ready
    }

    /// Marks a frame's executions (one entry per group) as no longer in flight.
    pub(super) fn release(&mut self, ids: &[u128]) {
        for id in ids {
            if let Some(count) = self.busy.get_mut(id) {
                *count -= 1;
                if *count == 0 {
                    self.busy.remove(id);
                }
            }
        }
    }
}

/// The writers' statements, by index in [`WRITER_STATEMENTS`].
const INSERT_AT: usize = 0;
const HEADS_AT: usize = 1;
const WRITER_STATEMENTS: &[&str] = &[INSERT_FRAME, HEADS];

/// A writer's connection with its prepared statements, opened again when it closes.
struct Connection {
    config: tokio_postgres::Config,
    client: Option<Client>,
    statements: Vec<Statement>,
}

impl Connection {
    fn new(config: &tokio_postgres::Config, client: Option<Client>) -> Self {
        Self { config: config.clone(), client, statements: Vec::new() }
    }

    async fn get(&mut self) -> StoreResult<(&Client, &[Statement])> {
        if self.client.as_ref().is_none_or(Client::is_closed) {
            self.statements.clear();
            self.client = Some(connect(&self.config).await?);
        }
        let client = self.client.as_ref().expect("connected above");
        if self.statements.is_empty() {
            for sql in WRITER_STATEMENTS {
                self.statements.push(client.prepare(sql).await.map_err(unavailable)?);
            }
        }
        Ok((client, &self.statements))
    }

    /// Writes a frame with one statement, its own transaction.
    async fn write(&mut self, epoch: i64, number: i64, frame: &(dyn ToSql + Sync)) -> Outcome {
        let written = match self.get().await {
            Ok((client, statements)) => client.execute(&statements[INSERT_AT], &[&epoch, &number, frame]).await,
            Err(e) => return Outcome::Failed(e, false),
        };
        match written {
            Ok(1) => Outcome::Durable,
            Ok(_) => Outcome::Fenced,
            // An error the statement met rolled it back. A fatal one (the server shutting down,
            // the backend terminated) or a broken connection may have come after the commit.
            Err(e) if e.as_db_error().is_some_and(|db| db.parsed_severity() == Some(Severity::Error)) => {
                Outcome::Failed(unavailable(e), false)
            }
            Err(e) => {
                self.client = None;
                match self.resolve(epoch, number).await {
                    Some(Settled::Committed) => Outcome::Durable,
                    Some(Settled::Refused) => Outcome::Failed(unavailable(e), true),
                    Some(Settled::Fenced) => Outcome::Fenced,
                    None => Outcome::Lost(unavailable(e)),
                }
            }
        }
    }

    /// Finds out whether frame `number`, whose insert lost its connection, was committed, or
    /// `None` when the server stays out of reach. An empty frame takes the number when it is
    /// free, so a lost insert the server runs late cannot commit after all; like every frame,
    /// only while this writer's epoch is current.
    async fn resolve(&mut self, epoch: i64, number: i64) -> Option<Settled> {
        for attempt in 0..RESOLVE_ATTEMPTS {
            tokio::time::sleep(backoff(attempt)).await;
            let Ok((client, _)) = self.get().await else { continue };
            let settled = async {
                let placed = client
                    .execute(
                        "INSERT INTO baton_journal_frames (frame, events)
                         SELECT $1, '' FROM (
                             SELECT 1 FROM baton_journal_writer WHERE id = 0 AND epoch = $2 FOR SHARE
                         ) AS current
                         ON CONFLICT (frame) DO NOTHING",
                        &[&number, &epoch],
                    )
                    .await?;
                if placed == 1 {
                    return Ok(Settled::Refused);
                }
                // Frame numbers are not reused across epochs (see `Journal::take_over`): a
                // frame under this number is the lost one. None means a newer writer holds the
                // journal, and has folded the frame if it was committed.
                let found = client.query_opt("SELECT 1 FROM baton_journal_frames WHERE frame = $1", &[&number]).await?;
                Ok::<_, tokio_postgres::Error>(if found.is_some() { Settled::Committed } else { Settled::Fenced })
            }
            .await;
            match settled {
                Ok(settled) => return Some(settled),
                Err(_) => self.client = None,
            }
        }
        None
    }
}

/// What became of a frame whose insert lost its connection.
enum Settled {
    Committed,
    /// It was not committed, and an empty frame took its number.
    Refused,
    /// A newer writer holds the journal.
    Fenced,
}

/// Attempts at learning a lost frame's fate before the journal stops; with [`backoff`], about
/// 45 seconds.
const RESOLVE_ATTEMPTS: u32 = 12;

fn backoff(attempt: u32) -> Duration {
    Duration::from_millis(100 << attempt.min(6))
}

/// Folds each full window into chunks, one transaction per window, until the writer ends.
async fn fold_loop(config: tokio_postgres::Config, shared: Arc<Shared>) {
    let mut client: Option<Client> = None;
    loop {
        let wanted = shared.fold_wanted.notified();
        let (window, closed) = {
            let state = shared.state();
            (state.folding.clone(), state.closed)
        };
        let Some(window) = window else {
            if closed {
                return;
            }
            wanted.await;
            continue;
        };
        let mut attempt = 0;
        loop {
            match fold(&config, &mut client, shared.epoch, &window).await {
                Ok(true) => break,
                // A newer writer folds these frames when it takes over.
                Ok(false) => return,
                Err(_) if shared.state().closed => return,
                Err(_) => {
                    tokio::time::sleep(backoff(attempt)).await;
                    attempt = attempt.saturating_add(1);
                }
            }
        }
        let mut state = shared.state();
        state.folding = None;
        // Forgets the heads of executions whose events are all in chunks now, but not of those
        // a writer is appending to: it looked them up for the batch it is checking.
        let State { heads, unfolded, order, .. } = &mut *state;
        heads.retain(|id, _| unfolded.by_execution.contains_key(id) || order.busy.contains_key(id));
        shared.maybe_fold(&mut state);
        drop(state);
        shared.folded.notify_waiters();
    }
}

/// Writes `window` as chunks and deletes its frames. `Ok(false)` when a newer writer holds
/// the journal.
async fn fold(
    config: &tokio_postgres::Config,
    client: &mut Option<Client>,
    epoch: i64,
    window: &Window,
) -> StoreResult<bool> {
    if client.as_ref().is_none_or(Client::is_closed) {
        *client = Some(connect(config).await?);
    }
    let client = client.as_mut().expect("connected above");
    let tx = client.transaction().await.map_err(unavailable)?;
    let current = tx
        .query_opt("SELECT 1 FROM baton_journal_writer WHERE id = 0 AND epoch = $1 FOR SHARE", &[&epoch])
        .await
        .map_err(unavailable)?;
    if current.is_none() {
        return Ok(false);
    }
    insert_chunks(&tx, &window.by_execution).await.map_err(unavailable)?;
    tx.execute("DELETE FROM baton_journal_frames WHERE frame = ANY($1::BIGINT[])", &[&window.frames])
        .await
        .map_err(unavailable)?;
    tx.commit().await.map_err(unavailable)?;
    Ok(true)
}
