//! The driver of one live execution: it numbers and journals its runner's events, applies
//! them once durable, and serves pause, resume and cancel in order with them.

use std::collections::BTreeMap;
use std::sync::Arc;

use baton_core::{
    Event, EventKind, EventSink, Execution, ExecutionState, ExecutionUpdate, Outcome, Recorded, Refusal, StepId, Store,
    StoreError,
};
use serde_json::Value;
use tokio::sync::{mpsc, oneshot};

use super::{Command, Engine, Inner, is_terminal, lock};
use crate::definition::CheckedDefinition;
use crate::error::{Error, Result};
use crate::runner::{RunHandle, RunRequest, Runner};

/// Applies one journal event to an execution ([`Execution::apply`], core's one replay rule)
/// and keeps a succeeded step's output for the runner.
pub(super) fn apply(
    execution: &mut Execution,
    completed: &mut BTreeMap<StepId, Value>,
    event: &Event,
) -> std::result::Result<(), baton_core::Error> {
    execution.apply(event)?;
    if let EventKind::TaskSucceeded { step, output, .. } = &event.kind {
        completed.insert(step.clone(), output.clone());
    }
    Ok(())
}

/// A runner's event on its way to the driver, with where to answer when the runner waits
/// for it to be journaled.
struct Delivery {
    event: Event,
    kept: Option<oneshot::Sender<Result<(), Refusal>>>,
}

/// Tells a waiting runner whether its event was journaled.
fn answer(kept: Option<oneshot::Sender<Result<(), Refusal>>>, answer: Result<(), Refusal>) {
    if let Some(kept) = kept {
        // A runner that stopped waiting has moved on; nothing to tell it.
        let _ = kept.send(answer);
    }
}

/// Hands a run's events to its driver.
struct ChannelSink(mpsc::UnboundedSender<Delivery>);

impl EventSink<Event> for ChannelSink {
    fn publish(&self, event: Event) {
        // A closed channel means the driver is done with the execution; later events are moot.
        let _ = self.0.send(Delivery { event, kept: None });
    }

    fn record(&self, event: Event) -> Recorded {
        let (kept, answer) = oneshot::channel();
        if self.0.send(Delivery { event, kept: Some(kept) }).is_err() {
            return Recorded::refused(Refusal::Ended);
        }
        Recorded::later(async move { answer.await.unwrap_or(Err(Refusal::EndedBeforeJournaled)) })
    }
}

/// The most runner events journaled in one append.
const MAX_BATCH: usize = 256;

/// Owns one live execution: journals its runner's events (numbering them), applies them, and
/// serves pause, resume and cancel in order with them.
pub(super) struct Driver<S, R: Runner> {
    inner: Arc<Inner<S, R>>,
    pub(super) execution: Execution,
    definition: Arc<CheckedDefinition>,
    next_sequence: u64,
    /// Whether the journal holds a `Started`.
    started: bool,
    completed: BTreeMap<StepId, Value>,
    handle: Option<R::Handle>,
    pub(super) commands: Option<mpsc::UnboundedReceiver<Command>>,
    events: Option<mpsc::UnboundedReceiver<Delivery>>,
}

impl<S: Store, R: Runner> Driver<S, R> {
    pub(super) fn new(
        engine: &Engine<S, R>,
        execution: Execution,
        definition: Arc<CheckedDefinition>,
        next_sequence: u64,
        started: bool,
        completed: BTreeMap<StepId, Value>,
    ) -> Self {
        Self {
            inner: Arc::clone(&engine.inner),
            execution,
            definition,
            next_sequence,
            started,
            completed,
            handle: None,
            commands: None,
            events: None,
        }
    }

    pub(super) async fn run(mut self, launch: bool) {
        if launch {
            self.launch().await;
        }
        let mut commands = self.commands.take().expect("spawned with a command channel");
        while !self.execution.state.is_terminal() {
            tokio::select! {
                // Events first: what the run did before a command arrived is journaled before it.
                biased;
                event = next_event(&mut self.events) => match event {
                    Some(first) => {
                        let mut batch = vec![first];
                        if let Some(events) = &mut self.events {
                            while batch.len() < MAX_BATCH && let Ok(event) = events.try_recv() {
                                batch.push(event);
                            }
                        }
                        self.runner_events(batch).await;
                    }
                    None => self.runner_ended().await,
                },
                command = commands.recv() => match command {
                    Some(command) => self.command(command).await,
                    None => break,
                },
            }
        }
        lock(&self.inner.live).remove(&self.execution.id);
        for waiter in lock(&self.inner.waiters).remove(&self.execution.id).unwrap_or_default() {
            let _ = waiter.send(self.execution.clone());
        }
        // Commands that raced with the end are answered from the final state.
        commands.close();
        while let Ok(command) = commands.try_recv() {
            let (reply, to) = match command {
                Command::Pause(reply) => (reply, ExecutionState::Paused),
                Command::Resume(reply) => (reply, ExecutionState::Running),
                Command::Cancel(_, reply) => (reply, ExecutionState::Cancelled),
                Command::Snapshot(reply) => {
                    let _ = reply.send(self.execution.clone());
                    continue;
                }
            };
            let _ = reply.send(Err(self.illegal(to)));
        }
        if let Some(handle) = self.handle.take() {
            // Ended by the engine (cancel, an oversized output, a failed write): stop the run.
            handle.cancel("the execution ended");
        }
    }

    fn illegal(&self, to: ExecutionState) -> Error {
        Error::InvalidTransition { execution: self.execution.id, from: self.execution.state, to }
    }

    async fn launch(&mut self) {
        // The engine journals `Started` itself, before the run can report anything, so the
        // journal always begins with it; the runner's own is dropped.
        if !self.started && self.record(vec![EventKind::Started { input: self.execution.input.clone() }]).await.is_err()
        {
            return;
        }
        let (sender, receiver) = mpsc::unbounded_channel();
        let request = RunRequest {
            execution: self.execution.id,
            version: self.execution.version,
            definition: Arc::clone(&self.definition),
            input: self.execution.input.clone(),
            completed: self.completed.clone(),
            trace: self.execution.trace.clone(),
        };
        match self.inner.runner.start(request, Arc::new(ChannelSink(sender))) {
            Ok(handle) => {
                self.handle = Some(handle);
                self.events = Some(receiver);
            }
            Err(reason) => {
                let error = Error::Runner { execution: self.execution.id, reason }.to_string();
                // On a failed write `record` has failed the execution already.
                let _ = self.record(vec![EventKind::Failed { error }]).await;
            }
        }
    }

    async fn command(&mut self, command: Command) {
        let state = self.execution.state;
        match command {
            Command::Snapshot(reply) => {
                let _ = reply.send(self.execution.clone());
            }
            Command::Pause(reply) => {
                if state != ExecutionState::Running {
                    let _ = reply.send(Err(self.illegal(ExecutionState::Paused)));
                    return;
                }
                let result = self.record(vec![EventKind::Paused]).await.map_err(Error::from);
                if result.is_ok()
                    && let Some(handle) = &self.handle
                {
                    handle.pause();
                }
                let _ = reply.send(result);
            }
            Command::Resume(reply) => {
                if state != ExecutionState::Paused {
                    let _ = reply.send(Err(self.illegal(ExecutionState::Running)));
                    return;
                }
                let result = self.record(vec![EventKind::Resumed]).await.map_err(Error::from);
                if result.is_ok() {
                    match &self.handle {
                        Some(handle) => handle.resume(),
                        // Recovered paused: nothing runs yet.
                        None => self.launch().await,
                    }
                }
                let _ = reply.send(result);
            }
            Command::Cancel(reason, reply) => {
                if !matches!(state, ExecutionState::Running | ExecutionState::Paused) {
                    let _ = reply.send(Err(self.illegal(ExecutionState::Cancelled)));
                    return;
                }
                let result =
                    self.record(vec![EventKind::Cancelled { reason: reason.clone() }]).await.map_err(Error::from);
                if let Some(handle) = self.handle.take() {
                    handle.cancel(&reason);
                }
                let _ = reply.send(result);
            }
        }
    }

    async fn runner_events(&mut self, batch: Vec<Delivery>) {
        let limit = self.inner.config.max_output_bytes;
        let mut kinds = Vec::with_capacity(batch.len());
        let mut waiting = Vec::new();
        let mut ended_by_runner = false;
        for Delivery { event, kept } in batch {
            let kind = match event.kind {
                // The engine journals `Started` itself; pause and resume are the engine's too:
                // journaled when asked for, not when the runner gets round to them.
                EventKind::Started { .. } | EventKind::Paused | EventKind::Resumed => {
                    answer(kept, Ok(()));
                    continue;
                }
                EventKind::TaskSucceeded { step, attempt, output } => {
                    let size = serde_json::to_vec(&output).map_or(usize::MAX, |text| text.len());
                    if size > limit {
                        let refusal = Refusal::OutputTooLarge { step: step.clone(), size, limit };
                        if kept.is_some() {
                            // The runner waits for this answer before releasing dependants: it
                            // fails the step itself, under the step's error policy.
                            answer(kept, Err(refusal));
                            continue;
                        }
                        // A runner that does not wait has dispatched dependants already: the
                        // whole execution fails.
                        let error = refusal.to_string();
                        kinds.push(EventKind::TaskFailed {
                            step: step.clone(),
                            attempt,
                            error: error.clone(),
                            retryable: false,
                        });
                        kinds.push(EventKind::Failed { error: format!("step {step:?} failed: {error}") });
                        break;
                    }
                    EventKind::TaskSucceeded { step, attempt, output }
                }
                kind => kind,
            };
            let end = is_terminal(&kind);
            kinds.push(kind);
            waiting.push(kept);
            if end {
                ended_by_runner = true;
                break;
            }
        }
        let result = if kinds.is_empty() { Ok(()) } else { self.record(kinds).await.map_err(Refusal::Journal) };
        for kept in waiting {
            answer(kept, result.clone());
        }
        if ended_by_runner {
            // The run is over on its own; nothing to cancel.
            self.handle = None;
        }
    }

    async fn runner_ended(&mut self) {
        self.events = None;
        let outcome = match self.handle.take() {
            Some(handle) => handle.outcome().await,
            None => Outcome::Failed("the run ended without an outcome".to_owned()),
        };
        let _ = self.record(vec![outcome.into()]).await;
    }

    /// Journals `kinds`, then applies them, updates the record and tells watchers. When the
    /// journal cannot be written the execution is failed in memory and, as far as the store
    /// lets, in its record; recovery sorts out the rest on the next open.
    async fn record(&mut self, kinds: Vec<EventKind>) -> Result<(), StoreError> {
        let at = self.inner.config.clock.now();
        let events: Vec<Event> = kinds
            .into_iter()
            .enumerate()
            .map(|(i, kind)| Event { execution: self.execution.id, sequence: self.next_sequence + i as u64, at, kind })
            .collect();
        if let Err(error) = self.inner.store.append(events.clone()).await {
            self.execution.state = ExecutionState::Failed;
            self.execution.error = Some(format!("journal write failed: {error}"));
            self.execution.updated_at = at;
            let _ = self.inner.store.update_execution(ExecutionUpdate::from(&self.execution)).await;
            return Err(error);
        }
        self.next_sequence += events.len() as u64;
        for event in &events {
            self.started |= matches!(event.kind, EventKind::Started { .. });
            // The engine only journals legal changes; an illegal one would be a bug, and the
            // journal stays the truth for recovery.
            let _ = apply(&mut self.execution, &mut self.completed, event);
        }
        self.inner.config.observer.journaled(&self.execution, &events);
        // The record is a view of the journal, written when the state changes: listings filter
        // on it. Step progress in between is the driver's to tell (`get` asks it), so a step
        // costs one durable write, not two. When the record cannot be written, recovery
        // rebuilds it from the journal.
        let changes_state = events.iter().any(|e| {
            !matches!(
                e.kind,
                EventKind::TaskScheduled { .. }
                    | EventKind::TaskSucceeded { .. }
                    | EventKind::TaskFailed { .. }
                    | EventKind::TaskSkipped { .. }
            )
        });
        if changes_state {
            let _ = self.inner.store.update_execution(ExecutionUpdate::from(&self.execution)).await;
        }
        for event in events {
            let _ = self.inner.events.send(event);
        }
        Ok(())
    }
}

async fn next_event(events: &mut Option<mpsc::UnboundedReceiver<Delivery>>) -> Option<Delivery> {
    match events {
        Some(events) => events.recv().await,
        None => std::future::pending().await,
    }
}
