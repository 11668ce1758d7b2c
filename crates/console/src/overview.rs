//! The overview: executions by state, throughput and failures over the last hour, services by
//! health, open breakers and worker queues.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use baton_core::api::ExecutionQuery;
use baton_core::{Health, Order, PageRequest, ServiceId};
use maud::html;

use crate::auth::Context;
use crate::view::{self, Section};
use crate::{PageError, Shared};

/// The overview counts at most this many services (a page of the registry at a time).
const MAX_COUNTED_SERVICES: usize = 10_000;
const RECENT_EXECUTIONS: u32 = 10;

pub(crate) async fn page(State(console): State<Shared>, context: Context) -> Response {
    match render(&console, &context).await {
        Ok(body) => view::page(&context, StatusCode::OK, "Overview", Some(Section::Overview), body),
        Err(e) => view::error_page(&context, e.status(), "Overview", e.message()),
    }
}

async fn render(console: &Shared, _context: &Context) -> Result<maud::Markup, PageError> {
    let overview = console.backends.activity.overview();
    let minutes = &overview.minutes;
    let sum = |f: fn(&baton_core::activity::MinuteCounts) -> u64| minutes.iter().map(f).sum::<u64>();
    let (started, completed, failed, cancelled) =
        (sum(|m| m.started), sum(|m| m.completed), sum(|m| m.failed), sum(|m| m.cancelled));
    let ended = completed + failed + cancelled;
    let failure_rate = (ended > 0).then(|| failed as f64 / ended as f64 * 100.0);
    let (mut health, mut counted, mut after): ([u64; 3], usize, Option<ServiceId>) = ([0; 3], 0, None);
    loop {
        let page = console.backends.directory.list(after.as_ref(), 1000);
        for service in &page.services {
            health[match service.status.health {
                Health::Passing => 0,
                Health::Critical => 1,
                Health::Unknown => 2,
            }] += 1;
        }
        counted += page.services.len();
        match page.next_after {
            Some(next) if counted < MAX_COUNTED_SERVICES => after = Some(next),
            more => {
                after = more;
                break;
            }
        }
    }
    let recent = console
        .backends
        .executions
        .list(
            ExecutionQuery::default(),
            PageRequest { limit: RECENT_EXECUTIONS, order: Order::NewestFirst, token: None },
        )
        .await?;
    Ok(html! {
        section aria-labelledby="executions-heading" {
            h2 #executions-heading { "Executions" }
            dl.cards {
                div.card { dt { "Running now" } dd #running { (overview.running) } }
                div.card { dt { "Paused now" } dd #paused { (overview.paused) } }
                div.card { dt { "Started, last hour" } dd { (started) } }
                div.card { dt { "Completed, last hour" } dd { (completed) } }
                div.card { dt { "Failed, last hour" } dd { (failed) } }
                div.card { dt { "Cancelled, last hour" } dd { (cancelled) } }
                div.card { dt { "Failure rate, last hour" } dd { @match failure_rate { Some(r) => (format!("{r:.1} %")), None => "–" } } }
            }
            div.charts {
                (view::bar_chart("Executions ended per minute", &[
                    ("completed", "completed", minutes.iter().map(|m| m.completed).collect()),
                    ("failed", "failed", minutes.iter().map(|m| m.failed).collect()),
                    ("cancelled", "cancelled", minutes.iter().map(|m| m.cancelled).collect()),
                ]))
                (view::bar_chart("Task attempts per minute", &[
                    ("completed", "succeeded", minutes.iter().map(|m| m.attempts - m.failed_attempts).collect()),
                    ("failed", "failed", minutes.iter().map(|m| m.failed_attempts).collect()),
                ]))
            }
            h3 { "Latest executions" }
            (crate::executions::table(&recent.executions))
        }
        section aria-labelledby="services-heading" {
            h2 #services-heading { "Services" }
            dl.cards {
                div.card { dt { "Passing" } dd { (health[0]) } }
                div.card { dt { "Critical" } dd { (health[1]) } }
                div.card { dt { "Unknown" } dd { (health[2]) } }
            }
            @if after.is_some() { p.note { "Counted the first " (counted) " services." } }
            h3 { "Open circuit breakers" }
            @if overview.breakers.is_empty() {
                p.note { "Every breaker is closed." }
            } @else {
                table {
                    thead { tr { th scope="col" { "Service" } th scope="col" { "Breaker" } } }
                    tbody {
                        @for (service, state) in &overview.breakers {
                            tr {
                                td { a href=(format!("/services/{service}")) { (service) } }
                                td { span class=(format!("badge breaker-{state}")) { (state) } }
                            }
                        }
                    }
                }
            }
            h3 { "Worker queues" }
            @if overview.queues.is_empty() {
                p.note { "No worker queue has been used." }
            } @else {
                table {
                    thead { tr { th scope="col" { "Queue" } th scope="col" .num { "Waiting" } th scope="col" .num { "Leased" } } }
                    tbody {
                        @for queue in &overview.queues {
                            tr { td { (queue.queue) } td.num { (queue.queued) } td.num { (queue.leased) } }
                        }
                    }
                }
            }
        }
    })
}
