//! The API ports of `baton-core` ([`WorkflowCatalog`], [`Executions`], [`WorkerTasks`],
//! [`Orchestrating`]) over the assembled orchestrator, for the gRPC services.

use std::time::Duration;

use baton_cluster::tasks::{Claimed, TaskError};
use baton_core::api::{
    AppliedDefinition, DefinitionDetail, DefinitionFormat, DefinitionPage, DefinitionQuery, DefinitionSummary,
    ExecutionQuery, LeaseExtension, LeasedTask, Orchestrate, Orchestration, PollTasks, StartExecution,
    StartedExecution, TaskFailure, TaskToken,
};
use baton_core::{
    ApiError, ApiResult, BoxFuture, Clock, EventStream, Execution, ExecutionId, ExecutionPage, Executions,
    Orchestrating, PageRequest, ServiceId, StepId, Store, StoredDefinition, SystemClock, WorkerTasks, WorkflowCatalog,
    WorkflowName,
};
use baton_executor::{Failure, LeaseError, LeaseToken, TaskId};
use futures_util::StreamExt;
use serde::Deserialize as _;
use serde_json::Value;

use crate::forward::{Command, Route};
use crate::orchestrator::ServiceOrchestrator;

/// A workflow engine error as the API reports it.
pub fn api_error(error: baton_workflow::Error) -> ApiError {
    use baton_workflow::Error as E;
    match error {
        E::Store(store) => store.into(),
        E::Invalid(invalid) => invalid.into(),
        E::IdempotencyConflict { .. } => ApiError::AlreadyExists(error.to_string()),
        E::InvalidTransition { .. } | E::NotRunning { .. } => ApiError::FailedPrecondition(error.to_string()),
        E::Runner { .. } => ApiError::Internal(error.to_string()),
        E::Stopped => ApiError::Unavailable(error.to_string()),
        E::WatchPastEnd { .. } => ApiError::OutOfRange(error.to_string()),
        E::InputTooLarge { .. } => {
            ApiError::InvalidArgument { field: "input_json".to_owned(), message: error.to_string() }
        }
        E::JournalFull { .. } => ApiError::ResourceExhausted(error.to_string()),
        E::ReasonTooLong { .. } => ApiError::InvalidArgument { field: "reason".to_owned(), message: error.to_string() },
        // Everything else is a definition that does not check.
        other => ApiError::invalid("source", other),
    }
}

/// The summary of a stored definition. It was checked when applied; reading it back does not
/// compile its expressions again, which would cost a page of listings up to a second each.
fn summary(stored: &StoredDefinition) -> ApiResult<DefinitionSummary> {
    let definition = baton_core::WorkflowDefinition::deserialize(&stored.body).map_err(|e| {
        ApiError::Internal(format!("stored definition {} version {} does not read: {e}", stored.name, stored.version))
    })?;
    Ok(DefinitionSummary {
        name: stored.name.clone(),
        version: stored.version,
        description: definition.description,
        content_hash: stored.content_hash.clone(),
        step_count: definition.steps.len() as u32,
        created_at: stored.created_at,
    })
}

impl ServiceOrchestrator {
    /// Where a command for `id` runs: here, except in a cluster when another node owns it.
    async fn route(&self, id: ExecutionId) -> ApiResult<Route> {
        match self.forwarder() {
            None => Ok(Route::Local),
            Some(forwarder) => forwarder.route(id).await,
        }
    }

    /// Sends `command` to `owner`; the answer is then read here, from the store, where the
    /// owner has journaled the command's effect before it answered.
    async fn forwarded(&self, owner: &baton_cluster::Peer, id: ExecutionId, command: Command) -> ApiResult<()> {
        let forwarder = self.forwarder().ok_or_else(|| ApiError::Internal("forwarding outside a cluster".into()))?;
        forwarder.send(owner, id, command).await
    }

    async fn stored(&self, name: &WorkflowName, version: Option<u32>) -> ApiResult<StoredDefinition> {
        Ok(self.store().get_definition(name, version).await?)
    }
}

impl WorkflowCatalog for ServiceOrchestrator {
    fn apply(&self, source: String, format: DefinitionFormat) -> BoxFuture<'_, ApiResult<AppliedDefinition>> {
        Box::pin(async move {
            // YAML is a superset of JSON: one parser reads both, and a JSON source that does
            // not parse as JSON is named as such.
            if format.detect(&source) == DefinitionFormat::Json {
                serde_json::from_str::<Value>(&source)
                    .map_err(|e| ApiError::invalid("source", format!("not JSON: {e}")))?;
            }
            let applied = self.engine().apply(&source).await.map_err(api_error)?;
            let stored = self.stored(&applied.name, Some(applied.version)).await?;
            Ok(AppliedDefinition { definition: summary(&stored)?, created: applied.created })
        })
    }

    fn get(&self, name: WorkflowName, version: Option<u32>) -> BoxFuture<'_, ApiResult<DefinitionDetail>> {
        Box::pin(async move {
            let stored = self.stored(&name, version).await?;
            Ok(DefinitionDetail { summary: summary(&stored)?, definition: stored.body, source: None })
        })
    }

    fn list(&self, query: DefinitionQuery) -> BoxFuture<'_, ApiResult<DefinitionPage>> {
        Box::pin(async move {
            let limit = query.limit.max(1);
            match &query.name {
                // The latest version of every workflow, by name; the token is the last name.
                None => {
                    let after = query.page_token.as_deref().map(str::to_owned);
                    let mut latest = self.store().list_definitions().await?;
                    latest.sort_by(|a, b| a.name.cmp(&b.name));
                    let mut page: Vec<_> =
                        latest.iter().filter(|d| after.as_deref().is_none_or(|a| d.name.as_str() > a)).collect();
                    let more = page.len() > limit;
                    page.truncate(limit);
                    let next = if more { page.last().map(|d| d.name.to_string()) } else { None };
                    let definitions = page.into_iter().map(summary).collect::<ApiResult<_>>()?;
                    Ok(DefinitionPage { definitions, next })
                }
                // Every version of one workflow, newest first; the token is the next version.
                Some(name) => {
                    let latest = self.stored(name, None).await?.version;
                    let from = match &query.page_token {
                        None => latest,
                        Some(token) => token
                            .parse::<u32>()
                            .ok()
                            .filter(|v| (1..=latest).contains(v))
                            .ok_or_else(|| ApiError::invalid("page_token", "not a token this listing issued"))?,
                    };
                    let mut definitions = Vec::new();
                    let mut version = from;
                    while version >= 1 && definitions.len() < limit {
                        definitions.push(summary(&self.stored(name, Some(version)).await?)?);
                        version -= 1;
                    }
                    let next = (version >= 1).then(|| version.to_string());
                    Ok(DefinitionPage { definitions, next })
                }
            }
        })
    }
}

impl Executions for ServiceOrchestrator {
    fn start(&self, request: StartExecution) -> BoxFuture<'_, ApiResult<StartedExecution>> {
        Box::pin(async move {
            if let Some(reason) = self.refusing_new_work() {
                return Err(ApiError::ResourceExhausted(reason));
            }
            let (id, existing) = self
                .engine()
                .start_or_find(
                    &request.workflow,
                    request.version,
                    request.input,
                    request.idempotency_key,
                    request.trace,
                )
                .await
                .map_err(api_error)?;
            let execution = self.engine().get(id).await.map_err(api_error)?;
            Ok(StartedExecution { execution, existing })
        })
    }

    fn get(&self, id: ExecutionId) -> BoxFuture<'_, ApiResult<Execution>> {
        Box::pin(async move { self.engine().get(id).await.map_err(api_error) })
    }

    fn list(&self, query: ExecutionQuery, page: PageRequest) -> BoxFuture<'_, ApiResult<ExecutionPage>> {
        Box::pin(async move {
            let mut found = self.store().list_executions(&query.store_filter(), &page).await?;
            found.executions.retain(|execution| query.matches(execution));
            Ok(found)
        })
    }

    fn pause(&self, id: ExecutionId) -> BoxFuture<'_, ApiResult<Execution>> {
        Box::pin(async move {
            match self.route(id).await? {
                Route::Local => self.engine().pause(id).await.map_err(api_error)?,
                Route::Owner(owner) => self.forwarded(&owner, id, Command::Pause).await?,
            }
            self.engine().get(id).await.map_err(api_error)
        })
    }

    fn resume(&self, id: ExecutionId) -> BoxFuture<'_, ApiResult<Execution>> {
        Box::pin(async move {
            match self.route(id).await? {
                Route::Local => self.engine().resume(id).await.map_err(api_error)?,
                Route::Owner(owner) => self.forwarded(&owner, id, Command::Resume).await?,
            }
            self.engine().get(id).await.map_err(api_error)
        })
    }

    fn cancel(&self, id: ExecutionId, reason: String) -> BoxFuture<'_, ApiResult<Execution>> {
        Box::pin(async move {
            match self.route(id).await? {
                Route::Local => self.engine().cancel(id, &reason).await.map_err(api_error)?,
                Route::Owner(owner) => self.forwarded(&owner, id, Command::Cancel(reason)).await?,
            }
            self.engine().get(id).await.map_err(api_error)
        })
    }

    fn watch(&self, id: ExecutionId, from_sequence: u64) -> BoxFuture<'_, ApiResult<EventStream>> {
        Box::pin(async move {
            let events = self.engine().watch(id, from_sequence).await.map_err(api_error)?;
            let stream: EventStream = Box::pin(events.map(|event| event.map_err(api_error)));
            Ok(stream)
        })
    }

    fn signal(&self, id: ExecutionId, name: String, data: serde_json::Value) -> BoxFuture<'_, ApiResult<Execution>> {
        Box::pin(async move {
            match self.route(id).await? {
                Route::Local => self.engine().signal(id, &name, data).await.map_err(api_error)?,
                Route::Owner(owner) => self.forwarded(&owner, id, Command::Signal(name, data)).await?,
            }
            self.engine().get(id).await.map_err(api_error)
        })
    }

    fn journal(&self, id: ExecutionId, from_sequence: u64) -> BoxFuture<'_, ApiResult<Vec<baton_core::Event>>> {
        Box::pin(async move { Ok(self.store().read_journal(id, from_sequence.max(1)).await?) })
    }
}

/// `<task id>.<delivery>`: the task and the delivery that leased it, for fencing.
fn token(task: TaskId, lease: LeaseToken) -> TaskToken {
    TaskToken::new(&format!("{task}.{}", lease.delivery())).expect("hex and digits make a valid token")
}

fn parse_token(token: &TaskToken) -> ApiResult<(TaskId, LeaseToken)> {
    let invalid = || ApiError::invalid("task_token", format!("{token:?} is not a token Baton issued"));
    let (task, delivery) = token.as_str().split_once('.').ok_or_else(invalid)?;
    let task = task.parse::<TaskId>().map_err(|_| invalid())?;
    let delivery = delivery.parse::<u32>().map_err(|_| invalid())?;
    Ok((task, LeaseToken::new(delivery)))
}

fn lease_error(error: LeaseError) -> ApiError {
    ApiError::not_found(error)
}

/// A monotonic deadline as wall-clock time.
fn wall(deadline: tokio::time::Instant) -> baton_core::Timestamp {
    let left = deadline.saturating_duration_since(tokio::time::Instant::now());
    SystemClock.now() + chrono::Duration::from_std(left).unwrap_or_default()
}

/// A shared task's token: its id and delivery number, as the single-server token reads.
fn parse_shared_token(token: &TaskToken) -> ApiResult<(u128, u32)> {
    let invalid = || ApiError::invalid("task_token", format!("{token:?} is not a token Baton issued"));
    let (task, delivery) = token.as_str().split_once('.').ok_or_else(invalid)?;
    let task = u128::from_str_radix(task, 16).map_err(|_| invalid())?;
    let delivery = delivery.parse::<u32>().map_err(|_| invalid())?;
    Ok((task, delivery))
}

fn task_error(error: TaskError) -> ApiError {
    match error {
        TaskError::NotLive(_) => ApiError::not_found(error),
        TaskError::QueueFull { .. } => ApiError::ResourceExhausted(error.to_string()),
        TaskError::Fenced(_) | TaskError::Unavailable(_) => ApiError::Unavailable(error.to_string()),
    }
}

/// A task leased from the cluster's shared queues, as the API shows it.
fn shared_task(task: Claimed) -> ApiResult<LeasedTask> {
    let corrupt = |what: &str| ApiError::Internal(format!("task {:032x} holds a bad {what}", task.id));
    Ok(LeasedTask {
        token: TaskToken::new(&format!("{:032x}.{}", task.id, task.delivery))
            .expect("hex and digits make a valid token"),
        service: ServiceId::new(&task.service).map_err(|_| corrupt("service"))?,
        step: StepId::new(&task.step).map_err(|_| corrupt("step"))?,
        input: serde_json::from_str(&task.payload).map_err(|_| corrupt("payload"))?,
        queue: task.queue,
        execution: task.execution,
        attempt: task.attempt,
        idempotency_key: task.call_key,
        lease_expires_at: task.lease_expires_at,
        deadline: None,
    })
}

impl WorkerTasks for ServiceOrchestrator {
    fn poll(&self, request: PollTasks) -> BoxFuture<'_, ApiResult<Vec<LeasedTask>>> {
        Box::pin(async move {
            if request.queues.is_empty() {
                return Err(ApiError::invalid("queues", "name at least one queue"));
            }
            if let Some(shared) = self.dispatcher().shared_workers() {
                let claimed = shared
                    .poll(&request.queues, &request.worker, request.max_tasks, request.max_wait)
                    .await
                    .map_err(task_error)?;
                return claimed.into_iter().map(shared_task).collect();
            }
            let workers = self.workers();
            let max = request.max_tasks.max(1);
            // Take what is waiting on any queue at once; otherwise wait on all of them for
            // the first task (a poll dropped before it answers gives its tasks back).
            let mut leased = Vec::new();
            for queue in &request.queues {
                if leased.len() < max {
                    let tasks = workers.poll(queue, &request.worker, max - leased.len(), Duration::ZERO).await;
                    leased.extend(tasks.into_iter().map(|task| (queue.clone(), task)));
                }
            }
            if leased.is_empty() && !request.max_wait.is_zero() {
                let polls = request
                    .queues
                    .iter()
                    .map(|queue| Box::pin(workers.poll(queue, &request.worker, max, request.max_wait)));
                let (first, index, _others) = futures_util::future::select_all(polls).await;
                leased.extend(first.into_iter().map(|task| (request.queues[index].clone(), task)));
            }
            Ok(leased
                .into_iter()
                .map(|(queue, task)| LeasedTask {
                    token: token(task.task, task.token),
                    queue,
                    service: task.call.service.clone(),
                    execution: task.call.execution,
                    step: task.call.step.clone(),
                    attempt: task.call.attempt,
                    idempotency_key: task.call.idempotency_key(),
                    input: task.call.payload,
                    lease_expires_at: wall(task.deadline),
                    deadline: None,
                })
                .collect())
        })
    }

    fn complete(&self, token: TaskToken, output: Value) -> BoxFuture<'_, ApiResult<()>> {
        Box::pin(async move {
            if let Some(shared) = self.dispatcher().shared_workers() {
                let (task, delivery) = parse_shared_token(&token)?;
                return shared.tasks().complete(task, delivery, &output.to_string()).await.map_err(task_error);
            }
            let (task, lease) = parse_token(&token)?;
            self.workers().complete(task, lease, output).map_err(lease_error)
        })
    }

    fn fail(&self, token: TaskToken, failure: TaskFailure) -> BoxFuture<'_, ApiResult<()>> {
        Box::pin(async move {
            if let Some(shared) = self.dispatcher().shared_workers() {
                let (task, delivery) = parse_shared_token(&token)?;
                return shared
                    .tasks()
                    .fail(task, delivery, &failure.error, failure.retryable)
                    .await
                    .map_err(task_error);
            }
            let (task, lease) = parse_token(&token)?;
            let failure = if failure.retryable {
                Failure::retryable("worker", failure.error)
            } else {
                Failure::permanent("worker", failure.error)
            };
            self.workers().fail(task, lease, failure).map_err(lease_error)
        })
    }

    fn extend(&self, token: TaskToken) -> BoxFuture<'_, ApiResult<LeaseExtension>> {
        Box::pin(async move {
            if let Some(shared) = self.dispatcher().shared_workers() {
                let (task, delivery) = parse_shared_token(&token)?;
                let extension = shared.tasks().extend(task, delivery).await.map_err(task_error)?;
                return Ok(LeaseExtension {
                    expires_at: extension.expires_at,
                    cancel_requested: extension.cancel_requested,
                });
            }
            let (task, lease) = parse_token(&token)?;
            match self.workers().extend(task, lease) {
                Ok(deadline) => Ok(LeaseExtension { expires_at: wall(deadline), cancel_requested: false }),
                Err(LeaseError::Cancelled(_)) => {
                    Ok(LeaseExtension { expires_at: SystemClock.now(), cancel_requested: true })
                }
                Err(error) => Err(lease_error(error)),
            }
        })
    }
}

impl Orchestrating for ServiceOrchestrator {
    fn orchestrate(&self, request: Orchestrate) -> BoxFuture<'_, ApiResult<Orchestration>> {
        Box::pin(async move {
            let started = self.orchestrate(&request.goal, request.input, None).await.map_err(|e| match e {
                crate::Error::Planning(planning) => ApiError::from(baton_core::Error::from(planning)),
                crate::Error::Workflow(workflow) => api_error(workflow),
                crate::Error::Store(store) => store.into(),
                other => ApiError::Internal(other.to_string()),
            })?;
            if let Some(wait) = request.wait {
                // A wait that runs out is not an error: the answer says where the run stands.
                let _ = tokio::time::timeout(wait, self.engine().wait(started.execution)).await;
            }
            let execution = self.engine().get(started.execution).await.map_err(api_error)?;
            Ok(Orchestration { plan: started.plan, workflow: started.workflow, version: started.version, execution })
        })
    }
}
