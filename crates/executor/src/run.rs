//! One run of a DAG: ready-queue dispatch, retries with backoff, timeouts, failover, error
//! policies, pause/resume/cancel, resumption from completed tasks.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use baton_core::{
    Clock, ErrorPolicy, Event, EventKind, EventSink, ExecutionId, RetryPolicy, ServiceId, StepId, Template,
};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use serde_json::{Map, Value};
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;

use crate::breaker::{BreakerState, Breakers};
use crate::invoker::{Call, Failure, Invoker};

/// One task of a run.
#[derive(Debug, Clone)]
pub struct TaskSpec {
    /// Its id.
    pub id: StepId,
    /// The service to call first, then the alternatives to fail over to, in order.
    pub services: Vec<ServiceId>,
    /// Its input, rendered against `{"input": ..., "steps": {"<id>": {"output": ...}}}`.
    pub input: Template,
    /// Tasks that must succeed first.
    pub depends_on: Vec<StepId>,
    /// How failed attempts are retried.
    pub retry: RetryPolicy,
    /// Time limit of one attempt.
    pub timeout: Option<Duration>,
    /// Time limit of all attempts together.
    pub task_timeout: Option<Duration>,
    /// What its failure does to the run.
    pub on_error: ErrorPolicy,
}

/// A checked DAG of tasks with the run's output template.
#[derive(Debug, Clone)]
pub struct RunSpec {
    execution: ExecutionId,
    tasks: Vec<TaskSpec>,
    output: Template,
    deadline: Option<Duration>,
    index: HashMap<StepId, usize>,
}

/// Why a run spec was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SpecError {
    /// Two tasks share an id.
    #[error("step {0:?} appears twice")]
    Duplicate(StepId),
    /// A dependency or fallback names no task.
    #[error("step {step:?} refers to unknown step {unknown:?}")]
    Unknown {
        /// The referring task.
        step: StepId,
        /// The missing one.
        unknown: StepId,
    },
    /// A task has no service to call.
    #[error("step {0:?} names no service")]
    NoService(StepId),
    /// The dependencies loop.
    #[error("steps form a cycle through {0:?}")]
    Cycle(StepId),
}

impl RunSpec {
    /// Checks the tasks: unique ids, known dependencies and fallbacks, a service each, no cycle.
    pub fn new(
        execution: ExecutionId,
        tasks: Vec<TaskSpec>,
        output: Template,
        deadline: Option<Duration>,
    ) -> Result<Self, SpecError> {
        let mut index = HashMap::new();
        for (i, t) in tasks.iter().enumerate() {
            if index.insert(t.id.clone(), i).is_some() {
                return Err(SpecError::Duplicate(t.id.clone()));
            }
            if t.services.is_empty() {
                return Err(SpecError::NoService(t.id.clone()));
            }
        }
        for t in &tasks {
            let fallback = match &t.on_error {
                ErrorPolicy::Fallback(f) => Some(f),
                _ => None,
            };
            if let Some(unknown) = t.depends_on.iter().chain(fallback).find(|d| !index.contains_key(*d)) {
                return Err(SpecError::Unknown { step: t.id.clone(), unknown: unknown.clone() });
            }
        }
        // Kahn's algorithm: whatever is left unvisited lies on a cycle.
        let mut indegree: Vec<usize> = tasks.iter().map(|t| t.depends_on.len()).collect();
        let mut queue: Vec<usize> = (0..tasks.len()).filter(|&i| indegree[i] == 0).collect();
        let mut seen = 0;
        let dependents = dependents(&tasks, &index);
        while let Some(i) = queue.pop() {
            seen += 1;
            for &d in &dependents[i] {
                indegree[d] -= 1;
                if indegree[d] == 0 {
                    queue.push(d);
                }
            }
        }
        if seen < tasks.len() {
            let stuck = (0..tasks.len()).find(|&i| indegree[i] > 0).expect("an unvisited task");
            return Err(SpecError::Cycle(tasks[stuck].id.clone()));
        }
        Ok(Self { execution, tasks, output, deadline, index })
    }

    /// The tasks.
    pub fn tasks(&self) -> &[TaskSpec] {
        &self.tasks
    }
}

fn dependents(tasks: &[TaskSpec], index: &HashMap<StepId, usize>) -> Vec<Vec<usize>> {
    let mut dependents = vec![Vec::new(); tasks.len()];
    for (i, t) in tasks.iter().enumerate() {
        for d in &t.depends_on {
            dependents[index[d]].push(i);
        }
    }
    dependents
}

/// How a run ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Every task done; the run's output.
    Completed(Value),
    /// Stopped by a failure.
    Failed(String),
    /// Stopped on request.
    Cancelled(String),
}

/// How runs are executed.
#[derive(Debug, Clone)]
pub struct Config {
    /// Most tasks of one run in flight at once.
    pub max_in_flight_per_run: usize,
    /// Most tasks of all runs in flight at once (FIFO when waiting).
    pub max_in_flight: usize,
    /// Seed of the backoff jitter, for reproducible runs in tests; `None` seeds from the
    /// execution id.
    pub jitter_seed: Option<u64>,
    /// Retryable failures in a row that open a service's circuit breaker.
    pub breaker_threshold: u32,
    /// How long an open breaker keeps its service out before one probe call is let through.
    pub breaker_cool_down: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            max_in_flight_per_run: 64,
            max_in_flight: 1024,
            jitter_seed: None,
            breaker_threshold: 5,
            breaker_cool_down: Duration::from_secs(30),
        }
    }
}

impl Config {
    /// An executor calling services through `invoker` and reporting to `events`.
    pub fn build<I: Invoker>(
        self,
        invoker: Arc<I>,
        events: Arc<dyn EventSink<Event>>,
        clock: Arc<dyn Clock>,
    ) -> Executor<I> {
        let global = Arc::new(Semaphore::new(self.max_in_flight));
        let breakers = Arc::new(Breakers::new(self.breaker_threshold, self.breaker_cool_down));
        Executor { config: self, invoker, events, clock, global, breakers, service_limits: Arc::default() }
    }
}

/// Runs DAGs; cheap to clone, shared by all runs so the global limit holds across them.
pub struct Executor<I> {
    config: Config,
    invoker: Arc<I>,
    events: Arc<dyn EventSink<Event>>,
    clock: Arc<dyn Clock>,
    global: Arc<Semaphore>,
    breakers: Arc<Breakers>,
    service_limits: ServiceLimits,
}

/// Per-service in-flight limits (from registered capacity), FIFO when waiting.
type ServiceLimits = Arc<std::sync::Mutex<HashMap<ServiceId, Arc<Semaphore>>>>;

impl<I> Clone for Executor<I> {
    fn clone(&self) -> Self {
        Self {
            config: self.config.clone(),
            invoker: Arc::clone(&self.invoker),
            events: Arc::clone(&self.events),
            clock: Arc::clone(&self.clock),
            global: Arc::clone(&self.global),
            breakers: Arc::clone(&self.breakers),
            service_limits: Arc::clone(&self.service_limits),
        }
    }
}

impl<I> std::fmt::Debug for Executor<I> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Executor").field("config", &self.config).finish_non_exhaustive()
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Control {
    Running,
    Paused,
    Cancelled(String),
}

/// A run in progress: pause, resume, cancel, and await its outcome.
#[derive(Debug)]
pub struct RunHandle {
    control: watch::Sender<Control>,
    done: tokio::task::JoinHandle<Outcome>,
}

impl RunHandle {
    /// Stops dispatching; in-flight tasks finish and are reported.
    pub fn pause(&self) {
        self.control.send_if_modified(|c| std::mem::replace(c, Control::Paused) == Control::Running);
    }

    /// Dispatches again after a pause.
    pub fn resume(&self) {
        self.control.send_if_modified(|c| {
            let paused = *c == Control::Paused;
            if paused {
                *c = Control::Running;
            }
            paused
        });
    }

    /// Aborts in-flight calls and ends the run as cancelled.
    pub fn cancel(&self, reason: &str) {
        self.control.send_if_modified(|c| {
            let live = !matches!(c, Control::Cancelled(_));
            if live {
                *c = Control::Cancelled(reason.to_owned());
            }
            live
        });
    }

    /// Waits for the run to end.
    pub async fn outcome(self) -> Outcome {
        self.done.await.unwrap_or_else(|e| Outcome::Failed(format!("run task ended abnormally: {e}")))
    }
}

/// What every task of a run shares.
struct Shared<I> {
    execution: ExecutionId,
    invoker: Arc<I>,
    events: Arc<dyn EventSink<Event>>,
    clock: Arc<dyn Clock>,
    sequence: AtomicU64,
    control: watch::Receiver<Control>,
    jitter: parking::Mutex<SmallRng>,
    breakers: Arc<Breakers>,
    service_limits: ServiceLimits,
}

/// A tiny poison-free mutex for the jitter RNG.
mod parking {
    pub(crate) struct Mutex<T>(std::sync::Mutex<T>);
    impl<T> Mutex<T> {
        pub(crate) fn new(value: T) -> Self {
            Self(std::sync::Mutex::new(value))
        }
        pub(crate) fn lock(&self) -> std::sync::MutexGuard<'_, T> {
            self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
        }
    }
}

impl<I> Shared<I> {
    fn emit(&self, kind: EventKind) {
        let sequence = self.sequence.fetch_add(1, Ordering::AcqRel) + 1;
        self.events.publish(Event { execution: self.execution, sequence, at: self.clock.now(), kind });
    }

    /// Waits while paused; false once cancelled.
    async fn wait_unless_paused(&self) -> bool {
        let mut control = self.control.clone();
        loop {
            match &*control.borrow_and_update() {
                Control::Running => return true,
                Control::Cancelled(_) => return false,
                Control::Paused => {}
            }
            if control.changed().await.is_err() {
                return false;
            }
        }
    }

    /// Full jitter: uniform in `[0, min(max, initial * multiplier^(attempt - 1))]`.
    fn backoff(&self, retry: &RetryPolicy, attempt: u32) -> Duration {
        let cap = retry.initial_backoff.as_secs_f64() * retry.multiplier.max(1.0).powi(attempt as i32 - 1);
        let cap = cap.min(retry.max_backoff.as_secs_f64());
        Duration::from_secs_f64(self.jitter.lock().random_range(0.0..=cap.max(0.0)))
    }
}

impl<I: Invoker> Executor<I> {
    /// Caps the calls in flight to `service` across all runs (its registered capacity).
    pub fn limit_service(&self, service: &ServiceId, max_in_flight: usize) {
        let mut limits = self.service_limits.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        limits.insert(service.clone(), Arc::new(Semaphore::new(max_in_flight.max(1))));
    }

    /// The state of `service`'s circuit breaker.
    pub fn breaker_state(&self, service: &ServiceId) -> BreakerState {
        self.breakers.state(service)
    }

    /// Starts `spec` with `input`; tasks in `completed` (with their outputs) are not run again.
    pub fn start(&self, spec: RunSpec, input: Value, completed: BTreeMap<StepId, Value>) -> RunHandle {
        let (control, receiver) = watch::channel(Control::Running);
        let rng = match self.config.jitter_seed {
            Some(seed) => SmallRng::seed_from_u64(seed),
            // UUIDv7s carry 74 random bits: enough to decorrelate the jitter of runs.
            None => {
                let (high, low) = spec.execution.as_uuid().as_u64_pair();
                SmallRng::seed_from_u64(high ^ low)
            }
        };
        let shared = Arc::new(Shared {
            execution: spec.execution,
            invoker: Arc::clone(&self.invoker),
            events: Arc::clone(&self.events),
            clock: Arc::clone(&self.clock),
            sequence: AtomicU64::new(0),
            control: receiver,
            jitter: parking::Mutex::new(rng),
            breakers: Arc::clone(&self.breakers),
            service_limits: Arc::clone(&self.service_limits),
        });
        let (limit, global) = (self.config.max_in_flight_per_run.max(1), Arc::clone(&self.global));
        let done = tokio::spawn(async move {
            let deadline = spec.deadline;
            let run = drive(Arc::clone(&shared), spec, input, completed, limit, global);
            let outcome = match deadline {
                Some(d) => tokio::time::timeout(d, run).await.unwrap_or_else(|_| {
                    Outcome::Failed(format!("run deadline of {} exceeded", baton_core::duration::format(d)))
                }),
                None => run.await,
            };
            shared.emit(match &outcome {
                Outcome::Completed(output) => EventKind::Completed { output: output.clone() },
                Outcome::Failed(error) => EventKind::Failed { error: error.clone() },
                Outcome::Cancelled(reason) => EventKind::Cancelled { reason: reason.clone() },
            });
            outcome
        });
        RunHandle { control, done }
    }
}

fn context(input: &Value, outputs: &HashMap<usize, Value>, spec: &RunSpec, reads: &[usize]) -> Value {
    let steps: Map<String, Value> = reads
        .iter()
        .filter_map(|r| outputs.get(r).map(|o| (spec.tasks[*r].id.to_string(), serde_json::json!({"output": o}))))
        .collect();
    serde_json::json!({"input": input, "steps": steps})
}

async fn drive<I: Invoker>(
    shared: Arc<Shared<I>>,
    spec: RunSpec,
    input: Value,
    completed: BTreeMap<StepId, Value>,
    limit: usize,
    global: Arc<Semaphore>,
) -> Outcome {
    let n = spec.tasks.len();
    let dependents = dependents(&spec.tasks, &spec.index);
    let mut waiting: Vec<usize> = spec.tasks.iter().map(|t| t.depends_on.len()).collect();
    // The steps each task's input reads: its dependencies and whatever its expressions name.
    let reads: Vec<Vec<usize>> = spec
        .tasks
        .iter()
        .map(|t| {
            let mut reads: HashSet<usize> = t.depends_on.iter().map(|d| spec.index[d]).collect();
            reads.extend(
                t.input
                    .referenced_steps()
                    .iter()
                    .filter_map(|s| s.parse::<StepId>().ok())
                    .filter_map(|s| spec.index.get(&s).copied()),
            );
            reads.into_iter().collect()
        })
        .collect();
    let fallback_only: HashSet<usize> = spec
        .tasks
        .iter()
        .filter_map(|t| match &t.on_error {
            ErrorPolicy::Fallback(f) => Some(spec.index[f]),
            _ => None,
        })
        .collect();
    let mut outputs: HashMap<usize, Value> = HashMap::new();
    let mut ready: VecDeque<usize> = VecDeque::new();
    let mut skipped: HashSet<usize> = HashSet::new();
    // Which primary a running fallback stands in for.
    let mut standing_in: HashMap<usize, usize> = HashMap::new();

    if completed.is_empty() {
        shared.emit(EventKind::Started { input: input.clone() });
    }
    let finish = |i: usize, waiting: &mut Vec<usize>, ready: &mut VecDeque<usize>, skipped: &HashSet<usize>| {
        for &d in &dependents[i] {
            waiting[d] -= 1;
            if waiting[d] == 0 && !skipped.contains(&d) && !fallback_only.contains(&d) {
                ready.push_back(d);
            }
        }
    };
    for (id, output) in completed {
        if let Some(&i) = spec.index.get(&id) {
            outputs.insert(i, output);
        }
    }
    let done_before: Vec<usize> = outputs.keys().copied().collect();
    for (i, &deps) in waiting.iter().enumerate() {
        if deps == 0 && !outputs.contains_key(&i) && !fallback_only.contains(&i) {
            ready.push_back(i);
        }
    }
    for i in done_before {
        finish(i, &mut waiting, &mut ready, &skipped);
    }
    ready.retain(|i| !outputs.contains_key(i));

    // Shared with the task futures, so a dispatch clones a pointer, not the task.
    let tasks: Vec<Arc<TaskSpec>> = spec.tasks.iter().cloned().map(Arc::new).collect();
    let mut running: JoinSet<(usize, Result<Value, String>)> = JoinSet::new();
    let mut control = shared.control.clone();
    let mut paused = false;
    loop {
        // Dispatch while running and under the run's limit; the global limit queues FIFO.
        while !paused && running.len() < limit {
            let Some(i) = ready.pop_front() else { break };
            let task = Arc::clone(&tasks[i]);
            // A template without expressions needs no context: skip building one.
            let context = if reads[i].is_empty() && task.input.expressions().is_empty() {
                Value::Null
            } else {
                context(&input, &outputs, &spec, &reads[i])
            };
            let payload = match task.input.render(&context) {
                Ok(payload) => payload,
                Err(e) => {
                    let error = format!("step {} input: {e}", task.id);
                    shared.emit(EventKind::TaskFailed {
                        step: task.id.clone(),
                        attempt: 0,
                        error: error.clone(),
                        retryable: false,
                    });
                    return Outcome::Failed(error);
                }
            };
            // Fast path without a select when a permit is free; else wait in FIFO order, unless
            // the run is paused or cancelled meanwhile.
            let permit = match Arc::clone(&global).try_acquire_owned() {
                Ok(permit) => permit,
                Err(_) => tokio::select! {
                    permit = Arc::clone(&global).acquire_owned() => permit.expect("the global semaphore is never closed"),
                    _ = control.changed() => {
                        ready.push_front(i);
                        break;
                    }
                },
            };
            let shared = Arc::clone(&shared);
            running.spawn(async move {
                let result = run_task(&shared, &task, payload).await;
                drop(permit);
                (i, result)
            });
        }
        if let Control::Cancelled(reason) = &*control.borrow() {
            running.abort_all();
            return Outcome::Cancelled(reason.clone());
        }
        // Done when nothing runs and nothing can be dispatched; a paused run waits instead.
        if running.is_empty() && ready.is_empty() && !paused {
            break;
        }
        tokio::select! {
            joined = running.join_next(), if !running.is_empty() => {
                let Some(Ok((i, result))) = joined else { continue };
                let primary = standing_in.remove(&i).unwrap_or(i);
                match result {
                    Ok(output) => {
                        outputs.insert(primary, output);
                        finish(primary, &mut waiting, &mut ready, &skipped);
                    }
                    Err(error) => match &spec.tasks[i].on_error {
                        ErrorPolicy::Fail => {
                            running.abort_all();
                            return Outcome::Failed(format!("step {} failed: {error}", spec.tasks[i].id));
                        }
                        ErrorPolicy::Continue => {
                            skip_dependents(&shared, &spec, &dependents, primary, &mut skipped);
                        }
                        ErrorPolicy::Fallback(f) => {
                            let f = spec.index[f];
                            standing_in.insert(f, primary);
                            ready.push_front(f);
                        }
                    },
                }
            }
            changed = control.changed() => {
                if changed.is_err() {
                    running.abort_all();
                    return Outcome::Cancelled("the run's handle was dropped".to_owned());
                }
                let now = control.borrow().clone();
                match now {
                    Control::Paused if !paused => { paused = true; shared.emit(EventKind::Paused); }
                    Control::Running if paused => { paused = false; shared.emit(EventKind::Resumed); }
                    _ => {}
                }
            }
        }
    }
    let all: Vec<usize> = (0..n).collect();
    match spec.output.render(&context(&input, &outputs, &spec, &all)) {
        Ok(output) => Outcome::Completed(output),
        Err(e) => Outcome::Failed(format!("run output: {e}")),
    }
}

/// Marks every task downstream of `failed` skipped, with an event each.
fn skip_dependents<I>(
    shared: &Shared<I>,
    spec: &RunSpec,
    dependents: &[Vec<usize>],
    failed: usize,
    skipped: &mut HashSet<usize>,
) {
    let mut stack = dependents[failed].clone();
    while let Some(d) = stack.pop() {
        if skipped.insert(d) {
            let reason = format!("needs {}, which failed", spec.tasks[failed].id);
            shared.emit(EventKind::TaskSkipped { step: spec.tasks[d].id.clone(), reason });
            stack.extend(dependents[d].iter().copied());
        }
    }
}

/// Attempts one task: each attempt goes to the current candidate service; any failure moves
/// to the next candidate (failover); retryable failures back off before the next attempt.
async fn run_task<I: Invoker>(shared: &Shared<I>, task: &TaskSpec, payload: Value) -> Result<Value, String> {
    let attempts = async {
        let mut candidate = 0;
        let mut last = String::from("no attempt made");
        let max = task.retry.max_attempts.max(1);
        for attempt in 1..=max {
            if !shared.wait_unless_paused().await {
                return Err("cancelled".to_owned());
            }
            // Failover order, skipping services whose breaker is open.
            let count = task.services.len();
            let Some((pick, admission)) = (0..count)
                .map(|k| (candidate + k) % count)
                .find_map(|k| shared.breakers.admit(&task.services[k]).map(|a| (k, a)))
            else {
                let failure = Failure::retryable("circuit_open", "every candidate service's circuit breaker is open");
                shared.emit(EventKind::TaskFailed {
                    step: task.id.clone(),
                    attempt,
                    error: failure.to_string(),
                    retryable: true,
                });
                last = failure.to_string();
                if attempt < max {
                    tokio::time::sleep(shared.backoff(&task.retry, attempt)).await;
                }
                continue;
            };
            candidate = pick;
            let service = task.services[pick].clone();
            let limit =
                shared.service_limits.lock().unwrap_or_else(std::sync::PoisonError::into_inner).get(&service).cloned();
            let _service_permit = match limit {
                Some(limit) => Some(limit.acquire_owned().await.expect("service semaphores are never closed")),
                None => None,
            };
            shared.emit(EventKind::TaskScheduled { step: task.id.clone(), attempt, service: service.clone() });
            let call = Call {
                execution: shared.execution,
                step: task.id.clone(),
                attempt,
                service: service.clone(),
                payload: payload.clone(),
                idempotency_key: format!("{}/{}", shared.execution, task.id),
            };
            let result = match task.timeout {
                Some(limit) => tokio::time::timeout(limit, shared.invoker.invoke(call)).await.unwrap_or_else(|_| {
                    Err(Failure::retryable(
                        "timeout",
                        format!("attempt timed out after {}", baton_core::duration::format(limit)),
                    ))
                }),
                None => shared.invoker.invoke(call).await,
            };
            // Only failures that say something about the service's health count against it.
            admission.record(result.as_ref().map_or_else(|f| !f.retryable, |_| true));
            match result {
                Ok(output) => {
                    shared.emit(EventKind::TaskSucceeded { step: task.id.clone(), attempt, output: output.clone() });
                    return Ok(output);
                }
                Err(failure) => {
                    let retryable = failure.retryable && !task.retry.non_retryable.contains(&failure.class);
                    shared.emit(EventKind::TaskFailed {
                        step: task.id.clone(),
                        attempt,
                        error: failure.to_string(),
                        retryable,
                    });
                    last = failure.to_string();
                    candidate += 1;
                    // A permanent failure ends the task unless an alternative is left to try.
                    if !retryable && candidate >= task.services.len() {
                        return Err(last);
                    }
                    if attempt < max && retryable {
                        tokio::time::sleep(shared.backoff(&task.retry, attempt)).await;
                    }
                }
            }
        }
        Err(last)
    };
    match task.task_timeout {
        Some(limit) => tokio::time::timeout(limit, attempts)
            .await
            .unwrap_or_else(|_| Err(format!("task timed out after {}", baton_core::duration::format(limit)))),
        None => attempts.await,
    }
}
