//! The shared registry's table against a throwaway PostgreSQL cluster (or the server
//! `BATON_TEST_PG_URL` names): changes read in order after a cursor, removals seen by a reader
//! with a cursor and absent from a full read, a registration keeping the health its check kind
//! still describes, heartbeats that change nothing taking no sequence, TTLs judged by the
//! database's clock (a heartbeat dated back by its age), and expiry only by the owner of the
//! service's partition.

use std::sync::Arc;
use std::time::Duration;

use baton_cluster::Services;
use baton_core::fakes::FixedOwnership;
use baton_core::{Health, Registration, ServiceId, ServiceSpec, ServiceTable, SharedChange};
use baton_store::postgres::{Config as StoreConfig, PostgresStore};
use baton_store::testing::{PgCluster, sql_client};

fn spec(id: &str, check: &str) -> Arc<ServiceSpec> {
    let text = format!(
        r#"{{"id": "{id}", "endpoint": {{"protocol": "http", "url": "http://127.0.0.1:9/x"}},
            "capabilities": ["x"], "health_check": {check}}}"#
    );
    Arc::new(ServiceSpec::from_json(&text).unwrap())
}

const TTL_1S: &str = r#"{"kind": "ttl", "ttl": "1s"}"#;
const HTTP: &str = r#"{"kind": "http", "url": "http://127.0.0.1:9/health", "interval": "1s"}"#;

fn id(text: &str) -> ServiceId {
    ServiceId::new(text).unwrap()
}

/// The ids and healths of `changes`' puts, and the ids it removed.
fn summary(changes: &[SharedChange]) -> (Vec<(String, Health)>, Vec<String>) {
    let mut puts = Vec::new();
    let mut removed = Vec::new();
    for change in changes {
        match change {
            SharedChange::Put(service) => puts.push((service.spec.id().to_string(), service.health)),
            SharedChange::Removed(id) => removed.push(id.to_string()),
        }
    }
    (puts, removed)
}

#[test]
fn the_shared_registry_table_on_postgres() {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let cluster = PgCluster::start();
    runtime.block_on(async {
        let url = cluster.create_database().await;
        drop(PostgresStore::connect(&StoreConfig::new(url.clone())).await.unwrap());
        let owner = Services::new(&url, Arc::new(FixedOwnership::all(64, 1))).unwrap();
        let none = FixedOwnership::all(64, 1);
        (0..64).for_each(|partition| none.remove(partition));
        let other = Services::new(&url, Arc::new(none)).unwrap();

        // Registrations and their order.
        assert_eq!(owner.register(spec("pay", TTL_1S), Health::Passing).await.unwrap(), Registration::Created);
        assert_eq!(other.register(spec("ship", HTTP), Health::Unknown).await.unwrap(), Registration::Created);
        let all = other.changes(None).await.unwrap();
        assert!(all.complete);
        assert_eq!(
            summary(&all.changes),
            (vec![("pay".to_owned(), Health::Passing), ("ship".to_owned(), Health::Unknown)], vec![])
        );
        let cursor = all.cursor;

        // A verdict, then a registration with the same check kind keeps it; another kind does not.
        assert!(owner.set_health(id("ship"), Health::Passing, "200 OK".to_owned()).await.unwrap());
        assert_eq!(other.register(spec("ship", HTTP), Health::Unknown).await.unwrap(), Registration::Updated);
        let read = other.changes(Some(cursor)).await.unwrap();
        assert!(!read.complete);
        assert_eq!(summary(&read.changes).0.last(), Some(&("ship".to_owned(), Health::Passing)));
        assert_eq!(other.register(spec("ship", TTL_1S), Health::Passing).await.unwrap(), Registration::Updated);
        let cursor = other.changes(None).await.unwrap().cursor;

        // A heartbeat that changes no health takes no sequence: nobody needs to hear of it.
        assert!(other.heartbeat(id("pay"), Health::Passing, "heartbeat".to_owned(), Duration::ZERO).await.unwrap());
        assert!(other.changes(Some(cursor)).await.unwrap().changes.is_empty());

        // A removal: seen after a cursor, absent from a full read, refused twice.
        assert!(other.deregister(id("ship")).await.unwrap());
        assert!(!owner.deregister(id("ship")).await.unwrap());
        assert!(!owner.heartbeat(id("ship"), Health::Passing, String::new(), Duration::ZERO).await.unwrap());
        let read = owner.changes(Some(cursor)).await.unwrap();
        assert_eq!(summary(&read.changes), (vec![], vec!["ship".to_owned()]));
        assert_eq!(summary(&owner.changes(None).await.unwrap().changes).0.len(), 1);
        let cursor = read.cursor;

        // TTLs by the database's clock: a heartbeat 900 ms old leaves 100 ms of a 1 s TTL (one
        // older than the last written never moves the TTL back, so the last is put 10 s back).
        let client = sql_client(&url).await;
        client.execute("UPDATE baton_services SET beat_at = now() - INTERVAL '10 seconds'", &[]).await.unwrap();
        assert!(owner.heartbeat(id("pay"), Health::Passing, String::new(), Duration::from_millis(900)).await.unwrap());
        let left: f64 = client
            .query_one(
                "SELECT CAST(EXTRACT(EPOCH FROM (beat_at + ttl_ms * INTERVAL '1 millisecond' - now())) AS FLOAT8)
                 FROM baton_services
                 WHERE id = 'pay'",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        assert!((-1.0..=0.1).contains(&left), "{left} s of the TTL left");
        // Only the node owning the service's partition expires it.
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while owner.changes(Some(cursor)).await.unwrap().changes.is_empty() {
            assert_eq!(other.expire().await.unwrap(), 0, "a node that does not own the partition expired it");
            owner.expire().await.unwrap();
            assert!(std::time::Instant::now() < deadline, "the TTL did not expire");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let read = other.changes(Some(cursor)).await.unwrap();
        let SharedChange::Put(expired) = &read.changes[0] else { panic!("{read:?}") };
        assert_eq!(expired.health, Health::Critical);
        assert!(expired.output.starts_with("ttl 1000ms expired"), "{}", expired.output);
        assert_eq!(owner.expire().await.unwrap(), 0, "an expiry counts once");
        assert!(owner.checks(&id("pay")) && !other.checks(&id("pay")));
        assert_eq!(read.live_nodes, 1, "no node has joined: one is counted");
    });
}
