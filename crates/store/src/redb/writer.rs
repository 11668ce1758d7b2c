//! The redb writer thread: it applies whatever writes have queued up in one transaction, and
//! the writes themselves (definitions, creations, updates).

use super::*;

/// A write waiting in the redb writer's queue.
pub(super) trait Job: Send + std::fmt::Debug {
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

pub(super) struct Pending<T, F> {
    pub(super) work: Option<F>,
    pub(super) result: Option<StoreResult<T>>,
    pub(super) reply: oneshot::Sender<StoreResult<T>>,
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
pub(super) const IDLE_SLICES: usize = 8;

/// The redb writer thread.
pub(super) struct Writer {
    pub(super) db: Arc<Handle>,
    /// The handle a write failed on: it takes no more writes until the file is opened again,
    /// at once or, when that fails, before the next transaction.
    pub(super) failed: Option<Arc<Database>>,
    pub(super) counters: Arc<Counters>,
    pub(super) unfolded: Arc<Unfolded>,
    pub(super) dir: PathBuf,
    /// The fold under way, a slice per transaction.
    pub(super) fold: Option<Fold>,
    /// Whether the last fold failed: the next starts when a job arrives (the log writer asks
    /// again when it needs room), not in a loop.
    pub(super) fold_failed: bool,
    pub(super) fold_slice: usize,
}

impl Writer {
    /// One transaction per batch of whatever has queued up, each with the next slice of a fold
    /// when one is under way, so a fold never holds up other writes for long. Runs until the
    /// queue is closed and nothing is left to fold.
    pub(super) fn run(mut self, mut queue: mpsc::Receiver<Box<dyn Job>>) {
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

    pub(super) fn commit_batch(&mut self, batch: &mut Vec<Box<dyn Job>>) {
        let began = Instant::now();
        let failure = self.commit(batch).err().map(|fail| {
            if let Fail::Storage(error) = &fail
                && is_no_space(error)
            {
                self.counters.no_space();
                return StoreError::NoSpace(format!("writing {}: {error}", self.dir.join(FILE_NAME).display()));
            }
            fail.into_store_error()
        });
        let answered = batch.iter().filter(|job| job.answers_a_caller()).count();
        if failure.is_none() && answered > 0 {
            self.counters.committed(answered, began.elapsed());
        }
        for job in batch.drain(..) {
            job.finish(failure.as_ref());
        }
        if self.failed.is_some() {
            // Whatever the failure was, the handle takes no more writes and soon no reads: open
            // the file again now; when that fails, the next transaction tries again.
            let _ = self.db.replace(self.failed.take());
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

    pub(super) fn commit(&mut self, batch: &mut [Box<dyn Job>]) -> Result<(), Fail> {
        let callers_wait = batch.iter().any(|job| job.answers_a_caller());
        // The file could not be opened again after a failed write: try once more.
        self.db.replace(None)?;
        let db = self.db.get()?;
        let committed = self.commit_on(&db, batch, callers_wait);
        if let Err(Fail::Storage(_)) = &committed {
            self.failed = Some(db);
        }
        committed
    }

    fn commit_on(&mut self, db: &Database, batch: &mut [Box<dyn Job>], callers_wait: bool) -> Result<(), Fail> {
        let mut txn = db.begin_write()?;
        {
            let mut tables = Tables::open(&txn)?;
            for job in batch.iter_mut() {
                // On error the transaction is dropped, which aborts it: nothing of the batch stays.
                job.apply(&mut tables)?;
            }
            if let Some(fold) = &mut self.fold {
                // With no caller waiting, a larger slice costs no one and saves commits.
                let slice = if callers_wait { self.fold_slice } else { self.fold_slice.saturating_mul(IDLE_SLICES) };
                fold.apply_slice(&mut tables, slice)?;
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

/// Whether a redb error is the disk (or the user's quota on it) being full.
fn is_no_space(error: &::redb::Error) -> bool {
    match error {
        ::redb::Error::Io(e) => wal::is_no_space(e),
        _ => std::error::Error::source(error)
            .and_then(|source| source.downcast_ref::<std::io::Error>())
            .is_some_and(wal::is_no_space),
    }
}

pub(super) fn put_definition(t: &mut Tables<'_>, definition: NewDefinition) -> Result<PutDefinition, Fail> {
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

pub(super) fn create_execution(
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
        t.keys.insert(id, key.as_str())?;
    }
    Ok(CreatedExecution { execution, created: true })
}

pub(super) fn update_execution(t: &mut Tables<'_>, update: &ExecutionUpdate) -> Result<Execution, Fail> {
    let mut execution = load_execution(&t.executions, update.id)?;
    // `unfinished` lists what recovery loads: unfinished and not parked; `parked`, by wake
    // time, what the engine loads back as timers come due.
    let open = |e: &Execution| !e.state.is_terminal() && e.parked.is_none();
    let wake = |e: &Execution| e.parked.and_then(|p| p.until);
    let (was_open, woke, expired) = (open(&execution), wake(&execution), execution.expires_at);
    update.apply(&mut execution)?;
    let key = key_of(execution.created_at, execution.id)?;
    t.executions.insert(key.1, to_json(&execution).as_slice())?;
    match (was_open, open(&execution)) {
        (true, false) => {
            t.unfinished.remove(key)?;
        }
        (false, true) => {
            t.unfinished.insert(key, ())?;
        }
        _ => {}
    }
    if woke != wake(&execution) {
        if let Some(at) = woke {
            t.parked.remove((timestamp_nanos("parked.until", at)?, key.1))?;
        }
        if let Some(at) = wake(&execution) {
            t.parked.insert((timestamp_nanos("parked.until", at)?, key.1), ())?;
        }
    }
    if expired != execution.expires_at {
        if let Some(at) = expired {
            t.expiring.remove((timestamp_nanos("expires_at", at)?, key.1))?;
        }
        if let Some(at) = execution.expires_at {
            t.expiring.insert((timestamp_nanos("expires_at", at)?, key.1), ())?;
        }
    }
    Ok(execution)
}

/// Removes up to `limit` executions that expired at or before `now` (nanoseconds), each with
/// its indexes, idempotency key and journal chunks; answers how many.
pub(super) fn remove_expired(t: &mut Tables<'_>, now: i64, limit: usize) -> Result<usize, Fail> {
    let due: Vec<Key> = t
        .expiring
        .range(..=(now, u128::MAX))?
        .take(limit)
        .map(|entry| entry.map(|(key, _)| key.value()))
        .collect::<Result<_, _>>()?;
    let mut chunks = Vec::new();
    for entry in &due {
        let id = entry.1;
        t.expiring.remove(entry)?;
        let record = t.executions.remove(id)?.map(|bytes| decode_execution(id_from_key(id)?, bytes.value()));
        if let Some(execution) = record.transpose()? {
            let (created, _) = key_of(execution.created_at, execution.id)?;
            t.by_created.remove((created, id))?;
            t.by_workflow.remove((execution.workflow.as_str(), created, id))?;
            t.unfinished.remove((created, id))?;
        }
        let key = t.keys.remove(id)?.map(|key| key.value().to_owned());
        if let Some(key) = key {
            t.idempotency.remove(key.as_str())?;
        }
        chunks.clear();
        for chunk in t.journal.range((id, 0)..=(id, u64::MAX))? {
            chunks.push(chunk?.0.value());
        }
        for chunk in &chunks {
            t.journal.remove(chunk)?;
        }
    }
    Ok(due.len())
}
