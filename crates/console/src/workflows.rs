//! Workflows: the list with versions, and a page per workflow with its graph, its definition,
//! a diff between versions and a form that starts an execution.

use std::collections::BTreeMap;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use baton_core::api::DefinitionQuery;
use baton_core::{
    Step, StepAction, StepId, StepTarget, TaskStatus, Template, WaitSpec, WorkflowDefinition, WorkflowName,
};
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

/// The graph of a definition's steps, nested blocks included (their nodes are named by the
/// task paths the executor journals, a loop's body by `*` for any iteration); with `tasks`,
/// coloured by their states and labelled with the service that answered.
pub(crate) fn definition_graph(definition: &WorkflowDefinition, tasks: Option<&BTreeMap<StepId, TaskStatus>>) -> Graph {
    let mut graph = Graph::default();
    add_block(&mut graph, None, &definition.steps, tasks);
    graph
}

/// Adds `steps` under `prefix` (none for the top level), their dependency and data edges, and
/// a containment edge from `parent` to each.
fn add_block(graph: &mut Graph, prefix: Option<&str>, steps: &[Step], tasks: Option<&BTreeMap<StepId, TaskStatus>>) {
    let path = |id: &str| prefix.map_or_else(|| id.to_owned(), |p| format!("{p}/{id}"));
    for step in steps {
        let id = path(step.id.as_str());
        let task = tasks.and_then(|t| StepId::new(&id).ok().and_then(|key| t.get(&key)));
        let (kind, described) = describe(&step.action);
        let detail = task.and_then(|t| t.service.as_ref()).map_or(described, ToString::to_string);
        graph.nodes.push(Node { id, detail, state: task.map(|t| view::task_state_name(t.state).to_owned()), kind });
    }
    for step in steps {
        let id = path(step.id.as_str());
        for dependency in &step.depends_on {
            graph.connect(&path(dependency.as_str()), &id, EdgeKind::Dependency);
        }
        // The definition was checked when applied, so its templates compile.
        if let Some(input) = step.input()
            && let Ok(template) = Template::compile("input", input)
        {
            for read in template.referenced_steps() {
                graph.connect(&path(&read), &id, EdgeKind::Data);
            }
        }
        let blocks: Vec<(String, &[Step])> = match &step.action {
            StepAction::Do(inner) => vec![(id.clone(), inner.as_slice())],
            StepAction::For(_, inner) | StepAction::Repeat(_, inner) => vec![(format!("{id}/*"), inner.as_slice())],
            StepAction::Switch(cases) => cases
                .iter()
                .enumerate()
                .map(|(i, case)| {
                    let name = case.name.as_ref().map_or_else(|| i.to_string(), ToString::to_string);
                    (format!("{id}/{name}"), case.steps.as_slice())
                })
                .collect(),
            StepAction::Fork(fork) => {
                fork.branches.iter().map(|b| (format!("{id}/{}", b.name), b.steps.as_slice())).collect()
            }
            StepAction::Try(body, catch) => {
                vec![(format!("{id}/try"), body.as_slice()), (format!("{id}/catch"), catch.steps.as_slice())]
            }
            _ => Vec::new(),
        };
        for (inner_prefix, inner) in blocks {
            add_block(graph, Some(&inner_prefix), inner, tasks);
            for nested in inner.iter().filter(|s| s.depends_on.is_empty()) {
                graph.connect(&id, &format!("{inner_prefix}/{}", nested.id), EdgeKind::Contains);
            }
        }
    }
}

/// A step's node kind and the second line of its node.
fn describe(action: &StepAction) -> (NodeKind, String) {
    match action {
        StepAction::Call { target: StepTarget::Service { id, .. }, .. } => (NodeKind::Call, id.to_string()),
        StepAction::Call { target: StepTarget::Query(requirements), .. } => {
            (NodeKind::Call, format!("any {}", requirements.capabilities.join(", ")))
        }
        StepAction::Set(_) => (NodeKind::Set, "set".to_owned()),
        StepAction::Do(steps) => (NodeKind::Block, format!("do {} steps", steps.len())),
        StepAction::Switch(cases) => (NodeKind::Switch, format!("switch, {} cases", cases.len())),
        StepAction::For(spec, _) => (NodeKind::Loop, format!("for each {}", spec.items)),
        StepAction::Repeat(spec, _) => {
            (NodeKind::Loop, format!("{} {}", if spec.until { "until" } else { "while" }, spec.condition))
        }
        StepAction::Fork(fork) => (
            NodeKind::Fork,
            format!("fork {} branches{}", fork.branches.len(), if fork.compete { ", compete" } else { "" }),
        ),
        StepAction::Try(..) => (NodeKind::Try, "try / catch".to_owned()),
        StepAction::Raise(raise) => (NodeKind::Raise, format!("raise {}", raise.kind)),
        StepAction::Wait(WaitSpec::For(duration)) => {
            (NodeKind::Wait, format!("wait {}", baton_core::duration::format(*duration)))
        }
        StepAction::Wait(WaitSpec::Until(at)) => (NodeKind::Wait, format!("wait until {at}")),
        StepAction::Listen(listen) => (NodeKind::Listen, format!("listen {}", listen.signals.join(", "))),
        StepAction::Emit(_) => (NodeKind::Emit, "emit".to_owned()),
        StepAction::Workflow(child) => (NodeKind::Workflow, format!("workflow {}", child.name)),
    }
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

#[cfg(test)]
mod tests {
    use baton_core::{StepId, TaskState, TaskStatus};
    use serde_json::json;

    use super::*;

    #[test]
    fn control_flow_draws_as_its_own_kinds_with_nested_steps_named_by_their_paths() {
        let definition: WorkflowDefinition = serde_json::from_value(json!({
            "name": "route",
            "steps": [
                {"id": "route", "switch": [
                    {"name": "express", "when": "${ .input.fast }", "steps": [{"id": "ship", "service": "express"}]},
                    {"name": "ground", "steps": [{"id": "ship", "service": "ground"}]}
                ]},
                {"id": "lines", "for": {"in": "${ .input.lines }"}, "depends_on": ["route"],
                 "steps": [{"id": "charge", "service": "pay"}]},
                {"id": "pause", "wait": "1h", "depends_on": ["lines"]}
            ]
        }))
        .unwrap();
        let mut tasks = BTreeMap::new();
        let mut status = |path: &str, state| {
            tasks.insert(StepId::new(path).unwrap(), TaskStatus { state, ..TaskStatus::default() });
        };
        status("route", TaskState::Succeeded);
        status("route/express/ship", TaskState::Succeeded);
        status("pause", TaskState::Waiting);
        let graph = definition_graph(&definition, Some(&tasks));
        let nodes: Vec<(&str, NodeKind, Option<&str>)> =
            graph.nodes.iter().map(|n| (n.id.as_str(), n.kind, n.state.as_deref())).collect();
        assert_eq!(
            nodes,
            [
                ("route", NodeKind::Switch, Some("succeeded")),
                ("lines", NodeKind::Loop, None),
                ("pause", NodeKind::Wait, Some("waiting")),
                ("route/express/ship", NodeKind::Call, Some("succeeded")),
                ("route/ground/ship", NodeKind::Call, None),
                ("lines/*/charge", NodeKind::Call, None),
            ]
        );
        let edge = |from: &str, to: &str| {
            let at = |id: &str| graph.nodes.iter().position(|n| n.id == id).unwrap();
            graph.edges.iter().find(|e| (e.0, e.1) == (at(from), at(to))).map(|e| e.2)
        };
        assert_eq!(edge("route", "route/ground/ship"), Some(EdgeKind::Contains));
        assert_eq!(edge("route", "lines"), Some(EdgeKind::Dependency));
        assert_eq!(edge("lines", "lines/*/charge"), Some(EdgeKind::Contains));
        let svg = graph.svg("steps", &|_| None).into_string();
        assert!(svg.contains(r#"class="node kind-switch state-succeeded""#), "{svg}");
        assert!(svg.contains("◇ route"), "{svg}");
        assert!(svg.contains("wait 1h"), "{svg}");
    }
}
