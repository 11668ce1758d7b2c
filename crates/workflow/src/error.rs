//! The errors of the workflow engine.

use baton_core::{ExecutionId, ExecutionState, GraphError, StepId, StoreError};

/// A `Result` whose error is [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Why a definition was refused or an engine call failed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The text is not a definition: bad syntax, an unknown field, a bad name or duration.
    #[error("definition does not parse as {format}: {message}")]
    Parse {
        /// `json` or `yaml`.
        format: &'static str,
        /// The parser's message, with the place it names.
        message: String,
    },
    /// The text is over the size limit.
    #[error("definition is {size} bytes, the limit is {limit}")]
    TooLarge {
        /// Its size.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// The definition has too many steps.
    #[error("definition has {count} steps, the limit is {limit}")]
    TooManySteps {
        /// Its steps.
        count: usize,
        /// The limit.
        limit: usize,
    },
    /// The steps do not form a graph that can run: a duplicate id, an unknown dependency or
    /// fallback, a step falling back to itself, a fallback loop, or a cycle.
    #[error(transparent)]
    Graph(#[from] GraphError),
    /// Blocks are nested deeper than the limit.
    #[error("{place} is nested too deep, the limit is {limit} levels")]
    TooDeep {
        /// The block past the limit.
        place: String,
        /// The limit.
        limit: usize,
    },
    /// The definition has too many expressions that need jq.
    #[error("definition has {count} expressions that need jq (not plain paths), the limit is {limit}")]
    TooManyExpressions {
        /// Its expressions that are not plain paths.
        count: usize,
        /// The limit.
        limit: usize,
    },
    /// An expression reads a step that does not run before it.
    #[error("{place} refers to step {step:?}, which is not upstream")]
    NotUpstream {
        /// The mapping, e.g. `steps.charge.input`.
        place: String,
        /// The step it reads.
        step: String,
    },
    /// A Serverless Workflow document does not match the DSL's JSON schema.
    #[error("document does not match the Serverless Workflow schema at {}: {message}", place(pointer))]
    Schema {
        /// Where, as an RFC 6901 pointer into the document.
        pointer: String,
        /// What is wrong there.
        message: String,
    },
    /// A Serverless Workflow document uses a construct Baton does not run; it is refused
    /// rather than ignored.
    #[error("unsupported: {construct} at {}", place(pointer))]
    Unsupported {
        /// The construct, e.g. `call: grpc`.
        construct: String,
        /// Where, as an RFC 6901 pointer into the document.
        pointer: String,
    },
    /// A value breaks a rule of the domain model (an expression that does not compile, a retry
    /// policy, an idempotency key).
    #[error(transparent)]
    Invalid(#[from] baton_core::Error),
    /// The execution is not in a state the call can move it from.
    #[error("execution {execution} cannot go from {from} to {to}")]
    InvalidTransition {
        /// The execution.
        execution: ExecutionId,
        /// Where it is.
        from: ExecutionState,
        /// Where the call wanted it.
        to: ExecutionState,
    },
    /// The execution has not finished and nothing runs it in this engine, so waiting for it
    /// would never end (its last journal write failed; the next open recovers it).
    #[error("execution {execution} is {state} and not running in this engine")]
    NotRunning {
        /// The execution.
        execution: ExecutionId,
        /// The state its record says.
        state: ExecutionState,
    },
    /// The runner refused to start a run.
    #[error("runner cannot start execution {execution}: {reason}")]
    Runner {
        /// The execution.
        execution: ExecutionId,
        /// Why.
        reason: String,
    },
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The engine is shutting down.
    #[error("the workflow engine stopped")]
    Stopped,
    /// An execution's input is over the size limit.
    #[error("input_json is {size} bytes of JSON, the limit is {limit}")]
    InputTooLarge {
        /// Its size as JSON text.
        size: usize,
        /// The limit ([`crate::Config::max_input_bytes`]).
        limit: usize,
    },
    /// The execution's journal is at its cap: it takes no more pauses or resumes (the run fails
    /// when it reaches the cap itself); a cancel, which ends it, still goes in.
    #[error("the journal of execution {execution} has reached its cap of {cap}; it can only be cancelled now")]
    JournalFull {
        /// The execution.
        execution: ExecutionId,
        /// The cap it reached.
        cap: JournalCap,
    },
    /// A cancel reason is over the size limit.
    #[error("reason is {size} bytes, the limit is {limit}")]
    ReasonTooLong {
        /// Its length.
        size: usize,
        /// The limit ([`baton_core::bounds::MAX_REASON_BYTES`]).
        limit: usize,
    },
    /// A watch of an unfinished execution asked to start past the next event: the journal
    /// has fewer than `from_sequence - 1` events, so there is nothing to wait for yet.
    #[error(
        "from_sequence {from_sequence} is past the end of the journal of execution {execution}: watch from at most \
         the sequence after its last event"
    )]
    WatchPastEnd {
        /// The execution.
        execution: ExecutionId,
        /// Where the watch asked to start.
        from_sequence: u64,
    },
    /// An idempotency key already started an execution of another workflow, version or input.
    #[error("idempotency key {key:?} already started execution {execution} with a different request")]
    IdempotencyConflict {
        /// The key.
        key: baton_core::IdempotencyKey,
        /// The execution it started.
        execution: baton_core::ExecutionId,
    },
}

/// A cap on one execution's journal ([`crate::Config::max_journal_events`],
/// [`crate::Config::max_journal_bytes`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum JournalCap {
    /// Events.
    #[error("{0} events")]
    Events(u64),
    /// Bytes of events as JSON.
    #[error("{0} bytes")]
    Bytes(u64),
}

/// Why recovery could not bring an execution back; it is marked failed with this reason.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum RecoveryError {
    /// Its record, journal or definition could not be read.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Its stored definition no longer checks.
    #[error(transparent)]
    Definition(#[from] Error),
    /// The journal holds another execution's event.
    #[error("journal event {sequence} belongs to execution {execution}")]
    ForeignEvent {
        /// The event's sequence number.
        sequence: u64,
        /// The execution it names.
        execution: ExecutionId,
    },
    /// The journal asks for a state change the state machine refuses.
    #[error("journal event {sequence}: {error}")]
    Replay {
        /// The event's sequence number.
        sequence: u64,
        /// What the state machine said.
        error: baton_core::Error,
    },
    /// The journal completes a step the pinned definition does not have.
    #[error("journal event {sequence}: step {step:?} is not in version {version}")]
    UnknownStep {
        /// The event's sequence number.
        sequence: u64,
        /// The step.
        step: StepId,
        /// The definition version the execution pinned.
        version: u32,
    },
    /// The record says paused but the journal never paused it.
    #[error("the record says paused but the journal does not")]
    PausedOnlyInRecord,
    /// Recovering it panicked (a bug, or data no check foresaw): the panic's message.
    #[error("recovering it panicked: {0}")]
    Panicked(String),
}

/// An RFC 6901 pointer as messages show it: the whole document's (empty) pointer as `/`.
fn place(pointer: &str) -> &str {
    if pointer.is_empty() { "/" } else { pointer }
}
