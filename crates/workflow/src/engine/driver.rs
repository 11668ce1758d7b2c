//! The driver of one live execution: it numbers and journals its runner's events, applies
//! them once durable, and serves pause, resume and cancel in order with them.

use std::sync::Arc;
use std::time::Duration;

use baton_core::bounds::{MAX_REASON_BYTES, cut_text, json_size, serialized_size};
use baton_core::{
    Event, EventKind, EventSink, Execution, ExecutionState, ExecutionUpdate, History, Outcome, Parked, Problem,
    Recorded, Refusal, Store, StoreError, StoreResult, Timestamp,
};
use serde_json::Value;
use tokio::sync::{mpsc, oneshot};

use super::{ChildRequest, Command, Engine, Inner, Listen, is_terminal, lock};
use crate::definition::CheckedDefinition;
use crate::error::{Error, JournalCap, Result};
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
/// The event is boxed: the channel allocates a block of slots up front for every live
/// execution, and an event is large.
struct Delivery {
    kind: Box<EventKind>,
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
        let _ = self.0.send(Delivery { kind: Box::new(event.kind), kept: None });
    }

    fn record(&self, event: Event) -> Recorded {
        let (kept, answer) = oneshot::channel();
        if self.0.send(Delivery { kind: Box::new(event.kind), kept: Some(kept) }).is_err() {
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
    /// The run's own asks (listen, child) that came while its events waited for room.
    deferred: Vec<Command>,
    /// Whether the journal holds a `Started`.
    started: bool,
    history: History,
    /// `listen` tasks waiting for signals, oldest first.
    listeners: Vec<Listen>,
    handle: Option<R::Handle>,
    pub(super) commands: Option<mpsc::UnboundedReceiver<Box<Command>>>,
    events: Option<mpsc::UnboundedReceiver<Delivery>>,
    /// What the run last said of idling: `Some((until, activity))` once it only waits.
    idle: Option<IdleReports>,
    /// The driver handed a listen its signal since the run's last idle report: the run is about
    /// to move on, and nothing would wake it once parked.
    answered: bool,
    /// Set when the driver parked the execution and stops without ending it.
    parked: bool,
    /// Set when this server no longer owns the execution (its partition went to another
    /// server, or a write was fenced): the driver stops at once, writing nothing more.
    fenced: bool,
    /// In a cluster, the partition and epoch this server owned the execution under when the
    /// driver began: a write under any other is not this driver's to make.
    owned_under: Option<(u32, i64)>,
    /// This driver's own entry in the engine's live map, to leave a successor's alone.
    pub(super) own: Option<mpsc::WeakUnboundedSender<Box<Command>>>,
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
        let owned_under = engine.inner.config.ownership.as_ref().and_then(|ownership| ownership.of(execution.id));
        Self {
            inner: Arc::clone(&engine.inner),
            execution,
            definition,
            next_sequence,
            journal_bytes: 0,
            record_stale: false,
            deferred: Vec::new(),
            started,
            history,
            listeners: Vec::new(),
            handle: None,
            commands: None,
            events: None,
            idle: None,
            answered: false,
            parked: false,
            fenced: false,
            owned_under,
            own: None,
        }
    }

    pub(super) async fn run(mut self, launch: bool) {
        if launch {
            self.launch().await;
        }
        while !self.execution.state.is_terminal() && !self.fenced {
            // What the run asked for while its events waited for room.
            if let Some(command) = (!self.deferred.is_empty()).then(|| self.deferred.remove(0)) {
                self.command(command).await;
                continue;
            }
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
                    let waiting = self.commands.as_ref().is_some_and(|commands| !commands.is_empty());
                    if !waiting && self.deferred.is_empty() && !held && self.park(idle).await {
                        break;
                    }
                }
            }
        }
        if self.fenced {
            self.leave_fenced();
            return;
        }
        if self.parked {
            lock(&self.inner.live).remove(&self.execution.id);
            // Waiters stay registered for when it is woken and ends; commands that raced with
            // the parking find it parked and wake it (their reply channel closes here).
            return;
        }
        // Listings, waiters and a parent read the record: it must say how the execution ended
        // before the driver goes.
        self.write_final_record().await;
        lock(&self.inner.live).remove(&self.execution.id);
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
        let mut commands = self.commands.take().expect("spawned with a command channel");
        // Commands that raced with the end are answered from the final state.
        commands.close();
        let ended = || Problem::runtime("the execution ended");
        for listen in self.listeners.drain(..) {
            let _ = listen.reply.send(Err(ended()));
        }
        while let Ok(command) = commands.try_recv() {
            let (reply, to) = match *command {
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
                Command::Fence => continue,
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

    /// Stops without ending the execution: it runs on at the server that owns it now. The run
    /// dispatches nothing more and what it has in flight is abandoned; commands and waiters
    /// here are dropped (their callers see the engine stopped serving it).
    fn leave_fenced(&mut self) {
        {
            let mut live = lock(&self.inner.live);
            let mine = self.own.as_ref().and_then(mpsc::WeakUnboundedSender::upgrade);
            if live.get(&self.execution.id).is_some_and(|entry| mine.is_some_and(|mine| mine.same_channel(entry))) {
                live.remove(&self.execution.id);
            }
        }
        lock(&self.inner.waiters).remove(&self.execution.id);
        if let Some(handle) = self.handle.take() {
            handle.cancel("this server no longer owns the execution");
        }
        self.inner.config.observer.fenced(self.execution.id);
    }

    fn illegal(&self, to: ExecutionState) -> Error {
        Error::InvalidTransition { execution: self.execution.id, from: self.execution.state, to }
    }

    async fn launch(&mut self) {
        // The engine journals `Started` itself, before any event of the run (they wait on the
        // channel meanwhile), so the journal always begins with it; the runner's own is dropped.
        // The run starts while `Started` is written: its first steps need only the input, which
        // is durable in the record, and no step's result is journaled, nor a dependent step
        // dispatched, before `Started` is durable.
        let started = (!self.started).then(|| EventKind::Started { input: self.execution.input.clone() });
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
                // On a failed write `record` has failed the execution already, and the driver
                // stops the run as it ends.
                if let Some(started) = started {
                    let _ = self.record_for_run(vec![started]).await;
                }
            }
            Err(reason) => {
                let error = Error::Runner { execution: self.execution.id, reason }.to_string();
                // On a failed write `record` has failed the execution already.
                let failed = EventKind::Failed { error, problem: None };
                let _ = self.record_for_run(started.into_iter().chain([failed]).collect()).await;
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
                let result = self.record(vec![EventKind::Resumed]).await.map_err(|e| self.command_error(e));
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
                let result = self
                    .record(vec![EventKind::Cancelled { reason: reason.clone() }])
                    .await
                    .map_err(|e| self.command_error(e));
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
                let result = self
                    .record(vec![EventKind::SignalReceived { name, data }])
                    .await
                    .map_err(|e| self.command_error(e));
                let _ = reply.send(result);
                self.serve_listeners().await;
            }
            Command::Listen(listen) => {
                self.listeners.push(listen);
                self.serve_listeners().await;
            }
            Command::Child(request) => self.child(request).await,
            Command::Fence => self.fenced = true,
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
            let answer = match self.record_for_run(vec![consumed]).await {
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
            Ok(child) => {
                match self.record_for_run(vec![EventKind::ChildStarted { step: request.step.clone(), child }]).await {
                    Ok(()) => Ok(child),
                    Err(error) => Err(Problem::runtime(format!("journal write failed: {error}"))),
                }
            }
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
        for Delivery { kind, kept } in batch {
            let kind = match *kind {
                // The engine journals `Started` itself; pause and resume are the engine's too:
                // journaled when asked for, not when the runner gets round to them.
                EventKind::Started { .. } | EventKind::Paused | EventKind::Resumed => {
                    answer(kept, Ok(()));
                    continue;
                }
                EventKind::TaskSucceeded { step, attempt, output, context } => {
                    let size = json_size(&output) + context.as_ref().map_or(0, json_size);
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
        let result = match self.record_for_run(kinds).await {
            Ok(()) => Ok(()),
            Err(Unrecorded::Store(error)) => Err(Refusal::Journal(error)),
            Err(Unrecorded::NoSpace { reason, .. }) => Err(Refusal::Journal(StoreError::NoSpace(reason))),
            Err(Unrecorded::Full(cap)) => {
                // The run goes no further: its journal ends with why. On a failed write `record`
                // has failed the execution already.
                let error = format!("the journal reached its cap of {cap}");
                let _ = self.record_for_run(vec![EventKind::Failed { error, problem: None }]).await;
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
            if self.fenced {
                return Err(Unrecorded::Store(not_owned()));
            }
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
                Some(Command::Signal(_, _, reply)) => (reply, ExecutionState::Running),
                // The run's own asks wait for the hold to end.
                Some(Command::Fence) => {
                    self.fenced = true;
                    return;
                }
                Some(command @ (Command::Listen(_) | Command::Child(_))) => {
                    self.deferred.push(command);
                    continue;
                }
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
                written => {
                    self.record_stale = false;
                    self.adopt_expiry(&written);
                }
            }
        }
    }

    /// Takes the expiry the store set when the record said the execution ended, so that the
    /// driver's view reads as the record does.
    fn adopt_expiry(&mut self, written: &StoreResult<Execution>) {
        if let Ok(stored) = written {
            self.execution.expires_at = stored.expires_at;
        }
    }

    async fn runner_ended(&mut self) {
        self.events = None;
        let outcome = match self.handle.take() {
            Some(handle) => handle.outcome().await,
            None => Outcome::Failed(Problem::runtime("the run ended without an outcome")),
        };
        let _ = self.record_for_run(vec![outcome.into()]).await;
    }

    /// Marks the driver fenced when this server no longer owns the execution under the epoch
    /// it began with. The engine's fence reaches the driver as a command, which may wait
    /// behind the run's events; this reads what is owned now.
    fn check_ownership(&mut self) {
        if let Some(ownership) = &self.inner.config.ownership {
            let now = ownership.of(self.execution.id);
            self.fenced |= now.is_none() || now != self.owned_under;
        }
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
        // Nothing is written once the partition is gone.
        self.check_ownership();
        if self.fenced {
            return Err(Unrecorded::Store(not_owned()));
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
            // A write that failed after the partition went elsewhere (a node cut off from its
            // database fences itself while its writes wait) is not this server's to fail.
            self.check_ownership();
            if self.fenced || matches!(error, StoreError::Fenced(_)) {
                // Another server owns the execution now: this one writes nothing more, and the
                // execution is not failed, it runs on there.
                self.fenced = true;
                return Err(Unrecorded::Store(error));
            }
            self.execution.state = ExecutionState::Failed;
            self.execution.error = Some(format!("journal write failed: {error}"));
            self.execution.updated_at = at;
            let _ = self.inner.store.update_execution(ExecutionUpdate::from(&self.execution)).await;
            return Err(Unrecorded::Store(error));
        }
        self.next_sequence += events.len() as u64;
        self.journal_bytes += sizes.iter().sum::<u64>();
        let state_before = self.execution.state;
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
        // `Started` of a record created running changes nothing the record says.
        let changes_state = events.iter().any(|e| match e.kind {
            EventKind::TaskScheduled { .. }
            | EventKind::TaskSucceeded { .. }
            | EventKind::TaskFailed { .. }
            | EventKind::TaskSkipped { .. } => false,
            EventKind::Started { .. } => self.execution.state != state_before,
            _ => true,
        });
        // Watchers hear of events once they are durable in the journal, and only this
        // execution's watchers. They need not wait for the record: it is a view of the journal
        // (recovery rebuilds it), and a `get` meanwhile asks this driver, which answers once
        // the record is written.
        let watchers = lock(&self.inner.watchers).get(&self.execution.id).cloned();
        if let Some(watchers) = watchers {
            for event in events {
                let _ = watchers.send(event);
            }
        }
        if changes_state || self.record_stale {
            let written = self.inner.store.update_execution(ExecutionUpdate::from(&self.execution)).await;
            // Without room, the record is written with a later change or when the run ends.
            self.record_stale = matches!(written, Err(StoreError::NoSpace(_)));
            self.adopt_expiry(&written);
        }
        Ok(())
    }
}

/// The error of a write a fenced driver no longer tries.
fn not_owned() -> StoreError {
    StoreError::Fenced("this server no longer owns the execution".to_owned())
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

/// `problem` with its texts cut to [`MAX_REASON_BYTES`].
fn cut_problem(mut problem: Problem) -> Problem {
    problem.detail = problem.detail.map(|detail| cut_text(detail, MAX_REASON_BYTES));
    problem.title = problem.title.map(|title| cut_text(title, MAX_REASON_BYTES));
    problem
}

impl std::fmt::Display for Unrecorded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Store(error) => error.fmt(f),
            Self::NoSpace { reason, .. } => StoreError::NoSpace(reason.clone()).fmt(f),
            Self::Full(cap) => write!(f, "the journal reached its cap of {cap}"),
        }
    }
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
                let error = format!("output of the run is {size} bytes of JSON, the limit is {max_output}");
                EventKind::Failed { problem: Some(Problem::runtime(error.clone())), error }
            } else {
                EventKind::Completed { output }
            }
        }
        EventKind::TaskFailed { step, attempt, error, retryable, problem } => {
            EventKind::TaskFailed { step, attempt, error: cut(error), retryable, problem: problem.map(cut_problem) }
        }
        EventKind::TaskSkipped { step, reason } => EventKind::TaskSkipped { step, reason: cut(reason) },
        EventKind::Cancelled { reason } => EventKind::Cancelled { reason: cut(reason) },
        EventKind::Failed { error, problem } => {
            EventKind::Failed { error: cut(error), problem: problem.map(cut_problem) }
        }
        other => other,
    }
}

/// The first wait before journal events go in again after the store had no room.
const FIRST_RETRY: Duration = Duration::from_millis(100);
/// The longest wait between tries.
const LAST_RETRY: Duration = Duration::from_secs(2);

async fn next_command(commands: &mut Option<mpsc::UnboundedReceiver<Box<Command>>>) -> Option<Command> {
    match commands {
        Some(commands) => commands.recv().await.map(|command| *command),
        None => std::future::pending().await,
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
