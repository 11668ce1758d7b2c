//! Traces of executions for OpenTelemetry: a span per execution and one per step attempt,
//! built from the journal's events once they are durable and handed to an OTLP exporter.
//!
//! The spans' ids are those the calls carried in `traceparent` (derived from the execution,
//! step and attempt, see `baton_core::trace`), so a service's own spans hang under the attempt
//! that called it, and an execution resumed after a restart goes on in the same trace.

use std::collections::HashMap;
use std::sync::Arc;

use baton_core::trace::SpanBuilder;
use baton_core::{Event, EventKind, Execution, ExecutionId, ExecutionTrace, ServiceId, StepId, Timestamp};
use baton_grpc::otlp::OtlpExporter;
use baton_workflow::Observer;
use parking_lot::Mutex;

/// Builds spans from journaled events and exports them. Set it as (part of) the engine's
/// observer ([`Observers`]).
#[derive(Debug)]
pub struct Tracer {
    exporter: OtlpExporter,
    open: Mutex<HashMap<ExecutionId, Open>>,
}

/// What is known of an execution's spans that have not ended.
#[derive(Debug, Default)]
struct Open {
    started: Option<Timestamp>,
    attempts: HashMap<(StepId, u32), (Timestamp, ServiceId)>,
}

impl Tracer {
    /// A tracer exporting through `exporter`.
    pub fn new(exporter: OtlpExporter) -> Self {
        Self { exporter, open: Mutex::default() }
    }

    /// The exporter, for its counts and its shutdown.
    pub fn exporter(&self) -> &OtlpExporter {
        &self.exporter
    }
}

impl Observer for Tracer {
    fn journaled(&self, execution: &Execution, events: &[Event]) {
        let trace = ExecutionTrace::new(execution.id, execution.trace.as_ref());
        // The caller decided not to record this trace.
        if !trace.sampled() {
            return;
        }
        let spans = SpanBuilder { trace: &trace, workflow: &execution.workflow, execution: execution.id };
        let mut open = self.open.lock();
        for event in events {
            let at = event.at;
            match &event.kind {
                EventKind::Started { .. } => open.entry(execution.id).or_default().started = Some(at),
                EventKind::TaskScheduled { step, attempt, service } => {
                    open.entry(execution.id)
                        .or_default()
                        .attempts
                        .insert((step.clone(), *attempt), (at, service.clone()));
                }
                EventKind::TaskSucceeded { step, attempt, .. } => {
                    if let Some((start, service)) = take_attempt(&mut open, execution.id, step, *attempt) {
                        self.exporter.export(spans.attempt(step, *attempt, &service, (start, at), "succeeded", None));
                    }
                }
                EventKind::TaskFailed { step, attempt: 0, error, .. } => {
                    // The task failed as a whole (its time limit, its output filter): the
                    // attempts it left open end with it.
                    let left: Vec<u32> = open.get(&execution.id).map_or_else(Vec::new, |o| {
                        o.attempts.keys().filter(|(s, _)| s == step).map(|(_, a)| *a).collect()
                    });
                    for attempt in left {
                        if let Some((start, service)) = take_attempt(&mut open, execution.id, step, attempt) {
                            let span = spans.attempt(step, attempt, &service, (start, at), "failed", Some(error));
                            self.exporter.export(span);
                        }
                    }
                }
                EventKind::TaskFailed { step, attempt, error, retryable, .. } => {
                    if let Some((start, service)) = take_attempt(&mut open, execution.id, step, *attempt) {
                        let outcome = if *retryable { "retryable" } else { "failed" };
                        let span = spans.attempt(step, *attempt, &service, (start, at), outcome, Some(error));
                        self.exporter.export(span);
                    }
                }
                EventKind::Completed { .. } | EventKind::Failed { .. } | EventKind::Cancelled { .. } => {
                    let (outcome, error) = match &event.kind {
                        EventKind::Failed { error, .. } => ("failed", Some(error.as_str())),
                        EventKind::Cancelled { reason } => ("cancelled", Some(reason.as_str())),
                        _ => ("completed", None),
                    };
                    let ended = open.remove(&execution.id).unwrap_or_default();
                    // Attempts still open were abandoned with the execution.
                    for ((step, attempt), (start, service)) in ended.attempts {
                        let span = spans.attempt(&step, attempt, &service, (start, at), "abandoned", Some(outcome));
                        self.exporter.export(span);
                    }
                    // After a restart the start is not in memory; the record has it.
                    let start = ended.started.unwrap_or(execution.created_at);
                    self.exporter.export(spans.execution((start, at), outcome, error));
                    // So that a log line leads to its trace.
                    tracing::debug!(execution = %execution.id, trace_id = %trace.trace_id(), outcome, "execution traced");
                }
                EventKind::TaskSkipped { .. }
                | EventKind::Paused
                | EventKind::Resumed
                | EventKind::TimerStarted { .. }
                | EventKind::SignalReceived { .. }
                | EventKind::SignalConsumed { .. }
                | EventKind::ChildStarted { .. } => {}
            }
        }
    }
}

fn take_attempt(
    open: &mut HashMap<ExecutionId, Open>,
    execution: ExecutionId,
    step: &StepId,
    attempt: u32,
) -> Option<(Timestamp, ServiceId)> {
    open.get_mut(&execution)?.attempts.remove(&(step.clone(), attempt))
}

/// Several observers as one: each sees every batch, in order.
#[derive(Debug, Default)]
pub struct Observers(pub Vec<Arc<dyn Observer>>);

impl Observer for Observers {
    fn journaled(&self, execution: &Execution, events: &[Event]) {
        for observer in &self.0 {
            observer.journaled(execution, events);
        }
    }

    fn fenced(&self, execution: baton_core::ExecutionId) {
        tracing::warn!(%execution, "fenced: another node owns the execution now; this one stopped its run");
        for observer in &self.0 {
            observer.fenced(execution);
        }
    }
}
