//! Baton's `ServiceOrchestrator`: the one place where the concrete crates meet.
//!
//! - [`runner`]: the executor behind the workflow engine's runner port, with the event router
//!   that gives each run's completions to the engine's durable journal before dependants start.
//! - [`dispatch`]: the invoker that resolves each call against the live registry (capability
//!   queries at dispatch, capacity permits, failover) and calls HTTP endpoints or worker queues.

pub mod dispatch;
pub mod runner;

pub use dispatch::Dispatcher;
pub use runner::{ExecutorHandle, ExecutorRunner, Queries, Router};
