//! One run of a DAG: ready-queue dispatch, retries with backoff, timeouts, failover, error
//! policies, pause/resume/cancel, resumption from completed tasks.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use baton_core::{
    CallRequest, CallTemplate, Clock, ErrorPolicy, Event, EventKind, EventSink, ExecutionId, ExecutionTrace, Recorded,
    RetryPolicy, ServiceId, StepId, Template, Timestamp, TraceContext,
};
use futures_util::FutureExt;
use futures_util::stream::{FuturesUnordered, StreamExt};
use parking_lot::Mutex;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use serde_json::{Map, Value};
use tokio::sync::{Semaphore, SemaphorePermit, watch};

use crate::breaker::{BreakerState, Breakers};
use crate::invoker::{Call, CallTrace, Failure, Invoker};

/// One task of a run.
#[derive(Debug, Clone)]
pub struct TaskSpec {
    /// Its id.
    pub id: StepId,
    /// The service to call first, then the alternatives to fail over to, in order.
    pub services: Vec<ServiceId>,
    /// Its input, rendered against `{"input": ..., "steps": {"<id>": {"output": ...}}}`.
    pub input: Template,
    /// How it shapes its call (HTTP method, path, query, headers; gRPC method), rendered
    /// against the same context; `None`: the protocol's plain call.
    pub call: Option<CallTemplate>,
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

/// A checked DAG of tasks with the run's output template, for one execution.
///
/// The checked DAG is shared: [`RunSpec::for_execution`] gives another execution of the same
/// DAG without checking or copying it again, as when many executions start from one version
/// of a workflow definition.
#[derive(Debug, Clone)]
pub struct RunSpec {
    execution: ExecutionId,
    dag: Arc<Dag>,
    /// The trace context of the caller that started the execution.
    caller: Option<TraceContext>,
}

/// The checked DAG and what scheduling needs of it, worked out once.
#[derive(Debug)]
struct Dag {
    tasks: Vec<TaskSpec>,
    output: Template,
    deadline: Option<Duration>,
    index: HashMap<StepId, usize>,
    /// What scheduling needs, worked out once here rather than on every run.
    dependents: Vec<Vec<usize>>,
    /// The steps each task's input reads: its dependencies and whatever its expressions name.
    reads: Vec<Vec<usize>>,
    /// Tasks that only run in place of a failed step.
    fallback_only: Vec<bool>,
    /// The inputs of tasks whose input has no expression, rendered once here.
    static_input: Vec<Option<Value>>,
    /// The calls of tasks whose call template has no expression, rendered once here.
    static_call: Vec<Option<Arc<CallRequest>>>,
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
        let reads = tasks
            .iter()
            .map(|t| {
                let mut reads: Vec<usize> = t.depends_on.iter().map(|d| index[d]).collect();
                let call_reads = t.call.as_ref().map(CallTemplate::referenced_steps).unwrap_or_default();
                reads.extend(
                    t.input
                        .referenced_steps()
                        .iter()
                        .chain(&call_reads)
                        .filter_map(|s| s.parse::<StepId>().ok())
                        .filter_map(|s| index.get(&s).copied()),
                );
                reads.sort_unstable();
                reads.dedup();
                reads
            })
            .collect();
        let mut fallback_only = vec![false; tasks.len()];
        for t in &tasks {
            if let ErrorPolicy::Fallback(f) = &t.on_error {
                fallback_only[index[f]] = true;
            }
        }
        let static_input = tasks
            .iter()
            .map(|t| if t.input.expressions().is_empty() { t.input.render(&Value::Null).ok() } else { None })
            .collect();
        let static_call = tasks
            .iter()
            .map(|t| match &t.call {
                Some(call) if call.is_static() => call.render(&Value::Null).ok().map(Arc::new),
                _ => None,
            })
            .collect();
        let dag = Dag { tasks, output, deadline, index, dependents, reads, fallback_only, static_input, static_call };
        Ok(Self { execution, dag: Arc::new(dag), caller: None })
    }

    /// The same checked DAG for another execution.
    pub fn for_execution(&self, execution: ExecutionId) -> Self {
        Self { execution, dag: Arc::clone(&self.dag), caller: None }
    }

    /// The run continues `caller`'s trace: its calls carry `traceparent` with the caller's
    /// trace id (else the execution's own trace).
    pub fn traced(mut self, caller: Option<TraceContext>) -> Self {
        self.caller = caller;
        self
    }

    /// The execution this spec runs.
    pub fn execution(&self) -> ExecutionId {
        self.execution
    }

    /// The tasks.
    pub fn tasks(&self) -> &[TaskSpec] {
        &self.dag.tasks
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
        Executor {
            config: self,
            invoker,
            events,
            clock,
            global,
            breakers,
            service_limits: Arc::default(),
            failovers: Arc::default(),
        }
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
    failovers: Arc<AtomicU64>,
}

/// Per-service in-flight limits (from registered capacity), FIFO when waiting.
type ServiceLimits = Arc<Limits>;

#[derive(Debug, Default)]
struct Limits {
    semaphores: Mutex<HashMap<ServiceId, Arc<Semaphore>>>,
    /// Whether any service is limited: until one is, no call looks in the map.
    any: std::sync::atomic::AtomicBool,
}

impl Limits {
    fn set(&self, service: &ServiceId, max_in_flight: usize) {
        self.semaphores.lock().insert(service.clone(), Arc::new(Semaphore::new(max_in_flight.max(1))));
        self.any.store(true, Ordering::Release);
    }

    fn get(&self, service: &ServiceId) -> Option<Arc<Semaphore>> {
        if !self.any.load(Ordering::Acquire) {
            return None;
        }
        self.semaphores.lock().get(service).cloned()
    }
}

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
            failovers: Arc::clone(&self.failovers),
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
    /// The time events are stamped with, read from the clock once per turn of the run rather
    /// than once per event: a clock read costs as much as dispatching a task.
    now: Mutex<Timestamp>,
    control: watch::Receiver<Control>,
    jitter: Mutex<SmallRng>,
    breakers: Arc<Breakers>,
    service_limits: ServiceLimits,
    global: Arc<Semaphore>,
    failovers: Arc<AtomicU64>,
    trace: ExecutionTrace,
}

impl<I> Shared<I> {
    fn emit(&self, kind: EventKind) {
        self.events.publish(self.event(kind));
    }

    /// Hands over an event whose effects wait for the sink to keep it.
    fn record(&self, kind: EventKind) -> Recorded {
        self.events.record(self.event(kind))
    }

    fn event(&self, kind: EventKind) -> Event {
        let sequence = self.sequence.fetch_add(1, Ordering::AcqRel) + 1;
        let at = *self.now.lock();
        Event { execution: self.execution, sequence, at, kind }
    }

    /// Reads the clock for the events that follow.
    fn tick(&self) {
        *self.now.lock() = self.clock.now();
    }

    /// Waits while paused; false once cancelled.
    async fn wait_unless_paused(&self) -> bool {
        // The common case, running, is one read of the control cell.
        match &*self.control.borrow() {
            Control::Running => return true,
            Control::Cancelled(_) => return false,
            Control::Paused => {}
        }
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

    /// A permit of the global limit, waited for in FIFO order; given up while the run is
    /// paused (so a paused run holds no permit it is not using), `None` once cancelled.
    async fn global_permit(&self) -> Option<SemaphorePermit<'_>> {
        if let Ok(permit) = self.global.try_acquire() {
            return Some(permit);
        }
        let mut control = self.control.clone();
        loop {
            if !self.wait_unless_paused().await {
                return None;
            }
            control.borrow_and_update();
            tokio::select! {
                permit = self.global.acquire() => return Some(permit.expect("the global semaphore is never closed")),
                _ = control.changed() => {}
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
        self.service_limits.set(service, max_in_flight);
    }

    /// Attempts that went to another service than the attempt before them, which failed:
    /// a pinned step's alternative or another service matching its capability query.
    pub fn failovers(&self) -> u64 {
        self.failovers.load(Ordering::Relaxed)
    }

    /// The state of `service`'s circuit breaker.
    pub fn breaker_state(&self, service: &ServiceId) -> BreakerState {
        self.breakers.state(service)
    }

    /// Starts `spec` with `input`; tasks in `completed` (with their outputs) are not run again.
    ///
    /// A run is one tokio task: its calls are futures it polls itself, so dispatching a task
    /// costs no spawn. An in-process handler that computes for long should move that work to
    /// `spawn_blocking` or its own task; runs themselves spread over the runtime's threads.
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
        let shared = Shared {
            execution: spec.execution,
            invoker: Arc::clone(&self.invoker),
            events: Arc::clone(&self.events),
            clock: Arc::clone(&self.clock),
            sequence: AtomicU64::new(0),
            now: Mutex::new(self.clock.now()),
            control: receiver,
            jitter: Mutex::new(rng),
            breakers: Arc::clone(&self.breakers),
            service_limits: Arc::clone(&self.service_limits),
            global: Arc::clone(&self.global),
            failovers: Arc::clone(&self.failovers),
            trace: ExecutionTrace::new(spec.execution, spec.caller.as_ref()),
        };
        let limit = self.config.max_in_flight_per_run.max(1);
        let done = tokio::spawn(async move {
            let run = drive(&shared, &spec.dag, input, completed, limit);
            let outcome = match spec.dag.deadline {
                Some(d) => tokio::time::timeout(d, run).await.unwrap_or_else(|_| {
                    Outcome::Failed(format!("run deadline of {} exceeded", baton_core::duration::format(d)))
                }),
                None => run.await,
            };
            shared.tick();
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

fn context(input: &Value, outputs: &[Option<Value>], spec: &Dag, reads: &[usize]) -> Value {
    let steps: Map<String, Value> = reads
        .iter()
        .filter_map(|&r| {
            outputs[r].as_ref().map(|o| (spec.tasks[r].id.to_string(), serde_json::json!({ "output": o })))
        })
        .collect();
    serde_json::json!({"input": input, "steps": steps})
}

/// The scheduling state of one run.
struct Schedule<'a> {
    spec: &'a Dag,
    /// Unfinished dependencies per task.
    waiting: Vec<usize>,
    outputs: Vec<Option<Value>>,
    skipped: Vec<bool>,
    ready: VecDeque<usize>,
    /// Which primary a running fallback stands in for.
    standing_in: HashMap<usize, usize>,
}

impl<'a> Schedule<'a> {
    fn new(spec: &'a Dag, completed: BTreeMap<StepId, Value>) -> Self {
        let n = spec.tasks.len();
        let mut schedule = Self {
            spec,
            waiting: spec.tasks.iter().map(|t| t.depends_on.len()).collect(),
            outputs: vec![None; n],
            skipped: vec![false; n],
            ready: VecDeque::new(),
            standing_in: HashMap::new(),
        };
        let mut done_before = Vec::new();
        for (id, output) in completed {
            if let Some(&i) = spec.index.get(&id) {
                schedule.outputs[i] = Some(output);
                done_before.push(i);
            }
        }
        for i in 0..n {
            if schedule.waiting[i] == 0 && schedule.outputs[i].is_none() && !spec.fallback_only[i] {
                schedule.ready.push_back(i);
            }
        }
        for i in done_before {
            schedule.release_dependents(i);
        }
        let outputs = &schedule.outputs;
        schedule.ready.retain(|&i| outputs[i].is_none());
        schedule
    }

    /// Counts `i` done for its dependents; those with nothing left to wait for become ready.
    fn release_dependents(&mut self, i: usize) {
        for &d in &self.spec.dependents[i] {
            self.waiting[d] -= 1;
            if self.waiting[d] == 0 && !self.skipped[d] && !self.spec.fallback_only[d] {
                self.ready.push_back(d);
            }
        }
    }

    /// Marks every task downstream of `failed` skipped, with an event each.
    fn skip_dependents<I>(&mut self, shared: &Shared<I>, failed: usize) {
        let mut stack = self.spec.dependents[failed].clone();
        while let Some(d) = stack.pop() {
            if !std::mem::replace(&mut self.skipped[d], true) {
                let reason = format!("needs {}, which failed", self.spec.tasks[failed].id);
                shared.emit(EventKind::TaskSkipped { step: self.spec.tasks[d].id.clone(), reason });
                stack.extend(self.spec.dependents[d].iter().copied());
            }
        }
    }

    /// The rendered input and call of task `i`, or the run's failure naming the step.
    fn payload<I>(
        &self,
        shared: &Shared<I>,
        input: &Value,
        i: usize,
    ) -> Result<(Value, Option<Arc<CallRequest>>), Outcome> {
        let task = &self.spec.tasks[i];
        let static_call = &self.spec.static_call[i];
        let dynamic_call = task.call.is_some() && static_call.is_none();
        let context = if self.spec.static_input[i].is_none() || dynamic_call {
            Some(context(input, &self.outputs, self.spec, &self.spec.reads[i]))
        } else {
            None
        };
        let fail = |what: &str, e: baton_core::EvalError| {
            let error = format!("step {} {what}: {e}", task.id);
            shared.emit(EventKind::TaskFailed {
                step: task.id.clone(),
                attempt: 0,
                error: error.clone(),
                retryable: false,
            });
            Outcome::Failed(error)
        };
        let payload = match (&self.spec.static_input[i], &context) {
            (Some(payload), _) => payload.clone(),
            (None, Some(context)) => task.input.render(context).map_err(|e| fail("input", e))?,
            (None, None) => unreachable!("a context is made for a dynamic input"),
        };
        let call = match (&task.call, static_call, &context) {
            (None, ..) => None,
            (Some(_), Some(call), _) => Some(Arc::clone(call)),
            (Some(template), None, Some(context)) => {
                Some(Arc::new(template.render(context).map_err(|e| fail("call", e))?))
            }
            (Some(_), None, None) => unreachable!("a context is made for a dynamic call"),
        };
        Ok((payload, call))
    }

    /// Takes in how task `i` ended; `Some` when that ends the run.
    fn settle<I>(&mut self, shared: &Shared<I>, i: usize, result: Result<Value, String>) -> Option<Outcome> {
        let primary = self.standing_in.remove(&i).unwrap_or(i);
        match result {
            Ok(output) => {
                self.outputs[primary] = Some(output);
                self.release_dependents(primary);
            }
            Err(error) => match &self.spec.tasks[i].on_error {
                ErrorPolicy::Fail => {
                    return Some(Outcome::Failed(format!("step {} failed: {error}", self.spec.tasks[i].id)));
                }
                ErrorPolicy::Continue => self.skip_dependents(shared, primary),
                ErrorPolicy::Fallback(f) => {
                    let f = self.spec.index[f];
                    self.standing_in.insert(f, primary);
                    self.ready.push_front(f);
                }
            },
        }
        None
    }
}

/// Tasks settled on their first poll between two yields of a run to the runtime.
const INLINE_BUDGET: u64 = 256;
/// Tasks settled on their first poll between two clock reads.
const CLOCK_EVERY: u64 = 16;

async fn drive<I: Invoker>(
    shared: &Shared<I>,
    spec: &Dag,
    input: Value,
    completed: BTreeMap<StepId, Value>,
    limit: usize,
) -> Outcome {
    if completed.is_empty() {
        shared.tick();
        shared.emit(EventKind::Started { input: input.clone() });
    }
    let mut schedule = Schedule::new(spec, completed);
    // In-flight tasks; dropping the set (on failure or cancel) abandons their calls.
    let mut running = FuturesUnordered::new();
    let mut control = shared.control.clone();
    let mut paused = false;
    let mut settled_inline: u64 = 0;
    'turn: loop {
        // The control cell is read on every turn, so a busy run still sees pause and cancel.
        match &*control.borrow_and_update() {
            Control::Cancelled(reason) => return Outcome::Cancelled(reason.clone()),
            Control::Paused if !paused => {
                paused = true;
                shared.emit(EventKind::Paused);
            }
            Control::Running if paused => {
                paused = false;
                shared.emit(EventKind::Resumed);
            }
            _ => {}
        }
        // Dispatch while running and under the run's limit; the global limit queues FIFO
        // inside each task's future.
        while !paused && running.len() < limit {
            let Some(i) = schedule.ready.pop_front() else { break };
            if settled_inline.is_multiple_of(CLOCK_EVERY) {
                shared.tick();
            }
            let (payload, request) = match schedule.payload(shared, &input, i) {
                Ok(rendered) => rendered,
                Err(outcome) => return outcome,
            };
            // A call that finishes on its first poll (in-process work, a cached answer) is
            // settled on the spot; only a pending one joins the set. The set polls it again
            // with its own waker, and a future only wakes the waker of its latest poll.
            let mut task = Box::pin(dispatch(shared, i, &spec.tasks[i], payload, request));
            match task.as_mut().now_or_never() {
                Some((i, result)) => {
                    if let Some(outcome) = schedule.settle(shared, i, result) {
                        return outcome;
                    }
                    settled_inline += 1;
                    // Let the thread's other tasks in now and then, and look at the control cell.
                    if settled_inline.is_multiple_of(INLINE_BUDGET) {
                        tokio::task::yield_now().await;
                        continue 'turn;
                    }
                }
                None => running.push(task),
            }
        }
        // Done when nothing runs and nothing can be dispatched; a paused run waits instead.
        if running.is_empty() && schedule.ready.is_empty() && !paused {
            break;
        }
        tokio::select! {
            biased;
            // Every poll of the set reads the clock first: its tasks may have waited long.
            next = std::future::poll_fn(|cx| {
                shared.tick();
                running.poll_next_unpin(cx)
            }), if !running.is_empty() => {
                // Settle every task that has finished before turning to dispatch again.
                let mut next = next;
                while let Some((i, result)) = next {
                    if let Some(outcome) = schedule.settle(shared, i, result) {
                        return outcome;
                    }
                    shared.tick();
                    next = running.next().now_or_never().flatten();
                }
            }
            changed = control.changed() => {
                if changed.is_err() {
                    return Outcome::Cancelled("the run's handle was dropped".to_owned());
                }
            }
        }
    }
    if spec.output.expressions().is_empty() {
        return match spec.output.render(&Value::Null) {
            Ok(output) => Outcome::Completed(output),
            Err(e) => Outcome::Failed(format!("run output: {e}")),
        };
    }
    let all: Vec<usize> = (0..spec.tasks.len()).collect();
    match spec.output.render(&context(&input, &schedule.outputs, spec, &all)) {
        Ok(output) => Outcome::Completed(output),
        Err(e) => Outcome::Failed(format!("run output: {e}")),
    }
}

/// Task `index` from the global limit's permit to its result.
async fn dispatch<'a, I: Invoker>(
    shared: &'a Shared<I>,
    index: usize,
    task: &'a TaskSpec,
    payload: Value,
    request: Option<Arc<CallRequest>>,
) -> (usize, Result<Value, String>) {
    let Some(_permit) = shared.global_permit().await else { return (index, Err("cancelled".to_owned())) };
    (index, run_task(shared, task, payload, request).await)
}

/// The service an attempt goes to.
struct Pick<'a> {
    /// Its place in the task's service list (a pinned service or a stand-in).
    index: usize,
    /// The service called: a pinned one, or one its stand-in resolved to.
    service: ServiceId,
    admission: crate::breaker::Admission<'a>,
    /// Whether a candidate this task has not tried is left besides it.
    untried_left: bool,
}

/// Picks the service of an attempt: the task's services in failover order from `candidate`,
/// each resolved through the invoker (a capability query's stand-in becomes the matching
/// services, best first), preferring services this task has not tried and skipping those
/// whose breaker is open.
async fn pick<'a, I: Invoker>(
    shared: &'a Shared<I>,
    task: &TaskSpec,
    candidate: usize,
    tried: &[ServiceId],
    deadline: Option<tokio::time::Instant>,
) -> Result<Pick<'a>, Failure> {
    let count = task.services.len();
    let mut resolve_failure = None;
    for k in 0..count {
        let index = (candidate + k) % count;
        let target = &task.services[index];
        let resolving = shared.invoker.resolve(target, &task.id);
        let resolved = match deadline {
            Some(at) => tokio::time::timeout_at(at, resolving).await.unwrap_or_else(|_| {
                Err(Failure::retryable("timeout", "attempt timed out waiting for a service to call"))
            }),
            None => resolving.await,
        };
        let resolved = match resolved {
            Ok(resolved) => resolved,
            Err(failure) => {
                resolve_failure = Some(failure);
                continue;
            }
        };
        let candidates = match &resolved {
            Some(services) => services.as_slice(),
            None => std::slice::from_ref(target),
        };
        let fresh = candidates.iter().filter(|s| !tried.contains(s));
        let again = candidates.iter().filter(|s| tried.contains(s));
        for service in fresh.chain(again) {
            if let Some(admission) = shared.breakers.admit(service) {
                let untried_left = match &resolved {
                    Some(services) => services.iter().any(|s| s != service && !tried.contains(s)),
                    None => task.services.iter().any(|s| s != service && !tried.contains(s)),
                };
                return Ok(Pick { index, service: service.clone(), admission, untried_left });
            }
        }
    }
    Err(resolve_failure
        .unwrap_or_else(|| Failure::retryable("circuit_open", "every candidate service's circuit breaker is open")))
}

/// Attempts one task: each attempt goes to the picked service (see [`pick`]); a failure moves
/// the next attempt to the next candidate (failover), at once while one is left untried, after
/// the retry policy's backoff once all have been tried.
async fn run_task<I: Invoker>(
    shared: &Shared<I>,
    task: &TaskSpec,
    payload: Value,
    request: Option<Arc<CallRequest>>,
) -> Result<Value, String> {
    let attempts = async {
        let mut candidate = 0;
        // Services that failed an attempt of this task, and the latest of them.
        let mut tried: Vec<ServiceId> = Vec::new();
        let mut last = String::from("no attempt made");
        let max = task.retry.max_attempts.max(1);
        for attempt in 1..=max {
            if !shared.wait_unless_paused().await {
                return Err("cancelled".to_owned());
            }
            let deadline = task.timeout.map(|limit| tokio::time::Instant::now() + limit);
            let Pick { index, service, admission, untried_left } =
                match pick(shared, task, candidate, &tried, deadline).await {
                    Ok(pick) => pick,
                    Err(failure) => {
                        let retryable = failure.retryable && !task.retry.non_retryable.contains(&failure.class);
                        shared.emit(EventKind::TaskFailed {
                            step: task.id.clone(),
                            attempt,
                            error: failure.to_string(),
                            retryable,
                        });
                        last = failure.to_string();
                        if !retryable {
                            return Err(last);
                        }
                        if attempt < max {
                            tokio::time::sleep(shared.backoff(&task.retry, attempt)).await;
                        }
                        continue;
                    }
                };
            candidate = index;
            if tried.last().is_some_and(|previous| *previous != service) {
                shared.failovers.fetch_add(1, Ordering::Relaxed);
            }
            let limit = shared.service_limits.get(&service);
            let service_permit = match limit {
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
                request: request.clone(),
                timeout: task.timeout,
                trace: Some(CallTrace {
                    traceparent: shared.trace.traceparent(shared.trace.attempt(&task.id, attempt)),
                    tracestate: shared.trace.tracestate().map(Arc::from),
                }),
            };
            let result = match (deadline, task.timeout) {
                (Some(at), Some(limit)) => {
                    tokio::time::timeout_at(at, shared.invoker.invoke(call)).await.unwrap_or_else(|_| {
                        Err(Failure::retryable(
                            "timeout",
                            format!("attempt timed out after {}", baton_core::duration::format(limit)),
                        ))
                    })
                }
                _ => shared.invoker.invoke(call).await,
            };
            // Only failures that say something about the service's health count against it.
            match &result {
                // Dropped unrecorded: a half-open probe slot is given back.
                Err(failure) if failure.unreached => drop(admission),
                result => admission.record(result.as_ref().map_or_else(|f| !f.retryable, |_| true)),
            }
            match result {
                Ok(output) => {
                    drop(service_permit);
                    // Dependants start only once the sink has kept the completion (a durable
                    // journal: on disk), so a crash never loses an output something used.
                    let kept = shared.record(EventKind::TaskSucceeded {
                        step: task.id.clone(),
                        attempt,
                        output: output.clone(),
                    });
                    return match kept.await {
                        Ok(()) => Ok(output),
                        Err(reason) => {
                            shared.emit(EventKind::TaskFailed {
                                step: task.id.clone(),
                                attempt,
                                error: reason.clone(),
                                retryable: false,
                            });
                            Err(reason)
                        }
                    };
                }
                Err(failure) => {
                    // The service's slot is not held through the backoff.
                    drop(service_permit);
                    let retryable = failure.retryable && !task.retry.non_retryable.contains(&failure.class);
                    shared.emit(EventKind::TaskFailed {
                        step: task.id.clone(),
                        attempt,
                        error: failure.to_string(),
                        retryable,
                    });
                    last = failure.to_string();
                    tried.retain(|s| *s != service);
                    tried.push(service);
                    candidate += 1;
                    // A permanent failure is the request's fault, which another instance of a
                    // capability would refuse too; a pinned step still tries its alternatives.
                    let alternatives_left = candidate < task.services.len();
                    if !retryable && !alternatives_left {
                        return Err(last);
                    }
                    if attempt < max && retryable && !untried_left {
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
