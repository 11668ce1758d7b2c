//! In-memory fakes of the API ports, for tests (`test-util` feature): small, obviously right,
//! with the behaviour callers rely on (versioning, idempotent starts, the state machine,
//! journals that watchers follow live, leases fenced by tokens).
//!
//! Nothing here runs anything: a test moves executions on with
//! [`InMemoryExecutions::record`] and fills worker queues with [`InMemoryWorkerTasks::enqueue`].
//! The fakes have no timer (core knows no runtime), so a poll that finds no task waits until
//! one is enqueued however long its `max_wait` (zero answers at once), and
//! [`InMemoryOrchestrator`] does not wait for runs to end.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fmt::Write as _;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use futures_util::Stream;
use serde_json::Value;

use super::{
    ApiError, ApiResult, AppliedDefinition, BoxFuture, DefinitionDetail, DefinitionFormat, DefinitionPage,
    DefinitionQuery, DefinitionSource, DefinitionSummary, EventStream, ExecutionQuery, Executions, LeaseExtension,
    LeasedTask, Orchestrate, Orchestrating, Orchestration, PollTasks, StartExecution, StartedExecution, TaskFailure,
    TaskToken, WorkerTasks, WorkflowCatalog,
};
use crate::Timestamp;
use crate::event::{Event, EventKind};
use crate::execution::{Execution, ExecutionState, TaskStatus};
use crate::graph::{GraphError, StepGraph, StepLinks};
use crate::ids::{ExecutionId, ServiceId, StepId, WorkflowName};
use crate::planning::Planning;
use crate::ports::{Clock, SystemClock};
use crate::store::{ExecutionPage, IdempotencyKey, Order, PageRequest, PageToken, Record, StoreError};
use crate::workflow::WorkflowDefinition;

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic in another test thread must not hide this test's own failure.
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn wake_all(wakers: &mut Vec<Waker>) {
    for waker in wakers.drain(..) {
        waker.wake();
    }
}

/// The JSON value with every object's keys sorted, whatever serde_json's map keeps.
fn canonical(value: &Value) -> Value {
    match value {
        Value::Object(map) => {
            let sorted: BTreeMap<&String, Value> = map.iter().map(|(k, v)| (k, canonical(v))).collect();
            Value::Object(sorted.into_iter().map(|(k, v)| (k.clone(), v)).collect())
        }
        Value::Array(items) => Value::Array(items.iter().map(canonical).collect()),
        other => other.clone(),
    }
}

/// FNV-1a over `text`: a stable digest without a hashing crate (a fake needs no SHA-256).
fn digest(text: &str) -> u64 {
    text.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |hash, byte| (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3))
}

// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone)]
struct StoredVersion {
    summary: DefinitionSummary,
    definition: WorkflowDefinition,
    body: Value,
    source: DefinitionSource,
}

/// A [`WorkflowCatalog`] in a map. It reads JSON sources only (YAML is the workflow engine's
/// business; core has no YAML parser), checks what core's serde types check plus unique step
/// ids and known dependencies, and hashes the canonical JSON form. Cheap to clone; clones
/// share the definitions.
#[derive(Debug, Clone)]
pub struct InMemoryWorkflows {
    versions: Arc<Mutex<BTreeMap<WorkflowName, Vec<StoredVersion>>>>,
    clock: Arc<dyn Clock>,
}

impl Default for InMemoryWorkflows {
    fn default() -> Self {
        Self::with_clock(Arc::new(SystemClock))
    }
}

impl InMemoryWorkflows {
    /// An empty catalog stamping versions with `clock`.
    pub fn with_clock(clock: Arc<dyn Clock>) -> Self {
        Self { versions: Arc::default(), clock }
    }

    /// Checks and stores `source` (see [`WorkflowCatalog::apply`]), without a future.
    pub fn apply_now(&self, source: &str, format: DefinitionFormat) -> ApiResult<AppliedDefinition> {
        let format = format.detect(source);
        if format == DefinitionFormat::Yaml {
            return Err(ApiError::invalid("source", "the in-memory catalog reads JSON definitions only"));
        }
        let definition: WorkflowDefinition = serde_json::from_str(source)
            .map_err(|e| ApiError::invalid("source", format!("definition does not parse as json: {e}")))?;
        check_steps(&definition)?;
        let body = canonical(&serde_json::to_value(&definition).map_err(|e| ApiError::Internal(e.to_string()))?);
        let content_hash = format!("{:016x}", digest(&body.to_string()));
        let mut versions = lock(&self.versions);
        let stored = versions.entry(definition.name.clone()).or_default();
        if let Some(latest) = stored.last()
            && latest.summary.content_hash == content_hash
        {
            return Ok(AppliedDefinition { definition: latest.summary.clone(), created: false });
        }
        let summary = DefinitionSummary {
            name: definition.name.clone(),
            version: stored.len() as u32 + 1,
            description: definition.description.clone(),
            content_hash,
            step_count: definition.steps.len() as u32,
            created_at: self.clock.now(),
        };
        let source = DefinitionSource { format, text: source.to_owned() };
        stored.push(StoredVersion { summary: summary.clone(), definition, body, source });
        Ok(AppliedDefinition { definition: summary, created: true })
    }

    fn version(&self, name: &WorkflowName, version: Option<u32>) -> ApiResult<StoredVersion> {
        let versions = lock(&self.versions);
        let stored = versions.get(name).map(Vec::as_slice).unwrap_or_default();
        let found = match version {
            None => stored.last(),
            Some(v) => v.checked_sub(1).and_then(|i| stored.get(i as usize)),
        };
        found.cloned().ok_or_else(|| StoreError::NotFound(Record::Definition { name: name.clone(), version }).into())
    }
}

/// Core's one graph check, its error naming the step's place as the engine's does.
fn check_steps(definition: &WorkflowDefinition) -> ApiResult<()> {
    let steps = &definition.steps;
    let error = match StepGraph::check(steps.iter().map(StepLinks::from)) {
        Ok(_) => return Ok(()),
        Err(error) => error,
    };
    // The place of the step's `nth` occurrence: a duplicate is named where it repeats.
    let place =
        |id: &StepId, nth: usize, field: &str| match steps.iter().enumerate().filter(|(_, s)| s.id == *id).nth(nth) {
            Some((i, _)) => format!("steps[{i}].{field}"),
            None => "steps".to_owned(),
        };
    let field = match &error {
        GraphError::DuplicateStep(step) => place(step, 1, "id"),
        GraphError::UnknownDependency { step, .. } => place(step, 0, "depends_on"),
        GraphError::UnknownFallback { step, .. } | GraphError::SelfFallback(step) => place(step, 0, "on_error"),
        _ => "steps".to_owned(),
    };
    Err(ApiError::invalid(field, error))
}

impl WorkflowCatalog for InMemoryWorkflows {
    fn apply(&self, source: String, format: DefinitionFormat) -> BoxFuture<'_, ApiResult<AppliedDefinition>> {
        Box::pin(async move { self.apply_now(&source, format) })
    }

    fn get(&self, name: WorkflowName, version: Option<u32>) -> BoxFuture<'_, ApiResult<DefinitionDetail>> {
        Box::pin(async move {
            let stored = self.version(&name, version)?;
            Ok(DefinitionDetail { summary: stored.summary, definition: stored.body, source: Some(stored.source) })
        })
    }

    fn list(&self, query: DefinitionQuery) -> BoxFuture<'_, ApiResult<DefinitionPage>> {
        Box::pin(async move {
            let bad_token = |token: &str| ApiError::invalid("page_token", format!("{token:?} is not a page token"));
            let versions = lock(&self.versions);
            let limit = query.limit.max(1);
            let mut summaries: Vec<DefinitionSummary> = match &query.name {
                // Every name, by name, after the token's name.
                None => {
                    let after = match &query.page_token {
                        None => None,
                        Some(token) => Some(WorkflowName::new(token).map_err(|_| bad_token(token))?),
                    };
                    versions
                        .iter()
                        .filter(|(name, _)| after.as_ref().is_none_or(|after| *name > after))
                        .filter_map(|(_, stored)| stored.last().map(|v| v.summary.clone()))
                        .take(limit + 1)
                        .collect()
                }
                // One name's versions, newest first, below the token's version.
                Some(name) => {
                    let below = match &query.page_token {
                        None => u32::MAX,
                        Some(token) => token.parse().map_err(|_| bad_token(token))?,
                    };
                    let stored = versions.get(name).map(Vec::as_slice).unwrap_or_default();
                    stored
                        .iter()
                        .rev()
                        .filter(|v| v.summary.version < below)
                        .map(|v| v.summary.clone())
                        .take(limit + 1)
                        .collect()
                }
            };
            let more = summaries.len() > limit;
            summaries.truncate(limit);
            let next = match summaries.last() {
                Some(last) if more => Some(match query.name {
                    None => last.name.to_string(),
                    Some(_) => last.version.to_string(),
                }),
                _ => None,
            };
            Ok(DefinitionPage { definitions: summaries, next })
        })
    }
}

// ---------------------------------------------------------------------------------------------

#[derive(Debug)]
struct Run {
    execution: Execution,
    journal: Vec<Event>,
}

#[derive(Debug, Default)]
struct Runs {
    runs: HashMap<ExecutionId, Run>,
    keys: HashMap<IdempotencyKey, ExecutionId>,
    /// Watchers waiting for the next event of any execution.
    wakers: Vec<Waker>,
}

/// [`Executions`] in a map, over the definitions of an [`InMemoryWorkflows`]. A start journals
/// `Started` and leaves the execution running; pause, resume and cancel follow the state
/// machine ([`ExecutionState::transition`]) and journal their event; everything else happens
/// through [`record`](Self::record). Cheap to clone; clones share the executions.
#[derive(Debug, Clone)]
pub struct InMemoryExecutions {
    runs: Arc<Mutex<Runs>>,
    workflows: InMemoryWorkflows,
    clock: Arc<dyn Clock>,
}

fn ends(kind: &EventKind) -> bool {
    matches!(kind, EventKind::Completed { .. } | EventKind::Failed { .. } | EventKind::Cancelled { .. })
}

fn unknown_execution(id: ExecutionId) -> ApiError {
    StoreError::NotFound(Record::Execution(id)).into()
}

impl InMemoryExecutions {
    /// Executions of the workflows in `workflows`, stamped with the system clock.
    pub fn new(workflows: InMemoryWorkflows) -> Self {
        Self::with_clock(workflows, Arc::new(SystemClock))
    }

    /// Executions of the workflows in `workflows`, stamped with `clock`.
    pub fn with_clock(workflows: InMemoryWorkflows, clock: Arc<dyn Clock>) -> Self {
        Self { runs: Arc::default(), workflows, clock }
    }

    /// The catalog the executions run definitions of.
    pub fn workflows(&self) -> &InMemoryWorkflows {
        &self.workflows
    }

    /// Journals `kind` as the execution's next event and applies it to the execution (task
    /// states, state changes, output, error), waking watchers. A state change the state
    /// machine refuses, or any event after the execution ended, is
    /// [`ApiError::FailedPrecondition`] and changes nothing.
    pub fn record(&self, id: ExecutionId, kind: EventKind) -> ApiResult<Event> {
        let mut runs = lock(&self.runs);
        let at = self.clock.now();
        let run = runs.runs.get_mut(&id).ok_or_else(|| unknown_execution(id))?;
        let event = Self::journal(run, kind, at)?;
        wake_all(&mut runs.wakers);
        Ok(event)
    }

    /// Every event of the execution's journal so far.
    pub fn events(&self, id: ExecutionId) -> ApiResult<Vec<Event>> {
        lock(&self.runs).runs.get(&id).map(|run| run.journal.clone()).ok_or_else(|| unknown_execution(id))
    }

    fn journal(run: &mut Run, kind: EventKind, at: Timestamp) -> ApiResult<Event> {
        let execution = &mut run.execution;
        if execution.state.is_terminal() {
            return Err(ApiError::failed_precondition(format!(
                "execution {} has ended ({}): nothing more is journaled",
                execution.id, execution.state
            )));
        }
        let event = Event { execution: execution.id, sequence: run.journal.len() as u64 + 1, at, kind };
        execution.apply(&event).map_err(|e| match e {
            crate::Error::InvalidTransition { from, to } => ApiError::transition(execution.id, from, to),
            other => ApiError::from(other),
        })?;
        run.journal.push(event.clone());
        Ok(event)
    }

    fn change(&self, id: ExecutionId, kind: EventKind) -> ApiResult<Execution> {
        let mut runs = lock(&self.runs);
        let at = self.clock.now();
        let run = runs.runs.get_mut(&id).ok_or_else(|| unknown_execution(id))?;
        let to = match &kind {
            EventKind::Paused => ExecutionState::Paused,
            EventKind::Resumed => ExecutionState::Running,
            _ => ExecutionState::Cancelled,
        };
        // An ended execution says so as a refused transition, like any other illegal one.
        if !run.execution.state.can_become(to) {
            return Err(ApiError::transition(id, run.execution.state, to));
        }
        Self::journal(run, kind, at)?;
        let execution = run.execution.clone();
        wake_all(&mut runs.wakers);
        Ok(execution)
    }

    fn start_now(&self, request: StartExecution) -> ApiResult<StartedExecution> {
        let stored = self.workflows.version(&request.workflow, request.version)?;
        let mut runs = lock(&self.runs);
        if let Some(key) = &request.idempotency_key
            && let Some(id) = runs.keys.get(key)
        {
            let run = &runs.runs[id];
            let same = run.execution.workflow == request.workflow
                && run.execution.input == request.input
                && request.version.is_none_or(|v| v == run.execution.version);
            if !same {
                return Err(ApiError::AlreadyExists(format!(
                    "idempotency key {:?} already started execution {id} with a different request",
                    key.as_str()
                )));
            }
            return Ok(StartedExecution { execution: run.execution.clone(), existing: true });
        }
        let now = self.clock.now();
        let tasks = stored.definition.steps.iter().map(|s| (s.id.clone(), TaskStatus::default())).collect();
        let mut execution = Execution {
            id: ExecutionId::generate(),
            workflow: request.workflow,
            version: stored.summary.version,
            state: ExecutionState::Created,
            input: request.input.clone(),
            output: None,
            error: None,
            tasks,
            created_at: now,
            updated_at: now,
            trace: request.trace,
            parent: None,
            problem: None,
            parked: None,
            retention: None,
            expires_at: None,
        };
        execution.transition(ExecutionState::Running, now).map_err(ApiError::from)?;
        let id = execution.id;
        let mut run = Run { execution, journal: Vec::new() };
        Self::journal(&mut run, EventKind::Started { input: request.input }, now)?;
        let execution = run.execution.clone();
        runs.runs.insert(id, run);
        if let Some(key) = request.idempotency_key {
            runs.keys.insert(key, id);
        }
        wake_all(&mut runs.wakers);
        Ok(StartedExecution { execution, existing: false })
    }

    fn list_now(&self, query: &ExecutionQuery, page: &PageRequest) -> ApiResult<ExecutionPage> {
        let after = page.after()?;
        let runs = lock(&self.runs);
        let candidates: Vec<&Execution> = match &query.idempotency_key {
            // A key started at most one execution.
            Some(key) => runs.keys.get(key).map(|id| &runs.runs[id].execution).into_iter().collect(),
            None => runs.runs.values().map(|run| &run.execution).collect(),
        };
        let mut matching: Vec<&Execution> = candidates.into_iter().filter(|e| query.matches(e)).collect();
        matching.sort_by_key(|e| (e.created_at, e.id));
        if page.order == Order::NewestFirst {
            matching.reverse();
        }
        let past = |e: &Execution| match (after, page.order) {
            (None, _) => true,
            (Some(position), Order::OldestFirst) => (e.created_at, e.id) > position,
            (Some(position), Order::NewestFirst) => (e.created_at, e.id) < position,
        };
        let limit = page.effective_limit();
        let mut executions: Vec<Execution> =
            matching.into_iter().filter(|e| past(e)).take(limit + 1).cloned().collect();
        let more = executions.len() > limit;
        executions.truncate(limit);
        let next = match executions.last() {
            Some(last) if more => Some(PageToken::at(last.created_at, last.id)),
            _ => None,
        };
        Ok(ExecutionPage { executions, next })
    }
}

impl Executions for InMemoryExecutions {
    fn start(&self, request: StartExecution) -> BoxFuture<'_, ApiResult<StartedExecution>> {
        Box::pin(async move { self.start_now(request) })
    }

    fn get(&self, id: ExecutionId) -> BoxFuture<'_, ApiResult<Execution>> {
        Box::pin(async move {
            lock(&self.runs).runs.get(&id).map(|run| run.execution.clone()).ok_or_else(|| unknown_execution(id))
        })
    }

    fn list(&self, query: ExecutionQuery, page: PageRequest) -> BoxFuture<'_, ApiResult<ExecutionPage>> {
        Box::pin(async move { self.list_now(&query, &page) })
    }

    fn pause(&self, id: ExecutionId) -> BoxFuture<'_, ApiResult<Execution>> {
        Box::pin(async move { self.change(id, EventKind::Paused) })
    }

    fn resume(&self, id: ExecutionId) -> BoxFuture<'_, ApiResult<Execution>> {
        Box::pin(async move { self.change(id, EventKind::Resumed) })
    }

    fn cancel(&self, id: ExecutionId, reason: String) -> BoxFuture<'_, ApiResult<Execution>> {
        Box::pin(async move { self.change(id, EventKind::Cancelled { reason }) })
    }

    fn watch(&self, id: ExecutionId, from_sequence: u64) -> BoxFuture<'_, ApiResult<EventStream>> {
        Box::pin(async move {
            match lock(&self.runs).runs.get(&id) {
                None => return Err(unknown_execution(id)),
                Some(run) if !run.execution.state.is_terminal() && from_sequence > run.journal.len() as u64 + 1 => {
                    return Err(ApiError::OutOfRange(format!(
                        "from_sequence {from_sequence} is past the end of the journal of execution {id}"
                    )));
                }
                Some(_) => {}
            }
            let watch = JournalWatch { runs: Arc::clone(&self.runs), id, next: from_sequence.max(1), done: false };
            Ok(Box::pin(watch) as EventStream)
        })
    }

    fn signal(&self, id: ExecutionId, name: String, data: Value) -> BoxFuture<'_, ApiResult<Execution>> {
        Box::pin(async move { self.change(id, EventKind::SignalReceived { name, data }) })
    }

    fn journal(&self, id: ExecutionId, from_sequence: u64) -> BoxFuture<'_, ApiResult<Vec<Event>>> {
        Box::pin(async move {
            let mut events = self.events(id)?;
            events.retain(|event| event.sequence >= from_sequence);
            Ok(events)
        })
    }
}

/// Follows one execution's journal: recorded events first, then each one as it is recorded.
#[derive(Debug)]
struct JournalWatch {
    runs: Arc<Mutex<Runs>>,
    id: ExecutionId,
    next: u64,
    done: bool,
}

impl Stream for JournalWatch {
    type Item = ApiResult<Event>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        if this.done {
            return Poll::Ready(None);
        }
        let mut runs = lock(&this.runs);
        let Some(run) = runs.runs.get(&this.id) else {
            this.done = true;
            return Poll::Ready(Some(Err(unknown_execution(this.id))));
        };
        let index = usize::try_from(this.next - 1).unwrap_or(usize::MAX);
        if let Some(event) = run.journal.get(index) {
            this.next += 1;
            this.done = ends(&event.kind);
            return Poll::Ready(Some(Ok(event.clone())));
        }
        if run.execution.state.is_terminal() {
            // Asked to start past the event that ended it.
            this.done = true;
            return Poll::Ready(None);
        }
        runs.wakers.push(cx.waker().clone());
        Poll::Pending
    }
}

// ---------------------------------------------------------------------------------------------

/// A task for [`InMemoryWorkerTasks::enqueue`]: one attempt of a step on a worker queue.
#[derive(Debug, Clone, PartialEq)]
pub struct NewTask {
    /// The queue.
    pub queue: String,
    /// The service it is dispatched to.
    pub service: ServiceId,
    /// The execution.
    pub execution: ExecutionId,
    /// The step.
    pub step: StepId,
    /// 1 for the first attempt.
    pub attempt: u32,
    /// The step's input.
    pub input: Value,
    /// When the attempt times out.
    pub deadline: Option<Timestamp>,
}

/// A task a worker completed or failed.
#[derive(Debug, Clone, PartialEq)]
pub struct FinishedTask {
    /// The task.
    pub task: NewTask,
    /// The worker that held it.
    pub worker: String,
    /// Its output, or how it failed.
    pub result: Result<Value, TaskFailure>,
}

#[derive(Debug)]
struct Lease {
    worker: String,
    expires_at: Timestamp,
}

#[derive(Debug)]
struct FakeTask {
    task: NewTask,
    deliveries: u32,
    lease: Option<Lease>,
    cancel_requested: bool,
}

#[derive(Debug, Default)]
struct Queues {
    next_task: u64,
    queues: HashMap<String, VecDeque<u64>>,
    tasks: HashMap<u64, FakeTask>,
    tokens: HashMap<TaskToken, u64>,
    finished: Vec<FinishedTask>,
    /// Polls waiting for a task.
    wakers: Vec<Waker>,
}

impl Queues {
    /// Puts tasks whose lease expired back at the front of their queues, their tokens dead.
    fn reclaim(&mut self, now: Timestamp) {
        let expired: Vec<(TaskToken, u64)> = self
            .tokens
            .iter()
            .filter(|(_, id)| self.tasks[id].lease.as_ref().is_some_and(|l| l.expires_at <= now))
            .map(|(token, id)| (token.clone(), *id))
            .collect();
        for (token, id) in expired {
            self.tokens.remove(&token);
            let task = self.tasks.get_mut(&id).expect("a token's task exists");
            task.lease = None;
            self.queues.entry(task.task.queue.clone()).or_default().push_front(id);
        }
    }

    /// The task a live token names; [`ApiError::NotFound`] for any other token.
    fn live(&mut self, token: &TaskToken, now: Timestamp) -> ApiResult<u64> {
        self.reclaim(now);
        self.tokens.get(token).copied().ok_or_else(|| {
            ApiError::not_found(format!("task token {:?} is unknown, finished or its lease expired", token.as_str()))
        })
    }
}

/// [`WorkerTasks`] over FIFO queues in a map, with leases on the given clock: an expired lease
/// puts its task back at the front of its queue (noticed by the next call), and the next
/// delivery gets a new token so the old one is refused. Cheap to clone; clones share the
/// queues.
#[derive(Debug, Clone)]
pub struct InMemoryWorkerTasks {
    queues: Arc<Mutex<Queues>>,
    clock: Arc<dyn Clock>,
    lease: Duration,
}

impl Default for InMemoryWorkerTasks {
    fn default() -> Self {
        Self::with_clock(Arc::new(SystemClock), Duration::from_secs(30))
    }
}

impl InMemoryWorkerTasks {
    /// Queues whose leases last `lease` on `clock`.
    pub fn with_clock(clock: Arc<dyn Clock>, lease: Duration) -> Self {
        Self { queues: Arc::default(), clock, lease }
    }

    /// Queues a task at the back of its queue and wakes waiting polls.
    pub fn enqueue(&self, task: NewTask) {
        let mut queues = lock(&self.queues);
        let id = queues.next_task;
        queues.next_task += 1;
        queues.queues.entry(task.queue.clone()).or_default().push_back(id);
        queues.tasks.insert(id, FakeTask { task, deliveries: 0, lease: None, cancel_requested: false });
        wake_all(&mut queues.wakers);
    }

    /// Asks the holders of the execution's tasks to stop: their next extension says so and
    /// their answers are refused with [`ApiError::FailedPrecondition`].
    pub fn cancel(&self, execution: ExecutionId) {
        for task in lock(&self.queues).tasks.values_mut().filter(|t| t.task.execution == execution) {
            task.cancel_requested = true;
        }
    }

    /// Tasks waiting on `queue` (after returning expired leases).
    pub fn queued(&self, queue: &str) -> usize {
        let mut queues = lock(&self.queues);
        queues.reclaim(self.clock.now());
        queues.queues.get(queue).map_or(0, VecDeque::len)
    }

    /// Tasks leased now (after returning expired leases).
    pub fn leased(&self) -> usize {
        let mut queues = lock(&self.queues);
        queues.reclaim(self.clock.now());
        queues.tokens.len()
    }

    /// The tasks completed or failed so far, in order.
    pub fn finished(&self) -> Vec<FinishedTask> {
        lock(&self.queues).finished.clone()
    }

    /// Leases up to `max` tasks from the queues of `request` to its worker, in queue order.
    fn take(&self, request: &PollTasks) -> Vec<LeasedTask> {
        let now = self.clock.now();
        let expires_at = now + chrono::Duration::from_std(self.lease).unwrap_or(chrono::Duration::MAX);
        let mut queues = lock(&self.queues);
        queues.reclaim(now);
        let Queues { queues: by_name, tasks, tokens, .. } = &mut *queues;
        let mut leased = Vec::new();
        for name in &request.queues {
            let Some(queue) = by_name.get_mut(name) else { continue };
            while leased.len() < request.max_tasks.max(1) {
                let Some(id) = queue.pop_front() else { break };
                let task = tasks.get_mut(&id).expect("a queued task exists");
                task.deliveries += 1;
                let token = TaskToken::new(&format!("task-{id}.{}", task.deliveries)).expect("a valid token");
                task.lease = Some(Lease { worker: request.worker.clone(), expires_at });
                tokens.insert(token.clone(), id);
                let t = &task.task;
                leased.push(LeasedTask {
                    token,
                    queue: t.queue.clone(),
                    service: t.service.clone(),
                    execution: t.execution,
                    step: t.step.clone(),
                    attempt: t.attempt,
                    idempotency_key: format!("{}/{}", t.execution, t.step),
                    input: t.input.clone(),
                    lease_expires_at: expires_at,
                    deadline: t.deadline,
                });
            }
        }
        leased
    }

    fn answer(&self, token: &TaskToken, result: Result<Value, TaskFailure>) -> ApiResult<()> {
        let mut queues = lock(&self.queues);
        let id = queues.live(token, self.clock.now())?;
        if queues.tasks[&id].cancel_requested {
            return Err(ApiError::failed_precondition(format!(
                "task token {:?}: the task was cancelled by its caller",
                token.as_str()
            )));
        }
        queues.tokens.remove(token);
        let task = queues.tasks.remove(&id).expect("a live token's task exists");
        let worker = task.lease.map(|l| l.worker).unwrap_or_default();
        queues.finished.push(FinishedTask { task: task.task, worker, result });
        Ok(())
    }
}

/// A poll waiting for its first task (see the module docs for why there is no timeout).
#[derive(Debug)]
struct PollWait<'a> {
    tasks: &'a InMemoryWorkerTasks,
    request: PollTasks,
}

impl Future for PollWait<'_> {
    type Output = ApiResult<Vec<LeasedTask>>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        let leased = this.tasks.take(&this.request);
        if !leased.is_empty() || this.request.max_wait.is_zero() {
            return Poll::Ready(Ok(leased));
        }
        let mut queues = lock(&this.tasks.queues);
        // A task enqueued between `take` and here woke nobody: look again under the lock.
        if this.request.queues.iter().any(|q| queues.queues.get(q).is_some_and(|q| !q.is_empty())) {
            cx.waker().wake_by_ref();
        } else {
            queues.wakers.push(cx.waker().clone());
        }
        Poll::Pending
    }
}

impl WorkerTasks for InMemoryWorkerTasks {
    fn poll(&self, request: PollTasks) -> BoxFuture<'_, ApiResult<Vec<LeasedTask>>> {
        if request.queues.is_empty() {
            return Box::pin(async { Err(ApiError::invalid("queues", "must name at least one queue")) });
        }
        Box::pin(PollWait { tasks: self, request })
    }

    fn complete(&self, token: TaskToken, output: Value) -> BoxFuture<'_, ApiResult<()>> {
        Box::pin(async move { self.answer(&token, Ok(output)) })
    }

    fn fail(&self, token: TaskToken, failure: TaskFailure) -> BoxFuture<'_, ApiResult<()>> {
        Box::pin(async move { self.answer(&token, Err(failure)) })
    }

    fn extend(&self, token: TaskToken) -> BoxFuture<'_, ApiResult<LeaseExtension>> {
        Box::pin(async move {
            let now = self.clock.now();
            let mut queues = lock(&self.queues);
            let id = queues.live(&token, now)?;
            let task = queues.tasks.get_mut(&id).expect("a live token's task exists");
            let lease = task.lease.as_mut().expect("a live token's task is leased");
            lease.expires_at = now + chrono::Duration::from_std(self.lease).unwrap_or(chrono::Duration::MAX);
            Ok(LeaseExtension { expires_at: lease.expires_at, cancel_requested: task.cancel_requested })
        })
    }
}

// ---------------------------------------------------------------------------------------------

/// [`Orchestrating`] over any [`Planning`] and the in-memory catalog and executions: plans the
/// goal, applies the plan as workflow `goal-<digest of the goal>` (one step per task, calling
/// the chosen service with its alternatives) and starts it. Nothing runs the execution: with
/// [`finish_runs_with`](Self::finish_runs_with) each run is ended at once with that event,
/// otherwise it stays running (and a wait answers with it running).
pub struct InMemoryOrchestrator {
    planning: Arc<dyn Planning>,
    executions: InMemoryExecutions,
    finish: Mutex<Option<EventKind>>,
}

impl std::fmt::Debug for InMemoryOrchestrator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InMemoryOrchestrator").field("executions", &self.executions).finish_non_exhaustive()
    }
}

impl InMemoryOrchestrator {
    /// Plans with `planning`, runs in `executions` (and its catalog).
    pub fn new(planning: Arc<dyn Planning>, executions: InMemoryExecutions) -> Self {
        Self { planning, executions, finish: Mutex::new(None) }
    }

    /// Ends every later run right after it starts with `event` (`Completed`, `Failed` or
    /// `Cancelled`); `None` leaves them running.
    pub fn finish_runs_with(&self, event: Option<EventKind>) {
        *lock(&self.finish) = event;
    }

    fn orchestrate_now(&self, request: Orchestrate) -> ApiResult<Orchestration> {
        let plan = self.planning.plan(&request.goal)?;
        let goal_text = serde_json::to_string(&request.goal).map_err(|e| ApiError::Internal(e.to_string()))?;
        let mut name = String::from("goal-");
        let _ = write!(name, "{:016x}", digest(&goal_text));
        let name = WorkflowName::new(&name)?;
        let steps = plan.tasks.iter().map(|task| task.to_step(Value::Null)).collect();
        let workflow = WorkflowDefinition {
            name: name.clone(),
            description: format!("plan for {:?}", request.goal.wanted),
            steps,
            output: Value::Null,
            defaults: Default::default(),
            deadline: None,
            retention: None,
            labels: BTreeMap::new(),
        };
        let text = serde_json::to_string(&workflow).map_err(|e| ApiError::Internal(e.to_string()))?;
        let applied = self.executions.workflows().apply_now(&text, DefinitionFormat::Json)?;
        let version = applied.definition.version;
        let started = self.executions.start_now(StartExecution {
            workflow: name.clone(),
            version: Some(version),
            input: request.input,
            idempotency_key: None,
            trace: None,
        })?;
        let mut execution = started.execution;
        if let Some(event) = lock(&self.finish).clone() {
            self.executions.record(execution.id, event)?;
            execution = lock(&self.executions.runs).runs[&execution.id].execution.clone();
        }
        Ok(Orchestration { plan, workflow: name, version, execution })
    }
}

impl Orchestrating for InMemoryOrchestrator {
    fn orchestrate(&self, request: Orchestrate) -> BoxFuture<'_, ApiResult<Orchestration>> {
        Box::pin(async move { self.orchestrate_now(request) })
    }
}

#[cfg(test)]
mod tests;
