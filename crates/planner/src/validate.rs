//! `validate_plan`: proves a plan complete, consistent and feasible against a catalog.

use std::collections::{HashMap, HashSet};

use baton_core::{Goal, Plan, StepId};
use petgraph::graph::DiGraph;

use crate::catalog::Catalog;
use crate::error::{Error, Result};

fn invalid(reason: String) -> Error {
    Error::InvalidPlan(reason)
}

pub(crate) fn plan(catalog: &Catalog, goal: &Goal, plan: &Plan) -> Result<()> {
    let concepts = &catalog.concepts;
    let id_of = |name: &str| concepts.lookup(name);
    let satisfies = |have: &str, want: &str| match (id_of(have), id_of(want)) {
        (Some(h), Some(w)) => concepts.satisfies(h, w),
        _ => have == want,
    };
    let provides = |want: &str| goal.provided.iter().any(|p| satisfies(p, want));

    // Feasible: every service is in the catalog (only healthy services are), with the task's
    // declared inputs and outputs.
    let mut tasks = HashMap::new();
    for task in &plan.tasks {
        let Some(spec) = catalog.service(&task.service) else {
            return Err(invalid(format!(
                "task {} uses service {}, which is not registered or not healthy",
                task.id, task.service
            )));
        };
        if spec.inputs() != task.inputs.as_slice() || spec.outputs() != task.outputs.as_slice() {
            return Err(invalid(format!(
                "task {} does not match the inputs and outputs of service {}",
                task.id, task.service
            )));
        }
        if tasks.insert(&task.id, task).is_some() {
            return Err(invalid(format!("task {} appears twice", task.id)));
        }
    }

    // Consistent: dependencies exist and form no cycle.
    let mut graph = DiGraph::<&StepId, ()>::new();
    let nodes: HashMap<&StepId, _> = plan.tasks.iter().map(|t| (&t.id, graph.add_node(&t.id))).collect();
    for task in &plan.tasks {
        for dep in &task.depends_on {
            let Some(&from) = nodes.get(dep) else {
                return Err(invalid(format!("task {} depends on unknown task {dep}", task.id)));
            };
            graph.add_edge(from, nodes[&task.id], ());
        }
    }
    if let Err(cycle) = petgraph::algo::toposort(&graph, None) {
        return Err(invalid(format!("the dependencies form a cycle through task {}", graph[cycle.node_id()])));
    }

    // Consistent: every data-flow edge is type-correct and follows a dependency.
    let mut fed: HashSet<(&StepId, &str)> = HashSet::new();
    for edge in &plan.data_flow {
        let Some(to) = tasks.get(&edge.to) else {
            return Err(invalid(format!("data flow into unknown task {}", edge.to)));
        };
        if !to.inputs.contains(&edge.to_concept) {
            return Err(invalid(format!(
                "data flow into task {} names {}, which is not one of its inputs",
                edge.to, edge.to_concept
            )));
        }
        if !satisfies(&edge.from_concept, &edge.to_concept) {
            return Err(invalid(format!(
                "data flow into task {}: {} does not satisfy {}",
                edge.to, edge.from_concept, edge.to_concept
            )));
        }
        match &edge.from {
            None if !goal.provided.contains(&edge.from_concept) => {
                return Err(invalid(format!(
                    "data flow into task {} takes {} from the request, which does not provide it",
                    edge.to, edge.from_concept
                )));
            }
            None => {}
            Some(from) => {
                let Some(source) = tasks.get(from) else {
                    return Err(invalid(format!("data flow from unknown task {from}")));
                };
                if !source.outputs.contains(&edge.from_concept) {
                    return Err(invalid(format!(
                        "data flow from task {from} names {}, which it does not output",
                        edge.from_concept
                    )));
                }
                if !to.depends_on.contains(from) {
                    return Err(invalid(format!(
                        "task {} takes data from task {from} without depending on it",
                        edge.to
                    )));
                }
            }
        }
        fed.insert((&edge.to, edge.to_concept.as_str()));
    }

    // Complete: every input has a source, every wanted concept is met.
    for task in &plan.tasks {
        if let Some(input) = task.inputs.iter().find(|i| !fed.contains(&(&task.id, i.as_str()))) {
            return Err(invalid(format!("input {input} of task {} has no source", task.id)));
        }
    }
    let mut useful: Vec<&StepId> = Vec::new();
    for wanted in &goal.wanted {
        if provides(wanted) {
            continue;
        }
        let producers: Vec<&StepId> =
            plan.tasks.iter().filter(|t| t.outputs.iter().any(|o| satisfies(o, wanted))).map(|t| &t.id).collect();
        if producers.is_empty() {
            return Err(invalid(format!("wanted concept {wanted} is produced by no task and not provided")));
        }
        useful.extend(producers);
    }

    // Consistent: no dangling task; every task feeds, directly or not, a task that meets a
    // wanted concept, or is one the constraints include.
    useful.extend(plan.tasks.iter().filter(|t| goal.constraints.include_services.contains(&t.service)).map(|t| &t.id));
    let mut reached: HashSet<&StepId> = HashSet::new();
    while let Some(id) = useful.pop() {
        if reached.insert(id) {
            useful.extend(tasks[id].depends_on.iter());
        }
    }
    if let Some(task) = plan.tasks.iter().find(|t| !reached.contains(&t.id)) {
        return Err(invalid(format!("task {} contributes to no wanted concept", task.id)));
    }

    // Consistent: the levels list every task once, after its dependencies.
    let mut level_of: HashMap<&StepId, usize> = HashMap::new();
    for (l, level) in plan.levels.iter().enumerate() {
        for id in level {
            if !tasks.contains_key(id) || level_of.insert(id, l).is_some() {
                return Err(invalid(format!("level {l} lists task {id}, which is unknown or listed twice")));
            }
        }
    }
    for task in &plan.tasks {
        let Some(&l) = level_of.get(&task.id) else {
            return Err(invalid(format!("task {} is in no level", task.id)));
        };
        if let Some(dep) = task.depends_on.iter().find(|d| level_of[d] >= l) {
            return Err(invalid(format!("task {} is in level {l}, not after its dependency {dep}", task.id)));
        }
    }
    Ok(())
}
