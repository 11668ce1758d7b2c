//! Workflow definitions: parsed from YAML or JSON, checked, and hashed over a canonical form.

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Duration;

use baton_core::program::Program;
use baton_core::{StepGraph, StepLinks, Template, WorkflowDefinition, WorkflowName};
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
/// The longest `retention` a definition may set: ten years.
pub const MAX_RETENTION: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

/// A definition that passed every check, with its compiled templates, a topological order of
/// its steps and the hash of its canonical form. Only [`CheckedDefinition::parse`] and
/// [`CheckedDefinition::check`] make one.
#[derive(Debug, Clone)]
pub struct CheckedDefinition {
    definition: WorkflowDefinition,
    program: Arc<Program>,
    inputs: Vec<Template>,
    output: Template,
    graph: StepGraph,
    canonical: Value,
    content_hash: String,
    document_version: Option<String>,
}

impl CheckedDefinition {
    /// Parses `text` (JSON when it starts with `{`, else YAML) and checks it: Baton's native
    /// format, or a Serverless Workflow DSL 1.0 document (one with `document.dsl`).
    pub fn parse(text: &str) -> Result<Self> {
        if text.len() > MAX_DEFINITION_BYTES {
            return Err(Error::TooLarge { size: text.len(), limit: MAX_DEFINITION_BYTES });
        }
        let json = text.trim_start().starts_with('{');
        let value: Value = if json {
            serde_json::from_str(text).map_err(|e| Error::Parse { format: "json", message: e.to_string() })?
        } else {
            serde_yaml::from_str(text).map_err(|e| Error::Parse { format: "yaml", message: e.to_string() })?
        };
        if crate::sw::is_document(&value) {
            return Self::from_document(value);
        }
        // Read again from the text, so that errors give its line and column.
        let definition: WorkflowDefinition = if json {
            serde_json::from_str(text).map_err(|e| Error::Parse { format: "json", message: e.to_string() })?
        } else {
            crate::expansion::check(text).map_err(|message| Error::Parse { format: "yaml", message })?;
            serde_yaml::from_str(text).map_err(|e| Error::Parse { format: "yaml", message: e.to_string() })?
        };
        Self::check(definition)
    }

    /// Reads a stored body (the canonical JSON form) back and checks it again.
    pub fn from_body(body: &Value) -> Result<Self> {
        if crate::sw::is_document(body) {
            return Self::from_document(body.clone());
        }
        let definition: WorkflowDefinition = serde_json::from_value(body.clone())
            .map_err(|e| Error::Parse { format: "json", message: e.to_string() })?;
        Self::check(definition)
    }

    /// Checks a Serverless Workflow document and maps it. Its canonical form is the document
    /// itself; `definition()` describes it (name, description, labels) without steps, since
    /// its tasks live in the program only.
    fn from_document(document: Value) -> Result<Self> {
        let workflow = crate::sw::compile(&document)?;
        let definition = WorkflowDefinition {
            name: workflow.name.clone(),
            description: workflow.description,
            steps: Vec::new(),
            output: Value::Null,
            defaults: baton_core::StepDefaults::default(),
            deadline: workflow.program.deadline,
            retention: None,
            labels: workflow.labels,
        };
        let null = Template::compile("output", &Value::Null).expect("null is a template");
        let graph = StepGraph::check(std::iter::empty())?;
        let mut checked = Self::assemble(definition, workflow.program, Vec::new(), null, graph, canonical(document))?;
        checked.document_version = Some(workflow.version);
        Ok(checked)
    }

    /// Checks a definition built in code: step limits, unique ids, known dependencies and
    /// fallbacks (no fallback loop), no cycle, retry policies, nesting depth, and expressions
    /// that compile (at most [`MAX_JQ_EXPRESSIONS`] of them needing jq) with the variables their
    /// place may read and read only upstream steps (the output mapping may read any step).
    /// Builds the executable program on the way.
    pub fn check(definition: WorkflowDefinition) -> Result<Self> {
        if let Some(retention) = definition.retention
            && (retention < Duration::from_secs(1) || retention > MAX_RETENTION)
        {
            let text = baton_core::duration::format(retention);
            return Err(baton_core::Error::invalid("retention", text, "must be between 1s and 3650d").into());
        }
        let program = crate::compile::native(&definition)?;
        let graph = StepGraph::check(definition.steps.iter().map(StepLinks::from))?;
        let inputs = program
            .root
            .tasks
            .iter()
            .map(|task| match &task.action {
                baton_core::program::Action::Call(call) => call.payload.clone(),
                _ => Template::compile("input", &Value::Null).expect("null is a template"),
            })
            .collect();
        let output = program
            .root
            .output
            .clone()
            .unwrap_or_else(|| Template::compile("output", &Value::Null).expect("null is a template"));
        let canonical = canonical(
            serde_json::to_value(&definition)
                .map_err(|e| Error::Parse { format: "json", message: format!("cannot write the definition: {e}") })?,
        );
        Self::assemble(definition, program, inputs, output, graph, canonical)
    }

    /// A checked definition from its parts, hashing its canonical form.
    fn assemble(
        definition: WorkflowDefinition,
        program: Program,
        inputs: Vec<Template>,
        output: Template,
        graph: StepGraph,
        canonical: Value,
    ) -> Result<Self> {
        let bytes = serde_json::to_vec(&canonical)
            .map_err(|e| Error::Parse { format: "json", message: format!("cannot write the definition: {e}") })?;
        let mut content_hash = String::from("sha256:");
        for byte in Sha256::digest(&bytes) {
            let _ = write!(content_hash, "{byte:02x}");
        }
        Ok(Self {
            definition,
            program: Arc::new(program),
            inputs,
            output,
            graph,
            canonical,
            content_hash,
            document_version: None,
        })
    }

    /// The executable program.
    pub fn program(&self) -> &Arc<Program> {
        &self.program
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

    /// A Serverless Workflow document's own version (`document.version`, semantic version
    /// text); `None` for a native definition. Baton numbers stored versions itself.
    pub fn document_version(&self) -> Option<&str> {
        self.document_version.as_deref()
    }

    /// How long an ended execution of it is kept (`retention`); `None`: as the server says.
    pub fn retention(&self) -> Option<Duration> {
        self.definition.retention
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

#[cfg(test)]
mod tests {
    use baton_core::{GraphError, StepId};

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
        check("name: w\nretention: 0s\nsteps: []\n", r#"invalid retention "0ms": must be between 1s and 3650d"#);
        check("name: w\nretention: 3651d\nsteps: []\n", r#"invalid retention "87624h": must be between 1s and 3650d"#);
        check("name: w\nretention: a week\nsteps: []\n", r#"invalid duration "a week""#);
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
        assert_eq!(checked.retention(), Some(Duration::from_secs(30 * 86_400)));
        let confirm = &checked.program().root.tasks[4].action;
        assert!(
            matches!(confirm, baton_core::program::Action::Call(call) if call.shape.is_some()),
            "confirm shapes its HTTP request"
        );
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

    #[test]
    fn serverless_workflow_documents_are_read_by_their_dsl_field() {
        let yaml = "document: {dsl: '1.0.3', namespace: shop, name: greet, version: '2.1.0', title: Greets}\n\
                    do:\n  - hello: {set: {greeting: '${ \"hi \" + .name }'}}\n";
        let checked = CheckedDefinition::parse(yaml).expect("a valid document");
        assert_eq!(checked.name().as_str(), "shop.greet");
        assert_eq!(checked.document_version(), Some("2.1.0"));
        assert_eq!(checked.definition().description, "Greets");
        assert_eq!(checked.program().root.tasks[0].reference, "/do/0/hello");
        assert_eq!(checked.canonical()["document"]["dsl"], "1.0.3");
        // The stored body reads back as the same document; JSON text of it hashes the same.
        let again = CheckedDefinition::from_body(checked.canonical()).unwrap();
        assert_eq!(again.content_hash(), checked.content_hash());
        let json = serde_json::to_string(checked.canonical()).unwrap();
        assert_eq!(CheckedDefinition::parse(&json).unwrap().content_hash(), checked.content_hash());
        assert_ne!(
            CheckedDefinition::parse(&yaml.replace("hi ", "hello ")).unwrap().content_hash(),
            checked.content_hash()
        );
        // Its mistakes are the DSL's, placed in the document.
        check(&yaml.replace("set:", "sett:"), "schema at /do/0/hello: a task needs one of");
        check(&yaml.replace("name: greet", "name: Greet"), "invalid /document/name \"shop.Greet\"");
        assert_eq!(CheckedDefinition::parse("name: w\nsteps: []\n").unwrap().document_version(), None);
    }
}
