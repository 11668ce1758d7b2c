//! The shared service table port: in a cluster, the services and their health live in one
//! table every node reads, so a service registered through one node is found by all.
//!
//! Each node keeps its registry in memory (finds stay microseconds) as a replica of the table:
//! it writes registrations, removals, heartbeats and the verdicts of the checks it runs to
//! the table, and reads the table's changes after a cursor, a sequence that moves with every
//! change in commit order. A heartbeat's TTL is judged by the table's clock, never a node's.

use std::sync::Arc;
use std::time::Duration;

use crate::api::BoxFuture;
use crate::directory::{Health, Registration};
use crate::error::Result;
use crate::ids::ServiceId;
use crate::service::ServiceSpec;

/// How long the table remembers a removal: a reader that has not read its changes for half
/// of this reads the whole table again instead.
pub const REMOVALS_KEPT: Duration = Duration::from_secs(600);

/// One service as the table holds it.
#[derive(Debug, Clone, PartialEq)]
pub struct SharedService {
    /// Its spec.
    pub spec: Arc<ServiceSpec>,
    /// Its health, as the node that checks it (or the TTL) last said.
    pub health: Health,
    /// What that check said.
    pub output: String,
}

/// One change of the table.
#[derive(Debug, Clone, PartialEq)]
pub enum SharedChange {
    /// Registered, updated, or its health changed.
    Put(SharedService),
    /// Deregistered.
    Removed(ServiceId),
}

/// What [`ServiceTable::changes`] read.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct SharedChanges {
    /// Where the next read starts.
    pub cursor: u64,
    /// True when `changes` holds every service (a read without a cursor): the reader drops
    /// what it holds that is not among them.
    pub complete: bool,
    /// In the order they were made.
    pub changes: Vec<SharedChange>,
    /// The nodes whose lease is live, at least 1: each takes its share of a service's capacity.
    pub live_nodes: u32,
}

/// The table of services several servers share. Writes are answered once committed.
pub trait ServiceTable: std::fmt::Debug + Send + Sync + 'static {
    /// Stores `spec`, new or replacing the service with its id. The stored health stays when
    /// the spec's health check kind is unchanged; otherwise (or when new) it becomes `health`.
    fn register(&self, spec: Arc<ServiceSpec>, health: Health) -> BoxFuture<'_, Result<Registration>>;

    /// Removes the service; false when the table does not hold it.
    fn deregister(&self, id: ServiceId) -> BoxFuture<'_, Result<bool>>;

    /// A heartbeat the node received `age` ago, after which the node judged the service
    /// `health` (`output`): its TTL runs from then by the table's clock. False when the table
    /// does not hold the service.
    fn heartbeat(&self, id: ServiceId, health: Health, output: String, age: Duration) -> BoxFuture<'_, Result<bool>>;

    /// A verdict of the node that checks the service. False when the table does not hold it.
    fn set_health(&self, id: ServiceId, health: Health, output: String) -> BoxFuture<'_, Result<bool>>;

    /// The changes after `cursor`, in order; every service when `cursor` is `None`.
    fn changes(&self, cursor: Option<u64>) -> BoxFuture<'_, Result<SharedChanges>>;

    /// Turns critical the TTL-checked services this node checks whose TTL has run out by the
    /// table's clock; answers how many.
    fn expire(&self) -> BoxFuture<'_, Result<usize>>;

    /// True when this node runs `id`'s checks (its active probes and its TTL), so that one
    /// node does, not every node.
    fn checks(&self, id: &ServiceId) -> bool;
}
