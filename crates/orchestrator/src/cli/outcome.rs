//! How a client command ends: its exit code, and the one line on stderr when it failed.

use std::fmt;

use baton_grpc::pb;

/// The exit codes of the client commands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Exit {
    /// The command did what it was asked; a waited-for execution completed.
    Success = 0,
    /// A call failed, or a waited-for execution failed.
    Failed = 1,
    /// Bad arguments, an unreadable file or invalid input, found before any call.
    Usage = 2,
    /// A waited-for execution was cancelled.
    Cancelled = 3,
}

impl Exit {
    /// The process exit code.
    pub(crate) fn code(self) -> u8 {
        self as u8
    }
}

/// The exit of a command that waited for an execution that is now in `state`.
pub(crate) fn exit_for_state(state: i32) -> Exit {
    match pb::ExecutionState::try_from(state) {
        Ok(pb::ExecutionState::Completed) => Exit::Success,
        Ok(pb::ExecutionState::Cancelled) => Exit::Cancelled,
        // Failed, or an execution that has not ended although it should have.
        _ => Exit::Failed,
    }
}

/// Why a command did not get to its answer.
#[derive(Debug)]
pub(crate) enum Failure {
    /// Found before any call: bad arguments, unreadable files, invalid JSON.
    Usage(String),
    /// The server could not be reached.
    Connect {
        /// The server's URL.
        server: String,
        /// The transport error and its causes.
        error: String,
    },
    /// A call answered with an error status.
    Rpc(tonic::Status),
    /// The server took the connection but did not answer a call in time.
    NoAnswer {
        /// The server's URL.
        server: String,
        /// How long the call waited (`--timeout`).
        within: std::time::Duration,
    },
    /// The server is not a gRPC server: it answered in HTTP/1, or in HTTP/2 without a gRPC
    /// status.
    NotGrpc {
        /// The server's URL.
        server: String,
        /// Its answer: the HTTP/1 status line, or `HTTP <code>`.
        answer: String,
        /// Whether it answered in HTTP/2.
        http2: bool,
    },
    /// Anything else that fails the command, e.g. a watch that ended early.
    Other(String),
}

impl Failure {
    /// The exit code this failure ends the process with.
    pub(crate) fn exit(&self) -> Exit {
        match self {
            Self::Usage(_) => Exit::Usage,
            Self::Connect { .. } | Self::Rpc(_) | Self::NoAnswer { .. } | Self::NotGrpc { .. } | Self::Other(_) => {
                Exit::Failed
            }
        }
    }
}

impl From<tonic::Status> for Failure {
    fn from(status: tonic::Status) -> Self {
        Self::Rpc(status)
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Usage(message) | Self::Other(message) => f.write_str(&one_line(message)),
            Self::Connect { server, error } => write!(f, "cannot connect to {server}: {}", one_line(error)),
            Self::NoAnswer { server, within } => write!(
                f,
                "no answer from {server} within {} (--timeout): it took the connection but answered nothing; \
                 is it a Baton server, and is it overloaded?",
                baton_core::duration::format(*within)
            ),
            Self::NotGrpc { server, answer, http2: false } => write!(
                f,
                "{server} speaks HTTP/1 (it answered {:?}), not gRPC over HTTP/2: {GRPC_ADDRESS}",
                one_line(answer)
            ),
            Self::NotGrpc { server, answer, http2: true } => {
                write!(f, "{server} answered {answer} without a gRPC status: it is not a gRPC server; {GRPC_ADDRESS}")
            }
            Self::Rpc(status) => {
                let message = if status.message().is_empty() { status.code().description() } else { status.message() };
                write!(f, "{}: {}", baton_executor::grpc_code_name(status.code()), one_line(message))
            }
        }
    }
}

/// What to check when `--server` is not a gRPC server.
const GRPC_ADDRESS: &str =
    "is --server the gRPC address (baton serve --listen, 127.0.0.1:50051 by default), not the console or metrics one?";

/// An error and its sources, `outer: inner: innermost`.
pub(crate) fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        // Some errors repeat their source's text in their own.
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

/// The message on one line: stderr gets one line per failure.
fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_follow_the_outcome() {
        let check = |state: pb::ExecutionState, exit: Exit| assert_eq!(exit_for_state(state as i32), exit, "{state:?}");
        check(pb::ExecutionState::Completed, Exit::Success);
        check(pb::ExecutionState::Failed, Exit::Failed);
        check(pb::ExecutionState::Cancelled, Exit::Cancelled);
        check(pb::ExecutionState::Running, Exit::Failed);
        assert_eq!(exit_for_state(99), Exit::Failed);
        assert_eq!([Exit::Success, Exit::Failed, Exit::Usage, Exit::Cancelled].map(Exit::code), [0, 1, 2, 3]);
    }

    #[test]
    fn failures_are_one_clear_line() {
        let rpc = Failure::from(tonic::Status::not_found("service \"pay\" is not registered\nat all"));
        assert_eq!(rpc.to_string(), "NOT_FOUND: service \"pay\" is not registered at all");
        assert_eq!(rpc.exit(), Exit::Failed);
        let empty = Failure::from(tonic::Status::new(tonic::Code::Unavailable, ""));
        assert!(empty.to_string().starts_with("UNAVAILABLE: "), "{empty}");
        let usage = Failure::Usage("--input: invalid JSON".into());
        assert_eq!((usage.to_string().as_str(), usage.exit()), ("--input: invalid JSON", Exit::Usage));
        let connect = Failure::Connect { server: "http://x:1".into(), error: "refused".into() };
        assert_eq!(
            (connect.to_string().as_str(), connect.exit()),
            ("cannot connect to http://x:1: refused", Exit::Failed)
        );
    }

    #[test]
    fn chains_name_every_cause_once() {
        let inner = std::io::Error::other("connection refused");
        #[derive(Debug)]
        struct Outer(std::io::Error);
        impl fmt::Display for Outer {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("transport error")
            }
        }
        impl std::error::Error for Outer {
            fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
                Some(&self.0)
            }
        }
        assert_eq!(chain(&Outer(inner)), "transport error: connection refused");
    }
}
