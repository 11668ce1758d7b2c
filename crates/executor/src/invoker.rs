//! The `Invoker` port: call one service with a JSON payload and an idempotency key.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use baton_core::{CallRequest, ExecutionId, Problem, ServiceId, StepId};

use crate::request::{Request, Response};
use serde_json::Value;

/// One call of one attempt of a task.
#[derive(Debug, Clone, PartialEq)]
pub struct Call {
    /// The run.
    pub execution: ExecutionId,
    /// The task.
    pub step: StepId,
    /// 1 for the first attempt.
    pub attempt: u32,
    /// The service called.
    pub service: ServiceId,
    /// The rendered input.
    pub payload: Value,
    /// How the step shapes the call (HTTP method, path, query, headers; gRPC method,
    /// metadata), rendered; `None`: the protocol's plain call.
    pub request: Option<Arc<CallRequest>>,
    /// The attempt's time limit, which the call tells the service (gRPC's `grpc-timeout`).
    pub timeout: Option<std::time::Duration>,
    /// The W3C trace context the call carries (`traceparent`, `tracestate`).
    pub trace: Option<CallTrace>,
}

/// The trace context of one call: the attempt's span in its execution's trace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallTrace {
    /// `00-<trace id>-<attempt span id>-<flags>`.
    pub traceparent: String,
    /// The caller's `tracestate`, passed on.
    pub tracestate: Option<Arc<str>>,
}

impl Call {
    /// A plain call: the payload to the service, shaped by nothing.
    pub fn new(execution: ExecutionId, step: StepId, attempt: u32, service: ServiceId, payload: Value) -> Self {
        Self { execution, step, attempt, service, payload, request: None, timeout: None, trace: None }
    }

    /// `<execution>/<step>`: stable per (execution, step), the same on every retry, failover
    /// and recovery, so a service can recognise a repeated call.
    pub fn idempotency_key(&self) -> String {
        format!("{}/{}", self.execution, self.step)
    }
}

/// Why a call failed, classified for the retry policy.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{class}: {message}")]
pub struct Failure {
    /// Whether another attempt may succeed.
    pub retryable: bool,
    /// A short class, matched by `RetryPolicy::non_retryable`, e.g. `http_400`, `timeout`.
    pub class: String,
    /// What happened.
    pub message: String,
    /// The call reached no service (none registered, healthy or with capacity): it says
    /// nothing about a service's health, so circuit breakers do not count it.
    pub unreached: bool,
}

impl Failure {
    /// The failure as a problem: an `http_<status>` class keeps its status, a timeout is the
    /// standard timeout (408), an expression limit an expression error (400), any other a
    /// communication error (503 when no service was reached, else 500).
    pub fn problem(&self) -> Problem {
        let status = self.class.strip_prefix("http_").and_then(|s| s.parse::<u16>().ok());
        let detail = self.to_string();
        let problem = match (self.class.as_str(), status) {
            (_, Some(status)) => Problem::standard("communication", detail).with_status(status),
            ("timeout", _) => Problem::standard("timeout", detail),
            ("expression_limit", _) => Problem::standard("expression", detail),
            _ if self.unreached => Problem::standard("communication", detail).with_status(503),
            _ => Problem::standard("communication", detail),
        };
        problem.with_title(self.class.clone())
    }

    /// A failure another attempt may fix.
    pub fn retryable(class: &str, message: impl Into<String>) -> Self {
        Self { retryable: true, class: class.to_owned(), message: message.into(), unreached: false }
    }

    /// A call that reached no service; another attempt may find one.
    pub fn unreached(class: &str, message: impl Into<String>) -> Self {
        Self { retryable: true, class: class.to_owned(), message: message.into(), unreached: true }
    }

    /// A failure no retry will fix.
    pub fn permanent(class: &str, message: impl Into<String>) -> Self {
        Self { retryable: false, class: class.to_owned(), message: message.into(), unreached: false }
    }
}

/// Calls services. Implementations must be cancel-safe: a dropped call is abandoned.
pub trait Invoker: Send + Sync + 'static {
    /// The services a call to `service` may go to now, best first, or `None` when `service`
    /// is itself the one to call. An invoker that stands in ids for capability queries answers
    /// the services matching the query here (waiting for one when none can take a call yet),
    /// so that the executor names the service it calls in `TaskScheduled` and fails over from
    /// one to the next attempt by attempt. The default: every id is itself.
    fn resolve(
        &self,
        service: &ServiceId,
        step: &StepId,
    ) -> impl Future<Output = Result<Option<Vec<ServiceId>>, Failure>> + Send {
        let _ = (service, step);
        std::future::ready(Ok(None))
    }

    /// The most calls `service` takes at once, when it has such a limit (its registered
    /// capacity). The executor keeps at most that many calls to it in flight across runs;
    /// the rest wait their turn (FIFO) before they take a slot of the executor's global
    /// limit, so that runs queued behind a full service do not hold up calls to other
    /// services. The default: no limit of the service's own.
    fn capacity(&self, service: &ServiceId) -> Option<usize> {
        let _ = service;
        None
    }

    /// Makes one call.
    fn invoke(&self, call: Call) -> impl Future<Output = Result<Value, Failure>> + Send;

    /// Sends an HTTP request a workflow wrote itself (`call: http`, `call: openapi`) for
    /// `execution`. The default makes none: such calls fail with a configuration failure naming
    /// the invoker.
    fn send(&self, execution: ExecutionId, request: Request) -> impl Future<Output = Result<Response, Failure>> + Send {
        let _ = execution;
        let url = request.url;
        async move {
            Err(Failure::permanent(
                "no_http_client",
                format!("this server's invoker sends no HTTP requests written in a workflow ({url})"),
            ))
        }
    }
}

type Handler = Arc<dyn Fn(Call) -> Pin<Box<dyn Future<Output = Result<Value, Failure>> + Send>> + Send + Sync>;

/// Runs registered async Rust functions in process, by service id: for embedding and benches.
#[derive(Clone, Default)]
pub struct InProcessInvoker {
    handlers: HashMap<ServiceId, Handler>,
}

impl std::fmt::Debug for InProcessInvoker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InProcessInvoker").field("services", &self.handlers.keys().collect::<Vec<_>>()).finish()
    }
}

impl InProcessInvoker {
    /// Registers `handler` as service `id`.
    pub fn register<F, Fut>(&mut self, id: ServiceId, handler: F)
    where
        F: Fn(Call) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Value, Failure>> + Send + 'static,
    {
        self.handlers.insert(id, Arc::new(move |call| Box::pin(handler(call))));
    }
}

impl Invoker for InProcessInvoker {
    async fn invoke(&self, call: Call) -> Result<Value, Failure> {
        match self.handlers.get(&call.service) {
            Some(handler) => handler(call).await,
            None => Err(Failure::permanent("unknown_service", format!("no in-process service {}", call.service))),
        }
    }
}

/// What a scripted service does on one call.
#[cfg(any(test, feature = "test-util"))]
#[derive(Debug, Clone)]
pub enum Step {
    /// Answers after `delay` with `output`.
    Ok(std::time::Duration, Value),
    /// Fails after `delay`.
    Fail(std::time::Duration, Failure),
    /// Never answers.
    Hang,
}

/// An invoker whose services follow scripts, and which records every call (test-util).
#[cfg(any(test, feature = "test-util"))]
#[derive(Debug, Clone, Default)]
pub struct ScriptedInvoker {
    state: Arc<parking_lot::Mutex<ScriptState>>,
}

#[cfg(any(test, feature = "test-util"))]
#[derive(Debug, Default)]
struct ScriptState {
    scripts: HashMap<ServiceId, std::collections::VecDeque<Step>>,
    calls: Vec<Call>,
}

#[cfg(any(test, feature = "test-util"))]
impl ScriptedInvoker {
    /// Queues `steps` for `service`; once they run out, it echoes its payload at once.
    pub fn script(&self, service: &str, steps: impl IntoIterator<Item = Step>) {
        let id = ServiceId::new(service).expect("a valid service id");
        self.lock().scripts.entry(id).or_default().extend(steps);
    }

    /// Every call so far, in order.
    pub fn calls(&self) -> Vec<Call> {
        self.lock().calls.clone()
    }

    fn lock(&self) -> parking_lot::MutexGuard<'_, ScriptState> {
        self.state.lock()
    }
}

#[cfg(any(test, feature = "test-util"))]
impl Invoker for ScriptedInvoker {
    async fn invoke(&self, call: Call) -> Result<Value, Failure> {
        let step = {
            let mut state = self.lock();
            state.calls.push(call.clone());
            state.scripts.get_mut(&call.service).and_then(std::collections::VecDeque::pop_front)
        };
        match step {
            None => Ok(call.payload),
            Some(Step::Ok(delay, output)) => {
                tokio::time::sleep(delay).await;
                Ok(output)
            }
            Some(Step::Fail(delay, failure)) => {
                tokio::time::sleep(delay).await;
                Err(failure)
            }
            Some(Step::Hang) => std::future::pending().await,
        }
    }
}
