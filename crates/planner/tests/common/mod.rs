//! An independent validator of compositions against the WSC rules, for the tests: simple,
//! obviously correct code that shares nothing with the planner's fast paths.

#![allow(dead_code, reason = "each test file uses the part it needs")]

use std::path::PathBuf;

use baton_planner::wsc::WscProblem;

/// A path under the shared data folder (`../shared/data` from the project root).
pub(crate) fn repo_data(path: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data").join(path)
}

/// True when a value of concept `have` satisfies `want`: `have` is `want` or below it, found
/// by walking `have`'s parents one by one.
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

/// Checks `layers` (service names) against the WSC rules: starting from the provided
/// concepts, every service of a layer must exist and have each input satisfied by a concept
/// available before the layer; the layer's outputs then become available; at the end every
/// wanted concept must be satisfied.
pub(crate) fn validate_layers(problem: &WscProblem, layers: &[Vec<String>]) -> Result<(), String> {
    let mut available: Vec<String> = problem.goal.provided.clone();
    for (number, layer) in layers.iter().enumerate() {
        let mut produced = Vec::new();
        for name in layer {
            let Some(service) = problem.services.iter().find(|s| s.id().as_str() == name) else {
                return Err(format!("layer {number}: unknown service {name}"));
            };
            for input in service.inputs() {
                if !available.iter().any(|have| satisfies(problem, have, input)) {
                    return Err(format!("layer {number}: input {input} of {name} is not available"));
                }
            }
            produced.extend(service.outputs().iter().cloned());
        }
        available.extend(produced);
    }
    for wanted in &problem.goal.wanted {
        if !available.iter().any(|have| satisfies(problem, have, wanted)) {
            return Err(format!("wanted concept {wanted} is never available"));
        }
    }
    Ok(())
}
