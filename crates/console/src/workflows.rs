//! Workflows: the list with versions, and a page per workflow with its graph, its definition,
//! a diff between versions and a form that starts an execution.

use std::collections::BTreeMap;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use baton_core::api::DefinitionQuery;
use baton_core::{StepId, StepTarget, TaskStatus, Template, WorkflowDefinition, WorkflowName};
use maud::{Markup, html};
use serde::Deserialize;

use crate::auth::Context;
use crate::diff::{self, Line};
use crate::graph::{EdgeKind, Graph, Node, NodeKind};
use crate::view::{self, Section};
use crate::{PageError, Shared};

/// Workflows per page of the list.
const PAGE: usize = 100;
/// Versions a workflow page lists.
const VERSIONS: usize = 50;

#[derive(Debug, Deserialize)]
pub(crate) struct ListQuery {
    after: Option<String>,
}

pub(crate) async fn list(State(console): State<Shared>, context: Context, Query(query): Query<ListQuery>) -> Response {
    let request = DefinitionQuery { name: None, page_token: query.after.filter(|a| !a.is_empty()), limit: PAGE };
    let page = match console.backends.workflows.list(request).await {
        Ok(page) => page,
        Err(e) => {
            let e = PageError::from(e);
            return view::error_page(&context, e.status(), "Workflows", e.message());
        }
    };
    let body = html! {
        @if page.definitions.is_empty() {
            p.note { "No workflow has been applied. Apply one with " code { "baton workflow apply FILE" } "." }
        } @else {
            table #workflows {
                thead { tr { th scope="col" { "Workflow" } th scope="col" .num { "Latest version" } th scope="col" .num { "Steps" } th scope="col" { "Description" } th scope="col" { "Applied" } } }
                tbody { @for d in &page.definitions {
                    tr {
                        td { a href=(format!("/workflows/{}", d.name)) { (d.name) } }
                        td.num { (d.version) }
                        td.num { (d.step_count) }
                        td { (d.description) }
                        td { (view::time(d.created_at)) }
                    }
                } }
            }
        }
        @if let Some(next) = &page.next {
            p { a rel="next" href=(format!("/workflows?after={}", crate::services::encode(next))) { "Next page →" } }
        }
    };
    view::page(&context, StatusCode::OK, "Workflows", Some(Section::Workflows), body)
}

/// The graph of a definition's steps; with `tasks`, coloured by their states and labelled with
/// the service that answered.
pub(crate) fn definition_graph(definition: &WorkflowDefinition, tasks: Option<&BTreeMap<StepId, TaskStatus>>) -> Graph {
    let nodes = definition
        .steps
        .iter()
        .map(|step| {
            let task = tasks.and_then(|t| t.get(&step.id));
            let target = match &step.target {
                StepTarget::Service { id, .. } => id.to_string(),
                StepTarget::Query(requirements) => format!("any {}", requirements.capabilities.join(", ")),
            };
            let detail = task.and_then(|t| t.service.as_ref()).map_or(target, ToString::to_string);
            Node {
                id: step.id.to_string(),
                detail,
                state: task.map(|t| view::task_state_name(t.state).to_owned()),
                kind: NodeKind::Call,
            }
        })
        .collect();
    let mut graph = Graph { nodes, ..Graph::default() };
    for step in &definition.steps {
        for dependency in &step.depends_on {
            graph.connect(dependency.as_str(), step.id.as_str(), EdgeKind::Dependency);
        }
        // The definition was checked when applied, so its templates compile.
        if let Ok(template) = Template::compile("input", &step.input) {
            for read in template.referenced_steps() {
                graph.connect(&read, step.id.as_str(), EdgeKind::Data);
            }
        }
    }
    graph
}

#[derive(Debug, Deserialize)]
pub(crate) struct PageQuery {
    version: Option<u32>,
    diff: Option<u32>,
}

pub(crate) async fn page(
    State(console): State<Shared>,
    context: Context,
    Path(name): Path<String>,
    Query(query): Query<PageQuery>,
) -> Response {
    let title = format!("Workflow {name}");
    match render(&console, &context, &name, &query).await {
        Ok(body) => view::page(&context, StatusCode::OK, &title, Some(Section::Workflows), body),
        Err(e) => view::error_page(&context, e.status(), &title, e.message()),
    }
}

async fn render(console: &Shared, context: &Context, name: &str, query: &PageQuery) -> Result<Markup, PageError> {
    let name = WorkflowName::new(name)?;
    let workflows = &console.backends.workflows;
    let detail = workflows.get(name.clone(), query.version).await?;
    let version = detail.summary.version;
    let versions =
        workflows.list(DefinitionQuery { name: Some(name.clone()), page_token: None, limit: VERSIONS }).await?;
    let definition: WorkflowDefinition = serde_json::from_value(detail.definition.clone()).map_err(|e| {
        PageError::new(StatusCode::INTERNAL_SERVER_ERROR, format!("stored definition does not read: {e}"))
    })?;
    let text = serde_json::to_string_pretty(&detail.definition).unwrap_or_default();
    let other = match query.diff {
        Some(other) if other != version => {
            let other_detail = workflows.get(name.clone(), Some(other)).await?;
            Some((other, serde_json::to_string_pretty(&other_detail.definition).unwrap_or_default()))
        }
        _ => None,
    };
    let diff = other.as_ref().map(|(other, other_text)| (*other, diff::lines(other_text, &text)));
    let graph = definition_graph(&definition, None);
    Ok(html! {
        p.lead { (definition.description) }
        dl.facts {
            dt { "Version" } dd { (version) " of " (versions.definitions.first().map_or(version, |d| d.version)) }
            dt { "Steps" } dd { (detail.summary.step_count) }
            dt { "Applied" } dd { (view::time(detail.summary.created_at)) }
            dt { "Content hash" } dd { code { (detail.summary.content_hash) } }
        }
        div.split {
            section aria-labelledby="graph-heading" {
                h2 #graph-heading { "Steps" }
                p.note { "Levels run left to right; dashed edges are data read from a step's output." }
                div.graph-box { (graph.svg(&format!("Steps of {name} version {version}"), &|_| None)) }
                h2 { "Start an execution" }
                (start_form(context, &name, version))
            }
            section aria-labelledby="source-heading" {
                h2 #source-heading { "Definition" }
                @if let Some((other, lines)) = &diff {
                    h3 { "Changes from version " (other) " to " (version) }
                    @match lines {
                        Some(lines) => (diff_view(lines)),
                        None => p.note { "Too long to compare line by line." },
                    }
                } @else {
                    (view::json(&detail.definition))
                }
            }
        }
        section aria-labelledby="versions-heading" {
            h2 #versions-heading { "Versions" }
            table #versions {
                thead { tr { th scope="col" .num { "Version" } th scope="col" .num { "Steps" } th scope="col" { "Applied" } th scope="col" { "Compare" } } }
                tbody { @for v in &versions.definitions {
                    tr {
                        td.num { a href=(format!("/workflows/{name}?version={}", v.version)) { (v.version) } }
                        td.num { (v.step_count) }
                        td { (view::time(v.created_at)) }
                        td { @if v.version != version {
                            a href=(format!("/workflows/{name}?version={version}&diff={}", v.version)) { "changes since " (v.version) }
                        } }
                    }
                } }
            }
        }
    })
}

fn diff_view(lines: &[Line<'_>]) -> Markup {
    html! {
        pre.diff tabindex="0" { code {
            @for line in lines {
                @match line {
                    Line::Same(text) => span.same { "  " (text) "\n" },
                    Line::Removed(text) => del { "- " (text) "\n" },
                    Line::Added(text) => ins { "+ " (text) "\n" },
                }
            }
        } }
    }
}

/// The form that starts an execution of `name` at `version`.
pub(crate) fn start_form(context: &Context, name: &WorkflowName, version: u32) -> Markup {
    html! {
        form.card.start method="post" action="/executions" data-json-form {
            input type="hidden" name="csrf" value=(context.csrf);
            input type="hidden" name="workflow" value=(name);
            input type="hidden" name="version" value=(version);
            label for="input" { "Input (JSON)" }
            textarea #input name="input" rows="6" spellcheck="false" data-json aria-describedby="input-error" { "{}" }
            p #input-error .field-error aria-live="polite" {}
            label for="idempotency_key" { "Idempotency key (optional)" }
            input #idempotency_key type="text" name="idempotency_key" maxlength="256";
            button type="submit" { "Start execution" }
        }
    }
}
