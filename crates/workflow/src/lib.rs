//! Baton's workflow engine: workflow definitions and their versions, the lifecycle of
//! executions, their durable journal, and recovery after a crash.
//!
//! What it is for:
//!
//! - **Definitions.** [`CheckedDefinition::parse`] reads YAML or JSON into a
//!   [`baton_core::WorkflowDefinition`] and checks what core's serde types do not: the size and
//!   step limits, unique step ids, known dependencies and fallbacks, no cycle (the error names
//!   the cycle's steps), retry policies, and `${ jq }` expressions that compile and read only
//!   upstream steps, at most [`MAX_JQ_EXPRESSIONS`] of them needing jq. It reads Serverless
//!   Workflow DSL 1.0 documents too (those with `document.dsl`): checked against the DSL's JSON
//!   schema, errors placed by JSON pointer, and mapped onto the same executable program; a
//!   construct Baton does not run is refused as `unsupported: <construct> at <pointer>`.
//!   [`Engine::apply`] stores a checked definition through the [`baton_core::Store`] port:
//!   unchanged content (same SHA-256 over the canonical JSON form) is a no-op, changed content
//!   becomes version N+1.
//! - **Executions.** [`Engine::start`] (idempotent by key), [`Engine::get`], [`Engine::list`],
//!   [`Engine::pause`], [`Engine::resume`], [`Engine::cancel`] (legal transitions only, typed
//!   errors otherwise) and [`Engine::watch`] (the journal from a sequence number, then live
//!   events). Every event of a run is appended to the journal before the engine acts on it;
//!   step outputs travel in `TaskSucceeded` events, capped by [`Config::max_output_bytes`].
//! - **Recovery.** [`Engine::open`] reloads every unfinished execution, rebuilds its completed
//!   steps from the journal and hands running ones back to the runner (a step dispatched but
//!   not completed runs again, under the same per (execution, step) idempotency key); paused
//!   ones stay paused; one whose journal is corrupt, or whose recovery panics, is marked failed
//!   with the reason and its journal kept, and the others recover as usual.
//!
//! What it is not for: running steps or calling services. It reaches them through the
//! [`Runner`] port defined here (the orchestrator adapts `baton-executor` to it), and storage
//! through the `Store` port; it depends on `baton-core` only. `FakeRunner` (behind the
//! `test-util` feature) runs steps in order for tests.
//!
//! ```
//! use baton_workflow::CheckedDefinition;
//!
//! let err = CheckedDefinition::parse(
//!     "name: checkout\nsteps:\n  - {id: charge, service: pay, depends_on: [ship]}\n  \
//!      - {id: ship, service: post, depends_on: [charge]}\n",
//! )
//! .unwrap_err();
//! assert_eq!(err.to_string(), "steps form a cycle: charge -> ship -> charge");
//! ```

mod compile;
mod definition;
mod engine;
mod error;
mod expansion;
mod runner;
mod sw;

pub use baton_core::Outcome;
pub use compile::{MAX_BRANCHES, MAX_CONCURRENCY, MAX_DEPTH, MAX_ITERATIONS};
pub use definition::{CheckedDefinition, MAX_DEFINITION_BYTES, MAX_JQ_EXPRESSIONS, MAX_RETENTION, MAX_STEPS};
pub use engine::{
    Applied, Config, DEFAULT_MAX_JOURNAL_BYTES, DEFAULT_MAX_JOURNAL_EVENTS, DEFAULT_MAX_OUTPUT_BYTES,
    DEFAULT_RETENTION, Emitter, Engine, NoEmitter, NoObserver, Observer, Recovery, WeakEngine,
};
pub use error::{Error, JournalCap, RecoveryError, Result};
pub use expansion::{MAX_EXPANDED_BYTES, MAX_EXPANDED_NODES};
#[cfg(any(test, feature = "test-util"))]
pub use runner::{FakeHandle, FakeRunner};
pub use runner::{IdleSignal, RunHandle, RunRequest, Runner};
