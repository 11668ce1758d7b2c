//! Baton's planner: from a goal (what the caller has, what they want, QoS and security
//! constraints) it composes registered services into a DAG, optimizes it and proves it sound
//! before anything runs.
//!
//! What it is for: [`OrchestrationPlanner`] runs the seed design's pipeline over a [`Catalog`]
//! (services indexed over a concept taxonomy): `apply_constraints` (which services may take
//! part), `generate_initial_plan` (forward search for the earliest time every wanted concept can
//! be had, backward greedy selection of few services, pruning), `optimize_plan` (the best
//! functionally equivalent service per task by the objective, ranked alternatives for
//! failover, data flow, parallel levels, predicted QoS) and `validate_plan` (complete,
//! consistent, feasible). [`to_workflow`] turns a plan into a runnable workflow definition, and
//! [`wsc`] loads the Web Services Challenge data sets.
//!
//! What it is not for: finding services (the registry does; a [`Catalog`] is built from its
//! healthy services) or running plans (the executor does).
//!
//! ```
//! use std::sync::Arc;
//! use baton_core::{Goal, ServiceSpec, TaxonomyBuilder};
//! use baton_planner::{Catalog, OrchestrationPlanner};
//!
//! let mut taxonomy = TaxonomyBuilder::default();
//! taxonomy.add("document", None)?.add("invoice", Some("document"))?;
//! taxonomy.add("order", None)?.add("receipt", None)?;
//! let service = |id: &str, inputs: &[&str], outputs: &[&str]| {
//!     ServiceSpec::from_json(&serde_json::json!({
//!         "id": id, "endpoint": {"protocol": "worker", "queue": id},
//!         "inputs": inputs, "outputs": outputs,
//!     }).to_string()).map(Arc::new)
//! };
//! let catalog = Catalog::build(
//!     Arc::new(taxonomy.build()?),
//!     [service("billing", &["order"], &["invoice"])?, service("archive", &["document"], &["receipt"])?],
//! );
//! let goal = Goal { provided: vec!["order".into()], wanted: vec!["receipt".into()], ..Goal::default() };
//! let plan = OrchestrationPlanner.plan(&catalog, &goal)?;
//! let levels: Vec<Vec<&str>> = plan.levels.iter().map(|l| l.iter().map(|s| s.as_str()).collect()).collect();
//! assert_eq!(levels, [["billing"], ["archive"]]); // an invoice is a document
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod catalog;
mod compose;
mod error;
mod live;
mod planner;
mod validate;
mod workflow;
pub mod wsc;

pub use catalog::Catalog;
pub use error::{Error, Missing, Result};
pub use live::LivePlanner;
pub use planner::{Allowed, Composition, MAX_ALTERNATIVES, OrchestrationPlanner};
pub use workflow::to_workflow;

#[cfg(test)]
mod tests;
