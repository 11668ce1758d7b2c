//! `registry_register`: inserts per second into a registry already holding 100,000 services,
//! and resident memory per registered service beyond the spec itself.

use std::hint::black_box;
use std::time::{Duration, Instant};

use baton_benches::{QosPool, Workload, report_figure, resident_bytes};
use baton_registry::Registry;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};

const SERVICES: usize = 100_000;
const BATCH: usize = 1_000;

fn registry_register(c: &mut Criterion) {
    let mut workload = Workload::new(7, QosPool::load().expect("WS-DREAM data in data/wsdream"));

    // Memory: build the specs first so their own bytes are resident before we measure.
    let specs: Vec<_> = (0..SERVICES).map(|n| workload.service(n)).collect();
    let before = resident_bytes();
    let registry = Registry::default();
    let started = Instant::now();
    for spec in specs {
        registry.register(spec).expect("generated services register");
    }
    let fill = started.elapsed();
    if let (Some(before), Some(after)) = (before, resident_bytes()) {
        let per_service = after.saturating_sub(before) as f64 / SERVICES as f64;
        report_figure("registry_register", "resident bytes per service", per_service, "B", None, Some("<= 2048"));
    }
    let fill_rate = SERVICES as f64 / fill.as_secs_f64();
    report_figure("registry_register", "fill 0 -> 100k, inserts per second", fill_rate, "1/s", None, Some(">= 200000"));

    // Steady state: a batch of new services into the full registry, removed again untimed.
    let extra: Vec<_> = (SERVICES..SERVICES + BATCH).map(|n| workload.service(n)).collect();
    let mut group = c.benchmark_group("registry_register");
    group.throughput(Throughput::Elements(BATCH as u64));
    group.measurement_time(Duration::from_secs(3));
    group.bench_function("baton/insert_1000_into_100k", |b| {
        b.iter_custom(|iterations| {
            let mut total = Duration::ZERO;
            for _ in 0..iterations {
                let batch = extra.clone();
                let started = Instant::now();
                for spec in batch {
                    black_box(registry.register(spec).expect("registers"));
                }
                total += started.elapsed();
                for spec in &extra {
                    registry.deregister(spec.id()).expect("was registered");
                }
            }
            total
        })
    });
    group.finish();
}

criterion_group!(benches, registry_register);
criterion_main!(benches);
