//! Execution and task metrics, derived from the workflow engine's journal as it is written.

use std::collections::hash_map::Entry;
use std::collections::{HashMap, HashSet};

use baton_core::{Event, EventKind, ExecutionId, ServiceId, StepId, Timestamp, WorkflowName};
use parking_lot::Mutex;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::activity::{ActivityLog, EndedCall, Ending};

/// Executions that ended before recovery was reported, remembered so that the report does not
/// bring them back. Bounded for the case where nobody reports recovery at all.
const MAX_ENDED_BEFORE_RECOVERY: usize = 4096;

/// The service label of an attempt whose `TaskScheduled` was not seen (journaled before this
/// process started, or a step that failed before it reached a service).
const UNKNOWN_SERVICE: &str = "unknown";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct WorkflowLabels {
    workflow: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FinishedLabels {
    workflow: String,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ServiceLabels {
    service: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AttemptLabels {
    service: String,
    outcome: &'static str,
}

type HistogramFamily<S> = Family<S, Histogram, fn() -> Histogram>;

/// 1 ms to about 2 min, doubling.
fn task_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 2.0, 18))
}

/// Whether an execution dispatches now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Running,
    Paused,
}

/// What the metrics keep of one unfinished execution.
#[derive(Debug)]
struct Live {
    phase: Phase,
    /// Attempts in flight by step: a step has at most one at a time.
    scheduled: HashMap<StepId, Scheduled>,
}

#[derive(Debug)]
struct Scheduled {
    attempt: u32,
    service: ServiceId,
    at: Timestamp,
}

#[derive(Debug)]
struct State {
    live: HashMap<ExecutionId, Live>,
    /// `Some` until recovery is reported: executions that ended meanwhile.
    ended_before_recovery: Option<HashSet<ExecutionId>>,
}

/// The metric families fed by [`Executions::journaled`].
///
/// The running and paused gauges count the unfinished executions this process knows of by
/// phase. An execution becomes known by its first journaled event (`Started` for a new one, any
/// event for one recovered at start) or by the recovery report, whichever comes first, and is
/// forgotten when it ends, with the steps it had in flight: the state is bounded by the
/// executions alive.
#[derive(Debug)]
pub(crate) struct Executions {
    started: Family<WorkflowLabels, Counter>,
    finished: Family<FinishedLabels, Counter>,
    running: Gauge,
    paused: Gauge,
    attempts: Family<AttemptLabels, Counter>,
    retries: Family<ServiceLabels, Counter>,
    durations: HistogramFamily<AttemptLabels>,
    state: Mutex<State>,
    /// The recent past, for the console, fed from the same events.
    activity: ActivityLog,
}

impl Executions {
    /// The families, registered in `registry`.
    pub(crate) fn register(registry: &mut Registry, activity: ActivityLog) -> Self {
        let this = Self {
            started: Family::default(),
            finished: Family::default(),
            running: Gauge::default(),
            paused: Gauge::default(),
            attempts: Family::default(),
            retries: Family::default(),
            durations: Family::new_with_constructor(task_histogram),
            state: Mutex::new(State { live: HashMap::new(), ended_before_recovery: Some(HashSet::new()) }),
            activity,
        };
        registry.register("baton_executions_started", "Executions started, by workflow", this.started.clone());
        registry.register(
            "baton_executions_finished",
            "Executions finished, by workflow and outcome (completed, failed, cancelled)",
            this.finished.clone(),
        );
        registry.register("baton_executions_running", "Unfinished executions that dispatch", this.running.clone());
        registry.register("baton_executions_paused", "Unfinished executions that are paused", this.paused.clone());
        registry.register(
            "baton_task_attempts",
            "Finished task attempts, by service and outcome (succeeded, failed, retryable)",
            this.attempts.clone(),
        );
        registry.register("baton_task_retries", "Task attempts after the first, by service", this.retries.clone());
        registry.register(
            "baton_task_duration_seconds",
            "Time from a task attempt's scheduling to its outcome, as journaled, by service and outcome",
            this.durations.clone(),
        );
        this
    }

    fn gauge(&self, phase: Phase) -> &Gauge {
        match phase {
            Phase::Running => &self.running,
            Phase::Paused => &self.paused,
        }
    }

    /// Seeds the gauges with the executions recovery left unfinished. Only the first report
    /// counts; executions already seen, or already ended, are not counted twice.
    pub(crate) fn recovered(&self, running: &[ExecutionId], paused: &[ExecutionId]) {
        let mut state = self.state.lock();
        let State { live, ended_before_recovery } = &mut *state;
        let Some(ended) = ended_before_recovery.take() else { return };
        for (ids, phase) in [(running, Phase::Running), (paused, Phase::Paused)] {
            for id in ids {
                if ended.contains(id) {
                    continue;
                }
                if let Entry::Vacant(entry) = live.entry(*id) {
                    self.gauge(phase).inc();
                    entry.insert(Live { phase, scheduled: HashMap::new() });
                }
            }
        }
    }

    /// Takes in a batch of journaled events of executions of `workflow`.
    pub(crate) fn journaled(&self, workflow: &WorkflowName, events: &[Event]) {
        let mut state = self.state.lock();
        let State { live, ended_before_recovery } = &mut *state;
        for event in events {
            let outcome = match &event.kind {
                EventKind::Completed { .. } => Some("completed"),
                EventKind::Failed { .. } => Some("failed"),
                EventKind::Cancelled { .. } => Some("cancelled"),
                _ => None,
            };
            if let Some(outcome) = outcome {
                let ending = match outcome {
                    "completed" => Ending::Completed,
                    "failed" => Ending::Failed,
                    _ => Ending::Cancelled,
                };
                self.activity.ended(ending, event.at);
                self.finished.get_or_create(&FinishedLabels { workflow: workflow.as_str().to_owned(), outcome }).inc();
                if let Some(ended) = live.remove(&event.execution) {
                    self.gauge(ended.phase).dec();
                }
                if let Some(set) = ended_before_recovery
                    && set.len() < MAX_ENDED_BEFORE_RECOVERY
                {
                    set.insert(event.execution);
                }
                continue;
            }
            let execution = match live.entry(event.execution) {
                Entry::Occupied(entry) => entry.into_mut(),
                Entry::Vacant(entry) => {
                    // First sight: started now, or recovered at start and not reported yet. Only
                    // a paused execution can be resumed, and a recovered paused one runs nothing
                    // before it is.
                    let phase = if event.kind == EventKind::Resumed { Phase::Paused } else { Phase::Running };
                    self.gauge(phase).inc();
                    entry.insert(Live { phase, scheduled: HashMap::new() })
                }
            };
            match &event.kind {
                EventKind::Started { .. } => {
                    self.activity.started(event.at);
                    self.started.get_or_create(&WorkflowLabels { workflow: workflow.as_str().to_owned() }).inc();
                }
                EventKind::Paused => self.to_phase(execution, Phase::Paused),
                EventKind::Resumed => self.to_phase(execution, Phase::Running),
                EventKind::TaskScheduled { step, attempt, service } => {
                    if *attempt > 1 {
                        self.retries.get_or_create(&ServiceLabels { service: service.as_str().to_owned() }).inc();
                    }
                    let scheduled = Scheduled { attempt: *attempt, service: service.clone(), at: event.at };
                    execution.scheduled.insert(step.clone(), scheduled);
                }
                EventKind::TaskSucceeded { step, attempt, .. } => {
                    self.attempt_ended(execution, event.execution, step, *attempt, "succeeded", event.at);
                }
                EventKind::TaskFailed { step, attempt, retryable, .. } => {
                    let outcome = if *retryable { "retryable" } else { "failed" };
                    self.attempt_ended(execution, event.execution, step, *attempt, outcome, event.at);
                }
                _ => {}
            }
        }
    }

    /// `(running, paused)` by the gauges.
    pub(crate) fn unfinished(&self) -> (i64, i64) {
        (self.running.get(), self.paused.get())
    }

    fn to_phase(&self, execution: &mut Live, phase: Phase) {
        if execution.phase != phase {
            self.gauge(execution.phase).dec();
            self.gauge(phase).inc();
            execution.phase = phase;
        }
    }

    fn attempt_ended(
        &self,
        execution: &mut Live,
        id: ExecutionId,
        step: &StepId,
        attempt: u32,
        outcome: &'static str,
        at: Timestamp,
    ) {
        let scheduled = match execution.scheduled.remove(step) {
            Some(scheduled) if scheduled.attempt == attempt => Some(scheduled),
            Some(later) if later.attempt > attempt => {
                // A stale outcome: the step's next attempt is in flight already.
                execution.scheduled.insert(step.clone(), later);
                None
            }
            _ => None,
        };
        let service = scheduled.as_ref().map_or(UNKNOWN_SERVICE, |s| s.service.as_str()).to_owned();
        let call = scheduled.as_ref().map(|s| EndedCall {
            service: &s.service,
            execution: id,
            step,
            attempt,
            scheduled_at: s.at,
            ended_at: at,
            outcome: match outcome {
                "succeeded" => baton_core::CallOutcome::Succeeded,
                "retryable" => baton_core::CallOutcome::Retryable,
                _ => baton_core::CallOutcome::Failed,
            },
        });
        self.activity.attempt(at, outcome != "succeeded", call);
        let labels = AttemptLabels { service, outcome };
        self.attempts.get_or_create(&labels).inc();
        if let Some(scheduled) = scheduled {
            // Journal times come from one clock; a step back would be a clock change.
            let seconds = (at - scheduled.at).to_std().map_or(0.0, |elapsed| elapsed.as_secs_f64());
            self.durations.get_or_create(&labels).observe(seconds);
        }
    }

    /// Executions and in-flight attempts held, for tests of the bounds.
    #[cfg(test)]
    fn held(&self) -> (usize, usize) {
        let state = self.state.lock();
        (state.live.len(), state.live.values().map(|l| l.scheduled.len()).sum())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Journal {
        metrics: Executions,
        registry: Registry,
        workflow: WorkflowName,
        sequence: u64,
    }

    impl Journal {
        fn new() -> Self {
            let mut registry = Registry::default();
            let metrics = Executions::register(&mut registry, ActivityLog::default());
            Self { metrics, registry, workflow: WorkflowName::new("checkout").unwrap(), sequence: 0 }
        }

        /// Journals `kinds` for `execution` at `millis` after the epoch, one batch.
        fn write(&mut self, execution: ExecutionId, millis: u64, kinds: Vec<EventKind>) {
            let at = Timestamp::UNIX_EPOCH + std::time::Duration::from_millis(millis);
            let events: Vec<Event> = kinds
                .into_iter()
                .map(|kind| {
                    self.sequence += 1;
                    Event { execution, sequence: self.sequence, at, kind }
                })
                .collect();
            self.metrics.journaled(&self.workflow, &events);
        }

        fn text(&self) -> String {
            let mut text = String::new();
            prometheus_client::encoding::text::encode(&mut text, &self.registry).unwrap();
            text
        }

        /// The value of the sample line starting with `sample` (name and labels), if any.
        fn value(&self, sample: &str) -> Option<f64> {
            self.text()
                .lines()
                .find_map(|line| line.strip_prefix(sample)?.strip_prefix(' ')?.split(' ').next()?.parse().ok())
        }

        fn gauges(&self) -> (i64, i64) {
            (self.metrics.running.get(), self.metrics.paused.get())
        }
    }

    fn scheduled(step: &str, attempt: u32, service: &str) -> EventKind {
        EventKind::TaskScheduled {
            step: StepId::new(step).unwrap(),
            attempt,
            service: ServiceId::new(service).unwrap(),
        }
    }

    fn succeeded(step: &str, attempt: u32) -> EventKind {
        EventKind::TaskSucceeded {
            step: StepId::new(step).unwrap(),
            attempt,
            output: serde_json::json!({}),
            context: None,
        }
    }

    fn failed(step: &str, attempt: u32, retryable: bool) -> EventKind {
        EventKind::TaskFailed {
            step: StepId::new(step).unwrap(),
            attempt,
            error: "boom".to_owned(),
            retryable,
            problem: None,
        }
    }

    fn started() -> EventKind {
        EventKind::Started { input: serde_json::json!({}) }
    }

    #[test]
    fn a_run_with_a_retry_counts_attempts_retries_and_durations() {
        let mut j = Journal::new();
        let e = ExecutionId::generate();
        j.write(e, 0, vec![started()]);
        assert_eq!(j.gauges(), (1, 0));
        j.write(e, 0, vec![scheduled("pay", 1, "payments")]);
        j.write(e, 250, vec![failed("pay", 1, true), scheduled("pay", 2, "payments")]);
        j.write(e, 750, vec![succeeded("pay", 2), scheduled("ship", 1, "shipping")]);
        j.write(e, 2750, vec![succeeded("ship", 1), EventKind::Completed { output: serde_json::json!({}) }]);

        assert_eq!(j.gauges(), (0, 0));
        assert_eq!(j.metrics.held(), (0, 0));
        for (sample, value) in [
            (r#"baton_executions_started_total{workflow="checkout"}"#, 1.0),
            (r#"baton_executions_finished_total{workflow="checkout",outcome="completed"}"#, 1.0),
            (r#"baton_task_attempts_total{service="payments",outcome="retryable"}"#, 1.0),
            (r#"baton_task_attempts_total{service="payments",outcome="succeeded"}"#, 1.0),
            (r#"baton_task_attempts_total{service="shipping",outcome="succeeded"}"#, 1.0),
            (r#"baton_task_retries_total{service="payments"}"#, 1.0),
            (r#"baton_task_duration_seconds_count{service="payments",outcome="retryable"}"#, 1.0),
            (r#"baton_task_duration_seconds_sum{service="payments",outcome="retryable"}"#, 0.25),
            (r#"baton_task_duration_seconds_sum{service="payments",outcome="succeeded"}"#, 0.5),
            (r#"baton_task_duration_seconds_sum{service="shipping",outcome="succeeded"}"#, 2.0),
            (r#"baton_task_duration_seconds_bucket{le="0.128",service="payments",outcome="retryable"}"#, 0.0),
            (r#"baton_task_duration_seconds_bucket{le="0.256",service="payments",outcome="retryable"}"#, 1.0),
        ] {
            assert_eq!(j.value(sample), Some(value), "{sample} in\n{}", j.text());
        }
        assert_eq!(j.value(r#"baton_task_retries_total{service="shipping"}"#), None);
    }

    #[test]
    fn pause_resume_and_cancel_while_paused_move_the_gauges() {
        let mut j = Journal::new();
        let (a, b) = (ExecutionId::generate(), ExecutionId::generate());
        j.write(a, 0, vec![started(), scheduled("pay", 1, "payments")]);
        j.write(b, 0, vec![started()]);
        assert_eq!(j.gauges(), (2, 0));
        j.write(a, 10, vec![EventKind::Paused]);
        assert_eq!(j.gauges(), (1, 1));
        // The step in flight finishes while paused.
        j.write(a, 20, vec![succeeded("pay", 1)]);
        j.write(a, 30, vec![EventKind::Resumed]);
        assert_eq!(j.gauges(), (2, 0));
        j.write(a, 40, vec![EventKind::Paused]);
        j.write(b, 40, vec![scheduled("pay", 1, "payments")]);
        j.write(a, 50, vec![EventKind::Cancelled { reason: "customer left".to_owned() }]);
        assert_eq!(j.gauges(), (1, 0));
        j.write(
            b,
            60,
            vec![failed("pay", 1, false), EventKind::Failed { error: "pay failed".to_owned(), problem: None }],
        );
        assert_eq!(j.gauges(), (0, 0));
        assert_eq!(j.metrics.held(), (0, 0));
        for (sample, value) in [
            (r#"baton_executions_started_total{workflow="checkout"}"#, 2.0),
            (r#"baton_executions_finished_total{workflow="checkout",outcome="cancelled"}"#, 1.0),
            (r#"baton_executions_finished_total{workflow="checkout",outcome="failed"}"#, 1.0),
            (r#"baton_task_attempts_total{service="payments",outcome="failed"}"#, 1.0),
            (r#"baton_task_attempts_total{service="payments",outcome="succeeded"}"#, 1.0),
        ] {
            assert_eq!(j.value(sample), Some(value), "{sample} in\n{}", j.text());
        }
    }

    #[test]
    fn an_execution_ending_with_steps_in_flight_leaves_nothing_behind() {
        let mut j = Journal::new();
        let e = ExecutionId::generate();
        j.write(e, 0, vec![started(), scheduled("a", 1, "s1"), scheduled("b", 1, "s2")]);
        assert_eq!(j.metrics.held(), (1, 2));
        j.write(e, 5, vec![EventKind::Cancelled { reason: "stop".to_owned() }]);
        assert_eq!(j.metrics.held(), (0, 0));
        assert_eq!(j.gauges(), (0, 0));
    }

    #[test]
    fn recovery_seeds_the_gauges_once_and_never_twice() {
        let mut j = Journal::new();
        let [running, busy, paused, done] = std::array::from_fn(|_| ExecutionId::generate());
        // Before the report: one recovered run reports a step, another finishes.
        j.write(busy, 0, vec![scheduled("a", 1, "s1")]);
        j.write(done, 0, vec![EventKind::Completed { output: serde_json::json!(1) }]);
        assert_eq!(j.gauges(), (1, 0));
        j.metrics.recovered(&[running, busy, done], &[paused]);
        assert_eq!(j.gauges(), (2, 1));
        // A second report changes nothing.
        j.metrics.recovered(&[ExecutionId::generate()], &[]);
        assert_eq!(j.gauges(), (2, 1));
        // The recovered paused execution is cancelled while paused.
        j.write(paused, 10, vec![EventKind::Cancelled { reason: "stale".to_owned() }]);
        assert_eq!(j.gauges(), (2, 0));
        j.write(running, 10, vec![EventKind::Paused]);
        assert_eq!(j.gauges(), (1, 1));
        j.write(busy, 10, vec![succeeded("a", 1), EventKind::Completed { output: serde_json::json!(1) }]);
        j.write(running, 20, vec![EventKind::Resumed, EventKind::Failed { error: "x".to_owned(), problem: None }]);
        assert_eq!(j.gauges(), (0, 0));
        assert_eq!(j.metrics.held(), (0, 0));
        assert_eq!(j.value(r#"baton_task_attempts_total{service="s1",outcome="succeeded"}"#), Some(1.0));
    }

    #[test]
    fn a_recovered_execution_first_seen_resuming_was_paused() {
        let mut j = Journal::new();
        let e = ExecutionId::generate();
        j.write(e, 0, vec![EventKind::Resumed]);
        assert_eq!(j.gauges(), (1, 0));
        j.metrics.recovered(&[], &[e]);
        assert_eq!(j.gauges(), (1, 0));
    }

    #[test]
    fn an_outcome_without_its_scheduling_counts_under_an_unknown_service() {
        let mut j = Journal::new();
        let e = ExecutionId::generate();
        j.write(e, 0, vec![started(), failed("a", 1, false)]);
        j.write(e, 0, vec![scheduled("b", 2, "s2")]);
        // A stale outcome of attempt 1 keeps attempt 2 in flight.
        j.write(e, 5, vec![failed("b", 1, true), succeeded("b", 2)]);
        assert_eq!(j.value(r#"baton_task_attempts_total{service="unknown",outcome="failed"}"#), Some(1.0));
        assert_eq!(j.value(r#"baton_task_attempts_total{service="unknown",outcome="retryable"}"#), Some(1.0));
        assert_eq!(j.value(r#"baton_task_attempts_total{service="s2",outcome="succeeded"}"#), Some(1.0));
        assert_eq!(j.value(r#"baton_task_duration_seconds_count{service="unknown",outcome="failed"}"#), None);
    }
}
