//! What a run runs: tasks bound to services, checked once as a DAG and shared by every
//! execution of it.

use std::sync::Arc;
use std::time::Duration;

use baton_core::{
    CallRequest, CallTemplate, ErrorPolicy, ExecutionId, GraphError, RetryPolicy, ServiceId, StepGraph, StepId,
    StepLinks, Template, TraceContext,
};
use serde_json::Value;

/// One task of a run.
#[derive(Debug, Clone)]
pub struct TaskSpec {
    /// Its id.
    pub id: StepId,
    /// The service to call first, then the alternatives to fail over to, in order.
    pub services: Vec<ServiceId>,
    /// Its input, rendered against `{"input": ..., "steps": {"<id>": {"output": ...}}}`.
    pub input: Template,
    /// How it shapes its call (HTTP method, path, query, headers; gRPC method), rendered
    /// against the same context; `None`: the protocol's plain call.
    pub call: Option<CallTemplate>,
    /// Tasks that must succeed first.
    pub depends_on: Vec<StepId>,
    /// How failed attempts are retried.
    pub retry: RetryPolicy,
    /// Time limit of one attempt.
    pub timeout: Option<Duration>,
    /// Time limit of all attempts together.
    pub task_timeout: Option<Duration>,
    /// What its failure does to the run.
    pub on_error: ErrorPolicy,
}

/// A checked DAG of tasks with the run's output template, for one execution.
///
/// The checked DAG is shared: [`RunSpec::for_execution`] gives another execution of the same
/// DAG without checking or copying it again, as when many executions start from one version
/// of a workflow definition.
#[derive(Debug, Clone)]
pub struct RunSpec {
    pub(crate) execution: ExecutionId,
    pub(crate) dag: Arc<Dag>,
    /// The trace context of the caller that started the execution.
    pub(crate) caller: Option<TraceContext>,
}

/// The checked DAG and what scheduling needs of it, worked out once.
#[derive(Debug)]
pub(crate) struct Dag {
    pub(crate) tasks: Vec<TaskSpec>,
    pub(crate) output: Template,
    pub(crate) deadline: Option<Duration>,
    /// Ids, dependencies and dependents, each dependency once; checked by core's one rule.
    pub(crate) graph: StepGraph,
    /// The steps each task's input reads: its dependencies and whatever its expressions name.
    pub(crate) reads: Vec<Vec<usize>>,
    /// Tasks that only run in place of a failed step.
    pub(crate) fallback_only: Vec<bool>,
    /// The inputs of tasks whose input has no expression, rendered once here.
    pub(crate) static_input: Vec<Option<Value>>,
    /// The calls of tasks whose call template has no expression, rendered once here.
    pub(crate) static_call: Vec<Option<Arc<CallRequest>>>,
}

/// Why a run spec was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SpecError {
    /// The tasks do not form a graph that can run: a duplicate id, an unknown dependency or
    /// fallback, or a cycle.
    #[error(transparent)]
    Graph(#[from] GraphError),
    /// A task has no service to call.
    #[error("step {0:?} names no service")]
    NoService(StepId),
}

impl RunSpec {
    /// Checks the tasks: unique ids, known dependencies and fallbacks, no cycle (core's
    /// [`StepGraph::check`]), and a service each.
    pub fn new(
        execution: ExecutionId,
        tasks: Vec<TaskSpec>,
        output: Template,
        deadline: Option<Duration>,
    ) -> Result<Self, SpecError> {
        let graph = StepGraph::check(tasks.iter().map(|t| StepLinks::new(&t.id, &t.depends_on, &t.on_error)))?;
        if let Some(t) = tasks.iter().find(|t| t.services.is_empty()) {
            return Err(SpecError::NoService(t.id.clone()));
        }
        let reads = tasks
            .iter()
            .enumerate()
            .map(|(i, t)| {
                let mut reads = graph.dependencies(i).to_vec();
                let call_reads = t.call.as_ref().map(CallTemplate::referenced_steps).unwrap_or_default();
                reads.extend(
                    t.input
                        .referenced_steps()
                        .iter()
                        .chain(&call_reads)
                        .filter_map(|s| s.parse::<StepId>().ok())
                        .filter_map(|s| graph.index(&s)),
                );
                reads.sort_unstable();
                reads.dedup();
                reads
            })
            .collect();
        let mut fallback_only = vec![false; tasks.len()];
        for t in &tasks {
            if let ErrorPolicy::Fallback(f) = &t.on_error
                && let Some(f) = graph.index(f)
            {
                fallback_only[f] = true;
            }
        }
        let static_input = tasks
            .iter()
            .map(|t| if t.input.expressions().is_empty() { t.input.render(&Value::Null).ok() } else { None })
            .collect();
        let static_call = tasks
            .iter()
            .map(|t| match &t.call {
                Some(call) if call.is_static() => call.render(&Value::Null).ok().map(Arc::new),
                _ => None,
            })
            .collect();
        let dag = Dag { tasks, output, deadline, graph, reads, fallback_only, static_input, static_call };
        Ok(Self { execution, dag: Arc::new(dag), caller: None })
    }

    /// The same checked DAG for another execution.
    pub fn for_execution(&self, execution: ExecutionId) -> Self {
        Self { execution, dag: Arc::clone(&self.dag), caller: None }
    }

    /// The run continues `caller`'s trace: its calls carry `traceparent` with the caller's
    /// trace id (else the execution's own trace).
    pub fn traced(mut self, caller: Option<TraceContext>) -> Self {
        self.caller = caller;
        self
    }

    /// The execution this spec runs.
    pub fn execution(&self) -> ExecutionId {
        self.execution
    }

    /// The tasks.
    pub fn tasks(&self) -> &[TaskSpec] {
        &self.dag.tasks
    }
}
