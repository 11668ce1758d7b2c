//! `executor_grpc`: unary calls through the dynamic gRPC invoker (JSON in, protobuf on the
//! wire, descriptors from reflection, converted with prost-reflect) against a local tonic
//! service (`shop.v1.Probe/Echo` of the example services), beside the same calls through the
//! statically generated tonic client; 64 callers in closed loops each way: calls per second,
//! and latency at p50 and p99.
//!
//! Callers and service share the bench's runtime (two workers), as they share the machine. The
//! dynamic side pays what a step pays beyond a hand-written client: JSON to a dynamic message
//! and back, the descriptor cache's lookup; the connection is pooled either way. Both send the
//! same call: the generated client sends the idempotency key and `x-baton-*` metadata too,
//! which `Echo` answers with, so the service's work and the answer are the same both ways.

use std::sync::Arc;
use std::time::Duration;

use baton_benches::{closed_loop, quantile, report_figure};
use baton_core::{CallRequest, ExecutionId, ServiceId, ServiceSpec, StepId};
use baton_examples::grpc::pb::probe_client::ProbeClient;
use baton_examples::grpc::pb::{EchoRequest, Nested};
use baton_examples::grpc::{GrpcOptions, spawn_grpc};
use baton_executor::{Call, GrpcInvoker, HttpConfig};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use serde_json::json;
use tonic::transport::Channel;

/// Callers at once.
const IN_FLIGHT: usize = 64;
/// Calls per criterion iteration.
const PER_ITERATION: usize = 5_000;
/// Calls of the direct measurement for the figures, each way.
const MEASURED: usize = 30_000;

/// What every call of a run shares, built once as the executor builds it once per step.
#[derive(Clone)]
struct Step {
    execution: ExecutionId,
    step: StepId,
    service: ServiceId,
    request: Arc<CallRequest>,
}

impl Step {
    fn new() -> Self {
        Self {
            execution: ExecutionId::generate(),
            step: StepId::new("echo").expect("a valid step"),
            service: ServiceId::new("probe").expect("a valid id"),
            request: Arc::new(CallRequest::Grpc {
                method: Some("shop.v1.Probe/Echo".parse().expect("a method")),
                metadata: vec![],
            }),
        }
    }

    /// Call `n` through the dynamic invoker.
    fn call(&self, n: usize) -> Call {
        let payload = json!({"text": format!("call {n}"), "count": n % 1000, "tags": ["a", "b"], "nested": {"flag": true, "ratio": 0.5}});
        let mut call = Call::new(self.execution, self.step.clone(), 1, self.service.clone(), payload);
        call.request = Some(Arc::clone(&self.request));
        call
    }

    /// The same call for the generated client, with the metadata the invoker sends (the
    /// service echoes it back, so both ways carry the same answer).
    fn request(&self, n: usize) -> tonic::Request<EchoRequest> {
        let mut request = tonic::Request::new(EchoRequest {
            text: format!("call {n}"),
            count: (n % 1000) as i32,
            tags: vec!["a".to_owned(), "b".to_owned()],
            nested: Some(Nested { flag: true, ratio: 0.5 }),
        });
        let metadata = request.metadata_mut();
        let text = |value: String| value.parse().expect("ASCII metadata");
        metadata.insert("idempotency-key", text(format!("{}/{}", self.execution, self.step)));
        metadata.insert("x-baton-execution", text(self.execution.to_string()));
        metadata.insert("x-baton-step", text(self.step.to_string()));
        metadata.insert("x-baton-attempt", text("1".to_owned()));
        request
    }
}

async fn dynamic(invoker: &GrpcInvoker, spec: &Arc<ServiceSpec>, calls: usize) -> (Duration, Vec<Duration>) {
    let step = Step::new();
    closed_loop(IN_FLIGHT, calls, || {
        let (invoker, spec, step) = (invoker.clone(), Arc::clone(spec), step.clone());
        move |n| {
            let (invoker, spec, call) = (invoker.clone(), Arc::clone(&spec), step.call(n));
            async move {
                invoker.call(&spec, call).await.expect("the echo answers");
            }
        }
    })
    .await
}

async fn generated(client: &ProbeClient<Channel>, calls: usize) -> (Duration, Vec<Duration>) {
    let step = Step::new();
    closed_loop(IN_FLIGHT, calls, || {
        let (client, step) = (client.clone(), step.clone());
        move |n| {
            let (mut client, request) = (client.clone(), step.request(n));
            async move {
                client.echo(request).await.expect("the echo answers");
            }
        }
    })
    .await
}

fn executor_grpc(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("a runtime");
    let service = rt.block_on(spawn_grpc(GrpcOptions::default())).expect("the probe service starts");
    let spec =
        json!({"id": "probe", "endpoint": {"protocol": "grpc", "url": service.url()}, "capabilities": ["probe"]});
    let spec = Arc::new(ServiceSpec::from_json(&spec.to_string()).expect("a valid spec"));
    let invoker = GrpcInvoker::new(&HttpConfig::default());
    let client = rt.block_on(async {
        let channel =
            Channel::from_shared(service.url().to_owned()).expect("a URL").connect().await.expect("it answers");
        ProbeClient::new(channel)
    });
    // Warms both: the invoker's descriptors (one reflection) and both connections.
    rt.block_on(dynamic(&invoker, &spec, 1_000));
    rt.block_on(generated(&client, 1_000));

    let mut group = c.benchmark_group("executor_grpc");
    group.sample_size(10);
    group.throughput(Throughput::Elements(PER_ITERATION as u64));
    group.bench_function(format!("baton/echo_{PER_ITERATION}"), |b| {
        b.iter_custom(|iters| (0..iters).map(|_| rt.block_on(dynamic(&invoker, &spec, PER_ITERATION)).0).sum())
    });
    group.bench_function(format!("baseline/echo_{PER_ITERATION}"), |b| {
        b.iter_custom(|iters| (0..iters).map(|_| rt.block_on(generated(&client, PER_ITERATION)).0).sum())
    });
    group.finish();

    // The figures: the two alternate in slices, so that both see the same machine.
    let slices = 6;
    let (mut dynamic_time, mut generated_time) = (Duration::ZERO, Duration::ZERO);
    let (mut dynamic_latencies, mut generated_latencies) = (Vec::new(), Vec::new());
    for _ in 0..slices {
        let (elapsed, latencies) = rt.block_on(dynamic(&invoker, &spec, MEASURED / slices));
        dynamic_time += elapsed;
        dynamic_latencies.extend(latencies);
        let (elapsed, latencies) = rt.block_on(generated(&client, MEASURED / slices));
        generated_time += elapsed;
        generated_latencies.extend(latencies);
    }
    let name = format!("Probe/Echo, {IN_FLIGHT} in flight");
    let generated_rate = generated_latencies.len() as f64 / generated_time.as_secs_f64();
    let dynamic_rate = dynamic_latencies.len() as f64 / dynamic_time.as_secs_f64();
    report_figure(
        "executor_grpc",
        &format!("{name}: static tonic client, calls per second"),
        generated_rate,
        "1/s",
        None,
        None,
    );
    report_figure(
        "executor_grpc",
        &format!("{name}: dynamic invoker, calls per second"),
        dynamic_rate,
        "1/s",
        Some(generated_rate),
        Some(">= 0.7x"),
    );
    for (label, latencies) in
        [("static tonic client", &mut generated_latencies), ("dynamic invoker", &mut dynamic_latencies)]
    {
        latencies.sort_unstable();
        for (quantile_label, q) in [("p50", 0.5), ("p99", 0.99)] {
            report_figure(
                "executor_grpc",
                &format!("{name}: {label}, latency {quantile_label}"),
                quantile(latencies, q).as_secs_f64() * 1e3,
                "ms",
                None,
                None,
            );
        }
    }
}

criterion_group!(benches, executor_grpc);
criterion_main!(benches);
