//! Plans a Web Services Challenge problem and prints the composition as JSON.
//!
//! `cargo run --release -p baton-planner --example wsc -- DIR [--qos FILE] [--objective latency|throughput|cost]`
//!
//! DIR holds a WSC data set (`services.xml`, `taxonomy.xml`, `problem.xml`, or the WSC'09
//! WSDL/OWL/WSLA files). `--qos` takes a `services-output.xml` with QoS attributes to use
//! instead of DIR's services. Prints `{"layers": [[...]], "data_flow": [...], "predicted": ...,
//! "timings_ms": ...}` on stdout and a one-line summary on stderr; exits 1 with the reason when
//! the goal is unsatisfiable, 2 on bad usage or data.

#![allow(clippy::print_stdout, reason = "a command-line example reports on stdout")]
#![allow(clippy::print_stderr, reason = "a command-line example reports problems on stderr")]

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

use baton_core::Objective;
use baton_planner::{Catalog, OrchestrationPlanner, wsc};

fn usage(reason: &str) -> ExitCode {
    eprintln!("{reason}\nusage: wsc DIR [--qos FILE] [--objective latency|throughput|cost]");
    ExitCode::from(2)
}

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let (mut dir, mut qos, mut objective) = (None, None, Objective::Latency);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--qos" => qos = args.next().map(PathBuf::from),
            "--objective" => {
                objective = match args.next().as_deref() {
                    Some("latency") => Objective::Latency,
                    Some("throughput") => Objective::Throughput,
                    Some("cost") => Objective::Cost,
                    other => return usage(&format!("unknown objective {other:?}")),
                }
            }
            _ if dir.is_none() => dir = Some(PathBuf::from(arg)),
            _ => return usage(&format!("unexpected argument {arg:?}")),
        }
    }
    let Some(dir) = dir else { return usage("missing DIR") };

    let started = Instant::now();
    let loaded = match &qos {
        Some(services) => wsc::load_xml(services, &dir.join("taxonomy.xml"), &dir.join("problem.xml")),
        None => wsc::load_dir(&dir),
    };
    let problem = match loaded {
        Ok(problem) => problem,
        Err(e) => return usage(&format!("cannot load {}: {e}", dir.display())),
    };
    let load_ms = started.elapsed().as_secs_f64() * 1e3;

    let started = Instant::now();
    let services: Vec<_> = problem.services.into_iter().map(Arc::new).collect();
    let count = services.len();
    let catalog = Catalog::build(Arc::new(problem.taxonomy), services);
    let index_ms = started.elapsed().as_secs_f64() * 1e3;

    let goal = baton_core::Goal { objective, ..problem.goal };
    let started = Instant::now();
    let planned = OrchestrationPlanner.plan(&catalog, &goal);
    let plan_ms = started.elapsed().as_secs_f64() * 1e3;
    let plan = match planned {
        Ok(plan) => plan,
        Err(e) => {
            eprintln!("{}: {e} ({count} services, planned in {plan_ms:.2} ms)", dir.display());
            return ExitCode::from(1);
        }
    };
    let layers: Vec<Vec<&str>> = plan.levels.iter().map(|l| l.iter().map(|s| s.as_str()).collect()).collect();
    let output = serde_json::json!({
        "layers": layers,
        "services": plan.tasks.len(),
        "data_flow": plan.data_flow,
        "alternatives": plan.tasks.iter().map(|t| (t.id.as_str(), &t.alternatives)).collect::<std::collections::BTreeMap<_, _>>(),
        "predicted": plan.predicted,
        "timings_ms": {"load": load_ms, "index": index_ms, "plan": plan_ms},
        "peak_resident_mib": peak_resident_mib(),
    });
    println!("{}", serde_json::to_string_pretty(&output).expect("JSON values serialize"));
    eprintln!(
        "{}: {} layers, {} services, response time {} ms, throughput {:.1}/s; planned in {plan_ms:.2} ms (index {index_ms:.1} ms, load {load_ms:.0} ms) over {count} services",
        dir.display(),
        plan.levels.len(),
        plan.tasks.len(),
        plan.predicted.latency_ms,
        plan.predicted.throughput_rps,
    );
    ExitCode::SUCCESS
}

/// Peak resident memory of this process in MiB (`VmHWM`, Linux only).
fn peak_resident_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let kib: f64 = status.lines().find(|l| l.starts_with("VmHWM:"))?.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}
