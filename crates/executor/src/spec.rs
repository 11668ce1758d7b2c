//! What a run runs: tasks bound to services, checked once as a DAG and shared by every
//! execution of it.

use std::sync::Arc;
use std::time::Duration;

use baton_core::program::{Action, Block, Call, CallTarget, Flow, OnError, Program, Task, Then};
use baton_core::{
    CallTemplate, ErrorPolicy, ExecutionId, GraphError, RetryPolicy, ServiceId, StepGraph, StepId, StepLinks, Template,
    TraceContext, WorkflowName,
};

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

/// A checked DAG of tasks with the run's output template, for one execution: a program of one
/// graph block of calls.
///
/// The checked program is shared: [`RunSpec::for_execution`] gives another execution of it
/// without checking or copying it again, as when many executions start from one version of a
/// workflow definition.
#[derive(Debug, Clone)]
pub struct RunSpec {
    pub(crate) execution: ExecutionId,
    pub(crate) program: Arc<Program>,
    tasks: Arc<[TaskSpec]>,
    /// The trace context of the caller that started the execution.
    pub(crate) caller: Option<TraceContext>,
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
        let program_tasks = tasks
            .iter()
            .enumerate()
            .map(|(i, t)| Task {
                name: t.id.clone(),
                reference: format!("/steps/{i}"),
                condition: None,
                input: None,
                output: None,
                export: None,
                then: Then::Continue,
                depends_on: graph.dependencies(i).to_vec(),
                retry: t.retry.clone(),
                timeout: t.timeout,
                task_timeout: t.task_timeout,
                on_error: match &t.on_error {
                    ErrorPolicy::Fail => OnError::Fail,
                    ErrorPolicy::Continue => OnError::Continue,
                    ErrorPolicy::Fallback(f) => OnError::Fallback(graph.index(f).expect("a checked fallback")),
                },
                action: Action::Call(Call {
                    target: CallTarget::Services(t.services.clone()),
                    payload: t.input.clone(),
                    shape: t.call.clone(),
                }),
            })
            .collect();
        let root = Block::new(Flow::Graph, program_tasks, Some(output));
        let name = WorkflowName::new("run").expect("a valid name");
        let program = Program { name, root, input: None, output: None, deadline };
        Ok(Self { execution, program: Arc::new(program), tasks: tasks.into(), caller: None })
    }

    /// A run of a checked program.
    pub fn of_program(execution: ExecutionId, program: Arc<Program>) -> Self {
        Self { execution, program, tasks: Arc::from([]), caller: None }
    }

    /// The same checked program for another execution.
    pub fn for_execution(&self, execution: ExecutionId) -> Self {
        Self { execution, program: Arc::clone(&self.program), tasks: Arc::clone(&self.tasks), caller: None }
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

    /// The tasks it was built from (none for a spec of a program).
    pub fn tasks(&self) -> &[TaskSpec] {
        &self.tasks
    }

    /// The program it runs.
    pub fn program(&self) -> &Arc<Program> {
        &self.program
    }
}
