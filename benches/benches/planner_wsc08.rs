//! `planner_wsc08`: time to plan each WSC'08 set 01-08 (parsing excluded; the index build is
//! reported separately), beside the seed design's layer-by-layer full scans in the same run.
//! Also records each plan's layers and services, and the peak resident memory after set 08.

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use baton_benches::{naive_planner, project_root, report_figure};
use baton_planner::{Catalog, OrchestrationPlanner, wsc};
use criterion::{Criterion, criterion_group, criterion_main};

/// Published minimum layers and best known service counts (data/README.md).
const KNOWN: [(usize, usize); 8] = [(3, 10), (3, 5), (23, 40), (5, 10), (8, 20), (7, 42), (12, 20), (20, 30)];
/// The fastest published solver times in ms (Tucar et al., KES 2018; data/README.md).
const PUBLISHED_MS: [f64; 8] = [22.0, 27.0, 76.0, 34.0, 87.0, 132.0, 95.0, 109.0];

fn planner_wsc08(c: &mut Criterion) {
    let mut group = c.benchmark_group("planner_wsc08");
    group.warm_up_time(Duration::from_millis(300));
    group.measurement_time(Duration::from_secs(2));
    for set in 1..=8 {
        let dir = project_root().join(format!("data/wsc08/TESTSET/Set{set:02}MetaData"));
        let problem = wsc::load_dir(&dir).expect("WSC'08 data in data/wsc08");
        let case = format!("set{set:02}");

        let started = Instant::now();
        let services: Vec<_> = problem.services.iter().cloned().map(Arc::new).collect();
        let taxonomy = Arc::new(problem.taxonomy.clone());
        let catalog = Catalog::build(Arc::clone(&taxonomy), services);
        let index_ms = started.elapsed().as_secs_f64() * 1e3;
        report_figure("planner_wsc08", &format!("{case} index build (ms)"), index_ms, "ms", None, None);

        let plan = OrchestrationPlanner.plan(&catalog, &problem.goal).expect("sets 01-08 are solvable");
        let (layers, size) = known(set);
        report_figure(
            "planner_wsc08",
            &format!("{case} layers vs published minimum"),
            plan.levels.len() as f64,
            "layers",
            Some(layers as f64),
            None,
        );
        report_figure(
            "planner_wsc08",
            &format!("{case} services vs best known"),
            plan.tasks.len() as f64,
            "services",
            Some(size as f64),
            None,
        );
        let naive = naive_planner::layers(&problem.taxonomy, &problem.services, &problem.goal).expect("solvable");
        assert_eq!(naive.len(), plan.levels.len(), "{case}: the baseline and Baton disagree on the minimum layers");

        let mut times: Vec<f64> = (0..31)
            .map(|_| {
                let started = Instant::now();
                black_box(OrchestrationPlanner.plan(&catalog, &problem.goal).expect("solvable"));
                started.elapsed().as_secs_f64() * 1e3
            })
            .collect();
        times.sort_by(f64::total_cmp);
        report_figure(
            "planner_wsc08",
            &format!("{case} plan median (ms) vs fastest published"),
            times[times.len() / 2],
            "ms",
            Some(PUBLISHED_MS[set - 1]),
            Some("<= 20 ms and >= 5x"),
        );
        group.bench_function(format!("baton/{case}"), |b| {
            b.iter(|| black_box(OrchestrationPlanner.plan(&catalog, &problem.goal).expect("solvable")))
        });
        group.sample_size(10);
        group.bench_function(format!("baseline/{case}"), |b| {
            b.iter(|| black_box(naive_planner::layers(&problem.taxonomy, &problem.services, &problem.goal)))
        });
        group.sample_size(100);
    }
    group.finish();
    if let Some(peak) = peak_resident_bytes() {
        report_figure(
            "planner_wsc08",
            "peak resident memory after all sets (MiB)",
            peak as f64 / (1 << 20) as f64,
            "MiB",
            None,
            None,
        );
    }
}

fn known(set: usize) -> (usize, usize) {
    KNOWN[set - 1]
}

/// Peak resident memory of this process (`VmHWM` in `/proc/self/status`, Linux).
fn peak_resident_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

criterion_group!(benches, planner_wsc08);
criterion_main!(benches);
