//! What the service tests share: the in-memory fakes of the API ports behind [`Backends`], and
//! a real tonic server on 127.0.0.1:0 over them.

#![allow(dead_code, reason = "each test file uses a different part of these helpers")]

use std::sync::Arc;

use baton_core::api::fakes::{InMemoryExecutions, InMemoryOrchestrator, InMemoryWorkerTasks, InMemoryWorkflows};
use baton_core::fakes::{FixedCatalog, InMemoryDirectory};
use baton_core::{Planning, ServiceDirectory, TaxonomyBuilder};
use baton_grpc::{Backends, Config};
use tokio::sync::oneshot;
use tonic::Code;
use tonic::transport::Channel;

/// The fakes behind the workflow, execution, worker and orchestrator services. Clones share
/// state with what the server holds, so a test can drive executions and fill queues.
#[derive(Debug, Clone)]
pub(crate) struct Fakes {
    pub(crate) workflows: InMemoryWorkflows,
    pub(crate) executions: InMemoryExecutions,
    pub(crate) workers: InMemoryWorkerTasks,
    pub(crate) orchestrator: Arc<InMemoryOrchestrator>,
}

impl Fakes {
    /// Fakes whose orchestrator plans with `planning`.
    pub(crate) fn new(planning: Arc<dyn Planning>) -> Self {
        Self::with_workers(planning, InMemoryWorkerTasks::default())
    }

    /// Fakes with these worker queues.
    pub(crate) fn with_workers(planning: Arc<dyn Planning>, workers: InMemoryWorkerTasks) -> Self {
        let workflows = InMemoryWorkflows::default();
        let executions = InMemoryExecutions::new(workflows.clone());
        let orchestrator = Arc::new(InMemoryOrchestrator::new(planning, executions.clone()));
        Self { workflows, executions, workers, orchestrator }
    }

    /// Every port: the given directory and planner, and these fakes.
    pub(crate) fn backends(&self, directory: Arc<dyn ServiceDirectory>, planner: Arc<dyn Planning>) -> Backends {
        Backends {
            directory,
            planner,
            workflows: Arc::new(self.workflows.clone()),
            executions: Arc::new(self.executions.clone()),
            workers: Arc::new(self.workers.clone()),
            orchestrator: Arc::clone(&self.orchestrator) as Arc<dyn baton_core::Orchestrating>,
        }
    }
}

/// A planner over no services, for servers whose tests do not plan.
pub(crate) fn idle_planner() -> Arc<dyn Planning> {
    let taxonomy = Arc::new(TaxonomyBuilder::default().build().unwrap());
    Arc::new(baton_planner::LivePlanner::new(taxonomy, Arc::new(FixedCatalog::default())))
}

/// Fakes behind every port but the registry's and planner's, which are idle.
pub(crate) fn fake_backends() -> (Fakes, Backends) {
    let fakes = Fakes::new(idle_planner());
    let backends = fakes.backends(Arc::new(InMemoryDirectory::default()), idle_planner());
    (fakes, backends)
}

/// A server running on 127.0.0.1:0.
pub(crate) struct Running {
    pub(crate) channel: Channel,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<Result<(), baton_grpc::Error>>,
}

/// Serves `backends` with `config` and connects a channel to it.
pub(crate) async fn serve(backends: Backends, config: Config) -> Running {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(config.serve(backends, listener, async {
        let _ = stopped.await;
    }));
    let channel = Channel::from_shared(format!("http://{address}")).unwrap().connect().await.unwrap();
    Running { channel, stop: Some(stop), task }
}

impl Running {
    /// Stops the server and checks that it stopped cleanly.
    pub(crate) async fn shutdown(mut self) {
        self.stop.take().unwrap().send(()).unwrap();
        self.task.await.unwrap().unwrap();
    }
}

/// Asserts that `result` failed with `code` and a message containing `message`.
pub(crate) fn assert_status<T: std::fmt::Debug>(result: Result<T, tonic::Status>, code: Code, message: &str) {
    let status = result.unwrap_err();
    assert_eq!(status.code(), code, "{status:?}");
    assert!(status.message().contains(message), "{:?} should contain {message:?}", status.message());
}
