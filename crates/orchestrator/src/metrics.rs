//! Prometheus metrics for `baton serve`: the seed's `MonitoringSystem`.
//!
//! [`Metrics`] is a cheap-to-clone handle that gathers three kinds of figures:
//!
//! - Executions and tasks, from the workflow engine's journal: `Metrics` is the engine's
//!   [`Observer`] (set it as `baton_workflow::Config::observer` before the engine opens), and
//!   derives counters, gauges and task durations from each batch of events once it is durable.
//! - The state of the registry, the executor's failovers, the worker queues, the store and the circuit
//!   breakers, read when scraped ([`Metrics::watch`], [`Metrics::watch_breakers`]).
//! - gRPC calls, counted by a tower layer around the server ([`Metrics::grpc_layer`]).
//!
//! [`serve_metrics`] serves them at `GET /metrics`, in the OpenMetrics text format when the
//! scraper asks for it and the Prometheus text format otherwise.
//!
//! Metric families (counters carry the `_total` suffix in the exposition; a labelled family
//! appears with its first sample):
//!
//! | name | labels | what |
//! | --- | --- | --- |
//! | `baton_executions_started_total` | `workflow` | executions started |
//! | `baton_executions_finished_total` | `workflow`, `outcome` | completed, failed, cancelled |
//! | `baton_executions_running` | | unfinished executions that dispatch |
//! | `baton_executions_paused` | | unfinished executions that are paused |
//! | `baton_task_attempts_total` | `service`, `outcome` | succeeded, failed, retryable |
//! | `baton_task_retries_total` | `service` | attempts after the first |
//! | `baton_task_duration_seconds` | `service`, `outcome` | scheduled to outcome, journal times |
//! | `baton_registry_services` | `health` | passing, critical, unknown |
//! | `baton_registry_services_registered` | | all registered services |
//! | `baton_circuit_breaker_open` | `service` | 1 open, 0 half-open; closed left out |
//! | `baton_failovers_total` | | calls moved to an equivalent service |
//! | `baton_worker_queue_depth` | `queue` | tasks waiting for a worker (in a cluster, on every node) |
//! | `baton_worker_queue_leased` | `queue` | tasks a worker holds, not answered yet (likewise) |
//! | `baton_journal_commits_total` | | store write transactions (not for the memory store) |
//! | `baton_journal_writes_total` | | writes in them; over commits, the mean batch size |
//! | `baton_grpc_requests_total` | `method`, `code` | gRPC calls by status code name |
//! | `baton_grpc_unauthenticated_total` | | calls answered `UNAUTHENTICATED` |
//! | `baton_grpc_request_duration_seconds` | `method` | request to response headers |
//! | `baton_expression_evaluations_total` | | jq evaluations answered by the sandbox |
//! | `baton_expression_evaluations_in_flight` | | jq evaluations a worker is running |
//! | `baton_expression_limits_total` | `bound` | evaluations past a bound, by bound |
//! | `baton_expression_workers` | | evaluator processes alive |
//! | `baton_expression_workers_started_total` | | evaluator processes started |
//! | `baton_cluster_partitions_owned` | | in a cluster: partitions this node owns |
//! | `baton_cluster_nodes_live` | | nodes with a live lease at the last heartbeat |
//! | `baton_cluster_lease_renewal_seconds` | | accepted renewals, sum and count |
//! | `baton_cluster_lease_renewal_failures_total` | | heartbeats that did not renew |
//! | `baton_cluster_self_fences_total` | | times this node stopped all work for its lease |
//! | `baton_cluster_partitions_claimed_total` | | partitions claimed (takeovers included) |
//! | `baton_cluster_partitions_lost_total` | | partitions no longer owned |
//! | `baton_cluster_executions_fenced_total` | | runs stopped: another node owns them now |
//! | `baton_cluster_forwarded_calls_total` | | commands forwarded to the owner |
//! | `baton_cluster_forwarded_unreachable_total` | | forwarded commands whose owner did not answer |

mod executions;
mod grpc;
mod state;

use std::future::Future;
use std::sync::Arc;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use baton_core::{Event, Execution, ServiceId};
use baton_executor::BreakerState;
use baton_workflow::{Observer, Recovery};
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;

use self::executions::Executions;
use self::grpc::GrpcMetrics;
pub use self::grpc::{GrpcBody, GrpcLayer, GrpcService, ResponseFuture};
use self::state::StateCollector;
use crate::activity::ActivityLog;
use crate::orchestrator::ServiceOrchestrator;
use crate::sandbox::Sandbox;

/// The content type of the OpenMetrics text format.
pub const OPENMETRICS_CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The content type of the Prometheus text format.
pub const PROMETHEUS_CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// The text formats metrics are rendered in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// OpenMetrics 1.0 text, ending in `# EOF`.
    OpenMetrics,
    /// Prometheus text 0.0.4.
    Prometheus,
}

impl Format {
    /// What to answer a scraper that sent `accept`: OpenMetrics when it asks for it.
    pub fn negotiate(accept: Option<&str>) -> Self {
        match accept {
            Some(accept) if accept.contains("application/openmetrics-text") => Self::OpenMetrics,
            _ => Self::Prometheus,
        }
    }

    /// The content type of the format.
    pub fn content_type(self) -> &'static str {
        match self {
            Self::OpenMetrics => OPENMETRICS_CONTENT_TYPE,
            Self::Prometheus => PROMETHEUS_CONTENT_TYPE,
        }
    }
}

/// Baton's metrics: a cheap-to-clone handle. See the [module docs](self) for the families.
#[derive(Debug, Clone)]
pub struct Metrics {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    registry: Registry,
    executions: Executions,
    grpc: Arc<GrpcMetrics>,
    state: StateCollector,
    activity: ActivityLog,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::default();
        let activity = ActivityLog::default();
        let executions = Executions::register(&mut registry, activity.clone());
        let grpc = Arc::new(GrpcMetrics::register(&mut registry));
        let state = StateCollector::default();
        registry.register_collector(Box::new(state.clone()));
        Self { inner: Arc::new(Inner { registry, executions, grpc, state, activity }) }
    }
}

impl Metrics {
    /// Reads the orchestrator's registry, executor, worker queues and store at each scrape,
    /// and seeds the execution gauges from the engine's recovery report ([`Metrics::recovered`]).
    /// A later call replaces the components read.
    pub fn watch(&self, orchestrator: &ServiceOrchestrator) {
        {
            let mut sources = self.inner.state.sources.write();
            sources.registry = Some(orchestrator.registry().clone());
            sources.executor = Some(orchestrator.executor().clone());
            sources.workers = Some(orchestrator.workers().clone());
            sources.shared_workers = orchestrator.dispatcher().shared_workers().cloned();
            sources.store = Some(orchestrator.store().clone());
            sources.disk = orchestrator.disk().cloned();
            sources.cluster = orchestrator.member().is_some().then(|| orchestrator.clone());
        }
        self.recovered(&orchestrator.engine().recovery());
    }

    /// Reports `baton_circuit_breaker_open` for the registered services, asking `state` at
    /// each scrape (in production `Executor::breaker_state`).
    pub fn watch_breakers(&self, state: impl Fn(&ServiceId) -> BreakerState + Send + Sync + 'static) {
        self.inner.state.sources.write().breakers = Some(Arc::new(state));
    }

    /// Reports the `baton_expression_*` families from the expression sandbox at each scrape.
    pub fn watch_sandbox(&self, sandbox: Sandbox) {
        self.inner.state.sources.write().sandbox = Some(sandbox);
    }

    /// Seeds `baton_executions_running` and `baton_executions_paused` with the executions the
    /// engine recovered when it opened, which journal nothing until they move. Only the first
    /// report counts, and executions already seen in the journal or already finished are not
    /// counted twice, so it may come after the engine has started journaling.
    pub fn recovered(&self, recovery: &Recovery) {
        self.inner.executions.recovered(&recovery.resumed, &recovery.paused);
    }

    /// The recent past the journal and the registry showed, for the console. Give it to the
    /// registry as its event sink (`Options::registry_events`) for health changes.
    pub fn activity(&self) -> &ActivityLog {
        &self.inner.activity
    }

    /// Unfinished executions known now: `(running, paused)`.
    pub fn executions_unfinished(&self) -> (i64, i64) {
        self.inner.executions.unfinished()
    }

    /// A tower layer counting the calls of a gRPC server:
    /// `tonic::transport::Server::builder().layer(metrics.grpc_layer())`.
    pub fn grpc_layer(&self) -> GrpcLayer {
        GrpcLayer::new(Arc::clone(&self.inner.grpc))
    }

    /// Every metric, in `format`. Reads the registry a page at a time: call it off the async
    /// workers when the registry is large.
    pub fn render(&self, format: Format) -> String {
        let mut text = String::new();
        let result = match format {
            Format::OpenMetrics => prometheus_client::encoding::text::encode(&mut text, &self.inner.registry),
            Format::Prometheus => prometheus_client::encoding::prometheus_text::encode(&mut text, &self.inner.registry),
        };
        // Writing to a String does not fail, and the collectors only pass its errors on.
        result.expect("metrics encode into a string");
        text
    }
}

impl Observer for Metrics {
    fn journaled(&self, execution: &Execution, events: &[Event]) {
        self.inner.executions.journaled(&execution.workflow, events);
    }

    fn fenced(&self, _execution: baton_core::ExecutionId) {
        let fenced = Arc::clone(&self.inner.state.sources.read().fenced);
        fenced.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Serves `GET /metrics` on `listener` until `shutdown` completes; anything else is 404.
pub async fn serve_metrics(
    listener: TcpListener,
    metrics: Metrics,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = axum::Router::new().route("/metrics", axum::routing::get(scrape)).with_state(metrics);
    axum::serve(listener, app).with_graceful_shutdown(shutdown).await
}

async fn scrape(State(metrics): State<Metrics>, headers: HeaderMap) -> Response {
    let format = Format::negotiate(headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()));
    // A scrape walks the whole registry: keep it off the async workers.
    match tokio::task::spawn_blocking(move || metrics.render(format)).await {
        Ok(text) => ([(header::CONTENT_TYPE, format.content_type())], text).into_response(),
        Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}
