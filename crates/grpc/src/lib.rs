//! Baton's gRPC API: the code generated from `proto/baton/v1/*.proto` (messages, tonic clients
//! and servers), the proto <-> domain conversions ([`convert`]), and the tonic services.
//!
//! This crate is the only place that knows prost types and maps domain errors to
//! [`tonic::Status`] codes. It is not where behaviour lives: its services call ports from
//! `baton-core` (the registry service calls a [`baton_core::ServiceDirectory`], the planner
//! service a [`baton_core::Planning`]), so they know no concrete crate.
//!
//! Served now: `baton.v1.RegistryService` ([`RegistryApi`]), `baton.v1.PlannerService`
//! ([`PlannerApi`]), `grpc.health.v1.Health` and server reflection, with explicit [`Limits`]
//! (4 MiB messages, capped pages), by [`Config::serve`] over the [`Backends`] it is given. The
//! other services of the API are defined in `pb` and come with the crates that implement them.

pub mod convert;
mod error;
mod planner;
mod registry;
mod server;

pub use error::{Error, Result};
pub use planner::PlannerApi;
pub use registry::RegistryApi;
pub use server::{Backends, Config, Limits};

/// Messages, clients and servers generated from package `baton.v1`.
#[allow(missing_docs, reason = "generated code: documented only where the proto has comments")]
pub mod pb {
    tonic::include_proto!("baton.v1");

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
