//! `registry_concurrent`: find throughput of two reader threads while a third thread keeps
//! heartbeating and re-registering services.

use std::hint::black_box;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use baton_benches::{QosPool, Workload, report_figure};
use baton_registry::Registry;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};

const SERVICES: usize = 100_000;
const READERS: usize = 2;
const FINDS_PER_READER: usize = 2_000;

fn registry_concurrent(c: &mut Criterion) {
    let mut workload = Workload::new(11, QosPool::load().expect("WS-DREAM data in data/wsdream"));
    let registry = Registry::default();
    for n in 0..SERVICES {
        registry.register(workload.service(n)).expect("generated services register");
    }
    let queries: Arc<Vec<_>> = Arc::new((0..512).map(|i| workload.query(1 + i % 4)).collect());
    let updates: Vec<_> = (0..1_000).map(|n| workload.service(n * 97 % SERVICES)).collect();

    let stop = Arc::new(AtomicBool::new(false));
    let writes = Arc::new(AtomicU64::new(0));
    let writer = {
        let (registry, stop, writes) = (registry.clone(), Arc::clone(&stop), Arc::clone(&writes));
        std::thread::spawn(move || {
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                let spec = &updates[i % updates.len()];
                if i % 4 == 0 {
                    registry.register(spec.clone()).expect("re-registers");
                } else {
                    registry.heartbeat(spec.id()).expect("registered");
                }
                writes.fetch_add(1, Ordering::Relaxed);
                i += 1;
            }
        })
    };

    let mut group = c.benchmark_group("registry_concurrent");
    group.throughput(Throughput::Elements((READERS * FINDS_PER_READER) as u64));
    group.sample_size(10);
    let mut finds_per_second = Vec::new();
    group.bench_function("baton/2_readers_1_writer", |b| {
        b.iter_custom(|iterations| {
            let mut total = Duration::ZERO;
            for _ in 0..iterations {
                let started = Instant::now();
                std::thread::scope(|scope| {
                    for reader in 0..READERS {
                        let (registry, queries) = (&registry, &queries);
                        scope.spawn(move || {
                            for i in 0..FINDS_PER_READER {
                                let query = &queries[(reader * 7919 + i) % queries.len()];
                                black_box(registry.find(query, 16).expect("valid query"));
                            }
                        });
                    }
                });
                let elapsed = started.elapsed();
                finds_per_second.push((READERS * FINDS_PER_READER) as f64 / elapsed.as_secs_f64());
                total += elapsed;
            }
            total
        })
    });
    group.finish();
    stop.store(true, Ordering::Relaxed);
    writer.join().expect("writer thread");
    finds_per_second.sort_by(f64::total_cmp);
    if let Some(median) = finds_per_second.get(finds_per_second.len() / 2) {
        report_figure("registry_concurrent", "finds per second, 2 readers + 1 writer", *median, "1/s", None, None);
    }
    report_figure(
        "registry_concurrent",
        "writer operations during the run",
        writes.load(Ordering::Relaxed) as f64,
        "ops",
        None,
        None,
    );
}

criterion_group!(benches, registry_concurrent);
criterion_main!(benches);
