//! The engine: definitions through the store, executions through the runner, every event
//! journaled before the engine acts on it, recovery on open.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};

use baton_core::{
    Clock, Event, EventKind, Execution, ExecutionFilter, ExecutionId, ExecutionPage, ExecutionState, ExecutionUpdate,
    IdempotencyKey, NewDefinition, PageRequest, StepId, Store, StoredDefinition, SystemClock, TaskStatus, TraceContext,
    WorkflowName,
};
use futures_util::Stream;
use serde_json::Value;
use tokio::sync::{broadcast, mpsc, oneshot};

use crate::definition::CheckedDefinition;
use crate::error::{Error, RecoveryError, Result};
use crate::runner::Runner;
use driver::{Driver, apply};
use watch::Watch;

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
    pub failed: Vec<(ExecutionId, RecoveryError)>,
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

/// What a panic said, when it said it in text.
fn panic_message(payload: Box<dyn std::any::Any + Send>) -> String {
    match payload.downcast::<String>() {
        Ok(message) => *message,
        Err(payload) => payload.downcast_ref::<&str>().map_or("no message", |m| m).to_owned(),
    }
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
        // Compiling up to a thousand jq expressions takes a while: not on an async worker.
        let text = text.to_owned();
        let checked = match tokio::task::spawn_blocking(move || CheckedDefinition::parse(&text)).await {
            Ok(checked) => checked?,
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(_) => return Err(Error::Stopped),
        };
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
        let watch = Watch::new(Arc::clone(&self.inner), id, from_sequence, receiver);
        Ok(futures_util::stream::unfold(watch, |mut watch| async move {
            let item = watch.next().await?;
            Some((item, watch))
        }))
    }

    /// Recovers one execution; one that cannot be (its journal or definition is unreadable, or
    /// recovering it panics) is failed with the reason and its journal kept, so the others, and
    /// the next start, carry on.
    async fn recover(&self, id: ExecutionId) {
        let engine = self.clone();
        let reason = match tokio::spawn(async move { engine.try_recover(id).await }).await {
            Ok(Ok(())) => return,
            Ok(Err(reason)) => reason,
            Err(e) if e.is_panic() => RecoveryError::Panicked(panic_message(e.into_panic())),
            // The runtime is shutting down: the next start recovers it.
            Err(_) => return,
        };
        self.mark_failed(id, &reason.to_string()).await;
        lock(&self.inner.recovery).failed.push((id, reason));
    }

    async fn try_recover(&self, id: ExecutionId) -> Result<(), RecoveryError> {
        let store = &self.inner.store;
        let mut execution = store.get_execution(id).await?;
        let journal = store.read_journal(id, 1).await?;
        let stored = store.get_definition(&execution.workflow, Some(execution.version)).await?;
        let definition = self.checked(&stored)?;
        // The journal is the truth: replay it over a fresh copy of the execution.
        let recorded = execution.state;
        execution.state = ExecutionState::Created;
        execution.output = None;
        execution.error = None;
        execution.tasks = pending_tasks(&definition);
        let mut completed = BTreeMap::new();
        let mut started = false;
        for event in &journal {
            let sequence = event.sequence;
            if event.execution != id {
                return Err(RecoveryError::ForeignEvent { sequence, execution: event.execution });
            }
            started |= matches!(event.kind, EventKind::Started { .. });
            apply(&mut execution, &mut completed, event).map_err(|error| RecoveryError::Replay { sequence, error })?;
            if let EventKind::TaskSucceeded { step, .. } = &event.kind
                && !definition.definition().steps.iter().any(|s| s.id == *step)
            {
                let (step, version) = (step.clone(), execution.version);
                return Err(RecoveryError::UnknownStep { sequence, step, version });
            }
        }
        if execution.state == ExecutionState::Created {
            execution.state = ExecutionState::Running;
        }
        if recorded == ExecutionState::Paused && execution.state == ExecutionState::Running {
            return Err(RecoveryError::PausedOnlyInRecord);
        }
        let state = execution.state;
        let execution = store.update_execution(ExecutionUpdate::from(&execution)).await?;
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

mod driver;
mod watch;

#[cfg(test)]
mod tests;
