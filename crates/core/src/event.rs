//! The journal of an execution: every state change is an [`Event`], appended before it takes effect.

use serde::{Deserialize, Serialize};

use crate::Timestamp;
use crate::ids::{ExecutionId, ServiceId, StepId};

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
    /// A step succeeded; its output is durable with this event.
    TaskSucceeded {
        /// The step.
        step: StepId,
        /// The attempt that succeeded.
        attempt: u32,
        /// Its output.
        output: serde_json::Value,
    },
    /// An attempt of a step failed.
    TaskFailed {
        /// The step.
        step: StepId,
        /// The attempt that failed.
        attempt: u32,
        /// Why.
        error: String,
        /// Whether another attempt may help.
        retryable: bool,
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
    },
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
    Failed(String),
    /// Stopped on request.
    Cancelled(String),
}

impl From<Outcome> for EventKind {
    fn from(outcome: Outcome) -> Self {
        match outcome {
            Outcome::Completed(output) => Self::Completed { output },
            Outcome::Failed(error) => Self::Failed { error },
            Outcome::Cancelled(reason) => Self::Cancelled { reason },
        }
    }
}
