//! `cluster_scaling`: a cluster of 1, 2 and 3 `baton serve --cluster` nodes on this machine
//! (this bench run again as each, see `baton_benches::node`), each on a fresh database of one
//! throwaway PostgreSQL server. The 3-step `order` workflow over the example HTTP services
//! (registered with the first node; the others know them from the registry they share) is
//! driven by 64 gRPC clients in closed loops, client `i` on node `i mod n`, each execution
//! watched to its end on the node that started it.
//!
//! Pinning: PostgreSQL runs on the upper half of the cores (`taskset`, inherited by every
//! backend), the nodes on the lower half, each node on its own share of it when there are
//! enough cores and sharing them round-robin when not. On 2 cores that is PostgreSQL on core 1
//! and every node on core 0; the bench's clients and the example services are not pinned.
//!
//! Figures per node count: executions per second, and from `pg_stat_statements` (loaded in
//! the throwaway server) the statements and rows per execution, with the WAL written per
//! execution from the WAL position; 2 and 3 nodes show the 1-node figure as their baseline,
//! and what PostgreSQL does per execution must not grow with the node count (target: at most
//! about 10% more). Beside them, to tell why a figure moves: the same less what the nodes make
//! PostgreSQL do when idle (leases, ownership, registry and worker-task polls: measured for 5 s
//! after each run, scaled to the run's length), and the journal's group commits per execution
//! (each one statement that inserts the chunks; they share fewer executions when the load is
//! spread over more nodes). The statements with most calls are printed on stderr.

#![allow(clippy::print_stderr, reason = "a bench reports its progress on stderr")]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use baton_benches::node::{NodeProcess, serve_if_node};
use baton_benches::{closed_loop, report_figure};
use baton_grpc::pb;
use baton_store::testing::{PgCluster, PgOptions, sql_client};
use tonic::transport::Channel;

// Only the shop and one execution as a client sees it are used here.
#[allow(dead_code)]
mod e2e;

const BENCH: &str = "cluster_scaling";
const CLIENTS: usize = 64;
const PARTITIONS: i64 = 64;
const MEASURED_ENV: &str = "BATON_BENCH_SCALING_MEASURED";
/// How long the idle nodes' own statements are counted.
const IDLE: Duration = Duration::from_secs(5);
/// The statements of the database the bench uses, less the bench's own reads of the figures.
const OURS: &str = "dbid = (SELECT oid FROM pg_database WHERE datname = current_database())
                    AND query NOT LIKE '%pg_stat_statements%' AND query NOT LIKE '%pg_current_wal_lsn%'";

/// What PostgreSQL did in a run, from `pg_stat_statements` and the WAL position.
#[derive(Debug, Clone, Copy)]
struct Work {
    statements: f64,
    rows: f64,
    wal_bytes: f64,
    /// The journal's group commits: calls of the one statement that inserts its chunks.
    commits: f64,
}

fn main() {
    if serve_if_node() {
        return;
    }
    let measured: usize =
        std::env::var(MEASURED_ENV).map_or(3_000, |v| v.parse().expect("BATON_BENCH_SCALING_MEASURED: a count"));
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    let (pg_cpus, node_cpus) = layout(cores);
    eprintln!("{BENCH}: {cores} cores: PostgreSQL on {pg_cpus}, nodes on {node_cpus:?}");
    let options = PgOptions { stat_statements: true, cpus: Some(pg_cpus) };
    let pg = PgCluster::start_with(&std::env::temp_dir(), &options);
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("a runtime");
    let dir = tempfile::tempdir().expect("a temp dir");
    let mut single: Option<(f64, Work)> = None;
    for nodes in 1..=3 {
        let (rate, work, background) = rt.block_on(run(&pg, dir.path(), nodes, &node_cpus, measured));
        let name = format!("order workflow, {nodes} node(s), {CLIENTS} clients round-robin");
        let per = |value: f64| value / measured as f64;
        let target = (nodes > 1).then_some(">= 0.9x");
        report_figure(BENCH, &format!("{name}: executions per second"), rate, "1/s", single.map(|(r, _)| r), None);
        let base = single.map(|(_, w)| w);
        let figures = [
            ("PostgreSQL statements per execution", work.statements, base.map(|w| w.statements)),
            ("PostgreSQL rows per execution", work.rows, base.map(|w| w.rows)),
            ("PostgreSQL WAL bytes per execution", work.wal_bytes, base.map(|w| w.wal_bytes)),
        ];
        for (what, value, base) in figures {
            report_figure(BENCH, &format!("{name}: {what}"), per(value), "", base.map(per), target);
        }
        let less = |what: &str, value: f64, idle: f64| {
            report_figure(
                BENCH,
                &format!("{name}: {what}, less the idle nodes' own"),
                per(value - idle),
                "",
                None,
                None,
            );
        };
        less("PostgreSQL statements per execution", work.statements, background.statements);
        less("PostgreSQL rows per execution", work.rows, background.rows);
        less("PostgreSQL WAL bytes per execution", work.wal_bytes, background.wal_bytes);
        let commits = per(work.commits - background.commits);
        report_figure(BENCH, &format!("{name}: journal group commits per execution"), commits, "", None, None);
        if single.is_none() {
            single = Some((rate, work));
        }
    }
}

/// The CPUs of PostgreSQL and of each node, as `taskset -c` lists: PostgreSQL the upper half,
/// the nodes the lower half.
fn layout(cores: usize) -> (String, Vec<String>) {
    if cores < 2 {
        return ("0".to_owned(), vec!["0".to_owned()]);
    }
    let half = cores / 2;
    let pg = if cores - half == 1 { format!("{half}") } else { format!("{half}-{}", cores - 1) };
    (pg, (0..half).map(|c| c.to_string()).collect())
}

/// The CPUs of node `index` of `nodes`: its own share of `cpus` when there are enough, else
/// one of them round-robin.
fn node_cpus(cpus: &[String], index: usize, nodes: usize) -> String {
    if cpus.len() < nodes {
        return cpus[index % cpus.len()].clone();
    }
    let share = cpus.len() / nodes;
    let end = if index + 1 == nodes { cpus.len() } else { (index + 1) * share };
    cpus[index * share..end].join(",")
}

/// `nodes` nodes on a fresh database, `measured` executions after a tenth as many to warm up:
/// executions per second, what PostgreSQL did, and what the idle nodes make it do in as long.
async fn run(
    pg: &PgCluster,
    dir: &std::path::Path,
    nodes: usize,
    cpus: &[String],
    measured: usize,
) -> (f64, Work, Work) {
    let url = pg.create_database().await;
    let sql = sql_client(&url).await;
    sql.batch_execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements").await.expect("pg_stat_statements loads");
    let processes: Vec<NodeProcess> = (0..nodes)
        .map(|i| {
            let name = format!("n{nodes}-{i}");
            let data = dir.join(&name);
            let data = data.to_str().expect("a UTF-8 path");
            let args =
                ["--store", &url, "--cluster", "--node-id", &name, "--data-dir", data, "--rate-limit", "1000000"];
            NodeProcess::start(&args, Some(&node_cpus(cpus, i, nodes)), &dir.join(format!("{name}.log")))
        })
        .collect();
    balanced(&sql, nodes).await;
    let (first, services) = e2e::shop(processes[0].grpc.clone()).await;
    let mut channels = vec![first];
    for node in &processes[1..] {
        channels
            .push(Channel::from_shared(node.grpc.clone()).expect("a URL").connect().await.expect("the node answers"));
    }
    for channel in &channels {
        wait_services(channel, services.len()).await;
    }

    drive(&channels, measured / 10).await;
    sql.batch_execute("SELECT pg_stat_statements_reset()").await.expect("the statistics reset");
    let from = wal_position(&sql).await;
    let begun = Instant::now();
    drive(&channels, measured).await;
    let elapsed = begun.elapsed();
    let wal_bytes = wal_position(&sql).await - from;
    let work = counted(&sql, wal_bytes).await;
    let rate = measured as f64 / elapsed.as_secs_f64();
    eprintln!(
        "{BENCH}: {nodes} node(s): {rate:.0} executions/s; per execution {:.1} statements, {:.1} rows, {:.0} WAL bytes",
        work.statements / measured as f64,
        work.rows / measured as f64,
        work.wal_bytes / measured as f64
    );
    eprintln!("  {:.3} commits per execution", work.commits / measured as f64);
    let top = sql
        .query(
            &format!(
                "SELECT calls, rows, left(regexp_replace(query, '\\s+', ' ', 'g'), 110) FROM pg_stat_statements
                 WHERE {OURS} ORDER BY calls DESC LIMIT 12"
            ),
            &[],
        )
        .await
        .expect("the statements read");
    for row in &top {
        let (calls, rows, query): (i64, i64, String) = (row.get(0), row.get(1), row.get(2));
        eprintln!(
            "  {:>8.3} calls {:>8.3} rows per execution: {query}",
            calls as f64 / measured as f64,
            rows as f64 / measured as f64
        );
    }

    sql.batch_execute("SELECT pg_stat_statements_reset()").await.expect("the statistics reset");
    let from = wal_position(&sql).await;
    tokio::time::sleep(IDLE).await;
    let idle = counted(&sql, wal_position(&sql).await - from).await;
    drop((processes, services));
    // The idle nodes' own work over as long as the run took.
    let scale = elapsed.as_secs_f64() / IDLE.as_secs_f64();
    let background = Work {
        statements: idle.statements * scale,
        rows: idle.rows * scale,
        wal_bytes: idle.wal_bytes * scale,
        commits: idle.commits * scale,
    };
    (rate, work, background)
}

/// What `pg_stat_statements` counted since its reset, and `wal_bytes`.
async fn counted(sql: &tokio_postgres::Client, wal_bytes: f64) -> Work {
    let row = sql
        .query_one(
            &format!(
                "SELECT coalesce(sum(calls), 0)::FLOAT8, coalesce(sum(rows), 0)::FLOAT8,
                        coalesce(sum(calls) FILTER (WHERE query LIKE '%INSERT INTO baton_journal_chunks%'), 0)::FLOAT8
                 FROM pg_stat_statements WHERE {OURS}"
            ),
            &[],
        )
        .await
        .expect("the statistics read");
    Work { statements: row.get(0), rows: row.get(1), commits: row.get(2), wal_bytes }
}

/// The WAL position in bytes.
async fn wal_position(sql: &tokio_postgres::Client) -> f64 {
    let row = sql
        .query_one("SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0')::FLOAT8", &[])
        .await
        .expect("the WAL position reads");
    row.get(0)
}

/// Waits until each of the `nodes` live nodes owns about its share of the partitions.
async fn balanced(sql: &tokio_postgres::Client, nodes: usize) {
    let deadline = Instant::now() + Duration::from_secs(300);
    let even = PARTITIONS / nodes as i64;
    loop {
        let rows = sql
            .query(
                "SELECT count(p.id) FROM baton_nodes n LEFT JOIN baton_partitions p ON p.owner = n.id
                 WHERE n.lease_expires_at > now() GROUP BY n.id",
                &[],
            )
            .await
            .expect("the shares read");
        let shares: Vec<i64> = rows.iter().map(|row| row.get(0)).collect();
        if shares.len() == nodes && shares.iter().all(|n| *n >= even - 1) {
            return;
        }
        assert!(Instant::now() < deadline, "the nodes did not share the partitions: {shares:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Waits until the node behind `channel` knows `count` services.
async fn wait_services(channel: &Channel, count: usize) {
    let mut registry = pb::registry_service_client::RegistryServiceClient::new(channel.clone());
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let listed = registry
            .list_services(pb::ListServicesRequest::default())
            .await
            .map(|r| r.into_inner().services.len())
            .unwrap_or(0);
        if listed >= count {
            return;
        }
        assert!(Instant::now() < deadline, "{listed} of {count} services known after 60 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `executions` executions from [`CLIENTS`] closed-loop clients, client `i` on `channels[i mod n]`.
async fn drive(channels: &[Channel], executions: usize) {
    let next = Arc::new(AtomicUsize::new(0));
    closed_loop(CLIENTS, executions, || {
        let channel = channels[next.fetch_add(1, Ordering::Relaxed) % channels.len()].clone();
        let client = pb::execution_service_client::ExecutionServiceClient::new(channel);
        move |n| {
            let mut client = client.clone();
            async move { e2e::one(&mut client, n).await }
        }
    })
    .await;
}
