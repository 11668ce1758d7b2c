//! The log writer thread: appends checked, written as one frame and answered after one
//! `fdatasync` (group commit).

use super::*;

/// An append waiting in the log writer's queue: its events, grouped by execution and encoded
/// by the caller.
#[derive(Debug)]
pub(super) struct Append {
    pub(super) groups: Encoded,
    pub(super) reply: oneshot::Sender<StoreResult<()>>,
    /// The caller's tokio runtime, where the answers are sent from, if it runs on one.
    pub(super) runtime: Option<tokio::runtime::Handle>,
}

/// Answers a frame's appends from a task on the first caller's runtime: waking a task from
/// one of its own workers is a push to a local queue, from this thread a push to the shared
/// queue and maybe a syscall, which cost the log writer about 2 µs per append.
pub(super) fn answer_in_runtime(appends: Vec<Append>) {
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
pub(super) struct Answers(Vec<oneshot::Sender<StoreResult<()>>>);

impl Drop for Answers {
    fn drop(&mut self) {
        for reply in self.0.drain(..) {
            // The caller may have given up waiting; the append stands regardless.
            let _ = reply.send(Ok(()));
        }
    }
}

/// The log writer thread's state between frames.
pub(super) struct LogWriter {
    pub(super) dir: PathBuf,
    pub(super) db: Arc<Handle>,
    pub(super) counters: Arc<Counters>,
    pub(super) unfolded: Arc<Unfolded>,
    /// The redb writer's queue, for folds.
    pub(super) folds: mpsc::Sender<Box<dyn Job>>,
    /// The segment being written; `None` after one could not be created.
    pub(super) segment: Option<Segment>,
    pub(super) next_segment: u64,
    /// Last sequence numbers the log writer knows: it is the only one appending, so they stay
    /// true until it forgets them.
    pub(super) heads: HashMap<u128, u64, IdHasherBuilder>,
    /// Why the log takes no more appends, after a write failed.
    pub(super) failed: Option<StoreError>,
    pub(super) options: LogOptions,
}

impl LogWriter {
    /// One frame per batch of whatever has queued up, then the fold of the last segment.
    pub(super) fn run(mut self, mut queue: mpsc::Receiver<Append>) {
        let mut batch = Vec::with_capacity(MAX_BATCH);
        while queue.blocking_recv_many(&mut batch, MAX_BATCH) > 0 {
            self.commit(&mut batch);
        }
        self.move_on(false);
    }

    /// Checks, writes and answers one batch.
    pub(super) fn commit(&mut self, batch: &mut Vec<Append>) {
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
                    // A new map, not `clear`, which would keep the grown table.
                    self.heads = HashMap::default();
                }
                self.heads.extend(staged);
                self.counters.committed(accepted.len(), began.elapsed());
                answer_in_runtime(accepted);
                if full {
                    self.move_on(true);
                }
            }
            Err(e) => {
                if e.no_space() {
                    self.counters.no_space();
                }
                let failure = match e {
                    // Nothing of the frame stays: the appends failed, and the log goes on (a full
                    // disk takes frames again once it has room).
                    FrameError::NotWritten(e) if wal::is_no_space(&e) => {
                        StoreError::NoSpace(format!("writing the journal log in {}: {e}", self.dir.display()))
                    }
                    FrameError::NotWritten(e) => StoreError::unavailable(format!(
                        "the journal log could not write to {}: {e}",
                        self.segment.as_ref().map_or(self.dir.as_path(), |s| s.path()).display()
                    )),
                    // What the file holds after a failed sync is unknown (the frame may still
                    // land), so, like PostgreSQL after a failed fsync, the log takes no more
                    // appends: reopening the store replays whatever did land.
                    FrameError::Unknown(e) => {
                        let failure = StoreError::unavailable(format!(
                            "the journal log failed a write ({e}); reopen the store to go on"
                        ));
                        self.failed = Some(failure.clone());
                        failure
                    }
                };
                for append in accepted {
                    let _ = append.reply.send(Err(failure.clone()));
                }
            }
        }
    }

    /// The last sequence number of every execution in `groups` after the append, or why it
    /// cannot be taken.
    pub(super) fn check(
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
    pub(super) fn look_up_head(
        &mut self,
        execution: ExecutionId,
        read: &mut Option<ReadTransaction>,
    ) -> StoreResult<u64> {
        let id = id_key(execution);
        // Unfolded events leave memory only after their fold committed, so looking in memory
        // first and in redb second cannot miss any.
        let head = match self.unfolded.last(id) {
            Some(head) => head,
            None => {
                let found = |txn: &ReadTransaction| -> Result<u64, Fail> {
                    if txn.open_table(EXECUTIONS)?.get(id)?.is_none() {
                        return Err(StoreError::NotFound(Record::Execution(execution)).into());
                    }
                    last_sequence(&txn.open_table(JOURNAL)?, execution)
                };
                let begin = |db: &Database| db.begin_read().map_err(|e| Fail::from(e).into_store_error());
                let db = self.db.get()?;
                let txn = match read {
                    Some(txn) => txn,
                    None => read.insert(begin(&db)?),
                };
                match found(txn) {
                    // A write to the file failed since: open it again (unless the redb writer
                    // has) and read anew.
                    Err(Fail::Storage(::redb::Error::PreviousIo)) => {
                        *read = None;
                        self.db.replace(Some(db)).map_err(|e| Fail::from(e).into_store_error())?;
                        let txn = read.insert(begin(&*self.db.get()?)?);
                        found(txn).map_err(Fail::into_store_error)?
                    }
                    result => result.map_err(Fail::into_store_error)?,
                }
            }
        };
        self.heads.insert(id, head);
        Ok(head)
    }

    pub(super) fn write_frame(&mut self, appends: &[Append]) -> Result<(), FrameError> {
        if self.segment.is_none() {
            // A segment that could not be made holds nothing: the frame was not written.
            self.segment = Some(self.create_segment().map_err(FrameError::NotWritten)?);
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
    pub(super) fn create_segment(&mut self) -> std::io::Result<Segment> {
        let number = self.next_segment;
        self.next_segment += 1;
        let segment = Segment::create(&self.dir, number)?;
        self.unfolded.lock().open.segment = number;
        Ok(segment)
    }

    /// Closes the segment being written, hands its events to the redb writer to fold, and
    /// (when `go_on`) starts the next segment.
    pub(super) fn move_on(&mut self, go_on: bool) {
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
    pub(super) fn wait_for_room(&self) -> StoreResult<()> {
        let mut generations = self.unfolded.lock();
        while generations.full.len() >= self.options.max_unfolded.max(1) {
            if let Some(failure) = generations.fold_failure.take() {
                drop(generations);
                let _ = self.folds.blocking_send(Box::new(FoldRequest));
                return Err(match failure {
                    StoreError::NoSpace(why) => StoreError::NoSpace(format!("folding the journal into redb: {why}")),
                    failure => StoreError::unavailable(format!("the journal cannot be folded into redb: {failure}")),
                });
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
