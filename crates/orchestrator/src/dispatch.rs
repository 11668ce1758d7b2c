//! The invoker the executor calls through: it resolves capability queries to the services
//! matching them in the live registry, takes one of the called service's capacity permits,
//! and calls it by its endpoint's protocol.

use std::sync::Arc;
use std::time::Duration;

use baton_cluster::tasks::TaskQueues;
use baton_core::{Endpoint, ExecutionId, Health, ServiceId, ServiceRequirements, ServiceView, StepId};
use baton_executor::{
    Call, Failure, GrpcInvoker, HttpConfig, HttpInvoker, Invoker, Request, ResolveQueue, Response, WorkerConfig,
    WorkerQueues,
};
use baton_registry::{Permit, Registry};
use serde_json::Value;
use tokio::sync::Notify;

use crate::runner::Queries;
use crate::security::EndpointPolicy;
use crate::shared_workers::SharedWorkers;

/// Calls registered services: HTTP and gRPC endpoints directly, worker endpoints through their
/// queues.
///
/// A capability-bound step's stand-in id (from [`Queries`]) is resolved before each attempt
/// against the live registry ([`Invoker::resolve`]): the best eligible candidates (passing
/// health, capacity left), in rank order, so that the executor names the service it calls
/// and fails over between them attempt by attempt. A call to a service that is critical or at
/// capacity waits for it, then is refused as unreached and retryable, so the executor moves
/// to the step's alternatives.
#[derive(Debug, Clone)]
pub struct Dispatcher {
    registry: Registry,
    queries: Arc<Queries>,
    http: HttpInvoker,
    grpc: GrpcInvoker,
    workers: WorkerQueues,
    /// In a cluster, the queues in its database, which worker calls go to instead.
    shared: Option<SharedWorkers>,
    max_candidates: usize,
    /// Signalled whenever a call gives its permit back.
    released: Arc<Notify>,
    /// How long a call waits for a service with capacity (or for one to register).
    wait_for_service: Duration,
    /// Where requests workflows write themselves may go.
    endpoints: EndpointPolicy,
    /// In a cluster, which executions this node owns: it calls no service for one it does not.
    ownership: Option<Arc<dyn baton_core::Ownership>>,
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
        let resolve_queue = resolve_queue(&registry);
        Self {
            grpc: GrpcInvoker::new(&http),
            http: http.build(resolve_spec),
            workers: workers.build(resolve_queue),
            shared: None,
            registry,
            queries,
            max_candidates: max_candidates.max(1),
            released: Arc::default(),
            wait_for_service: Duration::from_secs(30),
            endpoints: EndpointPolicy::default(),
            ownership: None,
        }
    }

    /// In a cluster: calls only for executions `ownership` says this node owns. A node whose
    /// lease ran out, or whose partition moved, makes no call, even before its runs are stopped.
    pub fn with_ownership(mut self, ownership: Arc<dyn baton_core::Ownership>) -> Self {
        self.ownership = Some(ownership);
        self
    }

    /// Refuses a call for `execution` when another node owns it now.
    fn check_owner(&self, execution: ExecutionId) -> Result<(), Failure> {
        match &self.ownership {
            Some(ownership) if ownership.of(execution).is_none() => Err(Failure::unreached(
                "fenced",
                format!("this node no longer owns execution {execution} (its lease ran out or its partition moved)"),
            )),
            _ => Ok(()),
        }
    }

    /// Where requests workflows write themselves (`call: http`, `call: openapi`) may go.
    pub fn with_endpoints(mut self, endpoints: EndpointPolicy) -> Self {
        self.endpoints = endpoints;
        self
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

    /// Sends worker calls to the cluster's shared queues in `tasks`, with the same settings.
    pub fn share_workers(mut self, tasks: TaskQueues) -> Self {
        let config = self.workers.config().clone();
        self.shared = Some(SharedWorkers::start(tasks, config, resolve_queue(&self.registry)));
        self
    }

    /// The cluster's shared worker queues, when worker calls go there.
    pub fn shared_workers(&self) -> Option<&SharedWorkers> {
        self.shared.as_ref()
    }

    /// The ranked services matching the query behind the stand-in `service`, now.
    fn candidates(&self, query: &ServiceRequirements, step: &StepId) -> Result<Vec<ServiceId>, Failure> {
        let matches = self
            .registry
            .find(query, self.max_candidates)
            .map_err(|e| Failure::permanent("invalid_query", format!("step {step}: {e}")))?;
        if matches.candidates.is_empty() {
            return Err(Failure::unreached(
                "no_candidate",
                format!("no healthy service with capacity left matches the query of step {step}"),
            ));
        }
        Ok(matches.candidates.into_iter().map(|c| c.service.spec.id().clone()).collect())
    }

    /// Runs `attempt` until it reaches a service or the wait for one is over: a permit given
    /// back, or a service registering or turning healthy (seen on the next look), wakes it.
    async fn waiting<T>(&self, mut attempt: impl FnMut() -> Result<T, Failure>) -> Result<T, Failure> {
        let deadline = tokio::time::Instant::now() + self.wait_for_service;
        loop {
            let released = self.released.notified();
            match attempt() {
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

    /// The service's registration and one of its capacity permits, or why not now.
    fn admit(&self, service: &ServiceId) -> Result<(ServiceView, Permit), Failure> {
        // Waited for: after a restart the registry fills again as services heartbeat.
        let view = self
            .registry
            .get(service)
            .map_err(|_| Failure::unreached("unknown_service", format!("service {service} is not registered")))?;
        if view.status.health == Health::Critical {
            return Err(Failure::unreached("unhealthy", format!("service {service} is critical")));
        }
        let permit = self.registry.acquire(service).map_err(|e| Failure::unreached("at_capacity", e.to_string()))?;
        Ok((view, permit))
    }
}

/// The queue of a registered worker service.
fn resolve_queue(registry: &Registry) -> ResolveQueue {
    let registry = registry.clone();
    Arc::new(move |id: &ServiceId| match registry.get(id).ok()?.spec.endpoint() {
        Endpoint::Worker { queue } => Some(queue.clone()),
        _ => None,
    })
}

impl Invoker for Dispatcher {
    /// Requests a workflow writes itself (`call: http`, `call: openapi`) go out through the
    /// same HTTP(S) client, origin mapping included; no registry is involved. In a cluster,
    /// only for an execution this node owns, as service calls.
    async fn send(&self, execution: ExecutionId, request: Request) -> Result<Response, Failure> {
        self.check_owner(execution)?;
        self.endpoints
            .check_request(&request.url)
            .map_err(|e| Failure::permanent("forbidden_endpoint", e.to_string()))?;
        self.http.send(request).await
    }

    async fn resolve(&self, service: &ServiceId, step: &StepId) -> Result<Option<Vec<ServiceId>>, Failure> {
        let Some(query) = self.queries.get(service) else { return Ok(None) };
        self.waiting(|| self.candidates(&query, step)).await.map(Some)
    }

    fn capacity(&self, service: &ServiceId) -> Option<usize> {
        self.registry.capacity(service).map(|capacity| capacity as usize)
    }

    async fn invoke(&self, call: Call) -> Result<Value, Failure> {
        // A permit is taken on the spot or waited for; the call itself runs once.
        let (view, permit) = self.waiting(|| self.admit(&call.service)).await?;
        // Checked last before the call: waiting for a permit may have taken a while. Boxed by
        // kind: a task waiting on a worker queue holds no HTTP or gRPC client's future.
        let result = match (self.check_owner(call.execution), view.spec.endpoint()) {
            (Err(fenced), _) => Err(fenced),
            (Ok(()), Endpoint::Http { .. }) => Box::pin(self.http.call(&view.spec, call)).await,
            (Ok(()), Endpoint::Grpc { .. }) => Box::pin(self.grpc.call(&view.spec, call)).await,
            (Ok(()), Endpoint::Worker { .. }) => match &self.shared {
                Some(shared) => Box::pin(shared.invoke(call)).await,
                None => Box::pin(self.workers.invoke(call)).await,
            },
        };
        drop(permit);
        self.released.notify_waiters();
        result
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use axum::Router;
    use axum::routing::get;
    use baton_core::{ExecutionId, Ownership};

    use super::*;

    /// Owns the one partition there is, or nothing once `lose` is called.
    #[derive(Debug, Default)]
    struct OneNodeOwnership {
        lost: Mutex<bool>,
    }

    impl OneNodeOwnership {
        fn lose(&self) {
            *self.lost.lock().unwrap() = true;
        }
    }

    impl Ownership for OneNodeOwnership {
        fn partitions(&self) -> u32 {
            1
        }

        fn epoch(&self, partition: u32) -> Option<i64> {
            (partition == 0 && !*self.lost.lock().unwrap()).then_some(1)
        }

        fn owned(&self) -> Vec<(u32, i64)> {
            self.epoch(0).map(|epoch| (0, epoch)).into_iter().collect()
        }

        fn generation(&self) -> u64 {
            u64::from(*self.lost.lock().unwrap())
        }
    }

    /// An HTTP server on 127.0.0.1 that counts its requests and answers the `X-Baton-Node` it got.
    async fn counting_server() -> (String, Arc<AtomicUsize>) {
        let hits = Arc::new(AtomicUsize::new(0));
        let counted = Arc::clone(&hits);
        let app = Router::new().route(
            "/",
            get(move |headers: axum::http::HeaderMap| async move {
                counted.fetch_add(1, Ordering::SeqCst);
                headers.get("x-baton-node").and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned()
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        (url, hits)
    }

    #[tokio::test]
    async fn a_request_a_workflow_wrote_goes_out_only_while_this_node_owns_its_execution() {
        let (url, hits) = counting_server().await;
        let ownership = Arc::new(OneNodeOwnership::default());
        let http = HttpConfig { node: Some("node-a".parse().unwrap()), ..HttpConfig::default() };
        let dispatcher = Dispatcher::new(Registry::default(), Arc::default(), http, WorkerConfig::default(), 4)
            .with_ownership(Arc::clone(&ownership) as Arc<dyn Ownership>);
        let request = || Request {
            method: "GET".to_owned(),
            url: url.clone(),
            headers: vec![("x-baton-node".to_owned(), "forged".to_owned())],
            body: None,
        };
        let execution = ExecutionId::generate();

        let answer = dispatcher.send(execution, request()).await.unwrap();
        assert_eq!(
            (answer.status, answer.body.as_slice()),
            (200, b"node-a".as_slice()),
            "the node's own id, not the workflow's"
        );
        assert_eq!(hits.load(Ordering::SeqCst), 1);

        ownership.lose();
        let refused = dispatcher.send(execution, request()).await.unwrap_err();
        assert_eq!(refused.class, "fenced");
        assert!(refused.unreached && refused.message.contains(&execution.to_string()), "{refused:?}");
        assert_eq!(hits.load(Ordering::SeqCst), 1, "no request left once the execution was no longer owned");
    }
}
