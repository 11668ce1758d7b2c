//! Cluster membership on PostgreSQL: which node owns which partition of the executions, and the
//! epoch that fences a node out once another took a partition over.
//!
//! What it is for: several `baton serve` nodes sharing one database. Each node holds a row in
//! `baton_nodes` with a lease kept by heartbeat and timed by the **database's** clock
//! (`now()`), never a node's. The executions are split into a fixed number of partitions
//! (default 64, fixed by the first node of a database and refused if configured otherwise
//! later); an execution belongs to [`ExecutionId::partition`]. Every partition row in
//! `baton_partitions` has an owner and an epoch: claiming a partition raises its epoch, so a
//! write conditional on the epoch a node was given commits only while that node still owns it.
//!
//! - **Claiming.** Live nodes claim partitions that have no owner or whose owner's lease has
//!   expired, up to `ceil(P / live nodes)` each, with `FOR UPDATE SKIP LOCKED` so nodes racing
//!   for them take different ones. A node above that share releases one partition per heartbeat,
//!   so a joining node takes its share gradually and a rolling restart does not churn.
//! - **Self-fencing.** A node counts its lease from the moment it *sent* the renewal that the
//!   database accepted, minus a safety margin, so by its own clock the lease ends before it
//!   ends at the database. When it cannot renew by then it drops every partition, before any
//!   other node may claim them; when it reaches the database again it joins anew, with fresh
//!   epochs.
//! - **Leaving.** [`Member::leave`] drops every partition, releases them and deletes the node's
//!   row in one transaction: the others claim them on their next heartbeat, not after a TTL.
//!
//! - **Shared registry.** [`Services`] is the table of services and their health every node
//!   shares ([`baton_core::ServiceTable`]); the node owning the partition a service's id hashes
//!   to runs its checks.
//!
//! The SQL stays portable (no advisory locks, no LISTEN/NOTIFY): CockroachDB and YugabyteDB
//! are meant to serve too, though only PostgreSQL is tested. The tables are created by the
//! PostgreSQL store's schema (`baton-store`, migrations 5, 7 and 8): connect the store first.
//!
//! - **Servers outside a cluster.** A server started without `--cluster` on a PostgreSQL
//!   database holds it alone ([`hold_alone`]): a connection with a known application name,
//!   open while it runs. A second server outside a cluster, or a cluster node, is refused the
//!   database while that connection lives.
//!
//! [`tasks`] holds the cluster's shared worker queues: tasks any node leases to its workers,
//! answered to the node that owns the execution.
//!
//! What it is not for: running executions. The engine learns from a [`Member`] which
//! partitions it owns, with their epochs, and stops or resumes executions accordingly.

pub mod tasks;

mod services;

pub use services::Services;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use baton_core::ExecutionId;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;
use tokio_postgres::{Client, NoTls};

/// The partition count of a database whose first node did not name one.
pub const DEFAULT_PARTITIONS: u32 = 64;

/// The most partitions a cluster may have.
pub const MAX_PARTITIONS: u32 = 4096;

/// What went wrong joining or reading a cluster.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// A setting this crate cannot work with.
    #[error("invalid {field}: {reason}")]
    Invalid {
        /// The setting.
        field: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// The database's partition count is not the one configured: it is fixed when the
    /// database is created.
    #[error(
        "the cluster's database has {existing} partitions, fixed when it was created; this node is configured with \
         {configured}"
    )]
    PartitionCount {
        /// The database's.
        existing: u32,
        /// This node's setting.
        configured: u32,
    },
    /// Another live node holds this node id.
    #[error("node id {node:?} is held by a live node at {address}")]
    NodeInUse {
        /// The id.
        node: String,
        /// Where the live node said it listens.
        address: String,
    },
    /// A server outside a cluster holds the database: two servers never share one unless
    /// both are nodes of a cluster.
    #[error(
        "the database is used by another Baton server outside a cluster ({servers}); two servers must not share one \
         database: stop that one, give this one a database of its own, or run every server as a node with --cluster \
         (a crashed server's hold ends within about 30 s)"
    )]
    InUse {
        /// Where the other servers connect from, and since when.
        servers: String,
    },
    /// The database could not be reached or refused a statement.
    #[error("cluster database unavailable: {0}")]
    Unavailable(String),
}

/// This crate's results.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// How a node joins a cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// The database, as a libpq-style connection string.
    pub url: String,
    /// The node's name, unique in the cluster and kept across restarts.
    pub node_id: String,
    /// Where the other nodes reach this one (its internal gRPC address).
    pub address: String,
    /// Partitions of a new database; must match an existing one's.
    pub partitions: u32,
    /// How long a lease lasts without renewal: the others claim a dead node's partitions
    /// after it.
    pub lease_ttl: Duration,
    /// How often the lease is renewed and partitions balanced.
    pub heartbeat: Duration,
    /// How much earlier than the lease's end by its own clock a node stops work when it
    /// could not renew: room for clock rate differences and a slow stop.
    pub safety_margin: Duration,
}

impl Config {
    /// Defaults: 64 partitions, a 10 s lease renewed every 2 s, fencing itself 1 s early.
    pub fn new(url: impl Into<String>, node_id: impl Into<String>, address: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            node_id: node_id.into(),
            address: address.into(),
            partitions: DEFAULT_PARTITIONS,
            lease_ttl: Duration::from_secs(10),
            heartbeat: Duration::from_secs(2),
            safety_margin: Duration::from_secs(1),
        }
    }

    fn validate(&self) -> Result<()> {
        let invalid = |field, reason: String| Err(Error::Invalid { field, reason });
        if self.node_id.is_empty() || self.node_id.len() > 128 {
            return invalid("node_id", format!("{:?} must have 1 to 128 bytes", self.node_id));
        }
        if !(1..=MAX_PARTITIONS).contains(&self.partitions) {
            return invalid("partitions", format!("{} is not between 1 and {MAX_PARTITIONS}", self.partitions));
        }
        if self.heartbeat.is_zero() || self.heartbeat + self.safety_margin >= self.lease_ttl {
            return invalid(
                "lease_ttl",
                format!(
                    "{:?} must be longer than the heartbeat ({:?}) plus the safety margin ({:?})",
                    self.lease_ttl, self.heartbeat, self.safety_margin
                ),
            );
        }
        Ok(())
    }

    fn ttl_millis(&self) -> i64 {
        i64::try_from(self.lease_ttl.as_millis()).unwrap_or(i64::MAX)
    }
}

/// The partitions a node owns, each with the epoch its writes are conditional on.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Ownership {
    partitions: u32,
    owned: BTreeMap<u32, i64>,
    /// Moves on with every change.
    generation: u64,
}

impl Ownership {
    /// The cluster's partition count.
    pub fn partitions(&self) -> u32 {
        self.partitions
    }

    /// The epoch of `partition` while this node owns it.
    pub fn epoch(&self, partition: u32) -> Option<i64> {
        self.owned.get(&partition).copied()
    }

    /// The partition of `execution` and its epoch, when this node owns it.
    pub fn of(&self, execution: ExecutionId) -> Option<(u32, i64)> {
        let partition = execution.partition(self.partitions);
        self.epoch(partition).map(|epoch| (partition, epoch))
    }

    /// The owned partitions with their epochs, by partition.
    pub fn owned(&self) -> &BTreeMap<u32, i64> {
        &self.owned
    }

    /// How many partitions this node owns.
    pub fn len(&self) -> usize {
        self.owned.len()
    }

    /// Whether this node owns none.
    pub fn is_empty(&self) -> bool {
        self.owned.is_empty()
    }
}

/// A node's membership: a cheap handle on the task that keeps its lease and partitions. The
/// task runs until [`leave`](Self::leave) or until the last handle is dropped (then like a
/// crash: the others claim the partitions once the lease expired).
#[derive(Debug, Clone)]
pub struct Member {
    node_id: Arc<str>,
    ownership: watch::Receiver<Arc<Ownership>>,
    seen: watch::Receiver<Arc<Seen>>,
    heartbeat: Duration,
    counters: Arc<Counters>,
    lease: Arc<Lease>,
    leave: mpsc::Sender<oneshot::Sender<Result<()>>>,
}

/// A live node that owns a partition, as the database last said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    /// Its id.
    pub node: String,
    /// Where it listens (its advertised gRPC address).
    pub address: String,
}

/// What a node's membership has done since it joined, for metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Stats {
    /// Lease renewals the database accepted.
    pub renewals: u64,
    /// Heartbeats that did not renew the lease (the database failed, timed out or said it had
    /// expired).
    pub renewal_failures: u64,
    /// Seconds the accepted renewals took, summed (over `renewals`, the mean).
    pub renewal_seconds: f64,
    /// Partitions claimed: taken over from a dead or leaving node, or unowned.
    pub partitions_claimed: u64,
    /// Partitions this node stopped owning: handed back towards an even share, taken over, or
    /// dropped when it fenced itself.
    pub partitions_lost: u64,
    /// Times this node fenced itself because its lease could not be renewed in time.
    pub self_fences: u64,
}

#[derive(Debug, Default)]
struct Counters {
    renewals: AtomicU64,
    renewal_failures: AtomicU64,
    renewal_micros: AtomicU64,
    partitions_claimed: AtomicU64,
    partitions_lost: AtomicU64,
    self_fences: AtomicU64,
}

fn count(counter: &AtomicU64, n: u64) {
    counter.fetch_add(n, Ordering::Relaxed);
}

/// The cluster as the database said at a node's last heartbeat.
#[derive(Debug, Default)]
struct Seen {
    /// Every partition's live owner: where a node sends what only an execution's owner can do.
    owners: BTreeMap<u32, Peer>,
    /// Nodes whose lease had not expired.
    live_nodes: u32,
}

impl Member {
    /// Registers the node (fixing the partition count if the database has none yet) and starts
    /// keeping its lease and claiming partitions. Partitions a previous run of this node held
    /// are released with raised epochs first, so nothing it still had in flight commits.
    pub async fn join(config: Config) -> Result<Self> {
        config.validate()?;
        let pg: tokio_postgres::Config = config
            .url
            .parse()
            .map_err(|e: tokio_postgres::Error| Error::Invalid { field: "url", reason: e.to_string() })?;
        let mut keeper = Keeper {
            pg,
            client: None,
            incarnation: 0,
            valid_until: Instant::now(),
            lease: Arc::new(Lease::new()),
            rejoin: false,
            owned: BTreeMap::new(),
            seen: watch::Sender::new(Arc::default()),
            counters: Arc::default(),
            publish: watch::Sender::new(Arc::new(Ownership {
                partitions: config.partitions,
                owned: BTreeMap::new(),
                generation: 0,
            })),
            config,
        };
        keeper.register(true).await?;
        let (leave, requests) = mpsc::channel(1);
        let member = Self {
            node_id: Arc::from(keeper.config.node_id.as_str()),
            ownership: keeper.publish.subscribe(),
            seen: keeper.seen.subscribe(),
            heartbeat: keeper.config.heartbeat,
            counters: Arc::clone(&keeper.counters),
            lease: Arc::clone(&keeper.lease),
            leave,
        };
        tokio::spawn(keeper.run(requests));
        Ok(member)
    }

    /// This node's id.
    pub fn node_id(&self) -> &str {
        &self.node_id
    }

    /// The partitions this node owns now.
    pub fn ownership(&self) -> Arc<Ownership> {
        Arc::clone(&self.ownership.borrow())
    }

    /// The live node that owns `partition`, as the database said at this node's last
    /// heartbeat; `None` while no live node owns it (its owner died and no one claimed it yet).
    pub fn owner(&self, partition: u32) -> Option<Peer> {
        self.seen().owners.get(&partition).cloned()
    }

    /// What the membership has done since it joined.
    pub fn stats(&self) -> Stats {
        let c = &self.counters;
        let load = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        Stats {
            renewals: load(&c.renewals),
            renewal_failures: load(&c.renewal_failures),
            renewal_seconds: load(&c.renewal_micros) as f64 / 1e6,
            partitions_claimed: load(&c.partitions_claimed),
            partitions_lost: load(&c.partitions_lost),
            self_fences: load(&c.self_fences),
        }
    }

    /// How many nodes had a live lease at this node's last heartbeat.
    pub fn live_nodes(&self) -> u32 {
        self.seen().live_nodes
    }

    fn seen(&self) -> Arc<Seen> {
        Arc::clone(&self.seen.borrow())
    }

    /// Waits until the next heartbeat has read the partitions' owners again, for at most two
    /// heartbeats; false when it did not (the database did not answer).
    pub async fn owners_refreshed(&self) -> bool {
        let mut seen = self.seen.clone();
        seen.mark_unchanged();
        matches!(tokio::time::timeout(self.heartbeat * 2, seen.changed()).await, Ok(Ok(())))
    }

    /// Waits for the next change of this node's partitions and returns them; `None` once the
    /// membership has ended.
    pub async fn changed(&mut self) -> Option<Arc<Ownership>> {
        self.ownership.changed().await.ok()?;
        Some(Arc::clone(&self.ownership.borrow_and_update()))
    }

    /// Stops owning partitions and leaves the cluster: the others take the partitions over on
    /// their next heartbeat.
    pub async fn leave(&self) -> Result<()> {
        let (reply, answer) = oneshot::channel();
        let ended = || Error::Unavailable("the membership has ended".to_owned());
        self.leave.send(reply).await.map_err(|_| ended())?;
        answer.await.map_err(|_| ended())?
    }
}

/// When this node's lease ends by its own clock (less the safety margin), readable from any
/// task without waiting for the task that keeps it: a node that was frozen (a stopped
/// process, a stalled machine) sees at once, when it runs again, that it owns nothing, even
/// before that task has run and given its partitions up.
#[derive(Debug)]
struct Lease {
    base: Instant,
    /// Nanoseconds from `base`.
    until: AtomicU64,
}

impl Lease {
    fn new() -> Self {
        Self { base: Instant::now(), until: AtomicU64::new(0) }
    }

    fn extend_to(&self, until: Instant) {
        let nanos = u64::try_from(until.saturating_duration_since(self.base).as_nanos()).unwrap_or(u64::MAX);
        self.until.store(nanos, Ordering::Release);
    }

    fn valid(&self) -> bool {
        let now = u64::try_from(self.base.elapsed().as_nanos()).unwrap_or(u64::MAX);
        now < self.until.load(Ordering::Acquire)
    }
}

/// What the engine, the store and the dispatcher read: this node's partitions, from memory;
/// none once its lease has run out by its own clock.
impl baton_core::Ownership for Member {
    fn partitions(&self) -> u32 {
        self.ownership.borrow().partitions
    }

    fn epoch(&self, partition: u32) -> Option<i64> {
        if !self.lease.valid() {
            return None;
        }
        self.ownership.borrow().epoch(partition)
    }

    fn owned(&self) -> Vec<(u32, i64)> {
        if !self.lease.valid() {
            return Vec::new();
        }
        self.ownership.borrow().owned.iter().map(|(p, e)| (*p, *e)).collect()
    }

    fn generation(&self) -> u64 {
        self.ownership.borrow().generation
    }
}

/// Why a heartbeat did not renew the lease.
enum Missed {
    /// The database says the lease had expired (or another run of this node took the row).
    LeaseLost,
    /// The database could not be reached or failed the statement.
    Failed(Error),
}

impl From<tokio_postgres::Error> for Missed {
    fn from(e: tokio_postgres::Error) -> Self {
        Self::Failed(unavailable(&e))
    }
}

/// The task behind a [`Member`].
struct Keeper {
    config: Config,
    pg: tokio_postgres::Config,
    client: Option<Client>,
    incarnation: i64,
    /// When this node stops work unless it renewed its lease by then.
    valid_until: Instant,
    /// The node must register again (its lease was lost or it fenced itself).
    rejoin: bool,
    owned: BTreeMap<u32, i64>,
    seen: watch::Sender<Arc<Seen>>,
    counters: Arc<Counters>,
    lease: Arc<Lease>,
    publish: watch::Sender<Arc<Ownership>>,
}

impl Keeper {
    async fn run(mut self, mut leave: mpsc::Receiver<oneshot::Sender<Result<()>>>) {
        let mut heartbeat = tokio::time::interval(self.config.heartbeat);
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let fence_at = self.valid_until;
            tokio::select! {
                _ = heartbeat.tick() => {}
                () = tokio::time::sleep_until(fence_at), if !self.owned.is_empty() => {
                    // No renewal came in time: a missed one, whatever the next heartbeat finds.
                    count(&self.counters.renewal_failures, 1);
                    self.fence_all("its lease could not be renewed before its safety margin");
                    continue;
                }
                request = leave.recv() => {
                    // Every handle dropped: the task ends as a crash would, its lease running out.
                    let Some(reply) = request else { return };
                    let _ = reply.send(self.leave().await);
                    return;
                }
            }
            // A database that does not answer gets until the lease's end by this node's clock.
            let deadline = self.valid_until.max(Instant::now() + self.config.heartbeat);
            match tokio::time::timeout_at(deadline, self.beat()).await {
                Ok(Ok(())) => {}
                Ok(Err(Missed::LeaseLost)) => {
                    count(&self.counters.renewal_failures, 1);
                    self.fence_all("the database says its lease expired");
                }
                Ok(Err(Missed::Failed(e))) => {
                    count(&self.counters.renewal_failures, 1);
                    tracing::warn!(node = %self.config.node_id, error = %e, "cluster heartbeat failed");
                    self.client = None;
                }
                Err(_) => {
                    count(&self.counters.renewal_failures, 1);
                    tracing::warn!(node = %self.config.node_id, "cluster heartbeat timed out");
                    self.client = None;
                }
            }
            if Instant::now() >= self.valid_until && !self.owned.is_empty() {
                self.fence_all("its lease could not be renewed before its safety margin");
            }
        }
    }

    async fn client(&mut self) -> Result<&Client> {
        if self.client.as_ref().is_none_or(Client::is_closed) {
            let (client, connection) = self.pg.connect(NoTls).await.map_err(|e| unavailable(&e))?;
            tokio::spawn(async move {
                let _ = connection.await;
            });
            self.client = Some(client);
        }
        Ok(self.client.as_ref().expect("connected above"))
    }

    /// Drops every partition at once: from now on this node starts nothing for them.
    fn fence_all(&mut self, why: &str) {
        if !self.owned.is_empty() {
            tracing::warn!(
                node = %self.config.node_id,
                partitions = self.owned.len(),
                "fenced: {why}; this node stops work on all its partitions"
            );
            count(&self.counters.self_fences, 1);
            count(&self.counters.partitions_lost, self.owned.len() as u64);
            self.owned.clear();
            self.publish();
        }
        self.rejoin = true;
    }

    fn publish(&self) {
        let generation = self.publish.borrow().generation + 1;
        let ownership = Ownership { partitions: self.config.partitions, owned: self.owned.clone(), generation };
        self.publish.send_replace(Arc::new(ownership));
    }

    /// Registers this node, or registers it again after it lost its lease (`first` is false),
    /// releasing with raised epochs whatever partitions a previous run of it held.
    async fn register(&mut self, first: bool) -> Result<()> {
        let partitions = i32::try_from(self.config.partitions).expect("validated");
        let (node, address, ttl) = (self.config.node_id.clone(), self.config.address.clone(), self.config.ttl_millis());
        let sent = Instant::now();
        self.client().await?;
        let client = self.client.as_mut().expect("connected above");
        let tx = client.transaction().await.map_err(|e| unavailable(&e))?;
        let registered = async {
            tx.execute(
                "INSERT INTO baton_cluster (id, partitions) VALUES (0, $1) ON CONFLICT DO NOTHING",
                &[&partitions],
            )
            .await?;
            let existing: i32 = tx.query_one("SELECT partitions FROM baton_cluster WHERE id = 0", &[]).await?.get(0);
            if existing != partitions {
                return Ok(Err(Error::PartitionCount {
                    existing: existing.unsigned_abs(),
                    configured: partitions.unsigned_abs(),
                }));
            }
            tx.execute(
                "INSERT INTO baton_partitions (id, owner, epoch)
                 SELECT g, NULL, 0 FROM generate_series(0, $1 - 1) AS g ON CONFLICT DO NOTHING",
                &[&partitions],
            )
            .await?;
            // A live row of this id is this node's own only if it gives the same address: a
            // restart after a crash, or a rejoin after the lease was lost.
            let row = tx
                .query_opt(
                    "INSERT INTO baton_nodes (id, address, incarnation, lease_expires_at, joined_at)
                     VALUES ($1, $2, 1, now() + $3 * INTERVAL '1 millisecond', now())
                     ON CONFLICT (id) DO UPDATE SET address = EXCLUDED.address,
                         incarnation = baton_nodes.incarnation + 1,
                         lease_expires_at = EXCLUDED.lease_expires_at, joined_at = EXCLUDED.joined_at
                     WHERE baton_nodes.lease_expires_at <= now() OR baton_nodes.address = EXCLUDED.address
                     RETURNING incarnation",
                    &[&node, &address, &(ttl as f64)],
                )
                .await?;
            let Some(row) = row else {
                let holder = tx.query_one("SELECT address FROM baton_nodes WHERE id = $1", &[&node]).await?;
                return Ok(Err(Error::NodeInUse { node: node.clone(), address: holder.get(0) }));
            };
            let incarnation: i64 = row.get(0);
            tx.execute("UPDATE baton_partitions SET owner = NULL, epoch = epoch + 1 WHERE owner = $1", &[&node])
                .await?;
            Ok::<_, tokio_postgres::Error>(Ok(incarnation))
        }
        .await;
        let incarnation = match registered {
            Ok(Ok(incarnation)) => incarnation,
            Ok(Err(refused)) => return Err(refused),
            Err(e) => return Err(unavailable(&e)),
        };
        tx.commit().await.map_err(|e| unavailable(&e))?;
        self.incarnation = incarnation;
        self.valid_until = sent + self.config.lease_ttl - self.config.safety_margin;
        self.lease.extend_to(self.valid_until);
        self.rejoin = false;
        if first {
            tracing::info!(node = %node, incarnation, "joined the cluster");
        } else {
            tracing::info!(node = %node, incarnation, "rejoined the cluster");
        }
        Ok(())
    }

    /// Renews the lease, learns of partitions taken over, and claims or releases partitions
    /// towards an even share.
    async fn beat(&mut self) -> Result<(), Missed> {
        if self.rejoin {
            self.register(false).await.map_err(Missed::Failed)?;
        }
        let (node, ttl) = (self.config.node_id.clone(), self.config.ttl_millis() as f64);
        let sent = Instant::now();
        let incarnation = self.incarnation;
        let client = self.client().await.map_err(Missed::Failed)?;
        let renewed = client
            .execute(
                "UPDATE baton_nodes SET lease_expires_at = now() + $3 * INTERVAL '1 millisecond'
                 WHERE id = $1 AND incarnation = $2 AND lease_expires_at > now()",
                &[&node, &incarnation, &ttl],
            )
            .await?;
        if renewed == 0 {
            return Err(Missed::LeaseLost);
        }
        count(&self.counters.renewals, 1);
        count(&self.counters.renewal_micros, u64::try_from(sent.elapsed().as_micros()).unwrap_or(u64::MAX));
        self.valid_until = sent + self.config.lease_ttl - self.config.safety_margin;
        self.lease.extend_to(self.valid_until);
        let client = self.client.as_ref().expect("used above");
        let rows = client.query("SELECT id, epoch FROM baton_partitions WHERE owner = $1", &[&node]).await?;
        let stored: BTreeMap<u32, i64> =
            rows.iter().map(|row| (row.get::<_, i32>(0).unsigned_abs(), row.get(1))).collect();
        let lost: Vec<u32> = self.owned.iter().filter(|(p, e)| stored.get(p) != Some(e)).map(|(p, _)| *p).collect();
        if !lost.is_empty() || stored.len() != self.owned.len() {
            if !lost.is_empty() {
                count(&self.counters.partitions_lost, lost.len() as u64);
                tracing::warn!(node = %node, ?lost, "fenced: partitions were taken over; this node stops work on them");
            }
            // Partitions held at the database but not here were claimed by a statement whose
            // answer was lost; their epochs are this node's.
            self.owned = stored;
            self.publish();
        }
        let client = self.client.as_ref().expect("used above");
        let live: i64 =
            client.query_one("SELECT count(*) FROM baton_nodes WHERE lease_expires_at > now()", &[]).await?.get(0);
        let rows = client
            .query(
                "SELECT p.id, n.id, n.address FROM baton_partitions p
                 JOIN baton_nodes n ON n.id = p.owner AND n.lease_expires_at > now()",
                &[],
            )
            .await?;
        let owners = rows
            .iter()
            .map(|row| (row.get::<_, i32>(0).unsigned_abs(), Peer { node: row.get(1), address: row.get(2) }))
            .collect();
        let seen = Seen { owners, live_nodes: u32::try_from(live).unwrap_or(u32::MAX) };
        self.seen.send_replace(Arc::new(seen));
        let share = self.config.partitions.div_ceil(u32::try_from(live.max(1)).unwrap_or(u32::MAX)) as usize;
        if self.owned.len() > share {
            // One a heartbeat: a joining node takes its share gradually. Stopped here first,
            // then released with a raised epoch, so nothing of it in flight commits later.
            let (&partition, &epoch) = self.owned.iter().next_back().expect("more than the share");
            self.owned.remove(&partition);
            count(&self.counters.partitions_lost, 1);
            self.publish();
            let id = i32::try_from(partition).expect("validated");
            client
                .execute(
                    "UPDATE baton_partitions SET owner = NULL, epoch = epoch + 1
                     WHERE id = $1 AND owner = $2 AND epoch = $3",
                    &[&id, &node, &epoch],
                )
                .await?;
            tracing::info!(node = %node, partition, "released a partition towards an even share");
        } else if self.owned.len() < share {
            let wanted = i64::try_from(share - self.owned.len()).unwrap_or(i64::MAX);
            let claimed = client
                .query(
                    "UPDATE baton_partitions SET owner = $1, epoch = epoch + 1
                     WHERE id IN (
                         SELECT p.id FROM baton_partitions p
                         WHERE p.owner IS NULL OR NOT EXISTS (
                             SELECT 1 FROM baton_nodes n WHERE n.id = p.owner AND n.lease_expires_at > now())
                         ORDER BY p.id LIMIT $2 FOR UPDATE SKIP LOCKED)
                     AND (baton_partitions.owner IS NULL OR NOT EXISTS (
                         SELECT 1 FROM baton_nodes n
                         WHERE n.id = baton_partitions.owner AND n.lease_expires_at > now()))
                     AND EXISTS (
                         SELECT 1 FROM baton_nodes m WHERE m.id = $1 AND m.incarnation = $3 AND m.lease_expires_at > now())
                     RETURNING id, epoch",
                    &[&node, &wanted, &incarnation],
                )
                .await?;
            if !claimed.is_empty() {
                let claimed: Vec<(u32, i64)> =
                    claimed.iter().map(|row| (row.get::<_, i32>(0).unsigned_abs(), row.get(1))).collect();
                tracing::info!(node = %node, partitions = ?claimed.iter().map(|c| c.0).collect::<Vec<_>>(), "claimed partitions");
                count(&self.counters.partitions_claimed, claimed.len() as u64);
                self.owned.extend(claimed);
                self.publish();
            }
        }
        Ok(())
    }

    /// Drops every partition, then releases them and deletes this node's row.
    async fn leave(&mut self) -> Result<()> {
        self.owned.clear();
        self.publish();
        let (node, incarnation) = (self.config.node_id.clone(), self.incarnation);
        self.client().await?;
        let client = self.client.as_mut().expect("connected above");
        let tx = client.transaction().await.map_err(|e| unavailable(&e))?;
        tx.execute("UPDATE baton_partitions SET owner = NULL, epoch = epoch + 1 WHERE owner = $1", &[&node])
            .await
            .map_err(|e| unavailable(&e))?;
        tx.execute("DELETE FROM baton_nodes WHERE id = $1 AND incarnation = $2", &[&node, &incarnation])
            .await
            .map_err(|e| unavailable(&e))?;
        tx.commit().await.map_err(|e| unavailable(&e))?;
        tracing::info!(node = %node, "left the cluster");
        Ok(())
    }
}

/// One node as the database sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeStatus {
    /// Its id.
    pub id: String,
    /// Where it listens.
    pub address: String,
    /// How often it registered (a restart or a rejoin after a lost lease counts).
    pub incarnation: i64,
    /// Milliseconds its lease has left by the database's clock; negative once expired.
    pub lease_remaining_ms: i64,
    /// Partitions it owns.
    pub partitions: u32,
}

/// A cluster as its database sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    /// The partition count, fixed when the database was created; `None` before a node joined.
    pub partitions: Option<u32>,
    /// Nodes by id, live or expired.
    pub nodes: Vec<NodeStatus>,
    /// Partitions no live node owns.
    pub unowned: u32,
}

/// Reads the cluster's nodes, leases and partitions from the database at `url`.
pub async fn status(url: &str) -> Result<Status> {
    let pg: tokio_postgres::Config =
        url.parse().map_err(|e: tokio_postgres::Error| Error::Invalid { field: "url", reason: e.to_string() })?;
    let (client, connection) = pg.connect(NoTls).await.map_err(|e| unavailable(&e))?;
    let connection = tokio::spawn(connection);
    let read = async {
        let partitions = client.query_opt("SELECT partitions FROM baton_cluster WHERE id = 0", &[]).await?;
        let nodes = client
            .query(
                "SELECT n.id, n.address, n.incarnation,
                     CAST(EXTRACT(EPOCH FROM (n.lease_expires_at - now())) * 1000 AS BIGINT),
                     (SELECT count(*) FROM baton_partitions p WHERE p.owner = n.id)
                 FROM baton_nodes n ORDER BY n.id",
                &[],
            )
            .await?;
        let unowned: i64 = client
            .query_one(
                "SELECT count(*) FROM baton_partitions p WHERE p.owner IS NULL OR NOT EXISTS (
                     SELECT 1 FROM baton_nodes n WHERE n.id = p.owner AND n.lease_expires_at > now())",
                &[],
            )
            .await?
            .get(0);
        let nodes = nodes
            .iter()
            .map(|row| NodeStatus {
                id: row.get(0),
                address: row.get(1),
                incarnation: row.get(2),
                lease_remaining_ms: row.get(3),
                partitions: u32::try_from(row.get::<_, i64>(4)).unwrap_or(u32::MAX),
            })
            .collect();
        Ok::<_, tokio_postgres::Error>(Status {
            partitions: partitions.map(|row| row.get::<_, i32>(0).unsigned_abs()),
            nodes,
            unowned: u32::try_from(unowned).unwrap_or(u32::MAX),
        })
    }
    .await
    .map_err(|e| unavailable(&e));
    drop(client);
    let _ = connection.await;
    read
}

/// A tokio-postgres error with the server's message, which its `Display` leaves out.
fn unavailable(e: &tokio_postgres::Error) -> Error {
    let text = match e.as_db_error() {
        Some(db) => format!("{}: {} (SQLSTATE {})", db.severity(), db.message(), db.code().code()),
        None => match std::error::Error::source(e) {
            Some(source) => format!("{e}: {source}"),
            None => e.to_string(),
        },
    };
    Error::Unavailable(format!("postgres: {text}"))
}

/// The `application_name` of the connection a server outside a cluster holds open on its
/// database for as long as it runs: how another server sees it is there.
const ALONE_APPLICATION: &str = "baton-server-alone";

/// Seconds of silence after which PostgreSQL probes, and then drops, the connection of a
/// server that holds a database alone: a crashed server's hold ends within about half a
/// minute even when its machine vanished without closing the connection.
const ALONE_KEEPALIVE: &str =
    "SET tcp_keepalives_idle = 10; SET tcp_keepalives_interval = 5; SET tcp_keepalives_count = 3";

/// A server outside a cluster holding its database alone: a connection that stays open while
/// the server runs and ends with it (even after `kill -9`, when the operating system closes
/// it). Dropping it ends the hold.
#[derive(Debug)]
pub struct AloneHold {
    client: Client,
    connection: tokio::task::JoinHandle<()>,
}

impl Drop for AloneHold {
    fn drop(&mut self) {
        self.connection.abort();
    }
}

/// Another server on the database, as PostgreSQL sees its connection.
fn describe_servers(rows: &[tokio_postgres::Row]) -> String {
    rows.iter()
        .map(|row| format!("connected from {} since {}", row.get::<_, String>(0), row.get::<_, String>(1)))
        .collect::<Vec<_>>()
        .join("; ")
}

const OTHERS_ALONE: &str = "SELECT coalesce(host(client_addr), 'a local socket'),
        to_char(backend_start AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS UTC')
    FROM pg_stat_activity
    WHERE datname = current_database() AND application_name = $1 AND pid <> pg_backend_pid()
    ORDER BY backend_start";

/// Takes the database at `url` for a server outside a cluster: refused with
/// [`Error::InUse`] while another such server holds it, so two never share one database's
/// journals unknowingly. Relies on PostgreSQL's `pg_stat_activity`, which every role may read
/// the application names of.
pub async fn hold_alone(url: &str) -> Result<AloneHold> {
    let mut pg: tokio_postgres::Config =
        url.parse().map_err(|e: tokio_postgres::Error| Error::Invalid { field: "url", reason: e.to_string() })?;
    pg.application_name(ALONE_APPLICATION).keepalives(true).keepalives_idle(Duration::from_secs(10));
    let (client, connection) = pg.connect(NoTls).await.map_err(|e| unavailable(&e))?;
    let connection = tokio::spawn(async move {
        let _ = connection.await;
    });
    let hold = AloneHold { client, connection };
    let client = &hold.client;
    client.batch_execute(ALONE_KEEPALIVE).await.map_err(|e| unavailable(&e))?;
    // A server that has just died (a restart after `kill -9`) may be listed for a moment
    // until its backend sees the closed connection; a live one stays.
    let deadline = Instant::now() + ALONE_GRACE;
    loop {
        let others = client.query(OTHERS_ALONE, &[&ALONE_APPLICATION]).await.map_err(|e| unavailable(&e))?;
        if others.is_empty() {
            return Ok(hold);
        }
        if Instant::now() >= deadline {
            return Err(Error::InUse { servers: describe_servers(&others) });
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// How long a server outside a cluster waits for another's connection to go before it gives
/// up the start.
const ALONE_GRACE: Duration = Duration::from_secs(2);

/// Refuses the database at `url` to a cluster node while a server outside a cluster holds it.
pub async fn refuse_held_alone(url: &str) -> Result<()> {
    let pg: tokio_postgres::Config =
        url.parse().map_err(|e: tokio_postgres::Error| Error::Invalid { field: "url", reason: e.to_string() })?;
    let (client, connection) = pg.connect(NoTls).await.map_err(|e| unavailable(&e))?;
    let connection = tokio::spawn(connection);
    let others = client.query(OTHERS_ALONE, &[&ALONE_APPLICATION]).await.map_err(|e| unavailable(&e));
    drop(client);
    let _ = connection.await;
    let others = others?;
    if others.is_empty() { Ok(()) } else { Err(Error::InUse { servers: describe_servers(&others) }) }
}
