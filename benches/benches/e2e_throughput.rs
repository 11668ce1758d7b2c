//! `e2e_throughput`: the 3-step `order` workflow (reserve and charge in parallel, then ship)
//! over the example HTTP services, through the real server (`baton serve`'s code on real
//! sockets), driven by 64 gRPC clients in closed loops on one channel: executions per second
//! and start-to-completion latency at p50 and p99, as a client sees it (StartExecution until
//! WatchExecution ends after the terminal event). Durable on redb, then on PostgreSQL (a
//! throwaway local server, as the store tests start it).
//!
//! Server, services and clients share the bench process and its two cores, as they share the
//! machine; the figures are the baseline for the next round.

mod e2e;

use baton_benches::{quantile, report_figure};
use baton_store::testing::PgCluster;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};

const CLIENTS: usize = 64;
/// Executions per criterion iteration.
const PER_ITERATION: usize = 500;
/// Executions of the direct measurement for the figures (`BATON_BENCH_E2E_MEASURED` to change).
const MEASURED: usize = 3_000;
/// The stores to measure, comma-separated (`redb`, `postgres`); both when unset.
const STORES_ENV: &str = "BATON_BENCH_E2E_STORES";

fn e2e_throughput(c: &mut Criterion) {
    let measured = e2e::measured(MEASURED);
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("a runtime");
    let dir = tempfile::tempdir().expect("a temp dir");
    // `BATON_BENCH_E2E_STORES=redb` measures one store alone, e.g. to count its CPU per execution.
    let only = std::env::var(STORES_ENV).ok();
    let wanted = |id: &str| only.as_deref().is_none_or(|only| only.split(',').any(|o| o == id));
    let cluster = wanted("postgres").then(|| PgCluster::start_in(dir.path()));
    let postgres = cluster.as_ref().map(|cluster| rt.block_on(cluster.create_database()));
    let stores = [("redb", "redb", None), ("postgres", "PostgreSQL", postgres)];
    let stores = stores.into_iter().filter(|(id, ..)| wanted(id));

    let mut group = c.benchmark_group("e2e_throughput");
    group.sample_size(10);
    group.throughput(Throughput::Elements(PER_ITERATION as u64));
    for (id, label, store) in stores {
        let (channel, _services) = rt.block_on(e2e::setup(&dir.path().join(id), store));
        group.bench_function(format!("baton/order_3_steps_{id}_{CLIENTS}_clients"), |b| {
            b.iter_custom(|iters| (0..iters).map(|_| rt.block_on(e2e::drive(&channel, CLIENTS, PER_ITERATION)).0).sum())
        });

        let (elapsed, mut latencies) = rt.block_on(e2e::drive(&channel, CLIENTS, measured));
        assert_eq!(latencies.len(), measured, "one latency per execution");
        latencies.sort_unstable();
        let name = format!("3-step order workflow over HTTP, {label}, {CLIENTS} gRPC clients");
        report_figure(
            "e2e_throughput",
            &format!("{name}: executions per second"),
            measured as f64 / elapsed.as_secs_f64(),
            "1/s",
            None,
            None,
        );
        for (quantile_label, q) in [("p50", 0.5), ("p99", 0.99)] {
            report_figure(
                "e2e_throughput",
                &format!("{name}: start-to-completion {quantile_label}"),
                quantile(&latencies, q).as_secs_f64() * 1e3,
                "ms",
                None,
                None,
            );
        }
    }
    group.finish();
}

criterion_group!(benches, e2e_throughput);
criterion_main!(benches);
