//! When a call is worth another attempt: the connection failed before an answer came. Only
//! for calls that are safe to repeat, such as a start with an idempotency key.

use std::time::Duration;

use super::client::timed_out;

/// Attempts of one call at most, the first included.
pub(crate) const ATTEMPTS: u32 = 6;

/// The pause before attempt `attempt + 1`: 250 ms, doubling, at most 4 s (7.75 s over the five
/// pauses), long enough for a restarted server to come back.
pub(crate) fn backoff(attempt: u32) -> Duration {
    const FIRST: Duration = Duration::from_millis(250);
    const LONGEST: Duration = Duration::from_secs(4);
    FIRST.saturating_mul(1 << attempt.saturating_sub(1).min(16)).min(LONGEST)
}

/// Whether `status` says the call got no answer because of the connection: the server was
/// unavailable (refused, restarting, shutting down), or the connection was lost while the call
/// was in flight. An answer from the server (any other code, with its message) and the
/// client's own `--timeout` are not.
pub(crate) fn lost_connection(status: &tonic::Status) -> bool {
    if status.code() == tonic::Code::Unavailable {
        return true;
    }
    if timed_out(status) {
        return false;
    }
    // A call cut off by its connection carries the transport's error as its source; a status
    // the server sent has none.
    let mut source = std::error::Error::source(status);
    while let Some(error) = source {
        if error.is::<std::io::Error>() || error.is::<tonic::transport::Error>() {
            return true;
        }
        source = error.source();
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_from_a_quarter_second_up_to_four() {
        let pauses: Vec<u64> = (1..ATTEMPTS).map(|a| backoff(a).as_millis() as u64).collect();
        assert_eq!(pauses, [250, 500, 1000, 2000, 4000]);
        assert_eq!(backoff(40), Duration::from_secs(4));
    }

    #[test]
    fn only_a_failed_connection_is_retried() {
        let check =
            |status: tonic::Status, expected: bool| assert_eq!(lost_connection(&status), expected, "{status:?}");
        check(tonic::Status::unavailable("tcp connect error"), true);
        let reset = std::io::Error::new(std::io::ErrorKind::ConnectionReset, "connection reset by peer");
        check(tonic::Status::from_error(Box::new(reset)), true);
        // Answers from the server.
        check(tonic::Status::invalid_argument("workflow: invalid"), false);
        check(tonic::Status::internal("the store failed"), false);
        check(tonic::Status::not_found("no workflow \"x\""), false);
        // The client's own deadline.
        check(tonic::Status::cancelled(tonic::TimeoutExpired(()).to_string()), false);
    }
}
