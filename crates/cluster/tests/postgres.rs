//! Membership against a throwaway PostgreSQL cluster (or the server `BATON_TEST_PG_URL`
//! names), one database per case: claiming and balancing, the fixed partition count, a dead
//! node's partitions claimed after its lease, a graceful leave, and a node cut off from the
//! database fencing itself before its lease ends. Nodes whose death a case needs run on a
//! runtime of their own, shut down without a word to the database, as a `kill -9` would.

use std::collections::BTreeSet;
use std::time::Duration;

use baton_cluster::{Config, Error, Member, status};
use baton_store::postgres::{Config as StoreConfig, PostgresStore};
use baton_store::testing::{BlackholeProxy, PgCluster, eventually, sql_client};
use tokio::time::Instant;

#[test]
fn membership_on_postgres() {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let cluster = PgCluster::start();
    runtime.block_on(async {
        a_lone_node_owns_every_partition(&cluster).await;
        the_partition_count_and_node_ids_are_checked(&cluster).await;
        a_joining_node_takes_its_share_gradually(&cluster).await;
        a_graceful_leave_hands_partitions_over_at_once(&cluster).await;
        a_dead_nodes_partitions_are_claimed_after_its_lease(&cluster).await;
        a_node_cut_off_from_the_database_fences_itself_before_its_lease_ends(&cluster).await;
    });
}

/// A database with the store's schema.
async fn database(cluster: &PgCluster) -> String {
    let url = cluster.create_database().await;
    drop(PostgresStore::connect(&StoreConfig::new(url.clone())).await.unwrap());
    url
}

fn config(url: &str, node: &str, ttl_ms: u64) -> Config {
    let mut config = Config::new(url, node, format!("{node}.internal:7001"));
    config.lease_ttl = Duration::from_millis(ttl_ms);
    config.heartbeat = Duration::from_millis(ttl_ms / 10);
    config.safety_margin = Duration::from_millis(ttl_ms / 5);
    config
}

/// Owner and epoch of every partition, as the database holds them.
async fn partitions(client: &tokio_postgres::Client) -> Vec<(Option<String>, i64)> {
    let rows = client.query("SELECT owner, epoch FROM baton_partitions ORDER BY id", &[]).await.unwrap();
    rows.iter().map(|row| (row.get(0), row.get(1))).collect()
}

fn owned(member: &Member) -> BTreeSet<u32> {
    member.ownership().owned().keys().copied().collect()
}

async fn a_lone_node_owns_every_partition(cluster: &PgCluster) {
    let url = database(cluster).await;
    let a = Member::join(config(&url, "a", 5_000)).await.unwrap();
    eventually("a owns all 64 partitions", Duration::from_secs(10), async || (a.ownership().len() == 64).then_some(()))
        .await;
    let ownership = a.ownership();
    assert_eq!(ownership.partitions(), 64);
    let client = sql_client(&url).await;
    let stored = partitions(&client).await;
    assert_eq!(stored.len(), 64);
    for (partition, (owner, epoch)) in stored.iter().enumerate() {
        assert_eq!(owner.as_deref(), Some("a"));
        assert_eq!(ownership.epoch(u32::try_from(partition).unwrap()), Some(*epoch));
    }
    let id = baton_core::ExecutionId::generate();
    assert_eq!(ownership.of(id), Some((id.partition(64), stored[id.partition(64) as usize].1)));
    let status = status(&url).await.unwrap();
    assert_eq!((status.partitions, status.unowned, status.nodes.len()), (Some(64), 0, 1), "{status:?}");
    assert_eq!(status.nodes[0].partitions, 64);
    assert!(status.nodes[0].lease_remaining_ms > 0, "{status:?}");
    a.leave().await.unwrap();
}

async fn the_partition_count_and_node_ids_are_checked(cluster: &PgCluster) {
    let url = database(cluster).await;
    let mut sixteen = config(&url, "a", 5_000);
    sixteen.partitions = 16;
    let a = Member::join(sixteen).await.unwrap();
    let err = Member::join(config(&url, "b", 5_000)).await.unwrap_err();
    assert_eq!(err, Error::PartitionCount { existing: 16, configured: 64 });
    assert!(err.to_string().contains("fixed when it was created"), "{err}");
    let mut same_id = config(&url, "a", 5_000);
    same_id.partitions = 16;
    same_id.address = "elsewhere:7001".to_owned();
    let err = Member::join(same_id).await.unwrap_err();
    assert_eq!(err, Error::NodeInUse { node: "a".to_owned(), address: "a.internal:7001".to_owned() });
    for (field, change) in [
        ("partitions", (|c: &mut Config| c.partitions = 0) as fn(&mut Config)),
        ("partitions", |c| c.partitions = 5000),
        ("node_id", |c| c.node_id = String::new()),
        ("lease_ttl", |c| c.heartbeat = c.lease_ttl),
        ("url", |c| c.url = "host=/nowhere port=notaport".to_owned()),
    ] {
        let mut bad = config(&url, "c", 5_000);
        change(&mut bad);
        let err = Member::join(bad).await.unwrap_err();
        assert!(matches!(&err, Error::Invalid { field: f, .. } if *f == field), "{field}: {err}");
    }
    assert_eq!(status(&url).await.unwrap().partitions, Some(16));
    a.leave().await.unwrap();
}

async fn a_joining_node_takes_its_share_gradually(cluster: &PgCluster) {
    let url = database(cluster).await;
    let a = Member::join(config(&url, "a", 3_000)).await.unwrap();
    eventually("a owns all", Duration::from_secs(10), async || (a.ownership().len() == 64).then_some(())).await;
    let client = sql_client(&url).await;
    let before = partitions(&client).await;
    let mut b = Member::join(config(&url, "b", 3_000)).await.unwrap();
    let mut steps = 0;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (in_a, in_b) = (owned(&a), owned(&b));
        assert!(in_a.is_disjoint(&in_b), "a partition owned by both: {in_a:?} {in_b:?}");
        if in_b.len() == 32 && in_a.len() == 32 {
            break;
        }
        assert!(Instant::now() < deadline, "not balanced: a {} b {}", in_a.len(), in_b.len());
        if tokio::time::timeout(Duration::from_millis(50), b.changed()).await.is_ok() {
            steps += 1;
        }
    }
    assert!(steps >= 8, "b took its 32 partitions in {steps} steps, not gradually");
    let after = partitions(&client).await;
    for (partition, ((owner, epoch), (_, old))) in after.iter().zip(&before).enumerate() {
        // A moved partition was released and claimed: two raises of its epoch.
        let expected = if owner.as_deref() == Some("b") { old + 2 } else { *old };
        assert_eq!(*epoch, expected, "partition {partition}");
    }
    let status = status(&url).await.unwrap();
    let shares: Vec<(&str, u32)> = status.nodes.iter().map(|n| (n.id.as_str(), n.partitions)).collect();
    assert_eq!(shares, [("a", 32), ("b", 32)]);
    a.leave().await.unwrap();
    b.leave().await.unwrap();
}

async fn a_graceful_leave_hands_partitions_over_at_once(cluster: &PgCluster) {
    let url = database(cluster).await;
    // A lease far longer than the wait below: only the hand-over can explain the claim.
    let mut long = config(&url, "a", 60_000);
    long.heartbeat = Duration::from_millis(100);
    let a = Member::join(long.clone()).await.unwrap();
    let b = Member::join(Config { node_id: "b".to_owned(), address: "b:1".to_owned(), ..long }).await.unwrap();
    eventually("balanced", Duration::from_secs(30), async || (owned(&b).len() == 32).then_some(())).await;
    a.leave().await.unwrap();
    assert!(a.ownership().is_empty());
    eventually("b owns all after a left", Duration::from_secs(10), async || (owned(&b).len() == 64).then_some(()))
        .await;
    let status = status(&url).await.unwrap();
    assert_eq!(status.nodes.iter().map(|n| n.id.as_str()).collect::<Vec<_>>(), ["b"]);
    b.leave().await.unwrap();
}

/// A node on a runtime of its own, to be killed without a word to the database.
struct Isolated {
    runtime: tokio::runtime::Runtime,
    member: Member,
}

impl Isolated {
    fn join(config: Config) -> Self {
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
            let member = runtime.block_on(Member::join(config)).unwrap();
            Self { runtime, member }
        })
        .join()
        .unwrap()
    }

    fn kill(self) {
        self.runtime.shutdown_background();
    }
}

async fn a_dead_nodes_partitions_are_claimed_after_its_lease(cluster: &PgCluster) {
    let url = database(cluster).await;
    let a = Isolated::join(config(&url, "a", 2_000));
    let b = Member::join(config(&url, "b", 2_000)).await.unwrap();
    eventually("balanced", Duration::from_secs(30), async || {
        (owned(&a.member).len() == 32 && owned(&b).len() == 32).then_some(())
    })
    .await;
    let client = sql_client(&url).await;
    let before = partitions(&client).await;
    a.kill();
    let killed = Instant::now();
    let lease_left = async || {
        let row = client.query_one("SELECT lease_expires_at > now() FROM baton_nodes WHERE id = 'a'", &[]).await;
        row.unwrap().get::<_, bool>(0)
    };
    eventually("b claims a's partitions", Duration::from_secs(10), async || {
        // Nothing of a's is claimed while its lease lasts at the database.
        let taken = owned(&b).len() > 32;
        if taken {
            assert!(!lease_left().await, "b claimed a partition of a's while a's lease lasted");
        }
        (owned(&b).len() == 64).then_some(())
    })
    .await;
    assert!(killed.elapsed() < Duration::from_secs(2 + 5), "took {:?}", killed.elapsed());
    for ((owner, epoch), (old_owner, old)) in partitions(&client).await.iter().zip(&before) {
        assert_eq!(owner.as_deref(), Some("b"));
        assert!(epoch > old || old_owner.as_deref() == Some("b"));
        assert!(epoch >= old, "an epoch went down");
    }
    // A restart of a under the same id and address is its own: welcome, with fresh epochs.
    let again = Member::join(config(&url, "a", 2_000)).await.unwrap();
    eventually("rebalanced", Duration::from_secs(30), async || (owned(&again).len() == 32).then_some(())).await;
    again.leave().await.unwrap();
    b.leave().await.unwrap();
}

async fn a_node_cut_off_from_the_database_fences_itself_before_its_lease_ends(cluster: &PgCluster) {
    let url = database(cluster).await;
    let proxy = BlackholeProxy::start(&url).await;
    let a = Member::join(Config { url: proxy.url.clone(), ..config(&url, "a", 3_000) }).await.unwrap();
    let b = Member::join(config(&url, "b", 3_000)).await.unwrap();
    eventually("balanced", Duration::from_secs(30), async || {
        (owned(&a).len() == 32 && owned(&b).len() == 32).then_some(())
    })
    .await;
    let client = sql_client(&url).await;
    let before = partitions(&client).await;
    proxy.cut();
    let lease_left = async || {
        let row = client.query_one("SELECT lease_expires_at > now() FROM baton_nodes WHERE id = 'a'", &[]).await;
        row.unwrap().get::<_, bool>(0)
    };
    // Polled often, so a fence late by more than the poll would find the lease over.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let fenced = a.ownership().is_empty();
        let lasts = lease_left().await;
        if fenced {
            assert!(lasts, "a fenced itself only after its lease ended at the database");
            break;
        }
        assert!(lasts, "a's lease ended at the database while a still held partitions");
        assert!(Instant::now() < deadline, "a never fenced itself");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    eventually("b takes a's partitions", Duration::from_secs(10), async || (owned(&b).len() == 64).then_some(())).await;
    assert!(a.ownership().is_empty(), "a cut off node claims nothing");
    proxy.restore();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (in_a, in_b) = (owned(&a), owned(&b));
        assert!(in_a.is_disjoint(&in_b), "a partition owned by both: {in_a:?} {in_b:?}");
        if in_a.len() == 32 && in_b.len() == 32 {
            break;
        }
        assert!(Instant::now() < deadline, "a did not rejoin: a {} b {}", in_a.len(), in_b.len());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    for ((owner, epoch), (_, old)) in partitions(&client).await.iter().zip(&before) {
        assert!(epoch > old || owner.as_deref() == Some("b"), "a holds a partition under an epoch it held before");
    }
    let status = status(&url).await.unwrap();
    let a_status = status.nodes.iter().find(|n| n.id == "a").unwrap();
    assert!(a_status.incarnation >= 2, "a rejoined as a new incarnation: {status:?}");
    a.leave().await.unwrap();
    b.leave().await.unwrap();
}
