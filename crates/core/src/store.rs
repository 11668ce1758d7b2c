//! The storage port: versioned workflow definitions, executions, and each execution's
//! append-only journal. Implementations (in-memory, redb, PostgreSQL) live in `baton-store`.
//!
//! The contract every [`Store`] keeps, checked by `baton-store`'s conformance suite:
//!
//! - **Durability.** A write returns only once it is durable: a restarted store has it. (The
//!   in-memory store keeps this for as long as the process lives.)
//! - **Definitions.** [`Store::put_definition`] stores version N+1 of a name unless the latest
//!   version has the same content hash, in which case it changes nothing and answers with the
//!   latest version. Concurrent puts never produce two versions with the same number.
//! - **Idempotent creation.** [`Store::create_execution`] with a key used before returns the
//!   execution created with it, however many callers race; [`Store::find_by_idempotency_key`]
//!   and a listing filtered by the key find that execution through the store's key index.
//! - **Journal.** Each execution's events are numbered 1, 2, 3, ... without gaps. An
//!   [`Store::append`] whose first event per execution is not the next number, or whose events
//!   skip or repeat one, fails with [`StoreError::SequenceConflict`] and writes nothing.
//! - **Retention.** An execution that ends expires [`Execution::retention`] after its end
//!   ([`ExecutionUpdate::apply`] sets [`Execution::expires_at`]); [`Store::remove_expired`]
//!   removes expired ones with their journals and idempotency keys, and nothing else.
//! - **Corruption is local.** A damaged record or journal fails with [`StoreError::Corrupt`]
//!   naming it; every other execution reads as before.

use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;

use crate::Timestamp;
use crate::error::Error;
use crate::event::Event;
use crate::execution::{Execution, ExecutionState, TaskStatus};
use crate::ids::{ExecutionId, StepId, WorkflowName};

/// A `Result` whose error is [`StoreError`].
pub type StoreResult<T> = Result<T, StoreError>;

/// Durable storage of definitions, executions and journals.
///
/// Every method may fail with [`StoreError::Unavailable`] when the backing storage cannot be
/// reached or written, and every write with [`StoreError::NoSpace`] when the storage has no
/// room for it (nothing was written; the same write may be made again once there is room); the
/// other errors are stated per method.
pub trait Store: Send + Sync + 'static {
    /// Stores `definition` as the next version of its name, atomically: when the latest version
    /// has the same content hash, nothing changes and the answer names that version.
    fn put_definition(&self, definition: NewDefinition) -> impl Future<Output = StoreResult<PutDefinition>> + Send;

    /// One version of a definition, the latest when `version` is `None`.
    /// [`StoreError::NotFound`] when there is no such name or version.
    fn get_definition(
        &self,
        name: &WorkflowName,
        version: Option<u32>,
    ) -> impl Future<Output = StoreResult<StoredDefinition>> + Send;

    /// The latest version of every definition, by name.
    fn list_definitions(&self) -> impl Future<Output = StoreResult<Vec<StoredDefinition>>> + Send;

    /// Stores a new execution. With an idempotency key that was used before, stores nothing
    /// and answers with the execution created with it (whatever its workflow or input; the
    /// caller decides whether a reused key is a mistake). [`StoreError::AlreadyExists`] when
    /// the id is taken by another execution; [`StoreError::Invalid`] when a timestamp cannot be
    /// stored.
    fn create_execution(
        &self,
        execution: Execution,
        idempotency_key: Option<IdempotencyKey>,
    ) -> impl Future<Output = StoreResult<CreatedExecution>> + Send;

    /// Stores a new execution as [`create_execution`](Self::create_execution) does, but only
    /// while its version is the latest of its workflow: `Ok(None)`, nothing stored, once a
    /// newer version was put. For a server that shares its store with others, which apply
    /// versions it has not seen: a start that comes after another server's apply then never
    /// uses an older version, without reading the definition on every start. The default
    /// looks the latest version up, then creates; a store checks it in the write itself.
    fn create_latest_execution(
        &self,
        execution: Execution,
        idempotency_key: Option<IdempotencyKey>,
    ) -> impl Future<Output = StoreResult<Option<CreatedExecution>>> + Send {
        async move {
            if let Some(key) = &idempotency_key
                && let Some(existing) = self.find_by_idempotency_key(key).await?
            {
                return Ok(Some(CreatedExecution { execution: existing, created: false }));
            }
            let latest = self.get_definition(&execution.workflow, None).await?;
            if latest.version > execution.version {
                return Ok(None);
            }
            self.create_execution(execution, idempotency_key).await.map(Some)
        }
    }

    /// One execution. [`StoreError::NotFound`] when there is none with this id.
    fn get_execution(&self, id: ExecutionId) -> impl Future<Output = StoreResult<Execution>> + Send;

    /// The execution created with `key`, as it is now (the one [`Store::create_execution`]
    /// answers for the key); `None` when no execution was created with it. A lookup in the
    /// store's key index, never a scan of the executions.
    fn find_by_idempotency_key(
        &self,
        key: &IdempotencyKey,
    ) -> impl Future<Output = StoreResult<Option<Execution>>> + Send;

    /// Replaces the state, output, error, tasks and `updated_at` of an execution, atomically,
    /// and answers with the execution after the update. A state change must be one the state
    /// machine allows from the stored state ([`StoreError::StateConflict`] otherwise), so a
    /// stale writer cannot move an execution out of an end state; an update that keeps the
    /// state is always allowed.
    fn update_execution(&self, update: ExecutionUpdate) -> impl Future<Output = StoreResult<Execution>> + Send;

    /// One page of the executions matching `filter`, ordered by `(created_at, id)`. Paging is
    /// keyset based: executions created while a caller pages never make it see one twice or
    /// skip one that existed when it started. With an idempotency key in the filter, the page
    /// holds at most the key's execution (found as [`Store::find_by_idempotency_key`] finds it)
    /// and there is no next page.
    fn list_executions(
        &self,
        filter: &ExecutionFilter,
        page: &PageRequest,
    ) -> impl Future<Output = StoreResult<ExecutionPage>> + Send;

    /// The ids of every execution not in an end state (created, running or paused) and not
    /// parked, oldest first: what recovery reloads on start. Each is then read on its own, so
    /// one corrupt execution does not stop the others from recovering.
    fn unfinished_executions(&self) -> impl Future<Output = StoreResult<Vec<ExecutionId>>> + Send;

    /// Up to `limit` parked, unfinished executions whose wake time is at or before `before`,
    /// the earliest first: what the engine loads back as their timers come due. Parked ones
    /// without a wake time (waiting for a signal or a child) are never listed.
    fn parked_due(&self, before: Timestamp, limit: usize)
    -> impl Future<Output = StoreResult<Vec<ExecutionId>>> + Send;

    /// Appends events to their executions' journals, all or nothing, and returns once they are
    /// durable. `events` may hold several executions; per execution they must continue its
    /// journal without a gap or a repeat ([`StoreError::SequenceConflict`]).
    /// [`StoreError::NotFound`] when an execution does not exist. An empty list is a no-op.
    ///
    /// After [`StoreError::Unavailable`] the events may or may not have been written (a commit
    /// can fail after the storage took it): read the journal before appending them again; a
    /// repeat of events that did land fails with [`StoreError::SequenceConflict`].
    fn append(&self, events: Vec<Event>) -> impl Future<Output = StoreResult<()>> + Send;

    /// The events of an execution's journal from `from_sequence` (1 for all) to the end.
    /// [`StoreError::NotFound`] when the execution does not exist; [`StoreError::Corrupt`]
    /// when its journal has a gap or an unreadable event.
    fn read_journal(
        &self,
        execution: ExecutionId,
        from_sequence: u64,
    ) -> impl Future<Output = StoreResult<Vec<Event>>> + Send;

    /// Removes up to `limit` ended executions whose [`Execution::expires_at`] is at or before
    /// `now`, the earliest first, each with its journal and its idempotency key, so that the
    /// key starts a new execution; answers how many it removed. Fewer than `limit` means none
    /// more is due. Found through an index by expiry time, never a scan.
    fn remove_expired(&self, now: Timestamp, limit: usize) -> impl Future<Output = StoreResult<usize>> + Send;
}

/// A definition to store; the store gives it its version.
#[derive(Debug, Clone, PartialEq)]
pub struct NewDefinition {
    /// The workflow's name.
    pub name: WorkflowName,
    /// A digest of the body chosen by the caller; equal hashes mean equal content.
    pub content_hash: String,
    /// The definition as JSON.
    pub body: serde_json::Value,
    /// When it was submitted.
    pub created_at: Timestamp,
}

/// A stored version of a definition.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct StoredDefinition {
    /// The workflow's name.
    pub name: WorkflowName,
    /// 1 for the first version, then one more per changed content.
    pub version: u32,
    /// The digest the caller gave.
    pub content_hash: String,
    /// The definition as JSON.
    pub body: serde_json::Value,
    /// When this version was stored.
    pub created_at: Timestamp,
}

/// What [`Store::put_definition`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PutDefinition {
    /// The version holding the content: new, or the latest when unchanged.
    pub version: u32,
    /// False when the latest version already had this content hash.
    pub created: bool,
}

/// What [`Store::create_execution`] did.
#[derive(Debug, Clone, PartialEq)]
pub struct CreatedExecution {
    /// The stored execution: the new one, or the one created earlier with the same key.
    pub execution: Execution,
    /// False when the idempotency key had been used before.
    pub created: bool,
}

/// The longest idempotency key accepted, in bytes.
pub const MAX_IDEMPOTENCY_KEY_LEN: usize = 256;

/// A caller's key that makes creating an execution idempotent: 1 to 256 bytes, no control
/// characters.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct IdempotencyKey(Box<str>);

impl IdempotencyKey {
    /// Checks `value` against the rule.
    pub fn new(value: &str) -> crate::Result<Self> {
        let reason = if value.is_empty() {
            Some("must not be empty".to_owned())
        } else if value.len() > MAX_IDEMPOTENCY_KEY_LEN {
            Some(format!("is {} bytes long, the limit is {MAX_IDEMPOTENCY_KEY_LEN}", value.len()))
        } else if value.chars().any(char::is_control) {
            Some("must not hold control characters".to_owned())
        } else {
            None
        };
        match reason {
            Some(reason) => Err(Error::invalid("idempotency_key", value, reason)),
            None => Ok(Self(value.into())),
        }
    }

    /// The key as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for IdempotencyKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl fmt::Display for IdempotencyKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The part of an execution that changes after creation.
#[derive(Debug, Clone, PartialEq)]
pub struct ExecutionUpdate {
    /// The execution to update.
    pub id: ExecutionId,
    /// Its new state.
    pub state: ExecutionState,
    /// Its output.
    pub output: Option<serde_json::Value>,
    /// Why it failed or was cancelled.
    pub error: Option<String>,
    /// Why it failed, in detail.
    pub problem: Option<crate::Problem>,
    /// Set while it waits out of memory.
    pub parked: Option<crate::execution::Parked>,
    /// Its tasks by path.
    pub tasks: BTreeMap<StepId, TaskStatus>,
    /// When it changed.
    pub updated_at: Timestamp,
}

impl From<&Execution> for ExecutionUpdate {
    fn from(execution: &Execution) -> Self {
        Self {
            id: execution.id,
            state: execution.state,
            output: execution.output.clone(),
            error: execution.error.clone(),
            problem: execution.problem.clone(),
            parked: execution.parked,
            tasks: execution.tasks.clone(),
            updated_at: execution.updated_at,
        }
    }
}

impl ExecutionUpdate {
    /// Applies the update to `stored`, the execution as the store holds it, when the state
    /// machine allows the state change. For [`Store`] implementations.
    pub fn apply(&self, stored: &mut Execution) -> StoreResult<()> {
        if stored.state != self.state && !stored.state.can_become(self.state) {
            return Err(StoreError::StateConflict { execution: self.id, from: stored.state, to: self.state });
        }
        // An execution that ends is kept for its retention from then: it expires once.
        if self.state.is_terminal() && !stored.state.is_terminal() {
            stored.expires_at = stored.retention.and_then(|keep| {
                chrono::Duration::from_std(keep).ok().and_then(|keep| self.updated_at.checked_add_signed(keep))
            });
        }
        stored.state = self.state;
        stored.output.clone_from(&self.output);
        stored.error.clone_from(&self.error);
        stored.problem.clone_from(&self.problem);
        // An execution that ends is out of any wait.
        stored.parked = if self.state.is_terminal() { None } else { self.parked };
        stored.tasks.clone_from(&self.tasks);
        stored.updated_at = self.updated_at;
        Ok(())
    }
}

/// Which executions a listing returns; `None` fields match everything.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ExecutionFilter {
    /// Only runs of this workflow.
    pub workflow: Option<WorkflowName>,
    /// Only executions in this state.
    pub state: Option<ExecutionState>,
    /// Only executions created at or after this time.
    pub created_from: Option<Timestamp>,
    /// Only executions created before this time.
    pub created_before: Option<Timestamp>,
    /// Only the execution created with this idempotency key: at most one. An execution does
    /// not carry its key, so [`matches`](Self::matches) cannot check this field; stores apply
    /// it by looking the key up in their index.
    pub idempotency_key: Option<IdempotencyKey>,
}

impl ExecutionFilter {
    /// True when `execution` passes every field of the filter but the idempotency key.
    pub fn matches(&self, execution: &Execution) -> bool {
        self.workflow.as_ref().is_none_or(|w| *w == execution.workflow)
            && self.state.is_none_or(|s| s == execution.state)
            && self.created_from.is_none_or(|t| execution.created_at >= t)
            && self.created_before.is_none_or(|t| execution.created_at < t)
    }
}

/// The page size when a request does not say.
pub const DEFAULT_PAGE_LIMIT: u32 = 100;
/// The largest page a listing returns.
pub const MAX_PAGE_LIMIT: u32 = 1000;

/// The direction of a listing over `(created_at, id)`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum Order {
    /// Ascending: executions created while paging show up on later pages.
    #[default]
    OldestFirst,
    /// Descending: executions created while paging are not shown.
    NewestFirst,
}

/// Which page of a listing to return.
#[derive(Debug, Clone, PartialEq)]
pub struct PageRequest {
    /// Executions per page: 0 means [`DEFAULT_PAGE_LIMIT`], more than [`MAX_PAGE_LIMIT`] means
    /// [`MAX_PAGE_LIMIT`].
    pub limit: u32,
    /// The direction.
    pub order: Order,
    /// Where the previous page ended; `None` for the first page. Use it with the same filter
    /// and order as that page.
    pub token: Option<PageToken>,
}

impl Default for PageRequest {
    fn default() -> Self {
        Self { limit: DEFAULT_PAGE_LIMIT, order: Order::OldestFirst, token: None }
    }
}

impl PageRequest {
    /// The page size this request stands for, in `1..=MAX_PAGE_LIMIT`.
    pub fn effective_limit(&self) -> usize {
        let limit = if self.limit == 0 { DEFAULT_PAGE_LIMIT } else { self.limit.min(MAX_PAGE_LIMIT) };
        limit as usize
    }

    /// The `(created_at, id)` position the page starts after, decoded from the token.
    pub fn after(&self) -> StoreResult<Option<(Timestamp, ExecutionId)>> {
        self.token.as_ref().map(PageToken::position).transpose()
    }
}

/// Where a page ended: opaque to callers, who hand it back to get the next page.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PageToken(String);

impl PageToken {
    /// The token of the position `(created_at, id)`. For [`Store`] implementations.
    pub fn at(created_at: Timestamp, id: ExecutionId) -> Self {
        let seconds = created_at.timestamp();
        let nanos = created_at.timestamp_subsec_nanos();
        Self(format!("v1.{seconds}.{nanos}.{}", id.as_uuid().simple()))
    }

    /// Wraps text a caller handed back; it is checked when used.
    pub fn from_text(text: String) -> Self {
        Self(text)
    }

    /// The token as text, for callers to hand back later.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The `(created_at, id)` position the token stands for. [`StoreError::Invalid`] when the
    /// text is not a token.
    pub fn position(&self) -> StoreResult<(Timestamp, ExecutionId)> {
        let invalid = || StoreError::Invalid {
            field: "page_token".to_owned(),
            reason: format!("{:?} is not a page token", self.0),
        };
        let mut parts = self.0.split('.');
        let (Some("v1"), Some(seconds), Some(nanos), Some(id), None) =
            (parts.next(), parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(invalid());
        };
        let seconds: i64 = seconds.parse().map_err(|_| invalid())?;
        let nanos: u32 = nanos.parse().map_err(|_| invalid())?;
        let at = chrono::DateTime::from_timestamp(seconds, nanos).ok_or_else(invalid)?;
        let uuid = uuid::Uuid::try_parse(id).map_err(|_| invalid())?;
        let id = ExecutionId::from_uuid(uuid).map_err(|_| invalid())?;
        Ok((at, id))
    }
}

/// One page of executions.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ExecutionPage {
    /// The executions of this page, in the order asked for.
    pub executions: Vec<Execution>,
    /// The token for the next page; `None` on the last page.
    pub next: Option<PageToken>,
}

/// The nanoseconds since the Unix epoch of `at`, the form stores order timestamps by.
/// [`StoreError::Invalid`] outside the years 1678 to 2261.
pub fn timestamp_nanos(field: &str, at: Timestamp) -> StoreResult<i64> {
    at.timestamp_nanos_opt().ok_or_else(|| StoreError::Invalid {
        field: field.to_owned(),
        reason: format!("{at} is outside the storable range (years 1678 to 2261)"),
    })
}

/// What a [`StoreError`] is about.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Record {
    /// A definition; the latest version when `version` is `None`.
    Definition {
        /// Its name.
        name: WorkflowName,
        /// Its version.
        version: Option<u32>,
    },
    /// An execution's record.
    Execution(ExecutionId),
    /// An execution's journal.
    Journal(ExecutionId),
}

impl Record {
    /// The execution the record belongs to, if any.
    pub fn execution(&self) -> Option<ExecutionId> {
        match self {
            Self::Definition { .. } => None,
            Self::Execution(id) | Self::Journal(id) => Some(*id),
        }
    }
}

impl fmt::Display for Record {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Definition { name, version: None } => write!(f, "definition {:?}", name.as_str()),
            Self::Definition { name, version: Some(v) } => write!(f, "definition {:?} version {v}", name.as_str()),
            Self::Execution(id) => write!(f, "execution {id}"),
            Self::Journal(id) => write!(f, "journal of execution {id}"),
        }
    }
}

/// Why a [`Store`] call failed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// Nothing is stored under this name or id.
    #[error("{0} not found")]
    NotFound(Record),
    /// An append does not continue the journal: `got` is where `expected` belongs.
    #[error("journal of execution {execution} expects sequence {expected}, got {got}")]
    SequenceConflict {
        /// The execution.
        execution: ExecutionId,
        /// The next sequence number of its journal.
        expected: u64,
        /// The sequence number the append had there.
        got: u64,
    },
    /// An execution with this id exists already (and was not created with the same
    /// idempotency key).
    #[error("execution {0} already exists")]
    AlreadyExists(ExecutionId),
    /// An update asks for a state change the state machine does not allow from the stored state.
    #[error("execution {execution} cannot go from {from} to {to}")]
    StateConflict {
        /// The execution.
        execution: ExecutionId,
        /// Its stored state.
        from: ExecutionState,
        /// The state asked for.
        to: ExecutionState,
    },
    /// A stored record cannot be read back or breaks an invariant, e.g. a journal with a gap.
    #[error("corrupt {record}: {reason}")]
    Corrupt {
        /// The damaged record.
        record: Record,
        /// What is wrong with it.
        reason: String,
    },
    /// An argument the store cannot take, e.g. a page token it did not issue.
    #[error("invalid {field}: {reason}")]
    Invalid {
        /// The argument.
        field: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The backing storage could not be reached or written; the call may be retried.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// The storage has no room for the write (a full disk): nothing was written, and the same
    /// write may be made again once there is room. The text names the storage.
    #[error("no space left to store it: {0}")]
    NoSpace(String),
    /// This server no longer holds the right to write the execution (another server took its
    /// journal or partition over, with a newer epoch): nothing was written, and this server
    /// must stop working on the execution. The text names the epochs.
    #[error("fenced: {0}")]
    Fenced(String),
}

impl StoreError {
    /// Builds a [`StoreError::Corrupt`].
    pub fn corrupt(record: Record, reason: impl Into<String>) -> Self {
        Self::Corrupt { record, reason: reason.into() }
    }

    /// Builds a [`StoreError::Unavailable`] from anything that displays.
    pub fn unavailable(error: impl fmt::Display) -> Self {
        Self::Unavailable(error.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id() -> ExecutionId {
        ExecutionId::generate()
    }

    #[test]
    fn page_tokens_round_trip_and_reject_foreign_text() {
        let id = id();
        let at = chrono::DateTime::from_timestamp(-5, 123_456_789).unwrap();
        let token = PageToken::at(at, id);
        assert_eq!(token.position().unwrap(), (at, id));
        let reparsed = PageToken::from_text(token.as_str().to_owned());
        assert_eq!(reparsed.position().unwrap(), (at, id));
        for bad in ["", "v1", "v2.1.2.00000000000000000000000000000000", "v1.x.0.abc", "v1.1.0.nope", "v1.1.0.a.b"] {
            let err = PageToken::from_text(bad.to_owned()).position().unwrap_err();
            assert!(matches!(&err, StoreError::Invalid { field, .. } if field == "page_token"), "{bad:?}: {err}");
        }
        // A v4 UUID is not an execution id.
        let v4 = format!("v1.1.0.{}", "6f1c1b9e3f0a4c5e9d2b1a2b3c4d5e6f");
        assert!(PageToken::from_text(v4).position().is_err());
    }

    #[test]
    fn page_limits_are_clamped() {
        let check = |limit, expected| {
            assert_eq!(PageRequest { limit, ..PageRequest::default() }.effective_limit(), expected, "{limit}");
        };
        check(0, 100);
        check(1, 1);
        check(1000, 1000);
        check(5000, 1000);
    }

    #[test]
    fn idempotency_keys_follow_the_rule() {
        assert_eq!(IdempotencyKey::new("order-42").unwrap().as_str(), "order-42");
        assert!(IdempotencyKey::new("").unwrap_err().to_string().contains("must not be empty"));
        assert!(IdempotencyKey::new(&"k".repeat(257)).unwrap_err().to_string().contains("257 bytes"));
        assert!(IdempotencyKey::new("a\nb").unwrap_err().to_string().contains("control characters"));
    }

    #[test]
    fn errors_name_what_they_are_about() {
        let id = id();
        let name = WorkflowName::new("checkout").unwrap();
        let check = |err: StoreError, expected: String| assert_eq!(err.to_string(), expected);
        check(
            StoreError::NotFound(Record::Definition { name: name.clone(), version: Some(3) }),
            r#"definition "checkout" version 3 not found"#.to_owned(),
        );
        check(
            StoreError::NotFound(Record::Definition { name, version: None }),
            r#"definition "checkout" not found"#.to_owned(),
        );
        check(
            StoreError::SequenceConflict { execution: id, expected: 4, got: 6 },
            format!("journal of execution {id} expects sequence 4, got 6"),
        );
        check(
            StoreError::corrupt(Record::Journal(id), "sequence 3 is missing"),
            format!("corrupt journal of execution {id}: sequence 3 is missing"),
        );
        check(
            StoreError::StateConflict { execution: id, from: ExecutionState::Completed, to: ExecutionState::Running },
            format!("execution {id} cannot go from completed to running"),
        );
        assert_eq!(Record::Journal(id).execution(), Some(id));
    }

    #[test]
    fn updates_follow_the_state_machine() {
        let at = chrono::DateTime::from_timestamp(1_800_000_000, 0).unwrap();
        let mut stored = Execution {
            id: id(),
            workflow: WorkflowName::new("w").unwrap(),
            version: 1,
            state: ExecutionState::Running,
            input: serde_json::json!({}),
            output: None,
            error: None,
            tasks: BTreeMap::new(),
            created_at: at,
            updated_at: at,
            trace: None,
            parent: None,
            problem: None,
            parked: None,
            retention: Some(std::time::Duration::from_secs(60)),
            expires_at: None,
        };
        let mut update = ExecutionUpdate::from(&stored);
        update.state = ExecutionState::Completed;
        update.output = Some(serde_json::json!(7));
        update.updated_at = at + chrono::Duration::seconds(5);
        update.apply(&mut stored).unwrap();
        assert_eq!((stored.state, stored.output.clone()), (ExecutionState::Completed, Some(serde_json::json!(7))));
        // It expires its retention after it ended, and a later rewrite does not move that.
        let expires = Some(at + chrono::Duration::seconds(65));
        assert_eq!(stored.expires_at, expires);
        update.updated_at = at + chrono::Duration::seconds(50);
        // The same state again is fine; leaving an end state is not, and changes nothing.
        update.apply(&mut stored).unwrap();
        assert_eq!(stored.expires_at, expires);
        update.state = ExecutionState::Running;
        update.output = None;
        let err = update.apply(&mut stored).unwrap_err();
        assert_eq!(
            err,
            StoreError::StateConflict {
                execution: stored.id,
                from: ExecutionState::Completed,
                to: ExecutionState::Running
            }
        );
        assert_eq!(stored.output, Some(serde_json::json!(7)));
    }

    #[test]
    fn filters_match_every_field() {
        let at = |s| chrono::DateTime::from_timestamp(s, 0).unwrap();
        let execution = Execution {
            id: id(),
            workflow: WorkflowName::new("w").unwrap(),
            version: 1,
            state: ExecutionState::Paused,
            input: serde_json::Value::Null,
            output: None,
            error: None,
            tasks: BTreeMap::new(),
            created_at: at(100),
            updated_at: at(100),
            trace: None,
            parent: None,
            problem: None,
            parked: None,
            retention: None,
            expires_at: None,
        };
        let check =
            |filter: ExecutionFilter, expected: bool| assert_eq!(filter.matches(&execution), expected, "{filter:?}");
        check(ExecutionFilter::default(), true);
        check(ExecutionFilter { workflow: Some(WorkflowName::new("v").unwrap()), ..Default::default() }, false);
        check(ExecutionFilter { state: Some(ExecutionState::Paused), ..Default::default() }, true);
        check(ExecutionFilter { state: Some(ExecutionState::Running), ..Default::default() }, false);
        check(
            ExecutionFilter { created_from: Some(at(100)), created_before: Some(at(101)), ..Default::default() },
            true,
        );
        check(ExecutionFilter { created_before: Some(at(100)), ..Default::default() }, false);
        check(ExecutionFilter { created_from: Some(at(101)), ..Default::default() }, false);
        // The key is the store's to match, through its index: an execution does not carry it.
        check(ExecutionFilter { idempotency_key: Some(IdempotencyKey::new("k").unwrap()), ..Default::default() }, true);
        assert!(timestamp_nanos("created_at", at(100)).is_ok());
        assert!(timestamp_nanos("created_at", at(10_000_000_000)).is_err());
    }
}
