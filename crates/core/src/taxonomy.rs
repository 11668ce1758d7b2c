//! A concept taxonomy (a forest with single inheritance) with constant-time subsumption.
//!
//! A value of concept `B` satisfies a wanted concept `A` when `B` is `A` or a descendant of
//! `A`. Each concept gets the interval of its subtree in a depth-first numbering, so
//! subsumption is two integer comparisons however deep the tree is.

use std::collections::HashMap;

use crate::error::{Error, Result};

/// A concept's dense index in its [`Taxonomy`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ConceptId(u32);

impl ConceptId {
    /// The dense index, for use in vectors and bitmaps.
    pub fn index(self) -> usize {
        self.0 as usize
    }
}

/// Collects `(concept, parent)` pairs; [`TaxonomyBuilder::build`] checks them.
#[derive(Debug, Default, Clone)]
pub struct TaxonomyBuilder {
    names: Vec<Box<str>>,
    index: HashMap<Box<str>, u32>,
    parents: Vec<Option<Box<str>>>,
}

impl TaxonomyBuilder {
    /// Adds `concept` under `parent` (`None` for a root). Adding a concept twice is an error
    /// when the parents differ.
    pub fn add(&mut self, concept: &str, parent: Option<&str>) -> Result<&mut Self> {
        if concept.is_empty() {
            return Err(Error::invalid("concept", concept, "must not be empty"));
        }
        if let Some(&i) = self.index.get(concept) {
            let known = self.parents[i as usize].as_deref();
            if known != parent {
                return Err(Error::invalid(
                    "concept",
                    concept,
                    format!("already has parent {known:?}, cannot also have {parent:?}"),
                ));
            }
            return Ok(self);
        }
        let id =
            u32::try_from(self.names.len()).map_err(|_| Error::invalid("taxonomy", concept, "too many concepts"))?;
        self.names.push(concept.into());
        self.index.insert(concept.into(), id);
        self.parents.push(parent.map(Into::into));
        Ok(self)
    }

    /// Checks that every parent is known and that there is no cycle, then numbers the tree.
    pub fn build(self) -> Result<Taxonomy> {
        let n = self.names.len();
        let mut parent = Vec::with_capacity(n);
        for (i, p) in self.parents.iter().enumerate() {
            parent.push(match p {
                None => None,
                Some(p) => {
                    Some(*self.index.get(p).ok_or_else(|| {
                        Error::invalid("concept", &self.names[i], format!("has unknown parent {p:?}"))
                    })?)
                }
            });
        }
        let mut children: Vec<Vec<u32>> = vec![Vec::new(); n];
        for (i, p) in parent.iter().enumerate() {
            if let Some(p) = p {
                children[*p as usize].push(i as u32);
            }
        }
        let (mut enter, mut exit) = (vec![u32::MAX; n], vec![0; n]);
        let mut clock = 0u32;
        // Iterative depth-first walk: real taxonomies can be deeper than the stack allows.
        let mut stack: Vec<(u32, usize)> = Vec::new();
        for root in (0..n as u32).filter(|&i| parent[i as usize].is_none()) {
            stack.push((root, 0));
            enter[root as usize] = clock;
            clock += 1;
            while let Some((node, next)) = stack.last_mut() {
                let node = *node as usize;
                if let Some(&child) = children[node].get(*next) {
                    *next += 1;
                    enter[child as usize] = clock;
                    clock += 1;
                    stack.push((child, 0));
                } else {
                    exit[node] = clock;
                    stack.pop();
                }
            }
        }
        if let Some(i) = enter.iter().position(|&e| e == u32::MAX) {
            return Err(Error::invalid("concept", &self.names[i], "is part of a cycle of parents"));
        }
        Ok(Taxonomy { names: self.names, index: self.index, parent, enter, exit })
    }
}

/// A checked concept forest.
#[derive(Debug, Clone, Default)]
pub struct Taxonomy {
    names: Vec<Box<str>>,
    index: HashMap<Box<str>, u32>,
    parent: Vec<Option<u32>>,
    enter: Vec<u32>,
    exit: Vec<u32>,
}

impl Taxonomy {
    /// The id of `name`, if known.
    pub fn id(&self, name: &str) -> Option<ConceptId> {
        self.index.get(name).map(|&i| ConceptId(i))
    }

    /// The concept with dense index `index` (see [`ConceptId::index`]), if there is one.
    pub fn concept(&self, index: usize) -> Option<ConceptId> {
        (index < self.names.len()).then_some(ConceptId(index as u32))
    }

    /// The name of `id`.
    pub fn name(&self, id: ConceptId) -> &str {
        &self.names[id.index()]
    }

    /// The parent of `id`, if it is not a root.
    pub fn parent(&self, id: ConceptId) -> Option<ConceptId> {
        self.parent[id.index()].map(ConceptId)
    }

    /// Number of concepts.
    pub fn len(&self) -> usize {
        self.names.len()
    }

    /// True when there are no concepts.
    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    /// True when a value of concept `have` satisfies a wanted `want`: the same or a descendant.
    pub fn satisfies(&self, have: ConceptId, want: ConceptId) -> bool {
        let (h, w) = (have.index(), want.index());
        self.enter[w] <= self.enter[h] && self.exit[h] <= self.exit[w]
    }

    /// `id` and its ancestors, nearest first.
    pub fn ancestors(&self, id: ConceptId) -> impl Iterator<Item = ConceptId> + '_ {
        std::iter::successors(Some(id), |&c| self.parent(c))
    }

    /// Every concept id.
    pub fn ids(&self) -> impl Iterator<Item = ConceptId> {
        (0..self.names.len() as u32).map(ConceptId)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn taxonomy() -> Taxonomy {
        let mut b = TaxonomyBuilder::default();
        b.add("thing", None).unwrap();
        b.add("document", Some("thing")).unwrap();
        b.add("invoice", Some("document")).unwrap();
        b.add("receipt", Some("document")).unwrap();
        b.add("money", Some("thing")).unwrap();
        b.add("other-root", None).unwrap();
        b.build().unwrap()
    }

    #[test]
    fn a_concept_satisfies_itself_and_its_ancestors_only() {
        let t = taxonomy();
        let id = |n| t.id(n).unwrap();
        let cases = [
            ("invoice", "invoice", true),
            ("invoice", "document", true),
            ("invoice", "thing", true),
            ("document", "invoice", false),
            ("receipt", "invoice", false),
            ("money", "document", false),
            ("other-root", "thing", false),
        ];
        for (have, want, expected) in cases {
            assert_eq!(t.satisfies(id(have), id(want)), expected, "{have} satisfies {want}");
        }
        let names: Vec<_> = t.ancestors(id("invoice")).map(|c| t.name(c)).collect();
        assert_eq!(names, ["invoice", "document", "thing"]);
    }

    #[test]
    fn bad_trees_are_rejected_with_the_concept_named() {
        let mut b = TaxonomyBuilder::default();
        b.add("a", Some("ghost")).unwrap();
        assert!(b.build().unwrap_err().to_string().contains(r#"invalid concept "a": has unknown parent "ghost""#));

        let mut b = TaxonomyBuilder::default();
        b.add("a", Some("b")).unwrap().add("b", Some("a")).unwrap().add("c", None).unwrap();
        assert!(b.build().unwrap_err().to_string().contains("is part of a cycle"));

        let mut b = TaxonomyBuilder::default();
        b.add("a", None).unwrap();
        assert!(b.add("a", Some("x")).unwrap_err().to_string().contains("already has parent None"));
    }

    #[test]
    fn deep_chains_do_not_overflow_the_stack() {
        let mut b = TaxonomyBuilder::default();
        b.add("c0", None).unwrap();
        for i in 1..200_000 {
            b.add(&format!("c{i}"), Some(&format!("c{}", i - 1))).unwrap();
        }
        let t = b.build().unwrap();
        assert!(t.satisfies(t.id("c199999").unwrap(), t.id("c0").unwrap()));
        assert!(!t.satisfies(t.id("c0").unwrap(), t.id("c1").unwrap()));
    }
}
