//! The Web Services Challenge loaders (`wsc::parse_xml`, `wsc::parse_wsdl`) on any text, and
//! the planner on whatever they accept.
//!
//! Input: the files' texts separated by NUL bytes (never in XML). An odd first byte picks the
//! XML form (`taxonomy.xml`, `services.xml`, `problem.xml`), an even one the WSDL form
//! (`Taxonomy.owl`, `Services.wsdl`, `Challenge.wsdl`, then optionally
//! `Servicelevelagreements.wsla`). A problem that loads is planned: the planner must answer
//! with a plan or a typed error, and a plan must be valid by the WSC rules, checked here
//! without the planner's code (a goal the provided concepts already meet has an empty plan).

#![no_main]

use std::sync::Arc;

use baton_planner::wsc::{self, WscProblem};
use baton_planner::{Catalog, OrchestrationPlanner};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&form, rest)) = data.split_first() else { return };
    let Ok(text) = std::str::from_utf8(rest) else { return };
    let mut files = text.split('\0');
    let mut next = || files.next().unwrap_or("");
    let loaded = if form % 2 == 1 {
        let (taxonomy, services, problem) = (next(), next(), next());
        wsc::parse_xml(services, taxonomy, problem)
    } else {
        let (owl, services, challenge) = (next(), next(), next());
        let wsla = Some(next()).filter(|w| !w.is_empty());
        wsc::parse_wsdl(owl, services, challenge, wsla)
    };
    if let Ok(problem) = loaded {
        plan(&problem);
    }
});

fn plan(problem: &WscProblem) {
    let catalog = Catalog::build(Arc::new(problem.taxonomy.clone()), problem.services.iter().cloned().map(Arc::new));
    if let Ok(plan) = OrchestrationPlanner.plan(&catalog, &problem.goal) {
        let layers: Vec<Vec<String>> =
            plan.levels.iter().map(|level| level.iter().map(ToString::to_string).collect()).collect();
        if let Err(reason) = check_layers(problem, &layers) {
            panic!("the planner's plan {layers:?} is not valid: {reason}");
        }
    }
}

/// True when a value of concept `have` satisfies `want`: the same, or below it.
fn satisfies(problem: &WscProblem, have: &str, want: &str) -> bool {
    let t = &problem.taxonomy;
    match (t.id(have), t.id(want)) {
        (Some(have), Some(want)) => t.satisfies(have, want),
        _ => have == want,
    }
}

/// The WSC rules, independently of the planner: each layer's services exist and have every
/// input satisfied by what was available before the layer; at the end every wanted concept is.
fn check_layers(problem: &WscProblem, layers: &[Vec<String>]) -> Result<(), String> {
    let mut available: Vec<String> = problem.goal.provided.clone();
    for (number, layer) in (1..).zip(layers) {
        let mut produced = Vec::new();
        for name in layer {
            let service = problem
                .services
                .iter()
                .find(|s| s.id().as_str() == name)
                .ok_or_else(|| format!("layer {number}: unknown service {name}"))?;
            for input in service.inputs() {
                if !available.iter().any(|have| satisfies(problem, have, input)) {
                    return Err(format!("layer {number}: input {input} of {name} is not available"));
                }
            }
            produced.extend(service.outputs().iter().cloned());
        }
        available.extend(produced);
    }
    match problem.goal.wanted.iter().find(|w| !available.iter().any(|have| satisfies(problem, have, w))) {
        Some(wanted) => Err(format!("wanted {wanted} is not available at the end")),
        None => Ok(()),
    }
}
