//! The machinery every run shares: the executor and its limits, the run handle (pause,
//! resume, cancel), and one call of a task with its attempts (retries with backoff,
//! timeouts, failover, circuit breakers, per-service limits). The interpreter that walks a
//! program is in `interp.rs`; the DAG of `RunSpec` is checked in `spec.rs`.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use baton_core::{
    CallRequest, Clock, Evaluator, Event, EventKind, EventSink, ExecutionId, ExecutionTrace, History,
    InProcessEvaluator, Outcome, Problem, Recorded, RetryPolicy, ServiceId, Settled, SettledTask, StepId, Timestamp,
};
use parking_lot::Mutex;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use serde_json::Value;
use tokio::sync::{Semaphore, SemaphorePermit, watch};

use crate::breaker::{BreakerState, Breakers};
use crate::host::{Host, NoHost};
use crate::interp::{Start, interpret};
use crate::invoker::{Call, CallTrace, Failure, Invoker};
use crate::spec::RunSpec;

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
    /// The time limit of an attempt of a step that sets no `timeout` of its own; `None`: no
    /// limit. A service that takes a call and never answers holds a step only this long.
    pub default_attempt_timeout: Option<Duration>,
    /// The largest rendered step input, as JSON text; a bigger one fails its step before any
    /// call (`input_too_large`, not retried). `None`: no limit. Inputs travel to services and
    /// to workers in API messages, which are bounded.
    pub max_input_bytes: Option<usize>,
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
            default_attempt_timeout: None,
            max_input_bytes: Some(baton_core::bounds::DEFAULT_MAX_INPUT_BYTES),
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
            host: Arc::new(NoHost),
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
    host: Arc<dyn Host>,
    global: Arc<Semaphore>,
    breakers: Arc<Breakers>,
    service_limits: ServiceLimits,
    failovers: Arc<AtomicU64>,
}

/// Per-service in-flight limits, FIFO when waiting: set by [`Executor::limit_service`], else
/// the capacity the invoker declares ([`Invoker::capacity`]).
type ServiceLimits = Arc<Limits>;

#[derive(Debug, Default)]
struct Limits {
    semaphores: Mutex<HashMap<ServiceId, Limit>>,
}

#[derive(Debug)]
struct Limit {
    capacity: usize,
    /// Set by [`Executor::limit_service`]: the invoker's declared capacity does not replace it.
    explicit: bool,
    semaphore: Arc<Semaphore>,
}

impl Limit {
    fn new(capacity: usize, explicit: bool) -> Self {
        let capacity = capacity.max(1);
        Self { capacity, explicit, semaphore: Arc::new(Semaphore::new(capacity)) }
    }
}

impl Limits {
    fn set(&self, service: &ServiceId, max_in_flight: usize) {
        self.semaphores.lock().insert(service.clone(), Limit::new(max_in_flight, true));
    }

    /// The semaphore bounding calls to `service`, given the capacity its invoker declares now.
    /// A changed capacity starts a new semaphore: calls holding the old one finish under it.
    fn get(&self, service: &ServiceId, declared: Option<usize>) -> Option<Arc<Semaphore>> {
        let mut semaphores = self.semaphores.lock();
        match (semaphores.get(service), declared) {
            (Some(limit), _) if limit.explicit => Some(Arc::clone(&limit.semaphore)),
            (Some(limit), Some(capacity)) if limit.capacity == capacity.max(1) => Some(Arc::clone(&limit.semaphore)),
            (_, Some(capacity)) => {
                let limit = Limit::new(capacity, false);
                let semaphore = Arc::clone(&limit.semaphore);
                semaphores.insert(service.clone(), limit);
                Some(semaphore)
            }
            (Some(_), None) => {
                semaphores.remove(service);
                None
            }
            (None, None) => None,
        }
    }
}

impl<I> Clone for Executor<I> {
    fn clone(&self) -> Self {
        Self {
            config: self.config.clone(),
            invoker: Arc::clone(&self.invoker),
            events: Arc::clone(&self.events),
            clock: Arc::clone(&self.clock),
            host: Arc::clone(&self.host),
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
pub(crate) enum Control {
    Running,
    Paused,
    Cancelled(String),
    /// Stopped without an outcome: the host parks the execution and runs it again later from
    /// its journal.
    Suspended,
    /// Stop without an outcome if nothing happened since the run said it only waits (the
    /// activity count it gave then).
    SuspendIfIdle(u64),
}

/// A run in progress: pause, resume, cancel, and await its outcome.
#[derive(Debug)]
pub struct Run {
    control: watch::Sender<Control>,
    done: tokio::task::JoinHandle<Outcome>,
    /// Told when the run refuses a [`Run::suspend_if_idle`]: something happened meanwhile.
    refused: Arc<tokio::sync::Notify>,
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
            let live = !matches!(c, Control::Cancelled(_) | Control::Suspended | Control::SuspendIfIdle(_));
            if live {
                *c = Control::Cancelled(reason.to_owned());
            }
            live
        });
    }

    /// Stops the run without an outcome (no event says it ended) and waits until it has:
    /// in-flight calls are abandoned, as on a crash, and the journal has all it needs to run
    /// again later. For parking an execution that only waits.
    pub async fn suspend(self) {
        self.control.send_replace(Control::Suspended);
        let _ = self.done.await;
    }

    /// Suspends the run (as [`Run::suspend`]) only if nothing happened since it said it only
    /// waits with the activity count `mark`; true when it did. A run that moved on meanwhile
    /// refuses and runs on.
    pub async fn suspend_if_idle(&mut self, mark: u64) -> bool {
        let refused = self.refused.notified();
        self.control.send_replace(Control::SuspendIfIdle(mark));
        tokio::select! {
            _ = &mut self.done => true,
            () = refused => {
                self.control.send_if_modified(|c| {
                    let asked = *c == Control::SuspendIfIdle(mark);
                    if asked {
                        *c = Control::Running;
                    }
                    asked
                });
                false
            }
        }
    }

    /// Waits for the run to end.
    pub async fn outcome(self) -> Outcome {
        self.done.await.unwrap_or_else(|e| Outcome::Failed(Problem::runtime(format!("run task ended abnormally: {e}"))))
    }
}

/// What every task of a run shares.
pub(crate) struct Shared<I> {
    execution: ExecutionId,
    invoker: Arc<I>,
    events: Arc<dyn EventSink<Event>>,
    clock: Arc<dyn Clock>,
    sequence: AtomicU64,
    /// The time events are stamped with, read from the clock once per turn of the run rather
    /// than once per event: a clock read costs as much as dispatching a task.
    now: Mutex<Timestamp>,
    pub(crate) control: watch::Receiver<Control>,
    /// Tells the handle a conditional suspension was refused.
    pub(crate) refused: Arc<tokio::sync::Notify>,
    jitter: Mutex<SmallRng>,
    breakers: Arc<Breakers>,
    service_limits: ServiceLimits,
    global: Arc<Semaphore>,
    pub(crate) evaluator: Arc<dyn Evaluator>,
    /// Attempts that went to another service than the failed attempt before them.
    failovers: Arc<AtomicU64>,
    /// The execution's trace: calls carry its attempts' spans in `traceparent`.
    pub(crate) trace: ExecutionTrace,
    /// Leaves whose wait is over (a timer fired, a child ended, a call answered) counted as
    /// they start settling: a run whose count moved since it said it only waits is not idle,
    /// though the leaf has not told the run yet.
    pub(crate) woken: AtomicU64,
    pub(crate) default_attempt_timeout: Option<Duration>,
    pub(crate) max_input_bytes: Option<usize>,
}

impl<I> Shared<I> {
    pub(crate) fn emit(&self, kind: EventKind) {
        self.events.publish(self.event(kind));
    }

    /// The invoker calls go through.
    pub(crate) fn invoker(&self) -> &I {
        &self.invoker
    }

    /// The trace context attempt `attempt` of `step` carries: its own span in the
    /// execution's trace.
    pub(crate) fn call_trace(&self, step: &StepId, attempt: u32) -> CallTrace {
        CallTrace {
            traceparent: self.trace.traceparent(self.trace.attempt(step, attempt)),
            tracestate: self.trace.tracestate().map(Arc::from),
        }
    }

    /// Hands over an event whose effects wait for the sink to keep it.
    pub(crate) fn record(&self, kind: EventKind) -> Recorded {
        self.events.record(self.event(kind))
    }

    /// The time the next events are stamped with.
    pub(crate) fn now(&self) -> Timestamp {
        *self.now.lock()
    }

    fn event(&self, kind: EventKind) -> Event {
        let sequence = self.sequence.fetch_add(1, Ordering::AcqRel) + 1;
        let at = *self.now.lock();
        Event { execution: self.execution, sequence, at, kind }
    }

    /// Reads the clock for the events that follow.
    pub(crate) fn tick(&self) {
        *self.now.lock() = self.clock.now();
    }

    /// Waits while paused; false once cancelled.
    pub(crate) async fn wait_unless_paused(&self) -> bool {
        // The common case, running, is one read of the control cell.
        match &*self.control.borrow() {
            Control::Running => return true,
            Control::Cancelled(_) | Control::Suspended => return false,
            Control::Paused => {}
            Control::SuspendIfIdle(_) => return true,
        }
        let mut control = self.control.clone();
        loop {
            match &*control.borrow_and_update() {
                Control::Running => return true,
                Control::Cancelled(_) | Control::Suspended => return false,
                Control::Paused => {}
                Control::SuspendIfIdle(_) => return true,
            }
            if control.changed().await.is_err() {
                return false;
            }
        }
    }

    /// A permit of the global limit, waited for in FIFO order; given up while the run is
    /// paused (so a paused run holds no permit it is not using), `None` once cancelled.
    pub(crate) async fn global_permit(&self) -> Option<SemaphorePermit<'_>> {
        self.permit_of(&self.global).await
    }

    /// A permit of `semaphore`, as [`Shared::global_permit`] takes one of the global limit.
    pub(crate) async fn permit_of<'s>(&self, semaphore: &'s Semaphore) -> Option<SemaphorePermit<'s>> {
        if let Ok(permit) = semaphore.try_acquire() {
            return Some(permit);
        }
        let mut control = self.control.clone();
        loop {
            if !self.wait_unless_paused().await {
                return None;
            }
            control.borrow_and_update();
            tokio::select! {
                permit = semaphore.acquire() => return Some(permit.expect("the executor's semaphores are never closed")),
                _ = control.changed() => {}
            }
        }
    }

    /// Full jitter: uniform in `[0, min(max, initial * multiplier^(attempt - 1))]`.
    pub(crate) fn backoff(&self, retry: &RetryPolicy, attempt: u32) -> Duration {
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

    /// Hosts the runs of this executor: signals, children, events and capability queries
    /// go to `host` (the workflow engine). Without one they fail with a configuration error.
    pub fn with_host(mut self, host: Arc<dyn Host>) -> Self {
        self.host = host;
        self
    }

    /// Starts `spec` with `input`; tasks in `completed` (with their outputs) are not run again.
    pub fn start(&self, spec: RunSpec, input: Value, completed: BTreeMap<StepId, Value>) -> Run {
        let mut history = History::default();
        for (step, output) in completed {
            history.settled.insert(step, SettledTask { result: Settled::Succeeded(output), sequence: 0, attempt: 0 });
        }
        let workflow = serde_json::json!({"id": spec.execution.to_string()});
        self.run(Start {
            execution: spec.execution,
            program: spec.program,
            input,
            history,
            workflow,
            idle: None,
            trace: spec.caller,
        })
    }

    /// Starts a run of a program; what `start.history` says is settled is not run again.
    ///
    /// A run is one tokio task: its calls are futures it polls itself, so dispatching a task
    /// costs no spawn. An in-process handler that computes for long should move that work to
    /// `spawn_blocking` or its own task; runs themselves spread over the runtime's threads.
    pub fn run(&self, start: Start) -> Run {
        let refused = Arc::new(tokio::sync::Notify::new());
        let (control, receiver) = watch::channel(Control::Running);
        let rng = match self.config.jitter_seed {
            Some(seed) => SmallRng::seed_from_u64(seed),
            // UUIDv7s carry 74 random bits: enough to decorrelate the jitter of runs.
            None => {
                let (high, low) = start.execution.as_uuid().as_u64_pair();
                SmallRng::seed_from_u64(high ^ low)
            }
        };
        let shared = Shared {
            execution: start.execution,
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
            refused: Arc::clone(&refused),
            evaluator: Arc::clone(&self.config.evaluator),
            default_attempt_timeout: self.config.default_attempt_timeout,
            max_input_bytes: self.config.max_input_bytes,
            failovers: Arc::clone(&self.failovers),
            trace: ExecutionTrace::new(start.execution, start.trace.as_ref()),
            woken: AtomicU64::new(0),
        };
        let limit = self.config.max_in_flight_per_run.max(1);
        let host = Arc::clone(&self.host);
        let done = tokio::spawn(async move {
            if start.history == History::default() {
                shared.tick();
                shared.emit(EventKind::Started { input: start.input.clone() });
            }
            let deadline = start.program.deadline;
            let run = interpret(&shared, host.as_ref(), start, limit);
            let outcome = match deadline {
                Some(d) => tokio::time::timeout(d, run).await.unwrap_or_else(|_| {
                    Outcome::Failed(Problem::standard(
                        "timeout",
                        format!("run deadline of {} exceeded", baton_core::duration::format(d)),
                    ))
                }),
                None => run.await,
            };
            // A suspended run ends without a word: the execution goes on later.
            if !matches!(*shared.control.borrow(), Control::Suspended | Control::SuspendIfIdle(_)) {
                shared.tick();
                shared.emit(outcome.clone().into());
            }
            outcome
        });
        Run { control, done, refused }
    }
}

/// The time limit of one attempt of a step: its own `timeout`, else the default attempt
/// timeout; with whether it is the step's own.
pub(crate) fn attempt_limit<I>(shared: &Shared<I>, own: Option<Duration>) -> Option<(Duration, bool)> {
    own.map(|limit| (limit, true)).or(shared.default_attempt_timeout.map(|limit| (limit, false)))
}

/// `attempt`, given up at `deadline`, the end of the attempt's `limit` (see [`attempt_limit`]):
/// past it a retryable `timeout` failure (the call is dropped, which abandons it).
pub(crate) async fn within_attempt_limit<T>(
    limit: Option<(Duration, bool)>,
    deadline: Option<tokio::time::Instant>,
    attempt: impl Future<Output = Result<T, Failure>>,
) -> Result<T, Failure> {
    let (Some((limit, own)), Some(deadline)) = (limit, deadline) else { return attempt.await };
    tokio::time::timeout_at(deadline, attempt).await.unwrap_or_else(|_| {
        let which = if own { "" } else { ", the default attempt timeout (a step's `timeout` sets its own)" };
        Err(Failure::retryable(
            "timeout",
            format!("attempt timed out after {}{which}", baton_core::duration::format(limit)),
        ))
    })
}

/// Runs a task's `attempts` within its time limit, if any; past it the task fails (journaled)
/// with a timeout problem at `reference`.
pub(crate) async fn within_task_limit<I, T>(
    shared: &Shared<I>,
    step: &StepId,
    reference: &str,
    limit: Option<Duration>,
    attempts: impl Future<Output = Result<T, TaskError>>,
) -> Result<T, TaskError> {
    let Some(limit) = limit else { return attempts.await };
    tokio::time::timeout(limit, attempts).await.unwrap_or_else(|_| {
        let problem =
            Problem::standard("timeout", format!("task timed out after {}", baton_core::duration::format(limit)))
                .at(reference);
        shared.emit(EventKind::TaskFailed {
            step: step.clone(),
            attempt: 0,
            error: problem.message(),
            retryable: false,
            problem: Some(problem.clone()),
        });
        Err(TaskError::Failed(problem))
    })
}

/// One call task, as [`run_call`] attempts it.
pub(crate) struct CallSpec<'a> {
    pub(crate) step: &'a StepId,
    /// The service to call first, then the alternatives to fail over to, in order.
    pub(crate) services: &'a [ServiceId],
    pub(crate) retry: &'a RetryPolicy,
    pub(crate) timeout: Option<Duration>,
    pub(crate) task_timeout: Option<Duration>,
    /// Where the task is written, for its errors' `instance`.
    pub(crate) reference: &'a str,
    /// The number of the first attempt made now (attempts before a restart count).
    pub(crate) first_attempt: u32,
    /// How the task shapes its call, rendered; `None`: the protocol's plain call.
    pub(crate) request: Option<Arc<CallRequest>>,
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
    task: &CallSpec<'_>,
    candidate: usize,
    tried: &[ServiceId],
    deadline: Option<tokio::time::Instant>,
) -> Result<Pick<'a>, Failure> {
    let count = task.services.len();
    let mut resolve_failure = None;
    for k in 0..count {
        let index = (candidate + k) % count;
        let target = &task.services[index];
        let resolving = shared.invoker.resolve(target, task.step);
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

/// Attempts one call task: each attempt goes to the picked service (see [`pick`]); a failure
/// moves the next attempt to the next candidate (failover), at once while one is left
/// untried, after the retry policy's backoff once all have been tried. Every attempt is
/// journaled under the service it went to and carries its own span in `traceparent`; its
/// failure is journaled, `retryable` saying whether another attempt follows, so the last one
/// marks the task failed. Answers the attempt that succeeded and the raw output; journaling
/// the success is the caller's (after its output filter).
pub(crate) async fn run_call<I: Invoker>(
    shared: &Shared<I>,
    task: &CallSpec<'_>,
    payload: Value,
) -> Result<(u32, Value), TaskError> {
    // Attempts keep their numbers across a restart, and a restart gives the task its whole
    // budget again: attempts a crash cut short say nothing about the service.
    let first = task.first_attempt.max(1);
    let max = first + task.retry.max_attempts.max(1) - 1;
    let fail = |attempt: u32, failure: &Failure, follows: bool| {
        let problem = failure.problem().at(task.reference);
        shared.emit(EventKind::TaskFailed {
            step: task.step.clone(),
            attempt,
            error: failure.to_string(),
            retryable: follows,
            problem: Some(problem),
        });
    };
    let attempts = async {
        let mut candidate = 0;
        // Services that failed an attempt of this task, the latest last.
        let mut tried: Vec<ServiceId> = Vec::new();
        let mut last = TaskError::NoAttempt;
        for attempt in first..=max {
            if !shared.wait_unless_paused().await {
                return Err(TaskError::Cancelled);
            }
            let attempt_limit = attempt_limit(shared, task.timeout);
            let pick_deadline = attempt_limit.map(|(limit, _)| tokio::time::Instant::now() + limit);
            let Pick { index, service, admission, untried_left } =
                match pick(shared, task, candidate, &tried, pick_deadline).await {
                    Ok(pick) => pick,
                    Err(failure) => {
                        let retryable = failure.retryable && !task.retry.non_retryable.contains(&failure.class);
                        let follows = retryable && attempt < max;
                        fail(attempt, &failure, follows);
                        last = TaskError::Failed(failure.problem().at(task.reference));
                        if !follows {
                            return Err(last);
                        }
                        tokio::time::sleep(shared.backoff(task.retry, attempt)).await;
                        continue;
                    }
                };
            candidate = index;
            if tried.last().is_some_and(|previous| *previous != service) {
                shared.failovers.fetch_add(1, Ordering::Relaxed);
            }
            // A call first waits for a slot of its service, then for one of the global limit:
            // runs queued behind a full service hold no global slot, which would stall calls
            // to every other service. The attempt's time limit runs from when the call goes
            // out; the task's own limit and the run's deadline bound the waits.
            let limit = shared.service_limits.get(&service, shared.invoker.capacity(&service));
            let service_permit = match &limit {
                Some(limit) => match shared.permit_of(limit).await {
                    Some(permit) => Some(permit),
                    None => return Err(TaskError::Cancelled),
                },
                None => None,
            };
            let Some(global_permit) = shared.global_permit().await else { return Err(TaskError::Cancelled) };
            let deadline = attempt_limit.map(|(limit, _)| tokio::time::Instant::now() + limit);
            shared.emit(EventKind::TaskScheduled { step: task.step.clone(), attempt, service: service.clone() });
            let call = Call {
                execution: shared.execution,
                step: task.step.clone(),
                attempt,
                service: service.clone(),
                payload: payload.clone(),
                request: task.request.clone(),
                timeout: attempt_limit.map(|(limit, _)| limit),
                trace: Some(shared.call_trace(task.step, attempt)),
            };
            // Boxed: an outgoing call's future (an HTTP or gRPC client's) is large, and inline
            // it would size every waiting call's leaf, for as long as it waits, as one going out.
            let result = within_attempt_limit(attempt_limit, deadline, Box::pin(shared.invoker.invoke(call))).await;
            // Only failures that say something about the service's health count against it.
            match &result {
                // Dropped unrecorded: a half-open probe slot is given back.
                Err(failure) if failure.unreached => drop(admission),
                result => admission.record(result.as_ref().map_or_else(|f| !f.retryable, |_| true)),
            }
            // Neither slot is held through the backoff or the journal write.
            drop(global_permit);
            drop(service_permit);
            match result {
                Ok(output) => return Ok((attempt, output)),
                Err(failure) => {
                    let retryable = failure.retryable && !task.retry.non_retryable.contains(&failure.class);
                    tried.retain(|s| *s != service);
                    tried.push(service);
                    candidate += 1;
                    // A permanent failure is the request's fault, which another instance of a
                    // capability would refuse too; a pinned step still tries its alternatives.
                    let alternatives_left = candidate < task.services.len();
                    let follows = attempt < max && (retryable || alternatives_left);
                    fail(attempt, &failure, follows);
                    last = TaskError::Failed(failure.problem().at(task.reference));
                    if !follows {
                        return Err(last);
                    }
                    if retryable && !untried_left {
                        tokio::time::sleep(shared.backoff(task.retry, attempt)).await;
                    }
                }
            }
        }
        Err(last)
    };
    within_task_limit(shared, task.step, task.reference, task.task_timeout, attempts).await
}

/// Why a call task produced no output.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub(crate) enum TaskError {
    /// The run was cancelled first.
    #[error("cancelled")]
    Cancelled,
    /// Out of attempts before any was made.
    #[error("no attempt made")]
    NoAttempt,
    /// The last attempt's failure, or the task's time limit.
    #[error("{}", .0.message())]
    Failed(Problem),
}
