//! [`LivePlanner`]: plans over the services a [`ServiceCatalog`] reports healthy now, keeping
//! the [`Catalog`] built from them until the catalog's generation moves.

use std::sync::{Arc, Mutex, PoisonError};

use baton_core::{Goal, Plan, Planning, ServiceCatalog, Taxonomy, WorkflowDefinition, WorkflowName};

use crate::catalog::Catalog;
use crate::planner::OrchestrationPlanner;

/// The [`Planning`] port over live services: each plan is composed from the healthy services
/// of a [`ServiceCatalog`] (in production the registry), indexed once per catalog generation.
pub struct LivePlanner {
    taxonomy: Arc<Taxonomy>,
    services: Arc<dyn ServiceCatalog>,
    /// The catalog built for a generation. Held while a new one is built, so that concurrent
    /// plans after a change wait for one build instead of each doing their own.
    cached: Mutex<Option<(u64, Arc<Catalog>)>>,
}

impl std::fmt::Debug for LivePlanner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let generation = self.cached.lock().unwrap_or_else(PoisonError::into_inner).as_ref().map(|(g, _)| *g);
        f.debug_struct("LivePlanner").field("cached_generation", &generation).finish_non_exhaustive()
    }
}

impl LivePlanner {
    /// Plans over `services`, reading their concepts in `taxonomy`.
    pub fn new(taxonomy: Arc<Taxonomy>, services: Arc<dyn ServiceCatalog>) -> Self {
        Self { taxonomy, services, cached: Mutex::new(None) }
    }

    /// A validated plan for `goal` and the workflow that runs it, named `name`, both from one
    /// view of the services.
    pub fn plan_workflow(&self, goal: &Goal, name: WorkflowName) -> crate::Result<(Plan, WorkflowDefinition)> {
        let catalog = self.catalog();
        let plan = OrchestrationPlanner.plan(&catalog, goal)?;
        let workflow = crate::to_workflow(&catalog, goal, &plan, name);
        Ok((plan, workflow))
    }

    /// The catalog of the current generation, built now if the generation moved.
    fn catalog(&self) -> Arc<Catalog> {
        // The generation is read before the services: what is built then is at least as new
        // as the generation it is filed under, so a change is never missed.
        let generation = self.services.generation();
        let mut cached = self.cached.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((built, catalog)) = cached.as_ref()
            && *built == generation
        {
            return Arc::clone(catalog);
        }
        let catalog = Arc::new(Catalog::build(Arc::clone(&self.taxonomy), self.services.healthy_services()));
        *cached = Some((generation, Arc::clone(&catalog)));
        catalog
    }
}

impl Planning for LivePlanner {
    fn plan(&self, goal: &Goal) -> baton_core::Result<Plan> {
        Ok(OrchestrationPlanner.plan(&self.catalog(), goal)?)
    }
}

#[cfg(test)]
mod tests {
    use baton_core::fakes::FixedCatalog;
    use baton_core::{ServiceSpec, TaxonomyBuilder};

    use super::*;

    fn service(id: &str, inputs: &[&str], outputs: &[&str], latency_ms: f64) -> ServiceSpec {
        ServiceSpec::from_json(
            &serde_json::json!({
                "id": id, "endpoint": {"protocol": "worker", "queue": id},
                "inputs": inputs, "outputs": outputs,
                "qos": {"latency_p50_ms": latency_ms, "latency_p99_ms": latency_ms},
            })
            .to_string(),
        )
        .unwrap()
    }

    fn planner(catalog: &Arc<FixedCatalog>) -> LivePlanner {
        let mut taxonomy = TaxonomyBuilder::default();
        taxonomy.add("document", None).unwrap().add("invoice", Some("document")).unwrap();
        taxonomy.add("order", None).unwrap().add("receipt", None).unwrap();
        LivePlanner::new(Arc::new(taxonomy.build().unwrap()), Arc::clone(catalog) as Arc<dyn ServiceCatalog>)
    }

    fn goal(provided: &[&str], wanted: &[&str]) -> Goal {
        Goal {
            provided: provided.iter().map(|s| s.to_string()).collect(),
            wanted: wanted.iter().map(|s| s.to_string()).collect(),
            ..Goal::default()
        }
    }

    fn services(plan: &Plan) -> Vec<&str> {
        plan.tasks.iter().map(|t| t.service.as_str()).collect()
    }

    #[test]
    fn plans_over_the_catalog_and_rebuilds_it_only_when_the_generation_moves() {
        let catalog = Arc::new(FixedCatalog::new([
            service("billing", &["order"], &["invoice"], 10.0),
            service("archive", &["document"], &["receipt"], 10.0),
        ]));
        let planner = planner(&catalog);
        let want_receipt = goal(&["order"], &["receipt"]);
        let plan = planner.plan(&want_receipt).unwrap();
        assert_eq!(services(&plan), ["billing", "archive"]);
        assert_eq!(plan.predicted.latency_ms, 20.0);

        // A faster archive that the catalog has but whose generation has not moved: unseen.
        catalog.push(service("archive-fast", &["invoice"], &["receipt"], 1.0));
        assert_eq!(services(&planner.plan(&want_receipt).unwrap()), ["billing", "archive"]);
        catalog.bump();
        let plan = planner.plan(&want_receipt).unwrap();
        assert_eq!(services(&plan), ["billing", "archive-fast"]);
        assert_eq!(plan.tasks[1].alternatives, [baton_core::ServiceId::new("archive").unwrap()]);

        // Services gone unhealthy leave with the next generation.
        catalog.set([service("billing", &["order"], &["invoice"], 10.0)]);
        catalog.bump();
        let err = planner.plan(&want_receipt).unwrap_err();
        assert!(matches!(&err, baton_core::Error::Precondition(m) if m.contains("receipt")), "{err:?}");
    }

    #[test]
    fn plan_workflow_names_the_workflow_and_binds_the_planned_services() {
        let catalog = Arc::new(FixedCatalog::new([
            service("billing", &["order"], &["invoice"], 10.0),
            service("archive", &["document"], &["receipt"], 10.0),
        ]));
        let (plan, workflow) = planner(&catalog)
            .plan_workflow(&goal(&["order"], &["receipt"]), WorkflowName::new("goal-1").unwrap())
            .unwrap();
        assert_eq!(services(&plan), ["billing", "archive"]);
        assert_eq!(workflow.name.as_str(), "goal-1");
        assert_eq!(workflow.steps.len(), 2);
    }

    #[test]
    fn planner_errors_map_to_the_domain_error_a_caller_can_act_on() {
        let catalog = Arc::new(FixedCatalog::new([service("billing", &["order"], &["invoice"], 10.0)]));
        let planner = planner(&catalog);
        let check = |goal: Goal, expected: baton_core::Error| assert_eq!(planner.plan(&goal).unwrap_err(), expected);
        check(goal(&["order"], &[]), baton_core::Error::invalid("goal.wanted", "[]", "the goal wants no concept"));
        check(
            goal(&["order"], &["receipt"]),
            baton_core::Error::Precondition(
                "unsatisfiable: wanted receipt, which no usable service outputs and the request does not provide"
                    .to_owned(),
            ),
        );
        let mut bounded = goal(&["order"], &["invoice"]);
        bounded.constraints.max_latency_ms = Some(5.0);
        check(
            bounded.clone(),
            baton_core::Error::Precondition("constraint max_latency_ms is 5, the plan needs 10".to_owned()),
        );
        bounded.constraints.max_latency_ms = Some(-1.0);
        check(bounded, baton_core::Error::invalid("constraints.max_latency_ms", -1.0, "must be a finite number >= 0"));
        let mut included = goal(&["order"], &["invoice"]);
        included.constraints.include_services = vec![baton_core::ServiceId::new("ghost").unwrap()];
        check(
            included,
            baton_core::Error::Precondition(
                r#"included service "ghost" is not registered (or not healthy)"#.to_owned(),
            ),
        );
    }
}
