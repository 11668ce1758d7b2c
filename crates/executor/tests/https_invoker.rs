//! Calls over HTTPS to real axum services on loopback, with a throwaway CA: trust, hostname
//! checks, HTTP/2 or HTTP/1.1 by ALPN, mutual TLS, the handshake's time limit, credentials from
//! a secrets directory and their rotation.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{ConnectInfo, Request};
use axum::http::header::{AUTHORIZATION, CONTENT_TYPE};
use axum::http::{HeaderMap, StatusCode, Version};
use axum::response::IntoResponse;
use axum::routing::post;
use baton_core::fakes::{FakeClock, RecordingSink};
use baton_core::{ErrorPolicy, EventKind, ExecutionId, RetryPolicy, ServiceId, ServiceSpec, StepId, Template};
use baton_examples::pki::TestPki;
use baton_executor::{Call, Config, Failure, HttpConfig, HttpInvoker, Outcome, RunSpec, Secrets, TaskSpec, TrustRoots};
use serde_json::{Value, json};

/// What the service saw of one request.
#[derive(Debug, Clone)]
struct Seen {
    version: Version,
    headers: HeaderMap,
    /// The client's address: one per connection.
    peer: SocketAddr,
}

/// The client's address of a TLS connection.
#[derive(Debug, Clone, Copy)]
struct Peer(SocketAddr);

impl axum::extract::connect_info::Connected<axum::serve::IncomingStream<'_, baton_examples::tls::TlsListener>>
    for Peer
{
    fn connect_info(stream: axum::serve::IncomingStream<'_, baton_examples::tls::TlsListener>) -> Self {
        Self(*stream.remote_addr())
    }
}

/// An HTTPS service on a fresh loopback port: `POST /call` answers `{"ok": true}`, `POST /echo`
/// answers 400 quoting the request's `Authorization` header (as a careless service might).
struct Service {
    url: String,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl Service {
    async fn start(pki: &TestPki, client_ca: Option<&TestPki>) -> Self {
        Self::start_speaking(pki, client_ca, &[b"h2", b"http/1.1"]).await
    }

    /// As [`Service::start`], offering `alpn` in the handshake.
    async fn start_speaking(pki: &TestPki, client_ca: Option<&TestPki>, alpn: &[&[u8]]) -> Self {
        let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
        let record = Arc::clone(&seen);
        let router = Router::new()
            .route(
                "/call",
                post(move |ConnectInfo(Peer(peer)): ConnectInfo<Peer>, request: Request| {
                    let record = Arc::clone(&record);
                    async move {
                        let seen = Seen { version: request.version(), headers: request.headers().clone(), peer };
                        record.lock().unwrap().push(seen);
                        ([(CONTENT_TYPE, "application/json")], r#"{"ok": true}"#)
                    }
                }),
            )
            .route(
                "/echo",
                post(|headers: HeaderMap, _body: Bytes| async move {
                    let auth = headers.get(AUTHORIZATION).map(|v| v.to_str().unwrap().to_owned()).unwrap_or_default();
                    (StatusCode::BAD_REQUEST, format!("refused {auth}")).into_response()
                }),
            );
        let config = baton_examples::tls::server_config(
            pki.server_cert_pem.as_bytes(),
            pki.server_key_pem.as_bytes(),
            client_ca.map(|ca| ca.ca_pem.as_bytes()),
        )
        .unwrap();
        let mut config = (*config).clone();
        config.alpn_protocols = alpn.iter().map(|protocol| protocol.to_vec()).collect();
        let config = Arc::new(config);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let listener = baton_examples::tls::TlsListener::new(listener, config).unwrap();
        let app = router.into_make_service_with_connect_info::<Peer>();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Self { url: format!("https://127.0.0.1:{}", addr.port()), seen }
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

/// A secrets directory the test writes to.
struct SecretsDir(tempfile::TempDir);

impl SecretsDir {
    fn new() -> Self {
        Self(tempfile::tempdir().unwrap())
    }

    fn set(&self, name: &str, value: &str) {
        // Written beside and renamed over, as secret managers do.
        let path = self.0.path().join(name);
        let temp = self.0.path().join(format!(".{name}.tmp"));
        std::fs::write(&temp, value).unwrap();
        std::fs::rename(temp, path).unwrap();
    }

    fn secrets(&self) -> Secrets {
        Secrets::new(Some(self.0.path()))
    }
}

fn spec(url: &str, extra: Value) -> Arc<ServiceSpec> {
    let mut spec = json!({"id": "svc", "endpoint": {"protocol": "http", "url": url}, "capabilities": ["test"]});
    for (k, v) in extra.as_object().unwrap() {
        spec[k] = v.clone();
    }
    Arc::new(ServiceSpec::from_json(&spec.to_string()).unwrap())
}

/// An invoker trusting only `trusted` (no system roots), reading secrets from `secrets`.
fn invoker(trusted: Option<&TestPki>, secrets: Secrets) -> HttpInvoker {
    let roots = match trusted {
        Some(pki) => TrustRoots::empty().with_pem(pki.ca_pem.as_bytes()).unwrap(),
        None => TrustRoots::empty(),
    };
    let config = HttpConfig { roots, secrets, ..HttpConfig::default() };
    config.build(Arc::new(|_: &ServiceId| None))
}

fn call(payload: Value) -> Call {
    Call::new(ExecutionId::generate(), StepId::new("a").unwrap(), 1, ServiceId::new("svc").unwrap(), payload)
}

fn assert_failure(result: Result<Value, Failure>, retryable: bool, class: &str, message: &str) -> Failure {
    let failure = result.unwrap_err();
    assert_eq!((failure.retryable, failure.class.as_str()), (retryable, class), "{failure}");
    assert!(failure.message.contains(message), "{:?} lacks {message:?}", failure.message);
    failure
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trusted_ca_passes_over_http2_and_an_untrusted_one_fails_permanently_by_name() {
    let pki = TestPki::new("shop");
    let service = Service::start(&pki, None).await;
    let url = format!("{}/call", service.url);

    // Trusted through the server-wide bundle (`--services-ca`).
    let output = invoker(Some(&pki), Secrets::default()).call(&spec(&url, json!({})), call(json!({"x": 1}))).await;
    assert_eq!(output.unwrap(), json!({"ok": true}));
    let seen = service.seen();
    assert_eq!(seen[0].version, Version::HTTP_2, "ALPN picks HTTP/2 when the service speaks it");
    assert_eq!(seen[0].headers["x-baton-step"], "a");

    // Trusted through the service's own CA secret.
    let dir = SecretsDir::new();
    dir.set("shop-ca", &pki.ca_pem);
    let with_ca = spec(&url, json!({"tls": {"ca": "shop-ca"}}));
    assert_eq!(invoker(None, dir.secrets()).call(&with_ca, call(json!({}))).await.unwrap(), json!({"ok": true}));

    // Trusted by nobody: a permanent failure naming the host, not a retry loop.
    let other = TestPki::new("other");
    let untrusted = invoker(Some(&other), Secrets::default()).call(&spec(&url, json!({})), call(json!({}))).await;
    assert_failure(untrusted, false, "tls_certificate", "tls: certificate for 127.0.0.1 not trusted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_that_speaks_only_http1_is_called_over_http1_on_pooled_connections() {
    let pki = TestPki::new("shop");
    let service = Service::start_speaking(&pki, None, &[b"http/1.1"]).await;
    let url = format!("{}/call", service.url);
    let invoker = invoker(Some(&pki), Secrets::default());
    for _ in 0..10 {
        assert_eq!(invoker.call(&spec(&url, json!({})), call(json!({}))).await.unwrap(), json!({"ok": true}));
    }
    let seen = service.seen();
    assert!(seen.iter().all(|s| s.version == Version::HTTP_11), "{seen:?}");
    assert_eq!(seen[0].headers["x-baton-step"], "a");
    // An HTTP/1.1 connection goes back to the pool a moment after its response ends, so a call
    // right behind may open another on a loaded machine; reuse must still be the rule.
    let connections: std::collections::BTreeSet<_> = seen.iter().map(|s| s.peer).collect();
    assert!(connections.len() <= 3, "TLS connections pooled and reused: {connections:?} for {} calls", seen.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_for_another_name_is_refused() {
    let pki = TestPki::for_names("shop", &["shop.internal"]);
    let service = Service::start(&pki, None).await;
    let result = invoker(Some(&pki), Secrets::default())
        .call(&spec(&format!("{}/call", service.url), json!({})), call(json!({})))
        .await;
    assert_failure(result, false, "tls_certificate", "not trusted: issued for another name");
    assert!(service.seen().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_untrusted_certificate_fails_the_step_on_its_first_attempt() {
    let pki = TestPki::new("shop");
    let service = Service::start(&pki, None).await;
    let url = format!("{}/call", service.url);
    let other = TestPki::new("other");
    let specs = spec(&url, json!({}));
    let config =
        HttpConfig { roots: TrustRoots::empty().with_pem(other.ca_pem.as_bytes()).unwrap(), ..HttpConfig::default() };
    let invoker = config.build(Arc::new(move |_: &ServiceId| Some(Arc::clone(&specs))));
    let events = RecordingSink::default();
    let executor = Config { jitter_seed: Some(1), ..Config::default() }.build(
        Arc::new(invoker),
        Arc::new(events.clone()),
        Arc::new(FakeClock::default()),
    );
    let task = TaskSpec {
        id: StepId::new("a").unwrap(),
        services: vec![ServiceId::new("svc").unwrap()],
        input: Template::compile("input", &json!({})).unwrap(),
        call: None,
        depends_on: Vec::new(),
        retry: RetryPolicy { max_attempts: 5, initial_backoff: Duration::from_millis(1), ..RetryPolicy::default() },
        timeout: None,
        task_timeout: None,
        on_error: ErrorPolicy::Fail,
    };
    let spec = RunSpec::new(ExecutionId::generate(), vec![task], Template::compile("o", &Value::Null).unwrap(), None);
    let outcome = executor.start(spec.unwrap(), Value::Null, BTreeMap::new()).outcome().await;
    let Outcome::Failed(error) = outcome else { panic!("{outcome:?}") };
    assert!(error.message().contains("tls: certificate for 127.0.0.1 not trusted"), "{error}");
    let attempts = events.events().iter().filter(|e| matches!(e.kind, EventKind::TaskScheduled { .. })).count();
    assert_eq!(attempts, 1, "a certificate failure is not retried");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_presents_the_client_certificate_and_refusals_are_named() {
    let pki = TestPki::new("shop");
    let service = Service::start(&pki, Some(&pki)).await;
    let url = format!("{}/call", service.url);
    let dir = SecretsDir::new();
    dir.set("client-cert", &pki.client_cert_pem);
    dir.set("client-key", &pki.client_key_pem);
    let other = TestPki::new("other");
    dir.set("other-cert", &other.client_cert_pem);
    dir.set("other-key", &other.client_key_pem);
    let invoker = invoker(Some(&pki), dir.secrets());

    let mtls = spec(&url, json!({"tls": {"client_cert": "client-cert", "client_key": "client-key"}}));
    assert_eq!(invoker.call(&mtls, call(json!({}))).await.unwrap(), json!({"ok": true}));

    let without = invoker.call(&spec(&url, json!({})), call(json!({}))).await;
    assert_failure(without, false, "tls_client_certificate", "tls: 127.0.0.1 refused the client certificate");

    let wrong = spec(&url, json!({"tls": {"client_cert": "other-cert", "client_key": "other-key"}}));
    let refused = invoker.call(&wrong, call(json!({}))).await;
    assert_failure(refused, false, "tls_client_certificate", "refused the client certificate");

    let mismatched = spec(&url, json!({"tls": {"client_cert": "client-cert", "client_key": "other-key"}}));
    assert_failure(invoker.call(&mismatched, call(json!({}))).await, false, "tls_config", "do not go together");
    assert_eq!(service.seen().len(), 1, "only the call with the right certificate got through");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_come_from_the_secrets_dir_and_rotate_without_a_restart() {
    let pki = TestPki::new("shop");
    let service = Service::start(&pki, None).await;
    let url = format!("{}/call", service.url);
    let dir = SecretsDir::new();
    dir.set("token", "first-token\n");
    dir.set("password", "first-password");
    dir.set("api-key", "first-key");
    let invoker = invoker(Some(&pki), dir.secrets());
    let bearer = spec(&url, json!({"credentials": {"kind": "bearer", "secret": "token"}}));
    let basic = spec(&url, json!({"credentials": {"kind": "basic", "username": "baton", "secret": "password"}}));
    let header = spec(&url, json!({"credentials": {"kind": "header", "header": "x-api-key", "secret": "api-key"}}));
    for spec in [&bearer, &basic, &header] {
        invoker.call(spec, call(json!({}))).await.unwrap();
    }
    dir.set("token", "second-token");
    dir.set("password", "second-password");
    dir.set("api-key", "second-key");
    for spec in [&bearer, &basic, &header] {
        invoker.call(spec, call(json!({}))).await.unwrap();
    }
    let seen = service.seen();
    let value = |i: usize, name: &str| seen[i].headers[name].to_str().unwrap().to_owned();
    let basic_of = |pair: &str| {
        use base64::Engine as _;
        format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(pair))
    };
    assert_eq!(value(0, "authorization"), "Bearer first-token");
    assert_eq!(value(1, "authorization"), basic_of("baton:first-password"));
    assert_eq!(value(2, "x-api-key"), "first-key");
    assert_eq!(value(3, "authorization"), "Bearer second-token", "the next call uses the rotated value");
    assert_eq!(value(4, "authorization"), basic_of("baton:second-password"));
    assert_eq!(value(5, "x-api-key"), "second-key");

    // A service quoting the credential back does not put it in the failure.
    let echo = spec(&format!("{}/echo", service.url), json!({"credentials": {"kind": "bearer", "secret": "token"}}));
    let failure = assert_failure(invoker.call(&echo, call(json!({}))).await, false, "http_400", "refused Bearer ***");
    assert!(!format!("{failure:?}").contains("second-token"));

    // A missing secret is named, without any value.
    let missing = spec(&url, json!({"credentials": {"kind": "bearer", "secret": "nowhere"}}));
    assert_failure(invoker.call(&missing, call(json!({}))).await, false, "secret", "secret nowhere is not set");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_that_never_completes_the_handshake_is_a_retryable_connect_failure_in_time() {
    // Accepts connections and says nothing.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let held: Arc<Mutex<Vec<tokio::net::TcpStream>>> = Arc::default();
    let holding = Arc::clone(&held);
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            holding.lock().unwrap().push(stream);
        }
    });
    let config = HttpConfig {
        connect_timeout: Some(Duration::from_millis(200)),
        request_timeout: Some(Duration::from_secs(30)),
        ..HttpConfig::default()
    };
    let invoker = config.build(Arc::new(|_: &ServiceId| None));
    let started = std::time::Instant::now();
    let result = invoker.call(&spec(&format!("https://{addr}/call"), json!({})), call(json!({}))).await;
    assert_failure(result, true, "connect", "tls handshake with 127.0.0.1 took longer than 200ms");
    assert!(started.elapsed() < Duration::from_secs(10), "the connect limit, not the request's, ended it");
}
