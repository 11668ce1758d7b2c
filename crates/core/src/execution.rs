//! A run of a workflow: [`Execution`], its state machine and its tasks' states.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::Timestamp;
use crate::error::{Error, Result};
use crate::ids::{ExecutionId, ServiceId, StepId, WorkflowName};

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
    /// Stopped by cancellation.
    Cancelled,
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
}

impl Default for TaskStatus {
    fn default() -> Self {
        Self { state: TaskState::Pending, attempts: 0, service: None, error: None, started_at: None, finished_at: None }
    }
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
    /// Its tasks by step id.
    pub tasks: BTreeMap<StepId, TaskStatus>,
    /// When it was created.
    pub created_at: Timestamp,
    /// When it last changed.
    pub updated_at: Timestamp,
    /// The trace context of the caller that started it, whose trace it continues; `None`:
    /// its own trace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace: Option<crate::trace::TraceContext>,
}

impl Execution {
    /// Moves to `to` if the state machine allows it, stamping `at`.
    pub fn transition(&mut self, to: ExecutionState, at: Timestamp) -> Result<()> {
        self.state = self.state.transition(to)?;
        self.updated_at = at;
        Ok(())
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
}
