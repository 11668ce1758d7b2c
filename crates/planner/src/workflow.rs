//! Plans become workflow definitions the workflow engine runs.

use serde_json::{Map, Value};

use baton_core::{Goal, Plan, StepDefaults, WorkflowDefinition, WorkflowName};

use crate::catalog::Catalog;

/// A jq expression reading `key` of `base`, quoted so any concept name works.
fn field(base: &str, key: &str) -> String {
    format!("${{ {base}[{}] }}", serde_json::to_string(key).expect("strings serialize"))
}

/// The workflow that runs `plan`: one step per task, pinned to the chosen service with the
/// ranked alternatives to fail over to, its input built from the data flow (request values
/// from `.input`, others from the producing step's output), and the run's output holding each
/// wanted concept.
pub fn to_workflow(catalog: &Catalog, goal: &Goal, plan: &Plan, name: WorkflowName) -> WorkflowDefinition {
    let steps = plan
        .tasks
        .iter()
        .map(|task| {
            let mut input = Map::new();
            for edge in plan.data_flow.iter().filter(|e| e.to == task.id) {
                let source = match &edge.from {
                    None => field(".input", &edge.from_concept),
                    Some(from) => field(&format!(".steps[\"{from}\"].output"), &edge.from_concept),
                };
                input.insert(edge.to_concept.clone(), Value::String(source));
            }
            task.to_step(Value::Object(input))
        })
        .collect();
    let satisfies = |have: &str, want: &str| match (catalog.concepts.lookup(have), catalog.concepts.lookup(want)) {
        (Some(h), Some(w)) => catalog.concepts.satisfies(h, w),
        _ => have == want,
    };
    let mut output = Map::new();
    for wanted in &goal.wanted {
        let source = if let Some(p) = goal.provided.iter().find(|p| satisfies(p, wanted)) {
            field(".input", p)
        } else if let Some((task, concept)) =
            plan.tasks.iter().find_map(|t| t.outputs.iter().find(|o| satisfies(o, wanted)).map(|o| (t, o)))
        {
            field(&format!(".steps[\"{}\"].output", task.id), concept)
        } else {
            continue;
        };
        output.insert(wanted.clone(), Value::String(source));
    }
    WorkflowDefinition {
        name,
        description: format!("planned: {} wanted from {} provided", goal.wanted.len(), goal.provided.len()),
        steps,
        output: Value::Object(output),
        defaults: StepDefaults::default(),
        deadline: None,
        retention: None,
        labels: Default::default(),
    }
}
