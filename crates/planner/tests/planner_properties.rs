//! Property: every plan the planner returns passes the independent WSC validator, and every
//! goal it calls unsatisfiable is one that running every service cannot meet.

mod common;

use std::sync::Arc;

use baton_core::{Goal, ServiceSpec, TaxonomyBuilder};
use baton_planner::wsc::WscProblem;
use baton_planner::{Catalog, Error, OrchestrationPlanner};
use proptest::prelude::*;

const CONCEPTS: usize = 24;

fn name(c: usize) -> String {
    format!("c{c}")
}

/// A random forest: each concept's parent is an earlier concept or none.
fn forest() -> impl Strategy<Value = Vec<Option<usize>>> {
    (0..CONCEPTS)
        .map(|i| if i == 0 { Just(None).boxed() } else { proptest::option::weighted(0.7, 0..i).boxed() })
        .collect::<Vec<_>>()
}

fn concepts(max: usize) -> impl Strategy<Value = Vec<usize>> {
    proptest::collection::vec(0..CONCEPTS, 0..=max)
}

fn problem() -> impl Strategy<Value = WscProblem> {
    (
        forest(),
        proptest::collection::vec((concepts(3), concepts(3).prop_filter("an output", |o| !o.is_empty())), 1..14),
        concepts(3),
        concepts(3).prop_filter("a wanted concept", |w| !w.is_empty()),
    )
        .prop_map(|(parents, services, provided, wanted)| {
            let mut taxonomy = TaxonomyBuilder::default();
            for (c, parent) in parents.iter().enumerate() {
                taxonomy.add(&name(c), parent.map(name).as_deref()).unwrap();
            }
            let services = services
                .into_iter()
                .enumerate()
                .map(|(i, (inputs, outputs))| {
                    let doc = serde_json::json!({
                        "id": format!("s{i:02}"), "endpoint": {"protocol": "worker", "queue": "q"},
                        "inputs": inputs.into_iter().map(name).collect::<Vec<_>>(),
                        "outputs": outputs.into_iter().map(name).collect::<Vec<_>>(),
                    });
                    ServiceSpec::from_json(&doc.to_string()).unwrap()
                })
                .collect();
            let goal = Goal {
                provided: provided.into_iter().map(name).collect(),
                wanted: wanted.into_iter().map(name).collect(),
                ..Goal::default()
            };
            WscProblem { taxonomy: taxonomy.build().unwrap(), services, goal, known_solution: None }
        })
}

/// Runs every service that can run, layer after layer, until the goal is met: the minimum
/// number of layers, or `None` when it is never met.
fn minimum_layers(problem: &WscProblem) -> Option<usize> {
    let t = &problem.taxonomy;
    let met = |have: &[String], want: &str| have.iter().any(|h| t.satisfies(t.id(h).unwrap(), t.id(want).unwrap()));
    let mut have: Vec<String> = problem.goal.provided.clone();
    for layers in 0..=problem.services.len() {
        if problem.goal.wanted.iter().all(|w| met(&have, w)) {
            return Some(layers);
        }
        let runnable: Vec<&ServiceSpec> =
            problem.services.iter().filter(|s| s.inputs().iter().all(|i| met(&have, i))).collect();
        for s in runnable {
            have.extend(s.outputs().iter().cloned());
        }
    }
    None
}

/// Runs every service that can run, again and again, and says whether the goal is then met.
fn reachable_by_brute_force(problem: &WscProblem) -> bool {
    let t = &problem.taxonomy;
    let mut have: Vec<String> = problem.goal.provided.clone();
    let met = |have: &[String], want: &str| have.iter().any(|h| t.satisfies(t.id(h).unwrap(), t.id(want).unwrap()));
    loop {
        let before = have.len();
        for s in &problem.services {
            if s.inputs().iter().all(|i| met(&have, i)) {
                for o in s.outputs() {
                    if !have.contains(o) {
                        have.push(o.clone());
                    }
                }
            }
        }
        if have.len() == before {
            return problem.goal.wanted.iter().all(|w| met(&have, w));
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 4096, ..ProptestConfig::default() })]

    #[test]
    fn plans_pass_the_independent_validator(problem in problem()) {
        let catalog = Catalog::build(
            Arc::new(problem.taxonomy.clone()),
            problem.services.iter().cloned().map(Arc::new),
        );
        match OrchestrationPlanner.plan(&catalog, &problem.goal) {
            Ok(plan) => {
                let layers: Vec<Vec<String>> =
                    plan.levels.iter().map(|l| l.iter().map(|s| s.to_string()).collect()).collect();
                prop_assert_eq!(common::validate_layers(&problem, &layers), Ok(()));
                prop_assert!(reachable_by_brute_force(&problem));
                prop_assert_eq!(Some(plan.levels.len()), minimum_layers(&problem), "not the minimum number of layers");
            }
            Err(Error::Unsatisfiable { missing }) => {
                prop_assert!(!missing.is_empty());
                prop_assert!(!reachable_by_brute_force(&problem), "planner gave up on a reachable goal");
            }
            Err(other) => prop_assert!(false, "unexpected error {other}"),
        }
    }
}
