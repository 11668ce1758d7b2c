//! Services: a searchable table and a page per service.

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use baton_core::{Endpoint, ServiceActivity, ServiceId, ServiceView};
use maud::{Markup, html};
use serde::Deserialize;

use crate::auth::Context;
use crate::view::{self, Section};
use crate::{PageError, Shared};

/// Services per page.
const PAGE: usize = 100;
/// A search reads at most this many services per page it shows.
const MAX_SCANNED: usize = 20_000;
/// Health changes a table row shows.
const HISTORY_IN_ROW: usize = 12;

#[derive(Debug, Deserialize)]
pub(crate) struct ListQuery {
    #[serde(default)]
    q: String,
    after: Option<String>,
}

fn matches(view: &ServiceView, needle: &str) -> bool {
    let spec = &view.spec;
    needle.is_empty()
        || spec.id().as_str().contains(needle)
        || spec.name().to_lowercase().contains(needle)
        || spec.capabilities().iter().any(|c| c.contains(needle))
        || spec.protocol().to_string() == needle
}

pub(crate) async fn list(State(console): State<Shared>, context: Context, Query(query): Query<ListQuery>) -> Response {
    let needle = query.q.trim().to_lowercase();
    let mut after = match query.after.as_deref().filter(|a| !a.is_empty()).map(ServiceId::new).transpose() {
        Ok(after) => after,
        Err(e) => return view::error_page(&context, StatusCode::BAD_REQUEST, "Services", &e.to_string()),
    };
    let (mut shown, mut scanned) = (Vec::new(), 0usize);
    let more = 'scan: loop {
        let page = console.backends.directory.list(after.as_ref(), PAGE);
        let last_page = page.next_after.is_none();
        for service in page.services {
            if shown.len() == PAGE {
                break 'scan true;
            }
            scanned += 1;
            after = Some(service.spec.id().clone());
            if matches(&service, &needle) {
                shown.push(service);
            }
        }
        if last_page {
            break false;
        }
        if scanned >= MAX_SCANNED {
            break true;
        }
    };
    let activity: Vec<ServiceActivity> = shown.iter().map(|s| console.backends.activity.service(s.spec.id())).collect();
    let body = html! {
        form.filters role="search" method="get" action="/services" {
            label for="q" { "Search by id, name, capability or protocol" }
            input #q type="search" name="q" value=(query.q);
            button type="submit" { "Search" }
        }
        @if shown.is_empty() {
            p.note { "No service matches." }
        } @else {
            div.scroll {
                table #services {
                    thead { tr {
                        th scope="col" { "Service" } th scope="col" { "Capabilities" } th scope="col" { "Protocol" }
                        th scope="col" { "Health" } th scope="col" .num { "In flight" }
                        th scope="col" .num { "p50 declared / observed" } th scope="col" .num { "p99 declared / observed" }
                        th scope="col" .num { "Success" }
                    } }
                    tbody {
                        @for (service, activity) in shown.iter().zip(&activity) {
                            (row(service, activity))
                        }
                    }
                }
            }
        }
        @if more {
            @if let Some(last) = &after {
                p { a rel="next" href=(format!("/services?q={}&after={}", encode(&query.q), last)) { "Next page →" } }
            }
        }
    };
    view::page(&context, StatusCode::OK, "Services", Some(Section::Services), body)
}

/// Percent-encodes a query value.
pub(crate) fn encode(value: &str) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn observed(ms: Option<f64>) -> String {
    ms.map_or_else(|| "–".to_owned(), view::millis)
}

fn row(service: &ServiceView, activity: &ServiceActivity) -> Markup {
    let spec = &service.spec;
    let qos = spec.qos();
    html! {
        tr data-service=(spec.id()) {
            td {
                a href=(format!("/services/{}", spec.id())) { (spec.id()) }
                @if spec.name() != spec.id().as_str() { div.sub.service-name { (spec.name()) } }
            }
            td { (spec.capabilities().join(", ")) }
            td { (spec.protocol()) }
            td {
                (view::health_badge(service.status.health))
                (history_strip(activity))
            }
            td.num { (service.status.in_flight) " / " (spec.capacity()) }
            td.num { (view::millis(qos.latency_p50_ms)) " / " (observed(activity.latency_p50_ms)) }
            td.num { (view::millis(qos.latency_p99_ms)) " / " (observed(activity.latency_p99_ms)) }
            td.num { @match activity.success_rate() { Some(r) => (format!("{:.1} %", r * 100.0)), None => "–" } }
        }
    }
}

/// The latest health verdicts as small squares, oldest left.
fn history_strip(activity: &ServiceActivity) -> Markup {
    html! {
        @if !activity.health_changes.is_empty() {
            span.history role="img" aria-label=(format!("{} recent health changes", activity.health_changes.len().min(HISTORY_IN_ROW))) {
                @for change in activity.health_changes.iter().take(HISTORY_IN_ROW).rev() {
                    span class=(format!("tick health-{}", view::health_name(change.to))) title=(format!("{} at {}", view::health_name(change.to), change.at.format("%H:%M:%S"))) {}
                }
            }
        }
    }
}

pub(crate) async fn page(State(console): State<Shared>, context: Context, Path(id): Path<String>) -> Response {
    let title = format!("Service {id}");
    let view =
        match ServiceId::new(&id).map_err(PageError::from).and_then(|id| Ok(console.backends.directory.get(&id)?)) {
            Ok(view) => view,
            Err(e) => return view::error_page(&context, e.status(), &title, e.message()),
        };
    let activity = console.backends.activity.service(view.spec.id());
    let spec = &view.spec;
    let mut definition = serde_json::to_value(spec.definition()).unwrap_or_default();
    // A registered descriptor set is up to 1 MiB of base64: shown by its size, not its bytes.
    if let Some(set) = definition.pointer_mut("/endpoint/descriptor_set")
        && let Some(text) = set.as_str()
    {
        *set = serde_json::Value::String(format!("(a descriptor set, {} bytes of base64)", text.len()));
    }
    let body = html! {
        dl.facts {
            dt { "Name" } dd.service-name { (spec.name()) }
            dt { "Version" } dd { (spec.version()) }
            dt { "Endpoint" } dd { @match spec.endpoint() {
                Endpoint::Http { url } => { (spec.protocol()) " " code { (url) } },
                Endpoint::Grpc { url, method, .. } => {
                    (spec.protocol()) " " code { (url) }
                    @if let Some(method) = method { ", method " code { (method) } }
                },
                Endpoint::Worker { queue } => { "worker queue " code { (queue) } },
            } }
            dt { "Health" } dd { (view::health_badge(view.status.health)) " " (view.status.last_check_output) }
            dt { "Registered" } dd { (view::time(view.status.registered_at)) }
            dt { "Last heartbeat" } dd { @match view.status.last_heartbeat { Some(at) => (view::time(at)), None => "none" } }
            dt { "In flight" } dd { (view.status.in_flight) " of " (spec.capacity()) }
            dt { "Circuit breaker" } dd { span class=(format!("badge breaker-{}", activity.breaker)) { (activity.breaker) } }
            dt { "Calls" } dd { (activity.calls) " ended, " (activity.succeeded) " succeeded" }
            dt { "Latency declared" } dd { "p50 " (view::millis(spec.qos().latency_p50_ms)) ", p99 " (view::millis(spec.qos().latency_p99_ms)) }
            dt { "Latency observed" } dd { "p50 " (observed(activity.latency_p50_ms)) ", p99 " (observed(activity.latency_p99_ms)) }
        }
        div.split {
            section aria-labelledby="health-heading" {
                h2 #health-heading { "Health changes" }
                @if activity.health_changes.is_empty() {
                    p.note { "No change since the server started." }
                } @else {
                    table {
                        thead { tr { th scope="col" { "When" } th scope="col" { "From" } th scope="col" { "To" } th scope="col" { "Check said" } } }
                        tbody { @for change in &activity.health_changes {
                            tr { td { (view::time(change.at)) } td { (view::health_badge(change.from)) } td { (view::health_badge(change.to)) } td { (change.output) } }
                        } }
                    }
                }
                h2 { "Recent calls" }
                @if activity.recent_calls.is_empty() {
                    p.note { "No call since the server started." }
                } @else {
                    table #calls {
                        thead { tr { th scope="col" { "When" } th scope="col" { "Execution" } th scope="col" { "Step" } th scope="col" .num { "Attempt" } th scope="col" .num { "Took" } th scope="col" { "Outcome" } } }
                        tbody { @for call in &activity.recent_calls {
                            tr {
                                td { (view::time(call.at)) }
                                td { a href=(format!("/executions/{}", call.execution)) { code { (short(&call.execution.to_string())) } } }
                                td { (call.step) }
                                td.num { (call.attempt) }
                                td.num { (view::millis(call.duration_ms)) }
                                td { span class=(format!("badge outcome-{}", call.outcome)) { (call.outcome) } }
                            }
                        } }
                    }
                }
            }
            section aria-labelledby="spec-heading" {
                h2 #spec-heading { "Specification" }
                (view::json(&definition))
            }
        }
    };
    view::page(&context, StatusCode::OK, &title, Some(Section::Services), body)
}

/// The first 8 digits of an id, as tables show it.
pub(crate) fn short(id: &str) -> &str {
    id.get(..8).unwrap_or(id)
}
