//! Example services for Baton: a small shop of three HTTP services that Baton's HTTP invoker
//! calls (over HTTPS too, see [`tls`]), and a gRPC notifications service ([`grpc`]), for demos (`baton serve --demo`), the example workflows in `examples/workflows`, the
//! planner goal in `examples/goals`, and end-to-end tests.
//!
//! | kind | endpoint | reads | answers | capabilities | consumes -> produces |
//! |---|---|---|---|---|---|
//! | [`Kind::Inventory`] | `POST /reserve` | `sku`, `quantity` (default 1) | `{"id", "reservation", "sku", "quantity", "service"}` | `inventory`, `inventory.reserve` | `order` -> `reservation` |
//! | [`Kind::Payments`] | `POST /charge` | `amount` | `{"receipt", "amount", "service"}` | `payment`, `payment.charge` | `order` -> `receipt` |
//! | [`Kind::Shipping`] | `POST /ship` | `reservation`, `receipt` or `paid` (optional) | `{"tracking", "reservation", "receipt", "service"}` | `shipping`, `shipping.ship` | `reservation`, `receipt` -> `tracking` |
//!
//! Each field is read at the top of the JSON body or inside its `order` object, so both a
//! hand-written workflow (`{"sku": ..}`) and a planned one (`{"order": {..}}`) can call them.
//! Bad input is a `400` (permanent for Baton); made ids carry the service id
//! (`res-inventory-000001`), so a failover shows which instance did the work.
//!
//! **Exactly once per key.** Baton sends `Idempotency-Key: <execution>/<step>`, the same on
//! every retry, failover and recovery. The first request with a key performs the effect and
//! stores its answer; a later one (or one arriving while the first is in flight, which waits
//! for it) gets the stored answer and counts as a duplicate. A request whose effect failed
//! stores nothing, so its retry performs the effect. Without the header every request is a new
//! effect. `GET /stats` answers [`Stats`] as JSON (`{"requests", "effects", "duplicates",
//! "failures"}`), `GET /stats/keys` the effects per key, `GET /health` 200 while serving.
//! A key is kept for the service's idempotency window after its first request
//! ([`ServiceOptions::idempotency_window`], 24 hours unless set, as Stripe's); past it the key
//! is new again, and expired keys are evicted a bounded batch at a time as requests come.
//!
//! **Faults on demand.** [`ServiceOptions`] adds latency before each effect, fails a share of
//! requests before their effect (`fail_rate`, a retryable 503) or after it (`lose_rate`: the
//! effect happened and is stored but the caller never learns it, from a 503 or from a
//! connection cut mid-answer, half each, so the retry must get the stored answer), and [`RunningService::kill`] stops a service as if its process died.
//!
//! **Self-registration.** Given Baton's gRPC address, a service registers the spec of
//! [`RunningService::spec`] (an HTTP endpoint, its capabilities and concepts, QoS from its
//! latency and failure rates, a TTL health check) through `RegistryService`, heartbeats at a
//! third of the TTL, registers again when the server answers `NOT_FOUND` (it restarted), backs
//! off while the server is down, and deregisters on [`RunningService::shutdown`].
//!
//! Not for: anything but demos and tests. They keep everything in memory and trust every
//! caller.

pub mod grpc;
mod http;
mod keys;
#[cfg(feature = "test-pki")]
pub mod pki;
mod register;
mod shop;
pub mod tls;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use baton_grpc::pb;
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;

pub use http::Stats;
pub use keys::DEFAULT_WINDOW as DEFAULT_IDEMPOTENCY_WINDOW;
pub use register::RegistrationStatus;
pub use shop::Kind;

use crate::http::{Mode, Shared};

/// What can go wrong starting or stopping a service.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An option is out of range or does not parse.
    #[error("invalid option {field}: {reason}")]
    Invalid {
        /// The option, e.g. `fail_rate`.
        field: &'static str,
        /// Why.
        reason: String,
    },
    /// The listen address could not be bound.
    #[error("could not listen on {addr}: {source}")]
    Bind {
        /// The address asked for.
        addr: SocketAddr,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The HTTP server stopped with an error.
    #[error("http server of service {id} failed: {source}")]
    Serve {
        /// The service id.
        id: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}

/// This crate's results.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// How to run one service. `ServiceOptions::default()` is a service on `127.0.0.1:0` that
/// registers nowhere, without latency or failures.
#[derive(Debug, Clone)]
pub struct ServiceOptions {
    /// Service id; `None`: the kind's name (`inventory`, `payments`, `shipping`). Give two
    /// instances of one kind different ids to have Baton fail over between them.
    pub id: Option<String>,
    /// Where to listen; port 0 picks a free one.
    pub listen: SocketAddr,
    /// Base URL Baton calls (e.g. `http://shop.local:8080`); `None`: `http://<bound address>`.
    pub advertise: Option<String>,
    /// Baton's gRPC endpoint (e.g. `http://127.0.0.1:50051`) to register with; `None`: none.
    pub baton: Option<String>,
    /// Time each effect takes.
    pub latency: Duration,
    /// Share of requests, in `[0, 1]`, failed with a 503 before their effect.
    pub fail_rate: f64,
    /// Share of effects, in `[0, 1]`, whose answer is lost (the effect stands): a 503 or a
    /// connection cut mid-answer, half each.
    pub lose_rate: f64,
    /// Seed of the failure injection; `None`: from the clock.
    pub seed: Option<u64>,
    /// Heartbeat TTL registered; heartbeats go every third of it.
    pub ttl: Duration,
    /// Registered `deregister_after`: the registry drops the service once it has been critical
    /// this long (e.g. killed); `None`: never.
    pub deregister_after: Option<Duration>,
    /// Most calls in flight Baton may send at once (registered capacity), at least 1.
    pub capacity: u32,
    /// Extra labels to register (beside `example=shop` and `kind=<kind>`).
    pub labels: BTreeMap<String, String>,
    /// Serve HTTPS with this configuration (see [`tls::server_config`]) rather than HTTP; the
    /// URL registered is then `https://<bound address>` unless `advertise` says otherwise.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// Require a bearer token on every effect request (`401` otherwise), and register
    /// credentials naming the secret Baton reads it from.
    pub bearer: Option<Bearer>,
    /// How long a key's stored answer and effect count are kept after its first request;
    /// past it the key is new again (default [`DEFAULT_IDEMPOTENCY_WINDOW`], 24 hours).
    pub idempotency_window: Duration,
}

/// A bearer token a service requires, and the name of the secret Baton holds it under.
#[derive(Clone)]
pub struct Bearer {
    /// The secret's name, registered as the service's credentials.
    pub secret: String,
    /// The token.
    pub token: String,
}

impl std::fmt::Debug for Bearer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bearer").field("secret", &self.secret).finish_non_exhaustive()
    }
}

impl Default for ServiceOptions {
    fn default() -> Self {
        Self {
            id: None,
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            advertise: None,
            baton: None,
            latency: Duration::ZERO,
            fail_rate: 0.0,
            lose_rate: 0.0,
            seed: None,
            ttl: Duration::from_secs(10),
            deregister_after: Some(Duration::from_secs(60)),
            capacity: 64,
            labels: BTreeMap::new(),
            tls: None,
            bearer: None,
            idempotency_window: DEFAULT_IDEMPOTENCY_WINDOW,
        }
    }
}

impl ServiceOptions {
    fn check(&self) -> Result<()> {
        for (field, rate) in [("fail_rate", self.fail_rate), ("lose_rate", self.lose_rate)] {
            if !(0.0..=1.0).contains(&rate) {
                return Err(Error::Invalid { field, reason: format!("{rate} is not in [0, 1]") });
            }
        }
        if self.capacity == 0 {
            return Err(Error::Invalid { field: "capacity", reason: "must be at least 1".to_owned() });
        }
        if self.ttl.is_zero() {
            return Err(Error::Invalid { field: "ttl", reason: "must be positive".to_owned() });
        }
        if self.idempotency_window.is_zero() {
            return Err(Error::Invalid { field: "idempotency_window", reason: "must be positive".to_owned() });
        }
        Ok(())
    }
}

/// A cheap-to-clone view of a running service: its counters and registration.
#[derive(Debug, Clone)]
pub struct Handle {
    shared: Arc<Shared>,
    registration: watch::Receiver<RegistrationStatus>,
}

impl Handle {
    /// The service's counters now.
    pub fn stats(&self) -> Stats {
        self.shared.stats()
    }

    /// Effects performed per idempotency key (`<execution>/<step>`).
    pub fn key_effects(&self) -> BTreeMap<String, u64> {
        self.shared.key_effects()
    }

    /// The `traceparent` headers of its latest effect requests (up to 10,000), oldest first.
    pub fn traceparents(&self) -> Vec<String> {
        self.shared.traceparents()
    }

    /// The calling node (`X-Baton-Node`) of its latest requests from a cluster (up to 10,000),
    /// with when each came, oldest first.
    pub fn callers(&self) -> Vec<(String, std::time::Instant)> {
        self.shared.callers()
    }

    /// Where its registration stands (always unregistered without a Baton endpoint).
    pub fn registration(&self) -> RegistrationStatus {
        self.registration.borrow().clone()
    }

    /// Waits until the server has accepted the service's registration (at once if it has).
    /// Never returns for a service without a Baton endpoint.
    pub async fn registered(&self) {
        let mut registration = self.registration.clone();
        if registration.wait_for(|s| s.registered).await.is_err() {
            // The service stopped: it will not register any more.
            std::future::pending::<()>().await;
        }
    }
}

/// A service serving on its own tasks. Stop it with [`shutdown`](Self::shutdown) (deregisters)
/// or [`kill`](Self::kill) (as if it crashed); dropping it kills it without waiting.
#[derive(Debug)]
pub struct RunningService {
    kind: Kind,
    id: String,
    addr: SocketAddr,
    url: String,
    spec: pb::ServiceSpec,
    handle: Handle,
    mode: watch::Sender<Mode>,
    stop_http: Option<oneshot::Sender<()>>,
    server: Option<JoinHandle<std::io::Result<()>>>,
    registrar: Option<JoinHandle<()>>,
}

/// Starts a service of `kind` with `options`: binds, serves, and (with `options.baton`)
/// registers in the background, retrying while Baton is down.
pub async fn spawn(kind: Kind, options: ServiceOptions) -> Result<RunningService> {
    options.check()?;
    let id = options.id.clone().unwrap_or_else(|| kind.name().to_owned());
    baton_core::ServiceId::new(&id).map_err(|e| Error::Invalid { field: "id", reason: e.to_string() })?;
    let listener = tokio::net::TcpListener::bind(options.listen)
        .await
        .map_err(|source| Error::Bind { addr: options.listen, source })?;
    let addr = listener.local_addr().map_err(|source| Error::Bind { addr: options.listen, source })?;
    let scheme = if options.tls.is_some() { "https" } else { "http" };
    let base = options.advertise.clone().unwrap_or_else(|| format!("{scheme}://{addr}"));
    let url = format!("{}{}", base.trim_end_matches('/'), kind.path());
    let spec = register::spec(&register::SpecParts {
        kind,
        id: &id,
        url: &url,
        latency: options.latency,
        failure_rate: options.fail_rate + options.lose_rate,
        capacity: options.capacity,
        ttl: options.ttl,
        deregister_after: options.deregister_after,
        labels: &options.labels,
        bearer_secret: options.bearer.as_ref().map(|b| b.secret.as_str()),
    });
    // The server would refuse a spec it cannot check; say so now rather than retry forever.
    baton_grpc::convert::spec_from_proto(spec.clone())
        .map_err(|status| Error::Invalid { field: "spec", reason: status.message().to_owned() })?;
    let client = options.baton.as_deref().map(register::client).transpose()?;

    let (mode, mode_rx) = watch::channel(Mode::Running);
    let seed = options.seed.unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64)
    });
    let shared = Arc::new(Shared::new(
        kind,
        id.clone(),
        options.latency,
        (options.fail_rate, options.lose_rate),
        seed,
        mode_rx.clone(),
        options.bearer.as_ref().map(|b| b.token.clone()),
        options.idempotency_window,
    ));
    let (stop_http, http_stopped) = oneshot::channel::<()>();
    let app = http::router(shared.clone());
    let stopped = async {
        let _ = http_stopped.await;
    };
    let server = match &options.tls {
        None => tokio::spawn(async move { axum::serve(listener, app).with_graceful_shutdown(stopped).await }),
        Some(config) => {
            let listener = tls::TlsListener::new(listener, Arc::clone(config))
                .map_err(|source| Error::Bind { addr: options.listen, source })?;
            tokio::spawn(async move { axum::serve(listener, app).with_graceful_shutdown(stopped).await })
        }
    };
    let (status, registration) = watch::channel(RegistrationStatus::default());
    let registrar = client.map(|client| {
        let registrar = register::Registrar {
            client,
            spec: spec.clone(),
            interval: register::heartbeat_interval(options.ttl),
            status,
            mode: mode_rx,
        };
        tokio::spawn(registrar.run())
    });
    Ok(RunningService {
        kind,
        id,
        addr,
        url,
        spec,
        handle: Handle { shared, registration },
        mode,
        stop_http: Some(stop_http),
        server: Some(server),
        registrar,
    })
}

impl RunningService {
    /// The kind of service.
    pub fn kind(&self) -> Kind {
        self.kind
    }

    /// Its service id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The URL Baton POSTs to (the registered endpoint).
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The spec it registers (or would register), for registering it some other way.
    pub fn spec(&self) -> &pb::ServiceSpec {
        &self.spec
    }

    /// A handle on its counters and registration.
    pub fn handle(&self) -> Handle {
        self.handle.clone()
    }

    /// Its counters now.
    pub fn stats(&self) -> Stats {
        self.handle.stats()
    }

    /// Stops gracefully: deregisters (when registered), stops accepting, lets in-flight
    /// requests finish.
    pub async fn shutdown(mut self) -> Result<()> {
        self.stop(Mode::Stopping).await
    }

    /// Stops at once, as if the process died: no deregistration (the registry finds out when
    /// the TTL runs out), in-flight requests are answered 503 without their effect, and
    /// connections close.
    pub async fn kill(mut self) -> Result<()> {
        self.stop(Mode::Killed).await
    }

    async fn stop(&mut self, mode: Mode) -> Result<()> {
        self.mode.send_replace(mode);
        if let Some(registrar) = self.registrar.take() {
            // It only ends by itself; a panic there is a bug worth surfacing.
            registrar.await.expect("the registration task does not panic");
        }
        if let Some(stop) = self.stop_http.take() {
            let _ = stop.send(());
        }
        let Some(server) = self.server.take() else { return Ok(()) };
        match server.await.expect("the http server task does not panic") {
            Ok(()) => Ok(()),
            Err(source) => Err(Error::Serve { id: self.id.clone(), source }),
        }
    }
}

impl Drop for RunningService {
    fn drop(&mut self) {
        if self.server.is_some() {
            self.mode.send_replace(Mode::Killed);
            if let Some(stop) = self.stop_http.take() {
                let _ = stop.send(());
            }
        }
    }
}

/// Starts one service of each kind with the default ids (`inventory`, `payments`,
/// `shipping`), each on its own free port of `127.0.0.1` and otherwise with `options`
/// (whose `id` and `listen` are ignored).
pub async fn spawn_shop(options: &ServiceOptions) -> Result<Vec<RunningService>> {
    let mut services = Vec::with_capacity(Kind::ALL.len());
    for kind in Kind::ALL {
        let options = ServiceOptions { id: None, listen: SocketAddr::from(([127, 0, 0, 1], 0)), ..options.clone() };
        services.push(spawn(kind, options).await?);
    }
    Ok(services)
}
