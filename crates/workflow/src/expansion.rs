//! A bound on what a YAML definition expands to. YAML aliases (`*name`) repeat an anchored
//! node wherever they appear, so a few kilobytes can stand for gigabytes (a 25 KB definition
//! with one 5,000-item anchor used 5,000 times took minutes and gigabytes to parse). Before the
//! definition is deserialized for real, one pass walks the document, discarding every value and
//! counting nodes and string bytes as the aliases expand, and stops at the bound.

use std::cell::Cell;
use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};

/// Most nodes (scalars, sequences, mappings) a definition may expand to; a definition of
/// [`crate::MAX_DEFINITION_BYTES`] without aliases has fewer than half a million.
pub const MAX_EXPANDED_NODES: usize = 1_000_000;
/// Most bytes of strings (keys and values) a definition may expand to.
pub const MAX_EXPANDED_BYTES: usize = 4 * crate::MAX_DEFINITION_BYTES;

/// Walks `text` as YAML; an error when it expands past the bounds. Any other problem (not
/// YAML, several documents) passes here: the real parse reports it with its position.
pub(crate) fn check(text: &str) -> Result<(), String> {
    check_within(text, MAX_EXPANDED_NODES, MAX_EXPANDED_BYTES)
}

fn check_within(text: &str, nodes: usize, bytes: usize) -> Result<(), String> {
    let budget = Budget { nodes: Cell::new(nodes), bytes: Cell::new(bytes), exceeded: Cell::new(false) };
    for document in serde_yaml::Deserializer::from_str(text) {
        match Walk(&budget).deserialize(document) {
            Err(e) if budget.exceeded.get() => return Err(e.to_string()),
            Err(_) => return Ok(()),
            Ok(()) => {}
        }
    }
    Ok(())
}

struct Budget {
    nodes: Cell<usize>,
    bytes: Cell<usize>,
    exceeded: Cell<bool>,
}

impl Budget {
    fn take<E: de::Error>(&self, bytes: usize) -> Result<(), E> {
        let (Some(nodes), Some(left)) = (self.nodes.get().checked_sub(1), self.bytes.get().checked_sub(bytes)) else {
            self.exceeded.set(true);
            return Err(E::custom(format!(
                "the definition expands (through YAML aliases) to more than {MAX_EXPANDED_NODES} values or \
                 {MAX_EXPANDED_BYTES} bytes of text"
            )));
        };
        self.nodes.set(nodes);
        self.bytes.set(left);
        Ok(())
    }
}

/// Deserializes any node, keeping nothing but the count.
#[derive(Clone, Copy)]
struct Walk<'a>(&'a Budget);

impl<'de> DeserializeSeed<'de> for Walk<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Walk<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any YAML value")
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<(), E> {
        self.0.take(0)
    }

    fn visit_i64<E: de::Error>(self, _: i64) -> Result<(), E> {
        self.0.take(0)
    }

    fn visit_u64<E: de::Error>(self, _: u64) -> Result<(), E> {
        self.0.take(0)
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<(), E> {
        self.0.take(0)
    }

    fn visit_str<E: de::Error>(self, text: &str) -> Result<(), E> {
        self.0.take(text.len())
    }

    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        self.0.take(0)
    }

    fn visit_none<E: de::Error>(self) -> Result<(), E> {
        self.0.take(0)
    }

    fn visit_some<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        self.deserialize(deserializer)
    }

    fn visit_newtype_struct<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        self.deserialize(deserializer)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        self.0.take(0)?;
        while seq.next_element_seed(self)?.is_some() {}
        Ok(())
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        self.0.take(0)?;
        while map.next_key_seed(self)?.is_some() {
            map.next_value_seed(self)?;
        }
        Ok(())
    }

    fn visit_enum<A: de::EnumAccess<'de>>(self, data: A) -> Result<(), A::Error> {
        use de::VariantAccess as _;
        // A tagged node (`!tag value`): the tag, then its value.
        let ((), variant) = data.variant_seed(self)?;
        variant.newtype_variant_seed(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A definition whose input is one anchored list of `width` items used `width` times.
    fn wide(width: usize) -> String {
        let items = vec!["1"; width].join(",");
        let aliases = vec!["*a"; width].join(",");
        format!(
            "name: w\nsteps:\n  - id: a\n    service: s\n    input:\n      big: &a [{items}]\n      refs: [{aliases}]\n"
        )
    }

    #[test]
    fn aliases_that_expand_past_the_bound_are_refused_early() {
        // 25 KB that stand for 25 million values.
        let started = std::time::Instant::now();
        let error = check(&wide(5000)).unwrap_err();
        assert!(error.contains("expands (through YAML aliases) to more than 1000000 values"), "{error}");
        // Refused at the bound, not after expanding everything; generous for a debug build.
        assert!(started.elapsed() < std::time::Duration::from_secs(20), "{:?}", started.elapsed());

        // The parser refuses it with the reason, as a parse error.
        let refused = crate::CheckedDefinition::parse(&wide(5000)).unwrap_err();
        assert!(
            matches!(&refused, crate::Error::Parse { format: "yaml", message } if message.contains("YAML aliases"))
        );

        // A long string repeated through aliases counts by its bytes.
        let long = "x".repeat(100_000);
        let text =
            format!("name: w\nsteps: []\nlabels: {{a: &s {long}}}\ndescription: [{}]\n", vec!["*s"; 100].join(","));
        assert!(check(&text).unwrap_err().contains("bytes of text"));
    }

    #[test]
    fn ordinary_definitions_and_modest_aliases_pass() {
        check(&wide(100)).unwrap();
        for name in ["checkout", "order", "pipeline"] {
            let path =
                std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("../../examples/workflows/{name}.yaml"));
            check(&std::fs::read_to_string(path).unwrap()).unwrap();
        }
        // Tags and every scalar kind; text that is not YAML is left to the real parse.
        check("a: !t {b: [1, -2, 3.5, true, null, ~, 'x']}\n").unwrap();
        check("a: [1, 2\n").unwrap();
        // Exactly at the bound passes, one past it fails: a list of 3 numbers is 4 nodes.
        check_within("[1, 2, 3]", 4, 0).unwrap();
        assert!(check_within("[1, 2, 3]", 3, 0).is_err());
        assert!(check_within("[ab]", 2, 1).is_err());
        check_within("[ab]", 2, 2).unwrap();
    }
}
