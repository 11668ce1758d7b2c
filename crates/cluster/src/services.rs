//! The shared service registry's table: [`Services`] implements [`ServiceTable`] on
//! `baton_services` (the store's migration 8).
//!
//! Every change takes the next `baton_registry_clock.seq` under that row's lock and stamps it
//! on the row, so changes commit in sequence order and a reader polling `seq > cursor` never
//! skips one. Heartbeats that do not change a service's health move only its `beat_at` and
//! take no sequence: the other nodes need not hear of them, and the lock stays cold. TTLs
//! are judged by the database's `now()`. A service's checks (probes and its TTL) belong to
//! the node owning the partition its id hashes to ([`ServiceId::partition`]).

use std::sync::Arc;
use std::time::Duration;

use baton_core::{
    BoxFuture, CheckKind, Health, Ownership, REMOVALS_KEPT, Registration, ServiceId, ServiceSpec, ServiceTable,
    SharedChange, SharedChanges, SharedService,
};
use tokio::sync::{Mutex, MutexGuard};
use tokio_postgres::{Client, NoTls, Transaction};

use crate::{Error, unavailable};

/// The shared registry's table in the cluster's database, with one connection of its own
/// (opened again after it breaks).
pub struct Services {
    pg: tokio_postgres::Config,
    client: Mutex<Option<Client>>,
    ownership: Arc<dyn Ownership>,
}

impl std::fmt::Debug for Services {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Services").field("ownership", &self.ownership).finish_non_exhaustive()
    }
}

type CoreResult<T> = baton_core::Result<T>;

fn lost(e: &tokio_postgres::Error) -> baton_core::Error {
    match unavailable(e) {
        Error::Unavailable(text) => baton_core::Error::Unavailable(text),
        other => baton_core::Error::Unavailable(other.to_string()),
    }
}

fn health_text(health: Health) -> &'static str {
    match health {
        Health::Unknown => "unknown",
        Health::Passing => "passing",
        Health::Critical => "critical",
    }
}

fn health_of(text: &str) -> Health {
    match text {
        "passing" => Health::Passing,
        "critical" => Health::Critical,
        _ => Health::Unknown,
    }
}

fn millis(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}

/// The next change sequence, holding the clock row's lock until `tx` ends.
async fn next_seq(tx: &Transaction<'_>) -> Result<i64, tokio_postgres::Error> {
    Ok(tx.query_one("UPDATE baton_registry_clock SET seq = seq + 1 WHERE id = 0 RETURNING seq", &[]).await?.get(0))
}

impl Services {
    /// The table of the database at `url`, its checks split by `ownership`. Connects on first use.
    pub fn new(url: &str, ownership: Arc<dyn Ownership>) -> crate::Result<Self> {
        let pg =
            url.parse().map_err(|e: tokio_postgres::Error| Error::Invalid { field: "url", reason: e.to_string() })?;
        Ok(Self { pg, client: Mutex::new(None), ownership })
    }

    /// The connection, opened when there is none or the last one broke.
    async fn connection(&self) -> CoreResult<MutexGuard<'_, Option<Client>>> {
        let mut guard = self.client.lock().await;
        if guard.as_ref().is_none_or(Client::is_closed) {
            let (client, connection) = self.pg.connect(NoTls).await.map_err(|e| lost(&e))?;
            tokio::spawn(async move {
                if let Err(error) = connection.await {
                    tracing::debug!(%error, "the shared registry's connection ended");
                }
            });
            *guard = Some(client);
        }
        Ok(guard)
    }

    async fn register_row(&self, spec: Arc<ServiceSpec>, health: Health) -> CoreResult<Registration> {
        let text = serde_json::to_string(&*spec).map_err(|e| baton_core::Error::Unavailable(e.to_string()))?;
        let id = spec.id().as_str();
        let partition = i32::try_from(spec.id().partition(self.ownership.partitions())).unwrap_or(0);
        let ttl = match &spec.health_check().kind {
            CheckKind::Ttl { ttl } => Some(millis(*ttl)),
            _ => None,
        };
        let mut guard = self.connection().await?;
        let client = guard.as_mut().expect("connected");
        let write = async {
            let tx = client.transaction().await?;
            let seq = next_seq(&tx).await?;
            let old = tx
                .query_opt("SELECT spec, health, output FROM baton_services WHERE id = $1 FOR UPDATE", &[&id])
                .await?;
            let old = old.and_then(|row| {
                let spec: Option<String> = row.get(0);
                Some((ServiceSpec::from_json(&spec?).ok(), row.get::<_, String>(1), row.get::<_, String>(2)))
            });
            let (registration, health, output) = match old {
                Some((Some(old), health, output)) if old.health_check().kind == spec.health_check().kind => {
                    (Registration::Updated, health, output)
                }
                Some(_) => (Registration::Updated, health_text(health).to_owned(), String::new()),
                None => (Registration::Created, health_text(health).to_owned(), String::new()),
            };
            tx.execute(
                "INSERT INTO baton_services (id, partition, spec, ttl_ms, health, output, beat_at, seq, changed_at)
                 VALUES ($1, $2, $3, $4, $5, $6, now(), $7, now())
                 ON CONFLICT (id) DO UPDATE SET partition = EXCLUDED.partition, spec = EXCLUDED.spec,
                     ttl_ms = EXCLUDED.ttl_ms, health = EXCLUDED.health, output = EXCLUDED.output,
                     beat_at = now(), seq = EXCLUDED.seq, changed_at = now()",
                &[&id, &partition, &text, &ttl, &health, &output, &seq],
            )
            .await?;
            tx.commit().await?;
            Ok::<_, tokio_postgres::Error>(registration)
        };
        write.await.map_err(|e| lost(&e))
    }

    /// Runs `statement` (which takes the id as `$1` and the sequence as `$2`, then `params`)
    /// under a new sequence; answers the rows it changed.
    async fn change(
        &self,
        statement: &str,
        id: &ServiceId,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> CoreResult<u64> {
        let mut guard = self.connection().await?;
        let client = guard.as_mut().expect("connected");
        let write = async {
            let tx = client.transaction().await?;
            let seq = next_seq(&tx).await?;
            let id = id.as_str();
            let mut all: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = vec![&id, &seq];
            all.extend_from_slice(params);
            let changed = tx.execute(statement, &all).await?;
            if changed == 0 {
                tx.rollback().await?;
            } else {
                tx.commit().await?;
            }
            Ok::<_, tokio_postgres::Error>(changed)
        };
        write.await.map_err(|e| lost(&e))
    }

    async fn heartbeat_row(&self, id: ServiceId, health: Health, output: String, age: Duration) -> CoreResult<bool> {
        let age = millis(age);
        let health = health_text(health);
        // The usual case: nothing the others need to hear, so no sequence and no lock.
        let quiet = {
            let guard = self.connection().await?;
            let client = guard.as_ref().expect("connected");
            client
                .execute(
                    "UPDATE baton_services SET beat_at = GREATEST(beat_at, now() - CAST($2 AS FLOAT8) * INTERVAL '1 millisecond'),
                         output = $3
                     WHERE id = $1 AND spec IS NOT NULL AND health = $4",
                    &[&id.as_str(), &(age as f64), &output, &health],
                )
                .await
                .map_err(|e| lost(&e))?
        };
        if quiet > 0 {
            return Ok(true);
        }
        let changed = self
            .change(
                "UPDATE baton_services SET beat_at = GREATEST(beat_at, now() - CAST($3 AS FLOAT8) * INTERVAL '1 millisecond'),
                     health = $4, output = $5, seq = $2, changed_at = now()
                 WHERE id = $1 AND spec IS NOT NULL",
                &id,
                &[&(age as f64), &health, &output],
            )
            .await?;
        Ok(changed > 0)
    }

    async fn read_changes(&self, cursor: Option<u64>) -> CoreResult<SharedChanges> {
        let guard = self.connection().await?;
        let client = guard.as_ref().expect("connected");
        let read = async {
            // The clock first: a change committed after it is read again next time, never lost.
            let clock: i64 = client.query_one("SELECT seq FROM baton_registry_clock WHERE id = 0", &[]).await?.get(0);
            let rows = match cursor {
                Some(after) => {
                    let after = i64::try_from(after).unwrap_or(i64::MAX);
                    client
                        .query(
                            "SELECT id, spec, health, output, seq FROM baton_services WHERE seq > $1 ORDER BY seq",
                            &[&after],
                        )
                        .await?
                }
                None => {
                    client
                        .query(
                            "SELECT id, spec, health, output, seq FROM baton_services WHERE spec IS NOT NULL
                             ORDER BY seq",
                            &[],
                        )
                        .await?
                }
            };
            let live: i64 =
                client.query_one("SELECT count(*) FROM baton_nodes WHERE lease_expires_at > now()", &[]).await?.get(0);
            Ok::<_, tokio_postgres::Error>((clock, rows, live))
        };
        let (clock, rows, live) = read.await.map_err(|e| lost(&e))?;
        let mut latest = cursor.unwrap_or(0).max(u64::try_from(clock).unwrap_or(0));
        let mut changes = Vec::with_capacity(rows.len());
        for row in rows {
            latest = latest.max(u64::try_from(row.get::<_, i64>(4)).unwrap_or(0));
            let id: String = row.get(0);
            match row.get::<_, Option<String>>(1) {
                None => changes.push(SharedChange::Removed(ServiceId::new(&id)?)),
                Some(text) => {
                    let spec = ServiceSpec::from_json(&text).map_err(|e| {
                        baton_core::Error::Unavailable(format!(
                            "service {id:?} in the shared registry is unreadable: {e}"
                        ))
                    })?;
                    changes.push(SharedChange::Put(SharedService {
                        spec: Arc::new(spec),
                        health: health_of(row.get(2)),
                        output: row.get(3),
                    }));
                }
            }
        }
        Ok(SharedChanges {
            cursor: latest,
            complete: cursor.is_none(),
            changes,
            live_nodes: u32::try_from(live).unwrap_or(u32::MAX).max(1),
        })
    }

    async fn expire_rows(&self) -> CoreResult<usize> {
        let owned: Vec<i32> = self.ownership.owned().iter().filter_map(|(p, _)| i32::try_from(*p).ok()).collect();
        if owned.is_empty() {
            return Ok(0);
        }
        let due = "spec IS NOT NULL AND ttl_ms IS NOT NULL AND health <> 'critical' AND partition = ANY($1)
                   AND beat_at + ttl_ms * INTERVAL '1 millisecond' < now()";
        let mut guard = self.connection().await?;
        let client = guard.as_mut().expect("connected");
        let write = async {
            // The owner of partition 0 forgets removals every node has had time to read.
            if owned.contains(&0) {
                let kept = REMOVALS_KEPT.as_secs_f64();
                client
                    .execute(
                        "DELETE FROM baton_services WHERE spec IS NULL AND changed_at < now() - CAST($1 AS FLOAT8) * INTERVAL '1 second'",
                        &[&kept],
                    )
                    .await?;
            }
            let found = client.query(&format!("SELECT id FROM baton_services WHERE {due}"), &[&owned]).await?;
            if found.is_empty() {
                return Ok(0);
            }
            let tx = client.transaction().await?;
            let seq = next_seq(&tx).await?;
            let expired = tx
                .execute(
                    &format!(
                        "UPDATE baton_services SET health = 'critical', seq = $2, changed_at = now(),
                             output = 'ttl ' || ttl_ms || 'ms expired (last heartbeat '
                                 || CAST(EXTRACT(EPOCH FROM (now() - beat_at)) * 1000 AS BIGINT) || 'ms ago)'
                         WHERE {due}"
                    ),
                    &[&owned, &seq],
                )
                .await?;
            tx.commit().await?;
            Ok::<_, tokio_postgres::Error>(usize::try_from(expired).unwrap_or(usize::MAX))
        };
        write.await.map_err(|e| lost(&e))
    }
}

/// The longest one call on the table may take: past it the connection counts as lost (a
/// database cut off may never answer) and the next call opens another.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);

impl Services {
    async fn bounded<T>(&self, call: impl Future<Output = CoreResult<T>>) -> CoreResult<T> {
        match tokio::time::timeout(CALL_TIMEOUT, call).await {
            Ok(answer) => answer,
            Err(_) => {
                *self.client.lock().await = None;
                Err(baton_core::Error::Unavailable(format!(
                    "the shared registry's database did not answer within {CALL_TIMEOUT:?}"
                )))
            }
        }
    }
}

impl ServiceTable for Services {
    fn register(&self, spec: Arc<ServiceSpec>, health: Health) -> BoxFuture<'_, CoreResult<Registration>> {
        Box::pin(self.bounded(self.register_row(spec, health)))
    }

    fn deregister(&self, id: ServiceId) -> BoxFuture<'_, CoreResult<bool>> {
        Box::pin(self.bounded(async move {
            let changed = self
                .change(
                    "UPDATE baton_services SET spec = NULL, seq = $2, changed_at = now() WHERE id = $1 AND spec IS NOT NULL",
                    &id,
                    &[],
                )
                .await?;
            Ok(changed > 0)
        }))
    }

    fn heartbeat(
        &self,
        id: ServiceId,
        health: Health,
        output: String,
        age: Duration,
    ) -> BoxFuture<'_, CoreResult<bool>> {
        Box::pin(self.bounded(self.heartbeat_row(id, health, output, age)))
    }

    fn set_health(&self, id: ServiceId, health: Health, output: String) -> BoxFuture<'_, CoreResult<bool>> {
        Box::pin(self.bounded(async move {
            let changed = self
                .change(
                    "UPDATE baton_services SET health = $3, output = $4, seq = $2, changed_at = now()
                     WHERE id = $1 AND spec IS NOT NULL",
                    &id,
                    &[&health_text(health), &output],
                )
                .await?;
            Ok(changed > 0)
        }))
    }

    fn changes(&self, cursor: Option<u64>) -> BoxFuture<'_, CoreResult<SharedChanges>> {
        Box::pin(self.bounded(self.read_changes(cursor)))
    }

    fn expire(&self) -> BoxFuture<'_, CoreResult<usize>> {
        Box::pin(self.bounded(self.expire_rows()))
    }

    fn checks(&self, id: &ServiceId) -> bool {
        self.ownership.epoch(id.partition(self.ownership.partitions())).is_some()
    }
}
