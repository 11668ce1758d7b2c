//! The interpreter: runs a [`Program`] — blocks of tasks under a graph or a sequence flow,
//! control flow between them — calling services for `call` tasks and asking the [`Host`] for
//! signals, child executions and events.
//!
//! One run is one tokio task. Its state is an arena of nodes: a node per live block instance
//! (the root, a loop iteration, a switch case, a fork branch, a try body) and per live task
//! instance. Tasks whose action waits on the outside world (a call, a timer, a signal, a child,
//! an emit) are *leaves*: futures the run polls itself in a `FuturesUnordered`. Everything else
//! (set, switch, raise, the bookkeeping of loops, forks and tries) is settled inline. When a
//! node finishes it tells its parent, which may start more tasks or finish in turn.
//!
//! Every task instance has a path; its completion is journaled (`TaskSucceeded`,
//! `TaskFailed`, `TaskSkipped`) and a resumed run takes a settled path's result from the
//! [`History`] instead of running it again. Events of tasks that call nothing are handed to the
//! sink without waiting for them; before a leaf acts on the outside world the run waits until
//! every event it handed over is kept, so nothing outside ever sees a result the journal could
//! lose.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use baton_core::program::{
    Action, Block, CallTarget, Case, CaseAction, Collect, Flow, ForEach, ListenMode, OnError, Program, Repeat, Task,
    Then, Wait,
};
use baton_core::{
    CallRequest, CallTemplate, EvalError, Evaluator, EventKind, ExecutionId, History, Outcome, Problem, Recorded,
    ServiceId, Settled, StepId, Template, Timestamp, TraceContext,
};
use futures_util::FutureExt as _;
use futures_util::future::{AbortHandle, Abortable};
use futures_util::stream::{FuturesUnordered, StreamExt};
use serde_json::{Map, Value, json};

use crate::host::{Host, IdleHook};
use crate::invoker::{CallTrace, Invoker};
use crate::request;
use crate::run::{CallSpec, Control, Shared, TaskError, run_call};

/// The most items a `for` iterates over.
pub const MAX_ITEMS: usize = 100_000;
/// The most tasks one sequence block runs (`then` jumps can loop).
pub const MAX_SEQUENCE_STEPS: u32 = 100_000;

type Id = usize;
type Scope = Arc<[Value]>;

/// What a run starts from.
#[derive(Debug, Clone)]
pub struct Start {
    /// The execution.
    pub execution: ExecutionId,
    /// The program.
    pub program: Arc<Program>,
    /// The execution's input.
    pub input: Value,
    /// What the journal says already happened (empty for a new run).
    pub history: History,
    /// The `$workflow` descriptor (`id`, `name`, `version`, `started_at`) but for its `input`,
    /// which the run adds from `input` when an expression reads it, so that a waiting run
    /// holds no second copy of the input.
    pub workflow: Value,
    /// Told when the run has nothing left to do but wait.
    pub idle: Option<IdleHook>,
    /// The trace context of the caller that started the execution, whose trace its calls
    /// continue; `None`: a trace of its own.
    pub trace: Option<TraceContext>,
}

/// What a leaf in flight waits on, for telling when the run only waits.
#[derive(Debug, Clone, Copy, PartialEq)]
enum LeafKind {
    /// Work that ends on its own soon: a call, an emit, a backoff.
    Busy,
    /// A timer due at this time (a `wait`, a `listen` with a timeout).
    Timer(Timestamp),
    /// A signal or a child, with no time.
    Wait,
}

/// A finished leaf: the node it belongs to, the node's generation (a reused slot is not the
/// same node), and how it ended.
struct LeafDone {
    node: Id,
    generation: u64,
    result: Result<LeafOutput, Problem>,
}

struct LeafOutput {
    output: Value,
    /// The context an export filter computed.
    context: Option<Value>,
}

type LeafFuture<'a> = Pin<Box<dyn Future<Output = LeafDone> + Send + 'a>>;

/// How a task that did not fail ended.
enum Done {
    /// With an output.
    Output(Value),
    /// Skipped: its condition was false.
    Skipped,
}

struct Node<'p> {
    parent: Option<Id>,
    path: Option<StepId>,
    kind: Kind<'p>,
    aborts: Vec<AbortHandle>,
    /// The latest journal sequence among results replayed inside this node, for a compete
    /// fork to pick the branch that really finished first.
    replayed: Option<u64>,
    /// What its leaf in flight waits on, if it has one.
    leaf: Option<LeafKind>,
}

enum Kind<'p> {
    Block(BlockRun<'p>),
    Task(TaskRun<'p>),
}

struct BlockRun<'p> {
    block: &'p Block,
    scope: Scope,
    /// The block's input (sequence flow).
    input: Value,
    /// Outputs of the enclosing graph blocks' steps, by name (graph flow).
    outer: Arc<Map<String, Value>>,
    /// Graph: unfinished dependencies per task.
    waiting: Vec<usize>,
    /// Graph: outputs of finished tasks.
    outputs: Vec<Option<Value>>,
    /// Graph: tasks skipped because something they need failed.
    skipped: Vec<bool>,
    /// Graph: which primary a running fallback stands in for.
    standing_in: HashMap<usize, usize>,
    /// Graph: tasks still to finish before the block is done.
    unfinished: usize,
    /// Sequence: times each task ran (a `then` may jump back).
    visits: Vec<u32>,
    /// Sequence: tasks run in all.
    steps: u32,
    /// Live task nodes.
    children: Vec<Id>,
}

struct TaskRun<'p> {
    task: &'p Task,
    /// Its index in its block.
    index: usize,
    /// The raw input (the graph context, or the previous task's output), until the task
    /// starts; afterwards only a skipped task has it, to pass on.
    raw: Value,
    /// The transformed input: `.` and `$input` for its action.
    input: Value,
    scope: Scope,
    /// Where a sequence goes next (a switch case may redirect it).
    then: Then,
    action: ActionRun,
}

enum ActionRun {
    Leaf,
    /// A nested block: `do`, the chosen case of a `switch`.
    Block(Id),
    Each(EachRun),
    Repeat(RepeatRun),
    Fork(ForkRun),
    Try(TryRun),
}

struct EachRun {
    items: Vec<Value>,
    next: usize,
    results: Vec<Option<Value>>,
    /// Thread: the value the next iteration gets.
    current: Value,
    /// Live iterations: (block node, item index).
    running: Vec<(Id, usize)>,
    outer: Arc<Map<String, Value>>,
}

struct RepeatRun {
    iteration: u32,
    child: Option<Id>,
    /// The latest iteration's view: its graph context, for the condition.
    last: Value,
    outer: Arc<Map<String, Value>>,
}

struct ForkRun {
    children: Vec<Id>,
    results: Vec<Option<Value>>,
    left: usize,
}

struct TryRun {
    attempt: u32,
    child: Id,
    catching: bool,
    outer: Arc<Map<String, Value>>,
}

/// The interpreter's state for one run.
struct Interp<'a, I> {
    shared: &'a Shared<I>,
    host: &'a dyn Host,
    program: &'a Program,
    history: History,
    execution: ExecutionId,
    /// The execution's input, `.input` in graph contexts.
    input: Arc<Value>,
    /// Shared with every leaf waiting on a call, which reads them only once it is answered:
    /// a copy each would cost a JSON object apiece for as long as the run waits. `workflow`
    /// is without its `input` (see [`workflow_variable`]).
    workflow: Arc<Value>,
    runtime: Arc<Value>,
    context: Arc<Value>,
    nodes: Vec<Option<Node<'a>>>,
    generations: Vec<u64>,
    free: Vec<Id>,
    /// Task nodes to start.
    ready: VecDeque<Id>,
    /// Leaves waiting for the journal and the run's in-flight limit.
    waiting_leaves: VecDeque<Abortable<LeafFuture<'a>>>,
    running: FuturesUnordered<Abortable<LeafFuture<'a>>>,
    /// Events handed to the sink that no leaf has waited for yet.
    pending: Vec<Recorded>,
    /// How the run ended, once it has.
    outcome: Option<Outcome>,
    /// Leaves in flight that end on their own (calls, emits, backoffs).
    busy: usize,
    /// Timers in flight, by due time.
    timers: std::collections::BTreeMap<Timestamp, usize>,
    idle: Option<IdleHook>,
    /// Counts what happened in the run (a task started, a leaf ended): an idle report carries
    /// it, and a suspension asked with an older count is refused.
    activity: u64,
    /// The activity count the hook was last told of, so it hears of each idle spell once.
    told_idle: Option<u64>,
    /// [`Shared::woken`] when the run last said it only waits.
    woken_at_idle: u64,
}

/// The `$runtime` descriptor, the same for every run of the process: built once and shared.
fn runtime_descriptor() -> Arc<Value> {
    static RUNTIME: std::sync::LazyLock<Arc<Value>> =
        std::sync::LazyLock::new(|| Arc::new(json!({"name": "baton", "version": env!("CARGO_PKG_VERSION")})));
    Arc::clone(&RUNTIME)
}

/// `$workflow`: its descriptor with the execution's `input`, put together for an evaluation
/// rather than kept whole for the run.
fn workflow_variable(descriptor: &Value, input: &Value) -> Value {
    let mut workflow = descriptor.clone();
    if let Value::Object(fields) = &mut workflow {
        fields.insert("input".to_owned(), input.clone());
    }
    workflow
}

/// Runs `start.program` to its outcome.
pub(crate) async fn interpret<I: Invoker>(shared: &Shared<I>, host: &dyn Host, start: Start, limit: usize) -> Outcome {
    let program = Arc::clone(&start.program);
    let mut interp = Interp {
        shared,
        host,
        program: &program,
        context: Arc::new(start.history.context.clone().unwrap_or_else(|| json!({}))),
        history: start.history,
        execution: start.execution,
        input: Arc::new(start.input),
        workflow: Arc::new(start.workflow),
        runtime: runtime_descriptor(),
        nodes: Vec::new(),
        generations: Vec::new(),
        free: Vec::new(),
        ready: VecDeque::new(),
        waiting_leaves: VecDeque::new(),
        running: FuturesUnordered::new(),
        pending: Vec::new(),
        outcome: None,
        busy: 0,
        timers: std::collections::BTreeMap::new(),
        idle: start.idle,
        activity: 0,
        told_idle: None,
        woken_at_idle: 0,
    };
    interp.run(limit).await
}

impl<'a, I: Invoker> Interp<'a, I> {
    async fn run(&mut self, limit: usize) -> Outcome {
        let root_input = match &self.program.input {
            Some(filter) => {
                match self.eval(filter, &self.input.clone(), None, &self.input.clone(), Value::Null).await {
                    Ok(value) => value,
                    Err(problem) => return self.interrupted().unwrap_or(Outcome::Failed(problem.at("/input/from"))),
                }
            }
            None => (*self.input).clone(),
        };
        let root = self.new_block(None, None, &self.program.root, Arc::from([]), root_input, Arc::default());
        self.start_block(root).await;
        let mut control = self.shared.control.clone();
        let mut paused = false;
        // The last conditional suspension refused, so each is answered once.
        let mut refused_mark = None;
        loop {
            match &*control.borrow_and_update() {
                Control::Cancelled(reason) => return Outcome::Cancelled(reason.clone()),
                Control::Suspended => return Outcome::Cancelled("suspended".to_owned()),
                Control::SuspendIfIdle(mark) if refused_mark != Some(*mark) => {
                    let woken = self.shared.woken.load(std::sync::atomic::Ordering::Acquire);
                    if *mark == self.activity && self.is_idle() && woken == self.woken_at_idle {
                        // Nothing moved since it said it only waits: the host parks it.
                        return Outcome::Cancelled("suspended".to_owned());
                    }
                    refused_mark = Some(*mark);
                    self.shared.refused.notify_one();
                }
                Control::Paused if !paused => {
                    paused = true;
                    self.shared.emit(EventKind::Paused);
                }
                Control::Running if paused => {
                    paused = false;
                    self.shared.emit(EventKind::Resumed);
                }
                _ => {}
            }
            if !paused {
                let mut started: u32 = 0;
                while let Some(id) = self.ready.pop_front() {
                    if self.outcome.is_some() {
                        break;
                    }
                    self.shared.tick();
                    self.start_task(id).await;
                    started += 1;
                    // A long run of inline work yields now and then, and looks at the control cell.
                    if started.is_multiple_of(256) {
                        tokio::task::yield_now().await;
                        break;
                    }
                }
            }
            if let Some(outcome) = self.outcome.take() {
                return outcome;
            }
            if !paused && !self.waiting_leaves.is_empty() && self.running.len() < limit {
                // Before anything acts outside, what the run handed to the journal is kept.
                for kept in std::mem::take(&mut self.pending) {
                    if let Err(refusal) = kept.await {
                        return Outcome::Failed(Problem::runtime(format!("the journal refused an event: {refusal}")));
                    }
                }
                while self.running.len() < limit
                    && let Some(leaf) = self.waiting_leaves.pop_front()
                {
                    self.running.push(leaf);
                }
            }
            // Paused with nothing in flight, only a change of control moves the run.
            if self.running.is_empty() && (paused || (self.ready.is_empty() && self.waiting_leaves.is_empty())) {
                if !paused {
                    return Outcome::Failed(Problem::runtime("the run has nothing left to do but did not end"));
                }
                if control.changed().await.is_err() {
                    return Outcome::Cancelled("the run's handle was dropped".to_owned());
                }
                continue;
            }
            if !self.ready.is_empty() && !paused {
                continue;
            }
            // New leaves are polled once before the run says it only waits: a listen or a child
            // has asked the host by then, so the host hears the ask before the idleness.
            if !self.running.is_empty()
                && let Some(done) = self.running.next().now_or_never()
            {
                self.shared.tick();
                if let Some(Ok(done)) = done {
                    self.leaf_done(done).await;
                }
                if let Some(outcome) = self.outcome.take() {
                    return outcome;
                }
                continue;
            }
            self.tell_idle();
            tokio::select! {
                biased;
                done = self.running.next(), if !self.running.is_empty() => {
                    self.shared.tick();
                    if let Some(Ok(done)) = done {
                        self.leaf_done(done).await;
                    }
                }
                changed = control.changed() => {
                    if changed.is_err() {
                        return Outcome::Cancelled("the run's handle was dropped".to_owned());
                    }
                }
            }
            if let Some(outcome) = self.outcome.take() {
                return outcome;
            }
        }
    }

    // ---- the arena ----

    fn insert(&mut self, node: Node<'a>) -> Id {
        match self.free.pop() {
            Some(id) => {
                self.generations[id] += 1;
                self.nodes[id] = Some(node);
                id
            }
            None => {
                self.nodes.push(Some(node));
                self.generations.push(0);
                self.nodes.len() - 1
            }
        }
    }

    fn node(&self, id: Id) -> &Node<'a> {
        self.nodes[id].as_ref().expect("a live node")
    }

    fn node_mut(&mut self, id: Id) -> &mut Node<'a> {
        self.nodes[id].as_mut().expect("a live node")
    }

    fn live(&self, id: Id) -> bool {
        self.nodes.get(id).is_some_and(Option::is_some)
    }

    fn block_mut(&mut self, id: Id) -> &mut BlockRun<'a> {
        match &mut self.node_mut(id).kind {
            Kind::Block(block) => block,
            Kind::Task(_) => unreachable!("node {id} is a block"),
        }
    }

    fn task(&self, id: Id) -> &TaskRun<'a> {
        match &self.node(id).kind {
            Kind::Task(task) => task,
            Kind::Block(_) => unreachable!("node {id} is a task"),
        }
    }

    fn task_mut(&mut self, id: Id) -> &mut TaskRun<'a> {
        match &mut self.node_mut(id).kind {
            Kind::Task(task) => task,
            Kind::Block(_) => unreachable!("node {id} is a task"),
        }
    }

    /// Frees `id` and everything below it, abandoning their leaves.
    fn remove(&mut self, id: Id) {
        let Some(node) = self.nodes[id].take() else { return };
        self.free.push(id);
        if node.leaf.is_some() {
            self.leaf_gone(node.leaf);
        }
        for abort in node.aborts {
            abort.abort();
        }
        let children: Vec<Id> = match node.kind {
            Kind::Block(block) => block.children,
            Kind::Task(task) => match task.action {
                ActionRun::Leaf => Vec::new(),
                ActionRun::Block(child) => vec![child],
                ActionRun::Each(each) => each.running.iter().map(|(c, _)| *c).collect(),
                ActionRun::Repeat(repeat) => repeat.child.into_iter().collect(),
                ActionRun::Fork(fork) => fork.children,
                ActionRun::Try(t) => vec![t.child],
            },
        };
        for child in children {
            self.remove(child);
        }
    }

    /// Queues `leaf` as node `id`'s: removing the node abandons it, started or not.
    fn push_leaf(&mut self, id: Id, leaf: LeafFuture<'a>, kind: LeafKind) {
        let (handle, registration) = AbortHandle::new_pair();
        let node = self.node_mut(id);
        node.aborts.push(handle);
        node.leaf = Some(kind);
        match kind {
            LeafKind::Busy => self.busy += 1,
            LeafKind::Timer(due) => *self.timers.entry(due).or_default() += 1,
            LeafKind::Wait => {}
        }
        self.waiting_leaves.push_back(Abortable::new(leaf, registration));
    }

    /// Forgets a leaf, done or abandoned.
    fn leaf_gone(&mut self, kind: Option<LeafKind>) {
        match kind {
            Some(LeafKind::Busy) => self.busy -= 1,
            Some(LeafKind::Timer(due)) => {
                if let Some(count) = self.timers.get_mut(&due) {
                    *count -= 1;
                    if *count == 0 {
                        self.timers.remove(&due);
                    }
                }
            }
            Some(LeafKind::Wait) | None => {}
        }
        self.activity += 1;
    }

    /// Whether nothing is left but waits: no task to start, no leaf that ends on its own.
    fn is_idle(&self) -> bool {
        self.busy == 0 && self.ready.is_empty() && self.waiting_leaves.is_empty() && !self.running.is_empty()
    }

    /// Tells the hook when nothing is left but waits, once per idle spell, with the activity
    /// count a suspension must match.
    fn tell_idle(&mut self) {
        if !self.is_idle() || self.told_idle == Some(self.activity) {
            return;
        }
        if let Some(hook) = &self.idle {
            self.woken_at_idle = self.shared.woken.load(std::sync::atomic::Ordering::Acquire);
            (hook.0)(self.timers.keys().next().copied(), self.activity);
            self.told_idle = Some(self.activity);
        }
    }

    // ---- journal ----

    /// Hands over an event of a task that calls nothing; leaves wait for it before acting.
    fn record(&mut self, kind: EventKind) {
        let kept = self.shared.record(kind);
        self.pending.push(kept);
    }

    // ---- expressions ----

    /// A call's rendered payload, when it is within [`crate::Config::max_input_bytes`]: it can
    /// copy whole outputs of earlier tasks, and goes to services and workers in bounded
    /// messages. Past the bound the task fails before any call, not retried.
    fn within_input_bound(&self, payload: Value) -> Result<Value, Problem> {
        let Some(limit) = self.shared.max_input_bytes else { return Ok(payload) };
        let size = baton_core::bounds::json_size(&payload);
        if size <= limit {
            return Ok(payload);
        }
        let detail = format!("input_too_large: input is {size} bytes of JSON, the limit is {limit}");
        Err(Problem::standard("validation", detail).with_title("input_too_large"))
    }

    /// Renders `template` against `dot`, binding the globals (with `$input` = `input`) and the
    /// scope's variables: plain paths at once, other expressions on the configured evaluator
    /// (bounded), given up when the run is cancelled. The future borrows nothing of the run.
    fn eval(
        &self,
        template: &'a Template,
        dot: &Value,
        task: Option<&Task>,
        input: &Value,
        output: Value,
    ) -> impl Future<Output = Result<Value, Problem>> + Send + use<'a, I> {
        self.eval_scoped(template, dot, task, input, output, &[])
    }

    fn eval_scoped(
        &self,
        template: &'a Template,
        dot: &Value,
        task: Option<&Task>,
        input: &Value,
        output: Value,
        scope: &[Value],
    ) -> impl Future<Output = Result<Value, Problem>> + Send + use<'a, I> {
        let values =
            if template.needs_variables() { self.variable_values(task, input, output, scope) } else { Vec::new() };
        evaluate(template, dot, values, &self.shared.evaluator, &self.shared.control)
    }

    /// Renders a call's shape (path, query, headers; gRPC metadata) against `dot` as
    /// [`Interp::eval_scoped`] renders a template: the same variables, every expression of its
    /// parts that needs jq in one evaluation on the configured evaluator, given up when the
    /// run is cancelled.
    fn eval_call(
        &self,
        shape: &'a CallTemplate,
        dot: &Value,
        task: &Task,
        scope: &[Value],
    ) -> impl Future<Output = Result<CallRequest, Problem>> + Send + use<'a, I> {
        let values = if shape.needs_variables() {
            self.variable_values(Some(task), dot, Value::Null, scope)
        } else {
            Vec::new()
        };
        let ready = (!shape.uses_jaq()).then(|| shape.render_vars(dot, &values).map_err(expression_problem));
        let job =
            ready.is_none().then(|| (dot.clone(), Arc::clone(&self.shared.evaluator), self.shared.control.clone()));
        async move {
            if let Some(ready) = ready {
                return ready;
            }
            let (dot, evaluator, mut control) = job.expect("either rendered or to evaluate");
            tokio::select! {
                rendered = shape.render_bounded(&dot, &values, &*evaluator) => rendered.map_err(expression_problem),
                () = cancelled(&mut control) => Err(Problem::runtime("the run was cancelled while an expression ran")),
            }
        }
    }

    /// The values of the variables an expression may read, in [`GLOBAL_VARIABLES`] order and
    /// then the scope's.
    ///
    /// [`GLOBAL_VARIABLES`]: baton_core::program::GLOBAL_VARIABLES
    fn variable_values(&self, task: Option<&Task>, input: &Value, output: Value, scope: &[Value]) -> Vec<Value> {
        let task = task.map_or(Value::Null, |t| json!({"name": t.name.as_str(), "reference": t.reference}));
        let mut values = Vec::with_capacity(6 + scope.len());
        values.extend([
            input.clone(),
            (*self.context).clone(),
            workflow_variable(&self.workflow, &self.input),
            task,
            output,
            (*self.runtime).clone(),
        ]);
        values.extend(scope.iter().cloned());
        values
    }

    // ---- blocks ----

    fn new_block(
        &mut self,
        parent: Option<Id>,
        prefix: Option<StepId>,
        block: &'a Block,
        scope: Scope,
        input: Value,
        outer: Arc<Map<String, Value>>,
    ) -> Id {
        let n = block.tasks.len();
        let run = BlockRun {
            block,
            scope,
            input,
            outer,
            waiting: block.tasks.iter().map(|t| t.depends_on.len()).collect(),
            outputs: vec![None; n],
            skipped: vec![false; n],
            standing_in: HashMap::new(),
            unfinished: (0..n).filter(|&i| !block.fallback_only.get(i).copied().unwrap_or(false)).count(),
            visits: vec![0; n],
            steps: 0,
            children: Vec::new(),
        };
        self.insert(Node {
            parent,
            path: prefix,
            kind: Kind::Block(run),
            aborts: Vec::new(),
            replayed: None,
            leaf: None,
        })
    }

    async fn start_block(&mut self, id: Id) {
        let (flow, n) = match &self.node(id).kind {
            Kind::Block(b) => (b.block.flow, b.block.tasks.len()),
            Kind::Task(_) => unreachable!("a block"),
        };
        if n == 0 {
            let input = self.block_mut(id).input.clone();
            self.block_done(id, Ok(input)).await;
            return;
        }
        match flow {
            Flow::Sequence => {
                let input = self.block_mut(id).input.clone();
                self.spawn_task(id, 0, input);
            }
            Flow::Graph => {
                let ready: Vec<usize> = {
                    let b = self.block_mut(id);
                    (0..n).filter(|&i| b.waiting[i] == 0 && !b.block.fallback_only[i]).collect()
                };
                for i in ready {
                    let raw = self.graph_context(id, i);
                    self.spawn_task(id, i, raw);
                }
            }
        }
    }

    /// The graph context task `i` of block `id` reads: the execution's input and the outputs
    /// of the steps its expressions name.
    fn graph_context(&self, id: Id, i: usize) -> Value {
        let Kind::Block(b) = &self.node(id).kind else { unreachable!("a block") };
        let mut steps = Map::new();
        for name in &b.block.outer_reads[i] {
            if let Some(output) = b.outer.get(name) {
                steps.insert(name.clone(), json!({ "output": output }));
            }
        }
        for &r in &b.block.reads[i] {
            if let Some(output) = &b.outputs[r] {
                steps.insert(b.block.tasks[r].name.to_string(), json!({ "output": output }));
            }
        }
        json!({"input": *self.input, "steps": steps})
    }

    /// What blocks nested in task `i` of graph block `id` see of the enclosing steps.
    fn nested_outer(&self, id: Id) -> Arc<Map<String, Value>> {
        let Kind::Block(b) = &self.node(id).kind else { unreachable!("a block") };
        if b.block.flow == Flow::Sequence {
            return Arc::clone(&b.outer);
        }
        let mut outer = (*b.outer).clone();
        for (r, output) in b.outputs.iter().enumerate() {
            if let Some(output) = output {
                outer.insert(b.block.tasks[r].name.to_string(), output.clone());
            }
        }
        Arc::new(outer)
    }

    /// Creates the node of task `i` of block `id` with raw input `raw` and queues it.
    fn spawn_task(&mut self, block: Id, i: usize, raw: Value) {
        let (task, scope, visit) = {
            let b = self.block_mut(block);
            b.visits[i] += 1;
            (&b.block.tasks[i], Arc::clone(&b.scope), b.visits[i])
        };
        // A task a `then` jumps back to runs again under a path of its own: `name@2`, ...
        let name = if visit > 1 { format!("{}@{visit}", task.name) } else { task.name.to_string() };
        let path = match (&self.node(block).path, visit) {
            (None, 1) => Ok(task.name.clone()),
            (None, _) => StepId::new(&name),
            (Some(prefix), _) => prefix.child(&name),
        }
        .unwrap_or_else(|_| task.name.clone());
        let run = TaskRun { task, index: i, raw, input: Value::Null, scope, then: task.then, action: ActionRun::Leaf };
        let id = self.insert(Node {
            parent: Some(block),
            path: Some(path),
            kind: Kind::Task(run),
            aborts: Vec::new(),
            replayed: None,
            leaf: None,
        });
        self.block_mut(block).children.push(id);
        self.ready.push_back(id);
    }

    fn block_done(&mut self, id: Id, result: Result<Value, Problem>) -> Pin<Box<dyn Future<Output = ()> + Send + '_>> {
        Box::pin(async move {
            let node = self.node(id);
            let parent = node.parent;
            let replayed = node.replayed;
            // A `while`/`until` reads the iteration's steps in its condition: hand them over.
            if let (Some(parent), Kind::Block(b)) = (parent, &self.node(id).kind)
                && let Some(Kind::Task(TaskRun { action: ActionRun::Repeat(_), .. })) =
                    self.nodes[parent].as_ref().map(|n| &n.kind)
            {
                let view = match b.block.flow {
                    Flow::Graph => {
                        let mut steps = Map::new();
                        for (name, output) in b.outer.iter() {
                            steps.insert(name.clone(), json!({ "output": output }));
                        }
                        for (r, output) in b.outputs.iter().enumerate() {
                            if let Some(output) = output {
                                steps.insert(b.block.tasks[r].name.to_string(), json!({ "output": output }));
                            }
                        }
                        json!({"input": *self.input, "steps": steps})
                    }
                    Flow::Sequence => result.as_ref().cloned().unwrap_or(Value::Null),
                };
                if let Some(Node { kind: Kind::Task(TaskRun { action: ActionRun::Repeat(run), .. }), .. }) =
                    self.nodes[parent].as_mut()
                {
                    run.last = view;
                }
            }
            let result = match (result, &self.node(id).kind) {
                (Ok(value), Kind::Block(b)) if b.block.flow == Flow::Graph && !b.block.tasks.is_empty() => {
                    match &b.block.output {
                        Some(template) => {
                            let mut steps = Map::new();
                            for (name, output) in b.outer.iter() {
                                steps.insert(name.clone(), json!({ "output": output }));
                            }
                            for (r, output) in b.outputs.iter().enumerate() {
                                if let Some(output) = output {
                                    steps.insert(b.block.tasks[r].name.to_string(), json!({ "output": output }));
                                }
                            }
                            let context = json!({"input": *self.input, "steps": steps});
                            let scope = Arc::clone(&b.scope);
                            self.eval_scoped(template, &context, None, &self.input.clone(), Value::Null, &scope).await
                        }
                        None => Ok(b.outputs.last().cloned().flatten().unwrap_or(value)),
                    }
                }
                (result, _) => result,
            };
            self.remove(id);
            match parent {
                Some(parent) => {
                    if let Some(seq) = replayed {
                        let node = self.node_mut(parent);
                        node.replayed = Some(node.replayed.map_or(seq, |s| s.max(seq)));
                    }
                    self.child_block_done(parent, id, result).await
                }
                None => self.end_run(result).await,
            }
        })
    }

    /// The outcome of a run cancelled or suspended: an evaluation it interrupted fails, and that
    /// failure is not the task's.
    fn interrupted(&self) -> Option<Outcome> {
        match &*self.shared.control.borrow() {
            Control::Cancelled(reason) => Some(Outcome::Cancelled(reason.clone())),
            Control::Suspended => Some(Outcome::Cancelled("suspended".to_owned())),
            _ => None,
        }
    }

    async fn end_run(&mut self, result: Result<Value, Problem>) {
        if self.outcome.is_some() {
            return;
        }
        // A paused run completes once resumed: an execution goes from paused to an end only by
        // failing or being cancelled. (A cancel ends the wait; it is the outcome below.)
        if result.is_ok() {
            self.shared.wait_unless_paused().await;
        }
        if let Some(outcome) = self.interrupted() {
            self.outcome = Some(outcome);
            return;
        }
        let outcome = match result {
            Ok(value) => match &self.program.output {
                Some(filter) => match self.eval(filter, &value, None, &value, Value::Null).await {
                    Ok(output) => Outcome::Completed(output),
                    Err(problem) => Outcome::Failed(problem.at("/output/as")),
                },
                None => Outcome::Completed(value),
            },
            Err(problem) => Outcome::Failed(problem),
        };
        self.outcome = Some(outcome);
    }

    // ---- tasks ----

    async fn start_task(&mut self, id: Id) {
        if !self.live(id) {
            return;
        }
        self.activity += 1;
        let path = self.node(id).path.clone().expect("a task has a path");
        // Taken, not copied: only a skipped task passes its raw input on (it is put back for
        // that); a task that runs needs it no more once its input is rendered, and a copy
        // would stay with it for as long as it waits on a call.
        let (task, raw, scope) = {
            let t = self.task_mut(id);
            (t.task, std::mem::take(&mut t.raw), Arc::clone(&t.scope))
        };
        if let Some(settled) = self.history.settled.get(&path).cloned() {
            self.node_mut(id).replayed = Some(settled.sequence);
            match settled.result {
                Settled::Succeeded(output) => self.task_finished(id, Ok(Done::Output(output)), true).await,
                Settled::Failed(problem) => self.task_finished(id, Err(problem), true).await,
                Settled::Skipped => {
                    self.task_mut(id).raw = raw;
                    self.task_finished(id, Ok(Done::Skipped), true).await
                }
            }
            return;
        }
        if let Some(condition) = &task.condition {
            let holds = self.eval_scoped(condition, &raw, Some(task), &raw, Value::Null, &scope).await;
            match boolean(holds, "its condition (if)") {
                Ok(true) => {}
                Ok(false) => {
                    let reason = "its condition (if) is false".to_owned();
                    self.record(EventKind::TaskSkipped { step: path, reason });
                    self.task_mut(id).raw = raw;
                    self.task_finished(id, Ok(Done::Skipped), false).await;
                    return;
                }
                Err(problem) => {
                    self.task_finished(id, Err(problem), false).await;
                    return;
                }
            }
        }
        let input = match &task.input {
            Some(filter) => match self.eval_scoped(filter, &raw, Some(task), &raw, Value::Null, &scope).await {
                Ok(input) => input,
                Err(problem) => {
                    self.task_finished(id, Err(problem), false).await;
                    return;
                }
            },
            None => raw,
        };
        self.task_mut(id).input = input.clone();
        let eval = |this: &Self, template: &'a Template| {
            this.eval_scoped(template, &input, Some(task), &input, Value::Null, &scope)
        };
        match &task.action {
            Action::Set(value) => {
                let result = eval(self, value).await.map(Done::Output);
                self.task_finished(id, result, false).await;
            }
            Action::Raise(raise) => {
                // Every future is made before any runs: none of them borrows the run.
                let kind = eval(self, &raise.r#type);
                let status = eval(self, &raise.status);
                let title = raise.title.as_ref().map(|t| eval(self, t));
                let detail = raise.detail.as_ref().map(|d| eval(self, d));
                let problem = async move {
                    let kind = kind.await?;
                    let status = status.await?;
                    let title = match title {
                        Some(title) => Some(title.await?),
                        None => None,
                    };
                    let detail = match detail {
                        Some(detail) => Some(detail.await?),
                        None => None,
                    };
                    let text = |v: Value| match v {
                        Value::String(s) => s,
                        other => other.to_string(),
                    };
                    let status = status.as_u64().and_then(|s| u16::try_from(s).ok()).ok_or_else(|| {
                        Problem::standard(
                            "validation",
                            format!("raise: status {status} is not a number from 0 to 65535"),
                        )
                    })?;
                    Ok::<Problem, Problem>(Problem {
                        kind: text(kind),
                        status,
                        title: title.map(text),
                        detail: detail.map(text),
                        instance: None,
                    })
                }
                .await
                .unwrap_or_else(|problem| problem);
                self.task_finished(id, Err(problem), false).await;
            }
            Action::Do(block) => {
                let outer = self.parent_outer(id);
                let child = self.new_block(Some(id), Some(path), block, scope, input, outer);
                self.task_mut(id).action = ActionRun::Block(child);
                self.start_block(child).await;
            }
            Action::Switch(switch) => {
                let mut chosen: Option<&'a Case> = None;
                for case in &switch.cases {
                    let holds = match &case.when {
                        None => true,
                        Some(when) => match boolean(eval(self, when).await, &format!("switch case {}", case.name)) {
                            Ok(holds) => holds,
                            Err(problem) => {
                                self.task_finished(id, Err(problem), false).await;
                                return;
                            }
                        },
                    };
                    if holds {
                        chosen = Some(case);
                        break;
                    }
                }
                match chosen.map(|c| (c, &c.then)) {
                    None => self.task_finished(id, Ok(Done::Output(input)), false).await,
                    Some((_, CaseAction::Flow(then))) => {
                        self.task_mut(id).then = *then;
                        self.task_finished(id, Ok(Done::Output(input)), false).await;
                    }
                    Some((case, CaseAction::Block(block))) => {
                        let outer = self.parent_outer(id);
                        let prefix = path.child(case.name.as_str()).unwrap_or(path);
                        let child = self.new_block(Some(id), Some(prefix), block, scope, input, outer);
                        self.task_mut(id).action = ActionRun::Block(child);
                        self.start_block(child).await;
                    }
                }
            }
            Action::For(each) => {
                let items = match eval(self, &each.items).await {
                    Ok(Value::Array(items)) => items,
                    Ok(Value::Null) => Vec::new(),
                    Ok(other) => {
                        let problem = Problem::standard("expression", format!("for: `in` gave {other}, not a list"));
                        self.task_finished(id, Err(problem), false).await;
                        return;
                    }
                    Err(problem) => {
                        self.task_finished(id, Err(problem), false).await;
                        return;
                    }
                };
                if items.len() > MAX_ITEMS {
                    let problem = Problem::standard(
                        "validation",
                        format!("for over {} items, the limit is {MAX_ITEMS}", items.len()),
                    )
                    .with_title("loop limit");
                    self.task_finished(id, Err(problem), false).await;
                    return;
                }
                let outer = self.parent_outer(id);
                let results = vec![None; items.len()];
                self.task_mut(id).action =
                    ActionRun::Each(EachRun { items, next: 0, results, current: input, running: Vec::new(), outer });
                self.each_advance(id, each).await;
            }
            Action::Repeat(repeat) => {
                let outer = self.parent_outer(id);
                let last = input.clone();
                self.task_mut(id).action = ActionRun::Repeat(RepeatRun { iteration: 0, child: None, last, outer });
                self.repeat_advance(id, repeat).await;
            }
            Action::Fork(fork) => {
                let outer = self.parent_outer(id);
                let mut children = Vec::with_capacity(fork.branches.len());
                for (name, block) in &fork.branches {
                    let prefix = path.child(name.as_str()).unwrap_or_else(|_| path.clone());
                    let child = self.new_block(
                        Some(id),
                        Some(prefix),
                        block,
                        Arc::clone(&scope),
                        input.clone(),
                        Arc::clone(&outer),
                    );
                    children.push(child);
                }
                let n = children.len();
                self.task_mut(id).action =
                    ActionRun::Fork(ForkRun { children: children.clone(), results: vec![None; n], left: n });
                // Branches that replay wholly from the journal finish as they start, in branch
                // order, and the first wins a compete; a compete fork journals its own result as
                // it finishes, so after a restart the fork itself replays and no branch runs.
                for child in children {
                    if self.live(id) && self.live(child) {
                        self.start_block(child).await;
                    }
                }
            }
            Action::Try(t) => {
                let outer = self.parent_outer(id);
                let prefix = path.child("try").unwrap_or_else(|_| path.clone());
                let child = self.new_block(Some(id), Some(prefix), &t.body, scope, input, Arc::clone(&outer));
                self.task_mut(id).action = ActionRun::Try(TryRun { attempt: 1, child, catching: false, outer });
                self.start_block(child).await;
            }
            Action::Call(call) => {
                let payload = match eval(self, &call.payload).await.and_then(|payload| self.within_input_bound(payload))
                {
                    Ok(payload) => payload,
                    Err(problem) => {
                        self.task_finished(id, Err(problem), false).await;
                        return;
                    }
                };
                // The call's shape renders against the same input, once for all its attempts.
                let request = match &call.shape {
                    None => None,
                    Some(shape) => match self.eval_call(shape, &input, task, &scope).await {
                        Ok(request) => Some(Arc::new(request)),
                        Err(problem) => {
                            self.task_finished(id, Err(problem), false).await;
                            return;
                        }
                    },
                };
                let services = match &call.target {
                    CallTarget::Services(services) => services.clone(),
                    CallTarget::Query(requirements) => vec![self.host.stand_in(requirements)],
                    CallTarget::Http(http) => {
                        let templates = request::http_templates(http);
                        let rendered = match render_all(templates.iter().map(|t| eval(self, t)).collect()).await {
                            Ok(rendered) => rendered,
                            Err(problem) => return self.task_finished(id, Err(problem), false).await,
                        };
                        let render = |template: &Template| rendered_by(&templates, &rendered, template);
                        match request::http_request(http, &render) {
                            Ok((request, service)) => {
                                let (output, execution) = (http.output, self.execution);
                                let attempt = move |invoker: &'a I, trace: CallTrace| {
                                    let request = request.clone();
                                    async move { request::attempt_http(invoker, execution, &request, &trace, output).await }
                                };
                                let leaf = self.request_leaf(id, task, path, service, input, scope, attempt);
                                self.push_leaf(id, leaf, LeafKind::Busy);
                            }
                            Err(problem) => self.task_finished(id, Err(problem), false).await,
                        }
                        return;
                    }
                    CallTarget::OpenApi(api) => {
                        let templates = request::openapi_templates(api);
                        let rendered = match render_all(templates.iter().map(|t| eval(self, t)).collect()).await {
                            Ok(rendered) => rendered,
                            Err(problem) => return self.task_finished(id, Err(problem), false).await,
                        };
                        let render = |template: &Template| rendered_by(&templates, &rendered, template);
                        match request::openapi_parts(api, &render) {
                            Ok((document, parameters, credentials, service)) => {
                                let (operation, output) = (api.operation_id.as_str(), api.output);
                                let execution = self.execution;
                                let attempt = move |invoker: &'a I, trace: CallTrace| {
                                    let (document, parameters, credentials) =
                                        (document.clone(), parameters.clone(), credentials.clone());
                                    async move {
                                        let operation = request::Operation { id: operation, parameters: &parameters };
                                        request::attempt_openapi(
                                            invoker,
                                            execution,
                                            &document,
                                            operation,
                                            &credentials,
                                            &trace,
                                            output,
                                        )
                                        .await
                                    }
                                };
                                let leaf = self.request_leaf(id, task, path, service, input, scope, attempt);
                                self.push_leaf(id, leaf, LeafKind::Busy);
                            }
                            Err(problem) => self.task_finished(id, Err(problem), false).await,
                        }
                        return;
                    }
                };
                let attempt = self.history.attempts.get(&path).copied().unwrap_or(0);
                let leaf = self.call_leaf(id, task, path, services, (payload, request), input, scope, attempt);
                self.push_leaf(id, leaf, LeafKind::Busy);
            }
            Action::Wait(wait) => {
                let due = match self.history.timers.get(&path) {
                    Some(due) => *due,
                    None => {
                        let now = self.shared.now();
                        let due = match wait {
                            Wait::For(duration) => chrono::Duration::from_std(*duration)
                                .ok()
                                .and_then(|d| now.checked_add_signed(d))
                                .unwrap_or(now),
                            Wait::Until(until) => match eval(self, until).await.and_then(|v| parse_time(&v)) {
                                Ok(due) => due,
                                Err(problem) => {
                                    self.task_finished(id, Err(problem), false).await;
                                    return;
                                }
                            },
                        };
                        self.record(EventKind::TimerStarted { step: path.clone(), due });
                        due
                    }
                };
                let leaf = self.wait_leaf(id, task, path, due, input, scope);
                self.push_leaf(id, leaf, LeafKind::Timer(due));
            }
            Action::Listen(listen) => {
                // The timeout is a durable timer too: after a restart it keeps its due time.
                let due = listen.timeout.map(|limit| match self.history.timers.get(&path) {
                    Some(due) => *due,
                    None => {
                        let now = self.shared.now();
                        let due = chrono::Duration::from_std(limit)
                            .ok()
                            .and_then(|d| now.checked_add_signed(d))
                            .unwrap_or(now);
                        self.record(EventKind::TimerStarted { step: path.clone(), due });
                        due
                    }
                });
                let future = self.host.listen(
                    self.execution,
                    path.clone(),
                    listen.signals.clone(),
                    listen.mode == ListenMode::All,
                );
                let (shared, limit) = (self.shared, listen.timeout);
                let waited: Pin<Box<dyn Future<Output = Result<Value, Problem>> + Send + 'a>> = Box::pin(async move {
                    let Some(due) = due else { return future.await };
                    let left = (due - shared.now()).to_std().unwrap_or(Duration::ZERO);
                    tokio::time::timeout(left, future).await.unwrap_or_else(|_| {
                        let limit = limit.map(baton_core::duration::format).unwrap_or_default();
                        Err(Problem::standard("timeout", format!("no signal came within {limit}")))
                    })
                });
                let leaf = self.host_leaf(id, task, path, input, scope, waited);
                self.push_leaf(id, leaf, due.map_or(LeafKind::Wait, LeafKind::Timer));
            }
            Action::Emit(emit) => {
                let event = match eval(self, &emit.event).await {
                    Ok(event) => cloud_event(event, self.execution, &path, self.shared.now()),
                    Err(problem) => {
                        self.task_finished(id, Err(problem), false).await;
                        return;
                    }
                };
                let future = self.host.emit(self.execution, path.clone(), event.clone());
                let leaf =
                    self.host_leaf(id, task, path, input, scope, Box::pin(async move { future.await.map(|()| event) }));
                self.push_leaf(id, leaf, LeafKind::Busy);
            }
            Action::Run(run) => {
                let child_input = match eval(self, &run.input).await {
                    Ok(value) => value,
                    Err(problem) => {
                        self.task_finished(id, Err(problem), false).await;
                        return;
                    }
                };
                let future = self.host.child(self.execution, path.clone(), run.name.clone(), run.version, child_input);
                let leaf = self.host_leaf(id, task, path, input, scope, future);
                self.push_leaf(id, leaf, LeafKind::Wait);
            }
        }
    }

    /// What blocks nested in task `id` see of enclosing graph steps.
    fn parent_outer(&self, id: Id) -> Arc<Map<String, Value>> {
        match self.node(id).parent {
            Some(parent) => self.nested_outer(parent),
            None => Arc::default(),
        }
    }

    /// A task ended: filters its output, journals it (unless `replayed`), and tells its block.
    async fn task_finished(&mut self, id: Id, result: Result<Done, Problem>, replayed: bool) {
        if !self.live(id) {
            return;
        }
        if result.is_err()
            && let Some(outcome) = self.interrupted()
        {
            self.outcome = Some(outcome);
            return;
        }
        let path = self.node(id).path.clone().expect("a task has a path");
        let (task, input, scope) = {
            let t = self.task(id);
            (t.task, t.input.clone(), Arc::clone(&t.scope))
        };
        let result = match result {
            Ok(Done::Output(raw)) if !replayed => {
                let filtered = 'filtered: {
                    let output = match &task.output {
                        Some(filter) => {
                            match self.eval_scoped(filter, &raw, Some(task), &input, Value::Null, &scope).await {
                                Ok(output) => output,
                                Err(problem) => break 'filtered Err(problem),
                            }
                        }
                        None => raw,
                    };
                    let context = match &task.export {
                        Some(filter) => {
                            let export = self.eval_scoped(filter, &output, Some(task), &input, output.clone(), &scope);
                            match export.await {
                                Ok(context) => Some(context),
                                Err(problem) => break 'filtered Err(problem),
                            }
                        }
                        None => None,
                    };
                    Ok::<_, Problem>((output, context))
                };
                match filtered {
                    Ok((output, context)) => {
                        if let Some(context) = &context {
                            self.context = Arc::new(context.clone());
                        }
                        self.record(EventKind::TaskSucceeded {
                            step: path.clone(),
                            attempt: 0,
                            output: output.clone(),
                            context,
                        });
                        Ok(Done::Output(output))
                    }
                    Err(problem) => Err(self.fail_event(&path, task, problem)),
                }
            }
            Err(problem) if !replayed => Err(self.fail_event(&path, task, problem)),
            other => other,
        };
        self.report_to_block(id, result).await;
    }

    /// Places `problem` at `task` and journals the task's failure.
    fn fail_event(&mut self, path: &StepId, task: &Task, problem: Problem) -> Problem {
        let problem = problem.at(&task.reference);
        self.record(EventKind::TaskFailed {
            step: path.clone(),
            attempt: 0,
            error: problem.message(),
            retryable: false,
            problem: Some(problem.clone()),
        });
        problem
    }

    /// Hands a finished task's result to its block.
    async fn report_to_block(&mut self, id: Id, result: Result<Done, Problem>) {
        let node = self.node(id);
        let block = node.parent.expect("a task sits in a block");
        let replayed = node.replayed;
        let (index, raw, then, task) = {
            let t = self.task(id);
            (t.index, t.raw.clone(), t.then, t.task)
        };
        self.remove(id);
        if !self.live(block) {
            return;
        }
        {
            let node = self.node_mut(block);
            if let Some(seq) = replayed {
                node.replayed = Some(node.replayed.map_or(seq, |s| s.max(seq)));
            }
        }
        self.block_mut(block).children.retain(|&c| c != id);
        let flow = self.block_mut(block).block.flow;
        match flow {
            Flow::Graph => self.graph_task_done(block, index, task, result).await,
            Flow::Sequence => {
                let output = match result {
                    Ok(Done::Output(output)) => output,
                    Ok(Done::Skipped) => raw,
                    Err(problem) => {
                        self.block_done(block, Err(problem)).await;
                        return;
                    }
                };
                self.sequence_next(block, index, then, output).await;
            }
        }
    }

    async fn sequence_next(&mut self, block: Id, index: usize, then: Then, output: Value) {
        let n = self.block_mut(block).block.tasks.len();
        let next = match then {
            Then::Continue if index + 1 < n => index + 1,
            Then::Continue | Then::Exit => {
                self.block_done(block, Ok(output)).await;
                return;
            }
            Then::End => {
                self.end_run(Ok(output)).await;
                return;
            }
            Then::Goto(next) => next,
        };
        let b = self.block_mut(block);
        b.steps += 1;
        if b.steps >= MAX_SEQUENCE_STEPS {
            let problem = Problem::standard(
                "validation",
                format!("the flow ran {MAX_SEQUENCE_STEPS} tasks in one block; the limit stops a `then` loop"),
            );
            self.block_done(block, Err(problem)).await;
            return;
        }
        self.spawn_task(block, next, output);
    }

    async fn graph_task_done(&mut self, block: Id, index: usize, task: &'a Task, result: Result<Done, Problem>) {
        let primary = self.block_mut(block).standing_in.remove(&index).unwrap_or(index);
        match result {
            Ok(done) => {
                let output = match done {
                    Done::Output(output) => Some(output),
                    Done::Skipped => None,
                };
                let b = self.block_mut(block);
                b.outputs[primary] = output;
                b.unfinished -= 1;
                self.release_dependents(block, primary);
            }
            Err(problem) => match task.on_error {
                OnError::Fail => {
                    let name = self.block_mut(block).block.tasks[primary].name.clone();
                    let path =
                        self.node(block).path.as_ref().map_or(name.clone(), |p| p.child(name.as_str()).unwrap_or(name));
                    let detail = format!("step {path} failed: {}", problem.message());
                    let problem = Problem { detail: Some(detail), ..problem };
                    self.block_done(block, Err(problem)).await;
                    return;
                }
                OnError::Continue => {
                    self.block_mut(block).unfinished -= 1;
                    self.skip_dependents(block, primary);
                }
                OnError::Fallback(fallback) => {
                    self.block_mut(block).standing_in.insert(fallback, primary);
                    let raw = self.graph_context(block, fallback);
                    self.spawn_task(block, fallback, raw);
                    // The fallback runs before anything else that became ready.
                    if let Some(id) = self.ready.pop_back() {
                        self.ready.push_front(id);
                    }
                }
            },
        }
        if self.live(block) && self.block_mut(block).unfinished == 0 && self.block_mut(block).children.is_empty() {
            self.block_done(block, Ok(Value::Null)).await;
        }
    }

    fn release_dependents(&mut self, block: Id, done: usize) {
        let dependents = self.block_mut(block).block.dependents[done].clone();
        for d in dependents {
            let b = self.block_mut(block);
            b.waiting[d] -= 1;
            if b.waiting[d] == 0 && !b.skipped[d] && !b.block.fallback_only[d] {
                let raw = self.graph_context(block, d);
                self.spawn_task(block, d, raw);
            }
        }
    }

    fn skip_dependents(&mut self, block: Id, failed: usize) {
        let mut stack = self.block_mut(block).block.dependents[failed].clone();
        let failed_name = self.block_mut(block).block.tasks[failed].name.clone();
        while let Some(d) = stack.pop() {
            let b = self.block_mut(block);
            if std::mem::replace(&mut b.skipped[d], true) {
                continue;
            }
            b.unfinished -= 1;
            let name = b.block.tasks[d].name.clone();
            stack.extend(b.block.dependents[d].iter().copied());
            let path = self.node(block).path.as_ref().map_or(name.clone(), |p| p.child(name.as_str()).unwrap_or(name));
            if !self.history.settled.contains_key(&path) {
                self.record(EventKind::TaskSkipped {
                    step: path,
                    reason: format!("needs {failed_name}, which failed"),
                });
            }
        }
    }

    // ---- composite tasks ----

    async fn child_block_done(&mut self, task_id: Id, child: Id, result: Result<Value, Problem>) {
        if !self.live(task_id) {
            return;
        }
        let task = self.task(task_id).task;
        match &task.action {
            Action::Do(_) | Action::Switch(_) => self.task_finished(task_id, result.map(Done::Output), false).await,
            Action::For(each) => self.each_iteration_done(task_id, each, child, result).await,
            Action::Repeat(repeat) => self.repeat_iteration_done(task_id, repeat, result).await,
            Action::Fork(fork) => self.fork_branch_done(task_id, fork.compete, child, result).await,
            Action::Try(_) => self.try_body_done(task_id, result).await,
            _ => unreachable!("only composite tasks hold blocks"),
        }
    }

    async fn each_advance(&mut self, id: Id, each: &'a ForEach) {
        loop {
            let (index, item, input) = {
                let ActionRun::Each(run) = &mut self.task_mut(id).action else { unreachable!("a for") };
                let limit = if each.collect == Collect::Thread { 1 } else { each.concurrency.max(1) };
                if run.next >= run.items.len() || run.running.len() >= limit {
                    break;
                }
                let index = run.next;
                run.next += 1;
                (index, run.items[index].clone(), run.current.clone())
            };
            let (scope, path, outer) = {
                let t = self.task(id);
                let ActionRun::Each(run) = &t.action else { unreachable!("a for") };
                (Arc::clone(&t.scope), self.node(id).path.clone().expect("a path"), Arc::clone(&run.outer))
            };
            if let Some(condition) = &each.condition {
                let mut vars: Vec<Value> = scope.to_vec();
                vars.extend([item.clone(), json!(index)]);
                match self.eval_scoped(condition, &input, Some(self.task(id).task), &input, Value::Null, &vars).await {
                    Ok(Value::Bool(true)) => {}
                    Ok(_) => {
                        // `while` is false: the loop ends here.
                        let ActionRun::Each(run) = &mut self.task_mut(id).action else { unreachable!("a for") };
                        run.items.truncate(index);
                        run.results.truncate(index);
                        run.next = index;
                        break;
                    }
                    Err(problem) => {
                        self.task_finished(id, Err(problem), false).await;
                        return;
                    }
                }
            }
            let mut vars: Vec<Value> = scope.to_vec();
            vars.extend([item, json!(index)]);
            let prefix = path.child(&index.to_string()).unwrap_or(path);
            let child = self.new_block(Some(id), Some(prefix), &each.body, Arc::from(vars), input, outer);
            let ActionRun::Each(run) = &mut self.task_mut(id).action else { unreachable!("a for") };
            run.running.push((child, index));
            self.start_block(child).await;
            if !self.live(id) {
                return;
            }
        }
        let finished = {
            let ActionRun::Each(run) = &self.task(id).action else { unreachable!("a for") };
            run.running.is_empty() && run.next >= run.items.len()
        };
        if finished {
            let output = {
                let ActionRun::Each(run) = &mut self.task_mut(id).action else { unreachable!("a for") };
                match each.collect {
                    Collect::Array => {
                        Value::Array(run.results.iter_mut().map(|r| r.take().unwrap_or(Value::Null)).collect())
                    }
                    Collect::Thread => std::mem::take(&mut run.current),
                }
            };
            self.task_finished(id, Ok(Done::Output(output)), false).await;
        }
    }

    async fn each_iteration_done(&mut self, id: Id, each: &'a ForEach, child: Id, result: Result<Value, Problem>) {
        match result {
            Ok(output) => {
                let ActionRun::Each(run) = &mut self.task_mut(id).action else { unreachable!("a for") };
                if let Some(at) = run.running.iter().position(|(c, _)| *c == child) {
                    let (_, index) = run.running.swap_remove(at);
                    match each.collect {
                        Collect::Array => run.results[index] = Some(output),
                        Collect::Thread => run.current = output,
                    }
                }
                self.each_advance(id, each).await;
            }
            Err(problem) => self.task_finished(id, Err(problem), false).await,
        }
    }

    async fn repeat_advance(&mut self, id: Id, repeat: &'a Repeat) {
        let (iteration, last, scope) = {
            let t = self.task(id);
            let ActionRun::Repeat(run) = &t.action else { unreachable!("a repeat") };
            (run.iteration, run.last.clone(), Arc::clone(&t.scope))
        };
        // `while` looks before each iteration, `until` after each (never before the first).
        if !repeat.until || iteration > 0 {
            let mut vars = scope.to_vec();
            vars.push(json!(iteration));
            let task = self.task(id).task;
            let input = self.task(id).input.clone();
            let holds = self.eval_scoped(&repeat.condition, &last, Some(task), &input, Value::Null, &vars).await;
            match boolean(holds, "the loop condition") {
                Ok(holds) => {
                    if holds == repeat.until {
                        let output = self.repeat_output(id);
                        self.task_finished(id, Ok(Done::Output(output)), false).await;
                        return;
                    }
                }
                Err(problem) => {
                    self.task_finished(id, Err(problem), false).await;
                    return;
                }
            }
        }
        if iteration >= repeat.max_iterations {
            let problem = Problem::standard(
                "validation",
                format!("the loop did not end within max_iterations ({})", repeat.max_iterations),
            )
            .with_title("loop limit");
            self.task_finished(id, Err(problem), false).await;
            return;
        }
        let path = self.node(id).path.clone().expect("a path");
        let (input, outer) = {
            let t = self.task(id);
            let ActionRun::Repeat(run) = &t.action else { unreachable!("a repeat") };
            (t.input.clone(), Arc::clone(&run.outer))
        };
        let mut vars = scope.to_vec();
        vars.push(json!(iteration));
        let prefix = path.child(&iteration.to_string()).unwrap_or(path);
        let child = self.new_block(Some(id), Some(prefix), &repeat.body, Arc::from(vars), input, outer);
        let ActionRun::Repeat(run) = &mut self.task_mut(id).action else { unreachable!("a repeat") };
        run.child = Some(child);
        run.iteration += 1;
        self.start_block(child).await;
    }

    /// A repeat yields its last iteration's output (the `steps` of a graph body, by name).
    fn repeat_output(&self, id: Id) -> Value {
        let ActionRun::Repeat(run) = &self.task(id).action else { unreachable!("a repeat") };
        run.last.get("steps").cloned().unwrap_or_else(|| run.last.clone())
    }

    async fn repeat_iteration_done(&mut self, id: Id, repeat: &'a Repeat, result: Result<Value, Problem>) {
        match result {
            Ok(_) => {
                // `block_done` left the iteration's view in `last` for the condition.
                let ActionRun::Repeat(run) = &mut self.task_mut(id).action else { unreachable!("a repeat") };
                run.child = None;
                self.repeat_advance(id, repeat).await;
            }
            Err(problem) => self.task_finished(id, Err(problem), false).await,
        }
    }

    async fn fork_branch_done(&mut self, id: Id, compete: bool, child: Id, result: Result<Value, Problem>) {
        let position = {
            let ActionRun::Fork(run) = &self.task(id).action else { unreachable!("a fork") };
            run.children.iter().position(|&c| c == child)
        };
        let Some(position) = position else { return };
        match result {
            Ok(output) if compete => {
                // The first branch to finish wins; the others are abandoned.
                self.cancel_fork_branches(id, Some(child));
                self.task_finished(id, Ok(Done::Output(output)), false).await;
            }
            Ok(output) => {
                let ActionRun::Fork(run) = &mut self.task_mut(id).action else { unreachable!("a fork") };
                run.results[position] = Some(output);
                run.left -= 1;
                if run.left == 0 {
                    let outputs = run.results.iter_mut().map(|r| r.take().unwrap_or(Value::Null)).collect();
                    self.task_finished(id, Ok(Done::Output(Value::Array(outputs))), false).await;
                }
            }
            Err(problem) => {
                self.cancel_fork_branches(id, Some(child));
                self.task_finished(id, Err(problem), false).await;
            }
        }
    }

    fn cancel_fork_branches(&mut self, id: Id, except: Option<Id>) {
        let children = {
            let ActionRun::Fork(run) = &self.task(id).action else { unreachable!("a fork") };
            run.children.clone()
        };
        for child in children.into_iter().filter(|c| Some(*c) != except) {
            if self.live(child)
                && matches!(self.node(child).kind, Kind::Block(_))
                && self.node(child).parent == Some(id)
            {
                self.remove(child);
            }
        }
    }

    async fn try_body_done(&mut self, id: Id, result: Result<Value, Problem>) {
        let (catching, attempt, outer) = {
            let ActionRun::Try(run) = &self.task(id).action else { unreachable!("a try") };
            (run.catching, run.attempt, Arc::clone(&run.outer))
        };
        let problem = match result {
            Ok(output) => {
                self.task_finished(id, Ok(Done::Output(output)), false).await;
                return;
            }
            Err(problem) if catching => {
                self.task_finished(id, Err(problem), false).await;
                return;
            }
            Err(problem) => problem,
        };
        let Action::Try(t) = &self.task(id).task.action else { unreachable!("a try") };
        let catch = &t.catch;
        let (input, scope) = {
            let run = self.task(id);
            (run.input.clone(), Arc::clone(&run.scope))
        };
        let error = problem.to_value();
        let mut vars = scope.to_vec();
        vars.push(error.clone());
        let task = self.task(id).task;
        let matches_filter = catch.filter.r#type.as_ref().is_none_or(|t| *t == problem.kind)
            && catch.filter.status.is_none_or(|s| s == problem.status)
            && catch.filter.instance.as_ref().is_none_or(|i| problem.instance.as_ref() == Some(i))
            && catch.filter.title.as_ref().is_none_or(|t| problem.title.as_ref() == Some(t))
            && catch.filter.detail.as_ref().is_none_or(|d| problem.detail.as_ref() == Some(d));
        let when = catch.when.as_ref().map(|c| self.eval_scoped(c, &error, Some(task), &input, Value::Null, &vars));
        let except_when =
            catch.except_when.as_ref().map(|c| self.eval_scoped(c, &error, Some(task), &input, Value::Null, &vars));
        let check = async |condition: Option<_>, default: bool| -> Result<bool, Problem> {
            match condition {
                None => Ok(default),
                Some(condition) => boolean(condition.await, "catch condition"),
            }
        };
        let caught = matches_filter
            && match (check(when, true).await, check(except_when, false).await) {
                (Ok(when), Ok(except)) => when && !except,
                (Err(problem), _) | (_, Err(problem)) => {
                    self.task_finished(id, Err(problem), false).await;
                    return;
                }
            };
        if !caught {
            self.task_finished(id, Err(problem), false).await;
            return;
        }
        let path = self.node(id).path.clone().expect("a path");
        if let Some(retry) = &catch.retry
            && attempt < retry.max_attempts
        {
            let next = attempt + 1;
            let prefix = path.child(&format!("try@{next}")).unwrap_or_else(|_| path.clone());
            let child = self.new_block(Some(id), Some(prefix), &t.body, scope, input, outer);
            let ActionRun::Try(run) = &mut self.task_mut(id).action else { unreachable!("a try") };
            run.attempt = next;
            run.child = child;
            let backoff = self.shared.backoff(retry, attempt);
            if backoff.is_zero() {
                self.start_block(child).await;
            } else {
                let generation = self.generations[child];
                let leaf: LeafFuture<'a> = Box::pin(async move {
                    tokio::time::sleep(backoff).await;
                    LeafDone { node: child, generation, result: Err(Problem::runtime("backoff")) }
                });
                self.push_leaf(child, leaf, LeafKind::Busy);
            }
            return;
        }
        match &catch.body {
            None => self.task_finished(id, Ok(Done::Output(input)), false).await,
            Some(body) => {
                let prefix = path.child("catch").unwrap_or(path);
                let child = self.new_block(Some(id), Some(prefix), body, Arc::from(vars), input, outer);
                let ActionRun::Try(run) = &mut self.task_mut(id).action else { unreachable!("a try") };
                run.catching = true;
                run.child = child;
                self.start_block(child).await;
            }
        }
    }

    // ---- leaves ----

    async fn leaf_done(&mut self, done: LeafDone) {
        if !self.live(done.node) || self.generations[done.node] != done.generation {
            return;
        }
        let kind = self.node_mut(done.node).leaf.take();
        self.leaf_gone(kind);
        match &self.node(done.node).kind {
            // A try's backoff ran out: start the next attempt's block.
            Kind::Block(_) => self.start_block(done.node).await,
            Kind::Task(_) => match done.result {
                Ok(LeafOutput { output, context }) => {
                    if let Some(context) = context {
                        self.context = Arc::new(context);
                    }
                    self.report_to_block(done.node, Ok(Done::Output(output))).await;
                }
                Err(problem) => self.report_to_block(done.node, Err(problem)).await,
            },
        }
    }

    /// Applies the task's output and export filters inside a leaf and journals its success,
    /// waiting until it is kept: what depends on the task starts only then.
    #[allow(clippy::too_many_arguments)] // reason: everything a leaf needs, moved in once
    async fn settle_leaf(
        shared: &Shared<I>,
        task: &Task,
        path: StepId,
        attempt: u32,
        raw: Value,
        filters: Filters,
    ) -> Result<LeafOutput, Problem> {
        shared.woken.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        let (output, context) = filters.apply(task, raw).await?;
        let kept = shared.record(EventKind::TaskSucceeded {
            step: path.clone(),
            attempt,
            output: output.clone(),
            context: context.clone(),
        });
        match kept.await {
            Ok(()) => Ok(LeafOutput { output, context }),
            Err(refusal) => {
                let problem = Problem::runtime(refusal.to_string()).at(&task.reference);
                shared.emit(EventKind::TaskFailed {
                    step: path,
                    attempt,
                    error: problem.message(),
                    retryable: false,
                    problem: Some(problem.clone()),
                });
                Err(problem)
            }
        }
    }

    fn filters(&self, input: Value, scope: Scope) -> Filters {
        Filters {
            input,
            scope,
            context: Arc::clone(&self.context),
            workflow: Arc::clone(&self.workflow),
            execution_input: Arc::clone(&self.input),
            runtime: Arc::clone(&self.runtime),
            evaluator: Arc::clone(&self.shared.evaluator),
            control: self.shared.control.clone(),
        }
    }

    #[allow(clippy::too_many_arguments)] // reason: everything a call leaf needs, moved in once
    fn call_leaf(
        &mut self,
        id: Id,
        task: &'a Task,
        path: StepId,
        services: Vec<ServiceId>,
        (payload, request): (Value, Option<Arc<CallRequest>>),
        input: Value,
        scope: Scope,
        attempts_made: u32,
    ) -> LeafFuture<'a> {
        let shared = self.shared;
        let generation = self.generations[id];
        let filters = self.filters(input, scope);
        Box::pin(async move {
            let spec = CallSpec {
                step: &path,
                services: &services,
                retry: &task.retry,
                timeout: task.timeout,
                task_timeout: task.task_timeout,
                reference: &task.reference,
                first_attempt: attempts_made + 1,
                request,
            };
            // Each attempt takes its service's slot and then one of the global limit.
            let result = match run_call(shared, &spec, payload).await {
                Ok((attempt, raw)) => Self::settle_leaf(shared, task, path.clone(), attempt, raw, filters).await,
                Err(TaskError::Failed(problem)) => Err(problem),
                Err(other) => Err(Problem::runtime(other.to_string()).at(&task.reference)),
            };
            LeafDone { node: id, generation, result }
        })
    }

    /// A leaf attempting a request the definition writes (`call: http`, `call: openapi`)
    /// under the task's retry policy and time limits.
    #[allow(clippy::too_many_arguments)] // reason: everything a request leaf needs, moved in once
    fn request_leaf<F, Fut>(
        &mut self,
        id: Id,
        task: &'a Task,
        path: StepId,
        service: ServiceId,
        input: Value,
        scope: Scope,
        attempt: F,
    ) -> LeafFuture<'a>
    where
        F: Fn(&'a I, CallTrace) -> Fut + Send + Sync + 'a,
        Fut: Future<Output = Result<Value, crate::invoker::Failure>> + Send + 'a,
    {
        let shared = self.shared;
        let generation = self.generations[id];
        let filters = self.filters(input, scope);
        let attempts_made = self.history.attempts.get(&path).copied().unwrap_or(0);
        Box::pin(async move {
            let spec = request::RequestSpec {
                step: &path,
                retry: &task.retry,
                timeout: task.timeout,
                task_timeout: task.task_timeout,
                reference: &task.reference,
                first_attempt: attempts_made + 1,
            };
            let invoker = shared.invoker();
            let result = match shared.global_permit().await {
                None => Err(Problem::runtime("cancelled")),
                Some(_permit) => match request::run_request(shared, &spec, service, |trace| attempt(invoker, trace))
                    .await
                {
                    Ok((attempt, raw)) => Self::settle_leaf(shared, task, path.clone(), attempt, raw, filters).await,
                    Err(TaskError::Failed(problem)) => Err(problem),
                    Err(other) => Err(Problem::runtime(other.to_string()).at(&task.reference)),
                },
            };
            LeafDone { node: id, generation, result }
        })
    }

    fn wait_leaf(
        &mut self,
        id: Id,
        task: &'a Task,
        path: StepId,
        due: Timestamp,
        input: Value,
        scope: Scope,
    ) -> LeafFuture<'a> {
        let shared = self.shared;
        let generation = self.generations[id];
        let filters = self.filters(input.clone(), scope);
        Box::pin(async move {
            let left = (due - shared.now()).to_std().unwrap_or(Duration::ZERO);
            if !left.is_zero() {
                tokio::time::sleep(left).await;
            }
            shared.tick();
            let result = Self::settle_leaf(shared, task, path, 0, input, filters).await;
            LeafDone { node: id, generation, result }
        })
    }

    fn host_leaf(
        &mut self,
        id: Id,
        task: &'a Task,
        path: StepId,
        input: Value,
        scope: Scope,
        future: Pin<Box<dyn Future<Output = Result<Value, Problem>> + Send + 'a>>,
    ) -> LeafFuture<'a> {
        let shared = self.shared;
        let generation = self.generations[id];
        let filters = self.filters(input, scope);
        Box::pin(async move {
            let result = match future.await {
                Ok(raw) => {
                    shared.tick();
                    Self::settle_leaf(shared, task, path, 0, raw, filters).await
                }
                Err(problem) => {
                    shared.woken.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
                    let problem = problem.at(&task.reference);
                    shared.emit(EventKind::TaskFailed {
                        step: path,
                        attempt: 0,
                        error: problem.message(),
                        retryable: false,
                        problem: Some(problem.clone()),
                    });
                    Err(problem)
                }
            };
            LeafDone { node: id, generation, result }
        })
    }
}

/// What a leaf needs to apply its task's output and export filters on its own.
struct Filters {
    input: Value,
    scope: Scope,
    context: Arc<Value>,
    workflow: Arc<Value>,
    /// The execution's input, for `$workflow`.
    execution_input: Arc<Value>,
    runtime: Arc<Value>,
    evaluator: Arc<dyn Evaluator>,
    control: tokio::sync::watch::Receiver<Control>,
}

impl Filters {
    async fn apply(&self, task: &Task, raw: Value) -> Result<(Value, Option<Value>), Problem> {
        let values = |output: Value| {
            let mut values = vec![
                self.input.clone(),
                (*self.context).clone(),
                workflow_variable(&self.workflow, &self.execution_input),
                json!({"name": task.name.as_str(), "reference": task.reference}),
                output,
                (*self.runtime).clone(),
            ];
            values.extend(self.scope.iter().cloned());
            values
        };
        let output = match &task.output {
            Some(filter) => evaluate(filter, &raw, values(Value::Null), &self.evaluator, &self.control)
                .await
                .map_err(|p| p.at(&task.reference))?,
            None => raw,
        };
        let context = match &task.export {
            Some(filter) => Some(
                evaluate(filter, &output, values(output.clone()), &self.evaluator, &self.control)
                    .await
                    .map_err(|p| p.at(&task.reference))?,
            ),
            None => None,
        };
        Ok((output, context))
    }
}

/// Renders `template` against `dot` with `values` bound: plain paths at once, jq on
/// `evaluator`, abandoned (the evaluator stops what it runs) when the run is cancelled.
fn evaluate<'t>(
    template: &'t Template,
    dot: &Value,
    values: Vec<Value>,
    evaluator: &Arc<dyn Evaluator>,
    control: &tokio::sync::watch::Receiver<Control>,
) -> impl Future<Output = Result<Value, Problem>> + Send + use<'t> {
    let problem = expression_problem;
    let ready = (!template.uses_jaq()).then(|| template.render_vars(dot, &values).map_err(problem));
    let job = ready.is_none().then(|| (dot.clone(), Arc::clone(evaluator), control.clone()));
    async move {
        if let Some(ready) = ready {
            return ready;
        }
        let (dot, evaluator, mut control) = job.expect("either rendered or to evaluate");
        tokio::select! {
            rendered = template.render_bounded(&dot, &values, &*evaluator) => rendered.map_err(problem),
            () = cancelled(&mut control) => Err(Problem::runtime("the run was cancelled while an expression ran")),
        }
    }
}

/// An expression that failed as the task's problem: an `expression` error, titled
/// `expression_limit` when it went past a bound.
fn expression_problem(e: EvalError) -> Problem {
    let limit = e.bound.is_some();
    let problem = Problem::standard("expression", e.to_string());
    if limit { problem.with_title(baton_core::expr::EXPRESSION_LIMIT) } else { problem }
}

/// Waits until the run is cancelled, suspended, or its handle dropped.
async fn cancelled(control: &mut tokio::sync::watch::Receiver<Control>) {
    loop {
        if matches!(&*control.borrow_and_update(), Control::Cancelled(_) | Control::Suspended) {
            return;
        }
        if control.changed().await.is_err() {
            return;
        }
    }
}

/// An emitted event completed as a CloudEvent: `specversion` 1.0, an `id` stable for the task
/// instance (`<execution>/<path>`, the same if the emit runs again after a restart, so
/// consumers can drop the repeat), and the `time` it was emitted, unless the event sets them.
fn cloud_event(event: Value, execution: ExecutionId, path: &StepId, now: Timestamp) -> Value {
    let Value::Object(mut attributes) = event else { return event };
    attributes.entry("specversion").or_insert_with(|| json!("1.0"));
    attributes.entry("id").or_insert_with(|| json!(format!("{execution}/{path}")));
    attributes.entry("time").or_insert_with(|| json!(now.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)));
    Value::Object(attributes)
}

/// Awaits the renderings of a request's templates, in order; the first failure fails them all.
async fn render_all<F: Future<Output = Result<Value, Problem>>>(renderings: Vec<F>) -> Result<Vec<Value>, Problem> {
    let mut rendered = Vec::with_capacity(renderings.len());
    for rendering in renderings {
        rendered.push(rendering.await?);
    }
    Ok(rendered)
}

/// What `template`, one of `templates`, rendered to (a request builder reads its parts
/// synchronously once every part has been awaited).
fn rendered_by(templates: &[&Template], rendered: &[Value], template: &Template) -> Result<Value, Problem> {
    templates
        .iter()
        .position(|t| std::ptr::eq(*t, template))
        .map(|at| rendered[at].clone())
        .ok_or_else(|| Problem::runtime("a request template was not rendered"))
}

/// A condition's value as a boolean; anything else is an `expression` problem naming `what`.
fn boolean(value: Result<Value, Problem>, what: &str) -> Result<bool, Problem> {
    match value? {
        Value::Bool(holds) => Ok(holds),
        other => Err(Problem::standard("expression", format!("{what} gave {other}, not a boolean"))),
    }
}

/// A time from an expression: RFC 3339 text or seconds since the epoch.
fn parse_time(value: &Value) -> Result<Timestamp, Problem> {
    let bad = || Problem::standard("expression", format!("wait until {value}: not an RFC 3339 time or epoch seconds"));
    match value {
        Value::String(text) => {
            chrono::DateTime::parse_from_rfc3339(text).map(|t| t.with_timezone(&chrono::Utc)).map_err(|_| bad())
        }
        Value::Number(n) => {
            let seconds = n.as_f64().ok_or_else(bad)?;
            // To the nearest millisecond: truncating would fire up to a millisecond early.
            chrono::DateTime::from_timestamp_millis((seconds * 1000.0).round() as i64).ok_or_else(bad)
        }
        _ => Err(bad()),
    }
}
