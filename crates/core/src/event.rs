//! The journal of an execution: every state change is an [`Event`], appended before it takes effect.

use serde::{Deserialize, Serialize};

use crate::Timestamp;
use crate::ids::{ExecutionId, ServiceId, StepId};
use crate::problem::Problem;

/// What happened.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum EventKind {
    /// The execution started with this input.
    Started {
        /// The run's input.
        input: serde_json::Value,
    },
    /// An attempt of a step was dispatched to a service.
    TaskScheduled {
        /// The step.
        step: StepId,
        /// 1 for the first attempt.
        attempt: u32,
        /// The service called.
        service: ServiceId,
    },
    /// A task succeeded; its output is durable with this event. A task with this event in the
    /// journal never runs again.
    TaskSucceeded {
        /// The task's path.
        step: StepId,
        /// The attempt that succeeded (0 for tasks that call nothing).
        attempt: u32,
        /// Its output (after its output filter).
        output: serde_json::Value,
        /// The execution's context after the task's export filter, when it has one.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        context: Option<serde_json::Value>,
    },
    /// An attempt of a step failed.
    TaskFailed {
        /// The step.
        step: StepId,
        /// The attempt that failed.
        attempt: u32,
        /// Why.
        error: String,
        /// Whether another attempt follows; `false` marks the task failed for good.
        retryable: bool,
        /// The error in detail.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        problem: Option<Problem>,
    },
    /// A step will not run.
    TaskSkipped {
        /// The step.
        step: StepId,
        /// Why.
        reason: String,
    },
    /// Dispatch stopped.
    Paused,
    /// Dispatch resumed.
    Resumed,
    /// The execution was cancelled.
    Cancelled {
        /// Why.
        reason: String,
    },
    /// The execution completed with this output.
    Completed {
        /// The run's output.
        output: serde_json::Value,
    },
    /// The execution failed.
    Failed {
        /// Why.
        error: String,
        /// The error in detail.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        problem: Option<Problem>,
    },
    /// A `wait` task armed its timer; it completes (`TaskSucceeded`) once `due` has passed,
    /// after any restart.
    TimerStarted {
        /// The task's path.
        step: StepId,
        /// When the timer fires.
        due: Timestamp,
    },
    /// A signal was sent to the execution; a `listen` task consumes it, at most once.
    SignalReceived {
        /// Its name.
        name: String,
        /// Its data.
        data: serde_json::Value,
    },
    /// A `listen` task consumed a signal and completed with this output.
    SignalConsumed {
        /// The task's path.
        step: StepId,
        /// The sequence numbers of the `SignalReceived` events it consumed.
        signals: Vec<u64>,
        /// Its output.
        output: serde_json::Value,
    },
    /// A `workflow` task started its child execution.
    ChildStarted {
        /// The task's path.
        step: StepId,
        /// The child execution.
        child: ExecutionId,
    },
}

impl EventKind {
    /// True for the three events that end an execution.
    pub fn is_terminal(&self) -> bool {
        matches!(self, Self::Completed { .. } | Self::Failed { .. } | Self::Cancelled { .. })
    }
}

/// One journal record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// The execution it belongs to.
    pub execution: ExecutionId,
    /// Position in that execution's journal, from 1, without gaps.
    pub sequence: u64,
    /// When it was recorded.
    #[serde(serialize_with = "crate::rfc3339::serialize")]
    pub at: Timestamp,
    /// What happened.
    pub kind: EventKind,
}

/// How a run ended: what its last journal event says.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Every step done; the run's output.
    Completed(serde_json::Value),
    /// Stopped by a failure.
    Failed(Problem),
    /// Stopped on request.
    Cancelled(String),
}

impl Outcome {
    /// What a person reads of a failed run's error; `None` unless it failed.
    pub fn error(&self) -> Option<String> {
        match self {
            Self::Failed(problem) => Some(problem.message()),
            Self::Completed(_) | Self::Cancelled(_) => None,
        }
    }
}

impl From<Outcome> for EventKind {
    fn from(outcome: Outcome) -> Self {
        match outcome {
            Outcome::Completed(output) => Self::Completed { output },
            Outcome::Failed(problem) => Self::Failed { error: problem.message(), problem: Some(problem) },
            Outcome::Cancelled(reason) => Self::Cancelled { reason },
        }
    }
}
