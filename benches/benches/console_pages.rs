//! `console_pages`: the server time of the web console's two heaviest pages with 100,000
//! executions stored in redb, through the real server (`baton serve`'s code on real sockets):
//! the execution list (a page of 50, newest first), the list filtered by an idempotency key
//! (each of the 100,000 was started with one) and the page of an execution with 200 steps
//! (graph, timeline, tasks and a journal of 402 events). Baseline in the same run: the gRPC
//! calls that answer the same questions, ListExecutions (page size 50, and by key) and
//! GetExecution. Figures: p50 and p99 of each over sequential requests; target p99 under 50 ms.

use std::time::{Duration, Instant};

use baton::config::ServeArgs;
use baton::serve::Server;
use baton_benches::{quantile, report_figure};
use baton_core::{
    Event, EventKind, Execution, ExecutionId, ExecutionState, IdempotencyKey, ServiceId, StepId, Store, TaskState,
    TaskStatus, WorkflowName,
};
use baton_grpc::pb;
use baton_store::RedbStore;
use criterion::{Criterion, criterion_group, criterion_main};
use http_body_util::{BodyExt as _, Empty};
use hyper::body::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tonic::transport::Channel;

const EXECUTIONS: usize = 100_000;
/// The key the filtered list asks for: one in the middle of the listing.
const KEY: &str = "order-50000";
const STEPS: usize = 200;
/// Requests per figure.
const MEASURED: usize = 300;

/// A definition of 200 steps in 20 levels of 10, each step depending on one of the level before.
fn wide_definition() -> String {
    let mut yaml = String::from("name: wide\ndescription: 200 steps in 20 levels\nsteps:\n");
    for n in 0..STEPS {
        yaml.push_str(&format!("  - id: s{n}\n    service: svc\n"));
        if n >= 10 {
            yaml.push_str(&format!("    depends_on: [s{}]\n", n - 10 + (n % 3)));
        }
    }
    yaml
}

fn at(n: usize) -> baton_core::Timestamp {
    chrono::DateTime::from_timestamp(1_700_000_000 + n as i64, 0).expect("a time")
}

fn execution(workflow: &WorkflowName, n: usize, tasks: std::collections::BTreeMap<StepId, TaskStatus>) -> Execution {
    Execution {
        id: ExecutionId::generate(),
        workflow: workflow.clone(),
        version: 1,
        state: ExecutionState::Completed,
        input: serde_json::json!({"n": n}),
        output: Some(serde_json::json!({"ok": true})),
        error: None,
        tasks,
        created_at: at(n),
        updated_at: at(n),
        trace: None,
        parent: None,
        parked: None,
        retention: None,
        expires_at: None,
        problem: None,
    }
}

/// 100,000 finished executions, the nth started with the idempotency key `order-<n>`, and
/// one of 200 steps with its journal; the latter's id.
async fn fill(dir: &std::path::Path) -> ExecutionId {
    let store = RedbStore::open(dir).await.expect("redb opens");
    let listed = WorkflowName::new("listed").expect("a name");
    let mut batch = tokio::task::JoinSet::new();
    for n in 0..EXECUTIONS {
        let store = store.clone();
        let e = execution(&listed, n, Default::default());
        let key = IdempotencyKey::new(&format!("order-{n}")).expect("a key");
        batch.spawn(async move { store.create_execution(e, Some(key)).await.expect("stored") });
        if batch.len() >= 2_000 {
            while batch.join_next().await.is_some() {}
        }
    }
    while batch.join_next().await.is_some() {}
    let service = ServiceId::new("svc").expect("an id");
    let steps: Vec<StepId> = (0..STEPS).map(|n| StepId::new(&format!("s{n}")).expect("an id")).collect();
    let tasks = steps
        .iter()
        .enumerate()
        .map(|(n, step)| {
            let status = TaskStatus {
                state: TaskState::Succeeded,
                attempts: 1,
                service: Some(service.clone()),
                error: None,
                started_at: Some(at(EXECUTIONS + n)),
                finished_at: Some(at(EXECUTIONS + n + 1)),
                child: None,
                due: None,
                problem: None,
            };
            (step.clone(), status)
        })
        .collect();
    let wide = execution(&WorkflowName::new("wide").expect("a name"), EXECUTIONS + STEPS, tasks);
    let id = wide.id;
    store.create_execution(wide, None).await.expect("stored");
    let mut kinds = vec![EventKind::Started { input: serde_json::json!({}) }];
    for step in &steps {
        kinds.push(EventKind::TaskScheduled { step: step.clone(), attempt: 1, service: service.clone() });
        kinds.push(EventKind::TaskSucceeded {
            step: step.clone(),
            attempt: 1,
            output: serde_json::json!({"v": 1}),
            context: None,
        });
    }
    kinds.push(EventKind::Completed { output: serde_json::json!({"ok": true}) });
    let events = kinds
        .into_iter()
        .enumerate()
        .map(|(i, kind)| Event { execution: id, sequence: i as u64 + 1, at: at(EXECUTIONS + i / 2), kind })
        .collect();
    store.append(events).await.expect("journaled");
    id
}

struct Target {
    console: String,
    http: Client<HttpConnector, Empty<Bytes>>,
    grpc: pb::execution_service_client::ExecutionServiceClient<Channel>,
    wide: ExecutionId,
}

impl Target {
    async fn page(&self, path: &str) -> Bytes {
        let response = self.http.get(format!("{}{path}", self.console).parse().expect("a URI")).await.expect("answers");
        assert!(response.status().is_success(), "{path}: {}", response.status());
        let body = response.into_body().collect().await.expect("a body").to_bytes();
        assert!(body.len() > 1000);
        body
    }

    async fn list_page(&self) {
        self.page("/executions").await;
    }

    async fn keyed_list_page(&self) {
        let body = self.page(&format!("/executions?idempotency_key={KEY}")).await;
        let rows = body.windows(b"<tr data-execution=".len()).filter(|w| *w == b"<tr data-execution=").count();
        assert_eq!(rows, 1, "one execution has the key");
    }

    async fn execution_page(&self) {
        self.page(&format!("/executions/{}", self.wide)).await;
    }

    async fn list_grpc(&self) {
        let request = pb::ListExecutionsRequest { page_size: 50, ..Default::default() };
        let page = self.grpc.clone().list_executions(request).await.expect("lists").into_inner();
        assert_eq!(page.executions.len(), 50);
    }

    async fn keyed_list_grpc(&self) {
        let request = pb::ListExecutionsRequest { idempotency_key: KEY.to_owned(), ..Default::default() };
        let page = self.grpc.clone().list_executions(request).await.expect("lists").into_inner();
        assert_eq!(page.executions.len(), 1);
    }

    async fn execution_grpc(&self) {
        let request = pb::GetExecutionRequest { id: self.wide.to_string() };
        let got = self.grpc.clone().get_execution(request).await.expect("gets").into_inner();
        assert_eq!(got.execution.expect("an execution").tasks.len(), STEPS);
    }
}

async fn setup(dir: &std::path::Path) -> Target {
    let wide = fill(dir).await;
    let mut config = ServeArgs::default().resolve().expect("the defaults resolve");
    config.listen = "127.0.0.1:0".parse().expect("an address");
    config.metrics_listen = "127.0.0.1:0".parse().expect("an address");
    config.console_listen = "127.0.0.1:0".parse().expect("an address");
    config.data_dir = dir.to_owned();
    config.log_level = "warn".to_owned();
    // A list by key answers in well under 0.5 ms: the baseline's one connection would pass
    // the per-connection rate limit, which guards the server and is not what is measured.
    config.rate_limit = 1_000_000;
    let server = Server::bind(config).await.expect("the server binds");
    let grpc_url = format!("http://{}", server.grpc_addr());
    let console = format!("http://{}", server.console_addr());
    tokio::spawn(server.serve(std::future::pending()));
    let channel = Channel::from_shared(grpc_url).expect("a URL").connect().await.expect("the server answers");
    let mut workflows = pb::workflow_service_client::WorkflowServiceClient::new(channel.clone());
    workflows
        .apply_definition(pb::ApplyDefinitionRequest {
            source: wide_definition(),
            format: pb::DefinitionFormat::Yaml as i32,
        })
        .await
        .expect("the wide workflow applies");
    Target {
        console,
        http: Client::builder(TokioExecutor::new()).build_http(),
        grpc: pb::execution_service_client::ExecutionServiceClient::new(channel),
        wide,
    }
}

async fn timings<F: std::future::Future<Output = ()>>(mut one: impl FnMut() -> F) -> Vec<Duration> {
    let mut times = Vec::with_capacity(MEASURED);
    for _ in 0..MEASURED {
        let start = Instant::now();
        one().await;
        times.push(start.elapsed());
    }
    times.sort();
    times
}

fn bench(c: &mut Criterion) {
    let runtime =
        tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("a runtime");
    let dir = tempfile::tempdir().expect("a temp dir");
    let target = runtime.block_on(setup(dir.path()));
    let mut group = c.benchmark_group("console_pages");
    group.sample_size(30);
    group.bench_function("baton/list_50", |b| b.iter(|| runtime.block_on(target.list_page())));
    group.bench_function("baseline/list_50", |b| b.iter(|| runtime.block_on(target.list_grpc())));
    group.bench_function("baton/list_by_key", |b| b.iter(|| runtime.block_on(target.keyed_list_page())));
    group.bench_function("baseline/list_by_key", |b| b.iter(|| runtime.block_on(target.keyed_list_grpc())));
    group.bench_function("baton/execution_200_steps", |b| b.iter(|| runtime.block_on(target.execution_page())));
    group.bench_function("baseline/execution_200_steps", |b| b.iter(|| runtime.block_on(target.execution_grpc())));
    group.finish();

    runtime.block_on(async {
        let pairs = [
            ("execution list (50 of 100k)", timings(|| target.list_page()).await, timings(|| target.list_grpc()).await),
            (
                "execution list by idempotency key (1 of 100k)",
                timings(|| target.keyed_list_page()).await,
                timings(|| target.keyed_list_grpc()).await,
            ),
            (
                "execution page (200 steps)",
                timings(|| target.execution_page()).await,
                timings(|| target.execution_grpc()).await,
            ),
        ];
        for (name, console, grpc) in pairs {
            for (q, label) in [(0.5, "p50"), (0.99, "p99")] {
                let value = quantile(&console, q).as_secs_f64() * 1e3;
                let baseline = quantile(&grpc, q).as_secs_f64() * 1e3;
                let target = (label == "p99").then_some("<= 50 ms");
                report_figure("console_pages", &format!("{name} {label}"), value, "ms", Some(baseline), target);
            }
        }
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
