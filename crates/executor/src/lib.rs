//! Baton's executor: runs one DAG of tasks, each bound to a service and its ranked
//! alternatives, and reports every transition through the [`baton_core::EventSink`] port.
//!
//! What it is for: ready-queue scheduling (a task is dispatched the moment its last
//! dependency succeeds, not level by level), inputs rendered from `${ jq }` templates (any
//! expression but a plain path on the [`baton_core::Evaluator`] of [`Config::evaluator`], awaited
//! inside the task's future; an input that does not render fails the task), retries
//! with exponential backoff and full jitter, per-attempt (by default
//! [`Config::default_attempt_timeout`] for a step without one), per-task and per-run timeouts,
//! failover to the next alternative whose circuit breaker is closed, error policies (fail,
//! continue, fall back), per-run and global in-flight limits, pause/resume/cancel, and
//! resumption from completed tasks.
//!
//! What it is not for: persistence (the workflow engine journals the events it emits) or
//! choosing services (the registry and planner do). Circuit breakers (per service, shared by
//! all runs) take a service out of selection after repeated failures; per-service limits
//! come from registered capacity.
//!
//! How it is fast: a run is one tokio task polling its own calls (no spawn per task; a call
//! finished on its first poll is settled inline), scheduling tables are computed once per
//! checked DAG and shared by every execution of it ([`RunSpec::for_execution`]), event
//! timestamps are read once per turn of the run, and breakers and per-service limits cost no
//! lock while no service is failing or limited.
//!
//! Requests a program writes itself (the Serverless Workflow's `call: http` and
//! `call: openapi`) go out through [`Invoker::send`]: [`HttpInvoker`] sends them over the same
//! pooled HTTP(S) clients, after [`HttpConfig::origins`] maps their origin.
//!
//! Invokers: [`InProcessInvoker`] (registered async functions, for embedding and benches),
//! [`HttpInvoker`] (HTTP or HTTPS over pooled connections, a JSON POST unless the step shapes
//! the request, with a stable `Idempotency-Key` and the service's credentials from
//! [`Secrets`]), [`GrpcInvoker`] (one unary method, JSON converted to protobuf from descriptors
//! found by reflection or registered with the service, answers read straight to JSON) and
//! [`WorkerQueues`] (for `Worker { queue }` services: each call waits as a task on a FIFO queue
//! until a worker polls it under a lease and completes or fails it; an expired lease puts the
//! task back at the front with a new fencing token, and a dropped call withdraws its task).

mod breaker;
mod grpc_call;
mod host;
mod http;
mod interp;
mod invoker;
mod openapi;
mod proto_json;
mod request;
mod run;
pub mod secrets;
mod spec;
mod transport;
mod worker;

pub use self::http::{HttpConfig, HttpInvoker, Origins, Resolve};
pub use baton_core::Outcome;
pub use breaker::BreakerState;
pub use grpc_call::{GRPC_CODE_NAMES, GrpcInvoker, grpc_code_name};
pub use host::{Host, HostFuture, IdleHook, NoHost};
pub use interp::{MAX_ITEMS, MAX_SEQUENCE_STEPS, Start};
pub use invoker::{Call, CallTrace, Failure, InProcessInvoker, Invoker};
#[cfg(any(test, feature = "test-util"))]
pub use invoker::{ScriptedInvoker, Step};
pub use request::{Request, Response, output as http_output};
pub use run::{Config, Executor, Run};
pub use secrets::{Secret, Secrets};
pub use spec::{RunSpec, SpecError, TaskSpec};
pub use transport::{PemError, TrustRoots};
pub use worker::{Delivery, LeaseError, LeaseToken, QueueStats, ResolveQueue, TaskId, WorkerConfig, WorkerQueues};
