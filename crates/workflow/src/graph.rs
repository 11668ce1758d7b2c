//! The task-graph rules of a block: a topological order (or the cycle that prevents one), and
//! which tasks run before which.

use std::collections::{BTreeSet, HashMap};

use baton_core::StepId;

/// Kahn's algorithm over `depends_on` (per task, the indexes it depends on); when tasks are left
/// over, a depth-first walk names one cycle, in run order from the task defined first, its
/// first task repeated at the end.
pub(crate) fn topological_order(ids: &[StepId], depends_on: &[Vec<usize>]) -> Result<Vec<usize>, Vec<StepId>> {
    let n = ids.len();
    let mut dependents = vec![Vec::new(); n];
    let mut indegree = vec![0usize; n];
    for (i, deps) in depends_on.iter().enumerate() {
        let deps: BTreeSet<usize> = deps.iter().copied().collect();
        indegree[i] = deps.len();
        for d in deps {
            dependents[d].push(i);
        }
    }
    let mut ready: Vec<usize> = (0..n).filter(|&i| indegree[i] == 0).rev().collect();
    let mut order = Vec::with_capacity(n);
    while let Some(i) = ready.pop() {
        order.push(i);
        for &d in &dependents[i] {
            indegree[d] -= 1;
            if indegree[d] == 0 {
                ready.push(d);
            }
        }
    }
    if order.len() == n {
        return Ok(order);
    }
    // Every leftover task has a leftover dependency; walking them must revisit one.
    let start = (0..n).find(|&i| indegree[i] > 0).expect("a task left over");
    let mut path = vec![start];
    let mut on_path = HashMap::from([(start, 0usize)]);
    let mut at = start;
    loop {
        let next = depends_on[at].iter().copied().find(|&d| indegree[d] > 0).expect("a leftover dependency");
        if let Some(&from) = on_path.get(&next) {
            let mut members: Vec<usize> = path[from..].iter().rev().copied().collect();
            let first = (0..members.len()).min_by_key(|&i| members[i]).expect("a cycle has tasks");
            members.rotate_left(first);
            let mut cycle: Vec<StepId> = members.iter().map(|&i| ids[i].clone()).collect();
            cycle.push(cycle[0].clone());
            return Err(cycle);
        }
        on_path.insert(next, path.len());
        path.push(next);
        at = next;
    }
}

/// Which tasks run before which: one bit set per task, built in topological order (a task's
/// upstream is its dependencies and theirs). Bits keep the largest definition (10,000 tasks)
/// at 12.5 MB and linear work per edge; sets of indices grew quadratically on long chains.
pub(crate) struct Upstream {
    words: usize,
    bits: Vec<u64>,
}

impl Upstream {
    pub(crate) fn of(depends_on: &[Vec<usize>], order: &[usize]) -> Self {
        let n = depends_on.len();
        let words = n.div_ceil(64);
        let mut bits = vec![0u64; n * words];
        for &i in order {
            for &d in &depends_on[i] {
                // d != i (no self-loops in a topological order), so the two rows are disjoint.
                let (from, to) = if d < i {
                    let (low, high) = bits.split_at_mut(i * words);
                    (&low[d * words..(d + 1) * words], &mut high[..words])
                } else {
                    let (low, high) = bits.split_at_mut(d * words);
                    (&high[..words], &mut low[i * words..(i + 1) * words])
                };
                for (to, from) in to.iter_mut().zip(from) {
                    *to |= *from;
                }
                to[d / 64] |= 1 << (d % 64);
            }
        }
        Self { words, bits }
    }

    /// Whether task `r` runs before task `i`.
    pub(crate) fn contains(&self, i: usize, r: usize) -> bool {
        self.bits[i * self.words + r / 64] >> (r % 64) & 1 == 1
    }
}
