//! Traces through a real `baton serve` exporting to an in-process OTLP collector (a tonic
//! server of `opentelemetry.proto.collector.trace.v1.TraceService`): one trace per execution,
//! a span per step attempt under the execution's span, a caller's `traceparent` continued, and
//! the services (HTTP and gRPC) called with `traceparent` naming those very spans.

mod support;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use baton_examples::grpc::{GrpcOptions, spawn_grpc};
use baton_grpc::otlp::pb;
use baton_grpc::pb as api;
use support::{Clients, ServerProcess, example};
use tonic::{Request, Response, Status};

/// A collector that keeps every span it is sent.
#[derive(Clone, Default)]
struct Collector(Arc<Mutex<Vec<pb::trace::Span>>>);

#[tonic::async_trait]
impl pb::collector::trace_service_server::TraceService for Collector {
    async fn export(
        &self,
        request: Request<pb::collector::ExportTraceServiceRequest>,
    ) -> Result<Response<pb::collector::ExportTraceServiceResponse>, Status> {
        let mut spans = self.0.lock().unwrap();
        for resource in request.into_inner().resource_spans {
            let service = resource.resource.as_ref().and_then(|r| text(&r.attributes, "service.name"));
            assert_eq!(service.as_deref(), Some("baton"));
            spans.extend(resource.scope_spans.into_iter().flat_map(|s| s.spans));
        }
        Ok(Response::new(pb::collector::ExportTraceServiceResponse { partial_success: None }))
    }
}

fn text(attributes: &[pb::common::KeyValue], key: &str) -> Option<String> {
    attributes.iter().find(|a| a.key == key).and_then(|a| match a.value.as_ref()?.value.as_ref()? {
        pb::common::any_value::Value::StringValue(text) => Some(text.clone()),
        pb::common::any_value::Value::IntValue(number) => Some(number.to_string()),
        _ => None,
    })
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Starts `workflow` with `metadata`, and waits for it to complete; its id.
async fn run(clients: &mut Clients, workflow: &str, metadata: &[(&'static str, &str)]) -> String {
    let mut request = Request::new(api::StartExecutionRequest {
        workflow: workflow.to_owned(),
        input_json: r#"{"sku": "book-1", "quantity": 1, "amount": 12.5}"#.to_owned(),
        ..Default::default()
    });
    for (key, value) in metadata {
        request.metadata_mut().insert(*key, value.parse().unwrap());
    }
    let started = clients.executions.start_execution(request).await.unwrap().into_inner();
    let id = started.execution.unwrap().id;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let request = api::GetExecutionRequest { id: id.clone() };
        let execution = clients.executions.get_execution(request).await.unwrap().into_inner().execution.unwrap();
        if execution.state == api::ExecutionState::Completed as i32 {
            return id;
        }
        assert!(Instant::now() < deadline, "execution {id} did not complete: {execution:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The spans of `execution`, once its execution span has arrived.
async fn spans_of(collector: &Collector, execution: &str, count: usize) -> Vec<pb::trace::Span> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let spans: Vec<pb::trace::Span> = collector
            .0
            .lock()
            .unwrap()
            .iter()
            .filter(|s| text(&s.attributes, "baton.execution").as_deref() == Some(execution))
            .cloned()
            .collect();
        if spans.len() >= count {
            return spans;
        }
        assert!(Instant::now() < deadline, "{} of {count} spans of {execution} arrived", spans.len());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_execution_is_a_trace_of_its_step_attempts_and_services_see_its_ids() {
    let collector = Collector::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let otlp = format!("http://{}", listener.local_addr().unwrap());
    let serving = tonic::transport::Server::builder()
        .add_service(pb::collector::trace_service_server::TraceServiceServer::new(collector.clone()))
        .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener));
    tokio::spawn(serving);

    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(&dir.path().join("data"), &["--otlp-endpoint", &otlp]).await;
    let options = baton_examples::ServiceOptions { baton: Some(server.url()), ..Default::default() };
    let shop = baton_examples::spawn_shop(&options).await.unwrap();
    let notifications = spawn_grpc(GrpcOptions { baton: Some(server.url()), ..GrpcOptions::default() }).await.unwrap();
    let mut clients = Clients::new(server.channel().await);
    clients.wait_services(4).await;
    clients.apply(&example("order-notify.yaml")).await;

    // One execution with a trace of its own, one continuing a caller's.
    let own = run(&mut clients, "order-notify", &[]).await;
    let caller_trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let caller_span = "00f067aa0ba902b7";
    let traceparent = format!("00-{caller_trace}-{caller_span}-01");
    let continued =
        run(&mut clients, "order-notify", &[("traceparent", &traceparent), ("tracestate", "shop=checkout-7")]).await;

    let steps = [("reserve", "inventory"), ("charge", "payments"), ("ship", "shipping"), ("notify", "notifications")];
    let mut traces = Vec::new();
    for (execution, caller) in [(&own, None), (&continued, Some((caller_trace, caller_span)))] {
        let spans = spans_of(&collector, execution, 1 + steps.len()).await;
        assert_eq!(spans.len(), 1 + steps.len(), "{spans:#?}");
        let trace = hex(&spans[0].trace_id);
        assert!(spans.iter().all(|s| hex(&s.trace_id) == trace), "one trace per execution: {spans:#?}");
        let root: Vec<&pb::trace::Span> = spans.iter().filter(|s| s.name == "execution order-notify").collect();
        assert_eq!(root.len(), 1, "{spans:#?}");
        let root = root[0];
        assert_eq!(text(&root.attributes, "baton.workflow").as_deref(), Some("order-notify"));
        assert_eq!(text(&root.attributes, "baton.outcome").as_deref(), Some("completed"));
        match caller {
            None => {
                assert_eq!(trace, execution.replace('-', ""), "an execution's own trace is its id");
                assert!(root.parent_span_id.is_empty());
            }
            Some((caller_trace, caller_span)) => {
                assert_eq!(trace, caller_trace, "the caller's trace is continued");
                assert_eq!(hex(&root.parent_span_id), caller_span);
                assert!(spans.iter().all(|s| s.trace_state == "shop=checkout-7"), "{spans:#?}");
            }
        }
        for (step, service) in steps {
            let span = spans
                .iter()
                .find(|s| text(&s.attributes, "baton.step").as_deref() == Some(step))
                .unwrap_or_else(|| panic!("no span of step {step}: {spans:#?}"));
            assert_eq!(span.name, format!("step {step}"));
            assert_eq!(span.parent_span_id, root.span_id, "step {step} hangs under the execution");
            assert_eq!(span.kind, pb::trace::span::SpanKind::Client as i32);
            assert_eq!(text(&span.attributes, "baton.service").as_deref(), Some(service));
            assert_eq!(text(&span.attributes, "baton.attempt").as_deref(), Some("1"));
            assert_eq!(text(&span.attributes, "baton.outcome").as_deref(), Some("succeeded"));
            assert!(span.end_time_unix_nano >= span.start_time_unix_nano);
            assert!(span.start_time_unix_nano >= root.start_time_unix_nano);
            // The service was called in this very span.
            let sent = format!("00-{trace}-{}-01", hex(&span.span_id));
            let seen = match service {
                "notifications" => notifications.stats().traceparents,
                _ => shop.iter().find(|s| s.id() == service).unwrap().handle().traceparents(),
            };
            assert!(seen.contains(&sent), "{service} did not see {sent}: {seen:?}");
        }
        traces.push(trace);
    }
    assert_ne!(traces[0], traces[1]);
}
