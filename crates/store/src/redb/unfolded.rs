//! Journal events in the log and not yet folded, kept in memory by segment, where reads and
//! the log writer find them.

use super::*;

/// Journal events in the log and not yet folded into `journal_chunks`, by segment: what journal
/// reads merge, and where the log writer finds an execution's last sequence number.
#[derive(Debug)]
pub(super) struct Unfolded {
    pub(super) generations: Mutex<Generations>,
    /// Signalled when a fold ends, for a log writer waiting for room.
    pub(super) folded: Condvar,
}

#[derive(Debug)]
pub(super) struct Generations {
    /// Full segments, oldest first, waiting to be folded.
    pub(super) full: VecDeque<Arc<Generation>>,
    /// The segment being written.
    pub(super) open: Generation,
    /// Why the last fold failed, until one succeeds.
    pub(super) fold_failure: Option<StoreError>,
}

/// The events of one log segment: their JSON packed into blocks, so that a segment of many
/// events costs few allocations to fill and to free, and an index by execution.
#[derive(Debug, Default)]
pub(super) struct Generation {
    pub(super) segment: u64,
    pub(super) blocks: Vec<Vec<u8>>,
    /// Each execution's events in sequence order.
    pub(super) index: HashMap<u128, Vec<Placed>, IdHasherBuilder>,
    pub(super) events: usize,
    pub(super) bytes: usize,
}

/// Where an event's JSON is in a generation: (sequence, block, offset, length).
pub(super) type Placed = (u64, u32, u32, u32);

/// The size of a block of event JSON (a larger event gets a block of its own).
pub(super) const BLOCK_BYTES: usize = 1 << 20;

impl Generation {
    /// Adds `id`'s event `sequence`, which follows its others here.
    pub(super) fn insert(&mut self, id: u128, sequence: u64, json: &[u8]) {
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

    pub(super) fn last(&self, id: u128) -> Option<u64> {
        self.index.get(&id)?.last().map(|(sequence, ..)| *sequence)
    }

    pub(super) fn json(&self, block: u32, offset: u32, len: u32) -> &[u8] {
        let offset = offset as usize;
        &self.blocks[block as usize][offset..offset + len as usize]
    }

    pub(super) fn copy_events(&self, id: u128, from: u64, into: &mut Vec<(u64, Vec<u8>)>) {
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
    pub(super) fn chunk_order(&self) -> Vec<u128> {
        let mut ids: Vec<u128> = self.index.keys().copied().collect();
        ids.sort_unstable();
        ids
    }

    /// Writes the events as one chunk per execution, in [`Generation::chunk_order`].
    pub(super) fn write_chunks(&self, journal: &mut Table<'_, (u128, u64), Bytes>) -> Result<(), ::redb::Error> {
        let mut chunk = Vec::new();
        for id in self.chunk_order() {
            self.write_chunk(journal, id, &mut chunk)?;
        }
        Ok(())
    }

    /// Writes `id`'s events as one chunk (built in `chunk`); returns how many there were.
    pub(super) fn write_chunk(
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

pub(super) fn as_u32(n: usize) -> u32 {
    // Blocks, offsets and lengths are bounded by memory far below 4 Gi for a segment, which
    // moves on at `fold_bytes`.
    u32::try_from(n).expect("a segment's events fit in 4 GiB")
}

/// The events of a journal chunk ([`wal::push_event`] after one another), or where it is
/// damaged.
pub(super) fn chunk_events(mut chunk: &[u8]) -> Result<Vec<(u64, &[u8])>, String> {
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
    pub(super) fn new() -> Self {
        let generations = Generations { full: VecDeque::new(), open: Generation::default(), fold_failure: None };
        Self { generations: Mutex::new(generations), folded: Condvar::new() }
    }

    pub(super) fn lock(&self) -> MutexGuard<'_, Generations> {
        // The maps stay whole even if a holder panicked: every change is a single insert or
        // swap.
        self.generations.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The last unfolded sequence number of `id`, if it has unfolded events.
    pub(super) fn last(&self, id: u128) -> Option<u64> {
        let generations = self.lock();
        generations.open.last(id).or_else(|| generations.full.iter().rev().find_map(|generation| generation.last(id)))
    }

    /// The bytes of event JSON held, in every segment not yet folded.
    #[cfg(test)]
    pub(super) fn bytes(&self) -> usize {
        let generations = self.lock();
        generations.open.bytes + generations.full.iter().map(|generation| generation.bytes).sum::<usize>()
    }

    /// Records why a fold failed, for a log writer waiting for room.
    pub(super) fn fold_failed(&self, failure: StoreError) {
        self.lock().fold_failure = Some(failure);
        self.folded.notify_all();
    }

    /// `id`'s unfolded events from sequence `from` on, in order.
    pub(super) fn events(&self, id: u128, from: u64) -> Vec<(u64, Vec<u8>)> {
        let generations = self.lock();
        let mut events = Vec::new();
        for generation in &generations.full {
            generation.copy_events(id, from, &mut events);
        }
        generations.open.copy_events(id, from, &mut events);
        events
    }
}
