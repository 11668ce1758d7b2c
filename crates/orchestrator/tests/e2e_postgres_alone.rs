//! Two `baton serve` processes outside a cluster never share one PostgreSQL database: the
//! second is refused at start with an error naming the first and the way out, as is a cluster
//! node; once the first is killed, a server takes the database over at once.

mod support;

use baton_store::testing::PgCluster;
use support::{ServerProcess, refused};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_server_outside_a_cluster_is_refused_the_database() {
    let cluster = tokio::task::spawn_blocking(PgCluster::start).await.unwrap();
    let url = cluster.create_database().await;
    let dir = tempfile::tempdir().unwrap();
    let mut first = ServerProcess::start(&dir.path().join("first"), &["--store", &url]).await;

    let stderr = refused(&dir.path().join("second"), &["--store", &url]).await;
    assert!(stderr.contains("the database is used by another Baton server outside a cluster"), "{stderr}");
    assert!(stderr.contains("connected from a local socket since"), "{stderr}");
    assert!(stderr.contains("--cluster"), "{stderr}");
    let stderr = refused(&dir.path().join("node"), &["--store", &url, "--cluster", "--node-id", "n1"]).await;
    assert!(stderr.contains("the database is used by another Baton server outside a cluster"), "{stderr}");

    // The first still serves, untouched.
    let mut clients = support::Clients::new(first.channel().await);
    clients.apply(support::TICK).await;

    // Its hold ends with it: a server started after its kill -9 takes the database.
    first.kill9();
    let second = ServerProcess::start(&dir.path().join("second"), &["--store", &url]).await;
    let mut clients = support::Clients::new(second.channel().await);
    let listed = clients.workflows.list_definitions(baton_grpc::pb::ListDefinitionsRequest::default()).await.unwrap();
    assert_eq!(listed.into_inner().definitions.len(), 1);
}
