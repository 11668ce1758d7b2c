//! The seed design's planner, as the baseline for `planner_wsc08`: layer by layer, scan every
//! service, and for each input scan every available concept for one that satisfies it.

use std::collections::HashSet;

use baton_core::{Goal, ServiceSpec, Taxonomy};

/// The layers of services a layered forward chaining with full scans finds, or `None` when the
/// goal cannot be met.
pub fn layers(taxonomy: &Taxonomy, services: &[ServiceSpec], goal: &Goal) -> Option<Vec<Vec<usize>>> {
    let id = |name: &str| taxonomy.id(name);
    let mut available: Vec<baton_core::ConceptId> = goal.provided.iter().filter_map(|c| id(c)).collect();
    let satisfied = |available: &[baton_core::ConceptId], want: &str| {
        id(want).is_some_and(|w| available.iter().any(|&have| taxonomy.satisfies(have, w)))
    };
    let mut used: HashSet<usize> = HashSet::new();
    let mut layers = Vec::new();
    while !goal.wanted.iter().all(|w| satisfied(&available, w)) {
        let layer: Vec<usize> = services
            .iter()
            .enumerate()
            .filter(|(i, s)| !used.contains(i) && s.inputs().iter().all(|input| satisfied(&available, input)))
            .map(|(i, _)| i)
            .collect();
        if layer.is_empty() {
            return None;
        }
        for &i in &layer {
            used.insert(i);
            available.extend(services[i].outputs().iter().filter_map(|o| id(o)));
        }
        layers.push(layer);
    }
    Some(layers)
}
