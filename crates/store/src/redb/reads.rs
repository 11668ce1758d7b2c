//! Reads: listings by key range or idempotency key, and journal reads, merging the unfolded
//! events.

use super::*;

/// The events of one append, grouped by execution and encoded by the caller.
pub(super) type Encoded = Vec<(ExecutionId, Vec<(u64, Vec<u8>)>)>;

pub(super) fn list_executions(
    txn: &ReadTransaction,
    filter: &ExecutionFilter,
    page: &PageRequest,
) -> Result<ExecutionPage, Fail> {
    let Some((low, high)) = key_range(filter, page)? else { return Ok(ExecutionPage::default()) };
    if let Some(key) = &filter.idempotency_key {
        return Ok(keyed_page(find_by_key(txn, key)?, &(low, high), filter, page)?);
    }
    let executions = txn.open_table(EXECUTIONS)?;
    let load = |key: Result<Key, StorageError>| -> StoreResult<Execution> {
        let (_, id) = key.map_err(|e| StoreError::unavailable(format!("redb: {e}")))?;
        load_execution(&executions, id_from_key(id).map_err(Fail::into_store_error)?).map_err(Fail::into_store_error)
    };
    let page = match &filter.workflow {
        None => {
            let index = txn.open_table(BY_CREATED)?;
            let keys = index.range::<Key>((low, high))?.map(|entry| entry.map(|(key, _)| key.value()));
            ordered(keys.map(load), filter, page)
        }
        Some(workflow) => {
            let name = workflow.as_str();
            let low = match low {
                Bound::Unbounded => Bound::Included((name, i64::MIN, 0)),
                bound => bound.map(|(created, id)| (name, created, id)),
            };
            let high = match high {
                Bound::Unbounded => Bound::Included((name, i64::MAX, u128::MAX)),
                bound => bound.map(|(created, id)| (name, created, id)),
            };
            let index = txn.open_table(BY_WORKFLOW)?;
            let keys = index.range::<(&str, i64, u128)>((low, high))?.map(|entry| {
                entry.map(|(key, _)| {
                    let (_, created, id) = key.value();
                    (created, id)
                })
            });
            ordered(keys.map(load), filter, page)
        }
    };
    Ok(page?)
}

/// The execution created with `key`: one lookup in `idempotency_keys`, one in `executions`.
pub(super) fn find_by_key(txn: &ReadTransaction, key: &IdempotencyKey) -> Result<Option<Execution>, Fail> {
    let Some(id) = txn.open_table(IDEMPOTENCY)?.get(key.as_str())?.map(|id| id.value()) else { return Ok(None) };
    let id = id_from_key(id)?;
    match load_execution(&txn.open_table(EXECUTIONS)?, id) {
        // Written in one transaction with the key, so its absence is damage, not a miss.
        Err(Fail::Store(StoreError::NotFound(_))) => Err(StoreError::corrupt(
            Record::Execution(id),
            format!("idempotency key {:?} names it, but no record is stored", key.as_str()),
        )
        .into()),
        loaded => loaded.map(Some),
    }
}

/// Pages through `candidates` (ascending) in the order the request asks for.
pub(super) fn ordered(
    candidates: impl DoubleEndedIterator<Item = StoreResult<Execution>>,
    filter: &ExecutionFilter,
    page: &PageRequest,
) -> StoreResult<ExecutionPage> {
    match page.order {
        Order::OldestFirst => paginate(candidates, filter, page),
        Order::NewestFirst => paginate(candidates.rev(), filter, page),
    }
}

/// `execution`'s journal from `from`: the chunks in `journal_chunks`, then the `unfolded` events that
/// follow (taken from memory before the read transaction began, so a fold in between shows
/// them twice, never not at all). An event seen twice is the same event; the first is kept.
pub(super) fn read_journal(
    txn: &ReadTransaction,
    execution: ExecutionId,
    from: u64,
    unfolded: Vec<(u64, Vec<u8>)>,
) -> Result<Vec<Event>, Fail> {
    if txn.open_table(EXECUTIONS)?.get(id_key(execution))?.is_none() {
        return Err(StoreError::NotFound(Record::Execution(execution)).into());
    }
    let decode = |bytes: &[u8]| serde_json::from_slice::<Event>(bytes).map_err(|e| e.to_string());
    let corrupt = |reason: String| Fail::Store(StoreError::corrupt(Record::Journal(execution), reason));
    let journal = txn.open_table(JOURNAL)?;
    let key = id_key(execution);
    let mut entries = Vec::new();
    let mut seen = from - 1;
    // Chunks are keyed by their last sequence: the first one from `from` on holds `from`.
    for chunk in journal.range((key, from)..=(key, u64::MAX))? {
        let (_, chunk) = chunk?;
        for (sequence, json) in chunk_events(chunk.value()).map_err(corrupt)? {
            if sequence > seen {
                entries.push((sequence, decode(json)));
                seen = sequence;
            }
        }
    }
    entries.extend(
        unfolded.into_iter().filter(|(sequence, _)| *sequence > seen).map(|(sequence, json)| (sequence, decode(&json))),
    );
    Ok(check_read(execution, from, entries)?)
}
