//! Expressions: jq programs (run by the jaq crates) written `${ ... }` inside the strings of a
//! JSON template, as in a step's input mapping or a workflow's output mapping.
//!
//! A string that is one expression and nothing else (`"${ .input.amount }"`) becomes the
//! expression's value, of any JSON type. A string that mixes text and expressions
//! (`"order ${ .input.id } of ${ .input.shop }"`) becomes a string, each expression's value
//! spliced in (strings as they are, other values as JSON). Everything else passes through.
//!
//! An expression runs against a context; the workflow engine's is
//! `{"input": <run input>, "steps": {"<step>": {"output": <its output>}}}`. It must produce
//! exactly one value.
//!
//! Plain paths are walked here, in microseconds. Any other expression is jq, which can run
//! without end, take all memory or recurse past any stack: [`Template::render_with`] hands
//! those to an [`Evaluator`], the port through which a server bounds them ([`Limits`]);
//! [`Template::render`] runs them on the caller's thread, unbounded. jq's `env` (the server's
//! environment) is not offered, and `halt` fails the expression instead of ending the process.

mod evaluator;

use std::collections::BTreeSet;
use std::fmt;

use jaq_core::load::{Arena, File, Loader};
use jaq_core::{Compiler, Ctx, Vars, data};
use jaq_json::Val;
use serde::Deserialize;
use serde_json::Value;

pub use self::evaluator::{
    Bound, DEFAULT_CPU_TIME, DEFAULT_MEMORY_BYTES, DEFAULT_OUTPUT_BYTES, EXPRESSION_LIMIT, Evaluation, Evaluator,
    InProcessEvaluator, Limits, evaluate_all,
};
use crate::error::{Error, Result};

type Filter = jaq_core::compile::Filter<jaq_core::Native<data::JustLut<Val>>>;

/// One compiled `${ ... }` expression.
#[derive(Clone)]
pub struct Expression {
    source: String,
    compiled: Compiled,
    /// The variables it was compiled with (`$input`, `$item`, ...), in binding order.
    variables: std::sync::Arc<[String]>,
}

/// Plain paths (`.steps.charge.output["id"][0]`), the common case, are walked directly: jaq
/// compiles its standard library with every expression (milliseconds each) and needs the
/// whole context converted to its own values on every run.
#[derive(Clone)]
enum Compiled {
    Path(Vec<Segment>),
    /// `$name` followed by a plain path: the variable at this index, walked.
    VariablePath(usize, Vec<Segment>),
    Jaq(std::sync::Arc<Filter>),
}

#[derive(Debug, Clone, PartialEq)]
enum Segment {
    Key(String),
    Index(usize),
}

/// The segments of `source` when it is a plain path, as jq reads it: `.`, then any of
/// `.name`, `."name"`, `["name"]` and `[N]`. `None` for anything else (left to jaq).
fn plain_path(source: &str) -> Option<Vec<Segment>> {
    let mut rest = source.trim().strip_prefix('.')?;
    let mut segments = Vec::new();
    let mut after_dot = true;
    while !rest.is_empty() {
        if after_dot && rest.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_') {
            let end = rest.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(rest.len());
            segments.push(Segment::Key(rest[..end].to_owned()));
            rest = &rest[end..];
        } else if let Some(quoted) = rest.strip_prefix('"').filter(|_| after_dot) {
            let end = quoted.find(['"', '\\'])?;
            if quoted[end..].starts_with('\\') {
                return None;
            }
            segments.push(Segment::Key(quoted[..end].to_owned()));
            rest = &quoted[end + 1..];
        } else if let Some(inner) = rest.strip_prefix('[') {
            let end = inner.find(']')?;
            let key = &inner[..end];
            if let Some(name) = key.strip_prefix('"').and_then(|k| k.strip_suffix('"')) {
                if name.contains(['"', '\\']) {
                    return None;
                }
                segments.push(Segment::Key(name.to_owned()));
            } else if !key.is_empty() && key.bytes().all(|b| b.is_ascii_digit()) {
                segments.push(Segment::Index(key.parse().ok()?));
            } else {
                return None;
            }
            rest = &inner[end + 1..];
        } else {
            return None;
        }
        after_dot = false;
        if let Some(next) = rest.strip_prefix('.') {
            rest = next;
            after_dot = true;
            if rest.is_empty() {
                return None;
            }
        }
    }
    Some(segments)
}

/// jaq's indexing: a missing key or index is null, and so is any index of null or a number
/// index of an object; other mismatches fail.
fn walk(context: &Value, segments: &[Segment]) -> Result<Value, String> {
    let mut at = context;
    for segment in segments {
        at = match (at, segment) {
            (Value::Null, _) => return Ok(Value::Null),
            (Value::Object(map), Segment::Key(key)) => map.get(key).unwrap_or(&Value::Null),
            (Value::Array(items), Segment::Index(i)) => items.get(*i).unwrap_or(&Value::Null),
            (Value::Object(_), Segment::Index(_)) => return Ok(Value::Null),
            (other, Segment::Key(key)) => return Err(format!("failed: cannot index {} with \"{key}\"", quote(other))),
            (other, Segment::Index(i)) => return Err(format!("failed: cannot index {} with {i}", quote(other))),
        };
    }
    Ok(at.clone())
}

/// The value as JSON text, cut short for error messages.
fn quote(value: &Value) -> String {
    let text = value.to_string();
    match text.char_indices().nth(64) {
        Some((cut, _)) => format!("{}...", &text[..cut]),
        None => text,
    }
}

impl fmt::Debug for Expression {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Expression({:?})", self.source)
    }
}

/// Why an expression failed to run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EvalError {
    /// The expression's source.
    pub expression: String,
    /// What went wrong.
    pub reason: String,
    /// The bound it went past, when it did: its error class is [`EXPRESSION_LIMIT`].
    pub bound: Option<Bound>,
}

/// jq filters an expression may not use: `env` would show anyone who writes a workflow the
/// server's environment (its store URL, its settings), and `halt` ends the process running it.
const DENIED: [&str; 9] =
    ["env", "halt", "halt_error", "input", "inputs", "debug", "debug_empty", "stderr", "stderr_empty"];

/// How deep a value may nest: serde_json's own limit, which every JSON reader of Baton keeps.
const MAX_VALUE_DEPTH: usize = 128;
/// The longest reason kept: jq errors can quote whole values.
const MAX_REASON_CHARS: usize = 512;
/// The most of an expression's source an error message quotes.
const MAX_QUOTED_SOURCE_CHARS: usize = 120;

impl EvalError {
    /// The expression failed: `reason` says why.
    pub fn failed(expression: &str, reason: impl Into<String>) -> Self {
        Self { expression: expression.to_owned(), reason: cut(reason.into(), MAX_REASON_CHARS), bound: None }
    }

    /// The expression went past `bound`.
    pub fn limit(expression: &str, bound: Bound) -> Self {
        Self { expression: expression.to_owned(), reason: bound.to_string(), bound: Some(bound) }
    }

    /// Whether the expression went past a bound (class [`EXPRESSION_LIMIT`]).
    pub fn is_limit(&self) -> bool {
        self.bound.is_some()
    }
}

impl fmt::Display for EvalError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_limit() {
            write!(f, "{EXPRESSION_LIMIT}: ")?;
        }
        let source = cut(self.expression.clone(), MAX_QUOTED_SOURCE_CHARS);
        write!(f, "expression `{source}` {}", self.reason)
    }
}

impl std::error::Error for EvalError {}

/// `text` cut to `max` characters, marked with `...` when cut.
fn cut(mut text: String, max: usize) -> String {
    if let Some((at, _)) = text.char_indices().nth(max) {
        text.truncate(at);
        text.push_str("...");
    }
    text
}

/// Byte offset of `part` within `whole`, when `part` is a slice of it.
fn offset(whole: &str, part: &str) -> Option<usize> {
    let start = whole.as_ptr() as usize;
    let at = part.as_ptr() as usize;
    (at >= start && at <= start + whole.len()).then(|| at - start)
}

impl Expression {
    /// Compiles `source`, naming `field` on failure.
    pub fn compile(field: &str, source: &str) -> Result<Self> {
        Self::compile_with(field, source, &[])
    }

    /// Compiles `source` where it may read the named variables (`$name`); their values are
    /// bound in the same order when it runs. A variable not named here does not compile.
    pub fn compile_with(field: &str, source: &str, variables: &[&str]) -> Result<Self> {
        let names: std::sync::Arc<[String]> = variables.iter().map(|v| (*v).to_owned()).collect();
        if let Some(segments) = plain_path(source) {
            return Ok(Self { source: source.to_owned(), compiled: Compiled::Path(segments), variables: names });
        }
        if let Some(rest) = source.trim().strip_prefix('$') {
            let end = rest.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(rest.len());
            let (name, path) = rest.split_at(end);
            let path = if path.is_empty() { Some(Vec::new()) } else { plain_path(path) };
            if let (Some(index), Some(segments)) = (variables.iter().position(|v| *v == name), path) {
                let compiled = Compiled::VariablePath(index, segments);
                return Ok(Self { source: source.to_owned(), compiled, variables: names });
            }
        }
        Self::compile_with_jaq(field, source, names)
    }

    fn compile_with_jaq(field: &str, source: &str, variables: std::sync::Arc<[String]>) -> Result<Self> {
        let bad = |reason: String| Error::invalid(field, source, reason);
        let defs =
            jaq_core::defs().chain(jaq_std::defs()).chain(jaq_json::defs()).filter(|def| !DENIED.contains(&def.name));
        let funs = jaq_core::funs()
            .chain(jaq_std::funs())
            .chain(jaq_json::funs())
            .filter(|(name, _, _)| !DENIED.contains(name));
        let arena = Arena::default();
        let modules = Loader::new(defs).load(&arena, File { code: source, path: () }).map_err(|errors| {
            let reasons: Vec<String> = errors
                .into_iter()
                .flat_map(|(_, error)| match error {
                    jaq_core::load::Error::Io(io) => io.into_iter().map(|(_, e)| e).collect::<Vec<_>>(),
                    jaq_core::load::Error::Lex(lex) => {
                        lex.into_iter().map(|(expected, at)| describe(source, expected.as_str(), at)).collect()
                    }
                    jaq_core::load::Error::Parse(parse) => {
                        parse.into_iter().map(|(expected, at)| describe(source, expected.as_str(), at)).collect()
                    }
                })
                .collect();
            bad(format!("does not parse: {}", reasons.join("; ")))
        })?;
        let dollars: Vec<String> = variables.iter().map(|v| format!("${v}")).collect();
        let compiler = Compiler::default().with_funs(funs).with_global_vars(dollars.iter().map(String::as_str));
        let filter = compiler.compile(modules).map_err(|errors| {
            let names: Vec<String> = errors
                .into_iter()
                .flat_map(|(_, undefined)| undefined.into_iter().map(|(name, kind)| format!("{name} ({kind:?})")))
                .collect();
            bad(format!("uses undefined {}", names.join(", ")))
        })?;
        Ok(Self { source: source.to_owned(), compiled: Compiled::Jaq(std::sync::Arc::new(filter)), variables })
    }

    /// The variables it was compiled with, in binding order.
    pub fn variables(&self) -> &[String] {
        &self.variables
    }

    /// The expression's source.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Whether the expression is a plain path (of the context or of a variable), walked
    /// without jaq.
    pub fn is_plain_path(&self) -> bool {
        matches!(self.compiled, Compiled::Path(_) | Compiled::VariablePath(..))
    }

    /// Runs the expression against `context` on this thread, unbounded; it must produce
    /// exactly one value.
    pub fn eval(&self, context: &Value) -> Result<Value, EvalError> {
        self.eval_with(context, &[])
    }

    /// Runs the expression against `context` with `values` bound to its variables in order
    /// (missing ones are null), on this thread, unbounded.
    pub fn eval_with(&self, context: &Value, values: &[Value]) -> Result<Value, EvalError> {
        let filter = match &self.compiled {
            Compiled::Path(segments) => return walk(context, segments).map_err(|reason| self.fail(reason)),
            Compiled::VariablePath(index, segments) => {
                let value = values.get(*index).unwrap_or(&Value::Null);
                return walk(value, segments).map_err(|reason| self.fail(reason));
            }
            Compiled::Jaq(filter) => filter,
        };
        let input = Val::deserialize(context).map_err(|e| self.fail(format!("cannot read its context: {e}")))?;
        let bound = self.bind(values)?;
        let text = self.run_jaq(filter, input, bound)?;
        self.read_output(&text)
    }

    /// The variables' values as jaq's, in order, null for missing ones.
    fn bind(&self, values: &[Value]) -> Result<Vec<Val>, EvalError> {
        (0..self.variables.len())
            .map(|i| Val::deserialize(values.get(i).unwrap_or(&Value::Null)))
            .collect::<Result<_, _>>()
            .map_err(|e| self.fail(format!("cannot read a variable: {e}")))
    }

    fn fail(&self, reason: String) -> EvalError {
        EvalError::failed(&self.source, reason)
    }

    /// Runs the jaq filter on `input`; its one value as JSON text.
    fn run_jaq(&self, filter: &Filter, input: Val, variables: Vec<Val>) -> Result<String, EvalError> {
        let ctx = Ctx::<data::JustLut<Val>>::new(&filter.lut, Vars::new(variables));
        // Two outputs are enough to know there is more than one; do not run the rest.
        let mut outputs = filter.id.run((ctx, input)).take(2);
        let value = match (outputs.next(), outputs.next()) {
            (None, _) => return Err(self.fail("produced no value".to_owned())),
            (Some(_), Some(_)) => return Err(self.fail("produced more than one value".to_owned())),
            (Some(Ok(value)), None) => value,
            // jaq's own `unwrap_valr` would end the process on `halt`.
            (Some(Err(exception)), None) => {
                return Err(match exception.get_err() {
                    Ok(error) => self.fail(format!("failed: {error}")),
                    Err(_) => self.fail("called halt, which an expression may not".to_owned()),
                });
            }
        };
        Ok(value.to_string())
    }

    /// jaq writes values as JSON text; reading that back is the conversion it offers.
    fn read_output(&self, text: &str) -> Result<Value, EvalError> {
        serde_json::from_str(text).map_err(|e| {
            if e.to_string().starts_with("recursion limit exceeded") {
                EvalError::limit(&self.source, Bound::Depth(MAX_VALUE_DEPTH))
            } else {
                self.fail(format!("produced a value that is not JSON: {e}"))
            }
        })
    }

    /// Step ids this expression reads as `.steps.<id>`, `.steps["<id>"]` or `.steps."<id>"`
    /// (`steps` written any of those ways too). Dynamic access (`.steps[$name]`) cannot be
    /// seen here.
    pub fn referenced_steps(&self) -> BTreeSet<String> {
        if let Compiled::Path(segments) = &self.compiled {
            return match segments.as_slice() {
                [Segment::Key(steps), Segment::Key(step), ..] if steps == "steps" => BTreeSet::from([step.clone()]),
                _ => BTreeSet::new(),
            };
        }
        let mut steps = BTreeSet::new();
        for prefix in [".steps", ".\"steps\"", "[\"steps\"]"] {
            let mut rest = self.source.as_str();
            while let Some(at) = rest.find(prefix) {
                rest = &rest[at + prefix.len()..];
                let name = if let Some(after) = rest.strip_prefix('.').filter(|a| !a.starts_with('"')) {
                    let end = after.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(after.len());
                    &after[..end]
                } else if let Some(after) = rest.strip_prefix("[\"").or_else(|| rest.strip_prefix(".\"")) {
                    after.find('"').map_or("", |end| &after[..end])
                } else {
                    ""
                };
                if !name.is_empty() {
                    steps.insert(name.to_owned());
                }
            }
        }
        steps
    }
}

fn describe(source: &str, expected: &str, at: &str) -> String {
    match offset(source, at) {
        Some(offset) if at.is_empty() => format!("expected {expected} at the end (offset {offset})"),
        Some(offset) => format!("expected {expected} at offset {offset}"),
        None => format!("expected {expected} near {at:?}"),
    }
}

/// A piece of a template string.
#[derive(Debug, Clone)]
enum Part<E = Expression> {
    Text(String),
    Expr(E),
}

/// A JSON value whose strings may hold `${ ... }` expressions, compiled once.
#[derive(Debug, Clone)]
pub struct Template {
    node: Node,
    /// Whether any expression needs jaq, so an [`Evaluator`].
    uses_jaq: bool,
    /// Whether any expression reads variables.
    needs_variables: bool,
}

#[derive(Debug, Clone)]
enum Node {
    Literal(Value),
    /// A string that is exactly one expression: its value, any type.
    Whole(Expression),
    /// Text with expressions spliced in.
    Spliced(Vec<Part>),
    Array(Vec<Node>),
    Object(Vec<(String, Node)>),
}

impl Template {
    /// Compiles every expression in `value`; errors name the field path, e.g.
    /// `steps.charge.input.amount`.
    pub fn compile(field: &str, value: &Value) -> Result<Self> {
        Self::compile_with(field, value, &[])
    }

    /// Compiles every expression in `value`, where they may read the named variables.
    pub fn compile_with(field: &str, value: &Value, variables: &[&str]) -> Result<Self> {
        Ok(Self::of(Node::compile(field, value, variables)?))
    }

    /// A template that is one expression, `source` (written without `${ }`), whose value is
    /// the template's: how filters such as an output filter are written.
    pub fn expression(field: &str, source: &str, variables: &[&str]) -> Result<Self> {
        Ok(Self::of(Node::Whole(Expression::compile_with(field, source, variables)?)))
    }

    fn of(node: Node) -> Self {
        let mut expressions = Vec::new();
        node.collect(&mut expressions);
        let uses_jaq = expressions.iter().any(|e| !e.is_plain_path());
        let needs_variables =
            expressions.iter().any(|e| !matches!(e.compiled, Compiled::Path(_)) && !e.variables.is_empty());
        Self { node, uses_jaq, needs_variables }
    }

    /// True when the template holds no expression: it renders to the same value every time.
    pub fn is_literal(&self) -> bool {
        matches!(self.node, Node::Literal(_))
    }

    /// True when rendering may read variables: only then do callers need to bind them.
    pub fn needs_variables(&self) -> bool {
        self.needs_variables
    }

    /// How many expressions in `value` need jq (are not plain paths), found without compiling
    /// any: compiling one takes about half a millisecond, so a caller may bound them first.
    /// Malformed strings count for nothing; compiling them says what is wrong.
    pub fn count_jq(value: &Value) -> usize {
        match value {
            Value::String(text) => split("", text, |source| Ok(plain_path(source).is_none()))
                .map_or(0, |parts| parts.iter().filter(|p| matches!(p, Part::Expr(true))).count()),
            Value::Array(items) => items.iter().map(Self::count_jq).sum(),
            Value::Object(map) => map.values().map(Self::count_jq).sum(),
            _ => 0,
        }
    }

    /// Renders the template against `context`, running any jq on this thread, unbounded.
    pub fn render(&self, context: &Value) -> Result<Value, EvalError> {
        self.render_vars(context, &[])
    }

    /// Renders the template against `context` with `values` bound to its variables, running any
    /// jq on this thread, unbounded.
    pub fn render_vars(&self, context: &Value, values: &[Value]) -> Result<Value, EvalError> {
        self.node.render(&mut |e: &Expression| e.eval_with(context, values))
    }

    /// Renders the template against `context`: plain paths here, every other expression on
    /// `evaluator`, all of them in one evaluation. Without such expressions it is
    /// [`Template::render`] and answers on its first poll.
    pub async fn render_with(&self, context: &Value, evaluator: &dyn Evaluator) -> Result<Value, EvalError> {
        self.render_bounded(context, &[], evaluator).await
    }

    /// [`Template::render_with`], with `values` bound to the expressions' variables.
    pub async fn render_bounded(
        &self,
        context: &Value,
        values: &[Value],
        evaluator: &dyn Evaluator,
    ) -> Result<Value, EvalError> {
        if !self.uses_jaq {
            return self.render_vars(context, values);
        }
        let jaq: Vec<&Expression> = self.expressions().into_iter().filter(|e| !e.is_plain_path()).collect();
        let asked = jaq.len();
        let values_bound: &[Value] = values;
        let values = evaluator.evaluate(&jaq, context, values_bound).await?;
        if values.len() != asked {
            let first = jaq.first().map_or("", |e| e.source());
            let reason = format!("got {} values from the evaluator for {asked} expressions", values.len());
            return Err(EvalError::failed(first, reason));
        }
        let mut values = values.into_iter();
        self.node.render(&mut |e: &Expression| {
            if e.is_plain_path() {
                e.eval_with(context, values_bound)
            } else {
                Ok(values.next().expect("a value per expression, counted"))
            }
        })
    }

    /// Whether rendering runs jq (any expression that is not a plain path).
    pub fn uses_jaq(&self) -> bool {
        self.uses_jaq
    }

    /// Renders the template with `eval` answering each of its expressions, called in the
    /// order [`Template::expressions`] lists them: for callers that evaluate the expressions of
    /// several templates in one batch.
    pub fn render_by(&self, eval: &mut dyn FnMut(&Expression) -> Result<Value, EvalError>) -> Result<Value, EvalError> {
        self.node.render(eval)
    }

    /// Renders the template as text, passing each expression's value (as text: a string as it
    /// is, anything else as JSON) through `escape`, the literal text as it is: for templates
    /// whose result lands in a URL. A template that is not a string renders as JSON text.
    /// `eval` answers each expression, as for [`Template::render_by`].
    pub fn render_text_by(
        &self,
        eval: &mut dyn FnMut(&Expression) -> Result<Value, EvalError>,
        escape: &dyn Fn(&str, &mut String),
    ) -> Result<String, EvalError> {
        let splice = |value: Value, text: &mut String| match value {
            Value::String(s) => escape(&s, text),
            other => escape(&other.to_string(), text),
        };
        let mut text = String::new();
        match &self.node {
            Node::Literal(Value::String(literal)) => text.push_str(literal),
            Node::Whole(e) => splice(eval(e)?, &mut text),
            Node::Spliced(parts) => {
                for part in parts {
                    match part {
                        Part::Text(t) => text.push_str(t),
                        Part::Expr(e) => splice(eval(e)?, &mut text),
                    }
                }
            }
            other => text.push_str(&other.render(eval)?.to_string()),
        }
        Ok(text)
    }

    /// Every expression in the template.
    pub fn expressions(&self) -> Vec<&Expression> {
        let mut found = Vec::new();
        self.node.collect(&mut found);
        found
    }

    /// Step ids the template's expressions read (see [`Expression::referenced_steps`]).
    pub fn referenced_steps(&self) -> BTreeSet<String> {
        self.expressions().into_iter().flat_map(Expression::referenced_steps).collect()
    }
}

impl Node {
    fn compile(field: &str, value: &Value, variables: &[&str]) -> Result<Self> {
        Ok(match value {
            Value::String(text) => {
                let parts = split(field, text, |source| Expression::compile_with(field, source, variables))?;
                match parts.as_slice() {
                    [] => Node::Literal(value.clone()),
                    [Part::Expr(e)] => Node::Whole(e.clone()),
                    // Text only, with any `$${` already read as `${`.
                    [Part::Text(t)] => Node::Literal(Value::String(t.clone())),
                    _ => Node::Spliced(parts),
                }
            }
            Value::Array(items) => Node::Array(
                items
                    .iter()
                    .enumerate()
                    .map(|(i, v)| Node::compile(&format!("{field}[{i}]"), v, variables))
                    .collect::<Result<_>>()?,
            ),
            Value::Object(map) => Node::Object(
                map.iter()
                    .map(|(k, v)| Ok((k.clone(), Node::compile(&format!("{field}.{k}"), v, variables)?)))
                    .collect::<Result<_>>()?,
            ),
            other => Node::Literal(other.clone()),
        })
    }

    /// Renders the node, taking each expression's value from `eval`, in the order of
    /// [`Node::collect`].
    fn render(&self, eval: &mut dyn FnMut(&Expression) -> Result<Value, EvalError>) -> Result<Value, EvalError> {
        Ok(match self {
            Node::Literal(value) => value.clone(),
            Node::Whole(e) => eval(e)?,
            Node::Spliced(parts) => {
                let mut text = String::new();
                for part in parts {
                    match part {
                        Part::Text(t) => text.push_str(t),
                        Part::Expr(e) => match eval(e)? {
                            Value::String(s) => text.push_str(&s),
                            other => text.push_str(&other.to_string()),
                        },
                    }
                }
                Value::String(text)
            }
            Node::Array(items) => Value::Array(items.iter().map(|n| n.render(eval)).collect::<Result<_, _>>()?),
            Node::Object(entries) => Value::Object(
                entries.iter().map(|(k, n)| Ok((k.clone(), n.render(eval)?))).collect::<Result<_, EvalError>>()?,
            ),
        })
    }

    fn collect<'a>(&'a self, found: &mut Vec<&'a Expression>) {
        match self {
            Node::Literal(_) => {}
            Node::Whole(e) => found.push(e),
            Node::Spliced(parts) => found.extend(parts.iter().filter_map(|p| match p {
                Part::Expr(e) => Some(e),
                Part::Text(_) => None,
            })),
            Node::Array(items) => items.iter().for_each(|n| n.collect(found)),
            Node::Object(entries) => entries.iter().for_each(|(_, n)| n.collect(found)),
        }
    }
}

/// Splits a template string into text and expressions, each made by `expression` from its
/// source. `$${` is a literal `${`.
fn split<E>(field: &str, text: &str, mut expression: impl FnMut(&str) -> Result<E>) -> Result<Vec<Part<E>>> {
    let mut parts = Vec::new();
    let mut literal = String::new();
    let mut rest = text;
    while let Some(at) = rest.find("${") {
        if rest[..at].ends_with('$') {
            literal.push_str(&rest[..at - 1]);
            literal.push_str("${");
            rest = &rest[at + 2..];
            continue;
        }
        literal.push_str(&rest[..at]);
        let body = &rest[at + 2..];
        let end = closing_brace(body).ok_or_else(|| Error::invalid(field, text, "has `${` without its closing `}`"))?;
        if !literal.is_empty() {
            parts.push(Part::Text(std::mem::take(&mut literal)));
        }
        let source = body[..end].trim();
        if source.is_empty() {
            return Err(Error::invalid(field, text, "has an empty `${ }`"));
        }
        parts.push(Part::Expr(expression(source)?));
        rest = &body[end + 1..];
    }
    literal.push_str(rest);
    if !literal.is_empty() {
        parts.push(Part::Text(literal));
    }
    Ok(parts)
}

/// The index of the `}` that closes an expression, skipping braces and strings inside it.
fn closing_brace(body: &str) -> Option<usize> {
    let mut depth = 0usize;
    let mut in_string = false;
    let mut escaped = false;
    for (i, c) in body.char_indices() {
        if in_string {
            match (escaped, c) {
                (true, _) => escaped = false,
                (false, '\\') => escaped = true,
                (false, '"') => in_string = false,
                _ => {}
            }
            continue;
        }
        match c {
            '"' => in_string = true,
            '{' => depth += 1,
            '}' if depth == 0 => return Some(i),
            '}' => depth -= 1,
            _ => {}
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn plain_paths_are_walked_as_jaq_would_run_them() {
        let contexts = [
            context(),
            json!(null),
            json!({"steps": null, "input": [10, {"a b": 1}]}),
            json!({"steps": {"s-1": {"output": 5}}, "input": "text"}),
        ];
        let paths = [
            ".",
            ".input",
            ".input.amount",
            ".input.items[1]",
            ".input.items[7]",
            ".input[1][\"a b\"]",
            ".input[0]",
            ".input.\"id\"",
            ".steps.charge.output.receipt",
            ".steps[\"s-1\"].output",
            ".steps.missing.output.deep",
            ".input.amount.x",
            ".input.items.x",
        ];
        for path in paths {
            let walked = Expression::compile("f", path).unwrap();
            assert!(matches!(walked.compiled, Compiled::Path(_)), "{path} is a plain path");
            let jaq = Expression::compile_with_jaq("f", path, std::sync::Arc::from([])).unwrap();
            for context in &contexts {
                match (walked.eval(context), jaq.eval(context)) {
                    (Ok(a), Ok(b)) => assert_eq!(a, b, "{path} on {context}"),
                    (Err(_), Err(_)) => {}
                    (a, b) => panic!("{path} on {context}: walked {a:?}, jaq {b:?}"),
                }
            }
        }
        for not_plain in [".a | length", ".a[-1]", ".a[]", "..", ".a.", ".[\"x\\\"y\"]", "1", ".a?", " .a + 1"] {
            let expression = Expression::compile("f", not_plain);
            assert!(expression.is_err() || matches!(expression.unwrap().compiled, Compiled::Jaq(_)), "{not_plain}");
        }
    }

    fn context() -> Value {
        json!({"input": {"amount": 42, "id": "o-7", "items": [1, 2, 3]},
               "steps": {"charge": {"output": {"receipt": "r-1", "ok": true}}}})
    }

    fn check(template: Value, expected: std::result::Result<Value, &str>) {
        let got = Template::compile("input", &template)
            .map_err(|e| e.to_string())
            .and_then(|t| t.render(&context()).map_err(|e| e.to_string()));
        match (got, expected) {
            (Ok(got), Ok(want)) => assert_eq!(got, want, "{template}"),
            (Err(got), Err(want)) => assert!(got.contains(want), "{got:?} should contain {want:?}"),
            (got, want) => panic!("{template}: got {got:?}, want {want:?}"),
        }
    }

    #[test]
    fn templates_render_values_strings_and_literals() {
        check(json!("${ .input.amount }"), Ok(json!(42)));
        check(json!({"total": "${ .input.amount * 2 }", "fixed": 1}), Ok(json!({"total": 84, "fixed": 1})));
        check(json!("${ .steps.charge.output }"), Ok(json!({"receipt": "r-1", "ok": true})));
        check(json!("order ${ .input.id }: ${ .input.items }"), Ok(json!("order o-7: [1,2,3]")));
        check(json!(["${ .input.items | length }", "plain"]), Ok(json!([3, "plain"])));
        check(json!("${ {a: .input.id} }"), Ok(json!({"a": "o-7"})));
        check(json!("${ \"}\" }"), Ok(json!("}")));
        check(json!("cost $${ not an expression }"), Ok(json!("cost ${ not an expression }")));
        check(json!("${ .input.missing }"), Ok(json!(null)));
    }

    #[test]
    fn bad_expressions_are_named() {
        check(json!({"a": "${ .input. }"}), Err(r#"invalid input.a ".input.""#));
        check(json!("${ .input[ }"), Err("does not parse: expected"));
        check(json!("${ nosuch(1) }"), Err("uses undefined nosuch"));
        check(json!("${ .input.id"), Err("without its closing `}`"));
        check(json!("${  }"), Err("has an empty `${ }`"));
        check(json!("${ .input.items[] }"), Err("expression `.input.items[]` produced more than one value"));
        check(json!("${ empty }"), Err("produced no value"));
        check(json!("${ error(\"boom\") }"), Err("failed"));
        check(json!("${ .input.id + 1 }"), Err("expression `.input.id + 1` failed"));
    }

    #[test]
    fn expressions_cannot_read_the_environment_or_end_the_process() {
        check(json!("${ env }"), Err("uses undefined env"));
        check(json!("${ env.PATH }"), Err("uses undefined env"));
        check(json!("${ halt }"), Err("uses undefined halt"));
        check(json!("${ \"bye\" | halt_error(1) }"), Err("uses undefined halt_error"));
    }

    #[test]
    fn errors_quote_long_expressions_and_reasons_cut_short() {
        let long = format!("error(\"{}\") + {}", "x".repeat(2000), "1 + ".repeat(100) + "1");
        let error =
            Template::compile("input", &json!(format!("${{ {long} }}"))).unwrap().render(&context()).unwrap_err();
        assert_eq!(error.expression, long, "the error keeps the whole source");
        let shown = error.to_string();
        assert!(shown.len() < 800, "{} characters: {shown}", shown.len());
        assert!(shown.contains("...` failed: "), "{shown}");
    }

    #[test]
    fn values_nested_past_the_json_limit_are_an_expression_limit() {
        let template = Template::compile("input", &json!("${ reduce range(200) as $i (0; [.]) }")).unwrap();
        let error = template.render(&context()).unwrap_err();
        assert_eq!(error.bound, Some(Bound::Depth(128)), "{error}");
        assert!(error.to_string().starts_with("expression_limit: expression `reduce range(200)"), "{error}");
    }

    #[derive(Debug, Default)]
    struct Counting {
        calls: std::sync::Mutex<Vec<Vec<String>>>,
    }

    impl Evaluator for Counting {
        fn evaluate<'a>(
            &'a self,
            expressions: &'a [&'a Expression],
            context: &'a Value,
            variables: &'a [Value],
        ) -> crate::api::BoxFuture<'a, Result<Vec<Value>, EvalError>> {
            self.calls.lock().unwrap().push(expressions.iter().map(|e| e.source().to_owned()).collect());
            Box::pin(std::future::ready(evaluate_all(expressions, context, variables, DEFAULT_OUTPUT_BYTES)))
        }
    }

    #[test]
    fn render_with_sends_only_jq_to_the_evaluator_in_one_batch() {
        use futures_util::FutureExt as _;
        let evaluator = Counting::default();
        let template = Template::compile(
            "input",
            &json!({"a": "${ .input.amount }", "b": ["${ .input.amount * 2 }", "n=${ .input.items | length }"],
                    "c": "${ .steps.charge.output.receipt }"}),
        )
        .unwrap();
        assert!(template.uses_jaq());
        let rendered = template.render_with(&context(), &evaluator).now_or_never().unwrap().unwrap();
        assert_eq!(rendered, json!({"a": 42, "b": [84, "n=3"], "c": "r-1"}));
        assert_eq!(*evaluator.calls.lock().unwrap(), [vec![".input.amount * 2", ".input.items | length"]]);

        let plain = Template::compile("input", &json!({"a": "${ .input.amount }", "b": "id ${ .input.id }"})).unwrap();
        assert!(!plain.uses_jaq());
        let rendered = plain.render_with(&context(), &evaluator).now_or_never().unwrap().unwrap();
        assert_eq!(rendered, json!({"a": 42, "b": "id o-7"}));
        assert_eq!(evaluator.calls.lock().unwrap().len(), 1, "plain paths never reach the evaluator");
    }

    #[test]
    fn expressions_that_need_jq_are_counted_without_compiling() {
        let template = json!({"a": ["${ .input.a }", "${ .input.a + 1 }", "x ${ .steps.x.output } ${ length }"],
                              "b": "${ nosuch(1) }", "c": "${ .input", "d": "$${ 1 + 1 }", "e": 7});
        assert_eq!(Template::count_jq(&template), 3);
    }

    #[test]
    fn referenced_steps_are_found() {
        let template = Template::compile(
            "input",
            &json!({"a": "${ .steps.charge.output.x }", "b": "${ .steps[\"ship-it\"].output }", "c": "${ .input }"}),
        )
        .unwrap();
        let steps: Vec<String> = template.referenced_steps().into_iter().collect();
        assert_eq!(steps, ["charge", "ship-it"]);
        for (source, step) in [
            (".[\"steps\"][\"ghost\"].output", "ghost"),
            (".\"steps\".ghost.output", "ghost"),
            (".[\"steps\"].ghost.output | length", "ghost"),
            (".\"steps\".\"gh-ost\".output + 1", "gh-ost"),
            (".steps[\"ghost\"].output | length", "ghost"),
        ] {
            let steps: Vec<String> = Expression::compile("f", source).unwrap().referenced_steps().into_iter().collect();
            assert_eq!(steps, [step], "{source}");
        }
    }

    #[test]
    fn compiled_templates_are_shared_across_threads() {
        fn send_sync<T: Send + Sync>() {}
        send_sync::<Template>();
    }

    #[test]
    fn variables_are_bound_in_order_and_unknown_ones_do_not_compile() {
        let vars = ["item", "index"];
        let values = [json!({"sku": "b-1", "n": 2}), json!(3)];
        let context = json!({"input": {"id": "o-7"}});
        let render = |template: Value| {
            Template::compile_with("t", &template, &vars).unwrap().render_vars(&context, &values).unwrap()
        };
        assert_eq!(render(json!("${ $item.sku }")), json!("b-1"));
        assert_eq!(render(json!("${ $item }")), json!({"sku": "b-1", "n": 2}));
        assert_eq!(render(json!("${ $index + $item.n }")), json!(5));
        assert_eq!(render(json!("n${ $index }-${ .input.id }")), json!("n3-o-7"));
        let whole = Template::expression("t", "$item.n * 10", &vars).unwrap();
        assert_eq!(whole.render_vars(&json!(null), &values).unwrap(), json!(20));
        assert!(whole.uses_jaq() && whole.needs_variables());
        let path = Template::expression("t", "$item.sku", &vars).unwrap();
        assert!(!path.uses_jaq() && path.needs_variables());
        // Fewer values than variables: the rest are null.
        let index = Template::compile_with("t", &json!("${ $index }"), &vars).unwrap();
        assert_eq!(index.render(&json!({})).unwrap(), json!(null));
        let err = Template::compile_with("t", &json!("${ $nope }"), &vars).unwrap_err().to_string();
        assert!(err.contains("uses undefined"), "{err}");
    }

    #[test]
    fn bound_evaluation_binds_variables_too() {
        use futures_util::FutureExt as _;
        let vars = ["item"];
        let template = Template::compile_with("t", &json!({"a": "${ $item * 2 }", "b": "${ $item }"}), &vars).unwrap();
        let rendered = template
            .render_bounded(&json!({}), &[json!(21)], &InProcessEvaluator::default())
            .now_or_never()
            .expect("in process answers at once");
        assert_eq!(rendered.unwrap(), json!({"a": 42, "b": 21}));
    }

    #[test]
    fn expressions_cannot_reach_the_server() {
        for denied in ["env", "$ENV", "env.HOME", "halt", "halt_error", "debug", "\"x\" | stderr", "input", "[inputs]"]
        {
            let err = Expression::compile("t", denied).map(|_| ()).unwrap_err().to_string();
            assert!(err.contains("undefined"), "{denied}: {err}");
        }
    }
}
