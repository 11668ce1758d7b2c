//! The file's layout: its tables, the layout version and its upgrades, the tables of a
//! write transaction, and how keys and records are encoded.

use super::*;

pub(super) type Bytes = &'static [u8];
pub(super) const DEFINITIONS: TableDefinition<(&str, u32), Bytes> = TableDefinition::new("definitions");
pub(super) const EXECUTIONS: TableDefinition<u128, Bytes> = TableDefinition::new("executions");
pub(super) const BY_CREATED: TableDefinition<Key, ()> = TableDefinition::new("executions_by_created");
pub(super) const BY_WORKFLOW: TableDefinition<(&str, i64, u128), ()> = TableDefinition::new("executions_by_workflow");
pub(super) const UNFINISHED: TableDefinition<Key, ()> = TableDefinition::new("executions_unfinished");
/// Parked executions with a wake time, under (wake time, id).
pub(super) const PARKED: TableDefinition<Key, ()> = TableDefinition::new("executions_parked");
pub(super) const IDEMPOTENCY: TableDefinition<&str, u128> = TableDefinition::new("idempotency_keys");
/// Each keyed execution's idempotency key, to remove with it.
pub(super) const KEYS: TableDefinition<u128, &str> = TableDefinition::new("execution_keys");
/// Ended executions with an expiry time, under (expiry time, id).
pub(super) const EXPIRING: TableDefinition<Key, ()> = TableDefinition::new("executions_expiring");
/// Journal chunks: the events of one execution that one fold moved, under (id, last sequence).
pub(super) const JOURNAL: TableDefinition<(u128, u64), Bytes> = TableDefinition::new("journal_chunks");
/// Version 2's journal, an event under each (id, sequence); made into chunks on open.
pub(super) const JOURNAL_V2: TableDefinition<(u128, u64), Bytes> = TableDefinition::new("journal");
/// Version 2's unfolded events, keyed by (commit, id, sequence); made into chunks on open.
pub(super) const JOURNAL_LOG: TableDefinition<(u64, u128, u64), Bytes> = TableDefinition::new("journal_log");
pub(super) const META: TableDefinition<&str, u64> = TableDefinition::new("meta");

/// Creates the tables, checks the layout version and upgrades an older one.
pub(super) fn prepare(db: &Database) -> Result<(), Fail> {
    let mut txn = db.begin_write()?;
    txn.set_durability(Durability::Immediate)?;
    {
        Tables::open(&txn)?;
        let mut meta = txn.open_table(META)?;
        let version = meta.get("schema_version")?.map(|v| v.value());
        match version {
            None | Some(1 | 2) => {
                fold_version_2_log(&txn)?;
                meta.insert("schema_version", SCHEMA_VERSION)?;
            }
            Some(SCHEMA_VERSION) => {}
            Some(other) => {
                return Err(Fail::Store(StoreError::unavailable(format!(
                    "the file has layout version {other}, this build reads version {SCHEMA_VERSION}"
                ))));
            }
        }
    }
    txn.commit()?;
    Ok(())
}

/// Makes version 2's events (`journal` and `journal_log`) into chunks and drops both tables.
pub(super) fn fold_version_2_log(txn: &WriteTransaction) -> Result<(), Fail> {
    let mut events = Generation::default();
    {
        let journal = txn.open_table(JOURNAL_V2)?;
        for entry in journal.iter()? {
            let (key, bytes) = entry?;
            let (id, sequence) = key.value();
            events.insert(id, sequence, bytes.value());
        }
        let log = txn.open_table(JOURNAL_LOG)?;
        for entry in log.iter()? {
            let (key, bytes) = entry?;
            let (_, id, sequence) = key.value();
            events.insert(id, sequence, bytes.value());
        }
    }
    events.write_chunks(&mut txn.open_table(JOURNAL)?)?;
    txn.delete_table(JOURNAL_V2)?;
    txn.delete_table(JOURNAL_LOG)?;
    Ok(())
}

/// The tables of a write transaction.
pub(super) struct Tables<'t> {
    pub(super) definitions: Table<'t, (&'static str, u32), Bytes>,
    pub(super) executions: Table<'t, u128, Bytes>,
    pub(super) by_created: Table<'t, Key, ()>,
    pub(super) by_workflow: Table<'t, (&'static str, i64, u128), ()>,
    pub(super) unfinished: Table<'t, Key, ()>,
    pub(super) parked: Table<'t, Key, ()>,
    pub(super) idempotency: Table<'t, &'static str, u128>,
    pub(super) keys: Table<'t, u128, &'static str>,
    pub(super) expiring: Table<'t, Key, ()>,
    pub(super) journal: Table<'t, (u128, u64), Bytes>,
}

impl<'t> Tables<'t> {
    pub(super) fn open(txn: &'t WriteTransaction) -> Result<Self, Fail> {
        Ok(Self {
            definitions: txn.open_table(DEFINITIONS)?,
            executions: txn.open_table(EXECUTIONS)?,
            by_created: txn.open_table(BY_CREATED)?,
            by_workflow: txn.open_table(BY_WORKFLOW)?,
            unfinished: txn.open_table(UNFINISHED)?,
            parked: txn.open_table(PARKED)?,
            idempotency: txn.open_table(IDEMPOTENCY)?,
            keys: txn.open_table(KEYS)?,
            expiring: txn.open_table(EXPIRING)?,
            journal: txn.open_table(JOURNAL)?,
        })
    }
}

pub(super) fn id_key(id: ExecutionId) -> u128 {
    id.as_uuid().as_u128()
}

pub(super) fn id_from_key(key: u128) -> Result<ExecutionId, Fail> {
    ExecutionId::from_uuid(uuid::Uuid::from_u128(key))
        .map_err(|e| Fail::Store(StoreError::unavailable(format!("an index of the redb file holds a bad id: {e}"))))
}

pub(super) fn decode_execution(id: ExecutionId, bytes: &[u8]) -> Result<Execution, Fail> {
    let execution: Execution = serde_json::from_slice(bytes)
        .map_err(|e| StoreError::corrupt(Record::Execution(id), format!("unreadable record: {e}")))?;
    if execution.id != id {
        return Err(
            StoreError::corrupt(Record::Execution(id), format!("the record is of execution {}", execution.id)).into()
        );
    }
    Ok(execution)
}

pub(super) fn load_execution(executions: &impl ReadableTable<u128, Bytes>, id: ExecutionId) -> Result<Execution, Fail> {
    let bytes = executions.get(id_key(id))?.ok_or(StoreError::NotFound(Record::Execution(id)))?;
    decode_execution(id, bytes.value())
}

pub(super) fn decode_definition(name: &WorkflowName, version: u32, bytes: &[u8]) -> Result<StoredDefinition, Fail> {
    serde_json::from_slice(bytes).map_err(|e| {
        Fail::Store(StoreError::corrupt(
            Record::Definition { name: name.clone(), version: Some(version) },
            format!("unreadable record: {e}"),
        ))
    })
}

pub(super) fn latest_definition(
    definitions: &impl ReadableTable<(&'static str, u32), Bytes>,
    name: &WorkflowName,
) -> Result<Option<StoredDefinition>, Fail> {
    let last = definitions.range((name.as_str(), 0)..=(name.as_str(), u32::MAX))?.next_back().transpose()?;
    last.map(|(key, bytes)| decode_definition(name, key.value().1, bytes.value())).transpose()
}

pub(super) fn last_sequence(journal: &impl ReadableTable<(u128, u64), Bytes>, id: ExecutionId) -> Result<u64, Fail> {
    let key = id_key(id);
    let last = journal.range((key, 0)..=(key, u64::MAX))?.next_back().transpose()?;
    Ok(last.map_or(0, |(key, _)| key.value().1))
}
