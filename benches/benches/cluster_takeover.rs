//! `cluster_takeover`: how fast a cluster takes over the work of a node killed with `kill -9`.
//! Three `baton serve --cluster` nodes (this bench run again as each, see
//! `baton_benches::node`) share a throwaway PostgreSQL database, with a 5 s lease
//! (`BATON_BENCH_TAKEOVER_LEASE` to change).
//!
//! - **Unfinished executions.** 10,000 executions (`BATON_BENCH_TAKEOVER`, a comma-separated
//!   list of counts: `10000,100000` adds the 100,000 case, which takes several minutes) are
//!   started on the node to be killed, so they fall in its partitions. Each waits on a durable
//!   timer (`wait: {until}`) planned to come due after the kill and before the others can
//!   claim the partitions: those waiting longer than the server's `park_after` (10 s) are
//!   parked in the database, the others are live in the node's memory, and both kinds are
//!   due when the takeover comes, so the survivors resume them at once. The node is then killed.
//!   Figures: time from the kill to every partition owned by a live node, to the first of the
//!   dead node's executions ended under its new owner (its timer step resumed and its last
//!   step run), to all of them, and the resume rate (executions per second from the first to
//!   the last).
//! - **No executions.** The node owning most partitions is killed and restarted 10 times
//!   (`BATON_BENCH_TAKEOVER_ROUNDS`): time from each kill to every partition owned again, p50
//!   and p99 (with 10 rounds, the largest). Target: the lease plus 2 s.
//!
//! The database is watched from the bench over SQL: `baton_partitions` joined with the live
//! leases of `baton_nodes` (what `baton cluster status` shows), and `baton_executions` by
//! partition.

#![allow(clippy::print_stderr, reason = "a bench reports its progress on stderr")]

use std::time::{Duration, Instant, SystemTime};

use baton_benches::node::{NodeProcess, serve_if_node};
use baton_benches::{closed_loop, quantile, report_figure};
use baton_grpc::pb;
use baton_store::testing::{PgCluster, sql_client};
use tonic::transport::Channel;

const BENCH: &str = "cluster_takeover";
const NODES: [&str; 3] = ["a", "b", "c"];
const PARTITIONS: i64 = 64;
const CLIENTS: usize = 64;
const COUNTS_ENV: &str = "BATON_BENCH_TAKEOVER";
const ROUNDS_ENV: &str = "BATON_BENCH_TAKEOVER_ROUNDS";
const LEASE_ENV: &str = "BATON_BENCH_TAKEOVER_LEASE";
/// How often the bench looks at the database while it waits for the takeover.
const POLL: Duration = Duration::from_millis(20);

/// A timer until the instant in the input, then a step that calls nothing.
const NAP: &str = "name: nap\nsteps:\n  - { id: nap, wait: { until: \"${ .input.at }\" } }\n  \
                   - { id: done, set: \"ok\", depends_on: [nap] }\noutput: \"${ .steps.done.output }\"\n";

fn main() {
    if serve_if_node() {
        return;
    }
    let counts: Vec<usize> = std::env::var(COUNTS_ENV).map_or(vec![10_000], |v| {
        v.split(',').map(|n| n.trim().parse().expect("BATON_BENCH_TAKEOVER: counts, comma-separated")).collect()
    });
    let rounds: usize =
        std::env::var(ROUNDS_ENV).map_or(10, |v| v.parse().expect("BATON_BENCH_TAKEOVER_ROUNDS: a count"));
    let lease: u64 = std::env::var(LEASE_ENV)
        .map_or(5, |v| v.trim_end_matches('s').parse().expect("BATON_BENCH_TAKEOVER_LEASE: whole seconds"));
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("a runtime");
    let pg = PgCluster::start();
    let dir = tempfile::tempdir().expect("a temp dir");
    rt.block_on(async {
        let url = pg.create_database().await;
        let mut cluster = Cluster::start(&url, dir.path(), lease).await;
        for count in counts {
            unfinished(&mut cluster, count).await;
        }
        idle_rounds(&mut cluster, rounds).await;
    });
}

/// The three nodes and a SQL connection to their database.
struct Cluster {
    nodes: Vec<(&'static str, NodeProcess)>,
    sql: tokio_postgres::Client,
    lease: Duration,
}

impl Cluster {
    async fn start(url: &str, dir: &std::path::Path, lease: u64) -> Self {
        let lease_arg = format!("{lease}s");
        let nodes = NODES
            .iter()
            .map(|name| {
                let data = dir.join(name);
                let data = data.to_str().expect("a UTF-8 path");
                let args = ["--store", url, "--cluster", "--node-id", name, "--lease-ttl", &lease_arg];
                let args: Vec<&str> = args.into_iter().chain(["--data-dir", data, "--rate-limit", "1000000"]).collect();
                (*name, NodeProcess::start(&args, None, &dir.join(format!("{name}.log"))))
            })
            .collect();
        let cluster = Self { nodes, sql: sql_client(url).await, lease: Duration::from_secs(lease) };
        cluster.balanced().await;
        cluster
    }

    /// Partitions owned by each node whose lease runs, by the database's clock.
    async fn shares(&self) -> Vec<(String, i64)> {
        let rows = self
            .sql
            .query(
                "SELECT n.id, count(p.id) FROM baton_nodes n LEFT JOIN baton_partitions p ON p.owner = n.id
                 WHERE n.lease_expires_at > now() GROUP BY n.id ORDER BY count(p.id) DESC, n.id",
                &[],
            )
            .await
            .expect("the shares read");
        rows.iter().map(|row| (row.get(0), row.get(1))).collect()
    }

    /// Partitions owned by live nodes other than `except`.
    async fn owned_by_others(&self, except: &str) -> i64 {
        self.sql
            .query_one(
                "SELECT count(*) FROM baton_partitions p JOIN baton_nodes n ON n.id = p.owner
                 WHERE n.lease_expires_at > now() AND n.id <> $1",
                &[&except],
            )
            .await
            .expect("the owners read")
            .get(0)
    }

    /// Waits until the three nodes own about a third of the partitions each.
    async fn balanced(&self) {
        let deadline = Instant::now() + Duration::from_secs(300);
        loop {
            let shares = self.shares().await;
            let even = PARTITIONS / NODES.len() as i64;
            if shares.len() == NODES.len() && shares.iter().all(|(_, n)| *n >= even - 1) {
                return;
            }
            assert!(Instant::now() < deadline, "the nodes did not share the partitions: {shares:?}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    fn node(&mut self, name: &str) -> &mut NodeProcess {
        &mut self.nodes.iter_mut().find(|(n, _)| *n == name).expect("a node of the cluster").1
    }

    /// Kills `victim` and waits until the others own every partition: the time that took.
    async fn kill_and_wait_owned(&mut self, victim: &str) -> Duration {
        self.node(victim).kill9();
        let killed = Instant::now();
        let deadline = killed + self.lease + Duration::from_secs(60);
        while self.owned_by_others(victim).await < PARTITIONS {
            assert!(Instant::now() < deadline, "{victim}'s partitions were not claimed: {:?}", self.shares().await);
            tokio::time::sleep(POLL).await;
        }
        killed.elapsed()
    }

    fn label(&self, what: &str) -> String {
        format!("3 nodes, lease {} s, {what}", self.lease.as_secs())
    }
}

/// The time from the kill of the node owning most partitions to every partition owned again,
/// `rounds` times, the node restarted between rounds.
async fn idle_rounds(cluster: &mut Cluster, rounds: usize) {
    let mut times = Vec::with_capacity(rounds);
    for round in 0..rounds {
        let shares = cluster.shares().await;
        let victim = NODES.iter().copied().find(|n| *n == shares[0].0).expect("a node of the bench owns most");
        let took = cluster.kill_and_wait_owned(victim).await;
        eprintln!("{BENCH}: round {round}: {victim} held {} partitions, owned again after {took:?}", shares[0].1);
        times.push(took);
        cluster.node(victim).restart();
    }
    times.sort_unstable();
    let name = cluster.label("no executions, kill -9 of the node owning most partitions");
    let target = format!("<= {} ms", (cluster.lease + Duration::from_secs(2)).as_millis());
    for (label, q, target) in [("p50", 0.5, None), ("p99", 0.99, Some(target.as_str()))] {
        let value = quantile(&times, q).as_secs_f64() * 1e3;
        report_figure(BENCH, &format!("{name}: to every partition owned again {label}"), value, "ms", None, target);
    }
}

/// Seconds since the epoch, as `wait: {until}` reads them.
fn epoch_seconds(at: SystemTime) -> f64 {
    at.duration_since(SystemTime::UNIX_EPOCH).expect("after 1970").as_secs_f64()
}

/// Starts `count` naps until `at` on `channel`, from [`CLIENTS`] clients; the time taken.
async fn start_naps(channel: &Channel, count: usize, at: f64) -> Duration {
    let (elapsed, _) = closed_loop(CLIENTS, count, || {
        let client = pb::execution_service_client::ExecutionServiceClient::new(channel.clone());
        move |_| {
            let mut client = client.clone();
            async move {
                let request = pb::StartExecutionRequest {
                    workflow: "nap".to_owned(),
                    version: None,
                    input_json: format!(r#"{{"at": {at}}}"#),
                    idempotency_key: None,
                };
                client.start_execution(request).await.expect("starts");
            }
        }
    })
    .await;
    elapsed
}

/// Executions of `partitions` by state class: (ended, completed).
async fn ended(sql: &tokio_postgres::Client, partitions: &[i32]) -> (i64, i64) {
    let row = sql
        .query_one(
            "SELECT count(*) FILTER (WHERE state IN ('completed', 'failed', 'cancelled')),
                    count(*) FILTER (WHERE state = 'completed')
             FROM baton_executions WHERE partition_id = ANY($1)",
            &[&partitions],
        )
        .await
        .expect("the executions count");
    (row.get(0), row.get(1))
}

/// `count` executions waiting in the partitions of the node that is killed: the takeover
/// and the resumption, then the node back.
async fn unfinished(cluster: &mut Cluster, count: usize) {
    let victim = NODES[0];
    let url = cluster.node(victim).grpc.clone();
    let channel = Channel::from_shared(url).expect("a URL").connect().await.expect("the node answers");
    let mut workflows = pb::workflow_service_client::WorkflowServiceClient::new(channel.clone());
    let source = NAP.to_owned();
    workflows
        .apply_definition(pb::ApplyDefinitionRequest { source, format: pb::DefinitionFormat::Yaml as i32 })
        .await
        .expect("the nap workflow applies");
    // The start rate, from naps already due (they end at once), plans the timer: due after
    // twice the time the starts should take.
    let warm = (count / 10).clamp(100, 1_000);
    let took = start_naps(&channel, warm, 0.0).await;
    let planned = took.mul_f64(2.0 * count as f64 / warm as f64) + Duration::from_secs(2);
    let due = SystemTime::now() + planned;
    let took = start_naps(&channel, count, epoch_seconds(due)).await;
    eprintln!("{BENCH}: {count} naps started on {victim} in {took:?}, due in {planned:?} from the start");
    // Killed half a lease before the timers are due: none has fired, and all are due by the
    // time the lease has run out.
    let kill_at = due - cluster.lease / 2;
    if let Ok(wait) = kill_at.duration_since(SystemTime::now()) {
        tokio::time::sleep(wait).await;
    } else {
        eprintln!("{BENCH}: the starts took longer than planned; some timers may have fired before the kill");
    }
    let partitions: Vec<i32> = cluster
        .sql
        .query("SELECT id FROM baton_partitions WHERE owner = $1", &[&victim])
        .await
        .expect("the partitions read")
        .iter()
        .map(|row| row.get(0))
        .collect();
    let total: i64 = cluster
        .sql
        .query_one("SELECT count(*) FROM baton_executions WHERE partition_id = ANY($1)", &[&partitions])
        .await
        .expect("the executions count")
        .get(0);
    let (ended_before, completed_before) = ended(&cluster.sql, &partitions).await;
    let waiting = total - ended_before;
    eprintln!("{BENCH}: killing {victim}, {} partitions, {waiting} unfinished executions in them", partitions.len());

    cluster.node(victim).kill9();
    let killed = Instant::now();
    let (mut owned, mut first) = (None, None);
    let deadline = killed + Duration::from_secs(1_800);
    let all = loop {
        if owned.is_none() && cluster.owned_by_others(victim).await == PARTITIONS {
            owned = Some(killed.elapsed());
        }
        let (now_ended, _) = ended(&cluster.sql, &partitions).await;
        let resumed = now_ended - ended_before;
        if resumed > 0 && first.is_none() {
            first = Some(killed.elapsed());
        }
        if resumed == waiting && owned.is_some() {
            break killed.elapsed();
        }
        assert!(Instant::now() < deadline, "{resumed} of {waiting} executions resumed after 30 minutes");
        tokio::time::sleep(if first.is_none() { POLL } else { Duration::from_millis(250) }).await;
    };
    let (_, completed) = ended(&cluster.sql, &partitions).await;
    assert_eq!(completed - completed_before, waiting, "every resumed execution completed");
    let (owned, first) = (owned.expect("owned"), first.unwrap_or(all));
    eprintln!("{BENCH}: owned again after {owned:?}, first resumed execution ended after {first:?}, all after {all:?}");

    let name = cluster.label(&format!("{count} executions waiting on a timer in the killed node's partitions"));
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let target = format!("<= {} ms", (cluster.lease + Duration::from_secs(2)).as_millis());
    let figures = [
        ("unfinished at the kill", waiting as f64, "", None),
        ("kill -9 to every partition owned again", ms(owned), "ms", Some(target.as_str())),
        ("kill -9 to the first resumed execution ended", ms(first), "ms", None),
        ("kill -9 to every resumed execution ended", ms(all), "ms", None),
    ];
    for (what, value, unit, target) in figures {
        report_figure(BENCH, &format!("{name}: {what}"), value, unit, None, target);
    }
    let rate = waiting as f64 / (all - first).as_secs_f64().max(1e-3);
    report_figure(BENCH, &format!("{name}: resume rate, first to last"), rate, "1/s", None, None);

    cluster.node(victim).restart();
    cluster.balanced().await;
}
