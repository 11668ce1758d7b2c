//! The gRPC server: Baton's services with explicit limits, plus `grpc.health.v1` and reflection.

use std::future::Future;
use std::sync::Arc;

use baton_core::{Planning, ServiceDirectory};
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;

use crate::pb;
use crate::planner::PlannerApi;
use crate::registry::RegistryApi;

/// Bounds on what one request may ask for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest message decoded or encoded, in bytes; larger ones are refused with
    /// `OUT_OF_RANGE` (tonic's code for it) and the server carries on.
    pub max_message_bytes: usize,
    /// Page size when a listing does not say.
    pub default_page_size: u32,
    /// Largest page a listing returns; larger requests are capped.
    pub max_page_size: u32,
    /// Candidates a find returns when it does not say.
    pub default_find_limit: u32,
    /// Most candidates a find returns; larger requests are capped.
    pub max_find_limit: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_message_bytes: 4 * 1024 * 1024,
            default_page_size: 100,
            max_page_size: 1_000,
            default_find_limit: baton_core::DEFAULT_FIND_LIMIT as u32,
            max_find_limit: 1_000,
        }
    }
}

/// What the services call: one port per service.
#[derive(Clone)]
pub struct Backends {
    /// Behind `RegistryService`.
    pub directory: Arc<dyn ServiceDirectory>,
    /// Behind `PlannerService`.
    pub planner: Arc<dyn Planning>,
}

impl std::fmt::Debug for Backends {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Backends").finish_non_exhaustive()
    }
}

/// How the gRPC server is set up.
#[derive(Debug, Clone, Default)]
pub struct Config {
    /// Request limits.
    pub limits: Limits,
}

impl Config {
    /// Serves the registry and planner APIs, health and reflection on `listener` until
    /// `shutdown` resolves.
    pub async fn serve(
        self,
        backends: Backends,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<(), crate::Error> {
        let limits = self.limits;
        let Backends { directory, planner } = backends;
        let registry = pb::registry_service_server::RegistryServiceServer::new(RegistryApi::new(directory, limits))
            .max_decoding_message_size(limits.max_message_bytes)
            .max_encoding_message_size(limits.max_message_bytes);
        let planner = pb::planner_service_server::PlannerServiceServer::new(PlannerApi::new(planner))
            .max_decoding_message_size(limits.max_message_bytes)
            .max_encoding_message_size(limits.max_message_bytes);
        let (health, health_service) = tonic_health::server::health_reporter();
        health.set_serving::<pb::registry_service_server::RegistryServiceServer<RegistryApi>>().await;
        health.set_serving::<pb::planner_service_server::PlannerServiceServer<PlannerApi>>().await;
        let reflection = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .build_v1()?;
        tonic::transport::Server::builder()
            .add_service(health_service)
            .add_service(reflection)
            .add_service(registry)
            .add_service(planner)
            .serve_with_incoming_shutdown(TcpListenerStream::new(listener), shutdown)
            .await?;
        Ok(())
    }
}
