//! Folding the journal log into `journal_chunks`: on open (whatever a previous run left) and
//! as segments fill.

use super::*;

/// Folds every log segment in `dir` into `journal_chunks` in one transaction, oldest first, a chunk
/// per execution and segment as the run that wrote them would have (so a segment folded
/// twice writes the same chunks twice), then deletes them. Returns what it found and the
/// number the next segment takes.
pub(super) fn recover(db: &Database, dir: &Path) -> Result<(Recovery, u64), Fail> {
    let io = |e: std::io::Error| Fail::Store(StoreError::unavailable(format!("the journal log: {e}")));
    let found = wal::segments(dir).map_err(io)?;
    let Some((last, _)) = found.last() else { return Ok((Recovery::default(), 0)) };
    let next = last + 1;
    let mut recovery = Recovery { segments: found.len(), ..Recovery::default() };
    let mut txn = db.begin_write()?;
    txn.set_durability(Durability::Immediate)?;
    {
        let mut journal = txn.open_table(JOURNAL)?;
        let executions = txn.open_table(EXECUTIONS)?;
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
            // An execution removed since (its retention ran out) takes its events with it.
            let mut removed = Vec::new();
            for id in events.index.keys() {
                if executions.get(*id)?.is_none() {
                    removed.push(*id);
                }
            }
            for id in removed {
                events.index.remove(&id);
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

/// Moves the full segments' events into `journal_chunks`, a chunk per execution and segment,
/// a slice of events per transaction, and once the last slice is durable
/// drops them from memory and deletes their files.
#[derive(Debug)]
pub(super) struct Fold {
    pub(super) taken: Vec<Arc<Generation>>,
    /// (generation, execution) in the order their chunks are written: by id within a segment.
    pub(super) chunks: Vec<(usize, u128)>,
    pub(super) next: usize,
}

impl Fold {
    /// A fold of every full segment, if there is one.
    pub(super) fn start(unfolded: &Unfolded) -> Option<Self> {
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

    /// Writes the next chunks, about `slice` events, skipping executions removed since
    /// their events were appended (their retention ran out).
    pub(super) fn apply_slice(&mut self, tables: &mut Tables<'_>, slice: usize) -> Result<(), ::redb::Error> {
        let mut events = 0;
        let mut chunk = Vec::new();
        while events < slice.max(1)
            && let Some((generation, id)) = self.chunks.get(self.next)
        {
            if tables.executions.get(*id)?.is_some() {
                events += self.taken[*generation].write_chunk(&mut tables.journal, *id, &mut chunk)?;
            }
            self.next += 1;
        }
        Ok(())
    }

    pub(super) fn is_done(&self) -> bool {
        self.next >= self.chunks.len()
    }

    pub(super) fn finish(self, unfolded: &Unfolded, dir: &Path) {
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
pub(super) struct FoldRequest;

impl Job for FoldRequest {
    fn apply(&mut self, _: &mut Tables<'_>) -> Result<(), ::redb::Error> {
        Ok(())
    }

    fn finish(self: Box<Self>, _: Option<&StoreError>) {}

    fn answers_a_caller(&self) -> bool {
        false
    }
}
