//! The driver of one live execution: it numbers and journals its runner's events, applies
//! them once durable, and serves pause, resume and cancel in order with them.

use std::sync::Arc;

use baton_core::{
    Event, EventKind, EventSink, Execution, ExecutionState, ExecutionUpdate, History, Outcome, Parked, Problem,
    Recorded, Refusal, Store, StoreError, Timestamp,
};
use serde_json::Value;
use tokio::sync::{mpsc, oneshot};

use super::{ChildRequest, Command, Engine, Inner, Listen, is_terminal, lock};
use crate::definition::CheckedDefinition;
use crate::error::{Error, Result};
use crate::runner::{IdleSignal, RunHandle, RunRequest, Runner};

/// Applies one journal event to an execution ([`Execution::apply`], core's one replay rule)
/// and to the history a resumed run starts from.
pub(super) fn apply(
    execution: &mut Execution,
    history: &mut History,
    event: &Event,
) -> std::result::Result<(), baton_core::Error> {
    execution.apply(event)?;
    history.apply(event);
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
    history: History,
    /// `listen` tasks waiting for signals, oldest first.
    listeners: Vec<Listen>,
    handle: Option<R::Handle>,
    pub(super) commands: Option<mpsc::UnboundedReceiver<Command>>,
    events: Option<mpsc::UnboundedReceiver<Delivery>>,
    /// What the run last said of idling: `Some((until, activity))` once it only waits.
    idle: Option<IdleReports>,
    /// The driver handed a listen its signal since the run's last idle report: the run is about
    /// to move on, and nothing would wake it once parked.
    answered: bool,
    /// Set when the driver parked the execution and stops without ending it.
    parked: bool,
}

impl<S: Store, R: Runner> Driver<S, R> {
    pub(super) fn new(
        engine: &Engine<S, R>,
        execution: Execution,
        definition: Arc<CheckedDefinition>,
        next_sequence: u64,
        started: bool,
        history: History,
    ) -> Self {
        Self {
            inner: Arc::clone(&engine.inner),
            execution,
            definition,
            next_sequence,
            started,
            history,
            listeners: Vec::new(),
            handle: None,
            commands: None,
            events: None,
            idle: None,
            answered: false,
            parked: false,
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
                    Some(command) => {
                        // The run's own asks (listen, child) are not what a wake was for.
                        let external = !matches!(command, Command::Listen(_) | Command::Child(_));
                        self.command(command).await;
                        if external {
                            lock(&self.inner.holds).remove(&self.execution.id);
                        }
                    }
                    None => break,
                },
                idle = next_idle(&mut self.idle) => {
                    // A command waiting to be served, or one it was woken for, means the execution
                    // is wanted now.
                    let held = lock(&self.inner.holds).contains(&self.execution.id);
                    if commands.is_empty() && !held && self.park(idle).await {
                        break;
                    }
                }
            }
        }
        lock(&self.inner.live).remove(&self.execution.id);
        if self.parked {
            // Waiters stay registered for when it is woken and ends; commands that raced with
            // the parking find it parked and wake it (their reply channel closes here).
            return;
        }
        for waiter in lock(&self.inner.waiters).remove(&self.execution.id).unwrap_or_default() {
            let _ = waiter.send(self.execution.clone());
        }
        // A parent waiting for this child may be parked: its run picks the result up again.
        if let Some(parent) = &self.execution.parent {
            let (engine, parent) = (Engine { inner: Arc::clone(&self.inner) }, parent.execution);
            tokio::spawn(async move {
                let _ = engine.wake(parent).await;
            });
        }
        // Commands that raced with the end are answered from the final state.
        commands.close();
        let ended = || Problem::runtime("the execution ended");
        for listen in self.listeners.drain(..) {
            let _ = listen.reply.send(Err(ended()));
        }
        while let Ok(command) = commands.try_recv() {
            let (reply, to) = match command {
                Command::Pause(reply) => (reply, ExecutionState::Paused),
                Command::Resume(reply) => (reply, ExecutionState::Running),
                Command::Cancel(_, reply) => (reply, ExecutionState::Cancelled),
                Command::Signal(_, _, reply) => (reply, ExecutionState::Running),
                Command::Snapshot(reply) => {
                    let _ = reply.send(self.execution.clone());
                    continue;
                }
                Command::Listen(listen) => {
                    let _ = listen.reply.send(Err(ended()));
                    continue;
                }
                Command::Child(request) => {
                    let _ = request.reply.send(Err(ended()));
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
        let (idle, idle_receiver) = tokio::sync::watch::channel(None);
        let idle = IdleSignal(Arc::new(move |until, activity| {
            let _ = idle.send(Some((until, activity)));
        }));
        self.idle = Some(idle_receiver);
        let request = RunRequest {
            idle,
            execution: self.execution.id,
            version: self.execution.version,
            definition: Arc::clone(&self.definition),
            input: self.execution.input.clone(),
            history: self.history.clone(),
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
                let _ = self.record(vec![EventKind::Failed { error, problem: None }]).await;
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
                if result.is_ok() {
                    self.each_child(|engine, child| async move {
                        let _ = engine.pause(child).await;
                    });
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
                    self.each_child(|engine, child| async move {
                        let _ = engine.resume(child).await;
                    });
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
                if result.is_ok() {
                    self.each_child(|engine, child| async move {
                        let _ = engine.cancel(child, "its parent was cancelled").await;
                    });
                }
                let _ = reply.send(result);
            }
            Command::Signal(name, data, reply) => {
                if !matches!(state, ExecutionState::Running | ExecutionState::Paused) {
                    let _ = reply.send(Err(self.illegal(ExecutionState::Running)));
                    return;
                }
                let limit = self.inner.config.max_pending_signals;
                if self.history.signals.len() >= limit {
                    let reason = format!("it holds {limit} signals no listen consumed, the limit");
                    let _ = reply.send(Err(baton_core::Error::invalid("name", &name, reason).into()));
                    return;
                }
                let result = self.record(vec![EventKind::SignalReceived { name, data }]).await.map_err(Error::from);
                let _ = reply.send(result);
                self.serve_listeners().await;
            }
            Command::Listen(listen) => {
                self.listeners.push(listen);
                self.serve_listeners().await;
            }
            Command::Child(request) => self.child(request).await,
        }
    }

    /// Parks the execution when its run only waits, for a signal, a child or a timer due later
    /// than the engine's `park_after`, and nothing happened since it said so: the run stops
    /// without an outcome, the record says until when, and the driver ends. True when parked.
    async fn park(&mut self, (until, mark): (Option<Timestamp>, u64)) -> bool {
        let answered = std::mem::take(&mut self.answered);
        let Some(after) = self.inner.config.park_after else { return false };
        if answered || self.execution.state != ExecutionState::Running {
            return false;
        }
        // Something the run handed over since it said it only waits: it does not any more.
        if self.events.as_ref().is_some_and(|events| !events.is_empty()) {
            return false;
        }
        let now = self.inner.config.clock.now();
        if let Some(until) = until
            && (until - now).to_std().unwrap_or_default() < after
        {
            return false;
        }
        // A child that has ended already wakes the run as soon as it is parked: parking would
        // only load it again, and again, while its wait for the child settles.
        for (step, child) in &self.history.children {
            if !self.history.settled.contains_key(step)
                && self.inner.store.get_execution(*child).await.is_ok_and(|c| c.state.is_terminal())
            {
                return false;
            }
        }
        let Some(handle) = self.handle.as_mut() else { return false };
        if !handle.suspend_if_idle(mark).await {
            return false;
        }
        self.handle = None;
        // What the run handed over as it stopped is not journaled: it happens again when the
        // execution runs again, from the journal.
        if let Some(mut events) = self.events.take() {
            events.close();
            while let Ok(delivery) = events.try_recv() {
                answer(delivery.kept, Err(Refusal::Ended));
            }
        }
        self.idle = None;
        self.listeners.clear();
        self.execution.parked = Some(Parked { until });
        match self.inner.store.update_execution(ExecutionUpdate::from(&self.execution)).await {
            Ok(_) => {
                self.parked = true;
                // A child that ended before the record said parked found this execution live
                // and woke nothing: look once more, now that a child's end finds it parked.
                let children: Vec<_> = self.history.children.values().copied().collect();
                if !children.is_empty() {
                    let (engine, id) = (Engine { inner: Arc::clone(&self.inner) }, self.execution.id);
                    tokio::spawn(async move {
                        for child in children {
                            let store = &engine.inner.store;
                            if store.get_execution(child).await.is_ok_and(|c| c.state.is_terminal()) {
                                let _ = engine.wake(id).await;
                                return;
                            }
                        }
                    });
                }
                true
            }
            Err(_) => {
                // Not parked after all: run on.
                self.execution.parked = None;
                self.launch().await;
                false
            }
        }
    }

    /// Hands pending signals to waiting `listen` tasks, oldest first, each signal once.
    async fn serve_listeners(&mut self) {
        let mut i = 0;
        while i < self.listeners.len() {
            let listen = &self.listeners[i];
            let Some(signals) = self.history.matching_signals(&listen.names, listen.all) else {
                i += 1;
                continue;
            };
            let sequences: Vec<u64> = signals.iter().map(|s| s.sequence).collect();
            let output = if listen.all {
                Value::Array(signals.iter().map(|s| s.data.clone()).collect())
            } else {
                signals[0].data.clone()
            };
            let listen = self.listeners.remove(i);
            let consumed =
                EventKind::SignalConsumed { step: listen.step.clone(), signals: sequences, output: output.clone() };
            let answer = match self.record(vec![consumed]).await {
                Ok(()) => Ok(output),
                Err(error) => Err(Problem::runtime(format!("journal write failed: {error}"))),
            };
            let _ = listen.reply.send(answer);
            self.answered = true;
        }
    }

    /// Starts a `workflow` task's child once (a repeat finds it in the history) and journals it.
    async fn child(&mut self, request: ChildRequest) {
        if let Some(child) = self.history.children.get(&request.step) {
            let _ = request.reply.send(Ok(*child));
            return;
        }
        let engine = Engine { inner: Arc::clone(&self.inner) };
        let answer = match engine.start_child(&self.execution, &request).await {
            Ok(child) => match self.record(vec![EventKind::ChildStarted { step: request.step.clone(), child }]).await {
                Ok(()) => Ok(child),
                Err(error) => Err(Problem::runtime(format!("journal write failed: {error}"))),
            },
            Err(problem) => Err(problem),
        };
        let _ = request.reply.send(answer);
    }

    /// Runs `act` on every child this execution started, in the background: pause, resume
    /// and cancel reach them without holding this driver up.
    fn each_child<F, Fut>(&self, act: F)
    where
        F: Fn(Engine<S, R>, baton_core::ExecutionId) -> Fut,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        for child in self.history.children.values() {
            tokio::spawn(act(Engine { inner: Arc::clone(&self.inner) }, *child));
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
                EventKind::TaskSucceeded { step, attempt, output, context } => {
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
                            problem: None,
                        });
                        kinds
                            .push(EventKind::Failed { error: format!("step {step:?} failed: {error}"), problem: None });
                        break;
                    }
                    EventKind::TaskSucceeded { step, attempt, output, context }
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
            None => Outcome::Failed(Problem::runtime("the run ended without an outcome")),
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
            let _ = apply(&mut self.execution, &mut self.history, event);
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

/// A run's reports of idling: `Some((earliest timer, activity count))` once it only waits.
type IdleReports = tokio::sync::watch::Receiver<Option<(Option<Timestamp>, u64)>>;

/// The run's next report of idling: the time its earliest timer fires (if any) and its activity
/// count. Pending while nothing runs.
async fn next_idle(idle: &mut Option<IdleReports>) -> (Option<Timestamp>, u64) {
    let Some(receiver) = idle else { return std::future::pending().await };
    loop {
        if receiver.changed().await.is_err() {
            return std::future::pending().await;
        }
        if let Some(report) = *receiver.borrow_and_update() {
            return report;
        }
    }
}

async fn next_event(events: &mut Option<mpsc::UnboundedReceiver<Delivery>>) -> Option<Delivery> {
    match events {
        Some(events) => events.recv().await,
        None => std::future::pending().await,
    }
}
