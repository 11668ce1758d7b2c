//! Metrics read at scrape time from the components that keep the state: the registry, the
//! worker queues, the store, the executor (failovers, circuit breakers) and the expression
//! sandbox.

use std::sync::Arc;

use baton_core::{Health, ServiceId};
use baton_executor::{BreakerState, Executor, WorkerQueues};
use baton_registry::Registry;
use baton_store::{AnyStore, CommitStats};
use parking_lot::RwLock;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;

use crate::disk::DiskWatch;
use crate::dispatch::Dispatcher;
use crate::sandbox::Sandbox;

/// How many services one registry read takes: a scrape never holds the registry's lock for
/// more than one page.
const PAGE: usize = 1024;

/// The state of a service's circuit breaker, as the executor tells it.
pub(crate) type BreakerStates = Arc<dyn Fn(&ServiceId) -> BreakerState + Send + Sync>;

/// What a scrape reads; each part is optional until wired.
#[derive(Default)]
pub(crate) struct Sources {
    pub(crate) registry: Option<Registry>,
    pub(crate) executor: Option<Executor<Dispatcher>>,
    pub(crate) workers: Option<WorkerQueues>,
    /// In a cluster, the worker queues in its database, whose depths count every node's tasks.
    pub(crate) shared_workers: Option<crate::shared_workers::SharedWorkers>,
    pub(crate) store: Option<AnyStore>,
    pub(crate) breakers: Option<BreakerStates>,
    pub(crate) sandbox: Option<Sandbox>,
    pub(crate) disk: Option<DiskWatch>,
    /// In a cluster, the orchestrator: its membership and its forwarder.
    pub(crate) cluster: Option<crate::orchestrator::ServiceOrchestrator>,
    /// Runs stopped here because another node owns their executions now.
    pub(crate) fenced: Arc<std::sync::atomic::AtomicU64>,
}

impl std::fmt::Debug for Sources {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sources")
            .field("registry", &self.registry.is_some())
            .field("executor", &self.executor.is_some())
            .field("workers", &self.workers.is_some())
            .field("shared_workers", &self.shared_workers.is_some())
            .field("store", &self.store.is_some())
            .field("breakers", &self.breakers.is_some())
            .field("sandbox", &self.sandbox.is_some())
            .field("disk", &self.disk.is_some())
            .field("cluster", &self.cluster.is_some())
            .finish_non_exhaustive()
    }
}

/// The collector over [`Sources`].
#[derive(Debug, Clone, Default)]
pub(crate) struct StateCollector {
    pub(crate) sources: Arc<RwLock<Sources>>,
}

fn commit_stats(store: &AnyStore) -> Option<CommitStats> {
    match store {
        AnyStore::Memory(_) => None,
        AnyStore::Redb(store) => Some(store.commit_stats()),
        AnyStore::Postgres(store) => Some(store.commit_stats()),
    }
}

/// Every registered service, a page at a time.
fn for_each_service(registry: &Registry, mut f: impl FnMut(&baton_core::ServiceView)) {
    let mut after: Option<ServiceId> = None;
    loop {
        let page = registry.list(after.as_ref(), PAGE);
        page.services.iter().for_each(&mut f);
        match page.next_after {
            Some(next) => after = Some(next),
            None => break,
        }
    }
}

impl Collector for StateCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let sources = self.sources.read();
        if let Some(registry) = &sources.registry {
            let (mut passing, mut critical, mut unknown) = (0u64, 0u64, 0u64);
            let mut open = Vec::new();
            for_each_service(registry, |view| {
                match view.status.health {
                    Health::Passing => passing += 1,
                    Health::Critical => critical += 1,
                    Health::Unknown => unknown += 1,
                }
                if let Some(breakers) = &sources.breakers {
                    match breakers(view.spec.id()) {
                        BreakerState::Closed => {}
                        BreakerState::Open => open.push((view.spec.id().clone(), 1u64)),
                        BreakerState::HalfOpen => open.push((view.spec.id().clone(), 0u64)),
                    }
                }
            });
            let mut family = encoder.encode_descriptor(
                "baton_registry_services",
                "Registered services by health (passing, critical, unknown).",
                None,
                MetricType::Gauge,
            )?;
            for (health, count) in [("passing", passing), ("critical", critical), ("unknown", unknown)] {
                ConstGauge::new(count).encode(family.encode_family(&[("health", health)])?)?;
            }
            ConstGauge::new(passing + critical + unknown).encode(encoder.encode_descriptor(
                "baton_registry_services_registered",
                "Registered services.",
                None,
                MetricType::Gauge,
            )?)?;
            if sources.breakers.is_some() {
                let mut family = encoder.encode_descriptor(
                    "baton_circuit_breaker_open",
                    "Registered services whose circuit breaker is not closed: 1 open (calls refused), \
                     0 half-open (one probe call); closed ones are left out.",
                    None,
                    MetricType::Gauge,
                )?;
                for (service, value) in &open {
                    ConstGauge::new(*value).encode(family.encode_family(&[("service", service.as_str())])?)?;
                }
            }
        }
        if let Some(executor) = &sources.executor {
            ConstCounter::new(executor.failovers()).encode(encoder.encode_descriptor(
                "baton_failovers",
                "Attempts moved to another service (an alternative, or the next match of a capability) after a failure.",
                None,
                MetricType::Counter,
            )?)?;
        }
        if let Some(workers) = &sources.workers {
            let depths = crate::shared_workers::queue_depths(workers, sources.shared_workers.as_ref());
            let mut family = encoder.encode_descriptor(
                "baton_worker_queue_depth",
                "Tasks waiting for a worker, by queue (in a cluster, on every node).",
                None,
                MetricType::Gauge,
            )?;
            for depth in &depths {
                ConstGauge::new(depth.queued).encode(family.encode_family(&[("queue", depth.queue.as_str())])?)?;
            }
            let mut family = encoder.encode_descriptor(
                "baton_worker_queue_leased",
                "Tasks a worker holds and has not answered yet, by queue (in a cluster, on every node).",
                None,
                MetricType::Gauge,
            )?;
            for depth in &depths {
                ConstGauge::new(depth.leased).encode(family.encode_family(&[("queue", depth.queue.as_str())])?)?;
            }
        }
        if let Some(sandbox) = &sources.sandbox {
            let stats = sandbox.stats();
            ConstCounter::new(stats.evaluations).encode(encoder.encode_descriptor(
                "baton_expression_evaluations",
                "jq expression evaluations the sandbox answered, with values or errors.",
                None,
                MetricType::Counter,
            )?)?;
            ConstGauge::new(stats.in_flight as u64).encode(encoder.encode_descriptor(
                "baton_expression_evaluations_in_flight",
                "jq expression evaluations a worker process is running.",
                None,
                MetricType::Gauge,
            )?)?;
            let mut family = encoder.encode_descriptor(
                "baton_expression_limits",
                "Evaluations that went past a bound (cpu_time, stalled, memory, stack, output, depth, crashed).",
                None,
                MetricType::Counter,
            )?;
            for (bound, count) in &stats.limits {
                ConstCounter::new(*count).encode(family.encode_family(&[("bound", *bound)])?)?;
            }
            ConstGauge::new(stats.suspects as u64).encode(encoder.encode_descriptor(
                "baton_expression_suspects",
                "Expressions that went past a bound lately, their evaluations held to half the workers.",
                None,
                MetricType::Gauge,
            )?)?;
            ConstGauge::new(stats.workers as u64).encode(encoder.encode_descriptor(
                "baton_expression_workers",
                "Expression evaluator processes alive.",
                None,
                MetricType::Gauge,
            )?)?;
            ConstCounter::new(stats.workers_started).encode(encoder.encode_descriptor(
                "baton_expression_workers_started",
                "Expression evaluator processes started (one replaces each that a bound killed).",
                None,
                MetricType::Counter,
            )?)?;
        }
        if let Some(disk) = &sources.disk {
            ConstGauge::new(u64::from(disk.is_full())).encode(encoder.encode_descriptor(
                "baton_disk_full",
                "1 while the data directory's disk is full (less free than --min-free-disk-mib, or a write \
                 refused for lack of space): new executions are refused.",
                None,
                MetricType::Gauge,
            )?)?;
            if let Some(free) = disk.free_bytes() {
                ConstGauge::new(free).encode(encoder.encode_descriptor(
                    "baton_disk_free_bytes",
                    "Bytes free for the server on the data directory's disk.",
                    None,
                    MetricType::Gauge,
                )?)?;
            }
        }
        if let Some(stats) = sources.store.as_ref().and_then(commit_stats) {
            ConstCounter::new(stats.no_space).encode(encoder.encode_descriptor(
                "baton_store_no_space",
                "Store writes refused because the disk had no room; nothing of them was written.",
                None,
                MetricType::Counter,
            )?)?;
            ConstCounter::new(stats.transactions).encode(encoder.encode_descriptor(
                "baton_journal_commits",
                "Store write transactions committed (group commits).",
                None,
                MetricType::Counter,
            )?)?;
            ConstCounter::new(stats.writes).encode(encoder.encode_descriptor(
                "baton_journal_writes",
                "Store writes answered after a commit; writes over commits is the mean batch size.",
                None,
                MetricType::Counter,
            )?)?;
            // Only the +Inf bucket: the store keeps a sum and a count, so `_sum / _count` is the
            // mean group-commit latency.
            encoder
                .encode_descriptor(
                    "baton_journal_commit_seconds",
                    "Time a group commit took from its first write to durable (fsync included).",
                    Some(&prometheus_client::registry::Unit::Seconds),
                    MetricType::Histogram,
                )?
                .encode_histogram::<prometheus_client::encoding::NoLabelSet>(
                    stats.commit_time.as_secs_f64(),
                    stats.transactions,
                    &[(f64::INFINITY, stats.transactions)],
                    None,
                )?;
        }
        if let Some(member) = sources.cluster.as_ref().and_then(|o| o.member()) {
            encode_cluster(
                &mut encoder,
                member,
                sources.cluster.as_ref().and_then(|o| o.forwarder()),
                &sources.fenced,
            )?;
        }
        Ok(())
    }
}

/// The `baton_cluster_*` families of a cluster node.
fn encode_cluster(
    encoder: &mut DescriptorEncoder,
    member: &baton_cluster::Member,
    forwarder: Option<&crate::forward::Forwarder>,
    fenced: &std::sync::atomic::AtomicU64,
) -> Result<(), std::fmt::Error> {
    let stats = member.stats();
    let gauge = |encoder: &mut DescriptorEncoder, name, help, value: u64| {
        ConstGauge::new(value).encode(encoder.encode_descriptor(name, help, None, MetricType::Gauge)?)
    };
    let counter = |encoder: &mut DescriptorEncoder, name, help, value: u64| {
        ConstCounter::new(value).encode(encoder.encode_descriptor(name, help, None, MetricType::Counter)?)
    };
    gauge(
        encoder,
        "baton_cluster_partitions_owned",
        "Partitions this node owns now.",
        member.ownership().len() as u64,
    )?;
    gauge(
        encoder,
        "baton_cluster_nodes_live",
        "Nodes with a live lease, as the database said at this node's last heartbeat.",
        u64::from(member.live_nodes()),
    )?;
    counter(
        encoder,
        "baton_cluster_lease_renewal_failures",
        "Renewals missed: heartbeats that did not renew this node's lease (database error, timeout, or lease expired), or none in time.",
        stats.renewal_failures,
    )?;
    counter(
        encoder,
        "baton_cluster_self_fences",
        "Times this node stopped all its work because its lease could not be renewed in time.",
        stats.self_fences,
    )?;
    counter(
        encoder,
        "baton_cluster_partitions_claimed",
        "Partitions this node claimed: unowned ones, or taken over from a dead or leaving node.",
        stats.partitions_claimed,
    )?;
    counter(
        encoder,
        "baton_cluster_partitions_lost",
        "Partitions this node stopped owning (handed back, taken over, or dropped when it fenced itself).",
        stats.partitions_lost,
    )?;
    counter(
        encoder,
        "baton_cluster_executions_fenced",
        "Runs this node stopped because another node owns their execution now (a partition lost or a write refused \
         as fenced).",
        fenced.load(std::sync::atomic::Ordering::Relaxed),
    )?;
    if let Some(forwarder) = forwarder {
        let (forwarded, unreachable) = forwarder.counts();
        counter(
            encoder,
            "baton_cluster_forwarded_calls",
            "Pause, Resume, Cancel and Signal calls forwarded to the node that owns their execution.",
            forwarded,
        )?;
        counter(
            encoder,
            "baton_cluster_forwarded_unreachable",
            "Forwarded calls whose owner did not answer (answered UNAVAILABLE).",
            unreachable,
        )?;
    }
    // Only the +Inf bucket: a sum and a count, so `_sum / _count` is the mean renewal latency.
    encoder
        .encode_descriptor(
            "baton_cluster_lease_renewal",
            "Time an accepted lease renewal took, from sending it to the database's answer.",
            Some(&prometheus_client::registry::Unit::Seconds),
            MetricType::Histogram,
        )?
        .encode_histogram::<prometheus_client::encoding::NoLabelSet>(
            stats.renewal_seconds,
            stats.renewals,
            &[(f64::INFINITY, stats.renewals)],
            None,
        )
}
