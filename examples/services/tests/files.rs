//! The example workflows and goal are valid, and ask only for what the example services offer.

use std::collections::BTreeSet;

use baton_core::StepTarget;
use baton_examples::Kind;
use baton_workflow::CheckedDefinition;

fn read(path: &str) -> String {
    let full = format!("{}/../{path}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&full).unwrap_or_else(|e| panic!("{full}: {e}"))
}

/// Checks the workflow at `path` and returns its step ids with the capabilities they ask for.
fn check(path: &str, name: &str) -> Vec<(String, Vec<String>)> {
    let checked = CheckedDefinition::parse(&read(path)).unwrap_or_else(|e| panic!("{path}: {e}"));
    assert_eq!(checked.name().as_str(), name);
    let mut offered: BTreeSet<&str> = Kind::ALL.iter().flat_map(|k| k.capabilities().iter().copied()).collect();
    // The gRPC notifications service's.
    offered.insert("customer.notify");
    checked
        .definition()
        .steps
        .iter()
        .map(|step| {
            let Some(StepTarget::Query(query)) = step.target() else { panic!("{path}: step {} is pinned", step.id) };
            for capability in &query.capabilities {
                assert!(offered.contains(capability.as_str()), "{path}: no example service offers {capability}");
            }
            (step.id.to_string(), query.capabilities.clone())
        })
        .collect()
}

#[test]
fn the_order_workflow_reserves_charges_and_ships() {
    let steps = check("workflows/order.yaml", "order");
    let ids: Vec<&str> = steps.iter().map(|(id, _)| id.as_str()).collect();
    assert_eq!(ids, ["reserve", "charge", "ship"]);
}

#[test]
fn the_order_notify_workflow_ends_with_a_grpc_step() {
    let steps = check("workflows/order-notify.yaml", "order-notify");
    let ids: Vec<&str> = steps.iter().map(|(id, _)| id.as_str()).collect();
    assert_eq!(ids, ["reserve", "charge", "ship", "notify"]);
    let checked = CheckedDefinition::parse(&read("workflows/order-notify.yaml")).unwrap();
    let notify = &checked.definition().steps[3];
    let Some(baton_core::StepCall::Grpc(call)) = notify.shaped_call() else { panic!("notify calls gRPC: {notify:?}") };
    assert_eq!(call.method.as_ref().map(ToString::to_string).as_deref(), Some(baton_examples::grpc::NOTIFY));
}

#[test]
fn the_pipeline_workflow_is_a_chain_of_five() {
    let checked = CheckedDefinition::parse(&read("workflows/pipeline.yaml")).unwrap();
    let steps = &checked.definition().steps;
    assert_eq!(steps.len(), 5);
    for pair in steps.windows(2) {
        assert_eq!(pair[1].depends_on, [pair[0].id.clone()], "step {} follows step {}", pair[1].id, pair[0].id);
    }
    check("workflows/pipeline.yaml", "pipeline");
}

#[test]
fn the_goal_reads_as_a_goal_over_the_services_concepts() {
    let goal: baton_core::Goal = serde_yaml::from_str(&read("goals/ship-order.yaml")).unwrap();
    let produced: BTreeSet<&str> = Kind::ALL.iter().flat_map(|k| k.outputs().iter().copied()).collect();
    let consumed: BTreeSet<&str> = Kind::ALL.iter().flat_map(|k| k.inputs().iter().copied()).collect();
    assert!(goal.wanted.iter().all(|w| produced.contains(w.as_str())), "{goal:?}");
    assert!(goal.provided.iter().all(|p| consumed.contains(p.as_str())), "{goal:?}");
}
