//! The connection to the server: one channel, with the bearer token on every call.

use std::time::Duration;

use baton_grpc::pb;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};

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
        match endpoint.uri().scheme_str() {
            Some("http") => {}
            Some("https") => {
                return Err(Failure::Usage(format!(
                    "--server: {server} is https, but this build of baton has no TLS client support yet; \
                     use an http URL"
                )));
            }
            _ => return Err(Failure::Usage(format!("--server: {server:?} must be an http:// URL"))),
        }
        if options.ca_cert.is_some() {
            return Err(Failure::Usage("--ca-cert: this build of baton has no TLS client support yet".to_owned()));
        }
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
    fn servers_must_be_plain_http_urls_for_now() {
        assert!(Target::new(&options("http://127.0.0.1:50051")).is_ok());
        assert!(usage(Target::new(&options("https://baton.example:443"))).contains("no TLS client support"));
        assert!(usage(Target::new(&options("not a url"))).starts_with("--server"));
        assert!(usage(Target::new(&options("ftp://x"))).contains("http://"));
        let with_ca = ClientOptions { ca_cert: Some("ca.pem".into()), ..options("http://x:1") };
        assert!(usage(Target::new(&with_ca)).starts_with("--ca-cert"));
    }

    #[test]
    fn the_token_goes_on_every_call_and_never_into_debug_output() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        std::fs::write(&path, "s3cret\n").unwrap();
        let target = Target::new(&ClientOptions { token_file: Some(path), ..options("http://x:1") }).unwrap();
        assert!(!format!("{target:?}").contains("s3cret"));
        let mut auth = target.auth.clone();
        let request = auth.call(tonic::Request::new(())).unwrap();
        assert_eq!(request.metadata().get("authorization").unwrap(), "Bearer s3cret");

        let missing = ClientOptions { token_file: Some(dir.path().join("nope")), ..options("http://x:1") };
        assert!(usage(Target::new(&missing)).starts_with("--token-file: cannot read"));
    }
}
