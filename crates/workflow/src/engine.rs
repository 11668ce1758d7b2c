//! The engine: definitions through the store, executions through the runner, every event
//! journaled before the engine acts on it, recovery on open.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use baton_core::{
    Clock, CreatedExecution, Event, EventKind, Execution, ExecutionFilter, ExecutionId, ExecutionPage, ExecutionState,
    ExecutionTrace, ExecutionUpdate, History, IdempotencyKey, NewDefinition, Ownership, PageRequest, Parent, Problem,
    StepId, Store, StoreError, StoredDefinition, SystemClock, TaskStatus, TraceContext, WorkflowName,
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
pub const DEFAULT_MAX_OUTPUT_BYTES: usize = baton_core::bounds::DEFAULT_MAX_OUTPUT_BYTES;

/// Most events of one execution's journal by default: ten times what a run of a 10,000-step
/// definition journals without retries (Temporal caps a history at 51,200 events).
pub const DEFAULT_MAX_JOURNAL_EVENTS: u64 = 100_000;
/// Most bytes of one execution's journal by default: 1 GiB.
pub const DEFAULT_MAX_JOURNAL_BYTES: u64 = 1 << 30;

/// How long an ended execution is kept by default: a week, as Temporal's default namespace
/// retention.
pub const DEFAULT_RETENTION: Duration = Duration::from_secs(7 * 24 * 3600);

/// How an [`Engine`] runs.
#[derive(Debug, Clone)]
pub struct Config {
    /// The largest step output and run output, as JSON text; a bigger step output fails its
    /// step, a bigger run output the execution.
    pub max_output_bytes: usize,
    /// The largest execution input, as JSON text; a start with a bigger one is refused.
    pub max_input_bytes: usize,
    /// Most events one execution's journal holds, besides the event that ends it: past it,
    /// pause and resume are refused and the run fails. A loop of pauses and resumes cannot grow a
    /// journal without end.
    pub max_journal_events: u64,
    /// Most bytes (events as JSON) one execution's journal holds, besides the event that ends
    /// it; as [`Config::max_journal_events`].
    pub max_journal_bytes: u64,
    /// Live events buffered for the watchers of one execution; a watcher that falls further
    /// behind reads the journal instead.
    pub watch_capacity: usize,
    /// Time for records and events.
    pub clock: Arc<dyn Clock>,
    /// Told of every batch of events once it is journaled (metrics, audit).
    pub observer: Arc<dyn Observer>,
    /// Where `emit` tasks publish their events.
    pub emitter: Arc<dyn Emitter>,
    /// The largest signal data, as JSON text.
    pub max_signal_bytes: usize,
    /// The most signals an execution keeps unconsumed; one more is refused.
    pub max_pending_signals: usize,
    /// The deepest chain of child executions (a workflow running itself stops here).
    pub max_child_depth: u32,
    /// An execution that only waits, for a signal, a child or a timer due later than this, is
    /// parked: out of memory until its timer comes due (found in the store) or a signal or its
    /// child's end wakes it. `None` keeps every execution in memory.
    pub park_after: Option<Duration>,
    /// How often the store is asked for parked executions coming due.
    pub park_poll: Duration,
    /// How long an ended execution is kept, from its end, when its definition does not say
    /// (`retention`); `None` keeps it for ever. Fixed per execution when it starts.
    pub retention: Option<Duration>,
    /// How often expired executions are looked for and removed, a batch at a time.
    pub retention_poll: Duration,
    /// In a cluster, which partitions this server owns: it recovers and runs only their
    /// executions, stops the runs of a partition it loses, and recovers the unfinished
    /// executions of one it gains. `None` runs every execution (a single server).
    pub ownership: Option<Arc<dyn Ownership>>,
    /// How often the ownership is looked at for changes.
    pub ownership_poll: Duration,
    /// How often a watcher of an execution another server runs reads its journal for new
    /// events (nothing here sends them live).
    pub remote_watch_poll: Duration,
    /// Executions recovered at once when a partition is gained: a node taking over a dead
    /// one's partitions does not rush its whole backlog at the store and the services.
    pub takeover_concurrency: usize,
}

/// Where `emit` tasks publish: a message bus, a log, a webhook. Called once an emit task's
/// turn comes, before its success is journaled, so an event may be published again after a
/// crash (at least once); `step` and `execution` identify repeats.
pub trait Emitter: Send + Sync + std::fmt::Debug + 'static {
    /// Publishes `event`; an error fails the emit task.
    fn emit(&self, execution: ExecutionId, step: &StepId, event: &Value) -> std::result::Result<(), String>;
}

/// An [`Emitter`] that keeps nothing: the event is still in the journal, as the task's output.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoEmitter;

impl Emitter for NoEmitter {
    fn emit(&self, _: ExecutionId, _: &StepId, _: &Value) -> std::result::Result<(), String> {
        Ok(())
    }
}

/// Sees every batch of events right after it is journaled, in journal order per execution.
/// Called on the execution's driver task: it must be quick and must not block.
pub trait Observer: Send + Sync + std::fmt::Debug + 'static {
    /// `events` of `execution` are durable; `execution` is the driver's view with them applied
    /// (its workflow, version and caller's trace context do not change).
    fn journaled(&self, execution: &Execution, events: &[Event]);

    /// This server stopped running `execution`: another server owns it now (its partition
    /// went elsewhere, or a write was fenced). Worth a line in the log.
    fn fenced(&self, execution: ExecutionId) {
        let _ = execution;
    }
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
            max_input_bytes: baton_core::bounds::DEFAULT_MAX_INPUT_BYTES,
            max_journal_events: DEFAULT_MAX_JOURNAL_EVENTS,
            max_journal_bytes: DEFAULT_MAX_JOURNAL_BYTES,
            // Several times the events of a typical run; each watched execution holds this many slots.
            watch_capacity: 64,
            clock: Arc::new(SystemClock),
            observer: Arc::new(NoObserver),
            emitter: Arc::new(NoEmitter),
            max_signal_bytes: 256 * 1024,
            max_pending_signals: 1_000,
            max_child_depth: 16,
            park_after: Some(Duration::from_secs(10)),
            park_poll: Duration::from_millis(500),
            retention: Some(DEFAULT_RETENTION),
            retention_poll: Duration::from_secs(1),
            ownership: None,
            ownership_poll: Duration::from_millis(100),
            remote_watch_poll: Duration::from_millis(200),
            takeover_concurrency: 16,
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

/// An [`Engine`] that does not keep it alive: for what the engine itself holds (its runner's
/// host), which would otherwise make a cycle.
pub struct WeakEngine<S, R: Runner> {
    inner: std::sync::Weak<Inner<S, R>>,
}

impl<S, R: Runner> WeakEngine<S, R> {
    /// The engine, while it lives.
    pub fn upgrade(&self) -> Option<Engine<S, R>> {
        self.inner.upgrade().map(|inner| Engine { inner })
    }
}

impl<S, R: Runner> std::fmt::Debug for WeakEngine<S, R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WeakEngine").finish_non_exhaustive()
    }
}

impl<S, R: Runner> Engine<S, R> {
    /// A handle that does not keep the engine alive.
    pub fn downgrade(&self) -> WeakEngine<S, R> {
        WeakEngine { inner: Arc::downgrade(&self.inner) }
    }
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
    live: Mutex<HashMap<ExecutionId, mpsc::UnboundedSender<Box<Command>>>>,
    definitions: Mutex<HashMap<(WorkflowName, u32), Arc<CheckedDefinition>>>,
    /// The latest version of each workflow started or applied here. A single server owns its
    /// store, so only this engine's `apply` adds versions and starts need not ask the store; in
    /// a cluster (`Config::ownership`) other nodes apply too, so a start is stored only while
    /// its version is still the latest (`Store::create_latest_execution`).
    latest: Mutex<HashMap<WorkflowName, u32>>,
    /// Live events of each watched execution, while it has watchers: a driver sends to its own
    /// execution's channel only, so a watcher is not woken for other executions' events.
    watchers: Mutex<HashMap<ExecutionId, broadcast::Sender<Event>>>,
    recovery: Mutex<Recovery>,
    /// Callers of [`Engine::wait`] on live and parked executions.
    waiters: Mutex<HashMap<ExecutionId, Vec<oneshot::Sender<Execution>>>>,
    /// Parked executions being loaded back, with who waits for that.
    waking: Mutex<HashMap<ExecutionId, Arc<tokio::sync::Notify>>>,
    /// Executions woken for a command: they do not park again before it is served.
    holds: Mutex<std::collections::HashSet<ExecutionId>>,
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

/// A request to an execution's driver. Boxed on its channel: an unbounded channel allocates a
/// block of slots up front, and every live execution has one.
enum Command {
    Pause(oneshot::Sender<Result<()>>),
    Resume(oneshot::Sender<Result<()>>),
    Cancel(String, oneshot::Sender<Result<()>>),
    /// The driver's current view, fresher than the record between state changes.
    Snapshot(oneshot::Sender<Execution>),
    /// A signal sent to the execution: journaled, then handed to a waiting `listen`.
    Signal(String, Value, oneshot::Sender<Result<()>>),
    /// A `listen` task waits for signals.
    Listen(Listen),
    /// A `workflow` task wants its child started (once) and its id.
    Child(ChildRequest),
    /// This server no longer owns the execution: stop at once, writing nothing more.
    Fence,
}

/// A `listen` task's wait, as its driver keeps it.
struct Listen {
    step: StepId,
    names: Vec<String>,
    all: bool,
    reply: oneshot::Sender<std::result::Result<Value, Problem>>,
}

/// A `workflow` task's child, as its driver starts it.
struct ChildRequest {
    step: StepId,
    workflow: WorkflowName,
    version: Option<u32>,
    input: Value,
    reply: oneshot::Sender<std::result::Result<ExecutionId, Problem>>,
}

impl<S: Store, R: Runner> Engine<S, R> {
    /// Opens the engine over `store`, recovering every unfinished execution: running ones go
    /// back to the runner with their completed steps, paused ones stay paused, and one whose
    /// journal or record cannot be read is marked failed without stopping the others.
    pub async fn open(config: Config, store: S, runner: R) -> Result<Self> {
        let engine = Self {
            inner: Arc::new(Inner {
                config,
                store,
                runner,
                live: Mutex::default(),
                waiters: Mutex::default(),
                waking: Mutex::default(),
                holds: Mutex::default(),
                definitions: Mutex::default(),
                latest: Mutex::default(),
                watchers: Mutex::default(),
                recovery: Mutex::default(),
            }),
        };
        // What is owned is read before the listing: a partition gained after it is the
        // follower's to recover.
        let owned = engine.inner.config.ownership.as_ref().map(|o| (o.generation(), o.owned()));
        for id in engine.inner.store.unfinished_executions().await? {
            if engine.owns(id) {
                engine.recover(id).await;
            }
        }
        if engine.inner.config.park_after.is_some() {
            tokio::spawn(wake_due(engine.downgrade()));
        }
        tokio::spawn(remove_expired(engine.downgrade()));
        if let (Some(ownership), Some((generation, owned))) = (&engine.inner.config.ownership, owned) {
            let known = owned.into_iter().collect();
            tokio::spawn(follow_ownership(engine.downgrade(), Arc::clone(ownership), known, Some(generation)));
        }
        Ok(engine)
    }

    /// Loads a parked execution back (a timer came due, a signal or a child's end wakes it, a
    /// call wants it): its driver resumes the run from the journal. Nothing to do for one that
    /// is live or not parked; concurrent wakes of one execution load it once.
    pub async fn wake(&self, id: ExecutionId) -> Result<()> {
        loop {
            if lock(&self.inner.live).contains_key(&id) {
                return Ok(());
            }
            let (notify, first) = {
                let mut waking = lock(&self.inner.waking);
                match waking.get(&id) {
                    Some(notify) => (Arc::clone(notify), false),
                    None => {
                        let notify = Arc::new(tokio::sync::Notify::new());
                        waking.insert(id, Arc::clone(&notify));
                        (notify, true)
                    }
                }
            };
            if !first {
                // Another caller loads it: wait for that, then look again.
                let notified = notify.notified();
                if lock(&self.inner.waking).contains_key(&id) {
                    notified.await;
                }
                continue;
            }
            let result = match self.inner.store.get_execution(id).await {
                Ok(execution) if execution.parked.is_some() && !execution.state.is_terminal() => {
                    self.recover(id).await;
                    Ok(())
                }
                Ok(_) => Ok(()),
                Err(error) => Err(error.into()),
            };
            lock(&self.inner.waking).remove(&id);
            notify.notify_waiters();
            return result;
        }
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
        self.note_latest(&name, put.version);
        Ok(Applied { name, version: put.version, created: put.created })
    }

    /// One version of a definition (the latest when `version` is `None`: the latest this
    /// engine knows of, which in a cluster another node may have replaced), checked.
    pub async fn definition(&self, name: &WorkflowName, version: Option<u32>) -> Result<(u32, Arc<CheckedDefinition>)> {
        let known = version.or_else(|| lock(&self.inner.latest).get(name).copied());
        if let Some(version) = known
            && let Some(checked) = lock(&self.inner.definitions).get(&(name.clone(), version))
        {
            return Ok((version, Arc::clone(checked)));
        }
        let stored = self.inner.store.get_definition(name, version).await?;
        if version.is_none() {
            self.note_latest(name, stored.version);
        }
        Ok((stored.version, self.checked(&stored)?))
    }

    /// Remembers `version` as the latest of `name` unless a later one is known: an apply and a
    /// store read racing cannot take it back.
    fn note_latest(&self, name: &WorkflowName, version: u32) {
        let mut latest = lock(&self.inner.latest);
        let known = latest.entry(name.clone()).or_insert(version);
        *known = (*known).max(version);
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
        self.start_with(name, version, input, idempotency_key, None, trace).await
    }

    async fn start_with(
        &self,
        name: &WorkflowName,
        version: Option<u32>,
        input: Value,
        idempotency_key: Option<IdempotencyKey>,
        parent: Option<Parent>,
        trace: Option<TraceContext>,
    ) -> Result<(ExecutionId, bool)> {
        let size = baton_core::bounds::json_size(&input);
        let limit = self.inner.config.max_input_bytes;
        if size > limit {
            return Err(Error::InputTooLarge { size, limit });
        }
        let version_requested = version;
        let (version, definition) = self.definition(name, version).await?;
        let now = self.inner.config.clock.now();
        let execution = Execution {
            id: self.new_id(),
            workflow: name.clone(),
            version,
            // Created running, in one write: the driver journals `Started` before anything else,
            // and recovery of a record without a journal starts the run just the same.
            state: ExecutionState::Running,
            input,
            output: None,
            error: None,
            tasks: pending_tasks(&definition),
            created_at: now,
            updated_at: now,
            parent,
            problem: None,
            parked: None,
            trace,
            retention: definition.retention().or(self.inner.config.retention),
            expires_at: None,
        };
        // A repeated start must be the same request: a key reused for another one is a
        // caller's bug that would otherwise pass silently (as Stripe's idempotency keys refuse).
        let requested = idempotency_key.as_ref().map(|key| (key.clone(), execution.input.clone()));
        let (created, definition) = if self.inner.config.ownership.is_some() && version_requested.is_none() {
            self.create_latest(execution, definition, idempotency_key).await?
        } else {
            (self.inner.store.create_execution(execution, idempotency_key).await?, definition)
        };
        let execution = created.execution;
        if !created.created {
            if let Some((key, input)) = requested {
                let same_version = version_requested.is_none_or(|v| v == execution.version);
                if execution.workflow != *name || execution.input != input || !same_version {
                    return Err(Error::IdempotencyConflict { key, execution: execution.id });
                }
            }
            return Ok((execution.id, true));
        }
        let id = execution.id;
        self.spawn(Driver::new(self, execution, definition, 1, false, History::default()), true);
        Ok((id, false))
    }

    /// Stores `execution` as of the latest version of its workflow. Another node may have
    /// applied a newer one than `definition`: then it is learnt from the store and the
    /// execution made again from it.
    async fn create_latest(
        &self,
        mut execution: Execution,
        mut definition: Arc<CheckedDefinition>,
        idempotency_key: Option<IdempotencyKey>,
    ) -> Result<(CreatedExecution, Arc<CheckedDefinition>)> {
        const ATTEMPTS: usize = 16;
        for _ in 0..ATTEMPTS {
            let store = &self.inner.store;
            if let Some(created) = store.create_latest_execution(execution.clone(), idempotency_key.clone()).await? {
                return Ok((created, definition));
            }
            let latest = store.get_definition(&execution.workflow, None).await?;
            self.note_latest(&execution.workflow, latest.version);
            definition = self.checked(&latest)?;
            execution.version = latest.version;
            execution.tasks = pending_tasks(&definition);
            execution.retention = definition.retention().or(self.inner.config.retention);
        }
        let workflow = &execution.workflow;
        Err(StoreError::unavailable(format!(
            "workflow {workflow} kept getting new versions while an execution started"
        ))
        .into())
    }

    /// Sends a signal to an execution: journaled at once, consumed by the first `listen`
    /// task waiting for its name (now or later), each signal once.
    pub async fn signal(&self, id: ExecutionId, name: &str, data: Value) -> Result<()> {
        crate::compile::check_signal_name("name", name)?;
        let size = serde_json::to_vec(&data).map_or(usize::MAX, |text| text.len());
        let limit = self.inner.config.max_signal_bytes;
        if size > limit {
            return Err(
                baton_core::Error::invalid("data", format!("{size} bytes"), format!("the limit is {limit}")).into()
            );
        }
        self.command(id, ExecutionState::Running, |reply| Command::Signal(name.to_owned(), data.clone(), reply)).await
    }

    /// For the run of `id`: waits until signals `names` (the first of any, or one of each when
    /// `all`) were sent, consumes them and answers their data.
    pub fn listen(
        &self,
        id: ExecutionId,
        step: StepId,
        names: Vec<String>,
        all: bool,
    ) -> impl std::future::Future<Output = std::result::Result<Value, Problem>> + Send + 'static {
        let driver = lock(&self.inner.live).get(&id).cloned();
        async move {
            let (reply, answer) = oneshot::channel();
            let listen = Listen { step, names, all, reply };
            match driver {
                Some(driver) if driver.send(Box::new(Command::Listen(listen))).is_ok() => {
                    answer.await.unwrap_or_else(|_| Err(Problem::runtime("the execution ended while listening")))
                }
                _ => Err(Problem::runtime(format!("execution {id} is not running here"))),
            }
        }
    }

    /// For the run of `parent`: starts its child for `step` (once: a repeat finds the same
    /// child), waits for the child to end and answers its output, or its error.
    pub fn child(
        &self,
        parent: ExecutionId,
        step: StepId,
        workflow: WorkflowName,
        version: Option<u32>,
        input: Value,
    ) -> impl std::future::Future<Output = std::result::Result<Value, Problem>> + Send + 'static {
        let engine = self.clone();
        let driver = lock(&self.inner.live).get(&parent).cloned();
        async move {
            let (reply, answer) = oneshot::channel();
            let request = ChildRequest { step, workflow, version, input, reply };
            let child = match driver {
                Some(driver) if driver.send(Box::new(Command::Child(request))).is_ok() => {
                    answer.await.unwrap_or_else(|_| Err(Problem::runtime("the execution ended starting its child")))?
                }
                _ => return Err(Problem::runtime(format!("execution {parent} is not running here"))),
            };
            let ended = engine.wait(child).await.map_err(|e| Problem::runtime(format!("child {child}: {e}")))?;
            match ended.state {
                ExecutionState::Completed => Ok(ended.output.unwrap_or(Value::Null)),
                ExecutionState::Cancelled => Err(Problem::runtime(format!(
                    "child execution {child} was cancelled: {}",
                    ended.error.unwrap_or_default()
                ))),
                _ => Err(ended.problem.unwrap_or_else(|| {
                    Problem::runtime(format!("child execution {child} failed: {}", ended.error.unwrap_or_default()))
                })),
            }
        }
    }

    /// Starts the child a driver asked for, with its parent link; the key makes it once.
    async fn start_child(
        &self,
        parent: &Execution,
        request: &ChildRequest,
    ) -> std::result::Result<ExecutionId, Problem> {
        let depth = parent.parent.as_ref().map_or(1, |p| p.depth + 1);
        if depth > self.inner.config.max_child_depth {
            return Err(Problem::standard(
                "validation",
                format!("child workflows nest deeper than {} levels", self.inner.config.max_child_depth),
            ));
        }
        let text = format!("child/{}/{}", parent.id, request.step);
        let key = if text.len() <= baton_core::store::MAX_IDEMPOTENCY_KEY_LEN {
            text
        } else {
            use sha2::Digest as _;
            let digest = sha2::Sha256::digest(text.as_bytes());
            format!("child/{}/{}", parent.id, digest.iter().map(|b| format!("{b:02x}")).collect::<String>())
        };
        let key = IdempotencyKey::new(&key).map_err(|e| Problem::runtime(e.to_string()))?;
        let link = Parent { execution: parent.id, step: request.step.clone(), depth };
        // The child's spans hang under its parent's execution span, in the parent's trace.
        let parent_trace = ExecutionTrace::new(parent.id, parent.trace.as_ref());
        let trace = Some(parent_trace.context(parent_trace.root()));
        self.start_with(&request.workflow, request.version, request.input.clone(), Some(key), Some(link), trace)
            .await
            .map(|(id, _)| id)
            .map_err(|e| Problem::standard("configuration", format!("cannot start child {}: {e}", request.workflow)))
    }

    /// Publishes an event of an `emit` task through the configured [`Emitter`].
    pub fn emit(&self, execution: ExecutionId, step: &StepId, event: &Value) -> std::result::Result<(), Problem> {
        self.inner.config.emitter.emit(execution, step, event).map_err(|e| Problem::standard("communication", e))
    }

    /// One execution.
    pub async fn get(&self, id: ExecutionId) -> Result<Execution> {
        // A live execution's record is written on state changes only; its driver knows every
        // step's progress.
        let driver = lock(&self.inner.live).get(&id).cloned();
        if let Some(driver) = driver {
            let (reply, answer) = oneshot::channel();
            if driver.send(Box::new(Command::Snapshot(reply))).is_ok()
                && let Ok(execution) = answer.await
            {
                return Ok(execution);
            }
        }
        let execution = self.inner.store.get_execution(id).await?;
        if self.owns(id) || execution.state.is_terminal() {
            return Ok(execution);
        }
        // Another server runs it: its record is written on state changes only, so its journal
        // says how far the steps got.
        let journal = self.inner.store.read_journal(id, 1).await?;
        let stored = self.inner.store.get_definition(&execution.workflow, Some(execution.version)).await?;
        let definition = self.checked(&stored)?;
        let mut replayed = fresh(execution, &definition);
        let mut history = History::default();
        for event in &journal {
            apply(&mut replayed, &mut history, event).map_err(|e| baton_core::StoreError::Corrupt {
                record: baton_core::store::Record::Journal(id),
                reason: format!("event {} does not replay: {e}", event.sequence),
            })?;
        }
        if replayed.state == ExecutionState::Created {
            replayed.state = ExecutionState::Running;
        }
        Ok(replayed)
    }

    /// The execution once it has finished (completed, failed or cancelled); a paused one
    /// is waited for through its resumption.
    pub async fn wait(&self, id: ExecutionId) -> Result<Execution> {
        // An execution being loaded back (woken from parking) is in neither place for a
        // moment: its record no longer says parked and its driver is not live yet. A few
        // rounds see it through; each waits for the load to end.
        const ROUNDS: usize = 8;
        for _ in 0..ROUNDS {
            let (waiter, finished) = oneshot::channel();
            let live = {
                // Under the waiters' lock, so a driver cannot end between the check and the
                // insert without seeing this waiter.
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
            if execution.parked.is_some() {
                // Parked: its driver answers when it has been woken and has ended.
                let (waiter, finished) = oneshot::channel();
                lock(&self.inner.waiters).entry(id).or_default().push(waiter);
                // It may have been woken and ended in between.
                let again = self.inner.store.get_execution(id).await?;
                if again.state.is_terminal() {
                    return Ok(again);
                }
                if let Ok(execution) = finished.await {
                    return Ok(execution);
                }
            }
            let loading = lock(&self.inner.waking).get(&id).cloned();
            match loading {
                Some(loaded) => {
                    let notified = loaded.notified();
                    if lock(&self.inner.waking).contains_key(&id) {
                        notified.await;
                    }
                }
                None if lock(&self.inner.live).contains_key(&id) => {}
                None => return Err(Error::NotRunning { execution: id, state: execution.state }),
            }
        }
        let execution = self.inner.store.get_execution(id).await?;
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

    /// Stops the execution: running or paused -> cancelled. A reason over
    /// [`baton_core::bounds::MAX_REASON_BYTES`] is refused.
    pub async fn cancel(&self, id: ExecutionId, reason: &str) -> Result<()> {
        let limit = baton_core::bounds::MAX_REASON_BYTES;
        if reason.len() > limit {
            return Err(Error::ReasonTooLong { size: reason.len(), limit });
        }
        self.command(id, ExecutionState::Cancelled, |reply| Command::Cancel(reason.to_owned(), reply)).await
    }

    async fn command(
        &self,
        id: ExecutionId,
        to: ExecutionState,
        command: impl Fn(oneshot::Sender<Result<()>>) -> Command,
    ) -> Result<()> {
        // A parked execution is woken for the command, and held awake until it is served; one
        // that parks just as the command arrives is woken on the next round.
        for _ in 0..3 {
            let driver = lock(&self.inner.live).get(&id).cloned();
            if let Some(driver) = driver {
                let (reply, answer) = oneshot::channel();
                if driver.send(Box::new(command(reply))).is_ok()
                    && let Ok(result) = answer.await
                {
                    return result;
                }
            }
            // Nothing runs it here: it is parked, has ended, or never existed (the store says).
            let execution = self.inner.store.get_execution(id).await?;
            if execution.parked.is_none() || execution.state.is_terminal() {
                return Err(Error::InvalidTransition { execution: id, from: execution.state, to });
            }
            lock(&self.inner.holds).insert(id);
            self.wake(id).await?;
        }
        let execution = self.inner.store.get_execution(id).await?;
        Err(Error::InvalidTransition { execution: id, from: execution.state, to })
    }

    /// The execution's events from `from_sequence` (0 or 1 for all): the journal, then live
    /// events as they are journaled. The stream ends after the execution's last event, at once
    /// for an ended execution watched from past that event. An unfinished execution watched
    /// from past the next event is [`Error::WatchPastEnd`]: nothing says that sequence will
    /// ever be written, and waiting for it could last for ever.
    pub async fn watch(
        &self,
        id: ExecutionId,
        from_sequence: u64,
    ) -> Result<impl Stream<Item = Result<Event>> + Send + 'static> {
        // Subscribe before reading, so nothing journaled in between is missed.
        let mut watch = Watch::new(Arc::clone(&self.inner), id, from_sequence);
        // A watch from the start of an execution running here needs no read to know it exists.
        if from_sequence <= 1 && lock(&self.inner.live).contains_key(&id) {
            return Ok(watch.into_stream());
        }
        let execution = self.inner.store.get_execution(id).await?;
        // The event before the first one asked for must exist, unless the execution ended; when
        // it is the end, nothing follows.
        if from_sequence > 1 {
            let before = self.inner.store.read_journal(id, from_sequence - 1).await?;
            match before.as_slice() {
                [] => {
                    // The record is written after the journal: read again what it said was live.
                    let ended =
                        execution.state.is_terminal() || self.inner.store.get_execution(id).await?.state.is_terminal();
                    if !ended {
                        return Err(Error::WatchPastEnd { execution: id, from_sequence });
                    }
                    watch.end();
                }
                [last] if is_terminal(&last.kind) => watch.end(),
                // What the watch reads first; it skips the event before `from_sequence`.
                _ => watch.prime(before),
            }
        }
        Ok(watch.into_stream())
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
        // The journal is the truth: replay it over a fresh copy of the execution. It runs now, so
        // it is no longer parked.
        let recorded = execution.state;
        execution = fresh(execution, &definition);
        let mut history = History::default();
        let mut started = false;
        let roots: Vec<&str> = definition.program().root.tasks.iter().map(|t| t.name.as_str()).collect();
        for event in &journal {
            let sequence = event.sequence;
            if event.execution != id {
                return Err(RecoveryError::ForeignEvent { sequence, execution: event.execution });
            }
            started |= matches!(event.kind, EventKind::Started { .. });
            apply(&mut execution, &mut history, event).map_err(|error| RecoveryError::Replay { sequence, error })?;
            // A task's path starts with a top-level task of the version (`@n` marks a repeat).
            if let EventKind::TaskSucceeded { step, .. } = &event.kind
                && !roots.contains(&step.as_str().split('/').next().unwrap_or("").split('@').next().unwrap_or(""))
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
        let bytes = journal.iter().map(|e| driver::event_size(&e.kind)).sum();
        let mut recovery = lock(&self.inner.recovery);
        match state {
            ExecutionState::Running | ExecutionState::Paused => {
                let running = state == ExecutionState::Running;
                if running {
                    recovery.resumed.push(id)
                } else {
                    recovery.paused.push(id)
                }
                let mut driver = Driver::new(self, execution, definition, next, started, history);
                driver.journal_bytes = bytes;
                self.spawn(driver, running);
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
                problem: None,
                parked: None,
            },
        };
        // Best effort: when even this write fails the execution stays unfinished and the next
        // open tries again.
        let _ = self.inner.store.update_execution(update).await;
    }

    /// A fresh execution id; in a cluster, one of a partition this server owns (ids are random
    /// past their time, so a few tries find one), so the server that takes a start runs it.
    /// A server that owns nothing gives any id, and the store refuses the start as fenced.
    fn new_id(&self) -> ExecutionId {
        let Some(ownership) = &self.inner.config.ownership else { return ExecutionId::generate() };
        let tries = 16 * ownership.partitions().max(1);
        let mut id = ExecutionId::generate();
        for _ in 0..tries {
            if ownership.of(id).is_some() {
                break;
            }
            id = ExecutionId::generate();
        }
        id
    }

    /// Whether this server runs `id`: always, or in a cluster when it owns its partition.
    fn owns(&self, id: ExecutionId) -> bool {
        self.inner.config.ownership.as_ref().is_none_or(|ownership| ownership.of(id).is_some())
    }

    /// Stops the runs of the live executions in `lost` partitions at once.
    fn fence(&self, lost: &HashSet<u32>, partitions: u32) {
        let fenced: Vec<_> = {
            let mut live = lock(&self.inner.live);
            let ids: Vec<ExecutionId> =
                live.keys().filter(|id| lost.contains(&id.partition(partitions))).copied().collect();
            ids.into_iter().filter_map(|id| live.remove(&id)).collect()
        };
        for driver in fenced {
            let _ = driver.send(Box::new(Command::Fence));
        }
    }

    /// Recovers the unfinished executions of `gained` partitions that are not live here,
    /// `takeover_concurrency` at a time.
    async fn take_over(&self, gained: &HashSet<u32>, partitions: u32) -> Result<()> {
        let unfinished = self.inner.store.unfinished_executions().await?;
        let ids: Vec<ExecutionId> = {
            let live = lock(&self.inner.live);
            let ours = |id: &ExecutionId| gained.contains(&id.partition(partitions)) && !live.contains_key(id);
            unfinished.into_iter().filter(ours).collect()
        };
        let concurrency = self.inner.config.takeover_concurrency.max(1);
        futures_util::StreamExt::for_each_concurrent(futures_util::stream::iter(ids), concurrency, |id| {
            self.recover(id)
        })
        .await;
        Ok(())
    }

    fn spawn(&self, mut driver: Driver<S, R>, launch: bool) {
        let (commands, receiver) = mpsc::unbounded_channel();
        driver.commands = Some(receiver);
        driver.own = Some(commands.downgrade());
        lock(&self.inner.live).insert(driver.execution.id, commands);
        tokio::spawn(driver.run(launch));
    }
}

/// Loads parked executions back as their timers come due, until the engine is dropped.
async fn wake_due<S: Store, R: Runner>(engine: WeakEngine<S, R>) {
    /// Parked executions loaded per look at the store.
    const BATCH: usize = 256;
    loop {
        let Some(engine) = engine.upgrade() else { return };
        let poll = engine.inner.config.park_poll;
        // Loaded a little early: the run sleeps out the rest, so the timer fires on time.
        let ahead = chrono::Duration::from_std(poll * 2).unwrap_or_default();
        let before = engine.inner.config.clock.now() + ahead;
        let due = engine.inner.store.parked_due(before, BATCH).await.unwrap_or_default();
        let full = due.len() == BATCH;
        let wakes: Vec<_> = due.into_iter().map(|id| engine.wake(id)).collect();
        // One that fails to load stays parked and due: the next look tries it again.
        let _ = futures_util::future::join_all(wakes).await;
        drop(engine);
        if !full {
            tokio::time::sleep(poll).await;
        }
    }
}

/// Removes expired executions in the background, a small batch per store write, so that
/// starts and commits queued behind a batch wait for little; runs while the engine lives.
async fn remove_expired<S: Store, R: Runner>(engine: WeakEngine<S, R>) {
    /// Executions removed per store write.
    const BATCH: usize = 128;
    loop {
        let Some(engine) = engine.upgrade() else { return };
        let poll = engine.inner.config.retention_poll;
        let now = engine.inner.config.clock.now();
        // A removal that failed (a full disk, a lost connection) is tried again at the next look.
        let removed = engine.inner.store.remove_expired(now, BATCH).await.unwrap_or(0);
        drop(engine);
        if removed < BATCH {
            tokio::time::sleep(poll).await;
        } else {
            // More are due: let other work in between batches.
            tokio::task::yield_now().await;
        }
    }
}

/// Follows what this server owns in a cluster, until the engine is dropped: stops the runs of
/// the partitions it lost and recovers the unfinished executions of those it gained (a
/// partition claimed again under a new epoch counts as both).
async fn follow_ownership<S: Store, R: Runner>(
    engine: WeakEngine<S, R>,
    ownership: Arc<dyn Ownership>,
    mut known: BTreeMap<u32, i64>,
    mut seen: Option<u64>,
) {
    loop {
        let Some(engine) = engine.upgrade() else { return };
        let generation = ownership.generation();
        if seen != Some(generation) {
            seen = Some(generation);
            let partitions = ownership.partitions();
            let current: BTreeMap<u32, i64> = ownership.owned().into_iter().collect();
            let lost: HashSet<u32> = known.iter().filter(|(p, e)| current.get(p) != Some(e)).map(|(p, _)| *p).collect();
            if !lost.is_empty() {
                engine.fence(&lost, partitions);
                known.retain(|p, _| !lost.contains(p));
            }
            let gained: HashSet<u32> =
                current.iter().filter(|(p, e)| known.get(p) != Some(e)).map(|(p, _)| *p).collect();
            if gained.is_empty() || engine.take_over(&gained, partitions).await.is_ok() {
                known = current;
            } else {
                // The store failed the listing: look again on the next turn.
                seen = None;
            }
        }
        let poll = engine.inner.config.ownership_poll;
        drop(engine);
        tokio::time::sleep(poll).await;
    }
}

/// `execution` as before its first event, for its journal to be replayed over.
fn fresh(mut execution: Execution, definition: &CheckedDefinition) -> Execution {
    execution.parked = None;
    execution.state = ExecutionState::Created;
    execution.output = None;
    execution.error = None;
    execution.tasks = pending_tasks(definition);
    execution
}

fn pending_tasks(definition: &CheckedDefinition) -> BTreeMap<StepId, TaskStatus> {
    definition.program().root.tasks.iter().map(|t| (t.name.clone(), TaskStatus::default())).collect()
}

fn is_terminal(kind: &EventKind) -> bool {
    matches!(kind, EventKind::Completed { .. } | EventKind::Failed { .. } | EventKind::Cancelled { .. })
}

mod driver;
mod watch;

#[cfg(test)]
mod tests;
