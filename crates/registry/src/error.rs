//! The registry's errors.

use baton_core::ServiceId;

/// A `Result` whose error is [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Why a registry call was refused. Nothing registered changes when a call is refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The spec or the requirements break a rule; the inner error names the field.
    #[error(transparent)]
    Invalid(#[from] baton_core::Error),
    /// No service has this id.
    #[error("unknown service {0:?}")]
    UnknownService(ServiceId),
    /// The service has every in-flight permit taken.
    #[error("service {id:?} is at capacity ({capacity} in flight)")]
    AtCapacity {
        /// The service.
        id: ServiceId,
        /// Its capacity.
        capacity: u32,
    },
    /// The registry holds as many services as it is configured to.
    #[error("registry is full ({max} services); deregister some or raise the limit")]
    Full {
        /// The configured limit.
        max: usize,
    },
}

impl From<Error> for baton_core::Error {
    fn from(error: Error) -> Self {
        match error {
            Error::Invalid(inner) => inner,
            Error::UnknownService(id) => baton_core::Error::UnknownService(id),
            other @ (Error::AtCapacity { .. } | Error::Full { .. }) => {
                baton_core::Error::Unavailable(other.to_string())
            }
        }
    }
}
