//! No-op tasks per second through the whole executor on a layered DAG of width 100:
//! `cargo run --release -p baton-executor --example throughput -- [TASKS] [RUNS]`.
//! The criterion bench `executor_overhead` is the reference; this is for quick profiling.
#![allow(clippy::print_stderr, reason = "a profiling example reports on stderr")]

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use baton_core::ports::DiscardEvents;
use baton_core::{ErrorPolicy, ExecutionId, RetryPolicy, ServiceId, StepId, SystemClock, Template};
use baton_executor::{Config, InProcessInvoker, Outcome, RunSpec, TaskSpec};

fn layered(n: usize, width: usize) -> RunSpec {
    let name = |i: usize| StepId::new(&format!("t{i}")).expect("valid id");
    let input = Template::compile("input", &serde_json::json!({})).expect("a literal");
    let tasks = (0..n)
        .map(|i| {
            let layer = i / width;
            let mut deps = if layer == 0 {
                vec![]
            } else {
                let base = (layer - 1) * width;
                vec![base + i % width, base + (i % width * 7 + 3) % width]
            };
            deps.sort_unstable();
            deps.dedup();
            TaskSpec {
                id: name(i),
                services: vec![ServiceId::new("noop").expect("valid id")],
                input: input.clone(),
                call: None,
                depends_on: deps.into_iter().map(name).collect(),
                retry: RetryPolicy { max_attempts: 1, ..RetryPolicy::default() },
                timeout: None,
                task_timeout: None,
                on_error: ErrorPolicy::Fail,
            }
        })
        .collect();
    let output = Template::compile("output", &serde_json::Value::Null).expect("a literal");
    RunSpec::new(ExecutionId::generate(), tasks, output, None).expect("a valid DAG")
}

fn main() {
    let mut args = std::env::args().skip(1).map(|a| a.parse::<usize>().expect("a number"));
    let (tasks, runs) = (args.next().unwrap_or(10_000), args.next().unwrap_or(20));
    let runtime =
        tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("a runtime");
    let mut invoker = InProcessInvoker::default();
    invoker.register(ServiceId::new("noop").expect("valid id"), |_| async { Ok(serde_json::Value::Null) });
    let executor = Config { max_in_flight_per_run: 256, max_in_flight: 256, ..Config::default() }.build(
        Arc::new(invoker),
        Arc::new(DiscardEvents),
        Arc::new(SystemClock),
    );
    // One checked DAG, many executions of it, as with many runs of one workflow version.
    let dag = layered(tasks, 100);
    let specs: Vec<RunSpec> = (0..runs).map(|_| dag.for_execution(ExecutionId::generate())).collect();
    let (started, cpu_before) = (Instant::now(), cpu_seconds());
    for spec in specs {
        let outcome =
            runtime.block_on(async { executor.start(spec, serde_json::Value::Null, BTreeMap::new()).outcome().await });
        assert!(matches!(outcome, Outcome::Completed(_)), "{outcome:?}");
    }
    let elapsed = started.elapsed();
    let per_second = (tasks * runs) as f64 / elapsed.as_secs_f64();
    let cpu = (cpu_seconds() - cpu_before) * 1e9 / (tasks * runs) as f64;
    eprintln!(
        "{tasks} tasks x {runs} runs: {per_second:.0} tasks/s, {:.0} ns/task, {cpu:.0} CPU ns/task",
        1e9 / per_second
    );
}

/// CPU time of this process so far (Linux), to see the cost per task on a busy machine.
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name: utime and stime are the 12th and 13th, in clock ticks.
    let fields: Vec<&str> = stat.rsplit(')').next().unwrap_or_default().split_whitespace().collect();
    let ticks: f64 = fields.get(11..13).map_or(0.0, |f| f.iter().filter_map(|v| v.parse::<f64>().ok()).sum());
    ticks / 100.0
}
