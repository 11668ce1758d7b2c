//! `baton serve`: the orchestrator behind the gRPC API, with metrics and the web console,
//! until a signal stops it.

use std::future::Future;
use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use baton_grpc::Backends;
use tokio::net::TcpListener;

use crate::config::ServeConfig;
use crate::metrics::{Metrics, serve_metrics};
use crate::orchestrator::{Options, ServiceOrchestrator, StoreChoice};
use crate::sandbox::{Sandbox, SandboxConfig};
use crate::security::{EndpointPolicy, RestrictedDirectory, parse_tokens};
use crate::traces::{Observers, Tracer};

/// Why the server stopped with an error.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServeError {
    /// An address could not be bound.
    #[error("cannot listen on {addr}: {error}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        error: std::io::Error,
    },
    /// A TLS or token file could not be read.
    #[error("cannot read {setting} {path}: {error}")]
    Read {
        /// The setting naming the file.
        setting: &'static str,
        /// The file.
        path: PathBuf,
        /// Why.
        error: std::io::Error,
    },
    /// The services' CA bundle holds no usable certificate.
    #[error("services_ca {path}: {reason}")]
    ServicesCa {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The secrets directory is not a readable directory.
    #[error("secrets_dir {path}: {reason}")]
    SecretsDir {
        /// The directory.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The token file holds no usable token.
    #[error("auth_token_file {path}: {reason}")]
    Tokens {
        /// The file.
        path: PathBuf,
        /// What is wrong (never a token).
        reason: String,
    },
    /// The running program cannot be found, to run expression evaluators.
    #[error("cannot find the running program to evaluate expressions with: {0}")]
    Program(std::io::Error),
    /// The orchestrator would not open (the store, recovery).
    #[error(transparent)]
    Open(#[from] crate::orchestrator::Error),
    /// The gRPC server failed.
    #[error("gRPC server: {0}")]
    Grpc(#[from] baton_grpc::Error),
}

/// A server bound to its addresses, not yet serving: tests bind to port 0 and read the
/// addresses before they connect.
#[derive(Debug)]
pub struct Server {
    config: ServeConfig,
    orchestrator: ServiceOrchestrator,
    grpc: TcpListener,
    grpc_config: baton_grpc::Config,
    metrics: Metrics,
    metrics_listener: TcpListener,
    tracer: Option<Arc<Tracer>>,
    console_listener: TcpListener,
}

impl Server {
    /// Opens the orchestrator (recovering unfinished executions) and binds both addresses.
    pub async fn bind(config: ServeConfig) -> Result<Self, ServeError> {
        // Credentials first: a bad file stops the start before anything is opened.
        let grpc_config = grpc_config(&config)?;
        let grpc = bind(config.listen).await?;
        let metrics_listener = bind(config.metrics_listen).await?;
        let console_listener = bind(config.console_listen).await?;
        let store = match (&config.store, config.cluster(local_addr(&grpc))) {
            (Some(_), Some(cluster)) => StoreChoice::Cluster(cluster),
            (Some(url), None) => StoreChoice::Postgres(url.clone()),
            (None, _) => StoreChoice::Redb(config.data_dir.clone()),
        };
        let http = http_config(&config)?;
        let metrics = Metrics::default();
        let endpoints = EndpointPolicy {
            allow_link_local: config.allow_link_local,
            own: vec![
                ("gRPC", local_addr(&grpc)),
                ("metrics", local_addr(&metrics_listener)),
                ("console", local_addr(&console_listener)),
            ],
        };
        let peers = peer_access(&config, &grpc_config)?;
        let mut options = Options { store, http, endpoints, peers, ..Options::default() };
        let tracer = match &config.otlp_endpoint {
            None => None,
            Some(endpoint) => {
                let otlp = baton_grpc::otlp::OtlpConfig {
                    service_version: env!("CARGO_PKG_VERSION").to_owned(),
                    ..baton_grpc::otlp::OtlpConfig::new(endpoint)
                };
                tracing::info!(%endpoint, "traces: exported over OTLP/gRPC");
                Some(Arc::new(Tracer::new(otlp.spawn()?)))
            }
        };
        let mut observers: Vec<Arc<dyn baton_workflow::Observer>> = vec![Arc::new(metrics.clone())];
        observers.extend(tracer.iter().map(|t| Arc::clone(t) as Arc<dyn baton_workflow::Observer>));
        options.engine.observer = Arc::new(Observers(observers));
        options.engine.max_journal_events = config.max_journal_events;
        options.engine.max_journal_bytes = config.max_journal_mib.saturating_mul(1024 * 1024);
        options.min_free_disk = config.min_free_disk_mib.saturating_mul(1024 * 1024);
        options.redb_cache = usize::try_from(config.store_cache_mib.saturating_mul(1024 * 1024)).unwrap_or(usize::MAX);
        options.engine.retention = Some(config.retention);
        // Expressions run in worker processes that bound themselves, before recovery runs any.
        let sandbox = Sandbox::new(SandboxConfig {
            program: Sandbox::this_program().map_err(ServeError::Program)?,
            workers: config.expression_workers,
            limits: config.expression_limits(),
        });
        options.executor.evaluator = Arc::new(sandbox.clone());
        options.executor.default_attempt_timeout = config.default_attempt_timeout();
        metrics.watch_sandbox(sandbox);
        options.registry_events = crate::orchestrator::RegistryEvents(Arc::new(metrics.activity().clone()));
        let orchestrator = ServiceOrchestrator::open(options).await?;
        metrics.watch(&orchestrator);
        let executor = orchestrator.executor().clone();
        metrics.watch_breakers(move |service| executor.breaker_state(service));
        let recovery = orchestrator.engine().recovery();
        tracing::info!(
            resumed = recovery.resumed.len(),
            paused = recovery.paused.len(),
            finished = recovery.finished.len(),
            failed = recovery.failed.len(),
            "recovered executions"
        );
        for (execution, reason) in &recovery.failed {
            tracing::warn!(%execution, %reason, "execution could not be recovered and is marked failed");
        }
        Ok(Self { config, orchestrator, grpc, grpc_config, metrics, metrics_listener, tracer, console_listener })
    }

    /// The gRPC address bound.
    pub fn grpc_addr(&self) -> SocketAddr {
        self.grpc.local_addr().expect("a bound listener has an address")
    }

    /// The metrics address bound.
    pub fn metrics_addr(&self) -> SocketAddr {
        self.metrics_listener.local_addr().expect("a bound listener has an address")
    }

    /// The web console's address bound.
    pub fn console_addr(&self) -> SocketAddr {
        self.console_listener.local_addr().expect("a bound listener has an address")
    }

    /// The orchestrator served.
    pub fn orchestrator(&self) -> &ServiceOrchestrator {
        &self.orchestrator
    }

    /// Serves until `shutdown` resolves; then stops accepting, gives in-flight requests the
    /// grace period to finish, and stops the health supervisor. Every journal write is
    /// durable when acknowledged, so nothing else needs flushing: executions still running
    /// resume on the next start, their in-flight calls repeated with the same idempotency keys.
    pub async fn serve(self, shutdown: impl Future<Output = ()> + Send + 'static) -> Result<(), ServeError> {
        let (grpc_addr, metrics_addr, console_addr) = (self.grpc_addr(), self.metrics_addr(), self.console_addr());
        let Self { config, orchestrator, grpc, grpc_config, metrics, metrics_listener, tracer, console_listener } =
            self;
        // The demo's services register over the API like any other, once it serves.
        let demo = if config.demo { Some(tokio::spawn(start_demo(orchestrator.clone(), grpc_addr))) } else { None };
        let api = Arc::new(orchestrator.clone());
        let backends = Backends {
            directory: Arc::new(RestrictedDirectory::new(
                orchestrator.directory(),
                EndpointPolicy {
                    allow_link_local: config.allow_link_local,
                    own: vec![("gRPC", grpc_addr), ("metrics", metrics_addr), ("console", console_addr)],
                },
            )),
            planner: Arc::clone(orchestrator.planner()) as Arc<dyn baton_core::Planning>,
            workflows: Arc::clone(&api) as Arc<dyn baton_core::WorkflowCatalog>,
            executions: Arc::clone(&api) as Arc<dyn baton_core::Executions>,
            workers: Arc::clone(&api) as Arc<dyn baton_core::WorkerTasks>,
            orchestrator: api as Arc<dyn baton_core::Orchestrating>,
        };
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let signal = async move {
            shutdown.await;
            // The demo's services deregister while the server still answers.
            if let Some(demo) = demo
                && let Ok(Some((services, notifications))) = demo.await
            {
                for service in services {
                    let _ = service.shutdown().await;
                }
                let _ = notifications.shutdown().await;
            }
            tracing::info!("shutting down: no new requests; in-flight ones have the grace period");
            let _ = stop.send(true);
        };
        let metrics_stop = {
            let mut stopped = stopped.clone();
            async move {
                let _ = stopped.wait_for(|stop| *stop).await;
            }
        };
        let console = console_router(&backends, &grpc_config, &metrics, &orchestrator, stopped.clone());
        let console_stop = {
            let mut stopped = stopped.clone();
            async move {
                let _ = stopped.wait_for(|stop| *stop).await;
            }
        };
        let console_server =
            tokio::spawn(
                async move { axum::serve(console_listener, console).with_graceful_shutdown(console_stop).await },
            );
        let grpc_layer = metrics.grpc_layer();
        let grpc_config =
            baton_grpc::Config { serving: orchestrator.disk().map(crate::disk::DiskWatch::serving), ..grpc_config };
        let metrics_server = tokio::spawn(serve_metrics(metrics_listener, metrics, metrics_stop));
        let server = tokio::spawn(grpc_config.serve_with_layer(backends, grpc, grpc_layer, signal));
        let mut stopped = stopped;
        let _ = stopped.wait_for(|stop| *stop).await;
        match tokio::time::timeout(config.shutdown_grace, server).await {
            Ok(Ok(result)) => result?,
            Ok(Err(join)) => tracing::error!(%join, "the gRPC server task ended abnormally"),
            Err(_) => {
                tracing::warn!(grace = ?config.shutdown_grace, "requests still open after the grace period were cut")
            }
        }
        if let Ok(Err(error)) = metrics_server.await {
            tracing::warn!(%error, "the metrics server failed");
        }
        match tokio::time::timeout(config.shutdown_grace, console_server).await {
            Ok(Ok(Err(error))) => tracing::warn!(%error, "the console server failed"),
            Err(_) => tracing::warn!("console requests still open after the grace period were cut"),
            _ => {}
        }
        orchestrator.shutdown().await;
        // The others take this node's partitions at once, not after its lease.
        orchestrator.leave_cluster().await;
        if let Some(tracer) = tracer {
            tracer.exporter().shutdown(std::time::Duration::from_secs(15)).await;
        }
        tracing::info!("stopped");
        Ok(())
    }
}

/// The address `listener` is bound to.
fn local_addr(listener: &TcpListener) -> SocketAddr {
    listener.local_addr().expect("a bound listener has an address")
}

/// The web console over the same ports as the gRPC services, logging people in with the same
/// tokens.
fn console_router(
    backends: &Backends,
    grpc_config: &baton_grpc::Config,
    metrics: &Metrics,
    orchestrator: &ServiceOrchestrator,
    stopping: tokio::sync::watch::Receiver<bool>,
) -> axum::Router {
    let tokens = grpc_config.tokens.clone().map(|tokens| {
        let check: baton_console::TokenCheck = Arc::new(move |presented: &[u8]| tokens.accepts(presented));
        check
    });
    let console_backends = baton_console::Backends {
        directory: Arc::clone(&backends.directory),
        planner: Arc::clone(&backends.planner),
        workflows: Arc::clone(&backends.workflows),
        executions: Arc::clone(&backends.executions),
        orchestrator: Arc::clone(&backends.orchestrator),
        activity: Arc::new(crate::activity::ServerActivity::new(metrics.clone(), orchestrator.clone())),
    };
    baton_console::router(baton_console::Config { tokens, secure_cookies: false }, console_backends, stopping)
}

/// The gRPC server's settings: limits from the flags, TLS and tokens read from their files.
/// Logs what is on, never a secret.
fn grpc_config(config: &ServeConfig) -> Result<baton_grpc::Config, ServeError> {
    let tls = match (&config.tls_cert, &config.tls_key) {
        (Some(cert), Some(key)) => Some(baton_grpc::Tls {
            cert_chain_pem: read("tls_cert", cert)?,
            key_pem: read("tls_key", key)?,
            client_ca_pem: config.tls_client_ca.as_deref().map(|ca| read("tls_client_ca", ca)).transpose()?,
        }),
        // The configuration refuses one without the other.
        _ => None,
    };
    let tokens = match &config.auth_token_file {
        Some(path) => {
            warn_if_readable_by_others("auth_token_file", path);
            let bytes = read("auth_token_file", path)?;
            let text = String::from_utf8(bytes)
                .map_err(|_| ServeError::Tokens { path: path.clone(), reason: "is not UTF-8 text".to_owned() })?;
            Some(parse_tokens(&text).map_err(|reason| ServeError::Tokens { path: path.clone(), reason })?)
        }
        None => None,
    };
    let connections = baton_grpc::Connections {
        rate_limit: NonZeroU32::new(config.rate_limit),
        max_concurrent_streams: config.max_concurrent_streams,
        ..baton_grpc::Connections::default()
    };
    tracing::info!(
        tls = tls.is_some(),
        mutual_tls = tls.as_ref().is_some_and(|tls| tls.client_ca_pem.is_some()),
        bearer_tokens = tokens.as_ref().map_or(0, baton_grpc::Tokens::len),
        rate_limit_per_connection = config.rate_limit,
        max_concurrent_streams = config.max_concurrent_streams,
        allow_link_local = config.allow_link_local,
        "gRPC security: {}, {}",
        match &tls {
            Some(tls) if tls.client_ca_pem.is_some() => "mutual TLS",
            Some(_) => "TLS",
            None => "plaintext",
        },
        if tokens.is_some() { "bearer tokens required" } else { "no authentication" },
    );
    if config.demo && (tls.is_some() || tokens.is_some()) {
        tracing::warn!(
            "demo: the example services register over plain HTTP without a token, which this server refuses"
        );
    }
    Ok(baton_grpc::Config { connections, tls, tokens, ..baton_grpc::Config::default() })
}

/// What this node presents to the other nodes of its cluster when it forwards a call: the
/// first of its own tokens, and with TLS its certificate, trusting the client CA and the
/// services' CA besides the system's roots.
fn peer_access(config: &ServeConfig, grpc: &baton_grpc::Config) -> Result<crate::forward::PeerAccess, ServeError> {
    let token = match (&config.auth_token_file, &grpc.tokens) {
        (Some(path), Some(_)) => {
            let text = String::from_utf8(read("auth_token_file", path)?).unwrap_or_default();
            text.lines().map(str::trim).find(|line| !line.is_empty() && !line.starts_with('#')).map(str::to_owned)
        }
        _ => None,
    };
    let tls = match &grpc.tls {
        Some(tls) => {
            let mut roots_pem: Vec<Vec<u8>> = tls.client_ca_pem.iter().cloned().collect();
            if let Some(path) = &config.services_ca {
                roots_pem.push(read("services_ca", path)?);
            }
            Some(crate::forward::PeerTls { roots_pem, identity_pem: (tls.cert_chain_pem.clone(), tls.key_pem.clone()) })
        }
        None => None,
    };
    Ok(crate::forward::PeerAccess { token, tls })
}

/// How services are called: the system's roots and `--services-ca`, secrets from
/// `--secrets-dir` and `BATON_SECRET_*` variables. Logs what is trusted, never a secret.
fn http_config(config: &ServeConfig) -> Result<baton_executor::HttpConfig, ServeError> {
    let mut roots = baton_executor::TrustRoots::system();
    let system = roots.len();
    if let Some(path) = &config.services_ca {
        let pem = read("services_ca", path)?;
        roots =
            roots.with_pem(&pem).map_err(|e| ServeError::ServicesCa { path: path.clone(), reason: e.to_string() })?;
    }
    if let Some(dir) = &config.secrets_dir {
        match std::fs::metadata(dir) {
            Ok(meta) if meta.is_dir() => warn_if_readable_by_others("secrets_dir", dir),
            Ok(_) => return Err(ServeError::SecretsDir { path: dir.clone(), reason: "is not a directory".to_owned() }),
            Err(e) => return Err(ServeError::SecretsDir { path: dir.clone(), reason: e.to_string() }),
        }
    }
    tracing::info!(
        system_roots = system,
        services_ca = roots.len() - system,
        secrets_dir = %config.secrets_dir.as_deref().map_or("-".into(), |d| d.display().to_string()),
        "service calls: TLS trusts the system's roots and services_ca; secrets come from secrets_dir and BATON_SECRET_* variables"
    );
    // Node ids are checked to be visible ASCII, so every one is a header value.
    let node = config.cluster_node().and_then(|node| axum::http::HeaderValue::from_str(node).ok());
    Ok(baton_executor::HttpConfig {
        node,
        roots,
        secrets: baton_executor::Secrets::new(config.secrets_dir.as_deref()),
        ..baton_executor::HttpConfig::default()
    })
}

fn read(setting: &'static str, path: &Path) -> Result<Vec<u8>, ServeError> {
    std::fs::read(path).map_err(|error| ServeError::Read { setting, path: path.to_owned(), error })
}

/// Tokens and secrets are secret: say so when others may read them.
fn warn_if_readable_by_others(setting: &str, path: &Path) {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        if let Ok(meta) = std::fs::metadata(path)
            && meta.permissions().mode() & 0o077 != 0
        {
            let mode = if meta.is_dir() { "700" } else { "600" };
            tracing::warn!(path = %path.display(), "the {setting} is readable by group or others; chmod {mode} it");
        }
    }
    #[cfg(not(unix))]
    let _ = (setting, path);
}

async fn bind(addr: SocketAddr) -> Result<TcpListener, ServeError> {
    TcpListener::bind(addr).await.map_err(|error| ServeError::Bind { addr, error })
}

/// Resolves on SIGTERM or Ctrl-C.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut term) => {
                term.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
}

/// The example workflows the demo applies, shipped in the binary so it runs from any directory.
pub const DEMO_WORKFLOWS: [(&str, &str); 4] = [
    ("checkout.yaml", include_str!("../../../examples/workflows/checkout.yaml")),
    ("order.yaml", include_str!("../../../examples/workflows/order.yaml")),
    ("order-notify.yaml", include_str!("../../../examples/workflows/order-notify.yaml")),
    ("pipeline.yaml", include_str!("../../../examples/workflows/pipeline.yaml")),
];

/// The demo's services: the shop's HTTP services and the gRPC notifications service.
type DemoServices = (Vec<baton_examples::RunningService>, baton_examples::grpc::RunningGrpcService);

/// Starts the example shop's services in-process, registered with this server, and applies
/// the example workflows. `None` when the services would not start (logged).
async fn start_demo(orchestrator: ServiceOrchestrator, grpc_addr: SocketAddr) -> Option<DemoServices> {
    for (file, text) in DEMO_WORKFLOWS {
        match orchestrator.engine().apply(text).await {
            Ok(applied) => tracing::info!(workflow = %applied.name, version = applied.version, "demo: applied {file}"),
            Err(error) => tracing::error!(%error, "demo: {file} does not apply"),
        }
    }
    let options = baton_examples::ServiceOptions {
        baton: Some(format!("http://{grpc_addr}")),
        latency: std::time::Duration::from_millis(20),
        ..baton_examples::ServiceOptions::default()
    };
    let grpc_options = baton_examples::grpc::GrpcOptions {
        baton: Some(format!("http://{grpc_addr}")),
        ..baton_examples::grpc::GrpcOptions::default()
    };
    let started = async {
        let services = baton_examples::spawn_shop(&options).await?;
        let notifications = baton_examples::grpc::spawn_grpc(grpc_options).await?;
        Ok::<_, baton_examples::Error>((services, notifications))
    };
    match started.await {
        Ok((services, notifications)) => {
            for service in &services {
                tracing::info!(service = service.id(), url = service.url(), "demo: example service started");
            }
            tracing::info!(
                service = notifications.id(),
                url = notifications.url(),
                "demo: example gRPC service started"
            );
            Some((services, notifications))
        }
        Err(error) => {
            tracing::error!(%error, "demo: the example services did not start");
            None
        }
    }
}
