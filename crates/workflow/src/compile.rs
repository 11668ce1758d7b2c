//! Baton's native format to the executable [`Program`]: every block checked (unique ids, known
//! dependencies and fallbacks, no cycle, no fallback loop), every expression compiled with the
//! variables its place may read, every reference to a step's output checked to be upstream.

use std::collections::HashMap;
use std::sync::Arc;

use baton_core::problem::expand_type;
use baton_core::program::{
    Action, Block, Call, CallTarget, Case, CaseAction, Catch, Collect, ErrorFilter, Flow, ForEach, Fork,
    GLOBAL_VARIABLES, Listen, ListenMode, OnError, Program, Raise, Repeat, RunWorkflow, Task, Then, Try, Wait,
};
use baton_core::{
    CallTemplate, ErrorPolicy, Step, StepAction, StepGraph, StepId, StepLinks, StepTarget, Template, WaitSpec,
    WorkflowDefinition,
};
use serde_json::Value;

use crate::definition::MAX_JQ_EXPRESSIONS;
use crate::error::{Error, Result};

/// The deepest nesting of blocks (a loop in a try in a switch is three).
pub const MAX_DEPTH: usize = 64;
/// The most branches of one fork.
pub const MAX_BRANCHES: usize = 256;
/// The most iterations a `while`/`until` may declare.
pub const MAX_ITERATIONS: u32 = 100_000;
/// The most iterations in flight of one `for`.
pub const MAX_CONCURRENCY: u32 = 1_024;

/// Builds the program of a native definition, checking it on the way.
pub(crate) fn native(definition: &WorkflowDefinition) -> Result<Program> {
    let mut compiler = Compiler {
        defaults: definition,
        tasks: 0,
        jq: 0,
        variables: GLOBAL_VARIABLES.map(str::to_owned).to_vec(),
        references: Vec::new(),
    };
    let root = compiler.block(&definition.steps, "steps", None, &[], Some(&definition.output), "output")?;
    Ok(Program { name: definition.name.clone(), root, input: None, output: None, deadline: definition.deadline })
}

struct Compiler<'a> {
    defaults: &'a WorkflowDefinition,
    /// Tasks compiled so far, at every level.
    tasks: usize,
    /// Expressions needing jq compiled so far; counted before each is compiled, which is what
    /// costs.
    jq: usize,
    /// The variables in scope, globals first, innermost last.
    variables: Vec<String>,
    /// The steps each template compiled so far reads, by place; a block checks and drops its
    /// tasks' entries once each task is compiled.
    references: Vec<(String, Vec<String>)>,
}

/// A block being compiled, for resolving step references from blocks nested in it.
struct Enclosing<'s> {
    /// Its steps' ids.
    ids: &'s [StepId],
    /// Which steps run before which.
    upstream: &'s Upstream,
    /// The step (index) holding the nested block.
    holder: usize,
}

impl Compiler<'_> {
    fn names(&self) -> Vec<&str> {
        self.variables.iter().map(String::as_str).collect()
    }

    /// A template over the graph context; the steps it reads are checked by its block.
    fn template(&mut self, place: &str, value: &Value) -> Result<Template> {
        let template = self.filter(place, value)?;
        self.references.push((place.to_owned(), template.referenced_steps().into_iter().collect()));
        Ok(template)
    }

    /// A template over something else than the graph context (a step's raw output).
    fn filter(&mut self, place: &str, value: &Value) -> Result<Template> {
        self.charge(Template::count_jq(value))?;
        Ok(Template::compile_with(place, value, &self.names())?)
    }

    /// An expression written as a string, with or without `${ }` around it, over the graph
    /// context.
    fn expression(&mut self, place: &str, source: &str) -> Result<Template> {
        let trimmed = source.trim();
        let inner = trimmed.strip_prefix("${").and_then(|rest| rest.strip_suffix('}')).unwrap_or(trimmed);
        self.charge(Template::count_jq(&Value::String(format!("${{{inner}}}"))))?;
        let template = Template::expression(place, inner.trim(), &self.names())?;
        self.references.push((place.to_owned(), template.referenced_steps().into_iter().collect()));
        Ok(template)
    }

    /// Counts `count` more expressions needing jq, refusing the definition past
    /// [`MAX_JQ_EXPRESSIONS`].
    fn charge(&mut self, count: usize) -> Result<()> {
        self.jq += count;
        if self.jq > MAX_JQ_EXPRESSIONS {
            return Err(Error::TooManyExpressions { count: self.jq, limit: MAX_JQ_EXPRESSIONS });
        }
        Ok(())
    }

    /// Runs `compile` with `names` bound as variables.
    fn with_variables<T>(
        &mut self,
        place: &str,
        names: &[&str],
        compile: impl FnOnce(&mut Self) -> Result<T>,
    ) -> Result<T> {
        let before = bind_variables(place, names, &mut self.variables)?;
        let result = compile(self);
        self.variables.truncate(before);
        result
    }

    #[allow(clippy::too_many_arguments)] // reason: one call per kind of nesting, each names its parts
    fn block(
        &mut self,
        steps: &[Step],
        place: &str,
        prefix: Option<&StepId>,
        enclosing: &[Enclosing<'_>],
        output: Option<&Value>,
        output_place: &str,
    ) -> Result<Block> {
        if enclosing.len() >= MAX_DEPTH {
            return Err(Error::TooDeep { place: place.to_owned(), limit: MAX_DEPTH });
        }
        self.tasks += steps.len();
        if self.tasks > crate::MAX_STEPS {
            return Err(Error::TooManySteps { count: self.tasks, limit: crate::MAX_STEPS });
        }
        let path = |id: &StepId| match prefix {
            Some(prefix) => prefix.child(id.as_str()).unwrap_or_else(|_| id.clone()),
            None => id.clone(),
        };
        // The graph rule is core's, checked on the steps' paths so that errors name them.
        let paths: Vec<StepId> = steps.iter().map(|s| path(&s.id)).collect();
        let dependencies: Vec<Vec<StepId>> = steps.iter().map(|s| s.depends_on.iter().map(&path).collect()).collect();
        let fallback_paths: Vec<ErrorPolicy> = steps
            .iter()
            .map(|s| match &s.on_error {
                ErrorPolicy::Fallback(f) => ErrorPolicy::Fallback(path(f)),
                other => other.clone(),
            })
            .collect();
        let graph = StepGraph::check(
            (0..steps.len()).map(|i| StepLinks::new(&paths[i], &dependencies[i], &fallback_paths[i])),
        )?;
        let index: HashMap<&str, usize> = steps.iter().enumerate().map(|(i, s)| (s.id.as_str(), i)).collect();
        let depends_on: Vec<Vec<usize>> = (0..steps.len()).map(|i| graph.dependencies(i).to_vec()).collect();
        let fallbacks: Vec<Option<usize>> = (0..steps.len()).map(|i| graph.fallback(i)).collect();
        let ids: Vec<StepId> = steps.iter().map(|s| s.id.clone()).collect();
        let upstream = Upstream::of(&graph);
        let mut tasks = Vec::with_capacity(steps.len());
        for (i, step) in steps.iter().enumerate() {
            let step_place = format!("{place}[{i}]");
            let resolve = |name: &str| -> bool {
                if let Some(&r) = index.get(name) {
                    return r != i && upstream.contains(i, r);
                }
                // Not in this block: an enclosing block's step upstream of the step holding us.
                enclosing.iter().rev().find_map(|e| {
                    e.ids.iter().position(|id| id.as_str() == name).map(|r| e.upstream.contains(e.holder, r))
                }) == Some(true)
            };
            let enclosing_here: Vec<Enclosing<'_>> = enclosing
                .iter()
                .map(|e| Enclosing { ids: e.ids, upstream: e.upstream, holder: e.holder })
                .chain(std::iter::once(Enclosing { ids: &ids, upstream: &upstream, holder: i }))
                .collect();
            let mark = self.references.len();
            let task =
                self.task(step, &step_place, &path(&step.id), &enclosing_here, depends_on[i].clone(), &fallbacks, i)?;
            for (place, names) in self.references.drain(mark..) {
                if let Some(name) = names.into_iter().find(|name| !resolve(name)) {
                    return Err(Error::NotUpstream { place, step: name });
                }
            }
            tasks.push(task);
        }
        let output = match output {
            Some(value) => {
                let template = self.filter(output_place, value)?;
                for name in template.referenced_steps() {
                    let known = index.contains_key(name.as_str())
                        || enclosing.iter().any(|e| e.ids.iter().any(|id| id.as_str() == name));
                    if !known {
                        return Err(Error::NotUpstream { place: output_place.to_owned(), step: name });
                    }
                }
                Some(template)
            }
            None => None,
        };
        Ok(Block::new(Flow::Graph, tasks, output))
    }

    #[allow(clippy::too_many_arguments)] // reason: a task is compiled from its block's view of it
    fn task(
        &mut self,
        step: &Step,
        place: &str,
        path: &StepId,
        enclosing: &[Enclosing<'_>],
        depends_on: Vec<usize>,
        fallbacks: &[Option<usize>],
        i: usize,
    ) -> Result<Task> {
        let retry = step.retry.clone().unwrap_or_else(|| self.defaults.defaults.retry.clone());
        check_retry(&format!("steps.{path}.retry"), &retry)?;
        let on_error = match (&step.on_error, fallbacks[i]) {
            (ErrorPolicy::Fail, _) => OnError::Fail,
            (ErrorPolicy::Continue, _) => OnError::Continue,
            (ErrorPolicy::Fallback(_), Some(f)) => OnError::Fallback(f),
            (ErrorPolicy::Fallback(f), None) => {
                return Err(baton_core::GraphError::UnknownFallback { step: path.clone(), fallback: f.clone() }.into());
            }
        };
        let condition =
            step.condition.as_deref().map(|c| self.expression(&format!("steps.{path}.if"), c)).transpose()?;
        let action = self.action(step, place, path, enclosing)?;
        // The output filter reads the raw output as `.`; the export filter the output, with
        // `$output` bound too.
        let output = step.output.as_ref().map(|v| self.filter(&format!("steps.{path}.output"), v)).transpose()?;
        let export = step.export.as_ref().map(|v| self.filter(&format!("steps.{path}.export"), v)).transpose()?;
        Ok(Task {
            name: step.id.clone(),
            reference: pointer(place),
            condition,
            input: None,
            output,
            export,
            then: Then::Continue,
            depends_on,
            retry,
            timeout: step.timeout.or(self.defaults.defaults.timeout),
            task_timeout: step.task_timeout,
            on_error,
            action,
        })
    }

    fn action(&mut self, step: &Step, place: &str, path: &StepId, enclosing: &[Enclosing<'_>]) -> Result<Action> {
        let field = |name: &str| format!("steps.{path}.{name}");
        Ok(match &step.action {
            StepAction::Call { target, input, call } => {
                let target = match target {
                    StepTarget::Service { id, alternatives } => {
                        CallTarget::Services(std::iter::once(id.clone()).chain(alternatives.iter().cloned()).collect())
                    }
                    StepTarget::Query(query) => CallTarget::Query(Arc::new(query.clone())),
                };
                let payload = self.template(&field("input"), input)?;
                // The call's parts are templates over the same input, bound and counted alike.
                let shape = match call {
                    None => None,
                    Some(call) => Some(CallTemplate::compile_by(
                        &format!("steps.{path}"),
                        call,
                        !input.is_null(),
                        &mut |place, value| self.template(place, value),
                    )?),
                };
                Action::Call(Call { target, payload, shape })
            }
            StepAction::Set(value) => Action::Set(self.template(&field("set"), value)?),
            StepAction::Do(steps) => {
                Action::Do(Box::new(self.block(steps, &format!("{place}.steps"), Some(path), enclosing, None, "")?))
            }
            StepAction::Switch(cases) => {
                let mut compiled = Vec::with_capacity(cases.len());
                for (c, case) in cases.iter().enumerate() {
                    let name = match &case.name {
                        Some(name) => name.clone(),
                        None => StepId::new(&c.to_string()).expect("an index is a valid segment"),
                    };
                    if compiled.iter().any(|k: &Case| k.name == name) {
                        return Err(baton_core::Error::invalid(field("switch"), &name, "names two cases").into());
                    }
                    let when = case
                        .when
                        .as_deref()
                        .map(|w| self.expression(&format!("{}[{c}].when", field("switch")), w))
                        .transpose()?;
                    let block = self.block(
                        &case.steps,
                        &format!("{place}.switch[{c}].steps"),
                        Some(&path.child(name.as_str())?),
                        enclosing,
                        None,
                        "",
                    )?;
                    compiled.push(Case { name, when, then: CaseAction::Block(block) });
                }
                Action::Switch(baton_core::program::Switch { cases: compiled })
            }
            StepAction::For(spec, steps) => {
                if spec.concurrency > MAX_CONCURRENCY {
                    return Err(baton_core::Error::invalid(
                        field("for.concurrency"),
                        spec.concurrency,
                        format!("the limit is {MAX_CONCURRENCY}"),
                    )
                    .into());
                }
                let items = self.expression(&field("for.in"), &spec.items)?;
                let body = self.with_variables(&field("for"), &[spec.each.as_str(), spec.at.as_str()], |c| {
                    // Iterations run in parallel: each one's tasks sit below its index.
                    c.block(steps, &format!("{place}.steps"), Some(&path.child("each")?), enclosing, None, "")
                })?;
                Action::For(Box::new(ForEach {
                    each: spec.each.clone(),
                    at: spec.at.clone(),
                    items,
                    condition: None,
                    body,
                    concurrency: spec.concurrency as usize,
                    collect: Collect::Array,
                }))
            }
            StepAction::Repeat(spec, steps) => {
                if spec.max_iterations > MAX_ITERATIONS {
                    return Err(baton_core::Error::invalid(
                        field("max_iterations"),
                        spec.max_iterations,
                        format!("the limit is {MAX_ITERATIONS}"),
                    )
                    .into());
                }
                let keyword = if spec.until { "until" } else { "while" };
                let (condition, body) = self.with_variables(&field(keyword), &["index"], |c| {
                    let body = c.block(
                        steps,
                        &format!("{place}.steps"),
                        Some(&path.child("iteration")?),
                        enclosing,
                        None,
                        "",
                    )?;
                    // The condition sees the latest iteration's steps besides the enclosing ones:
                    // only names outside the body are left for the enclosing block to check.
                    let mark = c.references.len();
                    let condition = c.expression(&field(keyword), &spec.condition)?;
                    for (_, names) in &mut c.references[mark..] {
                        names.retain(|name| !steps.iter().any(|s| s.id.as_str() == name));
                    }
                    Ok((condition, body))
                })?;
                Action::Repeat(Box::new(Repeat {
                    condition,
                    until: spec.until,
                    body,
                    max_iterations: spec.max_iterations,
                }))
            }
            StepAction::Fork(fork) => {
                if fork.branches.len() > MAX_BRANCHES {
                    return Err(baton_core::Error::invalid(
                        field("fork.branches"),
                        fork.branches.len(),
                        format!("the limit is {MAX_BRANCHES} branches"),
                    )
                    .into());
                }
                let mut branches: Vec<(StepId, Block)> = Vec::with_capacity(fork.branches.len());
                for (b, branch) in fork.branches.iter().enumerate() {
                    if branches.iter().any(|(name, _)| *name == branch.name) {
                        return Err(baton_core::Error::invalid(
                            field("fork.branches"),
                            &branch.name,
                            "names two branches",
                        )
                        .into());
                    }
                    let block = self.block(
                        &branch.steps,
                        &format!("{place}.fork.branches[{b}].steps"),
                        Some(&path.child(branch.name.as_str())?),
                        enclosing,
                        None,
                        "",
                    )?;
                    branches.push((branch.name.clone(), block));
                }
                Action::Fork(Fork { branches, compete: fork.compete })
            }
            StepAction::Try(steps, catch) => {
                let body =
                    self.block(steps, &format!("{place}.try"), Some(&path.child("try")?), enclosing, None, "")?;
                if let Some(retry) = &catch.retry {
                    check_retry(&field("catch.retry"), retry)?;
                }
                let (when, except_when, catch_body) =
                    self.with_variables(&field("catch.as"), &[catch.variable.as_str()], |c| {
                        let when = catch.when.as_deref().map(|w| c.expression(&field("catch.when"), w)).transpose()?;
                        let except_when = catch
                            .except_when
                            .as_deref()
                            .map(|w| c.expression(&field("catch.except_when"), w))
                            .transpose()?;
                        let body = if catch.steps.is_empty() {
                            None
                        } else {
                            Some(c.block(
                                &catch.steps,
                                &format!("{place}.catch.steps"),
                                Some(&path.child("catch")?),
                                enclosing,
                                None,
                                "",
                            )?)
                        };
                        Ok((when, except_when, body))
                    })?;
                Action::Try(Box::new(Try {
                    body,
                    catch: Catch {
                        filter: ErrorFilter {
                            r#type: catch.errors.kind.as_deref().map(expand_type),
                            status: catch.errors.status,
                            ..ErrorFilter::default()
                        },
                        variable: catch.variable.clone(),
                        when,
                        except_when,
                        retry: catch.retry.clone(),
                        body: catch_body,
                    },
                }))
            }
            StepAction::Raise(raise) => Action::Raise(Box::new(Raise {
                r#type: self.template(&field("raise.type"), &Value::String(expand_type(&raise.kind)))?,
                status: self.template(&field("raise.status"), &raise.status)?,
                title: raise
                    .title
                    .as_ref()
                    .map(|t| self.template(&field("raise.title"), &Value::String(t.clone())))
                    .transpose()?,
                detail: raise
                    .detail
                    .as_ref()
                    .map(|d| self.template(&field("raise.detail"), &Value::String(d.clone())))
                    .transpose()?,
            })),
            StepAction::Wait(WaitSpec::For(duration)) => Action::Wait(Wait::For(*duration)),
            StepAction::Wait(WaitSpec::Until(until)) => {
                Action::Wait(Wait::Until(self.expression(&field("wait.until"), until)?))
            }
            StepAction::Listen(listen) => {
                for signal in &listen.signals {
                    check_signal_name(&field("listen.signals"), signal)?;
                }
                Action::Listen(Listen {
                    signals: listen.signals.clone(),
                    mode: if listen.all { ListenMode::All } else { ListenMode::Any },
                    timeout: listen.timeout,
                })
            }
            StepAction::Emit(event) => {
                Action::Emit(baton_core::program::Emit { event: self.template(&field("emit"), event)? })
            }
            StepAction::Workflow(child) => Action::Run(RunWorkflow {
                name: child.name.clone(),
                version: child.version,
                input: self.template(&field("workflow.input"), &child.input)?,
            }),
        })
    }
}

fn check_retry(place: &str, retry: &baton_core::RetryPolicy) -> Result<()> {
    if retry.max_attempts == 0 {
        return Err(baton_core::Error::invalid(format!("{place}.max_attempts"), 0, "must be at least 1").into());
    }
    if !retry.multiplier.is_finite() || retry.multiplier < 1.0 {
        let reason = "must be a finite number of at least 1";
        return Err(baton_core::Error::invalid(format!("{place}.multiplier"), retry.multiplier, reason).into());
    }
    Ok(())
}

/// Adds `names` to the variables in scope, checking each is a variable name not in scope
/// yet; answers how many were in scope before, to truncate back to.
pub(crate) fn bind_variables(place: &str, names: &[&str], variables: &mut Vec<String>) -> Result<usize> {
    for name in names {
        let valid = name.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !valid {
            return Err(
                baton_core::Error::invalid(place, name, "must be a variable name: letters, digits and '_'").into()
            );
        }
        if variables.iter().any(|v| v == name) {
            return Err(
                baton_core::Error::invalid(place, name, "is already a variable here; choose another name").into()
            );
        }
    }
    let before = variables.len();
    variables.extend(names.iter().map(|n| (*n).to_owned()));
    Ok(before)
}

/// Signal names: 1 to 128 bytes of letters, digits, '.', '_', '-' and ':' (CloudEvent types).
pub(crate) fn check_signal_name(place: &str, name: &str) -> Result<()> {
    let valid = !name.is_empty()
        && name.len() <= 128
        && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | ':' | '/'));
    if valid {
        Ok(())
    } else {
        Err(baton_core::Error::invalid(place, name, "must be 1 to 128 of letters, digits, '.', '_', '-', ':' and '/'")
            .into())
    }
}

/// Which steps run before which: one bit set per step, built in topological order (a step's
/// upstream is its dependencies and theirs). Bits keep the largest definition (10,000 steps)
/// at 12.5 MB and linear work per edge; sets of indices grew quadratically on long chains.
pub(crate) struct Upstream {
    words: usize,
    bits: Vec<u64>,
}

impl Upstream {
    pub(crate) fn of(graph: &StepGraph) -> Self {
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
    pub(crate) fn contains(&self, i: usize, r: usize) -> bool {
        self.bits[i * self.words + r / 64] >> (r % 64) & 1 == 1
    }
}

/// `steps[2].switch[0].steps[1]` as the RFC 6901 pointer `/steps/2/switch/0/steps/1`.
fn pointer(place: &str) -> String {
    let mut out = String::new();
    for part in place.split('.') {
        let (name, indexes) = part.split_once('[').map_or((part, ""), |(n, rest)| (n, rest));
        out.push('/');
        out.push_str(name);
        for index in indexes.split('[').filter(|s| !s.is_empty()) {
            out.push('/');
            out.push_str(index.trim_end_matches(']'));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::CheckedDefinition;
    use serde_json::json;

    fn refused(text: &str, expected: &str) {
        match CheckedDefinition::parse(text) {
            Ok(_) => panic!("{text}: accepted, wanted an error containing {expected:?}"),
            Err(e) => assert!(e.to_string().contains(expected), "{text}\n{e}\nshould contain {expected:?}"),
        }
    }

    const EVERY_CONSTRUCT: &str = r#"
name: every-construct
steps:
  - id: check
    service: inventory
    input: { sku: "${ .input.sku }" }
  - id: route
    depends_on: [check]
    switch:
      - name: express
        when: "${ .steps.check.output.express }"
        steps:
          - { id: ship, service: express, input: "${ .steps.check.output }" }
      - steps:
          - { id: ship, service: ground }
  - id: charge-all
    for: { each: line, in: "${ .input.lines }", concurrency: 4 }
    steps:
      - id: charge
        service: payments
        input: { amount: "${ $line.amount }", n: "${ $index }", sku: "${ .steps.check.output.sku }" }
    depends_on: [check]
  - id: poll
    until: "${ .steps.status.output.done }"
    max_iterations: 10
    steps:
      - { id: status, service: tracker }
      - { id: pause, wait: 2s, depends_on: [status] }
  - id: quotes
    fork:
      compete: true
      branches:
        - { name: dhl, steps: [{ id: quote, service: dhl }] }
        - { name: ups, steps: [{ id: quote, service: ups }] }
  - id: pay
    try:
      - { id: charge, service: payments }
    catch:
      errors: { type: communication, status: 503 }
      as: failure
      retry: { max_attempts: 2 }
      steps:
        - { id: note, set: { why: "${ $failure.detail }" } }
  - id: reject
    if: "${ .input.amount > 1000 }"
    raise: { type: validation, status: 400, title: too much, detail: "amount ${ .input.amount }" }
  - id: approval
    listen: { signal: approve, timeout: 48h }
  - id: later
    wait: { until: "${ .input.ship_at }" }
  - { id: told, emit: { type: order.done, data: "${ .input }" }, export: { last: "${ . }" } }
  - id: child
    workflow: { name: shipping, version: 2, input: { order: "${ .input }" } }
    output: "${ .tracking }"
  - { id: summary, set: "${ $context }", depends_on: [told] }
output:
  shipped: "${ .steps.route.output }"
"#;

    #[test]
    fn every_native_construct_compiles_to_the_program() {
        let checked = CheckedDefinition::parse(EVERY_CONSTRUCT).expect("valid");
        let program = checked.program();
        let keywords: Vec<&str> = program.root.tasks.iter().map(|t| t.action.keyword()).collect();
        assert_eq!(
            keywords,
            ["call", "switch", "for", "until", "fork", "try", "raise", "listen", "wait", "emit", "run", "set"]
        );
        assert_eq!(program.root.tasks[1].reference, "/steps/1");
        let Action::For(each) = &program.root.tasks[2].action else { panic!("a for") };
        assert_eq!((each.each.as_str(), each.at.as_str(), each.concurrency), ("line", "index", 4));
        assert_eq!(each.body.tasks[0].reference, "/steps/2/steps/0");
        assert!(program.root.tasks[6].condition.is_some());
        // Canonical form round trips.
        let again = CheckedDefinition::from_body(checked.canonical()).expect("the canonical form is valid");
        assert_eq!(again.content_hash(), checked.content_hash());
    }

    #[test]
    fn every_example_of_the_format_document_is_valid() {
        let doc = include_str!("../../../docs/workflow-format.md");
        let mut checked = 0;
        for block in doc.split("```yaml\n").skip(1) {
            let yaml = block.split("```").next().unwrap_or_default();
            if let Err(e) = CheckedDefinition::parse(yaml) {
                panic!("an example of docs/workflow-format.md does not check: {e}\n{yaml}");
            }
            checked += 1;
        }
        assert!(checked >= 11, "only {checked} examples found");
    }

    #[test]
    fn control_flow_mistakes_are_placed() {
        refused(
            "name: w\nsteps:\n  - {id: a, service: s, on_error: fallback, fallback: b}\n  - {id: b, service: s, on_error: fallback, fallback: a}\n",
            "fallbacks form a loop: a -> b -> a",
        );
        refused(
            "name: w\nsteps:\n  - {id: a, service: s, on_error: fallback, fallback: a}\n",
            r#"step "a" falls back to itself"#,
        );
        refused(
            "name: w\nsteps:\n  - {id: a, while: \"${ true }\", steps: [{id: b, service: s}]}\n",
            "while needs max_iterations, its bound",
        );
        refused(
            "name: w\nsteps:\n  - {id: a, for: {in: \"${ .input }\"}, steps: [{id: b, service: s, input: \"${ $nope }\"}]}\n",
            "uses undefined $nope",
        );
        refused(
            "name: w\nsteps:\n  - {id: a, for: {each: input, in: \"${ .input }\"}, steps: [{id: b, service: s}]}\n",
            "is already a variable here",
        );
        refused(
            "name: w\nsteps:\n  - {id: a, steps: [{id: b, service: s}, {id: b, service: s}]}\n",
            r#"step "a/b" appears twice"#,
        );
        refused(
            "name: w\nsteps:\n  - {id: a, steps: [{id: b, service: s, depends_on: [c]}]}\n",
            r#"step "a/b" depends on unknown step "a/c""#,
        );
        refused(
            "name: w\nsteps:\n  - {id: a, switch: [{steps: []}, {when: \"${ true }\", steps: []}]}\n",
            "must come last",
        );
        refused("name: w\nsteps:\n  - {id: a, try: [{id: b, service: s}]}\n", "try needs catch");
        refused("name: w\nsteps:\n  - {id: a, service: s, set: 1}\n", "set service or set, not both");
        refused("name: w\nsteps:\n  - {id: a}\n", "set one of service, query");
        refused("name: w\nsteps:\n  - {id: a, wait: 2s, input: {}}\n", "steps.a.input");
        refused("name: w\nsteps:\n  - {id: a, listen: {}}\n", "name a signal");
        // A call's shape goes with a call, reads what its input may read, counts its jq.
        refused("name: w\nsteps:\n  - {id: a, set: 1, http: {method: GET}}\n", "steps.a.http");
        refused(
            "name: w\nsteps:\n  - {id: a, for: {in: \"${ .input }\"}, steps: [{id: b, service: s, http: {path: \"/${ $nope }\"}}]}\n",
            "uses undefined $nope",
        );
        refused(
            "name: w\nsteps:\n  - {id: a, steps: [{id: b, service: s, grpc: {metadata: {x-k: \"${ .steps.c.output }\"}}}]}\n  - {id: c, service: s}\n",
            r#"steps.a/b.grpc.metadata.x-k refers to step "c", which is not upstream"#,
        );
        let many: String = (0..MAX_JQ_EXPRESSIONS).map(|i| format!("q{i}: \"${{ .input.n + {i} }}\", ")).collect();
        refused(
            &format!(
                "name: w\nsteps:\n  - {{id: a, service: s, input: \"${{ .input | length }}\", http: {{query: {{{many}}}}}}}\n"
            ),
            "expressions",
        );
        refused("name: w\nsteps:\n  - {id: a, listen: {signal: \"a b\"}}\n", "must be 1 to 128");
        // An inner step reads an outer step that is not upstream of the block holding it.
        refused(
            "name: w\nsteps:\n  - {id: a, steps: [{id: b, service: s, input: \"${ .steps.c.output }\"}]}\n  - {id: c, service: s}\n",
            r#"steps.a/b.input refers to step "c", which is not upstream"#,
        );
        // An outer step cannot read inside a nested block.
        refused(
            "name: w\nsteps:\n  - {id: a, steps: [{id: b, service: s}]}\n  - {id: c, service: s, depends_on: [a], input: \"${ .steps.b.output }\"}\n",
            r#"steps.c.input refers to step "b", which is not upstream"#,
        );
        // Nesting 1,000 deep is refused, by the parser's recursion limit or by ours.
        let mut deep = String::from("{\"id\": \"x\", \"service\": \"s\"}");
        for i in 0..1000 {
            deep = format!("{{\"id\": \"n{i}\", \"steps\": [{deep}]}}");
        }
        let text = format!("{{\"name\": \"w\", \"steps\": [{deep}]}}");
        let err = CheckedDefinition::parse(&text).unwrap_err().to_string();
        assert!(err.contains("recursion limit") || err.contains("nested too deep"), "{err}");
        let mut deep = String::from("{\"id\": \"x\", \"service\": \"s\"}");
        for i in 0..MAX_DEPTH {
            deep = format!("{{\"id\": \"n{i}\", \"steps\": [{deep}]}}");
        }
        let err =
            CheckedDefinition::parse(&format!("{{\"name\": \"w\", \"steps\": [{deep}]}}")).unwrap_err().to_string();
        assert!(err.contains("nested too deep, the limit is 64 levels") || err.contains("recursion limit"), "{err}");
    }

    #[test]
    fn a_call_in_a_loop_is_shaped_with_the_loops_variables() {
        let checked = CheckedDefinition::parse(
            "name: w\nsteps:\n  - id: each\n    for: {each: sku, in: \"${ .input.skus }\"}\n    steps:\n      - id: get\n        service: s\n        http: {method: GET, path: \"/items/${ $sku }\", query: {at: \"${ $index }\"}}\n",
        )
        .unwrap();
        let Action::For(each) = &checked.program().root.tasks[0].action else { panic!("a for") };
        let Action::Call(call) = &each.body.tasks[0].action else { panic!("a call") };
        let shape = call.shape.as_ref().expect("shaped");
        let mut values = vec![Value::Null; 6];
        values.extend([json!("a/b"), json!(2)]);
        let request = shape.render_vars(&json!({}), &values).unwrap();
        let baton_core::CallRequest::Http { path_and_query, .. } = request else { panic!("an HTTP call") };
        assert_eq!(path_and_query, "/items/a%2Fb?at=2");
    }

    #[test]
    fn places_become_pointers() {
        assert_eq!(pointer("steps[2]"), "/steps/2");
        assert_eq!(pointer("steps[2].switch[0].steps[1]"), "/steps/2/switch/0/steps/1");
        assert_eq!(pointer("steps[0].fork.branches[1].steps[0]"), "/steps/0/fork/branches/1/steps/0");
    }
}
