//! The planner's index over a set of services: dense concept ids (the taxonomy's, plus any
//! concept the services or a goal name that the taxonomy lacks), and per concept the
//! services that consume it and the services that produce it or something more specific.

use std::collections::HashMap;
use std::sync::Arc;

use baton_core::{ServiceId, ServiceSpec, Taxonomy};

/// Dense concept ids: the taxonomy's first, then unknown names as extra roots.
#[derive(Debug, Clone)]
pub(crate) struct Concepts {
    taxonomy: Arc<Taxonomy>,
    extra: HashMap<String, u32>,
    extra_names: Vec<String>,
}

impl Concepts {
    fn new(taxonomy: Arc<Taxonomy>) -> Self {
        Self { taxonomy, extra: HashMap::new(), extra_names: Vec::new() }
    }

    /// The id of `name`, adding it as a root when the taxonomy does not know it.
    fn intern(&mut self, name: &str) -> u32 {
        if let Some(id) = self.lookup(name) {
            return id;
        }
        let id = (self.taxonomy.len() + self.extra_names.len()) as u32;
        self.extra.insert(name.to_owned(), id);
        self.extra_names.push(name.to_owned());
        id
    }

    /// The id of `name`, if any service or the taxonomy names it.
    pub(crate) fn lookup(&self, name: &str) -> Option<u32> {
        match self.taxonomy.id(name) {
            Some(id) => Some(id.index() as u32),
            None => self.extra.get(name).copied(),
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.taxonomy.len() + self.extra_names.len()
    }

    pub(crate) fn name(&self, id: u32) -> &str {
        let known = self.taxonomy.len();
        if (id as usize) < known {
            self.taxonomy.name(concept(&self.taxonomy, id))
        } else {
            &self.extra_names[id as usize - known]
        }
    }

    pub(crate) fn parent(&self, id: u32) -> Option<u32> {
        if (id as usize) < self.taxonomy.len() {
            self.taxonomy.parent(concept(&self.taxonomy, id)).map(|p| p.index() as u32)
        } else {
            None
        }
    }

    /// True when a value of `have` satisfies a wanted `want` (same or more specific).
    pub(crate) fn satisfies(&self, have: u32, want: u32) -> bool {
        let known = self.taxonomy.len() as u32;
        if have < known && want < known {
            self.taxonomy.satisfies(concept(&self.taxonomy, have), concept(&self.taxonomy, want))
        } else {
            have == want
        }
    }

    /// `id` and its ancestors, nearest first.
    pub(crate) fn ancestors(&self, id: u32) -> impl Iterator<Item = u32> + '_ {
        std::iter::successors(Some(id), |&c| self.parent(c))
    }
}

fn concept(taxonomy: &Taxonomy, id: u32) -> baton_core::ConceptId {
    taxonomy.concept(id as usize).expect("callers check the id is below the taxonomy's length")
}

/// One service as the planner sees it.
#[derive(Debug, Clone)]
pub(crate) struct Service {
    pub(crate) spec: Arc<ServiceSpec>,
    pub(crate) inputs: Vec<u32>,
    pub(crate) outputs: Vec<u32>,
}

/// Services indexed for composition. Build one per registry snapshot (or data set) and plan
/// many goals against it.
#[derive(Debug, Clone)]
pub struct Catalog {
    pub(crate) concepts: Concepts,
    pub(crate) services: Vec<Service>,
    /// For each concept, the services with it as an input.
    pub(crate) consumers: Vec<Vec<u32>>,
    /// For each concept, the services with an output equal to it or more specific.
    pub(crate) producers: Vec<Vec<u32>>,
    pub(crate) by_id: HashMap<ServiceId, u32>,
}

impl Catalog {
    /// Indexes `services` over `taxonomy`. Concepts the taxonomy does not know become roots
    /// of their own, matched by name only.
    pub fn build(taxonomy: Arc<Taxonomy>, services: impl IntoIterator<Item = Arc<ServiceSpec>>) -> Self {
        let mut concepts = Concepts::new(taxonomy);
        let mut list = Vec::new();
        let mut by_id = HashMap::new();
        for spec in services {
            let mut inputs: Vec<u32> = spec.inputs().iter().map(|c| concepts.intern(c)).collect();
            let mut outputs: Vec<u32> = spec.outputs().iter().map(|c| concepts.intern(c)).collect();
            inputs.sort_unstable();
            inputs.dedup();
            outputs.sort_unstable();
            outputs.dedup();
            by_id.insert(spec.id().clone(), list.len() as u32);
            list.push(Service { spec, inputs, outputs });
        }
        let n = concepts.len();
        let (mut consumers, mut producers) = (vec![Vec::new(); n], vec![Vec::new(); n]);
        for (s, service) in list.iter().enumerate() {
            for &i in &service.inputs {
                consumers[i as usize].push(s as u32);
            }
            for &o in &service.outputs {
                for a in concepts.ancestors(o) {
                    let list: &mut Vec<u32> = &mut producers[a as usize];
                    // Two outputs under one ancestor would list the service twice.
                    if list.last() != Some(&(s as u32)) {
                        list.push(s as u32);
                    }
                }
            }
        }
        Self { concepts, services: list, consumers, producers, by_id }
    }

    /// Number of services indexed.
    pub fn len(&self) -> usize {
        self.services.len()
    }

    /// True when no service is indexed.
    pub fn is_empty(&self) -> bool {
        self.services.is_empty()
    }

    /// The spec of an indexed service.
    pub fn service(&self, id: &ServiceId) -> Option<&Arc<ServiceSpec>> {
        self.by_id.get(id).map(|&s| &self.services[s as usize].spec)
    }
}
