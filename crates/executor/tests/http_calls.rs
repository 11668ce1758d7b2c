//! Requests a program writes itself (`call: http`, `call: openapi`), sent by the real
//! `HttpInvoker` to an axum server on loopback, reached through an origin mapping.

use std::sync::Arc;

use axum::Router;
use axum::extract::Path;
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::IntoResponse;
use axum::routing::get;
use baton_core::fakes::{FakeClock, RecordingSink};
use baton_core::program::{
    Action, Block, Call, CallTarget, Flow, HttpCall, HttpOutput, OnError, OpenApiCall, Program, Task, Then,
};
use baton_core::{Event, EventKind, ExecutionId, History, Outcome, RetryPolicy, StepId, Template, WorkflowName};
use baton_executor::{Config, Executor, HttpConfig, HttpInvoker, Origins, Start, TrustRoots};
use serde_json::{Value, json};

/// A JSON answer (the workspace builds axum without its `json` feature).
fn json_body(value: Value) -> axum::response::Response {
    ([("content-type", "application/json")], value.to_string()).into_response()
}

/// A small pet store: pets by id (`404` is missing), by status, basic auth and its Swagger
/// document, which names the public host the origin mapping sends here.
async fn serve() -> String {
    let pet = |id: u64| json!({"id": id, "name": format!("pet-{id}"), "status": "available"});
    let app = Router::new()
        .route(
            "/v2/pet/{id}",
            get(move |Path(id): Path<String>| async move {
                match id.parse::<u64>() {
                    Ok(404) | Err(_) => (StatusCode::NOT_FOUND, "Pet not found").into_response(),
                    Ok(id) => json_body(pet(id)),
                }
            }),
        )
        .route(
            "/v2/pet/findByStatus",
            get(move |uri: Uri| async move {
                let statuses: Vec<&str> =
                    uri.query().unwrap_or_default().split('&').filter_map(|p| p.strip_prefix("status=")).collect();
                json_body(json!([{"id": 1, "name": "a", "status": statuses.join("+")}]))
            }),
        )
        .route(
            "/basic-auth/{user}/{password}",
            get(|Path((user, password)): Path<(String, String)>, headers: HeaderMap| async move {
                use base64::Engine as _;
                let expected = format!(
                    "Basic {}",
                    base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
                );
                match headers.get("authorization").and_then(|v| v.to_str().ok()) {
                    Some(given) if given == expected => json_body(json!({"authenticated": true, "user": user})),
                    _ => StatusCode::UNAUTHORIZED.into_response(),
                }
            }),
        )
        .route(
            "/v2/swagger.json",
            get(|| async {
                json_body(json!({
                    "swagger": "2.0",
                    "host": "petstore.test",
                    "basePath": "/v2",
                    "schemes": ["https"],
                    "paths": {
                        "/pet/{petId}": {"get": {"operationId": "getPetById", "parameters": [
                            {"name": "petId", "in": "path", "required": true, "type": "integer"}
                        ]}},
                        "/pet/findByStatus": {"get": {"operationId": "findPetsByStatus", "parameters": [
                            {"name": "status", "in": "query", "required": true, "type": "array", "collectionFormat": "multi"}
                        ]}}
                    }
                }))
            }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    format!("http://{address}")
}

fn template(value: Value) -> Template {
    Template::compile("t", &value).unwrap()
}

fn call(name: &str, target: CallTarget, output: Option<&str>) -> Task {
    Task {
        name: StepId::new(name).unwrap(),
        reference: format!("/do/0/{name}"),
        condition: None,
        input: None,
        output: output.map(|o| Template::expression("output", o, &[]).unwrap()),
        export: None,
        then: Then::Continue,
        depends_on: Vec::new(),
        retry: RetryPolicy { max_attempts: 1, ..RetryPolicy::default() },
        timeout: None,
        task_timeout: None,
        on_error: OnError::Fail,
        action: Action::Call(Call { target, payload: template(Value::Null), shape: None }),
    }
}

fn http(method: &str, uri: Value, output: HttpOutput) -> HttpCall {
    HttpCall {
        method: method.to_owned(),
        uri: template(uri),
        headers: None,
        query: None,
        body: None,
        output,
        basic_auth: None,
        bearer: None,
    }
}

struct Harness {
    executor: Executor<HttpInvoker>,
    events: RecordingSink<Event>,
}

async fn harness() -> Harness {
    let base = serve().await;
    let origins =
        Origins::new([("https://petstore.test", base.as_str()), ("https://httpbin.test", base.as_str())]).unwrap();
    let invoker = HttpConfig { origins, ..HttpConfig::default() }.build(Arc::new(|_: &baton_core::ServiceId| None));
    let events = RecordingSink::default();
    let executor = Config::default().build(Arc::new(invoker), Arc::new(events.clone()), Arc::new(FakeClock::default()));
    Harness { executor, events }
}

async fn run(h: &Harness, task: Task, input: Value) -> Outcome {
    let program = Program {
        name: WorkflowName::new("calls").unwrap(),
        root: Block::new(Flow::Sequence, vec![task], None),
        input: None,
        output: None,
        deadline: None,
    };
    let start = Start {
        execution: ExecutionId::generate(),
        program: Arc::new(program),
        input,
        history: History::default(),
        workflow: json!({"id": "calls-run"}),
        idle: None,
        trace: None,
    };
    h.executor.run(start).outcome().await
}

#[tokio::test]
async fn http_calls_reach_mapped_origins_and_yield_what_they_ask_for() {
    let h = harness().await;
    let uri = json!("https://petstore.test/v2/pet/${ .petId }");
    let content =
        call("getPet", CallTarget::Http(Arc::new(http("get", uri.clone(), HttpOutput::Content))), Some(".id"));
    assert_eq!(run(&h, content, json!({"petId": 7})).await, Outcome::Completed(json!(7)));
    let response = call("getPet", CallTarget::Http(Arc::new(http("get", uri, HttpOutput::Response))), None);
    let Outcome::Completed(whole) = run(&h, response, json!({"petId": 1})).await else { panic!("completed") };
    assert_eq!(whole["statusCode"], 200);
    assert_eq!(whole["content"]["name"], "pet-1");
    assert_eq!(whole["request"]["uri"], "https://petstore.test/v2/pet/1");
    // The request is journaled as scheduled with the host it names.
    let scheduled =
        h.events.events().into_iter().any(
            |e| matches!(&e.kind, EventKind::TaskScheduled { service, .. } if service.as_str() == "petstore.test"),
        );
    assert!(scheduled);

    let mut login =
        http("get", json!("https://httpbin.test/basic-auth/${ .user }/${ .password }"), HttpOutput::Content);
    login.basic_auth = Some((template(json!("${ .user }")), template(json!("${ .password }"))));
    let login = call("login", CallTarget::Http(Arc::new(login)), None);
    let input = json!({"user": "serverless-workflow", "password": "conformance-test"});
    assert_eq!(
        run(&h, login, input).await,
        Outcome::Completed(json!({"authenticated": true, "user": "serverless-workflow"}))
    );
}

#[tokio::test]
async fn workflow_and_runtime_variables_read_the_same_before_and_after_the_call() {
    let h = harness().await;
    // `$workflow` gets the execution's input put back when read: in the request, rendered
    // before the call, and in the output filter, run once it is answered.
    let variables = ["input", "context", "workflow", "task", "output", "runtime"];
    let uri =
        Template::compile_with("uri", &json!("https://petstore.test/v2/pet/${ $workflow.input.petId }"), &variables)
            .unwrap();
    let mut task = call(
        "getPet",
        CallTarget::Http(Arc::new(HttpCall { uri, ..http("get", json!(""), HttpOutput::Content) })),
        None,
    );
    task.output = Some(
        Template::expression("output", "{id: .id, workflow: $workflow, runtime: $runtime.name}", &variables).unwrap(),
    );
    assert_eq!(
        run(&h, task, json!({"petId": 7})).await,
        Outcome::Completed(
            json!({"id": 7, "workflow": {"id": "calls-run", "input": {"petId": 7}}, "runtime": "baton"})
        )
    );
}

#[tokio::test]
async fn a_skipped_task_passes_its_input_on_and_a_run_one_its_output() {
    let h = harness().await;
    let set = |name: &str, condition: Option<&str>, value: Value| Task {
        condition: condition.map(|c| Template::expression("if", c, &[]).unwrap()),
        action: Action::Set(template(value)),
        ..call(name, CallTarget::Services(Vec::new()), None)
    };
    let program = |first: Option<&str>| Program {
        name: WorkflowName::new("sets").unwrap(),
        root: Block::new(
            Flow::Sequence,
            vec![set("first", first, json!({"set": true})), set("second", None, json!({"saw": "${ . }"}))],
            None,
        ),
        input: None,
        output: None,
        deadline: None,
    };
    for (condition, seen) in [(".n > 1", json!({"n": 1})), (".n == 1", json!({"set": true}))] {
        let start = Start {
            execution: ExecutionId::generate(),
            program: Arc::new(program(Some(condition))),
            input: json!({"n": 1}),
            history: History::default(),
            workflow: json!({"id": "sets-run"}),
            idle: None,
            trace: None,
        };
        assert_eq!(h.executor.run(start).outcome().await, Outcome::Completed(json!({"saw": seen})), "if: {condition}");
    }
}

#[tokio::test]
async fn failures_are_communication_problems_at_the_task() {
    let h = harness().await;
    let missing = call(
        "getPet",
        CallTarget::Http(Arc::new(http("get", json!("https://petstore.test/v2/pet/404"), HttpOutput::Content))),
        None,
    );
    let Outcome::Failed(problem) = run(&h, missing, json!({})).await else { panic!("failed") };
    assert_eq!(problem.kind, "https://serverlessworkflow.io/spec/1.0.0/errors/communication");
    assert_eq!((problem.status, problem.instance.as_deref()), (404, Some("/do/0/getPet")));
    assert!(problem.title.is_some());
    // An origin nobody mapped is called where it is: here nobody listens.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let far = call(
        "far",
        CallTarget::Http(Arc::new(http("get", json!(format!("http://{closed}/")), HttpOutput::Content))),
        None,
    );
    let Outcome::Failed(problem) = run(&h, far, json!({})).await else { panic!("failed") };
    assert!(problem.detail.unwrap().contains("connect"));
    let refused =
        call("bad", CallTarget::Http(Arc::new(http("get", json!("${ .nothing }"), HttpOutput::Content))), None);
    let Outcome::Failed(problem) = run(&h, refused, json!({})).await else { panic!("failed") };
    assert_eq!((problem.status, problem.instance.as_deref()), (400, Some("/do/0/bad")));
}

#[tokio::test]
async fn openapi_calls_fetch_the_document_and_call_the_operation() {
    let h = harness().await;
    let api = |operation: &str, parameters: Value, output: HttpOutput| OpenApiCall {
        document: template(json!("https://petstore.test/v2/swagger.json")),
        operation_id: operation.to_owned(),
        parameters: Some(template(parameters)),
        output,
        basic_auth: None,
        bearer: None,
    };
    let find = api("findPetsByStatus", json!({"status": "${ .status }"}), HttpOutput::Content);
    let task = call("findPet", CallTarget::OpenApi(Arc::new(find)), Some(".[0].status"));
    assert_eq!(
        run(&h, task, json!({"status": ["available", "sold"]})).await,
        Outcome::Completed(json!("available+sold"))
    );
    let get_pet = api("getPetById", json!({"petId": "${ .petId }"}), HttpOutput::Response);
    let task = call("getPet", CallTarget::OpenApi(Arc::new(get_pet)), None);
    let Outcome::Completed(whole) = run(&h, task, json!({"petId": 3})).await else { panic!("completed") };
    assert_eq!((whole["statusCode"].clone(), whole["content"]["id"].clone()), (json!(200), json!(3)));
    assert_eq!(whole["request"]["uri"], "https://petstore.test/v2/pet/3");
    let unknown = api("deletePet", json!({}), HttpOutput::Content);
    let task = call("gone", CallTarget::OpenApi(Arc::new(unknown)), None);
    let Outcome::Failed(problem) = run(&h, task, json!({})).await else { panic!("failed") };
    assert!(problem.detail.unwrap().contains("has no operation \"deletePet\""));
}

/// An HTTPS service with a throwaway CA's certificate: `GET /hello` answers the
/// `traceparent` and `x-baton-node` it was sent.
async fn serve_tls(pki: &baton_examples::pki::TestPki) -> String {
    let app = Router::new().route(
        "/hello",
        get(|headers: HeaderMap| async move {
            let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).map(str::to_owned);
            json_body(json!({"traceparent": header("traceparent").unwrap_or_default(), "node": header("x-baton-node")}))
        }),
    );
    let config =
        baton_examples::tls::server_config(pki.server_cert_pem.as_bytes(), pki.server_key_pem.as_bytes(), None)
            .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let listener = baton_examples::tls::TlsListener::new(listener, config).unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    format!("https://{address}")
}

#[tokio::test]
async fn https_requests_trust_the_servers_roots_and_carry_the_attempts_trace_and_node() {
    let pki = baton_examples::pki::TestPki::new("calls");
    let url = format!("{}/hello", serve_tls(&pki).await);
    let with_roots = |roots: TrustRoots| {
        let node = Some("node-7".parse().unwrap());
        let invoker =
            HttpConfig { roots, node, ..HttpConfig::default() }.build(Arc::new(|_: &baton_core::ServiceId| None));
        let events = RecordingSink::default();
        let executor =
            Config::default().build(Arc::new(invoker), Arc::new(events.clone()), Arc::new(FakeClock::default()));
        Harness { executor, events }
    };
    let hello = || call("hello", CallTarget::Http(Arc::new(http("get", json!(url), HttpOutput::Content))), None);

    let trusted = with_roots(TrustRoots::empty().with_pem(pki.ca_pem.as_bytes()).unwrap());
    let Outcome::Completed(answer) = run(&trusted, hello(), json!({})).await else { panic!("completed") };
    let traceparent = answer["traceparent"].as_str().unwrap();
    let execution = trusted.events.events()[0].execution;
    let trace = baton_core::ExecutionTrace::new(execution, None);
    let expected = trace.traceparent(trace.attempt(&StepId::new("hello").unwrap(), 1));
    assert_eq!(traceparent, expected, "the attempt's span, as for a service call");
    assert_eq!(answer["node"], "node-7", "the calling node, as for a service call");

    // A certificate the server does not trust fails at once, naming the host.
    let untrusted = with_roots(TrustRoots::empty());
    let Outcome::Failed(problem) = run(&untrusted, hello(), json!({})).await else { panic!("failed") };
    assert!(problem.detail.unwrap().contains("tls: certificate for 127.0.0.1 not trusted"));
}

#[test]
fn origins_must_be_bare_and_targets_http() {
    assert!(Origins::new([("https://a.test/path", "http://127.0.0.1:1")]).unwrap_err().contains("nothing after"));
    assert!(Origins::new([("https://a.test", "ftp://127.0.0.1:1")]).unwrap_err().contains("http or https"));
    assert!(Origins::new([("not a url", "http://127.0.0.1:1")]).unwrap_err().contains("is not a URL"));
    assert!(Origins::new([("https://a.test", "http://127.0.0.1:1/prefix")]).is_ok());
}
