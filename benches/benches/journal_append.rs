//! `journal_append`: durable journal appends per second for the redb and PostgreSQL stores with
//! 1, 16 and 256 concurrent writers, each appending one event at a time to its own execution,
//! beside the raw rate of write + fsync of a small file on the same disk in the same run. The
//! writers append without pause from before criterion's warm-up to its last sample, so every
//! sample times the sustained rate of all of them at work (see `Writers`).
//!
//! The raw fsync rate is each figure's baseline, so `cargo xtask bench` shows appends per fsync
//! as the speed-up: below 1 a single writer pays for more than one fsync per append (redb and
//! PostgreSQL both sync more than once per commit), above 1 group commit shares them. It is
//! the median of three windows of 2 s with no store at work: before the first store, between
//! the two, and after the last. A single window once caught the host's disk stalled, at a third
//! of its usual rate, and every figure of that run read about three times its usual speed-up.
//!
//! Everything lives in a temporary directory under `BATON_BENCH_DIR`, else the system's
//! temporary directory: point it at the disk you care about (a tmpfs makes fsync free). The
//! PostgreSQL cluster is a throwaway one started there (or the server `BATON_TEST_PG_URL`
//! names), with `fsync` and `synchronous_commit` on.
//!
//! PostgreSQL is measured twice: with the single-writer journal of a lone server, and as one node
//! of a cluster (P = 64 partitions, every append checked against its partition's epoch), whose
//! rate is shown against the first's (target: at most 10% slower).
//!
//! The PostgreSQL server runs on the bench's machine, so the PostgreSQL figures are measured
//! on a runtime of one worker, which leaves the server a core, as its own host would. With two
//! workers at 256 writers, the server's two writing backends waited for a core about as long
//! as they ran (`/proc/<pid>/schedstat`), and each worker switched context about 11,000 times
//! a second, against 1,500 for a single worker (measured with `baton-store`'s `append_load`
//! example). Over 52 paired runs the rate came out lower in 37, by 9% in the median.
//! The bench measures 256 writers on two workers as well, after the others, without a target.
#![allow(clippy::print_stderr, reason = "a bench reports its figures on stderr")]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
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

    let fsyncs_before = fsync_rate(dir.path());
    let mut figures = Vec::new();
    let mut group = c.benchmark_group(BENCH);
    // Every sample the same length, about 300 ms: criterion's default grows samples from a
    // tenth of that, and a 30 ms sample measured whether a fold or a new WAL segment fell into
    // it, not the rate the writers sustain.
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
        measure(&mut group, &runtime, &REDB, &redb, writers, stats, &mut figures);
    }
    drop(redb);
    let fsyncs_between = fsync_rate(dir.path());
    let cluster = PgCluster::start_in(dir.path());
    let beside_server =
        tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().expect("runtime");
    let postgres = connect(&beside_server, &cluster);
    for writers in WRITERS {
        let stats = || postgres.commit_stats();
        measure(&mut group, &beside_server, &POSTGRES, &postgres, writers, stats, &mut figures);
    }
    drop(postgres);
    // The same on the cluster's path: P = 64 partitions, each append checked against its
    // partition's epoch, beside the single-writer figures just taken.
    let (partitioned, member) = beside_server.block_on(async {
        let url = cluster.create_database().await;
        baton_benches::partitioned_postgres(&url).await
    });
    for writers in WRITERS {
        let stats = || partitioned.commit_stats();
        measure(&mut group, &beside_server, &POSTGRES_PARTITIONED, &partitioned, writers, stats, &mut figures);
        let rate = |label: &str| {
            let name = format!("{label}, {}: durable appends per second", plural(writers, "writer"));
            figures.iter().find(|f| f.name == name).map(|f| f.value)
        };
        if let (Some(single), Some(fenced)) = (rate(POSTGRES.label), rate(POSTGRES_PARTITIONED.label)) {
            figures.push(Figure {
                name: format!("postgres fenced against single-writer, {}", plural(writers, "writer")),
                value: fenced,
                unit: "1/s",
                per_fsync: false,
                against: Some(single),
                target: Some(">= 0.9x"),
            });
        }
    }
    drop(partitioned);
    beside_server.block_on(async { member.leave().await.expect("the bench node leaves") });
    // A store of its own, so its journal tasks run on the two-worker runtime too.
    let sharing = connect(&runtime, &cluster);
    let stats = || sharing.commit_stats();
    measure(&mut group, &runtime, &POSTGRES_BOTH_CORES, &sharing, 256, stats, &mut figures);
    group.finish();
    drop(sharing);
    drop(cluster);
    let fsyncs_after = fsync_rate(dir.path());

    eprintln!(
        "write + fsync of 512 B: {fsyncs_before:.0}/s before the stores, {fsyncs_between:.0}/s between, \
         {fsyncs_after:.0}/s after"
    );
    let mut windows = [fsyncs_before, fsyncs_between, fsyncs_after];
    windows.sort_by(f64::total_cmp);
    let fsyncs_per_second = windows[1];
    report_figure(BENCH, "write + fsync of 512 B (the baseline)", fsyncs_per_second, "1/s", None, None);
    for figure in figures {
        let baseline = figure.against.or(figure.per_fsync.then_some(fsyncs_per_second));
        report_figure(BENCH, &figure.name, figure.value, figure.unit, baseline, figure.target);
    }
}

/// A figure, reported once the run's baseline is known.
struct Figure {
    name: String,
    value: f64,
    unit: &'static str,
    /// Whether it is shown against the fsync rate.
    per_fsync: bool,
    /// Another figure it is shown against instead.
    against: Option<f64>,
    target: Option<&'static str>,
}

/// A store measured, and how its figures are named.
struct Subject {
    /// Criterion's id: `baton/<id>/<writers>_writers`.
    id: &'static str,
    /// How its figures' names start.
    label: &'static str,
    /// The target for 256 writers: group commit makes them at least 20 times the fsync
    /// rate.
    target: Option<&'static str>,
}

const REDB: Subject = Subject { id: "redb", label: "redb", target: Some(">= 20x") };
const POSTGRES: Subject = Subject { id: "postgres", label: "postgres", target: Some(">= 20x") };
const POSTGRES_PARTITIONED: Subject =
    Subject { id: "postgres_partitioned", label: "postgres, 64 partitions fenced", target: None };
const POSTGRES_BOTH_CORES: Subject =
    Subject { id: "postgres_both_cores", label: "postgres, bench on both cores", target: None };

/// A PostgreSQL store on a fresh database of `cluster`, its journal tasks on `runtime`.
fn connect(runtime: &Runtime, cluster: &PgCluster) -> PostgresStore {
    runtime
        .block_on(async { PostgresStore::connect(&Config::new(cluster.create_database().await)).await })
        .expect("postgres store connects")
}

/// Benchmarks `writers` tasks appending to their own executions; one criterion iteration is
/// `writers` appends, by whichever writers make them. Adds the median rate and the mean batch
/// size to `figures`.
fn measure<S: Store + Clone>(
    group: &mut BenchmarkGroup<'_, WallTime>,
    runtime: &Runtime,
    subject: &Subject,
    store: &S,
    writers: usize,
    stats: impl Fn() -> CommitStats,
    figures: &mut Vec<Figure>,
) {
    let executions: Vec<ExecutionId> = runtime.block_on(async {
        let mut ids = Vec::with_capacity(writers);
        for _ in 0..writers {
            let created = store.create_execution(load_execution(), None).await.expect("creates");
            ids.push(created.execution.id);
        }
        ids
    });
    let mut rates = Vec::new();
    let before = stats();
    let load = Writers::start(runtime, store, &executions);
    group.throughput(Throughput::Elements(writers as u64));
    group.bench_function(BenchmarkId::new(format!("baton/{}", subject.id), format!("{writers}_writers")), |b| {
        b.iter_custom(|iterations| {
            let appends = writers as u64 * iterations;
            let elapsed = load.time(appends);
            rates.push(appends as f64 / elapsed.as_secs_f64());
            elapsed
        })
    });
    load.stop(runtime);
    let after = stats();
    rates.sort_by(f64::total_cmp);
    if let Some(median) = rates.get(rates.len() / 2) {
        let name = format!("{}, {}: durable appends per second", subject.label, plural(writers, "writer"));
        let target = subject.target.filter(|_| writers == 256);
        figures.push(Figure { name, value: *median, unit: "1/s", per_fsync: true, against: None, target });
    }
    let transactions = after.transactions.saturating_sub(before.transactions);
    if transactions > 0 {
        let per_commit = after.writes.saturating_sub(before.writes) as f64 / transactions as f64;
        let name = format!("{}, {}: appends per commit", subject.label, plural(writers, "writer"));
        figures.push(Figure { name, value: per_commit, unit: "", per_fsync: false, against: None, target: None });
    }
}

/// How long a sample may wait for its appends before the bench gives up.
const STALLED: Duration = Duration::from_secs(60);

/// Writers that append without pause, one event at a time, each to its own execution, from
/// before the warm-up until [`Writers::stop`]. A sample counts the appends they complete, so
/// it times all of them at work. Writers started and joined for each sample would time their
/// ramp-up and then the last of them finishing alone: with 300 appends each, the first was
/// done about 7% of the sample before the last, and the rate came out about 10% below the
/// sustained one.
struct Writers {
    progress: Arc<Progress>,
    /// When the append that reached a sample's goal completed.
    reached: std::sync::mpsc::Receiver<Instant>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

struct Progress {
    appended: AtomicU64,
    /// The count a sample waits for; `u64::MAX` when none does.
    goal: AtomicU64,
    reached: std::sync::mpsc::SyncSender<Instant>,
    stop: AtomicBool,
}

impl Progress {
    /// Takes the goal: true for exactly one caller per goal.
    fn claim(&self) -> bool {
        self.goal.swap(u64::MAX, Ordering::Relaxed) != u64::MAX
    }
}

impl Writers {
    fn start<S: Store + Clone>(runtime: &Runtime, store: &S, executions: &[ExecutionId]) -> Self {
        let (reached_sender, reached) = std::sync::mpsc::sync_channel(1);
        let progress = Arc::new(Progress {
            appended: AtomicU64::new(0),
            goal: AtomicU64::new(u64::MAX),
            reached: reached_sender,
            stop: AtomicBool::new(false),
        });
        let tasks = executions
            .iter()
            .map(|&id| {
                let (store, progress) = (store.clone(), Arc::clone(&progress));
                runtime.spawn(async move {
                    // Cloned rather than built each time (240 ns rather than 370 ns, its
                    // output being a JSON map): this measures the store, not the event.
                    let template = load_event(id, 0);
                    let mut sequence = 1;
                    while !progress.stop.load(Ordering::Relaxed) {
                        store.append(vec![Event { sequence, ..template.clone() }]).await.expect("durable append");
                        sequence += 1;
                        let appended = progress.appended.fetch_add(1, Ordering::Relaxed) + 1;
                        if appended >= progress.goal.load(Ordering::Relaxed) && progress.claim() {
                            let _ = progress.reached.send(Instant::now());
                        }
                    }
                })
            })
            .collect();
        Self { progress, reached, tasks }
    }

    /// The time the writers take for `appends` more appends, from now.
    fn time(&self, appends: u64) -> Duration {
        let started = Instant::now();
        let goal = self.progress.appended.load(Ordering::Relaxed) + appends;
        self.progress.goal.store(goal, Ordering::Relaxed);
        // The writers may have got there while the goal was being set.
        if self.progress.appended.load(Ordering::Relaxed) >= goal && self.progress.claim() {
            return started.elapsed();
        }
        // A writer whose append failed has panicked: fail here rather than wait for it.
        let reached = self.reached.recv_timeout(STALLED).unwrap_or_else(|_| {
            let failed = self.tasks.iter().filter(|task| task.is_finished()).count();
            panic!("{appends} appends took over {STALLED:?}; {failed} writers have stopped")
        });
        reached.saturating_duration_since(started)
    }

    /// Stops the writers after their current appends and waits for them.
    fn stop(self, runtime: &Runtime) {
        self.progress.stop.store(true, Ordering::Relaxed);
        runtime.block_on(async {
            for task in self.tasks {
                task.await.expect("writer task");
            }
        });
    }
}

fn plural(count: usize, noun: &str) -> String {
    if count == 1 { format!("1 {noun}") } else { format!("{count} {noun}s") }
}

/// Appends 512 bytes to a file and fsyncs it, for 2 seconds; returns the rate per second.
fn fsync_rate(dir: &Path) -> f64 {
    let duration = Duration::from_secs(2);
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
