//! The [`Registry`] handle: registration, lookup, ranked find, capacity permits and the health
//! state machine that heartbeats and probes drive.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU32, AtomicU64, Ordering};

use baton_core::directory::score_parts;
use baton_core::ports::DiscardEvents;
use baton_core::{
    BoxFuture, Candidate, CheckKind, Clock, DeregisterReason, EventSink, Health, Matches, Page, Qos, Registration,
    RegistryEvent, ServiceCatalog, ServiceDirectory, ServiceId, ServiceRequirements, ServiceSpec, ServiceStatus,
    ServiceView, SystemClock, Timestamp,
};
use parking_lot::{Mutex, RwLock};

use crate::error::{Error, Result};
use crate::index::{Index, Postings, intersect};

/// How a registry is set up.
#[derive(Debug, Clone)]
pub struct Config {
    /// Most services held at once; registering one more is refused with [`Error::Full`].
    pub max_services: usize,
    /// Weight of the newest check in the success-rate average (health history), in `(0, 1]`.
    pub success_rate_alpha: f64,
}

impl Default for Config {
    fn default() -> Self {
        Self { max_services: 1_000_000, success_rate_alpha: 0.2 }
    }
}

impl Config {
    /// A registry on the system clock that reports events nowhere.
    pub fn build(self) -> Registry {
        self.build_with(Arc::new(SystemClock), Arc::new(DiscardEvents))
    }

    /// A registry on `clock` that reports its events to `events`.
    pub fn build_with(self, clock: Arc<dyn Clock>, events: Arc<dyn EventSink<RegistryEvent>>) -> Registry {
        let state = RwLock::new(State::default());
        let inner =
            Inner { config: self, state, clock, events, generation: AtomicU64::new(0), shares: AtomicU32::new(1) };
        Registry { inner: Arc::new(inner) }
    }
}

/// A cheap-to-clone handle on a shared registry. Readers never wait for probes: health is
/// kept in per-service atomics that checks update on their own.
#[derive(Clone)]
pub struct Registry {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry").field("services", &self.len()).finish_non_exhaustive()
    }
}

impl Default for Registry {
    fn default() -> Self {
        Config::default().build()
    }
}

struct Inner {
    config: Config,
    state: RwLock<State>,
    clock: Arc<dyn Clock>,
    events: Arc<dyn EventSink<RegistryEvent>>,
    /// Moves after every change that may change the healthy services or their specs; see
    /// [`ServiceCatalog::generation`].
    generation: AtomicU64,
    /// How many servers share each service's capacity: this one takes `ceil(capacity / shares)`.
    shares: AtomicU32,
}

#[derive(Default)]
struct State {
    by_id: BTreeMap<ServiceId, u32>,
    slots: Vec<Option<Entry>>,
    /// What a find reads of each candidate, by slot, packed so the scan walks memory in
    /// order instead of chasing every spec. Stale for free slots, which the index never yields.
    hot: Vec<Hot>,
    free: Vec<u32>,
    index: Index,
}

/// The figures a find needs of one service.
struct Hot {
    qos: Qos,
    capacity: u32,
    live: Arc<Live>,
}

impl State {
    /// Unindexes `id` and frees its slot; false when it is not registered.
    fn remove(&mut self, id: &ServiceId) -> bool {
        let Some(slot) = self.by_id.remove(id) else { return false };
        let entry = self.slots[slot as usize].take().expect("indexed slot holds an entry");
        self.index.set(slot, &entry.spec, false);
        self.free.push(slot);
        true
    }

    fn put(&mut self, slot: u32, entry: Entry) {
        let hot = Hot { qos: *entry.spec.qos(), capacity: entry.spec.capacity(), live: Arc::clone(&entry.live) };
        let i = slot as usize;
        if i == self.slots.len() {
            self.slots.push(Some(entry));
            self.hot.push(hot);
        } else {
            self.slots[i] = Some(entry);
            self.hot[i] = hot;
        }
    }
}

/// One registered service: its immutable spec and its live state. An update swaps the spec
/// and keeps the live state, so permits taken before the update still count.
#[derive(Clone)]
pub(crate) struct Entry {
    pub(crate) spec: Arc<ServiceSpec>,
    pub(crate) live: Arc<Live>,
}

/// The mutable side of a service. `health`, `in_flight` and `success_rate` are atomics so a
/// find reads them without locking; the rest changes only under `checks`.
pub(crate) struct Live {
    health: AtomicU8,
    in_flight: AtomicU32,
    success_rate: AtomicU32,
    pub(crate) checks: Mutex<Checks>,
}

/// Bookkeeping of heartbeats and probes.
#[derive(Debug, Clone)]
pub(crate) struct Checks {
    pub(crate) registered_at: Timestamp,
    pub(crate) last_heartbeat: Option<Timestamp>,
    pub(crate) passes_in_a_row: u32,
    pub(crate) failures_in_a_row: u32,
    pub(crate) critical_since: Option<Timestamp>,
    pub(crate) next_probe_at: Timestamp,
    pub(crate) last_output: String,
}

fn health_code(h: Health) -> u8 {
    match h {
        Health::Unknown => 0,
        Health::Passing => 1,
        Health::Critical => 2,
    }
}

fn health_of(code: u8) -> Health {
    match code {
        1 => Health::Passing,
        2 => Health::Critical,
        _ => Health::Unknown,
    }
}

/// Where a service starts: passing when nothing is probed (a registration is a heartbeat),
/// unknown until its first probe when it is.
pub(crate) fn initial_health(kind: &CheckKind) -> Health {
    match kind {
        CheckKind::None | CheckKind::Ttl { .. } => Health::Passing,
        CheckKind::Http { .. } | CheckKind::Grpc { .. } => Health::Unknown,
    }
}

impl Live {
    fn new(kind: &CheckKind, now: Timestamp) -> Self {
        Self {
            health: AtomicU8::new(health_code(initial_health(kind))),
            in_flight: AtomicU32::new(0),
            success_rate: AtomicU32::new(1.0f32.to_bits()),
            checks: Mutex::new(Checks {
                registered_at: now,
                last_heartbeat: None,
                passes_in_a_row: 0,
                failures_in_a_row: 0,
                critical_since: None,
                next_probe_at: now,
                last_output: String::new(),
            }),
        }
    }

    pub(crate) fn health(&self) -> Health {
        health_of(self.health.load(Ordering::Acquire))
    }

    fn in_flight(&self) -> u32 {
        self.in_flight.load(Ordering::Acquire)
    }

    fn success_rate(&self) -> f64 {
        f64::from(f32::from_bits(self.success_rate.load(Ordering::Relaxed)))
    }

    fn status(&self) -> ServiceStatus {
        let checks = self.checks.lock();
        ServiceStatus {
            health: self.health(),
            in_flight: self.in_flight(),
            success_rate: self.success_rate(),
            registered_at: checks.registered_at,
            last_heartbeat: checks.last_heartbeat,
            last_check_output: checks.last_output.clone(),
        }
    }
}

/// The outcome of one check, as fed to the health state machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// The check passed.
    Pass,
    /// The check failed.
    Fail,
    /// The heartbeat TTL ran out: critical at once, no threshold.
    Expired,
}

/// An in-flight permit on a service; dropping it gives the capacity back.
#[derive(Debug)]
pub struct Permit {
    live: Arc<Live>,
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.live.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

impl std::fmt::Debug for Live {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Live").field("health", &self.health()).field("in_flight", &self.in_flight()).finish()
    }
}

impl Registry {
    /// Inserts `spec`, or atomically replaces the service with its id: a concurrent find sees
    /// the old spec or the new one, never a mix, and no stale posting survives.
    pub fn register(&self, spec: ServiceSpec) -> Result<Registration> {
        let now = self.inner.clock.now();
        let spec = Arc::new(spec);
        let id = spec.id().clone();
        let mut state = self.inner.state.write();
        let registration = if let Some(&slot) = state.by_id.get(&id) {
            let old = state.slots[slot as usize].take().expect("indexed slot holds an entry");
            state.index.set(slot, &old.spec, false);
            state.index.set(slot, &spec, true);
            if old.spec.health_check().kind != spec.health_check().kind {
                let health = initial_health(&spec.health_check().kind);
                old.live.health.store(health_code(health), Ordering::Release);
                let mut checks = old.live.checks.lock();
                checks.passes_in_a_row = 0;
                checks.failures_in_a_row = 0;
                checks.critical_since = None;
                checks.next_probe_at = now;
            }
            old.live.checks.lock().registered_at = now;
            state.put(slot, Entry { spec, live: old.live });
            Registration::Updated
        } else {
            if state.by_id.len() >= self.inner.config.max_services {
                return Err(Error::Full { max: self.inner.config.max_services });
            }
            let live = Arc::new(Live::new(&spec.health_check().kind, now));
            let slot = match state.free.pop() {
                Some(slot) => slot,
                None => u32::try_from(state.slots.len()).map_err(|_| Error::Full { max: u32::MAX as usize })?,
            };
            state.index.set(slot, &spec, true);
            state.put(slot, Entry { spec, live });
            state.by_id.insert(id.clone(), slot);
            Registration::Created
        };
        self.changed();
        drop(state);
        self.inner.events.publish(match registration {
            Registration::Created => RegistryEvent::Registered { id },
            Registration::Updated => RegistryEvent::Updated { id },
        });
        Ok(registration)
    }

    /// Removes a service and every posting of it.
    pub fn deregister(&self, id: &ServiceId) -> Result<()> {
        self.remove(id, DeregisterReason::Requested)
    }

    pub(crate) fn remove(&self, id: &ServiceId, reason: DeregisterReason) -> Result<()> {
        let mut state = self.inner.state.write();
        if !state.remove(id) {
            return Err(Error::UnknownService(id.clone()));
        }
        self.changed();
        drop(state);
        self.inner.events.publish(RegistryEvent::Deregistered { id: id.clone(), reason });
        Ok(())
    }

    pub(crate) fn entry(&self, id: &ServiceId) -> Result<Entry> {
        let state = self.inner.state.read();
        state
            .by_id
            .get(id)
            .and_then(|&slot| state.slots[slot as usize].clone())
            .ok_or_else(|| Error::UnknownService(id.clone()))
    }

    /// Every registered service, for the health supervisor.
    pub(crate) fn entries(&self) -> Vec<Entry> {
        self.inner.state.read().slots.iter().flatten().cloned().collect()
    }

    /// Moves the generation on. Called after the change is made, so that whoever reads the
    /// new generation (acquire) then sees the change.
    fn changed(&self) {
        self.inner.generation.fetch_add(1, Ordering::AcqRel);
    }

    pub(crate) fn clock(&self) -> &dyn Clock {
        &*self.inner.clock
    }

    /// True while `entry` is still what its id maps to: not deregistered, not replaced by a
    /// new spec since it was read.
    pub(crate) fn is_current(&self, entry: &Entry) -> bool {
        let state = self.inner.state.read();
        Self::current_in(&state, entry)
    }

    fn current_in(state: &State, entry: &Entry) -> bool {
        state
            .by_id
            .get(entry.spec.id())
            .and_then(|&slot| state.slots[slot as usize].as_ref())
            .is_some_and(|current| Arc::ptr_eq(&current.spec, &entry.spec))
    }

    /// Removes `entry`'s service if `entry` is still current; checked and removed under one
    /// write lock, so a service registered again meanwhile is left alone.
    pub(crate) fn remove_if_current(&self, entry: &Entry, reason: DeregisterReason) -> bool {
        let mut state = self.inner.state.write();
        if !Self::current_in(&state, entry) {
            return false;
        }
        state.remove(entry.spec.id());
        self.changed();
        drop(state);
        self.inner.events.publish(RegistryEvent::Deregistered { id: entry.spec.id().clone(), reason });
        true
    }

    /// Records a heartbeat: a passing check that also restarts the TTL.
    pub fn heartbeat(&self, id: &ServiceId) -> Result<ServiceStatus> {
        let entry = self.entry(id)?;
        let now = self.inner.clock.now();
        entry.live.checks.lock().last_heartbeat = Some(now);
        self.record(&entry, Verdict::Pass, "heartbeat", now);
        Ok(entry.live.status())
    }

    /// Feeds one check's verdict to the health state machine of `entry`.
    ///
    /// `Unknown` resolves on the first verdict. After that, `unhealthy_threshold` failures in a
    /// row turn a passing service critical and `healthy_threshold` passes in a row turn it back,
    /// so a flapping service does not change state on every check. An expired TTL turns it
    /// critical at once. Every change is published as [`RegistryEvent::HealthChanged`].
    /// Answers the new health when it changed.
    pub(crate) fn record(&self, entry: &Entry, verdict: Verdict, output: &str, now: Timestamp) -> Option<Health> {
        let check = entry.spec.health_check();
        let live = &entry.live;
        let mut checks = live.checks.lock();
        let from = live.health();
        let passed = verdict == Verdict::Pass;
        if passed {
            checks.passes_in_a_row = checks.passes_in_a_row.saturating_add(1);
            checks.failures_in_a_row = 0;
        } else {
            checks.failures_in_a_row = checks.failures_in_a_row.saturating_add(1);
            checks.passes_in_a_row = 0;
        }
        checks.last_output.clear();
        checks.last_output.push_str(output);
        let alpha = self.inner.config.success_rate_alpha;
        let rate = (1.0 - alpha) * live.success_rate() + alpha * if passed { 1.0 } else { 0.0 };
        live.success_rate.store((rate as f32).to_bits(), Ordering::Relaxed);
        let to = match (from, verdict) {
            (_, Verdict::Expired) => Health::Critical,
            (Health::Unknown, Verdict::Pass) => Health::Passing,
            (Health::Unknown, Verdict::Fail) => Health::Critical,
            (Health::Passing, Verdict::Fail) if checks.failures_in_a_row >= check.unhealthy_threshold => {
                Health::Critical
            }
            (Health::Critical, Verdict::Pass) if checks.passes_in_a_row >= check.healthy_threshold => Health::Passing,
            (unchanged, _) => unchanged,
        };
        if to == from {
            return None;
        }
        checks.critical_since = (to == Health::Critical).then_some(now);
        live.health.store(health_code(to), Ordering::Release);
        self.changed();
        drop(checks);
        self.inner.events.publish(RegistryEvent::HealthChanged {
            id: entry.spec.id().clone(),
            from,
            to,
            output: output.to_owned(),
        });
        Some(to)
    }

    /// One service with its live state.
    pub fn get(&self, id: &ServiceId) -> Result<ServiceView> {
        let entry = self.entry(id)?;
        Ok(ServiceView { status: entry.live.status(), spec: entry.spec })
    }

    /// Up to `limit` services with ids after `after`, in id order; stable under concurrent
    /// registration because the cursor is an id, not an offset.
    pub fn list(&self, after: Option<&ServiceId>, limit: usize) -> Page {
        use std::ops::Bound;
        let entries: Vec<Entry> = {
            let state = self.inner.state.read();
            let start = after.map_or(Bound::Unbounded, |a| Bound::Excluded(a.clone()));
            state
                .by_id
                .range((start, Bound::Unbounded))
                .take(limit.saturating_add(1))
                .filter_map(|(_, &slot)| state.slots[slot as usize].clone())
                .collect()
        };
        let more = entries.len() > limit;
        let services: Vec<ServiceView> =
            entries.into_iter().take(limit).map(|e| ServiceView { status: e.live.status(), spec: e.spec }).collect();
        let next_after = if more { services.last().map(|v| v.spec.id().clone()) } else { None };
        Page { services, next_after }
    }

    /// The best `limit` eligible services meeting `requirements`, and how many matched in all.
    ///
    /// The index narrows the field (posting lists intersected smallest first), then each
    /// survivor is checked exactly (the spec, passing health, capacity left) and scored by
    /// [`baton_core::directory::match_score`].
    pub fn find(&self, requirements: &ServiceRequirements, limit: usize) -> Result<Matches> {
        requirements.validate()?;
        let state = self.inner.state.read();
        let survivors = match state.index.postings(requirements) {
            Postings::Empty => return Ok(Matches::default()),
            Postings::Intersect(lists) => intersect(lists, state.index.all()),
        };
        let mut scored: Vec<(f64, u32)> = Vec::new();
        for slot in &survivors {
            let hot = &state.hot[slot as usize];
            // The index is exact but for QoS bounds, which it rounds to a threshold.
            if !requirements.qos_within_bounds(&hot.qos) {
                continue;
            }
            let in_flight = hot.live.in_flight();
            let capacity = self.share_of(hot.capacity);
            if hot.live.health() != Health::Passing || in_flight >= capacity {
                continue;
            }
            let score = score_parts(&hot.qos, capacity, in_flight, hot.live.success_rate(), requirements);
            scored.push((score, slot));
        }
        let total = scored.len();
        let id = |slot: u32| state.slots[slot as usize].as_ref().expect("indexed slot holds an entry").spec.id();
        let better = |a: &(f64, u32), b: &(f64, u32)| b.0.total_cmp(&a.0).then_with(|| id(a.1).cmp(id(b.1)));
        if limit < scored.len() {
            if limit > 0 {
                scored.select_nth_unstable_by(limit - 1, better);
            }
            scored.truncate(limit);
        }
        scored.sort_unstable_by(better);
        let candidates = scored
            .into_iter()
            .map(|(score, slot)| {
                let entry = state.slots[slot as usize].as_ref().expect("indexed slot holds an entry");
                Candidate { score, service: ServiceView { status: entry.live.status(), spec: Arc::clone(&entry.spec) } }
            })
            .collect();
        Ok(Matches { candidates, total })
    }

    /// Takes one in-flight permit on `id`; refused when the service is at capacity (this
    /// server's share of it, see [`set_capacity_shares`](Self::set_capacity_shares)).
    pub fn acquire(&self, id: &ServiceId) -> Result<Permit> {
        let entry = self.entry(id)?;
        let capacity = self.share_of(entry.spec.capacity());
        entry
            .live
            .in_flight
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < capacity).then_some(n + 1))
            .map_err(|_| Error::AtCapacity { id: id.clone(), capacity })?;
        Ok(Permit { live: entry.live })
    }

    /// The most calls this server makes to `id` at once, when it is registered (its share of
    /// the declared capacity, see [`Registry::set_capacity_shares`]): cheaper than
    /// [`Registry::get`].
    pub fn capacity(&self, id: &ServiceId) -> Option<u32> {
        let state = self.inner.state.read();
        let slot = *state.by_id.get(id)?;
        state.slots[slot as usize].as_ref().map(|entry| self.share_of(entry.spec.capacity()))
    }

    /// Splits every service's declared capacity among `servers` servers (at least 1) that
    /// call it: this one takes `ceil(capacity / servers)` calls at once, so together they stay
    /// within it, give or take the rounding up (which keeps every server able to call).
    pub fn set_capacity_shares(&self, servers: u32) {
        let servers = servers.max(1);
        if self.inner.shares.swap(servers, Ordering::AcqRel) != servers {
            self.changed();
        }
    }

    /// This server's share of `capacity`.
    fn share_of(&self, capacity: u32) -> u32 {
        capacity.div_ceil(self.inner.shares.load(Ordering::Acquire).max(1))
    }

    /// Takes the health another server judged (a shared registry's replica): sets it as is,
    /// without thresholds, and publishes [`RegistryEvent::HealthChanged`] when it changed.
    /// Unknown ids are refused.
    pub fn adopt_health(&self, id: &ServiceId, health: Health, output: &str) -> Result<()> {
        let entry = self.entry(id)?;
        let now = self.inner.clock.now();
        let mut checks = entry.live.checks.lock();
        checks.last_output.clear();
        checks.last_output.push_str(output);
        let from = entry.live.health();
        if from == health {
            return Ok(());
        }
        checks.passes_in_a_row = 0;
        checks.failures_in_a_row = 0;
        checks.critical_since = (health == Health::Critical).then_some(now);
        entry.live.health.store(health_code(health), Ordering::Release);
        self.changed();
        drop(checks);
        self.inner.events.publish(RegistryEvent::HealthChanged {
            id: id.clone(),
            from,
            to: health,
            output: output.to_owned(),
        });
        Ok(())
    }

    /// Number of registered services.
    pub fn len(&self) -> usize {
        self.inner.state.read().by_id.len()
    }

    /// True when nothing is registered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl ServiceDirectory for Registry {
    fn register(&self, spec: ServiceSpec) -> BoxFuture<'_, baton_core::Result<Registration>> {
        Box::pin(std::future::ready(Registry::register(self, spec).map_err(Into::into)))
    }
    fn deregister<'a>(&'a self, id: &'a ServiceId) -> BoxFuture<'a, baton_core::Result<()>> {
        Box::pin(std::future::ready(Registry::deregister(self, id).map_err(Into::into)))
    }
    fn heartbeat<'a>(&'a self, id: &'a ServiceId) -> BoxFuture<'a, baton_core::Result<ServiceStatus>> {
        Box::pin(std::future::ready(Registry::heartbeat(self, id).map_err(Into::into)))
    }
    fn get(&self, id: &ServiceId) -> baton_core::Result<ServiceView> {
        Ok(Registry::get(self, id)?)
    }
    fn list(&self, after: Option<&ServiceId>, limit: usize) -> Page {
        Registry::list(self, after, limit)
    }
    fn find(&self, requirements: &ServiceRequirements, limit: usize) -> baton_core::Result<Matches> {
        Ok(Registry::find(self, requirements, limit)?)
    }
}

/// The planner's view: the services with passing health, whatever their load (capacity
/// matters when a task is dispatched, not when a plan is composed).
impl ServiceCatalog for Registry {
    fn generation(&self) -> u64 {
        self.inner.generation.load(Ordering::Acquire)
    }

    fn healthy_services(&self) -> Vec<Arc<ServiceSpec>> {
        let state = self.inner.state.read();
        state
            .slots
            .iter()
            .flatten()
            .filter(|entry| entry.live.health() == Health::Passing)
            .map(|entry| Arc::clone(&entry.spec))
            .collect()
    }
}

#[cfg(test)]
mod tests;
