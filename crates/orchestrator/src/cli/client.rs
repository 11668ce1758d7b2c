//! The connection to the server: one channel, with the bearer token on every call, bounded in
//! time by `--connect-timeout` and `--timeout`, and the explanation of a failure that says
//! more than the transport does (a server that never answers, one that speaks HTTP/1).

use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use baton_grpc::pb;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};

use super::ClientOptions;
use super::input;
use super::outcome::{Failure, chain};

/// Adds `authorization: Bearer <token>` to every call when a token file was given.
#[derive(Clone)]
pub(crate) struct Auth(Option<MetadataValue<Ascii>>);

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the token.
        f.debug_tuple("Auth").field(&self.0.as_ref().map(|_| "Bearer ***")).finish()
    }
}

impl tonic::service::Interceptor for Auth {
    fn call(&mut self, mut request: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(value) = &self.0 {
            request.metadata_mut().insert("authorization", value.clone());
        }
        Ok(request)
    }
}

/// TLS trusting the CA certificates in the PEM file at `path`; the server's name is checked
/// against the host of the `--server` URL.
fn tls(path: &std::path::Path) -> Result<ClientTlsConfig, Failure> {
    let pem =
        std::fs::read(path).map_err(|e| Failure::Usage(format!("--ca-cert: cannot read {}: {e}", path.display())))?;
    if !pem.windows(27).any(|window| window == b"-----BEGIN CERTIFICATE-----") {
        return Err(Failure::Usage(format!("--ca-cert {}: holds no PEM certificate", path.display())));
    }
    Ok(ClientTlsConfig::new().ca_certificate(Certificate::from_pem(pem)))
}

/// A checked server address and credentials, not yet connected.
#[derive(Debug, Clone)]
pub(crate) struct Target {
    server: String,
    endpoint: Endpoint,
    auth: Auth,
    connect_timeout: Duration,
    timeout: Duration,
}

impl Target {
    /// Checks the options (URL, TLS, token file) without touching the network.
    pub(crate) fn new(options: &ClientOptions) -> Result<Self, Failure> {
        let server = options.server.trim().to_owned();
        let endpoint = Endpoint::from_shared(server.clone())
            .map_err(|e| Failure::Usage(format!("--server: {server:?} is not a valid URL: {e}")))?;
        let endpoint = match (endpoint.uri().scheme_str(), &options.ca_cert) {
            (Some("http"), None) => endpoint,
            (Some("http"), Some(_)) => {
                return Err(Failure::Usage(format!(
                    "--ca-cert: {server} is plain http; use an https:// URL to connect over TLS"
                )));
            }
            (Some("https"), Some(path)) => endpoint.tls_config(tls(path)?).map_err(|e| {
                Failure::Usage(format!("--ca-cert {}: cannot set up TLS: {}", path.display(), chain(&e)))
            })?,
            (Some("https"), None) => {
                return Err(Failure::Usage(format!(
                    "--server: {server} is https and needs --ca-cert, the CA certificate (PEM) the server's \
                     certificate chains to (this build trusts no system roots)"
                )));
            }
            _ => return Err(Failure::Usage(format!("--server: {server:?} must be an http:// or https:// URL"))),
        };
        let auth = match &options.token_file {
            None => Auth(None),
            Some(path) => {
                let text = input::read_text(path).map_err(|e| Failure::Usage(format!("--token-file: {e}")))?;
                let value = input::bearer(&text)
                    .map_err(|e| Failure::Usage(format!("--token-file {}: {e}", path.display())))?;
                Auth(Some(value))
            }
        };
        Ok(Self {
            server,
            endpoint: endpoint.connect_timeout(options.connect_timeout),
            auth,
            connect_timeout: options.connect_timeout,
            timeout: options.timeout,
        })
    }

    /// How long a call may wait for its answer (`--timeout`).
    pub(crate) fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Connects to the server; each call may then wait `--timeout` for its answer.
    pub(crate) async fn connect(&self) -> Result<Clients, Failure> {
        self.connect_waiting(Duration::ZERO).await
    }

    /// Connects to the server for calls that may wait `wait` longer than `--timeout`, because
    /// the server waits that long before it answers.
    pub(crate) async fn connect_waiting(&self, wait: Duration) -> Result<Clients, Failure> {
        let endpoint = self.endpoint.clone().timeout(self.timeout.saturating_add(wait));
        let connecting = tokio::time::timeout(self.connect_timeout, endpoint.connect());
        let channel = match connecting.await {
            Ok(Ok(channel)) => channel,
            // The endpoint's own connect timeout (the same `--connect-timeout`, kept for the
            // channel's reconnects) may fire first, as a `TimedOut` in the error's chain.
            Ok(Err(e)) if timed_out_connecting(&e) => return Err(self.connect_timed_out()),
            Ok(Err(e)) => return Err(Failure::Connect { server: self.server.clone(), error: chain(&e) }),
            Err(_) => return Err(self.connect_timed_out()),
        };
        Ok(Clients { channel, auth: self.auth.clone() })
    }

    fn connect_timed_out(&self) -> Failure {
        Failure::Connect {
            server: self.server.clone(),
            error: format!(
                "no connection within {} (--connect-timeout)",
                baton_core::duration::format(self.connect_timeout)
            ),
        }
    }

    /// `failure` said in terms a user can act on, when the transport's words are not: a call
    /// that timed out, a connection that timed out, or a peer that does not speak HTTP/2 (an
    /// HTTP/1 server answers the HTTP/2 preface with an HTTP/1 response, which the client
    /// reports only as a protocol error).
    pub(crate) async fn explain(&self, failure: Failure) -> Failure {
        let transport: bool = match &failure {
            Failure::Rpc(status) if timed_out(status) => {
                return Failure::NoAnswer { server: self.server.clone(), within: self.timeout };
            }
            Failure::Connect { error, .. } if error.contains("timed out") => return self.connect_timed_out(),
            // An HTTP/2 server that is not gRPC (the web console) answers without a gRPC status.
            Failure::Rpc(status) if status.message().starts_with(NO_GRPC_STATUS) => {
                let code = status.message()[NO_GRPC_STATUS.len()..].trim().to_owned();
                return Failure::NotGrpc { server: self.server.clone(), answer: format!("HTTP {code}"), http2: true };
            }
            // What the transport reports of a peer that is not an HTTP/2 server: a cancelled
            // call, a closed connection, a protocol error.
            Failure::Rpc(status) => matches!(
                status.code(),
                tonic::Code::Cancelled | tonic::Code::Unavailable | tonic::Code::Unknown | tonic::Code::Internal
            ),
            Failure::Connect { .. } => true,
            Failure::Usage(_) | Failure::Other(_) | Failure::NoAnswer { .. } | Failure::NotGrpc { .. } => false,
        };
        if !transport {
            return failure;
        }
        match self.http1_answer().await {
            Some(answer) => Failure::NotGrpc { server: self.server.clone(), answer, http2: false },
            None => failure,
        }
    }

    /// The first line the server answers the HTTP/2 preface with, when it is an HTTP/1 status
    /// line. Only for plain `http://` servers: over TLS the protocol is agreed by ALPN.
    async fn http1_answer(&self) -> Option<String> {
        let uri = self.endpoint.uri();
        if uri.scheme_str() != Some("http") {
            return None;
        }
        let address = format!("{}:{}", uri.host()?.trim_matches(['[', ']']), uri.port_u16().unwrap_or(80));
        let probe = async {
            let mut stream = tokio::net::TcpStream::connect(address).await.ok()?;
            // The client preface and an empty SETTINGS frame, as an HTTP/2 client opens with.
            stream.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00").await.ok()?;
            let mut answer = [0; 256];
            let read = stream.read(&mut answer).await.ok()?;
            let text = String::from_utf8_lossy(&answer[..read]).into_owned();
            let line = text.lines().next()?.trim().to_owned();
            line.starts_with("HTTP/1.").then_some(line)
        };
        tokio::time::timeout(self.connect_timeout.min(self.timeout), probe).await.ok().flatten()
    }
}

/// How tonic words a response without a gRPC status, before the HTTP status code.
const NO_GRPC_STATUS: &str = "grpc-status header missing, mapped from HTTP status code ";

/// Whether `status` is the client's own timeout of the call (`--timeout`), not the server's.
pub(crate) fn timed_out(status: &tonic::Status) -> bool {
    let mut source = std::error::Error::source(status);
    while let Some(error) = source {
        if error.is::<tonic::TimeoutExpired>() {
            return true;
        }
        source = error.source();
    }
    status.code() == tonic::Code::Cancelled && status.message() == tonic::TimeoutExpired(()).to_string()
}

/// A channel with its credentials, as typed clients.
#[derive(Debug, Clone)]
pub(crate) struct Clients {
    channel: Channel,
    auth: Auth,
}

/// The transport every client uses.
type Authed = InterceptedService<Channel, Auth>;

impl Clients {
    /// `baton.v1.RegistryService`.
    pub(crate) fn registry(&self) -> pb::registry_service_client::RegistryServiceClient<Authed> {
        pb::registry_service_client::RegistryServiceClient::with_interceptor(self.channel.clone(), self.auth.clone())
    }

    /// `baton.v1.WorkflowService`.
    pub(crate) fn workflow(&self) -> pb::workflow_service_client::WorkflowServiceClient<Authed> {
        pb::workflow_service_client::WorkflowServiceClient::with_interceptor(self.channel.clone(), self.auth.clone())
    }

    /// `baton.v1.ExecutionService`.
    pub(crate) fn execution(&self) -> pb::execution_service_client::ExecutionServiceClient<Authed> {
        pb::execution_service_client::ExecutionServiceClient::with_interceptor(self.channel.clone(), self.auth.clone())
    }

    /// `baton.v1.PlannerService`.
    pub(crate) fn planner(&self) -> pb::planner_service_client::PlannerServiceClient<Authed> {
        pb::planner_service_client::PlannerServiceClient::with_interceptor(self.channel.clone(), self.auth.clone())
    }

    /// `baton.v1.OrchestratorService`.
    pub(crate) fn orchestrator(&self) -> pb::orchestrator_service_client::OrchestratorServiceClient<Authed> {
        pb::orchestrator_service_client::OrchestratorServiceClient::with_interceptor(
            self.channel.clone(),
            self.auth.clone(),
        )
    }
}

/// Whether connecting failed because the TCP connection was not made in time.
fn timed_out_connecting(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut cause = Some(error);
    while let Some(error) = cause {
        if error.downcast_ref::<std::io::Error>().is_some_and(|e| e.kind() == std::io::ErrorKind::TimedOut) {
            return true;
        }
        cause = error.source();
    }
    false
}

#[cfg(test)]
mod tests {
    use tonic::service::Interceptor as _;

    use super::*;
    use crate::cli::OutputFormat;

    fn options(server: &str) -> ClientOptions {
        ClientOptions {
            server: server.to_owned(),
            token_file: None,
            ca_cert: None,
            output: OutputFormat::Table,
            connect_timeout: Duration::from_secs(5),
            timeout: Duration::from_secs(30),
        }
    }

    fn usage(result: Result<Target, Failure>) -> String {
        match result {
            Err(Failure::Usage(message)) => message,
            other => panic!("expected a usage error, got {other:?}"),
        }
    }

    #[test]
    fn servers_are_http_or_https_with_a_ca_certificate() {
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca.pem");
        std::fs::write(&ca, "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n").unwrap();
        let not_pem = dir.path().join("ca.txt");
        std::fs::write(&not_pem, "hello").unwrap();
        let with_ca =
            |server: &str, path: &std::path::Path| ClientOptions { ca_cert: Some(path.to_owned()), ..options(server) };

        assert!(Target::new(&options("http://127.0.0.1:50051")).is_ok());
        assert!(Target::new(&with_ca("https://baton.example:443", &ca)).is_ok());
        assert!(usage(Target::new(&options("https://baton.example:443"))).contains("needs --ca-cert"));
        assert!(usage(Target::new(&with_ca("http://x:1", &ca))).starts_with("--ca-cert"));
        assert!(usage(Target::new(&with_ca("https://x:1", &not_pem))).contains("no PEM certificate"));
        assert!(usage(Target::new(&with_ca("https://x:1", &dir.path().join("nope")))).contains("cannot read"));
        assert!(usage(Target::new(&options("not a url"))).starts_with("--server"));
        assert!(usage(Target::new(&options("ftp://x"))).contains("https://"));
    }

    #[test]
    fn the_token_goes_on_every_call_and_never_into_debug_output() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        std::fs::write(&path, "s3cret\n").unwrap();
        let target = Target::new(&ClientOptions { token_file: Some(path), ..options("http://x:1") }).unwrap();
        assert!(!format!("{target:?}").contains("s3cret"));
        let mut auth = target.auth;
        let request = auth.call(tonic::Request::new(())).unwrap();
        assert_eq!(request.metadata().get("authorization").unwrap(), "Bearer s3cret");

        let missing = ClientOptions { token_file: Some(dir.path().join("nope")), ..options("http://x:1") };
        assert!(usage(Target::new(&missing)).starts_with("--token-file: cannot read"));
    }
}
