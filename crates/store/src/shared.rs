//! Rules every store applies the same way: journal continuity on append and on read, the key
//! range of a listing, and cutting a listing into a page (or, by idempotency key, the one
//! execution the store's key index found).

use std::ops::{Bound, RangeBounds as _};

use baton_core::store::timestamp_nanos;
use baton_core::{
    Event, Execution, ExecutionFilter, ExecutionId, ExecutionPage, Order, PageRequest, PageToken, Record,
};
use baton_core::{StoreError, StoreResult};

/// The events of one append, grouped by execution in the order each execution first appears;
/// within a group the caller's order is kept.
pub(crate) fn group_by_execution(events: Vec<Event>) -> Vec<(ExecutionId, Vec<Event>)> {
    // Most appends are to one execution: they keep their vector.
    if let Some(first) = events.first().map(|event| event.execution)
        && events.iter().all(|event| event.execution == first)
    {
        return vec![(first, events)];
    }
    let mut groups: Vec<(ExecutionId, Vec<Event>)> = Vec::new();
    for event in events {
        match groups.iter_mut().find(|(id, _)| *id == event.execution) {
            Some((_, group)) => group.push(event),
            None => groups.push((event.execution, vec![event])),
        }
    }
    groups
}

/// The events of one append grouped as [`group_by_execution`] does, each as its sequence
/// number and what `encode` makes of it.
pub(crate) fn encode_by_execution<T>(
    events: Vec<Event>,
    encode: impl Fn(&Event) -> T,
) -> Vec<(ExecutionId, Vec<(u64, T)>)> {
    let groups = group_by_execution(events).into_iter();
    groups.map(|(id, group)| (id, group.iter().map(|event| (event.sequence, encode(event))).collect())).collect()
}

/// Checks that `events` continue a journal whose last sequence number is `last` (0 when empty).
pub(crate) fn check_continues(execution: ExecutionId, last: u64, events: &[Event]) -> StoreResult<()> {
    check_sequences(execution, last, events.iter().map(|event| event.sequence))
}

/// [`check_continues`] over the sequence numbers alone, for events already encoded.
pub(crate) fn check_sequences(
    execution: ExecutionId,
    last: u64,
    sequences: impl IntoIterator<Item = u64>,
) -> StoreResult<()> {
    for (expected, got) in (last + 1..).zip(sequences) {
        if got != expected {
            return Err(StoreError::SequenceConflict { execution, expected, got });
        }
    }
    Ok(())
}

/// Checks a journal read back from `from` (at least 1): stored under consecutive sequence
/// numbers starting at `from`, each event readable and saying it is the one stored there.
/// `entries` are `(stored sequence, decoded event or why it could not be decoded)` in order.
pub(crate) fn check_read(
    execution: ExecutionId,
    from: u64,
    entries: impl IntoIterator<Item = (u64, Result<Event, String>)>,
) -> StoreResult<Vec<Event>> {
    let corrupt = |reason: String| StoreError::corrupt(Record::Journal(execution), reason);
    let mut events = Vec::new();
    for (expected, (sequence, decoded)) in (from.max(1)..).zip(entries) {
        if sequence != expected {
            return Err(corrupt(format!("sequence {expected} is missing, the next stored event is {sequence}")));
        }
        let event = decoded.map_err(|reason| corrupt(format!("event {sequence} is unreadable: {reason}")))?;
        if event.sequence != sequence || event.execution != execution {
            return Err(corrupt(format!(
                "event {sequence} says it is event {} of execution {}",
                event.sequence, event.execution
            )));
        }
        events.push(event);
    }
    Ok(events)
}

/// A listing position: nanoseconds since the epoch and the id as a number, so that the
/// smallest and largest ids can bound a range.
pub(crate) type Key = (i64, u128);

/// The key of an execution's listing position.
pub(crate) fn key_of(created_at: baton_core::Timestamp, id: ExecutionId) -> StoreResult<Key> {
    Ok((timestamp_nanos("created_at", created_at)?, id.as_uuid().as_u128()))
}

/// The keys a listing may visit, from the filter's time range and the page token, or `None`
/// when no key can match.
pub(crate) fn key_range(filter: &ExecutionFilter, page: &PageRequest) -> StoreResult<Option<(Bound<Key>, Bound<Key>)>> {
    let mut low = match filter.created_from {
        Some(from) => Bound::Included((timestamp_nanos("created_from", from)?, 0)),
        None => Bound::Unbounded,
    };
    let mut high = match filter.created_before {
        Some(before) => Bound::Excluded((timestamp_nanos("created_before", before)?, 0)),
        None => Bound::Unbounded,
    };
    if let Some((at, id)) = page.after()? {
        let cursor = Bound::Excluded(key_of(at, id)?);
        match page.order {
            Order::OldestFirst => low = tighter(low, cursor, true),
            Order::NewestFirst => high = tighter(high, cursor, false),
        }
    }
    let empty = match (&low, &high) {
        (Bound::Included(l), Bound::Included(h)) => l > h,
        (Bound::Included(l) | Bound::Excluded(l), Bound::Excluded(h)) | (Bound::Excluded(l), Bound::Included(h)) => {
            l >= h
        }
        _ => false,
    };
    Ok((!empty).then_some((low, high)))
}

/// The tighter of two bounds: the larger of two lower bounds (`lower`), else the smaller.
fn tighter(a: Bound<Key>, b: Bound<Key>, lower: bool) -> Bound<Key> {
    let value = |bound: &Bound<Key>| match bound {
        Bound::Included(k) | Bound::Excluded(k) => Some(*k),
        Bound::Unbounded => None,
    };
    match (value(&a), value(&b)) {
        (None, _) => b,
        (_, None) => a,
        (Some(x), Some(y)) if x == y => {
            if matches!(a, Bound::Excluded(_)) {
                a
            } else {
                b
            }
        }
        (Some(x), Some(y)) => {
            if (x > y) == lower {
                a
            } else {
                b
            }
        }
    }
}

/// Cuts a page from `candidates` (in listing order, inside the key range): keeps those the
/// filter passes, up to the page's limit, and a token when more may follow.
pub(crate) fn paginate(
    candidates: impl IntoIterator<Item = StoreResult<Execution>>,
    filter: &ExecutionFilter,
    page: &PageRequest,
) -> StoreResult<ExecutionPage> {
    let limit = page.effective_limit();
    let mut executions = Vec::with_capacity(limit.min(64));
    let mut more = false;
    for candidate in candidates {
        let execution = candidate?;
        if !filter.matches(&execution) {
            continue;
        }
        if executions.len() == limit {
            more = true;
            break;
        }
        executions.push(execution);
    }
    let next = if more { executions.last().map(|e: &Execution| PageToken::at(e.created_at, e.id)) } else { None };
    Ok(ExecutionPage { executions, next })
}

/// The page of a listing filtered by idempotency key: `found`, the execution the key started
/// (looked up in the store's key index), when its position lies in `range` and the filter's
/// other fields pass it. A key starts at most one execution, so there is never a next page.
pub(crate) fn keyed_page(
    found: Option<Execution>,
    range: &(Bound<Key>, Bound<Key>),
    filter: &ExecutionFilter,
    page: &PageRequest,
) -> StoreResult<ExecutionPage> {
    let mut candidate = None;
    if let Some(execution) = found
        && range.contains(&key_of(execution.created_at, execution.id)?)
    {
        candidate = Some(Ok(execution));
    }
    paginate(candidate, filter, page)
}

/// Counters behind [`crate::CommitStats`], shared with a writer.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    transactions: std::sync::atomic::AtomicU64,
    writes: std::sync::atomic::AtomicU64,
    commit_nanos: std::sync::atomic::AtomicU64,
    no_space: std::sync::atomic::AtomicU64,
}

impl Counters {
    /// Counts a write that failed because the storage had no room.
    pub(crate) fn no_space(&self) {
        self.no_space.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    /// Counts a committed transaction holding `writes` writes that took `took` from its
    /// first write to durable.
    pub(crate) fn committed(&self, writes: usize, took: std::time::Duration) {
        use std::sync::atomic::Ordering::Relaxed;
        self.transactions.fetch_add(1, Relaxed);
        self.writes.fetch_add(u64::try_from(writes).unwrap_or(u64::MAX), Relaxed);
        self.commit_nanos.fetch_add(u64::try_from(took.as_nanos()).unwrap_or(u64::MAX), Relaxed);
    }

    pub(crate) fn snapshot(&self) -> crate::CommitStats {
        use std::sync::atomic::Ordering::Relaxed;
        crate::CommitStats {
            transactions: self.transactions.load(Relaxed),
            writes: self.writes.load(Relaxed),
            commit_time: std::time::Duration::from_nanos(self.commit_nanos.load(Relaxed)),
            no_space: self.no_space.load(Relaxed),
        }
    }
}

/// Encodes a record as JSON bytes.
pub(crate) fn to_json<T: serde::Serialize>(value: &T) -> Vec<u8> {
    // Domain types serialize to JSON without fail: no maps with non-string keys, no custom
    // serializers that can error.
    // Most journal events fit the first allocation, where serde_json's own 128 bytes grew.
    let mut bytes = Vec::with_capacity(256);
    serde_json::to_writer(&mut bytes, value).expect("domain records serialize to JSON");
    bytes
}

#[cfg(test)]
mod tests {
    use baton_core::EventKind;

    use super::*;

    fn event(execution: ExecutionId, sequence: u64) -> Event {
        let at = chrono_at(0);
        Event { execution, sequence, at, kind: EventKind::Paused }
    }

    fn chrono_at(seconds: i64) -> baton_core::Timestamp {
        baton_core::Timestamp::from_timestamp(seconds, 0).unwrap()
    }

    #[test]
    fn appends_must_continue_the_journal() {
        let id = ExecutionId::generate();
        let events = |seqs: &[u64]| seqs.iter().map(|&s| event(id, s)).collect::<Vec<_>>();
        assert_eq!(check_continues(id, 0, &events(&[1, 2, 3])), Ok(()));
        assert_eq!(check_continues(id, 3, &events(&[4])), Ok(()));
        let conflict = |expected, got| Err(StoreError::SequenceConflict { execution: id, expected, got });
        assert_eq!(check_continues(id, 3, &events(&[5])), conflict(4, 5));
        assert_eq!(check_continues(id, 3, &events(&[3])), conflict(4, 3));
        assert_eq!(check_continues(id, 0, &events(&[1, 3])), conflict(2, 3));
        assert_eq!(check_continues(id, 0, &events(&[1, 1])), conflict(2, 1));
    }

    #[test]
    fn reads_report_gaps_and_strangers() {
        let id = ExecutionId::generate();
        let entries = |seqs: &[u64]| seqs.iter().map(|&s| (s, Ok(event(id, s)))).collect::<Vec<_>>();
        assert_eq!(check_read(id, 1, entries(&[1, 2, 3])).unwrap().len(), 3);
        assert_eq!(check_read(id, 0, entries(&[1])).unwrap().len(), 1);
        assert_eq!(check_read(id, 2, entries(&[2, 3])).unwrap().len(), 2);
        let reason = |result: StoreResult<Vec<Event>>| match result {
            Err(StoreError::Corrupt { record: Record::Journal(of), reason }) if of == id => reason,
            other => panic!("expected a corrupt journal, got {other:?}"),
        };
        assert_eq!(reason(check_read(id, 1, entries(&[1, 3]))), "sequence 2 is missing, the next stored event is 3");
        assert_eq!(reason(check_read(id, 1, entries(&[2]))), "sequence 1 is missing, the next stored event is 2");
        let unreadable = vec![(1, Err("expected value at line 1 column 1".to_owned()))];
        assert_eq!(reason(check_read(id, 1, unreadable)), "event 1 is unreadable: expected value at line 1 column 1");
        let stranger = ExecutionId::generate();
        let misplaced = vec![(1, Ok(event(stranger, 1)))];
        assert!(reason(check_read(id, 1, misplaced)).contains(&format!("of execution {stranger}")));
    }

    #[test]
    fn groups_keep_first_appearance_order() {
        let (a, b) = (ExecutionId::generate(), ExecutionId::generate());
        let groups = group_by_execution(vec![event(a, 1), event(b, 1), event(a, 2)]);
        let shape: Vec<(ExecutionId, Vec<u64>)> =
            groups.into_iter().map(|(id, events)| (id, events.iter().map(|e| e.sequence).collect())).collect();
        assert_eq!(shape, [(a, vec![1, 2]), (b, vec![1])]);
        let single = group_by_execution(vec![event(a, 3), event(a, 4)]);
        let shape: Vec<(ExecutionId, Vec<u64>)> =
            single.into_iter().map(|(id, events)| (id, events.iter().map(|e| e.sequence).collect())).collect();
        assert_eq!(shape, [(a, vec![3, 4])]);
        assert!(group_by_execution(Vec::new()).is_empty());
    }

    #[test]
    fn key_ranges_combine_time_and_cursor() {
        let id = ExecutionId::generate();
        let u = id.as_uuid().as_u128();
        let filter = ExecutionFilter {
            created_from: Some(chrono_at(10)),
            created_before: Some(chrono_at(20)),
            ..ExecutionFilter::default()
        };
        let s = 1_000_000_000;
        let page = |order, at: i64| PageRequest {
            order,
            token: Some(PageToken::at(chrono_at(at), id)),
            ..PageRequest::default()
        };
        let check = |page: &PageRequest, expected: Option<(Bound<Key>, Bound<Key>)>| {
            assert_eq!(key_range(&filter, page).unwrap(), expected, "{page:?}");
        };
        check(&PageRequest::default(), Some((Bound::Included((10 * s, 0)), Bound::Excluded((20 * s, 0)))));
        check(&page(Order::OldestFirst, 15), Some((Bound::Excluded((15 * s, u)), Bound::Excluded((20 * s, 0)))));
        check(&page(Order::OldestFirst, 5), Some((Bound::Included((10 * s, 0)), Bound::Excluded((20 * s, 0)))));
        check(&page(Order::NewestFirst, 15), Some((Bound::Included((10 * s, 0)), Bound::Excluded((15 * s, u)))));
        check(&page(Order::OldestFirst, 25), None);
        check(&page(Order::NewestFirst, 5), None);
        let bad = PageRequest { token: Some(PageToken::from_text("x".to_owned())), ..PageRequest::default() };
        assert!(matches!(key_range(&filter, &bad), Err(StoreError::Invalid { .. })));
    }
}

/// Hashes execution ids, which are UUIDs with random low bits, by folding them to 64 bits: far
/// cheaper than SipHash, which the journal writers paid for on every append.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct IdHasher(u64);

impl std::hash::Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for byte in bytes {
            self.0 = (self.0.rotate_left(5) ^ u64::from(*byte)).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
        }
    }

    fn write_u128(&mut self, id: u128) {
        // Truncation keeps the random low half; the high half (time) spreads equal low halves.
        let folded = (id as u64) ^ ((id >> 64) as u64).rotate_left(32);
        self.0 = folded.wrapping_mul(0x9e_37_79_b9_7f_4a_7c_15);
    }
}

pub(crate) type IdHasherBuilder = std::hash::BuildHasherDefault<IdHasher>;
