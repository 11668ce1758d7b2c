//! Drives a store with concurrent journal appenders, for profiling the group commit path:
//! `cargo run --release -p baton-store --example append_load -- redb 256 5` (store, writers,
//! seconds). With `update` as a fourth argument every append is followed by an
//! `update_execution`, as the workflow engine does. For PostgreSQL, `APPEND_CONNECTIONS` sets
//! the journal's append connections, and `FOLD_EVENTS` and `FOLD_BYTES` how many events and
//! bytes it keeps in memory before folding them. `WORKERS` sets the runtime's workers: by
//! default 1 for PostgreSQL, which leaves the server a core, and 2 for redb, as
//! `cargo xtask bench journal_append` runs them. Besides the rate, it prints the machine's CPU
//! time per append (a steadier figure than the rate on a shared host), the share of time the
//! hypervisor stole and, for PostgreSQL, the WAL written per append.
#![allow(clippy::print_stderr, reason = "a load generator reports on stderr")]

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use baton_core::{Event, ExecutionState, ExecutionUpdate, Store, Timestamp};
use baton_store::testing::{load_event, load_execution};
use baton_store::{AnyStore, RedbStore};

/// The allocator of the `baton` binary and the benches, so this measures what they do.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let kind = args.get(1).map_or("redb", String::as_str).to_owned();
    let writers: usize = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(256);
    let seconds: u64 = args.get(3).and_then(|a| a.parse().ok()).unwrap_or(5);
    let update = args.get(4).is_some_and(|a| a == "update");
    let default_workers = if kind == "redb" { 2 } else { 1 };
    let workers = std::env::var("WORKERS").ok().and_then(|w| w.parse().ok()).unwrap_or(default_workers);
    let runtime =
        tokio::runtime::Builder::new_multi_thread().worker_threads(workers).enable_all().build().expect("runtime");
    let dir = tempfile::tempdir_in(std::env::var_os("BATON_BENCH_DIR").unwrap_or_else(|| "/tmp".into())).expect("dir");
    let mut _cluster = None;
    let mut sql: Option<tokio_postgres::Client> = None;
    runtime.block_on(async {
        let store = match kind.as_str() {
            "redb" => AnyStore::Redb(RedbStore::open(dir.path()).await.expect("opens")),
            _ => {
                let cluster = baton_store::testing::PgCluster::start_in(dir.path());
                let url = cluster.create_database().await;
                sql = Some(baton_store::testing::sql_client(&url).await);
                _cluster = Some(cluster);
                let mut config = baton_store::postgres::Config::new(url);
                if let Some(events) = std::env::var("FOLD_EVENTS").ok().and_then(|c| c.parse().ok()) {
                    config.fold_events = events;
                }
                if let Some(bytes) = std::env::var("FOLD_BYTES").ok().and_then(|c| c.parse().ok()) {
                    config.fold_bytes = bytes;
                }
                if let Some(connections) = std::env::var("APPEND_CONNECTIONS").ok().and_then(|c| c.parse().ok()) {
                    config.append_connections = connections;
                }
                AnyStore::Postgres(baton_store::PostgresStore::connect(&config).await.expect("connects"))
            }
        };
        let mut ids = Vec::new();
        for _ in 0..writers {
            ids.push(store.create_execution(load_execution(), None).await.expect("creates").execution.id);
        }
        let done = Arc::new(AtomicU64::new(0));
        let deadline = Instant::now() + Duration::from_secs(seconds);
        let started = Instant::now();
        let cpu_before = machine_cpu();
        let wal_before = match &sql {
            Some(sql) => wal_position(sql).await,
            None => 0,
        };
        let mut tasks = Vec::new();
        for id in ids {
            let (store, done) = (store.clone(), Arc::clone(&done));
            tasks.push(tokio::spawn(async move {
                // Cloned rather than built each time, as `cargo xtask bench journal_append` does.
                let template = load_event(id, 0);
                let mut sequence = 1;
                while Instant::now() < deadline {
                    store.append(vec![Event { sequence, ..template.clone() }]).await.expect("appends");
                    if update {
                        let update = ExecutionUpdate {
                            id,
                            state: ExecutionState::Running,
                            output: None,
                            error: None,
                            tasks: Default::default(),
                            updated_at: Timestamp::from_timestamp(1_800_000_001, 0).expect("in range"),
                            problem: None,
                            parked: None,
                        };
                        store.update_execution(update).await.expect("updates");
                    }
                    sequence += 1;
                    done.fetch_add(1, Ordering::Relaxed);
                }
            }));
        }
        for task in tasks {
            task.await.expect("writer");
        }
        let appends = done.load(Ordering::Relaxed) as f64;
        let rate = appends / started.elapsed().as_secs_f64();
        if let Some((after, before)) = machine_cpu().zip(cpu_before) {
            // Clock ticks are 10 ms.
            let [busy, stolen, all] = [0, 1, 2].map(|at| (after[at] - before[at]) as f64);
            eprintln!(
                "machine busy {:.0}%, {:.0}% stolen, {:.2} µs of CPU per append",
                busy / all * 100.0,
                stolen / all * 100.0,
                busy * 10_000.0 / appends
            );
        }
        if let Some(sql) = &sql {
            let wal = wal_position(sql).await - wal_before;
            eprintln!("{:.0} bytes of WAL per append", wal as f64 / appends);
        }
        let stats = match &store {
            AnyStore::Redb(s) => s.commit_stats(),
            AnyStore::Postgres(s) => s.commit_stats(),
            AnyStore::Memory(_) => Default::default(),
        };
        eprintln!("{kind} {writers} writers: {rate:.0} appends/s, {stats:?}");
    });
}

/// Clock ticks of the whole machine from `/proc/stat` (Linux only): busy, stolen by the
/// hypervisor, and all. Busy leaves out stolen time, which a shared host's neighbours decide.
fn machine_cpu() -> Option<[u64; 3]> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let ticks: Vec<u64> = stat.lines().next()?.split_whitespace().skip(1).filter_map(|t| t.parse().ok()).collect();
    let all: u64 = ticks.iter().take(8).sum();
    // Idle, waiting for I/O, and stolen.
    let (idle, stolen) = (ticks.get(3)? + ticks.get(4)?, *ticks.get(7)?);
    Some([all - idle - stolen, stolen, all])
}

/// The server's WAL position in bytes.
async fn wal_position(sql: &tokio_postgres::Client) -> i64 {
    sql.query_one("SELECT (pg_current_wal_lsn() - '0/0')::bigint", &[]).await.map_or(0, |row| row.get(0))
}
