//! Core's [`Activity`] read model over what the server already tracks: the journal as the
//! metrics see it (executions per minute, each call's service, duration and outcome), the
//! registry's health changes, the executor's breakers and the worker queues.
//!
//! [`ActivityLog`] keeps the recent past in memory, bounded: an hour of minute counts, and per
//! service its last [`RECENT_CALLS`] calls, the durations of its last [`LATENCY_WINDOW`] and its
//! last [`HEALTH_CHANGES`] health changes, for at most [`MAX_SERVICES`] services. It starts
//! empty with the process.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use baton_core::activity::{
    Activity, BreakerStatus, CallOutcome, CallRecord, HealthChange, MinuteCounts, Overview, ServiceActivity,
    WINDOW_MINUTES, quantile,
};
use baton_core::{EventSink, ExecutionId, RegistryEvent, ServiceId, StepId, Timestamp};
use baton_executor::BreakerState;
use parking_lot::Mutex;

use crate::metrics::Metrics;
use crate::orchestrator::ServiceOrchestrator;

/// Calls kept per service.
pub const RECENT_CALLS: usize = 20;
/// Durations the observed latency quantiles are taken over, per service.
pub const LATENCY_WINDOW: usize = 256;
/// Health changes kept per service.
pub const HEALTH_CHANGES: usize = 20;
/// Services kept; past it, a newly seen service replaces one at random.
pub const MAX_SERVICES: usize = 10_000;
/// Services the overview reads breakers of.
const MAX_BREAKERS_READ: usize = 10_000;

/// The recent past: a cheap-to-clone handle.
#[derive(Debug, Clone, Default)]
pub struct ActivityLog {
    inner: Arc<Mutex<State>>,
}

#[derive(Debug, Default)]
struct State {
    /// `(minute since the epoch, counts)`, oldest first, at most [`WINDOW_MINUTES`].
    minutes: VecDeque<(i64, MinuteCounts)>,
    services: HashMap<ServiceId, ServiceLog>,
}

#[derive(Debug, Default)]
struct ServiceLog {
    calls: u64,
    succeeded: u64,
    recent: VecDeque<CallRecord>,
    durations: VecDeque<f64>,
    health: VecDeque<HealthChange>,
}

fn push_bounded<T>(queue: &mut VecDeque<T>, item: T, bound: usize) {
    if queue.len() == bound {
        queue.pop_back();
    }
    queue.push_front(item);
}

impl State {
    fn minute(&mut self, at: Timestamp) -> &mut MinuteCounts {
        let minute = at.timestamp().div_euclid(60);
        // Journal times of one clock only move forward; an older minute counts in the newest.
        if self.minutes.back().is_none_or(|(m, _)| *m < minute) {
            if self.minutes.len() == WINDOW_MINUTES {
                self.minutes.pop_front();
            }
            let start = chrono::DateTime::from_timestamp(minute * 60, 0);
            self.minutes.push_back((minute, MinuteCounts { start, ..MinuteCounts::default() }));
        }
        &mut self.minutes.back_mut().expect("just pushed").1
    }

    fn service(&mut self, id: &ServiceId) -> &mut ServiceLog {
        if !self.services.contains_key(id)
            && self.services.len() >= MAX_SERVICES
            && let Some(evicted) = self.services.keys().next().cloned()
        {
            self.services.remove(&evicted);
        }
        self.services.entry(id.clone()).or_default()
    }
}

/// How an execution ended, for the minute counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ending {
    Completed,
    Failed,
    Cancelled,
}

/// One ended call, as the metrics saw it in the journal.
#[derive(Debug)]
pub(crate) struct EndedCall<'a> {
    pub(crate) service: &'a ServiceId,
    pub(crate) execution: ExecutionId,
    pub(crate) step: &'a StepId,
    pub(crate) attempt: u32,
    pub(crate) scheduled_at: Timestamp,
    pub(crate) ended_at: Timestamp,
    pub(crate) outcome: CallOutcome,
}

impl ActivityLog {
    pub(crate) fn started(&self, at: Timestamp) {
        self.inner.lock().minute(at).started += 1;
    }

    pub(crate) fn ended(&self, ending: Ending, at: Timestamp) {
        let mut state = self.inner.lock();
        let minute = state.minute(at);
        match ending {
            Ending::Completed => minute.completed += 1,
            Ending::Failed => minute.failed += 1,
            Ending::Cancelled => minute.cancelled += 1,
        }
    }

    /// An attempt ended; `call` is `None` when its scheduling was not seen (journaled before
    /// this process started).
    pub(crate) fn attempt(&self, at: Timestamp, failed: bool, call: Option<EndedCall<'_>>) {
        let mut state = self.inner.lock();
        let minute = state.minute(at);
        minute.attempts += 1;
        minute.failed_attempts += u64::from(failed);
        let Some(call) = call else { return };
        let duration_ms = (call.ended_at - call.scheduled_at).num_microseconds().unwrap_or(0).max(0) as f64 / 1000.0;
        let log = state.service(call.service);
        log.calls += 1;
        log.succeeded += u64::from(call.outcome == CallOutcome::Succeeded);
        push_bounded(&mut log.durations, duration_ms, LATENCY_WINDOW);
        let record = CallRecord {
            execution: call.execution,
            step: call.step.clone(),
            attempt: call.attempt,
            at: call.scheduled_at,
            duration_ms,
            outcome: call.outcome,
        };
        push_bounded(&mut log.recent, record, RECENT_CALLS);
    }

    /// The counts of the last hour up to `now`, a minute each, oldest first.
    fn minutes(&self, now: Timestamp) -> Vec<MinuteCounts> {
        let state = self.inner.lock();
        let last = now.timestamp().div_euclid(60);
        (last - WINDOW_MINUTES as i64 + 1..=last)
            .map(|minute| {
                state.minutes.iter().find(|(m, _)| *m == minute).map(|(_, c)| *c).unwrap_or(MinuteCounts {
                    start: chrono::DateTime::from_timestamp(minute * 60, 0),
                    ..MinuteCounts::default()
                })
            })
            .collect()
    }

    fn service_activity(&self, id: &ServiceId) -> ServiceActivity {
        let state = self.inner.lock();
        let Some(log) = state.services.get(id) else { return ServiceActivity::default() };
        let mut sorted: Vec<f64> = log.durations.iter().copied().collect();
        sorted.sort_by(f64::total_cmp);
        ServiceActivity {
            breaker: BreakerStatus::Closed,
            calls: log.calls,
            succeeded: log.succeeded,
            latency_p50_ms: quantile(&sorted, 0.5),
            latency_p99_ms: quantile(&sorted, 0.99),
            recent_calls: log.recent.iter().cloned().collect(),
            health_changes: log.health.iter().cloned().collect(),
        }
    }
}

/// The registry's health changes, stamped with the wall clock.
impl EventSink<RegistryEvent> for ActivityLog {
    fn publish(&self, event: RegistryEvent) {
        if let RegistryEvent::HealthChanged { id, from, to, output } = event {
            let change = HealthChange { at: chrono::Utc::now(), from, to, output };
            let mut state = self.inner.lock();
            push_bounded(&mut state.service(&id).health, change, HEALTH_CHANGES);
        }
    }
}

fn breaker(state: BreakerState) -> BreakerStatus {
    match state {
        BreakerState::Closed => BreakerStatus::Closed,
        BreakerState::Open => BreakerStatus::Open,
        BreakerState::HalfOpen => BreakerStatus::HalfOpen,
    }
}

/// [`Activity`] over the assembled server: the metrics' log and gauges, the executor's breakers
/// and the worker queues.
#[derive(Debug, Clone)]
pub struct ServerActivity {
    metrics: Metrics,
    orchestrator: ServiceOrchestrator,
}

impl ServerActivity {
    /// Reads `metrics` (which must be the engine's observer) and `orchestrator`.
    pub fn new(metrics: Metrics, orchestrator: ServiceOrchestrator) -> Self {
        Self { metrics, orchestrator }
    }
}

impl Activity for ServerActivity {
    fn overview(&self) -> Overview {
        let (running, paused) = self.metrics.executions_unfinished();
        let executor = self.orchestrator.executor();
        let mut breakers = Vec::new();
        let mut after: Option<ServiceId> = None;
        let mut read = 0;
        loop {
            let page = self.orchestrator.registry().list(after.as_ref(), 1000);
            read += page.services.len();
            for view in &page.services {
                let state = breaker(executor.breaker_state(view.spec.id()));
                if state != BreakerStatus::Closed {
                    breakers.push((view.spec.id().clone(), state));
                }
            }
            match page.next_after {
                Some(next) if read < MAX_BREAKERS_READ => after = Some(next),
                _ => break,
            }
        }
        let queues = self.orchestrator.queue_depths();
        Overview {
            minutes: self.metrics.activity().minutes(chrono::Utc::now()),
            running: running.max(0) as u64,
            paused: paused.max(0) as u64,
            breakers,
            queues,
        }
    }

    fn service(&self, service: &ServiceId) -> ServiceActivity {
        let mut activity = self.metrics.activity().service_activity(service);
        activity.breaker = breaker(self.orchestrator.executor().breaker_state(service));
        activity
    }
}

#[cfg(test)]
mod tests {
    use baton_core::Health;

    use super::*;

    fn at(seconds: i64) -> Timestamp {
        chrono::DateTime::from_timestamp(seconds, 0).unwrap()
    }

    #[test]
    fn minutes_roll_over_and_calls_give_quantiles() {
        let log = ActivityLog::default();
        log.started(at(10));
        log.started(at(70));
        log.ended(Ending::Failed, at(75));
        let minutes = log.minutes(at(130));
        assert_eq!(minutes.len(), WINDOW_MINUTES);
        let last3: Vec<(u64, u64)> = minutes[WINDOW_MINUTES - 3..].iter().map(|m| (m.started, m.failed)).collect();
        assert_eq!(last3, [(1, 0), (1, 1), (0, 0)]);
        assert_eq!(log.minutes(at(10 + 3600 * 2)).iter().map(|m| m.started).sum::<u64>(), 0, "an hour later");

        let service = ServiceId::new("pay").unwrap();
        let step = StepId::new("charge").unwrap();
        let execution = ExecutionId::generate();
        for ms in 1..=100 {
            let call = EndedCall {
                service: &service,
                execution,
                step: &step,
                attempt: 1,
                scheduled_at: at(100),
                ended_at: at(100) + chrono::Duration::milliseconds(ms),
                outcome: if ms % 10 == 0 { CallOutcome::Retryable } else { CallOutcome::Succeeded },
            };
            log.attempt(at(100), ms % 10 == 0, Some(call));
        }
        log.publish(RegistryEvent::HealthChanged {
            id: service.clone(),
            from: Health::Passing,
            to: Health::Critical,
            output: "<down>".into(),
        });
        let activity = log.service_activity(&service);
        assert_eq!((activity.calls, activity.succeeded), (100, 90));
        assert_eq!((activity.latency_p50_ms, activity.latency_p99_ms), (Some(50.0), Some(99.0)));
        assert_eq!(activity.recent_calls.len(), RECENT_CALLS);
        assert_eq!(activity.recent_calls[0].duration_ms, 100.0, "newest first");
        assert_eq!(activity.health_changes[0].to, Health::Critical);
        assert_eq!(log.minutes(at(130))[WINDOW_MINUTES - 2].attempts, 100);
        assert_eq!(log.service_activity(&ServiceId::new("other").unwrap()), ServiceActivity::default());
    }
}
