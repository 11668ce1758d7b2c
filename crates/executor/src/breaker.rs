//! Circuit breakers, one per service, shared by every run of an executor.
//!
//! Closed: calls flow; `threshold` failures in a row open it. Open: the service counts as
//! unavailable for selection until `cool_down` has passed. Half-open: one probe call is let
//! through; its success closes the breaker, its failure opens it again.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use baton_core::ServiceId;
use parking_lot::{Mutex, MutexGuard};
use tokio::time::Instant;

/// The state of one breaker, as callers see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    /// Calls flow.
    Closed,
    /// Calls are refused until the cool-down ends.
    Open,
    /// One probe call is in flight or may go.
    HalfOpen,
}

#[derive(Debug, Clone, Copy)]
enum State {
    Closed { failures: u32 },
    Open { until: Instant },
    HalfOpen { probing: bool },
}

/// Leave to call a service, from [`Breakers::admit`]. Report the call's result with
/// [`Admission::record`]; dropped unreported (the call was abandoned), it gives a half-open
/// breaker's probe slot back, so a cancelled probe cannot wedge the breaker.
#[derive(Debug)]
pub(crate) struct Admission<'a> {
    breakers: &'a Breakers,
    // Owned (ids are shared text): the service may come from an invoker's resolution.
    service: ServiceId,
    reported: bool,
}

impl Admission<'_> {
    /// Records how the call went.
    pub(crate) fn record(mut self, success: bool) {
        self.reported = true;
        self.breakers.record(&self.service, success);
    }
}

impl Drop for Admission<'_> {
    fn drop(&mut self) {
        if !self.reported {
            self.breakers.release(&self.service);
        }
    }
}

/// Every service's breaker.
#[derive(Debug)]
pub(crate) struct Breakers {
    threshold: u32,
    cool_down: Duration,
    states: Mutex<HashMap<ServiceId, State>>,
    /// How many services have an entry (not closed with no failures), kept under the lock:
    /// while it is zero, admitting and recording a success need no lock at all.
    tracked: AtomicUsize,
}

impl Breakers {
    pub(crate) fn new(threshold: u32, cool_down: Duration) -> Self {
        Self { threshold: threshold.max(1), cool_down, states: Mutex::default(), tracked: AtomicUsize::new(0) }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<ServiceId, State>> {
        self.states.lock()
    }

    /// Asks to call `service` now: true when its breaker lets the call through (a half-open
    /// breaker lets exactly one probe through).
    fn try_acquire(&self, service: &ServiceId) -> bool {
        // A failure recorded concurrently may be missed: the call then goes as if it had come
        // a moment earlier.
        if self.tracked.load(Ordering::Acquire) == 0 {
            return true;
        }
        let mut states = self.lock();
        // A service without an entry is closed with no failures: the common case stays a lookup.
        let Some(state) = states.get_mut(service) else { return true };
        match *state {
            State::Closed { .. } => true,
            State::Open { until } if Instant::now() >= until => {
                *state = State::HalfOpen { probing: true };
                true
            }
            State::Open { .. } => false,
            State::HalfOpen { probing: false } => {
                *state = State::HalfOpen { probing: true };
                true
            }
            State::HalfOpen { probing: true } => false,
        }
    }

    /// Admits a call to `service` when its breaker lets it through.
    pub(crate) fn admit(&self, service: &ServiceId) -> Option<Admission<'_>> {
        self.try_acquire(service).then(|| Admission { breakers: self, service: service.clone(), reported: false })
    }

    /// Records how a call went.
    fn record(&self, service: &ServiceId, success: bool) {
        if success && self.tracked.load(Ordering::Acquire) == 0 {
            return;
        }
        let mut states = self.lock();
        if success {
            // Closed with no failures is the absent entry.
            states.remove(service);
            self.tracked.store(states.len(), Ordering::Release);
            return;
        }
        let state = states.entry(service.clone()).or_insert(State::Closed { failures: 0 });
        *state = match (*state, success) {
            (_, true) => State::Closed { failures: 0 },
            (State::Closed { failures }, false) if failures + 1 < self.threshold => {
                State::Closed { failures: failures + 1 }
            }
            (_, false) => State::Open { until: Instant::now() + self.cool_down },
        };
        self.tracked.store(states.len(), Ordering::Release);
    }

    /// Gives back a half-open probe slot that was taken but not used (the call never went).
    fn release(&self, service: &ServiceId) {
        if let Some(state @ State::HalfOpen { probing: true }) = self.lock().get_mut(service) {
            *state = State::HalfOpen { probing: false };
        }
    }

    /// The state of `service`'s breaker.
    pub(crate) fn state(&self, service: &ServiceId) -> BreakerState {
        match self.lock().get(service) {
            None | Some(State::Closed { .. }) => BreakerState::Closed,
            Some(State::Open { until }) if Instant::now() >= *until => BreakerState::HalfOpen,
            Some(State::Open { .. }) => BreakerState::Open,
            Some(State::HalfOpen { .. }) => BreakerState::HalfOpen,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn opens_after_the_threshold_then_probes_once_after_the_cool_down() {
        let b = Breakers::new(3, Duration::from_secs(10));
        let s = ServiceId::new("pay").unwrap();
        for _ in 0..2 {
            b.admit(&s).unwrap().record(false);
        }
        assert_eq!(b.state(&s), BreakerState::Closed);
        b.admit(&s).unwrap().record(false);
        assert_eq!(b.state(&s), BreakerState::Open);
        assert!(b.admit(&s).is_none());
        tokio::time::advance(Duration::from_secs(10)).await;
        assert_eq!(b.state(&s), BreakerState::HalfOpen);
        let probe = b.admit(&s).expect("one probe goes through");
        assert!(b.admit(&s).is_none(), "and only one");
        probe.record(false);
        assert_eq!(b.state(&s), BreakerState::Open, "a failed probe opens it again");
        tokio::time::advance(Duration::from_secs(10)).await;
        b.admit(&s).unwrap().record(true);
        assert_eq!(b.state(&s), BreakerState::Closed);
        // A success resets the count of failures in a row.
        b.record(&s, false);
        b.record(&s, false);
        b.record(&s, true);
        b.record(&s, false);
        assert_eq!(b.state(&s), BreakerState::Closed);
    }

    #[tokio::test(start_paused = true)]
    async fn an_abandoned_probe_gives_its_slot_back() {
        let b = Breakers::new(1, Duration::from_secs(1));
        let s = ServiceId::new("pay").unwrap();
        b.admit(&s).unwrap().record(false);
        tokio::time::advance(Duration::from_secs(1)).await;
        let probe = b.admit(&s).unwrap();
        assert!(b.admit(&s).is_none());
        drop(probe);
        assert!(b.admit(&s).is_some(), "the dropped probe's slot is free again");
    }
}
