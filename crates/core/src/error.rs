//! The errors of the domain model: every rejection names the field and the value.

use crate::ids::ServiceId;

/// A `Result` whose error is [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Why a value of the domain model was rejected, or a port call failed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A field holds a value that breaks its rule.
    #[error("invalid {field} {value:?}: {reason}")]
    Invalid {
        /// Dotted path of the field, e.g. `qos.availability`.
        field: String,
        /// The offending value, rendered for people.
        value: String,
        /// The rule it breaks.
        reason: String,
    },
    /// A lookup by id found nothing.
    #[error("unknown service {0:?}")]
    UnknownService(ServiceId),
    /// An execution was asked to move to a state it cannot reach from where it is.
    #[error("execution cannot go from {from} to {to}")]
    InvalidTransition {
        /// The state it is in.
        from: crate::execution::ExecutionState,
        /// The state it was asked to reach.
        to: crate::execution::ExecutionState,
    },
    /// The request is well formed but cannot be done as asked, e.g. a goal no plan meets.
    #[error("{0}")]
    Precondition(String),
    /// A backing component could not serve the call right now.
    #[error("unavailable: {0}")]
    Unavailable(String),
}

impl Error {
    /// Builds an [`Error::Invalid`].
    pub fn invalid(field: impl Into<String>, value: impl ToString, reason: impl Into<String>) -> Self {
        Self::Invalid { field: field.into(), value: value.to_string(), reason: reason.into() }
    }

    /// Prefixes the field path of an [`Error::Invalid`] with `parent.` so nested values name their place.
    pub fn within(self, parent: &str) -> Self {
        match self {
            Self::Invalid { field, value, reason } => {
                Self::Invalid { field: format!("{parent}.{field}"), value, reason }
            }
            other => other,
        }
    }
}
