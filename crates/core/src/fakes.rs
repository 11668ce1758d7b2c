//! Hand-written fakes of the ports, for tests in this and other crates (`test-util` feature).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use crate::Timestamp;
use crate::api::BoxFuture;
use crate::directory::{
    Candidate, Health, Matches, Page, Registration, ServiceDirectory, ServiceStatus, ServiceView, is_eligible,
    match_score, rank,
};
use crate::error::{Error, Result};
use crate::ids::ServiceId;
use crate::planning::ServiceCatalog;
use crate::ports::{Clock, EventSink, HealthProbe, ProbeResult, ProbeTarget};
use crate::requirements::ServiceRequirements;
use crate::service::ServiceSpec;
use crate::shared_registry::{ServiceTable, SharedChange, SharedChanges, SharedService};

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic in another test thread must not hide this test's own failure.
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A clock that moves only when told to.
#[derive(Debug, Clone)]
pub struct FakeClock {
    now: Arc<Mutex<Timestamp>>,
}

impl Default for FakeClock {
    fn default() -> Self {
        Self::at(chrono::DateTime::from_timestamp(1_800_000_000, 0).expect("valid timestamp"))
    }
}

impl FakeClock {
    /// A clock reading `now`.
    pub fn at(now: Timestamp) -> Self {
        Self { now: Arc::new(Mutex::new(now)) }
    }

    /// Moves time forward by `by`.
    pub fn advance(&self, by: Duration) {
        let mut now = lock(&self.now);
        *now += chrono::Duration::from_std(by).expect("duration fits");
    }
}

impl Clock for FakeClock {
    fn now(&self) -> Timestamp {
        *lock(&self.now)
    }
}

/// A health probe that answers from a script per service, records every call, and can hang.
#[derive(Debug, Clone, Default)]
pub struct ScriptedProbe {
    state: Arc<Mutex<ScriptState>>,
}

#[derive(Debug, Default)]
struct ScriptState {
    scripts: HashMap<ServiceId, VecDeque<ProbeResult>>,
    fallback: HashMap<ServiceId, ProbeResult>,
    hanging: HashMap<ServiceId, bool>,
    calls: Vec<ServiceId>,
}

impl ScriptedProbe {
    /// Queues `results` for `service`; once used up, the last one repeats.
    pub fn script(&self, service: &ServiceId, results: impl IntoIterator<Item = ProbeResult>) {
        let mut state = lock(&self.state);
        let queue = state.scripts.entry(service.clone()).or_default();
        queue.extend(results);
    }

    /// Makes every probe of `service` hang until cancelled (or stop hanging).
    pub fn hang(&self, service: &ServiceId, hang: bool) {
        lock(&self.state).hanging.insert(service.clone(), hang);
    }

    /// The services probed so far, in call order.
    pub fn calls(&self) -> Vec<ServiceId> {
        lock(&self.state).calls.clone()
    }
}

impl HealthProbe for ScriptedProbe {
    async fn probe(&self, target: &ProbeTarget) -> ProbeResult {
        let (result, hang) = {
            let mut state = lock(&self.state);
            state.calls.push(target.service.clone());
            let hang = state.hanging.get(&target.service).copied().unwrap_or(false);
            let next = state.scripts.get_mut(&target.service).and_then(VecDeque::pop_front);
            let result = match next {
                Some(result) => {
                    state.fallback.insert(target.service.clone(), result.clone());
                    result
                }
                None => state.fallback.get(&target.service).cloned().unwrap_or_else(|| Ok("ok".to_owned())),
            };
            (result, hang)
        };
        if hang {
            std::future::pending::<()>().await;
        }
        result
    }
}

/// An event sink that keeps everything it is given.
#[derive(Debug)]
pub struct RecordingSink<E> {
    events: Arc<Mutex<Vec<E>>>,
}

impl<E> Default for RecordingSink<E> {
    fn default() -> Self {
        Self { events: Arc::default() }
    }
}

impl<E> Clone for RecordingSink<E> {
    fn clone(&self) -> Self {
        Self { events: Arc::clone(&self.events) }
    }
}

impl<E: Clone> RecordingSink<E> {
    /// Everything published so far.
    pub fn events(&self) -> Vec<E> {
        lock(&self.events).clone()
    }

    /// Empties the record and returns what it held.
    pub fn take(&self) -> Vec<E> {
        std::mem::take(&mut *lock(&self.events))
    }
}

impl<E: Send + 'static> EventSink<E> for RecordingSink<E> {
    fn publish(&self, event: E) {
        lock(&self.events).push(event);
    }
}

/// A directory that scans every service on every call: slow, simple, obviously right.
/// Also the reference the real registry is tested against.
#[derive(Debug, Default)]
pub struct InMemoryDirectory {
    services: Mutex<BTreeMap<ServiceId, ServiceView>>,
    clock: FakeClock,
}

impl InMemoryDirectory {
    /// Overwrites a service's live state.
    pub fn set_status(&self, id: &ServiceId, status: ServiceStatus) -> Result<()> {
        let mut services = lock(&self.services);
        let view = services.get_mut(id).ok_or_else(|| Error::UnknownService(id.clone()))?;
        view.status = status;
        Ok(())
    }
}

/// The linear-scan find over `views`: every service checked against `requirements`.
pub fn linear_find<'a>(
    views: impl IntoIterator<Item = &'a ServiceView>,
    requirements: &ServiceRequirements,
    limit: usize,
) -> Matches {
    let mut candidates: Vec<Candidate> = views
        .into_iter()
        .filter(|v| requirements.matches(&v.spec) && is_eligible(&v.spec, v.status.health, v.status.in_flight))
        .map(|v| Candidate {
            score: match_score(&v.spec, v.status.in_flight, v.status.success_rate, requirements),
            service: v.clone(),
        })
        .collect();
    let total = candidates.len();
    rank(&mut candidates);
    candidates.truncate(limit);
    Matches { candidates, total }
}

impl ServiceDirectory for InMemoryDirectory {
    fn register(&self, spec: ServiceSpec) -> BoxFuture<'_, Result<Registration>> {
        Box::pin(std::future::ready(self.put(spec)))
    }

    fn deregister<'a>(&'a self, id: &'a ServiceId) -> BoxFuture<'a, Result<()>> {
        Box::pin(std::future::ready(
            lock(&self.services).remove(id).map(drop).ok_or_else(|| Error::UnknownService(id.clone())),
        ))
    }

    fn heartbeat<'a>(&'a self, id: &'a ServiceId) -> BoxFuture<'a, Result<ServiceStatus>> {
        Box::pin(std::future::ready(self.beat(id)))
    }

    fn get(&self, id: &ServiceId) -> Result<ServiceView> {
        lock(&self.services).get(id).cloned().ok_or_else(|| Error::UnknownService(id.clone()))
    }

    fn list(&self, after: Option<&ServiceId>, limit: usize) -> Page {
        self.page(after, limit)
    }

    fn find(&self, requirements: &ServiceRequirements, limit: usize) -> Result<Matches> {
        requirements.validate()?;
        Ok(linear_find(lock(&self.services).values(), requirements, limit))
    }
}

impl InMemoryDirectory {
    fn put(&self, spec: ServiceSpec) -> Result<Registration> {
        let now = self.clock.now();
        let status = ServiceStatus {
            health: Health::Passing,
            in_flight: 0,
            success_rate: 1.0,
            registered_at: now,
            last_heartbeat: None,
            last_check_output: String::new(),
        };
        let view = ServiceView { spec: Arc::new(spec), status };
        let previous = lock(&self.services).insert(view.spec.id().clone(), view);
        Ok(if previous.is_some() { Registration::Updated } else { Registration::Created })
    }

    fn beat(&self, id: &ServiceId) -> Result<ServiceStatus> {
        let now = self.clock.now();
        let mut services = lock(&self.services);
        let view = services.get_mut(id).ok_or_else(|| Error::UnknownService(id.clone()))?;
        view.status.last_heartbeat = Some(now);
        view.status.health = Health::Passing;
        Ok(view.status.clone())
    }

    fn page(&self, after: Option<&ServiceId>, limit: usize) -> Page {
        let services = lock(&self.services);
        let start = match after {
            Some(after) => std::ops::Bound::Excluded(after.clone()),
            None => std::ops::Bound::Unbounded,
        };
        let mut page: Vec<ServiceView> = services
            .range((start, std::ops::Bound::Unbounded))
            .take(limit.saturating_add(1))
            .map(|(_, v)| v.clone())
            .collect();
        let more = page.len() > limit;
        page.truncate(limit);
        let next_after = if more { page.last().map(|v| v.spec.id().clone()) } else { None };
        Page { services: page, next_after }
    }
}

/// A catalog of healthy services that changes only when told to. Its generation moves only on
/// [`bump`](Self::bump), so a test can change the services behind a consumer's back and see
/// that the consumer keeps what it cached until the generation moves.
#[derive(Debug, Default)]
pub struct FixedCatalog {
    state: Mutex<(u64, Vec<Arc<ServiceSpec>>)>,
}

impl FixedCatalog {
    /// A catalog of `services` at generation 0.
    pub fn new(services: impl IntoIterator<Item = ServiceSpec>) -> Self {
        Self { state: Mutex::new((0, services.into_iter().map(Arc::new).collect())) }
    }

    /// Adds a service without moving the generation.
    pub fn push(&self, spec: ServiceSpec) {
        lock(&self.state).1.push(Arc::new(spec));
    }

    /// Replaces every service without moving the generation.
    pub fn set(&self, services: impl IntoIterator<Item = ServiceSpec>) {
        lock(&self.state).1 = services.into_iter().map(Arc::new).collect();
    }

    /// Moves the generation on and returns the new one.
    pub fn bump(&self) -> u64 {
        let mut state = lock(&self.state);
        state.0 += 1;
        state.0
    }
}

impl ServiceCatalog for FixedCatalog {
    fn generation(&self) -> u64 {
        lock(&self.state).0
    }

    fn healthy_services(&self) -> Vec<Arc<ServiceSpec>> {
        lock(&self.state).1.clone()
    }
}

/// Ownership that changes only when told to: a test takes a partition away or hands it
/// over under a new epoch.
#[derive(Debug)]
pub struct FixedOwnership {
    partitions: u32,
    /// The generation and the owned partitions' epochs.
    state: Mutex<(u64, BTreeMap<u32, i64>)>,
}

impl FixedOwnership {
    /// Every one of `partitions` partitions, under `epoch`.
    pub fn all(partitions: u32, epoch: i64) -> Self {
        Self { partitions, state: Mutex::new((0, (0..partitions).map(|p| (p, epoch)).collect())) }
    }

    /// Owns `partition` under `epoch` from now on.
    pub fn set(&self, partition: u32, epoch: i64) {
        let mut state = lock(&self.state);
        state.0 += 1;
        state.1.insert(partition, epoch);
    }

    /// No longer owns `partition`.
    pub fn remove(&self, partition: u32) {
        let mut state = lock(&self.state);
        state.0 += 1;
        state.1.remove(&partition);
    }
}

impl crate::Ownership for FixedOwnership {
    fn partitions(&self) -> u32 {
        self.partitions
    }

    fn epoch(&self, partition: u32) -> Option<i64> {
        lock(&self.state).1.get(&partition).copied()
    }

    fn owned(&self) -> Vec<(u32, i64)> {
        lock(&self.state).1.iter().map(|(p, e)| (*p, *e)).collect()
    }

    fn generation(&self) -> u64 {
        lock(&self.state).0
    }
}

/// A [`ServiceTable`] in memory, on a [`FakeClock`], shared by the registries of a test's
/// "servers" (clone it for each). Every server checks every service unless
/// [`set_checks`](Self::set_checks) says otherwise.
#[derive(Clone, Default)]
pub struct InMemoryServiceTable {
    state: Arc<Mutex<TableState>>,
    clock: FakeClock,
    checks: Option<Arc<ChecksFn>>,
}

/// Which services a handle of an [`InMemoryServiceTable`] checks.
type ChecksFn = dyn Fn(&ServiceId) -> bool + Send + Sync;

impl std::fmt::Debug for InMemoryServiceTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InMemoryServiceTable").field("state", &self.state).finish_non_exhaustive()
    }
}

#[derive(Debug, Default)]
struct TableState {
    /// Every call fails as unavailable while set.
    down: bool,
    seq: u64,
    live_nodes: u32,
    /// By id: the row, or `None` once removed, with its change's sequence.
    rows: BTreeMap<ServiceId, (u64, Option<TableRow>)>,
}

#[derive(Debug, Clone)]
struct TableRow {
    service: SharedService,
    beat_at: Timestamp,
}

impl InMemoryServiceTable {
    /// An empty table on `clock`.
    pub fn on(clock: FakeClock) -> Self {
        Self { clock, ..Self::default() }
    }

    /// This handle's view of the table with `checks` deciding which services it checks.
    pub fn set_checks(&self, checks: impl Fn(&ServiceId) -> bool + Send + Sync + 'static) -> Self {
        Self { checks: Some(Arc::new(checks)), ..self.clone() }
    }

    /// Sets how many nodes are live.
    pub fn set_live_nodes(&self, nodes: u32) {
        lock(&self.state).live_nodes = nodes;
    }

    /// While `down`, every call fails as [`Error::Unavailable`], as with a database cut off.
    pub fn set_down(&self, down: bool) {
        lock(&self.state).down = down;
    }

    fn unavailable<T: Send + 'static>(&self) -> Option<BoxFuture<'_, Result<T>>> {
        let down = lock(&self.state).down;
        down.then(|| Box::pin(std::future::ready(Err(Error::Unavailable("the table is down".to_owned())))) as _)
    }

    /// Changes one row under a new sequence; false when the table does not hold it.
    fn change(&self, id: &ServiceId, change: impl FnOnce(&mut TableRow)) -> bool {
        let mut state = lock(&self.state);
        state.seq += 1;
        let seq = state.seq;
        match state.rows.get_mut(id) {
            Some((at, Some(row))) => {
                change(row);
                *at = seq;
                true
            }
            _ => false,
        }
    }
}

impl ServiceTable for InMemoryServiceTable {
    fn register(&self, spec: Arc<ServiceSpec>, health: Health) -> BoxFuture<'_, Result<Registration>> {
        if let Some(down) = self.unavailable() {
            return down;
        }
        let now = self.clock.now();
        let mut state = lock(&self.state);
        state.seq += 1;
        let seq = state.seq;
        let id = spec.id().clone();
        let kept = match state.rows.get(&id) {
            Some((_, Some(row))) => Some(row.service.clone()),
            _ => None,
        };
        let registration = if kept.is_some() { Registration::Updated } else { Registration::Created };
        let (health, output) = match kept {
            Some(old) if old.spec.health_check().kind == spec.health_check().kind => (old.health, old.output),
            _ => (health, String::new()),
        };
        let row = TableRow { service: SharedService { spec, health, output }, beat_at: now };
        state.rows.insert(id, (seq, Some(row)));
        Box::pin(std::future::ready(Ok(registration)))
    }

    fn deregister(&self, id: ServiceId) -> BoxFuture<'_, Result<bool>> {
        if let Some(down) = self.unavailable() {
            return down;
        }
        let mut state = lock(&self.state);
        state.seq += 1;
        let seq = state.seq;
        let removed = match state.rows.get_mut(&id) {
            Some(entry @ (_, Some(_))) => {
                *entry = (seq, None);
                true
            }
            _ => false,
        };
        Box::pin(std::future::ready(Ok(removed)))
    }

    fn heartbeat(&self, id: ServiceId, health: Health, output: String, age: Duration) -> BoxFuture<'_, Result<bool>> {
        if let Some(down) = self.unavailable() {
            return down;
        }
        let beat_at = self.clock.now() - chrono::Duration::from_std(age).unwrap_or_default();
        let found = self.change(&id, |row| {
            row.beat_at = beat_at;
            row.service.health = health;
            row.service.output = output;
        });
        Box::pin(std::future::ready(Ok(found)))
    }

    fn set_health(&self, id: ServiceId, health: Health, output: String) -> BoxFuture<'_, Result<bool>> {
        if let Some(down) = self.unavailable() {
            return down;
        }
        let found = self.change(&id, |row| {
            row.service.health = health;
            row.service.output = output;
        });
        Box::pin(std::future::ready(Ok(found)))
    }

    fn changes(&self, cursor: Option<u64>) -> BoxFuture<'_, Result<SharedChanges>> {
        if let Some(down) = self.unavailable() {
            return down;
        }
        let state = lock(&self.state);
        let mut rows: Vec<_> = state.rows.iter().filter(|(_, (seq, _))| cursor.is_none_or(|c| *seq > c)).collect();
        rows.sort_by_key(|(_, (seq, _))| *seq);
        let changes = rows
            .into_iter()
            .filter_map(|(id, (_, row))| match row {
                Some(row) => Some(SharedChange::Put(row.service.clone())),
                None => cursor.is_some().then(|| SharedChange::Removed(id.clone())),
            })
            .collect();
        let read = SharedChanges {
            cursor: state.seq,
            complete: cursor.is_none(),
            changes,
            live_nodes: state.live_nodes.max(1),
        };
        Box::pin(std::future::ready(Ok(read)))
    }

    fn expire(&self) -> BoxFuture<'_, Result<usize>> {
        if let Some(down) = self.unavailable() {
            return down;
        }
        let now = self.clock.now();
        let due: Vec<ServiceId> = lock(&self.state)
            .rows
            .iter()
            .filter_map(|(id, (_, row))| {
                let row = row.as_ref()?;
                let crate::service::CheckKind::Ttl { ttl } = row.service.spec.health_check().kind else { return None };
                let late = (now - row.beat_at).to_std().is_ok_and(|age| age > ttl);
                (late && row.service.health != Health::Critical && self.checks(id)).then(|| id.clone())
            })
            .collect();
        for id in &due {
            self.change(id, |row| {
                row.service.health = Health::Critical;
                row.service.output = "ttl expired".to_owned();
            });
        }
        Box::pin(std::future::ready(Ok(due.len())))
    }

    fn checks(&self, id: &ServiceId) -> bool {
        self.checks.as_ref().is_none_or(|checks| checks(id))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(id: &str, capability: &str, p99: f64) -> ServiceSpec {
        ServiceSpec::from_json(&format!(
            r#"{{"id":"{id}","endpoint":{{"protocol":"http","url":"http://127.0.0.1:1/"}},
                "capabilities":["{capability}"],"qos":{{"latency_p50_ms":1,"latency_p99_ms":{p99}}}}}"#
        ))
        .unwrap()
    }

    /// The answer of a future the fake settles at once.
    fn settled<T>(mut future: BoxFuture<'_, T>) -> T {
        let mut context = std::task::Context::from_waker(std::task::Waker::noop());
        match future.as_mut().poll(&mut context) {
            std::task::Poll::Ready(answer) => answer,
            std::task::Poll::Pending => panic!("the fake directory answers at once"),
        }
    }

    #[test]
    fn the_fake_directory_ranks_pages_and_rejects() {
        let dir = InMemoryDirectory::default();
        assert_eq!(settled(dir.register(spec("a", "x", 50.0))).unwrap(), Registration::Created);
        assert_eq!(settled(dir.register(spec("b", "x", 10.0))).unwrap(), Registration::Created);
        assert_eq!(settled(dir.register(spec("c", "y", 10.0))).unwrap(), Registration::Created);
        assert_eq!(settled(dir.register(spec("a", "x", 40.0))).unwrap(), Registration::Updated);
        let found = dir.find(&ServiceRequirements::capability("x"), 16).unwrap();
        let ids: Vec<_> = found.candidates.iter().map(|c| c.service.spec.id().as_str()).collect();
        assert_eq!((ids, found.total), (vec!["b", "a"], 2));
        let page = dir.list(None, 2);
        assert_eq!(page.services.len(), 2);
        let rest = dir.list(page.next_after.as_ref(), 2);
        assert_eq!((rest.services.len(), rest.next_after), (1, None));
        let ghost = ServiceId::new("ghost").unwrap();
        assert_eq!(settled(dir.deregister(&ghost)).unwrap_err(), Error::UnknownService(ghost));
        assert!(dir.find(&ServiceRequirements::default(), 16).is_err());
    }

    #[test]
    fn the_fixed_catalog_moves_its_generation_only_when_bumped() {
        let catalog = FixedCatalog::new([spec("a", "x", 1.0)]);
        assert_eq!(catalog.generation(), 0);
        catalog.push(spec("b", "x", 1.0));
        assert_eq!(catalog.generation(), 0);
        let ids = |c: &FixedCatalog| c.healthy_services().iter().map(|s| s.id().to_string()).collect::<Vec<_>>();
        assert_eq!(ids(&catalog), ["a", "b"]);
        assert_eq!(catalog.bump(), 1);
        catalog.set([spec("c", "x", 1.0)]);
        assert_eq!((catalog.generation(), ids(&catalog)), (1, vec!["c".to_owned()]));
    }
}
