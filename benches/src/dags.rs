//! DAG shapes for the executor benches, and the seed design's level-barrier scheduler as the
//! baseline.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use baton_core::{ErrorPolicy, ExecutionId, RetryPolicy, ServiceId, StepId, Template};
use baton_executor::{RunSpec, TaskSpec};

/// A DAG as dependency lists: task `i` depends on `deps[i]` (all earlier than `i`).
#[derive(Debug, Clone)]
pub struct Dag {
    /// Dependencies per task.
    pub deps: Vec<Vec<usize>>,
}

impl Dag {
    /// `n` tasks in a line.
    pub fn chain(n: usize) -> Self {
        Self { deps: (0..n).map(|i| if i == 0 { vec![] } else { vec![i - 1] }).collect() }
    }

    /// `n` tasks without dependencies.
    pub fn independent(n: usize) -> Self {
        Self { deps: vec![Vec::new(); n] }
    }

    /// One root, `n - 2` tasks on it, one task joining them all.
    pub fn fan_out_in(n: usize) -> Self {
        let mut deps = vec![vec![]];
        deps.extend((1..n - 1).map(|_| vec![0]));
        deps.push((1..n - 1).collect());
        Self { deps }
    }

    /// Layers of `width` tasks, each depending on two tasks of the layer before.
    pub fn layered(n: usize, width: usize) -> Self {
        let deps = (0..n)
            .map(|i| {
                let layer = i / width;
                if layer == 0 {
                    vec![]
                } else {
                    let base = (layer - 1) * width;
                    let k = i % width;
                    let mut d = vec![base + k, base + (k * 7 + 3) % width];
                    d.sort_unstable();
                    d.dedup();
                    d
                }
            })
            .collect();
        Self { deps }
    }

    /// The run spec: task `i` calls service `s{i % services}` with an empty input.
    pub fn spec(&self, services: usize) -> RunSpec {
        let name = |i: usize| StepId::new(&format!("t{i}")).expect("valid id");
        let empty = Template::compile("input", &serde_json::json!({})).expect("a literal template");
        let tasks = self
            .deps
            .iter()
            .enumerate()
            .map(|(i, deps)| TaskSpec {
                id: name(i),
                services: vec![ServiceId::new(&format!("s{}", i % services)).expect("valid id")],
                input: empty.clone(),
                call: None,
                depends_on: deps.iter().map(|&d| name(d)).collect(),
                retry: RetryPolicy { max_attempts: 1, ..RetryPolicy::default() },
                timeout: None,
                task_timeout: None,
                on_error: ErrorPolicy::Fail,
            })
            .collect();
        let output = Template::compile("output", &serde_json::Value::Null).expect("a literal template");
        RunSpec::new(ExecutionId::generate(), tasks, output, None).expect("benchmark DAGs are valid")
    }

    /// Topological levels (longest path from a root).
    pub fn levels(&self) -> Vec<Vec<usize>> {
        let mut level = vec![0usize; self.deps.len()];
        for i in 0..self.deps.len() {
            level[i] = self.deps[i].iter().map(|&d| level[d] + 1).max().unwrap_or(0);
        }
        let mut grouped: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
        for (i, l) in level.into_iter().enumerate() {
            grouped.entry(l).or_default().push(i);
        }
        grouped.into_values().collect()
    }

    /// The critical path when task `i` takes `durations[i]`: no schedule can finish sooner.
    pub fn critical_path(&self, durations: &[Duration]) -> Duration {
        let mut finish = vec![Duration::ZERO; self.deps.len()];
        for i in 0..self.deps.len() {
            let ready = self.deps[i].iter().map(|&d| finish[d]).max().unwrap_or_default();
            finish[i] = ready + durations[i];
        }
        finish.into_iter().max().unwrap_or_default()
    }
}

/// The seed design's scheduler: run a level's tasks concurrently, wait for all of them, then
/// start the next level.
pub async fn level_barrier<F, Fut>(dag: &Dag, task: Arc<F>)
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    for level in dag.levels() {
        let mut running = tokio::task::JoinSet::new();
        for i in level {
            running.spawn(task(i));
        }
        while running.join_next().await.is_some() {}
    }
}
