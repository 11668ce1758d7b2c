//! Executions: the filtered list, a live page per execution, and the actions on it.

use std::convert::Infallible;

use axum::Form;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Redirect, Response};
use baton_core::api::{ExecutionQuery, StartExecution};
use baton_core::{
    Event, Execution, ExecutionId, ExecutionState, IdPrefix, IdempotencyKey, Order, PageRequest, PageToken, Timestamp,
    WorkflowDefinition, WorkflowName,
};
use futures_util::StreamExt;
use maud::{Markup, html};
use serde::Deserialize;

use crate::auth::Context;
use crate::services::{encode, short};
use crate::view::{self, Section};
use crate::{PageError, Shared};

/// Executions per page of the list.
pub(crate) const PAGE: usize = 50;
/// Executions one list page reads at most while filters the store cannot apply drop some.
const MAX_SCANNED: usize = 5_000;
/// Journal events the event log shows (the newest; the timeline uses them all).
const MAX_LOGGED_EVENTS: usize = 1_000;

const STATES: [ExecutionState; 6] = [
    ExecutionState::Created,
    ExecutionState::Running,
    ExecutionState::Paused,
    ExecutionState::Completed,
    ExecutionState::Failed,
    ExecutionState::Cancelled,
];

/// The list's filters, as the form sends them.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct ListQuery {
    #[serde(default)]
    workflow: String,
    #[serde(default)]
    state: String,
    /// `YYYY-MM-DDTHH:MM` (a `datetime-local` input), UTC.
    #[serde(default)]
    from: String,
    #[serde(default)]
    to: String,
    #[serde(default)]
    id: String,
    /// Trimmed as the start form trims the key it sends.
    #[serde(default)]
    idempotency_key: String,
    after: Option<String>,
}

impl ListQuery {
    fn to_query(&self) -> Result<ExecutionQuery, PageError> {
        let time = |field: &str, text: &str| -> Result<Option<Timestamp>, PageError> {
            let text = text.trim();
            if text.is_empty() {
                return Ok(None);
            }
            let parsed = chrono::NaiveDateTime::parse_from_str(text, "%Y-%m-%dT%H:%M")
                .or_else(|_| chrono::NaiveDateTime::parse_from_str(text, "%Y-%m-%dT%H:%M:%S"))
                .map_err(|_| {
                    PageError::bad_request(format!("{field}: {text:?} is not a time like 2025-01-31T13:45"))
                })?;
            Ok(Some(parsed.and_utc()))
        };
        let states = match self.state.as_str() {
            "" => Vec::new(),
            "active" => vec![ExecutionState::Created, ExecutionState::Running, ExecutionState::Paused],
            name => vec![
                STATES
                    .into_iter()
                    .find(|s| s.to_string() == name)
                    .ok_or_else(|| PageError::bad_request(format!("state: {name:?} is not a state")))?,
            ],
        };
        Ok(ExecutionQuery {
            workflow: match self.workflow.trim() {
                "" => None,
                name => Some(WorkflowName::new(name)?),
            },
            states,
            created_from: time("from", &self.from)?,
            created_before: time("to", &self.to)?,
            id_prefix: match self.id.trim() {
                "" => None,
                text => Some(IdPrefix::new(text)?),
            },
            idempotency_key: match self.idempotency_key.trim() {
                "" => None,
                key => Some(IdempotencyKey::new(key)?),
            },
        })
    }

    /// The query string of these filters, without the page.
    pub(crate) fn filters(&self) -> String {
        [
            ("workflow", &self.workflow),
            ("state", &self.state),
            ("from", &self.from),
            ("to", &self.to),
            ("id", &self.id),
            ("idempotency_key", &self.idempotency_key),
        ]
        .iter()
        .filter(|(_, v)| !v.is_empty())
        .map(|(k, v)| format!("{k}={}", encode(v)))
        .collect::<Vec<_>>()
        .join("&")
    }
}

/// One page of executions matching `query`, newest first, after `token`: filled up to
/// [`PAGE`] from store pages, reading at most [`MAX_SCANNED`]. The token of the next page,
/// if there is more.
pub(crate) async fn find(
    console: &Shared,
    query: &ExecutionQuery,
    mut token: Option<PageToken>,
) -> Result<(Vec<Execution>, Option<PageToken>), PageError> {
    let mut found = Vec::new();
    let mut scanned = 0usize;
    loop {
        let request = PageRequest { limit: PAGE as u32, order: Order::NewestFirst, token: token.clone() };
        let page = console.backends.executions.list(query.clone(), request).await?;
        scanned += PAGE;
        for execution in page.executions {
            if found.len() == PAGE {
                break;
            }
            found.push(execution);
        }
        if found.len() == PAGE {
            let last = found.last().map(|last: &Execution| PageToken::at(last.created_at, last.id));
            return Ok((found, last));
        }
        match page.next {
            None => return Ok((found, None)),
            Some(next) if scanned >= MAX_SCANNED => return Ok((found, Some(next))),
            Some(next) => token = Some(next),
        }
    }
}

pub(crate) async fn list(State(console): State<Shared>, context: Context, Query(form): Query<ListQuery>) -> Response {
    let result = async {
        let query = form.to_query()?;
        if let Some(id) = query.id_prefix.as_ref().and_then(IdPrefix::whole) {
            return Ok(Err(id));
        }
        let token = form.after.clone().filter(|t| !t.is_empty()).map(PageToken::from_text);
        if let Some(token) = &token {
            token.position().map_err(|e| PageError::bad_request(e.to_string()))?;
        }
        Ok(Ok(find(&console, &query, token).await?))
    }
    .await;
    let (executions, next, error) = match result {
        // A whole id is a deep link.
        Ok(Err(id)) => return Redirect::to(&format!("/executions/{id}")).into_response(),
        Ok(Ok((executions, next))) => (executions, next, None),
        Err(e) => (Vec::new(), None, Some(e)),
    };
    let status = error.as_ref().map_or(StatusCode::OK, PageError::status);
    let body = html! {
        form.filters method="get" action="/executions" {
            div.field { label for="f-workflow" { "Workflow" } input #f-workflow type="text" name="workflow" value=(form.workflow); }
            div.field {
                label for="f-state" { "State" }
                select #f-state name="state" {
                    option value="" selected[form.state.is_empty()] { "any" }
                    option value="active" selected[form.state == "active"] { "unfinished" }
                    @for s in STATES {
                        @let name = s.to_string();
                        option value=(name) selected[form.state == name] { (name) }
                    }
                }
            }
            div.field { label for="f-from" { "Created from (UTC)" } input #f-from type="datetime-local" name="from" value=(form.from); }
            div.field { label for="f-to" { "Created before (UTC)" } input #f-to type="datetime-local" name="to" value=(form.to); }
            div.field { label for="f-id" { "Id or its start" } input #f-id type="text" name="id" value=(form.id) spellcheck="false"; }
            div.field { label for="f-key" { "Idempotency key" } input #f-key type="text" name="idempotency_key" value=(form.idempotency_key) maxlength="256" spellcheck="false"; }
            button type="submit" { "Filter" }
        }
        @if let Some(error) = &error { (view::error_box(error.message())) }
        (table(&executions))
        @if let Some(next) = &next {
            p { a rel="next" href=(format!("/executions?{}&after={}", form.filters(), encode(next.as_str()))) { "Next page →" } }
        }
    };
    view::page(&context, status, "Executions", Some(Section::Executions), body)
}

/// A table of executions, newest first.
pub(crate) fn table(executions: &[Execution]) -> Markup {
    html! {
        @if executions.is_empty() {
            p.note { "No execution matches." }
        } @else {
            div.scroll {
                table.executions {
                    thead { tr { th scope="col" { "Execution" } th scope="col" { "Workflow" } th scope="col" { "State" } th scope="col" { "Created" } th scope="col" { "Updated" } } }
                    tbody { @for e in executions {
                        tr data-execution=(e.id) {
                            td { a href=(format!("/executions/{}", e.id)) { code title=(e.id) { (short(&e.id.to_string())) } } }
                            td { a href=(format!("/workflows/{}?version={}", e.workflow, e.version)) { (e.workflow) } " v" (e.version) }
                            td { (view::execution_state_badge(e.state)) }
                            td { (view::time(e.created_at)) }
                            td { (view::time(e.updated_at)) }
                        }
                    } }
                }
            }
        }
    }
}

fn parse_id(text: &str) -> Result<ExecutionId, PageError> {
    text.parse::<ExecutionId>().map_err(|e| PageError::new(StatusCode::NOT_FOUND, e.to_string()))
}

/// What an execution page shows.
struct Loaded {
    execution: Execution,
    definition: Option<WorkflowDefinition>,
    events: Vec<Event>,
}

async fn load(console: &Shared, id: &str) -> Result<Loaded, PageError> {
    let id = parse_id(id)?;
    let backends = &console.backends;
    let execution = backends.executions.get(id).await?;
    // The journal after the record: it holds at least what the record shows.
    let events = backends.executions.journal(id, 1).await?;
    let definition = backends
        .workflows
        .get(execution.workflow.clone(), Some(execution.version))
        .await
        .ok()
        .and_then(|detail| serde_json::from_value(detail.definition).ok());
    Ok(Loaded { execution, definition, events })
}

pub(crate) async fn page(State(console): State<Shared>, context: Context, Path(id): Path<String>) -> Response {
    let title = format!("Execution {id}");
    let loaded = match load(&console, &id).await {
        Ok(loaded) => loaded,
        Err(e) => return view::error_page(&context, e.status(), &title, e.message()),
    };
    let e = &loaded.execution;
    let next_sequence = loaded.events.last().map_or(1, |event| event.sequence + 1);
    let body = html! {
        div #live data-live=(format!("/executions/{}/live", e.id))
            data-events=[(!e.state.is_terminal()).then(|| format!("/executions/{}/events?from={next_sequence}", e.id))] {
            (live_regions(&context, &loaded))
        }
    };
    view::page(&context, StatusCode::OK, &title, Some(Section::Executions), body)
}

/// The parts of an execution page that change as it runs; the script swaps them in.
pub(crate) async fn live(State(console): State<Shared>, context: Context, Path(id): Path<String>) -> Response {
    match load(&console, &id).await {
        Ok(loaded) => {
            let mut response = live_regions(&context, &loaded).into_string().into_response();
            response.headers_mut().insert(
                axum::http::header::CONTENT_TYPE,
                axum::http::HeaderValue::from_static("text/html; charset=utf-8"),
            );
            response
        }
        Err(e) => (e.status(), e.message().to_owned()).into_response(),
    }
}

fn live_regions(context: &Context, loaded: &Loaded) -> Markup {
    let e = &loaded.execution;
    let attempts = view::attempts(&loaded.events);
    let now = if e.state.is_terminal() { e.updated_at } else { chrono::Utc::now() };
    let done = e.tasks.values().filter(|t| t.state == baton_core::TaskState::Succeeded).count();
    let logged = &loaded.events[loaded.events.len().saturating_sub(MAX_LOGGED_EVENTS)..];
    html! {
        div data-region="summary" {
            dl.facts {
                dt { "State" } dd #state data-state=(e.state) { (view::execution_state_badge(e.state)) }
                dt { "Workflow" } dd { a href=(format!("/workflows/{}?version={}", e.workflow, e.version)) { (e.workflow) } " version " (e.version) }
                dt { "Steps succeeded" } dd { (done) " of " (e.tasks.len()) }
                dt { "Created" } dd { (view::time(e.created_at)) }
                dt { "Updated" } dd { (view::time(e.updated_at)) }
            }
            @if let Some(error) = &e.error { (view::error_box(error)) }
        }
        div data-region="actions" { (actions(context, e)) }
        section aria-labelledby="graph-heading" data-region="graph" {
            h2 #graph-heading { "Steps" }
            @match &loaded.definition {
                Some(definition) => {
                    @let graph = crate::workflows::definition_graph(definition, Some(&e.tasks));
                    div.graph-box { (graph.svg(&format!("Steps of execution {}", e.id), &|_| None)) }
                    ul.legend aria-label="Step states" {
                        @for state in ["pending", "scheduled", "running", "waiting", "succeeded", "failed", "skipped", "cancelled"] {
                            li { span class=(format!("swatch state-{state}")) {} (state) }
                        }
                    }
                }
                None => p.note { "The definition of this version could not be read." },
            }
        }
        section aria-labelledby="timeline-heading" data-region="timeline" {
            h2 #timeline-heading { "Timeline" }
            div.graph-box { (view::gantt(&attempts, now)) }
        }
        section aria-labelledby="tasks-heading" data-region="tasks" {
            h2 #tasks-heading { "Tasks" }
            div.scroll { table #tasks {
                thead { tr { th scope="col" { "Step" } th scope="col" { "State" } th scope="col" .num { "Attempts" } th scope="col" { "Service" } th scope="col" { "Error" } } }
                tbody { @for (step, task) in &e.tasks {
                    @let state = view::task_state_name(task.state);
                    tr data-step=(step) data-state=(state) {
                        td { (step) }
                        td { span class=(format!("badge state-{state}")) { (state) } }
                        td.num { (task.attempts) }
                        td { @if let Some(service) = &task.service { a href=(format!("/services/{service}")) { (service) } } }
                        td.message { @if let Some(error) = &task.error { (error) } }
                    }
                } }
            } }
        }
        div.split data-region="data" {
            section aria-labelledby="input-heading" { h2 #input-heading { "Input" } (view::json(&e.input)) }
            section aria-labelledby="output-heading" {
                h2 #output-heading { "Output" }
                @match &e.output { Some(output) => (view::json(output)), None => p.note { "None yet." } }
            }
        }
        section aria-labelledby="events-heading" data-region="events" {
            h2 #events-heading { "Event log" }
            @if logged.len() < loaded.events.len() { p.note { "The newest " (logged.len()) " of " (loaded.events.len()) " events." } }
            div.scroll { table #events {
                thead { tr { th scope="col" .num { "#" } th scope="col" { "When" } th scope="col" { "Event" } th scope="col" { "Details" } } }
                tbody { @for event in logged {
                    @let (what, details) = view::event_summary(&event.kind);
                    tr { td.num { (event.sequence) } td { (view::time(event.at)) } td { (what) } td.message { (details) } }
                } }
            } }
        }
    }
}

fn actions(context: &Context, e: &Execution) -> Markup {
    html! {
        @if !e.state.is_terminal() {
            div.actions {
                @if e.state == ExecutionState::Running {
                    form method="post" action=(format!("/executions/{}/pause", e.id)) {
                        input type="hidden" name="csrf" value=(context.csrf);
                        button #pause type="submit" { "Pause" }
                    }
                }
                @if e.state == ExecutionState::Paused {
                    form method="post" action=(format!("/executions/{}/resume", e.id)) {
                        input type="hidden" name="csrf" value=(context.csrf);
                        button #resume type="submit" { "Resume" }
                    }
                }
                form.signal method="post" action=(format!("/executions/{}/signal", e.id)) data-json-form {
                    input type="hidden" name="csrf" value=(context.csrf);
                    label for="signal-name" { "Signal" }
                    input #signal-name type="text" name="name" required maxlength="128"
                        pattern="[A-Za-z0-9._:/\\-]+" placeholder="approve";
                    label for="signal-data" { "Data (JSON, optional)" }
                    textarea #signal-data name="data" rows="2" spellcheck="false" data-json aria-describedby="signal-data-error" {}
                    p #signal-data-error .field-error aria-live="polite" {}
                    button #signal type="submit" { "Send signal" }
                }
                form.cancel method="post" action=(format!("/executions/{}/cancel", e.id))
                    data-confirm="Cancel this execution? Its steps stop for good; it cannot be resumed." {
                    input type="hidden" name="csrf" value=(context.csrf);
                    label for="reason" { "Reason" }
                    input #reason type="text" name="reason" required maxlength="1024" placeholder="why it is cancelled";
                    button #cancel.danger type="submit" { "Cancel execution" }
                }
            }
        }
    }
}

#[derive(Debug, Deserialize)]
pub(crate) struct EventsQuery {
    from: Option<u64>,
}

/// The execution's journal from `from` on as server-sent events: `journal` per event (its
/// sequence and kind), then `end` after the event that ends it. The page reloads its live
/// parts on each.
pub(crate) async fn events(
    State(console): State<Shared>,
    Path(id): Path<String>,
    Query(query): Query<EventsQuery>,
) -> Response {
    let id = match parse_id(&id) {
        Ok(id) => id,
        Err(e) => return (e.status(), e.message().to_owned()).into_response(),
    };
    let stream = match console.backends.executions.watch(id, query.from.unwrap_or(1)).await {
        Ok(stream) => stream,
        Err(e) => {
            let e = PageError::from(e);
            return (e.status(), e.message().to_owned()).into_response();
        }
    };
    let mut stopping = console.stopping.clone();
    let stopped = async move {
        let _ = stopping.wait_for(|stop| *stop).await;
    };
    let journal = stream.take_until(stopped).map(|item| {
        Ok::<_, Infallible>(match item {
            Ok(event) => SseEvent::default().event("journal").id(event.sequence.to_string()).data(
                serde_json::json!({ "sequence": event.sequence, "kind": view::event_summary(&event.kind).0 })
                    .to_string(),
            ),
            Err(e) => SseEvent::default().event("failure").data(e.to_string()),
        })
    });
    let end = futures_util::stream::once(async { Ok(SseEvent::default().event("end").data("")) });
    Sse::new(journal.chain(end)).keep_alive(KeepAlive::default()).into_response()
}

#[derive(Debug, Deserialize)]
pub(crate) struct StartForm {
    csrf: String,
    workflow: String,
    version: Option<String>,
    #[serde(default)]
    input: String,
    #[serde(default)]
    idempotency_key: String,
}

pub(crate) async fn start(State(console): State<Shared>, context: Context, Form(form): Form<StartForm>) -> Response {
    let result = async {
        context.check_csrf(&form.csrf)?;
        let workflow = WorkflowName::new(form.workflow.trim())?;
        let version = match form.version.as_deref().map(str::trim) {
            None | Some("") => None,
            Some(text) => Some(
                text.parse::<u32>()
                    .map_err(|_| PageError::bad_request(format!("version: {text:?} is not a number")))?,
            ),
        };
        let input = match form.input.trim() {
            "" => serde_json::json!({}),
            text => serde_json::from_str(text)
                .map_err(|e| PageError::bad_request(format!("invalid input: not JSON: {e}")))?,
        };
        let idempotency_key = match form.idempotency_key.trim() {
            "" => None,
            key => Some(IdempotencyKey::new(key)?),
        };
        let started = console
            .backends
            .executions
            .start(StartExecution { workflow, version, input, idempotency_key, trace: None })
            .await?;
        Ok::<_, PageError>(started.execution.id)
    }
    .await;
    match result {
        Ok(id) => Redirect::to(&format!("/executions/{id}")).into_response(),
        Err(e) => view::page(
            &context,
            e.status(),
            "Execution not started",
            Some(Section::Executions),
            html! {
                (view::error_box(e.message()))
                p { a href=(format!("/workflows/{}", encode(&form.workflow))) { "Back to the workflow" } }
            },
        ),
    }
}

#[derive(Debug, Deserialize)]
pub(crate) struct ActionForm {
    csrf: String,
    #[serde(default)]
    reason: String,
    /// A signal's name.
    #[serde(default)]
    name: String,
    /// A signal's data, JSON; empty is null.
    #[serde(default)]
    data: String,
}

async fn act(
    console: &Shared,
    context: &Context,
    id: &str,
    form: &ActionForm,
    action: &str,
) -> Result<ExecutionId, PageError> {
    context.check_csrf(&form.csrf)?;
    let id = parse_id(id)?;
    let executions = &console.backends.executions;
    match action {
        "pause" => executions.pause(id).await?,
        "resume" => executions.resume(id).await?,
        "signal" => {
            let data = match form.data.trim() {
                "" => serde_json::Value::Null,
                text => {
                    serde_json::from_str(text).map_err(|e| PageError::bad_request(format!("data: not JSON: {e}")))?
                }
            };
            executions.signal(id, form.name.trim().to_owned(), data).await?
        }
        _ => {
            let reason = form.reason.trim();
            if reason.is_empty() {
                return Err(PageError::bad_request("reason: say why the execution is cancelled"));
            }
            executions.cancel(id, reason.to_owned()).await?
        }
    };
    Ok(id)
}

async fn action_response(console: Shared, context: Context, id: String, form: ActionForm, action: &str) -> Response {
    match act(&console, &context, &id, &form, action).await {
        Ok(id) => Redirect::to(&format!("/executions/{id}")).into_response(),
        Err(e) => view::page(
            &context,
            e.status(),
            &format!("Could not {action} the execution"),
            Some(Section::Executions),
            html! {
                (view::error_box(e.message()))
                p { a href=(format!("/executions/{}", encode(&id))) { "Back to the execution" } }
            },
        ),
    }
}

pub(crate) async fn pause(
    State(c): State<Shared>,
    context: Context,
    Path(id): Path<String>,
    Form(f): Form<ActionForm>,
) -> Response {
    action_response(c, context, id, f, "pause").await
}

pub(crate) async fn resume(
    State(c): State<Shared>,
    context: Context,
    Path(id): Path<String>,
    Form(f): Form<ActionForm>,
) -> Response {
    action_response(c, context, id, f, "resume").await
}

pub(crate) async fn cancel(
    State(c): State<Shared>,
    context: Context,
    Path(id): Path<String>,
    Form(f): Form<ActionForm>,
) -> Response {
    action_response(c, context, id, f, "cancel").await
}

pub(crate) async fn signal(
    State(c): State<Shared>,
    context: Context,
    Path(id): Path<String>,
    Form(f): Form<ActionForm>,
) -> Response {
    action_response(c, context, id, f, "signal").await
}
