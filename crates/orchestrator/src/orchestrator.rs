//! The seed's `ServiceOrchestrator`: the registry, its health supervisor, the planner, the
//! executor and the workflow engine over one store, assembled and run together.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use baton_core::{ExecutionId, Goal, Plan, Taxonomy, TaxonomyBuilder, WorkflowName};
use baton_executor::{HttpConfig, WorkerConfig, WorkerQueues};
use baton_planner::LivePlanner;
use baton_registry::{NetworkProbe, Registry, Shared, SharedHandle, SupervisorConfig, SupervisorHandle};
use baton_store::{AnyStore, MemoryStore, PostgresStore, RedbStore};
use baton_workflow::Engine;
use serde_json::Value;
use sha2::{Digest, Sha256};
use tokio::sync::Mutex;

use crate::disk::DiskWatch;
use crate::dispatch::Dispatcher;
use crate::forward::Forwarder;
use crate::runner::{EngineHost, ExecutorRunner, Queries, Router};
use crate::security::EndpointPolicy;

/// Where the orchestrator keeps workflows, executions and journals.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreChoice {
    /// In memory: gone with the process (tests, demos).
    Memory,
    /// A redb file in this data directory (the embedded default).
    Redb(PathBuf),
    /// A PostgreSQL database at this URL, for this server alone.
    Postgres(String),
    /// A PostgreSQL database shared by the nodes of a cluster, this server one of them: it
    /// runs the executions of the partitions it owns.
    Cluster(baton_cluster::Config),
}

/// How a [`ServiceOrchestrator`] is assembled.
#[derive(Debug, Clone)]
pub struct Options {
    /// The store.
    pub store: StoreChoice,
    /// The workflow engine's settings (output size limit, watch buffer).
    pub engine: baton_workflow::Config,
    /// The executor's settings (limits, breakers, the expression evaluator: in process and
    /// unbounded by default, for tests and trusted embedding; `baton serve` sets its sandbox).
    pub executor: baton_executor::Config,
    /// How HTTP services are called.
    pub http: HttpConfig,
    /// How worker queues lease tasks.
    pub workers: WorkerConfig,
    /// The registry's settings.
    pub registry: baton_registry::Config,
    /// Active health probes of HTTP and gRPC checks; `None` runs none (heartbeat TTLs still
    /// expire on reads).
    pub supervisor: Option<SupervisorConfig>,
    /// The concepts the planner reasons over; names it lacks become roots.
    pub taxonomy: Arc<Taxonomy>,
    /// How many services one call to a capability tries before it gives up.
    pub max_candidates: usize,
    /// Where requests workflows write themselves (`call: http`, `call: openapi`) may go: by
    /// default not to link-local or cloud metadata addresses.
    pub endpoints: EndpointPolicy,
    /// Where the registry reports registrations and health changes (the console's history).
    pub registry_events: RegistryEvents,
    /// With a redb store, the free bytes its disk keeps: below them the disk counts as full
    /// and new executions are refused ([`DiskWatch`]).
    pub min_free_disk: u64,
    /// With a redb store, the bytes of its page cache.
    pub redb_cache: usize,
    /// In a cluster, the credentials this node presents to the others when it forwards a call.
    pub peers: crate::forward::PeerAccess,
}

/// The free space a data directory's disk keeps by default: 64 MiB.
pub const DEFAULT_MIN_FREE_DISK: u64 = 64 * 1024 * 1024;

/// The registry's event sink, for [`Options`].
#[derive(Clone)]
pub struct RegistryEvents(pub Arc<dyn baton_core::EventSink<baton_core::RegistryEvent>>);

impl Default for RegistryEvents {
    fn default() -> Self {
        Self(Arc::new(baton_core::ports::DiscardEvents))
    }
}

impl std::fmt::Debug for RegistryEvents {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RegistryEvents")
    }
}

impl Default for Options {
    fn default() -> Self {
        Self {
            store: StoreChoice::Memory,
            engine: baton_workflow::Config::default(),
            executor: baton_executor::Config::default(),
            http: HttpConfig::default(),
            workers: WorkerConfig::default(),
            registry: baton_registry::Config::default(),
            supervisor: Some(SupervisorConfig::default()),
            taxonomy: Arc::new(TaxonomyBuilder::default().build().expect("an empty taxonomy is valid")),
            max_candidates: 3,
            endpoints: EndpointPolicy::default(),
            registry_events: RegistryEvents::default(),
            min_free_disk: DEFAULT_MIN_FREE_DISK,
            redb_cache: baton_store::DEFAULT_CACHE_BYTES,
            peers: crate::forward::PeerAccess::default(),
        }
    }
}

/// The shortest time a cluster node's store waits for PostgreSQL to answer a call, however
/// short its lease: a loaded database may take seconds.
const MIN_STORE_TIMEOUT: Duration = Duration::from_secs(5);

/// Refuses a database that live cluster nodes use: a server outside the cluster would take
/// the journals over from under them.
async fn refuse_live_cluster(url: &str) -> Result<(), Error> {
    // A database without the cluster's tables has no cluster.
    let Ok(status) = baton_cluster::status(url).await else { return Ok(()) };
    let live: Vec<&str> = status.nodes.iter().filter(|n| n.lease_remaining_ms > 0).map(|n| n.id.as_str()).collect();
    if live.is_empty() {
        return Ok(());
    }
    Err(Error::Cluster(format!(
        "the database is used by a cluster (live nodes: {}); start this server as a node of it with --cluster and \
         --node-id, or give it a database of its own",
        live.join(", ")
    )))
}

/// The engine as the orchestrator assembles it.
pub type OrchestratorEngine = Engine<AnyStore, ExecutorRunner<Dispatcher>>;

/// Why the orchestrator could not open or do what was asked.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The store would not open.
    #[error("store: {0}")]
    Store(#[from] baton_core::StoreError),
    /// The node could not join its cluster, or the database belongs to a cluster this server
    /// is not started as a node of.
    #[error("cluster: {0}")]
    Cluster(String),
    /// The workflow engine refused.
    #[error(transparent)]
    Workflow(#[from] baton_workflow::Error),
    /// No plan meets the goal, or the goal is malformed.
    #[error(transparent)]
    Planning(#[from] baton_planner::Error),
    /// The execution did not finish within the time the caller would wait.
    #[error("execution {execution} did not finish within {waited:?}")]
    WaitTimedOut {
        /// The execution, still running.
        execution: ExecutionId,
        /// How long the caller waited.
        waited: Duration,
    },
}

/// What [`ServiceOrchestrator::orchestrate`] did.
#[derive(Debug, Clone)]
pub struct Orchestrated {
    /// The plan.
    pub plan: Plan,
    /// The workflow that runs it (named after the goal) and its version.
    pub workflow: WorkflowName,
    /// Its version.
    pub version: u32,
    /// The execution started.
    pub execution: ExecutionId,
    /// The finished execution, when the caller waited for it.
    pub finished: Option<baton_core::Execution>,
}

/// The seed's `ServiceOrchestrator`: a cheap-to-clone handle on everything assembled.
#[derive(Clone)]
pub struct ServiceOrchestrator {
    inner: Arc<Inner>,
}

struct Inner {
    registry: Registry,
    planner: Arc<LivePlanner>,
    dispatcher: Dispatcher,
    executor: baton_executor::Executor<Dispatcher>,
    engine: OrchestratorEngine,
    store: AnyStore,
    disk: Option<DiskWatch>,
    supervisor: Mutex<Option<SupervisorHandle>>,
    /// This server's membership, in a cluster.
    member: Option<baton_cluster::Member>,
    /// In a cluster, where commands for executions other nodes run go.
    forwarder: Option<Forwarder>,
    /// On PostgreSQL outside a cluster, this server's hold on the database, while it runs.
    _alone: Option<baton_cluster::AloneHold>,
    /// In a cluster, the registry shared through the database, and its sync task.
    shared: Option<(Shared<baton_cluster::Services>, SharedHandle)>,
}

/// How often a node of a cluster reads the shared registry's changes: every node sees a
/// registration, a removal or a health change made through another within about this.
pub const SHARED_REGISTRY_POLL: Duration = Duration::from_millis(250);

impl std::fmt::Debug for ServiceOrchestrator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceOrchestrator")
            .field("services", &self.inner.registry.len())
            .field("engine", &self.inner.engine)
            .finish_non_exhaustive()
    }
}

impl ServiceOrchestrator {
    /// Opens the store, recovers unfinished executions, and starts the health supervisor.
    pub async fn open(mut options: Options) -> Result<Self, Error> {
        let mut disk = None;
        let mut member = None;
        let mut alone = None;
        let mut shared_tasks = None;
        let store = match &options.store {
            StoreChoice::Memory => AnyStore::Memory(MemoryStore::default()),
            StoreChoice::Redb(dir) => {
                let redb = baton_store::RedbOptions { cache_bytes: options.redb_cache, ..Default::default() };
                let store = RedbStore::open_with(dir, redb).await?;
                let recovery = store.recovery();
                if recovery.segments > 0 {
                    tracing::info!(
                        segments = recovery.segments,
                        events = recovery.events,
                        "folded the journal log a previous run left"
                    );
                }
                for dropped in &recovery.dropped_frames {
                    tracing::warn!(frame = %dropped, "dropped a journal frame that was torn or damaged");
                }
                let watched = store.clone();
                disk = Some(DiskWatch::start(dir, options.min_free_disk, move || watched.commit_stats().no_space));
                AnyStore::Redb(store)
            }
            StoreChoice::Postgres(url) => {
                refuse_live_cluster(url).await?;
                alone = Some(baton_cluster::hold_alone(url).await.map_err(|e| Error::Cluster(e.to_string()))?);
                let store = PostgresStore::connect(&baton_store::postgres::Config::new(url.clone())).await?;
                let takeover = store.takeover();
                tracing::info!(
                    epoch = takeover.epoch,
                    frames = takeover.frames,
                    events = takeover.events,
                    "took over the journal writer role; a server that held it before takes no more appends"
                );
                for line in &takeover.unreadable {
                    tracing::warn!(line = %line, "dropped an unreadable line of a journal frame");
                }
                AnyStore::Postgres(store)
            }
            StoreChoice::Cluster(cluster) => {
                // A call outstanding past the lease is moot: the node has fenced itself by then.
                // A third of the lease in a transaction: a node frozen inside a write lets go
                // of its partitions' rows long before the others may claim them.
                let config = baton_store::postgres::Config {
                    timeout: cluster.lease_ttl.max(MIN_STORE_TIMEOUT),
                    idle_in_transaction_timeout: Some(cluster.lease_ttl / 3),
                    ..baton_store::postgres::Config::new(cluster.url.clone())
                };
                baton_store::postgres::migrate_schema(&config).await?;
                baton_cluster::refuse_held_alone(&cluster.url).await.map_err(|e| Error::Cluster(e.to_string()))?;
                let joined =
                    baton_cluster::Member::join(cluster.clone()).await.map_err(|e| Error::Cluster(e.to_string()))?;
                let ownership: Arc<dyn baton_core::Ownership> = Arc::new(joined.clone());
                let store = PostgresStore::connect_partitioned(&config, Arc::clone(&ownership)).await?;
                tracing::info!(
                    node = %cluster.node_id,
                    address = %cluster.address,
                    partitions = cluster.partitions,
                    lease_ttl = ?cluster.lease_ttl,
                    "joined the cluster; this node runs the executions of the partitions it owns"
                );
                let settings = baton_cluster::tasks::Settings {
                    lease: options.workers.lease,
                    max_queue_len: options.workers.max_queue_len,
                    max_expired_leases: options.workers.max_expired_leases,
                    ..Default::default()
                };
                shared_tasks = Some(
                    baton_cluster::tasks::TaskQueues::new(&cluster.url, Arc::clone(&ownership), settings)
                        .map_err(|e| Error::Cluster(e.to_string()))?,
                );
                options.engine.ownership = Some(ownership);
                member = Some(joined);
                AnyStore::Postgres(store)
            }
        };
        let registry = options
            .registry
            .clone()
            .build_with(Arc::new(baton_core::SystemClock), Arc::clone(&options.registry_events.0));
        let shared = match (&options.store, &member) {
            (StoreChoice::Cluster(cluster), Some(member)) => {
                let table = baton_cluster::Services::new(&cluster.url, Arc::new(member.clone()))
                    .map_err(|e| Error::Cluster(e.to_string()))?;
                let shared = Shared::new(registry.clone(), table);
                shared.sync().await.map_err(|e| Error::Cluster(format!("reading the shared registry: {e}")))?;
                let sync = shared.spawn(SHARED_REGISTRY_POLL);
                if let Some(supervisor) = options.supervisor.as_mut() {
                    supervisor.scope = Some(Arc::new(shared.clone()));
                }
                Some((shared, sync))
            }
            _ => None,
        };
        let queries = Arc::new(Queries::default());
        let dispatcher = Dispatcher::new(
            registry.clone(),
            Arc::clone(&queries),
            options.http.clone(),
            options.workers.clone(),
            options.max_candidates,
        )
        .with_endpoints(options.endpoints);
        let dispatcher = match &options.engine.ownership {
            Some(ownership) => dispatcher.with_ownership(Arc::clone(ownership)),
            None => dispatcher,
        };
        let dispatcher = match shared_tasks {
            Some(tasks) => dispatcher.share_workers(tasks),
            None => dispatcher,
        };
        let router = Arc::new(Router::default());
        let host = Arc::new(EngineHost::new(queries));
        let executor = options
            .executor
            .clone()
            .build(
                Arc::new(dispatcher.clone()),
                Arc::clone(&router) as Arc<dyn baton_core::EventSink<baton_core::Event>>,
                Arc::clone(&options.engine.clock),
            )
            .with_host(Arc::clone(&host) as Arc<dyn baton_executor::Host>);
        let runner = ExecutorRunner::new(executor.clone(), router);
        let engine = Engine::open(options.engine.clone(), store.clone(), runner).await?;
        host.bind(&engine);
        let planner = Arc::new(LivePlanner::new(Arc::clone(&options.taxonomy), Arc::new(registry.clone())));
        let supervisor = options
            .supervisor
            .clone()
            .map(|config| config.build(registry.clone(), Arc::new(NetworkProbe::default())).spawn());
        Ok(Self {
            inner: Arc::new(Inner {
                registry,
                planner,
                dispatcher,
                executor,
                engine,
                store,
                disk,
                supervisor: Mutex::new(supervisor),
                forwarder: member.clone().map(|member| Forwarder::new(member, options.peers.clone())),
                member,
                _alone: alone,
                shared,
            }),
        })
    }

    /// The service registry: this server's, or its replica of the cluster's.
    pub fn registry(&self) -> &Registry {
        &self.inner.registry
    }

    /// The registry as the API serves it: writes go to the cluster's shared table first
    /// when this server is a node of one.
    pub fn directory(&self) -> Arc<dyn baton_core::ServiceDirectory> {
        match &self.inner.shared {
            Some((shared, _)) => Arc::new(shared.clone()),
            None => Arc::new(self.inner.registry.clone()),
        }
    }

    /// The planner over the registry's healthy services.
    pub fn planner(&self) -> &Arc<LivePlanner> {
        &self.inner.planner
    }

    /// The workflow engine.
    pub fn engine(&self) -> &OrchestratorEngine {
        &self.inner.engine
    }

    /// The worker queues behind `Worker` endpoints.
    pub fn workers(&self) -> &WorkerQueues {
        self.inner.dispatcher.workers()
    }

    /// Every worker queue's waiting and leased tasks, by name: in a cluster on every node (as
    /// read from the database a moment ago), else this server's.
    pub fn queue_depths(&self) -> Vec<baton_core::activity::QueueDepth> {
        crate::shared_workers::queue_depths(self.workers(), self.inner.dispatcher.shared_workers())
    }

    /// The dispatcher, for its failover count.
    pub fn dispatcher(&self) -> &Dispatcher {
        &self.inner.dispatcher
    }

    /// The executor, for breaker states.
    pub fn executor(&self) -> &baton_executor::Executor<Dispatcher> {
        &self.inner.executor
    }

    /// In a cluster, what sends commands on to the nodes that run their executions.
    pub fn forwarder(&self) -> Option<&Forwarder> {
        self.inner.forwarder.as_ref()
    }

    /// This server's cluster membership, when it is a node of a cluster.
    pub fn member(&self) -> Option<&baton_cluster::Member> {
        self.inner.member.as_ref()
    }

    /// Leaves the cluster, handing this node's partitions over at once; nothing outside one.
    pub async fn leave_cluster(&self) {
        if let Some(member) = &self.inner.member {
            match member.leave().await {
                Ok(()) => tracing::info!(node = member.node_id(), "left the cluster; its partitions go to the others"),
                Err(error) => tracing::warn!(%error, "could not leave the cluster; its partitions go after its lease"),
            }
        }
    }

    /// The store.
    pub fn store(&self) -> &AnyStore {
        &self.inner.store
    }

    /// The data directory's disk, with a redb store.
    pub fn disk(&self) -> Option<&DiskWatch> {
        self.inner.disk.as_ref()
    }

    /// Why new executions are refused now, when they are: the data directory's disk is full.
    pub fn refusing_new_work(&self) -> Option<String> {
        let disk = self.inner.disk.as_ref()?;
        // Look again, so that room that came back since the last look counts at once.
        disk.look();
        disk.full()
    }

    /// The seed's `orchestrate_services`: plans `goal` over the healthy services, stores the
    /// plan as workflow `goal-<hash of the goal>` (a new version only when the plan changed),
    /// starts it on `input`, and when `wait` is given waits that long for it to finish.
    pub async fn orchestrate(&self, goal: &Goal, input: Value, wait: Option<Duration>) -> Result<Orchestrated, Error> {
        let name = goal_workflow_name(goal);
        if let Some(reason) = self.refusing_new_work() {
            return Err(Error::Store(baton_core::StoreError::NoSpace(reason)));
        }
        let (plan, workflow) = self.inner.planner.plan_workflow(goal, name.clone())?;
        let text = serde_json::to_string(&workflow).expect("a workflow serializes");
        let applied = self.inner.engine.apply(&text).await?;
        let execution = self.inner.engine.start(&name, Some(applied.version), input, None).await?;
        let finished = match wait {
            None => None,
            Some(waited) => match tokio::time::timeout(waited, self.inner.engine.wait(execution)).await {
                Ok(finished) => Some(finished?),
                Err(_) => return Err(Error::WaitTimedOut { execution, waited }),
            },
        };
        Ok(Orchestrated { plan, workflow: name, version: applied.version, execution, finished })
    }

    /// Stops the health supervisor. Executions are journaled as they go, so nothing else
    /// needs flushing: what is running resumes on the next open.
    pub async fn shutdown(&self) {
        if let Some(supervisor) = self.inner.supervisor.lock().await.take() {
            supervisor.shutdown().await;
        }
    }
}

/// `goal-` and the first 12 hex digits of the SHA-256 of the goal's JSON: the same goal maps
/// to the same workflow, whose versions follow the plans made for it.
fn goal_workflow_name(goal: &Goal) -> WorkflowName {
    let digest = Sha256::digest(serde_json::to_vec(goal).expect("a goal serializes"));
    let hex: String = digest[..6].iter().map(|b| format!("{b:02x}")).collect();
    WorkflowName::new(&format!("goal-{hex}")).expect("a valid workflow name")
}
