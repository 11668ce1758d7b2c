//! The invoker the executor calls through: it finds the service of each call in the live
//! registry, takes one of its capacity permits, and calls it by its endpoint's protocol.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use baton_core::{Endpoint, Health, ServiceId};
use baton_executor::{Call, Failure, GrpcInvoker, HttpConfig, HttpInvoker, Invoker, WorkerConfig, WorkerQueues};
use baton_registry::Registry;
use serde_json::Value;
use tokio::sync::Notify;

use crate::runner::Queries;

/// Calls registered services: HTTP and gRPC endpoints directly, worker endpoints through their
/// queues.
///
/// A call to a capability-bound step (a stand-in id from [`Queries`]) is resolved at the call
/// against the live registry: the best eligible candidates (passing health, capacity left), in
/// rank order, the next one tried when one fails with a retryable failure (failover). A call
/// to a pinned service is refused at once, as retryable, when the service is critical or at
/// capacity, so the executor moves to its alternatives.
#[derive(Debug, Clone)]
pub struct Dispatcher {
    registry: Registry,
    queries: Arc<Queries>,
    http: HttpInvoker,
    grpc: GrpcInvoker,
    workers: WorkerQueues,
    max_candidates: usize,
    failovers: Arc<AtomicU64>,
    /// Signalled whenever a call gives its permit back.
    released: Arc<Notify>,
    /// How long a call waits for a service with capacity (or for one to register).
    wait_for_service: Duration,
}

impl Dispatcher {
    /// A dispatcher over `registry`; `max_candidates` bounds how many services one call to a
    /// capability tries.
    pub fn new(
        registry: Registry,
        queries: Arc<Queries>,
        http: HttpConfig,
        workers: WorkerConfig,
        max_candidates: usize,
    ) -> Self {
        let resolve_spec = {
            let registry = registry.clone();
            Arc::new(move |id: &ServiceId| registry.get(id).ok().map(|view| view.spec))
        };
        let resolve_queue = {
            let registry = registry.clone();
            Arc::new(move |id: &ServiceId| match registry.get(id).ok()?.spec.endpoint() {
                Endpoint::Worker { queue } => Some(queue.clone()),
                _ => None,
            })
        };
        Self {
            grpc: GrpcInvoker::new(&http),
            http: http.build(resolve_spec),
            workers: workers.build(resolve_queue),
            registry,
            queries,
            max_candidates: max_candidates.max(1),
            failovers: Arc::default(),
            released: Arc::default(),
            wait_for_service: Duration::from_secs(30),
        }
    }

    /// How long a call waits for a service that can take it (registered, healthy, with
    /// capacity) before it fails as unreached; the step's attempt timeout still applies.
    pub fn wait_for_service(mut self, wait: Duration) -> Self {
        self.wait_for_service = wait;
        self
    }

    /// The worker queues, for the gRPC worker service.
    pub fn workers(&self) -> &WorkerQueues {
        &self.workers
    }

    /// Calls moved to another candidate of their capability after a failure, so far.
    pub fn failovers(&self) -> u64 {
        self.failovers.load(Ordering::Relaxed)
    }

    fn candidates(&self, call: &Call) -> Result<Vec<ServiceId>, Failure> {
        let Some(query) = self.queries.get(&call.service) else { return Ok(vec![call.service.clone()]) };
        let matches = self
            .registry
            .find(&query, self.max_candidates)
            .map_err(|e| Failure::permanent("invalid_query", format!("step {}: {e}", call.step)))?;
        if matches.candidates.is_empty() {
            return Err(Failure::unreached(
                "no_candidate",
                format!("no healthy service with capacity left matches the query of step {}", call.step),
            ));
        }
        Ok(matches.candidates.into_iter().map(|c| c.service.spec.id().clone()).collect())
    }

    async fn call_one(&self, call: Call) -> Result<Value, Failure> {
        // Retried: after a restart the registry fills again as services heartbeat.
        let view = self.registry.get(&call.service).map_err(|_| {
            Failure::unreached("unknown_service", format!("service {} is not registered", call.service))
        })?;
        if view.status.health == Health::Critical {
            return Err(Failure::unreached("unhealthy", format!("service {} is critical", call.service)));
        }
        let permit =
            self.registry.acquire(&call.service).map_err(|e| Failure::unreached("at_capacity", e.to_string()))?;
        let result = match view.spec.endpoint() {
            Endpoint::Http { .. } => self.http.call(&view.spec, call).await,
            Endpoint::Worker { .. } => self.workers.invoke(call).await,
            Endpoint::Grpc { .. } => self.grpc.call(&view.spec, call).await,
        };
        drop(permit);
        self.released.notify_waiters();
        result
    }
}

impl Invoker for Dispatcher {
    async fn invoke(&self, call: Call) -> Result<Value, Failure> {
        // A call that finds no service able to take it waits for one: a permit given back,
        // or a service registering or turning healthy (seen on the next look).
        let deadline = tokio::time::Instant::now() + self.wait_for_service;
        loop {
            let released = self.released.notified();
            match self.try_invoke(&call).await {
                Err(failure) if failure.unreached && tokio::time::Instant::now() < deadline => {
                    tokio::select! {
                        () = released => {}
                        () = tokio::time::sleep(Duration::from_millis(50)) => {}
                    }
                }
                result => return result,
            }
        }
    }
}

impl Dispatcher {
    async fn try_invoke(&self, call: &Call) -> Result<Value, Failure> {
        let candidates = self.candidates(call)?;
        let count = candidates.len();
        let mut last = None;
        for (rank, service) in candidates.into_iter().enumerate() {
            if rank > 0 {
                self.failovers.fetch_add(1, Ordering::Relaxed);
            }
            match self.call_one(Call { service, ..call.clone() }).await {
                Ok(output) => return Ok(output),
                // The next-ranked equivalent may well answer; a permanent failure is the
                // request's fault and would fail there too.
                Err(failure) if failure.retryable && rank + 1 < count => last = Some(failure),
                Err(failure) => return Err(failure),
            }
        }
        Err(last.unwrap_or_else(|| Failure::unreached("no_candidate", "no candidate service")))
    }
}
