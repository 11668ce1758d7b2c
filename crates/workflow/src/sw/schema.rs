//! The Serverless Workflow DSL's JSON schema (vendored under
//! `conformance/serverless-workflow/spec/schema`), compiled once, and the check of a document
//! against it, one task at a time.
//!
//! Why one task at a time: a task is a `oneOf` of twelve kinds, and three of them (`do`, `for`,
//! `try`) hold task lists. A document that fails deep inside nested tasks makes a validator
//! that collects errors try every kind at every level: ten levels took minutes and gigabytes.
//! So the front end checks each task with its nested task lists emptied, then walks into them
//! itself, which keeps the cost linear and lets the depth limit stop a hostile document first.
//!
//! Errors name the place in the document (an RFC 6901 pointer) and the first problem found
//! down the `oneOf` branch that got furthest, rather than every branch's complaint.

use std::sync::OnceLock;

use boon::{ErrorKind, InstanceToken, SchemaIndex, Schemas, ValidationError};
use serde_json::Value;

use crate::error::{Error, Result};

const SCHEMA_TEXT: &str = include_str!("../../../../conformance/serverless-workflow/spec/schema/workflow.yaml");
const SCHEMA_URL: &str = "https://serverlessworkflow.io/schemas/1.0.3/workflow.yaml";

/// The ISO 8601 duration pattern uses look-ahead, which the `regex` crate (linear time by
/// design) does not have. Without it the pattern also admits `P` and `P1DT`; the front end's
/// duration parser refuses those with a placed error.
const DURATION_LOOKAHEADS: [&str; 2] = ["(?!$)", "(?=\\d)"];

struct Compiled {
    schemas: Schemas,
    document: SchemaIndex,
    task: SchemaIndex,
}

fn compiled() -> &'static Compiled {
    static COMPILED: OnceLock<Compiled> = OnceLock::new();
    COMPILED.get_or_init(|| {
        let mut schema: Value =
            serde_yaml::from_str(SCHEMA_TEXT).expect("the vendored Serverless Workflow schema is YAML");
        let pattern = schema
            .pointer_mut("/$defs/duration/oneOf/2/pattern")
            .expect("the vendored schema's literal duration has a pattern");
        let relaxed = DURATION_LOOKAHEADS
            .iter()
            .fold(pattern.as_str().expect("a pattern is text").to_owned(), |p, look| p.replace(look, ""));
        *pattern = Value::String(relaxed);
        let mut compiler = boon::Compiler::new();
        compiler.add_resource(SCHEMA_URL, schema).expect("the schema's URL is valid");
        let mut schemas = Schemas::new();
        let document = compiler.compile(SCHEMA_URL, &mut schemas).expect("the vendored schema compiles");
        let task = compiler.compile(&format!("{SCHEMA_URL}#/$defs/task"), &mut schemas).expect("it defines a task");
        Compiled { schemas, document, task }
    })
}

/// Checks the document's top level (its task lists emptied by the caller).
pub(super) fn check_document(document: &Value) -> Result<()> {
    check(document, compiled().document, "")
}

/// Checks one task (its nested task lists emptied by the caller) written at `pointer`.
pub(super) fn check_task(task: &Value, pointer: &str) -> Result<()> {
    check(task, compiled().task, pointer)
}

fn check(value: &Value, index: SchemaIndex, pointer: &str) -> Result<()> {
    let schema = compiled();
    match schema.schemas.validate(value, index) {
        Ok(()) => Ok(()),
        Err(error) => {
            let (at, message) = explain(&error);
            Err(Error::Schema { pointer: format!("{pointer}{at}"), message })
        }
    }
}

/// The most telling failure of an error tree: its place (relative to the value checked) and
/// what is wrong there.
fn explain(error: &ValidationError<'_, '_>) -> (String, String) {
    let leaves = leaves(error);
    // The deepest failure is where the document stopped making sense; the first one at that
    // depth is reported, in document order.
    let deepest = leaves.iter().map(|l| l.depth).max().unwrap_or(0);
    let leaf = leaves.into_iter().find(|l| l.depth == deepest);
    match leaf {
        Some(leaf) => (leaf.pointer, leaf.message),
        None => (String::new(), error.kind.to_string()),
    }
}

/// One failure at the bottom of an error tree.
#[derive(Debug)]
struct Leaf {
    pointer: String,
    depth: usize,
    message: String,
    /// A `const`, `enum` or `not` failure: the value chose another branch.
    mismatch: bool,
    /// A type failure: the types wanted and the one found, to merge alternatives' wants.
    types: Option<(Vec<String>, String)>,
    /// A pattern failure: the text and what the pattern describes (the schema definition
    /// holding it, in words), to merge alternatives' forms.
    pattern: Option<(String, String)>,
    /// A required property is missing at the place the branch was tried: most likely another
    /// kind of thing was meant.
    missing_here: bool,
}

/// The failures that explain `error`: of a `oneOf`/`anyOf`, those of the branch that got
/// furthest; elsewhere, those of every failing part, leaving out `unevaluatedProperties`
/// complaints when another part failed too (a failed part's properties count as unevaluated,
/// so those complaints are echoes of the real failure).
fn leaves(error: &ValidationError<'_, '_>) -> Vec<Leaf> {
    if matches!(error.kind, ErrorKind::OneOf(None) | ErrorKind::AnyOf) && !error.causes.is_empty() {
        let depth = error.instance_location.tokens.len();
        let branches: Vec<Vec<Leaf>> = error.causes.iter().map(leaves).collect();
        let best = branches.iter().map(|b| score(b, depth)).max();
        let mut tied: Vec<Vec<Leaf>> = branches.into_iter().filter(|b| Some(score(b, depth)) == best).collect();
        // Alternatives that all want another type here: one failure naming every type wanted.
        let merged = tied.iter().all(|b| b.len() == 1 && b[0].types.is_some() && b[0].pointer == tied[0][0].pointer);
        if merged && tied.len() > 1 {
            let mut wanted: Vec<String> = Vec::new();
            for branch in &tied {
                for want in &branch[0].types.as_ref().expect("checked above").0 {
                    if !wanted.contains(want) {
                        wanted.push(want.clone());
                    }
                }
            }
            let mut leaf = tied.swap_remove(0).remove(0);
            let got = &leaf.types.as_ref().expect("checked above").1;
            leaf.message = format!("want {}, but got {got}", wanted.join(" or "));
            return vec![leaf];
        }
        let patterns =
            tied.iter().all(|b| b.len() == 1 && b[0].pattern.is_some() && b[0].pointer == tied[0][0].pointer);
        if patterns && tied.len() > 1 {
            let mut forms: Vec<String> = Vec::new();
            for branch in &tied {
                let form = &branch[0].pattern.as_ref().expect("checked above").1;
                if !forms.contains(form) {
                    forms.push(form.clone());
                }
            }
            let mut leaf = tied.swap_remove(0).remove(0);
            let text = &leaf.pattern.as_ref().expect("checked above").0;
            leaf.message = format!("{text:?} is not a {}", forms.join(" or a "));
            return vec![leaf];
        }
        return tied.into_iter().next().unwrap_or_default();
    }
    if error.causes.is_empty() {
        return vec![leaf(error)];
    }
    let echo = |e: &ValidationError<'_, '_>| {
        matches!(e.kind, ErrorKind::FalseSchema) && e.schema_url.ends_with("/unevaluatedProperties")
    };
    let real = error.causes.iter().any(|e| !echo(e));
    error.causes.iter().filter(|e| !real || !echo(e)).flat_map(leaves).collect()
}

/// How far a `oneOf` branch got, tried at `depth`: no discriminating mismatch, the right type
/// at the branch's own place, nothing missing there, then the deepest failure, then the
/// fewest failures.
fn score(branch: &[Leaf], depth: usize) -> (bool, bool, bool, usize, std::cmp::Reverse<usize>) {
    let mismatch = branch.iter().any(|l| l.mismatch);
    let wrong_type_here = branch.iter().any(|l| l.types.is_some() && l.depth == depth);
    let missing_here = branch.iter().any(|l| l.missing_here && l.depth == depth);
    let deepest = branch.iter().map(|l| l.depth).max().unwrap_or(0);
    (!mismatch, !wrong_type_here, !missing_here, deepest, std::cmp::Reverse(branch.len()))
}

fn leaf(error: &ValidationError<'_, '_>) -> Leaf {
    let tokens = &error.instance_location.tokens;
    let mut pointer = String::new();
    for token in tokens {
        pointer.push('/');
        match token {
            InstanceToken::Prop(name) => pointer.push_str(&name.replace('~', "~0").replace('/', "~1")),
            InstanceToken::Item(index) => pointer.push_str(&index.to_string()),
        }
    }
    let mut depth = tokens.len();
    let message = match &error.kind {
        // An unknown property: name it at its parent.
        ErrorKind::FalseSchema => match tokens.last() {
            Some(InstanceToken::Prop(name)) => {
                let cut = pointer.rfind('/').unwrap_or(0);
                pointer.truncate(cut);
                depth = depth.saturating_sub(1);
                format!("unknown field `{name}`")
            }
            _ => "is not allowed here".to_owned(),
        },
        ErrorKind::Required { want } => {
            let names: Vec<String> = want.iter().map(|w| format!("`{w}`")).collect();
            format!("missing {}", names.join(", "))
        }
        ErrorKind::Pattern { got, .. } => format!("{got:?} is not a {}", form(error.schema_url)),
        ErrorKind::OneOf(Some((first, second))) => {
            format!("matches more than one form (alternatives {first} and {second})")
        }
        other => other.to_string(),
    };
    Leaf {
        pointer,
        depth,
        message,
        mismatch: matches!(error.kind, ErrorKind::Const { .. } | ErrorKind::Enum { .. } | ErrorKind::Not),
        pattern: match &error.kind {
            ErrorKind::Pattern { got, .. } => Some((got.to_string(), form(error.schema_url))),
            _ => None,
        },
        types: match &error.kind {
            ErrorKind::Type { got, want } => Some((want.iter().map(|t| t.to_string()).collect(), got.to_string())),
            _ => None,
        },
        missing_here: matches!(error.kind, ErrorKind::Required { .. }),
    }
}

/// What a schema location defines, in words: `...#/$defs/runtimeExpression/pattern` is a
/// "runtime expression".
fn form(schema_url: &str) -> String {
    let name = schema_url.rsplit("/$defs/").next().and_then(|rest| rest.split('/').next()).unwrap_or("value");
    let mut words = String::new();
    for c in name.chars() {
        if c.is_ascii_uppercase() {
            words.push(' ');
        }
        words.push(c.to_ascii_lowercase());
    }
    words.replace("uri", "URI")
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn task_error(task: Value) -> String {
        check_task(&task, "/do/0/t").unwrap_err().to_string()
    }

    #[test]
    fn the_vendored_schema_compiles_and_accepts_a_minimal_document() {
        let document = json!({
            "document": {"dsl": "1.0.3", "namespace": "default", "name": "w", "version": "1.0.0"},
            "do": []
        });
        check_document(&document).unwrap();
        check_task(&json!({"set": {"a": 1}}), "/do/0/a").unwrap();
        check_task(&json!({"wait": "PT1S"}), "/do/0/a").unwrap();
    }

    #[test]
    fn errors_point_at_the_branch_that_got_furthest() {
        let http = |with: Value| json!({"call": "http", "with": with});
        assert_eq!(
            task_error(http(json!({"method": "get", "endpoint": "https://x.test/", "bogus": 1}))),
            "document does not match the Serverless Workflow schema at /do/0/t/with: unknown field `bogus`"
        );
        assert_eq!(
            task_error(json!({"call": "http", "with": {"method": "get", "endpoint": "https://x.test/"}, "colour": 1})),
            "document does not match the Serverless Workflow schema at /do/0/t: unknown field `colour`"
        );
        assert_eq!(
            task_error(http(json!({"method": "get"}))),
            "document does not match the Serverless Workflow schema at /do/0/t/with: missing `endpoint`"
        );
        assert!(task_error(json!({"set": 5})).ends_with("at /do/0/t/set: want object or string, but got number"));
        assert!(task_error(json!({"wait": 5})).ends_with("at /do/0/t/wait: want object or string, but got number"));
        assert!(
            task_error(json!({"wait": {"hours": "two"}}))
                .ends_with("at /do/0/t/wait/hours: want integer, but got string")
        );
        let endpoint = task_error(http(json!({"method": "get", "endpoint": {"url": "https://x.test/"}})));
        assert!(endpoint.contains("at /do/0/t/with/endpoint: "), "{endpoint}");
        assert!(endpoint.ends_with("missing `uri`") || endpoint.ends_with("unknown field `url`"), "{endpoint}");
        assert!(
            task_error(http(json!({"method": "get", "endpoint": "not a uri"})))
                .ends_with("at /do/0/t/with/endpoint: \"not a uri\" is not a runtime expression or a URI template")
        );
    }

    #[test]
    fn the_duration_pattern_runs_without_look_ahead() {
        for ok in ["PT1S", "P2D", "P1W", "PT0.5S", "P1DT2H3M4S"] {
            check_task(&json!({"wait": ok}), "/do/0/a").unwrap_or_else(|e| panic!("{ok}: {e}"));
        }
        for bad in ["1s", "PT", "P1S", "T1S", "P1.H"] {
            if bad == "PT" {
                // Admitted by the relaxed pattern; the duration parser refuses it.
                continue;
            }
            assert!(check_task(&json!({"wait": bad}), "/do/0/a").is_err(), "{bad}");
        }
    }
}
