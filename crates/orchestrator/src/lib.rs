//! Baton's `ServiceOrchestrator`: the one place where the concrete crates meet.
//!
//! - [`orchestrator`]: [`ServiceOrchestrator`] assembles the registry and its health
//!   supervisor, the planner, the executor and the workflow engine over one store, and
//!   implements the seed's `orchestrate_services` ([`ServiceOrchestrator::orchestrate`]).
//! - [`runner`]: the executor behind the workflow engine's runner port, with the event router
//!   that gives each run's completions to the engine's durable journal before dependants start.
//! - [`dispatch`]: the invoker that resolves each call against the live registry (capability
//!   queries at dispatch, capacity permits, failover) and calls HTTP endpoints or worker queues.
//! - [`forward`]: in a cluster, commands for an execution another node runs, sent on to it.
//! - [`shared_workers`]: a cluster node's worker queues, in the cluster's database.
//! - [`sandbox`]: the bounded expression evaluator, jq in `baton eval-worker` processes that
//!   limit their own CPU time, memory and stack.

pub mod activity;
pub mod api;
pub mod cli;
pub mod config;
pub mod disk;
pub mod dispatch;
pub mod forward;
pub mod metrics;
pub mod orchestrator;
pub mod runner;
pub mod sandbox;
pub mod security;
pub mod serve;
pub mod shared_workers;
pub mod traces;

pub use dispatch::Dispatcher;
pub use orchestrator::{Error, Options, Orchestrated, OrchestratorEngine, ServiceOrchestrator, StoreChoice};
pub use runner::{ExecutorHandle, ExecutorRunner, Queries, Router};
