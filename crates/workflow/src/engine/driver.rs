//! The driver of one live execution: it numbers and journals its runner's events, applies
//! them once durable, and serves pause, resume and cancel in order with them.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use baton_core::bounds::{MAX_REASON_BYTES, cut_text, json_size, serialized_size};
use baton_core::{
    Event, EventKind, EventSink, Execution, ExecutionState, ExecutionUpdate, Outcome, Recorded, Refusal, StepId, Store,
    StoreError,
};
use serde_json::Value;
use tokio::sync::{mpsc, oneshot};

use super::{Command, Engine, Inner, is_terminal, lock};
use crate::definition::CheckedDefinition;
use crate::error::{Error, JournalCap, Result};
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
    /// The journal's events so far as JSON, in bytes, for its cap.
    pub(super) journal_bytes: u64,
    /// Whether the record is behind the journal: writing it failed for lack of space.
    record_stale: bool,
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
            journal_bytes: 0,
            record_stale: false,
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
                command = next_command(&mut self.commands) => match command {
                    Some(command) => self.command(command).await,
                    None => break,
                },
            }
        }
        for waiter in lock(&self.inner.waiters).remove(&self.execution.id).unwrap_or_default() {
            let _ = waiter.send(self.execution.clone());
        }
        // Listings read the record: it must say how the execution ended before the driver goes.
        self.write_final_record().await;
        lock(&self.inner.live).remove(&self.execution.id);
        let mut commands = self.commands.take().expect("spawned with a command channel");
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
        if !self.started
            && self.record_for_run(vec![EventKind::Started { input: self.execution.input.clone() }]).await.is_err()
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
        };
        match self.inner.runner.start(request, Arc::new(ChannelSink(sender))) {
            Ok(handle) => {
                self.handle = Some(handle);
                self.events = Some(receiver);
            }
            Err(reason) => {
                let error = Error::Runner { execution: self.execution.id, reason }.to_string();
                // On a failed write `record` has failed the execution already.
                let _ = self.record_for_run(vec![EventKind::Failed { error }]).await;
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
                let result = self.record(vec![EventKind::Paused]).await.map_err(|e| self.command_error(e));
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
                let result = self.record(vec![EventKind::Resumed]).await.map_err(|e| self.command_error(e));
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
                let result = self
                    .record(vec![EventKind::Cancelled { reason: reason.clone() }])
                    .await
                    .map_err(|e| self.command_error(e));
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
                    let size = json_size(&output);
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
        let result = match self.record_for_run(kinds).await {
            Ok(()) => Ok(()),
            Err(Unrecorded::Store(error)) => Err(Refusal::Journal(error)),
            Err(Unrecorded::NoSpace { reason, .. }) => Err(Refusal::Journal(StoreError::NoSpace(reason))),
            Err(Unrecorded::Full(cap)) => {
                // The run goes no further: its journal ends with why. On a failed write `record`
                // has failed the execution already.
                let error = format!("the journal reached its cap of {cap}");
                let _ = self.record_for_run(vec![EventKind::Failed { error }]).await;
                Err(Refusal::Ended)
            }
        };
        for kept in waiting {
            answer(kept, result.clone());
        }
        if ended_by_runner {
            // The run is over on its own; nothing to cancel.
            self.handle = None;
        }
    }

    /// A failed journal write of a command as the command's error. A command is not waited
    /// for: a full disk is its answer, and the execution carries on as it was.
    fn command_error(&self, error: Unrecorded) -> Error {
        match error {
            Unrecorded::Store(error) => Error::Store(error),
            Unrecorded::NoSpace { reason, .. } => Error::Store(StoreError::NoSpace(reason)),
            Unrecorded::Full(cap) => Error::JournalFull { execution: self.execution.id, cap },
        }
    }

    /// Journals the run's `kinds`, waiting out a store that has no room for them (a full disk)
    /// for as long as it takes: the run waits for its events, and commands meanwhile are
    /// answered that the journal cannot take them. Once the disk has room, the run goes on.
    async fn record_for_run(&mut self, mut kinds: Vec<EventKind>) -> Result<(), Unrecorded> {
        let mut wait = FIRST_RETRY;
        loop {
            match self.record(kinds).await {
                Err(Unrecorded::NoSpace { reason, kinds: unwritten }) => {
                    self.hold(wait, &reason).await;
                    wait = (wait * 2).min(LAST_RETRY);
                    kinds = unwritten;
                }
                other => return other,
            }
        }
    }

    /// Waits `wait`, answering commands meanwhile: snapshots as ever; changes, which need the
    /// journal, that it has no room (`reason`), or that an ended execution cannot change.
    async fn hold(&mut self, wait: Duration, reason: &str) {
        let sleep = tokio::time::sleep(wait);
        tokio::pin!(sleep);
        loop {
            let command = tokio::select! {
                () = &mut sleep => return,
                command = next_command(&mut self.commands) => command,
            };
            let (reply, to) = match command {
                None => {
                    // The engine is gone: nothing will ask again.
                    (&mut sleep).await;
                    return;
                }
                Some(Command::Snapshot(reply)) => {
                    let _ = reply.send(self.execution.clone());
                    continue;
                }
                Some(Command::Pause(reply)) => (reply, ExecutionState::Paused),
                Some(Command::Resume(reply)) => (reply, ExecutionState::Running),
                Some(Command::Cancel(_, reply)) => (reply, ExecutionState::Cancelled),
            };
            let refusal = if self.execution.state.is_terminal() {
                self.illegal(to)
            } else {
                Error::Store(StoreError::NoSpace(reason.to_owned()))
            };
            let _ = reply.send(Err(refusal));
        }
    }

    /// Writes the record of an ended execution, when writing it on the way failed for lack of
    /// space, retrying until there is room; on any other failure recovery rebuilds it from the
    /// journal on the next open.
    async fn write_final_record(&mut self) {
        let mut wait = FIRST_RETRY;
        while self.record_stale {
            match self.inner.store.update_execution(ExecutionUpdate::from(&self.execution)).await {
                Err(StoreError::NoSpace(reason)) => {
                    self.hold(wait, &reason).await;
                    wait = (wait * 2).min(LAST_RETRY);
                }
                _ => self.record_stale = false,
            }
        }
    }

    async fn runner_ended(&mut self) {
        self.events = None;
        let outcome = match self.handle.take() {
            Some(handle) => handle.outcome().await,
            None => Outcome::Failed("the run ended without an outcome".to_owned()),
        };
        let _ = self.record_for_run(vec![outcome.into()]).await;
    }

    /// Journals `kinds`, then applies them, updates the record and tells watchers. Events that
    /// would take the journal past a cap are not written ([`Unrecorded::Full`]); an event that
    /// ends the execution always is. When the journal cannot be written the execution is
    /// failed in memory and, as far as the store lets, in its record; recovery sorts out the
    /// rest on the next open.
    async fn record(&mut self, kinds: Vec<EventKind>) -> Result<(), Unrecorded> {
        if kinds.is_empty() {
            return Ok(());
        }
        let at = self.inner.config.clock.now();
        let max_output = self.inner.config.max_output_bytes;
        let events: Vec<Event> = kinds
            .into_iter()
            .enumerate()
            .map(|(i, kind)| Event {
                execution: self.execution.id,
                sequence: self.next_sequence + i as u64,
                at,
                kind: bounded(kind, max_output),
            })
            .collect();
        let sizes: Vec<u64> = events.iter().map(|e| event_size(&e.kind)).collect();
        let capped = events.iter().zip(&sizes).filter(|(e, _)| !is_terminal(&e.kind));
        let (count, bytes) = capped.fold((0, 0), |(count, bytes), (_, size)| (count + 1, bytes + size));
        let config = &self.inner.config;
        if self.next_sequence - 1 + count > config.max_journal_events {
            return Err(Unrecorded::Full(JournalCap::Events(config.max_journal_events)));
        }
        if self.journal_bytes + bytes > config.max_journal_bytes {
            return Err(Unrecorded::Full(JournalCap::Bytes(config.max_journal_bytes)));
        }
        if let Err(error) = self.inner.store.append(events.clone()).await {
            if let StoreError::NoSpace(reason) = error {
                // Nothing was written: the execution is as it was, and the same events can go
                // in once there is room.
                return Err(Unrecorded::NoSpace { reason, kinds: events.into_iter().map(|e| e.kind).collect() });
            }
            self.execution.state = ExecutionState::Failed;
            self.execution.error = Some(format!("journal write failed: {error}"));
            self.execution.updated_at = at;
            let _ = self.inner.store.update_execution(ExecutionUpdate::from(&self.execution)).await;
            return Err(Unrecorded::Store(error));
        }
        self.next_sequence += events.len() as u64;
        self.journal_bytes += sizes.iter().sum::<u64>();
        for event in &events {
            self.started |= matches!(event.kind, EventKind::Started { .. });
            // The engine only journals legal changes; an illegal one would be a bug, and the
            // journal stays the truth for recovery.
            let _ = apply(&mut self.execution, &mut self.completed, event);
        }
        self.inner.config.observer.journaled(&self.execution.workflow, &events);
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
        if changes_state || self.record_stale {
            let written = self.inner.store.update_execution(ExecutionUpdate::from(&self.execution)).await;
            // Without room, the record is written with a later change or when the run ends.
            self.record_stale = matches!(written, Err(StoreError::NoSpace(_)));
        }
        for event in events {
            let _ = self.inner.events.send(event);
        }
        Ok(())
    }
}

/// Why [`Driver::record`] wrote nothing.
pub(super) enum Unrecorded {
    /// The store failed.
    Store(StoreError),
    /// The store had no room (a full disk); nothing was written, and these are the events to
    /// write again.
    NoSpace {
        /// What the store said.
        reason: String,
        /// The events, as they would have been journaled.
        kinds: Vec<EventKind>,
    },
    /// The events would take the journal past this cap.
    Full(JournalCap),
}

/// The size of an event in the journal's terms: its kind as JSON, in bytes.
pub(super) fn event_size(kind: &EventKind) -> u64 {
    serialized_size(kind) as u64
}

/// What the journal keeps of `kind`, so that every event and the execution it builds can be
/// read back: error texts (from services, workers, the runner) cut to
/// [`MAX_REASON_BYTES`], and a run output over `max_output` as the failure it is. (Step
/// outputs over the bound are refused before this, inputs and cancel reasons at the door.)
fn bounded(kind: EventKind, max_output: usize) -> EventKind {
    let cut = |text| cut_text(text, MAX_REASON_BYTES);
    match kind {
        EventKind::Completed { output } => {
            let size = json_size(&output);
            if size > max_output {
                EventKind::Failed {
                    error: format!("output of the run is {size} bytes of JSON, the limit is {max_output}"),
                }
            } else {
                EventKind::Completed { output }
            }
        }
        EventKind::TaskFailed { step, attempt, error, retryable } => {
            EventKind::TaskFailed { step, attempt, error: cut(error), retryable }
        }
        EventKind::TaskSkipped { step, reason } => EventKind::TaskSkipped { step, reason: cut(reason) },
        EventKind::Cancelled { reason } => EventKind::Cancelled { reason: cut(reason) },
        EventKind::Failed { error } => EventKind::Failed { error: cut(error) },
        other => other,
    }
}

/// The first wait before journal events go in again after the store had no room.
const FIRST_RETRY: Duration = Duration::from_millis(100);
/// The longest wait between tries.
const LAST_RETRY: Duration = Duration::from_secs(2);

async fn next_command(commands: &mut Option<mpsc::UnboundedReceiver<Command>>) -> Option<Command> {
    match commands {
        Some(commands) => commands.recv().await,
        None => std::future::pending().await,
    }
}

async fn next_event(events: &mut Option<mpsc::UnboundedReceiver<Delivery>>) -> Option<Delivery> {
    match events {
        Some(events) => events.recv().await,
        None => std::future::pending().await,
    }
}
