//! Self-registration: the spec a service registers, and the task that registers it, heartbeats
//! at a third of its TTL, registers again when the server forgot it, backs off while the
//! server is down, and deregisters on a graceful shutdown.

use std::collections::BTreeMap;
use std::time::Duration;

use baton_grpc::pb;
use baton_grpc::pb::registry_service_client::RegistryServiceClient;
use tokio::sync::watch;
use tonic::transport::Channel;

use crate::http::Mode;
use crate::shop::Kind;

/// First wait after a failed call; it doubles up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
/// Longest wait between attempts while the server is down.
const MAX_BACKOFF: Duration = Duration::from_secs(2);
/// How long a graceful shutdown waits for the deregistration.
const DEREGISTER_TIMEOUT: Duration = Duration::from_secs(2);

/// Where a service's registration stands.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RegistrationStatus {
    /// Whether the server knows the service now, as far as the latest call tells.
    pub registered: bool,
    /// Successful Register calls (the first one, then one after each time the server forgot it).
    pub registrations: u64,
    /// Successful heartbeats.
    pub heartbeats: u64,
    /// The latest failed call's error, if any.
    pub last_error: Option<String>,
}

/// What the registered spec is made of.
#[derive(Debug, Clone)]
pub(crate) struct SpecParts<'a> {
    pub(crate) kind: Kind,
    pub(crate) id: &'a str,
    pub(crate) url: &'a str,
    pub(crate) latency: Duration,
    pub(crate) failure_rate: f64,
    pub(crate) capacity: u32,
    pub(crate) ttl: Duration,
    pub(crate) deregister_after: Option<Duration>,
    pub(crate) labels: &'a BTreeMap<String, String>,
    /// The secret Baton reads the service's bearer token from.
    pub(crate) bearer_secret: Option<&'a str>,
}

fn proto_duration(d: Duration) -> prost_types::Duration {
    prost_types::Duration::try_from(d).unwrap_or(prost_types::Duration { seconds: i64::MAX, nanos: 0 })
}

/// The spec a service registers: its capabilities and data types, an HTTP endpoint, QoS
/// derived from its configured latency and failure rates, and a TTL health check.
pub(crate) fn spec(parts: &SpecParts<'_>) -> pb::ServiceSpec {
    let kind = parts.kind;
    let latency_ms = parts.latency.as_secs_f64() * 1000.0;
    // A promise a little worse than the configured latency, as a real service would make.
    let p50 = latency_ms + 1.0;
    let p99 = latency_ms * 1.5 + 5.0;
    let throughput = f64::from(parts.capacity) * 1000.0 / p50;
    let mut labels: std::collections::HashMap<String, String> =
        [("example", "shop"), ("kind", kind.name())].into_iter().map(|(k, v)| (k.to_owned(), v.to_owned())).collect();
    labels.extend(parts.labels.iter().map(|(k, v)| (k.clone(), v.clone())));
    let strings = |items: &[&str]| items.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
    pb::ServiceSpec {
        id: parts.id.to_owned(),
        name: format!("example {} service", kind.name()),
        version: env!("CARGO_PKG_VERSION").to_owned(),
        endpoint: Some(pb::Endpoint {
            kind: Some(pb::endpoint::Kind::Http(pb::endpoint::Http { url: parts.url.to_owned() })),
        }),
        capabilities: strings(kind.capabilities()),
        inputs: strings(kind.inputs()),
        outputs: strings(kind.outputs()),
        formats: vec!["json".to_owned()],
        qos: Some(pb::Qos {
            latency_p50_ms: p50,
            latency_p99_ms: p99,
            throughput_rps: throughput,
            cost: kind.cost(),
            availability: Some((1.0 - parts.failure_rate).clamp(0.0, 1.0)),
        }),
        security: Some(pb::SecurityProfile {
            auth_schemes: vec![pb::AuthScheme::None as i32],
            encryption: pb::Encryption::None as i32,
            compliance: strings(kind.compliance()),
        }),
        capacity: parts.capacity,
        health_check: Some(pb::HealthCheck {
            kind: Some(pb::health_check::Kind::Ttl(pb::health_check::Ttl { ttl: Some(proto_duration(parts.ttl)) })),
            deregister_after: parts.deregister_after.map(proto_duration),
            ..Default::default()
        }),
        labels,
        credentials: parts.bearer_secret.map(|secret| pb::Credentials {
            kind: Some(pb::credentials::Kind::Bearer(pb::credentials::Bearer { secret: secret.to_owned() })),
        }),
        tls: None,
    }
}

/// The spec a gRPC service registers: a `grpc` endpoint whose method is `Notify`, the
/// `customer.notify` capability (a `tracking` number to a `notification`), a TTL health check,
/// and with `descriptors` the `shop.v1` descriptor set (for a server without reflection).
pub(crate) fn grpc_spec(id: &str, url: &str, ttl: Duration, descriptors: bool) -> pb::ServiceSpec {
    let strings = |items: &[&str]| items.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
    pb::ServiceSpec {
        id: id.to_owned(),
        name: "example notifications service".to_owned(),
        version: env!("CARGO_PKG_VERSION").to_owned(),
        endpoint: Some(pb::Endpoint {
            kind: Some(pb::endpoint::Kind::Grpc(pb::endpoint::Grpc {
                url: url.to_owned(),
                method: crate::grpc::NOTIFY.to_owned(),
                descriptor_set: if descriptors { crate::grpc::FILE_DESCRIPTOR_SET.to_vec() } else { Vec::new() },
            })),
        }),
        capabilities: strings(&["customer.notify"]),
        inputs: strings(&["tracking"]),
        outputs: strings(&["notification"]),
        formats: strings(&["protobuf"]),
        qos: Some(pb::Qos { latency_p50_ms: 1.0, latency_p99_ms: 5.0, availability: Some(1.0), ..Default::default() }),
        security: None,
        capacity: 64,
        health_check: Some(pb::HealthCheck {
            kind: Some(pb::health_check::Kind::Ttl(pb::health_check::Ttl { ttl: Some(proto_duration(ttl)) })),
            deregister_after: Some(proto_duration(Duration::from_secs(60))),
            ..Default::default()
        }),
        labels: [("example".to_owned(), "shop".to_owned())].into(),
        credentials: None,
        tls: None,
    }
}

/// A registry client of Baton at `endpoint`, connecting when first used.
pub(crate) fn client(endpoint: &str) -> crate::Result<RegistryServiceClient<Channel>> {
    let channel = tonic::transport::Endpoint::from_shared(endpoint.to_owned())
        .map_err(|e| crate::Error::Invalid { field: "baton", reason: format!("{endpoint:?}: {e}") })?
        .connect_timeout(Duration::from_secs(2))
        .timeout(Duration::from_secs(5))
        .connect_lazy();
    Ok(RegistryServiceClient::new(channel))
}

/// How often a service heartbeats: a third of its TTL, so one lost heartbeat does not turn it
/// critical.
pub(crate) fn heartbeat_interval(ttl: Duration) -> Duration {
    (ttl / 3).max(Duration::from_millis(20))
}

/// The registration task's inputs.
pub(crate) struct Registrar {
    pub(crate) client: RegistryServiceClient<Channel>,
    pub(crate) spec: pb::ServiceSpec,
    pub(crate) interval: Duration,
    pub(crate) status: watch::Sender<RegistrationStatus>,
    pub(crate) mode: watch::Receiver<Mode>,
}

/// Doubling waits from [`FIRST_BACKOFF`] to [`MAX_BACKOFF`].
struct Backoff(Duration);

impl Backoff {
    fn next(&mut self) -> Duration {
        let wait = self.0;
        self.0 = (self.0 * 2).min(MAX_BACKOFF);
        wait
    }

    fn reset(&mut self) {
        self.0 = FIRST_BACKOFF;
    }
}

impl Registrar {
    /// `work`, unless the service stops first.
    async fn unless_stopped<T>(&mut self, work: impl Future<Output = T>) -> Option<T> {
        let mut mode = self.mode.clone();
        tokio::select! {
            value = work => Some(value),
            _ = mode.wait_for(|m| *m != Mode::Running) => None,
        }
    }

    fn failed(&self, what: &str, status: &tonic::Status) {
        let message = format!("{what} of service {} failed: {}: {}", self.spec.id, status.code(), status.message());
        tracing::warn!("{message}");
        self.status.send_modify(|s| s.last_error = Some(message));
    }

    /// Registers, then heartbeats, until the service stops; then deregisters unless killed.
    pub(crate) async fn run(mut self) {
        let mut backoff = Backoff(FIRST_BACKOFF);
        // Whether a Register call was cut short by the stop: it may still have landed.
        let mut cut_short = false;
        'register: loop {
            let mut client = self.client.clone();
            let request = pb::RegisterRequest { spec: Some(self.spec.clone()) };
            let Some(result) = self.unless_stopped(client.register(request)).await else {
                cut_short = true;
                break;
            };
            match result {
                Ok(_) => {
                    backoff.reset();
                    self.status.send_modify(|s| {
                        s.registered = true;
                        s.registrations += 1;
                    });
                }
                Err(status) => {
                    self.failed("registration", &status);
                    if self.unless_stopped(tokio::time::sleep(backoff.next())).await.is_none() {
                        break;
                    }
                    continue;
                }
            }
            let mut wait = self.interval;
            loop {
                if self.unless_stopped(tokio::time::sleep(wait)).await.is_none() {
                    break 'register;
                }
                let request = pb::HeartbeatRequest { id: self.spec.id.clone() };
                let Some(result) = self.unless_stopped(client.heartbeat(request)).await else { break 'register };
                match result {
                    Ok(_) => {
                        backoff.reset();
                        wait = self.interval;
                        self.status.send_modify(|s| {
                            s.registered = true;
                            s.heartbeats += 1;
                        });
                    }
                    Err(status) if status.code() == tonic::Code::NotFound => {
                        // The server restarted or deregistered us: register again at once.
                        self.failed("heartbeat", &status);
                        self.status.send_modify(|s| s.registered = false);
                        continue 'register;
                    }
                    Err(status) => {
                        self.failed("heartbeat", &status);
                        wait = backoff.next().min(self.interval);
                    }
                }
            }
        }
        let mode = *self.mode.borrow();
        // NOT_FOUND only means there was nothing to undo (a registration cut short that never
        // landed, or a server that forgot us).
        if mode == Mode::Stopping && (cut_short || self.status.borrow().registered) {
            let request = pb::DeregisterRequest { id: self.spec.id.clone() };
            match tokio::time::timeout(DEREGISTER_TIMEOUT, self.client.deregister(request)).await {
                Ok(Ok(_)) => {}
                Ok(Err(status)) if status.code() == tonic::Code::NotFound => {}
                Ok(Err(status)) => self.failed("deregistration", &status),
                Err(_) => tracing::warn!("deregistration of service {} timed out", self.spec.id),
            }
            self.status.send_modify(|s| s.registered = false);
        }
    }
}
