//! A registry shared by several servers: [`Shared`] writes through a [`ServiceTable`] and
//! keeps this server's [`Registry`] as a replica of it.
//!
//! Writes (register, deregister, heartbeat) reach the table before they are answered, then
//! the local registry, so the server that took them sees them at once; every other server
//! sees them on its next [`sync`](Shared::sync), which reads the table's changes after its
//! cursor. Heartbeats are coalesced: a server writes a service's heartbeat at most once per
//! third of its TTL (once per [`UNCHECKED_BEAT_EVERY`] without a TTL), unless the health
//! changed; a heartbeat held back is written at the end of that window, dated back by the
//! time it waited, so the TTL the table judges runs from the last heartbeat received.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use baton_core::{
    BoxFuture, CheckKind, DeregisterReason, Health, Matches, Page, REMOVALS_KEPT, Registration, RegistryEvent,
    ServiceDirectory, ServiceId, ServiceRequirements, ServiceSpec, ServiceStatus, ServiceTable, ServiceView,
    SharedChange, SharedService,
};
use parking_lot::Mutex;
use tokio::task::JoinHandle;
use tokio::time::{Instant, MissedTickBehavior};

use crate::error::Error;
use crate::health::Scope;
use crate::registry::{Registry, initial_health};

/// How often a server writes the heartbeats of a service without a TTL check, which only
/// show when it last called in.
pub const UNCHECKED_BEAT_EVERY: Duration = Duration::from_secs(10);

/// A registry shared through `T`: a cheap-to-clone handle.
#[derive(Debug)]
pub struct Shared<T> {
    inner: Arc<Inner<T>>,
}

impl<T> Clone for Shared<T> {
    fn clone(&self) -> Self {
        Self { inner: Arc::clone(&self.inner) }
    }
}

#[derive(Debug)]
struct Inner<T> {
    registry: Registry,
    table: T,
    beats: Mutex<HashMap<ServiceId, Beat>>,
    /// Verdicts of this server's checks the table has not taken yet (it was unreachable), the
    /// latest per service: written again each round, or this server's view and everyone
    /// else's would differ until the health changed again.
    unreported: Mutex<HashMap<ServiceId, RegistryEvent>>,
    /// Where the next read of the table's changes starts, and when the last read was; one
    /// read at a time.
    cursor: tokio::sync::Mutex<Option<(u64, Instant)>>,
}

/// The heartbeats of one service this server wrote and holds back.
#[derive(Debug)]
struct Beat {
    written: Instant,
    window: Duration,
    held: Option<Held>,
}

#[derive(Debug)]
struct Held {
    at: Instant,
    health: Health,
    output: String,
}

impl<T: ServiceTable> Shared<T> {
    /// Shares `registry` through `table`. Nothing is read until the first [`sync`](Self::sync).
    pub fn new(registry: Registry, table: T) -> Self {
        Self {
            inner: Arc::new(Inner {
                registry,
                table,
                beats: Mutex::default(),
                unreported: Mutex::default(),
                cursor: tokio::sync::Mutex::new(None),
            }),
        }
    }

    /// The local replica.
    pub fn registry(&self) -> &Registry {
        &self.inner.registry
    }

    /// The table.
    pub fn table(&self) -> &T {
        &self.inner.table
    }

    /// Reads the table's changes since the last read (everything on the first read, or when
    /// the last was so long ago that the table may have forgotten a removal) and applies them
    /// to the local registry; answers how many changes it read.
    pub async fn sync(&self) -> baton_core::Result<usize> {
        let mut cursor = self.inner.cursor.lock().await;
        let after = cursor.and_then(|(at, read)| (read.elapsed() < REMOVALS_KEPT / 2).then_some(at));
        let read = Instant::now();
        let changes = self.inner.table.changes(after).await?;
        let registry = &self.inner.registry;
        let mut present = BTreeSet::new();
        for change in &changes.changes {
            match change {
                SharedChange::Put(service) => {
                    present.insert(service.spec.id().clone());
                    self.apply(service)?;
                }
                SharedChange::Removed(id) => {
                    self.inner.beats.lock().remove(id);
                    // Gone already when this server took the deregistration itself.
                    let _ = registry.remove(id, DeregisterReason::Requested);
                }
            }
        }
        if changes.complete {
            let mut after = None;
            loop {
                let page = registry.list(after.as_ref(), 1024);
                for view in &page.services {
                    if !present.contains(view.spec.id()) {
                        let _ = registry.remove(view.spec.id(), DeregisterReason::Requested);
                    }
                }
                match page.next_after {
                    Some(next) => after = Some(next),
                    None => break,
                }
            }
        }
        registry.set_capacity_shares(changes.live_nodes);
        *cursor = Some((changes.cursor, read));
        Ok(changes.changes.len())
    }

    /// Takes one service as the table holds it: its spec when it changed, its health.
    fn apply(&self, service: &SharedService) -> baton_core::Result<()> {
        let registry = &self.inner.registry;
        let id = service.spec.id();
        let same = registry.get(id).is_ok_and(|view| view.spec == service.spec);
        if !same {
            registry.register(ServiceSpec::clone(&service.spec))?;
        }
        registry.adopt_health(id, service.health, &service.output)?;
        Ok(())
    }

    /// One round: turns the expired TTLs of the services this server checks critical,
    /// writes the heartbeats held back whose window has passed, and syncs.
    pub async fn round(&self) {
        if let Err(error) = self.inner.table.expire().await {
            tracing::warn!(%error, "could not expire heartbeat TTLs in the shared registry");
        }
        self.flush().await;
        let unreported: Vec<RegistryEvent> = self.inner.unreported.lock().drain().map(|(_, event)| event).collect();
        for event in unreported {
            self.report_event(event).await;
        }
        if let Err(error) = self.sync().await {
            tracing::warn!(%error, "could not read the shared registry's changes");
        }
    }

    /// Writes the heartbeats held back whose window has passed.
    async fn flush(&self) {
        let due: Vec<(ServiceId, Held)> = {
            let mut beats = self.inner.beats.lock();
            let now = Instant::now();
            beats
                .iter_mut()
                .filter(|(_, beat)| beat.held.is_some() && now.duration_since(beat.written) >= beat.window)
                .filter_map(|(id, beat)| {
                    beat.written = now;
                    beat.held.take().map(|held| (id.clone(), held))
                })
                .collect()
        };
        for (id, held) in due {
            let age = held.at.elapsed();
            if let Err(error) = self.inner.table.heartbeat(id.clone(), held.health, held.output, age).await {
                tracing::warn!(%error, service = %id, "could not write a heartbeat to the shared registry");
            }
        }
    }

    /// Runs a [`round`](Self::round) every `every` until the handle is dropped.
    pub fn spawn(&self, every: Duration) -> SharedHandle {
        let shared = self.clone();
        let every = every.max(Duration::from_millis(1));
        let task = tokio::spawn(async move {
            let mut interval = tokio::time::interval(every);
            interval.set_missed_tick_behavior(MissedTickBehavior::Delay);
            loop {
                interval.tick().await;
                shared.round().await;
            }
        });
        SharedHandle { task }
    }

    /// Writes a verdict of this server's checks to the table; kept for the next round when
    /// the table cannot take it now.
    async fn report_event(&self, event: RegistryEvent) {
        let written = match &event {
            RegistryEvent::HealthChanged { id, to, output, .. } => {
                self.inner.table.set_health(id.clone(), *to, output.clone()).await.map(drop)
            }
            RegistryEvent::Deregistered { id, .. } => {
                self.inner.beats.lock().remove(id);
                self.inner.table.deregister(id.clone()).await.map(drop)
            }
            _ => return,
        };
        let id = match &event {
            RegistryEvent::HealthChanged { id, .. } | RegistryEvent::Deregistered { id, .. } => id.clone(),
            _ => return,
        };
        match written {
            // A newer verdict was taken: an older one held back must not follow it.
            Ok(()) => drop(self.inner.unreported.lock().remove(&id)),
            Err(error) => {
                tracing::warn!(%error, service = %id, "could not write a check's verdict to the shared registry; will retry");
                self.inner.unreported.lock().insert(id, event);
            }
        }
    }

    async fn register_shared(&self, spec: ServiceSpec) -> baton_core::Result<Registration> {
        let spec = Arc::new(spec);
        let health = initial_health(&spec.health_check().kind);
        let registration = self.inner.table.register(Arc::clone(&spec), health).await?;
        // A registration counts as a heartbeat, at the table as here.
        let window = beat_window(&spec.health_check().kind);
        self.inner.beats.lock().insert(spec.id().clone(), Beat { written: Instant::now(), window, held: None });
        let same = self.inner.registry.get(spec.id()).is_ok_and(|view| view.spec == spec);
        if !same {
            self.inner.registry.register(ServiceSpec::clone(&spec))?;
        }
        Ok(registration)
    }

    async fn deregister_shared(&self, id: &ServiceId) -> baton_core::Result<()> {
        let removed = self.inner.table.deregister(id.clone()).await?;
        self.inner.beats.lock().remove(id);
        let here = self.inner.registry.remove(id, DeregisterReason::Requested).is_ok();
        if removed || here { Ok(()) } else { Err(baton_core::Error::UnknownService(id.clone())) }
    }

    async fn heartbeat_shared(&self, id: &ServiceId) -> baton_core::Result<ServiceStatus> {
        let registry = &self.inner.registry;
        let before = match registry.get(id) {
            Ok(view) => view,
            Err(Error::UnknownService(_)) => {
                // Registered through another server since the last sync, perhaps.
                self.sync().await?;
                registry.get(id)?
            }
            Err(error) => return Err(error.into()),
        };
        let status = registry.heartbeat(id)?;
        let now = Instant::now();
        let window = beat_window(&before.spec.health_check().kind);
        let write = {
            let mut beats = self.inner.beats.lock();
            match beats.get_mut(id) {
                Some(beat) if status.health == before.status.health && now.duration_since(beat.written) < window => {
                    let output = status.last_check_output.clone();
                    beat.held = Some(Held { at: now, health: status.health, output });
                    false
                }
                _ => {
                    beats.insert(id.clone(), Beat { written: now, window, held: None });
                    true
                }
            }
        };
        if write {
            let output = status.last_check_output.clone();
            if !self.inner.table.heartbeat(id.clone(), status.health, output, Duration::ZERO).await? {
                // Deregistered through another server meanwhile.
                self.inner.beats.lock().remove(id);
                let _ = registry.remove(id, DeregisterReason::Requested);
                return Err(baton_core::Error::UnknownService(id.clone()));
            }
        }
        Ok(status)
    }
}

/// How long a server holds back heartbeats after it wrote one.
fn beat_window(kind: &CheckKind) -> Duration {
    match kind {
        CheckKind::Ttl { ttl } => *ttl / 3,
        _ => UNCHECKED_BEAT_EVERY,
    }
}

impl<T: ServiceTable> ServiceDirectory for Shared<T> {
    fn register(&self, spec: ServiceSpec) -> BoxFuture<'_, baton_core::Result<Registration>> {
        Box::pin(self.register_shared(spec))
    }

    fn deregister<'a>(&'a self, id: &'a ServiceId) -> BoxFuture<'a, baton_core::Result<()>> {
        Box::pin(self.deregister_shared(id))
    }

    fn heartbeat<'a>(&'a self, id: &'a ServiceId) -> BoxFuture<'a, baton_core::Result<ServiceStatus>> {
        Box::pin(self.heartbeat_shared(id))
    }

    fn get(&self, id: &ServiceId) -> baton_core::Result<ServiceView> {
        Ok(self.inner.registry.get(id)?)
    }

    fn list(&self, after: Option<&ServiceId>, limit: usize) -> Page {
        self.inner.registry.list(after, limit)
    }

    fn find(&self, requirements: &ServiceRequirements, limit: usize) -> baton_core::Result<Matches> {
        Ok(self.inner.registry.find(requirements, limit)?)
    }
}

/// The supervisor of a shared registry checks the services the table gives this server and
/// writes its verdicts there.
impl<T: ServiceTable> Scope for Shared<T> {
    fn checks(&self, id: &ServiceId) -> bool {
        self.inner.table.checks(id)
    }

    fn report(&self, event: RegistryEvent) -> BoxFuture<'_, ()> {
        Box::pin(self.report_event(event))
    }
}

/// The running sync task of a [`Shared`] registry; dropping it stops the task.
#[derive(Debug)]
pub struct SharedHandle {
    task: JoinHandle<()>,
}

impl Drop for SharedHandle {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[cfg(test)]
mod tests;
