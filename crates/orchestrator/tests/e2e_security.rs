//! Security defaults end to end: a real `baton serve` with TLS (a CA and server certificate made
//! for the test) and a bearer token file; clients without TLS, without a token and with a wrong
//! one are refused, the right token and the CLI with `--ca-cert` get through, the refusals are
//! counted on the metrics page, link-local endpoints are refused, and a public address without
//! TLS does not start.

mod support;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use baton_grpc::pb;
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair};
use support::{free_addr, sample, scrape};
use tonic::Code;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

const TOKEN: &str = "e2e-s3cret-token";

/// The files a TLS server and its clients need, in a temp dir.
struct Secrets {
    _dir: tempfile::TempDir,
    ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
    /// The server's token file: comments, a blank line and two tokens.
    tokens: PathBuf,
    /// A client's token file holding [`TOKEN`].
    token: PathBuf,
    /// A client's token file holding a wrong token.
    wrong: PathBuf,
    data: PathBuf,
}

/// A throwaway CA and a server certificate for `localhost` and 127.0.0.1 signed by it.
fn secrets() -> Secrets {
    let dir = tempfile::tempdir().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign, rcgen::KeyUsagePurpose::DigitalSignature];
    ca.distinguished_name.push(DnType::CommonName, "baton e2e CA");
    let ca = CertifiedIssuer::self_signed(ca, KeyPair::generate().unwrap()).unwrap();
    let key = KeyPair::generate().unwrap();
    let mut server = CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()]).unwrap();
    server.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let cert = server.signed_by(&key, &ca).unwrap();
    let write = |name: &str, text: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path
    };
    Secrets {
        ca: write("ca.pem", &ca.pem()),
        cert: write("server.pem", &cert.pem()),
        key: write("server.key", &key.serialize_pem()),
        tokens: write("tokens", &format!("# baton e2e tokens\n\nanother-token\n{TOKEN}\n")),
        token: write("token", &format!("{TOKEN}\n")),
        wrong: write("wrong", "not-the-token\n"),
        data: dir.path().join("data"),
        _dir: dir,
    }
}

/// A `baton serve` child process over TLS; killed when dropped.
struct TlsServer {
    child: Child,
    grpc: SocketAddr,
    metrics: SocketAddr,
    log: PathBuf,
}

impl Drop for TlsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl TlsServer {
    /// Starts `baton serve` with TLS and the token file, plus `extra`, and waits until its
    /// health service answers SERVING over TLS (health needs no token).
    async fn start(secrets: &Secrets, extra: &[&str]) -> Self {
        let (grpc, metrics) = (free_addr(), free_addr());
        let log = secrets.data.with_extension("log");
        let child = Command::new(env!("CARGO_BIN_EXE_baton"))
            .arg("serve")
            .args(["--listen", &grpc.to_string(), "--metrics-listen", &metrics.to_string()])
            .args(["--console-listen", "127.0.0.1:0"])
            .arg("--data-dir")
            .arg(&secrets.data)
            .arg("--tls-cert")
            .arg(&secrets.cert)
            .arg("--tls-key")
            .arg(&secrets.key)
            .arg("--auth-token-file")
            .arg(&secrets.tokens)
            .args(extra)
            .env_remove("BATON_CONFIG")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let mut server = Self { child, grpc, metrics, log };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = server.child.try_wait().unwrap() {
                panic!("baton serve exited with {status}; log:\n{}", server.log_text());
            }
            if let Ok(channel) = server.channel(&secrets.ca).await {
                let request = HealthCheckRequest { service: String::new() };
                if let Ok(answer) = HealthClient::new(channel).check(request).await
                    && answer.into_inner().status
                        == tonic_health::pb::health_check_response::ServingStatus::Serving as i32
                {
                    return server;
                }
            }
            assert!(Instant::now() < deadline, "no TLS health within 30 s; log:\n{}", server.log_text());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn url(&self) -> String {
        format!("https://{}", self.grpc)
    }

    /// A TLS channel trusting `ca`.
    async fn channel(&self, ca: &Path) -> Result<Channel, tonic::transport::Error> {
        let tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(std::fs::read(ca).unwrap()));
        Endpoint::from_shared(self.url()).unwrap().tls_config(tls)?.connect().await
    }
}

/// `ListServices` with `authorization: Bearer <token>` when given.
async fn list(channel: &Channel, token: Option<&str>) -> Result<pb::ListServicesResponse, tonic::Status> {
    let mut request = tonic::Request::new(pb::ListServicesRequest::default());
    if let Some(token) = token {
        request.metadata_mut().insert("authorization", format!("Bearer {token}").parse().unwrap());
    }
    let mut client = pb::registry_service_client::RegistryServiceClient::new(channel.clone());
    client.list_services(request).await.map(tonic::Response::into_inner)
}

/// Runs the CLI (blocking) off the runtime.
async fn cli(args: Vec<String>) -> Output {
    tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_baton"))
            .args(&args)
            .env_remove("BATON_SERVER")
            .env_remove("BATON_TOKEN_FILE")
            .env_remove("BATON_CA_CERT")
            .output()
            .unwrap()
    })
    .await
    .unwrap()
}

fn text(output: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_and_tokens_let_only_the_right_clients_in_and_count_the_rest() {
    let secrets = secrets();
    let server = TlsServer::start(&secrets, &[]).await;

    // Plain HTTP/2 to the TLS port gets no answer.
    let plain = match Endpoint::from_shared(format!("http://{}", server.grpc)).unwrap().connect().await {
        Ok(channel) => list(&channel, Some(TOKEN)).await.map(drop),
        Err(error) => Err(tonic::Status::unavailable(error.to_string())),
    };
    assert!(plain.is_err(), "a plaintext client got an answer");
    // TLS without trusting the CA fails the handshake.
    let untrusted = Endpoint::from_shared(server.url()).unwrap().tls_config(ClientTlsConfig::new()).unwrap();
    let untrusted = match untrusted.connect().await {
        Ok(channel) => list(&channel, Some(TOKEN)).await.map(drop),
        Err(error) => Err(tonic::Status::unavailable(error.to_string())),
    };
    assert!(untrusted.is_err(), "a client that does not trust the CA got an answer");

    let channel = server.channel(&secrets.ca).await.unwrap();
    let missing = list(&channel, None).await.unwrap_err();
    assert_eq!(missing.code(), Code::Unauthenticated, "{missing:?}");
    let wrong = list(&channel, Some("e2e-s3cret-tokem")).await.unwrap_err();
    assert_eq!(wrong.code(), Code::Unauthenticated, "{wrong:?}");
    assert!(!wrong.message().contains("tokem"), "the refusal echoes the token: {wrong:?}");
    list(&channel, Some(TOKEN)).await.unwrap();
    list(&channel, Some("another-token")).await.unwrap();

    // The CLI over TLS: with the CA and the token it works; with a wrong token it exits 1
    // naming UNAUTHENTICATED; without --ca-cert it is a usage error.
    let base = |token: &Path| -> Vec<String> {
        vec![
            "--server".to_owned(),
            server.url(),
            "--ca-cert".to_owned(),
            secrets.ca.display().to_string(),
            "--token-file".to_owned(),
            token.display().to_string(),
        ]
    };
    let mut args = base(&secrets.token);
    args.extend(["--output", "json", "service", "list"].map(str::to_owned));
    let listed = cli(args).await;
    assert_eq!(listed.status.code(), Some(0), "{}", text(&listed));
    let mut args = base(&secrets.wrong);
    args.extend(["service", "list"].map(str::to_owned));
    let refused = cli(args).await;
    assert_eq!(refused.status.code(), Some(1), "{}", text(&refused));
    assert!(text(&refused).contains("UNAUTHENTICATED"), "{}", text(&refused));
    assert!(!text(&refused).contains("not-the-token"), "{}", text(&refused));
    let no_ca = cli(vec!["--server".to_owned(), server.url(), "service".to_owned(), "list".to_owned()]).await;
    assert_eq!(no_ca.status.code(), Some(2), "{}", text(&no_ca));

    // Registering a service on the cloud metadata address is refused, naming the field.
    let mut register = tonic::Request::new(pb::RegisterRequest {
        spec: Some(pb::ServiceSpec {
            id: "imds".to_owned(),
            endpoint: Some(pb::Endpoint {
                kind: Some(pb::endpoint::Kind::Http(pb::endpoint::Http {
                    url: "http://169.254.169.254/latest/meta-data/".to_owned(),
                })),
            }),
            capabilities: vec!["steal".to_owned()],
            ..pb::ServiceSpec::default()
        }),
    });
    register.metadata_mut().insert("authorization", format!("Bearer {TOKEN}").parse().unwrap());
    let mut registry = pb::registry_service_client::RegistryServiceClient::new(channel.clone());
    let refused = registry.register(register).await.unwrap_err();
    assert_eq!(refused.code(), Code::InvalidArgument, "{refused:?}");
    assert!(refused.message().contains("endpoint.url"), "{refused:?}");

    // Three calls were refused as UNAUTHENTICATED: two here, one by the CLI.
    let page = scrape(server.metrics).await;
    assert_eq!(sample(&page, "baton_grpc_unauthenticated_total"), Some(3.0), "{page}");
    assert!(
        page.lines().any(|l| l.starts_with(
            r#"baton_grpc_requests_total{method="/baton.v1.RegistryService/ListServices",code="UNAUTHENTICATED"} 3"#
        )),
        "{page}"
    );

    // The log says what is on and shows no secret.
    let log = server.log_text();
    assert!(log.contains("gRPC security: TLS, bearer tokens required"), "{log}");
    assert!(!log.contains(TOKEN) && !log.contains("PRIVATE KEY"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsafe_or_broken_settings_stop_the_start_with_a_message() {
    let secrets = secrets();
    let serve = |args: Vec<String>| async move {
        tokio::task::spawn_blocking(move || {
            Command::new(env!("CARGO_BIN_EXE_baton"))
                .arg("serve")
                .args(["--metrics-listen", "127.0.0.1:0", "--console-listen", "127.0.0.1:0"])
                .args(&args)
                .env_remove("BATON_CONFIG")
                .output()
                .unwrap()
        })
        .await
        .unwrap()
    };
    let data = secrets.data.display().to_string();

    // A public address without TLS is a configuration error: exit 2, before binding.
    let public = serve(vec!["--listen".into(), "0.0.0.0:0".into(), "--data-dir".into(), data.clone()]).await;
    assert_eq!(public.status.code(), Some(2), "{}", text(&public));
    assert!(text(&public).contains("--tls-cert"), "{}", text(&public));

    // A token file with no token, or one that is missing, stops the start and says why.
    let empty = secrets.data.with_extension("empty");
    std::fs::write(&empty, "# nothing yet\n\n").unwrap();
    let listen = free_addr().to_string();
    let base = |tokens: &Path| {
        vec![
            "--listen".to_owned(),
            listen.clone(),
            "--data-dir".to_owned(),
            data.clone(),
            "--auth-token-file".to_owned(),
            tokens.display().to_string(),
        ]
    };
    let no_tokens = serve(base(&empty)).await;
    assert_eq!(no_tokens.status.code(), Some(1), "{}", text(&no_tokens));
    assert!(text(&no_tokens).contains("no tokens"), "{}", text(&no_tokens));
    let missing = serve(base(&secrets.data.with_extension("absent"))).await;
    assert_eq!(missing.status.code(), Some(1), "{}", text(&missing));
    assert!(text(&missing).contains("cannot read auth_token_file"), "{}", text(&missing));
}
