//! The server's guard over a real connection: bearer tokens (health and reflection open), the
//! per-connection rate limit, TLS and mutual TLS, and a caller's layer seeing refused calls.

mod common;

use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use baton_grpc::{Config, Connections, Tls, Tokens, pb};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose,
};
use tokio::sync::oneshot;
use tonic::Code;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

/// A layer that counts the calls it sees.
#[derive(Debug, Clone, Default)]
struct Counting(Arc<AtomicUsize>);

impl<S> tower_layer::Layer<S> for Counting {
    type Service = CountingService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        CountingService { inner, count: Arc::clone(&self.0) }
    }
}

#[derive(Debug, Clone)]
struct CountingService<S> {
    inner: S,
    count: Arc<AtomicUsize>,
}

impl<S: tower_service::Service<R>, R> tower_service::Service<R> for CountingService<S> {
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: R) -> Self::Future {
        self.count.fetch_add(1, Ordering::SeqCst);
        self.inner.call(request)
    }
}

/// A server on 127.0.0.1:0 with `config`, behind a [`Counting`] layer; its address, the count,
/// and the stop signal.
async fn serve(config: Config) -> (std::net::SocketAddr, Counting, oneshot::Sender<()>) {
    let (_, backends) = common::fake_backends();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let counting = Counting::default();
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(config.serve_with_layer(backends, listener, counting.clone(), async {
        let _ = stopped.await;
    }));
    (addr, counting, stop)
}

fn with_token(token: Option<&str>) -> impl tonic::service::Interceptor + Clone {
    let value: Option<tonic::metadata::MetadataValue<_>> = token.map(|t| format!("Bearer {t}").parse().unwrap());
    move |mut request: tonic::Request<()>| {
        if let Some(value) = &value {
            request.metadata_mut().insert("authorization", value.clone());
        }
        Ok(request)
    }
}

async fn list(channel: &Channel, token: Option<&str>) -> Result<pb::ListServicesResponse, tonic::Status> {
    let mut client =
        pb::registry_service_client::RegistryServiceClient::with_interceptor(channel.clone(), with_token(token));
    client.list_services(pb::ListServicesRequest::default()).await.map(tonic::Response::into_inner)
}

async fn health(channel: &Channel) -> Result<(), tonic::Status> {
    HealthClient::new(channel.clone()).check(HealthCheckRequest { service: String::new() }).await.map(drop)
}

fn tokens() -> Tokens {
    Tokens::new(vec!["first-token".to_owned(), "s3cret-token".to_owned()]).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_need_a_listed_bearer_token_but_health_does_not() {
    let (addr, counting, stop) = serve(Config { tokens: Some(tokens()), ..Config::default() }).await;
    let channel = Channel::from_shared(format!("http://{addr}")).unwrap().connect().await.unwrap();

    health(&channel).await.unwrap();
    let missing = list(&channel, None).await.unwrap_err();
    assert_eq!(missing.code(), Code::Unauthenticated, "{missing:?}");
    let wrong = list(&channel, Some("s3cret-tokem")).await.unwrap_err();
    assert_eq!(wrong.code(), Code::Unauthenticated, "{wrong:?}");
    assert!(!wrong.message().contains("s3cret"), "{wrong:?}");
    list(&channel, Some("s3cret-token")).await.unwrap();
    list(&channel, Some("first-token")).await.unwrap();
    // The caller's layer saw every call, refused ones included.
    assert_eq!(counting.0.load(Ordering::SeqCst), 5);
    stop.send(()).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_over_the_rate_is_refused_on_that_connection_only_and_it_recovers() {
    let connections = Connections { rate_limit: NonZeroU32::new(10), ..Connections::default() };
    let (addr, _, stop) = serve(Config { connections, ..Config::default() }).await;
    let connect = || async { Endpoint::from_shared(format!("http://{addr}")).unwrap().connect().await.unwrap() };
    let busy = connect().await;
    let mut refused = 0;
    for _ in 0..30 {
        match list(&busy, None).await {
            Ok(_) => {}
            Err(status) => {
                assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
                refused += 1;
            }
        }
    }
    assert!(refused >= 5, "{refused} of 30 refused");
    // Another connection has its own bucket.
    let other = connect().await;
    list(&other, None).await.unwrap();
    // The refused connection is still open and works again once tokens have refilled.
    let deadline = Instant::now() + Duration::from_secs(5);
    while list(&busy, None).await.is_err() {
        assert!(Instant::now() < deadline, "the connection did not recover");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.send(()).unwrap();
}

/// A CA, a server certificate for `localhost` and 127.0.0.1, and a client certificate: PEMs.
struct Pki {
    ca: String,
    server: (String, String),
    client: (String, String),
}

fn pki() -> Pki {
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    ca.distinguished_name.push(DnType::CommonName, "baton test CA");
    let ca = CertifiedIssuer::self_signed(ca, KeyPair::generate().unwrap()).unwrap();
    let leaf = |names: &[&str], usage| {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>()).unwrap();
        params.extended_key_usages = vec![usage];
        let cert = params.signed_by(&key, &ca).unwrap();
        (cert.pem(), key.serialize_pem())
    };
    Pki {
        ca: ca.pem(),
        server: leaf(&["localhost", "127.0.0.1"], ExtendedKeyUsagePurpose::ServerAuth),
        client: leaf(&["client"], ExtendedKeyUsagePurpose::ClientAuth),
    }
}

async fn tls_channel(addr: std::net::SocketAddr, pki: &Pki, client_cert: bool) -> Result<Channel, String> {
    let mut tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(&pki.ca)).domain_name("localhost");
    if client_cert {
        tls = tls.identity(Identity::from_pem(&pki.client.0, &pki.client.1));
    }
    let endpoint = Endpoint::from_shared(format!("https://{addr}")).unwrap().tls_config(tls).unwrap();
    let channel = endpoint.connect().await.map_err(|e| format!("{e:?}"))?;
    // With TLS 1.3 a refused client certificate shows on the first call, not the handshake.
    health(&channel).await.map_err(|e| format!("{e:?}"))?;
    Ok(channel)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_serves_https_only_and_mutual_tls_asks_for_a_client_certificate() {
    let pki = pki();
    let tls = Tls {
        cert_chain_pem: pki.server.0.clone().into_bytes(),
        key_pem: pki.server.1.clone().into_bytes(),
        client_ca_pem: None,
    };
    assert!(!format!("{tls:?}").contains("PRIVATE KEY"));
    let (addr, _, stop) = serve(Config { tls: Some(tls.clone()), tokens: Some(tokens()), ..Config::default() }).await;
    let channel = tls_channel(addr, &pki, false).await.unwrap();
    assert_eq!(list(&channel, None).await.unwrap_err().code(), Code::Unauthenticated);
    list(&channel, Some("s3cret-token")).await.unwrap();
    // Plain HTTP/2 to a TLS port gets nowhere.
    let plain = match Endpoint::from_shared(format!("http://{addr}")).unwrap().connect().await {
        Ok(channel) => health(&channel).await.map_err(|e| e.to_string()),
        Err(error) => Err(error.to_string()),
    };
    assert!(plain.is_err());
    stop.send(()).unwrap();

    // Mutual TLS, with the rate limit: connections over TLS are told apart too.
    let mutual = Tls { client_ca_pem: Some(pki.ca.clone().into_bytes()), ..tls };
    let connections = Connections { rate_limit: NonZeroU32::new(5), ..Connections::default() };
    let (addr, _, stop) = serve(Config { tls: Some(mutual), connections, ..Config::default() }).await;
    assert!(tls_channel(addr, &pki, false).await.is_err(), "a client without a certificate is refused");
    let channel = tls_channel(addr, &pki, true).await.unwrap();
    list(&channel, None).await.unwrap();
    let mut exhausted = 0;
    for _ in 0..10 {
        if let Err(status) = list(&channel, None).await {
            assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
            exhausted += 1;
        }
    }
    assert!(exhausted >= 1, "{exhausted} of 10 refused");
    stop.send(()).unwrap();
}

#[tokio::test]
async fn a_bad_key_is_an_error_at_start() {
    let (_, backends) = common::fake_backends();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let tls = Tls { cert_chain_pem: b"nope".to_vec(), key_pem: b"nope".to_vec(), client_ca_pem: None };
    let result = Config { tls: Some(tls), ..Config::default() }.serve(backends, listener, std::future::pending()).await;
    let error = result.unwrap_err().to_string();
    assert!(error.starts_with("grpc transport"), "{error}");
}
