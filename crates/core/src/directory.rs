//! The service directory port: what the gRPC layer, the planner and the executor ask of a
//! registry, with the documented match score every implementation ranks by.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::Timestamp;
use crate::api::BoxFuture;
use crate::error::Result;
use crate::ids::ServiceId;
use crate::requirements::ServiceRequirements;
use crate::service::{Qos, ServiceSpec};

/// A service's health as the registry believes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Health {
    /// No verdict yet: an active probe has not passed.
    Unknown,
    /// Eligible for traffic.
    Passing,
    /// Not eligible: a missed TTL or failing probes.
    Critical,
}

/// The live state of a registered service.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServiceStatus {
    /// Health verdict.
    pub health: Health,
    /// Calls in flight now.
    pub in_flight: u32,
    /// Recent success rate of probes and heartbeats, in `[0, 1]` (1 when never checked).
    pub success_rate: f64,
    /// When it was (re-)registered.
    pub registered_at: Timestamp,
    /// Its latest heartbeat, if any.
    pub last_heartbeat: Option<Timestamp>,
    /// What the latest check said.
    pub last_check_output: String,
}

/// A registered service with its live state.
#[derive(Debug, Clone, PartialEq)]
pub struct ServiceView {
    /// The spec, shared with the registry.
    pub spec: Arc<ServiceSpec>,
    /// Its live state when read.
    pub status: ServiceStatus,
}

/// One ranked answer of a find.
#[derive(Debug, Clone, PartialEq)]
pub struct Candidate {
    /// The matching service.
    pub service: ServiceView,
    /// Its match score in `[0, 1]`; higher is better. See [`match_score`].
    pub score: f64,
}

/// The answer of a find: the best candidates and how many matched in all.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Matches {
    /// Best first, at most the limit asked for.
    pub candidates: Vec<Candidate>,
    /// Every eligible match, before the limit.
    pub total: usize,
}

/// One page of a listing ordered by service id.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Page {
    /// The services of this page.
    pub services: Vec<ServiceView>,
    /// The id to pass as `after` for the next page; `None` on the last page.
    pub next_after: Option<ServiceId>,
}

/// What registering did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Registration {
    /// A new service.
    Created,
    /// An existing id got a new spec.
    Updated,
}

/// The number of candidates a find returns when the caller does not say.
pub const DEFAULT_FIND_LIMIT: usize = 16;

/// A service registry as its clients see it. The writes are asynchronous: in a cluster they
/// reach the shared table before they are answered; reads answer from memory.
pub trait ServiceDirectory: Send + Sync + 'static {
    /// Inserts or atomically replaces the service with `spec`'s id.
    fn register(&self, spec: ServiceSpec) -> BoxFuture<'_, Result<Registration>>;
    /// Removes a service.
    fn deregister<'a>(&'a self, id: &'a ServiceId) -> BoxFuture<'a, Result<()>>;
    /// Records a heartbeat and returns the service's status after it.
    fn heartbeat<'a>(&'a self, id: &'a ServiceId) -> BoxFuture<'a, Result<ServiceStatus>>;
    /// One service.
    fn get(&self, id: &ServiceId) -> Result<ServiceView>;
    /// Up to `limit` services with ids after `after`, in id order.
    fn list(&self, after: Option<&ServiceId>, limit: usize) -> Page;
    /// The best `limit` eligible services meeting `requirements`, and how many there are.
    fn find(&self, requirements: &ServiceRequirements, limit: usize) -> Result<Matches>;
}

/// True when a matching service may take traffic: passing health and capacity left.
pub fn is_eligible(spec: &ServiceSpec, health: Health, in_flight: u32) -> bool {
    health == Health::Passing && in_flight < spec.capacity()
}

/// The match score of an eligible service, in `[0, 1]`, higher is better:
///
/// `0.5 * qos_fit + 0.3 * headroom + 0.2 * success_rate`, where
/// - `qos_fit` is the mean of latency fit, cost fit and availability. Latency fit is
///   `1 - p99 / bound` under a latency bound, else `100 / (100 + p99_ms)`; cost fit is
///   `1 - cost / bound` under a cost bound, else `1 / (1 + cost)`;
/// - `headroom` is `1 - in_flight / capacity` (spreads load);
/// - `success_rate` is the recent probe and heartbeat success rate (health history).
///
/// Ties are broken by service id, so rankings are deterministic.
pub fn match_score(spec: &ServiceSpec, in_flight: u32, success_rate: f64, requirements: &ServiceRequirements) -> f64 {
    score_parts(spec.qos(), spec.capacity(), in_flight, success_rate, requirements)
}

/// [`match_score`] from the figures it reads, for callers that keep them apart from the spec.
pub fn score_parts(
    qos: &Qos,
    capacity: u32,
    in_flight: u32,
    success_rate: f64,
    requirements: &ServiceRequirements,
) -> f64 {
    let latency_fit = match requirements.max_latency_p99_ms {
        Some(bound) if bound > 0.0 => 1.0 - qos.latency_p99_ms / bound,
        _ => 100.0 / (100.0 + qos.latency_p99_ms),
    };
    let cost_fit = match requirements.max_cost {
        Some(bound) if bound > 0.0 => 1.0 - qos.cost / bound,
        _ => 1.0 / (1.0 + qos.cost),
    };
    let qos_fit = (latency_fit.clamp(0.0, 1.0) + cost_fit.clamp(0.0, 1.0) + qos.availability) / 3.0;
    let headroom = 1.0 - f64::from(in_flight.min(capacity)) / f64::from(capacity.max(1));
    0.5 * qos_fit + 0.3 * headroom + 0.2 * success_rate.clamp(0.0, 1.0)
}

/// Orders candidates best first: score descending, then id ascending.
pub fn rank(candidates: &mut [Candidate]) {
    candidates.sort_unstable_by(|a, b| {
        b.score.total_cmp(&a.score).then_with(|| a.service.spec.id().cmp(b.service.spec.id()))
    });
}
