//! Runs calling real HTTP services on loopback through the HTTP invoker.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::http::header::CONTENT_TYPE;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use baton_core::fakes::{FakeClock, RecordingSink};
use baton_core::{ErrorPolicy, Event, EventKind, ExecutionId, RetryPolicy, ServiceId, ServiceSpec, StepId, Template};
use baton_executor::{Call, Config, Executor, HttpConfig, HttpInvoker, Invoker, Outcome, RunSpec, TaskSpec};
use serde_json::{Value, json};
use tokio::sync::oneshot;

/// What a test service does with one request.
enum Reply {
    /// Answers with this status, content type and body.
    With(u16, &'static str, String),
    /// Never answers; tells the test when the request is abandoned.
    Hang(oneshot::Sender<()>),
}

/// A test service: answers by its script, then echoes the request body; records every
/// request's headers.
#[derive(Clone, Default)]
struct Service {
    script: Arc<Mutex<VecDeque<Reply>>>,
    seen: Arc<Mutex<Vec<HeaderMap>>>,
}

/// Sends on drop: the handler's future is dropped when the client abandons the request.
struct DropSignal(Option<oneshot::Sender<()>>);

impl Drop for DropSignal {
    fn drop(&mut self) {
        if let Some(tx) = self.0.take() {
            let _ = tx.send(());
        }
    }
}

impl Service {
    fn new(script: impl IntoIterator<Item = Reply>) -> Self {
        Self { script: Arc::new(Mutex::new(script.into_iter().collect())), seen: Arc::default() }
    }

    /// Serves on a fresh loopback port; returns its URL.
    async fn serve(&self) -> String {
        let this = self.clone();
        let router = Router::new().route(
            "/call",
            post(move |headers: HeaderMap, body: Bytes| {
                let this = this.clone();
                async move { this.handle(headers, body).await }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
        format!("http://{addr}/call")
    }

    async fn handle(&self, headers: HeaderMap, body: Bytes) -> Response {
        self.seen.lock().unwrap().push(headers);
        let reply = self.script.lock().unwrap().pop_front();
        match reply {
            None => (StatusCode::OK, body).into_response(),
            Some(Reply::With(status, content_type, body)) => {
                (StatusCode::from_u16(status).unwrap(), [(CONTENT_TYPE, content_type)], body).into_response()
            }
            Some(Reply::Hang(tx)) => {
                let _signal = DropSignal(Some(tx));
                std::future::pending().await
            }
        }
    }

    fn seen(&self) -> Vec<HeaderMap> {
        self.seen.lock().unwrap().clone()
    }
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> &'a str {
    headers.get(name).unwrap_or_else(|| panic!("no {name} header")).to_str().unwrap()
}

fn reply(status: u16, body: &str) -> Reply {
    Reply::With(status, "application/json", body.to_owned())
}

fn invoker(urls: &[(&str, &str)]) -> HttpInvoker {
    invoker_with(HttpConfig::default(), urls)
}

fn invoker_with(config: HttpConfig, urls: &[(&str, &str)]) -> HttpInvoker {
    let specs: HashMap<ServiceId, Arc<ServiceSpec>> =
        urls.iter().map(|(id, url)| (ServiceId::new(id).unwrap(), http_spec(id, url))).collect();
    config.build(Arc::new(move |id: &ServiceId| specs.get(id).cloned()))
}

fn http_spec(id: &str, url: &str) -> Arc<ServiceSpec> {
    let spec = json!({"id": id, "endpoint": {"protocol": "http", "url": url}, "capabilities": ["test"]});
    Arc::new(ServiceSpec::from_json(&spec.to_string()).unwrap())
}

fn executor(invoker: HttpInvoker) -> (Executor<HttpInvoker>, RecordingSink<Event>) {
    let events = RecordingSink::default();
    let executor = Config { jitter_seed: Some(7), ..Config::default() }.build(
        Arc::new(invoker),
        Arc::new(events.clone()),
        Arc::new(FakeClock::default()),
    );
    (executor, events)
}

/// One task "a" calling `services` in failover order with `max_attempts` and 1 ms backoffs.
fn one_task(execution: ExecutionId, services: &[&str], max_attempts: u32, timeout: Option<Duration>) -> RunSpec {
    let task = TaskSpec {
        id: StepId::new("a").unwrap(),
        services: services.iter().map(|s| ServiceId::new(s).unwrap()).collect(),
        input: Template::compile("input", &json!({"x": "${ .input.x }"})).unwrap(),
        call: None,
        depends_on: Vec::new(),
        retry: RetryPolicy {
            max_attempts,
            initial_backoff: Duration::from_millis(1),
            max_backoff: Duration::from_millis(5),
            ..RetryPolicy::default()
        },
        timeout,
        task_timeout: None,
        on_error: ErrorPolicy::Fail,
    };
    let output = Template::compile("output", &json!("${ .steps.a.output }")).unwrap();
    RunSpec::new(execution, vec![task], output, None).unwrap()
}

async fn run(executor: &Executor<HttpInvoker>, spec: RunSpec) -> Outcome {
    executor.start(spec, json!({"x": 5}), BTreeMap::new()).outcome().await
}

fn failures(events: &RecordingSink<Event>) -> Vec<String> {
    events
        .events()
        .into_iter()
        .filter_map(|e| match e.kind {
            EventKind::TaskFailed { error, .. } => Some(error),
            _ => None,
        })
        .collect()
}

fn failed_with(outcome: &Outcome, needle: &str) {
    match outcome {
        Outcome::Failed(problem) => assert!(problem.message().contains(needle), "{problem:?} lacks {needle:?}"),
        other => panic!("expected a failure naming {needle:?}, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_successful_call_returns_the_services_json_with_baton_headers() {
    let service = Service::default();
    let url = service.serve().await;
    let (executor, _) = executor(invoker(&[("echo", &url)]));
    let execution = ExecutionId::generate();
    let outcome = run(&executor, one_task(execution, &["echo"], 1, None)).await;
    assert_eq!(outcome, Outcome::Completed(json!({"x": 5})));
    let seen = service.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(header(&seen[0], "idempotency-key"), format!("{execution}/a"));
    assert_eq!(header(&seen[0], "content-type"), "application/json");
    assert_eq!(header(&seen[0], "x-baton-execution"), execution.to_string());
    assert_eq!(header(&seen[0], "x-baton-step"), "a");
    assert_eq!(header(&seen[0], "x-baton-attempt"), "1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_500_is_retried_with_the_same_idempotency_key() {
    let service = Service::new([reply(500, "boom")]);
    let url = service.serve().await;
    let (executor, events) = executor(invoker(&[("flaky", &url)]));
    let outcome = run(&executor, one_task(ExecutionId::generate(), &["flaky"], 3, None)).await;
    assert_eq!(outcome, Outcome::Completed(json!({"x": 5})));
    let seen = service.seen();
    assert_eq!(seen.len(), 2);
    assert_eq!(header(&seen[0], "idempotency-key"), header(&seen[1], "idempotency-key"));
    let attempts: Vec<&str> = seen.iter().map(|h| header(h, "x-baton-attempt")).collect();
    assert_eq!(attempts, ["1", "2"]);
    assert_eq!(failures(&events), ["http_500: boom"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_400_is_not_retried() {
    let service = Service::new([reply(400, "bad input")]);
    let url = service.serve().await;
    let (executor, _) = executor(invoker(&[("strict", &url)]));
    let outcome = run(&executor, one_task(ExecutionId::generate(), &["strict"], 3, None)).await;
    failed_with(&outcome, "http_400: bad input");
    assert_eq!(service.seen().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_service_times_out_and_its_request_is_abandoned() {
    let (abandoned_tx, abandoned) = oneshot::channel();
    let service = Service::new([Reply::Hang(abandoned_tx)]);
    let url = service.serve().await;
    let (executor, _) = executor(invoker(&[("stuck", &url)]));
    let outcome =
        run(&executor, one_task(ExecutionId::generate(), &["stuck"], 1, Some(Duration::from_millis(200)))).await;
    failed_with(&outcome, "timeout: attempt timed out after 200ms");
    // Dropping the call closes its connection, so the server drops the handler.
    tokio::time::timeout(Duration::from_secs(10), abandoned)
        .await
        .expect("the server saw the request abandoned")
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_refused_fails_over_to_the_alternative() {
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}/call", listener.local_addr().unwrap())
    };
    let service = Service::default();
    let url = service.serve().await;
    let (executor, events) = executor(invoker(&[("primary", &closed), ("backup", &url)]));
    let outcome = run(&executor, one_task(ExecutionId::generate(), &["primary", "backup"], 2, None)).await;
    assert_eq!(outcome, Outcome::Completed(json!({"x": 5})));
    assert_eq!(service.seen().len(), 1);
    let failures = failures(&events);
    assert_eq!(failures.len(), 1);
    assert!(failures[0].starts_with("connect: ") && failures[0].contains("refused"), "{failures:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_non_json_success_is_a_permanent_invalid_json_failure() {
    let service = Service::new([Reply::With(200, "text/html", "<html>oops</html>".to_owned())]);
    let url = service.serve().await;
    let (executor, _) = executor(invoker(&[("html", &url)]));
    let outcome = run(&executor, one_task(ExecutionId::generate(), &["html"], 3, None)).await;
    failed_with(&outcome, "invalid_json");
    failed_with(&outcome, "<html>oops</html>");
    assert_eq!(service.seen().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_over_the_limit_are_refused_unless_they_are_errors() {
    let big = format!("\"{}\"", "z".repeat(2000));
    let service = Service::new([reply(200, &big), reply(503, &big)]);
    let url = service.serve().await;
    let config = HttpConfig { max_response_bytes: 1024, ..HttpConfig::default() };
    let invoker = invoker_with(config, &[("big", &url)]);
    let call = Call {
        execution: ExecutionId::generate(),
        step: StepId::new("a").unwrap(),
        attempt: 1,
        service: ServiceId::new("big").unwrap(),
        payload: Value::Null,
        request: None,
        timeout: None,
        trace: None,
    };
    let failure = invoker.invoke(call.clone()).await.unwrap_err();
    assert_eq!((failure.retryable, failure.class.as_str()), (false, "response_too_large"));
    // An oversized error body is still classified by its status, quoting its start.
    let failure = invoker.invoke(call.clone()).await.unwrap_err();
    assert_eq!((failure.retryable, failure.class.as_str()), (true, "http_503"));
    assert_eq!(failure.message.len(), 200);
    // Within the limit, the same connection pool keeps working.
    assert_eq!(invoker.invoke(call).await, Ok(Value::Null));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_step_without_a_timeout_gets_the_default_attempt_timeout() {
    // A real listener that takes connections and never reads or answers a byte.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/call", listener.local_addr().unwrap());
    let accepted = Arc::new(Mutex::new(Vec::new()));
    tokio::spawn({
        let accepted = Arc::clone(&accepted);
        async move {
            while let Ok((socket, _)) = listener.accept().await {
                accepted.lock().unwrap().push(socket);
            }
        }
    });
    let events = RecordingSink::default();
    let config =
        Config { jitter_seed: Some(7), default_attempt_timeout: Some(Duration::from_millis(300)), ..Config::default() };
    let executor =
        config.build(Arc::new(invoker(&[("silent", &url)])), Arc::new(events.clone()), Arc::new(FakeClock::default()));
    let spec = one_task(ExecutionId::generate(), &["silent"], 2, None);
    let outcome = tokio::time::timeout(Duration::from_secs(30), run(&executor, spec)).await.expect("the run ends");
    failed_with(&outcome, "timeout: attempt timed out after 300ms");
    let failures = failures(&events);
    assert_eq!(failures.len(), 2, "both attempts time out: {failures:?}");
    assert!(failures.iter().all(|f| f.contains("the default attempt timeout")), "{failures:?}");
    assert_eq!(accepted.lock().unwrap().len(), 2, "each attempt connected");
    // A step's own timeout wins over the default.
    let spec = one_task(ExecutionId::generate(), &["silent"], 1, Some(Duration::from_millis(100)));
    failed_with(&run(&executor, spec).await, "timeout: attempt timed out after 100ms");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_step_shapes_method_path_query_headers_and_takes_the_whole_response() {
    /// Method, URI, `x-tenant` and body of a request.
    type Seen = (String, String, Option<String>, Bytes);
    let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
    let record = Arc::clone(&seen);
    let router = Router::new().fallback(move |request: axum::extract::Request| {
        let record = Arc::clone(&record);
        async move {
            let (parts, body) = request.into_parts();
            let body = axum::body::to_bytes(body, 1024).await.unwrap();
            let tenant = parts.headers.get("x-tenant").map(|v| v.to_str().unwrap().to_owned());
            record.lock().unwrap().push((parts.method.to_string(), parts.uri.to_string(), tenant, body));
            (StatusCode::OK, [("x-stock", "7"), ("content-type", "application/json")], r#"{"sku": "a/b"}"#)
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/api?key=k1", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });

    let call = json!({
        "method": "GET",
        "path": "/items/${ .input.sku }",
        "query": {"verbose": true, "tag": ["x y", "z"], "none": "${ .input.missing }"},
        "headers": {"x-tenant": "${ .input.tenant }"},
        "output": "response",
    });
    let call = baton_core::StepCall::Http(serde_json::from_value(call).unwrap());
    let mut task = TaskSpec {
        id: StepId::new("a").unwrap(),
        services: vec![ServiceId::new("catalog").unwrap()],
        input: Template::compile("input", &Value::Null).unwrap(),
        call: Some(baton_core::CallTemplate::compile("steps.a", &call, false).unwrap()),
        depends_on: Vec::new(),
        retry: RetryPolicy::default(),
        timeout: None,
        task_timeout: None,
        on_error: ErrorPolicy::Fail,
    };
    task.retry.max_attempts = 1;
    let output = Template::compile("output", &json!("${ .steps.a.output }")).unwrap();
    let spec = RunSpec::new(ExecutionId::generate(), vec![task], output, None).unwrap();
    let (executor, _) = executor(invoker(&[("catalog", &url)]));
    let input = json!({"sku": "a/b c", "tenant": "acme"});
    let outcome = executor.start(spec, input, BTreeMap::new()).outcome().await;
    let Outcome::Completed(output) = outcome else { panic!("{outcome:?}") };
    assert_eq!(output["status"], 200);
    assert_eq!(output["headers"]["x-stock"], "7");
    assert_eq!(output["body"], json!({"sku": "a/b"}));
    let seen = seen.lock().unwrap().clone();
    let (method, uri, tenant, body) = &seen[0];
    assert_eq!(method, "GET");
    assert_eq!(uri, "/api/items/a%2Fb%20c?key=k1&tag=x+y&tag=z&verbose=true");
    assert_eq!(tenant.as_deref(), Some("acme"));
    assert!(body.is_empty(), "a GET sends no body");
}
