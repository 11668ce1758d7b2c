//! Three real `baton serve --cluster` nodes on one throwaway PostgreSQL database: executions
//! started round-robin across the nodes all complete with each step's effect once; a `kill -9`
//! of a node mid-run loses nothing (its partitions are claimed after its lease and its
//! executions resumed); the journals left in the database keep their invariants; `baton
//! cluster status` shows the nodes; a server started outside the cluster on its database is
//! refused.
//!
//! The one example shop registers with the first node; the others know it from the registry
//! the nodes share (`e2e_cluster_registry.rs` tests that registry itself).

#![allow(clippy::print_stderr, reason = "the test logs the takeover time and the final cluster status")]

mod support;

use std::time::{Duration, Instant};

use baton_store::testing::{PgCluster, sql_client};
use support::cluster::{check_invariants, cluster_status, effects_once, epochs, node, shop, start_round_robin};
use support::{Clients, example, refused};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_share_the_work_and_take_over_a_killed_one() {
    let cluster = tokio::task::spawn_blocking(PgCluster::start).await.unwrap();
    let url = cluster.create_database().await;
    let dir = tempfile::tempdir().unwrap();
    let a = node(&url, "a", dir.path()).await;
    let mut b = node(&url, "b", dir.path()).await;
    let c = node(&url, "c", dir.path()).await;
    let shops = vec![shop(&[&a, &b, &c], Duration::from_millis(20)).await];
    Clients::new(a.channel().await).apply(&example("pipeline.yaml")).await;
    let client = sql_client(&url).await;
    // The three share the partitions before the run: none owns them all.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let status = baton_cluster::status(&url).await.unwrap();
        let shares: Vec<u32> = status.nodes.iter().map(|n| n.partitions).collect();
        if shares.len() == 3 && shares.iter().all(|s| *s >= 16) {
            break;
        }
        assert!(Instant::now() < deadline, "the nodes did not share the partitions: {status:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let text = cluster_status(&url);
    assert!(text.starts_with("64 partitions, 3 live node(s)"), "{text}");
    for name in ["a", "b", "c"] {
        assert!(text.lines().any(|line| line.starts_with(name) && line.contains("left")), "{text}");
    }

    // 1. 300 executions round-robin over the nodes: all complete, each effect once.
    let ids = start_round_robin(&[&a, &b, &c], "run", 300).await;
    let mut reader = Clients::new(c.channel().await);
    reader.all_completed(&ids, Duration::from_secs(240), &a).await;
    assert_eq!(effects_once(&shops), 300 * 5);

    // 2. kill -9 of a node mid-run: every acknowledged start completes.
    let before = epochs(&client).await;
    let more = start_round_robin(&[&a, &b, &c], "kill", 90).await;
    b.kill9();
    let killed = Instant::now();
    let deadline = killed + Duration::from_secs(60);
    loop {
        let status = baton_cluster::status(&url).await.unwrap();
        let survivors: u32 = status.nodes.iter().filter(|n| n.id != "b").map(|n| n.partitions).sum();
        if survivors == 64 {
            assert!(
                status.nodes.iter().all(|n| n.id != "b" || n.lease_remaining_ms <= 0),
                "claimed before b's lease ended"
            );
            break;
        }
        assert!(Instant::now() < deadline, "b's partitions were not claimed: {status:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Within the lease and a few heartbeats.
    assert!(killed.elapsed() < Duration::from_secs(3 + 5), "took {:?}", killed.elapsed());
    eprintln!("partitions owned again {:?} after the kill", killed.elapsed());
    reader.all_completed(&more, Duration::from_secs(120), &a).await;
    assert_eq!(effects_once(&shops), 390 * 5);
    let after = epochs(&client).await;
    assert!(before.iter().zip(&after).all(|(b, a)| a >= b), "an epoch went down");
    assert!(before.iter().zip(&after).any(|(b, a)| a > b), "no partition changed hands");

    // 7. What the database holds keeps the journal's invariants.
    check_invariants(&client, 390).await;

    // 8. A server outside the cluster is refused the cluster's database, saying why.
    let stderr = refused(&dir.path().join("outsider"), &["--store", &url]).await;
    assert!(stderr.contains("used by a cluster (live nodes: a, c)"), "{stderr}");
    eprintln!("{}", cluster_status(&url));
    drop((a, c));
}
