//! Worker tasks shared by the nodes of a cluster: a table of tasks that any node leases to the
//! workers polling it, while the node owning the task's execution waits for the answer.
//!
//! - **One row per step** of an execution handed to workers (`call_key`, the call's
//!   idempotency key). The owner of the execution's partition inserts it, withdraws it and
//!   removes it, each write conditional on the partition's epoch, as every write for an
//!   execution is. A node that took a partition over and dispatches the step again *adopts* the
//!   row the dead owner left (queued, leased, or completed) instead of queueing a second one,
//!   so no task is lost and none is answered twice; a later attempt of the step replaces the
//!   row of a failed or withdrawn one.
//! - **Leases.** A poll on any node claims the oldest open rows of its queues with
//!   `FOR UPDATE SKIP LOCKED`, so polls on several nodes take different tasks. Each delivery
//!   raises the row's delivery number, which with the task id is the worker's token: completion,
//!   failure and extension are conditional on it (and on the lease still running, by the
//!   database's clock), so a stale token changes nothing. An expired lease is claimable again,
//!   with a new token; after too many the task is answered with `lease_expired`.
//! - **Answers.** A completion or failure marks the row done; the owner reads the done rows of
//!   the tasks it waits for every [`OUTCOME_POLL`] (polling keeps the SQL portable), and removes
//!   closed rows of its partitions once they are [`Settings::retention`] old and, for answers,
//!   their execution has ended: until then a node that took the partition over may adopt an
//!   answer its previous owner never journaled.
//! - **Cancel.** A withdrawn task is marked cancelled while its lease runs: the holder's
//!   `extend` answers `cancel_requested`, its completion is refused.
//!
//! The tables are created by the PostgreSQL store's schema (`baton-store`, migration 7).

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use baton_core::activity::QueueDepth;
use baton_core::{ExecutionId, Ownership, Timestamp};
use tokio_postgres::{Client, NoTls, Row};

/// How often a node reads the answers of the tasks it waits for.
pub const OUTCOME_POLL: Duration = Duration::from_millis(100);

/// How the shared queues behave; the same meaning as the single-server worker queues'.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// How long a worker holds a task unless it answers or extends it first.
    pub lease: Duration,
    /// Most tasks waiting (not leased) on one queue; checked against committed rows, so
    /// concurrent inserts on several nodes may overshoot it by a few.
    pub max_queue_len: usize,
    /// Expired leases after which a task is answered with `lease_expired`; `None`: never.
    pub max_expired_leases: Option<u32>,
    /// How long an answered or cancelled task's row stays before its owner removes it.
    pub retention: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            lease: Duration::from_secs(30),
            max_queue_len: 10_000,
            max_expired_leases: Some(3),
            retention: Duration::from_secs(60),
        }
    }
}

/// Why a task operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TaskError {
    /// This node does not own the execution's partition under the epoch the database holds.
    #[error("{0}")]
    Fenced(String),
    /// The queue holds as many waiting tasks as it may.
    #[error("queue {queue} holds {depth} tasks, its limit")]
    QueueFull {
        /// The queue.
        queue: String,
        /// Its waiting tasks.
        depth: usize,
    },
    /// The token names no live lease: unknown task, superseded, expired, answered or
    /// cancelled, as the message says. Nothing changed.
    #[error("{0}")]
    NotLive(String),
    /// The database could not be reached or refused a statement.
    #[error("worker tasks unavailable: {0}")]
    Unavailable(String),
}

type Result<T, E = TaskError> = std::result::Result<T, E>;

/// A task for [`TaskQueues::enqueue`]: one attempt of a step of an execution.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewTask {
    /// The queue workers take it from.
    pub queue: String,
    /// The execution.
    pub execution: ExecutionId,
    /// The step.
    pub step: String,
    /// The executor's attempt, 1 for the first.
    pub attempt: u32,
    /// The service called.
    pub service: String,
    /// The input, as JSON text.
    pub payload: String,
    /// The call's idempotency key: the same on every attempt, one row per key.
    pub call_key: String,
}

/// How a task ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// A worker completed it with this output (JSON text).
    Succeeded(String),
    /// A worker failed it.
    Failed {
        /// The worker's reason.
        message: String,
        /// Whether another attempt may help.
        retryable: bool,
    },
    /// Too many of its leases expired.
    LeaseExpired {
        /// How many.
        leases: u32,
        /// The worker that held the last one.
        worker: String,
    },
}

/// A queued or adopted task: what the owner waits on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TaskRef {
    /// The task's id, the first half of its workers' tokens.
    pub id: u128,
    /// The attempt the row holds (an adopted row may hold the dead owner's).
    pub attempt: u32,
}

/// What [`TaskQueues::enqueue`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Enqueued {
    /// The task waits for a worker, or a worker holds it.
    Open(TaskRef),
    /// The step's task was answered already (under a previous owner): here is the answer.
    Answered(TaskRef, Outcome),
}

/// A task leased to a worker by [`TaskQueues::claim`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claimed {
    /// The task.
    pub id: u128,
    /// This delivery's number; with `id`, the worker's token.
    pub delivery: u32,
    /// The queue it came from.
    pub queue: String,
    /// The service called.
    pub service: String,
    /// The execution.
    pub execution: ExecutionId,
    /// The step.
    pub step: String,
    /// The attempt.
    pub attempt: u32,
    /// The call's idempotency key.
    pub call_key: String,
    /// The input, as JSON text.
    pub payload: String,
    /// When the lease ends unless extended, by the database's clock.
    pub lease_expires_at: Timestamp,
}

/// What [`TaskQueues::extend`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Extension {
    /// The lease's new end, by the database's clock.
    pub expires_at: Timestamp,
    /// The task was withdrawn by its execution (cancelled, timed out): stop working on it.
    pub cancel_requested: bool,
}

/// The shared worker queues of one node. Cheap to clone.
#[derive(Debug, Clone)]
pub struct TaskQueues {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    config: tokio_postgres::Config,
    client: Mutex<Option<Arc<Client>>>,
    ownership: Arc<dyn Ownership>,
    settings: Settings,
}

/// The columns [`Claimed`] is read from.
const CLAIMED: &str = "t.id, t.delivery, t.queue, t.service, t.execution, t.step, t.attempt, t.call_key, t.payload,
    CAST(EXTRACT(EPOCH FROM t.lease_expires_at) * 1000 AS BIGINT)";

/// The columns [`Outcome`] is read from.
const OUTCOME: &str = "outcome, output, retryable, expired_leases, worker";

impl TaskQueues {
    /// The queues in the database `url` names, for a node whose partitions `ownership` tells.
    /// Connects on first use.
    pub fn new(url: &str, ownership: Arc<dyn Ownership>, settings: Settings) -> Result<Self, crate::Error> {
        let config: tokio_postgres::Config = url
            .parse()
            .map_err(|e: tokio_postgres::Error| crate::Error::Invalid { field: "url", reason: e.to_string() })?;
        Ok(Self { inner: Arc::new(Inner { config, client: Mutex::new(None), ownership, settings }) })
    }

    /// The settings.
    pub fn settings(&self) -> &Settings {
        &self.inner.settings
    }

    async fn client(&self) -> Result<Arc<Client>> {
        let current = self.inner.client.lock().unwrap_or_else(PoisonError::into_inner).clone();
        if let Some(client) = current
            && !client.is_closed()
        {
            return Ok(client);
        }
        let (client, connection) = self.inner.config.connect(NoTls).await.map_err(|e| unavailable(&e))?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        let client = Arc::new(client);
        *self.inner.client.lock().unwrap_or_else(PoisonError::into_inner) = Some(Arc::clone(&client));
        Ok(client)
    }

    /// The partition of `execution` and its epoch, or [`TaskError::Fenced`].
    fn fence(&self, execution: ExecutionId) -> Result<(i32, i64)> {
        let ownership = &self.inner.ownership;
        let partition = execution.partition(ownership.partitions());
        match ownership.epoch(partition) {
            Some(epoch) => Ok((i32::try_from(partition).unwrap_or(i32::MAX), epoch)),
            None => Err(TaskError::Fenced(format!(
                "this node does not own partition {partition}, which execution {execution} belongs to"
            ))),
        }
    }

    /// Queues `task`, or adopts the open or completed row of its step a previous owner left;
    /// replaces a failed or withdrawn one. Only while this node owns
    /// the execution's partition under the epoch the database holds.
    pub async fn enqueue(&self, task: NewTask) -> Result<Enqueued> {
        let (partition, epoch) = self.fence(task.execution)?;
        let client = self.client().await?;
        let id = ExecutionId::generate().as_uuid().as_bytes().to_vec();
        let execution = task.execution.as_uuid().as_bytes().to_vec();
        let attempt = i32::try_from(task.attempt).unwrap_or(i32::MAX);
        let max = i64::try_from(self.inner.settings.max_queue_len).unwrap_or(i64::MAX);
        // An open row (queued or leased) is adopted whatever its attempt: a node that took the
        // partition over dispatches the step again, under its next attempt number, while the
        // dead owner's task waits or a worker holds it; the row takes the newer attempt, so a
        // late withdrawal of the older one misses it. A success is adopted as it is (a step is
        // dispatched after a success only when that success was never journaled). A failure or
        // a withdrawn row is replaced by the new attempt, keeping its delivery number so that
        // old tokens stay refused.
        let replace = "(baton_worker_tasks.state = 'cancelled' OR (baton_worker_tasks.state = 'done' AND \
                       baton_worker_tasks.outcome <> 'ok'))";
        let renew = |column: &str, value: &str| {
            format!("{column} = CASE WHEN {replace} THEN {value} ELSE baton_worker_tasks.{column} END")
        };
        let set = [
            renew("queue", "EXCLUDED.queue"),
            renew("partition_id", "EXCLUDED.partition_id"),
            renew("service", "EXCLUDED.service"),
            renew("payload", "EXCLUDED.payload"),
            renew("state", "'queued'"),
            renew("expired_leases", "0"),
            renew("worker", "NULL"),
            renew("lease_expires_at", "NULL"),
            renew("queued_at", "EXCLUDED.queued_at"),
            renew("finished_at", "NULL"),
            renew("outcome", "NULL"),
            renew("output", "NULL"),
            renew("retryable", "NULL"),
            format!(
                "attempt = CASE WHEN {replace} THEN EXCLUDED.attempt \
                 ELSE GREATEST(baton_worker_tasks.attempt, EXCLUDED.attempt) END"
            ),
        ]
        .join(", ");
        let sql = format!(
            "INSERT INTO baton_worker_tasks (id, call_key, queue, partition_id, execution, step, attempt, service,
                 payload, state, delivery, expired_leases, queued_at)
             SELECT $1::BYTEA, $2::TEXT, $3::TEXT, $4::INT4, $5::BYTEA, $6::TEXT, $7::INT4, $8::TEXT, $9::TEXT,
                 'queued', 0, 0, now()
             FROM (SELECT 1 FROM baton_partitions WHERE id = $4 AND epoch = $10 FOR SHARE) AS current
             WHERE EXISTS (SELECT 1 FROM baton_worker_tasks k WHERE k.call_key = $2)
                 OR (SELECT count(*) FROM baton_worker_tasks q WHERE q.queue = $3 AND q.state = 'queued') < $11
             ON CONFLICT (call_key) DO UPDATE SET {set}
             RETURNING id, attempt, state, {OUTCOME}"
        );
        let params: [&(dyn tokio_postgres::types::ToSql + Sync); 11] = [
            &id,
            &task.call_key,
            &task.queue,
            &partition,
            &execution,
            &task.step,
            &attempt,
            &task.service,
            &task.payload,
            &epoch,
            &max,
        ];
        if let Some(row) = client.query_opt(&sql, &params).await.map_err(|e| unavailable(&e))? {
            return enqueued(&row);
        }
        // Nothing written: the epoch moved on, or the queue is full.
        let current: Option<i64> = client
            .query_opt("SELECT epoch FROM baton_partitions WHERE id = $1", &[&partition])
            .await
            .map_err(|e| unavailable(&e))?
            .map(|row| row.get(0));
        if current != Some(epoch) {
            return Err(TaskError::Fenced(format!(
                "partition {partition} of execution {} was taken over by another node (this one held epoch \
                 {epoch}); it writes no more for it",
                task.execution
            )));
        }
        let depth: i64 = client
            .query_one("SELECT count(*) FROM baton_worker_tasks WHERE queue = $1 AND state = 'queued'", &[&task.queue])
            .await
            .map_err(|e| unavailable(&e))?
            .get(0);
        Err(TaskError::QueueFull { queue: task.queue, depth: usize::try_from(depth).unwrap_or(usize::MAX) })
    }

    /// Leases up to `max` of the oldest open tasks of `queues` to `worker`: waiting ones and
    /// those whose lease expired (they come back first, being older), each with a new token.
    pub async fn claim(&self, queues: &[String], worker: &str, max: usize) -> Result<Vec<Claimed>> {
        let client = self.client().await?;
        let settings = &self.inner.settings;
        let max = i64::try_from(max.max(1)).unwrap_or(i64::MAX);
        let expiries = settings.max_expired_leases.map_or(i32::MAX, |m| i32::try_from(m).unwrap_or(i32::MAX));
        let lease = settings.lease.as_secs_f64() * 1000.0;
        let sql = format!(
            "WITH picked AS (
                 SELECT id FROM baton_worker_tasks
                 WHERE queue = ANY($1) AND state IN ('queued', 'leased')
                     AND (state = 'queued' OR (lease_expires_at <= now() AND expired_leases + 1 < $4))
                 ORDER BY queued_at, id LIMIT $2 FOR UPDATE SKIP LOCKED)
             UPDATE baton_worker_tasks t SET
                 expired_leases = t.expired_leases + CASE WHEN t.state = 'leased' THEN 1 ELSE 0 END,
                 state = 'leased', delivery = t.delivery + 1, worker = $3,
                 lease_expires_at = now() + $5::FLOAT8 * INTERVAL '1 millisecond'
             FROM picked WHERE t.id = picked.id
             RETURNING {CLAIMED}"
        );
        let rows =
            client.query(&sql, &[&queues, &max, &worker, &expiries, &lease]).await.map_err(|e| unavailable(&e))?;
        let mut claimed: Vec<Claimed> = rows.iter().map(claimed).collect::<Result<_>>()?;
        // Oldest first, as queued.
        claimed.sort_by_key(|c| c.lease_expires_at);
        Ok(claimed)
    }

    /// Puts tasks claimed for a poll that went away before it could hand them over back in
    /// their queues, as they were but for the delivery number: their tokens stay unused.
    pub async fn release(&self, claimed: &[Claimed]) -> Result<()> {
        if claimed.is_empty() {
            return Ok(());
        }
        let client = self.client().await?;
        let ids: Vec<Vec<u8>> = claimed.iter().map(|c| c.id.to_be_bytes().to_vec()).collect();
        let deliveries: Vec<i32> = claimed.iter().map(|c| i32::try_from(c.delivery).unwrap_or(i32::MAX)).collect();
        client
            .execute(
                "UPDATE baton_worker_tasks t SET state = 'queued', worker = NULL, lease_expires_at = NULL
                 FROM UNNEST($1::BYTEA[], $2::INT4[]) AS u(id, delivery)
                 WHERE t.id = u.id AND t.delivery = u.delivery AND t.state = 'leased'",
                &[&ids, &deliveries],
            )
            .await
            .map_err(|e| unavailable(&e))?;
        Ok(())
    }

    /// Completes the task of token (`id`, `delivery`) with `output` (JSON text).
    pub async fn complete(&self, id: u128, delivery: u32, output: &str) -> Result<()> {
        self.answer(id, delivery, "ok", Some(output), None).await
    }

    /// Fails the task of token (`id`, `delivery`).
    pub async fn fail(&self, id: u128, delivery: u32, message: &str, retryable: bool) -> Result<()> {
        self.answer(id, delivery, "failed", Some(message), Some(retryable)).await
    }

    async fn answer(
        &self,
        id: u128,
        delivery: u32,
        outcome: &str,
        output: Option<&str>,
        retryable: Option<bool>,
    ) -> Result<()> {
        let client = self.client().await?;
        let key = id.to_be_bytes().to_vec();
        let number = i32::try_from(delivery).unwrap_or(i32::MAX);
        let written = client
            .execute(
                "UPDATE baton_worker_tasks SET state = 'done', outcome = $3, output = $4, retryable = $5,
                     finished_at = now()
                 WHERE id = $1 AND delivery = $2 AND state = 'leased' AND lease_expires_at > now()",
                &[&key, &number, &outcome, &output, &retryable],
            )
            .await
            .map_err(|e| unavailable(&e))?;
        if written == 1 { Ok(()) } else { Err(self.why_not_live(&client, id, delivery).await) }
    }

    /// Renews the lease of token (`id`, `delivery`) from now; on a withdrawn task, answers
    /// `cancel_requested`.
    pub async fn extend(&self, id: u128, delivery: u32) -> Result<Extension> {
        let client = self.client().await?;
        let key = id.to_be_bytes().to_vec();
        let number = i32::try_from(delivery).unwrap_or(i32::MAX);
        let lease = self.inner.settings.lease.as_secs_f64() * 1000.0;
        let row = client
            .query_opt(
                "UPDATE baton_worker_tasks SET lease_expires_at = now() + $3::FLOAT8 * INTERVAL '1 millisecond'
                 WHERE id = $1 AND delivery = $2 AND state = 'leased' AND lease_expires_at > now()
                 RETURNING CAST(EXTRACT(EPOCH FROM lease_expires_at) * 1000 AS BIGINT)",
                &[&key, &number, &lease],
            )
            .await
            .map_err(|e| unavailable(&e))?;
        if let Some(row) = row {
            return Ok(Extension { expires_at: millis(row.get(0)), cancel_requested: false });
        }
        let cancelled = client
            .query_opt(
                "SELECT CAST(EXTRACT(EPOCH FROM now()) * 1000 AS BIGINT) FROM baton_worker_tasks
                 WHERE id = $1 AND delivery = $2 AND state = 'cancelled'",
                &[&key, &number],
            )
            .await
            .map_err(|e| unavailable(&e))?;
        match cancelled {
            Some(row) => Ok(Extension { expires_at: millis(row.get(0)), cancel_requested: true }),
            None => Err(self.why_not_live(&client, id, delivery).await),
        }
    }

    /// Why the token (`id`, `delivery`) names no live lease, as precisely as the row tells.
    async fn why_not_live(&self, client: &Client, id: u128, delivery: u32) -> TaskError {
        let row = client
            .query_opt(
                "SELECT state, delivery, lease_expires_at <= now() FROM baton_worker_tasks WHERE id = $1",
                &[&id.to_be_bytes().to_vec()],
            )
            .await;
        let token = format!("{id:032x}.{delivery}");
        match row {
            Err(e) => unavailable(&e),
            Ok(None) => TaskError::NotLive(format!("task token {token} names no task")),
            Ok(Some(row)) => {
                let state: &str = row.get(0);
                let current = row.get::<_, i32>(1).unsigned_abs();
                let expired: Option<bool> = row.get(2);
                let why = if current != delivery {
                    "is stale: the task was handed out again"
                } else if state == "done" {
                    "is of a task already answered"
                } else if state == "cancelled" {
                    "is of a task its execution withdrew"
                } else if expired == Some(true) || state == "queued" {
                    "expired"
                } else {
                    "is not live"
                };
                TaskError::NotLive(format!("task token {token} {why}"))
            }
        }
    }

    /// The answers of those of `tasks` that ended, answering first the ones whose lease
    /// expired once too often.
    pub async fn outcomes(&self, tasks: &[u128]) -> Result<Vec<(TaskRef, Outcome)>> {
        if tasks.is_empty() {
            return Ok(Vec::new());
        }
        let client = self.client().await?;
        let keys: Vec<Vec<u8>> = tasks.iter().map(|id| id.to_be_bytes().to_vec()).collect();
        if let Some(max) = self.inner.settings.max_expired_leases {
            let max = i32::try_from(max).unwrap_or(i32::MAX);
            client
                .execute(
                    "UPDATE baton_worker_tasks SET state = 'done', outcome = 'lease_expired',
                         expired_leases = expired_leases + 1, retryable = TRUE, finished_at = now()
                     WHERE id = ANY($1) AND state = 'leased' AND lease_expires_at <= now()
                         AND expired_leases + 1 >= $2",
                    &[&keys, &max],
                )
                .await
                .map_err(|e| unavailable(&e))?;
        }
        let rows = client
            .query(
                &format!(
                    "SELECT id, attempt, state, {OUTCOME} FROM baton_worker_tasks WHERE id = ANY($1) AND state = 'done'"
                ),
                &[&keys],
            )
            .await
            .map_err(|e| unavailable(&e))?;
        rows.iter()
            .map(|row| match enqueued(row)? {
                Enqueued::Answered(task, outcome) => Ok((task, outcome)),
                Enqueued::Open(_) => Err(TaskError::Unavailable("a done task has no outcome".to_owned())),
            })
            .collect()
    }

    /// Withdraws `task` of `execution`, if it is still open: a worker holding it learns on
    /// its next extension, its answer is refused. Only while this node owns the partition;
    /// answers whether the row changed.
    pub async fn withdraw(&self, execution: ExecutionId, task: TaskRef) -> Result<bool> {
        let (partition, epoch) = self.fence(execution)?;
        let client = self.client().await?;
        let attempt = i32::try_from(task.attempt).unwrap_or(i32::MAX);
        let written = client
            .execute(
                "UPDATE baton_worker_tasks SET state = 'cancelled', finished_at = now()
                 FROM (SELECT 1 FROM baton_partitions WHERE id = $3 AND epoch = $4 FOR SHARE) AS current
                 WHERE baton_worker_tasks.id = $1 AND attempt = $2 AND state IN ('queued', 'leased')",
                &[&task.id.to_be_bytes().to_vec(), &attempt, &partition, &epoch],
            )
            .await
            .map_err(|e| unavailable(&e))?;
        Ok(written > 0)
    }

    /// Removes up to `limit` answered or cancelled tasks of this node's partitions that ended
    /// more than [`Settings::retention`] ago, under the partitions' epochs; how many. An
    /// answer stays while its execution is unfinished: a node that takes the partition over
    /// may need it, however long its recovery takes to reach the execution.
    pub async fn remove_closed(&self, limit: usize) -> Result<u64> {
        let owned = self.inner.ownership.owned();
        if owned.is_empty() {
            return Ok(0);
        }
        let partitions: Vec<i32> = owned.iter().map(|(p, _)| i32::try_from(*p).unwrap_or(i32::MAX)).collect();
        let epochs: Vec<i64> = owned.iter().map(|(_, e)| *e).collect();
        let retention = self.inner.settings.retention.as_secs_f64() * 1000.0;
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let client = self.client().await?;
        client
            .execute(
                "DELETE FROM baton_worker_tasks t
                 USING (SELECT p.id FROM baton_partitions p JOIN UNNEST($1::INT4[], $2::BIGINT[]) AS o(id, epoch)
                        ON p.id = o.id AND p.epoch = o.epoch FOR SHARE OF p) AS current
                 WHERE t.partition_id = current.id AND t.id IN (
                     SELECT c.id FROM baton_worker_tasks c WHERE c.state IN ('done', 'cancelled')
                         AND c.partition_id = ANY($1)
                         AND c.finished_at < now() - $3::FLOAT8 * INTERVAL '1 millisecond'
                         AND (c.state = 'cancelled' OR NOT EXISTS (
                             SELECT 1 FROM baton_executions e
                             WHERE e.id = c.execution AND e.state IN ('created', 'running', 'paused')))
                     LIMIT $4)",
                &[&partitions, &epochs, &retention, &limit],
            )
            .await
            .map_err(|e| unavailable(&e))
    }

    /// Every queue with waiting or leased tasks, on every node, by name.
    pub async fn depths(&self) -> Result<Vec<QueueDepth>> {
        let client = self.client().await?;
        let rows = client
            .query(
                "SELECT queue, count(*) FILTER (WHERE state = 'queued'), count(*) FILTER (WHERE state = 'leased')
                 FROM baton_worker_tasks WHERE state IN ('queued', 'leased') GROUP BY queue ORDER BY queue",
                &[],
            )
            .await
            .map_err(|e| unavailable(&e))?;
        let count = |row: &Row, i: usize| u64::try_from(row.get::<_, i64>(i)).unwrap_or(0);
        Ok(rows
            .iter()
            .map(|row| QueueDepth { queue: row.get(0), queued: count(row, 1), leased: count(row, 2) })
            .collect())
    }
}

fn task_id(bytes: &[u8]) -> Result<u128> {
    let bytes: [u8; 16] = bytes
        .try_into()
        .map_err(|_| TaskError::Unavailable(format!("the database holds a bad task id {bytes:02x?}")))?;
    Ok(u128::from_be_bytes(bytes))
}

fn millis(ms: i64) -> Timestamp {
    Timestamp::from_timestamp_millis(ms).unwrap_or_default()
}

/// A row of `id, attempt, state` and the [`OUTCOME`] columns.
fn enqueued(row: &Row) -> Result<Enqueued> {
    let task = TaskRef { id: task_id(row.get(0))?, attempt: row.get::<_, i32>(1).unsigned_abs() };
    let state: &str = row.get(2);
    if state != "done" {
        return Ok(Enqueued::Open(task));
    }
    let outcome: Option<&str> = row.get(3);
    let output: Option<String> = row.get(4);
    let outcome = match outcome {
        Some("ok") => Outcome::Succeeded(output.unwrap_or_else(|| "null".to_owned())),
        Some("failed") => Outcome::Failed {
            message: output.unwrap_or_default(),
            retryable: row.get::<_, Option<bool>>(5) == Some(true),
        },
        _ => Outcome::LeaseExpired {
            leases: row.get::<_, i32>(6).unsigned_abs(),
            worker: row.get::<_, Option<String>>(7).unwrap_or_default(),
        },
    };
    Ok(Enqueued::Answered(task, outcome))
}

fn claimed(row: &Row) -> Result<Claimed> {
    let execution: &[u8] = row.get(4);
    let execution = uuid_execution(execution)?;
    Ok(Claimed {
        id: task_id(row.get(0))?,
        delivery: row.get::<_, i32>(1).unsigned_abs(),
        queue: row.get(2),
        service: row.get(3),
        execution,
        step: row.get(5),
        attempt: row.get::<_, i32>(6).unsigned_abs(),
        call_key: row.get(7),
        payload: row.get(8),
        lease_expires_at: millis(row.get(9)),
    })
}

fn uuid_execution(bytes: &[u8]) -> Result<ExecutionId> {
    let bad = || TaskError::Unavailable(format!("the database holds a bad execution id {bytes:02x?}"));
    let uuid = uuid::Uuid::from_slice(bytes).map_err(|_| bad())?;
    ExecutionId::from_uuid(uuid).map_err(|_| bad())
}

fn unavailable(e: &tokio_postgres::Error) -> TaskError {
    match crate::unavailable(e) {
        crate::Error::Unavailable(text) => TaskError::Unavailable(text),
        other => TaskError::Unavailable(other.to_string()),
    }
}
