//! The tonic services, one file each, each over one port of `baton-core`.

mod execution;
mod orchestrator;
mod planner;
mod registry;
mod worker;
mod workflow;

pub use execution::{ExecutionApi, WatchStream};
pub use orchestrator::OrchestratorApi;
pub use planner::PlannerApi;
pub use registry::RegistryApi;
pub use worker::{TaskStream, WorkerApi};
pub use workflow::WorkflowApi;
