//! The gRPC server: Baton's services with explicit limits, plus `grpc.health.v1` and reflection.

use std::future::Future;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use baton_core::{Executions, Orchestrating, Planning, ServiceDirectory, WorkerTasks, WorkflowCatalog};
use tokio::net::TcpListener;

use crate::guard::{GuardLayer, Guarded, Tokens};
use crate::limits::{Limits, Stopping};
use crate::pb;
use crate::service::{ExecutionApi, OrchestratorApi, PlannerApi, RegistryApi, WorkerApi, WorkflowApi};
use crate::trim::TrimLayer;

/// What the services call: one port per service.
#[derive(Clone)]
pub struct Backends {
    /// Behind `RegistryService`.
    pub directory: Arc<dyn ServiceDirectory>,
    /// Behind `PlannerService`.
    pub planner: Arc<dyn Planning>,
    /// Behind `WorkflowService`.
    pub workflows: Arc<dyn WorkflowCatalog>,
    /// Behind `ExecutionService`.
    pub executions: Arc<dyn Executions>,
    /// Behind `WorkerService`.
    pub workers: Arc<dyn WorkerTasks>,
    /// Behind `OrchestratorService`.
    pub orchestrator: Arc<dyn Orchestrating>,
}

impl std::fmt::Debug for Backends {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Backends").finish_non_exhaustive()
    }
}

/// The server's TLS identity, and the CA that client certificates must chain to for mutual
/// TLS. Its `Debug` output shows no key material.
#[derive(Clone)]
pub struct Tls {
    /// The server's certificate chain, PEM, leaf first.
    pub cert_chain_pem: Vec<u8>,
    /// The server's private key, PEM.
    pub key_pem: Vec<u8>,
    /// CA certificates, PEM: when set, every client must present a certificate chaining to one.
    pub client_ca_pem: Option<Vec<u8>>,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls")
            .field("cert_chain_pem", &format_args!("{} bytes", self.cert_chain_pem.len()))
            .field("key_pem", &"***")
            .field("mutual", &self.client_ca_pem.is_some())
            .finish()
    }
}

/// How connections are held: limits per connection and liveness checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Connections {
    /// Requests per second one connection may make, in bursts of as many; beyond it a request
    /// is answered `RESOURCE_EXHAUSTED` and the connection stays open. `None`: no limit.
    pub rate_limit: Option<NonZeroU32>,
    /// HTTP/2 streams (calls) open at once on one connection.
    pub max_concurrent_streams: u32,
    /// Largest block of request headers, in bytes.
    pub max_header_list_bytes: u32,
    /// An idle connection is pinged this often (HTTP/2 PING), and TCP keepalive probes start
    /// after as long.
    pub keepalive_interval: Duration,
    /// A connection whose ping is not answered within this is closed.
    pub keepalive_timeout: Duration,
    /// Longest a TLS handshake may take before the connection is dropped.
    pub tls_handshake_timeout: Duration,
}

impl Default for Connections {
    fn default() -> Self {
        Self {
            rate_limit: NonZeroU32::new(2_000),
            max_concurrent_streams: 256,
            max_header_list_bytes: 64 * 1024,
            keepalive_interval: Duration::from_secs(60),
            keepalive_timeout: Duration::from_secs(20),
            tls_handshake_timeout: Duration::from_secs(10),
        }
    }
}

/// How the gRPC server is set up. The default serves plain HTTP/2 without authentication, for
/// loopback and tests.
#[derive(Debug, Clone, Default)]
pub struct Config {
    /// Request limits.
    pub limits: Limits,
    /// Connection limits and liveness.
    pub connections: Connections,
    /// TLS; `None` serves plain HTTP/2.
    pub tls: Option<Tls>,
    /// Bearer tokens every call but health and reflection must present; `None` asks for none.
    pub tokens: Option<Tokens>,
    /// Whether the server takes new work: while it says no, the health service reports the
    /// whole server (`""`) and the services that start work (executions, workflows,
    /// orchestration) `NOT_SERVING`, so that load balancers send it none. `None`: always serving.
    pub serving: Option<tokio::sync::watch::Receiver<bool>>,
}

/// The routes of every service, behind the guard: what a layer given to
/// [`Config::serve_with_layer`] wraps.
pub type GuardedRoutes = Guarded<tonic::service::Routes>;

impl Config {
    /// Serves every `baton.v1` service, health (each service reported serving) and
    /// reflection on `listener` until `shutdown` resolves.
    pub async fn serve(
        self,
        backends: Backends,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<(), crate::Error> {
        self.serve_with_layer(backends, listener, tower_layer::Identity::new(), shutdown).await
    }

    /// [`Config::serve`], with `layer` around every service, outside the token and rate checks
    /// so that it sees the calls they refuse (the orchestrator counts calls by status code).
    pub async fn serve_with_layer<L, ResBody>(
        self,
        backends: Backends,
        listener: TcpListener,
        layer: L,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<(), crate::Error>
    where
        L: tower_layer::Layer<GuardedRoutes> + Clone,
        L::Service: tower_service::Service<http::Request<tonic::body::Body>, Response = http::Response<ResBody>>
            + Clone
            + Send
            + 'static,
        <L::Service as tower_service::Service<http::Request<tonic::body::Body>>>::Future: Send,
        <L::Service as tower_service::Service<http::Request<tonic::body::Body>>>::Error:
            Into<tonic::codegen::StdError> + Send,
        ResBody: tonic::codegen::Body<Data = tonic::codegen::Bytes> + Send + 'static,
        ResBody::Error: Into<tonic::codegen::StdError>,
    {
        let Self { limits, connections, tls, tokens, serving } = self;
        let (stop, stopping) = Stopping::channel();
        let shutdown = async move {
            shutdown.await;
            // Streams end first, so that the graceful shutdown has no open call to wait for.
            let _ = stop.send(true);
        };
        let Backends { directory, planner, workflows, executions, workers, orchestrator } = backends;
        let bytes = limits.max_message_bytes;
        let registry = pb::registry_service_server::RegistryServiceServer::new(RegistryApi::new(directory, limits))
            .max_decoding_message_size(bytes)
            .max_encoding_message_size(bytes);
        let planner = pb::planner_service_server::PlannerServiceServer::new(PlannerApi::new(planner))
            .max_decoding_message_size(bytes)
            .max_encoding_message_size(bytes);
        let workflows = pb::workflow_service_server::WorkflowServiceServer::new(WorkflowApi::new(workflows, limits))
            .max_decoding_message_size(bytes)
            .max_encoding_message_size(bytes);
        let executions = pb::execution_service_server::ExecutionServiceServer::new(
            ExecutionApi::new(executions, limits).stopping(stopping.clone()),
        )
        .max_decoding_message_size(bytes)
        .max_encoding_message_size(bytes);
        let workers =
            pb::worker_service_server::WorkerServiceServer::new(WorkerApi::new(workers, limits).stopping(stopping))
                .max_decoding_message_size(bytes)
                .max_encoding_message_size(bytes);
        let orchestrator =
            pb::orchestrator_service_server::OrchestratorServiceServer::new(OrchestratorApi::new(orchestrator, limits))
                .max_decoding_message_size(bytes)
                .max_encoding_message_size(bytes);
        let (health, health_service) = tonic_health::server::health_reporter();
        health.set_serving::<pb::registry_service_server::RegistryServiceServer<RegistryApi>>().await;
        health.set_serving::<pb::planner_service_server::PlannerServiceServer<PlannerApi>>().await;
        health.set_serving::<pb::workflow_service_server::WorkflowServiceServer<WorkflowApi>>().await;
        health.set_serving::<pb::execution_service_server::ExecutionServiceServer<ExecutionApi>>().await;
        health.set_serving::<pb::worker_service_server::WorkerServiceServer<WorkerApi>>().await;
        health.set_serving::<pb::orchestrator_service_server::OrchestratorServiceServer<OrchestratorApi>>().await;
        let follow = serving.map(|serving| tokio::spawn(follow_serving(health.clone(), serving)));
        let reflection = || {
            tonic_reflection::server::Builder::configure()
                .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
                .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        };
        // v1alpha too: Python's grpcio-reflection and older grpcurl, evans and Postman speak
        // only that.
        let (reflection, reflection_v1alpha) = (reflection().build_v1()?, reflection().build_v1alpha()?);
        let mut builder = tonic::transport::Server::builder()
            .max_concurrent_streams(connections.max_concurrent_streams)
            .http2_max_header_list_size(connections.max_header_list_bytes)
            .http2_keepalive_interval(Some(connections.keepalive_interval))
            .http2_keepalive_timeout(Some(connections.keepalive_timeout));
        if let Some(tls) = tls {
            let identity = tonic::transport::Identity::from_pem(tls.cert_chain_pem, tls.key_pem);
            let mut server_tls =
                tonic::transport::ServerTlsConfig::new().identity(identity).timeout(connections.tls_handshake_timeout);
            if let Some(ca) = tls.client_ca_pem {
                server_tls = server_tls.client_ca_root(tonic::transport::Certificate::from_pem(ca));
            }
            builder = builder.tls_config(server_tls)?;
        }
        // The first layer added is the outermost: the caller's sees what the guard refuses, and
        // every status message, whichever layer or service made it, is trimmed last.
        let guard = GuardLayer::new(tokens, connections.rate_limit);
        let incoming = tonic::transport::server::TcpIncoming::from(listener)
            .with_nodelay(Some(true))
            .with_keepalive(Some(connections.keepalive_interval));
        let served = builder
            .layer(TrimLayer)
            .layer(layer)
            .layer(guard)
            .add_service(health_service)
            .add_service(reflection)
            .add_service(reflection_v1alpha)
            .add_service(registry)
            .add_service(planner)
            .add_service(workflows)
            .add_service(executions)
            .add_service(workers)
            .add_service(orchestrator)
            .serve_with_incoming_shutdown(incoming, shutdown)
            .await;
        if let Some(follow) = follow {
            follow.abort();
        }
        served?;
        Ok(())
    }
}

/// Reports `serving` through the health service for as long as it is told.
async fn follow_serving(health: tonic_health::server::HealthReporter, mut serving: tokio::sync::watch::Receiver<bool>) {
    use pb::execution_service_server::ExecutionServiceServer;
    use pb::orchestrator_service_server::OrchestratorServiceServer;
    use pb::workflow_service_server::WorkflowServiceServer;
    use tonic_health::ServingStatus;
    loop {
        let status = if *serving.borrow_and_update() { ServingStatus::Serving } else { ServingStatus::NotServing };
        health.set_service_status("", status).await;
        if status == ServingStatus::Serving {
            health.set_serving::<ExecutionServiceServer<ExecutionApi>>().await;
            health.set_serving::<WorkflowServiceServer<WorkflowApi>>().await;
            health.set_serving::<OrchestratorServiceServer<OrchestratorApi>>().await;
        } else {
            health.set_not_serving::<ExecutionServiceServer<ExecutionApi>>().await;
            health.set_not_serving::<WorkflowServiceServer<WorkflowApi>>().await;
            health.set_not_serving::<OrchestratorServiceServer<OrchestratorApi>>().await;
        }
        if serving.changed().await.is_err() {
            return;
        }
    }
}
