//! A real `baton serve` process for end-to-end tests: fixed loopback ports (so services and
//! clients find it again after a restart), a temp data dir, `kill -9` and restart.

#![allow(dead_code, reason = "each test file uses the part of the harness it needs")]

pub(crate) mod cluster;

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use baton_grpc::pb;
use tonic::transport::{Channel, ClientTlsConfig, Endpoint};

/// A free loopback port (bound, then released for the server to take).
pub(crate) fn free_addr() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap()
}

/// A `baton serve` child process.
pub(crate) struct ServerProcess {
    child: Option<Child>,
    /// The gRPC address.
    pub(crate) grpc: SocketAddr,
    /// The metrics address.
    pub(crate) metrics: SocketAddr,
    /// The web console's address.
    pub(crate) console: SocketAddr,
    data_dir: PathBuf,
    log: PathBuf,
    extra: Vec<String>,
    /// A program (with its arguments) the server runs under: `<wrapper> baton serve ...`.
    wrapper: Vec<String>,
    /// Environment variables the server is started with.
    env: Vec<(String, String)>,
    /// How the test's clients reach a server that serves TLS.
    tls: Option<ClientTlsConfig>,
    starts: u32,
}

impl ServerProcess {
    /// Starts a server over `data_dir`, with `extra` flags, and waits until it serves.
    pub(crate) async fn start(data_dir: &Path, extra: &[&str]) -> Self {
        Self::launch(&[], data_dir, extra, &[]).await
    }

    /// As [`ServerProcess::start`], with the environment variables `env` set as well.
    pub(crate) async fn start_with_env(data_dir: &Path, extra: &[&str], env: &[(&str, &str)]) -> Self {
        Self::launch(&[], data_dir, extra, env).await
    }

    /// As [`ServerProcess::start`], for a server that serves TLS (`extra` names its certificate):
    /// the test's clients connect with `tls`.
    pub(crate) async fn start_tls(data_dir: &Path, extra: &[&str], tls: ClientTlsConfig) -> Self {
        let mut server = Self::new(&[], data_dir, extra, &[]);
        server.tls = Some(tls);
        server.spawn().await;
        server
    }

    /// [`ServerProcess::start`], the server run by `wrapper` (a program and its arguments,
    /// followed by the server's command line), which must end by running it in its place.
    pub(crate) async fn start_under(wrapper: &[&str], data_dir: &Path, extra: &[&str]) -> Self {
        Self::launch(wrapper, data_dir, extra, &[]).await
    }

    async fn launch(wrapper: &[&str], data_dir: &Path, extra: &[&str], env: &[(&str, &str)]) -> Self {
        let mut server = Self::new(wrapper, data_dir, extra, env);
        server.spawn().await;
        server
    }

    fn new(wrapper: &[&str], data_dir: &Path, extra: &[&str], env: &[(&str, &str)]) -> Self {
        Self {
            child: None,
            grpc: free_addr(),
            metrics: free_addr(),
            console: free_addr(),
            data_dir: data_dir.to_owned(),
            log: data_dir.with_extension("log"),
            extra: extra.iter().map(|s| (*s).to_owned()).collect(),
            wrapper: wrapper.iter().map(|s| (*s).to_owned()).collect(),
            env: env.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect(),
            tls: None,
            starts: 0,
        }
    }

    async fn spawn(&mut self) {
        self.starts += 1;
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&self.log).unwrap();
        let mut command = match self.wrapper.split_first() {
            Some((program, args)) => {
                let mut command = Command::new(program);
                command.args(args).arg(env!("CARGO_BIN_EXE_baton"));
                command
            }
            None => Command::new(env!("CARGO_BIN_EXE_baton")),
        };
        let child = command
            .arg("serve")
            .arg("--listen")
            .arg(self.grpc.to_string())
            .arg("--metrics-listen")
            .arg(self.metrics.to_string())
            .args(if self.extra.iter().any(|a| a == "--console-listen") {
                Vec::new()
            } else {
                vec!["--console-listen".to_owned(), self.console.to_string()]
            })
            .arg("--data-dir")
            .arg(&self.data_dir)
            .args(&self.extra)
            .env_remove("BATON_CONFIG")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("the baton binary starts");
        self.child = Some(child);
        self.wait_serving().await;
    }

    /// Waits until the health service answers SERVING.
    pub(crate) async fn wait_serving(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().unwrap()) {
                panic!("baton serve exited with {status}; log:\n{}", self.log_text());
            }
            if let Ok(channel) = self.endpoint().connect().await {
                let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
                let request = tonic_health::pb::HealthCheckRequest { service: String::new() };
                if let Ok(answer) = health.check(request).await
                    && answer.into_inner().status
                        == tonic_health::pb::health_check_response::ServingStatus::Serving as i32
                {
                    return;
                }
            }
            assert!(Instant::now() < deadline, "baton serve did not serve within 30 s; log:\n{}", self.log_text());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The server's log so far.
    pub(crate) fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// `kill -9`: no shutdown, no flush.
    pub(crate) fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().expect("SIGKILL is delivered");
            child.wait().unwrap();
        }
    }

    /// Starts the server again over the same data dir and ports.
    pub(crate) async fn restart(&mut self) {
        assert!(self.child.is_none(), "restart after kill9 or stop");
        self.spawn().await;
    }

    /// SIGTERM, then waits for the exit; the exit status.
    pub(crate) fn terminate(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("a running server");
        let status = Command::new("kill").arg("-TERM").arg(child.id().to_string()).status().unwrap();
        assert!(status.success());
        child.wait().unwrap()
    }

    /// SIGTERM; the exit status once the server has exited, within `within` or a panic.
    pub(crate) async fn terminate_within(&mut self, within: Duration) -> std::process::ExitStatus {
        let child = self.child.as_mut().expect("a running server");
        let status = Command::new("kill").arg("-TERM").arg(child.id().to_string()).status().unwrap();
        assert!(status.success());
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                self.child = None;
                return status;
            }
            assert!(Instant::now() < deadline, "baton serve did not exit within {within:?} of SIGTERM");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The server's process id.
    pub(crate) fn pid(&self) -> u32 {
        self.child.as_ref().expect("a running server").id()
    }

    /// A channel to the gRPC API.
    pub(crate) async fn channel(&self) -> Channel {
        self.endpoint().connect().await.unwrap()
    }

    /// The gRPC API's endpoint, with the client's TLS settings when the server serves TLS.
    fn endpoint(&self) -> Endpoint {
        let endpoint = Endpoint::from_shared(self.url()).unwrap();
        match &self.tls {
            Some(tls) => endpoint.tls_config(tls.clone()).unwrap(),
            None => endpoint,
        }
    }

    /// The URL services register with.
    pub(crate) fn url(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://{}", self.grpc)
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// A client of every service, on one channel.
#[derive(Clone)]
pub(crate) struct Clients {
    /// Registry.
    pub(crate) registry: pb::registry_service_client::RegistryServiceClient<Channel>,
    /// Workflows.
    pub(crate) workflows: pb::workflow_service_client::WorkflowServiceClient<Channel>,
    /// Executions.
    pub(crate) executions: pb::execution_service_client::ExecutionServiceClient<Channel>,
}

/// The example shop registered with `server` (answering after `latency`, with a 600 ms TTL so
/// that after a restart, whose registry starts empty, services are back within a heartbeat),
/// and clients that have waited for its three services and applied `pipeline.yaml`.
pub(crate) async fn shop_with_pipeline(
    server: &ServerProcess,
    latency: Duration,
) -> (Vec<baton_examples::RunningService>, Clients) {
    shop_with_pipeline_and(server, baton_examples::ServiceOptions { latency, ..Default::default() }).await
}

/// [`shop_with_pipeline`] with the services' other options (faults, seed) as given.
pub(crate) async fn shop_with_pipeline_and(
    server: &ServerProcess,
    options: baton_examples::ServiceOptions,
) -> (Vec<baton_examples::RunningService>, Clients) {
    let options =
        baton_examples::ServiceOptions { baton: Some(server.url()), ttl: Duration::from_millis(600), ..options };
    let services = baton_examples::spawn_shop(&options).await.unwrap();
    let mut clients = Clients::new(server.channel().await);
    clients.wait_services(3).await;
    clients.apply(&example("pipeline.yaml")).await;
    (services, clients)
}

impl Clients {
    /// Clients over `channel`.
    pub(crate) fn new(channel: Channel) -> Self {
        Self {
            registry: pb::registry_service_client::RegistryServiceClient::new(channel.clone()),
            workflows: pb::workflow_service_client::WorkflowServiceClient::new(channel.clone()),
            executions: pb::execution_service_client::ExecutionServiceClient::new(channel),
        }
    }

    /// Applies a YAML definition; its version.
    pub(crate) async fn apply(&mut self, yaml: &str) -> u32 {
        let applied = self
            .workflows
            .apply_definition(pb::ApplyDefinitionRequest {
                source: yaml.to_owned(),
                format: pb::DefinitionFormat::Yaml as i32,
            })
            .await
            .unwrap()
            .into_inner();
        applied.definition.unwrap().version
    }

    /// Waits until `count` services are registered and passing.
    pub(crate) async fn wait_services(&mut self, count: usize) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let listed = self
                .registry
                .list_services(pb::ListServicesRequest::default())
                .await
                .map(|r| r.into_inner().services.len())
                .unwrap_or(0);
            if listed >= count {
                return;
            }
            assert!(Instant::now() < deadline, "{listed} of {count} services registered after 30 s");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until each of `ids` has finished, within `within` for all of them, and checks that
    /// each completed; a timeout shows the server's log.
    pub(crate) async fn all_completed(
        &mut self,
        ids: impl IntoIterator<Item = &String>,
        within: Duration,
        server: &ServerProcess,
    ) {
        let finish = async {
            for id in ids {
                let execution = self.finished(id).await;
                assert_eq!(
                    pb::ExecutionState::try_from(execution.state).unwrap(),
                    pb::ExecutionState::Completed,
                    "execution {id}: {:?}",
                    execution.error
                );
            }
        };
        tokio::time::timeout(within, finish)
            .await
            .unwrap_or_else(|_| panic!("not every execution completed within {within:?}\n{}", server.log_text()));
    }

    /// The execution once it has finished, watching it to its end.
    pub(crate) async fn finished(&mut self, id: &str) -> pb::Execution {
        loop {
            let execution = self
                .executions
                .get_execution(pb::GetExecutionRequest { id: id.to_owned() })
                .await
                .unwrap()
                .into_inner()
                .execution
                .unwrap();
            let state = pb::ExecutionState::try_from(execution.state).unwrap();
            if matches!(
                state,
                pb::ExecutionState::Completed | pb::ExecutionState::Failed | pb::ExecutionState::Cancelled
            ) {
                return execution;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// A one-step workflow that needs no service, for tests about the API rather than the calls.
pub(crate) const TICK: &str =
    "name: tick\nsteps:\n  - { id: done, set: \"ok\" }\noutput: \"${ .steps.done.output }\"\n";

/// Waits until `expected` executions have completed, within `within`; fails on more. An
/// execution's record is written after its journal, which watchers read, so a client that saw
/// every terminal event may still find the last few records a moment behind.
pub(crate) async fn wait_completed(channel: &Channel, expected: usize, within: Duration) {
    let mut executions = pb::execution_service_client::ExecutionServiceClient::new(channel.clone());
    let deadline = Instant::now() + within;
    loop {
        let (mut completed, mut token) = (0, String::new());
        loop {
            let request = pb::ListExecutionsRequest {
                states: vec![pb::ExecutionState::Completed as i32],
                page_size: 1_000,
                page_token: token,
                ..Default::default()
            };
            let page = executions.list_executions(request).await.unwrap().into_inner();
            completed += page.executions.len();
            if page.next_page_token.is_empty() {
                break;
            }
            token = page.next_page_token;
        }
        if completed == expected {
            return;
        }
        assert!(completed < expected && Instant::now() < deadline, "{completed} of {expected} executions completed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The metrics page, over plain HTTP/1.1.
pub(crate) async fn scrape(addr: SocketAddr) -> String {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!("GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_string(&mut response)).await.unwrap().unwrap();
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    response
}

/// The value of the sample `name` (with its labels, if any) in a metrics page.
pub(crate) fn sample(text: &str, name: &str) -> Option<f64> {
    text.lines().find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

/// The example shop's workflows.
pub(crate) fn example(name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/workflows").join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Starts `baton serve` with `extra` and waits for it to exit (it must, within 30 s); its
/// standard error.
pub(crate) async fn refused(dir: &std::path::Path, extra: &[&str]) -> String {
    let mut server = Command::new(env!("CARGO_BIN_EXE_baton"))
        .args(["serve", "--listen", &free_addr().to_string()])
        .args(["--metrics-listen", &free_addr().to_string(), "--console-listen", &free_addr().to_string()])
        .arg("--data-dir")
        .arg(dir)
        .args(extra)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = server.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            server.kill().unwrap();
            panic!("a server started on a database it should have been refused: {extra:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut server.stderr.take().unwrap(), &mut stderr).unwrap();
    assert!(!status.success(), "{stderr}");
    stderr
}
