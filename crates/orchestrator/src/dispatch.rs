//! The invoker the executor calls through: it finds the service of each call in the live
//! registry, takes one of its capacity permits, and calls it by its endpoint's protocol.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use baton_core::{Endpoint, Health, ServiceId};
use baton_executor::{Call, Failure, HttpConfig, HttpInvoker, Invoker, WorkerConfig, WorkerQueues};
use baton_registry::Registry;
use serde_json::Value;

use crate::runner::Queries;

/// Calls registered services: HTTP endpoints directly, worker endpoints through their queues.
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
    workers: WorkerQueues,
    max_candidates: usize,
    failovers: Arc<AtomicU64>,
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
        let resolve_url = {
            let registry = registry.clone();
            Arc::new(move |id: &ServiceId| match registry.get(id).ok()?.spec.endpoint() {
                Endpoint::Http { url } => Some(url.clone()),
                _ => None,
            })
        };
        let resolve_queue = {
            let registry = registry.clone();
            Arc::new(move |id: &ServiceId| match registry.get(id).ok()?.spec.endpoint() {
                Endpoint::Worker { queue } => Some(queue.clone()),
                _ => None,
            })
        };
        Self {
            http: http.build(resolve_url),
            workers: workers.build(resolve_queue),
            registry,
            queries,
            max_candidates: max_candidates.max(1),
            failovers: Arc::default(),
        }
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
            return Err(Failure::retryable(
                "no_candidate",
                format!("no healthy service with capacity left matches the query of step {}", call.step),
            ));
        }
        Ok(matches.candidates.into_iter().map(|c| c.service.spec.id().clone()).collect())
    }

    async fn call_one(&self, call: Call) -> Result<Value, Failure> {
        let view = self.registry.get(&call.service).map_err(|_| {
            Failure::permanent("unknown_service", format!("service {} is not registered", call.service))
        })?;
        if view.status.health == Health::Critical {
            return Err(Failure::retryable("unhealthy", format!("service {} is critical", call.service)));
        }
        let _permit =
            self.registry.acquire(&call.service).map_err(|e| Failure::retryable("at_capacity", e.to_string()))?;
        match view.spec.endpoint() {
            Endpoint::Http { .. } => self.http.invoke(call).await,
            Endpoint::Worker { .. } => self.workers.invoke(call).await,
            Endpoint::Grpc { url } => Err(Failure::permanent(
                "unsupported_protocol",
                format!(
                    "service {} is a gRPC endpoint ({url}); gRPC workers pull tasks from a worker queue",
                    call.service
                ),
            )),
        }
    }
}

impl Invoker for Dispatcher {
    async fn invoke(&self, call: Call) -> Result<Value, Failure> {
        let candidates = self.candidates(&call)?;
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
        Err(last.unwrap_or_else(|| Failure::retryable("no_candidate", "no candidate service")))
    }
}
