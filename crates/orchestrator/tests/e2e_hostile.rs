//! A real `baton serve` under hostile clients: malformed protobuf bodies at every method of
//! every `baton.v1` service (through a raw client that sends bytes as they are), and valid but
//! hostile requests (huge, deep, cyclic, unknown, unbounded). Each call must be answered, with
//! an error code where the request is wrong, within a timeout; afterwards the server must still
//! be alive, healthy and able to run a workflow. Also: the per-connection rate limit refuses a
//! burst and the connection works again afterwards.

mod support;

use std::str::FromStr as _;
use std::time::{Duration, Instant};

use axum::Json;
use axum::routing::post;
use baton_grpc::pb;
use prost::Message as _;
use prost::bytes::{Buf as _, BufMut as _};
use rand::{Rng as _, SeedableRng as _};
use serde_json::{Value, json};
use support::{Clients, ServerProcess};
use tonic::Code;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::transport::Channel;

/// Longest any one call may take to be answered: past it, the server hangs. Generous, since
/// checking a 10,000-step chain in a debug build on a loaded 2-core machine takes seconds.
const ANSWER_WITHIN: Duration = Duration::from_secs(30);

/// Sends and receives message bodies as raw bytes, so that a body need not be a valid message.
#[derive(Debug, Clone, Copy, Default)]
struct RawCodec;

impl Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = RawCodec;
    type Decoder = RawCodec;

    fn encoder(&mut self) -> Self::Encoder {
        RawCodec
    }

    fn decoder(&mut self) -> Self::Decoder {
        RawCodec
    }
}

impl Encoder for RawCodec {
    type Item = Vec<u8>;
    type Error = tonic::Status;

    fn encode(&mut self, item: Vec<u8>, dst: &mut EncodeBuf<'_>) -> Result<(), tonic::Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl Decoder for RawCodec {
    type Item = Vec<u8>;
    type Error = tonic::Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Vec<u8>>, tonic::Status> {
        let mut bytes = vec![0; src.remaining()];
        src.copy_to_slice(&mut bytes);
        Ok(Some(bytes))
    }
}

/// How the server answered a raw call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Answer {
    /// The call ended with this code.
    Ended(Code),
    /// A server stream opened and is waiting for events: the request was valid.
    Open,
}

/// Calls `path` with `body` as its one request message, the way a streaming call is made, so
/// that one client reaches unary and streaming methods alike; panics when there is no answer
/// within [`ANSWER_WITHIN`].
async fn raw_call(channel: &Channel, path: &str, body: Vec<u8>) -> Answer {
    let mut grpc = tonic::client::Grpc::new(channel.clone());
    let call = async {
        grpc.ready().await.map_err(|e| tonic::Status::unavailable(e.to_string()))?;
        let path = http::uri::PathAndQuery::from_str(path).unwrap();
        let request = tonic::Request::new(tokio_stream::once(body));
        let mut stream = grpc.streaming(request, path, RawCodec).await?.into_inner();
        // A server stream that opened on a valid request may wait for events: that is an answer.
        loop {
            match tokio::time::timeout(Duration::from_secs(2), stream.message()).await {
                Ok(Ok(Some(_))) => continue,
                Ok(Ok(None)) => return Ok(Answer::Ended(Code::Ok)),
                Ok(Err(status)) => return Err(status),
                Err(_) => return Ok(Answer::Open),
            }
        }
    };
    match tokio::time::timeout(ANSWER_WITHIN, call).await {
        Ok(Ok(answer)) => answer,
        Ok(Err(status)) => Answer::Ended(status.code()),
        Err(_) => panic!("{path}: no answer within {ANSWER_WITHIN:?}"),
    }
}

/// Every method path of every `baton.v1` service, from the descriptor set the server serves.
fn method_paths() -> Vec<String> {
    let set = prost_types::FileDescriptorSet::decode(pb::FILE_DESCRIPTOR_SET).unwrap();
    let mut paths = Vec::new();
    for file in set.file.iter().filter(|file| file.package() == "baton.v1") {
        for service in &file.service {
            for method in &service.method {
                paths.push(format!("/baton.v1.{}/{}", service.name(), method.name()));
            }
        }
    }
    paths
}

/// Bodies no message decodes from, whatever its fields.
fn malformed_bodies() -> Vec<(&'static str, Vec<u8>)> {
    vec![
        ("field number 0", vec![0x00]),
        ("wire type 6", vec![0x0e, 0x01]),
        ("wire type 7", vec![0x0f]),
        ("truncated varint", vec![0x08, 0xff, 0xff]),
        ("varint over 10 bytes", vec![0x08, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01]),
        ("length past the end", vec![0x0a, 0x7f, 0x41]),
        ("huge length", vec![0x0a, 0xff, 0xff, 0xff, 0xff, 0x0f, 0x41]),
        ("field 1 as fixed32", vec![0x0d, 0x01, 0x02, 0x03, 0x04]),
        ("field 1 as fixed64", vec![0x09, 1, 2, 3, 4, 5, 6, 7, 8]),
        ("field 1 as a group", vec![0x0b, 0x0c]),
        ("unterminated group", vec![0x0b]),
        ("field 1 as bytes, not UTF-8 nor a message", vec![0x0a, 0x02, 0xff, 0xfe]),
        ("truncated fixed64", vec![0x09, 0x01]),
    ]
}

/// Codes a hostile call may be answered with; anything else (INTERNAL, UNKNOWN, UNAVAILABLE,
/// CANCELLED, an HTTP/2 reset) suggests the handler failed rather than refused.
fn is_refusal(code: Code) -> bool {
    matches!(
        code,
        Code::InvalidArgument
            | Code::OutOfRange
            | Code::NotFound
            | Code::FailedPrecondition
            | Code::ResourceExhausted
            | Code::AlreadyExists
            | Code::Unimplemented
            | Code::DeadlineExceeded
    )
}

/// Serves `{"echo": <request>}` on a loopback port; its URL.
async fn echo_service() -> String {
    let router =
        axum::Router::new().route("/", post(|Json(body): Json<Value>| async move { Json(json!({"echo": body})) }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    format!("http://{addr}/")
}

/// A definition of `steps` steps: a chain when `chain` (every step also reading the first
/// one's output, the worst case for the upstream check), closed into a cycle when `cycle`.
fn definition(steps: usize, chain: bool, cycle: bool) -> String {
    let mut yaml = String::from("name: hostile\nsteps:\n");
    for index in 0..steps {
        yaml.push_str(&format!("  - id: s{index}\n    service: echo\n"));
        if !chain {
            continue;
        }
        if index > 0 {
            yaml.push_str(&format!("    depends_on: [s{}]\n    input: \"${{ .steps.s0.output }}\"\n", index - 1));
        } else if cycle {
            yaml.push_str(&format!("    depends_on: [s{}]\n", steps - 1));
        }
    }
    yaml
}

/// Bounds a typed call by [`ANSWER_WITHIN`].
async fn answered<T>(
    what: &str,
    call: impl Future<Output = Result<tonic::Response<T>, tonic::Status>>,
) -> Result<T, tonic::Status> {
    match tokio::time::timeout(ANSWER_WITHIN, call).await {
        Ok(result) => result.map(tonic::Response::into_inner),
        Err(_) => panic!("{what}: no answer within {ANSWER_WITHIN:?}"),
    }
}

fn refused<T: std::fmt::Debug>(what: &str, result: Result<T, tonic::Status>, code: Code) {
    match result {
        Err(status) => assert_eq!(status.code(), code, "{what}: {status:?}"),
        Ok(answer) => panic!("{what}: expected {code:?}, got an answer: {:.300}", format!("{answer:?}")),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_requests_are_refused_and_the_server_carries_on() {
    let dir = tempfile::tempdir().unwrap();
    // The rate limit is lifted so that every hostile body reaches its decoder.
    let mut server = ServerProcess::start(&dir.path().join("data"), &["--rate-limit", "1000000"]).await;
    let channel = server.channel().await;

    // Malformed bodies at every method.
    let paths = method_paths();
    assert!(paths.len() >= 20, "{paths:?}");
    let mut rng = rand::rngs::StdRng::seed_from_u64(0xbad_b0d1);
    for path in &paths {
        for (what, body) in malformed_bodies() {
            let answer = raw_call(&channel, path, body).await;
            assert_eq!(answer, Answer::Ended(Code::InvalidArgument), "{path} with {what}");
        }
        // Random bytes: most do not decode; the few that do are valid requests, answered as such.
        for _ in 0..24 {
            let len = rng.random_range(1..512);
            let body: Vec<u8> = (0..len).map(|_| rng.random()).collect();
            let answer = raw_call(&channel, path, body.clone()).await;
            assert!(
                matches!(answer, Answer::Open | Answer::Ended(Code::Ok))
                    || matches!(answer, Answer::Ended(code) if is_refusal(code)),
                "{path} with random bytes {body:02x?}: {answer:?}"
            );
        }
    }
    // A path that is no method.
    assert_eq!(raw_call(&channel, "/baton.v1.Nope/Nothing", vec![]).await, Answer::Ended(Code::Unimplemented));

    // Valid but hostile requests.
    let mut clients = Clients::new(channel.clone());
    let mut planner = pb::planner_service_client::PlannerServiceClient::new(channel.clone());
    let apply = |source: String| pb::ApplyDefinitionRequest { source, format: pb::DefinitionFormat::Yaml as i32 };
    let too_many =
        answered("10,001 steps", clients.workflows.apply_definition(apply(definition(10_001, true, false)))).await;
    refused("10,001 steps", too_many, Code::InvalidArgument);
    let most =
        answered("10,000 steps", clients.workflows.apply_definition(apply(definition(10_000, true, false)))).await;
    assert!(most.is_ok(), "a 10,000-step chain is within the limits: {:?}", most.err());
    let cycle = answered("a cycle", clients.workflows.apply_definition(apply(definition(3, true, true)))).await;
    refused("a cycle", cycle, Code::InvalidArgument);
    let huge = apply(format!("name: huge\ndescription: {}\nsteps: []\n", "x".repeat(5 * 1024 * 1024)));
    refused(
        "a 5 MiB message",
        answered("a 5 MiB message", clients.workflows.apply_definition(huge)).await,
        Code::OutOfRange,
    );

    let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
    let start =
        pb::StartExecutionRequest { workflow: "hostile".to_owned(), input_json: deep.clone(), ..Default::default() };
    refused(
        "deeply nested input",
        answered("deep input", clients.executions.start_execution(start)).await,
        Code::InvalidArgument,
    );
    let nested_object = format!("{}1{}", "{\"a\":".repeat(10_000), "}".repeat(10_000));
    let start =
        pb::StartExecutionRequest { workflow: "hostile".to_owned(), input_json: nested_object, ..Default::default() };
    refused(
        "deeply nested object",
        answered("deep object", clients.executions.start_execution(start)).await,
        Code::InvalidArgument,
    );

    let many: Vec<String> = (0..100_000).map(|i| format!("capability-{i}")).collect();
    let find = pb::FindServicesRequest {
        requirements: Some(pb::ServiceRequirements { capabilities: many.clone(), ..Default::default() }),
        ..Default::default()
    };
    let found = answered("100k capabilities", clients.registry.find_services(find)).await;
    assert!(found.as_ref().map_or_else(|s| is_refusal(s.code()), |f| f.candidates.is_empty()), "{found:?}");
    let states = vec![pb::ExecutionState::Running as i32; 100_000];
    let listing = pb::ListExecutionsRequest { states, ..Default::default() };
    let listed = answered("100k states", clients.executions.list_executions(listing)).await;
    assert!(listed.as_ref().map_or_else(|s| is_refusal(s.code()), |l| l.executions.is_empty()), "{listed:?}");
    let goal = pb::Goal { provided: many.clone(), wanted: many, ..Default::default() };
    // Unsatisfiable, and the status names every one of the 100,000 concepts: the server cuts its
    // message, as the whole would be past the header block the client accepts, and the client
    // would close the connection the calls below share (its RESOURCE_EXHAUSTED is no refusal).
    let planned = answered("100k concepts", planner.plan(pb::PlanRequest { goal: Some(goal) })).await;
    refused("100k concepts", planned.map(drop), Code::FailedPrecondition);

    let unknown_execution = "01890a5d-ac96-774b-bcce-b302099a8057".to_owned();
    let get = pb::GetExecutionRequest { id: unknown_execution.clone() };
    refused("unknown execution", answered("get", clients.executions.get_execution(get)).await, Code::NotFound);
    let pause = pb::PauseExecutionRequest { id: unknown_execution };
    refused("pause unknown", answered("pause", clients.executions.pause_execution(pause)).await, Code::NotFound);
    let get = pb::GetExecutionRequest { id: "not-an-id".to_owned() };
    refused("malformed id", answered("get", clients.executions.get_execution(get)).await, Code::InvalidArgument);
    let get = pb::GetServiceRequest { id: "nobody".to_owned() };
    refused("unknown service", answered("get service", clients.registry.get_service(get)).await, Code::NotFound);
    let beat = pb::HeartbeatRequest { id: "nobody".to_owned() };
    refused("heartbeat unknown", answered("heartbeat", clients.registry.heartbeat(beat)).await, Code::NotFound);
    let get = pb::GetDefinitionRequest { name: "nothing".to_owned(), version: Some(u32::MAX) };
    refused(
        "unknown definition",
        answered("get definition", clients.workflows.get_definition(get)).await,
        Code::NotFound,
    );

    let services = answered(
        "page_size max",
        clients.registry.list_services(pb::ListServicesRequest { page_size: u32::MAX, ..Default::default() }),
    )
    .await
    .unwrap();
    assert!(services.services.len() <= 1_000);
    let executions = pb::ListExecutionsRequest { page_size: u32::MAX, ..Default::default() };
    let executions = answered("page_size max", clients.executions.list_executions(executions)).await.unwrap();
    assert!(executions.executions.len() <= 1_000);
    let definitions = pb::ListDefinitionsRequest { page_size: u32::MAX, ..Default::default() };
    let definitions = answered("page_size max", clients.workflows.list_definitions(definitions)).await.unwrap();
    assert!(definitions.definitions.len() <= 1_000);

    // Still alive, healthy, and running workflows.
    server.wait_serving().await;
    let url = echo_service().await;
    let spec = pb::ServiceSpec {
        id: "echo".to_owned(),
        endpoint: Some(pb::Endpoint { kind: Some(pb::endpoint::Kind::Http(pb::endpoint::Http { url })) }),
        capabilities: vec!["echo".to_owned()],
        ..Default::default()
    };
    answered("register", clients.registry.register(pb::RegisterRequest { spec: Some(spec) })).await.unwrap();
    clients
        .apply("name: echo\nsteps:\n  - id: call\n    service: echo\n    input: {value: \"${ .input.value }\"}\n")
        .await;
    let start = pb::StartExecutionRequest {
        workflow: "echo".to_owned(),
        input_json: r#"{"value": 42}"#.to_owned(),
        ..Default::default()
    };
    let started = answered("start", clients.executions.start_execution(start)).await.unwrap();
    let id = started.execution.unwrap().id;
    let finished =
        tokio::time::timeout(Duration::from_secs(30), clients.finished(&id)).await.expect("the run finishes");
    assert_eq!(finished.state, pb::ExecutionState::Completed as i32, "{finished:?}");
    assert!(!server.log_text().contains("panicked"), "{}", server.log_text());
    assert_eq!(server.terminate().code(), Some(0), "{}", server.log_text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_over_the_rate_limit_is_refused_and_the_connection_carries_on() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(&dir.path().join("data"), &["--rate-limit", "20"]).await;
    let channel = server.channel().await;
    let mut registry = pb::registry_service_client::RegistryServiceClient::new(channel.clone());
    let calls = (0..100).map(|_| {
        let mut registry = registry.clone();
        async move { registry.list_services(pb::ListServicesRequest::default()).await }
    });
    let results = tokio::time::timeout(ANSWER_WITHIN, futures_util::future::join_all(calls)).await.unwrap();
    let exhausted = results.iter().filter(|r| r.as_ref().is_err_and(|s| s.code() == Code::ResourceExhausted)).count();
    let ok = results.iter().filter(|r| r.is_ok()).count();
    assert_eq!(ok + exhausted, 100, "{results:?}");
    // The burst of 20 passes, and what refills while the calls are answered.
    assert!(ok >= 20 && exhausted >= 40, "{ok} passed, {exhausted} refused");
    let status = results.into_iter().find_map(Result::err).unwrap();
    assert!(status.message().contains("rate limit"), "{status:?}");

    // The same connection is served again once the bucket refills.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match registry.list_services(pb::ListServicesRequest::default()).await {
            Ok(_) => break,
            Err(status) => assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}"),
        }
        assert!(Instant::now() < deadline, "the connection was not served again");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Health checks count against the same bucket, and are served again too.
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    loop {
        match health.check(tonic_health::pb::HealthCheckRequest { service: String::new() }).await {
            Ok(answer) => {
                let serving = tonic_health::pb::health_check_response::ServingStatus::Serving as i32;
                assert_eq!(answer.into_inner().status, serving);
                break;
            }
            Err(status) => assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}"),
        }
        assert!(Instant::now() < deadline, "health was not served again");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Serves `{"echo": <request>}` on a loopback port for `id`, registered with the server.
async fn register_echo(clients: &mut Clients, id: &str) {
    register_http(clients, id, echo_service().await).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_is_accepted_reads_back_within_the_message_limit() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = ServerProcess::start(&dir.path().join("data"), &[]).await;
    let mut clients = Clients::new(server.channel().await);
    register_echo(&mut clients, "echo").await;
    // Three steps that each hand back what they are given; the run's output is all of them.
    clients
        .apply(
            "name: bulk\nsteps:\n  - {id: a, service: echo, input: \"${ .input.pad }\"}\n  \
             - {id: b, service: echo, input: \"${ .input.pad }\"}\n  - {id: c, service: echo, input: \"${ .input.pad }\"}\n\
             output: \"${ .steps }\"\n",
        )
        .await;
    let start = |pad: usize| pb::StartExecutionRequest {
        workflow: "bulk".to_owned(),
        input_json: json!({"pad": "p".repeat(pad)}).to_string(),
        ..Default::default()
    };

    // An input over 1 MiB is refused, naming the field and the bound.
    let big = answered("a 2 MiB input", clients.executions.start_execution(start(2 << 20))).await;
    let status = big.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(status.message().contains("input_json is 2097162 bytes of JSON, the limit is 1048576"), "{status:?}");

    // Five executions of 900 KB inputs: each step's output fits, the run's (2.7 MB) does not.
    let mut ids = Vec::new();
    for _ in 0..5 {
        let started = answered("start", clients.executions.start_execution(start(900_000))).await.unwrap();
        ids.push(started.execution.unwrap().id);
    }
    for id in &ids {
        let finished = tokio::time::timeout(Duration::from_secs(60), clients.finished(id)).await.expect("it ends");
        assert_eq!(finished.state, pb::ExecutionState::Failed as i32, "{:?}", finished.error);
        let error = finished.error.unwrap_or_default();
        assert!(error.starts_with("output of the run is 27"), "{error}");
        assert!(error.ends_with("bytes of JSON, the limit is 1048576"), "{error}");
        // Its journal reads back, event by event.
        assert_eq!(watched(&mut clients, id, 0).await.unwrap(), 8, "started, 3 x (scheduled, succeeded), failed");
    }
    // 4.5 MB of inputs: listed in pages that each fit.
    let mut listed = Vec::new();
    let mut token = String::new();
    loop {
        let request = pb::ListExecutionsRequest { page_token: token.clone(), ..Default::default() };
        let page = answered("list", clients.executions.list_executions(request)).await.expect("a page fits");
        listed.extend(page.executions.into_iter().map(|e| e.id));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    ids.reverse();
    assert_eq!(listed, ids);

    // A cancel reason over 4 KiB is refused, whatever the execution's state.
    let cancel = pb::CancelExecutionRequest { id: ids[0].clone(), reason: "r".repeat(3 << 20) };
    let refused = answered("a 3 MiB reason", clients.executions.cancel_execution(cancel)).await.unwrap_err();
    assert_eq!(refused.code(), Code::InvalidArgument, "{refused:?}");
    assert!(refused.message().contains("reason is 3145728 bytes, the limit is 4096"), "{refused:?}");
    assert_eq!(server.terminate().code(), Some(0), "{}", server.log_text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pause_resume_loop_stops_at_the_journal_cap() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = ServerProcess::start(&dir.path().join("data"), &["--max-journal-events", "100"]).await;
    let mut clients = Clients::new(server.channel().await);
    // A step on a worker queue nobody polls: the execution stays running.
    let spec = pb::ServiceSpec {
        id: "idle".to_owned(),
        endpoint: Some(pb::Endpoint {
            kind: Some(pb::endpoint::Kind::Worker(pb::endpoint::Worker { queue: "nobody".to_owned() })),
        }),
        capabilities: vec!["wait".to_owned()],
        ..Default::default()
    };
    answered("register", clients.registry.register(pb::RegisterRequest { spec: Some(spec) })).await.unwrap();
    clients.apply("name: idle\nsteps:\n  - {id: wait, service: idle}\n").await;
    let start = pb::StartExecutionRequest { workflow: "idle".to_owned(), ..Default::default() };
    let id = answered("start", clients.executions.start_execution(start)).await.unwrap().execution.unwrap().id;
    let mut refused = None;
    for round in 0..200 {
        let result = if round % 2 == 0 {
            answered("pause", clients.executions.pause_execution(pb::PauseExecutionRequest { id: id.clone() }))
                .await
                .map(drop)
        } else {
            answered("resume", clients.executions.resume_execution(pb::ResumeExecutionRequest { id: id.clone() }))
                .await
                .map(drop)
        };
        if let Err(status) = result {
            refused = Some(status);
            break;
        }
    }
    let refused = refused.expect("the cap stops the loop");
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    assert!(refused.message().contains("has reached its cap of 100 events"), "{refused:?}");
    // From past the end of a live journal: refused at once, not left hanging.
    let past = watched(&mut clients, &id, 10_000).await.unwrap_err();
    assert_eq!(past.code(), Code::OutOfRange, "{past:?}");
    let cancel = pb::CancelExecutionRequest { id: id.clone(), reason: "enough".to_owned() };
    answered("cancel", clients.executions.cancel_execution(cancel)).await.expect("a cancel still goes in");
    assert_eq!(watched(&mut clients, &id, 0).await.unwrap(), 101, "the cap and the cancel");
    assert_eq!(server.terminate().code(), Some(0), "{}", server.log_text());
}

/// Registers `id` at `url`, an HTTP service.
async fn register_http(clients: &mut Clients, id: &str, url: String) -> Result<pb::RegisterResponse, tonic::Status> {
    let spec = pb::ServiceSpec {
        id: id.to_owned(),
        endpoint: Some(pb::Endpoint { kind: Some(pb::endpoint::Kind::Http(pb::endpoint::Http { url })) }),
        capabilities: vec!["echo".to_owned()],
        ..Default::default()
    };
    answered("register", clients.registry.register(pb::RegisterRequest { spec: Some(spec) })).await
}

/// The journal of `id` from `from`, read to its end: the number of events.
async fn watched(clients: &mut Clients, id: &str, from: u64) -> Result<usize, tonic::Status> {
    let request = pb::WatchExecutionRequest { id: id.to_owned(), from_sequence: from };
    let mut events = answered("watch", clients.executions.watch_execution(request)).await?;
    let mut count = 0;
    while tokio::time::timeout(ANSWER_WITHIN, events.message()).await.expect("the watch goes on")?.is_some() {
        count += 1;
    }
    Ok(count)
}

/// The issue's cases through the real server, not the engine alone: a service answering
/// 6.9 MB, a service that never answers under `--attempt-timeout`, the server's own address
/// as an endpoint, and a watch from past the end of a journal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn huge_and_silent_services_fail_their_steps_and_every_read_answers() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = ServerProcess::start(&dir.path().join("data"), &["--attempt-timeout", "1s"]).await;
    let mut clients = Clients::new(server.channel().await);

    let huge = json!({ "blob": "x".repeat(6_900_000) });
    let router = axum::Router::new().route("/", post(move || async move { Json(huge) }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let huge_url = format!("http://{}/", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    register_http(&mut clients, "huge", huge_url).await.unwrap();
    // Accepts connections and never answers on them.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let silent_url = format!("http://{}/", silent.local_addr().unwrap());
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = silent.accept().await {
            held.push(socket);
        }
    });
    register_http(&mut clients, "silent", silent_url).await.unwrap();

    // The server's own gRPC address is refused as an endpoint: Baton would call itself.
    let own = register_http(&mut clients, "own", format!("{}/", server.url())).await.unwrap_err();
    assert_eq!(own.code(), Code::InvalidArgument, "{own:?}");
    assert!(own.message().contains("Baton would call itself in a loop"), "{own:?}");

    // Its own timeout: 6.9 MB may take longer than the default's second on a loaded machine.
    clients.apply("name: huge\nsteps:\n  - {id: fetch, service: huge, timeout: 60s}\n").await;
    clients.apply("name: silent\nsteps:\n  - {id: ask, service: silent, retry: {max_attempts: 1}}\n").await;
    let start = |workflow: &str| pb::StartExecutionRequest { workflow: workflow.to_owned(), ..Default::default() };
    let huge = answered("start", clients.executions.start_execution(start("huge"))).await.unwrap();
    let silent = answered("start", clients.executions.start_execution(start("silent"))).await.unwrap();
    let (huge, silent) = (huge.execution.unwrap().id, silent.execution.unwrap().id);

    let failed = tokio::time::timeout(ANSWER_WITHIN, clients.finished(&huge)).await.expect("it ends");
    assert_eq!(failed.state, pb::ExecutionState::Failed as i32, "{failed:?}");
    let error = failed.error.unwrap_or_default();
    assert!(error.contains("response of service huge exceeds 1048576 bytes"), "{error}");
    let failed = tokio::time::timeout(ANSWER_WITHIN, clients.finished(&silent)).await.expect("it ends");
    assert_eq!(failed.state, pb::ExecutionState::Failed as i32, "{failed:?}");
    let error = failed.error.unwrap_or_default();
    assert!(error.contains("attempt timed out after 1s, the default attempt timeout"), "{error}");

    // Every read answers.
    let request = pb::ListExecutionsRequest::default();
    let listed = answered("list", clients.executions.list_executions(request)).await.unwrap();
    assert_eq!(listed.executions.len(), 2);
    let events = watched(&mut clients, &huge, 0).await.unwrap();
    assert_eq!(events, 4, "started, scheduled, failed task, failed");
    // From past the end of an ended journal: nothing more, and the stream ends.
    assert_eq!(watched(&mut clients, &huge, 10).await.unwrap(), 0);
    assert_eq!(server.terminate().code(), Some(0), "{}", server.log_text());
}
