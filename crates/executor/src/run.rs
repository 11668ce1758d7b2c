//! One run of a DAG: ready-queue dispatch, retries with backoff, timeouts, failover, error
//! policies, pause/resume/cancel, resumption from completed tasks. The DAG itself is checked
//! in `spec.rs`.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use baton_core::{
    CallRequest, Clock, ErrorPolicy, EvalError, Evaluator, Event, EventKind, EventSink, ExecutionId, ExecutionTrace,
    InProcessEvaluator, Outcome, Recorded, Refusal, RetryPolicy, ServiceId, StepId, Timestamp,
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
use crate::spec::{Dag, RunSpec, TaskSpec};

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
    /// Where expressions other than plain paths run (inputs and the run's output).
    pub evaluator: Arc<dyn Evaluator>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            max_in_flight_per_run: 64,
            max_in_flight: 1024,
            jitter_seed: None,
            breaker_threshold: 5,
            breaker_cool_down: Duration::from_secs(30),
            evaluator: Arc::new(InProcessEvaluator::default()),
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
pub struct Run {
    control: watch::Sender<Control>,
    done: tokio::task::JoinHandle<Outcome>,
}

impl Run {
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
    evaluator: Arc<dyn Evaluator>,
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
    pub fn start(&self, spec: RunSpec, input: Value, completed: BTreeMap<StepId, Value>) -> Run {
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
            evaluator: Arc::clone(&self.config.evaluator),
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
            shared.emit(outcome.clone().into());
            outcome
        });
        Run { control, done }
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
            waiting: (0..n).map(|i| spec.graph.dependencies(i).len()).collect(),
            outputs: vec![None; n],
            skipped: vec![false; n],
            ready: VecDeque::new(),
            standing_in: HashMap::new(),
        };
        let mut done_before = Vec::new();
        for (id, output) in completed {
            if let Some(i) = spec.graph.index(&id) {
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
        for &d in self.spec.graph.dependents(i) {
            self.waiting[d] -= 1;
            if self.waiting[d] == 0 && !self.skipped[d] && !self.spec.fallback_only[d] {
                self.ready.push_back(d);
            }
        }
    }

    /// Marks every task downstream of `failed` skipped, with an event each.
    fn skip_dependents<I>(&mut self, shared: &Shared<I>, failed: usize) {
        let mut stack = self.spec.graph.dependents(failed).to_vec();
        while let Some(d) = stack.pop() {
            if !std::mem::replace(&mut self.skipped[d], true) {
                let reason = format!("needs {}, which failed", self.spec.tasks[failed].id);
                shared.emit(EventKind::TaskSkipped { step: self.spec.tasks[d].id.clone(), reason });
                stack.extend(self.spec.graph.dependents(d).iter().copied());
            }
        }
    }

    /// The input and call of task `i`: rendered once for all runs, or its context to render
    /// them in.
    fn payload(&self, input: &Value, i: usize) -> Payload {
        let rendered = self.spec.static_input[i].clone();
        let call = self.spec.static_call[i].clone();
        let dynamic_call = self.spec.tasks[i].call.is_some() && call.is_none();
        let context =
            (rendered.is_none() || dynamic_call).then(|| context(input, &self.outputs, self.spec, &self.spec.reads[i]));
        Payload { input: rendered, call, context }
    }

    /// Takes in how task `i` ended; `Some` when that ends the run.
    fn settle<I>(&mut self, shared: &Shared<I>, i: usize, result: Result<Value, TaskError>) -> Option<Outcome> {
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
                    let f = self.spec.graph.index(f).expect("a checked fallback");
                    self.standing_in.insert(f, primary);
                    self.ready.push_front(f);
                }
            },
        }
        None
    }
}

/// A task's input and call, each rendered once for all runs or rendered in `context`.
struct Payload {
    /// The input, when it has no expression.
    input: Option<Value>,
    /// The call, when its template has no expression (and `None` for a task without one).
    call: Option<Arc<CallRequest>>,
    /// What the others are rendered in.
    context: Option<Value>,
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
            let payload = schedule.payload(&input, i);
            // A call that finishes on its first poll (in-process work, a cached answer) is
            // settled on the spot; only a pending one joins the set. The set polls it again
            // with its own waker, and a future only wakes the waker of its latest poll.
            let mut task = Box::pin(dispatch(shared, i, &spec.tasks[i], payload));
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
    let rendered = if spec.output.expressions().is_empty() {
        spec.output.render(&Value::Null)
    } else {
        let all: Vec<usize> = (0..spec.tasks.len()).collect();
        let context = context(&input, &schedule.outputs, spec, &all);
        // An evaluation may take a while; a cancel still ends the run at once.
        tokio::select! {
            rendered = spec.output.render_with(&context, &*shared.evaluator) => rendered,
            reason = cancelled(&mut control) => return Outcome::Cancelled(reason),
        }
    };
    match rendered {
        Ok(output) => Outcome::Completed(output),
        Err(e) => Outcome::Failed(format!("run output: {e}")),
    }
}

/// Waits until the run is cancelled (or its handle dropped); the reason.
async fn cancelled(control: &mut watch::Receiver<Control>) -> String {
    loop {
        if let Control::Cancelled(reason) = &*control.borrow_and_update() {
            return reason.clone();
        }
        if control.changed().await.is_err() {
            return "the run's handle was dropped".to_owned();
        }
    }
}

/// Task `index` from its input's and call's rendering and the global limit's permit to its
/// result. An input or call that does not render fails the task, under its error policy.
async fn dispatch<'a, I: Invoker>(
    shared: &'a Shared<I>,
    index: usize,
    task: &'a TaskSpec,
    payload: Payload,
) -> (usize, Result<Value, TaskError>) {
    let Payload { input, call, context } = payload;
    let input = match (input, &context) {
        (Some(input), _) => input,
        (None, Some(context)) => match task.input.render_with(context, &*shared.evaluator).await {
            Ok(input) => input,
            Err(e) => return (index, Err(render_failed(shared, task, TaskError::Input(e)))),
        },
        (None, None) => unreachable!("a context is made for an input to render"),
    };
    let request = match (&task.call, call, &context) {
        (None, ..) => None,
        (Some(_), Some(call), _) => Some(call),
        (Some(template), None, Some(context)) => match template.render_with(context, &*shared.evaluator).await {
            Ok(call) => Some(Arc::new(call)),
            Err(e) => return (index, Err(render_failed(shared, task, TaskError::Call(e)))),
        },
        (Some(_), None, None) => unreachable!("a context is made for a call to render"),
    };
    let Some(_permit) = shared.global_permit().await else { return (index, Err(TaskError::Cancelled)) };
    (index, run_task(shared, task, input, request).await)
}

/// Reports a task whose input or call did not render; the error. Nothing was called, so no
/// retry: an expression fails the same way every time, and one past a bound is an
/// `expression_limit`.
fn render_failed<I>(shared: &Shared<I>, task: &TaskSpec, error: TaskError) -> TaskError {
    shared.emit(EventKind::TaskFailed {
        step: task.id.clone(),
        attempt: 0,
        error: error.to_string(),
        retryable: false,
    });
    error
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
) -> Result<Value, TaskError> {
    let attempts = async {
        let mut candidate = 0;
        // Services that failed an attempt of this task, and the latest of them.
        let mut tried: Vec<ServiceId> = Vec::new();
        let mut last = TaskError::NoAttempt;
        let max = task.retry.max_attempts.max(1);
        for attempt in 1..=max {
            if !shared.wait_unless_paused().await {
                return Err(TaskError::Cancelled);
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
                        last = TaskError::Failed(failure);
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
                        Err(refusal) => {
                            shared.emit(EventKind::TaskFailed {
                                step: task.id.clone(),
                                attempt,
                                error: refusal.to_string(),
                                retryable: false,
                            });
                            Err(TaskError::Refused(refusal))
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
                    last = TaskError::Failed(failure);
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
        Some(limit) => tokio::time::timeout(limit, attempts).await.unwrap_or(Err(TaskError::TimedOut(limit))),
        None => attempts.await,
    }
}

/// Why a task produced no output; the run's failure names it.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
enum TaskError {
    /// The run was cancelled first.
    #[error("cancelled")]
    Cancelled,
    /// Out of attempts before any was made.
    #[error("no attempt made")]
    NoAttempt,
    /// The last attempt's failure.
    #[error(transparent)]
    Failed(Failure),
    /// The sink refused the task's success, so it never happened.
    #[error(transparent)]
    Refused(Refusal),
    /// All attempts together took longer than the task's limit.
    #[error("task timed out after {}", baton_core::duration::format(*.0))]
    TimedOut(Duration),
    /// Its input did not render, so nothing was called.
    #[error(transparent)]
    Input(EvalError),
    /// Its call (path, query, headers, metadata) did not render, so nothing was called.
    #[error("call: {0}")]
    Call(EvalError),
}
