//! A watcher of one execution: the journal first, then live events as they are journaled,
//! back to the journal after a gap or a lag. In a cluster, a watcher of an execution another
//! server runs reads its journal every `remote_watch_poll`, from its next sequence, so it
//! follows the execution across changes of owner without a gap or a repeat.

use std::collections::VecDeque;
use std::sync::Arc;

use baton_core::{Event, ExecutionId, Store};
use tokio::sync::broadcast;

use super::{Inner, is_terminal, lock};
use crate::error::Result;
use crate::runner::Runner;

/// A watcher's position: journal reads, then live events, back to the journal on a gap.
pub(super) struct Watch<S, R: Runner> {
    inner: Arc<Inner<S, R>>,
    id: ExecutionId,
    next: u64,
    buffer: VecDeque<Event>,
    receiver: broadcast::Receiver<Event>,
    /// The journal may hold events the live channel will not bring: at the start, and after a
    /// gap or a lag. Otherwise live events follow on without a gap, and the store is not read.
    behind: bool,
    done: bool,
}

impl<S: Store, R: Runner> Watch<S, R> {
    /// A watcher of execution `id` from `from_sequence` (0 or 1 for all), subscribed to its
    /// live events now, before the journal is read.
    pub(super) fn new(inner: Arc<Inner<S, R>>, id: ExecutionId, from_sequence: u64) -> Self {
        let receiver = {
            let mut watchers = lock(&inner.watchers);
            let capacity = inner.config.watch_capacity.max(1);
            watchers.entry(id).or_insert_with(|| broadcast::channel(capacity).0).subscribe()
        };
        Self { inner, id, next: from_sequence.max(1), buffer: VecDeque::new(), receiver, behind: true, done: false }
    }

    /// Ends the watch: the execution ended before the first event asked for.
    pub(super) fn end(&mut self) {
        self.done = true;
    }

    /// Journal events read already (after subscribing), in order; those before the watch's
    /// start are skipped.
    pub(super) fn prime(&mut self, events: Vec<Event>) {
        self.buffer.extend(events);
        self.behind = false;
    }

    /// The watch's events as a stream, ending after the execution's last event.
    pub(super) fn into_stream(self) -> impl futures_util::Stream<Item = Result<Event>> + Send + 'static {
        futures_util::stream::unfold(self, |mut watch| async move {
            let item = watch.next().await?;
            Some((item, watch))
        })
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
            if self.behind {
                match self.inner.store.read_journal(self.id, self.next).await {
                    Err(error) => {
                        self.done = true;
                        return Some(Err(error.into()));
                    }
                    Ok(events) => {
                        // Everything journaled before this read is in it; everything after
                        // comes on the channel, subscribed before.
                        self.behind = false;
                        self.buffer.extend(events);
                        continue;
                    }
                }
            }
            loop {
                let received = match &self.inner.config.ownership {
                    None => self.receiver.recv().await,
                    // In a cluster the execution may run elsewhere, or move: while another
                    // server runs it nothing comes live here, and its journal has the events.
                    Some(ownership) => {
                        let poll = self.inner.config.remote_watch_poll;
                        match tokio::time::timeout(poll, self.receiver.recv()).await {
                            Ok(received) => received,
                            Err(_) if ownership.of(self.id).is_none() => {
                                self.behind = true;
                                break;
                            }
                            Err(_) => continue,
                        }
                    }
                };
                match received {
                    // The end came before the next event asked for: nothing more will come.
                    Ok(event) if event.sequence < self.next && is_terminal(&event.kind) => return None,
                    Ok(event) if event.sequence < self.next => {}
                    Ok(event) if event.sequence == self.next => {
                        self.buffer.push_back(event);
                        break;
                    }
                    // A gap or a lag: the journal has what was missed.
                    Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {
                        self.behind = true;
                        break;
                    }
                    Err(broadcast::error::RecvError::Closed) => return None,
                }
            }
        }
    }
}

impl<S, R: Runner> Drop for Watch<S, R> {
    /// The last watcher of an execution takes its channel away; its driver then sends nothing.
    fn drop(&mut self) {
        let mut watchers = lock(&self.inner.watchers);
        // Subscribing happens under this lock too, so the count cannot grow meanwhile; it
        // still includes this watcher's receiver.
        if watchers.get(&self.id).is_some_and(|sender| sender.receiver_count() <= 1) {
            watchers.remove(&self.id);
        }
    }
}
