//! The planner's errors: each names the concept, task, service or constraint at fault.

use std::fmt;

/// A `Result` whose error is [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// One wanted concept the planner cannot produce, and why, traced back to a concept that
/// nothing provides.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Missing {
    /// The wanted concept.
    pub wanted: String,
    /// The chain from the wanted concept to the root cause: each link is a service that
    /// could produce the previous concept and the input of it that cannot be satisfied.
    pub chain: Vec<(String, String)>,
}

impl Missing {
    /// The concept at the end of the chain: no service outputs it and the request lacks it.
    pub fn root(&self) -> &str {
        self.chain.last().map_or(&self.wanted, |(_, concept)| concept)
    }
}

impl fmt::Display for Missing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "wanted {}", self.wanted)?;
        for (service, input) in &self.chain {
            write!(f, " needs {input} (an input of {service})")?;
        }
        write!(f, ", which no usable service outputs and the request does not provide")
    }
}

/// Why no plan was produced, or why a plan is not sound.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The goal wants nothing.
    #[error("the goal wants no concept")]
    EmptyGoal,
    /// Some wanted concepts cannot be produced.
    #[error("unsatisfiable: {}", .missing.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
    Unsatisfiable {
        /// One entry per wanted concept that cannot be produced.
        missing: Vec<Missing>,
    },
    /// A service the constraints require cannot take part.
    #[error("included service {service:?} {reason}")]
    IncludedServiceUnusable {
        /// The service.
        service: String,
        /// Why.
        reason: String,
    },
    /// The best plan found breaks a constraint.
    #[error("constraint {constraint} is {limit}, the plan needs {predicted}")]
    ConstraintViolated {
        /// The constraint, e.g. `max_latency_ms`.
        constraint: &'static str,
        /// Its bound.
        limit: f64,
        /// What the plan comes to.
        predicted: f64,
    },
    /// A plan handed to validation is not sound.
    #[error("invalid plan: {0}")]
    InvalidPlan(String),
    /// A request value breaks a rule of the domain.
    #[error(transparent)]
    Invalid(#[from] baton_core::Error),
}

impl From<Error> for baton_core::Error {
    fn from(error: Error) -> Self {
        match error {
            Error::Invalid(inner) => inner,
            Error::EmptyGoal => baton_core::Error::invalid("goal.wanted", "[]", "the goal wants no concept"),
            Error::Unsatisfiable { .. } | Error::IncludedServiceUnusable { .. } | Error::ConstraintViolated { .. } => {
                baton_core::Error::Precondition(error.to_string())
            }
            // The planner validates its own plans: one failing is a bug here, not the caller's.
            Error::InvalidPlan(reason) => {
                baton_core::Error::Unavailable(format!("planner produced an invalid plan: {reason}"))
            }
        }
    }
}
