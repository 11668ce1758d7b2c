//! An independent validator of compositions against the WSC rules, for the tests: simple,
//! obviously correct code that shares nothing with the planner. Subsumption walks
//! `Taxonomy::parent` one step at a time rather than using `Taxonomy::satisfies`, the
//! planner's constant-time path.

#![allow(dead_code, reason = "each test file uses the part it needs")]

use std::path::PathBuf;

use baton_planner::wsc::WscProblem;

/// A path under the repository's `data/` folder (see its README for the sets' sources).
pub(crate) fn repo_data(path: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../data").join(path)
}

/// True when a value of concept `have` satisfies `want`: `have` is `want` or below it, found
/// by walking `have`'s parents one by one. A name the taxonomy lacks satisfies only itself.
fn satisfies(problem: &WscProblem, have: &str, want: &str) -> bool {
    let t = &problem.taxonomy;
    let (Some(mut at), Some(want)) = (t.id(have), t.id(want)) else { return have == want };
    loop {
        if at == want {
            return true;
        }
        match t.parent(at) {
            Some(parent) => at = parent,
            None => return false,
        }
    }
}

/// Checks `layers` of service names against the WSC rules: starting from the provided
/// concepts, every service of a layer must exist and have each input satisfied by a concept
/// available before the layer (so not by an output of its own layer); then the layer's
/// outputs become available; at the end every wanted concept must be satisfied. The error
/// names the layer (counted from 1), the service and the concept.
pub(crate) fn validate_layers(problem: &WscProblem, layers: &[Vec<String>]) -> Result<(), String> {
    let available_for = |available: &[String], want: &str| available.iter().any(|have| satisfies(problem, have, want));
    let mut available: Vec<String> = problem.goal.provided.clone();
    for (number, layer) in (1..).zip(layers) {
        let mut produced = Vec::new();
        for name in layer {
            let Some(service) = problem.services.iter().find(|s| s.id().as_str() == name) else {
                return Err(format!("layer {number}: unknown service {name}"));
            };
            for input in service.inputs() {
                if !available_for(&available, input) {
                    return Err(format!("layer {number}: input {input} of service {name} is not available"));
                }
            }
            produced.extend(service.outputs().iter().cloned());
        }
        available.extend(produced);
    }
    for wanted in &problem.goal.wanted {
        if !available_for(&available, wanted) {
            return Err(format!("wanted concept {wanted} is not available after layer {}", layers.len()));
        }
    }
    Ok(())
}
