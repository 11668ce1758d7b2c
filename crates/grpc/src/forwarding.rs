//! What a call tells the port behind it that the port needs to pass the call on to another
//! server: the caller's deadline, and whether a server forwarded it already.
//!
//! A cluster node that does not run an execution forwards commands for it to the node that
//! does. The port answers such a call inside [`Incoming::scope`], so it reads them with
//! [`Incoming::current`] without every port method taking them as arguments.

use std::time::Duration;

use tokio::time::Instant;

/// The metadata a server adds to a call it forwards, naming itself: a server that receives
/// it never forwards the call again, so forwarding is one hop.
pub const FORWARDED_BY: &str = "baton-forwarded-by";

/// The longest [`FORWARDED_BY`] value kept: a node id has at most 128 bytes.
const MAX_FORWARDED_BY: usize = 128;

/// What the call being served brought.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Incoming {
    /// When the caller stops waiting (its `grpc-timeout`).
    pub deadline: Option<Instant>,
    /// The server that forwarded the call, when one did.
    pub forwarded_by: Option<String>,
}

tokio::task_local! {
    static INCOMING: Incoming;
}

impl Incoming {
    /// What the call served on this task brought; `None` outside a call.
    pub fn current() -> Option<Self> {
        INCOMING.try_with(Clone::clone).ok()
    }

    /// Reads the deadline and the forwarding mark of a call's metadata.
    pub fn from_metadata(metadata: &tonic::metadata::MetadataMap) -> Self {
        let text = |key: &str| metadata.get(key).and_then(|v| v.to_str().ok());
        Self {
            deadline: text("grpc-timeout").and_then(parse_timeout).map(|left| Instant::now() + left),
            forwarded_by: text(FORWARDED_BY).filter(|by| !by.is_empty()).map(|by| {
                let mut by = by.to_owned();
                if by.len() > MAX_FORWARDED_BY {
                    let mut end = MAX_FORWARDED_BY;
                    while !by.is_char_boundary(end) {
                        end -= 1;
                    }
                    by.truncate(end);
                }
                by
            }),
        }
    }

    /// Runs `work` with `self` as the call's [`Incoming::current`].
    pub async fn scope<F: Future>(self, work: F) -> F::Output {
        INCOMING.scope(self, work).await
    }
}

/// A `grpc-timeout` value: at most 8 digits and a unit (`H`, `M`, `S`, `m`, `u`, `n`).
fn parse_timeout(text: &str) -> Option<Duration> {
    let (digits, unit) = text.split_at(text.len().checked_sub(1)?);
    if digits.is_empty() || digits.len() > 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let value: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(value * 3600),
        "M" => Duration::from_secs(value * 60),
        "S" => Duration::from_secs(value),
        "m" => Duration::from_millis(value),
        "u" => Duration::from_micros(value),
        "n" => Duration::from_nanos(value),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeouts_parse_by_their_unit_and_bad_ones_are_ignored() {
        assert_eq!(parse_timeout("250m"), Some(Duration::from_millis(250)));
        assert_eq!(parse_timeout("2S"), Some(Duration::from_secs(2)));
        assert_eq!(parse_timeout("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(parse_timeout("7u"), Some(Duration::from_micros(7)));
        for bad in ["", "m", "123456789m", "12x", "-1S", "1.5S"] {
            assert_eq!(parse_timeout(bad), None, "{bad:?}");
        }
    }

    #[tokio::test]
    async fn the_call_metadata_is_current_inside_its_scope_only() {
        let mut metadata = tonic::metadata::MetadataMap::new();
        metadata.insert("grpc-timeout", "5S".parse().unwrap());
        metadata.insert(FORWARDED_BY, "node-a".parse().unwrap());
        let incoming = Incoming::from_metadata(&metadata);
        assert_eq!(incoming.forwarded_by.as_deref(), Some("node-a"));
        let left = incoming.deadline.unwrap() - Instant::now();
        assert!(left <= Duration::from_secs(5) && left > Duration::from_secs(4), "{left:?}");
        assert_eq!(Incoming::current(), None);
        let seen = incoming.clone().scope(async { Incoming::current() }).await;
        assert_eq!(seen, Some(incoming));
    }
}
