//! The page shell and the pieces pages share: badges, times, JSON, charts, the timeline.

use std::collections::BTreeMap;

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use baton_core::{Event, EventKind, ExecutionState, Health, TaskState, Timestamp};
use maud::{DOCTYPE, Markup, html};

use crate::auth::Context;

/// The longest JSON text a page shows of one value; the rest is cut with a note.
const MAX_JSON_CHARS: usize = 64 * 1024;

/// Which section of the navigation a page belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Section {
    Overview,
    Services,
    Workflows,
    Executions,
    Planner,
}

const SECTIONS: [(Section, &str, &str); 5] = [
    (Section::Overview, "/", "Overview"),
    (Section::Services, "/services", "Services"),
    (Section::Workflows, "/workflows", "Workflows"),
    (Section::Executions, "/executions", "Executions"),
    (Section::Planner, "/planner", "Planner"),
];

/// A whole page: `title` is its heading, `body` what follows it.
pub(crate) fn page(
    context: &Context,
    status: StatusCode,
    title: &str,
    section: Option<Section>,
    body: Markup,
) -> Response {
    let markup = html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                meta name="color-scheme" content="light dark";
                title { (title) " · Baton" }
                link rel="icon" href="/assets/icon.svg" type="image/svg+xml";
                link rel="stylesheet" href="/assets/app.css";
                script src="/assets/app.js" defer {}
            }
            body {
                a.skip href="#main" { "Skip to content" }
                header.top {
                    nav aria-label="Main" {
                        a.brand href="/" { "Baton" }
                        ul {
                            @for (s, href, label) in SECTIONS {
                                li {
                                    @if Some(s) == section {
                                        a href=(href) aria-current="page" { (label) }
                                    } @else {
                                        a href=(href) { (label) }
                                    }
                                }
                            }
                        }
                        @if context.logged_in {
                            form.logout method="post" action="/logout" {
                                input type="hidden" name="csrf" value=(context.csrf);
                                button type="submit" { "Log out" }
                            }
                        }
                    }
                }
                main #main tabindex="-1" {
                    h1 { (title) }
                    (body)
                }
            }
        }
    };
    let mut response = (status, markup.into_string()).into_response();
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/html; charset=utf-8"));
    response
}

/// A page that only says what went wrong, verbatim.
pub(crate) fn error_page(context: &Context, status: StatusCode, title: &str, message: &str) -> Response {
    page(context, status, title, None, error_box(message))
}

/// The server's error, verbatim and escaped.
pub(crate) fn error_box(message: &str) -> Markup {
    html! { div.error role="alert" { strong { "Error: " } span.message { (message) } } }
}

/// A point in time, readable and machine-readable.
pub(crate) fn time(at: Timestamp) -> Markup {
    html! { time datetime=(at.to_rfc3339()) { (at.format("%Y-%m-%d %H:%M:%S UTC")) } }
}

pub(crate) fn execution_state_badge(state: ExecutionState) -> Markup {
    html! { span class=(format!("badge state-{state}")) { (state) } }
}

pub(crate) fn task_state_name(state: TaskState) -> &'static str {
    match state {
        TaskState::Pending => "pending",
        TaskState::Scheduled => "scheduled",
        TaskState::Running => "running",
        TaskState::Succeeded => "succeeded",
        TaskState::Failed => "failed",
        TaskState::Skipped => "skipped",
        TaskState::Cancelled => "cancelled",
        TaskState::Waiting => "waiting",
    }
}

pub(crate) fn health_name(health: Health) -> &'static str {
    match health {
        Health::Unknown => "unknown",
        Health::Passing => "passing",
        Health::Critical => "critical",
    }
}

pub(crate) fn health_badge(health: Health) -> Markup {
    let name = health_name(health);
    html! { span class=(format!("badge health-{name}")) { (name) } }
}

/// A JSON value, pretty-printed and escaped; very long ones are cut.
pub(crate) fn json(value: &serde_json::Value) -> Markup {
    let text = serde_json::to_string_pretty(value).unwrap_or_else(|e| format!("(not printable: {e})"));
    let (shown, rest) = if text.len() > MAX_JSON_CHARS {
        let mut end = MAX_JSON_CHARS;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        (&text[..end], text.len() - end)
    } else {
        (text.as_str(), 0)
    };
    html! {
        pre.json tabindex="0" { code { (shown) } }
        @if rest > 0 { p.note { "… " (rest) " more bytes not shown." } }
    }
}

/// A milliseconds figure, short.
pub(crate) fn millis(ms: f64) -> String {
    if ms >= 10_000.0 {
        format!("{:.1} s", ms / 1000.0)
    } else if ms >= 100.0 {
        format!("{ms:.0} ms")
    } else {
        format!("{ms:.1} ms")
    }
}

/// A small bar chart: one bar per value, `series` stacked in their CSS classes.
pub(crate) fn bar_chart(label: &str, series: &[(&str, &str, Vec<u64>)]) -> Markup {
    let bars = series.first().map_or(0, |(_, _, values)| values.len()).max(1);
    let totals: Vec<u64> =
        (0..bars).map(|i| series.iter().map(|(_, _, v)| v.get(i).copied().unwrap_or(0)).sum()).collect();
    let max = totals.iter().copied().max().unwrap_or(0).max(1);
    let (width, height) = (bars as f64 * 6.0, 60.0);
    let mut rects = Vec::new();
    for i in 0..bars {
        let mut base = 0u64;
        for (class, _, values) in series {
            let value = values.get(i).copied().unwrap_or(0);
            if value > 0 {
                let y = height - (base + value) as f64 / max as f64 * height;
                let h = value as f64 / max as f64 * height;
                rects.push((*class, i as f64 * 6.0, y, h));
            }
            base += value;
        }
    }
    html! {
        figure.chart {
            svg xmlns="http://www.w3.org/2000/svg" role="img" aria-label=(label) viewBox=(format!("0 0 {width} {height}")) preserveAspectRatio="none" {
                @for (class, x, y, h) in rects {
                    rect class=(class) x=(format!("{x:.1}")) y=(format!("{y:.2}")) width="5" height=(format!("{h:.2}")) {}
                }
            }
            figcaption {
                (label) ": "
                @for (i, (class, name, values)) in series.iter().enumerate() {
                    @if i > 0 { ", " }
                    span class=(format!("key {class}")) { (name) " " (values.iter().sum::<u64>()) }
                }
            }
        }
    }
}

/// One attempt of a step, from the journal.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Attempt {
    pub(crate) step: String,
    pub(crate) attempt: u32,
    pub(crate) service: String,
    pub(crate) start: Timestamp,
    pub(crate) end: Option<Timestamp>,
    /// `succeeded`, `failed`, `retryable`, or `running` while it has no outcome.
    pub(crate) outcome: &'static str,
}

/// The attempts of an execution's steps in the order they were scheduled.
pub(crate) fn attempts(events: &[Event]) -> Vec<Attempt> {
    let mut attempts: Vec<Attempt> = Vec::new();
    let mut open: BTreeMap<(String, u32), usize> = BTreeMap::new();
    for event in events {
        match &event.kind {
            EventKind::TaskScheduled { step, attempt, service } => {
                open.insert((step.to_string(), *attempt), attempts.len());
                attempts.push(Attempt {
                    step: step.to_string(),
                    attempt: *attempt,
                    service: service.to_string(),
                    start: event.at,
                    end: None,
                    outcome: "running",
                });
            }
            // A durable timer and a child execution have no attempt: their task ends at 0.
            EventKind::TimerStarted { step, due } => {
                open.insert((step.to_string(), 0), attempts.len());
                attempts.push(Attempt {
                    step: step.to_string(),
                    attempt: 0,
                    service: format!("timer until {}", due.format("%H:%M:%S")),
                    start: event.at,
                    end: None,
                    outcome: "running",
                });
            }
            EventKind::ChildStarted { step, child } => {
                open.insert((step.to_string(), 0), attempts.len());
                attempts.push(Attempt {
                    step: step.to_string(),
                    attempt: 0,
                    service: format!("child {child}"),
                    start: event.at,
                    end: None,
                    outcome: "running",
                });
            }
            EventKind::TaskSucceeded { step, attempt, .. } | EventKind::TaskFailed { step, attempt, .. } => {
                if let Some(&index) = open.get(&(step.to_string(), *attempt)) {
                    let a = &mut attempts[index];
                    a.end = Some(event.at);
                    a.outcome = match &event.kind {
                        EventKind::TaskSucceeded { .. } => "succeeded",
                        EventKind::TaskFailed { retryable: true, .. } => "retryable",
                        _ => "failed",
                    };
                }
            }
            _ => {}
        }
    }
    attempts
}

/// The Gantt chart of the attempts: a row each, from scheduling to outcome, with the service
/// that answered; open attempts run to `now`.
pub(crate) fn gantt(attempts: &[Attempt], now: Timestamp) -> Markup {
    if attempts.is_empty() {
        return html! { p.note { "No step has been scheduled yet." } };
    }
    let start = attempts.iter().map(|a| a.start).min().unwrap_or(now);
    let end = attempts.iter().map(|a| a.end.unwrap_or(now)).max().unwrap_or(now).max(start);
    let span_ms = ((end - start).num_microseconds().unwrap_or(i64::MAX) as f64 / 1000.0).max(1.0);
    let (label_width, bar_width, row) = (220.0, 620.0, 22.0);
    let width = label_width + bar_width + 10.0;
    let height = attempts.len() as f64 * row + 24.0;
    let x = |at: Timestamp| {
        label_width + ((at - start).num_microseconds().unwrap_or(0) as f64 / 1000.0) / span_ms * bar_width
    };
    html! {
        svg.gantt xmlns="http://www.w3.org/2000/svg" role="img" viewBox=(format!("0 0 {width:.0} {height:.0}"))
            aria-label=(format!("Timeline of {} step attempts over {}", attempts.len(), millis(span_ms))) {
            text.axis x=(label_width) y="14" { "0" }
            text.axis x=(width - 10.0) y="14" text-anchor="end" { (millis(span_ms)) }
            @for (i, a) in attempts.iter().enumerate() {
                @let y = 22.0 + i as f64 * row;
                @let x1 = x(a.start);
                @let x2 = x(a.end.unwrap_or(now)).max(x1 + 2.0);
                @let duration = (a.end.unwrap_or(now) - a.start).num_microseconds().unwrap_or(0) as f64 / 1000.0;
                g.attempt data-step=(a.step) data-outcome=(a.outcome) {
                    title { (a.step) " attempt " (a.attempt) " on " (a.service) ": " (a.outcome) ", " (millis(duration)) }
                    text.gantt-label x="0" y=(format!("{:.1}", y + 14.0)) { (cut(&a.step, 18)) " #" (a.attempt) }
                    rect class=(format!("bar outcome-{}", a.outcome)) x=(format!("{x1:.1}")) y=(format!("{:.1}", y + 3.0)) width=(format!("{:.1}", x2 - x1)) height="14" rx="3" {}
                    text.gantt-service x=(format!("{:.1}", (x2 + 4.0).min(width - 120.0))) y=(format!("{:.1}", y + 14.0)) { (cut(&a.service, 24)) }
                }
            }
        }
    }
}

fn cut(text: &str, chars: usize) -> String {
    if text.chars().count() <= chars {
        text.to_owned()
    } else {
        let mut cut: String = text.chars().take(chars - 1).collect();
        cut.push('…');
        cut
    }
}

/// A journal event in a word and its details, for the event log.
pub(crate) fn event_summary(kind: &EventKind) -> (&'static str, String) {
    match kind {
        EventKind::Started { .. } => ("started", String::new()),
        EventKind::TaskScheduled { step, attempt, service } => {
            ("task scheduled", format!("{step} attempt {attempt} on {service}"))
        }
        EventKind::TaskSucceeded { step, attempt, .. } => ("task succeeded", format!("{step} attempt {attempt}")),
        EventKind::TaskFailed { step, attempt, error, retryable, .. } => (
            "task failed",
            format!("{step} attempt {attempt}{}: {error}", if *retryable { " (retryable)" } else { "" }),
        ),
        EventKind::TaskSkipped { step, reason } => ("task skipped", format!("{step}: {reason}")),
        EventKind::Paused => ("paused", String::new()),
        EventKind::Resumed => ("resumed", String::new()),
        EventKind::Cancelled { reason } => ("cancelled", reason.clone()),
        EventKind::Completed { .. } => ("completed", String::new()),
        EventKind::Failed { error, .. } => ("failed", error.clone()),
        EventKind::TimerStarted { step, due } => {
            ("timer started", format!("{step} until {}", due.format("%Y-%m-%d %H:%M:%S UTC")))
        }
        EventKind::SignalReceived { name, .. } => ("signal received", name.clone()),
        EventKind::SignalConsumed { step, signals, .. } => {
            ("signal consumed", format!("{step} took signal {}", join_numbers(signals)))
        }
        EventKind::ChildStarted { step, child } => ("child started", format!("{step}: {child}")),
    }
}

fn join_numbers(numbers: &[u64]) -> String {
    numbers.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")
}

#[cfg(test)]
mod tests {
    use baton_core::{ExecutionId, ServiceId, StepId};

    use super::*;

    #[test]
    fn attempts_pair_schedules_with_outcomes() {
        let execution = ExecutionId::generate();
        let at = |ms: u64| Timestamp::UNIX_EPOCH + std::time::Duration::from_millis(ms);
        let step = StepId::new("pay").unwrap();
        let kinds = [
            (0, EventKind::TaskScheduled { step: step.clone(), attempt: 1, service: ServiceId::new("a").unwrap() }),
            (
                5,
                EventKind::TaskFailed {
                    step: step.clone(),
                    attempt: 1,
                    error: "x".into(),
                    retryable: true,
                    problem: None,
                },
            ),
            (7, EventKind::TaskScheduled { step: step.clone(), attempt: 2, service: ServiceId::new("b").unwrap() }),
            (9, EventKind::TaskSucceeded { step, attempt: 2, output: serde_json::json!({}), context: None }),
        ];
        let events: Vec<Event> = kinds
            .into_iter()
            .enumerate()
            .map(|(i, (ms, kind))| Event { execution, sequence: i as u64 + 1, at: at(ms), kind })
            .collect();
        let found = attempts(&events);
        assert_eq!(found.len(), 2);
        assert_eq!((found[0].outcome, found[0].service.as_str(), found[0].end), ("retryable", "a", Some(at(5))));
        assert_eq!((found[1].outcome, found[1].service.as_str()), ("succeeded", "b"));
        let svg = gantt(&found, at(10)).into_string();
        assert!(svg.contains(r#"data-outcome="retryable""#) && svg.contains("outcome-succeeded"), "{svg}");
    }

    #[test]
    fn json_is_pretty_escaped_and_bounded() {
        let html = json(&serde_json::json!({"name": "<script>alert(1)</script>"})).into_string();
        assert!(html.contains("&quot;name&quot;: &quot;&lt;script&gt;"), "{html}");
        let big = json(&serde_json::json!("x".repeat(MAX_JSON_CHARS * 2))).into_string();
        assert!(big.contains("more bytes not shown"));
        assert!(big.len() < MAX_JSON_CHARS + 1000);
    }
}
