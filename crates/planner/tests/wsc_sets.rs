//! The Web Services Challenge sets: WSC'08 01-08 with the minimum number of layers and few
//! services, Set09 and Set10 reported unsatisfiable with the missing concept named, and WSC'09
//! 01-02 at the minimum response time.
#![allow(clippy::print_stderr, reason = "the test reports per-set figures for the log")]

mod common;

use std::sync::Arc;

use baton_core::Plan;
use baton_planner::wsc::{self, WscProblem};
use baton_planner::{Catalog, Error, OrchestrationPlanner};

/// (minimum layers, services in the best known shortest composition), data/README.md.
const WSC08: [(usize, usize); 8] = [(3, 10), (3, 5), (23, 40), (5, 10), (8, 20), (7, 42), (12, 20), (20, 30)];

fn plan(problem: &WscProblem) -> Result<Plan, Error> {
    let catalog = Catalog::build(Arc::new(problem.taxonomy.clone()), problem.services.iter().cloned().map(Arc::new));
    OrchestrationPlanner.plan(&catalog, &problem.goal)
}

fn layers(plan: &Plan) -> Vec<Vec<String>> {
    plan.levels.iter().map(|l| l.iter().map(|s| s.to_string()).collect()).collect()
}

#[test]
fn wsc08_sets_get_valid_compositions_with_the_minimum_layers() {
    let mut no_worse = 0;
    for (set, &(min_layers, best_known)) in (1..).zip(&WSC08) {
        let problem = wsc::load_dir(&common::repo_data(&format!("wsc08/TESTSET/Set{set:02}MetaData"))).unwrap();
        let plan = plan(&problem).unwrap_or_else(|e| panic!("set {set:02}: {e}"));
        common::validate_layers(&problem, &layers(&plan)).unwrap_or_else(|e| panic!("set {set:02}: {e}"));
        assert_eq!(plan.levels.len(), min_layers, "set {set:02}: layers");
        eprintln!(
            "set {set:02}: {} layers, {} services (best known {best_known})",
            plan.levels.len(),
            plan.tasks.len()
        );
        if plan.tasks.len() <= best_known {
            no_worse += 1;
        }
    }
    assert!(no_worse >= 6, "only {no_worse} of 8 sets are no worse than the best known size");
}

#[test]
fn sets_09_and_10_are_unsatisfiable_and_say_what_is_missing() {
    for set in [9, 10] {
        let problem = wsc::load_dir(&common::repo_data(&format!("wsc08/TESTSET/Set{set:02}MetaData"))).unwrap();
        let Err(Error::Unsatisfiable { missing }) = plan(&problem) else {
            panic!("set {set:02} should be unsatisfiable")
        };
        assert!(!missing.is_empty());
        let t = &problem.taxonomy;
        for m in &missing {
            // The root cause really is missing: nothing provides or outputs it, or anything under it.
            let root = t.id(m.root()).expect("a taxonomy concept");
            let covers = |c: &String| t.id(c).is_some_and(|c| t.satisfies(c, root));
            assert!(!problem.goal.provided.iter().any(covers), "set {set:02}: {} is provided", m.root());
            assert!(!problem.services.iter().any(|s| s.outputs().iter().any(covers)), "set {set:02}: {m}");
        }
    }
}

/// The minimum response time by a fixpoint over concepts, independent of the planner's search:
/// a concept's time is the least, over services producing it or something more specific, of
/// the latest time among their inputs plus their response time.
fn minimum_response_time(problem: &WscProblem) -> f64 {
    let t = &problem.taxonomy;
    // `had[c]`: the earliest time at which `c` or anything more specific is had.
    let mut had: Vec<f64> = vec![f64::INFINITY; t.len()];
    let offer = |had: &mut Vec<f64>, concept: &str, at: f64| -> bool {
        let mut changed = false;
        let mut c = t.id(concept);
        while let Some(id) = c {
            if at < had[id.index()] {
                had[id.index()] = at;
                changed = true;
            }
            c = t.parent(id);
        }
        changed
    };
    for p in &problem.goal.provided {
        offer(&mut had, p, 0.0);
    }
    let at = |had: &[f64], want: &str| had[t.id(want).unwrap().index()];
    loop {
        let mut changed = false;
        for s in &problem.services {
            let ready = s.inputs().iter().map(|i| at(&had, i)).fold(0.0, f64::max);
            if ready.is_finite() {
                for o in s.outputs() {
                    changed |= offer(&mut had, o, ready + s.qos().latency_p50_ms);
                }
            }
        }
        if !changed {
            return problem.goal.wanted.iter().map(|w| at(&had, w)).fold(0.0, f64::max);
        }
    }
}

#[test]
fn wsc09_sets_reach_the_minimum_response_time() {
    for set in ["Testset01", "Testset02", "example-wsla"] {
        let problem = wsc::load_dir(&common::repo_data(&format!("wsc09/{set}"))).unwrap();
        let plan = plan(&problem).unwrap_or_else(|e| panic!("set {set:02}: {e}"));
        common::validate_layers(&problem, &layers(&plan)).unwrap_or_else(|e| panic!("set {set:02}: {e}"));
        let best = minimum_response_time(&problem);
        assert!(
            (plan.predicted.latency_ms - best).abs() < 1e-6,
            "set {set:02}: {} vs {best}",
            plan.predicted.latency_ms
        );
        eprintln!(
            "wsc09 {set}: response time {:.2} ms, throughput {:.2}/s, {} layers, {} services",
            plan.predicted.latency_ms,
            plan.predicted.throughput_rps,
            plan.levels.len(),
            plan.tasks.len()
        );
    }
}
