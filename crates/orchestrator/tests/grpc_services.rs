//! Workflows calling real tonic gRPC services on 127.0.0.1 through the orchestrator: one
//! serving reflection (v1, or v1alpha only), one without it whose descriptor set is registered;
//! descriptors kept per service version; the status codes' retry behaviour; deadlines; TLS with
//! credentials from a secrets directory.

use std::time::Duration;

use base64::Engine as _;
use baton::{Options, ServiceOrchestrator};
use baton_core::{Execution, ExecutionState, ServiceSpec, WorkflowName};
use baton_examples::grpc::{FILE_DESCRIPTOR_SET, GrpcOptions, RunningGrpcService, spawn_grpc};
use baton_examples::pki::TestPki;
use baton_executor::{HttpConfig, Secrets, TrustRoots};
use serde_json::{Value, json};

async fn orchestrator() -> ServiceOrchestrator {
    ServiceOrchestrator::open(Options { supervisor: None, ..Options::default() }).await.unwrap()
}

/// A gRPC service `id`, with or without reflection.
async fn grpc(id: &str, reflection: bool) -> RunningGrpcService {
    spawn_grpc(GrpcOptions { id: Some(id.to_owned()), reflection, ..GrpcOptions::default() }).await.unwrap()
}

/// Registers `service` under `id`, with the `shop.v1` descriptor set when `descriptors`.
fn register(baton: &ServiceOrchestrator, id: &str, service: &RunningGrpcService, descriptors: bool) {
    let mut endpoint = json!({"protocol": "grpc", "url": service.url(), "method": "shop.v1.Notifications/Notify"});
    if descriptors {
        endpoint["descriptor_set"] = json!(base64::engine::general_purpose::STANDARD.encode(FILE_DESCRIPTOR_SET));
    }
    let spec = json!({"id": id, "version": "1", "endpoint": endpoint, "capabilities": ["customer.notify"]});
    baton.registry().register(ServiceSpec::from_json(&spec.to_string()).unwrap()).unwrap();
}

/// Applies `yaml` and runs it with `input` to its end.
async fn run(baton: &ServiceOrchestrator, yaml: &str, input: Value) -> Execution {
    let applied = baton.engine().apply(yaml).await.unwrap();
    let name = WorkflowName::new(applied.name.as_str()).unwrap();
    let id = baton.engine().start(&name, Some(applied.version), input, None).await.unwrap();
    tokio::time::timeout(Duration::from_secs(20), baton.engine().wait(id)).await.unwrap().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_workflow_calls_a_reflecting_service_and_one_registered_with_descriptors() {
    let baton = orchestrator().await;
    let reflective = grpc("reflective", true).await;
    let described = grpc("described", false).await;
    register(&baton, "reflective", &reflective, false);
    register(&baton, "described", &described, true);
    let yaml = r#"
name: grpc-both
steps:
  - id: echo
    service: reflective
    grpc:
      method: shop.v1.Probe/Echo
      metadata: {x-tenant: "${ .input.tenant }"}
    input: {text: "${ .input.text }", count: 3, tags: [a, b], nested: {flag: true, ratio: 0.5}}
  - id: notify
    service: described
    depends_on: [echo]
    input: {tracking: "${ .steps.echo.output.text }"}
output: {echo: "${ .steps.echo.output }", notify: "${ .steps.notify.output }"}
"#;
    let done = run(&baton, yaml, json!({"text": "trk-1", "tenant": "acme"})).await;
    assert_eq!(done.state, ExecutionState::Completed, "{:?}", done.error);
    let output = done.output.unwrap();
    let echo = &output["echo"];
    assert_eq!((echo["text"].as_str(), echo["count"].as_i64()), (Some("trk-1"), Some(3)));
    assert_eq!(echo["tags"], json!(["a", "b"]));
    assert_eq!(echo["nested"], json!({"flag": true, "ratio": 0.5}));
    assert_eq!(echo["service"], "reflective");
    let metadata = &echo["metadata"];
    assert_eq!(metadata["idempotency-key"], format!("{}/echo", done.id));
    assert_eq!((metadata["x-baton-step"].as_str(), metadata["x-baton-attempt"].as_str()), (Some("echo"), Some("1")));
    assert_eq!(metadata["x-tenant"], "acme");
    assert_eq!(
        output["notify"],
        json!({"notification_id": "ntf-described-000001", "tracking": "trk-1", "service": "described"})
    );
    assert_eq!(described.stats().effects, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_codes_are_retried_or_not_as_documented() {
    // Every case fails on one service: its breaker must not open between them.
    let executor = baton_executor::Config { breaker_threshold: 1_000, ..baton_executor::Config::default() };
    let baton = ServiceOrchestrator::open(Options { supervisor: None, executor, ..Options::default() }).await.unwrap();
    let probe = grpc("probe", true).await;
    register(&baton, "probe", &probe, false);
    let yaml = r#"
name: fail
steps:
  - id: fail
    service: probe
    grpc: {method: shop.v1.Probe/Fail}
    input: {code: "${ .input.code }", succeed_after: "${ .input.succeed_after }"}
    retry: {max_attempts: 3, initial_backoff: 1ms, max_backoff: 2ms}
"#;
    // (code, name, retried)
    let cases = [
        (14, "UNAVAILABLE", true),
        (4, "DEADLINE_EXCEEDED", true),
        (8, "RESOURCE_EXHAUSTED", true),
        (10, "ABORTED", true),
        (3, "INVALID_ARGUMENT", false),
        (5, "NOT_FOUND", false),
        (7, "PERMISSION_DENIED", false),
        (16, "UNAUTHENTICATED", false),
        (12, "UNIMPLEMENTED", false),
    ];
    for (code, name, retried) in cases {
        let done = run(&baton, yaml, json!({"code": code, "succeed_after": 0})).await;
        assert_eq!(done.state, ExecutionState::Failed, "{name}");
        let task = &done.tasks["fail"];
        assert_eq!(task.attempts, if retried { 3 } else { 1 }, "{name}");
        let error = done.error.unwrap();
        let class = format!("grpc_{}", name.to_ascii_lowercase());
        assert!(error.contains(&format!("{class}: {name}: failing with")), "{name}: {error}");
    }
    // A retryable code that clears up: the third attempt succeeds, under the same key.
    let done = run(&baton, yaml, json!({"code": 14, "succeed_after": 2})).await;
    assert_eq!(done.state, ExecutionState::Completed, "{:?}", done.error);
    assert_eq!(done.output, Some(json!(null)));
    assert_eq!(done.tasks["fail"].attempts, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_attempt_timeout_travels_as_grpc_timeout_and_is_honoured() {
    let baton = orchestrator().await;
    let probe = grpc("probe", false).await;
    register(&baton, "probe", &probe, true);
    let yaml = r#"
name: sleep
steps:
  - id: sleep
    service: probe
    grpc: {method: shop.v1.Probe/Sleep}
    input: {millis: "${ .input.millis }"}
    timeout: 400ms
    retry: {max_attempts: 1}
output: "${ .steps.sleep.output }"
"#;
    let quick = run(&baton, yaml, json!({"millis": 5})).await;
    assert_eq!(quick.state, ExecutionState::Completed, "{:?}", quick.error);
    let seen = quick.output.unwrap()["deadline_millis"].as_str().unwrap().parse::<u64>().unwrap();
    assert!((1..=400).contains(&seen), "the service saw a grpc-timeout of {seen} ms");

    let started = std::time::Instant::now();
    let slow = run(&baton, yaml, json!({"millis": 5_000})).await;
    assert_eq!(slow.state, ExecutionState::Failed);
    assert!(started.elapsed() < Duration::from_secs(3), "the call ended at its deadline");
    let error = slow.error.unwrap();
    assert!(error.contains("timeout") || error.contains("DEADLINE_EXCEEDED"), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_that_cannot_be_converted_fail_permanently_naming_why() {
    let baton = orchestrator().await;
    let blind = grpc("blind", false).await;
    let probe = grpc("probe", true).await;
    register(&baton, "blind", &blind, false);
    register(&baton, "probe", &probe, false);
    let step = |service: &str, call: &str, input: &str| {
        format!(
            "name: bad\nsteps:\n  - id: s\n    service: {service}\n    {call}\n    input: {input}\n    retry: {{max_attempts: 3, initial_backoff: 1ms}}\n"
        )
    };
    let cases = [
        (step("blind", "grpc: {}", "{tracking: x}"), "no_descriptors", "serves no reflection"),
        (step("probe", "grpc: {method: shop.v1.Probe/Nothing}", "{}"), "unknown_method", "has no method Nothing"),
        (step("probe", "grpc: {method: shop.v1.Absent/Call}", "{}"), "unknown_method", "shop.v1.Absent"),
        (step("probe", "grpc: {}", "{tracking: x, colour: red}"), "invalid_input", "shop.v1.NotifyRequest"),
        (step("probe", "http: {method: PUT}", "{}"), "unsupported_protocol", "gRPC endpoint"),
    ];
    for (yaml, class, needle) in cases {
        let done = run(&baton, &yaml, json!({})).await;
        assert_eq!(done.state, ExecutionState::Failed, "{yaml}");
        assert_eq!(done.tasks["s"].attempts, 1, "{yaml}");
        let error = done.error.unwrap();
        assert!(error.contains(class) && error.contains(needle), "{class}/{needle}: {error}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_reflects_only_v1alpha_is_understood() {
    let baton = orchestrator().await;
    let old = spawn_grpc(GrpcOptions {
        id: Some("old".to_owned()),
        reflection: true,
        reflection_v1alpha_only: true,
        ..GrpcOptions::default()
    })
    .await
    .unwrap();
    // It really does not speak v1: the invoker had to fall back.
    let channel = tonic::transport::Channel::from_shared(old.url().to_owned()).unwrap().connect().await.unwrap();
    let mut v1 = tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient::new(channel);
    let ask = tonic_reflection::pb::v1::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(tonic_reflection::pb::v1::server_reflection_request::MessageRequest::ListServices(
            String::new(),
        )),
    };
    let refused = v1.server_reflection_info(futures_util::stream::iter([ask])).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unimplemented);

    register(&baton, "old", &old, false);
    let yaml = r#"
name: old-reflection
steps:
  - id: echo
    service: old
    grpc: {method: shop.v1.Probe/Echo}
    input: {text: hello}
output: "${ .steps.echo.output.text }"
"#;
    let done = run(&baton, yaml, json!({})).await;
    assert_eq!(done.state, ExecutionState::Completed, "{:?}", done.error);
    assert_eq!(done.output, Some(json!("hello")));
}

/// `FILE_DESCRIPTOR_SET` without the method `Probe/Echo`.
fn without_echo() -> Vec<u8> {
    use prost::Message as _;
    let mut set = prost_types::FileDescriptorSet::decode(FILE_DESCRIPTOR_SET).unwrap();
    for file in &mut set.file {
        for service in &mut file.service {
            service.method.retain(|method| method.name() != "Echo");
        }
    }
    set.encode_to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn descriptors_are_kept_per_service_version_and_registration() {
    let baton = orchestrator().await;
    let service = grpc("versioned", false).await;
    let register_with = |version: &str, set: &[u8]| {
        let endpoint = json!({
            "protocol": "grpc",
            "url": service.url(),
            "descriptor_set": base64::engine::general_purpose::STANDARD.encode(set),
        });
        let spec = json!({"id": "versioned", "version": version, "endpoint": endpoint, "capabilities": ["probe"]});
        baton.registry().register(ServiceSpec::from_json(&spec.to_string()).unwrap()).unwrap();
    };
    let yaml = r#"
name: versioned
steps:
  - id: echo
    service: versioned
    grpc: {method: shop.v1.Probe/Echo}
    input: {text: hello}
    retry: {max_attempts: 1}
output: "${ .steps.echo.output.text }"
"#;
    // Version 1 describes no Echo: the call is refused before it is sent.
    register_with("1", &without_echo());
    let refused = run(&baton, yaml, json!({})).await;
    assert_eq!(refused.state, ExecutionState::Failed);
    assert!(refused.error.as_deref().unwrap().contains("has no method Echo"), "{:?}", refused.error);
    // Version 2 does: the descriptors cached for version 1 are not used for it.
    register_with("2", FILE_DESCRIPTOR_SET);
    let done = run(&baton, yaml, json!({})).await;
    assert_eq!(done.state, ExecutionState::Completed, "{:?}", done.error);
    // A new descriptor set under the same version is noticed too.
    register_with("2", &without_echo());
    let refused = run(&baton, yaml, json!({})).await;
    assert_eq!(refused.state, ExecutionState::Failed, "the descriptors of the earlier registration were kept");
    assert_eq!(service.stats().calls, 1, "only the described call reached the service");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_services_are_called_over_tls_with_credentials_from_secrets_and_the_calling_node() {
    let pki = TestPki::new("grpc");
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, value: &str| {
        let temp = dir.path().join(format!(".{name}.tmp"));
        std::fs::write(&temp, value).unwrap();
        std::fs::rename(temp, dir.path().join(name)).unwrap();
    };
    write("grpc-token", "token-1");
    write("tenant-key", "tenant-1");
    let http = HttpConfig {
        roots: TrustRoots::empty().with_pem(pki.ca_pem.as_bytes()).unwrap(),
        secrets: Secrets::new(Some(dir.path())),
        node: Some("node-a".parse().unwrap()),
        ..HttpConfig::default()
    };
    let baton = ServiceOrchestrator::open(Options { supervisor: None, http, ..Options::default() }).await.unwrap();
    let tls = Some((pki.server_cert_pem.clone().into_bytes(), pki.server_key_pem.clone().into_bytes()));
    let secure =
        spawn_grpc(GrpcOptions { id: Some("secure".to_owned()), tls, ..GrpcOptions::default() }).await.unwrap();
    assert!(secure.url().starts_with("https://"), "{}", secure.url());
    let other = TestPki::new("other");
    let tls = Some((other.server_cert_pem.clone().into_bytes(), other.server_key_pem.clone().into_bytes()));
    let stranger =
        spawn_grpc(GrpcOptions { id: Some("stranger".to_owned()), tls, ..GrpcOptions::default() }).await.unwrap();
    let register_as = |id: &str, url: &str, credentials: Value| {
        let endpoint = json!({"protocol": "grpc", "url": url, "method": "shop.v1.Probe/Echo"});
        let spec = json!({"id": id, "endpoint": endpoint, "credentials": credentials, "capabilities": ["probe"]});
        baton.registry().register(ServiceSpec::from_json(&spec.to_string()).unwrap()).unwrap();
    };
    register_as("bearer", secure.url(), json!({"kind": "bearer", "secret": "grpc-token"}));
    register_as("tenant", secure.url(), json!({"kind": "header", "header": "x-tenant", "secret": "tenant-key"}));
    register_as("stranger", stranger.url(), json!({"kind": "bearer", "secret": "grpc-token"}));
    let yaml = |service: &str| {
        format!(
            "name: tls-{service}\nsteps:\n  - id: echo\n    service: {service}\n    input: {{text: hi}}\n    \
             retry: {{max_attempts: 3, initial_backoff: 1ms}}\noutput: \"${{ .steps.echo.output.metadata }}\"\n"
        )
    };

    // Reflection and the call both go over TLS with the credentials.
    let done = run(&baton, &yaml("bearer"), json!({})).await;
    assert_eq!(done.state, ExecutionState::Completed, "{:?}", done.error);
    assert_eq!(done.output.as_ref().unwrap()["authorization"], "present");
    assert_eq!(done.output.as_ref().unwrap()["x-baton-node"], "node-a", "the calling node, as over HTTP");
    let done = run(&baton, &yaml("tenant"), json!({})).await;
    assert_eq!(done.output.as_ref().unwrap()["x-tenant"], "tenant-1");
    // Rotated while running: the next call carries the new value.
    write("tenant-key", "tenant-2");
    let done = run(&baton, &yaml("tenant"), json!({})).await;
    assert_eq!(done.output.as_ref().unwrap()["x-tenant"], "tenant-2");

    // A certificate from a CA nobody trusts: permanent, named, on the first attempt.
    let refused = run(&baton, &yaml("stranger"), json!({})).await;
    assert_eq!(refused.state, ExecutionState::Failed);
    assert_eq!(refused.tasks["echo"].attempts, 1);
    let error = refused.error.unwrap();
    assert!(
        error.contains("tls_certificate") && error.contains("tls: certificate for 127.0.0.1 not trusted"),
        "{error}"
    );
    assert_eq!(stranger.stats().calls, 0);
}
