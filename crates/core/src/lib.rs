//! Baton's domain model, ports and errors. No I/O.
//!
//! What it is for: the vocabulary every other Baton crate speaks. Services and what they can
//! do ([`ServiceSpec`], built only from a valid [`ServiceDefinition`]), what callers ask of them
//! ([`ServiceRequirements`], [`Goal`]), concept taxonomies with subsumption ([`Taxonomy`]),
//! workflow definitions ([`WorkflowDefinition`]), plans ([`Plan`]), executions and their state
//! machine ([`Execution`]), journal events ([`Event`]), ids, and the ports (traits) through
//! which the crates reach time, health probes, event consumers, the service directory, the
//! planner, durable storage ([`Store`]) and a bounded expression evaluator ([`Evaluator`]).
//!
//! What it is not for: anything that touches a network, a disk or a runtime. Those live in
//! the crates that implement the ports. Fakes of the ports are in [`fakes`] behind the
//! `test-util` feature.
//!
//! Every type users write (services, requirements, goals, workflows) reads from JSON and
//! YAML through serde and rejects unknown fields; validation errors name the field and value:
//!
//! ```
//! use baton_core::ServiceSpec;
//!
//! let err = ServiceSpec::from_json(r#"{
//!     "id": "pay",
//!     "endpoint": {"protocol": "http", "url": "http://127.0.0.1:8080/charge"},
//!     "capabilities": ["payment.charge"],
//!     "qos": {"availability": 1.5}
//! }"#).unwrap_err();
//! assert_eq!(err.to_string(), r#"invalid qos.availability "1.5": must be in [0, 1]"#);
//! ```

pub mod access;
pub mod activity;
pub mod api;
pub mod bounds;
pub mod call;
pub mod directory;
pub mod duration;
pub mod error;
pub mod event;
pub mod execution;
pub mod expr;
#[cfg(any(test, feature = "test-util"))]
pub mod fakes;
pub mod goal;
pub mod graph;
pub mod history;
pub mod ids;
pub mod ownership;
pub mod plan;
pub mod planning;
pub mod ports;
pub mod problem;
pub mod program;
pub mod requirements;
mod rfc3339;
pub mod service;
pub mod shared_registry;
pub mod store;
pub mod taxonomy;
pub mod trace;
pub mod workflow;

pub use access::{Credentials, TlsSettings};
pub use activity::{Activity, BreakerStatus, CallOutcome, CallRecord, HealthChange, Overview, ServiceActivity};
pub use api::{
    ApiError, ApiResult, BoxFuture, BoxStream, EventStream, Executions, IdPrefix, Orchestrating, WorkerTasks,
    WorkflowCatalog,
};
pub use call::{CallRequest, CallTemplate, GrpcCall, GrpcMethod, HttpCall, HttpMethod, ResponsePart, StepCall};
pub use directory::{
    Candidate, DEFAULT_FIND_LIMIT, Health, Matches, Page, Registration, ServiceDirectory, ServiceStatus, ServiceView,
};
pub use error::{Error, Result};
pub use event::{Event, EventKind, Outcome};
pub use execution::{Execution, ExecutionState, Parent, Parked, TaskState, TaskStatus};
pub use expr::{EvalError, Evaluator, Expression, InProcessEvaluator, Template};
pub use goal::{Constraints, Goal, Objective, Weights};
pub use graph::{GraphError, StepGraph, StepLinks};
pub use history::{History, PendingSignal, Settled, SettledTask};
pub use ids::{ExecutionId, SecretName, ServiceId, StepId, WorkflowName};
pub use ownership::Ownership;
pub use plan::{DataFlow, Plan, PlanTask, PredictedQos};
pub use planning::{Planning, ServiceCatalog};
pub use ports::{
    Clock, DeregisterReason, EventSink, HealthProbe, ProbeResult, ProbeTarget, Recorded, Refusal, RegistryEvent,
    SystemClock,
};
pub use problem::Problem;
pub use requirements::{SecurityRequirements, ServiceRequirements};
pub use service::{
    AuthScheme, CheckKind, DescriptorSet, Encryption, Endpoint, HealthCheck, Protocol, Qos, SecurityProfile,
    ServiceDefinition, ServiceSpec,
};
pub use shared_registry::{REMOVALS_KEPT, ServiceTable, SharedChange, SharedChanges, SharedService};
pub use store::{
    CreatedExecution, ExecutionFilter, ExecutionPage, ExecutionUpdate, IdempotencyKey, NewDefinition, Order,
    PageRequest, PageToken, PutDefinition, Record, Store, StoreError, StoreResult, StoredDefinition,
};
pub use taxonomy::{ConceptId, Taxonomy, TaxonomyBuilder};
pub use trace::{ExecutionTrace, SpanId, SpanRecord, TraceContext, TraceId};
pub use workflow::{
    CatchSpec, ChildSpec, ErrorMatch, ErrorPolicy, ForSpec, ForkBranch, ForkSpec, ListenSpec, RaiseSpec, RepeatSpec,
    RetryPolicy, Step, StepAction, StepDefaults, StepTarget, SwitchCase, WaitSpec, WorkflowDefinition,
};

/// A point in time, UTC.
pub type Timestamp = chrono::DateTime<chrono::Utc>;
