//! Workflow definitions: parsed from YAML or JSON, checked, and hashed over a canonical form.

use std::fmt::Write as _;

use std::collections::BTreeSet;

use baton_core::{CallTemplate, StepCall, StepGraph, StepId, StepLinks, Template, WorkflowDefinition, WorkflowName};
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};

/// The most steps a definition may have.
pub const MAX_STEPS: usize = 10_000;
/// The largest definition text accepted, in bytes.
pub const MAX_DEFINITION_BYTES: usize = 1024 * 1024;
/// The most expressions a definition may hold that need jq, i.e. are not plain paths (which are
/// free): each takes about half a millisecond of CPU to compile, every time the definition is
/// checked.
pub const MAX_JQ_EXPRESSIONS: usize = 1_000;

/// A definition that passed every check, with its compiled templates, a topological order of
/// its steps and the hash of its canonical form. Only [`CheckedDefinition::parse`] and
/// [`CheckedDefinition::check`] make one.
#[derive(Debug, Clone)]
pub struct CheckedDefinition {
    definition: WorkflowDefinition,
    inputs: Vec<Template>,
    calls: Vec<Option<CallTemplate>>,
    output: Template,
    graph: StepGraph,
    canonical: Value,
    content_hash: String,
}

impl CheckedDefinition {
    /// Parses `text` (JSON when it starts with `{`, else YAML) and checks it.
    pub fn parse(text: &str) -> Result<Self> {
        if text.len() > MAX_DEFINITION_BYTES {
            return Err(Error::TooLarge { size: text.len(), limit: MAX_DEFINITION_BYTES });
        }
        let definition: WorkflowDefinition = if text.trim_start().starts_with('{') {
            serde_json::from_str(text).map_err(|e| Error::Parse { format: "json", message: e.to_string() })?
        } else {
            crate::expansion::check(text).map_err(|message| Error::Parse { format: "yaml", message })?;
            serde_yaml::from_str(text).map_err(|e| Error::Parse { format: "yaml", message: e.to_string() })?
        };
        Self::check(definition)
    }

    /// Reads a stored body (the canonical JSON form) back and checks it again.
    pub fn from_body(body: &Value) -> Result<Self> {
        let definition: WorkflowDefinition = serde_json::from_value(body.clone())
            .map_err(|e| Error::Parse { format: "json", message: e.to_string() })?;
        Self::check(definition)
    }

    /// Checks a definition built in code: step limits, unique ids, known dependencies and
    /// fallbacks, no cycle, retry policies, and expressions that compile (at most
    /// [`MAX_JQ_EXPRESSIONS`] of them needing jq) and read only upstream steps (the output
    /// mapping may read any existing step).
    pub fn check(definition: WorkflowDefinition) -> Result<Self> {
        let steps = &definition.steps;
        if steps.len() > MAX_STEPS {
            return Err(Error::TooManySteps { count: steps.len(), limit: MAX_STEPS });
        }
        let graph = StepGraph::check(steps.iter().map(StepLinks::from))?;
        for (place, retry) in std::iter::once(("defaults.retry".to_owned(), &definition.defaults.retry))
            .chain(steps.iter().filter_map(|s| s.retry.as_ref().map(|r| (format!("steps.{}.retry", s.id), r))))
        {
            if retry.max_attempts == 0 {
                return Err(baton_core::Error::invalid(format!("{place}.max_attempts"), 0, "must be at least 1").into());
            }
            if !retry.multiplier.is_finite() || retry.multiplier < 1.0 {
                let reason = "must be a finite number of at least 1";
                return Err(baton_core::Error::invalid(format!("{place}.multiplier"), retry.multiplier, reason).into());
            }
        }
        let upstream = Upstream::of(&graph);
        // Counted before any is compiled, which is what costs.
        let jq = steps.iter().map(|s| &s.input).chain([&definition.output]).map(Template::count_jq).sum::<usize>()
            + steps.iter().filter_map(|s| s.call.as_ref()).map(call_jq).sum::<usize>();
        if jq > MAX_JQ_EXPRESSIONS {
            return Err(Error::TooManyExpressions { count: jq, limit: MAX_JQ_EXPRESSIONS });
        }
        let mut inputs = Vec::with_capacity(steps.len());
        let mut calls = Vec::with_capacity(steps.len());
        for (i, step) in steps.iter().enumerate() {
            let check_reads = |place: String, reads: BTreeSet<String>| {
                for name in reads {
                    let known = name.parse::<StepId>().ok().and_then(|id| graph.index(&id));
                    if !known.is_some_and(|r| upstream.contains(i, r)) {
                        return Err(Error::NotUpstream { place, step: name });
                    }
                }
                Ok(())
            };
            let place = format!("steps.{}.input", step.id);
            let template = Template::compile(&place, &step.input)?;
            check_reads(place, template.referenced_steps())?;
            inputs.push(template);
            let call = match &step.call {
                None => None,
                Some(call) => {
                    let place = format!("steps.{}", step.id);
                    let template = CallTemplate::compile(&place, call, !step.input.is_null())?;
                    check_reads(place, template.referenced_steps())?;
                    Some(template)
                }
            };
            calls.push(call);
        }
        let output = Template::compile("output", &definition.output)?;
        for name in output.referenced_steps() {
            if name.parse::<StepId>().ok().and_then(|id| graph.index(&id)).is_none() {
                return Err(Error::NotUpstream { place: "output".to_owned(), step: name });
            }
        }
        let canonical = canonical(
            serde_json::to_value(&definition)
                .map_err(|e| Error::Parse { format: "json", message: format!("cannot write the definition: {e}") })?,
        );
        let bytes = serde_json::to_vec(&canonical)
            .map_err(|e| Error::Parse { format: "json", message: format!("cannot write the definition: {e}") })?;
        let mut content_hash = String::from("sha256:");
        for byte in Sha256::digest(&bytes) {
            let _ = write!(content_hash, "{byte:02x}");
        }
        Ok(Self { definition, inputs, calls, output, graph, canonical, content_hash })
    }

    /// The definition.
    pub fn definition(&self) -> &WorkflowDefinition {
        &self.definition
    }

    /// Its name.
    pub fn name(&self) -> &WorkflowName {
        &self.definition.name
    }

    /// The compiled input template of each step, in the order of `definition().steps`.
    pub fn inputs(&self) -> &[Template] {
        &self.inputs
    }

    /// The compiled call template of each step that shapes its call (`http:` or `grpc:`), in
    /// the order of `definition().steps`.
    pub fn calls(&self) -> &[Option<CallTemplate>] {
        &self.calls
    }

    /// The compiled output template.
    pub fn output(&self) -> &Template {
        &self.output
    }

    /// Step indexes (into `definition().steps`) in an order where every step comes after its
    /// dependencies.
    pub fn order(&self) -> &[usize] {
        self.graph.order()
    }

    /// The canonical JSON form: what is stored, and what the hash is over.
    pub fn canonical(&self) -> &Value {
        &self.canonical
    }

    /// `sha256:<hex>` of the canonical form's JSON text.
    pub fn content_hash(&self) -> &str {
        &self.content_hash
    }
}

/// Sorts object keys recursively, so equal content has equal text whatever the input order.
fn canonical(value: Value) -> Value {
    match value {
        Value::Object(map) => {
            let mut entries: Vec<(String, Value)> = map.into_iter().map(|(k, v)| (k, canonical(v))).collect();
            entries.sort_by(|a, b| a.0.cmp(&b.0));
            Value::Object(entries.into_iter().collect())
        }
        Value::Array(items) => Value::Array(items.into_iter().map(canonical).collect()),
        other => other,
    }
}

/// Which steps run before which: one bit set per step, built in topological order (a step's
/// upstream is its dependencies and theirs). Bits keep the largest definition (10,000 steps)
/// at 12.5 MB and linear work per edge; sets of indices grew quadratically on long chains.
struct Upstream {
    words: usize,
    bits: Vec<u64>,
}

impl Upstream {
    fn of(graph: &StepGraph) -> Self {
        let words = graph.len().div_ceil(64);
        let mut bits = vec![0u64; graph.len() * words];
        for &i in graph.order() {
            for &d in graph.dependencies(i) {
                // d != i (no self-loops in a topological order), so the two rows are disjoint.
                let (from, to) = if d < i {
                    let (low, high) = bits.split_at_mut(i * words);
                    (&low[d * words..(d + 1) * words], &mut high[..words])
                } else {
                    let (low, high) = bits.split_at_mut(d * words);
                    (&high[..words], &mut low[i * words..(i + 1) * words])
                };
                for (to, from) in to.iter_mut().zip(from) {
                    *to |= *from;
                }
                to[d / 64] |= 1 << (d % 64);
            }
        }
        Self { words, bits }
    }

    /// Whether step `r` runs before step `i`.
    fn contains(&self, i: usize, r: usize) -> bool {
        self.bits[i * self.words + r / 64] >> (r % 64) & 1 == 1
    }
}

/// The jq expressions a step's call holds, counted as [`Template::count_jq`] counts them.
fn call_jq(call: &StepCall) -> usize {
    match call {
        StepCall::Http(http) => {
            let path = http.path.clone().map(Value::String).as_ref().map_or(0, Template::count_jq);
            path + http.query.values().chain(http.headers.values()).map(Template::count_jq).sum::<usize>()
        }
        StepCall::Grpc(grpc) => grpc.metadata.values().map(Template::count_jq).sum(),
    }
}

#[cfg(test)]
mod tests {
    use baton_core::GraphError;

    use super::*;

    fn check(text: &str, expected: &str) {
        match CheckedDefinition::parse(text) {
            Ok(_) => panic!("{text}: accepted, wanted an error containing {expected:?}"),
            Err(e) => assert!(e.to_string().contains(expected), "{text}: {e} should contain {expected:?}"),
        }
    }

    #[test]
    fn bad_definitions_are_rejected_naming_the_place() {
        check("name: w\nsteps: []\ncolour: red\n", "unknown field `colour`");
        check(r#"{"name": "w", "steps": [], "colour": 1}"#, "unknown field `colour`");
        check("name: w\nsteps:\n  - {id: a, service: s, retries: 3}\n", "unknown field `retries`");
        check("name: W\nsteps: []\n", r#"invalid workflow "W""#);
        check("name: w\nsteps:\n  - {id: a, service: s}\n  - {id: a, service: t}\n", r#"step "a" appears twice"#);
        check("name: w\nsteps:\n  - {id: a, service: s, depends_on: [b]}\n", r#"step "a" depends on unknown step "b""#);
        check(
            "name: w\nsteps:\n  - {id: a, service: s, on_error: fallback, fallback: z}\n",
            r#"step "a" falls back to unknown step "z""#,
        );
        check(
            "name: w\nsteps:\n  - {id: a, service: s, depends_on: [c]}\n  - {id: b, service: s, depends_on: [a]}\n  \
             - {id: c, service: s, depends_on: [b]}\n  - {id: d, service: s}\n",
            "steps form a cycle: ",
        );
        check("name: w\nsteps:\n  - {id: a, service: s, input: {x: \"${ .input. }\"}}\n", "invalid steps.a.input.x");
        check(
            "name: w\nsteps:\n  - {id: a, service: s}\n  - {id: b, service: s, input: \"${ .steps.a.output }\"}\n",
            r#"steps.b.input refers to step "a", which is not upstream"#,
        );
        check("name: w\nsteps:\n  - {id: a, service: s}\noutput: \"${ .steps.zz.output }\"\n", r#"step "zz""#);
        check(
            "name: w\nsteps:\n  - {id: a, service: s, timeout: 5 parsecs}\n",
            r#"steps[0]: invalid duration "5 parsecs""#,
        );
        check("name: w\nsteps:\n  - {id: a, service: s, retry: {max_attempts: 0}}\n", "steps.a.retry.max_attempts");
        check("name: w\nsteps:\n  - {id: a, service: s, retry: {multiplier: 0.5}}\n", "steps.a.retry.multiplier");
        let big = format!("name: w\ndescription: \"{}\"\nsteps: []\n", "x".repeat(MAX_DEFINITION_BYTES));
        check(&big, "bytes, the limit is 1048576");
        let many: String = (0..=MAX_STEPS).map(|i| format!("  - {{id: s{i}, service: s}}\n")).collect();
        check(&format!("name: w\nsteps:\n{many}"), "10001 steps, the limit is 10000");
    }

    #[test]
    fn expressions_are_refused_at_apply_when_they_read_missing_steps_or_the_server_or_are_too_many() {
        let one = |input: &str| {
            format!(
                "name: w\nsteps:\n  - {{id: a, service: s}}\n  - {{id: b, service: s, depends_on: [a], input: {input}}}\n"
            )
        };
        // A step that does not exist, however `steps` and its name are written.
        for input in [
            r#""${ .[\"steps\"][\"ghost\"].output }""#,
            r#""${ .\"steps\".ghost.output | length }""#,
            r#""${ .steps[\"ghost\"].output + 1 }""#,
        ] {
            check(&one(input), r#"steps.b.input refers to step "ghost", which is not upstream"#);
        }
        assert!(CheckedDefinition::parse(&one(r#""${ .[\"steps\"][\"a\"].output }""#)).is_ok());
        // jq that would read the server's environment, end its process or read its stdin.
        for (input, undefined) in [("\"${ env.HOME }\"", "env"), ("\"${ halt }\"", "halt"), ("\"${ input }\"", "input")]
        {
            check(&one(input), &format!("uses undefined {undefined}"));
        }
        // A bounded number of expressions that need jq (each costs a compile); plain paths are free.
        let jq: String = (0..=MAX_JQ_EXPRESSIONS).map(|i| format!("\"${{ .input.n + {i} }}\", ")).collect();
        check(
            &one(&format!("[{jq}]")),
            "definition has 1001 expressions that need jq (not plain paths), the limit is 1000",
        );
        let plain: String = (0..5 * MAX_JQ_EXPRESSIONS).map(|_| "\"${ .steps.a.output }\", ").collect();
        assert!(CheckedDefinition::parse(&one(&format!("[{plain}]"))).is_ok());
    }

    #[test]
    fn the_longest_chain_allowed_checks_and_far_references_are_told_apart() {
        // Every step reads the first one: the upstream check must stay linear per edge.
        let mut text = String::from("name: w\nsteps:\n  - {id: s0, service: s}\n");
        for i in 1..MAX_STEPS {
            let _ = writeln!(
                text,
                "  - {{id: s{i}, service: s, depends_on: [s{}], input: \"${{ .steps.s0.output }}\"}}",
                i - 1
            );
        }
        let checked = CheckedDefinition::parse(&text).expect("a 10,000-step chain is valid");
        assert_eq!(checked.definition().steps.len(), MAX_STEPS);
        // The first step reading the last one is not upstream of it.
        let backwards = text.replacen(
            "  - {id: s0, service: s}",
            "  - {id: s0, service: s, input: \"${ .steps.s9999.output }\"}",
            1,
        );
        check(&backwards, "steps.s0.input refers to step \"s9999\", which is not upstream");
    }

    #[test]
    fn the_documented_example_is_valid() {
        let text = include_str!("../../../examples/workflows/checkout.yaml");
        let checked = CheckedDefinition::parse(text).expect("examples/workflows/checkout.yaml is valid");
        assert_eq!(checked.name().as_str(), "checkout");
        assert_eq!(checked.definition().steps.len(), 5);
        assert!(checked.calls()[4].is_some(), "confirm shapes its HTTP request");
        check(&text.replace("    fallback: charge-later\n", ""), "fallback");
    }

    #[test]
    fn a_cycle_is_named_step_by_step() {
        let text = "name: w\nsteps:\n  - {id: a, service: s, depends_on: [c]}\n  - {id: b, service: s, depends_on: [a]}\n  \
                    - {id: c, service: s, depends_on: [b]}\n  - {id: d, service: s}\n";
        let Err(Error::Graph(GraphError::Cycle(cycle))) = CheckedDefinition::parse(text) else {
            panic!("wanted a cycle")
        };
        let names: Vec<&str> = cycle.iter().map(StepId::as_str).collect();
        // b depends on a, c on b, a on c: in run order a -> b -> c -> a; d is not on it.
        assert_eq!(names, ["a", "b", "c", "a"]);
    }

    #[test]
    fn equal_content_hashes_equal_whatever_the_format() {
        let yaml = "name: w\nsteps:\n  - id: a\n    service: s\n    input: {y: 1, x: 2}\n  \
                    - {id: b, service: s, depends_on: [a], input: \"${ .steps.a.output }\"}\n";
        let json = r#"{"steps": [{"service": "s", "id": "a", "input": {"x": 2, "y": 1}},
                     {"id": "b", "service": "s", "depends_on": ["a"], "input": "${ .steps.a.output }"}], "name": "w"}"#;
        let a = CheckedDefinition::parse(yaml).unwrap();
        let b = CheckedDefinition::parse(json).unwrap();
        assert_eq!(a.content_hash(), b.content_hash());
        assert!(a.content_hash().starts_with("sha256:") && a.content_hash().len() == 7 + 64);
        assert_eq!(a.order(), [0, 1]);
        let again = CheckedDefinition::from_body(a.canonical()).unwrap();
        assert_eq!(again.content_hash(), a.content_hash());
        let changed = CheckedDefinition::parse(&yaml.replace("x: 2", "x: 3")).unwrap();
        assert_ne!(changed.content_hash(), a.content_hash());
    }
}
