//! Worker queues of a cluster node, in the cluster's database ([`baton_cluster::tasks`]): a
//! call to a `Worker { queue }` service becomes a task row that a worker polling any node may
//! lease; this node, owning the call's execution, waits for the row's answer.
//!
//! The answers of every call waiting here are read in one query per
//! [`OUTCOME_POLL`] by one background task, which also
//! removes old closed rows of this node's partitions and reads every queue's depth across
//! the cluster (for the metrics and the console) every 2 s. A poll claims at once what is open and
//! then tries again at the same interval until its wait is over; a task queued on this node
//! wakes this node's polls at once. A poll dropped while its claim is in flight puts what the
//! claim took back in the queue, so dropping a poll loses no task.

use std::collections::HashMap;
use std::sync::{Arc, Weak};
use std::time::Duration;

use baton_cluster::tasks::{Claimed, Enqueued, NewTask, OUTCOME_POLL, Outcome, TaskError, TaskQueues, TaskRef};
use baton_core::activity::QueueDepth;
use baton_executor::{Call, Failure, ResolveQueue, WorkerConfig, WorkerQueues};
use parking_lot::Mutex;
use serde_json::Value;
use tokio::sync::{Notify, oneshot};
use tokio::time::Instant;

/// How often closed rows of this node's partitions are looked for, and how many go at once.
const REMOVE_EVERY: Duration = Duration::from_secs(5);
const REMOVE_BATCH: usize = 1000;

/// How often the queues' depths across the cluster are read.
const DEPTHS_EVERY: Duration = Duration::from_secs(2);

/// The least time between two warnings of the answer reader.
const QUIET: Duration = Duration::from_secs(10);

/// The calls waiting for an answer, by task id.
type Waiting = HashMap<u128, (u32, oneshot::Sender<Outcome>)>;

/// The shared worker queues of this node. Cheap to clone.
#[derive(Clone)]
pub struct SharedWorkers {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for SharedWorkers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedWorkers").field("tasks", &self.inner.tasks).finish_non_exhaustive()
    }
}

struct Inner {
    tasks: TaskQueues,
    config: WorkerConfig,
    resolve: ResolveQueue,
    waiting: Mutex<Waiting>,
    /// Wakes the answer reader when the first call starts waiting.
    new_waiter: Arc<Notify>,
    /// Wakes this node's polls when it queued a task.
    queued: Notify,
    /// Every queue's depth across the cluster, as last read.
    depths: Mutex<Vec<QueueDepth>>,
}

impl SharedWorkers {
    /// Queues over `tasks`, for services `resolve` maps to a queue; starts the answer reader,
    /// which ends when the last clone is dropped.
    pub fn start(tasks: TaskQueues, config: WorkerConfig, resolve: ResolveQueue) -> Self {
        let inner = Arc::new(Inner {
            tasks,
            config,
            resolve,
            waiting: Mutex::new(HashMap::new()),
            new_waiter: Arc::new(Notify::new()),
            queued: Notify::new(),
            depths: Mutex::new(Vec::new()),
        });
        tokio::spawn(read_answers(Arc::downgrade(&inner)));
        Self { inner }
    }

    /// Every queue with waiting or leased tasks on any node, by name, as read at most 2 s
    /// ago.
    pub fn depths(&self) -> Vec<QueueDepth> {
        self.inner.depths.lock().clone()
    }

    /// The table's operations, for the worker API.
    pub fn tasks(&self) -> &TaskQueues {
        &self.inner.tasks
    }

    /// Queues `call` and waits for a worker's answer, on whichever node the worker polls.
    /// Dropping the future withdraws the task (its holder's `extend` then answers
    /// `cancel_requested`), unless this node no longer owns the execution.
    pub async fn invoke(&self, call: Call) -> Result<Value, Failure> {
        let Some(queue) = (self.inner.resolve)(&call.service) else {
            return Err(Failure::permanent("unknown_service", format!("no queue for service {}", call.service)));
        };
        let task = NewTask {
            queue,
            execution: call.execution,
            step: call.step.to_string(),
            attempt: call.attempt,
            service: call.service.to_string(),
            payload: call.payload.to_string(),
            call_key: call.idempotency_key(),
        };
        let enqueued = self.inner.tasks.enqueue(task).await.map_err(|e| match e {
            TaskError::QueueFull { .. } => Failure::retryable("queue_full", e.to_string()),
            TaskError::Fenced(_) => Failure::retryable("fenced", e.to_string()),
            other => Failure::retryable("worker_queue", other.to_string()),
        })?;
        let task = match enqueued {
            Enqueued::Answered(task, outcome) => {
                tracing::debug!(task = format!("{:032x}", task.id), "adopted a task answered under a previous owner");
                return answer(task, outcome);
            }
            Enqueued::Open(task) => task,
        };
        self.inner.queued.notify_waiters();
        let (tx, rx) = oneshot::channel();
        self.inner.waiting.lock().insert(task.id, (task.attempt, tx));
        self.inner.new_waiter.notify_one();
        let mut pending = Pending { workers: self, execution: call.execution, task, done: false };
        let outcome = rx.await;
        pending.done = true;
        match outcome {
            Ok(outcome) => answer(task, outcome),
            Err(_) => Err(Failure::retryable("worker_queue", format!("task {:032x} was dropped unanswered", task.id))),
        }
    }

    /// Leases up to `max` tasks of `queues` to `worker`, waiting up to `wait` for the first;
    /// both bounded by the configuration.
    pub async fn poll(
        &self,
        queues: &[String],
        worker: &str,
        max: usize,
        wait: Duration,
    ) -> Result<Vec<Claimed>, TaskError> {
        let config = &self.inner.config;
        let max = max.clamp(1, config.max_poll_tasks.max(1));
        let deadline = Instant::now() + wait.min(config.max_poll_wait);
        loop {
            let queued = self.inner.queued.notified();
            let claim = {
                let (tasks, queues, worker) = (self.inner.tasks.clone(), queues.to_vec(), worker.to_owned());
                tokio::spawn(async move { tasks.claim(&queues, &worker, max).await })
            };
            let mut claiming = Claiming { tasks: &self.inner.tasks, claim: Some(claim) };
            let claimed = claiming.finish().await?;
            let now = Instant::now();
            if !claimed.is_empty() || now >= deadline {
                return Ok(claimed);
            }
            tokio::select! {
                () = queued => {}
                () = tokio::time::sleep_until(deadline.min(now + OUTCOME_POLL)) => {}
            }
        }
    }
}

/// A claim in flight; dropping it early (the poll went away) puts what it claims back.
struct Claiming<'a> {
    tasks: &'a TaskQueues,
    claim: Option<tokio::task::JoinHandle<Result<Vec<Claimed>, TaskError>>>,
}

impl Claiming<'_> {
    async fn finish(&mut self) -> Result<Vec<Claimed>, TaskError> {
        let claim = self.claim.as_mut().expect("finished once");
        let result = claim.await;
        self.claim = None;
        result.unwrap_or_else(|e| Err(TaskError::Unavailable(format!("the claim of worker tasks failed: {e}"))))
    }
}

impl Drop for Claiming<'_> {
    fn drop(&mut self) {
        let Some(claim) = self.claim.take() else { return };
        let tasks = self.tasks.clone();
        tokio::spawn(async move {
            if let Ok(Ok(claimed)) = claim.await
                && let Err(error) = tasks.release(&claimed).await
            {
                tracing::warn!(%error, "could not put back tasks claimed for a poll that went away");
            }
        });
    }
}

/// The answer of `task` as the executor takes it.
fn answer(task: TaskRef, outcome: Outcome) -> Result<Value, Failure> {
    match outcome {
        Outcome::Succeeded(output) => serde_json::from_str(&output).map_err(|e| {
            Failure::permanent(
                "worker",
                format!("task {:032x} was completed with output that is not JSON: {e}", task.id),
            )
        }),
        Outcome::Failed { message, retryable: true } => Err(Failure::retryable("worker", message)),
        Outcome::Failed { message, retryable: false } => Err(Failure::permanent("worker", message)),
        Outcome::LeaseExpired { leases, worker } => Err(Failure::retryable(
            "lease_expired",
            format!("task {:032x}: {leases} leases expired, the last held by worker {worker:?}", task.id),
        )),
    }
}

/// A call waiting for its task's answer; dropping it early withdraws the task.
struct Pending<'a> {
    workers: &'a SharedWorkers,
    execution: baton_core::ExecutionId,
    task: TaskRef,
    done: bool,
}

impl Drop for Pending<'_> {
    fn drop(&mut self) {
        self.workers.inner.waiting.lock().remove(&self.task.id);
        if self.done {
            return;
        }
        let tasks = self.workers.inner.tasks.clone();
        let (execution, task) = (self.execution, self.task);
        // Fenced like every write for the execution: a node that lost the partition leaves the
        // task to the new owner, which adopts it.
        tokio::spawn(async move {
            match tasks.withdraw(execution, task).await {
                Ok(_) | Err(TaskError::Fenced(_)) => {}
                Err(error) => tracing::warn!(%error, task = format!("{:032x}", task.id), "could not withdraw a task"),
            }
        });
    }
}

/// Reads the answers of the waiting calls every `OUTCOME_POLL` while any wait, and removes old
/// closed rows now and then; ends with the queues.
/// Every worker queue's waiting and leased tasks, by name: from `shared` (every node's, as read
/// a moment ago) in a cluster, else from this server's `local` queues.
pub(crate) fn queue_depths(local: &WorkerQueues, shared: Option<&SharedWorkers>) -> Vec<QueueDepth> {
    match shared {
        Some(shared) => shared.depths(),
        None => local
            .all_stats()
            .into_iter()
            .map(|(queue, stats)| QueueDepth { queue, queued: stats.queued as u64, leased: stats.leased as u64 })
            .collect(),
    }
}

async fn read_answers(inner: Weak<Inner>) {
    let mut last_removal = Instant::now();
    let mut last_depths: Option<Instant> = None;
    // A database that stays away is logged once per `QUIET`, not on every read.
    let mut warned: Option<Instant> = None;
    let mut warn = |what: &str, error: &TaskError| {
        if warned.is_none_or(|at| at.elapsed() >= QUIET) {
            warned = Some(Instant::now());
            tracing::warn!(%error, "could not {what}");
        }
    };
    loop {
        let Some(strong) = inner.upgrade() else { return };
        let ids: Vec<u128> = strong.waiting.lock().keys().copied().collect();
        if !ids.is_empty() {
            match strong.tasks.outcomes(&ids).await {
                Ok(answers) => {
                    let mut waiting = strong.waiting.lock();
                    for (task, outcome) in answers {
                        if let Some((attempt, tx)) = waiting.remove(&task.id) {
                            if attempt == task.attempt {
                                let _ = tx.send(outcome);
                            } else {
                                waiting.insert(task.id, (attempt, tx));
                            }
                        }
                    }
                }
                Err(error) => warn("read worker task answers", &error),
            }
        }
        if last_removal.elapsed() >= REMOVE_EVERY {
            last_removal = Instant::now();
            if let Err(error) = strong.tasks.remove_closed(REMOVE_BATCH).await {
                warn("remove closed worker tasks", &error);
            }
        }
        if last_depths.is_none_or(|at| at.elapsed() >= DEPTHS_EVERY) {
            last_depths = Some(Instant::now());
            match strong.tasks.depths().await {
                Ok(depths) => *strong.depths.lock() = depths,
                Err(error) => warn("read the worker queues' depths", &error),
            }
        }
        let idle = ids.is_empty();
        let new_waiter = Arc::clone(&strong.new_waiter);
        drop(strong);
        if idle {
            tokio::select! {
                () = new_waiter.notified() => {}
                () = tokio::time::sleep(DEPTHS_EVERY) => {}
            }
        } else {
            tokio::time::sleep(OUTCOME_POLL).await;
        }
    }
}
