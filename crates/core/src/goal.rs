//! What a user asks the planner for: [`Goal`].

use serde::{Deserialize, Serialize};

use crate::ids::ServiceId;
use crate::requirements::SecurityRequirements;
use crate::service::Protocol;

/// Bounds a composed plan must respect as a whole.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Constraints {
    /// End-to-end latency along the critical path, in milliseconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_latency_ms: Option<f64>,
    /// Total cost of one run (sum over the services used).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_cost: Option<f64>,
    /// Availability of one run (product over the services used), in `[0, 1]`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub min_availability: Option<f64>,
    /// Security every service used must offer.
    pub security: SecurityRequirements,
    /// Services that must be part of the plan.
    pub include_services: Vec<ServiceId>,
    /// Services that must not be used.
    pub exclude_services: Vec<ServiceId>,
    /// Protocols allowed (empty: any).
    pub protocols: Vec<Protocol>,
    /// Most services in the plan.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_services: Option<u32>,
}

/// Relative weights of the QoS dimensions when several matter.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Weights {
    /// Weight of latency (lower is better).
    pub latency: f64,
    /// Weight of throughput (higher is better).
    pub throughput: f64,
    /// Weight of cost (lower is better).
    pub cost: f64,
    /// Weight of availability (higher is better).
    pub availability: f64,
}

impl Default for Weights {
    fn default() -> Self {
        Self { latency: 1.0, throughput: 0.0, cost: 0.0, availability: 0.0 }
    }
}

/// What the optimizer minimises or maximises among equivalent services.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Objective {
    /// Lowest end-to-end latency.
    #[default]
    Latency,
    /// Highest bottleneck throughput.
    Throughput,
    /// Lowest total cost.
    Cost,
    /// A weighted sum of normalised dimensions, by [`Goal::weights`].
    Weighted,
}

/// A composition request: what the caller has, what they want, and within which bounds.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Goal {
    /// Concepts the caller provides at the start.
    pub provided: Vec<String>,
    /// Concepts the plan must produce.
    pub wanted: Vec<String>,
    /// Bounds on the plan.
    pub constraints: Constraints,
    /// What to optimise.
    pub objective: Objective,
    /// The weights of [`Objective::Weighted`].
    pub weights: Weights,
}
