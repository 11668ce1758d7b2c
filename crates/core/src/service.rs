//! What a service is and what it can do: [`ServiceSpec`], built only from a valid [`ServiceDefinition`].

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use url::Url;

use crate::access::{Credentials, TlsSettings};
use crate::call::GrpcMethod;
use crate::error::{Error, Result};
use crate::ids::{ServiceId, validate_name};

/// How Baton reaches a service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "protocol", rename_all = "lowercase", deny_unknown_fields)]
pub enum Endpoint {
    /// JSON over HTTP POST to `url`.
    Http {
        /// Absolute `http` or `https` URL.
        url: String,
    },
    /// A gRPC server at `url`, called one unary method per step, JSON converted to protobuf.
    Grpc {
        /// Absolute `http`, `https` or `grpc` URL (`http` and `grpc`: plaintext HTTP/2).
        url: String,
        /// The method steps call unless they name another.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        method: Option<GrpcMethod>,
        /// The service's messages, for a server without reflection; `None`: Baton asks the
        /// server by reflection.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        descriptor_set: Option<DescriptorSet>,
    },
    /// Workers pull tasks from a named queue.
    Worker {
        /// The queue's name.
        queue: String,
    },
}

impl Endpoint {
    /// The protocol of this endpoint.
    pub fn protocol(&self) -> Protocol {
        match self {
            Self::Http { .. } => Protocol::Http,
            Self::Grpc { .. } => Protocol::Grpc,
            Self::Worker { .. } => Protocol::Worker,
        }
    }

    fn validate(&self) -> Result<()> {
        match self {
            Self::Http { url } => check_url("endpoint.url", url, &["http", "https"]).map(drop),
            Self::Grpc { url, descriptor_set, .. } => {
                check_url("endpoint.url", url, &["http", "https", "grpc"])?;
                match descriptor_set {
                    Some(set) if set.0.is_empty() => {
                        Err(Error::invalid("endpoint.descriptor_set", "", "must not be empty"))
                    }
                    Some(set) if set.0.len() > MAX_DESCRIPTOR_SET_BYTES => Err(Error::invalid(
                        "endpoint.descriptor_set",
                        format!("{} bytes", set.0.len()),
                        format!("is larger than {MAX_DESCRIPTOR_SET_BYTES} bytes"),
                    )),
                    _ => Ok(()),
                }
            }
            Self::Worker { queue } => validate_name("endpoint.queue", queue),
        }
    }
}

/// The largest descriptor set a gRPC endpoint may carry.
pub const MAX_DESCRIPTOR_SET_BYTES: usize = 1024 * 1024;

/// An encoded `google.protobuf.FileDescriptorSet`: the messages of a gRPC service, written in
/// JSON and YAML as base64. Shared, so that a call clones no bytes.
#[derive(Clone, PartialEq, Eq)]
pub struct DescriptorSet(Arc<[u8]>);

impl DescriptorSet {
    /// Wraps encoded bytes (checked by whoever decodes them).
    pub fn new(bytes: &[u8]) -> Self {
        Self(bytes.into())
    }

    /// The encoded bytes.
    pub fn bytes(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Debug for DescriptorSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DescriptorSet({} bytes)", self.0.len())
    }
}

impl Serialize for DescriptorSet {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> std::result::Result<S::Ok, S::Error> {
        use base64::Engine as _;
        serializer.serialize_str(&base64::engine::general_purpose::STANDARD.encode(&self.0))
    }
}

impl<'de> Deserialize<'de> for DescriptorSet {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> std::result::Result<Self, D::Error> {
        use base64::Engine as _;
        let text = String::deserialize(deserializer)?;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(text.trim())
            .map_err(|e| serde::de::Error::custom(format!("descriptor_set is not base64: {e}")))?;
        Ok(Self(bytes.into()))
    }
}

/// Parses `text` as an absolute URL with a host and one of `schemes`, and no credentials:
/// whoever may read the registry sees endpoints, so a `user:password@` would be shown to all of
/// them. An error shows the URL without its credentials.
pub fn check_url(field: &str, text: &str, schemes: &[&str]) -> Result<Url> {
    let shown = without_credentials(text);
    let url = Url::parse(text).map_err(|e| Error::invalid(field, &shown, e.to_string()))?;
    if !schemes.contains(&url.scheme()) {
        return Err(Error::invalid(field, &shown, format!("scheme must be one of {}", schemes.join(", "))));
    }
    if url.host().is_none() {
        return Err(Error::invalid(field, &shown, "must name a host"));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(Error::invalid(
            field,
            &shown,
            "must not carry credentials (user:password@): everyone who may read the registry sees endpoints; \
             name a secret in the service's `credentials` instead",
        ));
    }
    Ok(url)
}

/// `text` with whatever precedes an `@` in its authority shown as `***`:
/// `http://user:secret@host/` -> `http://***@host/`. Text that is not a URL is read the same way.
pub fn without_credentials(text: &str) -> String {
    let Some(start) = text.find("://").map(|i| i + 3) else { return text.to_owned() };
    let authority_end = text[start..].find(['/', '?', '#']).map_or(text.len(), |i| start + i);
    match text[start..authority_end].rfind('@') {
        Some(at) => format!("{}***{}", &text[..start], &text[start + at..]),
        None => text.to_owned(),
    }
}

/// The wire protocols Baton speaks, as a closed set so the registry can index them densely.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// JSON over HTTP.
    Http,
    /// gRPC.
    Grpc,
    /// A pull queue served by workers.
    Worker,
}

impl Protocol {
    /// Every protocol, in index order.
    pub const ALL: [Protocol; 3] = [Protocol::Http, Protocol::Grpc, Protocol::Worker];
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Http => "http",
            Self::Grpc => "grpc",
            Self::Worker => "worker",
        })
    }
}

/// Quality of service a service promises (or was measured at).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Qos {
    /// Median latency in milliseconds.
    pub latency_p50_ms: f64,
    /// 99th percentile latency in milliseconds; at least the median.
    pub latency_p99_ms: f64,
    /// Sustained requests per second.
    pub throughput_rps: f64,
    /// Cost per call, in the operator's unit.
    pub cost: f64,
    /// Fraction of calls that succeed, in `[0, 1]`.
    pub availability: f64,
}

impl Default for Qos {
    fn default() -> Self {
        Self { latency_p50_ms: 0.0, latency_p99_ms: 0.0, throughput_rps: 0.0, cost: 0.0, availability: 1.0 }
    }
}

impl Qos {
    /// Checks that every figure is finite and in range.
    pub fn validate(&self) -> Result<()> {
        let fields = [
            ("qos.latency_p50_ms", self.latency_p50_ms),
            ("qos.latency_p99_ms", self.latency_p99_ms),
            ("qos.throughput_rps", self.throughput_rps),
            ("qos.cost", self.cost),
            ("qos.availability", self.availability),
        ];
        for (field, value) in fields {
            if !value.is_finite() || value < 0.0 {
                return Err(Error::invalid(field, value, "must be a finite number >= 0"));
            }
        }
        if self.availability > 1.0 {
            return Err(Error::invalid("qos.availability", self.availability, "must be in [0, 1]"));
        }
        if self.latency_p99_ms < self.latency_p50_ms {
            return Err(Error::invalid(
                "qos.latency_p99_ms",
                self.latency_p99_ms,
                format!("must be at least latency_p50_ms ({})", self.latency_p50_ms),
            ));
        }
        Ok(())
    }
}

/// How callers authenticate to a service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuthScheme {
    /// No authentication.
    None,
    /// A static API key.
    ApiKey,
    /// A bearer token.
    Bearer,
    /// Mutual TLS client certificates.
    Mtls,
    /// OAuth 2 access tokens.
    Oauth2,
}

impl AuthScheme {
    /// Every scheme, in index order.
    pub const ALL: [AuthScheme; 5] =
        [AuthScheme::None, AuthScheme::ApiKey, AuthScheme::Bearer, AuthScheme::Mtls, AuthScheme::Oauth2];
}

/// Transport encryption, ordered from weakest to strongest.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Encryption {
    /// Plain text.
    #[default]
    None,
    /// Server-authenticated TLS.
    Tls,
    /// Mutually authenticated TLS.
    Mtls,
}

impl Encryption {
    /// Every level, weakest first.
    pub const ALL: [Encryption; 3] = [Encryption::None, Encryption::Tls, Encryption::Mtls];
}

/// What a service offers on security.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SecurityProfile {
    /// Schemes the service accepts.
    pub auth_schemes: Vec<AuthScheme>,
    /// Transport encryption it offers.
    pub encryption: Encryption,
    /// Compliance tags it holds, e.g. `pci-dss`, `hipaa`.
    pub compliance: Vec<String>,
}

/// How the registry learns whether a service is healthy.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum CheckKind {
    /// No check: the service counts as passing while registered.
    #[default]
    None,
    /// The service heartbeats; missing `ttl` turns it critical.
    Ttl {
        /// How long a heartbeat keeps the service passing.
        ttl: Duration,
    },
    /// HTTP GET of `url`; 2xx passes.
    Http {
        /// Absolute `http` or `https` URL.
        url: String,
    },
    /// `grpc.health.v1.Health/Check` against `url` for `service` (empty: the whole server).
    Grpc {
        /// Absolute `http` or `https` URL of the gRPC server.
        url: String,
        /// Service name to ask about.
        service: String,
    },
}

/// A service's health check and the thresholds that damp flapping. Written flat:
/// `{kind: http, url: ..., interval: 10s, unhealthy_threshold: 3}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "HealthCheckDocument", into = "HealthCheckDocument")]
pub struct HealthCheck {
    /// What to check.
    pub kind: CheckKind,
    /// Time between active probes.
    pub interval: Duration,
    /// How long one probe may take.
    pub timeout: Duration,
    /// Passing probes in a row that turn a critical service passing.
    pub healthy_threshold: u32,
    /// Failing probes in a row that turn a passing service critical.
    pub unhealthy_threshold: u32,
    /// Deregister a service that stays critical this long.
    pub deregister_after: Option<Duration>,
}

/// A health check as written; serde cannot deny unknown fields through `flatten`, so the flat
/// form is spelled out here.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct HealthCheckDocument {
    kind: String,
    #[serde(with = "crate::duration::serde_text_opt", skip_serializing_if = "Option::is_none")]
    ttl: Option<Duration>,
    #[serde(skip_serializing_if = "Option::is_none")]
    url: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    service: Option<String>,
    #[serde(with = "crate::duration::serde_text")]
    interval: Duration,
    #[serde(with = "crate::duration::serde_text")]
    timeout: Duration,
    healthy_threshold: u32,
    unhealthy_threshold: u32,
    #[serde(with = "crate::duration::serde_text_opt", skip_serializing_if = "Option::is_none")]
    deregister_after: Option<Duration>,
}

impl Default for HealthCheckDocument {
    fn default() -> Self {
        HealthCheck::default().into()
    }
}

impl TryFrom<HealthCheckDocument> for HealthCheck {
    type Error = Error;

    fn try_from(doc: HealthCheckDocument) -> Result<Self> {
        let misplaced = |field: &str| {
            Error::invalid(format!("health_check.{field}"), &doc.kind, format!("does not apply to kind {:?}", doc.kind))
        };
        let kind = match (doc.kind.as_str(), doc.ttl, doc.url, doc.service) {
            ("none", None, None, None) => CheckKind::None,
            ("ttl", Some(ttl), None, None) => CheckKind::Ttl { ttl },
            ("ttl", None, None, None) => return Err(Error::invalid("health_check.ttl", "", "kind ttl needs a ttl")),
            ("http", None, Some(url), None) => CheckKind::Http { url },
            ("grpc", None, Some(url), service) => CheckKind::Grpc { url, service: service.unwrap_or_default() },
            ("http" | "grpc", None, None, _) => {
                return Err(Error::invalid("health_check.url", "", format!("kind {} needs a url", doc.kind)));
            }
            ("none" | "ttl" | "http" | "grpc", ttl, url, _) => {
                let field = if ttl.is_some() && doc.kind != "ttl" {
                    "ttl"
                } else if url.is_some() {
                    "url"
                } else {
                    "service"
                };
                return Err(misplaced(field));
            }
            (other, ..) => {
                return Err(Error::invalid("health_check.kind", other, "must be none, ttl, http or grpc"));
            }
        };
        Ok(Self {
            kind,
            interval: doc.interval,
            timeout: doc.timeout,
            healthy_threshold: doc.healthy_threshold,
            unhealthy_threshold: doc.unhealthy_threshold,
            deregister_after: doc.deregister_after,
        })
    }
}

impl From<HealthCheck> for HealthCheckDocument {
    fn from(check: HealthCheck) -> Self {
        let (kind, ttl, url, service) = match check.kind {
            CheckKind::None => ("none", None, None, None),
            CheckKind::Ttl { ttl } => ("ttl", Some(ttl), None, None),
            CheckKind::Http { url } => ("http", None, Some(url), None),
            CheckKind::Grpc { url, service } => ("grpc", None, Some(url), Some(service)),
        };
        Self {
            kind: kind.to_owned(),
            ttl,
            url,
            service,
            interval: check.interval,
            timeout: check.timeout,
            healthy_threshold: check.healthy_threshold,
            unhealthy_threshold: check.unhealthy_threshold,
            deregister_after: check.deregister_after,
        }
    }
}

impl Default for HealthCheck {
    fn default() -> Self {
        Self {
            kind: CheckKind::None,
            interval: Duration::from_secs(10),
            timeout: Duration::from_secs(2),
            healthy_threshold: 2,
            unhealthy_threshold: 3,
            deregister_after: None,
        }
    }
}

impl HealthCheck {
    fn validate(&self) -> Result<()> {
        match &self.kind {
            CheckKind::None => {}
            CheckKind::Ttl { ttl } => {
                if ttl.is_zero() {
                    return Err(Error::invalid("health_check.ttl", "0s", "must be positive"));
                }
            }
            CheckKind::Http { url } => drop(check_url("health_check.url", url, &["http", "https"])?),
            CheckKind::Grpc { url, .. } => drop(check_url("health_check.url", url, &["http", "https", "grpc"])?),
        }
        let positive = [("health_check.interval", self.interval), ("health_check.timeout", self.timeout)];
        for (field, value) in positive {
            if value.is_zero() {
                return Err(Error::invalid(field, "0s", "must be positive"));
            }
        }
        let thresholds = [
            ("health_check.healthy_threshold", self.healthy_threshold),
            ("health_check.unhealthy_threshold", self.unhealthy_threshold),
        ];
        for (field, value) in thresholds {
            if value == 0 {
                return Err(Error::invalid(field, value, "must be at least 1"));
            }
        }
        Ok(())
    }
}

/// A service as submitted: every field public, nothing checked yet. [`ServiceSpec::new`] checks it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceDefinition {
    /// Unique id, `[a-z0-9][a-z0-9._-]{0,127}`.
    pub id: String,
    /// Human-readable name; defaults to the id.
    #[serde(default)]
    pub name: String,
    /// Free-text version of the service, e.g. `1.4.2`.
    #[serde(default)]
    pub version: String,
    /// Where and how to call it.
    pub endpoint: Endpoint,
    /// Functionality names it provides, e.g. `payment.charge`.
    #[serde(default)]
    pub capabilities: Vec<String>,
    /// Concepts it needs as input.
    #[serde(default)]
    pub inputs: Vec<String>,
    /// Concepts it produces.
    #[serde(default)]
    pub outputs: Vec<String>,
    /// Data formats it reads and writes, e.g. `json`.
    #[serde(default)]
    pub formats: Vec<String>,
    /// Promised quality of service.
    #[serde(default)]
    pub qos: Qos,
    /// Security it offers.
    #[serde(default)]
    pub security: SecurityProfile,
    /// Maximum calls in flight at once.
    #[serde(default = "default_capacity")]
    pub capacity: u32,
    /// How its health is known.
    #[serde(default)]
    pub health_check: HealthCheck,
    /// Free-form key/value labels.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// What Baton presents on every call, by secret name; `None`: nothing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials: Option<Credentials>,
    /// How Baton checks an `https` endpoint's certificate and which one it presents.
    #[serde(default, skip_serializing_if = "TlsSettings::is_empty")]
    pub tls: TlsSettings,
}

/// The capacity of a definition that does not state one.
pub const DEFAULT_CAPACITY: u32 = 64;

fn default_capacity() -> u32 {
    DEFAULT_CAPACITY
}

/// Credentials and TLS settings fit the endpoint: none for a worker queue, TLS settings
/// only for an `https` URL.
fn validate_access(definition: &ServiceDefinition) -> Result<()> {
    let url = match &definition.endpoint {
        Endpoint::Http { url } | Endpoint::Grpc { url, .. } => url,
        Endpoint::Worker { .. } if definition.credentials.is_some() => {
            return Err(Error::invalid("credentials", "{..}", "a worker endpoint is not called"));
        }
        Endpoint::Worker { .. } if !definition.tls.is_empty() => {
            return Err(Error::invalid("tls", "{..}", "a worker endpoint is not called"));
        }
        Endpoint::Worker { .. } => return Ok(()),
    };
    if let Some(credentials) = &definition.credentials {
        credentials.validate()?;
    }
    definition.tls.validate()?;
    if !definition.tls.is_empty() && !url.starts_with("https://") {
        return Err(Error::invalid("tls", url, "TLS settings need an https endpoint"));
    }
    Ok(())
}

/// Longest capability, concept, format, compliance tag or label accepted, in bytes.
pub const MAX_TERM_LEN: usize = 256;
/// Most entries accepted in any one list of a definition.
pub const MAX_LIST_LEN: usize = 1024;

fn check_terms(field: &str, terms: &[String]) -> Result<()> {
    if terms.len() > MAX_LIST_LEN {
        return Err(Error::invalid(field, terms.len(), format!("has more than {MAX_LIST_LEN} entries")));
    }
    for (i, term) in terms.iter().enumerate() {
        check_term(&format!("{field}[{i}]"), term)?;
    }
    Ok(())
}

/// Checks a free-text term: non-empty, at most [`MAX_TERM_LEN`] bytes, no control characters or spaces.
pub fn check_term(field: &str, term: &str) -> Result<()> {
    if term.is_empty() {
        return Err(Error::invalid(field, term, "must not be empty"));
    }
    if term.len() > MAX_TERM_LEN {
        return Err(Error::invalid(field, term, format!("is longer than {MAX_TERM_LEN} bytes")));
    }
    if term.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err(Error::invalid(field, term, "must not contain spaces or control characters"));
    }
    Ok(())
}

/// A valid service: the only way to build one is [`ServiceSpec::new`], which checks every field.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "ServiceDefinition", into = "ServiceDefinition")]
pub struct ServiceSpec {
    id: ServiceId,
    definition: ServiceDefinition,
}

impl ServiceSpec {
    /// Checks `definition` and wraps it; the error names the first offending field and value.
    pub fn new(mut definition: ServiceDefinition) -> Result<Self> {
        let id = ServiceId::new(&definition.id)?;
        if definition.name.is_empty() {
            definition.name = definition.id.clone();
        }
        if definition.name.len() > MAX_TERM_LEN {
            return Err(Error::invalid("name", &definition.name, format!("is longer than {MAX_TERM_LEN} bytes")));
        }
        if definition.version.len() > MAX_TERM_LEN {
            return Err(Error::invalid("version", &definition.version, format!("is longer than {MAX_TERM_LEN} bytes")));
        }
        definition.endpoint.validate()?;
        validate_access(&definition)?;
        check_terms("capabilities", &definition.capabilities)?;
        check_terms("inputs", &definition.inputs)?;
        check_terms("outputs", &definition.outputs)?;
        check_terms("formats", &definition.formats)?;
        check_terms("security.compliance", &definition.security.compliance)?;
        if definition.capabilities.is_empty() && definition.outputs.is_empty() {
            return Err(Error::invalid("capabilities", "[]", "a service needs at least one capability or one output"));
        }
        definition.qos.validate()?;
        if definition.capacity == 0 {
            return Err(Error::invalid("capacity", 0, "must be at least 1"));
        }
        definition.health_check.validate()?;
        if definition.labels.len() > MAX_LIST_LEN {
            return Err(Error::invalid(
                "labels",
                definition.labels.len(),
                format!("has more than {MAX_LIST_LEN} entries"),
            ));
        }
        for (key, value) in &definition.labels {
            check_term("labels", key)?;
            if value.len() > MAX_TERM_LEN {
                return Err(Error::invalid(
                    format!("labels.{key}"),
                    value,
                    format!("is longer than {MAX_TERM_LEN} bytes"),
                ));
            }
        }
        // Sets, not lists: the index and the matcher treat them so, so store them so.
        for list in [
            &mut definition.capabilities,
            &mut definition.inputs,
            &mut definition.outputs,
            &mut definition.formats,
            &mut definition.security.compliance,
        ] {
            list.sort_unstable();
            list.dedup();
        }
        definition.security.auth_schemes.sort_unstable();
        definition.security.auth_schemes.dedup();
        Ok(Self { id, definition })
    }

    /// Parses and checks a JSON definition.
    pub fn from_json(text: &str) -> Result<Self> {
        let definition: ServiceDefinition =
            serde_json::from_str(text).map_err(|e| Error::invalid("definition", "json", e.to_string()))?;
        Self::new(definition)
    }

    /// The service's id.
    pub fn id(&self) -> &ServiceId {
        &self.id
    }
    /// Human-readable name.
    pub fn name(&self) -> &str {
        &self.definition.name
    }
    /// Free-text version.
    pub fn version(&self) -> &str {
        &self.definition.version
    }
    /// Where and how to call it.
    pub fn endpoint(&self) -> &Endpoint {
        &self.definition.endpoint
    }
    /// The endpoint's protocol.
    pub fn protocol(&self) -> Protocol {
        self.definition.endpoint.protocol()
    }
    /// Capabilities, sorted and without duplicates.
    pub fn capabilities(&self) -> &[String] {
        &self.definition.capabilities
    }
    /// Input concepts, sorted and without duplicates.
    pub fn inputs(&self) -> &[String] {
        &self.definition.inputs
    }
    /// Output concepts, sorted and without duplicates.
    pub fn outputs(&self) -> &[String] {
        &self.definition.outputs
    }
    /// Data formats, sorted and without duplicates.
    pub fn formats(&self) -> &[String] {
        &self.definition.formats
    }
    /// Promised quality of service.
    pub fn qos(&self) -> &Qos {
        &self.definition.qos
    }
    /// Security it offers.
    pub fn security(&self) -> &SecurityProfile {
        &self.definition.security
    }
    /// Maximum calls in flight, at least 1.
    pub fn capacity(&self) -> u32 {
        self.definition.capacity
    }
    /// Its health check.
    pub fn health_check(&self) -> &HealthCheck {
        &self.definition.health_check
    }
    /// Its labels.
    pub fn labels(&self) -> &BTreeMap<String, String> {
        &self.definition.labels
    }
    /// What Baton presents on every call.
    pub fn credentials(&self) -> Option<&Credentials> {
        self.definition.credentials.as_ref()
    }
    /// How Baton checks its certificate and which one it presents.
    pub fn tls(&self) -> &TlsSettings {
        &self.definition.tls
    }
    /// The checked definition, normalised (sets sorted, name defaulted).
    pub fn definition(&self) -> &ServiceDefinition {
        &self.definition
    }
    /// Gives back the normalised definition.
    pub fn into_definition(self) -> ServiceDefinition {
        self.definition
    }
}

impl TryFrom<ServiceDefinition> for ServiceSpec {
    type Error = Error;
    fn try_from(definition: ServiceDefinition) -> Result<Self> {
        Self::new(definition)
    }
}

impl From<ServiceSpec> for ServiceDefinition {
    fn from(spec: ServiceSpec) -> Self {
        spec.definition
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> serde_json::Value {
        serde_json::json!({
            "id": "pay",
            "endpoint": {"protocol": "http", "url": "http://127.0.0.1:8080/charge"},
            "capabilities": ["payment.charge"],
        })
    }

    fn check(patch: serde_json::Value, expected: Option<&str>) {
        let mut doc = base();
        for (k, v) in patch.as_object().unwrap() {
            doc[k] = v.clone();
        }
        let got = serde_json::from_value::<ServiceDefinition>(doc)
            .map_err(|e| e.to_string())
            .and_then(|d| ServiceSpec::new(d).map_err(|e| e.to_string()))
            .err();
        match (got.as_deref(), expected) {
            (None, None) => {}
            (Some(got), Some(want)) => assert!(got.contains(want), "{got:?} should contain {want:?}"),
            (got, want) => panic!("patch {patch}: got {got:?}, want {want:?}"),
        }
    }

    #[test]
    fn rejections_name_the_field_and_value() {
        check(serde_json::json!({}), None);
        check(serde_json::json!({"id": "Pay"}), Some(r#"invalid id "Pay""#));
        check(
            serde_json::json!({"endpoint": {"protocol": "http", "url": "not a url"}}),
            Some(r#"invalid endpoint.url "not a url""#),
        );
        check(
            serde_json::json!({"endpoint": {"protocol": "http", "url": "ftp://x/y"}}),
            Some("scheme must be one of http, https"),
        );
        check(
            serde_json::json!({"endpoint": {"protocol": "worker", "queue": "Images"}}),
            Some(r#"invalid endpoint.queue "Images""#),
        );
        check(serde_json::json!({"capabilities": []}), Some("at least one capability or one output"));
        check(serde_json::json!({"capabilities": [], "outputs": ["receipt"]}), None);
        check(serde_json::json!({"capabilities": ["a b"]}), Some(r#"invalid capabilities[0] "a b""#));
        check(
            serde_json::json!({"qos": {"availability": 1.5}}),
            Some(r#"invalid qos.availability "1.5": must be in [0, 1]"#),
        );
        check(serde_json::json!({"qos": {"latency_p50_ms": -1.0}}), Some(r#"invalid qos.latency_p50_ms "-1""#));
        check(
            serde_json::json!({"qos": {"latency_p50_ms": 10.0, "latency_p99_ms": 5.0}}),
            Some("must be at least latency_p50_ms (10)"),
        );
        check(serde_json::json!({"capacity": 0}), Some(r#"invalid capacity "0": must be at least 1"#));
        check(serde_json::json!({"health_check": {"kind": "ttl", "ttl": "0s"}}), Some("invalid health_check.ttl"));
        check(serde_json::json!({"health_check": {"kind": "http", "url": "x"}}), Some("invalid health_check.url"));
        check(
            serde_json::json!({"health_check": {"unhealthy_threshold": 0}}),
            Some("invalid health_check.unhealthy_threshold"),
        );
        check(serde_json::json!({"health_check": {"kind": "ttl"}}), Some("kind ttl needs a ttl"));
        check(serde_json::json!({"health_check": {"kind": "http"}}), Some("kind http needs a url"));
        check(
            serde_json::json!({"health_check": {"kind": "none", "url": "http://x/"}}),
            Some("invalid health_check.url"),
        );
        check(serde_json::json!({"health_check": {"kind": "smoke"}}), Some(r#"invalid health_check.kind "smoke""#));
        check(serde_json::json!({"health_check": {"kind": "grpc", "url": "http://127.0.0.1:1", "service": "x"}}), None);
        check(serde_json::json!({"health_check": {"kind": "none", "probe": 1}}), Some("unknown field `probe`"));
        check(serde_json::json!({"colour": "blue"}), Some("unknown field `colour`"));
        check(serde_json::json!({"qos": {"latency": 1}}), Some("unknown field `latency`"));
    }

    #[test]
    fn urls_with_credentials_are_refused_without_showing_them() {
        for (patch, field) in [
            (
                serde_json::json!({"endpoint": {"protocol": "http", "url": "http://user:s3cret@pay.internal/charge"}}),
                "endpoint.url",
            ),
            (
                serde_json::json!({"endpoint": {"protocol": "grpc", "url": "grpc://:s3cret@pay.internal:50051"}}),
                "endpoint.url",
            ),
            (
                serde_json::json!({"endpoint": {"protocol": "http", "url": "http://s3cret@pay.internal/"}}),
                "endpoint.url",
            ),
            (
                serde_json::json!({"health_check": {"kind": "http", "url": "https://ops:s3cret@pay.internal/health"}}),
                "health_check.url",
            ),
            // Refused for another reason: the secret is still not shown.
            (
                serde_json::json!({"endpoint": {"protocol": "http", "url": "ftp://user:s3cret@pay.internal/"}}),
                "endpoint.url",
            ),
        ] {
            let mut doc = base();
            for (k, v) in patch.as_object().unwrap() {
                doc[k] = v.clone();
            }
            let definition = serde_json::from_value::<ServiceDefinition>(doc).unwrap();
            let error = ServiceSpec::new(definition).unwrap_err();
            let message = error.to_string();
            assert!(matches!(&error, Error::Invalid { field: f, .. } if f == field), "{message}");
            assert!(!message.contains("s3cret"), "{message}");
            assert!(message.contains("***@pay.internal"), "{message}");
        }
        check(
            serde_json::json!({"endpoint": {"protocol": "http", "url": "http://user:pw@pay.internal/"}}),
            Some("must not carry credentials"),
        );
    }

    #[test]
    fn specs_normalise_sets_and_round_trip_through_json_and_yaml() {
        let spec = ServiceSpec::from_json(
            r#"{"id":"img","endpoint":{"protocol":"worker","queue":"images"},
                "capabilities":["resize","crop","resize"],"formats":["png"],
                "security":{"auth_schemes":["mtls","bearer","mtls"],"encryption":"tls"},
                "health_check":{"kind":"ttl","ttl":"30s","deregister_after":"10m"},
                "labels":{"team":"media"}}"#,
        )
        .unwrap();
        assert_eq!(spec.name(), "img");
        assert_eq!(spec.capabilities(), ["crop", "resize"]);
        assert_eq!(spec.security().auth_schemes, [AuthScheme::Bearer, AuthScheme::Mtls]);
        assert_eq!(spec.protocol(), Protocol::Worker);
        assert_eq!(spec.health_check().deregister_after, Some(Duration::from_secs(600)));
        let json = serde_json::to_string(&spec).unwrap();
        assert_eq!(serde_json::from_str::<ServiceSpec>(&json).unwrap(), spec);
        let yaml = serde_yaml::to_string(&spec).unwrap();
        assert_eq!(serde_yaml::from_str::<ServiceSpec>(&yaml).unwrap(), spec);
    }
}
