//! The gRPC server: Baton's services with explicit limits, plus `grpc.health.v1` and reflection.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use baton_core::{Executions, Orchestrating, Planning, ServiceDirectory, WorkerTasks, WorkflowCatalog};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_stream::wrappers::TcpListenerStream;

use crate::execution::ExecutionApi;
use crate::orchestrator::OrchestratorApi;
use crate::pb;
use crate::planner::PlannerApi;
use crate::registry::RegistryApi;
use crate::worker::WorkerApi;
use crate::workflow::WorkflowApi;

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
    /// Most unfinished tasks one `PollTasks` stream holds; larger requests are capped.
    pub max_poll_tasks: u32,
    /// Longest one poll of the worker queues waits before a `PollTasks` stream polls again.
    pub poll_wait: Duration,
    /// Longest an `Orchestrate` call with `wait` waits for its execution, deadline or not.
    pub max_wait: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_message_bytes: 4 * 1024 * 1024,
            default_page_size: 100,
            max_page_size: 1_000,
            default_find_limit: baton_core::DEFAULT_FIND_LIMIT as u32,
            max_find_limit: 1_000,
            max_poll_tasks: 64,
            poll_wait: Duration::from_secs(30),
            max_wait: Duration::from_secs(600),
        }
    }
}

/// Resolves once the server begins shutting down, so that long-lived streams (`PollTasks`,
/// `WatchExecution`) end and a graceful shutdown does not wait for clients to hang up.
#[derive(Debug, Clone)]
pub(crate) struct Stopping {
    stopped: watch::Receiver<bool>,
    /// Keeps the sender of a [`Stopping::never`] alive, so that it never fires.
    _never: Option<Arc<watch::Sender<bool>>>,
}

impl Stopping {
    /// A signal and the sender that fires it.
    pub(crate) fn channel() -> (watch::Sender<bool>, Self) {
        let (stop, stopped) = watch::channel(false);
        (stop, Self { stopped, _never: None })
    }

    /// A signal that never fires, for services built outside [`Config::serve`].
    pub(crate) fn never() -> Self {
        let (stop, stopped) = watch::channel(false);
        Self { stopped, _never: Some(Arc::new(stop)) }
    }

    /// Waits until the server is stopping (or gone).
    pub(crate) async fn wait(&mut self) {
        // An error means the sender is gone with the server: stop too.
        let _ = self.stopped.wait_for(|stopped| *stopped).await;
    }
}

/// The status that ends a stream when the server shuts down.
pub(crate) fn shutting_down() -> tonic::Status {
    tonic::Status::unavailable("the server is shutting down; reconnect to carry on")
}

/// `requested` when it is within `max`, `max` when above, `default` when 0 (unset).
pub(crate) fn clamp(requested: u32, default: u32, max: u32) -> usize {
    let chosen = if requested == 0 { default } else { requested.min(max) };
    chosen as usize
}

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

/// How the gRPC server is set up.
#[derive(Debug, Clone, Default)]
pub struct Config {
    /// Request limits.
    pub limits: Limits,
}

impl Config {
    /// Serves every `baton.v1` service, health (each service reported serving) and
    /// reflection on `listener` until `shutdown` resolves.
    pub async fn serve(
        self,
        backends: Backends,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<(), crate::Error> {
        let limits = self.limits;
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
        let reflection = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .build_v1()?;
        tonic::transport::Server::builder()
            .add_service(health_service)
            .add_service(reflection)
            .add_service(registry)
            .add_service(planner)
            .add_service(workflows)
            .add_service(executions)
            .add_service(workers)
            .add_service(orchestrator)
            .serve_with_incoming_shutdown(TcpListenerStream::new(listener), shutdown)
            .await?;
        Ok(())
    }
}
