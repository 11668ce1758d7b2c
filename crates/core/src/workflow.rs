//! Workflow definitions as users write them (YAML or JSON): [`WorkflowDefinition`] and [`Step`].
//!
//! Expressions are jq programs written `${ ... }` inside strings of the input and output
//! mappings; the workflow engine parses and checks them.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::call::{GrpcCall, HttpCall, StepCall};
use crate::error::{Error, Result};
use crate::ids::{ServiceId, StepId, WorkflowName};
use crate::requirements::ServiceRequirements;

/// How a failed attempt is retried.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RetryPolicy {
    /// Attempts in all, the first included; 1 means no retry.
    pub max_attempts: u32,
    /// Backoff before the first retry.
    #[serde(with = "crate::duration::serde_text")]
    pub initial_backoff: Duration,
    /// Longest backoff between attempts.
    #[serde(with = "crate::duration::serde_text")]
    pub max_backoff: Duration,
    /// Growth factor of the backoff per attempt.
    pub multiplier: f64,
    /// Error classes that are never retried, e.g. `invalid_input`.
    pub non_retryable: Vec<String>,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 3,
            initial_backoff: Duration::from_millis(200),
            max_backoff: Duration::from_secs(10),
            multiplier: 2.0,
            non_retryable: Vec::new(),
        }
    }
}

/// What a step's failure does to the run. Written `on_error: fail | continue | fallback`,
/// with `fallback: <step>` beside it for the last.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum ErrorPolicy {
    /// Fail the whole run.
    #[default]
    Fail,
    /// Carry on; steps that need this step's output are skipped.
    Continue,
    /// Run the named step instead; its output stands in for this step's.
    Fallback(StepId),
}

/// Which service a step calls. Written as `service: <id>` (with optional `alternatives`) or
/// `query: { <requirements> }`.
#[derive(Debug, Clone, PartialEq)]
pub enum StepTarget {
    /// A pinned service, with ranked equivalents to fail over to.
    Service {
        /// The service to call.
        id: ServiceId,
        /// Equivalents to try, in order, when it fails.
        alternatives: Vec<ServiceId>,
    },
    /// The best healthy service matching these requirements, resolved at dispatch.
    Query(ServiceRequirements),
}

/// Settings every step inherits unless it sets its own.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StepDefaults {
    /// Retry policy.
    pub retry: RetryPolicy,
    /// Time limit of one attempt.
    #[serde(with = "crate::duration::serde_text_opt", skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Duration>,
}

/// One step of a workflow: what it does ([`StepAction`]) and the settings every kind of step
/// shares.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "StepDocument", into = "StepDocument")]
pub struct Step {
    /// Unique within its block (the top-level steps, or the steps of one nested block).
    pub id: StepId,
    /// What it does.
    pub action: StepAction,
    /// `if`: an expression; the step runs only when it yields `true`, else it is recorded as
    /// skipped (steps that depend on it still run and read no output from it).
    pub condition: Option<String>,
    /// Steps of the same block that must be done first (besides those its expressions read).
    pub depends_on: Vec<StepId>,
    /// Overrides the default retry policy of its calls.
    pub retry: Option<RetryPolicy>,
    /// Time limit of one attempt of a call.
    pub timeout: Option<Duration>,
    /// Time limit of the whole step: all attempts, or everything nested in it.
    pub task_timeout: Option<Duration>,
    /// What its failure does.
    pub on_error: ErrorPolicy,
    /// Turns the step's raw output into its output: a template over the raw output (`.`).
    pub output: Option<serde_json::Value>,
    /// Replaces the execution's context (`$context`) with this template over the output.
    pub export: Option<serde_json::Value>,
}

/// What a [`Step`] does: exactly one of these keys in a step.
#[derive(Debug, Clone, PartialEq)]
pub enum StepAction {
    /// `service`/`query` with `input`: calls a service with the rendered input.
    Call {
        /// Which service.
        target: StepTarget,
        /// The request payload: JSON in which strings may hold `${ jq }` expressions.
        input: serde_json::Value,
        /// How it calls the service when a JSON POST of its input (HTTP) or the endpoint's
        /// method (gRPC) is not it: written `http: {..}` or `grpc: {..}` beside `service` or
        /// `query`.
        call: Option<StepCall>,
    },
    /// `set`: yields the rendered value.
    Set(serde_json::Value),
    /// `steps`: runs the nested steps; yields the output of the last one.
    Do(Vec<Step>),
    /// `switch`: runs the first case whose `when` holds (a case without one is the default).
    Switch(Vec<SwitchCase>),
    /// `for` with `steps`: runs the steps once per item; yields their outputs in item order.
    For(ForSpec, Vec<Step>),
    /// `while`/`until` with `steps` and `max_iterations`.
    Repeat(RepeatSpec, Vec<Step>),
    /// `fork`: runs branches in parallel.
    Fork(ForkSpec),
    /// `try` with `catch`.
    Try(Vec<Step>, CatchSpec),
    /// `raise`: fails with a typed error.
    Raise(RaiseSpec),
    /// `wait`: a durable timer.
    Wait(WaitSpec),
    /// `listen`: waits for a signal sent to the execution.
    Listen(ListenSpec),
    /// `emit`: publishes an event.
    Emit(serde_json::Value),
    /// `workflow`: runs another workflow as a child execution.
    Workflow(ChildSpec),
}

/// One case of a `switch`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SwitchCase {
    /// Its name (the path segment of its steps); its index when not given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<StepId>,
    /// The condition, an expression; none for the default case, which must come last.
    #[serde(default, rename = "when", skip_serializing_if = "Option::is_none")]
    pub when: Option<String>,
    /// What runs when the case is chosen.
    pub steps: Vec<Step>,
}

/// How a `for` iterates.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ForSpec {
    /// The variable holding the item: `$item` unless renamed.
    #[serde(default = "default_each")]
    pub each: String,
    /// The variable holding the index: `$index` unless renamed.
    #[serde(default = "default_at")]
    pub at: String,
    /// An expression yielding the list.
    #[serde(rename = "in")]
    pub items: String,
    /// Iterations in flight at once (1, the default, runs them in order).
    #[serde(default = "one", skip_serializing_if = "is_one")]
    pub concurrency: u32,
}

/// How a `while`/`until` loop ends.
#[derive(Debug, Clone, PartialEq)]
pub struct RepeatSpec {
    /// The condition, an expression.
    pub condition: String,
    /// `until`: checked after each iteration, ends the loop when true; `while`: checked before
    /// each, ends it when false.
    pub until: bool,
    /// The most iterations; the step fails when the loop would need more.
    pub max_iterations: u32,
}

/// The branches of a `fork`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ForkSpec {
    /// `true`: the first branch to finish wins, the others are cancelled.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub compete: bool,
    /// The branches.
    pub branches: Vec<ForkBranch>,
}

/// One branch of a `fork`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ForkBranch {
    /// Its name, unique in the fork.
    pub name: StepId,
    /// Its steps.
    pub steps: Vec<Step>,
}

/// The `catch` of a `try`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CatchSpec {
    /// Only errors matching every field given are caught.
    #[serde(default, skip_serializing_if = "ErrorMatch::is_empty")]
    pub errors: ErrorMatch,
    /// The variable holding the caught error: `$error` unless renamed.
    #[serde(default = "default_error_variable", rename = "as")]
    pub variable: String,
    /// Caught only when this expression is true.
    #[serde(default, rename = "when", skip_serializing_if = "Option::is_none")]
    pub when: Option<String>,
    /// Not caught when this expression is true.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub except_when: Option<String>,
    /// Runs the `try` steps again on a caught error.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<RetryPolicy>,
    /// Runs after a caught error (once retries are spent); the step yields their output.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub steps: Vec<Step>,
}

/// Which errors a `catch` takes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ErrorMatch {
    /// The type: a URI or a standard short name (`communication`, `timeout`, ...).
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// The status.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
}

impl ErrorMatch {
    fn is_empty(&self) -> bool {
        self.kind.is_none() && self.status.is_none()
    }
}

/// The error a `raise` fails with; each field may hold expressions.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RaiseSpec {
    /// The type: a URI or a standard short name.
    #[serde(rename = "type")]
    pub kind: String,
    /// The status.
    pub status: serde_json::Value,
    /// A short summary.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
    /// What happened.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

/// How long a `wait` waits.
#[derive(Debug, Clone, PartialEq)]
pub enum WaitSpec {
    /// `wait: 2h`.
    For(Duration),
    /// `wait: {until: "${ ... }"}`: an RFC 3339 time or seconds since the epoch.
    Until(String),
}

/// What a `listen` waits for.
#[derive(Debug, Clone, PartialEq)]
pub struct ListenSpec {
    /// The signal names.
    pub signals: Vec<String>,
    /// `true`: one signal of every name; `false`: the first of any.
    pub all: bool,
    /// Fails the step when no signal came in time.
    pub timeout: Option<Duration>,
}

/// The workflow a `workflow` step runs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChildSpec {
    /// Its name.
    pub name: WorkflowName,
    /// Its version; the latest when the child starts if not given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<u32>,
    /// The child's input: JSON with `${ jq }` expressions.
    #[serde(default, skip_serializing_if = "serde_json::Value::is_null")]
    pub input: serde_json::Value,
}

fn default_each() -> String {
    "item".to_owned()
}

fn default_at() -> String {
    "index".to_owned()
}

fn default_error_variable() -> String {
    "error".to_owned()
}

fn one() -> u32 {
    1
}

fn is_one(n: &u32) -> bool {
    *n == 1
}

impl Step {
    /// A call step with the defaults for everything else: what the planner writes.
    pub fn call(id: StepId, target: StepTarget, input: serde_json::Value) -> Self {
        Self {
            id,
            action: StepAction::Call { target, input, call: None },
            condition: None,
            depends_on: Vec::new(),
            retry: None,
            timeout: None,
            task_timeout: None,
            on_error: ErrorPolicy::Fail,
            output: None,
            export: None,
        }
    }

    /// The call's target, for a call step.
    pub fn target(&self) -> Option<&StepTarget> {
        match &self.action {
            StepAction::Call { target, .. } => Some(target),
            _ => None,
        }
    }

    /// The call's input template, for a call step.
    pub fn input(&self) -> Option<&serde_json::Value> {
        match &self.action {
            StepAction::Call { input, .. } => Some(input),
            _ => None,
        }
    }

    /// How the call is shaped, for a call step that shapes it.
    pub fn shaped_call(&self) -> Option<&StepCall> {
        match &self.action {
            StepAction::Call { call, .. } => call.as_ref(),
            _ => None,
        }
    }

    /// The blocks of steps nested directly in this step.
    pub fn nested(&self) -> Vec<&[Step]> {
        match &self.action {
            StepAction::Do(steps) | StepAction::For(_, steps) | StepAction::Repeat(_, steps) => vec![steps],
            StepAction::Switch(cases) => cases.iter().map(|c| c.steps.as_slice()).collect(),
            StepAction::Fork(fork) => fork.branches.iter().map(|b| b.steps.as_slice()).collect(),
            StepAction::Try(steps, catch) => vec![steps.as_slice(), catch.steps.as_slice()],
            _ => Vec::new(),
        }
    }
}

/// A step as written: flat keys, checked into a [`Step`].
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct StepDocument {
    id: StepId,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    service: Option<ServiceId>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    alternatives: Vec<ServiceId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    query: Option<ServiceRequirements>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    http: Option<HttpCall>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    grpc: Option<GrpcCall>,
    #[serde(default, skip_serializing_if = "serde_json::Value::is_null")]
    input: serde_json::Value,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    set: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    steps: Option<Vec<Step>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    switch: Option<Vec<SwitchCase>>,
    #[serde(default, rename = "for", skip_serializing_if = "Option::is_none")]
    for_each: Option<ForSpec>,
    #[serde(default, rename = "while", skip_serializing_if = "Option::is_none")]
    while_: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    until: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    max_iterations: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    fork: Option<ForkSpec>,
    #[serde(default, rename = "try", skip_serializing_if = "Option::is_none")]
    try_: Option<Vec<Step>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    catch: Option<CatchSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    raise: Option<RaiseSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    wait: Option<WaitDocument>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    listen: Option<ListenDocument>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    emit: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    workflow: Option<ChildSpec>,
    #[serde(default, rename = "if", skip_serializing_if = "Option::is_none")]
    condition: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    depends_on: Vec<StepId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    retry: Option<RetryPolicy>,
    #[serde(default, with = "crate::duration::serde_text_opt", skip_serializing_if = "Option::is_none")]
    timeout: Option<Duration>,
    #[serde(default, with = "crate::duration::serde_text_opt", skip_serializing_if = "Option::is_none")]
    task_timeout: Option<Duration>,
    #[serde(default = "default_on_error")]
    on_error: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    fallback: Option<StepId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    output: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    export: Option<serde_json::Value>,
}

/// `wait: 2h` or `wait: {until: ...}`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(untagged)]
enum WaitDocument {
    For(#[serde(with = "crate::duration::serde_text")] Duration),
    Until { until: String },
}

/// `listen: {signal: x}` or `listen: {signals: [x, y], all: true}`, with `timeout`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct ListenDocument {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    signal: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    signals: Vec<String>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    all: bool,
    #[serde(default, with = "crate::duration::serde_text_opt", skip_serializing_if = "Option::is_none")]
    timeout: Option<Duration>,
}

fn default_on_error() -> String {
    "fail".to_owned()
}

/// The action keys a step may have; exactly one is set.
const ACTION_KEYS: &str =
    "service, query, set, steps, switch, for, while, until, fork, try, raise, wait, listen, emit or workflow";

impl TryFrom<StepDocument> for Step {
    type Error = Error;

    fn try_from(doc: StepDocument) -> Result<Self> {
        let id = doc.id.clone();
        let place = |field: &str| format!("steps.{id}.{field}");
        if id.as_str().contains('/') {
            return Err(Error::invalid(place("id"), &id, "must not hold '/'"));
        }
        let mut keys: Vec<&str> = Vec::new();
        for (key, present) in [
            ("service", doc.service.is_some()),
            ("query", doc.query.is_some()),
            ("set", doc.set.is_some()),
            ("switch", doc.switch.is_some()),
            ("for", doc.for_each.is_some()),
            ("while", doc.while_.is_some()),
            ("until", doc.until.is_some()),
            ("fork", doc.fork.is_some()),
            ("try", doc.try_.is_some()),
            ("raise", doc.raise.is_some()),
            ("wait", doc.wait.is_some()),
            ("listen", doc.listen.is_some()),
            ("emit", doc.emit.is_some()),
            ("workflow", doc.workflow.is_some()),
        ] {
            if present {
                keys.push(key);
            }
        }
        // `steps` is the body of `for`, `while` and `until`, and a block of its own otherwise.
        let loops = doc.for_each.is_some() || doc.while_.is_some() || doc.until.is_some();
        if doc.steps.is_some() && !loops {
            keys.push("steps");
        }
        let action = match keys.as_slice() {
            [] => return Err(Error::invalid(place("service"), "", format!("set one of {ACTION_KEYS}"))),
            [_] => keys[0],
            [first, second, ..] => {
                return Err(Error::invalid(place(second), "", format!("set {first} or {second}, not both")));
            }
        };
        let misplaced = |field: &str, allowed: &str| Error::invalid(place(field), "", format!("goes with {allowed}"));
        if !doc.alternatives.is_empty() && action != "service" {
            return Err(misplaced("alternatives", "service"));
        }
        if !doc.input.is_null() && !matches!(action, "service" | "query") {
            return Err(misplaced("input", "service or query (a workflow step takes its input in `workflow.input`)"));
        }
        let call = match (doc.http, doc.grpc) {
            (None, None) => None,
            (Some(http), None) => Some(StepCall::Http(http)),
            (None, Some(grpc)) => Some(StepCall::Grpc(grpc)),
            (Some(_), Some(_)) => return Err(Error::invalid(place("grpc"), "{..}", "set http or grpc, not both")),
        };
        if call.is_some() && !matches!(action, "service" | "query") {
            let field = if matches!(call, Some(StepCall::Http(_))) { "http" } else { "grpc" };
            return Err(misplaced(field, "service or query"));
        }
        if loops && doc.steps.is_none() {
            return Err(Error::invalid(place("steps"), "", format!("{action} needs steps")));
        }
        if doc.max_iterations.is_some() && !matches!(action, "while" | "until") {
            return Err(misplaced("max_iterations", "while or until"));
        }
        if doc.catch.is_some() != (action == "try") {
            return Err(if action == "try" {
                Error::invalid(place("catch"), "", "try needs catch")
            } else {
                misplaced("catch", "try")
            });
        }
        let action = match action {
            "service" => StepAction::Call {
                target: StepTarget::Service { id: doc.service.expect("checked above"), alternatives: doc.alternatives },
                input: doc.input,
                call,
            },
            "query" => StepAction::Call {
                target: StepTarget::Query(doc.query.expect("checked above")),
                input: doc.input,
                call,
            },
            "set" => StepAction::Set(doc.set.expect("checked above")),
            "steps" => StepAction::Do(doc.steps.expect("checked above")),
            "switch" => {
                let cases = doc.switch.expect("checked above");
                if let Some(i) = cases.iter().rev().skip(1).position(|c| c.when.is_none()) {
                    let at = cases.len() - 2 - i;
                    return Err(Error::invalid(
                        format!("steps.{id}.switch[{at}]"),
                        "",
                        "a case without `when` is the default and must come last",
                    ));
                }
                if cases.is_empty() {
                    return Err(Error::invalid(place("switch"), "[]", "needs at least one case"));
                }
                StepAction::Switch(cases)
            }
            "for" => {
                let spec = doc.for_each.expect("checked above");
                if spec.concurrency == 0 {
                    return Err(Error::invalid(place("for.concurrency"), 0, "must be at least 1"));
                }
                StepAction::For(spec, doc.steps.expect("checked above"))
            }
            "while" | "until" => {
                let until = action == "until";
                let condition = if until { doc.until } else { doc.while_ }.expect("checked above");
                let Some(max_iterations) = doc.max_iterations else {
                    return Err(Error::invalid(
                        place("max_iterations"),
                        "",
                        format!("{action} needs max_iterations, its bound"),
                    ));
                };
                if max_iterations == 0 {
                    return Err(Error::invalid(place("max_iterations"), 0, "must be at least 1"));
                }
                StepAction::Repeat(RepeatSpec { condition, until, max_iterations }, doc.steps.expect("checked above"))
            }
            "fork" => {
                let fork = doc.fork.expect("checked above");
                if fork.branches.is_empty() {
                    return Err(Error::invalid(place("fork.branches"), "[]", "needs at least one branch"));
                }
                StepAction::Fork(fork)
            }
            "try" => StepAction::Try(doc.try_.expect("checked above"), doc.catch.expect("checked above")),
            "raise" => StepAction::Raise(doc.raise.expect("checked above")),
            "wait" => StepAction::Wait(match doc.wait.expect("checked above") {
                WaitDocument::For(duration) => WaitSpec::For(duration),
                WaitDocument::Until { until } => WaitSpec::Until(until),
            }),
            "listen" => {
                let listen = doc.listen.expect("checked above");
                let mut signals = listen.signals;
                if let Some(signal) = listen.signal {
                    signals.insert(0, signal);
                }
                if signals.is_empty() {
                    return Err(Error::invalid(place("listen.signal"), "", "name a signal (signal or signals)"));
                }
                StepAction::Listen(ListenSpec { signals, all: listen.all, timeout: listen.timeout })
            }
            "emit" => StepAction::Emit(doc.emit.expect("checked above")),
            "workflow" => StepAction::Workflow(doc.workflow.expect("checked above")),
            _ => unreachable!("every action key is handled"),
        };
        let on_error = match (doc.on_error.as_str(), doc.fallback) {
            ("fail", None) => ErrorPolicy::Fail,
            ("continue", None) => ErrorPolicy::Continue,
            ("fallback", Some(step)) => ErrorPolicy::Fallback(step),
            ("fallback", None) => {
                return Err(Error::invalid(place("fallback"), "", "on_error: fallback needs a fallback step"));
            }
            ("fail" | "continue", Some(step)) => {
                return Err(Error::invalid(place("fallback"), step, "needs on_error: fallback"));
            }
            (other, _) => return Err(Error::invalid(place("on_error"), other, "must be fail, continue or fallback")),
        };
        Ok(Self {
            id: doc.id,
            action,
            condition: doc.condition,
            depends_on: doc.depends_on,
            retry: doc.retry,
            timeout: doc.timeout,
            task_timeout: doc.task_timeout,
            on_error,
            output: doc.output,
            export: doc.export,
        })
    }
}

impl From<Step> for StepDocument {
    fn from(step: Step) -> Self {
        let (on_error, fallback) = match step.on_error {
            ErrorPolicy::Fail => ("fail", None),
            ErrorPolicy::Continue => ("continue", None),
            ErrorPolicy::Fallback(step) => ("fallback", Some(step)),
        };
        let mut doc = Self {
            id: step.id,
            service: None,
            alternatives: Vec::new(),
            query: None,
            input: serde_json::Value::Null,
            set: None,
            steps: None,
            switch: None,
            for_each: None,
            while_: None,
            until: None,
            max_iterations: None,
            fork: None,
            try_: None,
            catch: None,
            raise: None,
            wait: None,
            listen: None,
            emit: None,
            workflow: None,
            http: None,
            grpc: None,
            condition: step.condition,
            depends_on: step.depends_on,
            retry: step.retry,
            timeout: step.timeout,
            task_timeout: step.task_timeout,
            on_error: on_error.to_owned(),
            fallback,
            output: step.output,
            export: step.export,
        };
        match step.action {
            StepAction::Call { target, input, call } => {
                match target {
                    StepTarget::Service { id, alternatives } => {
                        doc.service = Some(id);
                        doc.alternatives = alternatives;
                    }
                    StepTarget::Query(query) => doc.query = Some(query),
                }
                doc.input = input;
                match call {
                    None => {}
                    Some(StepCall::Http(http)) => doc.http = Some(http),
                    Some(StepCall::Grpc(grpc)) => doc.grpc = Some(grpc),
                }
            }
            StepAction::Set(value) => doc.set = Some(value),
            StepAction::Do(steps) => doc.steps = Some(steps),
            StepAction::Switch(cases) => doc.switch = Some(cases),
            StepAction::For(spec, steps) => {
                doc.for_each = Some(spec);
                doc.steps = Some(steps);
            }
            StepAction::Repeat(spec, steps) => {
                if spec.until {
                    doc.until = Some(spec.condition);
                } else {
                    doc.while_ = Some(spec.condition);
                }
                doc.max_iterations = Some(spec.max_iterations);
                doc.steps = Some(steps);
            }
            StepAction::Fork(fork) => doc.fork = Some(fork),
            StepAction::Try(steps, catch) => {
                doc.try_ = Some(steps);
                doc.catch = Some(catch);
            }
            StepAction::Raise(raise) => doc.raise = Some(raise),
            StepAction::Wait(WaitSpec::For(duration)) => doc.wait = Some(WaitDocument::For(duration)),
            StepAction::Wait(WaitSpec::Until(until)) => doc.wait = Some(WaitDocument::Until { until }),
            StepAction::Listen(listen) => {
                doc.listen = Some(ListenDocument {
                    signal: None,
                    signals: listen.signals,
                    all: listen.all,
                    timeout: listen.timeout,
                });
            }
            StepAction::Emit(event) => doc.emit = Some(event),
            StepAction::Workflow(child) => doc.workflow = Some(child),
        }
        doc
    }
}

/// A workflow as written by a user or produced by the planner.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkflowDefinition {
    /// The workflow's name.
    pub name: WorkflowName,
    /// What it does, for people.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
    /// Its steps.
    pub steps: Vec<Step>,
    /// The run's output: JSON in which strings may hold `${ jq }` expressions.
    #[serde(default)]
    pub output: serde_json::Value,
    /// Settings steps inherit.
    #[serde(default)]
    pub defaults: StepDefaults,
    /// Time limit of the whole run.
    #[serde(default, with = "crate::duration::serde_text_opt", skip_serializing_if = "Option::is_none")]
    pub deadline: Option<Duration>,
    /// How long an ended execution of it is kept, from its end; the server's setting when
    /// `None`.
    #[serde(default, with = "crate::duration::serde_text_opt", skip_serializing_if = "Option::is_none")]
    pub retention: Option<Duration>,
    /// Free-form labels.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_definition_reads_from_yaml() {
        let yaml = r#"
name: checkout
steps:
  - id: charge
    service: pay
    alternatives: [pay-backup]
    input: { amount: "${ .input.amount }" }
    retry: { max_attempts: 5, initial_backoff: 100ms }
    timeout: 2s
  - id: notify
    query: { capabilities: [email.send], max_latency_p99_ms: 200 }
    depends_on: [charge]
    on_error: continue
output: { receipt: "${ .steps.charge.output.id }" }
deadline: 1m
"#;
        let def: WorkflowDefinition = serde_yaml::from_str(yaml).unwrap();
        assert_eq!(def.steps.len(), 2);
        assert_eq!(def.steps[0].retry.as_ref().unwrap().max_attempts, 5);
        assert_eq!(def.steps[0].retry.as_ref().unwrap().max_backoff, Duration::from_secs(10));
        assert_eq!(def.steps[1].on_error, ErrorPolicy::Continue);
        assert!(matches!(def.steps[1].target(), Some(StepTarget::Query(r)) if r.capabilities == ["email.send"]));
        let json = serde_json::to_string(&def).unwrap();
        assert_eq!(serde_json::from_str::<WorkflowDefinition>(&json).unwrap(), def);
    }

    #[test]
    fn unknown_fields_and_bad_names_are_rejected() {
        let err = serde_yaml::from_str::<WorkflowDefinition>("name: x\nsteps: []\ncolour: red\n").unwrap_err();
        assert!(err.to_string().contains("unknown field `colour`"), "{err}");
        let err = serde_yaml::from_str::<WorkflowDefinition>("name: Bad\nsteps: []\n").unwrap_err();
        assert!(err.to_string().contains(r#"invalid workflow "Bad""#), "{err}");
        let err = serde_yaml::from_str::<WorkflowDefinition>("name: x\nsteps: []\ndeadline: 5x\n").unwrap_err();
        assert!(err.to_string().contains("unknown unit"), "{err}");
        let step = |extra: &str| {
            let yaml = format!("name: x\nsteps:\n  - id: a\n{extra}");
            serde_yaml::from_str::<WorkflowDefinition>(&yaml).unwrap_err().to_string()
        };
        assert!(step("    input: {}\n").contains("invalid steps.a.service"), "{}", step("    input: {}\n"));
        assert!(step("    service: s\n    query: {capabilities: [c]}\n").contains("not both"));
        assert!(step("    service: s\n    on_error: explode\n").contains(r#"invalid steps.a.on_error "explode""#));
        assert!(step("    service: s\n    on_error: fallback\n").contains("needs a fallback step"));
        let err = serde_yaml::from_str::<WorkflowDefinition>("name: x\nsteps: []\ndeadline: 5x\n").unwrap_err();
        assert!(err.to_string().contains("unknown unit"), "{err}");
    }
}
