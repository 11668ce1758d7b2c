//! The client side of the `baton` binary: commands that call a running server over gRPC
//! (`baton service`, `workflow`, `run`, `exec`, `plan`, `orchestrate`).
//!
//! `main` parses a [`ClientCommand`] with the global [`ClientOptions`] and hands both to [`run`],
//! which returns the process exit code: 0 success (a waited-for execution completed), 1 a
//! failed call or execution, 2 a usage error (found before any call: bad arguments, unreadable
//! files, invalid JSON), 3 a waited-for execution was cancelled.
//!
//! Output is a human table by default and JSON with `--output json` (one document per command;
//! watching writes one JSON object per line). Parsing and rendering are pure functions in the
//! submodules, tested there; this module only sequences the calls.
//!
//! An `https://` server needs `--ca-cert` (the CA its certificate chains to; no system roots
//! are trusted); client certificates for mutual TLS are not supported yet. Connecting waits
//! `--connect-timeout` and a call `--timeout` for its answer, and a failure is explained when
//! the transport's words are not enough (no answer in time, a peer that is not gRPC).

mod client;
mod input;
mod outcome;
mod progress;
mod retry;
mod table;
mod view;

use std::io::{IsTerminal as _, Write as _};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use baton_grpc::pb;
use clap::{Args, Subcommand, ValueEnum};

use self::client::{Clients, Target};
use self::outcome::{Exit, Failure, exit_for_state};
use self::progress::{Live, Progress};

/// The client commands of the `baton` binary; each calls a running server.
#[derive(Debug, Clone, Subcommand)]
pub enum ClientCommand {
    /// Register, list, show and deregister services.
    #[command(subcommand)]
    Service(ServiceCommand),
    /// Apply, list and show workflow definitions.
    #[command(subcommand)]
    Workflow(WorkflowCommand),
    /// Start an execution of a workflow, and optionally wait for or watch it.
    Run(RunArgs),
    /// Show, list, pause, resume, cancel and watch executions.
    #[command(subcommand)]
    Exec(ExecCommand),
    /// Compose a plan for a goal without running it.
    Plan(GoalArgs),
    /// Compose a plan for a goal and run it.
    Orchestrate(OrchestrateArgs),
}

/// `baton service ...`.
#[derive(Debug, Clone, Subcommand)]
pub enum ServiceCommand {
    /// Register a service from a spec file, or replace the spec of a registered id.
    Register {
        /// The service spec, YAML (`.yaml`, `.yml`) or JSON (`.json`; other names: detected).
        file: PathBuf,
    },
    /// List the registered services.
    List,
    /// Show one service with its live state.
    Get {
        /// Service id.
        id: String,
    },
    /// Remove a service.
    Deregister {
        /// Service id.
        id: String,
    },
}

/// `baton workflow ...`.
#[derive(Debug, Clone, Subcommand)]
pub enum WorkflowCommand {
    /// Validate and store a definition; changed text becomes a new version.
    Apply {
        /// The definition, YAML (`.yaml`, `.yml`) or JSON (`.json`; other names: detected).
        file: PathBuf,
    },
    /// List the latest version of every workflow, or every version of one.
    List {
        /// List every version of this workflow, newest first.
        name: Option<String>,
    },
    /// Show one version of a definition with its source.
    Get {
        /// Workflow name.
        name: String,
        /// Definition version (default: the latest).
        #[arg(long)]
        version: Option<u32>,
    },
}

/// `baton run NAME ...`.
#[derive(Debug, Clone, Args)]
pub struct RunArgs {
    /// Workflow name.
    pub name: String,
    /// The run's input as JSON text, or `@PATH` to read it from a file.
    #[arg(long, default_value = "{}")]
    pub input: String,
    /// Definition version to run (default: the latest).
    #[arg(long)]
    pub version: Option<u32>,
    /// Makes retried starts safe: a key already used for this workflow returns that execution.
    /// Without one, each `baton run` makes a fresh key, so that its own retries (after a lost
    /// connection or an unavailable server) never start a second run.
    #[arg(long)]
    pub idempotency_key: Option<String>,
    /// Wait until the execution ends; the exit code follows its outcome.
    #[arg(long, conflicts_with = "watch")]
    pub wait: bool,
    /// Show live progress until the execution ends; the exit code follows its outcome.
    #[arg(long)]
    pub watch: bool,
}

/// `baton exec ...`.
#[derive(Debug, Clone, Subcommand)]
pub enum ExecCommand {
    /// Show one execution with its tasks.
    Get {
        /// Execution id.
        id: String,
    },
    /// List executions, newest first.
    List {
        /// Only this workflow's executions.
        #[arg(long)]
        workflow: Option<String>,
        /// Only executions in these states (repeat or separate with commas).
        #[arg(long = "state", value_enum, value_delimiter = ',')]
        states: Vec<StateFilter>,
        /// Only the execution a `baton run --idempotency-key` with this key started.
        #[arg(long)]
        idempotency_key: Option<String>,
        /// Most executions to list, at least 1.
        #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..))]
        limit: u32,
    },
    /// Stop dispatching new tasks of a running execution.
    Pause {
        /// Execution id.
        id: String,
    },
    /// Resume dispatch of a paused execution.
    Resume {
        /// Execution id.
        id: String,
    },
    /// Stop an execution for good.
    Cancel {
        /// Execution id.
        id: String,
        /// Why; recorded as the execution's error.
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// Send a named signal with data to a running or paused execution (a `listen` consumes it).
    Signal {
        /// Execution id.
        id: String,
        /// The signal's name.
        name: String,
        /// The signal's data, JSON (or @PATH to read it from a file).
        #[arg(long, default_value = "null")]
        data: String,
    },
    /// Show an execution's progress live until it ends; the exit code follows its outcome.
    Watch {
        /// Execution id.
        id: String,
        /// First journal sequence number to show (default: from the start).
        #[arg(long = "from", default_value_t = 0)]
        from_sequence: u64,
    },
}

/// An execution state, to filter listings by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum StateFilter {
    /// Accepted, not yet started.
    Created,
    /// Dispatching tasks.
    Running,
    /// Not dispatching.
    Paused,
    /// Every task done.
    Completed,
    /// Stopped by a failure.
    Failed,
    /// Stopped on request.
    Cancelled,
}

impl StateFilter {
    fn proto(self) -> pb::ExecutionState {
        match self {
            Self::Created => pb::ExecutionState::Created,
            Self::Running => pb::ExecutionState::Running,
            Self::Paused => pb::ExecutionState::Paused,
            Self::Completed => pb::ExecutionState::Completed,
            Self::Failed => pb::ExecutionState::Failed,
            Self::Cancelled => pb::ExecutionState::Cancelled,
        }
    }
}

/// A planning goal: what the caller has, what they want, and the plan's bounds.
#[derive(Debug, Clone, Args)]
pub struct GoalArgs {
    /// Concepts provided at the start (repeat or separate with commas).
    #[arg(long, value_delimiter = ',')]
    pub have: Vec<String>,
    /// Concepts the plan must produce (repeat or separate with commas).
    #[arg(long, value_delimiter = ',', required = true)]
    pub want: Vec<String>,
    /// Most end-to-end latency along the critical path, milliseconds.
    #[arg(long, value_name = "MS")]
    pub max_latency: Option<f64>,
    /// Most total cost of one run.
    #[arg(long, value_name = "X")]
    pub max_cost: Option<f64>,
    /// Least availability of one run, in [0, 1].
    #[arg(long, value_name = "A")]
    pub min_availability: Option<f64>,
}

/// `baton orchestrate ...`.
#[derive(Debug, Clone, Args)]
pub struct OrchestrateArgs {
    /// The goal.
    #[command(flatten)]
    pub goal: GoalArgs,
    /// The run's input: a JSON object of the provided concepts by name, or `@PATH`.
    #[arg(long, default_value = "{}")]
    pub input: String,
    /// Answer once the execution has ended; the exit code follows its outcome.
    #[arg(long)]
    pub wait: bool,
}

/// Options every client command takes.
#[derive(Debug, Clone, Args)]
pub struct ClientOptions {
    /// URL of the Baton server.
    #[arg(long, env = "BATON_SERVER", default_value = "http://127.0.0.1:50051", global = true)]
    pub server: String,
    /// File holding a bearer token sent with every call.
    #[arg(long, env = "BATON_TOKEN_FILE", global = true)]
    pub token_file: Option<PathBuf>,
    /// CA certificate (PEM) an https server's certificate must chain to.
    #[arg(long, env = "BATON_CA_CERT", global = true)]
    pub ca_cert: Option<PathBuf>,
    /// Output format.
    #[arg(long, value_enum, default_value_t = OutputFormat::Table, global = true)]
    pub output: OutputFormat,
    /// How long connecting to the server may take, e.g. 5s.
    #[arg(long, env = "BATON_CONNECT_TIMEOUT", default_value = "5s", value_parser = parse_duration, global = true)]
    pub connect_timeout: Duration,
    /// How long a call may wait for the server's answer, e.g. 30s; a watch waits this long for
    /// its stream to open, `orchestrate --wait` for the execution too.
    #[arg(long, env = "BATON_TIMEOUT", default_value = "30s", value_parser = parse_duration, global = true)]
    pub timeout: Duration,
}

/// A duration as the workflow format writes them: `250ms`, `30s`, `5m`, `1h`; not zero.
fn parse_duration(text: &str) -> Result<Duration, String> {
    match baton_core::duration::parse("duration", text) {
        Ok(duration) if duration.is_zero() => Err("must be longer than 0s".to_owned()),
        Ok(duration) => Ok(duration),
        Err(e) => Err(e.to_string()),
    }
}

/// How a client command writes its answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    /// Tables and records for humans.
    Table,
    /// JSON for scripts: one document per command, one object per line when watching.
    Json,
}

/// Runs a client command against the server in `options` and returns the exit code: 0 success,
/// 1 a failed call or execution, 2 a usage error (checked before any call), 3 cancelled. A
/// failure is one line on stderr, with the gRPC code for a failed call.
#[allow(clippy::print_stderr, reason = "the CLI tells its user why it failed on stderr")]
pub async fn run(command: ClientCommand, options: &ClientOptions) -> ExitCode {
    let out = Out { format: options.output, tty: std::io::stdout().is_terminal() };
    let result = match Target::new(options) {
        Ok(target) => match execute(command, &target, &out).await {
            Ok(exit) => Ok(exit),
            Err(failure) => Err(target.explain(failure).await),
        },
        Err(failure) => Err(failure),
    };
    let exit = match result {
        Ok(exit) => exit,
        Err(failure) => {
            eprintln!("baton: {failure}");
            failure.exit()
        }
    };
    ExitCode::from(exit.code())
}

/// Where answers go.
#[derive(Debug, Clone, Copy)]
struct Out {
    format: OutputFormat,
    tty: bool,
}

impl Out {
    fn json(&self) -> bool {
        self.format == OutputFormat::Json
    }

    /// Writes text as is. A closed stdout (`| head`) is not the command's failure.
    fn text(&self, text: &str) {
        let mut stdout = std::io::stdout().lock();
        let _ = stdout.write_all(text.as_bytes()).and_then(|()| stdout.flush());
    }

    /// Writes one JSON document, pretty.
    fn document(&self, value: &serde_json::Value) {
        let text = serde_json::to_string_pretty(value).unwrap_or_else(|_| value.to_string());
        self.text(&format!("{text}\n"));
    }

    /// Writes one JSON object on one line.
    fn json_line(&self, value: &serde_json::Value) {
        self.text(&format!("{value}\n"));
    }

    /// The table text or the JSON document, by format.
    fn answer(&self, table: impl FnOnce() -> String, json: impl FnOnce() -> serde_json::Value) {
        if self.json() { self.document(&json()) } else { self.text(&table()) }
    }
}

fn usage(message: String) -> Failure {
    Failure::Usage(message)
}

async fn execute(command: ClientCommand, target: &Target, out: &Out) -> Result<Exit, Failure> {
    match command {
        ClientCommand::Service(command) => service(command, target, out).await,
        ClientCommand::Workflow(command) => workflow(command, target, out).await,
        ClientCommand::Run(args) => run_workflow(args, target, out).await,
        ClientCommand::Exec(command) => exec(command, target, out).await,
        ClientCommand::Plan(goal) => plan(goal, target, out).await,
        ClientCommand::Orchestrate(args) => orchestrate(args, target, out).await,
    }
}

fn goal(args: &GoalArgs) -> Result<pb::Goal, Failure> {
    let bounds = input::Bounds {
        max_latency_ms: args.max_latency,
        max_cost: args.max_cost,
        min_availability: args.min_availability,
    };
    input::goal(&args.have, &args.want, bounds).map_err(usage)
}

/// Fetches every page of a listing; `next` sends one request for a page token and returns the
/// page's items and the next token. Stops at `limit` items, or when the server repeats a token.
async fn all_pages<T, F, Fut>(limit: usize, mut next: F) -> Result<Vec<T>, Failure>
where
    F: FnMut(String) -> Fut,
    Fut: Future<Output = Result<(Vec<T>, String), tonic::Status>>,
{
    let mut items = Vec::new();
    let mut token = String::new();
    loop {
        let (page, next_token) = next(token.clone()).await?;
        items.extend(page);
        if items.len() >= limit || next_token.is_empty() || next_token == token {
            items.truncate(limit);
            return Ok(items);
        }
        token = next_token;
    }
}

async fn service(command: ServiceCommand, target: &Target, out: &Out) -> Result<Exit, Failure> {
    match command {
        ServiceCommand::Register { file } => {
            let text = input::read_text(&file).map_err(usage)?;
            let spec = input::parse_service_spec(&text, input::format_of(&file))
                .map_err(|e| usage(format!("{}: {e}", file.display())))?;
            let spec = baton_grpc::convert::spec_to_proto(&spec);
            let clients = target.connect().await?;
            let response = clients.registry().register(pb::RegisterRequest { spec: Some(spec) }).await?.into_inner();
            out.answer(|| view::registered_text(&response), || view::registered_json(&response));
        }
        ServiceCommand::List => {
            let clients = target.connect().await?;
            let registry = clients.registry();
            let services = all_pages(usize::MAX, |page_token| {
                let mut registry = registry.clone();
                async move {
                    let page = registry.list_services(pb::ListServicesRequest { page_size: 0, page_token }).await?;
                    let page = page.into_inner();
                    Ok((page.services, page.next_page_token))
                }
            })
            .await?;
            out.answer(
                || view::services_table(&services),
                || serde_json::Value::Array(services.iter().map(view::service_json).collect()),
            );
        }
        ServiceCommand::Get { id } => {
            let clients = target.connect().await?;
            let response = clients.registry().get_service(pb::GetServiceRequest { id }).await?.into_inner();
            let service = response.service.unwrap_or_default();
            out.answer(|| view::service_text(&service), || view::service_json(&service));
        }
        ServiceCommand::Deregister { id } => {
            let clients = target.connect().await?;
            clients.registry().deregister(pb::DeregisterRequest { id: id.clone() }).await?;
            out.answer(|| format!("service {id} deregistered\n"), || serde_json::json!({ "deregistered": id }));
        }
    }
    Ok(Exit::Success)
}

async fn workflow(command: WorkflowCommand, target: &Target, out: &Out) -> Result<Exit, Failure> {
    match command {
        WorkflowCommand::Apply { file } => {
            let source = input::read_text(&file).map_err(usage)?;
            let format = input::definition_format(&source, input::format_of(&file))
                .map_err(|e| usage(format!("{}: {e}", file.display())))?;
            let clients = target.connect().await?;
            let request = pb::ApplyDefinitionRequest { source, format: format as i32 };
            let response = clients.workflow().apply_definition(request).await?.into_inner();
            out.answer(|| view::applied_text(&response), || view::applied_json(&response));
        }
        WorkflowCommand::List { name } => {
            let clients = target.connect().await?;
            let workflows = clients.workflow();
            let name = name.unwrap_or_default();
            let definitions = all_pages(usize::MAX, |page_token| {
                let mut workflows = workflows.clone();
                let name = name.clone();
                async move {
                    let request = pb::ListDefinitionsRequest { page_size: 0, page_token, name };
                    let page = workflows.list_definitions(request).await?.into_inner();
                    Ok((page.definitions, page.next_page_token))
                }
            })
            .await?;
            out.answer(
                || view::definitions_table(&definitions),
                || serde_json::Value::Array(definitions.iter().map(view::summary_json).collect()),
            );
        }
        WorkflowCommand::Get { name, version } => {
            let clients = target.connect().await?;
            let request = pb::GetDefinitionRequest { name, version };
            let response = clients.workflow().get_definition(request).await?.into_inner();
            out.answer(|| view::definition_text(&response), || view::definition_json(&response));
        }
    }
    Ok(Exit::Success)
}

async fn run_workflow(args: RunArgs, target: &Target, out: &Out) -> Result<Exit, Failure> {
    let input_json = input::input_json(&args.input, false).map_err(usage)?;
    let clients = target.connect().await?;
    // Every start carries a key, so that a retry after a lost answer cannot start a second run.
    let chosen = args.idempotency_key.is_some();
    let key = args.idempotency_key.unwrap_or_else(|| uuid::Uuid::now_v7().to_string());
    let request = pb::StartExecutionRequest {
        workflow: args.name,
        version: args.version,
        input_json,
        idempotency_key: Some(key),
    };
    let mut response = start_execution(&clients, request, target.timeout()).await?;
    // A key made here matched only this command's own earlier attempt, whose answer was lost:
    // for the user the execution was started now.
    response.existing &= chosen;
    let execution = response.execution.clone().unwrap_or_default();
    if !(args.wait || args.watch) {
        out.answer(|| view::started_text(&response), || view::started_json(&response));
        return Ok(Exit::Success);
    }
    if !out.json() {
        out.text(&view::started_text(&response));
    }
    let steps = execution.tasks.iter().map(|task| task.step.clone());
    follow(&clients, &execution.id, 0, Progress::new(steps), args.watch, out).await
}

/// `StartExecution`, tried again with the same request (and so the same idempotency key) when
/// the connection failed: the server was unavailable or the connection was lost before the
/// answer came. At most [`retry::ATTEMPTS`] attempts, with backoff between them, and none that
/// would begin past `timeout` (`--timeout`) after the first.
async fn start_execution(
    clients: &Clients,
    request: pb::StartExecutionRequest,
    timeout: Duration,
) -> Result<pb::StartExecutionResponse, Failure> {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut attempt = 1;
    loop {
        let status = match clients.execution().start_execution(request.clone()).await {
            Ok(response) => return Ok(response.into_inner()),
            Err(status) => status,
        };
        let pause = retry::backoff(attempt);
        if attempt >= retry::ATTEMPTS
            || !retry::lost_connection(&status)
            || tokio::time::Instant::now() + pause >= deadline
        {
            return Err(status.into());
        }
        tokio::time::sleep(pause).await;
        attempt += 1;
    }
}

async fn exec(command: ExecCommand, target: &Target, out: &Out) -> Result<Exit, Failure> {
    let clients = target.connect().await?;
    let mut executions = clients.execution();
    let changed = match command {
        ExecCommand::Get { id } => {
            let execution = get_execution(&clients, &id).await?;
            out.answer(|| view::execution_text(&execution), || view::execution_json(&execution));
            return Ok(Exit::Success);
        }
        ExecCommand::List { workflow, states, idempotency_key, limit } => {
            let limit = usize::try_from(limit).unwrap_or(usize::MAX);
            let states: Vec<i32> = states.iter().map(|s| s.proto() as i32).collect();
            let workflow = workflow.unwrap_or_default();
            let idempotency_key = idempotency_key.unwrap_or_default();
            let listed = all_pages(limit, |page_token| {
                let mut executions = executions.clone();
                let request = pb::ListExecutionsRequest {
                    page_size: u32::try_from(limit).unwrap_or(u32::MAX).min(1_000),
                    page_token,
                    workflow: workflow.clone(),
                    states: states.clone(),
                    created_after: None,
                    created_before: None,
                    id_prefix: String::new(),
                    idempotency_key: idempotency_key.clone(),
                };
                async move {
                    let page = executions.list_executions(request).await?.into_inner();
                    Ok((page.executions, page.next_page_token))
                }
            })
            .await?;
            out.answer(
                || view::executions_table(&listed),
                || serde_json::Value::Array(listed.iter().map(view::execution_json).collect()),
            );
            return Ok(Exit::Success);
        }
        ExecCommand::Watch { id, from_sequence } => {
            let execution = get_execution(&clients, &id).await?;
            let steps = execution.tasks.iter().map(|task| task.step.clone());
            return follow(&clients, &id, from_sequence, Progress::new(steps), true, out).await;
        }
        ExecCommand::Pause { id } => {
            executions.pause_execution(pb::PauseExecutionRequest { id }).await?.into_inner().execution
        }
        ExecCommand::Resume { id } => {
            executions.resume_execution(pb::ResumeExecutionRequest { id }).await?.into_inner().execution
        }
        ExecCommand::Cancel { id, reason } => {
            executions.cancel_execution(pb::CancelExecutionRequest { id, reason }).await?.into_inner().execution
        }
        ExecCommand::Signal { id, name, data } => {
            let data_json = input::json_arg("--data", &data, false).map_err(usage)?;
            let request = pb::SignalExecutionRequest { id, name, data_json };
            executions.signal_execution(request).await?.into_inner().execution
        }
    };
    let execution = changed.unwrap_or_default();
    out.answer(
        || format!("execution {} is {}\n", execution.id, view::execution_state(execution.state)),
        || view::execution_json(&execution),
    );
    Ok(Exit::Success)
}

async fn get_execution(clients: &Clients, id: &str) -> Result<pb::Execution, Failure> {
    let response = clients.execution().get_execution(pb::GetExecutionRequest { id: id.to_owned() }).await?;
    response.into_inner().execution.ok_or_else(|| Failure::Other(format!("the server sent no execution for {id}")))
}

/// Follows an execution's journal until it ends, showing progress when `live`, then shows the
/// final record and returns the exit code by its outcome.
async fn follow(
    clients: &Clients,
    id: &str,
    from_sequence: u64,
    mut progress: Progress,
    live: bool,
    out: &Out,
) -> Result<Exit, Failure> {
    let request = pb::WatchExecutionRequest { id: id.to_owned(), from_sequence };
    let mut stream = clients.execution().watch_execution(request).await?.into_inner();
    let mut screen = Live::new(out.tty);
    while let Some(message) = stream.message().await? {
        let Some(event) = message.event else { continue };
        let lines = progress.apply(&event);
        if live {
            if out.json() {
                out.json_line(&view::event_json(&event));
            } else {
                out.text(&screen.frame(&lines, &progress.bar()));
            }
        }
        if progress.end().is_some() {
            // Read the stream to its end, which the server sends with the terminal event, so
            // that no trailers arrive for a stream this client reset (see README, clients).
            let rest = async { while let Ok(Some(_)) = stream.message().await {} };
            let _ = tokio::time::timeout(std::time::Duration::from_secs(2), rest).await;
            break;
        }
    }
    if live && !out.json() {
        out.text(screen.finish());
    }
    // The record, for the output and the tasks' final states. Watching from past the end
    // sends no end event; the record still tells how the execution ended.
    let execution = get_execution(clients, id).await?;
    let ended = matches!(
        pb::ExecutionState::try_from(execution.state),
        Ok(pb::ExecutionState::Completed | pb::ExecutionState::Failed | pb::ExecutionState::Cancelled)
    );
    if !ended {
        return Err(Failure::Other(format!(
            "the watch of execution {id} ended while it is {}",
            view::execution_state(execution.state)
        )));
    }
    if out.json() {
        if live {
            out.json_line(&serde_json::json!({ "kind": "execution", "execution": view::execution_json(&execution) }));
        } else {
            out.document(&view::execution_json(&execution));
        }
    } else {
        out.text("\n");
        out.text(&view::execution_text(&execution));
    }
    Ok(exit_for_state(execution.state))
}

async fn plan(args: GoalArgs, target: &Target, out: &Out) -> Result<Exit, Failure> {
    let goal = goal(&args)?;
    let clients = target.connect().await?;
    let response = clients.planner().plan(pb::PlanRequest { goal: Some(goal) }).await?.into_inner();
    let plan = response.plan.unwrap_or_default();
    out.answer(|| view::plan_text(&plan), || view::plan_json(&plan));
    Ok(Exit::Success)
}

/// The longest the server waits for the execution of an `Orchestrate` with `wait`.
const ORCHESTRATE_WAIT: Duration = Duration::from_secs(600);

async fn orchestrate(args: OrchestrateArgs, target: &Target, out: &Out) -> Result<Exit, Failure> {
    let goal = goal(&args.goal)?;
    let input_json = input::input_json(&args.input, true).map_err(usage)?;
    // The server waits up to 10 minutes for the execution, on top of the call itself.
    let wait = if args.wait { ORCHESTRATE_WAIT } else { Duration::ZERO };
    let clients = target.connect_waiting(wait).await?;
    let request = pb::OrchestrateRequest { goal: Some(goal), input_json, wait: args.wait };
    let response = clients.orchestrator().orchestrate(request).await?.into_inner();
    out.answer(|| view::orchestrated_text(&response), || view::orchestrated_json(&response));
    Ok(if args.wait { exit_for_state(response.state) } else { Exit::Success })
}

#[cfg(test)]
mod tests;
