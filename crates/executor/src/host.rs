//! The `Host` port: what a run needs from whatever hosts it (the workflow engine) beyond
//! calling services: signals, child executions, the event sink of `emit` tasks, and the
//! stand-in ids of capability queries.

use std::future::Future;
use std::pin::Pin;

use baton_core::{ExecutionId, Problem, ServiceId, ServiceRequirements, StepId, WorkflowName};
use serde_json::Value;

/// A boxed future the host answers with.
pub type HostFuture<T> = Pin<Box<dyn Future<Output = Result<T, Problem>> + Send>>;

/// What hosts a run. Every method may be called again for the same task after a restart; the
/// host answers from what it journaled then (a signal consumed once, a child started once).
pub trait Host: Send + Sync + 'static {
    /// Waits until signals named `names` (one of any, or one of each when `all`) were sent to
    /// the execution, consumes them (journaled as `SignalConsumed` for `step`), and answers
    /// their data: one value, or an array in name order when `all`.
    fn listen(&self, execution: ExecutionId, step: StepId, names: Vec<String>, all: bool) -> HostFuture<Value>;

    /// Starts (once, whatever the retries) a child execution of `workflow` for `step`,
    /// journaled as `ChildStarted`, waits for it to end and answers its output, or its error
    /// when it did not complete.
    fn child(
        &self,
        execution: ExecutionId,
        step: StepId,
        workflow: WorkflowName,
        version: Option<u32>,
        input: Value,
    ) -> HostFuture<Value>;

    /// Publishes an event an `emit` task produced.
    fn emit(&self, execution: ExecutionId, step: StepId, event: Value) -> HostFuture<()>;

    /// The service id a call to a capability query goes to; the invoker resolves it at each
    /// call.
    fn stand_in(&self, requirements: &ServiceRequirements) -> ServiceId;
}

/// Told when a run has nothing left to do but wait: `Some(t)` when its earliest timer fires at
/// `t`, `None` when only signals or children can move it, with the run's activity count, which
/// a `Run::suspend_if_idle` must give back. Called on the run's task, after the events it
/// handed over so far; it must be quick.
#[derive(Clone)]
pub struct IdleHook(pub std::sync::Arc<dyn Fn(Option<baton_core::Timestamp>, u64) + Send + Sync>);

impl std::fmt::Debug for IdleHook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("IdleHook")
    }
}

/// A host that offers no signals, children or event sink: runs that need them fail with a
/// configuration error naming what is missing. For embedding the executor without an engine.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoHost;

impl NoHost {
    fn unavailable<T: Send + 'static>(what: &str) -> HostFuture<T> {
        let problem = Problem::standard("configuration", format!("{what} needs a workflow engine to host the run"));
        Box::pin(std::future::ready(Err(problem)))
    }
}

impl Host for NoHost {
    fn listen(&self, _: ExecutionId, _: StepId, _: Vec<String>, _: bool) -> HostFuture<Value> {
        Self::unavailable("listen")
    }

    fn child(&self, _: ExecutionId, _: StepId, _: WorkflowName, _: Option<u32>, _: Value) -> HostFuture<Value> {
        Self::unavailable("a child workflow")
    }

    fn emit(&self, _: ExecutionId, _: StepId, _: Value) -> HostFuture<()> {
        Self::unavailable("emit")
    }

    fn stand_in(&self, requirements: &ServiceRequirements) -> ServiceId {
        // Without a host the first capability names the service: what embedding tests use.
        let name = requirements.capabilities.first().map_or("query", String::as_str);
        ServiceId::new(name).unwrap_or_else(|_| ServiceId::new("query").expect("a valid id"))
    }
}
