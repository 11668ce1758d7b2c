//! Live progress of one execution, rebuilt from its journal events as `WatchExecution` sends
//! them: a line per step transition (with timings and retries) and a progress bar.

use std::collections::BTreeMap;

use baton_grpc::pb;
use pb::event::Kind;

use super::view;

/// Width of the bar between its brackets.
const BAR_WIDTH: usize = 10;

/// Where one step is, as far as the events tell.
#[derive(Debug, Clone, Default)]
struct Step {
    /// The latest attempt dispatched.
    attempt: u32,
    /// When the latest attempt was scheduled.
    scheduled_at: Option<prost_types::Timestamp>,
    /// The service the latest attempt went to.
    service: String,
    /// Whether it reached an end (succeeded, skipped, failed for good).
    ended: bool,
}

/// The progress of one execution.
#[derive(Debug, Clone, Default)]
pub(crate) struct Progress {
    /// Steps known up front (from the execution record); events may add more.
    steps: BTreeMap<String, Step>,
    /// The execution's end state, once an event ended it.
    end: Option<pb::ExecutionState>,
}

impl Progress {
    /// Progress of an execution with these steps (empty: learn them from the events).
    pub(crate) fn new(steps: impl IntoIterator<Item = String>) -> Self {
        Self { steps: steps.into_iter().map(|step| (step, Step::default())).collect(), end: None }
    }

    /// Takes one event in and returns what it says, as lines for a human.
    pub(crate) fn apply(&mut self, event: &pb::Event) -> Vec<String> {
        let Some(kind) = &event.kind else {
            return vec![format!("#{}: an event of a kind this client does not know", event.sequence)];
        };
        let at = event.at;
        let line = match kind {
            Kind::Started(_) => "execution started".to_owned(),
            Kind::TaskScheduled(e) => {
                let step = self.steps.entry(e.step.clone()).or_default();
                step.attempt = e.attempt;
                step.scheduled_at = at;
                step.service.clone_from(&e.service);
                if e.attempt > 1 {
                    format!("{}: retry {} scheduled on {}", e.step, e.attempt - 1, e.service)
                } else {
                    format!("{}: scheduled on {}", e.step, e.service)
                }
            }
            Kind::TaskSucceeded(e) => {
                let step = self.steps.entry(e.step.clone()).or_default();
                step.ended = true;
                let took = took(step.scheduled_at.as_ref(), at.as_ref());
                match e.attempt {
                    0 | 1 => format!("{}: succeeded{took}", e.step),
                    n => format!("{}: succeeded on attempt {n}{took}", e.step),
                }
            }
            Kind::TaskFailed(e) => {
                let step = self.steps.entry(e.step.clone()).or_default();
                // A retryable failure may be retried; the execution's end says if it was not.
                step.ended = !e.retryable;
                let took = took(step.scheduled_at.as_ref(), at.as_ref());
                let retry = if e.retryable { "retryable" } else { "not retryable" };
                // The service that failed, since the next attempt may go to another.
                let on = if e.attempt == step.attempt && !step.service.is_empty() {
                    format!(" on {}", step.service)
                } else {
                    String::new()
                };
                format!("{}: attempt {}{on} failed{took}: {} ({retry})", e.step, e.attempt, e.error)
            }
            Kind::TaskSkipped(e) => {
                self.steps.entry(e.step.clone()).or_default().ended = true;
                if e.reason.is_empty() {
                    format!("{}: skipped", e.step)
                } else {
                    format!("{}: skipped: {}", e.step, e.reason)
                }
            }
            Kind::Paused(_) => "execution paused".to_owned(),
            Kind::Resumed(_) => "execution resumed".to_owned(),
            Kind::Cancelled(e) => {
                self.end = Some(pb::ExecutionState::Cancelled);
                if e.reason.is_empty() {
                    "execution cancelled".to_owned()
                } else {
                    format!("execution cancelled: {}", e.reason)
                }
            }
            Kind::Completed(_) => {
                self.end = Some(pb::ExecutionState::Completed);
                "execution completed".to_owned()
            }
            Kind::Failed(e) => {
                self.end = Some(pb::ExecutionState::Failed);
                format!("execution failed: {}", e.error)
            }
            Kind::TimerStarted(e) => {
                self.steps.entry(e.step.clone()).or_default().scheduled_at = at;
                format!("{}: waiting until {}", e.step, super::view::when(e.due.as_ref()))
            }
            Kind::SignalReceived(e) => format!("signal {} received", e.name),
            Kind::SignalConsumed(e) => {
                self.steps.entry(e.step.clone()).or_default().ended = true;
                format!("{}: got its signal", e.step)
            }
            Kind::ChildStarted(e) => {
                self.steps.entry(e.step.clone()).or_default().scheduled_at = at;
                format!("{}: started child execution {}", e.step, e.child_execution_id)
            }
        };
        vec![line]
    }

    /// Steps that reached an end.
    pub(crate) fn done(&self) -> usize {
        self.steps.values().filter(|step| step.ended).count()
    }

    /// Steps known.
    pub(crate) fn total(&self) -> usize {
        self.steps.len()
    }

    /// The execution's end state once an event ended it.
    pub(crate) fn end(&self) -> Option<pb::ExecutionState> {
        self.end
    }

    /// `[#####.....] 3/5 steps`.
    pub(crate) fn bar(&self) -> String {
        bar(self.done(), self.total())
    }
}

/// A progress bar of `done` out of `total`.
pub(crate) fn bar(done: usize, total: usize) -> String {
    let filled = (done.min(total) * BAR_WIDTH).checked_div(total).unwrap_or(0);
    format!("[{}{}] {done}/{total} steps", "#".repeat(filled), ".".repeat(BAR_WIDTH - filled))
}

/// ` in 12 ms` between two event times, or nothing when either is missing.
fn took(from: Option<&prost_types::Timestamp>, to: Option<&prost_types::Timestamp>) -> String {
    match (from, to) {
        (Some(from), Some(to)) => format!(" in {}", view::millis(view::between_ms(from, to))),
        _ => String::new(),
    }
}

/// Renders the live output: on a terminal the bar stays on the last line and is redrawn under
/// new lines; elsewhere (a pipe, a file) everything is a plain line and the bar is written
/// again only when it moved.
#[derive(Debug, Clone, Default)]
pub(crate) struct Live {
    tty: bool,
    /// The bar written last, to avoid repeating it in plain output.
    last_bar: Option<String>,
}

/// Erases the current terminal line.
const CLEAR_LINE: &str = "\r\x1b[2K";

impl Live {
    /// Output for a terminal (`tty`) or not.
    pub(crate) fn new(tty: bool) -> Self {
        Self { tty, last_bar: None }
    }

    /// The text to write for `lines` and the current `bar`.
    pub(crate) fn frame(&mut self, lines: &[String], bar: &str) -> String {
        let mut out = String::new();
        if self.tty {
            out.push_str(CLEAR_LINE);
            for line in lines {
                out.push_str(line);
                out.push('\n');
            }
            out.push_str(bar);
        } else {
            for line in lines {
                out.push_str(line);
                out.push('\n');
            }
            if self.last_bar.as_deref() != Some(bar) {
                out.push_str(bar);
                out.push('\n');
            }
        }
        self.last_bar = Some(bar.to_owned());
        out
    }

    /// What ends the live output: on a terminal, the newline after the bar.
    pub(crate) fn finish(&self) -> &'static str {
        if self.tty && self.last_bar.is_some() { "\n" } else { "" }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(ms: i64) -> Option<prost_types::Timestamp> {
        Some(prost_types::Timestamp { seconds: 1_700_000_000 + ms / 1000, nanos: ((ms % 1000) * 1_000_000) as i32 })
    }

    fn event(sequence: u64, ms: i64, kind: Kind) -> pb::Event {
        pb::Event { execution_id: "e".to_owned(), sequence, at: at(ms), kind: Some(kind), elided: Vec::new() }
    }

    fn scheduled(step: &str, attempt: u32) -> Kind {
        Kind::TaskScheduled(pb::event::TaskScheduled { step: step.into(), attempt, service: format!("{step}-svc") })
    }

    fn succeeded(step: &str, attempt: u32) -> Kind {
        Kind::TaskSucceeded(pb::event::TaskSucceeded {
            step: step.into(),
            attempt,
            output_json: "{}".into(),
            context_json: None,
        })
    }

    fn failed(step: &str, attempt: u32, retryable: bool) -> Kind {
        Kind::TaskFailed(pb::event::TaskFailed {
            step: step.into(),
            attempt,
            error: "http 503".into(),
            retryable,
            problem: None,
        })
    }

    #[test]
    fn bars_fill_in_proportion() {
        assert_eq!(bar(0, 5), "[..........] 0/5 steps");
        assert_eq!(bar(3, 5), "[######....] 3/5 steps");
        assert_eq!(bar(5, 5), "[##########] 5/5 steps");
        assert_eq!(bar(0, 0), "[..........] 0/0 steps");
        assert_eq!(bar(7, 5), "[##########] 7/5 steps");
    }

    #[test]
    fn a_run_with_a_retry_and_a_skip_reads_as_it_happened() {
        let mut progress = Progress::new(["charge", "reserve", "ship", "notify"].map(String::from));
        let events = [
            event(1, 0, Kind::Started(pb::event::Started { input_json: "{}".into() })),
            event(2, 1, scheduled("reserve", 1)),
            event(3, 2, scheduled("charge", 1)),
            event(4, 13, succeeded("reserve", 1)),
            event(5, 20, failed("charge", 1, true)),
            event(6, 120, scheduled("charge", 2)),
            event(7, 1_620, succeeded("charge", 2)),
            event(8, 1_621, scheduled("ship", 1)),
            event(9, 1_625, failed("ship", 1, false)),
            event(
                10,
                1_626,
                Kind::TaskSkipped(pb::event::TaskSkipped { step: "notify".into(), reason: "ship failed".into() }),
            ),
            event(11, 1_627, Kind::Failed(pb::event::Failed { error: "step ship failed".into(), problem: None })),
        ];
        let mut lines = Vec::new();
        let mut bars = Vec::new();
        for e in &events {
            lines.extend(progress.apply(e));
            bars.push(progress.bar());
        }
        assert_eq!(
            lines,
            [
                "execution started",
                "reserve: scheduled on reserve-svc",
                "charge: scheduled on charge-svc",
                "reserve: succeeded in 12 ms",
                "charge: attempt 1 on charge-svc failed in 18 ms: http 503 (retryable)",
                "charge: retry 1 scheduled on charge-svc",
                "charge: succeeded on attempt 2 in 1.50 s",
                "ship: scheduled on ship-svc",
                "ship: attempt 1 on ship-svc failed in 4.0 ms: http 503 (not retryable)",
                "notify: skipped: ship failed",
                "execution failed: step ship failed",
            ]
        );
        assert_eq!(bars[3], "[##........] 1/4 steps");
        assert_eq!(bars[4], "[##........] 1/4 steps", "a retryable failure is not an end");
        assert_eq!(bars.last().unwrap(), "[##########] 4/4 steps");
        assert_eq!(progress.end(), Some(pb::ExecutionState::Failed));
    }

    #[test]
    fn steps_unknown_up_front_are_learnt_from_events() {
        let mut progress = Progress::default();
        progress.apply(&event(1, 0, scheduled("a", 1)));
        progress.apply(&event(2, 5, succeeded("a", 1)));
        progress.apply(&event(3, 6, scheduled("b", 1)));
        assert_eq!(progress.bar(), "[#####.....] 1/2 steps");
        assert_eq!(progress.end(), None);
        progress.apply(&event(4, 7, Kind::Cancelled(pb::event::Cancelled { reason: "operator".into() })));
        assert_eq!(progress.end(), Some(pb::ExecutionState::Cancelled));
    }

    #[test]
    fn events_without_times_have_no_durations() {
        let mut progress = Progress::default();
        let mut e = event(1, 0, scheduled("a", 1));
        e.at = None;
        progress.apply(&e);
        assert_eq!(progress.apply(&event(2, 5, succeeded("a", 1))), ["a: succeeded"]);
        assert_eq!(
            progress.apply(&pb::Event { sequence: 3, ..pb::Event::default() })[0],
            "#3: an event of a kind this client does not know"
        );
    }

    #[test]
    fn terminals_redraw_the_bar_and_pipes_get_plain_lines() {
        let mut tty = Live::new(true);
        assert_eq!(
            tty.frame(&["a: scheduled on x".into()], "[..........] 0/2 steps"),
            "\r\x1b[2Ka: scheduled on x\n[..........] 0/2 steps"
        );
        assert_eq!(tty.frame(&[], "[#####.....] 1/2 steps"), "\r\x1b[2K[#####.....] 1/2 steps");
        assert_eq!(tty.finish(), "\n");

        let mut plain = Live::new(false);
        assert_eq!(
            plain.frame(&["a: scheduled on x".into()], "[..........] 0/2 steps"),
            "a: scheduled on x\n[..........] 0/2 steps\n"
        );
        assert_eq!(
            plain.frame(&["b: scheduled on y".into()], "[..........] 0/2 steps"),
            "b: scheduled on y\n",
            "an unmoved bar is not repeated"
        );
        assert_eq!(plain.frame(&[], "[#####.....] 1/2 steps"), "[#####.....] 1/2 steps\n");
        assert_eq!(plain.finish(), "");
    }
}
