//! A real `baton serve --cluster` node cut off from its PostgreSQL database (a proxy in the
//! test blackholes its connections, as a dead network would): it fences itself before its
//! lease can end at the database, the other node takes its partitions over and finishes its
//! executions, and once the network is back the cut node rejoins under new epochs, with no
//! partition run by two nodes: every effect happens once and the journals keep their
//! invariants.

#![allow(clippy::print_stderr, reason = "the test logs how long the fence and the takeover took")]

mod support;

use std::time::{Duration, Instant};

use baton_store::testing::{BlackholeProxy, PgCluster, eventually, sql_client};
use support::cluster::{check_invariants, effects_once, epochs, node, shop, start_round_robin};
use support::{Clients, example};

/// The partitions `node` owns by the database.
async fn owned_by(url: &str, node: &str) -> u32 {
    let status = baton_cluster::status(url).await.unwrap();
    status.nodes.iter().find(|n| n.id == node).map_or(0, |n| n.partitions)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_cut_off_from_the_database_fences_itself_and_rejoins_without_a_second_owner() {
    let cluster = tokio::task::spawn_blocking(PgCluster::start).await.unwrap();
    let url = cluster.create_database().await;
    let proxy = BlackholeProxy::start(&url).await;
    let dir = tempfile::tempdir().unwrap();
    let a = node(&proxy.url, "a", dir.path()).await;
    let b = node(&url, "b", dir.path()).await;
    // Slow steps, so that runs are in flight on both nodes when the network goes.
    let shops = vec![shop(&[&a, &b], Duration::from_millis(150)).await];
    Clients::new(b.channel().await).apply(&example("pipeline.yaml")).await;
    eventually("a and b share the partitions", Duration::from_secs(60), async || {
        (owned_by(&url, "a").await >= 16 && owned_by(&url, "b").await >= 16).then_some(())
    })
    .await;
    let client = sql_client(&url).await;
    let before = epochs(&client).await;
    let first = start_round_robin(&[&a, &b], "cut", 40).await;

    proxy.cut();
    let cut = Instant::now();
    // a fences itself while the database still counts its lease: polled often, so a fence
    // later than the poll would find the lease over.
    let lease_left = async || {
        let row = client.query_one("SELECT lease_expires_at > now() FROM baton_nodes WHERE id = 'a'", &[]).await;
        row.unwrap().get::<_, bool>(0)
    };
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let fenced = a.log_text().contains("fenced:");
        let lasts = lease_left().await;
        if fenced {
            assert!(lasts, "a fenced itself only after its lease ended at the database");
            break;
        }
        assert!(lasts, "a's lease ended at the database while a had not fenced itself:\n{}", a.log_text());
        assert!(Instant::now() < deadline, "a never fenced itself:\n{}", a.log_text());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    eprintln!("a fenced itself {:?} after the cut", cut.elapsed());
    eventually("b takes every partition", Duration::from_secs(15), async || {
        (owned_by(&url, "b").await == 64).then_some(())
    })
    .await;
    eprintln!("b owned every partition {:?} after the cut", cut.elapsed());
    // Every run, a's included, finishes on b, each effect once.
    Clients::new(b.channel().await).all_completed(&first, Duration::from_secs(120), &b).await;
    assert_eq!(effects_once(&shops), 40 * 5);

    // The network comes back: a rejoins and takes partitions again, under new epochs.
    proxy.restore();
    eventually("a rejoins and owns partitions again", Duration::from_secs(60), async || {
        (a.log_text().contains("rejoined the cluster") && owned_by(&url, "a").await >= 4).then_some(())
    })
    .await;
    eprintln!("a owned partitions again {:?} after the cut", cut.elapsed());
    // A partition b hands back towards an even share is unowned until a claims it.
    eventually("every partition owned again", Duration::from_secs(30), async || {
        let status = baton_cluster::status(&url).await.unwrap();
        (status.nodes.iter().map(|n| n.partitions).sum::<u32>() == 64).then_some(())
    })
    .await;
    let after: Vec<(Option<String>, i64)> = client
        .query("SELECT owner, epoch FROM baton_partitions ORDER BY id", &[])
        .await
        .unwrap()
        .iter()
        .map(|row| (row.get(0), row.get(1)))
        .collect();
    for ((owner, epoch), old) in after.iter().zip(&before) {
        assert!(epoch >= old, "an epoch went down");
        if owner.as_deref() == Some("a") {
            assert!(epoch > old, "a holds a partition under an epoch it held before the cut");
        }
    }
    // Both nodes run new work, a's store connections back, and nothing ran twice.
    let second = start_round_robin(&[&a, &b], "after", 40).await;
    Clients::new(a.channel().await).all_completed(&second, Duration::from_secs(120), &a).await;
    assert_eq!(effects_once(&shops), 80 * 5);
    check_invariants(&client, 80).await;
    assert!(epochs(&client).await.iter().zip(&before).all(|(now, old)| now >= old));
    drop((a, b));
}
