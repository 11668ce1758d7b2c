//! [`MemoryStore`]: everything in one mutex-guarded map. The reference the durable stores are
//! tested against, and the store of tests that do not care about durability.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};

use baton_core::{
    CreatedExecution, Event, Execution, ExecutionFilter, ExecutionId, ExecutionPage, ExecutionUpdate, IdempotencyKey,
    NewDefinition, Order, PageRequest, PutDefinition, Record, Store, StoreError, StoreResult, StoredDefinition,
    Timestamp, WorkflowName,
};

use crate::shared::{Key, check_continues, check_read, group_by_execution, key_of, key_range, keyed_page, paginate};

/// A store that keeps everything in memory: "durable" for as long as the process lives.
/// Clones share the same data.
#[derive(Debug, Clone, Default)]
pub struct MemoryStore {
    state: Arc<Mutex<State>>,
}

#[derive(Debug, Default)]
struct State {
    definitions: BTreeMap<WorkflowName, Vec<StoredDefinition>>,
    executions: HashMap<ExecutionId, Execution>,
    /// Listing order: `(created_at, id)` to id.
    order: BTreeMap<Key, ExecutionId>,
    idempotency: HashMap<IdempotencyKey, ExecutionId>,
    /// Each keyed execution's key, to remove with it.
    keys: HashMap<ExecutionId, IdempotencyKey>,
    /// Ended executions with an expiry time, by that time.
    expiring: BTreeSet<(Timestamp, ExecutionId)>,
    journals: HashMap<ExecutionId, BTreeMap<u64, Event>>,
}

impl State {
    /// The execution created with `key`, from the key map.
    fn keyed(&self, key: &IdempotencyKey) -> Option<Execution> {
        self.idempotency.get(key).map(|id| self.executions[id].clone())
    }
}

impl MemoryStore {
    fn lock(&self) -> MutexGuard<'_, State> {
        // Every change is validated before it is made, so a panicking holder leaves no half-done
        // change behind; carry on with the data as it is.
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Removes one stored journal event, leaving a gap: for tests of corruption handling.
    #[cfg(any(test, feature = "test-util"))]
    pub fn remove_event(&self, execution: ExecutionId, sequence: u64) -> bool {
        self.lock().journals.get_mut(&execution).is_some_and(|journal| journal.remove(&sequence).is_some())
    }

    /// Overwrites one stored journal event with `event`, whatever it says: for tests of
    /// corruption handling.
    #[cfg(any(test, feature = "test-util"))]
    pub fn overwrite_event(&self, execution: ExecutionId, sequence: u64, event: Event) -> bool {
        let mut state = self.lock();
        let slot = state.journals.get_mut(&execution).and_then(|journal| journal.get_mut(&sequence));
        slot.map(|slot| *slot = event).is_some()
    }
}

impl Store for MemoryStore {
    async fn put_definition(&self, definition: NewDefinition) -> StoreResult<PutDefinition> {
        let mut state = self.lock();
        let versions = state.definitions.entry(definition.name.clone()).or_default();
        if let Some(latest) = versions.last()
            && latest.content_hash == definition.content_hash
        {
            return Ok(PutDefinition { version: latest.version, created: false });
        }
        let version = versions.last().map_or(Some(1), |latest| latest.version.checked_add(1)).ok_or_else(|| {
            StoreError::Invalid {
                field: "version".to_owned(),
                reason: "the definition has run out of versions".to_owned(),
            }
        })?;
        versions.push(StoredDefinition {
            name: definition.name,
            version,
            content_hash: definition.content_hash,
            body: definition.body,
            created_at: definition.created_at,
        });
        Ok(PutDefinition { version, created: true })
    }

    async fn get_definition(&self, name: &WorkflowName, version: Option<u32>) -> StoreResult<StoredDefinition> {
        let state = self.lock();
        let versions = state.definitions.get(name).map(Vec::as_slice).unwrap_or_default();
        let found = match version {
            None => versions.last(),
            Some(version) => versions.iter().find(|d| d.version == version),
        };
        found.cloned().ok_or_else(|| StoreError::NotFound(Record::Definition { name: name.clone(), version }))
    }

    async fn list_definitions(&self) -> StoreResult<Vec<StoredDefinition>> {
        Ok(self.lock().definitions.values().filter_map(|versions| versions.last().cloned()).collect())
    }

    async fn create_execution(
        &self,
        execution: Execution,
        idempotency_key: Option<IdempotencyKey>,
    ) -> StoreResult<CreatedExecution> {
        let key = key_of(execution.created_at, execution.id)?;
        let mut state = self.lock();
        if let Some(existing) = idempotency_key.as_ref().and_then(|k| state.idempotency.get(k)) {
            let execution = state.executions[existing].clone();
            return Ok(CreatedExecution { execution, created: false });
        }
        if state.executions.contains_key(&execution.id) {
            return Err(StoreError::AlreadyExists(execution.id));
        }
        if let Some(idempotency_key) = idempotency_key {
            state.idempotency.insert(idempotency_key.clone(), execution.id);
            state.keys.insert(execution.id, idempotency_key);
        }
        state.order.insert(key, execution.id);
        state.journals.insert(execution.id, BTreeMap::new());
        state.executions.insert(execution.id, execution.clone());
        Ok(CreatedExecution { execution, created: true })
    }

    async fn get_execution(&self, id: ExecutionId) -> StoreResult<Execution> {
        self.lock().executions.get(&id).cloned().ok_or(StoreError::NotFound(Record::Execution(id)))
    }

    async fn find_by_idempotency_key(&self, key: &IdempotencyKey) -> StoreResult<Option<Execution>> {
        Ok(self.lock().keyed(key))
    }

    async fn update_execution(&self, update: ExecutionUpdate) -> StoreResult<Execution> {
        let mut state = self.lock();
        let stored = state.executions.get_mut(&update.id).ok_or(StoreError::NotFound(Record::Execution(update.id)))?;
        // Apply to a copy so that a refused update leaves the stored execution untouched.
        let mut updated = stored.clone();
        update.apply(&mut updated)?;
        let expiry = |e: &Execution| e.expires_at.map(|at| (at, e.id));
        let (before, after) = (expiry(stored), expiry(&updated));
        *stored = updated.clone();
        if before != after {
            if let Some(entry) = before {
                state.expiring.remove(&entry);
            }
            if let Some(entry) = after {
                state.expiring.insert(entry);
            }
        }
        Ok(updated)
    }

    async fn list_executions(&self, filter: &ExecutionFilter, page: &PageRequest) -> StoreResult<ExecutionPage> {
        let Some(range) = key_range(filter, page)? else { return Ok(ExecutionPage::default()) };
        let state = self.lock();
        if let Some(key) = &filter.idempotency_key {
            return keyed_page(state.keyed(key), &range, filter, page);
        }
        let in_range = state.order.range(range).map(|(_, id)| Ok(state.executions[id].clone()));
        match page.order {
            Order::OldestFirst => paginate(in_range, filter, page),
            Order::NewestFirst => paginate(in_range.rev(), filter, page),
        }
    }

    async fn unfinished_executions(&self) -> StoreResult<Vec<ExecutionId>> {
        let state = self.lock();
        let open = |e: &Execution| !e.state.is_terminal() && e.parked.is_none();
        Ok(state.order.values().filter(|id| open(&state.executions[*id])).copied().collect())
    }

    async fn parked_due(&self, before: Timestamp, limit: usize) -> StoreResult<Vec<ExecutionId>> {
        let state = self.lock();
        let mut due: Vec<(Timestamp, ExecutionId)> = state
            .executions
            .values()
            .filter(|e| !e.state.is_terminal())
            .filter_map(|e| e.parked.and_then(|p| p.until).filter(|at| *at <= before).map(|at| (at, e.id)))
            .collect();
        due.sort_unstable();
        Ok(due.into_iter().take(limit).map(|(_, id)| id).collect())
    }

    async fn append(&self, events: Vec<Event>) -> StoreResult<()> {
        let groups = group_by_execution(events);
        let mut state = self.lock();
        for (execution, events) in &groups {
            let journal = state.journals.get(execution).ok_or(StoreError::NotFound(Record::Execution(*execution)))?;
            let last = journal.last_key_value().map_or(0, |(sequence, _)| *sequence);
            check_continues(*execution, last, events)?;
        }
        for (execution, events) in groups {
            let journal = state.journals.get_mut(&execution).expect("checked above");
            journal.extend(events.into_iter().map(|event| (event.sequence, event)));
        }
        Ok(())
    }

    async fn remove_expired(&self, now: Timestamp, limit: usize) -> StoreResult<usize> {
        let mut state = self.lock();
        let due: Vec<(Timestamp, ExecutionId)> =
            state.expiring.iter().take_while(|(at, _)| *at <= now).take(limit).copied().collect();
        for entry in &due {
            let id = entry.1;
            state.expiring.remove(entry);
            if let Some(execution) = state.executions.remove(&id) {
                state.order.remove(&key_of(execution.created_at, id)?);
            }
            if let Some(key) = state.keys.remove(&id) {
                state.idempotency.remove(&key);
            }
            state.journals.remove(&id);
        }
        Ok(due.len())
    }

    async fn read_journal(&self, execution: ExecutionId, from_sequence: u64) -> StoreResult<Vec<Event>> {
        let state = self.lock();
        let journal = state.journals.get(&execution).ok_or(StoreError::NotFound(Record::Execution(execution)))?;
        let from = from_sequence.max(1);
        check_read(execution, from, journal.range(from..).map(|(sequence, event)| (*sequence, Ok(event.clone()))))
    }
}
