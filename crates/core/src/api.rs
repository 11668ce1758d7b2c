//! The ports the public API is served over: workflow definitions ([`WorkflowCatalog`]),
//! executions ([`Executions`]), worker tasks ([`WorkerTasks`]) and planning plus running a goal
//! in one call ([`Orchestrating`]), with the one error type they share ([`ApiError`]).
//!
//! The traits are object safe (the gRPC layer holds them as `Arc<dyn ...>`), so their methods
//! return boxed futures ([`BoxFuture`]) and streams ([`BoxStream`]) and take owned arguments.
//! The orchestrator implements them over the workflow engine, the executor's worker queues and
//! the planner; in-memory fakes are in `fakes` behind the `test-util` feature.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use futures_util::Stream;
use serde_json::Value;

use crate::Timestamp;
use crate::error::Error;
use crate::event::Event;
use crate::execution::{Execution, ExecutionState};
use crate::goal::Goal;
use crate::ids::{ExecutionId, ServiceId, StepId, WorkflowName};
use crate::plan::Plan;
use crate::store::{ExecutionFilter, ExecutionPage, IdempotencyKey, PageRequest, StoreError};

#[cfg(any(test, feature = "test-util"))]
pub mod fakes;

/// A boxed future that can move between threads: what the object-safe ports return.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A boxed stream that can move between threads.
pub type BoxStream<'a, T> = Pin<Box<dyn Stream<Item = T> + Send + 'a>>;

/// The events of one execution, as [`Executions::watch`] yields them.
pub type EventStream = BoxStream<'static, ApiResult<Event>>;

/// A `Result` whose error is [`ApiError`].
pub type ApiResult<T> = Result<T, ApiError>;

/// Why a call of an API port failed. Every message names what it is about; the kind says what
/// the caller can do about it (the gRPC layer maps each kind to one status code).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ApiError {
    /// Nothing exists under this name, id or token.
    #[error("{0}")]
    NotFound(String),
    /// An argument breaks its rule; `message` names the field.
    #[error("{message}")]
    InvalidArgument {
        /// The argument, e.g. `input_json` or `page_token`.
        field: String,
        /// The whole message, naming the field and the rule.
        message: String,
    },
    /// What the call would create exists already, e.g. an idempotency key used for another
    /// request.
    #[error("{0}")]
    AlreadyExists(String),
    /// The call is well formed but not allowed in the current state, e.g. an illegal state
    /// transition or a goal no plan meets.
    #[error("{0}")]
    FailedPrecondition(String),
    /// A limit was reached (a full queue, too many requests); a later call may pass.
    #[error("{0}")]
    ResourceExhausted(String),
    /// A position past the end of what exists, e.g. a watch of an unfinished execution from
    /// past the next event of its journal.
    #[error("{0}")]
    OutOfRange(String),
    /// A backing component cannot serve the call now; it may be retried.
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// A bug or broken invariant on the serving side, e.g. a corrupt record.
    #[error("internal error: {0}")]
    Internal(String),
}

impl ApiError {
    /// An [`ApiError::InvalidArgument`] for `field`, saying why: `invalid <field>: <reason>`.
    pub fn invalid(field: impl Into<String>, reason: impl fmt::Display) -> Self {
        let field = field.into();
        let message = format!("invalid {field}: {reason}");
        Self::InvalidArgument { field, message }
    }

    /// An [`ApiError::NotFound`] with `message`.
    pub fn not_found(message: impl fmt::Display) -> Self {
        Self::NotFound(message.to_string())
    }

    /// An [`ApiError::FailedPrecondition`] with `message`.
    pub fn failed_precondition(message: impl fmt::Display) -> Self {
        Self::FailedPrecondition(message.to_string())
    }

    /// The [`ApiError::FailedPrecondition`] of an execution asked to go where its state
    /// machine does not allow.
    pub fn transition(execution: ExecutionId, from: ExecutionState, to: ExecutionState) -> Self {
        Self::FailedPrecondition(format!("execution {execution} cannot go from {from} to {to}"))
    }
}

impl From<Error> for ApiError {
    fn from(error: Error) -> Self {
        match error {
            Error::Invalid { ref field, .. } => {
                Self::InvalidArgument { field: field.clone(), message: error.to_string() }
            }
            Error::UnknownService(_) => Self::NotFound(error.to_string()),
            Error::InvalidTransition { .. } | Error::Precondition(_) => Self::FailedPrecondition(error.to_string()),
            Error::Unavailable(reason) => Self::Unavailable(reason),
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(error: StoreError) -> Self {
        match error {
            StoreError::NotFound(_) => Self::NotFound(error.to_string()),
            StoreError::AlreadyExists(_) => Self::AlreadyExists(error.to_string()),
            StoreError::StateConflict { .. } => Self::FailedPrecondition(error.to_string()),
            StoreError::Invalid { ref field, .. } => {
                Self::InvalidArgument { field: field.clone(), message: error.to_string() }
            }
            StoreError::Unavailable(reason) => Self::Unavailable(reason),
            // Another server owns the execution now: asking again (there) may succeed.
            StoreError::Fenced(_) => Self::Unavailable(error.to_string()),
            StoreError::NoSpace(_) => Self::ResourceExhausted(error.to_string()),
            StoreError::SequenceConflict { .. } | StoreError::Corrupt { .. } => Self::Internal(error.to_string()),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Workflow definitions.

/// The text format of a definition's source.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum DefinitionFormat {
    /// Detect from the text: JSON when it starts with `{`, else YAML. Only on input.
    #[default]
    Auto,
    /// YAML.
    Yaml,
    /// JSON.
    Json,
}

impl DefinitionFormat {
    /// The format `text` is in: `self`, or for [`DefinitionFormat::Auto`] JSON when the text
    /// starts with `{` and YAML otherwise.
    pub fn detect(self, text: &str) -> Self {
        match self {
            Self::Auto if text.trim_start().starts_with('{') => Self::Json,
            Self::Auto => Self::Yaml,
            known => known,
        }
    }
}

/// One stored version of a definition, without its body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DefinitionSummary {
    /// The workflow's name.
    pub name: WorkflowName,
    /// From 1, one more per changed apply.
    pub version: u32,
    /// The definition's description.
    pub description: String,
    /// Hex digest of the canonical JSON form; equal hashes mean equal definitions.
    pub content_hash: String,
    /// How many steps it has.
    pub step_count: u32,
    /// When this version was stored.
    pub created_at: Timestamp,
}

/// What [`WorkflowCatalog::apply`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppliedDefinition {
    /// The version holding the content: the new one, or the latest when unchanged.
    pub definition: DefinitionSummary,
    /// False when the latest version already had this content and nothing was stored.
    pub created: bool,
}

/// A definition's text as it was applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DefinitionSource {
    /// Its format (never [`DefinitionFormat::Auto`]).
    pub format: DefinitionFormat,
    /// The text.
    pub text: String,
}

/// One version of a definition with its body.
#[derive(Debug, Clone, PartialEq)]
pub struct DefinitionDetail {
    /// The version.
    pub summary: DefinitionSummary,
    /// The checked definition in its canonical JSON form, defaults filled in.
    pub definition: Value,
    /// The text as applied, when the implementation keeps it.
    pub source: Option<DefinitionSource>,
}

/// Which definitions [`WorkflowCatalog::list`] returns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DefinitionQuery {
    /// `None`: the latest version of every workflow, by name. `Some`: every version of this
    /// workflow, newest first.
    pub name: Option<WorkflowName>,
    /// The `next` of the previous page; `None` for the first page. Opaque: only tokens the
    /// same implementation issued for the same `name` are valid
    /// ([`ApiError::InvalidArgument`] naming `page_token` otherwise).
    pub page_token: Option<String>,
    /// Most definitions to return, at least 1 (the caller caps it).
    pub limit: usize,
}

/// One page of definitions.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DefinitionPage {
    /// The definitions of this page.
    pub definitions: Vec<DefinitionSummary>,
    /// The token of the next page; `None` on the last page.
    pub next: Option<String>,
}

/// Versioned workflow definitions.
pub trait WorkflowCatalog: Send + Sync + 'static {
    /// Parses and checks `source` and stores it as the next version of its name, unless the
    /// latest version has the same content hash (then nothing changes and the answer names
    /// that version). [`ApiError::InvalidArgument`] naming the field or step when the text is
    /// not a valid definition.
    fn apply(&self, source: String, format: DefinitionFormat) -> BoxFuture<'_, ApiResult<AppliedDefinition>>;

    /// One version of a definition, the latest when `version` is `None`.
    /// [`ApiError::NotFound`] when there is no such name or version.
    fn get(&self, name: WorkflowName, version: Option<u32>) -> BoxFuture<'_, ApiResult<DefinitionDetail>>;

    /// One page of definitions (see [`DefinitionQuery`]).
    fn list(&self, query: DefinitionQuery) -> BoxFuture<'_, ApiResult<DefinitionPage>>;
}

// ---------------------------------------------------------------------------------------------
// Executions.

/// What [`Executions::start`] starts.
#[derive(Debug, Clone, PartialEq)]
pub struct StartExecution {
    /// The workflow.
    pub workflow: WorkflowName,
    /// Its version; `None` for the latest.
    pub version: Option<u32>,
    /// The run's input.
    pub input: Value,
    /// Makes retried starts safe: a key used before answers with the execution it started.
    pub idempotency_key: Option<IdempotencyKey>,
    /// The caller's trace context (`traceparent`), which the execution's trace continues.
    pub trace: Option<crate::trace::TraceContext>,
}

/// What [`Executions::start`] did.
#[derive(Debug, Clone, PartialEq)]
pub struct StartedExecution {
    /// The execution: the new one, or the one the idempotency key started earlier.
    pub execution: Execution,
    /// True when the idempotency key had started `execution` before and nothing was started.
    pub existing: bool,
}

/// Which executions [`Executions::list`] returns; empty or `None` fields match everything.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ExecutionQuery {
    /// Only runs of this workflow.
    pub workflow: Option<WorkflowName>,
    /// Only executions in any of these states; empty: every state.
    pub states: Vec<ExecutionState>,
    /// Only executions created at or after this time.
    pub created_from: Option<Timestamp>,
    /// Only executions created before this time.
    pub created_before: Option<Timestamp>,
    /// Only executions whose id (32 lowercase hex digits, no dashes) starts with these.
    pub id_prefix: Option<IdPrefix>,
    /// Only the execution this idempotency key started: at most one, found through the
    /// store's key index.
    pub idempotency_key: Option<IdempotencyKey>,
}

impl ExecutionQuery {
    /// True when `execution` passes every field of the query but the idempotency key, which
    /// an execution does not carry (see [`ExecutionFilter::idempotency_key`]).
    pub fn matches(&self, execution: &Execution) -> bool {
        (self.states.is_empty() || self.states.contains(&execution.state))
            && self.id_prefix.as_ref().is_none_or(|prefix| prefix.matches(execution.id))
            && ExecutionFilter { state: None, ..self.query_filter() }.matches(execution)
    }

    /// The narrowest [`ExecutionFilter`] a store can apply for this query: everything but
    /// the states when there are several, and the id prefix as the creation times it allows
    /// (the caller then keeps the executions that [`matches`](Self::matches) from each page;
    /// the page token stays valid, pages may come out short).
    pub fn store_filter(&self) -> ExecutionFilter {
        let mut filter = self.query_filter();
        if let Some((from, before)) = self.id_prefix.as_ref().and_then(IdPrefix::created_range) {
            filter.created_from = Some(filter.created_from.map_or(from, |t| t.max(from)));
            filter.created_before = Some(filter.created_before.map_or(before, |t| t.min(before)));
        }
        filter
    }

    fn query_filter(&self) -> ExecutionFilter {
        ExecutionFilter {
            workflow: self.workflow.clone(),
            state: match self.states.as_slice() {
                [one] => Some(*one),
                _ => None,
            },
            created_from: self.created_from,
            created_before: self.created_before,
            idempotency_key: self.idempotency_key.clone(),
        }
    }
}

/// How far an execution's `created_at` may lie from the time in its UUIDv7 id: both are read
/// from the server's clock as it creates the execution, microseconds apart; the slack covers a
/// clock that was stepped in between.
pub const ID_TIME_SLACK: Duration = Duration::from_secs(60);

/// The start of an execution id, as people copy it from a table: 1 to 32 hex digits, dashes
/// ignored, any case.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct IdPrefix(String);

impl IdPrefix {
    /// Checks `text`; [`ApiError::InvalidArgument`] naming `id_prefix`.
    pub fn new(text: &str) -> ApiResult<Self> {
        let digits: String = text.trim().chars().filter(|c| *c != '-').map(|c| c.to_ascii_lowercase()).collect();
        if digits.is_empty() || digits.len() > 32 || !digits.chars().all(|c| c.is_ascii_hexdigit()) {
            return Err(ApiError::invalid("id_prefix", format!("{text:?} is not the start of an execution id")));
        }
        Ok(Self(digits))
    }

    /// The prefix: lowercase hex digits without dashes.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// True when `id` starts with the prefix.
    pub fn matches(&self, id: ExecutionId) -> bool {
        id.as_uuid().simple().to_string().starts_with(&self.0)
    }

    /// The whole id, when the prefix has all 32 digits.
    pub fn whole(&self) -> Option<ExecutionId> {
        let uuid = uuid::Uuid::try_parse(&self.0).ok()?;
        ExecutionId::from_uuid(uuid).ok()
    }

    /// The creation times an execution with this prefix can have: the first 12 hex digits of a
    /// UUIDv7 are its milliseconds since the Unix epoch, so a prefix bounds them, widened by
    /// [`ID_TIME_SLACK`] on both sides. `None` when the range is too wide to help (under 8
    /// digits: more than a minute of ids).
    pub fn created_range(&self) -> Option<(Timestamp, Timestamp)> {
        let known = self.0.len().min(12);
        if known < 8 {
            return None;
        }
        let shift = 4 * (12 - known) as u32;
        let low = u64::from_str_radix(&self.0[..known], 16).ok()? << shift;
        let high = low + (1u64 << shift);
        let slack = ID_TIME_SLACK.as_millis() as i64;
        let at = |millis: i64| chrono::DateTime::from_timestamp_millis(millis);
        Some((at(low as i64 - slack)?, at(high as i64 + slack)?))
    }
}

/// Runs of workflow definitions and their journals.
///
/// Errors, besides [`ApiError::Unavailable`] and [`ApiError::Internal`] anywhere:
/// [`ApiError::NotFound`] for an unknown workflow, version or execution;
/// [`ApiError::FailedPrecondition`] for a state change the state machine does not allow from
/// where the execution is.
pub trait Executions: Send + Sync + 'static {
    /// Starts a run. With an idempotency key used before for the same request, starts nothing
    /// and answers with the earlier execution (`existing`); a key used for another workflow,
    /// version or input is [`ApiError::AlreadyExists`].
    fn start(&self, request: StartExecution) -> BoxFuture<'_, ApiResult<StartedExecution>>;

    /// One execution with its tasks.
    fn get(&self, id: ExecutionId) -> BoxFuture<'_, ApiResult<Execution>>;

    /// One page of the executions matching `query`, keyset paged over `(created_at, id)` in
    /// `page.order`. An invalid page token is [`ApiError::InvalidArgument`] naming `page_token`.
    fn list(&self, query: ExecutionQuery, page: PageRequest) -> BoxFuture<'_, ApiResult<ExecutionPage>>;

    /// Stops dispatching: running -> paused. Answers with the execution after the change.
    fn pause(&self, id: ExecutionId) -> BoxFuture<'_, ApiResult<Execution>>;

    /// Dispatches again: paused -> running. Answers with the execution after the change.
    fn resume(&self, id: ExecutionId) -> BoxFuture<'_, ApiResult<Execution>>;

    /// Stops the execution for good with `reason`: created, running or paused -> cancelled.
    /// Answers with the execution after the change.
    fn cancel(&self, id: ExecutionId, reason: String) -> BoxFuture<'_, ApiResult<Execution>>;

    /// The execution's journal from `from_sequence` on (0 and 1 both mean from the start):
    /// the events journaled so far, then live ones as they are journaled, in sequence order
    /// without gaps. The stream ends after the event that ends the execution (at once when
    /// that is before `from_sequence`). [`ApiError::NotFound`] up front for an unknown
    /// execution; [`ApiError::OutOfRange`] up front for an unfinished one whose journal has
    /// fewer than `from_sequence - 1` events (the next event is as far as a watch may start).
    fn watch(&self, id: ExecutionId, from_sequence: u64) -> BoxFuture<'_, ApiResult<EventStream>>;

    /// Sends the signal `name` with `data` to a running or paused execution: journaled at once,
    /// consumed by the first `listen` task waiting for the name (now or later), each signal
    /// once. Answers with the execution after the signal is journaled.
    /// [`ApiError::FailedPrecondition`] once the execution has ended; [`ApiError::InvalidArgument`]
    /// for a bad name, data over the size limit, or too many unconsumed signals.
    fn signal(&self, id: ExecutionId, name: String, data: Value) -> BoxFuture<'_, ApiResult<Execution>>;

    /// The events journaled so far from `from_sequence` on (0 and 1 both mean from the start),
    /// without waiting for more. [`ApiError::NotFound`] for an unknown execution.
    fn journal(&self, id: ExecutionId, from_sequence: u64) -> BoxFuture<'_, ApiResult<Vec<Event>>>;
}

// ---------------------------------------------------------------------------------------------
// Worker tasks.

/// The longest task token accepted, in bytes.
pub const MAX_TASK_TOKEN_LEN: usize = 512;

/// Names one delivery of a task and its lease, for [`WorkerTasks::complete`],
/// [`WorkerTasks::fail`] and [`WorkerTasks::extend`]. Opaque to workers: 1 to 512 bytes of
/// printable text; what it encodes is the implementation's business.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TaskToken(Box<str>);

impl TaskToken {
    /// Checks `value` against the rule; [`ApiError::InvalidArgument`] naming `task_token`.
    pub fn new(value: &str) -> ApiResult<Self> {
        let reason = if value.is_empty() {
            Some("must not be empty".to_owned())
        } else if value.len() > MAX_TASK_TOKEN_LEN {
            Some(format!("is {} bytes long, the limit is {MAX_TASK_TOKEN_LEN}", value.len()))
        } else if value.chars().any(|c| c.is_control() || c.is_whitespace()) {
            Some("must not hold whitespace or control characters".to_owned())
        } else {
            None
        };
        match reason {
            Some(reason) => Err(ApiError::invalid("task_token", reason)),
            None => Ok(Self(value.into())),
        }
    }

    /// The token as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for TaskToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl fmt::Display for TaskToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// What [`WorkerTasks::poll`] asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PollTasks {
    /// Names the worker, for logs and task status.
    pub worker: String,
    /// The queues to take tasks from, at least one.
    pub queues: Vec<String>,
    /// Most tasks to lease, at least 1.
    pub max_tasks: usize,
    /// Longest to wait for the first task.
    pub max_wait: Duration,
}

/// One attempt of a step, leased to a worker.
#[derive(Debug, Clone, PartialEq)]
pub struct LeasedTask {
    /// Names this delivery and its lease.
    pub token: TaskToken,
    /// The queue it came from.
    pub queue: String,
    /// The service it was dispatched to.
    pub service: ServiceId,
    /// The execution.
    pub execution: ExecutionId,
    /// The step.
    pub step: StepId,
    /// 1 for the first attempt.
    pub attempt: u32,
    /// The same on every attempt of this step of this execution.
    pub idempotency_key: String,
    /// The step's input.
    pub input: Value,
    /// The lease ends then unless extended.
    pub lease_expires_at: Timestamp,
    /// When the attempt times out; `None`: no timeout.
    pub deadline: Option<Timestamp>,
}

/// How a worker failed a task.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskFailure {
    /// Why.
    pub error: String,
    /// Whether another attempt may help.
    pub retryable: bool,
}

/// What [`WorkerTasks::extend`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseExtension {
    /// The lease's new end.
    pub expires_at: Timestamp,
    /// The execution was cancelled or the attempt timed out: the worker should stop, its
    /// result will be discarded.
    pub cancel_requested: bool,
}

/// The pull side of worker services: tasks leased from queues and their results.
///
/// A token is live from the poll that returned it until its task is completed or failed or
/// its lease expires (then the task goes back to its queue with a new token). A token that is
/// not live (unknown, expired, superseded by a redelivery, already answered) is
/// [`ApiError::NotFound`] naming the token, and changes nothing.
pub trait WorkerTasks: Send + Sync + 'static {
    /// Leases up to `request.max_tasks` tasks from the queues, waiting up to `max_wait` for
    /// the first; empty when none came. Tasks are leased only when the future returns them:
    /// dropping it earlier loses none.
    fn poll(&self, request: PollTasks) -> BoxFuture<'_, ApiResult<Vec<LeasedTask>>>;

    /// Completes the task with the step's output.
    fn complete(&self, token: TaskToken, output: Value) -> BoxFuture<'_, ApiResult<()>>;

    /// Fails the task's attempt; the retry policy decides what follows.
    fn fail(&self, token: TaskToken, failure: TaskFailure) -> BoxFuture<'_, ApiResult<()>>;

    /// Renews the task's lease from now; answers with its new end.
    fn extend(&self, token: TaskToken) -> BoxFuture<'_, ApiResult<LeaseExtension>>;
}

// ---------------------------------------------------------------------------------------------
// Orchestration.

/// What [`Orchestrating::orchestrate`] runs.
#[derive(Debug, Clone, PartialEq)]
pub struct Orchestrate {
    /// The goal to plan for.
    pub goal: Goal,
    /// The run's input: the provided concepts by name.
    pub input: Value,
    /// `None`: answer once started. `Some`: wait up to this long for the execution to end.
    pub wait: Option<Duration>,
}

/// What [`Orchestrating::orchestrate`] did.
#[derive(Debug, Clone, PartialEq)]
pub struct Orchestration {
    /// The plan being run.
    pub plan: Plan,
    /// The workflow that runs it.
    pub workflow: WorkflowName,
    /// Its version.
    pub version: u32,
    /// The execution when answering: in an end state when the caller waited and it ended in
    /// time, else as it stood (a wait that ran out is not an error here).
    pub execution: Execution,
}

/// Plans a goal and runs the plan in one call.
pub trait Orchestrating: Send + Sync + 'static {
    /// Composes a plan for the goal, stores it as a workflow and starts it on the input.
    /// [`ApiError::InvalidArgument`] for a malformed goal, [`ApiError::FailedPrecondition`]
    /// when no plan of the services at hand meets it.
    fn orchestrate(&self, request: Orchestrate) -> BoxFuture<'_, ApiResult<Orchestration>>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_keep_their_kind_and_name_what_they_are_about() {
        let id = ExecutionId::generate();
        let invalid = ApiError::invalid("input_json", "expected value at line 1 column 1");
        assert_eq!(invalid.to_string(), "invalid input_json: expected value at line 1 column 1");
        assert!(matches!(&invalid, ApiError::InvalidArgument { field, .. } if field == "input_json"));
        assert_eq!(
            ApiError::transition(id, ExecutionState::Completed, ExecutionState::Paused).to_string(),
            format!("execution {id} cannot go from completed to paused")
        );
        let from_core = ApiError::from(Error::invalid("goal.wanted", "[]", "must not be empty"));
        assert!(matches!(&from_core, ApiError::InvalidArgument { field, .. } if field == "goal.wanted"));
        assert_eq!(from_core.to_string(), r#"invalid goal.wanted "[]": must not be empty"#);
        let missing = ApiError::from(StoreError::NotFound(crate::store::Record::Execution(id)));
        assert_eq!(missing, ApiError::NotFound(format!("execution {id} not found")));
        let corrupt = ApiError::from(StoreError::corrupt(crate::store::Record::Journal(id), "gap at 3"));
        assert!(matches!(corrupt, ApiError::Internal(_)));
    }

    #[test]
    fn task_tokens_follow_the_rule() {
        assert_eq!(TaskToken::new("t-1.2").unwrap().as_str(), "t-1.2");
        for (bad, reason) in [("", "must not be empty"), ("a b", "whitespace"), ("a\n", "control")] {
            let err = TaskToken::new(bad).unwrap_err();
            assert!(err.to_string().starts_with("invalid task_token: "), "{err}");
            assert!(err.to_string().contains(reason), "{err}");
        }
        assert!(TaskToken::new(&"t".repeat(513)).unwrap_err().to_string().contains("513 bytes"));
    }

    #[test]
    fn id_prefixes_narrow_the_creation_times_by_the_uuidv7_clock() {
        let id = ExecutionId::generate();
        let (seconds, nanos) = id.as_uuid().get_timestamp().unwrap().to_unix();
        let created = chrono::DateTime::from_timestamp(seconds as i64, nanos).unwrap();
        let text = id.to_string();
        for len in [8, 12, 13, 36] {
            let prefix = IdPrefix::new(&text[..len].to_uppercase()).unwrap();
            assert!(prefix.matches(id), "{len}");
            let (from, before) = prefix.created_range().unwrap();
            assert!(from <= created && created < before, "{len}: {from} {created} {before}");
            assert!(before - from <= chrono::Duration::seconds(200), "{len}");
        }
        assert_eq!(IdPrefix::new(&text).unwrap().whole(), Some(id));
        assert_eq!(IdPrefix::new(&text[..7]).unwrap().created_range(), None);
        assert!(!IdPrefix::new("0000").unwrap().matches(id));
        for bad in ["", "xyz", &"a".repeat(33)] {
            let err = IdPrefix::new(bad).unwrap_err();
            assert!(matches!(&err, ApiError::InvalidArgument { field, .. } if field == "id_prefix"), "{err}");
        }
        let query = ExecutionQuery { id_prefix: Some(IdPrefix::new(&text[..12]).unwrap()), ..Default::default() };
        let filter = query.store_filter();
        assert!(filter.created_from.is_some() && filter.created_before.is_some());
    }

    #[test]
    fn queries_narrow_the_store_filter_only_to_a_single_state() {
        let mut query = ExecutionQuery { states: vec![ExecutionState::Running], ..Default::default() };
        assert_eq!(query.store_filter().state, Some(ExecutionState::Running));
        query.states.push(ExecutionState::Paused);
        assert_eq!(query.store_filter().state, None);
        query.idempotency_key = Some(IdempotencyKey::new("order-42").unwrap());
        assert_eq!(query.store_filter().idempotency_key, query.idempotency_key);
        assert_eq!(DefinitionFormat::Auto.detect("  {\"name\":1}"), DefinitionFormat::Json);
        assert_eq!(DefinitionFormat::Auto.detect("name: x"), DefinitionFormat::Yaml);
        assert_eq!(DefinitionFormat::Json.detect("name: x"), DefinitionFormat::Json);
    }
}
