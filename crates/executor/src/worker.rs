//! The worker-queue invoker: a call to a `Worker { queue }` service becomes a task on a named
//! FIFO queue, which workers take under a time-limited lease and complete or fail.
//!
//! Leases exist because a worker can crash or hang while it holds a task: a lease that is not
//! completed, failed or extended before its deadline puts the task back at the front of its
//! queue, and the next delivery carries a new [`LeaseToken`] so that the old holder's late
//! answer is refused ([`LeaseError`]) instead of racing the new one.
//!
//! Expiry needs no timer task: every operation on a queue first returns that queue's expired
//! leases (lazily), and the call waiting on a leased task sleeps until the lease's deadline
//! and then does the same, so an expired lease is noticed even when no worker comes back.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::fmt;
use std::num::ParseIntError;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use baton_core::{ExecutionId, ServiceId};
use parking_lot::{Mutex, MutexGuard};
use serde_json::Value;
use tokio::sync::{Notify, oneshot};
use tokio::time::Instant;

use crate::invoker::{Call, Failure, Invoker};

/// How many finished, cancelled or given-up tasks are remembered, so that a late answer for
/// one of them gets a precise error rather than [`LeaseError::UnknownTask`].
const RETIRED_MEMORY: usize = 4096;

/// Maps a service to the name of its queue, or `None` for a service it does not know.
pub type ResolveQueue = Arc<dyn Fn(&ServiceId) -> Option<String> + Send + Sync>;

/// How the worker queues behave.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// How long a worker holds a task before it goes back to its queue, unless the worker
    /// completes, fails or extends it first. Default 30 s.
    pub lease: Duration,
    /// Most tasks waiting (not leased) on one queue; a call to a full queue fails retryably
    /// with class `queue_full`. Tasks whose lease expired go back regardless. Default 10 000.
    pub max_queue_len: usize,
    /// Most tasks one poll returns, whatever the worker asks for. Default 64.
    pub max_poll_tasks: usize,
    /// Longest a poll waits for a task, whatever the worker asks for. Default 60 s.
    pub max_poll_wait: Duration,
    /// Expired leases after which a task's call fails retryably with class `lease_expired`,
    /// handing the task to the executor's retry policy (backoff, failover); `None` redelivers
    /// until the executor's timeouts give up. Default 3.
    pub max_expired_leases: Option<u32>,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        Self {
            lease: Duration::from_secs(30),
            max_queue_len: 10_000,
            max_poll_tasks: 64,
            max_poll_wait: Duration::from_secs(60),
            max_expired_leases: Some(3),
        }
    }
}

impl WorkerConfig {
    /// Queues whose tasks are calls to the services `resolve` maps to a queue name; a call to
    /// a service it returns `None` for fails permanently with `unknown_service`.
    ///
    /// Spawns nothing; needs a tokio runtime (with the time driver) when used, not when built.
    pub fn build(self, resolve: ResolveQueue) -> WorkerQueues {
        let (_, random) = ExecutionId::generate().as_uuid().as_u64_pair();
        WorkerQueues {
            inner: Arc::new(Inner { config: self, resolve, instance: random, state: Mutex::new(State::default()) }),
        }
    }
}

/// A queued call's id: unique within the process and, through a random prefix, across
/// restarts, so a worker cannot complete a task of an earlier process by accident.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TaskId(u128);

impl fmt::Display for TaskId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:032x}", self.0)
    }
}

impl FromStr for TaskId {
    type Err = ParseIntError;

    /// Parses the hexadecimal form `Display` writes.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        u128::from_str_radix(s, 16).map(Self)
    }
}

/// The fencing token of one delivery of a task: its delivery number, 1 for the first and one
/// more on each redelivery. Only the token of the task's current, unexpired lease is honoured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LeaseToken(u32);

impl LeaseToken {
    /// The token of delivery number `delivery` (as a worker sends it back).
    pub fn new(delivery: u32) -> Self {
        Self(delivery)
    }

    /// Which delivery of its task this token belongs to.
    pub fn delivery(self) -> u32 {
        self.0
    }
}

impl fmt::Display for LeaseToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "#{}", self.0)
    }
}

/// One delivery of a task to a worker by [`WorkerQueues::poll`], under a lease. (The
/// public API's view of it is `baton_core::api::LeasedTask`, which the orchestrator builds.)
#[derive(Debug, Clone, PartialEq)]
pub struct Delivery {
    /// The task, to name in `complete`, `fail` and `extend`.
    pub task: TaskId,
    /// This delivery's token.
    pub token: LeaseToken,
    /// When the lease ends unless extended.
    pub deadline: Instant,
    /// The call: execution, step, the executor's attempt, service, payload; its
    /// `idempotency_key()` is the same on every delivery and retry.
    pub call: Call,
}

/// A queue's figures, for metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct QueueStats {
    /// Tasks waiting for a worker.
    pub queued: usize,
    /// Tasks held by workers.
    pub leased: usize,
    /// Polls waiting for a task.
    pub pollers: usize,
    /// How long ago the call at the head of the queue was made; zero when nothing waits.
    pub backlog_age: Duration,
}

/// Why a worker's answer or heartbeat for a task was refused. The task is not affected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum LeaseError {
    /// No such task is queued, leased or remembered.
    #[error("task {0} is unknown")]
    UnknownTask(TaskId),
    /// The task was already completed or failed.
    #[error("task {0} is already finished")]
    Finished(TaskId),
    /// The call waiting for the task was abandoned (cancelled or timed out): stop working on it.
    #[error("task {0} was cancelled by its caller")]
    Cancelled(TaskId),
    /// The lease's deadline passed; the task went back to its queue (or its call failed).
    #[error("lease {token} of task {task} expired")]
    Expired {
        /// The task.
        task: TaskId,
        /// The token presented.
        token: LeaseToken,
    },
    /// The token is not the task's current one: the task was handed out again since.
    #[error("lease {token} of task {task} is stale: the task was handed out again")]
    Stale {
        /// The task.
        task: TaskId,
        /// The token presented.
        token: LeaseToken,
    },
}

/// FIFO task queues served to workers under leases, and the [`Invoker`] that fills them.
/// Cheap to clone; clones share the queues.
///
/// `invoke` resolves the call's service to a queue, queues a task and waits for a worker's
/// answer; dropping the call withdraws the task, or, once leased, cancels it so the holder's
/// answer is refused with [`LeaseError::Cancelled`]. Workers [`poll`](Self::poll) (a long
/// poll, first come first served), then [`complete`](Self::complete),
/// [`fail`](Self::fail) or [`extend`](Self::extend) each task with its lease token.
#[derive(Clone)]
pub struct WorkerQueues {
    inner: Arc<Inner>,
}

impl fmt::Debug for WorkerQueues {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WorkerQueues").field("config", &self.inner.config).finish_non_exhaustive()
    }
}

struct Inner {
    config: WorkerConfig,
    resolve: ResolveQueue,
    /// The random high half of this instance's task ids.
    instance: u64,
    state: Mutex<State>,
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock()
    }
}

#[derive(Default)]
struct State {
    tasks: HashMap<TaskId, Task>,
    queues: HashMap<Arc<str>, Queue>,
    next_task: u64,
    next_poll: u64,
    retired: Retired,
}

struct Task {
    queue: Arc<str>,
    call: Call,
    queued_at: Instant,
    /// The current lease; `None` while queued.
    lease: Option<Lease>,
    deliveries: u32,
    expired_leases: u32,
    reply: oneshot::Sender<Result<Value, Failure>>,
    /// Tells the waiting call that the task was leased, so it can watch the deadline.
    leased: Arc<Notify>,
}

struct Lease {
    token: LeaseToken,
    deadline: Instant,
    worker: String,
}

#[derive(Default)]
struct Queue {
    /// Queued tasks in order, plus ids of tasks withdrawn while queued (skipped when met,
    /// compacted when they pile up), so withdrawing is O(1).
    ready: VecDeque<TaskId>,
    /// How many of `ready` are live.
    queued: usize,
    /// Leased tasks by deadline.
    leases: BTreeSet<(Instant, TaskId)>,
    /// Polls waiting, first come first served. Invariant after every operation: a queue has
    /// queued tasks or waiting polls, never both.
    waiters: VecDeque<Waiter>,
}

struct Waiter {
    id: u64,
    worker: String,
    max: usize,
    tx: oneshot::Sender<Vec<Delivery>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Gone {
    Finished,
    Cancelled,
    Expired,
}

/// The last [`RETIRED_MEMORY`] tasks that left the queues, and how.
#[derive(Default)]
struct Retired {
    how: HashMap<TaskId, Gone>,
    order: VecDeque<TaskId>,
}

impl Retired {
    fn insert(&mut self, id: TaskId, gone: Gone) {
        if self.order.len() == RETIRED_MEMORY
            && let Some(oldest) = self.order.pop_front()
        {
            self.how.remove(&oldest);
        }
        self.order.push_back(id);
        self.how.insert(id, gone);
    }

    /// The error for an answer about `task`, which is not live.
    fn error(&self, task: TaskId, token: LeaseToken) -> LeaseError {
        match self.how.get(&task) {
            None => LeaseError::UnknownTask(task),
            Some(Gone::Finished) => LeaseError::Finished(task),
            Some(Gone::Cancelled) => LeaseError::Cancelled(task),
            Some(Gone::Expired) => LeaseError::Expired { task, token },
        }
    }
}

impl State {
    /// Returns `name`'s expired leases to the front of the queue in deadline order (or fails
    /// their calls after too many expiries), then serves waiting polls.
    fn reclaim(&mut self, name: &str, now: Instant, config: &WorkerConfig) {
        let State { tasks, queues, retired, .. } = self;
        let Some(queue) = queues.get_mut(name) else { return };
        let mut expired = Vec::new();
        while let Some(&(deadline, id)) = queue.leases.first() {
            if deadline > now {
                break;
            }
            queue.leases.pop_first();
            expired.push(id);
        }
        // Latest first: each goes to the front, so the earliest deadline ends up first.
        for &id in expired.iter().rev() {
            let task = tasks.get_mut(&id).expect("a lease belongs to a live task");
            let lease = task.lease.take().expect("a task with a lease entry is leased");
            task.expired_leases += 1;
            if config.max_expired_leases.is_some_and(|max| task.expired_leases >= max) {
                let task = tasks.remove(&id).expect("the task is live");
                let failure = Failure::retryable(
                    "lease_expired",
                    format!(
                        "task {id} on queue {name}: {} leases expired, the last held by worker {:?}",
                        task.expired_leases, lease.worker
                    ),
                );
                // The call may be gone at this very moment; then nobody needs the failure.
                let _ = task.reply.send(Err(failure));
                retired.insert(id, Gone::Expired);
            } else {
                queue.ready.push_front(id);
                queue.queued += 1;
            }
        }
        self.serve(name, now, config);
    }

    /// Hands queued tasks to waiting polls, first come first served.
    fn serve(&mut self, name: &str, now: Instant, config: &WorkerConfig) {
        loop {
            let Some(queue) = self.queues.get_mut(name) else { return };
            if queue.queued == 0 {
                return;
            }
            let Some(waiter) = queue.waiters.pop_front() else { return };
            let leased = self.take(name, waiter.max, &waiter.worker, now, config.lease);
            if let Err(leased) = waiter.tx.send(leased) {
                // The poll is gone (its guard normally withdraws it first): hand them on.
                self.release(name, &leased);
            }
        }
    }

    /// Leases up to `max` queued tasks of `name` to `worker`, in order.
    fn take(&mut self, name: &str, max: usize, worker: &str, now: Instant, lease: Duration) -> Vec<Delivery> {
        let State { tasks, queues, .. } = self;
        let Some(queue) = queues.get_mut(name) else { return Vec::new() };
        let mut leased = Vec::new();
        while leased.len() < max {
            let Some(id) = queue.ready.pop_front() else { break };
            // Ids of tasks withdrawn while queued are left behind; skip them.
            let Some(task) = tasks.get_mut(&id) else { continue };
            debug_assert!(task.lease.is_none(), "a queued task is not leased");
            queue.queued -= 1;
            task.deliveries += 1;
            let token = LeaseToken(task.deliveries);
            let deadline = now + lease;
            task.lease = Some(Lease { token, deadline, worker: worker.to_owned() });
            queue.leases.insert((deadline, id));
            task.leased.notify_one();
            leased.push(Delivery { task: id, token, deadline, call: task.call.clone() });
        }
        leased
    }

    /// Puts tasks handed to a poll that vanished back at the front of `name`, in order.
    fn release(&mut self, name: &str, leased: &[Delivery]) {
        let State { tasks, queues, .. } = self;
        let Some(queue) = queues.get_mut(name) else { return };
        for t in leased.iter().rev() {
            let Some(task) = tasks.get_mut(&t.task) else { continue };
            let Some(lease) = task.lease.take_if(|l| l.token == t.token) else { continue };
            queue.leases.remove(&(lease.deadline, t.task));
            queue.ready.push_front(t.task);
            queue.queued += 1;
        }
    }

    /// Checks that `token` is `task`'s current, unexpired lease; returns the task's queue.
    fn check(
        &mut self,
        task: TaskId,
        token: LeaseToken,
        now: Instant,
        config: &WorkerConfig,
    ) -> Result<Arc<str>, LeaseError> {
        let Some(queue) = self.tasks.get(&task).map(|t| Arc::clone(&t.queue)) else {
            return Err(self.retired.error(task, token));
        };
        // An expired lease is never honoured, even when nothing has reclaimed it yet.
        self.reclaim(&queue, now, config);
        let Some(live) = self.tasks.get(&task) else { return Err(self.retired.error(task, token)) };
        match &live.lease {
            Some(lease) if lease.token == token => Ok(queue),
            _ if token.0 == live.deliveries && live.deliveries > 0 => Err(LeaseError::Expired { task, token }),
            _ => Err(LeaseError::Stale { task, token }),
        }
    }

    /// Ends a checked task with `result`.
    fn finish(&mut self, task: TaskId, queue: &str, result: Result<Value, Failure>) {
        let finished = self.tasks.remove(&task).expect("a checked task is live");
        if let (Some(lease), Some(q)) = (&finished.lease, self.queues.get_mut(queue)) {
            q.leases.remove(&(lease.deadline, task));
        }
        self.retired.insert(task, Gone::Finished);
        // The call may be dropped at this very moment; then the result goes with it.
        let _ = finished.reply.send(result);
        self.tidy(queue);
    }

    /// Takes back the task of an abandoned call: unqueues it, or cancels its lease.
    fn withdraw(&mut self, id: TaskId) {
        let Some(task) = self.tasks.remove(&id) else { return };
        if let Some(queue) = self.queues.get_mut(&*task.queue) {
            match &task.lease {
                Some(lease) => {
                    queue.leases.remove(&(lease.deadline, id));
                }
                None => {
                    queue.queued -= 1;
                    if queue.ready.len() > 2 * queue.queued + 64 {
                        let tasks = &self.tasks;
                        queue.ready.retain(|id| tasks.contains_key(id));
                    }
                }
            }
        }
        // A worker may hold it, or have held it: tell it the call is gone.
        if task.deliveries > 0 {
            self.retired.insert(id, Gone::Cancelled);
        }
        self.tidy(&task.queue);
    }

    /// Forgets `name` once it holds nothing, so queues polled by name do not pile up.
    fn tidy(&mut self, name: &str) {
        if self.queues.get(name).is_some_and(|q| q.queued == 0 && q.leases.is_empty() && q.waiters.is_empty()) {
            self.queues.remove(name);
        }
    }

    fn stats(&self, name: &str, now: Instant) -> QueueStats {
        let Some(queue) = self.queues.get(name) else { return QueueStats::default() };
        let head = queue.ready.iter().find_map(|id| self.tasks.get(id));
        QueueStats {
            queued: queue.queued,
            leased: queue.leases.len(),
            pollers: queue.waiters.len(),
            backlog_age: head.map_or(Duration::ZERO, |t| now.saturating_duration_since(t.queued_at)),
        }
    }
}

impl WorkerQueues {
    /// The configuration.
    pub fn config(&self) -> &WorkerConfig {
        &self.inner.config
    }

    /// Leases up to `max_tasks` tasks of `queue` to `worker`, waiting up to `wait` for the
    /// first one; empty when none came. Polls waiting on one queue are served in arrival order.
    ///
    /// `max_tasks` is taken as at least 1 and at most `max_poll_tasks`, `wait` as at most
    /// `max_poll_wait`. Cancel-safe: tasks handed to a poll dropped before it returns them go
    /// back to the front of the queue.
    pub async fn poll(&self, queue: &str, worker: &str, max_tasks: usize, wait: Duration) -> Vec<Delivery> {
        let config = &self.inner.config;
        let max = max_tasks.clamp(1, config.max_poll_tasks.max(1));
        let deadline = Instant::now() + wait.min(config.max_poll_wait);
        let (id, rx) = {
            let mut state = self.inner.lock();
            let now = Instant::now();
            state.reclaim(queue, now, config);
            // After `reclaim` a queue has queued tasks only when no poll waits, so taking
            // them here does not overtake an earlier poll.
            if state.queues.get(queue).is_some_and(|q| q.queued > 0) {
                return state.take(queue, max, worker, now, config.lease);
            }
            if deadline <= now {
                return Vec::new();
            }
            let id = state.next_poll;
            state.next_poll += 1;
            let (tx, rx) = oneshot::channel();
            let waiter = Waiter { id, worker: worker.to_owned(), max, tx };
            state.queues.entry(Arc::from(queue)).or_default().waiters.push_back(waiter);
            (id, rx)
        };
        let mut waiting = Waiting { queues: self, queue, id, rx, done: false };
        let delivered = tokio::select! {
            delivered = &mut waiting.rx => delivered.ok(),
            () = tokio::time::sleep_until(deadline) => None,
        };
        waiting.finish(delivered)
    }

    /// Completes `task` with `output`, the answer of its call.
    pub fn complete(&self, task: TaskId, token: LeaseToken, output: Value) -> Result<(), LeaseError> {
        self.answer(task, token, Ok(output))
    }

    /// Fails `task`'s current attempt; the executor's retry policy decides what follows
    /// (`failure.retryable` and `failure.class` as for any invoker).
    pub fn fail(&self, task: TaskId, token: LeaseToken, failure: Failure) -> Result<(), LeaseError> {
        self.answer(task, token, Err(failure))
    }

    /// A heartbeat: renews `task`'s lease for another `lease` from now; returns the new deadline.
    pub fn extend(&self, task: TaskId, token: LeaseToken) -> Result<Instant, LeaseError> {
        let config = &self.inner.config;
        let mut state = self.inner.lock();
        let now = Instant::now();
        let queue = state.check(task, token, now, config)?;
        let State { tasks, queues, .. } = &mut *state;
        let lease = tasks.get_mut(&task).and_then(|t| t.lease.as_mut()).expect("a checked task is leased");
        let leases = &mut queues.get_mut(&*queue).expect("a leased task's queue exists").leases;
        leases.remove(&(lease.deadline, task));
        lease.deadline = now + config.lease;
        leases.insert((lease.deadline, task));
        Ok(lease.deadline)
    }

    /// Tasks of `queue` waiting for a worker.
    pub fn queue_depth(&self, queue: &str) -> usize {
        self.stats(queue).queued
    }

    /// `queue`'s figures (all zero for a queue nothing uses).
    pub fn stats(&self, queue: &str) -> QueueStats {
        let mut state = self.inner.lock();
        let now = Instant::now();
        state.reclaim(queue, now, &self.inner.config);
        state.stats(queue, now)
    }

    /// The figures of every queue in use, by name.
    pub fn all_stats(&self) -> Vec<(String, QueueStats)> {
        let mut state = self.inner.lock();
        let now = Instant::now();
        let mut names: Vec<Arc<str>> = state.queues.keys().cloned().collect();
        names.sort_unstable();
        for name in &names {
            state.reclaim(name, now, &self.inner.config);
        }
        names.iter().map(|name| (name.to_string(), state.stats(name, now))).collect()
    }

    fn answer(&self, task: TaskId, token: LeaseToken, result: Result<Value, Failure>) -> Result<(), LeaseError> {
        let mut state = self.inner.lock();
        let queue = state.check(task, token, Instant::now(), &self.inner.config)?;
        state.finish(task, &queue, result);
        Ok(())
    }

    /// Queues `call` on `queue`.
    fn enqueue(&self, queue: String, call: Call) -> Result<Pending<'_>, Failure> {
        let config = &self.inner.config;
        let mut state = self.inner.lock();
        let now = Instant::now();
        state.reclaim(&queue, now, config);
        let depth = state.queues.get(queue.as_str()).map_or(0, |q| q.queued);
        if depth >= config.max_queue_len {
            return Err(Failure::retryable("queue_full", format!("queue {queue} holds {depth} tasks, its limit")));
        }
        let id = TaskId(u128::from(self.inner.instance) << 64 | u128::from(state.next_task));
        state.next_task += 1;
        let (reply, rx) = oneshot::channel();
        let leased = Arc::new(Notify::new());
        let queue: Arc<str> = Arc::from(queue);
        let task = Task {
            queue: Arc::clone(&queue),
            call,
            queued_at: now,
            lease: None,
            deliveries: 0,
            expired_leases: 0,
            reply,
            leased: Arc::clone(&leased),
        };
        state.tasks.insert(id, task);
        let q = state.queues.entry(Arc::clone(&queue)).or_default();
        q.ready.push_back(id);
        q.queued += 1;
        state.serve(&queue, now, config);
        Ok(Pending { queues: self, id, rx, leased, done: false })
    }

    /// The deadline of `task`'s lease, if it is leased, after reclaiming expired leases.
    fn lease_deadline(&self, task: TaskId) -> Option<Instant> {
        let mut state = self.inner.lock();
        let queue = Arc::clone(&state.tasks.get(&task)?.queue);
        state.reclaim(&queue, Instant::now(), &self.inner.config);
        state.tasks.get(&task)?.lease.as_ref().map(|l| l.deadline)
    }
}

impl Invoker for WorkerQueues {
    async fn invoke(&self, call: Call) -> Result<Value, Failure> {
        let Some(queue) = (self.inner.resolve)(&call.service) else {
            return Err(Failure::permanent("unknown_service", format!("no queue for service {}", call.service)));
        };
        let mut pending = self.enqueue(queue, call)?;
        loop {
            // This call is its task's lease timer: it wakes at the deadline and reclaims.
            let deadline = self.lease_deadline(pending.id);
            let expiry = async {
                match deadline {
                    Some(deadline) => tokio::time::sleep_until(deadline).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                result = &mut pending.rx => {
                    pending.done = true;
                    return result.unwrap_or_else(|_| {
                        Err(Failure::retryable("worker_queue", format!("task {} was dropped unanswered", pending.id)))
                    });
                }
                () = pending.leased.notified() => {}
                () = expiry => {}
            }
        }
    }
}

/// A queued call; dropping it before the answer withdraws the task.
struct Pending<'a> {
    queues: &'a WorkerQueues,
    id: TaskId,
    rx: oneshot::Receiver<Result<Value, Failure>>,
    leased: Arc<Notify>,
    done: bool,
}

impl Drop for Pending<'_> {
    fn drop(&mut self) {
        if !self.done {
            self.queues.inner.lock().withdraw(self.id);
        }
    }
}

/// A waiting poll; dropping it before it returns hands its tasks back.
struct Waiting<'a> {
    queues: &'a WorkerQueues,
    queue: &'a str,
    id: u64,
    rx: oneshot::Receiver<Vec<Delivery>>,
    done: bool,
}

impl Waiting<'_> {
    /// Stops waiting; returns what was delivered, even at the last moment.
    fn finish(mut self, delivered: Option<Vec<Delivery>>) -> Vec<Delivery> {
        self.done = true;
        if let Some(tasks) = delivered {
            return tasks;
        }
        let mut state = self.queues.inner.lock();
        let tasks = self.leave(&mut state);
        state.tidy(self.queue);
        tasks
    }

    /// Leaves the waiters, under the lock so that nothing can be delivered afterwards;
    /// returns what was delivered before.
    fn leave(&mut self, state: &mut State) -> Vec<Delivery> {
        if let Some(queue) = state.queues.get_mut(self.queue) {
            queue.waiters.retain(|w| w.id != self.id);
        }
        self.rx.close();
        self.rx.try_recv().unwrap_or_default()
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        let mut state = self.queues.inner.lock();
        let tasks = self.leave(&mut state);
        state.release(self.queue, &tasks);
        state.serve(self.queue, Instant::now(), &self.queues.inner.config);
        state.tidy(self.queue);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use baton_core::StepId;
    use futures_util::FutureExt;
    use serde_json::json;

    const SECOND: Duration = Duration::from_secs(1);

    fn queues(config: WorkerConfig) -> WorkerQueues {
        config.build(Arc::new(|s: &ServiceId| Some(format!("q-{s}"))))
    }

    fn call(service: &str, step: &str) -> Call {
        Call {
            execution: ExecutionId::generate(),
            step: StepId::new(step).unwrap(),
            attempt: 1,
            service: ServiceId::new(service).unwrap(),
            payload: json!({"step": step}),
            request: None,
            timeout: None,
            trace: None,
        }
    }

    /// Queues a call in a task of its own and waits until it is queued or leased.
    async fn spawn_call(
        queues: &WorkerQueues,
        service: &str,
        step: &str,
    ) -> tokio::task::JoinHandle<Result<Value, Failure>> {
        let queue = format!("q-{service}");
        let before = queues.stats(&queue);
        let q = queues.clone();
        let c = call(service, step);
        let handle = tokio::spawn(async move { q.invoke(c).await });
        for _ in 0..100 {
            let now = queues.stats(&queue);
            if now.queued + now.leased > before.queued + before.leased {
                return handle;
            }
            tokio::task::yield_now().await;
        }
        panic!("the call to {service} was not queued");
    }

    #[test]
    fn task_ids_print_as_hex_and_parse_back() {
        let id = TaskId(0x0123_4567_89ab_cdef_0000_0000_0000_002a);
        assert_eq!(id.to_string(), "0123456789abcdef000000000000002a");
        assert_eq!(id.to_string().parse::<TaskId>(), Ok(id));
        assert!("not hex".parse::<TaskId>().is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn instances_draw_distinct_task_ids() {
        let a = queues(WorkerConfig::default());
        let b = queues(WorkerConfig::default());
        let _ca = spawn_call(&a, "s", "x").await;
        let _cb = spawn_call(&b, "s", "x").await;
        let ta = a.poll("q-s", "w", 1, Duration::ZERO).await;
        let tb = b.poll("q-s", "w", 1, Duration::ZERO).await;
        assert_ne!(ta[0].task, tb[0].task, "same sequence number, different instances");
        assert_eq!(ta[0].task.0 as u64, tb[0].task.0 as u64);
    }

    #[tokio::test(start_paused = true)]
    async fn a_poll_dropped_after_delivery_hands_its_tasks_back_in_order() {
        let q = queues(WorkerConfig::default());
        let mut poll = Box::pin(q.poll("q-s", "w1", 2, SECOND * 10));
        assert!((&mut poll).now_or_never().is_none(), "nothing queued yet");
        assert_eq!(q.stats("q-s").pollers, 1);
        let _a = spawn_call(&q, "s", "a").await;
        let _b = spawn_call(&q, "s", "b").await;
        // The first task went to the waiting poll at once; the second waits.
        assert_eq!((q.stats("q-s").leased, q.stats("q-s").queued), (1, 1));
        drop(poll);
        assert_eq!(q.stats("q-s"), QueueStats { queued: 2, leased: 0, pollers: 0, backlog_age: Duration::ZERO });
        let tasks = q.poll("q-s", "w2", 2, Duration::ZERO).await;
        let steps: Vec<&str> = tasks.iter().map(|t| t.call.step.as_str()).collect();
        assert_eq!(steps, ["a", "b"]);
        assert_eq!(tasks[0].token, LeaseToken(2), "the dropped poll's delivery counts");
        assert_eq!(
            q.complete(tasks[0].task, LeaseToken(1), json!(1)),
            Err(LeaseError::Stale { task: tasks[0].task, token: LeaseToken(1) })
        );
    }

    #[tokio::test(start_paused = true)]
    async fn withdrawn_tasks_are_skipped_and_idle_queues_forgotten() {
        let q = queues(WorkerConfig::default());
        let calls: Vec<_> =
            [spawn_call(&q, "s", "a").await, spawn_call(&q, "s", "b").await, spawn_call(&q, "s", "c").await]
                .into_iter()
                .collect();
        calls[0].abort();
        calls[1].abort();
        for _ in 0..100 {
            if q.queue_depth("q-s") == 1 {
                break;
            }
            tokio::task::yield_now().await;
        }
        assert_eq!(q.queue_depth("q-s"), 1);
        let tasks = q.poll("q-s", "w", 5, Duration::ZERO).await;
        assert_eq!(tasks.len(), 1);
        assert_eq!(tasks[0].call.step.as_str(), "c");
        // Never delivered, so not remembered: a forged answer is simply unknown.
        let first = TaskId(tasks[0].task.0 - 2);
        assert_eq!(q.complete(first, LeaseToken(1), json!(0)), Err(LeaseError::UnknownTask(first)));
        q.complete(tasks[0].task, tasks[0].token, json!("c")).unwrap();
        assert!(q.inner.lock().queues.is_empty(), "the idle queue is dropped");
        assert!(q.all_stats().is_empty());
        // An empty poll leaves nothing behind either.
        assert!(q.poll("q-other", "w", 1, SECOND).await.is_empty());
        assert!(q.inner.lock().queues.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn many_withdrawals_compact_the_queue() {
        let q = queues(WorkerConfig::default());
        let mut calls = Vec::new();
        for i in 0..200 {
            calls.push(spawn_call(&q, "s", &format!("t{i}")).await);
        }
        for call in &calls[..199] {
            call.abort();
        }
        for _ in 0..1000 {
            if q.queue_depth("q-s") == 1 {
                break;
            }
            tokio::task::yield_now().await;
        }
        let state = q.inner.lock();
        let queue = &state.queues["q-s"];
        assert_eq!(queue.queued, 1);
        assert!(queue.ready.len() <= 2 * queue.queued + 64, "{} ids kept", queue.ready.len());
    }

    #[test]
    fn the_retired_memory_is_bounded() {
        let mut retired = Retired::default();
        for i in 0..(RETIRED_MEMORY as u128 + 10) {
            retired.insert(TaskId(i), if i % 2 == 0 { Gone::Finished } else { Gone::Cancelled });
        }
        assert_eq!((retired.how.len(), retired.order.len()), (RETIRED_MEMORY, RETIRED_MEMORY));
        let token = LeaseToken(1);
        assert_eq!(retired.error(TaskId(0), token), LeaseError::UnknownTask(TaskId(0)), "forgotten");
        assert_eq!(retired.error(TaskId(10), token), LeaseError::Finished(TaskId(10)));
        assert_eq!(retired.error(TaskId(11), token), LeaseError::Cancelled(TaskId(11)));
    }

    #[tokio::test(start_paused = true)]
    async fn poll_limits_are_clamped_by_the_config() {
        let q = queues(WorkerConfig { max_poll_tasks: 2, max_poll_wait: SECOND * 5, ..WorkerConfig::default() });
        let started = Instant::now();
        assert!(q.poll("q-s", "w", 0, SECOND * 3600).await.is_empty());
        assert_eq!(started.elapsed(), SECOND * 5, "the wait is capped");
        let _calls = [spawn_call(&q, "s", "a").await, spawn_call(&q, "s", "b").await, spawn_call(&q, "s", "c").await];
        assert_eq!(q.poll("q-s", "w", 0, Duration::ZERO).await.len(), 1, "0 asks for one");
        assert_eq!(q.poll("q-s", "w", 100, Duration::ZERO).await.len(), 2, "capped at max_poll_tasks");
    }
}
