//! The conformance suite against PostgreSQL: one throwaway cluster for this binary (or the
//! server `BATON_TEST_PG_URL` names), one database per case, every case at once in one test.
//! Without PostgreSQL this fails, saying so; it never skips.

use std::sync::Arc;

use baton_core::{Store, StoreError};
use baton_store::postgres::{Config, MIGRATIONS, PostgresStore};
use baton_store::testing::{PgCluster, PgHarness};

#[test]
fn postgres_store_conforms() {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let cluster = Arc::new(PgCluster::start());
    let results = runtime.block_on(baton_store::conformance::run_all(|_| PgHarness::new(Arc::clone(&cluster))));
    let mut failures = Vec::new();
    for (case, result) in &results {
        match result {
            Ok(()) => eprintln!("ok      {case}"),
            Err(e) => {
                eprintln!("FAILED  {case}: {e}");
                failures.push(*case);
            }
        }
    }
    assert!(results.len() >= 10, "only {} cases ran", results.len());
    assert!(failures.is_empty(), "failed cases: {failures:?}");

    runtime.block_on(schema_and_connection_checks(&cluster));
    runtime.block_on(concurrent_appends_share_transactions(&cluster));
}

async fn concurrent_appends_share_transactions(cluster: &PgCluster) {
    let store = PostgresStore::connect(&Config::new(cluster.create_database().await)).await.unwrap();
    let executions = baton_store::conformance::create_executions(&store, 64).await;
    baton_store::conformance::append_concurrently(&store, &executions, 10).await;
    let stats = store.commit_stats();
    eprintln!("{stats:?}");
    assert_eq!(stats.writes, 640);
    assert!(stats.transactions * 4 <= stats.writes, "{stats:?}");
}

async fn schema_and_connection_checks(cluster: &PgCluster) {
    let url = cluster.create_database().await;
    // Migrations are recorded once, and connecting again applies nothing twice.
    let store = PostgresStore::connect(&Config::new(url.clone())).await.unwrap();
    PostgresStore::connect(&Config::new(url.clone())).await.unwrap();
    let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(connection);
    let versions: Vec<i32> = client
        .query("SELECT version FROM baton_schema_migrations ORDER BY version", &[])
        .await
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect();
    assert_eq!(versions, MIGRATIONS.iter().map(|m| m.version).collect::<Vec<_>>());

    // A schema newer than this build is refused.
    client.execute("INSERT INTO baton_schema_migrations VALUES (999, 'future', 0)", &[]).await.unwrap();
    let err = PostgresStore::connect(&Config::new(url.clone())).await.unwrap_err();
    assert!(err.to_string().contains("schema version 999"), "{err}");

    // A broken connection string is invalid, an unreachable server unavailable.
    let err = PostgresStore::connect(&Config::new("not a connection string")).await.unwrap_err();
    assert!(matches!(&err, StoreError::Invalid { field, .. } if field == "url"), "{err}");
    let err =
        PostgresStore::connect(&Config::new("postgres://nobody@127.0.0.1:1/none?connect_timeout=2")).await.unwrap_err();
    assert!(matches!(err, StoreError::Unavailable(_)), "{err}");
    assert!(store.list_definitions().await.unwrap().is_empty());
}
