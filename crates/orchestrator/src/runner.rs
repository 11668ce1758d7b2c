//! The executor behind the workflow engine's runner port.

use std::sync::Arc;

use baton_core::{
    Event, EventKind, EventSink, ExecutionId, Outcome, Problem, Recorded, Refusal, ServiceId, ServiceRequirements,
    StepId, Store, WorkflowName,
};
use baton_executor::{Executor, Host, HostFuture, IdleHook, Invoker, Start};
use baton_workflow::{RunHandle, RunRequest, Runner, WeakEngine};
use dashmap::DashMap;
use serde_json::Value;
use sha2::{Digest, Sha256};

/// Routes the executor's events to the sink of each run, and forgets the sink after the
/// run's last event, which tells the engine the run has ended.
#[derive(Default)]
pub struct Router {
    sinks: DashMap<ExecutionId, Arc<dyn EventSink<Event>>>,
}

impl std::fmt::Debug for Router {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Router").field("runs", &self.sinks.len()).finish()
    }
}

impl Router {
    fn sink(&self, event: &Event) -> Option<Arc<dyn EventSink<Event>>> {
        let last =
            matches!(event.kind, EventKind::Completed { .. } | EventKind::Failed { .. } | EventKind::Cancelled { .. });
        if last {
            self.sinks.remove(&event.execution).map(|(_, sink)| sink)
        } else {
            self.sinks.get(&event.execution).map(|sink| Arc::clone(&sink))
        }
    }
}

impl EventSink<Event> for Router {
    fn publish(&self, event: Event) {
        if let Some(sink) = self.sink(&event) {
            sink.publish(event);
        }
    }

    fn record(&self, event: Event) -> Recorded {
        match self.sink(&event) {
            Some(sink) => sink.record(event),
            None => Recorded::refused(Refusal::NotRunning(event.execution)),
        }
    }
}

/// Capability queries of the steps that have one, by the stand-in service id their tasks
/// carry; the dispatcher resolves the id against the live registry at each call.
#[derive(Debug, Default)]
pub struct Queries {
    by_id: DashMap<ServiceId, Arc<ServiceRequirements>>,
}

/// The prefix of stand-in ids; registered ids may not start with it.
pub const QUERY_PREFIX: &str = "query.";

impl Queries {
    /// The stand-in id of `requirements`: the same query always gets the same id.
    pub fn stand_in(&self, requirements: &ServiceRequirements) -> ServiceId {
        let text = serde_json::to_vec(requirements).expect("requirements serialize");
        let digest = Sha256::digest(&text);
        let hex: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
        let id = ServiceId::new(&format!("{QUERY_PREFIX}{hex}")).expect("a valid service id");
        self.by_id.entry(id.clone()).or_insert_with(|| Arc::new(requirements.clone()));
        id
    }

    /// The query behind a stand-in id; `None` for a real service id.
    pub fn get(&self, id: &ServiceId) -> Option<Arc<ServiceRequirements>> {
        if !id.as_str().starts_with(QUERY_PREFIX) {
            return None;
        }
        self.by_id.get(id).map(|q| Arc::clone(&q))
    }
}

/// `baton_executor` as the workflow engine's [`Runner`].
#[derive(Debug)]
pub struct ExecutorRunner<I> {
    executor: Executor<I>,
    router: Arc<Router>,
}

impl<I: Invoker> ExecutorRunner<I> {
    /// Wraps an executor built with `router` as its event sink (and, for signals, children,
    /// events and capability queries, an [`EngineHost`] as its host).
    pub fn new(executor: Executor<I>, router: Arc<Router>) -> Self {
        Self { executor, router }
    }

    /// The executor, for limits and breaker states.
    pub fn executor(&self) -> &Executor<I> {
        &self.executor
    }
}

/// The workflow engine as the executor's [`Host`]: signals, child executions and emitted
/// events go to the engine, capability queries get stand-in ids the dispatcher resolves.
///
/// The engine is built after the executor it runs on, so it is bound here once it exists;
/// a run recovered while the engine opens waits for that.
pub struct EngineHost<S, R: Runner> {
    engine: Arc<tokio::sync::SetOnce<WeakEngine<S, R>>>,
    queries: Arc<Queries>,
}

impl<S, R: Runner> std::fmt::Debug for EngineHost<S, R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EngineHost").field("bound", &self.engine.initialized()).finish_non_exhaustive()
    }
}

impl<S: Store, R: Runner> EngineHost<S, R> {
    /// A host whose engine is bound later with [`EngineHost::bind`].
    pub fn new(queries: Arc<Queries>) -> Self {
        Self { engine: Arc::new(tokio::sync::SetOnce::new()), queries }
    }

    /// Binds the engine, once.
    pub fn bind(&self, engine: &baton_workflow::Engine<S, R>) {
        let _ = self.engine.set(engine.downgrade());
    }

    fn engine(
        &self,
    ) -> impl std::future::Future<Output = Result<baton_workflow::Engine<S, R>, Problem>> + Send + 'static {
        let cell = Arc::clone(&self.engine);
        async move { cell.wait().await.upgrade().ok_or_else(|| Problem::runtime("the workflow engine stopped")) }
    }
}

impl<S: Store, R: Runner> Host for EngineHost<S, R> {
    fn listen(&self, execution: ExecutionId, step: StepId, names: Vec<String>, all: bool) -> HostFuture<Value> {
        let engine = self.engine();
        Box::pin(async move { engine.await?.listen(execution, step, names, all).await })
    }

    fn child(
        &self,
        execution: ExecutionId,
        step: StepId,
        workflow: WorkflowName,
        version: Option<u32>,
        input: Value,
    ) -> HostFuture<Value> {
        let engine = self.engine();
        Box::pin(async move { engine.await?.child(execution, step, workflow, version, input).await })
    }

    fn emit(&self, execution: ExecutionId, step: StepId, event: Value) -> HostFuture<()> {
        let engine = self.engine();
        Box::pin(async move { engine.await?.emit(execution, &step, &event) })
    }

    fn stand_in(&self, requirements: &ServiceRequirements) -> ServiceId {
        self.queries.stand_in(requirements)
    }
}

/// A run of an [`ExecutorRunner`].
#[derive(Debug)]
pub struct ExecutorHandle(baton_executor::Run);

impl RunHandle for ExecutorHandle {
    fn pause(&self) {
        self.0.pause();
    }

    fn resume(&self) {
        self.0.resume();
    }

    fn cancel(&self, reason: &str) {
        self.0.cancel(reason);
    }

    async fn suspend_if_idle(&mut self, mark: u64) -> bool {
        self.0.suspend_if_idle(mark).await
    }

    async fn outcome(self) -> Outcome {
        self.0.outcome().await
    }
}

impl<I: Invoker> Runner for ExecutorRunner<I> {
    type Handle = ExecutorHandle;

    fn start(&self, request: RunRequest, events: Arc<dyn EventSink<Event>>) -> Result<ExecutorHandle, String> {
        self.router.sinks.insert(request.execution, events);
        let workflow = serde_json::json!({
            "id": request.execution.to_string(),
            "name": request.definition.name().as_str(),
            "version": request.version,
        });
        let start = Start {
            execution: request.execution,
            program: Arc::clone(request.definition.program()),
            input: request.input,
            history: request.history,
            workflow,
            idle: Some(IdleHook(request.idle.0)),
            trace: request.trace,
        };
        Ok(ExecutorHandle(self.executor.run(start)))
    }
}
