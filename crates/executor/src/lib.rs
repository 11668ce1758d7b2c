//! Baton's executor: runs one DAG of tasks, each bound to a service and its ranked
//! alternatives, and reports every transition through the [`baton_core::EventSink`] port.
//!
//! What it is for: ready-queue scheduling (a task is dispatched the moment its last
//! dependency succeeds, not level by level), inputs rendered from `${ jq }` templates, retries
//! with exponential backoff and full jitter, per-attempt, per-task and per-run timeouts,
//! failover to the next alternative whose circuit breaker is closed, error policies (fail, continue, fall back), per-run and
//! global in-flight limits, pause/resume/cancel, and resumption from completed tasks.
//!
//! What it is not for: persistence (the workflow engine journals the events it emits) or
//! choosing services (the registry and planner do). Circuit breakers (per service, shared by
//! all runs) take a service out of selection after repeated failures; per-service limits
//! come from registered capacity.
//!
//! Invokers: [`InProcessInvoker`] (registered async functions, for embedding and benches) and
//! [`HttpInvoker`] (a JSON POST over a pooled hyper client with a stable `Idempotency-Key`).

mod breaker;
mod http;
mod invoker;
mod run;

pub use self::http::{HttpConfig, HttpInvoker, Resolve};
pub use breaker::BreakerState;
pub use invoker::{Call, Failure, InProcessInvoker, Invoker};
#[cfg(any(test, feature = "test-util"))]
pub use invoker::{ScriptedInvoker, Step};
pub use run::{Config, Executor, Outcome, RunHandle, RunSpec, SpecError, TaskSpec};
