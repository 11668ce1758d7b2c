//! The executable model of a workflow: a checked tree of [`Task`]s in [`Block`]s, expressions
//! compiled, ready for the executor to interpret.
//!
//! One model serves both front ends: Baton's native format (a graph of steps with
//! `depends_on`, [`Flow::Graph`]) and the Serverless Workflow DSL (ordered tasks with `then`
//! jumps, [`Flow::Sequence`]). `baton-workflow` builds a [`Program`] from either after checking
//! it; nothing else does. One interpreter runs it, one journal records it, one recovery path
//! resumes it.
//!
//! What flows between tasks: every task turns a *raw input* into an output through the same
//! pipeline: `if` (a false condition skips it), `input` (the input filter), the action itself,
//! `output` (the output filter) and `export` (which replaces the execution's `$context`). In a
//! [`Flow::Graph`] block a task's raw input is the graph context
//! `{"input": <workflow input>, "steps": {"<id>": {"output": ...}}}`; in a [`Flow::Sequence`]
//! block it is the previous task's output (the block's input for the first).
//!
//! Every task instance has a path, its journal key: the task's name, below its parent's path,
//! with a segment for the loop iteration, switch case or fork branch it runs in
//! (`each/3/charge`). Top-level native steps keep their id as their path.

use std::sync::Arc;
use std::time::Duration;

use crate::call::CallTemplate;
use crate::expr::Template;
use crate::ids::{ServiceId, StepId, WorkflowName};
use crate::requirements::ServiceRequirements;
use crate::workflow::RetryPolicy;

/// The variables every expression may read, in the order their values are bound.
///
/// `$input` is the task's transformed input (the workflow's input at the top), `$context` the
/// execution's context (what `export` filters wrote), `$workflow` a descriptor of the
/// execution (`id`, `name`, `version`, `input`, `started_at`), `$task` a descriptor of the
/// current task (`name`, `path`, `reference`), `$output` the transformed output (in `export`
/// only; null elsewhere), `$runtime` the runtime's name and version.
pub const GLOBAL_VARIABLES: [&str; 6] = ["input", "context", "workflow", "task", "output", "runtime"];

/// How the tasks of a block follow each other.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    /// Tasks run as soon as their dependencies are done, in parallel where they can; each sees
    /// the graph context. Baton's native format.
    Graph,
    /// Tasks run one after the other in declaration order unless a `then` jumps; each sees the
    /// previous one's output. The Serverless Workflow DSL's `do`.
    Sequence,
}

/// A list of tasks run under one [`Flow`].
#[derive(Debug, Clone)]
pub struct Block {
    /// How its tasks follow each other.
    pub flow: Flow,
    /// Its tasks, in declaration order.
    pub tasks: Vec<Task>,
    /// What the block yields, rendered against its graph context ([`Flow::Graph`] only).
    /// `None`: the output of its last task (in declaration order for a graph, in run order for
    /// a sequence); an empty block yields its input.
    pub output: Option<Template>,
    /// For [`Flow::Graph`]: per task, the indexes of the tasks that depend on it.
    pub dependents: Vec<Vec<usize>>,
    /// For [`Flow::Graph`]: per task, the tasks whose outputs its expressions read.
    pub reads: Vec<Vec<usize>>,
    /// For [`Flow::Graph`]: per task, the steps of enclosing blocks its expressions read.
    pub outer_reads: Vec<Vec<String>>,
    /// For [`Flow::Graph`]: tasks that only run in place of a failed task.
    pub fallback_only: Vec<bool>,
}

/// Where a [`Flow::Sequence`] goes after a task.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Then {
    /// The next task in declaration order, or the end of the block after the last one.
    #[default]
    Continue,
    /// Leave the block: its output is this task's output.
    Exit,
    /// End the whole workflow gracefully with this task's output.
    End,
    /// Jump to the task with this index in the same block.
    Goto(usize),
}

/// What a task's failure does to its block ([`Flow::Graph`]; a sequence always fails).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OnError {
    /// The block fails.
    #[default]
    Fail,
    /// The block carries on; tasks that need this one's output are skipped.
    Continue,
    /// The task at this index of the same block runs instead; its output stands in.
    Fallback(usize),
}

/// One task of a block.
#[derive(Debug, Clone)]
pub struct Task {
    /// Its name, unique in its block; the last segment of its path.
    pub name: StepId,
    /// Where it is written in the definition, as an RFC 6901 JSON pointer (`/do/0/getPet`,
    /// `/steps/2`); errors raised by the task name it as their `instance`.
    pub reference: String,
    /// `if`: runs only when this is true; a task that does not run is recorded as skipped.
    pub condition: Option<Template>,
    /// Turns the raw input into the task's input.
    pub input: Option<Template>,
    /// Turns the action's raw output into the task's output.
    pub output: Option<Template>,
    /// Computes the execution's new `$context` from the task's output.
    pub export: Option<Template>,
    /// Where a sequence goes next.
    pub then: Then,
    /// [`Flow::Graph`]: tasks of the same block that must be done first.
    pub depends_on: Vec<usize>,
    /// How failed attempts of a call are retried.
    pub retry: RetryPolicy,
    /// Time limit of one attempt of a call.
    pub timeout: Option<Duration>,
    /// Time limit of the whole task, all attempts and nested tasks included.
    pub task_timeout: Option<Duration>,
    /// What its failure does.
    pub on_error: OnError,
    /// What it does.
    pub action: Action,
}

/// What a task does.
#[derive(Debug, Clone)]
pub enum Action {
    /// Calls a service.
    Call(Call),
    /// Yields a value computed from its input.
    Set(Template),
    /// Runs a nested block; yields its output.
    Do(Box<Block>),
    /// Picks the first case whose condition holds.
    Switch(Switch),
    /// Runs a block once per item of a list.
    For(Box<ForEach>),
    /// Runs a block while (or until) a condition holds, at most a bounded number of times.
    Repeat(Box<Repeat>),
    /// Runs blocks in parallel.
    Fork(Fork),
    /// Runs a block and handles the errors it raises.
    Try(Box<Try>),
    /// Raises an error.
    Raise(Box<Raise>),
    /// Waits, durably: the timer survives restarts.
    Wait(Wait),
    /// Waits for a signal sent to the execution.
    Listen(Listen),
    /// Publishes an event to the server's event sink; yields the event.
    Emit(Emit),
    /// Runs another workflow as a child execution and yields its output.
    Run(RunWorkflow),
}

/// A service call.
#[derive(Debug, Clone)]
pub struct Call {
    /// Who is called.
    pub target: CallTarget,
    /// The request payload, rendered against the task's input.
    pub payload: Template,
    /// How a call to a registered service is shaped (HTTP method, path, query, headers,
    /// response part; gRPC method and metadata), rendered against the task's input like the
    /// payload; `None`: the protocol's plain call. Only for [`CallTarget::Services`] and
    /// [`CallTarget::Query`]: a request the definition writes itself carries its own shape.
    pub shape: Option<CallTemplate>,
}

/// Who a [`Call`] goes to.
#[derive(Debug, Clone)]
pub enum CallTarget {
    /// A registered service, then its equivalents in failover order.
    Services(Vec<ServiceId>),
    /// The best healthy registered service matching the requirements, resolved at dispatch.
    Query(Arc<ServiceRequirements>),
    /// An HTTP endpoint named in the definition (the Serverless Workflow's `call: http`).
    Http(Arc<HttpCall>),
    /// An operation of an OpenAPI document, fetched when the call runs (the Serverless
    /// Workflow's `call: openapi`).
    OpenApi(Arc<OpenApiCall>),
}

/// An HTTP request written in the definition.
#[derive(Debug, Clone)]
pub struct HttpCall {
    /// `GET`, `POST`, ...
    pub method: String,
    /// The URL. A front end turns URI template parts (`{name}`, filled from the task's input by
    /// RFC 6570 simple expansion) into expressions, so rendering it gives the URL.
    pub uri: Template,
    /// Headers, each a template.
    pub headers: Option<Template>,
    /// Query parameters, each a template.
    pub query: Option<Template>,
    /// The body, if any.
    pub body: Option<Template>,
    /// Which part of the response is the output.
    pub output: HttpOutput,
    /// Basic credentials, by reference (a secret name) or inline in the definition.
    pub basic_auth: Option<(Template, Template)>,
    /// A bearer token.
    pub bearer: Option<Template>,
}

/// A call of an operation described by an OpenAPI (3.x) or Swagger (2.0) document.
#[derive(Debug, Clone)]
pub struct OpenApiCall {
    /// Where the document is, rendered to a URL; it is fetched when the call runs.
    pub document: Template,
    /// The operation's `operationId` in the document.
    pub operation_id: String,
    /// The operation's parameters by name (path, query, header and body ones alike).
    pub parameters: Option<Template>,
    /// Which part of the response is the output.
    pub output: HttpOutput,
    /// Basic credentials.
    pub basic_auth: Option<(Template, Template)>,
    /// A bearer token.
    pub bearer: Option<Template>,
}

/// Which part of an HTTP response a call yields.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum HttpOutput {
    /// The body, read as JSON when it is JSON, else as text.
    #[default]
    Content,
    /// `{request, statusCode, headers, content}`.
    Response,
    /// The body as base64 text.
    Raw,
}

/// A `switch`.
#[derive(Debug, Clone)]
pub struct Switch {
    /// Its cases, in order; at most one without a condition (the default), which is last.
    pub cases: Vec<Case>,
}

/// One case of a [`Switch`].
#[derive(Debug, Clone)]
pub struct Case {
    /// Its name: the path segment of the tasks it runs.
    pub name: StepId,
    /// `None` for the default case.
    pub when: Option<Template>,
    /// What the case does.
    pub then: CaseAction,
}

/// What a chosen [`Case`] does.
#[derive(Debug, Clone)]
pub enum CaseAction {
    /// Runs a block; the switch yields its output.
    Block(Block),
    /// A flow directive for the enclosing sequence; the switch yields its input.
    Flow(Then),
}

/// A `for` loop.
#[derive(Debug, Clone)]
pub struct ForEach {
    /// The variable holding the item (`item` unless renamed).
    pub each: String,
    /// The variable holding the index (`index` unless renamed).
    pub at: String,
    /// The list to iterate over, rendered against the task's input.
    pub items: Template,
    /// Stops the loop before an iteration when false (the Serverless Workflow's `for.while`).
    pub condition: Option<Template>,
    /// The body, run once per item.
    pub body: Block,
    /// Iterations in flight at once; 1 runs them one after the other.
    pub concurrency: usize,
    /// How the iterations' outputs make the loop's.
    pub collect: Collect,
}

/// How a loop's iterations make its output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Collect {
    /// An array of every iteration's output, in item order (Baton's native `for`).
    Array,
    /// Each iteration's output is the next one's input; the loop yields the last (the
    /// Serverless Workflow's `for`). Needs a concurrency of 1.
    Thread,
}

/// A bounded `while` or `until` loop.
#[derive(Debug, Clone)]
pub struct Repeat {
    /// Checked before each iteration (`while`) or after it (`until`), against the current
    /// value: the loop's input, then each iteration's output.
    pub condition: Template,
    /// `true`: loop until the condition holds, checked after each iteration.
    pub until: bool,
    /// The body.
    pub body: Block,
    /// The most iterations; one more fails the task with a limit error.
    pub max_iterations: u32,
}

/// A `fork`.
#[derive(Debug, Clone)]
pub struct Fork {
    /// The branches, each with its name (its path segment).
    pub branches: Vec<(StepId, Block)>,
    /// `true`: the first branch to finish wins and the others are cancelled; the fork yields
    /// its output. `false`: all run; the fork yields their outputs in branch order.
    pub compete: bool,
}

/// A `try`.
#[derive(Debug, Clone)]
pub struct Try {
    /// The guarded block.
    pub body: Block,
    /// Which errors are caught and what then happens.
    pub catch: Catch,
}

/// The `catch` of a [`Try`].
#[derive(Debug, Clone)]
pub struct Catch {
    /// Caught errors match every field given (type, status, instance, title, detail).
    pub filter: ErrorFilter,
    /// The variable that holds the caught error (`error` unless renamed).
    pub variable: String,
    /// Caught only when this is true (the error in the variable).
    pub when: Option<Template>,
    /// Not caught when this is true.
    pub except_when: Option<Template>,
    /// Runs the guarded block again on a caught error, up to the policy's attempts.
    pub retry: Option<RetryPolicy>,
    /// Runs on a caught error (after retries run out); the try yields its output. Without it
    /// the try yields its input.
    pub body: Option<Block>,
}

/// Which errors a [`Catch`] takes; `None` fields match anything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ErrorFilter {
    /// The error type: a full URI, or a standard type's short name (`communication`).
    pub r#type: Option<String>,
    /// The status.
    pub status: Option<u16>,
    /// The instance (the task's pointer).
    pub instance: Option<String>,
    /// The title.
    pub title: Option<String>,
    /// The detail.
    pub detail: Option<String>,
}

/// A `raise`.
#[derive(Debug, Clone)]
pub struct Raise {
    /// The error's type (a URI; standard short names are expanded).
    pub r#type: Template,
    /// Its status.
    pub status: Template,
    /// Its title.
    pub title: Option<Template>,
    /// Its detail.
    pub detail: Option<Template>,
}

/// A `wait`.
#[derive(Debug, Clone)]
pub enum Wait {
    /// For a fixed time.
    For(Duration),
    /// Until the time an expression yields (RFC 3339 text or seconds since the epoch).
    Until(Template),
}

/// A `listen`.
#[derive(Debug, Clone)]
pub struct Listen {
    /// The signal names that satisfy it.
    pub signals: Vec<String>,
    /// `One`/`Any`: the first matching signal ends the wait; `All`: one of each name.
    pub mode: ListenMode,
    /// Fails the task with a timeout error when no signal came in time.
    pub timeout: Option<Duration>,
}

/// How many signals a [`Listen`] waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListenMode {
    /// The first signal with any of the names; yields its data.
    Any,
    /// One signal of each name; yields their data in name order.
    All,
}

/// An `emit`.
#[derive(Debug, Clone)]
pub struct Emit {
    /// The event (a CloudEvent's attributes and data), rendered against the task's input.
    pub event: Template,
}

/// A `run: workflow`.
#[derive(Debug, Clone)]
pub struct RunWorkflow {
    /// The workflow to run.
    pub name: WorkflowName,
    /// Its version; `None` for the latest when the child starts.
    pub version: Option<u32>,
    /// The child's input, rendered against the task's input.
    pub input: Template,
}

/// A checked workflow, ready to run.
#[derive(Debug, Clone)]
pub struct Program {
    /// The workflow's name.
    pub name: WorkflowName,
    /// The top-level block.
    pub root: Block,
    /// Turns the execution's input into the root block's input.
    pub input: Option<Template>,
    /// Turns the root block's output into the execution's output.
    pub output: Option<Template>,
    /// Time limit of the whole run.
    pub deadline: Option<Duration>,
}

impl Block {
    /// A block of `tasks` under `flow`, working out what graph scheduling needs. The caller
    /// has checked the dependencies (indexes in range, no cycle).
    pub fn new(flow: Flow, tasks: Vec<Task>, output: Option<Template>) -> Self {
        let n = tasks.len();
        let mut dependents = vec![Vec::new(); n];
        let mut reads = vec![Vec::new(); n];
        let mut outer_reads = vec![Vec::new(); n];
        let mut fallback_only = vec![false; n];
        if flow == Flow::Graph {
            let index = |name: &str| tasks.iter().position(|t| t.name.as_str() == name);
            for (i, task) in tasks.iter().enumerate() {
                for &d in &task.depends_on {
                    dependents[d].push(i);
                }
                let mut read: Vec<usize> = task.depends_on.clone();
                for name in task.templates().flat_map(Template::referenced_steps) {
                    match index(&name) {
                        Some(r) => read.push(r),
                        None if !outer_reads[i].contains(&name) => outer_reads[i].push(name),
                        None => {}
                    }
                }
                read.sort_unstable();
                read.dedup();
                reads[i] = read;
                if let OnError::Fallback(f) = task.on_error {
                    fallback_only[f] = true;
                }
            }
        }
        Self { flow, tasks, output, dependents, reads, outer_reads, fallback_only }
    }

    /// Every task of the block and of the blocks nested in it, depth first.
    pub fn all_tasks(&self) -> Vec<&Task> {
        let mut found = Vec::new();
        let mut stack: Vec<&Block> = vec![self];
        while let Some(block) = stack.pop() {
            for task in &block.tasks {
                found.push(task);
                stack.extend(task.action.blocks());
            }
        }
        found
    }
}

impl Task {
    /// The templates of the task itself (not of nested blocks) that are rendered against its
    /// raw or transformed input.
    pub fn templates(&self) -> impl Iterator<Item = &Template> {
        let own = [&self.condition, &self.input].into_iter().flatten();
        let action: Vec<&Template> = match &self.action {
            Action::Call(call) => {
                let mut found = vec![&call.payload];
                found.extend(call.shape.iter().flat_map(CallTemplate::templates));
                match &call.target {
                    CallTarget::Http(http) => {
                        found.push(&http.uri);
                        found.extend([&http.headers, &http.query, &http.body, &http.bearer].into_iter().flatten());
                        if let Some((user, password)) = &http.basic_auth {
                            found.extend([user, password]);
                        }
                    }
                    CallTarget::OpenApi(api) => {
                        found.push(&api.document);
                        found.extend([&api.parameters, &api.bearer].into_iter().flatten());
                        if let Some((user, password)) = &api.basic_auth {
                            found.extend([user, password]);
                        }
                    }
                    CallTarget::Services(_) | CallTarget::Query(_) => {}
                }
                found
            }
            Action::Set(value) => vec![value],
            Action::For(each) => std::iter::once(&each.items).chain(&each.condition).collect(),
            Action::Repeat(repeat) => vec![&repeat.condition],
            Action::Switch(switch) => switch.cases.iter().filter_map(|c| c.when.as_ref()).collect(),
            Action::Raise(raise) => {
                [Some(&raise.r#type), Some(&raise.status), raise.title.as_ref(), raise.detail.as_ref()]
                    .into_iter()
                    .flatten()
                    .collect()
            }
            Action::Wait(Wait::Until(until)) => vec![until],
            Action::Emit(emit) => vec![&emit.event],
            Action::Run(run) => vec![&run.input],
            Action::Wait(Wait::For(_)) | Action::Do(_) | Action::Fork(_) | Action::Try(_) | Action::Listen(_) => {
                Vec::new()
            }
        };
        own.chain(action)
    }

    /// Whether the task calls out of the engine (a service, a timer, a signal, a child): what
    /// must wait for the journal before it starts.
    pub fn has_effect(&self) -> bool {
        matches!(self.action, Action::Call(_) | Action::Wait(_) | Action::Listen(_) | Action::Emit(_) | Action::Run(_))
    }
}

impl Action {
    /// The blocks nested directly in this action.
    pub fn blocks(&self) -> Vec<&Block> {
        match self {
            Action::Do(block) => vec![block],
            Action::Switch(switch) => switch
                .cases
                .iter()
                .filter_map(|c| match &c.then {
                    CaseAction::Block(block) => Some(block),
                    CaseAction::Flow(_) => None,
                })
                .collect(),
            Action::For(each) => vec![&each.body],
            Action::Repeat(repeat) => vec![&repeat.body],
            Action::Fork(fork) => fork.branches.iter().map(|(_, b)| b).collect(),
            Action::Try(t) => std::iter::once(&t.body).chain(&t.catch.body).collect(),
            Action::Call(_)
            | Action::Set(_)
            | Action::Raise(_)
            | Action::Wait(_)
            | Action::Listen(_)
            | Action::Emit(_)
            | Action::Run(_) => Vec::new(),
        }
    }

    /// The action's keyword, for messages and views: `call`, `set`, `switch`, ...
    pub fn keyword(&self) -> &'static str {
        match self {
            Action::Call(_) => "call",
            Action::Set(_) => "set",
            Action::Do(_) => "do",
            Action::Switch(_) => "switch",
            Action::For(_) => "for",
            Action::Repeat(r) if r.until => "until",
            Action::Repeat(_) => "while",
            Action::Fork(_) => "fork",
            Action::Try(_) => "try",
            Action::Raise(_) => "raise",
            Action::Wait(_) => "wait",
            Action::Listen(_) => "listen",
            Action::Emit(_) => "emit",
            Action::Run(_) => "run",
        }
    }
}
