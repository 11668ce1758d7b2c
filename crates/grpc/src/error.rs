//! The gRPC crate's errors.

/// A `Result` whose error is [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Why the server could not start or stopped.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The transport failed (bind, accept, HTTP/2).
    #[error("grpc transport: {0}")]
    Transport(#[from] tonic::transport::Error),
    /// A set of bearer tokens was unusable; the message never shows a token.
    #[error("bearer tokens: {0}")]
    Tokens(String),
    /// The reflection service rejected the descriptor set.
    #[error("grpc reflection: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
}

/// The one map from errors to status codes: an error of the API ports, or anything that
/// becomes one (the domain's [`baton_core::Error`], the store's), to the code a client can act
/// on. The message is the error's, which names what it is about.
pub fn api_status(error: impl Into<baton_core::ApiError>) -> tonic::Status {
    use baton_core::ApiError;
    use tonic::Status;
    let error = error.into();
    let message = error.to_string();
    match error {
        ApiError::NotFound(_) => Status::not_found(message),
        ApiError::InvalidArgument { .. } => Status::invalid_argument(message),
        ApiError::AlreadyExists(_) => Status::already_exists(message),
        ApiError::FailedPrecondition(_) => Status::failed_precondition(message),
        ApiError::ResourceExhausted(_) => Status::resource_exhausted(message),
        ApiError::Unavailable(_) => Status::unavailable(message),
        _ => Status::internal(message),
    }
}
