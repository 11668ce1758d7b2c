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
    /// The reflection service rejected the descriptor set.
    #[error("grpc reflection: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
}
