//! The Serverless Workflow DSL 1.0 front end: a document (`document.dsl` present) checked
//! against the DSL's JSON schema, then mapped onto the executable [`Program`] that Baton's
//! native format also compiles to, so one interpreter, one journal and one recovery path run
//! both.
//!
//! The mapping keeps the DSL's meaning: a `do` list is a [`Flow::Sequence`] (each task's input
//! is the previous task's output, `then` jumps within the list), a `for` threads each
//! iteration's output into the next one ([`Collect::Thread`]), runtime expressions are jq with
//! the DSL's variables (`$input`, `$context`, `$workflow`, `$task`, `$runtime`, plus the `for`
//! and `catch` variables). A string is an expression only when it is one `${ }` as a whole;
//! where the DSL expects an expression (`if`, `when`, `for.in`, `input.from`, `output.as`,
//! `export.as`, ...) a bare string is one too (`as: .id`). Every task keeps its name and its
//! place in the document (its RFC 6901 pointer), which errors raised there carry as their
//! `instance`.
//!
//! What Baton does not run (`call: grpc`, `run: container`, `schedule`, `use.functions`,
//! OAuth2, ...) is refused with [`Error::Unsupported`] naming the construct and its place,
//! never ignored. Only descriptive fields (`metadata`, `document.title`, ...) carry no
//! behaviour and are kept as text or dropped.

mod duration;
mod schema;
#[cfg(test)]
mod tests;
mod uri;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use baton_core::program::{
    Action, Block, Call, CallTarget, Case, CaseAction, Catch, Collect, Emit, ErrorFilter, Flow, ForEach, Fork,
    GLOBAL_VARIABLES, HttpCall, HttpOutput, Listen, ListenMode, OnError, OpenApiCall, Program, Raise, RunWorkflow,
    Switch, Task, Then, Try, Wait,
};
use baton_core::{RetryPolicy, ServiceId, ServiceRequirements, StepId, Template, WorkflowName};
use serde_json::{Map, Value};

use crate::compile::{MAX_BRANCHES, MAX_DEPTH, MAX_ITERATIONS, bind_variables, check_signal_name};
use crate::definition::MAX_JQ_EXPRESSIONS;
use crate::error::{Error, Result};

/// The DSL versions read: 1.0.x.
const DSL_MAJOR_MINOR: &str = "1.0";
/// The workflow namespace whose workflows keep their bare name.
const DEFAULT_NAMESPACE: &str = "default";
/// Task kinds, by the keyword that names them; `for` before `do`, which a `for` holds too.
const KINDS: [&str; 12] =
    ["call", "for", "do", "fork", "emit", "listen", "raise", "run", "set", "switch", "try", "wait"];
/// The longest backoff of an exponential retry policy (the DSL sets none).
const MAX_EXPONENTIAL_BACKOFF: Duration = Duration::from_secs(3600);

/// A Serverless Workflow document mapped onto Baton.
#[derive(Debug, Clone)]
pub(crate) struct SwWorkflow {
    /// `<namespace>.<name>`, or the bare name in the `default` namespace.
    pub(crate) name: WorkflowName,
    /// `document.version`: the author's semantic version, kept as text (Baton numbers the
    /// versions it stores itself).
    pub(crate) version: String,
    /// `document.title`, else `document.summary`.
    pub(crate) description: String,
    /// `document.tags`, values that are not text written as JSON.
    pub(crate) labels: BTreeMap<String, String>,
    /// The executable program.
    pub(crate) program: Program,
}

/// Whether `value` is a Serverless Workflow document: it has `document.dsl`.
pub(crate) fn is_document(value: &Value) -> bool {
    value.get("document").and_then(|d| d.get("dsl")).is_some()
}

/// Checks a Serverless Workflow document against the DSL's schema and maps it onto a
/// [`Program`]. Errors name their place in the document as an RFC 6901 pointer.
pub(crate) fn compile(document: &Value) -> Result<SwWorkflow> {
    let Some(top) = document.as_object() else {
        return Err(Error::Schema { pointer: String::new(), message: "want object".to_owned() });
    };
    for key in top.keys() {
        if !["document", "input", "use", "do", "timeout", "output", "schedule", "evaluate"].contains(&key.as_str()) {
            return Err(Error::Schema { pointer: String::new(), message: format!("unknown field `{key}`") });
        }
    }
    let dsl = top.get("document").and_then(|d| d.get("dsl")).and_then(Value::as_str).unwrap_or_default();
    let mut parts = dsl.splitn(3, '.');
    let major_minor = format!("{}.{}", parts.next().unwrap_or_default(), parts.next().unwrap_or_default());
    if major_minor != DSL_MAJOR_MINOR {
        return Err(Error::Unsupported {
            construct: format!("DSL version {dsl:?} (Baton reads {DSL_MAJOR_MINOR}.x)"),
            pointer: "/document/dsl".to_owned(),
        });
    }
    schema::check_document(&shallow_document(top))?;
    if top.contains_key("schedule") {
        return Err(unsupported("schedule (start executions from a scheduler of your own)", "/schedule"));
    }
    if let Some(evaluate) = top.get("evaluate") {
        check_evaluate(evaluate)?;
    }
    let info = &top["document"];
    let text = |key: &str| info.get(key).and_then(Value::as_str).unwrap_or_default().to_owned();
    let name = workflow_name("/document", &text("namespace"), &text("name"))?;
    let description = [text("title"), text("summary")].into_iter().find(|t| !t.is_empty()).unwrap_or_default();
    let labels = info
        .get("tags")
        .and_then(Value::as_object)
        .map(|tags| {
            tags.iter().map(|(k, v)| (k.clone(), v.as_str().map_or_else(|| v.to_string(), str::to_owned))).collect()
        })
        .unwrap_or_default();
    let uses = Uses::read(top.get("use"))?;
    let mut compiler = Compiler {
        uses,
        tasks: 0,
        variables: GLOBAL_VARIABLES.map(str::to_owned).to_vec(),
        jq: std::cell::Cell::new(0),
    };
    let input = top.get("input").map(|i| compiler.io("/input", i, "from")).transpose()?.flatten();
    let output = top.get("output").map(|o| compiler.io("/output", o, "as")).transpose()?.flatten();
    let deadline = top.get("timeout").map(|t| compiler.timeout("/timeout", t)).transpose()?;
    let root = compiler.block(&top["do"], "/do", 0)?;
    Ok(SwWorkflow {
        name: name.clone(),
        version: text("version"),
        description,
        labels,
        program: Program { name, root, input, output, deadline },
    })
}

/// `<namespace>.<name>` (the bare name in the `default` namespace) as a Baton workflow name.
fn workflow_name(pointer: &str, namespace: &str, name: &str) -> Result<WorkflowName> {
    let text = if namespace == DEFAULT_NAMESPACE { name.to_owned() } else { format!("{namespace}.{name}") };
    WorkflowName::new(&text).map_err(|e| {
        invalid(
            &format!("{pointer}/name"),
            &text,
            format!("{} (Baton names a workflow <namespace>.<name>, lowercase)", reason(e)),
        )
    })
}

fn check_evaluate(evaluate: &Value) -> Result<()> {
    let language = evaluate.get("language").and_then(Value::as_str).unwrap_or("jq");
    let mode = evaluate.get("mode").and_then(Value::as_str).unwrap_or("strict");
    for (key, _) in evaluate.as_object().into_iter().flatten() {
        if key != "language" && key != "mode" {
            return Err(Error::Schema { pointer: "/evaluate".to_owned(), message: format!("unknown field `{key}`") });
        }
    }
    if language != "jq" || mode != "strict" {
        return Err(unsupported(
            &format!("expression language {language:?} in mode {mode:?} (Baton evaluates jq, strict)"),
            "/evaluate",
        ));
    }
    Ok(())
}

fn unsupported(construct: &str, pointer: &str) -> Error {
    Error::Unsupported { construct: construct.to_owned(), pointer: pointer.to_owned() }
}

fn invalid(pointer: &str, value: impl ToString, reason: impl Into<String>) -> Error {
    baton_core::Error::invalid(pointer, value, reason).into()
}

/// `base` followed by the reference token `token` (escaped per RFC 6901).
fn join(base: &str, token: &str) -> String {
    format!("{base}/{}", token.replace('~', "~0").replace('/', "~1"))
}

/// The top level as the schema check sees it: task lists empty (each task is checked on its
/// own as the mapping reaches it), and the reusable functions and extensions (task lists
/// themselves, refused when present) empty too.
fn shallow_document(top: &Map<String, Value>) -> Value {
    let mut shallow = Map::with_capacity(top.len());
    for (key, value) in top {
        let value = match (key.as_str(), value) {
            ("do", _) => Value::Array(Vec::new()),
            ("use", Value::Object(uses)) => Value::Object(
                uses.iter()
                    .map(|(k, v)| {
                        let v = match k.as_str() {
                            "functions" => Value::Object(Map::new()),
                            "extensions" => Value::Array(Vec::new()),
                            _ => v.clone(),
                        };
                        (k.clone(), v)
                    })
                    .collect(),
            ),
            _ => value.clone(),
        };
        shallow.insert(key.clone(), value);
    }
    Value::Object(shallow)
}

/// A task as the schema check sees it: its own fields, the task lists nested in it empty.
fn shallow_task(task: &Value) -> Value {
    let Some(fields) = task.as_object() else { return task.clone() };
    let empty_list = |value: &Value, key: &str| -> Value {
        match value {
            Value::Object(map) => Value::Object(
                map.iter()
                    .map(|(k, v)| {
                        let v = if k == key && v.is_array() { Value::Array(Vec::new()) } else { v.clone() };
                        (k.clone(), v)
                    })
                    .collect(),
            ),
            other => other.clone(),
        }
    };
    let mut shallow = Map::with_capacity(fields.len());
    for (key, value) in fields {
        let value = match key.as_str() {
            "do" | "try" if value.is_array() => Value::Array(Vec::new()),
            "catch" | "foreach" => empty_list(value, "do"),
            "fork" => empty_list(value, "branches"),
            // An AsyncAPI subscription's `foreach.do` (refused later, but never walked).
            "with" => match value.get("subscription").and_then(|s| s.get("foreach")) {
                Some(_) => {
                    let mut with = value.clone();
                    if let Some(foreach) = with.pointer_mut("/subscription/foreach") {
                        *foreach = empty_list(foreach, "do");
                    }
                    with
                }
                None => value.clone(),
            },
            _ => value.clone(),
        };
        shallow.insert(key.clone(), value);
    }
    Value::Object(shallow)
}

/// The tasks a flow directive may name: each task of the list, by name, with its index.
type Siblings<'n> = HashMap<&'n str, usize>;

/// Basic credentials (user, password) and a bearer token, as a call's fields hold them.
type Credentials = (Option<(Template, Template)>, Option<Template>);

/// The reusable components tasks refer to by name, each with its place.
#[derive(Default)]
struct Uses<'d> {
    errors: HashMap<&'d str, (&'d Value, String)>,
    retries: HashMap<&'d str, (&'d Value, String)>,
    timeouts: HashMap<&'d str, (&'d Value, String)>,
    authentications: HashMap<&'d str, (&'d Value, String)>,
}

impl<'d> Uses<'d> {
    fn read(uses: Option<&'d Value>) -> Result<Self> {
        let mut read = Self::default();
        let Some(uses) = uses.and_then(Value::as_object) else { return Ok(read) };
        for (key, value) in uses {
            let pointer = join("/use", key);
            let named = |value: &'d Value| -> HashMap<&'d str, (&'d Value, String)> {
                value
                    .as_object()
                    .into_iter()
                    .flatten()
                    .map(|(name, v)| (name.as_str(), (v, join(&pointer, name))))
                    .collect()
            };
            let empty = value.as_object().is_some_and(Map::is_empty) || value.as_array().is_some_and(Vec::is_empty);
            match key.as_str() {
                "errors" => read.errors = named(value),
                "retries" => read.retries = named(value),
                "timeouts" => read.timeouts = named(value),
                "authentications" => {
                    read.authentications = named(value);
                    for (policy, place) in read.authentications.values() {
                        policy_kind(policy, place)?;
                    }
                }
                "functions" if !empty => return Err(unsupported("use.functions (call tasks inline)", &pointer)),
                "extensions" if !empty => return Err(unsupported("use.extensions", &pointer)),
                "catalogs" if !empty => return Err(unsupported("use.catalogs", &pointer)),
                "secrets" if !empty => {
                    return Err(unsupported("use.secrets (Baton has no secret store for workflows)", &pointer));
                }
                _ => {}
            }
        }
        Ok(read)
    }
}

/// The kind of an authentication policy Baton supports (`basic` or `bearer`, written inline),
/// or why not.
fn policy_kind<'p>(policy: &'p Value, pointer: &str) -> Result<(&'static str, &'p Value)> {
    for kind in ["basic", "bearer"] {
        if let Some(settings) = policy.get(kind) {
            if settings.get("use").is_some() {
                return Err(unsupported(
                    &format!("secret-based {kind} authentication (write the credentials or an expression inline)"),
                    &join(pointer, kind),
                ));
            }
            return Ok((kind, settings));
        }
    }
    let kind = policy.as_object().and_then(|p| p.keys().next().cloned()).unwrap_or_default();
    Err(unsupported(&format!("{kind} authentication (only basic and bearer)"), &join(pointer, &kind)))
}

struct Compiler<'d> {
    uses: Uses<'d>,
    /// Tasks seen so far, at every level.
    tasks: usize,
    /// The variables in scope, globals first, innermost last.
    variables: Vec<String>,
    /// Expressions compiled so far that need jq (not plain paths).
    jq: std::cell::Cell<usize>,
}

impl Compiler<'_> {
    /// `template`, charged against [`MAX_JQ_EXPRESSIONS`]: a document past it is refused
    /// before it can cost more compiling.
    fn counted(&self, template: Result<Template>) -> Result<Template> {
        let template = template?;
        let jq = self.jq.get() + template.expressions().iter().filter(|e| !e.is_plain_path()).count();
        self.jq.set(jq);
        if jq > MAX_JQ_EXPRESSIONS {
            return Err(Error::TooManyExpressions { count: jq, limit: MAX_JQ_EXPRESSIONS });
        }
        Ok(template)
    }

    fn names(&self) -> Vec<&str> {
        self.variables.iter().map(String::as_str).collect()
    }

    /// A value whose strings are literal text unless they are one `${ }` as a whole.
    fn value(&self, pointer: &str, value: &Value) -> Result<Template> {
        let mut wholes = Vec::new();
        let escaped = sw_value(value, &mut wholes);
        let template =
            self.counted(Template::compile_with(pointer, &escaped, &self.names()).map_err(|e| placed(pointer, e)))?;
        let sources: Vec<&str> = template.expressions().iter().map(|e| e.source()).collect();
        if let Some(early) = wholes.iter().enumerate().find(|(i, w)| sources.get(*i) != Some(&w.as_str())) {
            return Err(invalid(
                pointer,
                format!("${{ {} }}", early.1),
                "has a `}` that closes its `${` early; a runtime expression is the whole string",
            ));
        }
        Ok(template)
    }

    /// An expression written where the DSL expects one: `${ }` around it or not.
    fn expression(&self, pointer: &str, value: &Value) -> Result<Template> {
        let Some(text) = value.as_str() else {
            return Err(invalid(pointer, shown(value), "must be a runtime expression"));
        };
        let source = whole_expression(text).unwrap_or_else(|| text.trim());
        if source.is_empty() {
            return Err(invalid(pointer, text, "must not be empty"));
        }
        self.counted(Template::expression(pointer, source, &self.names()).map_err(|e| placed(pointer, e)))
    }

    /// `input.from`, `output.as` or `export.as`: an expression, or a value with expressions.
    fn filter(&self, pointer: &str, value: &Value) -> Result<Template> {
        match value {
            Value::String(_) => self.expression(pointer, value),
            other => self.value(pointer, other),
        }
    }

    /// The `input`, `output` or `export` object at `pointer`: its `key` filter.
    fn io(&self, pointer: &str, io: &Value, key: &str) -> Result<Option<Template>> {
        if io.get("schema").is_some() {
            let what = pointer.rsplit('/').next().unwrap_or_default();
            return Err(unsupported(
                &format!("{what}.schema (data is not validated against schemas)"),
                &join(pointer, "schema"),
            ));
        }
        io.get(key).map(|filter| self.filter(&join(pointer, key), filter)).transpose()
    }

    /// Runs `compile` with `names` bound as variables.
    fn with_variables<T>(
        &mut self,
        pointer: &str,
        names: &[&str],
        compile: impl FnOnce(&mut Self) -> Result<T>,
    ) -> Result<T> {
        let before = bind_variables(pointer, names, &mut self.variables)?;
        let result = compile(self);
        self.variables.truncate(before);
        result
    }

    /// A fixed duration; one computed by an expression is refused.
    fn duration(&self, pointer: &str, value: &Value) -> Result<Duration> {
        if value.as_str().is_some_and(|t| whole_expression(t).is_some()) {
            return Err(unsupported("a duration computed by an expression", pointer));
        }
        duration::parse(pointer, value)
    }

    /// A `timeout`: `{after: <duration>}` or the name of one in `use.timeouts`.
    fn timeout(&self, pointer: &str, value: &Value) -> Result<Duration> {
        let (definition, place) = match value {
            Value::String(name) => self
                .uses
                .timeouts
                .get(name.as_str())
                .map(|(v, p)| (*v, p.clone()))
                .ok_or_else(|| invalid(pointer, name, "names no timeout in use.timeouts"))?,
            other => (other, pointer.to_owned()),
        };
        let after = definition.get("after").ok_or_else(|| invalid(&place, shown(definition), "needs `after`"))?;
        self.duration(&join(&place, "after"), after)
    }

    /// A task list at `pointer`, `depth` blocks below the top.
    fn block(&mut self, list: &Value, pointer: &str, depth: usize) -> Result<Block> {
        let tasks = self.list(list, pointer, depth, false)?;
        Ok(Block::new(Flow::Sequence, tasks, None))
    }

    /// The tasks of a task list. The `then` of a task jumps within the list, except in fork
    /// `branches`, where each task is a branch of its own and may name only itself.
    fn list(&mut self, list: &Value, pointer: &str, depth: usize, branches: bool) -> Result<Vec<Task>> {
        if depth >= MAX_DEPTH {
            return Err(Error::TooDeep { place: pointer.to_owned(), limit: MAX_DEPTH });
        }
        let Some(items) = list.as_array() else {
            return Err(Error::Schema {
                pointer: pointer.to_owned(),
                message: format!("want array, but got {}", kind_of(list)),
            });
        };
        self.tasks += items.len();
        if self.tasks > crate::MAX_STEPS {
            return Err(Error::TooManySteps { count: self.tasks, limit: crate::MAX_STEPS });
        }
        let mut entries: Vec<(&str, &Value, String)> = Vec::with_capacity(items.len());
        // Each name's index in the list, which `then` jumps to.
        let mut index: HashMap<&str, usize> = HashMap::with_capacity(items.len());
        for (i, item) in items.iter().enumerate() {
            let place = format!("{pointer}/{i}");
            let (name, task) =
                single_entry(item, &place, "a task list item is an object with one key, the task's name")?;
            check_segment(&place, name, "task name")?;
            if index.insert(name, i).is_some() {
                return Err(invalid(
                    &place,
                    name,
                    "names a second task of this list; task names are unique in their list",
                ));
            }
            entries.push((name, task, join(&place, name)));
        }
        let mut tasks = Vec::with_capacity(entries.len());
        for (name, task, place) in &entries {
            let own = HashMap::from([(*name, 0)]);
            let siblings = if branches { &own } else { &index };
            tasks.push(self.task(name, task, place, siblings, depth)?);
        }
        Ok(tasks)
    }

    fn task(
        &mut self,
        name: &str,
        value: &Value,
        pointer: &str,
        siblings: &Siblings<'_>,
        depth: usize,
    ) -> Result<Task> {
        let Some(fields) = value.as_object() else {
            return Err(Error::Schema {
                pointer: pointer.to_owned(),
                message: format!("want object, but got {}", kind_of(value)),
            });
        };
        // Said here rather than by the schema, whose twelve alternatives would each complain.
        let Some(kind) = KINDS.into_iter().find(|k| fields.contains_key(*k)) else {
            return Err(Error::Schema {
                pointer: pointer.to_owned(),
                message: format!("a task needs one of `{}`", KINDS.join("`, `")),
            });
        };
        schema::check_task(&shallow_task(value), pointer)?;
        let at = |key: &str| join(pointer, key);
        let condition = fields.get("if").map(|c| self.expression(&at("if"), c)).transpose()?;
        let input = fields.get("input").map(|i| self.io(&at("input"), i, "from")).transpose()?.flatten();
        let mut output = fields.get("output").map(|o| self.io(&at("output"), o, "as")).transpose()?.flatten();
        let export = fields.get("export").map(|e| self.io(&at("export"), e, "as")).transpose()?.flatten();
        let then = match fields.get("then") {
            Some(directive) => flow(&at("then"), directive, siblings)?,
            None => Then::Continue,
        };
        let mut task_timeout = fields.get("timeout").map(|t| self.timeout(&at("timeout"), t)).transpose()?;
        let action = match kind {
            "call" => self.call(fields, pointer)?,
            "do" => Action::Do(Box::new(self.block(&fields["do"], &at("do"), depth + 1)?)),
            "fork" => self.fork(&fields["fork"], &at("fork"), depth)?,
            "emit" => self.emit(&fields["emit"], &at("emit"))?,
            "for" => self.for_each(fields, pointer, depth)?,
            "listen" => {
                if fields.contains_key("foreach") {
                    return Err(unsupported("listen with foreach", &at("foreach")));
                }
                let (listen, raw_output) = self.listen(&fields["listen"], &at("listen"), task_timeout.take())?;
                // The DSL's listen yields the list of events consumed; Baton's yields the
                // one signal's data for `one` and `any`.
                if raw_output {
                    let user = fields.get("output").and_then(|o| o.get("as")).map(jq_source);
                    let source = match user {
                        Some(user) => format!("[.] | {user}"),
                        None => "[.]".to_owned(),
                    };
                    output = Some(
                        self.counted(
                            Template::expression(&join(&at("output"), "as"), &source, &self.names())
                                .map_err(|e| placed(&at("output"), e)),
                        )?,
                    );
                }
                Action::Listen(listen)
            }
            "raise" => self.raise(&fields["raise"], &at("raise"))?,
            "run" => self.run(&fields["run"], &at("run"))?,
            "set" => Action::Set(self.value(&at("set"), &fields["set"])?),
            "switch" => self.switch(&fields["switch"], &at("switch"), siblings)?,
            "try" => self.try_catch(fields, pointer, depth)?,
            "wait" => Action::Wait(Wait::For(self.duration(&at("wait"), &fields["wait"])?)),
            _ => unreachable!("KINDS lists every kind"),
        };
        Ok(Task {
            name: StepId::new(name)?,
            reference: pointer.to_owned(),
            condition,
            input,
            output,
            export,
            then,
            depends_on: Vec::new(),
            // A call is tried once: the DSL retries only through `try`/`catch`.
            retry: RetryPolicy { max_attempts: 1, ..RetryPolicy::default() },
            timeout: None,
            task_timeout,
            on_error: OnError::Fail,
            action,
        })
    }

    fn call(&mut self, fields: &Map<String, Value>, pointer: &str) -> Result<Action> {
        let function = fields["call"].as_str().unwrap_or_default();
        let with_pointer = join(pointer, "with");
        let with = fields.get("with").unwrap_or(&Value::Null);
        match function {
            "http" => {
                let http = self.http(with, &with_pointer)?;
                Ok(Action::Call(Call {
                    target: CallTarget::Http(Arc::new(http)),
                    payload: null_template(),
                    shape: None,
                }))
            }
            "openapi" => {
                let api = self.openapi(with, &with_pointer)?;
                Ok(Action::Call(Call {
                    target: CallTarget::OpenApi(Arc::new(api)),
                    payload: null_template(),
                    shape: None,
                }))
            }
            "baton" => self.baton(with, &with_pointer),
            "grpc" | "asyncapi" | "a2a" | "mcp" => {
                Err(unsupported(&format!("call: {function}"), &join(pointer, "call")))
            }
            other => Err(unsupported(
                &format!(
                    "call of function {other:?} (use.functions and catalogs are not supported; Baton's own is `call: baton`)"
                ),
                &join(pointer, "call"),
            )),
        }
    }

    fn http(&self, with: &Value, pointer: &str) -> Result<HttpCall> {
        let at = |key: &str| join(pointer, key);
        let method = with["method"].as_str().unwrap_or_default();
        if method.is_empty() || !method.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') {
            return Err(invalid(&at("method"), method, "must be an HTTP method such as get or post"));
        }
        if with.get("redirect").and_then(Value::as_bool) == Some(true) {
            return Err(unsupported("redirect: true (3xx answers are errors)", &at("redirect")));
        }
        let endpoint = &with["endpoint"];
        let (uri, uri_pointer, authentication) = match endpoint {
            Value::Object(settings) => (&settings["uri"], join(&at("endpoint"), "uri"), settings.get("authentication")),
            other => (other, at("endpoint"), None),
        };
        let uri = self.uri(&uri_pointer, uri)?;
        let (basic_auth, bearer) = match authentication {
            Some(policy) => self.authentication(policy, &join(&at("endpoint"), "authentication"))?,
            None => (None, None),
        };
        let pairs =
            |key: &str| -> Result<Option<Template>> { with.get(key).map(|v| self.filter(&at(key), v)).transpose() };
        let output = output_mode(with, &at("output"))?;
        Ok(HttpCall {
            method: method.to_ascii_uppercase(),
            uri,
            headers: pairs("headers")?,
            query: pairs("query")?,
            body: with.get("body").map(|b| self.value(&at("body"), b)).transpose()?,
            output,
            basic_auth,
            bearer,
        })
    }

    /// `call: openapi`: the document's endpoint, the operation and its parameters. The
    /// document is fetched when the call runs.
    fn openapi(&self, with: &Value, pointer: &str) -> Result<OpenApiCall> {
        let at = |key: &str| join(pointer, key);
        if with.get("redirect").and_then(Value::as_bool) == Some(true) {
            return Err(unsupported("redirect: true (3xx answers are errors)", &at("redirect")));
        }
        let document_pointer = join(&at("document"), "endpoint");
        let (uri, uri_pointer) = match &with["document"]["endpoint"] {
            Value::Object(settings) => {
                if settings.contains_key("authentication") {
                    return Err(unsupported(
                        "authentication to fetch an OpenAPI document",
                        &join(&document_pointer, "authentication"),
                    ));
                }
                (&settings["uri"], join(&document_pointer, "uri"))
            }
            other => (other, document_pointer),
        };
        let (basic_auth, bearer) = match with.get("authentication") {
            Some(policy) => self.authentication(policy, &at("authentication"))?,
            None => (None, None),
        };
        Ok(OpenApiCall {
            document: self.uri(&uri_pointer, uri)?,
            operation_id: with["operationId"].as_str().unwrap_or_default().to_owned(),
            parameters: with.get("parameters").map(|p| self.value(&at("parameters"), p)).transpose()?,
            output: output_mode(with, &at("output"))?,
            basic_auth,
            bearer,
        })
    }

    /// An endpoint URI: a runtime expression, or a URI template whose `{name}` parts read the
    /// task's input.
    fn uri(&self, pointer: &str, value: &Value) -> Result<Template> {
        let Some(text) = value.as_str() else { return Err(invalid(pointer, shown(value), "must be a URI")) };
        if let Some(source) = whole_expression(text) {
            return self.counted(Template::expression(pointer, source, &self.names()).map_err(|e| placed(pointer, e)));
        }
        let template = uri::template(pointer, text)?;
        self.counted(
            Template::compile_with(pointer, &Value::String(template), &self.names()).map_err(|e| placed(pointer, e)),
        )
    }

    /// Basic or bearer credentials, inline or by name from `use.authentications`.
    fn authentication(&self, policy: &Value, pointer: &str) -> Result<Credentials> {
        let (policy, place) = match policy.get("use").and_then(Value::as_str) {
            Some(name) => self
                .uses
                .authentications
                .get(name)
                .map(|(v, p)| (*v, p.clone()))
                .ok_or_else(|| invalid(&join(pointer, "use"), name, "names no policy in use.authentications"))?,
            None => (policy, pointer.to_owned()),
        };
        let (kind, settings) = policy_kind(policy, &place)?;
        let at = |key: &str| join(&join(&place, kind), key);
        let field = |key: &str| -> Result<Template> {
            let value = settings
                .get(key)
                .ok_or_else(|| invalid(&join(&place, kind), shown(settings), format!("needs `{key}`")))?;
            self.value(&at(key), value)
        };
        Ok(match kind {
            "basic" => (Some((field("username")?, field("password")?)), None),
            _ => (None, Some(field("token")?)),
        })
    }

    /// `call: baton`: a registered service (`service`, optional `alternatives`) or the best
    /// match of a capability query (`query`), with `input` as the payload (the task's input
    /// when absent).
    fn baton(&self, with: &Value, pointer: &str) -> Result<Action> {
        let Some(settings) = with.as_object() else {
            return Err(invalid(pointer, shown(with), "call: baton needs `with` naming a service or a query"));
        };
        let at = |key: &str| join(pointer, key);
        for key in settings.keys() {
            if !["service", "alternatives", "query", "input"].contains(&key.as_str()) {
                return Err(Error::Schema {
                    pointer: pointer.to_owned(),
                    message: format!("unknown field `{key}` (call: baton takes service, alternatives, query, input)"),
                });
            }
        }
        let target = match (settings.get("service"), settings.get("query")) {
            (Some(service), None) => {
                let id = |pointer: &str, value: &Value| -> Result<ServiceId> {
                    let text = value.as_str().ok_or_else(|| invalid(pointer, shown(value), "must be a service id"))?;
                    ServiceId::new(text).map_err(|e| invalid(pointer, text, reason(e)))
                };
                let mut ids = vec![id(&at("service"), service)?];
                if let Some(alternatives) = settings.get("alternatives") {
                    let list = alternatives.as_array().ok_or_else(|| {
                        invalid(&at("alternatives"), shown(alternatives), "must be a list of service ids")
                    })?;
                    for (i, alternative) in list.iter().enumerate() {
                        ids.push(id(&format!("{}/{i}", at("alternatives")), alternative)?);
                    }
                }
                CallTarget::Services(ids)
            }
            (None, Some(query)) => {
                if settings.contains_key("alternatives") {
                    return Err(invalid(
                        &at("alternatives"),
                        "alternatives",
                        "goes with `service`; a query ranks its own candidates",
                    ));
                }
                let requirements: ServiceRequirements = serde_json::from_value(query.clone())
                    .map_err(|e| invalid(&at("query"), shown(query), e.to_string()))?;
                requirements.validate().map_err(|e| within(&at("query"), e))?;
                CallTarget::Query(Arc::new(requirements))
            }
            _ => return Err(invalid(pointer, shown(with), "call: baton needs exactly one of `service` and `query`")),
        };
        let payload = match settings.get("input") {
            Some(input) => self.value(&at("input"), input)?,
            None => Template::expression(&at("input"), ".", &self.names())?,
        };
        Ok(Action::Call(Call { target, payload, shape: None }))
    }

    fn fork(&mut self, fork: &Value, pointer: &str, depth: usize) -> Result<Action> {
        let branches = &fork["branches"];
        let count = branches.as_array().map_or(0, Vec::len);
        if count > MAX_BRANCHES {
            return Err(invalid(&join(pointer, "branches"), count, format!("branches, the limit is {MAX_BRANCHES}")));
        }
        // Each branch is one task; its block holds just that task, and its `then` may name
        // only itself.
        let tasks = self.list(branches, &join(pointer, "branches"), depth + 1, true)?;
        let branches =
            tasks.into_iter().map(|task| (task.name.clone(), Block::new(Flow::Sequence, vec![task], None))).collect();
        Ok(Action::Fork(Fork { branches, compete: fork.get("compete").and_then(Value::as_bool).unwrap_or(false) }))
    }

    fn emit(&self, emit: &Value, pointer: &str) -> Result<Action> {
        let event = &emit["event"];
        let event_pointer = join(pointer, "event");
        for key in event.as_object().into_iter().flatten().map(|(k, _)| k) {
            if key != "with" {
                return Err(unsupported(
                    &format!("emit.event.{key} (write the event under `with`)"),
                    &join(&event_pointer, key),
                ));
            }
        }
        let with = event
            .get("with")
            .ok_or_else(|| invalid(&event_pointer, shown(event), "needs `with`, the event's attributes"))?;
        Ok(Action::Emit(Emit { event: self.value(&join(&event_pointer, "with"), with)? }))
    }

    fn for_each(&mut self, fields: &Map<String, Value>, pointer: &str, depth: usize) -> Result<Action> {
        let at = |key: &str| join(pointer, key);
        let spec = &fields["for"];
        let each = spec.get("each").and_then(Value::as_str).unwrap_or("item");
        let index = spec.get("at").and_then(Value::as_str).unwrap_or("index");
        let items = self.expression(&join(&at("for"), "in"), &spec["in"])?;
        let (condition, body) = self.with_variables(&at("for"), &[each, index], |c| {
            let condition = fields.get("while").map(|w| c.expression(&at("while"), w)).transpose()?;
            Ok((condition, c.block(&fields["do"], &at("do"), depth + 1)?))
        })?;
        Ok(Action::For(Box::new(ForEach {
            each: each.to_owned(),
            at: index.to_owned(),
            items,
            condition,
            body,
            concurrency: 1,
            collect: Collect::Thread,
        })))
    }

    /// A `listen`, and whether its raw output is one signal's data (to be made a list).
    fn listen(&self, listen: &Value, pointer: &str, timeout: Option<Duration>) -> Result<(Listen, bool)> {
        match listen.get("read").and_then(Value::as_str) {
            None | Some("data") => {}
            Some(other) => {
                return Err(unsupported(
                    &format!("listen.read: {other} (signals carry data only)"),
                    &join(pointer, "read"),
                ));
            }
        }
        let to_pointer = join(pointer, "to");
        let to = &listen["to"];
        if to.get("until").is_some() {
            return Err(unsupported("listen.to.until", &join(&to_pointer, "until")));
        }
        let (mode, filters, list_pointer): (ListenMode, Vec<&Value>, String) = if let Some(one) = to.get("one") {
            (ListenMode::Any, vec![one], join(&to_pointer, "one"))
        } else if let Some(any) = to.get("any") {
            (ListenMode::Any, any.as_array().map(|a| a.iter().collect()).unwrap_or_default(), join(&to_pointer, "any"))
        } else {
            let all = &to["all"];
            (ListenMode::All, all.as_array().map(|a| a.iter().collect()).unwrap_or_default(), join(&to_pointer, "all"))
        };
        if filters.is_empty() {
            return Err(unsupported("listening to any event (name the event types)", &list_pointer));
        }
        let single = to.get("one").is_some();
        let mut signals = Vec::with_capacity(filters.len());
        for (i, filter) in filters.into_iter().enumerate() {
            let place = if single { list_pointer.clone() } else { format!("{list_pointer}/{i}") };
            if filter.get("correlate").is_some() {
                return Err(unsupported("event correlation", &join(&place, "correlate")));
            }
            let with = &filter["with"];
            for key in with.as_object().into_iter().flatten().map(|(k, _)| k) {
                if key != "type" {
                    return Err(unsupported(
                        &format!("event filter on `{key}` (Baton matches signals by their type)"),
                        &join(&join(&place, "with"), key),
                    ));
                }
            }
            let type_pointer = join(&join(&place, "with"), "type");
            let kind = with
                .get("type")
                .and_then(Value::as_str)
                .ok_or_else(|| invalid(&join(&place, "with"), shown(with), "needs `type`, the signal's name"))?;
            if whole_expression(kind).is_some() {
                return Err(unsupported("an event type computed by an expression", &type_pointer));
            }
            check_signal_name(&type_pointer, kind)?;
            signals.push(kind.to_owned());
        }
        Ok((Listen { signals, mode, timeout }, mode == ListenMode::Any))
    }

    fn raise(&self, raise: &Value, pointer: &str) -> Result<Action> {
        let error = &raise["error"];
        let error_pointer = join(pointer, "error");
        let (definition, place) = match error {
            Value::String(name) => self
                .uses
                .errors
                .get(name.as_str())
                .map(|(v, p)| (*v, p.clone()))
                .ok_or_else(|| invalid(&error_pointer, name, "names no error in use.errors"))?,
            other => (other, error_pointer),
        };
        let at = |key: &str| join(&place, key);
        if definition.get("instance").is_some() {
            return Err(unsupported(
                "an error's instance (Baton sets it to the raising task's place)",
                &at("instance"),
            ));
        }
        let optional = |key: &str| definition.get(key).map(|v| self.value(&at(key), v)).transpose();
        Ok(Action::Raise(Box::new(Raise {
            r#type: self.value(&at("type"), &definition["type"])?,
            status: self.value(&at("status"), &definition["status"])?,
            title: optional("title")?,
            detail: optional("detail")?,
        })))
    }

    fn run(&self, run: &Value, pointer: &str) -> Result<Action> {
        if run.get("await").and_then(Value::as_bool) == Some(false) {
            return Err(unsupported("run without await (a child always reports back)", &join(pointer, "await")));
        }
        if run.get("return").is_some() {
            return Err(unsupported("run.return (it applies to processes)", &join(pointer, "return")));
        }
        for process in ["container", "script", "shell"] {
            if run.get(process).is_some() {
                return Err(unsupported(&format!("run: {process}"), &join(pointer, process)));
            }
        }
        let workflow_pointer = join(pointer, "workflow");
        let workflow = &run["workflow"];
        let text = |key: &str| workflow.get(key).and_then(Value::as_str).unwrap_or_default();
        let name = workflow_name(&workflow_pointer, text("namespace"), text("name"))?;
        let input = match workflow.get("input") {
            Some(input) => self.value(&join(&workflow_pointer, "input"), input)?,
            None => Template::compile("input", &Value::Object(Map::new()))?,
        };
        // Baton numbers a workflow's versions itself; the child is the newest applied under
        // its name when it starts (see docs/workflow-format.md).
        Ok(Action::Run(RunWorkflow { name, version: None, input }))
    }

    fn switch(&self, switch: &Value, pointer: &str, siblings: &Siblings<'_>) -> Result<Action> {
        let items = switch.as_array().map(Vec::as_slice).unwrap_or_default();
        if items.len() > MAX_BRANCHES {
            return Err(invalid(pointer, items.len(), format!("cases, the limit is {MAX_BRANCHES}")));
        }
        let mut cases: Vec<Case> = Vec::with_capacity(items.len());
        let mut default: Option<Case> = None;
        for (c, item) in items.iter().enumerate() {
            let place = format!("{pointer}/{c}");
            let (name, case) = single_entry(item, &place, "a switch case is an object with one key, the case's name")?;
            check_segment(&place, name, "case name")?;
            let case_pointer = join(&place, name);
            if cases.iter().chain(&default).any(|k| k.name.as_str() == name) {
                return Err(invalid(&place, name, "names a second case of this switch"));
            }
            let then = flow(&join(&case_pointer, "then"), &case["then"], siblings)?;
            let when = case.get("when").map(|w| self.expression(&join(&case_pointer, "when"), w)).transpose()?;
            let compiled = Case { name: StepId::new(name)?, when, then: CaseAction::Flow(then) };
            if compiled.when.is_some() {
                cases.push(compiled);
            } else if default.is_some() {
                return Err(invalid(&case_pointer, name, "is a second case without `when`; a switch has one default"));
            } else {
                default = Some(compiled);
            }
        }
        // The default matches only when no other case does, wherever it is written.
        cases.extend(default);
        Ok(Action::Switch(Switch { cases }))
    }

    fn try_catch(&mut self, fields: &Map<String, Value>, pointer: &str, depth: usize) -> Result<Action> {
        let body = self.block(&fields["try"], &join(pointer, "try"), depth + 1)?;
        let catch_pointer = join(pointer, "catch");
        let at = |key: &str| join(&catch_pointer, key);
        let catch = &fields["catch"];
        let with = catch.get("errors").and_then(|e| e.get("with"));
        let text = |key: &str| with.and_then(|w| w.get(key)).and_then(Value::as_str).map(str::to_owned);
        let status = match with.and_then(|w| w.get("status")) {
            Some(status) => Some(status.as_u64().and_then(|s| u16::try_from(s).ok()).ok_or_else(|| {
                invalid(&join(&join(&at("errors"), "with"), "status"), status, "must be a status code")
            })?),
            None => None,
        };
        let filter = ErrorFilter {
            r#type: text("type"),
            status,
            instance: text("instance"),
            title: text("title"),
            detail: text("details"),
        };
        let variable = catch.get("as").and_then(Value::as_str).unwrap_or("error");
        let retry = match catch.get("retry") {
            Some(Value::String(name)) => {
                let (policy, place) = self
                    .uses
                    .retries
                    .get(name.as_str())
                    .ok_or_else(|| invalid(&at("retry"), name, "names no policy in use.retries"))?;
                Some(self.retry(policy, place)?)
            }
            Some(policy) => Some(self.retry(policy, &at("retry"))?),
            None => None,
        };
        let (when, except_when, catch_body) = self.with_variables(&at("as"), &[variable], |c| {
            let when = catch.get("when").map(|w| c.expression(&at("when"), w)).transpose()?;
            let except_when = catch.get("exceptWhen").map(|w| c.expression(&at("exceptWhen"), w)).transpose()?;
            let body = catch.get("do").map(|d| c.block(d, &at("do"), depth + 1)).transpose()?;
            Ok((when, except_when, body))
        })?;
        Ok(Action::Try(Box::new(Try {
            body,
            catch: Catch { filter, variable: variable.to_owned(), when, except_when, retry, body: catch_body },
        })))
    }

    /// A retry policy: `delay`, `backoff` (`constant` or `exponential`) and
    /// `limit.attempt.count`, the retries after the first attempt, which is required (a retry
    /// without a bound is refused, as a `while` without one is).
    fn retry(&self, policy: &Value, pointer: &str) -> Result<RetryPolicy> {
        let at = |key: &str| join(pointer, key);
        for refused in ["when", "exceptWhen", "jitter"] {
            if policy.get(refused).is_some() {
                return Err(unsupported(&format!("retry.{refused}"), &at(refused)));
            }
        }
        let delay = policy.get("delay").map(|d| self.duration(&at("delay"), d)).transpose()?.unwrap_or_default();
        let (multiplier, max_backoff) = match policy.get("backoff").and_then(Value::as_object) {
            None => (1.0, delay),
            Some(backoff) => {
                let (kind, settings) =
                    backoff.iter().next().map(|(k, v)| (k.as_str(), v)).unwrap_or(("constant", &Value::Null));
                if settings.as_object().is_some_and(|s| !s.is_empty()) {
                    return Err(unsupported(&format!("{kind} backoff settings"), &join(&at("backoff"), kind)));
                }
                match kind {
                    "constant" => (1.0, delay),
                    "exponential" => (2.0, delay.max(MAX_EXPONENTIAL_BACKOFF)),
                    other => return Err(unsupported(&format!("{other} backoff"), &join(&at("backoff"), other))),
                }
            }
        };
        let limit = policy.get("limit");
        if limit.and_then(|l| l.get("duration")).is_some() {
            return Err(unsupported("retry.limit.duration", &join(&at("limit"), "duration")));
        }
        let attempt = limit.and_then(|l| l.get("attempt"));
        let count_pointer = join(&join(&at("limit"), "attempt"), "count");
        if attempt.and_then(|a| a.get("duration")).is_some() {
            return Err(unsupported("retry.limit.attempt.duration", &join(&join(&at("limit"), "attempt"), "duration")));
        }
        let count = attempt.and_then(|a| a.get("count")).ok_or_else(|| {
            invalid(&count_pointer, "(absent)", "a retry policy needs limit.attempt.count, its bound")
        })?;
        let retries = count
            .as_u64()
            .filter(|c| *c <= u64::from(MAX_ITERATIONS))
            .ok_or_else(|| invalid(&count_pointer, shown(count), format!("must be 0 to {MAX_ITERATIONS}")))?;
        Ok(RetryPolicy {
            max_attempts: retries as u32 + 1,
            initial_backoff: delay,
            max_backoff,
            multiplier,
            non_retryable: Vec::new(),
        })
    }
}

/// A flow directive at `pointer`: `continue`, `exit`, `end`, or the name of a task in
/// `siblings` (the list the directive's task belongs to).
fn flow(pointer: &str, directive: &Value, siblings: &Siblings<'_>) -> Result<Then> {
    let Some(text) = directive.as_str() else {
        return Err(invalid(pointer, shown(directive), "must be a flow directive"));
    };
    Ok(match text {
        "continue" => Then::Continue,
        "exit" => Then::Exit,
        "end" => Then::End,
        name => Then::Goto(siblings.get(name).copied().ok_or_else(|| {
            invalid(pointer, name, "names no task of the same list; a flow directive jumps within its own list")
        })?),
    })
}

/// The `output` of an HTTP or OpenAPI call: which part of the response it yields.
fn output_mode(with: &Value, pointer: &str) -> Result<HttpOutput> {
    Ok(match with.get("output").and_then(Value::as_str) {
        None | Some("content") => HttpOutput::Content,
        Some("response") => HttpOutput::Response,
        Some("raw") => HttpOutput::Raw,
        Some(other) => return Err(invalid(pointer, other, "must be content, response or raw")),
    })
}

/// The one key and value of `item`, an object with a single entry.
fn single_entry<'v>(item: &'v Value, pointer: &str, rule: &str) -> Result<(&'v str, &'v Value)> {
    match item.as_object() {
        Some(map) if map.len() == 1 => {
            let (name, value) = map.iter().next().expect("one entry");
            Ok((name.as_str(), value))
        }
        _ => Err(Error::Schema { pointer: pointer.to_owned(), message: rule.to_owned() }),
    }
}

/// Task and case names become path segments: `[A-Za-z0-9_][A-Za-z0-9._-]*`, camelCase kept.
fn check_segment(pointer: &str, name: &str, what: &str) -> Result<()> {
    if name.contains('/') || StepId::new(name).is_err() || name.len() > 128 {
        return Err(invalid(
            pointer,
            name,
            format!("{what} must be 1 to 128 letters, digits, '_', '.' and '-', starting with a letter, digit or '_'"),
        ));
    }
    Ok(())
}

/// The inner source of a string that is one runtime expression as a whole (`${ ... }`, spaces
/// around allowed).
fn whole_expression(text: &str) -> Option<&str> {
    let inner = text.trim().strip_prefix("${")?.strip_suffix('}')?.trim();
    (!inner.is_empty()).then_some(inner)
}

/// `value` with every string that is not one whole expression made literal (`${` escaped),
/// and every whole one written `${ <source> }`; the sources are pushed to `wholes` in the
/// order a template's expressions are listed.
fn sw_value(value: &Value, wholes: &mut Vec<String>) -> Value {
    match value {
        Value::String(text) => match whole_expression(text) {
            Some(source) => {
                wholes.push(source.to_owned());
                Value::String(format!("${{ {source} }}"))
            }
            None => Value::String(text.replace("${", "$${")),
        },
        Value::Array(items) => Value::Array(items.iter().map(|v| sw_value(v, wholes)).collect()),
        Value::Object(map) => Value::Object(map.iter().map(|(k, v)| (k.clone(), sw_value(v, wholes))).collect()),
        other => other.clone(),
    }
}

/// A value with expressions as one jq program building it.
fn jq_source(value: &Value) -> String {
    match value {
        Value::String(text) => match whole_expression(text) {
            Some(source) => format!("({source})"),
            None => Value::String(text.clone()).to_string(),
        },
        Value::Array(items) => format!("[{}]", items.iter().map(jq_source).collect::<Vec<_>>().join(", ")),
        Value::Object(map) => format!(
            "{{{}}}",
            map.iter()
                .map(|(k, v)| format!("{}: {}", Value::String(k.clone()), jq_source(v)))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        other => other.to_string(),
    }
}

/// A value as errors quote it: text as it is, anything else as JSON.
fn shown(value: &Value) -> String {
    value.as_str().map_or_else(|| value.to_string(), str::to_owned)
}

fn null_template() -> Template {
    Template::compile("payload", &Value::Null).expect("null is a template")
}

fn kind_of(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// A domain error from compiling a template at `pointer`, its field written as a pointer:
/// templates name nested places `base.key[0]`, the document's places are `base/key/0`.
fn placed(pointer: &str, error: baton_core::Error) -> Error {
    match error {
        baton_core::Error::Invalid { field, value, reason } => {
            let field = match field.strip_prefix(pointer) {
                Some(rest) => format!("{pointer}{}", rest.replace('[', ".").replace(']', "").replace('.', "/")),
                None => field,
            };
            baton_core::Error::Invalid { field, value, reason }.into()
        }
        other => other.into(),
    }
}

/// The rule a domain error says was broken.
fn reason(error: baton_core::Error) -> String {
    match error {
        baton_core::Error::Invalid { reason, .. } => reason,
        other => other.to_string(),
    }
}

/// A domain error naming a dotted field of the value at `pointer`, placed below the pointer.
fn within(pointer: &str, error: baton_core::Error) -> Error {
    match error {
        baton_core::Error::Invalid { field, value, reason } => {
            baton_core::Error::Invalid { field: format!("{pointer}/{}", field.replace('.', "/")), value, reason }.into()
        }
        other => other.into(),
    }
}
