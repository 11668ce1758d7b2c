//! The Web Services Challenge loaders (`wsc::parse_xml`, `wsc::parse_wsdl`) on any text, and
//! the planner on whatever they accept.
//!
//! Input: the files' texts separated by NUL bytes (never in XML). An odd first byte picks the
//! XML form (`taxonomy.xml`, `services.xml`, `problem.xml`), an even one the WSDL form
//! (`Taxonomy.owl`, `Services.wsdl`, `Challenge.wsdl`, then optionally
//! `Servicelevelagreements.wsla`). A problem that loads is planned: the planner must answer
//! with a plan or a typed error, and a plan must be valid.

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
        assert!(!plan.levels.is_empty() || problem.goal.wanted.is_empty(), "{plan:?}");
    }
}
