//! The ownership port: which partitions of the executions a server owns in a cluster, and the
//! epoch each is owned under.
//!
//! Several servers on one database split the executions into a fixed number of partitions
//! ([`ExecutionId::partition`]). A server works on an execution only while it owns its
//! partition, and every write it makes for the execution carries the partition's epoch: the
//! store commits it only while that epoch is current, so a server that lost a partition to
//! another writes nothing more for it ([`StoreError::Fenced`](crate::StoreError::Fenced)).

use std::fmt;

use crate::ExecutionId;

/// Which partitions this server owns now, each with its epoch. Read often, from any task:
/// implementations answer from memory.
pub trait Ownership: fmt::Debug + Send + Sync + 'static {
    /// The cluster's partition count, fixed for its database.
    fn partitions(&self) -> u32;

    /// The epoch of `partition` while this server owns it.
    fn epoch(&self, partition: u32) -> Option<i64>;

    /// The owned partitions with their epochs, by partition.
    fn owned(&self) -> Vec<(u32, i64)>;

    /// A number that moves on whenever what is owned changes: a consumer that polls compares
    /// it rather than the partitions.
    fn generation(&self) -> u64;

    /// The partition of `execution` and its epoch, when this server owns it.
    fn of(&self, execution: ExecutionId) -> Option<(u32, i64)> {
        let partition = execution.partition(self.partitions());
        self.epoch(partition).map(|epoch| (partition, epoch))
    }
}
