//! The planner's output: a DAG of tasks bound to services, its data flow, parallel levels and
//! predicted QoS.

use serde::{Deserialize, Serialize};

use crate::ids::{ServiceId, StepId};
use crate::workflow::{Step, StepTarget};

/// One task of a plan: a call to a chosen service.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlanTask {
    /// The task's id, used as the step id when the plan becomes a workflow.
    pub id: StepId,
    /// The chosen service.
    pub service: ServiceId,
    /// Functionally equivalent services, best first, for failover.
    #[serde(default)]
    pub alternatives: Vec<ServiceId>,
    /// Concepts the task consumes.
    pub inputs: Vec<String>,
    /// Concepts the task produces.
    pub outputs: Vec<String>,
    /// Tasks whose outputs it needs.
    #[serde(default)]
    pub depends_on: Vec<StepId>,
}

impl PlanTask {
    /// The workflow step that runs this task with `input`: pinned to the chosen service with
    /// the ranked alternatives to fail over to, after the tasks it depends on; its failure
    /// fails the run.
    pub fn to_step(&self, input: serde_json::Value) -> Step {
        Step {
            depends_on: self.depends_on.clone(),
            ..Step::call(
                self.id.clone(),
                StepTarget::Service { id: self.service.clone(), alternatives: self.alternatives.clone() },
                input,
            )
        }
    }
}

/// One edge of the data flow: which value feeds which input.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataFlow {
    /// The producing task; `None` when the request provides the value.
    pub from: Option<StepId>,
    /// The concept produced (the same as or more specific than `to_concept`).
    pub from_concept: String,
    /// The consuming task.
    pub to: StepId,
    /// The input concept it satisfies.
    pub to_concept: String,
}

/// QoS of a whole plan: latency along the critical path, bottleneck throughput, summed cost,
/// multiplied availability.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PredictedQos {
    /// End-to-end latency in milliseconds.
    pub latency_ms: f64,
    /// Requests per second the slowest service sustains.
    pub throughput_rps: f64,
    /// Cost of one run.
    pub cost: f64,
    /// Probability that every call succeeds.
    pub availability: f64,
}

/// A composed, validated plan.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Plan {
    /// The tasks.
    pub tasks: Vec<PlanTask>,
    /// The data flow between them.
    pub data_flow: Vec<DataFlow>,
    /// Topological levels: tasks in one level do not depend on each other.
    pub levels: Vec<Vec<StepId>>,
    /// Predicted QoS.
    pub predicted: PredictedQos,
}
