//! Baton's gRPC API: the code generated from `proto/baton/v1/*.proto` (messages, tonic clients
//! and servers), the proto <-> domain conversions ([`convert`]), and the tonic services.
//!
//! This crate is the only place that knows prost types and maps domain errors to
//! [`tonic::Status`] codes. It is not where behaviour lives: each service calls one port from
//! `baton-core`, so none knows a concrete crate:
//!
//! | service                      | type                | port                                  |
//! |------------------------------|---------------------|---------------------------------------|
//! | `baton.v1.RegistryService`   | [`RegistryApi`]     | [`baton_core::ServiceDirectory`]      |
//! | `baton.v1.PlannerService`    | [`PlannerApi`]      | [`baton_core::Planning`]              |
//! | `baton.v1.WorkflowService`   | [`WorkflowApi`]     | [`baton_core::WorkflowCatalog`]       |
//! | `baton.v1.ExecutionService`  | [`ExecutionApi`]    | [`baton_core::Executions`]            |
//! | `baton.v1.WorkerService`     | [`WorkerApi`]       | [`baton_core::WorkerTasks`]           |
//! | `baton.v1.OrchestratorService` | [`OrchestratorApi`] | [`baton_core::Orchestrating`]       |
//!
//! [`Config::serve`] serves them all over the [`Backends`] it is given (the orchestrator passes
//! its implementations; tests pass the fakes of `baton_core::api::fakes`), with
//! `grpc.health.v1.Health` (every service reported serving) and server reflection, within
//! explicit [`Limits`]: 4 MiB messages, pages capped (an oversized page size is capped, not
//! refused), `PollTasks` streams capped in unfinished tasks, `Orchestrate` waits bounded by the
//! call's deadline.
//!
//! Security ([`Config`]): TLS, mutual when a client CA is given ([`Tls`], rustls over ring);
//! bearer [`Tokens`] that every call but health and reflection must present in
//! `authorization: Bearer <token>`, compared in constant time, else `UNAUTHENTICATED`; a token
//! bucket per connection ([`Connections::rate_limit`]), else `RESOURCE_EXHAUSTED`; streams per
//! connection, header size and keepalive bounded ([`Connections`]). Both checks run in a tower
//! layer before a body is read ([`Guarded`]); [`Config::serve_with_layer`] puts the caller's
//! layer outside it, so that it sees the refused calls too.
//!
//! Forwarding ([`forwarding`]): the execution service runs each call inside the scope of an
//! [`forwarding::Incoming`] (the caller's `grpc-timeout` and `baton-forwarded-by` mark), so a
//! cluster node's port can pass the call on to the node that owns the execution.
//!
//! Errors: a request that does not decode as its message (a string field that is not UTF-8, a
//! truncated field) is `INVALID_ARGUMENT` naming the message and field, not tonic's
//! `INTERNAL` (the services' codec, `codec.rs`); a request field that does not convert is
//! `INVALID_ARGUMENT` naming the field (an execution id that is not a UUIDv7, JSON that does
//! not parse, an unknown enum value); the
//! ports' [`baton_core::ApiError`] kinds map one to one ([`api_status`]): unknown names, ids and
//! task tokens `NOT_FOUND`, illegal state transitions `FAILED_PRECONDITION`, a reused
//! idempotency key `ALREADY_EXISTS`, and so on. An `Orchestrate` with `wait` whose execution
//! has not ended in time is `DEADLINE_EXCEEDED` naming the execution. A status message is cut
//! to 1 KiB, saying so, as the last step of every response: messages name what a request got
//! wrong and so grow with it, and a header block past the client's limit makes the client close
//! the connection, failing every other call on it.

mod codec;
pub mod convert;
mod error;
mod fit;
pub mod forwarding;
mod guard;
mod limits;
pub mod otlp;
mod server;
mod service;
mod trim;

pub use error::{Error, Result, api_status};
pub use guard::{Guarded, GuardedFuture, Tokens};
pub use limits::Limits;
pub use server::{Backends, Config, Connections, GuardedRoutes, Tls};
pub use service::{
    ExecutionApi, OrchestratorApi, PlannerApi, RegistryApi, TaskStream, WatchStream, WorkerApi, WorkflowApi,
};

/// Messages, clients and servers generated from package `baton.v1`.
#[allow(missing_docs, reason = "generated code: documented only where the proto has comments")]
pub mod pb {
    tonic::include_proto!("baton.v1");
    include!(concat!(env!("OUT_DIR"), "/wire.rs"));

    /// The encoded `FileDescriptorSet` of `baton.v1` and its imports, for `tonic-reflection`.
    pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("baton_descriptor");
}

#[cfg(test)]
mod tests {
    use prost::Message as _;

    /// Reflection clients need every imported file too, and tonic-reflection does not check.
    #[test]
    fn descriptor_set_is_closed_under_imports_and_serves_reflection() {
        let set = prost_types::FileDescriptorSet::decode(super::pb::FILE_DESCRIPTOR_SET).expect("decodes");
        let names: Vec<&str> = set.file.iter().map(|file| file.name()).collect();
        for file in &set.file {
            for import in &file.dependency {
                assert!(names.contains(&import.as_str()), "{} imports missing {import}", file.name());
            }
        }
        let services: Vec<&str> =
            set.file.iter().flat_map(|file| &file.service).map(|service| service.name()).collect();
        for wanted in [
            "RegistryService",
            "PlannerService",
            "WorkflowService",
            "ExecutionService",
            "WorkerService",
            "OrchestratorService",
        ] {
            assert!(services.contains(&wanted), "{wanted} missing from {services:?}");
        }
        let built = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(super::pb::FILE_DESCRIPTOR_SET)
            .build_v1();
        assert!(built.is_ok(), "{:?}", built.err());
    }
}
