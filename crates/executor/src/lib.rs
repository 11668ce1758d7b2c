//! Baton's executor: runs one DAG of tasks, each bound to a service and its ranked
//! alternatives, and reports every transition through the [`baton_core::EventSink`] port.
//!
//! What it is for: ready-queue scheduling (a task is dispatched the moment its last
//! dependency succeeds, not level by level), inputs rendered from `${ jq }` templates, retries
//! with exponential backoff and full jitter, per-attempt, per-task and per-run timeouts,
//! failover to the next alternative, error policies (fail, continue, fall back), per-run and
//! global in-flight limits, pause/resume/cancel, and resumption from completed tasks.
//!
//! What it is not for: persistence (the workflow engine journals the events it emits) or
//! choosing services (the registry and planner do). This first slice has the in-process
//! invoker; HTTP and worker-queue invokers, circuit breakers and per-service limits come next.

mod invoker;
mod run;

pub use invoker::{Call, Failure, InProcessInvoker, Invoker};
#[cfg(any(test, feature = "test-util"))]
pub use invoker::{ScriptedInvoker, Step};
pub use run::{Config, Executor, Outcome, RunHandle, RunSpec, SpecError, TaskSpec};
