//! `retained`: memory and disk of a server under a steady load with a short retention. The
//! 3-step `order` workflow over the example HTTP services runs to completion
//! `BATON_BENCH_RETAINED` times (default 400,000) from 64 gRPC clients in closed loops, against a
//! server alone in its own process (this bench run again as `baton serve` would run, with
//! `--retention 1m` and the default `--store-cache-mib`), durable on redb. Figures: the server's
//! resident memory when idle and after half and all of the executions, and the size of its redb
//! file at the same two moments.
//!
//! `BATON_BENCH_RETAINED_CACHE_MIB` and `BATON_BENCH_RETAINED_RETENTION` (e.g. `1024` and
//! `3650d`: redb's own cache and no removal, as before retention) run the same load against
//! other settings, for a baseline; the figures then name them.
//!
//! Once the first executions expire (a minute in), the server removes them as fast as new ones
//! end, so memory and the file should stop growing: the targets are resident memory after all
//! of them no more than after half, and within the idle figure plus the configured cache plus
//! 20%; the file after all within 20% of its size after half.

use std::io::{BufRead, Write};
use std::path::Path;
use std::process::{Child, Stdio};
use std::time::Duration;

use baton::config::ServeArgs;
use baton::serve::Server;
use baton_benches::{quantile, report_figure, resident_bytes_of};

// The server runs in a process of its own here, so the in-process `e2e::setup` is not used.
#[allow(dead_code)]
mod e2e;

const CLIENTS: usize = 64;
/// When set, this process is the server, with its data in the directory named.
const SERVER_ENV: &str = "BATON_BENCH_RETAINED_SERVER";
/// How many executions to run (default [`EXECUTIONS`]).
const COUNT_ENV: &str = "BATON_BENCH_RETAINED";
const EXECUTIONS: usize = 400_000;
const RETENTION: Duration = Duration::from_secs(60);
const MIB: f64 = 1024.0 * 1024.0;
/// Other settings for the server, for a baseline run.
const CACHE_ENV: &str = "BATON_BENCH_RETAINED_CACHE_MIB";
const RETENTION_ENV: &str = "BATON_BENCH_RETAINED_RETENTION";
/// A profiler the server process runs under, e.g. `heaptrack` (words split on spaces, the
/// server's command after them). Memory figures are then the profiler's process's, not the
/// server's alone; build with `--features system-allocator` so that it sees every allocation.
const WRAPPER_ENV: &str = "BATON_BENCH_RETAINED_WRAPPER";

/// The server's cache in MiB and retention: the defaults, or what the variables say.
fn settings() -> (u64, Duration) {
    let default_cache = baton_store::DEFAULT_CACHE_BYTES as u64 >> 20;
    let cache = std::env::var(CACHE_ENV).ok().map_or(default_cache, |v| v.parse().expect("a number of MiB"));
    let retention = std::env::var(RETENTION_ENV)
        .ok()
        .map_or(RETENTION, |v| baton_core::duration::parse(RETENTION_ENV, &v).expect("a duration"));
    (cache, retention)
}

/// The run's name in its figures: the settings when they are not the bench's own.
fn run_label() -> String {
    let (cache, retention) = settings();
    if (cache, retention) == settings_default() {
        "order workflow, retention 1m".to_owned()
    } else {
        format!("order workflow, retention {}, cache {cache} MiB", baton_core::duration::format(retention))
    }
}

fn settings_default() -> (u64, Duration) {
    (baton_store::DEFAULT_CACHE_BYTES as u64 >> 20, RETENTION)
}

fn main() {
    match std::env::var_os(SERVER_ENV) {
        Some(dir) => serve(Path::new(&dir)),
        None => measure(),
    }
}

/// The server process: `baton serve`'s code with a one-minute retention, on loopback ports it
/// prints, until its stdin closes.
fn serve(dir: &Path) {
    let mut config = ServeArgs::default().resolve().expect("the defaults resolve");
    config.listen = "127.0.0.1:0".parse().expect("an address");
    config.metrics_listen = "127.0.0.1:0".parse().expect("an address");
    config.console_listen = "127.0.0.1:0".parse().expect("an address");
    config.data_dir = dir.to_owned();
    config.log_level = "warn".to_owned();
    (config.store_cache_mib, config.retention) = settings();
    // The 64 clients share one connection, which the default per-connection rate would hold back.
    config.rate_limit = 1_000_000;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(config.worker_threads)
        .enable_all()
        .build()
        .expect("a runtime");
    runtime.block_on(async {
        let server = Server::bind(config).await.expect("the server binds");
        let mut stdout = std::io::stdout().lock();
        writeln!(stdout, "{}", server.grpc_addr()).expect("the address is written");
        stdout.flush().expect("the address is sent");
        drop(stdout);
        // The bench closes stdin when it is done (or gone): then this server stops.
        let (closed, stop) = tokio::sync::oneshot::channel::<()>();
        std::thread::spawn(move || {
            let _ = std::io::copy(&mut std::io::stdin().lock(), &mut std::io::sink());
            let _ = closed.send(());
        });
        server
            .serve(async move {
                let _ = stop.await;
            })
            .await
            .expect("the server serves");
    });
}

/// The server process, stopped when dropped.
struct ServerProcess(Child);

impl Drop for ServerProcess {
    fn drop(&mut self) {
        // Closing its input stops it; a kill makes sure, but not of a profiler, which writes
        // its findings once the server has stopped.
        drop(self.0.stdin.take());
        if std::env::var_os(WRAPPER_ENV).is_none() {
            let _ = self.0.kill();
        }
        let _ = self.0.wait();
    }
}

fn start_server(dir: &Path) -> (ServerProcess, String) {
    let mut child = baton_benches::this_executable_wrapped(WRAPPER_ENV)
        .env(SERVER_ENV, dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("the server process starts");
    let mut stdout = std::io::BufReader::new(child.stdout.take().expect("piped"));
    // A profiler may say things of its own first: the address is the line that parses as one.
    let addr = loop {
        let mut line = String::new();
        let read = stdout.read_line(&mut line).expect("the server prints its address");
        assert!(read > 0, "the server process ended before it said where it listens");
        if line.trim().parse::<std::net::SocketAddr>().is_ok() {
            break line.trim().to_owned();
        }
    };
    (ServerProcess(child), format!("http://{addr}"))
}

fn file_bytes(dir: &Path) -> u64 {
    std::fs::metadata(dir.join(baton_store::redb::FILE_NAME)).map_or(0, |m| m.len())
}

fn measure() {
    let count: usize = std::env::var(COUNT_ENV).ok().and_then(|v| v.parse().ok()).unwrap_or(EXECUTIONS);
    let half = count / 2;
    let dir = tempfile::tempdir().expect("a temp dir");
    let (server, url) = start_server(dir.path());
    let pid = server.0.id();
    let rss = || resident_bytes_of(pid).expect("the server's resident memory") as f64 / MIB;
    let runtime =
        tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("a runtime");
    let (channel, _services) = runtime.block_on(e2e::shop(url));
    let idle = rss();
    let (first, _) = runtime.block_on(e2e::drive(&channel, CLIENTS, half));
    let (rss_half, file_half) = (rss(), file_bytes(dir.path()) as f64 / MIB);
    // The second half runs while expired executions are removed: its latencies show whether
    // removal holds up starts and commits.
    let (second, mut latencies) = runtime.block_on(e2e::drive(&channel, CLIENTS, count - half));
    latencies.sort_unstable();
    let (rss_all, file_all) = (rss(), file_bytes(dir.path()) as f64 / MIB);

    let cache = settings().0 as f64;
    let run = run_label();
    let label = |at: usize| format!("{run}, {CLIENTS} clients: after {at} executions");
    report_figure("retained", &format!("{run}: server resident memory idle"), idle, "MiB", None, None);
    report_figure(
        "retained",
        &format!("{}: server resident memory", label(half)),
        rss_half,
        "MiB",
        None,
        Some(&format!("<= {:.0} MiB (idle + {cache:.0} MiB cache + 20%)", (idle + cache) * 1.2)),
    );
    report_figure(
        "retained",
        &format!("{}: server resident memory", label(count)),
        rss_all,
        "MiB",
        Some(rss_half),
        Some(&format!("<= {rss_half:.0} MiB (after {half}) and <= {:.0} MiB", (idle + cache) * 1.2)),
    );
    report_figure("retained", &format!("{}: redb file", label(half)), file_half, "MiB", None, None);
    report_figure(
        "retained",
        &format!("{}: redb file", label(count)),
        file_all,
        "MiB",
        Some(file_half),
        Some(&format!("<= {:.0} MiB (+20% over after {half})", file_half * 1.2)),
    );
    report_figure(
        "retained",
        &format!("{run}, {CLIENTS} clients: executions per second"),
        count as f64 / (first + second).as_secs_f64(),
        "1/s",
        None,
        None,
    );
    for (name, q) in [("p50", 0.5), ("p99", 0.99)] {
        report_figure(
            "retained",
            &format!("{}: start-to-completion {name} of the second half", label(count)),
            quantile(&latencies, q).as_secs_f64() * 1e3,
            "ms",
            None,
            None,
        );
    }
    drop(server);
}
