//! Span export over OTLP/gRPC: [`OtlpExporter`] batches finished spans
//! ([`baton_core::SpanRecord`]) and sends them to a collector's
//! `opentelemetry.proto.collector.trace.v1.TraceService/Export`. [`pb`] holds the generated
//! OTLP types (`proto/opentelemetry`), whose server side a test can serve as a collector.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use baton_core::SpanRecord;
use baton_core::trace::{AttributeValue, SpanKind, SpanStatus};
use tokio::sync::{Notify, mpsc};
use tokio::task::JoinHandle;

use crate::error::Result;

/// The OTLP types Baton exports, generated from `proto/opentelemetry`.
#[allow(missing_docs, unreachable_pub, reason = "generated code")]
pub mod pb {
    /// `opentelemetry.proto`.
    pub mod opentelemetry {
        /// `opentelemetry.proto`.
        pub mod proto {
            /// `opentelemetry.proto.common`.
            pub mod common {
                /// `opentelemetry.proto.common.v1`.
                pub mod v1 {
                    tonic::include_proto!("opentelemetry.proto.common.v1");
                }
            }
            /// `opentelemetry.proto.resource`.
            pub mod resource {
                /// `opentelemetry.proto.resource.v1`.
                pub mod v1 {
                    tonic::include_proto!("opentelemetry.proto.resource.v1");
                }
            }
            /// `opentelemetry.proto.trace`.
            pub mod trace {
                /// `opentelemetry.proto.trace.v1`.
                pub mod v1 {
                    tonic::include_proto!("opentelemetry.proto.trace.v1");
                }
            }
            /// `opentelemetry.proto.collector`.
            pub mod collector {
                /// `opentelemetry.proto.collector.trace`.
                pub mod trace {
                    /// `opentelemetry.proto.collector.trace.v1`.
                    pub mod v1 {
                        tonic::include_proto!("opentelemetry.proto.collector.trace.v1");
                    }
                }
            }
        }
    }
    pub use opentelemetry::proto::collector::trace::v1 as collector;
    pub use opentelemetry::proto::common::v1 as common;
    pub use opentelemetry::proto::resource::v1 as resource;
    pub use opentelemetry::proto::trace::v1 as trace;
}

/// Where and how spans are exported.
#[derive(Debug, Clone)]
pub struct OtlpConfig {
    /// The collector's gRPC endpoint, e.g. `http://127.0.0.1:4317` (`https://` with the
    /// system's roots).
    pub endpoint: String,
    /// The resource's `service.name`.
    pub service_name: String,
    /// Its `service.version`.
    pub service_version: String,
    /// Most spans in one export.
    pub batch_size: usize,
    /// Longest a span waits for its batch to fill.
    pub interval: Duration,
    /// Spans waiting to be exported; past it, new spans are dropped (and counted).
    pub queue: usize,
    /// Time limit of one export.
    pub timeout: Duration,
}

impl OtlpConfig {
    /// Exports to `endpoint` as `service.name` `baton`: batches of 512 spans at least every
    /// second, 8,192 spans queued at most, 10 s an export.
    pub fn new(endpoint: &str) -> Self {
        Self {
            endpoint: endpoint.to_owned(),
            service_name: "baton".to_owned(),
            service_version: String::new(),
            batch_size: 512,
            interval: Duration::from_secs(1),
            queue: 8192,
            timeout: Duration::from_secs(10),
        }
    }

    /// Starts the export task on the current runtime. It runs until [`OtlpExporter::shutdown`]
    /// or until every clone of the exporter is dropped, exporting what was queued first.
    pub fn spawn(self) -> Result<OtlpExporter> {
        let mut endpoint = tonic::transport::Endpoint::from_shared(self.endpoint.clone())?
            .connect_timeout(Duration::from_secs(5))
            .timeout(self.timeout);
        if self.endpoint.starts_with("https://") {
            endpoint = endpoint.tls_config(tonic::transport::ClientTlsConfig::new().with_native_roots())?;
        }
        let client = pb::collector::trace_service_client::TraceServiceClient::new(endpoint.connect_lazy());
        let (tx, rx) = mpsc::channel(self.queue.max(1));
        let stats = Arc::new(Stats::default());
        let stop = Arc::new(Notify::new());
        let task = tokio::spawn(export(self, client, rx, Arc::clone(&stats), Arc::clone(&stop)));
        Ok(OtlpExporter { tx, stats, stop, task: Arc::new(parking_lot::Mutex::new(Some(task))) })
    }
}

#[derive(Debug, Default)]
struct Stats {
    exported: AtomicU64,
    dropped: AtomicU64,
}

/// Hands finished spans to the export task. Cheap to clone; never waits.
#[derive(Debug, Clone)]
pub struct OtlpExporter {
    tx: mpsc::Sender<SpanRecord>,
    stats: Arc<Stats>,
    stop: Arc<Notify>,
    task: Arc<parking_lot::Mutex<Option<JoinHandle<()>>>>,
}

impl OtlpExporter {
    /// Queues `span`; drops it (counted) when the queue is full.
    pub fn export(&self, span: SpanRecord) {
        if self.tx.try_send(span).is_err() {
            self.stats.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Spans the collector accepted so far.
    pub fn exported(&self) -> u64 {
        self.stats.exported.load(Ordering::Relaxed)
    }

    /// Spans dropped so far: the queue was full, or an export failed.
    pub fn dropped(&self) -> u64 {
        self.stats.dropped.load(Ordering::Relaxed)
    }

    /// Exports what is queued and stops the export task, waiting at most `grace`.
    pub async fn shutdown(&self, grace: Duration) {
        self.stop.notify_one();
        let task = self.task.lock().take();
        if let Some(task) = task
            && tokio::time::timeout(grace, task).await.is_err()
        {
            tracing::warn!("otlp: spans still queued at shutdown were dropped");
        }
    }
}

type Client = pb::collector::trace_service_client::TraceServiceClient<tonic::transport::Channel>;

async fn export(
    config: OtlpConfig,
    mut client: Client,
    mut rx: mpsc::Receiver<SpanRecord>,
    stats: Arc<Stats>,
    stop: Arc<Notify>,
) {
    let resource = pb::resource::Resource {
        attributes: vec![
            attribute("service.name", &AttributeValue::Text(config.service_name.clone())),
            attribute("service.version", &AttributeValue::Text(config.service_version.clone())),
        ],
        dropped_attributes_count: 0,
    };
    let scope = pb::common::InstrumentationScope {
        name: "baton".to_owned(),
        version: config.service_version.clone(),
        ..Default::default()
    };
    // Whether the last export failed: a failing collector is logged once, not per batch.
    let mut failing = false;
    let mut stopping = false;
    loop {
        let mut batch = Vec::new();
        if stopping {
            // Whatever is queued goes out in full batches, then the task ends.
            while batch.len() < config.batch_size
                && let Ok(span) = rx.try_recv()
            {
                batch.push(span);
            }
            if batch.is_empty() {
                return;
            }
        } else {
            let first = tokio::select! {
                span = rx.recv() => span,
                () = stop.notified() => {
                    stopping = true;
                    continue;
                }
            };
            let Some(first) = first else { return };
            batch.push(first);
            let deadline = tokio::time::Instant::now() + config.interval;
            while batch.len() < config.batch_size {
                match tokio::time::timeout_at(deadline, rx.recv()).await {
                    Ok(Some(span)) => batch.push(span),
                    // Closed: export what is here, then end at the next receive.
                    Ok(None) | Err(_) => break,
                }
            }
        }
        let count = batch.len() as u64;
        let request = pb::collector::ExportTraceServiceRequest {
            resource_spans: vec![pb::trace::ResourceSpans {
                resource: Some(resource.clone()),
                scope_spans: vec![pb::trace::ScopeSpans {
                    scope: Some(scope.clone()),
                    spans: batch.into_iter().map(span).collect(),
                    schema_url: String::new(),
                }],
                schema_url: String::new(),
            }],
        };
        match client.export(request).await {
            Ok(answer) => {
                let rejected = answer.into_inner().partial_success.map_or(0, |p| p.rejected_spans.max(0) as u64);
                stats.exported.fetch_add(count.saturating_sub(rejected), Ordering::Relaxed);
                stats.dropped.fetch_add(rejected, Ordering::Relaxed);
                if failing {
                    tracing::info!(endpoint = %config.endpoint, "otlp: the collector accepts spans again");
                    failing = false;
                }
            }
            Err(status) => {
                stats.dropped.fetch_add(count, Ordering::Relaxed);
                if !failing {
                    tracing::warn!(
                        endpoint = %config.endpoint,
                        code = ?status.code(),
                        message = status.message(),
                        "otlp: an export failed; its spans are dropped"
                    );
                    failing = true;
                }
            }
        }
    }
}

fn attribute(key: &str, value: &AttributeValue) -> pb::common::KeyValue {
    let value = match value {
        AttributeValue::Text(text) => pb::common::any_value::Value::StringValue(text.clone()),
        AttributeValue::Int(number) => pb::common::any_value::Value::IntValue(*number),
    };
    pb::common::KeyValue { key: key.to_owned(), value: Some(pb::common::AnyValue { value: Some(value) }) }
}

fn nanos(at: baton_core::Timestamp) -> u64 {
    at.timestamp_nanos_opt().map_or(0, |n| n.max(0) as u64)
}

/// A span record as OTLP.
pub fn span(record: SpanRecord) -> pb::trace::Span {
    use pb::trace::span::SpanKind as Kind;
    use pb::trace::status::StatusCode;
    let kind = match record.kind {
        SpanKind::Internal => Kind::Internal,
        SpanKind::Server => Kind::Server,
        SpanKind::Client => Kind::Client,
    };
    let status = match record.status {
        SpanStatus::Ok => pb::trace::Status { message: String::new(), code: StatusCode::Ok as i32 },
        SpanStatus::Error(message) => pb::trace::Status { message, code: StatusCode::Error as i32 },
    };
    pb::trace::Span {
        trace_id: record.trace_id.0.to_vec(),
        span_id: record.span_id.0.to_vec(),
        trace_state: record.trace_state.unwrap_or_default(),
        parent_span_id: record.parent.map(|p| p.0.to_vec()).unwrap_or_default(),
        flags: 1,
        name: record.name,
        kind: kind as i32,
        start_time_unix_nano: nanos(record.start),
        end_time_unix_nano: nanos(record.end),
        attributes: record.attributes.iter().map(|(key, value)| attribute(key, value)).collect(),
        dropped_attributes_count: 0,
        status: Some(status),
    }
}

#[cfg(test)]
mod tests {
    use baton_core::trace::SpanBuilder;
    use baton_core::{ExecutionId, ExecutionTrace, ServiceId, StepId, WorkflowName};

    use super::*;

    #[tokio::test]
    async fn spans_a_collector_does_not_take_are_counted_as_dropped() {
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
        let config = OtlpConfig { interval: Duration::from_millis(10), ..OtlpConfig::new(&format!("http://{closed}")) };
        let exporter = config.spawn().unwrap();
        let execution = ExecutionId::generate();
        let trace = ExecutionTrace::new(execution, None);
        let workflow = WorkflowName::new("w").unwrap();
        let spans = SpanBuilder { trace: &trace, workflow: &workflow, execution };
        let now = baton_core::Timestamp::from_timestamp(1_700_000_000, 0).unwrap();
        let step = StepId::new("s").unwrap();
        let service = ServiceId::new("svc").unwrap();
        for attempt in 1..=3 {
            exporter.export(spans.attempt(&step, attempt, &service, (now, now), "retryable", Some("boom")));
        }
        exporter.shutdown(Duration::from_secs(10)).await;
        assert_eq!((exporter.exported(), exporter.dropped()), (0, 3));
    }

    #[test]
    fn records_become_otlp_spans() {
        let execution = ExecutionId::generate();
        let trace = ExecutionTrace::new(execution, None);
        let workflow = WorkflowName::new("w").unwrap();
        let builder = SpanBuilder { trace: &trace, workflow: &workflow, execution };
        let start = baton_core::Timestamp::from_timestamp(1_700_000_000, 5).unwrap();
        let end = baton_core::Timestamp::from_timestamp(1_700_000_001, 0).unwrap();
        let step = StepId::new("charge").unwrap();
        let record = builder.attempt(&step, 2, &ServiceId::new("pay").unwrap(), (start, end), "failed", Some("no"));
        let otlp = span(record);
        assert_eq!(otlp.trace_id, execution.as_uuid().as_bytes().to_vec());
        assert_eq!(otlp.span_id, trace.attempt(&step, 2).0.to_vec());
        assert_eq!(otlp.parent_span_id, trace.root().0.to_vec());
        assert_eq!(
            (otlp.start_time_unix_nano, otlp.end_time_unix_nano),
            (1_700_000_000_000_000_005, 1_700_000_001_000_000_000)
        );
        assert_eq!(otlp.kind, pb::trace::span::SpanKind::Client as i32);
        assert_eq!(
            otlp.status,
            Some(pb::trace::Status { message: "no".into(), code: pb::trace::status::StatusCode::Error as i32 })
        );
        let attempt = otlp.attributes.iter().find(|a| a.key == "baton.attempt").unwrap();
        assert_eq!(attempt.value.as_ref().unwrap().value, Some(pb::common::any_value::Value::IntValue(2)));
    }
}
