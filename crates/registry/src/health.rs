//! The health [`Supervisor`]: expires heartbeat TTLs, runs due HTTP and gRPC probes with a
//! bound on how many run at once, and deregisters services that stay critical too long.
//!
//! Probe results reach readers only through [`Registry::record`], which updates per-service
//! atomics; a find never waits for a probe, and no lock is held across an await.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use baton_core::duration;
use baton_core::{
    BoxFuture, CheckKind, DeregisterReason, Health, HealthProbe, ProbeResult, ProbeTarget, RegistryEvent, ServiceId,
    Timestamp,
};
use parking_lot::Mutex;
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::MissedTickBehavior;

use crate::registry::{Entry, Registry, Verdict};

/// How a [`Supervisor`] runs.
#[derive(Debug, Clone)]
pub struct SupervisorConfig {
    /// Time between rounds when [`Supervisor::spawn`]ed. Each service is still probed only
    /// every `interval` of its own check; this is how finely those intervals are honoured.
    pub tick: Duration,
    /// Most probes running at once; the rest of a round waits for a free slot.
    pub max_in_flight: usize,
    /// With a registry shared by several servers, which services this one checks and where
    /// its verdicts go; `None` checks every service here.
    pub scope: Option<Arc<dyn Scope>>,
}

impl Default for SupervisorConfig {
    fn default() -> Self {
        Self { tick: Duration::from_secs(1), max_in_flight: 256, scope: None }
    }
}

/// The part of a shared registry's checks one server runs. Its supervisor probes only the
/// services [`checks`](Self::checks) names, expires no TTL itself (the shared table judges
/// them by its own clock) and hands every health change and removal it makes to
/// [`report`](Self::report), so that the other servers take them.
pub trait Scope: fmt::Debug + Send + Sync + 'static {
    /// True when this server checks `id`.
    fn checks(&self, id: &ServiceId) -> bool;

    /// A change this server's checks made: a [`RegistryEvent::HealthChanged`] or a
    /// [`RegistryEvent::Deregistered`].
    fn report(&self, event: RegistryEvent) -> BoxFuture<'_, ()>;
}

impl SupervisorConfig {
    /// A supervisor of `registry`'s services that probes through `probe`.
    pub fn build<P: HealthProbe>(self, registry: Registry, probe: Arc<P>) -> Supervisor<P> {
        Supervisor { config: self, registry, probe, expired: Mutex::default() }
    }
}

/// Keeps the health of a [`Registry`]'s services current: call [`tick`](Self::tick) for one
/// round, or [`spawn`](Self::spawn) it to run rounds in the background.
pub struct Supervisor<P> {
    config: SupervisorConfig,
    registry: Registry,
    probe: Arc<P>,
    /// The TTL base (last heartbeat or registration) of each service whose expiry has been
    /// recorded, so an expiry counts once and not once per round.
    expired: Mutex<HashMap<ServiceId, Timestamp>>,
}

impl<P> fmt::Debug for Supervisor<P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Supervisor")
            .field("config", &self.config)
            .field("registry", &self.registry)
            .finish_non_exhaustive()
    }
}

impl<P: HealthProbe> Supervisor<P> {
    /// Runs one round at the registry clock's now: expires heartbeat TTLs, runs every due
    /// probe (each bounded by its check's timeout, at most `max_in_flight` at once) and feeds
    /// the verdicts to the health state machine, then deregisters services critical for
    /// longer than their `deregister_after`.
    ///
    /// A verdict about a service that was deregistered or registered again while its probe
    /// ran is dropped: it describes a spec that is no longer there.
    pub async fn tick(&self) {
        let now = self.registry.clock().now();
        let entries = self.registry.entries();
        let mut due = Vec::new();
        let mut expired = HashMap::new();
        let scope = self.config.scope.as_deref();
        for entry in &entries {
            if scope.is_some_and(|scope| !scope.checks(entry.spec.id())) {
                continue;
            }
            let check = entry.spec.health_check();
            match &check.kind {
                CheckKind::None => {}
                CheckKind::Ttl { .. } if scope.is_some() => {}
                CheckKind::Ttl { ttl } => self.expire(entry, *ttl, now, &mut expired),
                CheckKind::Http { .. } | CheckKind::Grpc { .. } => {
                    let mut checks = entry.live.checks.lock();
                    if checks.next_probe_at <= now {
                        // Claimed before the probe runs, so a concurrent round does not probe twice.
                        checks.next_probe_at = later(now, check.interval);
                        due.push(entry.clone());
                    }
                }
            }
        }
        *self.expired.lock() = expired;
        self.probe_all(due).await;
        self.deregister_long_critical(&entries).await;
    }

    /// Records `Expired` for a TTL service past its deadline, once per deadline: a heartbeat
    /// (or a registration) moves the base, and only then can it expire again.
    fn expire(&self, entry: &Entry, ttl: Duration, now: Timestamp, expired: &mut HashMap<ServiceId, Timestamp>) {
        let (base, heartbeat) = {
            let checks = entry.live.checks.lock();
            match checks.last_heartbeat {
                Some(beat) if beat >= checks.registered_at => (beat, true),
                _ => (checks.registered_at, false),
            }
        };
        let age = (now - base).to_std().unwrap_or_default();
        if age <= ttl {
            return;
        }
        let id = entry.spec.id();
        expired.insert(id.clone(), base);
        if self.expired.lock().get(id) == Some(&base) {
            return;
        }
        let since = if heartbeat { "last heartbeat" } else { "registered" };
        let output = format!("ttl {} expired ({since} {} ago)", duration::format(ttl), format_age(age));
        self.registry.record(entry, Verdict::Expired, &output, now);
    }

    async fn probe_all(&self, due: Vec<Entry>) {
        let limit = self.config.max_in_flight.max(1);
        let mut running = JoinSet::new();
        let mut probed = HashMap::new();
        let mut due = due.into_iter();
        loop {
            while running.len() < limit {
                let Some(entry) = due.next() else { break };
                let check = entry.spec.health_check();
                let target =
                    ProbeTarget { service: entry.spec.id().clone(), check: check.kind.clone(), timeout: check.timeout };
                let probe = Arc::clone(&self.probe);
                let task = running.spawn(async move {
                    match tokio::time::timeout(target.timeout, probe.probe(&target)).await {
                        Ok(result) => result,
                        Err(_) => Err(format!("probe timed out after {}", duration::format(target.timeout))),
                    }
                });
                probed.insert(task.id(), entry);
            }
            let Some(joined) = running.join_next_with_id().await else { break };
            let (task, result): (_, ProbeResult) = match joined {
                Ok((task, result)) => (task, result),
                Err(error) => (error.id(), Err(format!("probe failed: {error}"))),
            };
            let Some(entry) = probed.remove(&task) else { continue };
            // Checked, then recorded: an update or deregistration landing between the two still
            // gets this verdict (at worst a HealthChanged just after a Deregistered). Closing
            // that window would take recording under the registry's state lock.
            if self.registry.is_current(&entry) {
                let (verdict, output) = match &result {
                    Ok(output) => (Verdict::Pass, output.as_str()),
                    Err(output) => (Verdict::Fail, output.as_str()),
                };
                let from = entry.live.health();
                let changed = self.registry.record(&entry, verdict, output, self.registry.clock().now());
                if let (Some(to), Some(scope)) = (changed, &self.config.scope) {
                    let id = entry.spec.id().clone();
                    scope.report(RegistryEvent::HealthChanged { id, from, to, output: output.to_owned() }).await;
                }
            }
        }
    }

    async fn deregister_long_critical(&self, entries: &[Entry]) {
        let now = self.registry.clock().now();
        let scope = self.config.scope.as_deref();
        for entry in entries {
            let Some(after) = entry.spec.health_check().deregister_after else { continue };
            if scope.is_some_and(|scope| !scope.checks(entry.spec.id())) {
                continue;
            }
            if entry.live.health() != Health::Critical {
                continue;
            }
            let since = entry.live.checks.lock().critical_since;
            if since.is_some_and(|since| (now - since).to_std().is_ok_and(|critical_for| critical_for >= after)) {
                let removed = self.registry.remove_if_current(entry, DeregisterReason::CriticalTooLong);
                if let (true, Some(scope)) = (removed, scope) {
                    let id = entry.spec.id().clone();
                    scope.report(RegistryEvent::Deregistered { id, reason: DeregisterReason::CriticalTooLong }).await;
                }
            }
        }
    }

    /// Runs rounds every `tick` in a background task until the handle is dropped or shut down.
    /// A round that overruns delays the next one rather than bunching them up.
    pub fn spawn(self) -> SupervisorHandle {
        let period = self.config.tick.max(Duration::from_millis(1));
        let task = tokio::spawn(async move {
            let mut interval = tokio::time::interval(period);
            interval.set_missed_tick_behavior(MissedTickBehavior::Delay);
            loop {
                interval.tick().await;
                self.tick().await;
            }
        });
        SupervisorHandle { task }
    }
}

/// The running [`Supervisor`] task; dropping it stops the task.
#[derive(Debug)]
pub struct SupervisorHandle {
    task: JoinHandle<()>,
}

impl SupervisorHandle {
    /// Stops the supervisor and waits until its task (and any probe it was running) is gone.
    pub async fn shutdown(mut self) {
        self.task.abort();
        // The only outcome left is cancellation; there is nothing to report.
        let _ = (&mut self.task).await;
    }
}

impl Drop for SupervisorHandle {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// `at + by`, with `by` capped at a century so an absurd interval cannot overflow the calendar.
fn later(at: Timestamp, by: Duration) -> Timestamp {
    const CENTURY: Duration = Duration::from_secs(100 * 365 * 24 * 3600);
    at + by.min(CENTURY)
}

/// An age for people: whole seconds from a second up, milliseconds below.
fn format_age(age: Duration) -> String {
    if age >= Duration::from_secs(1) { format!("{}s", age.as_secs()) } else { format!("{}ms", age.as_millis()) }
}

#[cfg(test)]
mod tests;
