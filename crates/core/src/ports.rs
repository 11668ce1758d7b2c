//! Ports: the traits through which Baton's crates reach time, health probes and event consumers.
//! Hand-written fakes live in [`crate::fakes`] behind the `test-util` feature.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::Timestamp;
use crate::directory::Health;
use crate::ids::{ExecutionId, ServiceId, StepId};
use crate::service::CheckKind;
use crate::store::StoreError;

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

    /// Hands over an event whose effects must wait until the sink has kept it (a durable
    /// journal acknowledges after its write is on disk): the producer awaits the answer
    /// before acting on the event, and treats a refusal as a failure with the sink's reason.
    /// By default the event is published and kept at once.
    fn record(&self, event: E) -> Recorded {
        self.publish(event);
        Recorded::kept()
    }
}

/// Why a sink refused an event handed over with [`EventSink::record`]. The producer treats
/// every refusal as the failure of what the event reported; the kinds tell why.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum Refusal {
    /// The execution ended before the event could be kept.
    #[error("the execution has ended")]
    Ended,
    /// The execution ended while the event waited for its journal write.
    #[error("the execution ended before the event was journaled")]
    EndedBeforeJournaled,
    /// Nothing here takes the execution's events.
    #[error("execution {0} is not running here")]
    NotRunning(ExecutionId),
    /// A step's output is over the size limit.
    #[error("output of step {step:?} is {size} bytes, the limit is {limit}")]
    OutputTooLarge {
        /// The step.
        step: StepId,
        /// The output's size as JSON text.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// The journal could not be written.
    #[error(transparent)]
    Journal(#[from] StoreError),
    /// A sink outside Baton's own said no, with why.
    #[error("{0}")]
    Other(String),
}

impl From<&str> for Refusal {
    fn from(reason: &str) -> Self {
        Self::Other(reason.to_owned())
    }
}

impl From<String> for Refusal {
    fn from(reason: String) -> Self {
        Self::Other(reason)
    }
}

/// The sink's answer to [`EventSink::record`]: resolves to `Ok` once the event is kept, or to
/// `Err` with why it was refused. Answers known at once cost no allocation.
#[must_use = "the event's effects must wait for this answer"]
pub struct Recorded(RecordedState);

enum RecordedState {
    Ready(Option<Result<(), Refusal>>),
    Pending(Pin<Box<dyn Future<Output = Result<(), Refusal>> + Send>>),
}

impl Recorded {
    /// Kept already.
    pub fn kept() -> Self {
        Self(RecordedState::Ready(Some(Ok(()))))
    }

    /// Refused, with why.
    pub fn refused(reason: impl Into<Refusal>) -> Self {
        Self(RecordedState::Ready(Some(Err(reason.into()))))
    }

    /// Answered by `answer` later.
    pub fn later(answer: impl Future<Output = Result<(), Refusal>> + Send + 'static) -> Self {
        Self(RecordedState::Pending(Box::pin(answer)))
    }
}

impl Future for Recorded {
    type Output = Result<(), Refusal>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match &mut self.get_mut().0 {
            RecordedState::Ready(answer) => Poll::Ready(answer.take().unwrap_or(Ok(()))),
            RecordedState::Pending(answer) => answer.as_mut().poll(cx),
        }
    }
}

impl fmt::Debug for Recorded {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match &self.0 {
            RecordedState::Ready(Some(Ok(()))) => "kept",
            RecordedState::Ready(Some(Err(_))) => "refused",
            RecordedState::Ready(None) => "answered",
            RecordedState::Pending(_) => "pending",
        };
        f.debug_tuple("Recorded").field(&state).finish()
    }
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
