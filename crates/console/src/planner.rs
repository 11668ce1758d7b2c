//! The planner: a goal form, the composed plan as a graph with levels, predicted QoS and
//! alternatives, or why no plan meets the goal; and "run this plan".

use axum::Form;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use baton_core::api::Orchestrate;
use baton_core::{Constraints, Goal, Objective, Plan, ServiceId};
use maud::{Markup, html};
use serde::Deserialize;

use crate::auth::Context;
use crate::graph::{EdgeKind, Graph, Node, NodeKind};
use crate::view::{self, Section};
use crate::{PageError, Shared};

/// The goal form, as sent.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct GoalForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    have: String,
    #[serde(default)]
    want: String,
    #[serde(default)]
    max_latency_ms: String,
    #[serde(default)]
    max_cost: String,
    #[serde(default)]
    min_availability: String,
    #[serde(default)]
    max_services: String,
    #[serde(default)]
    exclude: String,
    #[serde(default)]
    objective: String,
    #[serde(default)]
    input: String,
}

/// Concepts or ids separated by commas or spaces.
fn words(text: &str) -> Vec<String> {
    text.split(|c: char| c == ',' || c.is_whitespace()).filter(|w| !w.is_empty()).map(str::to_owned).collect()
}

fn number<T: std::str::FromStr>(field: &str, text: &str) -> Result<Option<T>, PageError> {
    match text.trim() {
        "" => Ok(None),
        t => t.parse().map(Some).map_err(|_| PageError::bad_request(format!("{field}: {t:?} is not a number"))),
    }
}

impl GoalForm {
    fn goal(&self) -> Result<Goal, PageError> {
        let objective = match self.objective.as_str() {
            "" | "latency" => Objective::Latency,
            "throughput" => Objective::Throughput,
            "cost" => Objective::Cost,
            other => return Err(PageError::bad_request(format!("objective: {other:?} is not an objective"))),
        };
        let exclude_services =
            words(&self.exclude).iter().map(|id| ServiceId::new(id)).collect::<Result<Vec<_>, _>>()?;
        Ok(Goal {
            provided: words(&self.have),
            wanted: words(&self.want),
            constraints: Constraints {
                max_latency_ms: number("max_latency_ms", &self.max_latency_ms)?,
                max_cost: number("max_cost", &self.max_cost)?,
                min_availability: number("min_availability", &self.min_availability)?,
                max_services: number("max_services", &self.max_services)?,
                exclude_services,
                ..Constraints::default()
            },
            objective,
            ..Goal::default()
        })
    }
}

fn form_view(context: &Context, form: &GoalForm) -> Markup {
    html! {
        form.card.goal method="post" action="/planner" {
            input type="hidden" name="csrf" value=(context.csrf);
            div.field { label for="have" { "Have (concepts, comma separated)" } input #have type="text" name="have" value=(form.have) required; }
            div.field { label for="want" { "Want (concepts)" } input #want type="text" name="want" value=(form.want) required; }
            div.field { label for="max_latency_ms" { "Most latency (ms)" } input #max_latency_ms type="number" min="0" step="any" name="max_latency_ms" value=(form.max_latency_ms); }
            div.field { label for="max_cost" { "Most cost" } input #max_cost type="number" min="0" step="any" name="max_cost" value=(form.max_cost); }
            div.field { label for="min_availability" { "Least availability (0 to 1)" } input #min_availability type="number" min="0" max="1" step="any" name="min_availability" value=(form.min_availability); }
            div.field { label for="max_services" { "Most services" } input #max_services type="number" min="1" step="1" name="max_services" value=(form.max_services); }
            div.field { label for="exclude" { "Exclude services (ids)" } input #exclude type="text" name="exclude" value=(form.exclude); }
            div.field {
                label for="objective" { "Objective" }
                select #objective name="objective" {
                    @for (value, label) in [("latency", "lowest latency"), ("throughput", "highest throughput"), ("cost", "lowest cost")] {
                        option value=(value) selected[form.objective == value] { (label) }
                    }
                }
            }
            button type="submit" { "Plan" }
        }
    }
}

pub(crate) async fn form(context: Context) -> Response {
    view::page(&context, StatusCode::OK, "Planner", Some(Section::Planner), form_view(&context, &GoalForm::default()))
}

async fn compose(console: &Shared, goal: Goal) -> Result<Plan, PageError> {
    let planner = std::sync::Arc::clone(&console.backends.planner);
    // Planning is CPU work: keep it off the async workers.
    tokio::task::spawn_blocking(move || planner.plan(&goal))
        .await
        .map_err(|e| PageError::new(StatusCode::INTERNAL_SERVER_ERROR, format!("the planner stopped: {e}")))?
        .map_err(PageError::from)
}

pub(crate) async fn plan(State(console): State<Shared>, context: Context, Form(form): Form<GoalForm>) -> Response {
    let result = async {
        context.check_csrf(&form.csrf)?;
        compose(&console, form.goal()?).await
    }
    .await;
    let (status, shown) = match &result {
        Ok(plan) => (StatusCode::OK, plan_view(&context, &form, plan)),
        Err(e) => (e.status(), html! { section #plan-error { h2 { "No plan" } (view::error_box(e.message())) } }),
    };
    let body = html! { (form_view(&context, &form)) (shown) };
    view::page(&context, status, "Planner", Some(Section::Planner), body)
}

/// The plan's tasks at their levels, with data flow and dependencies as edges.
pub(crate) fn plan_graph(plan: &Plan) -> Graph {
    let nodes: Vec<Node> = plan
        .tasks
        .iter()
        .map(|task| Node {
            id: task.id.to_string(),
            detail: task.service.to_string(),
            state: None,
            kind: NodeKind::Call,
        })
        .collect();
    let levels = plan
        .tasks
        .iter()
        .map(|task| plan.levels.iter().position(|level| level.contains(&task.id)).unwrap_or(plan.levels.len()))
        .collect();
    let mut graph = Graph { nodes, levels: Some(levels), ..Graph::default() };
    for task in &plan.tasks {
        for dependency in &task.depends_on {
            graph.connect(dependency.as_str(), task.id.as_str(), EdgeKind::Dependency);
        }
    }
    for flow in &plan.data_flow {
        if let Some(from) = &flow.from {
            graph.connect(from.as_str(), flow.to.as_str(), EdgeKind::Data);
        }
    }
    graph
}

fn plan_view(context: &Context, form: &GoalForm, plan: &Plan) -> Markup {
    let predicted = &plan.predicted;
    html! {
        section #plan aria-labelledby="plan-heading" {
            h2 #plan-heading { "Plan" }
            dl.facts {
                dt { "Tasks" } dd { (plan.tasks.len()) " in " (plan.levels.len()) " levels" }
                dt { "Predicted latency" } dd { (view::millis(predicted.latency_ms)) }
                dt { "Predicted throughput" } dd { (format!("{:.1}", predicted.throughput_rps)) " per second" }
                dt { "Predicted cost" } dd { (format!("{:.3}", predicted.cost)) }
                dt { "Predicted availability" } dd { (format!("{:.4}", predicted.availability)) }
            }
            div.graph-box { (plan_graph(plan).svg("The plan's tasks by level", &|node| Some(format!("/services/{}", node.detail)))) }
            table #plan-tasks {
                thead { tr { th scope="col" { "Task" } th scope="col" .num { "Level" } th scope="col" { "Service" } th scope="col" { "Alternatives, best first" } th scope="col" { "Reads" } th scope="col" { "Produces" } } }
                tbody { @for task in &plan.tasks {
                    tr {
                        td { (task.id) }
                        td.num { (plan.levels.iter().position(|l| l.contains(&task.id)).map_or(0, |l| l + 1)) }
                        td { a href=(format!("/services/{}", task.service)) { (task.service) } }
                        td { @for (i, alternative) in task.alternatives.iter().enumerate() {
                            @if i > 0 { ", " }
                            a href=(format!("/services/{alternative}")) { (alternative) }
                        } @if task.alternatives.is_empty() { "none" } }
                        td { (task.inputs.join(", ")) }
                        td { (task.outputs.join(", ")) }
                    }
                } }
            }
            form.card.run method="post" action="/planner/run" data-json-form {
                input type="hidden" name="csrf" value=(context.csrf);
                @for (name, value) in [("have", &form.have), ("want", &form.want), ("max_latency_ms", &form.max_latency_ms), ("max_cost", &form.max_cost), ("min_availability", &form.min_availability), ("max_services", &form.max_services), ("exclude", &form.exclude), ("objective", &form.objective)] {
                    input type="hidden" name=(name) value=(value);
                }
                label for="run-input" { "Input (JSON: the provided concepts by name)" }
                textarea #run-input name="input" rows="4" spellcheck="false" data-json aria-describedby="run-input-error" { (sample_input(&form.have)) }
                p #run-input-error .field-error aria-live="polite" {}
                button type="submit" { "Run this plan" }
            }
        }
    }
}

/// `{"order": {}}` for `have = order`: a start the person edits.
fn sample_input(have: &str) -> String {
    let object: serde_json::Map<String, serde_json::Value> =
        words(have).into_iter().map(|concept| (concept, serde_json::json!({}))).collect();
    serde_json::to_string_pretty(&object).unwrap_or_else(|_| "{}".to_owned())
}

pub(crate) async fn run(State(console): State<Shared>, context: Context, Form(form): Form<GoalForm>) -> Response {
    let result = async {
        context.check_csrf(&form.csrf)?;
        let goal = form.goal()?;
        let input = match form.input.trim() {
            "" => serde_json::json!({}),
            text => serde_json::from_str(text)
                .map_err(|e| PageError::bad_request(format!("invalid input: not JSON: {e}")))?,
        };
        let run = console.backends.orchestrator.orchestrate(Orchestrate { goal, input, wait: None }).await?;
        Ok::<_, PageError>(run.execution.id)
    }
    .await;
    match result {
        Ok(id) => Redirect::to(&format!("/executions/{id}")).into_response(),
        Err(e) => {
            let body = html! { (form_view(&context, &form)) section #plan-error { h2 { "Not started" } (view::error_box(e.message())) } };
            view::page(&context, e.status(), "Planner", Some(Section::Planner), body)
        }
    }
}
