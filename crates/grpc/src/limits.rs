//! What every service shares and nothing else: the bounds on one request, the shutdown
//! signal of long-lived streams, and page-size clamping. A leaf: it imports no service and
//! not the server, so the server and the services both depend on it and not on each other.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

/// Bounds on what one request may ask for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest message decoded or encoded, in bytes; larger ones are refused with
    /// `OUT_OF_RANGE` (tonic's code for it) and the server carries on.
    pub max_message_bytes: usize,
    /// Page size when a listing does not say.
    pub default_page_size: u32,
    /// Largest page a listing returns; larger requests are capped.
    pub max_page_size: u32,
    /// Candidates a find returns when it does not say.
    pub default_find_limit: u32,
    /// Most candidates a find returns; larger requests are capped.
    pub max_find_limit: u32,
    /// Most unfinished tasks one `PollTasks` stream holds; larger requests are capped.
    pub max_poll_tasks: u32,
    /// Longest one poll of the worker queues waits before a `PollTasks` stream polls again.
    pub poll_wait: Duration,
    /// Longest an `Orchestrate` call with `wait` waits for its execution, deadline or not.
    pub max_wait: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_message_bytes: 4 * 1024 * 1024,
            default_page_size: 100,
            max_page_size: 1_000,
            default_find_limit: baton_core::DEFAULT_FIND_LIMIT as u32,
            max_find_limit: 1_000,
            max_poll_tasks: 64,
            poll_wait: Duration::from_secs(30),
            max_wait: Duration::from_secs(600),
        }
    }
}

/// Resolves once the server begins shutting down, so that long-lived streams (`PollTasks`,
/// `WatchExecution`) end and a graceful shutdown does not wait for clients to hang up.
#[derive(Debug, Clone)]
pub(crate) struct Stopping {
    stopped: watch::Receiver<bool>,
    /// Keeps the sender of a [`Stopping::never`] alive, so that it never fires.
    _never: Option<Arc<watch::Sender<bool>>>,
}

impl Stopping {
    /// A signal and the sender that fires it.
    pub(crate) fn channel() -> (watch::Sender<bool>, Self) {
        let (stop, stopped) = watch::channel(false);
        (stop, Self { stopped, _never: None })
    }

    /// A signal that never fires, for services built outside `Config::serve`.
    pub(crate) fn never() -> Self {
        let (stop, stopped) = watch::channel(false);
        Self { stopped, _never: Some(Arc::new(stop)) }
    }

    /// Waits until the server is stopping (or gone).
    pub(crate) async fn wait(&mut self) {
        // An error means the sender is gone with the server: stop too.
        let _ = self.stopped.wait_for(|stopped| *stopped).await;
    }
}

/// The status that ends a stream when the server shuts down.
pub(crate) fn shutting_down() -> tonic::Status {
    tonic::Status::unavailable("the server is shutting down; reconnect to carry on")
}

/// `requested` when it is within `max`, `max` when above, `default` when 0 (unset).
pub(crate) fn clamp(requested: u32, default: u32, max: u32) -> usize {
    let chosen = if requested == 0 { default } else { requested.min(max) };
    chosen as usize
}
