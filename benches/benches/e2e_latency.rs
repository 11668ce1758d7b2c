//! `e2e_latency`: `e2e_throughput`'s work (the 3-step `order` workflow over the example HTTP
//! services, the real server on real sockets, durable on redb) from one client in a closed
//! loop: start-to-completion latency at p50 and p99 when nothing else waits for the cores.

mod e2e;

use baton_benches::{quantile, report_figure};
use criterion::{Criterion, criterion_group, criterion_main};

/// Executions of the direct measurement for the figures (`BATON_BENCH_E2E_MEASURED` to change).
const MEASURED: usize = 2_000;

fn e2e_latency(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("a runtime");
    let dir = tempfile::tempdir().expect("a temp dir");
    let (channel, _services) = rt.block_on(e2e::setup(dir.path(), None));

    let mut group = c.benchmark_group("e2e_latency");
    group.sample_size(20);
    group.bench_function("baton/order_3_steps_redb_1_client", |b| {
        b.iter_custom(|iters| rt.block_on(e2e::drive(&channel, 1, iters as usize)).0)
    });
    group.finish();

    let measured = e2e::measured(MEASURED);
    let (_, mut latencies) = rt.block_on(e2e::drive(&channel, 1, measured));
    assert_eq!(latencies.len(), measured, "one latency per execution");
    latencies.sort_unstable();
    let name = "3-step order workflow over HTTP, redb, 1 gRPC client";
    for (label, q, target) in [("p50", 0.5, "<= 2 ms"), ("p99", 0.99, "<= 5 ms")] {
        report_figure(
            "e2e_latency",
            &format!("{name}: start-to-completion {label}"),
            quantile(&latencies, q).as_secs_f64() * 1e3,
            "ms",
            None,
            Some(target),
        );
    }
}

criterion_group!(benches, e2e_latency);
criterion_main!(benches);
