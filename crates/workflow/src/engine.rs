//! The engine: definitions through the store, executions through the runner, every event
//! journaled before the engine acts on it, recovery on open.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use baton_core::{
    Clock, Event, EventKind, EventSink, Execution, ExecutionFilter, ExecutionId, ExecutionPage, ExecutionState,
    ExecutionUpdate, IdempotencyKey, NewDefinition, PageRequest, Recorded, StepId, Store, StoredDefinition,
    SystemClock, TaskState, TaskStatus, TraceContext, WorkflowName,
};
use futures_util::Stream;
use serde_json::Value;
use tokio::sync::{broadcast, mpsc, oneshot};

use crate::definition::CheckedDefinition;
use crate::error::{Error, Result};
use crate::runner::{Outcome, RunHandle, RunRequest, Runner};

/// The largest step output accepted by default: 1 MiB of JSON text.
pub const DEFAULT_MAX_OUTPUT_BYTES: usize = 1024 * 1024;

/// How an [`Engine`] runs.
#[derive(Debug, Clone)]
pub struct Config {
    /// The largest step output, as JSON text; a bigger one fails its step and the execution.
    pub max_output_bytes: usize,
    /// Events buffered for live watchers; a watcher that falls further behind reads the
    /// journal instead.
    pub watch_capacity: usize,
    /// Time for records and events.
    pub clock: Arc<dyn Clock>,
    /// Told of every batch of events once it is journaled (metrics, audit).
    pub observer: Arc<dyn Observer>,
}

/// Sees every batch of events right after it is journaled, in journal order per execution.
/// Called on the execution's driver task: it must be quick and must not block.
pub trait Observer: Send + Sync + std::fmt::Debug + 'static {
    /// `events` of `execution` are durable; `execution` is the driver's view with them applied
    /// (its workflow, version and caller's trace context do not change).
    fn journaled(&self, execution: &Execution, events: &[Event]);
}

/// An [`Observer`] that looks away.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoObserver;

impl Observer for NoObserver {
    fn journaled(&self, _execution: &Execution, _events: &[Event]) {}
}

impl Default for Config {
    fn default() -> Self {
        Self {
            max_output_bytes: DEFAULT_MAX_OUTPUT_BYTES,
            watch_capacity: 4096,
            clock: Arc::new(SystemClock),
            observer: Arc::new(NoObserver),
        }
    }
}

/// What [`Engine::apply`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applied {
    /// The workflow.
    pub name: WorkflowName,
    /// The version holding the content.
    pub version: u32,
    /// False when the latest version already had this content.
    pub created: bool,
}

/// What recovery did when the engine opened.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Recovery {
    /// Running executions handed back to the runner.
    pub resumed: Vec<ExecutionId>,
    /// Paused executions, left paused.
    pub paused: Vec<ExecutionId>,
    /// Executions whose journal already ended; their records were brought up to date.
    pub finished: Vec<ExecutionId>,
    /// Executions that could not be recovered, marked failed, with the reason.
    pub failed: Vec<(ExecutionId, String)>,
}

/// The workflow engine: a cheap-to-clone handle.
pub struct Engine<S, R: Runner> {
    inner: Arc<Inner<S, R>>,
}

impl<S, R: Runner> Clone for Engine<S, R> {
    fn clone(&self) -> Self {
        Self { inner: Arc::clone(&self.inner) }
    }
}

impl<S, R: Runner> std::fmt::Debug for Engine<S, R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine").field("live", &lock(&self.inner.live).len()).finish_non_exhaustive()
    }
}

struct Inner<S, R: Runner> {
    config: Config,
    store: S,
    runner: R,
    /// Drivers of the executions this engine runs, by execution.
    live: Mutex<HashMap<ExecutionId, mpsc::UnboundedSender<Command>>>,
    definitions: Mutex<HashMap<(WorkflowName, u32), Arc<CheckedDefinition>>>,
    events: broadcast::Sender<Event>,
    recovery: Mutex<Recovery>,
    /// Callers of [`Engine::wait`] on live executions.
    waiters: Mutex<HashMap<ExecutionId, Vec<oneshot::Sender<Execution>>>>,
}

/// A poison-free lock: no lock here is held across code that can panic half-way.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

enum Command {
    Pause(oneshot::Sender<Result<()>>),
    Resume(oneshot::Sender<Result<()>>),
    Cancel(String, oneshot::Sender<Result<()>>),
    /// The driver's current view, fresher than the record between state changes.
    Snapshot(oneshot::Sender<Execution>),
}

impl<S: Store, R: Runner> Engine<S, R> {
    /// Opens the engine over `store`, recovering every unfinished execution: running ones go
    /// back to the runner with their completed steps, paused ones stay paused, and one whose
    /// journal or record cannot be read is marked failed without stopping the others.
    pub async fn open(config: Config, store: S, runner: R) -> Result<Self> {
        let (events, _) = broadcast::channel(config.watch_capacity.max(1));
        let engine = Self {
            inner: Arc::new(Inner {
                config,
                store,
                runner,
                live: Mutex::default(),
                waiters: Mutex::default(),
                definitions: Mutex::default(),
                events,
                recovery: Mutex::default(),
            }),
        };
        for id in engine.inner.store.unfinished_executions().await? {
            engine.recover(id).await;
        }
        Ok(engine)
    }

    /// What recovery did when the engine opened.
    pub fn recovery(&self) -> Recovery {
        lock(&self.inner.recovery).clone()
    }

    /// Parses, checks and stores a definition: unchanged content is a no-op answering the
    /// latest version, changed content becomes the next version.
    pub async fn apply(&self, text: &str) -> Result<Applied> {
        let checked = CheckedDefinition::parse(text)?;
        let name = checked.name().clone();
        let put = self
            .inner
            .store
            .put_definition(NewDefinition {
                name: name.clone(),
                content_hash: checked.content_hash().to_owned(),
                body: checked.canonical().clone(),
                created_at: self.inner.config.clock.now(),
            })
            .await?;
        lock(&self.inner.definitions).entry((name.clone(), put.version)).or_insert_with(|| Arc::new(checked));
        Ok(Applied { name, version: put.version, created: put.created })
    }

    /// One version of a definition (the latest when `version` is `None`), checked.
    pub async fn definition(&self, name: &WorkflowName, version: Option<u32>) -> Result<(u32, Arc<CheckedDefinition>)> {
        if let Some(version) = version
            && let Some(checked) = lock(&self.inner.definitions).get(&(name.clone(), version))
        {
            return Ok((version, Arc::clone(checked)));
        }
        let stored = self.inner.store.get_definition(name, version).await?;
        Ok((stored.version, self.checked(&stored)?))
    }

    /// The latest version of every definition.
    pub async fn definitions(&self) -> Result<Vec<StoredDefinition>> {
        Ok(self.inner.store.list_definitions().await?)
    }

    fn checked(&self, stored: &StoredDefinition) -> Result<Arc<CheckedDefinition>> {
        let key = (stored.name.clone(), stored.version);
        if let Some(checked) = lock(&self.inner.definitions).get(&key) {
            return Ok(Arc::clone(checked));
        }
        let checked = Arc::new(CheckedDefinition::from_body(&stored.body)?);
        lock(&self.inner.definitions).insert(key, Arc::clone(&checked));
        Ok(checked)
    }

    /// Starts an execution of `name` (its latest version when `version` is `None`). With an
    /// idempotency key used before, starts nothing and answers with the execution started
    /// with it, however many callers race.
    pub async fn start(
        &self,
        name: &WorkflowName,
        version: Option<u32>,
        input: Value,
        idempotency_key: Option<IdempotencyKey>,
    ) -> Result<ExecutionId> {
        Ok(self.start_or_find(name, version, input, idempotency_key, None).await?.0)
    }

    /// [`Engine::start`], also saying whether the idempotency key had started the execution
    /// before (`true`: nothing was started now); the execution's trace continues `trace`,
    /// the caller's, when given.
    pub async fn start_or_find(
        &self,
        name: &WorkflowName,
        version: Option<u32>,
        input: Value,
        idempotency_key: Option<IdempotencyKey>,
        trace: Option<TraceContext>,
    ) -> Result<(ExecutionId, bool)> {
        let version_requested = version;
        let (version, definition) = self.definition(name, version).await?;
        let now = self.inner.config.clock.now();
        let execution = Execution {
            id: ExecutionId::generate(),
            workflow: name.clone(),
            version,
            state: ExecutionState::Created,
            input,
            output: None,
            error: None,
            tasks: pending_tasks(&definition),
            created_at: now,
            updated_at: now,
            trace,
        };
        // A repeated start must be the same request: a key reused for another one is a
        // caller's bug that would otherwise pass silently (as Stripe's idempotency keys refuse).
        let requested = idempotency_key.as_ref().map(|key| (key.clone(), execution.input.clone()));
        let created = self.inner.store.create_execution(execution, idempotency_key).await?;
        let mut execution = created.execution;
        if !created.created {
            if let Some((key, input)) = requested {
                let same_version = version_requested.is_none_or(|v| v == execution.version);
                if execution.workflow != *name || execution.input != input || !same_version {
                    return Err(Error::IdempotencyConflict { key, execution: execution.id });
                }
            }
            return Ok((execution.id, true));
        }
        execution.state = ExecutionState::Running;
        let execution = self.inner.store.update_execution(ExecutionUpdate::from(&execution)).await?;
        let id = execution.id;
        self.spawn(Driver::new(self, execution, definition, 1, false, BTreeMap::new()), true);
        Ok((id, false))
    }

    /// One execution.
    pub async fn get(&self, id: ExecutionId) -> Result<Execution> {
        // A live execution's record is written on state changes only; its driver knows every
        // step's progress.
        let driver = lock(&self.inner.live).get(&id).cloned();
        if let Some(driver) = driver {
            let (reply, answer) = oneshot::channel();
            if driver.send(Command::Snapshot(reply)).is_ok()
                && let Ok(execution) = answer.await
            {
                return Ok(execution);
            }
        }
        Ok(self.inner.store.get_execution(id).await?)
    }

    /// The execution once it has finished (completed, failed or cancelled); a paused one
    /// is waited for through its resumption.
    pub async fn wait(&self, id: ExecutionId) -> Result<Execution> {
        let (waiter, finished) = oneshot::channel();
        let live = {
            // Under the waiters' lock, so a driver cannot end between the check and the insert
            // without seeing this waiter.
            let mut waiters = lock(&self.inner.waiters);
            let live = lock(&self.inner.live).contains_key(&id);
            if live {
                waiters.entry(id).or_default().push(waiter);
            }
            live
        };
        if live && let Ok(execution) = finished.await {
            return Ok(execution);
        }
        // Not running here: the record has the final state (or says why there is none).
        let execution = self.inner.store.get_execution(id).await?;
        if execution.state.is_terminal() {
            return Ok(execution);
        }
        Err(Error::NotRunning { execution: id, state: execution.state })
    }

    /// One page of the executions matching `filter`.
    pub async fn list(&self, filter: &ExecutionFilter, page: &PageRequest) -> Result<ExecutionPage> {
        Ok(self.inner.store.list_executions(filter, page).await?)
    }

    /// Stops dispatching: running -> paused. In-flight steps finish and are journaled.
    pub async fn pause(&self, id: ExecutionId) -> Result<()> {
        self.command(id, ExecutionState::Paused, Command::Pause).await
    }

    /// Dispatches again: paused -> running.
    pub async fn resume(&self, id: ExecutionId) -> Result<()> {
        self.command(id, ExecutionState::Running, Command::Resume).await
    }

    /// Stops the execution: running or paused -> cancelled.
    pub async fn cancel(&self, id: ExecutionId, reason: &str) -> Result<()> {
        let reason = reason.to_owned();
        self.command(id, ExecutionState::Cancelled, |reply| Command::Cancel(reason, reply)).await
    }

    async fn command(
        &self,
        id: ExecutionId,
        to: ExecutionState,
        command: impl FnOnce(oneshot::Sender<Result<()>>) -> Command,
    ) -> Result<()> {
        let driver = lock(&self.inner.live).get(&id).cloned();
        if let Some(driver) = driver {
            let (reply, answer) = oneshot::channel();
            if driver.send(command(reply)).is_ok()
                && let Ok(result) = answer.await
            {
                return result;
            }
        }
        // Nothing runs it here: it has ended (or never existed, which the store says).
        let execution = self.inner.store.get_execution(id).await?;
        Err(Error::InvalidTransition { execution: id, from: execution.state, to })
    }

    /// The execution's events from `from_sequence` (0 or 1 for all): the journal, then live
    /// events as they are journaled. The stream ends after the execution's last event.
    pub async fn watch(
        &self,
        id: ExecutionId,
        from_sequence: u64,
    ) -> Result<impl Stream<Item = Result<Event>> + Send + 'static> {
        // Subscribe before reading, so nothing journaled in between is missed.
        let receiver = self.inner.events.subscribe();
        self.inner.store.get_execution(id).await?;
        let watch = Watch {
            inner: Arc::clone(&self.inner),
            id,
            next: from_sequence.max(1),
            buffer: VecDeque::new(),
            receiver,
            done: false,
        };
        Ok(futures_util::stream::unfold(watch, |mut watch| async move {
            let item = watch.next().await?;
            Some((item, watch))
        }))
    }

    async fn recover(&self, id: ExecutionId) {
        match self.try_recover(id).await {
            Ok(()) => {}
            Err(reason) => {
                self.mark_failed(id, &reason).await;
                lock(&self.inner.recovery).failed.push((id, reason));
            }
        }
    }

    async fn try_recover(&self, id: ExecutionId) -> Result<(), String> {
        let store = &self.inner.store;
        let mut execution = store.get_execution(id).await.map_err(|e| e.to_string())?;
        let journal = store.read_journal(id, 1).await.map_err(|e| e.to_string())?;
        let stored =
            store.get_definition(&execution.workflow, Some(execution.version)).await.map_err(|e| e.to_string())?;
        let definition = self.checked(&stored).map_err(|e| e.to_string())?;
        // The journal is the truth: replay it over a fresh copy of the execution.
        let recorded = execution.state;
        execution.state = ExecutionState::Created;
        execution.output = None;
        execution.error = None;
        execution.tasks = pending_tasks(&definition);
        let mut completed = BTreeMap::new();
        let mut started = false;
        for event in &journal {
            if event.execution != id {
                return Err(format!("journal event {} belongs to execution {}", event.sequence, event.execution));
            }
            started |= matches!(event.kind, EventKind::Started { .. });
            apply(&mut execution, &mut completed, event)
                .map_err(|e| format!("journal event {}: {e}", event.sequence))?;
            if let EventKind::TaskSucceeded { step, .. } = &event.kind
                && !definition.definition().steps.iter().any(|s| s.id == *step)
            {
                return Err(format!(
                    "journal event {}: step {step:?} is not in version {}",
                    event.sequence, execution.version
                ));
            }
        }
        if execution.state == ExecutionState::Created {
            execution.state = ExecutionState::Running;
        }
        if recorded == ExecutionState::Paused && execution.state == ExecutionState::Running {
            return Err("the record says paused but the journal does not".to_owned());
        }
        let state = execution.state;
        let execution = store.update_execution(ExecutionUpdate::from(&execution)).await.map_err(|e| e.to_string())?;
        let next = journal.last().map_or(1, |e| e.sequence + 1);
        let mut recovery = lock(&self.inner.recovery);
        match state {
            ExecutionState::Running => {
                recovery.resumed.push(id);
                self.spawn(Driver::new(self, execution, definition, next, started, completed), true);
            }
            ExecutionState::Paused => {
                recovery.paused.push(id);
                self.spawn(Driver::new(self, execution, definition, next, started, completed), false);
            }
            _ => recovery.finished.push(id),
        }
        Ok(())
    }

    async fn mark_failed(&self, id: ExecutionId, reason: &str) {
        let now = self.inner.config.clock.now();
        let error = Some(format!("recovery failed: {reason}"));
        let update = match self.inner.store.get_execution(id).await {
            Ok(execution) => {
                ExecutionUpdate { state: ExecutionState::Failed, error, updated_at: now, ..(&execution).into() }
            }
            Err(_) => ExecutionUpdate {
                id,
                state: ExecutionState::Failed,
                output: None,
                error,
                tasks: BTreeMap::new(),
                updated_at: now,
            },
        };
        // Best effort: when even this write fails the execution stays unfinished and the next
        // open tries again.
        let _ = self.inner.store.update_execution(update).await;
    }

    fn spawn(&self, mut driver: Driver<S, R>, launch: bool) {
        let (commands, receiver) = mpsc::unbounded_channel();
        driver.commands = Some(receiver);
        lock(&self.inner.live).insert(driver.execution.id, commands);
        tokio::spawn(driver.run(launch));
    }
}

fn pending_tasks(definition: &CheckedDefinition) -> BTreeMap<StepId, TaskStatus> {
    definition.definition().steps.iter().map(|s| (s.id.clone(), TaskStatus::default())).collect()
}

fn is_terminal(kind: &EventKind) -> bool {
    matches!(kind, EventKind::Completed { .. } | EventKind::Failed { .. } | EventKind::Cancelled { .. })
}

/// Applies one journal event to an execution and its completed steps; `Err` when the event
/// asks for a state change the state machine does not allow.
fn apply(execution: &mut Execution, completed: &mut BTreeMap<StepId, Value>, event: &Event) -> Result<(), String> {
    let at = event.at;
    fn to_state(execution: &mut Execution, to: ExecutionState) -> Result<(), String> {
        execution.state = execution.state.transition(to).map_err(|e| e.to_string())?;
        Ok(())
    }
    match &event.kind {
        EventKind::Started { .. } if execution.state == ExecutionState::Created => {
            to_state(execution, ExecutionState::Running)?
        }
        EventKind::Started { .. } => {}
        EventKind::Paused => to_state(execution, ExecutionState::Paused)?,
        EventKind::Resumed => to_state(execution, ExecutionState::Running)?,
        EventKind::Cancelled { reason } => {
            to_state(execution, ExecutionState::Cancelled)?;
            execution.error = Some(reason.clone());
        }
        EventKind::Failed { error } => {
            to_state(execution, ExecutionState::Failed)?;
            execution.error = Some(error.clone());
        }
        EventKind::Completed { output } => {
            to_state(execution, ExecutionState::Completed)?;
            execution.output = Some(output.clone());
        }
        EventKind::TaskScheduled { step, attempt, service } => {
            let task = execution.tasks.entry(step.clone()).or_default();
            task.state = TaskState::Scheduled;
            task.attempts = *attempt;
            task.service = Some(service.clone());
            task.started_at.get_or_insert(at);
        }
        EventKind::TaskSucceeded { step, attempt, output } => {
            let task = execution.tasks.entry(step.clone()).or_default();
            task.state = TaskState::Succeeded;
            task.attempts = *attempt;
            task.error = None;
            task.finished_at = Some(at);
            completed.insert(step.clone(), output.clone());
        }
        EventKind::TaskFailed { step, attempt, error, retryable } => {
            let task = execution.tasks.entry(step.clone()).or_default();
            task.attempts = *attempt;
            task.error = Some(error.clone());
            if !retryable {
                task.state = TaskState::Failed;
                task.finished_at = Some(at);
            }
        }
        EventKind::TaskSkipped { step, reason } => {
            let task = execution.tasks.entry(step.clone()).or_default();
            task.state = TaskState::Skipped;
            task.error = Some(reason.clone());
            task.finished_at = Some(at);
        }
    }
    execution.updated_at = execution.updated_at.max(at);
    Ok(())
}

/// A runner's event on its way to the driver, with where to answer when the runner waits
/// for it to be journaled.
struct Delivery {
    event: Event,
    kept: Option<oneshot::Sender<Result<(), String>>>,
}

/// Tells a waiting runner whether its event was journaled.
fn answer(kept: Option<oneshot::Sender<Result<(), String>>>, answer: Result<(), String>) {
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
            return Recorded::refused("the execution has ended");
        }
        Recorded::later(async move {
            answer.await.unwrap_or_else(|_| Err("the execution ended before the event was journaled".to_owned()))
        })
    }
}

/// The most runner events journaled in one append.
const MAX_BATCH: usize = 256;

/// Owns one live execution: journals its runner's events (numbering them), applies them, and
/// serves pause, resume and cancel in order with them.
struct Driver<S, R: Runner> {
    inner: Arc<Inner<S, R>>,
    execution: Execution,
    definition: Arc<CheckedDefinition>,
    next_sequence: u64,
    /// Whether the journal holds a `Started`.
    started: bool,
    completed: BTreeMap<StepId, Value>,
    handle: Option<R::Handle>,
    commands: Option<mpsc::UnboundedReceiver<Command>>,
    events: Option<mpsc::UnboundedReceiver<Delivery>>,
}

impl<S: Store, R: Runner> Driver<S, R> {
    fn new(
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

    async fn run(mut self, launch: bool) {
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
                let result = self.record(vec![EventKind::Paused]).await;
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
                let result = self.record(vec![EventKind::Resumed]).await;
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
                let result = self.record(vec![EventKind::Cancelled { reason: reason.clone() }]).await;
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
                        let error = format!("output of step {step:?} is {size} bytes, the limit is {limit}");
                        if kept.is_some() {
                            // The runner waits for this answer before releasing dependants: it
                            // fails the step itself, under the step's error policy.
                            answer(kept, Err(error));
                            continue;
                        }
                        // A runner that does not wait has dispatched dependants already: the
                        // whole execution fails.
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
        let result = if kinds.is_empty() { Ok(()) } else { self.record(kinds).await };
        let result = result.map_err(|error| error.to_string());
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
        let kind = match outcome {
            Outcome::Completed(output) => EventKind::Completed { output },
            Outcome::Failed(error) => EventKind::Failed { error },
            Outcome::Cancelled(reason) => EventKind::Cancelled { reason },
        };
        let _ = self.record(vec![kind]).await;
    }

    /// Journals `kinds`, then applies them, updates the record and tells watchers. When the
    /// journal cannot be written the execution is failed in memory and, as far as the store
    /// lets, in its record; recovery sorts out the rest on the next open.
    async fn record(&mut self, kinds: Vec<EventKind>) -> Result<()> {
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
            return Err(error.into());
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

/// A watcher's position: journal reads, then live events, back to the journal on a gap.
struct Watch<S, R: Runner> {
    inner: Arc<Inner<S, R>>,
    id: ExecutionId,
    next: u64,
    buffer: VecDeque<Event>,
    receiver: broadcast::Receiver<Event>,
    done: bool,
}

impl<S: Store, R: Runner> Watch<S, R> {
    async fn next(&mut self) -> Option<Result<Event>> {
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

#[cfg(test)]
mod tests;
