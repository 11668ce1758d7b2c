//! `registry_find`: median time of one `find` at 100,000 services, by number of constraints,
//! beside a linear scan that checks every service (the seed design's approach).

use std::hint::black_box;
use std::time::{Duration, Instant};

use baton_benches::{QosPool, Workload, report_figure};
use baton_core::fakes::linear_find;
use baton_registry::Registry;
use criterion::{Criterion, criterion_group, criterion_main};

const SERVICES: usize = 100_000;
const QUERIES: usize = 512;

fn registry_find(c: &mut Criterion) {
    let mut workload = Workload::new(42, QosPool::load().expect("WS-DREAM data in data/wsdream"));
    let registry = Registry::default();
    for n in 0..SERVICES {
        registry.register(workload.service(n)).expect("generated services register");
    }
    // The baseline scans the same services with the same live state.
    let everything = registry.list(None, usize::MAX).services;
    let mut group = c.benchmark_group("registry_find");
    group.warm_up_time(Duration::from_millis(500));
    for constraints in 1..=4 {
        let queries: Vec<_> = (0..QUERIES).map(|_| workload.query(constraints)).collect();
        let case = if constraints == 1 { "1_constraint".to_owned() } else { format!("{constraints}_constraints") };
        per_query_medians(&registry, &everything, &queries, &case);
        let mut next = 0;
        group.measurement_time(Duration::from_secs(3));
        group.sample_size(100);
        group.bench_function(format!("baton/{case}"), |b| {
            b.iter(|| {
                next = (next + 1) % QUERIES;
                black_box(registry.find(&queries[next], 16).expect("valid query"))
            })
        });
        group.sample_size(10);
        group.bench_function(format!("baseline/{case}"), |b| {
            b.iter(|| {
                next = (next + 1) % QUERIES;
                black_box(linear_find(&everything, &queries[next], 16))
            })
        });
    }
    group.finish();
}

/// Criterion times a cycle through many queries, which is a mean over queries. The issue asks
/// for the median `find`, so time each query on its own (best of 5 runs) and take the median
/// over queries, for Baton and the linear scan alike.
fn per_query_medians(
    registry: &Registry,
    everything: &[baton_core::ServiceView],
    queries: &[baton_core::ServiceRequirements],
    case: &str,
) {
    let time = |f: &dyn Fn()| {
        (0..5)
            .map(|_| {
                let started = Instant::now();
                f();
                started.elapsed()
            })
            .min()
            .unwrap_or_default()
    };
    let median = |mut times: Vec<Duration>| {
        times.sort();
        times[times.len() / 2].as_secs_f64() * 1e6
    };
    let baton = median(queries.iter().map(|q| time(&|| drop(black_box(registry.find(q, 16))))).collect());
    let baseline =
        median(queries.iter().take(64).map(|q| time(&|| drop(black_box(linear_find(everything, q, 16))))).collect());
    let target = (case == "4_constraints").then_some("<= 20 us and >= 100x");
    report_figure("registry_find", &format!("median per query, {case} (us)"), baton, "us", Some(baseline), target);
}

criterion_group!(benches, registry_find);
criterion_main!(benches);
