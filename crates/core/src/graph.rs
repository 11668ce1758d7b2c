//! The dependency graph of a workflow's steps, checked once by one rule: unique ids, known
//! dependencies and fallbacks, no cycle. The workflow engine, the executor and the API fakes
//! all check their steps through [`StepGraph::check`].

use std::collections::{BTreeSet, HashMap};

use crate::ids::StepId;
use crate::workflow::{ErrorPolicy, Step};

/// Why steps do not form a runnable graph.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum GraphError {
    /// Two steps share an id.
    #[error("step {0:?} appears twice")]
    DuplicateStep(StepId),
    /// A step depends on a step that does not exist.
    #[error("step {step:?} depends on unknown step {unknown:?}")]
    UnknownDependency {
        /// The step.
        step: StepId,
        /// The missing dependency.
        unknown: StepId,
    },
    /// A step falls back to a step that does not exist.
    #[error("step {step:?} falls back to unknown step {fallback:?}")]
    UnknownFallback {
        /// The step.
        step: StepId,
        /// The fallback named.
        fallback: StepId,
    },
    /// A step falls back to itself: its own failure cannot be its recovery.
    #[error("step {0:?} falls back to itself")]
    SelfFallback(StepId),
    /// A chain of fallbacks loops (`b` falls back to `c`, `c` to `b`): the chain from the
    /// first step that starts a loop, the repeated step at the end.
    #[error("fallbacks form a loop: {}", .0.iter().map(StepId::as_str).collect::<Vec<_>>().join(" -> "))]
    FallbackLoop(Vec<StepId>),
    /// The dependencies loop; the steps of one cycle in run order, starting from the step
    /// defined first, which is repeated at the end.
    #[error("steps form a cycle: {}", .0.iter().map(StepId::as_str).collect::<Vec<_>>().join(" -> "))]
    Cycle(Vec<StepId>),
}

/// What the graph check reads of one step.
#[derive(Debug, Clone, Copy)]
pub struct StepLinks<'a> {
    /// Its id.
    pub id: &'a StepId,
    /// The steps that must succeed first.
    pub depends_on: &'a [StepId],
    /// The step that runs in its place when it fails, if any.
    pub fallback: Option<&'a StepId>,
}

impl<'a> StepLinks<'a> {
    /// The links of a step whose error policy is `on_error`.
    pub fn new(id: &'a StepId, depends_on: &'a [StepId], on_error: &'a ErrorPolicy) -> Self {
        let fallback = match on_error {
            ErrorPolicy::Fallback(fallback) => Some(fallback),
            _ => None,
        };
        Self { id, depends_on, fallback }
    }
}

impl<'a> From<&'a Step> for StepLinks<'a> {
    fn from(step: &'a Step) -> Self {
        Self::new(&step.id, &step.depends_on, &step.on_error)
    }
}

/// Steps that passed the check, by index in the order they were given: each step's
/// dependencies and dependents (each named once) and a topological order.
#[derive(Debug, Clone, Default)]
pub struct StepGraph {
    index: HashMap<StepId, usize>,
    dependencies: Vec<Vec<usize>>,
    dependents: Vec<Vec<usize>>,
    fallbacks: Vec<Option<usize>>,
    order: Vec<usize>,
}

impl StepGraph {
    /// Checks `steps`: unique ids, then per step known dependencies and a known fallback
    /// other than itself, then no fallback loop, then no cycle (Kahn's algorithm; when steps are left over, a
    /// depth-first walk names one cycle).
    pub fn check<'a>(steps: impl IntoIterator<Item = StepLinks<'a>>) -> Result<Self, GraphError> {
        let steps: Vec<StepLinks<'a>> = steps.into_iter().collect();
        let mut index = HashMap::with_capacity(steps.len());
        for (i, step) in steps.iter().enumerate() {
            if index.insert(step.id.clone(), i).is_some() {
                return Err(GraphError::DuplicateStep(step.id.clone()));
            }
        }
        for step in &steps {
            if let Some(unknown) = step.depends_on.iter().find(|d| !index.contains_key(*d)) {
                return Err(GraphError::UnknownDependency { step: step.id.clone(), unknown: unknown.clone() });
            }
            if let Some(fallback) = step.fallback {
                if fallback == step.id {
                    return Err(GraphError::SelfFallback(step.id.clone()));
                }
                if !index.contains_key(fallback) {
                    return Err(GraphError::UnknownFallback { step: step.id.clone(), fallback: fallback.clone() });
                }
            }
        }
        let dependencies: Vec<Vec<usize>> = steps
            .iter()
            .map(|step| step.depends_on.iter().map(|d| index[d]).collect::<BTreeSet<usize>>().into_iter().collect())
            .collect();
        let fallbacks: Vec<Option<usize>> = steps.iter().map(|s| s.fallback.map(|f| index[f])).collect();
        if let Some(chain) = fallback_loop(&fallbacks) {
            return Err(GraphError::FallbackLoop(chain.into_iter().map(|i| steps[i].id.clone()).collect()));
        }
        let mut dependents = vec![Vec::new(); steps.len()];
        for (i, deps) in dependencies.iter().enumerate() {
            for &d in deps {
                dependents[d].push(i);
            }
        }
        let mut indegree: Vec<usize> = dependencies.iter().map(Vec::len).collect();
        let mut ready: Vec<usize> = (0..steps.len()).filter(|&i| indegree[i] == 0).rev().collect();
        let mut order = Vec::with_capacity(steps.len());
        while let Some(i) = ready.pop() {
            order.push(i);
            for &d in &dependents[i] {
                indegree[d] -= 1;
                if indegree[d] == 0 {
                    ready.push(d);
                }
            }
        }
        if order.len() < steps.len() {
            return Err(GraphError::Cycle(cycle(&steps, &index, &indegree)));
        }
        Ok(Self { index, dependencies, dependents, fallbacks, order })
    }

    /// How many steps there are.
    pub fn len(&self) -> usize {
        self.order.len()
    }

    /// Whether there are no steps.
    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }

    /// The index of the step `id`, if there is one.
    pub fn index(&self, id: &StepId) -> Option<usize> {
        self.index.get(id).copied()
    }

    /// The steps step `i` depends on, each once, in index order.
    pub fn dependencies(&self, i: usize) -> &[usize] {
        &self.dependencies[i]
    }

    /// The steps that depend on step `i`, each once, in index order.
    pub fn dependents(&self, i: usize) -> &[usize] {
        &self.dependents[i]
    }

    /// The step that runs in step `i`'s place when it fails, if any.
    pub fn fallback(&self, i: usize) -> Option<usize> {
        self.fallbacks[i]
    }

    /// Step indexes in an order where every step comes after its dependencies.
    pub fn order(&self) -> &[usize] {
        &self.order
    }
}

/// The first chain of fallbacks that comes back to a step already on it, if any. Each step
/// has at most one fallback, so following them from every start finds every loop.
fn fallback_loop(fallbacks: &[Option<usize>]) -> Option<Vec<usize>> {
    for start in 0..fallbacks.len() {
        let mut chain = vec![start];
        let mut at = start;
        while let Some(next) = fallbacks[at] {
            chain.push(next);
            if chain[..chain.len() - 1].contains(&next) {
                return Some(chain);
            }
            at = next;
        }
    }
    None
}

/// One cycle among the steps Kahn's algorithm left over (`indegree > 0`): every such step
/// has a leftover dependency, so walking them must revisit one.
fn cycle(steps: &[StepLinks<'_>], index: &HashMap<StepId, usize>, indegree: &[usize]) -> Vec<StepId> {
    let start = (0..steps.len()).find(|&i| indegree[i] > 0).expect("a step left over");
    let mut path = vec![start];
    let mut on_path = HashMap::from([(start, 0usize)]);
    let mut at = start;
    loop {
        let next =
            steps[at].depends_on.iter().map(|d| index[d]).find(|&d| indegree[d] > 0).expect("a leftover dependency");
        if let Some(&from) = on_path.get(&next) {
            // Written in run order (each step before the ones that depend on it), starting
            // from the step defined first.
            let mut members: Vec<usize> = path[from..].iter().rev().copied().collect();
            let first = (0..members.len()).min_by_key(|&i| members[i]).expect("a cycle has steps");
            members.rotate_left(first);
            let mut cycle: Vec<StepId> = members.iter().map(|&i| steps[i].id.clone()).collect();
            cycle.push(cycle[0].clone());
            return cycle;
        }
        on_path.insert(next, path.len());
        path.push(next);
        at = next;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(names: &[&str]) -> Vec<StepId> {
        names.iter().map(|n| StepId::new(n).expect("a valid id")).collect()
    }

    /// A step as `(id, depends_on, fallback)`.
    type Links<'a> = (&'a str, &'a [&'a str], Option<&'a str>);

    fn check(steps: &[Links<'_>]) -> Result<StepGraph, GraphError> {
        let owned: Vec<(StepId, Vec<StepId>, Option<StepId>)> = steps
            .iter()
            .map(|(id, deps, fallback)| (ids(&[id])[0].clone(), ids(deps), fallback.map(|f| ids(&[f])[0].clone())))
            .collect();
        StepGraph::check(owned.iter().map(|(id, depends_on, fallback)| StepLinks {
            id,
            depends_on,
            fallback: fallback.as_ref(),
        }))
    }

    #[test]
    fn each_broken_rule_is_named() {
        let cases: [(&[Links<'_>], &str); 7] = [
            (&[("a", &[], None), ("a", &[], None)], r#"step "a" appears twice"#),
            (&[("a", &["b"], None)], r#"step "a" depends on unknown step "b""#),
            (&[("a", &[], Some("z"))], r#"step "a" falls back to unknown step "z""#),
            (&[("a", &[], Some("a"))], r#"step "a" falls back to itself"#),
            (&[("a", &[], None), ("b", &[], Some("c")), ("c", &[], Some("b"))], "fallbacks form a loop: b -> c -> b"),
            (
                &[("a", &[], Some("b")), ("b", &[], Some("c")), ("c", &[], Some("b"))],
                "fallbacks form a loop: a -> b -> c -> b",
            ),
            (
                &[("a", &["c"], None), ("b", &["a"], None), ("c", &["b"], None), ("d", &[], None)],
                "steps form a cycle: a -> b -> c -> a",
            ),
        ];
        for (steps, expected) in cases {
            assert_eq!(check(steps).unwrap_err().to_string(), expected, "{steps:?}");
        }
    }

    #[test]
    fn a_valid_graph_orders_steps_after_their_dependencies() {
        let graph = check(&[("c", &["a", "b", "a"], None), ("a", &[], None), ("b", &["a"], None)]).unwrap();
        assert_eq!(graph.order(), [1, 2, 0]);
        assert_eq!((graph.dependencies(0), graph.dependents(1)), (&[1, 2][..], &[0, 2][..]));
        assert_eq!((graph.index(&ids(&["b"])[0]), graph.len()), (Some(2), 3));
    }
}
