//! The shop's gRPC side (`proto/shop/v1/shop.proto`): `shop.v1.Notifications`, which Baton
//! calls as a step like any other service, and `shop.v1.Probe`, calls for tests and benches.
//!
//! A service serves both, with server reflection (v1 and v1alpha) or without it; without,
//! it registers its descriptor set with Baton instead, so Baton can still convert JSON to
//! protobuf. `Notify` performs its effect once per `idempotency-key` (metadata) within the
//! idempotency window, as the HTTP services do per header.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;
use tonic::{Request, Response, Status};

use crate::keys::Keys;
use crate::register::{self, RegistrationStatus};
use crate::{Error, Result};

/// The generated `shop.v1` messages, servers and clients.
#[allow(missing_docs, unreachable_pub, reason = "generated code")]
pub mod pb {
    tonic::include_proto!("shop.v1");
}

/// The encoded `FileDescriptorSet` of `shop.v1` (with its imports).
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/shop_descriptor.bin"));

/// How many `traceparent`s a service remembers.
const TRACEPARENTS_KEPT: usize = 10_000;

/// The method a step calls by default: `shop.v1.Notifications/Notify`.
pub const NOTIFY: &str = "shop.v1.Notifications/Notify";

/// How to run one gRPC service.
#[derive(Debug, Clone)]
pub struct GrpcOptions {
    /// Service id; `None`: `notifications`.
    pub id: Option<String>,
    /// Where to listen; port 0 picks a free one.
    pub listen: SocketAddr,
    /// Serve reflection (v1 and v1alpha); without it the registration carries the descriptor set.
    pub reflection: bool,
    /// With `reflection`: serve only v1alpha, as older servers (and grpcio-reflection) do.
    pub reflection_v1alpha_only: bool,
    /// Baton's gRPC endpoint to register with; `None`: none.
    pub baton: Option<String>,
    /// Time each notification takes.
    pub latency: Duration,
    /// Heartbeat TTL registered.
    pub ttl: Duration,
    /// Serve TLS with this certificate chain and key (PEM).
    pub tls: Option<(Vec<u8>, Vec<u8>)>,
    /// How long a key's reply is kept after its first call; past it the key is new again
    /// (default [`crate::DEFAULT_IDEMPOTENCY_WINDOW`], 24 hours).
    pub idempotency_window: Duration,
}

impl Default for GrpcOptions {
    fn default() -> Self {
        Self {
            id: None,
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            reflection: true,
            reflection_v1alpha_only: false,
            baton: None,
            latency: Duration::ZERO,
            ttl: Duration::from_secs(10),
            tls: None,
            idempotency_window: crate::DEFAULT_IDEMPOTENCY_WINDOW,
        }
    }
}

/// What a gRPC service has seen since it started.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GrpcStats {
    /// Calls of every method.
    pub calls: u64,
    /// Notifications sent (once per idempotency key).
    pub effects: u64,
    /// `Notify` calls answered from an earlier effect.
    pub duplicates: u64,
    /// `traceparent` of the latest calls (up to 10,000), oldest first (an empty string for a
    /// call without one).
    pub traceparents: Vec<String>,
}

#[derive(Debug, Default)]
struct State {
    id: String,
    latency: Duration,
    calls: AtomicU64,
    effects: AtomicU64,
    duplicates: AtomicU64,
    /// The latest calls' `traceparent`s, oldest first.
    traceparents: Mutex<std::collections::VecDeque<String>>,
    /// The reply per idempotency key, for the idempotency window.
    notified: Mutex<Keys<pb::NotifyReply>>,
    /// `Fail` calls per idempotency key, for the idempotency window.
    failures: Mutex<Keys<u32>>,
}

impl State {
    fn seen<T>(&self, request: &Request<T>) {
        self.calls.fetch_add(1, Ordering::Relaxed);
        let traceparent = text(request, "traceparent").unwrap_or_default();
        let mut kept = self.traceparents.lock();
        if kept.len() == TRACEPARENTS_KEPT {
            kept.pop_front();
        }
        kept.push_back(traceparent);
    }
}

fn text<T>(request: &Request<T>, key: &str) -> Option<String> {
    request.metadata().get(key).and_then(|v| v.to_str().ok()).map(str::to_owned)
}

#[derive(Debug, Clone)]
struct Notifications(Arc<State>);

#[tonic::async_trait]
impl pb::notifications_server::Notifications for Notifications {
    async fn notify(&self, request: Request<pb::NotifyRequest>) -> Result<Response<pb::NotifyReply>, Status> {
        self.0.seen(&request);
        let key = text(&request, "idempotency-key");
        let message = request.into_inner();
        if message.tracking.is_empty() {
            return Err(Status::invalid_argument("tracking must be set"));
        }
        if let Some(key) = &key
            && let Some(reply) = self.0.notified.lock().get(key).cloned()
        {
            self.0.duplicates.fetch_add(1, Ordering::Relaxed);
            return Ok(Response::new(reply));
        }
        tokio::time::sleep(self.0.latency).await;
        let sequence = self.0.effects.fetch_add(1, Ordering::Relaxed) + 1;
        let reply = pb::NotifyReply {
            notification_id: format!("ntf-{}-{sequence:06}", self.0.id),
            tracking: message.tracking,
            service: self.0.id.clone(),
        };
        if let Some(key) = key {
            self.0.notified.lock().entry(&key, || reply.clone());
        }
        Ok(Response::new(reply))
    }
}

#[derive(Debug, Clone)]
struct Probe(Arc<State>);

/// Metadata Baton sets, echoed back.
const ECHOED: [&str; 8] = [
    "idempotency-key",
    "x-baton-execution",
    "x-baton-step",
    "x-baton-attempt",
    "x-baton-node",
    "traceparent",
    "tracestate",
    "x-tenant",
];

#[tonic::async_trait]
impl pb::probe_server::Probe for Probe {
    async fn echo(&self, request: Request<pb::EchoRequest>) -> Result<Response<pb::EchoReply>, Status> {
        self.0.seen(&request);
        let mut metadata: BTreeMap<String, String> =
            ECHOED.iter().filter_map(|key| Some(((*key).to_owned(), text(&request, key)?))).collect();
        // Whether credentials came, never what they were.
        if request.metadata().contains_key("authorization") {
            metadata.insert("authorization".to_owned(), "present".to_owned());
        }
        let message = request.into_inner();
        Ok(Response::new(pb::EchoReply {
            text: message.text,
            count: message.count,
            tags: message.tags,
            nested: message.nested,
            metadata: metadata.into_iter().collect(),
            service: self.0.id.clone(),
        }))
    }

    async fn fail(&self, request: Request<pb::FailRequest>) -> Result<Response<pb::FailReply>, Status> {
        self.0.seen(&request);
        let key = text(&request, "idempotency-key").unwrap_or_default();
        let message = request.into_inner();
        let calls = {
            let mut failures = self.0.failures.lock();
            let calls = failures.entry(&key, || 0);
            *calls += 1;
            *calls
        };
        if message.succeed_after > 0 && calls > message.succeed_after {
            return Ok(Response::new(pb::FailReply { calls }));
        }
        let code = tonic::Code::from_i32(message.code);
        Err(Status::new(code, format!("failing with {code:?} as asked (call {calls})")))
    }

    async fn sleep(&self, request: Request<pb::SleepRequest>) -> Result<Response<pb::SleepReply>, Status> {
        self.0.seen(&request);
        let deadline_millis = text(&request, "grpc-timeout").and_then(|t| grpc_timeout_millis(&t)).unwrap_or(0);
        tokio::time::sleep(Duration::from_millis(request.into_inner().millis.into())).await;
        Ok(Response::new(pb::SleepReply { deadline_millis }))
    }
}

/// A `grpc-timeout` value (`<digits><unit>`, unit one of `HMSmun`) in milliseconds.
fn grpc_timeout_millis(text: &str) -> Option<u64> {
    let (digits, unit) = text.split_at(text.len().checked_sub(1)?);
    let value: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => value * 3_600_000,
        "M" => value * 60_000,
        "S" => value * 1_000,
        "m" => value,
        "u" => value / 1_000,
        "n" => value / 1_000_000,
        _ => return None,
    })
}

/// A gRPC service serving on its own task.
#[derive(Debug)]
pub struct RunningGrpcService {
    id: String,
    addr: SocketAddr,
    url: String,
    state: Arc<State>,
    registration: watch::Receiver<RegistrationStatus>,
    mode: watch::Sender<crate::http::Mode>,
    stop: Option<oneshot::Sender<()>>,
    server: Option<JoinHandle<Result<(), tonic::transport::Error>>>,
    registrar: Option<JoinHandle<()>>,
}

/// Starts a gRPC service with `options`, registering it when `options.baton` is set.
pub async fn spawn_grpc(options: GrpcOptions) -> Result<RunningGrpcService> {
    let id = options.id.clone().unwrap_or_else(|| "notifications".to_owned());
    baton_core::ServiceId::new(&id).map_err(|e| Error::Invalid { field: "id", reason: e.to_string() })?;
    let listener = tokio::net::TcpListener::bind(options.listen)
        .await
        .map_err(|source| Error::Bind { addr: options.listen, source })?;
    let addr = listener.local_addr().map_err(|source| Error::Bind { addr: options.listen, source })?;
    let scheme = if options.tls.is_some() { "https" } else { "http" };
    let url = format!("{scheme}://{addr}");
    if options.idempotency_window.is_zero() {
        return Err(Error::Invalid { field: "idempotency_window", reason: "must be positive".to_owned() });
    }
    let state = Arc::new(State {
        id: id.clone(),
        latency: options.latency,
        notified: Mutex::new(Keys::new(options.idempotency_window)),
        failures: Mutex::new(Keys::new(options.idempotency_window)),
        ..State::default()
    });

    let mut builder = tonic::transport::Server::builder();
    if let Some((cert, key)) = &options.tls {
        let identity = tonic::transport::Identity::from_pem(cert, key);
        builder = builder
            .tls_config(tonic::transport::ServerTlsConfig::new().identity(identity))
            .map_err(|e| Error::Invalid { field: "tls", reason: e.to_string() })?;
    }
    let reflection = options.reflection.then(|| {
        let v1 = (!options.reflection_v1alpha_only).then(|| {
            tonic_reflection::server::Builder::configure()
                .register_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET)
                .build_v1()
                .expect("the built-in descriptor set is valid")
        });
        let v1alpha = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET)
            .build_v1alpha()
            .expect("the built-in descriptor set is valid");
        (v1, v1alpha)
    });
    let (v1, v1alpha) = reflection.unzip();
    let v1 = v1.flatten();
    let router = builder
        .add_service(pb::notifications_server::NotificationsServer::new(Notifications(Arc::clone(&state))))
        .add_service(pb::probe_server::ProbeServer::new(Probe(Arc::clone(&state))))
        .add_optional_service(v1)
        .add_optional_service(v1alpha);
    let (stop, stopped) = oneshot::channel::<()>();
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
    let server = tokio::spawn(router.serve_with_incoming_shutdown(incoming, async {
        let _ = stopped.await;
    }));

    let (mode, mode_rx) = watch::channel(crate::http::Mode::Running);
    let (status, registration) = watch::channel(RegistrationStatus::default());
    let registrar = match &options.baton {
        None => None,
        Some(endpoint) => {
            let spec = register::grpc_spec(&id, &url, options.ttl, !options.reflection);
            let client = register::client(endpoint)?;
            let registrar = register::Registrar {
                client,
                spec,
                interval: register::heartbeat_interval(options.ttl),
                status,
                mode: mode_rx,
            };
            Some(tokio::spawn(registrar.run()))
        }
    };
    Ok(RunningGrpcService {
        id,
        addr,
        url,
        state,
        registration,
        mode,
        stop: Some(stop),
        server: Some(server),
        registrar,
    })
}

impl RunningGrpcService {
    /// Its service id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The URL registered: `http://` or `https://` and the address.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// What it has seen.
    pub fn stats(&self) -> GrpcStats {
        GrpcStats {
            calls: self.state.calls.load(Ordering::Relaxed),
            effects: self.state.effects.load(Ordering::Relaxed),
            duplicates: self.state.duplicates.load(Ordering::Relaxed),
            traceparents: self.state.traceparents.lock().iter().cloned().collect(),
        }
    }

    /// Waits until Baton has accepted its registration; never returns without `baton`.
    pub async fn registered(&self) {
        let mut registration = self.registration.clone();
        if registration.wait_for(|s| s.registered).await.is_err() {
            std::future::pending::<()>().await;
        }
    }

    /// Deregisters (when registered) and stops serving.
    pub async fn shutdown(mut self) -> Result<()> {
        self.mode.send_replace(crate::http::Mode::Stopping);
        if let Some(registrar) = self.registrar.take() {
            registrar.await.expect("the registration task does not panic");
        }
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(server) = self.server.take() {
            server
                .await
                .expect("the gRPC server task does not panic")
                .map_err(|e| Error::Serve { id: self.id.clone(), source: std::io::Error::other(e) })?;
        }
        Ok(())
    }
}

impl Drop for RunningGrpcService {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            self.mode.send_replace(crate::http::Mode::Killed);
            let _ = stop.send(());
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn grpc_timeouts_read_in_every_unit() {
        for (text, millis) in [("2S", Some(2_000)), ("150m", Some(150)), ("1M", Some(60_000)), ("5000u", Some(5))] {
            assert_eq!(super::grpc_timeout_millis(text), millis, "{text}");
        }
        assert_eq!(super::grpc_timeout_millis("x"), None);
        assert_eq!(super::grpc_timeout_millis(""), None);
    }
}
