//! `journal_append`: durable journal appends per second for the redb and PostgreSQL stores with
//! 1, 16 and 256 concurrent writers, each appending one event at a time to its own execution,
//! beside the raw rate of write + fsync of a small file on the same disk in the same run.
//!
//! The raw fsync rate is each figure's baseline, so `cargo xtask bench` shows appends per fsync
//! as the speed-up: below 1 a single writer pays for more than one fsync per append (redb and
//! PostgreSQL both sync more than once per commit), above 1 group commit shares them.
//!
//! Everything lives in a temporary directory under `BATON_BENCH_DIR`, else the system's
//! temporary directory: point it at the disk you care about (a tmpfs makes fsync free). The
//! PostgreSQL cluster is a throwaway one started there (or the server `BATON_TEST_PG_URL`
//! names), with `fsync` and `synchronous_commit` on.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use baton_benches::report_figure;
use baton_core::{Event, ExecutionId, Store};
use baton_store::postgres::{Config, PostgresStore};
use baton_store::testing::{PgCluster, load_event, load_execution};
use baton_store::{CommitStats, RedbStore};
use criterion::measurement::WallTime;
use criterion::{BenchmarkGroup, BenchmarkId, Criterion, SamplingMode, Throughput, criterion_group, criterion_main};
use tokio::runtime::Runtime;

const WRITERS: [usize; 3] = [1, 16, 256];
const BENCH: &str = "journal_append";

fn journal_append(c: &mut Criterion) {
    let parent = std::env::var_os("BATON_BENCH_DIR").map_or_else(std::env::temp_dir, PathBuf::from);
    let dir = tempfile::Builder::new().prefix("baton-journal-bench-").tempdir_in(&parent).expect("a bench directory");
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");

    let fsyncs_per_second = fsync_rate(dir.path(), Duration::from_secs(2));
    report_figure(BENCH, "write + fsync of 512 B (the baseline)", fsyncs_per_second, "1/s", None, None);

    let mut group = c.benchmark_group(BENCH);
    // Every sample the same length, about 300 ms: criterion's default grows samples from a
    // tenth of that, and a 30 ms sample measured the start and end of 256 writers and whether
    // a fold or a new WAL segment fell into it, not the rate they sustain.
    group
        .sample_size(10)
        .sampling_mode(SamplingMode::Flat)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3));
    // One store at a time: each folds its journal in the background after a run, which would
    // take CPU from the other's measurement. Dropping the redb store waits for its folds.
    let redb = runtime.block_on(RedbStore::open(&dir.path().join("redb"))).expect("redb store opens");
    for writers in WRITERS {
        let stats = || redb.commit_stats();
        measure(&mut group, &runtime, "redb", &redb, writers, fsyncs_per_second, stats);
    }
    drop(redb);
    let cluster = PgCluster::start_in(dir.path());
    let postgres = runtime
        .block_on(async { PostgresStore::connect(&Config::new(cluster.create_database().await)).await })
        .expect("postgres store connects");
    for writers in WRITERS {
        let stats = || postgres.commit_stats();
        measure(&mut group, &runtime, "postgres", &postgres, writers, fsyncs_per_second, stats);
    }
    group.finish();
    drop(postgres);
    drop(cluster);
}

/// Benchmarks `writers` tasks appending to their own executions; one criterion iteration is
/// one append by every writer. Reports the median rate and the mean batch size.
fn measure<S: Store + Clone>(
    group: &mut BenchmarkGroup<'_, WallTime>,
    runtime: &Runtime,
    store_name: &str,
    store: &S,
    writers: usize,
    fsyncs_per_second: f64,
    stats: impl Fn() -> CommitStats,
) {
    let executions: Vec<ExecutionId> = runtime.block_on(async {
        let mut ids = Vec::with_capacity(writers);
        for _ in 0..writers {
            let created = store.create_execution(load_execution(), None).await.expect("creates");
            ids.push(created.execution.id);
        }
        ids
    });
    // The next sequence number of each writer's journal, kept across iterations.
    let next: Arc<Vec<AtomicU64>> = Arc::new((0..writers).map(|_| AtomicU64::new(1)).collect());
    let mut rates = Vec::new();
    let before = stats();
    group.throughput(Throughput::Elements(writers as u64));
    group.bench_function(BenchmarkId::new(format!("baton/{store_name}"), format!("{writers}_writers")), |b| {
        b.iter_custom(|iterations| {
            let started = Instant::now();
            runtime.block_on(async {
                let mut tasks = Vec::with_capacity(writers);
                for (writer, id) in executions.iter().copied().enumerate() {
                    let (store, next) = (store.clone(), Arc::clone(&next));
                    tasks.push(tokio::spawn(async move {
                        // Cloned rather than built each time (240 ns rather than 370 ns, its
                        // output being a JSON map): this measures the store, not the event.
                        let template = load_event(id, 0);
                        let mut sequence = next[writer].load(Ordering::Relaxed);
                        for _ in 0..iterations {
                            store.append(vec![Event { sequence, ..template.clone() }]).await.expect("durable append");
                            sequence += 1;
                        }
                        next[writer].store(sequence, Ordering::Relaxed);
                    }));
                }
                for task in tasks {
                    task.await.expect("writer task");
                }
            });
            let elapsed = started.elapsed();
            rates.push((writers as u64 * iterations) as f64 / elapsed.as_secs_f64());
            elapsed
        })
    });
    let after = stats();
    rates.sort_by(f64::total_cmp);
    if let Some(median) = rates.get(rates.len() / 2) {
        let name = format!("{store_name}, {}: durable appends per second", plural(writers, "writer"));
        // The target: group commit makes 256 writers at least 20 times the fsync rate.
        let target = (writers == 256).then_some(">= 20x");
        report_figure(BENCH, &name, *median, "1/s", Some(fsyncs_per_second), target);
    }
    let transactions = after.transactions.saturating_sub(before.transactions);
    if transactions > 0 {
        let per_commit = after.writes.saturating_sub(before.writes) as f64 / transactions as f64;
        let name = format!("{store_name}, {}: appends per commit", plural(writers, "writer"));
        report_figure(BENCH, &name, per_commit, "", None, None);
    }
}

fn plural(count: usize, noun: &str) -> String {
    if count == 1 { format!("1 {noun}") } else { format!("{count} {noun}s") }
}

/// Appends 512 bytes to a file and fsyncs it, for `duration`; returns the rate per second.
fn fsync_rate(dir: &Path, duration: Duration) -> f64 {
    let path = dir.join("fsync-probe");
    let mut file = std::fs::File::options().create(true).append(true).open(&path).expect("probe file");
    let block = [0x5a_u8; 512];
    let started = Instant::now();
    let mut count = 0_u64;
    while started.elapsed() < duration {
        file.write_all(&block).expect("write");
        file.sync_all().expect("fsync");
        count += 1;
    }
    let rate = count as f64 / started.elapsed().as_secs_f64();
    drop(file);
    let _ = std::fs::remove_file(path);
    rate
}

criterion_group!(benches, journal_append);
criterion_main!(benches);
