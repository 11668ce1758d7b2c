//! The executor behind the workflow engine's runner port.

use std::sync::Arc;

use baton_core::{
    Event, EventKind, EventSink, ExecutionId, Outcome, Recorded, Refusal, ServiceId, ServiceRequirements, StepTarget,
    WorkflowName,
};
use baton_executor::{Executor, Invoker, RunSpec, TaskSpec};
use baton_workflow::{RunHandle, RunRequest, Runner};
use dashmap::DashMap;
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
    queries: Arc<Queries>,
    /// Checked run specs by definition version: an execution only stamps its id on a copy.
    specs: DashMap<(WorkflowName, u32), RunSpec>,
}

impl<I: Invoker> ExecutorRunner<I> {
    /// Wraps an executor built with `router` as its event sink; capability-bound steps get
    /// stand-in ids from `queries`.
    pub fn new(executor: Executor<I>, router: Arc<Router>, queries: Arc<Queries>) -> Self {
        Self { executor, router, queries, specs: DashMap::new() }
    }

    /// The executor, for limits and breaker states.
    pub fn executor(&self) -> &Executor<I> {
        &self.executor
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

    async fn outcome(self) -> Outcome {
        self.0.outcome().await
    }
}

impl<I: Invoker> Runner for ExecutorRunner<I> {
    type Handle = ExecutorHandle;

    fn start(&self, request: RunRequest, events: Arc<dyn EventSink<Event>>) -> Result<ExecutorHandle, String> {
        let key = (request.definition.name().clone(), request.version);
        let spec = match self.specs.get(&key) {
            Some(spec) => spec.for_execution(request.execution),
            None => {
                let spec = self.spec(&request)?;
                self.specs.insert(key, spec.clone());
                spec
            }
        };
        self.router.sinks.insert(request.execution, events);
        let spec = spec.traced(request.trace);
        Ok(ExecutorHandle(self.executor.start(spec, request.input, request.completed)))
    }
}

impl<I: Invoker> ExecutorRunner<I> {
    fn spec(&self, request: &RunRequest) -> Result<RunSpec, String> {
        let definition = request.definition.definition();
        let mut tasks = Vec::with_capacity(definition.steps.len());
        let steps = definition.steps.iter().zip(request.definition.inputs()).zip(request.definition.calls());
        for ((step, input), call) in steps {
            let services = match &step.target {
                StepTarget::Service { id, alternatives } => {
                    std::iter::once(id.clone()).chain(alternatives.iter().cloned()).collect()
                }
                StepTarget::Query(requirements) => vec![self.queries.stand_in(requirements)],
            };
            tasks.push(TaskSpec {
                id: step.id.clone(),
                services,
                input: input.clone(),
                call: call.clone(),
                depends_on: step.depends_on.clone(),
                retry: step.retry.clone().unwrap_or_else(|| definition.defaults.retry.clone()),
                timeout: step.timeout.or(definition.defaults.timeout),
                task_timeout: step.task_timeout,
                on_error: step.on_error.clone(),
            });
        }
        RunSpec::new(request.execution, tasks, request.definition.output().clone(), definition.deadline)
            .map_err(|e| e.to_string())
    }
}
