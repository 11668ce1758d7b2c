//! What the server has seen lately, for people watching it: the [`Activity`] read model.
//!
//! The API ports answer what *is* (a service's spec and health, an execution's state); this one
//! answers what *happened* in the last minutes: executions started and ended per minute, each
//! service's recent calls with their observed latency and outcome, its health changes, open
//! circuit breakers and worker queue depths. The orchestrator keeps it in memory from what it
//! already tracks (the journal as it is written, registry events, breakers, queues), so it
//! starts empty after a restart and costs no storage. [`InMemoryActivity`](fakes::InMemoryActivity)
//! is the fake, behind the `test-util` feature.

use crate::Timestamp;
use crate::directory::Health;
use crate::ids::{ExecutionId, ServiceId, StepId};

/// How many minutes [`Overview::minutes`] covers.
pub const WINDOW_MINUTES: usize = 60;

/// Executions and task attempts of one minute.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MinuteCounts {
    /// The minute's start.
    pub start: Option<Timestamp>,
    /// Executions started.
    pub started: u64,
    /// Executions completed.
    pub completed: u64,
    /// Executions failed.
    pub failed: u64,
    /// Executions cancelled.
    pub cancelled: u64,
    /// Task attempts that ended.
    pub attempts: u64,
    /// Task attempts that failed (retryable or not).
    pub failed_attempts: u64,
}

/// A circuit breaker's state, as the executor keeps it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum BreakerStatus {
    /// Calls pass.
    #[default]
    Closed,
    /// Calls are refused until the cool-down ends.
    Open,
    /// One probe call is let through.
    HalfOpen,
}

impl std::fmt::Display for BreakerStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Closed => "closed",
            Self::Open => "open",
            Self::HalfOpen => "half-open",
        })
    }
}

/// Tasks of one worker queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueDepth {
    /// The queue's name.
    pub queue: String,
    /// Tasks waiting for a worker.
    pub queued: u64,
    /// Tasks leased to a worker and not answered yet.
    pub leased: u64,
}

/// The whole server at a glance.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Overview {
    /// The last [`WINDOW_MINUTES`] minutes, oldest first; the last one is the current minute.
    pub minutes: Vec<MinuteCounts>,
    /// Unfinished executions that dispatch.
    pub running: u64,
    /// Unfinished executions that are paused.
    pub paused: u64,
    /// Services whose breaker is not closed, by id.
    pub breakers: Vec<(ServiceId, BreakerStatus)>,
    /// Every worker queue, by name.
    pub queues: Vec<QueueDepth>,
}

/// How one call (a task attempt) ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CallOutcome {
    /// The service answered with an output.
    Succeeded,
    /// The attempt failed and another may help.
    Retryable,
    /// The attempt failed for good.
    Failed,
}

impl std::fmt::Display for CallOutcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Succeeded => "succeeded",
            Self::Retryable => "retryable",
            Self::Failed => "failed",
        })
    }
}

/// One call of a service.
#[derive(Debug, Clone, PartialEq)]
pub struct CallRecord {
    /// The execution.
    pub execution: ExecutionId,
    /// The step.
    pub step: StepId,
    /// 1 for the first attempt.
    pub attempt: u32,
    /// When it was scheduled.
    pub at: Timestamp,
    /// Scheduled to outcome, as journaled.
    pub duration_ms: f64,
    /// How it ended.
    pub outcome: CallOutcome,
}

/// A change of a service's health verdict.
#[derive(Debug, Clone, PartialEq)]
pub struct HealthChange {
    /// When.
    pub at: Timestamp,
    /// The verdict before.
    pub from: Health,
    /// The verdict after.
    pub to: Health,
    /// What the deciding check said.
    pub output: String,
}

/// What one service did lately.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ServiceActivity {
    /// Its circuit breaker.
    pub breaker: BreakerStatus,
    /// Calls that ended since the server started.
    pub calls: u64,
    /// Of those, the ones that succeeded.
    pub succeeded: u64,
    /// The median duration of its recent calls, in milliseconds; `None` before the first.
    pub latency_p50_ms: Option<f64>,
    /// The 99th percentile of the same.
    pub latency_p99_ms: Option<f64>,
    /// Its latest calls, newest first.
    pub recent_calls: Vec<CallRecord>,
    /// Its latest health changes, newest first.
    pub health_changes: Vec<HealthChange>,
}

impl ServiceActivity {
    /// Succeeded calls over all calls; `None` before the first call.
    pub fn success_rate(&self) -> Option<f64> {
        (self.calls > 0).then(|| self.succeeded as f64 / self.calls as f64)
    }
}

/// The recent past of the server, kept in memory.
pub trait Activity: Send + Sync + 'static {
    /// Executions, breakers and queues now and over the last hour.
    fn overview(&self) -> Overview;

    /// What `service` did lately; all zero for a service never called.
    fn service(&self, service: &ServiceId) -> ServiceActivity;
}

/// The `q`-quantile (0 to 1) of `sorted` by the nearest-rank method; `None` when empty.
pub fn quantile(sorted: &[f64], q: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = (q.clamp(0.0, 1.0) * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

/// Fakes of [`Activity`], for tests (`test-util` feature).
#[cfg(any(test, feature = "test-util"))]
pub mod fakes {
    use std::collections::HashMap;
    use std::sync::Mutex;

    use super::{Activity, Overview, ServiceActivity};
    use crate::ids::ServiceId;

    /// An [`Activity`] that answers what a test put in.
    #[derive(Debug, Default)]
    pub struct InMemoryActivity {
        overview: Mutex<Overview>,
        services: Mutex<HashMap<ServiceId, ServiceActivity>>,
    }

    impl InMemoryActivity {
        /// Answers `overview` from now on.
        pub fn set_overview(&self, overview: Overview) {
            *self.overview.lock().unwrap_or_else(|p| p.into_inner()) = overview;
        }

        /// Answers `activity` for `service` from now on.
        pub fn set_service(&self, service: ServiceId, activity: ServiceActivity) {
            self.services.lock().unwrap_or_else(|p| p.into_inner()).insert(service, activity);
        }
    }

    impl Activity for InMemoryActivity {
        fn overview(&self) -> Overview {
            self.overview.lock().unwrap_or_else(|p| p.into_inner()).clone()
        }

        fn service(&self, service: &ServiceId) -> ServiceActivity {
            self.services.lock().unwrap_or_else(|p| p.into_inner()).get(service).cloned().unwrap_or_default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_are_nearest_rank() {
        let values: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(quantile(&values, 0.5), Some(50.0));
        assert_eq!(quantile(&values, 0.99), Some(99.0));
        assert_eq!(quantile(&values, 1.0), Some(100.0));
        assert_eq!(quantile(&values, 0.0), Some(1.0));
        assert_eq!(quantile(&[7.0], 0.99), Some(7.0));
        assert_eq!(quantile(&[], 0.5), None);
    }

    #[test]
    fn success_rate_needs_a_call() {
        assert_eq!(ServiceActivity::default().success_rate(), None);
        let activity = ServiceActivity { calls: 4, succeeded: 3, ..ServiceActivity::default() };
        assert_eq!(activity.success_rate(), Some(0.75));
    }
}
