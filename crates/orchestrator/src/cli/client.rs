//! The connection to the server: one channel, with the bearer token on every call.

use std::time::Duration;

use baton_grpc::pb;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};

use super::ClientOptions;
use super::input;
use super::outcome::{Failure, chain};

/// How long connecting to the server may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

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
        Ok(Self { server, endpoint: endpoint.connect_timeout(CONNECT_TIMEOUT), auth })
    }

    /// Connects to the server.
    pub(crate) async fn connect(&self) -> Result<Clients, Failure> {
        let channel = self
            .endpoint
            .connect()
            .await
            .map_err(|e| Failure::Connect { server: self.server.clone(), error: chain(&e) })?;
        Ok(Clients { channel, auth: self.auth.clone() })
    }
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

#[cfg(test)]
mod tests {
    use tonic::service::Interceptor as _;

    use super::*;
    use crate::cli::OutputFormat;

    fn options(server: &str) -> ClientOptions {
        ClientOptions { server: server.to_owned(), token_file: None, ca_cert: None, output: OutputFormat::Table }
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
