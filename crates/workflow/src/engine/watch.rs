//! A watcher of one execution: the journal first, then live events as they are journaled,
//! back to the journal after a gap or a lag.

use std::collections::VecDeque;
use std::sync::Arc;

use baton_core::{Event, ExecutionId, Store};
use tokio::sync::broadcast;

use super::{Inner, is_terminal};
use crate::error::Result;
use crate::runner::Runner;

/// A watcher's position: journal reads, then live events, back to the journal on a gap.
pub(super) struct Watch<S, R: Runner> {
    inner: Arc<Inner<S, R>>,
    id: ExecutionId,
    next: u64,
    buffer: VecDeque<Event>,
    receiver: broadcast::Receiver<Event>,
    done: bool,
}

impl<S: Store, R: Runner> Watch<S, R> {
    /// A watcher of execution `id` from `from_sequence` (0 or 1 for all), subscribed to live
    /// events by `receiver` before the journal is read.
    pub(super) fn new(
        inner: Arc<Inner<S, R>>,
        id: ExecutionId,
        from_sequence: u64,
        receiver: broadcast::Receiver<Event>,
    ) -> Self {
        Self { inner, id, next: from_sequence.max(1), buffer: VecDeque::new(), receiver, done: false }
    }

    pub(super) async fn next(&mut self) -> Option<Result<Event>> {
        loop {
            if self.done {
                return None;
            }
            if let Some(event) = self.buffer.pop_front() {
                if event.sequence < self.next {
                    continue;
                }
                self.next = event.sequence + 1;
                self.done = is_terminal(&event.kind);
                return Some(Ok(event));
            }
            match self.inner.store.read_journal(self.id, self.next).await {
                Err(error) => {
                    self.done = true;
                    return Some(Err(error.into()));
                }
                Ok(events) if !events.is_empty() => {
                    self.buffer.extend(events);
                    continue;
                }
                Ok(_) => {}
            }
            loop {
                match self.receiver.recv().await {
                    Ok(event) if event.execution != self.id || event.sequence < self.next => {}
                    Ok(event) if event.sequence == self.next => {
                        self.buffer.push_back(event);
                        break;
                    }
                    // A gap or a lag: the journal has what was missed.
                    Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => break,
                    Err(broadcast::error::RecvError::Closed) => return None,
                }
            }
        }
    }
}
