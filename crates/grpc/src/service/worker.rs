//! `baton.v1.WorkerService` over any [`WorkerTasks`]: `PollTasks` as a server stream that
//! keeps long-polling and pushing tasks until the worker goes away, never holding more than
//! the worker's `max_tasks` unfinished at once.
//!
//! A task counts against its stream from the poll that leased it until this server sees it
//! completed or failed, or its lease runs out (extensions through this server move that
//! end). The count lives here, not in the port, because only the stream knows its limit.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use baton_core::api::{PollTasks, TaskFailure, TaskToken};
use baton_core::{ApiError, ApiResult, Clock as _, SystemClock, Timestamp, WorkerTasks};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use crate::convert::{invalid, json_field, leased_task_to_proto, timestamp_to_proto};
use crate::error::api_status;
use crate::limits::{Limits, Stopping, shutting_down};
use crate::pb;

/// The tasks of a `PollTasks` call.
pub type TaskStream = Pin<Box<dyn Stream<Item = Result<pb::PollTasksResponse, Status>> + Send>>;

/// The longest worker id accepted, in bytes.
const MAX_WORKER_ID_LEN: usize = 256;

/// The worker service: streams leased tasks and passes results to the worker-tasks port.
#[derive(Clone)]
pub struct WorkerApi {
    tasks: Arc<dyn WorkerTasks>,
    limits: Limits,
    held: Arc<Held>,
    stopping: Stopping,
}

impl std::fmt::Debug for WorkerApi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkerApi").field("limits", &self.limits).finish_non_exhaustive()
    }
}

/// The unfinished tasks of every stream: each holds one slot of its stream's semaphore until
/// it is answered or its lease ends.
#[derive(Debug, Default)]
struct Held {
    leases: Mutex<HashMap<TaskToken, Slot>>,
}

#[derive(Debug)]
struct Slot {
    expires_at: Timestamp,
    /// Given back to the stream's semaphore when the slot is dropped.
    _permit: Option<OwnedSemaphorePermit>,
}

impl Held {
    fn lock(&self) -> MutexGuard<'_, HashMap<TaskToken, Slot>> {
        // Nothing panics while holding it; a poisoned map is still consistent.
        self.leases.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn hold(&self, token: TaskToken, expires_at: Timestamp, permit: Option<OwnedSemaphorePermit>) {
        self.lock().insert(token, Slot { expires_at, _permit: permit });
    }

    fn release(&self, token: &TaskToken) {
        self.lock().remove(token);
    }

    fn extend(&self, token: &TaskToken, expires_at: Timestamp) {
        if let Some(slot) = self.lock().get_mut(token) {
            slot.expires_at = expires_at;
        }
    }

    /// Frees the slots of expired leases; returns how long until the next one expires.
    fn sweep(&self, now: Timestamp) -> Option<Duration> {
        let mut leases = self.lock();
        leases.retain(|_, slot| slot.expires_at > now);
        leases.values().map(|slot| (slot.expires_at - now).to_std().unwrap_or_default()).min()
    }
}

impl WorkerApi {
    /// Serves `tasks` within `limits`.
    pub fn new(tasks: Arc<dyn WorkerTasks>, limits: Limits) -> Self {
        Self { tasks, limits, held: Arc::default(), stopping: Stopping::never() }
    }

    /// Ends poll streams when `stopping` fires.
    pub(crate) fn stopping(self, stopping: Stopping) -> Self {
        Self { stopping, ..self }
    }

    /// Frees the stream slot of a task once its token is dead: answered, or refused as not live.
    fn settle<T>(&self, token: &TaskToken, result: &ApiResult<T>) {
        match result {
            Ok(_) | Err(ApiError::NotFound(_) | ApiError::FailedPrecondition(_)) => self.held.release(token),
            Err(_) => {}
        }
    }
}

fn token(text: &str) -> Result<TaskToken, Status> {
    TaskToken::new(text).map_err(api_status)
}

/// Polls and pushes tasks until the worker goes away or the port fails.
async fn pump(
    tasks: Arc<dyn WorkerTasks>,
    held: Arc<Held>,
    request: PollTasks,
    slots: Arc<Semaphore>,
    poll_wait: Duration,
    mut stopping: Stopping,
    tx: mpsc::Sender<Result<pb::PollTasksResponse, Status>>,
) {
    loop {
        let next_expiry = held.sweep(SystemClock.now());
        let free = slots.available_permits();
        if free == 0 {
            // Every slot is taken: wait for an answer, a lease to run out, or the worker to go.
            tokio::select! {
                permit = Arc::clone(&slots).acquire_owned() => drop(permit),
                () = tokio::time::sleep(next_expiry.unwrap_or(poll_wait).min(poll_wait)) => {}
                () = tx.closed() => return,
                () = stopping.wait() => {
                    let _ = tx.send(Err(shutting_down())).await;
                    return;
                }
            }
            continue;
        }
        let Ok(mut permits) = Arc::clone(&slots).try_acquire_many_owned(u32::try_from(free).unwrap_or(u32::MAX)) else {
            continue;
        };
        let poll = PollTasks { max_tasks: permits.num_permits(), max_wait: poll_wait, ..request.clone() };
        // Dropping the poll when the worker goes away leases nothing (the port's contract).
        let leased = tokio::select! {
            leased = tasks.poll(poll) => leased,
            // A backstop for a port that waits longer than asked: poll again.
            () = tokio::time::sleep(poll_wait) => Ok(Vec::new()),
            () = tx.closed() => return,
            () = stopping.wait() => {
                let _ = tx.send(Err(shutting_down())).await;
                return;
            }
        };
        match leased {
            Err(error) => {
                let _ = tx.send(Err(api_status(error))).await;
                return;
            }
            Ok(leased) => {
                for task in leased {
                    held.hold(task.token.clone(), task.lease_expires_at, permits.split(1));
                    let response = pb::PollTasksResponse { task: Some(leased_task_to_proto(&task)) };
                    if tx.send(Ok(response)).await.is_err() {
                        // Gone: the tasks it did not get go back to their queues when their
                        // leases run out.
                        return;
                    }
                }
            }
        }
    }
}

#[tonic::async_trait]
impl pb::worker_service_server::WorkerService for WorkerApi {
    type PollTasksStream = TaskStream;

    async fn poll_tasks(
        &self,
        request: Request<pb::PollTasksRequest>,
    ) -> Result<Response<Self::PollTasksStream>, Status> {
        let request = request.into_inner();
        if request.worker_id.trim().is_empty() {
            return Err(invalid("worker_id", "must not be empty"));
        }
        if request.worker_id.len() > MAX_WORKER_ID_LEN {
            return Err(invalid(
                "worker_id",
                format!("is {} bytes long, the limit is {MAX_WORKER_ID_LEN}", request.worker_id.len()),
            ));
        }
        if request.queues.is_empty() {
            return Err(invalid("queues", "must name at least one queue"));
        }
        for (i, queue) in request.queues.iter().enumerate() {
            baton_core::ids::validate_name(&format!("queues[{i}]"), queue)
                .map_err(|e| Status::invalid_argument(e.to_string()))?;
        }
        let max_tasks = request.max_tasks.clamp(1, self.limits.max_poll_tasks.max(1)) as usize;
        let poll =
            PollTasks { worker: request.worker_id, queues: request.queues, max_tasks, max_wait: self.limits.poll_wait };
        let (tx, rx) = mpsc::channel(max_tasks);
        let slots = Arc::new(Semaphore::new(max_tasks));
        tokio::spawn(pump(
            Arc::clone(&self.tasks),
            Arc::clone(&self.held),
            poll,
            slots,
            self.limits.poll_wait,
            self.stopping.clone(),
            tx,
        ));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx)) as TaskStream))
    }

    async fn complete_task(
        &self,
        request: Request<pb::CompleteTaskRequest>,
    ) -> Result<Response<pb::CompleteTaskResponse>, Status> {
        let request = request.into_inner();
        let token = token(&request.task_token)?;
        let output = json_field("output_json", &request.output_json, serde_json::Value::Null)?;
        let result = self.tasks.complete(token.clone(), output).await;
        self.settle(&token, &result);
        result.map_err(api_status)?;
        Ok(Response::new(pb::CompleteTaskResponse {}))
    }

    async fn fail_task(&self, request: Request<pb::FailTaskRequest>) -> Result<Response<pb::FailTaskResponse>, Status> {
        let request = request.into_inner();
        let token = token(&request.task_token)?;
        let error =
            if request.error.trim().is_empty() { "the worker failed the task".to_owned() } else { request.error };
        let result = self.tasks.fail(token.clone(), TaskFailure { error, retryable: request.retryable }).await;
        self.settle(&token, &result);
        result.map_err(api_status)?;
        Ok(Response::new(pb::FailTaskResponse {}))
    }

    async fn extend_lease(
        &self,
        request: Request<pb::ExtendLeaseRequest>,
    ) -> Result<Response<pb::ExtendLeaseResponse>, Status> {
        let token = token(&request.into_inner().task_token)?;
        let result = self.tasks.extend(token.clone()).await;
        match &result {
            Ok(extension) => self.held.extend(&token, extension.expires_at),
            Err(_) => self.settle(&token, &result),
        }
        let extension = result.map_err(api_status)?;
        Ok(Response::new(pb::ExtendLeaseResponse {
            lease_expires_at: Some(timestamp_to_proto(extension.expires_at)),
            cancel_requested: extension.cancel_requested,
        }))
    }
}
