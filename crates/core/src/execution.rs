//! A run of a workflow: [`Execution`], its state machine and its tasks' states.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::Timestamp;
use crate::error::{Error, Result};
use crate::event::{Event, EventKind};
use crate::ids::{ExecutionId, ServiceId, StepId, WorkflowName};
use crate::problem::Problem;

/// Where an execution is in its life:
/// `Created -> Running <-> Paused -> Completed | Failed | Cancelled`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ExecutionState {
    /// Accepted, not yet started.
    Created,
    /// Dispatching tasks.
    Running,
    /// Not dispatching; in-flight tasks finish.
    Paused,
    /// Every task done; output available.
    Completed,
    /// Stopped by a failure.
    Failed,
    /// Stopped on request.
    Cancelled,
}

impl ExecutionState {
    /// True for the three end states.
    pub fn is_terminal(self) -> bool {
        matches!(self, Self::Completed | Self::Failed | Self::Cancelled)
    }

    /// True when the state machine allows moving from `self` to `to`.
    pub fn can_become(self, to: Self) -> bool {
        use ExecutionState::*;
        matches!(
            (self, to),
            (Created, Running | Failed | Cancelled)
                | (Running, Paused | Completed | Failed | Cancelled)
                | (Paused, Running | Failed | Cancelled)
        )
    }

    /// `to` when the move is legal, else [`Error::InvalidTransition`].
    pub fn transition(self, to: Self) -> Result<Self> {
        if self.can_become(to) { Ok(to) } else { Err(Error::InvalidTransition { from: self, to }) }
    }
}

impl fmt::Display for ExecutionState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Created => "created",
            Self::Running => "running",
            Self::Paused => "paused",
            Self::Completed => "completed",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
        })
    }
}

/// Where one task of an execution is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskState {
    /// Waiting for its dependencies.
    Pending,
    /// Dispatched, waiting for a permit or a worker.
    Scheduled,
    /// Being called.
    Running,
    /// Done with an output.
    Succeeded,
    /// Out of attempts.
    Failed,
    /// Not run because something it needs failed or was skipped.
    Skipped,
    /// Stopped by cancellation, or abandoned when the execution ended.
    Cancelled,
    /// Waiting for a timer, a signal or a child execution.
    Waiting,
}

impl TaskState {
    /// True for the four end states.
    pub fn is_terminal(self) -> bool {
        matches!(self, Self::Succeeded | Self::Failed | Self::Skipped | Self::Cancelled)
    }
}

/// The state of one task of an execution.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskStatus {
    /// Where it is.
    pub state: TaskState,
    /// Attempts made so far.
    pub attempts: u32,
    /// The service of the latest attempt.
    pub service: Option<ServiceId>,
    /// The latest error.
    pub error: Option<String>,
    /// When the first attempt started.
    pub started_at: Option<Timestamp>,
    /// When it reached an end state.
    pub finished_at: Option<Timestamp>,
    /// The latest error in detail.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub problem: Option<Problem>,
    /// The child execution a `workflow` task started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub child: Option<ExecutionId>,
    /// When its timer fires, for a `wait` task that is waiting.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub due: Option<Timestamp>,
}

impl Default for TaskStatus {
    fn default() -> Self {
        Self {
            state: TaskState::Pending,
            attempts: 0,
            service: None,
            error: None,
            started_at: None,
            finished_at: None,
            problem: None,
            child: None,
            due: None,
        }
    }
}

/// An execution out of memory while it waits: only timers, signals or children can move it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Parked {
    /// When its earliest timer fires; `None` when only a signal or a child's end wakes it.
    pub until: Option<Timestamp>,
}

/// The execution and task that started a child execution.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Parent {
    /// The parent execution.
    pub execution: ExecutionId,
    /// The path of its `workflow` task.
    pub step: StepId,
    /// How deep it nests: 1 for a child of a top-level execution.
    #[serde(default = "one")]
    pub depth: u32,
}

fn one() -> u32 {
    1
}

/// A run of a pinned version of a workflow definition.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Execution {
    /// Its id.
    pub id: ExecutionId,
    /// The workflow it runs.
    pub workflow: WorkflowName,
    /// The definition version it pinned at start.
    pub version: u32,
    /// Where it is.
    pub state: ExecutionState,
    /// The run's input.
    pub input: serde_json::Value,
    /// The run's output, once completed.
    pub output: Option<serde_json::Value>,
    /// Why it failed or was cancelled.
    pub error: Option<String>,
    /// Why it failed, in detail.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub problem: Option<Problem>,
    /// Its tasks by path.
    pub tasks: BTreeMap<StepId, TaskStatus>,
    /// The execution that started it, for a child.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<Parent>,
    /// Set while it waits out of memory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parked: Option<Parked>,
    /// When it was created.
    pub created_at: Timestamp,
    /// When it last changed.
    pub updated_at: Timestamp,
    /// The trace context of the caller that started it, whose trace it continues; `None`:
    /// its own trace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace: Option<crate::trace::TraceContext>,
    /// How long it is kept once it ends, fixed when it starts (its definition's `retention`,
    /// else the server's); `None`: for ever.
    #[serde(default, with = "crate::duration::serde_text_opt", skip_serializing_if = "Option::is_none")]
    pub retention: Option<std::time::Duration>,
    /// When it is removed, with its journal and idempotency key: `retention` after it ended.
    /// Set by [`ExecutionUpdate::apply`](crate::ExecutionUpdate::apply) when it ends.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<Timestamp>,
}

impl Execution {
    /// Moves to `to` if the state machine allows it, stamping `at`.
    pub fn transition(&mut self, to: ExecutionState, at: Timestamp) -> Result<()> {
        self.state = self.state.transition(to)?;
        self.updated_at = at;
        Ok(())
    }

    /// Applies one journal event: the replay rule every reader of a journal shares (the
    /// engine's driver and recovery, the API fakes), so an execution reads the same
    /// wherever it is rebuilt.
    ///
    /// A state change the state machine refuses is [`Error::InvalidTransition`] and changes
    /// nothing. `Started` moves a created execution to running and is a no-op otherwise. A
    /// task's `attempts` is the attempt number of its latest event (the executor numbers
    /// attempts in order, so this is also the most made), and a success clears the error an
    /// earlier attempt left. `updated_at` never moves back.
    pub fn apply(&mut self, event: &Event) -> Result<()> {
        let to = match &event.kind {
            EventKind::Started { .. } if self.state == ExecutionState::Created => Some(ExecutionState::Running),
            EventKind::Paused => Some(ExecutionState::Paused),
            EventKind::Resumed => Some(ExecutionState::Running),
            EventKind::Cancelled { .. } => Some(ExecutionState::Cancelled),
            EventKind::Failed { .. } => Some(ExecutionState::Failed),
            EventKind::Completed { .. } => Some(ExecutionState::Completed),
            _ => None,
        };
        if let Some(to) = to {
            self.state = self.state.transition(to)?;
        }
        let at = event.at;
        match &event.kind {
            EventKind::Started { .. } | EventKind::Paused | EventKind::Resumed | EventKind::SignalReceived { .. } => {}
            EventKind::Cancelled { reason } => {
                self.error = Some(reason.clone());
                self.end_tasks(TaskState::Cancelled, at);
            }
            EventKind::Failed { error, problem } => {
                self.error = Some(error.clone());
                self.problem.clone_from(problem);
                self.end_tasks(TaskState::Skipped, at);
            }
            EventKind::Completed { output } => {
                self.output = Some(output.clone());
                self.end_tasks(TaskState::Skipped, at);
            }
            EventKind::TimerStarted { step, due } => {
                let task = self.tasks.entry(step.clone()).or_default();
                task.state = TaskState::Waiting;
                task.due = Some(*due);
                task.started_at.get_or_insert(at);
            }
            EventKind::ChildStarted { step, child } => {
                let task = self.tasks.entry(step.clone()).or_default();
                task.state = TaskState::Waiting;
                task.child = Some(*child);
                task.started_at.get_or_insert(at);
            }
            EventKind::SignalConsumed { step, .. } => {
                let task = self.tasks.entry(step.clone()).or_default();
                task.state = TaskState::Succeeded;
                task.error = None;
                task.problem = None;
                task.started_at.get_or_insert(at);
                task.finished_at = Some(at);
            }
            EventKind::TaskScheduled { step, attempt, service } => {
                let task = self.tasks.entry(step.clone()).or_default();
                task.state = TaskState::Scheduled;
                task.attempts = *attempt;
                task.service = Some(service.clone());
                task.started_at.get_or_insert(at);
            }
            EventKind::TaskSucceeded { step, attempt, .. } => {
                let task = self.tasks.entry(step.clone()).or_default();
                task.state = TaskState::Succeeded;
                task.attempts = task.attempts.max(*attempt);
                task.error = None;
                task.problem = None;
                task.due = None;
                task.started_at.get_or_insert(at);
                task.finished_at = Some(at);
            }
            EventKind::TaskFailed { step, attempt, error, retryable, problem } => {
                let task = self.tasks.entry(step.clone()).or_default();
                task.attempts = task.attempts.max(*attempt);
                task.error = Some(error.clone());
                task.problem.clone_from(problem);
                if !retryable {
                    task.state = TaskState::Failed;
                    task.finished_at = Some(at);
                }
            }
            EventKind::TaskSkipped { step, reason } => {
                let task = self.tasks.entry(step.clone()).or_default();
                task.state = TaskState::Skipped;
                task.error = Some(reason.clone());
                task.finished_at = Some(at);
            }
        }
        self.updated_at = self.updated_at.max(at);
        Ok(())
    }

    /// Every task still pending gets `pending`; every task in flight (scheduled, running,
    /// waiting) is cancelled: an ended execution has no task that reads as if it could move.
    fn end_tasks(&mut self, pending: TaskState, at: Timestamp) {
        for task in self.tasks.values_mut().filter(|t| !t.state.is_terminal()) {
            task.state = if task.state == TaskState::Pending { pending } else { TaskState::Cancelled };
            task.finished_at.get_or_insert(at);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::ExecutionState::{self, *};

    #[test]
    fn only_the_documented_transitions_are_legal() {
        let all = [Created, Running, Paused, Completed, Failed, Cancelled];
        let legal = [
            (Created, Running),
            (Created, Failed),
            (Created, Cancelled),
            (Running, Paused),
            (Running, Completed),
            (Running, Failed),
            (Running, Cancelled),
            (Paused, Running),
            (Paused, Failed),
            (Paused, Cancelled),
        ];
        for from in all {
            for to in all {
                let expected = legal.contains(&(from, to));
                assert_eq!(from.can_become(to), expected, "{from} -> {to}");
                let result: Result<ExecutionState, _> = from.transition(to);
                if !expected {
                    assert_eq!(result.unwrap_err().to_string(), format!("execution cannot go from {from} to {to}"));
                }
            }
        }
        assert!(Paused.transition(Paused).is_err());
        assert!(all.iter().filter(|s| s.is_terminal()).count() == 3);
    }

    #[test]
    fn apply_replays_a_journal_the_one_way() {
        use crate::event::{Event, EventKind};
        use crate::ids::{ExecutionId, ServiceId, StepId, WorkflowName};
        use crate::{Execution, TaskState};

        let at = |s: i64| chrono::DateTime::from_timestamp(s, 0).expect("a valid time");
        let step = StepId::new("pay").expect("a valid id");
        let mut execution = Execution {
            id: ExecutionId::generate(),
            workflow: WorkflowName::new("checkout").expect("a valid name"),
            version: 1,
            state: Created,
            input: serde_json::Value::Null,
            output: None,
            error: None,
            tasks: Default::default(),
            created_at: at(10),
            updated_at: at(10),
            trace: None,
            parent: None,
            problem: None,
            parked: None,
            retention: None,
            expires_at: None,
        };
        let id = execution.id;
        let event = |s, kind| Event { execution: id, sequence: 1, at: at(s), kind };
        let service = ServiceId::new("payments").expect("a valid id");
        let journal = [
            event(11, EventKind::Started { input: serde_json::Value::Null }),
            event(12, EventKind::TaskScheduled { step: step.clone(), attempt: 1, service: service.clone() }),
            event(
                13,
                EventKind::TaskFailed {
                    step: step.clone(),
                    attempt: 1,
                    error: "busy".into(),
                    retryable: true,
                    problem: None,
                },
            ),
            event(14, EventKind::TaskScheduled { step: step.clone(), attempt: 2, service }),
            // Stamped earlier than the event before: updated_at keeps the later time.
            event(9, EventKind::TaskSucceeded { step: step.clone(), attempt: 2, output: 7.into(), context: None }),
        ];
        for e in &journal {
            execution.apply(e).expect("a legal event");
        }
        let task = &execution.tasks[&step];
        assert_eq!((execution.state, task.state, task.attempts), (Running, TaskState::Succeeded, 2));
        assert_eq!(task.error, None, "a success clears the error of an earlier attempt");
        assert_eq!((task.started_at, execution.updated_at), (Some(at(12)), at(14)));

        // A refused change leaves the execution as it was.
        let before = execution.clone();
        let err = execution.apply(&event(20, EventKind::Resumed)).unwrap_err();
        assert_eq!(err.to_string(), "execution cannot go from running to running");
        assert_eq!(execution, before);
        execution.apply(&event(21, EventKind::Completed { output: 1.into() })).expect("running completes");
        assert_eq!((execution.state, execution.output.clone()), (Completed, Some(1.into())));
    }
}
