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
//! PostgreSQL store's schema (`baton-store`, migrations 5 and 6): connect the store first.
//!
//! What it is not for: running executions. The engine learns from a [`Member`] which
//! partitions it owns, with their epochs, and stops or resumes executions accordingly.

mod services;

pub use services::Services;

use std::collections::BTreeMap;
use std::sync::Arc;
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
    leave: mpsc::Sender<oneshot::Sender<Result<()>>>,
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
            rejoin: false,
            owned: BTreeMap::new(),
            publish: watch::Sender::new(Arc::new(Ownership {
                partitions: config.partitions,
                owned: BTreeMap::new(),
                generation: 0,
            })),
            config,
        };
        keeper.register(true).await?;
        let (leave, requests) = mpsc::channel(1);
        let member =
            Self { node_id: Arc::from(keeper.config.node_id.as_str()), ownership: keeper.publish.subscribe(), leave };
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

/// What the engine and the store read: this node's partitions, from memory.
impl baton_core::Ownership for Member {
    fn partitions(&self) -> u32 {
        self.ownership.borrow().partitions
    }

    fn epoch(&self, partition: u32) -> Option<i64> {
        self.ownership.borrow().epoch(partition)
    }

    fn owned(&self) -> Vec<(u32, i64)> {
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
                Ok(Err(Missed::LeaseLost)) => self.fence_all("the database says its lease expired"),
                Ok(Err(Missed::Failed(e))) => {
                    tracing::warn!(node = %self.config.node_id, error = %e, "cluster heartbeat failed");
                    self.client = None;
                }
                Err(_) => {
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
        self.valid_until = sent + self.config.lease_ttl - self.config.safety_margin;
        let client = self.client.as_ref().expect("used above");
        let rows = client.query("SELECT id, epoch FROM baton_partitions WHERE owner = $1", &[&node]).await?;
        let stored: BTreeMap<u32, i64> =
            rows.iter().map(|row| (row.get::<_, i32>(0).unsigned_abs(), row.get(1))).collect();
        let lost: Vec<u32> = self.owned.iter().filter(|(p, e)| stored.get(p) != Some(e)).map(|(p, _)| *p).collect();
        if !lost.is_empty() || stored.len() != self.owned.len() {
            if !lost.is_empty() {
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
        let share = self.config.partitions.div_ceil(u32::try_from(live.max(1)).unwrap_or(u32::MAX)) as usize;
        if self.owned.len() > share {
            // One a heartbeat: a joining node takes its share gradually. Stopped here first,
            // then released with a raised epoch, so nothing of it in flight commits later.
            let (&partition, &epoch) = self.owned.iter().next_back().expect("more than the share");
            self.owned.remove(&partition);
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
