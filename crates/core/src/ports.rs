//! Ports: the traits through which Baton's crates reach time, health probes and event consumers.
//! Hand-written fakes live in [`crate::fakes`] behind the `test-util` feature.

use std::fmt;
use std::future::Future;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::Timestamp;
use crate::directory::Health;
use crate::ids::ServiceId;
use crate::service::CheckKind;

/// Wall-clock time, so tests can control it.
pub trait Clock: Send + Sync + fmt::Debug + 'static {
    /// The current time.
    fn now(&self) -> Timestamp;
}

/// The system's clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Timestamp {
        chrono::Utc::now()
    }
}

/// What a health probe checks: one active check of one service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeTarget {
    /// The service probed.
    pub service: ServiceId,
    /// The check to run (HTTP or gRPC; the others are not probed).
    pub check: CheckKind,
    /// How long the probe may take; past it, the probe fails.
    pub timeout: Duration,
}

/// A probe's verdict: `Ok` with what the service said, or `Err` with why it failed.
pub type ProbeResult = Result<String, String>;

/// Runs one active health check.
pub trait HealthProbe: Send + Sync + 'static {
    /// Probes `target`; implementations enforce `target.timeout` themselves.
    fn probe(&self, target: &ProbeTarget) -> impl Future<Output = ProbeResult> + Send;
}

/// Receives events as they happen; must not block.
pub trait EventSink<E>: Send + Sync + 'static {
    /// Hands over one event.
    fn publish(&self, event: E);
}

/// An [`EventSink`] that drops everything.
#[derive(Debug, Default, Clone, Copy)]
pub struct DiscardEvents;

impl<E> EventSink<E> for DiscardEvents {
    fn publish(&self, _event: E) {}
}

/// Why a service left the registry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeregisterReason {
    /// Someone asked.
    Requested,
    /// It stayed critical longer than its `deregister_after`.
    CriticalTooLong,
}

/// What the registry reports as it changes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum RegistryEvent {
    /// A new service.
    Registered {
        /// Its id.
        id: ServiceId,
    },
    /// An existing service got a new spec.
    Updated {
        /// Its id.
        id: ServiceId,
    },
    /// A service left.
    Deregistered {
        /// Its id.
        id: ServiceId,
        /// Why.
        reason: DeregisterReason,
    },
    /// A service's health verdict changed.
    HealthChanged {
        /// Its id.
        id: ServiceId,
        /// The verdict before.
        from: Health,
        /// The verdict now.
        to: Health,
        /// What the deciding check said.
        output: String,
    },
}
