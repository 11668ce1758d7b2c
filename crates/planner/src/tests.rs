use std::sync::Arc;

use baton_core::{
    AuthScheme, Constraints, DataFlow, Goal, Objective, Plan, Protocol, SecurityRequirements, ServiceId, ServiceSpec,
    StepId, TaxonomyBuilder, WorkflowName,
};

use crate::{Catalog, Error, OrchestrationPlanner, to_workflow};

/// A taxonomy: `thing > document > {invoice, receipt}`, and roots `a`..`h`, `order`, `card`.
fn catalog(services: &[ServiceSpec]) -> Catalog {
    let mut t = TaxonomyBuilder::default();
    t.add("thing", None).unwrap();
    t.add("document", Some("thing")).unwrap();
    t.add("invoice", Some("document")).unwrap();
    t.add("receipt", Some("document")).unwrap();
    for root in ["a", "b", "c", "d", "e", "f", "g", "h", "order", "card"] {
        t.add(root, None).unwrap();
    }
    Catalog::build(Arc::new(t.build().unwrap()), services.iter().cloned().map(Arc::new))
}

/// A service with QoS `(latency_ms, cost, throughput_rps, availability)`.
fn svc(id: &str, inputs: &[&str], outputs: &[&str], qos: (f64, f64, f64, f64)) -> ServiceSpec {
    ServiceSpec::from_json(
        &serde_json::json!({
            "id": id, "endpoint": {"protocol": "http", "url": format!("http://127.0.0.1:1/{id}")},
            "inputs": inputs, "outputs": outputs,
            "qos": {"latency_p50_ms": qos.0, "latency_p99_ms": qos.0, "cost": qos.1, "throughput_rps": qos.2, "availability": qos.3},
        })
        .to_string(),
    )
    .unwrap()
}

fn plain(id: &str, inputs: &[&str], outputs: &[&str]) -> ServiceSpec {
    svc(id, inputs, outputs, (10.0, 1.0, 100.0, 0.99))
}

fn goal(provided: &[&str], wanted: &[&str]) -> Goal {
    Goal {
        provided: provided.iter().map(|s| s.to_string()).collect(),
        wanted: wanted.iter().map(|s| s.to_string()).collect(),
        ..Goal::default()
    }
}

fn levels(plan: &Plan) -> Vec<Vec<String>> {
    plan.levels.iter().map(|l| l.iter().map(|s| s.to_string()).collect()).collect()
}

fn check(services: &[ServiceSpec], goal: &Goal, expected: &[&[&str]]) -> Plan {
    let catalog = catalog(services);
    let plan = OrchestrationPlanner.plan(&catalog, goal).unwrap_or_else(|e| panic!("{e}"));
    let want: Vec<Vec<String>> = expected.iter().map(|l| l.iter().map(|s| s.to_string()).collect()).collect();
    assert_eq!(levels(&plan), want);
    OrchestrationPlanner.validate_plan(&catalog, goal, &plan).unwrap();
    plan
}

fn error(services: &[ServiceSpec], goal: &Goal) -> Error {
    OrchestrationPlanner.plan(&catalog(services), goal).unwrap_err()
}

#[test]
fn independent_branches_run_in_parallel_and_join() {
    let services = [plain("left", &["a"], &["b"]), plain("right", &["a"], &["c"]), plain("join", &["b", "c"], &["d"])];
    let plan = check(&services, &goal(&["a"], &["d"]), &[&["left", "right"], &["join"]]);
    let join = plan.tasks.iter().find(|t| t.id.as_str() == "join").unwrap();
    assert_eq!(join.depends_on, [StepId::new("left").unwrap(), StepId::new("right").unwrap()]);
    assert!(plan.data_flow.contains(&DataFlow {
        from: None,
        from_concept: "a".into(),
        to: StepId::new("left").unwrap(),
        to_concept: "a".into()
    }));
    assert_eq!(plan.predicted.latency_ms, 20.0);
    assert_eq!(plan.predicted.cost, 3.0);
}

#[test]
fn fewest_layers_win_then_fewest_services() {
    // Three layers through `b` and `c`, or two through `wide` which outputs both `e` parts.
    let services = [
        plain("step1", &["a"], &["b"]),
        plain("step2", &["b"], &["c"]),
        plain("step3", &["c"], &["e"]),
        plain("shortcut", &["a"], &["d"]),
        plain("finish", &["d"], &["e"]),
        // One service covering both wanted concepts beats two that cover one each.
        plain("both", &["a"], &["f", "g"]),
        plain("only-f", &["a"], &["f"]),
        plain("only-g", &["a"], &["g"]),
    ];
    let g = Goal { objective: Objective::Cost, ..goal(&["a"], &["e", "f", "g"]) };
    check(&services, &g, &[&["both", "shortcut"], &["finish"]]);
}

#[test]
fn a_latency_objective_takes_the_faster_path_even_with_more_layers() {
    let services = [
        svc("slow", &["a"], &["b"], (500.0, 1.0, 10.0, 1.0)),
        svc("quick1", &["a"], &["c"], (10.0, 1.0, 10.0, 1.0)),
        svc("quick2", &["c"], &["b"], (10.0, 1.0, 10.0, 1.0)),
    ];
    let plan = check(&services, &goal(&["a"], &["b"]), &[&["quick1"], &["quick2"]]);
    assert_eq!(plan.predicted.latency_ms, 20.0);
}

#[test]
fn equivalent_services_are_ranked_as_alternatives_and_ties_break_by_id() {
    let services = [
        svc("beta", &["a"], &["b"], (10.0, 1.0, 10.0, 1.0)),
        svc("alpha", &["a"], &["b"], (10.0, 1.0, 10.0, 1.0)),
        svc("slower", &["a"], &["b"], (20.0, 1.0, 10.0, 1.0)),
    ];
    let plan = check(&services, &goal(&["a"], &["b"]), &[&["alpha"]]);
    let ids: Vec<&str> = plan.tasks[0].alternatives.iter().map(ServiceId::as_str).collect();
    assert_eq!(ids, ["beta", "slower"]);
}

#[test]
fn objectives_choose_among_equivalents() {
    let services = [
        svc("fast", &["a"], &["b"], (5.0, 9.0, 10.0, 1.0)),
        svc("cheap", &["a"], &["b"], (50.0, 1.0, 20.0, 1.0)),
        svc("wide", &["a"], &["b"], (80.0, 5.0, 900.0, 1.0)),
    ];
    let with = |objective| Goal { objective, ..goal(&["a"], &["b"]) };
    check(&services, &with(Objective::Latency), &[&["fast"]]);
    check(&services, &with(Objective::Cost), &[&["cheap"]]);
    let plan = check(&services, &with(Objective::Throughput), &[&["wide"]]);
    assert_eq!(plan.predicted.throughput_rps, 900.0);
}

#[test]
fn subsumption_lets_a_specific_output_feed_a_general_input() {
    let services = [plain("bill", &["order"], &["invoice"]), plain("file", &["document"], &["receipt"])];
    let plan = check(&services, &goal(&["order"], &["receipt"]), &[&["bill"], &["file"]]);
    let edge = plan.data_flow.iter().find(|e| e.to.as_str() == "file").unwrap();
    assert_eq!((edge.from_concept.as_str(), edge.to_concept.as_str()), ("invoice", "document"));
    // A general output does not satisfy a specific input.
    let err = error(&[plain("vague", &["order"], &["document"])], &goal(&["order"], &["invoice"]));
    assert!(matches!(err, Error::Unsatisfiable { .. }), "{err}");
}

#[test]
fn cycles_in_the_service_graph_are_harmless() {
    let services = [plain("there", &["a"], &["b"]), plain("back", &["b"], &["a"]), plain("out", &["b"], &["c"])];
    check(&services, &goal(&["a"], &["c"]), &[&["there"], &["out"]]);
}

#[test]
fn empty_goals_and_goals_already_met() {
    assert_eq!(error(&[plain("x", &["a"], &["b"])], &goal(&["a"], &[])), Error::EmptyGoal);
    let plan = check(&[plain("x", &["a"], &["b"])], &goal(&["invoice"], &["document"]), &[]);
    assert!(plan.tasks.is_empty() && plan.data_flow.is_empty());
    assert_eq!(plan.predicted.availability, 1.0);
}

#[test]
fn unsatisfiable_goals_name_the_missing_concept() {
    let services = [plain("make-c", &["a", "b"], &["c"]), plain("make-b", &["d"], &["b"])];
    let err = error(&services, &goal(&["a"], &["c"]));
    let Error::Unsatisfiable { missing } = &err else { panic!("{err}") };
    assert_eq!(missing.len(), 1);
    assert_eq!(missing[0].root(), "d");
    assert_eq!(
        err.to_string(),
        "unsatisfiable: wanted c needs b (an input of make-c) needs d (an input of make-b), \
         which no usable service outputs and the request does not provide"
    );
    let err = error(&services, &goal(&["a"], &["ghost"]));
    assert_eq!(
        err.to_string(),
        "unsatisfiable: wanted ghost, which no usable service outputs and the request does not provide"
    );
}

fn constrained(constraints: Constraints) -> Goal {
    Goal { constraints, ..goal(&["a"], &["b"]) }
}

fn id(s: &str) -> ServiceId {
    ServiceId::new(s).unwrap()
}

#[test]
fn each_constraint_kind_is_applied() {
    let mut secure = svc("secure", &["a"], &["b"], (30.0, 3.0, 10.0, 0.999)).into_definition();
    secure.security.auth_schemes = vec![AuthScheme::Mtls];
    secure.security.compliance = vec!["pci-dss".into()];
    secure.endpoint =
        baton_core::Endpoint::Grpc { url: "http://127.0.0.1:2".into(), method: None, descriptor_set: None };
    let secure = ServiceSpec::new(secure).unwrap();
    let services = [svc("basic", &["a"], &["b"], (10.0, 1.0, 10.0, 0.9)), secure, plain("extra", &["a"], &["c"])];

    let excluded = constrained(Constraints { exclude_services: vec![id("basic")], ..Constraints::default() });
    check(&services, &excluded, &[&["secure"]]);
    let grpc_only = constrained(Constraints { protocols: vec![Protocol::Grpc], ..Constraints::default() });
    check(&services, &grpc_only, &[&["secure"]]);
    let security = SecurityRequirements { compliance: vec!["pci-dss".into()], ..SecurityRequirements::default() };
    check(&services, &constrained(Constraints { security, ..Constraints::default() }), &[&["secure"]]);
    let included = constrained(Constraints { include_services: vec![id("extra")], ..Constraints::default() });
    check(&services, &included, &[&["basic", "extra"]]);

    let cases: [(Constraints, &str); 7] = [
        (
            Constraints { max_latency_ms: Some(5.0), ..Constraints::default() },
            "constraint max_latency_ms is 5, the plan needs 10",
        ),
        (Constraints { max_cost: Some(0.5), ..Constraints::default() }, "constraint max_cost is 0.5, the plan needs 1"),
        (
            Constraints { min_availability: Some(0.95), ..Constraints::default() },
            "constraint min_availability is 0.95, the plan needs 0.9",
        ),
        (
            Constraints {
                include_services: vec![id("extra"), id("basic")],
                max_services: Some(1),
                ..Constraints::default()
            },
            "constraint max_services is 1, the plan needs 2",
        ),
        (
            Constraints { include_services: vec![id("ghost")], ..Constraints::default() },
            r#"included service "ghost" is not registered"#,
        ),
        (
            Constraints {
                include_services: vec![id("basic")],
                exclude_services: vec![id("basic")],
                ..Constraints::default()
            },
            "is also excluded",
        ),
        (
            Constraints {
                include_services: vec![id("secure")],
                protocols: vec![Protocol::Http],
                ..Constraints::default()
            },
            r#"included service "secure" is ruled out by the other constraints"#,
        ),
    ];
    for (constraints, expected) in cases {
        let err = error(&services, &constrained(constraints)).to_string();
        assert!(err.contains(expected), "{err:?} should contain {expected:?}");
    }
    let none_left =
        constrained(Constraints { exclude_services: vec![id("basic"), id("secure")], ..Constraints::default() });
    assert!(matches!(error(&services, &none_left), Error::Unsatisfiable { .. }));
    let bad = constrained(Constraints { min_availability: Some(1.5), ..Constraints::default() });
    assert!(error(&services, &bad).to_string().contains("constraints.min_availability"));
}

#[test]
fn validation_rejects_each_kind_of_broken_plan() {
    let services = [plain("left", &["a"], &["b"]), plain("right", &["a"], &["c"]), plain("join", &["b", "c"], &["d"])];
    let catalog = catalog(&services);
    let g = goal(&["a"], &["d"]);
    let good = OrchestrationPlanner.plan(&catalog, &g).unwrap();
    let step = |s: &str| StepId::new(s).unwrap();
    type Breakage = Box<dyn Fn(&mut Plan)>;
    let broken: Vec<(Breakage, &str)> = vec![
        (Box::new(|p| p.tasks[0].service = id("ghost")), "not registered or not healthy"),
        (
            Box::new(|p| {
                let t = p.tasks[0].clone();
                p.tasks.push(t)
            }),
            "appears twice",
        ),
        (Box::new(move |p| p.tasks[0].depends_on.push(step("join"))), "cycle"),
        (Box::new(move |p| p.tasks[2].depends_on.push(step("nope"))), "depends on unknown task nope"),
        (
            Box::new(|p| p.data_flow.retain(|e| !(e.to.as_str() == "join" && e.to_concept == "c"))),
            "input c of task join has no source",
        ),
        (
            Box::new(|p| {
                for e in &mut p.data_flow {
                    if e.to_concept == "c" {
                        e.from_concept = "b".into()
                    }
                }
            }),
            "does not satisfy",
        ),
        (
            Box::new(|p| {
                for e in &mut p.data_flow {
                    if e.to.as_str() == "left" {
                        e.from_concept = "b".into();
                        e.to_concept = "b".into()
                    }
                }
            }),
            "not one of its inputs",
        ),
        (Box::new(|p| p.tasks[2].depends_on.clear()), "without depending on it"),
        (
            Box::new(|p| {
                p.tasks.retain(|t| t.id.as_str() != "join");
                p.data_flow.retain(|e| e.to.as_str() != "join");
                p.levels.pop();
            }),
            "wanted concept d is produced by no task",
        ),
        (Box::new(|p| p.levels.swap(0, 1)), "not after its dependency"),
        (Box::new(|p| p.levels[0].pop().map(drop).unwrap_or(())), "is in no level"),
    ];
    for (breakage, expected) in broken {
        let mut plan = good.clone();
        breakage(&mut plan);
        let err = OrchestrationPlanner.validate_plan(&catalog, &g, &plan).unwrap_err().to_string();
        assert!(err.contains(expected), "{err:?} should contain {expected:?}");
    }
    // A task that feeds nothing wanted is dangling.
    let more = [services.to_vec(), vec![plain("stray", &["a"], &["e"])]].concat();
    let catalog = self::catalog(&more);
    let mut plan = good;
    plan.tasks.push(baton_core::PlanTask {
        id: step("stray"),
        service: id("stray"),
        alternatives: vec![],
        inputs: vec!["a".into()],
        outputs: vec!["e".into()],
        depends_on: vec![],
    });
    plan.data_flow.push(DataFlow { from: None, from_concept: "a".into(), to: step("stray"), to_concept: "a".into() });
    plan.levels[0].push(step("stray"));
    let err = OrchestrationPlanner.validate_plan(&catalog, &g, &plan).unwrap_err().to_string();
    assert!(err.contains("task stray contributes to no wanted concept"), "{err}");
}

#[test]
fn plans_become_runnable_workflows() {
    let services = [plain("bill", &["order"], &["invoice"]), plain("file", &["document"], &["receipt"])];
    let catalog = catalog(&services);
    let g = goal(&["order"], &["receipt"]);
    let plan = OrchestrationPlanner.plan(&catalog, &g).unwrap();
    let workflow = to_workflow(&catalog, &g, &plan, WorkflowName::new("planned").unwrap());
    assert_eq!(workflow.steps.len(), 2);
    assert_eq!(*workflow.steps[0].input().unwrap(), serde_json::json!({"order": "${ .input[\"order\"] }"}));
    assert_eq!(
        *workflow.steps[1].input().unwrap(),
        serde_json::json!({"document": "${ .steps[\"bill\"].output[\"invoice\"] }"})
    );
    assert_eq!(workflow.output, serde_json::json!({"receipt": "${ .steps[\"file\"].output[\"receipt\"] }"}));
    // The mappings are jq that runs: feed the second step from the first's output.
    let context = serde_json::json!({"input": {"order": 7}, "steps": {"bill": {"output": {"invoice": "inv-7"}}}});
    let first = baton_core::Template::compile("steps.bill.input", workflow.steps[0].input().unwrap()).unwrap();
    assert_eq!(first.render(&context).unwrap(), serde_json::json!({"order": 7}));
    let second = baton_core::Template::compile("steps.file.input", workflow.steps[1].input().unwrap()).unwrap();
    assert_eq!(second.render(&context).unwrap(), serde_json::json!({"document": "inv-7"}));
    assert_eq!(second.referenced_steps().into_iter().collect::<Vec<_>>(), ["bill"]);
    // The plan serializes to JSON and back.
    let json = serde_json::to_string(&plan).unwrap();
    assert_eq!(serde_json::from_str::<Plan>(&json).unwrap(), plan);
}

#[test]
fn a_service_covering_more_is_not_taken_when_it_would_add_a_layer() {
    // `both` covers both wanted concepts but needs `x` first: two layers. Two direct
    // services reach the goal in one.
    let services = [
        plain("direct-b", &["a"], &["b"]),
        plain("direct-c", &["a"], &["c"]),
        plain("make-x", &["a"], &["d"]),
        plain("both", &["d"], &["b", "c"]),
    ];
    let g = Goal { objective: Objective::Cost, ..goal(&["a"], &["b", "c"]) };
    check(&services, &g, &[&["direct-b", "direct-c"]]);
}
